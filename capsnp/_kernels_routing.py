"""Numba twins of :mod:`capsnp.routing` (MODEL.md sec. 2), reached as ``capsnp.kernels.routing``.

* (2.1) :func:`dynamic_routing`, same signature and results as ``capsnp.routing.dynamic_routing``
* (2.1, 2.2) :func:`routing_forward_vjp`, routing and its vector-Jacobian product fused per
  image; equals ``dynamic_routing_trace`` followed by ``dynamic_routing_vjp``

Both split the batch over ``numba.get_num_threads()`` threads; each image is routed by one
thread, so the results do not depend on the number of threads. Without Numba (or for dtypes
other than float32/float64) they call the NumPy reference.
"""

import numpy as np

from . import _kernels_jit as _jit
from . import routing as _ref
from .ops import softmax

__all__ = ["dynamic_routing", "routing_forward_vjp"]


def __getattr__(name):
    """Names without a compiled twin are the NumPy reference's (``capsnp.routing``)."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_ref, name)


def _prior_3d(prior_logits, B, I, J, dtype):
    """Prior logits as a (1, I, J) or (B, I, J) C-contiguous array (zeros when omitted)."""
    if prior_logits is None:
        return np.zeros((1, I, J), dtype=dtype)
    beta = np.asarray(prior_logits, dtype=dtype)
    if beta.ndim == 2:
        beta = beta[None]  # (1, I, J)
    if beta.shape not in ((1, I, J), (B, I, J)):
        raise ValueError(f"prior_logits must have shape ({I}, {J}) or ({B}, {I}, {J}), "
                         f"got {np.shape(prior_logits)}")
    return _jit.as_c(beta, dtype)


def dynamic_routing(u_hat, n_iter=3, prior_logits=None):
    """Dynamic routing by agreement (2.1), compiled; twin of :func:`capsnp.routing.dynamic_routing`.

    Parameters
    ----------
    u_hat : ndarray of shape (B, I, J, d_h)
    n_iter : int, number of passes r (default 3)
    prior_logits : ndarray of shape (I, J) or (B, I, J), optional (``beta``)

    Returns
    -------
    c : ndarray of shape (B, I, J), final coupling coefficients (sum to 1 over parents j)
    s : ndarray of shape (B, J, d_h), final routed inputs
    v : ndarray of shape (B, J, d_h), ``squash(s)``
    """
    u_hat = np.asarray(u_hat)
    dt = _jit.kernel_dtype(u_hat)
    if dt is None or u_hat.dtype != dt or u_hat.ndim != 4:
        return _ref.dynamic_routing(u_hat, n_iter, prior_logits)
    r = _jit.check_n_iter(n_iter)
    B, I, J, d_h = u_hat.shape
    beta = _prior_3d(prior_logits, B, I, J, dt)  # (1 or B, I, J)
    c0 = softmax(beta, axis=2)  # (1 or B, I, J), the first pass's coefficients
    c = np.empty((B, I, J), dtype=dt)
    s = np.empty((B, J, d_h), dtype=dt)
    v = np.empty((B, J, d_h), dtype=dt)
    _jit.run_chunks(_jit.routing_forward, B, _jit.as_c(u_hat, dt), beta, c0, r, c, s, v)
    return c, s, v


def routing_forward_vjp(u_hat, n_iter=3, prior_logits=None, g_s=None, g_v=None, g_c=None,
                        prior_shape=None):
    """Routing (2.1) and its vector-Jacobian product (2.2) in one pass per image.

    Equals ``tr = dynamic_routing_trace(u_hat, n_iter, prior_logits)`` followed by
    ``dynamic_routing_vjp(u_hat, tr, g_s, g_v, g_c, prior_shape)``, but the trace of every pass
    (c (r, I, J), s and v (r, J, d_h)) lives only per image inside the kernel; the largest array
    made is the (B, I, J, d_h) adjoint of ``u_hat``.

    Parameters
    ----------
    u_hat : ndarray of shape (B, I, J, d_h)
    n_iter : int, number of passes r
    prior_logits : ndarray of shape (I, J) or (B, I, J), optional
    g_s, g_v : ndarray of shape (B, J, d_h), optional
        Adjoints of the final ``s`` and ``v`` (zero when omitted).
    g_c : ndarray of shape (B, I, J), optional
        Adjoint of the final ``c``.
    prior_shape : tuple, optional
        ``(I, J)`` to sum the adjoint of the prior logits over the batch (a shared ``beta``).

    Returns
    -------
    c : ndarray of shape (B, I, J)
    s, v : ndarrays of shape (B, J, d_h)
    g_u_hat : ndarray of shape (B, I, J, d_h)
    g_beta : ndarray of shape (B, I, J), or ``prior_shape``
    """
    u_hat = np.asarray(u_hat)
    dt = _jit.kernel_dtype(u_hat)
    if dt is None or u_hat.dtype != dt or u_hat.ndim != 4:
        return _ref.routing_forward_vjp(u_hat, n_iter, prior_logits, g_s, g_v, g_c, prior_shape)
    r = _jit.check_n_iter(n_iter)
    B, I, J, d_h = u_hat.shape
    beta = _prior_3d(prior_logits, B, I, J, dt)  # (1 or B, I, J)
    c0 = softmax(beta, axis=2)  # (1 or B, I, J)
    zeros_s = np.zeros((B, J, d_h), dtype=dt)
    gs = zeros_s if g_s is None else _jit.as_c(np.broadcast_to(g_s, (B, J, d_h)), dt)
    gv = zeros_s if g_v is None else _jit.as_c(np.broadcast_to(g_v, (B, J, d_h)), dt)
    gc = np.zeros((B, I, J), dtype=dt) if g_c is None else _jit.as_c(np.broadcast_to(g_c, (B, I, J)), dt)
    c = np.empty((B, I, J), dtype=dt)
    s = np.empty((B, J, d_h), dtype=dt)
    v = np.empty((B, J, d_h), dtype=dt)
    g_u = np.empty((B, I, J, d_h), dtype=dt)
    g_b = np.empty((B, I, J), dtype=dt)
    _jit.run_chunks(_jit.routing_forward_vjp, B, _jit.as_c(u_hat, dt), beta, c0, r, gs, gv, gc,
                    g_v is not None, g_c is not None, c, s, v, g_u, g_b)
    if prior_shape is not None:
        g_b = g_b.reshape((-1,) + tuple(prior_shape)).sum(axis=0)  # (I, J)
    return c, s, v, g_u, g_b
