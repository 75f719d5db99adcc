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
# # Lesson 13: Model R with assignment biases
#
# **Goal.** Model R (lesson 7) couples child $i$ to the parent it is routed to through one term,
# the agreement $h_{a_i}\cdot\hat u_{a_i\mid i}$ with the prediction $\hat u_{j\mid i} = W_{ij}v_i$ (4.1). Two
# consequences of that energy show up on MNIST, and both concern the blank patches, those with
# no pixel on:
#
# * **Blank patches route by the prior only.** A blank patch has $v_i = 0$, so
#   $\hat u_{j\mid i} = W_{ij}\,0 = 0$ for every parent $j$, and its routing posterior (4.3) is
#   $p(a_i = j\mid v, h) = \mathrm{softmax}_j(\beta_{ij})$ whatever $h$ is. About two thirds of the 4x4
#   patches of an MNIST digit are blank (measured in section 5). Under Model R they carry no
#   information about which parent explains them, and their zero predictions add nothing to the
#   hidden input (4.4).
# * **A capsule spends weights to keep a patch blank.** Given $(h, a)$, pixel $l$ of child $i$ is on
#   with probability $\sigma\big(\alpha_{il} + (W_{i a_i}^\top h_{a_i})_l\big)$ (4.5). The bias $\alpha_{il}$ is
#   shared by all parents; the only term that depends on which parent explains the patch is
#   $W_{ij}^\top h_j$. With $\beta = 0$ (the estimator's default) each blank patch goes to each of two
#   capsules with probability 1/2, including at positions a capsule does not model. There the
#   capsule can keep the patch blank only by making $W_{ij}^\top h_j$ negative, i.e. with weights
#   that explain nothing.
#
# **Why centring does not help.** Centring an RBM (Montavon & Müller, 2012) replaces its
# interaction $v^\top W h$ by $(v - m)^\top W (h - l)$ with fixed offsets $m$ and $l$. Expanded,
# $(v-m)^\top W(h-l) = v^\top W h - v\cdot(Wl) - (W^\top m)\cdot h + m^\top W l$: a term in $v$ alone, a term in
# $h$ alone and a constant. They move into the visible biases, the hidden biases and $\log Z$;
# the centred RBM is the same family of distributions under other coordinates, a
# reparametrisation. In Model R the interaction of child $i$ carries the indicator $[a_i = j]$, and
# so does every term of its expansion:
#
# $$ [a_i = j]\,(h_j - l_j)^\top W_{ij}(v_i - m_i) = [a_i = j]\Big(h_j^\top W_{ij}v_i - (W_{ij}^\top l_j)\cdot v_i
#    - h_j\cdot(W_{ij}m_i) + l_j^\top W_{ij}m_i\Big). $$
#
# The last term is a constant for each $(i, j)$ and moves into $\beta_{ij}$. The two middle terms
# depend on the assignment: a visible bias of child $i$ that acts only when parent $j$ explains
# it, and a bias on the prediction of parent $j$ from child $i$. Energy (4.1) has neither, so a
# centred Model R is a different model: the model below, with those two biases tied to $W$
# ($A_{ij} = -W_{ij}^\top l_j$, $C_{ij} = -W_{ij}m_i$; exercise 2). This lesson frees them.
#
# **The energy.** With prediction biases $C_{ij}\in\mathbb{R}^{d_h}$ (shape (I, J, d_h)) and assignment
# visible biases $A_{ij}\in\mathbb{R}^{d_v}$ (shape (I, J, d_v)),
#
# $$ E(v, h, a) = -\alpha\cdot v - \gamma\cdot h - \sum_i\Big[\beta_{i a_i} + A_{i a_i}\cdot v_i
#    + h_{a_i}\cdot\big(W_{i a_i}v_i + C_{i a_i}\big)\Big]. \tag{4b.1} $$
#
# $C = A = 0$ is Model R. Equivalently, every visible capsule has an always-on unit whose weights
# are $C$, and every hidden capsule one whose weights are $A$. Each term of the sum still belongs
# to one child and is linear in $h_{a_i}$ and in $v_i$, so every derivation of lesson 7 goes through
# with two substitutions:
#
# $$ \hat u_{j\mid i} = W_{ij}v_i + C_{ij} \qquad\text{(prediction)}, \tag{4b.2} $$
#
# $$ b_{ij}(v) = \beta_{ij} + A_{ij}\cdot v_i \qquad\text{(prior routing logit)}. \tag{4b.3} $$
#
# The routing posterior (4.3) becomes $\mathrm{softmax}_j\big(b_{ij}(v) + \hat u_{j\mid i}\cdot h_j\big)$; for a blank
# patch that is $\mathrm{softmax}_j(\beta_{ij} + C_{ij}\cdot h_j)$, which depends on $h$. The hidden conditional
# (4.4) keeps its form with $C$ inside $\hat u$: a parent is pushed by the biases of every child
# routed to it, blank or not. The visible conditional gains the term that lets a capsule keep a
# patch blank with $d_v$ numbers instead of its weights:
#
# $$ p(v_{il} = 1\mid h, a) = \sigma\big(\alpha_{il} + A_{i a_i, l} + (W_{i a_i}^\top h_{a_i})_l\big). \tag{4b.4} $$
#
# Mean field (4.6), the Gibbs sweep (4.7) and $\log\tilde p(v, a)$ with $h$ summed out (4.9) take the
# same two substitutions; mean field now starts from $\mathrm{softmax}_j(b_{ij}(v))$, the routing at $h = 0$.
# Section 3 derives the gradient (4b.5).
#
# Labels (docs/MODEL_RB.md, `capsnp.model_r`): (4b.1) `energy`, (4b.2) `prediction`, (4b.3)
# `prior_logits`, (4b.4) `visible_probability`, (4b.5) `bias_statistics`, (4b.6) `tied_gradient`
# (section 6), (4b.7) `RoutedCapsuleRBM(posterior_sweeps=k)` (section 7), (4b.11)
# `training.sparsity_gradient` (section 10); lesson 7's (4.1)-(4.9)
# for the rest. The parameters live in `capsnp.params.RBParams(W, alpha, gamma, beta, C, A)`,
# which every function of `capsnp.model_r` accepts in place of `RParams`.

# %%
import os
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
from scipy.special import logsumexp

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
from capsnp import model_r as mr
from capsnp import rbm
from capsnp.capsules import to_capsules
from capsnp.estimators import RoutedCapsuleRBM, mean_field_elbo
from capsnp.exact import enumerate_assignments, enumerate_binary, stationary_distance
from capsnp.ops import sigmoid, softmax
from capsnp.params import RBMParams, RBParams, RParams

FAST = os.environ.get("CAPSNP_FAST", "") not in ("", "0")  # CI sets CAPSNP_FAST=1
t_start = time.perf_counter()


def random_rbparams(rng, I=3, d_v=2, J=2, d_h=2, scale=1.0):
    """A tiny Model R with assignment biases, every parameter random.

    W (I, J, d_h, d_v), alpha (I, d_v), gamma (J, d_h), beta (I, J), C (I, J, d_h), A (I, J, d_v).
    """
    return RBParams(W=rng.normal(0.0, scale, (I, J, d_h, d_v)), alpha=rng.normal(0.0, 1.0, (I, d_v)),
                    gamma=rng.normal(0.0, 1.0, (J, d_h)), beta=rng.normal(0.0, 1.0, (I, J)),
                    C=rng.normal(0.0, 1.0, (I, J, d_h)), A=rng.normal(0.0, 1.0, (I, J, d_v)))

# %% [markdown]
# ## 1. A blank patch, with and without assignment biases
#
# A tiny model: $I = 3$ children of $d_v = 2$ pixels, $J = 2$ parents of $d_h = 2$ units, every
# parameter random. `plain` is the same model with $C = A = 0$, i.e. Model R. One image whose
# child 0 is blank; two hidden states, $h = 0$ and $h \ne 0$. The routing posterior (4.3) of
# Model R for child 0 is $\mathrm{softmax}(\beta_0)$ for both; with the biases it is
# $\mathrm{softmax}_j(\beta_{0j} + C_{0j}\cdot h_j)$ ((4b.2) and (4b.3) with $v_0 = 0$: $A_{0j}\cdot v_0 = 0$),
# which moves with $h$. Child 1 is not blank; its posterior depends on $h$ in both models.

# %%
rng = np.random.default_rng(0)
p = random_rbparams(rng)  # I = 3, d_v = 2, J = 2, d_h = 2
plain = RParams(p.W, p.alpha, p.gamma, p.beta)  # the same W, alpha, gamma, beta with C = A = 0
I, J, d_h, d_v = p.W.shape
v = np.array([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]])  # (1, I, d_v): child 0 blank
h_states = {"h = 0": np.zeros((1, J, d_h)),  # (1, J, d_h)
            "h = [[1, 1], [0, 1]]": np.array([[[1.0, 1.0], [0.0, 1.0]]])}  # (1, J, d_h)

print(f"softmax(beta_0) = {np.round(softmax(p.beta[0]), 4)}")
post = {}
for name, q in (("Model R", plain), ("with C, A", p)):
    for hname, h in h_states.items():
        R = mr.routing_posterior(q, v, h)[0]  # (I, J)
        post[name, hname] = R
        print(f"{name:9s}, {hname:20s}: p(a_0 | v, h) = {np.round(R[0], 4)} (blank), "
              f"p(a_1 | v, h) = {np.round(R[1], 4)}")

for hname, h in h_states.items():
    # Model R: the blank child routes by the prior, for every h
    np.testing.assert_allclose(post["Model R", hname][0], softmax(p.beta[0]), rtol=1e-15, atol=1e-15)
    # with the biases: softmax_j(beta_0j + C_0j . h_j), written out
    naive = softmax(p.beta[0] + np.einsum("jk,jk->j", p.C[0], h[0]))  # (J,)
    np.testing.assert_allclose(post["with C, A", hname][0], naive, rtol=1e-14)
names = list(h_states)
assert not np.allclose(post["with C, A", names[0]][0], post["with C, A", names[1]][0])
print("blank child: Model R routes by softmax(beta) for both h; with C the routing moves with h: OK")

