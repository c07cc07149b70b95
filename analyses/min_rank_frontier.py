"""Min-rank frontier: MSE on Ω₂ against rank, soft-impute (paper) vs fixed-rank certificates.

For the four VADER sets (GPT-2 tokenizer, label "sentiment" = (rating + 4) / 8 ∈ [0, 1]),
P_Ω(R) is built (eq. 5) and reduced to Ω₂ (Lemma 3). At each rank r two completions of Ω₂
are fitted and their MSE over Ω₂ recomputed from the factors:

* the paper's methodology (App. C.3): ``rk.soft_impute(R2, r, 1e-4, max_iter=1000)`` at
  r = 1..12, 16, 32, 64, 128, 256 (capped at min(n₂, m₂));
* rankkit's fixed-rank certificate: ``fixed_rank_fit(R2, r, eps=1e-6)`` (Riemannian CG /
  ALS / LM on the rank-r matrices, stopping at MSE ≤ ε) at r = 1..12.

Each panel draws both curves (log-scale MSE, log₂ rank) with ε = 1e-6 as a horizontal line,
the certified ε-rank of both ``rk.estimate_min_rank`` calls (new default and
``method="soft-impute"``) as vertical lines, and the MSE of the new default's own rank-search
fits (its ``mse_by_rank``: warm starts and restarts, so it can pass at a rank where the cold
per-rank fit does not) as crosses. The JSON holds every MSE, every fit's scale
(largest |entry| of its dense Ω₂ completion, nuclear and Frobenius norms), the two
estimates' ``lower`` / ``rank_certified`` / ``upper`` and their certificates' scale.

Writes paper_figures/min_rank_frontier.{png,json}. Each finished fit is recorded under
``--workdir`` so an interrupted run resumes without refitting.

    python -m analyses.min_rank_frontier [--quick] [--max-iter N] [--limit N] [--sets movie,tweets]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from rankkit._io import atomic_json

from ._common import TOKENIZER, VADER, parser, pyplot, save_figure, write_json

NAME = "min_rank_frontier"
EPS = 1e-6
LAM = 1e-4
SI_RANKS = list(range(1, 13)) + [16, 32, 64, 128, 256]
FR_RANKS = list(range(1, 13))
QUICK_SI_RANKS = [1, 2, 4, 8, 16]
QUICK_FR_RANKS = [1, 2, 3, 4, 5, 6]


def _curve(state, name: str, ranks, R2, fit, extra) -> dict:
    """``fit(R2, k)`` at each rank (k = min(r, n₂, m₂)), or the record ``state`` already holds: MSE on
    Ω₂ recomputed from the factors, iterations, seconds and the certificate's scale."""
    import rankkit as rk

    out = {}
    for r in ranks:
        key = f"{name}/{r}"
        rec = state.get(key)
        if rec is None:
            k = min(r, *R2.shape)
            t1 = time.perf_counter()
            res = fit(R2, k)
            rec = {"rank": r, "fitted_rank": k, "mse": rk.observed_mse(R2, res), "n_iter": int(res.n_iter),
                   "seconds": round(time.perf_counter() - t1, 2), **extra(res),
                   **rk.certificate_scale(res.U, res.d, res.V)}
            state.put(key, rec)
        out[r] = rec
    return out


def _estimate(R, method: str, **kw):
    """``estimate_min_rank(R, eps=1e-6, method=...)`` → summary dict with its seconds."""
    import rankkit as rk

    t0 = time.perf_counter()
    est = rk.estimate_min_rank(R, eps=EPS, progress=False, method=method, **kw)
    secs = time.perf_counter() - t0
    return {"method": method, "exact_lower": est.exact_lower, "exact_upper": est.exact_upper,
            "eps_lower": est.eps_lower, "eps_bounds": None if est.eps_bounds is None else est.eps_bounds.to_dict(),
            "omega_extension": est.omega_extension, "rank_certified": est.rank_certified, "upper": est.upper,
            "certificate_source": est.certificate_source, "seconds": round(secs, 2),
            "mse_by_rank": {int(k): float(v) for k, v in sorted(est.mse_by_rank.items())},
            "scale": est.scale, "trials": est.trials}


