"""Writing and loading the extension's torch checkpoints safely; the fingerprint of models
and twists.

Training, CTL and self-distillation checkpoints hold tensors, state dicts, RNG states and
lists of numbers. They are read with ``torch.load(..., weights_only=True)``: a checkpoint
someone shares cannot execute code when loaded (a full unpickler would run whatever a
crafted file asks for). A damaged file (truncated, empty, not a torch archive) raises
:class:`rankkit._io.DamagedFileError` naming the file and what to do.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from rankkit._io import DamagedFileError, atomic_write, fingerprint

__all__ = ["save_checkpoint", "load_checkpoint", "UnsafeCheckpointError", "state_fingerprint"]


def save_checkpoint(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` through the core's atomic writer: a crash mid-write never leaves a
    torn checkpoint under ``path``. ``obj`` should hold only what :func:`load_checkpoint`
    reads back (tensors, state dicts, numbers, strings, lists and dicts)."""
    return atomic_write(path, "wb", lambda f: torch.save(obj, f))


class UnsafeCheckpointError(ValueError):
    """A checkpoint asks to build objects beyond tensors and plain containers."""


def load_checkpoint(path: str | os.PathLike, what: str, map_location=None):
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    Raises
    ------
    UnsafeCheckpointError
        The file contains pickled objects other than tensors, numbers, strings and
        containers: refused rather than executed.
    DamagedFileError
        The file is truncated, empty or not a torch checkpoint.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            f"{what} {str(path)!r} holds objects other than tensors and plain containers; it is "
            f"refused rather than unpickled, since unpickling can run arbitrary code ({first}). "
            f"Only load files you trust; rankkit writes tensors, numbers and lists only") from None
    except (EOFError, RuntimeError, OSError) as e:
        # only a broken archive is "damaged": a missing or unreadable file, or a RuntimeError of
        # another kind (e.g. map_location naming a device this machine lacks), keeps its message
        if isinstance(e, FileNotFoundError | IsADirectoryError | PermissionError):
            raise
        if isinstance(e, RuntimeError) and not ("zip archive" in str(e) or "PytorchStreamReader" in str(e)):
            raise
        raise DamagedFileError(f"{what} {str(path)!r} is damaged ({type(e).__name__}: {e}); delete it "
                               f"to start over") from None


def state_fingerprint(*objs) -> str:
    """:func:`rankkit._io.fingerprint` of models and twists: each object by its type name and
    its parameters — a ``torch.nn.Module``'s ``state_dict()``, another object's (a sampler
    adapter such as ``TableLM``) tensor attributes — so a cached result is reused only for
    the same weights.

    Raises
    ------
    ValueError
        An object has no parameters and no tensor attributes: a stale cached result could
        not be told apart from a fresh one.
    """
    parts = []
    for obj in objs:
        state = (obj.state_dict() if isinstance(obj, torch.nn.Module)
                 else {k: v for k, v in vars(obj).items() if isinstance(v, torch.Tensor)})
        if not state:
            raise ValueError(f"cannot fingerprint {type(obj).__name__}: no parameters or "
                             "tensor attributes, so a stale cached run could not be detected.")
        parts += [type(obj).__name__, dict(state)]
    return fingerprint(*parts)