# %% [markdown]
# ## 2. The energy (4b.1) and the three conditionals, by enumeration
#
# The energy written out one state at a time with loops, and the two substitutions (4b.2),
# (4b.3) written out with `einsum`, each checked against the package function. The tiny model
# has $2^6 \times 2^4 \times 2^3 = 8192$ joint states $(v, h, a)$; the table $e^{-E}$ over all of
# them gives every conditional by normalising over one block, as in lesson 7:
#
# * R: $p(a\mid v, h) = \prod_i \mathrm{softmax}_j\big(b_{ij}(v) + \hat u_{j\mid i}\cdot h_j\big)_{a_i}$ (4.3 with 4b.2, 4b.3);
# * U: $p(h_{jk} = 1\mid v, a) = \sigma\big(\gamma_{jk} + \sum_{i:\,a_i = j}\hat u_{j\mid i,k}\big)$ (4.4 with 4b.2);
# * D: $p(v_{il} = 1\mid h, a)$ (4b.4).

# %%
def naive_energy(params, v, h, a):
    """(4b.1) for one state: v (I, d_v), h (J, d_h), a (I,) ints."""
    W, alpha, gamma, beta, C, A = params
    e = -np.sum(alpha * v) - np.sum(gamma * h)
    for i, j in enumerate(a):
        e -= beta[i, j] + A[i, j] @ v[i] + h[j] @ (W[i, j] @ v[i] + C[i, j])
    return e


def bernoulli_table(x, prob):
    """prod_k prob^x (1 - prob)^(1 - x) for every pair: x (M, K) binary, prob (N, K) -> (N, M)."""
    return np.prod(np.where(x[None] > 0.5, prob[:, None], 1.0 - prob[:, None]), axis=-1)  # (N, M)


Vs = enumerate_binary(I * d_v).reshape(-1, I, d_v)  # (64, I, d_v)
Hs = enumerate_binary(J * d_h).reshape(-1, J, d_h)  # (16, J, d_h)
As = enumerate_assignments(I, J)  # (8, I): child 0 varies fastest
Nv, Nh, Na = len(Vs), len(Hs), len(As)

# (4b.2) and (4b.3), written out
u_naive = np.einsum("ijkl,bil->bijk", p.W, Vs) + p.C  # (Nv, I, J, d_h)
np.testing.assert_allclose(mr.prediction(p, Vs), u_naive, rtol=1e-14, atol=1e-15)
b_naive = p.beta + np.einsum("ijl,bil->bij", p.A, Vs)  # (Nv, I, J)
np.testing.assert_allclose(mr.prior_logits(p, Vs), b_naive, rtol=1e-14, atol=1e-15)

# (4b.1) over every joint state
L = -np.array([[[naive_energy(p, v, h, a) for a in As] for h in Hs] for v in Vs])  # (Nv, Nh, Na): -E
vg = np.repeat(Vs, Nh * Na, axis=0)  # (Nv Nh Na, I, d_v)
hg = np.tile(np.repeat(Hs, Na, axis=0), (Nv, 1, 1))  # (Nv Nh Na, J, d_h)
ag = np.tile(As, (Nv * Nh, 1))  # (Nv Nh Na, I)
np.testing.assert_allclose(-mr.energy(p, vg, hg, ag), L.ravel(), rtol=1e-12, atol=1e-12)
log_Z = np.logaddexp.reduce(L.ravel())
joint = np.exp(L - log_Z)  # (Nv, Nh, Na): p(v, h, a)
print(f"{Nv} x {Nh} x {Na} = {Nv * Nh * Na} joint states; naive (4b.1), (4b.2), (4b.3) equal the package: OK")

# R: p(a | v, h), normalised over a
resp = mr.routing_posterior(p, np.repeat(Vs, Nh, 0), np.tile(Hs, (Nv, 1, 1)))  # (Nv Nh, I, J)
table = np.prod(resp[:, np.arange(I)[None, :], As], axis=-1).reshape(Nv, Nh, Na)  # prod_i R_{i a_i}
np.testing.assert_allclose(table, joint / joint.sum(axis=2, keepdims=True), rtol=1e-10)
# U: p(h | v, a), normalised over h
probs = mr.hidden_probability(p, np.repeat(Vs, Na, 0), np.tile(As, (Nv, 1)))  # (Nv Na, J, d_h)
table = bernoulli_table(Hs.reshape(Nh, -1), probs.reshape(Nv * Na, -1)).reshape(Nv, Na, Nh)  # (Nv, Na, Nh)
np.testing.assert_allclose(table, (joint / joint.sum(axis=1, keepdims=True)).transpose(0, 2, 1), rtol=1e-10)
# D: p(v | h, a), normalised over v (4b.4)
probs = mr.visible_probability(p, np.repeat(Hs, Na, 0), np.tile(As, (Nh, 1)))  # (Nh Na, I, d_v)
table = bernoulli_table(Vs.reshape(Nv, -1), probs.reshape(Nh * Na, -1)).reshape(Nh, Na, Nv)  # (Nh, Na, Nv)
np.testing.assert_allclose(table, (joint / joint.sum(axis=0, keepdims=True)).transpose(1, 2, 0), rtol=1e-10)
# (4.9) with h summed out, and log Z
log_va = mr.log_joint_va(p, np.repeat(Vs, Na, 0), np.tile(As, (Nv, 1))).reshape(Nv, Na)  # (Nv, Na)
np.testing.assert_allclose(log_va, np.logaddexp.reduce(L, axis=1), rtol=1e-12)
np.testing.assert_allclose(mr.exact_log_partition(p), log_Z, rtol=1e-12)
print(f"R (4.3), U (4.4), D (4b.4) and (4.9) equal the enumerated joint; log Z = {log_Z:.6f}: OK")

# %% [markdown]
# ## 3. The gradient (4b.5)
#
# For any parameter $\theta$, $\log p(v) = \log\sum_{h,a}e^{-E(v,h,a)} - \log Z$, so (as (5.6) for
# the RBM and (4.8) for Model R)
#
# $$ \frac{\partial\log p(v)}{\partial\theta} = \mathbb{E}_{p(h,a\mid v)}\Big[-\frac{\partial E}{\partial\theta}\Big]
#    - \mathbb{E}_{p(v,h,a)}\Big[-\frac{\partial E}{\partial\theta}\Big]. $$
#
# In (4b.1), $C_{ij}$ and $A_{ij}$ appear only in child $i$'s term, and only when $a_i = j$, multiplied
# by $h_j$ and by $v_i$:
#
# $$ -\frac{\partial E}{\partial C_{ij}} = [a_i = j]\,h_j, \qquad -\frac{\partial E}{\partial A_{ij}} = [a_i = j]\,v_i. \tag{4b.5} $$
#
# Given $(v, h)$, the expectation of the indicator is the routing posterior,
# $\mathbb{E}[[a_i = j]\mid v, h] = R_{ij}(v, h)$ (4.3), so both expectations can be taken over $(v, h)$
# with the indicator replaced by $R_{ij}$ (Rao-Blackwellisation over $a$, as in (4.8)). The
# statistics are $R_{ij}h_j$ for $C$ and $R_{ij}v_i$ for $A$; `model_statistics(params, v, h, resp,
# weights)` returns them (with those of $W$, $\alpha$, $\gamma$, $\beta$) averaged with the given weights.
# In training, the data side uses the mean-field $c_{ij}\mu_j$ and $c_{ij}v_i$; here both sides are
# exact:
#
# * data: weights $p(h\mid v_b)/B$ over every $h$, for each of $B = 5$ data vectors $v_b$;
# * model: weights $p(v, h)$ over every $(v, h)$.
#
# First the $C$ and $A$ statistics from the joint table with the indicator itself (no
# Rao-Blackwellisation), then the whole gradient against central differences of the exact mean
# log-likelihood, in float64, for all six parameters.

# %%
p_vh = mr.exact_probability_vha(p).reshape(Nv, Nh, Na).sum(axis=2)  # (Nv, Nh): p(v, h)
np.testing.assert_allclose(p_vh, joint.sum(axis=2), rtol=1e-12)
data_index = np.random.default_rng(1).integers(0, Nv, size=5)  # (5,) data vectors
B = len(data_index)
p_h_given_v = p_vh[data_index] / p_vh[data_index].sum(axis=1, keepdims=True)  # (B, Nh)
Vd, Hd = np.repeat(Vs[data_index], Nh, axis=0), np.tile(Hs, (B, 1, 1))  # (B Nh, I, d_v), (B Nh, J, d_h)
data_term = mr.model_statistics(p, Vd, Hd, mr.routing_posterior(p, Vd, Hd), weights=p_h_given_v.ravel() / B)
Vg, Hg = np.repeat(Vs, Nh, axis=0), np.tile(Hs, (Nv, 1, 1))  # (Nv Nh, I, d_v), (Nv Nh, J, d_h)
model_term = mr.model_statistics(p, Vg, Hg, mr.routing_posterior(p, Vg, Hg), weights=p_vh.ravel())
assert isinstance(model_term, RBParams)  # the container of the params: C and A included

# (4b.5) with the indicator [a_i = j], summed over the enumerated joint
onehot = (As[:, :, None] == np.arange(J)).astype(float)  # (Na, I, J): [a_i = j]
posterior = joint[data_index] / joint[data_index].sum(axis=(1, 2), keepdims=True)  # (B, Nh, Na): p(h, a | v_b)
np.testing.assert_allclose(data_term.C, np.einsum("bha,aij,hjk->ijk", posterior, onehot, Hs) / B, rtol=1e-10)
np.testing.assert_allclose(data_term.A, np.einsum("bha,aij,bil->ijl", posterior, onehot, Vs[data_index]) / B,
                           rtol=1e-10, atol=1e-15)
np.testing.assert_allclose(model_term.C, np.einsum("vha,aij,hjk->ijk", joint, onehot, Hs), rtol=1e-10)
np.testing.assert_allclose(model_term.A, np.einsum("vha,aij,vil->ijl", joint, onehot, Vs), rtol=1e-10)
print("statistics of C and A with R_ij equal those with the indicator [a_i = j]: OK")

