"""AIS (6.2-6.4) against exact log Z on tiny models of all three classes."""

import numpy as np
import pytest
from conftest import random_pparams
from scipy.stats import chisquare

from capsnp import _kernels_jit, kernels, model_p, model_r, model_rs, rbm
from capsnp.ais import (_interpolate, _visible, ais, ais_log_partition, annealing_path, blas_setting,
                        default_betas, ink_restricted_path, ink_tail_log_probability, pixelwise_refusal,
                        restricted_path, reverse_ais)
from capsnp.exact import enumerate_binary
from capsnp.ops import sigmoid
from capsnp.params import RBMParams, RBParams, RParams, RSParams

BETAS = default_betas(fast=True)[::2]  # 726 temperatures: enough for models this small


def tiny_rbm(rng, D=8, H=5, scale=1.0):
    return RBMParams(rng.normal(0, scale, (D, H)), rng.normal(0, 1, D), rng.normal(0, 1, H))


def tiny_r(rng, I=3, d_v=2, J=2, d_h=2, scale=1.0):
    return RParams(rng.normal(0, scale, (I, J, d_h, d_v)), rng.normal(0, 1, (I, d_v)),
                   rng.normal(0, 1, (J, d_h)), rng.normal(0, 1, (I, J)))


def tiny_rb(rng, I=3, d_v=2, J=2, d_h=2, scale=1.0):
    """Model R with assignment biases C (I, J, d_h) and A (I, J, d_v) (4b.1)."""
    return RBParams(*tiny_r(rng, I, d_v, J, d_h, scale), C=rng.normal(0, scale, (I, J, d_h)),
                    A=rng.normal(0, scale, (I, J, d_v)))


def tiny_rs(rng, I=3, d_v=2, J=2, d_h=2, scale=1.0, H0=3):
    """Model R with assignment biases and a shared capsule V (H0, I, d_v), delta (H0,) (4c.1)."""
    return RSParams(*tiny_rb(rng, I, d_v, J, d_h, scale), V=rng.normal(0, scale, (H0, I, d_v)),
                    delta=rng.normal(0, 1, H0))


