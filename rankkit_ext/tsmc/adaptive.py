r"""An adaptive defensive-mixture proposal for a target :math:`\sigma\propto\tilde\sigma`
by the cross-entropy method / population Monte Carlo (Rubinstein 1999; Cappé, Guillin,
Marin & Robert 2004), for :class:`~rankkit_ext.tsmc.ImportanceTarget`.

**Family.** A token tilt of the base model, :math:`q_b(s_t\mid s_{<t})\propto
p_{LM}(s_t\mid s_{<t})\,e^{b_{s_t}}` (a :class:`~rankkit_ext.tsmc.LinearTwist` with
:math:`W = 0`), with :math:`b_v` free only on a token ``mask`` and 0 elsewhere, so the relative
probabilities of the unmasked tokens stay those of :math:`p_{LM}`.

**Rounds.** Round r draws :math:`n_r` proposals from the defensive mixture
:math:`r_r = \alpha_0 p_{LM} + (1-\alpha_0) q_{b_r}` (exactly :math:`\mathrm{round}(\alpha_0
n_r)` from :math:`p_{LM}`, the rest from :math:`q_{b_r}`, so the mixture weights are the
strata's shares), computes the exact weights :math:`w_i = \tilde\sigma(s_i)/r_r(s_i)`
(both densities by teacher forcing) and fits :math:`b_{r+1}` by weighted maximum likelihood,

.. math::
    b_{r+1} = \arg\max_b \sum_i w_i \log q_b(s_i)

(stochastic gradient: minibatches drawn :math:`\propto w_i`, Adam, warm-started at
:math:`b_r`; the cross-entropy step, which minimises an IS estimate of
:math:`D_{KL}(\sigma\|q_b)`). Since :math:`p_{LM}` stays in every mixture,
:math:`w\le\tilde\sigma/(\alpha_0 p_{LM})`, i.e. :math:`w\le\phi/\alpha_0` for
:math:`\tilde\sigma = p_{LM}\phi`.

**The final sample** is a fresh draw of ``n_final`` from :math:`r_R` after the last fit, not
the pooled rounds with deterministic-mixture (AMIS) weights (Cornuet, Marin, Mira & Robert
2012): conditionally on the earlier rounds :math:`r_R` is a fixed proposal, so the final
sample is ordinary stratified defensive-mixture importance sampling, :math:`\hat Z` is
unbiased and the stratified bootstrap of :class:`~rankkit_ext.tsmc.ImportanceTarget` applies; AMIS's reuse of
draws whose proposals were fitted on those same draws is consistent only under extra
conditions (Marin, Pudlo & Sedki 2019) and would need every draw scored under every
component. The rounds' diagnostics (N, ESS, ESS/N, PSIS k̂, log Ẑ) are kept to show how the
ESS was reached. No weight is clipped; k̂ is a diagnostic only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .adapters import as_adapter
from .importance import psis_khat, sample_base, score_proposal
from .potentials import FunctionPotential
from .sampler import _right_padded, teacher_force, tsmc
from .twists import LinearTwist

__all__ = ["AdaptiveMixture", "adaptive_tilt_mixture", "fit_token_tilt"]


def fit_token_tilt(lm, twist: LinearTwist, prompt, sequences: Sequence[Sequence[int]], weights,
                   *, mask=None, steps: int = 50, lr: float = 0.05, batch_size: int = 32,
                   seed: int = 0) -> LinearTwist:
    r"""A copy of ``twist`` whose bias maximises :math:`\sum_i w_i\log q_b(s_i)` (module
    docstring), only the entries where ``mask`` (V,) is nonzero trained; W stays as it is."""
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    if w.numel() != len(sequences) or not torch.isfinite(w).all() or (w < 0).any() \
            or w.sum() <= 0:
        raise ValueError(f"fit_token_tilt: weights must be {len(sequences)} finite values >= 0 "
                         "with a positive sum, one per sequence.")
    lm = as_adapter(lm)
    tw = copy.deepcopy(twist).train()
    tw.proj.weight.requires_grad_(False)
    tw.proj.bias.requires_grad_(True)
    m = None if mask is None else torch.as_tensor(mask, dtype=tw.proj.bias.dtype).reshape(-1)
    opt = torch.optim.Adam([tw.proj.bias], lr=lr)
    pad = 0 if lm.eos_token_id is None else int(lm.eos_token_id)
    toks, lens = _right_padded(sequences, pad)
    g = torch.Generator().manual_seed(int(seed))
    for _ in range(int(steps)):
        idx = torch.multinomial(w, int(batch_size), replacement=True, generator=g)
        tk, ln = toks[idx], lens[idx]
        with torch.no_grad():  # the base model is fixed: only the bias learns
            logp, h = teacher_force(lm, prompt, tk, ln)
        lpsi = tw.sequence_log_psi(prompt, tk, h)
        lq = torch.log_softmax(logp.to(lpsi.dtype) + lpsi, -1).gather(2, tk[..., None])[..., 0]
        valid = torch.arange(tk.shape[1])[None] < ln[:, None]
        loss = -torch.where(valid, lq, 0.0).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        if m is not None:  # Adam leaves an entry with an all-zero gradient where it is
            tw.proj.bias.grad.mul_(m)
        opt.step()
    tw.proj.bias.requires_grad_(False)
    return tw.eval()


@dataclass
class AdaptiveMixture:
    """The final stratified sample of :func:`adaptive_tilt_mixture` and the rounds' record.

    ``log_c`` (2, N): log p_LM and log q of every final draw; ``alphas``: the strata's
    shares; ``log_proposal``: log of the mixture density; ``log_target``: log σ̃;
    ``rounds``: per round (the last one is the final sample) n, ess, ess_per_n, khat, log_Z.
    """

    sequences: list[list[int]]
    strata: np.ndarray
    log_c: np.ndarray
    alphas: np.ndarray
    log_proposal: np.ndarray
    log_target: np.ndarray
    twist: LinearTwist
    rounds: list[dict] = field(default_factory=list)


def _draw_mixture(lm, tw, prompt, n, alpha0, T, generator, chunk):
    n0 = int(round(alpha0 * n))
    seqs = sample_base(lm, prompt, n0, T, generator, batch_size=32)[0] if n0 else []
    flat = FunctionPotential(lambda s: 0.0)  # draws of the proposal alone: no weights needed
    while len(seqs) < n:
        b = min(32, n - len(seqs))
        seqs += tsmc(lm, tw, flat, prompt, b, T, ess_threshold=0.0,
                     generator=generator).sequences(strip_eos=False)
    strata = np.array([0] * n0 + [1] * (n - n0))
    # one teacher-forced pass gives both exact log-densities of every draw
    lp, lq = score_proposal(lm, tw, prompt, seqs, chunk=chunk)
    alphas = np.array([n0 / n, (n - n0) / n])
    with np.errstate(divide="ignore"):
        lmix = np.logaddexp(np.log(alphas[0]) + lp, np.log(alphas[1]) + lq)
    return seqs, strata, np.stack([lp, lq]), alphas, lmix


def _diag(log_w: np.ndarray) -> dict:
    w = np.exp(log_w - log_w.max())
    ess = float(w.sum() ** 2 / (w @ w))
    n = log_w.size
    return {"n": int(n), "ess": ess, "ess_per_n": ess / n,
            "khat": float(psis_khat(log_w)) if n >= 10 else float("nan"),
            "log_Z": float(np.logaddexp.reduce(log_w) - np.log(n))}


def adaptive_tilt_mixture(lm, prompt, log_target: Callable, twist0: LinearTwist,
                          max_new_tokens: int, generator: torch.Generator, *, rounds: int,
                          n_round: int, n_final: int, alpha0: float = 0.2, mask=None,
                          steps: int = 50, lr: float = 0.05, batch_size: int = 32,
                          seed: int = 0, chunk: int = 32, progress: bool = False
                          ) -> AdaptiveMixture:
    r"""``rounds`` cross-entropy fits of the tilt (module docstring), then ``n_final`` fresh
    draws from :math:`\alpha_0 p_{LM} + (1-\alpha_0)q_{b_R}`.

    ``log_target(sequences, log_p)`` returns :math:`\log\tilde\sigma` of the draws given
    their exact :math:`\log p_{LM}` (e.g. ``log_p + β log p(toxic|s)``). ``twist0`` is the
    first round's tilt (round 0 draws from :math:`\alpha_0 p_{LM} + (1-\alpha_0)q_{b_0}`).
    """
    if not 0.0 < alpha0 < 1.0:
        raise ValueError(f"alpha0 must lie in (0, 1) (a defensive share); got {alpha0}.")
    if int(rounds) < 0 or int(n_round) < 10 or int(n_final) < 10:
        raise ValueError(f"need rounds >= 0, n_round >= 10, n_final >= 10; got {rounds}, "
                         f"{n_round}, {n_final}.")
    T = int(max_new_tokens)
    lm = as_adapter(lm)
    tw = copy.deepcopy(twist0).eval()
    record = []
    for r in range(int(rounds) + 1):
        n = int(n_final) if r == int(rounds) else int(n_round)
        seqs, strata, log_c, alphas, lmix = _draw_mixture(lm, tw, prompt, n, alpha0, T,
                                                          generator, chunk)
        lt = np.asarray(log_target(seqs, log_c[0]), dtype=np.float64)
        lw = lt - lmix
        record.append({"round": r, "final": r == int(rounds), **_diag(lw)})
        if progress:
            print(f"  IS round {r}: {record[-1]}", flush=True)
        if r == int(rounds):
            return AdaptiveMixture(seqs, strata, log_c, alphas, lmix, lt, tw, record)
        tw = fit_token_tilt(lm, tw, prompt, seqs, np.exp(lw - lw.max()), mask=mask,
                            steps=steps, lr=lr, batch_size=batch_size, seed=seed + r)
    raise AssertionError("unreachable")
