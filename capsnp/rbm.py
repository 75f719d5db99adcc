"""Bernoulli restricted Boltzmann machine, the baseline of MODEL.md section 5.

Visible units v in {0,1}^D, hidden units h in {0,1}^H, parameters ``RBMParams(W (D, H),
a (D,), b (H,))``. Equation labels:

* (5.1) energy ``E(v, h) = -a.v - b.h - v^T W h``
* (5.2) hidden conditional ``p(h_k = 1 | v) = sigmoid(b_k + (v W)_k)``
* (5.3) visible conditional ``p(v_i = 1 | h) = sigmoid(a_i + (W h)_i)``
* (5.4) free energy ``F(v) = -v.a - sum_k softplus(b_k + (v W)_k)``, so ``p(v) = e^{-F(v)} / Z``
* (5.5) block Gibbs sweep ``h ~ p(h | v)`` then ``v' ~ p(v' | h)``
* (5.6) log-likelihood gradient ``d log p(v) / d theta = <stat>_data - <stat>_model`` with the
  statistics ``v p(h=1|v)^T``, ``v``, ``p(h=1|v)`` (contrastive divergence / PCD estimate)
* (5.7) pseudo-log-likelihood ``sum_i log p(v_i | v_{-i}) = sum_i log sigmoid(F(v^{(i)}) - F(v))``
  where ``v^{(i)}`` is v with bit i flipped
* (5.8) exact ``log Z`` by enumerating the smaller layer, exact ``log p(v)``, exact transition
  matrices of the Gibbs sampler (tiny models only, MODEL.md sec. 6 and 7).
* (5.9) centring (docs/MODEL_RB.md, "Centring"): the same model written with offsets m (D,), l (H,)
  as ``E = -a'.v - b'.h - (v - m)^T W (h - l)``; its gradient in (W, a', b') is the centred
  gradient ``<(v - m)(p(h=1|v) - l)^T>_data - <.>_model`` (:func:`centred_gradient`), a step in
  those coordinates changes the plain ones by :func:`from_centred`.
* (5.10) averaged offsets (docs/MODEL_RB.md): ``o_t = o_(t-1) + (o_batch,t - o_(t-1)) / K``, the
  estimators' ``centring_average`` (computed by :func:`capsnp.training.moving_average`).

Every function is pure and keeps the floating dtype of its inputs. Samplers take an explicit
``np.random.Generator`` and document the order of their ``rng.random`` calls: a uniform ``u`` is
turned into a binary unit by ``x = (u < p)``, the comparison made in float64.
"""

import numpy as np

from .exact import MAX_ENUMERATED_BITS, enumerate_binary
from .ops import log_sigmoid, sigmoid, softplus
from .params import RBMParams

__all__ = [
    "pcd_step",
    "energy",
    "hidden_probability",
    "visible_probability",
    "visible_logits",
    "free_energy",
    "sample_hidden",
    "sample_visible",
    "gibbs_sweep",
    "sufficient_statistics",
    "cd_gradient",
    "pseudo_log_likelihood",
    "pseudo_log_likelihood_exact",
    "exact_log_partition",
    "exact_log_marginal",
    "exact_probability_v",
    "exact_probability_vh",
    "exact_transition_matrix",
    "exact_block_kernels",
    "to_centred",
    "from_centred",
    "centred_gradient",
    "sparsity_gradient",
]

# Largest number of entries of an enumerated (states x states) table built at once.
_MAX_TABLE_ENTRIES = 2**24


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _float_dtype(*arrays):
    """The floating dtype that the inputs promote to (float64 if none of them is floating)."""
    dt = np.result_type(*[np.asarray(x).dtype for x in arrays])
    return dt if np.issubdtype(dt, np.floating) else np.dtype(np.float64)


def _logsumexp(x, axis=-1):
    """``log sum exp(x)`` along ``axis`` with the max subtracted.

    ``log sum_n e^{x_n} = m + log sum_n e^{x_n - m}`` with ``m = max_n x_n``.
    """
    x = np.asarray(x)
    m = np.max(x, axis=axis, keepdims=True)  # (..., 1, ...)
    m = np.where(np.isfinite(m), m, 0.0).astype(x.dtype, copy=False)
    out = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return np.squeeze(out, axis=axis)


