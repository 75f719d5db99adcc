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
# # Lesson 9: evaluating a generative model
#
# **Goal.** The number that ranks generative models of binarised MNIST is the test
# log-likelihood in nats per image, $\frac1N\sum_n \log p(v_n) = -\frac1N\sum_n F(v_n) - \log Z$.
# The free energy is cheap (closed form for the RBM and Model P); the partition function $Z$ is
# a sum over $2^{784}$ images. This lesson builds the standard tool for it, annealed importance
# sampling (AIS), from the ground up: exact $\log Z$ where we can enumerate, plain importance
# sampling and why it fails in high dimension, AIS and the proof that it is unbiased, its
# error bars and its bias, and its versions for Model P and Model R, each checked against
# exact values. Model R needs a second estimate (its $\log\tilde p(v)$ sums over routings), and
# we show why its reported number is then neither a lower nor an upper bound. We end with
# pseudo-likelihood, which needs no $Z$ and measures something else, and with the likelihood
# table.
#
# Labels (MODEL.md section 6, `capsnp.ais`, `capsnp.experiment`): (6.1) exact $\log Z$, (6.2) the
# annealing path, (6.3) the importance weights, (6.4) the estimate and its errors, (6.5) test
# log-likelihood; (4.9)-(4.10) Model R's marginal and its importance sampler
# (`capsnp.model_r`); (5.7) and (3.11) pseudo-likelihood; (5.8) exact RBM tools.

# %%
import json
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
from scipy.special import logsumexp
from threadpoolctl import threadpool_limits

try:
    import capsnp
except ImportError:  # not installed: use the repository this lesson lives in (lessons/..)
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    sys.path.insert(0, str(here.parent))
    import capsnp

from capsnp import ais, datasets, rbm
from capsnp import model_p as mp
from capsnp import model_r as mr
from capsnp.estimators import BernoulliRBM
from capsnp.exact import enumerate_assignments, enumerate_binary
from capsnp.ops import sigmoid, softmax, softplus
from capsnp.params import PParams, RBMParams, RParams

FAST = os.environ.get("CAPSNP_FAST", "") not in ("", "0")  # CI sets CAPSNP_FAST=1
threadpool_limits(1)  # the matrices here are small: one BLAS thread is faster than several
t_start = time.perf_counter()
REPO = Path(capsnp.__file__).resolve().parent.parent  # where docs/results lives

# %% [markdown]
# ## 1. Exact $\log Z$ by enumeration (6.1)
#
# For a tiny model, sum:
#
# $$ \log Z = \log\sum_v e^{-F(v)} . \tag{6.1} $$
#
# The RBM's energy is symmetric in its two layers, so the package sums over whichever layer
# is smaller and the other one in closed form (5.8); Model P sums $e^{-F(v)}$ over visible
# states; Model R sums $\tilde p(v, a)$ (4.9) over visible states and routings. Each against a
# brute-force sum written here:

# %%
rng = np.random.default_rng(0)
D, H = 9, 6
tiny = RBMParams(W=rng.normal(0, 1.0, (D, H)), a=rng.normal(0, 1, D), b=rng.normal(0, 1, H))
V9, H6 = enumerate_binary(D), enumerate_binary(H)
E = -(V9 @ tiny.a)[:, None] - (H6 @ tiny.b)[None, :] - V9 @ tiny.W @ H6.T  # (512, 64) energies
log_z_tiny = logsumexp(-E)
np.testing.assert_allclose(rbm.exact_log_partition(tiny), log_z_tiny, rtol=1e-12)


def random_pparams(rng, I=3, d_v=2, J=2, d_h=3, scale=1.0):
    """A tiny Model P with every parameter random: W (I, J, d_h, d_v), alpha (I, d_v), rho (J,), beta (I, J)."""
    return PParams(W=rng.normal(0.0, scale, (I, J, d_h, d_v)), alpha=rng.normal(0.0, 1.0, (I, d_v)),
                   rho=rng.normal(0.0, 1.0, J), beta=rng.normal(0.0, 1.0, (I, J)))


def random_rparams(rng, I=3, d_v=2, J=2, d_h=2, scale=1.0):
    """A tiny Model R with every parameter random: W (I, J, d_h, d_v), alpha (I, d_v), gamma (J, d_h), beta (I, J)."""
    return RParams(W=rng.normal(0.0, scale, (I, J, d_h, d_v)), alpha=rng.normal(0.0, 1.0, (I, d_v)),
                   gamma=rng.normal(0.0, 1.0, (J, d_h)), beta=rng.normal(0.0, 1.0, (I, J)))


p_tiny = random_pparams(np.random.default_rng(1), scale=1.5)  # I = 3 capsules of d_v = 2
Vp = enumerate_binary(6).reshape(-1, 3, 2)  # (64, 3, 2)
np.testing.assert_allclose(mp.exact_log_partition(p_tiny), logsumexp(-mp.free_energy(p_tiny, Vp)), rtol=1e-12)

r_tiny = random_rparams(np.random.default_rng(2), I=4, d_v=2, J=3, d_h=2, scale=1.5)
Vr = enumerate_binary(8).reshape(-1, 4, 2)  # (256, 4, 2)
Ar = enumerate_assignments(4, 3)  # (81, 4): every routing
log_pva = mr.log_joint_va(r_tiny, np.repeat(Vr, len(Ar), 0), np.tile(Ar, (len(Vr), 1)))  # (256 * 81,)
np.testing.assert_allclose(mr.exact_log_partition(r_tiny), logsumexp(log_pva), rtol=1e-12)
print(f"exact log Z: RBM (D = 9, H = 6) {log_z_tiny:.4f}, Model P (64 states) {mp.exact_log_partition(p_tiny):.4f}, "
      f"Model R (256 images x 81 routings) {mr.exact_log_partition(r_tiny):.4f}: all equal brute force")

# %% [markdown]
# Enumerating the smaller layer has a useful consequence: an RBM with all 784 pixels but only
# 16 hidden units has an exact $\log Z$ (a sum over $2^{16}$ hidden states). We train one on
# 2,000 MNIST digits and use it as the test bed of this lesson: a real, high-dimensional model
# whose answer we know.

# %%
X_raw, _ = datasets.load_dataset("embedded", "train")
X_test_raw, _ = datasets.load_dataset("embedded", "test")
X = datasets.binarize(X_raw[:2000], "stochastic", random_state=0)  # (2000, 784)
X_test = datasets.binarize(X_test_raw[:500], "stochastic", random_state=1)  # (500, 784)
t0 = time.perf_counter()
est16 = BernoulliRBM(16, learning_rate=0.05, batch_size=100, n_iter=10, momentum=0.5, random_state=0).fit(X)
mnist16 = RBMParams(W=est16.components_.T, a=est16.intercept_visible_, b=est16.intercept_hidden_)
log_z16 = rbm.exact_log_partition(mnist16)
seconds = time.perf_counter() - t0

base_rate = X.mean(axis=0)  # (784,) training pixel means
alpha0 = ais.base_log_odds(base_rate)  # (784,) log-odds, clipped at 1e-3
base16 = RBMParams(W=np.zeros_like(mnist16.W), a=alpha0, b=mnist16.b)  # W = 0: the base-rate model
log_z0 = float(softplus(alpha0).sum() + softplus(mnist16.b).sum())
np.testing.assert_allclose(rbm.exact_log_partition(base16), log_z0, rtol=1e-12)
ll16 = rbm.exact_log_marginal(mnist16, X_test, log_z16).mean()
ll0 = rbm.exact_log_marginal(base16, X_test, log_z0).mean()
print(f"RBM-16 on MNIST, trained and log Z enumerated in {seconds:.1f} s: log Z = {log_z16:.4f}")
print(f"exact test log-likelihood: RBM-16 {ll16:.2f} nats per image; base-rate model {ll0:.2f}")

# %% [markdown]
# The base-rate model (independent pixels with the training means; $W = 0$, the other biases
# kept) has $\log Z_0 = \sum_i \mathrm{softplus}(a_{0,i}) + \sum_k\mathrm{softplus}(b_k)$ in closed form.
# It is where every estimator below starts.
#
# ## 2. Importance sampling, and why it fails in high dimension
#
# Write $f_1 = e^{-F}$ for the model's unnormalised probability and $f_0$ for the base model's.
# For any $f_0$ that is positive wherever $f_1$ is,
#
# $$ \frac{Z_1}{Z_0} = \sum_v \frac{f_0(v)}{Z_0}\,\frac{f_1(v)}{f_0(v)} = \mathbb{E}_{v\sim p_0}[w(v)],
#    \qquad w = \frac{f_1}{f_0}, $$
#
# so $\hat Z_1 = Z_0\,\frac1n\sum_s w(v_s)$ with $v_s \sim p_0$ is unbiased. Its precision is set by
# the spread of the weights: the **effective sample size** $(\sum_s w_s)^2/\sum_s w_s^2$ says how
# many of the $n$ draws actually carry the estimate.

