r"""The SMC engine: one loop for twisted SMC, SIS, bootstrap SMC and reward-guided decoding.

G prompt groups of K particles each (rows group-major) are extended one token per step by a
proposal (:mod:`~rankkit_ext.tsmc.proposals`), reweighted by the general twisted-SMC
incremental weight (Zhao et al. 2024, eq. 4; Kim et al. 2025, §1 steps 1–3)

.. math::
    \log w_t = \log p_{LM}(s_t\mid s_{<t}) + \log\psi_t(s_{1:t})
               - \log\psi_{t-1}(s_{1:t-1}) - \log q_t(s_t\mid s_{<t}),

with :math:`\log\phi(s_{1:t})` in place of :math:`\log\psi_t` at a particle's final step
(EOS or the horizon) and :math:`\psi_0\equiv 1`, and resampled within each group whose ESS
falls below ``ess_threshold * K``. For the twist-induced proposal
:math:`q_t = p_{LM}\psi_t/Z_t` the non-final weight is :math:`\log Z_t - \log\psi_{t-1}`
(taken directly, see :class:`~rankkit_ext.tsmc.proposals.ProposalStep`); for guided
decoding it is :math:`\log p + \beta\tilde r_t - \log q - \beta\tilde r_{t-1}`. Each group's
:math:`\log\hat Z = \sum_{\text{epochs}}\log\frac1K\sum_k W_k` is accumulated in float64
(unbiased in :math:`\hat Z` for any proposal whose support covers σ's).

A particle that finishes keeps its weight and its row (its later tokens are padding, its
later increments 0). ``forced`` clamps the first rows to given continuations (conditional
SMC's reference; exact enumeration of a proposal's law in :mod:`rankkit_ext.testing`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .potentials import PotentialValueError
from .proposals import StepContext
from .resampling import ess, normalize_log_weights, resample

__all__ = ["SMCRun", "smc"]


@dataclass
class SMCRun:
    """Everything one engine run produced (rows group-major, G groups of K).

    ``tokens`` (N, T) with padding past ``lengths``; ``log_weights`` (N,) since each group's
    last resampling; ``log_Z`` (G,) float64; ``ess_trace`` a list over steps of (G,) ESS
    (empty when ESS was not tracked); ``resampled_at`` the steps after which any group
    resampled and ``ancestors`` the (G, K) within-group ancestors of each (identity for a
    group that did not resample); ``step_log_w``, ``step_log_p``, ``step_log_q``,
    ``step_log_psi`` (N, T) along each lineage (0 after a particle finished);
    ``step_log_pi`` (N, T) or None (only with ``log_z`` from the proposal); ``aux`` the
    proposal's per-row values at each particle's last live step; ``n_live`` the row-steps
    computed; ``seconds_lm`` wall time in the LM adapter.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    finished: torch.Tensor
    log_weights: torch.Tensor
    log_Z: torch.Tensor
    ess_trace: list
    resampled_at: list[int]
    ancestors: list[torch.Tensor]
    log_phi: torch.Tensor
    step_log_w: torch.Tensor
    step_log_p: torch.Tensor
    step_log_q: torch.Tensor
    step_log_psi: torch.Tensor
    step_log_pi: torch.Tensor | None
    aux: dict = field(default_factory=dict)
    record: dict | None = None
    n_live: int = 0
    seconds_lm: float = 0.0


def _nan_to_neg_inf(x: torch.Tensor) -> torch.Tensor:
    # NaN arises only as (-inf) - (-inf) in particles that already have zero weight
    return torch.where(torch.isnan(x), torch.full_like(x, -math.inf), x)


def default_resampler(method: str) -> Callable:
    """``(log_w (G, K), generator) -> ancestors (G, K)`` with :func:`resample` per group."""
    return lambda log_w, generator: resample(log_w, method, generator)


