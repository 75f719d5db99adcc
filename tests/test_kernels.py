"""Numba kernels (``capsnp.kernels``) against their NumPy references, on tiny random inputs.

float64: deterministic outputs agree to 1e-12 (max-norm relative error); samplers fed the same
generator state return the same samples and leave the generator in the same state.
float32: agreement to about 1e-5. Thread counts 1 and 2 give bit-identical results.
Compilation dominates the run time (each kernel compiles once per dtype, then loads from
Numba's cache), so the shapes are tiny.
"""

import contextlib

import numpy as np
import pytest
from conftest import binary, random_pparams, rel_error

import capsnp
from capsnp import kernels
from capsnp import _kernels_jit as jit
from capsnp import model_p as ref_p
from capsnp import model_r as ref_r
from capsnp import rbm as ref_rbm
from capsnp import routing as ref_routing
from capsnp.capsules import predictions
from capsnp.ops import softmax
from capsnp.params import RBMParams, RBParams, RParams

needs_numba = pytest.mark.skipif(not kernels.available(), reason="numba is not installed")

B, I, D_V, J, D_H = 8, 3, 2, 3, 3  # B = 8 so that two threads get several ranges each
RTOL64, RTOL32 = 1e-12, 1e-5


def assert_close(actual, expected, rtol=RTOL64):
    """Same shape and dtype, and max |a - e| <= rtol max |e| (exact when e is all zeros)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    if not np.any(expected):
        np.testing.assert_array_equal(actual, expected)
        return
    assert rel_error(actual, expected) <= rtol, rel_error(actual, expected)


def assert_all_close(actual, expected, rtol=RTOL64):
    for a, e in zip(actual, expected, strict=True):
        assert_close(a, e, rtol)


def tol(dtype):
    return RTOL64 if np.dtype(dtype) == np.float64 else RTOL32


def p_params(seed, dtype=np.float64, scale=1.0):
    return random_pparams(np.random.default_rng(seed), I=I, d_v=D_V, J=J, d_h=D_H, scale=scale, dtype=dtype)


def r_params(seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return RParams(
        W=rng.normal(0.0, 1.0, (I, J, D_H, D_V)).astype(dtype),
        alpha=rng.normal(0.0, 1.0, (I, D_V)).astype(dtype),
        gamma=rng.normal(0.0, 1.0, (J, D_H)).astype(dtype),
        beta=rng.normal(0.0, 1.0, (I, J)).astype(dtype),
    )


def visible(seed, dtype=np.float64, n=B):
    """Binary visible capsules (n, I, d_v); image 0 is all zeros (every s_j = 0)."""
    v = binary(np.random.default_rng(seed + 100), (n, I, D_V), dtype)
    v[0] = 0
    return v


def same_generator_state(rng_a, rng_b):
    """Both generators consumed the same number of draws."""
    return rng_a.random() == rng_b.random()


@pytest.fixture
def threads():
    """Yields a function that sets numba's thread count; restores it afterwards."""
    numba = pytest.importorskip("numba")
    before = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(before)


# ----------------------------------------------------------------------------- routing (2.1, 2.2)


@needs_numba
@pytest.mark.parametrize("prior", ["none", "shared", "per_image"])
@pytest.mark.parametrize("r", [1, 3])
def test_dynamic_routing_matches_reference(seed, prior, r):
    rng = np.random.default_rng(seed)
    u = 2.0 * rng.normal(size=(B, I, J, D_H))
    u[0] = 0.0  # s = 0 for every parent of image 0
    u[1, :, 0] = 0.0  # and for parent 0 of image 1
    beta = {"none": None, "shared": rng.normal(size=(I, J)), "per_image": rng.normal(size=(B, I, J))}[prior]
    out = kernels.dynamic_routing(u, r, beta)
    assert_all_close(out, ref_routing.dynamic_routing(u, r, beta))
    np.testing.assert_allclose(out[0].sum(axis=2), 1.0, rtol=1e-12)  # softmax over parents


