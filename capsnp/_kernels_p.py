"""Numba twins of :mod:`capsnp.model_p` (MODEL.md sec. 3), reached as ``capsnp.kernels.model_p``.

Same names, signatures and results as the NumPy reference:

* (3.3) :func:`free_energy`
* (3.6, 3.7) :func:`free_energy_grad`, ``full`` (routing VJP fused per image) and ``frozen``
* (3.9) :func:`mh_sweep`, exact Metropolis-Hastings with incremental updates of u_hat
* (3.10) :func:`reconstruct_step`
* (3.2) :func:`firing_probability` and (3.11) :func:`pseudo_log_likelihood`, the reference's
  compositions run on the compiled routing and free energy

Any other name of :mod:`capsnp.model_p` (e.g. ``firing_logit``) resolves to the reference.

Every function also serves Models G and S (docs/MODEL_G.md): given GParams or SParams, the
kernels use that expert (G.2-G.4, S.2-S.4) through one integer switch.

The batch is split over ``numba.get_num_threads()`` threads; every image is handled by one
thread and batch sums are taken in a fixed order afterwards, so results do not depend on the
number of threads.
The samplers draw their uniforms from the generator in the reference's order and shapes before
calling the kernel, so for the same ``rng`` state they return the same states as the reference.
Without Numba (or for dtypes other than float32/float64) every function calls the reference.
"""

import numpy as np

from . import _kernels_jit as _jit
from . import model_p as _ref
from ._kernels_routing import dynamic_routing
from .ops import log_sigmoid, sigmoid, softmax


__all__ = ["free_energy", "free_energy_grad", "mh_sweep", "reconstruct_step",
           "firing_probability", "pseudo_log_likelihood"]


