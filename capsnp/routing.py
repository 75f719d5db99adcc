"""Dynamic routing (Sabour, Frosst & Hinton 2017, Procedure 1) and its hand-derived VJP.

Equation labels (MODEL.md sec. 2, ``lessons/03_routing.py``):

* (2.0) predictions ``u_hat_{j|i} = W_ij v_i`` (in :mod:`capsnp.capsules`)
* (2.1) one routing pass at iteration t::

      c^t_ij = softmax_j(b^t_ij)               softmax over PARENTS j
      s^t_j  = sum_i c^t_ij u_hat_{j|i}
      v^t_j  = squash(s^t_j)
      b^{t+1}_ij = b^t_ij + u_hat_{j|i} . v^t_j   (skipped after the last pass)

  with ``b^0 = beta`` (prior logits) or 0.
* (2.2) the vector-Jacobian product of the final ``(s, v, c)`` with respect to ``u_hat`` and
  ``beta``, through all passes (reverse-mode, derived in the lesson).
"""

from typing import NamedTuple

import numpy as np

from .ops import softmax, softmax_vjp, squash, squash_vjp

__all__ = ["RoutingTrace", "dynamic_routing", "dynamic_routing_trace", "dynamic_routing_vjp",
           "routing_forward_vjp"]


class RoutingTrace(NamedTuple):
    """What the backward pass needs from the forward pass.

    c : (r, B, I, J) coupling coefficients of every pass
    s : (r, B, J, d_h) routed inputs of every pass
    v : (r, B, J, d_h) squashed outputs of every pass
    """

    c: np.ndarray
    s: np.ndarray
    v: np.ndarray


def _check_routing_input(u_hat, n_iter):
    u_hat = np.asarray(u_hat)
    if u_hat.ndim != 4:
        raise ValueError(f"u_hat must have shape (B, I, J, d_h), got shape {u_hat.shape}")
    if int(n_iter) < 1:
        raise ValueError(f"n_iter must be at least 1, got {n_iter}")
    return u_hat


def dynamic_routing_trace(u_hat, n_iter=3, prior_logits=None):
    """Run routing (2.1) and keep every pass for the backward pass.

    Parameters
    ----------
    u_hat : ndarray of shape (B, I, J, d_h)
        Predictions of parent j by child i.
    n_iter : int
        Number of routing passes r (>= 1).
    prior_logits : ndarray of shape (I, J) or (B, I, J), optional
        Initial logits ``beta``; zero when omitted.

    Returns
    -------
    RoutingTrace with c (r, B, I, J), s (r, B, J, d_h), v (r, B, J, d_h).
    """
    u_hat = _check_routing_input(u_hat, n_iter)
    B, I, J, d_h = u_hat.shape
    r = int(n_iter)
    b = np.zeros((B, I, J), dtype=u_hat.dtype)  # (B, I, J)
    if prior_logits is not None:
        b = b + np.asarray(prior_logits, dtype=u_hat.dtype)  # (B, I, J)
    cs = np.empty((r, B, I, J), dtype=u_hat.dtype)
    ss = np.empty((r, B, J, d_h), dtype=u_hat.dtype)
    vs = np.empty((r, B, J, d_h), dtype=u_hat.dtype)
    for t in range(r):
        cs[t] = softmax(b, axis=2)  # (B, I, J), sums to 1 over parents j
        ss[t] = np.einsum("bij,bijh->bjh", cs[t], u_hat, optimize=True)  # (B, J, d_h)
        vs[t] = squash(ss[t])  # (B, J, d_h)
        if t < r - 1:
            b = b + np.einsum("bijh,bjh->bij", u_hat, vs[t], optimize=True)  # (B, I, J)
    return RoutingTrace(cs, ss, vs)


def dynamic_routing(u_hat, n_iter=3, prior_logits=None):
    """Dynamic routing by agreement (2.1), Sabour et al. (2017), Procedure 1.

    Parameters
    ----------
    u_hat : ndarray of shape (B, I, J, d_h)
    n_iter : int, number of passes r (default 3)
    prior_logits : ndarray of shape (I, J) or (B, I, J), optional (``beta``)

    Returns
    -------
    c : ndarray of shape (B, I, J)
        Final coupling coefficients; ``c.sum(axis=2) == 1`` (over parents).
    s : ndarray of shape (B, J, d_h)
        Final routed inputs ``s_j = sum_i c_ij u_hat_{j|i}``.
    v : ndarray of shape (B, J, d_h)
        ``squash(s)``.
    """
    tr = dynamic_routing_trace(u_hat, n_iter, prior_logits)
    return tr.c[-1], tr.s[-1], tr.v[-1]


