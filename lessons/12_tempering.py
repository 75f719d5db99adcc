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
# # Lesson 12: parallel tempering
#
# **Goal.** Lesson 8 ran fresh Gibbs chains of trained models from noise, and their samples
# covered only a few digit classes. A Gibbs sweep changes an image a little at a time, and
# between two digit shapes lie images the model finds very improbable, so a chain crosses from
# one mode to another only rarely: fresh chains tend to stay in the modes they reach first. **Parallel tempering** (Swendsen & Wang, 1986; Geyer, 1991; Desjardins et al.,
# 2010 for RBMs) runs a ladder of chains, one at each inverse temperature
# $0 = \beta_0 < \beta_1 < \dots < \beta_K = 1$ of the AIS path (6.2) of lesson 9. At $\beta = 0$
# sits the base model of independent pixels ($W = 0$), where a chain moves freely; at $\beta = 1$
# the model itself. After every sweep, neighbouring chains propose to exchange their states. A
# Metropolis test (6.6) decides, and it keeps every chain's distribution exact, so the
# $\beta = 1$ chain still samples the model; but it now receives states that were made where the
# landscape is flat.
#
# The lesson derives the swap test, implements it naively and checks it against
# `capsnp.tempering`, proves by enumeration that a tempering sweep leaves the ladder's target
# invariant, makes the mode problem visible on an 8-pixel RBM whose $p(v)$ we can enumerate,
# runs tempering on a Model R trained on MNIST (pictures, swap rates, the spacing of the
# temperatures), and ends with what a tempering sweep costs.
#
# Labels (MODEL.md section 6, `capsnp.ais`, `capsnp.tempering`): (6.2) the annealing path,
# (6.6) the swap test; the RBM's free energy (5.4), Gibbs sweep (5.5) and exact transition
# matrix (5.8) (`capsnp.rbm`, lesson 4); Model R's sweep (4.7) and its $\log\tilde p(v, a)$ with $h$
# summed out (4.9) (`capsnp.model_r`, lesson 7).

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
from scipy.special import erfc
from scipy.stats import chi2_contingency

try:
    import capsnp
except ImportError:  # not installed: use the repository this lesson lives in (lessons/..)
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    sys.path.insert(0, str(here.parent))
    import capsnp

from capsnp import datasets, rbm
from capsnp.ais import annealing_path, base_log_odds
from capsnp.estimators import RoutedCapsuleRBM
from capsnp.exact import enumerate_binary, stationary_distance
from capsnp.params import RBMParams
from capsnp.plots import tile_images
from capsnp.tempering import (default_temperatures, parallel_tempering, swap_log_acceptance, swap_step,
                              tempered_sample)

FAST = os.environ.get("CAPSNP_FAST", "") not in ("", "0")  # CI sets CAPSNP_FAST=1
t_start = time.perf_counter()

# %% [markdown]
# ## 1. The swap test (6.6)
#
# Write $f_k = f_{\beta_k}$ for the unnormalised density of the path at $\beta_k$ and $Z_k$ for its
# sum. For the RBM, $\log f_\beta(v) = -F_{\theta_\beta}(v)$ with $W_\beta = \beta W$,
# $a_\beta = (1-\beta)a_0 + \beta a$ and $b$ unchanged (6.2); for Model R the state is $(v, a)$ and
# $\log f_\beta$ is (4.9) at the interpolated parameters. A ladder's state is
# $x = (x_0, \dots, x_K)$, one state per temperature, and its target is the **product**
#
# $$ \Pi(x) = \prod_{k=0}^{K}\frac{f_k(x_k)}{Z_k} . $$
#
# Under $\Pi$ the components are independent and the last one, $x_K$, follows the model. A Gibbs
# sweep at $\beta_k$ changes only $x_k$ and leaves $f_k/Z_k$ invariant, so it leaves $\Pi$
# invariant. The exchange of components $k$ and $k+1$ is a Metropolis-Hastings step on $\Pi$:
# propose $x'$, equal to $x$ with $x_k$ and $x_{k+1}$ exchanged, and accept with probability
# $\min\big(1, \Pi(x')\,q(x' \to x)\,/\,\Pi(x)\,q(x \to x')\big)$. The proposal is deterministic and
# its own inverse (exchanging twice gives $x$ back), so $q(x \to x') = q(x' \to x) = 1$. In the
# ratio $\Pi(x')/\Pi(x)$ every factor other than $k$ and $k+1$ cancels, and so do $Z_k$ and
# $Z_{k+1}$, each of which appears once above and once below. What remains is
#
# $$ \Delta = \log f_k(x_{k+1}) + \log f_{k+1}(x_k) - \log f_k(x_k) - \log f_{k+1}(x_{k+1}),
#    \qquad P(\text{exchange}) = \min\big(1, e^{\Delta}\big). \tag{6.6} $$
#
# No partition function is needed: tempering samples without knowing any $Z_k$, whereas AIS
# exists to estimate them. Detailed balance is one line: the probability flow from $x$ to $x'$ is
# $\Pi(x)\min\big(1, \Pi(x')/\Pi(x)\big) = \min\big(\Pi(x), \Pi(x')\big)$, which is symmetric in $x$ and
# $x'$. Nothing here used the form of the path: any family $f_\beta$ with an invariant transition
# at each temperature would do (exercise 2).
#
# The package proposes the pairs $(0,1), (2,3), \dots$ after even sweeps and $(1,2), (3,4), \dots$
# after odd ones (the even-odd scheme). The pairs of one step are disjoint, so their tests are
# independent and each is the Metropolis step above.
#
# ## 2. A naive swap step
#
# One state at a time, with the log-density written out,
# $\log f_\beta(v) = a_\beta\cdot v + \sum_j \mathrm{softplus}\big(b_j + \beta\,(W^\top v)_j\big)$, on a
# tiny RBM. `swap_step` draws one `rng.random(n)` per tested pair, in increasing $k$; the naive
# loop draws the same numbers from a second generator with the same seed.

# %%
def naive_log_f(params, a0, beta, v):
    """(6.2) log f_beta(v) = -F(v) at theta_beta, for one state v (D,)."""
    a_beta = (1 - beta) * a0 + beta * params.a  # (D,)
    return a_beta @ v + np.sum(np.logaddexp(0.0, params.b + beta * (v @ params.W)))


