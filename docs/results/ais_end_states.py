"""Where do the AIS runs end, and which of them carry log Z? A check for a spurious mode.

AIS (6.3) weighs each run's last state x_{K-1} at beta = 1; the weighted end states are draws
from the model (6.4). A mode that fresh chains from noise fall into but no annealing run visits
would hold mass that log Z misses. This reruns AIS on a saved model of ``<folder>`` (default
``docs/results/<dataset>``), with the experiment's base-rate model and ``x<k>`` times the default
schedule (``x1``: the default 14,501 temperatures; ``fast``: 1,451), keeps the runs' end states,
and splits the runs by ink: the number of pixels on in the end state, against ``threshold``
(default 200; the blocky box that fresh chains of the sec. 46 split fall into has about 240, test
digits about 100). It prints one JSON line: log Z, the effective sample size, the number of runs
above the threshold and their share of the total weight (the AIS estimate of the model's mass
above the threshold), the largest log weight on each side, and the ink quantiles. It writes
``<name>_ais_end_states.png`` beside the model: the end states, heaviest run first.

    python docs/results/ais_end_states.py rs-400-2x50-m5-lr3-mf3-c300-avg-sc-ca100 mnist x1 100 docs/results/mnist/centred/offsets-average

Arguments: name, dataset, schedule, runs, folder, seed (default 1), threshold.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from ais_schedule_check import experiment_base_rate
from capsnp.ais import ais, annealing_path, blas_setting, default_betas
from capsnp.capsules import from_capsules
from capsnp.estimators import BernoulliRBM, load_estimator
from capsnp.plots import image_grid


def schedule(name):
    """``fast`` (1,451 temperatures) or ``x<k>``: k times the default schedule's density."""
    if name == "fast":
        return default_betas(fast=True)
    full = default_betas()
    k = int(str(name)[1:])
    return np.interp(np.linspace(0, len(full) - 1, k * (len(full) - 1) + 1), np.arange(len(full)), full)


def end_state_images(est, state):
    """The visible part of an AIS state as images: (n, D)."""
    if isinstance(est, BernoulliRBM):
        return np.asarray(state, dtype=np.float64)  # (n, D)
    v = np.asarray(state[0], dtype=np.float64)  # (n, I, d_v); state[1] is the routing a
    return from_capsules(v, est.image_shape_, est.patch_).reshape(v.shape[0], -1)


def ais_with_end_states(path, betas, n_runs, rng):
    """Forward AIS (6.3, 6.4) on ``path`` (an :class:`capsnp.ais.AnnealingPath`), and the runs'
    end states x_{K-1}, the states weighed at beta = 1: (AISResult, state of n_runs)."""
    last = {}

    def sample_base(n, g):
        last["state"] = path.sample_base(n, g)
        return last["state"]

    def transition(beta, state, g):
        last["state"] = path.transition(beta, state, g)
        return last["state"]

    with blas_setting(path):
        res = ais(path.log_f, sample_base, transition, path.log_z_base, betas, n_runs, rng,
                  log_f_pair=path.log_f_pair)
    return res, last["state"]


def weight_split(log_w, above):
    """Share of the total AIS weight carried by the runs flagged ``above``, and each side's largest
    log weight (None where a side has no run: JSON has no infinity)."""
    total = logsumexp(log_w)
    share = float(np.exp(logsumexp(log_w[above]) - total)) if above.any() else 0.0
    top = [float(log_w[m].max()) if m.any() else None for m in (above, ~above)]
    return share, top


def main(name, dataset="mnist", which="x1", runs=100, folder=None, seed=1, threshold=200):
    folder = Path(folder or Path("docs/results") / dataset)
    est = load_estimator(folder / f"{name}_model.npz")
    path = annealing_path(est, experiment_base_rate(est, dataset))
    betas = schedule(which)
    start = time.perf_counter()
    res, end = ais_with_end_states(path, betas, int(runs), np.random.default_rng(int(seed)))
    seconds = time.perf_counter() - start
    images = end_state_images(est, end)  # (runs, D)
    ink = images.sum(axis=1)  # (runs,)
    above = ink > float(threshold)
    share, (top_above, top_below) = weight_split(res.log_weights, above)
    order = np.argsort(-res.log_weights)
    image_grid(images[order], (28, 28), 10, folder / f"{name}_ais_end_states.png",
               title=f"AIS end states, heaviest run first ({len(betas)} temperatures, {int(runs)} runs)")
    print(json.dumps({
        "model": name, "dataset": dataset, "temperatures": len(betas), "runs": int(runs), "seed": int(seed),
        "log_z": res.log_z, "std_error": res.std_error, "effective_sample_size": res.effective_sample_size,
        "threshold": float(threshold), "runs_above": int(above.sum()), "weight_share_above": share,
        "max_log_w_above": top_above, "max_log_w_below": top_below,
        "ink_quantiles": [float(q) for q in np.percentile(ink, [0, 10, 50, 90, 100])],
        "seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
