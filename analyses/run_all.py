"""Regenerate every figure and table under paper_figures/ (``rankkit figures`` calls :func:`run`).

Each module in ``MODULES`` has ``main(argv)`` accepting ``--out DIR`` and ``--quick`` and
writes ``DIR/<name>.png`` + ``DIR/<name>.json``. Add an analysis by adding its module name.

    python analyses/run_all.py [--quick] [--only table2_min_rank ...]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODULES = [
    "analyses.data_rank_structure",
    "analyses.stress_upper_triangular",
    "analyses.table2_min_rank",
    "analyses.min_rank_frontier",
    # rankkit_ext (torch): reward models, guided decoding, twisted SMC
    "analyses.expressivity_upper_triangular",
    "analyses.learned_rank_regularizer",
    "analyses.guided_tradeoff",
    "analyses.tsmc_toxic_story",
]


def run(only: list[str] | None = None, quick: bool = False,
        out_dir: str | Path = ROOT / "paper_figures") -> dict[str, list[str]]:
    """Run the analyses (all, or those whose short name is in ``only``); return files written."""
    short = {m.rsplit(".", 1)[-1]: m for m in MODULES}
    unknown = sorted(set(only or ()) - set(short))
    if unknown:
        raise ValueError(f"unknown analysis {unknown}; available: {list(short)}")
    out_dir = Path(out_dir)
    written = {}
    for name, module in short.items():
        if only and name not in only:
            continue
        t0, wall0 = time.perf_counter(), time.time()
        print(f"[run_all] {name} …", file=sys.stderr, flush=True)
        importlib.import_module(module).main(["--out", str(out_dir)] + (["--quick"] if quick else []))
        # every file the analysis (re)wrote, whatever its name (one script may draw several figures)
        written[name] = sorted(str(p) for p in out_dir.iterdir()
                               if p.is_file() and p.stat().st_mtime >= wall0 - 1)
        print(f"[run_all] {name} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return written


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", action="append", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "paper_figures")
    a = ap.parse_args(argv)
    for name, files in run(a.only, a.quick, a.out).items():
        print(f"{name}: {', '.join(files)}")


if __name__ == "__main__":
    main()
