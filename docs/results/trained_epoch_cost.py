"""Training cost per epoch of trained models, measured side by side in one process.

``epoch_cost.py`` times the first epoch of a fresh model, whose routing converges in fewer
mean-field iterations (3 to 5) than a trained one's (6 to 7), so it understates what routing
costs late in training. This script loads trained models (``<name>_model.npz`` in
docs/results/<dataset>), optionally changes settings that do not touch the parameters
(``name:max_routing=3``, ``name:routing_tol=0.01``), and times one more epoch
(:meth:`partial_fit`) on the same ``n`` binarised training images, alternating the models
``repeats`` times and reloading each one every time. It prints the median seconds per
60,000-image epoch and each model's ratio to the first one as one JSON line. A name may start
with a subfolder (``seed1/rb-2x250-m5-lr2-mf3-k3-equal-time``) for another seed's model.

    CAPSNP_DATA_DIR=../shared/data python docs/results/trained_epoch_cost.py \
        rbm-pcd-long-m5-lr2-40,rb-2x250-m5-lr2-equal-time,rb-2x250-m5-lr2-equal-time:max_routing=3 6000 3
"""

import json
import sys
from pathlib import Path

from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import load_estimator
from epoch_cost import seconds_of, side_by_side  # the same timing loop, in docs/results


def parse_spec(spec):
    """``"name:key=value:..."`` -> (name, {key: value}), values read as int, else float."""
    name, *settings = spec.split(":")
    overrides = {}
    for s in settings:
        key, value = s.split("=")
        overrides[key] = int(value) if value.lstrip("-").isdigit() else float(value)
    return name, overrides


def trained(dataset, spec):
    """The trained model of ``spec`` (see :func:`parse_spec`) from docs/results/<dataset>, quiet."""
    name, overrides = parse_spec(spec)
    est = load_estimator(Path("docs/results") / dataset / f"{name}_model.npz")
    return est.set_params(verbose=0, **overrides)


def timing_images(dataset, n):
    """The first ``n`` training images, binarised with seed 0: (n, 784)."""
    X, _ = load_dataset(dataset, "train")
    return binarize(X[:n], "stochastic", random_state=0)


def main(specs, n=6000, repeats=3, dataset="mnist"):
    specs, n, repeats = specs.split(","), int(n), int(repeats)
    V = timing_images(dataset, n)  # (n, 784)
    for spec in specs:  # compile the kernels before timing
        trained(dataset, spec).partial_fit(V[:300])
    epochs = {spec: (lambda spec=spec: seconds_of(trained(dataset, spec).partial_fit, V)) for spec in specs}
    print(json.dumps({**side_by_side(epochs, n, repeats, dataset), "trained": True}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
