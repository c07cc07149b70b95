"""The package's offline base LM (vader_base_lm), held-out perplexity, and one BOS
convention in training, scoring and generation (issue 14 item 5)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import rankkit_ext.guided as gd  # noqa: E402
import rankkit_ext.lm as lm  # noqa: E402
from rankkit.sequences import TokenSequences  # noqa: E402
from rankkit_ext import metrics  # noqa: E402
from rankkit_ext.models import RADQ, RADV  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

V = 20
BOS = V - 1  # tiny_gpt2: BOS = EOS = pad = V - 1
F32 = torch.finfo(torch.float32).eps


def _tiny(seed=0, vocab=V, n_positions=32):
    return lm.tiny_gpt2(vocab_size=vocab, n_embd=16, n_layer=1, n_head=2,
                        n_positions=n_positions, seed=seed)


# ---- held-out perplexity ----------------------------------------------------------------
def _slow_nll(model, seq):
    """Sum over t of -log p(u_t | BOS, u_<t), one forward per token (the obvious way)."""
    total = 0.0
    for t in range(len(seq)):
        ctx = torch.tensor([[BOS] + list(seq[:t])])
        with torch.no_grad():
            lp = torch.log_softmax(model(ctx).logits[0, -1].double(), -1)
        total -= float(lp[seq[t]])
    return total


@settings(max_examples=5, deadline=None)
@given(st.lists(st.lists(st.integers(0, V - 2), min_size=1, max_size=7), min_size=1,
                max_size=5), st.integers(1, 4))
def test_perplexity_equals_token_by_token_reference(seqs, batch_size):
    model = _tiny(seed=3)
    res = metrics.perplexity(model, seqs, batch_size=batch_size)
    ref = np.array([_slow_nll(model, s) for s in seqs])
    n = sum(map(len, seqs))
    # float32 log-softmax per token, summed over at most 7 tokens
    np.testing.assert_allclose(res.sequence_nll, ref, rtol=0, atol=64 * F32 * 7)
    assert res.n_tokens == n
    assert res.perplexity == pytest.approx(math.exp(ref.sum() / n), rel=64 * F32)
    # a leading BOS is the convention's backward-compatible path, not a scored token
    again = metrics.perplexity(model, [[BOS] + s for s in seqs], batch_size=batch_size)
    np.testing.assert_allclose(again.sequence_nll, res.sequence_nll, rtol=0, atol=1e-9)


def test_train_lm_loss_is_the_metric_nll():
    # training and scoring condition on BOS the same way: the first step's loss (computed
    # before the update) is the held-out metric's mean token NLL of the same sequence
    seq = TokenSequences.from_lists([[3, 7, 1, 4, 4, 9]])
    model = _tiny(seed=5)
    before = metrics.perplexity(model, seq).nll
    res = lm.train_lm(model, seq, epochs=1, batch_size=1, progress=False)
    assert res.losses[0] == pytest.approx(before, abs=8 * F32 * 10)


def test_sampled_softmax_with_every_token_exact_is_the_full_loss():
    seqs = TokenSequences.from_lists([[3, 7, 1], [4, 4, 9, 2, 2], [5]])
    a, b = _tiny(seed=1), _tiny(seed=1)
    full = lm.train_lm(a, seqs, epochs=2, batch_size=2, progress=False)
    # shortlist = V: the exact set is the whole vocabulary, no negative is drawn
    samp = lm.train_lm(b, seqs, epochs=2, batch_size=2, progress=False, shortlist=V)
    np.testing.assert_allclose(samp.losses, full.losses, rtol=1e-5)
    # a real sample changes the loss estimate but keeps it finite and near the full one
    c = _tiny(seed=1)
    est = lm.train_lm(c, seqs, epochs=1, batch_size=2, progress=False, shortlist=2, negatives=4)
    assert np.isfinite(est.losses).all() and abs(est.losses[0] - full.losses[0]) < 1.0


def _slow_bigram(train, test, vocab, lam, bos):
    from collections import Counter

    uni = Counter(t for s in train for t in s)
    n = sum(uni.values())
    pairs, ctx = Counter(), Counter()
    for s in train:
        for v, w in zip([bos] + s[:-1], s, strict=True):
            pairs[v, w] += 1
            ctx[v] += 1
    nll = 0.0
    for s in test:
        for v, w in zip([bos] + s[:-1], s, strict=True):
            p1 = (uni[w] + 1) / (n + vocab)
            p = lam * pairs[v, w] / ctx[v] + (1 - lam) * p1 if ctx[v] else p1
            nll -= math.log(p)
    return nll / sum(map(len, test))


@settings(max_examples=10, deadline=None)
@given(st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=6), min_size=1, max_size=6),
       st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=6), min_size=1, max_size=4))
def test_ngram_baselines_equal_counting_by_hand(train, test):
    vocab = 8
    bi, lam = metrics.ngram_perplexity(train, test, vocab, n=2, bos=7, lambdas=(0.3, 0.9))
    assert bi.nll == pytest.approx(min(_slow_bigram(train, test, vocab, x, 7) for x in (0.3, 0.9)))
    assert bi.nll == pytest.approx(_slow_bigram(train, test, vocab, lam, 7))
    uni, _ = metrics.ngram_perplexity(train, test, vocab, n=1)
    counts = np.bincount([t for s in train for t in s], minlength=vocab)
    p = (counts + 1) / (counts.sum() + vocab)
    assert uni.nll == pytest.approx(-np.mean([math.log(p[t]) for s in test for t in s]))


# ---- vader_base_lm: cache, fingerprint, resume ------------------------------------------
def test_vader_lm_fingerprint_follows_every_setting(tmp_path):
    f = lambda **kw: lm.vader_lm_folder(**{"size": "tiny", "cache_dir": tmp_path, **kw})  # noqa: E731
    base = f()
    assert f() == base and base.parent == tmp_path / "base_lm"
    others = [f(epochs=2), f(seed=1), f(sets="vader:movie"), f(size="small"), f(n_embd=32)]
    assert len({base, *others}) == 6
    # the same sets spelled differently are the same model
    assert f(sets=["vader:tweets", "movie", "nyt", "amazon"]) == base
    with pytest.raises(ValueError, match="not a VADER set"):
        f(sets="vader:imdb")
    with pytest.raises(TypeError, match="unknown settings"):
        f(n_embed=32)


def test_vader_lm_trains_once_then_loads_from_cache(tmp_path, monkeypatch):
    model, report = lm.vader_base_lm(size="tiny", cache_dir=tmp_path, progress=False,
                                     return_report=True)
    assert model.config.vocab_size == 50257 and model.config.bos_token_id == 50256
    ho = report["held_out"]
    assert ho["n_tokens"] > 0 and math.isclose(ho["perplexity"], math.exp(ho["nll"]))
    assert report["baselines"]["unigram_add_one"] > 1 and report["n_texts"]["held_out"] >= 1
    # vader_lm_held_out names exactly the texts the report's perplexity was computed on
    from rankkit import tokenizers
    from rankkit.datasets import _read_vader

    tok = tokenizers.load("gpt2")
    held = lm.vader_lm_held_out(size="tiny")
    texts = [_read_vader(k.split(":")[1])[0][i] for k in sorted(held) for i in held[k]]
    assert len(texts) == report["n_texts"]["held_out"]
    enc = [e[:16] for e in tok(texts, add_special_tokens=False)["input_ids"]]
    assert metrics.perplexity(model, enc).nll == pytest.approx(ho["nll"], rel=1e-6)

    def no_training(*a, **k):
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(lm, "train_lm", no_training)
    again, report2 = lm.vader_base_lm(size="tiny", cache_dir=tmp_path, return_report=True)
    assert report2 == report
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items(),
                                  strict=True):
        assert n1 == n2 and torch.equal(p1, p2)

    # the documented offline recipe (RADQ.from_backbone, README "A tour"): the bundled LM as
    # a reward-model backbone by local path, never a hub request, then guided generate with
    # the BOS added by hand
    model.save_pretrained(tmp_path / "backbone")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rm = RADQ.from_backbone(tmp_path / "backbone", seed=0).eval()
    assert rm.vocab_size == 50257 and rm.bos_token_id == lm.bos_token_id(model) == 50256
    gd.check_compatible(rm, vocab_size=model.config.vocab_size, tokenizer=tok)
    proc = gd.RewardGuidedLogitsProcessor(rm, beta=2.0, top_k=5)
    ids = torch.tensor([lm.with_bos(enc[0][:4], 50256)])
    kw = dict(do_sample=False, max_new_tokens=2, logits_processor=[proc], pad_token_id=50256)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    assert out.shape == (1, ids.shape[1] + 2) and torch.equal(out[:, :ids.shape[1]], ids)
    with pytest.raises(gd.MissingBOSError, match="not the BOS id 50256"):
        model.generate(ids[:, 1:], attention_mask=torch.ones_like(ids[:, 1:]), **kw)


def test_vader_lm_resumes_an_interrupted_run_bit_for_bit(tmp_path, monkeypatch):
    real = lm.train_lm
    kw = dict(size="tiny", progress=False, epochs=2)

    def interrupted(*a, **k):
        real(*a, **{**k, "stop_after": 3})
        raise KeyboardInterrupt("killed after 3 steps")

    monkeypatch.setattr(lm, "train_lm", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lm.vader_base_lm(cache_dir=tmp_path / "a", **kw)
    folder = lm.vader_lm_folder(cache_dir=tmp_path / "a", **{k: v for k, v in kw.items()
                                                             if k != "progress"})
    assert not (folder / "report.json").exists()  # unfinished: not mistaken for a cache hit
    monkeypatch.setattr(lm, "train_lm", real)
    resumed, rep = lm.vader_base_lm(cache_dir=tmp_path / "a", return_report=True, **kw)
    assert rep["training"]["resumed_from_step"] == 3
    fresh, rep_f = lm.vader_base_lm(cache_dir=tmp_path / "b", return_report=True, **kw)
    assert rep_f["training"]["resumed_from_step"] == 0
    for p1, p2 in zip(resumed.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p1, p2)
    assert rep["held_out"]["nll"] == rep_f["held_out"]["nll"]


# ---- one BOS convention in generation ---------------------------------------------------
class _Spy:
    """Wraps a reward model and records every prefix it is asked to score."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score_candidates(self, input_ids, attention_mask, candidates, **kw):
        self.seen.append((input_ids.clone(), attention_mask.clone()))
        return self.inner.score_candidates(input_ids, attention_mask, candidates, **kw)


