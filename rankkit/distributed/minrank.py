r"""``estimate_min_rank`` across the ranks of a process group (issue 15).

The bracket is the one of :func:`rankkit.estimate_min_rank` (paper 002, Def. 1–2, Lemma 3,
App. C.3): the structural lower bound for ε = 0 and the smallest rank r whose fit on Ω₂ has
MSE ≤ ε, + 1 when a removed single-entry row is nonzero. What runs where:

- P_Ω(R) and Ω₂: sharded (:mod:`rankkit.distributed.build`);
- ``method="soft-impute"``: every fit is the sharded softImpute-ALS
  (:func:`rankkit.distributed.soft_impute`), each warm-started from the previous fit's shards,
  its MSE recomputed from the factors over all ranks; the rank search is the one-process
  search object (:class:`rankkit.minrank._SearchBase`: rank 0, then doubling, then bisection),
  so the ranks tried and the decisions are the same;
- ``method="auto"`` (fixed-rank certificates): the fixed-rank solver is not sharded yet: Ω₂
  is gathered to rank 0, which runs the one-process search, and the result is broadcast;
- the structural lower bound (``lower_bound=True``) and the exact fallback at the rank cap
  need the whole matrix: rank 0 computes them on the gathered P_Ω(R) / Ω₂, exactly as one
  process would. ``lower_bound="local"`` instead takes the largest bound of the shards
  (valid, since a shard's rows are rows of P_Ω(R), possibly weaker) and never gathers.

Rank 0 returns the estimate with its whole certificate; the other ranks return the same
estimate with ``certificate=None``.
"""

from __future__ import annotations

import time

import numpy as np

from .. import minrank as _mr
from ..bounds import rank_lower_bound
from ..exact import exact_completion
from ..matrix import RewardMatrix
from ..softimpute import SoftImputeResult
from ._comm import Comm, get_comm
from .build import ShardedRewardMatrix, build_reward_matrix, reduce_omega2, shard_rows
from .softimpute import observed_mse, soft_impute

__all__ = ["estimate_min_rank"]


def _global_rank_cap(S2: ShardedRewardMatrix, comm: Comm) -> int:
    """min(n₂, m₂, longest row, longest column) of the sharded Ω₂ (rankkit.exact.rank_cap)."""
    if S2.nnz == 0:
        return 0
    L = S2.local
    row_max = comm.allreduce_scalar(float(L.row_nnz.max()) if L.shape[0] else 0.0, "rank cap", "max")
    col = comm.allreduce(np.bincount(L.indices, minlength=S2.shape[1]).astype(np.int64), "rank cap")
    return int(min(S2.shape[0], S2.shape[1], row_max, int(col.max())))


class _ShardedSearch(_mr._Search):
    """The soft-impute rank search of :class:`rankkit.minrank._Search` on sharded fits: the
    same search and bookkeeping; the rank cap, the fits and their MSE reduce over the ranks."""

    def __init__(self, S2, label, comm, *, eps, lam, max_iter, thresh, backend, device, seed,
                 progress):
        self.comm = comm
        super().__init__(S2, label, eps=eps, lam=lam, max_iter=max_iter, thresh=thresh,
                         backend=backend, device=device, seed=seed, progress=progress,
                         checkpoint_dir=None, cap=_global_rank_cap(S2, comm))

    def _zero_mse(self) -> float:
        x = self.R2.local.label_values(self.label)
        ss = self.comm.allreduce_scalar(float(np.dot(x, x)), "zero-matrix MSE")
        return ss / self.R2.nnz if self.R2.nnz else 0.0

    def _observed_mse(self, fit) -> float:
        return observed_mse(self.R2, fit, self.label, self.comm)

    def _fit(self, k: int) -> SoftImputeResult:
        smaller = [q for q in self.fits if q < k]
        warm = self.fits[max(smaller)] if smaller else None
        res = soft_impute(self.R2, k, self.lam, comm=self.comm, warm_start=warm, gather=False,
                          **self.kw)
        res.meta["sharded"] = True
        return res


