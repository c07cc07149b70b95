"""reduce_omega2 (Lemma 3) against a slow row-by-row reference."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankkit import RewardDataset, RewardMatrix
from rankkit.omega import reduce_omega2
from rankkit.trie import build_reward_matrix


def cells(R: RewardMatrix) -> dict:
    """{(row, col): (values, weight, count)} of every stored cell."""
    out = {}
    for r in range(R.shape[0]):
        for k in range(R.indptr[r], R.indptr[r + 1]):
            out[(r, int(R.indices[k]))] = (np.atleast_1d(R.values[k]).tolist(), R.weights[k], R.counts[k])
    return out


def reference_omega2(R: RewardMatrix) -> tuple[dict, int]:
    """Cells of R in rows with >= 2 cells, keyed by R's indices; number of 1-cell rows."""
    c = cells(R)
    per_row: dict = {}
    for (r, j) in c:
        per_row.setdefault(r, []).append(j)
    kept = {k: v for k, v in c.items() if len(per_row[k[0]]) >= 2}
    return kept, sum(len(v) == 1 for v in per_row.values())


@st.composite
def sparse_matrices(draw):
    n, m = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    mask = np.array(draw(st.lists(st.booleans(), min_size=n * m, max_size=n * m))).reshape(n, m)
    vals = np.array(draw(st.lists(st.sampled_from([0.0, -1.5, 2.0, 3.25]), min_size=n * m,
                                  max_size=n * m))).reshape(n, m)
    return RewardMatrix.from_dense(vals, mask)


def check_reduction(R, R2):
    """R has no maps, so R2's maps point straight at R's rows and columns."""
    assert R.row_map is None and R.col_map is None
    ref, n_single = reference_omega2(R)
    back = {(int(R2.row_map[i]), int(R2.col_map[j])): v for (i, j), v in cells(R2).items()}
    assert back == ref
    assert R2.n_single_rows == R.n_single_rows + n_single
    assert np.all(R2.row_nnz >= 2)
    assert np.all(np.bincount(R2.indices, minlength=R2.shape[1]) > 0), "an empty column was kept"
    assert np.all(np.diff(R2.row_map) > 0) and np.all(np.diff(R2.col_map) > 0)


@given(sparse_matrices())
def test_reduce_matches_reference_and_is_idempotent(R):
    R2 = reduce_omega2(R)
    check_reduction(R, R2)
    R3 = reduce_omega2(R2)
    assert R3.shape == R2.shape and R3.n_single_rows == R2.n_single_rows
    for name in ("indptr", "indices", "values", "weights", "counts", "row_map", "col_map"):
        np.testing.assert_array_equal(getattr(R3, name), getattr(R2, name))


@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=6), min_size=1, max_size=15))
def test_reduce_built_matrix_keeps_prefixes(seqs):
    ds = RewardDataset(seqs, np.arange(len(seqs), dtype=float), vocab_size=4)
    R = build_reward_matrix(ds)
    R2 = reduce_omega2(R)
    check_reduction(R, R2)
    for i in range(R2.shape[0]):
        np.testing.assert_array_equal(R2.prefix(i), R.prefix(int(R2.row_map[i])))
    np.testing.assert_array_equal(R2.row_prefix_len, R.row_prefix_len[R2.row_map])
    assert reduce_omega2(R2).prefix_node.tolist() == R2.prefix_node.tolist()


def test_maps_compose_with_existing_maps():
    # R already reduced from a bigger source: its maps must be carried through
    dense = np.array([[1.0, np.nan, 2.0],
                      [np.nan, 3.0, np.nan],
                      [4.0, 5.0, np.nan]])
    R = RewardMatrix.from_dense(dense, row_map=np.array([10, 20, 30]), col_map=np.array([7, 8, 9]),
                                n_single_rows=4)
    R2 = reduce_omega2(R)
    assert R2.row_map.tolist() == [10, 30]
    assert R2.col_map.tolist() == [7, 8, 9]
    assert R2.n_single_rows == 5
    assert R2.to_scipy().toarray().tolist() == [[1.0, 0.0, 2.0], [4.0, 5.0, 0.0]]


def test_empty_rows_dropped_not_counted_and_zero_values_kept():
    dense = np.array([[0.0, 0.0], [np.nan, np.nan], [np.nan, 1.0]])
    R2 = reduce_omega2(RewardMatrix.from_dense(dense))
    assert R2.shape == (1, 2) and R2.nnz == 2 and R2.n_single_rows == 1
    assert R2.to_scipy().nnz == 2  # the observed zeros stay observed


def test_refuses_non_matrix():
    with pytest.raises(TypeError, match="RewardMatrix"):
        reduce_omega2(np.eye(3))
