"""The hub presets of paper 002 (§4, Table 2): columns and label transforms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._tables import _as_list, from_columns


# ---------------------------------------------------------------------------------------
# hub presets (paper 002, §4 and Table 2)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A hub dataset with the paper's text and label columns.

    ``text`` lists candidate column groups: the first whose columns all exist is used
    (e.g. Jigsaw's Kaggle ``comment_text`` vs. the hub mirror's ``text``). ``labels`` maps
    each response name to candidate source columns and a transform.
    """

    hub_id: str
    config: str | None
    split: str
    text: tuple[tuple[str, ...], ...]
    labels: tuple[tuple[str, tuple[str, ...], Callable | None], ...]
    description: str


def _bool01(y: np.ndarray) -> np.ndarray:
    return (np.asarray(y) != 0).astype(np.float64)


PRESETS: dict[str, Preset] = {
    "jigsaw": Preset(
        "google/civil_comments", None, "train",
        (("text",), ("comment_text",)),
        tuple((n, (n, "target") if n == "toxicity" else (n,), None) for n in (
            "toxicity", "severe_toxicity", "obscene", "identity_attack", "insult", "threat",
            "sexual_explicit")),
        "Jigsaw Unintended Bias (civil comments): 7 toxicity fractions in [0, 1] (detox., Table 2)"),
    "amazon_polarity": Preset(
        "fancyzhx/amazon_polarity", None, "train", (("content",),),
        (("positive", ("label",), _bool01),),
        "Amazon Polarity reviews, label 1 = positive (sentiment, Table 2)"),
    "sst2": Preset(
        "stanfordnlp/sst2", None, "train", (("sentence",),),
        (("positive", ("label",), _bool01),),
        "SST-2 sentences, label 1 = positive (sentiment fine-tuning, §4.3)"),
    "helpsteer": Preset(
        "nvidia/HelpSteer", None, "train", (("prompt", "response"),),
        tuple((n, (n,), None) for n in (
            "helpfulness", "correctness", "coherence", "complexity", "verbosity")),
        "HelpSteer prompt+response, 5 attributes on 0-4 (helpfulness, Table 2)"),
    "beavertails": Preset(
        "PKU-Alignment/BeaverTails", None, "30k_train", (("prompt", "response"),),
        (("is_safe", ("is_safe",), _bool01),),
        "BeaverTails prompt+response, is_safe in {0, 1} (safety, Table 2)"),
}


def apply_preset(name: str, table, *, labels=None, where: str | None = None
                 ) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """Map a loaded hub table (``datasets.Dataset`` or dict of columns) to the paper's
    texts and responses. Pure: no network, so it is tested on in-memory tables."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    p = PRESETS[name]
    cols = list(table.column_names if hasattr(table, "column_names") else table.keys())
    where = where or f"{p.hub_id} ({name})"
    text = next((g for g in p.text if all(c in cols for c in g)), None)
    if text is None:
        raise KeyError(f"{where}: none of the text columns {[list(g) for g in p.text]} found; "
                       f"available columns: {cols}")
    wanted = _as_list(labels) or [n for n, _, _ in p.labels]
    known = {n: (src, tf) for n, src, tf in p.labels}
    sources, transforms, out_names = [], {}, []
    for n in wanted:
        if n not in known:
            raise KeyError(f"{where}: label {n!r} not in preset; available: {list(known)}")
        src, tf = known[n]
        col = next((c for c in src if c in cols), None)
        if col is None:
            raise KeyError(f"{where}: label {n!r} needs one of columns {list(src)}; "
                           f"available columns: {cols}")
        sources.append(col)
        out_names.append(n)
        if tf is not None:
            transforms[col] = tf
    texts, y, _ = from_columns(table, list(text), sources, where=where, transforms=transforms)
    return texts, y, tuple(out_names)
