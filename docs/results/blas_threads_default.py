"""``blas_threads_cost.py`` for the default ``RoutedCapsuleRBM`` (16 capsules of 8 units).

Times one epoch of a fresh default model on the first ``n`` embedded training images, the old
threading (``blas_threads_cost.as_before``) and the current one alternated ``repeats`` times in
one process, and prints the median seconds as one JSON line. Run it with the machine otherwise
idle and the default threads:

    python docs/results/blas_threads_default.py 5000 4
"""

import contextlib
import json
import sys
import time

import numpy as np

from blas_threads_cost import as_before
from capsnp import RoutedCapsuleRBM, _kernels_jit
from trained_epoch_cost import timing_images


def main(n=5000, repeats=4):
    V = timing_images("embedded", int(n))  # (n, 784)
    RoutedCapsuleRBM(n_iter=1, verbose=0, random_state=0).fit(V[:500])  # compile the kernels
    seconds = {"before": [], "now": []}
    for rep in range(int(repeats)):
        for setting, runs in seconds.items():
            with as_before() if setting == "before" else contextlib.nullcontext():
                start = time.perf_counter()
                RoutedCapsuleRBM(n_iter=1, verbose=0, random_state=rep).fit(V)
                runs.append(time.perf_counter() - start)
    print(json.dumps({"images": int(n), "repeats": int(repeats), "kernel_threads": _kernels_jit.num_threads(),
                      "median_s": {k: round(float(np.median(v)), 3) for k, v in seconds.items()}}))


if __name__ == "__main__":
    main(*sys.argv[1:])
