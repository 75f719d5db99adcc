"""Compiled loops behind :mod:`capsnp.kernels` (every Numba function of the package lives here).

Each kernel is a plain Python function compiled at module level with
``numba.njit(fn, cache=True, nogil=True, error_model="numpy")``; ``kernel.py_func`` gives the
Python version back (tests run it against the NumPy reference). All compiled code sits in this
one file on purpose: Numba's on-disk cache is invalidated by the modification time of the file
that defines a function, not by the files of the functions it calls.

Conventions
-----------
* Batch kernels take a range ``start, stop`` of images (or chains, or parameter rows) as their
  first two arguments and process it serially. :func:`run_chunks` splits the batch into
  contiguous ranges and runs them on ``numba.get_num_threads()`` threads (the kernels release
  the GIL). Each image's work is independent and done by one thread in a fixed order of
  operations, so results are bit-identical for any number of threads. Sums over the batch
  (parameter gradients) are split over parameter rows and run over the batch in order
  b = 0..B-1 inside each row: deterministic for any thread count too.

  Why not ``parallel=True`` / ``prange``: with Numba 0.68 every parallel region recompiles the
  whole tree of functions it calls (about 8 s per kernel and dtype on a 2-core machine, even
  when the region's body is a single call to an already compiled function), which more than
  doubled the cold compile time of this module (measured 194 s against 81 s for both dtypes
  on a shared 2-core machine) for the same run-time parallelism.
* Predictions ``u_hat = W v`` are computed once per call by :func:`predictions`, split over
  children i so that ``W[i]`` stays in cache while the whole batch streams past; the (B, I, J,
  d_h) array it fills is the largest one any kernel makes.
* Samplers take pre-drawn uniform arrays. The public wrappers draw them from the
  ``np.random.Generator`` in the order and shapes of the NumPy reference, so the twin
  reproduces the reference's samples; a binary unit is ``x = (u < p)``.
* Arrays keep the input dtype (float32 or float64; each compiles lazily on first use). Scalar
  accumulators are typed from the arrays (``dtype.type(0)``) so float32 loops stay float32.
* Scalar helpers repeat the NumPy reference's stable formulas (``capsnp.ops``). Results agree
  with the reference to rounding (about 1e-15 relative in float64), not bit for bit: sums run
  in a different order, and :func:`_dot` lets the compiler reorder its sum to use SIMD.

Equation labels refer to MODEL.md: (2.0) predictions, (2.1) routing, (2.2) its VJP,
(3.x) Model P, (4.x) Model R, (5.x) RBM.
"""

import contextlib
import functools
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:  # the whole package works without Numba: the wrappers then call the NumPy reference
    import numba

    NUMBA_AVAILABLE = True
except Exception:  # pragma: no cover - exercised only where Numba is missing or broken
    numba = None
    NUMBA_AVAILABLE = False


if NUMBA_AVAILABLE:

    def _jit(fn, fastmath=False):
        """Compile ``fn`` in nopython mode, GIL released, cached on disk (each dtype lazily)."""
        return numba.njit(fn, cache=True, nogil=True, fastmath=fastmath, error_model="numpy")

else:  # pragma: no cover

    def _jit(fn, fastmath=False):
        return fn


# ============================================================================================
# scalar and vector helpers (ops.py formulas)
# ============================================================================================


def _sigmoid(x):
    """``1 / (1 + e^{-x})`` without overflow: ``e^x / (1 + e^x)`` for x < 0."""
    if x >= 0:
        return 1.0 / (1.0 + np.exp(-x))
    e = np.exp(x)
    return e / (1.0 + e)


_sigmoid = _jit(_sigmoid)


def _softplus(x):
    """``log(1 + e^x) = max(x, 0) + log1p(e^{-|x|})`` (as ``np.logaddexp(0, x)``)."""
    return max(x, 0.0) + np.log1p(np.exp(-abs(x)))


_softplus = _jit(_softplus)


def _log_sigmoid(x):
    """``log sigmoid(x) = -softplus(-x)``."""
    return -_softplus(-x)


_log_sigmoid = _jit(_log_sigmoid)


def _dot(a, b):
    """``sum_k a_k b_k`` of two 1-D arrays.

    Compiled with the ``reassoc`` fast-math flag only: the compiler may reorder this one sum
    (SIMD partial sums); no other floating-point rule is relaxed, and the flag applies to this
    function's instructions only, also where it is inlined.
    """
    acc = a.dtype.type(0)
    for k in range(a.shape[0]):
        acc += a[k] * b[k]
    return acc


_dot = _jit(_dot, fastmath={"reassoc"})


def _copy_2d(src, dst):
    """``dst[...] = src`` for 2-D arrays of the same shape (an explicit loop compiles fastest)."""
    for i in range(src.shape[0]):
        for j in range(src.shape[1]):
            dst[i, j] = src[i, j]


_copy_2d = _jit(_copy_2d)


def _capsule_length(s):
    """``|s|`` of one capsule s (d,), scaled by ``max |s_k|`` as ``ops.capsule_length``."""
    m = s.dtype.type(0)
    for k in range(s.shape[0]):
        a = abs(s[k])
        if a > m:
            m = a
    if m == 0:
        return m
    acc = s.dtype.type(0)
    for k in range(s.shape[0]):
        q = s[k] / m
        acc += q * q
    return m * np.sqrt(acc)


_capsule_length = _jit(_capsule_length)


def _length_factor(n):
    """``f(n) = n / (1 + n^2)``, as ``1 / (n + 1/n)`` for n > 1 (overflow-free)."""
    if n > 1.0:
        return 1.0 / (n + 1.0 / n)
    return n / (1.0 + n * n)


_length_factor = _jit(_length_factor)


def _squash_capsule(s, out):
    """(1.1) ``out = s |s| / (1 + |s|^2)`` for one capsule s (d,)."""
    f = _length_factor(_capsule_length(s))
    for k in range(s.shape[0]):
        out[k] = s[k] * f


_squash_capsule = _jit(_squash_capsule)


def _squash_vjp_capsule(s, g, out):
    """(1.3) ``out = f g + n f'(n) (g . s_hat) s_hat`` for one capsule; zero Jacobian at s = 0."""
    d = s.shape[0]
    n = _capsule_length(s)
    if n == 0:
        for k in range(d):
            out[k] = 0.0 * g[k]
        return
    f = _length_factor(n)
    if n > 1.0:  # n f'(n) written with m = 1/n
        m = 1.0 / n
        nfp = m * (m * m - 1.0) / ((1.0 + m * m) * (1.0 + m * m))
    else:
        nfp = n * (1.0 - n * n) / ((1.0 + n * n) * (1.0 + n * n))
    gs = s.dtype.type(0)
    for k in range(d):
        gs += g[k] * (s[k] / n)
    for k in range(d):
        out[k] = f * g[k] + nfp * gs * (s[k] / n)


_squash_vjp_capsule = _jit(_squash_vjp_capsule)


def _softmax_rows(logits, c):
    """``c[i] = softmax(logits[i])`` over the last axis (PARENTS j), max subtracted: (I, J)."""
    I, J = logits.shape
    for i in range(I):
        mx = logits[i, 0]
        for j in range(1, J):
            if logits[i, j] > mx:
                mx = logits[i, j]
        tot = c.dtype.type(0)
        for j in range(J):
            e = np.exp(logits[i, j] - mx)
            c[i, j] = e
            tot += e
        for j in range(J):
            c[i, j] = c[i, j] / tot


_softmax_rows = _jit(_softmax_rows)


# ============================================================================================
# predictions (2.0) and routing of one image (2.1, 2.2)
# ============================================================================================


def _nonzero_index(x, idx):
    """Write the positions of the nonzero entries of x (d,) to idx[:n] and return n.

    Branch-free (every position is written, the count advances only on a nonzero), so it
    costs no mispredicted branches on random binary data.
    """
    n = 0
    for l in range(x.shape[0]):
        idx[n] = l
        n += x[l] != 0
    return n


