"""Image data: MNIST and Fashion-MNIST from the official IDX files, and a small embedded subset.

Every loader returns ``(X, y)``: X of shape (n, 784), uint8 grey levels 0..255 (28x28 images
flattened row-major), and y of shape (n,), uint8 class labels 0..9.

Where the IDX files are looked for, in this order:

1. the directory named by the environment variable ``CAPSNP_DATA_DIR``, either in a subfolder
   per dataset (``<dir>/mnist/t10k-images-idx3-ubyte.gz``) or directly (``<dir>/<file>``);
   gzip-compressed (``.gz``) and already decompressed files are both accepted;
2. the cache directory: the ``data_home`` argument, else the environment variable
   ``CAPSNP_CACHE_DIR``, else ``~/.cache/capsnp``; files live in ``<cache>/<dataset>/``;
3. a download from the public mirrors (MNIST: tried in order until one works), saved in the
   cache directory.

Every file, wherever it comes from, is checked against the SHA-256 of the official
DECOMPRESSED bytes (the table below), so a re-compressed copy is accepted and a corrupted one is
not. A mismatch raises :class:`ChecksumError` (a ``ValueError``); a file that cannot be found
anywhere raises :class:`DatasetNotFoundError` (a ``FileNotFoundError``) whose message says where
it looked and how to fix it.

Without the files, :func:`load_embedded` returns a small MNIST subset shipped inside the
package (10,000 training and 2,000 test images, see ``data/README.md``).

The binary experiments use :func:`binarize` (stochastic, as in Salakhutdinov and Murray 2008, or
by threshold) and :func:`to_unit_interval`.
"""

import gzip
import hashlib
import http.client
import logging
import math
import os
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from .io import atomic_write_bytes

__all__ = [
    "ChecksumError",
    "DatasetNotFoundError",
    "EMBEDDED_PATH",
    "read_idx",
    "load_mnist",
    "load_fashion_mnist",
    "load_embedded",
    "load_dataset",
    "binarize",
    "to_unit_interval",
]

logger = logging.getLogger(__name__)

# SHA-256 of the decompressed official files, and the mirrors serving "<mirror><file>.gz".
_DATASETS = {
    "mnist": {
        "sha256": {
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        "mirrors": (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    },
    "fashion-mnist": {
        "sha256": {
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        "mirrors": ("https://storage.googleapis.com/tensorflow/tf-keras-datasets/",),
    },
}

# (images file, labels file) of each split.
_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# The embedded subset is package data, so it is found from a source checkout and when installed.
EMBEDDED_PATH = Path(__file__).resolve().parent / "data" / "mnist_small.npz"

# All downloads go through this name, so tests can replace it to simulate a network.
_urlopen = urllib.request.urlopen
_DOWNLOAD_TIMEOUT = 60.0  # seconds per request

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
              0x0D: "float32", 0x0E: "float64"}


class ChecksumError(ValueError):
    """A data file whose decompressed SHA-256 differs from the official one."""


class DatasetNotFoundError(FileNotFoundError):
    """A data file found neither locally nor on any mirror."""


# ----------------------------------------------------------------------------------------------
# IDX format


def read_idx(source):
    """Parse an IDX file of unsigned bytes (the MNIST format).

    Layout: two zero bytes, a type byte (0x08 = uint8, the only type accepted here), a byte with
    the number of dimensions ``ndim``, one big-endian uint32 per dimension, then the values in
    C order. The data must have exactly ``prod(dims)`` bytes after the header.

    Parameters
    ----------
    source : str, os.PathLike or bytes-like
        A file path, or the file's bytes. Gzip-compressed input (file or bytes) is decompressed.

    Returns
    -------
    ndarray of dtype uint8 and shape ``dims``, e.g. (10000, 28, 28) for MNIST test images.

    Raises
    ------
    ValueError
        For a bad magic number, a type other than 0x08, zero dimensions, a truncated header or
        data, trailing bytes, or broken gzip data.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, where = bytes(source), "IDX data"
    else:
        data, where = Path(source).read_bytes(), str(source)
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, where)
    return _parse_idx(data, where)


def _parse_idx(data, where):
    """:func:`read_idx` on uncompressed bytes; ``where`` names the source in error messages."""
    if len(data) < 4:
        raise ValueError(f"{where}: {len(data)} bytes is too short for an IDX header (4 bytes)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{where}: bad IDX magic number: the first two bytes are "
                         f"0x{data[:2].hex()}, expected 0x0000")
    type_byte, ndim = data[2], data[3]
    if type_byte != 0x08:
        name = _IDX_TYPES.get(type_byte, "unknown type")
        raise ValueError(f"{where}: IDX type byte is 0x{type_byte:02x} ({name}); only 0x08 "
                         f"(unsigned byte) is supported")
    if ndim == 0:
        raise ValueError(f"{where}: IDX header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(f"{where}: truncated IDX header: {ndim} dimensions need {header_size} "
                         f"header bytes, the data has {len(data)}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape)
    actual = len(data) - header_size
    if actual < expected:
        raise ValueError(f"{where}: truncated IDX data: shape {shape} needs {expected} bytes "
                         f"after the header, found {actual}")
    if actual > expected:
        raise ValueError(f"{where}: {actual - expected} unexpected bytes after the IDX data "
                         f"of shape {shape}")
    # frombuffer gives a read-only view of the bytes; the copy is an ordinary writable array.
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape).copy()


def _gunzip(data, where):
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{where}: broken gzip data ({exc})") from exc


# ----------------------------------------------------------------------------------------------
# Finding, checking and downloading the files


def _check_sha256(data, filename, expected, where):
    """Raise :class:`ChecksumError` unless ``sha256(data)`` is ``expected``."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ChecksumError(f"checksum mismatch for {filename} from {where}: expected "
                            f"sha256 {expected} of the decompressed file, got {actual}")


def _read_checked(path, filename, expected):
    """Decompressed, checksum-verified bytes of a local file (gzip-compressed or not)."""
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, path)
    try:
        _check_sha256(data, filename, expected, path)
    except ChecksumError as exc:
        raise ChecksumError(f"{exc}. The file is not used; delete or replace it.") from None
    return data