def _first_real(ids, mask):
    rows = torch.arange(ids.shape[0])
    has = mask.bool().any(1)
    return ids[rows, mask.argmax(1)], has


@pytest.mark.parametrize("kind", ["radq", "radv"])
def test_guided_base_sees_bos_once_and_reward_model_never(kind):
    base = _tiny(seed=0)
    rm = _Spy((RADQ if kind == "radq" else RADV)(_tiny(seed=2)).eval())
    prompts = [[3, 1, 4], [BOS, 5], []]  # plain, written the old way, unconditional
    out = gd.guided_generate(base, rm, prompts, beta=4.0, top_k=V, max_new_tokens=3,
                             do_sample=False, eos_token_id=-1)
    # the base's log-probs are those of a direct forward of [BOS] + prompt
    for i, p in enumerate(prompts):
        ctx = lm.with_bos(p, BOS)
        y = out.tokens[i][0].tolist()
        with torch.no_grad():
            lp = torch.log_softmax(base(torch.tensor([ctx + y])).logits[0].double(), -1)
        ref = sum(float(lp[len(ctx) - 1 + t, v]) for t, v in enumerate(y))
        assert out.log_p_lm[i, 0] == pytest.approx(ref, abs=1e-4)
    # the old-style prompt [BOS, 5] gives exactly what [5] gives
    again = gd.guided_generate(base, rm, [[5]], beta=4.0, top_k=V, max_new_tokens=3,
                               do_sample=False, eos_token_id=-1)
    np.testing.assert_array_equal(again.tokens[0][0], out.tokens[1][0])
    # the reward model got every prefix without BOS at its start (it prepends its own)
    ids, mask = rm.seen[0]
    first, has = _first_real(ids, mask)
    assert has.tolist() == [True, True, False]  # the empty prompt is an empty prefix
    assert first[:2].tolist() == [3, 5]
    # a batch of empty prompts alone (every prefix starts with width 0) samples too
    empty = gd.guided_generate(base, rm, [[], [BOS]], beta=4.0, top_k=V, max_new_tokens=3,
                               do_sample=False, eos_token_id=-1)
    np.testing.assert_array_equal(empty.tokens[0][0], empty.tokens[1][0])
    np.testing.assert_array_equal(empty.tokens[0][0], out.tokens[2][0])


def test_logits_processor_hides_the_base_bos_from_the_reward_model():
    # pad (0) differs from BOS here: the BOS is a real token of generate's input and must
    # not reach the reward model, which prepends its own
    base = _tiny(seed=0)
    rm = _Spy(RADQ(_tiny(seed=2)).eval())
    proc = gd.RewardGuidedLogitsProcessor(rm, beta=3.0, top_k=5, pad_token_id=0)
    ids = torch.tensor([[0, BOS, 3, 1], [BOS, 5, 9, 2]])
    base.generate(ids, attention_mask=(ids != 0).long(), do_sample=False, max_new_tokens=2,
                  logits_processor=[proc], pad_token_id=0)
    for seen_ids, seen_mask in rm.seen:
        first, _ = _first_real(seen_ids, seen_mask)
        assert first.tolist() == [3, 5]
    # the scores are those of the prefix without BOS
    r_proc, _ = rm.inner.score_candidates(ids, proc._mask(ids), torch.tensor([[1], [1]]))
    r_ref, _ = rm.inner.score_candidates(torch.tensor([[0, 0, 3, 1], [0, 5, 9, 2]]),
                                         torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]]),
                                         torch.tensor([[1], [1]]))
    torch.testing.assert_close(r_proc, r_ref)
