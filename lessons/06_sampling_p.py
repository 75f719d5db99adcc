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
# # Lesson 6: sampling from Model P
#
# **Goal.** Training a product of experts by contrastive divergence needs samples from the
# model. For an RBM, block Gibbs sampling is free: $p(v\mid h)$ factorises. For Model P it does
# not, and we show why. We then build an exact sampler (Metropolis-Hastings over one visible
# capsule at a time, with a gradient-informed proposal), *prove* on a tiny model that it leaves
# the model's distribution invariant by building its transition matrix exactly, and measure
# how wrong the paper-literal shortcut (`reconstruct`) is.
#
# Labels (MODEL.md section 3, `capsnp.model_p`): (3.8) local field, (3.9) MH sweep,
# (3.10) the `reconstruct` step.

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

from capsnp import model_p as mp
from capsnp.capsules import predictions
from capsnp.exact import enumerate_binary, stationary_distance
from capsnp.ops import log_sigmoid, sigmoid
from capsnp.params import PParams
from capsnp.routing import dynamic_routing

FAST = os.environ.get("CAPSNP_FAST", "") not in ("", "0")  # CI sets CAPSNP_FAST=1
t_start = time.perf_counter()


def random_pparams(rng, I=3, d_v=2, J=2, d_h=3, scale=1.0):
    """A tiny Model P with every parameter random."""
    return PParams(W=rng.normal(0.0, scale, (I, J, d_h, d_v)), alpha=rng.normal(0.0, 1.0, (I, d_v)),
                   rho=rng.normal(0.0, 1.0, J), beta=rng.normal(0.0, 1.0, (I, J)))


rng = np.random.default_rng(0)
p = random_pparams(rng)
I, J, d_h, d_v = p.W.shape
D = I * d_v
X = enumerate_binary(D).reshape(-1, I, d_v)  # (64, I, d_v): every visible state
S = len(X)
pi = np.exp(-mp.free_energy(p, X) - mp.exact_log_partition(p))  # (64,): the target p(v)
print(f"tiny model: I = {I}, d_v = {d_v}, J = {J}, d_h = {d_h}; {S} visible states; sum pi = {pi.sum():.12f}")


def state_index(v):
    """Row of each state (B, I, d_v) in X: flat bit k = i d_v + l has weight 2^k."""
    return (v.reshape(len(v), -1) @ (2 ** np.arange(D))).astype(int)


assert np.array_equal(state_index(X), np.arange(S))

# %% [markdown]
# ## 1. Why $p(v \mid z)$ does not factorise
#
# From the energy (3.1), with the firing pattern $z$ fixed,
#
# $$ p(v \mid z) \propto \exp\Big(\alpha\cdot v + \sum_{j:\,z_j = 1} \log |s_j(v)|^2\Big)
#    = e^{\alpha\cdot v} \prod_{j:\, z_j = 1} |s_j(v)|^2 . $$
#
# In an RBM the corresponding exponent is *linear* in $v$, which is what makes
# $p(v\mid h)$ a product of independent Bernoullis (5.3). Here it is not: even with the
# coupling coefficients held fixed, $|s_j|^2 = |\sum_i c_{ij} W_{ij} v_i|^2$ is a quadratic form
# with cross terms between every pair of visible units, its logarithm is not additive, and the
# routing makes $c$ depend on $v$ as well. Worse, $p(v = 0 \mid z) = 0$ whenever some $z_j = 1$
# (since $s_j(0) = 0$). So a Gibbs step "$v \sim p(v\mid z)$" is not one factorised draw.
#
# A clean numerical test of factorisation: a distribution of the form $\prod_k f_k(v_k)$ has a
# log-probability with **zero** second differences,
# $\ell(v^{11}) - \ell(v^{10}) - \ell(v^{01}) + \ell(v^{00}) = 0$ for every pair of units
# $(k, l)$ and every setting of the other units.

# %%
z = np.ones(J)  # both capsules firing
with np.errstate(divide="ignore"):
    _, s_all, _ = dynamic_routing(predictions(p.W, X), 3, p.beta)  # (64, J, d_h)
    log_pvz = np.einsum("bil,il->b", X, p.alpha) + np.log(np.sum(s_all ** 2, axis=-1)) @ z  # (64,) unnormalised
print("log p(v = 0 | z = 1) is", log_pvz[0], "(s_j(0) = 0: probability zero)")

