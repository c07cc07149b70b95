r"""Self-distilled twisted SMC (Kim et al. 2025, §2, Algorithm 1).

Generation 0 trains a twist on the base model with CTL. Generation m fine-tunes the base
model on TSMC samples of generation m−1 (eq. 7, LoRA via ``peft`` or full fine-tuning) and
retrains the twist with the *effective potential* (eq. 8)

.. math::
    \phi^{(m)}(s_{1:T}) = \frac{p^{(0)}_{LM}(s_{1:T}\mid s_0)\,\phi(s_{1:T})}{p^{(m)}_{LM}(s_{1:T}\mid s_0)},

so the target :math:`\sigma\propto p^{(m)}\phi^{(m)} = p^{(0)}\phi` never moves while the
base model does. Sampling from generation m uses :math:`(p^{(m)},\psi^{(m)},\phi^{(m)})`.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rankkit._io import atomic_json

from .._io import load_checkpoint, save_checkpoint
from .._loop import OptimLoop
from .learning import TwistTrainResult, train_twist
from .potentials import Potential
from .resampling import resample
from .sampler import _right_padded, score_sequences, tsmc

__all__ = ["EffectivePotential", "finetune_lm", "tsmc_samples", "tsmc_weighted_samples",
           "distill_set_stats", "self_distill", "SelfDistillResult", "DISTILL_MODES"]

DISTILL_MODES = ("resampled", "weighted")


class EffectivePotential(Potential):
    r""":math:`\log\phi^{(m)} = \log p^{(0)}(s\mid s_0) + \log\phi(s) - \log p^{(m)}(s\mid s_0)`.

    Sequences arrive EOS-stripped (the potential contract); one shorter than
    ``max_new_tokens`` can only have stopped at EOS, so the EOS is restored before scoring
    the two language models.
    """

    def __init__(self, base0, current, potential: Potential, prompt, max_new_tokens: int,
                 eos_token_id: int | None):
        self.base0, self.current, self.potential = base0, current, potential
        self.prompt, self.T, self.eos = prompt, int(max_new_tokens), eos_token_id

    def _log_phi(self, samples):
        full = [list(s) + ([self.eos] if self.eos is not None and len(s) < self.T else [])
                for s in samples]
        lp0, _ = score_sequences(self.base0, self.prompt, full)
        lpm, _ = score_sequences(self.current, self.prompt, full)
        return (lp0 + self.potential.log_phi(samples) - lpm).numpy()


def _sequence_nll(model, prompt: torch.Tensor, toks: torch.Tensor, lens: torch.Tensor):
    """−log p(continuation | prompt) per sequence (eq. 7), right-padded batch."""
    B = toks.shape[0]
    ids = torch.cat([prompt.expand(B, -1), toks], 1)
    P = prompt.numel()
    att = torch.ones_like(ids)
    att[:, P:] = (torch.arange(toks.shape[1], device=ids.device)[None] < lens[:, None]).long()
    logits = model(input_ids=ids, attention_mask=att).logits[:, P - 1: -1]
    lp = torch.log_softmax(logits.float(), -1).gather(2, toks[..., None]).squeeze(2)
    return -(lp * att[:, P:]).sum(1)


def finetune_lm(model, prompt, sequences: Sequence[Sequence[int]], *, lora: bool = True,
                lora_rank: int = 8, lora_targets: Sequence[str] | None = None, steps: int = 100,
                batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0,
                progress: bool | None = None, weights: Sequence[float] | None = None):
    r"""Return a fine-tuned **copy** of ``model`` maximising :math:`\sum_s\log p(s\mid s_0)`
    over ``sequences`` (eq. 7). ``lora=True`` trains rank-``lora_rank`` adapters on the
    attention projections (``lora_targets``; default GPT-2's fused ``c_attn``, else peft's
    per-architecture default, e.g. the query/value projections of Llama and Qwen2) with
    ``peft`` and merges them back; ``lora=False`` trains all
    weights (no weight decay on biases and LayerNorms, as in App. C).

    ``weights`` (≥ 0, one per sequence) makes it the weighted objective
    :math:`\sum_i w_i\log p(s_i\mid s_0)`: minibatches are drawn with probability
    :math:`\propto w_i` (with replacement), an unbiased stochastic gradient of it.
    """
    if not sequences:
        raise ValueError("finetune_lm got no sequences; draw TSMC samples first.")
    if weights is not None:
        wts = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if wts.numel() != len(sequences) or not torch.isfinite(wts).all() or (wts < 0).any() \
                or wts.sum() <= 0:
            raise ValueError(f"finetune_lm: weights must be {len(sequences)} finite values >= 0 "
                             "with a positive sum, one per sequence.")
    dev = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):  # peft/LoRA init uses the global RNG: fork it
        torch.manual_seed(seed)
        student = copy.deepcopy(model)
        for p in student.parameters():  # a previous generation comes back frozen
            p.requires_grad_(not lora)
        if lora:
            from peft import LoraConfig, get_peft_model

            gpt2 = student.config.model_type == "gpt2"
            # default targets: GPT-2's fused c_attn (a Conv1D, hence fan_in_fan_out), else
            # peft's own per-architecture table (q_proj/v_proj for Llama and Qwen2,
            # query_key_value for GPT-NeoX …), so any causal LM peft knows works
            targets = list(lora_targets) if lora_targets else (["c_attn"] if gpt2 else None)
            cfg = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                             target_modules=targets, fan_in_fan_out=gpt2)
            try:
                student = get_peft_model(student, cfg)
            except ValueError as e:  # peft has no default for this architecture / no match
                raise ValueError(
                    f"LoRA for a {student.config.model_type!r} model: {e}. Pass lora_targets= "
                    f"with the names of its attention projections (e.g. ['q_proj', 'v_proj']), "
                    f"or lora=False") from e
    student.train()
    decay, no_decay = [], []
    for n, p in student.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "ln" in n or "norm" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    pad = student.config.eos_token_id if student.config.eos_token_id is not None else 0
    toks, lens = _right_padded(sequences, pad)
    toks, lens = toks.to(dev), lens.to(dev)
    prompt = torch.as_tensor(prompt, dtype=torch.long, device=dev).reshape(1, -1)
    g = torch.Generator().manual_seed(seed)
    # the shared loop seeds a fork of the global RNG (dropout in train mode draws from it), so
    # the same seed gives the same student and the caller's RNG state is left untouched;
    # a generation is short, so it is checkpointed by self_distill as a whole, not per step
    loop = OptimLoop("distill", None, total=steps, seed=seed, state={}, generator=g,
                     device=dev, progress=progress)
    with loop:
        for _ in loop:
            if weights is None:
                idx = torch.randint(len(sequences), (min(batch_size, len(sequences)),),
                                    generator=g)
            else:
                idx = torch.multinomial(wts, batch_size, replacement=True, generator=g)
            opt.zero_grad()
            loss = _sequence_nll(student, prompt, toks[idx.to(dev)], lens[idx.to(dev)]).mean()
            loss.backward()
            opt.step()
            loop.done(float(loss.detach()))
    student.eval()
    if lora:
        student = student.merge_and_unload()
    for p in student.parameters():
        p.requires_grad_(False)
    return student


def tsmc_samples(lm, twist, potential, prompt, n_samples: int, n_particles: int,
                 max_new_tokens: int, generator: torch.Generator, **kw) -> list[list[int]]:
    """Equally weighted samples (EOS kept) from repeated TSMC runs, each run's weighted
    particles resampled multinomially to n_particles draws (the set 𝒮 of eq. 7)."""
    out: list[list[int]] = []
    while len(out) < n_samples:
        r = tsmc(lm, twist, potential, prompt, n_particles, max_new_tokens,
                 generator=generator, **kw)
        seqs = r.sequences(strip_eos=False)
        anc = resample(r.log_weights, "multinomial", generator)
        out += [seqs[i] for i in anc.tolist()]
    return out[:n_samples]


def tsmc_weighted_samples(lm, twist, potential, prompt, n_runs: int, n_particles: int,
                          max_new_tokens: int, generator: torch.Generator, **kw
                          ) -> tuple[list[list[int]], np.ndarray]:
    r"""Every final particle of ``n_runs`` independent TSMC runs with weight
    :math:`\bar w_{rk}/R` (each run's normalised weights, runs weighted equally): the
    weighted distillation set. No resampling, so no particle is duplicated and none with
    positive weight is dropped; :math:`\sum_{r,k}\bar w_{rk}f(s_{rk})/R` is the average of
    the runs' (consistent) estimates of :math:`\mathbb E_\sigma f`."""
    if int(n_runs) < 1:
        raise ValueError(f"n_runs must be >= 1; got {n_runs}.")
    seqs: list[list[int]] = []
    wts: list[np.ndarray] = []
    for _ in range(int(n_runs)):
        r = tsmc(lm, twist, potential, prompt, n_particles, max_new_tokens,
                 generator=generator, **kw)
        seqs += r.sequences(strip_eos=False)
        w = r.weights.double().cpu().numpy()
        wts.append(w / w.sum() / int(n_runs))
    return seqs, np.concatenate(wts)


def distill_set_stats(sequences: Sequence[Sequence[int]], weights=None) -> dict:
    r"""Size of a distillation set: strings, distinct strings, and with weights the
    effective number of distinct strings :math:`1/\sum_u W_u^2` (:math:`W_u` the total
    weight of distinct string u; the set's ESS) and how many carry ≥ 1/(10·n) of it."""
    keys: dict[tuple[int, ...], float] = {}
    w = np.full(len(sequences), 1.0 / max(len(sequences), 1)) if weights is None \
        else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    for s_, wi in zip(sequences, w, strict=True):
        keys[tuple(s_)] = keys.get(tuple(s_), 0.0) + float(wi)
    W = np.array(list(keys.values()))
    return {"n_strings": len(sequences), "n_distinct": len(keys),
            "effective_distinct": float(1.0 / (W @ W)) if W.size else 0.0,
            "n_distinct_weight_ge_0.1_over_n": int((W >= 0.1 / max(len(sequences), 1)).sum()),
            "weighted": weights is not None}


def _takes_positional(f: Callable) -> bool:
    try:
        params = inspect.signature(f).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: call without arguments
        return False
    # Only a *required* positional parameter means "give me the model": a partial of a twist
    # class (defaults left for dtype, width, ...) must still be called without arguments.
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
               for p in params)


