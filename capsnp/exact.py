"""Enumeration helpers for tiny models (MODEL.md sec. 6 and 7).

The model-specific exact tools (log Z, exact marginals, exact transition matrices of each
sampler) live beside each model (``model_p``, ``model_r``, ``rbm``) and are re-exported here.
"""

import numpy as np

__all__ = ["enumerate_binary", "enumerate_assignments", "stationary_distance"]

MAX_ENUMERATED_BITS = 22


def enumerate_binary(n, dtype=np.float64):
    """All binary vectors of length ``n``, in counting order (bit k of row r is (r >> k) & 1).

    Parameters
    ----------
    n : int, at most 22
    dtype : numpy dtype of the result

    Returns
    -------
    ndarray of shape (2**n, n)
    """
    if n > MAX_ENUMERATED_BITS:
        raise ValueError(f"enumerating 2**{n} states is too large (at most 2**{MAX_ENUMERATED_BITS})")
    r = np.arange(2**n, dtype=np.int64)[:, None]  # (2^n, 1)
    return ((r >> np.arange(n, dtype=np.int64)[None, :]) & 1).astype(dtype)  # (2^n, n)


def enumerate_assignments(I, J):
    """All routing assignments a in {0..J-1}^I, child 0 varying fastest.

    Returns
    -------
    ndarray of int64, shape (J**I, I)
    """
    if J**I > 2**MAX_ENUMERATED_BITS:
        raise ValueError(f"enumerating {J}**{I} assignments is too large")
    r = np.arange(J**I, dtype=np.int64)[:, None]  # (J^I, 1)
    return (r // (J ** np.arange(I, dtype=np.int64))[None, :]) % J  # (J^I, I)


def stationary_distance(pi, K):
    """Total-variation distance ``0.5 * sum |pi K - pi|`` (0 when ``pi`` is invariant for ``K``).

    Parameters
    ----------
    pi : ndarray of shape (S,), a probability vector
    K : ndarray of shape (S, S), a row-stochastic transition matrix
    """
    return 0.5 * float(np.abs(pi @ K - pi).sum())
