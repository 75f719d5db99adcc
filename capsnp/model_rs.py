"""Model R with a shared capsule: every child reaches one shared capsule and its routed parent.

docs/MODEL_RB.md, section "A shared capsule" (4c). Symbols as in :mod:`capsnp.model_r`, plus
the shared capsule's H0 binary units g in {0,1}^{H0}, its weights V (H0, I, d_v) and biases
delta (H0,). Parameters ``RSParams(W, alpha, gamma, beta, C, A, V, delta)``: an RBParams
(4b.1) and the shared capsule. Equation labels:

* (4c.1) energy ``E(v, g, h, a) = E_4b(v, h, a) - delta.g - sum_i g^T V_i v_i``
* (4c.2) shared conditional ``p(g_k = 1 | v) = sigmoid(delta_k + sum_i V_ki . v_i)``; g is
  independent of (h, a) given v
* (4c.3) ``p(h, a | v, g) = p_4b(h, a | v)``: routing, the capsules' conditional and the
  mean-field routing (4.6) are those of the routed part alone
* (4c.4) visible conditional ``p(v_il = 1 | g, h, a) = sigmoid((4b.4) + (V_i^T g)_l)``
* (4c.5) ``log p~(v, a) = (4.9) + sum_k softplus(delta_k + sum_i V_ki . v_i)``, so
  ``log p~(v) = log p~_4b(v) + sum_k softplus(...)``: the shared term is exact, and only the
  routed part needs importance sampling over a (4.10)
* (4c.6) PCD statistics of the shared capsule: ``p(g | v) v^T`` and ``p(g | v)``, at the data
  and at the chains (Rao-Blackwellised over g); the routed part's are (4.8) unchanged
* (4c.7) Gibbs sweep on (v, a): ``g ~ p(g | v)``, then (4.7) with (4c.4) as its visible step
* (4c.8) the shared capsule centred, ``... - delta'.g - sum_i (g - l0)^T V_i (v_i - m_i)``: the
  same model with ``delta = delta' - sum_i V_i m_i`` and ``alpha = alpha' - V^T l0``
* (4c.9) its gradient in centred coordinates, ``g_V'_ki = g_V_ki - g_delta_k m_i - l0_k g_alpha_i``

The shared capsule alone is a Bernoulli RBM on the flattened image (:func:`shared_rbm`,
MODEL.md sec. 5), whose hidden conditional is (4c.2) and whose CD gradient (5.6) holds the
statistics (4c.6). Functions that sample or take statistics use the backends passed as
``model_r`` and ``rbm`` (the references :mod:`capsnp.model_r` and :mod:`capsnp.rbm` by default,
or ``capsnp.kernels.model_r`` and ``capsnp.kernels.rbm``): this module has no kernels of its own. Every function keeps the floating dtype of
its inputs; samplers take an explicit ``np.random.Generator`` and say in which order they draw.
"""

import numpy as np

from . import model_r as _model_r
from . import rbm as _rbm
from .exact import enumerate_binary
from .ops import sigmoid, softplus
from .params import RBMParams, RBParams, RSParams
from .rbm import _bernoulli_draw, _bernoulli_pmf, _float_dtype, _logsumexp

__all__ = [
    "routed_part",
    "with_shared",
    "shared_rbm",
    "shared_input",
    "shared_probability",
    "shared_field",
    "shared_log_factor",
    "energy",
    "log_joint_va",
    "visible_probability",
    "gibbs_sweep",
    "shared_statistics",
    "shared_gradient",
    "centred_energy",
    "to_centred",
    "from_centred",
    "centred_gradient",
    "log_marginal_is",
    "exact_log_unnormalised_marginal",
    "exact_log_partition",
    "exact_probability_va",
    "exact_transition_matrix",
]


def routed_part(params):
    """The routed capsules alone, ``RBParams(W, alpha, gamma, beta, C, A)`` (4b.1)."""
    return RBParams(*params[:6])


def with_shared(routed, V, delta):
    """An RSParams from a routed part (RBParams) and the shared capsule's V (H0, I, d_v), delta (H0,)."""
    return RSParams(*routed, V=V, delta=delta)


def shared_rbm(params):
    """The shared capsule as a Bernoulli RBM on the flattened image (5.1):
    ``RBMParams(W = V as (I d_v, H0), a = 0, b = delta)``, pixel ``i d_v + l`` as in
    :func:`capsnp.model_r.as_rbm`. Its hidden conditional (5.2) is (4c.2); W is a view of V."""
    H0 = params.V.shape[0]
    return RBMParams(W=params.V.reshape(H0, -1).T, a=np.zeros(params.V[0].size, dtype=params.V.dtype),
                     b=params.delta)


