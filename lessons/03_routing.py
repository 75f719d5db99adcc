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
# # Lesson 3: dynamic routing and its backward pass
#
# **Goal.** Implement the routing-by-agreement procedure of Sabour, Frosst & Hinton (2017),
# understand why its softmax runs over **parents** (and what the common bug of running it over
# children does), check that routing treats children and parents symmetrically (permutation
# equivariance), and derive its vector-Jacobian product (VJP) through all routing iterations by
# hand, checked by central finite differences.
#
# Labels: (2.0) predictions (lesson 1), (2.1) one routing pass, (2.2) the VJP.

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
from capsnp.capsules import predictions, to_capsules
from capsnp.ops import softmax, squash, squash_vjp
from capsnp.routing import dynamic_routing, dynamic_routing_trace, dynamic_routing_vjp

FAST = os.environ.get("CAPSNP_FAST", "") not in ("", "0")  # CI sets CAPSNP_FAST=1
t_start = time.perf_counter()

# %% [markdown]
# ## 1. The procedure (2.1)
#
# Each child $i$ has made a prediction $\hat u_{j\mid i}$ for every parent $j$ (2.0). Routing
# decides how much of each child's prediction goes to each parent. It keeps logits $b_{ij}$,
# starting from prior logits $\beta_{ij}$ (or zero), and repeats $r$ times (pass $t = 0, \dots, r-1$):
#
# $$
# \begin{aligned}
# c^t_{ij} &= \frac{e^{b^t_{ij}}}{\sum_{j'} e^{b^t_{ij'}}} && \text{softmax over parents } j\\
# s^t_j &= \sum_i c^t_{ij}\, \hat u_{j\mid i} && \text{routed input of parent } j\\
# v^t_j &= \mathrm{squash}(s^t_j) && \text{(1.1)}\\
# b^{t+1}_{ij} &= b^t_{ij} + \hat u_{j\mid i} \cdot v^t_j && \text{agreement; skipped after the last pass}
# \end{aligned} \tag{2.1}
# $$
#
# with $b^0 = \beta$. The outputs are the last pass's $c$, $s$ and $v$. The "agreement"
# $\hat u_{j\mid i} \cdot v_j$ is large when child $i$'s prediction points the way parent $j$'s
# output points; the next pass then sends more of child $i$ to parent $j$. Shapes:
# $\hat u$ $(B, I, J, d_h)$, $b, c$ $(B, I, J)$, $s, v$ $(B, J, d_h)$.
#
# Here it is with explicit loops over children and parents, one image at a time.

# %%
def naive_routing(u_hat, r, beta):
    """(2.1) for one image: u_hat (I, J, d_h), beta (I, J) -> c (I, J), s (J, d_h), v (J, d_h)."""
    I, J, d_h = u_hat.shape
    b = np.array(beta, dtype=float)  # (I, J)
    for t in range(r):
        c = np.zeros((I, J))
        for i in range(I):
            e = np.exp(b[i] - b[i].max())
            c[i] = e / e.sum()  # child i's distribution over parents
        s = np.zeros((J, d_h))
        for j in range(J):
            for i in range(I):
                s[j] += c[i, j] * u_hat[i, j]
        v = np.array([squash(s[j]) for j in range(J)])  # (J, d_h)
        if t < r - 1:
            for i in range(I):
                for j in range(J):
                    b[i, j] += u_hat[i, j] @ v[j]
    return c, s, v


