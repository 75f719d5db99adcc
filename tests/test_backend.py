"""The estimators' ``backend`` switch: "numba" (compiled kernels) and "numpy" (reference).

Both backends run the same equations and draw the same uniforms in the same order, so a short
fit from the same ``random_state`` gives the same parameters up to rounding. The kernels sum in
another order than NumPy/BLAS (about 1e-15 relative per operation in float64), so a sampled unit
or a Metropolis-Hastings decision differs between the backends only if a uniform falls within
that distance of its threshold (a probability, or the acceptance ratio for MH): about 1e-15 per
draw, so over the ~1e5 draws of these fits the chains are identical and the parameters agree to
about 1e-13. Longer runs would eventually see one flipped draw, after which the chains differ
and the fits agree only statistically; the runs are kept short for that reason too.
"""

import inspect
import warnings

import numpy as np
import pytest

from capsnp import kernels
from capsnp import _kernels_jit as jit
from capsnp.ais import ais_log_partition
from capsnp.estimators import BernoulliRBM, CapsulePoE, RoutedCapsuleRBM

needs_numba = pytest.mark.skipif(not kernels.available(), reason="numba is not installed")

TOL = 1e-10


@pytest.fixture(scope="module")
def X():
    """40 binary 8x8 images with some structure (bars), float64."""
    rng = np.random.default_rng(0)
    X = (rng.random((40, 64)) < 0.15).astype(np.float64)
    X[::2, :8] = 1.0  # a bar in even images
    return X


ESTIMATORS = {
    "p-mh": lambda **kw: CapsulePoE(n_capsules=3, capsule_dim=4, patch=4, sampler="mh",
                                    learn_prior=True, batch_size=10, n_iter=2, **kw),
    "p-reconstruct": lambda **kw: CapsulePoE(n_capsules=3, capsule_dim=4, patch=4,
                                             sampler="reconstruct", grad="frozen", batch_size=10,
                                             n_iter=2, **kw),
    "r": lambda **kw: RoutedCapsuleRBM(n_capsules=3, capsule_dim=4, patch=4, learn_prior=True,
                                       batch_size=10, n_iter=2, **kw),
    "rbm": lambda **kw: BernoulliRBM(n_components=12, learning_rate=0.1, batch_size=10,
                                    n_iter=2, momentum=0.5, **kw),
}


def max_relative_difference(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@needs_numba
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_backends_fit_the_same_model(name, X):
    fits = {b: ESTIMATORS[name](backend=b, random_state=3).fit(X) for b in kernels.BACKENDS}
    numba_fit, numpy_fit = fits["numba"], fits["numpy"]
    for attribute in numba_fit._param_attributes:
        assert max_relative_difference(getattr(numba_fit, attribute),
                                       getattr(numpy_fit, attribute)) < TOL, attribute
    np.testing.assert_array_equal(numba_fit.persistent_chains_, numpy_fit.persistent_chains_)
    for key in ("free_energy", "reconstruction_error", "elbo", "acceptance"):
        if key in numpy_fit.history_[-1]:
            assert numba_fit.history_[-1][key] == pytest.approx(numpy_fit.history_[-1][key],
                                                                rel=TOL, abs=TOL)
    # inference: each fit on its own backend
    for method in ("transform", "free_energy", "score_samples"):
        a = getattr(numba_fit, method)(X)
        b = getattr(numpy_fit, method)(X)
        assert max_relative_difference(a, b) < TOL, method
    for probabilities in (False, True):
        a = numba_fit.sample(5, n_steps=3, random_state=1, return_probabilities=probabilities)
        b = numpy_fit.sample(5, n_steps=3, random_state=1, return_probabilities=probabilities)
        assert max_relative_difference(a, b) < TOL


@needs_numba
def test_backend_is_a_hyperparameter_that_must_match_on_resume(tmp_path, X):
    path = tmp_path / "ckpt.npz"
    ESTIMATORS["rbm"](backend="numpy", random_state=0, checkpoint_path=path).fit(X)
    resumed = ESTIMATORS["rbm"](backend="numba", random_state=0, checkpoint_path=path, resume=True)
    with pytest.raises(ValueError, match="backend='numba' here, 'numpy' in the checkpoint"):
        resumed.fit(X)
    again = ESTIMATORS["rbm"](backend="numpy", random_state=0, checkpoint_path=path, resume=True)
    assert again.fit(X).n_iter_ == 2


def test_backend_is_stored_unchanged_and_checked_in_fit(X):
    est = BernoulliRBM(backend="torch")
    assert est.get_params()["backend"] == "torch"
    with pytest.raises(ValueError, match="backend must be one of 'numba', 'numpy'"):
        est.fit(X)
    for cls in (CapsulePoE, RoutedCapsuleRBM, BernoulliRBM):  # the last constructor parameter
        assert list(inspect.signature(cls.__init__).parameters)[-1] == "backend"
        assert cls().backend == "numba"


def test_numba_backend_falls_back_to_numpy_with_one_warning(monkeypatch, X):
    monkeypatch.setattr(jit, "NUMBA_AVAILABLE", False)
    monkeypatch.setattr(kernels, "_warned_fallback", False)
    with pytest.warns(RuntimeWarning, match="numba cannot be imported"):
        a = ESTIMATORS["rbm"](backend="numba", random_state=1).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once per process
        a.transform(X)
    b = ESTIMATORS["rbm"](backend="numpy", random_state=1).fit(X)
    np.testing.assert_array_equal(a.components_, b.components_)
    assert kernels.resolve_backend("auto") == "numpy"


@needs_numba
@pytest.mark.parametrize("name", ["rbm", "p-mh", "r"])
def test_ais_backends_agree(name, X):
    est = ESTIMATORS[name](backend="numpy", random_state=0).fit(X)
    betas = np.linspace(0.0, 1.0, 30)
    results = [ais_log_partition(est, n_runs=8, betas=betas, random_state=2, backend=b)
               for b in kernels.BACKENDS]
    np.testing.assert_allclose(results[0].log_weights, results[1].log_weights, rtol=1e-10,
                               atol=1e-10)


@needs_numba
def test_every_estimator_call_exists_on_both_backends():
    """Each namespace offers its reference module's functions (compiled or the reference's)."""
    for model in kernels.MODELS:
        numba_module = kernels.get_backend("numba", model)
        numpy_module = kernels.get_backend("numpy", model)
        for name in getattr(numpy_module, "__all__", []):
            assert callable(getattr(numba_module, name)), (model, name)
    assert callable(kernels.get_backend("numpy", "routing").routing_forward_vjp)
    assert kernels.get_backend("numba", "model_r")._categorical_draw is not None


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(9, 30, 20), (1, 5, 3), (17, 64, 33)])
def test_rbm_kernels_match_the_reference(dtype, shape):
    """Every compiled RBM function against capsnp.rbm on random shapes (B, D, H)."""
    from capsnp import rbm as ref
    from capsnp.params import RBMParams

    B, D, H = shape
    rng = np.random.default_rng(B * D + H)
    params = RBMParams(rng.normal(size=(D, H)).astype(dtype), rng.normal(size=D).astype(dtype),
                       rng.normal(size=H).astype(dtype))
    v = (rng.random((B, D)) < 0.3).astype(dtype)
    v_model = (rng.random((B + 3, D)) < 0.3).astype(dtype)
    h = (rng.random((B, H)) < 0.5).astype(dtype)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    k = kernels.rbm
    pairs = [(k.hidden_probability(params, v), ref.hidden_probability(params, v)),
             (k.visible_probability(params, h), ref.visible_probability(params, h)),
             (k.free_energy(params, v), ref.free_energy(params, v))]
    pairs += list(zip(k.cd_gradient(params, v, v_model), ref.cd_gradient(params, v, v_model)))
    for a, b in pairs:
        assert a.dtype == b.dtype == dtype
        assert max_relative_difference(a, b) <= rtol
    for name, x in (("sample_hidden", v), ("sample_visible", h), ("pseudo_log_likelihood", v)):
        rng_k, rng_r = np.random.default_rng(1), np.random.default_rng(1)
        a, b = getattr(k, name)(params, x, rng_k), getattr(ref, name)(params, x, rng_r)
        if name == "pseudo_log_likelihood":
            assert max_relative_difference(a, b) <= rtol * 100  # a difference of free energies
        elif dtype == np.float64:
            np.testing.assert_array_equal(a, b)
        else:  # a float32 probability may differ from the reference's by an ulp
            assert np.mean(a == b) >= 0.95
        assert rng_k.random() == rng_r.random()  # the same draws were made


