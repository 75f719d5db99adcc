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
# # Lesson 8: training, from a tiny RBM to MNIST
#
# **Goal.** Lesson 4 derived the log-likelihood gradient (5.6) and measured, at fixed
# parameters, how far contrastive divergence (CD) is from it. This lesson is about the
# *dynamics* of training: what happens when a noisy, biased gradient estimate is followed for
# thousands of steps. We show why persistent chains (PCD) follow the model when the
# parameters move slowly (a stochastic-approximation argument), measure the lag of the chains
# exactly, compare exact-gradient, CD-1, CD-10 and PCD-1 training by their exact
# log-likelihood on a model small enough to enumerate, and see what learning-rate schedules
# and momentum do. Then we train the three models of the package (the RBM, Model R and
# Model P) on MNIST at lesson size and look, honestly, at what they learned.
#
# Labels: (5.5) Gibbs sweep and (5.6) gradient (MODEL.md section 5, `capsnp.rbm`); (4.7)
# 3-block sweep and (4.8) PCD statistics of Model R (`capsnp.model_r`); (3.6)-(3.7)
# gradients and (3.9)-(3.10) samplers of Model P (`capsnp.model_p`). The update rule is the
# one in the docstring of `capsnp.training`.

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
from threadpoolctl import threadpool_limits

try:
    import capsnp
except ImportError:  # not installed: use the repository this lesson lives in (lessons/..)
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    sys.path.insert(0, str(here.parent))
    import capsnp

from capsnp import datasets, rbm, training
from capsnp.capsules import from_capsules
from capsnp.estimators import BernoulliRBM, CapsulePoE, RoutedCapsuleRBM
from capsnp.exact import enumerate_binary
from capsnp.ops import log_sigmoid, sigmoid
from capsnp.params import RBMParams
from capsnp.plots import tile_images

FAST = os.environ.get("CAPSNP_FAST", "") not in ("", "0")  # CI sets CAPSNP_FAST=1
threadpool_limits(1)  # the matrices here are small: one BLAS thread is faster than several
t_start = time.perf_counter()

# %% [markdown]
# ## 1. Training as stochastic approximation
#
# The gradient of one image's log-likelihood is
#
# $$ \frac{\partial \log p(v)}{\partial \theta} = -\frac{\partial F(v)}{\partial \theta}
#    + \mathbb{E}_{v' \sim p}\Big[\frac{\partial F(v')}{\partial \theta}\Big]. \tag{5.6} $$
#
# Write $\phi(v) = -\partial_\theta F(v)$ for the per-image statistics (for the RBM's weights
# $v\,p(h = 1\mid v)^\top$, for its biases $v$ and $p(h = 1\mid v)$). Averaged over the training
# images, (5.6) becomes
#
# $$ g(\theta) = \langle\phi\rangle_{\text{data}} - \mathbb{E}_{p_\theta}[\phi], $$
#
# and training is the iteration $\theta_{t+1} = \theta_t + \eta_t\,\hat g_t$ with a noisy
# estimate $\hat g_t$. **Stochastic approximation** (Robbins & Monro, 1951) says: if the
# estimate is unbiased, $\mathbb{E}[\hat g_t\mid\text{past}] = g(\theta_t)$, and the step sizes
# satisfy $\sum_t\eta_t = \infty$ (we can travel any distance) and $\sum_t\eta_t^2 < \infty$
# (the noise averages out), then $\theta_t$ converges to a stationary point of the likelihood
# (under regularity conditions). Neither CD nor PCD is unbiased, and they fail in different
# ways.
#
# **CD-$k$** starts its chains at the data, so $\mathbb{E}[\hat g_t] = \langle\phi\rangle_{\text{data}}
# - \langle\phi\rangle_{\hat p_{\text{data}}K_\theta^k} =: g_{\text{CD}}(\theta)$, with $K_\theta$ the
# sweep (5.5) as a transition matrix. That is a *different vector field*: the iteration
# converges to zeros of $g_{\text{CD}}$, which are not zeros of $g$ (lesson 4 measured the gap).
# A smaller or decaying step does not help; only a larger $k$ does.
#
# **PCD** (Younes, 1989; Tieleman, 2008) keeps a set of chains $x_t$ and advances them at every
# step with the *current* parameters, $x_{t+1}\sim K_{\theta_t}(x_t,\cdot)$. Its estimate is biased
# too: $x_{t+1}$ is distributed as $q_{t+1} = q_t K_{\theta_t}$, not as $p_{\theta_t}$. But two facts
# make the bias small. The sweep leaves its model invariant, $p_\theta K_\theta = p_\theta$; and it
# contracts: $\lVert qK_\theta - p_\theta\rVert_{\text{TV}} \le \rho\,\lVert q - p_\theta\rVert_{\text{TV}}$ with
# $\rho < 1$ (every entry of $K_\theta$ is positive). So the **lag**
# $d_t = \lVert q_t - p_{\theta_t}\rVert_{\text{TV}}$ obeys
#
# $$ d_{t+1} \le \lVert q_tK_{\theta_t} - p_{\theta_t}\rVert + \lVert p_{\theta_t} - p_{\theta_{t+1}}\rVert
#    \le \rho\, d_t + \lVert p_{\theta_t} - p_{\theta_{t+1}}\rVert , $$
#
# and the last term is the distance the *model* moves in one step, proportional to $\eta_t$.
# With a constant step, $\limsup_t d_t \le \frac{c\,\eta}{1-\rho}$: the chains follow the model
# with a lag proportional to the step size and to the mixing time $1/(1-\rho)$. With
# $\eta_t \to 0$ the bias vanishes, and the ordinary-differential-equation argument of
# stochastic approximation with Markov noise (Younes, 1999) gives convergence to a stationary
# point of the true likelihood. The condition in words: **the parameters must move slowly
# compared with the mixing of the chains.**
#
# We can check this without any sampling noise on a tiny RBM. "PCD with infinitely many
# chains" propagates the chains' distribution exactly, $q_{t+1} = q_tK_{\theta_t}$, and uses
# $\mathbb{E}_{q_{t+1}}[\phi]$ as the model term. Data and model are those of lesson 4: 3x3 bars
# and stripes, $D = 9$ visible and $H = 6$ hidden units, the same random start.