# %%
def naive_is(params, base, log_z_base, n, rng):
    """Plain importance sampling of log Z from the base model: (estimate, effective sample size, sd of log w)."""
    v = (rng.random((n, params.a.shape[0])) < sigmoid(base.a)).astype(float)  # exact draws from p_0
    log_w = -rbm.free_energy(params, v) + rbm.free_energy(base, v)  # (n,)
    ess = np.exp(2 * logsumexp(log_w) - logsumexp(2 * log_w))
    return log_z_base + logsumexp(log_w) - np.log(n), ess, log_w.std()


base_tiny = RBMParams(np.zeros_like(tiny.W), tiny.a, tiny.b)  # base: the model's own biases, W = 0
log_z0_tiny = float(softplus(tiny.a).sum() + softplus(tiny.b).sum())
print("model             n      estimate - exact   effective sample size   sd of log w")
for n in (10000, 100000):
    est, ess, sd = naive_is(tiny, base_tiny, log_z0_tiny, n, np.random.default_rng(n))
    print(f"tiny RBM   {n:8d}   {est - log_z_tiny:16.3f}   {ess:21.1f}   {sd:11.2f}")
    assert abs(est - log_z_tiny) < 0.2
for n in ((1000, 10000) if FAST else (1000, 10000, 100000)):
    est, ess, sd = naive_is(mnist16, base16, log_z0, n, np.random.default_rng(n))
    print(f"RBM-16     {n:8d}   {est - log_z16:16.3f}   {ess:21.1f}   {sd:11.2f}")
assert est < log_z16 - 1  # still far too low with the most draws

# %% [markdown]
# On the tiny model plain importance sampling works. On the 784-pixel model it fails: even
# the largest run is several nats too low, and only a handful of draws carry any weight.
# Notice that the spread of $\log w$ is about the same for both models: it is not the spread
# of the draws we made that matters, but the draws we did not make. The reason is the
# dimension. If $p_0$ and $p_1$ were both independent-pixel models with probabilities $q_i$ and
# $p_i$, the weight would be a product over pixels, and
#
# $$ \frac{\mathbb{E}[w^2]}{\mathbb{E}[w]^2} = \prod_{i=1}^{D}\Big(\frac{p_i^2}{q_i} + \frac{(1-p_i)^2}{1-q_i}\Big)
#    = \prod_{i=1}^D\big(1 + \chi^2_i\big), $$
#
# with $\chi^2_i \ge 0$ the chi-square divergence of pixel $i$: the relative variance grows
# *exponentially* in $D$. A sharper rule of thumb (Chatterjee & Diaconis, 2018): importance
# sampling needs about $n \approx e^{\mathrm{KL}(p_1\,\|\,p_0)}$ draws, and for product models the
# Kullback-Leibler divergence is a sum over pixels, linear in $D$. We can compute it for both
# models: by enumeration for the tiny one, and for the RBM-16 from *exact* samples of the model,
# drawn by first sampling $h$ from its marginal $p(h) \propto e^{b\cdot h}\prod_i(1 + e^{a_i + (Wh)_i})$
# (a table of $2^{16}$ entries, $v$ summed out in closed form), then $v\sim p(v\mid h)$.

# %%
def kl_from_samples(params, base, log_z, log_z_base, v):
    """KL(p_1 || p_0) = E_{p_1}[log f_1 - log f_0] - (log Z_1 - log Z_0), the mean over samples v of p_1."""
    log_w = -rbm.free_energy(params, v) + rbm.free_energy(base, v)
    return log_w.mean() - (log_z - log_z_base), log_w.std() / np.sqrt(len(v))


p1, p0 = rbm.exact_probability_v(tiny), rbm.exact_probability_v(base_tiny)
kl_tiny = float(np.sum(p1 * np.log(p1 / p0)))

H16 = enumerate_binary(16)  # (65536, 16)
log_ph = H16 @ mnist16.b + softplus(mnist16.a + H16 @ mnist16.W.T).sum(axis=1)  # (65536,) log p~(h)
np.testing.assert_allclose(logsumexp(log_ph), log_z16, rtol=1e-12)  # summing h gives the same Z
rng_s = np.random.default_rng(11)
n_exact = 5000 if FAST else 20000
h = H16[rng_s.choice(len(H16), size=n_exact, p=np.exp(log_ph - logsumexp(log_ph)))]  # (n, 16) exact draws of h
v_model = (rng_s.random((n_exact, 784)) < rbm.visible_probability(mnist16, h)).astype(float)  # exact draws of v
kl16, kl16_se = kl_from_samples(mnist16, base16, log_z16, log_z0, v_model)
print(f"KL(p_1 || p_0): tiny RBM {kl_tiny:.2f} nats (e^KL = {np.exp(kl_tiny):.0f} draws); "
      f"RBM-16 {kl16:.2f} +- {kl16_se:.2f} nats (e^KL = {np.exp(kl16):.1e} draws)")
assert kl16 > 10 > kl_tiny

# %% [markdown]
# About a dozen draws suffice for the tiny model and billions would be needed for the RBM-16.
# Worse, the estimate of $\log Z$ is biased low, and the bias hides in the rare draws we did
# not make: nothing in a single run warns that it is wrong.
#
# ## 3. Annealed importance sampling (Neal, 2001)
#
# AIS replaces one big jump from $p_0$ to $p_1$ by many small ones. Choose inverse temperatures
# $0 = \beta_0 < \beta_1 < \dots < \beta_K = 1$ and the path of intermediate models with the
# parameters interpolated linearly,
#
# $$ \theta_\beta = (1-\beta)\,\theta_0 + \beta\,\theta_1, \qquad f_k = f_{\theta_{\beta_k}} \tag{6.2} $$
#
# (for the RBM: $W_\beta = \beta W$, $a_\beta = (1-\beta)a_0 + \beta a$, $b$ unchanged). Draw
# $x_0 \sim p_0$ exactly, then $x_k \sim T_k(x_{k-1}, \cdot)$ for $k = 1..K-1$, where $T_k$ is any
# Markov transition that leaves $p_k$ invariant (a Gibbs sweep at parameters $\theta_{\beta_k}$),
# and accumulate
#
# $$ \log w = \sum_{k=1}^{K}\big[\log f_k(x_{k-1}) - \log f_{k-1}(x_{k-1})\big] . \tag{6.3} $$
#
# **Why $\mathbb{E}[w] = Z_K/Z_0$.** The run is a draw from the forward density on paths,
# $g(x_0, \dots, x_{K-1}) = p_0(x_0)\prod_{k=1}^{K-1}T_k(x_{k-1}, x_k)$. Define reverse kernels
# $\tilde T_k(x', x) = T_k(x, x')\,f_k(x)/f_k(x')$; each is a proper transition
# ($\sum_x \tilde T_k(x', x) = 1$) precisely because $T_k$ leaves $f_k$ invariant. On the same
# extended space take the unnormalised density
# $\tilde f(x_0, \dots, x_{K-1}) = f_K(x_{K-1})\prod_{k=1}^{K-1}\tilde T_k(x_k, x_{k-1})$: summing
# out $x_0$, then $x_1$, ..., removes one normalised kernel at a time, so its total mass is $Z_K$.
# Now the ratio, with every $T_k$ cancelling against its reverse kernel:
#
# $$ \frac{\tilde f}{g} = Z_0\,\frac{f_K(x_{K-1})}{f_0(x_0)}\prod_{k=1}^{K-1}\frac{f_k(x_{k-1})}{f_k(x_k)}
#    = Z_0\prod_{k=1}^{K}\frac{f_k(x_{k-1})}{f_{k-1}(x_{k-1})} = Z_0\,w . $$
#
# AIS is therefore plain importance sampling on the extended space, with proposal $g$ and
# target $\tilde f$: $\mathbb{E}_g[Z_0 w] = \sum \tilde f = Z_K$. This holds for *every*
# schedule and *every* invariant transition, however poorly it mixes; the schedule and the
# transitions only change the variance. With many temperatures consecutive $f_k$ are close,
# each factor of $w$ is near 1, and the variance is small.
#
# On the tiny RBM we can check the identity exactly, with no sampling at all: propagate
# $m_k(x) = \mathbb{E}[\,\text{partial weight}\cdot[x_k = x]\,]$ through the exact transition matrices,
# and do the same with squared factors for $\mathbb{E}[w^2]$.

