r"""Bracketing the minimal rank of P_Ω(R): fitted certificates and structural bounds.

Paper 002, §3.1 (Definitions 1–2, Lemmas 2–3) and App. C.3 (Table 2). For the observed
cells Ω of a reward matrix and a tolerance ε,

.. math::

    \operatorname{minrank}_{\Omega,\varepsilon}(R) \le 1 + \operatorname{minrank}_{\Omega_2,\varepsilon}(R)
    \qquad \text{(Lemma 3)},

where Ω₂ keeps the rows with at least two observed cells. :func:`estimate_min_rank` looks
for the smallest rank r at which some fit on Ω₂ has

.. math::

    \operatorname{MSE}_{\Omega_2}(r) = \frac{1}{|\Omega_2|}
        \sum_{(i,j) \in \Omega_2} \bigl(R_{ij} - (U \operatorname{diag}(d) V^\top)_{ij}\bigr)^2
        \le \varepsilon .

The factors U diag(d) Vᵀ *are* a matrix of rank ≤ r with that error, so they certify
minrank_{Ω₂,ε}(R) ≤ r whatever solver produced them. The MSE is recomputed here from the
returned factors (:func:`rankkit.softimpute.observed_mse`), independently of the solver,
before a rank is accepted. Two ways of finding such factors:

``method="auto"`` (default)
    the fixed-rank solver :func:`rankkit.lowrank.fixed_rank_fit` (Riemannian
    Levenberg–Marquardt / ALS on rank-r matrices, ρ = λ), which stops on the certificate
    itself, with a rank search: r = ℓ, ℓ + 1, ℓ + 2, then doubling (ℓ the proved ε-lower
    bound, no rank below it is ever fitted) until a rank passes, then bisection down to ℓ,
    each bisection rank warm-started from the truncated factors of the smallest passing rank
    above it, then from the spectral start and ``n_restarts`` random starts; finally the
    rank just below the certificate, if a near miss, gets ``extra_starts`` more.
``method="soft-impute"``
    the paper's methodology (App. C.3): softImpute-ALS with λ = 1e-4 at the listed ranks
    (``[0, 255, 511, 767]`` reproduces Table 2) or by doubling and bisection; it stops on a
    relative-change threshold, not on ε, so its bound is loose.

When no fit reaches ε, :func:`rankkit.exact.exact_completion` builds a completion of Ω₂
that is exact up to rounding at the rank cap c = min(n₂, m₂, max cells in a row, max cells
in a column), so ``upper = c (+1)`` always holds.

Every certificate comes with its **scale** (:func:`certificate_scale`): the largest
absolute entry of the completed Ω₂ matrix (exact over all its rows × columns when that fits in
memory, else an upper bound from the factors' row norms), and its nuclear and Frobenius
norms. A low-rank certificate whose unobserved entries reach 2,000 is a different claim
from one that stays in the label range; ``max_abs=`` rejects the former.

The MSE is a mean over observed cells, as in Table 2. Definition 2 divides the squared
error by n·m ≥ :math:`|Ω₂|` instead, so MSE ≤ ε implies the condition of Definition 2: the
certificate is conservative with respect to the paper's definition.

Two brackets, one quantity each
-------------------------------
The **exact** bracket is about Definition 1 (ε = 0):

.. math::

    \text{exact\_lower} \le \operatorname{minrank}_\Omega(R) \le \text{exact\_upper},

with :func:`rankkit.bounds.rank_lower_bound` below (a forced triangular pattern, Lemma 2, or
a fully observed block of full rank) and the rank cap min(c(Ω), c(Ω₂) + 1) above
(:mod:`rankkit.exact`: a generic exact completion always exists there).

The **ε** bracket is about one ε-rank, stated with a *sum* over the cells and the budget
β = ε :math:`|Ω₂|` (equivalently: mean squared error over Ω₂ at most ε, App. C.3):

.. math::

    \operatorname{minrank}_{\Omega_2,\varepsilon}(R) = \min\{\operatorname{rank} M :
        \textstyle\sum_{\Omega_2} (R - M)^2 \le \varepsilon|\Omega_2|\}, \qquad
    \operatorname{minrank}_{\Omega,\varepsilon}(R) = \min\{\operatorname{rank} M :
        \textstyle\sum_{\Omega} (R - M)^2 \le \varepsilon|\Omega_2|\},

so minrank_{Ω₂,ε} ≤ minrank_{Ω,ε} ≤ minrank_{Ω₂,ε} + 1 (Lemma 3), and

.. math::

    \text{eps\_lower} \le \operatorname{minrank}_{\Omega_2,\varepsilon}(R) \le \text{rank\_certified},
    \qquad \text{eps\_lower} \le \operatorname{minrank}_{\Omega,\varepsilon}(R) \le \text{upper}.

``eps_lower`` is Eckart–Young on cell-disjoint fully observed blocks of Ω₂
(:func:`rankkit.bounds.eps_rank_lower_bound`): a proof from the observed values, shipped
with its blocks. ``upper`` is ``rank_certified`` when Ω's single-entry rows can be appended
to the certificate exactly (:func:`rankkit.omega.extend_certificate`, verified on every
cell of Ω), else ``rank_certified + 1`` (Lemma 3). An error over Ω within ε :math:`|Ω₂|` is a mean
over Ω within ε :math:`|Ω₂|` / :math:`|Ω|` ≤ ε, and Definition 2 divides by n·m ≥ :math:`|Ω|`, so ``upper`` bounds
those readings of the ε-rank too; ``eps_lower`` does not (a mean over Ω allows the larger
sum ε :math:`|Ω|`). A failing fit is never a lower bound: the lower ends are proofs, the upper ends
certificates, and the summary prints each bracket with the source of both of its ends.
"""

from __future__ import annotations

import html
import math
import numbers
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ._backend import array_backend, to_numpy
from ._io import atomic_json, fingerprint, read_json
from .bounds import (
    BlockCertificate,
    EpsRankLowerBound,
    RankLowerBound,
    TriangularCertificate,
    eps_rank_lower_bound,
    rank_lower_bound,
)
from .exact import exact_completion, rank_cap
from .matrix import RewardMatrix, as_reward_matrix
from .sequences import RewardDataset
from .softimpute import observed_mse

__all__ = ["estimate_min_rank", "exact_completion", "MinRankEstimate", "certificate_scale", "METHODS"]

METHODS = ("auto", "soft-impute")
_STATE_FILE = "minrank_state.json"
# Largest n₂ × m₂ for which the certificate's max |entry| is computed exactly (row blocks of
# U diag(d) Vᵀ, never the whole matrix at once); above it, a bound from factor row norms.
_EXACT_SCALE_CELLS = 1 << 28
# "auto": further starts at a rank only while the best MSE there is within this factor of ε
_RETRY_BAND = 10.0