# %%
def bars_and_stripes(side=3):
    """All distinct side x side images whose rows are all constant or whose columns are: (N, side^2)."""
    pats = set()
    for bits in enumerate_binary(side).astype(int):
        rows = np.repeat(bits[:, None], side, axis=1)  # every row constant
        pats.add(tuple(rows.ravel()))
        pats.add(tuple(rows.T.ravel()))  # every column constant
    return np.array(sorted(pats), dtype=np.float64)


data = bars_and_stripes(3)  # (14, 9)
D, H = data.shape[1], 6
V_all = enumerate_binary(D)  # (512, 9): every visible state
H_all = enumerate_binary(H)  # (64, 6): every hidden state
theta0 = RBMParams(W=np.random.default_rng(1).normal(0, 0.5, (D, H)), a=np.zeros(D), b=np.zeros(H))
p_data = np.bincount((data @ 2 ** np.arange(D)).astype(int), minlength=2**D) / len(data)  # (512,)
best = -np.log(len(data))
print(f"{len(data)} training patterns, D = {D}, H = {H}; best possible mean log-likelihood {best:.4f}")


def mean_loglik(params):
    return float(rbm.exact_log_marginal(params, data).mean())


def sweep_tables(params):
    """The two halves of the sweep (5.5): P_hv[v, h] = p(h | v) (512, 64), P_vh[h, v'] = p(v' | h) (64, 512)."""
    x = params.b + V_all @ params.W  # (512, H)
    y = params.a + H_all @ params.W.T  # (64, D)
    P_hv = np.exp(log_sigmoid(x) @ H_all.T + log_sigmoid(-x) @ (1 - H_all).T)  # (512, 64)
    P_vh = np.exp(log_sigmoid(y) @ V_all.T + log_sigmoid(-y) @ (1 - V_all).T)  # (64, 512)
    return P_hv, P_vh


def ascend(params, grad, lr):
    return RBMParams(*(x + lr * g for x, g in zip(params, grad)))


def tv(p, q):
    return 0.5 * float(np.abs(p - q).sum())


P_hv, P_vh = sweep_tables(theta0)
np.testing.assert_allclose(P_hv @ P_vh, rbm.exact_transition_matrix(theta0), rtol=1e-10, atol=1e-15)


def expected_training(rule, lr, n_steps, momentum=0.0, every=10):
    """Noise-free training: the model term of each step is an exact expectation.

    rule "exact": E_p[phi]; "CD-1": E under p_data K; "PCD": E under q_{t+1} = q_t K_{theta_t}
    (infinitely many persistent chains, started as uniform noise). Returns the parameters and
    rows (step, exact mean log-likelihood, lag TV(q_t, p_theta_t)).
    """
    th = theta0
    vel = RBMParams(*(np.zeros_like(x) for x in th))
    q = np.full(2**D, 2.0**-D)  # (512,)
    rows = []
    for t in range(n_steps):
        if rule == "exact":
            w = rbm.exact_probability_v(th)
        else:
            P_hv, P_vh = sweep_tables(th)
            if rule == "PCD":
                q = (q @ P_hv) @ P_vh  # the chains take one sweep with the current parameters
                w = q
            else:
                w = (p_data @ P_hv) @ P_vh
        g = rbm.cd_gradient(th, data, V_all, model_weights=w)
        vel = RBMParams(*(momentum * v + lr * gx for v, gx in zip(vel, g)))
        th = RBMParams(*(x + v for x, v in zip(th, vel)))
        if t % every == 0 or t == n_steps - 1:
            lag = tv(q, rbm.exact_probability_v(th)) if rule == "PCD" else np.nan
            rows.append((t + 1, mean_loglik(th), lag))
    return th, np.array(rows)


