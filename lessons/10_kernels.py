# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 10: fast kernels
#
# **Goal.** See how the equations of lessons 2-7 become compiled loops without changing a bit
# of the mathematics. We count why the NumPy reference is slow for routing (it makes many full
# passes over arrays of shape $(B, I, J, d_h)$ and does little arithmetic per byte), write a
# small Numba kernel for the routing of one image with explicit loops and check it against
# both `capsnp.routing.dynamic_routing` and the package's compiled twin, and measure what
# compiling costs (first-call JIT, `cache=True`, float32 against float64). Then the two
# properties the package's kernels keep: samplers reproduce the reference's samples exactly
# from the same seed, and results are bit-identical for any number of threads. We end with
# measured speed-ups, honestly labelled with the machine they came from.
#
# Labels (the docstrings of `capsnp.routing`, `capsnp.model_p`, `capsnp.model_r`): (1.1) squash,
# (2.0) predictions, (2.1) one routing pass, (2.2) its VJP, (3.6) Model P's full free-energy
# gradient, (4.6) Model R's mean-field routing, (4.7) its 3-block Gibbs sweep.

# %%
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import matplotlib
import numba
import numpy as np

if "ipykernel" not in sys.modules and sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    matplotlib.use("Agg")  # no screen (e.g. CI): draw off-screen, plt.show() does nothing
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # lessons/
try:
    import capsnp
except ImportError:  # not installed: use the repository this lesson lives in (lessons/..)
    sys.path.insert(0, str(HERE.parent))
    import capsnp

from capsnp import datasets, kernels, model_p, model_r, routing
from capsnp.capsules import predictions, to_capsules
from capsnp.params import PParams, RParams

FAST = os.environ.get("CAPSNP_FAST", "") not in ("", "0")  # CI sets CAPSNP_FAST=1
t_start = time.perf_counter()
assert kernels.available(), "this lesson needs Numba (pip install numba)"
print(f"numba {numba.__version__}, numpy {np.__version__}, {os.cpu_count()} CPU cores, "
      f"numba threads: {numba.get_num_threads()}")

# %% [markdown]
# ## 1. Why the NumPy reference is slow for routing
#
# Recall one routing pass (2.1) and the lines of its reverse (2.2) that touch $\hat u$, from lesson 3:
#
# $$
# c^t_{ij} = \mathrm{softmax}_j(b^t_{ij}), \quad s^t_j = \sum_i c^t_{ij}\hat u_{j\mid i}, \quad
# v^t_j = \mathrm{squash}(s^t_j), \quad b^{t+1}_{ij} = b^t_{ij} + \hat u_{j\mid i}\cdot v^t_j
# \tag{2.1}
# $$
#
# $$
# \bar v^t_j = [t = r-1]\, g_v + \textstyle\sum_i \bar b^{t+1}_{ij} \hat u_{j\mid i}, \quad
# \bar c^t_{ij} = [t = r-1]\, g_c + \hat u_{j\mid i}\cdot\bar s^t_j, \quad
# \bar{\hat u}_{j\mid i} \mathrel{+}= c^t_{ij}\,\bar s^t_j + \bar b^{t+1}_{ij}\, v^t_j .
# \tag{2.2}
# $$
#
# The reference (`capsnp.routing`) writes every line as one NumPy expression over the whole
# batch. That is the clearest way to state the algorithm, but each expression is a separate
# trip through memory: it reads its operands from RAM and writes its result back before the
# next expression starts. Only the predictions $\hat u$ and the adjoint $\bar{\hat u}$ are big:
# with $N = B\,I\,J\,d_h$ elements each, they dwarf $c, b$ ($B I J = N/d_h$) and $s, v$
# ($B J d_h = N/I$). Counting only the passes over arrays of $N$ elements (a read or a write of
# all $N$ counts as one pass):
#
# | reference expression (per pass $t$) | passes of $N$ | flops / $N$ |
# |---|---|---|
# | forward: `einsum("bij,bijh->bjh", c, u_hat)` for $s$ | 1 read | 2 |
# | forward: `einsum("bijh,bjh->bij", u_hat, v)` agreement ($t < r-1$) | 1 read | 2 |
# | VJP: `g_u = zeros(...)` (once) | 1 write | 0 |
# | VJP: `g_u += c[..., None] * gs[:, None]`: a temporary, then the update | 1 write + 2 reads + 1 write | 2 |
# | VJP: `einsum("bijh,bjh->bij", u_hat, gs)` for $\bar c$ | 1 read | 2 |
# | VJP ($t < r-1$): `einsum(g_b, u_hat)` for $\bar v$ | 1 read | 2 |
# | VJP ($t < r-1$): `g_u += g_b[..., None] * v[:, None]` | 4 | 2 |
#
# Adding up: the forward pass makes $r + (r-1) = 2r - 1$ passes, the VJP $1 + 5 + 10(r-1)$, so
#
# $$ \text{passes} = (2r - 1) + (10r - 4) = 12r - 5, \qquad
#    \text{flops} \approx (4r - 2 + 8r - 4)\,N = (12r - 6)\,N , $$
#
# about **31 passes** of $N$ for 30 flops per element at $r = 3$: one floating-point operation
# per 8 bytes moved. A compiled kernel can do better by changing *where* the arithmetic
# happens, not *what* it is: route one image at a time. One image's predictions are
# $I J d_h \cdot 8$ bytes (200 KB at the benchmark size below), which fit in a core's cache
# (L2, or at worst the shared L3), so all $r$ passes forward and back read them from cache;
# RAM sees $\hat u$ read once and
# $\bar{\hat u}$ written once: **2 passes** instead of 31.
#
# The benchmark size used throughout: a batch of $B = 100$ MNIST digits (the estimators'
# batch size), 4x4 patches ($I = 49$, $d_v = 16$), $J = 32$ parent capsules of $d_h = 16$
# (a larger layer than the estimators' default 16 x 8) and $r = 3$.