# %%
def path_params(params, base, beta):
    """(6.2): (1 - beta) theta_0 + beta theta_1, field by field."""
    return RBMParams(*((1 - beta) * x0 + beta * x1 for x0, x1 in zip(base, params)))


def exact_ais_moments(params, base, log_z_base, betas):
    """log E[w] and E[w^2] / E[w]^2 of AIS (6.3) by propagating exact distributions over all 2^D states."""
    log_f = np.stack([-rbm.free_energy(path_params(params, base, b), V9) for b in betas])  # (K+1, 512)
    p0 = np.exp(log_f[0] - log_z_base)  # (512,): the base model
    m1 = p0 * np.exp(log_f[1] - log_f[0])  # E[w 1{x_0 = x}], first factor
    m2 = p0 * np.exp(2 * (log_f[1] - log_f[0]))
    for k in range(1, len(betas) - 1):
        T = rbm.exact_transition_matrix(path_params(params, base, betas[k]))  # (512, 512), leaves p_k invariant
        m1 = (m1 @ T) * np.exp(log_f[k + 1] - log_f[k])
        m2 = (m2 @ T) * np.exp(2 * (log_f[k + 1] - log_f[k]))
    return np.log(m1.sum()), m2.sum() / m1.sum() ** 2


print(" K    log E[w] - (log Z - log Z_0)   relative variance Var(w)/E[w]^2")
rel_var = {}
for K in (1, 2, 5, 20, 100):
    log_mean_w, second = exact_ais_moments(tiny, base_tiny, log_z0_tiny, np.linspace(0, 1, K + 1))
    rel_var[K] = second - 1
    print(f"{K:3d}   {log_mean_w - (log_z_tiny - log_z0_tiny):28.1e}   {rel_var[K]:32.4f}")
    assert abs(log_mean_w - (log_z_tiny - log_z0_tiny)) < 1e-10
assert rel_var[100] < rel_var[5] < rel_var[1]

# %% [markdown]
# $\mathbb{E}[w] = Z_1/Z_0$ to rounding error for every $K$ (with $K = 1$ AIS *is* the plain
# importance sampler of section 2), while the variance falls steeply with $K$.
#
# ### A naive AIS, and the package's
#
# Here is AIS for the RBM written out, the Gibbs sweep included; it draws its random numbers in
# the order `capsnp.ais` does (one call for the base draws, then per temperature one for the
# hidden and one for the visible units), so with the same seed the two must give the same
# weights.

# %%
def naive_ais_rbm(params, alpha_base, betas, n_runs, rng):
    """AIS (6.2)-(6.4) for an RBM from its base-rate model: returns (log Z estimate, log w (n_runs,))."""
    W, a, b = params

    def log_f(beta, v):  # -F at theta_beta: W_beta = beta W, a_beta = (1 - beta) a_0 + beta a, b kept
        return v @ ((1 - beta) * alpha_base + beta * a) + softplus(b + v @ (beta * W)).sum(axis=1)

    v = (rng.random((n_runs, W.shape[0])) < sigmoid(alpha_base)).astype(float)  # exact draws from p_0
    log_w = np.zeros(n_runs)
    for k in range(1, len(betas)):
        log_w += log_f(betas[k], v) - log_f(betas[k - 1], v)  # (6.3)
        if k < len(betas) - 1:  # one Gibbs sweep (5.5) at beta_k: leaves f_k invariant
            ph = sigmoid(b + v @ (betas[k] * W))  # (n_runs, H)
            h = (rng.random(ph.shape) < ph).astype(float)
            pv = sigmoid((1 - betas[k]) * alpha_base + betas[k] * a + h @ (betas[k] * W).T)  # (n_runs, D)
            v = (rng.random(pv.shape) < pv).astype(float)
    log_z_base = softplus(alpha_base).sum() + softplus(b).sum()
    return log_z_base + logsumexp(log_w) - np.log(n_runs), log_w  # (6.4)


betas = np.linspace(0, 1, 101)
mine, lw_mine = naive_ais_rbm(tiny, tiny.a, betas, 100, np.random.default_rng(7))
pkg = ais.ais_log_partition(tiny, n_runs=100, betas=betas, random_state=7)
np.testing.assert_allclose(lw_mine, pkg.log_weights, rtol=1e-9, atol=1e-9)
print(f"naive AIS equals capsnp.ais (same random numbers): log Z {mine:.4f} vs {pkg.log_z:.4f}; exact {log_z_tiny:.4f}")

n_rep = 10 if FAST else 40
z_scores = []
for seed in range(n_rep):
    res = ais.ais_log_partition(tiny, n_runs=100, betas=betas, random_state=100 + seed)
    z_scores.append((res.log_z - log_z_tiny) / res.std_error)
z_scores = np.array(z_scores)
print(f"{n_rep} independent AIS runs (100 temperatures, 100 runs each): (estimate - exact) / std_error has "
      f"mean {z_scores.mean():+.2f}, sd {z_scores.std():.2f}, largest |z| {np.abs(z_scores).max():.2f}")
assert abs(z_scores.mean()) < 1.0 and np.abs(z_scores).max() < 4.5

# %% [markdown]
# ## 4. Error bars, and why the estimate is biased low (6.4)
#
# AIS returns $n$ independent weights. The estimate is
#
# $$ \widehat{\log Z} = \log Z_0 + \log\frac1n\sum_s w_s, \qquad
#    \mathrm{se} \approx \frac{\mathrm{sd}(w)}{\sqrt n\,\bar w}, \tag{6.4} $$
#
# the standard error by the **delta method**: $\bar w$ has standard deviation $\mathrm{sd}(w)/\sqrt n$,
# and $\log$ has derivative $1/\bar w$. The package also resamples the $n$ runs with replacement
# (a **bootstrap**) and reports the 2.5% and 97.5% quantiles of the resampled estimates.
#
# $\bar w$ is unbiased for $Z_1/Z_0$, but $\log$ is concave, so by **Jensen's inequality**
# $\mathbb{E}[\log\bar w] \le \log\mathbb{E}[\bar w]$: $\widehat{\log Z}$ is biased *low*.
# Expanding $\log$ to second order around the mean gives the size of the bias,
# $\approx -\tfrac12\,\mathrm{Var}(w)/(n\,\mathbb{E}[w]^2) = -\mathrm{se}^2/2$. Small when the
# estimate is precise; but it pushes every reported log-likelihood $-F - \widehat{\log Z}$ *up*,
# and an AIS run whose weights are dominated by a few large values underestimates both $\log Z$
# and its own standard error. Repeating AIS with few temperatures on the RBM-16 shows all this:

# %%
def repeat_ais(params, n_temps, n_runs, n_rep, base_rate, seed0):
    res = [ais.ais_log_partition(params, n_runs=n_runs, betas=np.linspace(0, 1, n_temps + 1),
                                 random_state=seed0 + r, base_rate=base_rate) for r in range(n_rep)]
    return (np.array([r.log_z for r in res]), np.array([r.std_error for r in res]),
            np.array([r.interval for r in res]), np.array([r.effective_sample_size for r in res]))


n_rep = 20 if FAST else 100
print(f"RBM-16, {n_rep} repetitions of AIS with 100 runs")
print("temperatures   mean error   sd of estimates   mean se   -mean(se^2)/2   bootstrap 95% covers exact   mean ESS")
bias_rows = {}
for n_temps in (10, 100):
    lz, se, ci, ess = repeat_ais(mnist16, n_temps, 100, n_rep, base_rate, 1000)
    covered = np.mean((ci[:, 0] <= log_z16) & (log_z16 <= ci[:, 1]))
    bias_rows[n_temps] = (lz.mean() - log_z16, lz.std(), se.mean())
    print(f"{n_temps:12d}   {lz.mean() - log_z16:10.3f}   {lz.std():15.3f}   {se.mean():7.3f}   "
          f"{-np.mean(se ** 2) / 2:13.3f}   {covered:26.0%}   {ess.mean():8.1f}")
assert bias_rows[10][0] < 0  # biased low
assert abs(bias_rows[100][0]) < 3 * bias_rows[100][1] / np.sqrt(n_rep) + 0.05