class _State:
    """Finished fits of one dataset, in a JSON file written atomically after each fit."""

    def __init__(self, path: Path, settings: dict):
        self.path, self.settings = path, settings
        self.data = {"settings": settings, "fits": {}}
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("settings") == settings:
                self.data = old

    def get(self, key):
        return self.data["fits"].get(key)

    def put(self, key, value):
        self.data["fits"][key] = value
        atomic_json(self.path, self.data, indent=1)  # a finished fit survives an interrupt


def run(out: Path, *, quick: bool = False, max_iter: int | None = None, limit: int | None = None,
        sets: list[str] | None = None, workdir: Path | None = None, backend: str = "auto") -> list[Path]:
    import rankkit as rk
    from rankkit.lowrank import fixed_rank_fit

    max_iter = max_iter or (100 if quick else 1000)
    fr_max_iter = 100 if quick else 500
    limit = limit or (1500 if quick else None)
    si_ranks = QUICK_SI_RANKS if quick else SI_RANKS
    fr_ranks = QUICK_FR_RANKS if quick else FR_RANKS
    specs = [s for s in VADER if not sets or s.split(":", 1)[-1] in sets]
    workdir = workdir or rk.datasets.cache_dir() / "analyses" / NAME
    rows = {}
    for spec in specs:
        t0 = time.perf_counter()
        ds = rk.datasets.load(spec, tokenizer=TOKENIZER, limit=limit)
        R = rk.build_reward_matrix(ds)
        R2 = rk.reduce_omega2(R)
        S = R2.to_scipy(0)
        n2, m2 = S.shape
        state = _State(workdir / f"{spec.replace(':', '_')}_n{limit or 'all'}.json",
                       {"eps": EPS, "lam": LAM, "max_iter": max_iter, "fr_max_iter": fr_max_iter,
                        "backend": backend, "nnz": int(S.nnz), "shape": [n2, m2]})
        si = _curve(state, "soft-impute", si_ranks, R2, lambda M, k: rk.soft_impute(
            M, k, LAM, max_iter=max_iter, backend=backend, seed=0, progress=False),
            lambda res: {"effective_rank": int(np.count_nonzero(res.d)), "converged": bool(res.converged)})
        fr = _curve(state, "fixed-rank", fr_ranks, R2, lambda M, k: fixed_rank_fit(
            M, k, eps=EPS, max_iter=fr_max_iter, backend=backend, seed=0, progress=False),
            lambda res: {"solver_mse": float(res.mse), "method": res.meta.get("method")})
        est = {"default": _estimate(R, "auto", backend=backend)}
        est["soft-impute"] = _estimate(R, "soft-impute", backend=backend, max_iter=max_iter)
        rows[spec] = {"texts": len(ds), "omega_shape": list(R.shape), "omega_nnz": int(R.nnz),
                      "omega2_shape": [n2, m2], "omega2_nnz": int(S.nnz),
                      "soft_impute": {int(k): v for k, v in si.items()},
                      "fixed_rank": {int(k): v for k, v in fr.items()},
                      "estimates": est, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{spec}: ε-rank on Ω₂ " + ", ".join(f"{m}: {e['rank_certified']} (upper {e['upper']})"
                                                   for m, e in est.items()), file=sys.stderr)

    plt = pyplot()
    ncol = 2 if len(rows) > 1 else 1
    nrow = (len(rows) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.0 * ncol, 4.2 * nrow), squeeze=False)
    for ax, (spec, row) in zip(axes.flat, rows.items(), strict=False):
        for key, lbl, mk, col in (("soft_impute", f"soft-impute (λ = {LAM:g}, {max_iter} it.)", "o", "C0"),
                                  ("fixed_rank", "fixed_rank_fit per rank (spectral start)", "s", "C3")):
            pts = row[key]
            if not pts:
                continue
            r = sorted(pts)
            ax.semilogy(r, [max(pts[k]["mse"], 1e-16) for k in r], marker=mk, color=col, label=lbl,
                        markersize=4)
        e = row["estimates"].get("default")
        if e is not None:  # the rank search's own fits (warm starts, restarts): where its ε-rank comes from
            r = sorted(k for k in e["mse_by_rank"] if k > 0)
            ax.semilogy(r, [max(e["mse_by_rank"][k], 1e-16) for k in r], linestyle="none", marker="x",
                        color="darkred", label="estimate_min_rank (new default) fits")
        ax.axhline(EPS, color="0.3", linestyle="--", linewidth=0.8, label=f"ε = {EPS:g}")
        parts = []
        for m, col, name in (("default", "C3", "fixed-rank"), ("soft-impute", "C0", "soft-impute")):
            e = row["estimates"].get(m)
            if e is None or e["rank_certified"] is None:
                continue
            ax.axvline(max(e["rank_certified"], 1), color=col, linestyle=":", linewidth=1.0,
                       label=f"{name} ε-rank ≤ {e['rank_certified']} on Ω₂ (upper {e['upper']})")
            parts.append(f"{name} {e['rank_certified']}")
        ax.set_xscale("log", base=2)
        certified = {max(e["rank_certified"], 1) for e in row["estimates"].values() if e["rank_certified"] is not None}
        ticks = sorted(({*row["soft_impute"], *row["fixed_rank"]} & {1, 2, 4, 8, 12, 16, 32, 64, 128, 256})
                       | certified)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        n2, m2 = row["omega2_shape"]
        ax.set_title(f"{spec}: Ω₂ {n2:,} × {m2:,}, {row['omega2_nnz']:,} cells\n"
                     f"certified ε-rank on Ω₂: {', '.join(parts) or '—'}", fontsize=9)
        ax.set_xlabel("rank r")
        ax.set_ylabel("MSE on Ω₂ (log)")
        ax.legend(fontsize=6.5, framealpha=0.85)
    for ax in list(axes.flat)[len(rows):]:
        ax.set_visible(False)
    fig.suptitle(f"Min-rank frontier at ε = {EPS:g}: soft-impute vs fixed-rank certificates "
                 f"(VADER{f', first {limit} texts' if limit else ''}, GPT-2 tokenizer, sentiment ∈ [0, 1])",
                 fontsize=10)
    fig.tight_layout()
    png = save_figure(fig, out / f"{NAME}.png")
    caption = (f"MSE over Ω₂ (Lemma 3) against rank for soft-impute ALS (λ = {LAM:g}, {max_iter} iterations; "
               f"ranks {si_ranks}) and rankkit's fixed-rank certificates (fixed_rank_fit, ε = {EPS:g}, "
               f"ranks {fr_ranks}), on {', '.join(rows)} with the GPT-2 tokenizer"
               f"{f' (first {limit} texts)' if limit else ''}. MSE recomputed from each fit's factors. "
               "Dotted verticals: the certified ε-rank on Ω₂ of rk.estimate_min_rank with the new default "
               "and with method='soft-impute' (the ε-rank over Ω is ≤ that + 1, Lemma 3); crosses: the MSE of the "
               "new default's own rank-search fits (warm-started, restarted), which certify its ε-rank. "
               "Scale = largest |entry| of the dense Ω₂ completion, nuclear and Frobenius norms.")
    js = write_json({"name": NAME, "caption": caption, "tokenizer": TOKENIZER, "eps": EPS, "lam": LAM,
                     "max_iter": max_iter, "fixed_rank_max_iter": fr_max_iter, "soft_impute_ranks": si_ranks,
                     "fixed_rank_ranks": fr_ranks if fixed_rank_fit is not None else [],
                     "fixed_rank_available": fixed_rank_fit is not None, "limit": limit, "quick": quick,
                     "datasets": rows}, out / f"{NAME}.json")
    return [png, js]


def main(argv=None) -> list[Path]:
    ap = parser(__doc__)
    ap.add_argument("--max-iter", type=int, default=None, help="soft-impute iterations [1000; quick 100]")
    ap.add_argument("--limit", type=int, default=None, help="first N texts of each set [all; quick 1500]")
    ap.add_argument("--sets", default=None, help="comma-separated subset of movie,tweets,nyt,amazon")
    ap.add_argument("--workdir", type=Path, default=None, help="resume folder for finished fits")
    ap.add_argument("--backend", default="auto", help="numpy, torch, cupy")
    a = ap.parse_args(argv)
    return run(a.out, quick=a.quick, max_iter=a.max_iter, limit=a.limit,
               sets=a.sets.split(",") if a.sets else None, workdir=a.workdir, backend=a.backend)


if __name__ == "__main__":
    main()