@torch.no_grad()
def smc(lm, proposal, prompts: Sequence[Sequence[int]], n_particles: int,
        max_new_tokens: int, *, potential=None, ess_threshold: float | None = None,
        resampler: Callable | None = None, generator: torch.Generator | None = None,
        forced: Sequence[Sequence[int]] | None = None, eos_token_id: int | None = None,
        pad_token_id: int = 0, record: bool = False, track_ess: bool = True,
        row_name: Callable[[int], str] | None = None) -> SMCRun:
    r"""Run SMC with any proposal; the samplers' shared body (no argument validation).

    Parameters
    ----------
    lm : adapter
        ``start(prompt or prompts, K) / advance / reorder`` (:mod:`~rankkit_ext.tsmc.adapters`);
        with G > 1 prompts it must take a batch (:class:`~rankkit_ext.tsmc.adapters.HFCausalLM`).
    proposal : Proposal
        :mod:`~rankkit_ext.tsmc.proposals`.
    prompts : list of G token-id lists
    n_particles, max_new_tokens : int
        K per group and the horizon T.
    potential : Potential, optional
        Terminal :math:`\log\phi`, evaluated once per particle when it finishes (on the
        continuation without its EOS). None: :math:`\phi = \psi_T`, the last twist (guided
        decoding's target :math:`p_{LM}\exp(\beta\tilde r)`).
    ess_threshold : float, optional
        Resample a group after step t < T − 1 when its ESS < ``ess_threshold * K``
        (``math.inf``: every step). None: never, and no ESS is computed unless
        ``track_ess``.
    resampler : callable, optional
        ``(log_w (G, K), generator) -> ancestors (G, K)``; default systematic.
    generator : torch.Generator, optional
        All randomness (proposals and resampling), on its own device.
    forced : list of token-id lists, optional
        Row i < len(forced) takes ``forced[i][t]`` at every step t < len(forced[i]).
    eos_token_id, pad_token_id : int
        EOS ends a particle (None: only the horizon does); finished rows are fed padding.
    record : bool
        Keep per step the population (post-resampling) with its LM output (K, V), hidden
        states (K, H), alive mask and :math:`\pi_t(s_{<t})` log-weights, the tokens at the
        end of every resampling epoch and each final particle's row in every step (CTL's
        negative phase; needs a proposal that reports ``log_z`` and one group).
    row_name : callable, optional
        Names a row in error messages.

    Returns
    -------
    SMCRun
    """
    G, K, T = len(prompts), int(n_particles), int(max_new_tokens)
    N = G * K
    resampler = resampler or default_resampler("systematic")
    row_name = row_name or (lambda k: f"particle {k}")
    eos = eos_token_id
    t_lm = time.perf_counter()
    first, h, state = lm.start(prompts[0] if G == 1 else [list(p) for p in prompts], K)
    seconds_lm = time.perf_counter() - t_lm
    pstate = proposal.init_state([list(p) for p in prompts], K, first, h)
    dev = first.device
    gdev = dev if generator is None else generator.device
    f64 = dict(dtype=torch.float64, device=dev)
    tokens = torch.full((N, T), int(pad_token_id), dtype=torch.long, device=dev)
    lengths = torch.zeros(N, dtype=torch.long, device=dev)
    done = torch.zeros(N, dtype=torch.bool, device=dev)
    finished = torch.zeros(N, dtype=torch.bool, device=dev)
    logW = torch.zeros(N, **f64)
    log_Z = torch.zeros(G, **f64)
    lpsi_prev = torch.zeros(N, **f64)
    log_phi = torch.zeros(N, **f64)
    step_w, step_p, step_q, step_psi = (torch.zeros(N, T, **f64) for _ in range(4))
    step_pi = None
    aux: dict = {}
    rec: dict | None = None
    if record:
        if G != 1:
            raise ValueError("record=True keeps one population; run one prompt group")
        rec = dict(log_probs=[], hidden=[], neg_log_w=[], alive=[], epochs=[],
                   row_at=torch.zeros(N, T, dtype=torch.long, device=dev))
        epoch_start = 0
    if forced:
        f_rows = torch.arange(len(forced), device=dev)
        f_len = torch.tensor([len(s) for s in forced], device=dev)
        f_tok = torch.zeros(len(forced), T, dtype=torch.long, device=dev)
        for i, s in enumerate(forced):
            f_tok[i, : min(len(s), T)] = torch.as_tensor(list(s)[:T], dtype=torch.long)
    ess_trace: list = []
    resampled_at: list[int] = []
    ancestors: list[torch.Tensor] = []
    track = track_ess or ess_threshold is not None
    n_live = 0
    offsets = torch.arange(G, device=dev)[:, None] * K
    identity = torch.arange(K, device=dev).expand(G, K)
    for t in range(T):
        live = ~done
        ctx = StepContext(t, live, generator, row_name)
        fc = None
        if forced:
            sel = f_len > t
            if bool(sel.any()):
                fc = (f_rows[sel], f_tok[sel, t])
        st, pstate = proposal.propose(pstate, first, h, ctx, fc)
        v = torch.where(done, torch.full_like(st.tokens, int(pad_token_id)), st.tokens)
        final = torch.full_like(done, t == T - 1)
        if eos is not None:
            final |= v == eos
        newly = final & live
        if st.log_z is not None:
            inc_pi = _nan_to_neg_inf(st.log_z - lpsi_prev)
            inc = inc_pi.clone()
        else:
            inc_pi = None
            inc = _nan_to_neg_inf(st.log_p + st.log_psi - st.log_q - lpsi_prev)
        if rec is not None:  # the population at step t and its pi_t(s_<t) weights
            if inc_pi is None:
                raise ValueError("record=True needs a twist-induced proposal (one that reports "
                                 "log Z_t)")
            rec["log_probs"].append(first)
            rec["hidden"].append(h.detach())
            rec["alive"].append(live)
            rec["neg_log_w"].append(logW + torch.where(done, torch.zeros_like(inc_pi), inc_pi))
            rec["row_at"][:, t] = torch.arange(N, device=dev)
        tokens[:, t] = v
        lengths += live.long()
        n_live += int(live.sum())
        if newly.any():
            idx = torch.nonzero(newly).squeeze(1)
            if potential is None:  # phi = psi_T: the last twist is the target's potential
                lphi = st.log_psi[idx]
            else:
                seqs = [tokens[k, : int(lengths[k])].tolist() for k in idx.tolist()]
                seqs = [s[:-1] if eos is not None and s[-1] == eos else s for s in seqs]
                try:
                    lphi = potential.log_phi(seqs).to(dev)
                except PotentialValueError as e:
                    raise ValueError(
                        f"potential log phi is {e.value} at step {t}, {row_name(int(idx[e.index]))} "
                        f"(sequence {seqs[e.index]!r}): log phi must be real or -inf; check the "
                        f"potential. ({e})") from None
            log_phi[idx] = lphi
            finished[idx] = v[idx] == eos if eos is not None else False
            inc[idx] = _nan_to_neg_inf(st.log_p[idx] + lphi - lpsi_prev[idx] - st.log_q[idx])
        zero = torch.zeros_like(inc)
        inc = torch.where(done, zero, inc)
        step_w[:, t] = inc
        step_p[:, t] = torch.where(done, zero, st.log_p)
        step_q[:, t] = torch.where(done, zero, st.log_q)
        if inc_pi is not None:
            if step_pi is None:
                step_pi = torch.zeros(N, T, **f64)
            step_pi[:, t] = torch.where(done, zero, inc_pi)
        logW = logW + inc
        lpsi_prev = st.log_psi
        step_psi[:, t] = torch.where(done, zero, lpsi_prev)
        for key, val in st.aux.items():
            aux[key] = torch.where(live, val, aux[key]) if key in aux else val
        done = done | final
        e = ess(logW.view(G, K)) if track else None
        if track:
            ess_trace.append(e)
        if t == T - 1 or bool(done.all()):
            break
        if ess_threshold is not None:
            need = e < ess_threshold * K
            if bool(need.any()):
                if rec is not None:  # the epoch's particles keep their rows until here
                    rec["epochs"].append((epoch_start, t, tokens[:, : t + 1].clone()))
                    epoch_start = t + 1
                lw = logW.view(G, K)
                log_Z = torch.where(need, log_Z + torch.logsumexp(lw, -1) - math.log(K), log_Z)
                anc = resampler(lw.to(gdev), generator).to(dev)
                anc = torch.where(need[:, None], anc, identity)
                ancestors.append(anc)
                flat = (anc + offsets).reshape(-1)
                tokens, lengths, done, finished = (tokens[flat], lengths[flat], done[flat],
                                                   finished[flat])
                lpsi_prev, log_phi = lpsi_prev[flat], log_phi[flat]
                step_w, step_p, step_q, step_psi = (step_w[flat], step_p[flat], step_q[flat],
                                                    step_psi[flat])
                if step_pi is not None:
                    step_pi = step_pi[flat]
                aux = {k: a[flat] for k, a in aux.items()}
                if rec is not None:
                    rec["row_at"] = rec["row_at"][flat]
                t_lm = time.perf_counter()
                state = lm.reorder(state, flat)
                seconds_lm += time.perf_counter() - t_lm
                pstate = proposal.reorder(pstate, flat)
                logW = torch.where(need[:, None], torch.zeros_like(lw), lw).reshape(-1)
                resampled_at.append(t)
        t_lm = time.perf_counter()
        first, h, state = lm.advance(state, tokens[:, t])
        seconds_lm += time.perf_counter() - t_lm
        pstate = proposal.advance(pstate, tokens[:, t], first, h)
    log_Z = log_Z + torch.logsumexp(logW.view(G, K), -1) - math.log(K)
    if rec is not None:
        rec["epochs"].append((epoch_start, t, tokens[:, : t + 1].clone()))
        rec["row_at"] = rec["row_at"][:, : t + 1]
    return SMCRun(tokens=tokens, lengths=lengths, finished=finished, log_weights=logW,
                  log_Z=log_Z, ess_trace=ess_trace, resampled_at=resampled_at,
                  ancestors=ancestors, log_phi=log_phi, step_log_w=step_w, step_log_p=step_p,
                  step_log_q=step_q, step_log_psi=step_psi, step_log_pi=step_pi, aux=aux,
                  record=rec, n_live=n_live, seconds_lm=seconds_lm)


def final_weights(run: SMCRun, K: int) -> torch.Tensor:
    """Self-normalised final weights per group, (G, K)."""
    return normalize_log_weights(run.log_weights.view(-1, K))[0].exp()
