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
# # Lesson 5: Model P, the capsule product of experts
#
# **Goal.** Build the energy-based model that the source paper (Hauser, 2019) describes in
# words: an energy "consistent with dynamic routing in the sense of the probability of a capsule
# firing". We derive its firing probabilities, its free energy (a product of capsule experts),
# and its gradients, in two versions (`full`: through the routing; `frozen`: routing held
# constant), check both by central differences, and measure how different they are. We end
# with what the free energy tells us about the *strength* of each capsule expert, compared with
# an RBM's hidden unit.
#
# Labels (MODEL.md section 3, `capsnp.model_p`): (3.1) energy, (3.2) firing probability, (3.3) free
# energy, (3.4) readout, (3.5) $\partial F/\partial s$, (3.6) full gradient, (3.7) frozen gradient.

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
from capsnp import model_p as mp
from capsnp.capsules import predictions, to_capsules
from capsnp.exact import enumerate_binary
from capsnp.ops import softplus, squash
from capsnp.params import PParams
from capsnp.routing import dynamic_routing, dynamic_routing_trace, dynamic_routing_vjp

FAST = os.environ.get("CAPSNP_FAST", "") not in ("", "0")  # CI sets CAPSNP_FAST=1
t_start = time.perf_counter()


def random_pparams(rng, I=3, d_v=2, J=2, d_h=3, scale=1.0):
    """A tiny Model P with every parameter random: W (I, J, d_h, d_v), alpha (I, d_v), rho (J,), beta (I, J)."""
    return PParams(W=rng.normal(0.0, scale, (I, J, d_h, d_v)), alpha=rng.normal(0.0, 1.0, (I, d_v)),
                   rho=rng.normal(0.0, 1.0, J), beta=rng.normal(0.0, 1.0, (I, J)))


def binary(rng, shape):
    return (rng.random(shape) < 0.5).astype(np.float64)


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

# %% [markdown]
# ## 1. An energy consistent with routing (3.1), (3.2)
#
# Route the visible capsules $v$ (lesson 3): parent $j$ receives $s_j(v) = \sum_i c_{ij}\hat u_{j\mid i}$,
# a deterministic function of $v$ and the parameters. Give each parent a binary *firing*
# variable $z_j$ and define
#
# $$ E(v, z) = -\alpha\cdot v - \sum_j z_j\big(\rho_j + \log|s_j(v)|^2\big). \tag{3.1} $$
#
# Given $v$, the energy is linear in each $z_j$ with no $z$-$z$ terms, so, exactly as for an
# RBM's hidden units (5.2), the firing variables are independent given $v$ and
#
# $$ p(z_j = 1 \mid v) = \sigma\big(\rho_j + \log |s_j|^2\big) = \frac{e^{\rho_j}|s_j|^2}{1 + e^{\rho_j}|s_j|^2} . \tag{3.2} $$
#
# At $\rho_j = 0$ this is $\sigma(\log|s_j|^2) = |\mathrm{squash}(s_j)|$ by (1.2): **the probability
# that capsule $j$ fires equals the length of its squashed output**, exactly what dynamic routing
# computes. That is the precise sense in which (3.1) is "consistent with dynamic routing". The
# log-gain $\rho_j$ is a bias on the firing logit (lesson 2, exercise 1). A capsule with
# $s_j = 0$ has logit $-\infty$ and never fires.
#
# Check on a tiny model by brute force: enumerate all $2^J$ firing patterns, compute
# $p(z\mid v)$ from the energy, and compare.

# %%
rng = np.random.default_rng(0)
p = random_pparams(rng)  # I = 3 capsules of d_v = 2, J = 2 parents of d_h = 3
I, J, d_h, d_v = p.W.shape
V = binary(rng, (6, I, d_v))  # (B, I, d_v)
Zs = enumerate_binary(J)  # (2^J, J)


