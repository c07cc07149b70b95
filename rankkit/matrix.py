"""The sparse reward matrix P_Ω(R) (paper 002, §3.1.1, eq. 5).

Rows are prefixes x', columns are next tokens v, and a stored cell (x', v) ∈ Ω holds

.. math::

    R[x', v] = \\frac{\\sum_{(u, y):\\, u_{1:t} = [x', v]} \\lambda_t(u)\\, y}
                    {\\sum_{(u, y):\\, u_{1:t} = [x', v]} \\lambda_t(u)},
    \\qquad \\lambda_t(u) = \\frac{2t}{L(L+1)},\\; L = l(u).

The pattern is CSR (``indptr``, ``indices``, sorted columns in every row). A stored
value of 0.0 is an *observed* zero, never a missing entry: every consumer in rankkit
works from the pattern, never from ``value != 0``.

Values are ``float64``: they are weighted means of responses and the certificates of
App. C.3 are stated at a 1e-6 MSE resolution, which float32 accumulation would blur.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .sequences import _label_index

__all__ = ["RewardMatrix", "as_reward_matrix"]


@dataclass(frozen=True, eq=False)
class RewardMatrix:
    """Observed cells of a reward matrix, in CSR layout, for one or more labels.

    Attributes
    ----------
    shape : (int, int)
        (number of prefixes N, vocabulary size :math:`|V|`).
    indptr : ndarray of int64, shape (N + 1,)
    indices : ndarray of int32, shape (nnz,)
        Column (token id) of each observed cell; sorted within each row.
    values : ndarray of float64, shape (nnz,) or (nnz, n_labels)
        λ-weighted mean response of each cell (eq. 5).
    weights : ndarray of float64, shape (nnz,)
        Σλ over the utterances that fall in the cell.
    counts : ndarray of int64, shape (nnz,)
        Number of utterances that fall in the cell.
    label_names : tuple of str
    prefix_parent : ndarray of int64, shape (N_trie,), or None
        Trie node of the prefix with the last token removed (−1 for the empty prefix).
        Every proper prefix of a node's prefix is itself a node, so the trie is closed.
    prefix_token : ndarray of int32, shape (N_trie,), or None
        Last token of the node's prefix (−1 for the empty prefix).
    prefix_len : ndarray of int32, shape (N_trie,), or None
        Length of the node's prefix.
    prefix_node : ndarray of int64, shape (N,), or None
        Trie node of each row. ``None`` means row ``i`` is node ``i`` (``N_trie == N``), as
        built by ``build_reward_matrix``. A reduced matrix (``reduce_omega2``) drops rows
        whose prefixes are still needed to spell the kept ones, so it shares the
        original trie arrays and sets ``prefix_node``; use :meth:`prefix` or
        :attr:`row_prefix_len` rather than indexing the trie arrays by row.
    row_map, col_map : ndarray of int64, or None
        For a reduced matrix (``reduce_omega2``): original row / column of each row / column.
    n_single_rows : int
        Rows with exactly one observed cell that a reduction removed (the "+1" of Lemma 3).
    meta : dict
        Free-form provenance (dataset name, tokenizer, max_len, ...).

    Notes
    -----
    Matrices that do not come from text (the synthetic cases) carry no prefixes; their
    ``prefix`` method raises.
    """

    shape: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    weights: np.ndarray
    counts: np.ndarray
    label_names: tuple[str, ...] = ("label_0",)
    prefix_parent: np.ndarray | None = None
    prefix_token: np.ndarray | None = None
    prefix_len: np.ndarray | None = None
    prefix_node: np.ndarray | None = None
    row_map: np.ndarray | None = None
    col_map: np.ndarray | None = None
    n_single_rows: int = 0
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        n, m = (int(s) for s in self.shape)
        object.__setattr__(self, "shape", (n, m))
        indptr = np.ascontiguousarray(self.indptr, dtype=np.int64)
        indices = np.ascontiguousarray(self.indices, dtype=np.int32)
        values = np.ascontiguousarray(self.values, dtype=np.float64)
        weights = np.ascontiguousarray(self.weights, dtype=np.float64)
        counts = np.ascontiguousarray(self.counts, dtype=np.int64)
        if indptr.shape != (n + 1,) or indptr[0] != 0 or indptr[-1] != indices.size:
            raise ValueError(f"indptr must have shape ({n + 1},), start at 0 and end at nnz={indices.size}")
        nnz = indices.size
        if values.shape[0] != nnz or values.ndim not in (1, 2):
            raise ValueError(f"values must have shape ({nnz},) or ({nnz}, n_labels), got {values.shape}")
        if weights.shape != (nnz,) or counts.shape != (nnz,):
            raise ValueError(f"weights and counts must have shape ({nnz},)")
        n_labels = 1 if values.ndim == 1 else values.shape[1]
        names = tuple(self.label_names)
        if len(names) != n_labels:
            raise ValueError(f"{len(names)} label_names for {n_labels} value columns")
        if nnz and (indices.min() < 0 or indices.max() >= m):
            raise ValueError(f"column indices must lie in [0, {m})")
        trie = (self.prefix_parent, self.prefix_token, self.prefix_len)
        if any(a is not None for a in trie) and not all(a is not None for a in trie):
            raise ValueError("prefix_parent, prefix_token and prefix_len must be given together")
        n_trie = n if self.prefix_node is None else (None if trie[0] is None else np.shape(trie[0])[0])
        for name, arr in (("prefix_parent", self.prefix_parent), ("prefix_token", self.prefix_token),
                          ("prefix_len", self.prefix_len), ("row_map", self.row_map),
                          ("prefix_node", self.prefix_node)):
            want = n if name in ("row_map", "prefix_node") else n_trie
            if arr is not None and np.shape(arr) != (want,):
                raise ValueError(f"{name} must have shape ({want},), got {np.shape(arr)}")
        if self.prefix_node is not None and trie[0] is None:
            raise ValueError("prefix_node given without the trie arrays prefix_parent/token/len")
        if self.col_map is not None and np.shape(self.col_map) != (m,):
            raise ValueError(f"col_map must have shape ({m},), got {np.shape(self.col_map)}")
        for k, v in (("indptr", indptr), ("indices", indices), ("values", values),
                     ("weights", weights), ("counts", counts), ("label_names", names)):
            object.__setattr__(self, k, v)

    # ---- constructors -------------------------------------------------------------
    @classmethod
    def from_coo(cls, rows, cols, values, shape, *, weights=None, counts=None,
                 label_names: Sequence[str] | None = None, **extra) -> RewardMatrix:
        """Build from coordinate triplets; every (row, col) must appear at most once.

        ``weights`` default to 1 and ``counts`` to 1 per cell, so a plain matrix with a
        pattern behaves as one utterance per observed cell.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        cols = np.asarray(cols, dtype=np.int64).reshape(-1)
        vals = np.asarray(values, dtype=np.float64)
        n, m = (int(s) for s in shape)
        if rows.shape != cols.shape or vals.shape[0] != rows.size:
            raise ValueError(f"rows, cols and values disagree in length: {rows.size}, {cols.size}, {vals.shape[0]}")
        if rows.size:
            if rows.min() < 0 or rows.max() >= n:
                i = int(np.flatnonzero((rows < 0) | (rows >= n))[0])
                raise ValueError(f"entry {i}: row {rows[i]} outside [0, {n})")
            if cols.min() < 0 or cols.max() >= m:
                i = int(np.flatnonzero((cols < 0) | (cols >= m))[0])
                raise ValueError(f"entry {i}: column {cols[i]} outside [0, {m})")
        if not np.isfinite(vals).all():
            i = int(np.flatnonzero(~np.isfinite(vals.reshape(rows.size, -1)).all(axis=1))[0])
            raise ValueError(f"entry {i} (row {rows[i]}, column {cols[i]}): value is not finite")
        order = np.lexsort((cols, rows))
        rows, cols, vals = rows[order], cols[order], vals[order]
        if rows.size > 1:
            dup = (rows[1:] == rows[:-1]) & (cols[1:] == cols[:-1])
            if dup.any():
                i = int(np.flatnonzero(dup)[0])
                raise ValueError(f"cell (row {rows[i]}, column {cols[i]}) is given more than once")
        w = np.ones(rows.size) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)[order]
        c = np.ones(rows.size, np.int64) if counts is None else np.asarray(counts, dtype=np.int64).reshape(-1)[order]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        n_labels = 1 if vals.ndim == 1 else vals.shape[1]
        if label_names is None:
            label_names = tuple(f"label_{i}" for i in range(n_labels))
        return cls((n, m), indptr, cols, vals, w, c, tuple(label_names), **extra)

    @classmethod
    def from_scipy(cls, S, *, label_name: str = "label_0") -> RewardMatrix:
        """Build from a ``scipy.sparse`` matrix whose *stored* entries (explicit zeros
        included) are the observations. Duplicate stored entries are refused, not summed."""
        if not sp.issparse(S):
            raise TypeError(f"expected a scipy.sparse matrix or array, got {type(S).__name__}")
        coo = S.tocoo()
        return cls.from_coo(coo.row, coo.col, coo.data, coo.shape, label_names=(label_name,))

    @classmethod
    def from_dense(cls, values: np.ndarray, mask: np.ndarray | None = None, **kw) -> RewardMatrix:
        """Build from a dense array; ``mask`` (bool) marks observed cells (all if None,
        NaN cells excluded)."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2:
            raise ValueError(f"values must be 2-D, got shape {values.shape}")
        mask = np.isfinite(values) if mask is None else np.asarray(mask, dtype=bool)
        if mask.shape != values.shape:
            raise ValueError(f"mask shape {mask.shape} != values shape {values.shape}")
        r, c = np.nonzero(mask)
        return cls.from_coo(r, c, values[r, c], values.shape, **kw)

    # ---- views ----------------------------------------------------------------------
    def transpose(self) -> RewardMatrix:
        """The observed cells of Rᵀ, shape ``(|V|, N)``, in CSR with sorted columns.

        ``values`` (every label column), ``weights`` and ``counts`` move with their cells;
        explicit zeros stay observed. ``label_names``, ``n_single_rows`` and ``meta`` are
        kept (rank is transpose-invariant, so the Lemma 3 "+1" still applies), ``row_map``
        and ``col_map`` are swapped, and the prefix (trie) arrays are dropped: the rows of
        Rᵀ are tokens, not prefixes.

        Returns
        -------
        RewardMatrix

        Notes
        -----
        One counting sort by column (scipy's CSR → CSC conversion) on the cell positions,
        O(nnz + N + :math:`|V|`). Within each column the conversion visits rows in ascending
        order, so the columns of every row of Rᵀ come out sorted. The positions are stored
        shifted by one so that no entry is zero and nothing can be dropped on the way.

        Examples
        --------
        >>> R = RewardMatrix.from_coo([0, 0, 1], [1, 2, 2], [1.0, 0.0, 3.0], (2, 3))
        >>> T = R.transpose()
        >>> T.shape, T.indptr.tolist(), T.indices.tolist(), T.values.tolist()
        ((3, 2), [0, 0, 1, 3], [0, 0, 1], [1.0, 0.0, 3.0])
        """
        n, m = self.shape
        t_indptr, t_indices, order = transpose_pattern(self.indptr, self.indices, self.shape)
        return RewardMatrix(
            (m, n), t_indptr, t_indices, self.values[order], self.weights[order],
            self.counts[order], self.label_names, row_map=self.col_map, col_map=self.row_map,
            n_single_rows=self.n_single_rows, meta=dict(self.meta))

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    @property
    def n_labels(self) -> int:
        return 1 if self.values.ndim == 1 else self.values.shape[1]

    @property
    def row_nnz(self) -> np.ndarray:
        """Observed cells per row."""
        return np.diff(self.indptr)

    @property
    def rows(self) -> np.ndarray:
        """Row index of every stored cell (COO row array), int64."""
        return np.repeat(np.arange(self.shape[0], dtype=np.int64), self.row_nnz)

    def label_index(self, label: int | str) -> int:
        return _label_index(label, self.label_names)

    def label_values(self, label: int | str = 0) -> np.ndarray:
        """Values of one label, shape (nnz,)."""
        j = self.label_index(label)
        return self.values if self.values.ndim == 1 else np.ascontiguousarray(self.values[:, j])

    def to_scipy(self, label: int | str = 0) -> sp.csr_matrix:
        """CSR matrix of one label. Explicit zeros are kept: they are observations.

        Do not call ``eliminate_zeros()`` on the result; use ``.indices``/``.indptr`` as
        the observation pattern.
        """
        return sp.csr_matrix((self.label_values(label), self.indices, self.indptr),
                             shape=self.shape, copy=True)

    @property
    def row_prefix_len(self) -> np.ndarray:
        """Prefix length of every row, shape (N,) (raises if the matrix has no prefixes)."""
        self._need_prefixes()
        if self.prefix_node is None:
            return np.asarray(self.prefix_len)
        return np.asarray(self.prefix_len)[self.prefix_node]

    def _need_prefixes(self) -> None:
        if self.prefix_parent is None:
            raise ValueError("this RewardMatrix carries no prefixes (it was not built from token "
                             "sequences); build it with build_reward_matrix(dataset)")

    def prefix(self, row: int) -> np.ndarray:
        """Token ids of the prefix x' of ``row`` (int32; empty for the root)."""
        self._need_prefixes()
        n = self.shape[0]
        if not 0 <= row < n:
            raise IndexError(f"row {row} out of range for {n} rows")
        r = int(row) if self.prefix_node is None else int(self.prefix_node[row])
        out = np.empty(int(self.prefix_len[r]), dtype=np.int32)
        k = out.size - 1
        while k >= 0:
            out[k] = self.prefix_token[r]
            r = int(self.prefix_parent[r])
            k -= 1
        return out

    def row(self, row: int, label: int | str = 0) -> tuple[np.ndarray, np.ndarray]:
        """(columns, values) of the observed cells of one row."""
        a, b = self.indptr[row], self.indptr[row + 1]
        return self.indices[a:b], self.label_values(label)[a:b]

    def __repr__(self) -> str:
        return (f"RewardMatrix(shape={self.shape}, nnz={self.nnz}, labels={list(self.label_names)}"
                + (f", removed_single_rows={self.n_single_rows}" if self.row_map is not None else "")
                + ")")


def transpose_pattern(indptr, indices, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR of the transposed pattern of a CSR pattern, and the permutation of its cells.

    Returns ``(t_indptr, t_indices, order)`` with cell p of the transpose being cell
    ``order[p]`` of the original (so ``values_T = values[order]``); rows of the transpose have
    ascending columns. One counting sort (scipy's CSR → CSC conversion) on the cell positions,
    stored shifted by one so that no entry is zero and nothing can be dropped on the way."""
    nnz = int(np.asarray(indices).size)
    position = np.arange(1, nnz + 1, dtype=np.int64)
    csc = sp.csr_matrix((position, indices, indptr), shape=tuple(shape)).tocsc()
    order = csc.data - 1
    if order.size != nnz:  # pragma: no cover - scipy would have merged cells
        raise RuntimeError(f"transpose lost cells: {order.size} of {nnz} came back")
    return csc.indptr.astype(np.int64), csc.indices.astype(np.int32), order.astype(np.int64)


def as_reward_matrix(source, *, label_name: str = "label_0") -> RewardMatrix:
    """Coerce ``source`` to a :class:`RewardMatrix`.

    Parameters
    ----------
    source : RewardMatrix or scipy.sparse matrix / array
        A ``RewardMatrix`` is returned as is. For a sparse matrix the *stored* entries,
        explicit zeros included, are the observations (:meth:`RewardMatrix.from_scipy`;
        duplicate entries are refused, not summed).
    label_name : str, default "label_0"
        Label name of a matrix built from ``scipy.sparse``.

    Returns
    -------
    RewardMatrix

    Raises
    ------
    TypeError
        For anything else, saying how to build a matrix from text or a dense array.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> as_reward_matrix(sp.csr_matrix(([0.0, 1.0], ([0, 1], [1, 0])), shape=(2, 2))).nnz
    2
    """
    if isinstance(source, RewardMatrix):
        return source
    if sp.issparse(source):
        return RewardMatrix.from_scipy(source, label_name=label_name)
    kind = type(source)
    given = kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"
    raise TypeError(
        f"source must be a RewardMatrix or a scipy.sparse matrix (stored entries, explicit "
        f"zeros included, are the observations); got {given}. For text data use rankkit.datasets.load(...) and "
        f"rankkit.build_reward_matrix, or rankkit.estimate_min_rank(data) directly; for a "
        f"dense array with NaN for missing cells use RewardMatrix.from_dense(array)")