def __getattr__(name):
    """Names without a compiled twin are the NumPy reference's (``capsnp.model_p``)."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_ref, name)


def _expert(params):
    """The kernels' expert code from the container's type: 0 P (squash), 1 G, 2 S."""
    return {"squash": _jit.SQUASH, "gaussian": _jit.GAUSSIAN, "spin": _jit.SPIN}[_ref.expert_of(params)]


def _pose_mean(params, dt):
    """Models G and S: m (J, d_h) in the kernel dtype; zeros (unused) for Model P."""
    if _expert(params) != _jit.SQUASH:
        return _jit.as_c(params.m, dt)
    return np.zeros(params.W.shape[1:3], dtype=dt)


def _prepared(params, v):
    """Kernel inputs, or None when the reference must be used.

    Returns (dtype, W, alpha, rho, beta, c0, v, u) as C-contiguous arrays of the kernel dtype,
    with ``c0 = softmax_j(beta)`` (I, J), the first routing pass's coefficients, and the
    predictions ``u = W v`` (B, I, J, d_h).
    """
    dt = _jit.kernel_dtype(params.W, v)
    if dt is None:
        return None
    W, alpha, rho, beta, v = (_jit.as_c(x, dt)
                              for x in (params.W, params.alpha, params.rho, params.beta, v))
    c0 = softmax(beta, axis=-1)  # (I, J)
    return dt, W, alpha, rho, beta, c0, v, _jit.batch_predictions(W, v)


def free_energy(params, v, n_iter=3):
    """Free energy of Model P (3.3), ``F(v) = -alpha.v - sum_j log(1 + e^{rho_j} |s_j(v)|^2)``.

    Parameters
    ----------
    params : PParams or GParams
    v : ndarray of shape (B, I, d_v)
    n_iter : int, routing passes

    Returns
    -------
    F : ndarray of shape (B,)
    """
    prep = _prepared(params, v)
    if prep is None:
        return _ref.free_energy(params, v, n_iter)
    r = _jit.check_n_iter(n_iter)
    dt, W, alpha, rho, beta, c0, v, u = prep
    F = np.empty(v.shape[0], dtype=dt)
    _jit.run_chunks(_jit.p_free_energy, v.shape[0], alpha, rho, _pose_mean(params, dt), beta, c0, v, u,
                    r, _expert(params), F)
    return F


def free_energy_grad(params, v, n_iter=3, mode="full"):
    """Gradient of the batch-mean free energy (3.6 ``full``, 3.7 ``frozen``).

    In ``full`` mode the routing forward pass and its VJP run fused per image (only that
    image's trace is kept); the adjoint of the predictions (B, I, J, d_h) is the largest array.
    ``dW_ij = sum_b g_bij v_bi^T`` is then summed in a fixed order over the batch.

    Parameters
    ----------
    params : PParams or GParams
    v : ndarray of shape (B, I, d_v)
    n_iter : int
    mode : {"full", "frozen"}

    Returns
    -------
    F : ndarray of shape (B,)
    grad : PParams or GParams (the type of params)
        ``d mean_b F(v_b) / d theta``: W (I, J, d_h, d_v), alpha (I, d_v), rho (J,), beta (I, J);
        beta's gradient is zero in ``frozen`` mode.
    """
    if mode not in ("full", "frozen"):
        raise ValueError(f"mode must be 'full' or 'frozen', got {mode!r}")
    prep = _prepared(params, v)
    if prep is None:
        return _ref.free_energy_grad(params, v, n_iter, mode)
    r = _jit.check_n_iter(n_iter)
    dt, W, alpha, rho, beta, c0, v, g_u = prep  # g_u: the predictions, then their adjoint
    B, I, d_v = v.shape
    J = W.shape[1]
    F = np.empty(B, dtype=dt)
    prob = np.empty((B, J), dtype=dt)
    s = np.empty((B, J, W.shape[2]), dtype=dt)
    g_b = np.empty((B, I, J), dtype=dt)
    d_W = np.empty_like(W)  # (I, J, d_h, d_v)
    _jit.run_chunks(_jit.p_free_energy_grad, B, alpha, rho, _pose_mean(params, dt), beta, c0, v, r,
                    mode == "full", _expert(params), F, prob, s, g_u, g_b)
    _jit.run_chunks(_jit.outer_sum, I, g_u, v, d_W)  # dW_ij = sum_b g_bij v_bi^T, b in order
    d_alpha = -v.mean(axis=0)  # (I, d_v)
    d_rho = -prob.mean(axis=0)  # (J,)
    d_beta = g_b.sum(axis=0) if mode == "full" else np.zeros_like(beta)  # (I, J)
    d_m = _ref.free_energy_dm(params, prob, s)  # (J, d_h) for G and S (G.4, S.4)
    extra = () if d_m is None else (d_m,)
    return F, type(params)(d_W, d_alpha, d_rho, d_beta, *extra)


def mh_sweep(params, v, rng, n_iter=3):
    """One systematic Metropolis-Hastings sweep over the visible capsules (3.9), exact.

    Twin of :func:`capsnp.model_p.mh_sweep`. Each chain keeps its predictions u_hat
    (I, J, d_h); the proposal for capsule i replaces row i only and the state is routed once.

    Random draws, in order, for each i: ``rng.random((B, d_v))`` (proposal),
    then ``rng.random(B)`` (acceptance), as in the reference.

    Parameters
    ----------
    params : PParams or GParams
    v : ndarray of shape (B, I, d_v), binary chain states (not modified)
    rng : np.random.Generator
    n_iter : int, routing passes

    Returns
    -------
    v_new : ndarray of shape (B, I, d_v)
    acceptance : ndarray of shape (B,), fraction of the I proposals accepted per chain
    """
    prep = _prepared(params, v)
    if prep is None:
        return _ref.mh_sweep(params, v, rng, n_iter)
    dt, W, alpha, rho, beta, c0, v_k, u = prep
    r = _jit.check_n_iter(n_iter)
    B, I, d_v = v_k.shape
    u_prop = np.empty((I, B, d_v))  # (I, B, d_v)
    u_acc = np.empty((I, B))  # (I, B)
    for i in range(I):
        u_prop[i] = rng.random((B, d_v))
        u_acc[i] = rng.random(B)
    v_new = v_k.copy()  # updated in place by the kernel
    n_accept = np.zeros(B, dtype=np.int64)
    _jit.run_chunks(_jit.p_mh_sweep, B, W, alpha, rho, _pose_mean(params, dt), beta, c0, v_new, u, r,
                    _expert(params), u_prop, u_acc, n_accept)
    return v_new.astype(np.asarray(v).dtype, copy=False), n_accept / I


def reconstruct_step(params, v, rng, n_iter=3):
    """The paper-literal heuristic (3.10): z ~ p(z | v), then all of v at once, always accepted.

    Random draws: ``rng.random((B, J))`` for z, then ``rng.random((B, I, d_v))`` for v.

    Parameters
    ----------
    params : PParams or GParams
    v : ndarray of shape (B, I, d_v)
    rng : np.random.Generator
    n_iter : int

    Returns
    -------
    v_new : ndarray of shape (B, I, d_v)
    z : ndarray of shape (B, J)
    """
    _ref._require_squash(params, "reconstruct")
    prep = _prepared(params, v)
    if prep is None:
        return _ref.reconstruct_step(params, v, rng, n_iter)
    dt, W, alpha, rho, beta, c0, v_k, u = prep
    r = _jit.check_n_iter(n_iter)
    B, I, d_v = v_k.shape
    J = W.shape[1]
    u_z = rng.random((B, J))  # (B, J)
    u_v = rng.random((B, I, d_v))  # (B, I, d_v)
    v_new = np.empty_like(v_k)
    z = np.empty((B, J), dtype=dt)
    _jit.run_chunks(_jit.p_reconstruct_step, B, W, alpha, rho, beta, c0, u, r, u_z, u_v, v_new, z)
    out_dt = np.asarray(v).dtype
    return v_new.astype(out_dt, copy=False), z.astype(out_dt, copy=False)


def firing_probability(params, v, n_iter=3):
    """Firing probabilities (3.2) ``p(z_j = 1 | v) = sigmoid(rho_j + log |s_j(v)|^2)``.

    Parameters
    ----------
    params : PParams or GParams
    v : ndarray of shape (B, I, d_v)
    n_iter : int, routing passes

    Returns
    -------
    p : ndarray of shape (B, J)
    """
    prep = _prepared(params, v)
    if prep is None:
        return _ref.firing_probability(params, v, n_iter)
    dt, W, alpha, rho, beta, c0, v, u = prep
    _, s, _ = dynamic_routing(u, n_iter, beta)  # s: (B, J, d_h)
    return sigmoid(_ref._logit(params._replace(rho=rho), s))  # (B, J)


def pseudo_log_likelihood(params, v, rng=None, n_iter=3):
    """Pseudo-log-likelihood (3.11) ``sum_k log sigmoid(F(v with k flipped) - F(v))``.

    The reference's composition on the compiled :func:`free_energy`, with the same draws: with
    ``rng``, one ``rng.integers(0, D, size=B)`` call and the one-flip estimate
    ``D log sigmoid(F(v~) - F(v))``; without it, the exact sum over all D pixels.

    Parameters
    ----------
    params : PParams or GParams
    v : ndarray of shape (B, I, d_v), binary
    rng : np.random.Generator or None
    n_iter : int

    Returns
    -------
    ndarray of shape (B,)
    """
    B, I, d_v = v.shape
    D = I * d_v
    F0 = free_energy(params, v, n_iter)  # (B,)
    rows = np.arange(B)
    if rng is not None:
        k = rng.integers(0, D, size=B)  # (B,)
        vf = v.reshape(B, D).copy()  # (B, D)
        vf[rows, k] = 1.0 - vf[rows, k]
        return D * log_sigmoid(free_energy(params, vf.reshape(B, I, d_v), n_iter) - F0)
    total = np.zeros(B, dtype=F0.dtype)
    for k in range(D):
        vf = v.reshape(B, D).copy()  # (B, D)
        vf[:, k] = 1.0 - vf[:, k]
        total += log_sigmoid(free_energy(params, vf.reshape(B, I, d_v), n_iter) - F0)
    return total
