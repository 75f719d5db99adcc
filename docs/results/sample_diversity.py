"""Which classes do fresh chains from noise produce, and how confidently? A classifier's reading.

For each named model of ``<folder>`` (default ``docs/results/<dataset>``) this draws the same
fresh chains as the experiment's sample grid (100 chains from noise, ``sweeps`` sweeps, seed 0,
the probabilities of the next visible draw; binary states for Model P) and reads them with a
multinomial logistic regression fitted on 20,000 binarised training images (test accuracy
printed). Per model it prints one JSON line: the number of samples given to each class, the
entropy of that histogram in units of log 10 (1: all classes equally often; 0: one class), the
number of classes with at least 3 samples, and the share of samples the classifier reads with
probability above 0.9 (a rough stand-in for "a person reads it as that class", not a measure
of quality).

    python docs/results/sample_diversity.py r-2x250-c100,r-1x500-c100 mnist [sweeps] [folder]
"""

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import CapsulePoE, load_estimator


def reader(dataset, n=20000, seed=0):
    """A logistic regression on binarised training images, and its test accuracy."""
    X, y = load_dataset(dataset, "train")
    Xt, yt = load_dataset(dataset, "test")
    clf = LogisticRegression(max_iter=300, C=0.1)
    clf.fit(binarize(X[:n], "stochastic", random_state=seed), y[:n])
    return clf, float(clf.score(binarize(Xt, "stochastic", random_state=seed + 1), yt))


def main(names, dataset="mnist", sweeps=1000, folder=None, n_reader=20000):
    folder = Path(folder or Path("docs/results") / dataset)
    clf, accuracy = reader(dataset, int(n_reader))
    for name in names.split(","):
        est = load_estimator(folder / f"{name}_model.npz")
        X = est.sample(100, n_steps=int(sweeps), init="noise", random_state=0,
                       return_probabilities=not isinstance(est, CapsulePoE))  # (100, D)
        proba = clf.predict_proba(X)  # (100, classes)
        counts = np.bincount(proba.argmax(axis=1), minlength=proba.shape[1])
        share = counts / counts.sum()
        entropy = -np.sum(share[share > 0] * np.log(share[share > 0])) / np.log(proba.shape[1])
        print(json.dumps({"model": name, "dataset": dataset, "sweeps": int(sweeps),
                          "classifier_test_accuracy": round(accuracy, 4),
                          "class_counts": counts.tolist(),
                          "class_entropy": round(float(entropy), 3),
                          "classes_with_3_or_more": int((counts >= 3).sum()),
                          "confident_share": round(float((proba.max(axis=1) > 0.9).mean()), 3)}),
              flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