def energy(params, v, z, n_iter=3):
    """(3.1) for a batch v (B, I, d_v) and one firing pattern z (J,): returns (B,)."""
    _, s, _ = dynamic_routing(predictions(params.W, v), n_iter, params.beta)  # s: (B, J, d_h)
    return -np.einsum("bil,il->b", v, params.alpha) - (params.rho + np.log(np.sum(s * s, axis=-1))) @ z  # (B,)


logw = np.stack([-energy(p, V, z) for z in Zs], axis=1)  # (B, 2^J): log of unnormalised p(v, z)
post = np.exp(logw - np.logaddexp.reduce(logw, axis=1, keepdims=True))  # (B, 2^J): p(z | v)
prob = mp.firing_probability(p, V)  # (B, J)
np.testing.assert_allclose(post @ Zs, prob, rtol=1e-10)  # marginals p(z_j = 1 | v)
np.testing.assert_allclose(post, np.prod(np.where(Zs[None] > 0, prob[:, None], 1 - prob[:, None]), axis=2),
                           rtol=1e-10)  # independence given v
print("p(z | v) from the enumerated energy equals firing_probability and factorises: OK")

p0 = p._replace(rho=np.zeros(J))
_, s0, v_routed = dynamic_routing(predictions(p0.W, V), 3, p0.beta)
np.testing.assert_allclose(mp.firing_probability(p0, V), np.linalg.norm(squash(s0), axis=-1), rtol=1e-12)
np.testing.assert_allclose(np.linalg.norm(squash(s0), axis=-1), np.linalg.norm(v_routed, axis=-1), rtol=1e-12)
np.testing.assert_allclose(np.linalg.norm(mp.capsule_pose(p, V), axis=-1), prob, rtol=1e-12)  # (3.4)
print("at rho = 0, firing probability = |squash(s_j)| = length of the routed output: OK")

# %% [markdown]
# The readout (3.4) used for plots packs both facts into one vector:
# $\mathrm{squash}(e^{\rho_j/2}s_j)$ has length $p(z_j = 1\mid v)$ (checked above) and the
# direction of $s_j$, the capsule's pose.
#
# ## 2. The free energy: a product of capsule experts (3.3)
#
# Sum $z$ out, one capsule at a time ($\sum_{z_j\in\{0,1\}} e^{z_j x_j} = 1 + e^{x_j}$ with
# $x_j = \rho_j + \log|s_j|^2$, so $e^{x_j} = e^{\rho_j}|s_j|^2$):
#
# $$ F(v) = -\alpha \cdot v - \sum_j \log\big(1 + e^{\rho_j}|s_j(v)|^2\big), \qquad
#    p(v) \propto e^{\alpha\cdot v}\prod_j \big(1 + e^{\rho_j}|s_j(v)|^2\big). \tag{3.3} $$
#
# A product of experts again (lesson 4), one per capsule: expert $j$ multiplies the probability
# of visible patterns whose routed predictions *agree* (a long $s_j$: many children predicting
# the same vector for parent $j$) and is neutral (factor 1) where $s_j = 0$.

# %%
F_brute = -np.logaddexp.reduce(logw, axis=1)  # (B,)
np.testing.assert_allclose(mp.free_energy(p, V), F_brute, rtol=1e-12)
_, s, _ = dynamic_routing(predictions(p.W, V), 3, p.beta)
F_product = -np.einsum("bil,il->b", V, p.alpha) - np.sum(np.log1p(np.exp(p.rho) * np.sum(s * s, -1)), axis=1)
np.testing.assert_allclose(mp.free_energy(p, V), F_product, rtol=1e-12)
print("F(v) = -log sum_z exp(-E(v, z)) = the product-of-experts formula (3.3): OK")

