r"""An adaptive defensive-mixture proposal for a target :math:`\sigma\propto\tilde\sigma`
by the cross-entropy method / population Monte Carlo (Rubinstein 1999; Cappé, Guillin,
Marin & Robert 2004), for :class:`~rankkit_ext.tsmc.ImportanceTarget`.

**Family.** A token tilt of the base model, :math:`q_b(s_t\mid s_{<t})\propto
p_{LM}(s_t\mid s_{<t})\,e^{b_{s_t}}` (a :class:`~rankkit_ext.tsmc.LinearTwist` with
:math:`W = 0`), with :math:`b_v` free only on a token ``mask`` and 0 elsewhere, so the relative
probabilities of the unmasked tokens stay those of :math:`p_{LM}`.

**Rounds.** Round r draws :math:`n_r` proposals from the defensive mixture of
:math:`p_{LM}` and *every* tilt fitted so far,

.. math::
    r_r = \alpha_0 p_{LM} + \sum_{j=0}^{r}\alpha_{r,j}\, q_{b_j},

stratified: exactly :math:`n_{r,0} = \mathrm{round}(\alpha_0 n_r)` draws from
:math:`p_{LM}` and the rest split evenly over the tilts
(:func:`~rankkit_ext.tsmc.adaptive.stratum_counts`), so the mixture weights are the strata's
shares :math:`\alpha_{r,j} = n_{r,j}/n_r`. Every draw is scored under every component by one
teacher-forced pass of the base (:func:`~rankkit_ext.tsmc.adaptive.score_tilts`), and its
weight is exact, :math:`w_i = \tilde\sigma(s_i)/r_r(s_i)` with :math:`r_r` the
actual mixture density. The next tilt is fitted by weighted maximum likelihood on the draws
of *all* rounds so far, each with its own round's exact weight (``pool``),

.. math::
    b_{r+1} = \arg\max_b \sum_{r'\le r}\sum_{i\in r'} w_i \log q_b(s_i)

(full-batch Adam, warm-started at :math:`b_r`, draws below ``prune_rtol`` of the largest
weight dropped; the cross-entropy step, which minimises an IS estimate of
:math:`D_{KL}(\sigma\|q_b)`; every round's weights are unbiased for the same measure
:math:`\tilde\sigma`, so pooling them is a plain larger sample for the fit). A fit can
never *replace* a better tilt: the earlier tilts stay in the mixture, and a poor new one
only takes its share. Since :math:`p_{LM}` stays in every mixture,
:math:`w\le\tilde\sigma/(\alpha_0 p_{LM})`, i.e. :math:`w\le\phi/\alpha_0` for
:math:`\tilde\sigma = p_{LM}\phi`. (``keep_all=False, pool=False`` gives the earlier
scheme: the latest tilt alone beside :math:`p_{LM}`, fitted on the latest round by
:func:`~rankkit_ext.tsmc.adaptive.fit_token_tilt`; measured unstable on the toxic-story
target, one seed's last fit losing most of the earlier rounds' gain.)

**The final sample** is a fresh draw of ``n_final`` from :math:`r_R` after the last fit, not
the pooled rounds with deterministic-mixture (AMIS) weights (Cornuet, Marin, Mira & Robert
2012). The tilts :math:`b_0,\dots,b_R` are functions of the earlier rounds only, so
conditionally on those rounds :math:`r_R` is a fixed density and the final draws are
independent of it: with :math:`n_j` i.i.d. draws from component :math:`c_j`,

.. math::
    \mathbb E\Big[\frac1N\sum_{i=1}^N\frac{\tilde\sigma(s_i)}{r_R(s_i)}\Big]
    = \sum_j\frac{n_j}{N}\int c_j\,\frac{\tilde\sigma}{r_R}
    = \int\tilde\sigma\,\frac{\sum_j\alpha_j c_j}{r_R} = Z,

the stratified defensive-mixture (balance-heuristic) estimator of Hesterberg (1995), Owen &
Zhou (2000): :math:`\hat Z` is unbiased and the stratified bootstrap of
:class:`~rankkit_ext.tsmc.ImportanceTarget` applies. AMIS's reuse of draws whose proposals
were fitted on those same draws is consistent only under extra conditions (Marin, Pudlo &
Sedki 2019). The rounds' diagnostics (N, counts, ESS, ESS/N, PSIS k̂, log Ẑ, the pool's
size) are kept to show how the ESS was reached. No weight is clipped; k̂ is a diagnostic
only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .adapters import as_adapter
from .importance import mixture_log_proposal, psis_khat, sample_base
from .potentials import FunctionPotential
from .sampler import _right_padded, teacher_force, tsmc
from .twists import LinearTwist

__all__ = ["AdaptiveMixture", "adaptive_tilt_mixture", "final_sample_size", "fit_token_tilt",
           "score_tilts", "stratum_counts"]


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


def _bias(twist: LinearTwist) -> torch.Tensor:
    """The float64 bias b (V,) of a token tilt; refuses a twist with W ≠ 0 (not a tilt)."""
    if bool((twist.proj.weight != 0).any()):
        raise ValueError("a token tilt is a LinearTwist with W = 0; this one has W != 0.")
    return twist.proj.bias.detach().to(torch.float64).cpu()


def score_tilts(lm, prompt, sequences: Sequence[Sequence[int]], biases, chunk: int = 32
                ) -> np.ndarray:
    r"""Exact log-densities, float64, shape (1 + J, N): row 0 is :math:`\log p_{LM}(s_i)`,
    row j the token tilt :math:`\log q_{b_j}(s_i) = \sum_t [\log p_{LM}(s_t\mid s_{<t})
    + b_{j,s_t} - \log\sum_v p_{LM}(v\mid s_{<t}) e^{b_{j,v}}]` for each bias (V,) in
    ``biases`` — one teacher-forced pass of the base per distinct sequence serves every
    component (EOS kept, as in :func:`~rankkit_ext.tsmc.score_proposal`)."""
    return _score(lm, prompt, sequences, biases, None, chunk)[0]


@torch.no_grad()
def _score(lm, prompt, sequences, biases, mask_idx, chunk):
    """:func:`~rankkit_ext.tsmc.adaptive.score_tilts`, and with ``mask_idx`` also the
    :class:`_TiltFeatures` of the sequences from the same teacher-forced pass."""
    lm = as_adapter(lm)
    bs = [torch.as_tensor(np.asarray(b, dtype=np.float64)).reshape(-1) for b in biases]
    uniq: dict[tuple[int, ...], int] = {}
    for sq in sequences:
        uniq.setdefault(tuple(sq), len(uniq))
    keys = [list(k) for k in uniq]
    pad = 0 if lm.eos_token_id is None else int(lm.eos_token_id)
    dev = getattr(lm, "device", torch.device("cpu"))
    feats = None if mask_idx is None else _TiltFeatures(int(lm.vocab_size), mask_idx, len(keys),
                                                        max(1, max(len(k) for k in keys)))
    out = np.empty((1 + len(bs), len(keys)))
    for i in range(0, len(keys), int(chunk)):
        toks, lens = _right_padded(keys[i: i + int(chunk)], pad)
        logp = teacher_force(lm, prompt, toks.to(dev), lens)[0].to(torch.float64).cpu()
        valid = torch.arange(toks.shape[1])[None] < lens[:, None]
        lp = logp.gather(2, toks[..., None])[..., 0]
        out[0, i: i + len(toks)] = torch.where(valid, lp, 0.0).sum(1).numpy()
        for j, b in enumerate(bs):
            lq = lp + b[toks] - torch.logsumexp(logp + b, -1)
            out[1 + j, i: i + len(toks)] = torch.where(valid, lq, 0.0).sum(1).numpy()
        if feats is not None:
            feats.fill(slice(i, i + len(toks)), toks, lens, logp)
    idx = np.array([uniq[tuple(sq)] for sq in sequences], dtype=np.int64)
    return out[:, idx], (None if feats is None else feats.take(idx))


def stratum_counts(n: int, alpha0: float, n_tilts: int) -> np.ndarray:
    """Draws per component: round(α_0 n) from p_LM, the rest split as evenly as possible over
    the ``n_tilts`` tilts (earlier tilts get the remainder); every tilt gets at least one."""
    n0 = int(round(float(alpha0) * int(n)))
    rest = int(n) - n0
    if int(n_tilts) < 1 or rest < int(n_tilts):
        raise ValueError(f"need n_tilts >= 1 and at least one draw per tilt; got n={n}, "
                         f"alpha0={alpha0}, n_tilts={n_tilts}.")
    c = np.full(int(n_tilts), rest // int(n_tilts), dtype=np.int64)
    c[: rest % int(n_tilts)] += 1
    return np.concatenate([[n0], c])


class _TiltFeatures:
    r"""What the weighted likelihood of a masked tilt needs of each draw, so that a fit never
    runs the base LM again: :math:`\log q_b(s) = \log p(s) + \sum_t [b_{s_t} - \log(
    R_t + \sum_{v\in M} p_t(v) e^{b_v})]` with :math:`R_t = \sum_{v\notin M} p_t(v)`
    (b = 0 off the mask M); ``log_pm`` (N, T, |M|) float32, the rest float64."""

    def __init__(self, vocab_size: int, mask_idx: torch.Tensor, n: int, T: int):
        self.mask_idx = torch.as_tensor(mask_idx, dtype=torch.long).reshape(-1)
        M = int(self.mask_idx.numel())
        self.pos = torch.full((int(vocab_size),), M, dtype=torch.long)  # M: not in the mask
        self.pos[self.mask_idx] = torch.arange(M)
        self.off = torch.ones(int(vocab_size), dtype=torch.bool)
        self.off[self.mask_idx] = False
        self.log_pm = torch.empty((n, T, M), dtype=torch.float32)
        self.log_rest = torch.full((n, T), -math.inf, dtype=torch.float64)
        self.chosen = torch.full((n, T), M, dtype=torch.long)
        self.valid = torch.zeros((n, T), dtype=torch.bool)

    def fill(self, sl: slice, toks, lens, logp):
        L = toks.shape[1]
        self.log_pm[sl, :L] = logp[..., self.mask_idx].float()
        if bool(self.off.any()):
            self.log_rest[sl, :L] = torch.logsumexp(logp[..., self.off], -1)
        valid = torch.arange(L)[None] < lens[:, None]
        self.valid[sl, :L] = valid
        self.chosen[sl, :L] = torch.where(valid, self.pos[toks], int(self.mask_idx.numel()))

    def take(self, idx) -> _TiltFeatures:
        out = copy.copy(self)
        idx = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        for k in ("log_pm", "log_rest", "chosen", "valid"):
            setattr(out, k, getattr(self, k)[idx])
        return out

    @staticmethod
    def cat(parts: Sequence[_TiltFeatures]) -> _TiltFeatures:
        T = max(p.valid.shape[1] for p in parts)
        out = copy.copy(parts[0])
        M = int(out.mask_idx.numel())
        pads = {"log_pm": 0.0, "log_rest": -math.inf, "chosen": M, "valid": False}
        for k, v in pads.items():
            xs = []
            for p in parts:
                x = getattr(p, k)
                if x.shape[1] < T:
                    shape = (x.shape[0], T - x.shape[1]) + tuple(x.shape[2:])
                    x = torch.cat([x, torch.full(shape, v, dtype=x.dtype)], 1)
                xs.append(x)
            setattr(out, k, torch.cat(xs))
        return out

    def log_lik(self, bm: torch.Tensor) -> torch.Tensor:
        """:math:`\\log q_b(s_i) - \\log p(s_i)` (N,) for the mask's biases ``bm`` (|M|,)."""
        lz = torch.logaddexp(self.log_rest.to(bm.dtype),
                             torch.logsumexp(self.log_pm.to(bm.dtype) + bm, -1))
        b_ext = torch.cat([bm, bm.new_zeros(1)])
        return torch.where(self.valid, b_ext[self.chosen] - lz, 0.0).sum(1)