_nonzero_index = _jit(_nonzero_index)


def predictions(start, stop, W, v, u):
    """(2.0) ``u[b, i] = W[i] @ v[b, i]`` (J, d_h) for children i in [start, stop), every image b.

    Looping over children outside keeps ``W[i]`` in cache while the batch streams past.
    ``W[i]`` is transposed once to (d_v, J, d_h), so each image adds ``v_bil W[i, :, :, l]``
    as contiguous vector updates, only for the l with ``v_bil != 0`` (binary data are mostly
    zeros; a skipped term would add exactly zero for finite W).

    Parameters
    ----------
    start, stop : int, range of children i
    W : (I, J, d_h, d_v); v : (B, I, d_v); u : (B, I, J, d_h) out
    """
    B = v.shape[0]
    J, d_h, d_v = W.shape[1], W.shape[2], W.shape[3]
    Wt = np.empty((d_v, J, d_h), dtype=W.dtype)  # W[i] transposed
    idx = np.empty(d_v, dtype=np.int64)
    for i in range(start, stop):
        for j in range(J):
            for k in range(d_h):
                for l in range(d_v):
                    Wt[l, j, k] = W[i, j, k, l]
        for b in range(B):
            ub = u[b, i]  # (J, d_h)
            for j in range(J):
                for k in range(d_h):
                    ub[j, k] = 0.0
            for m in range(_nonzero_index(v[b, i], idx)):
                l = idx[m]
                x = v[b, i, l]
                for j in range(J):
                    for k in range(d_h):
                        ub[j, k] += Wt[l, j, k] * x


predictions = _jit(predictions)


def _route_image(u, beta, c0, cs, ss, vs, logits):
    """Dynamic routing (2.1) of one image, keeping every pass.

    Parameters
    ----------
    u : (I, J, d_h) predictions
    beta : (I, J) prior logits
    c0 : (I, J) ``softmax_j(beta)``, the first pass's coefficients (the same for every image
        that shares beta, so the caller computes it once)
    cs : (r, I, J) out, coupling coefficients of every pass
    ss : (r, J, d_h) out, routed inputs of every pass
    vs : (r, J, d_h) out, squashed outputs of every pass
    logits : (I, J) scratch
    """
    r = cs.shape[0]
    I, J, d_h = u.shape
    zero = u.dtype.type(0)
    for t in range(r):
        c = cs[t]  # (I, J)
        s = ss[t]  # (J, d_h)
        if t == 0:
            _copy_2d(beta, logits)
            _copy_2d(c0, c)
        else:
            _softmax_rows(logits, c)  # sums to one over parents j
        for j in range(J):
            for k in range(d_h):
                s[j, k] = zero
        for i in range(I):
            for j in range(J):
                cij = c[i, j]
                for k in range(d_h):
                    s[j, k] += cij * u[i, j, k]
        for j in range(J):
            _squash_capsule(s[j], vs[t, j])
        if t < r - 1:  # accumulate agreement; skipped after the last pass
            for i in range(I):
                for j in range(J):
                    logits[i, j] += _dot(u[i, j], vs[t, j])


_route_image = _jit(_route_image)


def _route_image_vjp(u, cs, ss, vs, gs_last, gv_last, gc_last, has_gv, has_gc, gu, gb, gv, gs, gc):
    """Reverse mode of routing (2.2) for one image, through all r passes.

    With adjoints ``gb`` of the next logits (zero after the last pass), pass t gives
    ``gv = [t=r-1] g_v + sum_i gb_ij u_ij``, ``gs = [t=r-1] g_s + squash_vjp(s^t, gv)``,
    ``gc = [t=r-1] g_c + u . gs``, ``gb += softmax_vjp(c^t, gc)``,
    ``gu += c^t gs + gb^{t+1} v^t``.

    Parameters
    ----------
    u : (I, J, d_h); cs (r, I, J), ss (r, J, d_h), vs (r, J, d_h): the forward trace
    gs_last, gv_last : (J, d_h) adjoints of the final s and v
    gc_last : (I, J) adjoint of the final c
    has_gv, has_gc : bool, whether gv_last / gc_last are used (zero otherwise)
    gu : (I, J, d_h) out, ``dL/du``
    gb : (I, J) out, ``dL/dbeta`` (adjoint of the initial logits)
    gv, gs : (J, d_h) scratch; gc : (I, J) scratch
    """
    r = cs.shape[0]
    I, J, d_h = u.shape
    zero = u.dtype.type(0)
    for i in range(I):
        for j in range(J):
            gb[i, j] = zero
            for k in range(d_h):
                gu[i, j, k] = zero
    for t in range(r - 1, -1, -1):
        last = t == r - 1
        if last and not has_gv:
            # squash_vjp(s, 0) = 0, so gs is the adjoint of the final s
            _copy_2d(gs_last, gs)
        else:
            for j in range(J):
                for k in range(d_h):
                    gv[j, k] = gv_last[j, k] if last else zero
            if not last:
                for i in range(I):
                    for j in range(J):
                        g = gb[i, j]
                        for k in range(d_h):
                            gv[j, k] += g * u[i, j, k]
                            gu[i, j, k] += g * vs[t, j, k]
            for j in range(J):
                _squash_vjp_capsule(ss[t, j], gv[j], gs[j])
            if last:
                for j in range(J):
                    for k in range(d_h):
                        gs[j, k] += gs_last[j, k]
        for i in range(I):
            for j in range(J):
                cij = cs[t, i, j]
                for k in range(d_h):
                    gu[i, j, k] += cij * gs[j, k]
                acc = _dot(u[i, j], gs[j])
                gc[i, j] = acc + gc_last[i, j] if (last and has_gc) else acc
        for i in range(I):  # softmax_vjp: c * (gc - sum_j c gc)
            dot = _dot(cs[t, i], gc[i])
            for j in range(J):
                gb[i, j] += cs[t, i, j] * (gc[i, j] - dot)


_route_image_vjp = _jit(_route_image_vjp)


# ============================================================================================
# routing over a batch
# ============================================================================================


def routing_forward(start, stop, u_hat, beta, c0, n_iter, c_out, s_out, v_out):
    """Dynamic routing (2.1) of images b in [start, stop).

    Parameters
    ----------
    start, stop : int, range of images
    u_hat : (B, I, J, d_h)
    beta, c0 : (1 or B, I, J) prior logits and their softmax over parents
    n_iter : int, r >= 1
    c_out : (B, I, J) out; s_out, v_out : (B, J, d_h) out
    """
    B, I, J, d_h = u_hat.shape
    dt = u_hat.dtype
    cs = np.empty((n_iter, I, J), dtype=dt)  # (r, I, J), the trace of one image
    ss = np.empty((n_iter, J, d_h), dtype=dt)  # (r, J, d_h)
    vs = np.empty((n_iter, J, d_h), dtype=dt)  # (r, J, d_h)
    logits = np.empty((I, J), dtype=dt)
    for b in range(start, stop):
        p = 0 if beta.shape[0] == 1 else b  # shared or per-image prior
        _route_image(u_hat[b], beta[p], c0[p], cs, ss, vs, logits)
        _copy_2d(cs[n_iter - 1], c_out[b])
        _copy_2d(ss[n_iter - 1], s_out[b])
        _copy_2d(vs[n_iter - 1], v_out[b])


routing_forward = _jit(routing_forward)


