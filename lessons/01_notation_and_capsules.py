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
# # Lesson 1: notation, binarised MNIST, and images as capsules
#
# **Goal.** Fix the vocabulary used by every later lesson: the symbol table, the data
# (binarised MNIST), how an image becomes a set of *visible capsules* (patches), and the first
# computation of a capsule network, the *predictions* $\hat u_{j|i} = W_{ij} v_i$.
#
# By the end you will have
# * binarised images with the stochastic protocol of Salakhutdinov & Murray (2008), and checked
#   that `capsnp.datasets.binarize` does exactly that;
# * cut an image into $4 \times 4$ patches by hand, checked it against `capsnp.to_capsules`, and
#   put it back together with `capsnp.from_capsules`;
# * computed the predictions with explicit loops and checked them against `capsnp.predictions`.

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

from capsnp import datasets
from capsnp.capsules import capsule_layout, from_capsules, predictions, to_capsules

FAST = os.environ.get("CAPSNP_FAST", "") not in ("", "0")  # CI sets CAPSNP_FAST=1
t_start = time.perf_counter()

# %% [markdown]
# ## 1. The symbol table (MODEL.md section 0)
#
# A capsule is a small *vector* of units that is treated as one object. The models of this
# course have two layers of capsules: $I$ visible (child) capsules of dimension $d_v$ and $J$
# hidden (parent) capsules of dimension $d_h$. Every array in `capsnp` is named and shaped with
# these symbols:
#
# | symbol | meaning | shape |
# |---|---|---|
# | $B$ | batch size (images, or Markov chains) | |
# | $I,\ d_v$ | number of visible (child) capsules, their dimension | |
# | $J,\ d_h$ | number of hidden (parent) capsules, their dimension | |
# | $v$ | visible state, binary | $(B, I, d_v)$ |
# | $W$ | transformation matrices $W_{ij}$ | $(I, J, d_h, d_v)$ |
# | $\hat u$ | predictions $\hat u_{j\mid i} = W_{ij} v_i$ | $(B, I, J, d_h)$ |
# | $b,\ c$ | routing logits and coupling coefficients | $(B, I, J)$ |
# | $s$ | routed input of a parent, $s_j = \sum_i c_{ij} \hat u_{j\mid i}$ | $(B, J, d_h)$ |
# | $\alpha$ | visible biases | $(I, d_v)$ |
# | $\rho$ | hidden-capsule log-gains (Model P) | $(J,)$ |
# | $\gamma$ | hidden-neuron biases (Model R) | $(J, d_h)$ |
# | $\beta$ | prior routing logits | $(I, J)$ |
#
# Indices follow the symbols: $i$ runs over children, $j$ over parents, $l$ over the units of a
# visible capsule and $k$ over the units of a hidden capsule. Code comments give shapes in the
# same letters, e.g. `# (B, I, J, d_h)`.

# %% [markdown]
# ## 2. Binarised MNIST
#
# The models of this course are distributions over **binary** images. MNIST pixels are grey
# levels $g \in \{0, \dots, 255\}$. The standard protocol for likelihood work (Salakhutdinov &
# Murray, 2008) binarises *stochastically*: each pixel independently becomes
#
# $$ x = 1 \text{ with probability } g / 255, \qquad x = 0 \text{ otherwise}, $$
#
# with a fixed seed, so that everyone evaluates on the same binary images. (Thresholding at
# $g \ge 128$ is the other common choice; it gives cleaner strokes and much higher
# log-likelihoods, so numbers from the two protocols must never be compared.)
#
# `capsnp` ships a small subset of MNIST (the first 10,000 training and 2,000 test images), so
# nothing has to be downloaded.

# %%
X, y = datasets.load_dataset("embedded", "train")  # X: (n, 784) uint8, y: (n,)
print("images:", X.shape, X.dtype, " labels:", y.shape, " grey levels in", X.min(), "..", X.max())

# %% [markdown]
# The binarisation is one line of NumPy: draw one uniform $u$ per pixel and keep the pixel
# where $u < g/255$. Our version must give exactly the same bits as the package's
# `binarize(X, "stochastic", random_state=seed)`, which documents that it makes one call
# `rng.random(X.shape)` on `np.random.default_rng(seed)`.

# %%
seed = 0
n_show = 1000 if FAST else 10000
Xs = X[:n_show]  # (n, 784) uint8

rng = np.random.default_rng(seed)
mine = (rng.random(Xs.shape) < Xs / 255.0).astype(np.float64)  # (n, 784), 0/1

theirs = datasets.binarize(Xs, "stochastic", random_state=seed)  # (n, 784)
assert np.array_equal(mine, theirs)
print("our stochastic binarisation equals capsnp.datasets.binarize: OK")

