"""Parallel tempering (6.6): exact detailed balance of the swap, exact sampling on tiny models."""

import itertools

import numpy as np
import pytest
from conftest import chi_square_pvalue, random_pparams
from test_ais import tiny_r, tiny_rbm

from capsnp import model_p, model_r, rbm
from capsnp.ais import annealing_path
from capsnp.estimators import BernoulliRBM, CapsulePoE, RoutedCapsuleRBM
from capsnp.exact import enumerate_binary
from capsnp.params import RBMParams
from capsnp.tempering import (default_temperatures, parallel_tempering, swap_log_acceptance,
                              swap_step, tempered_sample)


def _visible_log_probabilities(kind, params):
    """Exact log p(v) over all visible states, in the order of ``enumerate_binary``."""
    if kind == "rbm":
        V = enumerate_binary(params.W.shape[0])  # (2^D, D)
        return rbm.exact_log_marginal(params, V)
    I, d_v = params.alpha.shape
    V = enumerate_binary(I * d_v).reshape(-1, I, d_v)  # (2^(I d_v), I, d_v)
    if kind == "p":
        return model_p.exact_log_marginal(params, V)
    return model_r.exact_log_marginal(params, V)


def _state_index(v):
    """Index of each binary row in ``enumerate_binary`` order (first bit least significant)."""
    flat = v.reshape(v.shape[0], -1)  # (n, n_bits)
    weights = 2 ** np.arange(flat.shape[1])
    idx = (flat.astype(np.int64) * weights).sum(axis=1)
    # check the convention on the enumeration itself
    E = enumerate_binary(flat.shape[1])
    assert np.array_equal((E.astype(np.int64) * weights).sum(axis=1), np.arange(E.shape[0]))
    return idx


MAKERS = {
    "rbm": lambda rng: tiny_rbm(rng, D=4, H=3, scale=1.5),
    "p": lambda rng: random_pparams(rng, I=2, d_v=2, J=2, d_h=2, scale=1.5),
    "r": lambda rng: tiny_r(rng, I=2, d_v=2, J=2, d_h=2, scale=1.5),
}


def _all_states(kind, params):
    """Every state of the path's chains, as one batch, and its size."""
    if kind == "rbm":
        V = enumerate_binary(params.W.shape[0])
        return V, V.shape[0]
    I, d_v = params.alpha.shape
    V = enumerate_binary(I * d_v).reshape(-1, I, d_v)
    if kind == "p":
        return V, V.shape[0]
    J = params.beta.shape[1]
    A = np.array(list(itertools.product(range(J), repeat=I)), dtype=np.int64)  # (J^I, I)
    iv, ia = np.meshgrid(np.arange(V.shape[0]), np.arange(A.shape[0]), indexing="ij")
    return (V[iv.ravel()], A[ia.ravel()]), iv.size


def _rows(state, idx):
    return tuple(x[idx] for x in state) if isinstance(state, tuple) else state[idx]


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_swap_satisfies_detailed_balance_exactly(kind, seed):
    """pi(x, y) P(swap) = pi(y, x) P(swap back) on every pair of states, pi = f_lo(x) f_hi(y) / Z."""
    params = MAKERS[kind](np.random.default_rng(seed))
    path = annealing_path(params, backend="numpy")
    states, n = _all_states(kind, params)
    b_lo, b_hi = 0.35, 0.8
    ix, iy = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    x, y = _rows(states, ix.ravel()), _rows(states, iy.ravel())
    log_pi = path.log_f(b_lo, x) + path.log_f(b_hi, y)  # (n^2,) unnormalised
    log_pi_swapped = path.log_f(b_lo, y) + path.log_f(b_hi, x)
    delta = swap_log_acceptance(path.log_f, b_lo, b_hi, x, y)  # (n^2,)
    delta_back = swap_log_acceptance(path.log_f, b_lo, b_hi, y, x)
    flow = log_pi + np.minimum(0.0, delta)
    flow_back = log_pi_swapped + np.minimum(0.0, delta_back)
    np.testing.assert_allclose(flow, flow_back, rtol=0, atol=1e-10)
    np.testing.assert_allclose(delta, -delta_back, rtol=0, atol=1e-10)


class _FixedUniforms:
    """A stand-in generator returning given uniforms, to see which exchanges swap_step makes."""

    def __init__(self, u):
        self.u = list(u)

    def random(self, n):
        return np.asarray(self.u.pop(0), dtype=np.float64)[:n]


