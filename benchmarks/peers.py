"""Peer implementations of soft-impute, for benchmarks/bench_softimpute.py only.

* :func:`numpy_als` — a straightforward NumPy/SciPy transcription of the same algorithm
  (R's ``Ssimpute.als``): residuals on Ω by fancy indexing (``(AD[rows] * V[cols]).sum(1)``,
  an nnz×k temporary), a new ``scipy.sparse`` matrix per half-step and ``np.linalg.svd``.
  This is what one writes without a fused kernel.
* :func:`fancyimpute_soft_impute` — ``fancyimpute.SoftImpute`` (Mazumder et al. 2010,
  soft-thresholded SVD on the dense filled matrix; NaN marks a missing cell). It needs the
  dense n×m matrix, so it only runs where that fits in memory.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp


def numpy_als(X: sp.csr_matrix, rank: int, lam: float, n_iter: int,
              seed: int = 0) -> tuple[list[float], list[float]]:
    """Run ``n_iter`` softImpute-ALS iterations; returns (wall, CPU) seconds per iteration."""
    X = X.tocsr()
    n, m = X.shape
    rows = np.repeat(np.arange(n), np.diff(X.indptr))
    cols = X.indices
    x = X.data
    rng = np.random.default_rng(seed)
    U = np.linalg.svd(rng.standard_normal((n, rank)), full_matrices=False)[0]
    V = np.zeros((m, rank))
    Dsq = np.ones(rank)
    times, cpu = [], []
    for _ in range(n_iter):
        t0, c0 = time.perf_counter(), time.process_time()
        BD = V * Dsq
        res = x - (U[rows] * BD[cols]).sum(1)
        xres = sp.csr_matrix((res, X.indices, X.indptr), shape=X.shape)
        B = (xres.T @ U + BD) * (Dsq / (Dsq + lam))
        V, Dsq, Wt = np.linalg.svd(B, full_matrices=False)
        U = U @ Wt.T
        AD = U * Dsq
        res = x - (AD[rows] * V[cols]).sum(1)
        xres = sp.csr_matrix((res, X.indices, X.indptr), shape=X.shape)
        A = (xres @ V + AD) * (Dsq / (Dsq + lam))
        U, Dsq, Wt = np.linalg.svd(A, full_matrices=False)
        V = V @ Wt.T
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu


def _patch_fancyimpute_check_array():
    """fancyimpute 0.7.0 calls ``check_array(force_all_finite=...)``, a keyword scikit-learn
    1.8 removed (renamed ``ensure_all_finite``); translate it so the peer can run."""
    import fancyimpute.soft_impute as soft_impute_mod
    import fancyimpute.solver as solver
    from sklearn.utils import check_array

    def compat(X, *args, force_all_finite=True, **kw):
        return check_array(X, *args, ensure_all_finite=force_all_finite, **kw)

    solver.check_array = compat
    soft_impute_mod.check_array = compat


def fancyimpute_soft_impute(X: sp.csr_matrix, rank: int, lam: float,
                            n_iter: int) -> tuple[list[float], list[float]]:
    """Run ``fancyimpute.SoftImpute`` for ``n_iter`` iterations; returns per-iteration
    (wall, CPU) seconds as total / n_iter (fancyimpute exposes no per-iteration hook)."""
    from fancyimpute import SoftImpute

    _patch_fancyimpute_check_array()
    dense = np.full(X.shape, np.nan)
    coo = X.tocoo()
    dense[coo.row, coo.col] = coo.data
    model = SoftImpute(shrinkage_value=lam, convergence_threshold=0.0, max_iters=n_iter, max_rank=rank,
                       init_fill_method="zero", verbose=False)
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit_transform(dense)
    per, per_cpu = (time.perf_counter() - t0) / n_iter, (time.process_time() - c0) / n_iter
    return [per] * n_iter, [per_cpu] * n_iter
