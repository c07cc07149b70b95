r"""Structural lower bounds for the exact minimal rank of a partially observed matrix.

For observed cells Ω of R, Definition 1 of paper 002 (§3.1.1) is

.. math::

    \operatorname{minrank}_\Omega(R) = \min\{\operatorname{rank}(\hat R) :
        P_\Omega(\hat R) = P_\Omega(R)\}.

Soft-impute certificates (:mod:`rankkit.minrank`) bound it from above. This module bounds
it from *below* from the observed structure alone, with a certificate (row and column index
lists) that :meth:`TriangularCertificate.verify` / :meth:`BlockCertificate.verify` re-check
independently:

* **triangular pattern** (Lemma 2, generalised). If rows ``i_1..i_k`` and columns
  ``j_1..j_k`` satisfy ``R[i_t, j_t] ≠ 0`` (observed) and ``R[i_s, j_t] = 0`` (observed) for
  every ``s > t``, then in *every* completion the k×k submatrix on those rows and columns is
  upper triangular with a nonzero diagonal, so its determinant ∏ R[i_t, j_t] ≠ 0 and the
  completion has rank ≥ k. This bound is exact arithmetic on the stored floats: no
  tolerance is involved.
* **fully observed block**. If every cell of rows I × columns J is observed, every
  completion contains that block, so its rank is ≥ rank(R[I, J]). The block's rank is
  NumPy's numerical rank (cutoff σ_max · max(:math:`|I|`, :math:`|J|`) · eps, App. D.4). A backward-stable
  SVD perturbs singular values by a small multiple of eps·σ_max, below that cutoff, so the
  numerical rank does not exceed the exact rank of the stored block.

Both searches are greedy (finding the best bound is NP-hard in general), so the bound may
be loose; it is never wrong.

Why these bounds are for ε = 0 only
-----------------------------------
A partially observed pattern alone bounds nothing for ε > 0: the 2×2 pattern
``[[1, ?], [0, 1]]`` forces rank 2 exactly, yet ``[[1, 1/δ], [δ, 1]]`` has rank 1 and error δ²
on the observed zero, for any δ > 0. Fully observed blocks do bound the ε-rank, through
their singular values rather than their rank: that is :mod:`rankkit.bounds.eps_rank`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..matrix import RewardMatrix, as_reward_matrix

__all__ = ["TriangularCertificate", "BlockCertificate", "RankLowerBound", "triangular_bound",
           "full_block_bound", "rank_lower_bound"]


# ---------------------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------------------
def _submatrix(R: RewardMatrix, label, rows: np.ndarray, cols: np.ndarray):
    """(observed mask, values) of the dense submatrix R[rows][:, cols].

    The mask comes from a pattern matrix of ones, so an observed zero is never confused
    with a missing cell (scipy may drop explicit zeros while slicing)."""
    n, m = R.shape
    pattern = sp.csr_matrix((np.ones(R.nnz, np.int8), R.indices, R.indptr), shape=(n, m))
    vals = R.to_scipy(label)
    obs = pattern[rows][:, cols].toarray() != 0
    dense = vals[rows][:, cols].toarray()
    return obs, dense


def _check_indices(name: str, idx, limit: int) -> np.ndarray:
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= limit):
        bad = int(idx[(idx < 0) | (idx >= limit)][0])
        raise ValueError(f"certificate {name} index {bad} is outside [0, {limit})")
    if np.unique(idx).size != idx.size:
        vals, cnt = np.unique(idx, return_counts=True)
        raise ValueError(f"certificate {name} index {int(vals[cnt > 1][0])} appears more than once")
    return idx


def _gather_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, e)`` for every pair, without a Python loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offs = np.zeros(lengths.size, np.int64)
    np.cumsum(lengths[:-1], out=offs[1:])
    return np.repeat(starts - offs, lengths) + np.arange(total, dtype=np.int64)


# ---------------------------------------------------------------------------------------
# triangular pattern (Lemma 2)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TriangularCertificate:
    """Rows and columns whose submatrix is forced upper triangular with a nonzero diagonal.

    ``R[rows[t], cols[t]]`` is observed and nonzero, and ``R[rows[s], cols[t]]`` is observed
    and exactly 0 for every s > t. Every completion then has rank ≥ ``len(rows)``.
    """

    rows: np.ndarray
    cols: np.ndarray

    @property
    def size(self) -> int:
        """The rank lower bound this certificate proves."""
        return int(len(self.rows))

    def verify(self, R, label: int | str = 0) -> int:
        """Check the certificate against ``R``; return the bound, or raise ``ValueError``
        naming the first cell that breaks it."""
        R = as_reward_matrix(R)
        rows = _check_indices("row", self.rows, R.shape[0])
        cols = _check_indices("column", self.cols, R.shape[1])
        if rows.size != cols.size:
            raise ValueError(f"certificate has {rows.size} rows but {cols.size} columns")
        if rows.size == 0:
            return 0
        obs, val = _submatrix(R, label, rows, cols)
        diag_bad = ~(np.diag(obs) & (np.diag(val) != 0))
        if diag_bad.any():
            t = int(np.flatnonzero(diag_bad)[0])
            raise ValueError(f"diagonal cell {t} (row {rows[t]}, column {cols[t]}) is not an "
                             f"observed nonzero value")
        below = np.tril(np.ones_like(obs), k=-1)
        bad = below & ~(obs & (val == 0))
        if bad.any():
            s, t = (int(x) for x in np.argwhere(bad)[0])
            raise ValueError(f"cell (row {rows[s]}, column {cols[t]}) below the diagonal (position "
                             f"{s}, {t}) is not an observed zero")
        return int(rows.size)

    def to_dict(self) -> dict:
        return {"rows": self.rows.tolist(), "cols": self.cols.tolist(), "size": self.size}


def _greedy_triangle(indptr, indices, values, shape) -> tuple[np.ndarray, np.ndarray]:
    """One greedy pass of :func:`triangular_bound` on a CSR pattern (see its Notes)."""
    n, m = shape
    rows_of = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    zero = values == 0
    # CSC views of the zero and nonzero cells: rows of column j, for the peel step
    order = np.lexsort((rows_of, indices))
    col_ptr = np.zeros(m + 1, np.int64)
    np.cumsum(np.bincount(indices, minlength=m), out=col_ptr[1:])
    csc_rows, csc_zero = rows_of[order], zero[order]

    # S: rows still usable; only rows holding a nonzero can ever be a diagonal row
    alive = np.zeros(n, bool)
    alive[rows_of[~zero]] = True
    cz = np.bincount(indices[zero & alive[rows_of]], minlength=m).astype(np.int64)
    cnz = np.bincount(indices[~zero], minlength=m).astype(np.int64)
    in_zero_col = np.zeros(n, bool)
    out_r, out_c = [], []
    neg_inf = np.iinfo(np.int64).min
    while True:
        # a column can be the next diagonal column iff some alive row is nonzero there;
        # among those keep the one that leaves the most alive rows (observed zeros in it)
        score = np.where(cnz > 0, cz, neg_inf)
        j = int(np.argmax(score))
        if score[j] == neg_inf:
            break
        a, b = col_ptr[j], col_ptr[j + 1]
        r_j, z_j = csc_rows[a:b], csc_zero[a:b]
        cand = r_j[~z_j & alive[r_j]]
        i = int(cand[0])
        out_r.append(i)
        out_c.append(j)
        in_zero_col[r_j[z_j]] = True
        leaving = np.flatnonzero(alive & ~in_zero_col)
        in_zero_col[r_j[z_j]] = False
        alive[leaving] = False
        # the leaving rows no longer count towards any column
        e = _gather_ranges(indptr[leaving], indptr[leaving + 1])
        cz -= np.bincount(indices[e][zero[e]], minlength=m)
        cnz -= np.bincount(indices[e][~zero[e]], minlength=m)
    return np.asarray(out_r, np.int64), np.asarray(out_c, np.int64)


def triangular_bound(R, *, label: int | str = 0, transpose: bool = True) -> TriangularCertificate:
    r"""Greedy search for a forced-triangular submatrix (Lemma 2 of paper 002, §3.1.4).

    Parameters
    ----------
    R : RewardMatrix or scipy.sparse matrix
        Observed cells (stored entries, explicit zeros included).
    label : int or str
        Which label's values to use.
    transpose : bool
        Also run the greedy on Rᵀ (zeros *above* a diagonal) and keep the longer result.

    Returns
    -------
    TriangularCertificate
        Its ``size`` k is a lower bound on the minimal rank: every completion has rank ≥ k.

    Notes
    -----
    The greedy builds pairs (i_t, j_t) while keeping the set S of rows that may still
    follow. Start with S = rows holding an observed nonzero. At each step choose a column j
    with an observed nonzero in some row of S, maximising :math:`|S ∩ Z(j)|` where Z(j) are the
    rows with an observed zero in column j; take any i ∈ S with R[i, j] ≠ 0 and set
    S ← S ∩ Z(j). Stop when no column has a nonzero in S.

    *Correctness.* A row i_s chosen at step s lies in S_{s-1} ⊆ S_t ⊆ Z(j_t) for every
    t < s, so R[i_s, j_t] is an observed zero: the submatrix is upper triangular, and its
    diagonal R[i_t, j_t] is nonzero by choice. Rows are distinct because i_t ∉ Z(j_t) drops
    out of S; columns are distinct because i_s is nonzero at j_s and zero at every earlier
    j_t. Hence det ≠ 0 and every completion has rank ≥ k.

    Counts :math:`|S ∩ Z(j)|` are updated as rows leave S, so one pass costs O(nnz + k·m).
    On ``rankkit.synthetic.upper_triangular(n)`` (under any row/column permutation) the
    greedy returns k = n, which is the exact minimal rank.
    """
    R = as_reward_matrix(R)
    vals = R.label_values(label)
    best_r, best_c = _greedy_triangle(R.indptr, R.indices, vals, R.shape)
    if transpose and R.nnz:
        T = R.transpose()  # explicit zeros survive the transpose
        tr, tc = _greedy_triangle(T.indptr, T.indices, T.label_values(label), T.shape)
        if tr.size > best_r.size:
            # Rᵀ upper triangular on (tr, tc) means R is lower triangular on (tc, tr):
            # reversing both orders puts its zeros below the diagonal again
            best_r, best_c = tc[::-1].copy(), tr[::-1].copy()
    return TriangularCertificate(best_r, best_c)


# ---------------------------------------------------------------------------------------
# fully observed submatrix
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockCertificate:
    """A fully observed block rows × cols whose numerical rank is ``rank``."""

    rows: np.ndarray
    cols: np.ndarray
    rank: int

    def verify(self, R, label: int | str = 0) -> int:
        """Check that every cell is observed and the block's rank is at least ``rank``;
        return the recomputed rank, or raise ``ValueError`` naming the problem."""
        R = as_reward_matrix(R)
        rows = _check_indices("row", self.rows, R.shape[0])
        cols = _check_indices("column", self.cols, R.shape[1])
        if rows.size == 0 or cols.size == 0:
            if self.rank:
                raise ValueError(f"an empty block cannot certify rank {self.rank}")
            return 0
        obs, val = _submatrix(R, label, rows, cols)
        if not obs.all():
            s, t = (int(x) for x in np.argwhere(~obs)[0])
            raise ValueError(f"block cell (row {rows[s]}, column {cols[t]}) is not observed")
        rank = int(np.linalg.matrix_rank(val))
        if rank < self.rank:
            raise ValueError(f"block has numerical rank {rank}, less than the claimed {self.rank}")
        return rank

    def to_dict(self) -> dict:
        return {"rows": self.rows.tolist(), "cols": self.cols.tolist(), "rank": int(self.rank)}


def full_block_bound(R, *, label: int | str = 0, max_seeds: int = 16) -> BlockCertificate:
    """Greedy search for a fully observed block of high rank.

    Parameters
    ----------
    R : RewardMatrix or scipy.sparse matrix
    label : int or str
    max_seeds : int
        Number of seed rows (those with the most observed cells) to grow blocks from.

    Returns
    -------
    BlockCertificate
        Every completion contains the block, so its rank is ≥ ``rank``.

    Notes
    -----
    From a seed row s, J = columns of s and I = {s}; repeatedly add the row observed on
    the most columns of J and shrink J to that overlap. Since rank(R[I, J]) ≤ min(:math:`|I|`, :math:`|J|`),
    the step maximising min(:math:`|I|`, :math:`|J|`) is kept and its numerical rank computed (at most one
    SVD per seed, skipped when the block's nonzero rows or columns are too few to beat
    the best rank so far); growth stops once :math:`|I|` ≥ :math:`|J|` (after adding, in one step, every
    row observed on all of J: they leave J unchanged and can only raise the rank) or once :math:`|J|`
    cannot beat the best rank.
    Cost per seed: O(nnz) for the overlaps plus O(n + m) per added row.
    """
    R = as_reward_matrix(R)
    if max_seeds < 1:
        raise ValueError(f"max_seeds must be >= 1, got {max_seeds}")
    n, m = R.shape
    empty = BlockCertificate(np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    if R.nnz == 0:
        return empty
    pattern = sp.csr_matrix((np.ones(R.nnz), R.indices, R.indptr), shape=(n, m))
    vals = R.to_scipy(label)
    # CSC view of the pattern: rows observed in a column, to update overlaps when J shrinks
    RT = R.transpose()
    col_ptr, csc_rows = RT.indptr, RT.indices
    seeds = np.argsort(-R.row_nnz, kind="stable")[:max_seeds]
    best = empty
    seen: set[bytes] = set()
    for s in seeds:
        J = R.indices[R.indptr[s]:R.indptr[s + 1]].astype(np.int64)
        if J.size <= best.rank:
            break  # seeds are sorted by size: no later seed can do better
        key = J.tobytes()
        if key in seen:
            continue  # same column set as an earlier seed: same greedy path
        seen.add(key)
        colmask = np.zeros(m, bool)
        colmask[J] = True
        # overlap[r] = |cols(r) ∩ J|, kept exact as J shrinks (decrement per removed column)
        overlap = np.asarray(pattern @ colmask.astype(np.float64)).astype(np.int64)
        overlap[s] = -1  # already in the block
        block_rows = [int(s)]
        path = [(1, J.copy())]  # (|I|, J) after each step
        while J.size > best.rank:
            r = int(np.argmax(overlap))
            if overlap[r] <= best.rank:
                break
            block_rows.append(r)
            overlap[r] = -1
            keep = np.zeros(m, bool)
            keep[R.indices[R.indptr[r]:R.indptr[r + 1]]] = True
            removed = np.flatnonzero(colmask & ~keep)
            colmask[removed] = False
            J = np.flatnonzero(colmask)
            e = _gather_ranges(col_ptr[removed], col_ptr[removed + 1])
            np.subtract.at(overlap, csc_rows[e], 1)
            path.append((len(block_rows), J))
            if len(block_rows) >= J.size:
                # min(|I|, |J|) cannot grow any more, but the rows observed on all of J keep J
                # and can only raise the rank (rank R[I, J] is monotone in I): take them all.
                cover = np.flatnonzero(overlap == J.size)
                if cover.size:
                    block_rows.extend(cover.tolist())
                    path.append((len(block_rows), J))
                break
        # rank <= min(|I|, |J|): keep the step with the largest such cap (ties: larger block)
        t = max(range(len(path)), key=lambda q: (min(path[q][0], path[q][1].size),
                                                 path[q][0] * path[q][1].size))
        ni, Jt = path[t]
        if min(ni, Jt.size) <= best.rank:
            continue
        rows = np.asarray(block_rows[:ni], np.int64)
        sub = vals[rows][:, Jt]
        sub.eliminate_zeros()  # a copy: only to count the rows and columns holding a nonzero
        # rank <= number of nonzero rows / columns: skip the SVD when it cannot win
        cap = min(np.unique(sub.nonzero()[0]).size, np.unique(sub.nonzero()[1]).size)
        if cap <= best.rank:
            continue
        rank = 1 if cap == 1 else int(np.linalg.matrix_rank(sub.toarray()))
        if rank > best.rank:
            best = BlockCertificate(rows, Jt.astype(np.int64), rank)
    return best


# ---------------------------------------------------------------------------------------
# combined bound
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RankLowerBound:
    """Lower bound on the exact (ε = 0) minimal rank, with its certificates.

    Attributes
    ----------
    lower : int
        max(any observed nonzero, triangular.size, block.rank).
    any_nonzero : bool
        Some observed value is nonzero (then every completion has rank ≥ 1).
    triangular : TriangularCertificate
    block : BlockCertificate
    shape, nnz : the matrix the bounds were computed on.
    """

    lower: int
    any_nonzero: bool
    triangular: TriangularCertificate
    block: BlockCertificate
    shape: tuple[int, int] = (0, 0)
    nnz: int = 0

    def verify(self, R, label: int | str = 0) -> int:
        """Re-check both certificates against ``R`` and return the bound they prove."""
        R = as_reward_matrix(R)
        nz = bool(np.any(R.label_values(label) != 0))
        proved = max(int(nz), self.triangular.verify(R, label), self.block.verify(R, label))
        if proved < self.lower:
            raise ValueError(f"certificates prove rank >= {proved}, less than the claimed {self.lower}")
        return proved

    def to_dict(self) -> dict:
        return {"lower": int(self.lower), "any_nonzero": self.any_nonzero,
                "shape": list(self.shape), "nnz": int(self.nnz),
                "triangular": self.triangular.to_dict(), "block": self.block.to_dict()}


def rank_lower_bound(R, *, label: int | str = 0, max_seeds: int = 16,
                     transpose: bool = True) -> RankLowerBound:
    """Lower bound on the exact minimal rank (Definition 1, ε = 0) of the observed cells.

    Every completion of ``R`` has rank ≥ ``lower``; see the module docstring for why the
    bound holds and why none is given for ε > 0.

    Parameters
    ----------
    R : RewardMatrix or scipy.sparse matrix
        Observed cells, explicit zeros included.
    label : int or str
    max_seeds : int
        Seeds of the fully-observed-block search (:func:`full_block_bound`).
    transpose : bool
        Also search the transposed triangular pattern (:func:`triangular_bound`).

    Returns
    -------
    RankLowerBound

    Examples
    --------
    Identity on the diagonal, observed zeros below it, nothing observed above (Lemma 2):

    >>> import numpy as np, scipy.sparse as sp
    >>> mask = np.tril(np.ones((4, 4), bool))
    >>> S = sp.csr_matrix((np.eye(4)[mask], np.nonzero(mask)), shape=(4, 4))
    >>> rank_lower_bound(S).lower
    4
    """
    R = as_reward_matrix(R)
    vals = R.label_values(label)
    nz = bool(np.any(vals != 0))
    tri = triangular_bound(R, label=label, transpose=transpose)
    blk = full_block_bound(R, label=label, max_seeds=max_seeds)
    lower = max(int(nz), tri.size, blk.rank)
    return RankLowerBound(lower, nz, tri, blk, R.shape, R.nnz)
