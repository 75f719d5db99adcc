"""Tests of capsnp.io: exact round trips, atomic writes, refusal of bad files, no pickle."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import capsnp
from capsnp.io import FORMAT_VERSION, METADATA_KEY, atomic_write_bytes, load_model, save_model


def files_in(directory):
    return sorted(p.name for p in Path(directory).iterdir())


def some_arrays():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(3, 2, 4, 5))  # (I, J, d_h, d_v)
    W[0, 0, 0, :3] = [np.nan, -0.0, np.inf]  # bit patterns that must survive
    return {
        "W": W,
        "alpha": rng.normal(size=(3, 5)).astype(np.float32),
        "rho": rng.normal(size=2),
        "steps": np.array(12345, dtype=np.int64),  # 0-d
        "mask": rng.random((4, 4)) < 0.5,
        "images": rng.integers(0, 256, size=(2, 784), dtype=np.uint8),
        "empty": np.zeros((0, 3)),
        "transposed": rng.normal(size=(3, 4)).T,  # not C-contiguous
    }


def write_npz(path, **entries):
    """An .npz written by plain NumPy, as someone else's tool might (pickle allowed)."""
    with open(path, "wb") as f:
        np.savez(f, **entries)


def metadata_entry(obj):
    return np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8)


def test_round_trip_is_exact(tmp_path):
    arrays = some_arrays()
    metadata = {"model": "P", "I": 3, "lr": 0.05, "history": [1.5, 2.5], "note": "é ∑ 🙂",
                "nested": {"a": [1, {"b": None}], "flag": True}}
    path = tmp_path / "model.npz"
    save_model(path, arrays, metadata)
    loaded, meta = load_model(path)

    assert sorted(loaded) == sorted(arrays)
    for name, a in arrays.items():
        b = loaded[name]
        assert b.dtype == a.dtype and b.shape == a.shape
        assert np.ascontiguousarray(a).tobytes() == b.tobytes(), name  # bit-identical
    assert meta["format_version"] == FORMAT_VERSION == 1
    assert meta["capsnp_version"] == capsnp.__version__
    assert {k: v for k, v in meta.items()
            if k not in ("format_version", "capsnp_version")} == metadata
    assert files_in(tmp_path) == ["model.npz"]  # no temporary file left


def test_saving_twice_gives_same_bytes_and_numpy_scalars_are_accepted(tmp_path):
    arrays = some_arrays()
    save_model(tmp_path / "a.npz", arrays, {"loss": np.float64(0.25), "epoch": np.int64(3)})
    save_model(tmp_path / "b.npz", arrays, {"loss": 0.25, "epoch": 3})
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    _, meta = load_model(tmp_path / "a.npz")
    assert meta["loss"] == 0.25 and meta["epoch"] == 3
    # A plain np.load reads the same file, without pickle.
    with np.load(tmp_path / "a.npz", allow_pickle=False) as npz:
        assert METADATA_KEY in npz.files and npz[METADATA_KEY].dtype == np.uint8


def test_atomic_write_bytes(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, bytearray(b"second"))
    assert path.read_bytes() == b"second"
    assert files_in(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_write_keeps_old_file_and_leaves_no_temp(monkeypatch, tmp_path, failing):
    path = tmp_path / "model.npz"
    save_model(path, {"W": np.ones(3)}, {"run": 1})
    before = path.read_bytes()

    def fail(*args):
        raise OSError(f"simulated {failing} failure")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match="simulated"):
        save_model(path, {"W": np.zeros(3)}, {"run": 2})
    with pytest.raises(OSError, match="simulated"):
        atomic_write_bytes(tmp_path / "new.bin", b"data")
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert files_in(tmp_path) == ["model.npz"]
    arrays, meta = load_model(path)
    assert meta["run"] == 1 and np.array_equal(arrays["W"], np.ones(3))