Xf = X.reshape(S, D)  # (S, D)
interactions = []
for k in range(D):
    for l in range(k + 1, D):
        for base in np.flatnonzero((Xf[:, k] == 0) & (Xf[:, l] == 0)):
            i00, i10, i01 = base, base + 2 ** k, base + 2 ** l
            i11 = base + 2 ** k + 2 ** l
            if np.isfinite(log_pvz[[i00, i10, i01, i11]]).all():
                interactions.append(log_pvz[i11] - log_pvz[i10] - log_pvz[i01] + log_pvz[i00])
interactions = np.abs(interactions)
print(f"pairwise interactions of log p(v | z): max {interactions.max():.2f}, median {np.median(interactions):.2f} "
      f"nats (a factorised distribution has exactly 0)")
assert interactions.max() > 0.1

# %% [markdown]
# ## 2. An exact sampler: Metropolis-Hastings by capsule (3.8), (3.9)
#
# We sample the marginal $p(v) \propto e^{-F(v)}$ (3.3) directly; $z$ is not needed, since $F$
# is closed form. Update one visible capsule $v_i$ (a block of $d_v$ units) at a time:
#
# **Proposal.** A good factorised proposal for block $i$ is what the target looks like to first
# order around the current state. With $c$ held fixed, $-\partial F/\partial v_i$ is
#
# $$ t_i(v) = \alpha_i + \sum_j c_{ij}\, W_{ij}^\top g_j, \qquad
#    g_j = -\frac{\partial F}{\partial s_j} = \frac{2e^{\rho_j}s_j}{1 + e^{\rho_j}|s_j|^2}, \tag{3.8} $$
#
# the *local field*. Linearising $\log \pi(v_i', v_{-i}) \approx \mathrm{const} + t_i(v)\cdot v_i'$ gives
# the proposal $q_i(v_i' \mid v) = \prod_l \mathrm{Bernoulli}(v'_{il};\ \sigma(t_{il}(v)))$. (For an
# RBM the same recipe gives its exact conditional (5.3).)
#
# **Acceptance.** Accept $v' = (v_i', v_{-i})$ with probability
#
# $$ A(v \to v') = \min\Big(1,\ e^{F(v) - F(v')}\, \frac{q_i(v_i \mid v')}{q_i(v_i' \mid v)}\Big), \tag{3.9} $$
#
# where the reverse proposal uses the local field **at $v'$**. Standard MH algebra then gives
# detailed balance for the block update: for $v \ne v'$,
# $\pi(v)\, q_i(v_i'\mid v)\, A(v\to v') = \min\big(\pi(v) q_i(v_i'\mid v),\ \pi(v') q_i(v_i\mid v')\big)$,
# which is symmetric in $v, v'$. A sweep updates $i = 0, 1, \dots, I-1$ in turn. Each proposal
# costs one routing of the proposed state.
#
# A naive version, chain by chain, re-routing from scratch, drawing the same uniforms in the
# order `mh_sweep` documents (per block: `rng.random((B, d_v))` for the proposal, then
# `rng.random(B)` for the acceptance):

# %%
def route(params, v_one, n_iter=3):
    """Routing of one state (I, d_v): coupling c (I, J) and routed input s (J, d_h)."""
    c, s, _ = dynamic_routing(predictions(params.W, v_one[None]), n_iter, params.beta)
    return c[0], s[0]


def free_energy_one(params, v_one):
    """(3.3) for one state."""
    _, s = route(params, v_one)
    return -np.sum(params.alpha * v_one) - np.sum(np.log1p(np.exp(params.rho) * np.sum(s * s, -1)))


def local_field_one(params, v_one, i):
    """(3.8) for block i of one state: (d_v,)."""
    c, s = route(params, v_one)
    g = 2 * np.exp(params.rho)[:, None] * s / (1 + np.exp(params.rho) * np.sum(s * s, -1))[:, None]  # (J, d_h)
    return params.alpha[i] + np.einsum("j,jhl,jh->l", c[i], params.W[i], g)  # (d_v,)


def log_bernoulli(x, logit):
    """sum_l log Bernoulli(x_l; sigmoid(logit_l))."""
    return float(np.sum(np.where(x > 0.5, log_sigmoid(logit), log_sigmoid(-logit))))