# %% [markdown]
# With 10 temperatures the estimates are biased low, by several times the second-order
# prediction $-\mathrm{se}^2/2$, and the bootstrap intervals cover the truth far less often than
# 95%: the weights are heavy-tailed, the runs that would have corrected the estimate are the
# rare ones, and the reported error bar itself is too small. With 100 temperatures the bias is
# within the noise and the error bars are about right.
#
# ### The estimate against the number of temperatures
#
# On the RBM-16, one AIS estimate of 100 runs per schedule, with its bootstrap interval, against
# the exact value:

# %%
temps = [3, 10, 30, 100, 300] if FAST else [3, 10, 30, 100, 300, 1000, 3000]
results = []
for n_temps in temps:
    t0 = time.perf_counter()
    res = ais.ais_log_partition(mnist16, n_runs=100, betas=np.linspace(0, 1, n_temps + 1), random_state=5,
                                base_rate=base_rate)
    results.append(res)
    print(f"{n_temps:5d} temperatures: log Z {res.log_z:9.3f} (exact {log_z16:.3f}), se {res.std_error:.3f}, "
          f"95% interval [{res.interval[0]:.3f}, {res.interval[1]:.3f}], ESS {res.effective_sample_size:5.1f}, "
          f"{time.perf_counter() - t0:.1f} s")
assert abs(results[-1].log_z - log_z16) < 0.25

fig, ax = plt.subplots(figsize=(6.5, 4))
lz = np.array([r.log_z for r in results])
lo = np.array([r.interval[0] for r in results])
hi = np.array([r.interval[1] for r in results])
ax.errorbar(temps, lz, yerr=[lz - lo, hi - lz], fmt="o-", capsize=3, label="AIS, 100 runs (bootstrap 95%)")
ax.axhline(log_z16, color="gray", ls="--", label="exact (2^16 hidden states)")
ax.set_xscale("log")
ax.set_xlabel("number of temperatures K")
ax.set_ylabel("log Z")
ax.set_title("RBM-16 on MNIST: AIS against the exact log Z")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# With 3 or 10 temperatures the estimates are one to several nats low and their intervals
# exclude the truth: confidently wrong. From about 30 temperatures on they are within a few
# tenths of a nat, and at full size (1,000 and 3,000 temperatures) within about 0.01. A single
# 95% interval can still miss by a little (at 300 temperatures here), as 95% intervals
# sometimes do. This model has only 16 hidden units; a 500-unit RBM sits much farther from its
# base-rate model, which is why the literature uses $10^4$ to $10^5$ temperatures
# (`ais.default_betas()` gives 14,500, denser near $\beta = 1$, where the intermediate models
# change fastest).
#
# ### Reverse AIS from a set of states: a bound from above (6.7)
#
# Forward AIS can only miss mass: a mode that no annealing run visits adds nothing to $\bar w$.
# Running the chain the other way bounds such a mode's mass from above. Take a set $B$ of states
# (a mode, or every state) with unnormalised mass $Z_B = \sum_{x \in B} f_K(x)$, start at
# $x_{K-1} \sim f_K 1_B / Z_B$ exactly, draw $x_{k-1} \sim \tilde T_k(x_k, \cdot)$ down to $x_0$,
# and accumulate the same $\log w$ (6.3). The reverse path's density is
# $\tilde f_B = \tilde f\,1_B(x_{K-1})/Z_B$ with $\tilde f$ of section 3, so by the ratio above the
# forward density over it is $g/\tilde f_B = Z_B/(Z_0 w)$, and its mean over reverse paths is the
# forward density's mass on paths that end in $B$:
#
# $$ \mathbb{E}_{\text{rev}}\Big[\frac1w\Big] = \frac{Z_0}{Z_B}\,P_{\text{fwd}}(x_{K-1} \in B)
#    \le \frac{Z_0}{Z_B}, \qquad \widehat{\log Z_B} = \log Z_0 - \log\overline{(1/w)} . \tag{6.7} $$
#
# By Jensen once more, $\widehat{\log Z_B}$ is at least $\log Z_B$ in expectation: an upper
# bound, loose by $-\log P_{\text{fwd}}(B)$. For $B$ = every state it bounds $\log Z$ itself
# (exercise 3); for a mode, it is tight only on a path whose forward runs end in that mode. For the
# Gibbs sweep on $v$, $\tilde T_k = T_k$ (the sweep is reversible), and both sides of (6.7) can be
# propagated exactly on the tiny RBM, for $B$ = the states with at least 6 of 9 pixels on:

# %%
def exact_reverse_moments(params, base, log_z_base, betas, in_b):
    """Reverse AIS (6.7) from p restricted to B, exactly: (log E_rev[1/w], P_fwd(x_{K-1} in B))."""
    log_f = np.stack([-rbm.free_energy(path_params(params, base, b), V9) for b in betas])  # (K+1, 512)
    T = [rbm.exact_transition_matrix(path_params(params, base, b)) for b in betas[1:-1]]  # K-1 of (512, 512)
    fwd = np.exp(log_f[0] - log_z_base)  # (512,): x_0 ~ p_0
    for Tk in T:
        fwd = fwd @ Tk  # the law of x_k
    start = np.where(in_b, np.exp(log_f[-1] - log_f[-1].max()), 0.0)
    m = start / start.sum() * np.exp(log_f[-2] - log_f[-1])  # E[1/w-factor 1{x_{K-1} = x}]
    for k in range(len(betas) - 2, 0, -1):
        m = (m @ T[k - 1]) * np.exp(log_f[k - 1] - log_f[k])  # x_{k-1} ~ T_k(x_k, .), T_k reversible
    return np.log(m.sum()), fwd[in_b].sum()


in_b = V9.sum(axis=1) >= 6  # (512,)
log_z_b = logsumexp(-rbm.free_energy(tiny, V9[in_b]))
print(f"p(B) = {np.exp(log_z_b - log_z_tiny):.3f}, log Z_B = {log_z_b:.4f}, log Z = {log_z_tiny:.4f}")
print(" K   reverse bound on log Z_B   P_fwd(end in B)   -log P_fwd   (6.7) holds to")
for K in (1, 2, 5, 20, 100):
    log_inv_w, p_end = exact_reverse_moments(tiny, base_tiny, log_z0_tiny, np.linspace(0, 1, K + 1), in_b)
    bound = log_z0_tiny - log_inv_w
    print(f"{K:3d}   {bound:24.4f}   {p_end:15.3f}   {-np.log(p_end):10.4f}   "
          f"{abs(bound - (log_z_b - np.log(p_end))):.1e}")
    assert abs(bound - (log_z_b - np.log(p_end))) < 1e-10 and bound >= log_z_b
    assert K < 100 or abs(p_end - np.exp(log_z_b - log_z_tiny)) < 0.01

# %% [markdown]
# (6.7) holds to rounding for every schedule, and the bound sits $-\log P_{\text{fwd}}(B)$ above
# $\log Z_B$. On this tiny model the annealing mixes, so with many temperatures the forward runs
# end in $B$ as often as the model puts mass there, and the bound tends to $\log Z$ itself, not
# to $\log Z_B$. `capsnp.ais.reverse_ais` runs (6.7) by sampling, from draws restricted to $B$;
# `docs/results/log_z_sandwich.py` uses it on MNIST models, with a path of its own for $B$ (a
# base model made from $B$'s pixel means), to bound the mass of a mode that fresh chains fall
# into but forward AIS never visits.
#
# ### AIS inside a set: every run counts (6.8, 6.9)
#
# The forward runs of that mode's own path still weigh it only through the runs that happen to
# end in it, and when few do, the estimate rests on a few heavy weights. Restricting the whole
# path to $B$ removes the luck. Take $f_k 1_B$ as the intermediate densities: at $k = 0$ it is
# the base restricted to $B$, with mass $Z_0 P_0(B)$, and at $k = K$ the model restricted to $B$,
# with mass $Z_B$. Inside $B$ the ratios $f_k/f_{k-1}$ are those of (6.3), so the weights are
# unchanged, and $\mathbb{E}[w] = Z_B/(Z_0 P_0(B))$ as in section 3. What changes are the draws.
# The base is drawn by rejection (keep the base draws in $B$). Each sweep is the model's own, with
# its last visible draw refused if it leaves $B$. The sweep redraws h given v, which keeps the
# restricted law since v does not move. It then proposes $v' \sim p(v \mid h)$, an exact
# conditional, whose Metropolis-Hastings acceptance for the target $f 1_B$ is
# $\min(1, 1_B(v'))$:
#
# $$ T^B(v, v') = T(v, v') \text{ for } v' \in B \setminus \{v\}, \qquad
#    T^B(v, v) = T(v, v) + \sum_{u \notin B} T(v, u), \qquad
#    \widehat{\log Z_B} = \log Z_0 + \log P_0(B) + \log \bar w . \tag{6.8} $$
#
# For Model R the routing drawn in the sweep is kept even when v is refused: it was a Gibbs draw
# given the old v. Undoing it too looks harmless but breaks invariance (`tests/test_ais.py` sees
# it). For an ink set $B = \{v : \sum_i v_i > t\}$ and the base's independent pixels,
# $P_0(B)$ is the tail of a Poisson-binomial count, built one pixel at a time:
#
# $$ q_m(c) = (1 - p_m)\, q_{m-1}(c) + p_m\, q_{m-1}(c - 1), \qquad P_0(B) = \sum_{c > t} q_D(c) . \tag{6.9} $$
#
# Both are exact, so they can be checked by propagating distributions on the tiny RBM, for the
# same $B$ as above:

