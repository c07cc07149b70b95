r"""Twists :math:`\log\psi_\theta(s_{1:t-1}, v)` for every next token v in one pass.

A twist maps the prefix :math:`s_{0:t-1}` to log-twists for all V candidate tokens (shape
(K, V)), so the twist-induced proposal
:math:`q_t(v\mid s_{<t})\propto p_{LM}(v\mid s_{<t})\,\psi_\theta(s_{<t}, v)` costs one twist
evaluation per step (Zhao et al. 2024, §4; Kim et al. 2025, §1). Two kinds exist:

* a **head** (:class:`TwistHead`: :class:`LinearTwist`, :class:`MLPTwist`,
  :class:`TableTwist`) on the *frozen base* LM's hidden state of the prefix (shape (K, H)):
  the samplers and :mod:`~rankkit_ext.tsmc.learning` feed detached hidden states, so only
  the head's parameters are trained;
* :class:`CopyTwist`, a head on a **separate trainable copy** of the base LM's body (full
  fine-tuning, or LoRA via ``peft``): log ψ is computed from the *copy's* hidden states of the
  prefix, so CTL also trains the copy while the base stays frozen (issue 6, "optionally on a
  separate trainable copy").

The twist protocol
------------------
Every twist exposes the calls the samplers and CTL use, batched over K particles, mirroring
the LM adapters of :mod:`~rankkit_ext.tsmc.adapters` (``base_hidden`` is the base adapter's
hidden state of the same prefix):

``init_state(prompt, K, base_hidden (K, H)) -> (log_psi (K, V), state)``
    log ψ(s₀, ·) for the first token; the prompt is run once and shared by all particles;
``step(state, tokens (K,), base_hidden (K, H)) -> (log_psi (K, V), state)``
    append one token per particle (a :class:`CopyTwist` grows its own KV cache by one token,
    alongside the base cache);
``reorder(state, ancestors (K,)) -> state``
    follow resampling (the copy's KV cache rows are reordered like the base's);
``sequence_log_psi(prompt, tokens (K, L), base_hidden (K, L - start, H), start=0)``
    differentiable log ψ (K, L − start, V) of the prefixes :math:`s_{0:j}` (continuation
    tokens ``tokens[:, :j]``) for j = start..L−1, teacher-forced in one pass: for a head, one
    head evaluation on the given base hidden states; for a :class:`CopyTwist`, one forward
    of the copy over prompt + ``tokens[:, :L-1]``. The KV-cache path and this path agree to
    round-off (tested).

Heads implement the protocol trivially from the base hidden states, so the samplers have one
code path for every twist; an object that only has ``log_psi(hidden)`` is wrapped by
:func:`as_twist`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["Twist", "TwistHead", "LinearTwist", "MLPTwist", "TableTwist", "CopyTwist",
           "as_twist", "check_twist_fits"]


class Twist(nn.Module):
    """Base class of the twist protocol (see the module docstring)."""

    def init_state(self, prompt, n: int, base_hidden: torch.Tensor) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def step(self, state, tokens: torch.Tensor,
             base_hidden: torch.Tensor) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def reorder(self, state, ancestors: torch.Tensor):
        return state

    def sequence_log_psi(self, prompt, tokens: torch.Tensor, base_hidden: torch.Tensor,
                         start: int = 0) -> torch.Tensor:
        raise NotImplementedError


class TwistHead(Twist):
    """Base class of heads on the base LM's hidden state: ``forward(hidden (K, H)) -> log_psi (K, V)``.

    The protocol calls ignore the prompt and tokens: the base hidden state of the prefix is
    all a head needs, so its state is ``None`` and resampling has nothing to reorder.
    """

    def __init__(self, hidden_size: int, vocab_size: int):
        super().__init__()
        self.hidden_size, self.vocab_size = int(hidden_size), int(vocab_size)

    def log_psi(self, hidden: torch.Tensor) -> torch.Tensor:
        p = next(self.parameters())
        return self(hidden.to(device=p.device, dtype=p.dtype))

    def init_state(self, prompt, n, base_hidden):
        return self.log_psi(base_hidden), None

    def step(self, state, tokens, base_hidden):
        return self.log_psi(base_hidden), None

    def sequence_log_psi(self, prompt, tokens, base_hidden, start=0):
        K, L, H = base_hidden.shape
        return self.log_psi(base_hidden.reshape(K * L, H)).reshape(K, L, -1)


class LinearTwist(TwistHead):
    """log ψ = W h + b. Zero-initialised, so an untrained twist gives the bootstrap proposal."""

    def __init__(self, hidden_size: int, vocab_size: int, dtype=torch.float32):
        super().__init__(hidden_size, vocab_size)
        self.proj = nn.Linear(hidden_size, vocab_size, dtype=dtype)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden):
        return self.proj(hidden)


class MLPTwist(TwistHead):
    """log ψ = W₂ relu(W₁ h + b₁) + b₂ (last layer zero-initialised: ψ ≡ 1 at start)."""

    def __init__(self, hidden_size: int, vocab_size: int, width: int = 256, dtype=torch.float32,
                 seed: int = 0):
        super().__init__(hidden_size, vocab_size)
        g = torch.Generator().manual_seed(seed)
        self.inp = nn.Linear(hidden_size, width, dtype=dtype)
        with torch.no_grad():  # explicit seed instead of the global RNG
            self.inp.weight.copy_(torch.randn(width, hidden_size, generator=g, dtype=dtype)
                                  / hidden_size ** 0.5)
            self.inp.bias.zero_()
        self.out = nn.Linear(width, vocab_size, dtype=dtype)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, hidden):
        return self.out(torch.relu(self.inp(hidden)))


class TableTwist(TwistHead):
    """A free table log ψ[prefix, v] for enumerable models whose hidden state is a one-hot
    prefix index (:class:`~rankkit_ext.tsmc.adapters.TableLM`, :class:`EnumerableLM`).

    Equivalent to :class:`LinearTwist` on one-hot inputs but allows exact ``-inf`` entries
    (hard constraints inside the optimal twist ψ*), which a matrix product would turn into NaN.
    """

    def __init__(self, table: torch.Tensor, trainable: bool = True):
        super().__init__(table.shape[0], table.shape[1])
        self.table = nn.Parameter(table.clone(), requires_grad=trainable)

    def forward(self, hidden):
        return self.table[hidden.argmax(-1)]


class CopyTwist(Twist):
    r"""Twist head on a separate, trainable copy of the base LM's body.

    .. math::
        \log\psi_\theta(s_{<t}, \cdot) = \mathrm{head}_\theta\big(h^{copy}_\theta(s_{0:t-1})\big),

    where :math:`h^{copy}_\theta` is the last hidden state (after the final norm, the input
    of the LM head) of a deep copy of ``base_model``'s transformer body. CTL (Zhao et al.
    2024, §4; Kim et al. 2025, eq. 5–6) then trains the copy's weights (all of them, or LoRA
    adapters) together with the head, while the base LM that defines
    :math:`p_{LM}` and σ stays frozen. The head is zero-initialised, so an untrained
    :class:`CopyTwist` is ψ ≡ 1: the bootstrap proposal.

    In the samplers the copy keeps its own KV cache: the prompt is run once and its cache
    shared by the K particles, every step feeds one token per particle, resampling reorders
    the rows by the same ancestor indices as the base cache. Teacher forcing
    (``sequence_log_psi``, used by CTL and :func:`~rankkit_ext.tsmc.sampler.score_sequences`)
    runs one forward of the copy over prompt + continuation, with gradients.

    Parameters
    ----------
    base_model : transformers.PreTrainedModel
        A causal LM (e.g. ``GPT2LMHeadModel``); its body (``base_model.base_model``, without
        the LM head) is deep-copied, never modified.
    head : {"linear", "mlp"}
        :class:`LinearTwist` or :class:`MLPTwist` on the copy's hidden states.
    lora : peft.LoraConfig, optional
        Wrap the copy with ``peft.get_peft_model``: only the adapters (and the head) train.
        ``None``: every weight of the copy trains.
    width, seed : int
        MLP width; seed of the MLP's first layer and of the LoRA initialisation (the global
        RNG is forked, never advanced).

    Notes
    -----
    The copy always runs in eval mode (dropout off, also under ``.train()``): dropout would
    draw from the global RNG, breaking same-seed reproducibility and the equality of the
    KV-cache and teacher-forced paths. It has no ``log_psi(hidden)``: it needs token ids, not
    the base's hidden states, so :mod:`~rankkit_ext.tsmc.exact`'s table-based helpers do not
    apply; use :func:`~rankkit_ext.tsmc.sampler.score_sequences` on enumerated sequences.
    """

    def __init__(self, base_model, head: str = "linear", lora=None, width: int = 256,
                 seed: int = 0):
        super().__init__()
        if head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp'; got {head!r}.")
        cfg = getattr(base_model, "config", None)
        if cfg is None or not hasattr(base_model, "base_model"):
            raise TypeError(f"CopyTwist needs a Hugging Face causal LM; got "
                            f"{type(base_model).__name__}.")
        with torch.random.fork_rng(devices=[]):  # peft's LoRA init draws from the global RNG
            torch.manual_seed(seed)
            body = copy.deepcopy(base_model.base_model)  # transformer body, no LM head
            body.requires_grad_(lora is None)  # a distilled base comes back frozen
            if lora is not None:
                from peft import get_peft_model

                body = get_peft_model(body, lora)
        self.body = body.eval()
        p = next(self.body.parameters())
        from .._hf import text_config

        tcfg = text_config(cfg)  # the decoder's config, also for nested configs
        H, V = int(tcfg.hidden_size), int(tcfg.vocab_size)
        self.head = (LinearTwist(H, V, dtype=p.dtype) if head == "linear"
                     else MLPTwist(H, V, width=width, dtype=p.dtype, seed=seed)).to(p.device)
        self.hidden_size, self.vocab_size = H, V

    def train(self, mode: bool = True):
        super().train(mode)
        self.body.eval()  # dropout off: see Notes
        return self

    @property
    def device(self) -> torch.device:
        return next(self.body.parameters()).device

    def log_psi(self, hidden):
        raise TypeError("CopyTwist computes log psi from its own copy of the base model, not "
                        "from the base's hidden states; use the samplers, teacher_force(..., "
                        "twist=...) or score_sequences.")

    def _prompt(self, prompt) -> torch.Tensor:
        prompt = torch.as_tensor(prompt, dtype=torch.long, device=self.device).reshape(1, -1)
        if prompt.shape[1] == 0:
            raise ValueError("prompt is empty; CopyTwist needs at least one token (e.g. BOS).")
        return prompt

    def _body(self, ids, cache=None, use_cache=False):
        from .._hf import cache_kwargs, output_cache

        past = cache_kwargs(self.body, cache) if cache is not None else {}
        out = self.body(input_ids=ids, use_cache=use_cache, **past)
        return out.last_hidden_state, (output_cache(out) if use_cache else None)

    def init_state(self, prompt, n, base_hidden=None):
        h, cache = self._body(self._prompt(prompt), use_cache=True)
        cache.batch_repeat_interleave(int(n))  # the prompt is computed once for all particles
        return self.head(h[:, -1]).expand(int(n), -1), cache

    def step(self, state, tokens, base_hidden=None):
        h, cache = self._body(tokens.to(self.device).reshape(-1, 1), state, use_cache=True)
        return self.head(h[:, -1]), cache

    def reorder(self, state, ancestors):
        state.reorder_cache(ancestors.to(self.device))
        return state

    def sequence_log_psi(self, prompt, tokens, base_hidden=None, start=0):
        prompt = self._prompt(prompt)
        K, L = tokens.shape
        P = prompt.shape[1]
        # the last token is only ever the chosen one, never part of a conditioning prefix
        ids = torch.cat([prompt.expand(K, -1), tokens[:, : L - 1].to(self.device)], 1)
        h, _ = self._body(ids)
        return self.head(h[:, P - 1 + int(start):])


class _HeadLike(Twist):
    """Protocol wrapper for an object that only has ``log_psi(hidden)``."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def init_state(self, prompt, n, base_hidden):
        return self.inner.log_psi(base_hidden), None

    def step(self, state, tokens, base_hidden):
        return self.inner.log_psi(base_hidden), None

    def sequence_log_psi(self, prompt, tokens, base_hidden, start=0):
        K, L, H = base_hidden.shape
        return self.inner.log_psi(base_hidden.reshape(K * L, H)).reshape(K, L, -1)


