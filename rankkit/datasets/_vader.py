"""The VADER ground-truth sentences (Hutto & Gilbert, ICWSM 2014), fetched once from the
``vaderSentiment`` source distribution on PyPI and verified by SHA-256."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np

from .._pip import fetch_distribution
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


def _vader_sdist(cache: Path | None = None) -> Path:
    """Path of the verified vaderSentiment sdist, downloading it once with pip
    (:func:`rankkit._pip.fetch_distribution`: verified, atomic)."""
    return fetch_distribution(f"vaderSentiment=={VADER_VERSION}", VADER_SDIST, VADER_SHA256,
                              (cache or cache_dir()) / "vader", sdist=True)


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
