"""Annealed importance sampling for log Z (MODEL.md sec. 6; ``lessons/09_evaluation.py``).

Equation labels:

* (6.1) exact ``log Z`` by enumeration (tiny models; in each model module)
* (6.2) the annealing path: parameters interpolated linearly from a base-rate model
  ``theta_0`` (W = 0, visible biases ``alpha_0`` from the data means, the other parameters
  kept) to the target ``theta_1``: ``theta_beta = (1 - beta) theta_0 + beta theta_1``
* (6.3) importance weights ``log w = sum_k [log f_{beta_k}(x_{k-1}) - log f_{beta_{k-1}}(x_{k-1})]``
  with ``x_k`` drawn by a transition that leaves ``f_{beta_k}`` invariant (Neal 2001;
  Salakhutdinov & Murray 2008)
* (6.4) ``log Z_1 ~ log Z_0 + log mean(w)``, its standard error by the delta method
  ``std(w) / (sqrt(n) mean(w))``, and a bootstrap interval
* (6.7) reverse AIS (Grosse, Ghahramani & Adams 2015): the chain run from beta = 1 down to 0,
  started at exact draws from the model restricted to a set B of states, gives
  ``log Z_0 - log mean(1 / w)``, in expectation an upper bound on ``log Z_B``, the log of the
  model's unnormalised mass on B (``log Z_1`` itself for B = every state)
* (6.8) AIS restricted to a set B of visible states: the path ``f_beta(x) 1_B(v)`` from the base
  restricted to B (mass ``Z_0 P_0(B)``) to the model restricted to B (mass ``Z_B``), its
  transitions the model's sweeps with a last visible draw outside B refused; forward runs
  estimate ``log Z_B`` as (6.4) does ``log Z``, and reverse runs (6.7) bound it with
  ``P(forward run ends in B) = 1``
* (6.9) ``P_0(B)`` for an ink set ``B = {v : sum_i v_i > t}`` under the base model's independent
  pixels: the upper tail of a Poisson-binomial count, by recursion over the pixels
* (6.10) for an ink set, the refusal made pixel by pixel: each pixel of the sweep's visible
  draw is taken in turn unless it would carry the count out of the set

The transitions and the free energies run on the backend chosen by ``ais_log_partition``'s
``backend`` (the compiled kernels of :mod:`capsnp.kernels` by default, or the NumPy reference).

Transitions: block Gibbs for the RBM, the exact MH sweep for Model P, the 3-block Gibbs sweep on
(v, a) for Model R (its sweep starts with h | v, a, so the state it carries is (v, a) and
``f_beta(v, a)`` has h summed out in closed form).
"""

import contextlib
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

import numpy as np
from scipy.special import logsumexp

from . import _kernels_jit, kernels
from . import model_p as _model_p_ref
from . import model_r as _model_r_ref
from . import model_rs as _model_rs
from . import rbm as _rbm_ref
from .ops import sigmoid, softplus
from .params import GParams, PParams, RBMParams, RBParams, RParams, RSParams, SParams

__all__ = ["AISResult", "AnnealingPath", "default_betas", "ais", "reverse_ais", "ais_log_partition",
           "annealing_path", "base_log_odds", "blas_setting", "restricted_path", "ink_restricted_path",
           "pixelwise_refusal", "ink_tail_log_probability"]


@dataclass
class AISResult:
    """The AIS estimate of log Z with its uncertainty.

    Attributes
    ----------
    log_z : float
        ``log Z_0 + log mean(w)`` (6.4). In expectation it is biased low (Jensen).
    std_error : float
        Delta-method standard error of ``log_z``.
    interval : (float, float)
        Bootstrap 95% interval of ``log_z`` over resampled runs.
    log_weights : ndarray of shape (n_runs,)
        Per-run log importance weights (6.3).
    log_z_base : float
        Exact log partition function of the base-rate model.
    n_temperatures : int
    """

    log_z: float
    std_error: float
    interval: tuple
    log_weights: np.ndarray = field(repr=False)
    log_z_base: float = 0.0
    n_temperatures: int = 0

    @property
    def effective_sample_size(self):
        """``(sum w)^2 / sum w^2``: how many runs carry the estimate."""
        lw = self.log_weights
        return float(np.exp(2 * logsumexp(lw) - logsumexp(2 * lw)))


