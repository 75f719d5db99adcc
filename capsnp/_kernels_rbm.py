"""Numba twins of the Bernoulli RBM (MODEL.md sec. 5), as ``capsnp.kernels.rbm``.

* (5.2, 5.3) :func:`hidden_probability`, :func:`visible_probability`, :func:`sample_hidden`,
  :func:`sample_visible`; (5.4) :func:`free_energy`; (5.7) :func:`pseudo_log_likelihood`

* (5.5) :func:`gibbs_sweep`, the CD/PCD sampler: ``h ~ p(h | v)`` from the sparse binary v
  (only the nonzero pixels are visited, bias, sigmoid and draw fused into the pass), then
  ``v_new ~ p(v | h)`` (a BLAS product, then one compiled sigmoid-and-draw pass); the uniforms
  are drawn beforehand in the reference's order.
* (5.6) :func:`cd_gradient`, the CD/PCD gradient: both batches' hidden probabilities from their
  nonzero pixels, and the W statistic ``<v p(h|v)^T>_data - <v p(h|v)^T>_model`` summed over the
  nonzero pixels of each visible unit.

Every product from binary states is a compiled loop over their nonzero entries, split over
batch rows (or rows of the gradient) on ``numba.get_num_threads()`` threads, each entry computed
by one thread in a fixed order. The one dense product, ``h W^T`` from hidden samples (about half
ones), is BLAS on fixed blocks of 64 rows (:func:`visible_logits`), about twice as fast as a
compiled loop; the blocks are shared out over the kernel threads inside
:func:`capsnp._kernels_jit.single_threaded_blas` (the estimator's training and sampling, and AIS),
where OpenBLAS's own threads, spinning after each call, would take the cores from the kernels.
So results do not depend on the number of threads. Without Numba (or for dtypes other than
float32/float64, or weighted statistics) the functions call :mod:`capsnp.rbm`; any other name of
that module (``energy``, the exact tools, ...) resolves to the reference.
"""

import numpy as np

from . import _kernels_jit as _jit
from . import rbm as _ref
from .ops import log_sigmoid, softplus
from .params import RBMParams

__all__ = ["pcd_step", "hidden_probability", "visible_probability", "visible_logits", "sample_hidden",
           "sample_visible", "free_energy", "gibbs_sweep", "cd_gradient", "pseudo_log_likelihood"]


_MIN_UNITS = 16  # visible units (gradient rows) per range, at least
_NO_UNIFORMS = np.empty((0, 0))  # the uniforms argument of a layer kernel that draws nothing


