"""Model files: named arrays plus JSON metadata in one ``.npz``, written atomically.

A model file is an ordinary NumPy ``.npz`` (a zip archive of ``.npy`` members) holding

* one member per parameter array (``W``, ``alpha``, ...), stored without compression, and
* a member ``__metadata__``: a 1-D uint8 array with the UTF-8 bytes of a JSON object. The
  object always has ``format_version`` (an int, currently 1) and ``capsnp_version``.

Nothing is ever pickled: arrays of dtype ``object`` are refused when saving, and files are
read with ``np.load(..., allow_pickle=False)``, so opening a file from someone else cannot run
code.

Writes are atomic: the bytes go to a temporary file in the target's directory, which is
flushed, ``fsync``-ed and then renamed over the target with ``os.replace``. A reader therefore
sees either the old file or the complete new one, never a half-written file, and a failed
write leaves the old file untouched and no temporary file behind. A process killed outright
(SIGKILL, power loss) in the middle of a write cannot clean up: the target is still the old
complete file, and the partial temporary file ``.<name>.<random>.tmp`` beside it is ignored by
readers and later writers; :func:`remove_temporary_files` deletes such leftovers.
"""

import io
import json
import os
import uuid
import zipfile
import zlib
from pathlib import Path

import numpy as np

__all__ = ["FORMAT_VERSION", "METADATA_KEY", "atomic_write_bytes", "remove_temporary_files",
           "save_model", "load_model"]

