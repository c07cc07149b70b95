r"""The candidate step of reward-guided decoding (paper 002 §2.1, eq. 1), on the candidates.

At each step RAD keeps only a candidate set :math:`V'(x)` of the base LM's tokens (top-k or
the nucleus) and shifts their logits by the reward model's scores,

.. math::
    z(v \mid x) = z_{LM}(v \mid x) + \beta\,\tilde r(v \mid x),\quad v \in V'(x),\qquad
    \tilde r = \hat r \ (\text{direction } {+1}) \text{ or } 1 - \hat r \ ({-1}).

This module holds that step and its checks, on the (B, k) candidates only, so that both
users share one definition: the ``LogitsProcessor`` of :mod:`rankkit_ext.guided` (which
scatters the result into the full vocabulary, :func:`rankkit_ext.guided.guided_logits`) and
the SMC proposal :class:`rankkit_ext.tsmc.proposals.RewardGuidedProposal` (which samples on
the candidates). It sits below both, so guided decoding depends on the SMC engine and never
the other way round. :func:`select_candidates` is public API re-exported by
:mod:`rankkit_ext.guided` (and ``rankkit_ext.select_candidates``).
"""

from __future__ import annotations

import math

import torch

from ._checks import check_step_values

__all__ = ["select_candidates", "candidate_logits", "check_direction", "check_rewards"]


def select_candidates(lm_logits: torch.Tensor, top_k: int | None = 20,
                      top_p: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate set V'(x) of each row: top-k tokens, or the nucleus of mass ``top_p``.

    Returns ``candidates`` (B, k) long, sorted by decreasing base logit, and ``valid``
    (B, k) bool. With ``top_p`` the nucleus is the smallest prefix of the sorted tokens
    whose probability reaches ``top_p`` (at least one token); rows are padded to the
    largest nucleus in the batch (capped at ``top_k`` when both are given) and the padding
    is marked invalid. Ties at the k-th logit are broken by ``torch.topk``.
    """
    B, V = lm_logits.shape
    if top_k is None and top_p is None:
        raise ValueError("give top_k (e.g. 20, as in paper 002) or top_p; guiding all "
                         f"{V} tokens per step is what top-k avoids")
    k = V if top_k is None else int(top_k)
    if not 1 <= k:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    k = min(k, V)
    if top_p is None:
        vals, cand = torch.topk(lm_logits, k, dim=-1)
        return cand, torch.isfinite(vals)
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logp = torch.log_softmax(lm_logits.float(), dim=-1)
    sp, order = torch.sort(logp, dim=-1, descending=True)
    cum = torch.cumsum(sp.exp(), dim=-1)
    # keep token i while the mass strictly before it is < top_p
    keep = (cum - sp.exp()) < top_p
    keep[:, 0] = True
    n = int(min(keep.sum(-1).max().item(), k))
    return order[:, :n].contiguous(), keep[:, :n] & torch.isfinite(sp[:, :n])


def candidate_logits(lm_logits, candidates, valid, rewards, beta, direction, clamp):
    r"""Eq. (1) on the candidates only: :math:`z_{LM} + \beta\tilde r` as (B, k).

    ``rewards`` (B, k) are :math:`\hat r` of ``candidates``; clamped to [0, 1] first when
    ``clamp`` (the reference RAD code's rule), turned into :math:`1 - \hat r` for
    ``direction=-1``. Invalid entries get logit :math:`-\infty` and reward 0. The logits are
    float32 or ``lm_logits``' dtype, whichever is wider, so a half-precision base model
    does not round β r̃ away.

    Returns
    -------
    cand_logits : (B, k) guided logits of the candidates.
    r_tilde : (B, k) float32, the direction-applied rewards actually added.
    """
    r = rewards.to(torch.float32)
    if clamp:
        r = r.clamp(0.0, 1.0)
    if direction == -1:
        r = 1.0 - r
    r = torch.where(valid, r, torch.zeros_like(r))
    dtype = torch.promote_types(lm_logits.dtype, torch.float32)
    cand_logits = lm_logits.gather(-1, candidates).to(dtype) + beta * r.to(dtype)
    cand_logits = torch.where(valid, cand_logits, torch.full_like(cand_logits, -math.inf))
    return cand_logits, r


def check_direction(direction) -> int:
    """``direction`` as the int +1 (toward the attribute, r̂) or -1 (away, 1 - r̂); a bool
    is refused (argparse's ``type=bool`` trap makes ``"False"`` truthy)."""
    if isinstance(direction, bool) or direction not in (1, -1):
        raise ValueError(f"direction must be +1 (toward the attribute, r) or -1 (away, 1 - r); "
                         f"got {direction!r}")
    return int(direction)


def check_rewards(r, valid, cand, live, step, row) -> None:
    """A reward-model score must be finite on every valid candidate of a live row: a NaN
    or ±∞ becomes a NaN guided logit and a NaN log q (greedy), a crash in the sampler, or
    one inside ``generate``."""
    check_step_values(torch.where(valid, r, torch.zeros_like(r)), live, "reward model score",
                      step, allow_neg_inf=False, row=row,
                      col=lambda j: f"candidate {j}", fix="check the reward model")
