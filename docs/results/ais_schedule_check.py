"""AIS schedule check: does a likelihood row's log Z move with a longer annealing schedule?

Reruns AIS on a saved model of ``docs/results/<dataset>`` with every ``thin``-th temperature of
the default schedule (thin 3: 4,835 temperatures, three times the fast schedule's 1,451; thin 1:
all 14,501), or with ``x<k>`` (e.g. ``x3``) k times as many temperatures as the default schedule,
placed along it by linear interpolation (43,501 for x3), and 50 runs, and prints log Z with its
standard error as one JSON line. A log Z that rises with the number of temperatures shows the
shorter schedule's downward bias (and so by how much the reported log-likelihood is optimistic).

    CAPSNP_DATA_DIR=../shared/data python docs/results/ais_schedule_check.py p mnist 3
    CAPSNP_DATA_DIR=../shared/data python docs/results/ais_schedule_check.py r-2x250 mnist x3
    CAPSNP_DATA_DIR=../shared/data python docs/results/ais_schedule_check.py rbm-250-pcd-long mnist x3
    CAPSNP_DATA_DIR=../shared/data python docs/results/ais_schedule_check.py rbm-pcd-long-m5-lr2-k3-40 mnist x3 docs/results/mnist/seed2

A fifth argument seeds the AIS runs (default 1): a second check with another seed tells a
schedule's bias from the spread of one check's 50 runs.
"""

import json
import sys
import time

import numpy as np

from capsnp.ais import ais_log_partition, default_betas
from capsnp.capsules import to_capsules
from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import BernoulliRBM, load_estimator


def experiment_base_rate(est, dataset):
    """The experiment's base-rate model, in the model's layout: the means of the training split
    binarised as the experiment does, (D,) for the RBM or (I, d_v) for capsules."""
    X, _ = load_dataset(dataset, "train")
    base = binarize(X, "stochastic", random_state=0).mean(axis=0)  # (D,)
    if isinstance(est, BernoulliRBM):
        return base
    return to_capsules(base[None], est.image_shape_, est.patch_)[0]  # (I, d_v)


def main(name, dataset="mnist", thin=3, folder=None, seed=1):
    folder = folder or f"docs/results/{dataset}"  # e.g. docs/results/mnist/seed2 for another seed's model
    est = load_estimator(f"{folder}/{name}_model.npz")
    base = experiment_base_rate(est, dataset)
    full = default_betas()
    if str(thin).startswith("x"):  # k times denser, the same shape of schedule
        k = int(str(thin)[1:])
        betas = np.interp(np.linspace(0, len(full) - 1, k * (len(full) - 1) + 1),
                          np.arange(len(full)), full)
    else:
        thin = int(thin)
        betas = full[::thin] if full[::thin][-1] == 1.0 else np.append(full[::thin], 1.0)
    start = time.perf_counter()
    res = ais_log_partition(est, n_runs=50, betas=betas, random_state=int(seed), base_rate=base)
    print(json.dumps({"model": name, "dataset": dataset, "temperatures": len(betas), "runs": 50,
                      "seed": int(seed), "log_z": res.log_z, "std_error": res.std_error,
                      "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