def _bernoulli_pmf(states, logits):
    """Probability of every binary state under every product of Bernoullis.

    ``P[n, m] = prod_k sigmoid(t_nk)^{x_mk} sigmoid(-t_nk)^{1 - x_mk}``; writing ``1 - p`` as
    ``sigmoid(-t)`` keeps the small probabilities accurate.

    Parameters
    ----------
    states : ndarray of shape (M, K), binary
    logits : ndarray of shape (N, K)

    Returns
    -------
    ndarray of shape (N, M)
    """
    on = sigmoid(logits)[:, None, :]  # (N, 1, K)
    off = sigmoid(-logits)[:, None, :]  # (N, 1, K)
    return np.prod(np.where(states[None, :, :] > 0.5, on, off), axis=-1)  # (N, M)


def _bernoulli_draw(p, u):
    """Binary sample ``x = (u < p)`` in the dtype of ``p``."""
    return (u < p).astype(p.dtype)


# --------------------------------------------------------------------------------------------
# (5.1) - (5.4): energy, conditionals, free energy
# --------------------------------------------------------------------------------------------


def energy(params, v, h):
    """Energy (5.1): ``E(v, h) = -a.v - b.h - v^T W h``.

    Parameters
    ----------
    params : RBMParams
    v : ndarray of shape (B, D)
    h : ndarray of shape (B, H)

    Returns
    -------
    ndarray of shape (B,)
    """
    W, a, b = params
    dt = _float_dtype(W, v, h)
    v = np.asarray(v, dtype=dt)
    h = np.asarray(h, dtype=dt)
    interaction = np.einsum("bd,dh,bh->b", v, W, h, optimize=True)  # (B,)
    return (-(v @ a) - (h @ b) - interaction).astype(dt, copy=False)


def _hidden_logits(params, v):
    """``b + v W``: (B, D) -> (B, H)."""
    v = np.asarray(v, dtype=_float_dtype(params.W, v))
    return params.b + v @ params.W  # (B, H)


def visible_logits(params, h):
    """Input of the visible units (5.3), ``a + h W^T``: (B, H) -> (B, D)."""
    h = np.asarray(h, dtype=_float_dtype(params.W, h))
    return params.a + h @ params.W.T  # (B, D)


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
    return sigmoid(_hidden_logits(params, v))  # (B, H)


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
    return sigmoid(visible_logits(params, h))  # (B, D)


def free_energy(params, v):
    """Free energy (5.4): ``F(v) = -v.a - sum_k softplus(b_k + (v W)_k)``.

    Summing h out of ``e^{-E(v, h)}`` one unit at a time gives
    ``sum_h e^{-E} = e^{a.v} prod_k (1 + e^{b_k + (vW)_k})``, so ``p(v) = e^{-F(v)} / Z``.

    Parameters
    ----------
    params : RBMParams
    v : ndarray of shape (B, D)

    Returns
    -------
    ndarray of shape (B,)
    """
    v = np.asarray(v, dtype=_float_dtype(params.W, v))
    return -(v @ params.a) - np.sum(softplus(_hidden_logits(params, v)), axis=-1)  # (B,)


# --------------------------------------------------------------------------------------------
# (5.5): sampling
# --------------------------------------------------------------------------------------------


def sample_hidden(params, v, rng):
    """Draw ``h ~ p(h | v)`` (5.2).

    Draws ``u = rng.random((B, H))`` and returns ``h = (u < p(h = 1 | v))``.

    Parameters
    ----------
    params : RBMParams
    v : ndarray of shape (B, D)
    rng : np.random.Generator

    Returns
    -------
    h : ndarray of shape (B, H), binary, floating dtype
    """
    p = hidden_probability(params, v)  # (B, H)
    return _bernoulli_draw(p, rng.random(p.shape))  # (B, H)