@needs_numba
@pytest.mark.parametrize("adjoints", ["s", "s_v_c"])
@pytest.mark.parametrize("prior", ["none", "shared", "per_image"])
def test_routing_forward_vjp_matches_reference(seed, adjoints, prior):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(B, I, J, D_H))
    u[0, :, 1] = 0.0
    beta = {"none": None, "shared": rng.normal(size=(I, J)), "per_image": rng.normal(size=(B, I, J))}[prior]
    g_s = rng.normal(size=(B, J, D_H))
    g_v = rng.normal(size=(B, J, D_H)) if adjoints == "s_v_c" else None
    g_c = rng.normal(size=(B, I, J)) if adjoints == "s_v_c" else None
    prior_shape = (I, J) if prior == "shared" else None
    c, s, v, g_u, g_b = kernels.routing_forward_vjp(u, 3, beta, g_s, g_v, g_c, prior_shape)
    tr = ref_routing.dynamic_routing_trace(u, 3, beta)
    g_u_ref, g_b_ref = ref_routing.dynamic_routing_vjp(u, tr, g_s, g_v, g_c, prior_shape)
    assert_all_close((c, s, v, g_u, g_b), (tr.c[-1], tr.s[-1], tr.v[-1], g_u_ref, g_b_ref))


@needs_numba
def test_routing_py_func_matches_reference(seed):
    """The kernels' Python versions (``.py_func``) compute the same routing and VJP."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(B, I, J, D_H))
    beta = rng.normal(size=(1, I, J))
    c0 = softmax(beta, axis=2)
    c, s, v = np.empty((B, I, J)), np.empty((B, J, D_H)), np.empty((B, J, D_H))
    jit.routing_forward.py_func(0, B, u, beta, c0, 3, c, s, v)
    assert_all_close((c, s, v), ref_routing.dynamic_routing(u, 3, beta[0]))

    tr = ref_routing.dynamic_routing_trace(u, 3, beta[0])
    g_s = rng.normal(size=(B, J, D_H))
    g_u_ref, g_b_ref = ref_routing.dynamic_routing_vjp(u, tr, g_s=g_s)
    cs, ss, vs, logits = np.empty((3, I, J)), np.empty((3, J, D_H)), np.empty((3, J, D_H)), np.empty((I, J))
    gu, gb = np.empty((I, J, D_H)), np.empty((I, J))
    zeros_s, zeros_c = np.zeros((J, D_H)), np.zeros((I, J))
    for b in range(B):  # the per-image building blocks, in Python
        jit._route_image.py_func(u[b], beta[0], c0[0], cs, ss, vs, logits)
        assert_all_close((cs, ss, vs), (tr.c[:, b], tr.s[:, b], tr.v[:, b]))
        jit._route_image_vjp.py_func(u[b], cs, ss, vs, g_s[b], zeros_s, zeros_c, False, False,
                                     gu, gb, np.empty((J, D_H)), np.empty((J, D_H)), np.empty((I, J)))
        assert_all_close((gu, gb), (g_u_ref[b], g_b_ref[b]))


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_routing_keeps_dtype(dtype):
    rng = np.random.default_rng(0)
    u = rng.normal(size=(B, I, J, D_H)).astype(dtype)
    beta = rng.normal(size=(I, J)).astype(dtype)
    g_s = rng.normal(size=(B, J, D_H)).astype(dtype)
    out = kernels.routing_forward_vjp(u, 3, beta, g_s, prior_shape=(I, J))
    tr = ref_routing.dynamic_routing_trace(u, 3, beta)
    g_ref = ref_routing.dynamic_routing_vjp(u, tr, g_s, prior_shape=(I, J))
    expected = (tr.c[-1], tr.s[-1], tr.v[-1]) + g_ref
    assert_all_close(out, expected, tol(dtype))
    assert_all_close(kernels.dynamic_routing(u, 3, beta), expected[:3], tol(dtype))


def test_routing_rejects_bad_input():
    u = np.zeros((B, I, J, D_H))
    with pytest.raises(ValueError, match="n_iter"):
        kernels.dynamic_routing(u, 0)
    if kernels.available():
        with pytest.raises(ValueError, match="prior_logits"):
            kernels.dynamic_routing(u, 3, np.zeros((I, J + 1)))


# ----------------------------------------------------------------------------- Model P (3.x)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_p_free_energy_and_gradient_match_reference(seed, dtype):
    params, v = p_params(seed, dtype), visible(seed, dtype)
    assert_close(kernels.model_p.free_energy(params, v), ref_p.free_energy(params, v), tol(dtype))
    for mode in ("full", "frozen"):
        F, grad = kernels.model_p.free_energy_grad(params, v, 3, mode)
        F_ref, grad_ref = ref_p.free_energy_grad(params, v, 3, mode)
        assert_close(F, F_ref, tol(dtype))
        assert_all_close(grad, grad_ref, tol(dtype))


@needs_numba
@pytest.mark.parametrize("n_iter", [1, 2])
def test_p_gradient_other_routing_depths(n_iter):
    params, v = p_params(3), visible(3)
    F, grad = kernels.model_p.free_energy_grad(params, v, n_iter, "full")
    F_ref, grad_ref = ref_p.free_energy_grad(params, v, n_iter, "full")
    assert_close(F, F_ref)
    assert_all_close(grad, grad_ref)


@needs_numba
def test_p_mh_sweep_reproduces_reference(seed):
    params, v = p_params(seed, scale=2.0), visible(seed)
    v_before = v.copy()
    rng_k, rng_r = np.random.default_rng(seed), np.random.default_rng(seed)
    for _ in range(3):  # a few sweeps, each starting where the last ended
        v_k, acc_k = kernels.model_p.mh_sweep(params, v, rng_k)
        v_r, acc_r = ref_p.mh_sweep(params, v, rng_r)
        np.testing.assert_array_equal(v_k, v_r)
        np.testing.assert_array_equal(acc_k, acc_r)
        assert v_k.dtype == v_r.dtype
        np.testing.assert_array_equal(v, v_before)  # input not modified
        v = v_before = v_k
    assert same_generator_state(rng_k, rng_r)
    assert 0.0 < acc_k.mean() < 1.0  # both branches of the acceptance test were taken


@needs_numba
def test_p_reconstruct_step_reproduces_reference(seed):
    params, v = p_params(seed, scale=2.0), visible(seed)
    rng_k, rng_r = np.random.default_rng(seed), np.random.default_rng(seed)
    out_k = kernels.model_p.reconstruct_step(params, v, rng_k)
    out_r = ref_p.reconstruct_step(params, v, rng_r)
    for a, b in zip(out_k, out_r, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert same_generator_state(rng_k, rng_r)


@needs_numba
def test_p_samplers_float32():
    params, v = p_params(1, np.float32, scale=2.0), visible(1, np.float32)
    v_k, acc_k = kernels.model_p.mh_sweep(params, v, np.random.default_rng(5))
    v_r, acc_r = ref_p.mh_sweep(params, v, np.random.default_rng(5))
    assert v_k.dtype == np.float32
    # float32 rounding can flip an acceptance whose log-ratio lies within ~1e-6 of log u
    assert np.mean(v_k == v_r) >= 0.95
    (v_k, z_k), (v_r, z_r) = (f(params, v, np.random.default_rng(5)) for f in
                              (kernels.model_p.reconstruct_step, ref_p.reconstruct_step))
    assert v_k.dtype == z_k.dtype == np.float32
    assert np.mean(v_k == v_r) >= 0.95 and np.mean(z_k == z_r) >= 0.95


def test_p_rejects_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        kernels.model_p.free_energy_grad(p_params(0), visible(0), 3, "exact")


# ----------------------------------------------------------------------------- Model R (4.x)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("damping, max_iter", [(0.0, 30), (0.5, 30), (0.0, 1), (0.0, 0)])
def test_r_mean_field_matches_reference(seed, dtype, damping, max_iter):
    params, v = r_params(seed, dtype), visible(seed, dtype)
    c, mu, n = kernels.model_r.mean_field(params, v, 1e-3, max_iter, damping)
    c_ref, mu_ref, n_ref = ref_r.mean_field(params, v, 1e-3, max_iter, damping)
    assert_all_close((c, mu), (c_ref, mu_ref), tol(dtype))
    np.testing.assert_array_equal(n, n_ref)
    assert n.dtype == np.int64


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_r_mean_field_from_a_given_start_matches_reference(seed, dtype):
    params, v = r_params(seed, dtype), visible(seed, dtype)
    B, I, J = v.shape[0], params.W.shape[0], params.W.shape[1]
    start = np.random.default_rng(seed).dirichlet(np.ones(J), size=(B, I)).astype(dtype)  # (B, I, J)
    c, mu, n = kernels.model_r.mean_field(params, v, 1e-3, 30, 0.0, start)
    c_ref, mu_ref, n_ref = ref_r.mean_field(params, v, 1e-3, 30, 0.0, start)
    assert_all_close((c, mu), (c_ref, mu_ref), tol(dtype))
    np.testing.assert_array_equal(n, n_ref)
    c_one, _, _ = kernels.model_r.mean_field(params, v, 1e-3, 1, 0.0, start)
    c_def, _, _ = kernels.model_r.mean_field(params, v, 1e-3, 1, 0.0)
    assert np.abs(c_one - c_def).max() > 1e-3  # the start is used


@needs_numba
def test_r_gibbs_sweep_reproduces_reference(seed):
    params, v = r_params(seed), visible(seed)
    a = np.random.default_rng(seed).integers(0, J, (B, I))
    a_before = a.copy()
    rng_k, rng_r = np.random.default_rng(seed), np.random.default_rng(seed)
    for _ in range(3):
        out_k = kernels.model_r.gibbs_sweep(params, v, a, rng_k)
        out_r = ref_r.gibbs_sweep(params, v, a, rng_r)
        for x_k, x_r in zip(out_k[:3], out_r[:3], strict=True):  # v_new, h, a_new
            np.testing.assert_array_equal(x_k, x_r)
            assert x_k.dtype == x_r.dtype
        assert_close(out_k[3], out_r[3])  # resp
        np.testing.assert_array_equal(a, a_before)
        v, a = out_k[0], out_k[2]
        a_before = a.copy()
    assert same_generator_state(rng_k, rng_r)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("biases", [False, True])
def test_r_assigned_input_and_log_joint_va_match_reference(seed, dtype, biases):
    params, v = r_params(seed, dtype), visible(seed, dtype)
    rng = np.random.default_rng(seed + 3)
    if biases:  # (4b.1) prediction biases C and visible assignment biases A
        params = RBParams(*params, C=rng.normal(size=(I, J, D_H)).astype(dtype),
                          A=rng.normal(size=(I, J, D_V)).astype(dtype))
    a = rng.integers(0, J, (B, I))
    s = kernels.model_r.assigned_input(params, v, a)
    assert_close(s, ref_r.assigned_input(params, v, a), tol(dtype))
    # the definition: sum over the children routed to j of their predictions u_hat_{j|i} (4b.2)
    u_hat = ref_r.prediction(params, v)  # (B, I, J, D_H)
    by_hand = np.stack([[u_hat[b, a[b] == j, j].sum(axis=0) for j in range(J)] for b in range(B)])
    assert_close(s, by_hand.astype(dtype), tol(dtype))
    assert_close(kernels.model_r.log_joint_va(params, v, a), ref_r.log_joint_va(params, v, a), tol(dtype))
    with pytest.raises(ValueError, match="assignments"):
        kernels.model_r.assigned_input(params, v, np.full((B, I), J))


@needs_numba
def test_r_gibbs_sweep_float32():
    params, v = r_params(2, np.float32), visible(2, np.float32)
    a = np.random.default_rng(2).integers(0, J, (B, I))
    out_k = kernels.model_r.gibbs_sweep(params, v, a, np.random.default_rng(9))
    out_r = ref_r.gibbs_sweep(params, v, a, np.random.default_rng(9))
    for x_k, x_r in zip(out_k[:3], out_r[:3], strict=True):
        assert x_k.dtype == x_r.dtype
        assert np.mean(x_k == x_r) >= 0.95
    if np.array_equal(out_k[1], out_r[1]):  # same h: the routing posteriors agree
        assert_close(out_k[3], out_r[3], RTOL32)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shared", [False, True])
def test_r_top_down_matches_reference(seed, dtype, shared, threads):
    numba = pytest.importorskip("numba")
    threads(min(2, numba.config.NUMBA_NUM_THREADS))
    params = r_params(seed, dtype)
    h = binary(np.random.default_rng(seed + 7), (B, J, D_H), dtype)
    with jit.single_threaded_blas() if shared else contextlib.nullcontext():
        assert jit.blas_is_single_threaded() == (shared and jit.num_threads() > 1)
        fields = kernels.model_r.top_down(params, h)  # shared: the parents over the threads
    assert not jit.blas_is_single_threaded()
    assert fields.shape == (J, B, I, D_V) and fields.dtype == dtype
    assert_close(fields, ref_r.top_down(params, h), tol(dtype))


def test_r_gibbs_sweep_rejects_bad_assignments():
    params, v = r_params(0), visible(0)
    with pytest.raises((ValueError, IndexError)):
        kernels.model_r.gibbs_sweep(params, v, np.full((B, I), J), np.random.default_rng(0))


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("biases", [False, True])
def test_r_statistics_match_reference(seed, dtype, weighted, biases):
    params, v = r_params(seed, dtype), visible(seed, dtype)
    rng = np.random.default_rng(seed)
    if biases:  # (4b.5): the statistics of C and A come out of the same fused pass
        params = RBParams(*params, C=rng.normal(size=(I, J, D_H)).astype(dtype),
                          A=rng.normal(size=(I, J, D_V)).astype(dtype))
    c = softmax(rng.normal(size=(B, I, J))).astype(dtype)
    mu = rng.random((B, J, D_H)).astype(dtype)
    h = binary(rng, (B, J, D_H), dtype)
    w = rng.dirichlet(np.ones(B)).astype(dtype) if weighted else None
    assert_all_close(kernels.model_r.data_statistics(params, v, c, mu, w),
                     ref_r.data_statistics(params, v, c, mu, w), tol(dtype))
    stats = kernels.model_r.model_statistics(params, v, h, c, w)
    assert type(stats) is type(params)
    assert_all_close(stats, ref_r.model_statistics(params, v, h, c, w), tol(dtype))


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_r_statistics_leave_out_subnormal_weights_only(dtype):
    """Routing weights below the dtype's smallest normal number (a trained float32 model has
    some) are left out of the W statistic and nothing else: the result is the reference's, and
    the W statistic equals the kernel's with those weights set to 0, bit for bit."""
    params, v = r_params(0, dtype), visible(0, dtype)
    rng = np.random.default_rng(0)
    c = softmax(rng.normal(size=(B, I, J))).astype(dtype)
    tiny = np.finfo(dtype).tiny
    small = rng.random((B, I, J)) < 0.3
    small[:, 0, 0] = True  # child 0 routes nothing of normal size to parent 0
    c[small] = dtype(tiny / 4)  # subnormal: below tiny, above 0
    assert np.all(c[small] > 0) and np.all(c[small] < tiny)
    mu = rng.random((B, J, D_H)).astype(dtype)
    got = kernels.model_r.data_statistics(params, v, c, mu)
    assert_all_close(got, ref_r.data_statistics(params, v, c, mu), tol(dtype))
    zeroed = kernels.model_r.data_statistics(params, v, np.where(small, dtype(0), c), mu)
    np.testing.assert_array_equal(got.W, zeroed.W)
    assert np.all(got.W[0, 0] == 0)
    assert 0 < got.beta[0, 0] < tiny  # the weights themselves still count in beta


