r"""Proposals of the SMC engine (:func:`~rankkit_ext.tsmc.engine.smc`).

A proposal draws the next token :math:`s_t\sim q_t(\cdot\mid s_{<t})` of every particle and
reports what the engine's incremental weight needs (Zhao et al. 2024, eq. 4; Kim et al. 2025,
§1)

.. math::
    \log w_t = \log p_{LM}(s_t\mid s_{<t}) + \log\psi_t(s_{1:t})
               - \log\psi_{t-1}(s_{1:t-1}) - \log q_t(s_t\mid s_{<t})

(final step: :math:`\log\phi` in place of :math:`\log\psi_T`): the drawn token, its
:math:`\log q_t`, :math:`\log p_{LM}` and :math:`\log\psi_t`. Only the drawn token is needed,
so a proposal that knows ψ on a few candidates (reward-guided decoding) fits as well as one
that knows it on the whole vocabulary (a twist).

The proposal protocol
---------------------
``init_state(prompts, n, first, hidden) -> state``
    ``prompts`` is a list of G prompts (token-id lists), each continued by ``n`` particles
    (rows group-major); ``first`` (G·n, V) and ``hidden`` (G·n, H) are the LM adapter's first
    step (log-probabilities, or logits for an adapter built with ``output="logits"``);
``propose(state, first, hidden, ctx, forced=None) -> (ProposalStep, state)``
    draw one token per row (``ctx``: :class:`StepContext`); ``forced = (rows, tokens)`` then
    replaces the draws of those rows (conditional SMC's reference, exact enumeration of the
    proposal's law) and the step reports log q, log p and log ψ *of the forced tokens*;
``advance(state, tokens, first, hidden) -> state``
    after the LM adapter has appended ``tokens``; ``first`` / ``hidden`` are its new step;
``reorder(state, ancestors) -> state``
    follow resampling.

Two proposals ship: :class:`TwistProposal`, the twist-induced
:math:`q_t\propto p_{LM}\,\psi_t` (with ψ ≡ 1 the bootstrap proposal :math:`p_{LM}`), used by
:func:`~rankkit_ext.tsmc.sampler.tsmc`; and :class:`RewardGuidedProposal`, paper 002's
eq. 1–2 (top-k / nucleus candidates shifted by β r̃, optionally mixed with
:math:`p_{LM}`), used by :func:`~rankkit_ext.guided.guided_generate`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from .._candidates import candidate_logits, check_direction, check_rewards, select_candidates
from .._checks import check_real, check_step_values
from .._tensors import padded
from .resampling import categorical
from .twists import as_twist

__all__ = ["Proposal", "ProposalStep", "StepContext", "TwistProposal", "RewardGuidedProposal"]


@dataclass
class StepContext:
    """What the engine tells a proposal about the current step.

    Attributes
    ----------
    t : int
        0-based step.
    live : BoolTensor (N,)
        Rows still generating (finished rows' draws are replaced by padding and ignored).
    generator : torch.Generator or None
        The run's only source of randomness; draws happen on its device.
    row : callable
        ``row(i) -> str`` names row i in error messages (``"particle 3"``, ``"prompt 1,
        sample 2 (row 6)"``).
    """

    t: int
    live: torch.Tensor
    generator: torch.Generator | None
    row: Callable[[int], str] = lambda k: f"particle {k}"

    @property
    def draw_device(self) -> torch.device:
        return self.live.device if self.generator is None else self.generator.device


@dataclass
class ProposalStep:
    """One step of a proposal, per row (float64, shape (N,)).

    Attributes
    ----------
    tokens : LongTensor (N,)
        Drawn (or forced) tokens :math:`s_t`.
    log_q, log_p, log_psi : Tensor (N,)
        :math:`\\log q_t(s_t\\mid s_{<t})`, :math:`\\log p_{LM}(s_t\\mid s_{<t})`,
        :math:`\\log\\psi_t(s_{1:t})` of those tokens (``log_psi`` 0 without a twist).
    log_z : Tensor (N,) or None
        Only for a twist-induced proposal :math:`q_t = p_{LM}\\psi_t / Z_t`:
        :math:`\\log Z_t(s_{<t}) = \\log\\sum_v p_{LM}(v\\mid s_{<t})\\psi_t(s_{<t}, v)`. The
        engine then takes :math:`\\log Z_t - \\log\\psi_{t-1}` as the (non-final) increment,
        the same value without the cancellation of :math:`\\log p + \\log\\psi - \\log q`,
        and can record the intermediate targets :math:`\\pi_t(s_{<t})` for CTL.
    aux : dict of Tensor (N,)
        Per-row values the engine carries along each lineage (the last live step's value is
        kept), e.g. ``{"reward": r~}`` for guided decoding.
    """

    tokens: torch.Tensor
    log_q: torch.Tensor
    log_p: torch.Tensor
    log_psi: torch.Tensor
    log_z: torch.Tensor | None = None
    aux: dict = field(default_factory=dict)


@runtime_checkable
class Proposal(Protocol):
    """The proposal protocol of the SMC engine (see the module docstring)."""

    def init_state(self, prompts: list[list[int]], n: int, first: torch.Tensor,
                   hidden: torch.Tensor) -> Any: ...

    def propose(self, state, first: torch.Tensor, hidden: torch.Tensor, ctx: StepContext,
                forced: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[ProposalStep, Any]: ...

    def advance(self, state, tokens: torch.Tensor, first: torch.Tensor,
                hidden: torch.Tensor) -> Any: ...

    def reorder(self, state, ancestors: torch.Tensor) -> Any: ...


def _draw(logits: torch.Tensor, ctx: StepContext, return_log_norm: bool = False):
    """The package's one categorical draw, on the generator's device, results moved back."""
    dev = logits.device
    out = categorical(logits.to(ctx.draw_device), ctx.generator,
                      return_log_norm=return_log_norm, check=False)
    if return_log_norm:
        return out[0].to(dev), out[1].to(dev)
    return out.to(dev)


def _force(tokens: torch.Tensor, forced) -> torch.Tensor:
    if forced is None:
        return tokens
    rows, toks = forced
    tokens = tokens.clone()
    tokens[rows] = toks.to(tokens.device)
    return tokens


# ---------------------------------------------------------------------------------------
# the twist-induced proposal q_t ∝ p_LM ψ_t
# ---------------------------------------------------------------------------------------
class TwistProposal:
    r"""Twist-induced proposal :math:`q_t(v\mid s_{<t}) = p_{LM}(v\mid s_{<t})\,
    \psi_t(s_{<t}, v) / Z_t(s_{<t})` (Zhao et al. 2024, §4; Kim et al. 2025, §1).

    With it the incremental weight reduces to :math:`Z_t(s_{<t})/\psi_{t-1}(s_{1:t-1})`
    before the last step. ``twist=None`` is the bootstrap proposal :math:`q = p_{LM}`
    (ψ ≡ 1). Needs an adapter that returns log-probabilities (the default of
    :class:`~rankkit_ext.tsmc.adapters.HFCausalLM`) and one prompt group.

    Parameters
    ----------
    twist : Twist, object with ``log_psi(hidden)``, or None
        Any twist of :mod:`~rankkit_ext.tsmc.twists` (its protocol ``init_state`` / ``step``
        / ``reorder`` is followed).
    """

    def __init__(self, twist=None):
        self.twist = None if twist is None else as_twist(twist)

    def init_state(self, prompts, n, first, hidden):
        if len(prompts) != 1:
            raise ValueError(f"TwistProposal runs one prompt group; got {len(prompts)} prompts")
        if self.twist is None:
            return None
        return self.twist.init_state(prompts[0], n, hidden)  # (log psi (n, V), twist state)

    def propose(self, state, first, hidden, ctx, forced=None):
        logp = first.to(torch.float64)
        lpsi = (torch.zeros_like(logp) if self.twist is None
                else state[0].to(logp.device, torch.float64))
        live = ctx.live
        check_step_values(logp, live, "base model log-probabilities", ctx.t, row=ctx.row,
                          fix="check the base model (its dtype, weights and inputs)")
        check_step_values(lpsi, live, "twist log ψ", ctx.t, row=ctx.row,
                          fix="check the twist (a NaN usually means diverged training)")
        joint = logp + lpsi
        v, log_z = _draw(joint, ctx, return_log_norm=True)
        v = _force(v, forced)
        g = v.unsqueeze(1)
        return ProposalStep(tokens=v, log_q=joint.gather(1, g).squeeze(1) - log_z,
                            log_p=logp.gather(1, g).squeeze(1),
                            log_psi=lpsi.gather(1, g).squeeze(1), log_z=log_z), state

    def advance(self, state, tokens, first, hidden):
        if self.twist is None:
            return None
        return self.twist.step(state[1], tokens, hidden)

    def reorder(self, state, ancestors):
        if self.twist is None:
            return None
        # the log psi (n, V) of the consumed step is not needed again: step() renews it
        return state[0], self.twist.reorder(state[1], ancestors)


# ---------------------------------------------------------------------------------------
# the reward-guided proposal of paper 002, eq. 1–2
# ---------------------------------------------------------------------------------------
@dataclass
class _GuidedState:
    ids: torch.Tensor  # (N, L) left-padded prefixes given to the reward model
    mask: torch.Tensor
    rm_state: Any = None  # reward model's ScoringState of ``ids`` (incremental scoring)


class RewardGuidedProposal:
    r"""Reward-guided decoding (paper 002 §2.1, eq. 1–2) as an SMC proposal.

    On the candidates :math:`V'(x)` (top-k or nucleus of the base logits) the proposal is
    :math:`\tilde p = \mathrm{softmax}(z_{LM} + \beta\tilde r)`, elsewhere zero; with
    ``mix`` = ε > 0, :math:`q = (1-\epsilon)\tilde p + \epsilon\,p_{LM}`, so every token has
    positive probability and the importance weights toward
    :math:`\sigma(y)\propto p_{LM}(y)\exp(\beta\tilde r(y))` are well defined (top-k alone
    is not absolutely continuous w.r.t. σ). The twists are
    :math:`\psi_t = \exp(\beta\,\tilde r(s_t\mid s_{<t}))`, known only at the drawn token:
    one reward-model call scores the candidates, and a drawn token outside them (only with
    ``mix > 0``) costs one extra call for the rows that need it.

    Parameters
    ----------
    reward_model : RAD-V / RAD-Q reward model (``score_candidates`` contract) or None
        (unguided top-k / nucleus sampling: r̃ ≡ 0).
    beta, top_k, top_p, direction, label, clamp :
        See :func:`rankkit_ext.guided.guided_logits` / :func:`~rankkit_ext.guided.select_candidates`
        (the candidate step itself lives in :mod:`rankkit_ext._candidates`, below both).
    mix : float in [0, 1)
    do_sample : bool
        False takes the argmax of q (deterministic; tests).
    use_reward_cache : bool
        Pass the reward model's state between steps (False recomputes every prefix).
    pad_token_id : int
        Left padding of the reward model's input (masked).

    Notes
    -----
    Consumes base *logits* (an adapter with ``output="logits"``; log-probabilities work too,
    they are logits). Attribute ``seconds_reward`` accumulates the wall time in reward-model
    calls.
    """

    def __init__(self, reward_model, beta: float, top_k: int | None = 20,
                 top_p: float | None = None, direction: int = 1, label: int | str = 0,
                 clamp: bool = True, mix: float = 0.0, do_sample: bool = True,
                 use_reward_cache: bool = True, pad_token_id: int = 0):
        self.reward_model = reward_model
        self.beta = check_real("beta", beta, meaning="the guidance strength of eq. 1")
        self.top_k, self.top_p = top_k, top_p
        self.direction = check_direction(direction)
        self.label, self.clamp = label, clamp
        self.mix = check_real("mix", mix, low=0.0, high=1.0, high_open=True,
                              meaning="share of the base distribution in the proposal")
        self.do_sample, self.use_reward_cache = do_sample, use_reward_cache
        self.pad_token_id = int(pad_token_id)
        self.seconds_reward = 0.0
        select_candidates(torch.zeros(1, 2), None if top_k is None else min(top_k, 2), top_p)

    def init_state(self, prompts, n, first, hidden):
        ids, mask = padded(prompts, "left", self.pad_token_id, device=first.device)
        return _GuidedState(ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0))

    def _score(self, ids, mask, cand, state):
        t0 = time.perf_counter()
        out = self.reward_model.score_candidates(ids, mask, cand, label=self.label,
                                                 state=state if self.use_reward_cache else None)
        self.seconds_reward += time.perf_counter() - t0
        return out

    def _r_tilde(self, r):
        r = r.double()
        r = r.clamp(0, 1) if self.clamp else r
        return (1 - r) if self.direction == -1 else r

    def propose(self, state, first, hidden, ctx, forced=None):
        logits, mix, live, row, step = first, self.mix, ctx.live, ctx.row, ctx.t
        dev = logits.device
        cand, valid = select_candidates(logits, self.top_k, self.top_p)
        if self.reward_model is None:  # unguided top-k / nucleus sampling, same loop
            r, rm_state = torch.zeros(cand.shape, device=dev), None
        else:
            r, rm_state = self._score(state.ids, state.mask, cand, state.rm_state)
        # log p_LM(v) = z_LM(v) - logsumexp z_LM: one pass over the vocabulary, which also
        # flags a NaN or +inf logit anywhere in the row (located only then)
        lse = torch.logsumexp(logits.to(torch.promote_types(logits.dtype, torch.float32)),
                              -1).double()
        if not bool(((lse < math.inf) | ~live).all()):
            check_step_values(logits, live, "base model logit", step, row=row,
                              fix="check the base model")
        check_rewards(r, valid, cand, live, step, row)
        zc, r_t = candidate_logits(logits, cand, valid, r, self.beta, self.direction,
                                    self.clamp)
        logq_c = torch.log_softmax(zc.double(), -1)
        B = logits.shape[0]
        if mix == 0.0 and forced is None:
            # plain RAD lives on the candidates: sample in (B, k), not (B, |V|)
            j = _draw(logq_c, ctx) if self.do_sample else logq_c.argmax(-1)
            tok = cand.gather(-1, j[:, None]).squeeze(-1)
            lq = logq_c.gather(-1, j[:, None]).squeeze(-1)
            r_tok = r_t.double().gather(-1, j[:, None]).squeeze(-1)
        else:
            if not self.do_sample:  # argmax of q over the vocabulary (tests, debugging)
                z = torch.full(logits.shape, -math.inf, dtype=torch.float64, device=dev)
                z.scatter_(-1, cand, logq_c + (math.log1p(-mix) if mix else 0.0))
                if mix:
                    z = torch.logaddexp(z, logits.double() - lse[:, None] + math.log(mix))
                tok = z.argmax(-1)
            elif mix == 0.0:
                tok = cand.gather(-1, _draw(logq_c, ctx)[:, None]).squeeze(-1)
            else:
                # two-stage draw from q = (1 - mix) p_RAD + mix p_LM: a coin per row, then
                # the candidates (B, k) or, for the few base rows, the vocabulary
                coin = torch.rand(B, generator=ctx.generator, device=ctx.draw_device,
                                  dtype=torch.float64)
                tok = cand.gather(-1, _draw(logq_c, ctx)[:, None]).squeeze(-1)
                from_base = torch.nonzero(coin.to(dev) < mix).squeeze(-1)
                if from_base.numel():
                    tok[from_base] = _draw(logits[from_base].double(), ctx)
            tok = _force(tok, forced)
            # log q(tok) from the chosen token's two terms only: O(k) per row
            hit = (cand == tok[:, None]) & valid
            lq = logq_c.masked_fill(~hit, -math.inf).logsumexp(-1)
            if mix:
                l_lm = logits.gather(-1, tok[:, None]).squeeze(-1).double() - lse
                lq = torch.logaddexp(lq + math.log1p(-mix), l_lm + math.log(mix))
            # reward of the chosen token: from the candidates, or one extra call for rows
            # whose token is not among them (from the base part of the mixture, or forced)
            r_tok = (r_t.double() * hit).sum(-1)
            miss = live & ~hit.any(-1)
            if self.reward_model is not None and bool(miss.any()):
                rows_m = torch.nonzero(miss).squeeze(-1)
                sel = getattr(rm_state, "select", None)  # reuse the prefix pass
                extra, _ = self._score(state.ids[rows_m], state.mask[rows_m], tok[rows_m, None],
                                       sel(rows_m) if callable(sel) else None)
                check_rewards(extra[:, :1], torch.ones_like(extra[:, :1], dtype=torch.bool),
                               tok[rows_m, None], torch.ones_like(rows_m, dtype=torch.bool),
                               step, lambda b, rows_m=rows_m: row(int(rows_m[b])))
                r_tok[rows_m] = self._r_tilde(extra[:, 0])
        lp = logits.gather(-1, tok[:, None]).squeeze(-1).double() - lse
        st = ProposalStep(tokens=tok, log_q=lq, log_p=lp, log_psi=self.beta * r_tok,
                          aux={"reward": r_tok})
        return st, _GuidedState(state.ids, state.mask, rm_state)

    def advance(self, state, tokens, first, hidden):
        ids = torch.cat([state.ids, tokens[:, None].to(state.ids.device)], -1)
        # a column of ones even when every prompt was empty (mask of width 0)
        one = torch.ones((state.mask.shape[0], 1), dtype=state.mask.dtype, device=state.mask.device)
        mask = torch.cat([state.mask, one], -1)
        return _GuidedState(ids, mask, state.rm_state)

    def reorder(self, state, ancestors):
        sel = getattr(state.rm_state, "select", None)  # ScoringState.select
        return _GuidedState(state.ids[ancestors], state.mask[ancestors],
                            sel(ancestors) if callable(sel) else None)
