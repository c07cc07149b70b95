"""What Lemma 3 buys: rows, Ω₂ rows and observed cells of P_Ω(R) by prefix length (paper 002, App. C.3).

For each VADER set (GPT-2 tokenizer) the reward matrix P_Ω(R) has one row per distinct
prefix x' (eq. 5). Most long prefixes occur in one utterance only and so hold a single
observed cell; Lemma 3 drops those rows (min rank over Ω ≤ 1 + min rank over Ω₂). The
figure shows, per prefix length, how many rows and cells there are before and after.

Writes paper_figures/data_rank_structure.{png,json}.

    python -m analyses.data_rank_structure [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import TOKENIZER, VADER, parser, pyplot, save_figure, write_json

NAME = "data_rank_structure"


def run(out: Path, *, quick: bool = False, limit: int | None = None) -> list[Path]:
    import rankkit as rk
    from rankkit.cli import matrix_stats

    limit = limit or (1000 if quick else None)
    stats = {}
    for spec in VADER:
        ds = rk.datasets.load(spec, tokenizer=TOKENIZER, limit=limit)
        R = rk.build_reward_matrix(ds)
        s = matrix_stats(R, rk.reduce_omega2(R))
        s["texts"] = len(ds)
        stats[spec] = s
        o, o2 = s["omega"], s["omega2"]
        print(f"{spec}: Ω {o['rows']:,}×{o['cols']:,} ({o['observed']:,} cells) → Ω₂ "
              f"{o2['rows']:,}×{o2['cols']:,} ({o2['observed']:,} cells)", file=sys.stderr)

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, (spec, s) in enumerate(stats.items()):
        color = f"C{k}"
        L = sorted(s["by_prefix_length"])
        for ax, key, key2 in ((axes[0], "rows", "omega2_rows"), (axes[1], "cells", "omega2_cells")):
            ax.semilogy(L, [s["by_prefix_length"][x][key] for x in L], color=color,
                        label=f"{spec}: Ω")
            ax.semilogy(L, [max(s["by_prefix_length"][x][key2], 0.5) for x in L], color=color,
                        linestyle="--", label=f"{spec}: Ω₂")
    axes[0].set_ylabel("rows of P_Ω(R) (prefixes, log scale)")
    axes[1].set_ylabel("observed cells (log scale)")
    for ax in axes:
        ax.set_xlabel("prefix length |x'| (GPT-2 tokens)")
        ax.set_ylim(bottom=0.8)
    axes[0].legend(fontsize=7, ncol=2)
    axes[0].set_title("rows by prefix length: all (solid) vs. Ω₂ (dashed)", fontsize=10)
    axes[1].set_title("observed cells by prefix length", fontsize=10)
    fig.suptitle("Lemma 3 on VADER ground truth (GPT-2 tokenizer): single-entry rows dominate "
                 "beyond the first few tokens", fontsize=11)
    png = save_figure(fig, out / f"{NAME}.png")
    summary = {spec: {"texts": s["texts"], **s["omega"], **{f"omega2_{k}": v for k, v in
                                                           s["omega2"].items()}}
               for spec, s in stats.items()}
    caption = ("Rows (distinct prefixes) and observed cells of P_Ω(R) by prefix length for the "
               f"VADER sets {list(stats)} with the GPT-2 tokenizer"
               f"{' (first ' + str(limit) + ' texts)' if limit else ''}, before (Ω) and after "
               "(Ω₂) removing single-entry rows (Lemma 3); lengths where Ω₂ has no rows fall below the axis.")
    js = write_json({"name": NAME, "caption": caption, "tokenizer": TOKENIZER, "limit": limit,
                     "quick": quick, "summary": summary, "details": stats}, out / f"{NAME}.json")
    return [png, js]


def main(argv=None) -> list[Path]:
    ap = parser(__doc__)
    ap.add_argument("--limit", type=int, default=None, help="first N texts of each set")
    a = ap.parse_args(argv)
    return run(a.out, quick=a.quick, limit=a.limit)


if __name__ == "__main__":
    main()
