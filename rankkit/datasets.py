"""Labelled text datasets as :class:`~rankkit.sequences.RewardDataset` (paper 002, §2.2, App. C.3).

``load(spec)`` accepts

* ``"vader:movie"``, ``"vader:tweets"``, ``"vader:nyt"``, ``"vader:amazon"`` — the VADER
  ground-truth sentences (Hutto & Gilbert, ICWSM 2014) with their mean human sentiment
  rating r ∈ [−4, 4]. Label ``"sentiment"`` = (r + 4) / 8 ∈ [0, 1] (the default, on the
  same scale as the paper's Amazon/SST-2 responses) and ``"rating"`` = r. They are read
  from the ``vaderSentiment`` 3.3.2 source distribution, fetched once from PyPI with pip
  into ``$RANKKIT_CACHE`` (default ``~/.cache/rankkit``) and verified by SHA-256; after that
  no network is used.
* hub presets ``"jigsaw"``, ``"amazon_polarity"``, ``"sst2"``, ``"helpsteer"``,
  ``"beavertails"`` — the paper's Table 2 / §4 datasets through ``datasets.load_dataset``
  (network needed). Their column mapping is the pure function :func:`apply_preset`.
* a path to a ``.csv``, ``.jsonl``/``.json`` or ``.parquet`` file, with ``text=`` and
  ``labels=`` column names;
* any ``datasets.Dataset`` (or a dict of columns), with ``text=`` and ``labels=``.

Bad data is reported at the boundary, naming the file and line: a missing column (with
the available ones), a non-numeric or NaN label, a non-UTF-8 line. Empty texts are skipped
and counted (``RewardDataset.n_dropped_empty``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .sequences import RewardDataset

__all__ = ["available", "load", "apply_preset", "from_columns", "cache_dir", "PRESETS",
           "VADER_SETS", "Preset"]

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


# ---------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------
def _decode(raw: bytes, where: str) -> str:
    """Decode UTF-8, naming the first bad line (not just a byte offset) on failure."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{where} line {line}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                         "re-save the file as UTF-8 or fix that line") from None
    return text


def _decode_lines(raw: bytes, where: str) -> list[str]:
    # split on "\n" only: str.splitlines() also splits on form feeds, U+2028 …, which
    # may legally sit inside a text field
    return [line.removesuffix("\r") for line in _decode(raw, where).split("\n")]


def _to_float(value, where: str, line, column: str) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} {line}: label {column!r} = {value!r} is not a number; fix "
                         "or drop that row") from None
    if not math.isfinite(x):
        raise ValueError(f"{where} {line}: label {column!r} = {value!r} is not finite (NaN/inf); "
                         "fix or drop that row")
    return x


def _label_column(values: Sequence, where: str, column: str,
                  line_of: Callable[[int], str]) -> np.ndarray:
    """Column as float64; the first non-numeric / non-finite entry is named."""
    try:
        y = np.asarray(values, dtype=np.float64)
        if y.ndim == 1 and np.isfinite(y).all():
            return y
    except (TypeError, ValueError):
        pass
    return np.asarray([_to_float(v, where, line_of(i), column) for i, v in enumerate(values)],
                      dtype=np.float64)


def _as_list(x) -> list[str]:
    if x is None:
        return []
    return [x] if isinstance(x, str) else list(x)


def from_columns(columns: Mapping[str, Sequence], text: str | Sequence[str], labels,
                 *, where: str = "dataset",
                 line_of: Callable[[int], str] = lambda i: f"row {i}",
                 transforms: Mapping[str, Callable] | None = None,
                 ) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """Pick and validate the text and label columns of a table.

    Parameters
    ----------
    columns : mapping of column name -> sequence (a dict, or a ``datasets.Dataset``)
    text : str or list of str
        Text column; several are joined with a newline (e.g. prompt and response).
    labels : str or list of str
        Label columns, one response each.
    where, line_of : how errors name the source and a row (e.g. ``"data.csv"``, ``"line 7"``).
    transforms : mapping of label -> callable on the float column, optional

    Returns
    -------
    texts, responses (n, n_labels) float64, label names
    """
    names = list(columns.column_names if hasattr(columns, "column_names") else columns.keys())
    text_cols, label_cols = _as_list(text), _as_list(labels)
    if not text_cols:
        raise ValueError(f"{where}: no text column given; pass text=<one of {names}>")
    if not label_cols:
        raise ValueError(f"{where}: no label column given; pass labels=<one or more of {names}>")
    for col in text_cols + label_cols:
        if col not in names:
            raise KeyError(f"{where}: column {col!r} not found; available columns: {names}")
    parts = [columns[c] for c in text_cols]
    texts = []
    for i, row in enumerate(zip(*parts, strict=True)):
        for c, t in zip(text_cols, row, strict=True):
            if t is not None and not isinstance(t, str):
                raise TypeError(f"{where} {line_of(i)}: text column {c!r} holds "
                                f"{type(t).__name__} {t!r:.60}, expected a string")
        texts.append("\n".join(t for t in row if t))
    ys = []
    for c in label_cols:
        y = _label_column(columns[c], where, c, line_of)
        if transforms and c in transforms:
            y = np.asarray(transforms[c](y), dtype=np.float64)
        ys.append(y)
    return texts, np.stack(ys, axis=1), tuple(label_cols)


