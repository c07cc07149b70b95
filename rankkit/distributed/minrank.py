r"""``estimate_min_rank`` across the ranks of a process group (issue 15).

The bracket is the one of :func:`rankkit.estimate_min_rank` (paper 002, Def. 1–2, Lemma 3,
App. C.3): the structural lower bound for ε = 0 and the smallest rank r whose fit on Ω₂ has
MSE ≤ ε, + 1 when a removed single-entry row is nonzero. The argument checks, the rank
searches and the assembly of the result are the one-process function's own
(:func:`rankkit.minrank._estimate._check_args`, its search classes with their reduction hooks,
:func:`rankkit.minrank._estimate._assemble`); only the data access differs. What runs where:

- P_Ω(R) and Ω₂: sharded (:mod:`rankkit.distributed.build`);
- ``method="auto"`` (fixed-rank certificates): every fit is the sharded certificate solver
  (:func:`rankkit.distributed.fixed_rank_fit`); warm starts are this rank's rows of the
  certified fit above; the verified MSE and the certificate's scale (max :math:`|entry|` of the
  completed Ω₂ matrix, exact over all rows × columns when n₂ m₂ ≤ 2²⁸) reduce over the
  ranks. Ω₂ is not gathered for it;
- ``method="soft-impute"``: every fit is the sharded softImpute-ALS
  (:func:`rankkit.distributed.soft_impute`), warm-started in the same way;
- gathers remain only where an exact computation needs the whole matrix: the structural
  lower bound (``lower_bound=True``: rank 0 computes it on the gathered P_Ω(R), as one
  process would; ``lower_bound="local"`` takes the largest bound of the shards instead —
  valid, since a shard's rows are rows of P_Ω(R), possibly weaker — and never gathers), the
  constructive exact completion at the rank cap when no fit reaches ε (on Ω₂ gathered to
  rank 0), and the final certificate's U (to rank 0, once, at the end);
- ``checkpoint_dir``: every rank keeps its own subdirectory ``rank<r>of<P>`` (the finished
  fits of its rows, the per-rank solver checkpoints of an interrupted fit); a finished fit is
  loaded only when every rank holds it, so a rerun after a killed rank resumes consistently.

Rank 0 returns the estimate with its whole certificate; the other ranks the same estimate
with ``certificate=None``. The spectral starts of the sharded fixed-rank fits come from a
randomized subspace iteration (:mod:`rankkit.distributed.lowrank`), so the fits are not the
one-process fits bit for bit; the ranks tried and the bracket are the same wherever each rank
passes or fails clearly.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from .._io import fingerprint
from .._progress import show_progress
from ..bounds import eps_rank_lower_bound, rank_lower_bound
from ..exact import exact_completion, rank_cap
from ..matrix import RewardMatrix
from ..minrank._estimate import (
    _assemble,
    _check_args,
    _divide_label,
    _exact_upper,
    _label_scale,
    _solver_options,
)
from ..minrank._result import MinRankEstimate
from ..minrank._scale import _EXACT_SCALE_CELLS, certificate_scale
from ..minrank._search import (
    _CertSearch,
    _new_search,
    _run_search,
    _Search,
    _search_meta,
    _zero_misses,
)
from ..omega import reduce_omega2 as one_process_reduce
from ..softimpute import SoftImputeResult
from ._comm import Comm, get_comm
from .build import ShardedRewardMatrix, build_reward_matrix, reduce_omega2, shard_rows
from .lowrank import fixed_rank_fit
from .softimpute import observed_mse, soft_impute

__all__ = ["estimate_min_rank", "sharded_scale"]


def _global_rank_cap(S2: ShardedRewardMatrix, comm: Comm) -> int:
    """min(n₂, m₂, longest row, longest column) of the sharded Ω₂ (rankkit.exact.rank_cap)."""
    if S2.nnz == 0:
        return 0
    L = S2.local
    row_max = comm.allreduce_scalar(float(L.row_nnz.max()) if L.shape[0] else 0.0, "rank cap", "max")
    col = comm.allreduce(np.bincount(L.indices, minlength=S2.shape[1]).astype(np.int64), "rank cap")
    return int(min(S2.shape[0], S2.shape[1], row_max, int(col.max())))


class _ShardedFits:
    """What the sharded searches change in the one-process ones: the zero matrix's MSE and
    the verified MSE reduce over the ranks, and a saved fit is loaded only when every rank
    holds its part."""

    def _zero_mse(self) -> float:
        x = self.R2.local.label_values(self.label)
        ss = self.comm.allreduce_scalar(float(np.dot(x, x)), "zero-matrix MSE")
        return ss / self.R2.nnz if self.R2.nnz else 0.0

    def _observed_mse(self, fit) -> float:
        return observed_mse(self.R2, fit, self.label, self.comm)

    def _finished(self, path) -> bool:
        mine = path is not None and path.exists()
        return self.comm.allreduce_scalar(float(mine), "saved fits", "min") > 0

    def _save(self, res, path) -> None:
        # this rank's rows: saved with the local shape (SoftImputeResult.load checks U against it)
        local = dataclasses.replace(res, shape=(res.U.shape[0], res.shape[1]),
                                    meta={**res.meta, "whole_shape": list(res.shape)})
        local.save(path)

    def _load(self, path):
        res = SoftImputeResult.load(path)
        res.shape = tuple(res.meta.pop("whole_shape", res.shape))
        res.meta["sharded"] = True
        return res


def _search_kw(S2: ShardedRewardMatrix, comm: Comm, checkpoint_dir) -> dict:
    """The rank cap, this rank's checkpoint subdirectory and what its fingerprint covers."""
    kw = dict(cap=_global_rank_cap(S2, comm), checkpoint_dir=None)
    if checkpoint_dir is not None:
        kw.update(checkpoint_dir=Path(checkpoint_dir) / f"rank{comm.rank}of{comm.size}", fp_matrix=S2.local,
                  fp_extra={"rank": comm.rank, "world_size": comm.size, "whole_shape": list(S2.shape),
                            "rows": fingerprint(S2.row_ids)})
    return kw


