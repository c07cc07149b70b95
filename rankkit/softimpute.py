r"""Soft-impute ALS on the observed cells of a reward matrix (paper 002, App. C.3).

The paper certifies the minimal ε-rank of P_Ω(R) with softImpute-ALS (Hastie, Mazumder,
Lee & Zadeh, JMLR 2015, Algorithm 3.1) as implemented by R's ``softImpute(type="als")``
for a sparse ("Incomplete") matrix. This module reproduces that algorithm, its objective,
its λ convention, its convergence test and its final de-biasing step, on three backends
(numpy + numba, torch CPU/CUDA, cupy) that share one algorithm and differ only in the
kernels of :mod:`rankkit._kernels`.

Objective
---------

.. math::

    \min_{M}\; \tfrac12 \lVert P_\Omega(X - M) \rVert_F^2 + \lambda \lVert M \rVert_*,
    \qquad M = U \operatorname{diag}(d) V^\top,\ \operatorname{rank} M \le k,

solved through the factorisation M = A Bᵀ, A = U D, B = V D, D² = diag(d) ("Dsq" in R),
for which ½‖A‖²_F + ½‖B‖²_F = ‖M‖_* at the balanced point.

One iteration (R's ``Ssimpute.als``)
------------------------------------

With X* = P_Ω(X) − P_Ω(ABᵀ) + ABᵀ (never formed: sparse residual + low-rank part),

1. B-step: B̃ = X*ᵀ U = P_Ω(X − U D² Vᵀ)ᵀ U + V D²; B̃ ← B̃ D²(D² + λI)⁻¹;
   B̃ = Ṽ diag(s) Wᵀ (thin SVD); V ← Ṽ, D² ← diag(s), U ← U W.
2. A-step: Ã = X* V = P_Ω(X − U D² Vᵀ) V + U D²; Ã ← Ã D²(D² + λI)⁻¹;
   Ã = Ũ diag(s) Wᵀ; U ← Ũ, D² ← diag(s), V ← V W.
3. ratio = ‖M_old − M‖²_F / max(‖M_old‖²_F, 1e-9), computed from the k×k factors (R's
   ``Frob``); stop when ratio ≤ ``thresh`` or after ``max_iter`` iterations.

Final step (R's ``final.svd=TRUE``, only when λ > 0): one more unshrunk A-step,
Ã = X* V = Ũ diag(s) Wᵀ, then U ← Ũ, V ← V W, d ← max(s − λ, 0): the singular values are
de-biased and soft-thresholded once, so zero entries of d are honest (rank M = #{d > 0}).
R then keeps min(#{d > 0} + 1, k) columns; rankkit keeps all k (zero columns add nothing
to M) so fits along a λ path keep one shape. R's printed objective is divided by :math:`|Ω|`;
``SoftImputeResult.objective`` is not.

Starting point and R's trajectory
---------------------------------

Cold start (R): U₀ = left singular vectors of an n×k standard normal matrix, V₀ = 0,
D² = 1. Here the normal matrix comes from ``numpy.random.default_rng(seed)``. To follow R's
trajectory exactly, run ``set.seed(s); U0 <- svd(matrix(rnorm(n*k), n, k))$u`` in R and pass
``warm_start={"u": U0}`` (d defaults to ones, v to zeros — this is R's cold start with that
U₀). A previous :class:`SoftImputeResult` or a dict ``{"u", "d", "v"}`` (R's ``warm.start``)
warm-starts as R does: columns with d > 0 are kept; if fewer than k remain, the missing
columns of U are random normal columns orthogonalised against U, their d copies the last
positive d and their V columns are 0.

Precision
---------

The default ``dtype`` is float64 on every backend, CPU and GPU alike: the certificates of
App. C.3 are stated at MSE ≤ 1e-6, and float32 residual sums blur that resolution. Pass
``dtype="float32"`` for speed on a GPU when no certificate is needed.

References
----------
T. Hastie, R. Mazumder, J. D. Lee, R. Zadeh. Matrix completion and low-rank SVD via fast
alternating least squares. JMLR 16 (2015), Algorithm 3.1.
R package ``softImpute`` (Hastie & Mazumder), function ``Ssimpute.als``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from ._backend import resolve_backend
from ._io import DamagedFileError, atomic_npz, fingerprint, read_npz
from ._kernels import make_kernels
from .factors import LowRankFit, SoftImputeResult
from .matrix import RewardMatrix

# SoftImpute, the scikit-learn estimator, is in rankkit.estimators; SoftImputeResult in rankkit.factors
__all__ = ["soft_impute", "soft_impute_path", "SoftImputeResult", "observed_mse"]


# ---- input handling ------------------------------------------------------------------------

def _as_pattern(R, label) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    if isinstance(R, RewardMatrix):
        return R.indptr, R.indices, R.label_values(label), R.shape
    if sp.issparse(R):
        M = RewardMatrix.from_scipy(R)
        return M.indptr, M.indices, M.values, M.shape
    raise TypeError(f"R must be a RewardMatrix or a scipy.sparse matrix (stored entries, explicit zeros "
                    f"included, are the observations), got {type(R).__name__}")


def _check_scale(x: np.ndarray) -> None:
    """Refuse values whose squared error overflows float64: with max |x| · √|Ω| above
    ~1e154 the sums of squares are inf and every fit would stop after two iterations with
    MSE = inf."""
    if x.size:
        top = float(np.max(np.abs(x)))
        if top * np.sqrt(x.size) > 1e150:
            raise ValueError(f"observed values reach {top:.3g}: their squared errors overflow float64 "
                             f"over {x.size:,} cells; rescale the labels (e.g. divide by {top:.1g})")


def warm_parts(warm_start, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, d, v) float64 of a warm start: a SoftImputeResult, or a dict with 'u' (n×j) and
    optionally 'd' (j, default ones) and 'v' (m×j, default zeros), keys in any case. Shapes
    are checked by the caller, which knows which rows it holds."""
    if isinstance(warm_start, LowRankFit):
        u, d, v = warm_start.U, warm_start.d, warm_start.V
    elif isinstance(warm_start, dict):
        keys = {key.lower(): val for key, val in warm_start.items()}
        if "u" not in keys:
            raise ValueError("warm_start dict needs 'u' (n×j); 'd' (j,) and 'v' (m×j) are optional "
                             f"(default ones and zeros); got keys {sorted(warm_start)}")
        u = np.asarray(keys["u"], dtype=np.float64)
        if u.ndim == 1:
            u = u[:, None]
        d = np.asarray(keys.get("d", np.ones(u.shape[1])), dtype=np.float64).reshape(-1)
        v = np.asarray(keys["v"], dtype=np.float64) if "v" in keys else np.zeros((m, u.shape[1]))
        if v.ndim == 1:
            v = v[:, None]
    else:
        raise TypeError("warm_start must be None, a SoftImputeResult or a dict with 'u' (and optionally "
                        f"'d', 'v'), got {type(warm_start).__name__}")
    return tuple(np.asarray(a, dtype=np.float64) for a in (u, d, v))


