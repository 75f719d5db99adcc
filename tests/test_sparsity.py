"""Sparsity targets (docs/MODEL_RB.md (4b.11)): the penalty, its bias gradient by central
differences in float64, and the estimators' steps for the RBM and Model R."""

import numpy as np
import pytest

from capsnp import kernels
from capsnp.estimators import BernoulliRBM, RoutedCapsuleRBM, load_estimator
from capsnp.ops import sigmoid
from capsnp.training import sparsity_gradient, sparsity_penalty

from conftest import SEEDS, central_difference  # noqa: E402

BACKENDS = ["numpy"] + (["numba"] if kernels.available() else [])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(7, 5), (6, 2, 3)])
def test_sparsity_gradient_is_the_penalty_s_bias_derivative(seed, shape):
    """-dOmega/db by central differences of (4b.11), the bias b added to every image's input,
    equals lambda (p - q) with q the mean of sigmoid(x) over the images."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 2.0, shape)  # (B, ...) total inputs
    target, cost = 0.07, 0.3
    numeric = central_difference(lambda b: sparsity_penalty(x + b, target, cost), np.zeros(shape[1:]))
    analytic = sparsity_gradient(sigmoid(x).mean(axis=0), target, cost)  # (...)
    np.testing.assert_allclose(-numeric, analytic, rtol=1e-7, atol=1e-9)


def test_sparsity_penalty_is_the_cross_entropy_with_the_target():
    """Omega = lambda (1/B) sum_n sum_k CE(p, sigmoid(x_nk)), written with logarithms, and its
    minimum over a shared bias sits where every unit fires at the target on one image."""
    x = np.array([[-3.0, 0.5, 2.0], [1.0, -0.2, 0.0]])  # (B=2, H=3)
    p, lam = 0.2, 0.5
    s = 1.0 / (1.0 + np.exp(-x))
    cross_entropy = -(p * np.log(s) + (1 - p) * np.log(1 - s))  # (2, 3)
    assert sparsity_penalty(x, p, lam) == pytest.approx(lam * cross_entropy.sum() / 2, rel=1e-12)
    at_target = np.full((1, 3), np.log(p / (1 - p)))  # sigmoid = p
    np.testing.assert_allclose(sparsity_gradient(sigmoid(at_target).mean(axis=0), p, lam), 0.0, atol=1e-15)
    assert sparsity_penalty(at_target, p, lam) < sparsity_penalty(at_target + 0.1, p, lam)
    assert sparsity_penalty(at_target, p, lam) < sparsity_penalty(at_target - 0.1, p, lam)


def _binary_data(seed=4, n=40, d=16):
    return (np.random.default_rng(seed).random((n, d)) < 0.3).astype(float)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("persistent", [True, False])
def test_rbm_sparsity_adds_exactly_its_step_to_the_hidden_biases(backend, persistent):
    """With the same draws, a step with sparsity_cost differs from one without only in b, by
    lambda (p - q), q the batch's mean of p(h | v) computed independently; PCD gets q from the
    gradient and the chains' probabilities, CD from another hidden pass."""
    X = _binary_data()
    kw = dict(n_components=5, n_iter=1, batch_size=20, random_state=0, persistent=persistent,
              backend=backend)
    est = BernoulliRBM(**kw).fit(X)
    params, batch = est._params(), est._checked(X[:20])
    chains = (X[20:], None) if persistent else None
    g0, ch0, _ = est.set_params(sparsity_cost=0.0)._step(params, batch, chains, np.random.default_rng(5))
    g1, ch1, _ = est.set_params(sparsity_cost=0.4, sparsity_target=0.05)._step(
        params, batch, chains, np.random.default_rng(5))
    if persistent:
        for x, y in zip(ch0, ch1):
            np.testing.assert_array_equal(x, y)
    q = sigmoid(batch @ params.W + params.b).mean(axis=0)  # (H,)
    np.testing.assert_allclose(g1.b - g0.b, 0.4 * (0.05 - q), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(g1.W, g0.W)
    np.testing.assert_array_equal(g1.a, g0.a)


@pytest.mark.parametrize("backend", BACKENDS)
def test_routed_capsule_sparsity_adds_exactly_its_step_to_gamma(backend):
    """Model R: the step with sparsity_cost differs only in gamma, by lambda (p - q), q the
    batch's mean of the mean-field mu (its data statistic of gamma)."""
    X = _binary_data()
    kw = dict(n_capsules=2, capsule_dim=3, image_shape=(4, 4), patch=2, assignment_biases=True,
              n_iter=1, batch_size=20, init_scale=0.5, random_state=0, monitor_fraction=0,
              backend=backend)
    est = RoutedCapsuleRBM(**kw).fit(X)
    params, batch = est._params(), est._checked(X[:20])
    chains = (batch[::-1].copy(), np.random.default_rng(1).integers(0, 2, size=batch.shape[:2]))
    g0, ch0, _ = est._step(params, batch, chains, np.random.default_rng(5))
    g1, ch1, _ = est.set_params(sparsity_cost=0.4, sparsity_target=0.05)._step(
        params, batch, chains, np.random.default_rng(5))
    for x, y in zip(ch0, ch1):
        np.testing.assert_array_equal(x, y)
    q = est._mean_field(params, batch)[1].mean(axis=0)  # (J, d_h)
    for name, a, b in zip(type(g0)._fields, g0, g1):
        expected = 0.4 * (0.05 - q) if name == "gamma" else np.zeros_like(a)
        np.testing.assert_allclose(b - a, expected, rtol=1e-9, atol=1e-12, err_msg=name)


def test_sparsity_lowers_the_firing_probability_and_is_checked_and_saved(tmp_path):
    """Trained with a strong pull towards 0.05, both models' hidden units fire less on the data
    than without; the options are validated and kept in model files."""
    X = (np.random.default_rng(0).random((200, 16)) < 0.4).astype(float)
    rbm_kw = dict(n_components=8, n_iter=5, batch_size=20, learning_rate=0.05, random_state=0)
    r_kw = dict(n_capsules=2, capsule_dim=4, image_shape=(4, 4), patch=2, assignment_biases=True,
                n_iter=5, batch_size=20, learning_rate=0.05, random_state=0, monitor_fraction=0)
    def firing(est):  # mean data-side p(h = 1 | v): the RBM's, or Model R's mean-field mu
        if isinstance(est, BernoulliRBM):
            return est.transform(X).mean()
        return est._mean_field(est._params(), est._checked(X))[1].mean()

    for cls, kw in ((BernoulliRBM, rbm_kw), (RoutedCapsuleRBM, r_kw)):
        plain = cls(**kw).fit(X)
        sparse = cls(**kw, sparsity_cost=2.0, sparsity_target=0.05).fit(X)
        assert firing(sparse) < firing(plain) - 0.05, cls.__name__
        sparse.save(tmp_path / "m.npz")
        loaded = load_estimator(tmp_path / "m.npz")
        assert (loaded.sparsity_cost, loaded.sparsity_target) == (2.0, 0.05)
        for bad in (dict(sparsity_target=0.0), dict(sparsity_target=1.0), dict(sparsity_cost=-0.1)):
            with pytest.raises(ValueError, match="sparsity"):
                cls(**kw, **bad).fit(X)
