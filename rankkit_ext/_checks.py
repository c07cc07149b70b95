"""Entry-point checks shared by the samplers: name the bad token, prompt and model."""

from __future__ import annotations

__all__ = ["check_prompt_ids"]


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
