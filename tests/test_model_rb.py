"""Model R with assignment biases (docs/MODEL_RB.md, (4b.1)-(4b.5)) against enumeration.

The energy is written out here with plain loops, independently of ``model_r.energy``; every
conditional, marginal, partition function, statistic and kernel is checked against it.
"""

import numpy as np
import pytest
from scipy.special import logsumexp

from capsnp import kernels, likelihood
from capsnp import model_r as mr
from capsnp import rbm
from capsnp.ais import ais_log_partition, default_betas
from capsnp.exact import enumerate_assignments, enumerate_binary, stationary_distance
from capsnp.estimators import RoutedCapsuleRBM, load_estimator
from capsnp.params import RBParams, RParams

from conftest import SEEDS  # noqa: E402  (CAPSNP_TEST_SEEDS)
from conftest import params_central_difference as finite_difference_gradient  # noqa: E402
from test_model_r import make_params as make_r_params  # noqa: E402

needs_numba = pytest.mark.skipif(not kernels.available(), reason="numba is not installed")


def make_params(seed, I=2, J=2, d_h=2, d_v=2, scale=1.0):
    """A random Model R (test_model_r's) with random assignment biases C, A."""
    rng = np.random.default_rng(seed + 1000)
    return RBParams(*make_r_params(seed, I, J, d_h, d_v, scale), C=rng.normal(size=(I, J, d_h)),
                    A=rng.normal(size=(I, J, d_v)))


def energy_by_loops(p, v, h, a):
    """(4b.1) for one state: v (I, d_v), h (J, d_h), a (I,) ints."""
    e = -np.sum(p.alpha * v) - np.sum(p.gamma * h)
    for i, j in enumerate(a):
        e -= p.beta[i, j] + p.A[i, j] @ v[i] + h[j] @ (p.W[i, j] @ v[i] + p.C[i, j])
    return e


def states(p):
    I, J, d_h, d_v = p.W.shape
    return (enumerate_binary(I * d_v).reshape(-1, I, d_v), enumerate_binary(J * d_h).reshape(-1, J, d_h),
            enumerate_assignments(I, J))


def log_table(p):
    """-E(v, h, a) over every state, by loops: (Nv, Nh, Na)."""
    V, Hs, A = states(p)
    return np.array([[[-energy_by_loops(p, v, h, a) for a in A] for h in Hs] for v in V])


def bernoulli_table(x, prob):
    """prod_k p^x (1-p)^(1-x): prob (N, K), x (M, K) -> (N, M)."""
    return np.prod(np.where(x[None] > 0.5, prob[:, None], 1 - prob[:, None]), axis=-1)