def routing_forward_vjp(start, stop, u_hat, beta, c0, n_iter, g_s, g_v, g_c, has_gv, has_gc,
                        c_out, s_out, v_out, gu_out, gb_out):
    """Routing (2.1) and its VJP (2.2) of images b in [start, stop), fused per image.

    Only one image's trace (c (r, I, J), s and v (r, J, d_h)) exists at a time.

    Parameters
    ----------
    start, stop : int, range of images
    u_hat : (B, I, J, d_h); beta, c0 : (1 or B, I, J); n_iter : int
    g_s, g_v : (B, J, d_h) adjoints of the final s, v; g_c : (B, I, J) adjoint of the final c
    has_gv, has_gc : bool
    c_out (B, I, J), s_out (B, J, d_h), v_out (B, J, d_h) : out, the forward result
    gu_out : (B, I, J, d_h) out; gb_out : (B, I, J) out, per-image adjoint of beta
    """
    B, I, J, d_h = u_hat.shape
    dt = u_hat.dtype
    cs = np.empty((n_iter, I, J), dtype=dt)  # (r, I, J)
    ss = np.empty((n_iter, J, d_h), dtype=dt)  # (r, J, d_h)
    vs = np.empty((n_iter, J, d_h), dtype=dt)  # (r, J, d_h)
    logits = np.empty((I, J), dtype=dt)
    gv = np.empty((J, d_h), dtype=dt)
    gs = np.empty((J, d_h), dtype=dt)
    gc = np.empty((I, J), dtype=dt)
    for b in range(start, stop):
        p = 0 if beta.shape[0] == 1 else b
        _route_image(u_hat[b], beta[p], c0[p], cs, ss, vs, logits)
        _copy_2d(cs[n_iter - 1], c_out[b])
        _copy_2d(ss[n_iter - 1], s_out[b])
        _copy_2d(vs[n_iter - 1], v_out[b])
        _route_image_vjp(u_hat[b], cs, ss, vs, g_s[b], g_v[b], g_c[b], has_gv, has_gc,
                         gu_out[b], gb_out[b], gv, gs, gc)


routing_forward_vjp = _jit(routing_forward_vjp)


# ============================================================================================
# Model P (3.x)
# ============================================================================================


def _log_cosh(x):
    """``log cosh x = |x| + log1p(e^{-2|x|}) - log 2``, overflow-free."""
    a = abs(x)
    return a + np.log1p(np.exp(-2.0 * a)) - np.log(2.0)


_log_cosh = _jit(_log_cosh)

# expert codes of the Model P kernels: P's squash (3.2), G's Gaussian pose (G.2), S's spin pose (S.2)
SQUASH, GAUSSIAN, SPIN = 0, 1, 2


def _p_expert_terms(rho, m, s, expert, log_gain, prob):
    """Per capsule j: ``log(1 + e^rho |s|^2)`` (3.3) and ``sigmoid(rho + log |s|^2)`` (3.2).

    Both are zero where ``s_j = 0`` (firing logit ``-inf``). For ``expert`` GAUSSIAN (Model G)
    the logit is ``x = rho + m . s + |s|^2 / 2`` (G.2), for SPIN (Model S)
    ``x = rho + sum_k [log cosh(s_k + m_k) - log cosh(m_k)]`` (S.2); then ``softplus(x)`` and
    ``sigmoid(x)``. m (J, d_h) (read by G and S only), s (J, d_h); log_gain, prob (J,) out.
    """
    for j in range(s.shape[0]):
        n2 = _dot(s[j], s[j])
        if expert == SPIN:
            x = rho[j]
            for k in range(s.shape[1]):
                x += _log_cosh(s[j, k] + m[j, k]) - _log_cosh(m[j, k])
            log_gain[j] = _softplus(x)
            prob[j] = _sigmoid(x)
        elif expert == GAUSSIAN:
            x = rho[j] + _dot(m[j], s[j]) + 0.5 * n2
            log_gain[j] = _softplus(x)
            prob[j] = _sigmoid(x)
        elif n2 == 0:
            log_gain[j] = 0.0
            prob[j] = 0.0
        else:
            x = rho[j] + np.log(n2)  # firing logit
            log_gain[j] = _softplus(x)
            prob[j] = _sigmoid(x)


_p_expert_terms = _jit(_p_expert_terms)


def _p_free_energy_image(alpha, v, log_gain):
    """(3.3) ``F = -alpha . v - sum_j log_gain_j`` for one image: alpha, v (I, d_v), log_gain (J,)."""
    I, d_v = v.shape
    av = v.dtype.type(0)
    for i in range(I):
        av += _dot(v[i], alpha[i])
    lg = v.dtype.type(0)
    for j in range(log_gain.shape[0]):
        lg += log_gain[j]
    return -av - lg


_p_free_energy_image = _jit(_p_free_energy_image)


def _p_field_factor(rho, m, s, expert, prob, g):
    """(3.5) ``g_j = -dF/ds_j = 2 s_j / (e^{-rho_j} + |s_j|^2)``: s (J, d_h) -> g (J, d_h).

    GAUSSIAN (G.4): ``g_j = p_j (s_j + m_j)``; SPIN (S.4): ``g_j = p_j tanh(s_j + m_j)``; prob (J,)
    the firing probabilities, m (J, d_h).
    """
    J, d_h = s.shape
    for j in range(J):
        if expert == SPIN:
            for k in range(d_h):
                g[j, k] = prob[j] * np.tanh(s[j, k] + m[j, k])
            continue
        if expert == GAUSSIAN:
            for k in range(d_h):
                g[j, k] = prob[j] * (s[j, k] + m[j, k])
            continue
        den = np.exp(-rho[j]) + _dot(s[j], s[j])
        for k in range(d_h):
            g[j, k] = -(-2.0 * s[j, k] / den)


_p_field_factor = _jit(_p_field_factor)


def _p_local_field(W, alpha, c, g, i, t):
    """(3.8) ``t = alpha_i + sum_j c_ij W_ij^T g_j`` for capsule i: c (I, J), g (J, d_h) -> t (d_v,)."""
    J, d_h, d_v = W.shape[1], W.shape[2], W.shape[3]
    for l in range(d_v):
        t[l] = 0.0
    for j in range(J):
        cij = c[i, j]
        for k in range(d_h):
            x = cij * g[j, k]
            for l in range(d_v):
                t[l] += W[i, j, k, l] * x
    for l in range(d_v):
        t[l] = alpha[i, l] + t[l]


_p_local_field = _jit(_p_local_field)


def _bernoulli_log_prob(x, logit):
    """``sum_l log Bernoulli(x_l; sigmoid(logit_l))`` for binary x (d,), term selected by x."""
    acc = 0.0
    for l in range(x.shape[0]):
        acc += _log_sigmoid(logit[l]) if x[l] > 0.5 else _log_sigmoid(-logit[l])
    return acc


_bernoulli_log_prob = _jit(_bernoulli_log_prob)


def p_free_energy(start, stop, alpha, rho, m, beta, c0, v, u, n_iter, expert, F_out):
    """(3.3) free energies of images b in [start, stop); (G.3, S.3) by ``expert``.

    Parameters
    ----------
    start, stop : int, range of images
    alpha (I, d_v), rho (J,), m (J, d_h) (Model G's pose means), beta (I, J),
    c0 = softmax(beta) (I, J), v (B, I, d_v), u (B, I, J, d_h) predictions, n_iter,
    expert (0 squash, 1 Gaussian, 2 spin); F_out (B,) out
    """
    B, I, J, d_h = u.shape
    dt = u.dtype
    cs = np.empty((n_iter, I, J), dtype=dt)
    ss = np.empty((n_iter, J, d_h), dtype=dt)
    vs = np.empty((n_iter, J, d_h), dtype=dt)
    logits = np.empty((I, J), dtype=dt)
    log_gain = np.empty(J, dtype=dt)
    prob = np.empty(J, dtype=dt)
    for b in range(start, stop):
        _route_image(u[b], beta, c0, cs, ss, vs, logits)
        _p_expert_terms(rho, m, ss[n_iter - 1], expert, log_gain, prob)
        F_out[b] = _p_free_energy_image(alpha, v[b], log_gain)


