"""Model P (MODEL.md sec. 3): conditionals, free energy, gradients, samplers, on tiny models."""

import numpy as np
import pytest
from conftest import binary, central_difference, random_pparams, rel_error

from capsnp import model_p as mp
from capsnp.capsules import predictions
from capsnp.exact import enumerate_binary, stationary_distance
from capsnp.ops import squash
from capsnp.routing import dynamic_routing


def energy(params, v, z, n_iter=3):
    """(3.1) E(v, z) = -alpha.v - sum_j z_j (rho_j + log |s_j(v)|^2), for one v (I, d_v), z (J,)."""
    _, s, _ = dynamic_routing(predictions(params.W, v[None]), n_iter, params.beta)
    return -np.sum(params.alpha * v) - np.sum(z * (params.rho + np.log(np.sum(s[0] ** 2, -1))))


def test_conditionals_and_free_energy_by_enumerating_z(seed):
    rng = np.random.default_rng(seed)
    p = random_pparams(rng)
    J = p.rho.shape[0]
    Z = enumerate_binary(J)  # (2^J, J)
    V = binary(rng, (5, 3, 2))
    F = mp.free_energy(p, V)
    probs = mp.firing_probability(p, V)
    for b, v in enumerate(V):
        logw = np.array([-energy(p, v, z) for z in Z])  # (2^J,)
        np.testing.assert_allclose(F[b], -np.logaddexp.reduce(logw), rtol=1e-12)
        post = np.exp(logw - np.logaddexp.reduce(logw))  # exact p(z | v)
        np.testing.assert_allclose(post @ Z, probs[b], rtol=1e-10)
        # conditional independence: p(z | v) = prod_j p(z_j | v)
        prod = np.prod(np.where(Z > 0, probs[b], 1 - probs[b]), axis=1)
        np.testing.assert_allclose(post, prod, rtol=1e-10)


def test_firing_probability_is_squash_length_at_zero_gain(seed):
    rng = np.random.default_rng(seed)
    p = random_pparams(rng)._replace(rho=np.zeros(2))
    V = binary(rng, (6, 3, 2))
    _, s, _ = dynamic_routing(predictions(p.W, V), 3, p.beta)
    np.testing.assert_allclose(mp.firing_probability(p, V), np.linalg.norm(squash(s), axis=-1), rtol=1e-12)
    pose = mp.capsule_pose(p, V)
    np.testing.assert_allclose(np.linalg.norm(pose, axis=-1), mp.firing_probability(p, V), rtol=1e-12)


@pytest.mark.parametrize("name", ["W", "alpha", "rho", "beta"])
def test_full_gradient_matches_central_differences(seed, name):
    rng = np.random.default_rng(seed)
    p = random_pparams(rng)
    V = binary(rng, (4, 3, 2))
    _, g = mp.free_energy_grad(p, V, mode="full")

    def mean_F(x):
        return mp.free_energy(p._replace(**{name: x}), V).mean()

    assert rel_error(getattr(g, name), central_difference(mean_F, getattr(p, name))) < 1e-6


def test_frozen_gradient_is_the_gradient_with_c_held_constant(seed):
    rng = np.random.default_rng(seed)
    p = random_pparams(rng)
    V = binary(rng, (4, 3, 2))
    c, _, _ = dynamic_routing(predictions(p.W, V), 3, p.beta)

    def mean_F_frozen(W):
        s = np.einsum("bij,bijh->bjh", c, predictions(W, V))  # c fixed at the current routing
        return (-np.einsum("bid,id->b", V, p.alpha) - np.log1p(np.exp(p.rho) * np.sum(s * s, -1)).sum(1)).mean()

    _, g_frozen = mp.free_energy_grad(p, V, mode="frozen")
    assert rel_error(g_frozen.W, central_difference(mean_F_frozen, p.W)) < 1e-6
    assert np.all(g_frozen.beta == 0.0)
    _, g_full = mp.free_energy_grad(p, V, mode="full")
    np.testing.assert_allclose(g_frozen.alpha, g_full.alpha)
    np.testing.assert_allclose(g_frozen.rho, g_full.rho)
    cos = np.sum(g_full.W * g_frozen.W) / np.linalg.norm(g_full.W) / np.linalg.norm(g_frozen.W)
    assert -1.0 <= cos < 1.0 - 1e-6  # routing-through terms are not negligible


def test_zero_weights_are_a_stationary_point(seed):
    rng = np.random.default_rng(seed)
    p = random_pparams(rng)
    p = p._replace(W=np.zeros_like(p.W))
    for mode in ("full", "frozen"):
        _, g = mp.free_energy_grad(p, binary(rng, (8, 3, 2)), mode=mode)
        assert np.all(g.W == 0.0) and np.all(g.rho == 0.0)


def exact_pi(p):
    X = mp._all_states(p)
    return np.exp(-mp.free_energy(p, X) - mp.exact_log_partition(p))


