"""TokenSequences / RewardDataset: construction, validation messages, slicing."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankkit import RewardDataset, TokenSequences

ragged = st.lists(st.lists(st.integers(0, 2**31 - 1), max_size=6), max_size=12)


@given(ragged)
def test_from_lists_round_trip(seqs):
    s = TokenSequences.from_lists(seqs)
    assert len(s) == len(seqs) and s.to_lists() == seqs
    assert s.tokens.dtype == np.int32 and s.offsets.dtype == np.int64
    assert s.lengths.tolist() == [len(q) for q in seqs]


@given(ragged, st.data())
def test_select_and_truncate_match_python(seqs, data):
    s = TokenSequences.from_lists(seqs)
    idx = data.draw(st.lists(st.integers(0, max(len(seqs) - 1, 0)), max_size=8)) if seqs else []
    assert s.select(np.array(idx, dtype=np.int64)).to_lists() == [seqs[i] for i in idx]
    k = data.draw(st.integers(1, 7))
    assert s.truncate(k).to_lists() == [q[:k] for q in seqs]


def test_from_padded_lengths_and_mask():
    ids = np.array([[5, 6, 0], [7, 0, 0], [1, 2, 3]])
    assert TokenSequences.from_padded(ids, lengths=[2, 1, 3]).to_lists() == [[5, 6], [7], [1, 2, 3]]
    mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert TokenSequences.from_padded(ids, attention_mask=mask).to_lists() == [[5, 6], [7], []]
    with pytest.raises(ValueError, match="row 1: attention_mask is not right-padded"):
        TokenSequences.from_padded(ids, attention_mask=[[1, 1, 1], [0, 1, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"row 0: length 4 outside \[0, 3\]"):
        TokenSequences.from_padded(ids, lengths=[4, 1, 1])
    with pytest.raises(ValueError, match="3 rows, 2 lengths"):
        TokenSequences.from_padded(ids, lengths=[1, 1])


def test_from_encoding_variants():
    torch = pytest.importorskip("torch")
    lists = {"input_ids": [[3, 4], [5]]}
    assert TokenSequences.from_encoding(lists).to_lists() == [[3, 4], [5]]
    enc = {"input_ids": torch.tensor([[3, 4], [5, 0]]), "attention_mask": torch.tensor([[1, 1], [1, 0]])}
    assert TokenSequences.from_encoding(enc).to_lists() == [[3, 4], [5]]
    assert TokenSequences.from_encoding(np.array([[1, 2]])).to_lists() == [[1, 2]]
    s = TokenSequences.from_lists([[1]])
    assert TokenSequences.from_encoding(s) is s


def test_token_sequences_refusals():
    with pytest.raises(ValueError, match="offsets must start at 0 and end at len"):
        TokenSequences(np.array([1, 2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="sequence 1 has negative length"):
        TokenSequences(np.array([1, 2]), np.array([0, 2, 1, 2]))
    with pytest.raises(TypeError, match="tokens must be integers"):
        TokenSequences(np.array([1.5]), np.array([0, 1]))
    with pytest.raises(TypeError, match="sequence 1: token ids must be integers"):
        TokenSequences.from_lists([[1, 2], [1.5]])
    with pytest.raises(ValueError, match="sequence 1, position 0: token id 4294967296 does not fit"):
        TokenSequences(np.array([1, 2**32]), np.array([0, 1, 2]))
    with pytest.raises(IndexError, match="sequence index 2 out of range for 2"):
        TokenSequences.from_lists([[1], [2]])[2]


def test_dataset_validation_names_the_row():
    with pytest.raises(ValueError, match=r"row 1: response \[nan\] is not finite"):
        RewardDataset([[1], [2]], [[0.0], [np.nan]], vocab_size=3)
    with pytest.raises(ValueError, match=r"row 1, position 2: token id 3 is outside \[0, vocab_size=3\)"):
        RewardDataset([[1], [0, 1, 3]], [0.0, 1.0], vocab_size=3)
    with pytest.raises(ValueError, match=r"row 0, position 0: token id -1"):
        RewardDataset([[-1]], [0.0], vocab_size=3)
    with pytest.raises(ValueError, match="length mismatch: 2 sequences but 3 responses"):
        RewardDataset([[1], [2]], [0.0, 1.0, 2.0], vocab_size=3)
    with pytest.raises(ValueError, match="vocab_size is required"):
        RewardDataset([[1]], [0.0])
    with pytest.raises(ValueError, match="2 label_names for 1 response columns"):
        RewardDataset([[1]], [0.0], label_names=["a", "b"], vocab_size=3)


def test_empty_sequences_dropped_and_counted():
    ds = RewardDataset([[1], [], [2, 2], []], [[0.0, 1], [1, 1], [2, 1], [3, 1]], vocab_size=3,
                       texts=["a", "", "bb", ""], label_names=("x", "y"))
    assert len(ds) == 2 and ds.n_dropped_empty == 2
    assert ds.kept_index.tolist() == [0, 2] and ds.texts == ("a", "bb")
    np.testing.assert_array_equal(ds.responses, [[0.0, 1], [2, 1]])
    assert ds.n_labels == 2 and ds.label_index("y") == 1
    assert "dropped_empty=2" in repr(ds)


def test_bad_responses_name_the_row_and_column():
    # issue 12: ragged 2-D labels and non-numbers failed with NumPy's shape messages
    from rankkit.sequences import RewardDataset

    seqs = [[1, 2], [3], [4, 5]]
    with pytest.raises(ValueError, match="row 1 has 1 value\\(s\\) but row 0 has 2"):
        RewardDataset(seqs, [[1.0, 2.0], [1.0], [0.5, 0.5]], vocab_size=10)
    with pytest.raises(ValueError, match="row 2, column 1: 'x' is not a number"):
        RewardDataset(seqs, [[1.0, 2.0], [1.0, 0.0], [0.5, "x"]], vocab_size=10)
    with pytest.raises(ValueError, match="row 1: 'bad' is not a number"):
        RewardDataset(seqs, ["1.0", "bad", "0.2"], vocab_size=10)
    ds = RewardDataset(seqs, ["1.0", "0.5", "0.2"], vocab_size=10)  # numeric strings are numbers
    assert ds.responses.tolist() == [1.0, 0.5, 0.2]


def _pad_slow(rows, side, pad, prepend, width):
    """The obvious per-row loop to_padded must agree with."""
    rows = [list(prepend) + list(r) for r in rows]
    T = width if width is not None else max([len(r) for r in rows], default=len(prepend))
    ids = [[pad] * T for _ in rows]
    mask = [[0] * T for _ in rows]
    for i, r in enumerate(rows):
        start = T - len(r) if side == "left" else 0
        for j, t in enumerate(r):
            ids[i][start + j], mask[i][start + j] = t, 1
    return np.array(ids, dtype=np.int64).reshape(len(rows), T), \
        np.array(mask, dtype=np.int64).reshape(len(rows), T)


@given(rows=st.lists(st.lists(st.integers(0, 50), max_size=6), max_size=6),
       side=st.sampled_from(["left", "right"]), pad=st.integers(-1, 60),
       prepend=st.lists(st.integers(0, 50), max_size=2), extra=st.integers(0, 2),
       fixed=st.booleans())
def test_to_padded_matches_the_row_loop(rows, side, pad, prepend, extra, fixed):
    seqs = TokenSequences.from_lists(rows)
    need = max([len(r) + len(prepend) for r in rows], default=len(prepend))
    width = need + extra if fixed else None
    ids, mask = seqs.to_padded(side, pad, prepend, width)
    ref_ids, ref_mask = _pad_slow(rows, side, pad, prepend, width)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(mask, ref_mask)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    if side == "right" and not prepend:  # the inverse of from_padded
        back = TokenSequences.from_padded(ids, attention_mask=mask)
        assert back.to_lists() == [list(r) for r in rows]


def test_to_padded_refuses_a_width_that_would_cut():
    seqs = TokenSequences.from_lists([[1, 2], [3, 4, 5]])
    with pytest.raises(ValueError, match=r"width=3 is shorter than row 1 \(4 tokens with prepend\)"):
        seqs.to_padded("left", 0, [9], width=3)
    with pytest.raises(ValueError, match="side must be"):
        seqs.to_padded("top")


def test_reward_dataset_select_keeps_rows_together():
    ds = RewardDataset([[1, 2], [], [3], [4, 5, 6]], [[0.1, 1], [0.2, 2], [0.3, 3], [0.4, 4]],
                       label_names=["a", "b"], vocab_size=10, texts=["x", "", "y", "z"])
    sub = ds.select([2, 0, -1])  # rows of the kept dataset (input rows 0, 2, 3)
    assert sub.sequences.to_lists() == [[4, 5, 6], [1, 2], [4, 5, 6]]
    np.testing.assert_array_equal(sub.responses, [[0.4, 4], [0.1, 1], [0.4, 4]])
    assert sub.texts == ("z", "x", "z") and sub.label_names == ("a", "b")
    np.testing.assert_array_equal(sub.kept_index, [3, 0, 3])  # rows of the original input
    mask = ds.select(np.array([True, False, True]))
    assert mask.sequences.to_lists() == [[1, 2], [4, 5, 6]]
    with pytest.raises(IndexError, match="index 3 is out of range for a dataset of 3 rows"):
        ds.select([0, 3])
    with pytest.raises(ValueError, match="boolean mask has shape"):
        ds.select(np.array([True, False]))
