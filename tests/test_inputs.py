"""One input language: every public entry point of the core that takes data reads a CSV path
and a list of (text, label) pairs exactly as it reads the RewardDataset they describe (all
through rankkit.datasets.as_dataset)."""


import numpy as np
import pytest

import rankkit as rk
import rankkit.distributed as rd
from rankkit import datasets as D
from rankkit import tokenizers

TEXTS = ["good day", "bad day", "good night", "a bad bad night", "good good day"]
YS = [1.0, 0.0, 0.75, 0.0, 1.0]
PAIRS = list(zip(TEXTS, YS, strict=True))


@pytest.fixture(scope="module")
def tok():
    return tokenizers.load("gpt2")


@pytest.fixture(scope="module")
def csv_path(pairs_csv):
    return pairs_csv(PAIRS)


@pytest.fixture(scope="module")
def reference(tok):
    ds = D.as_dataset((TEXTS, YS), tokenizer=tok)
    assert len(ds) == len(TEXTS)
    return ds


def _same_matrix(a, b):
    assert a.shape == b.shape and a.nnz == b.nnz
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.values, b.values)


def _sources(csv_path):
    return {"csv path": str(csv_path), "pairs": PAIRS}


def test_pairs_list_is_the_tuple_of_columns(tok, reference):
    got = D.as_dataset(PAIRS, tokenizer=tok)
    np.testing.assert_array_equal(got.sequences.tokens, reference.sequences.tokens)
    np.testing.assert_array_equal(got.responses, reference.responses)
    assert got.texts == reference.texts and got.label_names == ("label_0",)
    # a tuple of pairs too, with names for the labels; several labels per pair
    assert D.as_dataset(tuple(PAIRS), tokenizer=tok, labels="y").label_names == ("y",)
    two = D.as_dataset([(t, [y, 2 * y]) for t, y in PAIRS], tokenizer=tok, labels=["a", "b"])
    np.testing.assert_array_equal(two.responses, np.column_stack([YS, 2 * np.asarray(YS)]))
    # a 2-tuple (texts, labels) of two texts is still the columns form, not two pairs
    cols = D.as_dataset((["good day", "bad day"], [1.0, 0.0]), tokenizer=tok)
    assert cols.texts == ("good day", "bad day")


@pytest.mark.parametrize("bad, err, match", [
    ([("a", 1.0), ("b", 0.0), ("c", 1.0), ("d", "x")], ValueError, r"item 3: label 'x' is not a number"),
    ([("a", 1.0), ("b", "0.5")], ValueError, r"item 1: label '0.5' is not a number"),
    ([("a", 1.0), ("b", None)], ValueError, r"item 1: label None is not a number"),
    ([("a", 1.0), ("b", float("nan"))], ValueError, r"item 1: label nan is not finite"),
    ([("a", 1.0), "b"], ValueError, r"item 1: expected a \(text, label\) pair, got 'b'"),
    ([("a", 1.0), ("b", 1.0, 2.0)], ValueError, r"item 1: expected a \(text, label\) pair"),
    ([("a", 1.0), (7, 1.0)], TypeError, r"item 1: the text must be a str, got int 7"),
    ([("a", [1.0, 2.0]), ("b", [1.0])], ValueError, r"item 1: 1 label\(s\) \[1.0\] but item 0 has 2"),
])
def test_malformed_pairs_name_the_item_and_value(tok, bad, err, match):
    with pytest.raises(err, match=match):
        D.as_dataset(bad, tokenizer=tok)


def test_pairs_refuse_a_text_column(tok):
    with pytest.raises(ValueError, match="list of .text, label. pairs has none"):
        D.as_dataset(PAIRS, text="text", tokenizer=tok)


@pytest.mark.parametrize("kind", ["csv path", "pairs"])
def test_build_reward_matrix_reads_a_path_and_pairs(kind, csv_path, reference):
    want = rk.build_reward_matrix(reference)
    _same_matrix(rk.build_reward_matrix(_sources(csv_path)[kind]), want)
    # and its load options, as rankkit.distributed.build_reward_matrix takes them
    cut = rk.build_reward_matrix(_sources(csv_path)[kind], max_len=1, limit=2)
    assert cut.shape[0] == 1 and cut.nnz == len({s[0] for s in reference.sequences.to_lists()[:2]})


@pytest.mark.parametrize("kind", ["csv path", "pairs"])
def test_distributed_build_reads_a_path_and_pairs(kind, csv_path, reference):
    got = rd.build_reward_matrix(_sources(csv_path)[kind], comm=rd.Comm()).gather(rd.Comm())
    _same_matrix(got, rk.build_reward_matrix(reference))


@pytest.mark.parametrize("kind", ["csv path", "pairs"])
def test_estimate_min_rank_reads_a_path_and_pairs(kind, csv_path, reference):
    kw = dict(eps=1e-6, progress=False, lower_bound=False)
    want = rk.estimate_min_rank(reference, **kw)
    got = rk.estimate_min_rank(_sources(csv_path)[kind], **kw)
    assert (got.exact_lower, got.upper) == (want.exact_lower, want.upper)
    assert got.mse_by_rank == want.mse_by_rank
