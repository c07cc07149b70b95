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

from ._loop import OptimLoop

__all__ = ["tiny_gpt2", "tiny_causal_lm", "train_lm", "TrainLMResult", "load_base_lm"]

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


def train_lm(model, sequences: TokenSequences, *, epochs: int = 1, batch_size: int = 32,
             lr: float = 1e-3, weight_decay: float = 0.01, seed: int = 0,
             checkpoint_dir: str | Path | None = None, checkpoint_every: int = 200,
             progress: bool = True, device=None) -> TrainLMResult:
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
    progress : bool
        Show a tqdm bar.

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
    bos = cfg.bos_token_id
    bos = V - 1 if bos is None else bos
    # one position goes to BOS; GPT-2 n_positions and Llama max_position_embeddings alike
    max_len = (max_positions(cfg) or 1024) - 1
    seqs = sequences.truncate(max_len)

    n_batches = -(-len(seqs) // batch_size)
    total = epochs * n_batches
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-12,
                            weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
    ckpt = Path(checkpoint_dir) / _STATE if checkpoint_dir is not None else None
    loop = OptimLoop("language-model checkpoint", ckpt, total=total, seed=seed,
                     state={"model": model, "opt": opt, "sched": sched},
                     settings={"total": total, "batch_size": batch_size, "n": len(seqs),
                               "seed": seed}, every=checkpoint_every, device=device,
                     progress=progress)
    with loop:
        for step in loop:
            epoch, within = divmod(step, n_batches)
            idx = _batches(seqs, batch_size, seed, epoch)[within]
            ids, mask = padded(seqs.select(np.asarray(idx)), pad=bos, prepend=[bos])
            labels = ids.masked_fill(mask == 0, -100)
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                        labels=labels.to(device))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loop.done(float(out.loss.detach()))
        loop.save()
    result = TrainLMResult(losses=loop.history["loss"], steps=loop.step,
                           epochs_done=loop.step // n_batches, resumed_from_step=loop.resumed_from)
    model.eval()
    if checkpoint_dir is not None:
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
