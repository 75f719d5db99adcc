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
# # Lesson 7: Model R, routing as a latent variable
#
# **Goal.** Lessons 5 and 6 showed the price of Model P: routing is a deterministic function
# inside the energy, so $p(v\mid z)$ does not factorise and each capsule expert is weak. The
# companion paper (Hauser, 2019, arXiv 1907.11639) weights sub-networks by routing
# coefficients; here we take that idea literally and make the routing choice a **latent
# variable**: $a_i \in \{1..J\}$ says which parent explains child $i$. The result, Model R, is a routed capsule RBM in which
#
# * all three block conditionals (routing, hidden, visible) are exact and factorised;
# * dynamic routing reappears as **mean-field inference** of $a$ and $h$;
# * a 3-block Gibbs sampler is exact;
# * with a single parent ($J = 1$) the model *is* a Bernoulli RBM.
#
# Labels (MODEL.md section 4, `capsnp.model_r`): (4.1) energy, (4.2) $a$ summed out,
# (4.3)-(4.5) the conditionals R, U, D, (4.6) mean field, (4.7) Gibbs sweep, (4.9) $h$ summed out.

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

from capsnp import datasets, rbm
from capsnp import model_r as mr
from capsnp.capsules import predictions, to_capsules
from capsnp.exact import enumerate_assignments, enumerate_binary, stationary_distance
from capsnp.ops import sigmoid, softmax
from capsnp.params import RParams

FAST = os.environ.get("CAPSNP_FAST", "") not in ("", "0")  # CI sets CAPSNP_FAST=1
t_start = time.perf_counter()


def random_rparams(rng, I=3, d_v=2, J=2, d_h=2, scale=1.0):
    """A tiny Model R with every parameter random: W (I, J, d_h, d_v), alpha (I, d_v), gamma (J, d_h), beta (I, J)."""
    return RParams(W=rng.normal(0.0, scale, (I, J, d_h, d_v)), alpha=rng.normal(0.0, 1.0, (I, d_v)),
                   gamma=rng.normal(0.0, 1.0, (J, d_h)), beta=rng.normal(0.0, 1.0, (I, J)))

# %% [markdown]
# ## 1. Routing assignments as latent variables (4.1)
#
# Hidden capsules are now binary vectors $h_j \in \{0,1\}^{d_h}$, and each child $i$ carries an
# assignment $a_i$. The energy couples child $i$ **only to the parent it is assigned to**:
#
# $$ E(v, h, a) = -\alpha\cdot v - \gamma\cdot h - \sum_i \Big[\beta_{i a_i} + h_{a_i}^\top W_{i a_i} v_i\Big]
#              = -\alpha\cdot v - \gamma\cdot h - \sum_i \Big[\beta_{i a_i} + \hat u_{a_i\mid i}\cdot h_{a_i}\Big]. \tag{4.1} $$
#
# For a fixed $a$ this is an RBM whose connections are "child $i$ to parent $a_i$"; $\beta$ is
# a prior over assignments. The agreement $\hat u_{j\mid i}\cdot h_j$ of lesson 3 is now an
# energy term. A naive version, one state at a time:

# %%
def naive_energy(params, v, h, a):
    """(4.1) for one state: v (I, d_v), h (J, d_h), a (I,) ints."""
    W, alpha, gamma, beta = params
    e = -np.sum(alpha * v) - np.sum(gamma * h)
    for i, j in enumerate(a):
        e -= beta[i, j] + h[j] @ W[i, j] @ v[i]
    return e


rng = np.random.default_rng(0)
p = random_rparams(rng)  # I = 3, d_v = 2, J = 2, d_h = 2
I, J, d_h, d_v = p.W.shape
Vs = enumerate_binary(I * d_v).reshape(-1, I, d_v)  # (64, I, d_v)
Hs = enumerate_binary(J * d_h).reshape(-1, J, d_h)  # (16, J, d_h)
As = enumerate_assignments(I, J)  # (8, I): child 0 varies fastest
Nv, Nh, Na = len(Vs), len(Hs), len(As)
print(f"tiny model: I = {I}, d_v = {d_v}, J = {J}, d_h = {d_h}; {Nv} x {Nh} x {Na} = {Nv * Nh * Na} joint states")