# %%
B_FULL, I, d_v, J, d_h, r = 100, 49, 16, 32, 16, 3
N = B_FULL * I * J * d_h  # elements of u_hat (B, I, J, d_h)
MB = N * 8 / 1e6  # one float64 pass, in MB
passes_ref = {"forward": 2 * r - 1, "VJP": 10 * r - 4}
flops_ref = (12 * r - 6) * N
print(f"N = B I J d_h = {N:,} elements = {MB:.1f} MB in float64; one image: {I * J * d_h * 8 / 1e3:.0f} KB")
print(f"reference forward + VJP: {sum(passes_ref.values())} passes = {sum(passes_ref.values()) * MB:.0f} MB "
      f"moved for {flops_ref / 1e6:.0f} Mflop ({flops_ref / (sum(passes_ref.values()) * N * 8):.2f} flop/byte)")
print(f"fused kernel             : 2 passes = {2 * MB:.0f} MB moved for the same flops "
      f"({flops_ref / (2 * N * 8):.1f} flop/byte)")

# %% [markdown]
# Are those bytes what the time goes to? Measure this machine's memory bandwidth with a large
# copy (read and write 48 MB each, more than the last-level cache), the time of one of the
# reference's `einsum` passes on real MNIST predictions, and the whole reference forward + VJP.
# `tracemalloc` (which NumPy reports its allocations to) gives the peak memory the reference
# allocates on top of its input.

# %%
def median_time(f, repeats, warm_up=True):
    """Median wall time of f() over `repeats` calls, after one untimed warm-up call, in seconds."""
    if warm_up:
        f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


REPEATS = 3 if FAST else 5
X, _ = datasets.load_dataset("embedded", "train")
V_all = to_capsules(datasets.binarize(X[:B_FULL], "stochastic", random_state=0), 28, 4)  # (100, 49, 16)
rng = np.random.default_rng(0)
W_demo = rng.normal(0.0, 0.1, size=(I, J, d_h, d_v))  # (I, J, d_h, d_v)
U_all = np.ascontiguousarray(predictions(W_demo, V_all))  # (100, I, J, d_h), C order: the routing input
G_s = rng.normal(size=(B_FULL, J, d_h))  # (100, J, d_h): an adjoint for the final s

src = np.ones(6_000_000)  # 48 MB
dst = np.zeros_like(src)
t_copy = median_time(lambda: np.copyto(dst, src), REPEATS)
bandwidth = 2 * src.nbytes / t_copy  # bytes per second, read + write
c_pass = np.full((B_FULL, I, J), 1.0 / J)  # (100, I, J)
t_einsum = median_time(lambda: np.einsum("bij,bijh->bjh", c_pass, U_all, optimize=True), REPEATS)


def reference_forward_vjp(u_hat, g_s):
    """The NumPy composition: routing with its trace (2.1), then its VJP (2.2)."""
    tr = routing.dynamic_routing_trace(u_hat, r)
    return routing.dynamic_routing_vjp(u_hat, tr, g_s=g_s)


t_ref = median_time(lambda: reference_forward_vjp(U_all, G_s), REPEATS)
tracemalloc.start()
reference_forward_vjp(U_all, G_s)
peak_ref = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
del src, dst

passes_total = sum(passes_ref.values())
print(f"memory bandwidth (48 MB copy): {bandwidth / 1e9:.1f} GB/s")
print(f"one einsum pass over u_hat   : {1e3 * t_einsum:.1f} ms, against {1e3 * N * 8 / bandwidth:.1f} ms "
      f"to read {MB:.0f} MB at that bandwidth ({2 * N / t_einsum / 1e9:.2f} Gflop/s)")
print(f"reference forward + VJP      : {1e3 * t_ref:.0f} ms; its {passes_total} passes at full bandwidth "
      f"would take {1e3 * passes_total * N * 8 / bandwidth:.0f} ms")
print(f"peak memory it allocates     : {peak_ref / 1e6:.0f} MB = {peak_ref / (N * 8):.1f} x the size of u_hat")

# %% [markdown]
# Three things make the reference slow, and the numbers above show each. It makes $12r - 5$
# trips through RAM where 2 would do, so even at full bandwidth it would take tens of
# milliseconds. Each trip is slower than bandwidth allows: a general-purpose `einsum` loop does not know
# at compile time that the innermost axis has 16 elements or that it sums over $i$ for fixed
# $(b, j)$, so one of its passes runs well below both the memory and the arithmetic limits of
# the core. It also needs a few times the size of $\hat u$ in temporaries (the trace and
# the broadcast products). A compiled loop for one image fixes all three: its working set sits
# in cache, its loops are specialised to the types and memory layout it was called with, and it
# allocates nothing of size $N$ except its output.

