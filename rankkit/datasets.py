"""Labelled text datasets as :class:`~rankkit.sequences.RewardDataset` (paper 002, §2.2, App. C.3).

``load(spec)`` (the same as :func:`as_dataset`) accepts

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
* a table: a ``datasets.Dataset`` or ``DatasetDict`` (with ``split=``), a pandas
  ``DataFrame`` or a dict of columns, with ``text=`` and ``labels=`` (inferred when there is
  a ``"text"`` column and exactly one other numeric column);
* ``(texts, labels)``, ``(token_id_lists, labels)`` (no tokenizer) or a ``RewardDataset``.

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

from .sequences import RewardDataset, TokenSequences

__all__ = ["available", "load", "as_dataset", "apply_preset", "from_columns", "cache_dir", "PRESETS",
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
    # a UTF-8 byte-order mark (Excel, Notepad) is not part of the first column's name
    return text.removeprefix("\ufeff")


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
        return _from_table(columns, text, labels, where=where, numeric=_file_numeric,
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
        return _from_table(columns, text, labels, where=where, numeric=_file_numeric,
                           line_of=lambda i: f"line {line_numbers[i]}")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return _from_table(pq.read_table(path).to_pydict(), text, labels, where=where,
                           numeric=_file_numeric, line_of=lambda i: f"row {i}")
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

    The same as :func:`as_dataset` (one code path), with ``spec`` as its ``source``.

    Parameters
    ----------
    spec : str, path, table, tuple or RewardDataset
        A name from :func:`available` (``"vader:movie"`` …), ``"hub:<id>"`` for any hub
        dataset, a CSV/TSV/JSONL/Parquet path, a ``datasets.Dataset`` / ``DatasetDict``,
        a pandas DataFrame, a dict of columns, ``(texts, labels)``, ``(token_ids, labels)``
        or a ``RewardDataset``; see :func:`as_dataset`.
    tokenizer : str or tokenizer, default "gpt2"
        Anything :func:`rankkit.tokenizers.load` accepts.
    split : str, optional
        Hub split (preset default, e.g. ``"train"``), or the split of a ``DatasetDict``.
    limit : int, optional
        Keep the first ``limit`` rows (before dropping empty texts).
    max_len : int, optional
        Truncate every utterance to ``max_len`` tokens.
    text, labels : column names
        For tables and files, the "text" column and the one numeric column besides it unless
        given; for presets, ``labels`` picks a subset of the preset's labels
        (e.g. ``labels="rating"`` for VADER); tables infer them when omitted.

    Returns
    -------
    RewardDataset
        With ``texts`` kept and ``label_names`` set. Texts that are empty or tokenize to
        nothing are dropped and counted in ``n_dropped_empty``.

    Examples
    --------
    >>> ds = load("vader:movie", limit=100)          # doctest: +SKIP
    >>> ds.label_names                               # doctest: +SKIP
    ('sentiment', 'rating')
    """
    return as_dataset(spec, text=text, labels=labels, tokenizer=tokenizer, split=split,
                      limit=limit, max_len=max_len)


_ACCEPTED = ("a preset name (see rankkit.datasets.available()), 'hub:<id>', a .csv/.tsv/"
             ".jsonl/.parquet path, a pandas DataFrame, a datasets.Dataset or DatasetDict, a "
             "dict of columns, a (texts, labels) or (token_id_lists, labels) tuple, a list of "
             "(text, label) pairs, or a "
             "RewardDataset")