def _cache_dir(data_home):
    """The cache directory: ``data_home``, else $CAPSNP_CACHE_DIR, else ~/.cache/capsnp."""
    if data_home is not None:
        return Path(data_home).expanduser()
    if os.environ.get("CAPSNP_CACHE_DIR"):
        return Path(os.environ["CAPSNP_CACHE_DIR"]).expanduser()
    return Path.home() / ".cache" / "capsnp"


def _fetch(name, filename, data_home, download):
    """Decompressed, verified bytes of one official file, from the first place that has it.

    Raises
    ------
    ChecksumError
        If a file found locally is corrupted, or if every mirror that answered sent bad data.
    DatasetNotFoundError
        If the file is nowhere to be found.
    """
    expected = _DATASETS[name]["sha256"][filename]
    report = []  # one line per place looked at, for the error message

    # (a) the directory named by CAPSNP_DATA_DIR
    data_dir = os.environ.get("CAPSNP_DATA_DIR")
    if data_dir:
        root = Path(data_dir).expanduser()
        candidates = [root / name / (filename + ".gz"), root / name / filename,
                      root / (filename + ".gz"), root / filename]
        for path in candidates:
            if path.is_file():
                return _read_checked(path, filename, expected)
        report.append(f"CAPSNP_DATA_DIR={data_dir}: none of "
                      + ", ".join(str(p) for p in candidates))
    else:
        report.append("CAPSNP_DATA_DIR: not set")

    # (b) the cache directory
    cache = _cache_dir(data_home)
    candidates = [cache / name / (filename + ".gz"), cache / name / filename]
    for path in candidates:
        if path.is_file():
            return _read_checked(path, filename, expected)
    report.append(f"cache directory {cache}: none of " + ", ".join(str(p) for p in candidates))

    # (c) the public mirrors
    if not download:
        report.append("download: not attempted (download=False)")
    else:
        data, failures, bad_data = _download(name, filename, expected, cache)
        if data is not None:
            return data
        if bad_data:
            raise ChecksumError(f"could not download a valid {filename}; every mirror that "
                                f"answered sent bad data:\n  " + "\n  ".join(failures))
        report.append("download failed:\n    " + "\n    ".join(failures))

    raise DatasetNotFoundError(
        f"{name} file {filename} not found. Looked in:\n  - " + "\n  - ".join(report) + "\n"
        f"To fix this, do one of:\n"
        f"  - set CAPSNP_DATA_DIR to a directory holding the official IDX files, as "
        f"<dir>/{name}/{filename}.gz or <dir>/{filename}[.gz];\n"
        f"  - connect to the internet (the files are then downloaded to {cache});\n"
        f"  - use the small embedded MNIST subset: capsnp.datasets.load_embedded() "
        f"(dataset name 'embedded')."
    )


