import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankkit import tokenizers
from rankkit.sequences import TokenSequences


@pytest.fixture(scope="module")
def gpt2():
    return tokenizers.load("gpt2")


@pytest.fixture(scope="module")
def gpt2_offline():
    return tokenizers.gpt2_offline()


def test_offline_gpt2_is_the_real_vocabulary(gpt2_offline):
    # vocab_file= would silently give a 1-token tokenizer; the vocab size and GPT-2's
    # known ids catch that
    assert len(gpt2_offline) == tokenizers.GPT2_VOCAB_SIZE == 50257
    assert gpt2_offline("Hello world", add_special_tokens=False)["input_ids"] == [15496, 995]
    assert gpt2_offline.convert_ids_to_tokens([50256]) == ["<|endoftext|>"]


def test_load_gpt2_same_ids_as_offline(gpt2, gpt2_offline):
    assert len(gpt2) == 50257
    text = "The movie was surprisingly good, wasn't it? 123 émigré"
    assert gpt2(text)["input_ids"] == gpt2_offline(text)["input_ids"]


def test_tokenizer_object_passes_through(gpt2):
    assert tokenizers.load(gpt2) is gpt2


def test_bad_tokenizer_arguments():
    with pytest.raises(TypeError, match="transformers tokenizer"):
        tokenizers.load(42)
    with pytest.raises(OSError, match="neither cached nor reachable"):
        tokenizers.load("no-such-org/no-such-tokenizer-xyz", allow_network=False)


@given(st.lists(st.text(max_size=40), max_size=12), st.one_of(st.none(), st.integers(1, 6)))
def test_encode_batch_matches_one_by_one(gpt2, texts, max_len):
    seqs = tokenizers.encode_batch(gpt2, texts, max_len=max_len, batch_size=5)
    assert isinstance(seqs, TokenSequences) and len(seqs) == len(texts)
    for s, t in zip(seqs, texts, strict=True):
        ref = gpt2(t, add_special_tokens=False)["input_ids"]
        ref = ref if max_len is None else ref[:max_len]
        assert s.tolist() == ref
    assert seqs.tokens.dtype == np.int32


def test_encode_batch_rejects_non_strings(gpt2):
    with pytest.raises(TypeError, match="text 1"):
        tokenizers.encode_batch(gpt2, ["ok", 3])


def test_lone_surrogate_names_its_row(gpt2_offline):
    # issue 12: the Rust tokenizer said "TextEncodeInput must be Union[...]" and named nothing
    texts = ["fine"] * 5 + ["half an emoji \ud83d here"] + ["also fine"]
    with pytest.raises(ValueError, match=r"text 5 \(row 5 of the data.*'\\ud83d' at character 14 "
                                         r"is a lone surrogate"):
        tokenizers.encode_batch(gpt2_offline, texts, batch_size=4)  # in the second batch
    # the whole route from a file names the same row
    import rankkit as rk

    with pytest.raises(ValueError, match=r"text 1 \(row 1 of the data"):
        rk.estimate_min_rank((["ok", "bad \udc80"], [1.0, 0.0]))
