"""Dynamic routing (2.1) and its VJP (2.2)."""

import warnings

import numpy as np
import pytest
from conftest import central_difference, rel_error

from capsnp.capsules import capsule_layout, from_capsules, predictions, predictions_vjp_W, to_capsules
from capsnp.ops import softmax, squash
from capsnp.routing import dynamic_routing, dynamic_routing_trace, dynamic_routing_vjp


def naive_routing(u_hat, r, beta):
    """Sabour's Procedure 1 written with loops over children and parents (one image)."""
    I, J, d_h = u_hat.shape
    b = np.array(beta, dtype=float)
    for t in range(r):
        c = np.array([softmax(b[i]) for i in range(I)])  # softmax over parents, per child
        s = np.array([sum(c[i, j] * u_hat[i, j] for i in range(I)) for j in range(J)])
        v = np.array([squash(s[j]) for j in range(J)])
        if t < r - 1:
            for i in range(I):
                for j in range(J):
                    b[i, j] += u_hat[i, j] @ v[j]
    return c, s, v


@pytest.mark.parametrize("r", [1, 2, 3, 5])
def test_routing_matches_naive_loops(seed, r):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(3, 4, 3, 5))
    beta = rng.normal(size=(4, 3))
    c, s, v = dynamic_routing(u, r, beta)
    for b in range(3):
        cn, sn, vn = naive_routing(u[b], r, beta)
        np.testing.assert_allclose(c[b], cn, rtol=1e-12)
        np.testing.assert_allclose(s[b], sn, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(v[b], vn, rtol=1e-12, atol=1e-14)


def test_coefficients_sum_to_one_over_parents(seed):
    rng = np.random.default_rng(seed)
    c, _, _ = dynamic_routing(rng.normal(size=(4, 6, 5, 3)) * 3, 3)
    np.testing.assert_allclose(c.sum(axis=2), 1.0, rtol=1e-12)
    assert not np.allclose(c.sum(axis=1), 1.0)  # not over children: the common bug


def test_routing_equivariant_to_permutations(seed):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(2, 5, 4, 3))
    beta = rng.normal(size=(5, 4))
    pi, pj = rng.permutation(5), rng.permutation(4)
    c, s, v = dynamic_routing(u, 3, beta)
    c2, s2, v2 = dynamic_routing(u[:, pi][:, :, pj], 3, beta[pi][:, pj])
    np.testing.assert_allclose(c2, c[:, pi][:, :, pj], rtol=1e-12)
    np.testing.assert_allclose(s2, s[:, pj], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(v2, v[:, pj], rtol=1e-12, atol=1e-14)


def test_routing_finite_at_zero_and_huge_predictions():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            c0, s0, v0 = dynamic_routing(np.zeros((2, 3, 4, 5)), 3)
            c1, s1, v1 = dynamic_routing(np.random.default_rng(0).normal(size=(2, 3, 4, 5)) * 1e6, 3)
    np.testing.assert_allclose(c0, 0.25)
    assert np.all(s0 == 0) and np.all(v0 == 0)
    for x in (c1, s1, v1):
        assert np.all(np.isfinite(x))
    np.testing.assert_allclose(c1.sum(axis=2), 1.0)


@pytest.mark.parametrize("r", [1, 3])
def test_routing_vjp_matches_central_differences(seed, r):
    rng = np.random.default_rng(seed)
    B, I, J, d_h = 2, 3, 4, 3
    u = rng.normal(size=(B, I, J, d_h))
    beta = rng.normal(size=(I, J))
    gs, gv, gc = rng.normal(size=(B, J, d_h)), rng.normal(size=(B, J, d_h)), rng.normal(size=(B, I, J))

    def loss(u_, beta_):
        c, s, v = dynamic_routing(u_, r, beta_)
        return np.sum(c * gc) + np.sum(s * gs) + np.sum(v * gv)

    g_u, g_beta = dynamic_routing_vjp(u, dynamic_routing_trace(u, r, beta), gs, gv, gc, prior_shape=(I, J))
    assert rel_error(g_u, central_difference(lambda x: loss(x, beta), u)) < 1e-6
    assert rel_error(g_beta, central_difference(lambda x: loss(u, x), beta)) < 1e-6
    # per-image prior logits: the adjoint keeps the batch axis
    _, g_beta_b = dynamic_routing_vjp(u, dynamic_routing_trace(u, r, beta), gs, gv, gc)
    np.testing.assert_allclose(g_beta_b.sum(axis=0), g_beta, rtol=1e-12)


def test_patching_round_trip_and_layout():
    X = np.arange(2 * 28 * 28).reshape(2, 784)
    for p in (1, 2, 4, 7, (4, 7)):
        v = to_capsules(X, 28, p)
        I, d_v = capsule_layout(28, p)
        assert v.shape == (2, I, d_v)
        np.testing.assert_array_equal(from_capsules(v, 28, p), X)
    v = to_capsules(X, (28, 28), 4)
    np.testing.assert_array_equal(v[0, 1], X[0].reshape(28, 28)[0:4, 4:8].ravel())  # row-major grid
    with pytest.raises(ValueError, match="does not tile"):
        to_capsules(X, 28, 5)


def test_predictions_and_their_W_adjoint(seed):
    rng = np.random.default_rng(seed)
    W, v = rng.normal(size=(3, 2, 4, 5)), rng.normal(size=(6, 3, 5))
    u = predictions(W, v)
    np.testing.assert_allclose(u[1, 2, 1], W[2, 1] @ v[1, 2])
    g = rng.normal(size=u.shape)
    num = central_difference(lambda x: np.sum(predictions(x, v) * g), W)
    assert rel_error(predictions_vjp_W(g, v), num) < 1e-6