p_free_energy = _jit(p_free_energy)


def p_free_energy_grad(start, stop, alpha, rho, m, beta, c0, v, n_iter, full, expert, F_out,
                       prob_out, s_out, g_u, gb_out):
    """(3.6, 3.7) per-image part of the gradient of the batch-mean free energy, images [start, stop).

    For each image: routing with its own trace, F (3.3), firing probabilities (3.2),
    ``g_s = dF/ds / B`` (3.5; G.4, S.4 by ``expert``) and, in ``full`` mode, the routing VJP
    (2.2), whose adjoint of the predictions overwrites the predictions in ``g_u[b]``. In ``frozen`` mode
    ``g_u = c_ij g_s_j`` and the beta adjoint is zero. The batch sum
    ``dW_ij = sum_b g_u_bij v_bi^T`` is :func:`outer_sum`.

    Parameters
    ----------
    start, stop : int, range of images
    alpha (I, d_v), rho (J,), m (J, d_h), beta (I, J), c0 = softmax(beta) (I, J), v (B, I, d_v),
    n_iter, full (bool), expert (0 squash, 1 Gaussian, 2 spin)
    F_out (B,), prob_out (B, J), s_out (B, J, d_h) final routed inputs, gb_out (B, I, J) : out
    g_u : (B, I, J, d_h), the predictions on entry, their adjoint on exit
    """
    B, I, J, d_h = g_u.shape
    dt = g_u.dtype
    u = np.empty((I, J, d_h), dtype=dt)  # one image's predictions
    cs = np.empty((n_iter, I, J), dtype=dt)
    ss = np.empty((n_iter, J, d_h), dtype=dt)
    vs = np.empty((n_iter, J, d_h), dtype=dt)
    logits = np.empty((I, J), dtype=dt)
    log_gain = np.empty(J, dtype=dt)
    gs_last = np.empty((J, d_h), dtype=dt)
    gv = np.zeros((J, d_h), dtype=dt)
    gs = np.empty((J, d_h), dtype=dt)
    gc = np.zeros((I, J), dtype=dt)
    for b in range(start, stop):
        for i in range(I):
            _copy_2d(g_u[b, i], u[i])
        _route_image(u, beta, c0, cs, ss, vs, logits)
        s = ss[n_iter - 1]  # (J, d_h)
        _copy_2d(s, s_out[b])
        _p_expert_terms(rho, m, s, expert, log_gain, prob_out[b])
        F_out[b] = _p_free_energy_image(alpha, v[b], log_gain)
        _p_field_factor(rho, m, s, expert, prob_out[b], gs_last)  # -dF/ds (3.5, G.4)
        for j in range(J):  # g_s = dF/ds / B
            for k in range(d_h):
                gs_last[j, k] = -gs_last[j, k] / B
        if full:
            _route_image_vjp(u, cs, ss, vs, gs_last, gv, gc, False, False,
                             g_u[b], gb_out[b], gv, gs, gc)
        else:  # frozen (3.7): c constant, no beta adjoint
            c = cs[n_iter - 1]
            for i in range(I):
                for j in range(J):
                    gb_out[b, i, j] = 0.0
                    for k in range(d_h):
                        g_u[b, i, j, k] = c[i, j] * gs_last[j, k]


p_free_energy_grad = _jit(p_free_energy_grad)


def outer_sum(start, stop, g, v, out):
    """``out[i, j, k, l] = sum_b g[b, i, j, k] v[b, i, l]`` for children i in [start, stop).

    The sum over b runs in order 0..B-1 whatever the split into ranges. Each (i, j) block is
    accumulated transposed in a small (d_v, d_h) buffer that stays in L1 cache, over the
    nonzero ``v_bil`` only (the others add exactly zero for finite g).

    Parameters
    ----------
    start, stop : int, range of children i
    g : (B, I, J, d_h); v : (B, I, d_v); out : (I, J, d_h, d_v) out
    """
    B, I, J, d_h = g.shape
    d_v = v.shape[2]
    acc = np.empty((d_v, d_h), dtype=g.dtype)
    idx = np.empty((B, d_v), dtype=np.int64)  # nonzero positions of v[b, i]
    cnt = np.empty(B, dtype=np.int64)
    for i in range(start, stop):
        for b in range(B):
            cnt[b] = _nonzero_index(v[b, i], idx[b])
        for j in range(J):
            for l in range(d_v):
                for k in range(d_h):
                    acc[l, k] = 0.0
            for b in range(B):
                for m in range(cnt[b]):
                    l = idx[b, m]
                    x = v[b, i, l]
                    for k in range(d_h):
                        acc[l, k] += g[b, i, j, k] * x
            for k in range(d_h):
                for l in range(d_v):
                    out[i, j, k, l] = acc[l, k]


outer_sum = _jit(outer_sum)


def _p_route_state(alpha, rho, m, beta, c0, v, u, expert, cs, ss, vs, logits, log_gain, prob, c, s,
                   g):
    """Route one chain's state and fill its final c (I, J), s (J, d_h), field factor g; return F."""
    n_iter = cs.shape[0]
    _route_image(u, beta, c0, cs, ss, vs, logits)
    _copy_2d(cs[n_iter - 1], c)
    _copy_2d(ss[n_iter - 1], s)
    _p_expert_terms(rho, m, s, expert, log_gain, prob)
    _p_field_factor(rho, m, s, expert, prob, g)
    return _p_free_energy_image(alpha, v, log_gain)


_p_route_state = _jit(_p_route_state)


def p_mh_sweep(start, stop, W, alpha, rho, m, beta, c0, v, u, n_iter, expert, u_prop, u_acc,
               n_accept):
    """(3.9) one systematic Metropolis-Hastings sweep of chains b in [start, stop), in place.

    Each chain keeps its predictions u[b] (I, J, d_h); a proposal for capsule i rewrites row i
    only, the state is routed once, and row i is restored if the proposal is rejected. The
    acceptance test is ``log u < F(v) - F(v') + log q_i(v_i | v') - log q_i(v_i' | v)``.

    Parameters
    ----------
    start, stop : int, range of chains
    W, alpha, rho, beta : Model P parameters; m (J, d_h): Model G's pose means;
    c0 = softmax(beta) (I, J)
    v : (B, I, d_v) chain states, updated in place
    u : (B, I, J, d_h) their predictions, updated in place
    n_iter : int, routing passes
    expert : int, 0 Model P's squash expert, 1 Model G's (G.2-G.4), 2 Model S's (S.2-S.4)
    u_prop : (I, B, d_v) proposal uniforms (``v_i' = u < sigmoid(t_i)``)
    u_acc : (I, B) acceptance uniforms
    n_accept : (B,) int64 out, accepted proposals per chain
    """
    I, J, d_h, d_v = W.shape
    dt = v.dtype
    cs = np.empty((n_iter, I, J), dtype=dt)
    ss = np.empty((n_iter, J, d_h), dtype=dt)
    vs = np.empty((n_iter, J, d_h), dtype=dt)
    logits = np.empty((I, J), dtype=dt)
    log_gain = np.empty(J, dtype=dt)
    prob = np.empty(J, dtype=dt)
    c = np.empty((I, J), dtype=dt)  # current state: c, s, g = -dF/ds
    s = np.empty((J, d_h), dtype=dt)
    g = np.empty((J, d_h), dtype=dt)
    c_p = np.empty((I, J), dtype=dt)  # proposed state
    s_p = np.empty((J, d_h), dtype=dt)
    g_p = np.empty((J, d_h), dtype=dt)
    t_fwd = np.empty(d_v, dtype=dt)
    t_rev = np.empty(d_v, dtype=dt)
    prop = np.empty(d_v, dtype=dt)
    old_v = np.empty(d_v, dtype=dt)
    old_row = np.empty((J, d_h), dtype=dt)
    for b in range(start, stop):
        vb = v[b]  # (I, d_v)
        ub = u[b]  # (I, J, d_h)
        F = _p_route_state(alpha, rho, m, beta, c0, vb, ub, expert, cs, ss, vs, logits, log_gain, prob,
                           c, s, g)
        count = 0
        for i in range(I):
            _p_local_field(W, alpha, c, g, i, t_fwd)
            for l in range(d_v):
                prop[l] = 1.0 if u_prop[i, b, l] < _sigmoid(t_fwd[l]) else 0.0
            # proposed state: row i of v and of u replaced, everything else kept
            for l in range(d_v):
                old_v[l] = vb[i, l]
                vb[i, l] = prop[l]
            _copy_2d(ub[i], old_row)
            for j in range(J):
                for k in range(d_h):
                    ub[i, j, k] = _dot(W[i, j, k], prop)
            F_p = _p_route_state(alpha, rho, m, beta, c0, vb, ub, expert, cs, ss, vs, logits, log_gain,
                                 prob, c_p, s_p, g_p)
            _p_local_field(W, alpha, c_p, g_p, i, t_rev)
            log_a = F - F_p + _bernoulli_log_prob(old_v, t_rev) - _bernoulli_log_prob(prop, t_fwd)
            if np.log(u_acc[i, b]) < log_a:
                count += 1
                F = F_p
                _copy_2d(c_p, c)
                _copy_2d(s_p, s)
                _copy_2d(g_p, g)
            else:  # restore row i
                for l in range(d_v):
                    vb[i, l] = old_v[l]
                _copy_2d(old_row, ub[i])
        n_accept[b] = count


