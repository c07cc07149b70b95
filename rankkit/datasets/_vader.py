"""The VADER ground-truth sentences (Hutto & Gilbert, ICWSM 2014), fetched once from the
``vaderSentiment`` source distribution on PyPI and verified by SHA-256."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from ._tables import _decode_lines, _to_float

# ---------------------------------------------------------------------------------------
# VADER (offline, through PyPI)
# ---------------------------------------------------------------------------------------
VADER_VERSION = "3.3.2"
VADER_SDIST = f"vaderSentiment-{VADER_VERSION}.tar.gz"
# computed once from the PyPI sdist (pip itself checks PyPI's published hash on download)
VADER_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
_VADER_INNER = f"vaderSentiment-{VADER_VERSION}/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_SETS = {
    "movie": ("movieReviewSnippets_GroundTruth.txt", 10605, "movie review snippets"),
    "tweets": ("tweets_GroundTruth.txt", 4200, "tweets"),
    "nyt": ("nytEditorialSnippets_GroundTruth.txt", 5190, "New York Times editorial snippets"),
    "amazon": ("amazonReviewSnippets_GroundTruth.txt", 3708, "Amazon review snippets"),
}


def cache_dir() -> Path:
    """``$RANKKIT_CACHE`` or ``~/.cache/rankkit``."""
    return Path(os.environ.get("RANKKIT_CACHE") or Path.home() / ".cache" / "rankkit")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _vader_sdist(cache: Path | None = None) -> Path:
    """Path of the verified vaderSentiment sdist, downloading it once with pip.

    The download goes to a private temporary folder and is moved into place with
    ``os.replace`` after its SHA-256 is checked, so concurrent processes never see a
    partial file (at worst both download and the second replace is a no-op).
    """
    folder = (cache or cache_dir()) / "vader"
    target = folder / VADER_SDIST
    if target.is_file():
        digest = _sha256(target)
        if digest != VADER_SHA256:
            raise OSError(f"{target} has SHA-256 {digest}, expected {VADER_SHA256}; the file is "
                          "corrupt or was replaced: delete it and rankkit will fetch it again")
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", f"vaderSentiment=={VADER_VERSION}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / VADER_SDIST
        if proc.returncode != 0 or not got.is_file():
            raise OSError(
                f"could not fetch {VADER_SDIST} from PyPI with `{' '.join(cmd)}` "
                f"(exit {proc.returncode}): {proc.stderr.strip()[-400:]}\nFix: give this "
                f"machine access to PyPI once, or copy the file to {target}")
        digest = _sha256(got)
        if digest != VADER_SHA256:
            raise OSError(f"downloaded {VADER_SDIST} has SHA-256 {digest}, expected "
                          f"{VADER_SHA256}; refusing to use it (check your package index)")
        os.replace(got, target)
    return target


def _read_vader(name: str, cache: Path | None = None) -> tuple[list[str], np.ndarray]:
    """Texts and ratings r ∈ [−4, 4] of one VADER ground-truth file (id \\t r \\t text)."""
    fname = VADER_SETS[name][0]
    with tarfile.open(_vader_sdist(cache)) as outer:
        inner_bytes = outer.extractfile(_VADER_INNER).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        raw = inner.extractfile(f"hutto_ICWSM_2014/{fname}").read()
    where = f"{VADER_SDIST}:{_VADER_INNER}:{fname}"
    texts, ratings = [], []
    for lineno, line in enumerate(_decode_lines(raw, where), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise ValueError(f"{where} line {lineno}: expected 'id<TAB>rating<TAB>text', "
                             f"got {line[:80]!r}")
        ratings.append(_to_float(parts[1], where, lineno, "rating"))
        texts.append(parts[2].strip())
    return texts, np.asarray(ratings, dtype=np.float64)
