"""Build the small MNIST subset shipped with capsnp, and its README.

Run from a source checkout, with the official IDX files available (see ``capsnp.datasets`` for
where they are looked for)::

    CAPSNP_DATA_DIR=/path/to/data python -m capsnp._make_embedded

It writes

* ``capsnp/data/mnist_small.npz``: the first 10,000 official training images and the first
  2,000 official test images with their labels, unchanged, as arrays ``x_train`` (10000, 784)
  uint8, ``y_train`` (10000,) uint8, ``x_test`` (2000, 784) uint8, ``y_test`` (2000,) uint8,
  compressed with ``np.savez_compressed``;
* ``data/README.md``: license, attribution, provenance and checksums.

The npz bytes are reproducible with the same NumPy and zlib versions (``np.savez`` gives every
zip member the fixed timestamp 1980-01-01); the SHA-256 of each array, also listed in the
README, does not depend on them.
"""

import argparse
import hashlib
import io
from pathlib import Path

import numpy as np

from .datasets import EMBEDDED_PATH, load_mnist
from .io import atomic_write_bytes

N_TRAIN = 10_000
N_TEST = 2_000
README_PATH = Path(__file__).resolve().parent.parent / "data" / "README.md"

_README = """\
# Embedded data: a small MNIST subset

`capsnp.datasets.load_embedded()` (dataset name `"embedded"`) returns a small part of MNIST that
ships with the package, so that examples, lessons and tests run without downloading anything.

## Where the file lives

The file is package data: **`capsnp/data/mnist_small.npz`** (declared in `pyproject.toml` under
`[tool.setuptools.package-data]`). The loader finds it relative to the package
(`Path(capsnp.datasets.__file__).parent / "data"`), so the same code works from a source
checkout and from an installed copy. This folder (`data/` at the top of the repository) only
holds this README.

## Contents

| array | shape | dtype | what |
|---|---|---|---|
| `x_train` | ({n_train}, 784) | uint8 | the first {n_train:,} images of the official MNIST training set (`train-images-idx3-ubyte`) |
| `y_train` | ({n_train},) | uint8 | their labels (`train-labels-idx1-ubyte`) |
| `x_test` | ({n_test}, 784) | uint8 | the first {n_test:,} images of the official MNIST test set (`t10k-images-idx3-ubyte`) |
| `y_test` | ({n_test},) | uint8 | their labels (`t10k-labels-idx1-ubyte`) |

Images are 28x28 grey levels 0..255, flattened row-major, exactly as in the official IDX files
(no resampling, normalisation or binarisation). Number of images per label 0..9:

* train: {train_counts}
* test: {test_counts}

## License and attribution

MNIST: Yann LeCun, Corinna Cortes and Christopher J. C. Burges, *The MNIST database of
handwritten digits*, http://yann.lecun.com/exdb/mnist/ . The dataset is made available under
the Creative Commons Attribution-Share Alike 3.0 license (CC BY-SA 3.0,
https://creativecommons.org/licenses/by-sa/3.0/). This subset is a verbatim excerpt of it and is
distributed under the same license.

## How it was made

The official IDX files were read with `capsnp.datasets.load_mnist`, which checks the SHA-256 of
each decompressed file against the official one, and the first rows were saved with
`np.savez_compressed`. Command, from the repository root:

    CAPSNP_DATA_DIR=/path/to/data python -m capsnp._make_embedded

## Checksums

SHA-256 of `capsnp/data/mnist_small.npz` ({size:,} bytes):

    {npz_sha256}

Rebuilding with the same NumPy and zlib versions gives the same bytes (the zip members carry a
fixed timestamp); another zlib may compress differently. SHA-256 of each array's raw C-order
bytes, which does not depend on the compression:

{array_table}
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build the embedded MNIST subset.")
    parser.add_argument("--npz", type=Path, default=EMBEDDED_PATH, help="output .npz file")
    parser.add_argument("--readme", type=Path, default=README_PATH, help="output README.md")
    args = parser.parse_args(argv)

    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    arrays = {
        "x_train": x_train[:N_TRAIN],
        "y_train": y_train[:N_TRAIN],
        "x_test": x_test[:N_TEST],
        "y_test": y_test[:N_TEST],
    }

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    npz_bytes = buffer.getvalue()
    args.npz.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.npz, npz_bytes)

    array_table = "\n".join(
        f"    {name:8s} {hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}"
        for name, a in arrays.items()
    )
    readme = _README.format(
        n_train=N_TRAIN,
        n_test=N_TEST,
        train_counts=np.bincount(arrays["y_train"], minlength=10).tolist(),
        test_counts=np.bincount(arrays["y_test"], minlength=10).tolist(),
        size=len(npz_bytes),
        npz_sha256=hashlib.sha256(npz_bytes).hexdigest(),
        array_table=array_table,
    )
    args.readme.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.readme, readme.encode("utf-8"))
    print(f"wrote {args.npz} ({len(npz_bytes):,} bytes) and {args.readme}")


if __name__ == "__main__":
    main()
