"""Models G and S (docs/MODEL_G.md): Model P with a Gaussian pose (G) or a pose of binary
+1/-1 units (S) under each capsule.

Checked on tiny models in float64: the pose integral or sum, the conditionals and the free
energy (G.1-G.5, S.1-S.5) by quadrature and enumeration, the gradients (G.4, S.4) by central
differences, the exact MH sweep's invariance, AIS against exact log Z, the Numba twins, and the
estimator.
"""

import itertools


import numpy as np
import pytest
from conftest import binary, central_difference, params_central_difference, random_pparams, rel_error
from numpy.polynomial.hermite_e import hermegauss

from capsnp import CapsulePoE, kernels
from capsnp import model_p as mp
from capsnp.ais import ais_log_partition, default_betas
from capsnp.capsules import predictions
from capsnp.exact import enumerate_binary, stationary_distance
from capsnp.params import GParams, SParams
from capsnp.routing import dynamic_routing


def random_gparams(rng, I=3, d_v=2, J=2, d_h=2, scale=1.0, dtype=np.float64, kind=GParams):
    """A tiny Model G (or S, with ``kind=SParams``) with every parameter random."""
    p = random_pparams(rng, I, d_v, J, d_h, scale, dtype)
    return kind(*p, m=rng.normal(0.0, 1.0, (J, d_h)).astype(dtype))


KINDS = {"G": GParams, "S": SParams}


def routed(params, V, n_iter=3):
    _, s, _ = dynamic_routing(predictions(params.W, V), n_iter, params.beta)
    return s  # (B, J, d_h)


def gaussian_expectation(f, mean, n_nodes=40):
    """E[f(x)] for x ~ N(mean, I) in 2 dimensions by tensor Gauss-Hermite quadrature."""
    t, w = hermegauss(n_nodes)  # nodes and weights for the weight exp(-t^2 / 2)
    w = w / np.sqrt(2 * np.pi)
    X = np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2) + mean  # (n^2, 2)
    weights = np.outer(w, w).ravel()  # (n^2,)
    return np.tensordot(weights, f(X), axes=1)  # f(X): (n^2,) or (n^2, k)