def _fit_pooled(feats: _TiltFeatures, w: np.ndarray, bm0: torch.Tensor, steps: int,
                lr: float) -> torch.Tensor:
    """Full-batch Adam on :math:`-\\sum_i w_i \\log q_b(s_i) / \\sum_i w_i` from ``bm0``."""
    wt = torch.as_tensor(w / w.sum(), dtype=torch.float32)
    bm = bm0.clone().float().requires_grad_(True)
    opt = torch.optim.Adam([bm], lr=lr)
    for _ in range(int(steps)):
        loss = -(wt * feats.log_lik(bm)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return bm.detach().to(torch.float64)


@dataclass
class AdaptiveMixture:
    """The final stratified sample of
    :func:`~rankkit_ext.tsmc.adaptive.adaptive_tilt_mixture` and the rounds' record.

    ``log_c`` (1 + J, N): log p_LM and log q_{b_j} of every final draw under every
    component; ``alphas`` (1 + J,): the strata's shares (the exact mixture weights);
    ``strata`` (N,): each draw's component; ``log_proposal``: log of the mixture density
    :math:`\\log\\sum_j\\alpha_j c_j`; ``log_target``: log σ̃; ``twists``: the J tilts in
    component order (``twist``: the last fitted); ``rounds``: per round (the last one is the
    final sample) n, the components' counts, ess, ess_per_n, khat, log_Z.
    """

    sequences: list[list[int]]
    strata: np.ndarray
    log_c: np.ndarray
    alphas: np.ndarray
    log_proposal: np.ndarray
    log_target: np.ndarray
    twist: LinearTwist
    twists: list[LinearTwist] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)


