"""ε-rank lower bounds (rankkit.bounds.eps_rank) against brute force and known answers.

A lower bound is wrong if any completion beats it, so the tests hold it against
completions we can find (brute-force ALS from many starts) and against patterns whose ε-rank
is known in closed form (fully observed matrices and block-diagonal patterns: Eckart–Young).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankkit.bounds import EpsRankLowerBound, SpectralBlock, eps_rank_lower_bound
from rankkit.matrix import RewardMatrix
from rankkit.testing.bounds import assert_eps_lower_bound, eps_rank_brute_force

U64 = np.finfo(np.float64).eps


def ey_rank(blocks, budget):
    """min{k : Σ_b Σ_{t>k} σ_t(B_b)² ≤ budget} from exact-ish singular values."""
    sig = [np.linalg.svd(B, compute_uv=False) for B in blocks]
    k = 0
    while sum(float((s[k:] ** 2).sum()) for s in sig) > budget:
        k += 1
    return k


def margin_ok(blocks, budget, k):
    """The tails at k − 1 and k sit clearly away from the budget (rounding cannot flip them)."""
    sig = [np.linalg.svd(B, compute_uv=False) for B in blocks]
    tails = [sum(float((s[j:] ** 2).sum()) for s in sig) for j in (max(k - 1, 0), k)]
    return all(abs(t - budget) > 1e-9 * max(budget, 1e-300) + 1e-12 for t in tails)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 7), m=st.integers(1, 7), seed=st.integers(0, 10_000),
       log_eps=st.floats(-6, 0))
def test_fully_observed_equals_eckart_young(n, m, seed, log_eps):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, min(n, m))) @ np.diag(np.logspace(0, -3, min(n, m))) \
        @ rng.standard_normal((min(n, m), m))
    R = RewardMatrix.from_dense(X, np.ones_like(X, bool))
    eps = 10.0 ** log_eps
    b = eps_rank_lower_bound(R, eps)
    truth = ey_rank([X], eps * X.size)
    assert b.lower <= truth
    if margin_ok([X], eps * X.size, truth):
        assert b.lower == truth
    assert assert_eps_lower_bound(b, R, eps) >= b.lower


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=4),
       seed=st.integers(0, 10_000), log_eps=st.floats(-5, -0.5))
def test_permuted_block_diagonal_is_exact(sizes, seed, log_eps):
    """Diagonal blocks observed, everything else missing: a rank-k completion can match every
    block's best rank-k approximation independently, so the ε-rank is the joint Eckart–Young
    rank, and the search must find it."""
    rng = np.random.default_rng(seed)
    n, m = sum(a for a, _ in sizes), sum(b for _, b in sizes)
    X, W = np.zeros((n, m)), np.zeros((n, m), bool)
    blocks, r0, c0 = [], 0, 0
    for a, b in sizes:
        B = rng.uniform(-1, 1, (a, b))
        X[r0:r0 + a, c0:c0 + b], W[r0:r0 + a, c0:c0 + b] = B, True
        blocks.append(B)
        r0, c0 = r0 + a, c0 + b
    pr, pc = rng.permutation(n), rng.permutation(m)
    R = RewardMatrix.from_dense(X[pr][:, pc], W[pr][:, pc])
    eps = 10.0 ** log_eps
    budget = eps * W.sum()
    b = eps_rank_lower_bound(R, eps)
    truth = ey_rank(blocks, budget)
    assert b.lower <= truth
    if margin_ok(blocks, budget, truth):
        assert b.lower == truth
    assert_eps_lower_bound(b, R, eps)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 5), m=st.integers(2, 5), density=st.floats(0.4, 1.0),
       seed=st.integers(0, 10_000), log_eps=st.floats(-4, -1))
def test_never_above_brute_force(n, m, density, seed, log_eps):
    """Random patterns and values: every ε-lower ≤ the smallest rank at which brute-force ALS
    (many random starts) finds a completion within ε."""
    rng = np.random.default_rng(seed)
    W = rng.random((n, m)) < density
    W[np.arange(n), rng.integers(0, m, n)] = True
    X = rng.uniform(0, 1, (n, m))
    R = RewardMatrix.from_dense(np.where(W, X, np.nan))
    eps = 10.0 ** log_eps
    b = eps_rank_lower_bound(R, eps)
    found, _ = eps_rank_brute_force(X, W, eps, restarts=6, n_iter=40, seed=seed)
    assert b.lower <= found
    assert_eps_lower_bound(b, R, eps)


def test_many_blocks_beat_one():
    """Each block alone is below the budget; together they prove the rank."""
    rng = np.random.default_rng(0)
    blocks = [np.diag([1.0, 1.0, 0.03]) @ rng.standard_normal((3, 3)) for _ in range(6)]
    sig3 = [np.linalg.svd(B, compute_uv=False)[2] ** 2 for B in blocks]
    budget = 0.5 * sum(sig3)
    assert max(sig3) < budget
    n = 3 * len(blocks)
    X, W = np.zeros((n, n)), np.zeros((n, n), bool)
    for t, B in enumerate(blocks):
        X[3 * t:3 * t + 3, 3 * t:3 * t + 3], W[3 * t:3 * t + 3, 3 * t:3 * t + 3] = B, True
    R = RewardMatrix.from_dense(X, W)
    b = eps_rank_lower_bound(R, budget / W.sum())
    assert b.lower == 3
    assert len(b.blocks) >= 2


def test_zero_matrix_and_rows():
    R = RewardMatrix.from_dense(np.array([[1.0, np.nan], [np.nan, 0.0]]))
    assert eps_rank_lower_bound(R, 0.6).lower == 0  # zero matrix: MSE 0.5 ≤ 0.6
    b = eps_rank_lower_bound(R, 0.4)
    assert b.lower == 1 and b.blocks[0].shape == (1, 1)
    empty = RewardMatrix.from_dense(np.full((2, 2), np.nan))
    assert eps_rank_lower_bound(empty, 0.0).lower == 0


def test_unit_triangle_bound_is_one():
    """Lemma 2's triangle: every fully observed block holds at most one diagonal cell, so
    Eckart–Young proves only ε-rank ≥ 1 (and indeed lower ε-ranks fit: not a failure)."""
    import rankkit as rk

    R2 = rk.reduce_omega2(rk.synthetic.upper_triangular(13))
    assert eps_rank_lower_bound(R2, 1e-6).lower == 1


def test_verify_rejects_tampering():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4, 4))
    W = np.ones((4, 4), bool)
    W[0, 0] = False
    R = RewardMatrix.from_dense(X, W)
    b = eps_rank_lower_bound(R, 1e-3)
    assert b.lower >= 2
    assert b.verify(R) == b.lower
    blk = b.blocks[0]
    # an unobserved cell
    bad = SpectralBlock(np.arange(4), np.arange(4), blk.sigma, blk.slack)
    with pytest.raises(ValueError, match="not observed"):
        EpsRankLowerBound(b.lower, b.eps, b.n_cells, b.budget, (bad,), b.shape, b.nnz).verify(R)
    # overlapping blocks
    with pytest.raises(ValueError, match="shares cell"):
        EpsRankLowerBound(b.lower, b.eps, b.n_cells, b.budget, (blk, blk), b.shape, b.nnz).verify(R)
    # a claim the blocks do not prove
    with pytest.raises(ValueError, match="less than the claimed"):
        EpsRankLowerBound(b.lower + 2, b.eps, b.n_cells, b.budget, b.blocks, b.shape, b.nnz).verify(R)
    # a budget that is not eps × n_cells
    with pytest.raises(ValueError, match="budget"):
        EpsRankLowerBound(b.lower, b.eps, b.n_cells, b.budget * 2, b.blocks, b.shape, b.nnz).verify(R)
    again = EpsRankLowerBound.from_dict(b.to_dict())
    assert again.verify(R) == b.lower


def test_brute_force_reference_is_sound():
    """The reference itself: exact on a fully observed rank-2 matrix."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((4, 2)) @ rng.standard_normal((2, 5))
    k, best = eps_rank_brute_force(X, np.ones_like(X, bool), 1e-10)
    assert k == 2 and best[1] > 1e-3


