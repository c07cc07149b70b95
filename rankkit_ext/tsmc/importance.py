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

**Reliability.** Every estimate carries the ESS and the PSIS diagnostic :math:`\hat k`
(:func:`psis_khat`; Vehtari, Simpson, Gelman, Yao & Gabry 2024, *Pareto smoothed importance
sampling*, JMLR 25(72), §3): the shape of a generalized Pareto distribution fitted to the
:math:`M = \lceil\min(N/5, 3\sqrt N)\rceil` largest ratios. An estimate is *decided* only
when ESS ≥ ``min_ess`` (default :data:`MIN_ESS`) and :math:`\hat k\le\min(1 - 1/\log_{10}N,
0.7)` (their sample-size-dependent threshold, §3.2.2); otherwise its ``value`` is None and
callers must print "undecided" instead of a number (:meth:`ISEstimate.headline`).

**Mixtures.** Any proposal with exact densities works: for a defensive mixture
:math:`r = \sum_j\alpha_j q_j` (:func:`mixture_log_proposal`; Hesterberg 1995, Owen & Zhou
2000) with :math:`q_0 = p^{(0)}_{LM}` and :math:`\phi\le 1` the ratios are bounded,
:math:`w\le\phi/\alpha_0\le 1/\alpha_0`. With a fixed number :math:`N_j=\alpha_jN` of draws
per component (``strata``) the balance-heuristic estimator is still unbiased for Z, and the
bootstrap (:meth:`ImportanceTarget.bootstrap_counts`) resamples within each stratum.
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

__all__ = ["ISEstimate", "ImportanceTarget", "MIN_ESS", "khat_threshold", "mixture_log_proposal",
           "psis_khat", "sample_base", "score_proposal"]


SUPPORT_RTOL = 1e-12  # weights below this fraction of the largest need no log q
# Below this effective sample size an estimate is "undecided": the first-order standard
# errors rest on too few draws to be trusted (the review's 6.2 effective draws of 4000).
MIN_ESS = 200.0


def _gpd_fit_zhang_stephens(x: np.ndarray) -> tuple[float, float]:
    r"""Generalized-Pareto shape and scale of exceedances ``x`` (> 0, sorted ascending) by
    the profile / empirical-Bayes estimator of Zhang & Stephens (2009, *Technometrics* 51),
    with PSIS's weakly informative prior on the shape (Vehtari et al. 2024, App. C).

    Parametrisation :math:`F(x) = 1-(1-\theta x)^{1/k}`, :math:`\xi = -k`: for a grid of
    :math:`m = 30+\lfloor\sqrt n\rfloor` values
    :math:`\theta_j = 1/x_{(n)} + (1-\sqrt{m/(j-1/2)})/(3x_{(\lfloor n/4+1/2\rfloor)})`, the
    profile MLE :math:`\xi(\theta) = \overline{\log(1-\theta x)}` and the profile
    log-likelihood :math:`\ell(\theta) = n(\log(-\theta/\xi(\theta)) - \xi(\theta) - 1)`;
    :math:`\hat\theta` is the posterior mean over the grid with weights
    :math:`\propto e^{\ell}`, :math:`\hat\xi = \xi(\hat\theta)`, then shrunk towards 0.5 as by a
    prior worth 10 observations: :math:`(n\hat\xi + 5)/(n + 10)`.
    """
    n = x.size
    m = 30 + int(math.sqrt(n))
    j = np.arange(1, m + 1, dtype=np.float64)
    theta = 1.0 / x[-1] + (1.0 - np.sqrt(m / (j - 0.5))) / (3.0 * x[int(n / 4 + 0.5) - 1])
    xi = np.log1p(-theta[:, None] * x[None]).mean(1)
    ell = n * (np.log(-theta / xi) - xi - 1.0)
    # posterior weights on the grid ∝ exp(ℓ), shifted by the largest so exp cannot overflow
    wts = np.exp(ell - ell.max())
    wts = wts / wts.sum()
    keep = wts >= 10 * np.finfo(float).eps  # negligible grid points only add rounding
    wts, theta = wts[keep] / wts[keep].sum(), theta[keep]
    th = float(wts @ theta)
    xi_hat = float(np.log1p(-th * x).mean())
    sigma = -xi_hat / th
    return (n * xi_hat + 10 * 0.5) / (n + 10), sigma