def dynamic_routing_vjp(u_hat, trace, g_s=None, g_v=None, g_c=None, prior_shape=None):
    """Vector-Jacobian product of routing (2.2): reverse mode through all r passes.

    Forward (2.1), pass t: ``c^t = softmax(b^t)``, ``s^t = sum_i c^t u_hat``,
    ``v^t = squash(s^t)``, ``b^{t+1} = b^t + u_hat . v^t``. Walking back from t = r-1 with
    adjoints ``gb^{t+1}`` of the next logits (zero at the last pass):

    .. math::
        \\bar v^t_j &= [t = r-1] g_v + \\sum_i \\bar b^{t+1}_{ij} \\hat u_{j|i} \\\\
        \\bar s^t_j &= [t = r-1] g_s + \\mathrm{squash\\_vjp}(s^t_j, \\bar v^t_j) \\\\
        \\bar c^t_{ij} &= [t = r-1] g_c + \\hat u_{j|i} \\cdot \\bar s^t_j \\\\
        \\bar b^t &= \\bar b^{t+1} + \\mathrm{softmax\\_vjp}(c^t, \\bar c^t) \\\\
        \\bar u_{j|i} \\mathrel{+}= c^t_{ij} \\bar s^t_j + \\bar b^{t+1}_{ij} v^t_j

    and ``d/dbeta = bar b^0``.

    Parameters
    ----------
    u_hat : ndarray of shape (B, I, J, d_h)
    trace : RoutingTrace from :func:`dynamic_routing_trace` on the same ``u_hat``
    g_s, g_v : ndarray of shape (B, J, d_h), optional
        Adjoints of the final ``s`` and ``v`` (zero when omitted).
    g_c : ndarray of shape (B, I, J), optional
        Adjoint of the final ``c``.
    prior_shape : tuple, optional
        ``(I, J)`` to sum the logit adjoint over the batch (a shared ``beta``); otherwise the
        (B, I, J) adjoint is returned.

    Returns
    -------
    g_u_hat : ndarray of shape (B, I, J, d_h)
    g_beta : ndarray of shape (B, I, J) or ``prior_shape``
    """
    u_hat = np.asarray(u_hat)
    r, B, I, J = trace.c.shape
    d_h = u_hat.shape[-1]
    dt = u_hat.dtype
    g_u = np.zeros((B, I, J, d_h), dtype=dt)
    g_b_next = np.zeros((B, I, J), dtype=dt)  # adjoint of b^{t+1}
    for t in range(r - 1, -1, -1):
        last = t == r - 1
        gv_t = np.zeros((B, J, d_h), dtype=dt) if (not last or g_v is None) else np.array(g_v, dtype=dt)
        if not last:
            gv_t += np.einsum("bij,bijh->bjh", g_b_next, u_hat, optimize=True)  # (B, J, d_h)
            g_u += g_b_next[..., None] * trace.v[t][:, None, :, :]  # (B, I, J, d_h)
        gs_t = squash_vjp(trace.s[t], gv_t)  # (B, J, d_h)
        if last and g_s is not None:
            gs_t = gs_t + g_s
        g_u += trace.c[t][..., None] * gs_t[:, None, :, :]  # (B, I, J, d_h)
        gc_t = np.einsum("bijh,bjh->bij", u_hat, gs_t, optimize=True)  # (B, I, J)
        if last and g_c is not None:
            gc_t = gc_t + g_c
        g_b_next = g_b_next + softmax_vjp(trace.c[t], gc_t, axis=2)  # (B, I, J), now adjoint of b^t
    g_beta = g_b_next
    if prior_shape is not None:
        g_beta = g_beta.reshape((-1,) + tuple(prior_shape)).sum(axis=0)  # (I, J)
    return g_u, g_beta


def routing_forward_vjp(u_hat, n_iter=3, prior_logits=None, g_s=None, g_v=None, g_c=None,
                        prior_shape=None):
    """Routing (2.1) and its vector-Jacobian product (2.2): the trace, then the VJP.

    ``tr = dynamic_routing_trace(u_hat, n_iter, prior_logits)`` followed by
    ``dynamic_routing_vjp(u_hat, tr, g_s, g_v, g_c, prior_shape)``; the compiled twin
    ``capsnp.kernels.routing.routing_forward_vjp`` fuses both per image.

    Parameters
    ----------
    u_hat : ndarray of shape (B, I, J, d_h)
    n_iter : int, number of passes r
    prior_logits : ndarray of shape (I, J) or (B, I, J), optional
    g_s, g_v : ndarray of shape (B, J, d_h), optional; g_c : ndarray of shape (B, I, J), optional
    prior_shape : tuple, optional

    Returns
    -------
    c : ndarray of shape (B, I, J)
    s, v : ndarrays of shape (B, J, d_h)
    g_u_hat : ndarray of shape (B, I, J, d_h)
    g_beta : ndarray of shape (B, I, J), or ``prior_shape``
    """
    tr = dynamic_routing_trace(u_hat, n_iter, prior_logits)
    g_u, g_beta = dynamic_routing_vjp(u_hat, tr, g_s=g_s, g_v=g_v, g_c=g_c, prior_shape=prior_shape)
    return tr.c[-1], tr.s[-1], tr.v[-1], g_u, g_beta