grad = RBParams(*(d - m for d, m in zip(data_term, model_term)))  # exact gradient of mean log p(v_b)


def central_difference(f, params, eps=1e-5):
    """Central differences of a scalar f(params), one entry at a time; same container as params."""
    grads = []
    for name, x in params._asdict().items():
        g = np.zeros_like(x)  # the shape of this parameter
        for idx in np.ndindex(x.shape):
            up, down = x.copy(), x.copy()
            up[idx] += eps
            down[idx] -= eps
            g[idx] = (f(params._replace(**{name: up})) - f(params._replace(**{name: down}))) / (2 * eps)
        grads.append(g)
    return type(params)(*grads)


fd = central_difference(lambda q: np.mean(mr.exact_log_marginal(q, Vs[data_index])), p)
rel = {name: np.max(np.abs(g - f)) / np.max(np.abs(f)) for name, g, f in zip(RBParams._fields, grad, fd)}
for name in RBParams._fields:
    print(f"  {name:5s} max |gradient| {np.max(np.abs(getattr(fd, name))):.4f}, "
          f"max |exact - finite difference| / max |finite difference| = {rel[name]:.1e}")
print(f"max relative error over the six parameters: {max(rel.values()):.1e}")
assert max(rel.values()) < 1e-6

# %% [markdown]
# ## 4. The 3-block Gibbs sweep leaves $p(v, a)$ invariant
#
# The sweep (4.7) draws $h\sim$ U (4.4), then $a\sim$ R (4.3), then $v\sim$ D (4b.4), each from its
# exact conditional under (4b.1), so each block, and hence the sweep, leaves $p(v, h, a)$
# invariant. Because $h$ is drawn first, the sweep is a Markov chain on $(v, a)$;
# `exact_transition_matrix` builds its $512\times 512$ kernel
# $K((v, a)\to(v', a')) = \sum_h p(h\mid v, a)\,p(a'\mid v, h)\,p(v'\mid h, a')$, and we check $\pi K = \pi$ for
# $\pi(v, a) = p(v, a)$ (4.9). For contrast, Model R's kernel (`plain`: the sweep that ignores $C$ and
# $A$) does not leave this $\pi$ invariant.

# %%
pi = mr.exact_probability_va(p)  # (Nv Na,): index iv * Na + ia
np.testing.assert_allclose(pi, joint.sum(axis=1).ravel(), rtol=1e-10)  # h summed out of the table
K = mr.exact_transition_matrix(p)  # (Nv Na, Nv Na)
np.testing.assert_allclose(K.sum(axis=1), 1.0, atol=1e-12)
distance = stationary_distance(pi, K)
distance_plain = stationary_distance(pi, mr.exact_transition_matrix(plain))
print(f"0.5 |pi K - pi|_1 = {distance:.1e} for the sweep of (4b.1); "
      f"{distance_plain:.3f} for Model R's sweep (C = A = 0)")
assert distance < 1e-12
assert distance_plain > 1e-3

# %% [markdown]
# ## 5. On MNIST: where do blank patches go?
#
# Two small models on the embedded MNIST subset, with the same settings as lesson 12's Model R
# (2 capsules of 50 units on 4x4 patches, PCD with 100 chains, momentum 0.5, $\beta$ fixed at 0),
# one plain and one with `assignment_biases=True`: 2,000 images for 2 epochs with `CAPSNP_FAST`,
# 5,000 for 3 epochs without (a second or two each). These runs are far too short to produce good
# models; they are long enough to show what the biases change about routing.
#
# On held-out images, take the mean-field routing $c$ (4.6) of every blank patch and compare it
# with the prior $\mathrm{softmax}(\beta_i)$. For the plain model the two must be equal: every
# prediction of a blank patch is exactly zero, so every update of (4.6) gives back
# $\mathrm{softmax}(\beta_i)$ (asserted to $10^{-12}$). With the biases, a blank patch's routing is
# $\mathrm{softmax}_j(\beta_{ij} + C_{ij}\cdot\mu_j)$ and follows the rest of the image through $\mu$. We count the
# blank patches whose $c$ differs from the prior by more than 0.01.
#
# That count mixes two things. $C_{ij}\cdot\mu_j$ can move the routing of all blank patches at one
# position the same way, a learned prior per position (which a plain Model R could also learn
# in $\beta$, with `learn_prior=True`), or differently from image to image, which only the biases
# can do. So we also count the blank patches whose $c$ differs by more than 0.01 from the mean $c$
# of the blank patches at the same position (over the held-out images).

# %%
X_raw, _ = datasets.load_dataset("embedded", "train")  # (10000, 784) uint8
X_test_raw, _ = datasets.load_dataset("embedded", "test")  # (2000, 784) uint8
n_train = 2000 if FAST else 5000
n_epochs = 2 if FAST else 3
n_test = 500 if FAST else 2000
X = datasets.binarize(X_raw[:n_train], "stochastic", random_state=0)  # (n_train, 784)
X_test = datasets.binarize(X_test_raw[:n_test], "stochastic", random_state=1)  # (n_test, 784)
V_test = to_capsules(X_test, (28, 28), 4)  # (n_test, 49, 16)
blank = V_test.sum(axis=-1) == 0  # (n_test, 49): patches with no pixel on
print(f"{blank.mean():.1%} of the {blank.size} patches of {n_test} held-out images are blank")

models = {}
for biases in (False, True):
    t0 = time.perf_counter()
    est = RoutedCapsuleRBM(n_capsules=2, capsule_dim=50, patch=4, n_chains=100, momentum=0.5,
                           n_iter=n_epochs, assignment_biases=biases, random_state=0).fit(X)
    models[biases] = est
    print(f"assignment_biases={biases!s:5s}: {n_epochs} epochs on {n_train} images in "
          f"{time.perf_counter() - t0:.1f} s")


def fitted_params(est):
    """The estimator's parameters as RBParams (with C_, A_) or RParams."""
    if est.assignment_biases:
        return RBParams(est.W_, est.alpha_, est.gamma_, est.beta_, est.C_, est.A_)
    return RParams(est.W_, est.alpha_, est.gamma_, est.beta_)


routing = {}
for biases, est in models.items():
    q = fitted_params(est)
    c, mu, _ = mr.mean_field(q, V_test, tol=est.routing_tol, max_iter=est.max_routing)  # (n_test, 49, J), ...
    prior = softmax(q.beta, axis=-1)  # (49, J)
    deviation = np.max(np.abs(c - prior), axis=-1)  # (n_test, 49): max_j |c_ij - softmax(beta_i)_j|
    routing[biases] = c
    moved = np.mean(deviation[blank] > 0.01)
    n_blank = blank.sum(axis=0)  # (49,): blank patches at each position
    position_mean = np.einsum("bi,bij->ij", blank, c) / np.maximum(n_blank, 1)[:, None]  # (49, J)
    spread = np.max(np.abs(c - position_mean), axis=-1)  # (n_test, 49): distance to the position's mean
    print(f"assignment_biases={biases!s:5s}: {moved:.1%} of blank patches have |c - softmax(beta)| > 0.01 "
          f"(largest {deviation[blank].max():.3f}); {np.mean(spread[blank] > 0.01):.1%} differ by more than "
          f"0.01 from the mean c of blank patches at their position (largest {spread[blank].max():.3f})")
    if not biases:
        assert np.all(deviation[blank] < 1e-12)  # u_hat = W 0 = 0: the prior, for every image

# %% [markdown]
# The figure shows, for six held-out digits, the mean-field probability $c_{i1}$ that each patch
# is routed to capsule 1: top the image, middle the plain model, bottom the model with assignment
# biases. In the middle row every blank patch sits at $\mathrm{softmax}(0) = 1/2$, one uniform colour
# around the digit; only the patches with ink are routed. In the bottom row the blank patches are
# routed too: after these short runs mostly by their position (the same pattern of colours around
# every digit), and to a much smaller degree by the image (the second count printed above, with
# deviations from a few hundredths to about a tenth at most).

# %%
fig, axes = plt.subplots(3, 6, figsize=(9, 4.8))
for col in range(6):
    axes[0, col].imshow(X_test[col].reshape(28, 28), cmap="gray_r")  # (28, 28)
    for row, biases in ((1, False), (2, True)):
        im = axes[row, col].imshow(routing[biases][col, :, 1].reshape(7, 7), cmap="coolwarm",
                                   vmin=0.0, vmax=1.0)  # (7, 7): c_{i1} on the grid of patches
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 0].set_ylabel("image")
axes[1, 0].set_ylabel("Model R")
axes[2, 0].set_ylabel("with C, A")
fig.colorbar(im, ax=axes[1:].ravel().tolist(), shrink=0.8, label="c_i1")
fig.suptitle("mean-field routing to capsule 1 of each 4x4 patch")
plt.show()