def psis_khat(log_w) -> float:
    r"""PSIS diagnostic :math:`\hat k` of importance log-ratios (Vehtari et al. 2024, §3).

    The :math:`M=\lceil\min(N/5, 3\sqrt N)\rceil` largest ratios, less the :math:`(M+1)`-th
    largest, are fitted by a generalized Pareto distribution
    (:func:`_gpd_fit_zhang_stephens`); :math:`\hat k` is its shape. :math:`\hat k > 0.7`:
    the estimate is unreliable (the ratios' variance, and beyond 1 their mean, may not
    exist); compare with :func:`khat_threshold`. Invariant to scaling all ratios (the
    maximum is subtracted in log space). Returns ``inf`` when fewer than 5 ratios lie above
    the threshold (too few to fit a tail: the ratios are degenerate) and needs N ≥ 10.
    """
    lw = np.asarray(log_w, dtype=np.float64).reshape(-1)
    if lw.size < 10:
        raise ValueError(f"psis_khat needs at least 10 log-ratios; got {lw.size}.")
    if np.isnan(lw).any() or (lw == np.inf).any():
        raise ValueError("psis_khat: log-ratios must be real or -inf (no NaN, no +inf).")
    if not np.isfinite(lw).any():
        raise ValueError("psis_khat: every ratio is 0 (log-ratio -inf).")
    n = lw.size
    M = int(math.ceil(min(0.2 * n, 3.0 * math.sqrt(n))))
    lw = lw - lw.max()
    srt = np.sort(lw)
    cut = max(srt[-M - 1], math.log(np.finfo(float).tiny))
    tail = srt[srt > cut]
    if tail.size <= 4:
        return math.inf
    x = np.exp(tail) - math.exp(cut)
    if x[-1] <= 0 or x[int(x.size / 4 + 0.5) - 1] <= 0:  # ties at the threshold
        return math.inf if x[-1] <= 0 else float("nan")
    return _gpd_fit_zhang_stephens(x)[0]


def khat_threshold(n: int) -> float:
    r"""PSIS's sample-size-dependent reliability threshold :math:`\min(1-1/\log_{10}N, 0.7)`
    (Vehtari et al. 2024, §3.2.2): below it the Pareto-smoothed error converges."""
    if int(n) < 2:
        raise ValueError(f"khat_threshold needs n >= 2; got {n}.")
    return float(min(1.0 - 1.0 / math.log10(n), 0.7))


def mixture_log_proposal(log_q: Sequence, alphas: Sequence[float]) -> np.ndarray:
    r""":math:`\log\sum_j\alpha_j q_j(s_i)` from the components' exact log-densities
    ``log_q`` (J arrays of N) and mixture weights ``alphas`` (J, ≥ 0, sum 1)."""
    lq = np.stack([np.asarray(a, dtype=np.float64).reshape(-1) for a in log_q])
    a = np.asarray(alphas, dtype=np.float64).reshape(-1)
    if a.size != lq.shape[0]:
        raise ValueError(f"mixture_log_proposal got {lq.shape[0]} components and {a.size} "
                         "weights; give one weight per component.")
    if (a < 0).any() or not math.isclose(float(a.sum()), 1.0, rel_tol=1e-9):
        raise ValueError(f"mixture weights must be >= 0 and sum to 1; got {a.tolist()}.")
    with np.errstate(divide="ignore"):
        return np.logaddexp.reduce(np.log(a)[:, None] + lq, 0)


