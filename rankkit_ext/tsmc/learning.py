r"""Contrastive twist learning (CTL; Zhao et al. 2024, §4; Kim et al. 2025, eq. 5–6).

CTL minimises :math:`\mathcal L(\theta) = \sum_{t=1}^T D_{KL}(\sigma(s_{1:t})\,\|\,\pi_{t,\theta}(s_{1:t}))`
with :math:`\pi_{t,\theta}\propto p_{LM}(s_{1:t})\psi_\theta(s_{1:t})`, whose negative gradient is

.. math::
    -\nabla_\theta\mathcal L = \sum_{t=1}^T\Big\{\mathbb E_{\sigma(s_{1:t})}[\nabla_\theta\log\psi_\theta(s_{1:t})]
    - \mathbb E_{\pi_{t,\theta}(s_{1:t})}[\nabla_\theta\log\psi_\theta(s_{1:t})]\Big\}.

Positive phase: particles of one twisted SIS run weighted by their final (φ-)weights
:math:`\bar w_T^k`, or exact target samples with equal weights when available. Negative
phase: because :math:`\pi_{t,\theta}(s_t\mid s_{<t}) = q_t(s_t\mid s_{<t})`, the expectation
over :math:`s_t` is exact over the whole vocabulary,
:math:`\mathbb E_{\pi_t}[\nabla\log\psi] = \mathbb E_{\pi_t(s_{<t})}[\nabla\log Z_t(s_{<t})]`,
and :math:`\pi_t(s_{<t})` is reached with the same particles' intermediate SIS weights
:math:`\prod_{\tau<t}w_\tau\cdot Z_t/\psi_{t-1}`. Gradients flow through log ψ only; the base
LM's log-probabilities and hidden states are constants.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .adapters import as_adapter
from .potentials import Potential
from .resampling import normalize_log_weights
from .sampler import _pad, sis, teacher_force

__all__ = ["ctl_loss", "train_twist", "TwistTrainResult"]


def _twist_on(twist, h):
    K, T, H = h.shape
    return twist.log_psi(h.reshape(K * T, H)).reshape(K, T, -1)


def ctl_loss(lm, twist, potential: Potential, prompt, n_particles: int, max_new_tokens: int,
             generator: torch.Generator,
             positive_samples: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
    r"""A surrogate whose gradient is the CTL gradient estimate :math:`\widehat{\nabla\mathcal L}`.

    Parameters
    ----------
    lm, twist, potential, prompt, n_particles, max_new_tokens, generator
        As in :func:`~rankkit_ext.tsmc.sampler.tsmc`; one twisted SIS run of ``n_particles``
        supplies the negative phase (and the positive phase unless samples are given).
    positive_samples : list of continuations, optional
        Exact target samples (EOS included when they ended early), weighted equally.

    Returns
    -------
    Tensor (scalar)
        :math:`\sum_t\sum_k \bar w^{(t)}_k\log Z_t(s^k_{<t}) - \sum_k\bar w^+_k\sum_t
        \log\psi_\theta(s^k_{1:t})`; its value is not the KL, its gradient is.
    """
    lm = as_adapter(lm)
    r = sis(lm, twist, potential, prompt, n_particles, max_new_tokens, generator=generator)
    with torch.no_grad():
        logp, h = teacher_force(lm, prompt, r.tokens, r.lengths)
    logp = logp.to(torch.float64)
    K, T = r.tokens.shape
    dev = logp.device
    mask = torch.arange(T, device=dev)[None] < r.lengths.to(dev)[:, None]  # step t is alive
    lpsi = _twist_on(twist, h).to(torch.float64)
    # negative phase: log Z_t(s_<t) at every alive step, weighted by pi_t(s_<t) weights
    cum_before = torch.cumsum(r.step_log_w, 1) - r.step_log_w
    total = r.step_log_w.sum(1, keepdim=True).expand(K, T)
    neg_lw = torch.where(mask, cum_before + r.step_log_pi, total)  # finished: mass, no gradient
    wbar = normalize_log_weights(neg_lw.T)[0].exp().T  # normalise over particles at each t
    logZt = torch.logsumexp(logp + lpsi, -1)
    neg = (torch.where(mask, wbar * logZt, 0.0)).sum()
    # positive phase
    if positive_samples is None:
        w_pos = r.weights.to(dev)
        toks, pmask, lpsi_pos = r.tokens, mask, lpsi
    else:
        pad = 0 if lm.eos_token_id is None else int(lm.eos_token_id)
        toks, lens = _pad(positive_samples, pad)
        toks = toks.to(dev)
        with torch.no_grad():
            _, hp = teacher_force(lm, prompt, toks, lens)
        lpsi_pos = _twist_on(twist, hp).to(torch.float64)
        pmask = torch.arange(toks.shape[1], device=dev)[None] < lens.to(dev)[:, None]
        w_pos = torch.full((toks.shape[0],), 1.0 / toks.shape[0], dtype=torch.float64, device=dev)
    chosen = lpsi_pos.gather(2, toks[..., None]).squeeze(2)
    pos = (w_pos[:, None] * torch.where(pmask, chosen, 0.0)).sum()
    return neg - pos


@dataclass
class TwistTrainResult:
    """Loss trace of :func:`train_twist` (the twist is trained in place)."""

    losses: list[float] = field(default_factory=list)
    steps_done: int = 0


def _atomic_save(obj, path: Path):
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint


def train_twist(lm, twist, potential: Potential, prompt, *, steps: int, n_particles: int,
                max_new_tokens: int, lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0,
                positive_sampler: Callable[[torch.Generator], Sequence[Sequence[int]]] | None = None,
                checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 50,
                progress: bool = True) -> TwistTrainResult:
    """Train ``twist`` in place with CTL and AdamW; resumable from ``checkpoint_dir``.

    Each step draws one SIS batch of ``n_particles`` (Kim et al. 2025 use K = 100 in
    training). ``positive_sampler(generator)`` may return exact target samples for the
    positive phase. A checkpoint holds the twist, the optimiser, the generator state and the
    loss trace; rerunning with the same directory continues where it stopped.
    """
    from tqdm.auto import tqdm

    params = [p for p in twist.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the twist has no trainable parameters; build it with trainable=True.")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    g = torch.Generator(device=str(params[0].device)).manual_seed(seed)
    res = TwistTrainResult()
    ckpt = Path(checkpoint_dir) / "twist_ctl.pt" if checkpoint_dir is not None else None
    if ckpt is not None:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        if ckpt.exists():
            state = torch.load(ckpt, weights_only=False)
            twist.load_state_dict(state["twist"])
            opt.load_state_dict(state["opt"])
            g.set_state(state["generator"])
            res = TwistTrainResult(state["losses"], state["step"])
    bar = tqdm(range(res.steps_done, steps), disable=not progress, desc="CTL")
    for step in bar:
        pos = positive_sampler(g) if positive_sampler is not None else None
        opt.zero_grad()
        loss = ctl_loss(lm, twist, potential, prompt, n_particles, max_new_tokens, g, pos)
        loss.backward()
        opt.step()
        res.losses.append(float(loss.detach()))
        res.steps_done = step + 1
        bar.set_postfix(loss=f"{res.losses[-1]:.4g}")
        if ckpt is not None and (res.steps_done % checkpoint_every == 0 or res.steps_done == steps):
            _atomic_save({"twist": twist.state_dict(), "opt": opt.state_dict(),
                          "generator": g.get_state(), "losses": res.losses,
                          "step": res.steps_done}, ckpt)
    return res
