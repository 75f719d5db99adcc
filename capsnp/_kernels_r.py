"""Numba twins of :mod:`capsnp.model_r` (MODEL.md sec. 4), reached as ``capsnp.kernels.model_r``.

Same names, signatures and results as the NumPy reference:

* (4.6) :func:`mean_field`, mean-field routing with per-image stopping (each image stops on
  its own inside the kernel; no batch-wide masking)
* (4.7) :func:`gibbs_sweep`, the 3-block Gibbs sweep with pre-drawn uniforms
* (4.8) :func:`data_statistics`, :func:`model_statistics`, the PCD statistics in one fused pass
* (4.9) :func:`assigned_input`, the hidden units' input under hard assignments from the sparse
  v, and :func:`log_joint_va` on it (AIS, parallel tempering)
* (4.5) :func:`top_down`, the top-down fields, one matrix product per parent, the parents
  shared out over the threads while BLAS is held to one (training and sampling)

The batch (or, for the statistics, the parameter rows, each summed over the batch in a fixed
order) is split over ``numba.get_num_threads()`` threads, so results do not depend on the
number of threads. Without Numba (or for dtypes
other than float32/float64) every function calls the reference.
"""

import numpy as np

from . import _kernels_jit as _jit
from . import model_r as _ref
from .ops import sigmoid, softmax

__all__ = ["mean_field", "gibbs_sweep", "data_statistics", "model_statistics",
           "hidden_model_statistics", "top_down", "assigned_input", "hidden_probability",
           "sparsity_gradient", "log_joint_va"]


