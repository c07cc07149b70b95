"""Shared plumbing of the core analyses: output paths, atomic writes, the common CLI."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from rankkit.cli import json_default

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "paper_figures"
VADER = ("vader:movie", "vader:tweets", "vader:nyt", "vader:amazon")
TOKENIZER = "gpt2"


def parser(doc: str) -> argparse.ArgumentParser:
    """``--out`` and ``--quick`` for every analysis (``analyses/run_all.py`` passes both)."""
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help="output folder [paper_figures/]")
    ap.add_argument("--quick", action="store_true", help="small settings for a smoke run")
    return ap


def write_json(obj: dict, path: Path) -> Path:
    """Atomic write (tmp + os.replace) so an interrupted run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {**obj, "generated": {"utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "machine": f"{platform.machine()} {platform.system()}, "
                                           f"{os.cpu_count()} cores"}}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=json_default) + "\n")
    os.replace(tmp, path)
    return path


def save_figure(fig, path: Path) -> Path:
    """Atomic PNG write at a readable resolution."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
