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

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..sequences import RewardDataset, TokenSequences
from ._presets import PRESETS, Preset, apply_preset
from ._tables import (
    _as_list,
    _as_table,
    _from_table,
    _load_hub_dataset,
    _loaded,  # noqa: F401  (rankkit.distributed.build reads tables through it)
    _read_file,
    from_columns,
)
from ._vader import (  # noqa: F401  (the archive's name, version and hash: rankkit_ext.lm fingerprints them)
    VADER_SDIST,
    VADER_SETS,
    VADER_SHA256,
    VADER_VERSION,
    _read_vader,
    cache_dir,
)

__all__ = ["available", "load", "as_dataset", "apply_preset", "from_columns", "cache_dir", "PRESETS",
           "VADER_SETS", "Preset"]


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
    from .. import tokenizers

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