rng = np.random.default_rng(0)
B, I, J, d_h = 4, 6, 3, 5
u_hat = rng.normal(size=(B, I, J, d_h))  # (B, I, J, d_h)
beta = rng.normal(size=(I, J))  # (I, J)
for r in (1, 2, 3, 5):
    c, s, v = dynamic_routing(u_hat, r, beta)  # (B, I, J), (B, J, d_h), (B, J, d_h)
    for b in range(B):
        c_n, s_n, v_n = naive_routing(u_hat[b], r, beta)
        np.testing.assert_allclose(c[b], c_n, rtol=1e-12)
        np.testing.assert_allclose(s[b], s_n, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(v[b], v_n, rtol=1e-12, atol=1e-14)
print("naive loops equal capsnp.routing.dynamic_routing for r = 1, 2, 3, 5: OK")

# %% [markdown]
# ## 2. Why the softmax runs over parents
#
# The coupling coefficients of child $i$ form a **probability distribution over parents**:
# $\sum_j c_{ij} = 1$. Each child has one unit of "vote" and routing decides how to split it;
# parents *compete* for children. This is the assumption behind the whole construction (each
# part belongs to one whole), and it is what makes the latent-variable reading of lesson 7
# possible ($c_{ij}$ = probability that parent $j$ explains child $i$).
#
# The most common bug in public capsule code is to take the softmax over the wrong axis, over
# children $i$ (`axis=1` instead of `axis=2` in our layout). Then $\sum_i c_{ij} = 1$ for each
# parent: $s_j$ becomes a weighted *average* of all predictions for $j$; children no longer have
# a distribution over parents (a child can be claimed fully by every parent, or by none), and
# the scale of every parent's input changes. Look at the first pass, where $b = 0$:
#
# * correct: $c_{ij} = 1/J$, so $s_j = \frac{1}{J}\sum_i \hat u_{j\mid i}$;
# * bug: $c_{ij} = 1/I$, so $s_j = \frac{1}{I}\sum_i \hat u_{j\mid i}$: rescaled by $J/I$.
#
# With 4x4 patches of MNIST ($I = 49$) and $J = 16$ parents the bug shrinks every parent's
# first-pass input by a factor $16/49$, and its squash length (the firing probability of
# lesson 5) by roughly $(16/49)^2 \approx 0.1$ where the input is short.
# Let us route real images both ways and look.

# %%
def buggy_routing(u_hat, r, beta=None):
    """(2.1) with the softmax over CHILDREN (axis 1): the common bug. Same shapes as the package."""
    b = np.zeros(u_hat.shape[:3]) if beta is None else np.broadcast_to(beta, u_hat.shape[:3]).copy()
    for t in range(r):
        c = softmax(b, axis=1)  # (B, I, J): sums to 1 over children i -- wrong
        s = np.einsum("bij,bijh->bjh", c, u_hat)  # (B, J, d_h)
        v = squash(s)  # (B, J, d_h)
        if t < r - 1:
            b = b + np.einsum("bijh,bjh->bij", u_hat, v)  # (B, I, J)
    return c, s, v


X, _ = datasets.load_dataset("embedded", "train")
n_img = 20 if FAST else 100
V = to_capsules(datasets.binarize(X[:n_img], "stochastic", random_state=0), 28, 4)  # (B, 49, 16)
I4, J4, d_h4 = 49, 16, 8
W = np.random.default_rng(1).normal(0.0, 0.5, size=(I4, J4, d_h4, 16))  # (I, J, d_h, d_v)
U = predictions(W, V)  # (B, I, J, d_h)

c_ok, s_ok, v_ok = dynamic_routing(U, 3)
c_bug, s_bug, v_bug = buggy_routing(U, 3)
child_mass_ok = c_ok.sum(axis=2)  # (B, I): total coupling of each child
child_mass_bug = c_bug.sum(axis=2)  # (B, I)
print(f"correct routing: sum_j c_ij in [{child_mass_ok.min():.3f}, {child_mass_ok.max():.3f}]")
print(f"buggy routing  : sum_j c_ij in [{child_mass_bug.min():.3f}, {child_mass_bug.max():.3f}]"
      f"  (sum_i c_ij = 1 instead)")
assert np.allclose(child_mass_ok, 1.0) and np.allclose(c_bug.sum(axis=1), 1.0)

# first pass: the buggy input is the correct one times J / I, exactly
_, s1_ok, _ = dynamic_routing(U, 1)
_, s1_bug, _ = buggy_routing(U, 1)
np.testing.assert_allclose(s1_bug, s1_ok * J4 / I4, rtol=1e-10, atol=1e-14)
len_ok, len_bug = np.linalg.norm(v_ok, axis=-1), np.linalg.norm(v_bug, axis=-1)  # (B, J)
print(f"after 3 passes, mean parent length |v_j|: correct {len_ok.mean():.3f}, buggy {len_bug.mean():.3f}")

# %% [markdown]
# The heat maps show the coupling coefficients of one image after 3 passes (rows: the 49
# children, i.e. patches; columns: the 16 parents). Correct routing: every row sums to one,
# blank patches (whose predictions are zero and carry no information) keep the uniform $1/J$.
# Buggy routing: every *column* sums to one; each parent spreads its unit of attention over all
# 49 patches, blank ones included, and a patch's total weight (right panel) can be far from 1.

# %%
k = 0
fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.2]})
im0 = axes[0].imshow(c_ok[k], aspect="auto", cmap="viridis")
axes[0].set_title("correct: softmax over parents")
im1 = axes[1].imshow(c_bug[k], aspect="auto", cmap="viridis")
axes[1].set_title("bug: softmax over children")
for ax, im in ((axes[0], im0), (axes[1], im1)):
    ax.set_xlabel("parent j")
    ax.set_ylabel("child i (patch)")
    fig.colorbar(im, ax=ax, fraction=0.046)