CASES = {
    "rbm": (tiny_rbm, rbm.exact_log_partition),
    "p": (random_pparams, model_p.exact_log_partition),
    "r": (tiny_r, model_r.exact_log_partition),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_ais_agrees_with_exact_log_partition(kind, seed):
    make, exact = CASES[kind]
    params = make(np.random.default_rng(seed))
    res = ais_log_partition(params, n_runs=64, betas=BETAS, random_state=seed)
    log_z = exact(params)
    assert np.isfinite(res.log_z) and res.std_error > 0
    # within 5 reported standard errors (plus a floor for a near-zero error)
    assert abs(res.log_z - log_z) < 5 * res.std_error + 0.02, (res.log_z, log_z, res.std_error)
    lo, hi = res.interval
    assert lo <= res.log_z <= hi
    assert res.log_weights.shape == (64,) and 1.0 <= res.effective_sample_size <= 64.0


@pytest.mark.parametrize("kind", sorted(CASES))
def test_zero_weights_give_the_base_log_partition_exactly(kind):
    make, exact = CASES[kind]
    params = make(np.random.default_rng(5))
    params = params._replace(W=np.zeros_like(params.W))
    res = ais_log_partition(params, n_runs=8, betas=np.linspace(0, 1, 20), random_state=0)
    assert np.max(np.abs(res.log_weights)) < 1e-12  # zero up to rounding of the interpolation
    assert res.log_z == pytest.approx(exact(params), abs=1e-12)


def test_ais_with_a_data_base_rate(seed):
    rng = np.random.default_rng(seed)
    params = tiny_rbm(rng)
    base = rng.uniform(0.1, 0.9, size=8)
    res = ais_log_partition(params, n_runs=64, betas=BETAS, random_state=seed, base_rate=base)
    assert abs(res.log_z - rbm.exact_log_partition(params)) < 5 * res.std_error + 0.02


def test_schedule_shape():
    b = default_betas()
    assert b[0] == 0.0 and b[-1] == 1.0 and np.all(np.diff(b) > 0) and len(b) == 14501
    with pytest.raises(ValueError):
        ais_log_partition(tiny_rbm(np.random.default_rng(0)), n_runs=2, betas=np.array([0.0, 0.5]))
    path = annealing_path(tiny_rbm(np.random.default_rng(0)), backend="numpy")
    with pytest.raises(ValueError):
        reverse_ais(path.log_f, np.zeros((2, 8)), path.transition, path.log_z_base, np.array([0.0, 0.5]),
                    np.random.default_rng(0))


def _exact_draws(params, n, rng, keep=None):
    """n exact draws from a tiny RBM's p(v), restricted to the states where ``keep(v)`` holds,
    and the log of that set's unnormalised mass, log Z_B."""
    D = params.a.shape[0]
    V = ((np.arange(2**D)[:, None] >> np.arange(D)) & 1).astype(np.float64)  # (2^D, D), every state
    if keep is not None:
        V = V[keep(V)]
    log_f = -rbm.free_energy(params, V)  # (|B|,)
    p = np.exp(log_f - log_f.max())
    return V[rng.choice(len(V), size=n, p=p / p.sum())], float(np.log(p.sum()) + log_f.max())


def test_reverse_ais_from_exact_draws_estimates_one_over_z_without_bias(seed):
    # (6.7) with B = every state: the forward run ends in B surely, so E[1 / w] = Z_0 / Z exactly,
    # however short the schedule
    rng = np.random.default_rng(seed)
    params = tiny_rbm(rng, scale=0.7)
    path = annealing_path(params, backend="numpy")
    start, log_z = _exact_draws(params, 4000, rng)
    res = reverse_ais(path.log_f, start, path.transition, path.log_z_base, np.linspace(0, 1, 12), rng)
    ratio = np.exp(-res.log_weights + log_z - path.log_z_base)  # (Z / Z_0) / w, mean 1
    assert res.log_weights.shape == (4000,)
    assert abs(ratio.mean() - 1.0) < 5 * ratio.std() / np.sqrt(len(ratio)), ratio.mean()
    assert res.log_z == pytest.approx(path.log_z_base - np.log(np.mean(np.exp(-res.log_weights))))
    lo, hi = res.interval
    assert lo <= res.log_z <= hi


def test_reverse_ais_meets_forward_ais_at_the_exact_log_partition(seed):
    rng = np.random.default_rng(seed)
    params = tiny_rbm(rng)
    path = annealing_path(params, backend="numpy")
    start, log_z = _exact_draws(params, 64, rng)
    up = reverse_ais(path.log_f, start, path.transition, path.log_z_base, BETAS, rng)
    down = ais(path.log_f, path.sample_base, path.transition, path.log_z_base, BETAS, 64, rng)
    for res in (up, down):
        assert abs(res.log_z - log_z) < 5 * res.std_error + 0.02, (res.log_z, log_z, res.std_error)


def test_reverse_ais_from_a_set_of_states_bounds_its_mass(seed):
    # (6.7) with B = the states with at least 6 of 8 pixels on: E[1 / w] = (Z_0 / Z_B) P(forward
    # run ends in B), the Gibbs sweep on v being its own reversal; so the estimate bounds log Z_B
    # from above, by -log P(end in B) in expectation
    rng = np.random.default_rng(seed)
    params = tiny_rbm(rng, scale=0.7)
    path = annealing_path(params, backend="numpy")
    keep = lambda V: V.sum(axis=1) >= 6  # noqa: E731
    start, log_z_b = _exact_draws(params, 4000, rng, keep)
    betas = np.linspace(0, 1, 12)
    res = reverse_ais(path.log_f, start, path.transition, path.log_z_base, betas, rng)
    ratio = np.exp(-res.log_weights + log_z_b - path.log_z_base)  # (Z_B / Z_0) / w, mean P(end in B)
    last = {}

    def transition(beta, v, g):
        last["v"] = path.transition(beta, v, g)
        return last["v"]

    ais(path.log_f, path.sample_base, transition, path.log_z_base, betas, 20000, rng)
    ends = keep(last["v"])  # (20000,): forward runs ending in B
    p_end, p_se = ends.mean(), ends.std() / np.sqrt(len(ends))
    assert 0.01 < p_end < 0.9  # B is neither rare nor everything here
    se = np.hypot(ratio.std() / np.sqrt(len(ratio)), p_se)
    assert abs(ratio.mean() - p_end) < 5 * se, (ratio.mean(), p_end, se)
    assert res.log_z > log_z_b + 0.5 * (-np.log(p_end))  # an upper bound, and by about -log P


# the paths whose log f at two temperatures shares one pass over the states (ais._softplus_path)
SHARED = {"r": (tiny_r, lambda rng: rng.uniform(0.1, 0.9, (3, 2))),
          "rb": (tiny_rb, lambda rng: rng.uniform(0.1, 0.9, (3, 2))),
          "rs": (tiny_rs, lambda rng: rng.uniform(0.1, 0.9, (3, 2)))}


def _states(path, n, rng):
    """n states of the path, moved off the base by a few sweeps at beta = 0.6."""
    x = path.sample_base(n, rng)
    for _ in range(3):
        x = path.transition(0.6, x, rng)
    return x


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("kind", sorted(SHARED))
def test_log_f_pair_is_log_f_at_both_temperatures(kind, backend, seed):
    make, base_rate = SHARED[kind]
    rng = np.random.default_rng(seed)
    params = make(rng, scale=2.0)
    path = annealing_path(params, base_rate(rng), backend)
    x = _states(path, 20, rng)
    for lo, hi in [(0.0, 1e-4), (0.37, 0.38), (0.0, 1.0), (0.999, 1.0)]:
        f_lo, f_hi = path.log_f_pair(lo, hi, x)
        assert f_lo.shape == f_hi.shape == (20,)
        np.testing.assert_allclose(f_lo, path.log_f(lo, x), rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(f_hi, path.log_f(hi, x), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(SHARED))
def test_ais_weights_do_not_depend_on_sharing_the_pass(kind, seed):
    """The shared pass changes how log f is computed, not the draws: same weights to rounding."""
    make, base_rate = SHARED[kind]
    rng = np.random.default_rng(seed)
    path = annealing_path(make(rng, scale=2.0), base_rate(rng))
    betas = np.linspace(0.0, 1.0, 60)
    shared, plain = (ais(path.log_f, path.sample_base, path.transition, path.log_z_base, betas, 16,
                         np.random.default_rng(seed), log_f_pair=pair)
                     for pair in (path.log_f_pair, None))
    assert path.log_f_pair is not None
    np.testing.assert_allclose(shared.log_weights, plain.log_weights, rtol=0, atol=1e-9)
    assert np.ptp(shared.log_weights) > 0.1  # the runs differ: the comparison is not of constants


def test_interpolation_follows_the_path_and_passes_kept_fields_on():
    rng = np.random.default_rng(0)
    target = tiny_rb(rng)
    base = target._replace(alpha=rng.normal(size=target.alpha.shape), W=np.zeros_like(target.W),
                           C=np.zeros_like(target.C), A=np.zeros_like(target.A))
    for beta in (0.0, 0.3, 1.0):
        mid = _interpolate(base, target, beta, ("W", "C", "A"))
        for name, b, t, m in zip(target._fields, base, target, mid):
            np.testing.assert_allclose(m, (1 - beta) * b + beta * t, rtol=1e-15, atol=1e-15, err_msg=name)
        assert mid.gamma is target.gamma and mid.beta is target.beta  # kept: no copy
        assert mid.alpha is not target.alpha


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_model_r_and_rbm_paths_hold_blas_to_one_thread_on_the_kernels(backend):
    """Model R's and the RBM's compiled transitions share their BLAS products over the kernel
    threads, so their AIS and tempering run with BLAS on one thread (as their training does)."""
    rng = np.random.default_rng(0)
    r_path = annealing_path(tiny_r(rng), backend=backend)
    uses_kernels = backend == "numba" and kernels.available()
    assert r_path.blas_one_thread == uses_kernels
    assert annealing_path(tiny_rbm(rng), backend=backend).blas_one_thread == uses_kernels
    with _kernels_jit.single_threaded_blas():
        inside = _kernels_jit.blas_is_single_threaded()
    with blas_setting(r_path):
        assert _kernels_jit.blas_is_single_threaded() == (uses_kernels and inside)
    assert not _kernels_jit.blas_is_single_threaded()


# ----------------------------------------------------------------------------- restricted AIS (6.8, 6.9)


def test_ink_tail_log_probability_matches_enumeration(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.95, 10)  # (D,)
    V = enumerate_binary(10)  # (2^D, D)
    prob = np.prod(np.where(V == 1, p, 1 - p), axis=1)  # (2^D,)
    for t in (-1, 0, 3.5, 7, 9):
        exact = np.log(prob[V.sum(axis=1) > t].sum())
        assert ink_tail_log_probability(p.reshape(2, 5), t) == pytest.approx(exact, rel=1e-12, abs=1e-12)
    assert ink_tail_log_probability(p, 10) == -np.inf


def test_ink_tail_log_probability_stays_a_log_probability_at_both_extremes():
    # a tail near 1 never rounds above 0 (restricted_path refuses log masses above 0), and a
    # tail far below 1e-308 keeps its log: 784 pixels at 0.01, all on, is 784 log 0.01
    rng = np.random.default_rng(0)
    for _ in range(50):
        assert ink_tail_log_probability(rng.uniform(0.001, 0.999, 784), -1) <= 0.0
    assert ink_tail_log_probability(np.full(784, 0.01), 783) == pytest.approx(784 * np.log(0.01), rel=1e-12)
    with pytest.raises(ValueError):
        ink_tail_log_probability(np.array([0.5, 1.5]), 0)


def _restricted_case(kind, seed, pixelwise=False):
    """A tiny model's path, B = the states with at least ``m`` pixels on, the path restricted to
    B, and every state of B with its exact probability under the model restricted to B:
    (path, restricted path, states (v, or (v, a)) of B, their probabilities, log Z_B)."""
    rng = np.random.default_rng(seed)
    if kind == "rbm":
        params = tiny_rbm(rng, scale=0.7)
        m, ink = 6, (lambda v: v.sum(axis=1))  # noqa: E731, 8 pixels
        V = enumerate_binary(8)  # (256, 8)
        states, log_f = V, -rbm.free_energy(params, V)  # (256,)
        keep, alpha0 = ink(V) >= m, params.a
    else:
        params = tiny_rs(rng, scale=0.7)
        m, ink = 4, (lambda v: v.sum(axis=(1, 2)))  # noqa: E731, 3 capsules of 2 pixels
        Vg, Ag = model_r._va_grid(params)  # (Nv Na, 3, 2), (Nv Na, 3)
        states, log_f = (Vg, Ag), model_rs.log_joint_va(params, Vg, Ag)  # (Nv Na,)
        keep, alpha0 = ink(Vg) >= m, params.alpha
    path = annealing_path(params, backend="numpy")
    inside = lambda v: ink(v) >= m  # noqa: E731
    log_p0 = ink_tail_log_probability(sigmoid(alpha0), m - 0.5)
    restricted = (ink_restricted_path(path, m - 0.5, True, log_p0) if pixelwise
                  else restricted_path(path, inside, log_p0))
    log_f = log_f[keep]
    states = tuple(x[keep] for x in states) if kind == "rs" else states[keep]
    p = np.exp(log_f - log_f.max())
    log_z_b = float(np.log(p.sum()) + log_f.max())
    return path, restricted, states, p / p.sum(), log_z_b


def _index_draws(states, prob, n, rng):
    """n exact draws from the states of B with probabilities ``prob``."""
    idx = rng.choice(len(prob), size=n, p=prob)
    return tuple(x[idx] for x in states) if isinstance(states, tuple) else states[idx]


def _state_index(states, draws):
    """Row of ``states`` equal to each draw: (n,)."""
    flat = lambda s: (np.concatenate([np.reshape(x, (len(x), -1)) for x in s], axis=1)  # noqa: E731
                      if isinstance(s, tuple) else s)
    table = {tuple(r): i for i, r in enumerate(flat(states))}
    return np.array([table[tuple(r)] for r in flat(draws)])


@pytest.mark.parametrize("pixelwise", [False, True])
@pytest.mark.parametrize("kind", ["rbm", "rs"])
def test_restricted_sweep_keeps_the_model_restricted_to_b(kind, pixelwise, seed):
    # exact draws from p 1_B, three restricted sweeps at beta = 1: still p 1_B (chi-square over
    # the states of B). Model R's state is (v, a), and a refused v keeps the new a; undoing a too
    # fails this test with p-values below 1e-7 on seeds 0 to 5 (three sweeps let the error grow)
    path, restricted, states, prob, _ = _restricted_case(kind, seed, pixelwise)
    rng = np.random.default_rng(seed + 100)
    x = _index_draws(states, prob, 40000, rng)
    moved = restricted.transition(1.0, x, rng)
    stay = np.mean(np.all(np.reshape(_visible(moved) == _visible(x), (40000, -1)), axis=1))
    assert 0.01 < stay < 0.99  # the sweep both moves and refuses: the test sees both branches
    for _ in range(2):
        moved = restricted.transition(1.0, moved, rng)
    idx = _state_index(states, moved)  # fails with a KeyError if a draw left B
    observed = np.bincount(idx, minlength=len(prob)).astype(float)
    expected = 40000 * prob
    big = expected >= 5  # chi-square cells; the rest, if any, pooled into one
    obs, exp = observed[big], expected[big]
    if not big.all():
        obs, exp = np.append(obs, observed[~big].sum()), np.append(exp, expected[~big].sum())
    assert big.sum() > 10
    assert chisquare(obs, exp).pvalue > 1e-5


@pytest.mark.parametrize("pixelwise", [False, True])
@pytest.mark.parametrize("kind", ["rbm", "rs"])
def test_restricted_ais_meets_the_exact_mass_of_b(kind, pixelwise, seed):
    path, restricted, states, prob, log_z_b = _restricted_case(kind, seed, pixelwise)
    rng = np.random.default_rng(seed)
    assert restricted.log_z_base < path.log_z_base
    forward = ais(restricted.log_f, restricted.sample_base, restricted.transition, restricted.log_z_base,
                  np.linspace(0, 1, 200), 64, rng)
    assert abs(forward.log_z - log_z_b) < 5 * forward.std_error + 0.02, (forward.log_z, log_z_b)
    # reverse runs from exact draws of p 1_B: every restricted forward run ends in B, so
    # E[1 / w] = Z_0 P_0(B) / Z_B exactly, however short the schedule (6.7 with P(end in B) = 1)
    start = _index_draws(states, prob, 4000, rng)
    res = reverse_ais(restricted.log_f, start, restricted.transition, restricted.log_z_base,
                      np.linspace(0, 1, 12), rng)
    ratio = np.exp(-res.log_weights + log_z_b - restricted.log_z_base)  # mean 1
    assert abs(ratio.mean() - 1.0) < 5 * ratio.std() / np.sqrt(len(ratio)), ratio.mean()
    assert ratio.std() > 0.05  # 12 temperatures: the weights vary, the test is not of constants


def test_restricted_path_refuses_model_p_and_impossible_masses():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="Model P"):
        restricted_path(annealing_path(random_pparams(rng), backend="numpy"), lambda v: v.sum() > 0, -1.0)
    path = annealing_path(tiny_rbm(rng), backend="numpy")
    for bad in (0.5, -np.inf, np.nan):
        with pytest.raises(ValueError):
            restricted_path(path, lambda v: v.sum(axis=1) > 2, bad)
    never = restricted_path(path, lambda v: v.sum(axis=1) > 99, -1.0, max_draws=1000)
    with pytest.raises(RuntimeError, match="fell in B"):
        never.sample_base(5, rng)


def _pixelwise_refusal_loop(v, proposal, threshold, above):
    """Reference twin of (6.10): visit the pixels in order, keeping the count inside the set."""
    v = v.copy()
    for r in range(v.shape[0]):
        count = v[r].sum()
        for i in range(v.shape[1]):
            trial = count + proposal[r, i] - v[r, i]
            if (trial > threshold) if above else (trial <= threshold):
                v[r, i], count = proposal[r, i], trial
    return v


@pytest.mark.parametrize("threshold, above", [(5, True), (4.5, True), (6, False), (5.5, False)])
def test_pixelwise_refusal_is_the_pixel_by_pixel_scan(threshold, above, seed):
    rng = np.random.default_rng(seed)
    v = (rng.random((2000, 12)) < 0.55).astype(np.float64)  # (n, D)
    ink = v.sum(axis=1)
    v = v[(ink > threshold) if above else (ink <= threshold)]
    proposal = (rng.random(v.shape) < 0.5).astype(np.float64)
    out = pixelwise_refusal(v.reshape(-1, 3, 4), proposal.reshape(-1, 3, 4), threshold, above)  # capsule layout
    assert out.shape == (v.shape[0], 3, 4)
    np.testing.assert_array_equal(out.reshape(v.shape), _pixelwise_refusal_loop(v, proposal, threshold, above))
    moved = np.any(out.reshape(v.shape) != v, axis=1).mean()
    whole = np.mean((proposal.sum(axis=1) > threshold) if above else (proposal.sum(axis=1) <= threshold))
    assert moved > whole  # some rows a whole-draw refusal would freeze still move
