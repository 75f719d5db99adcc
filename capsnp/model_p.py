"""Model P: the capsule product of experts (MODEL.md sec. 3, ``lessons/05_model_p.py``,
``lessons/06_sampling_p.py``).

Each hidden capsule j has a binary firing variable z_j, and ``s_j(v)`` is the routed input of
parent j when the visible capsules v are routed (sec. 2). Equation labels:

* (3.1) energy ``E(v, z) = -alpha . v - sum_j z_j (rho_j + log |s_j(v)|^2)``
* (3.2) firing probability ``p(z_j = 1 | v) = sigmoid(rho_j + log |s_j|^2)``; at rho = 0 this is
  ``|squash(s_j)|``
* (3.3) free energy ``F(v) = -alpha . v - sum_j log(1 + e^{rho_j} |s_j|^2)``
* (3.4) capsule readout: probability ``p_j`` and pose ``squash(e^{rho_j / 2} s_j)``
* (3.5) ``dF/ds_j = -2 e^{rho_j} s_j / (1 + e^{rho_j} |s_j|^2)``
* (3.6) ``full`` gradient of F: back-propagation through the r routing passes (2.2)
* (3.7) ``frozen`` gradient: c held constant, ``dF/dW_ij = c_ij (dF/ds_j) v_i^T``
* (3.8) local field ``t_i(v) = alpha_i + sum_j c_ij W_ij^T g_j``, ``g_j = -dF/ds_j``
* (3.9) exact Metropolis-Hastings sweep over visible capsules, target ``exp(-F(v))``
* (3.10) the paper-literal ``reconstruct`` step (no stated invariant distribution)
* (3.11) pseudo-log-likelihood from the closed-form F

Model G (docs/MODEL_G.md) is the same model with a Gaussian pose under each capsule. It changes
only the firing logit, and with it the expert and dF/ds; every function below serves both and
reads which one from the type of its parameter container (``PParams`` or ``GParams``):

* (G.2) ``p(z_j = 1 | v) = sigmoid(rho_j + m_j . s_j + |s_j|^2 / 2)``
* (G.3) ``F(v) = -alpha . v - sum_j softplus(rho_j + m_j . s_j + |s_j|^2 / 2)``
* (G.4) ``dF/ds_j = -p_j (s_j + m_j)``, ``dF/dm_j = -p_j s_j``

Model S (same document) puts a pose of d_h binary (+1/-1) units under each capsule (SParams):

* (S.2) ``p(z_j = 1 | v) = sigmoid(rho_j + sum_k [lc(s_jk + m_jk) - lc(m_jk)])``, lc = log cosh
* (S.3) ``F(v) = -alpha . v - sum_j softplus(S.2's logit)``
* (S.4) ``dF/ds_j = -p_j tanh(s_j + m_j)``, ``dF/dm_j = -p_j (tanh(s_j + m_j) - tanh(m_j))``
"""

import numpy as np

from .capsules import predictions, predictions_vjp_W
from .exact import enumerate_binary
from .ops import capsule_length, log_sigmoid, sigmoid, softplus, squared_norm
from .params import GParams, PParams, SParams
from .routing import dynamic_routing_trace, dynamic_routing_vjp

__all__ = [
    "expert_of",
    "firing_logit",
    "firing_probability",
    "capsule_pose",
    "free_energy",
    "free_energy_ds",
    "free_energy_grad",
    "local_field",
    "sample_firing",
    "mh_sweep",
    "reconstruct_step",
    "pseudo_log_likelihood",
    "exact_log_partition",
    "exact_log_marginal",
    "exact_block_kernel",
    "exact_transition_matrix",
]


# ----------------------------------------------------------------------------- routing helpers


def _route(params, v, n_iter):
    """Predictions and routing trace for visible capsules v (B, I, d_v)."""
    u_hat = predictions(params.W, v)  # (B, I, J, d_h)
    trace = dynamic_routing_trace(u_hat, n_iter, params.beta)  # c (r, B, I, J), s (r, B, J, d_h)
    return u_hat, trace