axes[2].plot(child_mass_ok[k], "o-", ms=3, label=r"correct: $\sum_j c_{ij}$")
axes[2].plot(child_mass_bug[k], "s-", ms=3, label=r"bug: $\sum_j c_{ij}$")
blank = np.all(V[k] == 0, axis=1)
axes[2].plot(np.flatnonzero(blank), np.zeros(blank.sum()), "k|", ms=10, label="blank patch")
axes[2].set_xlabel("child i (patch)")
axes[2].set_title("total coupling of each child")
axes[2].set_ylim(-0.1, 1.8)
axes[2].legend(fontsize=8, loc="upper right")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Permutation equivariance
#
# Nothing in (2.1) depends on the *order* of children or parents: sums over $i$ and softmaxes
# over $j$ are symmetric. So if we permute children by $\pi$ and parents by $\sigma$ (in both
# $\hat u$ and $\beta$), the outputs are permuted the same way: $c' = c_{\pi, \sigma}$,
# $s' = s_\sigma$, $v' = v_\sigma$. A check like this catches indexing bugs that numerical
# gradient checks cannot (a wrong axis can still have a correct derivative).

# %%
perm_i, perm_j = rng.permutation(I), rng.permutation(J)
c, s, v = dynamic_routing(u_hat, 3, beta)
c2, s2, v2 = dynamic_routing(u_hat[:, perm_i][:, :, perm_j], 3, beta[perm_i][:, perm_j])
np.testing.assert_allclose(c2, c[:, perm_i][:, :, perm_j], rtol=1e-12)
np.testing.assert_allclose(s2, s[:, perm_j], rtol=1e-12, atol=1e-14)
np.testing.assert_allclose(v2, v[:, perm_j], rtol=1e-12, atol=1e-14)
print("routing is equivariant to permutations of children and parents: OK")
# the buggy version is equivariant too: symmetry alone cannot detect a wrong softmax axis
c3, _, _ = buggy_routing(u_hat[:, perm_i][:, :, perm_j], 3, beta[perm_i][:, perm_j])
np.testing.assert_allclose(c3, buggy_routing(u_hat, 3, beta)[0][:, perm_i][:, :, perm_j], rtol=1e-12)
print("(so is the buggy version: the check that catches the bug is sum_j c_ij = 1)")

