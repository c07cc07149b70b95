r"""Ω₂ reduction of an observed reward matrix (paper 002, §3.1.2, Lemma 3), and the way back.

A row with a single observed cell can always be fitted exactly by adding one rank-1 term
that is zero outside that row, so the minimal ε-rank of (R, Ω) is at most that of
(R, Ω₂) + 1, where Ω₂ keeps the cells that share their row with another observed cell.
Soft-impute therefore only needs Ω₂, which for text data is far smaller than Ω (long
utterances make chains of single-continuation prefixes).

The + 1 is usually not needed (:func:`extend_certificate`): a completion X = A Bᵀ of Ω₂ of
rank r ≥ 1 fits a single-entry row (i, j, v) exactly with the row a_i = v b_j / ‖b_j‖²
whenever b_j ≠ 0, and a column j that Ω₂ does not observe may take any b_j ≠ 0 without
touching Ω₂. The rows appended change nothing on Ω₂, so the completion of Ω has rank r and
the same squared error; the + 1 remains where some b_j = 0 (e.g. Lemma 2's triangle, whose
first column is observed as zeros only) and for r = 0. A column factor shorter than
√u · max_k ‖b_k‖ (u the float64 unit roundoff) counts as 0: such a b_j is what rounding
leaves of a column that is zero in exact arithmetic, and a certificate must not rest on
rounding noise (it would need entries ~ 1/‖b_j‖).
"""

from __future__ import annotations

import numpy as np

from .matrix import RewardMatrix

# (√u)²: a column factor with ‖b_j‖² below this times max_k ‖b_k‖² is rounding noise
_TINY = np.finfo(np.float64).eps / 2

__all__ = ["reduce_omega2", "extend_certificate", "omega_factors"]


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