def as_dataset(source, *, text=None, labels=None, tokenizer="gpt2", split: str | None = None,
               limit: int | None = None, max_len: int | None = None) -> RewardDataset:
    """Coerce anything a researcher holds into a :class:`RewardDataset`.

    Parameters
    ----------
    source
        One of

        * a preset name (``"vader:tweets"``, a hub preset of :data:`PRESETS`) or
          ``"hub:<id>"`` (any hub dataset, through ``datasets.load_dataset``);
        * a path (``str`` or ``os.PathLike``) to a ``.csv``, ``.tsv``, ``.jsonl``/``.json``
          (one object per line) or ``.parquet`` file, with ``text=`` and ``labels=``;
        * a table: a pandas ``DataFrame``, a ``datasets.Dataset``, a ``datasets.DatasetDict``
          (pick one with ``split=``; a single split is used without it) or a dict of
          columns;
        * ``(texts, labels)``: a list of str and a 1-D or 2-D array-like with one row per
          text;
        * ``[(text, label), ...]``: a list of pairs, each a str and a number (or a
          sequence of numbers, the same length in every pair, for several labels); a
          malformed pair is named by its index and value;
        * ``(token_ids, labels)``: a sequence of int sequences, a
          :class:`~rankkit.sequences.TokenSequences` or a tokenizer's output (with
          ``input_ids``), and labels as above; no tokenizer is used and ``vocab_size`` is
          the largest id + 1;
        * a :class:`RewardDataset`, returned as is (or its first ``limit`` utterances,
          truncated to ``max_len`` tokens).
    text, labels : str or list of str, optional
        Column names for files, hub ids and tables (several text columns are joined with a
        newline). For a table, ``text`` defaults to the column ``"text"`` and ``labels`` to
        its only numeric column other than the text. For presets ``labels`` picks a subset
        of the preset's labels; for tuples it names the label columns.
    tokenizer : str or tokenizer, default "gpt2"
        Anything :func:`rankkit.tokenizers.load` accepts; unused for token ids and a
        ``RewardDataset``.
    split : str, optional
        Hub split (preset default, e.g. ``"train"``), or the split of a ``DatasetDict``.
    limit : int, optional
        Keep the first ``limit`` rows (before dropping empty texts).
    max_len : int, optional
        Truncate every utterance to ``max_len`` tokens.

    Returns
    -------
    RewardDataset

    Raises
    ------
    TypeError
        For a source of none of the kinds above.
    ValueError, KeyError
        For a table whose columns cannot be inferred or are missing, labels whose length
        differs from the texts', a ``DatasetDict`` with several splits and no ``split=``,
        or a negative token id (each naming what to fix).

    Examples
    --------
    >>> ds = as_dataset((["good day", "bad day"], [1.0, 0.0]))       # doctest: +SKIP
    >>> ds = as_dataset(([[5, 7], [5]], [1.0, 0.0]))                 # no tokenizer
    >>> ds.vocab_size, ds.sequences.to_lists()
    (8, [[5, 7], [5]])
    """
    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if max_len is not None and int(max_len) < 1:
        raise ValueError(f"max_len must be >= 1 or None, got {max_len}")
    if isinstance(source, RewardDataset):
        _no_columns(text, labels, "a RewardDataset")
        return _restrict(source, limit, max_len)
    if _is_pair_list(source):
        return _from_pair_list(source, text, labels, tokenizer, limit, max_len)
    if isinstance(source, tuple) and len(source) == 2:
        return _from_pair(source, text, labels, tokenizer, limit, max_len)
    texts, y, names = _read_texts(source, text=text, labels=labels, split=split, limit=limit)
    y = y[:, 0] if y.shape[1] == 1 else y
    return _tokenize(texts, y, names, tokenizer, limit, max_len)


def _read_texts(source, *, text, labels, split, limit) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """(texts, labels (n, n_labels), label names) of a preset, hub id, file or table, before
    tokenizing: :func:`as_dataset` tokenizes all of them, a distributed rank only its slice
    (:func:`rankkit.distributed.shard_dataset`)."""
    if isinstance(source, str) and source.startswith("vader:"):
        name = source.split(":", 1)[1]
        if name not in VADER_SETS:
            raise KeyError(f"unknown VADER set {name!r}; available: "
                           f"{[f'vader:{k}' for k in VADER_SETS]}")
        texts, r = _read_vader(name)
        table = {"text": texts, "sentiment": (r + 4.0) / 8.0, "rating": r}
        texts, y, names = from_columns(table, "text", _as_list(labels) or ["sentiment", "rating"],
                                       where=source)
    elif isinstance(source, str) and (source in PRESETS or source.startswith("hub:")):
        if source in PRESETS:
            p = PRESETS[source]
            sl = split or p.split
            if limit is not None:
                sl = f"{sl}[:{int(limit)}]"
            texts, y, names = apply_preset(source, _load_hub_dataset(p.hub_id, p.config, sl, source),
                                           labels=labels)
        else:
            sl = split or "train"
            if limit is not None:
                sl = f"{sl}[:{int(limit)}]"
            texts, y, names = _from_table(_load_hub_dataset(source[4:], None, sl, source), text,
                                          labels, where=source)
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"{source!r} is neither a preset nor a file; presets: {list(available())}")
        texts, y, names = _read_file(path, text, labels)
    else:
        table, where = _as_table(source, split)
        texts, y, names = _from_table(table, text, labels, where=where)
    return texts, y, names


