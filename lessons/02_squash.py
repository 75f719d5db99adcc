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
# # Lesson 2: the squash, its length, and its Jacobian
#
# **Goal.** Derive the capsule nonlinearity (the *squash*) and the three facts about it that the
# rest of the course leans on:
#
# * (1.1) the formula, written so that it is exact at $s = 0$;
# * (1.2) its length is a logistic function of $\log |s|^2$: the bridge from capsules to the
#   binary units of Boltzmann machines;
# * (1.3) its Jacobian, derived by hand with a *safe unit vector*, and why a naive automatic
#   differentiation returns NaN at $s = 0$ (which happens whenever every prediction a parent
#   receives is zero, e.g. for a blank image).
#
# We check the hand-derived backward pass `capsnp.ops.squash_vjp` against central finite
# differences.

# %%
import os
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np

if "ipykernel" not in sys.modules and sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    matplotlib.use("Agg")  # no screen (e.g. CI): draw off-screen, plt.show() does nothing
import matplotlib.pyplot as plt

try:
    import capsnp
except ImportError:  # not installed: use the repository this lesson lives in (lessons/..)
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    sys.path.insert(0, str(here.parent))
    import capsnp

from capsnp.ops import sigmoid, squash, squash_vjp

FAST = os.environ.get("CAPSNP_FAST", "") not in ("", "0")  # CI sets CAPSNP_FAST=1
t_start = time.perf_counter()

# %% [markdown]
# ## 1. What a squash must do (1.1)
#
# In a capsule network the *length* of a capsule's output vector is read as the probability
# that the entity it represents is present, and its *direction* as the entity's pose. So the
# nonlinearity applied to a parent's input $s \in \mathbb{R}^{d}$ should
#
# 1. keep the direction: output $= f(|s|)\, \hat s$ with the unit vector $\hat s = s/|s|$;
# 2. map the length into $[0, 1)$, monotonically, with $0 \mapsto 0$ and $\infty \mapsto 1$.
#
# Sabour, Frosst & Hinton (2017) chose the length $|s|^2 / (1 + |s|^2)$:
#
# $$ \mathrm{squash}(s) = \frac{|s|^2}{1 + |s|^2}\,\frac{s}{|s|}
#    = \frac{|s|}{1 + |s|^2}\, s . \tag{1.1} $$
#
# The second form matters in code. The first divides by $|s|$ and is $0/0$ at $s = 0$, which is
# why public implementations add an $\varepsilon$ to the denominator. The second has no division
# by $|s|$ at all: at $s = 0$ it evaluates to exactly $0$, with no $\varepsilon$ needed.
#
# Our naive version is the second form, written directly:

# %%
def naive_squash(s):
    """(1.1) for s of shape (..., d): s |s| / (1 + |s|^2)."""
    n = np.sqrt(np.sum(s * s, axis=-1, keepdims=True))  # (..., 1)
    return s * n / (1.0 + n * n)  # (..., d)


rng = np.random.default_rng(0)
s = rng.normal(size=(1000, 8)) * np.exp(rng.normal(size=(1000, 1)) * 2)  # (1000, 8), lengths 1e-3 .. 1e3
s[:10] = 0.0  # include exact zeros

assert np.array_equal(naive_squash(s[:10]), np.zeros((10, 8)))  # exact at s = 0
np.testing.assert_allclose(squash(s), naive_squash(s), rtol=1e-13, atol=1e-300)
print("naive squash equals capsnp.ops.squash, and both are exactly 0 at s = 0: OK")

# %% [markdown]
# ## 2. The length is a logistic unit (1.2)
#
# Write $n = |s|$. The length of the output is
#
# $$ |\mathrm{squash}(s)| = \frac{n^2}{1 + n^2} = \frac{1}{1 + n^{-2}}
#    = \frac{1}{1 + e^{-\log n^2}} = \sigma\!\left(\log |s|^2\right). \tag{1.2} $$
#
# So the length of a squashed capsule is a logistic sigmoid, exactly the firing probability of a
# binary unit in a Boltzmann machine, whose *input* (logit) is $\log |s|^2$. This identity is
# what lets lesson 5 build an energy function that is "consistent with routing": a hidden
# capsule that fires with probability $\sigma(\log|s_j|^2)$.
#
# Two consequences are worth noticing now:
# * a gain $\lambda$ in front of $s$ is a *bias* in the logit: $\log|\lambda s|^2 = \log|s|^2 + 2\log\lambda$;
# * the logit is $-\infty$ at $s = 0$: a capsule with zero input never fires.

# %%
n = np.linalg.norm(s, axis=-1)  # (1000,)
length = np.linalg.norm(squash(s), axis=-1)  # (1000,)
with np.errstate(divide="ignore"):
    logit = np.log(n ** 2)  # -inf where s = 0