# ---------------------------------------------------------------------------------------
# the certificate's scale
# ---------------------------------------------------------------------------------------
def certificate_scale(U, d, V, *, exact_cells: int = _EXACT_SCALE_CELLS,
                      block_elems: int = 1 << 24) -> dict:
    r"""How large the completed matrix M = U diag(d) Vᵀ is, off Ω as well as on it.

    Returns a dict with

    - ``max_abs``: max_{i,j} :math:`|M_{ij}|` over all n × m cells — exact when n·m ≤ ``exact_cells``
      (computed in row blocks of ``block_elems`` cells), else the Cauchy–Schwarz bound
      max_i ‖(U diag(d))_i‖ · max_j ‖V_j‖ ≥ max :math:`|M_{ij}|`;
    - ``max_abs_exact``: which of the two it is;
    - ``nuclear``: ‖M‖_* = Σ :math:`|d|` (U, V orthonormal), ``frobenius``: ‖M‖_F = ‖d‖₂;
    - ``rms``: ‖M‖_F / √(n m), the root-mean-square entry.
    """
    U, V = to_numpy(U, np.float64), to_numpy(V, np.float64)
    d = to_numpy(d, np.float64).reshape(-1)
    n, m = U.shape[0], V.shape[0]
    nuc, fro = float(np.abs(d).sum()), float(np.sqrt((d * d).sum()))
    out = {"nuclear": nuc, "frobenius": fro, "rms": fro / math.sqrt(max(n * m, 1))}
    if d.size == 0 or n == 0 or m == 0:
        return {**out, "max_abs": 0.0, "max_abs_exact": True}
    Ud = U * d
    if n * m <= exact_cells:
        step = max(1, block_elems // m)
        mx = 0.0
        for a in range(0, n, step):
            mx = max(mx, float(np.abs(Ud[a:a + step] @ V.T).max()))
        return {**out, "max_abs": mx, "max_abs_exact": True}
    bound = float(np.sqrt((Ud * Ud).sum(1)).max() * np.sqrt((V * V).sum(1)).max())
    return {**out, "max_abs": bound, "max_abs_exact": False}


# ---------------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------------
@dataclass
class MinRankEstimate:
    """What is known about the minimal rank of P_Ω(R): an exact lower bound, a certified
    upper bound on the ε-rank, and every fit behind them.

    Attributes
    ----------
    eps : float
        Tolerance on the MSE over Ω₂.
    lam : float
        Nuclear-norm weight: soft-impute's λ, or the fixed-rank solver's ρ.
    method : {"auto", "soft-impute"}
        How the certificate was searched (module docstring).
    label : int or str
    exact_lower, exact_upper : int
        The exact bracket ``exact_lower ≤ minrank_Ω(R) ≤ exact_upper`` (ε = 0, Definition 1):
        the structural bound of :mod:`rankkit.bounds.exact_rank` and the rank cap
        min(c(Ω), c(Ω₂) + 1[Lemma 3]) at which an exact completion always exists
        (:mod:`rankkit.exact`).
    eps_lower : int
        ``eps_lower ≤ minrank_{Ω₂,ε}(R)``, proved by Eckart–Young on cell-disjoint fully
        observed blocks (:mod:`rankkit.bounds.eps_rank`, certificate in ``eps_bounds``); it
        bounds ``minrank_{Ω,ε}`` with the same budget too.
    upper : int or None
        ``minrank_{Ω,ε}(R) ≤ upper`` for the squared error over Ω within the same budget
        ε :math:`|Ω₂|` (hence MSE over Ω ≤ ε and Definition 2's condition): ``rank_certified`` when the
        single-entry rows of Ω can be appended to the certificate exactly (``omega_extension``),
        ``rank_certified + 1`` (Lemma 3) when they cannot; None when nothing, not even the
        exact completion at the cap, reaches ε (or ``exact_fallback=False``).
    rank_certified : int or None
        Rank of the certifying factors on Ω₂ (nonzero entries of d): ``minrank_{Ω₂,ε}(R) ≤
        rank_certified``, so ``[eps_lower, rank_certified]`` brackets the App. C.3 quantity.
    certified_at : int or None
        The key of ``mse_by_rank`` whose fit is the certificate (0 for the zero matrix;
        None when the exact completion certifies).
    mse_by_rank : dict of int -> float
        Best MSE over Ω₂ at every rank evaluated, recomputed from the factors (for
        soft-impute, the Table 2 row; rank 0 is the zero matrix).
    converged_by_rank : dict of int -> bool
        soft-impute: met ``thresh``; fixed-rank: reached ε.
    trials : list of dict
        Every fit run, in order: ``rank``, ``method`` (the solver and its start), ``n_iter``
        (iterations actually run), ``seconds``, ``mse`` (recomputed), ``passed``, ``stop``
        and, for fits that reached ε, ``max_abs``.
    scale : dict or None
        :func:`certificate_scale` of the certificate (None when the zero matrix certifies).
    max_abs : float or None
        Certificates whose largest absolute entry exceeds this were rejected.
    certificate : SoftImputeResult or None
        The fit behind ``rank_certified`` (None when r = 0: the zero matrix certifies).
    omega_shape, omega_nnz, omega2_shape, omega2_nnz : shapes and observed cells of Ω, Ω₂.
    n_single_rows : int
        Single-entry rows removed by the Lemma 3 reduction.
    single_rows_nonzero : bool
        Some removed single-entry row holds a nonzero value (then Lemma 3's +1 applies).
    bounds : RankLowerBound or None
        Certificates of ``exact_lower``.
    eps_bounds : EpsRankLowerBound or None
        Certificate of ``eps_lower`` (blocks in the coordinates of Ω₂ =
        ``rk.reduce_omega2(P_Ω(R))``); ``eps_bounds.verify(R2)`` re-checks it.
    omega_extension : dict or None
        How the Ω₂ certificate extends to all of Ω (:func:`rankkit.omega.extend_certificate`):
        ``appended`` (rows fitted exactly, no + 1) or not, the squared errors and the
        extension's max ``|entry|`` bound.
    ranks : "auto" or list of int
    max_iter, thresh : solver settings (``thresh`` only for soft-impute).
    elapsed : float
        Seconds spent (this call; fits restored from a checkpoint cost nothing).
    message : str
        Why ``upper`` is None, or an empty string.
    certificate_source : str
        ``"fixed-rank"``, ``"soft-impute"``, ``"zero"`` (rank 0) or ``"exact-completion"``.
    exact_mse : float or None
        MSE over Ω₂ of the constructive exact completion at the cap, when it was computed.
    """

    eps: float
    lam: float
    label: int | str
    exact_lower: int
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
    method: str = "soft-impute"
    trials: list[dict] = field(default_factory=list)
    scale: dict | None = None
    max_abs: float | None = None
    exact_upper: int | None = None
    eps_lower: int = 0
    eps_bounds: EpsRankLowerBound | None = None
    omega_extension: dict | None = None

    # ---- the two brackets -------------------------------------------------------------
    @property
    def lower(self) -> int:
        """Deprecated alias of ``exact_lower`` (a bound on the *exact* rank, not on the
        ε-rank that ``upper`` bounds); use ``exact_lower`` or ``eps_lower``."""
        import warnings

        warnings.warn("MinRankEstimate.lower is deprecated: it is exact_lower, a bound on the exact "
                      "(ε = 0) minimal rank; the ε-rank bracket is [eps_lower, upper]",
                      DeprecationWarning, stacklevel=2)
        return self.exact_lower

    @property
    def eps_bracket(self) -> tuple[int, int | None]:
        """(eps_lower, upper): both ends bound minrank_{Ω,ε} with the budget ε :math:`|Ω₂|`."""
        return self.eps_lower, self.upper

    @property
    def exact_bracket(self) -> tuple[int, int | None]:
        """(exact_lower, exact_upper): both ends bound the exact minimal rank minrank_Ω."""
        return self.exact_lower, self.exact_upper

    # ---- reporting -----------------------------------------------------------------
    def _upper_source(self) -> str:
        ext = self.omega_extension or {}
        if self.upper > self.rank_certified:
            plus = " + 1 (Lemma 3: single-entry rows stacked as a rank-1 block)"
        elif self.n_single_rows and ext.get("appended"):
            plus = (f"; the {self.n_single_rows:,} single-entry rows of Ω appended exactly "
                    f"(extension max |entry| ≤ {ext['max_abs_bound']:.3g})")
        else:
            plus = ""
        src = self.certificate_source
        if src == "zero":
            what = "the zero matrix fits Ω₂ within ε"
        elif src == "exact-completion":
            what = (f"rank-{self.rank_certified} constructive exact completion on Ω₂ at the rank cap "
                    f"(Gaussian factor, per-row least squares; not soft-impute), λ-free")
        elif src == "fixed-rank":
            what = (f"rank-{self.rank_certified} fixed-rank certificate on Ω₂ "
                    f"(MSE {self.mse_by_rank[self.certified_at]:.3g}, ρ = {self.lam:g})")
        else:
            what = (f"rank-{self.rank_certified} soft-impute certificate on Ω₂ "
                    f"(MSE {self.mse_by_rank[self.certified_at]:.3g}), relative to λ = {self.lam:g}")
        return what + plus

    def _scale_line(self) -> str | None:
        s = self.scale
        if not s:
            return None
        kind = "exact over all Ω₂ rows × columns" if s["max_abs_exact"] else "upper bound from factor row norms"
        return (f"  certificate scale: max |entry| {s['max_abs']:.3g} ({kind}), "
                f"‖M‖_* {s['nuclear']:.3g}, ‖M‖_F {s['frobenius']:.3g}")

    def summary(self) -> str:
        """Readable report: the fits (rank | MSE on Ω₂), then the two bounds as two statements."""
        n, m = self.omega_shape
        n2, m2 = self.omega2_shape
        if self.method == "soft-impute":
            how = (f"soft-impute ALS (the paper's methodology): λ = {self.lam:g}, max_iter = "
                   f"{self.max_iter}, thresh = {self.thresh:g}")
        else:
            how = (f"fixed-rank certificates (rankkit.lowrank, ρ = {self.lam:g}, max_iter = "
                   f"{self.max_iter}) over ranks: up from the proved ε-lower bound, then doubling + bisection")
        lines = [
            f"minimal rank of P_Ω(R), label {self.label!r}",
            f"  Ω : {n:,} × {m:,}, {self.omega_nnz:,} observed cells",
            f"  Ω₂: {n2:,} × {m2:,}, {self.omega2_nnz:,} observed cells "
            f"({self.n_single_rows:,} single-entry rows removed, Lemma 3)",
            f"  {how}; ε = {self.eps:g}",
            "",
        ]
        if self.method == "soft-impute" or not self.trials:
            lines += [f"  {'rank':>6} | MSE on Ω₂", f"  {'-' * 6}-+-{'-' * 12}"]
            for r in sorted(self.mse_by_rank):
                mse = self.mse_by_rank[r]
                ok = " ≤ ε" if mse <= self.eps else ""
                conv = "" if self.converged_by_rank.get(r, True) else "  (not converged)"
                lines.append(f"  {r:>6} | {mse:.3g}{ok}{conv}")
        else:
            lines += [f"  {'rank':>6} | {'solver':<16} | {'iter':>5} | {'seconds':>7} | MSE on Ω₂",
                      f"  {'-' * 6}-+-{'-' * 16}-+-{'-' * 5}-+-{'-' * 7}-+-{'-' * 12}"]
            for t in self.trials:
                ok = " ≤ ε" if t["passed"] else ""
                if t.get("rejected"):
                    ok = f" ≤ ε, rejected: max |entry| {t['max_abs']:.3g} > max_abs"
                lines.append(f"  {t['rank']:>6} | {t['method']:<16} | {t['n_iter']:>5} | "
                             f"{t['seconds']:>7.2f} | {t['mse']:.3g}{ok}")
        if self.exact_mse is not None:
            ok = " ≤ ε" if self.exact_mse <= self.eps else " > ε"
            lines.append(f"  exact completion at the cap (rank {self.meta.get('rank_cap')}, λ-free): "
                         f"MSE {self.exact_mse:.3g}{ok}")
        lines += ["", *self._bracket_lines()]
        if self.upper is not None and self.method == "soft-impute":
            above = [r for r, v in sorted(self.mse_by_rank.items())
                     if v > self.eps and r >= self.rank_certified]
            if above:
                lines.append(f"  note: soft-impute missed ε at rank(s) {above}, at or above the "
                             f"certified rank {self.rank_certified}: a failing fit (λ bias, thresh, "
                             f"max_iter) is not a lower bound and is not trusted")
        if self.upper is not None:
            lines.append("  (a rank that failed is no evidence; the lower ends are proofs from the "
                         "observed values alone)")
        return "\n".join(lines)

    def _bracket_lines(self) -> list[str]:
        """The two brackets, one quantity each, with where every end comes from."""
        up = "?" if self.upper is None else str(self.upper)
        ex_up = "?" if self.exact_upper is None else str(self.exact_upper)
        budget = self.eps * self.omega2_nnz
        lines = [f"exact minimal rank (ε = 0):   {self.exact_lower} ≤ minrank_Ω(R) ≤ {ex_up}",
                 f"  lower: {self._lower_reason()}",
                 f"  upper: {self._exact_upper_reason()}",
                 f"minimal ε-rank (ε = {self.eps:g}: squared error over Ω₂ ≤ ε·|Ω₂| = {budget:.3g}):",
                 f"  on Ω₂ (App. C.3):       {self.eps_lower} ≤ minrank_Ω₂,ε(R) ≤ "
                 f"{'?' if self.rank_certified is None else self.rank_certified}",
                 f"  on Ω (same budget):     {self.eps_lower} ≤ minrank_Ω,ε(R) ≤ {up}",
                 f"  lower: {self._eps_lower_reason()}"]
        if self.upper is None:
            lines.append(f"  upper: unknown — {self.message}")
        else:
            lines.append(f"  upper: {self._upper_source()}")
            sl = self._scale_line()
            if sl:
                lines.append(sl)
        return lines

    def _lower_reason(self) -> str:
        b = self.bounds
        if b is None:
            return "observed values only (lower_bound=False)"
        if self.exact_lower == 0:
            return "all observed values are 0"
        if b.triangular.size >= max(b.block.rank, 2):
            return f"triangular pattern of size {b.triangular.size}, Lemma 2"
        if b.block.rank >= 2:
            return (f"fully observed {len(b.block.rows)} × {len(b.block.cols)} block "
                    f"of rank {b.block.rank}")
        return "some observed value is nonzero"

    def _eps_lower_reason(self) -> str:
        b = self.eps_bounds
        if b is None:
            return ("the zero matrix misses ε" if self.eps_lower else "the zero matrix fits") + \
                " (no block search: lower_bound=False)"
        if self.eps_lower == 0:
            return "the zero matrix fits Ω₂ within ε"
        shapes = [f"{r}×{c}" for r, c in (blk.shape for blk in b.blocks)]
        if all(min(blk.shape) == 1 for blk in b.blocks):
            return f"the zero matrix misses ε ({len(shapes)} rows hold more than the budget)"
        head = ", ".join(shapes[:4]) + (f", … ({len(shapes)} in all)" if len(shapes) > 4 else "")
        return (f"Eckart–Young on {len(shapes)} cell-disjoint fully observed block(s) of Ω₂ ({head}): "
                f"any rank-{self.eps_lower - 1} matrix errs by ≥ {b.tails(self.eps_lower - 1):.3g} on them")

    def _exact_upper_reason(self) -> str:
        cap = self.meta.get("rank_cap")
        return (f"rank cap: an exact completion exists at rank min(c(Ω), c(Ω₂) + 1) with c(Ω₂) = {cap} "
                f"(generic factors, rankkit.exact)")

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        up = "?" if self.upper is None else self.upper
        ex_up = "?" if self.exact_upper is None else self.exact_upper
        return (f"MinRankEstimate(exact=[{self.exact_lower}, {ex_up}] (ε=0), "
                f"eps=[{self.eps_lower}, {up}] (ε={self.eps:g}), "
                f"source={self.certificate_source!r}, method={self.method!r}, "
                f"omega2={self.omega2_shape[0]}×{self.omega2_shape[1]}/{self.omega2_nnz} cells"
                + (f", max_abs={self.scale['max_abs']:.3g}" if self.scale else "") + ")")

    def _repr_html_(self) -> str:
        e = html.escape
        rows = "".join(
            f"<tr><td>{t['rank']}</td><td>{e(t['method'])}</td><td>{t['n_iter']}</td>"
            f"<td>{t['seconds']:.2f}</td><td>{t['mse']:.3g}</td><td>{'✓' if t['passed'] else ''}</td></tr>"
            for t in self.trials)
        scale = e(self._scale_line() or "")
        items = "".join(f"<li>{e(line.strip())}</li>" for line in self._bracket_lines())
        return (f"<div><b>Minimal rank of P_Ω(R)</b>, label {e(repr(self.label))}: "
                f"Ω₂ {self.omega2_shape[0]:,} × {self.omega2_shape[1]:,}, {self.omega2_nnz:,} cells"
                f"<ul>{items}</ul><small>{scale}</small>"
                f"<table><tr><th>rank</th><th>solver</th><th>iter</th><th>s</th><th>MSE on Ω₂</th>"
                f"<th>≤ ε</th></tr>{rows}</table></div>")

    def plot(self, ax=None):
        """MSE on Ω₂ against rank (log scale), the ε line, the certificate marked.

        Returns the matplotlib Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5.5, 4))
        ranks = sorted(self.mse_by_rank)
        mse = [max(self.mse_by_rank[r], 1e-300) for r in ranks]
        label = f"soft-impute (λ = {self.lam:g})" if self.method == "soft-impute" else "fixed-rank fit"
        ax.semilogy(ranks, mse, marker="o", linestyle="-" if self.method == "soft-impute" else "none",
                    label=f"{label}: best MSE on Ω₂")
        ax.axhline(self.eps, color="0.4", linestyle="--", label=f"ε = {self.eps:g}")
        if self.certified_at is not None and self.certified_at in self.mse_by_rank:
            r = self.certified_at
            ax.semilogy([r], [max(self.mse_by_rank[r], 1e-300)], marker="*", markersize=16, color="C3",
                        linestyle="none", label=f"certificate: ε-rank ≤ {self.upper}")
        if self.eps_lower:
            ax.axvspan(-0.5, self.eps_lower - 0.5, color="C2", alpha=0.12,
                       label=f"ε-rank ≥ {self.eps_lower} (Eckart–Young, proved)")
        ax.set_xlabel("completion rank r")
        ax.set_ylabel("mean squared error on Ω₂")
        ax.legend(fontsize=8)
        return ax

    def to_dict(self) -> dict:
        """JSON-serialisable view (the certificate factors are left to :meth:`save`)."""
        cert = self.certificate
        return {
            "eps": self.eps, "lam": self.lam, "label": self.label, "method": self.method,
            "exact_lower": self.exact_lower, "exact_upper": self.exact_upper,
            "eps_lower": self.eps_lower, "upper": self.upper, "rank_certified": self.rank_certified,
            "eps_bounds": None if self.eps_bounds is None else self.eps_bounds.to_dict(),
            "omega_extension": self.omega_extension,
            "certified_at": self.certified_at,
            "mse_by_rank": {int(k): float(v) for k, v in sorted(self.mse_by_rank.items())},
            "converged_by_rank": {int(k): bool(v) for k, v in sorted(self.converged_by_rank.items())},
            "omega_shape": list(self.omega_shape), "omega_nnz": self.omega_nnz,
            "omega2_shape": list(self.omega2_shape), "omega2_nnz": self.omega2_nnz,
            "n_single_rows": self.n_single_rows, "single_rows_nonzero": self.single_rows_nonzero,
            "bounds": None if self.bounds is None else self.bounds.to_dict(),
            "ranks": self.ranks, "max_iter": self.max_iter, "thresh": self.thresh,
            "elapsed": self.elapsed, "message": self.message,
            "certificate_rank": None if cert is None else int(to_numpy(cert.d).size),
            "meta": self.meta, "certificate_source": self.certificate_source,
            "exact_mse": self.exact_mse, "trials": self.trials, "scale": self.scale,
            "max_abs": self.max_abs,
        }

    # ---- persistence -----------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the estimate; returns ``path``.

        ``path`` ending in ``.json``: that file, and the certificate factors beside it as
        ``<stem>.certificate.npz``. Any other path is a directory that receives
        ``estimate.json`` and ``certificate.npz``. Every file is written to a temporary name
        and moved into place (``os.replace``), so an interrupted save never leaves a
        half-written file under the final name."""
        path = Path(path)
        if path.suffix.lower() == ".json":
            path.parent.mkdir(parents=True, exist_ok=True)
            file, npz = path, path.with_name(path.stem + ".certificate.npz")
        else:
            if path.exists() and not path.is_dir():
                raise ValueError(f"{path} exists and is not a directory; pass a directory or a path "
                                 f"ending in .json")
            path.mkdir(parents=True, exist_ok=True)
            file, npz = path / "estimate.json", path / "certificate.npz"
        if self.certificate is not None:
            self.certificate.save(npz)
        atomic_json(file, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> MinRankEstimate:
        """Read what :meth:`save` wrote (the ``.json`` file or the directory)."""
        path = Path(path)
        if path.suffix.lower() == ".json":
            file, npz = path, path.with_name(path.stem + ".certificate.npz")
        else:
            file, npz = path / "estimate.json", path / "certificate.npz"
        if not file.is_file():
            raise FileNotFoundError(f"{file} does not exist; save an estimate there with "
                                    f"MinRankEstimate.save({str(path)!r})")
        d = read_json(file, "saved estimate", fix="save the estimate again, or delete it")
        cert = None
        if d.get("certificate_rank") is not None:
            from .softimpute import SoftImputeResult

            cert = SoftImputeResult.load(npz)
        return cls(
            eps=d["eps"], lam=d["lam"], label=d["label"], exact_lower=d.get("exact_lower", d.get("lower")),
            upper=d["upper"], exact_upper=d.get("exact_upper"), eps_lower=d.get("eps_lower", 0),
            eps_bounds=None if d.get("eps_bounds") is None else EpsRankLowerBound.from_dict(d["eps_bounds"]),
            omega_extension=d.get("omega_extension"),
            rank_certified=d["rank_certified"], certified_at=d["certified_at"],
            mse_by_rank={int(k): v for k, v in d["mse_by_rank"].items()},
            converged_by_rank={int(k): v for k, v in d["converged_by_rank"].items()},
            certificate=cert, omega_shape=tuple(d["omega_shape"]), omega_nnz=d["omega_nnz"],
            omega2_shape=tuple(d["omega2_shape"]), omega2_nnz=d["omega2_nnz"],
            n_single_rows=d["n_single_rows"], single_rows_nonzero=d["single_rows_nonzero"],
            bounds=_bounds_from_dict(d["bounds"]), ranks=d["ranks"], max_iter=d["max_iter"],
            thresh=d["thresh"], elapsed=d["elapsed"], message=d["message"], meta=d.get("meta", {}),
            certificate_source=d.get("certificate_source", "soft-impute"),
            exact_mse=d.get("exact_mse"), method=d.get("method", "soft-impute"),
            trials=d.get("trials", []), scale=d.get("scale"), max_abs=d.get("max_abs"),
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


def _fingerprint(R2: RewardMatrix, label, settings: dict) -> dict:
    # a dict, not one digest: a mismatch on resume names the setting that changed
    return {"shape": list(R2.shape), "nnz": R2.nnz,
            "data": fingerprint(R2.indptr, R2.indices, R2.label_values(label)), **settings}


# ---------------------------------------------------------------------------------------
# the public function
# ---------------------------------------------------------------------------------------
def _source_matrix(source, *, max_len, text, labels, tokenizer, split) -> RewardMatrix:
    """P_Ω(R) of whatever the user holds: a matrix as is, anything else through
    :func:`rankkit.datasets.as_dataset` (the same coercion :func:`rankkit.datasets.load` uses)."""
    if isinstance(source, RewardMatrix) or sp.issparse(source):
        extra = {k: v for k, v in (("max_len", max_len), ("text", text), ("labels", labels),
                                   ("split", split)) if v is not None}
        if extra:
            raise ValueError(f"{sorted(extra)} apply to text sources only; got a "
                             f"{type(source).__name__}: truncate or select before building it")
        return as_reward_matrix(source)
    if isinstance(source, np.ndarray) or array_backend(source) != "numpy":
        raise TypeError(f"source is a dense {type(source).__name__}: rankkit cannot tell observed "
                        f"cells from missing ones in it. Use RewardMatrix.from_dense(array) (NaN marks "
                        f"a missing cell) or a scipy.sparse matrix (stored entries are observations)")
    from . import datasets
    from .trie import build_reward_matrix

    if isinstance(source, RewardDataset):
        ds = source
    else:
        ds = datasets.as_dataset(source, text=text, labels=labels, tokenizer=tokenizer, split=split)
    return build_reward_matrix(ds, max_len=max_len)


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


def estimate_min_rank(source, eps: float = 1e-6, *, method: str = "auto", label: int | str = 0,
                      ranks="auto", lam: float = 1e-4, max_iter: int | None = None,
                      thresh: float = 1e-5, solver: str = "auto", n_restarts: int = 1,
                      extra_starts: int = 1, solver_options: dict | None = None,
                      max_abs: float | None = None, backend: str = "auto", device=None,
                      seed: int = 0, progress: bool = True, max_len: int | None = None,
                      checkpoint_dir: str | os.PathLike | None = None, lower_bound: bool = True,
                      exact_fallback: bool = True, text=None, labels=None, tokenizer="gpt2",
                      split: str | None = None) -> MinRankEstimate:
    r"""Bound the minimal rank of P_Ω(R) from both sides (paper 002, Def. 1–2, Lemma 3, App. C.3).

    Builds P_Ω(R), reduces it to Ω₂ (rows with ≥ 2 observed cells), finds the smallest
    rank r at which a fit on Ω₂ has MSE ≤ ``eps`` (recomputed from its factors); then

    .. math::

        \operatorname{minrank}_{\Omega,\varepsilon}(R) \le
            \text{upper} = r + \mathbb{1}[\text{a removed single-entry row is nonzero}],
        \qquad \text{lower} \le \operatorname{minrank}_{\Omega}(R).

    If no fit passes, r is the rank cap c, certified by the constructive
    :func:`rankkit.exact.exact_completion` (λ-free; see ``exact_fallback``).

    Parameters
    ----------
    source
        What the user holds: a preset name (``"vader:tweets"``), a CSV / TSV / JSONL /
        Parquet path, a pandas DataFrame, a ``datasets.Dataset`` or ``DatasetDict`` (with
        ``split=``), a dict of columns, ``(texts, labels)``, ``(token_id_lists, labels)``, a
        :class:`RewardDataset` — all through :func:`rankkit.datasets.as_dataset`, the
        coercion :func:`rankkit.datasets.load` uses — or a :class:`RewardMatrix` / scipy
        sparse matrix (every stored entry, explicit zeros included, is an observation).
    eps : float, default 1e-6
        Tolerance on the MSE over Ω₂ (the paper's resolution for float32).
    method : {"auto", "soft-impute"}, default "auto"
        "auto": fixed-rank certificates (:func:`rankkit.lowrank.fixed_rank_fit` with ρ =
        ``lam``) and the rank search of the module docstring — the tightest bound rankkit
        can give. "soft-impute": the paper's methodology exactly as in App. C.3 (Table 2).
    label : int or str, default 0
        Which response column to analyse.
    ranks : "auto" or list of int, default "auto"
        A list evaluates exactly those ranks (``[0, 255, 511, 767]`` with
        ``method="soft-impute"`` reproduces Table 2); r is the smallest passing one.
        "auto" evaluates rank 0 (the zero matrix), then 1, 2, 4, … (soft-impute) or ℓ, ℓ + 1,
        ℓ + 2, 2(ℓ + 2), … with ℓ the proved ε-lower bound (fixed-rank; the walk only when
        ℓ ≥ 2) up to the cap, then bisects between the last failing rank (or ℓ − 1) and the
        first passing rank. The cap is
        min(n₂, m₂, max cells per row, max cells per column) of Ω₂, a rank at which an
        exact completion always exists. A listed rank above min(n₂, m₂) is fitted at
        min(n₂, m₂) and reported under the rank asked for.
    lam : float, default 1e-4
        Nuclear-norm weight: soft-impute's λ (R softImpute convention, App. C.3), and the
        fixed-rank solver's ρ, so both minimise the paper's objective (17).
    max_iter : int, optional
        Iterations per fit: default 1000 for soft-impute (App. C.3), 500 for fixed-rank.
    thresh : float, default 1e-5
        soft-impute's convergence threshold (relative change; unused by "auto", which
        stops on ε itself).
    solver : {"auto", "als", "rcg", "rlm"}, default "auto"
        The fixed-rank solver (:mod:`rankkit.lowrank`).
    n_restarts : int, default 1
        "auto": random restarts tried at a bisection rank after its warm and spectral starts.
        Further starts are tried only while the best MSE at that rank is within 10 × ε (a
        near miss); a start that ends far above ε ends the rank.
    extra_starts : int, default 1
        "auto": after the search, the rank just below the certificate, when its best fit
        was a near miss and it is not below the proved ``eps_lower``, gets the truncated
        certificate, the spectral start and this many random starts more (0: off); on
        success the next rank down is tried the same way.
    solver_options : dict, optional
        More keywords of :func:`rankkit.lowrank.fixed_rank_fit` (``cg_iter``, ``window`` …).
    max_abs : float, optional
        Reject a certificate whose completed Ω₂ matrix has an entry larger than max_abs in absolute value
        (:func:`certificate_scale`); such fits are listed in ``trials`` as rejected.
    backend, device : where the fits run ("auto", "numpy", "torch", "cupy").
    seed : int
        Seed of every start (the same call gives the same answer).
    progress : bool
        Show tqdm bars (one over ranks, one inside each fit).
    max_len : int, optional
        Truncate utterances to this many tokens (text sources only).
    checkpoint_dir : path, optional
        Each finished fit is saved there; a rerun with the same matrix and settings loads
        finished fits instead of refitting, and an interrupted fit resumes from its solver's
        own checkpoint. A directory made for a different matrix or settings is refused.
    lower_bound : bool, default True
        Compute the structural lower bound (:func:`rankkit.bounds.rank_lower_bound`);
        when False ``lower`` is 1 if any observed value is nonzero, else 0.
    exact_fallback : bool, default True
        When no fit reaches ε (or the best has a rank above the cap c), build the
        constructive exact completion of Ω₂ at rank c, recompute its MSE from its factors
        and, if ≤ ε, certify ``upper = c (+1 by Lemma 3)``. False keeps the fits as the only
        certificates.
    text, labels, tokenizer, split
        For text sources, with the meaning they have in :func:`rankkit.datasets.load`
        (``labels`` names the label *columns* of a table; ``label`` picks the one analysed).

    Returns
    -------
    MinRankEstimate

    Notes
    -----
    A passing fit U diag(d) Vᵀ is itself a matrix of rank ≤ nnz(d) with MSE ≤ ε on Ω₂,
    so it certifies minrank_{Ω₂,ε} ≤ nnz(d) regardless of the solver and of λ; stacking it
    with a rank-1 block that reproduces the single-entry rows exactly (each such row is its
    value times the all-ones row) gives a completion of Ω with the same squared error,
    hence Lemma 3's +1. Only *passing* fits are evidence: a failing rank says this solver
    from these starts did not reach ε there, never that minrank exceeds it. So ``upper`` is
    the fewest nonzero singular values over *all* passing fits. Bisection assumes the best
    MSE decreases with rank, which holds for the optimum but not provably for any solver;
    every fit is listed in ``trials``.

    References
    ----------
    Troshin, Niculae, Fokkens, *On the Low-Rank Parametrization of Reward Models for
    Controlled Language Generation*, TMLR — §3.1 and App. C.3.
    Vandereycken, *Low-rank matrix completion by Riemannian optimization*, SIAM J. Optim.
    23 (2013). Hastie, Mazumder, Lee, Zadeh, *Matrix Completion and Low-Rank SVD via Fast
    Alternating Least Squares*, JMLR 16 (2015).

    Examples
    --------
    >>> import rankkit as rk
    >>> est = rk.estimate_min_rank(rk.synthetic.upper_triangular(8), progress=False)
    >>> est.lower, est.upper
    (8, 8)
    """
    t0 = time.perf_counter()
    max_iter, ranks = _check_args(method, eps=eps, lam=lam, max_abs=max_abs, max_iter=max_iter,
                                  n_restarts=n_restarts, ranks=ranks, extra_starts=extra_starts)
    R = _source_matrix(source, max_len=max_len, text=text, labels=labels, tokenizer=tokenizer,
                       split=split)
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
        exact_lower = bounds.lower
        eps_bounds = eps_rank_lower_bound(R2, float(eps), label=j)
        eps_lower = eps_bounds.lower
    else:
        bounds, exact_lower = None, int(bool(np.any(vals != 0)))
        x2 = R2.label_values(j)
        eps_bounds, eps_lower = None, _zero_misses(float(x2 @ x2), R2.nnz, eps)

    common = dict(eps=float(eps), max_iter=int(max_iter), backend=backend, device=device, seed=seed,
                  progress=progress, checkpoint_dir=checkpoint_dir)
    if method == "soft-impute":
        search = _Search(R2, j, lam=float(lam), thresh=float(thresh), **common)
    else:
        search = _CertSearch(R2, j, rho=float(lam), solver=solver, n_restarts=int(n_restarts),
                             extra_starts=int(extra_starts), max_abs=max_abs,
                             options=_solver_options(solver_options), **common)
    _run_search(search, ranks, method, eps_lower)
    exact_upper = _exact_upper(rank_cap(R), search.cap, single_nonzero, bool(np.any(vals != 0)))

    def exact(cap):
        # the λ-free constructive certificate at the cap (rankkit.exact)
        ex = exact_completion(R2, cap, seed=seed, label=j)
        if max_abs is not None:
            ex.meta["scale"] = certificate_scale(ex.U, ex.d, ex.V)
        return ex, float(ex.mse), int(np.count_nonzero(ex.d)), \
            None if max_abs is None else ex.meta["scale"]["max_abs"]

    def finish(cert, source_name):
        return cert, None if cert is None else (cert.meta.get("scale") or
                                                certificate_scale(cert.U, cert.d, cert.V))

    def extend(cert):
        from .omega import extend_certificate

        return extend_certificate(R, cert.U, cert.d, cert.V, label=j, budget=float(eps) * R2.nnz,
                                  max_abs=max_abs)

    return _assemble(search, method=method, eps=eps, lam=lam, label=label, bounds=bounds,
                     brackets=dict(exact_lower=exact_lower, exact_upper=exact_upper, eps_lower=eps_lower,
                                   eps_bounds=eps_bounds), extend=extend, n_single=n_single, single_nonzero=single_nonzero, shapes=(R.shape, R.nnz, R2.shape, R2.nnz),
                     ranks=ranks, max_iter=max_iter, thresh=thresh, t0=t0, max_abs=max_abs,
                     exact=exact if exact_fallback else None, finish=finish,
                     meta={"backend": backend, "seed": seed, "rank_cap": search.cap,
                           **({} if method == "soft-impute" else {"solver": solver,
                                                                  "n_restarts": int(n_restarts),
                                                                  "extra_starts": int(extra_starts)})})


# ---- shared by the one-process and the distributed estimate_min_rank ---------------------------
def _check_args(method, *, eps, lam, max_abs, max_iter, n_restarts, ranks, extra_starts=0):
    """Validate the search settings; returns (max_iter with its per-method default, ranks)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} ('auto': fixed-rank certificates, "
                         f"'soft-impute': the paper's App. C.3 methodology), got {method!r}")
    for name, v in (("eps", eps), ("lam", lam)):
        if not (isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if max_abs is not None and not (isinstance(max_abs, numbers.Real) and max_abs > 0):
        raise ValueError(f"max_abs must be None or a number > 0, got {max_abs!r}")
    if max_iter is None:
        max_iter = 1000 if method == "soft-impute" else 500
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    for name, v in (("n_restarts", n_restarts), ("extra_starts", extra_starts)):
        if not (isinstance(v, numbers.Integral) and v >= 0):
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    return int(max_iter), _check_ranks(ranks)


def _solver_options(solver_options) -> dict:
    opts = dict(solver_options or {})
    clash = sorted(set(opts) & {"label", "eps", "rho", "method", "max_iter", "backend", "device",
                                "progress", "warm_start", "init", "seed", "checkpoint", "comm", "gather"})
    if clash:
        raise ValueError(f"solver_options may not set {clash}: they are estimate_min_rank's own "
                         f"parameters (lam is ρ, solver is method)")
    return opts


def _zero_misses(sum_sq: float, n_cells: int, eps: float) -> int:
    """1 when the zero matrix's mean squared error sum_sq / n_cells exceeds ε (then the
    ε-rank is ≥ 1), else 0; the sharded search passes sums over its ranks."""
    return int(n_cells > 0 and sum_sq / n_cells > eps)


def _exact_upper(cap_omega: int, cap_omega2: int, single_nonzero: bool, any_nonzero: bool) -> int:
    """minrank_Ω ≤ min(c(Ω), c(Ω₂) + 1[Lemma 3]): exact completions exist at both caps
    (rankkit.exact); 0 when every observed value is 0."""
    if not any_nonzero:
        return 0
    return int(min(cap_omega, cap_omega2 + int(single_nonzero)))


def _run_search(search, ranks, method, eps_lower) -> None:
    try:
        if ranks == "auto" and method == "soft-impute":
            search.auto()
        elif ranks == "auto":
            # ranks below the proved ε-lower bound cannot pass: the search starts there, walks
            # up two ranks before doubling, and bisection never goes under it; then the rank
            # just below the certificate gets more starts when its best fit was a near miss
            search.auto(start=max(1, eps_lower), floor=eps_lower, walk=2 if eps_lower >= 2 else 0)
            search.tighten(floor=max(1, eps_lower))
        else:
            for r in ranks:
                search.evaluate(r)
    finally:
        search.close()


def _assemble(search, *, method, eps, lam, label, bounds, brackets, extend, n_single, single_nonzero, shapes,
              ranks, max_iter, thresh, t0, max_abs, exact, finish, meta) -> MinRankEstimate:
    """The estimate from a finished search: the best certificate, the exact fallback at the
    cap, the two brackets and the message.

    ``exact(cap)`` (None: no fallback) returns (completion or None where this process does
    not hold it, its MSE over Ω₂, its rank, its max ``|entry|`` or None); ``finish(cert, source)``
    returns (the certificate this process reports, its :func:`certificate_scale`);
    ``extend(cert)`` (None: keep Lemma 3's + 1) returns
    :func:`rankkit.omega.extend_certificate`'s report for the reported certificate (every
    process gets the same dict); ``brackets`` holds exact_lower, exact_upper, eps_lower and
    eps_bounds."""
    r_cert, at, cert = search.best()
    source_name = "zero" if (r_cert == 0 and cert is None) else (
        "soft-impute" if method == "soft-impute" else "fixed-rank")
    exact_mse = None
    if exact is not None and search.cap > 0 and (r_cert is None or r_cert > search.cap):
        ex, exact_mse, eff, ex_max = exact(search.cap)
        ok = exact_mse <= eps and (max_abs is None or ex_max <= max_abs)
        if ok and (r_cert is None or eff < r_cert):
            r_cert, at, cert, source_name = eff, None, ex, "exact-completion"
    if r_cert is None:
        upper = None
        tried = max(search.mse)
        message = (f"no rank tried reaches MSE ≤ ε = {eps:g} on Ω₂ (largest tried: rank {tried}, "
                   f"MSE {search.mse[tried]:.3g})")
        message += ("; try larger ranks, a smaller thresh (the fit may stop on thresh before "
                    "reaching ε), more max_iter or a smaller lam" if method == "soft-impute" else
                    "; try larger ranks, more max_iter or n_restarts, or a larger max_abs")
        if exact_mse is not None:
            message += (f"; the exact completion at the cap (rank {search.cap}) has MSE "
                        f"{exact_mse:.3g}" + (" > ε in float64: ε is below the rounding error at "
                                              "this scale of values" if exact_mse > eps else
                                              " but entries above max_abs"))
        elif exact is None:
            message += "; or pass exact_fallback=True for the λ-free bound at the rank cap"
    else:
        message = ""
    cert, scale = finish(cert, source_name)
    ext = None
    if r_cert is not None:
        if single_nonzero and r_cert > 0 and extend is not None:
            ext = extend(cert)
        upper = r_cert + int(bool(single_nonzero) and not (ext or {}).get("appended", False))
        if brackets["eps_lower"] > r_cert:
            raise RuntimeError(f"internal error: the proved ε-lower bound {brackets['eps_lower']} exceeds "
                               f"the verified rank-{r_cert} certificate; please report this with the data")
    (omega_shape, omega_nnz, omega2_shape, omega2_nnz) = shapes
    return MinRankEstimate(
        eps=float(eps), lam=float(lam), label=label, upper=upper, omega_extension=ext, **brackets,
        rank_certified=r_cert, certified_at=at, mse_by_rank=dict(sorted(search.mse.items())),
        converged_by_rank=dict(sorted(search.converged.items())), certificate=cert,
        omega_shape=omega_shape, omega_nnz=omega_nnz, omega2_shape=omega2_shape, omega2_nnz=omega2_nnz,
        n_single_rows=n_single, single_rows_nonzero=bool(single_nonzero), bounds=bounds,
        ranks=ranks, max_iter=int(max_iter), thresh=float(thresh),
        elapsed=time.perf_counter() - t0, message=message, meta=meta,
        certificate_source=source_name, exact_mse=exact_mse, method=method,
        trials=search.trials, scale=scale, max_abs=None if max_abs is None else float(max_abs),
    )


class _SearchBase:
    """Ranks evaluated once each, the best certificate, checkpoint bookkeeping."""

    def __init__(self, R2, label, *, eps, progress, checkpoint_dir, settings, cap=None, fp_matrix=None):
        from tqdm.auto import tqdm

        self.R2, self.label, self.eps = R2, label, eps
        self.cap = rank_cap(R2) if cap is None else int(cap)
        self.full = min(R2.shape)
        self.mse: dict[int, float] = {}
        self.converged: dict[int, bool] = {}
        self.ok: dict[int, bool] = {}
        self.fits: dict[int, object] = {}
        self.trials: list[dict] = []
        self.bar = tqdm(desc="min rank", unit="rank", disable=not progress, leave=False)
        self.ckpt = None
        if checkpoint_dir is not None:
            self.ckpt = Path(checkpoint_dir)
            self.ckpt.mkdir(parents=True, exist_ok=True)
            # a sharded search fingerprints this rank's rows (``fp_matrix``, its row ids in settings)
            fp = _fingerprint(R2 if fp_matrix is None else fp_matrix, label, settings)
            state = self.ckpt / _STATE_FILE
            if state.is_file():
                old = read_json(state, "checkpoint state",
                                fix=f"delete the directory {str(self.ckpt)!r} to start over")
                if old != fp:
                    diff = sorted(k for k in set(fp) | set(old) if old.get(k) != fp.get(k))
                    raise ValueError(f"checkpoint_dir {str(self.ckpt)!r} holds fits of a different "
                                     f"problem (differs in {diff}); use a new directory or delete it")
            else:
                atomic_json(state, fp)

    def close(self):
        self.bar.close()

    def _finished(self, path) -> bool:
        """A saved fit to load instead of refitting (the sharded search asks every rank)."""
        return path is not None and path.exists()

    def _load(self, path):
        from .softimpute import SoftImputeResult

        return SoftImputeResult.load(path)

    def _save(self, res, path) -> None:
        res.save(path)

    def passes(self, r: int) -> bool:
        return self.ok[r]

    def _zero_mse(self) -> float:
        """MSE of the zero matrix over Ω₂ (the sharded search sums over its ranks)."""
        return float(np.mean(self.R2.label_values(self.label) ** 2)) if self.R2.nnz else 0.0

    def _observed_mse(self, fit) -> float:
        """The verified MSE of a fit over Ω₂ (the sharded search reduces over its ranks)."""
        return observed_mse(self.R2, fit, self.label)

    def _zero(self, r: int) -> bool:
        self.mse[r] = self._zero_mse()
        self.converged[r] = True
        self.ok[r] = self.mse[r] <= self.eps
        self.trials.append(dict(rank=r, method="zero matrix", n_iter=0, seconds=0.0,
                                mse=self.mse[r], passed=self.ok[r], stop="target"))
        return self._done(r)

    def _done(self, r: int) -> bool:
        self.bar.update(1)
        self.bar.set_postfix(rank=r, mse=f"{self.mse[r]:.3g}")
        return self.passes(r)

    def auto(self, start: int = 1, floor: int = 0, walk: int = 0):
        """Rank 0, then start, start + 1, … (``walk`` ranks one at a time), then doubling up
        to the cap until a rank passes, then bisection between the last failing (or 0) and
        the first passing rank. Ranks below ``floor`` are known to fail (a proved lower
        bound) and are never fitted; with a proved floor the answer is usually a rank or two
        above it, which the walk reaches without fitting the large ranks doubling would."""
        if self.evaluate(0) or self.cap == 0:
            return
        lo, hi, k = max(0, min(int(floor), self.cap) - 1), None, max(1, int(start))
        steps, phase = 0, "doubling"
        while True:
            k = min(k, self.cap)
            if self.evaluate(k, phase):
                hi = k
                break
            lo = k
            if k == self.cap:
                return
            k = k + 1 if steps < walk else 2 * k
            steps += 1
            phase = "walk" if steps <= walk else "doubling"
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.evaluate(mid, "bisect"):
                hi = mid
            else:
                lo = mid

    def tighten(self, floor: int = 1) -> None:
        """More effort below the certificate (the fixed-rank search overrides it)."""

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
            eff = int(np.count_nonzero(to_numpy(fit.d)))
            if best[0] is None or eff < best[0]:
                best = (eff, r, fit)
        return best


class _Search(_SearchBase):
    """soft-impute at each rank (the paper's methodology), warm-started from the previous fit."""

    def __init__(self, R2, label, *, eps, lam, max_iter, thresh, backend, device, seed, progress,
                 checkpoint_dir, cap=None, fp_matrix=None, fp_extra=None):
        super().__init__(R2, label, eps=eps, progress=progress, checkpoint_dir=checkpoint_dir,
                         settings=dict(lam=lam, max_iter=max_iter, thresh=thresh, seed=seed, **(fp_extra or {})),
                         cap=cap, fp_matrix=fp_matrix)
        self.lam = lam
        self.kw = dict(label=label, max_iter=max_iter, thresh=thresh, backend=backend,
                       device=device, seed=seed, progress=progress)

    def evaluate(self, r: int, phase: str = "list") -> bool:
        """Fit rank r (once), record the verified MSE, return whether it is ≤ ε (soft-impute
        warm-starts from the previous fit whatever the search phase)."""
        if r in self.mse:
            return self.passes(r)
        if r == 0 or self.R2.nnz == 0:
            return self._zero(r)
        k = min(r, self.full)
        t = time.perf_counter()
        res = self._fit(k)
        self.fits[r] = res
        self.mse[r] = self._observed_mse(res)
        self.converged[r] = bool(res.converged)
        self.ok[r] = self.mse[r] <= self.eps
        self.trials.append(dict(rank=r, method="soft-impute", n_iter=int(res.n_iter),
                                seconds=time.perf_counter() - t, mse=self.mse[r], passed=self.ok[r],
                                stop="thresh" if res.converged else "max_iter"))
        return self._done(r)

    def _soft_impute(self, k, **kw):
        from .softimpute import soft_impute

        return soft_impute(self.R2, k, self.lam, **kw)

    def _fit(self, k: int):
        path = None if self.ckpt is None else self.ckpt / f"rank_{k:06d}.npz"
        if self._finished(path):
            return self._load(path)
        smaller = [r for r in self.fits if r < k]
        warm = self.fits[max(smaller)] if smaller else None
        partial = None if self.ckpt is None else self.ckpt / f"rank_{k:06d}.partial.npz"
        res = self._soft_impute(k, warm_start=warm, checkpoint=partial, **self.kw)
        if path is not None:
            self._save(res, path)
        return res

class _CertSearch(_SearchBase):
    """Fixed-rank certificates: each rank from a list of starts until one reaches ε."""

    def __init__(self, R2, label, *, eps, rho, max_iter, solver, n_restarts, max_abs, options,
                 backend, device, seed, progress, checkpoint_dir, extra_starts=0, cap=None, fp_matrix=None,
                 fp_extra=None):
        super().__init__(R2, label, eps=eps, progress=progress, checkpoint_dir=checkpoint_dir,
                         settings=dict(method="auto", rho=rho, max_iter=max_iter, solver=solver,
                                       n_restarts=n_restarts, max_abs=max_abs, seed=seed, eps=eps,
                                       options=options, **(fp_extra or {})),
                         cap=cap, fp_matrix=fp_matrix)
        self.n_restarts, self.max_abs, self.seed = n_restarts, max_abs, seed
        self.extra_starts = int(extra_starts)
        self.kw = dict(label=label, eps=eps, rho=rho, method=solver, max_iter=max_iter,
                       backend=backend, device=device, progress=progress, **options)
        self.solver = solver

    def _starts(self, r: int, phase: str):
        """(name, warm start, init) tried in order at rank r: in the doubling phase the
        spectral start only (most of those ranks are expected to fail); on the walk up from a
        proved floor, first the failed fit at r − 1 padded with the top singular triplet of its
        residual (it has crossed most of the swamp already: vader:movie rank 6 passes in 38
        LM steps from it, 78 from the spectral start), then spectral; when bisecting, the
        truncated factors of the smallest certified rank above r first; then spectral and
        ``n_restarts`` random starts."""
        starts = []
        above = [q for q in self.fits if q > r and self.ok[q]]
        if phase == "bisect" and above:
            starts.append(("truncated", self.fits[min(above)], "spectral"))
        if phase == "walk" and r - 1 in self.fits:
            starts.append(("padded", self.fits[r - 1], "spectral"))
        starts.append(("spectral", None, "spectral"))
        if phase not in ("doubling", "walk"):
            starts += [("random", None, "random")] * self.n_restarts
        return starts

    def evaluate(self, r: int, phase: str = "list") -> bool:
        if r in self.mse:
            return self.passes(r)
        if r == 0 or self.R2.nnz == 0:
            return self._zero(r)
        self._run_starts(r, self._starts(r, phase))
        return self._done(r)

    def _run_starts(self, r: int, starts, first: int = 0) -> bool:
        """Fit rank r from each start in turn (attempt numbers from ``first``) until one
        passes or the best ends far above ε; keep the best fit at r. Returns whether r passes."""
        k = min(r, self.full)
        best = None if r not in self.mse else (self.fits[r], self.mse[r], self.ok[r])
        for i, (name, warm, init) in enumerate(starts, start=first):
            fit, seconds = self._fit(k, i, warm, init)
            mse = self._observed_mse(fit)
            passed = mse <= self.eps
            trial = dict(rank=r, method=f"{fit.meta.get('solver', self.solver)}/{name}",
                         n_iter=int(fit.n_iter), seconds=seconds, mse=mse, passed=passed,
                         stop=fit.meta.get("stop", "?"))
            if passed:
                fit.meta["scale"] = self._scale(fit)  # reused if it certifies
                trial["max_abs"] = fit.meta["scale"]["max_abs"]
                if self.max_abs is not None and trial["max_abs"] > self.max_abs:
                    trial.update(passed=False, rejected=True)
                    passed = False
            self.trials.append(trial)
            if best is None or passed or (not best[2] and mse < best[1]):
                best = (fit, mse, passed)
            if passed or (name != "padded" and best[1] > _RETRY_BAND * self.eps):
                # a start that ends far above ε says the rank is out of reach of these starts;
                # only near misses are worth another start (a padded start is a shortcut, never
                # a reason to skip the spectral start that would be tried without it)
                break
        self.fits[r], self.mse[r], self.ok[r] = best
        self.converged[r] = self.ok[r]
        return self.ok[r]

    def tighten(self, floor: int = 1) -> None:
        """Try harder at the rank just below the certificate, while its best fit is a near miss
        (within 10 × ε) and it is not under ``floor`` (a proved lower bound): the truncated
        (deflated) certificate and the spectral start if not tried there yet, then
        ``extra_starts`` random starts; on success, the same one rank lower. Every attempt is
        listed in ``trials``; a rank that passes today is never given up."""
        while self.extra_starts > 0:
            r_cert, at, fit = self.best()
            if r_cert is None or at is None or r_cert - 1 < floor or fit is None:
                return
            r = r_cert - 1
            if r not in self.mse:
                self.evaluate(r, "bisect")
                if self.passes(r):
                    continue
            if self.passes(r) or self.mse[r] > _RETRY_BAND * self.eps:
                return
            done = self._tried(r)
            starts = [] if "truncated" in done else [("truncated", fit, "spectral")]
            starts += [] if "spectral" in done else [("spectral", None, "spectral")]
            starts += [("random", None, "random")] * self.extra_starts
            if not self._run_starts(r, starts, first=len(done)):
                return
            self.bar.set_postfix(rank=r, mse=f"{self.mse[r]:.3g}")

    def _tried(self, r: int) -> list[str]:
        """Names of the starts fitted at rank r so far, in order (from ``trials``, whose
        method reads "solver/start")."""
        return [t["method"].rsplit("/", 1)[-1] for t in self.trials if t["rank"] == r and "/" in t["method"]]

    def _scale(self, fit) -> dict:
        """:func:`certificate_scale` of a passing fit (the sharded search reduces over ranks)."""
        return certificate_scale(fit.U, fit.d, fit.V)

    def _fixed_rank(self, k, **kw):
        from .lowrank import fixed_rank_fit

        return fixed_rank_fit(self.R2, k, **kw)

    def _fit(self, k: int, attempt: int, warm, init):
        path = None if self.ckpt is None else self.ckpt / f"fixed_rank_{k:06d}_{attempt}.npz"
        if self._finished(path):
            res = self._load(path)
            return res, float(res.meta.get("seconds", 0.0))
        partial = None if self.ckpt is None else self.ckpt / f"fixed_rank_{k:06d}_{attempt}.partial.npz"
        t = time.perf_counter()
        res = self._fixed_rank(k, warm_start=warm, init=init, seed=self.seed + attempt,
                               checkpoint=partial, **self.kw)
        res.meta["solver"] = self.solver if self.solver != "auto" else "+".join(
            dict.fromkeys(res.meta.get("phases") or ["-"]))
        if path is not None:
            self._save(res, path)
        return res, time.perf_counter() - t