FORMAT_VERSION = 1
METADATA_KEY = "__metadata__"
_TMP_TAG_LENGTH = 12  # hex digits of the random part of a temporary file's name


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` so that the file is either the old one or the complete new one.

    The bytes are written to a temporary file ``.<name>.<random>.tmp`` in the same directory,
    flushed and ``fsync``-ed, then moved over ``path`` with ``os.replace`` (atomic on POSIX and
    Windows). Finally the directory itself is ``fsync``-ed where the platform allows it, so the
    rename survives a crash. On any error the temporary file is removed and the error re-raised;
    an existing ``path`` is then unchanged.

    Parameters
    ----------
    path : str or os.PathLike
        Target file. Its directory must exist.
    data : bytes-like
        The complete new contents.
    """
    path = Path(path)
    tmp_path = path.with_name(f".{path.name}.{uuid.uuid4().hex[:_TMP_TAG_LENGTH]}.tmp")
    # os.open with mode 0o666 lets the user's umask decide the permissions, as for open().
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp_path, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _is_temporary_of(candidate, target):
    """True if ``candidate`` (a file name) is a temporary file of :func:`atomic_write_bytes`
    for the target file name ``target``: ``.<target>.<12 hex digits>.tmp``."""
    prefix, suffix = f".{target}.", ".tmp"
    if not (candidate.startswith(prefix) and candidate.endswith(suffix)):
        return False
    tag = candidate[len(prefix):-len(suffix)]
    return len(tag) == _TMP_TAG_LENGTH and all(c in "0123456789abcdef" for c in tag)


def remove_temporary_files(path):
    """Delete temporary files that interrupted writes of ``path`` left in its directory.

    Only names of the exact form ``.<name>.<12 hex digits>.tmp`` are touched. Call it when no
    other process is writing ``path`` (e.g. when a training run starts); a write in progress
    elsewhere would lose its temporary file and fail.

    Parameters
    ----------
    path : str or os.PathLike
        The target file (it need not exist).

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    path = Path(path)
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        if _is_temporary_of(entry.name, path.name) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _fsync_directory(directory):
    """``fsync`` a directory so a rename inside it is durable; skipped where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows, where directories cannot be opened like this
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_default(obj):
    """Let ``json.dumps`` accept NumPy scalars (``np.float64(0.5)`` -> ``0.5``)."""
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON serializable")


def save_model(path, arrays, metadata=None):
    """Save named arrays and JSON metadata to one ``.npz`` file, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Target file (conventionally ending in ``.npz``). Its directory must exist.
    arrays : dict of str -> ndarray
        The arrays to store, e.g. ``{"W": W (I, J, d_h, d_v), "alpha": alpha (I, d_v), ...}``.
        Stored bit-exactly with their dtype and shape. Object arrays are refused (they would need
        pickle).
    metadata : dict, optional
        JSON-serialisable description (hyper-parameters, training history, ...). NumPy scalars
        are converted to Python numbers; NaN and infinity are refused (not valid JSON). The keys
        ``format_version`` and ``capsnp_version`` are set by this function.

    Raises
    ------
    ValueError
        For a bad array name or an object array.
    TypeError
        If the metadata is not JSON-serialisable. Nothing is written in either case.
    """
    from . import __version__  # imported here: capsnp/__init__.py may import this module

    checked = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or name == METADATA_KEY or "/" in name:
            raise ValueError(f"bad array name {name!r}: use a non-empty string without '/', "
                             f"other than {METADATA_KEY!r}")
        value = np.asarray(value)
        if value.dtype.hasobject:
            raise ValueError(f"array {name!r} has dtype {value.dtype}, which cannot be stored "
                             f"without pickle; convert it to a numeric array")
        checked[name] = value

    meta = dict(metadata or {})
    meta["format_version"] = FORMAT_VERSION
    meta["capsnp_version"] = __version__
    text = json.dumps(meta, sort_keys=True, allow_nan=False, default=_json_default)
    checked[METADATA_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    # Build the .npz in memory (one .npy member per array, as np.savez does, but refusing
    # pickle), then write it in one atomic step. Zip members opened by name get a fixed
    # timestamp (1980-01-01), so saving the same model twice gives the same bytes.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, value in checked.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, value, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def load_model(path):
    """Load a file written by :func:`save_model`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    arrays : dict of str -> ndarray
        The stored arrays, bit-identical to the saved ones.
    metadata : dict
        The decoded JSON metadata, including ``format_version`` and ``capsnp_version``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Naming the file and the problem, if the file is truncated or corrupted, is not a zip
        archive, holds an object array (loading it would need pickle), lacks the metadata entry,
        has metadata that is not a JSON object, or has an unknown ``format_version``.
    """
    path = Path(path)
    raw = path.read_bytes()
    # A truncated zip loses its central directory at the end; detect that before numpy does.
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        raise ValueError(f"{path}: not a valid .npz (zip) archive; the file may be truncated "
                         f"or corrupted")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        # ValueError also covers object arrays, which np.load refuses without pickle.
        raise ValueError(f"{path}: cannot read model file ({type(exc).__name__}: {exc})") from exc

    if METADATA_KEY not in arrays:
        raise ValueError(f"{path}: no {METADATA_KEY!r} entry; this is not a capsnp model file")
    metadata = _decode_metadata(arrays.pop(METADATA_KEY), path)

    version = metadata.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{path}: metadata has no integer 'format_version' (got {version!r})")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {version} (this version of capsnp "
                         f"reads format_version {FORMAT_VERSION}); upgrade capsnp to read it")
    return arrays, metadata


def _decode_metadata(entry, path):
    """JSON object from the ``__metadata__`` entry: UTF-8 bytes as uint8 (n,), or a 0-d string."""
    if entry.dtype == np.uint8 and entry.ndim == 1:
        data = entry.tobytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: metadata is not valid UTF-8 ({exc})") from exc
    elif entry.dtype.kind == "U" and entry.ndim == 0:
        text = str(entry[()])
    else:
        raise ValueError(f"{path}: {METADATA_KEY!r} entry has dtype {entry.dtype} and shape "
                         f"{entry.shape}; expected UTF-8 bytes as a 1-D uint8 array")
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: metadata is not valid JSON ({exc})") from exc
    if not isinstance(metadata, dict):
        kind = type(metadata).__name__
        raise ValueError(f"{path}: metadata is a JSON {kind}, expected an object")
    return metadata
