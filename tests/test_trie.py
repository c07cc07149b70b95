"""build_reward_matrix against the slow dict reference (paper 002, eq. 4–5)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankkit import RewardDataset, RewardMatrix
from rankkit.testing.matrix import assert_reward_matrix_equal, reward_matrix_dict
from rankkit.trie import build_reward_matrix


@st.composite
def datasets(draw):
    """Small alphabets and a pool of base sequences reused (whole or cut), so duplicates,
    shared prefixes, prefixes of other utterances and length-1 utterances are common."""
    vocab = draw(st.integers(1, 5))
    pool = draw(st.lists(st.lists(st.integers(0, vocab - 1), min_size=0, max_size=7),
                         min_size=1, max_size=6))
    picks = draw(st.lists(st.tuples(st.integers(0, len(pool) - 1), st.integers(0, 7)),
                          min_size=1, max_size=25))
    seqs = [pool[i][:cut] for i, cut in picks]
    n_labels = draw(st.sampled_from([0, 1, 3]))  # 0: 1-D responses
    shape = (len(seqs),) if n_labels == 0 else (len(seqs), n_labels)
    y = np.array(draw(st.lists(st.floats(-10, 10), min_size=int(np.prod(shape)),
                               max_size=int(np.prod(shape))))).reshape(shape)
    max_len = draw(st.one_of(st.none(), st.integers(1, 8)))
    return seqs, y, vocab, max_len


@given(datasets())
def test_build_equals_dict_reference(case):
    seqs, y, vocab, max_len = case
    ds = RewardDataset(seqs, y, vocab_size=vocab)
    R = build_reward_matrix(ds, max_len=max_len)
    assert R.shape[1] == vocab
    assert R.values.shape[1:] == y.shape[1:]
    assert_reward_matrix_equal(R, reward_matrix_dict(ds, max_len), scale=max(1.0, np.abs(y).max()))


@given(datasets())
def test_rows_ordered_and_weights_sum_to_one_per_utterance(case):
    seqs, y, vocab, max_len = case
    ds = RewardDataset(seqs, y, vocab_size=vocab)
    R = build_reward_matrix(ds, max_len=max_len)
    eps = np.finfo(np.float64).eps
    # λ of one utterance sums to 1 over its L cells (eq. 4), so Σ weights = n utterances
    np.testing.assert_allclose(R.weights.sum(), len(ds), rtol=8 * eps * max(1, R.nnz))
    lengths = np.minimum(ds.sequences.lengths, max_len or 10**9)
    assert R.counts.sum() == lengths.sum()
    if R.shape[0] == 0:
        return
    # rows: by prefix length, then lexicographic; parent links spell the prefix
    prefixes = [tuple(R.prefix(r).tolist()) for r in range(R.shape[0])]
    assert prefixes == sorted(prefixes, key=lambda p: (len(p), p))
    assert R.prefix_parent[0] == -1 and R.prefix_len[0] == 0
    for r in range(1, R.shape[0]):
        assert prefixes[R.prefix_parent[r]] + (int(R.prefix_token[r]),) == prefixes[r]
    np.testing.assert_array_equal(R.row_prefix_len, [len(p) for p in prefixes])


def test_hand_example_eq5():
    # u1 = [1, 2] (y=0), u2 = [1, 3, 3] (y=6): cell ([], 1) mixes λ=1/3 (t=1, L=2) and
    # λ=1/6 (t=1, L=3) → (1/3·0 + 1/6·6) / (1/2) = 2
    ds = RewardDataset([[1, 2], [1, 3, 3]], [0.0, 6.0], vocab_size=4)
    R = build_reward_matrix(ds)
    assert R.shape == (3, 4) and R.nnz == 4
    cols, vals = R.row(0)
    assert cols.tolist() == [1] and vals[0] == pytest.approx(2.0, rel=4 * np.finfo(float).eps)
    assert R.weights[0] == pytest.approx(0.5) and R.counts[0] == 2
    assert R.prefix(1).tolist() == [1] and R.row(1)[0].tolist() == [2, 3]
    assert R.prefix(2).tolist() == [1, 3]


def test_max_len_truncates_before_weighting():
    ds = RewardDataset([[1, 2, 3, 0]], [1.0], vocab_size=4)
    R = build_reward_matrix(ds, max_len=2)
    # the truncated utterance [1, 2] has L = 2: λ = (1/3, 2/3)
    np.testing.assert_allclose(R.weights, [1 / 3, 2 / 3], rtol=4 * np.finfo(float).eps)
    assert R.meta["max_len"] == 2


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_max_len_refused(bad):
    ds = RewardDataset([[1]], [1.0], vocab_size=2)
    with pytest.raises(ValueError, match="max_len must be a positive int"):
        build_reward_matrix(ds, max_len=bad)


def test_not_a_dataset_refused():
    with pytest.raises(TypeError, match="RewardDataset"):
        build_reward_matrix([[1, 2]])


def test_all_empty_dataset_gives_empty_matrix():
    ds = RewardDataset([[], []], [1.0, 2.0], vocab_size=3)
    R = build_reward_matrix(ds)
    assert R.shape == (0, 3) and R.nnz == 0 and R.meta["n_dropped_empty"] == 2


def test_progress_bar_does_not_change_result(capsys):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 6, rng.integers(1, 9)).tolist() for _ in range(40)]
    ds = RewardDataset(seqs, rng.normal(size=(40, 2)), vocab_size=6)
    a, b = build_reward_matrix(ds), build_reward_matrix(ds, progress=True)
    assert "build_reward_matrix" in capsys.readouterr().err
    for name in ("indptr", "indices", "values", "weights", "counts", "prefix_parent"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_larger_random_against_reference(rng):
    # many sequences over a Zipf-like vocabulary: exercises the merge passes of the sort
    n, vocab = 3000, 40
    lengths = rng.integers(1, 12, n)
    seqs = [np.minimum(rng.zipf(1.5, L) - 1, vocab - 1).tolist() for L in lengths]
    y = rng.normal(size=n)
    ds = RewardDataset(seqs, y, vocab_size=vocab)
    R = build_reward_matrix(ds)
    assert isinstance(R, RewardMatrix)
    assert_reward_matrix_equal(R, reward_matrix_dict(ds), scale=np.abs(y).max())