# the parameter container of each expert: P's squash (3.2), G's Gaussian pose, S's spin pose
PARAMS_TYPES = {"squash": PParams, "gaussian": GParams, "spin": SParams}
EXPERTS = tuple(PARAMS_TYPES)


def expert_of(params):
    """``"gaussian"`` for GParams (Model G), ``"spin"`` for SParams (Model S), ``"squash"`` for
    PParams (Model P)."""
    return next(e for e, kind in PARAMS_TYPES.items() if isinstance(params, kind))


def free_energy_dm(params, prob, s):
    """Batch mean of ``dF/dm_j`` for Models G and S (G.4, S.4), None for Model P.

    G: ``-p_j s_j``; S: ``-p_j (tanh(s_j + m_j) - tanh(m_j))``; prob (B, J), s (B, J, d_h)
    -> (J, d_h).
    """
    expert = expert_of(params)
    if expert == "gaussian":
        return -np.mean(prob[..., None] * s, axis=0)  # (J, d_h)
    if expert == "spin":
        dm = np.tanh(s + params.m) - np.tanh(params.m)  # (B, J, d_h)
        return -np.mean(prob[..., None] * dm, axis=0)  # (J, d_h)
    return None


def log_cosh(x):
    """``log cosh x = |x| + log1p(e^{-2|x|}) - log 2``, overflow-free; same shape as x."""
    a = np.abs(x)
    return a + np.log1p(np.exp(-2.0 * a)) - np.log(2.0)


def _pose_mean(params):
    """Model G's pose prior means m (J, d_h); None for Model P."""
    return getattr(params, "m", None)


def _logit(params, s):
    """The firing logit of the model that ``params`` describes, (B, J)."""
    return firing_logit(params.rho, s, expert_of(params), _pose_mean(params))


def firing_logit(rho, s, expert="squash", m=None):
    """Logit of a capsule's firing probability: (3.2) ``rho_j + log |s_j|^2``; for
    ``expert="gaussian"``, (G.2) ``rho_j + m_j . s_j + |s_j|^2 / 2``; for ``expert="spin"``,
    (S.2) ``rho_j + sum_k [log cosh(s_jk + m_jk) - log cosh(m_jk)]`` (m = 0 when None).

    Parameters
    ----------
    rho : ndarray of shape (J,)
    s : ndarray of shape (B, J, d_h)
    expert : {"squash", "gaussian", "spin"}
    m : ndarray of shape (J, d_h) or None, pose prior means (G) or pose biases (S)

    Returns
    -------
    ndarray of shape (B, J); for the squash expert ``-inf`` where ``s_j = 0`` (never fires).
    """
    if expert == "spin":
        m = np.zeros(s.shape[-2:]) if m is None else m
        return rho + np.sum(log_cosh(s + m) - log_cosh(m), axis=-1)  # (B, J)
    if expert == "gaussian":
        linear = 0.0 if m is None else np.sum(m * s, axis=-1)  # (B, J)
        return rho + linear + 0.5 * squared_norm(s)  # (B, J)
    if expert != "squash":
        raise ValueError(f"expert must be one of {EXPERTS}, got {expert!r}")
    with np.errstate(divide="ignore"):
        # 2 log |s| rather than log |s|^2: |s|^2 would overflow for |s| > 1e154
        return rho + 2.0 * np.log(capsule_length(s))  # (B, J)


def _expert_log_gain(params, s):
    """One expert's term of -F: ``softplus(firing logit)``, shape (B, J).

    (3.3) ``log(1 + e^{rho_j} |s_j|^2)``; (G.3) ``softplus(rho_j + m_j . s_j + |s_j|^2 / 2)``.
    """
    return softplus(_logit(params, s))  # (B, J); softplus(-inf) = 0


