r"""softImpute-ALS on a row-partitioned P_Ω(X) (Hastie et al. 2015, Alg. 3.1; issue 15).

The iteration is ``rankkit.softimpute.als_iteration``, the same function the
one-process fit runs; only the kernels differ. Rank r holds its rows of Ω (all columns), its
rows U_r of U, the replicated k-vector D² and a replicated V (m × k). Per iteration:

B-step
    each rank forms its part P_{Ω_r}(X − U_r D² Vᵀ)ᵀ U_r (m × k) with the one-process
    kernel of its rows; a **reduce-scatter** sums them and leaves rank r the column block
    B_c (about m/P rows of B): the column pass runs on column shards. B_c += V_c D²,
    shrinkage, then the thin SVD of the column-partitioned B by **TSQR** (local QR
    B_c = Q_c R_c, all-gather of the k × k factors R_c, one QR + SVD of the stacked
    P k × k matrix, computed identically on every rank) and an **all-gather** of the new
    V_c blocks: V is replicated again.
A-step
    P_{Ω_r}(X − U_r D² Vᵀ) V + U_r D² is local (rows of U never move); its thin SVD is a
    TSQR over the row shards (all-gather of P k × k factors).
Stopping rule
    R's ratio ‖M_old − M‖²_F / ‖M_old‖²_F from k × k products: Uᵀ U_old is an
    **all-reduce** of k × k partial products, Vᵀ V_old is local (V replicated). The squared
    error is an all-reduce of one scalar.

Bytes each rank sends per iteration (8-byte floats, ring collectives): the reduce-scatter
and the all-gather of an m × k factor, (P − 1)/P · m k · 8 each, plus three k × k
collectives and two scalars: ≈ 2 (P − 1)/P · 8 m k + 3 · 8 k² (P − 1) bytes, independent of
:math:`|Ω|` and of n. That is the volume of one all-reduce of B: Spark's ALS block exchange sends
each factor row to every block that observes it, which for P_Ω(R) (a few tokens observed by
almost every prefix block) is the same m k per rank without the replication to save.

Every collective result is bitwise the same on every rank and depends only on the inputs,
so each rank's checkpoint (two alternating slots per rank; a resume takes the latest
iteration that every rank saved) resumes to the bitwise-identical result. The one-process
fit from the same start differs only by the order of floating-point sums (the column
products are summed over ranks, the QR of U is a TSQR), i.e. to float tolerance.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from .._backend import resolve_backend
from .._kernels import _Kernels, make_kernels
from .._progress import show_progress
from ..factors import LowRankFit, SoftImputeResult
from ..softimpute import _FileCheckpoint, _run, final_step, warm_parts
from ._comm import Comm, get_comm
from ._slots import RankSlots
from .build import ShardedRewardMatrix, shard_rows

__all__ = ["soft_impute", "ShardedKernels", "bytes_per_iteration"]

# Global rows of the start matrix generated per block (bounds the temporary).
_START_ROWS = 1 << 16


def bytes_per_iteration(m: int, k: int, world_size: int, itemsize: int = 8) -> int:
    """Bytes one rank sends per iteration with ring collectives (module docstring)."""
    P = int(world_size)
    if P == 1:
        return 0
    frac = (P - 1) / P
    return int(2 * frac * m * k * itemsize + (2 * (P - 1) + 2 * frac) * k * k * itemsize + 4 * frac * 8)


class ShardedKernels(_Kernels):
    """The kernel interface of :mod:`rankkit._kernels` over a row-partitioned Ω.

    Wraps the one-process kernels of this rank's rows (any backend) and adds the
    collectives of the module docstring. ``stats`` counts the collectives and the payload
    bytes this rank contributed."""

    def __init__(self, local: _Kernels, comm: Comm, n_local: int, m: int, itemsize: int):
        self.K, self.comm, self.n_local, self.m = local, comm, n_local, m
        self.name = local.name
        self.bounds = np.linspace(0, m, comm.size + 1).astype(np.int64)  # column blocks
        self.c0, self.c1 = int(self.bounds[comm.rank]), int(self.bounds[comm.rank + 1])
        self.itemsize = itemsize
        self.stats = {"collectives": 0, "payload_bytes": 0}

    def _count(self, a) -> None:
        self.stats["collectives"] += 1
        self.stats["payload_bytes"] += int(np.prod(a.shape)) * self.itemsize

    # -- delegated --
    def asarray(self, a):
        return self.K.asarray(a)

    def to_numpy(self, a):
        return self.K.to_numpy(a)

    def relu(self, a):
        return self.K.relu(a)

    def thin_svd(self, a):
        return self.K.thin_svd(a)

    # -- the passes over Ω --
    def resid_rows(self, P, Q):
        if self.n_local == 0:
            out, s = self.K.asarray(np.zeros((0, P.shape[1]))), 0.0
        else:
            out, s = self.K.resid_rows(P, Q)
        self.stats["collectives"] += 1
        return out, self.comm.allreduce_scalar(s, "soft-impute squared error")

    def resid_cols(self, P, Q):
        """This rank's column block of P_Ω(X − Q Pᵀ)ᵀ Q summed over ranks; the squared error
        returned is this rank's part only (the iteration does not use it)."""
        if self.n_local == 0:
            part, s = self.K.asarray(np.zeros((self.m, P.shape[1]))), 0.0
        else:
            part, s = self.K.resid_cols(P, Q)
        self._count(part)
        return self.comm.reduce_scatter_rows(part, self.bounds, "soft-impute B-step (reduce-scatter)"), s

    def sse(self, P, Q):
        s = 0.0 if self.n_local == 0 else self.K.sse(P, Q)
        return self.comm.allreduce_scalar(s, "soft-impute squared error")

    def col_block(self, a):
        return a[self.c0:self.c1]

    def row_gram(self, x, y):
        g = x.T @ y
        self._count(g)
        return self.comm.allreduce(g, "soft-impute Uᵀ U_old (all-reduce)")

    # -- TSQR --
    def _qr(self, a):
        if self.name == "torch":
            import torch

            return torch.linalg.qr(a)
        if self.name == "cupy":
            import cupy

            return cupy.linalg.qr(a)
        import scipy.linalg

        return scipy.linalg.qr(a, mode="economic", check_finite=False)

    def _svd(self, r):
        if self.name == "torch":
            import torch

            return torch.linalg.svd(r)
        if self.name == "cupy":
            import cupy

            return cupy.linalg.svd(r)
        return np.linalg.svd(r)

    def _tsqr(self, a, what: str):
        """Thin SVD of a matrix partitioned by rows over the ranks: a_r = Q_r R_r, stack the
        R_r (P k × k, all-gathered), = Q_s R, R = u s wᵀ; this rank's block of the left
        factor is Q_r Q_s[r] u. Blocks with fewer than k rows are padded with zero rows."""
        k = a.shape[1]
        q, r = self._qr(a)
        if r.shape[0] < k:  # fewer local rows than k: pad Q with zero columns, R with zero rows
            q_pad = self.K.asarray(np.zeros((q.shape[0], k)))
            r_pad = self.K.asarray(np.zeros((k, k)))
            q_pad[:, :q.shape[1]] = q
            r_pad[:r.shape[0]] = r
            q, r = q_pad, r_pad
        self._count(r)
        stack = self.comm.allgather_equal(r, what).reshape(self.comm.size * k, k)
        qs, rr = self._qr(stack)
        u, s, wt = self._svd(rr)
        block = qs[self.comm.rank * k:(self.comm.rank + 1) * k] @ u
        return q @ block, s, wt.T

    def svd_rows(self, a):
        return self._tsqr(a, "soft-impute TSQR of A (all-gather)")

    def svd_cols(self, b):
        vc, s, w = self._tsqr(b, "soft-impute TSQR of B (all-gather)")
        self._count(vc)
        parts = self.comm.allgather(vc, "soft-impute V (all-gather)")
        if self.name == "torch":
            import torch

            return torch.cat(parts), s, w
        if self.name == "cupy":
            import cupy

            return cupy.concatenate(parts), s, w
        return np.concatenate(parts), s, w


