r"""Twisted sequential Monte Carlo for language models and its baselines.

Target :math:`\sigma(s_{1:T}\mid s_0)\propto p_{LM}(s_{1:T}\mid s_0)\phi(s_{1:T})`
(Kim et al. 2025, eq. 2). With a twist head ψ_θ and the twist-induced proposal
:math:`q_t(v\mid s_{<t}) = p_{LM}(v\mid s_{<t})\psi_\theta(s_{<t},v)/Z_t(s_{<t})`, each step
(§1, steps 1–3) extends every particle, multiplies its weight by

.. math::
    w_t = \frac{p_{LM}(s_t\mid s_{<t})\,\psi_t(s_{1:t})}{\psi_{t-1}(s_{1:t-1})\,q_t(s_t\mid s_{<t})}
        = \frac{Z_t(s_{<t})}{\psi_{t-1}(s_{1:t-1})}\quad(t<T),\qquad
    w_T = \frac{p_{LM}(s_T\mid s_{<T})\,\phi(s_{1:T})}{\psi_{T-1}(s_{1:T-1})\,q_T(s_T\mid s_{<T})},

(:math:`\psi_0\equiv 1`; a particle that emits EOS at step t takes the final-step weight
there and keeps its weight afterwards), and resamples when the ESS falls below
``ess_threshold * K``. The normalising-constant estimate
:math:`\log\hat Z = \sum_{\text{resampling epochs}}\log\frac1K\sum_k W_k` is accumulated in
float64 and is unbiased in :math:`\hat Z` for any twist; with the optimal twist ψ* it is
exact (zero variance).

:func:`tsmc` validates its arguments and runs the package's one SMC engine
(:func:`~rankkit_ext.tsmc.engine.smc`) with the twist-induced proposal
(:class:`~rankkit_ext.tsmc.proposals.TwistProposal`), the same engine guided decoding runs
with its own proposal.

Every twist goes through the protocol of :mod:`~rankkit_ext.tsmc.twists`
(``init_state`` / ``step`` / ``reorder``): a head on the base's hidden states and a
:class:`~rankkit_ext.tsmc.twists.CopyTwist` (a trainable copy of the base with its own KV
cache, grown one token per step and reordered by the same ancestors) share one code path.

With ``record=True`` the run also keeps what the SMC negative phase of contrastive twist
learning needs (:func:`~rankkit_ext.tsmc.learning.ctl_loss`): per step t, the population
(post-resampling at t−1) with its base log-probs (K, V), base hidden states (K, H) and
log-weights :math:`\log W_{t-1} + \log Z_t(s_{<t}) - \log\psi_{t-1}(s_{<t})` targeting
:math:`\pi_t(s_{<t})`; the population's tokens at the end of every resampling epoch; and each
final particle's row in every step's population (its genealogy). Memory: K·T·V float64 for
the log-probs (the same as teacher forcing the final particles), K·T·H for the hidden states.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .._checks import check_prompt_ids
from .._tensors import padded
from .adapters import as_adapter
from .engine import final_weights, smc
from .potentials import Potential
from .proposals import TwistProposal
from .resampling import RESAMPLING_METHODS, conditional_resample, resample
from .twists import as_twist, check_twist_fits

__all__ = ["TSMCResult", "tsmc", "sis", "bootstrap_smc", "RejectionResult", "rejection_sample",
           "teacher_force", "score_sequences"]


@dataclass
class TSMCResult:
    """Output of :func:`tsmc`.

    Attributes
    ----------
    tokens : LongTensor (K, T)
        Generated continuations; entries at positions ``>= lengths[k]`` are padding.
    lengths : LongTensor (K,)
        Tokens generated per particle, EOS included.
    finished : BoolTensor (K,)
        True where the particle ended with EOS.
    log_weights : float64 (K,)
        Unnormalised log-weights accumulated since the last resampling.
    weights : float64 (K,)
        Self-normalised final weights :math:`\\bar w_k`.
    log_Z : float
        :math:`\\log\\hat Z` (float64 accumulation).
    ess_trace : list[float]
        ESS after every step's reweighting (before any resampling).
    resampled_at : list[int]
        Steps (0-based) after which the particles were resampled.
    log_phi : float64 (K,)
        :math:`\\log\\phi` of each final particle.
    step_log_w : float64 (K, T)
        Incremental log-weights along each particle's genealogy (0 after it finished).
    step_log_pi : float64 (K, T)
        Incremental log-weights of the intermediate target :math:`\\pi_t(s_{<t})`,
        :math:`\\log Z_t(s_{<t}) - \\log\\psi_{t-1}(s_{<t})` (CTL negative phase).
    step_log_psi : float64 (K, T)
        :math:`\\log\\psi_t(s_{1:t})` of the chosen token along each particle's genealogy
        (0 after it finished; 0 everywhere without a twist).
    extra : dict
        ``extra["record"]`` with ``record=True`` (see the module docstring): ``log_probs``,
        ``hidden``, ``neg_log_w``, ``alive`` (lists over steps of (K, V), (K, H), (K,), (K,)),
        ``epochs`` (list of ``(first_step, last_step, tokens (K, last_step + 1))``) and
        ``row_at`` (K, n_steps), the row of each final particle's ancestor in step t's
        population.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    finished: torch.Tensor
    log_weights: torch.Tensor
    weights: torch.Tensor
    log_Z: float
    ess_trace: list[float]
    resampled_at: list[int]
    log_phi: torch.Tensor
    step_log_w: torch.Tensor
    step_log_pi: torch.Tensor
    step_log_psi: torch.Tensor | None = None
    eos_token_id: int | None = None
    extra: dict = field(default_factory=dict)

    def sequences(self, strip_eos: bool = True) -> list[list[int]]:
        """Continuations as lists of token ids (EOS removed when ``strip_eos``)."""
        out = []
        for k in range(self.tokens.shape[0]):
            s = self.tokens[k, : int(self.lengths[k])].tolist()
            if strip_eos and bool(self.finished[k]) and s and s[-1] == self.eos_token_id:
                s = s[:-1]
            out.append(s)
        return out