def _download(name, filename, expected, cache):
    """Try each mirror in turn; save the first valid file in ``<cache>/<name>/``.

    The payload is read into memory and verified (gzip and SHA-256) BEFORE anything is written,
    then written with :func:`capsnp.io.atomic_write_bytes` (temporary file + ``os.replace``), so
    no partial or unverified file is ever left in the cache.

    Returns
    -------
    data : bytes or None
        The decompressed, verified file, or None if every mirror failed.
    failures : list of str
        One line per mirror that failed: its URL and what went wrong.
    bad_data : bool
        True if at least one mirror answered with data that failed the checks.
    """
    failures, bad_data = [], False
    for mirror in _DATASETS[name]["mirrors"]:
        url = mirror + filename + ".gz"
        logger.info("downloading %s", url)
        try:
            with _urlopen(url, timeout=_DOWNLOAD_TIMEOUT) as response:
                payload = response.read()
        except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
            failures.append(f"{url}: {exc}")
            continue
        is_gzip = payload[:2] == _GZIP_MAGIC
        try:
            data = _gunzip(payload, url) if is_gzip else payload
            _check_sha256(data, filename, expected, url)
        except ValueError as exc:  # the message already names the URL
            failures.append(str(exc))
            bad_data = True
            continue
        target = cache / name / (filename + ".gz" if is_gzip else filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, payload)
        return data, failures, bad_data
    return None, failures, bad_data


# ----------------------------------------------------------------------------------------------
# Loaders


def _check_split(split):
    if not isinstance(split, str) or split not in _SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _load_idx_dataset(name, split, data_home, download, return_labels):
    images_file, labels_file = _SPLIT_FILES[_check_split(split)]
    images = _parse_idx(_fetch(name, images_file, data_home, download), images_file)
    if images.ndim != 3:
        raise ValueError(f"{images_file}: expected images of shape (n, rows, cols), "
                         f"got {images.shape}")
    X = images.reshape(images.shape[0], -1)  # (n, 784)
    if not return_labels:
        return X
    y = _parse_idx(_fetch(name, labels_file, data_home, download), labels_file)
    if y.shape != (X.shape[0],):
        raise ValueError(f"{labels_file}: expected labels of shape ({X.shape[0]},), got {y.shape}")
    return X, y


def load_mnist(split="train", *, data_home=None, download=True, return_labels=True):
    """Load MNIST handwritten digits (Y. LeCun, C. Cortes, C. Burges; CC BY-SA 3.0).

    Parameters
    ----------
    split : {"train", "test"}
        60,000 training or 10,000 test images.
    data_home : str or os.PathLike, optional
        Cache directory; default ``$CAPSNP_CACHE_DIR`` or ``~/.cache/capsnp``.
    download : bool
        Whether to download from the public mirrors when no local copy is found.
    return_labels : bool
        If False, return only X (the labels file is then not read).

    Returns
    -------
    X : ndarray of shape (n, 784), uint8 grey levels 0..255
    y : ndarray of shape (n,), uint8 labels 0..9 (only if ``return_labels``)

    Raises
    ------
    ChecksumError
        (a ValueError) if a file found or downloaded is not the official one.
    DatasetNotFoundError
        (a FileNotFoundError) if a file is nowhere to be found; the message lists where.
    """
    return _load_idx_dataset("mnist", split, data_home, download, return_labels)


def load_fashion_mnist(split="train", *, data_home=None, download=True, return_labels=True):
    """Load Fashion-MNIST clothing images (Zalando SE; MIT license).

    Same parameters, return values and errors as :func:`load_mnist`; the files live in the
    ``fashion-mnist`` subfolders.
    """
    return _load_idx_dataset("fashion-mnist", split, data_home, download, return_labels)


def load_embedded(split="train", *, return_labels=True):
    """Load the small MNIST subset shipped with capsnp; needs no files and no network.

    It holds the first 10,000 official training images and the first 2,000 official test
    images, unchanged (``data/README.md`` says how it was made).

    Parameters
    ----------
    split : {"train", "test"}
    return_labels : bool
        If False, return only X.

    Returns
    -------
    X : ndarray of shape (10000, 784) for "train" or (2000, 784) for "test", uint8 0..255
    y : ndarray of shape (n,), uint8 labels 0..9 (only if ``return_labels``)
    """
    split = _check_split(split)
    if not EMBEDDED_PATH.is_file():
        raise FileNotFoundError(f"the embedded data file {EMBEDDED_PATH} is missing; rebuild it "
                                f"with `python -m capsnp._make_embedded` or reinstall capsnp")
    with np.load(EMBEDDED_PATH, allow_pickle=False) as npz:
        X, y = npz[f"x_{split}"], npz[f"y_{split}"]
    if X.dtype != np.uint8 or X.ndim != 2 or X.shape[1] != 784 or y.shape != (X.shape[0],):
        raise ValueError(f"{EMBEDDED_PATH}: unexpected contents (x_{split} {X.dtype} {X.shape}, "
                         f"y_{split} {y.shape})")
    return (X, y) if return_labels else X