# ---- start and checkpoints ------------------------------------------------------------------

def _global_normal_rows(n: int, k: int, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows ``rows`` of the n × k matrix ``rng.standard_normal((n, k))``: the stream is drawn
    block by block (the same numbers as one call) and only this rank's rows are kept."""
    out = np.empty((rows.size, k))
    for a in range(0, n, _START_ROWS):
        b = min(n, a + _START_ROWS)
        block = rng.standard_normal((b - a, k))
        lo, hi = np.searchsorted(rows, a), np.searchsorted(rows, b)
        out[lo:hi] = block[rows[lo:hi] - a]
    return out


def _start(K: ShardedKernels, warm_start, n: int, m: int, k: int, rows: np.ndarray, rng):
    """(U_r, Dsq, V) as R's cold and warm starts (rankkit.softimpute._warm_factors), with U
    orthonormalised by TSQR over the ranks. A warm start holds the whole U (n rows) or, from a
    fit returned with ``gather=False``, this rank's rows."""
    def orth(a):
        return K.to_numpy(K.svd_rows(K.asarray(a))[0])

    if warm_start is None:
        return orth(_global_normal_rows(n, k, rows, rng)), np.ones(k), np.zeros((m, k))
    u, d, v = warm_parts(warm_start, m)
    local = isinstance(warm_start, LowRankFit) and warm_start.meta.get("sharded", False)
    if not local:
        if u.shape[0] != n:
            raise ValueError(f"warm_start u has {u.shape[0]} rows; the matrix has n={n} (give the whole U, "
                             "or a result of rankkit.distributed.soft_impute(..., gather=False))")
        u = u[rows]
    if u.shape[0] != rows.size or v.shape[0] != m or u.shape[1] != d.size or v.shape[1] != d.size:
        raise ValueError(f"warm_start shapes u {u.shape}, d {d.shape}, v {v.shape} do not fit this rank's "
                         f"{rows.size} rows of a {n}×{m} matrix")
    keep = np.flatnonzero(d > 0)
    u, d, v = u[:, keep], d[keep], v[:, keep]
    if d.size == 0:
        return _start(K, None, n, m, k, rows, rng)
    if d.size >= k:
        return u[:, :k].copy(), d[:k].copy(), v[:, :k].copy()
    ja = k - d.size
    ua = _global_normal_rows(n, ja, rows, rng)
    ua -= u @ K.to_numpy(K.row_gram(K.asarray(u), K.asarray(ua)))
    ua = orth(ua)
    return (np.hstack([u, ua]), np.concatenate([d, np.full(ja, d[-1])]), np.hstack([v, np.zeros((m, ja))]))


class _RankCheckpoint(RankSlots, _FileCheckpoint):
    """The soft-impute checkpoint (``rankkit.softimpute``'s format) in per-rank slots."""

    iter_key, what = "iter", "soft-impute"

    def __init__(self, base: Path, comm: Comm, fp, n_local, m, k, max_iter):
        super().__init__(base, fp, n_local, m, k, max_iter)
        self._init_slots(base, comm)

    def save(self, U, Dsq, V, objective, ratios, n_done):
        self.write(self._slot(), U, Dsq, V, objective, ratios, n_done)


def _fingerprint(indptr, indices, x, rows, shape, k, lam, thresh, dtype, comm) -> np.ndarray:
    h = hashlib.blake2b(digest_size=16)
    for a in (np.asarray(shape, np.int64), np.asarray([comm.rank, comm.size], np.int64), rows, indptr,
              indices, x):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(repr((k, float(lam), float(thresh), str(dtype))).encode())
    return np.frombuffer(h.digest(), dtype=np.uint8)


# ---- public ------------------------------------------------------------------------------------

def soft_impute(R, rank: int, lam: float, *, comm=None, label: int | str = 0, max_iter: int = 1000,
                thresh: float = 1e-5, backend: str = "auto", device=None, dtype=None, warm_start=None,
                seed: int | np.random.Generator = 0, checkpoint: str | os.PathLike | None = None,
                checkpoint_every: int = 50, progress: bool | None = None, callback=None, final_svd: bool = True,
                gather: str | bool = "rank0") -> SoftImputeResult:
    r"""softImpute-ALS (Hastie et al. 2015, Alg. 3.1) on the ranks of a process group.

    Minimises ½‖P_Ω(X − M)‖²_F + λ‖M‖_* over M = U diag(d) Vᵀ, rank ≤ k, exactly as
    :func:`rankkit.soft_impute` (same updates, λ convention, stopping rule, final step and
    result type); the rows of Ω and of U are partitioned over the ranks (module docstring).

    Parameters
    ----------
    R : ShardedRewardMatrix, RewardMatrix or scipy.sparse
        A sharded matrix (:func:`rankkit.distributed.build_reward_matrix`,
        :func:`~rankkit.distributed.reduce_omega2`), or a whole matrix every rank holds,
        split here into contiguous row blocks of about equal cells (:func:`shard_rows`).
    rank, lam, label, max_iter, thresh, backend, device, dtype, seed, progress, final_svd
        As :func:`rankkit.soft_impute` (progress is shown on rank 0). ``seed`` gives the
        same U₀ as one process: the same normal n × k matrix, orthonormalised by TSQR.
    comm : Comm, ProcessGroup or None
        :func:`rankkit.distributed.get_comm`.
    warm_start : SoftImputeResult or dict, optional
        With the whole U (n rows), or a result of this function with ``gather=False``.
    checkpoint : path, optional
        Base name of the per-rank checkpoints ``<checkpoint>.rank<r>of<P>.<slot>.npz``
        (two alternating slots per rank, written atomically every ``checkpoint_every``
        iterations). A rerun with the same data, world size and settings resumes from the
        latest iteration that every rank saved and ends with the bitwise-identical result
        of an uninterrupted run; the files are removed when the run finishes.
    callback : callable(iter, info) -> bool, optional
        Called on every rank; the run stops when it returns True on any rank.
    gather : "rank0", "all" or False
        "rank0": rank 0 returns the whole U (rows in the matrix's global order), the
        other ranks their rows; "all": every rank gets the whole U; False: every rank keeps
        its rows (``meta["sharded"]`` is True on a result holding only its rows).

    Returns
    -------
    SoftImputeResult
        ``meta["distributed"]``: world size, collectives and payload bytes per
        iteration of this rank, the ring-collective bytes per iteration.
    """
    comm = get_comm(comm)
    if isinstance(R, ShardedRewardMatrix):
        S = R
    else:
        S = shard_rows(R, comm)
    if S.world_size != comm.size:
        raise ValueError(f"R was sharded over {S.world_size} ranks but the group has {comm.size}; build it "
                         "under the same launch")
    L = S.local
    x = L.label_values(label)
    n, m = S.shape
    top = comm.allreduce_scalar(float(np.max(np.abs(x))) if x.size else 0.0, "value range", "max")
    if top * np.sqrt(max(S.nnz, 1)) > 1e150:  # as rankkit.softimpute._check_scale, over all ranks
        raise ValueError(f"observed values reach {top:.3g}: their squared errors overflow float64 "
                         f"over {S.nnz:,} cells; rescale the labels (e.g. divide by {top:.1g})")
    if not isinstance(rank, int | np.integer) or isinstance(rank, bool) or not 0 <= rank <= min(n, m):
        raise ValueError(f"rank must be an integer in [0, min(n, m)] = [0, {min(n, m)}], got {rank!r}; "
                         "a rank above min(n, m) adds nothing")
    k = int(rank)
    if not (np.isscalar(lam) and np.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number ≥ 0 (R's lambda, e.g. 1e-4), got {lam!r}")
    if not (isinstance(max_iter, int | np.integer) and max_iter >= 0):
        raise ValueError(f"max_iter must be an integer ≥ 0, got {max_iter!r}")
    if not (isinstance(checkpoint_every, int | np.integer) and checkpoint_every >= 1):
        raise ValueError(f"checkpoint_every must be an integer ≥ 1, got {checkpoint_every!r}")
    if gather not in ("rank0", "all", False):
        raise ValueError(f"gather must be 'rank0', 'all' or False, got {gather!r}")
    np_dtype = np.dtype(np.float64 if dtype is None else dtype)
    if np_dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ValueError(f"dtype must be None, 'float64' or 'float32', got {dtype!r}")
    if device is None and comm.device != "cpu" and backend in ("auto", "torch"):
        device = comm.device  # an NCCL rank computes on its own GPU (cuda:LOCAL_RANK)
    backend, device = resolve_backend(backend, device)
    nnz = int(S.nnz)
    rows = S.row_ids
    meta = {"distributed": {"world_size": comm.size, "rank": comm.rank}}
    if k == 0:
        sse = comm.allreduce_scalar(float(np.dot(x, x)), "soft-impute squared error")
        res = SoftImputeResult(U=np.zeros((rows.size, 0)), d=np.zeros(0), V=np.zeros((m, 0)),
                               mse=sse / nnz if nnz else 0.0, sse=sse, objective=[], ratio=[], n_iter=0,
                               converged=True, lam=float(lam), rank=0, shape=(n, m), nnz=nnz,
                               thresh=float(thresh), backend=backend, meta=meta)
        return _gathered(res, S, comm, gather)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    local = make_kernels(backend, device, L.indptr, L.indices, x, (L.shape[0], m), np_dtype)
    K = ShardedKernels(local, comm, L.shape[0], m, np_dtype.itemsize)
    store = None
    if checkpoint is not None:
        fp = _fingerprint(L.indptr, L.indices, x, rows, (n, m), k, lam, thresh, np_dtype, comm)
        store = _RankCheckpoint(Path(checkpoint), comm, fp, L.shape[0], m, k, int(max_iter))

    def agree(stop: bool) -> bool:
        return comm.allreduce_scalar(float(stop), "soft-impute callback stop", "max") > 0

    limit = threadpool_limits(1, user_api="blas") if backend == "numpy" else contextlib.nullcontext()
    with limit:
        U, Dsq, V, objective, ratios, it, converged = _run(
            K, k, float(lam), int(max_iter), float(thresh), lambda: _start(K, warm_start, n, m, k, rows, rng),
            store, int(checkpoint_every), show_progress(progress) and comm.rank == 0, callback, nnz, agree=agree)
        before = dict(K.stats)
        U, Dsq, V, sse = final_step(K, U, Dsq, V, float(lam), final_svd)
    meta["distributed"].update(
        bytes_per_iteration=bytes_per_iteration(m, k, comm.size, np_dtype.itemsize),
        payload_bytes_per_iteration=(before["payload_bytes"] / it) if it else 0.0,
        collectives_per_iteration=(before["collectives"] / it) if it else 0.0)
    res = SoftImputeResult(U=K.to_numpy(U), d=K.to_numpy(Dsq), V=K.to_numpy(V), mse=sse / nnz if nnz else 0.0,
                           sse=sse, objective=objective, ratio=ratios, n_iter=it, converged=converged,
                           lam=float(lam), rank=k, shape=(n, m), nnz=nnz, thresh=float(thresh),
                           backend=K.name, meta=meta)
    return _gathered(res, S, comm, gather)


def _gathered(res: SoftImputeResult, S: ShardedRewardMatrix, comm: Comm, gather) -> SoftImputeResult:
    """The result with the whole U where ``gather`` asks for it (rows in global order)."""
    if comm.size == 1 or gather is False:
        res.meta["sharded"] = comm.size > 1
        return res
    if gather == "all":
        parts = comm.allgather_object((S.row_ids, res.U), "gather of U")
    else:
        parts = comm.gather_object((S.row_ids, res.U), 0, "gather of U")
        if comm.rank != 0:
            res.meta["sharded"] = True
            return res
    U = np.empty((S.shape[0], res.U.shape[1]))
    for ids, u in parts:
        U[ids] = u
    res.U = U
    res.meta["sharded"] = False
    return res


def observed_mse(R: ShardedRewardMatrix, result: SoftImputeResult, label: int | str = 0, comm=None) -> float:
    """MSE over the observed cells of a sharded matrix, from the factors alone (the check
    :func:`rankkit.observed_mse` makes, summed over ranks); ``result`` holds the whole U or
    this rank's rows."""
    from ..softimpute import observed_mse as _mse

    comm = get_comm(comm)
    L = R.local
    U = result.U if result.U.shape[0] == L.shape[0] and result.meta.get("sharded", False) else \
        result.U[R.row_ids]
    part = _mse(L, (U, result.d, result.V), label) * L.nnz
    total = comm.allreduce_scalar(part, "observed MSE")
    return total / R.nnz if R.nnz else 0.0
