"""Parallel tempering on the annealing path (MODEL.md sec. 6; ``lessons/09_evaluation.py``).

A single Gibbs or MH chain of a trained model moves between modes (digit classes, garment
types) only rarely: fresh chains from noise settle on a few modes. Parallel tempering (Swendsen &
Wang 1986; Geyer 1991; Desjardins et al. 2010 for RBMs) runs one chain at each inverse
temperature ``0 = beta_0 < ... < beta_K = 1`` of the AIS path (6.2): ``beta = 0`` is the base
model of independent pixels, which the sampler draws exactly; ``beta = 1`` is the model. After
every sweep neighbouring chains propose to exchange their states, so states made at high
temperature, where the landscape is flat, travel down to ``beta = 1``.

Equation labels:

* (6.6) swap test between the chains at ``beta_k`` and ``beta_{k+1}``, with ``f_beta`` the
  unnormalised density of the path:
  ``Delta = log f_k(x_{k+1}) + log f_{k+1}(x_k) - log f_k(x_k) - log f_{k+1}(x_{k+1})``;
  exchange with probability ``min(1, exp(Delta))``.

The exchange is a Metropolis step on the product distribution ``prod_k f_{beta_k}(x_k) / Z_k``
whose proposal (swap two components) is its own inverse, so it satisfies detailed balance and the
``beta = 1`` chain keeps the model's distribution (checked by enumeration in the tests). The
states are whatever the path's transition carries: v (n, D) for the RBM, v (n, I, d_v) for
Models P, G and S, (v, a) for Model R.
"""

import numpy as np

from .ais import annealing_path, blas_setting

__all__ = ["default_temperatures", "swap_log_acceptance", "swap_step", "parallel_tempering",
           "tempered_sample"]


def default_temperatures(n_temperatures):
    """``n_temperatures`` inverse temperatures spaced evenly from 0 to 1.

    Even spacing balanced the swap rates best of the three spacings tried on a Model R of
    MNIST (even in beta, in beta^2 or in sqrt(beta); lesson 12). A pair's rate is about
    ``erfc(gap * sigma / 2)``, with sigma the spread of ``d log f / d beta`` along the path; on
    that model sigma was about as large at the hot end (the visible biases move) as at the
    cold end (the weights), so neither end deserves denser temperatures. Check the swap rates
    that :func:`parallel_tempering` returns: on a larger Model R (docs/results.md sec. 7) ten
    even temperatures left the two hottest pairs at 0, a ladder cut in two.

    Returns
    -------
    ndarray of shape (n_temperatures,), increasing from 0 to 1
    """
    if int(n_temperatures) < 2:
        raise ValueError(f"n_temperatures={n_temperatures!r}: parallel tempering needs at least 2")
    return np.linspace(0.0, 1.0, int(n_temperatures))


def _take(state, rows):
    """Rows of a state (an array or a tuple of arrays)."""
    if isinstance(state, tuple):
        return tuple(x[rows] for x in state)
    return state[rows]


def _where(mask, x, y):
    """Row-wise choice ``x if mask else y`` for states (arrays or tuples of arrays)."""
    if isinstance(x, tuple):
        return tuple(_where(mask, a, b) for a, b in zip(x, y))
    m = mask.reshape(mask.shape + (1,) * (x.ndim - 1))  # (n, 1, ...)
    return np.where(m, x, y)


def swap_log_acceptance(log_f, beta_lo, beta_hi, x_lo, x_hi):
    """Log acceptance ratio (6.6) of exchanging ``x_lo`` (at ``beta_lo``) and ``x_hi`` (at ``beta_hi``).

    Parameters
    ----------
    log_f : callable (beta, state) -> ndarray (n,)
    beta_lo, beta_hi : float
    x_lo, x_hi : states of n chains each

    Returns
    -------
    ndarray of shape (n,): ``Delta``; the exchange is accepted with probability ``min(1, e^Delta)``.
    """
    return (log_f(beta_lo, x_hi) + log_f(beta_hi, x_lo)
            - log_f(beta_lo, x_lo) - log_f(beta_hi, x_hi))  # (n,)