# %% [markdown]
# ## 3. The derivative with respect to the routed input (3.5)
#
# Every gradient of $F$ starts at $s$. With $q = |s_j|^2$, $\partial q/\partial s_j = 2 s_j$:
#
# $$ \frac{\partial F}{\partial s_j} = -\frac{2 e^{\rho_j} s_j}{1 + e^{\rho_j}|s_j|^2}
#    = -\frac{2 s_j}{e^{-\rho_j} + |s_j|^2} . \tag{3.5} $$
#
# Unlike the squash (lesson 2), this is smooth at $s_j = 0$, where it is $0$: $\log(1 + e^\rho q)$
# is a smooth function of $q$, and $q$ of $s$. (The second form cannot overflow for large $|s|$.)
# Note the consequence: at $s = 0$ the gradient of $F$ with respect to everything upstream of $s$
# vanishes.

# %%
rho_t = rng.normal(size=J)
S_t = rng.normal(size=(5, J, d_h))  # (B, J, d_h)
S_t[0] = 0.0  # include s = 0


def F_of_s(x):
    return -np.sum(np.log1p(np.exp(rho_t) * np.sum(x * x, axis=-1)))  # sum over the batch


err_ds = rel_error(mp.free_energy_ds(rho_t, S_t), central_difference(F_of_s, S_t))
print(f"(3.5) vs central differences: relative error {err_ds:.1e}; "
      f"at s = 0 it is exactly {np.abs(mp.free_energy_ds(rho_t, S_t)[0]).max():.0f}")
assert err_ds < 1e-7 and np.all(mp.free_energy_ds(rho_t, S_t)[0] == 0)

# %% [markdown]
# ## 4. The full gradient: back through the routing (3.6)
#
# For training (lesson 8) we need $\partial F/\partial\theta$ for $\theta = (W, \alpha, \rho, \beta)$.
# Two parameters are direct:
#
# $$ \frac{\partial F}{\partial \alpha} = -v, \qquad
#    \frac{\partial F}{\partial \rho_j} = -\frac{e^{\rho_j}|s_j|^2}{1 + e^{\rho_j}|s_j|^2} = -p(z_j = 1\mid v). $$
#
# $W$ and $\beta$ act through the routing. $W$ enters through the predictions
# $\hat u_{j\mid i} = W_{ij}v_i$, which enter $s$ both directly and through the routing logits, for
# all $r$ passes; $\beta$ enters through the initial logits. The chain rule is: start from
# $\bar s = \partial F/\partial s$ (3.5), run the routing VJP (2.2) of lesson 3 to get
# $\bar{\hat u}$ and $\bar\beta$, then $\partial F / \partial W_{ij} = \sum_b \bar{\hat u}_{b,j\mid i}\, v_{b,i}^\top$:
#
# $$ \frac{\partial F}{\partial W_{ij}} = \sum_b \bar{\hat u}_{b, j\mid i}\; v_{b,i}^\top, \qquad
#    (\bar{\hat u}, \bar\beta) = \mathrm{VJP}_{(2.2)}\Big(\bar s = \frac{\partial F}{\partial s}\Big). \tag{3.6} $$
#
# `free_energy_grad` returns the gradient of the *batch mean* of $F$, so $\bar s$ carries a
# factor $1/B$. Our composition of the pieces:

# %%
def naive_full_gradient(params, v, n_iter=3):
    """(3.6) by composing (3.5), the routing VJP (2.2) and the prediction VJP; gradient of mean F."""
    B = v.shape[0]
    u_hat = predictions(params.W, v)  # (B, I, J, d_h)
    tr = dynamic_routing_trace(u_hat, n_iter, params.beta)
    s = tr.s[-1]  # (B, J, d_h)
    g_s = -2 * np.exp(params.rho)[:, None] * s / (1 + np.exp(params.rho) * np.sum(s * s, -1))[..., None] / B
    g_u, g_beta = dynamic_routing_vjp(u_hat, tr, g_s=g_s, prior_shape=params.beta.shape)
    g_W = np.einsum("bijh,bid->ijhd", g_u, v)  # (I, J, d_h, d_v)
    firing = np.exp(params.rho) * np.sum(s * s, -1) / (1 + np.exp(params.rho) * np.sum(s * s, -1))  # (B, J)
    return PParams(W=g_W, alpha=-v.mean(axis=0), rho=-firing.mean(axis=0), beta=g_beta)


