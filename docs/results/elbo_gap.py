"""How far the mean-field bound of a trained Model R lies below its log-probability.

Loads ``<folder>/<name>_model.npz`` (default folder ``docs/results/<dataset>``), and on the
first ``n`` test images (binarised with the experiment's seed) computes the mean-field bound
``L(v; c)`` (``mean_field_elbo``, the bound the mean-field data statistics (4.8) climb) and an
importance-sampling estimate of ``log p~(v)`` (4.10, ``model_r.log_marginal_is`` with 100 routings
drawn from c). It prints one JSON line with their means, the mean and quantiles of the gap
``log p~(v) - L(v; c) >= 0`` (nats per image), the mean importance-sampling standard error, and
how decisive the routing of patches with ink is (mean of ``max_j c_ij``).

Training on mean-field data statistics follows the gradient of ``L(v) - log Z``, not of
``log p(v)``: it gains both by raising ``log p(v)`` and by shrinking the gap, that is by making
the routing posterior one that the factorised mean field fits (decisive). A gap near zero on a
trained model is what that bias leads to.

    python docs/results/elbo_gap.py rt-2x500-rbm-40 mnist [n] [folder]
"""

import json
import sys
from pathlib import Path

import numpy as np

from capsnp import kernels
from capsnp import model_r
from capsnp.capsules import to_capsules
from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import load_estimator, mean_field_elbo


def main(name, dataset="mnist", n=1000, folder=None):
    n = int(n)
    folder = Path(folder or Path("docs/results") / dataset)
    est = load_estimator(folder / f"{name}_model.npz")
    X, _ = load_dataset(dataset, "test")
    V = binarize(X[:n], "stochastic", random_state=1)  # the experiment's test binarisation
    v = to_capsules(V, est.image_shape_, est.patch_)  # (n, I, d_v)
    params = est._params()
    rng = np.random.default_rng(0)
    elbo, log_p, se, decisive = [], [], [], []
    for s in range(0, n, 100):
        vb = v[s:s + 100]  # (b, I, d_v)
        c, _, _ = kernels.model_r.mean_field(params, vb, tol=est.routing_tol, max_iter=est.max_routing)
        elbo.append(mean_field_elbo(params, vb, c))  # (b,)
        lp, e = model_r.log_marginal_is(params, vb, 100, rng, c=c)  # (b,), (b,)
        log_p.append(lp)
        se.append(e)
        ink = vb.sum(axis=2) > 0  # (b, I)
        decisive.append(c.max(axis=2)[ink])
    elbo, log_p, se = (np.concatenate(x) for x in (elbo, log_p, se))
    gap = log_p - elbo  # (n,)
    print(json.dumps({
        "model": name, "dataset": dataset, "images": n,
        "mean_elbo": round(float(elbo.mean()), 3), "mean_log_p_unnormalised": round(float(log_p.mean()), 3),
        "mean_gap": round(float(gap.mean()), 4),
        "gap_quantiles_10_50_90": [round(float(q), 4) for q in np.quantile(gap, [0.1, 0.5, 0.9])],
        "mean_is_se": round(float(se.mean()), 4),
        "decisiveness_on_patches_with_ink": round(float(np.concatenate(decisive).mean()), 4),
    }), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