def test_pose_integral_gives_the_conditionals_and_free_energy(seed):
    """(G.1) sum over z and integral over the poses of exp(-E) is exp(-F) (G.3); p(z | v) is
    (G.2); the pose's conditional mean given firing is s_j + m_j (G.5)."""
    rng = np.random.default_rng(seed)
    p = random_gparams(rng, scale=0.5)
    V = binary(rng, (4, 3, 2))
    s = routed(p, V)  # (B, J, d_h)
    F = mp.free_energy(p, V)
    prob = mp.firing_probability(p, V)
    for b in range(len(V)):
        log_terms = []
        for j in range(2):
            # the pose prior N(m_j, I); z_j = 1 multiplies the weight by exp(rho_j + x . s_j)
            on = gaussian_expectation(lambda X: np.exp(p.rho[j] + X @ s[b, j]), p.m[j])
            log_terms.append(np.log1p(on))
            np.testing.assert_allclose(on / (1 + on), prob[b, j], rtol=1e-10)
            mean_on = gaussian_expectation(lambda X: X * np.exp(X @ s[b, j])[:, None], p.m[j]) / \
                gaussian_expectation(lambda X: np.exp(X @ s[b, j]), p.m[j])
            np.testing.assert_allclose(mean_on, s[b, j] + p.m[j], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(F[b], -np.sum(p.alpha * V[b]) - sum(log_terms), rtol=1e-10)


def test_pose_sum_gives_the_conditionals_and_free_energy_of_model_s(seed):
    """(S.1) summing exp(-E) over z and over every pose x in {-1, +1}^{d_h} gives exp(-F) (S.3)
    up to the constant prod_jk 2 cosh(m_jk); p(z | v) is (S.2); the pose mean given firing is
    tanh(s_j + m_j) (S.5)."""
    rng = np.random.default_rng(seed)
    p = random_gparams(rng, scale=0.5, kind=SParams)
    V = binary(rng, (4, 3, 2))
    s = routed(p, V)  # (B, J, d_h)
    X = np.array(list(itertools.product([-1.0, 1.0], repeat=2)))  # (4, d_h): every pose
    F = mp.free_energy(p, V)
    prob = mp.firing_probability(p, V)
    const = np.sum(np.log(2 * np.cosh(p.m)))
    for b in range(len(V)):
        total = -np.sum(p.alpha * V[b])
        for j in range(2):
            off = np.exp(X @ p.m[j])  # (4,): weights of the poses of a silent capsule
            on = np.exp(p.rho[j] + X @ (s[b, j] + p.m[j]))  # (4,): of a firing one
            total -= np.log(off.sum() + on.sum())
            np.testing.assert_allclose(on.sum() / (off.sum() + on.sum()), prob[b, j], rtol=1e-10)
            np.testing.assert_allclose(on @ X / on.sum(), np.tanh(s[b, j] + p.m[j]), rtol=1e-10)
        np.testing.assert_allclose(F[b], total + const, rtol=1e-10)


def test_firing_probability_against_enumerating_z(seed):
    """Hidden capsules are conditionally independent given v, each firing with (G.2)."""
    rng = np.random.default_rng(seed)
    p = random_gparams(rng)
    V = binary(rng, (5, 3, 2))
    s = routed(p, V)
    logit = p.rho + np.einsum("jh,bjh->bj", p.m, s) + 0.5 * np.sum(s * s, -1)  # (B, J)
    Z = enumerate_binary(2)  # (4, J)
    log_w = Z @ logit.T  # (4, B): -E(v, z) up to the alpha term, poses integrated
    post = np.exp(log_w - np.logaddexp.reduce(log_w, axis=0))  # (4, B)
    np.testing.assert_allclose((post.T @ Z), mp.firing_probability(p, V), rtol=1e-12)
    pose = mp.capsule_pose(p, V)
    np.testing.assert_allclose(np.linalg.norm(pose, axis=-1), mp.firing_probability(p, V), rtol=1e-12)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_free_energy_ds_matches_central_differences(seed, kind):
    rng = np.random.default_rng(seed)
    p = random_gparams(rng, kind=KINDS[kind])
    expert = mp.expert_of(p)
    s = rng.normal(size=(3, 2, 2))

    def total(x):
        return -mp.softplus(mp.firing_logit(p.rho, x, expert, p.m)).sum()

    assert rel_error(mp.free_energy_ds(p.rho, s, expert, p.m), central_difference(total, s)) < 1e-6


@pytest.mark.parametrize("mode", ["full", "frozen"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gradients_match_central_differences(seed, mode, kind):
    """(G.4, S.4) every parameter, m included; ``frozen`` holds the coupling coefficients fixed."""
    rng = np.random.default_rng(seed)
    p = random_gparams(rng, kind=KINDS[kind])
    V = binary(rng, (4, 3, 2))
    _, g = mp.free_energy_grad(p, V, mode=mode)
    assert isinstance(g, KINDS[kind])
    if mode == "full":
        num = params_central_difference(lambda q: mp.free_energy(q, V).mean(), p)
    else:
        c, _, _ = dynamic_routing(predictions(p.W, V), 3, p.beta)

        def mean_F_frozen(q):
            s = np.einsum("bij,bijh->bjh", c, predictions(q.W, V))
            if kind == "G":
                logit = q.rho + np.einsum("jh,bjh->bj", q.m, s) + 0.5 * np.sum(s * s, -1)
            else:
                logit = q.rho + np.sum(np.log(np.cosh(s + q.m)) - np.log(np.cosh(q.m)), -1)
            return (-np.einsum("bid,id->b", V, q.alpha) - np.logaddexp(0, logit).sum(1)).mean()

        num = params_central_difference(mean_F_frozen, p)._replace(beta=np.zeros_like(p.beta))
    for name in KINDS[kind]._fields:
        assert rel_error(getattr(g, name), getattr(num, name)) < 1e-6, name


def test_zero_weights_are_stationary_for_w_only_through_the_quadratic_term(seed):
    """At W = 0 Model G's W-gradient is not zero (unlike Model P's): the linear term m . s
    gives every capsule an RBM-like start (G.6)."""
    rng = np.random.default_rng(seed)
    p = random_gparams(rng)
    p = p._replace(W=np.zeros_like(p.W))
    data, other = binary(rng, (8, 3, 2)), binary(rng, (8, 3, 2))
    g = mp.free_energy_grad(p, data)[1].W - mp.free_energy_grad(p, other)[1].W
    assert np.max(np.abs(g)) > 1e-3
    q = p._replace(m=np.zeros_like(p.m))  # with m = 0 the pose prior is centred: W = 0 is stationary
    assert np.all(mp.free_energy_grad(q, data)[1].W == 0.0)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_mh_sweep_leaves_target_invariant(seed, kind):
    rng = np.random.default_rng(seed)
    p = random_gparams(rng, kind=KINDS[kind])
    X = mp._all_states(p)
    pi = np.exp(-mp.free_energy(p, X) - mp.exact_log_partition(p))
    K = mp.exact_transition_matrix(p, "mh")
    np.testing.assert_allclose(K.sum(axis=1), 1.0, rtol=1e-12)
    assert stationary_distance(pi, K) < 1e-12
    for i in range(3):
        flow = pi[:, None] * mp.exact_block_kernel(p, i)
        assert np.max(np.abs(flow - flow.T)) < 1e-14


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reconstruct_heuristic_is_refused(kind):
    p = random_gparams(np.random.default_rng(0), kind=KINDS[kind])
    V = binary(np.random.default_rng(1), (2, 3, 2))
    for fn in (mp.reconstruct_step, kernels.model_p.reconstruct_step):
        with pytest.raises(ValueError, match="Model P"):
            fn(p, V, np.random.default_rng(0))
    with pytest.raises(ValueError, match="mh"):
        expert = {"G": "gaussian", "S": "spin"}[kind]
        CapsulePoE(2, 2, patch=2, expert=expert, sampler="reconstruct").fit(np.zeros((4, 16)))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_ais_agrees_with_exact_log_partition(seed, kind):
    p = random_gparams(np.random.default_rng(seed), kind=KINDS[kind])
    res = ais_log_partition(p, n_runs=64, betas=default_betas(fast=True)[::2], random_state=seed)
    assert abs(res.log_z - mp.exact_log_partition(p)) < 5 * res.std_error + 0.02


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_zero_weights_give_the_base_log_partition_exactly(kind):
    """With W = 0 every expert contributes softplus(rho_j) (not 0 as in Model P): AIS's base
    model must include it (G.7)."""
    p = random_gparams(np.random.default_rng(3), kind=KINDS[kind])
    p = p._replace(W=np.zeros_like(p.W))
    res = ais_log_partition(p, n_runs=8, betas=np.linspace(0, 1, 20), random_state=0)
    assert np.max(np.abs(res.log_weights)) < 1e-12
    assert res.log_z == pytest.approx(mp.exact_log_partition(p), abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kernels_match_reference(seed, dtype, kind):
    rng = np.random.default_rng(seed)
    p = random_gparams(rng, I=5, d_v=4, J=3, d_h=4, dtype=dtype, kind=KINDS[kind])
    V = binary(rng, (7, 5, 4), dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(kernels.model_p.free_energy(p, V), mp.free_energy(p, V), **tol)
    np.testing.assert_allclose(kernels.model_p.firing_probability(p, V), mp.firing_probability(p, V), **tol)
    for mode in ("full", "frozen"):
        F_k, g_k = kernels.model_p.free_energy_grad(p, V, 3, mode)
        F_r, g_r = mp.free_energy_grad(p, V, 3, mode)
        assert isinstance(g_k, KINDS[kind])
        np.testing.assert_allclose(F_k, F_r, **tol)
        for a, b in zip(g_k, g_r):
            np.testing.assert_allclose(a, b, **tol)
    if dtype == np.float64:  # same draws, same chains
        v_k, acc_k = kernels.model_p.mh_sweep(p, V, np.random.default_rng(seed))
        v_r, acc_r = mp.mh_sweep(p, V, np.random.default_rng(seed))
        np.testing.assert_array_equal(v_k, v_r)
        np.testing.assert_allclose(acc_k, acc_r)


@pytest.mark.parametrize("expert", ["gaussian", "spin"])
def test_estimator_fits_saves_and_evaluates(tmp_path, expert):
    rng = np.random.default_rng(0)
    templates = np.array([[1, 1, 0, 0] * 4, [0, 0, 1, 1] * 4], dtype=float)  # two 4x4 patterns
    X = templates[rng.integers(0, 2, 100)]
    X = np.abs(X - (rng.random(X.shape) < 0.05))  # 5% of pixels flipped, (100, 16)
    lr = {"gaussian": 0.01, "spin": 0.1}[expert]  # G diverges at larger rates (G.9)
    est = CapsulePoE(3, 2, patch=2, expert=expert, n_iter=10, batch_size=20, learning_rate=lr,
                     random_state=0).fit(X)
    kind = {"gaussian": GParams, "spin": SParams}[expert]
    assert est.m_.shape == (3, 2) and isinstance(est._params(), kind)
    noise = (rng.random((100, 16)) < X.mean(0)).astype(float)  # same pixel means, no correlations
    assert est.free_energy(X).mean() < est.free_energy(noise).mean()
    est.save(tmp_path / "g.npz")
    from capsnp.estimators import load_estimator

    back = load_estimator(tmp_path / "g.npz")
    np.testing.assert_array_equal(back.m_, est.m_)
    np.testing.assert_allclose(back.free_energy(X), est.free_energy(X), rtol=1e-12)
    from capsnp import exact_log_partition

    log_z = exact_log_partition(est)
    ll = est.log_likelihood(enumerate_binary(16), log_z)
    assert abs(np.logaddexp.reduce(ll)) < 1e-9  # a normalised distribution over all 2^16 images
