"""Checks of the Bernoulli RBM (MODEL.md sec. 5) against enumeration of tiny models (sec. 7)."""

import numpy as np
import pytest
from scipy.special import logsumexp

from capsnp import rbm
from capsnp.exact import enumerate_binary, stationary_distance
from capsnp.params import RBMParams

from conftest import SEEDS, chi_square_pvalue  # noqa: E402  (CAPSNP_TEST_SEEDS)
from conftest import params_central_difference as finite_difference_gradient  # noqa: E402


def make_params(seed, D=4, H=3, scale=1.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return RBMParams(
        W=(scale * rng.normal(size=(D, H))).astype(dtype),
        a=rng.normal(size=D).astype(dtype),
        b=rng.normal(size=H).astype(dtype),
    )


def joint_log_table(params):
    """-E(v, h) for every (v, h): (2^D, 2^H), by brute force."""
    D, H = params.W.shape
    V, Hs = enumerate_binary(D), enumerate_binary(H)
    Vg, Hg = np.repeat(V, len(Hs), axis=0), np.tile(Hs, (len(V), 1))
    return -rbm.energy(params, Vg, Hg).reshape(len(V), len(Hs))


def bernoulli_table(states, p):
    """prod_k p^x (1-p)^(1-x) for every row of p (N, K) and state (M, K): (N, M)."""
    return np.prod(np.where(states[None] > 0.5, p[:, None], 1 - p[:, None]), axis=-1)






# ------------------------------------------------------------------------------ (5.1)-(5.4)


@pytest.mark.parametrize("seed", SEEDS)
def test_conditionals_match_enumerated_joint(seed):
    params = make_params(seed)
    D, H = params.W.shape
    V, Hs = enumerate_binary(D), enumerate_binary(H)
    log_joint = joint_log_table(params)  # (2^D, 2^H)
    p_h_given_v = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
    p_v_given_h = np.exp(log_joint - logsumexp(log_joint, axis=0, keepdims=True)).T
    np.testing.assert_allclose(bernoulli_table(Hs, rbm.hidden_probability(params, V)), p_h_given_v,
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(bernoulli_table(V, rbm.visible_probability(params, Hs)), p_v_given_h,
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
def test_free_energy_and_log_partition_match_enumeration(seed):
    for D, H in [(4, 3), (3, 5)]:  # both sides of the "enumerate the smaller layer" branch
        params = make_params(seed, D, H)
        log_joint = joint_log_table(params)
        V = enumerate_binary(D)
        np.testing.assert_allclose(rbm.free_energy(params, V), -logsumexp(log_joint, axis=1), rtol=1e-13)
        assert rbm.exact_log_partition(params) == pytest.approx(logsumexp(log_joint), rel=1e-13)
        p_v = rbm.exact_probability_v(params)
        assert p_v.sum() == pytest.approx(1.0, abs=1e-13)
        assert rbm.exact_probability_vh(params).sum() == pytest.approx(1.0, abs=1e-13)


def test_exact_log_partition_refuses_large_models():
    params = make_params(0, D=23, H=24)
    with pytest.raises(ValueError, match="2\\*\\*23"):
        rbm.exact_log_partition(params)


def test_free_energy_matches_scikit_learn():
    from sklearn.neural_network import BernoulliRBM

    params = make_params(3, D=6, H=4)
    sk = BernoulliRBM(n_components=4)
    sk.components_ = params.W.T.copy()
    sk.intercept_hidden_ = params.b.copy()
    sk.intercept_visible_ = params.a.copy()
    V = enumerate_binary(6)
    np.testing.assert_allclose(rbm.free_energy(params, V), sk._free_energy(V), rtol=1e-13)


# ------------------------------------------------------------------------------ (5.7)


@pytest.mark.parametrize("seed", SEEDS)
def test_pseudo_likelihood_exact_matches_enumeration(seed):
    params = make_params(seed, D=5, H=3)
    V = enumerate_binary(5)
    log_p = rbm.exact_log_marginal(params, V)  # (32,)
    index = np.arange(32)
    expected = np.zeros(32)
    for i in range(5):
        flipped = index ^ (1 << i)  # state index of v with bit i flipped
        expected += log_p - np.logaddexp(log_p, log_p[flipped])  # log p(v_i | v_-i)
    np.testing.assert_allclose(rbm.pseudo_log_likelihood_exact(params, V), expected, rtol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_pseudo_likelihood_stochastic_is_one_flip_of_exact(seed):
    params = make_params(seed, D=5, H=3)
    V = enumerate_binary(5)
    log_p = rbm.exact_log_marginal(params, V)
    bits = np.random.default_rng(seed).integers(0, 5, size=32)  # the documented draw
    flipped = np.arange(32) ^ (1 << bits)
    expected = 5 * (log_p - np.logaddexp(log_p, log_p[flipped]))
    got = rbm.pseudo_log_likelihood(params, V, np.random.default_rng(seed))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


# ------------------------------------------------------------------------------ (5.6)


@pytest.mark.parametrize("seed", SEEDS)
def test_cd_gradient_with_exact_expectation_is_exact_gradient(seed):
    params = make_params(seed, D=4, H=3)
    v_data = (np.random.default_rng(seed + 100).random((7, 4)) < 0.5).astype(float)
    V = enumerate_binary(4)
    grad = rbm.cd_gradient(params, v_data, V, model_weights=rbm.exact_probability_v(params))
    fd = finite_difference_gradient(lambda p: np.mean(rbm.exact_log_marginal(p, v_data)), params)
    for g, f in zip(grad, fd):
        assert np.max(np.abs(g - f)) / np.max(np.abs(f)) < 1e-6


@pytest.mark.parametrize("seed", SEEDS)
def test_centred_gradient_is_the_gradient_in_centred_coordinates(seed):
    """(5.9): the centred energy -a'.v - b'.h - (v - m)^T W (h - l) differs from (5.1) at
    from_centred(theta') by one constant over all states; centred_gradient of the exact
    gradient equals the central differences of the exact log-likelihood in theta'; and
    to_centred inverts from_centred."""
    rng = np.random.default_rng(seed + 200)
    centred = make_params(seed, D=4, H=3)
    m, l = rng.random(4), rng.random(3)
    plain = rbm.from_centred(centred, m, l)
    V, Hs = enumerate_binary(4), enumerate_binary(3)
    e_centred = -(V @ centred.a)[:, None] - (Hs @ centred.b)[None, :] \
        - np.einsum("vd,dk,hk->vh", V - m, centred.W, Hs - l)  # (2^D, 2^H)
    e_plain = np.array([[rbm.energy(plain, v[None], h[None])[0] for h in Hs] for v in V])
    shift = e_centred - e_plain
    np.testing.assert_allclose(shift, shift[0, 0], atol=1e-12)
    assert abs(shift[0, 0]) > 1e-3  # m^T W l: the forms do differ by a constant
    for a, b in zip(rbm.to_centred(plain, m, l), centred):
        np.testing.assert_allclose(a, b, atol=1e-12)
    v_data = (rng.random((7, 4)) < 0.5).astype(float)
    exact = rbm.cd_gradient(plain, v_data, V, model_weights=rbm.exact_probability_v(plain))
    fd = finite_difference_gradient(
        lambda q: np.mean(rbm.exact_log_marginal(rbm.from_centred(q, m, l), v_data)), centred)
    for name, g, f in zip(RBMParams._fields, rbm.centred_gradient(exact, m, l), fd):
        np.testing.assert_allclose(g, f, atol=1e-7, err_msg=name)
    assert np.max(np.abs(rbm.centred_gradient(exact, m, l).W - exact.W)) > 1e-3


def test_cd_gradient_sign_and_shapes():
    params = make_params(0)
    v = (np.random.default_rng(0).random((5, 4)) < 0.5).astype(float)
    g = rbm.cd_gradient(params, v, v)
    for x, p in zip(g, params):
        assert x.shape == p.shape
        np.testing.assert_array_equal(x, 0.0)  # same data and model samples: zero gradient
    # ascent direction: more visible units on in the data than in the model raises a
    g = rbm.cd_gradient(params, np.ones((1, 4)), np.zeros((1, 4)))
    assert np.all(g.a > 0)


# ------------------------------------------------------------------------------ (5.5)


@pytest.mark.parametrize("seed", SEEDS)
def test_gibbs_transition_matrix_leaves_p_invariant(seed):
    params = make_params(seed, D=4, H=3, scale=2.0)
    K = rbm.exact_transition_matrix(params)
    np.testing.assert_allclose(K.sum(axis=1), 1.0, atol=1e-13)
    assert stationary_distance(rbm.exact_probability_v(params), K) < 1e-12


@pytest.mark.parametrize("seed", SEEDS)
def test_single_blocks_satisfy_detailed_balance(seed):
    params = make_params(seed, D=3, H=3, scale=2.0)
    pi = rbm.exact_probability_vh(params)
    K_h, K_v = rbm.exact_block_kernels(params)
    for K in (K_h, K_v):
        flow = pi[:, None] * K
        assert np.max(np.abs(flow - flow.T)) < 1e-14
        assert stationary_distance(pi, K) < 1e-12
    # the sweep on (v, h), marginalised over the final h, is the chain on v
    sweep = (K_h @ K_v).reshape(8, 8, 8, 8).sum(axis=3)[:, 0, :]
    np.testing.assert_allclose(sweep, rbm.exact_transition_matrix(params), atol=1e-14)


@pytest.mark.parametrize("seed", SEEDS)
def test_gibbs_sweep_frequencies_match_transition_row(seed):
    params = make_params(seed, D=4, H=3, scale=1.5)
    K = rbm.exact_transition_matrix(params)
    start = seed % 16
    N = 20000
    v0 = np.repeat(enumerate_binary(4)[start:start + 1], N, axis=0)
    v_new, h = rbm.gibbs_sweep(params, v0, np.random.default_rng(1000 + seed))
    index = (v_new @ (1 << np.arange(4))).astype(int)
    counts = np.bincount(index, minlength=16)
    assert chi_square_pvalue(counts, K[start]) > 1e-6  # false-alarm rate 1e-6 per seed


def test_gibbs_sweep_draw_order():
    params = make_params(4, D=5, H=3)
    v = (np.random.default_rng(0).random((6, 5)) < 0.5).astype(float)
    v_new, h = rbm.gibbs_sweep(params, v, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    h_ref = (rng.random((6, 3)) < rbm.hidden_probability(params, v)).astype(float)
    v_ref = (rng.random((6, 5)) < rbm.visible_probability(params, h_ref)).astype(float)
    np.testing.assert_array_equal(h, h_ref)
    np.testing.assert_array_equal(v_new, v_ref)


# ------------------------------------------------------------------------------ robustness


def test_extreme_parameters_stay_finite():
    rng = np.random.default_rng(0)
    params = RBMParams(W=1e3 * rng.normal(size=(6, 4)), a=1e3 * rng.normal(size=6),
                       b=1e3 * rng.normal(size=4))
    V = enumerate_binary(6)
    # underflow to 0 is the correct value of e.g. sigmoid(-2000); overflow, 0/0 and log(0) are bugs
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        outputs = [
            rbm.free_energy(params, V),
            rbm.hidden_probability(params, V),
            rbm.pseudo_log_likelihood_exact(params, V),
            rbm.pseudo_log_likelihood(params, V, np.random.default_rng(1)),
            np.asarray(rbm.exact_log_partition(params)),
            rbm.exact_log_marginal(params, V),
            rbm.exact_transition_matrix(params),
            *rbm.cd_gradient(params, V[:10], V[10:], model_weights=np.full(54, 1 / 54)),
            *rbm.gibbs_sweep(params, V, np.random.default_rng(2)),
        ]
    for x in outputs:
        assert np.all(np.isfinite(x))


def test_dtype_preserved_and_inputs_untouched():
    params = make_params(0, D=5, H=3, dtype=np.float32)
    v = (np.random.default_rng(0).random((4, 5)) < 0.5).astype(np.float32)
    before = [x.copy() for x in (*params, v)]
    out = [rbm.free_energy(params, v), rbm.hidden_probability(params, v),
           rbm.pseudo_log_likelihood_exact(params, v),
           *rbm.gibbs_sweep(params, v, np.random.default_rng(0)), *rbm.cd_gradient(params, v, v)]
    for x in out:
        assert x.dtype == np.float32
    for x, y in zip(before, (*params, v)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("centring", [True, "visible"])
def test_estimator_centring_steps_along_the_centred_gradient(centring):
    """BernoulliRBM(centring): the step is from_centred of the centred gradient of the same
    draws' statistics, offsets the batch's mean of v and of p(h | v) (0 with "visible")."""
    from capsnp.estimators import BernoulliRBM

    X = (np.random.default_rng(4).random((60, 12)) < 0.3).astype(float)
    est = BernoulliRBM(n_components=5, n_iter=2, batch_size=20, learning_rate=0.1, random_state=0,
                       backend="numpy").fit(X)
    params, batch = est._params(), est._checked(X[:20])
    chains = (batch[::-1].copy(), None)
    plain, _, _ = est._step(params, batch, chains, np.random.default_rng(5))
    centred, _, _ = est.set_params(centring=centring)._step(params, batch, chains, np.random.default_rng(5))
    m = batch.mean(axis=0)
    l = rbm.hidden_probability(params, batch).mean(axis=0) if centring is True else np.zeros(5)
    expected = rbm.from_centred(rbm.centred_gradient(plain, m, l), m, l)
    for name, x, y in zip(RBMParams._fields, centred, expected):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-13, err_msg=name)
    assert np.max(np.abs(centred.b - plain.b)) > 1e-6  # b absorbs W^T m
    with pytest.raises(ValueError, match="centring must be one of"):
        BernoulliRBM(n_components=5, n_iter=1, centring="all").fit(X)


@pytest.mark.parametrize("K", [1, 4])
def test_minibatch_offsets_bias_the_centred_gradient_by_two_sigma_over_k_b(K):
    """(5.11): where the model is the data's law, the plain PCD gradient has mean 0, but its
    centred W part (5.9) with the offsets (5.10) of minibatches of B rows has mean
    ``-2 Sigma / (K B)``, Sigma (D, H) the covariance of v and p(h = 1 | v). Batches and chains
    are drawn exactly from p(v) of a tiny RBM (enumerated); the mean over T steps is compared."""
    from capsnp.params import CentringOffsets
    from capsnp.training import moving_average

    p = make_params(0, D=4, H=3)
    V = enumerate_binary(4)  # (16, D)
    pv = rbm.exact_probability_v(p)  # (16,)
    P = rbm.hidden_probability(p, V)  # (16, H)
    mu, lam = pv @ V, pv @ P  # (D,), (H,)
    sigma = (V * pv[:, None]).T @ P - np.outer(mu, lam)  # (D, H)
    B, S, T = 5, 7, 20000
    rng = np.random.default_rng(1)
    data, chains = rng.choice(16, size=(T, B), p=pv), rng.choice(16, size=(T, S), p=pv)
    plain_sum, centred_sum, offsets = np.zeros((4, 3)), np.zeros((4, 3)), None
    for t in range(T):
        v, h, vc, hc = V[data[t]], P[data[t]], V[chains[t]], P[chains[t]]  # (B, D), (B, H), (S, D), (S, H)
        grad = RBMParams(W=v.T @ h / B - vc.T @ hc / S, a=v.mean(axis=0) - vc.mean(axis=0),
                         b=h.mean(axis=0) - hc.mean(axis=0))
        offsets = moving_average(offsets, CentringOffsets(v.mean(axis=0), h.mean(axis=0)), K)  # (5.10)
        plain_sum += grad.W
        centred_sum += rbm.centred_gradient(grad, *offsets).W
    scale = np.abs(sigma).max()
    np.testing.assert_allclose(plain_sum / T, 0.0, atol=0.03 * scale)
    np.testing.assert_allclose(centred_sum / T, -2.0 * sigma / (K * B), atol=0.03 * scale)
    assert 2.0 / (K * B) > 0.09  # the predicted bias is at least three tolerances


def test_estimator_centring_average_steps_with_the_moving_average_of_the_offsets():
    """BernoulliRBM(centring_average=K): the offsets are (5.10), ``o + (o_batch - o) / K`` after
    the previous ones carried with the chains (the batch's own at the first step, and for K = 1
    at every step), the step is the centred one with them, and the new offsets are returned."""
    from capsnp.estimators import BernoulliRBM
    from capsnp.params import CentringOffsets

    X = (np.random.default_rng(4).random((60, 12)) < 0.3).astype(float)
    est = BernoulliRBM(n_components=5, n_iter=2, batch_size=20, learning_rate=0.1, random_state=0,
                       centring=True, backend="numpy").fit(X)
    params, batch = est._params(), est._checked(X[:20])
    v0 = batch[::-1].copy()
    plain, _, _ = est.set_params(centring=False)._step(params, batch, (v0, None), np.random.default_rng(5))
    m_batch = batch.mean(axis=0)  # (D,)
    l_batch = rbm.hidden_probability(params, batch).mean(axis=0)  # (H,)
    previous = CentringOffsets(np.full(12, 0.5), np.full(5, 0.2))
    cases = [(0, (v0, None), None),  # batch means, no offsets carried
             (4, (v0, None), (m_batch, l_batch)),  # the first averaged step starts at the batch
             (4, (v0, None, previous), (0.5 + (m_batch - 0.5) / 4, 0.2 + (l_batch - 0.2) / 4)),
             (1, (v0, None, previous), (m_batch, l_batch))]
    for K, chains, expected_offsets in cases:
        est.set_params(centring=True, centring_average=K)
        step, new_chains, _ = est._step(params, batch, chains, np.random.default_rng(5))
        m, l = (m_batch, l_batch) if expected_offsets is None else expected_offsets
        expected = rbm.from_centred(rbm.centred_gradient(plain, m, l), m, l)
        for name, x, y in zip(RBMParams._fields, step, expected):
            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-13, err_msg=f"K={K} {name}")
        if expected_offsets is None:
            assert len(new_chains) == 2
        else:
            np.testing.assert_allclose(new_chains[2].m, m, rtol=1e-12)
            np.testing.assert_allclose(new_chains[2].l, l, rtol=1e-12)
    with pytest.raises(ValueError, match="centring_average=3 needs centring"):
        BernoulliRBM(n_components=5, n_iter=1, centring_average=3).fit(X)
    with pytest.raises(ValueError, match="centring_average=3 needs centring and persistent"):
        BernoulliRBM(n_components=5, n_iter=1, centring=True, centring_average=3,
                     persistent=False).fit(X)
