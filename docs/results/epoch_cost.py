"""Training cost per epoch of likelihood-table presets, measured side by side in one process.

The likelihood rows' wall-clock times were taken on a shared machine under different loads, so
they compare only roughly. This script times one epoch of each named preset on the same
``n`` binarised training images (MNIST unless a dataset is named), alternating the presets
``repeats`` times, and prints the median seconds per 60,000-image epoch and each preset's ratio
to the first one as one JSON line.
Multiply by a row's epochs for its cost at equal load.

    CAPSNP_DATA_DIR=../shared/data python docs/results/epoch_cost.py rbm-pcd-long,r-2x250-c100,r-2x250
    CAPSNP_DATA_DIR=../shared/data python docs/results/epoch_cost.py rbm-pcd-long,rb-2x250-rbm 6000 3 fashion-mnist
"""

import json
import sys
import time

import numpy as np

from capsnp.datasets import binarize, load_dataset
from capsnp.experiment import make_estimator


def side_by_side(epochs, n, repeats, dataset):
    """Time each ``epochs[name]()`` (returns the seconds of one epoch on ``n`` images)
    ``repeats`` times, alternated; return the median seconds per 60,000-image epoch and each
    name's ratio to the first one (a dict for one JSON line)."""
    names = list(epochs)
    seconds = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            seconds[name].append(epochs[name]() * 60000 / n)
    median = {name: float(np.median(s)) for name, s in seconds.items()}
    return {"dataset": dataset, "images": n, "repeats": repeats,
            "seconds_per_60k_epoch": {k: round(v, 2) for k, v in median.items()},
            "ratio_to_first": {k: round(v / median[names[0]], 2) for k, v in median.items()}}


def seconds_of(fit, X):
    """Wall-clock seconds of ``fit(X)``."""
    t0 = time.perf_counter()
    fit(X)
    return time.perf_counter() - t0


def main(names, n=6000, repeats=3, dataset="mnist"):
    names, n, repeats = names.split(","), int(n), int(repeats)
    X, _ = load_dataset(dataset, "train")
    V = binarize(X[:n], "stochastic", random_state=0)
    for name in names:  # compile the kernels before timing
        make_estimator(name, 1, verbose=0).fit(V[:300])
    epochs = {name: (lambda name=name: seconds_of(make_estimator(name, 1, verbose=0).fit, V))
              for name in names}
    print(json.dumps(side_by_side(epochs, n, repeats, dataset)), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
