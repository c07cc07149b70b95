r"""Lower bounds on the minimal ε-rank from fully observed blocks (Eckart–Young).

The quantity bounded is the one :func:`rankkit.estimate_min_rank` certifies from above
(paper 002, App. C.3): for the observed cells Ω₂ of the reduced matrix and a tolerance ε,

.. math::

    \operatorname{minrank}_{\Omega_2,\varepsilon}(R) = \min\Bigl\{\operatorname{rank} M :
        \sum_{(i,j)\in\Omega_2} (R_{ij} - M_{ij})^2 \le \varepsilon\,|\Omega_2| \Bigr\},

the *mean* squared error over Ω₂ at most ε, i.e. the *sum* at most the budget
β = ε :math:`|Ω₂|`. Entries of M are not bounded.

**Eckart–Young on one block.** Let B = R[I, J] be fully observed (every cell of I × J in
Ω₂). Any M of rank ≤ k restricted to I × J has rank ≤ k, so by the Eckart–Young–Mirsky
theorem

.. math::

    \sum_{(i,j)\in I\times J} (R_{ij} - M_{ij})^2 \ge \tau_B(k) := \sum_{t>k} \sigma_t(B)^2 .

**Many blocks at once.** For cell-disjoint fully observed blocks B₁, …, B_p the squared
errors on them are disjoint parts of the error over Ω₂, so every rank-k M has error
≥ Σ_b τ_{B_b}(k), and

.. math::

    \operatorname{minrank}_{\Omega_2,\varepsilon}(R) \ge
        \min\Bigl\{k : \sum_b \tau_{B_b}(k) \le \varepsilon |\Omega_2|\Bigr\}.

Rank 0 is the zero matrix: its error is Σ_{Ω₂} R², so single rows (1 × c blocks, τ(0) =
‖row‖²) prove ≥ 1 whenever the zero matrix misses ε.

The same blocks bound the ε-rank of the whole Ω with the same budget (a completion of Ω
has at least its error on Ω₂), which is the quantity ``rankkit.MinRankEstimate.upper`` bounds
from above; the bound does *not* carry over to the mean over Ω (budget ε :math:`|Ω|`, a larger
number).

**Partially observed blocks under an entry bound** (``max_abs`` = B). With no bound on the
entries of M, a block with an unobserved cell proves nothing beyond its fully observed parts
(``[[1, ?], [δ, 1]]`` has the rank-1 completion ``[[1, 1/δ], [δ, 1]]``). Under the stated bound
:math:`|M_{ij}| \le B` — the quantity :func:`rankkit.estimate_min_rank` certifies when given
``max_abs`` — let B = R[I, J] have unobserved cells S and X̃ its zero-filled copy. For rank-k M,

.. math::

    \sqrt{\tau_{\tilde X}(k)} \le \|\tilde X - M_{IJ}\|_F
        \le \|P_{\text{obs}}(R - M)_{IJ}\|_F + \|P_S(M)\|_F
        \le e_B + B\sqrt{|S|},

so the error on the block's observed cells is :math:`e_B^2 \ge (\sqrt{\tau_{\tilde X}(k)} -
B\sqrt{|S|})_+^2` (:class:`PartialBlock`). Blocks whose *observed* cells are disjoint add as
before (unobserved cells carry no error). Such a block beats its fully observed sub-blocks
where every large full sub-block must drop many rows or columns (e.g. one unobserved cell per
row) and B is small against the spectrum's tail; B must be at least :math:`\max|R_{ij}|` for any fit to
exist, so on text data, whose tails are ~1e-2 against entries ~1, it rarely binds.

**Rounding.** Singular values come from LAPACK's backward-stable SVD: the computed σ̂_t are
exact for B + E with ‖E‖₂ ≤ p(n) u ‖B‖₂, so by Weyl :math:`|\hat\sigma_t - \sigma_t| \le \delta`. The tails use
σ_t ≥ max(σ̂_t − δ, 0) with the generous δ = 8 max(:math:`|I|`, :math:`|J|`) u σ̂₁ (u the float64 unit
roundoff), and the sum is compared with β after a relative margin for its own rounding, so a
bound printed is a bound proved for the stored float64 values.

**Finding blocks.** A q × q fully observed block lives in the q-core of the bipartite
row–column graph of Ω₂ (rows and columns of degree ≥ q, peeled to a fixed point), which for
text data is small. In it the maximal blocks are the closed itemsets of the rows (rows as
transactions, columns as items); they are enumerated by depth-first closure extension
(Uno et al., LCM) with support ≥ q and size ≥ q, and chosen greedily by τ(k): the block with
the largest tail first, its cells removed from the graph, the rest re-enumerated, until the
budget is exceeded. The target k is bisected between 0 and the largest k whose (k + 1)-core
is non-empty. The enumeration has a work budget (``max_nodes``), since dense patterns hold
exponentially many maximal blocks. Finding the best family is NP-hard; the greedy is a
search, the bound it returns is a proof.

References
----------
Eckart, Young, *The approximation of one matrix by another of lower rank*, Psychometrika 1
(1936). Uno, Kiyomi, Arimura, *LCM ver. 2: efficient mining algorithms for
frequent/closed/maximal itemsets*, FIMI (2004). Troshin, Niculae, Fokkens, TMLR — Def. 2,
Lemma 3, App. C.3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..matrix import RewardMatrix, as_reward_matrix
from .exact_rank import _check_indices, _submatrix

__all__ = ["SpectralBlock", "PartialBlock", "EpsRankLowerBound", "eps_rank_lower_bound", "block_tail",
           "block_bound_ceiling"]

_U = np.finfo(np.float64).eps / 2  # unit roundoff of float64


def _sigma_slack(sigma: np.ndarray, shape: tuple[int, int]) -> float:
    """δ of the module docstring: how far a computed singular value may sit from the exact one."""
    if sigma.size == 0:
        return 0.0
    return 8.0 * max(shape) * _U * float(sigma[0])


def block_tail(sigma: np.ndarray, k: int, slack: float = 0.0) -> float:
    r"""τ(k) = Σ_{t>k} max(σ_t − slack, 0)²: a lower bound on the squared error of the best
    rank-k approximation of a matrix with computed singular values ``sigma`` (descending)."""
    s = np.maximum(np.asarray(sigma, np.float64)[int(k):] - slack, 0.0)
    return float(np.dot(s, s))


def _sum_lower(terms) -> float:
    """A lower bound on the exact sum of non-negative float terms (relative margin for the
    rounding of the summation itself)."""
    terms = np.asarray(terms, np.float64)
    return float(terms.sum()) * (1.0 - 2.0 * (terms.size + 2) * _U)


@dataclass(frozen=True)
class SpectralBlock:
    """A fully observed block ``rows × cols`` and its singular values (float64, descending).

    Attributes
    ----------
    rows, cols : ndarray of int64
        Row and column indices in the matrix the bound was computed on.
    sigma : ndarray of float64
        Singular values of the block as computed (``numpy.linalg.svd``).
    slack : float
        δ: the computed values are within δ of the exact ones (module docstring).
    """

    rows: np.ndarray
    cols: np.ndarray
    sigma: np.ndarray
    slack: float

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.rows.size), int(self.cols.size))

    def tail(self, k: int) -> float:
        """Lower bound on the squared error of any rank-k matrix on this block."""
        return block_tail(self.sigma, k, self.slack)

    def to_dict(self) -> dict:
        return {"rows": self.rows.tolist(), "cols": self.cols.tolist(),
                "sigma": [float(s) for s in self.sigma], "slack": float(self.slack)}

    @classmethod
    def from_dict(cls, d: dict) -> SpectralBlock:
        return cls(np.asarray(d["rows"], np.int64), np.asarray(d["cols"], np.int64),
                   np.asarray(d["sigma"], np.float64), float(d["slack"]))


@dataclass(frozen=True)
class PartialBlock:
    """A block ``rows × cols`` with unobserved cells ``missing``, proving through the entry
    bound ``max_abs`` (module docstring, "Partially observed blocks").

    Attributes
    ----------
    rows, cols : ndarray of int64
    missing : ndarray of int64, shape (s, 2)
        Every unobserved (row, column) of the block, in matrix indices.
    sigma : ndarray of float64
        Singular values of the block with its unobserved cells set to 0.
    slack : float
        δ of the module docstring.
    max_abs : float
        B: the bound on :math:`|M_{ij}|` the proof assumes.
    """

    rows: np.ndarray
    cols: np.ndarray
    missing: np.ndarray
    sigma: np.ndarray
    slack: float
    max_abs: float

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.rows.size), int(self.cols.size))

    def tail(self, k: int) -> float:
        """Lower bound on the squared error, over the block's observed cells, of any rank-k
        matrix with entries bounded by ``max_abs``: (√τ(k) − B√s)₊², each factor rounded
        toward the weaker bound."""
        root = math.sqrt(block_tail(self.sigma, k, self.slack)) * (1.0 - 4 * _U)
        gap = root - self.max_abs * math.sqrt(len(self.missing)) * (1.0 + 4 * _U)
        return gap * gap * (1.0 - 4 * _U) if gap > 0 else 0.0

    def to_dict(self) -> dict:
        return {"rows": self.rows.tolist(), "cols": self.cols.tolist(),
                "missing": self.missing.tolist(), "sigma": [float(x) for x in self.sigma],
                "slack": float(self.slack), "max_abs": float(self.max_abs)}

    @classmethod
    def from_dict(cls, d: dict) -> PartialBlock:
        return cls(np.asarray(d["rows"], np.int64), np.asarray(d["cols"], np.int64),
                   np.asarray(d["missing"], np.int64).reshape(-1, 2),
                   np.asarray(d["sigma"], np.float64), float(d["slack"]), float(d["max_abs"]))


def _block_from_dict(d: dict):
    return PartialBlock.from_dict(d) if "missing" in d else SpectralBlock.from_dict(d)


def _block_reader(R: RewardMatrix, vals: np.ndarray):
    """``dense_of(rows, cols)``: the observed values of a block as a dense array (unobserved
    cells 0)."""
    S = sp.csr_matrix((vals, R.indices, R.indptr), shape=R.shape)
    return lambda bi, bj: S[bi][:, bj].toarray()


def _make_block(dense_vals: np.ndarray, rows, cols) -> SpectralBlock:
    sigma = np.linalg.svd(dense_vals, compute_uv=False)
    return SpectralBlock(np.asarray(rows, np.int64), np.asarray(cols, np.int64), sigma,
                         _sigma_slack(sigma, dense_vals.shape))


@dataclass(frozen=True)
class EpsRankLowerBound:
    r"""``lower ≤ minrank_{Ω₂,ε}(R)``, proved by ``blocks`` whose observed cells are disjoint.

    Attributes
    ----------
    lower : int
        min{k : Σ_b τ_b(k) ≤ budget} over the blocks (module docstring).
    eps : float
        Tolerance on the mean squared error.
    n_cells : int
        The denominator :math:`|Ω₂|` of the mean.
    budget : float
        ε · n_cells: the largest allowed sum of squared errors.
    blocks : tuple of SpectralBlock or PartialBlock
        Fully observed blocks, and with ``max_abs`` partially observed ones; their observed
        cells pairwise disjoint.
    shape, nnz : the matrix the bound was computed on (indices refer to it).
    max_abs : float or None
        None: the bound holds for every M. A number B: some block is a :class:`PartialBlock`,
        and the bound is on the minimal ε-rank among matrices with every :math:`|M_{ij}| \le B`.
    """

    lower: int
    eps: float
    n_cells: int
    budget: float
    blocks: tuple
    shape: tuple[int, int] = (0, 0)
    nnz: int = 0
    max_abs: float | None = None

    def tails(self, k: int) -> float:
        """Σ_b τ_b(k), a lower bound on the squared error of any rank-k matrix on Ω₂ (before
        the summation margin)."""
        return float(sum(b.tail(k) for b in self.blocks))

    def proved(self, k: int) -> bool:
        """Whether the blocks prove that no matrix of rank ≤ k fits within the budget."""
        return _sum_lower([b.tail(k) for b in self.blocks]) > self.budget

    def verify(self, R, label: int | str = 0) -> int:
        """Re-check every block against ``R`` (observed, cell-disjoint, singular values
        recomputed with LAPACK's ``gesvd`` instead of ``gesdd``) and return the bound they
        prove; raise ``ValueError`` naming the first problem."""
        import scipy.linalg as sla

        R = as_reward_matrix(R)
        budget = self.eps * self.n_cells
        if not math.isclose(budget, self.budget, rel_tol=4 * _U, abs_tol=0.0):
            raise ValueError(f"budget {self.budget!r} is not eps × n_cells = {budget!r}")
        if R.nnz < self.n_cells:
            raise ValueError(f"n_cells = {self.n_cells} exceeds the {R.nnz} observed cells of the "
                             f"matrix: the bound was computed on another matrix")
        seen: set[tuple[int, int]] = set()
        fresh = []
        for b_i, b in enumerate(self.blocks):
            rows = _check_indices("row", b.rows, R.shape[0])
            cols = _check_indices("column", b.cols, R.shape[1])
            if rows.size == 0 or cols.size == 0:
                raise ValueError(f"block {b_i} is empty")
            obs, val = _submatrix(R, label, rows, cols)
            gaps = {(int(rows[a]), int(cols[c])) for a, c in np.argwhere(~obs)}
            partial = isinstance(b, PartialBlock)
            if not partial and gaps:
                r, c = min(gaps)
                raise ValueError(f"block {b_i}: cell (row {r}, column {c}) is not observed")
            if partial:
                if self.max_abs is None or b.max_abs != self.max_abs:
                    raise ValueError(f"block {b_i} assumes |M| <= {b.max_abs!r}, the bound states "
                                     f"max_abs = {self.max_abs!r}")
                listed = {(int(r), int(c)) for r, c in np.asarray(b.missing).reshape(-1, 2)}
                if listed != gaps:
                    r, c = min(listed ^ gaps)
                    state = "observed" if (r, c) in listed else "unobserved and not listed"
                    raise ValueError(f"block {b_i}: cell (row {r}, column {c}) is {state}: "
                                     f"'missing' must list exactly the block's unobserved cells")
            cells = {(int(r), int(c)) for r in rows for c in cols} - gaps
            both = seen & cells
            if both:
                r, c = min(both)
                raise ValueError(f"block {b_i} shares cell (row {r}, column {c}) with an earlier block: "
                                 f"the errors of overlapping blocks do not add")
            seen |= cells
            sigma = sla.svd(val, compute_uv=False, lapack_driver="gesvd")  # unobserved cells 0
            slack = _sigma_slack(sigma, val.shape)
            fresh.append(PartialBlock(rows, cols, np.array(sorted(gaps), np.int64).reshape(-1, 2),
                                      sigma, slack, b.max_abs) if partial
                         else SpectralBlock(rows, cols, sigma, slack))
        proved = _lower_from_blocks(fresh, budget)
        if proved < self.lower:
            raise ValueError(f"the blocks prove minrank_ε >= {proved}, less than the claimed {self.lower}")
        return proved

    def to_dict(self) -> dict:
        return {"lower": int(self.lower), "eps": float(self.eps), "n_cells": int(self.n_cells),
                "budget": float(self.budget), "shape": list(self.shape), "nnz": int(self.nnz),
                "blocks": [b.to_dict() for b in self.blocks],
                "max_abs": None if self.max_abs is None else float(self.max_abs)}

    @classmethod
    def from_dict(cls, d: dict) -> EpsRankLowerBound:
        mx = d.get("max_abs")
        return cls(int(d["lower"]), float(d["eps"]), int(d["n_cells"]), float(d["budget"]),
                   tuple(_block_from_dict(b) for b in d["blocks"]), tuple(d["shape"]), int(d["nnz"]),
                   None if mx is None else float(mx))


def _lower_from_blocks(blocks, budget: float) -> int:
    """min{k : Σ_b τ_b(k) ≤ budget}, with the summation margin (never above any block's size)."""
    k = 0
    top = max((min(b.shape) for b in blocks), default=0)
    while k < top and _sum_lower([b.tail(k) for b in blocks]) > budget:
        k += 1
    return k


# ---------------------------------------------------------------------------------------
# the search
# ---------------------------------------------------------------------------------------
def _core(indptr, indices, alive: np.ndarray, shape, q: int):
    """Rows and columns of the q-core of the live cells (degree ≥ q on both sides, peeled to
    a fixed point); returns (row ids, column ids, live cell mask restricted to the core)."""
    n, m = shape
    rows_of = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    live = alive.copy()
    while True:
        rdeg = np.bincount(rows_of[live], minlength=n)
        cdeg = np.bincount(indices[live], minlength=m)
        bad = live & ((rdeg[rows_of] < q) | (cdeg[indices] < q))
        if not bad.any():
            break
        live &= ~bad
    return np.flatnonzero(np.bincount(rows_of[live], minlength=n)), \
        np.flatnonzero(np.bincount(indices[live], minlength=m)), live


def _closed_bicliques(row_bits: list[int], col_bits: list[int], q: int, limit: int, max_nodes: int,
                      stats: dict | None = None):
    """Maximal bicliques (T rows, P columns) with |T| ≥ q and |P| ≥ q, as bitsets over the
    core's local row / column ids: closed itemsets by prefix-preserving closure extension
    (LCM), at most ``limit`` of them and at most ``max_nodes`` closures computed (dense
    patterns have exponentially many; what was found by then is returned)."""
    n, m = len(row_bits), len(col_bits)
    full_cols = (1 << m) - 1

    def closure(T: int) -> int:
        P = full_cols
        while T:
            low = T & -T
            P &= row_bits[low.bit_length() - 1]
            T ^= low
        return P

    root_T = (1 << n) - 1
    root_P = closure(root_T)  # the columns every row observes: itself closed
    out = [(root_T, root_P)] if n >= q and root_P.bit_count() >= q else []
    stack = [(root_P, root_T, -1)]
    nodes = 0
    while stack:
        P, T, last = stack.pop()
        for e in range(last + 1, m):
            if (P >> e) & 1:
                continue
            T2 = T & col_bits[e]
            if T2.bit_count() < q:
                continue
            nodes += 1
            if nodes > max_nodes:
                if stats is not None:
                    stats["truncated"] = True
                return out
            P2 = closure(T2)
            below = (1 << e) - 1
            if (P2 & below) != (P & below):
                continue  # not the canonical parent of this closed set
            if P2.bit_count() >= q:
                out.append((T2, P2))
                if len(out) >= limit:
                    if stats is not None:
                        stats["truncated"] = True
                    return out
            stack.append((P2, T2, e))
    return out


def _bits_to_ids(bits: int, ids: np.ndarray) -> np.ndarray:
    out = []
    i = 0
    while bits:
        if bits & 1:
            out.append(i)
        bits >>= 1
        i += 1
    return ids[np.asarray(out, np.int64)]


def _candidates(R: RewardMatrix, dense_of, alive: np.ndarray, q: int, k: int, limit: int, max_nodes: int,
                stats: dict | None = None):
    """Maximal fully observed blocks of the live cells with ≥ q rows and ≥ q columns, each
    with its SpectralBlock, best tail τ(k) first."""
    rows, cols, live = _core(R.indptr, R.indices, alive, R.shape, q)
    if rows.size < q or cols.size < q:
        return []
    local_col = np.full(R.shape[1], -1, np.int64)
    local_col[cols] = np.arange(cols.size)
    row_bits, col_bits = [0] * rows.size, [0] * cols.size
    for li, r in enumerate(rows):
        a, b = R.indptr[r], R.indptr[r + 1]
        for c in local_col[R.indices[a:b][live[a:b]]]:
            row_bits[li] |= 1 << int(c)
            col_bits[int(c)] |= 1 << li
    out = []
    for T, P in _closed_bicliques(row_bits, col_bits, q, limit, max_nodes, stats):
        bi, bj = _bits_to_ids(T, rows), _bits_to_ids(P, cols)
        blk = _make_block(dense_of(bi, bj), bi, bj)
        out.append((blk.tail(k), blk))
    out.sort(key=lambda t: -t[0])
    return out


def _max_core(R: RewardMatrix) -> int:
    """The largest q whose q-core is non-empty (cores are nested: binary search), at least 1."""
    alive = np.ones(R.nnz, bool)
    lo = 1
    hi = int(min(R.row_nnz.max(), np.bincount(R.indices).max(), *R.shape))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _core(R.indptr, R.indices, alive, R.shape, mid)[0].size:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _cell_positions(R: RewardMatrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """CSR positions of the cells rows × cols (all observed)."""
    pos = []
    colset = np.zeros(R.shape[1], bool)
    colset[cols] = True
    for r in rows:
        a, b = R.indptr[r], R.indptr[r + 1]
        pos.append(a + np.flatnonzero(colset[R.indices[a:b]]))
    return np.concatenate(pos) if pos else np.zeros(0, np.int64)


def _greedy_family(R, dense_of, q: int, k: int, budget: float, *, limit: int, max_blocks: int,
                   max_nodes: int, rounds: int = 8):
    """Cell-disjoint blocks chosen greedily by τ(k) until their tails exceed the budget: each
    round enumerates the maximal blocks of the cells still free and takes them, largest tail
    first, skipping any that shares a cell with one taken; the next round re-enumerates what
    is left (a block cut by a taken one may still hold a smaller free block)."""
    alive = np.ones(R.nnz, bool)
    family, total = [], []
    for _ in range(rounds):
        added = False
        for tail, blk in _candidates(R, dense_of, alive, q, k, limit, max_nodes):
            if tail <= 0.0:
                break
            pos = _cell_positions(R, blk.rows, blk.cols)
            if not alive[pos].all():
                continue
            family.append(blk)
            total.append(tail)
            alive[pos] = False
            added = True
            if _sum_lower(total) > budget or len(family) >= max_blocks:
                return family, _sum_lower(total) > budget
        if not added:
            break
    return family, _sum_lower(total) > budget


def _make_partial(dense_of, pattern, rows, cols, max_abs: float):
    """A PartialBlock (or a SpectralBlock when every cell is observed) on rows × cols."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    obs = pattern[rows][:, cols].toarray() != 0
    val = dense_of(rows, cols)
    sigma = np.linalg.svd(val, compute_uv=False)
    slack = _sigma_slack(sigma, val.shape)
    if obs.all():
        return SpectralBlock(rows, cols, sigma, slack)
    gaps = np.argwhere(~obs)
    missing = np.stack([rows[gaps[:, 0]], cols[gaps[:, 1]]], 1)
    return PartialBlock(rows, cols, missing, sigma, slack, max_abs)


def _grow(dense_of, pattern, blk, k: int, max_abs: float, max_missing: int,
          steps: int = 24, per_side: int = 16):
    """Grow a block greedily at rank k: each step adds the row or column (among the
    ``per_side`` that observe most of the block's columns / rows) whose partial block proves
    the most — even when that is less than the block so far, since one unobserved cell costs
    B√s at once and pays off only as the block grows —; at most ``max_missing`` unobserved
    cells and ``steps`` steps. Returns the best block seen."""
    rows, cols = list(blk.rows), list(blk.cols)
    cur, cur_t = blk, blk.tail(k)
    top, top_t = cur, cur_t
    for _ in range(steps):
        room = max_missing - (len(cur.missing) if isinstance(cur, PartialBlock) else 0)
        tries = []
        for side, here, other in (("row", rows, cols), ("col", cols, rows)):
            sub = pattern[:, other] if side == "row" else pattern[other, :]
            hits = np.asarray(sub.sum(1 if side == "row" else 0)).ravel().astype(np.int64)
            hits[here] = -1
            ok = np.flatnonzero(hits >= max(1, len(other) - room))
            for c in ok[np.argsort(-hits[ok], kind="stable")][:per_side]:
                tries.append((side, int(c)))
        best = None
        for side, c in tries:
            rr, cc = (rows + [c], cols) if side == "row" else (rows, cols + [c])
            cand = _make_partial(dense_of, pattern, rr, cc, max_abs)
            t = cand.tail(k)
            if best is None or t > best[0]:
                best = (t, cand, rr, cc)
        if best is None:
            break
        cur_t, cur, rows, cols = best[0], best[1], best[2], best[3]
        if cur_t > top_t:
            top, top_t = cur, cur_t
    return top


def _partial_search(R, dense_of, best, lower: int, budget: float, max_abs: float, max_missing: int,
                    k_max: int | None, limit: int, max_nodes: int, max_blocks: int, seeds: int = 12):
    """Raise ``lower`` with partially observed blocks (entry bound ``max_abs``): at k = lower,
    grow the largest fully observed blocks (module docstring), choose greedily by τ(k) among
    them and the fully observed candidates, observed cells disjoint; repeat while it proves
    more. Returns the best family (``best`` when nothing is gained)."""
    pattern = sp.csr_matrix((np.ones(R.nnz, np.int8), R.indices, R.indptr), shape=R.shape)
    alive_all = np.ones(R.nnz, bool)
    k = lower
    while k_max is None or k <= k_max:
        full = [blk for _, blk in _candidates(R, dense_of, alive_all, max(1, k), k, limit, max_nodes)]
        grown = [_grow(dense_of, pattern, blk, k, max_abs, max_missing) for blk in full[:seeds]]
        pool = sorted(full + [g for g in grown if isinstance(g, PartialBlock)],
                      key=lambda b: -b.tail(k))
        alive, family, total = alive_all.copy(), [], []
        for blk in pool:
            t = blk.tail(k)
            if t <= 0.0:
                break
            pos = _cell_positions(R, blk.rows, blk.cols)  # its observed cells
            if not alive[pos].all():
                continue
            alive[pos] = False
            family.append(blk)
            total.append(t)
            if _sum_lower(total) > budget or len(family) >= max_blocks:
                break
        if _sum_lower(total) <= budget:
            break
        best, k = family, max(k + 1, _lower_from_blocks(family, budget))
    return best


def eps_rank_lower_bound(R, eps: float, *, label: int | str = 0, n_cells: int | None = None,
                         k_max: int | None = None, max_bicliques: int = 5000,
                         max_nodes: int = 20_000, max_blocks: int = 256,
                         max_abs: float | None = None, max_missing: int = 64) -> EpsRankLowerBound:
    r"""Lower bound on the minimal ε-rank of the observed cells (module docstring).

    Parameters
    ----------
    R : RewardMatrix or scipy.sparse matrix
        The observed cells, explicit zeros included: Ω₂, i.e. ``rk.reduce_omega2(P_Ω(R))``
        for the quantity :func:`rankkit.estimate_min_rank` brackets.
    eps : float
        Tolerance on the mean squared error over ``n_cells`` cells.
    label : int or str
    n_cells : int, optional
        The denominator of the mean (default: the observed cells of ``R``).
    k_max : int, optional
        Do not try to prove more than ``k_max + 1`` (e.g. the certified upper bound − 1).
    max_bicliques : int, default 5000
        Most maximal blocks enumerated per core (the enumeration stops there; the blocks
        found so far are still used).
    max_nodes : int, default 20000
        Most closures computed per enumeration (dense patterns have exponentially many
        maximal blocks; the search is then partial, the bound still a proof).
    max_blocks : int, default 256
        Most blocks in the family.
    max_abs : float, optional
        An entry bound B: the bound is then on the minimal ε-rank among matrices with every
        :math:`|M_{ij}|` ≤ B (what :func:`rankkit.estimate_min_rank` certifies with
        ``max_abs``), and partially observed blocks (:class:`PartialBlock`) join the search:
        fully observed blocks grown greedily by the row or column that raises their bound
        most. The result carries ``max_abs`` only when a partial block is in its family.
    max_missing : int, default 64
        Most unobserved cells in one partial block.

    Returns
    -------
    EpsRankLowerBound
        ``lower`` with the blocks that prove it; ``verify(R)`` re-checks them.

    Examples
    --------
    A fully observed matrix: the bound is the Eckart–Young ε-rank itself.

    >>> import numpy as np, scipy.sparse as sp
    >>> M = np.diag([3.0, 2.0, 1.0, 0.001])
    >>> S = sp.csr_matrix(M + 1e-300)  # every cell stored (observed)
    >>> eps_rank_lower_bound(S, eps=0.5 / 16).lower  # σ₃² = 1 > 0.5 ≥ σ₄²
    3
    """
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    R = as_reward_matrix(R)
    vals = R.label_values(label)
    n_cells = R.nnz if n_cells is None else int(n_cells)
    if n_cells < R.nnz and n_cells != 0:
        raise ValueError(f"n_cells = {n_cells} is below the {R.nnz} observed cells of R")
    budget = float(eps) * n_cells
    none = EpsRankLowerBound(0, float(eps), n_cells, budget, (), R.shape, R.nnz)
    if R.nnz == 0 or _sum_lower(vals * vals) <= budget:
        return none  # the zero matrix fits
    dense_of = _block_reader(R, vals)

    top = _max_core(R)
    if k_max is not None:
        top = min(top, int(k_max) + 1)
    # "the blocks prove ≥ q" holds for every q below a q that succeeds: bisect on q (the
    # greedy is a heuristic, so this is a search; whatever it returns is proved)
    lo, hi, best = 1, top, None
    while lo < hi:
        q = (lo + hi + 1) // 2
        family, ok = _greedy_family(R, dense_of, q, q - 1, budget, limit=max_bicliques,
                                    max_blocks=max_blocks, max_nodes=max_nodes)
        if ok:
            best = family
            lo = max(q, _lower_from_blocks(family, budget))
        else:
            hi = q - 1
    if max_abs is not None:
        if not (isinstance(max_abs, (int, float)) and math.isfinite(max_abs) and max_abs > 0):
            raise ValueError(f"max_abs must be a finite number > 0, got {max_abs!r}")
        lower = 0 if best is None else _lower_from_blocks(best, budget)
        best = _partial_search(R, dense_of, best, lower, budget, float(max_abs), int(max_missing),
                               None if k_max is None else int(k_max), max_bicliques, max_nodes,
                               max_blocks)
    if best is not None:
        mx = float(max_abs) if any(isinstance(b, PartialBlock) for b in best) else None
        return EpsRankLowerBound(_lower_from_blocks(best, budget), float(eps), n_cells, budget,
                                 tuple(best), R.shape, R.nnz, mx)
    # rank ≥ 1: rows (1 × c blocks, τ(0) = ‖row‖²), largest first, until the zero matrix misses
    norms = np.add.reduceat(vals * vals, R.indptr[:-1]) if R.nnz else np.zeros(0)
    norms[np.diff(R.indptr) == 0] = 0.0
    family = []
    for r in np.argsort(-norms, kind="stable"):
        a, b = R.indptr[r], R.indptr[r + 1]
        if a == b:
            continue
        family.append(_make_block(vals[a:b][None, :], [r], R.indices[a:b]))
        if _sum_lower([f.tail(0) for f in family]) > budget:
            break
    return EpsRankLowerBound(_lower_from_blocks(family, budget), float(eps), n_cells, budget,
                             tuple(family), R.shape, R.nnz)


def block_bound_ceiling(R, eps: float, *, label: int | str = 0, n_cells: int | None = None,
                        start: int = 1, max_nodes: int = 200_000) -> tuple[int, bool]:
    r"""The most any family of cell-disjoint fully observed blocks can prove: (ceiling, complete).

    Disjoint sub-blocks B_i of one block B have Σ_i τ_{B_i}(k) ≤ τ_B(k) (a rank-k
    approximation of B restricts to rank-k matrices on each B_i), and every q × q block lies
    in a maximal one, so Σ over *all* maximal blocks with ≥ q rows and columns bounds what any
    family proves at k = q − 1. The ceiling is the largest q − 1 ≥ ``start`` − 1 whose sum still
    exceeds the budget; ``complete`` is False when an enumeration hit ``max_nodes`` (then
    the ceiling is itself a search result, not a proof of impossibility).
    """
    R = as_reward_matrix(R)
    vals = R.label_values(label)
    budget = float(eps) * (R.nnz if n_cells is None else int(n_cells))
    if R.nnz == 0 or _sum_lower(vals * vals) <= budget:
        return 0, True
    dense_of = _block_reader(R, vals)

    alive = np.ones(R.nnz, bool)
    ceiling, complete = max(1, int(start)), True
    for q in range(max(2, int(start) + 1), _max_core(R) + 1):
        stats: dict = {}
        cands = _candidates(R, dense_of, alive, q, q - 1, limit=1 << 62, max_nodes=max_nodes, stats=stats)
        complete &= not stats.get("truncated", False)
        if float(sum(t for t, _ in cands)) <= budget:
            break
        ceiling = q
    return ceiling, complete
