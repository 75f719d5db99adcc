"""Where a trained Model R's persistent chains route their patches.

Loads ``<folder>/<name>_model.npz`` (default folder ``docs/results/<dataset>``), starts the
3-block Gibbs sampler (4.7) at the saved persistent chains (routes from their mean-field
routing) and runs ``sweeps`` sweeps; prints one JSON line with the share of the chains' patches
routed to each parent, averaged over the sweeps, and the largest share of the last parent seen
in one sweep. Mass that the chains never route to is mass the training gradient never sees.

    python docs/results/chain_routing.py rt-2x500-pin6-slowc-40 mnist 300
"""

import json
import sys
from pathlib import Path

import numpy as np

from capsnp import kernels
from capsnp.capsules import to_capsules
from capsnp.estimators import load_estimator


def main(name, dataset="mnist", sweeps=300, folder=None):
    folder = Path(folder or Path("docs/results") / dataset)
    est = load_estimator(folder / f"{name}_model.npz")
    params = est._params()
    v = to_capsules(est.persistent_chains_, est.image_shape_, est.patch_)  # (n, I, d_v)
    c, _, _ = kernels.model_r.mean_field(params, v)  # (n, I, J)
    a = c.argmax(axis=2)  # (n, I)
    J = c.shape[2]
    rng = np.random.default_rng(0)
    shares = []
    for _ in range(int(sweeps)):
        v, _, a, _ = kernels.model_r.gibbs_sweep(params, v, a, rng)
        shares.append(np.bincount(a.ravel(), minlength=J) / a.size)  # (J,)
    shares = np.array(shares)  # (sweeps, J)
    print(json.dumps({"model": name, "dataset": dataset, "sweeps": int(sweeps), "chains": int(v.shape[0]),
                      "patch_share_per_parent": [round(float(x), 5) for x in shares.mean(axis=0)],
                      "largest_share_of_last_parent": round(float(shares[:, -1].max()), 5)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