def _warm_factors(warm_start, n: int, m: int, k: int, rng: np.random.Generator):
    """(U, Dsq, V, from_warm) in float64 following R's warm.start rules."""
    if warm_start is None:
        U = np.linalg.svd(rng.standard_normal((n, k)), full_matrices=False)[0]
        return U, np.ones(k), np.zeros((m, k)), False
    u, d, v = warm_parts(warm_start, m)
    if u.shape[0] != n or v.shape[0] != m or u.shape[1] != d.size or v.shape[1] != d.size:
        raise ValueError(f"warm_start shapes u {u.shape}, d {d.shape}, v {v.shape} do not fit a {n}×{m} "
                         f"matrix: need u (n, j), d (j,), v (m, j) with n={n}, m={m}")
    keep = np.flatnonzero(d > 0)  # R's clean.warm.start: drop columns with d = 0
    u, d, v = u[:, keep], d[keep], v[:, keep]
    jd = d.size
    if jd == 0:
        return _warm_factors(None, n, m, k, rng)
    if jd >= k:
        return u[:, :k].copy(), d[:k].copy(), v[:, :k].copy(), True
    ja = k - jd
    ua = rng.standard_normal((n, ja))
    ua -= u @ (u.T @ ua)
    ua = np.linalg.svd(ua, full_matrices=False)[0]
    return (np.hstack([u, ua]), np.concatenate([d, np.full(ja, d[-1])]),
            np.hstack([v, np.zeros((m, ja))]), True)