def sample_visible(params, h, rng):
    """Draw ``v ~ p(v | h)`` (5.3).

    Draws ``u = rng.random((B, D))`` and returns ``v = (u < p(v = 1 | h))``.

    Parameters
    ----------
    params : RBMParams
    h : ndarray of shape (B, H)
    rng : np.random.Generator

    Returns
    -------
    v : ndarray of shape (B, D), binary, floating dtype
    """
    p = visible_probability(params, h)  # (B, D)
    return _bernoulli_draw(p, rng.random(p.shape))  # (B, D)


def gibbs_sweep(params, v, rng):
    """One block Gibbs sweep (5.5): ``h ~ p(h | v)``, then ``v_new ~ p(v | h)``.

    Draw order: ``rng.random((B, H))`` for h, then ``rng.random((B, D))`` for v_new, each unit
    set by ``x = (u < p)``. The sweep leaves ``p(v)`` invariant; as a chain on v its kernel is
    ``K(v, v') = sum_h p(h | v) p(v' | h)`` (see :func:`exact_transition_matrix`).

    Parameters
    ----------
    params : RBMParams
    v : ndarray of shape (B, D), binary
    rng : np.random.Generator

    Returns
    -------
    v_new : ndarray of shape (B, D)
    h : ndarray of shape (B, H), the hidden sample drawn from ``p(h | v)`` on the way
    """
    h = sample_hidden(params, v, rng)  # (B, H)
    v_new = sample_visible(params, h, rng)  # (B, D)
    return v_new, h


# --------------------------------------------------------------------------------------------
# (5.6): gradient
# --------------------------------------------------------------------------------------------


def _weighted_mean(x, weights):
    """Mean over the leading axis, or ``sum_b w_b x_b`` when weights (B,) are given."""
    if weights is None:
        return np.mean(x, axis=0)
    w = np.asarray(weights, dtype=x.dtype)
    return np.tensordot(w, x, axes=(0, 0))


def sufficient_statistics(params, v, weights=None, probability=None):
    """Rao-Blackwellised sufficient statistics averaged over a batch (5.6).

    ``-dE/dtheta`` averaged over ``h ~ p(h | v)``: for W it is ``v p(h=1|v)^T``, for a it is
    ``v``, for b it is ``p(h=1|v)``. Since ``-dF(v)/dtheta`` equals that average, these are
    exactly the per-image gradients of ``-F``.

    Parameters
    ----------
    params : RBMParams
    v : ndarray of shape (B, D)
    weights : ndarray of shape (B,), optional
        Probabilities summing to one (e.g. exact ``p(v)`` over all states); uniform if omitted.
    probability : ndarray of shape (B, H), optional
        ``p(h = 1 | v)`` under ``params`` when the caller already has it (computed if omitted).

    Returns
    -------
    RBMParams with W (D, H), a (D,), b (H,)
    """
    v = np.asarray(v, dtype=_float_dtype(params.W, v))
    ph = hidden_probability(params, v) if probability is None else np.asarray(probability, v.dtype)  # (B, H)
    w = np.full(v.shape[0], 1.0 / v.shape[0], dtype=v.dtype) if weights is None else np.asarray(weights, v.dtype)
    # sum_b w_b v_b ph_b^T as one matrix product, never forming the (B, D, H) tensor
    return RBMParams(W=(v * w[:, None]).T @ ph, a=_weighted_mean(v, weights),
                     b=_weighted_mean(ph, weights))


