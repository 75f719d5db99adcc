"""Tests of capsnp.datasets: IDX parsing, file lookup, simulated downloads, binarisation.

No test touches the network or ~/.cache: an autouse fixture points the cache at a temporary
directory and replaces the downloader by one that fails the test if it is called. Tests that
need the official files use the offline copies in ``CAPSNP_DATA_DIR`` (as set when pytest
starts) or in the ``shared/data`` folder beside the repository, and are skipped without them.
"""

import gzip
import hashlib
import http.client
import io
import os
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capsnp import datasets
from capsnp.datasets import (
    ChecksumError,
    DatasetNotFoundError,
    binarize,
    load_dataset,
    load_embedded,
    load_fashion_mnist,
    load_mnist,
    read_idx,
    to_unit_interval,
)

# Read once at import, before the autouse fixture clears the variable.
SHARED_DATA = Path(os.environ.get("CAPSNP_DATA_DIR")
                   or Path(__file__).resolve().parents[2] / "shared" / "data")
HAVE_SHARED = (SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
needs_shared = pytest.mark.skipif(
    not HAVE_SHARED,
    reason=f"official MNIST files not found in {SHARED_DATA} (set CAPSNP_DATA_DIR to a folder "
           f"holding mnist/*-ubyte.gz)",
)

MNIST_SHA256 = datasets._DATASETS["mnist"]["sha256"]
MNIST_MIRRORS = datasets._DATASETS["mnist"]["mirrors"]


def idx_bytes(array):
    """Hand-built IDX file of a uint8 array: 0, 0, 0x08, ndim, big-endian uint32 dims, data."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


def files_in(directory):
    """All files below ``directory`` (temporary ones included), as sorted relative paths."""
    return sorted(str(p.relative_to(directory)) for p in Path(directory).rglob("*") if p.is_file())


def refuse_network(url, timeout=None):
    raise AssertionError(f"test tried to use the network: {url}")


class FakeMirrors:
    """Stand-in for ``urlopen``: ``serve(url)`` returns the payload bytes or raises."""

    def __init__(self, serve):
        self.serve = serve
        self.urls = []

    def __call__(self, url, timeout=None):
        self.urls.append(url)
        return io.BytesIO(self.serve(url))


def official_gz(url):
    """Serve the offline copy of the file named at the end of ``url``."""
    return (SHARED_DATA / "mnist" / url.rsplit("/", 1)[1]).read_bytes()


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No CAPSNP_DATA_DIR, a temporary cache, and no network unless a test provides one."""
    monkeypatch.delenv("CAPSNP_DATA_DIR", raising=False)
    monkeypatch.setenv("CAPSNP_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.setattr(datasets, "_urlopen", refuse_network)


# ----------------------------------------------------------------------------------------------
# IDX format


def test_read_idx_hand_built_file(tmp_path):
    expected = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(expected)
    assert data[:4] == b"\x00\x00\x08\x03"
    assert data[4:8] == b"\x00\x00\x00\x02"  # big-endian first dimension

    for source in (data, bytearray(data), gzip.compress(data)):
        out = read_idx(source)
        assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
        np.testing.assert_array_equal(out, expected)
    out[0, 0, 0] = 99  # an ordinary writable array, not a view of the bytes

    (tmp_path / "a-idx3-ubyte").write_bytes(data)
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(data))
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte"), expected)
    np.testing.assert_array_equal(read_idx(str(tmp_path / "a-idx3-ubyte.gz")), expected)


def test_read_idx_labels_and_large_dimension():
    labels = np.arange(300) % 10  # 300 > 255: the dimension needs more than one byte
    out = read_idx(idx_bytes(labels))
    assert out.shape == (300,)
    np.testing.assert_array_equal(out, labels)


GOOD = idx_bytes(np.arange(6).reshape(2, 3))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00\x00", "too short"),
        (b"\x01" + GOOD[1:], "bad IDX magic"),
        (b"\x00\x01" + GOOD[2:], "bad IDX magic"),
        (GOOD[:2] + b"\x0d" + GOOD[3:], r"0x0d \(float32\)"),
        (GOOD[:2] + b"\x0c" + GOOD[3:], "only 0x08"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (GOOD[:9], "truncated IDX header"),
        (GOOD[:-1], "truncated IDX data"),
        (GOOD[:12], "truncated IDX data"),
        (GOOD + b"\x00", "unexpected bytes"),
        (gzip.compress(GOOD)[:-5], "broken gzip"),
    ],
)
def test_read_idx_errors(data, message):
    with pytest.raises(ValueError, match=message):
        read_idx(data)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=4), st.integers(0, 2**32 - 1))