def naive_swap_step(params, a0, betas, states, parity, rng):
    """(6.6) for each tested pair (k, k+1) and each chain: exchange with probability min(1, e^Delta)."""
    states = [x.copy() for x in states]
    n = states[0].shape[0]
    accepted = {}
    for k in range(parity, len(betas) - 1, 2):
        u = rng.random(n)  # (n,) one uniform per chain, as swap_step draws them
        accepted[k] = np.zeros(n, dtype=bool)
        for c in range(n):
            x, y = states[k][c].copy(), states[k + 1][c].copy()  # (D,) each
            delta = (naive_log_f(params, a0, betas[k], y) + naive_log_f(params, a0, betas[k + 1], x)
                     - naive_log_f(params, a0, betas[k], x) - naive_log_f(params, a0, betas[k + 1], y))
            if u[c] < min(1.0, np.exp(delta)):
                states[k][c], states[k + 1][c] = y, x
                accepted[k][c] = True
    return states, accepted


rng = np.random.default_rng(0)
D, H = 5, 3
small = RBMParams(W=rng.normal(0, 1.5, (D, H)), a=rng.normal(0, 1, D), b=rng.normal(0, 1, H))
mean_small = rng.uniform(0.1, 0.9, D)  # (D,) pixel means for the base model
path_small = annealing_path(small, base_rate=mean_small, backend="numpy")
a0_small = base_log_odds(mean_small)  # (D,) the base model's visible biases
V5 = enumerate_binary(D)  # (32, 5)
for b in (0.0, 0.3, 1.0):
    np.testing.assert_allclose([naive_log_f(small, a0_small, b, v) for v in V5], path_small.log_f(b, V5),
                               rtol=1e-12, atol=1e-12)

betas_small = np.array([0.0, 0.3, 0.6, 1.0])
n_small = 50
states = [path_small.sample_base(n_small, rng) for _ in betas_small]  # 4 x (50, 5)
n_taken = n_tried = 0
for parity in (0, 1, 0, 1):
    states = [path_small.transition(b, x, rng) for b, x in zip(betas_small, states)]
    naive_states, naive_acc = naive_swap_step(small, a0_small, betas_small, states, parity,
                                              np.random.default_rng(100 + parity))
    pkg_states, pkg_acc = swap_step(path_small.log_f, betas_small, states, parity,
                                    np.random.default_rng(100 + parity))
    assert sorted(naive_acc) == sorted(pkg_acc) == list(range(parity, 3, 2))
    for k in pkg_acc:
        np.testing.assert_array_equal(naive_acc[k], pkg_acc[k])
    for x, y in zip(naive_states, pkg_states):
        np.testing.assert_array_equal(x, y)
    n_taken += sum(int(ok.sum()) for ok in pkg_acc.values())
    n_tried += sum(ok.size for ok in pkg_acc.values())
    states = pkg_states
print(f"naive swap loop equals tempering.swap_step on 4 steps of {n_small} chains: "
      f"{n_taken} of {n_tried} proposed exchanges accepted")
assert 0 < n_taken < n_tried  # both outcomes occurred, so both branches were compared

# %% [markdown]
# ## 3. Exact check by enumeration
#
# A tiny RBM with 3 visible and 2 hidden units has 8 visible states, so a ladder of two chains
# has $8 \times 8 = 64$ joint states $(x_{\text{lo}}, x_{\text{hi}})$, indexed
# $8\,i_{\text{lo}} + i_{\text{hi}}$ with each $i$ in the order of `enumerate_binary` (its first
# column is the least significant bit). The swap step's matrix $S$ sends $(x, y)$ to $(y, x)$ with
# probability $\min(1, e^{\Delta})$ and leaves it otherwise; the target is
# $\pi = p_{\text{lo}} \otimes p_{\text{hi}}$, with each $p_\beta$ obtained by normalising
# $f_\beta$ over the 8 states. The path starts at a base model with pixel means
# $(0.2, 0.5, 0.7)$, so that $a_0 \ne a$ and the interpolation of the visible biases is tested too.

# %%
rng = np.random.default_rng(1)
tiny = RBMParams(W=rng.normal(0, 2.0, (3, 2)), a=rng.normal(0, 1, 3), b=rng.normal(0, 1, 2))
mean_tiny = np.array([0.2, 0.5, 0.7])
a0_tiny = base_log_odds(mean_tiny)  # (3,)
path_tiny = annealing_path(tiny, base_rate=mean_tiny, backend="numpy")
V3 = enumerate_binary(3)  # (8, 3)


def intermediate(params, a0, beta):
    """(6.2) for the RBM: W_beta = beta W, a_beta = (1 - beta) a_0 + beta a, b kept."""
    return RBMParams(beta * params.W, (1 - beta) * a0 + beta * params.a, params.b)


for b in (0.0, 0.25, 0.4, 1.0):
    np.testing.assert_allclose(-rbm.free_energy(intermediate(tiny, a0_tiny, b), V3), path_tiny.log_f(b, V3),
                               rtol=1e-12, atol=1e-12)

b_lo, b_hi = 0.4, 1.0
p_lo = np.exp(path_tiny.log_f(b_lo, V3) - np.logaddexp.reduce(path_tiny.log_f(b_lo, V3)))  # (8,)
p_hi = np.exp(path_tiny.log_f(b_hi, V3) - np.logaddexp.reduce(path_tiny.log_f(b_hi, V3)))  # (8,)
pi = np.kron(p_lo, p_hi)  # (64,): pi[8 i + j] = p_lo[i] p_hi[j]
i_lo, i_hi = np.divmod(np.arange(64), 8)  # (64,) each: the two chains' state indices
x_lo, x_hi = V3[i_lo], V3[i_hi]  # (64, 3) each
delta = swap_log_acceptance(path_tiny.log_f, b_lo, b_hi, x_lo, x_hi)  # (64,)


