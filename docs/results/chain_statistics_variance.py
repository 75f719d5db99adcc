"""How noisy are the capsule model's chain statistics, averaged over a or over h?

The chain side of the capsule model's gradient can take each statistic's conditional
expectation over the routes a given the chain's (v, h) (4.8, ``rao_blackwell="routes"``) or,
for the statistics that involve h, over h given the chain's (v, a) (docs/MODEL_RB.md (4b.10),
``rao_blackwell="hidden"``). Both are unbiased; this measures their noise on a trained model.

It loads ``<folder>/<name>_model.npz`` (a Model R estimator with its persistent chains), runs
``burn`` sweeps from the chains at the saved parameters, then ``rounds`` more; at each of those
it forms both per-chain statistics of the same sweep and records, for every parameter group, the
total variance over chains (the sum over a group's entries of the per-entry variance: what the
mean over n chains divides by n), their ratio, their correlation, and the best mixture
``lam * routes + (1 - lam) * hidden``. The persistent chains of training give one statistic per
update, and successive ones share the chains' slowly moving states; so the script also reports,
for each estimator, the total variance over chains of each chain's mean statistic over the
``rounds`` consecutive sweeps (``routes_window``, ``hidden_window``): the part of the noise that
consecutive updates do not average away. Beside them, ``data``: the total variance over images of
the data side's mean-field statistics (4.8) of as many training images (the estimator's own
patches and routing settings), for the step's other source of noise (divided by the batch size
where the chain ones are divided by the number of chains). One JSON line per model, the rounds'
mean:

    CAPSNP_DATA_DIR=../shared/data python docs/results/chain_statistics_variance.py \\
        rb-2x250-m5-lr2-mf3-c300-equal-time docs/results/mnist > variance.jsonl
"""

import json
import sys
from pathlib import Path

import numpy as np

from capsnp import model_r
from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import load_estimator


def per_chain_statistics(params, v, routes, hidden):
    """Per-chain statistics (n, size) of every parameter group for routes (c, mu) = (resp, h)
    and hidden (c, mu) = (onehot(a), p_h): dicts of name -> (n, size)."""
    out = []
    for c, mu in (routes, hidden):
        n = v.shape[0]
        groups = {"W": np.einsum("bij,bjk,bil->bijkl", c, mu, v, optimize=True).reshape(n, -1),
                  "gamma": mu.reshape(n, -1), "beta": c.reshape(n, -1)}
        if model_r.assignment_biases(params)[0] is not None:
            groups["C"] = (c[..., None] * mu[:, None]).reshape(n, -1)  # (n, I J d_h)
            groups["A"] = (c[..., None] * v[:, :, None]).reshape(n, -1)  # (n, I J d_v)
        out.append(groups)
    return out


def compare(x, y):
    """Total variances over chains of x and y (n, size), their correlation and best mixture."""
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    n = x.shape[0]
    vxx, vyy, vxy = (float(np.sum(a * b)) / (n - 1) for a, b in ((x, x), (y, y), (x, y)))
    lam = (vyy - vxy) / (vxx + vyy - 2 * vxy)
    vmix = lam ** 2 * vxx + (1 - lam) ** 2 * vyy + 2 * lam * (1 - lam) * vxy
    return {"routes": vxx, "hidden": vyy, "ratio": vyy / vxx, "correlation": vxy / np.sqrt(vxx * vyy),
            "best_lambda": lam, "best_ratio": vmix / vxx}


def data_variance(est, params, V):
    """Total variance over the images V (n, D) of each group's mean-field data statistic."""
    v = est._checked(V)  # (n, I, d_v)
    c, mu, _ = est._mean_field(params, v)  # (n, I, J), (n, J, d_h)
    groups = per_chain_statistics(params, v, (c, mu), (c, mu))[0]
    return {k: float(np.sum(x.var(axis=0, ddof=1))) for k, x in groups.items()}


def measure(path, burn, rounds, rng, V=None):
    est = load_estimator(path)
    params = est._params()
    arrays = np.load(path)
    v, a = arrays["chains_v"].astype(params.W.dtype), arrays["chains_a"]  # (n, I, d_v), (n, I)
    J = params.W.shape[1]
    for _ in range(burn):
        v, _, a, _ = model_r.gibbs_sweep(params, v, a, rng)
    rows, sums = [], None
    for _ in range(rounds):
        v_in, a_in = v, a
        v, h, a, resp, p_h = model_r.gibbs_sweep(params, v_in, a_in, rng, return_probability=True)
        onehot = (a_in[..., None] == np.arange(J)).astype(p_h.dtype)  # (n, I, J)
        routes, hidden = per_chain_statistics(params, v_in, (resp, h), (onehot, p_h))
        rows.append({k: compare(routes[k], hidden[k]) for k in routes})
        rows[-1]["largest_resp"] = {"mean": float(resp.max(axis=-1).mean())}
        if sums is None:
            sums = {k: [routes[k].copy(), hidden[k].copy()] for k in routes}  # (n, size) each
        else:
            for k in routes:
                sums[k][0] += routes[k]
                sums[k][1] += hidden[k]
    out = {k: {q: float(np.mean([r[k][q] for r in rows])) for q in rows[0][k]} for k in rows[0]}
    for k, (sum_routes, sum_hidden) in sums.items():  # each chain's mean over the rounds
        window = compare(sum_routes / rounds, sum_hidden / rounds)
        out[k].update(routes_window=window["routes"], hidden_window=window["hidden"], ratio_window=window["ratio"])
    if V is not None:
        for k, x in data_variance(est, params, V[:v.shape[0]]).items():
            out[k]["data"] = x
    return out


def main(names, folder, burn=10, rounds=10, dataset="mnist"):
    X, _ = load_dataset(dataset, "train")
    V = binarize(X[:1000], "stochastic", random_state=0)  # (1000, D)
    for name in names.split(","):
        path = Path(folder) / f"{name}_model.npz"
        row = measure(path, int(burn), int(rounds), np.random.default_rng(0), V)
        print(json.dumps({"model": name, "folder": str(folder), "dataset": dataset, "burn": int(burn),
                          "rounds": int(rounds), **row}),
              flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