def __getattr__(name):
    """Names without a compiled twin are the NumPy reference's (``capsnp.model_r``)."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_ref, name)


def _transposed_weights(params, dt):
    """W with its last two axes swapped, Wt (I, J, d_v, d_h), and C (I, J, d_h) (zeros without
    assignment biases), C-contiguous in ``dt``: the layout in which a pixel that is on adds one
    contiguous row per parent to the predictions (4b.2)."""
    W = params.W
    Wt = np.ascontiguousarray(W.swapaxes(2, 3), dtype=dt)  # (I, J, d_v, d_h)
    C, _ = _ref.assignment_biases(params)
    C = np.zeros(W.shape[:3], dtype=dt) if C is None else _jit.as_c(C, dt)  # (I, J, d_h)
    return Wt, C


def _parent_products(start, stop, h, W_j, out):
    """``out[j] = h[:, j] @ W_j[j]`` for parents j in [start, stop): one BLAS product each,
    (B, d_h) @ (d_h, I d_v) -> (B, I d_v); NumPy releases the GIL while it runs."""
    for j in range(start, stop):
        np.matmul(h[:, j, :], W_j[j], out=out[j])


def top_down(params, h):
    """Top-down fields of (4.5), ``W_ij^T h_j``: (B, J, d_h) -> (J, B, I, d_v); twin of
    :func:`capsnp.model_r.top_down`.

    Inside :func:`capsnp._kernels_jit.single_threaded_blas` (Model R's training and sampling)
    the products, one per parent, run side by side on the kernel threads, each on one BLAS
    thread; elsewhere they run one after the other, each on BLAS's own threads.
    """
    dt = _jit.kernel_dtype(params.W, h)
    if dt is None:
        return _ref.top_down(params, h)
    I, J, d_h, d_v = params.W.shape
    W_j = _jit.as_c(_ref._weights_by_parent(params.W), dt)  # (J, d_h, I d_v)
    h = _jit.as_c(h, dt)  # (B, J, d_h)
    fields = np.empty((J, h.shape[0], I * d_v), dtype=dt)  # (J, B, I d_v)
    if _jit.blas_is_single_threaded():
        _jit.run_chunks(_parent_products, J, h, W_j, fields, min_items=1)
    else:
        _parent_products(0, J, h, W_j, fields)
    return fields.reshape(J, -1, I, d_v)  # (J, B, I, d_v)


def _checked_assignments(a, B, I, J):
    """a as C-contiguous int64 (B, I), its shape and range checked."""
    a = np.ascontiguousarray(a, dtype=np.int64)
    if a.shape != (B, I):
        raise ValueError(f"a must have shape ({B}, {I}), got {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= J):
        raise ValueError(f"routing assignments must lie in 0..{J - 1}")
    return a


def assigned_input(params, v, a):
    """``sum_{i: a_i = j} u_hat_{j|i}`` (4.9) from the sparse v: (B, I, d_v), (B, I) -> (B, J, d_h);
    twin of :func:`capsnp.model_r.assigned_input`."""
    dt = _jit.kernel_dtype(params.W, v)
    if dt is None:
        return _ref.assigned_input(params, v, a)
    v = _jit.as_c(v, dt)  # (B, I, d_v)
    B, I, _ = v.shape
    J, d_h = params.W.shape[1], params.W.shape[2]
    a = _checked_assignments(a, B, I, J)
    Wt, C = _transposed_weights(params, dt)  # (I, J, d_v, d_h), (I, J, d_h)
    out = np.empty((B, J, d_h), dtype=dt)
    _jit.run_chunks(_jit.r_assigned_input, B, Wt, C, v, a, out)
    return out


def hidden_probability(params, v, a):
    """U (4.4) ``sigmoid(gamma + sum_{i: a_i = j} u_hat_{j|i})`` from the sparse v, without
    u_hat: (B, I, d_v), (B, I) -> (B, J, d_h); twin of :func:`capsnp.model_r.hidden_probability`."""
    return sigmoid(params.gamma + assigned_input(params, v, a))  # (B, J, d_h)


def sparsity_gradient(params, v, c, mu, target, cost):
    """(4b.11) in W, gamma and C at the routing c, from the compiled data statistics with
    ``p - mu`` in place of mu; twin of :func:`capsnp.model_r.sparsity_gradient`."""
    return _ref.input_pull(data_statistics(params, v, c, target - np.asarray(mu)), cost)


def log_joint_va(params, v, a):
    """``log p~(v, a)`` (4.9) with h summed out: (B, I, d_v), (B, I) -> (B,); twin of the reference."""
    dt = _jit.kernel_dtype(params.W, v)
    if dt is None:
        return _ref.log_joint_va(params, v, a)
    v = _jit.as_c(v, dt)
    return _ref._log_joint_from_routed(params, v, np.asarray(a), assigned_input(params, v, a))  # (B,)


def mean_field(params, v, tol=1e-3, max_iter=30, damping=0.0, start=None):
    """Mean-field routing (4.6) with per-image stopping; twin of :func:`capsnp.model_r.mean_field`.

    From ``c = softmax_j(beta)`` (or ``start``), iterate ``mu = sigmoid(gamma + s(c))``,
    ``c_new = softmax_j(beta + u_hat . mu)``, ``c <- (1 - damping) c_new + damping c``; an image
    stops after the update with ``max |c_new - c| < tol``, or after ``max_iter`` updates.
    With assignment biases (RBParams) beta reads ``b(v) = beta + A . v`` (4b.3) and u_hat
    includes C (4b.2).

    Parameters
    ----------
    params : RParams or RBParams
    v : ndarray of shape (B, I, d_v)
    tol : float
    max_iter : int
    damping : float in [0, 1)
    start : ndarray of shape (B, I, J), optional, the routing to iterate from

    Returns
    -------
    c : ndarray of shape (B, I, J)
    mu : ndarray of shape (B, J, d_h), ``sigmoid(gamma + s(c))`` at the returned c
    n_iter : ndarray of int64, shape (B,), updates made per image
    """
    dt = _jit.kernel_dtype(params.W, v)
    if dt is None:
        return _ref.mean_field(params, v, tol=tol, max_iter=max_iter, damping=damping, start=start)
    gamma, v = (_jit.as_c(x, dt) for x in (params.gamma, v))
    B = v.shape[0]
    I, J, d_h = params.W.shape[:3]
    Wt, C = _transposed_weights(params, dt)  # (I, J, d_v, d_h), (I, J, d_h)
    prior = _jit.as_c(_ref.prior_logits(params, v), dt)  # (B, I, J)
    if start is None:
        c0 = softmax(prior, axis=-1)  # (B, I, J), the routing at h = 0: each image's starting point
    else:
        c0 = _jit.as_c(_ref._checked_start(start, prior.shape, dt), dt)  # (B, I, J)
    c = np.empty((B, I, J), dtype=dt)
    mu = np.empty((B, J, d_h), dtype=dt)
    n_iter = np.empty(B, dtype=np.int64)
    _jit.run_chunks(_jit.r_mean_field, B, Wt, C, gamma, prior, c0, v, float(tol), int(max_iter),
                    float(damping), c, mu, n_iter)
    return c, mu, n_iter


def gibbs_sweep(params, v, a, rng, return_probability=False, field=None):
    """One 3-block Gibbs sweep (4.7) on the chain state (v, a); twin of the reference.

    Random draws, in order: ``rng.random((B, J, d_h))`` for h, ``rng.random((B, I))`` for the
    new assignments (inverse CDF over parents), ``rng.random((B, I, d_v))`` for v.

    Parameters
    ----------
    params : RParams or RBParams
    v : ndarray of shape (B, I, d_v), binary
    a : ndarray of int, shape (B, I), values in 0..J-1
    rng : np.random.Generator
    return_probability : bool, also return ``p(h | v, a)`` at the input (v, a)
    field : ndarray of shape (B, I, d_v), optional, added to every visible logit (the shared
        capsule's ``V_i^T g``, (4c.4)), as in the reference: the routing step does not see it.

    Returns
    -------
    v_new : ndarray of shape (B, I, d_v)
    h : ndarray of shape (B, J, d_h)
    a_new : ndarray of int64, shape (B, I)
    resp : ndarray of shape (B, I, J), ``p(a_i = j | v, h)`` at the input v and the drawn h
    p_h : ndarray of shape (B, J, d_h), only with ``return_probability``
    """
    dt = _jit.kernel_dtype(params.W, v)
    if dt is None:
        return _ref.gibbs_sweep(params, v, a, rng, return_probability, field)
    W, gamma, v = (_jit.as_c(x, dt) for x in (params.W, params.gamma, v))
    _, A = _ref.assignment_biases(params)
    alpha = params.alpha[:, None, :] if A is None else params.alpha[:, None, :] + A
    alpha = _jit.as_c(np.broadcast_to(alpha, W.shape[:2] + W.shape[3:]), dt)  # (I, J, d_v) (4b.4)
    B, I, d_v = v.shape
    J, d_h = W.shape[1], W.shape[2]
    a = _checked_assignments(a, B, I, J)
    u_h = rng.random((B, J, d_h))  # (B, J, d_h)
    u_a = rng.random((B, I))  # (B, I)
    u_v = rng.random((B, I, d_v))  # (B, I, d_v)
    Wt, C_dt = _transposed_weights(params, dt)  # (I, J, d_v, d_h), (I, J, d_h)
    # U (4.4): h from the sparse v, never forming u_hat (B, I, J, d_h)
    h = np.empty((B, J, d_h), dtype=dt)
    p_h = np.empty((B, J, d_h), dtype=dt)
    _jit.run_chunks(_jit.r_hidden_draw, B, Wt, C_dt, gamma, v, a, u_h, h, p_h)
    # R (4.3) and D (4.5) from the top-down fields W_ij^T h_j: one matrix product per parent
    T = top_down(params, h)  # (J, B, I, d_v)
    # the routing logits b(v) + C . h (4b.3) are summed inside the kernel, and the field enters
    # the visible logits there: no (J, B, I, d_v) sum and no (B, I, J) logits are formed here
    Ch = np.matmul(np.moveaxis(h, 1, 0), np.moveaxis(C_dt, 1, 0).swapaxes(1, 2))  # (J, B, I): C_ij . h_j
    field = np.empty((0, 0, 0), dtype=dt) if field is None else _jit.as_c(field, dt)  # (B, I, d_v)
    beta = _jit.as_c(params.beta, dt)  # (I, J)
    A = np.zeros((I, J, d_v), dtype=dt) if A is None else _jit.as_c(A, dt)  # (I, J, d_v)
    v_new = np.empty((B, I, d_v), dtype=dt)
    a_new = np.empty((B, I), dtype=np.int64)
    resp = np.empty((B, I, J), dtype=dt)
    _jit.run_chunks(_jit.r_route_visible_draw, B, T, field, alpha, beta, A, Ch, v, u_a, u_v,
                    a_new, v_new, resp)
    return (v_new, h, a_new, resp, p_h) if return_probability else (v_new, h, a_new, resp)


def data_statistics(params, v, c, mu, weights=None):
    """Mean-field data statistics (4.8), batch-averaged in one fused pass.

    ``W: c_ij mu_j v_i^T``, ``alpha: v``, ``gamma: mu``, ``beta: c``, weighted by ``weights``
    (uniform 1/B if omitted).

    Parameters
    ----------
    params : RParams or RBParams (its type and dtype are used)
    v : ndarray of shape (B, I, d_v)
    c : ndarray of shape (B, I, J)
    mu : ndarray of shape (B, J, d_h)
    weights : ndarray of shape (B,), optional

    Returns
    -------
    the type of params: W (I, J, d_h, d_v), alpha (I, d_v), gamma (J, d_h), beta (I, J) (+ C, A)
    """
    dt = _jit.kernel_dtype(params.W, v, c, mu)
    if dt is None:
        return _ref.data_statistics(params, v, c, mu, weights)
    v, c, mu = (_jit.as_c(x, dt) for x in (v, c, mu))
    B, I, d_v = v.shape
    J, d_h = mu.shape[1], mu.shape[2]
    w = np.full(B, 1.0 / B, dtype=dt) if weights is None else _jit.as_c(weights, dt)  # (B,)
    dW = np.empty((I, J, d_h, d_v), dtype=dt)
    d_alpha = np.empty((I, d_v), dtype=dt)
    d_beta = np.empty((I, J), dtype=dt)
    _jit.run_chunks(_jit.r_statistics, I, w, v, c, mu, dW, d_alpha, d_beta, np.finfo(dt).tiny)
    d_gamma = np.einsum("b,bjk->jk", w, mu)  # (J, d_h), small
    return type(params)(W=dW, alpha=d_alpha, gamma=d_gamma, beta=d_beta,
                        **_ref.bias_statistics(params, v, c, mu, w))  # C, A (4b.5): small products


def model_statistics(params, v, h, resp, weights=None):
    """Rao-Blackwellised model statistics (4.8): ``resp_ij h_j v_i^T``, v, h, resp, batch-averaged.

    Parameters
    ----------
    params : RParams or RBParams (its type and dtype are used)
    v : ndarray of shape (B, I, d_v)
    h : ndarray of shape (B, J, d_h)
    resp : ndarray of shape (B, I, J), ``p(a | v, h)`` at this (v, h)
    weights : ndarray of shape (B,), optional

    Returns
    -------
    the type of params: W (I, J, d_h, d_v), alpha (I, d_v), gamma (J, d_h), beta (I, J) (+ C, A)
    """
    return data_statistics(params, v, resp, h, weights)  # same algebra with c -> resp, mu -> h


def hidden_model_statistics(params, v, a, p_h, resp, weights=None):
    """Model statistics Rao-Blackwellised over h where they involve h (4b.10); twin of the reference.

    ``W: [a_i = j] p_j v_i^T``, ``gamma: p``, ``C: [a_i = j] p_j`` through the fused
    :func:`data_statistics` with one-hot routes a (B, I); ``beta: resp``, ``A: resp_ij v_i``,
    ``alpha: v``. Arguments, shapes and result as :func:`capsnp.model_r.hidden_model_statistics`.
    """
    dt = _jit.kernel_dtype(params.W, v, p_h, resp)
    if dt is None:
        return _ref.hidden_model_statistics(params, v, a, p_h, resp, weights)
    onehot = _ref._one_hot(np.asarray(a), params.W.shape[1], dt)  # (B, I, J)
    routed = data_statistics(params, v, onehot, p_h, weights)
    return _ref._with_routing_statistics(params, routed, v, resp, weights)