# %% [markdown]
# ## 4. The backward pass through routing (2.2)
#
# Training needs derivatives of a loss $L$ that depends on the routing outputs, with respect
# to the predictions $\hat u$ (hence $W$) and the prior logits $\beta$. The outputs depend on
# $\hat u$ along **two** kinds of path: directly, through $s^t = \sum_i c^t \hat u$, and
# through the logits, since every agreement $\hat u \cdot v^t$ changes the next pass's $c$.
#
# Reverse mode walks the passes backwards. Write $\bar x = \partial L / \partial x$ (the
# *adjoint*), and let the loss see the final outputs through given adjoints $g_s, g_v, g_c$.
# The logits after the last pass are never used, so $\bar b^{r} = 0$. For
# $t = r-1, \dots, 0$, invert each line of (2.1):
#
# * $b^{t+1} = b^t + \hat u\cdot v^t$ sends its adjoint to $v^t$, to $\hat u$ and (unchanged) to $b^t$:
#   $\quad \bar v^t_j = [t = r-1]\, g_v + \sum_i \bar b^{t+1}_{ij}\, \hat u_{j\mid i}$,
#   $\quad \bar{\hat u}_{j\mid i} \mathrel{+}= \bar b^{t+1}_{ij}\, v^t_j$.
# * $v^t = \mathrm{squash}(s^t)$, by (1.3):
#   $\quad \bar s^t_j = [t = r-1]\, g_s + \mathrm{squash\_vjp}(s^t_j, \bar v^t_j)$.
# * $s^t_j = \sum_i c^t_{ij}\hat u_{j\mid i}$ is bilinear:
#   $\quad \bar c^t_{ij} = [t = r-1]\, g_c + \hat u_{j\mid i}\cdot \bar s^t_j$,
#   $\quad \bar{\hat u}_{j\mid i} \mathrel{+}= c^t_{ij}\, \bar s^t_j$.
# * $c^t_i = \mathrm{softmax}(b^t_i)$ has Jacobian $\partial c_{ij}/\partial b_{ik} = c_{ij}(\delta_{jk} - c_{ik})$, so
#   $\quad \bar b^t_{ik} = \bar b^{t+1}_{ik} + c^t_{ik}\big(\bar c^t_{ik} - \sum_j c^t_{ij}\bar c^t_{ij}\big)$.
#
# Finally $\bar\beta = \bar b^0$ (summed over the batch when $\beta$ is shared by all images).
# Together:
#
# $$
# \begin{aligned}
# \bar v^t_j &= [t = r-1]\, g_v + \textstyle\sum_i \bar b^{t+1}_{ij} \hat u_{j\mid i}, &
# \bar s^t_j &= [t = r-1]\, g_s + \mathrm{squash\_vjp}(s^t_j, \bar v^t_j),\\
# \bar c^t_{ij} &= [t = r-1]\, g_c + \hat u_{j\mid i}\cdot\bar s^t_j, &
# \bar b^t &= \bar b^{t+1} + \mathrm{softmax\_vjp}(c^t, \bar c^t),\\
# \bar{\hat u}_{j\mid i} &\mathrel{+}= c^t_{ij}\,\bar s^t_j + \bar b^{t+1}_{ij}\, v^t_j, &
# \bar \beta &= \bar b^0 .
# \end{aligned} \tag{2.2}
# $$
#
# The backward pass needs every pass's $c^t, s^t, v^t$: the forward pass must keep them
# (`dynamic_routing_trace` returns them as a `RoutingTrace`). Here is (2.2) with loops, for one
# image, using our own forward pass that stores the same trace.

