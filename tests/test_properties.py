"""Property-based tests (hypothesis) of the squash, routing, free energies and patching.

Domains. Entries are bounded where a property stops being representable in floating point,
not where the code breaks down:

* squash: |entries| in [1e-100, 1e100] or 0, so that the length and the ratios used to compare
  directions stay normal numbers; huge vectors up to 1e300 separately;
* routing: |predictions| <= 1e300, any sign and mix of magnitudes;
* free energies: |parameters| <= 1e100 (Model P forms |s|^2, which overflows past ~1e154).

``CAPSNP_HYPOTHESIS_EXAMPLES`` sets the number of examples per test (default 40).
"""

import os

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from capsnp import model_p, rbm
from capsnp.capsules import capsule_layout, from_capsules, to_capsules
from capsnp.ops import squash
from capsnp.params import PParams, RBMParams
from capsnp.routing import dynamic_routing

# CI can search harder, e.g. CAPSNP_HYPOTHESIS_EXAMPLES=2000.
SETTINGS = settings(max_examples=int(os.environ.get("CAPSNP_HYPOTHESIS_EXAMPLES", "40")),
                    deadline=None)


def signed(low, high):
    """Floats with magnitude in [low, high], either sign, or exactly zero."""
    magnitude = st.floats(low, high, allow_nan=False, allow_infinity=False)
    return st.one_of(st.just(0.0), magnitude, magnitude.map(lambda x: -x))


def float_arrays(shape, elements):
    return arrays(np.float64, shape, elements=elements)


@st.composite
def shapes(draw, *names, low=1, high=4):
    return tuple(draw(st.integers(low, high)) for _ in names)


# ----------------------------------------------------------------------------- squash (1.1)


@SETTINGS
@given(st.data())
def test_squash_length_below_one_and_direction_kept(data):
    B, d = data.draw(shapes("B", "d", high=6))
    s = data.draw(float_arrays((B, d), signed(1e-100, 1e100)))
    v = squash(s)
    assert np.all(np.isfinite(v))
    m = np.max(np.abs(v), -1)
    length = m * np.sqrt(np.sum((v / np.where(m > 0, m, 1.0)[:, None]) ** 2, -1))  # no underflow
    assert np.all(length >= 0) and np.all(length <= 1 + 4e-16)  # 1 only by rounding
    assert np.all(length[np.max(np.abs(s), -1) < 1e7] < 1)  # |s|^2 / (1 + |s|^2) < 1 exactly
    # same direction: v = f s with f > 0, so the signs agree and v / max|v| equals s / max|s|
    nonzero = np.any(s != 0, axis=-1)
    assert np.all(v[~nonzero] == 0)
    s_unit = s[nonzero] / np.max(np.abs(s[nonzero]), -1, keepdims=True)
    v_unit = v[nonzero] / np.max(np.abs(v[nonzero]), -1, keepdims=True)
    np.testing.assert_allclose(v_unit, s_unit, rtol=1e-12, atol=1e-15)


@SETTINGS
@given(float_arrays((3, 4), signed(1e150, 1e300)))
def test_squash_of_huge_vectors_has_length_at_most_one(s):
    v = squash(s)
    assert np.all(np.isfinite(v))
    length = np.linalg.norm(v, axis=-1)
    assert np.all(length <= 1 + 4e-16)
    np.testing.assert_allclose(length[np.any(s != 0, -1)], 1.0, rtol=1e-12)


# ----------------------------------------------------------------------------- routing (2.1)


@st.composite
def routing_problems(draw, bound=1e300):
    B, I, J, d_h = draw(shapes("B", "I", "J", "d_h"))
    u_hat = draw(float_arrays((B, I, J, d_h), signed(1e-300, bound)))
    beta = draw(float_arrays((I, J), st.floats(-50, 50)))
    r = draw(st.integers(1, 4))
    return u_hat, beta, r