V = binary(rng, (8, I, d_v))
_, g_full = mp.free_energy_grad(p, V, mode="full")
g_naive = naive_full_gradient(p, V)
for name in PParams._fields:
    np.testing.assert_allclose(getattr(g_naive, name), getattr(g_full, name), rtol=1e-10, atol=1e-14)
print("composed gradient (3.6) equals free_energy_grad(mode='full'): OK")

for name in PParams._fields:
    num = central_difference(lambda x: mp.free_energy(p._replace(**{name: x}), V).mean(), getattr(p, name))
    err = rel_error(getattr(g_full, name), num)
    print(f"  full gradient vs central differences, {name:5s}: relative error {err:.1e}")
    assert err < 1e-6

# %% [markdown]
# ## 5. The frozen gradient (3.7)
#
# The paper's description ("contrastive divergence on an energy consistent with routing")
# suggests the cheap shortcut: treat the coupling coefficients as constants. Then
# $s_j = \sum_i c_{ij} W_{ij} v_i$ is linear in $W$ and
#
# $$ \frac{\partial F}{\partial W_{ij}}\Big|_{c\ \text{frozen}} = c_{ij}\, \frac{\partial F}{\partial s_j}\, v_i^\top
#    = -c_{ij}\, g_j\, v_i^\top, \qquad g_j = \frac{2e^{\rho_j}s_j}{1 + e^{\rho_j}|s_j|^2}, \tag{3.7} $$
#
# (summed over the batch), while $\beta$ gets no gradient at all (it only acts through $c$).
# This is the exact gradient of a *different* function: $F$ with $c$ fixed at its current
# value. Check it that way: central differences with $c$ held fixed.

# %%
c_now, _, _ = dynamic_routing(predictions(p.W, V), 3, p.beta)  # (B, I, J), frozen from here on
_, s_now, _ = dynamic_routing(predictions(p.W, V), 3, p.beta)
g_j = 2 * np.exp(p.rho)[:, None] * s_now / (1 + np.exp(p.rho) * np.sum(s_now ** 2, -1))[..., None]  # (B, J, d_h)
gW_frozen_naive = -np.einsum("bij,bjh,bid->ijhd", c_now, g_j, V) / len(V)  # (I, J, d_h, d_v)
_, g_frozen = mp.free_energy_grad(p, V, mode="frozen")
np.testing.assert_allclose(g_frozen.W, gW_frozen_naive, rtol=1e-10, atol=1e-14)
assert np.all(g_frozen.beta == 0)


def mean_F_frozen(W):
    s_ = np.einsum("bij,bijh->bjh", c_now, predictions(W, V))  # c fixed: s linear in W
    return np.mean(-np.einsum("bil,il->b", V, p.alpha) - np.log1p(np.exp(p.rho) * np.sum(s_ * s_, -1)).sum(1))


err_fr = rel_error(g_frozen.W, central_difference(mean_F_frozen, p.W))
print(f"frozen gradient (3.7) vs central differences with c held fixed: relative error {err_fr:.1e}")
assert err_fr < 1e-6

# %% [markdown]
# ### How different are they?
#
# The difference between (3.6) and (3.7) is the part of the gradient that flows through the
# coupling coefficients. Measure the cosine between the two $W$-gradients over many random
# tiny models, at several weight scales. Small weights give nearly uniform (hence nearly
# constant) routing, so the cosine should approach 1; larger weights make routing sharper and
# more sensitive.