def naive_mh_sweep(params, v, rng):
    """(3.9): one systematic sweep over blocks i = 0..I-1 for every chain in v (B, I, d_v)."""
    v = v.copy()
    B = len(v)
    n_acc = np.zeros(B)
    for i in range(I):
        u_prop, u_acc = rng.random((B, d_v)), rng.random(B)
        for b in range(B):
            x = v[b]
            t_x = local_field_one(params, x, i)
            y = x.copy()
            y[i] = (u_prop[b] < sigmoid(t_x)).astype(float)
            t_y = local_field_one(params, y, i)
            log_a = (free_energy_one(params, x) - free_energy_one(params, y)
                     + log_bernoulli(x[i], t_y) - log_bernoulli(y[i], t_x))
            if np.log(u_acc[b]) < log_a:
                v[b] = y
                n_acc[b] += 1
    return v, n_acc / I


V0 = (rng.random((50, I, d_v)) < 0.5).astype(float)
v_mine, acc_mine = naive_mh_sweep(p, V0, np.random.default_rng(5))
v_pkg, acc_pkg = mp.mh_sweep(p, V0, np.random.default_rng(5))
assert np.array_equal(v_mine, v_pkg) and np.allclose(acc_mine, acc_pkg)
print(f"naive MH sweep equals mh_sweep on 50 chains (same uniforms); mean acceptance {acc_pkg.mean():.2f}")

# %% [markdown]
# ## 3. Invariance, proved by enumeration
#
# On a tiny model we can write the sampler's whole transition matrix. For block $i$:
# $K_i(x, y) = q_i(y_i\mid x)\,A(x\to y)$ for every $y$ that differs from $x$ at most in block $i$,
# plus the rejected mass on the diagonal. Our own loop over states, against
# `exact_block_kernel`:

# %%
def naive_block_kernel(params, i):
    """Exact MH kernel of block i over all states: (S, S)."""
    K = np.zeros((S, S))
    F = np.array([free_energy_one(params, x) for x in X])  # (S,)
    fields = [local_field_one(params, x, i) for x in X]
    for a, x in enumerate(X):
        for block in enumerate_binary(d_v):
            y = x.copy()
            y[i] = block
            b = state_index(y[None])[0]
            q_fwd = np.exp(log_bernoulli(block, fields[a]))
            accept = min(1.0, np.exp(F[a] - F[b] + log_bernoulli(x[i], fields[b]) - log_bernoulli(block, fields[a])))
            K[a, b] += q_fwd * accept
            K[a, a] += q_fwd * (1 - accept)
    return K


K_blocks = [mp.exact_block_kernel(p, i) for i in range(I)]
np.testing.assert_allclose(naive_block_kernel(p, 1), K_blocks[1], rtol=1e-10, atol=1e-15)
K_mh = mp.exact_transition_matrix(p, "mh")  # K_0 K_1 K_2
np.testing.assert_allclose(K_mh, K_blocks[0] @ K_blocks[1] @ K_blocks[2], rtol=1e-12, atol=1e-15)
print("naive block kernel equals exact_block_kernel; the sweep kernel is K_0 K_1 K_2: OK")

# %% [markdown]
# Now the two properties. **Invariance**: $\pi K = \pi$, measured as the total-variation
# distance $\frac12\sum_y|(\pi K)(y) - \pi(y)|$ (`stationary_distance`). **Detailed balance**
# of each block: the probability flow matrix $\pi(x)K_i(x,y)$ is symmetric. The *sweep* is
# a product of reversible kernels in a fixed order, and such a product is not reversible in
# general: its flow matrix is not symmetric, although $\pi$ is still invariant (each factor
# preserves it). Its time reversal is the sweep in the opposite order.

# %%
def flow_asymmetry(K):
    flow = pi[:, None] * K
    return float(np.max(np.abs(flow - flow.T)))


print(f"sweep:      TV(pi K, pi) = {stationary_distance(pi, K_mh):.1e}")
for i, Ki in enumerate(K_blocks):
    print(f"block {i}:    TV(pi K_i, pi) = {stationary_distance(pi, Ki):.1e}   "
          f"max |pi(x)K_i(x,y) - pi(y)K_i(y,x)| = {flow_asymmetry(Ki):.1e}")
print(f"sweep:      max |pi(x)K(x,y) - pi(y)K(y,x)| = {flow_asymmetry(K_mh):.1e}   (not reversible, as expected)")
K_rev = K_blocks[2] @ K_blocks[1] @ K_blocks[0]
print(f"time reversal: max |pi(x)K(x,y) - pi(y)K_reversed(y,x)| = "
      f"{np.max(np.abs(pi[:, None] * K_mh - (pi[:, None] * K_rev).T)):.1e}")
