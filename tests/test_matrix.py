"""RewardMatrix construction, refusals and views."""

import numpy as np
import pytest
import scipy.sparse as sp

from rankkit import RewardDataset, RewardMatrix
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
