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
The optimiser follows App. E: AdamW β = (0.9, 0.95), ε = 1e-12, weight decay 0.01, learning
rate decaying linearly to 0; the step count defaults (10 epochs, batch 32, lr 1e-3) are sized
for datasets of hundreds to thousands of texts, not App. E's 1e-5 × 1 epoch × batch 100 (3
steps on 300 texts; :func:`train` gives the measurements), and a run whose loss has not
settled ends with a :class:`ConvergenceWarning`.
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
from ._warnings import ConvergenceWarning
from .models import RADQ, RewardModel

__all__ = ["train", "evaluate", "TrainResult", "objective_loss", "prefix_weights",
           "bce_per_position", "fit_entries", "FitResult", "OBJECTIVES", "ConvergenceWarning"]

OBJECTIVES = ("cumulative", "distill", "bce")
# train's defaults: measured, see its docstring (epochs, batch_size, lr) and `tol`
EPOCHS, BATCH_SIZE, LR = 10, 32, 1e-3
CONVERGENCE_TOL = 0.1
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


def _coerce(dataset, tokenizer) -> RewardDataset:
    """Any source :func:`rankkit.datasets.as_dataset` accepts, as a ``RewardDataset`` (one
    input language: ``train(model, "reviews.csv")`` reads what ``rk.estimate_min_rank`` reads)."""
    if isinstance(dataset, RewardDataset):
        return dataset
    from rankkit.datasets import as_dataset

    return as_dataset(dataset, tokenizer=tokenizer)


def _prepare(model: RewardModel, dataset: RewardDataset, max_len: int | None):
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