def _tilt(template: LinearTwist, bias: torch.Tensor) -> LinearTwist:
    tw = copy.deepcopy(template).eval().requires_grad_(False)  # a fixed proposal
    with torch.no_grad():
        tw.proj.bias.copy_(bias.to(tw.proj.bias.dtype))
    return tw


def _draw_mixture(lm, tilts, prompt, counts, T, generator, chunk, mask_idx=None):
    """``counts[0]`` draws of p_LM, ``counts[j]`` of tilt j, each scored under every
    component; returns the draws, their strata, log_c (1 + J, N), alphas and log r."""
    seqs = sample_base(lm, prompt, int(counts[0]), T, generator, batch_size=32)[0] \
        if counts[0] else []
    flat = FunctionPotential(lambda s: 0.0)  # draws of the proposal alone: no weights needed
    for tw, c in zip(tilts, counts[1:], strict=True):
        got = 0
        while got < int(c):
            b = min(32, int(c) - got)
            seqs += tsmc(lm, tw, flat, prompt, b, T, ess_threshold=0.0,
                         generator=generator).sequences(strip_eos=False)
            got += b
    n = int(np.sum(counts))
    strata = np.repeat(np.arange(len(counts)), counts)
    log_c, feats = _score(lm, prompt, seqs, [_bias(tw) for tw in tilts], mask_idx, chunk)
    alphas = np.asarray(counts, dtype=np.float64) / n
    return seqs, strata, log_c, alphas, mixture_log_proposal(log_c, alphas), feats