# %%
n_models = 10 if FAST else 40
print(" W scale   cosine(full, frozen): mean    min     max")
cos_by_scale = {}
for scale in (0.1, 0.3, 1.0, 3.0):
    cos = []
    for seed in range(n_models):
        r_ = np.random.default_rng(100 + seed)
        q = random_pparams(r_, scale=scale)
        Vq = binary(r_, (16, I, d_v))
        gf = mp.free_energy_grad(q, Vq, mode="full")[1].W.ravel()
        gz = mp.free_energy_grad(q, Vq, mode="frozen")[1].W.ravel()
        cos.append(gf @ gz / (np.linalg.norm(gf) * np.linalg.norm(gz)))
    cos_by_scale[scale] = np.array(cos)
    print(f"{scale:8.1f}   {np.mean(cos):27.4f}  {np.min(cos):6.4f}  {np.max(cos):6.4f}")

# %% [markdown]
# And on an MNIST-sized model (4x4 patches: $I = 49$, $d_v = 16$; $J = 16$, $d_h = 8$) with a
# batch of real binarised digits:

# %%
X, _ = datasets.load_dataset("embedded", "train")
n_img = 16 if FAST else 64
V_mnist = to_capsules(datasets.binarize(X[:n_img], "stochastic", random_state=0), 28, 4)  # (B, 49, 16)
for w_std in (0.05, 0.3, 1.0):
    r_ = np.random.default_rng(7)
    big = PParams(W=r_.normal(0, w_std, (49, 16, 8, 16)), alpha=np.zeros((49, 16)), rho=np.zeros(16),
                  beta=np.zeros((49, 16)))
    F_b, gf = mp.free_energy_grad(big, V_mnist, mode="full")
    _, gz = mp.free_energy_grad(big, V_mnist, mode="frozen")
    cos = np.sum(gf.W * gz.W) / (np.linalg.norm(gf.W) * np.linalg.norm(gz.W))
    fire = mp.firing_probability(big, V_mnist)
    print(f"W std {w_std:4.2f}: cosine(full, frozen) = {cos:.4f}; mean firing probability of the data "
          f"{fire.mean():.3f}; |dF/dW| = {np.linalg.norm(gf.W):.3g}")

# %% [markdown]
# Two things to read off. The shortcut is only a good approximation of the true gradient while
# routing is weak; once the weights grow, a sizeable part of the gradient flows through the
# routing. And at a small initial scale ($\mathrm{std} = 0.05$, $\rho = 0$) the data's firing
# probabilities start near $0.01$ and the gradient is tiny, which the next section explains.
#
# ## 6. $W = 0$ is a stationary point
#
# At $W = 0$ every prediction is zero, so $s_j = 0$, and $\partial F/\partial s_j = 0$ by (3.5).
# Every path from $W$ to $F$ passes through $s$, so $\partial F(v)/\partial W = 0$ for *every* $v$
# (and $\partial F/\partial\rho_j = -p(z_j=1\mid v) = 0$ too). The log-likelihood gradient
# $-\partial_\theta F(v) + \mathbb{E}_p[\partial_\theta F]$ (5.6) is then zero in $W$ and $\rho$:
# gradient ascent can never leave $W = 0$. Near it, the gradient is $O(|W|)$ (it is the
# gradient of a function of $|s|^2$, quadratic in $W$), so a small initial scale learns slowly,
# and the initial scale of $W$ and the gain $\rho$ are real hyperparameters.

# %%
zero = p._replace(W=np.zeros_like(p.W))
for mode in ("full", "frozen"):
    _, g0 = mp.free_energy_grad(zero, binary(rng, (32, I, d_v)), mode=mode)
    assert np.all(g0.W == 0) and np.all(g0.rho == 0)
print("at W = 0: dF/dW = 0 and dF/drho = 0 exactly, for every v, in both modes")

norms = []
for lam in (1e-3, 1e-2, 1e-1):
    _, gl = mp.free_energy_grad(p._replace(W=lam * p.W), V, mode="full")
    norms.append(np.linalg.norm(gl.W))
print("|dF/dW| at W scaled by 1e-3, 1e-2, 1e-1:", ", ".join(f"{x:.2e}" for x in norms), "(linear in the scale)")