# ----------------------------------------------------------------------------- RBM (5.x)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shared", [False, True])
def test_rbm_visible_logits_match_reference_for_any_thread_count(seed, dtype, shared, threads):
    """a + h W^T in blocks of rows: the reference's values, and the same bits on one thread and
    on two (inside single_threaded_blas the blocks go to the kernel threads); 150 rows make
    three blocks, the last one short."""
    numba = pytest.importorskip("numba")
    rng = np.random.default_rng(seed)
    params = RBMParams(rng.normal(size=(11, 6)).astype(dtype), rng.normal(size=11).astype(dtype),
                       rng.normal(size=6).astype(dtype))
    h = binary(rng, (150, 6), dtype)
    runs = []
    for n in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
        threads(n)
        with jit.single_threaded_blas() if shared else contextlib.nullcontext():
            runs.append(kernels.rbm.visible_logits(params, h))
    assert runs[0].shape == (150, 11) and runs[0].dtype == dtype
    assert_close(runs[0], ref_rbm.visible_logits(params, h), tol(dtype))
    for x in runs[1:]:
        np.testing.assert_array_equal(x, runs[0])


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rbm_gibbs_sweep_reproduces_reference(seed, dtype):
    rng = np.random.default_rng(seed)
    params = RBMParams(rng.normal(size=(7, 5)).astype(dtype), rng.normal(size=7).astype(dtype),
                       rng.normal(size=5).astype(dtype))
    v = binary(rng, (B, 7), dtype)
    rng_k, rng_r = np.random.default_rng(seed), np.random.default_rng(seed)
    for _ in range(3):
        v_k, h_k = kernels.rbm.gibbs_sweep(params, v, rng_k)
        v_r, h_r = ref_rbm.gibbs_sweep(params, v, rng_r)
        assert v_k.dtype == v_r.dtype == h_k.dtype == h_r.dtype == dtype
        if dtype == np.float64:
            np.testing.assert_array_equal(v_k, v_r)
            np.testing.assert_array_equal(h_k, h_r)
        else:  # p in float32 may differ from the reference's by an ulp
            assert np.mean(v_k == v_r) >= 0.95 and np.mean(h_k == h_r) >= 0.95
        v = v_r
    assert same_generator_state(rng_k, rng_r)