np.testing.assert_allclose(length, sigmoid(logit), rtol=1e-12, atol=0)
assert np.all(length < 1.0)
print(f"|squash(s)| = sigmoid(log |s|^2) for all {len(s)} vectors (max rel. error "
      f"{np.max(np.abs(length - sigmoid(logit)) / np.maximum(length, 1e-300)):.1e}); "
      f"largest length {length.max():.6f} < 1")

# %% [markdown]
# A picture of (1.2): the length as a function of $|s|$ on a logarithmic axis is exactly the
# logistic curve, centred at $|s| = 1$ (where the length is $1/2$). On a linear axis the length
# starts *quadratically* ($\approx |s|^2$ for small $|s|$): small inputs are squashed towards zero.

# %%
grid = np.logspace(-2, 2, 400)  # |s|
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
axes[0].plot(grid, grid ** 2 / (1 + grid ** 2), lw=2, label=r"$|s|^2 / (1 + |s|^2)$")
axes[0].plot(grid[::25], sigmoid(np.log(grid[::25] ** 2)), "o", ms=5, label=r"$\sigma(\log |s|^2)$")
axes[0].set_xscale("log")
axes[0].set_xlabel(r"$|s|$ (log scale)")
axes[0].set_ylabel(r"$|\mathrm{squash}(s)|$")
axes[0].legend()
axes[0].set_title("length is a sigmoid of log |s|^2")
lin = np.linspace(0, 5, 300)
axes[1].plot(lin, lin ** 2 / (1 + lin ** 2), lw=2, label="squash length")
axes[1].plot(lin, np.minimum(lin ** 2, 1.2), "--", label=r"$|s|^2$ (small-$|s|$ behaviour)")
axes[1].axhline(1, color="gray", lw=0.8)
axes[1].set_ylim(0, 1.2)
axes[1].set_xlabel(r"$|s|$")
axes[1].legend()
axes[1].set_title("linear axis: quadratic start, saturates at 1")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. The Jacobian, by hand (1.3)
#
# Write the squash as a scalar function of the length times the vector:
#
# $$ \mathrm{squash}(s) = f(n)\, s, \qquad f(n) = \frac{n}{1 + n^2}, \qquad n = |s| . $$
#
# The derivative of $n$ is the unit vector, $\partial n / \partial s = s / n = \hat s$ (for
# $s \neq 0$). The product rule gives
#
# $$ J = \frac{\partial\, \mathrm{squash}(s)}{\partial s} = f(n)\, \mathbb{1} + s\, f'(n)\, \hat s^{\top}
#      = f(n)\, \mathbb{1} + n f'(n)\, \hat s \hat s^{\top}, \qquad
#    f'(n) = \frac{(1 + n^2) - 2n^2}{(1 + n^2)^2} = \frac{1 - n^2}{(1 + n^2)^2} . $$
#
# $J$ is symmetric, so the vector-Jacobian product that back-propagation needs
# ($\bar s = J^\top \bar v$ for an incoming gradient $\bar v = \partial L/\partial\,\mathrm{squash}(s)$) is
#
# $$ \bar s = f(n)\, \bar v + n f'(n)\, (\bar v \cdot \hat s)\, \hat s, \qquad
#    n f'(n) = \frac{n (1 - n^2)}{(1 + n^2)^2}, \qquad
#    \hat s = \begin{cases} s / n & n > 0 \\ 0 & n = 0 \end{cases} \tag{1.3} $$
#
# **What happens at $s = 0$?** Both coefficients vanish: $f(0) = 0$ and $n f'(n) \to 0$. So the
# Jacobian at the origin is the zero matrix, and defining the *safe unit vector* $\hat s = 0$
# there gives exactly that. Directly from the definition: $|\mathrm{squash}(s)| \le |s|^2$, so
# $\mathrm{squash}(s) = o(|s|)$ and the derivative at $0$ is $0$. (The squash is once, not twice,
# differentiable at the origin: along a line, $\mathrm{squash}(t e) \approx t|t| e$, and $t|t|$
# has derivative $2|t|$, which has a kink at $0$.)
#
# Geometrically, $J$ has two eigenvalues: $f(n)$ in the $d - 1$ directions orthogonal to $s$
# (rotating the capsule) and $f(n) + n f'(n) = 2n / (1 + n^2)^2$ along $s$ (changing its length).
#
# Here is (1.3) as a naive function, first as an explicit $d \times d$ matrix per vector.

