"""Run a function on N local processes joined in a gloo group (tests, examples, the CLI).

:func:`spawn` starts ``nprocs`` fresh interpreters (``torch.multiprocessing`` "spawn"
context), joins them in a gloo process group on a free localhost port with a collective
timeout, calls ``fn(comm, *args)`` on every rank and returns what each rank returned or
raised. A rank that exits without a word (``os._exit``, a signal) is reported as such, and
the whole call is bounded by ``timeout_s``: nothing here can hang a test run.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

__all__ = ["spawn", "RankOutcome", "free_port", "gloo_available"]


def free_port() -> int:
    """A TCP port free on localhost now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gloo_available() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return bool(dist.is_available() and dist.is_gloo_available())


@dataclass
class RankOutcome:
    """What one rank did: ``value`` (returned), or ``error`` (type name, message, traceback),
    or neither with ``exitcode`` set (the process died without reporting)."""

    rank: int
    value: object = None
    error: tuple[str, str, str] | None = None
    exitcode: int | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.exitcode == 0


def _entry(rank: int, size: int, port: int, timeout_s: float, out_dir: str, fn, args) -> None:
    import torch.distributed as dist

    from ..distributed import get_comm

    t0 = time.perf_counter()
    result: dict = {}
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        comm = get_comm(None, timeout_s=timeout_s)
        result["value"] = fn(comm, *args)
    except BaseException as e:  # report everything, including SystemExit from the function
        result["error"] = (type(e).__name__, str(e), traceback.format_exc())
    result["seconds"] = time.perf_counter() - t0
    tmp = Path(out_dir) / f"rank{rank}.pkl.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    os.replace(tmp, Path(out_dir) / f"rank{rank}.pkl")
    # no destroy_process_group: after a peer failure it may block; the process exits here
    os._exit(0)


def spawn(fn, nprocs: int = 2, *args, timeout_s: float = 60.0, collective_timeout_s: float = 20.0,
          env: dict | None = None) -> list[RankOutcome]:
    """Run ``fn(comm, *args)`` on ``nprocs`` gloo ranks; one :class:`RankOutcome` per rank.

    ``fn`` must be importable by name (a module-level function). ``collective_timeout_s`` is
    the process group's timeout; processes still running after ``timeout_s`` are killed and
    reported with their exit code.
    """
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = free_port()
    env = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    with tempfile.TemporaryDirectory(prefix="rankkit-spawn-") as out:
        procs = [ctx.Process(target=_entry, args=(r, nprocs, port, collective_timeout_s, out, fn, args),
                             daemon=False) for r in range(nprocs)]
        # the children inherit the environment at start: numba and OpenMP read their thread
        # counts when first imported, which unpickling the target already does
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            for p in procs:
                p.start()
        finally:
            for key, val in saved.items():
                if val is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = val
        deadline = time.monotonic() + timeout_s
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        outcomes = []
        for r, p in enumerate(procs):
            f = Path(out) / f"rank{r}.pkl"
            o = RankOutcome(rank=r, exitcode=p.exitcode)
            if f.is_file():
                with open(f, "rb") as fh:
                    res = pickle.load(fh)
                o.value, o.error, o.seconds = res.get("value"), res.get("error"), res.get("seconds", 0.0)
            outcomes.append(o)
        return outcomes
