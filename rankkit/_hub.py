"""Fail fast when the Hugging Face hub cannot be reached: one helper for every loader.

Without a network, ``transformers`` and ``datasets`` retry each hub request with
exponential back-off (``huggingface_hub``: 5 retries, 1 + 2 + 4 + 8 + 8 s per file), so
``from_pretrained("gpt2")`` or ``load_dataset("stanfordnlp/sst2")`` takes 25–50 s to say
that it could not connect. Every rankkit loader of a hub id goes through :func:`from_hub`
instead:

1. a local file or directory is loaded directly (never a network call);
2. a name that looks like a path (``./x``, ``/x``, ``~/x``) but does not exist is a
   :class:`FileNotFoundError`, never a hub request;
3. otherwise the hub is probed once (a TCP connect to the endpoint, at most ~2.5 s even
   when DNS hangs) unless ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE`` /
   ``HF_DATASETS_OFFLINE``) is set; when it answers, the ordinary online load runs;
4. when it does not, the loader runs in offline mode (the local cache only) and a cache
   miss becomes a :class:`HubUnreachableError` naming the id and the fix.

The core package owns this helper (``rankkit.datasets`` and ``rankkit.tokenizers`` need
it; ``rankkit_ext`` imports it, arrows point down).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

__all__ = ["HubUnreachableError", "hub_offline_env", "hub_endpoint", "hub_reachable",
           "looks_like_path", "hub_offline_mode", "from_hub"]

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


class HubUnreachableError(OSError):
    """A hub id was asked for, it is not in the local cache, and the hub cannot be reached.

    A subclass of :class:`OSError`, what ``transformers`` raises for the same situation, so
    code that catches the library's error keeps working.
    """


def hub_offline_env() -> str | None:
    """The name of the set offline variable (``HF_HUB_OFFLINE=1`` …), or None.

    Read at call time, so a variable set after ``transformers`` / ``datasets`` were
    imported (whose own flags are read once at import) is honoured too.
    """
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return None


def hub_endpoint() -> tuple[str, int]:
    """(host, port) of the hub: ``HF_ENDPOINT`` when set (a mirror), else huggingface.co."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    return host, url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(timeout: float = 2.0) -> bool:
    """True when the hub endpoint accepts a TCP connection within ``timeout`` seconds.

    False at once when an offline variable is set (:func:`hub_offline_env`). The probe runs
    in a daemon thread because a DNS lookup is not covered by the socket timeout and can
    hang for a minute on a machine without network; the call returns after at most
    ``timeout + 0.5`` s.
    """
    if hub_offline_env():
        return False
    host, port = hub_endpoint()
    result: list[bool] = []

    def probe() -> None:
        # every failure means "unreachable", and none may escape: the thread outlives the
        # call when DNS hangs, and an exception raised in it then surfaces later, somewhere
        # else (an HF_ENDPOINT host such as "a..b" raises UnicodeError, a ValueError)
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except (OSError, ValueError):
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(result and result[0])


def looks_like_path(name: str | os.PathLike) -> bool:
    """A path, not a hub id: a PathLike, or a string starting with ``.``, ``/``, ``~`` or
    holding a backslash (hub ids are ``name`` or ``owner/name``)."""
    if not isinstance(name, str):
        return True
    return name.startswith((".", "/", "~")) or "\\" in name or (len(name) > 1 and name[1] == ":")


@contextlib.contextmanager
def hub_offline_mode() -> Iterator[None]:
    """Offline mode for ``huggingface_hub`` (and ``datasets``) during the block, restored after.

    ``huggingface_hub`` and ``datasets`` read ``HF_HUB_OFFLINE`` once, at import; after that
    only their module flags count. ``local_files_only=True`` alone is not enough:
    ``transformers`` 5.x still sends a HEAD request for ``adapter_config.json`` with it and
    retries for ~23 s, and ``datasets``' ``DownloadConfig(local_files_only=True)`` likewise.
    Setting the flags for the duration of one call makes a cached model or dataset load
    without a single network attempt, and a cache miss fail at once. The flags are process
    wide, so the block is kept to the one load call and the old values always come back.
    """
    import huggingface_hub.constants  # noqa: F401 - a transformers dependency, so present

    flags = []
    for mod, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"),
                      ("datasets.config", "HF_HUB_OFFLINE"),
                      ("datasets.config", "HF_DATASETS_OFFLINE")):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, attr):
            flags.append((m, attr, getattr(m, attr)))
            setattr(m, attr, True)
    try:
        yield
    finally:
        for m, attr, old in reversed(flags):
            setattr(m, attr, old)


def _unreachable_message(shown: str, what: str, fix: str, cause: BaseException | None) -> str:
    var = hub_offline_env()
    host, _ = hub_endpoint()
    why = (f"{var} is set" if var else f"the Hugging Face hub ({host}) is unreachable "
           "(no network)")
    detail = f" [{type(cause).__name__}]" if cause is not None else ""
    return (f"{what} {shown} is neither a local path nor in the local Hugging Face cache, and "
            f"{why}{detail}. Fix: {fix}")


def from_hub(name: str | os.PathLike, load: Callable[[bool], T], *, what: str, fix: str,
             timeout: float = 2.0, shown_as: str | None = None) -> T:
    """Run ``load(offline)`` for a hub id or a local path, failing fast without a network.

    Parameters
    ----------
    name : str or os.PathLike
        A hub id (``"gpt2"``, ``"owner/name"``) or a local file / directory.
    load : callable ``(offline: bool) -> T``
        Does the actual load. ``load(True)`` runs inside :func:`hub_offline_mode`, so the
        hub libraries read their cache only; it should also pass ``local_files_only=True``
        where the loader takes it. A cache miss must raise an :class:`OSError`, as
        ``transformers`` and ``datasets`` do.
    what : str
        What is loaded, for the message ("base language model", "hub dataset" …).
    fix : str
        How to point at a local copy instead (the message's last sentence).
    timeout : float
        Seconds the hub probe may take (:func:`hub_reachable`).
    shown_as : str, optional
        How the message names ``name`` (default ``repr(name)``).

    Returns
    -------
    Whatever ``load`` returns.

    Raises
    ------
    FileNotFoundError
        ``name`` looks like a path (:func:`looks_like_path`) but nothing is there.
    HubUnreachableError
        ``name`` is a hub id, the hub cannot be reached (or an offline variable is set)
        and the local cache does not hold it; the message names ``name``, the reason and
        ``fix``. Raised within about ``timeout + 0.5`` s.
    """
    p = Path(name).expanduser()
    if p.exists():
        return load(False)  # a local copy: transformers / datasets read it without the hub
    if looks_like_path(name):
        raise FileNotFoundError(f"{what} {os.fspath(name)!r}: no such file or directory. "
                                f"Fix: {fix}")
    name = os.fspath(name)
    if hub_reachable(timeout):
        return load(False)
    try:
        with hub_offline_mode():
            return load(True)  # the local hub cache may still hold it
    except OSError as e:  # cache miss: transformers raises OSError, datasets ConnectionError /
        # FileNotFoundError (both OSErrors)
        raise HubUnreachableError(_unreachable_message(shown_as or repr(name), what, fix, e)
                                  ) from e
