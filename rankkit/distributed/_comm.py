"""The process group and the few collectives rankkit's distributed stages use.

One small object, :class:`Comm`, holds the ``torch.distributed`` process group, this
process's rank and the world size, and the device collective buffers live on (CPU for
gloo, ``cuda:LOCAL_RANK`` for NCCL). Every collective takes and returns NumPy arrays or torch
tensors (whichever it was given), so the algorithms above it stay backend-agnostic.

Every collective runs inside :meth:`Comm.guard`: a peer that exits (crash, ``kill``, out of
memory) or stops answering for longer than the group's timeout turns the backend's
exception (gloo's "Connection closed by peer", NCCL's watchdog timeout) into one
:class:`RankFailedError` that names this rank, the collective and the stage it was in. A
run therefore fails with a clear message instead of hanging.

A world of size 1 (no ``torchrun``, no ``RANK``/``WORLD_SIZE`` in the environment) needs no
process group at all: every collective is then the identity, so the distributed functions
also run, and are tested, as one plain process.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
from dataclasses import dataclass

import numpy as np

__all__ = ["Comm", "RankFailedError", "get_comm", "ENV_VARS"]

#: Environment variables read to join a process group (set by ``torchrun`` / SLURM scripts).
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

_DEFAULT_TIMEOUT_S = 300.0


class RankFailedError(RuntimeError):
    """A collective failed: another rank exited or did not answer within the timeout."""


def _torch():
    import torch
    import torch.distributed as dist

    return torch, dist


@dataclass(frozen=True, eq=False)
class Comm:
    """A process group as rankkit uses it.

    Attributes
    ----------
    rank, size : int
        This process's rank and the number of processes.
    group : torch.distributed.ProcessGroup or None
        None for a world of one process (every collective is the identity).
    device : str
        Where collective buffers live: ``"cpu"`` for gloo, ``"cuda:<LOCAL_RANK>"`` for NCCL.
    timeout_s : float
        The group's collective timeout, quoted by :class:`RankFailedError`.
    """

    rank: int = 0
    size: int = 1
    group: object | None = None
    device: str = "cpu"
    timeout_s: float = _DEFAULT_TIMEOUT_S

    # ---- errors ---------------------------------------------------------------------
    @contextlib.contextmanager
    def guard(self, what: str):
        """Turn a backend failure inside the block into :class:`RankFailedError`."""
        try:
            yield
        except RankFailedError:
            raise
        except (RuntimeError, OSError) as e:  # DistBackendError/DistNetworkError are RuntimeErrors
            raise RankFailedError(
                f"rank {self.rank} of {self.size}: collective {what} failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else '-'}). Another rank has most likely "
                f"exited (crashed, was killed or ran out of memory) or did not answer within the "
                f"{self.timeout_s:g} s timeout; see that rank's log. Rerun the job: soft-impute "
                "runs resume from their per-rank checkpoints") from e

    # ---- conversions ------------------------------------------------------------------
    def _to_t(self, a):
        torch, _ = _torch()
        if isinstance(a, torch.Tensor):
            return a.contiguous() if a.device.type == torch.device(self.device).type else \
                a.to(self.device).contiguous()
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t if self.device == "cpu" else t.to(self.device)

    @staticmethod
    def _back(t, like):
        torch, _ = _torch()
        if isinstance(like, torch.Tensor):
            return t if t.device == like.device else t.to(like.device)
        return t.cpu().numpy()

    # ---- collectives --------------------------------------------------------------------
    def barrier(self, what: str = "barrier") -> None:
        if self.size == 1:
            return
        _, dist = _torch()
        with self.guard(what):
            # a tiny all-reduce rather than dist.barrier: NCCL's barrier needs a device guess
            self.allreduce(np.zeros(1), what)

    def allreduce(self, a, what: str = "all_reduce", op: str = "sum"):
        """Element-wise sum (or ``op="max"``/``"min"``) over ranks; the same bits on every rank."""
        if self.size == 1:
            return a
        _, dist = _torch()
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        t = self._to_t(a)
        if t is a:
            t = t.clone()
        with self.guard(what):
            dist.all_reduce(t, op=ops[op], group=self.group)
        return self._back(t, a)

    def allreduce_scalar(self, x: float, what: str = "all_reduce", op: str = "sum") -> float:
        return float(self.allreduce(np.array([x], dtype=np.float64), what, op)[0])

    def allgather(self, a, what: str = "all_gather") -> list:
        """Arrays of every rank, in rank order; first dimensions may differ between ranks."""
        if self.size == 1:
            return [a]
        torch, dist = _torch()
        t = self._to_t(a)
        sizes = self.allreduce(self._onehot(t.shape[0]), what + " (sizes)")
        sizes = [int(s) for s in np.asarray(sizes.cpu() if hasattr(sizes, "cpu") else sizes)]
        top = max(sizes)
        pad = torch.zeros((top, *t.shape[1:]), dtype=t.dtype, device=t.device)
        pad[:t.shape[0]] = t
        out = [torch.empty_like(pad) for _ in range(self.size)]
        with self.guard(what):
            dist.all_gather(out, pad, group=self.group)
        return [self._back(o[:s], a) for o, s in zip(out, sizes, strict=True)]

    def _onehot(self, n: int) -> np.ndarray:
        v = np.zeros(self.size, dtype=np.int64)
        v[self.rank] = n
        return v

    def allgather_equal(self, a, what: str = "all_gather"):
        """All-gather of equally shaped arrays, stacked along a new first axis."""
        if self.size == 1:
            return a[None] if not hasattr(a, "unsqueeze") else a.unsqueeze(0)
        torch, dist = _torch()
        t = self._to_t(a)
        out = [torch.empty_like(t) for _ in range(self.size)]
        with self.guard(what):
            dist.all_gather(out, t, group=self.group)
        return self._back(torch.stack(out), a)

    def reduce_scatter_rows(self, a, bounds: np.ndarray, what: str = "reduce_scatter"):
        """Sum over ranks of ``a`` (same shape on every rank), rank r keeping rows
        ``bounds[r]:bounds[r+1]``. Blocks are padded to the largest one (the collective
        wants equal parts)."""
        if self.size == 1:
            return a
        torch, dist = _torch()
        t = self._to_t(a)
        widths = np.diff(bounds)
        top = int(widths.max())
        parts = []
        for r in range(self.size):
            p = torch.zeros((top, *t.shape[1:]), dtype=t.dtype, device=t.device)
            p[:int(widths[r])] = t[int(bounds[r]):int(bounds[r + 1])]
            parts.append(p)
        out = torch.empty_like(parts[0])
        with self.guard(what):
            dist.reduce_scatter(out, parts, group=self.group)
        return self._back(out[:int(widths[self.rank])].contiguous(), a)

    def alltoallv(self, a: np.ndarray, counts: np.ndarray, what: str = "all_to_all") -> tuple[np.ndarray, np.ndarray]:
        """Rows ``a`` sorted by destination, ``counts[r]`` of them for rank r → the rows
        every rank sent here, in source-rank order, and how many came from each rank."""
        counts = np.asarray(counts, dtype=np.int64)
        if self.size == 1:
            return a, counts
        torch, dist = _torch()
        got = self.alltoall_counts(counts, what + " (counts)")
        t = self._to_t(a)
        out = torch.empty((int(got.sum()), *t.shape[1:]), dtype=t.dtype, device=t.device)
        with self.guard(what):
            dist.all_to_all_single(out, t, [int(c) for c in got], [int(c) for c in counts], group=self.group)
        return self._back(out, a), got

    def alltoall_counts(self, counts: np.ndarray, what: str) -> np.ndarray:
        torch, dist = _torch()
        t = self._to_t(np.asarray(counts, dtype=np.int64))
        out = torch.empty_like(t)
        with self.guard(what):
            dist.all_to_all_single(out, t, group=self.group)
        return out.cpu().numpy()

    def allgather_object(self, obj, what: str = "all_gather_object") -> list:
        """Picklable objects of every rank, in rank order (through a byte tensor, so that it
        works on every backend without ``all_gather_object``'s device rules)."""
        if self.size == 1:
            return [obj]
        raw = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
        return [pickle.loads(b.tobytes()) for b in self.allgather(raw.copy(), what)]

    def gather_object(self, obj, dst: int = 0, what: str = "gather_object") -> list | None:
        """Picklable objects of every rank on rank ``dst`` (in rank order), None elsewhere."""
        if self.size == 1:
            return [obj]
        torch, dist = _torch()
        raw = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8).copy()
        sizes = [int(s) for s in np.asarray(self.allreduce(self._onehot(raw.size), what + " (sizes)"))]
        pad = torch.zeros(max(sizes), dtype=torch.uint8)
        pad[:raw.size] = torch.from_numpy(raw)
        pad = pad.to(self.device)
        out = [torch.empty_like(pad) for _ in range(self.size)] if self.rank == dst else None
        with self.guard(what):
            dist.gather(pad, out, dst=dst, group=self.group)
        if self.rank != dst:
            return None
        return [pickle.loads(o[:s].cpu().numpy().tobytes()) for o, s in zip(out, sizes, strict=True)]

    def broadcast_object(self, obj, src: int = 0, what: str = "broadcast"):
        if self.size == 1:
            return obj
        return self.allgather_object(obj if self.rank == src else None, what)[src]


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name}={v!r} must be an integer (torchrun sets it)") from None