p_mh_sweep = _jit(p_mh_sweep)


def p_reconstruct_step(start, stop, W, alpha, rho, beta, c0, u, n_iter, u_z, u_v, v_out, z_out):
    """(3.10) the paper-literal step for images b in [start, stop): z ~ p(z | v), then all of v.

    ``v'_il = [u < sigmoid(alpha_il + sum_j c_ij z_j (W_ij^T s_j / |s_j|)_l)]``.

    Parameters
    ----------
    start, stop : int, range of images
    W, alpha, rho, beta : Model P parameters; c0 = softmax(beta) (I, J)
    u : (B, I, J, d_h) predictions of the current v
    u_z : (B, J) uniforms for z; u_v : (B, I, d_v) uniforms for v'
    v_out : (B, I, d_v) out; z_out : (B, J) out
    """
    I, J, d_h, d_v = W.shape
    dt = u.dtype
    cs = np.empty((n_iter, I, J), dtype=dt)
    ss = np.empty((n_iter, J, d_h), dtype=dt)
    vs = np.empty((n_iter, J, d_h), dtype=dt)
    logits = np.empty((I, J), dtype=dt)
    log_gain = np.empty(J, dtype=dt)
    prob = np.empty(J, dtype=dt)
    unit = np.empty((J, d_h), dtype=dt)  # z_j s_j / |s_j|
    t = np.empty(d_v, dtype=dt)
    for b in range(start, stop):
        _route_image(u[b], beta, c0, cs, ss, vs, logits)
        c = cs[n_iter - 1]
        s = ss[n_iter - 1]
        _p_expert_terms(rho, s, s, SQUASH, log_gain, prob)  # squash expert: m unused
        for j in range(J):
            z = 1.0 if u_z[b, j] < prob[j] else 0.0
            z_out[b, j] = z
            n = np.sqrt(_dot(s[j], s[j]))
            nn = n if n > 0 else 1.0
            for k in range(d_h):
                unit[j, k] = z * (s[j, k] / nn)
        for i in range(I):
            for l in range(d_v):
                t[l] = 0.0
            for j in range(J):
                cij = c[i, j]
                for k in range(d_h):
                    x = cij * unit[j, k]
                    for l in range(d_v):
                        t[l] += W[i, j, k, l] * x
            for l in range(d_v):
                v_out[b, i, l] = 1.0 if u_v[b, i, l] < _sigmoid(alpha[i, l] + t[l]) else 0.0


p_reconstruct_step = _jit(p_reconstruct_step)


# ============================================================================================
# Model R (4.x)
# ============================================================================================


def _r_mean_mu(gamma, u, c, mu):
    """``mu_j = sigmoid(gamma_j + sum_i c_ij u_ij)`` (4.6): u (I, J, d_h), c (I, J) -> mu (J, d_h)."""
    I, J, d_h = u.shape
    for j in range(J):
        for k in range(d_h):
            mu[j, k] = 0.0
    for i in range(I):
        for j in range(J):
            cij = c[i, j]
            for k in range(d_h):
                mu[j, k] += cij * u[i, j, k]
    for j in range(J):
        for k in range(d_h):
            mu[j, k] = _sigmoid(gamma[j, k] + mu[j, k])


_r_mean_mu = _jit(_r_mean_mu)


def _r_posterior(beta, u, h, logits, out):
    """``out = softmax_j(beta_ij + u_ij . h_j)`` (4.3 with h, 4.6 with mu): -> (I, J)."""
    I, J = beta.shape
    for i in range(I):
        for j in range(J):
            logits[i, j] = beta[i, j] + _dot(u[i, j], h[j])
    _softmax_rows(logits, out)


_r_posterior = _jit(_r_posterior)


def _r_image_predictions(Wt, C, v, idx, u):
    """(4b.2) one image's predictions ``u_ij = W_ij v_i + C_ij``: v (I, d_v) -> u (I, J, d_h).

    Adds the rows ``Wt[i, j, l]`` (Wt: (I, J, d_v, d_h), W with its last two axes swapped) of
    the pixels that are on only; idx (d_v,) int64 is scratch.
    """
    I, J, d_v, d_h = Wt.shape
    for i in range(I):
        for j in range(J):
            for k in range(d_h):
                u[i, j, k] = C[i, j, k]
        for m in range(_nonzero_index(v[i], idx)):
            l = idx[m]
            vl = v[i, l]
            for j in range(J):
                for k in range(d_h):
                    u[i, j, k] += Wt[i, j, l, k] * vl


_r_image_predictions = _jit(_r_image_predictions)


def r_mean_field(start, stop, Wt, C, gamma, prior, c0, v, tol, max_iter, damping, c_out, mu_out, n_out):
    """(4.6) mean-field routing of images b in [start, stop), each stopping on its own.

    From ``c = c0``: ``mu = sigmoid(gamma + s(c))``, ``c_new = softmax(b + u . mu)``,
    ``c <- (1 - damping) c_new + damping c``; stop after the update whose
    ``max |c_new - c| < tol`` (n_out = that update's number) or after ``max_iter`` updates.
    ``mu_out`` is recomputed from the returned c.

    Each image's predictions u (I, J, d_h) are built in a scratch buffer that stays in cache
    while it iterates, rather than for the whole batch (B I J d_h numbers) up front.

    Parameters
    ----------
    start, stop : int, range of images
    Wt : (I, J, d_v, d_h) W with its last two axes swapped; C : (I, J, d_h) prediction biases
    (zeros without them); gamma (J, d_h); prior (B, I, J) prior routing logits b(v) (4b.3;
    beta for every image without assignment biases); c0 (B, I, J) the starting routing
    (softmax(prior), the routing at h = 0, unless the caller gives another);
    v (B, I, d_v)
    c_out (B, I, J), mu_out (B, J, d_h), n_out (B,) int64 : out
    """
    I, J, d_v, d_h = Wt.shape
    dt = Wt.dtype
    ub = np.empty((I, J, d_h), dtype=dt)
    idx = np.empty(d_v, dtype=np.int64)
    logits = np.empty((I, J), dtype=dt)
    c_new = np.empty((I, J), dtype=dt)
    mu = np.empty((J, d_h), dtype=dt)
    keep = 1.0 - damping
    for b in range(start, stop):
        _r_image_predictions(Wt, C, v[b], idx, ub)  # (I, J, d_h)
        c = c_out[b]  # (I, J), updated in place
        _copy_2d(c0[b], c)
        n_out[b] = max_iter
        for t in range(1, max_iter + 1):
            _r_mean_mu(gamma, ub, c, mu)
            _r_posterior(prior[b], ub, mu, logits, c_new)
            delta = dt.type(0)  # max |c_new - c|, the undamped change
            for i in range(I):
                for j in range(J):
                    d = abs(c_new[i, j] - c[i, j])
                    if d > delta:
                        delta = d
                    c[i, j] = keep * c_new[i, j] + damping * c[i, j]
            if delta < tol:
                n_out[b] = t
                break
        _r_mean_mu(gamma, ub, c, mu_out[b])