def final_sample_size(record: Sequence[dict], n_final: int, target_ess: float | None,
                      n_final_max: int | None) -> int:
    """``n_final``, or with ``target_ess`` the size at which the last adaptive round's ESS/N
    (``record[-1]["ess_per_n"]``) would give ``target_ess``, between ``n_final`` and
    ``n_final_max`` (:func:`~rankkit_ext.tsmc.adaptive.adaptive_tilt_mixture`)."""
    n = int(n_final)
    if target_ess is None or not record:
        return n
    hi = n if n_final_max is None else max(n, int(n_final_max))
    need = math.ceil(float(target_ess) / max(float(record[-1]["ess_per_n"]), 1e-12))
    return int(min(max(n, need), hi))


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
                          seed: int = 0, chunk: int = 32, keep_all: bool = True,
                          pool: bool = True, prune_rtol: float = 1e-6,
                          target_ess: float | None = None, n_final_max: int | None = None,
                          progress: bool = False) -> AdaptiveMixture:
    r"""``rounds`` cross-entropy fits of the tilt (module docstring), then ``n_final`` fresh
    draws from the defensive mixture.

    ``log_target(sequences, log_p)`` returns :math:`\log\tilde\sigma` of the draws given
    their exact :math:`\log p_{LM}` (e.g. ``log_p + β log p(toxic|s)``). ``twist0`` is the
    first round's tilt (a :class:`~rankkit_ext.tsmc.LinearTwist` with W = 0).

    ``keep_all`` (default): round r's proposal is :math:`\alpha_0 p_{LM} + \sum_{j\le r}
    \alpha_j q_{b_j}` with the tilts sharing :math:`1-\alpha_0` evenly
    (:func:`~rankkit_ext.tsmc.adaptive.stratum_counts`), every draw scored under every
    component (:func:`~rankkit_ext.tsmc.adaptive.score_tilts`); otherwise only the latest tilt
    (the earlier method). ``pool``
    (default): :math:`b_{r+1}` maximises :math:`\sum_i w_i\log q_b(s_i)` over the draws of
    *all* rounds so far, each with its own round's exact weight
    :math:`w_i = \tilde\sigma(s_i)/r_{r(i)}(s_i)` (draws with :math:`w_i <` ``prune_rtol``
    · max w dropped), by ``steps`` full-batch Adam steps at ``lr`` from :math:`b_r`;
    otherwise :func:`~rankkit_ext.tsmc.adaptive.fit_token_tilt` on the last round
    (minibatches of ``batch_size``).

    ``target_ess``: the final sample's size is sized from the *earlier* rounds only,
    :math:`N = \min(\max(n_{final}, \lceil \mathrm{target\_ess} / (\mathrm{ESS}/N)_{R-1}
    \rceil), n_{final,max})` with :math:`(\mathrm{ESS}/N)_{R-1}` the last adaptive round's
    (:func:`~rankkit_ext.tsmc.adaptive.final_sample_size`); a function of the earlier rounds,
    so the final draws are still a fixed design given them (no stopping rule on their own weights).
    """
    if not 0.0 < alpha0 < 1.0:
        raise ValueError(f"alpha0 must lie in (0, 1) (a defensive share); got {alpha0}.")
    if int(rounds) < 0 or int(n_round) < 10 or int(n_final) < 10:
        raise ValueError(f"need rounds >= 0, n_round >= 10, n_final >= 10; got {rounds}, "
                         f"{n_round}, {n_final}.")
    T = int(max_new_tokens)
    lm = as_adapter(lm)
    tilts = [_tilt(twist0, _bias(twist0))]
    V = int(tilts[0].proj.bias.numel())
    mask_idx = (torch.arange(V) if mask is None
                else torch.nonzero(torch.as_tensor(mask).reshape(-1) != 0)[:, 0].cpu())
    pool_feats: list[_TiltFeatures] = []
    pool_lw: list[np.ndarray] = []
    record = []
    for r in range(int(rounds) + 1):
        final = r == int(rounds)
        n = int(n_round)
        if final:
            n = final_sample_size(record, n_final, target_ess, n_final_max)
        comps = tilts if keep_all else tilts[-1:]
        counts = stratum_counts(n, alpha0, len(comps))
        seqs, strata, log_c, alphas, lmix, feats = _draw_mixture(
            lm, comps, prompt, counts, T, generator, chunk,
            mask_idx if (pool and not final) else None)
        lt = np.asarray(log_target(seqs, log_c[0]), dtype=np.float64)
        lw = lt - lmix
        record.append({"round": r, "final": final, "counts": counts.tolist(), **_diag(lw)})
        if final:
            if progress:
                print(f"  IS round {r}: {record[-1]}", flush=True)
            return AdaptiveMixture(seqs, strata, log_c, alphas, lmix, lt, comps[-1],
                                   list(comps), record)
        if not pool:
            tw = fit_token_tilt(lm, tilts[-1], prompt, seqs, np.exp(lw - lw.max()),
                                mask=mask, steps=steps, lr=lr, batch_size=batch_size,
                                seed=seed + r)
            tilts.append(tw)
            if progress:
                print(f"  IS round {r}: {record[-1]}", flush=True)
            continue
        # the pool keeps only draws within prune_rtol of the largest weight so far (the
        # largest can only grow, so a dropped draw stays negligible)
        pool_feats.append(feats)
        pool_lw.append(lw)
        top = max(float(x.max()) for x in pool_lw)
        keeps = [np.nonzero(x >= top + math.log(prune_rtol))[0] for x in pool_lw]
        pool_feats = [f.take(k) for f, k in zip(pool_feats, keeps, strict=True)]
        pool_lw = [x[k] for x, k in zip(pool_lw, keeps, strict=True)]
        alw = np.concatenate(pool_lw)
        record[-1]["pool_kept"] = int(alw.size)
        if progress:
            print(f"  IS round {r}: {record[-1]}", flush=True)
        bm = _fit_pooled(_TiltFeatures.cat(pool_feats), np.exp(alw - top),
                         _bias(tilts[-1])[mask_idx], steps, lr)
        b = torch.zeros(V, dtype=torch.float64)
        b[mask_idx] = bm
        tilts.append(_tilt(twist0, b))
    raise AssertionError("unreachable")