@pytest.mark.parametrize("seed", SEEDS)
def test_energy_conditionals_and_marginals_match_enumeration(seed):
    p = make_params(seed)
    I = p.W.shape[0]
    V, Hs, A = states(p)
    nv, nh, na = len(V), len(Hs), len(A)
    L = log_table(p)  # (Nv, Nh, Na)
    Vg = np.repeat(V, nh * na, axis=0)
    Hg = np.tile(np.repeat(Hs, na, axis=0), (nv, 1, 1))
    Ag = np.tile(A, (nv * nh, 1))
    np.testing.assert_allclose(-mr.energy(p, Vg, Hg, Ag), L.ravel(), rtol=1e-12)
    # U: p(h | v, a) (4.4 with the predictions (4b.2))
    probs = mr.hidden_probability(p, np.repeat(V, na, axis=0), np.tile(A, (nv, 1)))
    table = bernoulli_table(Hs.reshape(nh, -1), probs.reshape(nv * na, -1)).reshape(nv, na, nh)
    np.testing.assert_allclose(table, np.exp(L - logsumexp(L, axis=1, keepdims=True)).transpose(0, 2, 1),
                               rtol=1e-11, atol=1e-15)
    # R: p(a | v, h) (4.3 with the prior logits (4b.3))
    resp = mr.routing_posterior(p, np.repeat(V, nh, axis=0), np.tile(Hs, (nv, 1, 1)))
    table = np.prod(resp[:, np.arange(I)[None, :], A], axis=-1).reshape(nv, nh, na)
    np.testing.assert_allclose(table, np.exp(L - logsumexp(L, axis=2, keepdims=True)), rtol=1e-11, atol=1e-15)
    # D: p(v | h, a) (4b.4)
    probs = mr.visible_probability(p, np.repeat(Hs, na, axis=0), np.tile(A, (nh, 1)))
    table = bernoulli_table(V.reshape(nv, -1), probs.reshape(nh * na, -1)).reshape(nh, na, nv)
    np.testing.assert_allclose(table, np.exp(L - logsumexp(L, axis=0, keepdims=True)).transpose(1, 2, 0),
                               rtol=1e-11, atol=1e-15)
    # (4.9) h summed out, (4.2) a summed out, log Z by (v, a) and by h enumeration
    la = mr.log_joint_va(p, np.repeat(V, na, axis=0), np.tile(A, (nv, 1))).reshape(nv, na)
    np.testing.assert_allclose(la, logsumexp(L, axis=1), rtol=1e-12)
    lh = mr.log_joint_vh(p, np.repeat(V, nh, axis=0), np.tile(Hs, (nv, 1, 1))).reshape(nv, nh)
    np.testing.assert_allclose(lh, logsumexp(L, axis=2), rtol=1e-12)
    log_z = logsumexp(L)
    assert mr.exact_log_partition(p) == pytest.approx(log_z, rel=1e-12)
    np.testing.assert_allclose(likelihood.log_joint_h(p, Hs), logsumexp(L, axis=(0, 2)), rtol=1e-12)
    assert likelihood.exact_log_partition(p) == pytest.approx(log_z, rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_zero_biases_are_model_r(seed):
    p = make_params(seed, I=3, J=3, d_h=2, d_v=2)
    p0 = p._replace(C=np.zeros_like(p.C), A=np.zeros_like(p.A))
    r = RParams(p.W, p.alpha, p.gamma, p.beta)
    V = enumerate_binary(6).reshape(-1, 3, 2)
    a = np.random.default_rng(seed).integers(0, 3, size=(len(V), 3))
    np.testing.assert_array_equal(mr.log_joint_va(p0, V, a), mr.log_joint_va(r, V, a))
    for x, y in zip(mr.mean_field(p0, V), mr.mean_field(r, V)):
        np.testing.assert_allclose(x, y, rtol=1e-14)
    for x, y in zip(mr.gibbs_sweep(p0, V, a, np.random.default_rng(1)), mr.gibbs_sweep(r, V, a, np.random.default_rng(1))):
        np.testing.assert_allclose(x, y, rtol=1e-14)
    assert mr.exact_log_partition(p0) == pytest.approx(mr.exact_log_partition(r), rel=1e-14)
    # and with nonzero biases the model is a different one
    assert abs(mr.exact_log_partition(p) - mr.exact_log_partition(r)) > 1e-3


@pytest.mark.parametrize("seed", SEEDS)
def test_three_block_gibbs_leaves_p_invariant(seed):
    p = make_params(seed)
    T = mr.exact_transition_matrix(p)
    pi = mr.exact_probability_va(p)
    np.testing.assert_allclose(T.sum(axis=1), 1.0, atol=1e-12)
    assert stationary_distance(pi, T) < 1e-12


def exact_statistics_gradient(p, data_index):
    """Exact data minus model statistics (4.8, 4b.5) of the mean log-likelihood of the
    enumerated visible states ``V[data_index]``: RBParams of the gradient."""
    V, Hs, _ = states(p)
    nv, nh, B = len(V), len(Hs), len(data_index)
    p_vh = mr.exact_probability_vha(p).reshape(nv, nh, -1).sum(axis=2)  # (Nv, Nh)
    p_h_given_v = p_vh[data_index] / p_vh[data_index].sum(axis=1, keepdims=True)  # (B, Nh)
    Vd, Hd = np.repeat(V[data_index], nh, axis=0), np.tile(Hs, (B, 1, 1))
    data_term = mr.model_statistics(p, Vd, Hd, mr.routing_posterior(p, Vd, Hd), weights=p_h_given_v.ravel() / B)
    Vg, Hg = np.repeat(V, nh, axis=0), np.tile(Hs, (nv, 1, 1))
    model_term = mr.model_statistics(p, Vg, Hg, mr.routing_posterior(p, Vg, Hg), weights=p_vh.ravel())
    assert isinstance(data_term, RBParams)
    return RBParams(*(d - m for d, m in zip(data_term, model_term)))


@pytest.mark.parametrize("seed", SEEDS)
def test_statistics_give_exact_log_likelihood_gradient(seed):
    """Data minus model statistics (4.8, 4b.5), both exact, equal the central-difference gradient."""
    p = make_params(seed)
    V = states(p)[0]
    data_index = np.random.default_rng(seed + 100).integers(0, len(V), size=5)
    grad = exact_statistics_gradient(p, data_index)
    fd = finite_difference_gradient(lambda q: np.mean(mr.exact_log_marginal(q, V[data_index])), p)
    for name, g, f in zip(RBParams._fields, grad, fd):
        np.testing.assert_allclose(g, f, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("seed", SEEDS)
def test_single_parent_is_a_bernoulli_rbm(seed):
    p = make_params(seed, I=3, J=1, d_h=3, d_v=2)
    r = mr.as_rbm(p)
    V = enumerate_binary(6).reshape(-1, 3, 2)
    offset = p.beta.sum()
    np.testing.assert_allclose(-mr.log_joint_va(p, V, np.zeros((64, 3), np.int64)),
                               rbm.free_energy(r, V.reshape(-1, 6)) - offset, rtol=1e-12)
    assert mr.exact_log_partition(p) == pytest.approx(rbm.exact_log_partition(r) + offset, rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_importance_sampling_and_ais_match_exact(seed):
    p = make_params(seed, I=4, J=3, d_h=2, d_v=2)
    V = enumerate_binary(8).reshape(-1, 4, 2)
    v = V[np.random.default_rng(seed).integers(0, 256, size=10)]
    log_z = mr.exact_log_partition(p)
    est, se = mr.log_marginal_is(p, v, 2000, np.random.default_rng(seed + 7), log_z=log_z)
    assert np.all(np.abs(est - mr.exact_log_marginal(p, v, log_z=log_z)) < 5 * se + 1e-12)
    res = ais_log_partition(p, n_runs=64, betas=default_betas(fast=True)[::2], random_state=seed)
    assert abs(res.log_z - log_z) < 5 * res.std_error + 0.02, (res.log_z, log_z, res.std_error)


@needs_numba
@pytest.mark.parametrize("seed", SEEDS)
def test_kernels_match_reference(seed):
    p = make_params(seed, I=5, J=3, d_h=4, d_v=3, scale=0.7)
    rng = np.random.default_rng(seed)
    v = (rng.random((9, 5, 3)) < 0.4).astype(np.float64)
    a = rng.integers(0, 3, size=(9, 5))
    for x, y in zip(kernels.model_r.mean_field(p, v, 1e-6, 50), mr.mean_field(p, v, 1e-6, 50)):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)
    out_k = kernels.model_r.gibbs_sweep(p, v, a, np.random.default_rng(3))
    out_r = mr.gibbs_sweep(p, v, a, np.random.default_rng(3))
    for x, y in zip(out_k[:3], out_r[:3]):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(out_k[3], out_r[3], rtol=1e-12)
    c, mu = out_r[3], rng.random((9, 3, 4))
    stats_k, stats_r = kernels.model_r.data_statistics(p, v, c, mu), mr.data_statistics(p, v, c, mu)
    assert type(stats_k) is RBParams
    for name, x, y in zip(RBParams._fields, stats_k, stats_r):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-15, err_msg=name)


def test_estimator_learns_biases_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    X = (rng.random((60, 64)) < np.linspace(0.05, 0.6, 64)).astype(np.float64)
    est = RoutedCapsuleRBM(n_capsules=2, capsule_dim=3, patch=4, n_iter=2, batch_size=20,
                           learning_rate=0.1, momentum=0.5, assignment_biases=True, random_state=0).fit(X)
    assert est.C_.shape == (4, 2, 3) and est.A_.shape == (4, 2, 16)
    assert np.abs(est.C_).max() > 0 and np.abs(est.A_).max() > 0
    est.save(tmp_path / "m.npz")
    loaded = load_estimator(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.A_, est.A_)
    np.testing.assert_array_equal(loaded.score_samples(X), est.score_samples(X))
    plain = RoutedCapsuleRBM(n_capsules=2, capsule_dim=3, patch=4, n_iter=1, batch_size=20, random_state=0).fit(X)
    assert not hasattr(plain, "C_")


@pytest.mark.parametrize("seed", SEEDS)
def test_mean_field_elbo_and_reconstruction_with_biases(seed):
    """The ELBO (with b(v) and u_hat of (4b.2)-(4b.3)) bounds log p~(v) for any routing c, and
    is tight where p(h, a | v) factorises; the monitor's reconstruction adds sum_j c_ij A_ij."""
    from capsnp.estimators import mean_field_elbo

    p = make_params(seed, I=3, J=2, d_h=2, d_v=2)
    V = enumerate_binary(6).reshape(-1, 3, 2)  # (64, 3, 2)
    rng = np.random.default_rng(seed)
    exact = mr.exact_log_unnormalised_marginal(p, V)  # (64,)
    for c in (mr.mean_field(p, V, tol=1e-10, max_iter=500)[0], rng.dirichlet(np.ones(2), size=(64, 3))):
        assert np.all(mean_field_elbo(p, V, c) <= exact + 1e-12)
    # J = 1: a is fixed, q(h) = p(h | v) exactly, so the bound is an equality
    p1 = make_params(seed, I=3, J=1, d_h=2, d_v=2)
    ones = np.ones((64, 3, 1))
    np.testing.assert_allclose(mean_field_elbo(p1, V, ones), mr.exact_log_unnormalised_marginal(p1, V),
                               rtol=1e-12)
    c, mu, _ = mr.mean_field(p, V)
    loops = np.array([[[p.alpha[i, l] + sum(c[b, i, j] * (p.A[i, j, l] + p.W[i, j, :, l] @ mu[b, j])
                                             for j in range(2)) for l in range(2)] for i in range(3)]
                      for b in range(64)])
    np.testing.assert_allclose(RoutedCapsuleRBM._reconstruction(p, c, mu), 1 / (1 + np.exp(-loops)), rtol=1e-12)


@pytest.mark.parametrize("biases", [False, True])
def test_routed_prediction_and_reconstruction_match_loops_at_distinct_sizes(biases):
    """The matrix-product forms of s_j = sum_i c_ij u_hat_{j|i} (4.6) and of the monitor's
    reconstruction agree with explicit sums when I, J, d_h and d_v all differ."""
    rng = np.random.default_rng(3)
    I, J, d_h, d_v, B = 3, 2, 5, 4, 7
    p = make_params(3, I=I, J=J, d_h=d_h, d_v=d_v)
    if not biases:
        p = RParams(W=p.W, alpha=p.alpha, gamma=p.gamma, beta=p.beta)
    v = (rng.random((B, I, d_v)) < 0.5).astype(float)  # (B, I, d_v)
    c = rng.dirichlet(np.ones(J), size=(B, I))  # (B, I, J)
    mu = rng.random((B, J, d_h))  # (B, J, d_h)
    C = p.C if biases else np.zeros((I, J, d_h))
    A = p.A if biases else np.zeros((I, J, d_v))
    s = np.array([[[sum(c[b, i, j] * (p.W[i, j, k] @ v[b, i] + C[i, j, k]) for i in range(I))
                    for k in range(d_h)] for j in range(J)] for b in range(B)])
    np.testing.assert_allclose(mr.routed_prediction(p, v, c), s, rtol=1e-12)
    field = np.array([[[p.alpha[i, l] + sum(c[b, i, j] * (A[i, j, l] + p.W[i, j, :, l] @ mu[b, j])
                                            for j in range(J)) for l in range(d_v)] for i in range(I)]
                      for b in range(B)])
    np.testing.assert_allclose(RoutedCapsuleRBM._reconstruction(p, c, mu), 1 / (1 + np.exp(-field)),
                               rtol=1e-12)


def tied(p):
    """p with every parent's weights replaced by parent 0's (4b.6)."""
    return p._replace(W=np.ascontiguousarray(np.broadcast_to(p.W[:, :1], p.W.shape)))


@pytest.mark.parametrize("seed", SEEDS)
def test_tied_gradient_is_the_gradient_of_the_shared_weights(seed):
    """(4b.6): with W_ij = theta_i for every j, the exact statistics' W gradient summed over the
    parents equals the central-difference gradient of the exact mean log-likelihood in theta."""
    p = tied(make_params(seed, I=2, J=2, d_h=2, d_v=2))
    V = states(p)[0]
    data_index = np.random.default_rng(seed + 100).integers(0, len(V), size=5)
    data = V[data_index]
    dW = exact_statistics_gradient(p, data_index).W  # (I, J, d_h, d_v), as if the copies were free
    theta = p.W[:, 0]  # (I, d_h, d_v)
    eps, fd = 1e-5, np.zeros_like(theta)
    for idx in np.ndindex(theta.shape):
        step = np.zeros_like(theta)
        step[idx] = eps
        up, down = (tied(p._replace(W=np.repeat((theta + s)[:, None], 2, axis=1))) for s in (step, -step))
        fd[idx] = (np.mean(mr.exact_log_marginal(up, data)) - np.mean(mr.exact_log_marginal(down, data))) / (2 * eps)
    g = mr.tied_gradient(dW)  # (I, J, d_h, d_v)
    np.testing.assert_array_equal(g[:, 0], g[:, 1])
    np.testing.assert_allclose(g[:, 0], fd, atol=1e-7)


@pytest.mark.parametrize("seed", SEEDS)
def test_tied_parents_contain_the_rbm(seed):
    """Tied weights, J = 2: with every patch routed to parent 0 (beta_i1 = beta_i0 - 60 and
    A_i1 = A_i0, C_i1 = 0, so no h can overturn it) the model is parent 0's J = 1 model, the RBM
    of (4b.1) with its biases folded in: the same exact log-likelihood of every image."""
    p = tied(make_params(seed, I=3, J=2, d_h=2, d_v=2))
    p = p._replace(beta=np.stack([p.beta[:, 0], p.beta[:, 0] - 60.0], axis=1),
                   A=np.repeat(p.A[:, :1], 2, axis=1), C=p.C * np.array([1.0, 0.0])[None, :, None])
    one = RBParams(W=p.W[:, :1], alpha=p.alpha, gamma=p.gamma[:1], beta=p.beta[:, :1], C=p.C[:, :1], A=p.A[:, :1])
    V = enumerate_binary(6).reshape(-1, 3, 2)
    np.testing.assert_allclose(mr.exact_log_marginal(p, V), mr.exact_log_marginal(one, V), atol=1e-20 + 1e-9)
    np.testing.assert_allclose(mr.exact_log_marginal(one, V),
                               -rbm.free_energy(mr.as_rbm(one), V.reshape(-1, 6)) - rbm.exact_log_partition(mr.as_rbm(one)),
                               rtol=1e-12)


def test_estimator_keeps_tied_weights_equal_on_both_backends():
    """tie_weights: the parents' weight copies stay exactly equal through training with momentum
    and weight decay, the Numba and NumPy fits agree, and the option needs the biases."""
    X = (np.random.default_rng(0).random((60, 16)) < 0.3).astype(float)
    kw = dict(n_capsules=2, capsule_dim=3, image_shape=(4, 4), patch=2, assignment_biases=True,
              tie_weights=True, n_iter=3, batch_size=20, momentum=0.8, weight_decay=1e-2,
              learning_rate=0.1, init_scale=0.5, random_state=0, monitor_fraction=0)
    fits = [RoutedCapsuleRBM(backend=b, **kw).fit(X) for b in ("numba", "numpy")]
    for est in fits:
        np.testing.assert_array_equal(est.W_[:, 0], est.W_[:, 1])
        assert not np.allclose(est.C_[:, 0], est.C_[:, 1])
    np.testing.assert_allclose(fits[0].W_, fits[1].W_, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="assignment_biases"):
        RoutedCapsuleRBM(**{**kw, "assignment_biases": False}).fit(X)


def test_first_parent_logit_starts_the_routing_at_parent_one():
    """first_parent_logit = b sets beta_i1 = b (others 0): fixed without learn_prior, learned from
    there with it; after a short fit the mean-field routing still sends most of every image to
    parent 1, the RBM the tied model contains."""
    X = (np.random.default_rng(1).random((60, 16)) < 0.3).astype(float)
    kw = dict(n_capsules=2, capsule_dim=3, image_shape=(4, 4), patch=2, assignment_biases=True,
              tie_weights=True, n_iter=2, batch_size=20, learning_rate=0.1, init_scale=0.5,
              random_state=0, monitor_fraction=0, first_parent_logit=5.0)
    fixed = RoutedCapsuleRBM(**kw).fit(X)
    np.testing.assert_array_equal(fixed.beta_, np.tile([5.0, 0.0], (4, 1)))
    learned = RoutedCapsuleRBM(learn_prior=True, **kw).fit(X)
    assert not np.array_equal(learned.beta_, fixed.beta_)
    assert np.all(learned.beta_[:, 0] - learned.beta_[:, 1] > 4.0)
    c, _, _ = learned._mean_field(learned._params(), learned._checked(X))  # (B, I, J)
    assert c[..., 0].mean() > 0.95
    default = RoutedCapsuleRBM(**{**kw, "first_parent_logit": 0.0}).fit(X)
    np.testing.assert_array_equal(default.beta_, 0.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_clamped_sweeps_leave_the_posterior_invariant(seed):
    """posterior_sweeps: with v clamped, h ~ p(h | v, a) then a ~ p(a | v, h) is a Markov chain
    on a whose transition matrix sum_h p(h | v, a) p(a' | v, h) keeps p(a | v), by enumeration."""
    p = make_params(seed, I=3, J=2, d_h=2, d_v=2)
    V, Hs, As = states(p)
    for v in V[np.random.default_rng(seed).integers(0, len(V), size=4)]:
        vb = np.repeat(v[None], len(As), axis=0)  # (Na, I, d_v)
        p_h = bernoulli_table(Hs.reshape(len(Hs), -1),
                              mr.hidden_probability(p, vb, As).reshape(len(As), -1))  # (Na, Nh)
        vh = np.repeat(v[None], len(Hs), axis=0)  # (Nh, I, d_v)
        r = mr.routing_posterior(p, vh, Hs)  # (Nh, I, J)
        p_a_given_h = np.prod(r[:, np.arange(p.W.shape[0]), As], axis=-1)  # (Nh, Na): indexed [h, a]
        T = p_h @ p_a_given_h  # (Na, Na)
        log_pa = mr.log_joint_va(p, vb, As)  # (Na,)
        pa = np.exp(log_pa - logsumexp(log_pa))
        np.testing.assert_allclose(T.sum(axis=1), 1.0, rtol=1e-12)
        np.testing.assert_allclose(pa @ T, pa, atol=1e-13)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_sampled_data_statistics_match_the_exact_data_term(backend):
    """posterior_sweeps = 10: the sampled data statistics of one image, averaged over 20,000
    copies, are the exact E_{p(h, a | v)} statistics (within 5 standard errors), which the
    mean-field ones miss."""
    p = make_params(3, I=2, J=2, d_h=2, d_v=2)
    V, Hs, _ = states(p)
    v = V[5]
    p_vh = mr.exact_probability_vha(p).reshape(len(V), len(Hs), -1).sum(axis=2)[5]  # (Nh,)
    vh = np.repeat(v[None], len(Hs), axis=0)
    exact = mr.model_statistics(p, vh, Hs, mr.routing_posterior(p, vh, Hs), weights=p_vh / p_vh.sum())
    est = RoutedCapsuleRBM(n_capsules=2, capsule_dim=2, assignment_biases=True, posterior_sweeps=10,
                           backend=backend)
    n = 20_000
    batch = np.repeat(v[None], n, axis=0)  # (n, I, d_v)
    c, mu, _ = mr.mean_field(p, batch[:1])
    c, mu = np.repeat(c, n, axis=0), np.repeat(mu, n, axis=0)
    sampled = est._data_statistics(p, batch, c, mu, np.random.default_rng(0))
    mean_field = mr.data_statistics(p, batch[:1], c[:1], mu[:1])
    for name, s, e, m in zip(RBParams._fields, sampled, exact, mean_field):
        np.testing.assert_allclose(s, e, atol=5 * 0.5 / np.sqrt(n), err_msg=name)
    assert max(np.max(np.abs(m - e)) for m, e in zip(mean_field, exact)) > 0.1


def test_assignment_bias_rate_scales_only_the_bias_gradient():
    """assignment_bias_rate = r: the step's C and A gradients are r times those at r = 1 (same
    draws), every other gradient unchanged."""
    X = (np.random.default_rng(2).random((40, 16)) < 0.3).astype(float)
    kw = dict(n_capsules=2, capsule_dim=3, image_shape=(4, 4), patch=2, assignment_biases=True,
              n_iter=1, batch_size=20, init_scale=0.5, random_state=0, monitor_fraction=0)
    est = RoutedCapsuleRBM(**kw).fit(X)
    params, batch = est._params(), est._checked(X[:20])
    steps = {}
    for rate in (1.0, 0.25):
        est.set_params(assignment_bias_rate=rate)
        steps[rate] = est._step(params, batch, None, np.random.default_rng(5))
    (g1, _, _), (g4, _, _) = steps[1.0], steps[0.25]
    for name, a, b in zip(RBParams._fields, g1, g4):
        np.testing.assert_allclose(b, 0.25 * a if name in ("C", "A") else a, rtol=1e-12, atol=1e-15, err_msg=name)
    assert np.abs(g1.C).max() > 0 and np.abs(g1.A).max() > 0
    with pytest.raises(ValueError, match="assignment_bias_rate"):
        RoutedCapsuleRBM(**{**kw, "assignment_bias_rate": -1.0}).fit(X)


def centred_energy_by_loops(p, v, h, a, m, l, biases):
    """The centred energy (4b.8) of one state, p holding the centred parameters."""
    e = -np.sum(p.alpha * v) - np.sum(p.gamma * h)
    for i, j in enumerate(a):
        if biases:
            e -= p.beta[i, j] + p.A[i, j] @ (v[i] - m[i]) + (h[j] - l[j]) @ (p.W[i, j] @ (v[i] - m[i]) + p.C[i, j])
        else:
            e -= (p.beta[i, j] + p.A[i, j] @ v[i] + h[j] @ p.C[i, j] + (h[j] - l[j]) @ p.W[i, j] @ (v[i] - m[i])
                  - l[j] @ p.W[i, j] @ m[i])
    return e


def offsets(seed, p):
    I, J, d_h, d_v = p.W.shape
    rng = np.random.default_rng(seed + 300)
    return rng.random((I, d_v)), rng.random((J, d_h))


@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_centred_coordinates_are_the_same_model(seed, biases):
    """(4b.8): the centred energy at theta' equals (4b.1) at from_centred(theta') in every
    state, exactly; to_centred inverts from_centred; beta moves only when the biases are centred."""
    centred = make_params(seed, I=2, J=2, d_h=2, d_v=2)
    m, l = offsets(seed, centred)
    plain = mr.from_centred(centred, m, l, biases)
    V, Hs, A = states(plain)
    for v in V[::3]:
        for h in Hs[::2]:
            for a in A:
                assert centred_energy_by_loops(centred, v, h, a, m, l, biases) == pytest.approx(
                    energy_by_loops(plain, v, h, a), abs=1e-12)
    for name, x, y in zip(RBParams._fields, mr.to_centred(plain, m, l, biases), centred):
        np.testing.assert_allclose(x, y, atol=1e-12, err_msg=name)
    assert np.array_equal(plain.beta, centred.beta) != biases


@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_centred_gradient_is_the_gradient_in_centred_coordinates(seed, biases):
    """(4b.9): centred_gradient of the exact data-minus-model statistics equals the central
    differences of the exact mean log-likelihood as a function of the centred parameters."""
    centred = make_params(seed, I=2, J=2, d_h=2, d_v=2)
    m, l = offsets(seed, centred)
    plain = mr.from_centred(centred, m, l, biases)
    V = states(plain)[0]
    data_index = np.random.default_rng(seed + 100).integers(0, len(V), size=5)
    exact = exact_statistics_gradient(plain, data_index)
    g = mr.centred_gradient(exact, m, l, biases)
    fd = finite_difference_gradient(
        lambda q: np.mean(mr.exact_log_marginal(mr.from_centred(q, m, l, biases), V[data_index])), centred)
    for name, x, f in zip(RBParams._fields, g, fd):
        np.testing.assert_allclose(x, f, atol=1e-7, err_msg=name)
    assert np.max(np.abs(g.W - exact.W)) > 1e-3


@pytest.mark.parametrize("seed", SEEDS)
def test_centred_single_parent_is_the_centred_rbm(seed):
    """With J = 1 the interaction-centred Model R (4b.8, 4b.9) is the centred RBM (5.9) of
    model_r.as_rbm, with the offsets flattened: the same plain parameters and the same
    centred gradient."""
    centred = make_params(seed, I=3, J=1, d_h=3, d_v=2)
    m, l = offsets(seed, centred)
    plain = mr.from_centred(centred, m, l)
    r_centred, r_plain = mr.as_rbm(centred), mr.as_rbm(plain)
    for x, y in zip(rbm.from_centred(r_centred, m.ravel(), l[0]), r_plain):
        np.testing.assert_allclose(x, y, atol=1e-12)
    V = states(plain)[0]
    data_index = np.random.default_rng(seed + 100).integers(0, len(V), size=5)
    g = mr.centred_gradient(exact_statistics_gradient(plain, data_index), m, l)
    V_flat = V.reshape(len(V), -1)
    exact_rbm = rbm.cd_gradient(r_plain, V_flat[data_index], V_flat, model_weights=rbm.exact_probability_v(r_plain))
    g_rbm = rbm.centred_gradient(exact_rbm, m.ravel(), l[0])
    np.testing.assert_allclose(mr.as_rbm(g._replace(beta=np.zeros_like(g.beta))).W, g_rbm.W, atol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_centred_tied_gradient_is_the_gradient_of_the_shared_centred_weights(seed):
    """Tied weights (4b.6) in centred coordinates: W' shared by the parents stays shared under
    from_centred, and the centred W gradient summed over the parents equals the central
    differences of the exact mean log-likelihood in the shared theta'."""
    centred = tied(make_params(seed, I=2, J=2, d_h=2, d_v=2))
    m, l = offsets(seed, centred)
    plain = mr.from_centred(centred, m, l)
    np.testing.assert_array_equal(plain.W[:, 0], plain.W[:, 1])
    V = states(plain)[0]
    data_index = np.random.default_rng(seed + 100).integers(0, len(V), size=5)
    data = V[data_index]
    g = mr.tied_gradient(mr.centred_gradient(exact_statistics_gradient(plain, data_index), m, l).W)
    theta = centred.W[:, 0]  # (I, d_h, d_v)
    eps, fd = 1e-5, np.zeros_like(theta)
    for idx in np.ndindex(theta.shape):
        step = np.zeros_like(theta)
        step[idx] = eps
        up, down = (mr.from_centred(centred._replace(W=np.repeat((theta + s)[:, None], 2, axis=1)), m, l)
                    for s in (step, -step))
        fd[idx] = (np.mean(mr.exact_log_marginal(up, data)) - np.mean(mr.exact_log_marginal(down, data))) / (2 * eps)
    np.testing.assert_allclose(g[:, 0], fd, atol=1e-7)


@pytest.mark.parametrize("centring", ["interaction", "shared", "visible", "all"])
@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=needs_numba)])
def test_estimator_centring_steps_along_the_centred_gradient(backend, centring):
    """centring: the step is from_centred of the centred gradient of the same draws'
    statistics, the offsets being the batch's data means of v and h; tied copies stay equal
    through a fit; beta moves without learn_prior only when the biases are centred; the option
    needs the assignment biases."""
    X = (np.random.default_rng(3).random((40, 16)) < 0.3).astype(float)
    kw = dict(n_capsules=2, capsule_dim=3, image_shape=(4, 4), patch=2, assignment_biases=True,
              tie_weights=True, learn_prior=True, n_iter=2, batch_size=20, init_scale=0.5,
              random_state=0, monitor_fraction=0, backend=backend)
    est = RoutedCapsuleRBM(**kw).fit(X)
    params, batch = est._params(), est._checked(X[:20])
    _, mu, _ = est._mean_field(params, batch)
    m, l = batch.mean(axis=0), mu.mean(axis=0)  # (I, d_v), (J, d_h)
    if centring == "visible":
        l = np.zeros_like(l)
    if centring == "shared":
        l = np.repeat(l.mean(axis=0, keepdims=True), l.shape[0], axis=0)
    plain, _, _ = est.set_params(tie_weights=False)._step(params, batch, None, np.random.default_rng(5))
    centred, _, _ = est.set_params(tie_weights=True, centring=centring)._step(params, batch, None,
                                                                              np.random.default_rng(5))
    biases = centring == "all"
    g = mr.centred_gradient(plain, m, l, biases)
    expected = mr.from_centred(g._replace(W=mr.tied_gradient(g.W)), m, l, biases)
    for name, x, y in zip(RBParams._fields, centred, expected):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12, err_msg=name)
    # what the routing sees of the A step, A_i0 - A_i1: the offsets add nothing to it when shared
    offset_share = np.abs(np.diff(centred.A - g.A, axis=1)).max()
    assert (offset_share < 1e-12) == (centring in ("shared", "visible"))
    fitted = RoutedCapsuleRBM(**{**kw, "learn_prior": False}, centring=centring).fit(X)
    np.testing.assert_array_equal(fitted.W_[:, 0], fitted.W_[:, 1])
    assert np.all(fitted.beta_ == 0) != biases
    with pytest.raises(ValueError, match="centring=True needs assignment_biases"):
        RoutedCapsuleRBM(**{**kw, "assignment_biases": False, "tie_weights": False}, centring=centring).fit(X)
    with pytest.raises(ValueError, match="centring must be one of"):
        RoutedCapsuleRBM(**kw, centring="hidden").fit(X)


