"""The two brackets of the minimal rank on the VADER sets (issue 22): exact and ε, one quantity each.

For each VADER set (GPT-2 tokenizer, label 0), ``rk.estimate_min_rank(ds, eps=1e-6)`` with
default settings gives

- the **exact** bracket ``exact_lower ≤ minrank_Ω(R) ≤ exact_upper`` (ε = 0: a forced
  triangular pattern or a fully observed block of full rank below, the rank cap above);
- the **ε** bracket ``eps_lower ≤ minrank_Ω,ε(R) ≤ upper`` for the squared error over Ω
  within ε |Ω₂| (Eckart–Young on fully observed blocks below, a verified certificate above;
  the same ends bound minrank_{Ω₂,ε} with ``rank_certified`` as its upper end);

and every fit behind the upper end. The figure draws the two brackets as two marked intervals
per set (left) and the best fit's MSE on Ω₂ by rank against ε (right). The JSON holds, per
set, both brackets, the blocks that prove ``eps_lower`` (rows, columns, singular values: each
re-checked here with :meth:`rankkit.bounds.EpsRankLowerBound.verify` before it is written), the
Ω extension of the certificate, the trials and the seconds, and ``block_method_ceiling``:
the most *any* family of cell-disjoint fully observed blocks could prove on that Ω₂
(:func:`rankkit.bounds.block_bound_ceiling`; ``eps_lower`` equal to it means the lower end
cannot rise without a bound of another kind).

    python -m analyses.min_rank_brackets [--quick] [--out paper_figures]

``--quick`` runs vader:tweets and vader:amazon only.
"""

from __future__ import annotations

import time
from pathlib import Path

from ._common import TOKENIZER, VADER, parser, pyplot, save_figure, write_json

NAME = "min_rank_brackets"
EPS = 1e-6


def measure(spec: str) -> dict:
    import rankkit as rk
    from rankkit.bounds import block_bound_ceiling

    t0 = time.perf_counter()
    ds = rk.datasets.load(spec, tokenizer=TOKENIZER)
    R = rk.build_reward_matrix(ds)
    t_build = time.perf_counter() - t0
    t1 = time.perf_counter()
    est = rk.estimate_min_rank(R, eps=EPS, progress=False)
    secs = time.perf_counter() - t1
    R2 = rk.reduce_omega2(R)
    proved = est.eps_bounds.verify(R2)  # the shipped blocks re-checked before they are written
    assert proved >= est.eps_lower, (proved, est.eps_lower)
    # the most any family of fully observed blocks could prove on this Ω₂
    ceiling, complete = block_bound_ceiling(R2, EPS)
    return {"set": spec, "omega_shape": list(est.omega_shape), "omega_nnz": est.omega_nnz,
            "omega2_shape": list(est.omega2_shape), "omega2_nnz": est.omega2_nnz,
            "exact_bracket": [est.exact_lower, est.exact_upper],
            "eps_bracket": [est.eps_lower, est.upper],
            "eps_bracket_omega2": [est.eps_lower, est.rank_certified],
            "width": None if est.upper is None else est.upper - est.eps_lower,
            "eps_lower_reverified": proved, "eps_bounds": est.eps_bounds.to_dict(),
            "block_method_ceiling": ceiling, "block_method_ceiling_complete": complete,
            "exact_lower_reason": est._lower_reason(), "omega_extension": est.omega_extension,
            "mse_by_rank": {int(k): float(v) for k, v in est.mse_by_rank.items()},
            "scale": est.scale, "trials": est.trials, "seconds_estimate": round(secs, 2),
            "seconds_load_build": round(t_build, 2)}


def plot(rows: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.3))
    for y, row in enumerate(rows):
        lo, up = row["eps_bracket"]
        elo, eup = row["exact_bracket"]
        a.plot([lo, up], [y + 0.12] * 2, color="C0", linewidth=5, solid_capstyle="butt",
               label="ε-bracket [eps_lower, upper]" if y == 0 else None)
        a.plot([lo, up], [y + 0.12] * 2, color="C0", marker="|", markersize=14, linestyle="none")
        a.annotate(f"[{lo}, {up}]", (up, y + 0.12), xytext=(6, -3), textcoords="offset points", fontsize=8,
                   color="C0")
        a.plot([elo, eup], [y - 0.12] * 2, color="C3", linewidth=2, marker="|", markersize=10,
               label="exact bracket [exact_lower, exact_upper] (ε = 0)" if y == 0 else None)
        a.annotate(f"[{elo}, {eup}]", (eup, y - 0.12), xytext=(6, -3), textcoords="offset points", fontsize=8,
                   color="C3")
        r = sorted(int(k) for k in row["mse_by_rank"])
        b.semilogy(r, [max(row["mse_by_rank"][k], 1e-16) for k in r], marker="o", linestyle="none",
                   color=f"C{y}", label=f"{row['set']}: best fit")
        b.axvspan(lo - 0.5, up + 0.5, color=f"C{y}", alpha=0.08)
    a.set_xscale("log", base=2)
    a.set_yticks(range(len(rows)), [r["set"] for r in rows])
    a.set_xlabel("rank (log₂)")
    a.set_title(f"two brackets, one quantity each (ε = {EPS:g})", fontsize=10)
    a.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    b.axhline(EPS, color="0.3", linestyle="--", linewidth=0.8, label=f"ε = {EPS:g}")
    b.set_xlabel("rank r (shaded: the ε-bracket)")
    b.set_ylabel("best MSE on Ω₂")
    b.set_title("fits behind the upper end (a failing rank is no evidence)", fontsize=10)
    b.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def run(out: Path, *, quick: bool = False) -> list[Path]:
    sets = ("vader:tweets", "vader:amazon") if quick else VADER
    rows = [measure(s) for s in sets]
    for row in rows:
        print(f"[{NAME}] {row['set']}: exact {row['exact_bracket']}, ε {row['eps_bracket']} "
              f"(Ω₂: {row['eps_bracket_omega2']}), {row['seconds_estimate']} s")
    out.mkdir(parents=True, exist_ok=True)
    return [write_json({"eps": EPS, "quick": quick, "sets": rows}, out / f"{NAME}.json"),
            plot(rows, out / f"{NAME}.png")]


def main(argv=None):
    a = parser(__doc__).parse_args(argv)
    return run(a.out, quick=a.quick)


if __name__ == "__main__":
    main()
