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
# # Lesson 4: from the Bernoulli RBM to products of experts
#
# **Goal.** Before building capsule models we need the model they generalise: the restricted
# Boltzmann machine (RBM). We derive its conditionals and free energy from its energy, read
# the free energy as a *product of experts* (Hinton, 2002), derive the log-likelihood gradient,
# and then measure, on a model small enough to enumerate, how far the contrastive-divergence
# (CD) approximation of that gradient is from the exact one.
#
# Labels (MODEL.md section 5, `capsnp.rbm`): (5.1) energy, (5.2) and (5.3) conditionals, (5.4) free
# energy, (5.5) Gibbs sweep, (5.6) gradient, (5.8) exact tools.

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

from capsnp import rbm
from capsnp.exact import enumerate_binary, stationary_distance
from capsnp.ops import log_sigmoid
from capsnp.params import RBMParams

FAST = os.environ.get("CAPSNP_FAST", "") not in ("", "0")  # CI sets CAPSNP_FAST=1
t_start = time.perf_counter()

# %% [markdown]
# ## 1. Energy and conditionals (5.1)-(5.3)
#
# A Bernoulli RBM has binary visible units $v \in \{0,1\}^D$, binary hidden units
# $h \in \{0,1\}^H$, and the energy
#
# $$ E(v, h) = -a \cdot v - b \cdot h - v^\top W h, \qquad p(v, h) = \frac{e^{-E(v, h)}}{Z}. \tag{5.1} $$
#
# "Restricted" means there are no visible-visible and no hidden-hidden terms. Fix $v$: the
# energy is a *sum of one term per hidden unit*, $-\sum_k h_k (b_k + (v^\top W)_k)$ plus a
# constant, so the conditional factorises and each factor is a logistic unit:
#
# $$ p(h \mid v) = \prod_k \frac{e^{h_k x_k}}{1 + e^{x_k}},\quad x_k = b_k + \sum_i v_i W_{ik}
#    \quad\Rightarrow\quad p(h_k = 1 \mid v) = \sigma\Big(b_k + \sum_i v_i W_{ik}\Big). \tag{5.2} $$
#
# By the same argument with the roles swapped,
#
# $$ p(v_i = 1 \mid h) = \sigma\Big(a_i + \sum_k W_{ik} h_k\Big). \tag{5.3} $$
#
# Let us check both against brute force: enumerate every $(v, h)$, build the joint table, and
# compute the conditionals by summing it.

# %%
D, H = 5, 3
rng = np.random.default_rng(0)
small = RBMParams(W=rng.normal(0, 1, (D, H)), a=rng.normal(0, 1, D), b=rng.normal(0, 1, H))

Vs = enumerate_binary(D)  # (2^D, D): every visible state
Hs = enumerate_binary(H)  # (2^H, H): every hidden state
E_table = -(Vs @ small.a)[:, None] - (Hs @ small.b)[None, :] - Vs @ small.W @ Hs.T  # (2^D, 2^H)
joint = np.exp(-E_table)
joint /= joint.sum()  # p(v, h), (2^D, 2^H)

p_h_given_v = joint / joint.sum(axis=1, keepdims=True)  # (2^D, 2^H)
p_v_given_h = joint / joint.sum(axis=0, keepdims=True)  # (2^D, 2^H), columns sum to 1
np.testing.assert_allclose(p_h_given_v @ Hs, rbm.hidden_probability(small, Vs), rtol=1e-12)
np.testing.assert_allclose(p_v_given_h.T @ Vs, rbm.visible_probability(small, Hs), rtol=1e-12)
E_pkg = rbm.energy(small, np.repeat(Vs, 2**H, axis=0), np.tile(Hs, (2**D, 1)))  # (2^D 2^H,), v-major
np.testing.assert_allclose(E_pkg.reshape(2**D, 2**H), E_table, rtol=1e-12, atol=1e-12)
# conditional independence: p(h | v) is the product of its marginals
ph = rbm.hidden_probability(small, Vs)  # (2^D, H)
prod = np.prod(np.where(Hs[None] > 0, ph[:, None], 1 - ph[:, None]), axis=2)  # (2^D, 2^H)
np.testing.assert_allclose(p_h_given_v, prod, rtol=1e-12)
print("(5.2), (5.3) equal the conditionals of the enumerated joint; p(h | v) factorises: OK")