assert stationary_distance(pi, K_mh) < 1e-12
assert all(flow_asymmetry(Ki) < 1e-14 for Ki in K_blocks)
assert flow_asymmetry(K_mh) > 1e-6

# %% [markdown]
# ## 4. The paper-literal shortcut: `reconstruct` (3.10)
#
# The description in the paper suggests a cheaper step, shaped like RBM Gibbs sampling: draw
# the firing pattern $z \sim p(z\mid v)$ (3.2), then redraw *all* visible units at once from
#
# $$ v'_{il} \sim \mathrm{Bernoulli}\Big(\sigma\big(\alpha_{il} + \textstyle\sum_j c_{ij}\, z_j\, (W_{ij}^\top s_j/|s_j|)_l\big)\Big), \tag{3.10} $$
#
# a "top-down reconstruction" from the firing capsules' poses, and always accept. It is fast
# (one routing per step instead of one per capsule), but nothing makes it leave $p(v)$
# invariant: it is not the conditional $p(v\mid z)$ (which does not factorise, section 1), and
# there is no accept/reject step to correct it. Its exact transition matrix is
# $K_{\text{rec}}(v, v') = \sum_z p(z\mid v)\prod_{il}\mathrm{Bernoulli}(v'_{il};\ \sigma(\cdot))$
# (`exact_transition_matrix(p, "reconstruct")`). Its stationary distribution is the left
# eigenvector of $K_{\text{rec}}$ with eigenvalue 1; how far is it from $\pi$?

# %%
def stationary(K):
    """Stationary distribution of a row-stochastic K: solve pi (K - 1) = 0 with sum(pi) = 1."""
    n = len(K)
    A = np.vstack([K.T - np.eye(n), np.ones((1, n))])
    rhs = np.zeros(n + 1)
    rhs[-1] = 1.0
    return np.linalg.lstsq(A, rhs, rcond=None)[0]


K_rec = mp.exact_transition_matrix(p, "reconstruct")
pi_rec = stationary(K_rec)
pi_mh = stationary(K_mh)
tv_rec = 0.5 * np.abs(pi_rec - pi).sum()
print(f"MH sweep:    stationary distribution vs pi, TV = {0.5 * np.abs(pi_mh - pi).sum():.1e}")
print(f"reconstruct: stationary distribution vs pi, TV = {tv_rec:.3f};  one step from pi drifts by "
      f"TV(pi K_rec, pi) = {stationary_distance(pi, K_rec):.3f}")
assert tv_rec > 0.05

n_models = 10 if FAST else 30
tvs = []
for seed in range(n_models):
    q = random_pparams(np.random.default_rng(1000 + seed))
    Kq = mp.exact_transition_matrix(q, "reconstruct")
    piq = np.exp(-mp.free_energy(q, X) - mp.exact_log_partition(q))
    tvs.append(0.5 * np.abs(stationary(Kq) - piq).sum())
tvs = np.array(tvs)
print(f"over {n_models} random tiny models: TV(stationary of reconstruct, pi) median {np.median(tvs):.3f}, "
      f"range [{tvs.min():.3f}, {tvs.max():.3f}]")

# %%
order = np.argsort(-pi)
fig, ax = plt.subplots(figsize=(11, 3.8))
xs = np.arange(S)
ax.bar(xs - 0.2, pi[order], width=0.4, label=r"exact $\pi(v) \propto e^{-F(v)}$ (= MH stationary)")
ax.bar(xs + 0.2, pi_rec[order], width=0.4, label="stationary distribution of `reconstruct`")
ax.set_xlabel("visible state (sorted by exact probability)")
ax.set_ylabel("probability")
ax.set_title(f"tiny Model P ({S} states): the heuristic's bias, TV = {tv_rec:.2f}")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. An empirical run
#
# Finally, run many independent MH chains from uniformly random states with `mh_sweep` and
# compare the histogram of their final states with $\pi$. On this tiny model we know the exact
# distribution of the chains after $n$ sweeps, $u K^n$ for the uniform start $u$, so we can
# tell mixing error from sampling noise. As a yardstick for the noise, the TV distance of a
# histogram of the same number of exact draws from $\pi$ is also shown. The `reconstruct`
# chains are run the same way.

