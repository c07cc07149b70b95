"""Table 2 (paper 002, App. C.3): MSE of rank-r soft-impute completions of Ω₂.

For every dataset available offline (the four VADER sets, GPT-2 tokenizer, label
"sentiment" = (rating + 4) / 8 ∈ [0, 1]) the reward matrix P_Ω(R) is built (eq. 5),
reduced to Ω₂ (Lemma 3) and completed at ranks r ∈ {0, 255, 511, 767} with soft-impute ALS,
λ = 1e-4, 1000 iterations. Rank 0 is the zero matrix. ``--hub`` adds the paper's hub
datasets (Jigsaw, Amazon Polarity, HelpSteer, BeaverTails; network needed).

Writes paper_figures/table2_min_rank.{png,json}. Each finished fit is checkpointed under
``--workdir`` so an interrupted run resumes.

    python -m analyses.table2_min_rank [--quick] [--max-iter N] [--hub] [--limit N]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ._common import TOKENIZER, VADER, parser, pyplot, save_figure, write_json

NAME = "table2_min_rank"
RANKS = [0, 255, 511, 767]
HUB = {"jigsaw": "toxicity", "amazon_polarity": "positive", "helpsteer": "helpfulness",
       "beavertails": "is_safe"}
# the paper's Table 2 columns, for the caption and the JSON
PAPER = {"detox. (Jigsaw)": [4.6e-2, 3.4e-5, 7.7e-6, 4.7e-7],
         "sentiment (Amazon)": [4.9e-1, 3.4e-4, 9.7e-5, 6.6e-7],
         "helpfulness (HelpSteer)": [8.4, 1.04e-8, 1.45e-9, 1.28e-9],
         "safety (BeaverTails)": [0.42, 5.08e-8, 5.77e-10, 4.81e-10]}


def run(out: Path, *, quick: bool = False, max_iter: int | None = None, limit: int | None = None,
        hub: bool = False, workdir: Path | None = None, backend: str = "auto",
        ranks: list[int] | None = None) -> list[Path]:
    import rankkit as rk

    ranks = ranks or RANKS

    max_iter = max_iter or (30 if quick else 1000)
    limit = limit or (1500 if quick else None)
    workdir = workdir or rk.datasets.cache_dir() / "analyses" / NAME
    specs = [(s, "sentiment") for s in VADER] + ([(k, v) for k, v in HUB.items()] if hub else [])
    rows = {}
    for spec, label in specs:
        t0 = time.perf_counter()
        try:
            ds = rk.datasets.load(spec, tokenizer=TOKENIZER, limit=limit)
        except Exception as e:  # hub presets without network: say so, keep going
            print(f"{spec}: skipped ({type(e).__name__}: {e})", file=sys.stderr)
            continue
        ckpt = workdir / f"{spec.replace(':', '_')}_n{limit or 'all'}_it{max_iter}"
        est = rk.estimate_min_rank(ds, eps=1e-6, label=label, ranks=ranks, lam=1e-4,
                                   max_iter=max_iter, backend=backend, seed=0, progress=True,
                                   checkpoint_dir=ckpt)
        rows[spec] = {
            "label": label, "texts": len(ds), "mse_by_rank": est.mse_by_rank,
            "converged_by_rank": est.converged_by_rank, "exact_lower": est.exact_lower, "eps_lower": est.eps_lower, "upper": est.upper,
            "omega_shape": est.omega_shape, "omega_nnz": est.omega_nnz,
            "omega2_shape": est.omega2_shape, "omega2_nnz": est.omega2_nnz,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"{spec}: " + ", ".join(f"r={r}: {m:.3g}" for r, m in est.mse_by_rank.items()),
              file=sys.stderr)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for spec, row in rows.items():
        r = sorted(row["mse_by_rank"])
        ax.semilogy(r, [max(row["mse_by_rank"][k], 1e-16) for k in r], marker="o",
                    label=f"{spec} (Ω₂ {row['omega2_shape'][0]:,}×{row['omega2_shape'][1]:,})")
    for name, vals in PAPER.items():
        if "Amazon" in name or "Jigsaw" in name:
            ax.semilogy(RANKS, vals, linestyle=":", marker="x", color="0.5", alpha=0.7)
    ax.axhline(1e-6, color="0.3", linestyle="--", linewidth=0.8, label="ε = 1e-6")
    ax.plot([], [], linestyle=":", marker="x", color="0.5", label="paper: Jigsaw, Amazon")
    ax.set_xlabel("completion rank r")
    ax.set_ylabel("MSE on Ω₂ (label units², log scale)")
    ax.set_xticks(ranks)
    ax.set_title(f"Table 2: soft-impute MSE vs. rank (λ = 1e-4, {max_iter} iterations)\n"
                 f"VADER ground truth{f' (first {limit} texts)' if limit else ''}, GPT-2 "
                 "tokenizer, label sentiment ∈ [0, 1]", fontsize=10)
    ax.legend(fontsize=8)
    png = save_figure(fig, out / f"{NAME}.png")
    caption = (f"MSE of rank-r soft-impute completions of Ω₂ (Lemma 3) for r ∈ {ranks}, "
               f"λ = 1e-4, {max_iter} iterations, on {', '.join(rows)} with the GPT-2 tokenizer "
               f"(label 'sentiment' = (rating + 4)/8 for VADER{'; first ' + str(limit) + ' texts' if limit else ''}). "
               "Rank 0 is the zero matrix. Dotted grey: the paper's Jigsaw and Amazon columns.")
    js = write_json({"name": NAME, "caption": caption, "tokenizer": TOKENIZER, "ranks": ranks,
                     "lam": 1e-4, "max_iter": max_iter, "limit": limit, "quick": quick,
                     "datasets": rows, "paper_table2": PAPER}, out / f"{NAME}.json")
    return [png, js]


def main(argv=None) -> list[Path]:
    ap = parser(__doc__)
    ap.add_argument("--max-iter", type=int, default=None, help="soft-impute iterations [1000]")
    ap.add_argument("--limit", type=int, default=None, help="first N texts of each set")
    ap.add_argument("--hub", action="store_true", help="also the hub datasets (network)")
    ap.add_argument("--workdir", type=Path, default=None, help="checkpoint folder")
    ap.add_argument("--backend", default="auto", help="numpy, torch (≈3x faster on CPU), cupy")
    ap.add_argument("--ranks", default=",".join(map(str, RANKS)), help="comma-separated ranks")
    a = ap.parse_args(argv)
    return run(a.out, quick=a.quick, max_iter=a.max_iter, limit=a.limit, hub=a.hub,
               workdir=a.workdir, backend=a.backend, ranks=[int(r) for r in a.ranks.split(",")])


if __name__ == "__main__":
    main()
