r"""Exact enumeration of small targets: σ, log Z, the optimal twists ψ* and exact KLs.

For a vocabulary ≤ 5 and a horizon ≤ 4 every continuation can be listed. Running the adapter
breadth-first over the prefix tree gives :math:`p_{LM}(v\mid s_{<t})` at every node; the
optimal twists follow from the backward recursion (Zhao et al. 2024, eq. 6)

.. math::
    \psi^*_T(s_{1:T}) = \phi(s_{1:T}),\qquad
    \log\psi^*_t(s_{1:t}) = \log\sum_{v} p_{LM}(v\mid s_{1:t})\,\psi^*_{t+1}(s_{1:t}, v),

(a sequence that ends with EOS at step t has :math:`\psi^*_t = \phi`) and
:math:`\log Z = \log\sum_v p_{LM}(v\mid s_0)\psi^*_1(v)`. The marginals are
:math:`\sigma(s_{1:t}) = p_{LM}(s_{1:t})\psi^*_t(s_{1:t})/Z` (Kim et al. 2025, eq. 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapters import as_adapter, prefix_count
from .potentials import Potential
from .twists import TableTwist

__all__ = ["ExactTarget", "enumerate_target", "exact_ctl_loss"]


@dataclass
class _Level:
    """Alive prefixes of length t: their tree codes, log p, next-token log-probs, hidden."""

    prefixes: list[tuple[int, ...]]
    codes: torch.Tensor  # (N,)
    log_p: torch.Tensor  # (N,) log p_LM(prefix)
    next_log_p: torch.Tensor  # (N, V)
    hidden: torch.Tensor  # (N, H)
    log_psi_star: torch.Tensor | None = None  # (N, V)


@dataclass
class ExactTarget:
    """σ ∝ p_LM φ over all continuations of length ≤ horizon, computed exactly.

    Attributes
    ----------
    sequences : list[tuple[int, ...]]
        Every complete continuation (with its EOS when it ended early).
    log_p, log_phi, log_sigma : float64 (N,)
    log_Z : float
    levels : list[_Level]
        The prefix tree, level t holds the alive prefixes of length t.
    """

    sequences: list[tuple[int, ...]]
    log_p: torch.Tensor
    log_phi: torch.Tensor
    log_sigma: torch.Tensor
    log_Z: float
    levels: list[_Level]
    vocab_size: int
    horizon: int
    eos_token_id: int | None

    def index(self) -> dict[tuple[int, ...], int]:
        return {s: i for i, s in enumerate(self.sequences)}

    def optimal_twist(self) -> TableTwist:
        """ψ* as a :class:`TableTwist` (row = prefix code, for one-hot-hidden adapters)."""
        table = torch.zeros(prefix_count(self.vocab_size, self.horizon), self.vocab_size,
                            dtype=torch.float64)
        for lev in self.levels:
            table[lev.codes] = lev.log_psi_star
        return TableTwist(table, trainable=False)

    def proposal_log_prob(self, twist=None) -> torch.Tensor:
        r"""Exact :math:`\log q(s)` of every sequence, :math:`q_t\propto p_{LM}\psi_\theta`."""
        mats = []
        for lev in self.levels:
            lpsi = (torch.zeros_like(lev.next_log_p) if twist is None
                    else twist.log_psi(lev.hidden).to(torch.float64))
            mats.append(torch.log_softmax(lev.next_log_p + lpsi, -1))
        return self._path_sum(mats)

    def _path_sum(self, mats: list[torch.Tensor]) -> torch.Tensor:
        """Σ_t mats[t][node, token] along each complete sequence's path."""
        out = []
        for s in self.sequences:
            total = mats[0].new_zeros(())
            for t in range(len(s)):
                node = self._node(t, s[:t])
                total = total + mats[t][node, s[t]]
            out.append(total)
        return torch.stack(out)

    def _node(self, t: int, prefix: tuple[int, ...]) -> int:
        if not hasattr(self, "_node_maps"):
            self._node_maps = [{p: i for i, p in enumerate(lev.prefixes)} for lev in self.levels]
        return self._node_maps[t][prefix]

    @torch.no_grad()
    def kl_sigma_q(self, twist=None) -> float:
        r""":math:`D_{KL}(\sigma\,\|\,q) = \sum_s\sigma(s)(\log\sigma(s) - \log q(s))`."""
        lq = self.proposal_log_prob(twist)
        s = self.log_sigma.exp()
        return float(torch.where(s > 0, s * (self.log_sigma - lq), 0.0).sum())

    @torch.no_grad()
    def kl_q_sigma(self, twist=None) -> float:
        r""":math:`D_{KL}(q\,\|\,\sigma)` (``inf`` when q puts mass where σ has none)."""
        lq = self.proposal_log_prob(twist)
        q = lq.exp()
        terms = torch.where(q > 0, q * (lq - self.log_sigma), 0.0)
        return float(terms.sum())