def swap_step(log_f, betas, states, parity, rng):
    """Propose exchanges between the pairs ``(k, k+1)`` with ``k = parity, parity + 2, ...`` (6.6).

    Alternating ``parity`` between 0 and 1 on successive sweeps (the even-odd scheme) gives
    every pair a proposal every other sweep; the pairs of one step are disjoint, so their tests
    are independent.

    Parameters
    ----------
    log_f : callable (beta, state) -> ndarray (n,)
    betas : ndarray of shape (K,)
    states : list of K states, each of n chains
    parity : 0 or 1
    rng : np.random.Generator, one ``rng.random(n)`` per pair in increasing k

    Returns
    -------
    (list of K states, dict {k: accepted (n,) bool}) for the pairs that were tested.
    """
    states = list(states)
    accepted = {}
    for k in range(int(parity), len(betas) - 1, 2):
        delta = swap_log_acceptance(log_f, betas[k], betas[k + 1], states[k], states[k + 1])  # (n,)
        u = rng.random(delta.shape[0])  # (n,)
        ok = np.log(u) < delta  # (n,); log(0) = -inf is always accepted, as u < e^Delta is
        states[k], states[k + 1] = (_where(ok, states[k + 1], states[k]),
                                    _where(ok, states[k], states[k + 1]))
        accepted[k] = ok
    return states, accepted


def parallel_tempering(path, betas, n_chains, n_sweeps, rng, states=None):
    """Run ``n_chains`` independent tempering ladders for ``n_sweeps`` sweeps.

    Each sweep applies the path's transition at every temperature, then :func:`swap_step`
    with the parity of the sweep number.

    Parameters
    ----------
    path : AnnealingPath (``capsnp.ais.annealing_path``)
    betas : ndarray of shape (K,), increasing from 0 to 1
    n_chains : int
    n_sweeps : int
    rng : np.random.Generator
    states : list of K states, optional; default: independent draws of the base model

    Returns
    -------
    (states, swap_rates): the list of K states after the last sweep (``states[-1]`` is the
    ``beta = 1`` chain) and the acceptance rate of each pair ``(k, k+1)``, shape (K - 1,).
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.shape[0] < 2 or betas[0] != 0.0 or betas[-1] != 1.0 \
            or np.any(np.diff(betas) <= 0):
        raise ValueError("betas must increase strictly from 0 to 1, with at least 2 of them")
    K = betas.shape[0]
    if states is None:
        states = [path.sample_base(int(n_chains), rng) for _ in range(K)]
    tried = np.zeros(K - 1)
    taken = np.zeros(K - 1)
    for sweep in range(int(n_sweeps)):
        states = [path.transition(b, x, rng) for b, x in zip(betas, states)]
        states, accepted = swap_step(path.log_f, betas, states, sweep % 2, rng)
        for k, ok in accepted.items():
            tried[k] += ok.shape[0]
            taken[k] += ok.sum()
    return states, taken / np.maximum(tried, 1)


def tempered_sample(model, n_samples=100, n_sweeps=1000, n_temperatures=20, random_state=None,
                    base_rate=None, backend="numba"):
    """Samples of a fitted model from parallel-tempering ladders started at noise.

    Parameters
    ----------
    model : fitted ``BernoulliRBM``, ``CapsulePoE`` or ``RoutedCapsuleRBM``, or a params container
    n_samples : int, number of ladders (one sample each)
    n_sweeps : int
    n_temperatures : int, ladder length (:func:`default_temperatures`)
    random_state : int, Generator or None
    base_rate : ndarray, optional, per-pixel data means for the base model (the hot end)
    backend : {"numba", "numpy"}

    Returns
    -------
    (v, swap_rates): the ``beta = 1`` chains' visible states after the last sweep, shape
    (n_samples, D) for the RBM and (n_samples, I, d_v) for the capsule models (in float64), and
    the swap acceptance rate of each neighbouring pair, shape (n_temperatures - 1,).
    """
    rng = random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng(random_state)
    path = annealing_path(model, base_rate, backend)
    with blas_setting(path):
        states, rates = parallel_tempering(path, default_temperatures(n_temperatures), n_samples, n_sweeps, rng)
    top = states[-1]
    return (top[0] if isinstance(top, tuple) else top), rates