horizon = 150 if FAST else 600  # "time" = learning rate x steps, the same for every rate
runs = {}
for rule, lr in (("exact", 0.5), ("CD-1", 0.2), ("CD-1", 0.5), ("PCD", 0.2), ("PCD", 0.5), ("PCD", 2.0)):
    n = int(horizon / lr)
    runs[rule, lr] = expected_training(rule, lr, n, every=max(1, n // 100))

print("rule  rate   steps   final log-lik   lag over the 2nd half: mean   mean / rate")
for (rule, lr), (th, rows) in runs.items():
    late = rows[len(rows) // 2:, 2]
    extra = f"{np.mean(late):24.5f}   {np.mean(late) / lr:11.5f}" if rule == "PCD" else ""
    print(f"{rule:5s} {lr:4.1f}  {int(rows[-1, 0]):6d}   {rows[-1, 1]:13.4f}{extra}")

lag_per_rate = [np.mean(runs["PCD", lr][1][len(runs["PCD", lr][1]) // 2:, 2]) / lr for lr in (0.2, 0.5, 2.0)]
assert max(lag_per_rate) < 2 * min(lag_per_rate)  # the lag is proportional to the rate
assert runs["PCD", 0.2][1][-1, 1] > max(runs["CD-1", lr][1][-1, 1] for lr in (0.2, 0.5))  # PCD beats CD-1
assert abs(runs["PCD", 0.2][1][-1, 1] - runs["exact", 0.5][1][-1, 1]) < 0.05

# %% [markdown]
# Read the table: CD-1 settles clearly below the exact-gradient run, at the same value for
# both step sizes (its limit is a zero of $g_{\text{CD}}$, lesson 4). PCD with infinitely many
# chains ends within a few hundredths of a nat of exact training, and its lag late in training
# is proportional to the learning rate: lag divided by rate is nearly constant. How slow is the
# chain compared with the parameters? The sweep is reversible (lesson 4, exercise 2), so its
# eigenvalues are real; the second largest, $\lambda_2$, sets the relaxation time
# $1/(1-\lambda_2)$ in sweeps.

# %%
def relaxation_time(params):
    """1 / (1 - lambda_2) of the sweep on v, from the symmetrised (reversible) kernel."""
    K = rbm.exact_transition_matrix(params)  # (512, 512)
    s = np.sqrt(rbm.exact_probability_v(params))
    lam = np.linalg.eigvalsh(s[:, None] * K / s[None, :])  # symmetric because K is reversible
    return 1.0 / (1.0 - np.sort(np.abs(lam))[-2])


print(f"relaxation time of the sweep: at the start {relaxation_time(theta0):.1f} sweeps, "
      f"after PCD training {relaxation_time(runs['PCD', 0.5][0]):.1f} sweeps")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for (rule, lr), (th, rows) in runs.items():
    axes[0].plot(rows[:, 0] * lr, rows[:, 1], label=f"{rule}, rate {lr}")
    if rule == "PCD":
        axes[1].semilogy(rows[:, 0] * lr, rows[:, 2], label=f"rate {lr}")
axes[0].axhline(best, color="gray", ls="--", lw=1, label="best possible")
axes[0].set_xlabel("rate x steps")
axes[0].set_ylabel("exact mean log-likelihood (nats)")
axes[0].set_title("noise-free training (expected gradients)")
axes[0].legend(fontsize=8)
axes[1].set_xlabel("rate x steps")
axes[1].set_ylabel("TV(chains, model)")
axes[1].set_title("lag of infinitely many persistent chains")
axes[1].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The lag starts large (the chains start as uniform noise), drops quickly and then stays at a
# level set by the rate. Once trained, the model mixes slowly (at full size the relaxation time
# is about a hundred sweeps: the patterns are separated by several pixel flips, and the chain
# must cross improbable states to go from one to another), yet one sweep per step is enough,
# because the parameters move only a little per step.
#
# ## 2. Sampled training: exact, CD-1, CD-10 and PCD-1
#
# Now with real samples. Each rule gets the same budget of steps and the same schedule (rate
# 0.5, decayed linearly to 0), the data term uses all 14 patterns, and the model term uses
# about 100 chains: CD restarts 98 chains at the data (7 per pattern) at every step, PCD-1
# keeps 100 persistent chains started as noise. We record the exact log-likelihood.

# %%
n_steps = 2000  # also under CAPSNP_FAST: the comparison of schedules needs the full budget
starts = np.repeat(data, 7, axis=0)  # (98, 9): CD chains restart here


def train_sampled(rule, n_steps, lr0, schedule="linear", momentum=0.0, seed=0, every=20):
    """Train from theta0 with sampled gradients; returns rows (step, exact mean log-likelihood)."""
    rng = np.random.default_rng(seed)
    th = theta0
    vel = RBMParams(*(np.zeros_like(x) for x in th))
    chains = (rng.random((100, D)) < 0.5).astype(float)  # PCD: 100 persistent chains
    rows = []
    for t in range(n_steps):
        if schedule == "linear":
            lr = lr0 * (1 - t / n_steps)
        elif schedule == "1/t":
            lr = lr0 / (1 + t / 200)
        else:
            lr = lr0
        if rule == "exact":
            g = rbm.cd_gradient(th, data, V_all, model_weights=rbm.exact_probability_v(th))
        elif rule.startswith("CD"):
            v = starts
            for _ in range(int(rule[3:])):
                v, _ = rbm.gibbs_sweep(th, v, rng)
            g = rbm.cd_gradient(th, data, v)
        else:  # PCD-1
            chains, _ = rbm.gibbs_sweep(th, chains, rng)
            g = rbm.cd_gradient(th, data, chains)
        vel = RBMParams(*(momentum * v_ + lr * gx for v_, gx in zip(vel, g)))
        th = RBMParams(*(x + v_ for x, v_ in zip(th, vel)))
        if t % every == 0 or t == n_steps - 1:
            rows.append((t + 1, mean_loglik(th)))
    return np.array(rows)


def final(rows):
    """Mean exact log-likelihood over the last 10 recorded points (smooths the sampling noise)."""
    return float(rows[-10:, 1].mean())


curves = {}
print("rule     final log-lik   ms per step")
for rule in ("exact", "CD-1", "CD-10", "PCD-1"):
    t0 = time.perf_counter()
    curves[rule] = train_sampled(rule, n_steps, 0.5)
    ms = 1000 * (time.perf_counter() - t0) / n_steps
    print(f"{rule:6s}   {final(curves[rule]):13.4f}   {ms:11.2f}")
assert final(curves["PCD-1"]) > final(curves["CD-1"])
assert final(curves["CD-10"]) > final(curves["CD-1"])

fig, ax = plt.subplots(figsize=(6.5, 4))
for rule, c in curves.items():
    ax.plot(c[:, 0], c[:, 1], label=rule)
ax.axhline(best, color="gray", ls="--", lw=1, label="best possible, log(1/14)")
ax.set_xlabel("gradient step (rate 0.5 decayed linearly to 0)")
ax.set_ylabel("exact mean log-likelihood (nats)")
ax.set_title("sampled training of the tiny RBM")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# PCD-1 costs one sweep per step, like CD-1, yet ends close to CD-10 and to exact training;
# CD-1 stops well short. PCD-1 ends a few hundredths of a nat below the other two (over the
# three seeds of section 3 its final value varies by about 0.03 nats), at about a quarter of
# the cost per step of CD-10.
#
# ## 3. Learning-rate schedules and momentum
#
# The stochastic-approximation conditions ask for a decaying rate. In practice one compares a
# few schedules at a fixed budget of steps. For PCD-1, with three seeds each (one under
# `CAPSNP_FAST`):
#
# * a constant rate 0.5 (fast progress, but the noise never averages out, and the lag of
#   section 1 stays);
# * a constant rate 0.1 (less noise, slow progress);
# * 0.5 decayed linearly to 0 (what section 2 used);
# * $0.5/(1 + t/200)$, which satisfies both Robbins-Monro conditions;
# * **momentum** 0.9 with rate 0.05 decayed linearly. The update of `capsnp.training` is
#   $u \leftarrow \mu u + \eta\,\hat g$, $\theta \leftarrow \theta + u$; for a constant gradient
#   $u \to \eta\hat g/(1-\mu)$, so this has the same *effective* rate, 0.5, as the linear schedule.

# %%
n_seeds = 1 if FAST else 3
schedules = {"constant 0.5": dict(lr0=0.5, schedule="constant"),
             "constant 0.1": dict(lr0=0.1, schedule="constant"),
             "linear 0.5 -> 0": dict(lr0=0.5, schedule="linear"),
             "0.5 / (1 + t/200)": dict(lr0=0.5, schedule="1/t"),
             "linear 0.05, momentum 0.9": dict(lr0=0.05, schedule="linear", momentum=0.9)}
finals = {name: [final(train_sampled("PCD-1", n_steps, seed=s, **kw)) for s in range(n_seeds)]
          for name, kw in schedules.items()}
print(f"PCD-1, {n_steps} steps, final exact log-likelihood over {n_seeds} seeds")
for name, f in finals.items():
    print(f"{name:27s} mean {np.mean(f):8.3f}   seeds: {', '.join(f'{x:.3f}' for x in f)}")
assert np.mean(finals["linear 0.5 -> 0"]) > np.mean(finals["constant 0.5"])
assert np.mean(finals["linear 0.5 -> 0"]) > np.mean(finals["linear 0.05, momentum 0.9"])

# %% [markdown]
# The linear decay wins: large steps early for progress, small steps late so that the noise
# averages out and the chains keep up. A constant 0.5 stays noisy (its seeds disagree most), a
# constant 0.1 is still climbing when the budget runs out. The $1/t$ schedule, the textbook
# choice that satisfies both Robbins-Monro conditions, comes second: its rate has halved by step
# 200, so it gives up progress early for a guarantee about a limit we never reach. Momentum, at
# the same effective rate as the linear schedule, ends lower, and not only through sampling
# noise. Repeat the noise-free experiment of section 1 with momentum 0.9 (rate 0.05), once with
# the exact gradient and once with infinitely many persistent chains:

# %%
n_mom = 800 if FAST else 1500
_, mom_exact = expected_training("exact", 0.05, n_mom, momentum=0.9, every=10)
_, mom_pcd = expected_training("PCD", 0.05, n_mom, momentum=0.9, every=10)
_, plain_pcd = expected_training("PCD", 0.5, n_mom, momentum=0.0, every=10)
print(f"after {n_mom} steps: exact gradient + momentum {mom_exact[-1, 1]:.3f}, PCD (no sampling noise) + "
      f"momentum {mom_pcd[-1, 1]:.3f}, PCD rate 0.5 without momentum {plain_pcd[-1, 1]:.3f}")
print(f"largest lag after step 100: with momentum {mom_pcd[mom_pcd[:, 0] > 100, 2].max():.3f}, "
      f"without {plain_pcd[plain_pcd[:, 0] > 100, 2].max():.4f}")
assert mom_exact[-1, 1] > mom_pcd[-1, 1] + 0.5
assert mom_pcd[mom_pcd[:, 0] > 100, 2].max() > 10 * plain_pcd[plain_pcd[:, 0] > 100, 2].max()

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for rows, name in ((mom_exact, "exact gradient, momentum 0.9"), (mom_pcd, "PCD (infinite chains), momentum 0.9"),
                   (plain_pcd, "PCD (infinite chains), rate 0.5, no momentum")):
    axes[0].plot(rows[:, 0], rows[:, 1], label=name)
    if not np.isnan(rows[0, 2]):
        axes[1].semilogy(rows[:, 0], rows[:, 2], label=name)
axes[0].axhline(best, color="gray", ls="--", lw=1)
axes[0].set_xlabel("gradient step")
axes[0].set_ylabel("exact mean log-likelihood (nats)")
axes[0].legend(fontsize=8)
axes[1].set_xlabel("gradient step")
axes[1].set_ylabel("TV(chains, model)")
axes[1].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# With the exact gradient, momentum is harmless. With persistent chains it breaks the
# condition of section 1: the velocity keeps pushing the parameters in one direction for about
# $1/(1-\mu) = 10$ steps, the model moves away faster than the slowly mixing chains can follow,
# the lag jumps from about $10^{-3}$ to a large fraction of the total variation, and the
# "gradient" computed from chains that no longer represent the model sends the parameters
# astray. That is why the package's estimators cap the momentum at 0.5 for the first five
# epochs (`training.momentum_at`) and pair momentum 0.9 with small rates.
#
# ### Averaging the path
#
# With a constant rate the iterates never settle: near a maximum, each step adds fresh noise
# of size $\eta$ and the parameters wander around it. Their *average* wanders much less, and
# costs nothing, since it only reads the path (Polyak and Juditsky, 1992). The package keeps an
# exponential moving average with a horizon of $K$ updates (`training.moving_average`, the
# estimators' `average=K`):
#
# $$ \bar\theta_1 = \theta_1, \qquad \bar\theta_t = \bar\theta_{t-1} + (\theta_t - \bar\theta_{t-1})/K, $$
#
# so, unrolled, $\bar\theta_n = (1-\tfrac1K)^{n-1}\theta_1 + \sum_{t=2}^{n}\tfrac1K(1-\tfrac1K)^{n-t}\theta_t$:
# weights that sum to one and fall off over about $K$ updates. Training never sees the average
# (the chains and the steps use $\theta_t$), so it trades two errors: the noise of the last
# iterate, which averaging over $K$ updates shrinks, against the distance the parameters
# travelled in those $K$ updates, which it adds. First the unrolled form, then PCD-1 on the
# tiny RBM with three rates and three horizons:

# %%
rng_avg = np.random.default_rng(5)
path = [RBMParams(*(rng_avg.normal(size=x.shape) for x in theta0)) for _ in range(30)]
avg = None
for th_t in path:
    avg = training.moving_average(avg, th_t, 8)
weights = np.array([(1 - 1 / 8) ** 29] + [(1 / 8) * (1 - 1 / 8) ** (30 - t) for t in range(2, 31)])
np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-12)
np.testing.assert_allclose(avg.W, np.tensordot(weights, np.array([p.W for p in path]), axes=1),
                           rtol=1e-10, atol=1e-12)
print("moving average = the unrolled weighted sum of the path: OK")


def pcd_with_averages(n_steps, lr0, schedule, horizons, seed):
    """PCD-1 from theta0 (100 chains, as in section 2); returns the exact mean log-likelihood of
    the last iterate and {K: that of the moving average over K updates}."""
    rng = np.random.default_rng(seed)
    th, averages = theta0, {K: None for K in horizons}
    chains = (rng.random((100, D)) < 0.5).astype(float)
    for t in range(n_steps):
        lr = lr0 * (1 - t / n_steps) if schedule == "linear" else lr0
        chains, _ = rbm.gibbs_sweep(th, chains, rng)
        th = ascend(th, rbm.cd_gradient(th, data, chains), lr)
        averages = {K: training.moving_average(a, th, K) for K, a in averages.items()}
    return mean_loglik(th), {K: mean_loglik(a) for K, a in averages.items()}


horizons = (20, 100, 400)
avg_runs = {}
print(f"PCD-1, {n_steps} steps; exact log-likelihood of the last iterate and of the averages "
      f"(mean of {n_seeds} seed{'s' * (n_seeds > 1)})")
print("rule                 last    " + "   ".join(f"K = {K:<4d}" for K in horizons))
for name, lr0, schedule in (("constant 0.5", 0.5, "constant"), ("constant 0.1", 0.1, "constant"),
                            ("linear 0.5 -> 0", 0.5, "linear")):
    runs = [pcd_with_averages(n_steps, lr0, schedule, horizons, s) for s in range(n_seeds)]
    avg_runs[name] = (np.mean([r[0] for r in runs]),
                      {K: np.mean([r[1][K] for r in runs]) for K in horizons})
    last, by_k = avg_runs[name]
    print(f"{name:17s} {last:8.3f}   " + "   ".join(f"{by_k[K]:8.3f}" for K in horizons))
assert avg_runs["constant 0.5"][1][400] > avg_runs["constant 0.5"][0] + 0.3  # noise averaged out
assert avg_runs["constant 0.1"][1][400] < avg_runs["constant 0.1"][0]  # still climbing: lag
assert avg_runs["constant 0.5"][1][400] > avg_runs["linear 0.5 -> 0"][0]  # beats the decay

# %% [markdown]
# Both errors show. At a constant 0.5 the last iterate is the noisiest of all (compare
# section 3), and its average over 400 updates is the best model in this lesson, better than the
# linear decay's last iterate: the iterates circle the maximum and their mean sits near it.
# At a constant 0.1 the parameters are still climbing, so the average drags older, worse
# parameters along and loses more the longer its horizon. With the linear decay the last steps
# are already small: averaging gains a little at a short horizon and loses at a long one. On
# MNIST (docs/results.md section 21, with the decay of the estimators' presets) 1,000 updates
# were worth 0.6 to 0.7 nats to both the capsule model and the RBM-500, and 5,000 lost. The
# estimators do this with `average=K`: their fitted attributes are then the average, while
# training, the chains and `history_` run on the current parameters.

# %%
fits = {K: BernoulliRBM(H, learning_rate=0.5, batch_size=14, n_iter=200, n_chains=100, average=K,
                        random_state=0).fit(np.tile(data, (10, 1))) for K in (0, 400)}
fitted = {K: mean_loglik(RBMParams(W=e.components_.T, a=e.intercept_visible_, b=e.intercept_hidden_))
          for K, e in fits.items()}
print(f"BernoulliRBM, constant rate 0.5, 2,000 updates: last update {fitted[0]:.3f}, "
      f"average=400 {fitted[400]:.3f} (the same training run)")
assert fitted[400] > fitted[0] + 0.5

# %% [markdown]
# ## 4. The package's training loop is this loop
#
# The estimators hide the loop above behind `fit`. `capsnp.training.run_epochs` shuffles the
# rows each epoch, cuts them into near-equal minibatches and, for each, asks the model for an
# ascent direction and applies
#
# $$ u \leftarrow \mu\,u + \eta\,(\hat g - \lambda W), \qquad \theta \leftarrow \theta + u $$
#
# (weight decay $\lambda$ on the weights only). For `BernoulliRBM` the direction is (5.6) with
# chains advanced by `cd_k` sweeps (5.5). A chain keeps the hidden probabilities
# $p(h\,|\,v)$ computed for the gradient and draws its next $h$ from them (`rbm.pcd_step`,
# as scikit-learn's `h_samples_`): one hidden-layer pass fewer per step, for a lag of one
# update in that half-sweep. Written out naively, with the random draws in the order the
# docstrings give, the loop reproduces `BernoulliRBM.fit` to rounding error:

# %%
def naive_pcd_fit(X, n_hidden, lr, batch_size, n_epochs, momentum, weight_decay, seed):
    """PCD-1 by hand, in the order BernoulliRBM.fit draws its random numbers."""
    rng = np.random.default_rng(seed)
    n, D_ = X.shape
    m = np.clip(X.mean(axis=0), 1e-3, 1 - 1e-3)
    th = RBMParams(W=rng.normal(0.0, 1.0, (D_, n_hidden)) * 0.01, a=np.log(m / (1 - m)), b=np.zeros(n_hidden))
    vel = RBMParams(*(np.zeros_like(x) for x in th))
    chains = (rng.random((batch_size, D_)) < sigmoid(th.a)).astype(float)  # noise from the visible biases
    p_chains = rbm.hidden_probability(th, chains)  # p(h | chains), carried from step to step
    for epoch in range(n_epochs):
        mu = min(momentum, 0.5) if epoch < 5 else momentum  # the warm-up cap
        order = rng.permutation(n)
        for rows in np.array_split(order, int(np.ceil(n / batch_size))):
            h = (rng.random(p_chains.shape) < p_chains).astype(float)  # from the last step's p
            chains = rbm.sample_visible(th, h, rng)
            g = rbm.cd_gradient(th, X[rows], chains)
            p_chains = rbm.hidden_probability(th, chains)  # before this step's update
            g = g._replace(W=g.W - weight_decay * th.W)
            vel = RBMParams(*(mu * v + lr * gx for v, gx in zip(vel, g)))
            th = RBMParams(*(x + v for x, v in zip(th, vel)))
    return th, chains


X_tiny = np.tile(data, (10, 1))  # (140, 9)
est = BernoulliRBM(H, learning_rate=0.1, batch_size=14, n_iter=12, momentum=0.9, weight_decay=1e-3,
                   random_state=0).fit(X_tiny)
th_naive, chains_naive = naive_pcd_fit(X_tiny, H, 0.1, 14, 12, 0.9, 1e-3, seed=0)
np.testing.assert_allclose(th_naive.W, est.components_.T, rtol=1e-10, atol=1e-12)
np.testing.assert_allclose(th_naive.a, est.intercept_visible_, rtol=1e-10, atol=1e-12)
np.testing.assert_allclose(th_naive.b, est.intercept_hidden_, rtol=1e-10, atol=1e-12)
assert np.array_equal(chains_naive, est.persistent_chains_)
print(f"naive PCD-1 loop equals BernoulliRBM.fit (12 epochs, momentum with warm-up, weight decay): OK; "
      f"exact log-likelihood of the fit {mean_loglik(th_naive):.3f}")
# the capsule models also decay the rate: "linear" goes from lr to lr * final_ratio over n_iter epochs
n_ep, ratio = 8, 0.04
naive_rates = [0.05 * (1 + (ratio - 1) * e / (n_ep - 1)) for e in range(n_ep)]
np.testing.assert_allclose([training.learning_rate_at(e, 0.05, n_ep, "linear", ratio) for e in range(n_ep)],
                           naive_rates, rtol=1e-12)
assert [training.momentum_at(e, 0.9) for e in range(7)] == [0.5] * 5 + [0.9] * 2

# %% [markdown]
# `RoutedCapsuleRBM` runs the same loop with the 3-block sweep (4.7) on chains $(v, a)$ and
# the statistics (4.8): data terms at the mean-field routing of the minibatch, model terms
# Rao-Blackwellised over the routing. `CapsulePoE` uses the gradients (3.6) (`grad="full"`) or
# (3.7) (`"frozen"`) and one of two samplers: `"mh"`, the exact Metropolis-Hastings sweep
# (3.9), or `"reconstruct"` (3.10), the paper-literal step, several times faster but with no
# stated invariant distribution (lesson 6 measured its bias).
#
# ## 5. MNIST at lesson size
#
# Four models on stochastically binarised MNIST digits from the embedded subset (5,000
# training images at full size, 1,000 with `CAPSNP_FAST`):
#
# * `BernoulliRBM`, 200 hidden units, **PCD-1** (100 persistent chains), rate 0.01, momentum 0.5;
# * the same RBM trained by **CD-1** (`persistent=False`), everything else equal;
# * `RoutedCapsuleRBM` (Model R), 16 capsules of 8 units on 4x4 patches, PCD-1 with 100 chains,
#   the package defaults otherwise (rate 0.05 decayed linearly, momentum 0.9 after the warm-up);
# * `CapsulePoE` (Model P), 16 capsules of 8, `sampler="reconstruct"` for speed (the exact
#   sampler is `"mh"`, several times slower per sweep), defaults otherwise.
#
# Each estimator records one `history_` entry per epoch, with metrics on a held-out slice
# (the capsule models hold out 5% of the rows) or on training rows (the RBM).

# %%
X_raw, y_raw = datasets.load_dataset("embedded", "train")
X_test_raw, _ = datasets.load_dataset("embedded", "test")
n_train = 1000 if FAST else 5000
X = datasets.binarize(X_raw[:n_train], "stochastic", random_state=0)  # (n_train, 784)
X_test = datasets.binarize(X_test_raw[:500], "stochastic", random_state=1)  # (500, 784)
rbm_kw = dict(n_components=200, learning_rate=0.01, batch_size=100, momentum=0.5, random_state=0)
models = {
    "RBM, PCD-1": BernoulliRBM(n_iter=4 if FAST else 15, **rbm_kw),
    "RBM, CD-1": BernoulliRBM(n_iter=4 if FAST else 15, persistent=False, **rbm_kw),
    "Model R": RoutedCapsuleRBM(16, 8, n_chains=100, n_iter=3 if FAST else 15, random_state=0),
    "Model P": CapsulePoE(16, 8, sampler="reconstruct", n_iter=2 if FAST else 8, random_state=0),
}
for name, model in models.items():
    t0 = time.perf_counter()
    model.fit(X)
    speed = np.median([r["images_per_second"] for r in model.history_])
    print(f"{name:10s}: {model.n_iter_} epochs in {time.perf_counter() - t0:5.1f} s "
          f"(training steps alone: {speed:,.0f} images/s)")

# %% [markdown]
# ### Learning curves
#
# None of these numbers is a log-likelihood (lesson 9 estimates those). The reconstruction
# error (squared difference between an image and its deterministic mean reconstruction, per
# image) says whether the hidden layer keeps information about the image; the
# pseudo-log-likelihood (5.7, 3.11) needs no partition function and is comparable across the
# RBMs and Model P; Model R reports its mean-field lower bound (ELBO) on $\log\tilde p(v)$,
# which includes the unknown $\log Z$ and so is comparable only within the run.

# %%
colours = dict(zip(models, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
for name, model in models.items():
    hist = model.history_
    ep = [r["epoch"] for r in hist]
    axes[0].plot(ep, [r["reconstruction_error"] for r in hist], marker="o", color=colours[name], label=name)
    if "pseudo_log_likelihood" in hist[0]:
        axes[1].plot(ep, [r["pseudo_log_likelihood"] for r in hist], marker="o", color=colours[name], label=name)
    else:
        axes[2].plot(ep, [r["elbo"] for r in hist], marker="o", color=colours[name], label=name)
axes[0].set_title("reconstruction error (per image)")
axes[1].set_title("pseudo-log-likelihood (one-flip estimate)")
axes[2].set_title("Model R: mean-field ELBO (includes log Z)")
for ax in axes:
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

for name, model in models.items():
    h0, h1 = model.history_[0], model.history_[-1]
    print(f"{name:10s}: reconstruction error {h0['reconstruction_error']:.1f} -> {h1['reconstruction_error']:.1f}"
          + (f", Model R mean-field iterations per image {h1['mean_field_iterations']:.1f}" if "elbo" in h1 else ""))
if not FAST:  # the short CAPSNP_FAST runs barely move
    errors = [r["reconstruction_error"] for r in models["RBM, PCD-1"].history_]
    assert errors[-1] < errors[0] - 10

# %% [markdown]
# At full size the two RBMs have almost the same reconstruction error and pseudo-log-likelihood
# at every epoch: neither metric looks at what the model does away from the training images,
# and that is where CD-1 and PCD-1 differ (next figure). Model R's error stays flat during the
# five warm-up epochs and starts falling once the momentum reaches 0.9: its weight gradient is
# split over 16 parents and small, so it needs the larger effective step. Its ELBO falls as
# it learns, which is no sign of trouble: it contains $\log Z$, which changes with the
# parameters, so it compares images under one model, not one epoch with another.

# %% [markdown]
# ### Samples
#
# Three kinds of pictures per model: the **persistent chains** at the end of training (what the
# negative phase saw), **fresh chains** started from independent-pixel noise and run for many
# sweeps (what the model generates on its own), and for the fresh chains the **probabilities
# of the next visible draw** given their last state (for the RBM $p(v\mid h)$ with
# $h\sim p(h\mid v)$, for Model R $p(v\mid h, a)$; Model P has no factorised visible conditional,
# so only its binary states are shown). Probabilities are the usual way to show an RBM's
# samples: they are smoother than any single binary draw, which keeps the pixel noise.

# %%
n_show = 30
n_sweeps = 100 if FAST else 1000
n_sweeps_p = 100 if FAST else 300  # the reconstruct step routes every chain: slower per sweep
samples = {}
for name, model in models.items():
    steps = n_sweeps_p if name == "Model P" else n_sweeps
    t0 = time.perf_counter()
    fresh = model.sample(n_show, n_steps=steps, random_state=1)
    probs = None if name == "Model P" else model.sample(n_show, n_steps=steps, random_state=1,
                                                         return_probabilities=True)
    pers = None if model.persistent_chains_ is None else model.persistent_chains_[:n_show]
    samples[name] = dict(persistent=pers, fresh=fresh, probabilities=probs, sweeps=steps)
    print(f"{name:10s}: {n_show} fresh chains x {steps} sweeps in {time.perf_counter() - t0:.1f} s")

columns = ("persistent", "fresh", "probabilities")
fig, axes = plt.subplots(len(models) + 1, 3, figsize=(13, 1.75 * (len(models) + 1)))
cmap = matplotlib.colormaps["gray"].with_extremes(bad="#808080")
for r, (name, s) in enumerate([("data", dict(persistent=X[:n_show], fresh=None, probabilities=None, sweeps=0))]
                              + list(samples.items())):
    for c, key in enumerate(columns):
        ax = axes[r, c]
        ax.set_xticks([])
        ax.set_yticks([])
        if s[key] is None:
            ax.axis("off")
            continue
        ax.imshow(tile_images(s[key], 28, 10), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        title = {"persistent": "training images" if name == "data" else "persistent chains",
                 "fresh": f"fresh chains, {s['sweeps']} sweeps", "probabilities": "their next-draw probabilities"}[key]
        ax.set_title(f"{name}: {title}", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# Two numbers make the pictures less a matter of taste. **Distance to the data**: for each
# binary sample, the Hamming distance to its nearest training image. As a yardstick, the same
# for real *test* digits, new images of the same kind that carry the same binarisation noise;
# noise is far from every training image, and a copied training image would be at distance 0.
# **Variety**: the digit class of the training image nearest to each sample (nearest in
# expected Hamming distance $\sum_k\lvert p_k - x_k\rvert$ from the next-draw probabilities,
# or from the binary state for Model P). Chains that collapsed onto one template all get the
# same class.

# %%
def hamming(A, B):
    """Pairwise (expected) Hamming distances, A (n, D) binary or probabilities, B (m, D) binary -> (n, m)."""
    return A.sum(1)[:, None] + B.sum(1)[None, :] - 2 * A @ B.T


y_train = y_raw[:n_train]
rows = [("test digits", X_test[:n_show], X_test[:n_show])]
rows += [(name, s["fresh"], s["fresh"] if s["probabilities"] is None else s["probabilities"])
         for name, s in samples.items()]
stats = {}
print("fresh chains   distance to nearest training image   classes of the nearest training images")
for name, S, P in rows:
    labels = y_train[hamming(P, X).argmin(axis=1)]
    counts = np.bincount(labels, minlength=10)
    stats[name] = (hamming(S, X).min(axis=1).mean(), int(np.sum(counts > 0)))
    shown = ", ".join(f"{d}: {c}" for d, c in enumerate(counts) if c)
    print(f"{name:13s}  {stats[name][0]:34.1f}   {shown}")
if not FAST:  # at full size: the PCD RBM's samples are the closest to real digits and more varied than CD-1's
    assert stats["RBM, PCD-1"][0] < min(stats[k][0] for k in ("RBM, CD-1", "Model R", "Model P"))
    assert stats["RBM, PCD-1"][1] > stats["RBM, CD-1"][1]

# %% [markdown]
# What the full-size run shows (look at the figure; `CAPSNP_FAST` runs are far too short to
# show any of this, and their pictures are mostly speckle):
#
# * **RBM, PCD-1.** The next-draw probabilities of the fresh chains are smudgy but recognisable
#   digits of a few classes (in our run mostly 1s and 5s, some 3s and 9s); the binary states are
#   the same shapes with pixel noise. They are the only samples whose distance to the nearest
#   training image comes anywhere near that of real test digits. The persistent chains are
#   noisier and more varied (shapes like 0, 2, 3, 7, 9): they are still moving between modes,
#   which is what the negative phase needs.
# * **RBM, CD-1.** Same architecture, same budget, nearly the same reconstruction error and
#   pseudo-likelihood: yet every fresh chain from noise ends on the same template, a "0". CD-1
#   only ever looked one sweep away from the data, so it never learned to remove probability
#   from the regions where chains started elsewhere end up.
# * **Model R.** Blurry, blocky blobs with visible 4x4 patch structure, some vaguely like an 8,
#   a 3 or a 0: nothing one would call a digit after 15 epochs on 5,000 images. (MODEL.md
#   section 8 needed 500 chains, a decaying rate and ten minutes on the full training set to get
#   varied, partly readable shapes.) Its nearest-image classes, mostly 1, say nothing: for a
#   blur or for noise, the nearest binary digit is simply one with few pixels.
# * **Model P.** Speckle concentrated in the centre of the frame, the look of the
#   independent-pixel (base-rate) model, as far from the training images as the blobs. This
#   agrees with MODEL.md section 8: each capsule expert adds only $\log(1 + e^{\rho_j}\lvert s_j\rvert^2)$
#   to $-F$ and moves the sampler's field very little. Note that during its first epochs its
#   pseudo-likelihood was *higher* than the RBMs' at the same epoch: one more reason not to read
#   pseudo-likelihood as likelihood (lesson 9).
#
# ### Filters
#
# A filter is the weight vector of one hidden unit, drawn as an image (zero is mid-grey; each
# filter scaled to its own largest weight). For the capsule models, the filter of unit $k$ of
# capsule $j$ assembles $W_{ij k,:}$ over the visible capsules $i$, each at its patch
# (`capsnp.plots.plot_filters` draws the same as a PNG file).

# %%
def capsule_filters(W, k):
    """Unit k of every hidden capsule as an image: W (I, J, d_h, d_v) -> (J, 784)."""
    return from_capsules(np.ascontiguousarray(W[:, :, k, :].transpose(1, 0, 2)), 28, 4)


def scaled(F):
    return 0.5 + 0.5 * F / np.maximum(np.abs(F).max(axis=1, keepdims=True), 1e-12)


panels = [("RBM, PCD-1: 36 of 200 filters", models["RBM, PCD-1"].components_[:36], 6),
          ("Model R: unit 0 of each capsule", capsule_filters(models["Model R"].W_, 0), 4),
          ("Model P: unit 0 of each capsule", capsule_filters(models["Model P"].W_, 0), 4)]
fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
for ax, (title, F, cols) in zip(axes, panels):
    ax.imshow(tile_images(scaled(F), 28, cols), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()


def within_capsule_similarity(W):
    """Mean |cosine| between units of the same capsule, and between units of different capsules."""
    I, J, d_h, d_v = W.shape
    F = W.transpose(1, 2, 0, 3).reshape(J * d_h, I * d_v)  # (J d_h, 784)
    F = F / np.linalg.norm(F, axis=1, keepdims=True)
    C = np.abs(F @ F.T)
    same = np.kron(np.eye(J), np.ones((d_h, d_h))) - np.eye(J * d_h)
    other = 1 - np.kron(np.eye(J), np.ones((d_h, d_h)))
    return (C * same).sum() / same.sum(), (C * other).sum() / other.sum()


for name in ("Model R", "Model P"):
    s_in, s_out = within_capsule_similarity(models[name].W_)
    print(f"{name}: mean |cosine| between units of one capsule {s_in:.3f}, of different capsules {s_out:.3f}")

# %% [markdown]
# At full size the RBM's filters are smooth, digit-sized patterns of light and dark strokes,
# each covering much of the digit area: the familiar look of an RBM trained on digits. Model
# R's filters are patchy: each capsule has learned which patches it explains (bright and dark
# 4x4 blocks aligned with the patch grid) and is flat elsewhere. The units *within* one capsule
# are much more alike than units of different capsules (the cosines printed above): routing
# hands whole patches to a capsule, so its units see the same inputs, and the training does
# not break the symmetry between them. Model P's filters are mostly flat, with a few strong
# isolated pixels or patches and, in some capsules, leftover speckle from the initialisation
# (`init_scale` 0.1, ten times the RBM's); why so little reaches the samples is the subject of
# lesson 5 (an expert adds only the logarithm of a quadratic form to $-F$).

# %% [markdown]
# ### Samples are a snapshot
#
# One picture after one epoch can mislead. Train both RBMs a few epochs more, one epoch at a
# time (`partial_fit` continues the same run), and look at the classes of the fresh chains
# after each:

# %%
n_more = 2 if FAST else 4
for e in range(n_more):
    line = []
    for name in ("RBM, PCD-1", "RBM, CD-1"):
        model = models[name].partial_fit(X)
        P = model.sample(n_show, n_steps=n_sweeps, random_state=1, return_probabilities=True)
        counts = np.bincount(y_train[hamming(P, X).argmin(axis=1)], minlength=10)
        line.append(f"{name}: " + ", ".join(f"{d}: {c}" for d, c in enumerate(counts) if c))
    print(f"epoch {models['RBM, PCD-1'].n_iter_}   " + "   |   ".join(line))

# %% [markdown]
# At full size the CD-1 RBM's fresh chains stay on their "0" epoch after epoch, while the PCD
# RBM's change which digits they produce from one epoch to the next (in our run the 1s and 5s
# of epoch 15 became mostly 9s and 7s, then all 1s, then a mixture, then nearly all 0s, like
# the CD-1 model's). This is PCD at work: the negative phase lowers the probability wherever
# the persistent chains are, which pushes the chains on and keeps reshaping the modes
# (Tieleman & Hinton, 2009, turned this effect into a method, "fast weights"). Thirty chains
# from one seed find only a few of those modes at any moment. So judge samples over several epochs and many chains, and judge models by a
# likelihood (lesson 9). (The distance to the nearest training image has its own bias: thin
# digits such as 1s are close to many training images, so it flatters samples that are all 1s.)

# %% [markdown]
# ## Summary
#
# * Training is stochastic approximation of (5.6). CD-$k$ follows a different vector field
#   (its zeros are not the likelihood's); PCD's estimate is biased only through the lag of its
#   chains, which the contraction of the sweep keeps proportional to the step size: measured
#   exactly, lag/rate was constant across rates, and PCD with infinitely many chains ended
#   within a few hundredths of a nat of exact training.
# * Sampled on the tiny RBM, PCD-1 came within a few hundredths of a nat of CD-10 and exact
#   training at the cost of CD-1; CD-1 stopped well short.
# * A linearly decaying learning rate beat constant ones and $1/t$ at a fixed budget. Momentum, harmless with the
#   exact gradient, made the parameters outrun the persistent chains (lag of order one) and
#   wrecked PCD; the estimators cap it during a warm-up and pair it with small rates.
* Averaging the path trades the last iterate's noise against the lag of older parameters: at
  a constant rate 0.5 the moving average over 400 updates beat every last iterate of the
  lesson; while the parameters were still climbing it lost. The estimators' `average=K` keeps it.
# * `BernoulliRBM.fit` is the naive PCD loop (equal to rounding error).
# * On MNIST at lesson size, the PCD RBM generates smudgy but recognisable digits from noise,
#   whose classes change from epoch to epoch; the CD-1 RBM's chains all end on one template;
#   Model R produces blobs and Model P speckle. Reconstruction error and pseudo-likelihood did
#   not tell the two RBMs apart.
#
# ## Exercises
#
# 1. (\*) Show that with momentum $\mu$ and a constant ascent direction $g$ the velocity of
#    `capsnp.training.sgd_update` converges to $\eta g/(1-\mu)$, and check it numerically. How
#    many steps does it take to get within 1% of that value when $\mu = 0.9$?
# 2. (\*\*) Train the MNIST RBM of section 5 (PCD-1) with `learning_rate=0.05, momentum=0.9`
#    for 12 epochs and watch `history_` around epoch 6, when the momentum cap of the warm-up
#    lifts. What happens to the reconstruction error and to the fresh samples, and how does
#    section 3 explain it?
# 3. (\*\*\*) PCD-$k$ advances the chains by $k$ sweeps per step. Extend the lag bound of
#    section 1 to $k$ sweeps, and check the prediction with the noise-free experiment (infinitely
#    many chains) for $k = 1, 3, 10$ at rate 0.5.
#
# Solutions are in `solutions.md`.

# %%
print(f"lesson 8 ran in {time.perf_counter() - t_start:.1f} s")
