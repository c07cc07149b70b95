"""Partially observed blocks under an entry bound (rankkit.bounds.eps_rank.PartialBlock):
the bound (√τ(X̃) − B√s)₊² on the observed error of any rank-k M with |M| ≤ B, its search
and its re-check, against brute force and against the case that makes the B√s term needed."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rankkit as rk
from rankkit.bounds import EpsRankLowerBound, PartialBlock, eps_rank_lower_bound
from rankkit.testing.bounds import assert_eps_lower_bound, eps_rank_brute_force


def _sparse(X, W):
    r, c = np.nonzero(W)
    return sp.csr_matrix((X[W] + 0.0, (r, c)), shape=X.shape)


def _diag_missing(n=14, seed=0):
    """±1 entries, the diagonal unobserved: every fully observed block is at most
    ⌈n/2⌉ × ⌊n/2⌋-ish (rows and columns must avoid each other), the whole block is not."""
    g = np.random.default_rng(seed)
    X = np.sign(g.standard_normal((n, n)))
    W = ~np.eye(n, dtype=bool)
    return X, W


def test_partial_block_proves_more_than_full_blocks_under_the_entry_bound():
    X, W = _diag_missing()
    S = _sparse(X, W)
    full = eps_rank_lower_bound(S, 1e-3)
    part = eps_rank_lower_bound(S, 1e-3, max_abs=1.0)
    assert full.max_abs is None and all(not isinstance(b, PartialBlock) for b in full.blocks)
    assert part.max_abs == 1.0 and any(isinstance(b, PartialBlock) for b in part.blocks)
    assert part.lower > full.lower
    assert assert_eps_lower_bound(part, S, 1e-3) == part.lower
    # the proof object survives JSON: same blocks, same bound
    again = EpsRankLowerBound.from_dict(part.to_dict())
    assert again.verify(S) == part.lower and again.max_abs == 1.0
    # by hand: the block's zero-filled spectrum and the stated formula
    blk = next(b for b in part.blocks if isinstance(b, PartialBlock))
    Xt = np.where(W, X, 0.0)[np.ix_(blk.rows, blk.cols)]
    sig = np.linalg.svd(Xt, compute_uv=False)
    k = part.lower - 1
    tau = float(np.sum(sig[k:] ** 2))
    want = max(math.sqrt(tau) - math.sqrt(len(blk.missing)), 0.0) ** 2
    assert blk.tail(k) == pytest.approx(want, rel=1e-9)
    # no admissible fit at rank lower − 1 is found by brute force either
    found, best = eps_rank_brute_force(X, W, 1e-3, restarts=4, n_iter=30, seed=1, max_abs=1.0)
    assert found is None or found >= part.lower


def test_the_entry_bound_term_is_needed():
    """A rank-1 matrix with one unobserved cell: its zero-filled copy has a rank-1 tail > 0,
    yet the exact rank-1 completion (entries ≤ B) fits with no error, so a bound without
    −B√s would claim rank ≥ 2 and be wrong; with it, nothing beyond rank 1 is claimed."""
    u, v = np.array([1.0, 0.8, 0.6, 0.9]), np.array([0.7, 1.0, 0.5, 0.9])
    X = np.outer(u, v)
    W = np.ones_like(X, bool)
    W[0, 1] = False
    Xt = np.where(W, X, 0.0)
    assert np.sum(np.linalg.svd(Xt, compute_uv=False)[1:] ** 2) > 1e-3  # τ(1) of X̃ > budget
    S = _sparse(X, W)
    b = eps_rank_lower_bound(S, 1e-6, max_abs=float(np.abs(X).max()))
    assert b.lower <= 1
    assert all(blk.tail(1) <= 16 * 1e-6 for blk in b.blocks)


def test_verify_names_what_is_wrong():
    X, W = _diag_missing(10, seed=3)
    S = _sparse(X, W)
    b = eps_rank_lower_bound(S, 1e-3, max_abs=1.0)
    blk = next(x for x in b.blocks if isinstance(x, PartialBlock))
    i = [j for j, x in enumerate(b.blocks) if x is blk][0]

    def swap(new):
        return EpsRankLowerBound(b.lower, b.eps, b.n_cells, b.budget,
                                 b.blocks[:i] + (new,) + b.blocks[i + 1:], b.shape, b.nnz, b.max_abs)

    short = PartialBlock(blk.rows, blk.cols, blk.missing[1:], blk.sigma, blk.slack, blk.max_abs)
    with pytest.raises(ValueError, match=r"unobserved and not listed"):
        swap(short).verify(S)
    r0 = int(blk.rows[0])
    c_obs = int(next(c for c in blk.cols if W[r0, c]))
    extra = np.vstack([blk.missing, [[r0, c_obs]]])
    with pytest.raises(ValueError, match=rf"row {r0}, column {c_obs}\) is observed"):
        swap(PartialBlock(blk.rows, blk.cols, extra, blk.sigma, blk.slack, blk.max_abs)).verify(S)
    with pytest.raises(ValueError, match=r"assumes \|M\| <= 2"):
        swap(PartialBlock(blk.rows, blk.cols, blk.missing, blk.sigma, blk.slack, 2.0)).verify(S)
    unbounded = EpsRankLowerBound(b.lower, b.eps, b.n_cells, b.budget, b.blocks, b.shape, b.nnz)
    with pytest.raises(ValueError, match=r"max_abs = None"):
        unbounded.verify(S)
    with pytest.raises(ValueError, match="max_abs must be a finite number > 0"):
        eps_rank_lower_bound(S, 1e-3, max_abs=0.0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 6), m=st.integers(3, 6), p_miss=st.floats(0.0, 0.3),
       log_eps=st.floats(-5, -1), slack_b=st.sampled_from([1.0, 1.5, 3.0]),
       seed=st.integers(0, 10_000))
def test_bound_never_exceeds_a_bounded_fit_found_by_brute_force(n, m, p_miss, log_eps, slack_b, seed):
    """Every entry-bounded ε-lower ≤ the smallest rank at which exhaustive ALS from many
    starts finds a fit with MSE ≤ ε and every entry ≤ B; and each partial block's claimed
    error is ≤ the error of every such admissible fit at that rank on its observed cells."""
    g = np.random.default_rng(seed)
    k_true = int(g.integers(1, min(n, m) + 1))
    X = g.standard_normal((n, k_true)) @ g.standard_normal((k_true, m)) / k_true
    X += 0.05 * g.standard_normal((n, m))
    W = g.random((n, m)) >= p_miss
    W[0, 0] = True
    eps = 10.0 ** log_eps
    B = slack_b * float(np.abs(X[W]).max())
    S = _sparse(X, W)
    b = eps_rank_lower_bound(S, eps, max_abs=B)
    assert_eps_lower_bound(b, S, eps)
    found, _ = eps_rank_brute_force(X, W, eps, restarts=6, n_iter=40, seed=seed, max_abs=B)
    if found is not None:
        assert b.lower <= found, (b.lower, found)


def test_estimate_with_max_abs_brackets_the_entry_bounded_rank():
    """estimate_min_rank(max_abs=B) passes B to the ε-lower search: on the diagonal-missing
    pattern the lower end rises, the summary says it rests on the entry bound, and the
    bracket stays ordered (the certificate is admissible or the upper end is open)."""
    X, W = _diag_missing(12, seed=5)
    S = _sparse(X, W)
    base = rk.estimate_min_rank(S, eps=1e-3, progress=False)
    est = rk.estimate_min_rank(S, eps=1e-3, progress=False, max_abs=1.0)
    assert base.eps_bounds.max_abs is None
    assert est.eps_bounds.max_abs == 1.0 and est.eps_lower > base.eps_lower
    assert "max_abs = 1" in est.summary()
    assert est.upper is None or est.eps_lower <= est.upper
