r"""Bracketing the minimal rank of P_Ω(R): soft-impute certificates and structural bounds.

Paper 002, §3.1 (Definitions 1–2, Lemmas 2–3) and App. C.3 (Table 2). For the observed
cells Ω of a reward matrix and a tolerance ε,

.. math::

    \operatorname{minrank}_{\Omega,\varepsilon}(R) \le 1 + \operatorname{minrank}_{\Omega_2,\varepsilon}(R)
    \qquad \text{(Lemma 3)},

where Ω₂ keeps the rows with at least two observed cells. :func:`estimate_min_rank` fits
soft-impute ALS (:func:`rankkit.soft_impute`) on Ω₂ at increasing ranks and reports the
smallest rank r whose fit has

.. math::

    \operatorname{MSE}_{\Omega_2}(r) = \frac{1}{|\Omega_2|}
        \sum_{(i,j) \in \Omega_2} \bigl(R_{ij} - (U \operatorname{diag}(d) V^\top)_{ij}\bigr)^2
        \le \varepsilon .

The factors U diag(d) Vᵀ *are* a matrix of rank ≤ r with that error, so they certify
minrank_{Ω₂,ε}(R) ≤ r whatever λ and the iteration count were: the certificate is
sound, but whether one is *found* at a given r depends on λ (the nuclear-norm penalty
biases the fit) and on ``max_iter``. A smaller rank may exist that soft-impute with this λ
does not reach. The MSE is re-computed here from the returned factors, independently of
the solver, before a rank is accepted.

When no soft-impute fit reaches ε, :func:`exact_completion` builds a completion of Ω₂
that is exact up to rounding at the rank cap c = min(n₂, m₂, max cells in a row, max
cells in a column) (a seeded Gaussian factor and per-row minimum-norm least squares,
Definition 1 with ε = 0); its MSE, recomputed from its factors, is ≤ ε whenever ε is
above float64 rounding at the scale of the values, so ``upper = c (+1)`` always holds
and does not depend on λ.

The MSE is a mean over observed cells, as in Table 2. Definition 2 divides the squared
error by n·m ≥ |Ω₂| instead, so MSE ≤ ε implies the condition of Definition 2: the
certificate is conservative with respect to the paper's definition.

The lower end comes from :func:`rankkit.bounds.rank_lower_bound` on the full Ω and holds
for the *exact* minimal rank (ε = 0) only; see :mod:`rankkit.bounds` for why no lower bound
exists for ε > 0. Hence ``lower ≤ minrank_Ω(R)`` and ``minrank_{Ω,ε}(R) ≤ upper``; since
minrank_{Ω,ε} ≤ minrank_Ω, ``upper < lower`` is possible for a large ε and is reported.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .bounds import BlockCertificate, RankLowerBound, TriangularCertificate, rank_lower_bound
from .matrix import RewardMatrix
from .sequences import RewardDataset

__all__ = ["estimate_min_rank", "exact_completion", "MinRankEstimate"]

_STATE_FILE = "minrank_state.json"


# ---------------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------------
@dataclass
class MinRankEstimate:
    """Bracket on the minimal rank of P_Ω(R), with the soft-impute certificate.

    Attributes
    ----------
    eps, lam : float
        Tolerance on the MSE over Ω₂ and the soft-impute penalty λ it was certified at.
    label : int or str
    lower : int
        Lower bound on the exact (ε = 0) minimal rank over Ω (:mod:`rankkit.bounds`).
    upper : int or None
        Upper bound on the minimal ε-rank over Ω: ``rank_certified`` + 1 when Lemma 3's
        single-entry rows hold a nonzero value, else ``rank_certified``. When no soft-impute
        fit reaches MSE ≤ ε the constructive exact completion at the rank cap c certifies
        ``upper = c (+1)`` instead; None only when that too misses ε (e.g. huge values
        against a tiny ε) or ``exact_fallback=False``.
    rank_certified : int or None
        Rank of the certifying factors on Ω₂ (nonzero entries of d, ≤ the rank asked for).
    certified_at : int or None
        The key of ``mse_by_rank`` whose fit is the certificate (0 for the zero matrix;
        None when the exact completion certifies).
    mse_by_rank : dict of int -> float
        MSE over Ω₂ at every rank evaluated, recomputed from the factors (the Table 2 row;
        rank 0 is the zero matrix).
    converged_by_rank : dict of int -> bool
        Whether soft-impute met ``thresh`` before ``max_iter`` at that rank.
    certificate : SoftImputeResult or None
        The fit behind ``rank_certified`` (None when r = 0: the zero matrix certifies).
    omega_shape, omega_nnz : shape and observed cells of P_Ω(R).
    omega2_shape, omega2_nnz : the same for Ω₂.
    n_single_rows : int
        Single-entry rows removed by the Lemma 3 reduction.
    single_rows_nonzero : bool
        Some removed single-entry row holds a nonzero value (then Lemma 3's +1 applies).
    bounds : RankLowerBound or None
        Certificates of ``lower``.
    ranks : "auto" or list of int
    max_iter, thresh : soft-impute settings.
    elapsed : float
        Seconds spent (this call; ranks restored from a checkpoint cost nothing).
    message : str
        Why ``upper`` is None, or an empty string.
    certificate_source : str
        What certifies ``upper``: ``"soft-impute"`` (a fit in ``mse_by_rank``), ``"zero"``
        (the zero matrix, rank 0) or ``"exact-completion"`` (:func:`exact_completion` at the
        rank cap, λ-free; ``certified_at`` is then None).
    exact_mse : float or None
        MSE over Ω₂ of the constructive exact completion at the cap, when it was computed
        (no soft-impute fit reached ε, or the best one had a rank above the cap).
    """

    eps: float
    lam: float
    label: int | str
    lower: int
    upper: int | None
    rank_certified: int | None
    certified_at: int | None
    mse_by_rank: dict[int, float]
    converged_by_rank: dict[int, bool]
    certificate: object | None
    omega_shape: tuple[int, int]
    omega_nnz: int
    omega2_shape: tuple[int, int]
    omega2_nnz: int
    n_single_rows: int
    single_rows_nonzero: bool
    bounds: RankLowerBound | None
    ranks: str | list[int] = "auto"
    max_iter: int = 1000
    thresh: float = 1e-5
    elapsed: float = 0.0
    message: str = ""
    meta: dict = field(default_factory=dict)
    certificate_source: str = "soft-impute"
    exact_mse: float | None = None

    # ---- reporting -----------------------------------------------------------------
    def summary(self) -> str:
        """Readable report: Table 2 layout (rank | MSE on Ω₂), then the bracket."""
        n, m = self.omega_shape
        n2, m2 = self.omega2_shape
        lines = [
            f"minimal rank of P_Ω(R), label {self.label!r}",
            f"  Ω : {n:,} × {m:,}, {self.omega_nnz:,} observed cells",
            f"  Ω₂: {n2:,} × {m2:,}, {self.omega2_nnz:,} observed cells "
            f"({self.n_single_rows:,} single-entry rows removed, Lemma 3)",
            f"  soft-impute ALS: λ = {self.lam:g}, max_iter = {self.max_iter}, "
            f"thresh = {self.thresh:g}; ε = {self.eps:g}",
            "",
            f"  {'rank':>6} | MSE on Ω₂",
            f"  {'-' * 6}-+-{'-' * 12}",
        ]
        for r in sorted(self.mse_by_rank):
            mse = self.mse_by_rank[r]
            ok = " ≤ ε" if mse <= self.eps else ""
            conv = "" if self.converged_by_rank.get(r, True) else "  (not converged)"
            lines.append(f"  {r:>6} | {mse:.3g}{ok}{conv}")
        if self.exact_mse is not None:
            ok = " ≤ ε" if self.exact_mse <= self.eps else " > ε"
            lines.append(f"  exact completion at the cap (rank {self.meta.get('rank_cap')}, λ-free): "
                         f"MSE {self.exact_mse:.3g}{ok}")
        up = "?" if self.upper is None else str(self.upper)
        lines += ["", f"minimal ε-rank ∈ [{self.lower}, {up}]"]
        lines.append(f"  lower = {self.lower}: exact minimal rank (ε = 0), "
                     + self._lower_reason())
        if self.upper is None:
            lines.append(f"  upper unknown: {self.message}")
        else:
            plus = " + 1 (Lemma 3: single-entry rows)" if self.upper > self.rank_certified else ""
            if self.certificate_source == "exact-completion":
                lines.append(f"  upper = {self.upper}: ε-rank, rank-{self.rank_certified} constructive "
                             f"exact completion on Ω₂ (Gaussian factor, per-row least squares; not "
                             f"soft-impute){plus}; λ-free")
            else:
                lines.append(f"  upper = {self.upper}: ε-rank, rank-{self.rank_certified} soft-impute "
                             f"certificate on Ω₂{plus}, relative to λ = {self.lam:g}")
            above = [r for r, v in sorted(self.mse_by_rank.items())
                     if v > self.eps and r >= self.rank_certified]
            if above:
                lines.append(f"  note: soft-impute missed ε at rank(s) {above}, at or above the "
                             f"certified rank {self.rank_certified}: a failing fit (λ bias, thresh, "
                             f"max_iter) is not a lower bound and is not trusted")
            if self.upper < self.lower:
                lines.append("  note: upper < lower is allowed: the tolerance ε lets a completion "
                             "of lower rank fit within ε where an exact one cannot")
        return "\n".join(lines)

    def _lower_reason(self) -> str:
        b = self.bounds
        if b is None:
            return "observed values only"
        if self.lower == 0:
            return "all observed values are 0"
        if b.triangular.size >= max(b.block.rank, 2):
            return f"triangular pattern of size {b.triangular.size} (Lemma 2)"
        if b.block.rank >= 2:
            return (f"fully observed {len(b.block.rows)} × {len(b.block.cols)} block "
                    f"of rank {b.block.rank}")
        return "some observed value is nonzero"

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict:
        """JSON-serialisable view (the certificate factors are left to :meth:`save`)."""
        cert = self.certificate
        return {
            "eps": self.eps, "lam": self.lam, "label": self.label,
            "lower": self.lower, "upper": self.upper, "rank_certified": self.rank_certified,
            "certified_at": self.certified_at,
            "mse_by_rank": {int(k): float(v) for k, v in sorted(self.mse_by_rank.items())},
            "converged_by_rank": {int(k): bool(v) for k, v in sorted(self.converged_by_rank.items())},
            "omega_shape": list(self.omega_shape), "omega_nnz": self.omega_nnz,
            "omega2_shape": list(self.omega2_shape), "omega2_nnz": self.omega2_nnz,
            "n_single_rows": self.n_single_rows, "single_rows_nonzero": self.single_rows_nonzero,
            "bounds": None if self.bounds is None else self.bounds.to_dict(),
            "ranks": self.ranks, "max_iter": self.max_iter, "thresh": self.thresh,
            "elapsed": self.elapsed, "message": self.message,
            "certificate_rank": None if cert is None else int(np.asarray(_np(cert.d)).size),
            "meta": self.meta, "certificate_source": self.certificate_source,
            "exact_mse": self.exact_mse,
        }

    # ---- persistence -----------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``estimate.json`` and the certificate (``certificate.npz``) into ``path``.

        Every file is written to a temporary name and moved into place (``os.replace``), so
        an interrupted save never leaves a half-written file under the final name."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.certificate is not None:
            self.certificate.save(path / "certificate.npz")
        _atomic_json(path / "estimate.json", self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> MinRankEstimate:
        """Read what :meth:`save` wrote."""
        path = Path(path)
        file = path / "estimate.json"
        if not file.is_file():
            raise FileNotFoundError(f"{file} does not exist; save an estimate there with "
                                    f"MinRankEstimate.save({str(path)!r})")
        d = json.loads(file.read_text())
        cert = None
        if d.get("certificate_rank") is not None:
            from .softimpute import SoftImputeResult

            cert = SoftImputeResult.load(path / "certificate.npz")
        return cls(
            eps=d["eps"], lam=d["lam"], label=d["label"], lower=d["lower"], upper=d["upper"],
            rank_certified=d["rank_certified"], certified_at=d["certified_at"],
            mse_by_rank={int(k): v for k, v in d["mse_by_rank"].items()},
            converged_by_rank={int(k): v for k, v in d["converged_by_rank"].items()},
            certificate=cert, omega_shape=tuple(d["omega_shape"]), omega_nnz=d["omega_nnz"],
            omega2_shape=tuple(d["omega2_shape"]), omega2_nnz=d["omega2_nnz"],
            n_single_rows=d["n_single_rows"], single_rows_nonzero=d["single_rows_nonzero"],
            bounds=_bounds_from_dict(d["bounds"]), ranks=d["ranks"], max_iter=d["max_iter"],
            thresh=d["thresh"], elapsed=d["elapsed"], message=d["message"], meta=d.get("meta", {}),
            certificate_source=d.get("certificate_source", "soft-impute"),
            exact_mse=d.get("exact_mse"),
        )


def _bounds_from_dict(d: dict | None) -> RankLowerBound | None:
    if d is None:
        return None
    tri = TriangularCertificate(np.asarray(d["triangular"]["rows"], np.int64),
                                np.asarray(d["triangular"]["cols"], np.int64))
    blk = BlockCertificate(np.asarray(d["block"]["rows"], np.int64),
                           np.asarray(d["block"]["cols"], np.int64), int(d["block"]["rank"]))
    return RankLowerBound(int(d["lower"]), bool(d["any_nonzero"]), tri, blk,
                          tuple(d["shape"]), int(d["nnz"]))


def _atomic_json(file: Path, obj) -> None:
    tmp = file.with_name(file.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, file)


def _np(x) -> np.ndarray:
    """A factor as a NumPy array, whatever backend produced it."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    elif type(x).__module__.split(".")[0] == "cupy":
        x = x.get()
    return np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------------------------------
# the certificate check, independent of the solver
# ---------------------------------------------------------------------------------------
def _mse_from_factors(R2: RewardMatrix, label, U, d, V, chunk_elems: int = 1 << 24) -> float:
    """MSE over the observed cells of ``R2`` of U diag(d) Vᵀ, from the factors alone.

    Works in chunks of cells so memory stays O(chunk · rank), never O(n · m)."""
    vals = R2.label_values(label)
    if R2.nnz == 0:
        return 0.0
    U, d, V = _np(U), _np(d).reshape(-1), _np(V)
    k = d.size
    if U.shape != (R2.shape[0], k) or V.shape != (R2.shape[1], k):
        raise ValueError(f"certificate factors have shapes U {U.shape}, d ({k},), V {V.shape}; "
                         f"expected ({R2.shape[0]}, {k}) and ({R2.shape[1]}, {k}) for Ω₂ of shape "
                         f"{R2.shape}")
    Ud = U * d
    rows, cols = R2.rows, R2.indices
    step = max(1, chunk_elems // max(k, 1))
    sse = 0.0
    for a in range(0, R2.nnz, step):
        b = min(a + step, R2.nnz)
        pred = np.einsum("ij,ij->i", Ud[rows[a:b]], V[cols[a:b]])
        sse += float(np.sum((vals[a:b] - pred) ** 2))
    return sse / R2.nnz


def _rank_cap(R2: RewardMatrix) -> int:
    """Largest rank worth trying on Ω₂.

    Any partially observed matrix has an *exact* completion of rank
    K = max observed cells in a row: pick a generic V (m × K); each row's system
    u_i V[Ω_i]ᵀ = R[i, Ω_i] has |Ω_i| ≤ K equations and full row rank, so it is solvable.
    The same holds for columns, and rank ≤ min(n, m) always."""
    if R2.nnz == 0:
        return 0
    row_max = int(R2.row_nnz.max())
    col_max = int(np.bincount(R2.indices, minlength=R2.shape[1]).max())
    return min(R2.shape[0], R2.shape[1], row_max, col_max)


# ---------------------------------------------------------------------------------------
# the constructive, λ-free certificate at the rank cap
# ---------------------------------------------------------------------------------------
def _solve_rows_exactly(indptr, indices, vals, G: np.ndarray, chunk_elems: int) -> np.ndarray:
    """Per-row minimum-norm solutions u_i of G[S_i] u_i = x_{S_i} (S_i: row i's cells).

    Rows are batched by their length L: for a batch, A = G[S] (g × L × k) with L ≤ k, and
    Aᵀ = Q Rᵣ (QR, Q: k × L) gives u = Q z with Rᵣᵀ z = x, the minimum-norm solution
    (backward stable; no normal equations). Memory per batch ≤ ``chunk_elems`` floats."""
    n, k = len(indptr) - 1, G.shape[1]
    lengths = np.diff(indptr)
    U = np.zeros((n, k))
    for L in np.unique(lengths):
        L = int(L)
        if L == 0:
            continue
        rows_L = np.flatnonzero(lengths == L)
        step = max(1, chunk_elems // (L * k))
        for a in range(0, rows_L.size, step):
            rows = rows_L[a:a + step]
            cell = indptr[rows][:, None] + np.arange(L)  # (g, L) positions in the CSR arrays
            A = G[indices[cell]]  # (g, L, k)
            Q, Rr = np.linalg.qr(np.swapaxes(A, 1, 2))  # (g, k, L), (g, L, L)
            z = np.linalg.solve(np.swapaxes(Rr, 1, 2), vals[cell][..., None])  # (g, L, 1)
            U[rows] = (Q @ z)[..., 0]
    return U


def exact_completion(R2: RewardMatrix, rank: int | None = None, seed: int = 0, *,
                     label: int | str = 0, chunk_elems: int = 1 << 22):
    r"""An exact completion of P_Ω(R) of rank ≤ ``rank``: a constructive, λ-free certificate.

    Paper 002, §3.1 (Definition 1): minrank_Ω(R) ≤ c for the cap

    .. math::

        c = \min\bigl(n, m, \max_i |S_i|, \max_j |T_j|\bigr),
        \qquad S_i = \{j : (i, j) \in \Omega\},\ T_j = \{i : (i, j) \in \Omega\}.

    Construction (row side, used when max_i |S_i| ≤ k): draw a Gaussian V ∈ ℝ^{m×k}
    (seeded). Almost surely every submatrix V_{S_i} (|S_i| × k, |S_i| ≤ k) has full row
    rank, so u_i = V_{S_i}ᵀ (V_{S_i} V_{S_i}ᵀ)⁻¹ x_{S_i} (minimum-norm least squares,
    computed by QR) solves u_i V_{S_i}ᵀ = x_{S_i} exactly and U Vᵀ agrees with R on Ω.
    When only the columns are short (max_j |T_j| ≤ k) the same is done on Rᵀ with a
    Gaussian U. The factors are returned in SVD form (U, d, V orthonormal-column U and V,
    via QR of both factors and an SVD of the k × k core) as a
    :class:`rankkit.softimpute.SoftImputeResult` with ``lam = 0``, ``backend =
    "exact-completion"``; its ``mse`` over Ω is recomputed from those factors
    (:func:`_mse_from_factors`), independently of the construction. In exact arithmetic it
    is 0; in float64 it is of order (ε_mach · κ · scale)², κ the conditioning of the
    Gaussian submatrices.

    Parameters
    ----------
    R2 : RewardMatrix
        Usually Ω₂ (:func:`rankkit.reduce_omega2`), but any P_Ω(R) works.
    rank : int, optional
        Target rank k; default the cap c. Clipped to min(n, m); must be ≥ the longest row
        or the longest column of Ω.
    seed : int
        Seed of the Gaussian factor (the same call gives the same factors).
    label : int or str
        Which response column.
    chunk_elems : int
        Floats held per batch of rows (memory bound).

    Returns
    -------
    SoftImputeResult
    """
    from .softimpute import SoftImputeResult

    n, m = R2.shape
    cap = _rank_cap(R2)
    if rank is not None and (not isinstance(rank, numbers.Integral) or rank < 0):
        raise ValueError(f"rank must be a non-negative integer or None (the cap {cap}), got {rank!r}")
    k = cap if rank is None else min(int(rank), n, m)
    vals = np.asarray(R2.label_values(label), dtype=np.float64)
    indptr = np.asarray(R2.indptr, dtype=np.int64)
    indices = np.asarray(R2.indices, dtype=np.int64)
    row_max = int(np.diff(indptr).max()) if n and R2.nnz else 0
    counts = np.bincount(indices, minlength=m)
    col_max = int(counts.max()) if m and R2.nnz else 0
    if k < min(row_max, col_max):
        raise ValueError(f"an exact completion of rank {k} is not guaranteed: the longest row of Ω "
                         f"has {row_max} cells and the longest column {col_max}; pass rank ≥ "
                         f"{min(row_max, col_max)} (the cap) or leave rank=None")
    rng = np.random.default_rng(seed)
    if k == 0:  # Ω empty: the zero matrix is exact
        A, B = np.zeros((n, 0)), np.zeros((m, 0))
    elif row_max <= k and (row_max <= col_max or col_max > k):
        B = rng.standard_normal((m, k))
        A = _solve_rows_exactly(indptr, indices, vals, B, chunk_elems)
        side = "rows"
    else:
        # the transpose as CSR: cells sorted by column (stable keeps rows ascending)
        order = np.argsort(indices, kind="stable")
        t_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        t_indices = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))[order]
        A = rng.standard_normal((n, k))
        B = _solve_rows_exactly(t_indptr, t_indices, vals[order], A, chunk_elems)
        side = "columns"
    if k == 0:
        U, d, V, side = A, np.zeros(0), B, "none"
    else:
        Qa, Ra = np.linalg.qr(A)
        Qb, Rb = np.linalg.qr(B)
        W, d, Zt = np.linalg.svd(Ra @ Rb.T)
        U, V = Qa @ W, Qb @ Zt.T
    mse = _mse_from_factors(R2, label, U, d, V)
    return SoftImputeResult(U=U, d=d, V=V, mse=mse, sse=mse * R2.nnz, objective=[], ratio=[],
                            n_iter=0, converged=True, lam=0.0, rank=int(k), shape=(n, m),
                            nnz=int(R2.nnz), thresh=0.0, backend="exact-completion",
                            meta={"seed": seed, "side": side, "cap": cap})


def _fingerprint(R2: RewardMatrix, label, lam, max_iter, thresh, seed) -> dict:
    h = hashlib.sha1()
    for a in (R2.indptr, R2.indices, R2.label_values(label)):
        h.update(np.ascontiguousarray(a).tobytes())
    return {"shape": list(R2.shape), "nnz": R2.nnz, "sha1": h.hexdigest(), "lam": lam,
            "max_iter": max_iter, "thresh": thresh, "seed": seed}


# ---------------------------------------------------------------------------------------
# the public function
# ---------------------------------------------------------------------------------------
def _to_matrix(source, max_len) -> RewardMatrix:
    if isinstance(source, RewardDataset):
        from .trie import build_reward_matrix

        return build_reward_matrix(source, max_len=max_len)
    if max_len is not None:
        raise ValueError("max_len truncates utterances and applies only when source is a "
                         f"RewardDataset; got a {type(source).__name__}: truncate before building it")
    if isinstance(source, RewardMatrix):
        return source
    if sp.issparse(source):
        return RewardMatrix.from_scipy(source)
    raise TypeError(f"source must be a RewardDataset, a RewardMatrix or a scipy.sparse matrix "
                    f"(stored entries, explicit zeros included, are observations); got "
                    f"{type(source).__name__}. For a dense array with NaN for missing cells use "
                    f"RewardMatrix.from_dense(array)")


def _check_ranks(ranks) -> list[int] | str:
    if isinstance(ranks, str):
        if ranks != "auto":
            raise ValueError(f"ranks must be 'auto' or a list of non-negative ints, got {ranks!r}")
        return ranks
    if not isinstance(ranks, Sequence) and not isinstance(ranks, np.ndarray):
        raise TypeError(f"ranks must be 'auto' or a list of non-negative ints, got {type(ranks).__name__}")
    out = []
    for r in ranks:
        if int(r) != r or r < 0:
            raise ValueError(f"ranks must be non-negative integers; got {r!r} in {list(ranks)}")
        out.append(int(r))
    if not out:
        raise ValueError("ranks is empty; pass e.g. [0, 255, 511, 767] (Table 2) or 'auto'")
    return sorted(set(out))


def estimate_min_rank(source, eps: float = 1e-6, *, label: int | str = 0, ranks="auto",
                      lam: float = 1e-4, max_iter: int = 1000, thresh: float = 1e-5,
                      backend: str = "auto", device=None, seed: int = 0, progress: bool = True,
                      max_len: int | None = None, checkpoint_dir: str | os.PathLike | None = None,
                      lower_bound: bool = True, exact_fallback: bool = True) -> MinRankEstimate:
    r"""Bracket the minimal rank of P_Ω(R) (paper 002, Def. 1–2, Lemma 3, App. C.3).

    Builds P_Ω(R), reduces it to Ω₂ (rows with ≥ 2 observed cells), and finds the smallest
    rank r whose soft-impute fit has MSE over Ω₂ ≤ ``eps``; then

    .. math::

        \operatorname{minrank}_{\Omega,\varepsilon}(R) \le
            \text{upper} = r + \mathbb{1}[\text{a removed single-entry row is nonzero}],
        \qquad \text{lower} \le \operatorname{minrank}_{\Omega}(R).

    If no soft-impute fit passes, r is the rank cap c, certified by the constructive
    :func:`exact_completion` (λ-free; see ``exact_fallback``).

    Parameters
    ----------
    source : RewardDataset, RewardMatrix or scipy.sparse matrix
        A dataset is turned into P_Ω(R) with :func:`rankkit.build_reward_matrix`; in a
        scipy matrix every stored entry, explicit zeros included, is an observation.
    eps : float, default 1e-6
        Tolerance on the MSE over Ω₂ (the paper's resolution for float32).
    label : int or str, default 0
        Which response column to analyse.
    ranks : "auto" or list of int, default "auto"
        A list evaluates exactly those ranks (``[0, 255, 511, 767]`` reproduces Table 2);
        r is the smallest passing one. "auto" evaluates rank 0 (the zero matrix), then
        1, 2, 4, … (warm-started from the previous fit) up to the cap below, then bisects
        between the last failing and the first passing rank. The cap is
        min(n₂, m₂, max cells per row, max cells per column) of Ω₂, a rank at which an
        exact completion always exists (see ``_rank_cap``). A listed rank above
        min(n₂, m₂) is fitted at min(n₂, m₂) (same set of matrices) and reported under the
        rank asked for.
    lam : float, default 1e-4
        Nuclear-norm penalty λ of soft-impute (R softImpute convention, as in App. C.3).
    max_iter, thresh : soft-impute iteration limit and convergence threshold.
    backend, device : where soft-impute runs ("auto", "numpy", "torch", "cupy").
    seed : int
        Seed of soft-impute's random start (explicit: the same call gives the same answer).
    progress : bool
        Show tqdm bars (one over ranks, one inside each fit).
    max_len : int, optional
        Truncate utterances to this many tokens (only for a RewardDataset source).
    checkpoint_dir : path, optional
        Each finished fit is saved there (``rank_XXXXXX.npz``); a rerun with the same matrix and
        settings loads finished ranks instead of refitting, and an interrupted fit resumes
        from soft-impute's own checkpoint. A directory made for a different matrix or
        different settings is refused.
    lower_bound : bool, default True
        Compute the structural lower bound (:func:`rankkit.bounds.rank_lower_bound`);
        when False ``lower`` is 1 if any observed value is nonzero, else 0.
    exact_fallback : bool, default True
        When no soft-impute fit reaches ε (or the best one has a rank above the cap c),
        build the constructive exact completion of Ω₂ at rank c (:func:`exact_completion`,
        seeded by ``seed``), recompute its MSE from its factors and, if ≤ ε, certify
        ``upper = c (+1 by Lemma 3)``. This bound does not depend on λ, ``thresh`` or
        ``max_iter``. False keeps soft-impute as the only certificate.

    Returns
    -------
    MinRankEstimate

    Notes
    -----
    A passing fit U diag(d) Vᵀ is itself a matrix of rank ≤ nnz(d) with MSE ≤ ε on Ω₂,
    so it certifies minrank_{Ω₂,ε} ≤ nnz(d) regardless of λ; stacking it with a rank-1
    block that reproduces the single-entry rows exactly (each such row is its value times
    the all-ones row) gives a completion of Ω with the same squared error, hence Lemma 3's
    +1. The MSE deciding a rank is recomputed from the factors here, not taken from the
    solver. With λ > 0 and finite iterations a rank that *could* reach ε may be missed, so
    ``upper`` is relative to λ; ``lower`` is exact but greedy, so it may be loose.
    Bisection assumes the MSE decreases with rank, which soft-impute's path usually but
    not provably satisfies; every evaluated rank is reported in ``mse_by_rank``. Only
    *passing* fits are evidence: a failing rank says soft-impute (this λ, ``thresh``,
    ``max_iter``, start) did not reach ε there, never that minrank exceeds it. So a failing
    rank above a passing one (non-convergence, λ bias) is not trusted: ``upper`` is the
    fewest nonzero singular values over *all* passing fits, whatever failed above them, and
    ``summary()`` flags such ranks. When the geometric phase of "auto" fails up to the cap,
    no bisection is run (nothing passed to bisect towards); the exact completion at the
    cap then certifies (``exact_fallback``), with no claim that a smaller rank fails.

    References
    ----------
    Troshin, Niculae, Fokkens, *On the Low-Rank Parametrization of Reward Models for
    Controlled Language Generation*, TMLR — §3.1 and App. C.3.
    Hastie, Mazumder, Lee, Zadeh, *Matrix Completion and Low-Rank SVD via Fast
    Alternating Least Squares*, JMLR 16 (2015).

    Examples
    --------
    >>> import rankkit as rk
    >>> est = rk.estimate_min_rank(rk.synthetic.upper_triangular(8), progress=False)
    >>> est.lower, est.upper
    (8, 8)
    """
    t0 = time.perf_counter()
    for name, v in (("eps", eps), ("lam", lam)):
        if not (isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    ranks = _check_ranks(ranks)
    R = _to_matrix(source, max_len)
    j = R.label_index(label)  # validates the label against the matrix's label names
    from .omega import reduce_omega2

    R2 = reduce_omega2(R)
    vals = R.label_values(j)
    single = R.row_nnz == 1
    # a source that was reduced already removed rows whose values we no longer see:
    # count them and assume they need Lemma 3's +1
    earlier = int(R.n_single_rows) if R.row_map is not None else 0
    n_single = int(single.sum()) + earlier
    single_nonzero = earlier > 0 or bool(np.any(vals[np.repeat(single, R.row_nnz)] != 0))

    if lower_bound:
        bounds = rank_lower_bound(R, label=j)
        lower = bounds.lower
    else:
        bounds, lower = None, int(bool(np.any(vals != 0)))

    search = _Search(R2, j, eps=float(eps), lam=float(lam), max_iter=int(max_iter),
                     thresh=float(thresh), backend=backend, device=device, seed=seed,
                     progress=progress, checkpoint_dir=checkpoint_dir)
    try:
        if ranks == "auto":
            search.auto()
        else:
            for r in ranks:
                search.evaluate(r)
    finally:
        search.close()

    r_cert, at, cert = search.best()
    source = "zero" if (r_cert == 0 and cert is None) else "soft-impute"
    exact_mse = None
    if exact_fallback and search.cap > 0 and (r_cert is None or r_cert > search.cap):
        # the λ-free constructive certificate at the cap (_rank_cap, exact_completion)
        exact = exact_completion(R2, search.cap, seed=seed, label=j)
        exact_mse = float(exact.mse)
        eff = int(np.count_nonzero(exact.d))
        if exact_mse <= eps and (r_cert is None or eff < r_cert):
            r_cert, at, cert, source = eff, None, exact, "exact-completion"
    if r_cert is None:
        upper = None
        tried = max(search.mse)
        message = (f"no rank tried reaches MSE ≤ ε = {eps:g} on Ω₂ (largest tried: rank {tried}, "
                   f"MSE {search.mse[tried]:.3g}); try larger ranks, a smaller thresh (the fit may stop "
                   f"on thresh before reaching ε), more max_iter or a smaller lam")
        if exact_mse is not None:
            message += (f"; the exact completion at the cap (rank {search.cap}) has MSE "
                        f"{exact_mse:.3g} > ε in float64: ε is below the rounding error at this "
                        f"scale of values")
        elif not exact_fallback:
            message += "; or pass exact_fallback=True for the λ-free bound at the rank cap"
    else:
        upper = r_cert + int(single_nonzero)
        message = ""
    return MinRankEstimate(
        eps=float(eps), lam=float(lam), label=label, lower=int(lower), upper=upper,
        rank_certified=r_cert, certified_at=at, mse_by_rank=dict(sorted(search.mse.items())),
        converged_by_rank=dict(sorted(search.converged.items())), certificate=cert,
        omega_shape=R.shape, omega_nnz=R.nnz, omega2_shape=R2.shape, omega2_nnz=R2.nnz,
        n_single_rows=n_single, single_rows_nonzero=single_nonzero, bounds=bounds,
        ranks=ranks, max_iter=int(max_iter), thresh=float(thresh),
        elapsed=time.perf_counter() - t0, message=message,
        meta={"backend": backend, "seed": seed, "rank_cap": search.cap},
        certificate_source=source, exact_mse=exact_mse,
    )


class _Search:
    """Evaluates ranks on Ω₂ once each, with warm starts and checkpoints."""

    def __init__(self, R2, label, *, eps, lam, max_iter, thresh, backend, device, seed, progress,
                 checkpoint_dir):
        from tqdm.auto import tqdm

        self.R2, self.label, self.eps, self.lam = R2, label, eps, lam
        self.kw = dict(label=label, max_iter=max_iter, thresh=thresh, backend=backend,
                       device=device, seed=seed, progress=progress)
        self.cap = _rank_cap(R2)
        self.full = min(R2.shape)
        self.mse: dict[int, float] = {}
        self.converged: dict[int, bool] = {}
        self.fits: dict[int, object] = {}  # fitted rank -> SoftImputeResult
        self.bar = tqdm(desc="min rank", unit="rank", disable=not progress, leave=False)
        self.ckpt = None
        if checkpoint_dir is not None:
            self.ckpt = Path(checkpoint_dir)
            self.ckpt.mkdir(parents=True, exist_ok=True)
            fp = _fingerprint(R2, label, lam, max_iter, thresh, seed)
            state = self.ckpt / _STATE_FILE
            if state.is_file():
                old = json.loads(state.read_text())
                if old != fp:
                    diff = sorted(k for k in fp if old.get(k) != fp[k])
                    raise ValueError(f"checkpoint_dir {str(self.ckpt)!r} holds fits of a different "
                                     f"problem (differs in {diff}); use a new directory or delete it")
            else:
                _atomic_json(state, fp)

    def close(self):
        self.bar.close()

    def passes(self, r: int) -> bool:
        return self.mse[r] <= self.eps

    def evaluate(self, r: int) -> bool:
        """Fit rank r (once), record the verified MSE, return whether it is ≤ ε."""
        if r in self.mse:
            return self.passes(r)
        if r == 0 or self.R2.nnz == 0:
            self.mse[r] = float(np.mean(self.R2.label_values(self.label) ** 2)) if self.R2.nnz else 0.0
            self.converged[r] = True
        else:
            k = min(r, self.full)
            res = self._fit(k)
            self.fits[r] = res
            self.mse[r] = _mse_from_factors(self.R2, self.label, res.U, res.d, res.V)
            self.converged[r] = bool(res.converged)
        self.bar.update(1)
        self.bar.set_postfix(rank=r, mse=f"{self.mse[r]:.3g}")
        return self.passes(r)

    def _fit(self, k: int):
        from .softimpute import SoftImputeResult, soft_impute

        path = None if self.ckpt is None else self.ckpt / f"rank_{k:06d}.npz"
        if path is not None and path.exists():
            return SoftImputeResult.load(path)
        smaller = [r for r in self.fits if r < k]
        warm = self.fits[max(smaller)] if smaller else None
        partial = None if self.ckpt is None else self.ckpt / f"rank_{k:06d}.partial.npz"
        res = soft_impute(self.R2, k, self.lam, warm_start=warm, checkpoint=partial, **self.kw)
        if path is not None:
            res.save(path)
        return res

    def auto(self):
        if self.evaluate(0) or self.cap == 0:
            return
        lo, hi, k = 0, None, 1
        while True:
            k = min(k, self.cap)
            if self.evaluate(k):
                hi = k
                break
            lo = k
            if k == self.cap:
                return
            k *= 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.evaluate(mid):
                hi = mid
            else:
                lo = mid

    def best(self):
        """(certified rank, rank key, certificate) over every passing rank: the fewest
        nonzero singular values wins, since U diag(d) Vᵀ has rank nnz(d)."""
        best = (None, None, None)
        for r in sorted(self.mse):
            if not self.passes(r):
                continue
            if r == 0 or r not in self.fits:
                return 0, r, None
            fit = self.fits[r]
            eff = int(np.count_nonzero(_np(fit.d)))
            if best[0] is None or eff < best[0]:
                best = (eff, r, fit)
        return best