# ---------------------------------------------------------------------------------------
# as_dataset's parts
# ---------------------------------------------------------------------------------------
def _tokenize(texts, y, names, tokenizer, limit, max_len) -> RewardDataset:
    from . import tokenizers

    if limit is not None:
        texts, y = texts[:int(limit)], y[:int(limit)]
    if len(texts) == 0:
        raise ValueError(f"the dataset holds no texts ({len(names)} label column(s) {list(names)}, 0 "
                         f"rows): a header-only file or an empty table has no reward matrix to analyse")
    tok = tokenizers.load(tokenizer)
    seqs = tokenizers.encode_batch(tok, texts, max_len=max_len)
    return RewardDataset(seqs, y, label_names=names, vocab_size=len(tok), texts=texts)


def _no_columns(text, labels, what: str) -> None:
    if text is not None or labels is not None:
        raise ValueError(f"text= and labels= pick columns of a table; {what} has none (got "
                         f"text={text!r}, labels={labels!r}): drop them")


def _restrict(ds: RewardDataset, limit, max_len) -> RewardDataset:
    """``ds`` itself, or its first ``limit`` utterances truncated to ``max_len`` tokens."""
    if limit is None and max_len is None:
        return ds
    n = len(ds) if limit is None else min(int(limit), len(ds))
    seqs = ds.sequences.select(np.arange(n))
    if max_len is not None:
        seqs = seqs.truncate(int(max_len))
    out = RewardDataset(seqs, ds.responses[:n], label_names=ds.label_names,
                        vocab_size=ds.vocab_size, texts=None if ds.texts is None else ds.texts[:n])
    # no sequence became empty (max_len >= 1): keep the map back to the original input rows,
    # and count the empty input rows among those the kept ones span
    kept = None if ds.kept_index is None else ds.kept_index[:n]
    dropped = ds.n_dropped_empty
    if kept is not None and n < len(ds):
        dropped = int(kept[-1]) + 1 - n if n else 0
    object.__setattr__(out, "kept_index", kept)
    object.__setattr__(out, "n_dropped_empty", dropped)
    return out


def _label_rows(values, n: int, what: str) -> np.ndarray:
    """``values`` as float64 of shape (n,) or (n, n_labels), the lengths checked."""
    if isinstance(values, str):
        raise TypeError(f"labels must be numbers (1-D or 2-D, one row per {what}), got the "
                        f"string {values!r:.60}")
    try:
        y = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"labels must be numbers, 1-D or 2-D with one row per {what}; "
                         f"conversion failed: {e}") from None
    if y.ndim not in (1, 2):
        raise ValueError(f"labels must be 1-D or 2-D (one row per {what}), got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"length mismatch: {n} {what}s but {y.shape[0]} label rows; pass one "
                         f"label row per {what}")
    return y


def _is_pair_list(source) -> bool:
    """Whether ``source`` is a list (or tuple) of ``(text, label)`` pairs, not the 2-tuple
    ``(texts, labels)``: its first element is a 2-sequence starting with a str, and, for a
    2-tuple, that element's second item is not a str (in ``(texts, labels)`` it is a text)."""
    if not isinstance(source, list | tuple) or not source:
        return False
    first = source[0]
    if not (isinstance(first, list | tuple) and len(first) == 2 and isinstance(first[0], str)):
        return False
    return isinstance(source, list) or not isinstance(first[1], str)


def _pair_label(value, i: int) -> list[float]:
    """The label of pair ``i`` as a list of finite floats (one per label column); a str is
    never parsed ("0.5" in a pair is far more often a column mix-up than a number)."""
    items = list(value) if isinstance(value, list | tuple | np.ndarray) else [value]
    out = []
    for v in items:
        try:
            if isinstance(v, str | bytes):
                raise TypeError
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"item {i}: label {value!r:.60} is not a number; each item of a list "
                             f"of (text, label) pairs needs a numeric label (or a list of "
                             f"numbers for several labels)") from None
        if not math.isfinite(x):
            raise ValueError(f"item {i}: label {value!r:.60} is not finite; labels must be "
                             f"finite numbers")
        out.append(x)
    if not out:
        raise ValueError(f"item {i}: label {value!r} is empty; give at least one number")
    return out