def _fingerprint(indptr, indices, x, shape, k, lam, thresh, dtype) -> np.ndarray:
    """The problem a checkpoint belongs to, as a 0-d string array for its npz."""
    return np.asarray(fingerprint("soft-impute", list(shape), indptr, indices, x, int(k),
                                  float(lam), float(thresh), str(dtype)))


# ---- the algorithm ------------------------------------------------------------------------

def _frob_ratio(K, U0, D0, V0, U, D, V) -> float:
    """‖U0 D0 V0ᵀ − U D Vᵀ‖²_F / max(‖U0 D0 V0ᵀ‖²_F, 1e-9) from k×k products (R's Frob).

    ``K.row_gram`` forms Uᵀ U0 (summed over the row shards when U is distributed)."""
    denom = float((D0 * D0).sum())
    utu = D[:, None] * K.row_gram(U, U0)
    vtv = D0[:, None] * (V0.T @ V)
    cross = float((utu * vtv.T).sum())  # trace(utu @ vtv)
    num = denom + float((D * D).sum()) - 2.0 * cross
    return num / max(denom, 1e-9)


def als_iteration(K, U, Dsq, V, lam: float):
    r"""One softImpute-ALS iteration (Hastie et al. 2015, Alg. 3.1; R ``Ssimpute.als``).

    B-step :math:`\tilde B = P_\Omega(X - U D^2 V^\top)^\top U + V D^2`, shrunk by
    :math:`D^2 (D^2 + \lambda I)^{-1}` and re-orthogonalised by a thin SVD; then the A-step
    :math:`\tilde A = P_\Omega(X - U D^2 V^\top) V + U D^2` likewise (module docstring).

    Written once against the kernel interface of :mod:`rankkit._kernels`, so the one-process
    fit and the row-partitioned fit of :mod:`rankkit.distributed` run this same function:
    there ``resid_cols`` returns this rank's block of columns of B (reduced over ranks),
    ``col_block`` cuts the same block out of a replicated m × k array, ``svd_cols`` /
    ``svd_rows`` are the thin SVDs of a column- / row-partitioned factor (TSQR over ranks,
    ``svd_cols`` hands back the whole V) and ``row_gram`` sums Xᵀ Y over the row shards. In
    one process those are the identity, ``thin_svd`` and ``X.T @ Y``.

    Returns
    -------
    (U, Dsq, V, objective, sse, ratio)
        The new factors, ½ sse + λ Σ D² after the B-step (R's trace), sse = ‖P_Ω(X − M)‖²
        at the factors of the A-step, and R's relative change of M.
    """
    U0, D0, V0 = U, Dsq, V
    # B-step: B = P_Ω(X − U D² Vᵀ)ᵀ U + V D², shrunk by D²/(D²+λ).
    BD = V * Dsq
    B, _ = K.resid_cols(BD, U)
    # in place: B is a fresh array of the kernels (saves two n×k allocations per step)
    B += K.col_block(BD)
    if lam > 0:
        B *= Dsq / (Dsq + lam)
    V, Dsq, W = K.svd_cols(B)
    U = U @ W
    # A-step: A = P_Ω(X − U D² Vᵀ) V + U D², shrunk likewise.
    AD = U * Dsq
    A, sse = K.resid_rows(AD, V)
    objective = 0.5 * sse + lam * float(Dsq.sum())
    A += AD
    if lam > 0:
        A *= Dsq / (Dsq + lam)
    U, Dsq, W = K.svd_rows(A)
    V = V @ W
    return U, Dsq, V, objective, sse, _frob_ratio(K, U0, D0, V0, U, Dsq, V)