def test_read_idx_round_trip(shape, seed):
    array = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    out = read_idx(idx_bytes(array))
    assert out.shape == tuple(shape)
    np.testing.assert_array_equal(out, array)


# ----------------------------------------------------------------------------------------------
# Lookup through CAPSNP_DATA_DIR and the cache


@needs_shared
def test_full_mnist_from_data_dir(monkeypatch):
    monkeypatch.setenv("CAPSNP_DATA_DIR", str(SHARED_DATA))
    X, y = load_mnist("test")
    assert X.shape == (10000, 784) and X.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert y[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

    X, y = load_mnist("train")
    assert X.shape == (60000, 784) and X.dtype == np.uint8
    assert y.shape == (60000,) and y.dtype == np.uint8
    assert y[:5].tolist() == [5, 0, 4, 1, 9]
    assert 0 < X.mean() < 255 and X.max() == 255

    # The loader checked each file; check the table itself against the offline copies.
    for name, digest in MNIST_SHA256.items():
        data = gzip.decompress((SHARED_DATA / "mnist" / (name + ".gz")).read_bytes())
        assert hashlib.sha256(data).hexdigest() == digest


@needs_shared
def test_fashion_mnist_and_load_dataset(monkeypatch):
    if not (SHARED_DATA / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST files not found in {SHARED_DATA / 'fashion-mnist'}")
    monkeypatch.setenv("CAPSNP_DATA_DIR", str(SHARED_DATA))
    X, y = load_fashion_mnist("test")
    assert X.shape == (10000, 784) and X.dtype == np.uint8 and y.shape == (10000,)
    assert y[:3].tolist() == [9, 2, 1]
    X2 = load_dataset("fashion-mnist", "test", return_labels=False)
    np.testing.assert_array_equal(X2, X)


@needs_shared
def test_flat_uncompressed_data_dir(monkeypatch, tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        gz = (SHARED_DATA / "mnist" / (name + ".gz")).read_bytes()
        (tmp_path / name).write_bytes(gzip.decompress(gz))
    monkeypatch.setenv("CAPSNP_DATA_DIR", str(tmp_path))
    X, y = load_mnist("test")
    monkeypatch.setenv("CAPSNP_DATA_DIR", str(SHARED_DATA))
    X_ref, y_ref = load_mnist("test")
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_array_equal(y, y_ref)


@needs_shared
def test_cache_dir_is_used(tmp_path):
    cache = tmp_path / "cache"
    (cache / "mnist").mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(SHARED_DATA / "mnist" / (name + ".gz"), cache / "mnist")
    X, y = load_mnist("test", data_home=cache)  # the network is refused by the fixture
    assert X.shape == (10000, 784) and y[0] == 7


@needs_shared
def test_corrupted_local_file_is_refused(monkeypatch, tmp_path):
    (tmp_path / "mnist").mkdir()
    shutil.copy(SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz", tmp_path / "mnist")
    labels = bytearray(gzip.decompress(
        (SHARED_DATA / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    labels[-1] = (labels[-1] + 1) % 10  # one wrong label
    bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(bytes(labels)))
    monkeypatch.setenv("CAPSNP_DATA_DIR", str(tmp_path))

    with pytest.raises(ChecksumError) as info:
        load_mnist("test")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(bad) in message
    assert MNIST_SHA256["t10k-labels-idx1-ubyte"] in message
    assert hashlib.sha256(bytes(labels)).hexdigest() in message


# ----------------------------------------------------------------------------------------------
# Simulated downloads


@needs_shared
def test_download_success_then_cached(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    mirrors = FakeMirrors(official_gz)
    monkeypatch.setattr(datasets, "_urlopen", mirrors)
    X, y = load_mnist("test", data_home=cache)
    assert X.shape == (10000, 784) and y[0] == 7
    assert mirrors.urls == [MNIST_MIRRORS[0] + "t10k-images-idx3-ubyte.gz",
                            MNIST_MIRRORS[0] + "t10k-labels-idx1-ubyte.gz"]
    assert files_in(cache) == ["mnist/t10k-images-idx3-ubyte.gz",
                               "mnist/t10k-labels-idx1-ubyte.gz"]

    monkeypatch.setattr(datasets, "_urlopen", refuse_network)
    X2, y2 = load_mnist("test", data_home=cache)
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)


@needs_shared
def test_download_falls_back_to_next_mirror(monkeypatch, tmp_path):
    def serve(url):
        if url.startswith(MNIST_MIRRORS[0]):
            raise urllib.error.URLError("connection refused")
        if url.startswith(MNIST_MIRRORS[1]):
            raise http.client.IncompleteRead(b"partial")
        return official_gz(url)

    mirrors = FakeMirrors(serve)
    monkeypatch.setattr(datasets, "_urlopen", mirrors)
    # The cache directory comes from CAPSNP_CACHE_DIR here.
    monkeypatch.setenv("CAPSNP_CACHE_DIR", str(tmp_path / "env-cache"))
    X = load_mnist("test", return_labels=False)
    assert X.shape == (10000, 784)
    assert mirrors.urls == [m + "t10k-images-idx3-ubyte.gz" for m in MNIST_MIRRORS]
    assert files_in(tmp_path / "env-cache") == ["mnist/t10k-images-idx3-ubyte.gz"]


@pytest.mark.parametrize("payload", ["wrong content", "truncated gzip", "not gzip"])
def test_download_with_bad_data_leaves_nothing(monkeypatch, tmp_path, payload):
    wrong = idx_bytes(np.zeros((3, 28, 28)))
    served = {"wrong content": gzip.compress(wrong),
              "truncated gzip": gzip.compress(wrong)[:-10],
              "not gzip": b"<html>captive portal</html>"}[payload]
    mirrors = FakeMirrors(lambda url: served)
    monkeypatch.setattr(datasets, "_urlopen", mirrors)
    cache = tmp_path / "cache"

    with pytest.raises(ChecksumError) as info:
        load_mnist("test", data_home=cache)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "t10k-images-idx3-ubyte" in message
    assert len(mirrors.urls) == len(MNIST_MIRRORS)  # every mirror was tried
    for url in mirrors.urls:
        assert url in message
    if payload == "wrong content":
        assert MNIST_SHA256["t10k-images-idx3-ubyte"] in message
        assert hashlib.sha256(wrong).hexdigest() in message
    assert files_in(tmp_path) == []  # no partial, temporary or unverified file anywhere


@needs_shared
def test_download_write_failure_leaves_no_temp_file(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "_urlopen", FakeMirrors(official_gz))

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        load_mnist("test", data_home=tmp_path / "cache")
    assert files_in(tmp_path) == []


def test_all_mirrors_failing(monkeypatch, tmp_path):
    def serve(url):
        raise urllib.error.URLError("no route to host")

    mirrors = FakeMirrors(serve)
    monkeypatch.setattr(datasets, "_urlopen", mirrors)
    data_dir = tmp_path / "empty-data-dir"
    data_dir.mkdir()
    monkeypatch.setenv("CAPSNP_DATA_DIR", str(data_dir))
    cache = tmp_path / "cache"

    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist("train", data_home=cache)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message
    assert str(data_dir / "mnist" / "train-images-idx3-ubyte.gz") in message
    assert str(cache / "mnist" / "train-images-idx3-ubyte.gz") in message
    for mirror in MNIST_MIRRORS:
        assert mirror + "train-images-idx3-ubyte.gz" in message
    assert "no route to host" in message
    assert "CAPSNP_DATA_DIR" in message and "internet" in message and "load_embedded" in message
    assert files_in(tmp_path) == []


def test_download_disabled(tmp_path):
    # The fixture's opener fails the test if it is called.
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist("test", data_home=tmp_path, download=False)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte" in message
    assert "CAPSNP_DATA_DIR: not set" in message
    assert "download=False" in message


def test_bad_names():
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="split"):
        load_embedded("valid")


# ----------------------------------------------------------------------------------------------
# Embedded subset


def test_embedded_loads_without_network_or_files(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPSNP_DATA_DIR", str(tmp_path / "does-not-exist"))
    X, y = load_embedded()
    assert X.shape == (10000, 784) and X.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.uint8
    X, y = load_dataset("embedded", "test")
    assert X.shape == (2000, 784) and X.dtype == np.uint8
    assert y.shape == (2000,) and y.dtype == np.uint8
    assert set(np.unique(y).tolist()) == set(range(10))
    assert X.max() == 255 and X.min() == 0

    assert datasets.EMBEDDED_PATH.stat().st_size < 10 * 2**20
    with np.load(datasets.EMBEDDED_PATH, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["x_test", "x_train", "y_test", "y_train"]


@needs_shared
def test_embedded_is_the_first_official_images(monkeypatch):
    monkeypatch.setenv("CAPSNP_DATA_DIR", str(SHARED_DATA))
    X, y = load_mnist("test")
    X_small, y_small = load_embedded("test")
    np.testing.assert_array_equal(X_small, X[:2000])
    np.testing.assert_array_equal(y_small, y[:2000])


# ----------------------------------------------------------------------------------------------
# Binarisation


@pytest.mark.parametrize("g", [0, 1, 37, 128, 200, 254, 255])
def test_stochastic_binarize_mean(g):
    X = np.full((200, 784), g, dtype=np.uint8)
    B = binarize(X, random_state=g)
    assert B.dtype == np.float64 and B.shape == X.shape
    assert set(np.unique(B).tolist()) <= {0.0, 1.0}
    p, n = g / 255, X.size
    standard_error = np.sqrt(p * (1 - p) / n)  # zero for g = 0 and g = 255: exact
    assert abs(B.mean() - p) <= 5 * standard_error


def test_stochastic_binarize_per_pixel_probability():
    levels = np.arange(0, 256, 15, dtype=np.uint8)  # one grey level per column
    X = np.tile(levels, (20000, 1))
    column_means = binarize(X, random_state=1).mean(axis=0)
    p = levels / 255
    standard_error = np.sqrt(p * (1 - p) / X.shape[0])
    assert np.all(np.abs(column_means - p) <= 5 * standard_error)


def test_binarize_reproducible_and_draw_order():
    X = np.random.default_rng(0).integers(0, 256, size=(50, 784), dtype=np.uint8)
    X_copy = X.copy()
    state = np.random.get_state()[1].copy()

    np.testing.assert_array_equal(binarize(X, random_state=3), binarize(X, random_state=3))
    assert not np.array_equal(binarize(X, random_state=3), binarize(X, random_state=4))
    # One call rng.random(X.shape); pixel is 1 where the uniform is below g/255.
    expected = np.random.default_rng(3).random(X.shape) < X / 255
    np.testing.assert_array_equal(binarize(X, random_state=3), expected)
    # A Generator is used directly, and floats in [0, 1] give the same draws.
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(binarize(X / 255, random_state=rng), expected)
    assert not np.array_equal(binarize(X, random_state=rng), expected)  # rng has advanced

    np.testing.assert_array_equal(X, X_copy)  # input untouched
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # global state untouched


def test_threshold_binarize_and_dtype():
    X = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(binarize(X, "threshold"), [[0.0, 0.0, 1.0, 1.0]])
    B = binarize(np.array([0.2, 0.5, 0.51, 1.0]), method="threshold", dtype=np.uint8)
    assert B.dtype == np.uint8
    np.testing.assert_array_equal(B, [0, 0, 1, 1])
    assert binarize(X, dtype=np.float32).dtype == np.float32


def test_to_unit_interval_and_input_checks():
    X = np.array([0, 51, 255], dtype=np.uint8)
    np.testing.assert_allclose(to_unit_interval(X), [0.0, 0.2, 1.0])
    assert to_unit_interval(X, dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="method"):
        binarize(X, method="otsu")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binarize(np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_unit_interval(np.array([np.nan]))
    with pytest.raises(ValueError, match="0..255"):
        to_unit_interval(np.array([300]))