# %% [markdown]
# How much of the blank-patch routing moves after so short a run, and how much of that is
# position rather than image, depends on the run; what does not depend on it is the plain model's
# zero (asserted above): Model R cannot route a blank patch by anything but $\beta$, at any stage of
# training. Whether the freed routing buys likelihood takes longer training and AIS (lesson 9),
# which handles the biases by scaling $W$, $C$ and $A$ together along its path
# (docs/MODEL_RB.md, "Evaluation"). docs/results.md section 8 has the answer for two capsules of
# 250 units trained for 100 epochs on all of MNIST with the RBM-500's recipe: -95.4 nats per test
# image with the biases against -101.8 without (the RBM-500: -90.5), the share of weights that
# get no data statistic down from 40% to 25%, and fresh chains from noise that are clean,
# readable digits where the plain model's are malformed.
#
# ## 6. Tied weights: J instances of one capsule type (4b.6)
#
# At the RBM-500's weight budget, two untied capsules of 250 units each reach a pixel with only
# 250 hidden units, and docs/results.md (section 10) measures what that costs: the two-capsule
# model is no better than an RBM-250, one of its capsules alone; under the best recipe found
# (section 27: 200 epochs, 300 persistent chains, averaged parameters) the two are still level,
# -88.87 against -88.88 nats over three seeds, with the RBM-500 at -85.91. Tying the parents' weights,
# $W_{ij} = \theta_i$ for every $j$ (`tie_weights=True`), keeps $I d_v d_h$ weights for any $J$: with
# $J = 2$ and $d_h = 500$ the RBM-500's 392,000. The parents become two instances of one capsule
# type, each with its own hidden state $h_j$; each patch is explained by one of them, and only
# $\beta$, $C$ and $A$ tell them apart. By the chain rule
#
# $$ \frac{\partial\log p(v)}{\partial\theta_i} = \sum_j\frac{\partial\log p(v)}{\partial W_{ij}}, \tag{4b.6} $$
#
# so the statistics (4.8, 4b.5) are computed as for free copies and summed over $j$
# (`model_r.tied_gradient`); adding the sum to every copy keeps them equal.
#
# The tied model contains the RBM with $d_h$ hidden units: with $\beta_{i1}$ far below $\beta_{i0}$ every
# patch goes to parent 0, $h_1$ is coupled to nothing, and (4b.1) is parent 0's $J = 1$ model,
# the RBM with the biases folded in (exercise 1). Both facts, checked on the tiny model:

# %%
tied_p = p._replace(W=np.ascontiguousarray(np.broadcast_to(p.W[:, :1], p.W.shape)))  # W_ij = theta_i
p_vh = mr.exact_probability_vha(tied_p).reshape(Nv, Nh, Na).sum(axis=2)  # (Nv, Nh)
p_h_given_v = p_vh[data_index] / p_vh[data_index].sum(axis=1, keepdims=True)  # (B, Nh)
dW = (mr.model_statistics(tied_p, Vd, Hd, mr.routing_posterior(tied_p, Vd, Hd), weights=p_h_given_v.ravel() / B).W
      - mr.model_statistics(tied_p, Vg, Hg, mr.routing_posterior(tied_p, Vg, Hg), weights=p_vh.ravel()).W)
g_theta = mr.tied_gradient(dW)[:, 0]  # (I, d_h, d_v): (4b.6)


def with_theta(theta):
    """tied_p with every parent's weights set to theta (I, d_h, d_v)."""
    return tied_p._replace(W=np.repeat(theta[:, None], J, axis=1))  # (I, J, d_h, d_v)


theta, eps = tied_p.W[:, 0], 1e-5
fd_theta = np.zeros_like(theta)
for idx in np.ndindex(theta.shape):
    step = np.zeros_like(theta)
    step[idx] = eps
    fd_theta[idx] = (np.mean(mr.exact_log_marginal(with_theta(theta + step), Vs[data_index]))
                     - np.mean(mr.exact_log_marginal(with_theta(theta - step), Vs[data_index]))) / (2 * eps)
rel_tied = np.max(np.abs(g_theta - fd_theta)) / np.max(np.abs(fd_theta))
print(f"(4b.6): summed statistics against central differences in theta, relative error {rel_tied:.1e}")
assert rel_tied < 1e-6

# every patch routed to parent 0: beta_i1 = beta_i0 - 60, the same A, C_i1 = 0 (no h can overturn it)
pinned = tied_p._replace(beta=np.stack([tied_p.beta[:, 0], tied_p.beta[:, 0] - 60.0], axis=1),
                         A=np.repeat(tied_p.A[:, :1], J, axis=1), C=tied_p.C * np.array([1.0, 0.0])[None, :, None])
rbm_of_parent_0 = mr.as_rbm(RBParams(W=pinned.W[:, :1], alpha=pinned.alpha, gamma=pinned.gamma[:1],
                                     beta=pinned.beta[:, :1], C=pinned.C[:, :1], A=pinned.A[:, :1]))
log_p_rbm = -rbm.free_energy(rbm_of_parent_0, Vs.reshape(Nv, -1)) - rbm.exact_log_partition(rbm_of_parent_0)
gap = np.max(np.abs(mr.exact_log_marginal(pinned, Vs) - log_p_rbm))
print(f"tied J = 2 with the routing pinned to parent 0 against the RBM of parent 0: max |log p difference| {gap:.1e}")
assert gap < 1e-9

# %% [markdown]
# Containing the RBM does not mean finding it. On MNIST (docs/results.md section 10), two tied
# instances of a 500-unit capsule trained with the RBM-500's recipe for 40 epochs reach -101.5
# nats per test image, behind both the RBM-500 of the same epochs (-96.2) and the untied
# two-capsule model (-99.6); after 100 epochs they catch up with the untied model (-95.0 against
# -95.4), no better than one 250-unit capsule alone, an RBM-250 (-94.8), and 4.6 nats behind the
# RBM-500 (-90.5). Their routing is positional, as every two-capsule model's in
# docs/results.md: a few central positions go to one instance and the rest of the image to the
# other, whatever the digit. Given the routing, the two instances' hidden states are
# independent, so a positional routing cuts each image into two parts that no hidden unit
# explains together; the route to the RBM (every patch to one instance) is never taken.

# %% [markdown]
# ## 7. What mean-field training climbs, and sampled data statistics (4b.7)
#
# The training update (4.8) takes its data side from mean-field routing: $c_{ij}\mu_j v_i^\top$ at the
# fixed point of (4.6). Those are the derivatives of the bound $L(v; c) \le \log\tilde p(v)$
# (`mean_field_elbo`, lesson 7) with $c$ and $\mu$ held fixed, and at a fixed point the derivative
# through $c$ and $\mu$ vanishes, so they are the gradient of $L(v) - \log Z$, not of $\log p(v)$.
# The two objectives differ by the gap $\log\tilde p(v) - L(v; c) \ge 0$. A model raises the first
# both by raising $\log p(v)$ and by shrinking the gap, that is by having a routing posterior the
# factorised $q$ fits: a decisive one. Every routing docs/results.md measured on MNIST is decisive
# (the largest $c_{ij}$ of a patch with ink averages 0.999) and positional.
#
# The exact data side is $\mathbb{E}_{p(h, a\mid v)}$ of the statistics. With $v$ clamped, the $h$ and $a$
# blocks of the Gibbs sweep (4.7) make a Markov chain on the routing,
#
# $$ T_v(a, a') = \sum_h p(h\mid v, a)\,p(a'\mid v, h), \tag{4b.7} $$
#
# which keeps $p(a\mid v)$: it draws $h$ and then $a'$ from their exact conditionals. With
# `posterior_sweeps = k` the estimator starts it at routes drawn from $c$, runs $k$ sweeps and
# takes the statistics of the last $(h, R)$ pair, Rao-Blackwellised over $a$ as on the chain side.
# On the tiny model: the gap over every $v$, the invariance of (4b.7) by enumeration, and the
# sampled statistics of the image with the largest gap against its exact data side.

# %%
c_fixed, _, _ = mr.mean_field(p, Vs, tol=1e-12, max_iter=1000)  # (Nv, I, J)
gap_v = mr.exact_log_unnormalised_marginal(p, Vs) - mean_field_elbo(p, Vs, c_fixed)  # (Nv,)
print(f"gap log p~(v) - L(v; c) over the {Nv} states v: min {gap_v.min():.1e}, mean {gap_v.mean():.3f}, "
      f"max {gap_v.max():.3f} nats")
assert gap_v.min() > -1e-9  # a bound

worst = 0.0
for v in Vs:
    p_h = bernoulli_table(Hs.reshape(Nh, -1),
                          mr.hidden_probability(p, np.repeat(v[None], Na, axis=0), As).reshape(Na, -1))  # (Na, Nh)
    resp_v = mr.routing_posterior(p, np.repeat(v[None], Nh, axis=0), Hs)  # (Nh, I, J)
    p_a = np.prod(resp_v[:, np.arange(I), As], axis=-1)  # (Nh, Na): p(a | v, h)
    T_v = p_h @ p_a  # (Na, Na), (4b.7)
    log_va = mr.log_joint_va(p, np.repeat(v[None], Na, axis=0), As)  # (Na,)
    p_a_given_v = np.exp(log_va - logsumexp(log_va))
    worst = max(worst, np.max(np.abs(p_a_given_v @ T_v - p_a_given_v)))
print(f"(4b.7) keeps p(a | v): max |p T_v - p| over every v {worst:.1e}")
assert worst < 1e-12

b_gap = int(np.argmax(gap_v))
v_gap = Vs[b_gap]
p_h_v = mr.exact_probability_vha(p).reshape(Nv, Nh, Na).sum(axis=2)[b_gap]  # (Nh,)
Vh = np.repeat(v_gap[None], Nh, axis=0)  # (Nh, I, d_v)
exact_side = mr.model_statistics(p, Vh, Hs, mr.routing_posterior(p, Vh, Hs), weights=p_h_v / p_h_v.sum())
n_copies = 5_000 if FAST else 20_000
copies = np.repeat(v_gap[None], n_copies, axis=0)  # (n, I, d_v)
c_copies = np.repeat(c_fixed[b_gap][None], n_copies, axis=0)  # (n, I, J)
_, mu_gap, _ = mr.mean_field(p, v_gap[None], tol=1e-12, max_iter=1000)
mean_field_side = mr.data_statistics(p, v_gap[None], c_fixed[b_gap][None], mu_gap)
error_mf = max(np.max(np.abs(m - e)) for m, e in zip(mean_field_side, exact_side))
print(f"image {b_gap} (gap {gap_v[b_gap]:.3f}): mean-field data statistics, largest error {error_mf:.3f}")
for k in (1, 3, 10):
    est_k = RoutedCapsuleRBM(n_capsules=J, capsule_dim=d_h, assignment_biases=True, posterior_sweeps=k)
    sampled = est_k._data_statistics(p, copies, c_copies, None, np.random.default_rng(k))
    error_k = max(np.max(np.abs(s_ - e)) for s_, e in zip(sampled, exact_side))
    print(f"  {k:2d} clamped sweeps, {n_copies} copies: largest error {error_k:.3f} "
          f"(Monte Carlo standard error <= {0.5 / np.sqrt(n_copies):.3f})")
