"""Does the importance sampling over routings (4.10) miss routing-posterior mass?

A capsule row's test log-likelihood is ``log p~(v) - log Z`` with ``log p~(v)`` estimated by
importance sampling over the J**I routings, the proposal being the product of the mean-field
routing c of each image (``RoutedCapsuleRBM.log_likelihood``, 100 draws). The estimate is
unbiased in ``p~(v)`` for any proposal that covers the posterior, but a routing posterior with
several modes, of which the mean field finds one, is covered in name only: the other modes are
(almost) never drawn, their mass is missing, and the per-image standard errors do not show it.

This loads ``<folder>/<name>_model.npz`` (default folder ``docs/results/<dataset>``) and, on the
first ``n`` test images (binarised as the experiment binarises them, ``random_state = seed + 1``),
estimates ``log p~(v)`` with six proposals, from ``np.random.default_rng(0)`` but the last:

- ``training``: the routing the model trains and is scored with (its ``max_routing``,
  ``routing_tol``, ``routing_damping``), 100 draws: the estimator of the reported row;
- ``training_S``: the same routing, ``S`` draws;
- ``converged``: the mean field run to a fixed point from the same start (damping 0.5,
  tolerance 1e-8, up to 500 updates), ``S`` draws;
- ``multi_start``: the equal-weight mixture of the fixed points reached from ``K`` starts (the
  default start and K - 1 routings drawn uniformly from the simplex of each patch),
  ``q(a) = (1/K) sum_k prod_i c^k_{i a_i}``, ``S`` draws;
- ``widened``: the training routing mixed with the uniform routing on every patch,
  ``(1 - eps) c + eps / J`` with eps = 0.2, ``S`` draws (a broad proposal around it);
- ``multi_start_stratified``: the same K fixed points, drawn in turn (``S/K`` draws from each,
  ``model_r.log_marginal_is``'s default) rather than at random as in ``multi_start``: the same
  expected value with less variance. Its draws come from a generator of their own,
  ``np.random.default_rng(1)``, so that the five proposals above draw what they drew before it
  was added.

It prints one JSON line per proposal: the mean estimate over the images, its mean paired
difference from ``training`` with the standard error of that mean, and the mean per-image
standard error; then one line on the fixed points: how many distinct ones (two differ when some
patch's c differs by more than 0.5) the K starts reach per image, and how often another start's
fixed point has a higher mean-field bound than the default start's (by more than 1e-6 nats).
``log Z`` is the same for every proposal, so a difference in ``log p~(v)`` is the same
difference in the test log-likelihood.

    CAPSNP_DATA_DIR=../shared/data python docs/results/is_proposal_check.py rb-2x250-m5-lr2-mf3-c300-avg mnist 500 docs/results/mnist/epochs200
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from capsnp import kernels
from capsnp import model_r as mr
from capsnp.capsules import to_capsules
from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import load_estimator, mean_field_elbo
from capsnp.ops import softmax


def fixed_point(params, v, start):
    """The mean field (4.6) run from the routing ``start`` (B, I, J) to a fixed point (damping
    0.5, tolerance 1e-8, up to 500 updates): (B, I, J)."""
    return kernels.model_r.mean_field(params, v, tol=1e-8, max_iter=500, damping=0.5,
                                      start=start)[0]


def distinct_count(cs):
    """Distinct fixed points per image among K: (K, B, I, J) -> (B,)."""
    K, B = cs.shape[:2]
    counts = np.zeros(B, dtype=int)
    for b in range(B):
        kept = []
        for k in range(K):
            if all(np.abs(cs[k, b] - c).max() > 0.5 for c in kept):
                kept.append(cs[k, b])
        counts[b] = len(kept)
    return counts


def main(name, dataset="mnist", n=500, folder=None, S=1000, K=8, chunk=100):
    n, S, K, chunk = int(n), int(S), int(K), int(chunk)
    folder = Path(folder or Path("docs/results") / dataset)
    est = load_estimator(folder / f"{name}_model.npz")
    meta = json.loads((folder / f"{name}.json").read_text())
    seed = int(meta.get("params", {}).get("random_state") or 0)  # the run's --seed
    X, _ = load_dataset(dataset, "test")
    V = binarize(X[:n], "stochastic", random_state=seed + 1)  # the experiment's test binarisation
    v_all = to_capsules(V, est.image_shape_, est.patch_)  # (n, I, d_v)
    # the routed part: a shared capsule's term of log p~(v) (4c.5) is exact and the same under
    # every proposal, so it is left out of every line (the differences are unchanged)
    params = est._routed(est._params())
    J = params.W.shape[1]
    rng = np.random.default_rng(0)
    rng_stratified = np.random.default_rng(1)  # the last proposal's own stream
    names = ("training", "training_S", "converged", "multi_start", "widened", "multi_start_stratified")
    est_, se_ = {k: [] for k in names}, {k: [] for k in names}
    distinct, default_not_best = [], []
    t0 = time.perf_counter()
    for s in range(0, n, chunk):
        v = v_all[s:s + chunk]  # (B, I, d_v)
        B, I = v.shape[:2]
        c_train, _, _ = est._mean_field(params, v)  # (B, I, J)
        c_start = softmax(mr.prior_logits(params, v), axis=-1)  # (B, I, J): the default start
        starts = [c_start] + [rng.dirichlet(np.ones(J), size=(B, I)) for _ in range(K - 1)]
        fixed = np.stack([fixed_point(params, v, c0) for c0 in starts])  # (K, B, I, J)
        bounds = np.stack([mean_field_elbo(params, v, c) for c in fixed])  # (K, B)
        distinct.append(distinct_count(fixed))
        default_not_best.append(bounds.max(axis=0) - bounds[0] > 1e-6)  # another start's is higher
        proposals = {"training": (c_train[None], 100), "training_S": (c_train[None], S),  # (4.10)
                     "converged": (fixed[:1], S), "multi_start": (fixed, S),
                     "widened": ((0.8 * c_train + 0.2 / J)[None], S),
                     "multi_start_stratified": (fixed, S)}
        for key in names:
            cs, draws = proposals[key]  # (K, B, I, J), S
            e, se = mr.log_marginal_is(params, v, draws, rng_stratified if key == "multi_start_stratified" else rng,
                                       c=cs if len(cs) > 1 else cs[0], stratified=key != "multi_start")
            est_[key].append(e)
            se_[key].append(se)
    base = np.concatenate(est_["training"])  # (n,)
    for key in names:
        e, se = np.concatenate(est_[key]), np.concatenate(se_[key])
        d = e - base  # (n,)
        print(json.dumps({
            "model": name, "dataset": dataset, "folder": str(folder), "images": n, "proposal": key,
            "draws": 100 if key == "training" else S,
            "mean_log_p_unnormalised": round(float(e.mean()), 4),
            "mean_difference_from_training": round(float(d.mean()), 4),
            "difference_se": round(float(d.std(ddof=1) / np.sqrt(n)), 4),
            "max_difference": round(float(d.max()), 4),
            "mean_is_se": round(float(se.mean()), 4),
        }), flush=True)
    distinct, default_not_best = np.concatenate(distinct), np.concatenate(default_not_best)
    print(json.dumps({
        "model": name, "dataset": dataset, "images": n, "starts": K,
        "mean_distinct_fixed_points": round(float(distinct.mean()), 3),
        "share_with_more_than_one": round(float(np.mean(distinct > 1)), 4),
        "share_default_start_not_best_bound": round(float(default_not_best.mean()), 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
