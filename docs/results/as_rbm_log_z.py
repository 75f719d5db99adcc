"""log Z of a one-capsule Model R (J = 1) along the RBM's annealing path.

With J = 1 Model R is a Bernoulli RBM (``model_r.as_rbm``; log Z_R = log Z_rbm + sum_i beta_i0),
so its log Z can also be estimated by AIS on the RBM's path, where the hidden units are summed
out in closed form. The two AIS estimates are independent checks of one number; the RBM path's
weights vary less.

    python docs/results/as_rbm_log_z.py r-1x500-rbm mnist > docs/results/mnist/r-1x500-rbm_as_rbm.jsonl

Prints one JSON line: log Z with its standard error and effective sample size, and the test
log-likelihood computed exactly from the RBM's free energy.

For a model with J > 1 parents, ``parent`` p takes the J = 1 model of parent p alone (W, gamma,
beta, C, A at index p): the RBM the model becomes when every patch is routed to p. The J-parent
model adds the other routings to every p~(v), so its log Z is at least this one's, and the
difference tells how much mass the other routings carry.

    python docs/results/as_rbm_log_z.py rt-2x500-pin6-slowc-40 mnist docs/results/mnist 100 0 0
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from capsnp import model_r, rbm
from capsnp.ais import ais_log_partition, default_betas
from capsnp.capsules import to_capsules
from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import load_estimator


def one_parent(params, p):
    """The J = 1 model of parent p: every per-parent array (W, gamma, beta, C, A) at index p."""
    parent_axis = {"W": 1, "gamma": 0, "beta": 1, "C": 1, "A": 1}
    return type(params)(*(np.take(x, [p], axis=parent_axis[f]) if f in parent_axis else x
                          for f, x in zip(params._fields, params)))


def main(name, dataset="mnist", folder=None, n_runs=100, fast=False, parent=None):
    folder = Path(folder or Path("docs/results") / dataset)
    est = load_estimator(folder / f"{name}_model.npz")
    r_params = est._params() if parent is None else one_parent(est._params(), int(parent))
    params = model_r.as_rbm(r_params)  # visible index i * d_v + l: the capsule order

    def flat(X, seed):  # (n, 784) images -> (n, I d_v) binary, in the RBM's capsule order
        V = binarize(X, "stochastic", random_state=seed)  # the experiment's binarisations
        return to_capsules(V, est.image_shape_, est.patch_).reshape(len(V), -1)

    V_train = flat(load_dataset(dataset, "train")[0], 0)
    V_test = flat(load_dataset(dataset, "test")[0], 1)
    t0 = time.perf_counter()
    fast = str(fast) not in ("False", "0", "")
    res = ais_log_partition(params, n_runs=int(n_runs), betas=default_betas(fast=bool(fast)),
                            random_state=0, base_rate=V_train.mean(axis=0))
    log_z = res.log_z + float(r_params.beta.sum())  # log Z_R = log Z_rbm + sum_i beta_i0
    # log p(v) = log p~_R(v) - log Z_R = (-F_rbm(v) + sum beta) - (log Z_rbm + sum beta)
    ll = -rbm.free_energy(params, V_test) - res.log_z  # (n_test,)
    print(json.dumps({"model": name, "parent": None if parent is None else int(parent), "path": f"RBM (as_rbm), {len(default_betas(fast=bool(fast))):,} "
                      f"temperatures, {int(n_runs)} runs", "log_z": log_z,
                      "log_z_std_error": res.std_error,
                      "ais_effective_sample_size": res.effective_sample_size,
                      "test_log_likelihood": float(ll.mean()),
                      "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