def test_k_max_caps_the_search():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((6, 6))
    R = RewardMatrix.from_dense(X, np.ones_like(X, bool))
    assert eps_rank_lower_bound(R, 1e-8).lower == 6
    assert eps_rank_lower_bound(R, 1e-8, k_max=2).lower <= 6
    assert eps_rank_lower_bound(R, 1e-8, k_max=2).lower >= 3


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(2, 5), st.integers(2, 5)), min_size=1, max_size=4),
       seed=st.integers(0, 10_000), log_eps=st.floats(-5, -0.5), density=st.floats(0.3, 1.0))
def test_ceiling_bounds_every_family(sizes, seed, log_eps, density):
    """No family of blocks proves more than the ceiling, and the search reaches it when the
    blocks are the diagonal blocks of a permuted block-diagonal pattern."""
    from rankkit.bounds import block_bound_ceiling

    rng = np.random.default_rng(seed)
    n, m = sum(a for a, _ in sizes), sum(b for _, b in sizes)
    X, W = rng.uniform(-1, 1, (n, m)), np.zeros((n, m), bool)
    r0 = c0 = 0
    for a, b in sizes:
        W[r0:r0 + a, c0:c0 + b] = True
        r0, c0 = r0 + a, c0 + b
    W |= rng.random((n, m)) < (1 - density) * 0.3  # some extra observed cells off the blocks
    R = RewardMatrix.from_dense(X, W)
    eps = 10.0 ** log_eps
    b = eps_rank_lower_bound(R, eps)
    ceiling, complete = block_bound_ceiling(R, eps)
    assert complete
    assert b.lower <= max(ceiling, 1) or b.lower == 0