@needs_numba
@pytest.mark.parametrize("shared", [False, True])
def test_rbm_pcd_step_does_not_depend_on_thread_count(shared, threads):
    """The PCD step's visible pass is BLAS in blocks of 64 chains (shared out over the kernel
    threads inside single_threaded_blas, as in training): the same draws, statistics and
    gradient, bit for bit, on one thread and on two; 150 chains make three blocks."""
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs at least 2 threads")
    rng = np.random.default_rng(3)
    params = RBMParams(rng.normal(size=(11, 6)), rng.normal(size=11), rng.normal(size=6))
    v_data, v_chain = binary(rng, (40, 11), np.float64), binary(rng, (150, 11), np.float64)
    p_chain = rng.random((150, 6))
    runs = []
    for n in (1, 2):
        threads(n)
        with jit.single_threaded_blas() if shared else contextlib.nullcontext():
            grad, v, p = kernels.rbm.pcd_step(params, v_data, v_chain, p_chain, np.random.default_rng(5), k=2)
        runs.append([*grad, v, p])
    _, v_ref, p_ref = ref_rbm.pcd_step(params, v_data, v_chain, p_chain, np.random.default_rng(5), k=2)
    np.testing.assert_array_equal(runs[0][-2], v_ref)  # the reference's draws
    assert_close(runs[0][-1], p_ref, tol(np.float64))
    for x1, x2 in zip(*runs, strict=True):
        np.testing.assert_array_equal(x1, x2)  # bit for bit