assert error_k < 5 * 0.5 / np.sqrt(n_copies) < error_mf

# %% [markdown]
# The mean-field statistics of that image are off by the printed error, a bias no amount of
# data removes; the sampled ones are within Monte Carlo error after a few sweeps.
#
# On MNIST (docs/results.md section 11) the trained tied model's gap is small, 0.34 nats per
# test image, with decisive, positional routing. Trained with three clamped sweeps instead of
# mean-field data statistics and nothing else changed, the same model reaches -97.7 nats per
# test image after 40 epochs instead of -101.5, its gap grows to 0.57 nats and its routing is
# less positional (8.8% of test images on one instance instead of 0.16%); the RBM-500 of the
# same epochs is at -96.2. Started at the RBM it contains ($\beta_{i1} = 6$), the tied model
# keeps every patch on the first instance; its training chains almost never route a patch to
# the second, and AIS finds about 30 nats of mass there that training never saw.
#
# ## 8. Centred steps: the same model, another update direction (4b.8, 4b.9)
#
# A centred RBM writes its energy with the units measured from offsets, $-(v - m)^\top W(h - l)$;
# the offsets fold into the biases, so the model is the same, but its gradient in the centred
# coordinates is another update direction, whose $W$ part is a covariance rather than a raw
# second moment. With assignment biases Model R can be centred the same way (exercise 2 shows
# why it needs $C$ and $A$): child $i$'s term, with $j = a_i$, becomes
#
# $$ \beta_{ij} + A'_{ij}\cdot v_i + h_j\cdot C'_{ij} + (h_j - l_j)^\top W_{ij}(v_i - m_i) - l_j^\top W_{ij}m_i, \tag{4b.8} $$
#
# with offsets $m$ (I, d_v) and $l$ (J, d_h). Expanding and matching terms with (4b.1): $W$ and
# $\beta$ are unchanged, $C_{ij} = C'_{ij} - W_{ij}m_i$ and $A_{ij} = A'_{ij} - W_{ij}^\top l_j$
# (`mr.from_centred`); the last term keeps the routing prior at $\beta$. The map is linear in the
# centred parameters, so the chain rule through it gives the gradient in centred coordinates
# from the plain one $g$:
#
# $$ g_{W'_{ij}} = g_{W_{ij}} - g_{C_{ij}}m_i^\top - l_j\,g_{A_{ij}}^\top, \quad\text{every other part unchanged}. \tag{4b.9} $$
#
# `RoutedCapsuleRBM(centring=True)` takes each step in these coordinates with the minibatch's
# data means as offsets and turns it into a step of the plain parameters with the same linear
# map. (Centring $A$ and $C$ as well, `centring="all"`, is also the same model, but then a step of
# $C'$ moves $\beta_{ij}$ by $-l_j\cdot\Delta C'_{ij}$, which holds $\eta\,g_{\beta_{ij}}|l_j|^2$: the routing prior
# learns at $|l_j|^2$ times the rate.)
#
# On the tiny model of section 3, with the offsets set to the data means of its five images,
# (4b.9) of the exact gradient against central differences of the exact log-likelihood as a
# function of the centred parameters:

# %%
m_off = Vs[data_index].mean(axis=0)  # (I, d_v): data mean of v
l_off = data_term.gamma  # (J, d_h): data mean of h under p(h | v_b)
centred = mr.to_centred(p, m_off, l_off)
for x, y in zip(mr.from_centred(centred, m_off, l_off), p):
    np.testing.assert_allclose(x, y, atol=1e-12)
g_centred = mr.centred_gradient(grad, m_off, l_off)
fd_centred = central_difference(
    lambda q: np.mean(mr.exact_log_marginal(mr.from_centred(q, m_off, l_off), Vs[data_index])), centred)
rel_c = {name: np.max(np.abs(g - f)) / np.max(np.abs(f))
         for name, g, f in zip(RBParams._fields, g_centred, fd_centred)}
print(f"(4b.9) against central differences in centred coordinates: max relative error "
      f"{max(rel_c.values()):.1e}; the W step differs from the plain one by "
      f"{np.max(np.abs(g_centred.W - grad.W)):.3f} (largest entry)")
assert max(rel_c.values()) < 1e-6

# %% [markdown]
# The two gradients are different directions for the same model: a step along (4b.9), mapped
# back, changes $p(v)$ differently from a step along (4.8), and on MNIST the difference is what
# docs/results.md section 12 measures.

# %% [markdown]
# ## 9. Which expectation the chain statistics take (4b.10)
#
# Section 3 replaced the indicator $[a_i = j]$ by its expectation given $(v, h)$, $R_{ij}(v, h)$. A
# Gibbs sweep also passes through a second pair whose law is $p$: the $(v, a)$ it starts from, at
# which it computes $p(h_j = 1\mid v, a)$ (4.4) to draw $h$. Given $(v, a)$, the expectation of
# $[a_i = j]\,h_j v_i^\top$ is $[a_i = j]\,p(h_j\mid v, a)\,v_i^\top$. So the statistics that involve $h$
# can take their expectation over $h$ instead:
#
# $$ W:\ [a_i = j]\,p_j\,v_i^\top,\quad \gamma:\ p_j,\quad C:\ [a_i = j]\,p_j,\qquad \beta:\ R_{ij},\quad A:\ R_{ij}v_i, \tag{4b.10} $$
#
# with $p_j = p(h_j = 1\mid v, a)$. Both choices are unbiased; which is less noisy depends on where
# the noise is. On the tiny model, by enumeration: the mean of each statistic of $W$ under
# $p(v, h, a)$ and its total variance (the sum over entries), for the indicator itself and for the
# two conditional expectations. Each conditional expectation has at most the indicator's
# variance (the law of total variance).

# %%
Vf = np.repeat(Vs, Nh * Na, axis=0)  # (Nv Nh Na, I, d_v), v varies slowest
Hf = np.tile(np.repeat(Hs, Na, axis=0), (Nv, 1, 1))  # (Nv Nh Na, J, d_h)
Af = np.tile(As, (Nv * Nh, 1))  # (Nv Nh Na, I), a varies fastest
w = joint.ravel()  # (Nv Nh Na,): p(v, h, a)
onehot_f = (Af[:, :, None] == np.arange(J)).astype(float)  # (Nv Nh Na, I, J)
R_f = mr.routing_posterior(p, Vf, Hf)  # (Nv Nh Na, I, J): R(v, h)
P_f = mr.hidden_probability(p, Vf, Af)  # (Nv Nh Na, J, d_h): p(h = 1 | v, a)
W_stats = {"indicator [a_i = j] h_j v_i^T": np.einsum("sij,sjk,sil->sijkl", onehot_f, Hf, Vf),
           "over a: R_ij h_j v_i^T (4.8)": np.einsum("sij,sjk,sil->sijkl", R_f, Hf, Vf),
           "over h: [a_i = j] p_j v_i^T (4b.10)": np.einsum("sij,sjk,sil->sijkl", onehot_f, P_f, Vf)}
variance = {}
for name, x in W_stats.items():
    mean = np.einsum("s,s...->...", w, x)  # (I, J, d_h, d_v)
    variance[name] = float(np.einsum("s,s...->...", w, (x - mean) ** 2).sum())
    np.testing.assert_allclose(mean, model_term.W, rtol=1e-10)  # unbiased: section 3's exact statistic
    print(f"{name:38s} mean = the exact statistic, total variance {variance[name]:.3f}")
indicator, over_a, over_h = variance.values()
assert over_a <= indicator and over_h <= indicator
got = mr.hidden_model_statistics(p, Vf, Af, P_f, R_f, weights=w)
for name, x, y in zip(RBParams._fields, got, model_term):
    np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-15, err_msg=name)
print("hidden_model_statistics weighted by p(v, h, a) = the exact model statistics, all six: OK")

# %% [markdown]
# On the tiny model, with random weights and a routing far from decided, averaging over $a$
# removes more of the indicator's noise than averaging over $h$ does. On a trained model the
# routing given $(v, h)$ is nearly decided for most patches, so averaging over $a$ removes
# little, while each of a parent's $d_h$ binary units adds its own noise to that parent's
# weights; averaging over $h$ removes it, as an RBM's statistic $v\,p(h\mid v)^\top$ does. Here are
# 200 chains of the model with assignment biases of section 5, started at held-out images with
# the routes of their mean field and run 20 sweeps: the variance over chains of each statistic,
# summed over entries.

# %%
q = fitted_params(models[True])
chain_rng = np.random.default_rng(7)
v_c = V_test[:200]  # (200, 49, 16)
c_start, _, _ = mr.mean_field(q, v_c, tol=1e-3, max_iter=30)  # (200, 49, J)
a_c = np.argmax(c_start, axis=-1)  # (200, 49)
for _ in range(20):
    v_c, _, a_c, _ = mr.gibbs_sweep(q, v_c, a_c, chain_rng)
_, h_c, _, R_c, P_c = mr.gibbs_sweep(q, v_c, a_c, chain_rng, return_probability=True)
onehot_c = (a_c[:, :, None] == np.arange(q.W.shape[1])).astype(float)  # (200, 49, J)
ratios = {}
for name, by_a, by_h in (("W", np.einsum("bij,bjk,bil->bijkl", R_c, h_c, v_c),
                          np.einsum("bij,bjk,bil->bijkl", onehot_c, P_c, v_c)),
                         ("gamma", h_c, P_c),
                         ("beta", R_c, onehot_c)):
    var_a, var_h = by_a.var(axis=0).sum(), by_h.var(axis=0).sum()
    ratios[name] = var_h / var_a
    print(f"{name:5s}: total variance over chains {var_a:9.2f} averaged over a, {var_h:9.2f} over h "
          f"(ratio {ratios[name]:.2f})")
print(f"largest routing probability R_ij, mean over chains and patches: {R_c.max(axis=-1).mean():.3f}")
assert ratios["W"] < 1 and ratios["gamma"] < 1

