"""Structural lower bounds on the exact minimal rank (rankkit.bounds).

Soundness is checked against completions we know: every completion of the observed cells
has rank >= the bound, in particular the low-rank matrix that generated them.
"""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from rankkit.bounds import (
    BlockCertificate,
    TriangularCertificate,
    full_block_bound,
    rank_lower_bound,
    triangular_bound,
)
from rankkit.matrix import RewardMatrix


def lemma2_matrix(n, rng, *, zeros_below=True, diag=None, fill_other=False):
    """Lemma 2 pattern: nonzero diagonal, observed zeros on one side, randomly permuted.

    Returns the matrix and the permutations so the test knows the true structure."""
    mask = np.tril(np.ones((n, n), bool)) if zeros_below else np.triu(np.ones((n, n), bool))
    vals = np.zeros((n, n))
    vals[np.diag_indices(n)] = 1.0 if diag is None else diag
    if fill_other:  # observe some cells on the free side too, with arbitrary values
        extra = ~mask & (rng.random((n, n)) < 0.5)
        vals[extra] = rng.normal(size=int(extra.sum()))
        mask |= extra
    pr, pc = rng.permutation(n), rng.permutation(n)
    return RewardMatrix.from_dense(vals[pr][:, pc], mask[pr][:, pc])


@pytest.mark.parametrize("n", [1, 2, 5, 16, 40])
@pytest.mark.parametrize("zeros_below", [True, False])
def test_permuted_lemma2_pattern_gives_full_rank(n, zeros_below, rng):
    R = lemma2_matrix(n, rng, zeros_below=zeros_below)
    cert = triangular_bound(R)
    assert cert.size == n
    assert cert.verify(R) == n
    assert rank_lower_bound(R).lower == n


def test_lemma2_with_arbitrary_diagonal_and_observed_free_side(rng):
    n = 12
    diag = rng.choice([-3.0, 0.5, 1e-12, 7.0], size=n)  # any nonzero works, however small
    R = lemma2_matrix(n, rng, diag=diag, fill_other=True)
    cert = triangular_bound(R)
    assert cert.verify(R) == n == cert.size


def test_explicit_zeros_of_scipy_input_are_observations():
    n = 6
    mask = np.tril(np.ones((n, n), bool))
    r, c = np.nonzero(mask)
    S = sp.csr_matrix((np.eye(n)[r, c], (r, c)), shape=(n, n))  # stores the zeros explicitly
    assert S.nnz == mask.sum()
    assert rank_lower_bound(S).lower == n
    S.eliminate_zeros()  # now only the diagonal is observed: rank-1 completions exist
    assert rank_lower_bound(S).lower == 1


def test_all_zero_and_empty_matrices():
    Z = RewardMatrix.from_dense(np.zeros((4, 3)))
    b = rank_lower_bound(Z)
    assert (b.lower, b.any_nonzero, b.triangular.size, b.block.rank) == (0, False, 0, 0)
    E = RewardMatrix.from_coo([], [], np.zeros(0), (3, 3))
    assert rank_lower_bound(E).lower == 0
    one = RewardMatrix.from_coo([2], [1], [0.25], (3, 3))
    assert rank_lower_bound(one).lower == 1


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_fully_observed_block_finds_the_rank_of_dense_low_rank_data(rank, rng):
    n, m = 40, 25
    M = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, m))
    mask = rng.random((n, m)) < 0.9
    R = RewardMatrix.from_dense(M, mask)
    blk = full_block_bound(R)
    assert blk.rank == rank == np.linalg.matrix_rank(M)
    assert blk.verify(R) == rank
    b = rank_lower_bound(R)
    assert b.lower == rank
    assert b.verify(R) == rank


def test_block_certificate_is_a_fully_observed_block(rng):
    M = rng.normal(size=(30, 30))
    R = RewardMatrix.from_dense(M, rng.random((30, 30)) < 0.7)
    blk = full_block_bound(R, max_seeds=8)
    assert blk.rank >= 1
    dense_mask = R.to_scipy().toarray() != 0  # normal values: no exact zeros here
    assert dense_mask[np.ix_(blk.rows, blk.cols)].all()
    assert blk.rank == np.linalg.matrix_rank(M[np.ix_(blk.rows, blk.cols)])