def _check_args(n_particles, max_new_tokens, resample_method, ess_threshold):
    if int(n_particles) < 1:
        raise ValueError(f"n_particles must be >= 1; got {n_particles}.")
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}.")
    if resample_method not in RESAMPLING_METHODS:
        raise ValueError(f"resample must be one of {RESAMPLING_METHODS}; got {resample_method!r}.")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold is a fraction of K in [0, 1]; got {ess_threshold} "
                         "(0 = never resample (SIS), 1 = resample every step).")


@torch.no_grad()
def tsmc(lm, twist, potential: Potential, prompt, n_particles: int = 50,
         max_new_tokens: int = 20, resample: str = "systematic", ess_threshold: float = 0.5,
         generator: torch.Generator | None = None, reference: Sequence[int] | None = None,
         eos_token_id: int | None = -1, record: bool = False) -> TSMCResult:
    r"""Sample from :math:`\sigma\propto p_{LM}\,\phi` with twisted SMC.

    Parameters
    ----------
    lm : adapter or Hugging Face causal LM
        See :mod:`~rankkit_ext.tsmc.adapters`; a HF model is wrapped in ``HFCausalLM``
        (KV cache reordered by ancestor indices on resampling).
    twist : Twist or None
        Any twist of :mod:`~rankkit_ext.tsmc.twists` (a head on the base's hidden states or a
        :class:`~rankkit_ext.tsmc.twists.CopyTwist`); ``None`` gives the bootstrap proposal
        :math:`q = p_{LM}` (SMC without twists).
    potential : Potential
        Terminal potential φ, evaluated once per particle when it finishes.
    prompt : LongTensor (P,) or list[int]
        :math:`s_0`; shared by all particles (its KV cache is computed once).
    n_particles, max_new_tokens : int
        K and the horizon T.
    resample : {"systematic", "multinomial", "stratified", "residual"}
    ess_threshold : float in [0, 1]
        Resample after step t when ESS < ``ess_threshold * K`` (1: every step, 0: never = SIS).
        No resampling follows the last step: the final particles are returned weighted.
    generator : torch.Generator, optional
        All randomness (proposals and resampling); same seed → same result.
    reference : list[int], optional
        Conditional SMC: particle 0 is clamped to this continuation (EOS included if it
        ended with one) and always keeps itself as ancestor. With a reference drawn from σ,
        :math:`\mathbb E[\log\hat Z]\ge\log Z` (SMC upper bound, Zhao et al. 2024 §5).
        Needs ``resample="multinomial"`` so the other ancestors follow the conditional law.
    eos_token_id : int or None
        Defaults to the adapter's; ``None`` disables EOS.
    record : bool
        Keep the per-step populations for CTL's SMC negative phase in ``extra["record"]``
        (K·T·V float64 of base log-probs; see the module docstring).

    Returns
    -------
    TSMCResult

    References
    ----------
    Kim et al. (2025) §1; Zhao et al. (2024), *Probabilistic inference in language models via
    twisted sequential Monte Carlo*, ICML.
    """
    _check_args(n_particles, max_new_tokens, resample, ess_threshold)
    if reference is not None and resample != "multinomial" and ess_threshold > 0:
        raise ValueError("conditional SMC (reference=...) needs resample='multinomial'; got "
                         f"{resample!r}.")
    lm = as_adapter(lm)
    prompt = check_prompt_ids(prompt, lm.vocab_size)
    if reference is not None:
        check_prompt_ids(reference, lm.vocab_size, "reference")
    eos = lm.eos_token_id if eos_token_id == -1 else eos_token_id
    K, T = int(n_particles), int(max_new_tokens)
    tw = None if twist is None else as_twist(twist)
    if tw is not None:
        check_twist_fits(tw, lm)

    # the module-level names are looked up per call, so a test can substitute ancestors
    def resampler(log_w, generator):
        if reference is None:
            return _resample(log_w[0], resample, generator)[None]
        # the clamped particle keeps its line, K − 1 i.i.d. draws for the others
        return conditional_resample(log_w[0], resample, generator)[None]

    run = smc(lm, TwistProposal(tw), [prompt], K, T, potential=potential,
              ess_threshold=None if ess_threshold <= 0 else (
                  math.inf if ess_threshold >= 1 else float(ess_threshold)),
              resampler=resampler, generator=generator,
              forced=None if reference is None else [[int(x) for x in reference]],
              eos_token_id=eos, pad_token_id=0 if eos is None else int(eos), record=record)
    n = int(run.lengths.max())
    return TSMCResult(tokens=run.tokens[:, :n], lengths=run.lengths, finished=run.finished,
                      log_weights=run.log_weights, weights=final_weights(run, K)[0],
                      log_Z=float(run.log_Z[0]), ess_trace=[float(e[0]) for e in run.ess_trace],
                      resampled_at=run.resampled_at, log_phi=run.log_phi,
                      step_log_w=run.step_log_w[:, :n], step_log_pi=run.step_log_pi[:, :n],
                      step_log_psi=run.step_log_psi[:, :n], eos_token_id=eos,
                      extra={} if run.record is None else {"record": run.record})


