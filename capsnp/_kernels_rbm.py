"""Numba twin of the Bernoulli RBM's Gibbs sweep (MODEL.md sec. 5), as ``capsnp.kernels.rbm``.

* (5.5) :func:`gibbs_sweep`, the CD/PCD step: the two matrix products go to BLAS (``np.dot``
  inside the compiled function, threaded by BLAS); bias, sigmoid and Bernoulli draw are fused
  in one pass per layer, with the uniforms drawn beforehand in the reference's order.

Without Numba (or for dtypes other than float32/float64) it calls :func:`capsnp.rbm.gibbs_sweep`.
"""

import numpy as np

from . import _kernels_jit as _jit
from . import rbm as _ref

__all__ = ["gibbs_sweep"]


def gibbs_sweep(params, v, rng):
    """One block Gibbs sweep (5.5): ``h ~ p(h | v)``, then ``v_new ~ p(v | h)``.

    Draw order, as in the reference: ``rng.random((B, H))`` for h, then ``rng.random((B, D))``
    for v_new, each unit set by ``x = (u < p)``.

    Parameters
    ----------
    params : RBMParams
    v : ndarray of shape (B, D), binary
    rng : np.random.Generator

    Returns
    -------
    v_new : ndarray of shape (B, D)
    h : ndarray of shape (B, H), the hidden sample drawn on the way
    """
    dt = _jit.kernel_dtype(params.W, v)
    if dt is None:
        return _ref.gibbs_sweep(params, v, rng)
    W, a, b, v = (_jit.as_c(x, dt) for x in (params.W, params.a, params.b, v))
    B, D = v.shape
    H = W.shape[1]
    u_h = rng.random((B, H))  # (B, H)
    u_v = rng.random((B, D))  # (B, D)
    h = np.empty((B, H), dtype=dt)
    v_new = np.empty((B, D), dtype=dt)
    _jit.rbm_gibbs_sweep(W, a, b, v, u_h, u_v, h, v_new)
    return v_new, h
