"""Ω₂ reduction of an observed reward matrix (paper 002, §3.1.2, Lemma 3).

A row with a single observed cell can always be fitted exactly by adding one rank-1 term
that is zero outside that row, so the minimal ε-rank of (R, Ω) is at most that of
(R, Ω₂) + 1, where Ω₂ keeps the cells that share their row with another observed cell.
Soft-impute therefore only needs Ω₂, which for text data is far smaller than Ω (long
utterances make chains of single-continuation prefixes).
"""

from __future__ import annotations

import numpy as np

from .matrix import RewardMatrix

__all__ = ["reduce_omega2"]


def reduce_omega2(R: RewardMatrix) -> RewardMatrix:
    r"""Keep the rows of ``R`` with at least two observed cells (Lemma 3).

    .. math::

        \Omega_2 = \{(i, j) \in \Omega : \exists\, j' \ne j,\ (i, j') \in \Omega\},
        \qquad \operatorname{rank}_\epsilon(R, \Omega) \le
        \operatorname{rank}_\epsilon(R, \Omega_2) + 1 .

    Parameters
    ----------
    R : RewardMatrix

    Returns
    -------
    RewardMatrix
        Rows with ≥ 2 cells and the columns that still hold a cell, both in their original
        order. ``row_map`` / ``col_map`` give the row / column of ``R``'s *source* (they
        are composed with ``R``'s own maps, so they always point at the unreduced
        matrix); ``n_single_rows`` is ``R.n_single_rows`` plus the number of rows with
        exactly one cell removed here (rows with no cell are dropped without counting).
        Prefixes are kept: the reduced matrix shares ``R``'s trie arrays and sets
        ``prefix_node``, so ``prefix(row)`` still spells every kept row even when its
        ancestors were removed. ``meta`` is copied. Applying the function twice changes
        nothing (idempotent): every kept row still has its ≥ 2 cells.

    Examples
    --------
    >>> R = RewardMatrix.from_dense(np.array([[1.0, np.nan, 2.0], [np.nan, 3.0, np.nan]]))
    >>> R2 = reduce_omega2(R)
    >>> R2.shape, R2.row_map.tolist(), R2.col_map.tolist(), R2.n_single_rows
    ((1, 2), [0], [0, 2], 1)
    """
    if not isinstance(R, RewardMatrix):
        raise TypeError(f"reduce_omega2 takes a RewardMatrix, got {type(R).__name__}; "
                        "build one with build_reward_matrix(dataset) or RewardMatrix.from_scipy(S)")
    n, m = R.shape
    row_nnz = R.row_nnz
    keep_rows = np.flatnonzero(row_nnz >= 2)
    n_single = int(np.count_nonzero(row_nnz == 1))
    keep_cell = np.repeat(row_nnz >= 2, row_nnz)
    cols = R.indices[keep_cell]
    col_used = np.zeros(m, dtype=bool)
    col_used[cols] = True
    keep_cols = np.flatnonzero(col_used)
    new_col = np.full(m, -1, dtype=np.int64)
    new_col[keep_cols] = np.arange(keep_cols.size)
    indptr = np.zeros(keep_rows.size + 1, dtype=np.int64)
    np.cumsum(row_nnz[keep_rows], out=indptr[1:])
    # old maps compose: the reduced row i is R's row keep_rows[i], which is source row
    # R.row_map[keep_rows[i]]
    row_map = keep_rows if R.row_map is None else np.asarray(R.row_map)[keep_rows]
    col_map = keep_cols if R.col_map is None else np.asarray(R.col_map)[keep_cols]
    trie = {}
    if R.prefix_parent is not None:
        node = keep_rows if R.prefix_node is None else np.asarray(R.prefix_node)[keep_rows]
        trie = dict(prefix_parent=R.prefix_parent, prefix_token=R.prefix_token,
                    prefix_len=R.prefix_len, prefix_node=node.astype(np.int64))
    return RewardMatrix(
        (keep_rows.size, keep_cols.size), indptr, new_col[cols], R.values[keep_cell],
        R.weights[keep_cell], R.counts[keep_cell], R.label_names,
        row_map=row_map.astype(np.int64), col_map=col_map.astype(np.int64),
        n_single_rows=R.n_single_rows + n_single, meta=dict(R.meta), **trie)