def _kept(R: RewardMatrix) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of ``R`` that :func:`reduce_omega2` keeps, in its order."""
    row_nnz = R.row_nnz
    keep_rows = np.flatnonzero(row_nnz >= 2)
    col_used = np.zeros(R.shape[1], dtype=bool)
    col_used[R.indices[np.repeat(row_nnz >= 2, row_nnz)]] = True
    return keep_rows, np.flatnonzero(col_used)


def omega_factors(R: RewardMatrix, U, d, V, *, label: int | str = 0) -> tuple[np.ndarray, np.ndarray]:
    r"""Factors (A, B) of a completion of all of Ω from one of Ω₂ (module docstring).

    Parameters
    ----------
    R : RewardMatrix
        P_Ω(R), unreduced (its single-entry rows are the ones appended).
    U, d, V : arrays
        The Ω₂ completion U diag(d) Vᵀ in the coordinates of ``reduce_omega2(R)``.
    label : int or str

    Returns
    -------
    A : ndarray, shape (n, r)
        Rows of Ω₂ are U's; a single-entry row (i, j, v) is v b_j / ‖b_j‖² (0 when
        ‖b_j‖ < √u max_k ‖b_k‖: that row is then *not* fitted); rows with no cell are 0.
    B : ndarray, shape (m, r)
        Columns of Ω₂ are V diag(d); a column only single-entry rows observe is
        max_j ‖b_j‖ · e₁; the others 0.
    """
    U, V = np.asarray(U, np.float64), np.asarray(V, np.float64)
    d = np.asarray(d, np.float64).reshape(-1)
    n, m = R.shape
    keep_rows, keep_cols = _kept(R)
    if U.shape[0] != keep_rows.size or V.shape[0] != keep_cols.size:
        raise ValueError(f"the factors are {U.shape[0]} × {V.shape[0]}, but Ω₂ of R is "
                         f"{keep_rows.size} × {keep_cols.size}: pass the certificate of reduce_omega2(R)")
    r = d.size
    A, B = np.zeros((n, r)), np.zeros((m, r))
    A[keep_rows] = U
    W = V * d
    B[keep_cols] = W
    if r == 0:
        return A, B
    single = np.flatnonzero(R.row_nnz == 1)
    pos = R.indptr[single]
    cols, v = R.indices[pos], R.label_values(label)[pos]
    in_omega2 = np.zeros(m, bool)
    in_omega2[keep_cols] = True
    new = np.unique(cols[~in_omega2[cols]])
    norms = np.sqrt((W * W).sum(1))
    B[new, 0] = float(norms.max()) if norms.size and norms.max() > 0 else 1.0
    b = B[cols]
    nb2 = (b * b).sum(1)
    ok = nb2 > _TINY * float((B * B).sum(1).max())
    A[single[ok]] = (v[ok] / nb2[ok])[:, None] * b[ok]
    return A, B


def extend_certificate(R: RewardMatrix, U, d, V, *, label: int | str = 0, budget: float,
                       max_abs: float | None = None) -> dict:
    r"""Whether a rank-r certificate of Ω₂ is one of Ω without Lemma 3's + 1.

    Builds :func:`omega_factors` and recomputes, from those factors alone, the squared error
    over *every* cell of Ω,

    .. math::

        \mathrm{SSE}_\Omega = \sum_{(i,j)\in\Omega} (R_{ij} - a_i^\top b_j)^2 \le \beta,

    with β = ε :math:`|Ω₂|` the budget the Ω₂ certificate met. Passing means minrank_{Ω,ε}(R) ≤ r for
    that budget.

    Returns
    -------
    dict
        ``appended`` (bool: passed), ``rank`` r, ``sse_omega`` (the recomputed error over Ω),
        ``budget``, ``n_single_rows`` (single-entry rows of R), ``n_unfitted`` (nonzero ones
        with b_j = 0), ``n_new_columns``, ``max_abs_bound`` (max_i ‖a_i‖ · max_j ‖b_j‖ ≥
        every entry of A Bᵀ) and ``reason`` when it did not pass.
    """
    d = np.asarray(d, np.float64).reshape(-1)
    r = int(np.count_nonzero(d))
    single = R.row_nnz == 1
    out = {"rank": r, "budget": float(budget), "n_single_rows": int(single.sum())}
    if R.row_map is not None and R.n_single_rows:
        return {**out, "appended": False, "reason": "the source was reduced already: its removed "
                "single-entry rows cannot be seen, so Lemma 3's + 1 is kept"}
    A, B = omega_factors(R, U, d, V, label=label)
    rows = np.repeat(np.arange(R.shape[0]), R.row_nnz)
    res = R.label_values(label) - np.einsum("ij,ij->i", A[rows], B[R.indices])
    sse = float(res @ res)
    pos = R.indptr[np.flatnonzero(single)]
    unfitted = int(np.count_nonzero((np.abs(A[np.flatnonzero(single)]).sum(1) == 0)
                                    & (R.label_values(label)[pos] != 0)))
    bound = float(np.sqrt((A * A).sum(1)).max(initial=0.0) * np.sqrt((B * B).sum(1)).max(initial=0.0))
    out.update(sse_omega=sse, n_unfitted=unfitted, max_abs_bound=bound,
               n_new_columns=int(np.count_nonzero((B[:, 0] != 0) & (np.abs(B[:, 1:]).sum(1) == 0)))
               if r else 0)
    if r == 0 and np.any(R.label_values(label)[pos] != 0):
        return {**out, "appended": False, "reason": "rank 0 cannot fit a nonzero single-entry row"}
    if unfitted:
        return {**out, "appended": False, "reason": f"{unfitted} nonzero single-entry row(s) sit in "
                "columns where the certificate's column factor is 0"}
    if sse > budget:
        return {**out, "appended": False, "reason": f"the extension's error over Ω, {sse:.3g}, "
                f"exceeds the budget {budget:.3g}"}
    if max_abs is not None and bound > max_abs:
        return {**out, "appended": False, "reason": f"the extension's entries may reach {bound:.3g} "
                f"> max_abs = {max_abs:g}"}
    return {**out, "appended": True}
