"""log Z of a one-capsule Model R (J = 1) along the RBM's annealing path.

With J = 1 Model R is a Bernoulli RBM (``model_r.as_rbm``; log Z_R = log Z_rbm + sum_i beta_i0),
so its log Z can also be estimated by AIS on the RBM's path, where the hidden units are summed
out in closed form. The two AIS estimates are independent checks of one number; the RBM path's
weights vary less.

    python docs/results/as_rbm_log_z.py r-1x500-rbm mnist > docs/results/mnist/r-1x500-rbm_as_rbm.jsonl

Prints one JSON line: log Z with its standard error and effective sample size, and the test
log-likelihood computed exactly from the RBM's free energy.
"""

import json
import sys
import time
from pathlib import Path

from capsnp import model_r, rbm
from capsnp.ais import ais_log_partition, default_betas
from capsnp.capsules import to_capsules
from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import load_estimator


def main(name, dataset="mnist", folder=None, n_runs=100, fast=False):
    folder = Path(folder or Path("docs/results") / dataset)
    est = load_estimator(folder / f"{name}_model.npz")
    params = model_r.as_rbm(est._params())  # visible index i * d_v + l: the capsule order

    def flat(X, seed):  # (n, 784) images -> (n, I d_v) binary, in the RBM's capsule order
        V = binarize(X, "stochastic", random_state=seed)  # the experiment's binarisations
        return to_capsules(V, est.image_shape_, est.patch_).reshape(len(V), -1)

    V_train = flat(load_dataset(dataset, "train")[0], 0)
    V_test = flat(load_dataset(dataset, "test")[0], 1)
    t0 = time.perf_counter()
    res = ais_log_partition(params, n_runs=int(n_runs), betas=default_betas(fast=bool(fast)),
                            random_state=0, base_rate=V_train.mean(axis=0))
    log_z = res.log_z + float(est.beta_.sum())  # log Z_R = log Z_rbm + sum_i beta_i0
    ll = -rbm.free_energy(params, V_test) - log_z  # (n_test,)
    print(json.dumps({"model": name, "path": f"RBM (as_rbm), {len(default_betas(fast=bool(fast))):,} "
                      f"temperatures, {int(n_runs)} runs", "log_z": log_z,
                      "log_z_std_error": res.std_error,
                      "ais_effective_sample_size": res.effective_sample_size,
                      "test_log_likelihood": float(ll.mean()),
                      "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