# %%
def exact_restricted_ais_mean(params, base, log_z_base, betas, in_b):
    """log E[w] of forward AIS restricted to B (6.8), exactly, and log P_0(B) by (6.9)."""
    log_f = np.stack([-rbm.free_energy(path_params(params, base, b), V9) for b in betas])  # (K+1, 512)
    log_p0_b = ais.ink_tail_log_probability(sigmoid(base.a), 5)  # (6.9): at least 6 of 9 pixels on
    m = np.where(in_b, np.exp(log_f[0] - log_z_base - log_p0_b), 0.0)  # (512,): x_0 ~ p_0 1_B
    for k in range(1, len(betas)):
        m = m * np.exp(log_f[k] - log_f[k - 1])  # the weight's factor for x_{k-1}
        if k < len(betas) - 1:
            T = rbm.exact_transition_matrix(path_params(params, base, betas[k]))  # (512, 512)
            TB = np.where(in_b[None, :], T, 0.0) + np.diag(np.where(~in_b[None, :], T, 0.0).sum(axis=1))
            assert np.allclose(TB.sum(axis=1), 1.0)  # a kernel: rows sum to 1
            pi_b = np.where(in_b, np.exp(log_f[k] - log_f[k].max()), 0.0)  # f_k 1_B, unnormalised
            assert np.allclose(pi_b @ TB, pi_b, rtol=1e-10, atol=1e-14)  # T^B keeps f_k 1_B
            m = m @ TB  # x_k ~ T^B_k(x_{k-1}, .)
    return np.log(m.sum()), log_p0_b


exact_p0_b = np.exp(logsumexp(np.where(in_b, -rbm.free_energy(base_tiny, V9), -np.inf)) - log_z0_tiny)
p0_b = np.exp(ais.ink_tail_log_probability(sigmoid(base_tiny.a), 5))  # (6.9)
print(f"P_0(B): (6.9) {p0_b:.6f}, enumeration {exact_p0_b:.6f}")
assert abs(p0_b - exact_p0_b) < 1e-12
print(" K   log Z_0 + log P_0(B) + log E[w] - log Z_B")
for K in (1, 2, 5, 20, 100):
    log_mean_w, log_p0_b = exact_restricted_ais_mean(tiny, base_tiny, log_z0_tiny, np.linspace(0, 1, K + 1), in_b)
    err = log_z0_tiny + log_p0_b + log_mean_w - log_z_b
    print(f"{K:3d}   {err:.1e}")
    assert abs(err) < 1e-10

# %% [markdown]
# The restricted chain keeps $f_k 1_B$ at every temperature, and $\mathbb{E}[w]$ gives $Z_B$ to
# rounding for every schedule, so (6.8) is unbiased in $Z_B$ as (6.4) is in $Z$. By sampling,
# `capsnp.ais.restricted_path` turns a path into its restriction, and `ais` and `reverse_ais` run
# on it unchanged. Reverse runs on it bound $\log Z_B$ with nothing lost to
# $-\log P_{\text{fwd}}(B)$, since every restricted forward run ends in $B$:

# %%
path_tiny = ais.annealing_path(tiny, backend="numpy")
sub = ais.restricted_path(path_tiny, lambda v: v.sum(axis=1) >= 6, ais.ink_tail_log_probability(sigmoid(tiny.a), 5))
res_b = ais.ais(sub.log_f, sub.sample_base, sub.transition, sub.log_z_base, np.linspace(0, 1, 101), 500,
                np.random.default_rng(7))
print(f"restricted AIS, 500 runs, 100 temperatures: log Z_B {res_b.log_z:.4f} (se {res_b.std_error:.4f}), "
      f"exact {log_z_b:.4f}")
assert abs(res_b.log_z - log_z_b) < 5 * res_b.std_error + 0.01

# %% [markdown]
# Refusing whole draws has a cost where the intermediate models press against the edge of $B$:
# if the sweep's draws mostly fall outside, the chain stops moving. The weights stay unbiased,
# but their spread becomes huge. On an MNIST capsule model the whole-draw runs kept fewer
# than 2 effective runs of 100 (docs/results.md sec. 49). Given the hidden units, the pixels
# of $v'$ are independent draws from their own conditionals. So for an ink set the refusal can
# be made pixel by pixel: visit the pixels in order and take $v'_i$ unless it carries the count
# out of $B$. Each visit is a Metropolis-Hastings step whose proposal is the pixel's exact
# conditional, with acceptance $1_B$, so the scan keeps $f_k 1_B$. A chain at the edge then
# moves along it. With $\delta_i = v'_i - v_i$ and $S_k = \sum_i v_i + \sum_{i \le k} \delta_i$,
# the count after $k$ visits is the walk held at $t + 1$:
#
# $$ c_k = S_k + \max\Big(0, \max_{j \le k} (t + 1 - S_j)\Big), \qquad
#    \text{visit } k \text{ accepted} \iff c_k - c_{k-1} = \delta_k . \tag{6.10} $$
#
# `capsnp.ais.pixelwise_refusal` computes it for all pixels at once, and
# `capsnp.ais.ink_restricted_path` uses it:

# %%
sub_px = ais.ink_restricted_path(path_tiny, 5.5, True, ais.ink_tail_log_probability(sigmoid(tiny.a), 5.5))
res_px = ais.ais(sub_px.log_f, sub_px.sample_base, sub_px.transition, sub_px.log_z_base, np.linspace(0, 1, 101),
                 500, np.random.default_rng(7))
print(f"pixel by pixel: log Z_B {res_px.log_z:.4f} (se {res_px.std_error:.4f}), exact {log_z_b:.4f}")
assert abs(res_px.log_z - log_z_b) < 5 * res_px.std_error + 0.01

# %% [markdown]
# Cut the states in two, $D$ and its complement $B$, and $Z = Z_D + Z_B$ with each mass measured
# inside its own set: `docs/results/restricted_log_z.py` does this for MNIST models with an ink
# threshold, where forward AIS on the model's path misses the blocky mode some capsule models'
# fresh chains fall into (docs/results.md sec. 49).
#
# ## 5. AIS for Model P and Model R
#
# Nothing in the derivation of section 3 is specific to the RBM. Each model needs
# (i) a path (6.2) from a base model with known $Z_0$, (ii) $\log f_\beta$, and (iii) a transition
# that leaves $f_\beta$ invariant:
#
# * **Model P.** Base $W = 0$: then $s_j = 0$ for every parent, each expert contributes
#   $\log(1 + e^{\rho_j}\cdot 0) = 0$, and $\log Z_0 = \sum_{il}\mathrm{softplus}(\alpha_{0,il})$.
#   $\log f_\beta = -F_\beta(v)$ in closed form (3.3); the transition is the exact MH sweep (3.9)
#   (the `reconstruct` step would not do: it leaves no known distribution invariant).
# * **Model R.** The state is $(v, a)$ and $\log f_\beta(v, a)$ is (4.9), with $h$ summed out. The
#   transition is the 3-block sweep (4.7), which starts by drawing $h\mid v, a$ and so needs only
#   $(v, a)$. At $W = 0$, $v$, $h$ and $a$ are independent, so
#   $\log Z_0 = \sum\mathrm{softplus}(\alpha_0) + \sum\mathrm{softplus}(\gamma) + \sum_i\mathrm{logsumexp}_j\,\beta_{ij}$.
#
# Both base partition functions against enumeration, then AIS against the exact $\log Z$:

