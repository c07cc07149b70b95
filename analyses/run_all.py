"""Regenerate every figure and table under paper_figures/: ``python -m analyses.run_all``.

A thin entry to the package's runner, :func:`rankkit.figures.run` (the same as
``rankkit figures``): the registry of analyses is :data:`rankkit.figures.ANALYSES`, and each
analysis runs as ``python -m analyses.<name> --out DIR [--quick]`` from the checkout.

    python -m analyses.run_all [--quick] [--only table2_min_rank ...] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rankkit import figures

from ._common import OUT


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", action="append", default=None, choices=figures.ANALYSES)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    for name, files in figures.run(a.only, a.quick, a.out).items():
        print(f"{name}: {', '.join(files)}")


if __name__ == "__main__":
    main()
