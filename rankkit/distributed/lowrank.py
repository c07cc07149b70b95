r"""The fixed-rank certificate solver on a row-partitioned P_Ω(X) (issue 15).

The solvers are those of :mod:`rankkit.lowrank` — ALS, Riemannian CG and Riemannian
Levenberg–Marquardt, ``method="auto"`` included — run unchanged: :class:`ShardedLRKernels`
is the kernel object of :mod:`rankkit._lrkernels` over this rank's rows, and only its
*reduction hooks* differ from one process. Rank r holds its rows of Ω (all columns), its rows
U_r of U, and the replicated s, V and k × k cores. Every quantity of the solvers is then

- row-local: U_r, (Z V)_r, the residual on this rank's cells, the per-row ALS solves
  u_i = argmin ‖x_{S_i} − B_{S_i} u‖² + ρ‖u‖² (exact and local: B is replicated);
- or a sum over rows, which becomes an **all-reduce**: Zᵀ U (m × k) with Uᵀ Z V (k × k)
  in one collective (``rsum``), Aᵀ U (k × k, ``rgram``), the squared error and every inner product of cell vectors
  (one scalar), the U_p part of the inner product of two tangent vectors, and the column
  pass of ALS: per column j the normal equations Σ_{i ∈ S_j} a_i a_iᵀ, Σ x_ij a_i, summed
  over the row shards (the lower triangle and the right-hand side, m · k(k + 3)/2 floats),
  then solved by every rank for every column (Cholesky, the pseudo-inverse where singular);
- or a QR of a row-partitioned factor (A in ALS' SVD form, U_p in the retraction): a
  **TSQR** (local QR, all-gather of the P k × k factors R_r, one QR of the stack computed
  identically on every rank).

Bytes each rank sends per iteration (8-byte floats, ring collectives; :func:`fixed_rank_bytes`):

- ALS sweep: 2 (P − 1)/P · 8 · m k(k + 3)/2 (column normal equations) + 8 k² (P − 1) (TSQR)
  + 2 (P − 1)/P · 8 (squared error): m k²-sized, like Spark's ALS (each of its factor
  blocks ships the rows a block needs, plus its own normal equations are local), and
  independent of :math:`|Ω|` and n;
- RLM: per product with the Gauss–Newton operator (each inner CG iteration)
  2 (P − 1)/P · 8 · (m k + k² + 2): one Zᵀ U, one k × k core, two inner products; plus per
  outer step the gradient, a TSQR and a few scalars;
- RCG: per iteration the gradient (m k + k²), two transports (2 · 3 k²) and a few scalars.

The one-process fit from the same start differs only in the order of floating-point sums
(sums over ranks, TSQR), i.e. it is followed to float tolerance. Every collective result is
the same bits on every rank, so every rank takes the same decisions (phase switches, line
search, stop) and its checkpoint — two alternating slots per rank, a resume takes the latest
iteration every rank saved — resumes bitwise.

Starts: ``init="random"`` draws the same numbers as one process (the n × k normal matrix in
blocks, this rank's rows kept; U orthonormalised by TSQR), so it is the one-process start to
rounding. ``init="spectral"`` needs the top-k singular subspace of the rescaled P_Ω(X)/p:
one process takes a dense SVD or ARPACK; here a randomized subspace iteration (Halko,
Martinsson & Tropp 2011, Alg. 4.4: k + max(10, k) columns, ``_POWER_ITERS`` power
iterations, each one sparse product each way) — a start of the same quality, not the same
bits. Warm starts are truncated or padded as in one process (the padding's residual SVD by
the same subspace iteration).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from .._io import atomic_npz, fingerprint
from .._lrkernels import _LRKernels, make_lr_kernels, svd_form
from .._progress import show_progress
from .._starts import _scale_normal, _signed
from ..factors import FixedRankResult, LowRankFit
from ..lowrank import (
    _check_args,
    _fit_backend,
    _NpzCheckpoint,
    _result,
    _settings,
    _solve,
    _zero_result,
)
from ..softimpute import warm_parts
from ._comm import Comm, get_comm
from ._slots import RankSlots
from .build import ShardedRewardMatrix, shard_rows
from .softimpute import _gathered, _global_normal_rows

__all__ = ["fixed_rank_fit", "ShardedLRKernels", "fixed_rank_bytes"]

# power iterations of the randomized subspace iteration of the spectral start
_POWER_ITERS = 12


def fixed_rank_bytes(m: int, k: int, world_size: int, itemsize: int = 8) -> dict:
    """Bytes one rank sends with ring collectives (module docstring): per ALS sweep, per
    product with the Gauss–Newton operator of RLM (one inner CG iteration) and per RCG
    gradient. 0 in a world of one."""
    P = int(world_size)
    if P == 1:
        return {"als_sweep": 0, "rlm_cg_product": 0, "gradient": 0}
    ring = 2 * (P - 1) / P * itemsize
    return {"als_sweep": int(ring * (m * k * (k + 3) / 2 + 1) + itemsize * k * k * (P - 1)),
            "rlm_cg_product": int(ring * (m * k + k * k + 2)),
            "gradient": int(ring * (m * k + k * k))}


class ShardedLRKernels(_LRKernels):
    """The fixed-rank kernel interface over a row-partitioned Ω (module docstring).

    Wraps the one-process kernels ``local`` of this rank's rows (numpy or torch) and
    replaces the reduction hooks of :class:`rankkit._lrkernels._LRKernels` by collectives.
    ``stats`` counts the collectives and the payload bytes this rank contributed."""

    def __init__(self, local, comm: Comm, k: int, n: int, n_local: int, m: int):
        self.L, self.comm, self.k, self.n, self.n_local, self.m = local, comm, int(k), int(n), int(n_local), int(m)
        self.name = local.name
        self.shape = (self.n_local, self.m)
        self.stats = {"collectives": 0, "payload_bytes": 0}
        i, j = np.tril_indices(self.k)
        if self.name == "torch":
            import torch

            i, j = torch.as_tensor(i, device=local.device), torch.as_tensor(j, device=local.device)
        self._tril = (i, j)

    def _count(self, nbytes: int) -> None:
        if self.comm.size > 1:  # a world of one communicates nothing
            self.stats["collectives"] += 1
            self.stats["payload_bytes"] += nbytes

    def _sum(self, a, what: str):
        self._count(int(np.prod(a.shape)) * 8)
        return self.comm.allreduce(a, what)

    def _sum_scalar(self, x: float, what: str) -> float:
        self._count(8)
        return self.comm.allreduce_scalar(x, what)

    # -- row-local and replicated operations: the local kernels' --
    def __getattr__(self, name):
        # sampled, sampled2, spmm, spmm_t (this rank's partial sum: the algorithm completes it
        # with rsum), observed, asarray, to_numpy, qr, svd, cat, stack_rows, zeros, eye, flat,
        # unflat, diag, abs_sum, solve_rows: row-local or on replicated arrays
        if name == "L":
            raise AttributeError(name)
        return getattr(self.L, name)

    # -- sums over rows --
    def rsum(self, *parts):
        """One all-reduce for several partial sums (flattened, concatenated, split again)."""
        if len(parts) == 1:
            return (self._sum(parts[0], "fixed-rank sum over rows (all-reduce)"),)
        flat = self._sum(self.L.flat(parts), "fixed-rank sums over rows (all-reduce)")
        return self.L.unflat(flat, [p.shape for p in parts])

    def rgram(self, X, Y):
        return self._sum(X.T @ Y, "fixed-rank k × k product (all-reduce)")

    def vdot(self, a, b) -> float:
        return self._sum_scalar(self.L.vdot(a, b), "fixed-rank inner product over Ω")

    def tangent_ip(self, a, b) -> float:
        (M, Up, Vp), (N, Uq, Vq) = a, b
        return self.L.vdot(M, N) + self._sum_scalar(self.L.vdot(Up, Uq), "fixed-rank tangent inner product") \
            + self.L.vdot(Vp, Vq)

    def flat_ip(self, a, b) -> float:
        kk, nk = self.k * self.k, self.n_local * self.k
        rows = self._sum_scalar(self.L.vdot(a[kk:kk + nk], b[kk:kk + nk]), "fixed-rank tangent inner product")
        return self.L.vdot(a[:kk], b[:kk]) + rows + self.L.vdot(a[kk + nk:], b[kk + nk:])

    def qr_rows(self, a):
        """TSQR: a_r = Q_r R_r, the P stacked R_r (all-gathered) = Q_s R; this rank's block
        of Q is Q_r Q_s[r]. Blocks with fewer than k rows are padded with zero rows."""
        k = a.shape[1]
        q, r = self.L.qr(a)
        if r.shape[0] < k:
            q_pad, r_pad = self.L.zeros(q.shape[0], k), self.L.zeros(k, k)
            q_pad[:, :q.shape[1]] = q
            r_pad[:r.shape[0]] = r
            q, r = q_pad, r_pad
        self._count(k * k * 8)
        stack = self.comm.allgather_equal(r, "fixed-rank TSQR (all-gather)").reshape(self.comm.size * k, k)
        qs, rr = self.L.qr(stack)
        return q @ qs[self.comm.rank * k:(self.comm.rank + 1) * k], rr

    def solve_cols(self, P, rho):
        """The column pass of ALS: per-column normal equations summed over the row shards
        (lower triangle and right-hand side in one all-reduce), solved on every rank."""
        G, b = self.L.col_normal(P)
        k = P.shape[1]
        i, j = self._tril
        packed = self.L.cat([G[:, i, j], b])
        packed = self._sum(packed, "fixed-rank ALS column normal equations (all-reduce)")
        t = len(i)
        G = self.L.zeros(self.m, k, k)
        G[:, i, j] = packed[:, :t]
        G[:, j, i] = packed[:, :t]
        return self.L.solve_normal(G, packed[:, t:], rho)

    def short_fractions(self, k: int) -> tuple[float, float]:
        rows = np.diff(self.L.to_numpy(self.L.row_ptr()))
        cols = np.diff(self.L.to_numpy(self.L.col_ptr())).astype(np.float64)
        short_rows = self.comm.allreduce_scalar(float(np.sum(rows < k)), "fixed-rank pattern (rows)")
        cols = self.comm.allreduce(cols, "fixed-rank pattern (columns)")
        return short_rows / max(self.n, 1), float(np.mean(cols < k))


# ---- starts ------------------------------------------------------------------------------------

def _top_svd(K: ShardedLRKernels, z, k: int, rng: np.random.Generator):
    """Top-k singular triplets of the row-partitioned sparse Z (values z on this rank's
    cells) by randomized subspace iteration; (U_r, s, V) as NumPy, s descending."""
    m = K.m
    if k == 0:
        return np.zeros((K.n_local, 0)), np.zeros(0), np.zeros((m, 0))
    width = min(m, k + max(10, k))
    W = K.asarray(rng.standard_normal((m, width)))
    Q = K.qr_rows(K.spmm(z, W))[0]
    for _ in range(_POWER_ITERS):
        W = K.qr(K.rsum(K.spmm_t(z, Q))[0])[0]
        Q = K.qr_rows(K.spmm(z, W))[0]
    # Z ≈ Q Qᵀ Z = Q Bᵀ with B = Zᵀ Q: the SVD form of (Q, B), truncated
    U, s, V = svd_form(Q, K.rsum(K.spmm_t(z, Q))[0], K.qr_rows, K.svd, K.qr)
    return K.to_numpy(U[:, :k]), K.to_numpy(s[:k]), K.to_numpy(V[:, :k])


def _fit_scale(K, indptr, indices, x, U, V) -> np.ndarray:
    FtF, Ftx = _scale_normal(indptr, indices, x, U, V)
    both = K.comm.allreduce(np.concatenate([FtF.ravel(), Ftx]), "fixed-rank start scale (all-reduce)")
    k = U.shape[1]
    return np.linalg.lstsq(both[:k * k].reshape(k, k), both[k * k:], rcond=None)[0]


def _orth_rows(K, a):
    return K.to_numpy(K.qr_rows(K.asarray(a))[0])


def _random_start(K, data, n, k, rows, rng):
    """rankkit._starts._random_start: the same normal draws, this rank's rows of U."""
    indptr, indices, x = data
    U = _orth_rows(K, _global_normal_rows(n, k, rows, rng))
    V = np.linalg.qr(rng.standard_normal((K.m, k)))[0]
    return _signed(U, _fit_scale(K, indptr, indices, x, U, V), V)