def _flat(v):
    """(B, I, d_v) -> (B, I d_v)."""
    return np.reshape(v, (np.shape(v)[0], -1))


def shared_input(params, v):
    """Input of the shared units (4c.2), ``delta_k + sum_i V_ki . v_i``: (B, I, d_v) -> (B, H0).

    One matrix product of the flattened images with V (H0, I d_v).
    """
    dt = _float_dtype(params.V, v)
    v = np.asarray(v, dtype=dt)
    H0 = params.V.shape[0]
    return params.delta + v.reshape(v.shape[0], -1) @ params.V.reshape(H0, -1).T  # (B, H0)


def shared_probability(params, v, rbm=_rbm):
    """Shared conditional (4c.2): ``p(g_k = 1 | v) = sigmoid(delta_k + sum_i V_ki . v_i)``, (B, H0).

    It does not depend on h or a: given v the shared capsule is independent of the routing.
    ``rbm``: the backend of :func:`shared_rbm`'s hidden conditional.
    """
    return rbm.hidden_probability(shared_rbm(params), _flat(v))  # (B, H0)


def shared_field(params, g, rbm=_rbm):
    """Top-down input of the shared capsule (4c.4), ``V_i^T g``: (B, H0) -> (B, I, d_v).

    The visible input (5.3) of :func:`shared_rbm`, whose visible biases are 0; ``rbm``: the
    backend of ``visible_logits``.
    """
    H0, I, d_v = params.V.shape
    g = np.asarray(g, dtype=_float_dtype(params.V, g))
    return rbm.visible_logits(shared_rbm(params), g).reshape(-1, I, d_v)  # (B, I, d_v)


def shared_log_factor(params, v):
    """The shared capsule's term of (4c.5), ``sum_k softplus(delta_k + sum_i V_ki . v_i)``: (B,).

    ``log p~(v) = log p~_4b(v) + shared_log_factor(v)``: g sums out in closed form and, being
    independent of a given v, leaves the sum over routings untouched.
    """
    return np.sum(softplus(shared_input(params, v)), axis=-1)  # (B,)


def energy(params, v, g, h, a):
    """Energy (4c.1).

    .. math::
        E(v, g, h, a) = E_{4b}(v, h, a) - \\delta \\cdot g - \\sum_i g^T V_i v_i

    Parameters
    ----------
    params : RSParams
    v : ndarray of shape (B, I, d_v), binary
    g : ndarray of shape (B, H0), binary
    h : ndarray of shape (B, J, d_h), binary
    a : ndarray of int, shape (B, I)

    Returns
    -------
    ndarray of shape (B,)
    """
    g = np.asarray(g, dtype=_float_dtype(params.V, g))
    shared = np.sum(g * shared_input(params, v), axis=-1)  # (B,): delta.g + sum_i g^T V_i v_i
    return _model_r.energy(routed_part(params), v, h, a) - shared  # (B,)


def log_joint_va(params, v, a, model_r=_model_r):
    """Unnormalised ``log p~(v, a)`` with g and h summed out (4c.5): (4.9) plus the shared term.

    Parameters
    ----------
    params : RSParams
    v : ndarray of shape (B, I, d_v)
    a : ndarray of int, shape (B, I)
    model_r : the routed part's backend module

    Returns
    -------
    ndarray of shape (B,)
    """
    return model_r.log_joint_va(routed_part(params), v, a) + shared_log_factor(params, v)  # (B,)


def visible_probability(params, g, h, a):
    """Visible conditional (4c.4), ``sigmoid(alpha_il + A_{i a_i l} + (W_{i a_i}^T h_{a_i})_l + (V_i^T g)_l)``.

    Parameters
    ----------
    params : RSParams
    g : ndarray of shape (B, H0)
    h : ndarray of shape (B, J, d_h)
    a : ndarray of int, shape (B, I)

    Returns
    -------
    ndarray of shape (B, I, d_v)
    """
    logits = _model_r._visible_logits(routed_part(params), h, a) + shared_field(params, g)  # (B, I, d_v)
    return sigmoid(logits)