r_mean_field = _jit(r_mean_field)


def _r_add_assigned(Wt, C, v_b, a_b, idx, x):
    """``x[j] += sum_{i: a_i = j} (W_ij v_i + C_ij)`` for one image, from the nonzero v only:
    each child adds ``C_{i a_i}`` and the rows ``Wt[i, a_i, l]`` of its pixels that are on,
    ``I d_h + nnz(v) d_h`` operations instead of the ``I J d_h d_v`` of the predictions (4b.2).

    Wt (I, J, d_v, d_h), C (I, J, d_h), v_b (I, d_v), a_b (I,) int64, idx (d_v,) scratch,
    x (J, d_h) accumulated in place.
    """
    I, J, d_v, d_h = Wt.shape
    for i in range(I):
        j = a_b[i]
        for k in range(d_h):
            x[j, k] += C[i, j, k]
        for m in range(_nonzero_index(v_b[i], idx)):
            l = idx[m]
            vl = v_b[i, l]
            for k in range(d_h):
                x[j, k] += Wt[i, j, l, k] * vl


_r_add_assigned = _jit(_r_add_assigned)


def r_hidden_draw(start, stop, Wt, C, gamma, v, a, u_h, h_out, p_out):
    """(4.4) ``h ~ U(v, a)`` of chains b in [start, stop), from the sparse v, without u_hat:
    ``h_jk ~ sigmoid(gamma_jk + sum_{i: a_i = j} (W_ij v_i + C_ij)_k)`` (:func:`_r_add_assigned`),
    keeping the probabilities ``p(h_jk = 1 | v, a)`` for the statistics (4b.10).

    Parameters
    ----------
    start, stop : int, range of chains
    Wt : (I, J, d_v, d_h) W with its last two axes swapped, C-contiguous
    C : (I, J, d_h) prediction biases (zeros without them); gamma : (J, d_h)
    v : (B, I, d_v); a : (B, I) int64; u_h : (B, J, d_h) uniforms
    h_out, p_out : (B, J, d_h) out, the draws and their probabilities
    """
    I, J, d_v, d_h = Wt.shape
    x = np.empty((J, d_h), dtype=Wt.dtype)
    idx = np.empty(d_v, dtype=np.int64)
    for b in range(start, stop):
        for j in range(J):
            for k in range(d_h):
                x[j, k] = gamma[j, k]
        _r_add_assigned(Wt, C, v[b], a[b], idx, x)
        for j in range(J):
            for k in range(d_h):
                p = _sigmoid(x[j, k])
                p_out[b, j, k] = p
                h_out[b, j, k] = 1.0 if u_h[b, j, k] < p else 0.0


r_hidden_draw = _jit(r_hidden_draw)


def r_assigned_input(start, stop, Wt, C, v, a, out):
    """(4.9) ``out[b, j] = sum_{i: a_i = j} (W_ij v_i + C_ij)`` of images b in [start, stop)
    (:func:`_r_add_assigned`): the hidden units' input of :func:`r_hidden_draw` without gamma.

    Parameters
    ----------
    start, stop : int, range of images
    Wt : (I, J, d_v, d_h) W with its last two axes swapped, C-contiguous
    C : (I, J, d_h) prediction biases (zeros without them)
    v : (B, I, d_v); a : (B, I) int64; out : (B, J, d_h) out
    """
    d_v = Wt.shape[2]
    idx = np.empty(d_v, dtype=np.int64)
    for b in range(start, stop):
        out[b, :, :] = 0.0
        _r_add_assigned(Wt, C, v[b], a[b], idx, out[b])


r_assigned_input = _jit(r_assigned_input)


def r_route_visible_draw(start, stop, T, field, alpha, beta, A, Ch, v, u_a, u_v, a_out, v_out, resp_out):
    """(4.3) ``a_new ~ R(v, h)`` and (4.5) ``v_new ~ D(h, a_new)`` of chains b in [start, stop).

    From the top-down fields ``T[j, b, i] = W_ij^T h_j`` (``model_r.top_down``, one matrix
    product per parent), the routing logit is ``b_ij(v) + Ch[j, b, i] + v_i . T[j, b, i]`` with
    ``b_ij(v) = beta_ij + A_ij . v_i`` (4b.3) and ``Ch[j, b, i] = C_ij . h_j``, i.e.
    ``b_ij + u_hat_{j|i} . h_j``; the visible logit of the drawn parent n is
    ``alpha[i, n] + T[n, b, i] + field[b, i]`` (4b.4, 4c.4). The field's energy term
    ``v_i . field_i`` is the same for every parent, so the routing does not see it. ``a_i`` is
    drawn by inverse CDF from u_a (the number of ``j < J-1`` with normalised cumulative
    probability ``<= u_i``), v from u_v.

    Parameters
    ----------
    start, stop : int, range of chains
    T : (J, B, I, d_v) top-down fields; field : (B, I, d_v) added to the visible logits, or
        (0, 0, 0) for none; alpha : (I, J, d_v) ``alpha_i + A_ij`` (4b.4)
    beta : (I, J); A : (I, J, d_v) (zeros without assignment biases); Ch : (J, B, I)
    v : (B, I, d_v) current visible states
    u_a : (B, I), u_v : (B, I, d_v) uniforms
    a_out (B, I) int64, v_out (B, I, d_v), resp_out (B, I, J) : out
    """
    J, _, I, d_v = T.shape
    has_field = field.shape[0] > 0
    dt = T.dtype
    logits = np.empty((I, J), dtype=dt)
    cum = np.empty(J, dtype=dt)
    for b in range(start, stop):
        resp = resp_out[b]  # (I, J)
        for i in range(I):
            for j in range(J):
                x = beta[i, j] + Ch[j, b, i]
                for l in range(d_v):
                    x += v[b, i, l] * (A[i, j, l] + T[j, b, i, l])
                logits[i, j] = x
        _softmax_rows(logits, resp)
        for i in range(I):
            acc = dt.type(0)
            for j in range(J):
                acc += resp[i, j]
                cum[j] = acc
            n = 0
            for j in range(J - 1):
                if cum[j] / cum[J - 1] <= u_a[b, i]:
                    n += 1
            a_out[b, i] = n
            for l in range(d_v):
                t = alpha[i, n, l] + T[n, b, i, l]
                if has_field:
                    t += field[b, i, l]
                v_out[b, i, l] = 1.0 if u_v[b, i, l] < _sigmoid(t) else 0.0


r_route_visible_draw = _jit(r_route_visible_draw)


