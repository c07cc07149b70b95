"""Reading labelled text from tables: columns, local files (CSV / TSV / JSONL / Parquet),
``datasets`` and pandas tables, with errors that name the file, line and column."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

_ACCEPTED = ("a preset name (see rankkit.datasets.available()), 'hub:<id>', a .csv/.tsv/"
             ".jsonl/.parquet path, a pandas DataFrame, a datasets.Dataset or DatasetDict, a "
             "dict of columns, a (texts, labels) or (token_id_lists, labels) tuple, a list of "
             "(text, label) pairs, or a "
             "RewardDataset")


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


_DATASET_FIX = ("use a local copy: save the table once (datasets.Dataset.to_parquet / to_csv) "
                "and pass the file with text= and labels=, or pass 'hub:<local folder>'; the "
                "vader:* presets work offline; or connect to the network once so that the "
                "Hugging Face cache holds it")


def _load_hub_dataset(hub_id: str, config: str | None, split: str, spec: str):
    """``datasets.load_dataset`` that fails fast without a network (rankkit._hub.from_hub):
    a cached copy still loads offline; a cache miss raises HubUnreachableError at once."""
    import datasets as hf

    from .._hub import from_hub

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