# ------------------------------------------------------------------------------ (4b.10)


def exact_indicator_statistics(p):
    """E_p[-dE/dtheta] of (4.8), (4b.5) by enumerating (v, h, a) with the indicator [a_i = j],
    and the enumerated states: (the container of p, Vf, Hf, Af, prob)."""
    V, Hs, A = states(p)
    nv, nh, na = len(V), len(Hs), len(A)
    J = p.W.shape[1]
    prob = mr.exact_probability_vha(p).ravel()  # (Nv Nh Na,), v slowest, a fastest
    Vf = np.repeat(V, nh * na, axis=0)
    Hf = np.tile(np.repeat(Hs, na, axis=0), (nv, 1, 1))
    Af = np.tile(A, (nv * nh, 1))
    onehot = (Af[..., None] == np.arange(J)).astype(float)
    fields = dict(W=np.einsum("s,sij,sjk,sil->ijkl", prob, onehot, Hf, Vf),
                  alpha=np.einsum("s,sil->il", prob, Vf), gamma=np.einsum("s,sjk->jk", prob, Hf),
                  beta=np.einsum("s,sij->ij", prob, onehot))
    if isinstance(p, RBParams):
        fields.update(C=np.einsum("s,sij,sjk->ijk", prob, onehot, Hf), A=np.einsum("s,sij,sil->ijl", prob, onehot, Vf))
    return type(p)(**fields), Vf, Hf, Af, prob


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("biases", [True, False])
def test_hidden_model_statistics_are_exact_expectations(seed, biases):
    """(4b.10): [a_i = j] p(h_j | v, a) v_i^T, p(h | v, a), [a_i = j] p(h_j | v, a) with
    (v, a) ~ p, and resp(v, h), resp_ij v_i with (v, h) ~ p, average to the exact model
    expectations of -dE/dtheta, as the routes' statistics (4.8) do; state by state they differ."""
    p = make_params(seed, scale=1.5) if biases else make_r_params(seed, 2, 2, 2, 2, scale=1.5)
    exact, Vf, Hf, Af, prob = exact_indicator_statistics(p)
    p_h = mr.hidden_probability(p, Vf, Af)  # (S, J, d_h)
    resp = mr.routing_posterior(p, Vf, Hf)  # (S, I, J)
    got = mr.hidden_model_statistics(p, Vf, Af, p_h, resp, weights=prob)
    routes = mr.model_statistics(p, Vf, Hf, resp, weights=prob)
    assert type(got) is type(p)
    for name, g, r, e in zip(type(p)._fields, got, routes, exact):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-15, err_msg=name)
        np.testing.assert_allclose(r, e, rtol=1e-12, atol=1e-15, err_msg=name)
    s = np.argmax(prob)  # one state: h enters through p(h | v, a), a alone through resp(v, h)
    one = np.zeros_like(prob)
    one[s] = 1.0
    single = mr.hidden_model_statistics(p, Vf, Af, p_h, resp, weights=one)
    onehot = (Af[s][:, None] == np.arange(p.W.shape[1])).astype(float)  # (I, J)
    np.testing.assert_allclose(single.W, np.einsum("ij,jk,il->ijkl", onehot, p_h[s], Vf[s]), rtol=1e-12)
    np.testing.assert_allclose(single.gamma, p_h[s], rtol=1e-12)
    np.testing.assert_allclose(single.beta, resp[s], rtol=1e-12)
    if biases:
        np.testing.assert_allclose(single.C, onehot[..., None] * p_h[s][None], rtol=1e-12)
        np.testing.assert_allclose(single.A, resp[s][..., None] * Vf[s][:, None], rtol=1e-12)
    assert np.abs(single.W - mr.model_statistics(p, Vf, Hf, resp, weights=one).W).max() > 1e-3