def get_comm(group=None, *, backend: str | None = None, timeout_s: float | None = None) -> Comm:
    """The :class:`Comm` of this process.

    Parameters
    ----------
    group : Comm, torch.distributed.ProcessGroup or None
        A ``Comm`` is returned as is. ``None``: the default group if
        ``torch.distributed`` is initialised; else, when ``WORLD_SIZE`` > 1 is set (by
        ``torchrun``), a new default group from ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
        and ``MASTER_PORT`` (``init_method="env://"``); else a world of one process.
    backend : "gloo", "nccl" or None
        For a new group: None picks NCCL when CUDA is available, else gloo.
    timeout_s : float, optional
        Collective timeout of a new group (default 300 s); a rank that does not answer
        within it makes the others raise :class:`RankFailedError`.
    """
    if isinstance(group, Comm):
        return group
    timeout = _DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
    try:
        torch, dist = _torch()
    except ImportError:
        if group is None and (_env_int("WORLD_SIZE") or 1) == 1:
            return Comm(timeout_s=timeout)  # one process needs no torch
        raise ImportError("rankkit.distributed needs PyTorch for more than one process: "
                          "pip install 'rankkit[ext]' (torch >= 2.11)") from None
    if group is None and not (dist.is_available() and dist.is_initialized()):
        world = _env_int("WORLD_SIZE")
        if world is None or world == 1:
            return Comm(timeout_s=timeout)
        rank = _env_int("RANK")
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise ValueError(f"WORLD_SIZE={world} is set but {missing} are not: launch with torchrun "
                             "(it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or set them")
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(_env_int("LOCAL_RANK") or 0)
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout))
    if not dist.is_available():
        return Comm(timeout_s=timeout)
    g = group
    name = dist.get_backend(g)
    device = "cpu"
    if name == "nccl":
        device = f"cuda:{torch.cuda.current_device()}"
    return Comm(rank=dist.get_rank(g), size=dist.get_world_size(g), group=g, device=device,
                timeout_s=timeout)
