"""Token sequences as padded torch tensors: the one bridge from
:meth:`rankkit.TokenSequences.to_padded` (NumPy, in the core) to the models' inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rankkit.sequences import TokenSequences

__all__ = ["padded"]


def padded(seqs, side: str = "right", pad: int = 0, prepend: Sequence[int] = (),
           device=None, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` int64 tensors on ``device`` for ``seqs`` (a
    :class:`~rankkit.TokenSequences` or lists of token ids), ``prepend`` (e.g. ``[bos]``)
    in front of every row, padded with ``pad`` on ``side``; see ``TokenSequences.to_padded``."""
    if not isinstance(seqs, TokenSequences):
        seqs = TokenSequences.from_lists([list(map(int, s)) for s in seqs])
    ids, mask = seqs.to_padded(side, pad, prepend, width)
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