@pytest.mark.parametrize(
    "arrays, metadata, error",
    [
        ({"W": np.array([{"a": 1}], dtype=object)}, {}, ValueError),
        ({METADATA_KEY: np.ones(2)}, {}, ValueError),
        ({"": np.ones(2)}, {}, ValueError),
        ({"a/b": np.ones(2)}, {}, ValueError),
        ({"W": np.ones(2)}, {"bad": {1, 2}}, TypeError),
        ({"W": np.ones(2)}, {"loss": float("nan")}, ValueError),
    ],
)
def test_bad_input_writes_nothing(tmp_path, arrays, metadata, error):
    with pytest.raises(error):
        save_model(tmp_path / "model.npz", arrays, metadata)
    assert files_in(tmp_path) == []


def test_truncated_or_corrupted_file_is_refused(tmp_path):
    path = tmp_path / "model.npz"
    save_model(path, some_arrays(), {"x": 1})
    good = path.read_bytes()

    bad = tmp_path / "bad.npz"
    for size in (0, 10, len(good) // 2, len(good) - 1):
        bad.write_bytes(good[:size])
        with pytest.raises(ValueError, match="bad.npz"):
            load_model(bad)

    flipped = bytearray(good)
    flipped[len(good) // 3] ^= 0xFF  # inside the stored array data: the zip CRC catches it
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="bad.npz"):
        load_model(bad)

    bad.write_bytes(b"this is not a zip archive at all" * 10)
    with pytest.raises(ValueError, match="bad.npz"):
        load_model(bad)

    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.npz")


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({"format_version": 2}, "unsupported format_version 2"),
        ({"format_version": "1"}, "no integer 'format_version'"),
        ({"format_version": True}, "no integer 'format_version'"),
        ({"capsnp_version": "0.1.0"}, "no integer 'format_version'"),
        ([1, 2, 3], "expected an object"),
    ],
)
def test_bad_metadata_is_refused(tmp_path, metadata, message):
    path = tmp_path / "other.npz"
    write_npz(path, W=np.ones(2), **{METADATA_KEY: metadata_entry(metadata)})
    with pytest.raises(ValueError, match=message) as info:
        load_model(path)
    assert "other.npz" in str(info.value)


def test_missing_or_unreadable_metadata_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    write_npz(path, W=np.ones(2))
    with pytest.raises(ValueError, match="no '__metadata__' entry"):
        load_model(path)
    write_npz(path, W=np.ones(2), **{METADATA_KEY: np.frombuffer(b"{not json", np.uint8)})
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(path)
    write_npz(path, W=np.ones(2), **{METADATA_KEY: np.frombuffer(b"\xff\xfe", np.uint8)})
    with pytest.raises(ValueError, match="UTF-8"):
        load_model(path)
    write_npz(path, W=np.ones(2), **{METADATA_KEY: np.ones(3)})
    with pytest.raises(ValueError, match="expected UTF-8 bytes"):
        load_model(path)


def test_zero_d_string_metadata_is_accepted(tmp_path):
    path = tmp_path / "other.npz"
    text = json.dumps({"format_version": 1, "capsnp_version": "0.1.0", "name": "x"})
    write_npz(path, W=np.arange(3), **{METADATA_KEY: np.array(text)})
    arrays, meta = load_model(path)
    assert meta["name"] == "x" and np.array_equal(arrays["W"], np.arange(3))


def test_loading_never_uses_pickle(monkeypatch, tmp_path):
    good = tmp_path / "good.npz"
    save_model(good, some_arrays(), {"x": 1})
    # An object array saved by someone else (np.savez pickles it).
    evil = tmp_path / "evil.npz"
    write_npz(evil, W=np.array([{"payload": 1}, None], dtype=object),
              **{METADATA_KEY: metadata_entry({"format_version": 1})})

    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)

    arrays, _ = load_model(good)
    assert arrays["W"].shape == (3, 2, 4, 5)
    with pytest.raises(ValueError, match="evil.npz") as info:
        load_model(evil)
    assert "pickle" in str(info.value)
