"""What a change costs or saves per training epoch: the working tree against a git revision.

``trained_epoch_cost.py`` compares settings of one code base; a change to the kernels needs the
code before it beside the code after it. This script checks ``rev`` out into a temporary git
worktree and times one more epoch (:meth:`partial_fit`) of each trained model (``<name>_model.npz``
in docs/results/<dataset>, as ``trained_epoch_cost.parse_spec`` reads it) on the same ``n``
binarised training images, once with the revision's ``capsnp`` and once with the working
tree's, in fresh processes alternated ``repeats`` times. Each process compiles (or loads from its
tree's Numba cache) on 300 images before it times the epoch. It prints, per model, the median
seconds per 60,000 images of both and the ratio working tree / revision as one JSON line.
Run it from the repository root with the machine otherwise idle:

    CAPSNP_DATA_DIR=../shared/data python docs/results/revision_epoch_cost.py \
        HEAD rb-2x250-m5-lr2-mf3-c300,rbm-pcd-long-m5-lr2-c300 6000 5
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# One epoch in a fresh process with the capsnp of ``tree`` (the editable install's finder,
# which would map ``capsnp`` to the working tree, is taken off the import path first).
_RUNNER = """
import sys
tree, scripts, spec, dataset, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in (getattr(f, "__module__", "") or "")]
sys.path[:0] = [tree, scripts]
import capsnp
assert capsnp.__file__.startswith(tree), capsnp.__file__
from epoch_cost import seconds_of
from trained_epoch_cost import timing_images, trained
V = timing_images(dataset, n)
trained(dataset, spec).partial_fit(V[:300])  # compile, or load the tree's cache
print(seconds_of(trained(dataset, spec).partial_fit, V))
"""


def epoch_seconds(tree, spec, dataset, n):
    """Seconds of one epoch on ``n`` images of the model ``spec`` (read from docs/results under
    the current directory) with the capsnp in ``tree``; the timing helpers are this folder's."""
    scripts = Path(__file__).resolve().parent
    out = subprocess.run([sys.executable, "-c", _RUNNER, str(tree), str(scripts), spec, dataset, str(n)],
                         check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1])


def main(rev, specs, n=6000, repeats=5, dataset="mnist"):
    n, repeats = int(n), int(repeats)
    here = Path.cwd().resolve()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "rev"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), rev], check=True)
        try:
            for spec in specs.split(","):
                seconds = {rev: [], "working tree": []}
                for _ in range(repeats):
                    for label, tree in ((rev, old), ("working tree", here)):
                        seconds[label].append(epoch_seconds(tree, spec, dataset, n) * 60000 / n)
                median = {k: float(np.median(v)) for k, v in seconds.items()}
                print(json.dumps({"model": spec, "dataset": dataset, "images": n, "repeats": repeats,
                                  "revision": rev, "seconds_per_60k_epoch": {k: round(v, 2) for k, v in median.items()},
                                  "ratio_working_tree_to_revision": round(median["working tree"] / median[rev], 3)}),
                      flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], check=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
