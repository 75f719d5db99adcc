"""Where a sparsity target (docs/MODEL_RB.md (4b.11)) leaves the hidden units: how often they
fire on held-out images, and which parameters carry their biases.

For each named model of ``<folder>`` (default ``docs/results/<dataset>``; a name may carry its
own sub-folder, ``seed1/name``) it reads the first ``n`` test images (binarised
stochastically with seed 0, as the experiment does) and prints one JSON line:

- ``firing``: the mean over the images of each hidden unit's data-side firing probability
  (the RBM's p(h = 1 | v); the capsule model's mean-field mu), summarised by its mean and its
  5/25/50/75/95% quantiles over the units: the q of (4b.11);
- ``hidden_bias_mean``: the mean hidden bias (the RBM's b, the capsule model's gamma);
- ``routed_C_mean`` (capsule model): the mean over images and hidden units of the prediction
  biases the routing adds to each hidden input, ``sum_i c_ij C_ij``, the second bias a capsule's
  units have;
- ``weight_abs_mean``: the mean absolute weight;
- ``largest_c_mean`` and ``parent_0_share`` (capsule model): the mean largest routing
  coefficient of a patch, and the share of patches given to the first parent.
- ``shared_firing``, ``shared_bias_mean``, ``shared_weight_abs_mean`` (capsule model with a
  shared capsule, docs/MODEL_RB.md (4c.1)): the same three for its units g, whose firing
  probability p(g = 1 | v) (4c.2) is exact.

    CAPSNP_DATA_DIR=../shared/data python docs/results/sparsity_parameters.py rb-2x250-m5-lr2-mf3-c300-sp01-equal-time mnist 1000
"""

import json
import sys

import numpy as np

from capsnp import model_rs
from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import BernoulliRBM, load_estimator
from capsnp.params import RSParams


def summary(q):
    """Mean and 5/25/50/75/95% quantiles of q (n_units,), rounded."""
    return {"mean": round(float(q.mean()), 4),
            "quantiles": [round(float(x), 4) for x in np.quantile(q, [0.05, 0.25, 0.5, 0.75, 0.95])]}


def report(est, V):
    """The JSON record of one estimator on the binary images V (n, 784)."""
    if isinstance(est, BernoulliRBM):
        q = est.transform(V).mean(axis=0)  # (H,)
        return {"firing": summary(q), "hidden_bias_mean": round(float(est.intercept_hidden_.mean()), 4),
                "weight_abs_mean": round(float(np.abs(est.components_).mean()), 4)}
    params = est._params()
    c, mu, _ = est._mean_field(params, est._checked(V))  # (n, I, J), (n, J, d_h)
    out = {"firing": summary(mu.mean(axis=0).ravel()),
           "hidden_bias_mean": round(float(params.gamma.mean()), 4),
           "weight_abs_mean": round(float(np.abs(params.W).mean()), 4),
           "largest_c_mean": round(float(c.max(axis=-1).mean()), 4),
           "parent_0_share": round(float(c[..., 0].mean()), 4)}
    if getattr(params, "C", None) is not None:
        routed = np.einsum("nij,ijk->njk", c, params.C)  # (n, J, d_h)
        out["routed_C_mean"] = round(float(routed.mean()), 4)
    if isinstance(params, RSParams):
        p_g = model_rs.shared_probability(params, est._checked(V))  # (n, H0) (4c.2)
        out.update(shared_firing=summary(p_g.mean(axis=0)),
                   shared_bias_mean=round(float(params.delta.mean()), 4),
                   shared_weight_abs_mean=round(float(np.abs(params.V).mean()), 4))
    return out


def main(names, dataset="mnist", n=1000, folder=None):
    folder = folder or f"docs/results/{dataset}"
    X, _ = load_dataset(dataset, "test")
    V = binarize(X[:int(n)], "stochastic", random_state=0)  # (n, 784)
    for name in names.split(","):
        est = load_estimator(f"{folder}/{name}_model.npz")
        print(json.dumps({"model": name, "dataset": dataset, "images": int(n), **report(est, V)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