# ---------------------------------------------------------------------------------------
# hub presets (paper 002, §4 and Table 2)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A hub dataset with the paper's text and label columns.

    ``text`` lists candidate column groups: the first whose columns all exist is used
    (e.g. Jigsaw's Kaggle ``comment_text`` vs. the hub mirror's ``text``). ``labels`` maps
    each response name to candidate source columns and a transform.
    """

    hub_id: str
    config: str | None
    split: str
    text: tuple[tuple[str, ...], ...]
    labels: tuple[tuple[str, tuple[str, ...], Callable | None], ...]
    description: str


def _bool01(y: np.ndarray) -> np.ndarray:
    return (np.asarray(y) != 0).astype(np.float64)


PRESETS: dict[str, Preset] = {
    "jigsaw": Preset(
        "google/civil_comments", None, "train",
        (("text",), ("comment_text",)),
        tuple((n, (n, "target") if n == "toxicity" else (n,), None) for n in (
            "toxicity", "severe_toxicity", "obscene", "identity_attack", "insult", "threat",
            "sexual_explicit")),
        "Jigsaw Unintended Bias (civil comments): 7 toxicity fractions in [0, 1] (detox., Table 2)"),
    "amazon_polarity": Preset(
        "fancyzhx/amazon_polarity", None, "train", (("content",),),
        (("positive", ("label",), _bool01),),
        "Amazon Polarity reviews, label 1 = positive (sentiment, Table 2)"),
    "sst2": Preset(
        "stanfordnlp/sst2", None, "train", (("sentence",),),
        (("positive", ("label",), _bool01),),
        "SST-2 sentences, label 1 = positive (sentiment fine-tuning, §4.3)"),
    "helpsteer": Preset(
        "nvidia/HelpSteer", None, "train", (("prompt", "response"),),
        tuple((n, (n,), None) for n in (
            "helpfulness", "correctness", "coherence", "complexity", "verbosity")),
        "HelpSteer prompt+response, 5 attributes on 0-4 (helpfulness, Table 2)"),
    "beavertails": Preset(
        "PKU-Alignment/BeaverTails", None, "30k_train", (("prompt", "response"),),
        (("is_safe", ("is_safe",), _bool01),),
        "BeaverTails prompt+response, is_safe in {0, 1} (safety, Table 2)"),
}


def apply_preset(name: str, table, *, labels=None, where: str | None = None
                 ) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """Map a loaded hub table (``datasets.Dataset`` or dict of columns) to the paper's
    texts and responses. Pure: no network, so it is tested on in-memory tables."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    p = PRESETS[name]
    cols = list(table.column_names if hasattr(table, "column_names") else table.keys())
    where = where or f"{p.hub_id} ({name})"
    text = next((g for g in p.text if all(c in cols for c in g)), None)
    if text is None:
        raise KeyError(f"{where}: none of the text columns {[list(g) for g in p.text]} found; "
                       f"available columns: {cols}")
    wanted = _as_list(labels) or [n for n, _, _ in p.labels]
    known = {n: (src, tf) for n, src, tf in p.labels}
    sources, transforms, out_names = [], {}, []
    for n in wanted:
        if n not in known:
            raise KeyError(f"{where}: label {n!r} not in preset; available: {list(known)}")
        src, tf = known[n]
        col = next((c for c in src if c in cols), None)
        if col is None:
            raise KeyError(f"{where}: label {n!r} needs one of columns {list(src)}; "
                           f"available columns: {cols}")
        sources.append(col)
        out_names.append(n)
        if tf is not None:
            transforms[col] = tf
    texts, y, _ = from_columns(table, list(text), sources, where=where, transforms=transforms)
    return texts, y, tuple(out_names)


