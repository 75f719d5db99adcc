"""Model R with a shared capsule (docs/MODEL_RB.md, (4c.1)-(4c.7)) against enumeration.

The energy is written out here with plain loops, independently of ``model_rs.energy``; the
conditionals, marginals, partition function, sampler, statistics and estimators are checked
against it.
"""

import numpy as np
import pytest
from scipy.special import logsumexp

from capsnp import kernels, likelihood
from capsnp import model_r as mr
from capsnp import model_rs as ms
from capsnp import rbm as rbm_ref
from capsnp.ais import ais_log_partition, default_betas
from capsnp.exact import enumerate_assignments, enumerate_binary, stationary_distance
from capsnp.estimators import RoutedCapsuleRBM, load_estimator
from capsnp.params import RBParams, RSParams

from conftest import SEEDS, chi_square_pvalue  # noqa: E402
from conftest import params_central_difference as finite_difference_gradient  # noqa: E402
from test_model_rb import energy_by_loops as routed_energy_by_loops  # noqa: E402
from test_model_rb import make_params as make_rb_params  # noqa: E402

needs_numba = pytest.mark.skipif(not kernels.available(), reason="numba is not installed")


def make_params(seed, I=2, J=2, d_h=1, d_v=2, H0=2, scale=1.0):
    """A random Model R with assignment biases (test_model_rb's) and a random shared capsule."""
    rng = np.random.default_rng(seed + 2000)
    return RSParams(*make_rb_params(seed, I, J, d_h, d_v, scale), V=scale * rng.normal(size=(H0, I, d_v)),
                    delta=rng.normal(size=H0))


def energy_by_loops(p, v, g, h, a):
    """(4c.1) for one state: v (I, d_v), g (H0,), h (J, d_h), a (I,) ints."""
    e = routed_energy_by_loops(RBParams(*p[:6]), v, h, a) - p.delta @ g
    for k in range(len(g)):
        for i in range(v.shape[0]):
            e -= g[k] * (p.V[k, i] @ v[i])
    return e


def states(p):
    I, J, d_h, d_v = p.W.shape
    return (enumerate_binary(I * d_v).reshape(-1, I, d_v), enumerate_binary(p.V.shape[0]),
            enumerate_binary(J * d_h).reshape(-1, J, d_h), enumerate_assignments(I, J))


def log_table(p):
    """-E(v, g, h, a) over every state, by loops: (Nv, Ng, Nh, Na)."""
    V, G, Hs, A = states(p)
    return np.array([[[[-energy_by_loops(p, v, g, h, a) for a in A] for h in Hs] for g in G] for v in V])


def bernoulli_table(x, prob):
    """prod_k p^x (1-p)^(1-x): prob (N, K), x (M, K) -> (N, M)."""
    return np.prod(np.where(x[None] > 0.5, prob[:, None], 1 - prob[:, None]), axis=-1)


