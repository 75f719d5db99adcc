"""Training cost per epoch with and without one BLAS thread beside the kernel threads.

On 2 cores the capsule model trained slower with two threads than with one (docs/results.md
section 18): the compiled kernels share each batch over their threads, and OpenBLAS's threads,
which spin for a while after each product, took cores from them. Training now runs BLAS on one
thread whenever the kernels run on more (``capsnp._kernels_jit.single_threaded_blas``) and
shares the chains' top-down products (one per parent) over the kernel threads
(``capsnp.kernels.model_r.top_down``). This script times one more epoch of trained models
(``<name>_model.npz`` in docs/results/<dataset>; a name may start with ``seed1/`` and end with
settings, ``name:cd_k=1``, as in ``trained_epoch_cost.py``) on the same
``n`` binarised images, in one process, alternating two settings ``repeats`` times:

* ``before``: BLAS keeps its threads during training and the top-down products run as one
  BLAS call (the code as it was, restored by patching those two functions);
* ``now``: the code as it is.

The RBM is not changed (it keeps BLAS's threads), so its two settings time the same code and
show how far the timings move by chance. It prints the median seconds per 60,000-image epoch,
each entry's ratio to the first one, and the kernel threads as one JSON line. Run it with the machine otherwise idle and the default
threads (two on a 2-core machine):

    CAPSNP_DATA_DIR=../shared/data python docs/results/blas_threads_cost.py \
        seed1/rbm-pcd-long-m5-lr2-k3-40:cd_k=1,seed1/rb-2x250-m5-lr2-mf3-k3-equal-time:cd_k=1,rb-2x250-m5-lr2-mf3-c300-equal-time 6000 5
"""

import contextlib
import json
import sys
from unittest import mock

from capsnp import _kernels_jit, _kernels_r
from capsnp import model_r as ref_r
from epoch_cost import seconds_of, side_by_side  # the same timing loop, in docs/results
from trained_epoch_cost import timing_images, trained


def as_before():
    """Patches that restore the old threading: BLAS untouched, top-down fields in one product."""
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(_kernels_jit, "single_threaded_blas", contextlib.nullcontext))
    stack.enter_context(mock.patch.object(_kernels_r, "top_down", ref_r.top_down))
    return stack


def main(names, n=6000, repeats=5, dataset="mnist"):
    names, n, repeats = names.split(","), int(n), int(repeats)
    V = timing_images(dataset, n)  # (n, 784)

    def epoch(name, before):
        with as_before() if before else contextlib.nullcontext():
            return seconds_of(trained(dataset, name).partial_fit, V)

    for name in names:  # compile the kernels before timing
        trained(dataset, name).partial_fit(V[:300])
    epochs = {f"{name} ({setting})": (lambda name=name, b=(setting == "before"): epoch(name, b))
              for name in names for setting in ("before", "now")}
    print(json.dumps({**side_by_side(epochs, n, repeats, dataset), "trained": True,
                      "kernel_threads": _kernels_jit.num_threads()}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