# %%
p_base = p_tiny._replace(W=np.zeros_like(p_tiny.W))
np.testing.assert_allclose(mp.exact_log_partition(p_base), softplus(p_tiny.alpha).sum(), rtol=1e-12)
r_base = r_tiny._replace(W=np.zeros_like(r_tiny.W))
np.testing.assert_allclose(mr.exact_log_partition(r_base), softplus(r_tiny.alpha).sum() + softplus(r_tiny.gamma).sum()
                           + logsumexp(r_tiny.beta, axis=1).sum(), rtol=1e-12)

for name, params, exact, n_temps in (("Model P", p_tiny, mp.exact_log_partition(p_tiny), 300 if FAST else 1000),
                                     ("Model R", r_tiny, mr.exact_log_partition(r_tiny), 1000)):
    t0 = time.perf_counter()
    res = ais.ais_log_partition(params, n_runs=100, betas=np.linspace(0, 1, n_temps + 1), random_state=0)
    print(f"{name}: AIS ({n_temps} temperatures, 100 runs) {res.log_z:.4f} +- {res.std_error:.4f}, exact {exact:.4f}, "
          f"error {res.log_z - exact:+.5f} = {(res.log_z - exact) / res.std_error:+.2f} se, "
          f"ESS {res.effective_sample_size:.0f}, {time.perf_counter() - t0:.1f} s")
    assert abs(res.log_z - exact) < 4 * res.std_error + 0.01

# %% [markdown]
# Model P's sweep routes every proposal, so each temperature costs $I$ routings per run: on
# MNIST ($I = 49$) it is the most expensive AIS of the three models.
#
# ### One pass per state for Model R
#
# The loop of (6.3) weighs every state $x_k$ twice, at $\beta_k$ (where it was drawn) and at
# $\beta_{k+1}$. On Model R's path $W$, $C$ and $A$ start at 0 and scale with $\beta$, $\gamma$ and
# the prior $\beta_{ij}$ are kept, and $\alpha$ moves linearly, so (4.9) splits as
#
# $$\log f_\beta(v, a) = (1-\beta)\,\ell_0(v, a) + \beta\,\ell_1(v, a)
#   + \sum_{jk}\mathrm{softplus}\big(\gamma_{jk} + \beta\, s_{jk}(v, a)\big),
#   \qquad s_j = \sum_{i: a_i = j} \hat u_{j|i},$$
#
# with $\ell_0, \ell_1$ the terms linear in the parameters at the base and at the target. One
# pass gives $\ell_0$, $\ell_1$ and the routed input $s$ (a sparse kernel over the pixels that
# are on, `model_r.assigned_input`); each temperature then costs one softplus per hidden unit.
# `annealing_path` hands this to `ais` as `log_f_pair`. On the trained two-capsule MNIST model
# it saves a fifth of an AIS estimate's time, and with the sparse pass and a lighter
# interpolation the estimate takes half as long as before (docs/results.md sec. 20).
# Against the direct definition:

# %%
r_path = ais.annealing_path(r_tiny)
x = r_path.sample_base(50, np.random.default_rng(1))
for _ in range(5):
    x = r_path.transition(0.5, x, np.random.default_rng(2))
for lo, hi in [(0.0, 0.001), (0.5, 0.501), (0.999, 1.0)]:
    pair = r_path.log_f_pair(lo, hi, x)  # one pass over the 50 states
    np.testing.assert_allclose(pair, (r_path.log_f(lo, x), r_path.log_f(hi, x)), rtol=1e-12)
print("log f at two temperatures from one pass equals two evaluations of (4.9)")

# %% [markdown]
#
# ## 6. Model R's log-likelihood: importance sampling over routings (4.10)
#
# For the RBM and Model P, $\log\tilde p(v) = -F(v)$ is closed form. For Model R it is a sum over
# $J^I$ routings ($16^{49}$ on MNIST), estimated per image by importance sampling with the
# mean-field routing $c$ of lesson 7 as proposal:
#
# $$ \widehat{\log\tilde p(v)} = \log\frac1S\sum_{s=1}^S\frac{\tilde p(v, a^s)}{q(a^s)}, \qquad
#    a^s\sim q(a) = \prod_i c_{i a_i} . \tag{4.10} $$
#
# On the tiny Model R ($3^4 = 81$ routings), against the exact sum, and with the prior
# $\mathrm{softmax}(\beta)$ as a worse proposal for comparison:

# %%
exact_lp = mr.exact_log_unnormalised_marginal(r_tiny, Vr)  # (256,)
prior = np.broadcast_to(np.exp(r_tiny.beta - logsumexp(r_tiny.beta, axis=1, keepdims=True)), (len(Vr), 4, 3))
n_rep = 50 if FAST else 200
print(" S    mean error (mean field)   sd    mean error (prior)   sd")
is_bias = {}
for S in (1, 10, 100):
    e_mf = np.stack([mr.log_marginal_is(r_tiny, Vr, S, np.random.default_rng(r))[0] - exact_lp for r in range(n_rep)])
    e_pr = np.stack([mr.log_marginal_is(r_tiny, Vr, S, np.random.default_rng(r), c=prior)[0] - exact_lp
                     for r in range(n_rep)])
    is_bias[S] = e_mf.mean()
    print(f"{S:3d}   {e_mf.mean():23.4f}   {e_mf.std():.3f}   {e_pr.mean():18.4f}   {e_pr.std():.3f}")
assert is_bias[1] < is_bias[100] < 0.01

# %% [markdown]
# The error is negative on average (Jensen again, now per image) and shrinks with $S$; the
# mean-field proposal is much better than the prior. Now put the two estimates together. The
# reported number is
#
# $$ \widehat{\log p(v)} = \widehat{\log\tilde p(v)} - \widehat{\log Z}, $$
#
# and *both* estimates are biased low. The first bias lowers the result; the second, being
# subtracted, *raises* it. Their sum can have either sign, so Model R's reported
# log-likelihood is **neither a lower nor an upper bound**. (For the RBM and Model P only the
# $\log Z$ term is estimated, and the reported number is, in expectation, too high: a short AIS
# run flatters the model.) Two settings on a tiny Model R with larger weights show both signs:

# %%
r_big = random_rparams(np.random.default_rng(2), I=4, d_v=2, J=3, d_h=2, scale=2.5)
log_z_big = mr.exact_log_partition(r_big)
true_ll = mr.exact_log_unnormalised_marginal(r_big, Vr) - log_z_big  # (256,) exact log p(v)
n_rep = 40 if FAST else 100
# A: precise AIS (1,000 temperatures), a single routing sample per image
good_z = ais.ais_log_partition(r_big, n_runs=100, betas=np.linspace(0, 1, 1001), random_state=0).log_z
err_a = [np.mean(mr.log_marginal_is(r_big, Vr, 1, np.random.default_rng(r), log_z=good_z)[0] - true_ll)
         for r in range(n_rep)]
# B: 100 routing samples per image, but a crude AIS (5 temperatures, 10 runs)
err_b = [np.mean(mr.log_marginal_is(r_big, Vr, 100, np.random.default_rng(r),
                                    log_z=ais.ais_log_partition(r_big, n_runs=10, betas=np.linspace(0, 1, 6),
                                                                random_state=r).log_z)[0] - true_ll)
         for r in range(n_rep)]
print(f"A (good AIS, S = 1):   mean error of the reported log-likelihood {np.mean(err_a):+.3f} "
      f"+- {np.std(err_a) / np.sqrt(n_rep):.3f} nats: too LOW")
print(f"B (crude AIS, S = 100): mean error of the reported log-likelihood {np.mean(err_b):+.3f} "
      f"+- {np.std(err_b) / np.sqrt(n_rep):.3f} nats: too HIGH")
assert np.mean(err_a) < 0 < np.mean(err_b)