def _spectral_start(K, data, n, nnz, k, rows, rng):
    """rankkit._starts._spectral_start with the subspace iteration for the top-k SVD."""
    indptr, indices, x = data
    m = K.m
    p = max(nnz, 1) / (n * m)
    U, _, V = _top_svd(K, K.asarray(x / p), k, rng)
    U = _orth_rows(K, U + 1e-2 * _global_normal_rows(n, k, rows, rng) / np.sqrt(n))
    V = np.linalg.qr(V + 1e-2 * rng.standard_normal(V.shape) / np.sqrt(m))[0]
    return _signed(U, _fit_scale(K, indptr, indices, x, U, V), V)


def _warm(K, warm_start, data, n, nnz, k, rows, rng):
    """rankkit._starts._warm on this rank's rows: a result holding the whole U (n rows), one
    of this module with ``gather=False`` (this rank's rows), or a dict {"u", "d", "v"}."""
    indptr, indices, x = data
    m = K.m
    if isinstance(warm_start, dict):
        missing = [key for key in ("u", "d", "v") if key not in {q.lower() for q in warm_start}]
        if missing:
            raise ValueError(f"warm_start dict needs 'u' (n×j), 'd' (j,) and 'v' (m×j); missing {missing}")
    u, d, v = warm_parts(warm_start, m)
    local = isinstance(warm_start, LowRankFit) and warm_start.meta.get("sharded", False)
    if not local:
        if u.shape[0] != n:
            raise ValueError(f"warm_start u has {u.shape[0]} rows; the matrix has n={n} (give the whole U, "
                             "or a result of rankkit.distributed.fixed_rank_fit(..., gather=False))")
        u = u[rows]
    if u.shape != (rows.size, d.size) or v.shape != (m, d.size):
        raise ValueError(f"warm_start shapes u {u.shape}, d {d.shape}, v {v.shape} do not fit this rank's "
                         f"{rows.size} rows of a {n}×{m} matrix: need u (n, j), d (j,), v (m, j)")
    o = np.argsort(-np.abs(d), kind="stable")
    u, d, v = u[:, o], d[o], v[:, o]
    if d.size >= k:
        A, B = u[:, :k] * d[:k], v[:, :k]
    else:
        pred = K.to_numpy(K.sampled(K.asarray(u * d), K.asarray(v))) if d.size else np.zeros(x.size)
        p = max(nnz, 1) / (n * m)
        Ur, sr, Vr = _top_svd(K, K.asarray((x - pred) / p), k - d.size, rng)
        A, B = np.hstack([u * d, Ur * (sr * p)]), np.hstack([v, Vr])
    U, s, V = svd_form(K.asarray(A), K.asarray(B), K.qr_rows, K.svd, K.qr)
    return K.to_numpy(U), K.to_numpy(s), K.to_numpy(V)