@needs_numba
@pytest.mark.parametrize("seed", SEEDS)
def test_hidden_statistics_kernels_match_reference(seed):
    """gibbs_sweep(return_probability=True) makes the same draws as without and returns
    p(h | v, a) at the input; the compiled hidden_model_statistics is the reference's."""
    for p in (make_params(seed, I=5, J=3, d_h=4, d_v=3, scale=0.7),
              make_r_params(seed, 5, 3, 4, 3, scale=0.7)):
        rng = np.random.default_rng(seed)
        v = (rng.random((9, 5, 3)) < 0.4).astype(np.float64)
        a = rng.integers(0, 3, size=(9, 5))
        plain = kernels.model_r.gibbs_sweep(p, v, a, np.random.default_rng(3))
        out_k = kernels.model_r.gibbs_sweep(p, v, a, np.random.default_rng(3), return_probability=True)
        out_r = mr.gibbs_sweep(p, v, a, np.random.default_rng(3), return_probability=True)
        assert len(out_k) == len(out_r) == 5
        for x, y, z in zip(out_k[:3], out_r[:3], plain[:3]):
            np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(x, z)
        np.testing.assert_allclose(out_k[4], out_r[4], rtol=1e-12)
        np.testing.assert_allclose(out_r[4], mr.hidden_probability(p, v, a), rtol=1e-12)
        np.testing.assert_allclose(kernels.model_r.hidden_probability(p, v, a), out_r[4], rtol=1e-12)
        stats_k = kernels.model_r.hidden_model_statistics(p, v, a, out_k[4], out_k[3])
        stats_r = mr.hidden_model_statistics(p, v, a, out_r[4], out_r[3])
        assert type(stats_k) is type(p)
        for name, x, y in zip(type(p)._fields, stats_k, stats_r):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-15, err_msg=name)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=needs_numba)])
