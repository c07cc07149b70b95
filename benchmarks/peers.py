"""Peer implementations of soft-impute, for benchmarks/bench_softimpute.py only.

* :func:`numpy_als` — a straightforward NumPy/SciPy transcription of the same algorithm
  (R's ``Ssimpute.als``): residuals on Ω by fancy indexing (``(AD[rows] * V[cols]).sum(1)``,
  an nnz×k temporary), a new ``scipy.sparse`` matrix per half-step and ``np.linalg.svd``.
  This is what one writes without a fused kernel.
* :func:`fancyimpute_soft_impute` — ``fancyimpute.SoftImpute`` (Mazumder et al. 2010,
  soft-thresholded SVD on the dense filled matrix; NaN marks a missing cell). It needs the
  dense n×m matrix, so it only runs where that fits in memory.
* :func:`spark_als` — Spark MLlib's explicit ALS (``pyspark.ml.recommendation.ALS``, the
  block-partitioned ALS of Spark's distributed engine) for benchmarks/bench_distributed.py.
  It minimises Σ_Ω (x − uᵀv)² + λ (Σ_u n_u ‖u‖² + Σ_v n_v ‖v‖²) (ALS-WR: λ scaled by each
  row's and column's count), not soft-impute's objective: only time and memory compare.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from rankkit._io import atomic_write  # noqa: E402


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


# ---- fixed-rank certificate peer (benchmarks/bench_certificate.py) -------------------------

def pymanopt_fixed_rank(S: sp.spmatrix, rank: int, eps: float = 1e-6, max_time: float = 60.0,
                        max_iter: int = 1_000_000, seed: int = 0, fast_transport: bool = True,
                        initial_point: tuple | None = None) -> dict:
    r"""Riemannian conjugate gradient of pymanopt 2.2.1 on the rank-``rank`` matrices.

    Minimises f(X) = ½‖P_Ω(X − A)‖²_F over ``pymanopt.manifolds.FixedRankEmbedded(n, m, k)``
    with ``pymanopt.optimizers.ConjugateGradient`` at its defaults (Hestenes–Stiefel β,
    adaptive line search, min gradient norm 1e-6, min step 1e-10), from a seeded random
    point drawn like ``FixedRankEmbedded.random_point`` (orthonormal U, V from QR of
    Gaussians, s sorted uniform on [0, 1]), or from ``initial_point`` = (U, s, V) (orthonormal
    U (n × k), V (m × k): the start a comparison gives both solvers). ``max_time=None`` sets no
    time limit (CG's own criteria, ``max_iter`` or the target end the run). Stops as soon as the MSE over Ω is ≤ ``eps``
    (checked at every iterate, where CG checks its own criteria), or at ``max_time`` seconds,
    ``max_iter`` iterations or one of CG's own criteria.

    pymanopt 2.2.1's ``FixedRankEmbedded.euclidean_to_riemannian_gradient`` takes the
    Euclidean gradient with respect to the *factors* (u, s, vt) of the point, not an n×m
    array. With the sparse residual G = P_Ω(X − A) (values on Ω only) these are
    ∂f/∂u = (G vtᵀ) diag(s), ∂f/∂s = diag(uᵀ G vtᵀ), ∂f/∂vt = diag(s) uᵀ G: two sparse
    products, O(|Ω| k + (n + m) k), nothing dense. The residual of the last point is cached
    so the cost and the gradient at the same iterate share it (CG evaluates both there).

    ``fast_transport`` (default True) evaluates the manifold's vector transport
    (projection of a low-rank ambient ``(U, S, V)`` onto a tangent space) as
    U (S (Vᵀ Z)) instead of pymanopt's left-to-right ((U S) Vᵀ) Z, which forms a dense
    n×m matrix. Same arithmetic result up to rounding; the peer is not handicapped by an
    association order. False runs the manifold exactly as shipped.

    Returns
    -------
    dict with ``mse`` (over Ω at the returned point), ``seconds`` (wall, optimiser only),
    ``max_abs`` (largest |entry| of the dense n×m completion), ``n_iter``, ``reached``
    (mse ≤ eps), ``stop`` (pymanopt's or our reason) and ``rank``.
    """
    from pymanopt import Problem, function
    from pymanopt.manifolds import FixedRankEmbedded
    from pymanopt.manifolds.fixed_rank import _FixedRankPoint
    from pymanopt.optimizers import ConjugateGradient

    S = sp.csr_matrix(S)
    S.sum_duplicates()
    n, m = S.shape
    k = int(rank)
    rows = np.repeat(np.arange(n), np.diff(S.indptr))
    cols = S.indices
    a = S.data.astype(np.float64)
    nnz = a.size
    target = 0.5 * eps * nnz  # f = ½ SSE ≤ ½ ε |Ω|  ⇔  MSE ≤ ε

    class _Manifold(FixedRankEmbedded):
        def _apply_ambient(self, vector, matrix):
            if isinstance(vector, (list, tuple)):
                return vector[0] @ (vector[1] @ (vector[2].T @ matrix))
            return vector @ matrix

        def _apply_ambient_transpose(self, vector, matrix):
            if isinstance(vector, (list, tuple)):
                return vector[2] @ (vector[1] @ (vector[0].T @ matrix))
            return vector.T @ matrix

    manifold = (_Manifold if fast_transport else FixedRankEmbedded)(n, m, k)

    cache: dict = {}

    def residual(u, s, vt):
        key = (id(u), id(s), id(vt))
        if cache.get("key") != key:
            pred = np.einsum("ij,ij->i", u[rows] * s, vt.T[cols])
            cache.update(key=key, keep=(u, s, vt), res=pred - a)
        return cache["res"]

    @function.numpy(manifold)
    def cost(u, s, vt):
        r = residual(u, s, vt)
        return 0.5 * float(r @ r)

    @function.numpy(manifold)
    def euclidean_gradient(u, s, vt):
        G = sp.csr_matrix((residual(u, s, vt), S.indices, S.indptr), shape=(n, m))
        GV = G @ vt.T                     # n × k
        GtU = G.T @ u                     # m × k
        return GV * s, np.einsum("ij,ij->j", u, GV), (GtU * s).T

    class _CG(ConjugateGradient):
        """pymanopt's CG plus one stopping rule: MSE over Ω ≤ ε at the current iterate."""
        def _add_log_entry(self, *, iteration, point, cost, **kw):
            self._last_cost = cost
            super()._add_log_entry(iteration=iteration, point=point, cost=cost, **kw)

        def _check_stopping_criterion(self, **kw):
            if getattr(self, "_last_cost", np.inf) <= target:
                return f"Terminated - MSE ≤ {eps:g} after {kw.get('iteration')} iterations."
            return super()._check_stopping_criterion(**kw)

    if initial_point is None:
        rng = np.random.default_rng(seed)
        u0 = np.linalg.qr(rng.standard_normal((n, k)))[0]
        v0 = np.linalg.qr(rng.standard_normal((m, k)))[0]
        s0 = np.sort(rng.uniform(size=k))[::-1]
    else:
        u0, s0, v0 = (np.array(a, dtype=np.float64) for a in initial_point)
        if u0.shape != (n, k) or s0.shape != (k,) or v0.shape != (m, k):
            raise ValueError(f"initial_point shapes {u0.shape}, {s0.shape}, {v0.shape}: need "
                             f"({n}, {k}), ({k},), ({m}, {k})")
    x0 = _FixedRankPoint(u0, s0, v0.T)

    problem = Problem(manifold, cost, euclidean_gradient=euclidean_gradient)
    opt = _CG(max_time=np.inf if max_time is None else max_time, max_iterations=max_iter, verbosity=0)
    t0 = time.perf_counter()
    res = opt.run(problem, initial_point=x0)
    seconds = time.perf_counter() - t0
    u, s, vt = res.point
    r = np.einsum("ij,ij->i", u[rows] * s, vt.T[cols]) - a
    mse = float(r @ r) / max(nnz, 1)
    us = u * s
    max_abs = 0.0
    for i in range(0, n, 2048):  # dense completion in row blocks
        max_abs = max(max_abs, float(np.abs(us[i:i + 2048] @ vt).max(initial=0.0)))
    return dict(rank=k, mse=mse, seconds=seconds, max_abs=max_abs, n_iter=int(res.iterations),
                reached=bool(mse <= eps), stop=res.stopping_criterion)


# ---- Spark MLlib ALS (benchmarks/bench_distributed.py) -----------------------------------------

def _tree_hwm_mb(pid: int) -> float:
    """Largest ``VmHWM`` (peak resident set) among ``pid`` and its descendants, in MiB."""
    import os

    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    best, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        best = max(best, int(line.split()[1]) / 1024)
        except OSError:
            pass
    return best


def spark_als(X: sp.csr_matrix, rank: int, lam: float, iters: tuple[int, int] = (2, 4), *,
              master: str = "local[2]", parquet: str | None = None, driver_memory: str = "6g") -> dict:
    """Time Spark MLlib explicit ALS on the cells of ``X``.

    Two fits with ``maxIter`` = ``iters[0]`` and ``iters[1]`` (ALS exposes no per-iteration
    hook): seconds per iteration = Δ fit time / Δ iterations, which removes the fixed cost of
    a fit (job set-up, block partitioning, the final factor materialisation). The ratings go
    through a Parquet file (``parquet``, written once). Peak memory is the JVM's resident
    peak (``RUSAGE_CHILDREN`` after the gateway JVM exits; in local mode the executors run
    inside it): ``VmHWM`` of the JVM process tree, read before the session stops.
    """
    import os
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession

    coo = X.tocoo()
    if parquet is None:
        parquet = os.path.join(tempfile.mkdtemp(prefix="spark-als-"), "ratings.parquet")
    if not os.path.exists(parquet):
        table = pa.table({"user": coo.row.astype(np.int32), "item": coo.col.astype(np.int32),
                          "rating": coo.data.astype(np.float32)})
        atomic_write(parquet, "wb", lambda f: pq.write_table(table, f))
    spark = (SparkSession.builder.master(master).appName("rankkit-bench-als")
             .config("spark.driver.memory", driver_memory).config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.read.parquet(parquet).cache()
    df.count()
    seconds = {}
    for it in (1, *iters):  # the first (1 iteration, untimed) warms the JIT and the caches
        als = ALS(rank=rank, maxIter=it, regParam=lam, userCol="user", itemCol="item", ratingCol="rating",
                  implicitPrefs=False, seed=0, coldStartStrategy="nan")
        t0 = time.perf_counter()
        model = als.fit(df)
        model.userFactors.count()  # the factors are lazy: materialise them inside the timing
        model.itemFactors.count()
        if it in iters:
            seconds[it] = time.perf_counter() - t0
    proc = getattr(getattr(spark.sparkContext, "_gateway", None), "proc", None)
    peak_mb = _tree_hwm_mb(proc.pid) if proc is not None else float("nan")
    spark.stop()
    a, b = iters
    return dict(s_per_iter=(seconds[b] - seconds[a]) / (b - a), fit_seconds={str(k): v for k, v in seconds.items()},
                peak_jvm_mb=peak_mb, master=master)