def gibbs_sweep(params, v, a, rng, return_probability=False, model_r=_model_r, rbm=_rbm, p_g=None):
    """One Gibbs sweep (4c.7) on the chain state (v, a).

    1. ``g ~ p(g | v)`` (4c.2), ``g = (u < p(g = 1 | v))`` with ``u = rng.random((B, H0))``
       (the draw of ``rbm.sample_hidden`` of :func:`shared_rbm`; ``p_g`` when given);
    2. the sweep (4.7) of the routed part, ``h ~ U(v, a)``, ``a_new ~ R(v, h)``, with the
       visible step ``v_new ~ (4c.4)`` (``model_r.gibbs_sweep(..., field=V^T g)``), drawing in
       its order.

    g and h are independent given (v, a), so drawing g first is the block ``(g, h) ~ p(g, h | v, a)``;
    by (4c.3) the routing step is the routed part's. Each block leaves ``p(v, g, h, a)``
    invariant, and the sweep is a Markov chain on (v, a) (:func:`exact_transition_matrix`).

    Parameters
    ----------
    params : RSParams
    v : ndarray of shape (B, I, d_v), binary
    a : ndarray of int, shape (B, I)
    rng : np.random.Generator
    return_probability : bool, also return ``p(h | v, a)`` at the input (see model_r.gibbs_sweep)
    model_r, rbm : the backend modules of the routed part and of the shared capsule
    p_g : ndarray of shape (B, H0), optional, ``p(g = 1 | v)`` at the input v
        (:func:`shared_probability`) when the caller already has it, e.g. for the chains'
        statistics (4c.6); the draws are the same as without it

    Returns
    -------
    v_new : ndarray of shape (B, I, d_v)
    g : ndarray of shape (B, H0), drawn at the input v
    h : ndarray of shape (B, J, d_h)
    a_new : ndarray of int64, shape (B, I)
    resp : ndarray of shape (B, I, J), ``p(a_i = j | v, h)`` at the input v
    p_h : ndarray of shape (B, J, d_h), only with ``return_probability``
    """
    p_g = shared_probability(params, v, rbm) if p_g is None else np.asarray(p_g, dtype=_float_dtype(params.V, v))
    g = _bernoulli_draw(p_g, rng.random(p_g.shape))  # (B, H0)
    out = model_r.gibbs_sweep(routed_part(params), v, a, rng, return_probability,
                              field=shared_field(params, g, rbm))
    return (out[0], g) + tuple(out[1:])


def shared_statistics(v, p_g, weights=None):
    """The shared capsule's PCD statistics (4c.6), batch-averaged.

    ``-dE/dV_ki = g_k v_i`` and ``-dE/ddelta_k = g_k``, averaged over g with ``p(g | v)``:
    ``V: sum_b w_b p_g[b, k] v[b, i]``, ``delta: sum_b w_b p_g[b, k]`` (uniform weights 1/B if
    omitted). The same at the data and at the chains.

    Parameters
    ----------
    v : ndarray of shape (B, I, d_v)
    p_g : ndarray of shape (B, H0), ``p(g = 1 | v)``
    weights : ndarray of shape (B,), optional

    Returns
    -------
    V : ndarray of shape (H0, I, d_v)
    delta : ndarray of shape (H0,)
    """
    B, I, d_v = v.shape
    w = _model_r._weights_or_uniform(weights, B, p_g.dtype)  # (B,)
    wp = p_g * w[:, None]  # (B, H0)
    return (wp.T @ v.reshape(B, I * d_v)).reshape(-1, I, d_v), np.sum(wp, axis=0)  # (H0, I, d_v), (H0,)


def shared_gradient(params, v_data, v_model, rbm=_rbm, p_model=None):
    """(4c.6) at the data minus at the chains, batch means: the shared capsule's part of the
    PCD gradient, from the CD gradient (5.6) of :func:`shared_rbm` (``rbm.cd_gradient``).

    Parameters
    ----------
    params : RSParams
    v_data : ndarray of shape (B, I, d_v)
    v_model : ndarray of shape (B', I, d_v), chain states
    rbm : backend module
    p_model : ndarray of shape (B', H0), optional, ``p(g = 1 | v_model)`` when the caller
        already has it (the one :func:`gibbs_sweep` drew g from); computed if omitted

    Returns
    -------
    V : ndarray of shape (H0, I, d_v)
    delta : ndarray of shape (H0,)
    """
    grad = rbm.cd_gradient(shared_rbm(params), _flat(v_data), _flat(v_model),
                           model_probability=p_model)  # W (I d_v, H0)
    return grad.W.T.reshape(params.V.shape), grad.b  # (H0, I, d_v), (H0,)


