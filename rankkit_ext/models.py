"""RAD-V and RAD-Q reward models on any Hugging Face causal-LM backbone.

Both models predict the expected future response r̂(v | x') of a next-token candidate v
after a prefix x' (paper 002, §2.2 and §3.2). They differ in where v enters:

* :class:`RADV` (V-style, Deng & Raffel 2023) reads v as *input*: a linear head
  d → n_labels on every position, r̂(v | x') = head(h([BOS, x', v])). Scoring k candidates
  costs k extra token passes (cached prefix), and its learned matrix R̂ can have rank > d
  (App. D.1).
* :class:`RADQ` (Q-style, eq. 8–9) reads v through the backbone's frozen output embedding
  e(v): r̂(v | x') = ⟨h(x'), w⟩ + ⟨h(x'), W e(v)⟩, so one backbone pass scores the whole
  vocabulary with one matrix product, and rank(R̂) ≤ d (eq. 10–11).

Scoring contract (shared with guided decoding and twisted SMC)
--------------------------------------------------------------
``score_candidates(input_ids, attention_mask, candidates, *, label=0, state=None)`` with
LEFT-padded prefixes *without* BOS (the model prepends its own ``bos_token_id`` right
before each row's first real token, never relying on BOS == pad) returns
``(scores (B, k), state)``. Passing the returned ``state`` back with ``input_ids``
extended by exactly one column runs the backbone on that column only (KV cache). A state
is immutable: scoring candidates and extending never modify it, so one state can be
extended along several branches, and :meth:`ScoringState.select` re-indexes its rows
(resampling, beams). :meth:`RADQ.score_vocab` scores all :math:`|V|` tokens.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rankkit._io import atomic_json, atomic_write

__all__ = ["RewardModel", "RADV", "RADQ", "ScoringState", "tokenizer_fingerprint",
           "load_reward_model", "SigmoidScores"]

_CONFIG_NAME = "reward_model.json"
_HEAD_NAME = "head.safetensors"
_BACKBONE_DIR = "backbone"


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable identity of a tokenizer: ``sha256`` of its sorted vocabulary.

    Saved in a reward model's folder so that a guided decoder can refuse a base LM whose
    tokenizer differs (token ids would silently mean different strings).
    """
    vocab = tokenizer.get_vocab()
    blob = json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False)
    return f"sha256:{hashlib.sha256(blob.encode('utf-8')).hexdigest()}:{len(vocab)}"


# --------------------------------------------------------------------------------------
# KV cache helpers: build NEW cache objects, never mutate the one a state holds
# --------------------------------------------------------------------------------------
def _cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer for transformers 5.x ``layers``, 4.x ``key_cache`` or tuples."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache, strict=True))
    return [(k, v) for k, v, *_ in cache]


