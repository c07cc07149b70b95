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

__all__ = ["spawn", "RankOutcome", "free_port", "gloo_available", "run_threads", "dying_callback"]


def dying_callback(comm, at: int | None, *, rank: int = 1, how: str = "exit"):
    """A solver ``callback(it, info)`` that makes process ``rank`` stop without a word at
    iteration ``at`` (``None``: never): ``how="exit"`` ends the process (``os._exit(3)``,
    a dead gloo rank), ``"interrupt"`` raises ``KeyboardInterrupt`` (a thread rank; the
    sharded solvers save nothing on interrupt)."""
    if how not in ("exit", "interrupt"):
        raise ValueError(f"how must be 'exit' or 'interrupt', got {how!r}")

    def callback(it, info):
        if at is not None and comm.rank == rank and it == at:
            if how == "exit":
                os._exit(3)
            raise KeyboardInterrupt
        return False

    return callback


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


_RENDEZVOUS_S = 120.0


def _entry(rank: int, size: int, port: int, timeout_s: float, out_dir: str, fn, args) -> None:
    import torch.distributed as dist

    from ..distributed import get_comm

    t0 = time.perf_counter()
    result: dict = {}
    try:
        # The rendezvous gets a generous timeout of its own: on a loaded machine a spawned
        # child can take longer than a short collective timeout just to import torch, and a
        # test of the collective timeout must not fail in the rendezvous instead.
        rendezvous_s = max(timeout_s, _RENDEZVOUS_S)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                                timeout=datetime.timedelta(seconds=rendezvous_s))
        group = None
        if timeout_s < rendezvous_s:  # the collectives under test run on a group with the short timeout
            group = dist.new_group(list(range(size)), timeout=datetime.timedelta(seconds=timeout_s))
        comm = get_comm(group, timeout_s=timeout_s)
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


# ---- ranks as threads of one process -----------------------------------------------------------

class _Rendezvous:
    """What the threads of a ``ThreadComm`` world share: one slot per rank, a barrier."""

    def __init__(self, size: int, timeout_s: float):
        import threading

        self.slots: list = [None] * size
        self.barrier = threading.Barrier(size, timeout=timeout_s)


def _thread_comm_class():
    import pickle as _pickle
    from dataclasses import dataclass as _dc

    import numpy as np

    from ..distributed._comm import Comm, RankFailedError

    @_dc(frozen=True, eq=False)
    class ThreadComm(Comm):
        """A :class:`~rankkit.distributed.Comm` whose ranks are threads of this process.

        Every collective is an exchange through shared slots between two barrier waits,
        reduced in rank order on every rank (so, as with gloo and NCCL, every rank gets the
        same bits). NumPy arrays only. For property tests of the distributed algorithms at
        any world size without starting processes; a broken barrier (a rank raised, or did
        not arrive within the timeout) raises :class:`RankFailedError`."""

        state: object = None

        def _exchange(self, value, what: str) -> list:
            st = self.state
            st.slots[self.rank] = _pickle.dumps(value, protocol=_pickle.HIGHEST_PROTOCOL)
            try:
                st.barrier.wait()
                out = [_pickle.loads(b) for b in st.slots]
                st.barrier.wait()  # nobody writes the next collective before all have read
            except Exception as e:  # threading.BrokenBarrierError
                st.barrier.abort()
                raise RankFailedError(f"rank {self.rank} of {self.size}: collective {what} failed "
                                      f"({type(e).__name__}): another rank raised or did not arrive") from e
            return out

        def barrier(self, what: str = "barrier") -> None:
            self._exchange(None, what)

        def allreduce(self, a, what: str = "all_reduce", op: str = "sum"):
            vals = self._exchange(np.asarray(a), what)
            f = {"sum": np.add, "max": np.maximum, "min": np.minimum}[op]
            out = vals[0].copy()
            for v in vals[1:]:
                out = f(out, v)
            return out

        def allgather(self, a, what: str = "all_gather") -> list:
            return self._exchange(np.asarray(a), what)

        def allgather_equal(self, a, what: str = "all_gather"):
            return np.stack(self._exchange(np.asarray(a), what))

        def reduce_scatter_rows(self, a, bounds, what: str = "reduce_scatter"):
            total = self.allreduce(a, what)
            return np.ascontiguousarray(total[int(bounds[self.rank]):int(bounds[self.rank + 1])])

        def alltoallv(self, a, counts, what: str = "all_to_all"):
            counts = np.asarray(counts, dtype=np.int64)
            parts = self._exchange((np.asarray(a), counts), what)
            got = np.array([c[self.rank] for _, c in parts], dtype=np.int64)
            pieces = []
            for arr, c in parts:
                lo = int(c[:self.rank].sum())
                pieces.append(arr[lo:lo + int(c[self.rank])])
            return np.concatenate(pieces) if pieces else np.asarray(a)[:0], got

        def allgather_object(self, obj, what: str = "all_gather_object") -> list:
            return self._exchange(obj, what)

        def gather_object(self, obj, dst: int = 0, what: str = "gather_object"):
            out = self._exchange(obj, what)
            return out if self.rank == dst else None

        def broadcast_object(self, obj, src: int = 0, what: str = "broadcast"):
            return self._exchange(obj if self.rank == src else None, what)[src]

    return ThreadComm


def run_threads(fn, nranks: int, *args, timeout_s: float = 60.0) -> list:
    """``fn(comm, *args)`` on ``nranks`` threads joined by a ``ThreadComm``; the values in
    rank order. The first exception of any rank is re-raised (the others then fail at their
    next collective instead of waiting)."""
    import threading

    ThreadComm = _thread_comm_class()
    st = _Rendezvous(nranks, timeout_s)
    out: list = [None] * nranks
    errors: list = [None] * nranks

    def body(r):
        try:
            out[r] = fn(ThreadComm(rank=r, size=nranks, state=st, timeout_s=timeout_s), *args)
        except BaseException as e:
            errors[r] = e
            st.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(nranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s * 4)
    first = next((e for e in errors if e is not None and "another rank raised" not in str(e)), None) or \
        next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return out