def train(model: RewardModel, dataset, objective: str = "cumulative",
          teacher: RewardModel | None = None, reg_coef: float = 0.0, *, epochs: int = EPOCHS,
          batch_size: int = BATCH_SIZE, lr: float = LR, betas=(0.9, 0.95), eps: float = 1e-12,
          weight_decay: float = 0.01, warmup_steps: int = 0, grad_accum_steps: int = 1,
          max_grad_norm: float | None = 1.0, max_len: int | None = None, amp: bool | None = None,
          device=None, seed: int = 0, eval_dataset: RewardDataset | None = None,
          eval_every: int | None = None, checkpoint_dir: str | os.PathLike | None = None,
          checkpoint_every: int | None = None, resume: bool = True,
          stop_after_steps: int | None = None, progress: bool | None = None, tokenizer="gpt2",
          tol: float | None = CONVERGENCE_TOL) -> TrainResult:
    r"""Train a reward model on labelled text or tokens (paper 002 §2.2, §3.3).

    Parameters
    ----------
    model : RADV or RADQ
        Trained in place (frozen embeddings stay untouched: only parameters with
        ``requires_grad`` go to the optimizer).
    dataset : RewardDataset or anything :func:`rankkit.datasets.as_dataset` accepts
        Responses (n,) or (n, n_labels) in the model's label order. A preset
        (``"vader:movie"``), a CSV/JSONL/Parquet path, a table, ``(texts, labels)`` or a
        list of ``(text, label)`` pairs is tokenized with ``tokenizer``, the same input
        language as :func:`rankkit.estimate_min_rank`.
    objective : {"cumulative", "distill", "bce"}
        Eq. 4/12 on the responses, eq. 13 against ``teacher``, or the binary cross-entropy
        of eq. 18 (App. G.2.1) on responses in [0, 1]; a "bce" model's scores are logits,
        so decode with ``SigmoidScores(model)`` (σ is "also used during generation").
    teacher : RewardModel, optional
        Frozen teacher for "distill" (e.g. a trained RADV for a RADQ student); its scores
        are computed once per batch under ``no_grad`` and it is never updated.
    reg_coef : float
        Coefficient of L_reg (eq. 14), RADQ only.
    epochs, batch_size, lr : int, int, float
        Default 10 epochs of batches of 32 at a peak learning rate of 1e-3. App. E's
        lr 1e-5, one epoch, batch 100 fine-tune a pretrained GPT-2 on 10⁵–10⁶ texts; on
        a few hundred texts that is 3 steps and the loss barely moves. Measured on the
        first 300 texts of ``vader:movie`` (both labels; a RAD-Q on a random
        ``tiny_gpt2(50257, n_embd=64, n_layer=2)``, CPU), mean loss over the data after
        training, against 0.288 for the best constant prediction (the labels' variance):
        App. E's settings 2.105 (3 steps); lr 3e-3 × 5 epochs × batch 100: 0.286;
        lr 1e-3 × 5 × 32: 0.259; lr 3e-3 × 10 × 32: 0.265; lr 3e-4 × 10 × 32: 0.241;
        lr 1e-3 × 10 × 32 (the default, 100 steps, 3.5 s): 0.200. For a large
        pretrained backbone use a smaller ``lr`` (App. E: 1e-5) and more data.
    betas, eps, weight_decay, warmup_steps
        AdamW with linear warm-up then linear decay to 0 (App. E).
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
    progress : bool or None
        tqdm progress bar (None, the default: only on an interactive terminal or in a notebook with ipywidgets, :mod:`rankkit._progress`).
    tokenizer : str or tokenizer, default "gpt2"
        For a text ``dataset`` (and ``eval_dataset``) only; it must be the model's.
    tol : float or None, default 0.1
        Convergence criterion, checked when the run finishes: a
        :class:`ConvergenceWarning` is issued when (a) the mean training loss of the last
        epoch differs from that of the epoch before (with one epoch: the second half of
        the steps from the first half) by more than ``tol`` relative to it, i.e. it is
        still falling (train longer or with a larger ``lr``) or it rose (``lr`` too
        large); or (b) for "cumulative" and "bce", the last epoch's mean loss is above
        ``1 - tol`` times the loss of the best constant prediction (the labels' variance,
        or the entropy of their mean for "bce"): the model has learned nothing beyond the
        mean response. Runs of fewer than 2 steps always warn. ``None`` turns the check
        off; a run stopped early by ``stop_after_steps`` is not checked.

    Returns
    -------
    TrainResult

    Warns
    -----
    ConvergenceWarning
        When the loss has not settled by the criterion of ``tol``.
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
    if tol is not None and not (isinstance(tol, int | float) and tol > 0):
        raise ValueError(f"tol must be a positive number (relative loss change) or None, "
                         f"got {tol!r}")
    dataset = _coerce(dataset, tokenizer)
    if eval_dataset is not None:
        eval_dataset = _coerce(eval_dataset, tokenizer)
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
    if tol is not None and result.steps == total:
        _check_convergence(result.train_loss, steps_per_epoch, tol,
                           _constant_loss(y, objective) if not reg_coef else None)
    return result


def _window(n_steps: int, steps_per_epoch: int) -> int:
    """Steps in one window of the convergence check: one epoch (every utterance once, so
    two windows see the same data), or half the run when it is a single epoch."""
    return steps_per_epoch if n_steps >= 2 * steps_per_epoch else n_steps // 2


def _loss_change(losses, steps_per_epoch: int) -> float:
    """Relative change of the mean loss from the next-to-last window to the last one."""
    w = _window(len(losses), steps_per_epoch)
    prev, last = float(np.mean(losses[-2 * w:-w])), float(np.mean(losses[-w:]))
    return (last - prev) / max(abs(prev), 1e-12)


def _constant_loss(y: np.ndarray, objective: str) -> float | None:
    """Per-utterance loss of the best constant prediction ȳ (every prefix, every label):
    Var(y) for "cumulative" (the λ of one utterance sum to 1), the cross-entropy of ȳ for
    "bce"; None for "distill" (the teacher's targets are not known here)."""
    y = np.asarray(y, dtype=np.float64)
    if objective == "cumulative":
        return float(y.var(0).mean())
    if objective == "bce":
        m = np.clip(y.mean(0), 1e-12, 1 - 1e-12)
        return float(np.mean(-(y * np.log(m) + (1 - y) * np.log1p(-m)).mean(0)))
    return None


def _check_convergence(losses, steps_per_epoch: int, tol: float,
                       constant: float | None = None) -> None:
    """Warn (:class:`ConvergenceWarning`) when the loss has not settled by ``tol`` or is no
    better than the constant prediction's loss ``constant`` (see ``tol`` of :func:`train`)."""
    import warnings

    if len(losses) < 2:
        warnings.warn(f"training ran {len(losses)} optimizer step(s): too few to tell whether "
                      f"the loss converged; use more data, more epochs or a smaller batch_size",
                      ConvergenceWarning, stacklevel=3)
        return
    change = _loss_change(losses, steps_per_epoch)
    what = "the last epoch" if len(losses) >= 2 * steps_per_epoch else "the second half of the run"
    if change < -tol:
        warnings.warn(f"the training loss has not converged: it fell {-change:.1%} over {what} "
                      f"({len(losses)} steps; tol={tol:g}); train longer (epochs=) or with a "
                      f"larger lr=", ConvergenceWarning, stacklevel=3)
    elif change > tol:
        warnings.warn(f"the training loss rose {change:.1%} over {what} (tol={tol:g}): the "
                      f"learning rate may be too large; try a smaller lr=",
                      ConvergenceWarning, stacklevel=3)
    w = _window(len(losses), steps_per_epoch)
    last = float(np.mean(losses[-w:]))
    if constant is not None and constant > 1e-12 and last > (1 - tol) * constant:
        warnings.warn(f"the training loss ({last:.4g}, mean of the last {w} steps) is no better "
                      f"than predicting the mean response everywhere ({constant:.4g}; tol="
                      f"{tol:g}): the model has learned nothing beyond the mean; train longer "
                      f"(epochs=), with a larger lr=, or on more data", ConvergenceWarning,
                      stacklevel=3)


@torch.no_grad()
def evaluate(model: RewardModel, dataset, objective: str = "cumulative",
             teacher: RewardModel | None = None, *, batch_size: int = 100,
             max_len: int | None = None, tokenizer="gpt2") -> float:
    """Mean per-utterance objective (without L_reg) over ``dataset``, in eval mode.

    ``dataset`` is a :class:`rankkit.RewardDataset` or anything
    :func:`rankkit.datasets.as_dataset` accepts (text is tokenized with ``tokenizer``, which
    must be the model's), as for :func:`train`."""
    if objective == "distill" and teacher is None:
        raise ValueError("objective='distill' needs teacher=")
    dataset = _coerce(dataset, tokenizer)
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
