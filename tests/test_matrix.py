"""RewardMatrix construction, refusals and views."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from rankkit import RewardDataset, RewardMatrix
from rankkit.matrix import as_reward_matrix
from rankkit.omega import reduce_omega2
from rankkit.trie import build_reward_matrix


@pytest.mark.parametrize("rows, cols, vals, match", [
    ([0, 3], [0, 1], [1.0, 2.0], r"entry 1: row 3 outside \[0, 3\)"),
    ([0, 1], [0, -1], [1.0, 2.0], r"entry 1: column -1 outside \[0, 2\)"),
    ([0, 0], [1, 1], [1.0, 2.0], r"cell \(row 0, column 1\) is given more than once"),
    ([0, 1], [0, 1], [1.0, np.nan], r"entry 1 \(row 1, column 1\): value is not finite"),
    ([0, 1], [0], [1.0, 2.0], "disagree in length"),
])
def test_from_coo_refusals_name_the_entry(rows, cols, vals, match):
    with pytest.raises(ValueError, match=match):
        RewardMatrix.from_coo(rows, cols, vals, (3, 2))


def test_from_scipy_refuses_duplicates_instead_of_summing():
    S = sp.coo_matrix(([1.0, 2.0], ([0, 0], [1, 1])), shape=(2, 2))
    with pytest.raises(ValueError, match="more than once"):
        RewardMatrix.from_scipy(S)
    with pytest.raises(TypeError, match="scipy.sparse"):
        RewardMatrix.from_scipy(np.eye(2))


def test_explicit_zeros_are_observations(rng):
    dense = rng.normal(size=(5, 4))
    mask = rng.random((5, 4)) < 0.6
    dense[mask & (rng.random((5, 4)) < 0.5)] = 0.0  # observed zeros
    R = RewardMatrix.from_dense(dense, mask)
    S = R.to_scipy()
    assert S.nnz == mask.sum() == R.nnz  # zeros counted
    back = RewardMatrix.from_scipy(S)
    np.testing.assert_array_equal(back.indices, R.indices)
    np.testing.assert_array_equal(back.indptr, R.indptr)
    np.testing.assert_array_equal(S.toarray(), np.where(mask, dense, 0.0))
    assert R.weights.tolist() == [1.0] * R.nnz and R.counts.tolist() == [1] * R.nnz


def test_multilabel_views_and_label_names():
    R = RewardMatrix.from_coo([0, 1], [1, 0], [[1.0, 2.0], [3.0, 4.0]], (2, 2), label_names=("a", "b"))
    assert R.n_labels == 2
    np.testing.assert_array_equal(R.label_values("b"), [2.0, 4.0])
    np.testing.assert_array_equal(R.to_scipy("a").toarray(), [[0, 1.0], [3.0, 0]])
    with pytest.raises(KeyError, match="label 'c' not found"):
        R.label_values("c")


def test_prefix_on_built_and_plain_matrices():
    ds = RewardDataset([[2, 0, 1], [2, 1]], [1.0, 0.0], vocab_size=3)
    R = build_reward_matrix(ds)
    spelled = sorted(tuple(R.prefix(r).tolist()) for r in range(R.shape[0]))
    assert spelled == [(), (2,), (2, 0)]
    with pytest.raises(IndexError, match="row 3 out of range"):
        R.prefix(3)
    plain = RewardMatrix.from_dense(np.eye(2))
    with pytest.raises(ValueError, match="carries no prefixes"):
        plain.prefix(0)


def test_constructor_validation():
    ok = dict(shape=(2, 2), indptr=[0, 1, 2], indices=[0, 1], values=[1.0, 2.0],
              weights=[1.0, 1.0], counts=[1, 1])
    RewardMatrix(**ok)
    with pytest.raises(ValueError, match="indptr"):
        RewardMatrix(**{**ok, "indptr": [0, 2, 1]})
    with pytest.raises(ValueError, match=r"column indices must lie in \[0, 2\)"):
        RewardMatrix(**{**ok, "indices": [0, 2]})
    with pytest.raises(ValueError, match="given together"):
        RewardMatrix(**ok, prefix_parent=np.array([-1, 0]))
    with pytest.raises(ValueError, match="prefix_node given without"):
        RewardMatrix(**ok, prefix_node=np.array([0, 1]))
    trie = dict(prefix_parent=np.array([-1, 0, 1]), prefix_token=np.array([-1, 1, 0]),
                prefix_len=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"prefix_parent must have shape \(2,\)"):
        RewardMatrix(**ok, **trie)
    R = RewardMatrix(**ok, **trie, prefix_node=np.array([2, 1]))  # a 3-node trie, 2 rows
    assert R.prefix(0).tolist() == [1, 0] and R.row_prefix_len.tolist() == [2, 1]


@st.composite
def _matrices(draw):
    """Random observed patterns with observed zeros, 1 or 2 labels, varied weights/counts."""
    n, m = draw(st.integers(0, 7)), draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**32 - 1))
    n_labels = draw(st.sampled_from([None, 1, 2]))  # None: 1-D values
    rng = np.random.default_rng(seed)
    mask = rng.random((n, m)) < draw(st.floats(0, 1))
    r, c = np.nonzero(mask)
    shape = (r.size,) if n_labels is None else (r.size, n_labels)
    vals = rng.integers(-2, 3, size=shape).astype(float)  # many observed zeros
    names = None if n_labels is None else [f"y{k}" for k in range(n_labels)]
    return RewardMatrix.from_coo(r, c, vals, (n, m), weights=rng.random(r.size) + 0.5,
                                 counts=rng.integers(1, 9, r.size), label_names=names,
                                 meta={"source": "test"})


def _pattern(S):
    return sp.csr_matrix((np.ones(S.nnz), S.indices, S.indptr), shape=S.shape).toarray()


@given(_matrices())
def test_transpose_twice_is_the_identity(R):
    T = R.transpose()
    assert T.shape == R.shape[::-1] and T.nnz == R.nnz
    assert T.label_names == R.label_names and T.meta == R.meta and T.meta is not R.meta
    assert T.prefix_parent is None and T.values.shape == (R.nnz,) + R.values.shape[1:]
    for a, b in zip(np.split(T.indices, T.indptr[1:-1]), range(T.shape[0]), strict=True):
        assert np.all(np.diff(a) > 0), f"row {b} of the transpose is not sorted"
    back = T.transpose()
    for name in ("indptr", "indices", "values", "weights", "counts"):
        np.testing.assert_array_equal(getattr(back, name), getattr(R, name), err_msg=name)
        assert getattr(back, name).dtype == getattr(R, name).dtype, name


@given(_matrices())
def test_transpose_matches_scipy_with_explicit_zeros(R):
    T = R.transpose()
    for j in range(R.n_labels):
        S = R.to_scipy(j)
        np.testing.assert_array_equal(T.to_scipy(j).toarray(), S.toarray().T)
        np.testing.assert_array_equal(_pattern(T.to_scipy(j)), _pattern(S).T)  # zeros kept
    # weights and counts follow their cells
    W = sp.csr_matrix((R.weights, R.indices, R.indptr), shape=R.shape).toarray()
    np.testing.assert_array_equal(
        sp.csr_matrix((T.weights, T.indices, T.indptr), shape=T.shape).toarray(), W.T)


def test_transpose_swaps_maps_and_drops_the_trie():
    ds = RewardDataset([[2, 0, 1], [2, 1], [0, 1], [0, 2], [3, 4]], [1.0, 0.0, 0.5, 0.0, 1.0],
                       vocab_size=5)
    R2 = reduce_omega2(build_reward_matrix(ds))
    T = R2.transpose()
    assert R2.shape == (3, 4) and T.shape == (4, 3)
    assert R2.prefix_parent is not None and T.prefix_parent is None and T.prefix_node is None
    np.testing.assert_array_equal(T.row_map, R2.col_map)
    np.testing.assert_array_equal(T.col_map, R2.row_map)
    assert T.n_single_rows == R2.n_single_rows
    with pytest.raises(ValueError, match="carries no prefixes"):
        T.prefix(0)


def test_as_reward_matrix_coerces_sparse_and_refuses_the_rest():
    R = RewardMatrix.from_dense(np.eye(2))
    assert as_reward_matrix(R) is R
    S = sp.csr_array(([0.0, 2.0], ([0, 1], [1, 1])), shape=(2, 3))  # an explicit zero
    got = as_reward_matrix(S, label_name="y")
    assert got.nnz == 2 and got.label_names == ("y",) and got.values.tolist() == [0.0, 2.0]
    with pytest.raises(TypeError, match=r"got numpy\.ndarray.*datasets\.load.*from_dense"):
        as_reward_matrix(np.eye(2))
    with pytest.raises(TypeError, match="got list.*estimate_min_rank"):
        as_reward_matrix([[1.0]])
