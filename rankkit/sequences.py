"""Ragged token storage and labelled reward datasets.

A dataset of n utterances u^(i) with responses y^(i) (paper 002, §2.2, eq. 3) is stored
as one flat ``int32`` token array plus ``int64`` offsets, so that a million sequences cost
one allocation, not a million Python lists.

``int32`` holds every realistic vocabulary (GPT-2: 50,257; Llama-3: 128,256) at half the
memory of ``int64``; offsets are ``int64`` because the total token count of a corpus can
pass 2**31.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._backend import to_numpy

__all__ = ["TokenSequences", "RewardDataset"]


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


class TokenSequences:
    """Ragged array of token-id sequences: flat ``tokens`` plus ``offsets``.

    Sequence ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``.

    Parameters
    ----------
    tokens : array_like of int, shape (total,)
        All tokens, concatenated.
    offsets : array_like of int, shape (n + 1,)
        Non-decreasing, ``offsets[0] == 0`` and ``offsets[-1] == total``.

    Examples
    --------
    >>> s = TokenSequences.from_lists([[5, 7], [5], [9, 9, 9]])
    >>> len(s), s.lengths.tolist(), s[2].tolist()
    (3, [2, 1, 3], [9, 9, 9])
    """

    __slots__ = ("tokens", "offsets")

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray):
        tokens = np.asarray(tokens)
        offsets = np.asarray(offsets)
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
        if offsets.ndim != 1 or offsets.size < 1:
            raise ValueError(f"offsets must be 1-D with at least one entry, got shape {offsets.shape}")
        if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
            raise TypeError(f"tokens must be integers, got dtype {tokens.dtype}")
        if offsets[0] != 0 or offsets[-1] != tokens.size:
            raise ValueError(
                f"offsets must start at 0 and end at len(tokens)={tokens.size}; "
                f"got {int(offsets[0])} … {int(offsets[-1])}"
            )
        steps = np.diff(offsets)
        if (steps < 0).any():
            i = _first_bad(steps < 0)
            raise ValueError(f"offsets must be non-decreasing; sequence {i} has negative length")
        if tokens.size and (tokens.min() < np.iinfo(np.int32).min or tokens.max() > np.iinfo(np.int32).max):
            pos = _first_bad((tokens < np.iinfo(np.int32).min) | (tokens > np.iinfo(np.int32).max))
            row = int(np.searchsorted(offsets, pos, side="right") - 1)
            raise ValueError(f"sequence {row}, position {pos - int(offsets[row])}: token id "
                             f"{int(tokens[pos])} does not fit in int32")
        self.tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)

    # ---- constructors -------------------------------------------------------------
    @classmethod
    def from_lists(cls, seqs: Iterable[Sequence[int] | np.ndarray]) -> TokenSequences:
        """Build from any iterable of integer sequences (lists, tuples, arrays)."""
        arrays = []
        for i, s in enumerate(seqs):
            a = np.asarray(s).reshape(-1)
            # refuse floats rather than truncate them: 1.5 silently becoming token 1
            # would corrupt the trie without a trace
            if a.size and not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
                raise TypeError(f"sequence {i}: token ids must be integers, got dtype {a.dtype} "
                                f"({a[:5].tolist()}…); pass the tokenizer's input_ids")
            arrays.append(a.astype(np.int64))
        lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        return cls(tokens, offsets)

    @classmethod
    def from_padded(cls, ids: np.ndarray, lengths: np.ndarray | None = None,
                    attention_mask: np.ndarray | None = None) -> TokenSequences:
        """Build from a right-padded 2-D array, with ``lengths`` or an ``attention_mask``.

        Only right padding is accepted: a mask with a zero before a one is refused, since
        left-padded rows would silently keep pad tokens.
        """
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"padded ids must be 2-D, got shape {ids.shape}")
        if attention_mask is not None:
            mask = np.asarray(attention_mask).astype(bool)
            if mask.shape != ids.shape:
                raise ValueError(f"attention_mask shape {mask.shape} != ids shape {ids.shape}")
            lengths = mask.sum(axis=1)
            holes = mask[:, 1:] & ~mask[:, :-1]
            if holes.any():
                row = _first_bad(holes.any(axis=1))
                raise ValueError(f"row {row}: attention_mask is not right-padded (a 0 precedes a 1)")
        elif lengths is None:
            lengths = np.full(ids.shape[0], ids.shape[1])
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.shape != (ids.shape[0],):
            raise ValueError(f"lengths must have one entry per row: {ids.shape[0]} rows, "
                             f"{lengths.size} lengths")
        bad = (lengths < 0) | (lengths > ids.shape[1])
        if bad.any():
            row = _first_bad(bad)
            raise ValueError(f"row {row}: length {int(lengths[row])} outside [0, {ids.shape[1]}] "
                             "(the padded width)")
        keep = np.arange(ids.shape[1])[None, :] < lengths[:, None]
        offsets = np.zeros(ids.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(ids[keep], offsets)

    @classmethod
    def from_encoding(cls, encoding) -> TokenSequences:
        """Build from a tokenizer's output: a ``BatchEncoding``/dict with ``input_ids``
        (list of lists, or a padded array with ``attention_mask``), or a list of lists."""
        if isinstance(encoding, TokenSequences):
            return encoding
        if hasattr(encoding, "keys") and "input_ids" in encoding:
            ids = encoding["input_ids"]
            mask = encoding.get("attention_mask") if hasattr(encoding, "get") else None
            # a torch or CuPy tensor (any device) becomes NumPy; lists stay lists
            if hasattr(ids, "shape") and not isinstance(ids, np.ndarray):
                ids = to_numpy(ids)
            if hasattr(mask, "shape") and not isinstance(mask, np.ndarray):
                mask = to_numpy(mask)
            if isinstance(ids, np.ndarray) and ids.ndim == 2:
                return cls.from_padded(ids, attention_mask=mask)
            return cls.from_lists(ids)
        if isinstance(encoding, np.ndarray) and encoding.ndim == 2:
            return cls.from_padded(encoding)
        return cls.from_lists(encoding)

    # ---- access -------------------------------------------------------------------
    def __len__(self) -> int:
        return self.offsets.size - 1

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sequence index {i} out of range for {n} sequences")
        i %= n
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self):
        for i in range(len(self)):
            yield self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def __repr__(self) -> str:
        return f"TokenSequences(n={len(self)}, total_tokens={self.tokens.size})"

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def to_lists(self) -> list[list[int]]:
        return [s.tolist() for s in self]

    def select(self, idx: np.ndarray) -> TokenSequences:
        """Sequences ``idx`` (integer indices or a boolean mask), in that order."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        lengths = self.lengths[idx]
        offsets = np.zeros(idx.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if idx.size == 0:
            return TokenSequences(np.zeros(0, np.int32), offsets)
        # gather every selected token with one fancy index: start of each sequence repeated
        # over its length plus the position inside it
        starts = np.repeat(self.offsets[:-1][idx], lengths)
        within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
        return TokenSequences(self.tokens[starts + within], offsets)

    def to_padded(self, side: str = "right", pad: int = 0, prepend: Sequence[int] = (),
                  width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, attention_mask)``, both int64 of shape (n, width): every sequence, with
        ``prepend`` (e.g. ``[bos]``) in front, padded with ``pad`` on ``side``.

        The inverse of :meth:`from_padded` for ``side="right"`` and no ``prepend``
        (``from_padded(*to_padded())`` is the identity). Left padding is what incremental
        decoding wants (every row's next token goes in the last column); right padding with
        causal attention is what teacher forcing wants. ``width`` defaults to the longest row
        (including ``prepend``); a shorter ``width`` is refused, not a silent cut
        (use :meth:`truncate` first). int64 because that is the dtype embeddings index with.
        """
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        head = np.asarray(prepend, dtype=np.int64).reshape(-1)
        lengths = self.lengths + head.size
        need = int(lengths.max()) if len(self) else head.size
        T = need if width is None else int(width)
        if T < need:
            row = _first_bad(lengths > T)
            raise ValueError(f"width={T} is shorter than row {row} ({int(lengths[row])} tokens "
                             f"with prepend); truncate the sequences first")
        col = np.arange(T)[None, :]
        keep = col >= (T - lengths)[:, None] if side == "left" else col < lengths[:, None]
        flat = self.tokens.astype(np.int64)
        if head.size:  # row-major order of `keep` is each row's block in turn: head, tokens
            starts = (np.cumsum(lengths) - lengths).astype(np.int64)
            at_head = (starts[:, None] + np.arange(head.size)[None, :]).ravel()
            with_head = np.empty(int(lengths.sum()), dtype=np.int64)
            is_head = np.zeros(with_head.size, dtype=bool)
            is_head[at_head] = True
            with_head[is_head] = np.tile(head, len(self))
            with_head[~is_head] = flat
            flat = with_head
        ids = np.full((len(self), T), int(pad), dtype=np.int64)
        ids[keep] = flat
        return ids, keep.astype(np.int64)

    def truncate(self, max_len: int) -> TokenSequences:
        """Keep at most the first ``max_len`` tokens of every sequence."""
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        lengths = np.minimum(self.lengths, max_len)
        offsets = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        starts = np.repeat(self.offsets[:-1], lengths)
        within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
        return TokenSequences(self.tokens[starts + within], offsets)


def _as_responses(responses) -> np.ndarray:
    """Responses as float64, (n,) or (n, n_labels); a ragged row or a value that is not a number
    is named by its row (and column) instead of NumPy's shape message."""
    try:
        return np.asarray(responses, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    rows = list(responses)
    width = None
    for i, row in enumerate(rows):
        vals = list(row) if isinstance(row, (list, tuple, np.ndarray)) else [row]
        if isinstance(row, (list, tuple, np.ndarray)):
            if width is None:
                width = len(vals)
            elif len(vals) != width:
                raise ValueError(f"responses row {i} has {len(vals)} value(s) but row 0 has {width}: "
                                 "every utterance needs one response per label")
        for j, v in enumerate(vals):
            try:
                float(v)
            except (TypeError, ValueError):
                where = f"row {i}" + (f", column {j}" if isinstance(row, (list, tuple, np.ndarray)) else "")
                raise ValueError(f"responses {where}: {v!r} is not a number") from None
    raise ValueError("responses mix scalars and rows; give shape (n,) or (n, n_labels)")


@dataclass(frozen=True)
class RewardDataset:
    """Labelled utterances D = {(u^(i), y^(i))} (paper 002, §2.2).

    Parameters
    ----------
    sequences : TokenSequences or anything ``TokenSequences.from_encoding`` accepts
        The token ids of each utterance.
    responses : array_like, shape (n,) or (n, n_labels)
        Response per utterance and label; stored as ``float64`` (means of responses are
        accumulated in the reward matrix and float32 would lose the 1e-6 resolution the
        min-rank certificate is stated at).
    label_names : sequence of str, optional
        One name per label column; defaults to ``("label_0", …)``.
    vocab_size : int
        Number of columns of the reward matrix; every token id must be in ``[0, vocab_size)``.
    texts : sequence of str, optional
        The source texts, kept for inspection only.

    Notes
    -----
    Empty sequences are dropped (they contribute no prefix, eq. 3) and counted in
    ``n_dropped_empty``; ``kept_index`` maps the kept rows back to the input rows.
    Invalid input (non-finite responses, token ids out of range, length mismatch) raises
    ``ValueError`` naming the first offending row.
    """

    sequences: TokenSequences
    responses: np.ndarray
    label_names: tuple[str, ...]
    vocab_size: int
    texts: tuple[str, ...] | None = None
    n_dropped_empty: int = 0
    kept_index: np.ndarray | None = field(default=None, repr=False)

    def __init__(self, sequences, responses, label_names=None, vocab_size=None, texts=None):
        seqs = TokenSequences.from_encoding(sequences)
        y = _as_responses(responses)
        if y.ndim not in (1, 2):
            raise ValueError(f"responses must have shape (n,) or (n, n_labels), got {y.shape}")
        if y.shape[0] != len(seqs):
            raise ValueError(
                f"length mismatch: {len(seqs)} sequences but {y.shape[0]} responses")
        if texts is not None and len(texts) != len(seqs):
            raise ValueError(f"length mismatch: {len(seqs)} sequences but {len(texts)} texts")
        bad = ~np.isfinite(y)
        if bad.any():
            row = _first_bad(bad.reshape(y.shape[0], -1).any(axis=1))
            raise ValueError(f"row {row}: response {y[row].tolist()} is not finite (NaN or inf)")
        if vocab_size is None:
            raise ValueError("vocab_size is required (the tokenizer's len(), e.g. 50257 for GPT-2)")
        vocab_size = int(vocab_size)
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if seqs.tokens.size:
            bad_tok = (seqs.tokens < 0) | (seqs.tokens >= vocab_size)
            if bad_tok.any():
                pos = _first_bad(bad_tok)
                row = int(np.searchsorted(seqs.offsets, pos, side="right") - 1)
                raise ValueError(
                    f"row {row}, position {pos - int(seqs.offsets[row])}: token id "
                    f"{int(seqs.tokens[pos])} is outside [0, vocab_size={vocab_size})")
        n_labels = 1 if y.ndim == 1 else y.shape[1]
        if label_names is None:
            label_names = tuple(f"label_{i}" for i in range(n_labels))
        elif isinstance(label_names, str):
            label_names = (label_names,)
        label_names = tuple(str(s) for s in label_names)
        if len(label_names) != n_labels:
            raise ValueError(f"{len(label_names)} label_names for {n_labels} response columns")
        keep = seqs.lengths > 0
        n_empty = int((~keep).sum())
        if n_empty:
            kept = np.flatnonzero(keep)
            seqs, y = seqs.select(kept), y[kept]
            texts = None if texts is None else [texts[i] for i in kept]
        else:
            kept = np.arange(len(seqs))
        object.__setattr__(self, "sequences", seqs)
        object.__setattr__(self, "responses", y)
        object.__setattr__(self, "label_names", label_names)
        object.__setattr__(self, "vocab_size", vocab_size)
        object.__setattr__(self, "texts", None if texts is None else tuple(texts))
        object.__setattr__(self, "n_dropped_empty", n_empty)
        object.__setattr__(self, "kept_index", kept)

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def n_labels(self) -> int:
        return 1 if self.responses.ndim == 1 else self.responses.shape[1]

    def label_index(self, label: int | str) -> int:
        """Column index of ``label`` (an int or one of ``label_names``)."""
        return _label_index(label, self.label_names)

    def select(self, idx) -> RewardDataset:
        """The utterances ``idx`` (integer indices or a boolean mask over the rows), in that
        order, with their responses, texts and labels; ``kept_index`` keeps pointing at the
        rows of the original input."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"boolean mask has shape {idx.shape}; the dataset has "
                                 f"{len(self)} rows")
            idx = np.flatnonzero(idx)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"select needs integer indices or a boolean mask, got {idx.dtype}")
        idx = idx.astype(np.int64).reshape(-1)
        bad = (idx < -len(self)) | (idx >= len(self))
        if bad.any():
            raise IndexError(f"index {int(idx[_first_bad(bad)])} is out of range for a dataset "
                             f"of {len(self)} rows")
        idx = np.where(idx < 0, idx + len(self), idx)
        out = RewardDataset(self.sequences.select(idx), self.responses[idx], self.label_names,
                            self.vocab_size,
                            None if self.texts is None else [self.texts[i] for i in idx])
        object.__setattr__(out, "kept_index", self.kept_index[idx])
        return out

    def __repr__(self) -> str:
        return (f"RewardDataset(n={len(self)}, labels={list(self.label_names)}, "
                f"vocab_size={self.vocab_size}, total_tokens={self.sequences.tokens.size}, "
                f"dropped_empty={self.n_dropped_empty})")


def _label_index(label: int | str, names: Sequence[str]) -> int:
    if isinstance(label, str):
        if label not in names:
            raise KeyError(f"label {label!r} not found; available: {list(names)}")
        return list(names).index(label)
    i = int(label)
    if not -len(names) <= i < len(names):
        raise IndexError(f"label index {i} out of range for {len(names)} labels {list(names)}")
    return i % len(names)