def cd_gradient(params, v_data, v_model, data_weights=None, model_weights=None, model_probability=None):
    """Contrastive-divergence estimate of the mean log-likelihood gradient (5.6).

    .. math::
        \\nabla_\\theta \\frac1B \\sum_b \\log p(v_b)
        = \\langle -\\partial_\\theta F \\rangle_{data} - \\langle -\\partial_\\theta F \\rangle_{model},

    with ``-dF/dW = v p(h=1|v)^T``, ``-dF/da = v``, ``-dF/db = p(h=1|v)`` (the hidden
    probabilities, not samples, as in scikit-learn's ``BernoulliRBM``).

    Sign: the result is the ASCENT direction of the log-likelihood; a learning step is
    ``params + lr * grad``. With ``v_model`` set to every visible state and ``model_weights``
    to the exact ``p(v)``, it is the exact gradient.

    Parameters
    ----------
    params : RBMParams
    v_data : ndarray of shape (B, D)
    v_model : ndarray of shape (B', D), chain states (CD-k: k sweeps from the data; PCD:
        persistent chains)
    data_weights, model_weights : ndarray of shape (B,) and (B',), optional
    model_probability : ndarray of shape (B', H), optional
        ``p(h = 1 | v_model)`` under ``params`` when the caller already has it (a sampler that
        drew h from it); computed if omitted.

    Returns
    -------
    RBMParams, same shapes as ``params``.
    """
    pos = sufficient_statistics(params, v_data, data_weights)
    neg = sufficient_statistics(params, v_model, model_weights, model_probability)
    return RBMParams(*(p - n for p, n in zip(pos, neg)))


def pcd_step(params, v_data, v_chain, p_chain, rng, k=1):
    """One PCD-k step (5.5, 5.6) whose chains carry their hidden probabilities, as scikit-learn's.

    A persistent chain is the pair ``(v_chain, p_chain)`` with ``p_chain = p(h = 1 | v_chain)``
    computed at the previous step, that is with the parameters before the last update. The step
    draws ``h = (u < p_chain)`` (``u = rng.random((B', H))``), then ``v ~ p(v | h)`` with the
    current parameters, then ``k - 1`` more block Gibbs sweeps (:func:`gibbs_sweep`), and takes
    the CD gradient (:func:`cd_gradient`) at the new chain states, whose hidden probabilities it
    returns for the next step. Reusing them saves one hidden-layer pass per step; the price is
    that the first half-sweep uses the previous parameters, a lag of one learning step, as
    scikit-learn's ``BernoulliRBM`` (which keeps ``h_samples_`` drawn from the same
    probabilities). With ``p_chain = hidden_probability(params, v_chain)`` the step is exactly
    k sweeps of :func:`gibbs_sweep` followed by :func:`cd_gradient`, with the same draws.

    Parameters
    ----------
    params : RBMParams
    v_data : ndarray of shape (B, D), the minibatch
    v_chain : ndarray of shape (B', D), binary chain states
    p_chain : ndarray of shape (B', H), their hidden probabilities from the previous step
    rng : np.random.Generator
    k : int, default=1, Gibbs sweeps per step

    Returns
    -------
    grad : RBMParams, the ascent direction (as :func:`cd_gradient`)
    v_new : ndarray of shape (B', D), the new chain states
    p_new : ndarray of shape (B', H), ``p(h = 1 | v_new)`` with ``params``
    """
    h = _bernoulli_draw(p_chain, rng.random(p_chain.shape))  # (B', H)
    v = sample_visible(params, h, rng)  # (B', D)
    for _ in range(int(k) - 1):
        v, _ = gibbs_sweep(params, v, rng)
    return cd_gradient(params, v_data, v), v, hidden_probability(params, v)


# --------------------------------------------------------------------------------------------
# (5.7): pseudo-likelihood
# --------------------------------------------------------------------------------------------


def _flip(v, index):
    """Copy of v (B, D) with bit ``index[b]`` of row b flipped."""
    v_flip = np.array(v, copy=True)
    rows = np.arange(v.shape[0])
    v_flip[rows, index] = 1 - v_flip[rows, index]
    return v_flip


def pseudo_log_likelihood(params, v, rng):
    """Stochastic pseudo-log-likelihood (5.7), scikit-learn's one-flip estimate.

    For each image one bit ``i ~ Uniform{0..D-1}`` is drawn (``rng.integers(0, D, size=B)``) and
    ``D log sigmoid(F(v^{(i)}) - F(v)) = D log p(v_i | v_{-i})`` is returned, an unbiased
    estimate of :func:`pseudo_log_likelihood_exact` over the draw of i.

    Parameters
    ----------
    params : RBMParams
    v : ndarray of shape (B, D), binary
    rng : np.random.Generator

    Returns
    -------
    ndarray of shape (B,)
    """
    v = np.asarray(v, dtype=_float_dtype(params.W, v))
    B, D = v.shape
    index = rng.integers(0, D, size=B)  # (B,)
    # log p(v_i | v_-i) = log [e^{-F(v)} / (e^{-F(v)} + e^{-F(v_flip)})] = log sigmoid(F(v_flip) - F(v))
    return D * log_sigmoid(free_energy(params, _flip(v, index)) - free_energy(params, v))  # (B,)