# %%
def naive_routing_with_trace(u_hat, r, beta):
    """(2.1) for one image, keeping every pass: c (r, I, J), s (r, J, d_h), v (r, J, d_h)."""
    I, J, d_h = u_hat.shape
    b = np.array(beta, dtype=float)
    cs, ss, vs = np.zeros((r, I, J)), np.zeros((r, J, d_h)), np.zeros((r, J, d_h))
    for t in range(r):
        cs[t] = softmax(b, axis=1)  # (I, J): over parents
        ss[t] = np.einsum("ij,ijh->jh", cs[t], u_hat)  # (J, d_h)
        vs[t] = squash(ss[t])  # (J, d_h)
        if t < r - 1:
            b = b + np.einsum("ijh,jh->ij", u_hat, vs[t])  # (I, J)
    return cs, ss, vs


def naive_routing_vjp(u_hat, trace, g_s, g_v, g_c):
    """(2.2) for one image, loop over passes, children and parents. Returns (u_bar, beta_bar)."""
    cs, ss, vs = trace
    r, I, J = cs.shape
    u_bar = np.zeros_like(u_hat)  # (I, J, d_h)
    b_bar_next = np.zeros((I, J))  # adjoint of b^{t+1}; zero after the last pass
    for t in range(r - 1, -1, -1):
        last = t == r - 1
        v_bar = g_v.copy() if last else np.zeros_like(g_v)  # (J, d_h)
        for i in range(I):
            for j in range(J):
                v_bar[j] += b_bar_next[i, j] * u_hat[i, j]
                u_bar[i, j] += b_bar_next[i, j] * vs[t, j]  # through the agreement u.v
        s_bar = squash_vjp(ss[t], v_bar) + (g_s if last else 0.0)  # (J, d_h)
        c_bar = (g_c.copy() if last else np.zeros((I, J)))  # (I, J)
        for i in range(I):
            for j in range(J):
                c_bar[i, j] += u_hat[i, j] @ s_bar[j]
                u_bar[i, j] += cs[t, i, j] * s_bar[j]  # through s = sum_i c u
        b_bar = b_bar_next.copy()
        for i in range(I):
            mean_i = np.sum(cs[t, i] * c_bar[i])
            for k in range(J):
                b_bar[i, k] += cs[t, i, k] * (c_bar[i, k] - mean_i)  # softmax VJP
        b_bar_next = b_bar
    return u_bar, b_bar_next  # b_bar_next is now the adjoint of b^0 = beta


r = 3
g_s = rng.normal(size=(B, J, d_h))
g_v = rng.normal(size=(B, J, d_h))
g_c = rng.normal(size=(B, I, J))
trace = dynamic_routing_trace(u_hat, r, beta)
u_bar_pkg, beta_bar_pkg = dynamic_routing_vjp(u_hat, trace, g_s=g_s, g_v=g_v, g_c=g_c, prior_shape=(I, J))
beta_bar_mine = np.zeros((I, J))
for b in range(B):
    tr_b = naive_routing_with_trace(u_hat[b], r, beta)
    np.testing.assert_allclose(tr_b[0], trace.c[:, b], rtol=1e-12)  # same forward trace
    u_bar_b, beta_bar_b = naive_routing_vjp(u_hat[b], tr_b, g_s[b], g_v[b], g_c[b])
    np.testing.assert_allclose(u_bar_b, u_bar_pkg[b], rtol=1e-10, atol=1e-12)
    beta_bar_mine += beta_bar_b  # beta is shared by the batch: adjoints add up
np.testing.assert_allclose(beta_bar_mine, beta_bar_pkg, rtol=1e-10, atol=1e-12)
print("naive VJP (2.2) equals capsnp.routing.dynamic_routing_vjp: OK")

# %% [markdown]
# Both implementations could share a derivation mistake. The independent check is central
# differences of the scalar loss
# $L(\hat u, \beta) = \langle g_s, s\rangle + \langle g_v, v\rangle + \langle g_c, c\rangle$
# in float64 ($\varepsilon = 10^{-6}$, truncation error $O(\varepsilon^2)$, rounding error
# $O(10^{-16}/\varepsilon)$: relative errors around $10^{-9}$ are the expected floor).

