"""How a trained Model R uses its routing: per image, per patch position, per class.

Loads ``<folder>/<name>_model.npz`` (default folder ``docs/results/<dataset>``), runs mean-field
routing (4.6) on the first ``n`` test images (binarised with the experiment's seed) and prints
one JSON line:

* ``blank_patch_share``: the share of patches with no pixel on; their predictions are zero, so
  their routing posterior is the prior softmax(beta) whatever h is (4.3). Everything below
  counts the other patches, those with ink, each routed to the capsule of its largest c_ij;
* ``decisiveness_on_patches_with_ink``: the mean of ``max_j c_ij`` (1: sure; 1/J: undecided);
* ``image_purity``: per image, the largest share of its patches that go to one capsule,
  averaged (1: the whole image goes to one capsule, so the model acts as a mixture of J RBMs;
  near 1/J: the patches of an image split between capsules);
* ``images_with_all_ink_in_one_capsule``: the share of images with purity 1;
* ``class_share``: per digit or garment class, the share of its patches routed to each capsule;
* ``positional_routing``: the share of ink patches routed to the capsule that takes most of the
  ink at their position (1: routing by position alone; 1/J at worst);
* ``no_data_weight_share``: among the positions where some image has ink, the share of the
  weights W_ij whose pair (child position i, capsule j) receives fewer than 1% of the ink
  patches at position i (``positions_without_ink`` counts the others). The data statistic of
  W_ij is ``c_ij mu_j v_i^T`` (4.8), so such weights learn (almost) only from the chains: with
  routing that follows position rather than content, what they learn is to keep capsule j from
  drawing ink at position i when a chain routes a patch there (``pruned_likelihood.py``
  measures what they are worth);

and writes ``<name>_routing.png``: per capsule, the share of the patches at each position that
are routed to it.

    python docs/results/routing_usage.py r-2x250-c100 mnist [n] [folder]
"""

import json
import sys
from pathlib import Path

import numpy as np

from capsnp import kernels
from capsnp.capsules import from_capsules, to_capsules
from capsnp.datasets import binarize, load_dataset
from capsnp.estimators import load_estimator
from capsnp.plots import image_grid


def routed_ink(est, v):
    """Mean-field routing (4.6) of ``v`` (n, I, d_v) by a fitted Model R, counted on ink patches.

    Under Model R a patch with no pixel on has zero predictions: its routing posterior is
    softmax(beta) whatever h is (4.3), so only patches with ink say how routing is used. (With
    assignment biases, docs/MODEL_RB.md, a blank patch's routing can depend on h.)

    Returns
    -------
    c (n, I, J), mean-field iterations (n,), ink (n, I) bool, onehot (n, I, J) bool (each ink
    patch at the capsule of its largest c_ij), position (I, J): per position, the share of its
    ink patches routed to each capsule.
    """
    params = est._routed(est._params())  # RParams, or RBParams (the routed part of an RSParams)
    c, _, iterations = kernels.model_r.mean_field(params, v, tol=est.routing_tol,
                                                  max_iter=est.max_routing)  # (n, I, J)
    return (c, iterations) + ink_routing(c, v)


def ink_routing(c, v):
    """Routing c (n, I, J) of v (n, I, d_v) counted on ink patches: ink (n, I), onehot (n, I, J), position (I, J)."""
    ink = v.sum(axis=2) > 0  # (n, I)
    onehot = (c.argmax(axis=2)[..., None] == np.arange(c.shape[2])) & ink[..., None]  # (n, I, J)
    position = onehot.sum(axis=0) / np.maximum(ink.sum(axis=0), 1)[:, None]  # (I, J)
    return ink, onehot, position


def positional_routing(ink, position):
    """Share of the ink patches that go to their position's majority capsule: the mean over
    positions of ``max_j position[i, j]``, weighted by each position's ink patches (ink (n, I),
    position (I, J) from :func:`ink_routing`)."""
    counts = ink.sum(axis=0)  # (I,)
    return np.sum(position.max(axis=1) * counts) / max(counts.sum(), 1)


def main(name, dataset="mnist", n=2000, folder=None):
    n = int(n)
    folder = Path(folder or Path("docs/results") / dataset)
    est = load_estimator(folder / f"{name}_model.npz")
    X, y = load_dataset(dataset, "test")
    V = binarize(X[:n], "stochastic", random_state=1)  # the experiment's test binarisation
    y = np.asarray(y[:n])
    v = to_capsules(V, est.image_shape_, est.patch_)  # (n, I, d_v)
    c, iterations, ink, onehot, position = routed_ink(est, v)
    J = c.shape[2]
    per_image = onehot.sum(axis=1) / np.maximum(ink.sum(axis=1), 1)[:, None]  # (n, J)
    classes = {int(k): [round(float(x), 3) for x in onehot[y == k].sum(axis=(0, 1)) / ink[y == k].sum()]
               for k in np.unique(y)}
    report = {
        "model": name, "dataset": dataset, "images": n, "capsules": J,
        "mean_field_iterations": float(np.mean(iterations)),
        "blank_patch_share": round(float(1.0 - ink.mean()), 4),
        "decisiveness_on_patches_with_ink": round(float(c.max(axis=2)[ink].mean()), 4),
        "image_purity": round(float(per_image.max(axis=1).mean()), 4),
        "images_with_all_ink_in_one_capsule": round(float((per_image.max(axis=1) == 1.0).mean()), 4),
        "class_share": classes,
        "positional_routing": round(float(positional_routing(ink, position)), 4),
        "positions_without_ink": int((ink.sum(axis=0) == 0).sum()),
        # every W_ij has d_h * d_v entries, so a share of pairs is a share of weights
        "no_data_weight_share": round(float((position[ink.any(axis=0)] < 0.01).mean()), 4),
        # how much a blank patch's routing depends on the image: the spread over images of
        # c_ij among the blank patches at one position, averaged over positions (0 under
        # Model R, where it is softmax(beta); docs/MODEL_RB.md)
        "blank_patch_routing_spread": round(float(np.mean([
            c[~ink[:, i], i].std(axis=0).max() for i in range(c.shape[1]) if (~ink[:, i]).sum() > 1])), 4),
    }
    print(json.dumps(report), flush=True)
    # one 28x28 map per capsule: the share of each position's patches routed to it
    maps = np.stack([np.repeat(position[:, j:j + 1], v.shape[2], axis=1) for j in range(min(J, 10))])
    images = from_capsules(maps, est.image_shape_, est.patch_)  # (J, H * W)
    image_grid(images, est.image_shape_, min(J, 10), folder / f"{name}_routing.png",
               title="share of the patches with ink at each position routed to capsule 1, 2, ...")


if __name__ == "__main__":
    main(*sys.argv[1:])