def test_estimator_rao_blackwell_hidden_changes_only_the_chain_statistics(backend, tmp_path):
    """rao_blackwell="hidden" and "hidden-redrawn": the same draws and chains as "routes", and
    steps that differ by exactly the difference of the chain statistics (4b.10 at the routes
    that entered the sweep, or at those it drew); the option is checked and saved."""
    X = (np.random.default_rng(4).random((40, 16)) < 0.3).astype(float)
    kw = dict(n_capsules=2, capsule_dim=3, image_shape=(4, 4), patch=2, assignment_biases=True,
              n_iter=1, batch_size=20, init_scale=0.5, random_state=0, monitor_fraction=0, backend=backend)
    est = RoutedCapsuleRBM(**kw).fit(X)
    params, batch = est._params(), est._checked(X[:20])
    chains = (batch[::-1].copy(), np.random.default_rng(1).integers(0, 2, size=batch.shape[:2]))
    g_r, ch_r, _ = est.set_params(rao_blackwell="routes")._step(params, batch, chains, np.random.default_rng(5))
    g_h, ch_h, _ = est.set_params(rao_blackwell="hidden")._step(params, batch, chains, np.random.default_rng(5))
    for x, y in zip(ch_r, ch_h):
        np.testing.assert_array_equal(x, y)
    _, h, _, resp, p_h = mr.gibbs_sweep(params, chains[0], chains[1], np.random.default_rng(5), True)
    routes = mr.model_statistics(params, chains[0], h, resp)
    hidden = mr.hidden_model_statistics(params, chains[0], chains[1], p_h, resp)
    for name, gr, gh, r, hs in zip(RBParams._fields, g_r, g_h, routes, hidden):
        expected = np.zeros_like(gr) if name == "beta" else r - hs  # beta is fixed without learn_prior
        np.testing.assert_allclose(gh - gr, expected, rtol=1e-9, atol=1e-12, err_msg=name)
    assert np.abs(g_h.W - g_r.W).max() > 1e-6
    # "hidden-redrawn": the same statistics at (v, a_new), the routes the sweep drew
    g_n, ch_n, _ = est.set_params(rao_blackwell="hidden-redrawn")._step(params, batch, chains,
                                                                        np.random.default_rng(5))
    for x, y in zip(ch_r, ch_n):
        np.testing.assert_array_equal(x, y)
    redrawn = mr.hidden_model_statistics(params, chains[0], ch_r[1], mr.hidden_probability(params, chains[0], ch_r[1]),
                                         resp)
    for name, gr, gn, r, hs in zip(RBParams._fields, g_r, g_n, routes, redrawn):
        expected = np.zeros_like(gr) if name == "beta" else r - hs
        np.testing.assert_allclose(gn - gr, expected, rtol=1e-9, atol=1e-12, err_msg=name)
    assert np.abs(g_n.W - g_h.W).max() > 1e-6
    fitted = RoutedCapsuleRBM(**kw, rao_blackwell="hidden").fit(X)
    fitted.save(tmp_path / "m.npz")
    assert load_estimator(tmp_path / "m.npz").rao_blackwell == "hidden"
    with pytest.raises(ValueError, match="rao_blackwell"):
        RoutedCapsuleRBM(**kw, rao_blackwell="both").fit(X)