def firing_probability(params, v, n_iter=3):
    """Firing probabilities of the hidden capsules (3.2).

    ``p(z_j = 1 | v) = sigmoid(rho_j + log |s_j(v)|^2) = e^rho |s|^2 / (1 + e^rho |s|^2)``.
    At rho = 0 this equals ``|squash(s_j)|``: the energy is consistent with dynamic routing.
    For GParams, (G.2) ``sigmoid(rho_j + |s_j|^2 / 2)``.

    Parameters
    ----------
    params : PParams or GParams
    v : ndarray of shape (B, I, d_v)
    n_iter : int, routing passes

    Returns
    -------
    p : ndarray of shape (B, J)
    """
    _, tr = _route(params, v, n_iter)
    return sigmoid(_logit(params, tr.s[-1]))  # (B, J)


def capsule_pose(params, v, n_iter=3):
    """Capsule readout (3.4): the vector of length ``p_j`` along ``s_j / |s_j|``.

    For Model P this is ``squash(e^{rho_j/2} s_j)``; for Models G and S, the direction of the
    pose's conditional mean given firing (``s_j + m_j``, G.5; ``tanh(s_j + m_j)``, S.5) scaled to
    length p_j.

    Returns
    -------
    ndarray of shape (B, J, d_h)
    """
    _, tr = _route(params, v, n_iter)
    s = tr.s[-1]  # (B, J, d_h)
    p = sigmoid(_logit(params, s))  # (B, J)
    expert = expert_of(params)
    if expert == "gaussian":
        pose = s + params.m  # (B, J, d_h)
    elif expert == "spin":
        pose = np.tanh(s + params.m)  # (B, J, d_h)
    else:
        pose = s
    n = np.sqrt(squared_norm(pose))[..., None]  # (B, J, 1)
    return p[..., None] * pose / np.where(n > 0, n, 1.0)  # (B, J, d_h), zero where the pose is 0


def free_energy(params, v, n_iter=3):
    """Free energy of Model P (3.3), z summed out; of Model G (G.3) for GParams.

    .. math:: F(v) = -\\alpha \\cdot v - \\sum_j \\log(1 + e^{\\rho_j} |s_j(v)|^2)

    Parameters
    ----------
    params : PParams or GParams
    v : ndarray of shape (B, I, d_v)

    Returns
    -------
    F : ndarray of shape (B,)
    """
    _, tr = _route(params, v, n_iter)
    return _free_energy_from_s(params, v, tr.s[-1])


def _free_energy_from_s(params, v, s):
    """(3.3) or (G.3) given the routed input s (B, J, d_h); returns (B,)."""
    log_gain = _expert_log_gain(params, s)  # (B, J)
    return -np.einsum("bid,id->b", v, params.alpha) - log_gain.sum(axis=1)


def free_energy_ds(rho, s, expert="squash", m=None):
    """``dF/ds_j`` (3.5): ``-2 e^{rho_j} s_j / (1 + e^{rho_j} |s_j|^2)``, smooth at s = 0.

    Written as ``-2 s_j / (e^{-rho_j} + |s_j|^2)``, which cannot overflow for large |s|.
    ``expert="gaussian"``: (G.4) ``-p_j (s_j + m_j)``, p_j the firing probability (G.2).
    ``expert="spin"``: (S.4) ``-p_j tanh(s_j + m_j)``.

    Parameters
    ----------
    rho : ndarray of shape (J,)
    s : ndarray of shape (B, J, d_h)
    expert : {"squash", "gaussian", "spin"}
    m : ndarray of shape (J, d_h) or None, pose prior means (G) or pose biases (S)

    Returns
    -------
    ndarray of shape (B, J, d_h)
    """
    if expert == "spin":
        p = sigmoid(firing_logit(rho, s, expert, m))  # (B, J)
        return -p[..., None] * np.tanh(s if m is None else s + m)  # (B, J, d_h)
    if expert == "gaussian":
        p = sigmoid(firing_logit(rho, s, expert, m))  # (B, J)
        return -p[..., None] * (s if m is None else s + m)  # (B, J, d_h)
    return -2.0 * s / (np.exp(-rho) + squared_norm(s))[..., None]  # (B, J, d_h)