# %% [markdown]
# ## 2. Free energy (5.4) and the product of experts
#
# Summing $h$ out, the sum factorises over hidden units ($\sum_{h_k \in \{0,1\}} e^{h_k x_k} = 1 + e^{x_k}$):
#
# $$ \sum_h e^{-E(v,h)} = e^{a\cdot v}\prod_{k=1}^H \big(1 + e^{b_k + v\cdot W_{:k}}\big)
#    =: e^{-F(v)}, \qquad
#    F(v) = -a\cdot v - \sum_k \mathrm{softplus}(b_k + v \cdot W_{:k}). \tag{5.4} $$
#
# So $p(v) = e^{-F(v)}/Z$ with $Z = \sum_v e^{-F(v)}$: a sum over $2^D$ states instead of
# $2^{D+H}$. And read the product: $p(v)$ is proportional to
#
# $$ p(v) \propto \underbrace{e^{a \cdot v}}_{\text{independent pixels}}\;
#    \prod_{k} \underbrace{\big(1 + e^{b_k + v\cdot W_{:k}}\big)}_{\text{expert } k} . $$
#
# This is a **product of experts** (Hinton, 2002): each hidden unit is an expert that
# multiplies the probability of patterns it likes (large $b_k + v\cdot W_{:k}$) by a large
# factor and leaves the others almost alone (factor near 1). A product can be much sharper than
# any of its factors; unlike a mixture, whose components each have to explain a whole image,
# each expert only needs to capture one constraint. In the log domain each expert adds a
# **softplus of a linear form of $v$** to $-F$: remember this shape, lesson 5 replaces it with
# a logarithm of a quadratic form.
#
# Brute-force checks: $F$ by summing the joint table, and $\log Z$ by enumeration. The package
# enumerates the smaller layer (summing the other one out in closed form), so test it both
# with $D \le H$ and $D > H$.

# %%
F_brute = -np.log(np.exp(-E_table).sum(axis=1))  # (2^D,)
np.testing.assert_allclose(rbm.free_energy(small, Vs), F_brute, rtol=1e-12)
logZ_brute = np.log(np.exp(-E_table).sum())
np.testing.assert_allclose(rbm.exact_log_partition(small), logZ_brute, rtol=1e-12)
# the transposed model (D = 3 < H = 5) has the same partition function
flipped = RBMParams(W=small.W.T, a=small.b, b=small.a)
np.testing.assert_allclose(rbm.exact_log_partition(flipped), logZ_brute, rtol=1e-12)
np.testing.assert_allclose(rbm.exact_probability_v(small), joint.sum(axis=1), rtol=1e-12)
print(f"F(v) and log Z = {logZ_brute:.6f} agree with brute force (both enumeration directions): OK")

# %% [markdown]
# ## 3. The log-likelihood gradient (5.6)
#
# For one training image, $\log p(v) = -F(v) - \log Z$, and
# $\partial_\theta \log Z = \frac{1}{Z}\sum_{v'} e^{-F(v')}\,(-\partial_\theta F(v')) = -\mathbb{E}_{v'\sim p}[\partial_\theta F(v')]$. Hence
#
# $$ \frac{\partial \log p(v)}{\partial \theta} = -\frac{\partial F(v)}{\partial \theta}
#    + \mathbb{E}_{v' \sim p}\Big[\frac{\partial F(v')}{\partial \theta}\Big] , \tag{5.6} $$
#
# "data term minus model term". For the RBM, differentiating (5.4) with
# $\mathrm{softplus}' = \sigma$:
#
# $$ -\frac{\partial F}{\partial W_{ik}} = v_i\, \sigma(x_k) = v_i\, p(h_k = 1\mid v), \qquad
#    -\frac{\partial F}{\partial a_i} = v_i, \qquad -\frac{\partial F}{\partial b_k} = p(h_k = 1 \mid v). $$
#
# The data term is cheap. The model term is an expectation under the model, a sum over $2^D$
# states: on a tiny model we can compute it exactly. Below, our own enumeration of the exact
# gradient, checked against `rbm.cd_gradient` with the model weights set to the exact $p(v)$
# (its documented way of computing the exact gradient), and against central differences of
# the exact mean log-likelihood.

