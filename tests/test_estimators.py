"""The scikit-learn style estimators on tiny data (8x8 digits, a slice of the embedded MNIST)."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import BernoulliRBM as SklearnRBM
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from capsnp import model_r
from capsnp import rbm as rbm_math
from capsnp.estimators import (BernoulliRBM, CapsulePoE, RoutedCapsuleRBM, load_estimator,
                               mean_field_elbo)
from capsnp.params import RBMParams, RParams
from capsnp.training import (Objective, initial_state, learning_rate_at, momentum_at, run_epochs,
                             sgd_update)


@pytest.fixture(scope="module", autouse=True)
def single_blas_thread():
    """One BLAS thread: on a small shared machine, spinning BLAS threads slow these tiny
    problems down by up to 100x (e.g. LogisticRegression's lbfgs)."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def digits():
    """200 binarised 8x8 digits, (200, 64) float64."""
    return (load_digits().data[:200] / 16.0 > 0.5).astype(np.float64)


def make(kind, **overrides):
    """A small estimator of each kind, for 8x8 images."""
    if kind == "p":
        kw = dict(n_capsules=4, capsule_dim=4, patch=4, batch_size=20, learning_rate=0.05,
                  random_state=0)
        return CapsulePoE(**{**kw, **overrides})
    if kind == "r":
        kw = dict(n_capsules=4, capsule_dim=4, patch=4, batch_size=20, learning_rate=0.2,
                  lr_schedule="constant", momentum=0.5, random_state=0)
        return RoutedCapsuleRBM(**{**kw, **overrides})
    if kind == "rs":  # Model R with a shared capsule under the averaged recipe (4c)
        kw = dict(n_capsules=2, capsule_dim=4, patch=4, batch_size=20, learning_rate=0.2, momentum=0.5,
                  assignment_biases=True, shared_units=8, n_chains=30, max_routing=3, average=5,
                  random_state=0)
        return RoutedCapsuleRBM(**{**kw, **overrides})
    kw = dict(n_components=16, batch_size=20, learning_rate=0.1, random_state=0)
    return BernoulliRBM(**{**kw, **overrides})


KINDS = ["p", "r", "rbm"]


def fitted_arrays(est):
    return {name: getattr(est, name) for name in est._param_attributes}


# ----------------------------------------------------------------------------- learning


@pytest.mark.parametrize("kind", KINDS)
def test_training_lowers_free_energy_of_data_relative_to_noise(kind, digits):
    # Noise with the data's pixel marginals: a model of independent pixels (the initial
    # visible biases) cannot tell it from the data, so a wider gap means learned structure.
    # For R, free_energy is the mean-field upper bound -ELBO.
    rng = np.random.default_rng(1)
    noise = (rng.random((2000, 64)) < digits.mean(axis=0)).astype(np.float64)

    def gap(est):
        return est.free_energy(noise).mean() - est.free_energy(digits).mean()

    before = gap(make(kind, n_iter=0).fit(digits))
    after = gap(make(kind, n_iter=20).fit(digits))
    assert after > before + 0.2


def test_model_r_bound_is_below_exact_log_marginal():
    rng = np.random.default_rng(0)
    params = RParams(W=rng.normal(0, 1, (3, 2, 2, 2)), alpha=rng.normal(0, 1, (3, 2)),
                     gamma=rng.normal(0, 1, (2, 2)), beta=rng.normal(0, 1, (3, 2)))
    v = (rng.random((6, 3, 2)) < 0.5).astype(np.float64)
    exact = model_r.exact_log_unnormalised_marginal(params, v)
    c, _, _ = model_r.mean_field(params, v, tol=1e-10, max_iter=200)
    bound = mean_field_elbo(params, v, c)
    assert np.all(bound <= exact + 1e-12)
    assert np.all(bound > exact - 3.0)  # a sensible bound, not just any number
    # ... and it is a bound for any routing distribution, e.g. the uniform one
    assert np.all(mean_field_elbo(params, v, np.full((6, 3, 2), 0.5)) <= exact + 1e-12)


def test_trained_model_r_bound_is_below_exact_log_marginal(digits):
    # A fitted estimator on 2x4 images (I = 2, d_v = 4) small enough to enumerate.
    X = digits[:, [27, 28, 29, 30, 35, 36, 37, 38]]  # two rows of four central pixels
    est = RoutedCapsuleRBM(2, 2, image_shape=(2, 4), patch=(1, 4), batch_size=20, n_iter=5,
                           learning_rate=0.2, random_state=0).fit(X)
    exact = model_r.exact_log_unnormalised_marginal(est._params(), est._to_layout(X[:20]))
    assert np.all(est.score_samples(X[:20]) <= exact + 1e-12)


def test_pipeline_with_logistic_regression_beats_majority_by_far():
    from capsnp.datasets import binarize, load_dataset

    X, y = load_dataset("embedded", "train")
    Xt, yt = load_dataset("embedded", "test")
    X, y = binarize(X[:2000], random_state=0), y[:2000]
    Xt, yt = binarize(Xt[:500], random_state=1), yt[:500]
    pipe = Pipeline([
        ("poe", CapsulePoE(n_capsules=32, capsule_dim=8, sampler="reconstruct", grad="frozen",
                           n_iter=1, random_state=0)),
        ("clf", LogisticRegression(max_iter=2000)),
    ])
    pipe.fit(X, y)
    accuracy = pipe.score(Xt, yt)
    majority = np.max(np.bincount(yt)) / len(yt)
    assert accuracy >= majority + 0.3


def test_grid_search_composes(digits):
    search = GridSearchCV(make("rbm", n_iter=2), {"n_components": [4, 8]}, cv=2)
    search.fit(digits)
    assert search.best_params_["n_components"] in (4, 8)
    assert np.isfinite(search.best_score_)


@pytest.mark.parametrize("kind", KINDS + ["rs"])
def test_chain_restart_replaces_the_drawn_chains_by_fresh_chains_at_noise(kind, digits):
    # (docs/MODEL_RB.md 5.12): the rows where one rng.random(n_chains) falls below the rate get
    # visible-bias noise and what _start_chains makes of it (Model R's routes drawn from its
    # mean field, the RBM's hidden probabilities); the other rows and the offsets are kept
    extra = {"rbm": dict(centring=True, centring_average=5),
             "rs": dict(shared_centring=True, centring_average=5)}.get(kind, {})
    est = make(kind, n_iter=2, n_chains=40, chain_restart=0.3, **extra).fit(digits)
    params, chains = est._params(), est._state.chains
    pair = chains[:2] if isinstance(chains, tuple) else (chains,)  # v and a or p
    before = [np.copy(x) for x in pair]
    rng, twin = np.random.default_rng(5), np.random.default_rng(5)
    new = est._restart_chains(params, chains, rng)
    rows = np.flatnonzero(twin.random(40) < 0.3)  # (R,)
    kept = np.setdiff1d(np.arange(40), rows)
    assert 0 < rows.size < 40
    v_old, v_new = est._chain_visible(chains), est._chain_visible(new)
    noise = twin.random((rows.size,) + v_old.shape[1:]) < est._visible_noise_probability(params)
    noise = noise.astype(v_old.dtype)  # (R, ...)
    fresh = est._start_chains(params, noise, twin)
    np.testing.assert_array_equal(v_new[rows], noise)
    np.testing.assert_array_equal(v_new[kept], v_old[kept])
    np.testing.assert_array_equal(v_old, before[0])  # not changed in place
    if kind in ("r", "rs"):
        np.testing.assert_array_equal(new[1][rows], fresh[1])
        np.testing.assert_array_equal(new[1][kept], before[1][kept])
    if kind == "rbm":
        np.testing.assert_allclose(new[1][rows], rbm_math.hidden_probability(params, noise), rtol=1e-12)
        np.testing.assert_array_equal(new[1][kept], before[1][kept])
    if extra:
        assert new[2] is chains[2]  # the offsets' average is not per chain
    assert est.set_params(chain_restart=0.0)._objective().step == est._step  # no extra draws


# ----------------------------------------------------------------------------- the RBM


def test_rbm_updates_are_scikit_learns(digits):
    """Two PCD-1 updates equal two of scikit-learn's ``_fit`` given the same chain and uniforms.

    Both keep the chains' hidden probabilities from one step to the next (scikit-learn draws its
    ``h_samples_`` from them at the end of a step, capsnp at the start of the next).
    """
    rng = np.random.default_rng(3)
    D, H, B = digits.shape[1], 6, 10
    params = RBMParams(W=rng.normal(0, 0.1, (D, H)), a=rng.normal(0, 0.1, D), b=rng.normal(0, 0.1, H))
    batches, chain = (digits[:B], digits[2 * B:3 * B]), digits[B:2 * B]
    est = make("rbm", n_components=H, batch_size=B)
    # ours: h ~ p(h | chain), v_neg ~ p(v | h), the gradient step; then the same from the
    # carried probabilities
    draws = np.random.default_rng(7)
    new, chains = params, (chain, None)
    for batch in batches:
        grad, chains, _ = est._step(new, batch, chains, draws)
        new, _ = sgd_update(new, type(new)(*map(np.zeros_like, new)), grad, 0.1, 0.0)
    # scikit-learn: its persistent state is the hidden sample h; it draws v_neg from it
    replay = np.random.default_rng(7)
    u_h1, u_v1, u_h2, u_v2 = (replay.random((B, H)), replay.random((B, D)),
                              replay.random((B, H)), replay.random((B, D)))

    class Uniforms:  # hands scikit-learn our uniforms, in its order
        def __init__(self, *arrays):
            self.arrays = list(arrays)

        def uniform(self, size):
            out = self.arrays.pop(0)
            assert out.shape == tuple(size)
            return out

    sk = SklearnRBM(n_components=H, batch_size=B, learning_rate=0.1)
    sk.components_ = params.W.T.copy()
    sk.intercept_visible_, sk.intercept_hidden_ = params.a.copy(), params.b.copy()
    sk.h_samples_ = (u_h1 < rbm_math.hidden_probability(params, chain)).astype(float)
    sk._fit(batches[0], Uniforms(u_v1, u_h2))
    sk._fit(batches[1], Uniforms(u_v2, np.zeros((B, H))))
    np.testing.assert_allclose(new.W.T, sk.components_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(new.a, sk.intercept_visible_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(new.b, sk.intercept_hidden_, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_pcd_step_with_fresh_probabilities_is_sweeps_then_gradient(digits, k):
    """capsnp.rbm.pcd_step with p(h | v) of the current parameters: k Gibbs sweeps and the
    CD gradient, draw for draw; its returned probabilities are p(h | v_new)."""
    rng = np.random.default_rng(5)
    D, H = digits.shape[1], 7
    params = RBMParams(W=rng.normal(0, 0.3, (D, H)), a=rng.normal(0, 0.3, D), b=rng.normal(0, 0.3, H))
    batch, chain = digits[:8], digits[8:20]
    grad, v_new, p_new = rbm_math.pcd_step(params, batch, chain,
                                           rbm_math.hidden_probability(params, chain),
                                           np.random.default_rng(9), k)
    replay, v = np.random.default_rng(9), chain
    for _ in range(k):
        v, _ = rbm_math.gibbs_sweep(params, v, replay)
    np.testing.assert_array_equal(v_new, v)
    for x, y in zip(grad, rbm_math.cd_gradient(params, batch, v), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(p_new, rbm_math.hidden_probability(params, v), rtol=1e-13)


def test_rbm_attributes_like_scikit_learn(digits):
    est = make("rbm", n_iter=1).fit(digits)
    assert est.components_.shape == (16, 64)
    assert est.intercept_hidden_.shape == (16,)
    assert est.intercept_visible_.shape == (64,)
    assert est.transform(digits).shape == (200, 16)
    assert est.get_feature_names_out().tolist()[:2] == ["bernoullirbm0", "bernoullirbm1"]
    assert est.gibbs(digits[:3]).shape == (3, 64)


# ----------------------------------------------------------------------------- API contracts


@pytest.mark.parametrize("kind", KINDS)
def test_partial_fit_on_one_batch_equals_one_epoch_of_fit(kind, digits):
    X = digits[:40]
    a = make(kind, batch_size=40).partial_fit(X)
    extra = {} if kind == "rbm" else {"monitor_fraction": 0.0}
    b = make(kind, batch_size=40, n_iter=1, **extra).fit(X)
    for name, value in fitted_arrays(a).items():
        np.testing.assert_array_equal(value, getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.persistent_chains_, b.persistent_chains_)
    a.partial_fit(X)  # continues the stream: a second epoch changes the model
    assert not np.array_equal(a.alpha_ if kind != "rbm" else a.components_,
                              b.alpha_ if kind != "rbm" else b.components_)
    assert a.n_iter_ == 2 and len(a.history_) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_same_random_state_gives_identical_models(kind, digits):
    a = make(kind, n_iter=2, random_state=5).fit(digits)
    b = make(kind, n_iter=2, random_state=5).fit(digits)
    c = make(kind, n_iter=2, random_state=6).fit(digits)
    for name, value in fitted_arrays(a).items():
        np.testing.assert_array_equal(value, getattr(b, name), err_msg=name)
    assert not np.array_equal(a.components_ if kind == "rbm" else a.W_,
                              c.components_ if kind == "rbm" else c.W_)


@pytest.mark.parametrize("kind", KINDS)
def test_get_set_params_and_clone(kind):
    est = make(kind)
    params = est.get_params()
    twin = type(est)().set_params(**params)
    assert twin.get_params() == params
    copy = clone(est)
    assert copy.get_params() == params and copy is not est
    est.set_params(batch_size=7)
    assert est.batch_size == 7
    # the constructor stores values unchanged, even bad ones; fit checks them
    bad = type(est)(batch_size=-3)
    assert bad.batch_size == -3
    with pytest.raises(ValueError, match="batch_size"):
        bad.fit(np.zeros((4, 64)))


@pytest.mark.parametrize("kind", KINDS + ["rs"])
def test_float32_keeps_float32_and_is_close_to_float64(kind, digits):
    X = digits[:60]
    a = make(kind, n_iter=1, dtype=np.float64).fit(X)
    b = make(kind, n_iter=1, dtype=np.float32).fit(X)
    for name, value in fitted_arrays(b).items():
        assert value.dtype == np.float32, name
        np.testing.assert_allclose(value, getattr(a, name), rtol=1e-3, atol=1e-3, err_msg=name)
    assert b.transform(X).dtype == np.float32
    assert b.free_energy(X).dtype == np.float32
    assert b.sample(4, n_steps=2).dtype == np.float32
    np.testing.assert_allclose(b.free_energy(X), a.free_energy(X), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_reproduces_exactly_and_continues_training(kind, digits, tmp_path):
    est = make(kind, n_iter=2).fit(digits)
    path = tmp_path / "model.npz"
    est.save(path, metadata={"note": "test"})
    loaded = load_estimator(path)
    assert type(loaded) is type(est)
    assert loaded.get_params() == est.get_params()
    np.testing.assert_array_equal(loaded.free_energy(digits), est.free_energy(digits))
    np.testing.assert_array_equal(loaded.transform(digits), est.transform(digits))
    assert loaded.history_ == est.history_
    # the random streams, velocities and chains are restored: training continues identically
    est.partial_fit(digits)
    loaded.partial_fit(digits)
    for name, value in fitted_arrays(est).items():
        np.testing.assert_array_equal(value, getattr(loaded, name), err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_and_history(kind, digits):
    est = make(kind, n_iter=2).fit(digits)
    n_out = 16 if kind == "rbm" else 4
    T = est.transform(digits[:5])
    assert T.shape == (5, n_out) and np.all((T >= 0) & (T <= 1))
    assert est.score_samples(digits[:5]).shape == (5,)
    assert np.isfinite(est.score(digits[:5]))
    S = est.sample(6, n_steps=3, random_state=0)
    assert S.shape == (6, 64) and set(np.unique(S)) <= {0.0, 1.0}
    np.testing.assert_array_equal(S, est.sample(6, n_steps=3, random_state=0))
    assert est.sample(n_steps=2, init=digits[:3]).shape == (3, 64)
    assert len(est.history_) == 2 and [h["epoch"] for h in est.history_] == [1, 2]
    expected = {"p": {"acceptance", "pseudo_log_likelihood", "reconstruction_error"},
                "r": {"mean_field_iterations", "elbo", "reconstruction_error"},
                "rbm": {"pseudo_log_likelihood", "free_energy", "reconstruction_error"}}[kind]
    assert expected | {"seconds", "learning_rate"} <= set(est.history_[-1])
    assert est.persistent_chains_.shape == (20, 64)


def test_cd_and_reconstruct_and_frozen_variants(digits):
    for est in (make("p", persistent=False, cd_k=2, grad="frozen", n_iter=1),
                make("p", sampler="reconstruct", learn_prior=True, n_iter=1),
                make("r", persistent=False, n_iter=1, chain_init="noise"),
                make("rbm", persistent=False, cd_k=2, momentum=0.5, weight_decay=1e-3, n_iter=1)):
        est.fit(digits)
        assert est.persistent_chains_ is None or est.persistent
        assert np.all(np.isfinite(est.free_energy(digits)))
    with pytest.raises(ValueError, match="learn_prior"):
        make("p", learn_prior=True, grad="frozen").fit(digits)


def test_schedule_and_momentum():
    assert learning_rate_at(0, 0.05, 10, "linear", 0.04) == pytest.approx(0.05)
    assert learning_rate_at(9, 0.05, 10, "linear", 0.04) == pytest.approx(0.002)
    assert learning_rate_at(20, 0.05, 10, "linear", 0.04) == pytest.approx(0.002)
    assert learning_rate_at(5, 0.05, 10, "constant") == 0.05
    assert momentum_at(0, 0.9) == 0.5 and momentum_at(5, 0.9) == 0.9 and momentum_at(0, 0.0) == 0.0


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", KINDS)
def test_bad_inputs_raise(kind, digits):
    est = make(kind, n_iter=1)
    X_nan = digits.copy()
    X_nan[0, 0] = np.nan
    with pytest.raises(ValueError):
        est.fit(X_nan)
    X_inf = digits.copy()
    X_inf[0, 0] = np.inf
    with pytest.raises(ValueError):
        est.fit(X_inf)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        est.fit(digits * 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        est.fit(digits - 0.5)
    with pytest.raises((TypeError, ValueError)):
        est.fit(np.array([["a"] * 64] * 3, dtype=object))
    with pytest.raises(TypeError):
        est.fit(sp.csr_matrix(digits))
    X = digits.copy()
    est.fit(X)
    np.testing.assert_array_equal(X, digits)  # never modified in place
    with pytest.raises(ValueError, match="features"):
        est.transform(digits[:, :49])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        est.free_energy(digits + 1)


def test_layout_errors_name_image_shape_and_patch(digits):
    with pytest.raises(ValueError, match=r"patch=3.*image_shape=\(8, 8\)"):
        make("p", patch=3).fit(digits)
    with pytest.raises(ValueError, match="image_shape"):
        make("r", image_shape=(7, 9)).fit(digits)
    with pytest.raises(ValueError, match="square"):
        make("r").fit(digits[:, :60])
    est = make("r", image_shape=(4, 16), patch=(2, 4), n_iter=1).fit(digits)  # not square: fine
    assert est.n_visible_capsules_ == 8 and est.visible_capsule_dim_ == 8


def test_divergence_raises_floating_point_error(digits):
    # a float32 step of 1e39 overflows to infinity in the first update
    with pytest.raises(FloatingPointError, match=r"parameters.*epoch 1.*lower learning_rate"):
        with np.errstate(over="ignore", invalid="ignore"):
            make("rbm", learning_rate=1e39, dtype=np.float32, n_iter=2).fit(digits)


def test_training_loop_stops_on_a_non_finite_gradient():
    calls = []

    def step(params, batch, chains, rng):
        calls.append(1)
        bad = len(calls) > 3  # the fourth minibatch = the second epoch
        return RBMParams(np.full((2, 1), np.nan if bad else 0.1), np.zeros(2), np.zeros(1)), None, {}

    def init_params(X, rng):
        return RBMParams(np.zeros((2, 1)), np.zeros(2), np.zeros(1))

    objective = Objective(init_params=init_params, init_chains=None, step=step,
                          monitor=lambda p, X, rng: {})
    rng = np.random.default_rng(0)
    state = initial_state(objective, np.zeros((6, 2)), rng, persistent=False)
    with pytest.raises(FloatingPointError, match=r"gradient of W during epoch 2"):
        run_epochs(state, objective, np.zeros((6, 2)), n_epochs=3, batch_size=2, rng=rng,
                   monitor_rng=rng, X_monitor=None, learning_rate=0.1, schedule_epochs=3)
    assert state.epoch == 1 and len(state.history) == 1
    np.testing.assert_allclose(state.params.W, 0.03)  # three steps of lr 0.1 times gradient 0.1


def test_unfitted_estimator_raises(digits):
    from sklearn.exceptions import NotFittedError

    for kind in KINDS:
        with pytest.raises(NotFittedError):
            make(kind).transform(digits)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_routing_damping_reaches_the_data_step_and_is_checked_and_saved(digits, backend, tmp_path):
    """``routing_damping`` is the damping of the mean field (4.6): the estimator's routing is
    ``model_r.mean_field`` with it, and the step changes by exactly the change of the data
    statistics (the chains do not use the mean field). Checked on input and kept in model files."""
    kw = dict(n_capsules=2, capsule_dim=3, patch=4, assignment_biases=True, max_routing=3,
              n_iter=1, batch_size=20, init_scale=0.5, random_state=0, monitor_fraction=0,
              backend=backend)
    est = RoutedCapsuleRBM(**kw).fit(digits)
    params, batch = est._params(), est._checked(digits[:20])  # (20, I, d_v)
    chains = (batch[::-1].copy(), np.random.default_rng(1).integers(0, 2, size=batch.shape[:2]))
    g0, ch0, _ = est._step(params, batch, chains, np.random.default_rng(5))
    damped = clone(est).set_params(routing_damping=0.5)
    c, mu, n = damped._mean_field(params, batch)  # (B, I, J), (B, J, d_h), (B,)
    c_ref, mu_ref, n_ref = model_r.mean_field(params, batch, tol=1e-3, max_iter=3, damping=0.5)
    np.testing.assert_allclose(c, c_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(n, n_ref)
    c0, mu0, _ = est._mean_field(params, batch)
    assert np.abs(c - c0).max() > 1e-3  # three damped updates stop elsewhere
    g1, ch1, _ = damped._step(params, batch, chains, np.random.default_rng(5))
    for x, y in zip(ch0, ch1):
        np.testing.assert_array_equal(x, y)
    pos1 = model_r.data_statistics(params, batch, c, mu)
    pos0 = model_r.data_statistics(params, batch, c0, mu0)
    for name, a, b, p1, p0 in zip(type(g0)._fields, g0, g1, pos1, pos0):
        expected = np.zeros_like(a) if name == "beta" else p1 - p0  # beta is not learned here
        np.testing.assert_allclose(b - a, expected, rtol=1e-8, atol=1e-10, err_msg=name)
    damped.fit(digits).save(tmp_path / "m.npz")
    assert load_estimator(tmp_path / "m.npz").routing_damping == 0.5
    for bad in (1.0, -0.1, "0.5"):
        with pytest.raises(ValueError, match="routing_damping"):
            RoutedCapsuleRBM(**{**kw, "routing_damping": bad}).fit(digits)