def free_energy_grad(params, v, n_iter=3, mode="full"):
    """Gradient of the batch-mean free energy with respect to every parameter (3.6, 3.7).

    ``mode="full"`` back-propagates through all routing passes (the exact gradient of this
    model); ``mode="frozen"`` treats the coupling coefficients c as constants, so that
    ``dF/dW_ij = c_ij (dF/ds_j) v_i^T`` and beta gets no gradient.

    Parameters
    ----------
    params : PParams or GParams
    v : ndarray of shape (B, I, d_v)
    n_iter : int
    mode : {"full", "frozen"}

    Returns
    -------
    F : ndarray of shape (B,)
        Free energies of the batch.
    grad : PParams or GParams (the type of ``params``)
        ``d mean_b F(v_b) / d theta`` for W (I, J, d_h, d_v), alpha (I, d_v), rho (J,),
        beta (I, J), and for Model G m (J, d_h).
    """
    if mode not in ("full", "frozen"):
        raise ValueError(f"mode must be 'full' or 'frozen', got {mode!r}")
    B = v.shape[0]
    u_hat, tr = _route(params, v, n_iter)
    s = tr.s[-1]  # (B, J, d_h)
    F = _free_energy_from_s(params, v, s)  # (B,)
    g_s = free_energy_ds(params.rho, s, expert_of(params), _pose_mean(params)) / B  # (B, J, d_h)
    d_alpha = -v.mean(axis=0)  # (I, d_v)
    prob = sigmoid(_logit(params, s))  # (B, J)
    d_rho = -prob.mean(axis=0)  # (J,), -p_j for both experts
    if mode == "full":
        g_u, d_beta = dynamic_routing_vjp(u_hat, tr, g_s=g_s, prior_shape=params.beta.shape)
    else:
        g_u = tr.c[-1][..., None] * g_s[:, None, :, :]  # (B, I, J, d_h)
        d_beta = np.zeros_like(params.beta)  # (I, J)
    d_W = predictions_vjp_W(g_u, v)  # (I, J, d_h, d_v)
    grads = [d_W, d_alpha.astype(v.dtype), d_rho.astype(v.dtype), d_beta.astype(v.dtype)]
    d_m = free_energy_dm(params, prob, s)  # (J, d_h) for G and S
    if d_m is not None:
        grads.append(d_m.astype(v.dtype))
    return F, type(params)(*grads)


def local_field(params, c, s, i=None):
    """Local field of the MH proposal (3.8): minus the gradient of F with c frozen.

    ``t_i(v) = alpha_i + sum_j c_ij W_ij^T g_j`` with ``g_j = 2 e^{rho_j} s_j /
    (1 + e^{rho_j} |s_j|^2) = -dF/ds_j`` (Model G: ``g_j = p_j (s_j + m_j)``, G.4).

    Parameters
    ----------
    params : PParams or GParams
    c : ndarray of shape (B, I, J), coupling coefficients at v
    s : ndarray of shape (B, J, d_h), routed inputs at v
    i : int, optional
        Only visible capsule i (then the result has shape (B, d_v)).

    Returns
    -------
    ndarray of shape (B, I, d_v), or (B, d_v) for one capsule.
    """
    g = -free_energy_ds(params.rho, s, expert_of(params), _pose_mean(params))  # (B, J, d_h)
    if i is None:
        return params.alpha + np.einsum("bij,ijhd,bjh->bid", c, params.W, g, optimize=True)  # (B, I, d_v)
    return params.alpha[i] + np.einsum("bj,jhd,bjh->bd", c[:, i], params.W[i], g, optimize=True)  # (B, d_v)


