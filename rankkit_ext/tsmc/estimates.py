r"""Estimates of log Z and of the KL divergences between twisted SMC's proposal and its target.

Following Zhao et al. (2024, §5–7): for any proposal, :math:`\mathbb E[\hat Z] = Z`, so by
Jensen :math:`\mathbb E[\log\hat Z]\le\log Z` for SIS (the IWAE bound) and for SMC. With
exact target samples :math:`s^*\sim\sigma` one particle can be clamped to :math:`s^*`
(conditional SMC, or SIS with the reference as one of K importance samples), and then
:math:`\mathbb E[\log\hat Z]\ge\log Z`. The KL divergences are

.. math::
    D_{KL}(\sigma\|q) = \mathbb E_\sigma\Big[\log\frac{p_{LM}(s)\phi(s)}{q(s)}\Big] - \log Z,\qquad
    D_{KL}(q\|\sigma) = \mathbb E_q\Big[\log\frac{q(s)}{p_{LM}(s)\phi(s)}\Big] + \log Z,

estimated by Monte Carlo with a value (or bound) of :math:`\log Z` plugged in
(Kim et al. 2025, §3 report :math:`D_{KL}(\sigma\|q)`). The diversity metric of the same
papers (mean pairwise cosine similarity) is :func:`rankkit_ext.metrics.similarity`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .adapters import as_adapter
from .potentials import Potential
from .sampler import score_sequences, tsmc

__all__ = ["Estimate", "log_z_lower_bound", "log_z_upper_bound", "kl_sigma_q", "kl_q_sigma"]


@dataclass
class Estimate:
    """A Monte Carlo mean with its standard error and the per-run values."""

    mean: float
    stderr: float
    values: np.ndarray

    @classmethod
    def of(cls, values) -> Estimate:
        v = np.asarray(values, dtype=np.float64)
        se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.inf
        return cls(float(v.mean()), se, v)


def log_z_lower_bound(lm, twist, potential: Potential, prompt, n_particles: int,
                      max_new_tokens: int, n_runs: int, generator: torch.Generator,
                      resample: str = "systematic", ess_threshold: float = 0.0,
                      **kw) -> Estimate:
    r""":math:`\mathbb E[\log\hat Z]\le\log Z`: the SIS/IWAE bound (``ess_threshold=0``) or the
    SMC bound (``ess_threshold > 0``), averaged over ``n_runs`` independent runs."""
    vals = [tsmc(lm, twist, potential, prompt, n_particles, max_new_tokens, resample=resample,
                 ess_threshold=ess_threshold, generator=generator, **kw).log_Z
            for _ in range(n_runs)]
    return Estimate.of(vals)


def log_z_upper_bound(lm, twist, potential: Potential, prompt, n_particles: int,
                      max_new_tokens: int, target_samples: Sequence[Sequence[int]],
                      generator: torch.Generator, ess_threshold: float = 0.0, **kw) -> Estimate:
    r""":math:`\mathbb E_{s^*\sim\sigma}\mathbb E[\log\hat Z\mid s^*]\ge\log Z`: one run per exact
    target sample with particle 0 clamped to it. ``ess_threshold=0`` gives the IWAE upper
    bound, ``> 0`` the SMC upper bound (conditional SMC, multinomial resampling).

    ``target_samples`` are continuations including their EOS when they ended early.
    """
    vals = [tsmc(lm, twist, potential, prompt, n_particles, max_new_tokens,
                 resample="multinomial", ess_threshold=ess_threshold, generator=generator,
                 reference=s, **kw).log_Z
            for s in target_samples]
    return Estimate.of(vals)


def _strip(seqs, eos):
    return [list(s[:-1]) if eos is not None and len(s) and s[-1] == eos else list(s)
            for s in seqs]


def kl_sigma_q(lm, twist, potential: Potential, prompt, target_samples: Sequence[Sequence[int]],
               log_Z: float) -> Estimate:
    r""":math:`\widehat{D}_{KL}(\sigma\|q)` from exact target samples; passing a lower bound of
    :math:`\log Z` gives an upper estimate of the divergence."""
    lm = as_adapter(lm)
    lp, lq = score_sequences(lm, prompt, target_samples, twist)
    lphi = potential.log_phi(_strip(target_samples, lm.eos_token_id))
    return Estimate.of((lp + lphi - lq - log_Z).numpy())


def kl_q_sigma(lm, twist, potential: Potential, prompt, n_samples: int, max_new_tokens: int,
               log_Z: float, generator: torch.Generator) -> Estimate:
    r""":math:`\widehat{D}_{KL}(q\|\sigma)` from proposal samples (SIS particles are i.i.d. q)."""
    lm = as_adapter(lm)
    r = tsmc(lm, twist, potential, prompt, n_samples, max_new_tokens, ess_threshold=0.0,
             generator=generator)
    seqs = r.sequences(strip_eos=False)
    lp, lq = score_sequences(lm, prompt, seqs, twist)
    return Estimate.of((lq - lp - r.log_phi.cpu() + log_Z).numpy())