E_table = np.array([[[naive_energy(p, v, h, a) for a in As] for h in Hs] for v in Vs])  # (Nv, Nh, Na)
vg = np.repeat(Vs, Nh * Na, axis=0)
hg = np.tile(np.repeat(Hs, Na, axis=0), (Nv, 1, 1))
ag = np.tile(As, (Nv * Nh, 1))
np.testing.assert_allclose(mr.energy(p, vg, hg, ag), E_table.ravel(), rtol=1e-12, atol=1e-12)
joint = np.exp(-E_table - np.logaddexp.reduce(-E_table.ravel()))  # (Nv, Nh, Na): p(v, h, a)
print("naive energy equals model_r.energy on every joint state: OK")

# %% [markdown]
# ## 2. Summing out the routing (4.2) or the hidden units (4.9)
#
# The energy is a sum of one term per child, and $a_i$ appears only in child $i$'s term, so the
# sum over $a \in \{1..J\}^I$ factorises over children:
#
# $$ \sum_a e^{-E(v,h,a)} = e^{\alpha\cdot v + \gamma\cdot h}\prod_i \sum_j \exp\big(\beta_{ij} + \hat u_{j\mid i}\cdot h_j\big). \tag{4.2} $$
#
# A **product over children of mixtures over parents**: each child is explained by a mixture
# of its parents' predictions. (Compare the RBM's product over hidden units, and Model P's
# product over capsules.) Summing out $h$ instead, for fixed $a$ each hidden unit appears
# linearly, with input $\gamma_{jk}$ plus the predictions of the children assigned to $j$:
#
# $$ \log \tilde p(v, a) = \alpha\cdot v + \sum_i \beta_{i a_i} + \sum_{j,k}\mathrm{softplus}\Big(\gamma_{jk} + \sum_{i:\,a_i = j}\hat u_{j\mid i,k}\Big). \tag{4.9} $$
#
# Both against brute-force sums of the table $e^{-E}$:

# %%
log_vh = np.logaddexp.reduce(-E_table, axis=2)  # (Nv, Nh): a summed out by brute force
np.testing.assert_allclose(mr.log_joint_vh(p, np.repeat(Vs, Nh, 0), np.tile(Hs, (Nv, 1, 1))),
                           log_vh.ravel(), rtol=1e-12, atol=1e-12)
log_va = np.logaddexp.reduce(-E_table, axis=1)  # (Nv, Na): h summed out by brute force
np.testing.assert_allclose(mr.log_joint_va(p, np.repeat(Vs, Na, 0), np.tile(As, (Nv, 1))),
                           log_va.ravel(), rtol=1e-12, atol=1e-12)
log_Z = np.logaddexp.reduce(-E_table.ravel())
np.testing.assert_allclose(mr.exact_log_partition(p), log_Z, rtol=1e-12)
print(f"(4.2) and (4.9) equal the brute-force sums; log Z = {log_Z:.6f}: OK")

# %% [markdown]
# ## 3. Three exact, factorised conditionals (4.3)-(4.5)
#
# Fix two of the three blocks; the energy is then a sum of independent terms in the third.
#
# * **R** (routing). Given $(v, h)$, child $i$'s term depends on $a_i$ alone:
#   $$ p(a_i = j \mid v, h) = \mathrm{softmax}_j\big(\beta_{ij} + \hat u_{j\mid i}\cdot h_j\big), \tag{4.3} $$
#   independently over children. This is Sabour's routing logit (prior plus agreement), and the
#   softmax runs over **parents**, as lesson 3 insisted: it is a distribution over which parent
#   explains child $i$.
# * **U** (up). Given $(v, a)$, $h_{jk}$ appears linearly with coefficient
#   $\gamma_{jk} + \sum_{i: a_i = j}\hat u_{j\mid i,k}$:
#   $$ p(h_{jk} = 1\mid v, a) = \sigma\Big(\gamma_{jk} + \sum_{i:\, a_i = j}\hat u_{j\mid i,k}\Big). \tag{4.4} $$
# * **D** (down). Given $(h, a)$, $v_{il}$ appears linearly with coefficient
#   $\alpha_{il} + (W_{i a_i}^\top h_{a_i})_l$:
#   $$ p(v_{il} = 1\mid h, a) = \sigma\big(\alpha_{il} + (W_{i a_i}^\top h_{a_i})_l\big). \tag{4.5} $$
#
# Each is checked against the conditional obtained from the enumerated joint table.