def swap_matrix(accept):
    """The swap step as a (64, 64) matrix: (x, y) -> (y, x) with probability accept[(x, y)], else stay."""
    S = np.zeros((64, 64))
    S[np.arange(64), 8 * i_hi + i_lo] += accept
    S[np.arange(64), np.arange(64)] += 1 - accept  # x = y: both terms land on the diagonal
    return S


S = swap_matrix(np.minimum(1.0, np.exp(delta)))
flow = pi[:, None] * S  # (64, 64): probability flow pi(s) S(s, s')
print(f"swap matrix: rows sum to 1 within {np.abs(S.sum(1) - 1).max():.1e}; "
      f"|pi S - pi| (TV) = {stationary_distance(pi, S):.1e}; "
      f"detailed balance max |pi_s S_ss' - pi_s' S_s's| = {np.abs(flow - flow.T).max():.1e}")
np.testing.assert_allclose(S.sum(1), 1.0, rtol=0, atol=1e-15)
assert stationary_distance(pi, S) < 1e-15
assert np.abs(flow - flow.T).max() < 1e-15

# the Z's cancel: Delta from the normalised log p_beta is the same number
log_p_lo, log_p_hi = np.log(p_lo), np.log(p_hi)
delta_normalised = log_p_lo[i_hi] + log_p_hi[i_lo] - log_p_lo[i_lo] - log_p_hi[i_hi]  # (64,)
np.testing.assert_allclose(delta_normalised, delta, rtol=0, atol=1e-12)

# a wrong test, which looks only at the cold chain's ratio f_hi(x_lo) / f_hi(x_hi), breaks invariance
wrong = swap_matrix(np.minimum(1.0, p_hi[i_lo] / p_hi[i_hi]))
print(f"with the cold chain's ratio alone the swap would move pi by {stationary_distance(pi, wrong):.3f} in TV")
assert stationary_distance(pi, wrong) > 1e-3

# %% [markdown]
# $\pi S = \pi$ to rounding error, the flow matrix is symmetric (detailed balance), and $\Delta$
# computed from normalised probabilities is the same number as from the unnormalised $f_\beta$,
# because the $Z$'s cancel. The check has teeth: a plausible-looking but wrong test that uses only
# the cold chain's ratio moves $\pi$ visibly.
#
# A full tempering sweep is a Gibbs sweep (5.5) at each temperature (independently, so the joint
# kernel is the Kronecker product $T_{\text{lo}}\otimes T_{\text{hi}}$ of the two plain kernels of
# `rbm.exact_transition_matrix` (5.8), each at its intermediate parameters) followed by the swap
# step:

# %%
T_lo = rbm.exact_transition_matrix(intermediate(tiny, a0_tiny, b_lo))  # (8, 8)
T_hi = rbm.exact_transition_matrix(intermediate(tiny, a0_tiny, b_hi))  # (8, 8)
T_sweep = np.kron(T_lo, T_hi) @ S  # (64, 64)
marginal_hi = (pi @ T_sweep).reshape(8, 8).sum(axis=0)  # (8,): the beta = 1 chain after one sweep
print(f"tempering sweep: |pi T - pi| (TV) = {stationary_distance(pi, T_sweep):.1e}; the beta = 1 chain's "
      f"marginal stays p(v) within {np.abs(marginal_hi - p_hi).max():.1e}")
assert stationary_distance(pi, T_sweep) < 1e-15
np.testing.assert_allclose(marginal_hi, np.exp(rbm.exact_log_marginal(tiny, V3)), rtol=0, atol=1e-15)

# %% [markdown]
# ## 4. The mode problem made visible
#
# Now a model where plain Gibbs sampling struggles: 8 pixels, 2 hidden units, weights of scale 3
# (the RBM of `tests/test_tempering.py`), with $a = -W\mathbf 1/2$ and $b = -W^\top\mathbf 1/2$. These
# biases make the energy symmetric under flipping every unit ($v \to 1 - v$, $h \to 1 - h$), so
# $p(v) = p(1 - v)$. Each of the 4 hidden configurations defines a mode (the images it explains
# best, $h^*_j(v) = [\,b_j + (W^\top v)_j > 0\,]$). Every chain starts at $v = 0$: 4,000 plain Gibbs
# chains, and 4,000 ladders of `default_temperatures(10)` with all ten chains at $v = 0$ as
# well, so that tempering gets no head start (10,000 of each at full size). After each sweep we measure the total-variation
# distance between the histogram of the $\beta = 1$ states and the exact $p(v)$. The tempering
# loop below is written out (a sweep at every temperature, then `swap_step` with the parity of the
# sweep), and must equal `parallel_tempering` run with the same seed.

# %%
rng = np.random.default_rng(3)
W8 = rng.normal(0, 3, (8, 2))
coupled = RBMParams(W8, -W8.mean(axis=1), -W8.sum(axis=0) / 2)
V8 = enumerate_binary(8)  # (256, 8)
p8 = np.exp(rbm.exact_log_marginal(coupled, V8))  # (256,)
assert np.allclose(p8, p8[255 - np.arange(256)], rtol=1e-12)  # p(v) = p(1 - v): index of 1 - v is 255 - i
bits = 2 ** np.arange(8)  # state index = v @ bits (enumerate_binary's order)
mode_of_state = ((coupled.b + V8 @ coupled.W > 0) @ np.array([1, 2])).astype(int)  # (256,) h* as 0..3
mode_mass = np.bincount(mode_of_state, weights=p8, minlength=4)  # (4,)


def tv_to_exact(v):
    """Total-variation distance between the histogram of the rows of v (n, 8) and p8."""
    return 0.5 * np.abs(np.bincount((v @ bits).astype(int), minlength=256) / v.shape[0] - p8).sum()


n8 = 4000 if FAST else 10000
sweeps8 = 100
K8 = 10
betas8 = default_temperatures(K8)
path8 = annealing_path(coupled, backend="numpy")

v_plain = np.zeros((n8, 8))
tv_plain = []
g = np.random.default_rng(10)
for _ in range(sweeps8):
    v_plain, _ = rbm.gibbs_sweep(coupled, v_plain, g)
    tv_plain.append(tv_to_exact(v_plain))