# %% [markdown]
# Stochastic binarisation is unbiased: averaged over many seeds, a pixel is on with frequency
# $g/255$. With $R$ draws the frequency has standard error $\sqrt{p(1-p)/R} \le 0.5/\sqrt{R}$.

# %%
R = 200
x0 = X[:1]  # (1, 784)
freq = np.mean([datasets.binarize(x0, "stochastic", random_state=r) for r in range(R)], axis=0)  # (1, 784)
err = np.max(np.abs(freq - x0 / 255.0))
print(f"max |frequency - g/255| over 784 pixels with {R} draws: {err:.3f} "
      f"(5 standard errors at most {5 * 0.5 / np.sqrt(R):.3f})")
assert err < 5 * 0.5 / np.sqrt(R)

# %%
fig, axes = plt.subplots(2, 6, figsize=(9, 3.3))
V = theirs  # (n, 784)
for k in range(6):
    axes[0, k].imshow(X[k].reshape(28, 28), cmap="gray_r", vmin=0, vmax=255)
    axes[1, k].imshow(V[k].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
    axes[0, k].set_title(f"label {y[k]}", fontsize=9)
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 0].set_ylabel("grey")
axes[1, 0].set_ylabel("binary")
fig.suptitle("MNIST grey levels and one stochastic binarisation (seed 0)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Images as visible capsules: patching (0.1)
#
# A capsule network needs *vectors* at its input. The simplest choice, used throughout `capsnp`,
# cuts the $28 \times 28$ image into non-overlapping $p \times p$ patches and makes each patch
# one visible capsule:
#
# $$ I = \frac{28}{p} \cdot \frac{28}{p}, \qquad d_v = p^2 . \tag{0.1} $$
#
# With $p = 4$: $I = 49$ capsules of $d_v = 16$ binary units. The ordering convention: capsules
# run row-major over the $7 \times 7$ grid of patches, and pixels run row-major inside a patch.
# So pixel $(r, q)$ of the image (row $r$, column $q$) lands in capsule
# $i = (r \,\mathrm{div}\, p)\cdot(28/p) + (q \,\mathrm{div}\, p)$ at position
# $l = (r \bmod p)\cdot p + (q \bmod p)$.
#
# Here is that rule as a loop, the slowest and clearest way to write it.

# %%
def naive_to_capsules(X, side=28, p=4):
    """(B, side*side) images -> (B, I, d_v) capsules by the index rule of (0.1)."""
    B = X.shape[0]
    g = side // p  # patches per row
    v = np.zeros((B, g * g, p * p), dtype=X.dtype)  # (B, I, d_v)
    for r in range(side):
        for q in range(side):
            i = (r // p) * g + (q // p)  # which capsule
            l = (r % p) * p + (q % p)  # which unit inside it
            v[:, i, l] = X[:, r * side + q]
    return v


v_mine = naive_to_capsules(V[:50])  # (50, 49, 16)
v_pkg = to_capsules(V[:50], 28, 4)  # (50, 49, 16)
assert v_pkg.shape == (50, 49, 16)
assert np.array_equal(v_mine, v_pkg)
assert np.array_equal(from_capsules(v_pkg, 28, 4), V[:50])  # and back again
print("naive patching equals capsnp.to_capsules, and from_capsules inverts it: OK")

# %% [markdown]
# The package does the same with one reshape and one transpose: view the image as
# $(B, 7, p, 7, p)$ (patch row, row inside patch, patch column, column inside patch), swap the
# middle two axes to get $(B, 7, 7, p, p)$, and flatten to $(B, 49, 16)$.
#
# Other patch sizes give other layouts; a patch size that does not tile the image is an error.

# %%
for p in (1, 2, 4, 7, 14, 28):
    I_p, d_v_p = capsule_layout(28, p)
    print(f"p = {p:2d}:  I = {I_p:3d} visible capsules of d_v = {d_v_p:3d} units")
try:
    capsule_layout(28, 5)
except ValueError as exc:
    print("p = 5:", exc)

# %% [markdown]
# A picture of the cut: the binary image with the patch grid drawn on it, and the same image
# "exploded" into its 49 capsules (the capsule index $i$ is written in each patch).

# %%
def exploded(v_one, p=4, g=7, gap=1):
    """One image's capsules (I, d_v) -> a canvas with `gap` NaN pixels between patches."""
    size = g * p + (g - 1) * gap
    canvas = np.full((size, size), np.nan)
    for i in range(g * g):
        r0, q0 = (i // g) * (p + gap), (i % g) * (p + gap)
        canvas[r0:r0 + p, q0:q0 + p] = v_one[i].reshape(p, p)
    return canvas


k = 0
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
axes[0].imshow(V[k].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
for t in range(0, 29, 4):
    axes[0].axhline(t - 0.5, color="tab:red", lw=0.8)
    axes[0].axvline(t - 0.5, color="tab:red", lw=0.8)
axes[0].set_title("binary image, 4x4 patch grid")
cmap = plt.get_cmap("gray_r").copy()
cmap.set_bad("white")
axes[1].imshow(exploded(v_pkg[k]), cmap=cmap, vmin=-0.25, vmax=1)  # off pixels light grey
for i in range(49):
    axes[1].text((i % 7) * 5 - 0.3, (i // 7) * 5 - 0.3, str(i), ha="left", va="top",
                 fontsize=6, color="tab:red")
axes[1].set_title("the same image as 49 capsules of 16 units")
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Predictions (2.0)
#
# Every child $i$ *predicts* the state of every parent $j$ through its own matrix
# $W_{ij} \in \mathbb{R}^{d_h \times d_v}$:
#
# $$ \hat u_{j\mid i} = W_{ij}\, v_i, \qquad \hat u \in \mathbb{R}^{B \times I \times J \times d_h}. \tag{2.0} $$
#
# These are the only learned maps from the image to the parents. Everything that follows
# (routing in lesson 3, the energies of lessons 5 and 7) combines these $I \cdot J$ vectors.
# Note the number of weights, $I J d_h d_v$: with 4x4 patches, $J = 16$ parents and $d_h = 8$ it
# is $49 \cdot 16 \cdot 8 \cdot 16 = 100{,}352$.

# %%
I, d_v = 49, 16
J, d_h = 16, 8
rng = np.random.default_rng(1)
W = rng.normal(0.0, 0.1, size=(I, J, d_h, d_v))  # (I, J, d_h, d_v)
v = v_pkg[:5]  # (B=5, I, d_v)
print("weights:", W.size)

u_loop = np.zeros((v.shape[0], I, J, d_h))  # (B, I, J, d_h)
for b in range(v.shape[0]):
    for i in range(I):
        for j in range(J):
            u_loop[b, i, j] = W[i, j] @ v[b, i]  # (d_h,)

u_hat = predictions(W, v)  # (B, I, J, d_h)
assert u_hat.shape == (5, I, J, d_h)
np.testing.assert_allclose(u_hat, u_loop, rtol=1e-12, atol=1e-14)
print("loop predictions equal capsnp.predictions:", u_hat.shape)

# %% [markdown]
# One property to keep in mind for later: an all-zero patch predicts $\hat u_{j\mid i} = 0$ for
# every parent. Binary MNIST images are mostly background, so most children predict nothing,
# and a parent whose children are all blank receives the zero vector. Lesson 2 shows why the
# squash must be handled with care exactly there.

# %%
blank = np.all(v == 0, axis=2)  # (B, I): blank patches
print(f"fraction of blank 4x4 patches in these images: {blank.mean():.2f}")
assert np.all(u_hat[blank] == 0.0)

# %% [markdown]
# ## Summary
#
# * Symbols: $B$ batch, $I, d_v$ children, $J, d_h$ parents; every array shape is written in them.
# * Data: MNIST binarised stochastically ($x = 1$ with probability $g/255$) with a fixed seed,
#   the Salakhutdinov & Murray protocol; `datasets.binarize(X, "stochastic", random_state)`.
# * Patching (0.1): $p \times p$ patches are the visible capsules, $I = (28/p)^2$, $d_v = p^2$;
#   `to_capsules` / `from_capsules` convert losslessly.
# * Predictions (2.0): $\hat u_{j\mid i} = W_{ij} v_i$, shape $(B, I, J, d_h)$; blank patches
#   predict zero.
#
# ## Exercises
#
# 1. (\*) How many weights does $W$ have for $2 \times 2$ patches, $J = 16$, $d_h = 8$? For
#    $1 \times 1$ patches? Why does the count not depend on $p$?
# 2. (\*\*) `to_capsules` is a permutation of the 784 pixels. Compute that permutation as an
#    index array `perm` with `to_capsules(X, 28, 4).reshape(B, 784) == X[:, perm]`, and check that
#    `np.argsort(perm)` implements `from_capsules`.
# 3. (\*\*) With $R$ independent stochastic binarisations of the same image, how large must $R$ be
#    for the largest deviation of the 784 pixel frequencies from $g/255$ to stay below 0.01 in
#    95% of experiments? Estimate it with a union bound, then check by simulation.
#
# Solutions are in `solutions.md`.

# %%
print(f"lesson 1 ran in {time.perf_counter() - t_start:.1f} s")
