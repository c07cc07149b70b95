"""Entry-point and per-step checks shared by the samplers: name the bad token, prompt,
model, step and particle instead of letting a raw torch error (or a silent NaN) surface
deep inside a model."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["check_prompt_ids", "check_real", "check_step_values"]


def check_prompt_ids(prompt, vocab_size: int, where: str = "prompt") -> list[int]:
    """Token ids of one prompt as ints in [0, vocab_size); a bad one is named with its
    position instead of surfacing as a raw torch index error deep inside a model."""
    ids = []
    for pos, t in enumerate(prompt):
        try:
            v = int(t)
        except (TypeError, ValueError):
            raise ValueError(f"{where}, position {pos}: {t!r} is not a token id") from None
        if v != t or not 0 <= v < vocab_size:
            raise ValueError(f"{where}, position {pos}: token id {t!r} is outside the base model's "
                             f"vocabulary [0, {vocab_size})")
        ids.append(v)
    return ids


def check_real(name: str, value, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, meaning: str = "") -> float:
    """``value`` as a finite float in the given interval, or a ValueError naming ``name``,
    the value and the interval (NaN and ±∞ are refused: an infinite guidance strength or
    threshold has no meaning in a sampler and only surfaces later as NaN)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number; got {value!r}") from None
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        span = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name} must be a finite number in {span}; got {value!r}"
                         + (f" ({meaning})" if meaning else ""))
    return v


def check_step_values(x: torch.Tensor, live: torch.Tensor, source: str, step: int | str, *,
                      allow_neg_inf: bool = True,
                      row: Callable[[int], str] = lambda k: f"particle {k}",
                      col: Callable[[int], str] = lambda j: f"token {j}",
                      fix: str = "") -> None:
    """Refuse NaN, +∞ (and −∞ unless ``allow_neg_inf``) in the live rows of a (rows, cols)
    tensor of per-step values, naming the source, the step (an int, or a phrase such as
    ``"prefix length 7"``), the row and the column.

    −∞ is a legitimate zero of a twist or potential (a hard constraint); NaN never is, and
    without this check a NaN is read as −∞ downstream (every particle killed, log Ẑ = −∞ with
    no error) or reaches ``torch.multinomial`` inside ``generate`` as a crash.
    """
    # one pass screens every row: a row sum is NaN or ±inf whenever the row holds a NaN or an
    # infinity (a finite sum cannot hide one), so the element-wise masks below run only for
    # rows that may be bad, i.e. almost never on a hot path
    tot = x.sum(-1)
    suspect = torch.isnan(tot) | (tot == math.inf)
    if not allow_neg_inf:
        suspect |= tot == -math.inf
    if not bool((suspect & live.reshape(tot.shape)).any()):
        return
    bad = torch.isnan(x) | (x == math.inf)
    if not allow_neg_inf:
        bad |= x == -math.inf
    bad &= live.reshape(-1, *([1] * (x.ndim - 1)))
    if bool(bad.any()):
        k, j = (int(i) for i in torch.nonzero(bad)[0])
        need = "finite values" + (" or -inf (a zero)" if allow_neg_inf else "")
        at = step if isinstance(step, str) else f"step {step}"
        raise ValueError(f"{source} is {float(x[k, j])} at {at}, {row(k)}, {col(j)}: the "
                         f"sampler needs {need}" + (f"; {fix}" if fix else ""))