ladder = [np.zeros((n8, 8)) for _ in betas8]  # K8 x (n8, 8), all at v = 0
tv_tempered, tried, taken = [], np.zeros(K8 - 1), np.zeros(K8 - 1)
g = np.random.default_rng(11)
for sweep in range(sweeps8):
    ladder = [path8.transition(b, x, g) for b, x in zip(betas8, ladder)]
    ladder, accepted = swap_step(path8.log_f, betas8, ladder, sweep % 2, g)
    for k, ok in accepted.items():
        tried[k] += ok.size
        taken[k] += ok.sum()
    tv_tempered.append(tv_to_exact(ladder[-1]))
rates8 = taken / tried  # (K8 - 1,)

pkg_ladder, pkg_rates8 = parallel_tempering(path8, betas8, n8, sweeps8, np.random.default_rng(11),
                                            states=[np.zeros((n8, 8)) for _ in betas8])
for x, y in zip(ladder, pkg_ladder):
    np.testing.assert_array_equal(x, y)
np.testing.assert_allclose(rates8, pkg_rates8, rtol=1e-15)

g = np.random.default_rng(12)
tv_floor = np.mean([tv_to_exact(V8[g.choice(256, n8, p=p8)]) for _ in range(20)])  # exact draws, same n
print(f"the written-out ladder equals parallel_tempering; swap rates of the 9 pairs: {np.round(rates8, 2)}")
reached = int(np.argmax(np.array(tv_tempered) < 1.2 * tv_floor)) + 1  # first sweep within 20% of the floor
print(f"TV to p(v) after {sweeps8} sweeps: plain Gibbs {tv_plain[-1]:.3f} ({tv_plain[-1] / tv_floor:.1f} times the "
      f"floor), tempering {tv_tempered[-1]:.3f}; {n8} exact draws {tv_floor:.3f} (the sampling-noise floor); "
      f"the tempered chains came within 20% of the floor after {reached} sweeps")
plain_mass = np.bincount(mode_of_state[(v_plain @ bits).astype(int)], minlength=4) / n8  # (4,)
tempered_mass = np.bincount(mode_of_state[(ladder[-1] @ bits).astype(int)], minlength=4) / n8  # (4,)
print("mode h*   exact mass   plain chains   tempered chains")
for m in range(4):
    print(f"  {m % 2}{m // 2}     {mode_mass[m]:10.3f}   {plain_mass[m]:12.3f}   {tempered_mass[m]:15.3f}")
start_mode, worst = mode_of_state[0], np.argmax(np.abs(plain_mass - mode_mass))
print(f"v = 0 lies in mode {start_mode % 2}{start_mode // 2} (exact mass {mode_mass[start_mode]:.3f}); "
      f"the plain chains' worst mode is {worst % 2}{worst // 2}: {plain_mass[worst]:.3f} "
      f"against {mode_mass[worst]:.3f}")
assert tv_tempered[-1] < tv_plain[-1] / 2
assert np.abs(plain_mass - mode_mass).max() > 0.1 > 0.05 > np.abs(tempered_mass - mode_mass).max()

fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
axes[0].plot(np.arange(1, sweeps8 + 1), tv_plain, label="plain Gibbs")
axes[0].plot(np.arange(1, sweeps8 + 1), tv_tempered, label=f"tempering, {K8} temperatures")
axes[0].axhline(tv_floor, color="grey", ls="--", label=f"{n8} exact draws")
axes[0].set_yscale("log")
axes[0].set_xlabel("sweeps")
axes[0].set_ylabel("TV distance to p(v)")
axes[0].set_title("chains started at v = 0")
axes[0].legend(fontsize=8)
w = 0.27
for j, (name, mass) in enumerate((("exact", mode_mass), ("plain", plain_mass), ("tempered", tempered_mass))):
    axes[1].bar(np.arange(4) + (j - 1) * w, mass, w, label=name)
axes[1].set_xticks(range(4), [f"h* = {m % 2}{m // 2}" for m in range(4)])
axes[1].set_ylabel("probability")
axes[1].set_title(f"mass per mode after {sweeps8} sweeps")
axes[1].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The start $v = 0$ lies in one of the two light modes. The plain chains leave it within a few
# sweeps, fall mostly into one of the two heavy modes, and cross to its mirror image, the other
# heavy mode, only slowly: after 100 sweeps the table shows one heavy mode with far too much mass
# and the other with far too little, and the distance to $p(v)$ is still a multiple of the noise
# floor. The tempered chains, started at the same place, come close to the floor within a few
# tens of sweeps and get the mode masses right. The swap rates are high all along the ladder: 10
# temperatures are more than this small model needs (section 6 asks what they cost).
#
# ## 5. On MNIST: Model R
#
# A small Model R (2 capsules of 50 units on 4x4 patches, PCD with 100 chains, momentum 0.5),
# trained on the embedded MNIST subset: 2,000 images for 5 epochs with `CAPSNP_FAST` (a second or
# two), 10,000 images for 10 epochs without (ten to fifteen seconds). Then fresh chains from noise, plain and
# tempered (10 temperatures), shown as the probabilities of the next visible draw,
# $p(v\mid h, a)$, as in lesson 8. Tempering starts its ladders at the base model, independent
# pixels with $p = \sigma(\alpha)$ (the model's own visible biases); the plain chains start at a
# draw of the same noise.

# %%
X_raw, y_raw = datasets.load_dataset("embedded", "train")
X_test_raw, _ = datasets.load_dataset("embedded", "test")
n_train = 2000 if FAST else 10000
X = datasets.binarize(X_raw[:n_train], "stochastic", random_state=0)  # (n_train, 784)
y = y_raw[:n_train]
n_show = 30 if FAST else 100
X_test = datasets.binarize(X_test_raw[:n_show], "stochastic", random_state=1)  # (n_show, 784)
t0 = time.perf_counter()
est = RoutedCapsuleRBM(2, 50, n_iter=5 if FAST else 10, n_chains=100, momentum=0.5, random_state=0).fit(X)
print(f"Model R (2 capsules x 50 units), {est.n_iter_} epochs on {n_train} images in "
      f"{time.perf_counter() - t0:.1f} s; "
      f"reconstruction error {est.history_[0]['reconstruction_error']:.1f} -> "
      f"{est.history_[-1]['reconstruction_error']:.1f}")