# ---------------------------------------------------------------------------------------
# local files
# ---------------------------------------------------------------------------------------
def _read_file(path: Path, text, labels) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    suffix = "".join(path.suffixes[-1:]).lower()
    where = str(path)
    if suffix in (".csv", ".tsv"):
        # decoding first names a non-UTF-8 line before the csv parser sees it
        reader = csv.DictReader(io.StringIO(_decode(path.read_bytes(), where), newline=""),
                                delimiter="\t" if suffix == ".tsv" else ",")
        rows, line_numbers = [], []
        for row in reader:
            rows.append(row)
            line_numbers.append(reader.line_num)
        names = reader.fieldnames or []
        columns = {c: [r.get(c) for r in rows] for c in names}
        return from_columns(columns, text, labels, where=where,
                            line_of=lambda i: f"line {line_numbers[i]}")
    if suffix in (".jsonl", ".json", ".ndjson"):
        lines = _decode_lines(path.read_bytes(), where)
        records, line_numbers = [], []
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where} line {lineno}: not valid JSON ({e.msg}); one JSON "
                                 "object per line is expected") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where} line {lineno}: expected a JSON object, got "
                                 f"{type(rec).__name__}")
            records.append(rec)
            line_numbers.append(lineno)
        names = list(dict.fromkeys(k for r in records for k in r))
        for c in _as_list(text) + _as_list(labels):
            missing = [ln for r, ln in zip(records, line_numbers, strict=True) if c not in r]
            if missing and c in names:
                raise KeyError(f"{where} line {missing[0]}: column {c!r} missing from this "
                               f"record; available columns: {names}")
        columns = {c: [r.get(c) for r in records] for c in names}
        return from_columns(columns, text, labels, where=where,
                            line_of=lambda i: f"line {line_numbers[i]}")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return from_columns(pq.read_table(path).to_pydict(), text, labels, where=where,
                            line_of=lambda i: f"row {i}")
    raise ValueError(f"{where}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl, "
                     ".json (one object per line) or .parquet")


# ---------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------
def available() -> dict[str, str]:
    """Preset names and what they are (``vader:*`` work offline; the rest need the hub)."""
    out = {f"vader:{k}": f"VADER {d} ({n:,} sentences; labels sentiment=(r+4)/8, rating r; "
                         "offline via PyPI)" for k, (_, n, d) in VADER_SETS.items()}
    out.update({k: f"{p.description}; hub {p.hub_id}, needs network"
                for k, p in PRESETS.items()})
    return out


def load(spec, tokenizer="gpt2", split: str | None = None, limit: int | None = None,
         max_len: int | None = None, text=None, labels=None) -> RewardDataset:
    """Load a labelled text dataset and tokenize it into a :class:`RewardDataset`.

    Parameters
    ----------
    spec : str, path or ``datasets.Dataset``
        A name from :func:`available` (``"vader:movie"`` …), ``"hub:<id>"`` for any hub
        dataset (with ``text=``/``labels=``), a CSV/TSV/JSONL/Parquet path, a
        ``datasets.Dataset`` or a dict of columns.
    tokenizer : str or tokenizer, default "gpt2"
        Anything :func:`rankkit.tokenizers.load` accepts.
    split : str, optional
        Hub split (preset default, e.g. ``"train"``).
    limit : int, optional
        Keep the first ``limit`` rows (before dropping empty texts).
    max_len : int, optional
        Truncate every utterance to ``max_len`` tokens.
    text, labels : column names
        Required for files, hub ids and tables; for presets, ``labels`` picks a subset
        of the preset's labels (e.g. ``labels="rating"`` for VADER).

    Returns
    -------
    RewardDataset
        With ``texts`` kept and ``label_names`` set. Texts that are empty or tokenize to
        nothing are dropped and counted in ``n_dropped_empty``.

    Examples
    --------
    >>> ds = load("vader:movie", limit=100)          # doctest: +SKIP
    >>> ds.label_names
    ('sentiment', 'rating')
    """
    from . import tokenizers

    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if isinstance(spec, str) and spec.startswith("vader:"):
        name = spec.split(":", 1)[1]
        if name not in VADER_SETS:
            raise KeyError(f"unknown VADER set {name!r}; available: "
                           f"{[f'vader:{k}' for k in VADER_SETS]}")
        texts, r = _read_vader(name)
        table = {"text": texts, "sentiment": (r + 4.0) / 8.0, "rating": r}
        texts, y, names = from_columns(table, "text", _as_list(labels) or ["sentiment", "rating"],
                                       where=f"vader:{name}")
    elif isinstance(spec, str) and (spec in PRESETS or spec.startswith("hub:")):
        import datasets as hf

        if spec in PRESETS:
            p = PRESETS[spec]
            sl = split or p.split
            if limit is not None:
                sl = f"{sl}[:{int(limit)}]"
            texts, y, names = apply_preset(spec, hf.load_dataset(p.hub_id, p.config, split=sl),
                                           labels=labels)
        else:
            sl = split or "train"
            if limit is not None:
                sl = f"{sl}[:{int(limit)}]"
            texts, y, names = from_columns(hf.load_dataset(spec[4:], split=sl), text, labels,
                                           where=spec)
    elif isinstance(spec, str | os.PathLike):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(
                f"{spec!r} is neither a preset nor a file; presets: {list(available())}")
        texts, y, names = _read_file(path, text, labels)
    else:
        texts, y, names = from_columns(spec, text, labels, where=type(spec).__name__)
    if limit is not None:
        texts, y = texts[:int(limit)], y[:int(limit)]
    tok = tokenizers.load(tokenizer)
    seqs = tokenizers.encode_batch(tok, texts, max_len=max_len)
    y = y[:, 0] if y.shape[1] == 1 else y
    return RewardDataset(seqs, y, label_names=names, vocab_size=len(tok), texts=texts)