# ---- certificate checkers reject what they must -------------------------------------------
def test_triangular_checker_names_the_broken_cell(rng):
    R = lemma2_matrix(5, rng)
    cert = triangular_bound(R)
    rev = TriangularCertificate(cert.rows[::-1], cert.cols[::-1])  # zeros now above
    with pytest.raises(ValueError, match="below the diagonal"):
        rev.verify(R)
    swapped = TriangularCertificate(cert.rows, np.roll(cert.cols, 1))
    with pytest.raises(ValueError, match="diagonal cell 0"):
        swapped.verify(R)
    dup = TriangularCertificate(np.r_[cert.rows[:2], cert.rows[0]], cert.cols[:3])
    with pytest.raises(ValueError, match="appears more than once"):
        dup.verify(R)
    with pytest.raises(ValueError, match="outside"):
        TriangularCertificate(np.array([99]), np.array([0])).verify(R)


def test_block_checker_refuses_unobserved_cells_and_overclaimed_rank():
    vals = np.array([[1.0, 2.0], [2.0, 4.0]])
    R = RewardMatrix.from_dense(vals, np.array([[True, True], [True, False]]))
    with pytest.raises(ValueError, match=r"row 1, column 1\) is not observed"):
        BlockCertificate(np.array([0, 1]), np.array([0, 1]), 2).verify(R)
    full = RewardMatrix.from_dense(vals)
    with pytest.raises(ValueError, match="numerical rank 1, less than the claimed 2"):
        BlockCertificate(np.array([0, 1]), np.array([0, 1]), 2).verify(full)


def test_non_matrix_input_is_refused():
    with pytest.raises(TypeError, match="RewardMatrix or a scipy.sparse"):
        rank_lower_bound(np.eye(3))


# ---- soundness: the bound never exceeds the rank of any completion ------------------------
@st.composite
def integer_low_rank(draw):
    """Small integer low-rank generator (exact arithmetic, many exact zeros) and a mask."""
    n = draw(st.integers(1, 9))
    m = draw(st.integers(1, 9))
    r = draw(st.integers(0, min(n, m)))
    seed = draw(st.integers(0, 2**32 - 1))
    g = np.random.default_rng(seed)
    A = g.integers(-1, 2, size=(n, r)).astype(float)
    B = g.integers(-1, 2, size=(r, m)).astype(float)
    density = draw(st.sampled_from([0.3, 0.6, 0.9, 1.0]))
    mask = g.random((n, m)) < density
    return A @ B, mask, g


@given(integer_low_rank())
def test_lower_bound_never_exceeds_the_generating_rank(case):
    M, mask, g = case
    R = RewardMatrix.from_dense(M, mask)
    b = rank_lower_bound(R)
    assert b.verify(R) >= b.lower
    # the generator is one completion; random fills of the unobserved cells are others
    assert b.lower <= np.linalg.matrix_rank(M)
    for _ in range(3):
        fill = np.where(mask, M, g.integers(-2, 3, size=M.shape))
        assert b.lower <= np.linalg.matrix_rank(fill)
    if mask.all():  # a fully observed matrix has exactly one completion
        assert b.lower == np.linalg.matrix_rank(M)


def test_block_search_keeps_rows_that_cover_the_block():
    """Found by hypothesis: the first |J| rows grown from the seed hold two zero rows (rank
    2); the fifth row is observed on every column of J and raises the rank to 3. The greedy
    search stopped at |I| = |J| and claimed 2 for a fully observed rank-3 matrix."""
    M = np.array([[0, 0, 0, 0], [-1, 0, -1, 1], [0, 0, 0, 0], [0, 1, 2, -1], [0, 1, -2, 2.0]])
    b = rank_lower_bound(RewardMatrix.from_dense(M, np.ones_like(M, bool)))
    assert b.lower == np.linalg.matrix_rank(M) == 3
    assert b.block.rows.size == 5


@given(st.integers(1, 12), st.integers(0, 2**32 - 1), st.sampled_from([0.2, 0.5, 0.8]))
def test_triangle_certificates_on_random_sparse_patterns_verify(n, seed, p_zero):
    g = np.random.default_rng(seed)
    mask = g.random((n, n + 2)) < 0.6
    vals = np.where(g.random((n, n + 2)) < p_zero, 0.0, g.normal(size=(n, n + 2)))
    R = RewardMatrix.from_dense(vals, mask)
    for transpose in (False, True):
        cert = triangular_bound(R, transpose=transpose)
        assert cert.verify(R) == cert.size
    assert triangular_bound(R, transpose=True).size >= triangular_bound(R, transpose=False).size