sweeps = 100 if FAST else 1000
K = 10
t0 = time.perf_counter()
plain = est.sample(n_show, n_steps=sweeps, random_state=1, return_probabilities=True)  # (n_show, 784)
t_plain = time.perf_counter() - t0
t0 = time.perf_counter()
tempered = est.sample(n_show, n_steps=sweeps, random_state=1, return_probabilities=True,
                      n_temperatures=K)  # (n_show, 784)
t_tempered = time.perf_counter() - t0
print(f"{n_show} chains x {sweeps} sweeps: plain {t_plain:.1f} s, tempering with {K} temperatures {t_tempered:.1f} s")

cmap = matplotlib.colormaps["gray"].with_extremes(bad="#808080")
fig, axes = plt.subplots(1, 3, figsize=(15, 2.4 if FAST else 4.2))
for ax, (title, S_) in zip(axes, (("training images", X[:n_show]),
                                  (f"plain chains, {sweeps} sweeps", plain),
                                  (f"tempering, {K} temperatures, {sweeps} sweeps", tempered))):
    ax.imshow(tile_images(S_, 28, 10), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()


def expected_hamming(P, B):
    """Expected Hamming distances sum_k |p_k - x_k| between rows of P (n, D) in [0, 1] and binary B (m, D): (n, m)."""
    return P.sum(1)[:, None] + B.sum(1)[None, :] - 2 * P @ B.T


print("samples            distance to nearest training image   classes of the nearest training images")
class_counts = {}
for name, P in (("test digits", X_test), ("plain chains", plain), ("tempered chains", tempered)):
    d = expected_hamming(P, X)  # (n_show, n_train)
    class_counts[name] = np.bincount(y[d.argmin(axis=1)], minlength=10)  # (10,)
    print(f"{name:16s}   {d.min(axis=1).mean():34.1f}   "
          + ", ".join(f"{c}: {k}" for c, k in enumerate(class_counts[name]) if k))
table = np.stack([class_counts["plain chains"], class_counts["tempered chains"]])  # (2, 10)
table = table[:, table.sum(axis=0) > 0]  # classes that occur in either
if table.shape[1] > 1:
    print(f"plain against tempered class counts: chi-square test of homogeneity, p = {chi2_contingency(table)[1]:.2f}")

# %% [markdown]
# What the full-size run shows (look at the figure; the `CAPSNP_FAST` model has barely learned,
# and both kinds of chains give the same grey blob, a faint superposition of digits):
#
# * Both panels are blurry and partly readable, and both are dominated by the same shape: a
#   slanted 9, often half-way to a 7 or a 4. A minority are 1s, 3s, 8s, 6s, 2s and the odd 0.
#   Our eyes find no difference in quality or in variety between the two panels.
# * The numbers agree: the mean distance to the nearest training image is about the same for
#   both (and far above the test digits', as for lesson 8's Model R), and the class counts of the
#   nearest training images differ by no more than sampling noise allows (the chi-square
#   $p$-value). With 100 samples, "no difference" only rules out large effects.
# * So on this model tempering does **not** give visibly more varied samples than plain chains
#   of the same number of sweeps. That is what one would see if the plain chains already moved
#   between this weak model's modes within 1,000 sweeps; it is also what one would see if both
#   samplers were stuck in the same way, which the pictures cannot rule out. Tempering
#   guarantees the invariance proved in section 3; how much it speeds up mixing depends on the
#   model, and on the 8-pixel RBM of section 4 it helped a lot.
#
# ### Swap rates, and how to space the temperatures
#
# `tempered_sample` returns the swap acceptance rate of each neighbouring pair. It is
# `parallel_tempering` on `annealing_path(est)` with `default_temperatures`. We call
# `parallel_tempering` directly, which takes any spacing, in chunks of 10 sweeps, passing the
# states and the generator on, so that we can keep snapshots of the ladders for later. A chunk of
# even length ends with an odd sweep, so the next chunk's first sweep (parity 0) continues the
# even-odd alternation and the chunked run equals a single run; every chunk tests each pair
# equally often, so the run's swap rates are the means of the chunks' (checked against
# `tempered_sample` on a short run with the same seed). Besides the even spacing of
# `default_temperatures`, two alternatives with the same number of temperatures: even in
# $\beta^2$, i.e. $\beta_k = \sqrt{k/(K-1)}$ (dense near $\beta = 1$), and even in $\sqrt\beta$, i.e.
# $\beta_k = \big(k/(K-1)\big)^2$ (dense near $\beta = 0$).

# %%
def run_ladders(path, betas, n, n_sweeps, rng, chunk=10):
    """parallel_tempering in chunks of `chunk` (even) sweeps: (swap rates (K-1,), snapshots of the
    states after each chunk of the second half of the run, one list of K states per snapshot)."""
    assert chunk % 2 == 0 and n_sweeps % chunk == 0
    states, chunk_rates, snapshots = None, [], []
    for c in range(n_sweeps // chunk):
        states, r = parallel_tempering(path, betas, n, chunk, rng, states=states)
        chunk_rates.append(r)
        if (c + 1) * chunk > n_sweeps // 2:
            snapshots.append(states)
    return np.mean(chunk_rates, axis=0), snapshots


n_ladders = 24 if FAST else 50
sweeps_rates = 60 if FAST else 300
grid = np.linspace(0.0, 1.0, K)
spacings = {"even in beta": grid, "even in beta^2": np.sqrt(grid), "even in sqrt(beta)": grid ** 2}
np.testing.assert_array_equal(spacings["even in beta"], default_temperatures(K))
path_r = annealing_path(est)  # states (v (n, 49, 16), a (n, 49)); base: W = 0 and the model's own biases
_, rates_short = tempered_sample(est, n_samples=n_ladders, n_sweeps=20, n_temperatures=K, random_state=2)
np.testing.assert_allclose(run_ladders(path_r, grid, n_ladders, 20, np.random.default_rng(2))[0], rates_short,
                           rtol=1e-12)
rates, snapshots = {}, {}
t0 = time.perf_counter()
for name, b in spacings.items():
    rates[name], snapshots[name] = run_ladders(path_r, b, n_ladders, sweeps_rates, np.random.default_rng(2))
print(f"chunked runs equal tempered_sample; {n_ladders} ladders x {sweeps_rates} sweeps per spacing "
      f"({time.perf_counter() - t0:.1f} s in all)")
for name, r in rates.items():
    print(f"{name:19s} betas      {np.round(spacings[name], 3)}\n"
          f"{'':19s} swap rates {np.round(r, 2)}, lowest {r.min():.2f}")

# %% [markdown]
# Why does one spacing beat another? For a small gap $\delta = \beta_{k+1} - \beta_k$,
# $\log f_{k+1}(x) - \log f_k(x) \approx \delta\, g(x)$ with $g(x) = \partial\log f_\beta(x)/\partial\beta$, the
# slope of the path, so (6.6) becomes $\Delta \approx \delta\,\big(g(x_k) - g(x_{k+1})\big)$: an exchange is
# favoured when the hotter chain holds the state that gains more from cooling. In equilibrium
# $x_k$ and $x_{k+1}$ are independent draws from two nearby distributions, so $\Delta$ has variance
# $s^2 \approx 2\delta^2\sigma_g^2$, with $\sigma_g^2 = \mathrm{Var}_\beta(g)$, and mean
# $\approx -\delta^2\sigma_g^2 = -s^2/2$ (the mean of $g$ rises along the path at the rate
# $\frac{d}{d\beta}\mathbb E_\beta[g] = \mathrm{Var}_\beta(g) + \mathbb E_\beta[\partial g/\partial\beta]$; we drop the
# second term). A Gaussian $\Delta$ with mean $-s^2/2$ and variance $s^2$ is accepted with
# probability $\mathbb E\min(1, e^\Delta) = 2\Phi(-s/2)$, which gives
#
# $$ \text{rate}_k \approx 2\,\Phi\big(-\delta\,\sigma_g/\sqrt2\big) = \mathrm{erfc}\big(\delta\,\sigma_g/2\big), $$
#
# with $\sigma_g$ averaged over the two ends of the pair. The rate of a pair falls with its gap
# times the spread of $g$. We measure $\sigma_g$ at each temperature of the even ladders, by
# central differences of `path.log_f` in $\beta$ over their snapshots (the second half of the
# run, every 10 sweeps), and compare the prediction with the measured rates.

# %%
b_even = spacings["even in beta"]
eps = 1e-5
sigma_g = np.zeros(K)
for k, b in enumerate(b_even):
    g_values = [(path_r.log_f(b + eps, snap[k]) - path_r.log_f(b - eps, snap[k])) / (2 * eps)
                for snap in snapshots["even in beta"]]  # snapshots x (n_ladders,)
    sigma_g[k] = np.std(np.concatenate(g_values))
predicted = erfc(np.diff(b_even) * (sigma_g[:-1] + sigma_g[1:]) / 4)  # (K - 1,)
print(f"sigma_g at beta = {np.round(b_even, 2)}:\n{'':10s}{np.round(sigma_g, 1)}")
print(f"swap rates of the even ladder, predicted {np.round(predicted, 2)}\n"
      f"{'':34s}measured {np.round(rates['even in beta'], 2)}")
print(f"largest |predicted - measured| {np.abs(predicted - rates['even in beta']).max():.3f}")
lowest = {name: r.min() for name, r in rates.items()}
assert lowest["even in beta"] > max(lowest["even in beta^2"], lowest["even in sqrt(beta)"])
# the Gaussian approximation is roughest at the ends, where sigma_g is largest: allow 0.15 there
assert np.abs(predicted - rates["even in beta"])[1:-1].max() < 0.1
assert np.abs(predicted - rates["even in beta"]).max() < 0.15

fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for name, b in spacings.items():
    axes[0].plot((b[1:] + b[:-1]) / 2, rates[name], marker="o", label=name)
axes[0].plot((b_even[1:] + b_even[:-1]) / 2, predicted, ls="--", color="grey", label="even: erfc(delta sigma_g / 2)")
axes[0].set_xlabel("midpoint of the pair's temperatures")
axes[0].set_ylabel("swap rate")
axes[0].set_ylim(0, 1)
axes[0].set_title(f"Model R on MNIST, {K} temperatures")
axes[0].legend(fontsize=8)
axes[1].plot(b_even, sigma_g, marker="o")
axes[1].set_xlabel("beta")
axes[1].set_ylabel("sd of d log f / d beta")
axes[1].set_ylim(0, None)
axes[1].set_title("spread of the path's slope")
fig.tight_layout()
plt.show()

# %% [markdown]
# The second-order prediction follows the measured rates closely (within 0.1 inside the ladder;
# at its ends, where $\sigma_g$ is largest and $\Delta$ least Gaussian, it can be off by a little
# more), so the product
# $\delta\,\sigma_g$ is what sets the rate of a pair. At $\beta = 0$ the ladder holds noise images with
# random routings, and $g = (\alpha - \alpha_0)\cdot v + \sum_{jk}\sigma(\gamma_{jk})\sum_{i: a_i = j}\hat u_{j\mid i,k}$
# (from 4.9; here $\alpha_0 = \alpha$, so only the routed predictions are left), so $\sigma_g$ is
# not small at the hot end. In the full-size run $\sigma_g$ is U-shaped, largest at $\beta = 0$,
# smallest in the middle, large again at $\beta = 1$, and the even ladder's rates are lowest at
# its two ends. In the `CAPSNP_FAST` model it is about flat. Either way it is about as large at
# one end of the path as at the other, and that decides between the three spacings:
#
# * **even in $\beta^2$** packs temperatures near $\beta = 1$, so its first gap is
#   $\sqrt{1/(K-1)} = 1/3$ instead of $1/9$, right where $\sigma_g$ is large: the first pair
#   hardly ever swaps, and a ladder is only as good as its worst pair (a state made at
#   $\beta = 0$ must pass every pair to reach $\beta = 1$);
# * **even in $\sqrt\beta$** packs them near $\beta = 0$, and the last gap widens to
#   $1 - (8/9)^2 \approx 0.21$ instead: now the last pair is the bottleneck;
# * **even in $\beta$** widens neither end, and has the highest lowest rate of the three (asserted
#   above).
#
# That is why `default_temperatures` spaces them evenly: among these simple rules it is the one
# that does not starve either end of a path whose slope varies about as much at the hot end as at
# the cold end. It is not optimal. Equal rates need $\delta_k\,\sigma_g(\beta_k)$ constant, i.e.
# temperatures spaced evenly in the "thermodynamic length" $\Lambda(\beta) = \int_0^\beta\sigma_g(b)\,db$,
# which needs $\sigma_g$ from a pilot run (exercise 3). The number of temperatures sets the overall
# level: more temperatures shrink every gap and raise every rate ($\mathrm{erfc}(\delta\sigma_g/2) \to 1$
# as $\delta \to 0$), at a cost per sweep that grows in proportion (section 6).
#
# ## 6. What a tempering sweep costs
#
# A tempering sweep applies the sampler's sweep at each of the $K$ temperatures, then tests the
# pairs of one parity, $\lceil (K-1)/2\rceil$ and $\lfloor (K-1)/2\rfloor$ of them on alternate sweeps,
# and each test (6.6) evaluates $\log f$ four times (both states at both temperatures):
#
# $$ \text{cost of a tempering sweep} = K \times \text{(one sweep)} + 4 \times \text{(pairs tested)} \times \text{(one evaluation of } \log f\text{)} . $$
#
# (Two of the four, $\log f_k(x_k)$ and $\log f_{k+1}(x_{k+1})$, could be shared with the sweep that
# produced those states; `capsnp.tempering` recomputes them.) We count the calls by wrapping the
# path's functions, then time each piece on the Model R of section 5.

# %%
calls = {"log_f": 0, "transition": 0}


def counted_log_f(beta, state):
    calls["log_f"] += 1
    return path_r.log_f(beta, state)


def counted_transition(beta, state, g):
    calls["transition"] += 1
    return path_r.transition(beta, state, g)


n_cost = 20  # tempering sweeps
counted_path = path_r._replace(log_f=counted_log_f, transition=counted_transition)
t0 = time.perf_counter()
parallel_tempering(counted_path, grid, n_ladders, n_cost, np.random.default_rng(4))
t_tempering = (time.perf_counter() - t0) / n_cost
pairs_tested = sum(len(range(s % 2, K - 1, 2)) for s in range(n_cost))
print(f"{n_cost} tempering sweeps with K = {K}: {calls['transition']} sweeps of the sampler "
      f"(K per tempering sweep), {calls['log_f']} evaluations of log f = 4 x {pairs_tested} pairs tested")
assert calls["transition"] == K * n_cost and calls["log_f"] == 4 * pairs_tested

state = snapshots["even in beta"][-1][-1]  # n_ladders states of the beta = 1 chain
g = np.random.default_rng(5)
t0 = time.perf_counter()
for _ in range(n_cost):
    path_r.transition(1.0, state, g)
t_sweep = (time.perf_counter() - t0) / n_cost
t0 = time.perf_counter()
for _ in range(n_cost):
    path_r.log_f(1.0, state)
t_log_f = (time.perf_counter() - t0) / n_cost
predicted_t = K * t_sweep + 4 * pairs_tested / n_cost * t_log_f
print(f"{n_ladders} chains of Model R: one sweep {1e3 * t_sweep:.2f} ms, one log f {1e3 * t_log_f:.2f} ms "
      f"({t_log_f / t_sweep:.2f} sweeps); a tempering sweep {1e3 * t_tempering:.1f} ms, predicted "
      f"{1e3 * predicted_t:.1f} ms; it costs as much as {t_tempering / t_sweep:.1f} plain sweeps, so the "
      f"{sweeps} tempering sweeps of section 5 cost as much as about {sweeps * t_tempering / t_sweep:,.0f} plain ones")

# %% [markdown]
# So a comparison at equal cost gives the plain chain at least $K$ times as many sweeps. On the
# 8-pixel RBM of section 4 we continue the plain chains to $K \times 100$ sweeps and add a shorter
# ladder of 4 temperatures, run for the same total number of sweeps of the sampler, and plot the
# distance to $p(v)$ against that total (the $\log f$ evaluations come on top; their share is
# printed).

# %%
cost_total = K8 * sweeps8  # sweeps of the sampler, summed over the ladder
g = np.random.default_rng(10 + 1000)
tv_plain_long = list(tv_plain)
for _ in range(cost_total - sweeps8):
    v_plain, _ = rbm.gibbs_sweep(coupled, v_plain, g)
    tv_plain_long.append(tv_to_exact(v_plain))

K4 = 4
betas4 = default_temperatures(K4)
ladder4 = [np.zeros((n8, 8)) for _ in betas4]
tv_k4 = []
g = np.random.default_rng(13)
for sweep in range(cost_total // K4):
    ladder4 = [path8.transition(b, x, g) for b, x in zip(betas4, ladder4)]
    ladder4, acc4 = swap_step(path8.log_f, betas4, ladder4, sweep % 2, g)
    tv_k4.append(tv_to_exact(ladder4[-1]))

x_state = np.zeros((n8, 8))
t0 = time.perf_counter()
for _ in range(50):
    rbm.gibbs_sweep(coupled, x_state, g)
t_sweep8 = (time.perf_counter() - t0) / 50
t0 = time.perf_counter()
for _ in range(50):
    path8.log_f(1.0, x_state)
t_log_f8 = (time.perf_counter() - t0) / 50
extra = {k: 4 * np.mean([len(range(s_ % 2, k - 1, 2)) for s_ in range(2)]) * t_log_f8 / (k * t_sweep8)
         for k in (K4, K8)}  # log f evaluations per tempering sweep, as a fraction of its K sweeps
print(f"8-pixel RBM, {n8} chains: one evaluation of log f costs {t_log_f8 / t_sweep8:.2f} Gibbs sweeps; they add "
      f"{100 * extra[K4]:.0f}% (K = {K4}) and {100 * extra[K8]:.0f}% (K = {K8}) to the sweeps counted below")

print("sweeps of the sampler   plain Gibbs   tempering K = 4   tempering K = 10   (TV to p(v))")
for c in (50, 100, 200, 500, cost_total):
    print(f"{c:21d}   {tv_plain_long[c - 1]:11.3f}   {tv_k4[c // K4 - 1]:15.3f}   {tv_tempered[c // K8 - 1]:16.3f}")
print(f"noise floor {tv_floor:.3f}")
assert tv_plain_long[-1] < tv_plain[-1]  # the plain chains do keep converging
assert tv_k4[200 // K4 - 1] < min(tv_plain_long[199], tv_tempered[200 // K8 - 1])  # the short ladder leads at 200

fig, ax = plt.subplots(figsize=(6.5, 3.8))
ax.plot(np.arange(1, cost_total + 1), tv_plain_long, label="plain Gibbs")
ax.plot(K4 * np.arange(1, len(tv_k4) + 1), tv_k4, label=f"tempering, {K4} temperatures")
ax.plot(K8 * np.arange(1, len(tv_tempered) + 1), tv_tempered, label=f"tempering, {K8} temperatures")
ax.axhline(tv_floor, color="grey", ls="--", label="noise floor")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("sweeps of the sampler, summed over the ladder")
ax.set_ylabel("TV distance to p(v)")
ax.set_title("8-pixel RBM, chains from v = 0, at equal cost")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# On Model R a tempering sweep with 10 temperatures costs well over 10 plain sweeps (printed
# above): the $K$ sweeps plus the $\log f$ evaluations, each a sizeable fraction of a sweep. The
# prediction from the separately timed pieces agrees with the measured time only roughly, as
# timings on a busy machine do. On the 8-pixel RBM the evaluations add the printed percentages on
# top of the figure's horizontal axis. Read at equal cost, the figure says:
#
# * the short ladder ($K = 4$) reaches the noise floor first, well before plain Gibbs (asserted at
#   200 sweeps of cost);
# * the long ladder ($K = 10$), whose swap rates were needlessly high, is no better than plain
#   Gibbs at first and only a little ahead later, on an axis that leaves out the $\log f$
#   evaluations, which weigh more for it than for the short ladder; by 500 sweeps of cost all
#   three are at or near the floor: the plain chains of this toy do cross between the modes, just
#   slowly.
#
# So tempering pays when the plain chain's time to cross between modes is much longer than the
# time a state needs to travel along the ladder, and the ladder should be no longer than it must
# be to keep every pair's swap rate reasonable. On MNIST models the crossing time of plain chains
# is unknown and may be very long; section 5 did not show a gain for our small Model R, whose
# tempering sweeps cost as much as the many plain sweeps printed above.
#
# ## Summary
#
# * Parallel tempering runs one chain per inverse temperature of the AIS path (6.2), from the
#   independent-pixel base model ($\beta = 0$) to the model ($\beta = 1$), and exchanges
#   neighbouring states with the swap test (6.6).
# * (6.6) is a Metropolis step on the product $\prod_k f_k(x_k)/Z_k$ with a self-inverse
#   proposal; the $Z_k$ cancel, so no partition function is needed. The naive swap loop equalled
#   `tempering.swap_step` draw for draw, and a written-out ladder equalled `parallel_tempering`.
# * By enumeration on a 3-pixel RBM: the swap matrix and the whole tempering sweep (Gibbs kernels
#   at both temperatures, then the swap) leave $\pi = p_{\text{lo}}\otimes p_{\text{hi}}$ invariant to
#   rounding error, the swap satisfies detailed balance, and a plausible wrong test does not.
# * On a strongly coupled 8-pixel RBM with chains started at $v = 0$, plain Gibbs over-weighted
#   one of two mirror-image modes after 100 sweeps; tempering with 10 temperatures reached the
#   sampling-noise floor. At equal cost a 4-temperature ladder still won clearly; a
#   10-temperature one was at best a little ahead of plain Gibbs.
# * On a small Model R of MNIST the tempered and plain samples looked alike (mostly 9-like
#   shapes); nothing here shows that tempering found modes the plain chains missed.
# * The swap rate of a pair is close to $\mathrm{erfc}(\delta\sigma_g/2)$, $\sigma_g$ being the spread
#   of $\partial\log f/\partial\beta$; even spacing beat spacings even in $\beta^2$ or $\sqrt\beta$
#   because $\sigma_g$ was about as large at the hot end as at the cold end.
# * A tempering sweep costs $K$ plain sweeps plus 4 evaluations of $\log f$ per tested pair.
#
# ## Exercises
#
# 1. (\*) What is $\Delta$ (6.6) when $\beta_{\text{lo}} = \beta_{\text{hi}}$, and when
#    $x_{\text{lo}} = x_{\text{hi}}$? Explain why an exchange between two chains at the same temperature
#    neither helps nor harms, and check both cases with `swap_log_acceptance` on the RBM of section 2.
# 2. (\*\*) Tempering by scaling the whole energy: $p_\beta(v, h) \propto e^{-\beta E(v, h)}$. Write
#    $\log f_\beta(v)$ for the RBM with $h$ summed out, and say what the base model ($\beta = 0$) is.
#    Build an `AnnealingPath` for it (the four fields: `log_f`, `sample_base`, `transition`,
#    `log_z_base`), check by enumeration as in section 3 that a tempering sweep on it leaves
#    the product invariant, and compare its swap rates with those of the AIS path (which keeps
#    the hidden biases and starts from the pixel means) on an RBM trained on MNIST, 10
#    temperatures each. Which pairs are slow on each path, and why?
# 3. (\*\*\*) Adaptive spacing. On the Model R of section 5, run a pilot ladder with many evenly
#    spaced temperatures, measure $\sigma_g(\beta)$, and place $K = 10$ temperatures evenly in the
#    thermodynamic length $\Lambda(\beta) = \int_0^\beta\sigma_g(b)\,db$. Compare the swap rates of
#    this ladder with the even one's: which is the lowest rate of each, and what common rate does
#    $\mathrm{erfc}(\Lambda(1)/(2(K-1)))$ predict?
#
# Solutions are in `solutions.md`.

# %%
print(f"lesson 12 ran in {time.perf_counter() - t_start:.1f} s")
