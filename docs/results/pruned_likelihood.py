"""What are the weights worth that get no data statistic under routing? Prune them and measure.

Loads ``<folder>/<name>_model.npz`` of Model R (default folder ``docs/results/<dataset>``),
sets to zero every W_ij whose pair (position i, capsule j) receives fewer than ``threshold`` of
the ink patches at position i under mean-field routing of 10,000 training images (the measure
of ``routing_usage.py``; positions where no image has ink are left alone), and estimates the pruned model's test log-likelihood exactly as the
experiment does (AIS with 100 runs and 14,501 temperatures from the training base rate,
importance sampling over routings with 100 samples per test image). Prints one JSON line: the
share of weights pruned, log Z, and the test log-likelihood next to the unpruned row's.

    python docs/results/pruned_likelihood.py r-2x250-c100 mnist [threshold] [folder]
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from capsnp.ais import ais_log_partition, default_betas
from capsnp.capsules import to_capsules
from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import load_estimator
from capsnp.experiment import test_log_likelihood
from routing_usage import routed_ink  # beside this script


def main(name, dataset="mnist", threshold=0.01, folder=None, n_ais_runs=100, fast=False):
    threshold = float(threshold)
    folder = Path(folder or Path("docs/results") / dataset)
    est = load_estimator(folder / f"{name}_model.npz")
    row = json.loads((folder / f"{name}.json").read_text())
    X_train, _ = load_dataset(dataset, "train")
    X_test, _ = load_dataset(dataset, "test")
    seed = int(row.get("params", {}).get("random_state") or 0)  # the run's --seed (its folder's models)
    V_train = binarize(X_train, "stochastic", random_state=seed)  # the experiment's binarisations
    V_test = binarize(X_test, "stochastic", random_state=seed + 1)
    v = to_capsules(V_train[:10000], est.image_shape_, est.patch_)  # (n, I, d_v)
    _, _, ink, _, share = routed_ink(est, v)  # share: (I, J)
    no_data = (share < threshold) & ink.any(axis=0)[:, None]  # (I, J), positions with ink only
    est.W_ = np.where(no_data[:, :, None, None], 0.0, est.W_)  # (I, J, d_h, d_v)
    base = to_capsules(V_train.mean(axis=0)[None], est.image_shape_, est.patch_)[0]  # (I, d_v)
    t0 = time.perf_counter()
    res = ais_log_partition(est, n_runs=int(n_ais_runs), betas=default_betas(fast=bool(fast)),
                            random_state=seed, base_rate=base)
    ll, _ = test_log_likelihood(est, V_test, res.log_z, np.random.default_rng(seed))
    print(json.dumps({"model": name, "dataset": dataset, "threshold": threshold,
                      "pruned_weight_share": round(float(no_data.mean()), 4),
                      "log_z": res.log_z, "log_z_std_error": res.std_error,
                      "test_log_likelihood": float(np.mean(ll)),
                      "unpruned_test_log_likelihood": row["test_log_likelihood"],
                      "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
