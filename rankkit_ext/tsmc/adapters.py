"""Incremental language-model adapters used by the samplers.

An adapter exposes three calls, all batched over particles:

``start(prompt (P,), n) -> Step``   run the prompt once and share it across n particles;
``advance(state, tokens (n,)) -> Step``   append one token per particle;
``reorder(state, ancestors (n,)) -> state``   follow resampling (KV cache rows included).

``Step = (log_probs (n, V), hidden (n, H), state)`` where ``log_probs`` are
:math:`\\log p_{LM}(v\\mid s_{0:t-1})` and ``hidden`` is the last hidden state of the prefix,
the input of a twist head. :class:`HFCausalLM` wraps any Hugging Face causal LM (KV cache
or recompute-every-step), :class:`TableLM` is a table-driven LM over a tiny vocabulary and
:class:`EnumerableLM` turns any adapter into one whose hidden state is the one-hot prefix
index, so a :class:`~rankkit_ext.tsmc.twists.TableTwist` can hold any twist, ψ* included.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["HFCausalLM", "TableLM", "EnumerableLM", "as_adapter", "prefix_count"]


def prefix_count(vocab_size: int, horizon: int) -> int:
    """Number of prefixes of length 0..horizon-1: Σ_t V^t (the rows of a table twist)."""
    return sum(vocab_size ** t for t in range(horizon))


class HFCausalLM:
    r"""Adapter for any Hugging Face causal LM (GPT-2, Llama, Qwen2 …; a hub id or local
    folder loads with :func:`rankkit_ext.lm.load_base_lm`).

    ``start`` takes one prompt (shared by all ``n`` particles, run once) or a batch of G
    prompts of different lengths: they are left padded, run once with explicit position ids
    (real tokens count from 0) and each repeated ``n`` times, group-major (rows
    ``g * n .. g * n + n - 1`` continue prompt g). Guided decoding batches several prompts
    × n samples this way and resamples within each prompt's group.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Used in eval mode under ``torch.no_grad``; its dtype sets the compute precision.
    eos_token_id : int, optional
        Defaults to ``model.config.eos_token_id``; ``None`` disables EOS handling.
    use_cache : bool
        True: the prompt is run once and its KV cache is repeated over the particles, each
        step feeds one token and resampling reorders the cache rows. False: every step
        recomputes the whole prefix (the peer measured by ``benchmarks/bench_tsmc.py``).
    output : {"log_probs", "logits"}
        What a step returns first: float64 :math:`\log p_{LM}(\cdot\mid s_{<t})` (the
        twist-induced proposal, exact enumeration) or the model's raw last-position logits
        in its own dtype (the reward-guided proposal needs only the top-k and one
        logsumexp, and a float64 copy of (n, :math:`|V|`) per step would cost as much as the LM
        head on CPU).
    pad_token_id : int, optional
        Id written into the left padding of a prompt batch (masked, never attended);
        default the config's pad, else EOS, else 0.
    bos_token_id : int or None
        The package's BOS convention (:func:`rankkit_ext.lm.bos_token_id`): prompts are
        token ids without BOS and the model is conditioned on ``[BOS] + prompt``, as
        :func:`rankkit_ext.lm.train_lm` trained it; a prompt that already starts with BOS
        keeps that one BOS (:func:`rankkit_ext.lm.with_bos`), and an empty prompt is
        ``[BOS]`` (unconditional). Default (-1): the model's BOS. ``None``: prompts are
        fed as given (then they must not be empty).
    """

    def __init__(self, model, eos_token_id: int | None = -1, use_cache: bool = True,
                 output: str = "log_probs", pad_token_id: int | None = None,
                 bos_token_id: int | None = -1):
        if output not in ("log_probs", "logits"):
            raise ValueError(f"output must be 'log_probs' or 'logits'; got {output!r}")
        self.model = model
        from .._hf import text_config

        cfg = text_config(model.config)  # the decoder's config, also for nested configs
        eos = cfg.eos_token_id if eos_token_id == -1 else eos_token_id
        self.eos_token_id = eos[0] if isinstance(eos, list | tuple) else eos  # Llama 3 lists
        self.use_cache = use_cache
        self.output = output
        self.vocab_size = int(cfg.vocab_size)
        self.hidden_size = int(cfg.hidden_size)  # width of hidden_states[-1], any architecture
        pad = pad_token_id if pad_token_id is not None else getattr(cfg, "pad_token_id", None)
        if pad is None:
            pad = self.eos_token_id
        self.pad_token_id = 0 if pad is None or int(pad) < 0 else int(pad)
        from .._bos import bos_token_id as _bos

        self.bos_token_id = _bos(cfg) if bos_token_id == -1 else bos_token_id
        # only the last position's logits are needed: (K, L, V) logits would dominate memory
        params = inspect.signature(model.forward).parameters
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def _forward(self, ids, cache=None, mask=None, pos=None):
        from .._hf import cache_kwargs, forward_kwargs, output_cache

        # position ids only for a model that takes them (ALiBi models have none)
        kw = {} if mask is None else forward_kwargs(self.model, attention_mask=mask,
                                                    position_ids=pos)
        if cache is not None:
            kw.update(cache_kwargs(self.model, cache))
        out = self.model(input_ids=ids, use_cache=self.use_cache, output_hidden_states=True,
                         **kw, **self._keep)
        logits = out.logits[:, -1]
        first = (torch.log_softmax(logits.to(torch.float64), -1) if self.output == "log_probs"
                 else logits)
        return first, out.hidden_states[-1][:, -1], output_cache(out)

    def _prompts(self, prompt) -> list[list[int]]:
        """One prompt (1-D) or a batch of prompts (2-D tensor, list of lists, TokenSequences)."""
        if isinstance(prompt, torch.Tensor):
            rows = [prompt.reshape(-1).tolist()] if prompt.ndim <= 1 else prompt.tolist()
        else:
            seq = list(prompt)
            nested = bool(seq) and all(isinstance(x, list | tuple) or getattr(x, "ndim", 0) == 1
                                       for x in seq)
            rows = [list(x) for x in seq] if nested else [seq]
        rows = [[int(t) for t in r] for r in rows]
        if rows and self.bos_token_id is not None:
            from .._bos import with_bos

            rows = [with_bos(r, self.bos_token_id) for r in rows]
        if not rows or not all(rows):
            raise ValueError("prompt is empty; pass at least one token (e.g. the BOS id "
                             f"{self.model.config.bos_token_id}).")
        return rows

    def start(self, prompt, n: int):
        from .._tensors import padded

        rows = self._prompts(prompt)
        self.model.eval()
        ids, mask = padded(rows, "left", self.pad_token_id, device=self.device)
        # without padding the model's own defaults (no mask, positions from the cache
        # length) are used, exactly as for a single prompt
        if not bool((mask == 1).all()):
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
        else:
            mask = pos = None
        first, h, cache = self._forward(ids, mask=mask, pos=pos)
        n = int(n)
        many = len(rows) > 1

        def rep(x):  # one prompt: a view; several: each row n times, group-major
            return x.repeat_interleave(n, 0) if many else x.expand(n, *x.shape[1:])

        ids_n = ids.repeat_interleave(n, 0)
        mask_n = None if mask is None else mask.repeat_interleave(n, 0)
        if self.use_cache:
            if hasattr(cache, "batch_repeat_interleave"):
                cache.batch_repeat_interleave(n)  # the prompts are computed once
            else:  # a cache class without it: run the n copies
                first, h, cache = self._forward(ids_n, mask=mask_n, pos=_positions(mask_n))
                many, n = True, 1
        state = _HFState(cache if self.use_cache else None, ids_n, mask_n)
        return rep(first), rep(h), state

    def advance(self, state, tokens: torch.Tensor):
        tokens = tokens.to(self.device).reshape(-1, 1)
        ids = torch.cat([state.ids, tokens], 1)
        mask = None if state.mask is None else torch.cat([state.mask, torch.ones_like(tokens)], 1)
        if self.use_cache:
            pos = None if mask is None else mask.sum(1, keepdim=True) - 1
            first, h, cache = self._forward(tokens, state.cache, mask=mask, pos=pos)
            return first, h, _HFState(cache, ids, mask)
        first, h, _ = self._forward(ids, mask=mask, pos=_positions(mask))
        return first, h, _HFState(None, ids, mask)

    def reorder(self, state, ancestors: torch.Tensor):
        ancestors = ancestors.to(self.device)
        ids = state.ids[ancestors]
        mask = None if state.mask is None else state.mask[ancestors]
        cache = state.cache
        if cache is not None:
            if hasattr(cache, "reorder_cache"):
                cache.reorder_cache(ancestors)
            elif hasattr(cache, "batch_select_indices"):
                cache.batch_select_indices(ancestors)
            else:  # no reorder support: recompute the prefix of the chosen rows
                _, _, cache = self._forward(ids, mask=mask, pos=_positions(mask))
        return _HFState(cache, ids, mask)


def _positions(mask):
    return None if mask is None else (mask.cumsum(-1) - 1).clamp_min(0)


@dataclass
class _HFState:
    """Particles' KV cache (None when recomputing) and their full token ids and attention
    mask (None: no padding anywhere, the model's defaults apply)."""

    cache: Any
    ids: torch.Tensor  # (n, L) prompt (left padded) + generated tokens
    mask: torch.Tensor | None


@dataclass
class _CodeState:
    inner: Any
    codes: torch.Tensor  # (n,) prefix index of each particle
    t: int  # prefix length (same for all particles)


class _PrefixIndexed:
    """Shared prefix-code arithmetic: code(s_{1:t}) = offset_t + Σ_i s_i V^{t-1-i}."""

    vocab_size: int
    horizon: int

    def _setup(self, vocab_size: int, horizon: int):
        self.vocab_size, self.horizon = int(vocab_size), int(horizon)
        self.hidden_size = prefix_count(self.vocab_size, self.horizon)
        self.offsets = [prefix_count(self.vocab_size, t) for t in range(self.horizon + 1)]

    def _next_codes(self, codes, t, tokens):
        local = codes - self.offsets[t]
        return self.offsets[t + 1] + local * self.vocab_size + tokens

    def _hidden(self, codes):
        safe = codes.clamp(max=self.hidden_size - 1)  # finished particles past the horizon
        return torch.nn.functional.one_hot(safe, self.hidden_size).to(torch.float64)

    def code_of(self, prefix) -> int:
        """Row index of a prefix (length < horizon) in a table twist."""
        c = 0
        for v in prefix:
            c = c * self.vocab_size + int(v)
        return self.offsets[len(prefix)] + c


class TableLM(_PrefixIndexed):
    """Table-driven LM over a tiny vocabulary: ``log_probs[code(prefix)]`` is log p(· | prefix).

    The prompt is ignored (the table is the conditional given it). Hidden state = one-hot
    prefix index.

    Parameters
    ----------
    log_probs : Tensor (prefix_count(V, T), V) float64, rows normalised in log space.
    eos_token_id : int, optional
    """

    def __init__(self, log_probs: torch.Tensor, horizon: int, eos_token_id: int | None = None):
        V = log_probs.shape[1]
        self._setup(V, horizon)
        if log_probs.shape[0] != self.hidden_size:
            raise ValueError(f"log_probs has {log_probs.shape[0]} rows; a vocabulary of {V} and "
                             f"horizon {horizon} need prefix_count = {self.hidden_size}.")
        err = (torch.logsumexp(log_probs, 1)).abs().max()
        if err > 1e-9:
            raise ValueError(f"log_probs rows must be normalised (logsumexp = 0); max error "
                             f"{float(err):.3g}. Fix: apply torch.log_softmax(table, 1).")
        self.log_probs = log_probs.to(torch.float64)
        self.eos_token_id = eos_token_id

    @classmethod
    def random(cls, vocab_size: int, horizon: int, generator: torch.Generator,
               eos_token_id: int | None = None, scale: float = 1.5) -> TableLM:
        logits = scale * torch.randn(prefix_count(vocab_size, horizon), vocab_size,
                                     generator=generator, dtype=torch.float64)
        return cls(torch.log_softmax(logits, 1), horizon, eos_token_id)

    def _step(self, codes, t):
        rows = self.log_probs[codes.clamp(max=self.hidden_size - 1)]
        return rows, self._hidden(codes), _CodeState(None, codes, t)

    def start(self, prompt, n):
        return self._step(torch.zeros(n, dtype=torch.long), 0)

    def advance(self, state, tokens):
        if state.t >= self.horizon:
            raise ValueError(f"TableLM has horizon {self.horizon}; cannot extend past it.")
        return self._step(self._next_codes(state.codes, state.t, tokens.cpu()), state.t + 1)

    def reorder(self, state, ancestors):
        return _CodeState(None, state.codes[ancestors.cpu()], state.t)


class EnumerableLM(_PrefixIndexed):
    """Wrap any adapter (e.g. a tiny random GPT-2 with vocab ≤ 5) so its hidden state is the
    one-hot prefix index; log-probabilities come from the wrapped model unchanged."""

    def __init__(self, inner, horizon: int):
        self.inner = inner
        self.eos_token_id = inner.eos_token_id
        self._setup(inner.vocab_size, horizon)

    def start(self, prompt, n):
        logp, _, st = self.inner.start(prompt, n)
        codes = torch.zeros(n, dtype=torch.long)
        return logp, self._hidden(codes), _CodeState(st, codes, 0)

    def advance(self, state, tokens):
        logp, _, st = self.inner.advance(state.inner, tokens)
        codes = self._next_codes(state.codes, state.t, tokens.cpu())
        return logp, self._hidden(codes), _CodeState(st, codes, state.t + 1)

    def reorder(self, state, ancestors):
        return _CodeState(self.inner.reorder(state.inner, ancestors), state.codes[ancestors.cpu()],
                          state.t)


def as_adapter(lm, **kw):
    """Return ``lm`` if it already is an adapter, else wrap a HF model in :class:`HFCausalLM`."""
    if hasattr(lm, "start") and hasattr(lm, "advance") and hasattr(lm, "reorder"):
        return lm
    if hasattr(lm, "config") and hasattr(lm, "forward"):
        return HFCausalLM(lm, **kw)
    raise TypeError(f"cannot use {type(lm).__name__} as a language model: pass a Hugging Face "
                    "causal LM or an adapter with start/advance/reorder.")