@SETTINGS
@given(routing_problems())
def test_routing_coefficients_sum_to_one_over_parents_for_any_finite_input(problem):
    u_hat, beta, r = problem
    with np.errstate(over="ignore", under="ignore"):
        c, s, v = dynamic_routing(u_hat, r, beta)
    for x in (c, s, v):
        assert np.all(np.isfinite(x))
    assert np.all((c >= 0) & (c <= 1))
    np.testing.assert_allclose(c.sum(axis=2), 1.0, rtol=1e-12)


@SETTINGS
@given(routing_problems(bound=50.0), st.randoms(use_true_random=False))
def test_routing_is_equivariant_to_permuting_children_and_parents(problem, random):
    u_hat, beta, r = problem
    _, I, J, _ = u_hat.shape
    pi, pj = random.sample(range(I), I), random.sample(range(J), J)
    c, s, v = dynamic_routing(u_hat, r, beta)
    c2, s2, v2 = dynamic_routing(u_hat[:, pi][:, :, pj], r, beta[pi][:, pj])
    scale = max(1.0, float(np.max(np.abs(u_hat))))
    # summation order over children changes, so equal up to rounding
    np.testing.assert_allclose(c2, c[:, pi][:, :, pj], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(s2, s[:, pj], rtol=1e-7, atol=1e-9 * scale * I)
    np.testing.assert_allclose(v2, v[:, pj], rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------- free energies


@st.composite
def model_p_problems(draw):
    I, J, d_h, d_v = draw(shapes("I", "J", "d_h", "d_v", high=3))
    values = signed(1e-100, 1e100)
    params = PParams(W=draw(float_arrays((I, J, d_h, d_v), values)),
                     alpha=draw(float_arrays((I, d_v), values)),
                     rho=draw(float_arrays((J,), values)),
                     beta=draw(float_arrays((I, J), values)))
    v = draw(arrays(np.float64, (2, I, d_v), elements=st.sampled_from([0.0, 1.0])))
    return params, v


@SETTINGS
@given(model_p_problems(), st.integers(1, 3))
def test_model_p_free_energy_is_finite_for_finite_parameters(problem, r):
    params, v = problem
    with np.errstate(all="ignore"):
        F = model_p.free_energy(params, v, r)
    assert F.shape == (2,) and np.all(np.isfinite(F))


@st.composite
def rbm_problems(draw):
    D, H = draw(shapes("D", "H", high=6))
    values = signed(1e-100, 1e100)
    params = RBMParams(W=draw(float_arrays((D, H), values)), a=draw(float_arrays((D,), values)),
                       b=draw(float_arrays((H,), values)))
    v = draw(arrays(np.float64, (3, D), elements=st.sampled_from([0.0, 1.0])))
    return params, v


@SETTINGS
@given(rbm_problems())
def test_rbm_free_energy_is_finite_for_finite_parameters(problem):
    params, v = problem
    with np.errstate(all="ignore"):
        F = rbm.free_energy(params, v)
    assert F.shape == (3,) and np.all(np.isfinite(F))


# ----------------------------------------------------------------------------- patching (0.1)


@SETTINGS
@given(st.data())
def test_capsule_patching_round_trips_for_any_tiling(data):
    grid_h, grid_w, p_h, p_w = data.draw(shapes("gh", "gw", "ph", "pw", high=5))
    B = data.draw(st.integers(1, 3))
    H, W = grid_h * p_h, grid_w * p_w
    X = data.draw(arrays(np.int64, (B, H * W), elements=st.integers(-1000, 1000)))
    v = to_capsules(X, (H, W), (p_h, p_w))
    assert v.shape == (B,) + capsule_layout((H, W), (p_h, p_w)) == (B, grid_h * grid_w, p_h * p_w)
    np.testing.assert_array_equal(from_capsules(v, (H, W), (p_h, p_w)), X)
    # capsule k of the row-major grid holds patch (k // grid_w, k % grid_w), row-major inside
    k = data.draw(st.integers(0, grid_h * grid_w - 1))
    row, col = divmod(k, grid_w)
    patch = X.reshape(B, H, W)[:, row * p_h:(row + 1) * p_h, col * p_w:(col + 1) * p_w]
    np.testing.assert_array_equal(v[:, k], patch.reshape(B, -1))