# %% [markdown]
# So (4b.10) averages $W$, $\gamma$ and $C$ over $h$ and keeps $\beta$ and $A$, statistics of $a$
# alone, averaged over $a$. It costs nothing: $p(h\mid v, a)$ is what the sweep draws $h$ from.
# `RoutedCapsuleRBM(rao_blackwell="hidden")` trains with it. A less noisy unbiased estimate is
# not a better training signal here: on MNIST (docs/results.md section 23) the models trained
# with (4b.10) score 1.2 to 1.4 nats lower with 300 chains. About half of the noise (4.8) has
# per sweep belongs to the chains' slowly moving states, which (4b.10) does not touch; the half
# it removes is fresh noise that successive updates average away anyway.
#
# ## 10. A sparsity target (4b.11)
#
# A last lever from the RBM literature changes what is learned rather than how the gradient is
# estimated. A sparsity target (Lee, Ekanadham & Ng 2008; Hinton's practical guide, section 11)
# adds to the negative log-likelihood a penalty that pulls every hidden unit's firing
# probability on the data towards a target $p$, here the cross-entropy between $p$ and
# $\sigma(x_{nk})$, the firing probability of unit $k$ on data image $n$ with total input $x_{nk}$:
#
# $$ \Omega = \frac{\lambda}{B}\sum_n\sum_k \big[\mathrm{softplus}(x_{nk}) - p\,x_{nk}\big], \qquad
#    -\frac{\partial\Omega}{\partial\gamma_k} = \lambda\,(p - q_k),\quad q_k = \frac1B\sum_n\sigma(x_{nk}), \tag{4b.11} $$
#
# since $-p\log s - (1-p)\log(1-s)$ at $s = \sigma(x)$ is $\mathrm{softplus}(x) - p\,x$, whose derivative is
# $\sigma(x) - p$, and a hidden bias adds to its unit's input on every image. For Model R the input
# is the mean-field one, $x_{njk} = \gamma_{jk} + \sum_i c_{nij}\,(\hat u_{j\mid i})_k$, whose sigmoid is
# $\mu_{njk}$, with the routing $c$ held as it is. The step goes to the hidden biases alone, and $q$
# is the minibatch's data statistic of $\gamma$. The check: central differences of $\Omega$ in a
# shift of $\gamma$, on the held-out images' mean field of section 5's model.

# %%
from capsnp.training import sparsity_gradient, sparsity_penalty  # noqa: E402

c_mf, mu_mf, _ = mr.mean_field(q, V_test[:200], tol=1e-3, max_iter=30)  # (200, 49, J), (200, J, d_h)
x_mf = np.log(mu_mf) - np.log1p(-mu_mf)  # (200, J, d_h): the mean-field inputs, sigmoid(x) = mu
target, cost, eps = 0.1, 0.1, 1e-5
numeric = np.zeros_like(q.gamma)  # (J, d_h)
for idx in np.ndindex(q.gamma.shape):
    shift = np.zeros_like(q.gamma)
    shift[idx] = eps
    numeric[idx] = (sparsity_penalty(x_mf + shift, target, cost)
                    - sparsity_penalty(x_mf - shift, target, cost)) / (2 * eps)
analytic = sparsity_gradient(mu_mf.mean(axis=0), target, cost)  # (J, d_h)
print(f"(4b.11) against central differences: max relative error "
      f"{np.abs(-numeric - analytic).max() / np.abs(analytic).max():.1e}")
np.testing.assert_allclose(-numeric, analytic, rtol=1e-6, atol=1e-9)
q_units = mu_mf.mean(axis=0).ravel()  # (J d_h,)
print("firing probability of the hidden units on held-out images: mean "
      f"{q_units.mean():.2f}, quartiles {np.round(np.quantile(q_units, [0.25, 0.5, 0.75]), 2)}")

# %% [markdown]
# `RoutedCapsuleRBM(sparsity_cost=lambda, sparsity_target=p)` adds (4b.11) to the step of $\gamma$
# (`BernoulliRBM` to its hidden biases). The models trained on MNIST fire at 0.28 on average. Pulled
# towards 0.1 at cost 0.1 and 1.0 for 40 epochs (docs/results.md section 24), the capsule model
# lost 6.4 and 6.7 nats, while the RBM-500 pulled at cost 0.1 lost nothing (-90.99 against
# -91.05) and its units fell to 0.17. The capsule model's units still fired at 0.21 at cost 0.1:
# its hidden units have a second bias, the prediction biases $C_{ij}$ of the patches routed to
# them, and as $\gamma$ fell to -6 the routed $C$ rose to +3 (to -17 and +11 at cost 1), and $C$
# enters the routing logit $\hat u_{j\mid i}\cdot h_j$. With the pull on every parameter of the
# input (`sparsity_on="inputs"`: $W$, $\gamma$ and $C$, the data statistics with $p - \mu$ in place
# of $\mu$) there is no escape, and both models lose: 4.9 nats for the capsule model, 3.9 for the
# RBM-500. At cost 0.01 the capsule model stays within its seed spread (three seeds in the input
# form). A sparsity target is not a lever for the likelihood of either model here.
#
# ## 11. A shared capsule: every pixel reaches more than one capsule (4c)
#
# Given its routing, each patch of Model R sees the units of one capsule only. On MNIST the
# two-capsule model fits even its training images 4 nats worse than the RBM-500, and scores what
# one of its capsules alone scores (docs/results.md section 27). The smallest change that lets a
# pixel reach more than one capsule keeps the routed capsules and adds one capsule that every
# child reaches, $H_0$ binary units $g$ with weights $V_i$ (docs/MODEL_RB.md):
#
# $$ E(v, g, h, a) = E_{4b}(v, h, a) - \delta\cdot g - \sum_i g^\top V_i v_i. \tag{4c.1} $$
#
# $g$ couples to $v$ alone, linearly, so summing it out gives a factor of $v$ only,
# $\sum_g e^{\delta\cdot g + g^\top V v} = \prod_k (1 + e^{x_k(v)})$ with $x(v) = \delta + \sum_i V_i v_i$. Hence
# $p(g_k = 1\mid v, h, a) = \sigma(x_k(v))$ (4c.2), the posterior over $(h, a)$ given $v$ is the routed
# part's (4c.3): routing, mean field and existence probabilities are unchanged; the visible
# logit gains $(V_i^\top g)_l$ (4c.4); and
#
# $$ \log\tilde p(v) = \log\tilde p_{4b}(v) + \sum_k \mathrm{softplus}(x_k(v)), \tag{4c.5} $$
#
# so only the routed part needs importance sampling. The gradient statistics of $V$ are
# $\sigma(x(v))\,v^\top$, exact at the data and at the chains (4c.6). The checks on a tiny model: (4c.3)
# and (4c.5) against the energy summed by enumeration, and the exact statistics of $V$ against
# central differences of the exact log-likelihood.

# %%
from capsnp import model_rs as ms  # noqa: E402
from capsnp.params import RSParams  # noqa: E402

rng_s = np.random.default_rng(11)
ps = RSParams(*random_rbparams(rng_s, I=2, d_v=2, J=2, d_h=1), V=rng_s.normal(0.0, 1.0, (2, 2, 2)),
              delta=rng_s.normal(0.0, 1.0, 2))
Vs, Gs = enumerate_binary(4).reshape(-1, 2, 2), enumerate_binary(2)  # (16, I, d_v), (4, H0)
Hs_, As_ = enumerate_binary(2).reshape(-1, 2, 1), enumerate_assignments(2, 2)  # (4, J, d_h), (4, I)
grid = [(v, g, h, a) for v in Vs for g in Gs for h in Hs_ for a in As_]
log_e = -ms.energy(ps, *(np.array([x[k] for x in grid]) for k in range(4))).reshape(16, 4, 4, 4)  # (v, g, h, a)
post = np.exp(log_e - logsumexp(log_e, axis=(1, 2, 3), keepdims=True)).sum(axis=1)  # p(h, a | v) (16, 4, 4)
routed_joint = mr.exact_probability_vha(ms.routed_part(ps)).reshape(16, 4, 4)  # p_4b(v, h, a)
print("(4c.3) p(h, a | v) against the routed part's: max difference "
      f"{np.abs(post - routed_joint / routed_joint.sum(axis=(1, 2), keepdims=True)).max():.1e}")
print("(4c.5) log p~(v) against the enumerated energy: max difference "
      f"{np.abs(ms.exact_log_unnormalised_marginal(ps, Vs) - logsumexp(log_e, axis=(1, 2, 3))).max():.1e}")
data_s = Vs[[3, 9, 12]]  # three visible states as the data


def mean_log_likelihood_s(V_shared):
    q_s = ps._replace(V=V_shared)
    return np.mean(ms.exact_log_unnormalised_marginal(q_s, data_s)) - ms.exact_log_partition(q_s)


p_model = np.exp(ms.exact_log_unnormalised_marginal(ps, Vs) - ms.exact_log_partition(ps))  # (16,)
stats_V = (ms.shared_statistics(data_s, ms.shared_probability(ps, data_s))[0]
           - ms.shared_statistics(Vs, ms.shared_probability(ps, Vs), p_model)[0])  # (H0, I, d_v) (4c.6)
numeric_V = np.zeros_like(ps.V)
for idx in np.ndindex(ps.V.shape):
    step = np.zeros_like(ps.V)
    step[idx] = 1e-5
    numeric_V[idx] = (mean_log_likelihood_s(ps.V + step) - mean_log_likelihood_s(ps.V - step)) / 2e-5
print(f"(4c.6) statistics of V against central differences: max relative error "
      f"{np.abs(stats_V - numeric_V).max() / np.abs(numeric_V).max():.1e}")
np.testing.assert_allclose(stats_V, numeric_V, rtol=1e-6, atol=1e-9)

