"""Where one more training epoch of a trained model spends its time: a cProfile breakdown.

Loads each trained model (``<name>_model.npz`` in docs/results/<dataset>, as
``trained_epoch_cost.parse_spec`` reads it), compiles on 300 images, then profiles one more
epoch (:meth:`partial_fit`) on the same ``n`` binarised training images. It prints one JSON
line per model: the profiled seconds, the ``top`` functions by their own time (the compiled
kernels appear under their Python names) and the seconds spent copying arrays into C-contiguous
layouts (``numpy.ascontiguousarray``, directly or through ``_kernels_jit.as_c``, which is a
no-op for arrays already in layout, a fraction of a microsecond) by the function that asked
for it. Run it with the machine otherwise idle, one thread:

    CAPSNP_DATA_DIR=../shared/data NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
        python docs/results/step_profile.py lr3/equal-time/seed1/rs-400-2x50-m5-lr3-mf3-c300-avg 6000
"""

import cProfile
import json
import pstats
import sys
from pathlib import Path

from trained_epoch_cost import timing_images, trained  # the same loading, in docs/results


def _label(func):
    """``file:line(name)`` of a pstats key with the file's base name (``name`` alone for built-ins)."""
    filename, line, name = func
    return f"{Path(filename).name}:{line}({name})" if line else name


def profile_epoch(dataset, spec, V, top):
    """One more epoch of ``spec`` on V under cProfile: a dict for one JSON line."""
    trained(dataset, spec).partial_fit(V[:300])  # compile, or load the cache
    est = trained(dataset, spec)
    profiler = cProfile.Profile()
    profiler.enable()
    est.partial_fit(V)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # {func: (calls, primitive, own s, cumulative s, callers)}
    total = sum(own for _, _, own, _, _ in stats.values())
    own = sorted(((v[2], v[0], _label(f)) for f, v in stats.items()), reverse=True)[:top]
    copies = {}  # the copy's seconds by asking function, direct calls and calls through as_c summed
    for func, (_, _, _, _, callers) in stats.items():
        if func[2] == "<built-in method numpy.ascontiguousarray>":
            for caller, (_, _, own_s, _) in callers.items():
                if caller[2] != "as_c":
                    copies[_label(caller)] = copies.get(_label(caller), 0.0) + own_s
        elif func[2] == "as_c":
            for caller, (_, _, _, cum_s) in callers.items():
                copies[_label(caller)] = copies.get(_label(caller), 0.0) + cum_s
    return {"model": spec, "dataset": dataset, "images": V.shape[0], "profiled_seconds": round(total, 3),
            "top_own_seconds": [[round(s, 4), int(n), label] for s, n, label in own],
            "contiguous_copies_by_caller": {k: round(v, 6) for k, v in sorted(copies.items(), key=lambda kv: -kv[1]) if v > 0}}


def main(specs, n=6000, dataset="mnist", top=20):
    V = timing_images(dataset, int(n))  # (n, 784)
    for spec in specs.split(","):
        print(json.dumps(profile_epoch(dataset, spec, V, int(top))), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