# %% [markdown]
# ## 2. A routing kernel for one image, in explicit loops
#
# Here is (2.1) for one image $u$ of shape $(I, J, d_h)$ written the way a compiler likes it:
# explicit loops, in memory order (the last index innermost), scalar accumulators, no
# temporaries beyond the outputs and the logits. Every line is one of the four lines of (2.1):
# the softmax runs over **parents** $j$ with the maximum subtracted, $s$ accumulates
# $c_{ij}\hat u_{j\mid i}$, the squash (1.1) is $v = s\,|s| / (1 + |s|^2)$, and the agreement is
# added to the logits except after the last pass.
#
# The function is plain Python; `numba.njit(route_image_py)` compiles it ("nopython" mode:
# every variable gets a machine type, no Python objects inside). As in the package, the kernel
# writes into output arrays that its caller allocates: the batch loop hands it the views
# `c[n]`, `s[n]`, `v[n]` of the batch outputs, so nothing is copied. The constants `zero` and
# `one` are made from the input's dtype so that a float32 call stays in float32 arithmetic (a
# bare `1.0` is a float64 and would promote every expression it touches).

# %%
def route_image_py(u, beta, r, c, s, v):
    """(2.1) for one image with explicit loops.

    u (I, J, d_h) predictions, beta (I, J) prior logits, r passes; writes the last pass's
    c (I, J), s (J, d_h) and v (J, d_h) into the arrays given.
    """
    I, J, d_h = u.shape
    zero, one = u.dtype.type(0), u.dtype.type(1)
    b = np.empty((I, J), dtype=u.dtype)  # logits b^t, the only scratch array
    for i in range(I):
        for j in range(J):
            b[i, j] = beta[i, j]
    for t in range(r):
        for i in range(I):  # c_i = softmax over parents j of b_i
            m = b[i, 0]
            for j in range(1, J):
                m = max(m, b[i, j])
            total = zero
            for j in range(J):
                c[i, j] = np.exp(b[i, j] - m)
                total += c[i, j]
            for j in range(J):
                c[i, j] /= total
        for j in range(J):  # s_j = sum_i c_ij u_ij
            for k in range(d_h):
                s[j, k] = zero
        for i in range(I):
            for j in range(J):
                for k in range(d_h):
                    s[j, k] += c[i, j] * u[i, j, k]
        for j in range(J):  # v_j = squash(s_j) (1.1)
            n2 = zero
            for k in range(d_h):
                n2 += s[j, k] * s[j, k]
            f = np.sqrt(n2) / (one + n2)
            for k in range(d_h):
                v[j, k] = f * s[j, k]
        if t < r - 1:  # b_ij += u_ij . v_j, skipped after the last pass
            for i in range(I):
                for j in range(J):
                    a = zero
                    for k in range(d_h):
                        a += u[i, j, k] * v[j, k]
                    b[i, j] += a


route_image = numba.njit(route_image_py)


@numba.njit
def route_batch(u_hat, beta, r):
    """(2.1) image by image: u_hat (B, I, J, d_h), beta (I, J) -> c (B, I, J), s, v (B, J, d_h)."""
    B, I, J, d_h = u_hat.shape
    c = np.empty((B, I, J), dtype=u_hat.dtype)
    s = np.empty((B, J, d_h), dtype=u_hat.dtype)
    v = np.empty((B, J, d_h), dtype=u_hat.dtype)
    for n in range(B):
        route_image(u_hat[n], beta, r, c[n], s[n], v[n])  # a compiled call, no Python in between
    return c, s, v


def outputs_of_one(u):
    """Empty c (I, J), s (J, d_h), v (J, d_h) for one image u (I, J, d_h)."""
    I, J, d_h = u.shape
    return np.empty((I, J), u.dtype), np.empty((J, d_h), u.dtype), np.empty((J, d_h), u.dtype)


# %% [markdown]
# The first call with float64 arrays triggers compilation (type inference, then LLVM turns the
# loops into machine code); later calls with the same argument types jump straight to it.

# %%
u_small = rng.normal(size=(8, 6, 5, 4))  # (B, I, J, d_h), small and random
beta_small = rng.normal(size=(6, 5))  # (I, J)
t0 = time.perf_counter()
route_batch(u_small, beta_small, 3)
t_jit64 = time.perf_counter() - t0
t_second = median_time(lambda: route_batch(u_small, beta_small, 3), 5)
print(f"first call (compiles route_batch and route_image for float64): {t_jit64:.2f} s "
      "(with Numba's one-time setup in this process)")
print(f"later calls on the same types                                : {1e6 * t_second:.0f} us")