def _bernoulli_log_prob(x, logit):
    """``sum_l log Bernoulli(x_l; sigmoid(logit_l))`` over the last axis, for binary x.

    Selecting the term (rather than ``x log p + (1 - x) log(1 - p)``) keeps it exact when a
    logit is infinite, e.g. ``-inf`` for a capsule with ``s_j = 0``.
    """
    return np.sum(np.where(x > 0.5, log_sigmoid(logit), log_sigmoid(-logit)), axis=-1)


def sample_firing(params, v, rng, n_iter=3):
    """Draw z ~ p(z | v) (3.2). One ``rng.random((B, J))`` call.

    Returns
    -------
    z : ndarray of shape (B, J), 0/1 in v's dtype.
    """
    p = firing_probability(params, v, n_iter)  # (B, J)
    return (rng.random(p.shape) < p).astype(v.dtype)


def mh_sweep(params, v, rng, n_iter=3):
    """One systematic Metropolis-Hastings sweep over the visible capsules (3.9), exact.

    For i = 0 .. I-1, every chain proposes a new capsule ``v_i'`` from the factorised
    proposal ``q_i(v_i' | v) = prod_l Bernoulli(sigmoid(t_il(v)))`` with the local field (3.8),
    and accepts with probability

    .. math:: \\min\\left(1, e^{F(v) - F(v')} \\frac{q_i(v_i | v')}{q_i(v_i' | v)}\\right).

    Each block update satisfies detailed balance with respect to ``exp(-F(v))``; the sweep
    leaves it invariant. A proposal changes only row i of u_hat (incremental update); the
    proposed state is routed once.

    Random draws, in order, for each i: ``rng.random((B, d_v))`` (proposal, ``v_i' = u < q``),
    then ``rng.random(B)`` (accept when ``log u < log A``).

    Parameters
    ----------
    params : PParams
    v : ndarray of shape (B, I, d_v), current binary states of B chains
    rng : np.random.Generator
    n_iter : int, routing passes

    Returns
    -------
    v_new : ndarray of shape (B, I, d_v)
    acceptance : ndarray of shape (B,)
        Fraction of the I proposals accepted by each chain.
    """
    v = np.array(v, copy=True)
    B, I, d_v = v.shape
    u_hat, tr = _route(params, v, n_iter)  # (B, I, J, d_h)
    c, s = tr.c[-1], tr.s[-1]  # (B, I, J), (B, J, d_h)
    F = _free_energy_from_s(params, v, s)  # (B,)
    n_accept = np.zeros(B, dtype=np.int64)
    for i in range(I):
        t_fwd = local_field(params, c, s, i)  # (B, d_v)
        prop = (rng.random((B, d_v)) < sigmoid(t_fwd)).astype(v.dtype)  # (B, d_v)
        v_prop = v.copy()
        v_prop[:, i] = prop
        u_prop = u_hat.copy()
        u_prop[:, i] = np.einsum("jhd,bd->bjh", params.W[i], prop)  # row i only: (B, J, d_h)
        tr_p = dynamic_routing_trace(u_prop, n_iter, params.beta)
        c_p, s_p = tr_p.c[-1], tr_p.s[-1]
        F_p = _free_energy_from_s(params, v_prop, s_p)  # (B,)
        t_rev = local_field(params, c_p, s_p, i)  # (B, d_v)
        log_a = F - F_p + _bernoulli_log_prob(v[:, i], t_rev) - _bernoulli_log_prob(prop, t_fwd)  # (B,)
        with np.errstate(divide="ignore"):
            acc = np.log(rng.random(B)) < log_a  # (B,)
        v[acc] = v_prop[acc]
        u_hat[acc] = u_prop[acc]
        c[acc], s[acc], F[acc] = c_p[acc], s_p[acc], F_p[acc]
        n_accept += acc
    return v, n_accept / I