def _gather_fit(res: SoftImputeResult, S2: ShardedRewardMatrix, comm: Comm) -> SoftImputeResult | None:
    parts = comm.gather_object((S2.row_ids, res.U), 0, "gather of the certificate")
    if comm.rank != 0:
        return None
    U = np.empty((S2.shape[0], res.U.shape[1]))
    for ids, u in parts:
        U[ids] = u
    meta = {k: v for k, v in res.meta.items() if k != "sharded"}
    return SoftImputeResult(U=U, d=res.d, V=res.V, mse=res.mse, sse=res.sse, objective=res.objective,
                            ratio=res.ratio, n_iter=res.n_iter, converged=res.converged, lam=res.lam,
                            rank=res.rank, shape=res.shape, nnz=res.nnz, thresh=res.thresh,
                            backend=res.backend, meta=meta)


def estimate_min_rank(source, eps: float = 1e-6, *, comm=None, method: str = "auto", label: int | str = 0,
                      ranks="auto", lam: float = 1e-4, max_iter: int | None = None, thresh: float = 1e-5,
                      backend: str = "auto", device=None, seed: int = 0, progress: bool = True,
                      max_len: int | None = None, lower_bound: bool | str = True, exact_fallback: bool = True,
                      route_len="auto", text=None, labels=None, tokenizer="gpt2", split: str | None = None,
                      limit: int | None = None, **auto_kw) -> _mr.MinRankEstimate:
    r"""Bound the minimal rank of P_Ω(R) from both sides on a process group.

    The same call as :func:`rankkit.estimate_min_rank` (same parameters, same bracket) under
    ``torchrun``; see the module docstring for which stages are sharded. ``source`` is
    anything the one-process function takes (each rank reads and tokenizes its slice of a
    text source) or a :class:`~rankkit.distributed.ShardedRewardMatrix`.

    Parameters
    ----------
    comm : Comm, ProcessGroup or None
        :func:`rankkit.distributed.get_comm`.
    lower_bound : True, False or "local"
        True: the one-process structural bound, computed on rank 0 from the gathered
        P_Ω(R); "local": the largest bound of the shards (no gather); False: 1 if any value
        is nonzero.
    route_len : "auto" or int
        Routing of the sharded build (:func:`rankkit.distributed.build_reward_matrix`).
    limit : int, optional
        Use the first ``limit`` texts of a text source (as :func:`rankkit.datasets.load`).
    **auto_kw
        ``solver``, ``n_restarts``, ``solver_options``, ``max_abs`` of the fixed-rank search
        (``method="auto"``).

    Returns
    -------
    MinRankEstimate
        On rank 0 with the whole certificate; on the other ranks ``certificate`` is None.
    """
    t0 = time.perf_counter()
    comm = get_comm(comm)
    if method not in _mr.METHODS:
        raise ValueError(f"method must be one of {_mr.METHODS} ('auto': fixed-rank certificates, "
                         f"'soft-impute': the paper's App. C.3 methodology), got {method!r}")
    if lower_bound not in (True, False, "local"):
        raise ValueError(f"lower_bound must be True, False or 'local', got {lower_bound!r}")
    unknown = sorted(set(auto_kw) - {"solver", "n_restarts", "solver_options", "max_abs"})
    if unknown:
        raise TypeError(f"estimate_min_rank got unexpected keyword arguments {unknown}")
    if isinstance(source, ShardedRewardMatrix):
        S = source
    elif isinstance(source, RewardMatrix) or hasattr(source, "tocsr"):
        S = shard_rows(source, comm)
    else:
        S = build_reward_matrix(source, comm=comm, max_len=max_len, route_len=route_len, tokenizer=tokenizer,
                                text=text, labels=labels, split=split, limit=limit)
    j = S.label_index(label)
    progress = progress and comm.rank == 0
    whole = S.gather(comm) if (lower_bound is True or method == "auto") else None
    if method == "auto":
        # the fixed-rank solver is not sharded: rank 0 runs the one-process search on the whole
        # matrix, the others wait for its estimate
        est = None
        if comm.rank == 0:
            est = _mr.estimate_min_rank(whole, eps, method="auto", label=j, ranks=ranks, lam=lam,
                                        max_iter=max_iter, backend=backend, device=device, seed=seed,
                                        progress=progress, lower_bound=bool(lower_bound),
                                        exact_fallback=exact_fallback, **auto_kw)
        return _share(est, comm, t0)
    if auto_kw:
        raise ValueError(f"{sorted(auto_kw)} apply to method='auto' (fixed-rank certificates) only")
    for name, v in (("eps", eps), ("lam", lam)):
        if not (isinstance(v, int | float) and np.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    max_iter = 1000 if max_iter is None else max_iter
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    ranks = _mr._check_ranks(ranks)
    S2 = reduce_omega2(S, comm)
    # Lemma 3's single-entry rows and the values seen in them, over all ranks
    L = S.local
    vals = L.label_values(j)
    single = L.row_nnz == 1
    n_single = int(comm.allreduce_scalar(float(single.sum()), "single rows"))
    single_nonzero = comm.allreduce_scalar(float(np.any(vals[np.repeat(single, L.row_nnz)] != 0)),
                                           "single rows", "max") > 0
    bounds = None
    if lower_bound is True:
        bounds = comm.broadcast_object(rank_lower_bound(whole, label=j) if comm.rank == 0 else None,
                                       what="lower bound")
        lower = bounds.lower
    elif lower_bound == "local":
        mine = rank_lower_bound(L, label=j).lower if L.nnz else 0
        lower = int(comm.allreduce_scalar(float(mine), "lower bound", "max"))
    else:
        lower = int(comm.allreduce_scalar(float(np.any(vals != 0)), "lower bound", "max"))
    search = _ShardedSearch(S2, j, comm, eps=float(eps), lam=float(lam), max_iter=int(max_iter),
                            thresh=float(thresh), backend=backend, device=device, seed=seed, progress=progress)
    try:
        if ranks == "auto":
            search.auto()
        else:
            for r in ranks:
                search.evaluate(r)
    finally:
        search.close()
    r_cert, at, cert = search.best()
    source_name = "zero" if (r_cert == 0 and cert is None) else "soft-impute"
    cert = None if cert is None else _gather_fit(cert, S2, comm)
    exact_mse = None
    if exact_fallback and search.cap > 0 and (r_cert is None or r_cert > search.cap):
        whole2 = S2.gather(comm)
        got = None
        if comm.rank == 0:
            exact = exact_completion(whole2, search.cap, seed=seed, label=j)
            got = (float(exact.mse), int(np.count_nonzero(exact.d)))
        exact_mse, eff = comm.broadcast_object(got, what="exact completion")
        if exact_mse <= eps and (r_cert is None or eff < r_cert):
            r_cert, at, source_name = eff, None, "exact-completion"
            cert = exact if comm.rank == 0 else None
    if r_cert is None:
        tried = max(search.mse)
        upper = None
        message = (f"no rank tried reaches MSE ≤ ε = {eps:g} on Ω₂ (largest tried: rank {tried}, MSE "
                   f"{search.mse[tried]:.3g}); try larger ranks, a smaller thresh (the fit may stop on "
                   "thresh before reaching ε), more max_iter or a smaller lam")
        if exact_mse is not None:
            message += f"; the exact completion at the cap (rank {search.cap}) has MSE {exact_mse:.3g}"
    else:
        upper = r_cert + int(single_nonzero)
        message = ""
    scale = None
    if comm.rank == 0 and cert is not None:
        scale = cert.meta.get("scale") or _mr.certificate_scale(cert.U, cert.d, cert.V)
    est = _mr.MinRankEstimate(
        eps=float(eps), lam=float(lam), label=label, lower=int(lower), upper=upper, rank_certified=r_cert,
        certified_at=at, mse_by_rank=dict(sorted(search.mse.items())),
        converged_by_rank=dict(sorted(search.converged.items())), certificate=cert if comm.rank == 0 else None,
        omega_shape=S.shape, omega_nnz=S.nnz, omega2_shape=S2.shape, omega2_nnz=S2.nnz, n_single_rows=n_single,
        single_rows_nonzero=bool(single_nonzero), bounds=bounds, ranks=ranks, max_iter=int(max_iter),
        thresh=float(thresh), elapsed=time.perf_counter() - t0, message=message,
        meta={"backend": backend, "seed": seed, "rank_cap": search.cap, "world_size": comm.size,
              "route_len": S.route_len},
        certificate_source=source_name, exact_mse=exact_mse, method=method, trials=search.trials,
        scale=comm.broadcast_object(scale, what="certificate scale"), max_abs=None)
    return est


def _share(est, comm: Comm, t0: float):
    """Rank 0's estimate on every rank (without the certificate on the others)."""
    if comm.size == 1:
        return est
    light = None
    if comm.rank == 0:
        import dataclasses

        light = dataclasses.replace(est, certificate=None)
    got = comm.broadcast_object(light, what="estimate")
    if comm.rank == 0:
        est.meta["world_size"] = comm.size
        return est
    got.meta["world_size"] = comm.size
    return got
