"""Checks of Model R (MODEL.md sec. 4) against enumeration of tiny models (sec. 7)."""

import numpy as np
import pytest
from scipy.special import logsumexp, softmax as sp_softmax

from capsnp import model_r as mr
from capsnp import rbm
from capsnp.capsules import predictions
from capsnp.exact import enumerate_assignments, enumerate_binary, stationary_distance
from capsnp.params import RParams

from conftest import SEEDS, chi_square_pvalue  # noqa: E402  (CAPSNP_TEST_SEEDS)
from conftest import params_central_difference as finite_difference_gradient  # noqa: E402
SHAPE = (2, 2, 2, 2)  # I, J, d_h, d_v: 16 visible x 16 hidden x 4 routing states


def make_params(seed, I=2, J=2, d_h=2, d_v=2, scale=1.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return RParams(
        W=(scale * rng.normal(size=(I, J, d_h, d_v))).astype(dtype),
        alpha=rng.normal(size=(I, d_v)).astype(dtype),
        gamma=rng.normal(size=(J, d_h)).astype(dtype),
        beta=rng.normal(size=(I, J)).astype(dtype),
    )


def all_states(params):
    I, J, d_h, d_v = params.W.shape
    V = enumerate_binary(I * d_v).reshape(-1, I, d_v)
    Hs = enumerate_binary(J * d_h).reshape(-1, J, d_h)
    A = enumerate_assignments(I, J)
    return V, Hs, A


def joint_log_table(params):
    """-E(v, h, a) for every state by brute force: (Nv, Nh, Na)."""
    V, Hs, A = all_states(params)
    nv, nh, na = len(V), len(Hs), len(A)
    Vg = np.repeat(V, nh * na, axis=0)
    Hg = np.tile(np.repeat(Hs, na, axis=0), (nv, 1, 1))
    Ag = np.tile(A, (nv * nh, 1))
    return -mr.energy(params, Vg, Hg, Ag).reshape(nv, nh, na)


def bernoulli_table(states, p):
    """prod_k p^x (1-p)^(1-x): p (N, K), states (M, K) -> (N, M)."""
    return np.prod(np.where(states[None] > 0.5, p[:, None], 1 - p[:, None]), axis=-1)






def relative_error(g, f):
    return max(np.max(np.abs(x - y)) / np.max(np.abs(y)) for x, y in zip(g, f))


# ------------------------------------------------------------------------------ (4.1)-(4.5), (4.9)


@pytest.mark.parametrize("seed", SEEDS)
def test_conditionals_match_enumerated_joint(seed):
    params = make_params(seed)
    I, J, d_h, d_v = params.W.shape
    V, Hs, A = all_states(params)
    nv, nh, na = len(V), len(Hs), len(A)
    L = joint_log_table(params)  # (Nv, Nh, Na)
    # U (4.4): p(h | v, a)
    p_h = np.exp(L - logsumexp(L, axis=1, keepdims=True))  # (Nv, Nh, Na)
    probs = mr.hidden_probability(params, np.repeat(V, na, axis=0), np.tile(A, (nv, 1)))
    table = bernoulli_table(Hs.reshape(nh, -1), probs.reshape(nv * na, -1)).reshape(nv, na, nh)
    np.testing.assert_allclose(table, p_h.transpose(0, 2, 1), rtol=1e-12, atol=1e-15)
    # R (4.3): p(a | v, h) = prod_i resp_{i a_i}
    p_a = np.exp(L - logsumexp(L, axis=2, keepdims=True))  # (Nv, Nh, Na)
    resp = mr.routing_posterior(params, np.repeat(V, nh, axis=0), np.tile(Hs, (nv, 1, 1)))
    np.testing.assert_allclose(resp.sum(axis=-1), 1.0, atol=1e-14)
    table = np.prod(resp[:, np.arange(I)[None, :], A], axis=-1).reshape(nv, nh, na)
    np.testing.assert_allclose(table, p_a, rtol=1e-12, atol=1e-15)
    # D (4.5): p(v | h, a)
    p_v = np.exp(L - logsumexp(L, axis=0, keepdims=True))  # (Nv, Nh, Na)
    probs = mr.visible_probability(params, np.repeat(Hs, na, axis=0), np.tile(A, (nh, 1)))
    table = bernoulli_table(V.reshape(nv, -1), probs.reshape(nh * na, -1)).reshape(nh, na, nv)
    np.testing.assert_allclose(table, p_v.transpose(1, 2, 0), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
def test_marginals_match_enumerated_joint(seed):
    params = make_params(seed)
    V, Hs, A = all_states(params)
    nv, nh, na = len(V), len(Hs), len(A)
    L = joint_log_table(params)
    # (4.9): h summed out
    la = mr.log_joint_va(params, np.repeat(V, na, axis=0), np.tile(A, (nv, 1))).reshape(nv, na)
    np.testing.assert_allclose(la, logsumexp(L, axis=1), rtol=1e-13)
    # (4.2): a summed out
    lh = mr.log_joint_vh(params, np.repeat(V, nh, axis=0), np.tile(Hs, (nv, 1, 1))).reshape(nv, nh)
    np.testing.assert_allclose(lh, logsumexp(L, axis=2), rtol=1e-13)
    # exact log Z and log p(v)
    log_z = logsumexp(L)
    assert mr.exact_log_partition(params) == pytest.approx(log_z, rel=1e-13)
    np.testing.assert_allclose(mr.exact_log_marginal(params, V), logsumexp(L, axis=(1, 2)) - log_z,
                               rtol=1e-12)
    assert mr.exact_probability_va(params).sum() == pytest.approx(1.0, abs=1e-13)
    np.testing.assert_allclose(mr.exact_probability_vha(params), np.exp(L - log_z).ravel(), rtol=1e-12)


def test_exact_tools_refuse_large_models():
    with pytest.raises(ValueError):
        mr.exact_log_partition(make_params(0, I=12, J=4, d_h=1, d_v=2))


# ------------------------------------------------------------------------------ (4.7)


@pytest.mark.parametrize("seed", SEEDS)
def test_three_block_gibbs_leaves_p_invariant(seed):
    params = make_params(seed, scale=1.5)
    K = mr.exact_transition_matrix(params)
    np.testing.assert_allclose(K.sum(axis=1), 1.0, atol=1e-13)
    assert stationary_distance(mr.exact_probability_va(params), K) < 1e-12


@pytest.mark.parametrize("seed", SEEDS)
def test_single_blocks_satisfy_detailed_balance(seed):
    params = make_params(seed, I=2, J=2, d_h=1, d_v=2, scale=1.5)
    pi = mr.exact_probability_vha(params)
    blocks = mr.exact_block_kernels(params)
    for K in blocks:
        flow = pi[:, None] * K
        assert np.max(np.abs(flow - flow.T)) < 1e-14
        assert stationary_distance(pi, K) < 1e-12
    sweep = blocks[0] @ blocks[1] @ blocks[2]
    assert stationary_distance(pi, sweep) < 1e-12
    # the sweep as a whole is not reversible (MODEL.md 7.2): a visible violation
    flow = pi[:, None] * sweep
    assert 0.5 * np.abs(flow - flow.T).sum() > 1e-6
    # summed over the final h, the sweep from (v, h, a) is the chain on (v, a), whatever h
    nv, nh, na = 16, 4, 4
    marg = sweep.reshape(nv, nh, na, nv, nh, na).sum(axis=4)  # (v, h, a, v', a')
    K = mr.exact_transition_matrix(params).reshape(nv, na, nv, na)
    for ih in range(nh):
        np.testing.assert_allclose(marg[:, ih], K, atol=1e-14)


@pytest.mark.parametrize("seed", SEEDS)
def test_gibbs_sweep_frequencies_match_transition_row(seed):
    params = make_params(seed, scale=1.5)
    I, J, d_h, d_v = params.W.shape
    K = mr.exact_transition_matrix(params)
    V, _, A = all_states(params)
    na = len(A)
    start = (7 * seed + 5) % K.shape[0]
    N = 20000
    v0 = np.repeat(V[start // na][None], N, axis=0)
    a0 = np.repeat(A[start % na][None], N, axis=0)
    v_new, h, a_new, resp = mr.gibbs_sweep(params, v0, a0, np.random.default_rng(500 + seed))
    iv = (v_new.reshape(N, -1) @ (1 << np.arange(I * d_v))).astype(int)
    ia = a_new @ (J ** np.arange(I))
    counts = np.bincount(iv * na + ia, minlength=K.shape[0])
    assert chi_square_pvalue(counts, K[start]) > 1e-6  # false-alarm rate 1e-6 per seed


def test_gibbs_sweep_draw_order_and_responsibilities():
    params = make_params(4, I=3, J=3, d_h=2, d_v=2)
    rng = np.random.default_rng(0)
    v = (rng.random((8, 3, 2)) < 0.5).astype(float)
    a = rng.integers(0, 3, size=(8, 3))
    v_new, h, a_new, resp = mr.gibbs_sweep(params, v, a, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    h_ref = (rng.random((8, 3, 2)) < mr.hidden_probability(params, v, a)).astype(float)
    r = mr.routing_posterior(params, v, h_ref)
    u = rng.random((8, 3))
    a_ref = np.minimum((np.cumsum(r, axis=-1) <= u[..., None]).sum(-1), 2)
    v_ref = (rng.random((8, 3, 2)) < mr.visible_probability(params, h_ref, a_ref)).astype(float)
    np.testing.assert_array_equal(h, h_ref)
    np.testing.assert_allclose(resp, r, rtol=0, atol=0)  # resp is R at the INPUT v and the drawn h
    np.testing.assert_array_equal(a_new, a_ref)
    np.testing.assert_array_equal(v_new, v_ref)
    assert a_new.dtype == np.int64


# ------------------------------------------------------------------------------ J = 1


@pytest.mark.parametrize("seed", SEEDS)
def test_single_parent_is_a_bernoulli_rbm(seed):
    from sklearn.neural_network import BernoulliRBM

    params = make_params(seed, I=3, J=1, d_h=3, d_v=2)
    r = mr.as_rbm(params)
    V = enumerate_binary(6).reshape(-1, 3, 2)
    flat = V.reshape(-1, 6)
    zeros = np.zeros((len(V), 3), dtype=np.int64)
    offset = params.beta.sum()
    np.testing.assert_allclose(-mr.log_joint_va(params, V, zeros), rbm.free_energy(r, flat) - offset,
                               rtol=1e-13)
    assert mr.exact_log_partition(params) == pytest.approx(rbm.exact_log_partition(r) + offset, rel=1e-13)
    np.testing.assert_allclose(mr.exact_log_marginal(params, V), rbm.exact_log_marginal(r, flat), rtol=1e-12)
    np.testing.assert_allclose(mr.hidden_probability(params, V, zeros)[:, 0],
                               rbm.hidden_probability(r, flat), rtol=1e-13)
    Hs = enumerate_binary(3)
    np.testing.assert_allclose(mr.visible_probability(params, Hs[:, None, :], np.zeros((8, 3), np.int64)),
                               rbm.visible_probability(r, Hs).reshape(8, 3, 2), rtol=1e-13)
    np.testing.assert_array_equal(mr.routing_posterior(params, V[:8], Hs[:, None, :]), 1.0)
    sk = BernoulliRBM(n_components=3)
    sk.components_, sk.intercept_hidden_, sk.intercept_visible_ = r.W.T.copy(), r.b.copy(), r.a.copy()
    np.testing.assert_allclose(-mr.log_joint_va(params, V, zeros), sk._free_energy(flat) - offset, rtol=1e-13)


def test_as_rbm_refuses_several_parents():
    with pytest.raises(ValueError, match="J = 1"):
        mr.as_rbm(make_params(0))


# ------------------------------------------------------------------------------ (4.6)


def mean_field_one_image(params, v, tol, max_iter, damping, start=None):
    """Un-vectorised reference: one image, plain loops over children and parents."""
    W, alpha, gamma, beta = params
    I, J, d_h, d_v = W.shape
    u_hat = np.array([[W[i, j] @ v[i] for j in range(J)] for i in range(I)])  # (I, J, d_h)
    c = np.array([sp_softmax(beta[i]) for i in range(I)]) if start is None else start.copy()
    n_iter = max_iter
    for t in range(1, max_iter + 1):
        s = np.array([sum(c[i, j] * u_hat[i, j] for i in range(I)) for j in range(J)])
        mu = 1 / (1 + np.exp(-(gamma + s)))
        c_new = np.array([sp_softmax([beta[i, j] + u_hat[i, j] @ mu[j] for j in range(J)]) for i in range(I)])
        delta = np.max(np.abs(c_new - c))
        c = (1 - damping) * c_new + damping * c
        if delta < tol:
            n_iter = t
            break
    s = np.array([sum(c[i, j] * u_hat[i, j] for i in range(I)) for j in range(J)])
    return c, 1 / (1 + np.exp(-(gamma + s))), n_iter


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_mean_field_matches_single_image_loop(seed, damping):
    params = make_params(seed, I=5, J=3, d_h=4, d_v=3, scale=0.7)
    v = (np.random.default_rng(seed).random((12, 5, 3)) < 0.5).astype(float)
    c, mu, n_iter = mr.mean_field(params, v, tol=1e-4, max_iter=25, damping=damping)
    assert c.shape == (12, 5, 3) and mu.shape == (12, 3, 4) and n_iter.dtype == np.int64
    np.testing.assert_allclose(c.sum(axis=-1), 1.0, atol=1e-14)
    for b in range(12):
        c_ref, mu_ref, n_ref = mean_field_one_image(params, v[b], 1e-4, 25, damping)
        assert n_iter[b] == n_ref
        np.testing.assert_allclose(c[b], c_ref, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(mu[b], mu_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", SEEDS)
def test_mean_field_from_a_given_start_matches_single_image_loop(seed):
    """``start`` replaces the routing at h = 0 as the first c; where the damped iteration has
    converged, one more update stays put; a start of the wrong shape is refused."""
    params = make_params(seed, I=5, J=3, d_h=4, d_v=3, scale=2.0)
    rng = np.random.default_rng(seed)
    v = (rng.random((12, 5, 3)) < 0.5).astype(float)
    for start in rng.dirichlet(np.ones(3), size=(4, 12, 5)):  # (B, I, J) each
        c, mu, n_iter = mr.mean_field(params, v, tol=1e-10, max_iter=200, damping=0.5, start=start)
        for b in range(12):
            c_ref, mu_ref, n_ref = mean_field_one_image(params, v[b], 1e-10, 200, 0.5, start[b])
            assert n_iter[b] == n_ref
            np.testing.assert_allclose(c[b], c_ref, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(mu[b], mu_ref, rtol=1e-10, atol=1e-12)
        again, _, _ = mr.mean_field(params, v, tol=1e-6, max_iter=1, start=c)
        done = n_iter < 200  # (B,) converged images
        np.testing.assert_allclose(again[done], c[done], atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        mr.mean_field(params, v, start=start[:5])


def test_mean_field_reaches_another_fixed_point_from_another_start():
    """With large weights the mean field has several fixed points: on this model (seed 0) four
    random starts end more than 0.5 apart on some patch of some image."""
    params = make_params(0, I=5, J=3, d_h=4, d_v=3, scale=2.0)
    rng = np.random.default_rng(0)
    v = (rng.random((12, 5, 3)) < 0.5).astype(float)
    ends = [mr.mean_field(params, v, tol=1e-10, max_iter=500, damping=0.5, start=start)[0]
            for start in rng.dirichlet(np.ones(3), size=(4, 12, 5))]
    assert max(np.abs(x - y).max() for x in ends for y in ends) > 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_mean_field_fixed_point_and_per_image_stopping(seed):
    params = make_params(seed, I=6, J=4, d_h=3, d_v=4, scale=0.5)
    v = (np.random.default_rng(seed).random((40, 6, 4)) < 0.5).astype(float)
    tol = 1e-3
    c, mu, n_iter = mr.mean_field(params, v, tol=tol, max_iter=30)
    assert len(np.unique(n_iter)) > 1  # images stop on their own
    converged = n_iter < 30
    assert converged.mean() > 0.9
    u_hat = predictions(params.W, v)
    s = np.einsum("bij,bijk->bjk", c, u_hat)
    np.testing.assert_allclose(mu, 1 / (1 + np.exp(-(params.gamma + s))), rtol=1e-13)  # mu = mu(c)
    c_next = sp_softmax(params.beta + np.einsum("bijk,bjk->bij", u_hat, mu), axis=-1)
    residual = np.max(np.abs(c_next - c), axis=(1, 2))
    assert np.all(residual[converged] < tol)
    # max_iter = 0 returns the prior routing
    c0, _, n0 = mr.mean_field(params, v, max_iter=0)
    np.testing.assert_allclose(c0, np.broadcast_to(sp_softmax(params.beta, axis=-1), c0.shape))
    np.testing.assert_array_equal(n0, 0)


@pytest.mark.parametrize("seed", SEEDS)
def test_mean_field_is_equivariant_to_permuting_children_and_parents(seed):
    params = make_params(seed, I=5, J=4, d_h=3, d_v=2, scale=0.7)
    rng = np.random.default_rng(seed)
    v = (rng.random((6, 5, 2)) < 0.5).astype(float)
    pc, pp = rng.permutation(5), rng.permutation(4)
    c, mu, n_iter = mr.mean_field(params, v, tol=1e-8, max_iter=200)
    permuted = RParams(W=params.W[pc][:, pp], alpha=params.alpha[pc], gamma=params.gamma[pp],
                       beta=params.beta[pc][:, pp])
    c2, mu2, n2 = mr.mean_field(permuted, v[:, pc], tol=1e-8, max_iter=200)
    np.testing.assert_allclose(c2, c[:, pc][:, :, pp], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(mu2, mu[:, pp], rtol=1e-10, atol=1e-13)
    np.testing.assert_array_equal(n2, n_iter)


# ------------------------------------------------------------------------------ (4.8)


def exact_model_inputs(params):
    """All (v, h) pairs with resp = R(v, h) and weights p(v, h)."""
    V, Hs, _ = all_states(params)
    nv, nh = len(V), len(Hs)
    Vg, Hg = np.repeat(V, nh, axis=0), np.tile(Hs, (nv, 1, 1))
    p_vh = mr.exact_probability_vha(params).reshape(nv * nh, -1).sum(axis=1)
    return Vg, Hg, mr.routing_posterior(params, Vg, Hg), p_vh


@pytest.mark.parametrize("seed", SEEDS)
def test_model_statistics_are_exact_expectations(seed):
    params = make_params(seed, scale=1.5)
    I, J, d_h, d_v = params.W.shape
    V, Hs, A = all_states(params)
    nv, nh, na = len(V), len(Hs), len(A)
    Vg, Hg, resp, p_vh = exact_model_inputs(params)
    got = mr.model_statistics(params, Vg, Hg, resp, weights=p_vh)
    # E_p[-dE/dtheta] by enumerating (v, h, a) with the indicator [a_i = j] (no Rao-Blackwellisation)
    p = mr.exact_probability_vha(params)
    Vf = np.repeat(V, nh * na, axis=0)
    Hf = np.tile(np.repeat(Hs, na, axis=0), (nv, 1, 1))
    onehot = (np.tile(A, (nv * nh, 1))[..., None] == np.arange(J)).astype(float)
    np.testing.assert_allclose(got.W, np.einsum("s,sij,sjk,sil->ijkl", p, onehot, Hf, Vf), rtol=1e-12)
    np.testing.assert_allclose(got.alpha, np.einsum("s,sil->il", p, Vf), rtol=1e-12)
    np.testing.assert_allclose(got.gamma, np.einsum("s,sjk->jk", p, Hf), rtol=1e-12)
    np.testing.assert_allclose(got.beta, np.einsum("s,sij->ij", p, onehot), rtol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_statistics_give_exact_log_likelihood_gradient(seed):
    params = make_params(seed)
    V, Hs, _ = all_states(params)
    nv, nh = len(V), len(Hs)
    rng = np.random.default_rng(seed + 100)
    data_index = rng.integers(0, nv, size=5)
    v_data = V[data_index]
    # exact data term: E_{p(h, a | v)}[stat] = model_statistics over h ~ p(h | v), Rao-Blackwellised in a
    p_vh = mr.exact_probability_vha(params).reshape(nv, nh, -1).sum(axis=2)  # (Nv, Nh)
    p_h_given_v = p_vh[data_index] / p_vh[data_index].sum(axis=1, keepdims=True)  # (5, Nh)
    Vd, Hd = np.repeat(v_data, nh, axis=0), np.tile(Hs, (5, 1, 1))
    data_term = mr.model_statistics(params, Vd, Hd, mr.routing_posterior(params, Vd, Hd),
                                    weights=p_h_given_v.ravel() / 5)
    Vg, Hg, resp, p_model = exact_model_inputs(params)
    c, mu, _ = mr.mean_field(params, v_data, tol=1e-10, max_iter=500)
    grad = mr.pcd_gradient(params, v_data, Vg, Hg, resp, c=c, mu=mu, model_weights=p_model)
    model_term = mr.model_statistics(params, Vg, Hg, resp, weights=p_model)
    exact_grad = RParams(*(d - m for d, m in zip(data_term, model_term)))
    fd = finite_difference_gradient(lambda p: np.mean(mr.exact_log_marginal(p, v_data)), params)
    assert relative_error(exact_grad, fd) < 1e-6
    # the mean-field data term approximates the exact posterior term: same v statistic, close but
    # not equal for the others; the resulting gradient still points the same way
    mf_data = mr.data_statistics(params, v_data, c, mu)
    np.testing.assert_allclose(mf_data.alpha, data_term.alpha, rtol=1e-12)
    assert relative_error([mf_data.W, mf_data.beta], [data_term.W, data_term.beta]) > 1e-4
    cosine = sum(np.sum(g * f) for g, f in zip(grad, fd)) / np.sqrt(
        sum(np.sum(g * g) for g in grad) * sum(np.sum(f * f) for f in fd))
    assert cosine > 0.95


# ------------------------------------------------------------------------------ (4.10)


@pytest.mark.parametrize("seed", SEEDS)
def test_importance_sampling_matches_exact_log_marginal(seed):
    params = make_params(seed, I=4, J=3, d_h=2, d_v=2)
    V = enumerate_binary(8).reshape(-1, 4, 2)
    v = V[np.random.default_rng(seed).integers(0, 256, size=10)]
    log_z = mr.exact_log_partition(params)
    est, se = mr.log_marginal_is(params, v, 2000, np.random.default_rng(seed + 7), log_z=log_z)
    exact = mr.exact_log_marginal(params, v, log_z=log_z)
    assert np.all(se >= 0) and np.all(np.isfinite(se))  # se = 0 when q is exactly the posterior
    assert np.all(np.abs(est - exact) < 5 * se + 1e-12)
    # unnormalised form and a user-given proposal
    est_u, _ = mr.log_marginal_is(params, v, 2000, np.random.default_rng(seed + 7))
    np.testing.assert_allclose(est_u - log_z, est, rtol=1e-12)
    uniform = np.full((10, 4, 3), 1 / 3)
    est_uni, se_uni = mr.log_marginal_is(params, v, 4000, np.random.default_rng(seed), c=uniform, log_z=log_z)
    assert np.all(np.abs(est_uni - exact) < 5 * se_uni + 1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_importance_sampling_under_a_mixture_of_routings(seed):
    """c of shape (K, B, I, J): the proposal is a mixture of K products, its components drawn
    in turn (stratified, the default) or at random. Either estimate is within its standard
    errors of the exact value, also when one component gives parents probability zero (a
    one-hot routing) and another covers them. The mixture's density by hand: two one-hot
    routings a^1, a^2 draw exactly those, each with q = 1/2, so the weights are 2 p~(v, a^k);
    and a mixture of two equal products is that product, draw by draw."""
    params = make_params(seed, I=4, J=3, d_h=2, d_v=2, scale=1.5)
    V = enumerate_binary(8).reshape(-1, 4, 2)
    rng = np.random.default_rng(seed)
    v = V[rng.integers(0, 256, size=10)]  # (B, I, d_v)
    exact = mr.exact_log_unnormalised_marginal(params, v)  # (B,)
    c_mf, _, _ = mr.mean_field(params, v)  # (B, I, J)
    one_hot = np.eye(3)[rng.integers(0, 3, size=(10, 4))]  # (B, I, J)
    mixtures = [np.stack([c_mf, rng.dirichlet(np.ones(3), size=(10, 4))]),
                np.stack([one_hot, np.full((10, 4, 3), 1 / 3), c_mf])]
    for cs in mixtures:
        for stratified in (True, False):
            est, se = mr.log_marginal_is(params, v, 3000, np.random.default_rng(seed + 7), c=cs,
                                         stratified=stratified)
            assert np.all(np.isfinite(est)) and np.all(se > 0)
            assert np.all(np.abs(est - exact) < 5 * se + 1e-9)
    a_two = rng.integers(0, 3, size=(2, 10, 4))  # (K, B, I) two routings per image
    a_two[1, :, 0] = (a_two[0, :, 0] + 1) % 3  # distinct on patch 0
    est, se = mr.log_marginal_is(params, v, 40, np.random.default_rng(11), c=np.eye(3)[a_two],
                                 stratified=False)
    k = np.random.default_rng(11).integers(0, 2, size=(40, 10))  # (S, B) the components drawn
    log_w = np.stack([mr.log_joint_va(params, v, a_two[k[s], np.arange(10)]) for s in range(40)]) + np.log(2)
    np.testing.assert_allclose(est, logsumexp(log_w, axis=0) - np.log(40), rtol=1e-12)
    def written_out_log_weights(seed, S):
        """log w of S draws from the product c_mf, written out: uniforms, inverse CDF, weights."""
        u = np.random.default_rng(seed).random((S, 10, 4))  # (S, B, I)
        cdf = np.cumsum(c_mf, axis=-1)  # (B, I, J)
        a = np.minimum((u[..., None] >= cdf[None, ..., :-1] / cdf[None, ..., -1:]).sum(-1), 2)  # (S, B, I)
        log_q = np.log(np.take_along_axis(np.broadcast_to(c_mf, a.shape + (3,)), a[..., None], -1)[..., 0]).sum(-1)
        return np.stack([mr.log_joint_va(params, v, a[s]) for s in range(S)]) - log_q  # (S, B)

    # K = 1 is the single-product estimator, written out
    est_1, _ = mr.log_marginal_is(params, v, 300, np.random.default_rng(9), c=c_mf)
    log_w = written_out_log_weights(9, 300)  # (S, B)
    np.testing.assert_allclose(est_1, logsumexp(log_w, axis=0) - np.log(300), rtol=1e-12)
    # one component equal to the others: the mixture is that product, draw by draw the same q
    same = np.stack([c_mf, c_mf])
    est_2, se_2 = mr.log_marginal_is(params, v, 500, np.random.default_rng(3), c=same, stratified=False)
    rng_1 = np.random.default_rng(3)
    rng_1.integers(0, 2, size=(500, 10))  # the component draws the mixture made first
    est_1, se_1 = mr.log_marginal_is(params, v, 500, rng_1, c=c_mf)
    np.testing.assert_allclose(est_2, est_1, rtol=1e-12)
    np.testing.assert_allclose(se_2, se_1, rtol=1e-9)
    # stratified: no component draws, so the same uniforms; its standard error is the stratified
    # one, written out (draws 0, 2, 4, ... from component 0, the others from component 1)
    est_s, se_s = mr.log_marginal_is(params, v, 500, np.random.default_rng(3), c=same)
    est_1, se_1 = mr.log_marginal_is(params, v, 500, np.random.default_rng(3), c=c_mf)
    np.testing.assert_allclose(est_s, est_1, rtol=1e-12)
    w = np.exp(written_out_log_weights(3, 500))  # (S, B)
    var = (250 * np.var(w[0::2], axis=0, ddof=1) + 250 * np.var(w[1::2], axis=0, ddof=1)) / 500**2
    np.testing.assert_allclose(se_s, np.sqrt(var) / w.mean(0), rtol=1e-9)


@pytest.mark.parametrize("S", [3, 7, 40])
def test_stratified_mixture_of_one_hot_routings_is_exact(S):
    """Stratified draws from K one-hot routings hit each a^k exactly n_k times, with
    q(a^k) = n_k / S, so the estimate is sum_k p~(v, a^k) with no error at all, for any S >= K
    (S = 7 splits 3 : 2 : 2), and its standard error is zero once every component has two
    draws (with one, S = 3, it falls back to the pooled one). Drawn at random, the same mixture
    gives a noisy estimate: the randomness the stratified draws remove."""
    params = make_params(5, I=4, J=3, d_h=2, d_v=2, scale=1.5)
    rng = np.random.default_rng(5)
    v = enumerate_binary(8).reshape(-1, 4, 2)[rng.integers(0, 256, size=6)]  # (B, I, d_v)
    a_k = np.stack([np.zeros((6, 4), int), np.ones((6, 4), int), np.full((6, 4), 2)])  # (K, B, I)
    exact = logsumexp(np.stack([mr.log_joint_va(params, v, a) for a in a_k]), axis=0)  # (B,)
    est, se = mr.log_marginal_is(params, v, S, np.random.default_rng(0), c=np.eye(3)[a_k])
    np.testing.assert_allclose(est, exact, rtol=1e-12)
    if S >= 6:
        np.testing.assert_allclose(se, 0.0, atol=1e-12)
    else:
        assert np.all(se > 0) and np.all(np.isfinite(se))
    noisy = [mr.log_marginal_is(params, v, S, np.random.default_rng(r), c=np.eye(3)[a_k],
                                stratified=False)[0] for r in range(20)]
    assert np.max(np.abs(np.stack(noisy) - exact)) > 1e-3


# ------------------------------------------------------------------------------ robustness


def test_extreme_parameters_stay_finite():
    params = make_params(0, I=3, J=2, d_h=2, d_v=2, scale=1e3)
    params = params._replace(alpha=1e3 * params.alpha, gamma=1e3 * params.gamma, beta=1e3 * params.beta)
    V = enumerate_binary(6).reshape(-1, 3, 2)
    a = np.random.default_rng(0).integers(0, 2, size=(64, 3))
    Hs = np.random.default_rng(1).integers(0, 2, size=(64, 2, 2)).astype(float)
    # underflow to 0 is the correct value of e.g. sigmoid(-2000); overflow, 0/0 and log(0) are bugs
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        c, mu, n_iter = mr.mean_field(params, V)
        v_new, h, a_new, resp = mr.gibbs_sweep(params, V, a, np.random.default_rng(2))
        outputs = [
            mr.energy(params, V, Hs, a), mr.routing_posterior(params, V, Hs),
            mr.hidden_probability(params, V, a), mr.visible_probability(params, Hs, a),
            c, mu, v_new, h, resp, mr.log_joint_va(params, V, a), mr.log_joint_vh(params, V, Hs),
            *mr.log_marginal_is(params, V, 50, np.random.default_rng(3)),
            np.asarray(mr.exact_log_partition(params)), mr.exact_log_marginal(params, V),
            mr.exact_transition_matrix(params),
            *mr.pcd_gradient(params, V, V, h, resp, c=c, mu=mu),
        ]
    for x in outputs:
        assert np.all(np.isfinite(x))
    np.testing.assert_allclose(c.sum(axis=-1), 1.0, atol=1e-12)


def test_dtype_preserved_and_inputs_untouched():
    params = make_params(0, I=3, J=2, d_h=2, d_v=2, dtype=np.float32)
    rng = np.random.default_rng(0)
    v = (rng.random((4, 3, 2)) < 0.5).astype(np.float32)
    a = rng.integers(0, 2, size=(4, 3))
    before = [x.copy() for x in (*params, v, a)]
    c, mu, _ = mr.mean_field(params, v)
    v_new, h, a_new, resp = mr.gibbs_sweep(params, v, a, np.random.default_rng(1))
    out = [mr.energy(params, v, h, a), mr.routing_posterior(params, v, h),
           mr.hidden_probability(params, v, a), mr.visible_probability(params, h, a), c, mu, v_new, h, resp, mr.log_joint_va(params, v, a),
           *mr.log_marginal_is(params, v, 20, np.random.default_rng(2)),
           *mr.pcd_gradient(params, v, v, h, resp, c=c, mu=mu)]
    for x in out:
        assert x.dtype == np.float32
    for x, y in zip(before, (*params, v, a)):
        np.testing.assert_array_equal(x, y)
