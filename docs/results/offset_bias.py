"""How large the pull (5.11) of minibatch offsets is on a trained model, beside its weight decay.

docs/MODEL_RB.md (5.11): where the model is the data's law, a centred step with the offsets
taken from minibatches of B rows (averaged over K updates, (5.10)) has the mean ``-2 Sigma /
(K B)`` in its weights, Sigma (D, H) the covariance of v and p(h = 1 | v) over the data. For
each named model of ``<folder>`` (default ``docs/results/<dataset>``; a name may carry its own
sub-folder) this reads the first ``n`` training images (binarised stochastically with seed 0)
and prints one JSON line with, for the RBM's hidden units or a capsule model's shared capsule
(p(g = 1 | v), (4c.2)):

- ``sigma_abs``: the mean and 5/25/50/75/95% quantiles of |Sigma| over the weights;
- ``pull_abs_mean``: the mean of |2 Sigma / B|, the pull per unit learning rate with minibatch
  offsets (K = 1; divide by K for averaged ones), B the model's ``batch_size``;
- ``decay_abs_mean``: the mean of |weight_decay * W|, the weight decay's pull per unit rate;
- ``pull_over_decay``: the ratio of the two means.

    CAPSNP_DATA_DIR=../shared/data python docs/results/offset_bias.py lr3/equal-time/rbm-pcd-long-m5-lr3-c300-avg mnist 10000
"""

import json
import sys

import numpy as np

from capsnp import model_rs
from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import BernoulliRBM, load_estimator


def covariance(V, P):
    """Sigma (D, H): the covariance over the rows of V (n, D) and P (n, H)."""
    return (V - V.mean(axis=0)).T @ (P - P.mean(axis=0)) / V.shape[0]  # (D, H)


def report(est, V):
    """The JSON record of one estimator on the binary images V (n, 784)."""
    if isinstance(est, BernoulliRBM):
        P, W = est.transform(V), est.components_  # (n, H), (H, D)
    else:
        params = est._params()
        P = model_rs.shared_probability(params, est._checked(V))  # (n, H0) (4c.2)
        W = params.V  # (H0, I, d_v), in the capsule layout of the images below
        V = est._checked(V).reshape(V.shape[0], -1)  # (n, I d_v), the same pixel order as W
    sigma = np.abs(covariance(V, P))  # (D, H)
    pull = 2.0 * sigma.mean() / int(est.batch_size)
    decay = float(est.weight_decay) * np.abs(W).mean()
    return {"sigma_abs": {"mean": round(float(sigma.mean()), 5),
                          "quantiles": [round(float(x), 5) for x in
                                        np.quantile(sigma, [0.05, 0.25, 0.5, 0.75, 0.95])]},
            "batch_size": int(est.batch_size), "pull_abs_mean": float(f"{pull:.3g}"),
            "decay_abs_mean": float(f"{decay:.3g}"),
            "pull_over_decay": round(pull / decay, 1) if decay else None}


def main(names, dataset="mnist", n=10000, folder=None):
    folder = folder or f"docs/results/{dataset}"
    X, _ = load_dataset(dataset, "train")
    V = binarize(X[:int(n)], "stochastic", random_state=0)  # (n, 784)
    for name in names.split(","):
        est = load_estimator(f"{folder}/{name}_model.npz")
        print(json.dumps({"model": name, "dataset": dataset, "images": int(n), **report(est, V)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