def _from_pair_list(source, text, labels, tokenizer, limit, max_len) -> RewardDataset:
    """``[(text, label), ...]``: every pair checked, the first bad one named by its index."""
    if text is not None:
        raise ValueError(f"text= picks a table column; a list of (text, label) pairs has none "
                         f"(got text={text!r}): drop it")
    texts, rows = [], []
    for i, item in enumerate(source):
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise ValueError(f"item {i}: expected a (text, label) pair, got {item!r:.80}")
        t, value = item
        if not isinstance(t, str):
            raise TypeError(f"item {i}: the text must be a str, got {type(t).__name__} {t!r:.60}")
        row = _pair_label(value, i)
        if rows and len(row) != len(rows[0]):
            raise ValueError(f"item {i}: {len(row)} label(s) {value!r} but item 0 has "
                             f"{len(rows[0])}; every pair needs the same number of labels")
        texts.append(t)
        rows.append(row)
    y = np.asarray(rows, dtype=np.float64)
    if y.shape[1] == 1 and not isinstance(source[0][1], list | tuple | np.ndarray):
        y = y[:, 0]
    names = None if labels is None else _as_list(labels)
    return _tokenize(texts, _label_rows(y, len(texts), "text"), names, tokenizer, limit, max_len)


def _from_pair(source, text, labels, tokenizer, limit, max_len) -> RewardDataset:
    """``(texts, labels)`` or ``(token_ids, labels)``; ``labels=`` names the label columns."""
    first, values = source
    if text is not None:
        raise ValueError(f"text= picks a table column; a (texts, labels) tuple has none (got "
                         f"text={text!r}): drop it")
    names = None if labels is None else _as_list(labels)
    if isinstance(first, str):
        raise TypeError("the first element of (texts, labels) must be a list of str, got one "
                        f"str {first!r:.60}; wrap it in a list")
    ids = isinstance(first, TokenSequences | Mapping)  # Mapping: a tokenizer's output
    if not (ids or (hasattr(first, "__len__") and hasattr(first, "__iter__"))):
        raise TypeError(f"the first element of a 2-tuple must be a list of texts or of token id "
                        f"lists (or a TokenSequences), got {type(first).__name__}")
    if not ids and any(isinstance(t, str) for t in first):
        texts = list(first)
        y = _label_rows(values, len(texts), "text")
        return _tokenize(texts, y, names, tokenizer, limit, max_len)
    seqs = TokenSequences.from_encoding(first)
    y = _label_rows(values, len(seqs), "sequence")
    if seqs.tokens.size and seqs.tokens.min() < 0:
        pos = int(np.argmax(seqs.tokens < 0))
        row = int(np.searchsorted(seqs.offsets, pos, side="right") - 1)
        raise ValueError(f"sequence {row}, position {pos - int(seqs.offsets[row])}: token id "
                         f"{int(seqs.tokens[pos])} is negative; token ids must be >= 0")
    vocab_size = int(seqs.tokens.max()) + 1 if seqs.tokens.size else 1
    if limit is not None:  # as for texts: the first rows, before empty ones are dropped
        n = min(int(limit), len(seqs))
        seqs, y = seqs.select(np.arange(n)), y[:n]
    if max_len is not None:
        seqs = seqs.truncate(int(max_len))
    return RewardDataset(seqs, y, label_names=names, vocab_size=vocab_size)


_DATASET_FIX = ("use a local copy: save the table once (datasets.Dataset.to_parquet / to_csv) "
                "and pass the file with text= and labels=, or pass 'hub:<local folder>'; the "
                "vader:* presets work offline; or connect to the network once so that the "
                "Hugging Face cache holds it")