# ----------------------------------------------------------------------------- threads


@needs_numba
def test_results_do_not_depend_on_thread_count(threads):
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs at least 2 threads")
    pp, rp, v = p_params(4, scale=2.0), r_params(4), visible(4)
    u = predictions(rp.W, v)
    a = np.random.default_rng(4).integers(0, J, (B, I))
    c = softmax(np.random.default_rng(4).normal(size=(B, I, J)))
    mu = np.random.default_rng(5).random((B, J, D_H))

    def run_all():
        with jit.single_threaded_blas():  # the top-down products shared over the threads
            shared = kernels.model_r.top_down(rp, mu)
        return [shared,
            kernels.routing_forward_vjp(u, 3, rp.beta, g_s=u[:, 0], prior_shape=(I, J)),
            kernels.model_p.free_energy(pp, v),
            kernels.model_p.free_energy_grad(pp, v, 3, "full"),
            kernels.model_p.mh_sweep(pp, v, np.random.default_rng(1)),
            kernels.model_p.reconstruct_step(pp, v, np.random.default_rng(1)),
            kernels.model_r.mean_field(rp, v),
            kernels.model_r.gibbs_sweep(rp, v, a, np.random.default_rng(1)),
            kernels.model_r.data_statistics(rp, v, c, mu),
            kernels.model_r.top_down(rp, mu),
        ]

    def flat(results):
        out = []
        for r in results:
            out.extend(flat(r) if isinstance(r, (tuple, list)) else [np.asarray(r)])
        return out

    threads(1)
    one = flat(run_all())
    threads(2)
    two = flat(run_all())
    for x1, x2 in zip(one, two, strict=True):
        np.testing.assert_array_equal(x1, x2)  # bit for bit