# %%
# (4.3): p(a | v, h) from the table, its per-child marginals, and factorisation
p_a = joint / joint.sum(axis=2, keepdims=True)  # (Nv, Nh, Na)
resp = mr.routing_posterior(p, np.repeat(Vs, Nh, 0), np.tile(Hs, (Nv, 1, 1))).reshape(Nv, Nh, I, J)  # (Nv, Nh, I, J)
onehot = (As[:, :, None] == np.arange(J)).astype(float)  # (Na, I, J)
np.testing.assert_allclose(np.einsum("vha,aij->vhij", p_a, onehot), resp, rtol=1e-10)  # (Nv, Nh, I, J)
prod = np.prod(np.einsum("vhij,aij->vhai", resp, onehot), axis=3)  # (Nv, Nh, Na): prod_i R_{i a_i}
np.testing.assert_allclose(p_a, prod, rtol=1e-10)
assert np.allclose(resp.sum(axis=-1), 1.0)

# (4.4): p(h_jk = 1 | v, a)
p_h = joint / joint.sum(axis=1, keepdims=True)  # (Nv, Nh, Na)
from_table = np.einsum("vha,hk->vak", p_h, Hs.reshape(Nh, -1)).reshape(Nv * Na, J, d_h)  # (Nv Na, J, d_h)
p_h_pkg = mr.hidden_probability(p, np.repeat(Vs, Na, 0), np.tile(As, (Nv, 1)))  # (Nv Na, J, d_h)
np.testing.assert_allclose(p_h_pkg, from_table, rtol=1e-10)

# (4.5): p(v_il = 1 | h, a)
p_v = joint / joint.sum(axis=0, keepdims=True)  # (Nv, Nh, Na)
from_table = np.einsum("vha,vl->hal", p_v, Vs.reshape(Nv, -1)).reshape(Nh * Na, I, d_v)  # (Nh Na, I, d_v)
p_v_pkg = mr.visible_probability(p, np.repeat(Hs, Na, 0), np.tile(As, (Nh, 1)))  # (Nh Na, I, d_v)
np.testing.assert_allclose(p_v_pkg, from_table, rtol=1e-10)
print("R (4.3), U (4.4), D (4.5) equal the conditionals of the enumerated joint; R factorises over children: OK")

# %% [markdown]
# ## 4. Dynamic routing as mean-field inference (4.6)
#
# For an image $v$ the posterior $p(h, a\mid v)$ couples $h$ and $a$. Approximate it by a fully
# factorised $q(h, a) = \prod_i q(a_i)\prod_{jk} q(h_{jk})$ with $q(a_i = j) = c_{ij}$ and
# $q(h_{jk} = 1) = \mu_{jk}$, chosen to maximise the evidence lower bound
#
# $$ \mathcal{L}(c, \mu) = \mathbb{E}_q[-E(v, h, a)] + \mathcal{H}(q) \le \log \sum_{h,a} e^{-E(v,h,a)} = \log\tilde p(v), $$
#
# where, because $E$ is linear in $h$ and in the indicators $[a_i = j]$,
#
# $$ \mathbb{E}_q[-E] = \alpha\cdot v + \gamma\cdot\mu + \sum_{i,j} c_{ij}\big(\beta_{ij} + \hat u_{j\mid i}\cdot\mu_j\big). $$
#
# Setting the derivative to zero in one block at a time (coordinate ascent; each step can only
# increase $\mathcal{L}$):
#
# $$ s_j = \sum_i c_{ij}\hat u_{j\mid i}, \qquad \mu_j = \sigma(\gamma_j + s_j), \qquad
#    c_{ij} = \mathrm{softmax}_j\big(\beta_{ij} + \hat u_{j\mid i}\cdot\mu_j\big). \tag{4.6} $$
#
# Put next to Sabour's procedure (2.1): the same three lines, with a **sigmoid** in place of the
# squash and **"replace"** ($b = \beta + \hat u\cdot\mu$) in place of "accumulate"
# ($b \mathrel{+}= \hat u\cdot v$). Dynamic routing, read this way, is approximate posterior
# inference in Model R. We start from $c = \mathrm{softmax}(\beta)$ and stop **per image** once an
# update changes $c$ by less than `tol`.
#
# A naive version for one image, recording $\mathcal{L}$ after every update, checked against
# `mean_field`, against the exact $\log\tilde p(v)$ (the bound must hold), and for monotonicity.

