"""Squash (1.1)-(1.3) and the elementwise helpers."""

import warnings

import numpy as np
import pytest
from conftest import central_difference, rel_error

from capsnp.ops import capsule_length, sigmoid, softmax, softmax_vjp, softplus, squash, squash_vjp


def test_squash_length_is_sigmoid_of_log_squared_norm(seed):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(50, 7)) * np.exp(rng.uniform(-4, 4, size=(50, 1)))
    n2 = np.sum(s * s, axis=-1)
    length = np.linalg.norm(squash(s), axis=-1)
    np.testing.assert_allclose(length, sigmoid(np.log(n2)), rtol=1e-12)  # (1.2)
    np.testing.assert_allclose(length, n2 / (1 + n2), rtol=1e-12)
    assert np.all(length < 1.0)


def test_squash_preserves_direction(seed):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(20, 5))
    v = squash(s)
    cos = np.sum(v * s, -1) / np.linalg.norm(v, axis=-1) / np.linalg.norm(s, axis=-1)
    np.testing.assert_allclose(cos, 1.0, rtol=1e-12)


def test_squash_exact_and_finite_at_zero_and_huge():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            s = np.array([[0.0, 0.0, 0.0], [1e-200, 0, 0], [1e200, -1e200, 3e199], [1e308, 1e308, 0]])
            v = squash(s)
            g = squash_vjp(s, np.ones_like(s))
    assert np.all(np.isfinite(v)) and np.all(np.isfinite(g))
    assert np.all(v[0] == 0.0) and np.all(g[0] == 0.0)  # zero Jacobian at s = 0
    np.testing.assert_allclose(np.linalg.norm(v[2:], axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(capsule_length(s[3:]), np.sqrt(2) * 1e308, rtol=1e-12)


def test_squash_vjp_matches_central_differences(seed):
    rng = np.random.default_rng(seed)
    for scale in (0.1, 1.0, 3.0):  # both branches of the overflow-free form
        s = rng.normal(size=(4, 6)) * scale
        g = rng.normal(size=(4, 6))
        num = central_difference(lambda x: np.sum(squash(x) * g), s)
        assert rel_error(squash_vjp(s, g), num) < 1e-6


def test_squash_float32_stays_float32():
    s = np.ones((3, 4), dtype=np.float32)
    assert squash(s).dtype == np.float32
    assert squash_vjp(s, s).dtype == np.float32


def test_sigmoid_softplus_softmax_extremes():
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4, -np.inf, np.inf])
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        p = sigmoid(x)
        sp = softplus(x[:5])
        c = softmax(np.array([[1e4, -1e4, 0.0]]))
    np.testing.assert_allclose(p[[0, 2, 4, 5, 6]], [0.0, 0.5, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(sp[[0, 2, 4]], [0.0, np.log(2.0), 1e4])
    np.testing.assert_allclose(c.sum(), 1.0)


def test_softmax_vjp_matches_central_differences(seed):
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(3, 5))
    g = rng.normal(size=(3, 5))
    num = central_difference(lambda x: np.sum(softmax(x) * g), b)
    assert rel_error(softmax_vjp(softmax(b), g), num) < 1e-6


@pytest.mark.parametrize("shape", [(5, 5), (10, 10)])
def test_capsule_length_equals_norm(shape):
    x = np.random.default_rng(0).normal(size=shape)
    np.testing.assert_allclose(capsule_length(x), np.linalg.norm(x, axis=-1), rtol=1e-14)


def test_squash_keeps_direction_when_the_length_overflows():
    s = np.array([[1e308, 1e308, 0.0], [-1.7e308, 0.0, 1.7e308]])
    with np.errstate(over="raise", invalid="raise"):
        v = squash(s)
    np.testing.assert_allclose(v, s / np.abs(s).max(axis=1, keepdims=True) / np.sqrt(2), rtol=1e-12)