# %% [markdown]
# ## 7. How strong is one capsule expert?
#
# Compare what one expert adds to $-F$:
#
# * RBM hidden unit (5.4): $\mathrm{softplus}(b_k + w_k\cdot v)$, a softplus of a **linear** form;
# * capsule (3.3): $\log(1 + e^{\rho_j}|s_j(v)|^2)$, a logarithm of a **quadratic** form (for fixed $c$).
#
# Scale the weights by $\lambda$. The RBM expert's contribution grows *linearly* in $\lambda$ (for
# a pattern it likes), so the ratio of probabilities it assigns to two patterns,
# $e^{\lambda(x_1 - x_2)}$, can be made as large as we want: an RBM expert can be arbitrarily
# sharp. The capsule expert's contribution grows like $2\log\lambda$. With the coupling
# coefficients held fixed, for two patterns with $|s|^2 = q_1, q_2 > 0$ the ratio
# $\frac{1 + \lambda^2 e^\rho q_1}{1 + \lambda^2 e^\rho q_2} \to q_1/q_2$ is bounded, whatever the
# scale. With routing, $c$ depends on $\lambda$: as routing hardens a parent can lose all its
# children for some patterns ($s_j \to 0$) and keep them for others, so the ratio can grow, but
# at most like $\lambda^2$, i.e. by $2\log\lambda$ nats per expert: logarithmically, where the RBM
# grows linearly. The figure shows this: left, one expert's contribution for a fixed input;
# right, the spread $\max_v - \min_v$ of the experts' total contribution to $-F$ over all
# non-blank states of a tiny random model (6 pixels, 2 experts), as the weights are scaled:
# an RBM, Model P with its routing, and the same Model P with routing frozen at uniform
# coefficients (one pass, $\beta = 0$).

# %%
lams = np.logspace(-1, 2, 40)
Vall = enumerate_binary(6).reshape(-1, 3, 2)[1:]  # (63, I, d_v): every non-blank state
r_ = np.random.default_rng(3)
pP = random_pparams(r_)._replace(alpha=np.zeros((3, 2)))
W_rbm, b_rbm = r_.normal(0, 1, (6, 2)), np.zeros(2)  # an RBM with the same 6 pixels and 2 experts
pU = pP._replace(beta=np.zeros((3, 2)))  # with n_iter = 1: c = 1/J, routing frozen at uniform
spread_P, spread_U, spread_R = [], [], []
for lam in lams:
    FP = mp.free_energy(pP._replace(W=lam * pP.W), Vall)  # (63,), alpha = 0: experts only
    spread_P.append(FP.max() - FP.min())
    FU = mp.free_energy(pU._replace(W=lam * pU.W), Vall, n_iter=1)  # (63,)
    spread_U.append(FU.max() - FU.min())
    xR = softplus(b_rbm + lam * Vall.reshape(63, 6) @ W_rbm).sum(1)  # (63,)
    spread_R.append(xR.max() - xR.min())

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
lin = np.linspace(0, 20, 200)
axes[0].plot(lin, softplus(lin * 1.0), label=r"RBM expert: softplus$(\lambda x)$, $x = 1$")
axes[0].plot(lin, np.log1p(lin ** 2 * 1.0), label=r"capsule expert: $\log(1 + \lambda^2 |s|^2)$, $|s| = 1$")
axes[0].set_xlabel(r"weight scale $\lambda$")
axes[0].set_ylabel("contribution to $-F$ (nats)")
axes[0].set_title("one expert, one input")
axes[0].legend(fontsize=8)
axes[1].plot(lams, spread_R, label="RBM, 2 hidden units")
axes[1].plot(lams, spread_P, label="Model P, 2 capsules, routing (r = 3)")
axes[1].plot(lams, spread_U, "--", label="Model P, routing frozen uniform")
axes[1].set_xscale("log")
axes[1].set_yscale("log")
axes[1].set_xlabel(r"weight scale $\lambda$")
axes[1].set_ylabel(r"$\max_v - \min_v$ of the experts' $-F$ (nats)")
axes[1].set_title("how much the experts can separate non-blank states")
axes[1].legend(fontsize=8)
fig.tight_layout()
plt.show()
i10 = np.searchsorted(lams, 10)
print(f"spread at lambda = 10 and {lams[-1]:.0f}: RBM {spread_R[i10]:.1f} -> {spread_R[-1]:.1f} nats; "
      f"Model P {spread_P[i10]:.2f} -> {spread_P[-1]:.2f}; frozen uniform {spread_U[i10]:.2f} -> {spread_U[-1]:.2f}")