_resample = resample  # the module function, shadowed by tsmc's ``resample`` argument


def sis(lm, twist, potential, prompt, n_particles=50, max_new_tokens=20, generator=None,
        **kw) -> TSMCResult:
    """Twisted sequential importance sampling: :func:`tsmc` that never resamples."""
    return tsmc(lm, twist, potential, prompt, n_particles, max_new_tokens,
                ess_threshold=0.0, generator=generator, **kw)


def bootstrap_smc(lm, potential, prompt, n_particles=50, max_new_tokens=20, generator=None,
                  **kw) -> TSMCResult:
    """SMC without twists: proposal :math:`p_{LM}`, weight φ at the end (and at EOS)."""
    return tsmc(lm, None, potential, prompt, n_particles, max_new_tokens, generator=generator,
                **kw)


@dataclass
class RejectionResult:
    """Accepted exact samples from σ and the acceptance ratio (Kim et al. 2025, App. B)."""

    sequences: list[list[int]]
    log_phi: torch.Tensor
    n_proposed: int
    acceptance_ratio: float


def rejection_sample(lm, potential: Potential, prompt, n_proposals: int, max_new_tokens: int,
                     generator: torch.Generator | None = None, batch_size: int = 256,
                     eos_token_id: int | None = -1) -> RejectionResult:
    r"""Rejection sampling from σ with proposals from :math:`p_{LM}` and acceptance φ.

    Requires :math:`\phi\le 1`. Each proposal :math:`\hat s\sim p_{LM}` is accepted with
    probability :math:`\phi(\hat s)`, so accepted samples are exact draws from σ and the
    acceptance ratio estimates :math:`Z = \mathbb E_{p_{LM}}[\phi]`.
    """
    acc: list[list[int]] = []
    lphis = []
    done = 0
    while done < n_proposals:
        b = min(batch_size, n_proposals - done)
        r = tsmc(lm, None, potential, prompt, b, max_new_tokens, ess_threshold=0.0,
                 generator=generator, eos_token_id=eos_token_id)
        if (r.log_phi > 1e-12).any():
            i = int(torch.nonzero(r.log_phi > 1e-12)[0])
            raise ValueError(f"rejection sampling needs phi <= 1, got log phi = "
                             f"{float(r.log_phi[i]):.4g} for sequence {r.sequences()[i]}; "
                             "rescale the potential (e.g. beta * log p with p <= 1).")
        u = torch.rand(b, generator=generator, dtype=torch.float64, device=r.log_phi.device)
        keep = torch.log(u) < r.log_phi
        seqs = r.sequences()
        acc += [seqs[k] for k in torch.nonzero(keep).squeeze(1).tolist()]
        lphis.append(r.log_phi[keep].cpu())
        done += b
    return RejectionResult(acc, torch.cat(lphis), done, len(acc) / max(done, 1))


