r"""A target σ estimated by importance sampling from a fixed proposal, and the divergences of
twisted-SMC proposals measured against it.

Kim et al. (2025, §3) compare self-distillation generations by :math:`D_{KL}(\sigma\|q_m)`
with :math:`\sigma\propto p^{(0)}_{LM}\,\phi`. If σ's samples and :math:`\log Z` come from a
run of one of the evaluated generations, that generation is scored against its own output.
Here σ is represented by N proposals :math:`s_i\sim r` that no generation produced (the base
model, :math:`r = p^{(0)}_{LM}`, drawn with :func:`sample_base`), with importance weights

.. math::
    w_i = \frac{\tilde\sigma(s_i)}{r(s_i)},\quad \tilde\sigma = p^{(0)}_{LM}\phi,\qquad
    \hat Z = \frac1N\sum_i w_i,\qquad \bar w_i = \frac{w_i}{\sum_j w_j},

(for :math:`r = p^{(0)}_{LM}`, :math:`w_i = \phi(s_i)`: App. B's rejection proposal, kept
with its weights instead of thinned by acceptance). Every generation is then measured on the
same sample, so their differences are paired:

.. math::
    \widehat{D}_{KL}(\sigma\|q) = \sum_i\bar w_i\,g_i - \log\hat Z,\qquad
    g_i = \log\tilde\sigma(s_i) - \log q(s_i).

Standard errors are by the delta method on the two sample means
:math:`(\frac1N\sum w_i g_i, \frac1N\sum w_i)`: with the influence values
:math:`\psi_i = N\bar w_i(g_i - \bar g - 1) + 1` (:math:`\bar g = \sum_i\bar w_i g_i`),
:math:`\mathrm{se}^2 = \widehat{\mathrm{Var}}(\psi)/N`; for :math:`\log\hat Z` alone
:math:`\psi_i = N\bar w_i - 1`, for a self-normalised mean of f
:math:`\psi_i = N\bar w_i(f_i - \hat f)`. These are first-order: when the effective sample
size :math:`(\sum w)^2/\sum w^2` is small they understate the error, so it is reported with
every estimate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_prompt_ids
from .adapters import as_adapter
from .engine import smc
from .proposals import TwistProposal

__all__ = ["ISEstimate", "ImportanceTarget", "sample_base", "score_proposal"]


SUPPORT_RTOL = 1e-12  # weights below this fraction of the largest need no log q


@dataclass(frozen=True)
class ISEstimate:
    """An importance-sampling estimate, its delta-method standard error and the ESS."""

    mean: float
    stderr: float
    ess: float


def _as_f64(x, name: str, n: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if n is not None and a.size != n:
        raise ValueError(f"{name} has {a.size} values for {n} proposals; give one per proposal "
                         "in the order of ImportanceTarget.sequences.")
    return a


@dataclass
class ImportanceTarget:
    r"""Weighted proposals standing for :math:`\sigma\propto\tilde\sigma` (module docstring).

    Attributes
    ----------
    sequences : list[list[int]]
        The N proposals (continuations, EOS kept where they ended with one).
    log_target : float64 (N,)
        :math:`\log\tilde\sigma(s_i) = \log p^{(0)}_{LM}(s_i) + \log\phi(s_i)` (may be -inf).
    log_proposal : float64 (N,)
        :math:`\log r(s_i)`, the law the proposals were drawn from.
    """

    sequences: list[list[int]]
    log_target: np.ndarray
    log_proposal: np.ndarray

    def __post_init__(self):
        n = len(self.sequences)
        if n < 2:
            raise ValueError(f"ImportanceTarget needs at least 2 proposals; got {n}.")
        self.log_target = _as_f64(self.log_target, "log_target", n)
        self.log_proposal = _as_f64(self.log_proposal, "log_proposal", n)
        if not np.isfinite(self.log_proposal).all():
            i = int(np.nonzero(~np.isfinite(self.log_proposal))[0][0])
            raise ValueError(f"log_proposal[{i}] = {self.log_proposal[i]}: a drawn proposal has "
                             "positive, finite probability under its own law; check the scores.")
        if np.isnan(self.log_target).any() or (self.log_target == np.inf).any():
            i = int(np.nonzero(np.isnan(self.log_target) | (self.log_target == np.inf))[0][0])
            raise ValueError(f"log_target[{i}] = {self.log_target[i]}; it must be real or -inf.")
        if not np.isfinite(self.log_target).any():
            raise ValueError("every proposal has target weight 0 (log_target = -inf): the "
                             "proposals miss σ's support; draw more or use another proposal.")

    @property
    def n(self) -> int:
        return len(self.sequences)

    @property
    def log_w(self) -> np.ndarray:
        """Unnormalised log-weights :math:`\\log\\tilde\\sigma - \\log r`."""
        return self.log_target - self.log_proposal

    @property
    def weights(self) -> np.ndarray:
        """Self-normalised weights :math:`\\bar w_i` (sum 1)."""
        lw = self.log_w
        w = np.exp(lw - lw.max())  # the shift cancels and keeps exp finite
        return w / w.sum()

    @property
    def ess(self) -> float:
        """Effective sample size :math:`(\\sum w)^2/\\sum w^2 = 1/\\sum\\bar w^2`."""
        w = self.weights
        return float(1.0 / (w @ w))

    def _se(self, influence: np.ndarray) -> float:
        return float(influence.std(ddof=1) / math.sqrt(self.n))

    def log_Z(self) -> ISEstimate:
        r""":math:`\log\hat Z = \log\frac1N\sum_i w_i` (unbiased in :math:`\hat Z`, so
        :math:`\log\hat Z` is low by about :math:`\mathrm{se}^2/2` by Jensen)."""
        lw = self.log_w
        val = float(np.logaddexp.reduce(lw) - math.log(self.n))
        return ISEstimate(val, self._se(self.n * self.weights - 1.0), self.ess)

    def mean(self, values) -> ISEstimate:
        r"""Self-normalised :math:`\hat{\mathbb E}_\sigma[f] = \sum_i\bar w_i f(s_i)`."""
        f = _as_f64(values, "values", self.n)
        w = self.weights
        keep = w > 0  # f may be undefined (nan) where the target has no mass
        est = float(w[keep] @ f[keep])
        infl = np.where(keep, self.n * w * (np.where(keep, f, 0.0) - est), 0.0)
        return ISEstimate(est, self._se(infl), self.ess)

    def support(self, rel_tol: float = SUPPORT_RTOL) -> np.ndarray:
        r"""Indices of the proposals with :math:`\bar w_i\ge` ``rel_tol`` × the largest weight.

        Only these need :math:`\log q` in :meth:`kl_sigma_q` / :meth:`kl_difference` (pass
        NaN for the others): the rest hold at most N·``rel_tol`` of the mass, and with a
        sharp potential (φ = p^β, β = 10) they are most of the pool, so scoring only the
        support saves most of the teacher forcing.
        """
        w = self.weights
        return np.nonzero(w >= rel_tol * w.max())[0]

    def _g(self, log_q) -> tuple[np.ndarray, np.ndarray]:
        lq = _as_f64(log_q, "log_q", self.n)
        w = self.weights
        keep = w > 0
        in_support = w >= SUPPORT_RTOL * w.max()
        if (in_support & np.isnan(lq)).any():
            i = int(np.nonzero(in_support & np.isnan(lq))[0][0])
            raise ValueError(f"log_q[{i}] is NaN but proposal {i} carries weight "
                             f"{w[i]:.3g}; score every index of ImportanceTarget.support().")
        keep &= ~np.isnan(lq)  # unscored proposals outside the support: their terms drop
        if (keep & ~np.isfinite(lq)).any():
            i = int(np.nonzero(keep & ~np.isfinite(lq))[0][0])
            raise ValueError(f"log_q[{i}] = {lq[i]} where σ has mass: KL(σ‖q) is infinite; "
                             "q must cover the target's support.")
        return w, np.where(keep, self.log_target - np.where(keep, lq, 0.0), 0.0)

    def kl_sigma_q(self, log_q) -> ISEstimate:
        r""":math:`\widehat D_{KL}(\sigma\|q)` from :math:`\log q(s_i)` of every proposal
        (module docstring; the standard error includes :math:`\log\hat Z`'s)."""
        w, g = self._g(log_q)
        gbar = float(w @ g)
        lz = self.log_Z().mean
        infl = self.n * w * (g - gbar - 1.0) + 1.0
        return ISEstimate(gbar - lz, self._se(infl), self.ess)

    def kl_difference(self, log_q_a, log_q_b) -> ISEstimate:
        r""":math:`\widehat D_{KL}(\sigma\|q_a) - \widehat D_{KL}(\sigma\|q_b)
        = \sum_i\bar w_i\log\frac{q_b(s_i)}{q_a(s_i)}`, paired on the same proposals
        (:math:`\log\hat Z` cancels, so its error does not enter)."""
        w, ga = self._g(log_q_a)
        _, gb = self._g(log_q_b)
        d = ga - gb
        est = float(w @ d)
        return ISEstimate(est, self._se(self.n * w * (d - est)), self.ess)

    def resample(self, n: int, generator: np.random.Generator) -> list[list[int]]:
        """``n`` multinomial draws from the weighted proposals (approximate samples of σ)."""
        idx = generator.choice(self.n, size=int(n), replace=True, p=self.weights)
        return [self.sequences[i] for i in idx.tolist()]


@torch.no_grad()
def sample_base(lm, prompt, n: int, max_new_tokens: int, generator: torch.Generator,
                batch_size: int = 1000, eos_token_id: int | None = -1,
                ) -> tuple[list[list[int]], np.ndarray]:
    r"""``n`` i.i.d. continuations :math:`s\sim p_{LM}(\cdot\mid s_0)` and their
    :math:`\log p_{LM}(s\mid s_0)` (float64, EOS included), in batches of ``batch_size``.

    The proposal of App. B (Kim et al. 2025) and of :class:`ImportanceTarget` with
    ``log_proposal = log_p``. Sequences keep their EOS.
    """
    if int(n) < 1 or int(batch_size) < 1:
        raise ValueError(f"n and batch_size must be >= 1; got n={n}, batch_size={batch_size}.")
    lm = as_adapter(lm)
    prompt = check_prompt_ids(prompt, lm.vocab_size)
    eos = lm.eos_token_id if eos_token_id == -1 else eos_token_id
    seqs: list[list[int]] = []
    lps: list[np.ndarray] = []
    while len(seqs) < n:
        b = min(int(batch_size), int(n) - len(seqs))
        run = smc(lm, TwistProposal(None), [prompt], b, int(max_new_tokens),
                  generator=generator, eos_token_id=eos,
                  pad_token_id=0 if eos is None else int(eos), track_ess=False)
        seqs += [run.tokens[k, : int(run.lengths[k])].tolist() for k in range(b)]
        lps.append(run.step_log_p.sum(1).cpu().numpy())
    return seqs, np.concatenate(lps)


def score_proposal(lm, twist, prompt, sequences: Sequence[Sequence[int]],
                   chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """:math:`(\\log p_{LM}(s), \\log q(s))` of each continuation (EOS kept) under the
    adapter and twist (:func:`~rankkit_ext.tsmc.sampler.score_sequences`), computed once per
    distinct sequence: the proposals of a small model repeat often."""
    from .sampler import score_sequences

    uniq: dict[tuple[int, ...], int] = {}
    for s in sequences:
        uniq.setdefault(tuple(s), len(uniq))
    keys = [list(k) for k in uniq]
    lp, lq = score_sequences(lm, prompt, keys, twist, chunk=chunk)
    idx = np.array([uniq[tuple(s)] for s in sequences])
    return lp.numpy()[idx], lq.numpy()[idx]
