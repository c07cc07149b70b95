"""One optimiser-loop skeleton for the extension's four training functions.

``train`` (reward models), ``train_lm`` (base LMs), ``train_twist`` (CTL) and
``finetune_lm`` (self-distillation) differ in their loss; what they share is written here
once, so seeding, checkpoints and resume behave the same everywhere:

* the torch RNG (dropout, LoRA init) is forked and seeded with ``seed``, so the caller's
  global RNG is left as it was and two runs with one seed are identical from a fresh
  process; an explicit ``torch.Generator`` (data draws) is checkpointed with it;
* every ``every`` steps and at the end, the state of each stateful object (model,
  optimiser, scheduler, twist, …), the RNG states, the step and the loss history are
  written atomically to one file (:func:`rankkit_ext._io.save_checkpoint`);
* a run with the same ``path`` resumes from it bit for bit on CPU, after checking that
  the settings that fix the trajectory (schedule length, batch size, data size, seed, …)
  are the ones it was written with, and that its step count is possible.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from rankkit._io import DamagedFileError

from ._io import load_checkpoint, save_checkpoint

__all__ = ["OptimLoop"]


class OptimLoop:
    """Seeded, checkpointed, resumable loop over ``total`` optimiser steps.

    Parameters
    ----------
    what : str
        How messages name the checkpoint ("language-model checkpoint", …) and the bar.
    path : path or None
        Checkpoint file; None trains without checkpoints.
    total : int
        Steps of the full run.
    seed : int
        Seeds the forked torch RNG.
    state : mapping name -> object with ``state_dict`` / ``load_state_dict``
        Everything whose state the trajectory depends on.
    generator : torch.Generator, optional
        An explicit generator to checkpoint and restore with the rest.
    settings : mapping, optional
        Settings a resumed run must share with the checkpoint (compared key by key; the
        message names the ones that differ).
    every : int
        Checkpoint every this many steps (0: only at the end).
    resume : bool
        Resume from an existing checkpoint (False starts over and overwrites it).
    stop_after : int, optional
        Stop once this many steps are done (to split a run over jobs; the schedule is
        unchanged).
    device : torch.device, optional
        A CUDA device also gets its RNG forked, seeded and checkpointed.
    progress : bool
        tqdm bar.
    extendable : bool
        The run may be continued with a larger ``total`` (CTL: ``steps`` more steps of the
        same procedure); a checkpoint past ``total`` then means there is nothing left to do.
        False (schedules that depend on ``total``): ``total`` belongs to ``settings``.

    Examples
    --------
    >>> loop = OptimLoop("toy", None, total=3, seed=0, state={})
    >>> with loop:
    ...     for step in loop:
    ...         loop.done(float(step))
    >>> loop.history["loss"], loop.step
    ([0.0, 1.0, 2.0], 3)
    """

    def __init__(self, what: str, path: str | os.PathLike | None, *, total: int, seed: int,
                 state: Mapping[str, Any], generator: torch.Generator | None = None,
                 settings: Mapping[str, Any] | None = None, every: int = 0, resume: bool = True,
                 stop_after: int | None = None, device=None, progress: bool | None = False,
                 extendable: bool = False):
        self.what, self.path = what, None if path is None else Path(path)
        self.total, self.seed, self.state = int(total), int(seed), dict(state)
        self.generator, self.settings = generator, dict(settings or {})
        self.every, self.resume, self.stop_after = int(every or 0), resume, stop_after
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.progress, self.extendable = progress, extendable
        self.step = self.resumed_from = 0
        self.history: dict[str, list] = {"loss": []}
        self._fork = self._bar = None

    # ---- context: fork and seed the RNG, resume, open the bar --------------------------
    def __enter__(self) -> OptimLoop:
        cuda = [self.device] if self.device.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=cuda)
        self._fork.__enter__()
        torch.manual_seed(self.seed)
        if self.path is not None and self.resume and self.path.is_file():
            self._load()
        from rankkit._progress import progress_bar

        self._bar = progress_bar(total=self.total, initial=min(self.step, self.total), progress=self.progress,
                         desc=self.what)
        return self

    def __exit__(self, *exc) -> bool:
        if self._bar is not None:
            self._bar.close()
        fork, self._fork = self._fork, None
        return bool(fork.__exit__(*exc)) if fork is not None else False

    def __iter__(self) -> Iterator[int]:
        """0-based index of each step still to do (from the resumed one)."""
        while self.step < self.total and (self.stop_after is None or self.step < self.stop_after):
            yield self.step

    def done(self, loss: float, **postfix) -> None:
        """Record one finished step; checkpoint when it is due."""
        self.step += 1
        self.history["loss"].append(float(loss))
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{float(loss):.4g}", **postfix)
        if self.every and self.step % self.every == 0:
            self.save()

    # ---- persistence ---------------------------------------------------------------------
    def save(self) -> None:
        if self.path is None:
            return
        save_checkpoint({
            "step": self.step, "total": self.total, "settings": self.settings,
            "history": self.history,
            "states": {k: v.state_dict() for k, v in self.state.items()},
            "generator": None if self.generator is None else self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": (torch.cuda.get_rng_state(self.device)
                         if self.device.type == "cuda" else None)}, self.path)

    def _load(self) -> None:
        ck = load_checkpoint(self.path, self.what, map_location=self.device)
        need = ("step", "settings", "history", "states", "torch_rng")
        if not isinstance(ck, dict) or any(k not in ck for k in need):
            raise DamagedFileError(f"{self.what} {str(self.path)!r} is not a checkpoint of this "
                                   "version of rankkit (missing fields); delete it to start over")
        diff = {k: (ck["settings"].get(k), v) for k, v in self.settings.items()
                if ck["settings"].get(k) != v}
        if diff:
            raise ValueError(f"{self.path} was written with other settings (checkpoint, now): "
                             f"{diff}; use the same settings, pass resume=False, or use another "
                             "checkpoint_dir")
        step = ck["step"]
        if not isinstance(step, int) or step < 0 or (step > self.total and not self.extendable):
            raise DamagedFileError(f"{self.what} {str(self.path)!r} holds step {step!r}, impossible "
                                   f"for a run of {self.total} steps; delete it to start over")
        missing = set(self.state) - set(ck["states"])
        if missing:
            raise DamagedFileError(f"{self.what} {str(self.path)!r} has no state for "
                                   f"{sorted(missing)}; delete it to start over")
        for k, obj in self.state.items():
            obj.load_state_dict(ck["states"][k])
        if self.generator is not None and ck.get("generator") is not None:
            self.generator.set_state(ck["generator"].cpu())  # generator states are CPU bytes
        torch.set_rng_state(ck["torch_rng"].cpu())
        if self.device.type == "cuda" and ck.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ck["cuda_rng"].cpu(), self.device)
        self.step = self.resumed_from = step
        self.history = {k: list(v) for k, v in ck["history"].items()}
