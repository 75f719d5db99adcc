"""log Z as the sum of two masses, each measured by AIS restricted to its own set of states (6.8).

Forward AIS on the experiment's path weighs a region only through the runs that end there. When
fresh chains fall into a mode no run visits (the blocky box of the sec. 46 split), its mass is
missing from log Z; measured on a path of the box's own, it rests on the few runs that happen
to end there (``log_z_sandwich.py``), and those estimates are heavy-tailed. Here the states are
cut in two by ink (units on) at ``threshold``, D = {ink <= threshold} and B = {ink > threshold},
and each mass is measured by forward AIS that never leaves its set: the base model restricted
to the set (drawn by rejection, its probability by the Poisson-binomial tail, 6.9) and every
sweep's visible draw refused pixel by pixel where it would leave the set
(``capsnp.ais.ink_restricted_path``, 6.10; with ``whole`` among the parts, whole draws are
refused instead, ``capsnp.ais.restricted_path``, 6.8). Then ``Z = Z_D + Z_B`` holds exactly,
and every run counts. The report gives, for each tenth of the schedule, the share of whole
draws that fell outside the set: where it nears 1, whole-draw refusal freezes the chains.

For a saved model of ``<folder>`` (default ``docs/results/<dataset>``) and one schedule
(``fast``: 1,451 temperatures, ``x<k>``: k times the default 14,501), this script

1. runs ``n`` fresh chains from noise (``p = sigmoid(visible biases)``, as ``sample`` starts
   them) for ``sweeps`` sweeps; the pixel means of those that end in B are the base of B's path
   (of them all if none does);
2. measures log Z_D by ``n`` restricted runs on the experiment's path (base: the training
   data's pixel means) and log Z_B by ``n`` restricted runs on B's path;
3. with ``reverse`` among the parts, runs restricted reverse AIS (6.7) from the chains in B. From
   exact draws of the model restricted to B, its ``mean(1 / w)`` would be unbiased for
   ``Z_0 P_0(B) / Z_B``, so its log Z_B an upper estimate (Jensen); these starts are chains
   chosen because they ended in B, so the check is approximate.

It prints one JSON line: each mass with its standard error and effective sample size, their
sum ``log_z``, B's share of it, the ink quantiles (0, 10, 25, 50, 75, 90, 100%) of the chains
from noise (how cleanly the threshold separates them), and the reported forward log Z of
``<name>.json`` if present. For each set it also keeps the runs' end states, the states
weighed at beta = 1: their ink quantiles, the weight share of the heaviest run and of the ten
heaviest, and a picture, ``<name>_restricted_<digits|box>_end_states.png`` beside the model,
heaviest run first: where each set's mass sits.

B's base is written to ``<name>_box_base.npy`` (pixel means in image layout, (D,)). A tenth
argument, the path of such a file, makes it B's base instead of the chains' means: with it, a
model whose chains from noise seldom reach B (the RBM-500) is measured from the same base as
one whose chains do.

    python docs/results/restricted_log_z.py rs-400-2x50-m5-lr3-mf3-c300-avg-sc-ca100 mnist x1 100 1000 docs/results/mnist/centred/offsets-average/seed1

Arguments: name, dataset, schedule, n, sweeps, folder, seed (default 1), threshold (default 200),
parts (default ``digits,box``; add ``reverse`` for step 3, ``whole`` for whole-draw refusal),
base (a ``_box_base.npy`` file; default: the chains' means).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from ais_end_states import ais_with_end_states, schedule
from ais_schedule_check import experiment_base_rate
from capsnp.ais import (annealing_path, base_log_odds, blas_setting, ink_restricted_path,
                        ink_tail_log_probability, restricted_path, reverse_ais)
from capsnp.estimators import load_estimator
from capsnp.ops import sigmoid
from capsnp.plots import image_grid
from log_z_sandwich import run_chains, subset


def visible(state):
    """The visible units of a path state, one row per run: (n, D) or (n, I d_v)."""
    v = state[0] if isinstance(state, tuple) else state
    return np.asarray(v).reshape(v.shape[0], -1)


def log_mass_at_most(p, threshold):
    """``log P(count <= threshold)`` for independent pixels with probabilities p (6.9 on the
    flipped pixels: count <= t exactly when the off-pixels number more than D - floor(t) - 1)."""
    p = np.asarray(p, dtype=np.float64).ravel()  # (D,)
    return ink_tail_log_probability(1.0 - p, p.shape[0] - np.floor(threshold) - 1)


def refusal_counting(path, inside):
    """``path`` with its transition counting the visible draws that fall outside B, which the
    restricted path refuses, by tenth of the schedule: (path, counts (10, 2): refused, tried)."""
    counts = np.zeros((10, 2))

    def transition(beta, state, g):
        new = path.transition(beta, state, g)
        refused = ~np.asarray(inside(visible(new)), dtype=bool)  # (n,)
        counts[min(int(beta * 10), 9)] += (refused.sum(), refused.shape[0])
        return new

    return path._replace(transition=transition), counts


def restricted_mass(path, base_probability, inside, at_most, threshold, betas, n, rng, whole=False):
    """Forward AIS (6.8) on ``path`` restricted to D (``at_most``) or B, refusing pixel by pixel
    (6.10) or, with ``whole``, whole visible draws: (AISResult, restricted path, the share of
    whole visible draws outside the set in each tenth of beta, (10,), the runs' end states)."""
    log_base = (log_mass_at_most(base_probability, threshold) if at_most
                else ink_tail_log_probability(base_probability, threshold))
    counting, counts = refusal_counting(path, inside)
    sub = (restricted_path(counting, inside, log_base) if whole
           else ink_restricted_path(counting, threshold, not at_most, log_base))
    res, end = ais_with_end_states(sub, betas, n, rng)
    return res, sub, counts[:, 0] / np.maximum(counts[:, 1], 1), end


def end_state_report(est, res, state, key, folder, name, title):
    """Ink quantiles (0, 10, 50, 90, 100%) of the runs' end states, the weight share of the
    heaviest run and of the ten heaviest, and their picture, heaviest first (a dict of ``key_``
    entries)."""
    v = np.asarray(state[0] if isinstance(state, tuple) else state, dtype=np.float64)  # model layout
    images = est._from_layout(v).reshape(v.shape[0], -1)  # (n, D)
    order = np.argsort(-res.log_weights)
    share = np.exp(res.log_weights[order] - logsumexp(res.log_weights))  # (n,), heaviest first
    side = int(round(np.sqrt(images.shape[1])))
    image_grid(images[order], (side, side), 10, Path(folder) / f"{name}_restricted_{key}_end_states.png",
               title=title)
    return {f"{key}_end_ink_quantiles": [float(q) for q in np.percentile(images.sum(axis=1), [0, 10, 50, 90, 100])],
            f"{key}_top_run_share": float(share[0]), f"{key}_top_ten_share": float(share[:10].sum())}


def main(name, dataset="mnist", which="x1", n=100, sweeps=1000, folder=None, seed=1, threshold=200,
         parts="digits,box", base=None):
    n, threshold, parts = int(n), float(threshold), set(parts.split(","))
    whole = "whole" in parts
    folder = Path(folder or Path("docs/results") / dataset)
    est = load_estimator(folder / f"{name}_model.npz")
    data_rate = experiment_base_rate(est, dataset)  # (D,) or (I, d_v)
    path = annealing_path(est, data_rate)
    noise_path = annealing_path(est)  # its base is the "noise" fresh chains start from
    rng = np.random.default_rng(int(seed))
    betas = schedule(which)
    ink = lambda v: np.asarray(v).reshape(v.shape[0], -1).sum(axis=1)  # noqa: E731, (n,)
    in_d = lambda v: ink(v) <= threshold  # noqa: E731
    in_b = lambda v: ink(v) > threshold  # noqa: E731
    start = time.perf_counter()
    report = {"model": name, "dataset": dataset, "temperatures": len(betas), "runs": n,
              "sweeps": int(sweeps), "seed": int(seed), "threshold": threshold}
    with blas_setting(path):
        if "digits" in parts:
            res, _, refused, end = restricted_mass(path, sigmoid(base_log_odds(data_rate)), in_d, True,
                                                   threshold, betas, n, rng, whole)
            report.update(log_z_digits=res.log_z, digits_std_error=res.std_error,
                          digits_effective_sample_size=res.effective_sample_size,
                          digits_outside_by_tenth_of_beta=[round(float(r), 4) for r in refused])
            report.update(end_state_report(est, res, end, "digits", folder, name,
                                           f"AIS restricted to ink <= {threshold:g}: end states, heaviest first"))
        if parts & {"box", "reverse"}:
            noise = run_chains(path, noise_path.sample_base(n, rng), sweeps, rng)
            box = in_b(visible(noise))  # (n,)
            report["chains_from_noise_in_box"] = int(box.sum())
            report["chains_from_noise_ink_quantiles"] = [float(q) for q in np.percentile(
                ink(visible(noise)), [0, 10, 25, 50, 75, 90, 100])]
            if base is None:
                chosen = visible(subset(noise, box)) if box.any() else visible(noise)  # (m, D)
                box_rate = chosen.mean(axis=0).reshape(data_rate.shape)
            else:  # image layout (D,) -> the model's
                box_rate = est._to_layout(np.load(base)[None].astype(data_rate.dtype))[0]
                report["box_base"] = str(base)
            np.save(folder / f"{name}_box_base.npy", est._from_layout(box_rate[None])[0])
            box_path = annealing_path(est, box_rate)
            res, sub, refused, end = restricted_mass(box_path, sigmoid(base_log_odds(box_rate)), in_b, False,
                                                     threshold, betas, n, rng, whole)
            report.update(log_z_box=res.log_z, box_std_error=res.std_error,
                          box_effective_sample_size=res.effective_sample_size,
                          box_outside_by_tenth_of_beta=[round(float(r), 4) for r in refused],
                          box_log_base_mass=sub.log_z_base - box_path.log_z_base)
            report.update(end_state_report(est, res, end, "box", folder, name,
                                           f"AIS restricted to ink > {threshold:g}: end states, heaviest first"))
            if "reverse" in parts and box.any():
                up = reverse_ais(sub.log_f, subset(noise, box), sub.transition, sub.log_z_base, betas, rng,
                                 log_f_pair=sub.log_f_pair)
                report.update(reverse_box_log_z=up.log_z, reverse_box_std_error=up.std_error)
    if {"log_z_digits", "log_z_box"} <= report.keys():
        log_z = float(np.logaddexp(report["log_z_digits"], report["log_z_box"]))
        report.update(log_z=log_z, box_share=float(np.exp(report["log_z_box"] - log_z)))
    reported = folder / f"{name}.json"
    if reported.exists():
        report["reported_log_z"] = json.loads(reported.read_text()).get("log_z")
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
