"""Reliability: bad inputs refused clearly, inputs never modified, dtypes kept, divergence and
extreme values handled, reproducible fits, and scikit-learn's estimator conventions.

Every bad input in the tables below is one distinct case; ``test_bad_input_count`` counts them.
"""

import copy
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import SEEDS
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from threadpoolctl import threadpool_limits

from capsnp import datasets, model_p, model_r, rbm
from capsnp.cli import main
from capsnp.estimators import (BernoulliRBM, CapsulePoE, RoutedCapsuleRBM, load_estimator,
                               mean_field_elbo)
from capsnp.io import load_model, save_model
from capsnp.ops import log_sigmoid, sigmoid, softmax, softplus, squash, squash_vjp
from capsnp.params import PParams, RBMParams, RParams
from capsnp.routing import dynamic_routing

KINDS = ["p", "r", "rbm"]


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def digits():
    """60 binarised 8x8 digits, (60, 64) float64."""
    return (load_digits().data[:60] / 16.0 > 0.5).astype(np.float64)


def make(kind, **overrides):
    """Small estimators for 8x8 images."""
    common = dict(batch_size=20, n_iter=1, random_state=0)
    if kind == "p":
        return CapsulePoE(**{**common, "n_capsules": 3, "capsule_dim": 3, "patch": 4, **overrides})
    if kind == "r":
        return RoutedCapsuleRBM(**{**common, "n_capsules": 3, "capsule_dim": 3, "patch": 4,
                                   "learning_rate": 0.2, **overrides})
    return BernoulliRBM(**{**common, "n_components": 8, **overrides})


_FITTED = {}


def fitted(kind, digits):
    """One fitted estimator per kind, shared (tests must not train it further)."""
    if kind not in _FITTED:
        _FITTED[kind] = make(kind).fit(digits)
    return _FITTED[kind]


def fitted_arrays(est):
    return {name: getattr(est, name) for name in est._param_attributes}


# ----------------------------------------------------------------------------- bad data


def _with(value, dtype=np.float64):
    def build(X):
        X = X.astype(dtype)
        X[1, 2] = value
        return X
    return build


def _ragged(X):
    return [list(X[0]), list(X[1][:-1])]


def _object_with(value):
    def build(X):
        X = X.astype(object)
        X[0, 0] = value
        return X
    return build