@dataclass
class SelfDistillResult:
    """Models p^(0..M), twists ψ^(0..M), effective potentials φ^(0..M) and CTL traces."""

    models: list = field(default_factory=list)
    twists: list = field(default_factory=list)
    potentials: list[Potential] = field(default_factory=list)
    ctl: list[TwistTrainResult] = field(default_factory=list)
    distill_sets: list[dict] = field(default_factory=list)  # distill_set_stats, gens 1..M


def self_distill(base_model, potential: Potential, prompt, twist_factory: Callable[..., torch.nn.Module],
                 *, generations: int = 2, max_new_tokens: int = 16, n_particles: int = 100,
                 ctl_steps: int = 100, ctl_lr: float = 1e-3, n_distill_samples: int = 1024,
                 finetune: dict | None = None, ctl: dict | None = None, seed: int = 0,
                 adapter: Callable | None = None, distill: str = "resampled",
                 n_distill_runs: int | None = None,
                 checkpoint_dir: str | os.PathLike | None = None,
                 progress: bool | None = None) -> SelfDistillResult:
    """Algorithm 1 of Kim et al. (2025).

    Parameters
    ----------
    base_model : Hugging Face causal LM, :math:`p^{(0)}` (never modified).
    potential : Potential, φ.
    twist_factory : callable returning a fresh twist (one per generation)
        Called as ``twist_factory(model)`` with the generation's model :math:`p^{(m)}` when it
        has a required positional parameter (e.g. ``lambda mdl: CopyTwist(mdl)``, a twist on its own
        trainable copy of the current base), else as ``twist_factory()`` (heads on the frozen
        base's hidden states).
    generations : int, M.
    finetune : dict, keyword arguments for :func:`finetune_lm` (``lora``, ``steps``, ``lr``…).
    ctl : dict, keyword arguments for :func:`~rankkit_ext.tsmc.learning.train_twist`
        (``negative``, ``positive``, ``resample``, ``ess_threshold``, ``weight_decay``).
    adapter : callable, optional
        ``adapter(model)`` → the sampler adapter used for TSMC, CTL and scoring (default
        :class:`~rankkit_ext.tsmc.adapters.HFCausalLM`; e.g. ``EnumerableLM`` in tests).
    distill : {"resampled", "weighted"}
        ``"resampled"``: eq. 7's set 𝒮 of ``n_distill_samples`` equally weighted draws, each
        TSMC run's particles resampled multinomially (a run of low ESS gives copies of a few
        strings). ``"weighted"``: every particle of ``n_distill_runs`` runs with its weight
        (:func:`tsmc_weighted_samples`), fine-tuned on the weighted likelihood: the same
        objective in expectation, with no duplicates.
    checkpoint_dir : path, optional
        Each finished generation is saved there (model via ``save_pretrained``, twist and
        CTL trace via ``torch.save``, atomically); a rerun resumes after the last one.
    """
    if distill not in DISTILL_MODES:
        raise ValueError(f"distill must be one of {DISTILL_MODES}; got {distill!r}.")
    if distill == "weighted" and (n_distill_runs is None or int(n_distill_runs) < 1):
        raise ValueError("distill='weighted' needs n_distill_runs >= 1 (TSMC runs whose "
                         "weighted particles form the distillation set).")
    finetune, ctl_kw = dict(finetune or {}), dict(ctl or {})
    wrap = adapter or (lambda mdl: mdl)
    takes_model = _takes_positional(twist_factory)
    eos = base_model.config.eos_token_id
    res = SelfDistillResult()
    root = Path(checkpoint_dir) if checkpoint_dir is not None else None
    g = torch.Generator(device=next(base_model.parameters()).device).manual_seed(seed)
    model, phi_m = base_model, potential
    for m in range(generations + 1):
        gdir = root / f"gen_{m}" if root is not None else None
        if m > 0:  # drawn even when resuming, so the generator stays in step
            if distill == "weighted":
                samples, s_w = tsmc_weighted_samples(wrap(model), res.twists[-1], phi_m, prompt,
                                                     int(n_distill_runs), n_particles,
                                                     max_new_tokens, g)
            else:
                samples, s_w = tsmc_samples(wrap(model), res.twists[-1], phi_m, prompt,
                                            n_distill_samples, n_particles, max_new_tokens,
                                            g), None
            res.distill_sets.append({"generation": m, **distill_set_stats(samples, s_w)})
        if gdir is not None and (gdir / "done.json").exists():
            if m > 0:
                model = type(base_model).from_pretrained(gdir / "model").to(
                    next(base_model.parameters()).device).eval()
            state = load_checkpoint(gdir / "twist.pt", "self-distillation twist")
            twist = twist_factory(model) if takes_model else twist_factory()
            twist.load_state_dict(state["twist"])
            trace = TwistTrainResult(state["losses"], len(state["losses"]))
        else:
            if m > 0:
                model = finetune_lm(model, prompt, samples, seed=seed + m, progress=progress,
                                    weights=s_w, **finetune)
            twist = None
        phi_m = potential if m == 0 else EffectivePotential(wrap(base_model), wrap(model), potential, prompt,
                                                            max_new_tokens, eos)
        if twist is None:
            twist = twist_factory(model) if takes_model else twist_factory()
            trace = train_twist(wrap(model), twist, phi_m, prompt, steps=ctl_steps,
                                n_particles=n_particles, max_new_tokens=max_new_tokens, lr=ctl_lr,
                                seed=seed + 1000 * m, progress=progress, **ctl_kw)
            if gdir is not None:
                gdir.mkdir(parents=True, exist_ok=True)
                if m > 0:
                    model.save_pretrained(gdir / "model")
                save_checkpoint({"twist": twist.state_dict(), "losses": trace.losses},
                                gdir / "twist.pt")
                # written last: a generation counts as done only once everything above is
                atomic_json(gdir / "done.json", {"generation": m, "final_loss":
                                                 float(np.mean(trace.losses[-10:]))})
        res.models.append(model)
        res.twists.append(twist)
        res.potentials.append(phi_m)
        res.ctl.append(trace)
    return res