def check_twist_fits(twist, lm) -> None:
    """Refuse a twist whose vocabulary (or, for a head on the base's hidden states, whose
    input size) differs from the base LM's, naming both sizes; without this the mismatch
    surfaces as a raw shape error in the first matrix product or a silent broadcast."""
    inner = twist.inner if isinstance(twist, _HeadLike) else twist
    V, H = getattr(lm, "vocab_size", None), getattr(lm, "hidden_size", None)
    tv, th = getattr(inner, "vocab_size", None), getattr(inner, "hidden_size", None)
    name = type(inner).__name__
    if V is not None and tv is not None and int(tv) != int(V):
        raise ValueError(f"{name} scores a vocabulary of {tv} tokens but the base LM has {V}: "
                         f"a twist log psi(s_<t, v) needs one value per base token; build it "
                         f"with vocab_size={V}")
    if (not isinstance(inner, CopyTwist) and H is not None and th is not None
            and int(th) != int(H)):
        raise ValueError(f"{name} reads hidden states of size {th} but the base LM's are {H}; "
                         f"build it with hidden_size={H} (e.g. {name}(lm.hidden_size, "
                         "lm.vocab_size))")


def as_twist(twist) -> Twist:
    """Return ``twist`` if it implements the twist protocol, else wrap an object that has
    ``log_psi(hidden)`` so it does."""
    if all(hasattr(twist, a) for a in ("init_state", "step", "reorder", "sequence_log_psi")):
        return twist
    if hasattr(twist, "log_psi"):
        return _HeadLike(twist)
    raise TypeError(f"cannot use {type(twist).__name__} as a twist: it needs log_psi(hidden) or "
                    "the protocol init_state/step/reorder/sequence_log_psi.")