def pseudo_log_likelihood_exact(params, v):
    """Exact pseudo-log-likelihood (5.7): ``sum_i log sigmoid(F(v^{(i)}) - F(v))``.

    Flipping bit i changes it by ``s_i = 1 - 2 v_i`` and the hidden logits ``x = b + vW`` by
    ``s_i W_i``, so ``F(v^{(i)}) - F(v) = -s_i a_i - sum_k [softplus(x_k + s_i W_ik) - softplus(x_k)]``:
    all D flips cost one (D, H) table per image instead of D free energies.

    Parameters
    ----------
    params : RBMParams
    v : ndarray of shape (B, D), binary

    Returns
    -------
    ndarray of shape (B,)
    """
    v = np.asarray(v, dtype=_float_dtype(params.W, v))
    B, D = v.shape
    H = params.W.shape[1]
    x = _hidden_logits(params, v)  # (B, H)
    sign = 1 - 2 * v  # (B, D)
    out = np.empty(B, dtype=x.dtype)
    chunk = max(1, 2**22 // max(D * H, 1))
    for s in range(0, B, chunk):
        xs, ss = x[s:s + chunk], sign[s:s + chunk]  # (b, H), (b, D)
        x_flip = xs[:, None, :] + ss[:, :, None] * params.W[None, :, :]  # (b, D, H)
        dF = -ss * params.a - np.sum(softplus(x_flip) - softplus(xs)[:, None, :], axis=-1)  # (b, D)
        out[s:s + chunk] = np.sum(log_sigmoid(dF), axis=-1)  # (b,)
    return out


# --------------------------------------------------------------------------------------------
# (5.8): exact tools for tiny models
# --------------------------------------------------------------------------------------------


def _binary_block(n, start, stop, dtype):
    """Rows ``start..stop-1`` of :func:`capsnp.exact.enumerate_binary` (same ordering)."""
    r = np.arange(start, stop, dtype=np.int64)[:, None]  # (stop - start, 1)
    return ((r >> np.arange(n, dtype=np.int64)[None, :]) & 1).astype(dtype)  # (stop - start, n)


def exact_log_partition(params):
    """Exact ``log Z`` (5.8) by enumerating the smaller layer, the other summed in closed form.

    If ``D <= H``: ``log Z = logsumexp_v -F(v)``. Otherwise, summing v out instead,
    ``log Z = logsumexp_h [b.h + sum_i softplus(a_i + (W h)_i)]``. States are processed in
    chunks, so the memory stays bounded.

    Parameters
    ----------
    params : RBMParams

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If the smaller layer has more than 22 units.
    """
    W, a, b = params
    D, H = W.shape
    if min(D, H) > MAX_ENUMERATED_BITS:
        raise ValueError(
            f"exact log Z enumerates 2**{min(D, H)} states; at most 2**{MAX_ENUMERATED_BITS} allowed"
        )
    # The energy is symmetric in the two layers: swapping (v, a) with (h, b) and W with W^T gives
    # the same model, whose free energy sums out the other layer. Enumerate the smaller one.
    side = params if D <= H else RBMParams(W=W.T, a=b, b=a)
    n, other = side.W.shape
    dt = _float_dtype(W)
    chunk = max(1, 2**20 // max(other, 1))
    parts = [_logsumexp(-free_energy(side, _binary_block(n, s, min(s + chunk, 2**n), dt)))
             for s in range(0, 2**n, chunk)]
    return float(_logsumexp(np.asarray(parts)))


def exact_log_marginal(params, v, log_z=None):
    """Exact normalised ``log p(v) = -F(v) - log Z`` (5.4, 5.8).

    Parameters
    ----------
    params : RBMParams
    v : ndarray of shape (B, D)
    log_z : float, optional
        A precomputed :func:`exact_log_partition`.

    Returns
    -------
    ndarray of shape (B,)
    """
    if log_z is None:
        log_z = exact_log_partition(params)
    return -free_energy(params, v) - log_z  # (B,)


def exact_probability_v(params):
    """``p(v)`` for every visible state, in the order of ``enumerate_binary(D)``.

    Returns
    -------
    ndarray of shape (2**D,)
    """
    V = enumerate_binary(params.W.shape[0], dtype=_float_dtype(params.W))  # (2^D, D)
    return np.exp(exact_log_marginal(params, V))  # (2^D,)


def exact_probability_vh(params):
    """Joint ``p(v, h) = e^{-E(v, h)} / Z`` over all states; state index ``iv * 2**H + ih``.

    Returns
    -------
    ndarray of shape (2**D * 2**H,)
    """
    D, H = params.W.shape
    _check_table(2**D * 2**H, "p(v, h)")
    dt = _float_dtype(params.W)
    V = enumerate_binary(D, dtype=dt)  # (2^D, D)
    Hs = enumerate_binary(H, dtype=dt)  # (2^H, H)
    Vg = np.repeat(V, 2**H, axis=0)  # (2^D 2^H, D)
    Hg = np.tile(Hs, (2**D, 1))  # (2^D 2^H, H)
    return np.exp(-energy(params, Vg, Hg) - exact_log_partition(params))  # (2^D 2^H,)


def _check_table(entries, what):
    if entries > _MAX_TABLE_ENTRIES:
        raise ValueError(f"{what}: {entries} table entries is too large (at most {_MAX_TABLE_ENTRIES})")


def _conditional_tables(params):
    """``P_hv[v, h] = p(h | v)`` (2^D, 2^H) and ``P_vh[h, v] = p(v | h)`` (2^H, 2^D)."""
    D, H = params.W.shape
    _check_table(2**D * 2**H, "transition tables")
    dt = _float_dtype(params.W)
    V = enumerate_binary(D, dtype=dt)  # (2^D, D)
    Hs = enumerate_binary(H, dtype=dt)  # (2^H, H)
    P_hv = _bernoulli_pmf(Hs, _hidden_logits(params, V))  # (2^D, 2^H)
    P_vh = _bernoulli_pmf(V, visible_logits(params, Hs))  # (2^H, 2^D)
    return P_hv, P_vh


def exact_transition_matrix(params):
    """Exact kernel of :func:`gibbs_sweep` as a chain on v (5.5).

    ``K[v, v'] = sum_h p(h | v) p(v' | h)``, states in the order of ``enumerate_binary(D)``.
    ``p(v)`` is invariant: ``sum_v p(v) K[v, v'] = p(v')``.

    Returns
    -------
    ndarray of shape (2**D, 2**D), rows sum to one.
    """
    P_hv, P_vh = _conditional_tables(params)
    return P_hv @ P_vh  # (2^D, 2^D)


def exact_block_kernels(params):
    """Single-block Gibbs kernels on the joint state (v, h), index ``iv * 2**H + ih``.

    ``K_h[(v,h), (v',h')] = [v' = v] p(h' | v)`` and ``K_v[(v,h), (v',h')] = [h' = h] p(v' | h)``.
    Each block satisfies detailed balance with ``p(v, h)`` (:func:`exact_probability_vh`); the
    sweep is ``K_h @ K_v``.

    Returns
    -------
    K_h, K_v : ndarrays of shape (2**D 2**H, 2**D 2**H)
    """
    D, H = params.W.shape
    _check_table((2**D * 2**H) ** 2, "block kernels")
    P_hv, P_vh = _conditional_tables(params)
    nv, nh = 2**D, 2**H
    eye_v, eye_h = np.eye(nv, dtype=P_hv.dtype), np.eye(nh, dtype=P_hv.dtype)
    ones_h = np.ones(nh, dtype=P_hv.dtype)
    ones_v = np.ones(nv, dtype=P_hv.dtype)
    K_h = np.einsum("vw,vc,h->vhwc", eye_v, P_hv, ones_h)  # (nv, nh, nv, nh)
    K_v = np.einsum("hc,hw,v->vhwc", eye_h, P_vh, ones_v)  # (nv, nh, nv, nh)
    return K_h.reshape(nv * nh, nv * nh), K_v.reshape(nv * nh, nv * nh)


# --------------------------------------------------------------------------------------------
# (5.9): centring
# --------------------------------------------------------------------------------------------


def to_centred(params, m, l):
    """Centred coordinates (5.9) of an RBM: ``W' = W``, ``a' = a + W l``, ``b' = b + W^T m``.

    ``E = -a'.v - b'.h - (v - m)^T W (h - l)`` then equals (5.1) up to the constant
    ``m^T W l``, which cancels in p(v, h).

    Parameters
    ----------
    params : RBMParams
    m : ndarray of shape (D,), visible offsets
    l : ndarray of shape (H,), hidden offsets

    Returns
    -------
    RBMParams, the centred parameters (W', a', b')
    """
    return RBMParams(W=params.W, a=params.a + params.W @ l, b=params.b + params.W.T @ m)


def from_centred(centred, m, l):
    """Plain parameters (5.1) of centred ones (5.9): ``W = W'``, ``a = a' - W' l``, ``b = b' - W'^T m``.

    The map is linear in (W', a', b'), so it also turns a step taken in centred coordinates into
    the step of the plain parameters.

    Parameters
    ----------
    centred : RBMParams, parameters or a step in centred coordinates
    m : ndarray of shape (D,)
    l : ndarray of shape (H,)

    Returns
    -------
    RBMParams
    """
    return RBMParams(W=centred.W, a=centred.a - centred.W @ l, b=centred.b - centred.W.T @ m)


def centred_gradient(grad, m, l):
    """The log-likelihood gradient in centred coordinates (5.9), from the plain one (5.6).

    By the chain rule through :func:`from_centred`: ``g_W' = g_W - m g_b^T - g_a l^T``,
    ``g_a' = g_a``, ``g_b' = g_b``. With statistics it is
    ``<(v - m)(p(h=1|v) - l)^T>_data - <.>_model`` (the ``m l^T`` terms cancel).

    Parameters
    ----------
    grad : RBMParams, data minus model statistics (:func:`cd_gradient`)
    m : ndarray of shape (D,)
    l : ndarray of shape (H,)

    Returns
    -------
    RBMParams
    """
    return RBMParams(W=grad.W - np.outer(m, grad.b) - np.outer(grad.a, l), a=grad.a, b=grad.b)  # (D, H)


# --------------------------------------------------------------------------------------------
# sparsity targets (docs/MODEL_RB.md (4b.11))
# --------------------------------------------------------------------------------------------


def sparsity_gradient(params, v, target, cost):
    """Ascent direction of the sparsity penalty (4b.11) in every parameter of the hidden inputs.

    The input of h_k on image n is ``x_nk = b_k + (W^T v_n)_k``, so ``-dOmega/dtheta = lambda
    (1/B) sum_n (p - p(h = 1 | v_n)) dx_n/dtheta``:

        W: lambda <v (p - p(h|v))^T>,   b: lambda <p - p(h|v)>,   a: 0

    (Hinton's practical guide, section 11, adjusts the bias and the incoming weights).

    Parameters
    ----------
    params : RBMParams
    v : ndarray of shape (B, D), the minibatch
    target : float in (0, 1), p
    cost : float >= 0, lambda

    Returns
    -------
    RBMParams with W (D, H), a (D,), b (H,)
    """
    v = np.asarray(v, dtype=_float_dtype(params.W, v))
    pull = target - hidden_probability(params, v)  # (B, H)
    return RBMParams(W=cost * (v.T @ pull) / v.shape[0], a=np.zeros_like(params.a),
                     b=cost * pull.mean(axis=0))  # (D, H), (D,), (H,)
