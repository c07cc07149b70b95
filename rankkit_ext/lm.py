"""Base language models for guided decoding: tiny GPT-2 configs, training, loading.

Guided decoding (paper 002 §2.1, §4.1) needs a base LM p_LM sharing the reward model's
tokenizer. No causal-LM weights ship offline, so the project builds tiny GPT-2 models
(``tiny_gpt2``) and trains them on real text (VADER's labelled sets) with ``train_lm``;
users with hub access pass any model id to ``load_base_lm``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rankkit.sequences import TokenSequences

from ._bos import bos_token_id, strip_bos, with_bos
from ._loop import OptimLoop

__all__ = ["tiny_gpt2", "tiny_causal_lm", "train_lm", "TrainLMResult", "load_base_lm",
           "bos_token_id", "with_bos", "strip_bos", "vader_base_lm", "vader_lm_folder",
           "vader_lm_held_out", "VADER_LM_SIZES"]

_STATE = "train_state.pt"


def tiny_gpt2(vocab_size: int = 50257, n_embd: int = 64, n_layer: int = 2, n_head: int = 2,
              n_positions: int = 128, seed: int = 0, bos_token_id: int | None = None,
              n_inner: int | None = None):
    """A randomly initialised GPT-2 (``GPT2LMHeadModel``) of the given size.

    Parameters
    ----------
    vocab_size : int
        50,257 for the GPT-2 tokenizer; smaller for synthetic tests.
    n_embd, n_layer, n_head, n_positions : int
        ``GPT2Config`` sizes; ``n_embd`` must be divisible by ``n_head``.
    seed : int
        Initialisation seed; the global torch RNG is left untouched.
    bos_token_id : int, optional
        BOS = EOS token id; ``vocab_size - 1`` by default (GPT-2's ``<|endoftext|>`` is
        50256 = the last id).
    n_inner : int, optional
        Width of the MLP blocks; ``GPT2Config``'s default (``4 * n_embd``) when ``None``.

    Examples
    --------
    >>> m = tiny_gpt2(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    >>> m.config.n_embd, m.config.vocab_size
    (16, 32)
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
    bos = vocab_size - 1 if bos_token_id is None else int(bos_token_id)
    if not 0 <= bos < vocab_size:
        raise ValueError(f"bos_token_id={bos} is outside [0, vocab_size={vocab_size})")
    cfg = GPT2Config(vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     n_inner=n_inner, n_positions=n_positions, bos_token_id=bos, eos_token_id=bos,
                     pad_token_id=bos, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    # fork_rng: seeding must not leak into the caller's global RNG (no global state)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg)
    return model.eval()


def tiny_causal_lm(model_type: str = "llama", vocab_size: int = 50257, hidden_size: int = 32,
                   n_layer: int = 2, n_head: int = 2, max_positions: int = 128, seed: int = 0,
                   bos_token_id: int | None = None, eos_token_id: int | None = None,
                   pad_token_id: int | None = None, **config_kwargs):
    """A randomly initialised causal LM of any architecture ``transformers`` knows.

    Built with ``AutoConfig.for_model(model_type, ...)`` and
    ``AutoModelForCausalLM.from_config`` from the generic config names (``hidden_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``max_position_embeddings``; GPT-2's
    config maps them onto ``n_embd`` … itself), so tests and examples can exercise
    non-GPT-2 models offline. ``save_pretrained`` it and load it back by path with
    :func:`load_base_lm` or ``RADQ.from_backbone``.

    Parameters
    ----------
    model_type : str
        ``"llama"``, ``"qwen2"``, ``"mistral"``, ``"gpt_neox"``, ``"gpt2"`` …
    vocab_size, hidden_size, n_layer, n_head, max_positions : int
        ``hidden_size`` must be divisible by ``n_head``.
    seed : int
        Initialisation seed; the global torch RNG is left untouched.
    bos_token_id, eos_token_id, pad_token_id : int, optional
        Default: BOS = EOS = ``vocab_size - 1`` (as GPT-2's ``<|endoftext|>``), pad = EOS.
    **config_kwargs
        Further config fields (``intermediate_size`` defaults to ``2 * hidden_size``,
        ``num_key_value_heads`` to ``n_head``).

    Examples
    --------
    >>> m = tiny_causal_lm("llama", vocab_size=32, hidden_size=16, n_layer=1, n_head=2)
    >>> type(m).__name__, m.config.hidden_size
    ('LlamaForCausalLM', 16)
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if hidden_size % n_head:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by n_head={n_head}")
    bos = vocab_size - 1 if bos_token_id is None else int(bos_token_id)
    eos = bos if eos_token_id is None else int(eos_token_id)
    pad = eos if pad_token_id is None else int(pad_token_id)
    for name, v in (("bos_token_id", bos), ("eos_token_id", eos), ("pad_token_id", pad)):
        if not 0 <= v < vocab_size:
            raise ValueError(f"{name}={v} is outside [0, vocab_size={vocab_size})")
    kw = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=n_layer,
              num_attention_heads=n_head, max_position_embeddings=max_positions,
              bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    if model_type != "gpt2":  # GPT-2's MLP width is n_inner (None = 4 d)
        kw.update(intermediate_size=2 * hidden_size, num_key_value_heads=n_head)
    kw.update(config_kwargs)
    cfg = AutoConfig.for_model(model_type, **kw)
    # fork_rng: seeding must not leak into the caller's global RNG (no global state)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    return model.eval()


@dataclass
class TrainLMResult:
    """Outcome of :func:`train_lm`.

    Attributes
    ----------
    losses : list of float
        Mean token cross-entropy per optimisation step (nats), from step 0, including the
        steps done before a resume.
    steps : int
        Optimisation steps done in total.
    epochs_done : int
    resumed_from_step : int
        0 for a fresh run.
    """

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    epochs_done: int = 0
    resumed_from_step: int = 0


def _batches(sequences: TokenSequences, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    # one permutation per (seed, epoch): a resumed run replays the same order
    perm = np.random.default_rng([seed, epoch]).permutation(len(sequences))
    return [perm[i:i + batch_size] for i in range(0, perm.size, batch_size)]


def _frequent_tokens(sequences: TokenSequences, vocab_size: int, n: int) -> np.ndarray:
    counts = np.bincount(sequences.tokens, minlength=vocab_size)
    # stable sort: ties broken by id, so the shortlist is a function of the data alone
    return np.sort(np.argsort(-counts, kind="stable")[:n])


def _sampled_softmax_loss(model, ids, mask, shortlist, negatives: int, rng):
    r"""Cross-entropy over a sampled vocabulary (sampled softmax, Jean et al. 2015).

    Exact logits for the shortlist ∪ this batch's targets; ``negatives`` ids drawn
    uniformly without replacement from the other :math:`N` ids stand in for them, each
    weighted :math:`N / m` (``+ log(N/m)`` on its logit), so the normaliser is an unbiased
    estimate of the full one and rare tokens are still pushed down. Costs
    O(|shortlist| + m) per position instead of O(|V|): the LM head dominates a small
    model's step on CPU (|V| = 50,257 against d = 64).
    """
    import torch

    body = model.base_model
    hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    keep = mask[:, 1:].bool()
    h, y = hidden[keep], ids[:, 1:][keep]
    head = model.get_output_embeddings()
    W, b = head.weight, getattr(head, "bias", None)
    V = W.shape[0]
    exact = torch.unique(torch.cat([shortlist.to(y.device), y]))
    free = np.ones(V, bool)
    free[exact.cpu().numpy()] = False
    rest = np.flatnonzero(free)
    m = min(int(negatives), rest.size)
    cols = exact
    if m:
        neg = torch.from_numpy(np.sort(rng.choice(rest, m, replace=False))).to(y.device)
        cols = torch.cat([exact, neg])
    z = h @ W[cols].T
    if b is not None:
        z = z + b[cols]
    if m:
        z[:, exact.numel():] += float(np.log(rest.size / m))
    return torch.nn.functional.cross_entropy(z, torch.searchsorted(exact, y))


def train_lm(model, sequences: TokenSequences, *, epochs: int = 1, batch_size: int = 32,
             lr: float = 1e-3, weight_decay: float = 0.01, seed: int = 0,
             checkpoint_dir: str | Path | None = None, checkpoint_every: int = 200,
             progress: bool | None = None, device=None, shortlist: int | None = None,
             negatives: int = 1024, max_len: int | None = None,
             stop_after: int | None = None) -> TrainLMResult:
    r"""Train a causal LM on token sequences with next-token cross-entropy.

    Each sequence is prefixed with the model's BOS token and truncated to the model's
    positions (``max_position_embeddings``; ``n_positions`` for GPT-2); the loss is :math:`-\frac{1}{N}\sum \log p(u_t \mid \text{BOS}, u_{<t})`
    over all real tokens of the batch (padding is masked). AdamW with a linear decay of
    the learning rate to zero (as in paper 002 App. E).

    Checkpoints (model, optimiser, scheduler, RNG states, step, losses) are written
    atomically to ``checkpoint_dir/train_state.pt`` every ``checkpoint_every`` steps and at
    the end (:class:`rankkit_ext._loop.OptimLoop`, shared with the other training
    functions); calling ``train_lm`` again with the same arguments resumes from it bit for
    bit (the batch order depends only on ``seed`` and the epoch). The final weights are saved with
    ``save_pretrained(checkpoint_dir / "final")``.

    Parameters
    ----------
    model : any transformers causal LM (e.g. from :func:`tiny_gpt2` or
        :func:`tiny_causal_lm`), trained in place.
    sequences : TokenSequences
        Training texts, already tokenized with the model's tokenizer.
    epochs, batch_size, lr, weight_decay : training settings.
    seed : int
        Seeds batch order (numpy Generator) and dropout (a forked torch RNG).
    progress : bool or None
        Show a tqdm bar (None, the default: only on an interactive terminal or in a notebook with ipywidgets, :mod:`rankkit._progress`).
    shortlist : int, optional
        ``None`` (default): the exact loss over the full vocabulary. An int F: sampled
        softmax — exact logits for the F most frequent tokens of ``sequences`` and every
        target of the batch, ``negatives`` uniformly drawn others weighted to estimate the
        rest of the normaliser (:func:`_sampled_softmax_loss`; the recorded losses are that
        estimate). For heads that are one linear map (GPT-2, Llama, Qwen2 …).
    negatives : int
        Sampled ids per step with ``shortlist``.
    max_len : int, optional
        Cut sequences to this many tokens (default: the model's positions minus the BOS).
    stop_after : int, optional
        Stop after this many steps in total (the schedule is that of the full run; call
        again to resume): splits a run over jobs, and tests interruption.

    Returns
    -------
    TrainLMResult
    """
    import torch

    from ._tensors import padded

    if not isinstance(sequences, TokenSequences):
        sequences = TokenSequences.from_encoding(sequences)
    if len(sequences) == 0:
        raise ValueError("sequences is empty; nothing to train on")
    from ._hf import max_positions, text_config

    cfg = text_config(model.config)
    V = int(cfg.vocab_size)
    if sequences.tokens.size and (sequences.tokens.max() >= V or sequences.tokens.min() < 0):
        bad = int(sequences.tokens.max())
        raise ValueError(f"token id {bad} is outside the model's vocabulary [0, {V}); "
                         f"tokenize with the model's tokenizer")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).train()
    bos = bos_token_id(cfg)
    # one position goes to BOS; GPT-2 n_positions and Llama max_position_embeddings alike
    cap = (max_positions(cfg) or 1024) - 1
    if max_len is not None and not 1 <= int(max_len) <= cap:
        raise ValueError(f"max_len={max_len} must be in [1, {cap}] (the model's positions "
                         f"minus one for BOS)")
    seqs = sequences.truncate(cap if max_len is None else int(max_len))
    short = None
    if shortlist is not None:
        if int(shortlist) < 0 or int(negatives) < 0:
            raise ValueError(f"shortlist={shortlist} and negatives={negatives} must be >= 0")
        short = torch.from_numpy(_frequent_tokens(seqs, V, int(shortlist)))

    n_batches = -(-len(seqs) // batch_size)
    total = epochs * n_batches
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-12,
                            weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
    ckpt = Path(checkpoint_dir) / _STATE if checkpoint_dir is not None else None
    loop = OptimLoop("language-model checkpoint", ckpt, total=total, seed=seed,
                     state={"model": model, "opt": opt, "sched": sched},
                     settings={"total": total, "batch_size": batch_size, "n": len(seqs),
                               "seed": seed, "shortlist": shortlist,
                               "negatives": negatives if shortlist is not None else None},
                     every=checkpoint_every, device=device, progress=progress,
                     stop_after=stop_after)
    with loop:
        for step in loop:
            epoch, within = divmod(step, n_batches)
            idx = _batches(seqs, batch_size, seed, epoch)[within]
            ids, mask = padded(seqs.select(np.asarray(idx)), pad=bos, prepend=[bos])
            if short is None:
                labels = ids.masked_fill(mask == 0, -100)
                loss = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                             labels=labels.to(device)).loss
            else:  # negatives drawn per (seed, step): a resumed run draws the same ones
                loss = _sampled_softmax_loss(model, ids.to(device), mask.to(device), short,
                                             negatives, np.random.default_rng([seed, step, 1]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loop.done(float(loss.detach()))
        loop.save()
    result = TrainLMResult(losses=loop.history["loss"], steps=loop.step,
                           epochs_done=loop.step // n_batches, resumed_from_step=loop.resumed_from)
    model.eval()
    if checkpoint_dir is not None and loop.step >= total:
        model.save_pretrained(Path(checkpoint_dir) / "final")
    return result


def load_base_lm(name_or_path: str | Path, *, device=None, dtype=None):
    """Load a causal LM for guided decoding: a hub id (online) or a local folder.

    Any architecture ``transformers.AutoModelForCausalLM`` knows (GPT-2, Llama, Qwen2 …).
    A folder written by :func:`train_lm` (``<checkpoint_dir>/final``) or by
    ``save_pretrained`` loads offline; a folder holding a ``final`` sub-folder is
    resolved to it. Returns the model in eval mode.

    Raises
    ------
    rankkit._hub.HubUnreachableError
        A hub id that is not in the local cache while the hub is unreachable (or
        ``HF_HUB_OFFLINE=1``): raised within ~2.5 s, naming the id and how to pass a
        local folder instead.
    FileNotFoundError
        A path (``./x``, ``/x``, ``~/x``) with nothing there.
    """
    from ._hf import load_pretrained

    p = Path(name_or_path).expanduser()
    if p.is_dir() and not (p / "config.json").exists() and (p / "final" / "config.json").exists():
        name_or_path = p / "final"
    kw = {} if dtype is None else {"dtype": dtype}
    model = load_pretrained(name_or_path, "causal_lm", what="base language model", **kw)
    if device is not None:
        model.to(device)
    return model.eval()


# ---------------------------------------------------------------------------------------
# the package's offline base LM: a small GPT-2 trained once on the VADER texts
# ---------------------------------------------------------------------------------------
#: Settings of :func:`vader_base_lm` per ``size``. "small" is the model the analyses and the
#: extension notebook use; "tiny" trains in seconds (tests, smoke runs), on at most
#: ``max_texts`` texts per set.
VADER_LM_SIZES = {
    "tiny": dict(n_embd=16, n_layer=1, n_head=2, max_len=16, epochs=1, batch_size=16,
                 lr=3e-3, shortlist=256, negatives=64, max_texts=40),
    "small": dict(n_embd=64, n_layer=2, n_head=2, max_len=40, epochs=3, batch_size=64,
                  lr=3e-3, shortlist=2048, negatives=1024, max_texts=None),
}
_VADER_LM_VERSION = 1  # bump when the recipe changes: older caches are then not reused
_HELD_OUT = 0.05


def _vader_sets(sets) -> tuple[str, ...]:
    from rankkit.datasets import VADER_SETS

    if sets in (None, "all", "vader"):
        return tuple(sorted(VADER_SETS))
    items = [sets] if isinstance(sets, str) else list(sets)
    names = []
    for s in items:
        name = s.split(":", 1)[1] if s.startswith("vader:") else s
        if name not in VADER_SETS:
            raise ValueError(f"sets={s!r} is not a VADER set; use 'all' or any of "
                             f"{[f'vader:{k}' for k in VADER_SETS]}")
        names.append(name)
    return tuple(sorted(set(names)))


def _vader_lm_settings(sets, size, seed, overrides) -> dict:
    from rankkit.datasets import VADER_SHA256

    if size not in VADER_LM_SIZES:
        raise ValueError(f"size={size!r} is not one of {sorted(VADER_LM_SIZES)}")
    recipe = dict(VADER_LM_SIZES[size])
    unknown = set(overrides) - set(recipe)
    if unknown:
        raise TypeError(f"vader_base_lm got unknown settings {sorted(unknown)}; it takes "
                        f"{sorted(recipe)}")
    recipe.update(overrides)
    return {"version": _VADER_LM_VERSION, "sets": list(_vader_sets(sets)), "size": size,
            "tokenizer": "gpt2", "vader_sha256": VADER_SHA256, "held_out": _HELD_OUT,
            "seed": int(seed), **recipe}


def _held_out_index(n: int, seed: int) -> np.ndarray:
    """Sorted indices of the held-out texts among ``n`` (5 %, a fixed permutation)."""
    perm = np.random.default_rng([seed, 5]).permutation(n)
    return np.sort(perm[:max(1, int(round(_HELD_OUT * n)))])


def vader_lm_held_out(sets="all", size: str = "small", *, seed: int = 0,
                      **overrides) -> dict[str, np.ndarray]:
    """Which texts :func:`vader_base_lm` held out: per VADER set (``"vader:movie"`` …), the
    sorted indices into that set's texts (as :func:`rankkit.datasets.load` orders them).

    For evaluations the base LM must not have seen, e.g. the prompts of guided decoding.
    """
    from rankkit.datasets import VADER_SETS

    settings = _vader_lm_settings(sets, size, seed, overrides)
    sizes = [VADER_SETS[name][1] for name in settings["sets"]]
    if settings["max_texts"] is not None:
        sizes = [min(n, settings["max_texts"]) for n in sizes]
    held = _held_out_index(sum(sizes), seed)
    out, start = {}, 0
    for name, n in zip(settings["sets"], sizes, strict=True):
        out[f"vader:{name}"] = held[(held >= start) & (held < start + n)] - start
        start += n
    return out


def vader_lm_folder(sets="all", size: str = "small", *, cache_dir: str | Path | None = None,
                    seed: int = 0, **overrides) -> Path:
    """Cache folder of :func:`vader_base_lm` for these settings (it may not exist yet):
    ``<cache>/base_lm/<fingerprint of the settings>``."""
    from rankkit._io import fingerprint
    from rankkit.datasets import cache_dir as default_cache

    settings = _vader_lm_settings(sets, size, seed, overrides)
    root = Path(cache_dir) if cache_dir is not None else default_cache()
    return root / "base_lm" / fingerprint(settings)[:20]


def vader_base_lm(sets="all", size: str = "small", *, cache_dir: str | Path | None = None,
                  progress: bool | None = None, device=None, seed: int = 0,
                  return_report: bool = False, **overrides):
    r"""The package's offline base LM: a small GPT-2 trained once on the VADER texts, cached.

    Guided decoding (paper 002 §2.1) needs a base LM :math:`p_{LM}` with the reward model's
    tokenizer; no causal-LM weights ship offline, so this trains one (GPT-2 tokenizer,
    :math:`|V|` = 50,257, tied input/output embeddings) with :func:`train_lm` on the four
    VADER sets (movie reviews, tweets, NYT editorials, Amazon reviews: 23,703 texts,
    533k tokens) or the ones named in ``sets``. 5 % of the texts (a fixed permutation
    under ``seed``) are held out; the held-out perplexity (:func:`rankkit_ext.metrics.perplexity`,
    conditioned on BOS exactly as in training, full-vocabulary softmax) and the unigram
    and bigram baselines' (:func:`rankkit_ext.metrics.ngram_perplexity`) are written to
    ``report.json`` beside the weights.

    The first call trains (a tqdm bar; interrupted runs resume from the last checkpoint
    bit for bit); later calls load ``<cache>/base_lm/<fingerprint>``
    (:func:`vader_lm_folder`) in well under a second. The fingerprint covers every
    setting, the VADER archive's hash and a recipe version, so changing any of them trains
    a new model instead of reusing a stale one.

    Measured for ``size="small"`` (1,056 steps) on a 2-core x86_64 VM: 2 min 9 s of training
    plus 11 s of evaluation with the machine otherwise idle (torch's 2 threads; 16.5 min
    with one thread at load average 7-8), held-out perplexity 503 on 26,536 tokens, against
    1,871 for the add-one unigram and 485 for the interpolated bigram (λ tuned on the
    held-out texts): the LM is at bigram level, which is enough for guidance to show
    (``analyses/guided_tradeoff.py``: +0.20 ± 0.03 positive rate with RAD-V at β = 50).

    Parameters
    ----------
    sets : "all", a preset (``"vader:movie"``) or a list of presets
    size : {"small", "tiny"}
        A recipe of :data:`~rankkit_ext.lm.VADER_LM_SIZES`. "small" (d = 64, 2 layers, 3 epochs, sampled
        softmax over 2,048 frequent + batch tokens + 1,024 negatives) is the analyses'
        model; "tiny" trains in seconds on 40 texts per set, for tests.
    cache_dir : path, optional
        Default ``$RANKKIT_CACHE`` or ``~/.cache/rankkit``.
    progress : bool or None
        tqdm bar while training (None, the default: only on an interactive terminal or in a notebook with ipywidgets, :mod:`rankkit._progress`).
    device : optional
        Where to train and put the model (default CPU).
    seed : int
        Initialisation, held-out split and batch order.
    return_report : bool
        Also return the report (dict: settings, held-out and baseline perplexities,
        parameter count, training time).
    **overrides
        Any field of the recipe (``n_embd``, ``epochs`` …), e.g. ``epochs=1``.

    Returns
    -------
    model : transformers.GPT2LMHeadModel in eval mode (and the report with
        ``return_report=True``).

    Notes
    -----
    BOS convention (the same in training, scoring and generation): texts and prompts are
    token ids *without* BOS; the model is always conditioned on ``[BOS] + ids``
    (:func:`bos_token_id`, :func:`with_bos`).

    Examples
    --------
    >>> base = vader_base_lm()                        # doctest: +SKIP
    >>> base, report = vader_base_lm(return_report=True)   # doctest: +SKIP
    >>> round(report["held_out"]["perplexity"])      # doctest: +SKIP
    """
    import time

    import torch

    from rankkit._io import atomic_json, read_json

    settings = _vader_lm_settings(sets, size, seed, overrides)
    folder = vader_lm_folder(sets, size, cache_dir=cache_dir, seed=seed, **overrides)
    report_path, final = folder / "report.json", folder / "ckpt" / "final"
    if report_path.is_file() and (final / "config.json").is_file():
        model = load_base_lm(final, device=device)
        if return_report:
            return model, read_json(report_path, "base-LM report")
        return model

    import os
    import platform

    from rankkit import tokenizers
    from rankkit.datasets import _read_vader

    from .metrics import ngram_perplexity, perplexity

    folder.mkdir(parents=True, exist_ok=True)
    atomic_json(folder / "settings.json", settings)
    tok = tokenizers.load("gpt2")
    texts = []
    for name in settings["sets"]:
        t = _read_vader(name)[0]  # the texts only: no dataset or matrix is built
        texts += t if settings["max_texts"] is None else t[:settings["max_texts"]]
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    held_idx = _held_out_index(len(enc), seed)
    is_held = np.zeros(len(enc), bool)
    is_held[held_idx] = True
    cut = settings["max_len"]
    held = TokenSequences.from_lists([enc[i][:cut] for i in held_idx])
    train = TokenSequences.from_lists([enc[i][:cut] for i in np.flatnonzero(~is_held)])
    model = tiny_gpt2(len(tok), settings["n_embd"], settings["n_layer"], settings["n_head"],
                      n_positions=cut + 1, seed=seed, bos_token_id=tok.bos_token_id)
    t0 = time.perf_counter()
    res = train_lm(model, train, epochs=settings["epochs"], batch_size=settings["batch_size"],
                   lr=settings["lr"], seed=seed, checkpoint_dir=folder / "ckpt",
                   checkpoint_every=50, progress=progress, device=device,
                   shortlist=settings["shortlist"], negatives=settings["negatives"])
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    ppl = perplexity(model, held, batch_size=32, progress=progress)
    uni, _ = ngram_perplexity(train, held, len(tok), n=1)
    bi, lam = ngram_perplexity(train, held, len(tok), n=2, bos=bos_token_id(model))
    report = {
        "settings": settings,
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "n_texts": {"train": len(train), "held_out": len(held)},
        "n_tokens": {"train": int(train.tokens.size), "held_out": int(held.tokens.size)},
        "held_out": {"perplexity": ppl.perplexity, "nll": ppl.nll, "n_tokens": ppl.n_tokens},
        "baselines": {"unigram_add_one": uni.perplexity, "bigram_interpolated": bi.perplexity,
                      "bigram_lambda": lam},
        "training": {"steps": res.steps, "resumed_from_step": res.resumed_from_step,
                     "first_loss": float(np.mean(res.losses[:20])),
                     "last_loss": float(np.mean(res.losses[-20:])),
                     "seconds_this_call": t_train,
                     "seconds_eval": time.perf_counter() - t0,
                     "loss": "sampled softmax (train_lm shortlist); held-out figures are "
                             "full-vocabulary"},
        "machine": {"platform": platform.machine(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                    "torch": torch.__version__},
        "bos": "texts scored and trained as [BOS] + ids (BOS = <|endoftext|>, 50256)",
    }
    atomic_json(report_path, report)  # written last: its presence marks a finished model
    model.eval()
    return (model, report) if return_report else model