# %%
def loss(u, bt):
    c_, s_, v_ = dynamic_routing(u, r, bt)
    return np.sum(g_s * s_) + np.sum(g_v * v_) + np.sum(g_c * c_)


def central_difference(f, x, eps=1e-6):
    """Numerical gradient of a scalar function f at the array x, same shape as x."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        grad[idx] = (f(x + e) - f(x - e)) / (2 * eps)
    return grad


def rel_error(a, b):
    """max |a - b| / max |b|."""
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


err_u = rel_error(u_bar_pkg, central_difference(lambda u: loss(u, beta), u_hat))
err_beta = rel_error(beta_bar_pkg, central_difference(lambda bt: loss(u_hat, bt), beta))
print(f"r = {r}: VJP vs central differences, relative error: u_hat {err_u:.1e}, beta {err_beta:.1e}")
assert err_u < 1e-6 and err_beta < 1e-6

# %% [markdown]
# How much do the paths through the logits matter? If we pretended the final coefficients were
# constants, only the term $c^{r-1}_{ij}\bar s^{r-1}_j$ would remain. For a loss on $s$ alone,
# compare that shortcut with the full VJP: the cosine between them is below one, and it falls
# as predictions grow (stronger agreement, more sensitive routing). Lesson 5 meets the same
# question as the `full` versus `frozen` gradient of Model P.

# %%
for scale in (0.1, 1.0, 3.0):
    u_sc = u_hat * scale
    tr_sc = dynamic_routing_trace(u_sc, r, beta)
    full, _ = dynamic_routing_vjp(u_sc, tr_sc, g_s=g_s)
    frozen = tr_sc.c[-1][..., None] * g_s[:, None, :, :]  # (B, I, J, d_h): c held constant
    cos = np.sum(full * frozen) / (np.linalg.norm(full) * np.linalg.norm(frozen))
    print(f"prediction scale {scale:4.1f}: cosine(full VJP, c-frozen VJP) = {cos:.4f}")

# %% [markdown]
# ## Summary
#
# * (2.1) Routing: $c = \mathrm{softmax}_j(b)$, $s_j = \sum_i c_{ij}\hat u_{j\mid i}$,
#   $v_j = \mathrm{squash}(s_j)$, $b \mathrel{+}= \hat u\cdot v$; $r = 3$ passes by default.
# * The softmax runs over **parents**: each child's coefficients are a distribution over
#   parents. Over children (the common bug) the columns sum to one instead, a child's total
#   coupling is no longer 1, and the first-pass inputs shrink by $J/I$.
# * Routing is equivariant to permutations of children and of parents (so is the bug: check
#   $\sum_j c_{ij} = 1$ directly).
# * (2.2) The VJP goes backwards through all $r$ passes; $\hat u$ receives gradient through
#   $s$ and through the agreement logits. It matched central differences to about $10^{-9}$.
#
# ## Exercises
#
# 1. (\*) Show that with $r = 1$ and $\beta = 0$, $s_j = \frac1J\sum_i \hat u_{j\mid i}$, so routing
#    is linear in $\hat u$ and the VJP reduces to $\bar{\hat u}_{j\mid i} = \bar s_j / J$. Check
#    it with `dynamic_routing_vjp`.
# 2. (\*\*) Adding a constant $\kappa_i$ to every prior logit of child $i$ changes nothing.
#    Deduce that $\sum_j \bar\beta_{ij} = 0$ for every child and every loss, and verify it.
# 3. (\*\*\*) Lesson 7 uses the "replace" rule $b^{t+1} = \beta + \hat u\cdot v^t$ instead of
#    "accumulate" $b^{t+1} = b^t + \hat u\cdot v^t$. Which line of (2.2) changes? Implement the
#    VJP of the replace variant and check it by central differences.
#
# Solutions are in `solutions.md`.

# %%
print(f"lesson 3 ran in {time.perf_counter() - t_start:.1f} s")