# %%
def naive_squash_jacobian(s):
    """(1.3) as explicit matrices: s (N, d) -> J (N, d, d)."""
    n = np.linalg.norm(s, axis=-1)  # (N,)
    s_hat = np.where(n[:, None] > 0, s / np.where(n > 0, n, 1.0)[:, None], 0.0)  # (N, d), safe
    f = n / (1 + n ** 2)  # (N,)
    nfp = n * (1 - n ** 2) / (1 + n ** 2) ** 2  # (N,)
    d = s.shape[-1]
    return f[:, None, None] * np.eye(d) + nfp[:, None, None] * np.einsum("nk,nl->nkl", s_hat, s_hat)  # (N, d, d)


def central_jacobian(fun, s, eps=1e-6):
    """Central differences: column l of J is (fun(s + eps e_l) - fun(s - eps e_l)) / (2 eps)."""
    N, d = s.shape
    J = np.zeros((N, d, d))
    for l in range(d):
        e = np.zeros(d)
        e[l] = eps
        J[:, :, l] = (fun(s + e) - fun(s - e)) / (2 * eps)
    return J


def rel_error(a, b):
    """max |a - b| / max |b|: the relative error of every gradient check in this course."""
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


s_test = rng.normal(size=(200, 5)) * np.exp(rng.normal(size=(200, 1)))  # (200, 5), lengths ~0.1 .. 10
J_hand = naive_squash_jacobian(s_test)
J_num = central_jacobian(squash, s_test)
err_J = rel_error(J_hand, J_num)
print(f"hand Jacobian (1.3) vs central differences: relative error {err_J:.1e}")
assert err_J < 1e-7

# eigenvalues: f (d - 1 times, tangential) and 2n / (1 + n^2)^2 (radial)
n_t = np.linalg.norm(s_test, axis=-1)
eig = np.linalg.eigvalsh(J_hand)  # (200, 5), ascending
expected = np.sort(np.stack([n_t / (1 + n_t ** 2)] * 4 + [2 * n_t / (1 + n_t ** 2) ** 2], axis=1), axis=1)
np.testing.assert_allclose(eig, expected, atol=1e-12)
print("eigenvalues of J: f(n) tangentially (d - 1 times), 2n/(1+n^2)^2 radially: OK")

# %% [markdown]
# Back-propagation never forms the matrix: it needs only $\bar v \mapsto J^\top \bar v$. The
# package function `squash_vjp(s, g)` implements the last line of (1.3); it must agree with the
# matrix product $J^\top g$, and with central differences of the scalar $L(s) = g \cdot
# \mathrm{squash}(s)$, whose gradient *is* the VJP. We test at random $s$, at $s = 0$ exactly, at
# tiny and at huge lengths.

# %%
def central_grad(fun, s, eps=1e-6):
    """Central-difference gradient of a scalar-per-row function fun: (N, d) -> (N,)."""
    N, d = s.shape
    G = np.zeros((N, d))
    for l in range(d):
        e = np.zeros(d)
        e[l] = eps
        G[:, l] = (fun(s + e) - fun(s - e)) / (2 * eps)
    return G


g = rng.normal(size=s_test.shape)  # incoming gradient dL/dsquash(s), (200, 5)
vjp = squash_vjp(s_test, g)  # (200, 5)
np.testing.assert_allclose(vjp, np.einsum("nkl,nk->nl", J_hand, g), rtol=1e-12, atol=1e-14)
err_vjp = rel_error(vjp, central_grad(lambda x: np.sum(g * squash(x), axis=-1), s_test))
print(f"squash_vjp vs central differences (random s): relative error {err_vjp:.1e}")
assert err_vjp < 1e-7

# at s = 0 the Jacobian is exactly zero; central differences see O(eps) (the squash is ~ s|s|)
zero = np.zeros((3, 5))
g0 = rng.normal(size=zero.shape)
assert np.array_equal(squash_vjp(zero, g0), np.zeros_like(zero))
fd0 = central_grad(lambda x: np.sum(g0 * squash(x), axis=-1), zero)
print(f"at s = 0: squash_vjp is exactly 0; central differences give max {np.abs(fd0).max():.1e} (= O(eps))")
assert np.abs(fd0).max() < 1e-5

# tiny and huge lengths: finite, and still correct (relative errors checked per scale)
for scale in (1e-4, 1e4):
    s_sc = rng.normal(size=(50, 5)) * scale
    eps = 1e-6 * scale
    e_sc = rel_error(squash_vjp(s_sc, g[:50]),
                     central_grad(lambda x: np.sum(g[:50] * squash(x), axis=-1), s_sc, eps=eps))
    print(f"|s| ~ {scale:g}: relative error {e_sc:.1e}")
    assert e_sc < 1e-6