for rr in (1, 2, 3, 5):
    for beta_ in (None, beta_small):
        c_ref, s_ref, v_ref = routing.dynamic_routing(u_small, rr, beta_)
        c_nb, s_nb, v_nb = route_batch(u_small, np.zeros((6, 5)) if beta_ is None else beta_, rr)
        np.testing.assert_allclose(c_nb, c_ref, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(s_nb, s_ref, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(v_nb, v_ref, rtol=1e-12, atol=1e-15)
print("notebook kernel equals capsnp.routing.dynamic_routing (r = 1, 2, 3, 5; with and without beta): OK")

zero_beta = np.zeros((I, J))
out_nb = route_batch(U_all, zero_beta, r)  # MNIST predictions, benchmark size
out_ref = routing.dynamic_routing(U_all, r)
out_pkg = kernels.routing.dynamic_routing(U_all, r)  # the package's compiled twin
for a, b_, c_ in zip(out_nb, out_ref, out_pkg):
    np.testing.assert_allclose(a, b_, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a, c_, rtol=1e-12, atol=1e-15)
diff = max(float(np.max(np.abs(a - b_))) for a, b_ in zip(out_nb, out_ref))
print(f"on {B_FULL} MNIST digits: notebook kernel = reference = capsnp.kernels.routing.dynamic_routing "
      f"to 1e-12 (largest difference {diff:.1e})")

# %% [markdown]
# The agreement is to rounding, not bit for bit: the kernel sums over $i$ in its own order,
# `einsum` in another, and floating-point addition is not associative. Differences of
# $10^{-16}$ relative are the signature of "same math, different order". A difference of
# $10^{-6}$ would mean a different formula.

# %% [markdown]
# ## 3. What compiling costs, and how to test compiled code
#
# **First-call JIT.** Compilation happens once per process and per combination of argument
# types. It is not free: the cell above measured it for a 40-line kernel; the package's
# kernels (about 1,000 lines for routing, Model P, Model R and the RBM, each compiled for
# float32 and float64) take on the order of a minute on a 2-core machine.
#
# **`cache=True`.** `numba.njit(fn, cache=True)` writes the machine code next to the source
# file (in `__pycache__`: an index `.nbi` and one `.nbc` per compiled signature), keyed by
# the source file's path and modification time and the argument types. A new process then
# loads the code instead of compiling it. Every kernel of `capsnp/_kernels_jit.py` is compiled
# this way, which is why only the very first `import` on a machine is slow. (The cache is
# invalidated by the modification time of the file that *defines* a function, not of the files
# of functions it calls: that is why the package keeps all its compiled code in one file.)
#
# We can watch it happen. Write our kernel to a module in a temporary directory with
# `cache=True`, and run a fresh Python process twice: the first compiles and writes the cache,
# the second loads it. Even the second pays about a second on its first call: that is Numba
# setting up its code generator in a new process, paid once however many cached functions are
# loaded afterwards (each further one takes milliseconds).

# %%
module_source = ("import numpy as np\nimport numba\n\n\n" + inspect.getsource(route_image_py)
                 + "\n\nroute_image = numba.njit(route_image_py, cache=True)\n")
probe = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np, numba
sys.path.insert(0, sys.argv[1])
import routing_kernel
u, beta = np.random.default_rng(0).normal(size=(49, 32, 16)), np.zeros((49, 32))
c, s, v = np.empty((49, 32)), np.empty((32, 16)), np.empty((32, 16))
t1 = time.perf_counter()
routing_kernel.route_image(u, beta, 3, c, s, v)
t2 = time.perf_counter()
routing_kernel.route_image(u, beta, 3, c, s, v)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "first": t2 - t1, "second": t3 - t2}))
"""
with tempfile.TemporaryDirectory() as tmp:
    Path(tmp, "routing_kernel.py").write_text(module_source)
    runs = [json.loads(subprocess.run([sys.executable, "-c", probe, tmp], capture_output=True, text=True,
                                      check=True).stdout) for _ in range(2)]
    cache_files = sorted(p.name for p in Path(tmp, "__pycache__").glob("*.nb*"))
for name, run in zip(("compiles, writes cache", "loads the cache"), runs):
    print(f"fresh process, {name:22s}: import numpy+numba {run['import']:.2f} s, "
          f"first call {1e3 * run['first']:7.1f} ms, second call {1e3 * run['second']:.2f} ms")
print("cache files:", ", ".join(cache_files))
assert runs[1]["first"] < runs[0]["first"]

# %% [markdown]
# **`.py_func`.** A compiled function keeps the Python function it was made from as
# `.py_func`. It runs the same loops in the interpreter: slowly, but with `print`, a debugger,
# exceptions with line numbers and coverage measurement. The package's tests call
# `.py_func` of its kernels against the NumPy reference (`tests/test_kernels.py`), so that a
# bug in the compiled path and a bug in the loops can be told apart. On one MNIST image:

# %%
u_one = U_all[0]  # (I, J, d_h)
c_py, s_py, v_py = outputs_of_one(u_one)
t0 = time.perf_counter()
route_image.py_func(u_one, zero_beta, r, c_py, s_py, v_py)  # the same loops, interpreted
t_py = time.perf_counter() - t0
c_jit, s_jit, v_jit = outputs_of_one(u_one)
route_image(u_one, zero_beta, r, c_jit, s_jit, v_jit)
for a, b_ in ((c_py, c_jit), (s_py, s_jit), (v_py, v_jit)):
    np.testing.assert_allclose(a, b_, rtol=1e-12, atol=1e-15)
np.testing.assert_allclose(s_py, out_ref[1][0], rtol=1e-12, atol=1e-15)
t_jit = median_time(lambda: route_image(u_one, zero_beta, r, c_jit, s_jit, v_jit), 20)
bit_equal = all(np.array_equal(a, b_) for a, b_ in ((c_py, c_jit), (s_py, s_jit), (v_py, v_jit)))
print(f"route_image.py_func = route_image = reference: OK (py_func and compiled bit-identical: {bit_equal})")
print(f"one image: interpreted {1e3 * t_py:.0f} ms, compiled {1e3 * t_jit:.2f} ms ({t_py / t_jit:.0f}x)")

# %% [markdown]
# **float32 against float64.** Each dtype is a separate compilation (`route_image.signatures`
# lists them). float32 halves the bytes moved and doubles the numbers per SIMD register; the
# price is precision: about 7 significant digits instead of 16. That is plenty for training
# (the estimators take `dtype=np.float32`), but not for checking: comparisons with the
# reference and every gradient check are done in float64 (a central difference in float32
# divides a rounding error of $10^{-7}$ by $\varepsilon$). Whether float32 is faster depends
# on what limits the loop: our kernel works on data already in cache, so halving the bytes
# buys it little; where memory traffic dominates, it can buy up to a factor of 2.

# %%
U32 = U_all.astype(np.float32)
t0 = time.perf_counter()
out32 = route_batch(U32, zero_beta.astype(np.float32), r)
t_jit32 = time.perf_counter() - t0
assert out32[1].dtype == np.float32
compiled_for = [f"{sig[0].dtype} ({sig[0].layout} order)" for sig in route_image.signatures]
print("route_image is compiled for:", ", ".join(compiled_for))
rel32 = float(np.max(np.abs(out32[1] - out_ref[1])) / np.max(np.abs(out_ref[1])))
pkg32 = kernels.routing.dynamic_routing(U32, r)[1]
rel32_pkg = float(np.max(np.abs(pkg32 - out_ref[1])) / np.max(np.abs(out_ref[1])))
assert rel32 < 1e-5 and rel32_pkg < 1e-5
t64 = median_time(lambda: route_batch(U_all, zero_beta, r), REPEATS)
t32 = median_time(lambda: route_batch(U32, zero_beta.astype(np.float32), r), REPEATS)
print(f"float32 compilation: {t_jit32:.2f} s; error of s against float64: notebook kernel {rel32:.1e}, "
      f"package {rel32_pkg:.1e} (relative to max |s|)")
print(f"routing of {B_FULL} images: float64 {1e3 * t64:.1f} ms, float32 {1e3 * t32:.1f} ms")

# %% [markdown]
# The package's kernels also pass `nogil=True` (release Python's global interpreter lock, so
# that several threads can run compiled code at once, section 5) and `error_model="numpy"`
# (a division by zero gives inf or nan as in NumPy, instead of a check and a Python exception
# on every division). A few inner sums, such as the dot-product helper `_dot`, let the compiler
# reorder their additions (`fastmath={"reassoc"}`) so that it can use SIMD partial sums; each
# says so in its docstring, and no other floating-point rule is relaxed.

# %% [markdown]
# ## 4. Samplers that reproduce the reference exactly
#
# A compiled sampler could draw its own random numbers (Numba has its own generator). It would
# be correct in distribution, but its samples would differ from the reference's, so it could
# only be tested statistically, and with threads its stream would depend on which thread
# handled which image. The package does something simpler: the Python wrapper draws the
# uniforms from the `np.random.Generator` **in the reference's order and shapes**, and the
# kernel consumes them. For Model R's 3-block Gibbs sweep (4.7), both draw
#
# 1. `rng.random((B, J, d_h))`: $h_{jk} = [u < \sigma(\gamma_{jk} + \sum_{i: a_i = j}\hat u_{jk\mid i})]$,
# 2. `rng.random((B, I))`: $a_i$ by inverse CDF of $\mathrm{softmax}_j(\beta_{ij} + \hat u_{j\mid i}\cdot h_j)$,
# 3. `rng.random((B, I, d_v))`: $v_{il} = [u < \sigma(\alpha_{il} + (W_{i a_i}^\top h_{a_i})_l)]$,
#
# so a binary unit is the same comparison `u < p` in both. The probabilities agree to
# rounding ($10^{-16}$), so the states agree exactly unless a uniform falls within $10^{-16}$ of
# a probability, an event of probability about $10^{-16}$ per draw. Let us run both chains
# from the same seed for several sweeps, feeding each its own previous state.

# %%
n_chains = 10 if FAST else 50
n_sweeps = 5 if FAST else 20
rp = RParams(W=np.random.default_rng(1).normal(0.0, 0.3, (I, J, d_h, d_v)), alpha=np.zeros((I, d_v)),
             gamma=np.zeros((J, d_h)), beta=np.zeros((I, J)))
rng_ref, rng_nb = np.random.default_rng(42), np.random.default_rng(42)
v_ref = v_nb = V_all[:n_chains]  # (n_chains, I, d_v), chains start at data
a_ref = a_nb = np.random.default_rng(3).integers(0, J, size=(n_chains, I))  # (n_chains, I)
for sweep in range(n_sweeps):
    v_ref, h_ref, a_ref, resp_ref = model_r.gibbs_sweep(rp, v_ref, a_ref, rng_ref)
    v_nb, h_nb, a_nb, resp_nb = kernels.model_r.gibbs_sweep(rp, v_nb, a_nb, rng_nb)
    assert np.array_equal(v_ref, v_nb) and np.array_equal(h_ref, h_nb) and np.array_equal(a_ref, a_nb)
    np.testing.assert_allclose(resp_nb, resp_ref, rtol=1e-12, atol=1e-300)
assert rng_ref.bit_generator.state == rng_nb.bit_generator.state  # same number of draws consumed
print(f"{n_chains} Model R chains, {n_sweeps} Gibbs sweeps (4.7): kernel and reference states identical "
      f"(v, h, a; resp to 1e-12); both generators end in the same state")
print(f"last sweep: {v_ref.mean():.3f} of the pixels on, {len(np.unique(a_ref))} parents in use")

# %% [markdown]
# The same holds for Model P's exact Metropolis-Hastings sweep (`kernels.model_p.mh_sweep`,
# which draws a proposal block and an acceptance block per capsule, as its reference does) and
# for the RBM's Gibbs sweep. Reproducing the reference bit for bit turns "is the kernel
# correct?" from a statistical question into an equality test.

# %% [markdown]
# ## 5. Threads: parallel over images, bit-identical for any thread count
#
# Routing, free energies, gradients and samplers treat the images of a batch independently,
# so the package cuts the batch into contiguous ranges and runs a serial kernel on each range
# in a small pool of Python threads (the kernels release the GIL; `numba.get_num_threads()`
# sets the pool size, `numba.set_num_threads` changes it). Two rules make the results
# independent of the number of threads:
#
# * **each image is owned by one thread**, which does all of that image's work in a fixed order
#   of operations: the thread count changes *which* thread does an image, never *how*;
# * **batch sums are split over the output, not over the batch.** A parameter gradient such as
#   $\partial F/\partial W_{ij} = \frac1B\sum_b \bar{\hat u}_{b,ij} v_{b,i}^\top$ (3.6) is split
#   over the rows $i$ of $W$; each thread sums its rows over $b = 0, \dots, B-1$ in order.
#
# The usual alternative, each thread summing its own images and the partial sums added at the
# end, changes the order of additions with the thread count. Rounding makes that visible:

# %%
per_image = routing.dynamic_routing_vjp(U_all, routing.dynamic_routing_trace(U_all, r), g_s=G_s)[1]  # (B, I, J)
in_order = np.zeros((I, J))
for n in range(B_FULL):
    in_order += per_image[n]  # one thread: b = 0..B-1
halves = [np.zeros((I, J)), np.zeros((I, J))]
for n in range(B_FULL):
    halves[n * 2 // B_FULL] += per_image[n]  # two threads, half the batch each
two_partial = halves[0] + halves[1]
np.testing.assert_allclose(two_partial, in_order, rtol=1e-12, atol=1e-15)
print(f"sum over the batch in order vs as two partial sums: {np.sum(two_partial != in_order)} of {I * J} "
      f"entries differ, by at most {np.max(np.abs(two_partial - in_order)):.1e}")

# %% [markdown]
# Now the package's kernels with 1 and with 2 threads (if this machine allows 2): routing with
# its VJP (2.1, 2.2), Model P's full free-energy gradient (3.6, a batch sum) and Model R's
# mean-field routing (4.6, where images stop after different numbers of updates).

# %%
pp = PParams(W=W_demo, alpha=np.zeros((I, d_v)), rho=np.zeros(J), beta=np.zeros((I, J)))
n_max = numba.config.NUMBA_NUM_THREADS
threads_before = numba.get_num_threads()


def package_outputs():
    """Every array of the three kernels on the benchmark batch, as one flat list."""
    out = list(kernels.routing.routing_forward_vjp(U_all, r, g_s=G_s))
    F, grad = kernels.model_p.free_energy_grad(pp, V_all, r, "full")
    out += [F, *grad]
    out += list(kernels.model_r.mean_field(rp, V_all))
    return out


by_threads = {}
for n_threads in sorted({1, min(2, n_max)}):
    numba.set_num_threads(n_threads)
    by_threads[n_threads] = package_outputs()
numba.set_num_threads(threads_before)
if len(by_threads) == 2:
    assert all(np.array_equal(a, b_) for a, b_ in zip(by_threads[1], by_threads[2]))
    print(f"1 and 2 threads: all {len(by_threads[1])} output arrays bit-identical (np.array_equal)")
else:
    print("this machine allows only one Numba thread: nothing to compare")

# %% [markdown]
# **Oversubscription.** NumPy's matrix products run in BLAS, which has its own thread pool
# (OpenBLAS or MKL, one thread per core by default). Numba's `parallel=True` loops run in a
# second pool, set by `NUMBA_THREADING_LAYER` (`omp` OpenMP, `tbb`, or `workqueue`) and
# `NUMBA_NUM_THREADS`. On 2 cores, a parallel Numba region that calls `np.dot` (or runs while
# BLAS does) puts 2 x 2 busy threads on 2 cores: they take turns, evict each other's cache, and
# OpenMP's idle workers keep spinning for a while after each region (its default wait policy)
# and steal cycles from BLAS. In this project's measurements on a 2-core machine that made a
# contrastive-divergence kernel 3x slower. The remedies: limit BLAS to one thread while Numba threads are busy
# (`threadpoolctl.threadpool_limits(1)`, which the package's tests use), choose the
# non-spinning `NUMBA_THREADING_LAYER=workqueue` or set `OMP_WAIT_POLICY=PASSIVE` (both before
# Numba starts its threads; `import capsnp` sets `NUMBA_THREADING_LAYER=workqueue` unless the
# variable is already set), and never have more busy threads than cores. The package's own
# kernels avoid the issue by design: they use no `parallel=True` region (its compile cost was
# too high, see `capsnp/_kernels_jit.py`), and their compiled loops make no BLAS calls, so the
# two pools are not busy at the same time.

# %%
try:
    from threadpoolctl import threadpool_info

    blas = [f"{p['internal_api']} {p['version']} with {p['num_threads']} threads"
            for p in threadpool_info() if p["user_api"] == "blas"]
except ImportError:  # threadpoolctl comes with scikit-learn; without it, just skip the report
    blas = ["(threadpoolctl not installed)"]
print(f"BLAS: {', '.join(blas) or 'none found'}")
print(f"Numba: {numba.get_num_threads()} threads, NUMBA_THREADING_LAYER = {numba.config.THREADING_LAYER!r} "
      f"(used only by parallel=True code)")

# %% [markdown]
# ## 6. Measured speed-ups
#
# Median wall time of a few runs of each NumPy reference and of its Numba twin with 1 and with
# 2 threads, on real MNIST digits at the benchmark size (a smaller batch under
# `CAPSNP_FAST=1`): routing alone (2.1), with the notebook's kernel too; routing forward + VJP
# (2.1, 2.2); Model P's full free-energy gradient (3.6), which adds the predictions (2.0) and
# the $W$ gradient's batch sum; Model R's mean field (4.6), where the reference updates the
# images still running in lock-step, one batch expression per update, and the kernel finishes
# each image on its own. The outputs are checked equal before anything is timed.
#
# These are measurements on one machine at one moment: the numbers depend on the CPU, its
# caches and memory, the BLAS build, and on what else the machine was doing. The load average
# printed below says how busy it was. Read the ratios as orders of magnitude.

# %%
B_bench = 25 if FAST else B_FULL
U_b, G_b, V_b = U_all[:B_bench], G_s[:B_bench], V_all[:B_bench]
workloads = {
    "routing (2.1)": (lambda: routing.dynamic_routing(U_b, r),
                      lambda: kernels.routing.dynamic_routing(U_b, r)),
    "routing + VJP (2.1, 2.2)": (lambda: reference_forward_vjp(U_b, G_b),
                                 lambda: kernels.routing.routing_forward_vjp(U_b, r, g_s=G_b)[3:]),
    "Model P free_energy_grad (3.6)": (lambda: model_p.free_energy_grad(pp, V_b, r, "full"),
                                       lambda: kernels.model_p.free_energy_grad(pp, V_b, r, "full")),
    "Model R mean_field (4.6)": (lambda: model_r.mean_field(rp, V_b),
                                 lambda: kernels.model_r.mean_field(rp, V_b)),
}


def flat(x):
    """Arrays of a nested tuple of results, in order."""
    return [y for item in x for y in flat(item)] if isinstance(x, (tuple, list)) else [np.asarray(x)]


rows = []
for name, (f_ref, f_nb) in workloads.items():
    for a, b_ in zip(flat(f_nb()), flat(f_ref())):
        np.testing.assert_allclose(a, b_, rtol=1e-9, atol=1e-12)
    t_np = median_time(f_ref, REPEATS, warm_up=False)  # the check above was its warm-up
    t_threads = {}
    for n_threads in sorted({1, min(2, n_max)}):
        numba.set_num_threads(n_threads)
        t_threads[n_threads] = median_time(f_nb, REPEATS)
    numba.set_num_threads(threads_before)
    rows.append((name, t_np, t_threads))
t_notebook = median_time(lambda: route_batch(U_b, zero_beta, r), REPEATS)

n_max2 = min(2, n_max)
print(f"B = {B_bench}, I = {I}, d_v = {d_v}, J = {J}, d_h = {d_h}, r = {r}, float64; median of {REPEATS} runs; "
      f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
print(f"{'workload':32s} {'NumPy':>9s} {'Numba 1 thr':>12s} {'Numba 2 thr':>12s} {'speed-up':>9s}")
for name, t_np, t_threads in rows:
    print(f"{name:32s} {1e3 * t_np:7.1f}ms {1e3 * t_threads[1]:10.2f}ms {1e3 * t_threads[n_max2]:10.2f}ms "
          f"{t_np / t_threads[n_max2]:8.0f}x")
print(f"{'  (this notebook: route_batch)':32s} {'':9s} {1e3 * t_notebook:10.2f}ms {'':12s} "
      f"{rows[0][1] / t_notebook:8.0f}x")

# %% [markdown]
# The left panel is the count of section 1 (bytes the routing forward + VJP moves through RAM
# at $B = 100$, by the reference and by a fused kernel); the right panel is the measured
# speed-up over the NumPy reference (log scale).

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 2]})
ax = axes[0]
ax.bar(["reference\nforward", "reference\nVJP", "fused\nkernel"],
       [passes_ref["forward"] * MB, passes_ref["VJP"] * MB, 2 * MB],
       color=["tab:gray", "tab:gray", "tab:orange"])
ax.set_ylabel("MB moved through memory")
ax.set_title(f"routing forward + VJP, B = {B_FULL} (counted)")
ax = axes[1]
x = np.arange(len(rows))
speed1 = [t_np / t_threads[1] for _, t_np, t_threads in rows]
speed2 = [t_np / t_threads[n_max2] for _, t_np, t_threads in rows]
ax.bar(x - 0.2, speed1, width=0.4, label="Numba, 1 thread", color="tab:blue")
ax.bar(x + 0.2, speed2, width=0.4, label=f"Numba, {n_max2} threads", color="tab:orange")
ax.plot([-0.2], [rows[0][1] / t_notebook], "k*", ms=12, label="this notebook's route_batch (1 thread)")
ax.axhline(1.0, color="k", lw=0.8)
ax.set_yscale("log")
ax.set_ylim(0.8, 10 * max(speed1 + speed2 + [rows[0][1] / t_notebook]))  # room for the legend
ax.set_xticks(x)
ax.set_xticklabels([name.replace(" (", "\n(") for name, _, _ in rows], fontsize=8)
ax.set_ylabel("speed-up over NumPy")
ax.set_title(f"measured, B = {B_bench} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
ax.legend(fontsize=8, ncol=3, loc="upper center")
fig.tight_layout()
plt.show()

# %% [markdown]
# Where the factors come from: for routing, the notebook's plain loops already recover most of
# the gain (they are the fused, cache-resident computation of section 1); the package adds the
# thread pool and a few details (the first pass's coefficients $\mathrm{softmax}(\beta)$ computed
# once for the batch, a SIMD dot product). Model P's gradient adds the predictions (2.0) and
# the $W$ gradient, which the reference computes as general `einsum`s over five indices
# $(B, I, J, d_h, d_v)$ and the kernels as loops over the nonzero pixels only (binary data are
# mostly zeros). How fast those `einsum`s run depends strongly on the batch size and the
# memory layout (compare the table with and without `CAPSNP_FAST=1`): a general loop whose
# order does not suit the layout can fall off a cliff. With 2 threads on a busy 2-core machine
# the second thread often finds no free core: the gain from threads is the least reliable
# number in the table.

# %% [markdown]
# ### The benchmark file
#
# `python -m capsnp bench` (run from the repository root) times the package on your machine,
# more thoroughly than this lesson, and writes every measurement to `bench/results.json`, with
# its printed report under the key `"table"`. If the file exists, here is that report.

# %%
bench_file = HERE.parent / "bench" / "results.json"
if bench_file.exists():
    results = json.loads(bench_file.read_text())
    if results.get("quick"):
        print("(written by a --quick run: small shapes and few repeats)")
    print(results.get("table") or json.dumps(results, indent=1)[:3000])  # the report, else the raw data
else:
    print(f"{bench_file.relative_to(HERE.parent)} does not exist yet: run `python -m capsnp bench` "
          "from the repository root to write it")


# %% [markdown]
# ## Summary
#
# * The NumPy reference states (2.1)-(2.2) one batch-wide expression at a time. Each expression
#   is a trip through RAM over arrays of $N = B I J d_h$ elements: $12r - 5$ of them (31 at
#   $r = 3$) for about one flop per 8 bytes, plus general-purpose `einsum` loops and temporaries
#   several times the size of $\hat u$.
# * A compiled kernel keeps the math and changes the schedule: one image at a time, its
#   predictions in cache through all passes, 2 trips through RAM. Our 40-line `@numba.njit`
#   kernel equals `capsnp.routing.dynamic_routing` and `capsnp.kernels.routing.dynamic_routing`
#   to $10^{-12}$ (to rounding: only the order of additions differs). Model R's mean field (4.6)
#   uses the same schedule: each image's predictions are built in cache from its pixels that
#   are on, then iterated on. Its Gibbs sweep (4.7) never forms them at all: h is drawn from
#   the pixels that are on, and the routing and visible logits read the top-down fields
#   $W_{ij}^\top h_j$, which are one BLAS matrix product per parent (a kernel is not always
#   the fastest schedule: a dense product belongs to BLAS).
# * Compiling costs time on the first call per dtype; `cache=True` stores the machine code on
#   disk so that a new process loads it. `.py_func` runs the same loops in Python for tests and
#   debugging. float32 halves the bytes but keeps 7 digits: check in float64.
# * Samplers reproduce the reference exactly because the wrapper draws the uniforms in the
#   reference's order and shapes and the kernel only consumes them: the Gibbs chains (4.7) of
#   kernel and reference were identical, state by state.
# * Each image belongs to one thread and batch sums are split over outputs, so results are
#   bit-identical for 1 and 2 threads. BLAS and Numba thread pools must not both fill the cores.
# * Measured speed-ups are in the table above. They depend on the batch size, the machine and
#   its load, so rerun them where you work before believing any one number.
#
# ## Exercises
#
# 1. (\*) Redo the count of section 1 for the forward pass alone, for the reference and for a
#    per-image kernel, as a function of $r$. For $r = 1, 3, 10$, how many times more bytes does
#    the reference move? Check the forward count against a timing of `dynamic_routing` at
#    $r = 1$ and $r = 10$: does the time grow like the count?
# 2. (\*\*) Write `route_batch_parallel`, the batch loop of section 2 with
#    `numba.njit(parallel=True)` and `numba.prange` over images. Show that its output is
#    bit-identical to `route_batch` for 1 and 2 threads, and measure its first-call compile
#    time against the serial version's. Then accumulate a batch sum inside the `prange` loop
#    (`total += s.sum()` for each image, a reduction): is *that* bit-identical across thread
#    counts?
# 3. (\*\*\*) Fuse the VJP (2.2) into the notebook kernel: `route_image_vjp(u, beta, r, g_s, g_u,
#    g_beta)` for one image, which keeps the trace of all $r$ passes in small per-image arrays,
#    walks back through them and writes $\bar{\hat u}$ and $\bar\beta$ into `g_u` and `g_beta`
#    ($g_s$ is the adjoint of the final $s$). Check it against
#    `capsnp.kernels.routing.routing_forward_vjp` to $10^{-12}$ and time it against the
#    reference trace + VJP.
#
# Solutions are in `solutions.md`.

# %%
print(f"lesson 10 ran in {time.perf_counter() - t_start:.1f} s")
