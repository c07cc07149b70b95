"""Reading and writing the package's files: atomic writes, reads that name a damaged file,
and the one fingerprint that ties a checkpoint to the problem it belongs to.

Every checkpoint, saved result and search state of the core goes through these functions
(the extension's torch checkpoints through :mod:`rankkit_ext._io`, built on them). Writes go to a temporary file beside the target and are moved into place with
``os.replace``, so an interrupted write never leaves a truncated file under the final name.
Reads turn every way a file can be damaged (truncated, empty, not an npz / JSON file, a
missing array) into one :class:`DamagedFileError` that names the file and says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["DamagedFileError", "atomic_write", "atomic_npz", "atomic_json", "read_npz",
           "read_json", "fingerprint", "json_default"]


class DamagedFileError(ValueError):
    """A file rankkit wrote earlier cannot be read back (truncated, empty or corrupted)."""


def _damaged(path: Path, what: str, why: str, fix: str | None) -> DamagedFileError:
    fix = fix or f"delete it ({str(path)!r}) to start over"
    return DamagedFileError(f"{what} {str(path)!r} is damaged ({why}); {fix}")


def atomic_write(path: str | os.PathLike, mode: str, write) -> Path:
    """``write(file)`` into a temporary file beside ``path``, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_npz(path: str | os.PathLike, arrays: dict) -> Path:
    """``np.savez`` into a temporary file beside ``path``, then ``os.replace``."""
    return atomic_write(path, "wb", lambda f: np.savez(f, **arrays))


def atomic_json(path: str | os.PathLike, obj, **dump_kw) -> Path:
    """``json.dump`` into a temporary file beside ``path``, then ``os.replace``."""
    return atomic_write(path, "w", lambda f: json.dump(obj, f, **{"indent": 1, **dump_kw}))


def read_npz(path: str | os.PathLike, what: str, *, required=(), fix: str | None = None) -> dict:
    """All arrays of an npz file as a dict (read eagerly, no pickles).

    Parameters
    ----------
    path : path
    what : str
        How errors name the file ("soft-impute checkpoint", …).
    required : iterable of str
        Arrays that must be present.
    fix : str, optional
        What the user should do (default: delete the file to start over).

    Raises
    ------
    DamagedFileError
        The file is truncated, empty, not an npz archive, or lacks a required array.
    """
    path = Path(path)
    try:
        # the file is opened here, not by np.load: on a truncated archive np.load raises
        # from NpzFile after handing it the file, which then stays open (a ResourceWarning)
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            out = {key: z[key] for key in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        if isinstance(e, FileNotFoundError | IsADirectoryError | PermissionError):
            raise  # missing or unreadable, not damaged: the OS message says which
        raise _damaged(path, what, f"{type(e).__name__}: {e}", fix) from None
    missing = [key for key in required if key not in out]
    if missing:
        raise _damaged(path, what, f"no {missing} array; not written by this version of rankkit?", fix)
    return out


def read_json(path: str | os.PathLike, what: str, *, fix: str | None = None):
    """The JSON content of ``path``; a damaged file raises :class:`DamagedFileError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _damaged(path, what, f"{type(e).__name__}: {e}", fix) from None


def json_default(o):
    """``default=`` hook of :func:`json.dumps` for the CLI's and the analyses' JSON output:
    numpy scalars become Python numbers, arrays, tuples and sets become lists, anything else
    its ``str``."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple | set):
        return list(o)
    return str(o)


def _feed(h, obj) -> None:
    """Canonical bytes of ``obj`` into the hash: each part tagged with its type, arrays with
    dtype and shape, mappings by sorted key, so two different inputs never share a stream."""
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # a torch tensor, any device or dtype
        t = obj.detach().cpu()
        h.update(f"tensor:{t.dtype}:{tuple(t.shape)}:".encode())
        obj = (t.float() if str(t.dtype) == "torch.bfloat16" else t).contiguous().numpy()
        h.update(obj.tobytes())
        return
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"array:{a.dtype.str}:{a.shape}:".encode())
        h.update(a.tobytes())
        return
    if isinstance(obj, Mapping):
        h.update(f"map:{len(obj)}:".encode())
        for key in sorted(obj, key=str):
            _feed(h, str(key))
            _feed(h, obj[key])
        return
    if isinstance(obj, list | tuple):
        h.update(f"seq:{len(obj)}:".encode())
        for x in obj:
            _feed(h, x)
        return
    if isinstance(obj, bytes):
        h.update(f"bytes:{len(obj)}:".encode() + obj)
        return
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        text = repr(obj) if not isinstance(obj, str) else obj
        h.update(f"{type(obj).__name__}:{len(text)}:{text}".encode())
        return
    raise TypeError(f"cannot fingerprint a {type(obj).__name__}; pass arrays, tensors, numbers, "
                    "strings, or lists / dicts of them")


def fingerprint(*parts) -> str:
    """Hex BLAKE2b-128 digest of ``parts`` (arrays, torch tensors, numbers, strings, and lists
    or dicts of them), the one identity of a problem the package's checkpoints, cached runs
    and search states are checked against before they are resumed. 128 bits: collisions
    between two problems a user runs are out of reach, and the digest is cheap next to the
    data it hashes (one pass at memory speed)."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        _feed(h, p)
    return h.hexdigest()
