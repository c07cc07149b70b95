"""Evaluation metrics against hand-computed values and slow references."""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rankkit_ext.evaluate as ev

EPS = np.finfo(np.float64).eps


def _table_scorer(table):
    return lambda texts: np.array([table[t] for t in texts])


# ---- toxicity -------------------------------------------------------------------------
def test_toxicity_hand_computed():
    s = _table_scorer({"a": 0.1, "b": 0.7, "c": 0.2, "d": 0.5, "e": 0.3})
    r = ev.toxicity([["a", "b"], ["c", "d"], ["e"]], s)
    assert r.avg_max_toxicity == pytest.approx((0.7 + 0.5 + 0.3) / 3, rel=4 * EPS)
    assert r.toxic_rate == pytest.approx(1 / 3)  # 0.5 is not > 0.5
    r2 = ev.toxicity([["a", "b"], ["c", "d"], ["e"]], s, inclusive=True)
    assert r2.toxic_rate == pytest.approx(2 / 3)  # reference code's >= 0.5
    np.testing.assert_array_equal(r.max_per_prompt, [0.7, 0.5, 0.3])


@given(st.lists(st.lists(st.floats(0, 1), min_size=1, max_size=5), min_size=1, max_size=6))
def test_toxicity_matches_loop_reference(scores):
    texts = [[f"{i}-{j}" for j in range(len(row))] for i, row in enumerate(scores)]
    table = {t: v for tr, sr in zip(texts, scores, strict=True) for t, v in zip(tr, sr, strict=True)}
    r = ev.toxicity(texts, _table_scorer(table), threshold=0.5)
    maxes = [max(row) for row in scores]
    assert r.avg_max_toxicity == pytest.approx(sum(maxes) / len(maxes), rel=1e3 * EPS, abs=1e3 * EPS)
    assert r.toxic_rate == pytest.approx(sum(m > 0.5 for m in maxes) / len(maxes))


def test_toxicity_nan_prompts_skipped_and_errors():
    s = _table_scorer({"a": math.nan, "b": 0.9, "c": math.nan})
    r = ev.toxicity([["a", "b"], ["c"]], s)
    assert r.n_prompts_skipped == 1 and r.avg_max_toxicity == pytest.approx(0.9)
    with pytest.raises(TypeError, match="samples\\[0\\] is a string"):
        ev.toxicity(["abc"], s)
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        ev.toxicity([["x"]], lambda t: np.array([1.5]))


def test_profanity_scorer_orders_texts():
    s = ev.profanity_scorer()
    p = s(["you are a stupid idiot", "what a lovely sunny day"])
    assert p.shape == (2,) and p[0] > 0.5 > p[1]


# ---- sentiment ------------------------------------------------------------------------
def test_positive_rate_hand_computed_and_prompt_prefix():
    seen = []

    def scorer(texts):
        seen.extend(texts)
        return np.array([0.9 if "good" in t else 0.1 for t in texts])

    pr = ev.positive_rate([["good", "bad", "good"], ["bad"]], scorer)
    assert pr == pytest.approx((2 / 3 + 0) / 2)
    seen.clear()
    pr = ev.positive_rate([[" a"], [" b"]], scorer, prompts=["good", "x"])
    assert seen == ["good a", "x b"] and pr == pytest.approx(0.5)


def test_vader_scorer_direction():
    pytest.importorskip("vaderSentiment")
    s = ev.vader_scorer()
    p = s(["I love this wonderful movie", "this is a terrible awful film", "the table"])
    assert p[0] > 0.5 > p[1] and p[2] == pytest.approx(0.5)


def test_pipeline_scorer_labels():
    def fake_pipe(texts, **kw):
        assert kw["top_k"] is None
        return [[{"label": "toxic", "score": 0.8}, {"label": "non-toxic", "score": 0.2}]] * len(texts)

    assert ev.PipelineScorer(fake_pipe, "toxic")(["x", "y"]).tolist() == [0.8, 0.8]
    one = lambda texts, **kw: [{"label": "NEGATIVE", "score": 0.7} for _ in texts]  # noqa: E731
    assert ev.PipelineScorer(one, "POSITIVE", "NEGATIVE")(["x"])[0] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="id2label"):
        ev.PipelineScorer(one, "POSITIVE")(["x"])


# ---- Perspective client against a local fake server -----------------------------------
class _FakePerspective(BaseHTTPRequestHandler):
    plan: list = []  # HTTP codes to answer before succeeding, shared per test
    calls: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["comment"]["text"]
        type(self).calls.append(text)
        code = type(self).plan.pop(0) if type(self).plan else 200
        if code != 200:
            self.send_response(code)
            self.end_headers()
            return
        out = {"attributeScores": {"TOXICITY": {"summaryScore": {"value": len(text) / 10}}}}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def fake_server():
    _FakePerspective.plan, _FakePerspective.calls = [], []
    srv = HTTPServer(("127.0.0.1", 0), _FakePerspective)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/analyze"
    srv.shutdown()
    srv.server_close()


