"""``blas_threads_cost.py`` for the default ``RoutedCapsuleRBM`` (16 capsules of 8 units).

Times one epoch of a fresh default model on the first ``n`` embedded training images, the old
threading (``blas_threads_cost.as_before``) and the current one alternated ``repeats`` times in
one process, and prints the median seconds per 60,000 images and their ratio as one JSON line.
Run it with the machine otherwise idle and the default threads:

    python docs/results/blas_threads_default.py 5000 4
"""

import contextlib
import json
import sys

from blas_threads_cost import as_before
from capsnp import RoutedCapsuleRBM, _kernels_jit
from epoch_cost import seconds_of, side_by_side  # the same timing loop, in docs/results
from trained_epoch_cost import timing_images


def main(n=5000, repeats=4):
    n, repeats = int(n), int(repeats)
    V = timing_images("embedded", n)  # (n, 784)
    RoutedCapsuleRBM(n_iter=1, verbose=0, random_state=0).fit(V[:500])  # compile the kernels

    def epoch(before):
        with as_before() if before else contextlib.nullcontext():
            return seconds_of(RoutedCapsuleRBM(n_iter=1, verbose=0, random_state=0).fit, V)

    epochs = {"default RoutedCapsuleRBM (before)": lambda: epoch(True),
              "default RoutedCapsuleRBM (now)": lambda: epoch(False)}
    print(json.dumps({**side_by_side(epochs, n, repeats, "embedded"),
                      "kernel_threads": _kernels_jit.num_threads()}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