# %%
def elbo(params, v, c, mu):
    """L(c, mu) for one image: v (I, d_v), c (I, J), mu (J, d_h)."""
    W, alpha, gamma, beta = params
    u = np.einsum("ijkl,il->ijk", W, v)  # (I, J, d_h)
    energy_term = np.sum(alpha * v) + np.sum(gamma * mu) + np.sum(c * (beta + np.einsum("ijk,jk->ij", u, mu)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ent_c = -np.sum(np.where(c > 0, c * np.log(c), 0.0))
        ent_mu = -np.sum(np.where(mu > 0, mu * np.log(mu), 0.0) + np.where(mu < 1, (1 - mu) * np.log(1 - mu), 0.0))
    return energy_term + ent_c + ent_mu


def naive_mean_field(params, v, tol=1e-3, max_iter=30):
    """(4.6) for one image: returns c (I, J), mu (J, d_h), number of updates, ELBO after each update."""
    W, alpha, gamma, beta = params
    u = np.einsum("ijkl,il->ijk", W, v)  # (I, J, d_h)
    c = softmax(beta, axis=1)  # (I, J)
    n, history = max_iter, []
    for t in range(1, max_iter + 1):
        mu = sigmoid(gamma + np.einsum("ij,ijk->jk", c, u))  # (J, d_h)
        c_new = softmax(beta + np.einsum("ijk,jk->ij", u, mu), axis=1)  # (I, J): over parents
        delta = np.max(np.abs(c_new - c))
        c = c_new
        history.append(elbo(params, v, c, mu))
        if delta < tol:
            n = t
            break
    mu = sigmoid(gamma + np.einsum("ij,ijk->jk", c, u))  # (J, d_h)
    return c, mu, n, history


pm = random_rparams(np.random.default_rng(1), scale=1.5)
c_pkg, mu_pkg, n_pkg = mr.mean_field(pm, Vs, tol=1e-6, max_iter=50)
log_pt = mr.exact_log_unnormalised_marginal(pm, Vs)  # (Nv,): exact log p~(v)
gaps = []
for b, v in enumerate(Vs):
    c_n, mu_n, n_n, hist = naive_mean_field(pm, v, tol=1e-6, max_iter=50)
    np.testing.assert_allclose(c_n, c_pkg[b], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(mu_n, mu_pkg[b], rtol=1e-10, atol=1e-14)
    assert n_n == n_pkg[b]
    assert np.all(np.diff(hist) > -1e-12)  # coordinate ascent never decreases the bound
    assert elbo(pm, v, c_n, mu_n) <= log_pt[b] + 1e-12  # it is a lower bound
    gaps.append(log_pt[b] - elbo(pm, v, c_n, mu_n))
print("naive mean field equals model_r.mean_field (c, mu, iteration counts) on all 64 images: OK")
print(f"ELBO increases at every update, and log p~(v) - ELBO is in [{min(gaps):.2e}, {max(gaps):.3f}] nats")

# %% [markdown]
# ### Per-image convergence
#
# How many iterations does routing need? On an MNIST-sized Model R (4x4 patches, $J = 16$,
# $d_h = 8$, random weights of standard deviation 0.3) with real binarised digits, each image
# stops on its own once $\max_{ij}|\Delta c_{ij}| < 10^{-3}$, with a cap of 30. A stopping rule
# on the maximum over the *batch* would instead make every image run as long as the slowest one.

# %%
X, _ = datasets.load_dataset("embedded", "train")
n_img = 50 if FAST else 300
V_img = to_capsules(datasets.binarize(X[:n_img], "stochastic", random_state=0), 28, 4)  # (B, 49, 16)
r_ = np.random.default_rng(0)
p_big = RParams(W=r_.normal(0, 0.3, (49, 16, 8, 16)), alpha=np.zeros((49, 16)),
                gamma=np.zeros((16, 8)), beta=np.zeros((49, 16)))
c_img, mu_img, n_img_iter = mr.mean_field(p_big, V_img, tol=1e-3, max_iter=30)
print(f"iterations per image: median {np.median(n_img_iter):.0f}, range {n_img_iter.min()}..{n_img_iter.max()}, "
      f"{np.mean(n_img_iter == 30):.0%} hit the cap of 30")
print(f"total updates: per-image stopping {n_img_iter.sum()}, batch-wide stopping {len(n_img_iter) * n_img_iter.max()}")
print(f"mean largest coupling coefficient max_j c_ij: {c_img.max(axis=2).mean():.3f} (uniform would be {1 / 16:.3f})")

fig, ax = plt.subplots(figsize=(6.5, 3.5))
ax.hist(n_img_iter, bins=np.arange(0.5, 31.5, 1.0), color="tab:blue", edgecolor="white")
ax.set_xlabel("mean-field updates until max |delta c| < 1e-3 (cap 30)")
ax.set_ylabel("images")
ax.set_title("routing converges per image (4.6)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. The 3-block Gibbs sampler (4.7)
#
# Because all three conditionals are exact and factorised, Gibbs sampling is straightforward:
# one sweep draws $h \sim U(v, a)$, then $a \sim R(v, h)$, then $v \sim D(h, a)$. Each block
# update samples from an exact conditional, so each leaves $p(v, h, a)$ invariant, and so does
# the sweep. Since $h$ is redrawn first, the chain state is $(v, a)$. Naive version, chain by
# chain, with the uniforms drawn in the order `gibbs_sweep` documents (`rng.random((B, J, d_h))`,
# then `rng.random((B, I))` for the assignments by inverse CDF over parents, then
# `rng.random((B, I, d_v))`):

# %%
def naive_gibbs_sweep(params, v, a, rng):
    """(4.7) for chains v (B, I, d_v), a (B, I): returns v_new, h, a_new."""
    W, alpha, gamma, beta = params
    B = len(v)
    u_h, u_a, u_v = rng.random((B, J, d_h)), rng.random((B, I)), rng.random((B, I, d_v))
    v_new, h_all, a_new = np.zeros_like(v), np.zeros((B, J, d_h)), np.zeros_like(a)
    for b in range(B):
        u = np.einsum("ijkl,il->ijk", W, v[b])  # (I, J, d_h)
        x_h = gamma.copy()
        for i in range(I):
            x_h[a[b, i]] += u[i, a[b, i]]  # U (4.4): children assigned to j feed parent j
        h = (u_h[b] < sigmoid(x_h)).astype(float)  # (J, d_h)
        for i in range(I):
            r_i = softmax(beta[i] + np.einsum("jk,jk->j", u[i], h))  # R (4.3), over parents
            cdf = np.cumsum(r_i) / np.sum(r_i)
            a_new[b, i] = int(np.argmax(u_a[b, i] < cdf))  # first parent whose CDF exceeds u
        for i in range(I):
            j = a_new[b, i]
            v_new[b, i] = (u_v[b, i] < sigmoid(alpha[i] + W[i, j].T @ h[j])).astype(float)  # D (4.5)
        h_all[b] = h
    return v_new, h_all, a_new


v0 = (rng.random((40, I, d_v)) < 0.5).astype(float)
a0 = rng.integers(0, J, size=(40, I))
v1, h1, a1 = naive_gibbs_sweep(p, v0, a0, np.random.default_rng(9))
v1p, h1p, a1p, resp1 = mr.gibbs_sweep(p, v0, a0, np.random.default_rng(9))
assert np.array_equal(v1, v1p) and np.array_equal(h1, h1p) and np.array_equal(a1, a1p)
print("naive 3-block Gibbs sweep equals model_r.gibbs_sweep on 40 chains (same uniforms): OK")

# %% [markdown]
# **Invariance, exactly.** The kernel on $(v, a)$ is
# $K((v,a)\to(v',a')) = \sum_h p(h\mid v,a)\,p(a'\mid v,h)\,p(v'\mid h,a')$
# (`exact_transition_matrix`); its stationary distribution must be $p(v, a)$ from (4.9).
# On an even smaller model ($I = 2$) we can also build the three single-block kernels on the
# full state $(v, h, a)$ and check detailed balance for each, and the lack of it for the sweep.

# %%
K_va = mr.exact_transition_matrix(p)  # (Nv Na, Nv Na)
pi_va = mr.exact_probability_va(p)  # (Nv Na,), index iv * Na + ia
np.testing.assert_allclose(pi_va, joint.sum(axis=1).ravel(), rtol=1e-10)  # = the table with h summed out
print(f"3-block sweep on (v, a): TV(pi K, pi) = {stationary_distance(pi_va, K_va):.1e}")
assert stationary_distance(pi_va, K_va) < 1e-12

small = random_rparams(np.random.default_rng(4), I=2, d_v=2, J=2, d_h=2)
K_h, K_a, K_v = mr.exact_block_kernels(small)
pi_vha = mr.exact_probability_vha(small)


def flow_asymmetry(pi, K):
    flow = pi[:, None] * K
    return float(np.max(np.abs(flow - flow.T)))


for name, Kb in (("h | v, a", K_h), ("a | v, h", K_a), ("v | h, a", K_v)):
    print(f"block {name}: TV(pi K, pi) = {stationary_distance(pi_vha, Kb):.1e}, "
          f"detailed-balance violation {flow_asymmetry(pi_vha, Kb):.1e}")
    assert flow_asymmetry(pi_vha, Kb) < 1e-14
K_sweep = K_h @ K_a @ K_v
print(f"sweep: TV(pi K, pi) = {stationary_distance(pi_vha, K_sweep):.1e}, "
      f"detailed-balance violation {flow_asymmetry(pi_vha, K_sweep):.1e} (not reversible, as expected)")
assert stationary_distance(pi_vha, K_sweep) < 1e-12 and flow_asymmetry(pi_vha, K_sweep) > 1e-6

# %% [markdown]
# And an empirical run: many chains of `gibbs_sweep` from random states; the histogram of their
# visible states is compared with the exact marginal $p(v)$ (`exact_log_marginal`), with the
# sampling noise of the same number of exact draws as a yardstick.

# %%
n_chains = 1000 if FAST else 4000
n_sweeps = 20 if FAST else 40
rng_run = np.random.default_rng(3)
v_c = (rng_run.random((n_chains, I, d_v)) < 0.5).astype(float)
a_c = rng_run.integers(0, J, size=(n_chains, I))
for _ in range(n_sweeps):
    v_c, _, a_c, _ = mr.gibbs_sweep(p, v_c, a_c, rng_run)
p_v_exact = np.exp(mr.exact_log_marginal(p, Vs))  # (Nv,)
idx = (v_c.reshape(n_chains, -1) @ (2 ** np.arange(I * d_v))).astype(int)
tv_chain = 0.5 * np.abs(np.bincount(idx, minlength=Nv) / n_chains - p_v_exact).sum()
tv_iid = [0.5 * np.abs(np.bincount(np.random.default_rng(r).choice(Nv, n_chains, p=p_v_exact), minlength=Nv) / n_chains
                       - p_v_exact).sum() for r in range(200)]
print(f"Gibbs chains vs exact p(v): TV = {tv_chain:.3f}; exact draws: median {np.median(tv_iid):.3f}, "
      f"99th percentile {np.quantile(tv_iid, 0.99):.3f}")
assert tv_chain < 1.2 * np.quantile(tv_iid, 0.99)

# %% [markdown]
# ## 6. One parent: Model R is an RBM
#
# With $J = 1$ every child is assigned to the single parent, $a_i = 0$, and (4.1) becomes
# $E = -\alpha\cdot v - \gamma_0\cdot h - \sum_i h^\top W_{i0} v_i - \sum_i\beta_{i0}$: a Bernoulli RBM
# (5.1) over the flattened image with $d_h$ hidden units and weights $W_{\text{rbm}}[i d_v + l, k] = W_{i0kl}$,
# plus a constant $-\sum_i \beta_{i0}$ that cancels in every probability but shifts $\log Z$.
# `as_rbm` does the conversion; every quantity must agree with `capsnp.rbm`.

# %%
p1 = random_rparams(np.random.default_rng(5), I=3, d_v=2, J=1, d_h=3)
q1 = mr.as_rbm(p1)
V1 = Vs.reshape(Nv, -1)  # (64, 6) flattened, flat index i d_v + l
np.testing.assert_allclose(mr.exact_log_marginal(p1, Vs), rbm.exact_log_marginal(q1, V1), rtol=1e-10)
np.testing.assert_allclose(mr.exact_log_partition(p1), rbm.exact_log_partition(q1) + p1.beta.sum(), rtol=1e-12)
a_zero = np.zeros((Nv, I), dtype=int)
np.testing.assert_allclose(mr.hidden_probability(p1, Vs, a_zero)[:, 0], rbm.hidden_probability(q1, V1), rtol=1e-12)
c1, mu1, n1 = mr.mean_field(p1, Vs)
assert np.all(c1 == 1.0) and np.all(n1 == 1)  # nothing to route: converged after one update
np.testing.assert_allclose(mu1[:, 0], rbm.hidden_probability(q1, V1), rtol=1e-12)  # mean field is exact
np.testing.assert_allclose(mr.exact_transition_matrix(p1), rbm.exact_transition_matrix(q1), rtol=1e-10, atol=1e-15)
print("J = 1: log p(v), log Z (up to sum beta), p(h | v), mean field and the Gibbs kernel all equal the RBM's: OK")

# %% [markdown]
# ## Summary
#
# * (4.1) A latent assignment $a_i$ per child turns routing into part of the model: for fixed $a$
#   it is an RBM between each child and its parent.
# * (4.2) Summing out $a$: a product over children of mixtures over parents; (4.9) summing out $h$:
#   softplus terms, as in the RBM's free energy.
# * (4.3)-(4.5) Routing posterior (softmax over parents of prior plus agreement), hidden and
#   visible conditionals: all exact and factorised, checked against the enumerated joint.
# * (4.6) Mean-field inference of $(a, h)$ is dynamic routing with a sigmoid and "replace"; it
#   climbs a lower bound on $\log\tilde p(v)$ and converges per image in a handful to a few
#   tens of updates.
# * (4.7) The 3-block Gibbs sweep is exact: $\pi K = \pi$ to rounding error, each block
#   reversible; with $J = 1$ everything reduces to the Bernoulli RBM.
#
# ## Exercises
#
# 1. (\*) Show that with $W = 0$ the model factorises into independent pixels
#    ($\sigma(\alpha)$), independent hidden units ($\sigma(\gamma)$) and independent assignments
#    ($\mathrm{softmax}(\beta_i)$), and that mean field is then exact after one update.
# 2. (\*\*) On the tiny model, plot the gap $\log\tilde p(v) - \mathcal{L}$ at the mean-field fixed
#    point, averaged over all 64 images, as a function of the weight scale (0.1 to 3). Why does
#    it grow?
# 3. (\*\*\*) `log_marginal_is` estimates $\log\tilde p(v)$ by importance sampling over $a$ with
#    proposal $\prod_i c_{i a_i}$ (4.10). On a tiny model with weight scale 2, compare the estimate
#    with the exact value for $S = 1, 10, 100$ samples over 200 repetitions: show that the mean
#    error is negative (biased low), and compare it with the delta-method prediction
#    $-\mathrm{Var}(w)/(2S)$, $w$ being the importance weights divided by $\tilde p(v)$. Where
#    does the prediction fail?
#
# Solutions are in `solutions.md`.

# %%
print(f"lesson 7 ran in {time.perf_counter() - t_start:.1f} s")