def test_perspective_rate_limit_and_retries(fake_server):
    now = [0.0]
    sleeps = []

    def sleep(s):
        sleeps.append(s)
        now[0] += s

    _FakePerspective.plan = [429, 503]  # first text: two retriable failures
    c = ev.PerspectiveClient("KEY", url=fake_server, qps=2.0, backoff=0.5, sleep=sleep,
                             clock=lambda: now[0])
    out = c(["abc", "abcde"])
    np.testing.assert_allclose(out, [0.3, 0.5])
    assert c.n_requests == 4 and _FakePerspective.calls == ["abc"] * 3 + ["abcde"]
    # back-off 0.5 then 1.0, and every request spaced >= 1/qps = 0.5 s
    assert 0.5 in sleeps and 1.0 in sleeps
    assert all(s > 0 for s in sleeps)


def test_perspective_gives_up_and_nan_on_400(fake_server):
    _FakePerspective.plan = [400]
    c = ev.PerspectiveClient("K", url=fake_server, qps=1e9, sleep=lambda s: None)
    assert math.isnan(c(["x"])[0])
    _FakePerspective.plan = [500] * 3
    c = ev.PerspectiveClient("K", url=fake_server, qps=1e9, max_retries=2, sleep=lambda s: None)
    with pytest.raises(RuntimeError, match="after 3 attempts"):
        c(["x"])


# ---- diversity ------------------------------------------------------------------------
def test_distinct_n_hand_computed():
    # prompt 0: words a b a | a b -> 5 words; unigrams {a,b}=2; bigrams {ab, ba}=2; trigrams {aba}=1
    # prompt 1: x y -> 2 words; unigrams 2; bigrams 1; trigrams 0
    d = ev.distinct_n([["a b a", "a b"], ["x y"]])
    assert d[1] == pytest.approx((2 / 5 + 2 / 2) / 2)
    assert d[2] == pytest.approx((2 / 5 + 1 / 2) / 2)
    assert d[3] == pytest.approx((1 / 5 + 0 / 2) / 2)
    g = ev.distinct_n([["a b a", "a b"], ["x y"]], denominator="ngrams")
    # bigram occurrences: prompt 0 -> 2 + 1 = 3, prompt 1 -> 1; trigrams: 1 and 0 (nan)
    assert g[2] == pytest.approx((2 / 3 + 1 / 1) / 2)
    assert g[3] == pytest.approx(1.0)


@given(st.lists(st.lists(st.text("ab ", min_size=1, max_size=12), min_size=1, max_size=4),
                min_size=1, max_size=4))
def test_distinct_ngrams_denominator_at_most_one(samples):
    d = ev.distinct_n(samples, denominator="ngrams")
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
    res = ev.conditional_perplexity(model, tok, prompts, samples, batch_size=2)
    for i, (p, row) in enumerate(zip(prompts, samples, strict=True)):
        pid = tok(p)["input_ids"] or [39]
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
    res2 = ev.conditional_perplexity(model, tok, prompts, samples, max_ppl=cut)
    assert res2.n_dropped == 1 and res2.mean == pytest.approx(np.sort(allp)[:-1].mean(), rel=1e-5)


def test_mauve_missing_or_present():
    try:
        import mauve  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="mauve-text"):
            ev.mauve_score(["a"], ["b"])
        pytest.skip("mauve-text is not installed; checked the ImportError message only")
    pytest.skip("mauve-text installed but its feature model needs the hub; not run offline")


# ---- table and plot -------------------------------------------------------------------
def test_results_table_and_plot(tmp_path):
    rows = [{"method": "RAD-Q", "beta": 10, "perplexity": 12.0, "avg_max_toxicity": 0.3},
            {"method": "RAD-Q", "beta": 0, "perplexity": 10.0, "avg_max_toxicity": 0.5},
            {"method": "RAD-V", "beta": 10, "perplexity": 13.0, "avg_max_toxicity": 0.25, "k": 20}]
    t = ev.results_table(rows)
    recs = t.to_dict("records") if hasattr(t, "to_dict") else t
    assert [r["beta"] for r in recs] == [0, 10, 10] and "k" in recs[0]
    ax = ev.tradeoff_plot(t, path=tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 1000
    assert len(ax.get_lines()) == 2
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), [10.0, 12.0])
    with pytest.raises(KeyError, match="positive_rate"):
        ev.tradeoff_plot(t, y="positive_rate")