# %%
def bars_and_stripes(side=3):
    """All distinct side x side images whose rows are all constant or whose columns are: (N, side^2)."""
    pats = set()
    for bits in enumerate_binary(side).astype(int):
        rows = np.repeat(bits[:, None], side, axis=1)  # every row constant
        pats.add(tuple(rows.ravel()))
        pats.add(tuple(rows.T.ravel()))  # every column constant
    return np.array(sorted(pats), dtype=np.float64)


data = bars_and_stripes(3)  # (14, 9): the classic toy data set
D, H = data.shape[1], 6
print(f"bars and stripes 3x3: {len(data)} patterns of D = {D} pixels; best possible mean "
      f"log-likelihood log(1/{len(data)}) = {-np.log(len(data)):.4f}")
V_all = enumerate_binary(D)  # (512, 9)


def exact_gradient(params, v_data):
    """(5.6) by enumeration: mean over data of -dF, minus the p-weighted mean over all states."""
    p_all = rbm.exact_probability_v(params)  # (2^D,)

    def neg_dF(v, w):  # weighted average of the per-image -dF/dtheta
        ph = rbm.hidden_probability(params, v)  # (N, H)
        return RBMParams(W=np.einsum("n,ni,nk->ik", w, v, ph), a=w @ v, b=w @ ph)

    pos = neg_dF(v_data, np.full(len(v_data), 1.0 / len(v_data)))
    neg = neg_dF(V_all, p_all)
    return RBMParams(*(x - y for x, y in zip(pos, neg)))


def mean_loglik(params, v_data=data):
    return float(rbm.exact_log_marginal(params, v_data).mean())


theta0 = RBMParams(W=rng.normal(0, 0.5, (D, H)), a=np.zeros(D), b=np.zeros(H))
g_mine = exact_gradient(theta0, data)
g_pkg = rbm.cd_gradient(theta0, data, V_all, model_weights=rbm.exact_probability_v(theta0))
for name in RBMParams._fields:
    np.testing.assert_allclose(getattr(g_mine, name), getattr(g_pkg, name), rtol=1e-10, atol=1e-13)


