r"""Shipped contracts: reusable assertions for reward models, twists and proposals.

Each ``assert_*`` function checks one invariant a component must satisfy to plug into the
samplers, raises ``AssertionError`` naming what differs, and returns what it measured (so a
test can check the contract's own power). Run them over every component you add, as
``tests/ext/test_contracts.py`` does for the ones that ship (style card item 9; after
genlm-control's ``potential/testing.py`` and implicit's recommender test mixin).

Reward models (``rankkit_ext.models`` contract, paper 002 §2.1, §3.1.2)
    :func:`assert_rank_at_most_hidden` (RAD-Q's learned matrix has rank ≤ d, eq. 10–11),
    :func:`assert_candidate_scores_match_full` (scores of k candidates equal the
    full-vocabulary and the full-sequence scores, and the incremental state agrees with a
    fresh pass), :func:`assert_padding_invariant`.
Twists (:mod:`rankkit_ext.tsmc.twists` protocol)
    :func:`assert_twist_reorder_consistent`: log ψ (and the adapter's log p) carried through
    ``step`` / ``reorder`` equal the teacher-forced values of the reordered sequences.
Proposals (:mod:`rankkit_ext.tsmc.proposals` protocol)
    :func:`assert_proposal_exact`: on an enumerable LM, the proposal's per-step log q
    multiply to a distribution over complete sequences, its samples follow that law, and
    the engine's weights with it are :math:`p\phi/q` with
    :math:`\mathbb E_q[\hat Z] = Z` exactly (:mod:`rankkit_ext.tsmc.exact`).

Tolerances derive from the dtype: ``rtol`` multiples of ``torch.finfo(dtype).eps``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["assert_rank_at_most_hidden", "assert_candidate_scores_match_full",
           "assert_padding_invariant", "assert_twist_reorder_consistent",
           "assert_proposal_exact"]


def _dtype_of(model) -> torch.dtype:
    return model.backbone.get_input_embeddings().weight.dtype


def _tol(dtype, scale, ulps=256) -> float:
    return ulps * torch.finfo(dtype).eps * max(1.0, float(scale))


def _close(got, ref, tol, what):
    got, ref = torch.as_tensor(got).double().cpu(), torch.as_tensor(ref).double().cpu()
    if got.shape != ref.shape:
        raise AssertionError(f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}")
    both_inf = torch.isinf(got) & torch.isinf(ref) & (torch.sign(got) == torch.sign(ref))
    err = torch.where(both_inf, torch.zeros_like(got), (got - ref).abs())
    err = torch.nan_to_num(err, nan=math.inf)
    worst = float(err.max()) if err.numel() else 0.0
    if worst > tol:
        at = tuple(int(i) for i in np.unravel_index(int(err.argmax()), tuple(err.shape)))
        raise AssertionError(f"{what}: max |difference| {worst:.3g} > tolerance {tol:.3g} at "
                             f"{at} (got {float(got[at]):.6g}, expected {float(ref[at]):.6g})")
    return worst


def _left(prefixes, pad, device, width=None):
    from ._tensors import padded

    return padded(prefixes, "left", pad, device=device, width=width)


# ---------------------------------------------------------------------------------------
# reward models
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def assert_rank_at_most_hidden(model, prefixes, *, label=0, bound: int | None = None) -> int:
    r"""RAD-Q's learned matrix :math:`\hat R = H(w\mathbf 1^\top + WE)` has rank ≤ d
    (paper 002, eq. 10–11): ``numerical_rank(learned_matrix(model, prefixes)) <= bound``,
    ``bound`` = ``model.rank_bound`` by default. Needs more prefixes and vocabulary tokens
    than the bound to have power.

    With the MLP head (``RADQ(head="mlp")``) and the baseline, :math:`\hat R = g(H)WE +
    Hw\mathbf 1^\top`: the two left factors differ, so ``model.rank_bound`` is d + 1;
    without the baseline it is d again.

    Returns the rank.
    """
    from rankkit import numerical_rank

    from .learned import learned_matrix

    R = learned_matrix(model, prefixes, label=label)
    d = int(getattr(model, "rank_bound", model.hidden_size)) if bound is None else int(bound)
    if min(R.shape) <= d:
        raise ValueError(f"the learned matrix is {R.shape}: the contract needs more than {d} "
                         "prefixes and vocabulary tokens to be able to fail")
    r = int(numerical_rank(R))
    if r > d:
        raise AssertionError(f"{type(model).__name__}: learned matrix {R.shape} has numerical "
                             f"rank {r} > {d} (hidden size d = {model.hidden_size}; eq. 11 "
                             f"bounds it by {d})")
    return r


@torch.no_grad()
def assert_candidate_scores_match_full(model, prefixes, candidates, *, label=0,
                                       ulps: int = 256) -> float:
    r"""``score_candidates`` of k candidates per prefix equals (i) the full-sequence score
    :math:`\hat r(v\mid x')` of ``[x', v]`` (``score_sequences``, one fresh pass per
    sequence), (ii) the teacher-forced training path (``model(tokens, mask)`` at the last
    position), (iii) for a model with ``score_vocab`` (RAD-Q) the full-vocabulary row at
    the candidates, and (iv) the incremental path: a state for ``x'`` without its last
    token, extended by one column.

    Parameters
    ----------
    prefixes : list of B token-id lists (non-empty; left padded here)
    candidates : (B, k) token ids

    Returns the largest difference seen.
    """
    dev = model.device
    cand = torch.as_tensor(candidates, dtype=torch.long, device=dev)
    B, k = cand.shape
    pad = 0
    ids, mask = _left(prefixes, pad, dev)
    got, _ = model.score_candidates(ids, mask, cand, label=label)
    tol = _tol(_dtype_of(model), got.abs().max(), ulps)
    worst = 0.0
    seqs = [list(p) + [int(v)] for p, row in zip(prefixes, cand.tolist(), strict=True)
            for v in row]
    s_ids, s_mask = _left(seqs, pad, dev)
    full = model.score_sequences(s_ids, s_mask, label=label).reshape(B, k)
    worst = max(worst, _close(got, full, tol, "score_candidates vs score_sequences of [x', v]"))
    from ._tensors import padded

    r_ids, r_mask = padded(seqs, "right", pad, device=dev)
    li = model.label_index(label)
    tf = model(r_ids, r_mask)[torch.arange(len(seqs), device=dev), r_mask.sum(1) - 1, li]
    worst = max(worst, _close(got, tf.reshape(B, k), tol,
                              "score_candidates vs teacher-forced forward(tokens, mask)"))
    if hasattr(model, "score_vocab"):
        vocab, _ = model.score_vocab(ids, mask, label=label)
        worst = max(worst, _close(got, vocab.gather(1, cand), tol,
                                  "score_candidates vs score_vocab at the candidates"))
    if ids.shape[1] > 1:
        _, st = model.score_candidates(ids[:, :-1], mask[:, :-1], cand, label=label)
        inc, _ = model.score_candidates(ids, mask, cand, label=label, state=st)
        worst = max(worst, _close(inc, got, tol, "incremental state (one column appended) vs "
                                                 "fresh prefix pass"))
    return worst


@torch.no_grad()
def assert_padding_invariant(model, prefixes, candidates, *, label=0, extra_pad: int = 3,
                             ulps: int = 256) -> float:
    """Scores do not depend on left padding: the batch (padded to its longest prefix), each
    prefix alone (no padding) and the batch with ``extra_pad`` more padding columns filled
    with a different token id agree. Returns the largest difference."""
    dev = model.device
    cand = torch.as_tensor(candidates, dtype=torch.long, device=dev)
    ids, mask = _left(prefixes, 0, dev)
    batch, _ = model.score_candidates(ids, mask, cand, label=label)
    tol = _tol(_dtype_of(model), batch.abs().max(), ulps)
    alone = torch.cat([model.score_candidates(*_left([p], 0, dev), cand[i:i + 1], label=label)[0]
                       for i, p in enumerate(prefixes)])
    worst = _close(batch, alone, tol, "left-padded batch vs each prefix alone")
    other = int(model.vocab_size) - 1
    w_ids, w_mask = _left(prefixes, other, dev, width=ids.shape[1] + int(extra_pad))
    wider, _ = model.score_candidates(w_ids, w_mask, cand, label=label)
    return max(worst, _close(wider, batch, tol, f"{extra_pad} more padding columns (pad id "
                                                f"{other}) vs the batch"))


# ---------------------------------------------------------------------------------------
# twists
# ---------------------------------------------------------------------------------------
def _forced_ancestors(n: int, t: int, device) -> torch.Tensor:
    """Alternately a non-sorted permutation and a many-to-one map: rows must follow exactly."""
    idx = torch.arange(n, device=device)
    return idx.flip(0).roll(1) if t % 2 == 0 else idx // 2 * 2


@torch.no_grad()
def assert_twist_reorder_consistent(lm, twist, prompt, *, n: int = 6, steps: int = 4,
                                    generator: torch.Generator | None = None,
                                    ulps: int = 64) -> float:
    r"""Log ψ (and the adapter's log p) carried through the protocol's ``init_state`` /
    ``step`` / ``reorder`` equal the teacher-forced values of the reordered sequences
    (``sequence_log_psi`` via :func:`~rankkit_ext.tsmc.sampler.teacher_force`).

    ``n`` particles take ``steps`` random tokens; after each, the rows are reordered by a
    fixed permutation or a many-to-one map (resampling), exactly as the sampler does (the
    adapter's and the twist's states, the token history). Then the same through
    :func:`~rankkit_ext.tsmc.sampler.tsmc` itself (resampling after every step, no EOS):
    its ``step_log_psi`` equals the teacher-forced log ψ of the chosen tokens. Returns the
    largest difference.
    """
    from .tsmc.adapters import as_adapter
    from .tsmc.sampler import teacher_force
    from .tsmc.twists import as_twist, check_twist_fits

    lm, tw = as_adapter(lm), as_twist(twist)
    check_twist_fits(tw, lm)
    logp, h, st = lm.start(prompt, n)
    lpsi, ts = tw.init_state(prompt, n, h)
    dev = logp.device
    hist_p, hist_psi = [logp.double()], [lpsi.double()]
    toks = torch.zeros(n, 0, dtype=torch.long, device=dev)
    V = lm.vocab_size
    for t in range(steps):
        tok = torch.randint(0, V, (n,), generator=generator,
                            device=dev if generator is None else generator.device).to(dev)
        toks = torch.cat([toks, tok[:, None]], 1)
        anc = _forced_ancestors(n, t, dev)
        toks = toks[anc]
        hist_p, hist_psi = [x[anc] for x in hist_p], [x[anc] for x in hist_psi]
        st, ts = lm.reorder(st, anc), tw.reorder(ts, anc)
        logp, h, st = lm.advance(st, toks[:, -1])
        lpsi, ts = tw.step(ts, toks[:, -1], h)
        hist_p.append(logp.double())
        hist_psi.append(lpsi.double())
    # teacher forcing reads prefixes tokens[:, :j] for j < L: one dummy last column
    full = torch.cat([toks, torch.zeros(n, 1, dtype=torch.long, device=dev)], 1)
    tf_p, _, tf_psi = teacher_force(lm, prompt, full, twist=tw)
    psi_dtype = lpsi.dtype if lpsi.dtype.is_floating_point else torch.float64
    got_psi, got_p = torch.stack(hist_psi, 1), torch.stack(hist_p, 1)
    worst = _close(got_psi, tf_psi.double(), _tol(psi_dtype, tf_psi.abs().max(), ulps),
                   f"{type(tw).__name__}: log psi after step/reorder vs teacher-forced")
    p_tol = _tol(torch.float32 if logp.dtype == torch.float32 else torch.float64, 10.0, ulps)
    worst = max(worst, _close(got_p, tf_p.double(), p_tol,
                              "adapter log p after reorder vs teacher-forced"))
    # the same through the sampler itself: resampling after every step (ancestors drawn
    # from the twisted weights), then the chosen tokens' log psi against teacher forcing
    from .tsmc.potentials import FunctionPotential
    from .tsmc.sampler import tsmc

    r = tsmc(lm, tw, FunctionPotential(lambda s: 0.0), prompt, n, steps, ess_threshold=1.0,
             generator=generator, eos_token_id=None)
    _, _, tf = teacher_force(lm, prompt, r.tokens, twist=tw)
    chosen = tf.double().gather(2, r.tokens[..., None]).squeeze(2)
    return max(worst, _close(r.step_log_psi, chosen, _tol(psi_dtype, chosen.abs().max(), ulps),
                             f"{type(tw).__name__}: the sampler's log psi of the chosen tokens "
                             "(resampling every step) vs teacher-forced"))


# ---------------------------------------------------------------------------------------
# proposals
# ---------------------------------------------------------------------------------------
def _chi_square_p(counts: dict, probs: np.ndarray, index: dict, n: int) -> float:
    from scipy import stats

    obs = np.zeros(len(probs))
    for s, c in counts.items():
        if s not in index:
            raise AssertionError(f"the proposal drew {s}, which is not a complete sequence")
        obs[index[s]] += c
    exp = probs * n
    if np.any((obs > 0) & (exp == 0)):
        s = [k for k, i in index.items() if obs[i] > 0 and exp[i] == 0][0]
        raise AssertionError(f"the proposal drew {s}, to which its own log q gives probability 0")
    keep = exp >= 5  # pool rare cells so the chi-square approximation holds
    obs_p, exp_p = np.append(obs[keep], obs[~keep].sum()), np.append(exp[keep], exp[~keep].sum())
    if exp_p[-1] == 0:
        obs_p, exp_p = obs_p[:-1], exp_p[:-1]
    if len(exp_p) < 2:
        return 1.0
    return float(stats.chisquare(obs_p, exp_p * obs_p.sum() / exp_p.sum()).pvalue)


@torch.no_grad()
def assert_proposal_exact(lm, proposal, potential, prompt, horizon: int, *,
                          n_samples: int = 2000, generator: torch.Generator | None = None,
                          eos_token_id: int | None = -1, p_min: float = 1e-3,
                          rtol: float = 1e-9) -> dict:
    r"""Exact-enumeration check of a proposal in the SMC engine.

    On an enumerable LM (vocabulary ≤ 5, horizon ≤ 4;
    :func:`~rankkit_ext.tsmc.exact.enumerate_target` lists every complete continuation s and
    computes σ ∝ p φ and Z):

    1. *Forced* through the engine (every row clamped to one sequence), the proposal's
       per-step log q sum to a distribution: :math:`\sum_s q(s) = 1`, and its log p to
       :math:`\log p_{LM}(s)`;
    2. the engine's log-weight of each s is :math:`\log p(s) + \log\phi(s) - \log q(s)`
       (the incremental weights telescope, twists cancel);
    3. importance sampling with it is unbiased, exactly: :math:`\mathbb E_q[\hat Z] =
       \sum_s q(s)\,w(s) = Z` (fails when q misses part of σ's support, e.g. top-k
       without ``mix``);
    4. ``n_samples`` particles drawn by the proposal follow :math:`q(s)` (chi-square
       p-value > ``p_min``), and each particle's own Σ log q equals the enumerated one.

    ``rtol`` is relative to the float64 round-off of the quantities (sums over ≤ 4 steps);
    a float32 model needs about 1e-5. Returns the measured numbers.
    """
    from .tsmc.adapters import as_adapter
    from .tsmc.engine import smc
    from .tsmc.exact import enumerate_target

    lm = as_adapter(lm)
    eos = lm.eos_token_id if eos_token_id == -1 else eos_token_id
    pad = 0 if eos is None else int(eos)
    target = enumerate_target(lm, potential, prompt, horizon, eos_token_id=eos)
    seqs = [list(s) for s in target.sequences]
    N = len(seqs)
    kw = dict(potential=potential, ess_threshold=None, eos_token_id=eos, pad_token_id=pad,
              track_ess=False)
    run = smc(lm, proposal, [list(prompt)], N, horizon, forced=seqs, generator=generator, **kw)
    got = [run.tokens[i, : int(run.lengths[i])].tolist() for i in range(N)]
    if got != seqs:
        bad = next(i for i in range(N) if got[i] != seqs[i])
        raise AssertionError(f"forcing failed: row {bad} produced {got[bad]}, forced {seqs[bad]}")
    log_q = run.step_log_q.sum(1).cpu()
    log_p = run.step_log_p.sum(1).cpu()
    log_w = run.log_weights.cpu()
    out = {"n_sequences": N, "log_Z": target.log_Z}
    out["log_p_err"] = _close(log_p, target.log_p, rtol * 10 * horizon,
                              "proposal's log p_LM(s) vs exact enumeration")
    total = float(torch.logsumexp(log_q, 0))
    out["log_sum_q"] = total
    if abs(total) > rtol * 10 * horizon:
        raise AssertionError(f"the proposal's per-step q do not multiply to a distribution: "
                             f"log sum_s q(s) = {total:.3g} (expected 0)")
    pos = torch.isfinite(log_q)
    tel = target.log_p + target.log_phi - log_q
    out["weight_err"] = _close(torch.where(pos, log_w, 0.0), torch.where(pos, tel, 0.0),
                               rtol * 10 * horizon * max(1.0, float(tel[pos].abs().max())),
                               "engine log w(s) vs log p(s) + log phi(s) - log q(s)")
    log_ez = float(torch.logsumexp(torch.where(pos, log_q + log_w, -math.inf), 0))
    out["log_E_Z_hat"] = log_ez
    if not math.isclose(log_ez, target.log_Z, abs_tol=rtol * 10 * horizon * max(1.0, abs(target.log_Z))):
        missing = float(torch.logsumexp(torch.where(pos, -math.inf, target.log_p + target.log_phi), 0))
        raise AssertionError(f"importance sampling with this proposal is biased: log E_q[Z_hat] = "
                             f"{log_ez:.6g} but log Z = {target.log_Z:.6g} (log of the target mass "
                             f"the proposal never reaches: {missing:.3g})")
    # the law the proposal draws from
    samp = smc(lm, proposal, [list(prompt)], n_samples, horizon, generator=generator, **kw)
    index = {tuple(s): i for i, s in enumerate(seqs)}
    counts: dict = {}
    for i in range(n_samples):
        s = tuple(samp.tokens[i, : int(samp.lengths[i])].tolist())
        counts[s] = counts.get(s, 0) + 1
    pval = _chi_square_p(counts, log_q.exp().numpy(), index, n_samples)
    out["chi_square_p"] = pval
    if pval <= p_min:
        raise AssertionError(f"the proposal's samples do not follow its own log q: chi-square "
                             f"p = {pval:.3g} over {n_samples} draws")
    drawn = torch.tensor([index[tuple(samp.tokens[i, : int(samp.lengths[i])].tolist())]
                          for i in range(n_samples)])
    out["sampled_log_q_err"] = _close(samp.step_log_q.sum(1).cpu(), log_q[drawn],
                                      rtol * 10 * horizon,
                                      "sampled particles' sum of log q vs the forced evaluation")
    return out
