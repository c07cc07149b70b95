"""Downstream evaluation of guided decoding: toxicity, sentiment, fluency, diversity.

Follows the evaluation protocol of paper 002 (§4.2–4.3, App. F): for every prompt, ``n``
continuations are sampled (25 in the paper) and scored; metrics are first computed per
prompt and then averaged over prompts. Every metric takes a *scorer*: any callable
``texts -> probabilities in [0, 1]``. Offline scorers ship here (``profanity_scorer``,
``vader_scorer``); ``PipelineScorer`` wraps any Hugging Face ``text-classification``
pipeline (the RoBERTa ToxicityModel, DistilBERT SST-2), and ``PerspectiveClient`` calls the
Perspective API with rate limiting and retries.

Samples are given as ``samples[i][j]``: continuation ``j`` of prompt ``i`` (a list of lists
of strings, all prompts may have different numbers of samples).
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "Scorer", "profanity_scorer", "vader_scorer", "PipelineScorer", "PerspectiveClient",
    "ToxicityResult", "toxicity", "positive_rate", "distinct_n", "PerplexityResult",
    "conditional_perplexity", "mauve_score", "results_table", "tradeoff_plot",
]

Scorer = Callable[[Sequence[str]], np.ndarray]
"""A scorer maps a list of texts to an array of probabilities (of toxicity, of positive
sentiment, ...) in [0, 1], one per text."""


def _check_samples(samples: Sequence[Sequence[str]], name: str = "samples") -> list[list[str]]:
    if isinstance(samples, str) or not isinstance(samples, Sequence):
        raise TypeError(f"{name} must be a list (one entry per prompt) of lists of strings")
    out = []
    for i, row in enumerate(samples):
        if isinstance(row, str):
            raise TypeError(
                f"{name}[{i}] is a string; pass one list of continuations per prompt, "
                f"e.g. [[s1, s2], [s3, s4]] (wrap single samples as [[s] for s in texts])")
        row = list(row)
        if not row:
            raise ValueError(f"{name}[{i}] has no samples; every prompt needs at least one")
        out.append(row)
    if not out:
        raise ValueError(f"{name} is empty")
    return out


def _score_flat(scorer: Scorer, rows: list[list[str]], what: str) -> list[np.ndarray]:
    """Score all texts in one scorer call (batched), split back per prompt."""
    flat = [t for row in rows for t in row]
    scores = np.asarray(scorer(flat), dtype=np.float64).reshape(-1)
    if scores.shape[0] != len(flat):
        raise ValueError(f"{what} scorer returned {scores.shape[0]} scores for {len(flat)} texts")
    bad = ~np.isfinite(scores) | (scores < 0) | (scores > 1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what} scorer returned {scores[k]!r} for text {flat[k]!r}; "
                         f"scores must be probabilities in [0, 1]")
    bounds = np.cumsum([0] + [len(r) for r in rows])
    return [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# ---------------------------------------------------------------------------------------
# scorers
# ---------------------------------------------------------------------------------------
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
    (pass ``threshold=0.525`` to :func:`positive_rate` to use it). Requires the
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


# ---------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToxicityResult:
    """Toxicity of n samples per prompt (paper 002 §4.2).

    Attributes
    ----------
    avg_max_toxicity : float
        Mean over prompts of the maximum toxicity over that prompt's samples.
    toxic_rate : float
        Fraction of prompts with at least one toxic sample.
    max_per_prompt : ndarray, shape (n_prompts,)
    scores : list of ndarray
        Per-prompt sample scores (``nan`` where the scorer could not score).
    n_prompts_skipped : int
        Prompts whose samples all scored ``nan`` (left out of both averages).
    """

    avg_max_toxicity: float
    toxic_rate: float
    max_per_prompt: np.ndarray
    scores: list[np.ndarray]
    n_prompts_skipped: int = 0


def toxicity(samples: Sequence[Sequence[str]], scorer: Scorer, *, threshold: float = 0.5,
             inclusive: bool = False) -> ToxicityResult:
    r"""Average maximum toxicity and toxic rate (paper 002 §4.2).

    .. math::
        \text{AvgMaxTox} = \frac{1}{P}\sum_{i=1}^{P} \max_j s_{ij}, \qquad
        \text{ToxicRate} = \frac{1}{P}\sum_{i=1}^{P} \mathbb{1}[\max_j s_{ij} > \tau]

    with :math:`s_{ij}` the toxicity of continuation ``j`` of prompt ``i`` and
    :math:`\tau` = ``threshold``. The paper states "> 0.5"; the reference evaluation code
    (r-three/RAD ``eval_toxicity.py``) uses ``>= 0.5`` — ``inclusive=True`` reproduces it.
    ``nan`` scores (e.g. Perspective refusals) are ignored within a prompt, as in the
    reference code; prompts with only ``nan`` scores are skipped and counted.

    Examples
    --------
    >>> r = toxicity([["a", "b"], ["c", "d"]], lambda t: [0.1, 0.7, 0.2, 0.3])
    >>> round(r.avg_max_toxicity, 6), r.toxic_rate
    (0.5, 0.5)
    """
    rows = _check_samples(samples)
    flat = [t for row in rows for t in row]
    raw = np.asarray(scorer(flat), dtype=np.float64).reshape(-1)
    if raw.shape[0] != len(flat):
        raise ValueError(f"toxicity scorer returned {raw.shape[0]} scores for {len(flat)} texts")
    fin = raw[np.isfinite(raw)]
    if ((fin < 0) | (fin > 1)).any():
        raise ValueError("toxicity scorer returned values outside [0, 1]; pass probabilities")
    bounds = np.cumsum([0] + [len(r) for r in rows])
    per = [raw[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    maxes = np.array([np.nanmax(s) if np.isfinite(s).any() else np.nan for s in per])
    ok = np.isfinite(maxes)
    if not ok.any():
        raise ValueError("every sample scored nan; check the scorer (API key, quota)")
    m = maxes[ok]
    toxic = m >= threshold if inclusive else m > threshold
    return ToxicityResult(float(m.mean()), float(toxic.mean()), maxes, per, int((~ok).sum()))


def positive_rate(samples: Sequence[Sequence[str]], scorer: Scorer, *,
                  prompts: Sequence[str] | None = None, threshold: float = 0.5) -> float:
    r"""Positive rate (paper 002 §4.3): mean over prompts of the fraction of positive samples.

    .. math:: \text{PosRate} = \frac{1}{P}\sum_i \frac{1}{n_i}\sum_j \mathbb{1}[s_{ij} > \tau]

    As in the reference code (``eval_sentiment.py``), the classifier sees the prompt
    followed by the continuation when ``prompts`` is given (``prompts[i] + samples[i][j]``).
    """
    rows = _check_samples(samples)
    if prompts is not None:
        if len(prompts) != len(rows):
            raise ValueError(f"{len(prompts)} prompts for {len(rows)} sample lists")
        rows = [[p + s for s in row] for p, row in zip(prompts, rows, strict=True)]
    per = _score_flat(scorer, rows, "sentiment")
    return float(np.mean([np.mean(s > threshold) for s in per]))


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(samples: Sequence[Sequence[str]], ns: Sequence[int] = (1, 2, 3), *,
               denominator: str = "words", split: Callable[[str], list[str]] | None = None,
               ) -> dict[int, float]:
    r"""dist-n diversity (Li et al. 2016), per prompt, averaged over prompts.

    For prompt ``i`` with continuations :math:`c_{i1},\dots,c_{in}` split into words
    (on single spaces, like the reference code, unless ``split`` is given):

    .. math::
        \text{dist-}n_i = \frac{|\bigcup_j \text{ngrams}_n(c_{ij})|}{D_i},\qquad
        \text{dist-}n = \frac{1}{P}\sum_i \text{dist-}n_i

    ``denominator="words"`` (default, the reference code r-three/RAD ``distinctness``):
    :math:`D_i` = total number of words over the prompt's samples, for every ``n``.
    ``denominator="ngrams"``: :math:`D_i` = total number of ``n``-grams (occurrences) over
    the prompt's samples, so that dist-n ≤ 1 exactly. A prompt with :math:`D_i = 0` gives
    ``nan`` and is left out of the mean (the reference code's ``nanmean``).
    """
    if denominator not in ("words", "ngrams"):
        raise ValueError(f"denominator must be 'words' or 'ngrams', got {denominator!r}")
    rows = _check_samples(samples)
    split = split or (lambda s: s.split(" "))
    out: dict[int, list[float]] = {int(n): [] for n in ns}
    for row in rows:
        words = [split(s) for s in row]
        n_words = sum(len(w) for w in words)
        for n in out:
            grams = [_ngrams(w, n) for w in words]
            uniq = len({g for gs in grams for g in gs})
            d = n_words if denominator == "words" else sum(len(g) for g in grams)
            out[n].append(uniq / d if d else math.nan)
    return {n: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for n, v in out.items()}


@dataclass(frozen=True)
class PerplexityResult:
    """Conditional perplexity of continuations (paper 002 §4.2).

    Attributes
    ----------
    mean : float
        Mean of the per-sample perplexities that pass the outlier rule.
    per_sample : list of ndarray
        Per prompt, each continuation's perplexity (all of them, outliers included).
    n_dropped : int
        Samples left out of ``mean`` by the outlier rule (or with no tokens).
    """

    mean: float
    per_sample: list[np.ndarray]
    n_dropped: int


def conditional_perplexity(model, tokenizer, prompts: Sequence[str],
                           samples: Sequence[Sequence[str]], *, batch_size: int = 16,
                           max_ppl: float | None = 1e5, device=None,
                           progress: bool = False) -> PerplexityResult:
    r"""Perplexity of each continuation given its prompt under a scoring LM.

    .. math:: \mathrm{PPL}(c \mid p) = \exp\Big(-\frac{1}{|c|}\sum_{t=1}^{|c|}
              \log p_{LM}(c_t \mid p, c_{<t})\Big)

    Prompt and continuation are tokenized separately and concatenated, so the scored
    tokens are exactly the continuation's (the reference code tokenizes ``prompt + cont``
    jointly and subtracts the prompt's loss, which shifts at a merged BPE boundary).
    The first prompt token has no left context and is not scored, as in the reference
    code; an empty prompt is conditioned on the tokenizer's BOS token when it has one.

    Outlier rule: the reference code (r-three/RAD and serjtroshin/rad-q,
    ``utils/metrics.py::compute_perplexity``) keeps a sample only when ``ppl < 1e5`` and
    averages the kept ones. ``max_ppl`` sets that cut (``None`` keeps every sample).

    Batched: ``batch_size`` (prompt, continuation) pairs per forward pass, right padded.
    """
    import torch

    from ._tensors import padded

    rows = _check_samples(samples)
    if len(prompts) != len(rows):
        raise ValueError(f"{len(prompts)} prompts for {len(rows)} sample lists")
    device = device if device is not None else next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pairs = []
    for i, (p, row) in enumerate(zip(prompts, rows, strict=True)):
        pid = list(tokenizer(p, add_special_tokens=False)["input_ids"]) if p else []
        if not pid:
            if tokenizer.bos_token_id is None:
                raise ValueError(f"prompt {i} is empty and the tokenizer has no BOS token")
            pid = [tokenizer.bos_token_id]
        for j, s in enumerate(row):
            cid = list(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else []
            pairs.append((i, j, pid, cid))
    nll = np.full(len(pairs), np.nan)
    order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][2]) + len(pairs[k][3]))
    it = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="perplexity")
    model.eval()
    with torch.inference_mode():
        for start in it:
            idx = [k for k in order[start:start + batch_size] if pairs[k][3]]
            if not idx:
                continue
            ids, mask = padded([pairs[k][2] + pairs[k][3] for k in idx], pad=pad_id)
            # score the continuation only: columns past the prompt, up to the row's length
            plen = torch.tensor([len(pairs[k][2]) for k in idx])
            score = (torch.arange(ids.shape[1])[None, :] >= plen[:, None]) & mask.bool()
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            tok_lp = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()
            sc = score[:, 1:]
            mean_nll = -(tok_lp * sc).sum(1) / sc.sum(1)
            nll[idx] = mean_nll.double().numpy()
    ppl = np.exp(nll)
    keep = np.isfinite(ppl) if max_ppl is None else np.isfinite(ppl) & (ppl < max_ppl)
    per = [np.empty(len(r)) for r in rows]
    for k, (i, j, _, _) in enumerate(pairs):
        per[i][j] = ppl[k]
    mean = float(ppl[keep].mean()) if keep.any() else math.nan
    return PerplexityResult(mean, per, int((~keep).sum()))


def mauve_score(p_texts: Sequence[str], q_texts: Sequence[str], *,
                featurize_model_name: str = "google/electra-large-discriminator",
                num_buckets: int | str = "auto", scaling_factor: float = 5.0,
                kmeans_max_iter: int = 500, seed: int = 25, device_id: int = -1,
                **kwargs) -> float:
    """MAUVE between reference texts ``p_texts`` (unguided generations) and ``q_texts``.

    Paper 002 App. F: ELECTRA-large features (He et al. 2023), scaling constant c = 5,
    k-means with 500 iterations, ``n / 10`` clusters (``num_buckets="auto"``). Needs the
    ``mauve-text`` package and the feature model (hub access or a local copy); raises
    ``ImportError`` naming the package when it is missing.
    """
    try:
        import mauve
    except ImportError as e:
        raise ImportError("mauve_score needs the 'mauve-text' package: pip install mauve-text") from e
    out = mauve.compute_mauve(
        p_text=list(p_texts), q_text=list(q_texts), featurize_model_name=featurize_model_name,
        num_buckets=num_buckets, mauve_scaling_factor=scaling_factor,
        kmeans_max_iter=kmeans_max_iter, seed=seed, device_id=device_id, verbose=False, **kwargs)
    return float(out.mauve)


# ---------------------------------------------------------------------------------------
# tables and plots
# ---------------------------------------------------------------------------------------
def results_table(rows: Sequence[dict]):
    """Tidy results: one row per (method, β, ...) setting.

    Returns a ``pandas.DataFrame`` when pandas is installed, else the list of dicts
    (columns = union of keys, missing entries ``None``), sorted by method then β.
    """
    rows = [dict(r) for r in rows]
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    rows = [{c: r.get(c) for c in cols} for r in rows]
    rows.sort(key=lambda r: (str(r.get("method", "")), float(r.get("beta") or 0.0)))
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame(rows, columns=cols)


def tradeoff_plot(table, *, x: str = "perplexity", y: str = "avg_max_toxicity",
                  hue: str = "method", label_points: str | None = "beta",
                  ax=None, path: str | Path | None = None, title: str | None = None):
    """Attribute/fluency trade-off plot in the layout of paper 002 Fig. 4 / Fig. 6.

    One curve per ``hue`` value (method), points ordered by β, the control metric
    (toxicity or positive rate) on the vertical axis and fluency (perplexity or MAUVE) on
    the horizontal axis; each point is annotated with its β. Saves to ``path`` when given.
    Returns the matplotlib ``Axes``.
    """
    import matplotlib
    if ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
    for c in (x, y):
        if rows and c not in rows[0]:
            raise KeyError(f"column {c!r} not in the results table (columns: {sorted(rows[0])})")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.5))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r.get(hue, "")), []).append(r)
    for name, g in groups.items():
        g = sorted(g, key=lambda r: float(r.get("beta") or 0.0))
        ax.plot([r[x] for r in g], [r[y] for r in g], marker="o", label=name)
        if label_points:
            for r in g:
                ax.annotate(f"{r.get(label_points)}", (r[x], r[y]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if path is not None:
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=150)
    return ax