# %%
n_chains = 1000 if FAST else 4000
n_sweeps = 20 if FAST else 40
rng_run = np.random.default_rng(2)
V_mh = (rng_run.random((n_chains, I, d_v)) < 0.5).astype(float)
V_rc = V_mh.copy()
acc = []
for _ in range(n_sweeps):
    V_mh, a = mp.mh_sweep(p, V_mh, rng_run)
    acc.append(a.mean())
    V_rc, _ = mp.reconstruct_step(p, V_rc, rng_run)


def hist(V):
    return np.bincount(state_index(V), minlength=S) / len(V)


u = np.full(S, 1.0 / S)
exact_after_n = u @ np.linalg.matrix_power(K_mh, n_sweeps)
tv_mh = 0.5 * np.abs(hist(V_mh) - pi).sum()
tv_rc = 0.5 * np.abs(hist(V_rc) - pi).sum()
tv_rc_own = 0.5 * np.abs(hist(V_rc) - pi_rec).sum()
draws = [np.random.default_rng(r).choice(S, n_chains, p=pi) for r in range(200)]  # exact samples
tv_iid = [0.5 * np.abs(np.bincount(d, minlength=S) / n_chains - pi).sum() for d in draws]
print(f"mean MH acceptance rate: {np.mean(acc):.2f}")
tv_exact_n = 0.5 * np.abs(exact_after_n - pi).sum()
print(f"exact distribution after {n_sweeps} sweeps vs pi: TV = {tv_exact_n:.1e} (mixing error)")
print(f"MH chains ({n_chains}) histogram vs pi:              TV = {tv_mh:.3f}")
print(f"{n_chains} exact draws from pi, histogram vs pi:      TV = {np.median(tv_iid):.3f} median, "
      f"{np.quantile(tv_iid, 0.99):.3f} 99th percentile (sampling noise)")
print(f"reconstruct chains histogram vs pi:                TV = {tv_rc:.3f}")
print(f"reconstruct chains histogram vs its own stationary: TV = {tv_rc_own:.3f}")
assert tv_mh < 1.2 * np.quantile(tv_iid, 0.99)
assert tv_rc > tv_mh

# %% [markdown]
# The MH chains are indistinguishable from exact draws; the `reconstruct` chains converge too,
# but to the wrong distribution. On a real model this bias cannot be measured by enumeration,
# which is why the exact sampler is the default and `reconstruct` is kept only to show the
# difference.
#
# ## Summary
#
# * $p(v\mid z) \propto e^{\alpha\cdot v}\prod_{j: z_j=1}|s_j(v)|^2$ does not factorise: log of a
#   quadratic form plus routing; its second differences were far from zero.
# * (3.8)-(3.9) MH by capsule with the local field $t_i = -\partial F/\partial v_i$ (routing frozen)
#   as a factorised proposal and the ratio $e^{F(v)-F(v')}q(v_i\mid v')/q(v_i'\mid v)$: each block
#   satisfies detailed balance (checked to $10^{-17}$), the sweep leaves $\pi$ invariant (to
#   $10^{-16}$) but is not reversible as a whole.
# * (3.10) `reconstruct` is fast but biased: the TV distance between its stationary distribution
#   and $\pi$ was 0.31 for this model and about 0.2 (median) over random tiny models: a bias
#   far above sampling noise, visible as soon as it can be measured.
#
# ## Exercises
#
# 1. (\*) In (3.9) the reverse proposal $q_i(v_i\mid v')$ uses the local field at $v'$. Build the
#    block kernel with the field at $v$ used for both directions, and measure its detailed-balance
#    violation and $\mathrm{TV}(\pi K, \pi)$.
# 2. (\*\*) A *random-scan* sampler picks the block $i$ uniformly at random. Show that its kernel
#    $\frac1I\sum_i K_i$ is reversible, and check it numerically. Compare the second-largest
#    eigenvalue modulus of the random-scan kernel (raised to the power $I$, for the same cost)
#    with that of the systematic sweep.
# 3. (\*\*\*) Make `reconstruct` exact by using it as an MH proposal: accept $v \to v'$ with
#    probability $\min\big(1, \frac{\pi(v')K_{\text{rec}}(v', v)}{\pi(v)K_{\text{rec}}(v, v')}\big)$.
#    Build this kernel on the tiny model, check $\pi K = \pi$, and compare its acceptance rate
#    with that of the MH sweep. Why is this impractical for a model with $J = 16$ capsules?
#
# Solutions are in `solutions.md`.

# %%
print(f"lesson 6 ran in {time.perf_counter() - t_start:.1f} s")
