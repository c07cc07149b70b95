"""Text scorers: one home for every ``texts -> probabilities in [0, 1]`` callable.

A *scorer* maps a list of texts to one probability per text (of toxicity, of positive
sentiment, ...). The evaluation metrics of paper 002 (§4.2–4.3, :mod:`rankkit_ext.metrics`)
and the classifier potentials of twisted SMC (:class:`rankkit_ext.tsmc.ClassifierPotential`,
Kim et al. 2025 §3) take the same scorers. Offline ones ship here: :func:`profanity_scorer`
(``alt-profanity-check``'s linear SVM, the offline stand-in for Perspective) and
:func:`vader_scorer` (VADER's lexicon); :class:`PipelineScorer` wraps any Hugging Face
``text-classification`` pipeline (the RoBERTa ToxicityModel, DistilBERT SST-2), and
:class:`PerspectiveClient` calls the Perspective API with rate limiting and retries.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Scorer", "profanity_scorer", "vader_scorer", "PipelineScorer", "PerspectiveClient"]

Scorer = Callable[[Sequence[str]], np.ndarray]
"""A scorer maps a list of texts to an array of probabilities (of toxicity, of positive
sentiment, ...) in [0, 1], one per text."""


def profanity_scorer() -> Scorer:
    """Offline toxicity scorer: ``alt-profanity-check``'s linear SVM, ``predict_prob``.

    A small, real, offline stand-in for the Perspective API (paper 002 §4.2); its
    probabilities are calibrated on offensive-language data, not on Perspective's scale.
    """
    from profanity_check import predict_prob

    def score(texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros(0)
        return np.asarray(predict_prob(list(texts)), dtype=np.float64)

    return score


def vader_scorer() -> Scorer:
    """Offline sentiment scorer: VADER's lexicon ``compound`` mapped to [0, 1].

    Returns :math:`(c + 1) / 2` with VADER's compound score :math:`c \\in [-1, 1]`; VADER's
    own convention calls a text positive when :math:`c \\ge 0.05`, i.e. score ``>= 0.525``
    (pass ``threshold=0.525`` to :func:`~rankkit_ext.metrics.positive_rate` to use it). Requires the
    ``vaderSentiment`` package.
    """
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def score(texts: Sequence[str]) -> np.ndarray:
        c = np.array([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)
        return np.clip((c + 1.0) / 2.0, 0.0, 1.0)

    return score


@dataclass
class PipelineScorer:
    """Probability of one label from a Hugging Face ``text-classification`` pipeline.

    Parameters
    ----------
    pipeline : transformers.Pipeline or callable
        Called as ``pipeline(texts, top_k=None, truncation=True)``; must return, per text,
        a list of ``{"label": str, "score": float}`` (what HF pipelines return with
        ``top_k=None``). A single dict per text (``top_k=1`` style) is accepted when its
        label is ``label`` or ``negative_label``.
    label : str
        The label whose probability is returned, e.g. ``"toxic"`` or ``"POSITIVE"``.
    negative_label : str, optional
        For binary pipelines that only report the winning label: its score ``s`` is
        turned into ``1 - s``.
    batch_size : int
        Passed to the pipeline.
    """

    pipeline: Callable
    label: str
    negative_label: str | None = None
    batch_size: int = 32

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros(0)
        out = self.pipeline(texts, top_k=None, truncation=True, batch_size=self.batch_size)
        scores = np.empty(len(texts))
        for i, res in enumerate(out):
            entries = res if isinstance(res, list) else [res]
            by_label = {e["label"]: float(e["score"]) for e in entries}
            if self.label in by_label:
                scores[i] = by_label[self.label]
            elif self.negative_label is not None and self.negative_label in by_label:
                scores[i] = 1.0 - by_label[self.negative_label]
            else:
                raise ValueError(
                    f"text {i}: pipeline returned labels {sorted(by_label)}, none is "
                    f"label={self.label!r} or negative_label={self.negative_label!r}; "
                    f"pass the label name the model uses (see model.config.id2label)")
        return scores


@dataclass
class PerspectiveClient:
    """Perspective API toxicity scorer with rate limiting and retries.

    One request per text (the API scores one comment per request). Requests are spaced at
    least ``1 / qps`` seconds apart (the API's default quota is 1 query per second); an
    HTTP 429 or 5xx answer, or a network error, is retried up to ``max_retries`` times
    with exponential back-off ``backoff * 2**attempt`` seconds. A text the API refuses
    (HTTP 400, e.g. unsupported language) scores ``nan`` when ``nan_on_error`` (the
    reference code's behaviour: it skips such samples), otherwise raises.

    Parameters
    ----------
    api_key : str
    url : str
        Endpoint; the default is the public ``comments:analyze`` URL. Tests point it at a
        local server.
    attribute : str
        Perspective attribute, ``"TOXICITY"`` by default.
    qps : float
        Maximum queries per second.
    max_retries, backoff, timeout : retry policy and per-request timeout (seconds).
    sleep, clock : callables
        Injected for tests; ``time.sleep`` and ``time.monotonic`` by default.
    """

    api_key: str
    url: str = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze"
    attribute: str = "TOXICITY"
    qps: float = 1.0
    max_retries: int = 5
    backoff: float = 1.0
    timeout: float = 30.0
    nan_on_error: bool = True
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _last: float = field(default=-math.inf, init=False, repr=False)
    n_requests: int = field(default=0, init=False)

    def __post_init__(self):
        if self.qps <= 0:
            raise ValueError(f"qps must be > 0, got {self.qps}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    def _throttle(self) -> None:
        wait = self._last + 1.0 / self.qps - self.clock()
        if wait > 0:
            self.sleep(wait)
        self._last = self.clock()

    def _request(self, text: str) -> float:
        body = json.dumps({
            "comment": {"text": text}, "languages": ["en"],
            "requestedAttributes": {self.attribute: {}}, "doNotStore": True,
        }).encode()
        url = f"{self.url}?key={self.api_key}"
        for attempt in range(self.max_retries + 1):
            self._throttle()
            self.n_requests += 1
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    data = json.loads(resp.read())
                return float(data["attributeScores"][self.attribute]["summaryScore"]["value"])
            except urllib.error.HTTPError as e:
                e.close()  # the error holds the response and its socket: release them now
                retriable = e.code == 429 or e.code >= 500
                if not retriable:
                    if self.nan_on_error:
                        return math.nan
                    raise RuntimeError(f"Perspective API refused text {text[:60]!r}: HTTP {e.code}") from e
                err: Exception = e
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                err = e
            if attempt < self.max_retries:
                self.sleep(self.backoff * 2**attempt)
        raise RuntimeError(
            f"Perspective API failed after {self.max_retries + 1} attempts ({err}); "
            f"lower qps or raise max_retries/backoff") from err

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self._request(t) for t in texts], dtype=np.float64)