# id: (X from the 2-D digits (n, 64), exception, message pattern)
BAD_DATA = {
    "NaN": (_with(np.nan), ValueError,
            r"NaN \(first at row 1, column 2\).*finite values in \[0, 1\]"),
    "+inf": (_with(np.inf), ValueError, r"infinity .*finite values in \[0, 1\]"),
    "-inf": (_with(-np.inf), ValueError, "infinity"),
    "NaN in float32": (_with(np.nan, np.float32), ValueError, "NaN"),
    "above 1": (lambda X: X * 2, ValueError, r"expects values in \[0, 1\].*got values in \[0, 2\]"),
    "negative": (lambda X: X - 0.5, ValueError, r"Negative values in data.*\[0, 1\]"),
    "grey levels 0..255": (lambda X: (X * 255).astype(np.uint8), ValueError, "to_unit_interval"),
    "1-D": (lambda X: X[0], ValueError, r"2-D.*1-D array of shape \(64,\).*Reshape your data"),
    "3-D images": (lambda X: X.reshape(-1, 8, 8), ValueError,
                   r"3-D array.*X.reshape\(len\(X\), -1\)"),
    "0-D scalar": (lambda X: np.float64(0.5), ValueError, r"0-D array.*Reshape"),
    "no rows": (lambda X: X[:0], ValueError, r"0 sample\(s\)"),
    "no columns": (lambda X: X[:, :0], ValueError, r"0 feature\(s\)"),
    "complex": (lambda X: X + 0j, ValueError, "Complex data not supported"),
    "strings": (lambda X: X.astype(str), TypeError, "not numeric"),
    "bytes": (lambda X: X.astype(bytes), TypeError, "not numeric"),
    "datetime": (lambda X: X.astype("datetime64[s]"), TypeError, "not numeric"),
    "object holding a dict": (_object_with({"a": 1}), TypeError,
                              "argument must be a string or a real number"),
    "object holding a string": (_object_with("x"), TypeError,
                                "not all its entries are real numbers"),
    "object holding None": (_object_with(None), ValueError, "contains NaN"),
    "None": (lambda X: None, TypeError, "X is None"),
    "ragged rows": (_ragged, ValueError, "equal-length rows"),
    "sparse csr_matrix": (sp.csr_matrix, TypeError, "sparse input.*toarray"),
    "sparse csc_array": (sp.csc_array, TypeError, "sparse input"),
    "sparse coo_matrix": (sp.coo_matrix, TypeError, "sparse input"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
@pytest.mark.parametrize("kind", KINDS)
def test_fit_refuses_bad_data(kind, case, digits):
    build, error, message = BAD_DATA[case]
    with pytest.raises(error, match=message):
        make(kind).fit(build(digits.copy()))


# Methods taking data after fit: (method, how to call it on X)
METHODS = {
    "partial_fit": lambda est, X: copy.deepcopy(est).partial_fit(X),
    "transform": lambda est, X: est.transform(X),
    "score_samples": lambda est, X: est.score_samples(X),
    "score": lambda est, X: est.score(X),
    "free_energy": lambda est, X: est.free_energy(X),
    "evaluate": lambda est, X: est.evaluate(X),
    "sample(init=X)": lambda est, X: est.sample(n_steps=1, init=X),
}

BAD_AFTER_FIT = {
    "63 features": (lambda X: X[:, :63], ValueError,
                    "X has 63 features, but .* is expecting 64 features"),
    "NaN": (_with(np.nan), ValueError, "NaN"),
    "above 1": (lambda X: X + 1, ValueError, r"\[0, 1\]"),
    "1-D": (lambda X: X[0], ValueError, "Reshape your data"),
    "sparse": (sp.csr_matrix, TypeError, "sparse"),
    "complex": (lambda X: X + 0j, ValueError, "Complex data not supported"),
}


@pytest.mark.parametrize("case", sorted(BAD_AFTER_FIT))
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("kind", KINDS)
def test_fitted_methods_refuse_bad_data(kind, method, case, digits):
    build, error, message = BAD_AFTER_FIT[case]
    if method == "sample(init=X)":
        message = message.replace("X has", "init has")
    with pytest.raises(error, match=message):
        METHODS[method](fitted(kind, digits), build(digits.copy()))


def test_methods_before_fit_raise_not_fitted(digits, tmp_path):
    for kind in KINDS:
        for name in ("transform", "score_samples", "free_energy", "evaluate", "score", "sample"):
            est = make(kind)
            args = () if name == "sample" else (digits,)
            with pytest.raises(NotFittedError):
                getattr(est, name)(*args)
        with pytest.raises(NotFittedError):
            make(kind).save(tmp_path / "unused.npz")


BAD_SAMPLE_ARGS = {
    "unknown init": (dict(init="data"), ValueError, "init must be one of 'noise'"),
    "n_samples differs from init": (dict(n_samples=5, init="rows"), ValueError,
                                    "n_samples=5 but init has 3 rows"),
    "negative n_steps": (dict(n_steps=-1), ValueError, "n_steps must be >= 0"),
    "float n_steps": (dict(n_steps=2.5), ValueError, "n_steps must be an integer"),
    "zero n_samples": (dict(n_samples=0), ValueError, "n_samples must be >= 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAMPLE_ARGS))
def test_sample_refuses_bad_arguments(case, digits):
    kwargs, error, message = BAD_SAMPLE_ARGS[case]
    if kwargs.get("init") == "rows":
        kwargs = {**kwargs, "init": digits[:3]}
    with pytest.raises(error, match=message):
        fitted("rbm", digits).sample(**kwargs)


# Image layouts of the capsule models: (constructor arguments, X columns, message)
BAD_LAYOUTS = {
    "patch does not tile": (dict(patch=3), 64, r"patch=3 does not tile image_shape=\(8, 8\)"),
    "patch larger than image": (dict(patch=16), 64, "does not tile"),
    "rectangular patch does not tile": (dict(image_shape=(4, 16), patch=(3, 4)), 64,
                                        "does not tile"),
    "not a square": (dict(), 60, "n_features=60 is not a square"),
    "image_shape pixel count": (dict(image_shape=(7, 9)), 64,
                                "has 63 pixels but X has 64 features"),
    "image_shape of three ints": (dict(image_shape=(8, 8, 1)), 64,
                                  "image_shape must be a positive int or a pair"),
    "image_shape with a zero": (dict(image_shape=(0, 64)), 64,
                                "image_shape must be a positive int"),
    "image_shape as a string": (dict(image_shape="8x8"), 64, "image_shape must be"),
    "fractional patch": (dict(patch=2.5), 64, "patch must be a positive int or a pair"),
    "negative patch": (dict(patch=(-2, 4)), 64, "patch must be"),
}


@pytest.mark.parametrize("case", sorted(BAD_LAYOUTS))
@pytest.mark.parametrize("kind", ["p", "r"])
def test_capsule_layouts_that_do_not_tile_are_refused(kind, case, digits):
    kwargs, columns, message = BAD_LAYOUTS[case]
    with pytest.raises(ValueError, match=message):
        make(kind, **kwargs).fit(digits[:, :columns])


BAD_HYPERPARAMETERS = {
    "NaN learning_rate": (dict(learning_rate=np.nan), ValueError, "learning_rate must be finite"),
    "infinite learning_rate": (dict(learning_rate=np.inf), ValueError,
                               "learning_rate must be finite"),
    "zero learning_rate": (dict(learning_rate=0.0), ValueError, "learning_rate must be > 0"),
    "string learning_rate": (dict(learning_rate="0.1"), ValueError,
                             "learning_rate must be a number"),
    "zero batch_size": (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    "fractional batch_size": (dict(batch_size=2.5), ValueError, "batch_size must be an integer"),
    "boolean n_iter": (dict(n_iter=True), ValueError, "n_iter must be an integer"),
    "momentum 1": (dict(momentum=1.0), ValueError, "momentum must be < 1"),
    "integer dtype": (dict(dtype=np.int32), ValueError, "dtype must be float32 or float64"),
    "persistent as a string": (dict(persistent="yes"), ValueError,
                               "persistent must be True or False"),
    "chain_init unknown": (dict(chain_init="zeros"), ValueError, "chain_init must be one of"),
    "chain_restart 1": (dict(chain_restart=1.0), ValueError, "chain_restart must be < 1"),
    "negative chain_restart": (dict(chain_restart=-0.1), ValueError, "chain_restart must be >= 0"),
    "chain_restart with CD-k": (dict(chain_restart=0.1, persistent=False), ValueError,
                                "chain_restart=0.1 restarts persistent chains"),
    "zero checkpoint_every": (dict(checkpoint_every=0), ValueError,
                              "checkpoint_every must be >= 1"),
    "checkpoint_path not a path": (dict(checkpoint_path=3), ValueError,
                                   "checkpoint_path must be None or a file path"),
    "resume without checkpoint_path": (dict(resume=True), ValueError,
                                       "resume=True .* checkpoint_path, which is None"),
    "resume as an int": (dict(resume=1, checkpoint_path="c.npz"), ValueError,
                         "resume must be True or False"),
    "checkpoint in a missing directory": (dict(checkpoint_path="no/such/dir/c.npz"),
                                          FileNotFoundError, "does not exist"),
    "resume from a missing checkpoint": (dict(checkpoint_path="missing.npz", resume=True),
                                         FileNotFoundError, "no checkpoint at missing.npz"),
}


@pytest.mark.parametrize("case", sorted(BAD_HYPERPARAMETERS))
@pytest.mark.parametrize("kind", KINDS)
def test_bad_hyperparameters_are_refused_at_fit(kind, case, digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kwargs, error, message = BAD_HYPERPARAMETERS[case]
    est = make(kind, **kwargs)
    assert all(est.get_params()[k] is v for k, v in kwargs.items())  # stored unchanged
    with pytest.raises(error, match=message):
        est.fit(digits)


BAD_MODEL_FILES = {
    "unknown class": (lambda a, m: m.update(model="PCA"), "unknown model class 'PCA'"),
    "unknown hyper-parameter": (lambda a, m: m["hyperparameters"].update(colour="red"),
                                r"unknown hyper-parameters \['colour'\]"),
    "bad dtype name": (lambda a, m: m["hyperparameters"].update(dtype="float99"), "bad dtype"),
    "no hyper-parameters": (lambda a, m: m.pop("hyperparameters"), "no 'hyperparameters'"),
    "invalid hyper-parameter value": (lambda a, m: m["hyperparameters"].update(batch_size=-1),
                                      "batch_size must be >= 1"),
    "n_features_in_ not a number": (lambda a, m: m.update(n_features_in_="many"),
                                    "malformed metadata"),
    "infinite velocity": (lambda a, m: a.update(velocity_b=np.full(8, np.inf)),
                          "'velocity_b' holds NaN or infinity"),
    "routes out of range": (None, "chains_a"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODEL_FILES))
def test_load_estimator_refuses_bad_model_files(case, digits, tmp_path):
    edit, message = BAD_MODEL_FILES[case]
    kind = "r" if case == "routes out of range" else "rbm"
    if edit is None:
        def edit(a, m):
            a["chains_a"] = a["chains_a"] + 10
    path = tmp_path / "model.npz"
    fitted(kind, digits).save(path)
    arrays, meta = load_model(path)
    edit(arrays, meta)
    for key in ("format_version", "capsnp_version"):
        meta.pop(key)
    save_model(path, arrays, meta)
    with pytest.raises(ValueError, match=message):
        load_estimator(path)


# ----------------------------------------------------------------------------- data sets

BAD_GREY_LEVELS = {
    "NaN": (np.array([[0.5, np.nan]]), ValueError, "got NaN"),
    "infinity": (np.array([[0.5, np.inf]]), ValueError, r"\[0, 1\]"),
    "floats above 1": (np.array([[0.5, 3.0]]), ValueError, r"got values in \[0.5, 3\]"),
    "integers above 255": (np.array([[0, 256]]), ValueError, r"0..255, got values in \[0, 256\]"),
    "negative integers": (np.array([[-1, 3]]), ValueError, "0..255"),
    "complex": (np.array([[1 + 1j]]), TypeError, "got dtype complex128"),
    "strings": (np.array([["7"]]), TypeError, "got dtype <U1"),
    "objects": (np.array([[{}]], dtype=object), TypeError, "got dtype object"),
    "sparse": (sp.csr_matrix(np.eye(3)), TypeError, "sparse"),
}


@pytest.mark.parametrize("case", sorted(BAD_GREY_LEVELS))
@pytest.mark.parametrize("function", [datasets.to_unit_interval, datasets.binarize])
def test_preprocessing_refuses_bad_grey_levels(function, case):
    X, error, message = BAD_GREY_LEVELS[case]
    with pytest.raises(error, match=message):
        function(X)


BAD_LOADER_ARGS = {
    "binarize method": (lambda: datasets.binarize(np.zeros((2, 2), np.uint8), method="otsu"),
                        ValueError, "method must be"),
    "integer result dtype": (lambda: datasets.to_unit_interval(np.zeros(3, np.uint8), dtype=int),
                             TypeError, "floating dtype"),
    "dataset name not a string": (lambda: datasets.load_dataset(7), TypeError, "must be a string"),
    "unknown dataset": (lambda: datasets.load_dataset("cifar"), ValueError,
                        "unknown dataset 'cifar'"),
    "unknown split": (lambda: datasets.load_embedded("validation"), ValueError,
                      "split must be 'train' or 'test'"),
    "split not a string": (lambda: datasets.load_embedded(["train"]), ValueError, "split must be"),
}


@pytest.mark.parametrize("case", sorted(BAD_LOADER_ARGS))
def test_loaders_refuse_bad_arguments(case):
    call, error, message = BAD_LOADER_ARGS[case]
    with pytest.raises(error, match=message):
        call()


# ----------------------------------------------------------------------------- command line

BAD_CLI = {
    "negative epochs": (["train", "--epochs", "-1"], 2, "expected a non-negative integer, got -1"),
    "NaN learning rate": (["train", "--lr", "nan"], 2, "expected a positive finite number"),
    "zero learning rate": (["train", "--lr", "0"], 2, "expected a positive finite number"),
    "text learning rate": (["train", "--lr", "fast"], 2, "expected a positive number, got 'fast'"),
    "negative seed": (["train", "--seed", "-3"], 2, "non-negative integer"),
    "zero batch size": (["train", "--batch-size", "0"], 2, "expected a positive integer, got 0"),
    "text batch size": (["train", "--batch-size", "ten"], 2, "got 'ten'"),
    "zero checkpoint interval": (["train", "--checkpoint-every", "0"], 2, "positive integer"),
    "unknown model": (["train", "--model", "vae"], 2, "invalid choice"),
    "negative sample steps": (["sample", "--model-file", "m.npz", "--steps", "-5"], 2,
                              "non-negative"),
    "patch that does not tile": (["train", "--model", "r", "--patch", "5", "--epochs", "1",
                                  "--max-images", "10", "--out", "x"], 1, "does not tile"),
    "missing model file": (["evaluate", "--model-file", "missing.npz"], 1, "missing.npz"),
    "model file that is not a zip": (["sample", "--model-file", "junk.npz"], 1, "not a valid .npz"),
}


@pytest.mark.parametrize("case", sorted(BAD_CLI))
def test_cli_refuses_bad_arguments(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    argv, code, message = BAD_CLI[case]
    assert main(argv) == code
    assert message in capsys.readouterr().err


def test_bad_input_count():
    """The number of distinct bad inputs exercised in this file and test_checkpoints.py."""
    from test_checkpoints import BAD_CHECKPOINTS

    tables = [BAD_DATA, BAD_AFTER_FIT, BAD_SAMPLE_ARGS, BAD_LAYOUTS, BAD_HYPERPARAMETERS,
              BAD_MODEL_FILES, BAD_GREY_LEVELS, BAD_LOADER_ARGS, BAD_CLI, BAD_CHECKPOINTS]
    total = sum(len(t) for t in tables) + 1  # + calling methods before fit
    print(f"{total} distinct bad inputs")
    assert total >= 100


# ----------------------------------------------------------------------------- inputs unchanged


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", KINDS)
def test_read_only_input_is_accepted_and_never_modified(kind, dtype, digits):
    X = digits.astype(dtype)
    X.setflags(write=False)
    before = X.copy()
    est = make(kind, dtype=dtype).fit(X)
    est.partial_fit(X)
    for call in (est.transform, est.score_samples, est.free_energy, est.evaluate, est.score):
        call(X)
    est.sample(n_steps=1, init=X[:4])
    np.testing.assert_array_equal(X, before)
    F = np.asfortranarray(digits)  # another memory layout, also read-only
    F.setflags(write=False)
    make(kind).fit(F).transform(F)
    np.testing.assert_array_equal(F, digits)


def test_preprocessing_never_modifies_its_input():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(5, 784), dtype=np.uint8)
    grey.setflags(write=False)
    before = grey.copy()
    datasets.binarize(grey, random_state=0)
    datasets.binarize(grey, method="threshold")
    assert datasets.to_unit_interval(grey).dtype == np.float64
    np.testing.assert_array_equal(grey, before)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_estimators_give_float32_everywhere(kind, digits):
    est = make(kind, dtype=np.float32).fit(digits)  # float64 input is converted
    for name, value in fitted_arrays(est).items():
        assert value.dtype == np.float32, name
    X32 = digits.astype(np.float32)
    outputs = {"transform": est.transform(X32), "free_energy": est.free_energy(X32),
               "score_samples": est.score_samples(X32), "sample": est.sample(3, n_steps=1),
               "probabilities": est.sample(3, n_steps=1, return_probabilities=True),
               "chains": est.persistent_chains_}
    for name, value in outputs.items():
        assert value.dtype == np.float32, name
    # the documented agreement with float64: 1e-3 after an epoch (test_estimators has the details)
    ref = make(kind).fit(digits)
    for name, value in fitted_arrays(est).items():
        np.testing.assert_allclose(value, getattr(ref, name), rtol=1e-3, atol=1e-3, err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_other_real_dtypes_are_converted(kind, digits):
    ref = make(kind).fit(digits)
    for X in (digits.astype(bool), digits.astype(np.int64), digits.astype(np.uint8),
              digits.astype(object), digits.tolist()):
        est = make(kind).fit(X)
        for name, value in fitted_arrays(est).items():
            np.testing.assert_array_equal(value, getattr(ref, name), err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_size_larger_than_the_data_is_clipped(kind, digits):
    big = make(kind, batch_size=1000, n_chains=20, n_iter=2).fit(digits)
    exact = make(kind, batch_size=len(digits), n_chains=20, n_iter=2).fit(digits)
    for name, value in fitted_arrays(big).items():
        np.testing.assert_array_equal(value, getattr(exact, name), err_msg=name)


def test_rbm_with_batch_size_larger_than_the_data_keeps_batch_size_chains(digits):
    est = make("rbm", batch_size=500).fit(digits[:30])
    assert est.persistent_chains_.shape == (500, 64)  # as scikit-learn's h_samples_
    assert np.all(np.isfinite(est.components_))


def test_rbm_n_chains_defaults_to_batch_size_and_sets_the_chain_count(digits, tmp_path):
    default = make("rbm", n_iter=2).fit(digits)
    explicit = make("rbm", n_iter=2, n_chains=20).fit(digits)  # batch_size=20
    for name, value in fitted_arrays(default).items():
        np.testing.assert_array_equal(value, getattr(explicit, name), err_msg=name)
    more = make("rbm", n_iter=2, n_chains=50).fit(digits)
    assert more.persistent_chains_.shape == (50, 64)
    assert not np.allclose(more.components_, default.components_)  # the chains enter the step
    more.save(tmp_path / "rbm.npz")
    loaded = load_estimator(tmp_path / "rbm.npz")
    np.testing.assert_array_equal(loaded.persistent_chains_, more.persistent_chains_)
    assert loaded.n_chains == 50
    with pytest.raises(ValueError, match="n_chains"):
        make("rbm", n_chains=0).fit(digits)


# ----------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_same_random_state_same_model_and_no_global_random_state(kind, seed, digits):
    np.random.seed(12345)
    global_state = np.random.get_state()
    a = make(kind, random_state=seed, n_iter=2).fit(digits)
    b = make(kind, random_state=seed, n_iter=2).fit(digits)
    a.sample(2, n_steps=1), a.score_samples(digits), a.evaluate(digits)
    for name, value in fitted_arrays(a).items():
        assert value.tobytes() == getattr(b, name).tobytes(), name
    np.testing.assert_array_equal(a.persistent_chains_, b.persistent_chains_)
    after = np.random.get_state()
    assert global_state[0] == after[0] and np.array_equal(global_state[1], after[1])
    assert global_state[2:] == after[2:]


# ----------------------------------------------------------------------------- extreme values


def test_elementwise_functions_stay_finite_at_the_float_limits():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # e.g. the -inf in softmax's shift
        for dtype in (np.float32, np.float64):
            big = np.finfo(dtype).max
            x = np.array([-np.inf, -big, -1e4, -50, 0, 50, 1e4, big, np.inf], dtype=dtype)
            p = sigmoid(x)
            assert p.dtype == dtype and np.all((p >= 0) & (p <= 1))
            np.testing.assert_array_equal(p[[0, 1, 4, 7, 8]], [0, 0, 0.5, 1, 1])
            assert np.all(np.isfinite(softplus(x[1:-1]))) and np.all(softplus(x[1:-1]) >= 0)
            assert np.all(np.isfinite(log_sigmoid(x[1:-1]))) and np.all(log_sigmoid(x[1:-1]) <= 0)
            c = softmax(np.array([[big, -big, 0.0], [-big, -big, -big]], dtype=dtype))
            assert np.all(np.isfinite(c)) and np.allclose(c.sum(axis=-1), 1)
            s = np.array([[big / 4, -big / 4, 0], [1e-30, 0, 0], [0, 0, 0]], dtype=dtype)
            v, g = squash(s), squash_vjp(s, np.ones_like(s))
            assert np.all(np.isfinite(v)) and np.all(np.isfinite(g))
            assert np.linalg.norm(v[0].astype(np.float64)) == pytest.approx(1.0, abs=1e-6)
            u = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(dtype) * dtype(1e30)
            c, s, v = dynamic_routing(u, 3)
            assert all(np.all(np.isfinite(t)) for t in (c, s, v))
            np.testing.assert_allclose(c.sum(axis=2), 1, rtol=1e-6)


@pytest.mark.parametrize("scale", [1e3, 1e30, 1e100])
def test_free_energies_of_models_with_huge_weights_are_finite(scale):
    rng = np.random.default_rng(0)
    I, J, d_h, d_v = 4, 3, 2, 4
    W = rng.normal(size=(I, J, d_h, d_v)) * scale
    alpha, beta = rng.normal(size=(I, d_v)) * scale, rng.normal(size=(I, J)) * scale
    v = (rng.random((6, I, d_v)) < 0.5).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        F_p = model_p.free_energy(PParams(W, alpha, rng.normal(size=J) * scale, beta), v, 3)
        r_params = RParams(W, alpha, rng.normal(size=(J, d_h)) * scale, beta)
        c, mu, _ = model_r.mean_field(r_params, v, tol=1e-3, max_iter=30)
        elbo = mean_field_elbo(r_params, v, c)
        rbm_params = RBMParams(rng.normal(size=(16, 5)) * scale, rng.normal(size=16) * scale,
                               rng.normal(size=5) * scale)
        F_rbm = rbm.free_energy(rbm_params, (rng.random((6, 16)) < 0.5).astype(np.float64))
    for name, value in (("P", F_p), ("R bound", elbo), ("RBM", F_rbm), ("c", c), ("mu", mu)):
        assert np.all(np.isfinite(value)), name


def test_fitted_estimators_with_huge_parameters_give_finite_outputs(digits):
    for kind in KINDS:
        est = copy.deepcopy(fitted(kind, digits))
        for name in est._param_attributes:
            setattr(est, name, getattr(est, name) * 1e50)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for method in (est.free_energy, est.transform, est.score_samples):
                assert np.all(np.isfinite(method(digits))), (kind, method.__name__)


# ----------------------------------------------------------------------------- scikit-learn


def check_instances():
    """Small estimators for scikit-learn's checks (their data have 1 to 20 features)."""
    return [BernoulliRBM(n_components=3, batch_size=10, n_iter=2, random_state=0),
            CapsulePoE(n_capsules=2, capsule_dim=2, patch=1, batch_size=10, n_iter=2,
                       random_state=0),
            RoutedCapsuleRBM(n_capsules=2, capsule_dim=2, patch=1, batch_size=10, n_iter=2,
                             random_state=0)]


_OUT_OF_RANGE = ("the check's data lie outside [0, 1] (e.g. 3 * uniform or normal), which the "
                 "estimators refuse by design; the convention is tested on [0, 1] data in "
                 "test_conventions_on_valid_data")
_RANGE_BOUND_CHECKS = (
    "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
    "check_estimators_fit_returns_self", "check_readonly_memmap_input",
    "check_n_features_in_after_fitting", "check_estimators_dtypes", "check_pipeline_consistency",
    "check_estimators_pickle", "check_f_contiguous_array_estimator",
    "check_transformer_data_not_an_array", "check_transformer_general",
    "check_transformer_preserve_dtypes", "check_methods_sample_order_invariance",
    "check_methods_subset_invariance", "check_fit2d_1sample", "check_fit2d_1feature",
    "check_dict_unchanged", "check_fit_idempotent", "check_fit_check_is_fitted",
    "check_n_features_in", "check_fit2d_predict1d",
)
_NOT_SQUARE = ("the check's data have 3 or 10 features, not a square image; image_shape=None "
               "means square images (the capsule models need an image layout)")


def expected_failed_checks(estimator):
    failed = {name: _OUT_OF_RANGE for name in _RANGE_BOUND_CHECKS}
    if not isinstance(estimator, BernoulliRBM):
        failed.update({name: _NOT_SQUARE for name in (
            "check_fit_score_takes_y", "check_dtype_object", "check_estimators_nan_inf")})
    return failed


def test_scikit_learn_estimator_checks():
    from sklearn.utils.estimator_checks import check_estimator

    for est in check_instances():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = check_estimator(est, expected_failed_checks=expected_failed_checks(est),
                                      on_fail=None)
        status = {}
        for r in results:
            status.setdefault(r["check_name"], set()).add(r["status"])
        failed = sorted(name for name, s in status.items() if "failed" in s)
        assert not failed, f"{type(est).__name__}: unexpected failures {failed}"
        # every expected failure still fails (otherwise it should be removed from the list)
        passing_now = sorted(name for name in expected_failed_checks(est)
                             if status.get(name) == {"passed"})
        assert not passing_now, f"{type(est).__name__}: these now pass: {passing_now}"


@pytest.mark.parametrize("kind", KINDS)
def test_conventions_on_valid_data(kind, digits, tmp_path):
    """The conventions of the xfailed checks above, on data in [0, 1]."""
    X = digits
    est = make(kind)
    params = copy.deepcopy(est.get_params())
    public_before = {k for k in vars(est) if not k.startswith("_")}
    assert est.fit(X) is est  # fit returns self
    assert est.get_params() == params  # parameters not overwritten
    new_public = {k for k in vars(est) if not k.startswith("_")} - public_before
    assert all(k.endswith("_") for k in new_public), new_public  # fitted attributes end in _
    assert est.n_features_in_ == 64
    # transform / score leave the estimator's __dict__ unchanged
    snapshot = {k: copy.deepcopy(v) for k, v in vars(est).items() if not k.startswith("_")}
    T = est.transform(X)
    est.free_energy(X), est.score_samples(X), est.score(X)
    for k, v in snapshot.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(getattr(est, k), v, err_msg=k)
        else:
            assert getattr(est, k) == v, k
    # fit is idempotent: refitting a clone gives the same model
    again = clone(est).fit(X)
    for name, value in fitted_arrays(est).items():
        np.testing.assert_array_equal(value, getattr(again, name), err_msg=name)
    # subset and order invariance of the deterministic methods
    order = np.random.default_rng(1).permutation(len(X))
    np.testing.assert_allclose(est.transform(X[order]), T[order], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(est.transform(X[:7]), T[:7], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(est.free_energy(X[:7]), est.free_energy(X)[:7], rtol=1e-12)
    # lists, F-ordered arrays and read-only memory maps work
    np.testing.assert_array_equal(est.transform(X.tolist()), T)
    np.testing.assert_array_equal(est.transform(np.asfortranarray(X)), T)
    np.save(tmp_path / "X.npy", X)
    memmap = np.load(tmp_path / "X.npy", mmap_mode="r")
    np.testing.assert_array_equal(est.transform(memmap), T)
    for name, value in fitted_arrays(clone(est).fit(memmap)).items():
        np.testing.assert_array_equal(value, getattr(est, name), err_msg=name)
    # one sample: fit works (the single row is its own minibatch)
    assert np.all(np.isfinite(fitted_arrays(clone(est).fit(X[:1]))[est._param_attributes[0]]))
    # 1-D input after fit and wrong feature counts, in every method
    for method in (est.transform, est.score_samples, est.free_energy, est.score):
        with pytest.raises(ValueError, match="Reshape your data"):
            method(X[0])
        with pytest.raises(ValueError, match="X has 63 features, but .* is expecting 64"):
            method(X[:, :63])
    with pytest.raises(ValueError, match="X has 63 features"):
        clone(est).partial_fit(X).partial_fit(X[:, :63])
    # pipeline consistency and cloneability
    pipe = make_pipeline(clone(est)).fit(X)
    np.testing.assert_array_equal(pipe.transform(X), T)
    assert clone(est).get_params() == params
    # a copy of a fitted estimator (as joblib makes) behaves identically
    twin = copy.deepcopy(est)
    np.testing.assert_array_equal(twin.transform(X), T)
    twin.partial_fit(X), est.partial_fit(X)
    for name, value in fitted_arrays(est).items():
        np.testing.assert_array_equal(value, getattr(twin, name), err_msg=name)


def test_capsule_models_on_a_square_one_feature_image():
    """check_fit2d_1feature for the capsule models: one pixel is a 1x1 image."""
    X = (np.random.default_rng(0).random((10, 1)) < 0.5).astype(np.float64)
    for est in check_instances()[1:]:
        est.fit(X)
        assert est.transform(X).shape == (10, 2)
