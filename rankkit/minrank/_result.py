"""The result of :func:`rankkit.estimate_min_rank`: the two brackets, their report and
persistence (module docstring of :mod:`rankkit.minrank` for the quantities)."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._backend import to_numpy
from .._io import atomic_json, read_json
from ..bounds import BlockCertificate, EpsRankLowerBound, RankLowerBound, TriangularCertificate


class Trials(list):
    """Every fit a rank search ran, in order: a list of dicts (JSON as it stands), one per fit,
    with ``rank``, ``method`` ("solver/start"), ``n_iter``, ``seconds``, ``mse`` (recomputed
    from the factors), ``passed``, ``stop`` and, for fits that reached ε, ``max_abs`` (and
    ``rejected`` when that exceeded ``max_abs=``)."""

    COLUMNS = ("rank", "method", "n_iter", "seconds", "mse", "passed", "stop", "max_abs", "rejected")

    def to_frame(self):
        """The trials as a pandas DataFrame, one row per fit, the columns above first (a key no
        trial has is left out; missing values are NaN)."""
        try:
            import pandas as pd
        except ImportError as e:  # pandas comes with the ext extra, not with the core
            raise ImportError("Trials.to_frame needs pandas: pip install pandas") from e
        keys = {k for t in self for k in t}
        cols = [c for c in self.COLUMNS if c in keys] + sorted(keys - set(self.COLUMNS))
        return pd.DataFrame(list(self), columns=cols)


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
    trials : Trials
        Every fit run, in order (a list of dicts; ``trials.to_frame()`` gives a DataFrame):
        ``rank``, ``method`` (the solver and its start), ``n_iter`` (iterations actually
        run), ``seconds``, ``mse`` (recomputed), ``passed``, ``stop`` and, for fits that
        reached ε, ``max_abs``.
    scale : dict or None
        :func:`certificate_scale` of the certificate (None when the zero matrix certifies).
    max_abs : float or None
        Certificates whose largest absolute entry exceeds this were rejected.
    certificate : LowRankFit or None
        The fit behind ``rank_certified`` (None when r = 0: the zero matrix certifies): a
        :class:`~rankkit.FixedRankResult` from the default search, a
        :class:`~rankkit.SoftImputeResult` from ``method="soft-impute"``, a plain
        :class:`~rankkit.LowRankFit` from the exact completion.
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
    label_range : (float, float) or None
        Smallest and largest observed value of the label on Ω, as given (before
        ``label_scale``); ε = 1e-6 is meant for labels in [0, 1].
    label_scale : float
        The values were divided by this before the analysis (``normalize=True``: their largest
        magnitude; 1.0 otherwise): every bound, MSE and the certificate are of R / label_scale.
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
    trials: Trials = field(default_factory=Trials)
    scale: dict | None = None
    max_abs: float | None = None
    exact_upper: int | None = None
    eps_lower: int = 0
    eps_bounds: EpsRankLowerBound | None = None
    omega_extension: dict | None = None
    label_range: tuple[float, float] | None = None
    label_scale: float = 1.0

    def __post_init__(self):
        if not isinstance(self.trials, Trials):
            self.trials = Trials(self.trials)

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
        line = (f"  certificate scale: max |entry| {s['max_abs']:.3g} ({kind}), "
                f"‖M‖_* {s['nuclear']:.3g}, ‖M‖_F {s['frobenius']:.3g}")
        big = self._label_max()
        if big:
            ratio = s["max_abs"] / big
            verdict = ("within the labels' magnitude" if ratio <= 1 + 1e-9 else
                       "far outside the label range: the low rank leans on large unobserved entries"
                       if ratio > 10 else "outside the label range")
            line += f"\n  = {ratio:.3g} × the largest observed |label| ({verdict})"
        return line

    def _label_max(self) -> float | None:
        """max |observed label| in the units of the analysis (after ``label_scale``)."""
        if self.label_range is None:
            return None
        return max(abs(self.label_range[0]), abs(self.label_range[1])) / self.label_scale

    def _label_line(self) -> str | None:
        if self.label_range is None:
            return None
        lo, hi = self.label_range
        line = f"  label values on Ω: [{lo:.6g}, {hi:.6g}]"
        if self.label_scale != 1.0:
            line += (f", divided by {self.label_scale:.6g} (normalize=True): ε is relative to the "
                     f"largest |label|")
        elif lo < 0 or hi > 1:
            line += " — outside [0, 1]: ε is absolute, so it is stricter here than for rewards in [0, 1]"
        return line

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
        ]
        if self._label_line():
            lines.append(self._label_line())
        lines.append("")
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
        if b.max_abs is not None:
            n_part = sum(hasattr(blk, "missing") for blk in b.blocks)
            return (f"Eckart–Young on {len(shapes)} block(s) of Ω₂ with disjoint observed cells ({head}; "
                    f"{n_part} partially observed, proving through the entry bound max_abs = "
                    f"{b.max_abs:g}): any rank-{self.eps_lower - 1} matrix with entries ≤ {b.max_abs:g} "
                    f"errs by ≥ {b.tails(self.eps_lower - 1):.3g} on them")
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
                        linestyle="none", label=self._certificate_label())
        if self.eps_lower:
            ax.axvspan(-0.5, self.eps_lower - 0.5, color="C2", alpha=0.12,
                       label=f"ε-rank ≥ {self.eps_lower} (Eckart–Young, proved)")
        ax.set_xlabel("completion rank r")
        ax.set_ylabel("mean squared error on Ω₂")
        ax.legend(fontsize=8)
        return ax

    def _certificate_label(self) -> str:
        """The legend of the certificate's star, stating the rank it is drawn at (the fit's
        rank, its nonzero singular values where fewer) and, where Lemma 3 adds one, Ω's bound."""
        at, eff = self.certified_at, self.rank_certified
        text = f"certificate at rank {at}" + ("" if eff == at else f" ({eff} nonzero singular values)")
        text += ": ε-rank on Ω₂ ≤ " + str(eff)
        if self.upper is not None and self.upper != eff:
            text += f", on Ω ≤ {self.upper} (Lemma 3)"
        return text

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
            "label_range": None if self.label_range is None else list(self.label_range),
            "label_scale": self.label_scale,
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
            from ..factors import LowRankFit

            cert = LowRankFit.load(npz)
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
            label_range=None if d.get("label_range") is None else tuple(d["label_range"]),
            label_scale=d.get("label_scale", 1.0),
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