def default_betas(fast=False):
    """Inverse temperatures 0 = beta_0 < ... < beta_K = 1 (Salakhutdinov & Murray's schedule).

    ``0:1e-3:0.5, 0.5:1e-4:0.9, 0.9:1e-5:1`` gives 14,500 temperatures; ``fast=True`` divides
    each density by 10 (1,450), for tests and quick looks.
    """
    f = 10 if fast else 1
    return np.concatenate([
        np.linspace(0.0, 0.5, 500 // f, endpoint=False),
        np.linspace(0.5, 0.9, 4000 // f, endpoint=False),
        np.linspace(0.9, 1.0, 10000 // f + 1),
    ])


def base_log_odds(mean, eps=1e-3):
    """Visible biases of the base-rate model: ``log(m / (1 - m))`` of the data means, clipped."""
    m = np.clip(np.asarray(mean, dtype=np.float64), eps, 1.0 - eps)
    return np.log(m) - np.log1p(-m)


def _checked_schedule(betas, log_f, log_f_pair):
    """The schedule as floats, refused unless it rises strictly from 0 to 1, and ``log_f_pair``
    (by default two calls of ``log_f``)."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas[0] != 0.0 or betas[-1] != 1.0 or np.any(np.diff(betas) <= 0):
        raise ValueError("betas must increase strictly from 0 to 1")
    if log_f_pair is None:
        def log_f_pair(beta_lo, beta_hi, state):
            return log_f(beta_lo, state), log_f(beta_hi, state)
    return betas, log_f_pair


def ais(log_f, sample_base, transition, log_z_base, betas, n_runs, rng, n_bootstrap=1000,
        log_f_pair=None):
    """Generic annealed importance sampling (6.3, 6.4).

    Parameters
    ----------
    log_f : callable (beta, state) -> ndarray (n_runs,)
        Unnormalised log density of the intermediate distribution at ``beta``.
    sample_base : callable (n_runs, rng) -> state
        Exact draws from the base distribution (beta = 0).
    transition : callable (beta, state, rng) -> state
        A Markov step leaving ``exp(log_f(beta, .))`` invariant.
    log_z_base : float
    betas : ndarray of shape (K + 1,), increasing from 0 to 1
    n_runs : int
    rng : np.random.Generator
    n_bootstrap : int, resamples for the interval
    log_f_pair : callable (beta_lo, beta_hi, state) -> (ndarray (n_runs,), ndarray (n_runs,)), optional
        ``(log_f(beta_lo, state), log_f(beta_hi, state))`` from one pass over the state (see
        :func:`_softplus_path`); by default two calls of ``log_f``. Each state is weighed at
        two neighbouring temperatures, so this is where a path can share work.

    Returns
    -------
    AISResult
    """
    betas, log_f_pair = _checked_schedule(betas, log_f, log_f_pair)
    state = sample_base(n_runs, rng)  # x_0
    log_w = np.zeros(n_runs)
    for k in range(1, len(betas)):
        # x_{k-1} is weighed at the temperature it was drawn at and at the next one
        lo, hi = log_f_pair(betas[k - 1], betas[k], state)  # (n_runs,), (n_runs,)
        log_w += hi - lo
        if k < len(betas) - 1:
            state = transition(betas[k], state, rng)  # x_k
    return _summarise(log_w, log_z_base, len(betas), rng, n_bootstrap)


def reverse_ais(log_f, start, transition, log_z_base, betas, rng, n_bootstrap=1000, log_f_pair=None):
    """Reverse annealed importance sampling (6.7): an upper bound on the mass of a set of states.

    The states ``x_{K-1} = start`` are exact draws from the model at beta = 1 restricted to a set
    B (B may be every state). The chain then runs down the schedule, ``x_{k-1}`` drawn by
    ``transition`` at ``beta_k`` from ``x_k``, and each state is weighed as in forward AIS (6.3),
    ``log w = sum_k [log f_{beta_k}(x_{k-1}) - log f_{beta_{k-1}}(x_{k-1})]``.

    Why it bounds: read backwards, the path is the reversal of a forward AIS run whose
    transitions are the reversals of ``transition`` (each leaves ``f_beta`` invariant too). The
    ratio of the forward path's probability to this one's is ``(Z_B / Z_0) / w``, with Z_B the
    unnormalised mass of B. Its mean over reverse paths is the probability that the forward run
    ends in B, at most 1, so ``E[1 / w] <= Z_0 / Z_B``: the estimate
    ``log Z_0 - log mean(1 / w)`` is, in expectation (and by Jensen once more), at least
    ``log Z_B``. For B = every state and enough temperatures it meets forward AIS's lower
    bound from above; the gap between the two bounds the error of both.

    Parameters
    ----------
    log_f, transition, log_z_base, betas, rng, n_bootstrap, log_f_pair : as for :func:`ais`
    start : state of n runs
        Exact draws from ``exp(log_f(1, .))`` restricted to B. Draws that are only close to it
        (long chains) make the bound approximate.

    Returns
    -------
    AISResult
        ``log_z`` is the upper estimate ``log Z_0 - log mean(1 / w)``, with its delta-method
        standard error and bootstrap interval; ``log_weights`` are the runs' ``log w``.
    """
    betas, log_f_pair = _checked_schedule(betas, log_f, log_f_pair)
    state = start  # x_{K-1}
    log_w = 0.0  # becomes (n_runs,) at the first temperature
    for k in range(len(betas) - 1, 0, -1):
        lo, hi = log_f_pair(betas[k - 1], betas[k], state)  # x_{k-1} at beta_{k-1} and beta_k
        log_w = log_w + (hi - lo)  # (n_runs,)
        if k > 1:
            state = transition(betas[k - 1], state, rng)  # x_{k-2}, drawn at beta_{k-1}
    # the upper estimate is the forward summary of -log w, mirrored
    mirrored = _summarise(-log_w, -log_z_base, len(betas), rng, n_bootstrap)
    lo, hi = mirrored.interval
    return AISResult(-mirrored.log_z, mirrored.std_error, (-hi, -lo), log_w, float(log_z_base), len(betas))


def _summarise(log_w, log_z_base, n_temperatures, rng, n_bootstrap):
    n = log_w.shape[0]
    log_mean = logsumexp(log_w) - np.log(n)
    w = np.exp(log_w - log_w.max())  # rescaled weights, max 1
    se = float(np.std(w) / (np.sqrt(n) * np.mean(w)))
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    boot = logsumexp(log_w[idx], axis=1) - np.log(n) + log_z_base  # (n_bootstrap,)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return AISResult(float(log_z_base + log_mean), se, (float(lo), float(hi)), log_w, float(log_z_base), n_temperatures)


# ----------------------------------------------------------------------------- per-model paths


def _interpolate(base, target, beta, zero=()):
    """(6.2) ``(1 - beta) theta_0 + beta theta_1`` field by field.

    A field the base shares with the target (the same array: hidden offsets, routing prior)
    is passed on as it is, and a field named in ``zero`` (the base's weights, all 0) is
    ``beta theta_1``: the same values without a pass over the base.
    """
    def field(name, b, t):
        if b is t:
            return t
        if name in zero:
            return beta * t
        return (1.0 - beta) * b + beta * t

    return type(target)(*(field(name, b, t) for name, b, t in zip(target._fields, base, target)))


class AnnealingPath(NamedTuple):
    """The path (6.2) of one model as four functions, shared by AIS and parallel tempering.

    Attributes
    ----------
    log_f : callable (beta, state) -> ndarray (n,)
        Unnormalised log density of the intermediate model ``theta_beta``.
    sample_base : callable (n, rng) -> state
        Exact draws from the base model (beta = 0).
    transition : callable (beta, state, rng) -> state
        One sweep of the model's sampler at ``theta_beta`` (leaves ``exp(log_f(beta, .))``
        invariant).
    log_z_base : float
        Exact log partition function of the base model.
    log_f_pair : callable (beta_lo, beta_hi, state) -> (ndarray (n,), ndarray (n,)), optional
        ``log_f`` at two temperatures from one pass over the state (:func:`_softplus_path`,
        Model R); None where two calls of ``log_f`` cost as much (the RBM, whose compiled free
        energy is one sparse pass) or no work is shared (Models P, G and S).
    blas_one_thread : bool
        Run the transitions with BLAS held to one thread (:func:`blas_setting`): Model R and the
        RBM on the compiled kernels, whose BLAS products then share the kernel threads.
    restrictable : bool
        The transition is a sweep of Gibbs blocks on the joint of the state and the units it
        sums out, whose last block draws the visible units from their exact conditional (the
        RBM: h | v, then v | h; Model R: (g, h) | v, a, then a | v, h, then v | g, h, a):
        :func:`restricted_path` can then refuse a visible draw outside a set (6.8). Model P's
        sweep of single-site MH steps has no such last block, so refusing where a whole sweep
        ends would not keep the restricted law.
    """

    log_f: Callable
    sample_base: Callable
    transition: Callable
    log_z_base: float
    log_f_pair: Optional[Callable] = None
    blas_one_thread: bool = False
    restrictable: bool = False


def blas_setting(path):
    """The context to run ``path``'s transitions in: BLAS on one thread per call where the path
    asks for it (``capsnp._kernels_jit.single_threaded_blas``, as Model R's training does),
    BLAS's own threads otherwise."""
    return _kernels_jit.single_threaded_blas() if path.blas_one_thread else contextlib.nullcontext()


def _softplus_path(beta, l0, l1, offset, u):
    """``log f_beta(x)`` (6.2) of n states x whose hidden units sum out in closed form: (n,).

    On the path of the RBM and of Model R the parameters that couple hidden and visible units
    (W, and C and A of RBParams) start at 0, the hidden offsets (b, gamma) and the routing
    prior beta are kept, and the visible biases move from alpha_0 to alpha. The log density
    (5.4 for the RBM, 4.9 for Model R) therefore splits into a part linear in the moving
    parameters and one softplus per hidden unit whose input scales with beta::

        log f_beta(x) = (1 - beta) l0(x) + beta l1(x) + sum_k softplus(offset_k + beta u_k(x))

    with ``l0``, ``l1`` the linear part at the base and at the target and ``u`` the hidden
    units' input at the target (``v W`` for the RBM, the routed input of 4.9 for Model R).
    One pass over the states gives them; each temperature then costs one softplus per unit.
    Model R's path uses it (its pass is the sparse ``assigned_input``); see
    :class:`AnnealingPath` for why the RBM's does not.

    Parameters
    ----------
    beta : float
    l0, l1 : ndarray of shape (n,)
    offset : ndarray of shape (H,) or (J, d_h), the hidden offsets
    u : ndarray of shape (n, H) or (n, J, d_h)

    Returns
    -------
    ndarray of shape (n,)
    """
    hidden = np.sum(softplus(offset + beta * u), axis=tuple(range(1, u.ndim)))  # (n,)
    return (1.0 - beta) * l0 + beta * l1 + hidden


def _path_rbm(params, alpha0, rbm):
    base = RBMParams(np.zeros_like(params.W), alpha0, params.b)
    log_z_base = float(softplus(alpha0).sum() + softplus(params.b).sum())

    def log_f(beta, v):
        return -rbm.free_energy(_interpolate(base, params, beta, ("W",)), v)

    def sample_base(n, g):
        return (g.random((n, alpha0.shape[0])) < sigmoid(alpha0)).astype(np.float64)

    def transition(beta, v, g):
        return rbm.gibbs_sweep(_interpolate(base, params, beta, ("W",)), v, g)[0]

    # (5.4) splits as _softplus_path does, but the compiled free energy sums the softplus terms
    # inside its sparse kernel: a shared pass, tried, cost what two of its calls do (results sec. 20)
    return AnnealingPath(log_f, sample_base, transition, log_z_base,
                         blas_one_thread=rbm is not _rbm_ref,  # the compiled visible pass is BLAS
                         restrictable=True)  # v -> h -> v


def _path_p(params, alpha0, n_iter, model_p):
    base = params._replace(W=np.zeros_like(params.W), alpha=alpha0)
    # W = 0: s = 0, so every expert contributes a constant, softplus(firing logit at s = 0):
    # log 1 = 0 for Model P (3.3), softplus(rho_j) for Models G and S (G.3, S.3)
    s0 = np.zeros((1,) + params.rho.shape + params.W.shape[2:3])  # (1, J, d_h)
    expert_sum = float(_model_p_ref._expert_log_gain(params, s0).sum())
    log_z_base = float(softplus(alpha0).sum()) + expert_sum

    def log_f(beta, v):
        return -model_p.free_energy(_interpolate(base, params, beta, ("W",)), v, n_iter)

    def sample_base(n, g):
        return (g.random((n,) + alpha0.shape) < sigmoid(alpha0)).astype(np.float64)

    def transition(beta, v, g):
        return model_p.mh_sweep(_interpolate(base, params, beta, ("W",)), v, g, n_iter)[0]

    return AnnealingPath(log_f, sample_base, transition, log_z_base)


def _path_r(params, alpha0, model_r, rbm):
    # the base keeps gamma and beta (and a shared capsule's delta, RSParams (4c.1)); W, the
    # assignment biases C, A of RBParams (4b.1) and the shared weights V are 0
    zero = tuple(k for k in ("W", "C", "A", "V") if k in params._fields)
    base = params._replace(alpha=alpha0, **{k: np.zeros_like(getattr(params, k)) for k in zero})
    # W = C = A = V = 0: v, g, h and a are independent; the sum over a gives logsumexp_j beta_ij
    # per child.
    log_z_base = float(softplus(alpha0).sum() + softplus(params.gamma).sum() + logsumexp(params.beta, axis=1).sum())
    shared = isinstance(params, RSParams)
    if shared:
        log_z_base += float(softplus(params.delta).sum())
    I, J = params.beta.shape

    def log_f(beta, state):
        v, a = state
        theta = _interpolate(base, params, beta, zero)
        if shared:
            return _model_rs.log_joint_va(theta, v, a, model_r)  # (4c.5)
        return model_r.log_joint_va(theta, v, a)

    def sample_base(n, g):
        v = (g.random((n,) + alpha0.shape) < sigmoid(alpha0)).astype(np.float64)
        cdf = np.cumsum(np.exp(params.beta - logsumexp(params.beta, axis=1, keepdims=True)), axis=1)  # (I, J)
        a = np.minimum((g.random((n, I))[..., None] > cdf[None]).sum(axis=2), J - 1)  # (n, I)
        return v, a.astype(np.int64)

    def transition(beta, state, g):
        v, a = state
        theta = _interpolate(base, params, beta, zero)
        if shared:  # (4c.7)
            v2, _, _, a2, _ = _model_rs.gibbs_sweep(theta, v, a, g, model_r=model_r, rbm=rbm)
        else:
            v2, _, a2, _ = model_r.gibbs_sweep(theta, v, a, g)
        return v2, a2

    def log_f_pair(beta_lo, beta_hi, state):  # (4.9) on the path from one routed input
        v, a = state
        v = np.asarray(v, dtype=np.float64)  # (n, I, d_v)
        a = np.asarray(a)  # (n, I)
        routed = _model_rs.routed_part(params) if shared else params
        chosen = np.take_along_axis(model_r.prior_logits(routed, v), a[..., None], axis=-1)[..., 0]  # (n, I)
        l0 = np.sum(alpha0 * v, axis=(1, 2)) + np.sum(params.beta[np.arange(I), a], axis=-1)  # (n,)
        l1 = np.sum(params.alpha * v, axis=(1, 2)) + np.sum(chosen, axis=-1)  # (n,): b(v) = beta + A.v
        u = model_r.assigned_input(routed, v, a)  # (n, J, d_h)
        pair = tuple(_softplus_path(b, l0, l1, params.gamma, u) for b in (beta_lo, beta_hi))
        if not shared:
            return pair
        u0 = _model_rs.shared_input(params._replace(delta=np.zeros_like(params.delta)), v)  # (n, H0): V v
        zeros = np.zeros_like(l0)
        return tuple(p + _softplus_path(b, zeros, zeros, params.delta, u0)  # (4c.5)
                     for p, b in zip(pair, (beta_lo, beta_hi)))

    return AnnealingPath(log_f, sample_base, transition, log_z_base, log_f_pair,
                         blas_one_thread=model_r is not _model_r_ref,  # the compiled kernels
                         restrictable=True)  # (g, h) | v, a; a | v, h; v last


def _as_params(model):
    """(params, kind, n_iter) from a params container or a fitted estimator."""
    if isinstance(model, (PParams, GParams, SParams, RParams, RBParams, RSParams, RBMParams)):
        params = model
    elif hasattr(model, "components_"):
        params = RBMParams(np.asarray(model.components_, np.float64).T,
                           np.asarray(model.intercept_visible_, np.float64),
                           np.asarray(model.intercept_hidden_, np.float64))
    elif hasattr(model, "rho_"):
        kind = _model_p_ref.PARAMS_TYPES[getattr(model, "expert", "squash")]
        params = kind(*(np.asarray(getattr(model, k + "_"), np.float64) for k in kind._fields))
    elif hasattr(model, "gamma_"):
        kind = (RSParams if getattr(model, "V_", None) is not None
                else RBParams if getattr(model, "C_", None) is not None else RParams)
        params = kind(*(np.asarray(getattr(model, k + "_"), np.float64) for k in kind._fields))
    else:
        raise TypeError(f"cannot evaluate an object of type {type(model).__name__}: expected a fitted "
                        "capsnp estimator or a PParams/GParams/SParams/RParams/RBMParams container")
    return params, getattr(model, "n_routing", 3)


def ais_log_partition(model, n_runs=100, betas=None, random_state=None, base_rate=None,
                      backend="numba"):
    """AIS estimate of log Z for a fitted model (6.2-6.4).

    Parameters
    ----------
    model : fitted ``BernoulliRBM``, ``CapsulePoE`` or ``RoutedCapsuleRBM``, or a params container
    n_runs : int, number of independent annealing runs (100 or more for reported numbers)
    betas : ndarray, optional, the schedule (default :func:`default_betas`, 14,500 temperatures)
    random_state : int, Generator or None
    base_rate : ndarray, optional
        Mean of the training data per pixel, shape (D,) or (I, d_v), for the base-rate model;
        default: the model's own visible biases with W = 0 (also exact, less efficient).
    backend : {"numba", "numpy"}, default="numba"
        Where the transitions and free energies run: the compiled kernels (NumPy where Numba
        is missing, with a warning) or the NumPy reference. Same equations and random draws.

    Returns
    -------
    AISResult
    """
    path = annealing_path(model, base_rate, backend)
    rng = random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng(random_state)
    betas = default_betas() if betas is None else betas
    with blas_setting(path):
        return ais(path.log_f, path.sample_base, path.transition, path.log_z_base, betas, n_runs, rng,
                   log_f_pair=path.log_f_pair)


def annealing_path(model, base_rate=None, backend="numba"):
    """The annealing path (6.2) of a fitted model or params container, as an :class:`AnnealingPath`.

    Parameters
    ----------
    model : fitted ``BernoulliRBM``, ``CapsulePoE`` or ``RoutedCapsuleRBM``, or a params container
    base_rate : ndarray of shape (D,) or (I, d_v), optional
        Per-pixel data means for the base model's visible biases; default: the model's own
        visible biases (with W = 0).
    backend : {"numba", "numpy"}, default="numba"

    Returns
    -------
    AnnealingPath; its states are v (n, D) for the RBM, v (n, I, d_v) for Models P, G and S,
    and (v (n, I, d_v), a (n, I)) for Model R.
    """
    params, n_iter = _as_params(model)
    modules = kernels.get_backend(kernels.resolve_backend(backend))
    shape = params.a.shape if isinstance(params, RBMParams) else params.alpha.shape
    alpha0 = (base_log_odds(base_rate).reshape(shape) if base_rate is not None
              else np.array(params.a if isinstance(params, RBMParams) else params.alpha, dtype=np.float64))
    if isinstance(params, RBMParams):
        return _path_rbm(params, alpha0, modules.rbm)
    if isinstance(params, (PParams, GParams, SParams)):
        return _path_p(params, alpha0, n_iter, modules.model_p)
    return _path_r(params, alpha0, modules.model_r, modules.rbm)


# ----------------------------------------------------------------------------- restricted paths


def _visible(state):
    """The visible units of a path state: v itself (RBM), the first member of (v, a) (Model R)."""
    return state[0] if isinstance(state, tuple) else state


def restricted_path(path, inside, log_base_mass, max_draws=10**7):
    """The path (6.2) restricted to a set B of visible states (6.8), for AIS on B alone.

    Each intermediate density becomes ``f_beta(x) 1_B(v)``. At beta = 0 it is the base model
    restricted to B, whose mass is ``Z_0 P_0(B)``; at beta = 1 it is the model restricted to B,
    whose mass is ``Z_B``. Forward AIS (:func:`ais`) on this path therefore estimates
    ``log Z_B``, with every run inside B, where a forward run on the model's own path weighs B
    only through the runs that happen to end there. Reverse AIS (:func:`reverse_ais`) from draws
    restricted to B bounds it from above, and as every forward run ends in B, the bound of
    (6.7) loses nothing to ``P(end in B)``.

    Why the restricted sweep leaves ``f_beta 1_B`` invariant: the sweep of a restrictable path
    is a run of Gibbs blocks on the joint of v and the other units. The blocks before the last
    leave v alone (the RBM draws h | v; Model R draws (g, h) | v, a and then a | v, h, which by
    (4c.3) equals a | v, g, h), so each keeps the restricted joint law. The last block draws
    ``v'`` from its exact conditional. Read as a Metropolis-Hastings proposal for the target
    ``f_beta 1_B``, it has acceptance ``min(1, 1_B(v'))``: the draw is kept if it lies in B and
    refused (v stays) otherwise. For Model R the routing drawn in the sweep is kept either way:
    it was a Gibbs draw given the old v. No block needs to be reversible. The weights (6.3) need
    no change: inside B, ``f_beta 1_B`` and ``f_beta`` have the same ratios between temperatures.
    Reverse runs from exact draws of ``f_1 1_B / Z_B`` then satisfy
    ``E[1 / w] = Z_0 P_0(B) / Z_B`` exactly, as (6.7) does with every forward run ending in B.

    Parameters
    ----------
    path : AnnealingPath with ``restrictable`` (the RBM's or Model R's)
    inside : callable (v) -> ndarray (n,) of bool
        Membership of B, from the visible units: v of shape (n, D) for the RBM, (n, I, d_v) for
        Model R.
    log_base_mass : float
        ``log P_0(B)``, the base model's probability of B (:func:`ink_tail_log_probability` for
        an ink set).
    max_draws : int
        Give up drawing the restricted base by rejection after this many base draws.

    Returns
    -------
    AnnealingPath with the restricted base sampler, the restricted transition and
    ``log_z_base = path.log_z_base + log_base_mass``; ``log_f`` and ``log_f_pair`` are the path's.
    It is not ``restrictable`` again: restricting it further would need ``P_0`` of the new set
    given B.
    """
    if not path.restrictable:
        raise ValueError("this path's sweep cannot be restricted to a set of states (Model P's MH sweep); "
                         "restricted AIS (6.8) runs on the RBM's and Model R's paths")
    if not np.isfinite(log_base_mass) or log_base_mass > 0:
        raise ValueError(f"log_base_mass={log_base_mass!r} must be a finite log-probability")

    def sample_base(n, g):
        # rejection from the base model: exact draws from the base restricted to B, in batches of
        # at most 10,000 states (or n) so that a rare B runs into max_draws, not out of memory
        kept, drawn = [], 0
        batch = int(min(max_draws, max(n, 1, min(10_000, np.ceil(1.2 * n / np.exp(log_base_mass))))))
        while not kept or sum(_visible(x).shape[0] for x in kept) < n:
            if drawn >= max_draws:
                raise RuntimeError(f"fewer than {n} of {drawn} base draws fell in B (P_0(B) = "
                                   f"{np.exp(log_base_mass):.3g}); choose a base with more mass on B")
            x = path.sample_base(batch, g)
            drawn += batch
            ok = np.asarray(inside(_visible(x)), dtype=bool).reshape(batch)  # (batch,)
            kept.append(tuple(y[ok] for y in x) if isinstance(x, tuple) else x[ok])
        if isinstance(kept[0], tuple):
            return tuple(np.concatenate(parts)[:n] for parts in zip(*kept))
        return np.concatenate(kept)[:n]

    def transition(beta, state, g):
        new = path.transition(beta, state, g)
        v = _visible(new)
        ok = np.asarray(inside(v), dtype=bool).reshape(v.shape[0])  # (n,): v' in B
        m = ok.reshape(ok.shape + (1,) * (v.ndim - 1))  # (n, 1, ...)
        v = np.where(m, v, _visible(state))  # a refused draw leaves v where it was
        return (v,) + tuple(new[1:]) if isinstance(new, tuple) else v

    return path._replace(sample_base=sample_base, transition=transition,
                         log_z_base=float(path.log_z_base + log_base_mass), restrictable=False)


def pixelwise_refusal(v, proposal, threshold, above=True):
    """(6.10) Pixel-by-pixel refusal of a visible draw at the edge of an ink set.

    Inside ``B = {ink > t}`` (``above``) or ``{ink <= t}``, visit the pixels in order and
    replace ``v_i`` by the proposal's ``v'_i`` unless that would carry the count of pixels on
    out of the set. When the pixels of ``v'`` are independent draws from their exact
    conditionals (given h, and a and g for Model R), each visit is a Metropolis-Hastings step
    whose proposal is that conditional, so its acceptance is the set's indicator, and the scan
    keeps ``f_beta 1_B`` as (6.8) does. Where a refused whole draw leaves v where it was, this
    refuses only the flips that cross the edge, so a chain pressed against the edge keeps
    moving along it.

    With ``delta_i = v'_i - v_i`` and ``S_k = ink(v) + delta_1 + ... + delta_k``, the count after
    k visits above the edge is the walk held at ``t + 1`` from below (a Skorokhod reflection):
    ``c_k = S_k + max(0, max_{j <= k} (t + 1 - S_j))``, and visit k is accepted exactly when
    ``c_k - c_{k-1} = delta_k``; below it, ``c_k = S_k - max(0, max_{j <= k} (S_j - t))``.

    Parameters
    ----------
    v : ndarray of shape (n, ...), binary, each row inside the set
    proposal : ndarray of the same shape, binary
    threshold : float
    above : bool, the set is ``{ink > threshold}`` (else ``{ink <= threshold}``)

    Returns
    -------
    ndarray of v's shape and dtype: the new visible states, each still inside the set
    """
    n = v.shape[0]
    old = np.asarray(v).reshape(n, -1)  # (n, D)
    new = np.asarray(proposal).reshape(n, -1)  # (n, D)
    delta = new.astype(np.int64) - old.astype(np.int64)  # (n, D), in {-1, 0, 1}
    c0 = old.sum(axis=1).astype(np.int64)  # (n,)
    S = c0[:, None] + np.cumsum(delta, axis=1)  # (n, D): the free walk
    if above:
        edge = int(np.floor(threshold)) + 1  # the smallest count inside
        c = S + np.maximum(0, np.maximum.accumulate(edge - S, axis=1))  # (n, D), >= edge
    else:
        edge = int(np.floor(threshold))  # the largest count inside
        c = S - np.maximum(0, np.maximum.accumulate(S - edge, axis=1))  # (n, D), <= edge
    before = np.concatenate([c0[:, None], c[:, :-1]], axis=1)  # (n, D): c_{k-1}
    accepted = (c - before) == delta  # (n, D)
    return np.where(accepted, new, old).reshape(np.shape(v)).astype(np.asarray(v).dtype)


def ink_restricted_path(path, threshold, above, log_base_mass, max_draws=10**7):
    """:func:`restricted_path` for an ink set, with the refusal made pixel by pixel (6.10).

    The base and the weights are those of (6.8); each sweep's visible draw is kept pixel by
    pixel by :func:`pixelwise_refusal` instead of whole. Use it where whole draws would mostly
    be refused: a set whose edge the intermediate models press against freezes the chains of
    :func:`restricted_path`, which is still unbiased but has weights of unbounded spread.

    Parameters
    ----------
    path : AnnealingPath with ``restrictable``
    threshold : float
    above : bool, the set is ``{ink > threshold}`` (else ``{ink <= threshold}``)
    log_base_mass : float, ``log P_0`` of the set (:func:`ink_tail_log_probability`)
    max_draws : int, as for :func:`restricted_path`

    Returns
    -------
    AnnealingPath, as :func:`restricted_path` returns
    """
    def inside(v):
        ink = np.asarray(v).reshape(v.shape[0], -1).sum(axis=1)  # (n,)
        return ink > threshold if above else ink <= threshold

    sub = restricted_path(path, inside, log_base_mass, max_draws)

    def transition(beta, state, g):
        new = path.transition(beta, state, g)
        v = pixelwise_refusal(_visible(state), _visible(new), threshold, above)
        return (v,) + tuple(new[1:]) if isinstance(new, tuple) else v

    return sub._replace(transition=transition)


def ink_tail_log_probability(p, threshold):
    """(6.9) ``log P(sum_i x_i > threshold)`` for independent ``x_i ~ Bernoulli(p_i)``.

    The count of pixels on is Poisson-binomial. Its law is built one pixel at a time: with
    ``q_m(c) = P(x_1 + ... + x_m = c)``, ``q_m(c) = (1 - p_m) q_{m-1}(c) + p_m q_{m-1}(c - 1)``,
    then the tail is summed. The recursion runs on ``log q`` so that tails far below 1e-308
    keep their logs; a tail near 1 is taken as ``log1p(-head)`` so that it never exceeds 0.
    For the base model of a path, ``p = sigmoid(alpha_0)``.

    Parameters
    ----------
    p : ndarray of any shape, probabilities of the pixels (flattened: D of them)
    threshold : float

    Returns
    -------
    float in [-inf, 0] (``-inf`` if no count exceeds ``threshold``)
    """
    p = np.asarray(p, dtype=np.float64).ravel()  # (D,)
    if np.isnan(threshold) or np.any((p < 0) | (p > 1)):
        raise ValueError("threshold must be a number and p probabilities in [0, 1]")
    with np.errstate(divide="ignore"):
        log_on, log_off = np.log(p), np.log1p(-p)  # (D,), (D,)
    lq = np.full(p.shape[0] + 1, -np.inf)  # (D + 1,): log q[c], pixels so far
    lq[0] = 0.0
    for m in range(1, p.shape[0] + 1):
        lq[1:m + 1] = np.logaddexp(log_off[m - 1] + lq[1:m + 1], log_on[m - 1] + lq[0:m])
        lq[0] += log_off[m - 1]
    above = np.arange(lq.shape[0]) > threshold  # (D + 1,)
    log_tail, log_head = logsumexp(lq[above]), logsumexp(lq[~above])  # -inf for an empty side
    if log_tail > np.log(0.5):
        return float(min(np.log1p(-np.exp(log_head)), 0.0))
    return float(log_tail)