def _reconstruct_field(params, c, s, z):
    """Visible logits of the paper-literal step: ``alpha_i + sum_j c_ij z_j W_ij^T s_j/|s_j|``."""
    n = np.sqrt(squared_norm(s))[..., None]  # (B, J, 1)
    s_unit = s / np.where(n > 0, n, 1.0)  # (B, J, d_h), zero where s = 0
    return params.alpha + np.einsum("bij,bj,ijhd,bjh->bid", c, z, params.W, s_unit, optimize=True)  # (B, I, d_v)


def _require_squash(params, what):
    if expert_of(params) != "squash":
        raise ValueError(f"the {what} heuristic is the paper's, defined for Model P (PParams) only; "
                         "sample Model G with the exact MH sweep (sampler='mh')")


def reconstruct_step(params, v, rng, n_iter=3):
    """The paper-literal heuristic (3.10): z ~ p(z | v), then all of v at once, always accepted.

    ``v_il' ~ Bernoulli(sigmoid(alpha_il + sum_j c_ij z_j (W_ij^T s_j / |s_j|)_l))``.
    Fast, but it leaves no stated distribution invariant (lesson 6 measures its bias).
    Defined for Model P only: Model G is sampled with the exact MH sweep.

    Random draws: ``rng.random((B, J))`` for z, then ``rng.random((B, I, d_v))`` for v.

    Returns
    -------
    v_new : ndarray of shape (B, I, d_v)
    z : ndarray of shape (B, J)
    """
    _require_squash(params, "reconstruct")
    _, tr = _route(params, v, n_iter)
    c, s = tr.c[-1], tr.s[-1]
    z = (rng.random(s.shape[:2]) < sigmoid(firing_logit(params.rho, s))).astype(v.dtype)  # (B, J)
    field = _reconstruct_field(params, c, s, z)  # (B, I, d_v)
    return (rng.random(v.shape) < sigmoid(field)).astype(v.dtype), z


def pseudo_log_likelihood(params, v, rng=None, n_iter=3):
    """Pseudo-log-likelihood (3.11) from the closed-form free energy.

    ``PL(v) = sum_k log p(v_k | v_-k) = sum_k log sigmoid(F(v with k flipped) - F(v))``.
    With ``rng`` given, the stochastic one-flip estimate ``D log sigmoid(F(v~) - F(v))``
    with one uniformly chosen pixel per image (scikit-learn's convention; one
    ``rng.integers(0, D, size=B)`` call); without it, the exact sum over all D pixels.

    Returns
    -------
    ndarray of shape (B,)
    """
    B, I, d_v = v.shape
    D = I * d_v
    F0 = free_energy(params, v, n_iter)  # (B,)
    if rng is not None:
        k = rng.integers(0, D, size=B)
        vf = v.reshape(B, D).copy()
        vf[np.arange(B), k] = 1.0 - vf[np.arange(B), k]
        return D * log_sigmoid(free_energy(params, vf.reshape(B, I, d_v), n_iter) - F0)
    total = np.zeros(B, dtype=F0.dtype)
    for k in range(D):
        vf = v.reshape(B, D).copy()
        vf[:, k] = 1.0 - vf[:, k]
        total += log_sigmoid(free_energy(params, vf.reshape(B, I, d_v), n_iter) - F0)
    return total


# ----------------------------------------------------------------------------- exact tools


def _all_states(params):
    """Every visible state of a tiny model: (S, I, d_v), S = 2^(I d_v), flat index k = i d_v + l."""
    I, d_v = params.alpha.shape
    return enumerate_binary(I * d_v, params.alpha.dtype).reshape(-1, I, d_v)  # (S, I, d_v)


def exact_log_partition(params, n_iter=3):
    """``log Z = log sum_v exp(-F(v))`` by enumerating all 2^(I d_v) visible states (6.1)."""
    from scipy.special import logsumexp

    return float(logsumexp(-free_energy(params, _all_states(params), n_iter)))


