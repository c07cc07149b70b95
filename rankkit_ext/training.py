r"""Training RAD-V / RAD-Q reward models (paper 002, §2.2, §3.3, App. E).

Objectives, all over every prefix u_{1:t} of an utterance u of length L in one
teacher-forced pass (``model(tokens, mask)[b, t-1] = r̂(u_t | u_{<t})``):

* ``"cumulative"`` (eq. 4 / 12): :math:`\sum_t \lambda_t (\hat r(u_t|u_{<t}) - y)^2` with
  :math:`\lambda_t = 2t / (L(L+1))` (so the weights of one utterance sum to 1);
* ``"distill"`` (eq. 13; paper 001 eq. 4): :math:`\frac1L \sum_t (\hat r(u_t|u_{<t}) -
  \tilde r(u_{1:t}))^2` against a frozen teacher evaluated once per batch under
  ``no_grad``;
* ``"bce"`` (eq. 18, App. G.2.1): the binary cross-entropy
  :math:`-\sum_t \lambda_t [y\log\sigma(\hat r) + (1-y)\log(1-\sigma(\hat r))]` with
  the cumulative weights λ_t, for responses y ∈ [0, 1]; r̂ is then a logit and σ(r̂) the
  reward (wrap the model in :class:`~rankkit_ext.models.SigmoidScores` for decoding);
* ``reg_coef > 0`` adds :math:`L_{reg}` (eq. 14): one token v' ~ Uniform(V) per position,
  :math:`\Delta\hat r(e(v')|h(u_{<t}))^2`, with the same per-position weights as the
  objective (RAD-Q only: RAD-V has no Δr̂).

Losses are averaged over labels (multi-label heads train jointly) and over utterances.
Defaults follow App. E: AdamW β = (0.9, 0.95), ε = 1e-12, weight decay 0.01, learning rate
decaying linearly to 0, batch size 100.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from rankkit.sequences import RewardDataset, TokenSequences

from ._loop import OptimLoop
from ._tensors import padded
from .models import RADQ, RewardModel

__all__ = ["train", "evaluate", "TrainResult", "objective_loss", "prefix_weights",
           "bce_per_position", "fit_entries", "FitResult", "OBJECTIVES"]

OBJECTIVES = ("cumulative", "distill", "bce")
_CKPT = "checkpoint.pt"


# --------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------
def prefix_weights(mask: torch.Tensor, objective: str) -> torch.Tensor:
    r"""Per-position weights (B, L): λ_t = 2t/(L(L+1)) for "cumulative" and "bce" (eq. 18
    reuses eq. 4's λ), 1/L for "distill", zero on padding; each utterance's weights sum to 1."""
    m = mask.to(torch.float64)
    lengths = m.sum(1, keepdim=True)
    if objective in ("cumulative", "bce"):
        t = m.cumsum(1)
        w = 2.0 * t / (lengths * (lengths + 1)).clamp(min=1)
    elif objective == "distill":
        w = 1.0 / lengths.clamp(min=1)
    else:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return w * m


def bce_per_position(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""Eq. 18 (paper 002, App. G.2.1) per position and label, before the weights λ:

    .. math:: -\bigl[y\log\sigma(\hat r) + (1-y)\log(1-\sigma(\hat r))\bigr]
              = \mathrm{softplus}(\hat r) - y\,\hat r

    computed as ``binary_cross_entropy_with_logits`` in float32 (the log-sum-exp form:
    finite for any logit, where log σ(r̂) itself underflows to −∞ for r̂ ≲ −104). Eq. 18
    as printed omits the minus sign of a negative log-likelihood; it is a loss to minimise.
    """
    return torch.nn.functional.binary_cross_entropy_with_logits(
        preds.float(), targets.float().expand_as(preds), reduction="none")


def _check_bce_targets(targets: torch.Tensor) -> None:
    if targets.numel() and not bool(((targets >= 0) & (targets <= 1)).all()):
        bad = targets[~((targets >= 0) & (targets <= 1))]
        raise ValueError(f"objective='bce' (eq. 18) needs responses y in [0, 1]; got values such "
                         f"as {float(bad.flatten()[0])!r} (range [{float(targets.min())}, "
                         f"{float(targets.max())}]). Rescale the labels to [0, 1] (e.g. the "
                         f"'sentiment' label of the vader:* sets) or use objective='cumulative'")


def objective_loss(model: RewardModel, tokens: torch.Tensor, mask: torch.Tensor,
                   targets: torch.Tensor, objective: str = "cumulative", reg_coef: float = 0.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Per-utterance loss (B,) of one right-padded batch.

    ``"cumulative"``: :math:`\sum_t \lambda_t (\hat r_t - y)^2` (eq. 4/12);
    ``"distill"``: :math:`\frac1L\sum_t (\hat r_t - \tilde r_t)^2` (eq. 13);
    ``"bce"``: :math:`-\sum_t \lambda_t [y\log\sigma(\hat r_t) + (1-y)\log(1-\sigma(\hat r_t))]`
    (eq. 18, App. G.2.1; see :func:`bce_per_position`). Each is averaged over labels.

    Parameters
    ----------
    tokens, mask : torch.Tensor, shape (B, L)
    targets : torch.Tensor, shape (B, n_labels) for "cumulative" and "bce" (the responses
        y; in [0, 1] for "bce") or (B, L, n_labels) for "distill" (teacher scores per prefix).
    reg_coef : float
        Weight of L_reg (eq. 14); needs a RADQ and ``generator`` for the uniform draws.
    """
    if objective == "bce":
        _check_bce_targets(targets)
    w = prefix_weights(mask, objective)
    if reg_coef and isinstance(model, RADQ):
        h = model.hidden_states(tokens, mask)
        preds = model._base(h) + model.delta(h, tokens.long())
    else:
        h = None
        preds = model(tokens, mask)
    tgt = targets[:, None, :] if targets.ndim == 2 else targets
    if objective == "bce":
        per_pos = bce_per_position(preds, tgt).mean(-1)  # mean over labels
    else:
        per_pos = (preds.float() - tgt.float()).pow(2).mean(-1)  # mean over labels
    loss = (per_pos.double() * w).sum(1)
    if reg_coef:
        if h is None:
            raise ValueError(f"reg_coef={reg_coef}: L_reg (eq. 14) pushes Δr̂ of RAD-Q to 0; "
                             f"{type(model).__name__} has no Δr̂. Use reg_coef=0 or a RADQ.")
        rand = torch.randint(0, model.vocab_size, tokens.shape, generator=generator,
                             device=generator.device if generator is not None else tokens.device)
        reg = model.delta(h, rand.to(tokens.device)).float().pow(2).mean(-1)
        loss = loss + reg_coef * (reg.double() * w).sum(1)
    return loss


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def _batch(seqs: TokenSequences, y: np.ndarray, idx: np.ndarray, device):
    """Right-padded utterances ``idx`` (the models prepend BOS themselves) and their targets."""
    tokens, mask = padded(seqs.select(idx), device=device)
    return tokens, mask, torch.from_numpy(y[idx]).to(device)


def _prepare(model: RewardModel, dataset: RewardDataset, max_len: int | None):
    if not isinstance(dataset, RewardDataset):
        raise TypeError(f"dataset must be a rankkit.RewardDataset, got {type(dataset).__name__}")
    if dataset.n_labels != model.n_labels:
        raise ValueError(f"dataset has {dataset.n_labels} labels {list(dataset.label_names)} but the "
                         f"model has n_labels={model.n_labels}; build the model with "
                         f"n_labels={dataset.n_labels}")
    if dataset.vocab_size > model.vocab_size:
        raise ValueError(f"dataset vocab_size={dataset.vocab_size} exceeds the model's "
                         f"{model.vocab_size} output embeddings (tokenizer mismatch?)")
    from ._hf import max_positions

    n_pos = max_positions(model.backbone.config)  # GPT-2 n_positions, Llama max_position_embeddings
    if max_len is None and n_pos is not None:
        max_len = int(n_pos) - 1  # one position goes to BOS
    seqs = dataset.sequences if max_len is None else dataset.sequences.truncate(max_len)
    y = dataset.responses.reshape(len(dataset), -1).astype(np.float32)
    return seqs, y


def _teacher_targets(teacher, tokens, mask, amp_ctx):
    with torch.no_grad(), amp_ctx():
        return teacher(tokens, mask).float()


# --------------------------------------------------------------------------------------
# training loop
# --------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes
    ----------
    steps : int
        Optimizer steps done in total (including those before a resume).
    total_steps : int
        Steps of the whole schedule.
    train_loss : list of float
        Mean batch loss at every optimizer step.
    eval_loss : list of (step, float)
    resumed_from : int
        Step the run resumed from (0 for a fresh run).
    checkpoint : str or None
    wall_time_s : float
    """

    steps: int
    total_steps: int
    train_loss: list = field(default_factory=list)
    eval_loss: list = field(default_factory=list)
    resumed_from: int = 0
    checkpoint: str | None = None
    wall_time_s: float = 0.0


def _settings_fingerprint(**kw) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}


def train(model: RewardModel, dataset: RewardDataset, objective: str = "cumulative",
          teacher: RewardModel | None = None, reg_coef: float = 0.0, *, epochs: int = 1,
          batch_size: int = 100, lr: float = 1e-5, betas=(0.9, 0.95), eps: float = 1e-12,
          weight_decay: float = 0.01, warmup_steps: int = 0, grad_accum_steps: int = 1,
          max_grad_norm: float | None = 1.0, max_len: int | None = None, amp: bool | None = None,
          device=None, seed: int = 0, eval_dataset: RewardDataset | None = None,
          eval_every: int | None = None, checkpoint_dir: str | os.PathLike | None = None,
          checkpoint_every: int | None = None, resume: bool = True,
          stop_after_steps: int | None = None, progress: bool = True) -> TrainResult:
    r"""Train a reward model on a :class:`rankkit.RewardDataset` (paper 002 §2.2, §3.3).

    Parameters
    ----------
    model : RADV or RADQ
        Trained in place (frozen embeddings stay untouched: only parameters with
        ``requires_grad`` go to the optimizer).
    dataset : RewardDataset
        Responses (n,) or (n, n_labels) in the model's label order.
    objective : {"cumulative", "distill", "bce"}
        Eq. 4/12 on the responses, eq. 13 against ``teacher``, or the binary cross-entropy
        of eq. 18 (App. G.2.1) on responses in [0, 1]; a "bce" model's scores are logits,
        so decode with ``SigmoidScores(model)`` (σ is "also used during generation").
    teacher : RewardModel, optional
        Frozen teacher for "distill" (e.g. a trained RADV for a RADQ student); its scores
        are computed once per batch under ``no_grad`` and it is never updated.
    reg_coef : float
        Coefficient of L_reg (eq. 14), RADQ only.
    epochs, batch_size, lr, betas, eps, weight_decay, warmup_steps
        AdamW with linear warm-up then linear decay to 0 (App. E defaults).
    grad_accum_steps : int
        Each batch of ``batch_size`` utterances is split into this many micro-batches
        whose gradients are summed (same update, less memory).
    max_grad_norm : float or None
        Gradient clipping by global norm.
    max_len : int, optional
        Truncate utterances to this many tokens (default: the backbone's positions − 1).
    amp : bool, optional
        bfloat16 autocast; default on for CUDA, off on CPU.
    device : str or torch.device, optional
        Defaults to the model's device.
    seed : int
        Seeds the data order (``np.random.default_rng([seed, epoch])``), the L_reg draws
        (a ``torch.Generator``) and dropout (a forked torch RNG, so the caller's global
        RNG is left as it was).
    eval_dataset, eval_every
        Evaluate the objective (without L_reg) every ``eval_every`` steps and at the end.
    checkpoint_dir, checkpoint_every
        Atomic checkpoints (model, optimizer, scheduler, RNG states, history); with
        ``resume=True`` an existing checkpoint there is resumed exactly: on CPU the
        resumed run is bitwise identical to an uninterrupted one.
    stop_after_steps : int, optional
        Stop (after checkpointing) once this many optimizer steps are done in total, e.g.
        to split a long run over several jobs; the schedule is unchanged.
    progress : bool
        tqdm progress bar.

    Returns
    -------
    TrainResult
    """

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "distill" and teacher is None:
        raise ValueError("objective='distill' needs teacher= (a frozen trained RewardModel)")
    if teacher is not None and teacher.n_labels != model.n_labels:
        raise ValueError(f"teacher has n_labels={teacher.n_labels}, student {model.n_labels}")
    if reg_coef and not isinstance(model, RADQ):
        raise ValueError(f"reg_coef={reg_coef}: L_reg (eq. 14) needs a RADQ, got "
                         f"{type(model).__name__}; use reg_coef=0")
    if batch_size < 1 or grad_accum_steps < 1 or grad_accum_steps > batch_size:
        raise ValueError(f"need 1 <= grad_accum_steps ({grad_accum_steps}) <= batch_size "
                         f"({batch_size})")
    device = torch.device(device) if device is not None else model.device
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
    seqs, y = _prepare(model, dataset, max_len)
    if objective == "bce":  # before any step, not at the first batch that holds a bad label
        _check_bce_targets(torch.from_numpy(y))
    n = len(seqs)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    use_amp = (device.type == "cuda") if amp is None else bool(amp and device.type == "cuda")

    def amp_ctx():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total - step) / max(1, total - warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    settings = _settings_fingerprint(objective=objective, reg_coef=reg_coef, epochs=epochs,
                                     batch_size=batch_size, lr=lr, seed=seed, n=n,
                                     grad_accum_steps=grad_accum_steps)
    ckpt_path = Path(checkpoint_dir) / _CKPT if checkpoint_dir is not None else None
    loop = OptimLoop("training checkpoint", ckpt_path, total=total, seed=seed,
                     state={"model": model, "optimizer": opt, "scheduler": sched},
                     generator=gen, settings=settings, every=checkpoint_every, resume=resume,
                     stop_after=stop_after_steps, device=device, progress=progress)
    t0 = time.perf_counter()
    with loop:
        loop.history.setdefault("eval", [])
        model.train()
        for step in loop:
            epoch, within = divmod(step, steps_per_epoch)
            order = np.random.default_rng([seed, epoch]).permutation(n)
            idx = order[within * batch_size:(within + 1) * batch_size]
            opt.zero_grad(set_to_none=True)
            batch_loss = 0.0
            for part in np.array_split(idx, grad_accum_steps):
                if part.size == 0:
                    continue
                tokens, mask, yb = _batch(seqs, y, part, device)
                if objective == "distill":
                    targets = _teacher_targets(teacher, tokens, mask, amp_ctx)
                else:
                    targets = yb
                with amp_ctx():
                    per_row = objective_loss(model, tokens, mask, targets, objective, reg_coef, gen)
                loss = per_row.sum() / idx.size  # micro-batches add up to the batch mean
                loss.backward()
                batch_loss += float(loss.detach())
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            sched.step()
            # evaluate before the step is recorded, so a checkpoint taken then includes it
            if eval_dataset is not None and eval_every and (step + 1) % eval_every == 0:
                loop.history["eval"].append((step + 1, evaluate(
                    model, eval_dataset, objective, teacher, batch_size=batch_size,
                    max_len=max_len)))
                model.train()
            loop.done(batch_loss)
        evals = loop.history["eval"]
        if eval_dataset is not None and loop.step == total and (not evals or evals[-1][0] != total):
            evals.append((total, evaluate(model, eval_dataset, objective, teacher,
                                          batch_size=batch_size, max_len=max_len)))
        loop.save()
    result = TrainResult(steps=loop.step, total_steps=total, resumed_from=loop.resumed_from,
                         train_loss=loop.history["loss"],
                         eval_loss=[tuple(x) for x in loop.history["eval"]],
                         checkpoint=None if ckpt_path is None else str(ckpt_path))
    model.eval()
    result.wall_time_s = time.perf_counter() - t0
    return result


@torch.no_grad()
def evaluate(model: RewardModel, dataset: RewardDataset, objective: str = "cumulative",
             teacher: RewardModel | None = None, *, batch_size: int = 100,
             max_len: int | None = None) -> float:
    """Mean per-utterance objective (without L_reg) over ``dataset``, in eval mode."""
    if objective == "distill" and teacher is None:
        raise ValueError("objective='distill' needs teacher=")
    was = model.training
    model.eval()
    seqs, y = _prepare(model, dataset, max_len)
    total = 0.0
    for s in range(0, len(seqs), batch_size):
        idx = np.arange(s, min(s + batch_size, len(seqs)))
        tokens, mask, yb = _batch(seqs, y, idx, model.device)
        tgt = teacher(tokens, mask).float() if objective == "distill" else yb
        total += float(objective_loss(model, tokens, mask, tgt, objective).sum())
    model.train(was)
    return total / max(1, len(seqs))


# --------------------------------------------------------------------------------------
# direct fit of observed matrix entries (expressivity experiments, App. D.1–D.2)
# --------------------------------------------------------------------------------------
@dataclass
class FitResult:
    """Training curve of :func:`fit_entries`: ``mse[i]`` after ``steps[i]`` steps."""

    steps: list
    mse: list
    final_mse: float
    wall_time_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def _entry_batch(prefixes: TokenSequences, cols: np.ndarray, device):
    seqs = TokenSequences.from_lists([np.append(p, c) for p, c in zip(prefixes, cols, strict=True)])
    tokens, mask = padded(seqs, device=device)
    last = torch.as_tensor(seqs.lengths - 1, device=device)
    return tokens, mask, last


def fit_entries(model: RewardModel, prefixes, cols, values, *, steps: int = 1000, lr: float = 1e-3,
                weight_decay: float = 0.0, eval_every: int = 50, label: int = 0, seed: int = 0,
                progress: bool = False) -> FitResult:
    r"""Fit observed entries R[x'_i, v_i] = values_i directly (full batch, Adam).

    Minimises :math:`\frac{1}{|\Omega|}\sum_{(x',v)\in\Omega} (\hat r(v|x') - R[x',v])^2`, the
    MSE on P_Ω(R) used in App. D.1–D.2: no BOS row and no λ weights, so the loss is
    exactly the matrix-completion error of the model's R̂.

    Parameters
    ----------
    prefixes : TokenSequences or list of lists, length m
    cols : array_like of int, shape (m,)
    values : array_like of float, shape (m,)
    """

    prefixes = TokenSequences.from_encoding(prefixes) if not isinstance(
        prefixes, TokenSequences) else prefixes
    cols = np.asarray(cols, dtype=np.int64)
    device = model.device
    tokens, mask, last = _entry_batch(prefixes, cols, device)
    target = torch.as_tensor(np.asarray(values, dtype=np.float32), device=device)
    rows = torch.arange(len(cols), device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    # linear decay to 0 (as in App. E): the last steps polish the fit instead of bouncing
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / max(1, steps)))
    curve_s, curve_m = [], []
    t0 = time.perf_counter()
    # no checkpoint (a full-batch fit of minutes); the loop gives it the same seeding
    loop = OptimLoop("fit", None, total=steps, seed=seed, state={}, device=device,
                     progress=progress)
    with loop:
        model.train()
        for step in loop:
            pred = model(tokens, mask)[rows, last, label]
            loss = (pred.float() - target).pow(2).mean()
            if step % eval_every == 0:
                curve_s.append(step)
                curve_m.append(float(loss.detach()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loop.done(float(loss.detach()))
        with torch.no_grad():  # the curve's last point: the loss after the last update
            curve_s.append(steps)
            curve_m.append(float((model(tokens, mask)[rows, last, label].float()
                                  - target).pow(2).mean()))
    model.eval()
    with torch.no_grad():
        final = float((model(tokens, mask)[rows, last, label].float() - target).pow(2).mean())
    return FitResult(curve_s, curve_m, final, time.perf_counter() - t0)