# %% [markdown]
# `RoutedCapsuleRBM(assignment_biases=True, shared_units=H0)` trains it; the Gibbs sweep draws
# $g\sim p(g\mid v)$ first and hands $V^\top g$ to the routed sweep as an extra visible field (4c.7).
# With $H_0 = 250$ beside two routed capsules of 125 units it has the RBM-500's 392,000 weights.
# What it scores on MNIST and Fashion-MNIST, at equal epochs and at equal training time, is in
# docs/results.md sections 28 to 46.
#
# **Centring the shared capsule alone.** Section 8 centred the routed capsules, and on MNIST the
# offsets' share of each step steered the routing through $A$. The shared capsule can be centred
# without that. With offsets $m$ for $v$ and $l_0$ for $g$,
#
# $$ E = E_{4b}(v, h, a; \alpha') - \delta'\cdot g - \sum_i (g - l_0)^\top V_i (v_i - m_i) \tag{4c.8} $$
#
# is (4c.1) with $\delta = \delta' - \sum_i V_i m_i$ and $\alpha = \alpha' - V^\top l_0$, up to a constant. The
# offsets land on $\alpha$ and $\delta$. $\alpha_i\cdot v_i$ is the same for every parent, so it cancels in
# the routing posterior, and $\delta$ belongs to units that (4c.3) keeps out of the routing. The chain
# rule through the map gives, as for the centred RBM,
#
# $$ g_{V'_{ki}} = g_{V_{ki}} - g_{\delta_k}\, m_i - l_{0k}\, g_{\alpha_i}. \tag{4c.9} $$
#
# The check: (4c.9) written out from the exact statistics against central differences of the exact
# log-likelihood in $V'$, and the routing posterior of the plain model against that of the model
# with $\alpha$ and $\delta$ shifted as `ms.from_centred` shifts them.

# %%
m_s = data_s.mean(axis=0)  # (I, d_v): the data's mean of v
l_s = ms.shared_probability(ps, data_s).mean(axis=0)  # (H0,): the data's mean of p(g | v)
stats_delta = l_s - ms.shared_statistics(Vs, ms.shared_probability(ps, Vs), p_model)[1]  # (H0,)
stats_alpha = m_s - np.einsum("n,nil->il", p_model, Vs)  # (I, d_v)
stats_V_centred = (stats_V - np.einsum("k,il->kil", stats_delta, m_s)
                   - np.einsum("k,il->kil", l_s, stats_alpha))  # (H0, I, d_v) (4c.9)
centred_s = ms.to_centred(ps, m_s, l_s)


def mean_log_likelihood_centred(V_centred):
    q_s = ms.from_centred(centred_s._replace(V=V_centred), m_s, l_s)
    return np.mean(ms.exact_log_unnormalised_marginal(q_s, data_s)) - ms.exact_log_partition(q_s)


numeric_V_centred = np.zeros_like(ps.V)
for idx in np.ndindex(ps.V.shape):
    step = np.zeros_like(ps.V)
    step[idx] = 1e-5
    numeric_V_centred[idx] = (mean_log_likelihood_centred(ps.V + step)
                              - mean_log_likelihood_centred(ps.V - step)) / 2e-5
print(f"(4c.9) against central differences in V': max relative error "
      f"{np.abs(stats_V_centred - numeric_V_centred).max() / np.abs(numeric_V_centred).max():.1e}; "
      f"it differs from the plain gradient by up to {np.abs(stats_V_centred - stats_V).max():.3f}")
np.testing.assert_allclose(stats_V_centred, numeric_V_centred, rtol=1e-6, atol=1e-9)
shifted_s = ms.from_centred(ps, m_s, l_s)  # alpha and delta moved as a centred step moves them
Vd, Hd = np.repeat(Vs, len(Hs_), axis=0), np.tile(Hs_, (len(Vs), 1, 1))  # every (v, h) pair
routing_change = np.abs(mr.routing_posterior(ms.routed_part(shifted_s), Vd, Hd)
                        - mr.routing_posterior(ms.routed_part(ps), Vd, Hd)).max()
print(f"routing posterior after the offsets' shift of alpha: max change {routing_change:.1e} "
      f"(alpha moved by up to {np.abs(shifted_s.alpha - ps.alpha).max():.2f})")

# %% [markdown]
# **Averaged offsets.** Above, the offsets are the data's means. In training each step takes them
# from one minibatch, so they carry that minibatch's sampling noise. Melchior, Fischer and
# Wiskott (2016) average them over the run instead:
#
# $$ o_t = o_{t-1} + (o_{\mathrm{batch},t} - o_{t-1})/K,\qquad o_1 = o_{\mathrm{batch},1}. \tag{5.10} $$
#
# The stored parameters are the plain ones, so moving $o$ needs no reparametrisation: each step is
# mapped back by `from_centred` at the offsets it was taken at. `centring_average=K` does this, and
# $K = 1$ is the minibatch's means. If the minibatch means scatter around the data mean with
# variance $\sigma^2$, independently from step to step, the average scatters with
# $\sigma^2/K^2 \cdot \sum_{s\ge 0}(1 - 1/K)^{2s} = \sigma^2/(2K - 1)$.
# The check below draws minibatches of 100 images (with replacement, so that they are independent)
# from the data of section 5 and computes (5.10)
# with `training.moving_average`, the function the estimators call.

# %%
from capsnp.params import CentringOffsets  # noqa: E402
from capsnp.training import moving_average  # noqa: E402

images = X  # (n_train, 784): section 5's binarised MNIST images (the layout does not matter here)
offset_rng, K = np.random.default_rng(3), 10
batch_means, averaged, average = [], [], None
for t in range(3000):
    m_batch = images[offset_rng.integers(0, len(images), 100)].mean(axis=0)  # (784,): with replacement
    average = moving_average(average, CentringOffsets(m_batch, np.zeros(1)), K)  # (5.10)
    if t >= 200:  # past the start, where o_1 is one minibatch's means
        batch_means.append(m_batch)
        averaged.append(average.m)
ratio = np.var(averaged, axis=0).sum() / np.var(batch_means, axis=0).sum()
print(f"variance of the offsets of v, averaged (K = {K}) / per minibatch: {ratio:.4f} "
      f"(sigma^2 / (2K - 1) predicts {1 / (2 * K - 1):.4f})")
np.testing.assert_allclose(ratio, 1 / (2 * K - 1), rtol=0.15)

# %% [markdown]
# Less noise is not the only difference. Offsets taken from the minibatch are correlated with the
# statistics they centre, and that biases the step. Write the centred RBM's $W$ step (5.9) with the
# minibatch $v_1..v_B$, $p_n = p(h = 1\mid v_n)$ and their means $m$, $l$, and the chains' $v'_s$, $p'_s$:
#
# $$ g_{W'} = \tfrac1B\textstyle\sum_n (v_n - m)(p_n - l)^\top - \tfrac1S\sum_s (v'_s - m)(p'_s - l)^\top. $$
#
# Where the model is the data's law the plain step has mean 0. Let $\Sigma$ be the covariance of $v$ and
# $p(h = 1\mid v)$. The first term has mean $(1 - 1/B)\Sigma$; the second is the chains' covariance,
# mean $(1 - 1/S)\Sigma$, plus $(\mu' - m)(\lambda' - l)^\top$, of mean $\Sigma/S + \Sigma/B$ because $m$ and $l$
# come from the same rows. So
#
# $$ \mathbb{E}[g_{W'}] = -2\Sigma/B, \quad\text{and with offsets averaged by (5.10)}\quad -2\Sigma/(KB). \tag{5.11} $$
#
# A pull against the coupling the data asks for, which does not average out over steps; on
# MNIST's RBM-500 it is about 5 times the weight decay (docs/MODEL_RB.md). The check draws minibatches
# and chains exactly from $p(v)$ of a tiny RBM (by enumeration) and averages the centred step.

# %%
tiny = RBMParams(W=rng.normal(size=(4, 3)), a=rng.normal(size=4), b=rng.normal(size=3))
states = enumerate_binary(4)  # (16, D)
p_states = rbm.exact_probability_v(tiny)  # (16,)
P_states = rbm.hidden_probability(tiny, states)  # (16, H)
sigma = (states * p_states[:, None]).T @ P_states - np.outer(p_states @ states, p_states @ P_states)  # (D, H)
B_, S_, T_ = 5, 7, 10000
for K_ in (1, 4):
    draw = np.random.default_rng(K_)
    rows, chain_rows = draw.choice(16, (T_, B_), p=p_states), draw.choice(16, (T_, S_), p=p_states)
    total, offsets = np.zeros((4, 3)), None
    for t in range(T_):
        v, h = states[rows[t]], P_states[rows[t]]  # (B, D), (B, H)
        vc, hc = states[chain_rows[t]], P_states[chain_rows[t]]  # (S, D), (S, H)
        grad = RBMParams(W=v.T @ h / B_ - vc.T @ hc / S_, a=v.mean(0) - vc.mean(0), b=h.mean(0) - hc.mean(0))
        offsets = moving_average(offsets, CentringOffsets(v.mean(0), h.mean(0)), K_)  # (5.10)
        total += rbm.centred_gradient(grad, *offsets).W
    error = np.abs(total / T_ + 2 * sigma / (K_ * B_)).max() / np.abs(sigma).max()
    print(f"K = {K_}: mean centred W step against -2 Sigma / (K B): max error {error:.3f} of max |Sigma| "
          f"(the bias itself is {2 / (K_ * B_):.2f} of it)")
    assert error < 0.05

# %% [markdown]
# ## 12. Chain restarts (5.12)
#
# Persistent chains push down only the states they visit. On MNIST the averaged-offset split grows a
# blocky mode that chains started at noise fall into within ten sweeps and its persistent chains never
# visit (docs/results.md sections 46 to 49). `chain_restart=r` replaces each persistent chain, before
# each step and independently with probability $r$, by a fresh chain at the visible-bias noise $q_0$.
# At fixed parameters a chain then moves by the kernel $r\,\mathbf{1}q_0 + (1 - r)K$, $K$ the Gibbs
# sweep's kernel over visible states, and its stationary law is the mixture of the laws of chains from
# noise after $k$ sweeps, weighted by the chance that the chain's last restart was $k$ sweeps ago:
#
# $$ \pi_r = \sum_{k\ge 0} r(1-r)^k\, q_0 K^k. \tag{5.12} $$
#
# Multiply by the kernel: $\pi_r\big(r\mathbf{1}q_0 + (1-r)K\big) = r q_0 + \sum_{k\ge 0} r(1-r)^{k+1} q_0K^{k+1}
# = \pi_r$, since $\pi_r\mathbf{1} = 1$. If $K$ mixes in far fewer than $1/r$ sweeps, $\pi_r$ is close to
# $p$; if it does not, $\pi_r$ weighs what chains from noise reach within about $1/r$ sweeps. The check
# builds the RBM's visible kernel $K(v, v') = \sum_h p(h\mid v)\,p(v'\mid h)$ by enumeration, finds the
# restarted kernel's stationary law as its leading left eigenvector, and compares it with the series.
# The same model with its weights scaled by 8 mixes slowly (second eigenvalue of $K$ near 1), and
# there the restarts keep $\pi_r$ far from $p$ unless $r$ is much smaller.

