"""Training cost per epoch of trained models, measured side by side in one process.

``epoch_cost.py`` times the first epoch of a fresh model, whose routing converges in fewer
mean-field iterations (3 to 5) than a trained one's (6 to 7), so it understates what routing
costs late in training. This script loads trained models (``<name>_model.npz`` in
docs/results/<dataset>), optionally changes settings that do not touch the parameters
(``name:max_routing=3``, ``name:routing_tol=0.01``), and times one more epoch
(:meth:`partial_fit`) on the same ``n`` binarised training images, alternating the models
``repeats`` times and reloading each one every time. It prints the median seconds per
60,000-image epoch and each model's ratio to the first one as one JSON line.

    CAPSNP_DATA_DIR=../shared/data python docs/results/trained_epoch_cost.py \
        rbm-pcd-long-m5-lr2-40,rb-2x250-m5-lr2-equal-time,rb-2x250-m5-lr2-equal-time:max_routing=3 6000 3
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import load_estimator


def parse_spec(spec):
    """``"name:key=value:..."`` -> (name, {key: value}), values read as int, else float."""
    name, *settings = spec.split(":")
    overrides = {}
    for s in settings:
        key, value = s.split("=")
        overrides[key] = int(value) if value.lstrip("-").isdigit() else float(value)
    return name, overrides


def main(specs, n=6000, repeats=3, dataset="mnist"):
    specs, n, repeats = specs.split(","), int(n), int(repeats)
    folder = Path("docs/results") / dataset
    X, _ = load_dataset(dataset, "train")
    V = binarize(X[:n], "stochastic", random_state=0)  # (n, 784)

    def trained(spec):
        name, overrides = parse_spec(spec)
        est = load_estimator(folder / f"{name}_model.npz")
        return est.set_params(verbose=0, **overrides)

    for spec in specs:  # compile the kernels before timing
        trained(spec).partial_fit(V[:300])
    seconds = {spec: [] for spec in specs}
    for _ in range(repeats):
        for spec in specs:
            est = trained(spec)
            t0 = time.perf_counter()
            est.partial_fit(V)
            seconds[spec].append((time.perf_counter() - t0) * 60000 / n)
    median = {spec: float(np.median(s)) for spec, s in seconds.items()}
    print(json.dumps({"dataset": dataset, "images": n, "repeats": repeats, "trained": True,
                      "seconds_per_60k_epoch": {k: round(v, 2) for k, v in median.items()},
                      "ratio_to_first": {k: round(v / median[specs[0]], 2) for k, v in median.items()}}),
          flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
