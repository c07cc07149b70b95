"""Base language models for guided decoding: tiny GPT-2 configs, training, loading.

Guided decoding (paper 002 §2.1, §4.1) needs a base LM p_LM sharing the reward model's
tokenizer. No causal-LM weights ship offline, so the project builds tiny GPT-2 models
(``tiny_gpt2``) and trains them on real text (VADER's labelled sets) with ``train_lm``;
users with hub access pass any model id to ``load_base_lm``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rankkit.sequences import TokenSequences

from ._io import load_checkpoint

__all__ = ["tiny_gpt2", "train_lm", "TrainLMResult", "load_base_lm"]

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


def _atomic_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a torn checkpoint


def _batches(sequences: TokenSequences, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    # one permutation per (seed, epoch): a resumed run replays the same order
    perm = np.random.default_rng([seed, epoch]).permutation(len(sequences))
    return [perm[i:i + batch_size] for i in range(0, perm.size, batch_size)]


def train_lm(model, sequences: TokenSequences, *, epochs: int = 1, batch_size: int = 32,
             lr: float = 1e-3, weight_decay: float = 0.01, seed: int = 0,
             checkpoint_dir: str | Path | None = None, checkpoint_every: int = 200,
             progress: bool = True, device=None) -> TrainLMResult:
    r"""Train a causal LM on token sequences with next-token cross-entropy.

    Each sequence is prefixed with the model's BOS token and truncated to
    ``n_positions``; the loss is :math:`-\frac{1}{N}\sum \log p(u_t \mid \text{BOS}, u_{<t})`
    over all real tokens of the batch (padding is masked). AdamW with a linear decay of
    the learning rate to zero (as in paper 002 App. E).

    Checkpoints (model, optimiser, scheduler, step) are written atomically to
    ``checkpoint_dir/train_state.pt`` every ``checkpoint_every`` steps and at the end of
    each epoch; calling ``train_lm`` again with the same arguments resumes from it (the
    batch order depends only on ``seed`` and the epoch, so a resumed run sees the same
    batches as an uninterrupted one). The final weights are saved with
    ``save_pretrained(checkpoint_dir / "final")``.

    Parameters
    ----------
    model : transformers causal LM (e.g. from :func:`tiny_gpt2`), trained in place.
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
    V = model.config.vocab_size
    if sequences.tokens.size and (sequences.tokens.max() >= V or sequences.tokens.min() < 0):
        bad = int(sequences.tokens.max())
        raise ValueError(f"token id {bad} is outside the model's vocabulary [0, {V}); "
                         f"tokenize with the model's tokenizer")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).train()
    bos = model.config.bos_token_id
    bos = V - 1 if bos is None else bos
    max_len = int(getattr(model.config, "n_positions", 1024)) - 1
    seqs = sequences.truncate(max_len)

    n_batches = -(-len(seqs) // batch_size)
    total = epochs * n_batches
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-12,
                            weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
    result = TrainLMResult()
    ckpt = Path(checkpoint_dir) / _STATE if checkpoint_dir is not None else None
    torch_gen_state = None
    if ckpt is not None:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        if ckpt.exists():
            st = load_checkpoint(ckpt, "language-model checkpoint", map_location=device)
            if st["total"] != total:
                raise ValueError(f"checkpoint {ckpt} was written for {st['total']} steps, this run "
                                 f"has {total}; use the same epochs/batch_size or a new checkpoint_dir")
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["opt"])
            sched.load_state_dict(st["sched"])
            result.losses = list(st["losses"])
            result.steps = result.resumed_from_step = st["step"]
            torch_gen_state = st["torch_rng"]

    def save():
        if ckpt is not None:
            _atomic_save({"model": model.state_dict(), "opt": opt.state_dict(),
                          "sched": sched.state_dict(), "losses": result.losses,
                          "step": result.steps, "total": total,
                          "torch_rng": torch.get_rng_state()}, ckpt)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=result.steps, desc="train_lm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if torch_gen_state is not None:
            torch.set_rng_state(torch_gen_state)
        step = 0
        for epoch in range(epochs):
            for idx in _batches(seqs, batch_size, seed, epoch):
                step += 1
                if step <= result.steps:
                    continue  # already done before the resume
                ids, mask = padded(seqs.select(np.asarray(idx)), pad=bos, prepend=[bos])
                labels = ids.masked_fill(mask == 0, -100)
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                            labels=labels.to(device))
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                result.losses.append(float(out.loss.detach()))
                result.steps = step
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{result.losses[-1]:.3f}")
                if checkpoint_every and step % checkpoint_every == 0:
                    save()
            result.epochs_done = epoch + 1
            save()
    if bar is not None:
        bar.close()
    model.eval()
    if checkpoint_dir is not None:
        model.save_pretrained(Path(checkpoint_dir) / "final")
    return result


def load_base_lm(name_or_path: str | Path, *, device=None, dtype=None):
    """Load a causal LM for guided decoding: a hub id (online) or a local folder.

    A folder written by :func:`train_lm` (``<checkpoint_dir>/final``) or by
    ``save_pretrained`` loads offline; a folder holding a ``final`` sub-folder is
    resolved to it. Returns the model in eval mode.
    """
    from transformers import AutoModelForCausalLM

    p = Path(name_or_path)
    if p.is_dir() and not (p / "config.json").exists() and (p / "final" / "config.json").exists():
        p = p / "final"
    src = str(p) if p.exists() else str(name_or_path)
    if not p.exists() and str(name_or_path).startswith((".", "/", "~")):
        raise FileNotFoundError(f"no model folder at {name_or_path!r}; pass a folder written by "
                                f"save_pretrained / train_lm, or a hub id such as 'gpt2'")
    kw = {} if dtype is None else {"dtype": dtype}
    model = AutoModelForCausalLM.from_pretrained(src, **kw)
    if device is not None:
        model.to(device)
    return model.eval()