# %%
H_states = enumerate_binary(3)  # (8, H)


def visible_kernel(params):
    """The Gibbs sweep's kernel over the 16 visible states: (16, 16), rows sum to 1."""
    ph = rbm.hidden_probability(params, states)  # (16, H)
    p_h = np.prod(np.where(H_states[None] == 1, ph[:, None], 1 - ph[:, None]), axis=2)  # (16, 8)
    pv = rbm.visible_probability(params, H_states)  # (8, D)
    p_v = np.prod(np.where(states[None] == 1, pv[:, None], 1 - pv[:, None]), axis=2)  # (8, 16)
    return p_h @ p_v


for scale in (1.0, 8.0):
    model = tiny._replace(W=scale * tiny.W)
    K = visible_kernel(model)  # (16, 16)
    p_model = rbm.exact_probability_v(model)  # (16,)
    assert stationary_distance(p_model, K) < 1e-12  # the sweep keeps p
    q0 = np.prod(np.where(states == 1, sigmoid(model.a), 1 - sigmoid(model.a)), axis=1)  # (16,)
    second = np.sort(np.abs(np.linalg.eigvals(K)))[-2]
    distances = []
    for r in (0.5, 0.1, 0.01, 0.001):
        restarted = r * np.outer(np.ones(16), q0) + (1 - r) * K  # (16, 16)
        values, vectors = np.linalg.eig(restarted.T)
        pi_r = np.real(vectors[:, np.argmax(np.real(values))])
        pi_r = pi_r / pi_r.sum()  # (16,)
        series, term = np.zeros(16), q0.copy()
        for k in range(200000):
            series += r * (1 - r) ** k * term
            term = term @ K
            if (1 - r) ** (k + 1) < 1e-17:
                break
        assert np.abs(pi_r - series).max() < 1e-10  # (5.12)
        distances.append(0.5 * np.abs(pi_r - p_model).sum())
    print(f"weights x{scale:g}: second eigenvalue of K {second:.4f}; TV(pi_r, p) for r = 0.5, 0.1, 0.01, "
          f"0.001: " + ", ".join(f"{d:.4f}" for d in distances))
    assert all(a > b for a, b in zip(distances, distances[1:]))  # smaller r, closer to p

# %% [markdown]
# The slow model keeps a large distance at rates where the fast one is already close: restarts trade a
# bias towards what fresh chains reach for a negative phase that sees it. docs/results.md section 50
# measures the trade on MNIST.

# %% [markdown]
# ## Summary
#
# * In Model R (4.1) a blank patch predicts $\hat u_{j\mid i} = W_{ij}0 = 0$, so it routes by the prior
#   $\mathrm{softmax}(\beta_i)$ whatever $h$ is, and a capsule can keep a patch routed to it blank only
#   through its weights $W_{ij}^\top h_j$ (4.5).
# * Centring an RBM is a reparametrisation; centring Model R leaves two assignment-dependent terms,
#   $[a_i = j]\,(W_{ij}^\top l_j)\cdot v_i$ and $[a_i = j]\,h_j\cdot(W_{ij}m_i)$, that (4.1) cannot express.
# * Model R with assignment biases (4b.1) frees them as $A_{ij}$ and $C_{ij}$. Every formula of Model R
#   holds with the prediction $\hat u_{j\mid i} = W_{ij}v_i + C_{ij}$ (4b.2) and the prior routing logit
#   $b_{ij}(v) = \beta_{ij} + A_{ij}\cdot v_i$ (4b.3); the visible conditional gains $A_{i a_i}$ (4b.4).
# * On a tiny model: a blank child's routing posterior is $\mathrm{softmax}(\beta)$ for every $h$ without
#   the biases and depends on $h$ with them; the energy written with loops, the three conditionals
#   and (4.9) equal their enumerated values.
# * The gradient statistics are $[a_i = j]h_j$ and $[a_i = j]v_i$ (4b.5), Rao-Blackwellised to $R_{ij}h_j$
#   and $R_{ij}v_i$; exact data minus model statistics matched central differences for all six
#   parameters (printed relative error), and the 3-block Gibbs sweep left $p(v, a)$ invariant to
#   rounding error.
# * On MNIST the plain model's blank patches route exactly by $\beta$. With the biases they are
#   routed through $C_{ij}\cdot\mu_j$: after a short run mostly by position, a learned prior, and a
#   little by the image. Trained fully (docs/results.md sec. 8) the biases gain 6.3 nats.
# * Tied weights (4b.6), $W_{ij} = \theta_i$, make the parents instances of one capsule type; the
#   gradient of $\theta_i$ is the sum over the parents (checked by central differences), and with
#   $J = 2$ the model contains the RBM (checked by enumeration). Trained on MNIST it does not
#   find the RBM: its routing stays positional, and its likelihood is below the untied model's
#   after 40 epochs and level with it after 100.
# * The mean-field data statistics are the gradient of the bound $L(v; c)$, which rewards a
#   decisive routing posterior. With $v$ clamped, the $h$ and $a$ blocks of the Gibbs sweep keep
#   $p(a\mid v)$ (4b.7, checked by enumeration), and statistics sampled that way match the exact
#   data side within Monte Carlo error where the mean-field ones do not; on MNIST they are worth
#   3.8 nats to the tied model.
# * Centred coordinates (4b.8) describe the same model; the gradient in them (4b.9) matched
#   central differences on the tiny model, and `centring=True` trains along it.
# * The chain statistics of $W$, $\gamma$ and $C$ may take their expectation over $h$ given $(v, a)$
#   instead of over $a$ given $(v, h)$ (4b.10): unbiased as well (checked by enumeration), and on a
#   trained model less noisy per sweep, because its routing is nearly decided and its hidden units
#   are not; on MNIST it nevertheless trains worse models, so (4.8) stays the default.
# * A sparsity target (4b.11) adds $\lambda(p - q)$ to the hidden biases' step, the derivative of a
#   cross-entropy penalty (checked by central differences on the mean-field inputs); on MNIST
#   the capsule model answers a pull on $\gamma$ alone with its prediction biases $C$ and loses
#   6.4 nats, and a pull on every input parameter costs both models 4 to 5 nats.
# * A shared capsule (4c.1), reached by every child beside its routed parent, couples to $v$ alone:
#   it leaves the routing posterior unchanged (4c.3), adds an exact softplus term to
#   $\log\tilde p(v)$ (4c.5), and its statistics $\sigma(x(v))\,v^\top$ matched central differences.
# * Centring the shared capsule alone (4c.8) moves only $\alpha$ and $\delta$, which no routing logit
#   contains; its gradient (4c.9) matched central differences, and the routing posterior did not move.
# * Offsets averaged over the run (5.10) scatter $2K - 1$ times less than a minibatch's means
#   (measured on MNIST minibatches); the model and its gradient are unchanged.
# * Minibatch offsets bias the centred step by $-2\Sigma/B$ where the plain step has mean 0, and
#   averaged ones by $-2\Sigma/(KB)$ (5.11, checked by exact sampling from a tiny RBM).
# * Chain restarts (5.12) give persistent chains the stationary law $\sum_k r(1-r)^k q_0K^k$ (checked
#   exactly on a tiny RBM's kernel): close to $p$ when the sweep mixes in far fewer than $1/r$ sweeps,
#   and weighted towards what chains from noise reach when it does not.
#
# ## Exercises
#
# 1. (\*) With a single parent ($J = 1$) show that the assignment biases are ordinary biases:
#    Model R with assignment biases is the Bernoulli RBM with visible biases $\alpha_i + A_{i1}$ and
#    hidden biases $\gamma_1 + \sum_i C_{i1}$ (plus the constant $\sum_i\beta_{i1}$). Check it with
#    `model_r.as_rbm` and `rbm.exact_log_partition` on a random model with $I = 3$, $d_v = 2$, $d_h = 3$.
# 2. (\*\*) Centring. For offsets $m$ (I, d_v) and $l$ (J, d_h), write the energy of the centred
#    Model R, in which child $i$'s interaction is $[a_i = j]\,(h_j - l_j)^\top W_{ij}(v_i - m_i)$, as (4b.1)
#    with tied parameters $\beta'$, $C$, $A$, and check by enumeration that the two have the same
#    $\log p(v)$ for every $v$. Then show, with the routing posterior of a blank patch, that no Model R
#    (any $W$, $\alpha$, $\gamma$, $\beta$, with $C = A = 0$) has the same conditionals as a centred one
#    whose $C \ne 0$.
# 3. (\*\*\*) A conserved quantity. Show that adding $x_i\in\mathbb{R}^{d_v}$ to $\alpha_i$ and subtracting it
#    from every $A_{ij}$ leaves $p(v, h, a)$ unchanged, that the exact gradient therefore satisfies
#    $\partial/\partial\alpha_i = \sum_j\partial/\partial A_{ij}$, and that the PCD estimate (4.8, 4b.5) satisfies
#    the same identity. Conclude that $\alpha_i - \sum_j A_{ij}$ does not change during
#    `RoutedCapsuleRBM.fit` (momentum, learning-rate schedule and weight decay on $W$ included), and
#    check it after a short fit.
#
# Solutions are in `solutions.md`.

# %%
print(f"lesson 13 ran in {time.perf_counter() - t_start:.1f} s")