@pytest.mark.parametrize("seed", SEEDS)
def test_energy_conditionals_and_marginals_match_enumeration(seed):
    p = make_params(seed)
    V, G, Hs, A = states(p)
    nv, ng, nh, na = len(V), len(G), len(Hs), len(A)
    L = log_table(p)  # (Nv, Ng, Nh, Na)
    Vg = np.repeat(V, ng * nh * na, axis=0)
    Gg = np.tile(np.repeat(G, nh * na, axis=0), (nv, 1))
    Hg = np.tile(np.repeat(Hs, na, axis=0), (nv * ng, 1, 1))
    Ag = np.tile(A, (nv * ng * nh, 1))
    np.testing.assert_allclose(-ms.energy(p, Vg, Gg, Hg, Ag), L.ravel(), rtol=1e-12)
    # (4c.2): p(g | v) is the marginal of g given v, and g is independent of (h, a) given v
    table = bernoulli_table(G, ms.shared_probability(p, V))  # (Nv, Ng)
    p_v = logsumexp(L, axis=(1, 2, 3), keepdims=True)
    joint = np.exp(L - p_v)  # (Nv, Ng, Nh, Na), p(g, h, a | v)
    np.testing.assert_allclose(table, joint.sum(axis=(2, 3)), rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(joint, table[:, :, None, None] * joint.sum(axis=1, keepdims=True),
                               rtol=1e-11, atol=1e-15)
    # (4c.3): p(h, a | v) is the routed part's
    routed = ms.routed_part(p)
    p_ha = mr.exact_probability_vha(routed).reshape(nv, nh, na)  # p_4b(v, h, a)
    p_ha = p_ha / p_ha.sum(axis=(1, 2), keepdims=True)  # p_4b(h, a | v)
    np.testing.assert_allclose(joint.sum(axis=1), p_ha, rtol=1e-10, atol=1e-15)
    # (4c.4): p(v | g, h, a)
    probs = ms.visible_probability(p, np.repeat(G, nh * na, axis=0), np.tile(np.repeat(Hs, na, axis=0), (ng, 1, 1)),
                                   np.tile(A, (ng * nh, 1)))
    table = bernoulli_table(V.reshape(nv, -1), probs.reshape(ng * nh * na, -1)).reshape(ng, nh, na, nv)
    np.testing.assert_allclose(table, np.exp(L - logsumexp(L, axis=0, keepdims=True)).transpose(1, 2, 3, 0),
                               rtol=1e-11, atol=1e-15)
    # (4c.5): g and h summed out; log Z three ways
    la = ms.log_joint_va(p, np.repeat(V, na, axis=0), np.tile(A, (nv, 1))).reshape(nv, na)
    np.testing.assert_allclose(la, logsumexp(L, axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(ms.exact_log_unnormalised_marginal(p, V), logsumexp(L, axis=(1, 2, 3)), rtol=1e-12)
    log_z = logsumexp(L)
    assert ms.exact_log_partition(p) == pytest.approx(log_z, rel=1e-12)
    assert likelihood.exact_log_partition(p) == pytest.approx(log_z, rel=1e-12)
    np.testing.assert_allclose(ms.exact_probability_va(p), np.exp(la - log_z).ravel(), rtol=1e-11)


@pytest.mark.parametrize("seed", SEEDS)
def test_zero_shared_weights_only_shift_log_z(seed):
    """With V = 0 the shared units are independent of v: log Z gains sum softplus(delta), p(v) is
    the routed part's."""
    p = make_params(seed)
    p0 = p._replace(V=np.zeros_like(p.V))
    V = states(p)[0]
    shift = np.sum(np.logaddexp(0.0, p.delta))
    assert ms.exact_log_partition(p0) == pytest.approx(mr.exact_log_partition(ms.routed_part(p)) + shift, rel=1e-12)
    np.testing.assert_allclose(ms.exact_log_unnormalised_marginal(p0, V) - ms.exact_log_partition(p0),
                               mr.exact_log_marginal(ms.routed_part(p), V), rtol=1e-12)
    assert abs(ms.exact_log_partition(p) - ms.exact_log_partition(p0)) > 1e-3


@pytest.mark.parametrize("seed", SEEDS)
def test_gibbs_sweep_leaves_p_invariant_and_draws_its_kernel(seed):
    p = make_params(seed)
    T = ms.exact_transition_matrix(p)
    pi = ms.exact_probability_va(p)
    np.testing.assert_allclose(T.sum(axis=1), 1.0, atol=1e-12)
    assert stationary_distance(pi, T) < 1e-12
    # the sampler draws from that kernel: 20,000 sweeps from one state, chi-square on (v', a')
    V, _, _, A = states(p)
    start = np.random.default_rng(seed).integers(0, T.shape[0])
    n = 20000
    v = np.repeat(V[start // len(A)][None], n, axis=0)
    a = np.repeat(A[start % len(A)][None], n, axis=0)
    v_new, g, h, a_new, resp = ms.gibbs_sweep(p, v, a, np.random.default_rng(seed + 1))
    assert g.shape == (n, p.V.shape[0]) and h.shape == (n,) + p.gamma.shape and resp.shape == (n,) + p.beta.shape
    index_v = {tuple(x): i for i, x in enumerate(V.reshape(len(V), -1))}
    index_a = {tuple(x): i for i, x in enumerate(A)}
    drawn = [index_v[tuple(x)] * len(A) + index_a[tuple(y)] for x, y in zip(v_new.reshape(n, -1), a_new)]
    counts = np.bincount(drawn, minlength=T.shape[0])
    assert chi_square_pvalue(counts, T[start]) > 1e-4


def exact_statistics_gradient(p, data_index):
    """Exact data minus model statistics (4.8, 4b.5, 4c.6) of the mean log-likelihood of the
    enumerated visible states ``V[data_index]``: RSParams of the gradient."""
    V, _, Hs, _ = states(p)
    nv, nh, B = len(V), len(Hs), len(data_index)
    routed = ms.routed_part(p)
    p_vh = mr.exact_probability_vha(routed).reshape(nv, nh, -1).sum(axis=2)  # (Nv, Nh), routed model
    p_h_given_v = p_vh / p_vh.sum(axis=1, keepdims=True)  # (Nv, Nh): p(h | v), the same in both (4c.3)
    p_v = np.exp(ms.exact_log_unnormalised_marginal(p, V) - ms.exact_log_partition(p))  # (Nv,)

    def statistics(index, weights):  # sum_n weights_n E[stats | V[index_n]]
        Vd, Hd = np.repeat(V[index], nh, axis=0), np.tile(Hs, (len(index), 1, 1))
        w = (p_h_given_v[index] * weights[:, None]).ravel()
        routed_stats = mr.model_statistics(routed, Vd, Hd, mr.routing_posterior(routed, Vd, Hd), weights=w)
        shared = ms.shared_statistics(V[index], ms.shared_probability(p, V[index]), weights)
        return ms.with_shared(routed_stats, *shared)

    data_term = statistics(data_index, np.full(B, 1.0 / B))
    model_term = statistics(np.arange(nv), p_v)
    return RSParams(*(d - m for d, m in zip(data_term, model_term)))


@pytest.mark.parametrize("seed", SEEDS)
def test_statistics_give_exact_log_likelihood_gradient(seed):
    """Data minus model statistics (4.8, 4b.5, 4c.6), both exact, equal the central-difference gradient."""
    p = make_params(seed)
    V = states(p)[0]
    data_index = np.random.default_rng(seed + 100).integers(0, len(V), size=5)
    grad = exact_statistics_gradient(p, data_index)
    fd = finite_difference_gradient(
        lambda q: np.mean(ms.exact_log_unnormalised_marginal(q, V[data_index])) - ms.exact_log_partition(q), p)
    for name, g, f in zip(RSParams._fields, grad, fd):
        np.testing.assert_allclose(g, f, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("seed", SEEDS)
def test_importance_sampling_and_ais_match_exact(seed):
    p = make_params(seed, I=4, J=3, d_h=2, d_v=2, H0=3)
    V = enumerate_binary(8).reshape(-1, 4, 2)
    v = V[np.random.default_rng(seed).integers(0, 256, size=10)]
    log_z = ms.exact_log_partition(p)
    est, se = ms.log_marginal_is(p, v, 2000, np.random.default_rng(seed + 7), log_z=log_z)
    exact = ms.exact_log_unnormalised_marginal(p, v) - log_z
    assert np.all(np.abs(est - exact) < 5 * se + 1e-12)
    # the routed part's estimate, with its draws, plus the exact shared term
    routed_est, routed_se = mr.log_marginal_is(ms.routed_part(p), v, 2000, np.random.default_rng(seed + 7))
    np.testing.assert_allclose(est, routed_est + ms.shared_log_factor(p, v) - log_z, rtol=1e-12)
    np.testing.assert_array_equal(se, routed_se)
    res = ais_log_partition(p, n_runs=64, betas=default_betas(fast=True)[::2], random_state=seed)
    assert abs(res.log_z - log_z) < 5 * res.std_error + 0.02, (res.log_z, log_z, res.std_error)


@needs_numba
@pytest.mark.parametrize("seed", SEEDS)
def test_kernels_match_reference(seed):
    """The visible field of model_r.gibbs_sweep (added to the top-down fields in the kernel,
    to the logits in the reference) and model_rs.gibbs_sweep on either backend."""
    p = make_params(seed, I=5, J=3, d_h=4, d_v=3, H0=6, scale=0.7)
    rng = np.random.default_rng(seed)
    v = (rng.random((9, 5, 3)) < 0.4).astype(np.float64)
    a = rng.integers(0, 3, size=(9, 5))
    field = 2.0 * rng.normal(size=(9, 5, 3))
    routed = ms.routed_part(p)
    out_k = kernels.model_r.gibbs_sweep(routed, v, a, np.random.default_rng(3), True, field=field)
    out_r = mr.gibbs_sweep(routed, v, a, np.random.default_rng(3), True, field=field)
    for x, y in zip(out_k[:3], out_r[:3]):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(out_k[3], out_r[3], rtol=1e-12)
    np.testing.assert_allclose(out_k[4], out_r[4], rtol=1e-12)
    # the field moves the visible draw and nothing else
    plain = mr.gibbs_sweep(routed, v, a, np.random.default_rng(3), True)
    for x, y in zip(plain[1:], out_r[1:]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(plain[0], out_r[0])
    out_k = ms.gibbs_sweep(p, v, a, np.random.default_rng(4), model_r=kernels.model_r, rbm=kernels.rbm)
    out_r = ms.gibbs_sweep(p, v, a, np.random.default_rng(4))
    for x, y in zip(out_k[:4], out_r[:4]):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(out_k[4], out_r[4], rtol=1e-12)
    np.testing.assert_allclose(ms.shared_probability(p, v, rbm=kernels.rbm), ms.shared_probability(p, v),
                               rtol=1e-12)
    v_model = (rng.random((7, 5, 3)) < 0.6).astype(np.float64)
    for x, y in zip(ms.shared_gradient(p, v, v_model, rbm=kernels.rbm), ms.shared_gradient(p, v, v_model)):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_given_shared_probability_changes_no_draw_and_no_statistic(backend):
    """p(g | v) handed to gibbs_sweep and shared_gradient (the training step computes it once
    for both) gives the same draws and the same gradient as computing it inside, and
    rbm.cd_gradient with ``model_probability`` the same as without it."""
    if backend == "numba" and not kernels.available():
        pytest.skip("numba not installed")
    model_r, rbm = (kernels.model_r, kernels.rbm) if backend == "numba" else (mr, rbm_ref)
    p = make_params(5, I=5, J=3, d_h=4, d_v=3, H0=6, scale=0.7)
    rng = np.random.default_rng(5)
    v = (rng.random((9, 5, 3)) < 0.4).astype(np.float64)
    a = rng.integers(0, 3, size=(9, 5))
    p_g = ms.shared_probability(p, v, rbm=rbm)  # (9, 6)
    inside = ms.gibbs_sweep(p, v, a, np.random.default_rng(8), True, model_r=model_r, rbm=rbm)
    given = ms.gibbs_sweep(p, v, a, np.random.default_rng(8), True, model_r=model_r, rbm=rbm, p_g=p_g)
    assert 0 < given[1].sum() < given[1].size  # g is a real draw
    for x, y in zip(inside, given):
        np.testing.assert_array_equal(x, y)
    v_data = (rng.random((4, 5, 3)) < 0.4).astype(np.float64)
    for x, y in zip(ms.shared_gradient(p, v_data, v, rbm=rbm),
                    ms.shared_gradient(p, v_data, v, rbm=rbm, p_model=p_g)):
        np.testing.assert_array_equal(x, y)
    # a wrong probability reaches the gradient: the argument is used, not ignored
    wrong = ms.shared_gradient(p, v_data, v, rbm=rbm, p_model=np.full_like(p_g, 0.5))
    assert not np.allclose(wrong[1], ms.shared_gradient(p, v_data, v, rbm=rbm)[1])
    rp = ms.shared_rbm(p)
    flat_d, flat_m = v_data.reshape(4, -1), v.reshape(9, -1)
    for x, y in zip(rbm.cd_gradient(rp, flat_d, flat_m),
                    rbm.cd_gradient(rp, flat_d, flat_m, model_probability=p_g)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("seed", SEEDS)
def test_shared_gradient_is_the_difference_of_the_statistics(seed):
    """(4c.6) through the shared capsule's RBM (shared_rbm, 5.6) equals the statistics written
    with p(g | v) = sigmoid(delta + sum_i V_i v_i), at the data minus at the chains."""
    p = make_params(seed, I=3, J=2, d_h=2, d_v=4, H0=5)
    rng = np.random.default_rng(seed)
    v_data, v_model = ((rng.random((n, 3, 4)) < 0.4).astype(np.float64) for n in (6, 9))
    x = p.delta + np.einsum("kil,bil->bk", p.V, v_data)  # (6, H0), written out
    np.testing.assert_allclose(ms.shared_probability(p, v_data), 1 / (1 + np.exp(-x)), rtol=1e-12)
    d_V, d_delta = ms.shared_gradient(p, v_data, v_model)
    V_data, delta_data = ms.shared_statistics(v_data, ms.shared_probability(p, v_data))
    V_model, delta_model = ms.shared_statistics(v_model, ms.shared_probability(p, v_model))
    np.testing.assert_allclose(d_V, V_data - V_model, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d_delta, delta_data - delta_model, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_estimator_fits_saves_and_scores_against_exact(backend, tmp_path):
    """A fitted shared-capsule estimator: shapes, the shared capsule learns, files round-trip,
    and its importance-sampling log-likelihood matches the exact one of the tiny model."""
    rng = np.random.default_rng(0)
    X = (rng.random((60, 16)) < np.linspace(0.1, 0.7, 16)).astype(np.float64)
    est = RoutedCapsuleRBM(n_capsules=2, capsule_dim=2, patch=2, n_iter=3, batch_size=20, learning_rate=0.1,
                           momentum=0.5, assignment_biases=True, shared_units=3, random_state=0,
                           backend=backend).fit(X)
    assert est.V_.shape == (3, 4, 4) and est.delta_.shape == (3,)
    assert np.abs(est.delta_).max() > 0
    est.save(tmp_path / "m.npz")
    loaded = load_estimator(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.V_, est.V_)
    np.testing.assert_array_equal(loaded.score_samples(X), est.score_samples(X))
    log_z = likelihood.exact_log_partition(est)
    params = RSParams(*(getattr(est, k + "_") for k in RSParams._fields))
    assert log_z == pytest.approx(ms.exact_log_partition(params), rel=1e-12)
    lp, se = est.log_likelihood(X[:10], log_z, n_samples=4000, random_state=1, return_std=True)
    exact = ms.exact_log_unnormalised_marginal(params, est._to_layout(X[:10])) - log_z
    assert np.all(np.abs(lp - exact) < 5 * se + 1e-9)
    # the mean-field bound: below log p~(v), which it would equal with the shared term left out
    # only if the shared capsule were absent
    bound = est.score_samples(X[:10])
    assert np.all(bound <= exact + log_z + 1e-9)
    from capsnp.experiment import _n_weights
    assert _n_weights(est) == est.W_.size + est.V_.size == 4 * 4 * (2 * 2 + 3)  # 16 pixels, 7 units
    samples = est.sample(n_samples=5, n_steps=3, random_state=2)
    assert samples.shape == (5, 16) and set(np.unique(samples)) <= {0.0, 1.0}


def test_estimator_step_adds_the_shared_statistics_and_decay():
    """One training step's shared-capsule gradient is (4c.6) at the data minus at the chains'
    entering state, minus the weight decay."""
    rng = np.random.default_rng(1)
    X = (rng.random((40, 16)) < 0.4).astype(np.float64)
    est = RoutedCapsuleRBM(n_capsules=2, capsule_dim=2, patch=2, n_iter=1, batch_size=20, assignment_biases=True,
                           shared_units=3, weight_decay=0.01, random_state=0, backend="numpy").fit(X)
    params = est._params()
    batch = est._to_layout(X[:20])
    chains = (est._to_layout(X[20:]), rng.integers(0, 2, size=(20, 4)))
    grad, _, _ = est._step(params, batch, chains, np.random.default_rng(5))
    p_data = ms.shared_probability(params, batch)
    p_chain = ms.shared_probability(params, chains[0])
    V_data, d_data = ms.shared_statistics(batch, p_data)
    V_chain, d_chain = ms.shared_statistics(chains[0], p_chain)
    np.testing.assert_allclose(grad.V, V_data - V_chain - 0.01 * params.V, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grad.delta, d_data - d_chain, rtol=1e-10, atol=1e-14)


def test_estimator_refuses_shared_units_without_assignment_biases():
    X = (np.random.default_rng(0).random((20, 16)) < 0.5).astype(np.float64)
    for kw in (dict(), dict(assignment_biases=True, centring=True), dict(assignment_biases=True, sparsity_cost=0.1)):
        with pytest.raises(ValueError, match="shared_units"):
            RoutedCapsuleRBM(n_capsules=2, capsule_dim=2, patch=2, n_iter=1, shared_units=2, **kw).fit(X)
    with pytest.raises(ValueError, match="shared_units"):
        RoutedCapsuleRBM(n_capsules=2, capsule_dim=2, patch=2, n_iter=1, shared_units=-1,
                         assignment_biases=True).fit(X)


@pytest.mark.parametrize("seed", SEEDS)
def test_centred_shared_capsule_is_the_same_model_with_the_centred_gradient(seed):
    """(4c.8): the centred energy differs from (4c.1) at from_centred(theta') by one constant
    over every state (v, g, h, a); to_centred inverts from_centred; (4c.9) of the exact
    statistics equals the central-difference gradient of the exact log-likelihood in theta'."""
    centred = make_params(seed)
    rng = np.random.default_rng(seed + 300)
    m, l0 = rng.random(centred.alpha.shape), rng.random(centred.delta.shape)  # (I, d_v), (H0,)
    plain = ms.from_centred(centred, m, l0)
    V, G, Hs, A = states(plain)
    grid = np.stack(np.meshgrid(*(np.arange(len(x)) for x in (V, G, Hs, A)), indexing="ij"), -1).reshape(-1, 4)
    args = (V[grid[:, 0]], G[grid[:, 1]], Hs[grid[:, 2]], A[grid[:, 3]])
    shift = ms.centred_energy(centred, *args, m, l0) + log_table(plain).ravel()  # E' - E, every state
    np.testing.assert_allclose(shift, shift[0], atol=1e-11)
    assert abs(shift[0]) > 1e-3  # l0^T V m: the forms do differ by a constant
    for name, x, y in zip(RSParams._fields, ms.to_centred(plain, m, l0), centred):
        np.testing.assert_allclose(x, y, atol=1e-12, err_msg=name)
    for name in ("W", "gamma", "beta", "C", "A", "V"):  # the offsets reach alpha and delta only
        np.testing.assert_array_equal(getattr(plain, name), getattr(centred, name), err_msg=name)
    data_index = rng.integers(0, len(V), size=5)
    exact = exact_statistics_gradient(plain, data_index)
    fd = finite_difference_gradient(lambda q: np.mean(
        ms.exact_log_unnormalised_marginal(ms.from_centred(q, m, l0), V[data_index]))
        - ms.exact_log_partition(ms.from_centred(q, m, l0)), centred)
    grad = ms.centred_gradient(exact, m, l0)
    for name, g, f in zip(RSParams._fields, grad, fd):
        np.testing.assert_allclose(g, f, atol=1e-7, err_msg=name)
    assert np.max(np.abs(grad.V - exact.V)) > 1e-3


def test_offsets_of_the_shared_capsule_leave_the_routing_alone():
    """What from_centred adds to alpha (4c.8) is the same for every parent, so the mean-field
    routing (4.6) and the routing posterior (4.3) do not move; the visible conditional does."""
    p = make_params(0, I=3, J=2, d_h=2, d_v=4, H0=5)
    rng = np.random.default_rng(7)
    shifted = ms.from_centred(p, rng.random((3, 4)), rng.random(5))
    v = (rng.random((6, 3, 4)) < 0.5).astype(np.float64)
    h = (rng.random((6, 2, 2)) < 0.5).astype(np.float64)
    c0, mu0, _ = mr.mean_field(ms.routed_part(p), v)
    c1, mu1, _ = mr.mean_field(ms.routed_part(shifted), v)
    np.testing.assert_allclose(c1, c0, rtol=1e-12)
    np.testing.assert_allclose(mu1, mu0, rtol=1e-12)
    np.testing.assert_allclose(mr.routing_posterior(ms.routed_part(shifted), v, h),
                               mr.routing_posterior(ms.routed_part(p), v, h), rtol=1e-12)
    assert np.max(np.abs(shifted.alpha - p.alpha)) > 1e-3


def test_estimator_shared_centring_steps_along_the_centred_gradient():
    """RoutedCapsuleRBM(shared_centring=True): from the same state and draws, the routed part's
    step is the plain one's; V, alpha and delta take from_centred of (4c.9) of it, offsets the
    batch's mean of v and of p(g | v), and the weight decay acts on V alone."""
    rng = np.random.default_rng(1)
    X = (rng.random((40, 16)) < 0.4).astype(np.float64)
    kw = dict(n_capsules=2, capsule_dim=2, patch=2, n_iter=1, batch_size=20, assignment_biases=True,
              shared_units=3, weight_decay=0.01, random_state=0, backend="numpy")
    est = RoutedCapsuleRBM(**kw).fit(X)
    params = est._params()
    batch = est._to_layout(X[:20])
    chains = (est._to_layout(X[20:]), rng.integers(0, 2, size=(20, 4)))
    plain, _, _ = est._step(params, batch, chains, np.random.default_rng(5))
    centred, _, _ = est.set_params(shared_centring=True)._step(params, batch, chains, np.random.default_rng(5))
    for name in ("W", "gamma", "beta", "C", "A"):
        np.testing.assert_array_equal(getattr(centred, name), getattr(plain, name), err_msg=name)
    m, l0 = batch.mean(axis=0), ms.shared_probability(params, batch).mean(axis=0)  # (4, 4), (3,)
    undecayed = plain._replace(V=plain.V + 0.01 * params.V)
    expected = ms.from_centred(ms.centred_gradient(undecayed, m, l0), m, l0)
    expected = expected._replace(V=expected.V - 0.01 * params.V)
    for name in ("V", "alpha", "delta"):
        np.testing.assert_allclose(getattr(centred, name), getattr(expected, name), rtol=1e-10, atol=1e-13,
                                   err_msg=name)
        assert np.max(np.abs(getattr(centred, name) - getattr(plain, name))) > 1e-6, name
    with pytest.raises(ValueError, match="shared_centring=True needs shared_units"):
        RoutedCapsuleRBM(**dict(kw, shared_units=0, shared_centring=True)).fit(X)


def test_estimator_shared_centring_average_steps_with_the_moving_average_of_the_offsets():
    """RoutedCapsuleRBM(shared_centring=True, centring_average=K): the shared capsule's offsets
    are (5.10) after the ones carried with the chains, the step is (4c.9) mapped back with
    them, the routed part's step is the plain one's, and the new offsets are returned."""
    from capsnp.params import CentringOffsets

    rng = np.random.default_rng(1)
    X = (rng.random((40, 16)) < 0.4).astype(np.float64)
    kw = dict(n_capsules=2, capsule_dim=2, patch=2, n_iter=1, batch_size=20, assignment_biases=True,
              shared_units=3, weight_decay=0.0, random_state=0, backend="numpy")
    est = RoutedCapsuleRBM(**kw).fit(X)
    params = est._params()
    batch = est._to_layout(X[:20])
    v0, a0 = est._to_layout(X[20:]), rng.integers(0, 2, size=(20, 4))
    plain, _, _ = est._step(params, batch, (v0, a0), np.random.default_rng(5))
    m_batch, l_batch = batch.mean(axis=0), ms.shared_probability(params, batch).mean(axis=0)  # (4, 4), (3,)
    previous = CentringOffsets(np.full((4, 4), 0.5), np.full(3, 0.2))
    m, l0 = 0.5 + (m_batch - 0.5) / 4, 0.2 + (l_batch - 0.2) / 4
    est.set_params(shared_centring=True, centring_average=4)
    step, chains, _ = est._step(params, batch, (v0, a0, previous), np.random.default_rng(5))
    for name in ("W", "gamma", "beta", "C", "A"):
        np.testing.assert_array_equal(getattr(step, name), getattr(plain, name), err_msg=name)
    expected = ms.from_centred(ms.centred_gradient(plain, m, l0), m, l0)
    for name in ("V", "alpha", "delta"):
        np.testing.assert_allclose(getattr(step, name), getattr(expected, name), rtol=1e-10, atol=1e-13,
                                   err_msg=name)
    np.testing.assert_allclose(chains[2].m, m, rtol=1e-12)
    np.testing.assert_allclose(chains[2].l, l0, rtol=1e-12)
    _, first, _ = est._step(params, batch, (v0, a0), np.random.default_rng(5))  # starts at the batch
    np.testing.assert_allclose(first[2].m, m_batch, rtol=1e-12)
    np.testing.assert_allclose(first[2].l, l_batch, rtol=1e-12)
    with pytest.raises(ValueError, match="centring_average=2 needs shared_centring"):
        RoutedCapsuleRBM(**dict(kw, centring_average=2)).fit(X)