class _ShardedSearch(_ShardedFits, _Search):
    """The soft-impute rank search of :class:`rankkit.minrank._search._Search` on sharded fits."""

    def __init__(self, S2, label, comm, *, checkpoint_dir, **kw):
        self.comm = comm
        super().__init__(S2, label, **kw, **_search_kw(S2, comm, checkpoint_dir))

    def _soft_impute(self, k, **kw):
        res = soft_impute(self.R2, k, self.lam, comm=self.comm, gather=False, **kw)
        res.meta["sharded"] = True
        return res


class _ShardedCertSearch(_ShardedFits, _CertSearch):
    """The fixed-rank certificate search of :class:`rankkit.minrank._search._CertSearch` on the
    sharded certificate solver."""

    _threads_ok = False  # every process of the group must run the same fits in the same order

    def __init__(self, S2, label, comm, *, checkpoint_dir, **kw):
        self.comm = comm
        super().__init__(S2, label, **kw, **_search_kw(S2, comm, checkpoint_dir))

    def _fixed_rank(self, k, **kw):
        res = fixed_rank_fit(self.R2, k, comm=self.comm, gather=False, **kw)
        res.meta["sharded"] = True
        return res

    def _scale(self, fit) -> dict:
        return sharded_scale(self.R2, fit, self.comm)


def sharded_scale(S2: ShardedRewardMatrix, fit: SoftImputeResult, comm=None) -> dict:
    """:func:`rankkit.minrank.certificate_scale` of a fit on a sharded matrix, from this
    rank's rows of U: the same numbers (max :math:`|entry|` exact over all rows × columns when
    n m ≤ 2²⁸, else the bound from the factor row norms), the maxima reduced over ranks."""
    comm = get_comm(comm)
    n, m = S2.shape
    U = fit.U if fit.meta.get("sharded", False) else fit.U[S2.row_ids]
    exact = n * m <= _EXACT_SCALE_CELLS
    out = certificate_scale(U, fit.d, fit.V, exact_cells=np.inf if exact else -1)
    if exact:
        top = comm.allreduce_scalar(out["max_abs"], "certificate scale", "max")
    else:
        Ud = U * np.asarray(fit.d)
        rows = float(np.sqrt((Ud * Ud).sum(1)).max()) if U.shape[0] else 0.0
        top = comm.allreduce_scalar(rows, "certificate scale", "max") * \
            float(np.sqrt((np.asarray(fit.V) ** 2).sum(1)).max())
    return {**out, "rms": out["frobenius"] / float(np.sqrt(max(n * m, 1))), "max_abs": top,
            "max_abs_exact": bool(exact)}


def _gather_fit(res: SoftImputeResult, S2: ShardedRewardMatrix, comm: Comm) -> SoftImputeResult | None:
    parts = comm.gather_object((S2.row_ids, res.U), 0, "gather of the certificate")
    if comm.rank != 0:
        return None
    U = np.empty((S2.shape[0], res.U.shape[1]))
    for ids, u in parts:
        U[ids] = u
    meta = {k: v for k, v in res.meta.items() if k != "sharded"}
    return type(res)(U=U, d=res.d, V=res.V, mse=res.mse, sse=res.sse, objective=res.objective,
                            ratio=res.ratio, n_iter=res.n_iter, converged=res.converged, lam=res.lam,
                            rank=res.rank, shape=res.shape, nnz=res.nnz, thresh=res.thresh,
                            backend=res.backend, meta=meta)


