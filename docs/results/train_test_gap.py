"""Training-set against test-set log-likelihood: is a model behind for lack of fit or of generalisation?

A model that scores lower on the test set than another can fit the training set worse (the
gap is already there on the images it was trained on: capacity, or what its training reaches)
or fit it as well and generalise worse (a train-test gap of its own). This loads
``<folder>/<name>_model.npz`` (default folder ``docs/results/<dataset>``) for every name, takes
log Z from ``<name>_ais_check.jsonl`` (the last line, a longer AIS schedule) when it exists and
from ``<name>.json`` otherwise, and scores the first ``n`` training images, binarised exactly as
the run that trained the model binarised them (the whole split with ``random_state = seed``, then
the first n), and the first ``n`` test images (``random_state = seed + 1``) with the estimator's
``log_likelihood`` (the capsule model: 100 importance samples over routings per image, seed 0,
as the tables). It prints one JSON line per model: both means with their standard errors of the
mean, their difference, and both means per class (0-9, by the data set's labels), to show where
a model loses. log Z is the same for both sets, so the differences do not depend on it.

    CAPSNP_DATA_DIR=../shared/data python docs/results/train_test_gap.py rb-2x250-m5-lr2-mf3-c300-avg,rbm-pcd-long-m5-lr2-c300-avg mnist 2000 docs/results/mnist/epochs200
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import RoutedCapsuleRBM, load_estimator


def saved_log_z(folder, name):
    """log Z of a saved row: the longer schedule's (``<name>_ais_check.jsonl``, last line) if
    it was run, else the row's own. Returns (log_z, source).

    Checks of the last line's schedule (the same ``temperatures`` and ``runs``, run with other
    AIS seeds) are pooled: each estimates Z by the mean of its runs' weights, so K of them give
    ``log Z = logsumexp_k(log_z_k) - log K``, the estimate from all their runs together."""
    check = Path(folder) / f"{name}_ais_check.jsonl"
    if check.exists():
        rows = [json.loads(ln) for ln in check.read_text().splitlines() if ln.strip()]
        last = rows[-1]
        if "temperatures" in last:
            rows = [r for r in rows if (r.get("temperatures"), r.get("runs")) == (last["temperatures"], last["runs"])]
        else:
            rows = [last]
        log_z = np.array([float(r["log_z"]) for r in rows])  # (K,)
        return float(logsumexp(log_z) - np.log(len(log_z))), check.name
    return float(json.loads((Path(folder) / f"{name}.json").read_text())["log_z"]), f"{name}.json"


def mean_log_likelihood(est, V, y, log_z):
    """Mean, standard error of the mean and per-class means (10,) of the per-image
    log-likelihood of V (n, D) with labels y (n,)."""
    if isinstance(est, RoutedCapsuleRBM):
        ll = est.log_likelihood(V, log_z, n_samples=100, random_state=np.random.default_rng(0))  # (n,)
    else:
        ll = est.log_likelihood(V, log_z)  # (n,)
    by_class = [round(float(ll[y == k].mean()), 3) if np.any(y == k) else None for k in range(10)]
    return float(np.mean(ll)), float(np.std(ll, ddof=1) / np.sqrt(len(ll))), by_class


def main(names, dataset="mnist", n=2000, folder=None):
    n = int(n)
    folder = Path(folder or Path("docs/results") / dataset)
    X_train, y_train = load_dataset(dataset, "train")
    X_test, y_test = load_dataset(dataset, "test")
    for name in names.split(","):
        t0 = time.perf_counter()
        est = load_estimator(folder / f"{name}_model.npz")
        meta = json.loads((folder / f"{name}.json").read_text())
        seed = int(meta.get("params", {}).get("random_state") or 0)  # the run's --seed
        V_train = binarize(X_train, "stochastic", random_state=seed)[:n]  # (n, D) as trained on
        V_test = binarize(X_test, "stochastic", random_state=seed + 1)[:n]  # (n, D) as scored
        log_z, source = saved_log_z(folder, name)
        train, train_sem, train_by_class = mean_log_likelihood(est, V_train, y_train[:n], log_z)
        test, test_sem, test_by_class = mean_log_likelihood(est, V_test, y_test[:n], log_z)
        print(json.dumps({
            "model": name, "dataset": dataset, "folder": str(folder), "images": n,
            "log_z": round(log_z, 4), "log_z_from": source,
            "train_log_likelihood": round(train, 4), "train_sem": round(train_sem, 4),
            "test_log_likelihood": round(test, 4), "test_sem": round(test_sem, 4),
            "train_minus_test": round(train - test, 4),
            "train_by_class": train_by_class, "test_by_class": test_by_class,
            "seconds": round(time.perf_counter() - t0, 1),
        }), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