assert spread_R[-1] > 10 * spread_P[-1]
assert spread_P[-1] - spread_P[i10] < 2 * 2 * np.log(10)  # at most 2 log(lambda) per expert
assert abs(spread_U[-1] - spread_U[i10]) < 0.5  # frozen: bounded (converging to a limit)

# %% [markdown]
# This is a structural weakness, not a training problem: with $J$ capsules and frozen routing,
# the experts together separate non-blank patterns by a bounded number of nats (set by ratios
# of quadratic forms), however large the weights; routing adds at most $2\log\lambda$ per expert;
# each RBM hidden unit separates them by as many nats as its weights allow. MODEL.md section 8 reports the practical counterpart: trained
# Model P experts moved the sampler's per-pixel field by only about 0.04 to 0.15 logits, and
# the model sampled close to the independent-pixel model.
#
# ## Summary
#
# * (3.1)-(3.2) $E(v,z) = -\alpha\cdot v - \sum_j z_j(\rho_j + \log|s_j|^2)$ makes
#   $p(z_j = 1\mid v) = \sigma(\rho_j + \log|s_j|^2)$, which is $|\mathrm{squash}(s_j)|$ at $\rho = 0$.
# * (3.3) $F(v) = -\alpha\cdot v - \sum_j\log(1 + e^{\rho_j}|s_j|^2)$: a product of capsule experts.
# * (3.5)-(3.7) $\partial F/\partial s$ is smooth; the full gradient goes back through all routing
#   passes; the frozen gradient holds $c$ fixed (and gives $\beta$ nothing). Both matched central
#   differences (relative errors about $10^{-9}$). Their cosine is close to 1 for weak routing and
#   drops as the weights grow.
# * $W = 0$ is a stationary point; near it the gradient is linear in the scale of $W$.
# * A capsule expert contributes the log of a quadratic form; with routing frozen, scaling its
#   weights cannot make it sharper than a ratio of quadratic forms, and routing adds only
#   logarithmic growth. An RBM expert's sharpness grows linearly with its weights.
#
# ## Exercises
#
# 1. (\*) With routing frozen at uniform coefficients, show that scaling $W$ by $\lambda$ is the
#    same as shifting every $\rho_j$ by $2\log\lambda$. Check it with `free_energy` and `n_iter=1`,
#    $\beta = 0$.
# 2. (\*\*) On a tiny model, compute the exact log-likelihood gradient of the mean
#    $\log p(v)$ over a small data set, $-\overline{\partial_\theta F}_{\text{data}} + \mathbb{E}_p[\partial_\theta F]$,
#    by enumerating all $2^6$ states with `free_energy_grad`, and check it against central
#    differences of `model_p.exact_log_marginal`.
# 3. (\*\*\*) Repeat exercise 2 with `mode="frozen"` in both terms and measure the cosine between
#    the frozen and the full log-likelihood gradients for 20 random models at weight scales 0.3
#    and 3. Is the frozen log-likelihood gradient better or worse than the frozen free-energy
#    gradient of section 5?
#
# Solutions are in `solutions.md`.

# %%
print(f"lesson 5 ran in {time.perf_counter() - t_start:.1f} s")