def r_statistics(start, stop, w, v, c, mu, dW, dalpha, dbeta, tiny):
    """(4.8) weighted batch sums of ``c_ij mu_j v_i^T``, v and c for children i in [start, stop).

    Every entry is summed over the batch in order b = 0..B-1 whatever the split into ranges.
    As in :func:`outer_sum`, each (i, j) block of dW is accumulated transposed in an L1-sized
    buffer over the nonzero ``v_bil`` only. Terms whose weight ``w_b c_bij`` is below ``tiny``
    (the dtype's smallest normal number) are left out of dW: with ``0 <= v, mu <= 1`` each of
    their products is below ``tiny`` too, so together they are under B times ``tiny``, far
    below the rounding of any entry of normal size, while subnormal arithmetic costs tens of
    normal operations on x86. In float32 (``tiny`` 1e-38) a trained model's routing gives
    about half a percent of (b, i, j) such weights; in float64 (2e-308) practically none.

    Parameters
    ----------
    start, stop : int, range of children i
    w (B,), v (B, I, d_v), c (B, I, J), mu (B, J, d_h)
    dW (I, J, d_h, d_v), dalpha (I, d_v), dbeta (I, J) : out
    tiny : float, ``np.finfo(dtype).tiny``
    """
    B, I, d_v = v.shape
    J, d_h = mu.shape[1], mu.shape[2]
    acc = np.empty((d_v, d_h), dtype=v.dtype)
    idx = np.empty((B, d_v), dtype=np.int64)  # nonzero positions of v[b, i]
    cnt = np.empty(B, dtype=np.int64)
    for i in range(start, stop):
        for l in range(d_v):
            dalpha[i, l] = 0.0
        for b in range(B):
            cnt[b] = _nonzero_index(v[b, i], idx[b])
            for l in range(d_v):
                dalpha[i, l] += w[b] * v[b, i, l]
        for j in range(J):
            dbeta[i, j] = 0.0
            for l in range(d_v):
                for k in range(d_h):
                    acc[l, k] = 0.0
            for b in range(B):
                wc = w[b] * c[b, i, j]
                dbeta[i, j] += wc
                if abs(wc) < tiny:
                    continue
                for m in range(cnt[b]):
                    l = idx[b, m]
                    y = wc * v[b, i, l]
                    for k in range(d_h):
                        acc[l, k] += y * mu[b, j, k]
            for k in range(d_h):
                for l in range(d_v):
                    dW[i, j, k, l] = acc[l, k]


r_statistics = _jit(r_statistics)


# ============================================================================================
# RBM (5.x)
# ============================================================================================


def nonzero_rows(start, stop, X, idx, cnt):
    """Row-wise nonzeros of X (N, K) for rows n in [start, stop): ``idx[n, :cnt[n]]``, ascending."""
    for n in range(start, stop):
        cnt[n] = _nonzero_index(X[n], idx[n])


nonzero_rows = _jit(nonzero_rows)


def nonzero_columns(start, stop, X, idx, cnt):
    """Column-wise nonzeros of X (N, K) for columns k in [start, stop): the rows n with
    ``X[n, k] != 0`` in ``idx[k, :cnt[k]]``, ascending (branch-free, as :func:`_nonzero_index`).

    Parameters
    ----------
    X : (N, K); idx : (K, N) int64 out; cnt : (K,) int64 out
    """
    N = X.shape[0]
    for k in range(start, stop):
        cnt[k] = 0
    for n in range(N):
        for k in range(start, stop):
            idx[k, cnt[k]] = n
            cnt[k] += X[n, k] != 0


nonzero_columns = _jit(nonzero_columns)


LOGITS, PROBABILITIES, DRAWS, SOFTPLUS = 0, 1, 2, 3  # what a layer kernel returns (``mode``)


def _logistic_epilogue(t, u, mode):
    """In place on t (n, c): nothing (``LOGITS``), ``p = 1 / (1 + e^{-t})`` in t's dtype
    (``PROBABILITIES``), the unit ``u < p`` as 1 or 0 (``DRAWS``), or ``softplus(t) =
    max(t, 0) + log1p(e^{-|t|})`` (``SOFTPLUS``, the free energy's terms (5.4)).

    Branch-free: for very negative t, ``e^{-t}`` overflows to inf and p is exactly 0, its limit.
    The comparison ``u < p`` is made in float64 (u is float64), as in the reference.
    """
    if mode == LOGITS:
        return
    one = t.dtype.type(1)
    zero = t.dtype.type(0)
    for n in range(t.shape[0]):
        for c in range(t.shape[1]):
            if mode == SOFTPLUS:
                x = t[n, c]
                t[n, c] = max(x, zero) + np.log1p(np.exp(-abs(x)))
                continue
            p = one / (one + np.exp(-t[n, c]))
            if mode == DRAWS:
                t[n, c] = one if u[n, c] < p else 0
            else:
                t[n, c] = p


_logistic_epilogue = _jit(_logistic_epilogue)


def rbm_sparse_layer(start, stop, X, idx, cnt, M, bias, u, mode, out):
    """(5.2) a layer from sparse inputs, rows n in [start, stop):
    ``t_nc = bias_c + sum_k X_nk M_kc`` over the nonzero ``X_nk`` only (``idx``, ``cnt`` from
    :func:`nonzero_rows`), then (``mode``) ``out = t``, ``sigmoid(t)`` or the Bernoulli draw
    ``u < sigmoid(t)``.

    Binary data and chain states are mostly zeros (13% ones on MNIST), so this adds
    ``nnz(X) C`` terms instead of the dense product's ``N K C``; a skipped term would add exactly
    zero for finite M. Each output row is accumulated in one buffer of C values (L1-sized for
    C up to a few thousand) while the rows of M it needs stream past.

    Parameters
    ----------
    start, stop : int, range of rows n
    X (N, K); idx (N, K) int64, cnt (N,) int64; M (K, C); bias (C,)
    u : (N, C) uniforms (float64) for ``DRAWS``, any 2-D float64 array otherwise
    mode : int, ``LOGITS``, ``PROBABILITIES``, ``DRAWS`` or ``SOFTPLUS``
    out : (N, C) out
    """
    C = M.shape[1]
    for n in range(start, stop):
        t = out[n:n + 1]  # (1, C), accumulated in place
        a = t[0]
        for c in range(C):
            a[c] = bias[c]
        for m in range(cnt[n]):
            k = idx[n, m]
            x = X[n, k]
            Mk = M[k]
            for c in range(C):
                a[c] += x * Mk[c]
        _logistic_epilogue(t, u[n:n + 1], mode)


rbm_sparse_layer = _jit(rbm_sparse_layer)


def logistic_rows(start, stop, t, u, mode):
    """(5.3) the epilogue of a layer whose product is a BLAS call, rows n in [start, stop), in
    place on the logits t (N, C): nothing, ``sigmoid(t)`` or the draw ``u < sigmoid(t)``
    (``mode``, as :func:`_logistic_epilogue`).

    Parameters
    ----------
    start, stop : int, range of rows n
    t : (N, C) logits, overwritten; u : (N, C) float64 uniforms (for ``DRAWS``); mode : int
    """
    _logistic_epilogue(t[start:stop], u[start:stop], mode)


logistic_rows = _jit(logistic_rows)


def _accumulate_rows(X, rows, n_rows, k, P, acc):
    """``acc = sum_m X[rows[m], k] P[rows[m]]`` over m < n_rows: acc (C,) out.

    Four rows at a time, ``acc += (x0 p0 + x1 p1) + (x2 p2 + x3 p3)``, so the accumulator is
    loaded and stored once per four rows; the order is fixed by ``rows``.
    """
    C = acc.shape[0]
    for c in range(C):
        acc[c] = 0
    m = 0
    while m + 3 < n_rows:
        n0, n1, n2, n3 = rows[m], rows[m + 1], rows[m + 2], rows[m + 3]
        x0, x1, x2, x3 = X[n0, k], X[n1, k], X[n2, k], X[n3, k]
        p0, p1, p2, p3 = P[n0], P[n1], P[n2], P[n3]
        for c in range(C):
            acc[c] += (x0 * p0[c] + x1 * p1[c]) + (x2 * p2[c] + x3 * p3[c])
        m += 4
    while m < n_rows:
        n0 = rows[m]
        x0 = X[n0, k]
        p0 = P[n0]
        for c in range(C):
            acc[c] += x0 * p0[c]
        m += 1


