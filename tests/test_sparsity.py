"""Sparsity targets (docs/MODEL_RB.md (4b.11)): the penalty, its bias gradient by central
differences in float64, and the estimators' steps for the RBM and Model R."""

import numpy as np
import pytest

from capsnp import kernels
from capsnp import model_r as mr
from capsnp import rbm
from capsnp.estimators import BernoulliRBM, RoutedCapsuleRBM, load_estimator
from capsnp.ops import sigmoid
from capsnp.training import sparsity_gradient, sparsity_penalty

from conftest import SEEDS, central_difference, params_central_difference  # noqa: E402
from capsnp.params import RBMParams, RBParams

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


@pytest.mark.parametrize("seed", SEEDS)
def test_model_r_sparsity_gradient_is_the_penalty_s_gradient_in_every_input_parameter(seed):
    """Model R: with the routing c fixed, x = gamma + sum_i c_ij (W_ij v_i + C_ij) written
    here with einsum; -dOmega/dtheta by central differences equals model_r.sparsity_gradient for
    W, gamma, C (and zero for alpha, beta, A)."""
    rng = np.random.default_rng(seed)
    I, J, d_h, d_v, B = 3, 2, 2, 2, 5
    params = RBParams(W=rng.normal(size=(I, J, d_h, d_v)), alpha=rng.normal(size=(I, d_v)),
                      gamma=rng.normal(size=(J, d_h)), beta=rng.normal(size=(I, J)),
                      C=rng.normal(size=(I, J, d_h)), A=rng.normal(size=(I, J, d_v)))
    v = (rng.random((B, I, d_v)) < 0.5).astype(float)  # (B, I, d_v)
    c = rng.dirichlet(np.ones(J), size=(B, I))  # (B, I, J)
    target, cost = 0.15, 0.7

    def inputs(q):  # (B, J, d_h)
        u_hat = np.einsum("ijkl,bil->bijk", q.W, v) + q.C  # (B, I, J, d_h)
        return q.gamma + np.einsum("bij,bijk->bjk", c, u_hat)

    numeric = params_central_difference(lambda q: sparsity_penalty(inputs(q), target, cost), params)
    analytic = mr.sparsity_gradient(params, v, c, sigmoid(inputs(params)), target, cost)
    for name, x, y in zip(RBParams._fields, numeric, analytic):
        np.testing.assert_allclose(-x, y, rtol=1e-6, atol=1e-9, err_msg=name)
    # its gamma part is the bias step of (4b.11)
    np.testing.assert_allclose(analytic.gamma, sparsity_gradient(sigmoid(inputs(params)).mean(axis=0), target, cost))
    if kernels.available():  # the compiled twin, on the compiled data statistics
        twin = kernels.model_r.sparsity_gradient(params, v, c, sigmoid(inputs(params)), target, cost)
        for name, x, y in zip(RBParams._fields, twin, analytic):
            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("seed", SEEDS)
def test_rbm_sparsity_gradient_is_the_penalty_s_gradient_in_every_input_parameter(seed):
    """The RBM: x = v W + b; -dOmega/dtheta by central differences equals rbm.sparsity_gradient."""
    rng = np.random.default_rng(seed)
    params = RBMParams(W=rng.normal(size=(4, 3)), a=rng.normal(size=4), b=rng.normal(size=3))
    v = (rng.random((6, 4)) < 0.5).astype(float)  # (B, D)
    numeric = params_central_difference(lambda q: sparsity_penalty(v @ q.W + q.b, 0.2, 0.5), params)
    analytic = rbm.sparsity_gradient(params, v, 0.2, 0.5)
    for name, x, y in zip(RBMParams._fields, numeric, analytic):
        np.testing.assert_allclose(-x, y, rtol=1e-6, atol=1e-9, err_msg=name)


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
    # sparsity_on="inputs": W and b take the whole (4b.11) gradient
    g2, _, _ = est.set_params(sparsity_on="inputs")._step(params, batch, chains, np.random.default_rng(5))
    pull = rbm.sparsity_gradient(params, batch, 0.05, 0.4)
    for name, a, b, x in zip(RBMParams._fields, g0, g2, pull):
        np.testing.assert_allclose(b - a, x, rtol=1e-9, atol=1e-12, err_msg=name)
    assert np.abs(pull.W).max() > 1e-3


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
    c, mu, _ = est._mean_field(params, batch)  # (B, I, J), (B, J, d_h)
    for name, a, b in zip(type(g0)._fields, g0, g1):
        expected = 0.4 * (0.05 - mu.mean(axis=0)) if name == "gamma" else np.zeros_like(a)
        np.testing.assert_allclose(b - a, expected, rtol=1e-9, atol=1e-12, err_msg=name)
    # sparsity_on="inputs": W, gamma and C take the whole (4b.11) gradient at the routing c,
    # and with tied weights W takes its sum over the parents (4b.6)
    g2, _, _ = est.set_params(sparsity_on="inputs")._step(params, batch, chains, np.random.default_rng(5))
    pull = mr.sparsity_gradient(params, batch, c, mu, 0.05, 0.4)
    for name, a, b, x in zip(type(g0)._fields, g0, g2, pull):
        np.testing.assert_allclose(b - a, x, rtol=1e-9, atol=1e-12, err_msg=name)
    assert np.abs(pull.W).max() > 1e-3 and np.abs(pull.C).max() > 1e-3
    tied = RoutedCapsuleRBM(**{**kw, "tie_weights": True}).fit(X)
    tp = tied._params()
    t0, _, _ = tied._step(tp, batch, chains, np.random.default_rng(5))
    t2, _, _ = tied.set_params(sparsity_cost=0.4, sparsity_target=0.05, sparsity_on="inputs")._step(
        tp, batch, chains, np.random.default_rng(5))
    c_t, mu_t, _ = tied._mean_field(tp, batch)
    pull_t = mr.sparsity_gradient(tp, batch, c_t, mu_t, 0.05, 0.4)
    np.testing.assert_allclose(t2.W - t0.W, mr.tied_gradient(pull_t.W), rtol=1e-9, atol=1e-12)


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
        for on in ("inputs", "biases"):
            sparse = cls(**kw, sparsity_cost=2.0, sparsity_target=0.05, sparsity_on=on).fit(X)
            assert firing(sparse) < firing(plain) - 0.05, (cls.__name__, on)
        sparse.save(tmp_path / "m.npz")
        loaded = load_estimator(tmp_path / "m.npz")
        assert (loaded.sparsity_cost, loaded.sparsity_target, loaded.sparsity_on) == (2.0, 0.05, "biases")
        for bad in (dict(sparsity_target=0.0), dict(sparsity_target=1.0), dict(sparsity_cost=-0.1),
                    dict(sparsity_on="weights")):
            with pytest.raises(ValueError, match="sparsity"):
                cls(**kw, **bad).fit(X)