def test_run_chunks_covers_the_range_once(threads):
    numba = pytest.importorskip("numba")
    threads(min(2, numba.config.NUMBA_NUM_THREADS))
    for n in (0, 1, 3, 4, 17, 64):
        hits = np.zeros(n, dtype=np.int64)

        def kernel(start, stop, out):
            out[start:stop] += 1

        jit.run_chunks(kernel, n, hits)
        np.testing.assert_array_equal(hits, 1)


def _blas_threads():
    """Threads of every BLAS library loaded in this process, as threadpoolctl reports them."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]


@pytest.fixture
def two_blas_threads():
    """BLAS set to 2 threads for the test (restored afterwards); skipped where it cannot be."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        if not _blas_threads() or any(n != 2 for n in _blas_threads()):
            pytest.skip("BLAS cannot be set to 2 threads here")
        yield


@needs_numba
def test_single_threaded_blas_only_while_kernels_use_threads(threads, two_blas_threads):
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs at least 2 threads")
    threads(2)
    with jit.single_threaded_blas():
        assert set(_blas_threads()) == {1}
    assert set(_blas_threads()) == {2}  # restored
    threads(1)
    with jit.single_threaded_blas():
        assert set(_blas_threads()) == {2}  # one kernel thread: BLAS keeps its threads