# %% [markdown]
# In a real report both terms are much better than in either setting, and the residual biases
# are small; but their sign is unknown, so the honest report gives the spread over reruns of
# both estimates and says that the number is not a bound.
#
# ### Several fixed points: a mixture proposal
#
# The mean field (4.6) is a local search: from another starting routing it can end at another
# fixed point, and each fixed point sits on a mode of the routing posterior $p(a\mid v)$. A
# proposal built on one of them almost never draws the routings of the others; their mass is
# missing from the estimate, and the per-image standard error, computed from the draws it did
# make, does not show it. Any proposal that is positive wherever the posterior is keeps (4.10)
# unbiased in $\tilde p(v)$, because
#
# $$ \mathbb{E}_{a\sim q}\Big[\frac{\tilde p(v,a)}{q(a)}\Big] = \sum_{a:\,q(a)>0}\tilde p(v,a), $$
#
# and so does the equal-weight mixture of the products of K fixed points (drawn as below),
#
# $$ q(a) = \frac1K\sum_{k=1}^K\prod_i c^k_{i a_i} , $$
#
# which covers every mode that one of them sits on (`mr.log_marginal_is` takes the K routings
# as an array of shape (K, B, I, J); `mr.mean_field(start=...)` runs the mean field from a
# given routing). On the tiny Model R with larger weights still, from the usual start and 7
# starts drawn uniformly per patch, against the exact $\log\tilde p(v)$:

# %%
r_modes = random_rparams(np.random.default_rng(2), I=4, d_v=2, J=3, d_h=2, scale=3.5)
exact_modes = mr.exact_log_unnormalised_marginal(r_modes, Vr)  # (256,)
rng_starts = np.random.default_rng(0)
starts = [softmax(np.broadcast_to(r_modes.beta, (len(Vr), 4, 3)), axis=-1)]  # the usual start
starts += [rng_starts.dirichlet(np.ones(3), size=(len(Vr), 4)) for _ in range(7)]  # 7 random ones
fixed = np.stack([mr.mean_field(r_modes, Vr, tol=1e-10, max_iter=500, damping=0.5, start=c0)[0]
                  for c0 in starts])  # (8, 256, 4, 3)
def n_distinct(cs):
    """Distinct routings among K for one image, (K, I, J) -> int: two differ when some patch's
    routing differs by more than 0.5."""
    kept = []
    for c in cs:
        if all(np.abs(c - k).max() > 0.5 for k in kept):
            kept.append(c)
    return len(kept)


n_fixed = np.array([n_distinct(fixed[:, b]) for b in range(len(Vr))])  # (256,) per image
several = n_fixed > 1
n_rep = 20 if FAST else 40
err_one = np.stack([mr.log_marginal_is(r_modes, Vr, 10, np.random.default_rng(r), c=fixed[0])[0] - exact_modes
                    for r in range(n_rep)])  # (n_rep, 256)
err_mix = np.stack([mr.log_marginal_is(r_modes, Vr, 10, np.random.default_rng(r), c=fixed)[0] - exact_modes
                    for r in range(n_rep)])  # (n_rep, 256)
print(f"images with more than one fixed point: {several.sum()} of {len(Vr)}")
print("mean error of log p~(v), S = 10      one fixed point   mixture of 8")
print(f"  images with several fixed points    {err_one[:, several].mean():+15.3f}   {err_mix[:, several].mean():+12.3f}")
print(f"  images with one                      {err_one[:, ~several].mean():+15.3f}   {err_mix[:, ~several].mean():+12.3f}")
assert several.any() and abs(err_mix[:, several].mean()) < 0.5 * abs(err_one[:, several].mean())

# %% [markdown]
# How the S draws are shared among the K components changes the variance, not the mean. Drawing
# each draw's component at random adds the noise of how many draws each fixed point happens to
# get. Drawing them in turn (draw $s$ from component $s \bmod K$, so component $k$ gets exactly
# $n_k$ draws) removes it, and stays unbiased if every draw is weighted against the mixture with
# the shares actually used (the deterministic mixture of multiple importance sampling):
#
# $$ q(a) = \sum_k \frac{n_k}{S}\prod_i c^k_{i a_i}, \qquad
#    \mathbb{E}\Big[\frac1S\sum_s\frac{\tilde p(v,a^s)}{q(a^s)}\Big]
#    = \sum_k\frac{n_k}{S}\sum_a c^k(a)\,\frac{\tilde p(v,a)}{q(a)} = \sum_{a:\,q(a)>0}\tilde p(v,a). $$
#
# `mr.log_marginal_is` draws in turn by default (`stratified=True`; the cell above used it);
# `stratified=False` draws the components at random. With 16 draws, two per fixed point:

# %%
err_strat = np.stack([mr.log_marginal_is(r_modes, Vr, 16, np.random.default_rng(r), c=fixed)[0] - exact_modes
                      for r in range(n_rep)])  # (n_rep, 256)
err_rand = np.stack([mr.log_marginal_is(r_modes, Vr, 16, np.random.default_rng(r), c=fixed,
                                        stratified=False)[0] - exact_modes
                     for r in range(n_rep)])  # (n_rep, 256)
spread_strat = err_strat[:, several].std(axis=0).mean()  # mean over images of the sd over reruns
spread_rand = err_rand[:, several].std(axis=0).mean()
print("images with several fixed points, S = 16   mean error   sd over reruns")
print(f"  components drawn in turn              {err_strat[:, several].mean():+10.3f}   {spread_strat:14.3f}")
print(f"  components drawn at random            {err_rand[:, several].mean():+10.3f}   {spread_rand:14.3f}")
assert spread_strat < spread_rand

# %% [markdown]
# Where the mean field has several fixed points, the single-mode proposal misses mass and its
# estimate is several times further below the truth than the mixture's; where it has one, the
# two are alike. On MNIST (docs/results.md sec. 26, `docs/results/is_proposal_check.py`) the
# trained capsule models have more fixed points the longer they train (1.1 per test image after
# 40 epochs, 1.6 and 2.3 after 200 on two seeds), and the mixture of 8 fixed points with up to
# 10,000 draws raises their estimates by 0.01 to 0.3 nats per image over the 100-draw
# single-mode estimate that the tables report (more draws of that single mode account for 0.01
# to 0.13 of it): most on the model with the most fixed points.
#
# ## 7. Pseudo-likelihood is not likelihood (5.7, 3.11)
#
# The pseudo-log-likelihood replaces $\log p(v)$ by the sum of the one-pixel conditionals,
#
# $$ \mathrm{PL}(v) = \sum_i\log p(v_i\mid v_{-i}) = \sum_i\log\sigma\big(F(v^{(i)}) - F(v)\big), \tag{5.7} $$
#
# ($v^{(i)}$: pixel $i$ flipped). $Z$ cancels in each conditional, so it costs $D$ free energies
# (3.11 is the same formula with Model P's $F$), and the package's one-flip estimate (one
# random pixel per image, times $D$) is unbiased for it. A naive version from a table of the
# whole distribution, against the package:

# %%
def pseudo_loglik_table(p_all, v):
    """PL (5.7) from a table p_all (2^D,) over every state in enumerate_binary order; v (B, D) binary."""
    idx = (v @ 2 ** np.arange(v.shape[1])).astype(int)  # (B,)
    total = np.zeros(len(v))
    for i in range(v.shape[1]):
        flipped = idx ^ (1 << i)  # the same image with pixel i flipped
        total += np.log(p_all[idx] / (p_all[idx] + p_all[flipped]))
    return total


v_some = V9[np.random.default_rng(3).choice(512, 20, replace=False)]
np.testing.assert_allclose(pseudo_loglik_table(rbm.exact_probability_v(tiny), v_some),
                           rbm.pseudo_log_likelihood_exact(tiny, v_some), rtol=1e-10)
draws = np.stack([rbm.pseudo_log_likelihood(tiny, v_some, np.random.default_rng(r)) for r in range(4000)])  # (4000, 20)
z = (draws.mean(0) - rbm.pseudo_log_likelihood_exact(tiny, v_some)) / (draws.std(0) / np.sqrt(len(draws)))
print(f"naive PL equals rbm.pseudo_log_likelihood_exact; the one-flip estimate, averaged over 4000 draws, is within "
      f"{np.abs(z).max():.1f} standard errors of it on all 20 images")
assert np.abs(z).max() < 4.5

# %% [markdown]
# Maximising PL is a consistent way to fit a model (Besag, 1975): with enough data from a model
# of the family, it recovers that model. As a *score*, though, it only asks how each pixel is
# predicted from all the others at the data; probability mass placed far from every data
# point is invisible to it. On the 3x3 bars and stripes of lesson 4 (14 patterns, any two
# differ in at least three pixels), compare four distributions given as tables:
#
# * **A**: uniform on the 14 patterns (the best possible model);
# * **B**: half the mass on the patterns, half spread uniformly on the states that are at least
#   two pixel flips from every pattern;
# * **C**: uniform on all 512 states;
# * **D**: uniform on all states, except the 14 patterns, which are five times *less* likely.