def central_difference(f, x, eps=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        grad[idx] = (f(x + e) - f(x - e)) / (2 * eps)
    return grad


def rel_error(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


errs = {name: rel_error(getattr(g_mine, name),
                        central_difference(lambda x: mean_loglik(theta0._replace(**{name: x})), getattr(theta0, name)))
        for name in RBMParams._fields}
print("exact gradient vs central differences of the exact log-likelihood, relative error:",
      ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
assert max(errs.values()) < 1e-6

# %% [markdown]
# ## 4. Contrastive divergence, and its bias
#
# On real data the model term is intractable. Contrastive divergence (CD-$k$, Hinton 2002)
# replaces the model samples by the states reached after $k$ block Gibbs sweeps (5.5)
# ($h \sim p(h\mid v)$, then $v' \sim p(v' \mid h)$) *started at the data*. Averaged over the
# randomness of the chains, CD-$k$ uses the distribution $\hat p_{\text{data}} K^k$ in place of $p$,
# where $K(v, v') = \sum_h p(h\mid v)\,p(v'\mid h)$ is the sweep's transition matrix:
#
# $$ \mathbb{E}[\,g_{\text{CD-}k}\,] = \big\langle -\partial_\theta F \big\rangle_{\hat p_{\text{data}}}
#    - \big\langle -\partial_\theta F \big\rangle_{\hat p_{\text{data}} K^k} . $$
#
# Because $pK = p$ (the sweep leaves the model invariant), $\hat p_{\text{data}}K^k \to p$ as
# $k \to \infty$, and CD-$k$ becomes exact. For small $k$ it is *biased*: it is not the
# gradient of the likelihood (Carreira-Perpiñán & Hinton, 2005). On our tiny model we can build
# $K$ exactly and measure the bias. First, invariance and a Monte-Carlo check that sampled CD-1
# gradients average to the formula above.

# %%
Hs9 = enumerate_binary(H)  # (2^H, H)


def sweep_tables(params):
    """The two halves of the sweep as tables: P_hv[v, h] = p(h | v), P_vh[h, v'] = p(v' | h)."""
    x = params.b + V_all @ params.W  # (2^D, H) hidden logits of every v
    y = params.a + Hs9 @ params.W.T  # (2^H, D) visible logits of every h
    # log prod_k Bernoulli(h_k; sigmoid(x_k)) for every (v, h) pair, as two matrix products
    P_hv = np.exp(log_sigmoid(x) @ Hs9.T + log_sigmoid(-x) @ (1 - Hs9).T)  # (2^D, 2^H)
    P_vh = np.exp(log_sigmoid(y) @ V_all.T + log_sigmoid(-y) @ (1 - V_all).T)  # (2^H, 2^D)
    return P_hv, P_vh


P_hv, P_vh = sweep_tables(theta0)
K = rbm.exact_transition_matrix(theta0)  # (512, 512)
np.testing.assert_allclose(P_hv @ P_vh, K, rtol=1e-10, atol=1e-15)
p_model = rbm.exact_probability_v(theta0)  # (512,)
assert np.allclose(K.sum(axis=1), 1.0)
print(f"TV distance between p K and p: {stationary_distance(p_model, K):.1e}")
assert stationary_distance(p_model, K) < 1e-12

state_index = (data @ (2 ** np.arange(D))).astype(int)  # row of each data image in V_all
p_data = np.bincount(state_index, minlength=2**D) / len(data)  # (512,) empirical distribution


def expected_cd_gradient(params, k):
    """E[CD-k gradient] = <-dF>_data - <-dF>_{p_data K^k}, K = P_hv P_vh the exact sweep kernel."""
    P_hv, P_vh = sweep_tables(params)
    q = p_data.copy()  # (2^D,)
    for _ in range(k):
        q = (q @ P_hv) @ P_vh  # distribution of the chains after one more sweep
    return rbm.cd_gradient(params, data, V_all, model_weights=q)


g_cd1 = expected_cd_gradient(theta0, 1)
n_rep = 200 if FAST else 2000
rng_mc = np.random.default_rng(1)
v_rep = np.repeat(data, n_rep, axis=0)  # (14 n_rep, D): every image, n_rep chains each
v1, _ = rbm.gibbs_sweep(theta0, v_rep, rng_mc)
g_mc = rbm.cd_gradient(theta0, v_rep, v1)  # one sampled CD-1 estimate per chain, averaged
dev = np.max(np.abs(g_mc.W - g_cd1.W))
print(f"sampled CD-1 ({len(v_rep)} chains) vs its exact expectation: max |difference| in dW = {dev:.4f}")
assert dev < 6 / np.sqrt(len(v_rep))  # Monte-Carlo error is O(1/sqrt(n)); the statistics are in [0, 1]

# %% [markdown]
# Now the bias at our random starting point: how well does the expected CD-$k$ gradient point
# in the direction of the exact gradient, and how large is the error relative to the gradient?

# %%
def flat(g):
    return np.concatenate([x.ravel() for x in g])


def cosine(x, y):
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


g_exact = flat(exact_gradient(theta0, data))
print(" k   cosine(E[CD-k], exact)   |E[CD-k] - exact| / |exact|")
for k in (1, 2, 5, 20, 100):
    g_k = flat(expected_cd_gradient(theta0, k))
    print(f"{k:3d}   {cosine(g_k, g_exact):22.4f}   {np.linalg.norm(g_k - g_exact) / np.linalg.norm(g_exact):27.4f}")

# %% [markdown]
# At a random start the CD direction is good. The bias matters *later*: training drives the
# CD gradient to zero, and a zero of the CD-1 gradient is not a zero of the likelihood
# gradient. Let us train the same tiny RBM from the same start with (a) the exact gradient,
# (b) the expected CD-1 gradient and (c) the expected CD-5 gradient (expected values, so the
# comparison has no sampling noise), plain gradient ascent, and record the exact
# log-likelihood.

# %%
n_steps = 400 if FAST else 1500
lr = 0.5
rule = {"exact": lambda th: exact_gradient(th, data),
        "CD-1": lambda th: expected_cd_gradient(th, 1),
        "CD-5": lambda th: expected_cd_gradient(th, 5)}
curves, final = {}, {}
for name, grad_fn in rule.items():
    th = theta0
    ll = []
    for step in range(n_steps):
        g = grad_fn(th)
        th = RBMParams(*(x + lr * gx for x, gx in zip(th, g)))
        if step % 10 == 0 or step == n_steps - 1:
            ll.append((step, mean_loglik(th)))
    curves[name], final[name] = np.array(ll), th

print("rule   final log-lik   |exact grad|   |own rule's grad|   cosine(own rule, exact)")
for name, th in final.items():
    g_ex = flat(exact_gradient(th, data))
    g_own = flat(rule[name](th))
    print(f"{name:5s}  {mean_loglik(th):13.4f}   {np.linalg.norm(g_ex):12.4f}   "
          f"{np.linalg.norm(g_own):17.4f}   {cosine(g_own, g_ex):23.4f}")
assert mean_loglik(final["exact"]) > mean_loglik(theta0)
assert mean_loglik(final["exact"]) > mean_loglik(final["CD-1"])

# %%
fig, ax = plt.subplots(figsize=(6.5, 4))
for name, c in curves.items():
    ax.plot(c[:, 0], c[:, 1], label=name)
ax.axhline(-np.log(len(data)), color="gray", ls="--", lw=1, label="best possible, log(1/14)")
ax.set_xlabel("gradient step")
ax.set_ylabel("exact mean log-likelihood (nats)")
ax.set_title(f"RBM D={D}, H={H} on 3x3 bars and stripes")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The printed norms tell the story: the CD-1-trained model sits where its own rule's
# gradient is small while the exact gradient there is large (and points elsewhere: see the
# cosine), and its likelihood is lower than what exact training reaches. CD-5 is in between. The same effect, at full
# scale, is behind the MNIST numbers in MODEL.md section 5 (CD-1 about $-125.5$, CD-25 about
# $-86.3$ nats for a 500-hidden-unit RBM).

# %% [markdown]
# ## Summary
#
# * (5.1)-(5.3) No connections within a layer, so each layer given the other factorises into
#   logistic units.
# * (5.4) $F(v) = -a\cdot v - \sum_k \mathrm{softplus}(b_k + v\cdot W_{:k})$: $p(v)$ is a product of
#   experts, one per hidden unit; each adds a softplus of a linear form to $-F$.
# * (5.6) $\partial_\theta\log p(v) = -\partial_\theta F(v) + \mathbb{E}_p[\partial_\theta F]$;
#   the exact version (enumeration) matched central differences to about $10^{-9}$.
# * CD-$k$ replaces $p$ by $\hat p_{\text{data}}K^k$. Its expectation was checked against
#   sampled CD-1; its bias was measured exactly: small at a random start, decisive at the
#   end of training, where CD-1 settles at a lower likelihood than exact training.
#
# ## Exercises
#
# 1. (\*) With $H = 0$ the RBM is the independent-pixel model $p(v) = \prod_i \sigma(a_i)^{v_i}\sigma(-a_i)^{1-v_i}$.
#    Show that its maximum-likelihood biases are $a_i = \log\frac{m_i}{1-m_i}$ with $m_i$ the
#    mean of pixel $i$ in the data. (This "base-rate" model is where AIS starts, lesson 9.)
# 2. (\*\*) Show that the block Gibbs sweep is reversible as a chain on $v$ alone:
#    $p(v)K(v,v') = p(v')K(v',v)$. Check it numerically with `rbm.exact_transition_matrix`, and
#    check that each half-step kernel of `rbm.exact_block_kernels` satisfies detailed balance
#    with respect to `rbm.exact_probability_vh`.
# 3. (\*\*\*) Persistent CD (PCD) keeps the chains running between parameter updates instead
#    of restarting them at the data. Train the tiny RBM above with *sampled* PCD-1 (100
#    persistent chains) and with sampled CD-1 for the same number of steps, and compare their
#    final exact log-likelihoods with the curves above.
#
# Solutions are in `solutions.md`.

# %%
print(f"lesson 4 ran in {time.perf_counter() - t_start:.1f} s")