def teacher_force(lm, prompt, tokens: torch.Tensor, lengths: torch.Tensor | None = None,
                  twist=None):
    """Run the adapter (and optionally a twist) along given continuations.

    Returns ``log_probs (K, T, V)`` (model dtype → float64) and ``hidden (K, T, H)``: the
    next-token distribution and hidden state of each prefix :math:`s_{0:t-1}`, t = 1..T;
    with ``twist``, also ``log_psi (K, T, V)`` from the twist protocol's
    ``sequence_log_psi`` (differentiable in the twist's parameters, e.g. one forward of a
    :class:`~rankkit_ext.tsmc.twists.CopyTwist`'s copy over prompt + tokens).
    Positions past ``lengths[k]`` are computed on padding and must be masked by the caller.
    """
    lm = as_adapter(lm)
    tw = None if twist is None else as_twist(twist)
    if tw is not None:
        check_twist_fits(tw, lm)
    K, T = tokens.shape
    logp, h, state = lm.start(prompt, K)
    lps, hs = [logp], [h]
    for t in range(T - 1):
        logp, h, state = lm.advance(state, tokens[:, t])
        lps.append(logp)
        hs.append(h)
    logp, h = torch.stack(lps, 1), torch.stack(hs, 1)
    if tw is None:
        return logp, h
    return logp, h, tw.sequence_log_psi(prompt, tokens, h)


def _right_padded(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuations right-padded with ``pad`` (at least one column, so an all-empty batch
    still teacher-forces one step) and their lengths."""
    toks, mask = padded(seqs, pad=pad, width=max(1, max(len(s) for s in seqs)))
    return toks, mask.sum(1)


@torch.no_grad()
def score_sequences(lm, prompt, sequences: Sequence[Sequence[int]], twist=None,
                    chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact :math:`\log p_{LM}(s\mid s_0)` and :math:`\log q(s\mid s_0)` (twist proposal,
    :math:`q_t\propto p_{LM}\psi_\theta`; equals p when ``twist`` is None) in float64.

    ``sequences`` are continuations including their final EOS when they ended with one.
    """
    lm = as_adapter(lm)
    pad = 0 if lm.eos_token_id is None else int(lm.eos_token_id)
    out_p, out_q = [], []
    for i in range(0, len(sequences), chunk):
        toks, lens = _right_padded(sequences[i: i + chunk], pad)
        out = teacher_force(lm, prompt, toks.to(_device(lm)), lens, twist=twist)
        logp = out[0].to(torch.float64).cpu()
        mask = torch.arange(toks.shape[1])[None] < lens[:, None]
        lp = logp.gather(2, toks[..., None]).squeeze(2)
        out_p.append(torch.where(mask, lp, 0.0).sum(1))
        if twist is None:
            out_q.append(out_p[-1])
        else:
            logq = torch.log_softmax(logp + out[2].to(torch.float64).cpu(), -1)
            lq = logq.gather(2, toks[..., None]).squeeze(2)
            out_q.append(torch.where(mask, lq, 0.0).sum(1))
    return torch.cat(out_p), torch.cat(out_q)


def _device(lm):
    return getattr(lm, "device", torch.device("cpu"))