@torch.no_grad()
def enumerate_target(lm, potential: Potential, prompt, horizon: int,
                     eos_token_id: int | None = -1, max_sequences: int = 100_000) -> ExactTarget:
    """Enumerate every continuation of ``lm`` up to ``horizon`` tokens and compute σ exactly.

    ``lm`` is any adapter (or HF model); for a zero-variance check use it in float64.
    """
    lm = as_adapter(lm)
    eos = lm.eos_token_id if eos_token_id == -1 else eos_token_id
    V = lm.vocab_size
    if V ** horizon > max_sequences:
        raise ValueError(f"vocab {V} and horizon {horizon} give {V ** horizon} sequences, more "
                         f"than max_sequences={max_sequences}; use a smaller model or horizon.")
    logp, h, state = lm.start(prompt, 1)
    levels = [_Level([()], torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.float64),
                     logp.to(torch.float64).cpu(), h.cpu())]
    complete: list[tuple[int, int, int]] = []  # (level, node, token)
    offsets = [prefix_count(V, t) for t in range(horizon + 1)]
    for t in range(horizon):
        lev = levels[t]
        N = len(lev.prefixes)
        parents, toks = [], []
        for i in range(N):
            for v in range(V):
                if t == horizon - 1 or v == eos:
                    complete.append((t, i, v))
                else:
                    parents.append(i)
                    toks.append(v)
        if t == horizon - 1 or not parents:
            break
        par = torch.tensor(parents)
        tok = torch.tensor(toks)
        state = lm.reorder(state, par.to(logp.device))
        logp, h, state = lm.advance(state, tok.to(logp.device))
        codes = offsets[t + 1] + (lev.codes[par] - offsets[t]) * V + tok
        levels.append(_Level([lev.prefixes[i] + (v,) for i, v in zip(parents, toks, strict=True)],
                             codes, lev.log_p[par] + lev.next_log_p[par, tok],
                             logp.to(torch.float64).cpu(), h.cpu()))
    seqs = [levels[t].prefixes[i] + (v,) for t, i, v in complete]
    lphi = potential.log_phi([s[:-1] if eos is not None and s[-1] == eos else s for s in seqs])
    # backward recursion: leaves take log phi, inner nodes logsumexp over their children
    for lev in levels:
        lev.log_psi_star = torch.full_like(lev.next_log_p, float("nan"))
    for (t, i, v), lf in zip(complete, lphi, strict=True):
        levels[t].log_psi_star[i, v] = lf
    for t in range(len(levels) - 1, 0, -1):
        child, parent = levels[t], levels[t - 1]
        val = torch.logsumexp(child.next_log_p + child.log_psi_star, -1)
        pidx = {p: i for i, p in enumerate(parent.prefixes)}
        for j, p in enumerate(child.prefixes):
            parent.log_psi_star[pidx[p[:-1]], p[-1]] = val[j]
    root = levels[0]
    log_Z = float(torch.logsumexp(root.next_log_p[0] + root.log_psi_star[0], 0))
    lp = torch.stack([levels[t].log_p[i] + levels[t].next_log_p[i, v] for t, i, v in complete])
    return ExactTarget(seqs, lp, lphi, lp + lphi - log_Z, log_Z, levels, V, horizon, eos)


def exact_ctl_loss(target: ExactTarget, twist) -> torch.Tensor:
    r"""Differentiable :math:`\sum_{t=1}^T D_{KL}(\sigma(s_{1:t})\,\|\,\pi_{t,\theta}(s_{1:t}))`
    with :math:`\pi_{t,\theta}\propto p_{LM}(s_{1:t})\psi_\theta(s_{1:t})` (Kim et al. eq. 5).

    Only for targets without EOS (all sequences have length T).
    """
    if target.eos_token_id is not None and any(s[-1] == target.eos_token_id and len(s) < target.horizon
                                                  for s in target.sequences):
        raise ValueError("exact_ctl_loss needs a target without early EOS; enumerate with "
                         "eos_token_id=None.")
    total = torch.zeros((), dtype=torch.float64)
    for lev in target.levels:
        base = lev.log_p[:, None] + lev.next_log_p  # log p(s_{1:t}) for every child
        log_sigma = (base + lev.log_psi_star - target.log_Z).reshape(-1)
        lpsi = twist.log_psi(lev.hidden).to(torch.float64)
        log_pi = torch.log_softmax((base + lpsi).reshape(-1), 0)
        s = log_sigma.exp()
        total = total + torch.where(s > 0, s * (log_sigma - log_pi), 0.0).sum()
    return total