def _load_hub_dataset(hub_id: str, config: str | None, split: str, spec: str):
    """``datasets.load_dataset`` that fails fast without a network (rankkit._hub.from_hub):
    a cached copy still loads offline; a cache miss raises HubUnreachableError at once."""
    import datasets as hf

    from ._hub import from_hub

    def load(offline: bool):  # offline=True runs in rankkit._hub.hub_offline_mode()
        return hf.load_dataset(hub_id, config, split=split)

    shown = repr(hub_id) if spec == f"hub:{hub_id}" else f"{hub_id!r} (preset {spec!r})"
    return from_hub(hub_id, load, what="hub dataset", fix=_DATASET_FIX, shown_as=shown)


def _loaded(module: str, name: str):
    """Class ``module.name`` if ``module`` is already imported (else nothing can be one)."""
    cls = getattr(sys.modules.get(module), name, None)
    return cls if isinstance(cls, type) else None


def _as_table(source, split):
    """(columns, where) for a DataFrame, Dataset, DatasetDict or dict; TypeError otherwise."""
    dataset_dict = _loaded("datasets", "DatasetDict")
    if dataset_dict is not None and isinstance(source, dataset_dict):
        splits = list(source)
        if split is None:
            if len(splits) != 1:
                raise ValueError(f"a DatasetDict with splits {splits} needs split=<one of "
                                 f"{splits}>")
            split = splits[0]
        if split not in source:
            raise KeyError(f"split {split!r} not in the DatasetDict; available splits: {splits}")
        return source[split], f"DatasetDict[{split!r}]"
    dataset = _loaded("datasets", "Dataset")
    if dataset is not None and isinstance(source, dataset):
        return source, "Dataset"
    if (type(source).__module__.startswith("pandas") and hasattr(source, "columns")
            and hasattr(source, "to_dict")):
        cols = list(source.columns)
        if len(set(cols)) != len(cols):
            dup = next(c for c in cols if cols.count(c) > 1)
            raise ValueError(f"DataFrame: column {dup!r} appears more than once; rename it")
        return source.to_dict(orient="list"), "DataFrame"
    if isinstance(source, Mapping):
        return source, "dict"
    kind = type(source)
    given = kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"
    hint = ("; a scipy.sparse matrix is already a reward matrix: use "
            "rankkit.matrix.as_reward_matrix" if kind.__module__.startswith("scipy") else "")
    raise TypeError(f"cannot make a RewardDataset from {given}; expected {_ACCEPTED}{hint}")


_NUMBER = (bool, int, float, np.number, np.bool_)


def _file_numeric(table, column) -> bool:
    return _parses_as_float(table[column])


def _is_numeric(table, column) -> bool:
    feats = getattr(table, "features", None)
    if feats is not None and column in feats:  # a datasets.Dataset: ask its schema
        dtype = getattr(feats[column], "dtype", None)
        return isinstance(dtype, str) and dtype.startswith(("bool", "int", "uint", "float"))
    values = table[column]
    if isinstance(values, np.ndarray):
        return values.ndim == 1 and values.dtype.kind in "biuf"
    return all(isinstance(v, _NUMBER) for v in values)


def _parses_as_float(values) -> bool:
    """Every value is a number or a string that parses as one (a CSV column of numbers)."""
    for v in values:
        if isinstance(v, _NUMBER):
            continue
        try:
            float(v)
        except (TypeError, ValueError):
            return False
    return True


def _from_table(table, text, labels, *, where: str, numeric=None, line_of=None):
    """:func:`from_columns`, with ``text`` / ``labels`` inferred when not given: the column
    named "text", and the one numeric column besides it."""
    numeric = numeric or _is_numeric
    names = list(table.column_names if hasattr(table, "column_names") else table.keys())
    if text is None:
        if "text" not in names:
            raise ValueError(f"{where}: no column named 'text'; columns: {names}; pass "
                             "text=<column name>")
        text = "text"
    if labels is None:
        skip = set(_as_list(text))
        cols = [c for c in names if c not in skip and numeric(table, c)]
        if len(cols) != 1:
            found = f"numeric columns {cols}" if cols else "no numeric column"
            raise ValueError(f"{where}: cannot tell the label column ({found} besides the text); "
                             f"columns: {names}; pass labels=<column name or list of names>")
        labels = cols[0]
    if line_of is None:
        return from_columns(table, text, labels, where=where)
    return from_columns(table, text, labels, where=where, line_of=line_of)