# --------------------------------------------------------------------------------------------
# (4c.8), (4c.9): the shared capsule centred
# --------------------------------------------------------------------------------------------


def _shared_triplet(params):
    """The shared capsule with the model's visible biases as an RBM (5.1):
    ``RBMParams(W = V as (I d_v, H0), a = alpha flattened, b = delta)``, the parameters (4c.8) touches."""
    H0 = params.V.shape[0]
    return RBMParams(W=params.V.reshape(H0, -1).T, a=params.alpha.reshape(-1), b=params.delta)


def _with_triplet(params, triplet):
    """``params`` with V, alpha and delta taken from an RBMParams laid out as :func:`_shared_triplet`."""
    return params._replace(V=triplet.W.T.reshape(params.V.shape), alpha=triplet.a.reshape(params.alpha.shape),
                           delta=triplet.b)


def centred_energy(centred, v, g, h, a, m, l0):
    """Energy (4c.8): (4c.1) with the shared capsule's interaction measured from offsets.

    .. math::
        E = E_{4b}(v, h, a; \\alpha') - \\delta' \\cdot g - \\sum_i (g - l_0)^T V_i (v_i - m_i)

    It equals (4c.1) at :func:`from_centred` ``(centred, m, l0)`` up to the constant
    ``l0^T V m``, which cancels in every probability.

    Parameters
    ----------
    centred : RSParams, centred coordinates (alpha', delta'; every other part as in (4c.1))
    v : ndarray of shape (B, I, d_v); g : (B, H0); h : (B, J, d_h); a : ints (B, I)
    m : ndarray of shape (I, d_v), visible offsets
    l0 : ndarray of shape (H0,), shared-unit offsets

    Returns
    -------
    ndarray of shape (B,)
    """
    dt = _float_dtype(centred.V, v)
    v, g = np.asarray(v, dtype=dt), np.asarray(g, dtype=dt)
    H0 = centred.V.shape[0]
    dv = (v - m).reshape(v.shape[0], -1)  # (B, I d_v)
    interaction = np.sum((g - l0) * (dv @ centred.V.reshape(H0, -1).T), axis=-1)  # (B,)
    return _model_r.energy(routed_part(centred), v, h, a) - g @ centred.delta - interaction  # (B,)


def to_centred(params, m, l0):
    """Centred coordinates (4c.8) of the shared capsule: ``V' = V``, ``delta' = delta + sum_i V_i m_i``,
    ``alpha' = alpha + V^T l0``; the routed part's other parameters are unchanged.

    :func:`capsnp.rbm.to_centred` applied to :func:`_shared_triplet`: the shared capsule with
    the model's visible biases is an RBM, and alpha is its visible bias.
    """
    return _with_triplet(params, _rbm.to_centred(_shared_triplet(params), m.reshape(-1), l0))


def from_centred(centred, m, l0):
    """Plain parameters (4c.1) of centred ones (4c.8): ``delta = delta' - sum_i V'_i m_i``,
    ``alpha = alpha' - V'^T l0``, every other part unchanged.

    Linear in the centred parameters, so it also turns a step taken in centred coordinates into
    the plain parameters' step. Neither alpha nor delta enters a routing logit (4b.3, 4c.3):
    the offsets never steer the routing (with the routed capsules centred they do, through A;
    docs/MODEL_RB.md, centring).

    Parameters
    ----------
    centred : RSParams, parameters or a step in centred coordinates
    m : ndarray of shape (I, d_v)
    l0 : ndarray of shape (H0,)

    Returns
    -------
    RSParams
    """
    return _with_triplet(centred, _rbm.from_centred(_shared_triplet(centred), m.reshape(-1), l0))


def centred_gradient(grad, m, l0):
    """The log-likelihood gradient in the centred coordinates (4c.8), from the plain one (4c.6, 4.8).

    By the chain rule through :func:`from_centred` (4c.9): ``g_V'_ki = g_V_ki - g_delta_k m_i
    - l0_k g_alpha_i``, every other part unchanged; with statistics it is the covariance
    ``<(g - l0)(v - m)^T>_data - <.>_model``.

    Parameters
    ----------
    grad : RSParams, data minus model statistics
    m : ndarray of shape (I, d_v)
    l0 : ndarray of shape (H0,)

    Returns
    -------
    RSParams
    """
    return _with_triplet(grad, _rbm.centred_gradient(_shared_triplet(grad), m.reshape(-1), l0))