# %%
def bars_and_stripes(side=3):
    """All distinct side x side images whose rows are all constant or whose columns are: (N, side^2)."""
    pats = set()
    for bits in enumerate_binary(side).astype(int):
        rows = np.repeat(bits[:, None], side, axis=1)  # every row constant
        pats.add(tuple(rows.ravel()))
        pats.add(tuple(rows.T.ravel()))  # every column constant
    return np.array(sorted(pats), dtype=np.float64)


bs = bars_and_stripes()  # (14, 9)
is_pattern = np.zeros(512, bool)
is_pattern[(bs @ 2 ** np.arange(9)).astype(int)] = True
dist = (V9.sum(1)[:, None] + bs.sum(1)[None, :] - 2 * V9 @ bs.T).min(axis=1)  # (512,) flips to the nearest pattern
assert dist[~is_pattern].min() == 1 and np.sort(np.unique((bs.sum(1)[:, None] + bs.sum(1) - 2 * bs @ bs.T)))[1] >= 3
far = dist >= 2
tables = {"A": is_pattern / 14.0,
          "B": 0.5 * is_pattern / 14.0 + 0.5 * far / far.sum(),
          "C": np.full(512, 1 / 512),
          "D": np.where(is_pattern, 0.2, 1.0) / (498 + 14 * 0.2)}
print("table   log-likelihood   pseudo-log-likelihood   (nats per image, mean over the 14 patterns)")
for name, p_all in tables.items():
    assert abs(p_all.sum() - 1) < 1e-12
    idx = (bs @ 2 ** np.arange(9)).astype(int)
    print(f"  {name}     {np.log(p_all[idx]).mean():14.3f}   {pseudo_loglik_table(p_all, bs).mean():21.3f}")

# %% [markdown]
# A and B have the same pseudo-likelihood (zero: every pixel of a pattern is certain given the
# other eight), yet B puts half its mass on states that are not data and its log-likelihood
# is $\log 2$ nats lower. C has equal PL and log-likelihood, and for D the PL is *below* the
# log-likelihood. So pseudo-likelihood is not a bound in either direction and does not rank
# models as likelihood does. It is a cheap monitor of the fit near the data (the `history_` of
# lesson 8), not a substitute for a likelihood. The same holds on MNIST; for the RBM-16:

# %%
pl16 = rbm.pseudo_log_likelihood_exact(mnist16, X_test).mean()
print(f"RBM-16, 500 test images: log-likelihood {ll16:.2f}, pseudo-log-likelihood {pl16:.2f} nats per image "
      f"({ll16 / 784:.4f} and {pl16 / 784:.4f} per pixel)")

# %% [markdown]
# ## 8. The likelihood table
#
# The package's experiment runner trains each named configuration on the binarised MNIST
# training set, estimates $\log Z$ by AIS from the base-rate model of the training means, and
# reports the test log-likelihood in nats per image (6.5), with $\log Z$'s standard error and,
# for Model R, the importance-sampling error over routings. Its results, when present, are in
# `docs/results/mnist/`:

# %%
results_dir = REPO / "docs" / "results" / "mnist"
rows = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))] if results_dir.is_dir() else []
if rows:
    print("model            weights   epochs   log Z (AIS)        test log-likelihood (nats/image)")
    for r in rows:
        note = "  (neither a lower nor an upper bound)" if r.get("class") == "RoutedCapsuleRBM" else ""
        print(f"{r['model']:14s} {r['n_weights']:9,d}   {r['epochs']:6d}   {r['log_z']:9.2f} +- {r['log_z_std_error']:.3f}"
              f"   {r['test_log_likelihood']:9.2f} +- {r['test_log_likelihood_sem']:.2f}{note}")
else:
    print(f"no results in {results_dir} yet; produce them (hours on one core for the full data) with\n"
          f"    python -m capsnp experiment --dataset mnist\n"
          f"or a quick look with, e.g.,\n"
          f"    python -m capsnp experiment --dataset mnist --epochs 5 --n-train 10000 --n-test 2000 --fast-ais")

print("\nanchors from the literature (Salakhutdinov & Murray 2008; RBM, 500 hidden units, binarised MNIST):")
for name, value in (("CD-1", -125.5), ("CD-3", -105.5), ("CD-25", -86.34)):
    print(f"    RBM-500 trained by {name:5s}: about {value:8.2f} nats")
print("and at lesson size (500 test images, exact log Z):")
print(f"    base-rate model (independent pixels): {ll0:8.2f} nats")
print(f"    RBM-16, 10 epochs on 2,000 images:    {ll16:8.2f} nats")

# %% [markdown]
# Reading such a table: the base-rate model is the floor (about $-200$ nats here); RBM-500 by
# CD-25 reaches $-86$. Differences of a few nats matter, and are meaningful only if the AIS
# error is well below them; an AIS estimate of $\log Z$ that is too low makes a model look
# better than it is. Model R's rows carry a second estimate and are neither lower nor upper
# bounds (section 6), so their spread over reruns should be reported with them.
#
# ## Summary
#
# * (6.1) Exact $\log Z$ by enumeration checked for all three models; an RBM with 784 pixels and
#   16 hidden units has an exact $\log Z$ and served as a test bed.
# * Plain importance sampling from the base-rate model is unbiased for $Z$ but fails in high
#   dimension: the relative variance of the weights grows exponentially with $D$; on the RBM-16
#   even $10^5$ draws were several nats low.
# * (6.2)-(6.3) AIS is importance sampling on an extended space; $\mathbb{E}[w] = Z_1/Z_0$ for every
#   schedule (checked to rounding error by propagating exact distributions), and the schedule
#   only controls the variance. The naive AIS equalled `capsnp.ais` draw for draw and agreed with
#   the exact $\log Z$ within its error bars.
# * (6.4) Delta-method and bootstrap error bars are honest when there are enough temperatures;
#   with too few, the estimate is biased low (Jensen) by more than its error bar says.
# * (6.7) Reverse AIS from exact draws restricted to a set $B$ bounds $\log Z_B$ from above, loose
#   by $-\log P_{\text{fwd}}(B)$ (checked exactly on the tiny RBM).
# * (6.8) AIS restricted to $B$ (its base restricted by rejection, a sweep's visible draw refused
#   outside $B$) is unbiased for $Z_B$ with every run inside $B$; (6.9) gives $P_0(B)$ for an ink
#   set. Both checked exactly on the tiny RBM. (6.10) refuses pixel by pixel instead, so that
#   chains at the edge of an ink set keep moving.
# * AIS for Model P (MH) and Model R ((v, a) sweeps) agreed with exact $\log Z$ on tiny models.
# * (4.10) Model R's $\log\tilde p(v)$ by importance sampling over routings is biased low too;
#   combined with AIS, the result was too low in one setting and too high in another. Where the
#   mean field has several fixed points, a mixture of them is the better proposal; on MNIST,
#   with more draws, it raised the capsule models' estimates by 0.01 to 0.3 nats per image.
# * (5.7) Pseudo-likelihood ignores mass away from the data and bounds nothing.
#
# ## Exercises
#
# 1. (\*) Show that with $K = 1$ (betas $0, 1$) the AIS weight (6.3) is the plain importance weight
#    $f_1(v)/f_0(v)$ of section 2, and check with `ais.ais` (or `ais_log_partition`) on the tiny
#    RBM that the two estimators then give identical weights from the same base draws.
# 2. (\*\*) On the tiny RBM of section 3, use the exact relative variance $\mathrm{Var}(w)/\mathbb{E}[w]^2$
#    to predict the standard error and the Jensen bias of $\widehat{\log Z}$ with $n = 10$ runs and
#    $K = 2$ and $K = 5$ temperatures; check both predictions against 2,000 repeated AIS runs.
#    Where does the second-order prediction of the bias fail, and why?
# 3. (\*\*\*) Reverse AIS. Run the annealing backwards, from exact samples of the tiny RBM
#    (enumerate $p(v)$ and draw from it) towards the base model, accumulating
#    $\log f_{k-1}(x) - \log f_k(x)$. Show that the weights estimate $Z_0/Z_1$ without bias, so
#    that $\log Z_0 - \log\overline{w}_{\text{rev}}$ is biased *high*; check on the tiny RBM that the
#    forward and reverse estimates bracket the exact $\log Z$ for a few schedules. Why is this
#    hard to use on MNIST?
#
# Solutions are in `solutions.md`.

# %%
print(f"lesson 9 ran in {time.perf_counter() - t_start:.1f} s")
