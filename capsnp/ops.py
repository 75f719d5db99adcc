"""Elementwise and per-capsule operations shared by every model.

Equation labels refer to MODEL.md and to the lessons (``lessons/02_squash.py``).

* (1.1) ``squash(s) = s |s| / (1 + |s|^2)``
* (1.2) ``|squash(s)| = |s|^2 / (1 + |s|^2) = sigmoid(log |s|^2)``
* (1.3) the vector-Jacobian product of the squash, written with the safe unit vector.
"""

import numpy as np

__all__ = [
    "sigmoid",
    "log_sigmoid",
    "softplus",
    "softmax",
    "softmax_vjp",
    "squash",
    "squash_vjp",
    "squared_norm",
    "capsule_length",
]


def sigmoid(x):
    """Logistic function ``1 / (1 + e^{-x})``, finite for any finite or infinite x.

    Parameters
    ----------
    x : ndarray of any shape

    Returns
    -------
    ndarray of the same shape and dtype, values in [0, 1].
    """
    x = np.asarray(x)
    # sigmoid(x) = exp(-logaddexp(0, -x)): no overflow for large |x|.
    return np.exp(-np.logaddexp(np.zeros((), dtype=x.dtype), -x))


def log_sigmoid(x):
    """``log sigmoid(x) = -logaddexp(0, -x)``, stable for large |x|."""
    x = np.asarray(x)
    return -np.logaddexp(np.zeros((), dtype=x.dtype), -x)


def softplus(x):
    """``softplus(x) = log(1 + e^x) = logaddexp(0, x)``, stable for large |x|."""
    x = np.asarray(x)
    return np.logaddexp(np.zeros((), dtype=x.dtype), x)


def softmax(b, axis=-1):
    """Softmax along ``axis`` with the max subtracted (finite for any finite logits).

    Parameters
    ----------
    b : ndarray, e.g. routing logits of shape (B, I, J)
    axis : int
        The axis that sums to one. For routing this is the PARENT axis J (MODEL.md sec. 2).

    Returns
    -------
    ndarray of the same shape, summing to 1 along ``axis``.
    """
    b = np.asarray(b)
    e = np.exp(b - np.max(b, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def softmax_vjp(c, g, axis=-1):
    """Vector-Jacobian product of ``c = softmax(b)``: ``dL/db = c * (g - sum(c * g))``.

    Parameters
    ----------
    c : ndarray, the softmax output
    g : ndarray of the same shape, ``dL/dc``
    """
    return c * (g - np.sum(c * g, axis=axis, keepdims=True))


def squared_norm(s, axis=-1):
    """``|s|^2`` summed over ``axis``: (..., d) -> (...)."""
    return np.sum(s * s, axis=axis)


def capsule_length(s, axis=-1, keepdims=False):
    """Euclidean length ``|s|`` along ``axis``, without overflow for huge entries.

    ``|s| = m sqrt(sum (s/m)^2)`` with ``m = max |s_k|`` (and 0 where ``s = 0``).

    Parameters
    ----------
    s : ndarray of shape (..., d)

    Returns
    -------
    ndarray of shape (...) (or (..., 1) with ``keepdims``).
    """
    s = np.asarray(s)
    m = np.max(np.abs(s), axis=axis, keepdims=True)  # (..., 1)
    safe_m = np.where(m > 0, m, 1.0).astype(s.dtype, copy=False)
    n = m * np.sqrt(np.sum((s / safe_m) ** 2, axis=axis, keepdims=True))  # (..., 1)
    return n if keepdims else np.squeeze(n, axis=axis)


def _length_factor(n):
    """``f(n) = n / (1 + n^2)``, written as ``1 / (n + 1/n)`` for n > 1 (overflow-free)."""
    big = n > 1.0
    inv_n = 1.0 / np.where(big, n, 1.0)
    return np.where(big, 1.0 / (n + inv_n), n / (1.0 + np.where(big, 0.0, n) ** 2)), big, inv_n


def squash(s, axis=-1):
    """Squash nonlinearity (1.1): ``squash(s) = s |s| / (1 + |s|^2)``.

    It is exact at ``s = 0`` with no epsilon. Its length is
    ``|s|^2 / (1 + |s|^2) = sigmoid(log |s|^2)`` (1.2), always in [0, 1) (it rounds to 1 for
    ``|s|`` beyond about 1e8). It is formed as ``unit(s) * length`` with the unit vector taken
    from ``s / max|s_k|``, so that even a length that overflows keeps its direction, with no
    overflow warning.

    Parameters
    ----------
    s : ndarray of shape (..., d)
        Capsule input vectors along ``axis``.
    axis : int

    Returns
    -------
    v : ndarray of shape (..., d), same dtype as ``s``.
    """
    s = np.asarray(s)
    m = np.max(np.abs(s), axis=axis, keepdims=True)  # (..., 1)
    u = s / np.where(m > 0, m, 1.0).astype(s.dtype, copy=False)  # (..., d), entries in [-1, 1]
    nu = np.sqrt(np.sum(u * u, axis=axis, keepdims=True))  # (..., 1), in [1, sqrt(d)] or 0
    unit = u / np.where(nu > 0, nu, 1.0)  # (..., d), zero where s = 0
    with np.errstate(over="ignore"):
        n = m * nu  # (..., 1), |s|; may be inf
    f, big, inv_n = _length_factor(n)
    length = np.where(big, 1.0 / (1.0 + inv_n * inv_n), np.where(big, 0.0, n) * f)  # |s|^2 / (1 + |s|^2)
    return (unit * length).astype(s.dtype, copy=False)


def squash_vjp(s, g, axis=-1):
    """Vector-Jacobian product of the squash (1.3).

    With ``n = |s|``, ``s_hat = s / n`` (zero where ``n = 0``) and ``f(n) = n / (1 + n^2)``,

    .. math::
        J = f(n) I + n f'(n) \\hat s \\hat s^T, \\quad f'(n) = (1 - n^2) / (1 + n^2)^2,

    so ``g^T J = f g + n (1 - n^2) / (1 + n^2)^2 (g . s_hat) s_hat``. At ``s = 0`` the
    Jacobian is exactly zero (the squash is once differentiable there). Naive autodiff
    through ``sqrt(sum s^2)`` gives NaN at ``s = 0``; the safe unit vector avoids it.

    Parameters
    ----------
    s : ndarray of shape (..., d), the squash input
    g : ndarray of shape (..., d), ``dL/dsquash(s)``

    Returns
    -------
    ndarray of shape (..., d), ``dL/ds``.
    """
    s = np.asarray(s)
    g = np.asarray(g)
    n = capsule_length(s, axis=axis, keepdims=True)  # (..., 1)
    s_hat = s / np.where(n > 0, n, 1.0)  # (..., d), zero where n = 0
    f, big, m = _length_factor(n)  # m = 1/n where n > 1
    small_n = np.where(big, 0.0, n)
    # n f'(n) = n (1 - n^2) / (1 + n^2)^2; for n > 1 with m = 1/n: m (m^2 - 1) / (1 + m^2)^2.
    nfp = np.where(big, m * (m * m - 1.0) / (1.0 + m * m) ** 2,
                   small_n * (1.0 - small_n ** 2) / (1.0 + small_n ** 2) ** 2)
    gs = np.sum(g * s_hat, axis=axis, keepdims=True)  # (..., 1)
    return (f * g + nfp * gs * s_hat).astype(np.result_type(s, g), copy=False)
