"""The text scorers of rankkit_ext.scorers: offline models, HF pipelines, the Perspective client."""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

import rankkit_ext.scorers as sc


def test_profanity_scorer_orders_texts():
    s = sc.profanity_scorer()
    p = s(["you are a stupid idiot", "what a lovely sunny day"])
    assert p.shape == (2,) and p[0] > 0.5 > p[1]


def test_vader_scorer_direction():
    pytest.importorskip("vaderSentiment")
    s = sc.vader_scorer()
    p = s(["I love this wonderful movie", "this is a terrible awful film", "the table"])
    assert p[0] > 0.5 > p[1] and p[2] == pytest.approx(0.5)


def test_pipeline_scorer_labels():
    def fake_pipe(texts, **kw):
        assert kw["top_k"] is None
        return [[{"label": "toxic", "score": 0.8}, {"label": "non-toxic", "score": 0.2}]] * len(texts)

    assert sc.PipelineScorer(fake_pipe, "toxic")(["x", "y"]).tolist() == [0.8, 0.8]
    one = lambda texts, **kw: [{"label": "NEGATIVE", "score": 0.7} for _ in texts]  # noqa: E731
    assert sc.PipelineScorer(one, "POSITIVE", "NEGATIVE")(["x"])[0] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="id2label"):
        sc.PipelineScorer(one, "POSITIVE")(["x"])


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
    c = sc.PerspectiveClient("KEY", url=fake_server, qps=2.0, backoff=0.5, sleep=sleep,
                             clock=lambda: now[0])
    out = c(["abc", "abcde"])
    np.testing.assert_allclose(out, [0.3, 0.5])
    assert c.n_requests == 4 and _FakePerspective.calls == ["abc"] * 3 + ["abcde"]
    # back-off 0.5 then 1.0, and every request spaced >= 1/qps = 0.5 s
    assert 0.5 in sleeps and 1.0 in sleeps
    assert all(s > 0 for s in sleeps)


def test_perspective_gives_up_and_nan_on_400(fake_server):
    _FakePerspective.plan = [400]
    c = sc.PerspectiveClient("K", url=fake_server, qps=1e9, sleep=lambda s: None)
    assert math.isnan(c(["x"])[0])
    _FakePerspective.plan = [500] * 3
    c = sc.PerspectiveClient("K", url=fake_server, qps=1e9, max_retries=2, sleep=lambda s: None)
    with pytest.raises(RuntimeError, match="after 3 attempts"):
        c(["x"])