def load_dataset(name, split="train", *, data_home=None, download=True, return_labels=True):
    """Load a dataset by name: "mnist", "fashion-mnist" or "embedded".

    ``data_home`` and ``download`` are ignored for "embedded". See :func:`load_mnist` for the
    parameters and return values.
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string ('mnist', 'fashion-mnist' or "
                        f"'embedded'), got {type(name).__name__}")
    key = name.lower().replace("_", "-")
    if key == "embedded":
        return load_embedded(split, return_labels=return_labels)
    if key not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose 'mnist', 'fashion-mnist' or "
                         f"'embedded'")
    return _load_idx_dataset(key, split, data_home, download, return_labels)


# ----------------------------------------------------------------------------------------------
# Preprocessing


def _grey_levels(X):
    """``np.asarray(X)`` for the preprocessing functions; TypeError for sparse or non-numeric."""
    if hasattr(X, "toarray") and hasattr(X, "nnz"):  # a scipy.sparse matrix or array
        raise TypeError(f"expected a dense array of grey levels, got a sparse "
                        f"{type(X).__name__}; convert it with X.toarray()")
    X = np.asarray(X)
    if X.dtype.kind not in "buif":
        raise TypeError(f"expected integer grey levels 0..255 or float grey levels in [0, 1], "
                        f"got dtype {X.dtype}")
    return X


def to_unit_interval(X, dtype=np.float64):
    """Grey levels as floats in [0, 1].

    Parameters
    ----------
    X : ndarray of any shape, e.g. (n, 784)
        Integer grey levels 0..255 (divided by 255), booleans, or floats already in [0, 1]
        (returned as a copy). Not modified.
    dtype : floating dtype of the result

    Returns
    -------
    ndarray of the same shape as X, values in [0, 1].

    Raises
    ------
    TypeError
        For sparse input, a non-numeric X (complex, strings, objects) or a non-float ``dtype``.
    ValueError
        For integers outside 0..255, or floats outside [0, 1] (NaN and infinity included).
    """
    X = _grey_levels(X)
    if np.dtype(dtype).kind != "f":
        raise TypeError(f"dtype must be a floating dtype such as np.float32 or np.float64, "
                        f"got {dtype!r}")
    if X.dtype.kind in "ui":
        if X.size and (X.min() < 0 or X.max() > 255):
            raise ValueError(f"integer grey levels must lie in 0..255, got values in "
                             f"[{X.min()}, {X.max()}]")
        return X.astype(dtype) / 255
    out = X.astype(dtype)  # always a copy
    if out.size and not (np.all(out >= 0) and np.all(out <= 1)):
        problem = ("NaN" if np.isnan(out).any() else
                   f"values in [{np.nanmin(out):g}, {np.nanmax(out):g}]")
        raise ValueError(f"float grey levels must lie in [0, 1], got {problem}; integer grey "
                         f"levels must have an integer dtype (e.g. uint8)")
    return out


def binarize(X, method="stochastic", random_state=0, dtype=np.float64):
    """Binary images from grey levels.

    * ``"stochastic"``: pixel with grey level g becomes 1 with probability g/255, independently
      (the protocol of Salakhutdinov and Murray, 2008). Draws: one call
      ``rng.random(X.shape)``; the pixel is 1 where that uniform is below g/255.
    * ``"threshold"``: 1 where g/255 > 0.5 (g >= 128 for uint8).

    Parameters
    ----------
    X : ndarray of any shape, e.g. (n, 784)
        uint8 (or integer) grey levels 0..255, or floats in [0, 1]. Not modified.
    method : {"stochastic", "threshold"}
    random_state : int, None or numpy.random.Generator
        Seed or generator for ``np.random.default_rng``; a passed Generator is used (and
        advanced) directly. Ignored by "threshold". The global NumPy random state is never used.
    dtype : dtype of the result, default float64
        For the full 60,000-image training set the float64 result takes 376 MB;
        ``np.float32`` or ``np.uint8`` need less.

    Returns
    -------
    ndarray of the same shape as X, values 0 and 1.

    Raises
    ------
    TypeError, ValueError
        As :func:`to_unit_interval` for bad grey levels; ValueError for an unknown method.
    """
    if method not in ("stochastic", "threshold"):
        raise ValueError(f"method must be 'stochastic' or 'threshold', got {method!r}")
    p = to_unit_interval(X)  # probabilities g/255 in float64
    if method == "stochastic":
        rng = np.random.default_rng(random_state)
        bits = rng.random(p.shape) < p
    else:
        bits = p > 0.5
    return bits.astype(dtype)