@needs_numba
def test_rbm_kernels_do_not_depend_on_thread_count():
    import numba

    from capsnp.params import RBMParams

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 threads")
    rng = np.random.default_rng(0)
    params = RBMParams(rng.normal(size=(70, 40)), rng.normal(size=70), rng.normal(size=40))
    v = (rng.random((12, 70)) < 0.3).astype(np.float64)
    before = numba.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            sweep = kernels.rbm.gibbs_sweep(params, v, np.random.default_rng(5))
            results.append([*sweep, *kernels.rbm.cd_gradient(params, v, sweep[0]),
                            kernels.rbm.free_energy(params, v)])
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weight_decay", [0.0, 2e-4])
def test_checked_sgd_update_matches_the_reference_bit_for_bit(dtype, weight_decay):
    """The fused momentum step (one pass per parameter) against capsnp.training's."""
    from capsnp import training
    from capsnp.params import RBMParams

    rng = np.random.default_rng(3)

    def container():
        return RBMParams(*(rng.normal(size=s).astype(dtype) for s in ((13, 7), (13,), (7,))))

    params, velocity, grad = container(), container(), container()
    k = kernels.training.checked_sgd_update(params, velocity, grad, 0.05, 0.9, weight_decay, 1)
    r = training.checked_sgd_update(params, velocity, grad, 0.05, 0.9, weight_decay, 1)
    for got, want in zip(k, r, strict=True):
        assert type(got) is RBMParams
        for x, y in zip(got, want, strict=True):
            assert x.dtype == y.dtype == dtype
            np.testing.assert_array_equal(x, y)
    assert not np.shares_memory(k[0].W, params.W)  # new arrays, inputs untouched


@needs_numba
@pytest.mark.parametrize("where, field", [("gradient", "a"), ("parameters", "W")])
def test_checked_sgd_update_raises_like_the_reference(where, field):
    from capsnp import training
    from capsnp.params import RBMParams

    rng = np.random.default_rng(4)
    params = RBMParams(rng.normal(size=(5, 3)), rng.normal(size=5), rng.normal(size=3))
    velocity = RBMParams(*map(np.zeros_like, params))
    grad = RBMParams(*(x.copy() for x in params))
    if where == "gradient":
        grad.a[2] = np.nan
    else:
        grad.W[1, 1] = 1e308
        params.W[1, 1] = 1e308  # theta + lr * g overflows to inf
    for update in (kernels.training.checked_sgd_update, training.checked_sgd_update):
        with pytest.raises(FloatingPointError, match=rf"{where} of {field} during epoch 3"):
            update(params, velocity, grad, 1.0, 0.0, 0.0, 3)