_accumulate_rows = _jit(_accumulate_rows)


def rbm_weight_statistic(start, stop, Xd, idx_d, cnt_d, Pd, Xm, idx_m, cnt_m, Pm, wd, wm, out):
    """(5.6) ``out[k] = wd sum_n Xd_nk Pd_n - wm sum_n Xm_nk Pm_n`` for rows k in [start, stop).

    The W part of the CD gradient, ``<v p(h|v)^T>_data - <v p(h|v)^T>_model`` with weights
    ``wd = 1 / B_data``, ``wm = 1 / B_model``. Only the nonzero ``X_nk`` are visited (``idx``,
    ``cnt`` from :func:`nonzero_columns`, rows n ascending, so each entry sums over the batch
    in order whatever the split into ranges); row k of the result is accumulated in place.

    Parameters
    ----------
    start, stop : int, range of rows k (visible units)
    Xd (Nd, K), Pd (Nd, C), Xm (Nm, K), Pm (Nm, C); idx_* (K, N*), cnt_* (K,) int64
    wd, wm : float; out : (K, C) out
    """
    C = Pd.shape[1]
    acc_d = np.empty(C, dtype=out.dtype)
    acc_m = np.empty(C, dtype=out.dtype)
    for k in range(start, stop):
        _accumulate_rows(Xd, idx_d[k], cnt_d[k], k, Pd, acc_d)
        _accumulate_rows(Xm, idx_m[k], cnt_m[k], k, Pm, acc_m)
        o = out[k]
        for c in range(C):
            o[c] = wd * acc_d[c] - wm * acc_m[c]


rbm_weight_statistic = _jit(rbm_weight_statistic)


# ============================================================================================
# training (the momentum step of capsnp.training)
# ============================================================================================


def sgd_momentum_step(theta, vel, g, lr, mom, wd, new_theta, new_vel):
    """One parameter's momentum step, and whether g and the new theta are finite.

    ``new_vel = mom vel + lr (g - wd theta)``, ``new_theta = theta + new_vel`` elementwise, in
    the reference's order of operations (:func:`capsnp.training.sgd_update`, so the results
    agree bit for bit), while testing every ``g`` and every new ``theta`` for NaN and infinity.
    One pass reading three arrays and writing two, where the reference makes four temporaries
    and two more passes for the checks.

    Parameters
    ----------
    theta, vel, g : C-contiguous arrays of one shape and dtype
    lr, mom, wd : scalars of that dtype
    new_theta, new_vel : arrays like theta, out

    Returns
    -------
    (g_finite, theta_finite) : (bool, bool)
    """
    t = theta.ravel()
    v = vel.ravel()
    d = g.ravel()
    nt = new_theta.ravel()
    nv = new_vel.ravel()
    g_ok = True
    t_ok = True
    for k in range(t.size):
        x = d[k]
        g_ok &= np.isfinite(x)
        step = mom * v[k] + lr * (x - wd * t[k])
        nv[k] = step
        y = t[k] + step
        nt[k] = y
        t_ok &= np.isfinite(y)
    return g_ok, t_ok


sgd_momentum_step = _jit(sgd_momentum_step)


# ============================================================================================
# helpers for the Python wrappers
# ============================================================================================

_POOLS = {}
_POOLS_LOCK = threading.Lock()
CHUNKS_PER_THREAD = 4  # more ranges than threads, so uneven images (mean field) balance out


def num_threads():
    """Threads the batch kernels use: ``numba.get_num_threads()`` (``numba.set_num_threads`` sets it)."""
    return numba.get_num_threads() if NUMBA_AVAILABLE else 1


def _pool(n_threads):
    """A thread pool of ``n_threads`` workers, one per process (a forked child makes its own)."""
    key = (os.getpid(), n_threads)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(n_threads, thread_name_prefix="capsnp-kernel")
        return pool


def run_chunks(kernel, n, *args, min_items=2):
    """Run ``kernel(start, stop, *args)`` over contiguous ranges that cover ``range(n)``.

    With one thread, or fewer than ``2 * min_items`` items, the kernel runs once on the whole
    range in the calling thread. Otherwise the range is cut into up to
    ``CHUNKS_PER_THREAD * num_threads()`` pieces of at least ``min_items`` items, which the
    calling thread and ``num_threads() - 1`` pool threads take one at a time until none is left.
    Kernels write disjoint parts of their outputs, so the result does not depend on the split
    or on which thread runs which piece.

    The caller works too and does not wait for a helper that has not started (its task is
    cancelled): on a machine whose other cores are busy, a helper that the operating system
    does not schedule in time costs nothing, where a fixed split (or BLAS's spinning threads)
    would wait for it.
    """
    threads = num_threads()
    if threads <= 1 or n < 2 * min_items:
        kernel(0, n, *args)
        return
    chunks = min(CHUNKS_PER_THREAD * threads, n // min_items)
    bounds = [n * c // chunks for c in range(chunks + 1)]
    claims = itertools.count()  # next() on it is atomic under the GIL

    def work():
        while True:
            c = next(claims)
            if c >= chunks:
                return
            kernel(bounds[c], bounds[c + 1], *args)

    helpers = [_pool(threads - 1).submit(work) for _ in range(threads - 1)]
    try:
        work()
    finally:
        for f in helpers:
            if not f.cancel():
                f.result()


@functools.lru_cache(maxsize=None)
def _blas_controller(pid):
    """threadpoolctl's view of the BLAS libraries loaded in process ``pid`` (scanned once)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def single_threaded_blas():
    """While the batch kernels run on more than one thread, BLAS calls run on one.

    The kernels (:func:`run_chunks`) and OpenBLAS each keep a pool of threads; OpenBLAS's
    threads spin for a while after every call, so on a machine with as many cores as kernel
    threads they take cores from the kernels that follow. Inside this context BLAS uses one
    thread per call (a product that should run on several cores goes through
    :func:`run_chunks` instead), and its setting is restored on exit. With one kernel thread
    nothing changes.
    """
    global _blas_single_depth
    if num_threads() <= 1:
        yield
        return
    with _blas_controller(os.getpid()).limit(limits=1, user_api="blas"):
        _blas_single_depth += 1
        try:
            yield
        finally:
            _blas_single_depth -= 1


_blas_single_depth = 0  # how many single_threaded_blas contexts are open


def blas_is_single_threaded():
    """True inside :func:`single_threaded_blas` with several kernel threads: BLAS products may
    then run side by side on the kernel threads (:func:`run_chunks`) without oversubscribing."""
    return _blas_single_depth > 0


_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def kernel_dtype(*arrays):
    """The dtype the kernels should run in, or None when the NumPy reference must be used.

    That is the promoted floating dtype of the inputs (float64 when none is floating), if Numba
    is available and the dtype is float32 or float64.
    """
    if not NUMBA_AVAILABLE:
        return None
    dt = np.result_type(*[np.asarray(x).dtype for x in arrays])
    if not np.issubdtype(dt, np.floating):
        dt = np.dtype(np.float64)
    return dt if dt in _KERNEL_DTYPES else None


def as_c(x, dtype):
    """``x`` as a C-contiguous array of ``dtype`` (no copy when it already is one)."""
    return np.ascontiguousarray(x, dtype=dtype)


def check_n_iter(n_iter):
    """Routing passes as an int >= 1 (the reference raises the same error)."""
    if int(n_iter) < 1:
        raise ValueError(f"n_iter must be at least 1, got {n_iter}")
    return int(n_iter)


def batch_predictions(W, v):
    """(2.0) predictions (B, I, J, d_h) of C-contiguous W (I, J, d_h, d_v), v (B, I, d_v)."""
    u = np.empty((v.shape[0],) + W.shape[:3], dtype=W.dtype)
    run_chunks(predictions, W.shape[0], W, v, u)
    return u