def final_step(K, U, Dsq, V, lam: float, final_svd: bool):
    """R's ``final.svd``: one unshrunk A-step, then the singular values soft-thresholded once;
    returns (U, d, V, sse) with sse at the returned factors."""
    if lam > 0 and final_svd:
        AD = U * Dsq
        A, _ = K.resid_rows(AD, V)
        U, Dsq, W = K.svd_rows(A + AD)
        V = V @ W
        Dsq = K.relu(Dsq - lam)
    return U, Dsq, V, K.sse(U * Dsq, V)


def soft_impute(R, rank: int, lam: float, *, label: int | str = 0, max_iter: int = 1000,
                thresh: float = 1e-5, backend: str = "auto", device=None, dtype=None,
                warm_start=None, seed: int | np.random.Generator = 0,
                checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 50,
                progress: bool | None = None, callback: Callable[[int, dict], bool | None] | None = None,
                final_svd: bool = True) -> SoftImputeResult:
    r"""Complete P_Ω(X) with softImpute-ALS (Hastie et al. 2015, Alg. 3.1; R ``Ssimpute.als``).

    Minimises ½‖P_Ω(X − M)‖²_F + λ‖M‖_* over M = U diag(d) Vᵀ of rank ≤ ``rank`` (paper
    002, App. C.3 uses λ = 1e-4 and 1000 iterations). See the module docstring for the
    updates, the stopping rule and the final de-biasing step.

    Parameters
    ----------
    R : RewardMatrix or scipy.sparse matrix, shape (n, m)
        Observed cells. For scipy input, every *stored* entry (explicit zeros included) is
        an observation.
    rank : int
        Maximal rank k, 0 ≤ k ≤ min(n, m). ``rank=0`` returns the zero matrix.
    lam : float
        λ ≥ 0, R's ``lambda`` (same scale: not divided by :math:`|Ω|`).
    label : int or str
        Which label of a multi-label RewardMatrix to complete.
    max_iter : int
        R's ``maxit``.
    thresh : float
        Stop when the relative squared change of M is ≤ ``thresh`` (R's ``thresh``). A
        negative value runs exactly ``max_iter`` iterations (the ratio can reach 0 on an
        exactly fitted matrix, so ``thresh=0`` may stop early).
    backend, device : str, device
        "auto", "numpy", "torch" or "cupy" (see :func:`rankkit._backend.resolve_backend`).
    dtype : None, "float64" or "float32"
        Working precision; None means float64 on every backend (module docstring).
    warm_start : SoftImputeResult or dict, optional
        Start from these factors (R's ``warm.start``); ``{"u": U0}`` follows R's cold start
        from that U₀.
    seed : int or numpy.random.Generator
        Seeds the random U₀ (and the padding columns of a smaller warm start).
    checkpoint : path, optional
        npz file for the iteration state, written atomically every ``checkpoint_every``
        iterations and when ``callback`` stops the run. If it exists and belongs to the
        same problem (data, rank, λ, thresh, dtype) the run resumes from it and ends with
        the same result as an uninterrupted run — bitwise on the same backend and number
        of numba threads, which fix the summation order (``warm_start`` and ``seed`` are then
        unused: the saved state is the start). It is deleted when the run finishes
        (converged or ``max_iter``); a run stopped by ``callback`` or Ctrl-C keeps it.
    progress : bool or None, default None
        tqdm bar with the current MSE and ratio (None: only on a terminal or in a notebook).
    callback : callable(iter, info) -> bool, optional
        Called after each iteration with ``info`` = dict(mse, objective, ratio, rank,
        lam); returning True stops the iterations (the final step still runs).
    final_svd : bool
        R's ``final.svd`` (only used when λ > 0).

    Returns
    -------
    SoftImputeResult

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> X = sp.random(60, 40, density=0.5, random_state=0, format="csr")
    >>> fit = soft_impute(X, rank=5, lam=1e-4, progress=False)
    >>> fit.U.shape, fit.d.shape, fit.V.shape
    ((60, 5), (5,), (40, 5))
    """
    indptr, indices, x, shape = _as_pattern(R, label)
    _check_scale(x)
    n, m = shape
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or not 0 <= rank <= min(n, m):
        raise ValueError(f"rank must be an integer in [0, min(n, m)] = [0, {min(n, m)}], got {rank!r}; "
                         "a rank above min(n, m) adds nothing")
    rank = int(rank)
    if not (np.isscalar(lam) and np.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number ≥ 0 (R's lambda, e.g. 1e-4), got {lam!r}")
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 0):
        raise ValueError(f"max_iter must be an integer ≥ 0, got {max_iter!r}")
    if not (np.isscalar(thresh) and not np.isnan(thresh)):
        raise ValueError(f"thresh must be a number (e.g. 1e-5; < 0 runs exactly max_iter iterations), got {thresh!r}")
    if not (isinstance(checkpoint_every, (int, np.integer)) and checkpoint_every >= 1):
        raise ValueError(f"checkpoint_every must be an integer ≥ 1, got {checkpoint_every!r}")
    np_dtype = np.dtype(np.float64 if dtype is None else dtype)
    if np_dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ValueError(f"dtype must be None, 'float64' or 'float32', got {dtype!r}")
    backend, device = resolve_backend(backend, device)
    nnz = int(indices.size)
    if rank == 0:
        sse = float(np.dot(x, x))
        return SoftImputeResult(U=np.zeros((n, 0)), d=np.zeros(0), V=np.zeros((m, 0)),
                                mse=sse / nnz if nnz else 0.0, sse=sse, objective=[], ratio=[], n_iter=0,
                                converged=True, lam=float(lam), rank=0, shape=shape, nnz=nnz,
                                thresh=float(thresh), backend=backend)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    K = make_kernels(backend, device, indptr, indices, x, shape, np_dtype)
    # The numpy backend's BLAS work is k-column QRs and k×k SVDs while numba's kernels already
    # use every core: a threaded BLAS spinning beside them (or beside other processes on a
    # shared machine) costs far more than it saves, so BLAS runs single-threaded for the fit.
    limit = threadpool_limits(1, user_api="blas") if backend == "numpy" else contextlib.nullcontext()
    with limit:
        return _soft_impute(K, shape, nnz, rank, float(lam), int(max_iter), float(thresh), warm_start, rng,
                            None if checkpoint is None else Path(checkpoint), int(checkpoint_every),
                            progress, callback, final_svd,
                            (indptr, indices, x, np_dtype))


class _FileCheckpoint:
    """The iteration state of one process in one npz file (see ``checkpoint`` of
    :func:`soft_impute`): written atomically, refused if it belongs to another problem."""

    save_on_interrupt = True

    def __init__(self, path: Path, fingerprint: np.ndarray, n: int, m: int, k: int, max_iter: int):
        self.path, self.fp, self.n, self.m, self.k, self.max_iter = path, fingerprint, n, m, k, max_iter

    def read(self, path: Path) -> dict:
        z = read_npz(path, "soft-impute checkpoint",
                     required=("fingerprint", "U", "Dsq", "V", "objective", "ratio", "iter"))
        if not np.array_equal(z["fingerprint"], self.fp):
            raise ValueError(f"checkpoint {str(path)!r} belongs to a different problem (data, rank, "
                             "lam, thresh or dtype differ); delete it or pass another path")
        n_done = int(z["iter"])
        if not (0 <= n_done <= self.max_iter and z["objective"].size == n_done
                and z["U"].shape == (self.n, self.k) and z["V"].shape == (self.m, self.k)
                and z["Dsq"].shape == (self.k,)):
            raise DamagedFileError(f"soft-impute checkpoint {str(path)!r} is damaged (iteration "
                                   f"{n_done} of max_iter {self.max_iter}, {z['objective'].size} objective "
                                   f"values, U {z['U'].shape}); delete it to start over")
        return z

    def load(self) -> dict | None:
        return self.read(self.path) if self.path.is_file() else None

    def write(self, path: Path, U, Dsq, V, objective, ratios, n_done: int) -> None:
        atomic_npz(path, dict(U=U, Dsq=Dsq, V=V, objective=np.asarray(objective[:n_done], float),
                              ratio=np.asarray(ratios[:n_done], float), iter=np.array(n_done),
                              fingerprint=self.fp))

    def save(self, U, Dsq, V, objective, ratios, n_done: int) -> None:
        self.write(self.path, U, Dsq, V, objective, ratios, n_done)

    def finish(self, keep: bool) -> None:
        if not keep and self.path.is_file():
            self.path.unlink()


def _soft_impute(K, shape, nnz, k, lam, max_iter, thresh, warm_start, rng, checkpoint, checkpoint_every,
                 progress, callback, final_svd, data) -> SoftImputeResult:
    """Body of :func:`soft_impute`; inputs are already validated."""
    n, m = shape
    store = None
    if checkpoint is not None:
        store = _FileCheckpoint(checkpoint, _fingerprint(*data[:3], shape, k, lam, thresh, data[3]),
                                n, m, k, max_iter)
    U, Dsq, V, objective, ratios, it, converged = _run(
        K, k, lam, max_iter, thresh, lambda: _warm_factors(warm_start, n, m, k, rng)[:3], store,
        checkpoint_every, progress, callback, nnz)
    U, Dsq, V, sse = final_step(K, U, Dsq, V, lam, final_svd)
    return SoftImputeResult(U=K.to_numpy(U), d=K.to_numpy(Dsq), V=K.to_numpy(V), mse=sse / nnz if nnz else 0.0,
                            sse=sse, objective=objective, ratio=ratios, n_iter=it, converged=converged, lam=lam,
                            rank=k, shape=shape, nnz=nnz, thresh=thresh, backend=K.name)


def _run(K, k, lam, max_iter, thresh, start, store, checkpoint_every, progress, callback, nnz,
         agree=None):
    """The iterations of softImpute-ALS with checkpointing: one loop for one process and for
    a process group (``store`` saves this process's part; ``agree`` makes every rank take the
    same decision to stop on a callback).

    ``start()`` gives the initial (U, Dsq, V) as float64 NumPy when no checkpoint is resumed.
    Returns (U, Dsq, V, objective, ratios, n_iter, converged)."""
    from ._progress import progress_bar

    objective: list[float] = []
    ratios: list[float] = []
    it = 0
    state = None if store is None else store.load()
    if state is not None:
        U, Dsq, V = state["U"], state["Dsq"], state["V"]
        objective, ratios = state["objective"].tolist(), state["ratio"].tolist()
        it = int(state["iter"])
    else:
        U, Dsq, V = start()
    U, Dsq, V = K.asarray(U), K.asarray(Dsq), K.asarray(V)

    # State after the last *completed* iteration: what a checkpoint holds, so that a Ctrl-C
    # in the middle of an iteration still resumes exactly (arrays are never updated in place).
    done = (U, Dsq, V, it)

    def save_state():
        u, dsq, v, n_done = done
        store.save(K.to_numpy(u), K.to_numpy(dsq), K.to_numpy(v), objective, ratios, n_done)

    ratio = ratios[-1] if ratios else np.inf
    stopped = False
    bar = progress_bar(total=max_iter, initial=it, desc=f"soft-impute k={k}", progress=progress, leave=False)
    try:
        while ratio > thresh and it < max_iter:
            it += 1
            U, Dsq, V, obj, sse, ratio = als_iteration(K, U, Dsq, V, lam)
            objective.append(obj)
            ratios.append(ratio)
            done = (U, Dsq, V, it)
            mse_now = sse / nnz if nnz else 0.0
            bar.update(1)
            bar.set_postfix(mse=f"{mse_now:.3g}", ratio=f"{ratio:.2g}", refresh=False)
            if store is not None and it % checkpoint_every == 0:
                save_state()
            if callback is not None:
                stop = bool(callback(it, dict(mse=mse_now, objective=obj, ratio=ratio, rank=k, lam=lam)))
                if agree is not None:
                    stop = agree(stop)
                if stop:
                    stopped = True
                    break
    except KeyboardInterrupt:
        if store is not None and store.save_on_interrupt:
            save_state()
        raise
    finally:
        bar.close()
    if store is not None:
        if stopped:
            save_state()
        store.finish(keep=stopped)
    return U, Dsq, V, objective, ratios, it, bool(ratio <= thresh)


def soft_impute_path(R, ranks: int | Sequence[int] | None = None, lams: float | Sequence[float] | None = None,
                     *, warm_start=None, **kwargs) -> list[SoftImputeResult]:
    """Fit a sequence of (rank, λ) pairs, each warm-started from the previous fit.

    This is how R users walk a path: increasing ranks (new columns padded as in R's
    ``warm.start``) and/or decreasing λ. ``ranks`` and ``lams`` are broadcast against each
    other (a scalar repeats); the pairs are fitted in the order given.

    Parameters
    ----------
    R : RewardMatrix or scipy.sparse matrix
    ranks : int or sequence of int
    lams : float or sequence of float
        Default 0.0 when None.
    warm_start : optional start of the first fit.
    **kwargs : passed to :func:`soft_impute` (``seed``, ``max_iter``, ``backend``, ...).
        ``checkpoint`` is not accepted: each fit of the path is its own problem.

    Returns
    -------
    list of SoftImputeResult, one per pair.
    """
    if ranks is None:
        raise ValueError("ranks is required: an int or a sequence of ints, e.g. ranks=[5, 10, 20]")
    if "checkpoint" in kwargs:
        raise ValueError("soft_impute_path does not take checkpoint=; call soft_impute per step with its own file")
    r = np.atleast_1d(np.asarray(ranks))
    lam_arr = np.atleast_1d(np.asarray(0.0 if lams is None else lams, dtype=np.float64))
    try:
        r, lam_arr = np.broadcast_arrays(r, lam_arr)
    except ValueError:
        raise ValueError(f"ranks ({r.size}) and lams ({lam_arr.size}) must have equal lengths or one be a "
                         "scalar") from None
    out: list[SoftImputeResult] = []
    warm = warm_start
    for k, lam in zip(r.tolist(), lam_arr.tolist(), strict=True):
        res = soft_impute(R, int(k), lam, warm_start=warm, **kwargs)
        out.append(res)
        warm = res if res.rank > 0 else warm
    return out


def observed_mse(R, result, label: int | str = 0, *, chunk_elems: int = 1 << 24) -> float:
    r"""MSE over the observed cells of ``R`` of a factored matrix, from the factors alone.

    .. math::

        \operatorname{MSE}_\Omega = \frac{1}{|\Omega|} \sum_{(i,j) \in \Omega}
            \bigl(X_{ij} - (U \operatorname{diag}(d) V^\top)_{ij}\bigr)^2

    The one check every certificate goes through (soft-impute, the fixed-rank solver, the
    exact completion): it never trusts a solver's own MSE. O(nnz · k) time, O(nnz) memory;
    no n × m array.

    Parameters
    ----------
    R : RewardMatrix or scipy.sparse matrix, shape (n, m)
    result : SoftImputeResult or tuple (U, d, V)
        Factors of shapes (n, k), (k,), (m, k), NumPy, torch or CuPy arrays.
    label : int or str

    Returns
    -------
    float
        0.0 when Ω is empty.
    """
    from ._backend import to_numpy

    indptr, indices, x, (n, m) = _as_pattern(R, label)
    if isinstance(result, LowRankFit):
        U, d, V = result.U, result.d, result.V
    else:
        U, d, V = result
    U, V = to_numpy(U, np.float64), to_numpy(V, np.float64)
    d = to_numpy(d, np.float64).reshape(-1)
    k = d.size
    if U.shape != (n, k) or V.shape != (m, k):
        raise ValueError(f"factors have shapes U {U.shape}, d ({k},), V {V.shape}; expected "
                         f"({n}, {k}) and ({m}, {k}) for a matrix of shape {(n, m)}")
    if indices.size == 0:
        return 0.0
    if k == 0:
        return float(np.mean(x ** 2))
    # chunks of cells: O(chunk · k) temporaries; a plain (not fastmath) sum, so the check is
    # independent of the solvers' kernels
    Ud = U * d
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    step = max(1, chunk_elems // max(k, 1))
    sse = 0.0
    for a in range(0, indices.size, step):
        b = min(a + step, indices.size)
        pred = np.einsum("ij,ij->i", Ud[rows[a:b]], V[indices[a:b]])
        sse += float(np.sum((x[a:b] - pred) ** 2))
    return sse / indices.size