def exact_log_marginal(params, v, n_iter=3):
    """Normalised ``log p(v) = -F(v) - log Z`` for a tiny model; returns (B,)."""
    return -free_energy(params, v, n_iter) - exact_log_partition(params, n_iter)


def _state_index(v):
    """Index of binary states (S, I, d_v) in the enumeration order of :func:`_all_states`."""
    flat = v.reshape(v.shape[0], -1).astype(np.int64)  # (S, D)
    return flat @ (1 << np.arange(flat.shape[1], dtype=np.int64))  # (S,)


def exact_block_kernel(params, i, n_iter=3):
    """Exact transition matrix of the MH update of visible capsule i (3.9), over all states.

    Returns
    -------
    K : ndarray of shape (S, S), S = 2^(I d_v); rows sum to 1. Reversible w.r.t. exp(-F).
    """
    X = _all_states(params)  # (S, I, d_v)
    S, I, d_v = X.shape
    u_hat, tr = _route(params, X, n_iter)
    c, s = tr.c[-1], tr.s[-1]
    F = _free_energy_from_s(params, X, s)  # (S,)
    t_i = local_field(params, c, s, i)  # (S, d_v)
    blocks = enumerate_binary(d_v, X.dtype)  # (2^d_v, d_v)
    K = np.zeros((S, S))
    for blk in blocks:
        Y = X.copy()
        Y[:, i] = blk  # proposed states, (S, I, d_v)
        y = _state_index(Y)  # (S,)
        log_q_fwd = _bernoulli_log_prob(blk[None, :], t_i)  # (S,)
        log_q_rev = _bernoulli_log_prob(X[:, i], t_i[y])  # (S,)
        log_a = np.minimum(0.0, F - F[y] + log_q_rev - log_q_fwd)  # (S,)
        move = np.exp(log_q_fwd + log_a)  # (S,)
        K[np.arange(S), y] += move
        K[np.arange(S), np.arange(S)] += np.exp(log_q_fwd) - move  # rejected mass stays
    return K


def exact_transition_matrix(params, sampler="mh", n_iter=3):
    """Exact transition matrix of one sweep of a Model P sampler, over all 2^(I d_v) states.

    ``sampler="mh"``: the product ``K_0 K_1 ... K_{I-1}`` of the block kernels (3.9), which
    leaves ``exp(-F)/Z`` invariant. ``sampler="reconstruct"``:
    ``K(v, v') = sum_z p(z | v) prod_il Bernoulli(v'_il; sigmoid(field_il(v, z)))`` (3.10).

    Returns
    -------
    K : ndarray of shape (S, S)
    """
    I = params.alpha.shape[0]
    if sampler == "mh":
        K = exact_block_kernel(params, 0, n_iter)
        for i in range(1, I):
            K = K @ exact_block_kernel(params, i, n_iter)
        return K
    if sampler != "reconstruct":
        raise ValueError(f"sampler must be 'mh' or 'reconstruct', got {sampler!r}")
    _require_squash(params, "reconstruct")
    X = _all_states(params)  # (S, I, d_v)
    S = X.shape[0]
    J = params.rho.shape[0]
    _, tr = _route(params, X, n_iter)
    c, s = tr.c[-1], tr.s[-1]
    logit = firing_logit(params.rho, s)  # (S, J)
    Xf = X.reshape(S, -1)  # (S, D)
    K = np.zeros((S, S))
    for z in enumerate_binary(J, X.dtype):  # (J,)
        pz = np.exp(_bernoulli_log_prob(z[None, :], logit))  # (S,)
        field = _reconstruct_field(params, c, s, np.broadcast_to(z, (S, J))).reshape(S, -1)  # (S, D)
        # log p(v' | v, z) for every pair: sum_k v'_k log sig(f_k) + (1 - v'_k) log sig(-f_k)
        log_pv = log_sigmoid(field) @ Xf.T + log_sigmoid(-field) @ (1.0 - Xf).T  # (S, S)
        K += pz[:, None] * np.exp(log_pv)
    return K