def test_swap_step_exchanges_exactly_the_accepted_rows():
    rng = np.random.default_rng(0)
    params = tiny_rbm(rng, D=4, H=3, scale=1.5)
    path = annealing_path(params, backend="numpy")
    betas = np.array([0.0, 0.4, 0.7, 1.0])
    states = [path.sample_base(6, rng) for _ in betas]
    for parity in (0, 1):
        pairs = list(range(parity, len(betas) - 1, 2))
        u = [rng.random(6) for _ in pairs]
        new, accepted = swap_step(path.log_f, betas, states, parity, _FixedUniforms(u))
        assert sorted(accepted) == pairs
        for k, uk in zip(pairs, u):
            delta = swap_log_acceptance(path.log_f, betas[k], betas[k + 1], states[k], states[k + 1])
            ok = np.log(uk) < delta
            np.testing.assert_array_equal(accepted[k], ok)
            np.testing.assert_array_equal(new[k], np.where(ok[:, None], states[k + 1], states[k]))
            np.testing.assert_array_equal(new[k + 1], np.where(ok[:, None], states[k], states[k + 1]))
        untouched = set(range(len(betas))) - {k for p in pairs for k in (p, p + 1)}
        for k in untouched:
            assert new[k] is states[k] or np.array_equal(new[k], states[k])


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_top_chain_samples_the_model_exactly(kind, seed):
    """Ladders started at the base model: the beta = 1 chain's visible states follow p(v)."""
    params = MAKERS[kind](np.random.default_rng(seed))
    path = annealing_path(params, backend="numpy")
    n = 4000
    states, rates = parallel_tempering(path, default_temperatures(4), n, 12, np.random.default_rng(seed))
    top = states[-1][0] if isinstance(states[-1], tuple) else states[-1]
    counts = np.bincount(_state_index(top), minlength=2 ** top[0].size)
    probs = np.exp(_visible_log_probabilities(kind, params))
    assert probs.sum() == pytest.approx(1.0, abs=1e-10)
    assert chi_square_pvalue(counts, probs) > 1e-4
    assert rates.shape == (3,) and np.all((rates > 0) & (rates <= 1))


def test_tempering_frees_chains_started_in_one_mode():
    """A strongly coupled RBM (8 pixels, 2 hidden units, weights of scale 3) with every chain
    started at v = 0: after 30 sweeps plain Gibbs chains still over-weight the start's mode,
    while the beta = 1 chains of tempering ladders started there too match p(v)."""
    rng = np.random.default_rng(3)
    W = rng.normal(0, 3, (8, 2))
    params = RBMParams(W, -W.mean(axis=1), -W.sum(axis=0) / 2)
    probs = np.exp(rbm.exact_log_marginal(params, enumerate_binary(8)))  # (256,)
    n, sweeps = 4000, 100
    v = np.zeros((n, 8))
    for _ in range(sweeps):
        v, _ = rbm.gibbs_sweep(params, v, rng)
    plain = np.bincount(_state_index(v), minlength=256) / n
    path = annealing_path(params, backend="numpy")
    states, rates = parallel_tempering(path, default_temperatures(10), n, sweeps, rng,
                                       states=[np.zeros((n, 8)) for _ in range(10)])
    counts = np.bincount(_state_index(states[-1]), minlength=256)
    tv_plain = 0.5 * np.abs(plain - probs).sum()
    tv_tempered = 0.5 * np.abs(counts / n - probs).sum()
    assert chi_square_pvalue(counts, probs) > 1e-4
    assert chi_square_pvalue(plain * n, probs) < 1e-6
    assert tv_tempered < tv_plain / 2, (tv_tempered, tv_plain)
    assert rates.min() > 0.3


@pytest.mark.parametrize("Est, kw", [
    (BernoulliRBM, dict(n_components=6)),
    (RoutedCapsuleRBM, dict(n_capsules=2, capsule_dim=3, image_shape=(4, 4), patch=2)),
    (CapsulePoE, dict(n_capsules=2, capsule_dim=3, image_shape=(4, 4), patch=2)),
])
def test_estimator_sample_with_temperatures(Est, kw):
    rng = np.random.default_rng(0)
    X = (rng.random((60, 16)) < 0.3).astype(np.float64)
    est = Est(n_iter=2, random_state=0, batch_size=20, **kw).fit(X)
    s = est.sample(7, n_steps=5, n_temperatures=4, random_state=1)
    assert s.shape == (7, 16) and set(np.unique(s)) <= {0.0, 1.0}
    np.testing.assert_array_equal(s, est.sample(7, n_steps=5, n_temperatures=4, random_state=1))
    if not isinstance(est, CapsulePoE):
        p = est.sample(7, n_steps=5, n_temperatures=4, random_state=1, return_probabilities=True)
        assert p.shape == (7, 16) and np.all((p >= 0) & (p <= 1))
    v, rates = tempered_sample(est, n_samples=3, n_sweeps=4, n_temperatures=3, random_state=2)
    assert v.reshape(3, -1).shape == (3, 16) and rates.shape == (2,)
    with pytest.raises(ValueError, match="noise"):
        est.sample(n_steps=2, init=X[:3], n_temperatures=3)
    with pytest.raises(ValueError, match="n_temperatures"):
        est.sample(3, n_steps=2, n_temperatures=0)


def test_default_temperatures():
    b = default_temperatures(5)
    assert b[0] == 0.0 and b[-1] == 1.0 and np.all(np.diff(b) > 0)
    np.testing.assert_allclose(np.diff(b), 0.25)
    with pytest.raises(ValueError):
        default_temperatures(1)
    with pytest.raises(ValueError):
        parallel_tempering(annealing_path(tiny_rbm(np.random.default_rng(0))), np.array([0.0, 0.5]), 2, 1,
                           np.random.default_rng(0))