@needs_numba
@pytest.mark.parametrize("model, backend, expected", [("r", "numba", {1}), ("r", "numpy", {2}),
                                                      ("rbm", "numba", {1}), ("rbm", "numpy", {2})])
def test_model_r_and_rbm_train_with_blas_on_one_thread_beside_the_kernel_threads(
        threads, two_blas_threads, monkeypatch, model, backend, expected):
    import capsnp.estimators as estimators

    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs at least 2 threads")
    threads(2)
    seen = []
    run_epochs = estimators.run_epochs

    def recording(*args, **kwargs):
        seen.append(set(_blas_threads()))
        return run_epochs(*args, **kwargs)

    monkeypatch.setattr(estimators, "run_epochs", recording)
    X = binary(np.random.default_rng(0), (20, 8), np.float64)
    if model == "r":
        est = estimators.RoutedCapsuleRBM(2, 2, image_shape=(2, 4), patch=(1, 4), batch_size=10,
                                          n_iter=1, backend=backend, random_state=0)
    else:
        est = estimators.BernoulliRBM(4, batch_size=10, n_iter=1, backend=backend, random_state=0)
    est.fit(X)
    assert seen == [expected]
    assert set(_blas_threads()) == {2}  # restored after the fit


# ----------------------------------------------------------------------------- backend switch


def test_get_backend_modules():
    assert kernels.get_backend("numba") is kernels
    assert kernels.get_backend("numpy") is capsnp
    assert kernels.get_backend("numba", "model_p") is kernels.model_p
    assert kernels.get_backend("numpy", "model_r") is ref_r
    assert kernels.get_backend("numpy").rbm is ref_rbm
    assert kernels.get_backend("auto") is (kernels if kernels.available() else capsnp)
    for model in kernels.MODELS:  # every kernel has a reference of the same name
        k, r = kernels.get_backend("numba", model), kernels.get_backend("numpy", model)
        names = [n for n in k.__all__ if n != "routing_forward_vjp"]
        assert all(callable(getattr(r, n)) for n in names), model
    with pytest.raises(ValueError, match="backend"):
        kernels.get_backend("torch")
    with pytest.raises(ValueError, match="model"):
        kernels.get_backend("numba", "model_q")


def test_wrappers_fall_back_to_reference_without_numba(monkeypatch):
    monkeypatch.setattr(jit, "NUMBA_AVAILABLE", False)
    assert not kernels.available()
    pp, rp, v = p_params(0), r_params(0), visible(0)
    u = predictions(pp.W, v)
    for a, b in zip(kernels.dynamic_routing(u, 3, pp.beta), ref_routing.dynamic_routing(u, 3, pp.beta)):
        np.testing.assert_array_equal(a, b)
    F, g = kernels.model_p.free_energy_grad(pp, v)
    F_ref, g_ref = ref_p.free_energy_grad(pp, v)
    np.testing.assert_array_equal(F, F_ref)
    for a, b in zip(g, g_ref):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(kernels.model_r.mean_field(rp, v), ref_r.mean_field(rp, v)):
        np.testing.assert_array_equal(a, b)
    v_k, _ = kernels.model_p.mh_sweep(pp, v, np.random.default_rng(0))
    np.testing.assert_array_equal(v_k, ref_p.mh_sweep(pp, v, np.random.default_rng(0))[0])


def _mean_field_in_child(queue):
    rp, v = r_params(0), visible(0)
    queue.put(kernels.model_r.mean_field(rp, v)[2].tolist())


@needs_numba
def test_forked_child_gets_its_own_thread_pool(threads):
    """A child forked after the pool started must not wait on the parent's (absent) threads."""
    import multiprocessing as mp

    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2 or "fork" not in mp.get_all_start_methods():
        pytest.skip("needs 2 threads and fork")
    threads(2)
    rp, v = r_params(0), visible(0)
    expected = kernels.model_r.mean_field(rp, v)[2].tolist()  # starts the pool in this process
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_mean_field_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung")
    assert queue.get(timeout=5) == expected
