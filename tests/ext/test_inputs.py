"""One input language in the extension: train, evaluate_objective and compare_rank read a CSV
path and a list of (text, label) pairs exactly as the RewardDataset they describe (issue 25,
item 1: ``rx.train(model, "reviews.csv")`` used to fail with "must be a RewardDataset")."""


import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rankkit import datasets as D  # noqa: E402
from rankkit import tokenizers  # noqa: E402
from rankkit_ext import RADQ, compare_rank, evaluate_objective, train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["good day", "bad day", "good night", "a bad bad night", "good good day", "bad"]
YS = [1.0, 0.0, 0.75, 0.0, 1.0, 0.25]
PAIRS = list(zip(TEXTS, YS, strict=True))


@pytest.fixture(scope="module")
def tok():
    return tokenizers.load("gpt2")


@pytest.fixture(scope="module")
def csv_path(pairs_csv):
    return pairs_csv(PAIRS)


def _model():
    """A RAD-Q on a 1-layer GPT-2 with GPT-2's 50,257 tokens (text needs the real vocabulary)."""
    cfg = transformers.GPT2Config(vocab_size=50257, n_embd=8, n_layer=1, n_head=1,
                                  n_positions=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return RADQ(transformers.GPT2LMHeadModel(cfg), n_labels=1)


def _sources(csv_path):
    return {"csv path": str(csv_path), "pairs": PAIRS}


@pytest.mark.parametrize("kind", ["csv path", "pairs"])
def test_train_and_evaluate_read_a_path_and_pairs(kind, csv_path, tok):
    ds = D.as_dataset((TEXTS, YS), tokenizer=tok)
    kw = dict(epochs=2, batch_size=3, lr=1e-3, progress=False, tol=None)
    want_model, got_model = _model(), _model()
    want = train(want_model, ds, **kw)
    got = train(got_model, _sources(csv_path)[kind], eval_dataset=_sources(csv_path)[kind], **kw)
    assert got.steps == want.steps == 4
    assert got.train_loss == want.train_loss  # the same utterances, labels and order
    assert got.eval_loss[-1][1] == pytest.approx(evaluate_objective(want_model, ds), rel=1e-6)
    assert evaluate_objective(got_model, _sources(csv_path)[kind]) == pytest.approx(
        evaluate_objective(got_model, ds), rel=1e-12)


def test_train_names_a_bad_pair_and_a_tokenizer_mismatch():
    with pytest.raises(ValueError, match=r"item 2: label 'high' is not a number"):
        train(_model(), [("a", 1.0), ("b", 0.0), ("c", "high")], progress=False)
    small = RADQ(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=30, n_embd=8, n_layer=1, n_head=1, n_positions=16, bos_token_id=29,
        eos_token_id=29)), n_labels=1)
    with pytest.raises(ValueError, match="exceeds the model's 30 output embeddings"):
        train(small, PAIRS, progress=False)


@pytest.mark.parametrize("kind", ["csv path", "pairs"])
def test_compare_rank_reads_a_path_and_pairs(kind, csv_path, tok):
    ds = D.as_dataset((TEXTS, YS), tokenizer=tok)
    model = _model().eval()
    cols = np.unique(ds.sequences.tokens)
    kw = dict(n_prefixes=4, vocab=cols, seed=0, progress=False)
    want = compare_rank(model, ds, **kw)
    got = compare_rank(model, _sources(csv_path)[kind], **kw)
    timings = ("seconds_estimate", "seconds_learned")
    g, w = ({k: v for k, v in r.to_dict().items() if k not in timings} for r in (got, want))
    assert g == w and g["learned_rank"] >= 1
