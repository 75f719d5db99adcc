"""``python -m capsnp bench``: runs the benchmark in the repository's ``bench/`` directory.

The benchmark code is not part of the installed package; this hook finds ``bench/`` beside the
``capsnp`` source directory (a checkout of the repository) and runs :func:`bench.run.main`.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    """Run ``bench.run.main(argv)``; exit code 2 when ``bench/`` is not there."""
    if not (ROOT / "bench" / "run.py").is_file():
        print(f"capsnp bench: error: no bench/run.py in {ROOT}; run it from a checkout of the "
              f"repository", file=sys.stderr)
        return 2
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench.run import main as bench_main

    return bench_main(argv)