# ---- per-rank checkpoints ----------------------------------------------------------------------

class _RankSlots(RankSlots, _NpzCheckpoint):
    """The fixed-rank checkpoint (``rankkit.lowrank``'s format) in per-rank slots."""

    iter_key, what = "it", "fixed-rank"

    def __init__(self, base: Path, comm: Comm, fp, shape_local, k, max_iter):
        super().__init__(base, fp, shape_local, k, max_iter)
        self._init_slots(base, comm)

    def save(self, state: dict) -> None:
        atomic_npz(self._slot(), {**state, "fingerprint": self.fp})


# ---- public ------------------------------------------------------------------------------------

def fixed_rank_fit(R, rank: int, *, comm=None, label: int | str = 0, eps: float = 1e-12, rho: float = 1e-4,
                   method: str = "auto", max_iter: int = 500, init: str = "spectral", warm_start=None,
                   n_restarts: int = 0, window: int = 30, stall: float = 0.5, cg_iter: int = 50,
                   cg_tol: float = 1e-2, als_rate: float = 0.5, backend: str = "auto", device=None,
                   seed: int | np.random.Generator = 0, checkpoint: str | os.PathLike | None = None,
                   checkpoint_every: int = 10, progress: bool | None = None, callback=None,
                   gather: str | bool = "rank0") -> FixedRankResult:
    r"""Rank-``rank`` completion of P_Ω(X) to MSE ≤ ``eps`` on the ranks of a process group.

    Minimises ½‖P_Ω(M − X)‖²_F + ρ‖M‖_* over rank-k matrices (paper 002, objective (17)
    restricted to rank k; §3.1, Definition 1) exactly as :func:`rankkit.lowrank.fixed_rank_fit`
    — same solvers (``"auto"`` included), same stopping rule (MSE over Ω ≤ ε, the stall
    window, the unpenalised polish), same result type — with the rows of Ω and of U
    partitioned over the ranks (module docstring).

    Parameters
    ----------
    R : ShardedRewardMatrix, RewardMatrix or scipy.sparse
        A sharded matrix, or a whole matrix every rank holds (split here by
        :func:`~rankkit.distributed.shard_rows`).
    rank, label, eps, rho, method, max_iter, window, stall, cg_iter, cg_tol, als_rate, n_restarts
        As :func:`rankkit.lowrank.fixed_rank_fit`.
    comm : Comm, ProcessGroup or None
        :func:`rankkit.distributed.get_comm`.
    init : {"spectral", "random"}
        "random" is the one-process random start to rounding; "spectral" uses a randomized
        subspace iteration for the top-k SVD (module docstring).
    warm_start : LowRankFit or dict {"u", "d", "v"}, optional
        With the whole U (n rows), or a result of this function with ``gather=False``.
    backend, device
        "numpy" or "torch" for the local kernels; an NCCL rank computes on its own GPU.
    seed : int or numpy.random.Generator
        The same seed gives the same start on every rank.
    checkpoint : path, optional
        Base name of the per-rank checkpoints ``<checkpoint>.rank<r>of<P>.<slot>.npz``
        (two alternating slots, written atomically every ``checkpoint_every`` iterations and
        on a stopping ``callback``). A rerun with the same data, world size and settings
        resumes from the latest iteration every rank saved and ends with the bitwise
        identical result; the files are removed when the run finishes.
    progress : bool
        tqdm bar on rank 0.
    callback : callable(iter, info) -> bool, optional
        Called on every rank; the run stops when it returns True on any rank.
    gather : "rank0", "all" or False
        As :func:`rankkit.distributed.soft_impute`: the whole U on rank 0 (or every rank),
        or this rank's rows only (``meta["sharded"]``).

    Returns
    -------
    FixedRankResult
        As one process, with ``meta["distributed"]``: world size, rank, collectives and
        payload bytes of this rank per iteration, and :func:`fixed_rank_bytes`.
    """
    comm = get_comm(comm)
    S = R if isinstance(R, ShardedRewardMatrix) else shard_rows(R, comm)
    if S.world_size != comm.size:
        raise ValueError(f"R was sharded over {S.world_size} ranks but the group has {comm.size}; build it "
                         "under the same launch")
    L = S.local
    x = np.ascontiguousarray(L.label_values(label), dtype=np.float64)
    n, m = S.shape
    top = comm.allreduce_scalar(float(np.max(np.abs(x))) if x.size else 0.0, "value range", "max")
    if top * np.sqrt(max(S.nnz, 1)) > 1e150:  # rankkit.softimpute._check_scale over all ranks
        raise ValueError(f"observed values reach {top:.3g}: their squared errors overflow float64 "
                         f"over {S.nnz:,} cells; rescale the labels (e.g. divide by {top:.1g})")
    opts = _check_args(rank, (n, m), method=method, init=init, eps=eps, rho=rho, cg_tol=cg_tol,
                       max_iter=max_iter, n_restarts=n_restarts, window=window, cg_iter=cg_iter,
                       checkpoint_every=checkpoint_every, stall=stall, als_rate=als_rate)
    if gather not in ("rank0", "all", False):
        raise ValueError(f"gather must be 'rank0', 'all' or False, got {gather!r}")
    if device is None and comm.device != "cpu" and backend in ("auto", "torch"):
        device = comm.device  # an NCCL rank computes on its own GPU (cuda:LOCAL_RANK)
    backend, device = _fit_backend(backend, device)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    nnz, k, rows = int(S.nnz), int(rank), S.row_ids
    t0 = time.perf_counter()
    if k == 0 or nnz == 0:
        sse = comm.allreduce_scalar(float(x @ x), "fixed-rank squared error")
        res = _zero_result((n, m), k, sse, nnz, eps, rho, method, backend, U=np.zeros((rows.size, k)))
        res.meta["distributed"] = {"world_size": comm.size, "rank": comm.rank}
        return _gathered(res, S, comm, gather)
    data = (L.indptr, L.indices, x)
    K = ShardedLRKernels(make_lr_kernels(backend, device, L.indptr, L.indices, x, (rows.size, m)),
                         comm, k, n, rows.size, m)
    store = None
    if checkpoint is not None:
        fp = np.asarray(fingerprint("fixed-rank-sharded", [n, m, comm.rank, comm.size], rows, L.indptr,
                                    L.indices, x, k, _settings(k, rho, K.name, opts)))
        store = _RankSlots(Path(checkpoint), comm, fp, (rows.size, m), k, int(max_iter))

    def agree(stop: bool) -> bool:
        return comm.allreduce_scalar(float(stop), "fixed-rank callback stop", "max") > 0

    limit = threadpool_limits(1, user_api="blas") if K.name == "numpy" else contextlib.nullcontext()
    with limit:
        if warm_start is not None:
            start = _warm(K, warm_start, data, n, nnz, k, rows, rng)
        elif init == "spectral":
            start = _spectral_start(K, data, n, nnz, k, rows, rng)
        else:
            start = _random_start(K, data, n, k, rows, rng)
        opts["progress"] = show_progress(progress) and comm.rank == 0
        before = dict(K.stats)
        run, stop, restarts = _solve(K, k, float(rho), nnz, start, store, int(checkpoint_every),
                                     int(n_restarts), lambda: _random_start(K, data, n, k, rows, rng),
                                     callback=callback, agree=agree, **opts)
    res = _result(K, run, stop, restarts, (n, m), k, nnz, eps, rho, method, t0)
    done = max(res.n_iter, 1)
    res.meta["distributed"] = {
        "world_size": comm.size, "rank": comm.rank, **fixed_rank_bytes(m, k, comm.size),
        "payload_bytes_per_iteration": (K.stats["payload_bytes"] - before["payload_bytes"]) / done,
        "collectives_per_iteration": (K.stats["collectives"] - before["collectives"]) / done}
    return _gathered(res, S, comm, gather)