def test_mh_sweep_leaves_target_invariant_and_blocks_are_reversible(seed):
    rng = np.random.default_rng(seed)
    p = random_pparams(rng)
    pi = exact_pi(p)
    K = mp.exact_transition_matrix(p, "mh")
    np.testing.assert_allclose(K.sum(axis=1), 1.0, rtol=1e-12)
    assert stationary_distance(pi, K) < 1e-12
    for i in range(3):
        Ki = mp.exact_block_kernel(p, i)
        flow = pi[:, None] * Ki
        assert np.max(np.abs(flow - flow.T)) < 1e-14  # detailed balance per block
    flow = pi[:, None] * K
    assert np.max(np.abs(flow - flow.T)) > 1e-6  # the systematic sweep as a whole is not reversible


def test_reconstruct_heuristic_is_not_invariant(seed):
    rng = np.random.default_rng(seed)
    p = random_pparams(rng)
    pi = exact_pi(p)
    K = mp.exact_transition_matrix(p, "reconstruct")
    np.testing.assert_allclose(K.sum(axis=1), 1.0, rtol=1e-12)
    w, vecs = np.linalg.eig(K.T)
    stat = np.real(vecs[:, np.argmax(np.real(w))])
    stat /= stat.sum()
    tv = 0.5 * np.abs(stat - pi).sum()
    assert stationary_distance(pi, K) > 1e-3 and tv > 1e-2  # far above rounding noise


def multinomial_agrees(counts, probs, n, z=5.0):
    """Each empirical frequency within z binomial standard errors of its probability."""
    se = np.sqrt(np.maximum(probs * (1 - probs), 1.0 / n) / n)
    return np.all(np.abs(counts / n - probs) <= z * se)


@pytest.mark.parametrize("sampler", ["mh", "reconstruct"])
def test_sampler_frequencies_match_exact_transition_row(seed, sampler):
    rng = np.random.default_rng(seed)
    p = random_pparams(rng)
    K = mp.exact_transition_matrix(p, sampler)
    start = int(rng.integers(K.shape[0]))
    x0 = mp._all_states(p)[start]
    n = 20000
    V = np.broadcast_to(x0, (n,) + x0.shape).copy()
    if sampler == "mh":
        V1, acc = mp.mh_sweep(p, V, np.random.default_rng(seed + 100))
        assert np.all((acc >= 0) & (acc <= 1))
    else:
        V1, _ = mp.reconstruct_step(p, V, np.random.default_rng(seed + 100))
    counts = np.bincount(mp._state_index(V1), minlength=K.shape[0])
    assert multinomial_agrees(counts, K[start], n)
    np.testing.assert_array_equal(V, np.broadcast_to(x0, V.shape))  # input not modified


def test_pseudo_log_likelihood_against_enumeration(seed):
    rng = np.random.default_rng(seed)
    p = random_pparams(rng)
    V = binary(rng, (3, 3, 2))
    logp = mp.exact_log_marginal(p, V)
    expected = np.zeros(3)
    for k in range(6):
        Vf = V.reshape(3, 6).copy()
        Vf[:, k] = 1 - Vf[:, k]
        expected += logp - np.logaddexp(logp, mp.exact_log_marginal(p, Vf.reshape(3, 3, 2)))
    np.testing.assert_allclose(mp.pseudo_log_likelihood(p, V), expected, rtol=1e-10)
    est = np.mean([mp.pseudo_log_likelihood(p, V, np.random.default_rng(t)) for t in range(400)], axis=0)
    np.testing.assert_allclose(est, expected, rtol=0.15)  # unbiased one-flip estimate


def test_exact_gradient_ascent_raises_exact_log_likelihood(seed):
    """(7.5) The exact log-likelihood gradient: -dF(data) + E_p[dF], both by enumeration."""
    rng = np.random.default_rng(seed)
    p = random_pparams(rng, scale=0.5)
    data = binary(rng, (10, 3, 2))
    X = mp._all_states(p)

    def loglik(q):
        return mp.exact_log_marginal(q, data).mean()

    _, g_data = mp.free_energy_grad(p, data)
    pi = exact_pi(p)
    # E_p[dF] as a pi-weighted sum: the batch-mean gradient over all states, weighted per state
    g_model = [mp.free_energy_grad(p, X[k : k + 1])[1] for k in range(len(X))]
    ascent = [-gd + sum(pi[k] * gm[f] for k, gm in enumerate(g_model)) for f, gd in enumerate(g_data)]
    num = central_difference(lambda W: loglik(p._replace(W=W)), p.W)
    assert rel_error(ascent[0], num) < 1e-6
    q = p._replace(**{f: getattr(p, f) + 0.05 * a for f, a in zip(p._fields, ascent)})
    assert loglik(q) > loglik(p)


def test_float32_keeps_dtype_and_agrees():
    rng = np.random.default_rng(0)
    p = random_pparams(rng)
    V = binary(rng, (4, 3, 2))
    p32 = type(p)(*(a.astype(np.float32) for a in p))
    F32, g32 = mp.free_energy_grad(p32, V.astype(np.float32))
    F64, g64 = mp.free_energy_grad(p, V)
    assert F32.dtype == np.float32 and all(a.dtype == np.float32 for a in g32)
    np.testing.assert_allclose(F32, F64, rtol=1e-4, atol=1e-4)
    v1, acc = mp.mh_sweep(p32, V.astype(np.float32), np.random.default_rng(0))
    assert v1.dtype == np.float32