@dataclass(frozen=True)
class ISEstimate:
    r"""An importance-sampling estimate, its delta-method standard error and its diagnostics.

    ``decided`` is False when the target's ESS is below ``min_ess`` or its PSIS
    :math:`\hat k` above ``khat_threshold``: then :attr:`value` is None and
    :meth:`headline` says "undecided". ``bootstrap_se`` is NaN unless a bootstrap was run.
    """

    mean: float
    stderr: float
    ess: float
    khat: float = float("nan")
    khat_threshold: float = 0.7
    min_ess: float = MIN_ESS
    decided: bool = False
    bootstrap_se: float = float("nan")

    @property
    def status(self) -> str:
        """``"decided"`` or ``"undecided"``."""
        return "decided" if self.decided else "undecided"

    @property
    def value(self) -> float | None:
        """The estimate, or None when undecided (no number may be quoted then)."""
        return self.mean if self.decided else None

    def headline(self, fmt: str = ".2f") -> str:
        """What may be printed: ``mean ± se`` (and the bootstrap SE) when decided, else
        "undecided" with the ESS and k̂ that made it so — never a number for the estimate."""
        if not self.decided:
            return (f"undecided (ESS {self.ess:.1f} < {self.min_ess:g} or k̂ {self.khat:.2f} > "
                    f"{self.khat_threshold:.2f})")
        se = f"{self.stderr:{fmt}}" + (f", bootstrap {self.bootstrap_se:{fmt}}"
                                       if math.isfinite(self.bootstrap_se) else "")
        return f"{self.mean:{fmt}} ± {se}"

    def to_json(self) -> dict:
        """``value`` / ``stderr`` / ``bootstrap_se`` are None when undecided; the raw
        numbers stay under ``raw_*`` for diagnosis, never for quoting."""
        d = self.decided
        return {"status": self.status, "value": self.value,
                "stderr": self.stderr if d else None,
                "bootstrap_se": self.bootstrap_se if d else None,
                "raw_mean": self.mean, "raw_stderr": self.stderr,
                "raw_bootstrap_se": self.bootstrap_se, "ess": self.ess, "khat": self.khat,
                "khat_threshold": self.khat_threshold, "min_ess": self.min_ess}


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
        :math:`\log r(s_i)`, the law the proposals were drawn from (for a mixture,
        :func:`mixture_log_proposal`).
    strata : int (N,), optional
        Component each proposal was drawn from when a fixed number was drawn from each
        (stratified mixture sampling); the bootstrap then resamples within strata.
    min_ess : float
        ESS below which every estimate is undecided (:data:`MIN_ESS`).
    """

    sequences: list[list[int]]
    log_target: np.ndarray
    log_proposal: np.ndarray
    strata: np.ndarray | None = None
    min_ess: float = MIN_ESS

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
        if self.strata is not None:
            self.strata = np.asarray(self.strata).reshape(-1)
            if self.strata.size != n or not np.issubdtype(self.strata.dtype, np.integer):
                raise ValueError(f"strata must hold one integer label per proposal ({n}); got "
                                 f"{self.strata.size} of dtype {self.strata.dtype}.")
        if not self.min_ess >= 0:
            raise ValueError(f"min_ess must be >= 0; got {self.min_ess}.")
        self._khat = None  # computed on first use

    @property
    def khat(self) -> float:
        r"""PSIS :math:`\hat k` of the ratios (:func:`psis_khat`); NaN (never decided) for
        fewer than 10 proposals, too few to fit a tail."""
        if self._khat is None:
            self._khat = psis_khat(self.log_w) if self.n >= 10 else float("nan")
        return self._khat

    @property
    def decided(self) -> bool:
        r"""ESS ≥ ``min_ess`` and :math:`\hat k\le` :func:`khat_threshold` (module docstring)."""
        return bool(self.ess >= self.min_ess and self.khat <= khat_threshold(self.n))

    def _est(self, mean: float, se: float, boot: float = float("nan")) -> ISEstimate:
        return ISEstimate(mean, se, self.ess, self.khat, khat_threshold(self.n), self.min_ess,
                          self.decided, boot)

    def bootstrap_counts(self, n_boot: int, generator: np.random.Generator) -> np.ndarray:
        """(n_boot, N) multiplicities of a nonparametric bootstrap of the proposals: N draws
        with replacement, or within each stratum its own count when ``strata`` is set."""
        if int(n_boot) < 2:
            raise ValueError(f"n_boot must be >= 2; got {n_boot}.")
        c = np.zeros((int(n_boot), self.n))
        groups = [np.arange(self.n)] if self.strata is None else \
            [np.nonzero(self.strata == k)[0] for k in np.unique(self.strata)]
        for idx in groups:
            c[:, idx] = generator.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size),
                                              size=int(n_boot))
        return c

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
        return self._est(val, self._se(self.n * self.weights - 1.0))

    def mean(self, values) -> ISEstimate:
        r"""Self-normalised :math:`\hat{\mathbb E}_\sigma[f] = \sum_i\bar w_i f(s_i)`."""
        f = _as_f64(values, "values", self.n)
        w = self.weights
        keep = w > 0  # f may be undefined (nan) where the target has no mass
        est = float(w[keep] @ f[keep])
        infl = np.where(keep, self.n * w * (np.where(keep, f, 0.0) - est), 0.0)
        return self._est(est, self._se(infl))

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

    def kl_sigma_q(self, log_q, n_boot: int = 0,
                   generator: np.random.Generator | None = None) -> ISEstimate:
        r""":math:`\widehat D_{KL}(\sigma\|q)` from :math:`\log q(s_i)` of every proposal
        (module docstring; the standard error includes :math:`\log\hat Z`'s). With
        ``n_boot`` > 1, also the bootstrap SE (:meth:`bootstrap_counts`)."""
        w, g = self._g(log_q)
        gbar = float(w @ g)
        lz = self.log_Z().mean
        infl = self.n * w * (g - gbar - 1.0) + 1.0
        boot = float("nan")
        if n_boot:
            c = self.bootstrap_counts(n_boot, _rng(generator))
            num, den = c @ (w * g), c @ w
            # log Ẑ* − log Ẑ = log(den / N) with w normalised: Ẑ*/Ẑ = mean of N w̄ over the
            # bootstrap sample
            boot = float(np.std(num / den - np.log(den), ddof=1))
        return self._est(gbar - lz, self._se(infl), boot)

    def kl_difference(self, log_q_a, log_q_b, n_boot: int = 0,
                      generator: np.random.Generator | None = None) -> ISEstimate:
        r""":math:`\widehat D_{KL}(\sigma\|q_a) - \widehat D_{KL}(\sigma\|q_b)
        = \sum_i\bar w_i\log\frac{q_b(s_i)}{q_a(s_i)}`, paired on the same proposals
        (:math:`\log\hat Z` cancels, so its error does not enter). With ``n_boot`` > 1,
        also the bootstrap SE of this self-normalised ratio (:meth:`bootstrap_counts`)."""
        w, ga = self._g(log_q_a)
        _, gb = self._g(log_q_b)
        d = ga - gb
        est = float(w @ d)
        boot = float("nan")
        if n_boot:
            c = self.bootstrap_counts(n_boot, _rng(generator))
            boot = float(np.std((c @ (w * d)) / (c @ w), ddof=1))
        return self._est(est, self._se(self.n * w * (d - est)), boot)

    def resample(self, n: int, generator: np.random.Generator) -> list[list[int]]:
        """``n`` multinomial draws from the weighted proposals (approximate samples of σ)."""
        idx = generator.choice(self.n, size=int(n), replace=True, p=self.weights)
        return [self.sequences[i] for i in idx.tolist()]


def _rng(generator):
    if generator is None:
        raise ValueError("a bootstrap needs an explicit numpy Generator (generator=...).")
    return generator


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