def log_marginal_is(params, v, n_samples, rng, c=None, log_z=None, stratified=True, model_r=_model_r):
    """Importance-sampling estimate of ``log p(v)`` (4c.5 with 4.10).

    The routed part's estimate (:func:`capsnp.model_r.log_marginal_is`, same arguments, draws
    and standard errors; c defaults to its mean-field routing, which (4c.3) makes the shared
    capsule's too) plus the exact shared term.

    Returns
    -------
    log_p : ndarray of shape (B,)
    se : ndarray of shape (B,)
    """
    log_p, se = model_r.log_marginal_is(routed_part(params), v, n_samples, rng, c=c, log_z=log_z,
                                        stratified=stratified)
    return log_p + shared_log_factor(params, v), se  # (B,), (B,)


# --------------------------------------------------------------------------------------------
# exact tools for tiny models
# --------------------------------------------------------------------------------------------


def exact_log_unnormalised_marginal(params, v):
    """Exact ``log p~(v)`` (4c.5): the routed part's sum over all J**I routings plus the shared term, (B,)."""
    return _model_r.exact_log_unnormalised_marginal(routed_part(params), v) + shared_log_factor(params, v)


def exact_log_partition(params):
    """Exact ``log Z = logsumexp_v log p~(v)`` over the 2**(I d_v) visible states (4c.5).

    Raises
    ------
    ValueError
        If the routed part's (v, a) enumeration would exceed 2**24 states.
    """
    _, _, _, _, nv, _, na = _model_r._sizes(params)
    _model_r._check_states(nv * na, "exact log Z")
    V = _model_r._all_visible(params)  # (Nv, I, d_v)
    return float(_logsumexp(exact_log_unnormalised_marginal(params, V)))


def exact_probability_va(params):
    """``p(v, a)`` for every state, index ``iv * J**I + ia`` as in :mod:`capsnp.model_r`: (Nv Na,)."""
    _, _, _, _, nv, _, na = _model_r._sizes(params)
    _model_r._check_states(nv * na, "p(v, a)")
    Vg, Ag = _model_r._va_grid(params)  # (Nv Na, I, d_v), (Nv Na, I)
    log_p = log_joint_va(params, Vg, Ag)  # (Nv Na,)
    return np.exp(log_p - _logsumexp(log_p))


def exact_transition_matrix(params):
    """Exact kernel of :func:`gibbs_sweep` (4c.7) as a chain on (v, a).

    .. math::
        K((v, a) \\to (v', a')) = \\sum_{g, h} p(g | v)\\, p(h | v, a)\\, p(a' | v, h)\\, p(v' | g, h, a')

    States are indexed ``iv * J**I + ia``; ``p(v, a)`` (:func:`exact_probability_va`) is invariant.

    Returns
    -------
    ndarray of shape (Nv Na, Nv Na), rows sum to one.
    """
    I, J, d_h, d_v, nv, nh, na = _model_r._sizes(params)
    H0 = params.V.shape[0]
    ng = 2**H0
    _model_r._check_states(nv * na * nh * na * ng * nv, "transition matrix")
    routed = routed_part(params)
    P_h, P_a, _ = _model_r._conditional_tables(routed)  # (Nv, Na, Nh), (Nv, Nh, Na)
    V = _model_r._all_visible(params)  # (Nv, I, d_v)
    G = enumerate_binary(H0, dtype=V.dtype)  # (Ng, H0)
    Hs = _model_r._all_hidden(params)  # (Nh, J, d_h)
    A = _model_r.enumerate_assignments(I, J)  # (Na, I)
    P_g = _bernoulli_pmf(G, shared_input(params, V))  # (Nv, Ng)
    Hg, Ag = np.repeat(Hs, na, axis=0), np.tile(A, (nh, 1))  # (Nh Na, J, d_h), (Nh Na, I)
    routed_logits = _model_r._visible_logits(routed, Hg, Ag)  # (Nh Na, I, d_v)
    logits = shared_field(params, G)[:, None] + routed_logits[None]  # (Ng, Nh Na, I, d_v)
    P_v = _bernoulli_pmf(V.reshape(nv, -1), logits.reshape(ng * nh * na, -1))  # (Ng Nh Na, Nv)
    P_v = P_v.reshape(ng, nh, na, nv)
    K = np.einsum("vg,vah,vhb,ghbw->vawb", P_g, P_h, P_a, P_v, optimize=True)  # (Nv, Na, Nv, Na)
    return K.reshape(nv * na, nv * na)
