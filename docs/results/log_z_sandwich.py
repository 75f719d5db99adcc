"""Bounds on log Z from both sides, and the mass of the states fresh chains fall into.

Forward AIS (6.3, 6.4) bounds log Z from below, in expectation. If fresh chains from noise fall
into a mode that no annealing run visits (the blocky box of the sec. 46 split), its mass is
what the reported log Z would miss. Reverse AIS (6.7) from draws restricted to a set B bounds
Z_B, the unnormalised mass of B, from above, by Z_B / P(a forward run ends in B): tight only on
a path whose forward runs end in B. So B gets a path of its own. For a saved model of ``<folder>``
(default ``docs/results/<dataset>``) and one schedule (``fast``: 1,451 temperatures, ``x<k>``:
k times the default 14,501), this script

1. runs ``n`` fresh chains from noise (``p = sigmoid(visible biases)``, as ``sample`` starts
   them) and ``n`` chains from the first ``n`` binarised test images, ``sweeps`` sweeps each;
2. splits them by ink (pixels on) at ``threshold``: the box B is the chains from noise above
   it, the digits D the chains from test images at or below it;
3. on the experiment's path (base: the training data's pixel means) runs forward AIS (a lower
   estimate of log Z) and reverse AIS from D (an upper estimate of log Z_D);
4. on a path whose base is the box states' pixel means runs forward AIS, keeping only the runs
   that end in B (``mean(w 1_B)``: a lower estimate of log Z_B), and reverse AIS from B (an
   upper estimate of log Z_B).

It prints one JSON line with the estimates, their standard errors, and ``upper_log_z`` =
logaddexp(upper D, upper B): with the forward log Z, it brackets log Z if the chains are draws
from the model restricted to D and B (the caveat: they are long chains, not exact draws).
``gap`` = upper - forward is by how much the reported test log-likelihood could be optimistic.

    python docs/results/log_z_sandwich.py rs-400-2x50-m5-lr3-mf3-c300-avg-sc-ca100 mnist x1 100 1000 docs/results/mnist/centred/offsets-average

Arguments: name, dataset, schedule, n, sweeps, folder, seed (default 1), threshold (default 200),
parts (default ``forward,digits,box``: which of the estimates of steps 3 and 4 to run).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from ais_end_states import ais_with_end_states, end_state_images, schedule
from ais_schedule_check import experiment_base_rate
from capsnp.ais import ais, annealing_path, blas_setting, reverse_ais
from capsnp.capsules import to_capsules
from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import BernoulliRBM, load_estimator


def chains_from(est, path, images, rng):
    """Path states (as in :func:`capsnp.ais.annealing_path`) whose visible units are ``images``
    (n, D): v itself for the RBM; (v, a) for Model R, the routing a drawn from the base model's
    prior (the first sweep draws h given it, so it only sets where the chain starts)."""
    if isinstance(est, BernoulliRBM):
        return np.asarray(images, dtype=np.float64)
    v = to_capsules(np.asarray(images, dtype=np.float64), est.image_shape_, est.patch_)  # (n, I, d_v)
    _, a = path.sample_base(v.shape[0], rng)  # (n, I)
    return v, a


def run_chains(path, state, sweeps, rng):
    """``sweeps`` sweeps of the model's sampler (beta = 1) from ``state``."""
    for _ in range(int(sweeps)):
        state = path.transition(1.0, state, rng)
    return state


def subset(state, keep):
    """The runs of a path state flagged by ``keep`` (n,)."""
    if isinstance(state, tuple):
        return tuple(x[keep] for x in state)
    return state[keep]


def forward_ending_in(path, betas, n, rng, keep):
    """Forward AIS on ``path`` and the runs whose end state satisfies ``keep`` (state -> (n,) bool):
    the AISResult, the flags (n,), and ``log mean(w 1_B) + log Z_0``, an unbiased (in Z) lower
    estimate of log Z_B (None if no run ends in B)."""
    res, end = ais_with_end_states(path, betas, n, rng)
    inside = keep(end)  # (n,)
    log_w = np.where(inside, res.log_weights, -np.inf)
    low = float(path.log_z_base + logsumexp(log_w) - np.log(n)) if inside.any() else None
    return res, inside, low


def main(name, dataset="mnist", which="x1", n=100, sweeps=1000, folder=None, seed=1, threshold=200,
         parts="forward,digits,box"):
    n, threshold, parts = int(n), float(threshold), set(parts.split(","))
    folder = Path(folder or Path("docs/results") / dataset)
    est = load_estimator(folder / f"{name}_model.npz")
    path = annealing_path(est, experiment_base_rate(est, dataset))
    noise_path = annealing_path(est)  # its base is the "noise" fresh chains start from
    rng = np.random.default_rng(int(seed))
    betas = schedule(which)
    X, _ = load_dataset(dataset, "test")
    ink = lambda state: end_state_images(est, state).sum(axis=1)  # noqa: E731, (n,)
    start = time.perf_counter()
    with blas_setting(path):
        noise = run_chains(path, noise_path.sample_base(n, rng), sweeps, rng)
        data = run_chains(path, chains_from(est, path, binarize(X[:n], "stochastic", random_state=0), rng),
                          sweeps, rng)
        box, digits = ink(noise) > threshold, ink(data) <= threshold  # (n,), (n,)
        chain_seconds = time.perf_counter() - start
        report = {"model": name, "dataset": dataset, "temperatures": len(betas), "sweeps": int(sweeps),
                  "seed": int(seed), "threshold": threshold, "of": n,
                  "chains_from_noise_in_box": int(box.sum()), "chains_from_data_in_digits": int(digits.sum())}
        if "forward" in parts:
            forward = ais(path.log_f, path.sample_base, path.transition, path.log_z_base, betas, n, rng,
                          log_f_pair=path.log_f_pair)
            report.update(forward_log_z=forward.log_z, forward_std_error=forward.std_error,
                          forward_effective_sample_size=forward.effective_sample_size)
        if "digits" in parts and digits.any():
            up = reverse_ais(path.log_f, subset(data, digits), path.transition, path.log_z_base, betas, rng,
                             log_f_pair=path.log_f_pair)
            report.update(reverse_digits_log_z=up.log_z, reverse_digits_std_error=up.std_error)
        if "box" in parts and box.any():
            box_mean = end_state_images(est, subset(noise, box)).mean(axis=0)  # (D,)
            box_path = annealing_path(est, box_mean if isinstance(est, BernoulliRBM)
                                      else to_capsules(box_mean[None], est.image_shape_, est.patch_)[0])
            res, inside, low = forward_ending_in(box_path, betas, n, rng, lambda s: ink(s) > threshold)
            up = reverse_ais(box_path.log_f, subset(noise, box), box_path.transition, box_path.log_z_base,
                             betas, rng, log_f_pair=box_path.log_f_pair)
            report.update(box_forward_runs_in_box=int(inside.sum()), box_lower_log_z=low,
                          box_upper_log_z=up.log_z, box_upper_std_error=up.std_error)
    if {"reverse_digits_log_z", "box_upper_log_z"} <= report.keys():
        upper = float(np.logaddexp(report["reverse_digits_log_z"], report["box_upper_log_z"]))
        report.update(upper_log_z=upper, box_share_of_upper=float(np.exp(report["box_upper_log_z"] - upper)))
        if "forward_log_z" in report:
            report["gap"] = upper - report["forward_log_z"]
    report["chain_seconds"] = round(chain_seconds, 1)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
