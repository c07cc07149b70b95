"""Shared plumbing of the core analyses: output paths, atomic writes, the common CLI."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from rankkit._io import atomic_write, json_default

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "paper_figures"
VADER = ("vader:movie", "vader:tweets", "vader:nyt", "vader:amazon")
TOKENIZER = "gpt2"


def parser(doc: str) -> argparse.ArgumentParser:
    """``--out`` and ``--quick`` for every analysis (``rankkit figures`` passes both)."""
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help="output folder [paper_figures/]")
    ap.add_argument("--quick", action="store_true", help="small settings for a smoke run")
    return ap


def write_json(obj: dict, path: Path) -> Path:
    """Atomic write (:func:`rankkit._io.atomic_write`) so an interrupted run never leaves half
    a file; stamped with the time and the machine it was generated on."""
    obj = {**obj, "generated": {"utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "machine": f"{platform.machine()} {platform.system()}, "
                                           f"{os.cpu_count()} cores"}}
    # a trailing newline, as the committed paper_figures/*.json have
    return atomic_write(path, "w", lambda f: f.write(json.dumps(obj, indent=2,
                                                                default=json_default) + "\n"))


def save_figure(fig, path: Path) -> Path:
    """Atomic PNG write (:func:`rankkit._io.atomic_write`) at a readable resolution."""
    import matplotlib.pyplot as plt

    # format= because the temporary file's name does not end in .png
    atomic_write(path, "wb", lambda f: fig.savefig(f, format="png", dpi=130,
                                                   bbox_inches="tight"))
    plt.close(fig)
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def seed_stats(x) -> dict:
    """Mean, standard error over seeds (sample SD / √k; NaN for one seed), min, median, max
    and every value, of a list of per-seed numbers."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return {"mean": float(x.mean()), "se": se, "min": float(x.min()),
            "median": float(np.median(x)), "max": float(x.max()),
            "values": [float(v) for v in x], "k": int(len(x))}