# %% [markdown]
# ## 4. Why naive automatic differentiation gives NaN at $s = 0$
#
# An autodiff system does not see the formula (1.3). It sees the sequence of primitive
# operations that computed the forward pass and applies the chain rule to each:
#
# $$ q = \textstyle\sum_l s_l^2, \quad n = \sqrt q, \quad f = n / (1 + q), \quad y = f\, s . $$
#
# Going backwards with $\bar y = g$: $\bar f = g \cdot s$, $\bar n = \bar f / (1 + q)$, and then
# $\bar q$ picks up $\bar n \cdot \frac{1}{2\sqrt q}$. At $s = 0$ this is $0 \cdot \infty$,
# which is NaN in floating point, and the NaN flows into $\bar s = f g + \bar q\, 2 s$. The
# mathematical derivative is perfectly well defined ($0$); only the *route* through $\sqrt q$
# is singular. Below is exactly what a reverse-mode tool would compute.

# %%
def autodiff_style_squash_vjp(s, g):
    """The chain rule applied op by op, as a reverse-mode autodiff tool does: s, g (N, d)."""
    q = np.sum(s * s, axis=-1, keepdims=True)  # (N, 1)
    n = np.sqrt(q)  # (N, 1)
    f = n / (1 + q)  # (N, 1)
    # backward
    f_bar = np.sum(g * s, axis=-1, keepdims=True)  # (N, 1)
    n_bar = f_bar / (1 + q)  # (N, 1)
    q_bar = f_bar * (-n / (1 + q) ** 2) + n_bar * 0.5 / n  # (N, 1): 0 * inf at s = 0
    return f * g + q_bar * 2 * s  # (N, d)


with np.errstate(divide="ignore", invalid="ignore"):
    naive_at_zero = autodiff_style_squash_vjp(zero, g0)
    naive_elsewhere = autodiff_style_squash_vjp(s_test, g)
print("op-by-op chain rule at s = 0 :", naive_at_zero[0])
print("safe-unit-vector VJP at s = 0:", squash_vjp(zero, g0)[0])
assert np.all(np.isnan(naive_at_zero))
np.testing.assert_allclose(naive_elsewhere, vjp, rtol=1e-10)  # correct wherever s != 0

# %% [markdown]
# The op-by-op version is right wherever $s \neq 0$ and NaN exactly at $s = 0$. In the models of
# this course $s_j = 0$ is not a corner case: $s_j$ is a linear function of $v$, so the blank
# image $v = 0$ gives $s_j = 0$ for every parent, and samplers visit that state and exact
# enumerations (lessons 5 to 7) include it; with locally connected parents, any parent that
# sees only blank patches (two thirds of the 4x4 patches of an MNIST digit, lesson 1) gets
# $s_j = 0$ too. One NaN in a gradient destroys the whole parameter update. Adding an $\varepsilon$ inside the
# square root hides the problem but changes the function; the safe unit vector computes the
# exact derivative.

# %% [markdown]
# ## Summary
#
# * (1.1) $\mathrm{squash}(s) = s\,|s| / (1 + |s|^2)$: keeps the direction, maps the length into
#   $[0, 1)$, exact at $s = 0$ with no $\varepsilon$.
# * (1.2) $|\mathrm{squash}(s)| = \sigma(\log |s|^2)$: the length is a logistic unit with logit
#   $\log|s|^2$; a gain on $s$ is a bias on that logit.
# * (1.3) $J = f\,\mathbb{1} + n f'(n)\,\hat s \hat s^\top$ with $f = n/(1+n^2)$; the VJP is
#   $f \bar v + n f'(n) (\bar v\cdot\hat s)\hat s$ with the safe unit vector ($\hat s = 0$ at
#   $s = 0$, where $J = 0$). It matched central differences to a relative error below
#   $10^{-9}$ at every scale tried; op-by-op autodiff gives NaN at $s = 0$.
#
# ## Exercises
#
# 1. (\*) Show that $|\mathrm{squash}(\lambda s)| = \sigma(\log|s|^2 + 2\log\lambda)$ and check it
#    numerically. Which parameter of Model P (lesson 5) plays the role of $2\log\lambda$?
# 2. (\*\*) Find the length $|s|$ at which the radial eigenvalue $2n/(1+n^2)^2$ of the Jacobian
#    is largest, and its value. What does this say about gradients reaching capsules with very
#    short or very long inputs?
# 3. (\*\*\*) For $|s| = 10^{200}$, `naive_squash` returns NaN (overflow in $n^2$), while
#    `capsnp.ops.squash` stays exact. Rewrite $f(n) = n / (1 + n^2)$ so that no intermediate
#    overflows, and write the matching overflow-free form of $n f'(n)$. Check both against
#    the package at $|s| \in \{10^{-200}, 1, 10^{200}\}$.
#
# Solutions are in `solutions.md`.

# %%
print(f"lesson 2 ran in {time.perf_counter() - t_start:.1f} s")
