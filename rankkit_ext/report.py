"""Tables and plots of evaluation results (paper 002 Fig. 4 / Fig. 6 layout)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["results_table", "tradeoff_plot"]


def results_table(rows: Sequence[dict]):
    """Tidy results: one row per (method, β, ...) setting.

    Returns a ``pandas.DataFrame`` when pandas is installed, else the list of dicts
    (columns = union of keys, missing entries ``None``), sorted by method then β.
    """
    rows = [dict(r) for r in rows]
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    rows = [{c: r.get(c) for c in cols} for r in rows]
    rows.sort(key=lambda r: (str(r.get("method", "")), float(r.get("beta") or 0.0)))
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame(rows, columns=cols)


def tradeoff_plot(table, *, x: str = "perplexity", y: str = "avg_max_toxicity",
                  hue: str = "method", label_points: str | None = "beta",
                  ax=None, path: str | Path | None = None, title: str | None = None):
    """Attribute/fluency trade-off plot in the layout of paper 002 Fig. 4 / Fig. 6.

    One curve per ``hue`` value (method), points ordered by β, the control metric
    (toxicity or positive rate) on the vertical axis and fluency (perplexity or MAUVE) on
    the horizontal axis; each point is annotated with its β. Saves to ``path`` when given.
    Returns the matplotlib ``Axes``.
    """
    import matplotlib
    if ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
    for c in (x, y):
        if rows and c not in rows[0]:
            raise KeyError(f"column {c!r} not in the results table (columns: {sorted(rows[0])})")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.5))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r.get(hue, "")), []).append(r)
    for name, g in groups.items():
        g = sorted(g, key=lambda r: float(r.get("beta") or 0.0))
        ax.plot([r[x] for r in g], [r[y] for r in g], marker="o", label=name)
        if label_points:
            for r in g:
                ax.annotate(f"{r.get(label_points)}", (r[x], r[y]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if path is not None:
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=150)
    return ax
