"""Reading and writing the package's files: atomic writes, and reads that name a damaged file.

Every checkpoint, saved result and search state of the core goes through these four
functions. Writes go to a temporary file beside the target and are moved into place with
``os.replace``, so an interrupted write never leaves a truncated file under the final name.
Reads turn every way a file can be damaged (truncated, empty, not an npz / JSON file, a
missing array) into one :class:`DamagedFileError` that names the file and says what to do.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["DamagedFileError", "atomic_npz", "atomic_json", "read_npz", "read_json"]


class DamagedFileError(ValueError):
    """A file rankkit wrote earlier cannot be read back (truncated, empty or corrupted)."""


def _damaged(path: Path, what: str, why: str, fix: str | None) -> DamagedFileError:
    fix = fix or f"delete it ({str(path)!r}) to start over"
    return DamagedFileError(f"{what} {str(path)!r} is damaged ({why}); {fix}")


def _atomic(path: str | os.PathLike, mode: str, write) -> Path:
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
    return _atomic(path, "wb", lambda f: np.savez(f, **arrays))


def atomic_json(path: str | os.PathLike, obj, **dump_kw) -> Path:
    """``json.dump`` into a temporary file beside ``path``, then ``os.replace``."""
    return _atomic(path, "w", lambda f: json.dump(obj, f, **{"indent": 1, **dump_kw}))


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
        with np.load(path, allow_pickle=False) as z:
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
