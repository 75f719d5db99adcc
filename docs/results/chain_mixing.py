"""How far a trained model's Gibbs chains move from the data in k sweeps, its parameters fixed.

A persistent chain of PCD is only as good as its sampler's mixing: if a sweep barely moves it,
the model statistics of an update lag behind the parameters. For each named model of
``<folder>`` (default ``docs/results/<dataset>``) this starts 500 chains at binarised test
images and runs k sweeps (``est.sample(init=images, n_steps=k)``, the estimator's own sampler:
Gibbs on (v, h) for the RBM, the 3-block sampler on (v, h, a) for Model R) for each k of
``1, 3, 10, 30, 100``, and prints one JSON line per model with, for each k: the mean share of
pixels that differ from the starting image, and the share of chains that a logistic regression
(``sample_diversity.reader``) reads as a different class than their starting image.

    python docs/results/chain_mixing.py rbm-pcd-long-m5-lr2-40,rb-2x250-m5-lr2-mf3-equal-time mnist
"""

import json
import sys
from pathlib import Path

from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import load_estimator
from sample_diversity import reader  # the same classifier, in docs/results

SWEEPS = (1, 3, 10, 30, 100)


def main(names, dataset="mnist", n=500, folder=None):
    folder = Path(folder or Path("docs/results") / dataset)
    clf, _ = reader(dataset)
    X, _ = load_dataset(dataset, "test")
    V = binarize(X, "stochastic", random_state=1)[:int(n)]  # (n, 784), the experiment's test binarisation
    start = clf.predict(V)  # (n,)
    for name in names.split(","):
        est = load_estimator(folder / f"{name}_model.npz")
        row = {"model": name, "dataset": dataset, "chains": int(n)}
        for k in SWEEPS:
            v = est.sample(init=V, n_steps=k, random_state=0)  # (n, 784), binary
            row[f"pixels_changed_{k}"] = float((v != V).mean())
            row[f"class_changed_{k}"] = float((clf.predict(v) != start).mean())
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