def _new_cache(layers, config):
    """A fresh ``DynamicCache`` holding ``layers``; updates to it cat into new tensors,
    so the tensors passed in (shared with another state) are never written."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=config)
    except TypeError:  # transformers < 4.56 takes no config
        cache = DynamicCache()
    for i, (k, v) in enumerate(layers):
        cache.update(k, v, i)
    return cache


def _map_cache(cache, fn, config):
    return _new_cache([(fn(k), fn(v)) for k, v in _cache_layers(cache)], config)


@dataclass(frozen=True)
class ScoringState:
    """Cached prefix activations for incremental scoring (immutable).

    Attributes
    ----------
    input_ids, attention_mask : torch.Tensor, shape (B, T)
        The left-padded prefixes this state was computed for (without BOS).
    ext_mask : torch.Tensor, shape (B, T + 1)
        Attention mask of the model's own input ``[pad | BOS, x']`` (one column longer).
    cache : transformers Cache
        Keys/values of all ``T + 1`` columns.
    hidden : torch.Tensor, shape (B, d)
        Last-layer hidden state h(x') at the last column.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    ext_mask: torch.Tensor
    cache: object
    hidden: torch.Tensor
    config: object = None

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, rows) -> ScoringState:
        """A new state with rows ``rows`` (1-D indices, repeats allowed), e.g. after resampling."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device).reshape(-1)
        if idx.numel() and (int(idx.min()) < -self.batch_size or int(idx.max()) >= self.batch_size):
            raise IndexError(f"row indices must lie in [0, {self.batch_size}), got "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        return ScoringState(self.input_ids[idx], self.attention_mask[idx], self.ext_mask[idx],
                            _map_cache(self.cache, lambda t: t[idx], self.config),
                            self.hidden[idx], self.config)


# --------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------
class RewardModel(nn.Module):
    """Common backbone handling for :class:`RADV` and :class:`RADQ`.

    Parameters
    ----------
    backbone : transformers.PreTrainedModel
        Any causal LM (``AutoModelForCausalLM``: GPT-2, Llama, Qwen2, GPT-NeoX …) or its
        base model (``AutoModel``). Hidden states come from ``backbone.base_model``; the
        architecture is reached only through generic calls (``get_input_embeddings``,
        ``get_output_embeddings``, the config's ``bos_token_id``), see ``rankkit_ext._hf``.
    n_labels : int
        Number of reward heads trained jointly (7 for Jigsaw); decoding uses one.
    label_names : sequence of str, optional
    bos_token_id : int, optional
        Token prepended to every input; defaults to ``backbone.config.bos_token_id``.
    tokenizer_fingerprint : str, optional
        Identity of the tokenizer (see :func:`tokenizer_fingerprint`); saved with the model.
    freeze_embeddings : bool
        Freeze the input and output token embeddings (App. E: the shared GPT-2
        embedding stays frozen so unseen tokens keep their pretrained geometry).
    """

    kind: str = "base"

    def __init__(self, backbone, n_labels: int = 1, label_names=None, bos_token_id: int | None = None,
                 tokenizer_fingerprint: str | None = None, freeze_embeddings: bool = True):
        super().__init__()
        if n_labels < 1:
            raise ValueError(f"n_labels must be >= 1, got {n_labels}")
        self.backbone = backbone
        from ._hf import text_config

        cfg = text_config(backbone.config)  # the decoder's config, also for nested configs
        self.n_labels = int(n_labels)
        if label_names is None:
            label_names = tuple(f"label_{i}" for i in range(n_labels))
        self.label_names = tuple(str(s) for s in ([label_names] if isinstance(label_names, str)
                                                  else label_names))
        if len(self.label_names) != self.n_labels:
            raise ValueError(f"{len(self.label_names)} label_names for n_labels={n_labels}")
        self.vocab_size = int(self.output_embedding_weight().shape[0])
        bos = bos_token_id if bos_token_id is not None else getattr(cfg, "bos_token_id", None)
        if bos is None:
            raise ValueError("the backbone config has no bos_token_id; pass bos_token_id= "
                             "(the model always prepends its own BOS, never the pad token)")
        if not 0 <= int(bos) < self.vocab_size:
            raise ValueError(f"bos_token_id={bos} is outside [0, vocab_size={self.vocab_size})")
        self.bos_token_id = int(bos)
        self.tokenizer_fingerprint = tokenizer_fingerprint or (
            f"{getattr(cfg, 'model_type', 'unknown')}:vocab={self.vocab_size}")
        self.freeze_embeddings = bool(freeze_embeddings)
        if freeze_embeddings:
            self.backbone.get_input_embeddings().weight.requires_grad_(False)
            out = self.backbone.get_output_embeddings() if hasattr(
                self.backbone, "get_output_embeddings") else None
            if out is not None:
                out.weight.requires_grad_(False)

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_backbone(cls, name_or_path: str | os.PathLike, *, auto: str = "causal_lm",
                      dtype=None, **kwargs) -> RewardModel:
        """Load a hub id or local folder as the backbone and wrap it.

        Parameters
        ----------
        name_or_path : str or os.PathLike
            A hub id (``"gpt2"``, any causal LM) or a local directory written by
            ``save_pretrained``.
        auto : {"causal_lm", "base"}
            ``AutoModelForCausalLM`` (default; its LM head gives RAD-Q's e(v)) or
            ``AutoModel`` (no head: e(v) is the tied input embedding).
        dtype : torch.dtype, optional
        **kwargs
            Passed to the class (``n_labels``, ``label_names``, ``seed`` …).

        Raises
        ------
        rankkit._hub.HubUnreachableError
            A hub id that is not cached while the hub is unreachable (or
            ``HF_HUB_OFFLINE=1``), within ~2.5 s, naming the id and the local-folder fix.

        Notes
        -----
        Offline, the backbone is a local folder: an existing directory is loaded directly,
        without a hub request. The package's own base LM
        (:func:`rankkit_ext.lm.vader_base_lm`) is one, once saved; it shares the base LM's
        tokenizer by construction, which guided decoding requires
        (:func:`rankkit_ext.guided.check_compatible`). Wrapping the loaded model itself
        (``RADQ(copy.deepcopy(base))``) works too; copy it, since training the reward model
        must not change the base LM.

        Examples
        --------
        >>> import rankkit_ext as rx                                        # doctest: +SKIP
        >>> base = rx.vader_base_lm()              # trains once, then loads from the cache
        ... # doctest: +SKIP
        >>> base.save_pretrained("my_lm")          # any folder of config.json + weights
        ... # doctest: +SKIP
        >>> radq = rx.RADQ.from_backbone("my_lm", seed=0)                   # doctest: +SKIP
        >>> radv = rx.RADV.from_backbone("./my_lm", seed=0)                 # doctest: +SKIP
        """
        from ._hf import load_pretrained

        if auto not in ("causal_lm", "base"):
            raise ValueError(f"auto must be 'causal_lm' or 'base', got {auto!r}")
        kw = {} if dtype is None else {"dtype": dtype}
        return cls(load_pretrained(name_or_path, auto, what=f"{cls.__name__} backbone", **kw),
                   **kwargs)

    def _options(self) -> dict:
        return {}

    @property
    def hidden_size(self) -> int:
        """d, the width of h(x): that of the output embedding e(·) (logits = h Eᵀ), which for
        every causal LM equals the last hidden state's (GPT-2 ``n_embd``, Llama
        ``hidden_size``, OPT-350m's 512-wide projection)."""
        return int(self.output_embedding_weight().shape[1])

    @property
    def device(self) -> torch.device:
        return self.backbone.get_input_embeddings().weight.device

    def _has_lm_head(self) -> bool:
        return (hasattr(self.backbone, "get_output_embeddings")
                and self.backbone.get_output_embeddings() is not None)

    def output_embedding_weight(self) -> torch.Tensor:
        """e(·) as a (:math:`|V|`, d) tensor: the LM head weight, or the (tied) input embedding
        when the backbone is a base model without an LM head."""
        out = self.backbone.get_output_embeddings() if hasattr(
            self.backbone, "get_output_embeddings") else None
        return (out if out is not None else self.backbone.get_input_embeddings()).weight

    def label_index(self, label: int | str) -> int:
        if isinstance(label, str):
            if label not in self.label_names:
                raise KeyError(f"label {label!r} not found; available: {list(self.label_names)}")
            return self.label_names.index(label)
        i = int(label)
        if not 0 <= i < self.n_labels:
            raise IndexError(f"label={i} out of range for {self.n_labels} labels "
                             f"{list(self.label_names)}")
        return i

    # ---- backbone passes --------------------------------------------------------------
    def _run(self, ids, mask, position_ids, past=None, use_cache=False):
        from ._hf import cache_kwargs, forward_kwargs, output_cache

        body = self.backbone.base_model
        # explicit position ids (left padding: positions count real tokens only) wherever the
        # architecture takes them; the cache under this transformers release's argument name
        kw = forward_kwargs(body, attention_mask=mask, position_ids=position_ids)
        if past is not None:
            kw.update(cache_kwargs(body, past))
        out = body(input_ids=ids, use_cache=use_cache, **kw)
        return out.last_hidden_state, (output_cache(out) if use_cache else None)

    def _check_prefix(self, input_ids, attention_mask):
        input_ids = torch.as_tensor(input_ids, device=self.device)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = torch.as_tensor(attention_mask, device=self.device)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids "
                             f"shape {tuple(input_ids.shape)}")
        return input_ids.long(), attention_mask.long()

    def _prefix_state(self, input_ids, attention_mask) -> ScoringState:
        """Run ``[pad | BOS, x']`` through the backbone once (BOS goes right before the
        first real token of each row; position ids count real tokens only)."""
        B, T = input_ids.shape
        zero = torch.zeros((B, 1), dtype=torch.long, device=input_ids.device)
        ext_ids = torch.cat([zero, input_ids], 1)
        ext_mask = torch.cat([zero, attention_mask], 1)
        # ext column of BOS = input column of the first real token (ext is shifted by one),
        # or the last column for an empty prefix
        has = attention_mask.bool().any(1)
        first = torch.full((B,), T, dtype=torch.long, device=input_ids.device)
        if T:
            first = torch.where(has, attention_mask.bool().long().argmax(1), first)
        rows = torch.arange(B, device=input_ids.device)
        ext_ids[rows, first] = self.bos_token_id
        ext_mask[rows, first] = 1
        pos = (ext_mask.cumsum(1) - 1).clamp(min=0)
        hidden, cache = self._run(ext_ids, ext_mask, pos, use_cache=True)
        return ScoringState(input_ids, attention_mask, ext_mask, cache, hidden[:, -1],
                            self.backbone.config)

    def prefix_state(self, input_ids, attention_mask=None, state: ScoringState | None = None
                     ) -> ScoringState:
        """State for ``input_ids``: reused when equal to ``state``'s prefixes, extended by one
        backbone column when they add exactly one column, else computed from scratch
        (``state=None``)."""
        input_ids, attention_mask = self._check_prefix(input_ids, attention_mask)
        if state is None:
            return self._prefix_state(input_ids, attention_mask)
        B, T = state.input_ids.shape
        if input_ids.shape[0] != B or input_ids.shape[1] not in (T, T + 1):
            raise ValueError(
                f"state holds prefixes of shape {(B, T)}; input_ids {tuple(input_ids.shape)} must "
                f"have the same rows and {T} or {T + 1} columns (pass state=None to recompute, or "
                f"state.select(rows) after re-ordering rows)")
        if not (torch.equal(input_ids[:, :T], state.input_ids)
                and torch.equal(attention_mask[:, :T], state.attention_mask)):
            bad = int((input_ids[:, :T] != state.input_ids).any(1).nonzero()[0, 0]) if not torch.equal(
                input_ids[:, :T], state.input_ids) else -1
            raise ValueError(f"input_ids[:, :{T}] differ from the state's prefixes (first row: {bad}); "
                             "the state only extends by appending one column")
        if input_ids.shape[1] == T:
            return state
        new_tok = input_ids[:, T:]
        ext_mask = torch.cat([state.ext_mask, attention_mask[:, T:]], 1)
        pos = (ext_mask.sum(1, keepdim=True) - 1).clamp(min=0)
        past = _map_cache(state.cache, lambda t: t, self.backbone.config)  # new container
        hidden, cache = self._run(new_tok, ext_mask, pos, past=past, use_cache=True)
        return ScoringState(input_ids, attention_mask, ext_mask, cache, hidden[:, -1],
                            self.backbone.config)

    def _check_candidates(self, candidates, B):
        candidates = torch.as_tensor(candidates, device=self.device).long()
        if candidates.ndim == 1:
            candidates = candidates.unsqueeze(0).expand(B, -1)
        if candidates.ndim != 2 or candidates.shape[0] != B:
            raise ValueError(f"candidates must be (B={B}, k), got shape {tuple(candidates.shape)}")
        if candidates.numel() and (int(candidates.min()) < 0 or int(candidates.max()) >= self.vocab_size):
            raise ValueError(f"candidate ids must lie in [0, vocab_size={self.vocab_size}); got "
                             f"[{int(candidates.min())}, {int(candidates.max())}]")
        return candidates

    # ---- training interface ---------------------------------------------------------
    def _right_padded(self, tokens, mask):
        """``[BOS, u_1..u_L]`` with right padding (causal attention already hides the pads)."""
        B = tokens.shape[0]
        bos = torch.full((B, 1), self.bos_token_id, dtype=torch.long, device=tokens.device)
        ids = torch.cat([bos, tokens.long()], 1)
        m = torch.cat([torch.ones_like(bos), mask.long()], 1)
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand(B, -1)
        return ids, m, pos

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced rewards of every prefix of right-padded utterances.

        Parameters
        ----------
        tokens, mask : torch.Tensor, shape (B, L)
            Utterances without BOS, right-padded; ``mask`` is 1 on real tokens.

        Returns
        -------
        torch.Tensor, shape (B, L, n_labels)
            ``out[b, t] = r̂(u_{t+1} | u_{1:t})``, the reward of the prefix ``u_{1:t+1}``
            (values at padded positions are meaningless).
        """
        raise NotImplementedError

    def score_sequences(self, input_ids, attention_mask=None, *, label: int | str = 0) -> torch.Tensor:
        """r̂(x_T | x_{<T}) for left-padded sequences x with at least one real token: (B,)."""
        input_ids, attention_mask = self._check_prefix(input_ids, attention_mask)
        if input_ids.shape[1] == 0 or not bool(attention_mask[:, -1].bool().all()):
            raise ValueError("score_sequences needs left-padded rows whose last column is a real token")
        scores, _ = self.score_candidates(input_ids[:, :-1], attention_mask[:, :-1],
                                          input_ids[:, -1:], label=label)
        return scores[:, 0]

    def score_candidates(self, input_ids, attention_mask, candidates, *, label: int | str = 0,
                         state: ScoringState | None = None):
        raise NotImplementedError

    # ---- persistence -------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/backbone`` (HF ``save_pretrained``), ``head.safetensors`` and
        ``reward_model.json``; files are written to temporaries and renamed."""
        from safetensors.torch import save

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(folder / _BACKBONE_DIR)
        head = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()
                if not k.startswith("backbone.")}
        atomic_write(folder / _HEAD_NAME, "wb", lambda f: f.write(save(head)))
        config = {
            "class": type(self).__name__, "n_labels": self.n_labels,
            "label_names": list(self.label_names), "bos_token_id": self.bos_token_id,
            "vocab_size": self.vocab_size, "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "freeze_embeddings": self.freeze_embeddings, "options": self._options(),
            "backbone_auto": ("causal_lm" if self._has_lm_head() else "base"),
        }
        # written last: a folder with reward_model.json has its head and backbone too
        atomic_json(folder / _CONFIG_NAME, config, indent=2)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, device=None, torch_dtype=None) -> RewardModel:
        """Load a folder written by :meth:`save_pretrained` (the class is read from it)."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForCausalLM

        folder = Path(folder)
        cfg_path = folder / _CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} not found: not a folder written by "
                                    "RewardModel.save_pretrained")
        cfg = json.loads(cfg_path.read_text())
        klass = {"RADV": RADV, "RADQ": RADQ}.get(cfg["class"])
        if klass is None:
            raise ValueError(f"{cfg_path}: unknown class {cfg['class']!r} (expected RADV or RADQ)")
        if cls is not RewardModel and klass is not cls:
            raise TypeError(f"{folder} holds a {cfg['class']}, not a {cls.__name__}")
        auto = AutoModel if cfg.get("backbone_auto") == "base" else AutoModelForCausalLM
        kw = {} if torch_dtype is None else {"dtype": torch_dtype}
        backbone = auto.from_pretrained(folder / _BACKBONE_DIR, **kw)
        model = klass(backbone, n_labels=cfg["n_labels"], label_names=cfg["label_names"],
                      bos_token_id=cfg["bos_token_id"],
                      tokenizer_fingerprint=cfg["tokenizer_fingerprint"],
                      freeze_embeddings=cfg["freeze_embeddings"], **cfg["options"])
        head = load_file(str(folder / _HEAD_NAME))
        missing, unexpected = model.load_state_dict(head, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(f"{folder / _HEAD_NAME}: missing {missing}, unexpected {unexpected}")
        if torch_dtype is not None:
            model.to(torch_dtype)
        return model.to(device) if device is not None else model


def load_reward_model(folder, **kwargs) -> RewardModel:
    """Load a RADV or RADQ folder (see :meth:`RewardModel.from_pretrained`)."""
    return RewardModel.from_pretrained(folder, **kwargs)


# --------------------------------------------------------------------------------------
# RAD-V
# --------------------------------------------------------------------------------------
def _seeded_init(modules, seed: int) -> None:
    """Re-draw the weights of the ``nn.Linear`` layers in ``modules`` from their default law
    (PyTorch's: U(−1/√fan_in, 1/√fan_in) for weight and bias) with a generator seeded by
    ``seed``, instead of the global RNG: two scripts building the same model get the same
    heads, whatever else they did with ``torch``'s RNG."""
    g = torch.Generator().manual_seed(int(seed))
    for mod in modules:
        if mod is None:
            continue
        for layer in (m for m in mod.modules() if isinstance(m, nn.Linear)):
            bound = 1.0 / math.sqrt(layer.in_features)
            with torch.no_grad():
                for p in (layer.weight, layer.bias):
                    if p is not None:
                        p.copy_(torch.empty(p.shape, dtype=torch.float64).uniform_(-bound, bound,
                                                                                    generator=g))


class RADV(RewardModel):
    r"""V-style reward model (Deng & Raffel 2023; paper 002 §2.1, §3.1.2).

    .. math:: \hat r(v \mid x') = w_\ell^\top h([\mathrm{BOS}, x', v]) + b_\ell

    a linear head d → n_labels on the last-layer hidden state of every position. The
    candidate v passes through all layers, so R̂_RAD-V can exceed rank d (App. D.1) and
    scoring k candidates costs k cached token passes (Table 1).

    Parameters
    ----------
    candidate_batch : int
        Largest number of (row, candidate) pairs run through the backbone at once when
        scoring; each pass uses its own expanded copy of the prefix KV cache.
    seed : int, default 0
        Seeds the head's initial weights (a local generator, never the global RNG).
    """

    kind = "radv"

    def __init__(self, backbone, n_labels: int = 1, label_names=None, bos_token_id=None,
                 tokenizer_fingerprint=None, freeze_embeddings: bool = True,
                 candidate_batch: int = 4096, seed: int = 0):
        super().__init__(backbone, n_labels, label_names, bos_token_id, tokenizer_fingerprint,
                         freeze_embeddings)
        self.head = nn.Linear(self.hidden_size, self.n_labels)
        _seeded_init([self.head], seed)
        self.head.to(device=self.device, dtype=self.backbone.get_input_embeddings().weight.dtype)
        self.candidate_batch = int(candidate_batch)

    def forward(self, tokens, mask):
        ids, m, pos = self._right_padded(tokens, mask)
        hidden, _ = self._run(ids, m, pos)
        return self.head(hidden[:, 1:])  # position t holds [BOS, u_1..u_t]

    def score_candidates(self, input_ids, attention_mask, candidates, *, label: int | str = 0,
                         state: ScoringState | None = None):
        """Scores r̂(v | x') of candidates (B, k) after left-padded prefixes (B, T).

        One backbone pass per new prefix column (cached in ``state``), then the B·k
        candidates in chunks of ``candidate_batch``, each against an expanded copy of the
        prefix cache (the state's cache is never written).

        Returns
        -------
        scores : torch.Tensor, shape (B, k)
        state : ScoringState
            The prefix state; pass it back with ``input_ids`` extended by one column.
        """
        li = self.label_index(label)
        state = self.prefix_state(input_ids, attention_mask, state)
        cands = self._check_candidates(candidates, state.batch_size)
        B, k = cands.shape
        layers = _cache_layers(state.cache)
        n_pos = state.ext_mask.sum(1)  # position id of the candidate = #real tokens incl. BOS
        flat = cands.reshape(-1)
        rows = torch.arange(B, device=flat.device).repeat_interleave(k)
        out = []
        for s in range(0, B * k, max(1, self.candidate_batch)):
            r = rows[s:s + self.candidate_batch]
            cache = _new_cache([(kk[r], vv[r]) for kk, vv in layers], self.backbone.config)
            mask = torch.cat([state.ext_mask[r], torch.ones_like(r).unsqueeze(1)], 1)
            hidden, _ = self._run(flat[s:s + self.candidate_batch, None], mask, n_pos[r, None],
                                  past=cache, use_cache=True)
            out.append(self.head(hidden[:, -1])[:, li])
        scores = torch.cat(out) if out else flat.new_zeros(0, dtype=state.hidden.dtype)
        return scores.reshape(B, k), state


# --------------------------------------------------------------------------------------
# RAD-Q
# --------------------------------------------------------------------------------------
class RADQ(RewardModel):
    r"""Q-style low-rank reward model (paper 002, eq. 8–9; paper 001 §3.2 "ARM").

    .. math::
        \hat r_\ell(v \mid x') = \underbrace{\langle h(x'), w_\ell\rangle}_{\text{baseline}}
            + \underbrace{\langle g(h(x')), W_\ell\, e(v)\rangle}_{\Delta\hat r}

    with e(v) the backbone's frozen output embedding and g = identity (``head="linear"``)
    or a two-layer GELU MLP (``head="mlp"``, the ablation of App. G.2.2 read as an MLP on
    h before the bilinear form; eq. 19 as printed has mismatched shapes). Stacking the
    prefixes gives R̂ = H(w1ᵀ + WE), so rank(R̂) ≤ d (eq. 10–11), for the linear head or
    without the baseline. With the MLP head *and* the baseline the two left factors differ,
    R̂ = Hw1ᵀ + g(H)WE, and the bound is d + 1 (:attr:`rank_bound`).

    Parameters
    ----------
    baseline : bool
        Keep the baseline term ⟨h, w⟩ (ablation §4.5 drops it).
    head : {"linear", "mlp"}
    seed : int, default 0
        Seeds the heads' initial weights (a local generator, never the global RNG).
    """

    kind = "radq"

    def __init__(self, backbone, n_labels: int = 1, label_names=None, bos_token_id=None,
                 tokenizer_fingerprint=None, freeze_embeddings: bool = True,
                 baseline: bool = True, head: str = "linear", seed: int = 0):
        super().__init__(backbone, n_labels, label_names, bos_token_id, tokenizer_fingerprint,
                         freeze_embeddings)
        if head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        d = self.hidden_size
        dtype = self.backbone.get_input_embeddings().weight.dtype
        self.baseline = bool(baseline)
        self.head_type = head
        # no biases: a bias b would add b·11ᵀ and lift the rank bound of eq. 11 to d + 1
        self.w = nn.Linear(d, self.n_labels, bias=False) if baseline else None
        self.W = nn.Linear(d, self.n_labels * d, bias=False)
        self.mlp = (nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
                    if head == "mlp" else None)
        _seeded_init([self.w, self.W, self.mlp], seed)
        for mod in (self.w, self.W, self.mlp):
            if mod is not None:
                mod.to(device=self.device, dtype=dtype)

    def _options(self):
        return {"baseline": self.baseline, "head": self.head_type}

    @property
    def rank_bound(self) -> int:
        """The most rank R̂ can have: d, or d + 1 with the MLP head and the baseline."""
        return self.hidden_size + int(self.head_type == "mlp" and self.baseline)

    def _u(self, h):
        """W g(h): (..., n_labels, d), the prefix side of Δr̂."""
        g = self.mlp(h) if self.mlp is not None else h
        return self.W(g).unflatten(-1, (self.n_labels, self.hidden_size))

    def _base(self, h):
        if self.w is None:
            return h.new_zeros(*h.shape[:-1], self.n_labels)
        return self.w(h)

    def delta(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Δr̂(e(v) | h) for one token per hidden vector: h (..., d), tokens (...) →
        (..., n_labels). Gathers e(v) first, never a (…, :math:`|V|`) tensor."""
        e = self.output_embedding_weight()[tokens]
        return torch.einsum("...nd,...d->...n", self._u(h), e.to(h.dtype))

    def hidden_states(self, tokens, mask) -> torch.Tensor:
        """h(u_{1:t}) for t = 0..L-1 (t = 0 is BOS alone): (B, L, d)."""
        ids, m, pos = self._right_padded(tokens, mask)
        hidden, _ = self._run(ids, m, pos)
        return hidden[:, :-1]

    def forward(self, tokens, mask):
        h = self.hidden_states(tokens, mask)
        return self._base(h) + self.delta(h, tokens.long())

    def score_candidates(self, input_ids, attention_mask, candidates, *, label: int | str = 0,
                         state: ScoringState | None = None):
        """Scores r̂(v | x') of candidates (B, k): one backbone pass per new prefix column,
        then a gather of k output embeddings and a dot product (eq. 9)."""
        li = self.label_index(label)
        state = self.prefix_state(input_ids, attention_mask, state)
        cands = self._check_candidates(candidates, state.batch_size)
        h = state.hidden
        e = self.output_embedding_weight()[cands].to(h.dtype)  # (B, k, d)
        u = self._u(h)[:, li]  # (B, d)
        scores = torch.einsum("bd,bkd->bk", u, e) + self._base(h)[:, li, None]
        return scores, state

    def score_vocab(self, input_ids, attention_mask, *, label: int | str = 0,
                    state: ScoringState | None = None):
        """Scores of all :math:`|V|` tokens, (B, :math:`|V|`): one matrix product u Eᵀ plus the baseline."""
        li = self.label_index(label)
        state = self.prefix_state(input_ids, attention_mask, state)
        h = state.hidden
        E = self.output_embedding_weight().to(h.dtype)
        scores = self._u(h)[:, li] @ E.T + self._base(h)[:, li, None]
        return scores, state


# --------------------------------------------------------------------------------------
# σ link for models trained with the binary cross-entropy (eq. 18)
# --------------------------------------------------------------------------------------
class SigmoidScores:
    r"""A reward model whose scores are :math:`\sigma(\hat r)`, for decoding with a model
    trained with ``objective="bce"`` (paper 002 eq. 18, App. G.2.1: σ maps RAD-Q's logits
    into [0, 1] "which is also used during generation").

    Wraps any model with the scoring contract; ``score_candidates`` / ``score_vocab`` /
    ``score_sequences`` return σ of the wrapped scores and the wrapped state, everything
    else (``vocab_size``, ``tokenizer_fingerprint``, ``label_names``, ``eval`` …) is the
    wrapped model's. The learned matrix R̂ (and its rank ≤ d for RAD-Q) is that of the
    *logits*: pass the unwrapped model to :func:`~rankkit_ext.learned.learned_matrix`.
    """

    def __init__(self, model):
        if not hasattr(model, "score_candidates"):
            raise TypeError(f"SigmoidScores needs a reward model with score_candidates, got "
                            f"{type(model).__name__}")
        self.model = model

    def __getattr__(self, name):
        return getattr(self.__dict__["model"], name)

    def score_candidates(self, *args, **kwargs):
        scores, state = self.model.score_candidates(*args, **kwargs)
        return torch.sigmoid(scores), state

    def score_vocab(self, *args, **kwargs):
        scores, state = self.model.score_vocab(*args, **kwargs)
        return torch.sigmoid(scores), state

    def score_sequences(self, *args, **kwargs):
        return torch.sigmoid(self.model.score_sequences(*args, **kwargs))

    def __repr__(self) -> str:
        return f"SigmoidScores({self.model!r})"