def __getattr__(name):
    """Names without a compiled twin are the NumPy reference's (``capsnp.rbm``)."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_ref, name)


def _nonzero_rows(X):
    """(idx (N, K), cnt (N,)): the nonzero positions of each row of X."""
    idx = np.empty(X.shape, dtype=np.int64)
    cnt = np.empty(X.shape[0], dtype=np.int64)
    _jit.nonzero_rows(0, X.shape[0], X, idx, cnt)
    return idx, cnt


def _nonzero_columns(X):
    """(idx (K, N), cnt (K,)): the rows with a nonzero entry, for each column of X."""
    idx = np.empty(X.shape[::-1], dtype=np.int64)
    cnt = np.empty(X.shape[1], dtype=np.int64)
    _jit.run_chunks(_jit.nonzero_columns, X.shape[1], X, idx, cnt, min_items=64)
    return idx, cnt


def _min_rows(n_rows):
    """Rows per range of the layer kernels: about two ranges per thread (each range streams all
    of W once, so fewer, larger ranges read less)."""
    return max(1, n_rows // (2 * _jit.num_threads()))


def _hidden_layer(W, b, v, mode, u=_NO_UNIFORMS):
    """``b + v W`` (5.2), its sigmoid, or the draw ``u < sigmoid(b + v W)``: (N, D) -> (N, H)."""
    idx, cnt = _nonzero_rows(v)
    N = v.shape[0]
    out = np.empty((N, W.shape[1]), dtype=W.dtype)
    _jit.run_chunks(_jit.rbm_sparse_layer, N, v, idx, cnt, W, b, u, mode, out,
                    min_items=_min_rows(N))
    return out


def _visible_layer(W, a, h, mode, u=_NO_UNIFORMS):
    """``sigmoid(a + h W^T)`` (5.3) or the draw ``u < sigmoid(a + h W^T)``: (N, H) -> (N, D).
    W (D, H), a (D,) and h C-contiguous in the kernel dtype."""
    t = _visible_logits(W, a, h)  # (N, D)
    _jit.run_chunks(_jit.logistic_rows, t.shape[0], t, u, mode, min_items=_min_rows(t.shape[0]))
    return t


def _prepared(params, x):
    """(W, a, b, x) as C-contiguous arrays of the kernel dtype, or None for the reference."""
    dt = _jit.kernel_dtype(params.W, x)
    if dt is None or np.ndim(x) != 2:
        return None
    return tuple(_jit.as_c(y, dt) for y in (params.W, params.a, params.b, x))


def hidden_probability(params, v):
    """Hidden conditional (5.2): ``p(h_k = 1 | v) = sigmoid(b_k + sum_i v_i W_ik)``.

    Parameters
    ----------
    params : RBMParams
    v : ndarray of shape (B, D)

    Returns
    -------
    ndarray of shape (B, H)
    """
    prep = _prepared(params, v)
    if prep is None:
        return _ref.hidden_probability(params, v)
    W, _, b, v = prep
    return _hidden_layer(W, b, v, _jit.PROBABILITIES)  # (B, H)


def visible_probability(params, h):
    """Visible conditional (5.3): ``p(v_i = 1 | h) = sigmoid(a_i + sum_k W_ik h_k)``.

    Parameters
    ----------
    params : RBMParams
    h : ndarray of shape (B, H)

    Returns
    -------
    ndarray of shape (B, D)
    """
    prep = _prepared(params, h)
    if prep is None:
        return _ref.visible_probability(params, h)
    W, a, _, h = prep
    return _visible_layer(W, a, h, _jit.PROBABILITIES)  # (B, D)


_ROWS_PER_PRODUCT = 64  # rows of h per BLAS product in visible_logits, whatever the thread count


def _row_block_products(start, stop, h, Wt, out):
    """``out[r] = h[r] @ Wt`` for the blocks of ``_ROWS_PER_PRODUCT`` rows numbered [start, stop)."""
    for k in range(start, stop):
        rows = slice(k * _ROWS_PER_PRODUCT, (k + 1) * _ROWS_PER_PRODUCT)
        np.matmul(h[rows], Wt, out=out[rows])


def _visible_logits(W, a, h):
    """``a + h W^T`` (5.3) by BLAS products on fixed blocks of 64 rows: (N, H) -> (N, D).

    Inside :func:`capsnp._kernels_jit.single_threaded_blas` the blocks are shared out over the
    kernel threads, each on one BLAS thread; either way every block is one product, so the
    result does not depend on the number of threads.
    """
    Wt = W.T  # (H, D)
    out = np.empty((h.shape[0], Wt.shape[1]), dtype=h.dtype)  # (N, D)
    blocks = -(-h.shape[0] // _ROWS_PER_PRODUCT)
    if _jit.blas_is_single_threaded():
        _jit.run_chunks(_row_block_products, blocks, h, Wt, out, min_items=1)
    else:
        _row_block_products(0, blocks, h, Wt, out)
    out += a
    return out


def visible_logits(params, h):
    """Input of the visible units (5.3), ``a + h W^T``: (B, H) -> (B, D); twin of the reference.

    Also the visible pass of :func:`gibbs_sweep` and :func:`pcd_step`, and the field of a
    shared capsule's dense hidden states (``capsnp.model_rs.shared_field``). BLAS is about twice
    as fast here as a compiled loop over all the terms (results sec. 35); see
    :func:`_visible_logits` for the blocks.

    Parameters
    ----------
    params : RBMParams
    h : ndarray of shape (B, H)

    Returns
    -------
    ndarray of shape (B, D)
    """
    dt = _jit.kernel_dtype(params.W, h)
    if dt is None or np.ndim(h) != 2:
        return _ref.visible_logits(params, h)
    W = np.asarray(params.W, dtype=dt)  # (D, H); for a shared capsule the view V^T
    return _visible_logits(W, np.asarray(params.a, dtype=dt), _jit.as_c(h, dt))  # (B, D)


def sample_hidden(params, v, rng):
    """Draw ``h ~ p(h | v)`` (5.2): ``h = (u < p)`` with ``u = rng.random((B, H))``.

    Returns
    -------
    h : ndarray of shape (B, H), binary, floating dtype
    """
    prep = _prepared(params, v)
    if prep is None:
        return _ref.sample_hidden(params, v, rng)
    W, _, b, v = prep
    u = rng.random((v.shape[0], W.shape[1]))  # (B, H)
    return _hidden_layer(W, b, v, _jit.DRAWS, u)


def sample_visible(params, h, rng):
    """Draw ``v ~ p(v | h)`` (5.3): ``v = (u < p)`` with ``u = rng.random((B, D))``.

    Returns
    -------
    v : ndarray of shape (B, D), binary, floating dtype
    """
    prep = _prepared(params, h)
    if prep is None:
        return _ref.sample_visible(params, h, rng)
    W, a, _, h = prep
    u = rng.random((h.shape[0], W.shape[0]))  # (B, D)
    return _visible_layer(W, a, h, _jit.DRAWS, u)


def free_energy(params, v):
    """Free energy (5.4): ``F(v) = -v.a - sum_k softplus(b_k + (v W)_k)``.

    Parameters
    ----------
    params : RBMParams
    v : ndarray of shape (B, D)

    Returns
    -------
    ndarray of shape (B,)
    """
    prep = _prepared(params, v)
    if prep is None:
        return _ref.free_energy(params, v)
    W, a, b, v = prep
    terms = _hidden_layer(W, b, v, _jit.SOFTPLUS)  # (B, H), softplus(b + v W)
    return -np.sum(v * a, axis=1) - np.sum(terms, axis=1)  # (B,)


def pseudo_log_likelihood(params, v, rng):
    """Stochastic pseudo-log-likelihood (5.7), scikit-learn's one-flip estimate.

    The reference's draw, one bit ``i ~ Uniform{0..D-1}`` per image (``rng.integers(0, D,
    size=B)``), and its value ``D log sigmoid(F(v^{(i)}) - F(v))``, with the difference of free
    energies in closed form as in :func:`capsnp.rbm.pseudo_log_likelihood_exact`: flipping bit
    i by ``s = 1 - 2 v_i`` moves the hidden logits ``x = b + vW`` by ``s W_i``, so
    ``F(v^{(i)}) - F(v) = -s a_i - sum_k [softplus(x_k + s W_ik) - softplus(x_k)]``. One layer
    pass instead of two free energies, and no cancellation between two large free energies.

    Returns
    -------
    ndarray of shape (B,)
    """
    prep = _prepared(params, v)
    if prep is None:
        return _ref.pseudo_log_likelihood(params, v, rng)
    W, a, b, v = prep
    B, D = v.shape
    index = rng.integers(0, D, size=B)  # (B,)
    sign = 1 - 2 * v[np.arange(B), index]  # (B,)
    x = _hidden_layer(W, b, v, _jit.LOGITS)  # (B, H)
    d_free = -sign * a[index] - np.sum(softplus(x + sign[:, None] * W[index]) - softplus(x),
                                       axis=1)  # (B,)
    return D * log_sigmoid(d_free)  # (B,)


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
    h = _hidden_layer(W, b, v, _jit.DRAWS, u_h)  # (B, H)
    v_new = _visible_layer(W, a, h, _jit.DRAWS, u_v)  # (B, D)
    return v_new, h


def cd_gradient(params, v_data, v_model, data_weights=None, model_weights=None, model_probability=None):
    """Contrastive-divergence estimate of the mean log-likelihood gradient (5.6), ascent direction.

    ``W: <v p(h=1|v)^T>_data - <v p(h=1|v)^T>_model``, ``a: <v>_data - <v>_model``,
    ``b: <p(h=1|v)>_data - <p(h=1|v)>_model``, each a mean over its batch. Twin of
    :func:`capsnp.rbm.cd_gradient` (which it calls for weighted statistics).

    Parameters
    ----------
    params : RBMParams
    v_data : ndarray of shape (B, D)
    v_model : ndarray of shape (B', D), chain states
    data_weights, model_weights : ndarray of shape (B,) and (B',), optional
    model_probability : ndarray of shape (B', H), optional, ``p(h = 1 | v_model)`` when the
        caller already has it (one hidden-layer pass fewer)

    Returns
    -------
    RBMParams, same shapes as ``params``.
    """
    dt = _jit.kernel_dtype(params.W, v_data, v_model)
    if dt is None or data_weights is not None or model_weights is not None:
        return _ref.cd_gradient(params, v_data, v_model, data_weights, model_weights, model_probability)
    return _cd_gradient(params, v_data, v_model, dt, model_probability)[0]


def _cd_gradient(params, v_data, v_model, dt, model_probability=None):
    """(5.6) the unweighted CD gradient in dtype dt, and ``p(h = 1 | v_model)`` (B', H)
    (``model_probability`` if given, else computed)."""
    W, b, v_d, v_m = (_jit.as_c(x, dt) for x in (params.W, params.b, v_data, v_model))
    ph_d = _hidden_layer(W, b, v_d, _jit.PROBABILITIES)  # (B, H)
    if model_probability is None:
        ph_m = _hidden_layer(W, b, v_m, _jit.PROBABILITIES)  # (B', H)
    else:
        ph_m = _jit.as_c(model_probability, dt)  # (B', H)
    idx_d, cnt_d = _nonzero_columns(v_d)
    idx_m, cnt_m = _nonzero_columns(v_m)
    d_W = np.empty_like(W)  # (D, H)
    _jit.run_chunks(_jit.rbm_weight_statistic, W.shape[0], v_d, idx_d, cnt_d, ph_d, v_m, idx_m,
                    cnt_m, ph_m, dt.type(1.0 / v_d.shape[0]), dt.type(1.0 / v_m.shape[0]), d_W,
                    min_items=max(_MIN_UNITS, W.shape[0] // (2 * _jit.num_threads())))
    grad = RBMParams(W=d_W, a=v_d.mean(axis=0) - v_m.mean(axis=0),
                     b=ph_d.mean(axis=0) - ph_m.mean(axis=0))
    return grad, ph_m


def pcd_step(params, v_data, v_chain, p_chain, rng, k=1):
    """One PCD-k step whose chains carry their hidden probabilities (twin of
    :func:`capsnp.rbm.pcd_step`, the same draws in the same order).

    ``h = (u < p_chain)``, ``v ~ p(v | h)``, ``k - 1`` further sweeps, then the CD gradient;
    the chains' new hidden probabilities come out of the gradient's own hidden pass, so a
    PCD-1 step makes three layer passes (and the weight statistic) instead of four.

    Returns
    -------
    grad : RBMParams; v_new : ndarray (B', D); p_new : ndarray (B', H)
    """
    dt = _jit.kernel_dtype(params.W, v_data, v_chain, p_chain)
    if dt is None:
        return _ref.pcd_step(params, v_data, v_chain, p_chain, rng, k)
    W, a = (_jit.as_c(x, dt) for x in (params.W, params.a))
    p_chain = np.asarray(p_chain)
    h = (rng.random(p_chain.shape) < p_chain).astype(dt)  # (B', H)
    u_v = rng.random((h.shape[0], W.shape[0]))  # (B', D)
    v = _visible_layer(W, a, h, _jit.DRAWS, u_v)  # (B', D)
    for _ in range(int(k) - 1):
        v, _ = gibbs_sweep(params, v, rng)
    grad, p_new = _cd_gradient(params, v_data, v, dt)
    return grad, v, p_new