def estimate_min_rank(source, eps: float = 1e-6, *, comm=None, method: str = "auto", label: int | str = 0,
                      ranks="auto", lam: float = 1e-4, max_iter: int | None = None, thresh: float = 1e-5,
                      solver: str = "auto", n_restarts: int = 1, extra_starts: int = 1,
                      solver_options: dict | None = None,
                      max_abs: float | None = None, backend: str = "auto", device=None, seed: int = 0,
                      progress: bool | None = None, max_len: int | None = None,
                      checkpoint_dir: str | os.PathLike | None = None, lower_bound: bool | str = True,
                      exact_fallback: bool = True, normalize: bool = False, route_len="auto", text=None,
                      labels=None, tokenizer="gpt2",
                      split: str | None = None, limit: int | None = None) -> MinRankEstimate:
    r"""Bound the minimal rank of P_Ω(R) from both sides on a process group.

    The same call as :func:`rankkit.estimate_min_rank` (same parameters, same bracket) under
    ``torchrun``; see the module docstring for which stages are sharded. ``source`` is
    anything the one-process function takes (each rank reads and tokenizes its slice of a
    text source) or a :class:`~rankkit.distributed.ShardedRewardMatrix`.

    Parameters
    ----------
    comm : Comm, ProcessGroup or None
        :func:`rankkit.distributed.get_comm`.
    checkpoint_dir : path, optional
        As one process, with one subdirectory ``rank<r>of<P>`` per rank (module docstring);
        a rerun with the same data, world size and settings loads the fits every rank
        finished and resumes an interrupted fit from its per-rank checkpoints.
    lower_bound : True, False or "local"
        True: the one-process structural bound, computed on rank 0 from the gathered
        P_Ω(R); "local": the largest bound of the shards (no gather); False: 1 if any value
        is nonzero.
    route_len : "auto" or int
        Routing of the sharded build (:func:`rankkit.distributed.build_reward_matrix`).
    limit : int, optional
        Use the first ``limit`` texts of a text source (as :func:`rankkit.datasets.load`).
    eps, method, label, ranks, lam, max_iter, thresh, solver, n_restarts, solver_options, max_abs
        As :func:`rankkit.estimate_min_rank`.
    backend, device, seed, progress, max_len, exact_fallback, normalize, text, labels, tokenizer, split
        As :func:`rankkit.estimate_min_rank` (progress on rank 0; the label range is reduced
        over all ranks).

    Returns
    -------
    MinRankEstimate
        On rank 0 with the whole certificate; on the other ranks ``certificate`` is None.
    """
    t0 = time.perf_counter()
    comm = get_comm(comm)
    max_iter, ranks = _check_args(method, eps=eps, lam=lam, max_abs=max_abs, max_iter=max_iter,
                                      n_restarts=n_restarts, ranks=ranks, extra_starts=extra_starts)
    if lower_bound not in (True, False, "local"):
        raise ValueError(f"lower_bound must be True, False or 'local', got {lower_bound!r}")
    options = _solver_options(solver_options)
    if isinstance(source, ShardedRewardMatrix):
        S = source
    elif isinstance(source, RewardMatrix) or hasattr(source, "tocsr"):
        S = shard_rows(source, comm)
    else:
        S = build_reward_matrix(source, comm=comm, max_len=max_len, route_len=route_len, tokenizer=tokenizer,
                                text=text, labels=labels, split=split, limit=limit)
    j = S.label_index(label)
    raw = S.local.label_values(j)
    lo = -comm.allreduce_scalar(-float(raw.min()) if raw.size else -np.inf, "label range", "max")
    hi = comm.allreduce_scalar(float(raw.max()) if raw.size else -np.inf, "label range", "max")
    label_range = (lo, hi) if np.isfinite(lo) else (0.0, 0.0)
    label_scale = _label_scale(*label_range, normalize, label)
    if label_scale != 1.0:
        S = dataclasses.replace(S, local=_divide_label(S.local, j, label_scale))
    progress = show_progress(progress) and comm.rank == 0
    S2 = reduce_omega2(S, comm)
    # Lemma 3's single-entry rows and the values seen in them, over all ranks
    L = S.local
    vals = L.label_values(j)
    single = L.row_nnz == 1
    n_single = int(comm.allreduce_scalar(float(single.sum()), "single rows"))
    single_nonzero = comm.allreduce_scalar(float(np.any(vals[np.repeat(single, L.row_nnz)] != 0)),
                                           "single rows", "max") > 0
    bounds, eps_bounds, whole = None, None, None
    any_nonzero = comm.allreduce_scalar(float(np.any(vals != 0)), "any nonzero", "max") > 0
    if lower_bound is True:
        whole = S.gather(comm)  # the exact structural bound needs the whole pattern
        got = None
        if comm.rank == 0:
            R2w = one_process_reduce(whole)
            got = (rank_lower_bound(whole, label=j), eps_rank_lower_bound(R2w, float(eps), label=j),
                   rank_cap(whole))
        bounds, eps_bounds, cap_omega = comm.broadcast_object(got, what="lower bounds")
        lower, eps_lower = bounds.lower, eps_bounds.lower
    else:
        if lower_bound == "local":
            mine = rank_lower_bound(L, label=j).lower if L.nnz else 0
            lower = int(comm.allreduce_scalar(float(mine), "lower bound", "max"))
        else:
            lower = int(any_nonzero)
        x = S2.local.label_values(j)
        ss = comm.allreduce_scalar(float(np.dot(x, x)), "zero-matrix MSE")
        eps_lower = _zero_misses(ss, S2.nnz, eps)
        cap_omega = None

    search = _new_search(method, _ShardedSearch, _ShardedCertSearch, S2, j, comm, eps=eps, lam=lam,
                         thresh=thresh, solver=solver, n_restarts=n_restarts, extra_starts=extra_starts,
                         max_abs=max_abs, options=options, max_iter=max_iter, backend=backend, device=device,
                         seed=seed, progress=progress, checkpoint_dir=checkpoint_dir)
    _run_search(search, ranks, method, eps_lower)
    exact_upper = _exact_upper(search.cap + 1 if cap_omega is None else cap_omega, search.cap,
                                   bool(single_nonzero), bool(any_nonzero))

    def exact(cap):
        whole2 = S2.gather(comm)  # the constructive completion needs all of Ω₂: on rank 0
        ex, got = None, None
        if comm.rank == 0:
            ex = exact_completion(whole2, cap, seed=seed, label=j)
            if max_abs is not None:
                ex.meta["scale"] = certificate_scale(ex.U, ex.d, ex.V)
            got = (float(ex.mse), int(np.count_nonzero(ex.d)),
                   None if max_abs is None else ex.meta["scale"]["max_abs"])
        return (ex, *comm.broadcast_object(got, what="exact completion"))

    def finish(cert, source_name):
        if cert is None and source_name != "exact-completion":
            return None, None
        if source_name != "exact-completion":
            scale = cert.meta.get("scale")
            cert = _gather_fit(cert, S2, comm)
        else:
            scale = None  # only rank 0 holds the completion
        if scale is None:
            got = None
            if comm.rank == 0:
                got = cert.meta.get("scale") or certificate_scale(cert.U, cert.d, cert.V)
            scale = comm.broadcast_object(got, what="certificate scale")
        return (cert if comm.rank == 0 else None), scale

    def extend(cert):
        # the single-entry rows live on their shards: appended on rank 0, which holds the
        # gathered P_Ω(R) (only with lower_bound=True; otherwise Lemma 3's + 1 stays)
        got = None
        if comm.rank == 0 and cert is not None:
            from ..omega import extend_certificate

            got = extend_certificate(whole, cert.U, cert.d, cert.V, label=j, budget=float(eps) * S2.nnz,
                                     max_abs=max_abs)
        return comm.broadcast_object(got, what="Ω extension")

    return _assemble(
        search, method=method, eps=eps, lam=lam, label=label, bounds=bounds,
        brackets=dict(exact_lower=lower, exact_upper=exact_upper, eps_lower=eps_lower, eps_bounds=eps_bounds),
        extend=extend if lower_bound is True else None, n_single=n_single,
        single_nonzero=single_nonzero, shapes=(S.shape, S.nnz, S2.shape, S2.nnz), ranks=ranks, max_iter=max_iter,
        thresh=thresh, t0=t0, max_abs=max_abs, exact=exact if exact_fallback else None, finish=finish,
        label_range=label_range, label_scale=label_scale,
        meta={**_search_meta(method, backend=backend, seed=seed, cap=search.cap, solver=solver,
                             n_restarts=n_restarts, extra_starts=extra_starts),
              "world_size": comm.size, "route_len": S.route_len})
