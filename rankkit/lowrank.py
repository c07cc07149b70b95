r"""Fixed-rank completion of P_Ω(X): the tightest certificate at a given rank.

Paper 002, §3.1 (Definitions 1–2) asks for the smallest k such that some matrix of rank
≤ k fits the observed cells within ε. :func:`fixed_rank_fit` searches the set of rank-k
matrices directly,

.. math::

    \min_{\operatorname{rank} M = k}\; f(M) = \tfrac12 \lVert P_\Omega(M - X) \rVert_F^2
        + \rho \lVert M \rVert_*, \qquad M = U \operatorname{diag}(s) V^\top,

which is the paper's objective (17) (soft-impute's, with λ = ρ) restricted to rank k. It
stops as soon as the mean squared error over Ω, recomputed from the factors, is ≤ ``eps``:
those factors then *are* the certificate minrank_{Ω,ε}(X) ≤ k. Unlike softImpute-ALS, whose
imputation steps converge like EM and whose stopping rule is a relative change, nothing
here is tied to a convergence threshold.

Three solvers share one set of kernels (:mod:`rankkit._lrkernels`) and one representation
of a point, the thin SVD form (U, s, V):

``"als"`` — alternating least squares on Ω only (Hastie et al. 2015, §3; Koren et al.):
    with M = A Bᵀ, each half-step solves for every row exactly
    a_i = argmin_a ‖x_{S_i} − B_{S_i} a‖² + ρ‖a‖² (minimum-norm when ρ = 0 and :math:`|S_i|` < k),
    then the same for the columns. With ρ > 0 it minimises
    ½‖P_Ω(ABᵀ − X)‖² + ρ/2 (‖A‖² + ‖B‖²), whose minimum over balanced factors is f.
``"rcg"`` — Riemannian conjugate gradient on the manifold of rank-k matrices
    (Vandereycken, *Low-rank matrix completion by Riemannian optimization*, SIAM J. Optim.
    23 (2013), Alg. 1, "LRGeomCG"): the Riemannian gradient is the projection of the sparse
    Euclidean gradient onto the tangent space T_M,

    .. math::

        P_T(Z) = U U^\top Z V V^\top + (I - UU^\top) Z V V^\top + U U^\top Z (I - VV^\top),

    stored as (Uᵀ Z V, Z V − U Uᵀ Z V, Zᵀ U − V Vᵀ Zᵀ U) — two sparse × thin products;
    plus ρ U Vᵀ for the nuclear norm. Polak–Ribière+ directions, vector transport by
    projection, the step of the exact line minimisation of the linearised residual, Armijo
    backtracking, retraction by the rank-k truncation of the 2k × 2k core.
``"rlm"`` — Riemannian Levenberg–Marquardt (Gauss–Newton on the manifold, the second-order
    refinement for hard patterns): the step ξ ∈ T_M solves

    .. math::

        \bigl(P_T P_\Omega P_T + \mu I\bigr)\,\xi = -\operatorname{grad} f(M)

    by conjugate gradients in the tangent space (each product: one sampled product of
    rank 2k and two sparse × thin products), then M ← R_M(ξ); μ follows Nielsen's gain-ratio
    rule. The Gauss–Newton operator P_T P_Ω P_T has eigenvalues in [0, 1], so μ is
    dimensionless. This is the Gauss–Newton model of Wiberg / Okatani & Deguchi (2007) and
    Hong & Fitzgibbon (ICCV 2015) written on the fixed-rank manifold instead of in
    variable-projection coordinates: the same model of the residual, with the tangent
    space removing the gauge freedom the variable projection removes, and no per-row
    projections to store.

``"auto"`` (the default) starts with ALS when at most 10 % of the rows and of the columns
hold fewer than k cells (the half-steps over-determined: ALS then converges fast) and continues with RLM once a
sweep fails to halve the MSE; otherwise it runs RLM from the start. On the sparse,
power-law patterns of reward data (a few prefixes with hundreds of next tokens, most with
two) ALS' minimum-norm half-steps inflate the unobserved entries and crawl through swamps
that RLM crosses in a few dozen steps (vader:tweets Ω₂, rank 5: RLM reaches MSE 1.8e-7 in
35 steps; ALS stalls at 3e-5 with entries up to 151).

Start: the top-k SVD of the rescaled observed matrix P_Ω(X)/p, p = :math:`|Ω|`/(n m) (Keshavan,
Montanari & Oh 2010), with its singular values refitted by least squares on Ω; random
restarts are an option. A warm start (a previous result or ``{"u", "d", "v"}``) is
truncated to its top k triplets or padded with the top singular triplets of the rescaled
residual.

Stopping: MSE over Ω ≤ ``eps`` (the certificate); else when the MSE fell by less than a
factor ``1 − stall`` over the last ``window`` iterations, or after ``max_iter`` iterations.
A stall with ρ > 0 is first followed by a *polish*: ρ is set to 0 at the current point (the
penalised path has tamed the scale; the certificate itself needs no penalty, and ρ's bias
floors the MSE) and the run goes on while that halves the MSE within 10 iterations.

Precision: float64 throughout (certificates are stated at MSE 1e-6 and tested at 1e-12).

Every sum over rows (Zᵀ U, Uᵀ Z V, inner products, the squared error, the column pass of
ALS) and every QR of a row-partitioned factor goes through a reduction hook of the kernels
(:class:`rankkit._lrkernels._LRKernels`), the identity here: the same code runs on the row
shards of a process group as :func:`rankkit.distributed.fixed_rank_fit`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ._backend import resolve_backend
from ._io import DamagedFileError, atomic_npz, fingerprint, read_npz
from ._lrkernels import make_lr_kernels, svd_form
from ._starts import _random_start, _spectral_start, _warm
from ._tangent import (
    _axpy,
    _gn_cg,
    _ip,
    _lowrank,
    _on_omega,
    _project,
    _project_lowrank,
    _retract,
    _scale,
)
from .factors import FixedRankResult
from .matrix import as_reward_matrix
from .softimpute import _check_scale

# FixedRank, the scikit-learn estimator over fixed_rank_fit, is in rankkit.estimators
__all__ = ["fixed_rank_fit", "METHODS"]

METHODS = ("auto", "als", "rcg", "rlm")
# iterations the unpenalised polish gets to halve the MSE before a stall is declared final
_POLISH_WINDOW = 10
_PHASE = {"als": 0, "rcg": 1, "rlm": 2}


# ---- the solver ----------------------------------------------------------------------------

def _fingerprint(indptr, indices, x, shape, k, settings) -> np.ndarray:
    """The problem a checkpoint belongs to, as a 0-d string array for its npz."""
    return np.asarray(fingerprint("fixed-rank", list(shape), indptr, indices, x, int(k),
                                  settings))


class _Run:
    """One fit: the iterate, the traces and the solver memory, checkpointable as arrays."""

    def __init__(self, K, k, rho, nnz):
        self.K, self.k, self.rho, self.nnz = K, k, rho, nnz
        self.it = 0
        self.mse: list[float] = []
        self.objective: list[float] = []
        self.phases: list[int] = []
        self.mu, self.nu = 1e-3, 2.0
        self.prev = None  # RCG: (gradient, direction) as thin products (A, B) at the last point
        self.polish_at = -1  # iteration at which ρ was dropped to 0 (−1: not yet)
        self.cg_scale = 1  # LM inner-solve escalation (1, 2, 4): budget × scale, tolerance ÷ …

    # -- evaluation
    def set_point(self, U, s, V):
        K = self.K
        self.U, self.s, self.V = U, s, V
        self.r = K.sampled(U * s, V) - K.observed()
        self.sse = K.vdot(self.r, self.r)
        self.f = 0.5 * self.sse + self.rho * K.abs_sum(s)

    def grad(self):
        g = _project(self.K, self.r, self.U, self.V)
        if self.rho:
            g = (g[0] + self.rho * self.K.eye(self.k), g[1], g[2])
        return g

    def record(self, phase: int):
        self.it += 1
        self.mse.append(self.sse / self.nnz if self.nnz else 0.0)
        self.objective.append(self.f)
        self.phases.append(phase)

    # -- one iteration of each solver; each returns False when it cannot improve
    def step_als(self) -> bool:
        K = self.K
        # the balanced factors of the current point, then one exact sweep of row and column solves
        root = self.s ** 0.5
        B = self.V * root
        A = K.solve_rows(B, self.rho)
        B = K.solve_cols(A, self.rho)
        U, s, V = svd_form(A, B, K.qr_rows, K.svd, K.qr)
        f_old = self.f
        self.set_point(U, s, V)
        return self.f < f_old

    def step_rlm(self, cg_iter: int, cg_tol: float) -> bool:
        K = self.K
        U, V = self.U, self.V
        g = self.grad()
        # on small patterns the NumPy backend runs the whole CG loop compiled (rankkit._cgkernel)
        solve = K.gn_cg if K.fuses_gn_cg(self.k) else partial(_gn_cg, K)
        xi = solve(U, V, g, self.mu, cg_iter, cg_tol)
        if xi is None:
            return False
        xo = _on_omega(K, xi, U, V)
        pred = -_ip(K, g, xi) - 0.5 * K.vdot(xo, xo)
        state = (self.U, self.s, self.V, self.r, self.sse, self.f)
        self.set_point(*_retract(K, self.U, self.s, self.V, xi, self.k))
        if self.f < state[5]:
            gain = (state[5] - self.f) / pred if pred > 0 else 0.0
            self.mu *= max(1.0 / 3.0, 1.0 - (2.0 * gain - 1.0) ** 3)
            self.nu = 2.0
            return True
        self.U, self.s, self.V, self.r, self.sse, self.f = state
        self.mu *= self.nu
        self.nu *= 2.0
        return self.mu < 1e16  # the step has shrunk to nothing: no descent left

    def step_rcg(self) -> bool:
        K = self.K
        U, V = self.U, self.V
        g = self.grad()
        d = _scale(-1.0, g)
        if self.prev is not None:
            (gA, gB), (dA, dB) = self.prev
            Tg = _project_lowrank(K, gA, gB, U, V)
            Td = _project_lowrank(K, dA, dB, U, V)
            den = _ip(K, Tg, Tg)
            beta = max(0.0, (_ip(K, g, g) - _ip(K, g, Tg)) / den) if den > 0 else 0.0
            d = _axpy(beta, Td, d)
            if _ip(K, d, g) >= 0:  # not a descent direction: restart along −grad
                d = _scale(-1.0, g)
        slope = _ip(K, g, d)
        if not slope < 0:
            return False
        do = _on_omega(K, d, U, V)
        dd = K.vdot(do, do)
        t = -slope / dd if dd > 0 else 1.0
        state = (self.U, self.s, self.V, self.r, self.sse, self.f)
        for _ in range(30):
            self.set_point(*_retract(K, U, state[1], V, _scale(t, d), self.k))
            if self.f <= state[5] + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            self.U, self.s, self.V, self.r, self.sse, self.f = state
            if self.prev is None:
                return False
            self.prev = None  # restart the conjugacy next iteration
            return True
        gl, dl = _lowrank(g, U, V), _lowrank(_scale(t, d), U, V)
        self.prev = ((K.cat(list(gl[0])), K.cat(list(gl[1]))), (K.cat(list(dl[0])), K.cat(list(dl[1]))))
        return True

    def start_polish(self):
        """ρ → 0 from the current point: the certificate needs no penalty, and ρ's bias puts a
        floor under the MSE (of order ρ² k / |Ω|·κ²) that may lie above ε (small-scale values,
        tiny ε). The penalised run has already tamed the scale of the iterate."""
        self.polish_at = self.it
        self.rho = 0.0
        self.prev = None
        self.mu, self.nu = 1e-3, 2.0
        self.set_point(self.U, self.s, self.V)

    # -- checkpoint state
    _FIELDS = ("U", "s", "V")

    def state(self) -> dict:
        K = self.K
        out = {name: K.to_numpy(getattr(self, name)) for name in self._FIELDS}
        out.update(it=np.array(self.it), mse=np.asarray(self.mse, float), rho=np.array(self.rho),
                   polish_at=np.array(self.polish_at),
                   objective=np.asarray(self.objective, float), phases=np.asarray(self.phases, np.int64),
                   munu=np.array([self.mu, self.nu]), has_prev=np.array(self.prev is not None),
                   cg_scale=np.array(self.cg_scale))
        if self.prev is not None:
            (gA, gB), (dA, dB) = self.prev
            out.update(gA=K.to_numpy(gA), gB=K.to_numpy(gB), dA=K.to_numpy(dA), dB=K.to_numpy(dB))
        return out

    def restore(self, z) -> None:
        K = self.K
        self.rho, self.polish_at = float(z["rho"]), int(z["polish_at"])
        self.set_point(*(K.asarray(z[name]) for name in self._FIELDS))
        self.it = int(z["it"])
        self.mse, self.objective = z["mse"].tolist(), z["objective"].tolist()
        self.phases = z["phases"].tolist()
        self.mu, self.nu = (float(v) for v in z["munu"])
        self.cg_scale = int(z["cg_scale"])
        self.prev = None
        if bool(z["has_prev"]):
            self.prev = ((K.asarray(z["gA"]), K.asarray(z["gB"])), (K.asarray(z["dA"]), K.asarray(z["dB"])))


def fixed_rank_fit(R, rank: int, *, label: int | str = 0, eps: float = 1e-12, rho: float = 1e-4,
                   method: str = "auto", max_iter: int = 500, init: str = "spectral", warm_start=None,
                   n_restarts: int = 0, window: int = 30, stall: float = 0.5, cg_iter: int = 50,
                   cg_tol: float = 1e-2, als_rate: float = 0.5, backend: str = "auto", device=None,
                   seed: int | np.random.Generator = 0, checkpoint: str | os.PathLike | None = None,
                   checkpoint_every: int = 10, progress: bool | None = None,
                   callback: Callable[[int, dict], bool | None] | None = None) -> FixedRankResult:
    r"""Rank-``rank`` completion of P_Ω(X) that stops at MSE ≤ ``eps`` (the certificate).

    Minimises ½‖P_Ω(M − X)‖²_F + ρ‖M‖_* over matrices of rank k (paper 002, objective (17)
    restricted to rank k; §3.1, Definition 1) with ALS, Riemannian CG or Riemannian
    Levenberg–Marquardt; see the module docstring for the equations.

    Parameters
    ----------
    R : RewardMatrix or scipy.sparse matrix, shape (n, m)
        Observed cells; every stored entry of a scipy matrix, explicit zeros included.
    rank : int
        k, 1 ≤ k ≤ min(n, m) (0 returns the zero matrix).
    label : int or str
        Which label of a multi-label RewardMatrix.
    eps : float, default 1e-12
        Stop as soon as the MSE over Ω, recomputed from the factors, is ≤ eps.
    rho : float, default 1e-4
        The nuclear-norm weight ρ (= soft-impute's λ; 1e-4 as in App. C.3), so a certificate
        minimises the same objective as the paper's and its unobserved entries stay tame.
        0 gives the plain least-squares fit (reaches MSE ~1e-25 on exactly low-rank data).
    method : {"auto", "als", "rcg", "rlm"}
        See the module docstring.
    max_iter : int
        Outer iterations (ALS sweeps, CG steps or LM steps), all phases together.
    init : {"spectral", "random"}
        Cold start; ignored when ``warm_start`` is given.
    warm_start : LowRankFit or dict {"u", "d", "v"}, optional
        Truncated to its top-k triplets, or padded from the residual's top singular triplets.
    n_restarts : int
        When the fit does not reach ``eps``, retry from this many random starts (seeded) and
        keep the lowest MSE.
    window, stall : int, float
        Stop when the MSE fell by less than a factor (1 − stall) over ``window`` iterations.
    cg_iter, cg_tol : int, float
        Inner conjugate-gradient iterations per LM step and their relative residual tolerance
        at the start; both tighten (up to 4 × cg_iter and cg_tol / 10) after an LM step that
        reduces the MSE by less than 30 % (a forcing sequence: accurate Gauss–Newton steps
        where the problem is ill-conditioned, cheap ones elsewhere).
    als_rate : float
        ``"auto"`` leaves ALS for LM when one sweep reduces the MSE by less than this factor.
    backend, device
        "numpy" (numba kernels) or "torch" (CPU or CUDA); "auto" picks torch on a GPU.
    seed : int or numpy.random.Generator
        Seeds the start (ARPACK's start vector, random starts).
    checkpoint : path, optional
        npz file for the iteration state, written atomically every ``checkpoint_every``
        iterations and on Ctrl-C or a stopping ``callback``; a run with the same problem and
        settings resumes from it and returns the same result as an uninterrupted run (bitwise
        on the same backend and numba thread count). Deleted when the run finishes.
    progress : bool or None, default None
        tqdm bar with the current MSE (None: only on a terminal or in a notebook).
    callback : callable(iter, info) -> bool, optional
        After each iteration with ``info`` = dict(mse, objective, method, rank); True stops.

    Returns
    -------
    FixedRankResult
        U, d (= s), V in SVD form; ``mse`` and ``sse`` recomputed from them; ``objective``
        the trace of f; ``lam`` = ρ; ``thresh`` = eps; ``converged`` = (mse ≤ eps);
        ``meta`` holds ``method``, ``phases`` (solver of every iteration), ``mse_trace``,
        ``stop`` ("target", "stalled", "max_iter", "callback"), ``seconds`` and ``restarts``.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> g = np.random.default_rng(0)
    >>> M = g.standard_normal((80, 3)) @ g.standard_normal((3, 60))
    >>> mask = g.random(M.shape) < 0.4
    >>> X = sp.csr_matrix((M[mask], np.nonzero(mask)), shape=M.shape)
    >>> fit = fixed_rank_fit(X, 3, eps=1e-20, rho=0.0, progress=False)
    >>> bool(fit.mse <= 1e-20)
    True
    """
    Rm = as_reward_matrix(R)
    indptr, indices = Rm.indptr, Rm.indices
    x = np.ascontiguousarray(Rm.label_values(label), dtype=np.float64)
    _check_scale(x)
    n, m = Rm.shape
    opts = _check_args(rank, (n, m), method=method, init=init, eps=eps, rho=rho, cg_tol=cg_tol,
                       max_iter=max_iter, n_restarts=n_restarts, window=window, cg_iter=cg_iter,
                       checkpoint_every=checkpoint_every, stall=stall, als_rate=als_rate)
    backend, device = _fit_backend(backend, device)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    nnz = int(x.size)
    t0 = time.perf_counter()
    if rank == 0 or nnz == 0:
        return _zero_result((n, m), int(rank), float(x @ x), nnz, eps, rho, method, backend)
    K = make_lr_kernels(backend, device, indptr, indices, x, (n, m))
    settings = _settings(rank, rho, K.name, opts)
    limit = threadpool_limits(1, user_api="blas") if K.name == "numpy" else contextlib.nullcontext()
    with limit:
        if warm_start is not None:
            start = _warm(warm_start, indptr, indices, x, (n, m), int(rank), rng)
        elif init == "spectral":
            start = _spectral_start(indptr, indices, x, (n, m), int(rank), rng)
        else:
            start = _random_start(indptr, indices, x, (n, m), int(rank), rng)
        store = None
        if checkpoint is not None:
            store = _NpzCheckpoint(Path(checkpoint), _fingerprint(indptr, indices, x, (n, m), int(rank), settings),
                                   (n, m), int(rank), int(max_iter))
        run, stop, restarts = _solve(
            K, int(rank), float(rho), nnz, start, store, int(checkpoint_every), int(n_restarts),
            lambda: _random_start(indptr, indices, x, (n, m), int(rank), rng),
            progress=progress, callback=callback, **opts)
    return _result(K, run, stop, restarts, (n, m), int(rank), nnz, eps, rho, method, t0)


def _check_args(rank, shape, *, method, init, eps, rho, cg_tol, max_iter, n_restarts, window, cg_iter,
                checkpoint_every, stall, als_rate) -> dict:
    """Validate the arguments of a fixed-rank fit (one process or sharded); returns the
    solver options of :func:`_iterate` as plain Python numbers."""
    n, m = shape
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or not 0 <= rank <= min(n, m):
        raise ValueError(f"rank must be an integer in [0, min(n, m)] = [0, {min(n, m)}], got {rank!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if init not in ("spectral", "random"):
        raise ValueError(f"init must be 'spectral' or 'random', got {init!r}")
    for name, v, lo in (("eps", eps, 0.0), ("rho", rho, 0.0), ("cg_tol", cg_tol, 0.0)):
        if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v) and v >= lo):
            raise ValueError(f"{name} must be a finite number ≥ {lo}, got {v!r}")
    for name, v, lo in (("max_iter", max_iter, 0), ("n_restarts", n_restarts, 0), ("window", window, 1),
                        ("cg_iter", cg_iter, 1), ("checkpoint_every", checkpoint_every, 1)):
        if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= lo):
            raise ValueError(f"{name} must be an integer ≥ {lo}, got {v!r}")
    if not 0 < stall < 1 or not 0 < als_rate < 1:
        raise ValueError(f"stall and als_rate must lie in (0, 1), got {stall!r} and {als_rate!r}")
    return dict(eps=float(eps), method=method, max_iter=int(max_iter), window=int(window), stall=float(stall),
                cg_iter=int(cg_iter), cg_tol=float(cg_tol), als_rate=float(als_rate))


def _fit_backend(backend, device):
    backend, device = resolve_backend(backend, device)
    if backend == "cupy":
        backend, device = "torch", f"cuda:{int(device)}"
    return backend, device


def _settings(rank, rho, kernel_name, opts) -> dict:
    """What a checkpoint must agree on besides the data (its fingerprint)."""
    return dict(k=int(rank), rho=float(rho), eps=opts["eps"], method=opts["method"], max_iter=opts["max_iter"],
                window=opts["window"], stall=opts["stall"], cg_iter=opts["cg_iter"], cg_tol=opts["cg_tol"],
                als_rate=opts["als_rate"], backend=kernel_name)


def _zero_result(shape, k, sse, nnz, eps, rho, method, backend, U=None) -> FixedRankResult:
    """The rank-0 (or empty-Ω) fit: the zero matrix; ``sse`` = Σ x² over Ω."""
    n, m = shape
    mse = sse / nnz if nnz else 0.0
    return FixedRankResult(U=np.zeros((n, k)) if U is None else U, d=np.zeros(k), V=np.zeros((m, k)),
                            mse=mse, sse=sse, objective=[], ratio=[], n_iter=0, converged=mse <= eps,
                            lam=float(rho), rank=k, shape=shape, nnz=nnz, thresh=float(eps), backend=backend,
                            meta={"method": method, "stop": "target", "phases": [], "mse_trace": [],
                                  "seconds": 0.0, "restarts": 0})


def _solve(K, k, rho, nnz, start, store, checkpoint_every, n_restarts, random_start, *, eps, agree=None,
           **opts):
    """The fit from ``start`` (or a matching checkpoint in ``store``), then up to
    ``n_restarts`` random starts while the MSE is above ε; the best run wins.
    Returns (run, why it stopped, restarts made)."""
    run, stop = _iterate(K, k, rho, nnz, start, store, checkpoint_every, eps=eps, agree=agree, **opts)
    restarts = 0
    while run.mse_now > eps and restarts < n_restarts:
        restarts += 1
        cand, cstop = _iterate(K, k, rho, nnz, random_start(), None, 1, eps=eps, agree=agree, **opts)
        if cand.mse_now < run.mse_now:
            run, stop = cand, cstop
    return run, stop, restarts


def _result(K, run, stop, restarts, shape, k, nnz, eps, rho, method, t0) -> FixedRankResult:
    """The FixedRankResult of a finished run (U as the kernels hold it: all rows in one
    process, this rank's rows in a process group)."""
    U, s, V = K.to_numpy(run.U), K.to_numpy(run.s), K.to_numpy(run.V)
    sse = float(run.sse)
    mse = sse / nnz
    names = {v: key for key, v in _PHASE.items()}
    return FixedRankResult(U=U, d=s, V=V, mse=mse, sse=sse, objective=list(run.objective), ratio=[],
                            n_iter=run.it, converged=mse <= eps, lam=float(rho), rank=int(k),
                            shape=tuple(shape), nnz=nnz, thresh=float(eps), backend=K.name,
                            meta={"method": method, "stop": stop, "polish_at": run.polish_at, "rho_final": run.rho,
                                  "phases": [names[p] for p in run.phases], "mse_trace": list(run.mse),
                                  "seconds": time.perf_counter() - t0, "restarts": restarts})


class _NpzCheckpoint:
    """The iteration state of one process in one npz file (``checkpoint`` of
    :func:`fixed_rank_fit`): written atomically, refused if it belongs to another problem."""

    save_on_interrupt = True

    def __init__(self, path: Path, fp: np.ndarray, shape, k: int, max_iter: int):
        self.path, self.fp, self.shape, self.k, self.max_iter = path, fp, tuple(shape), k, max_iter

    def read(self, path: Path) -> dict:
        z = read_npz(path, "fixed-rank checkpoint",
                     required=("fingerprint", "U", "s", "V", "it", "mse", "objective", "phases", "munu",
                               "has_prev", "rho", "polish_at", "cg_scale"))
        if not np.array_equal(z["fingerprint"], self.fp):
            raise ValueError(f"checkpoint {str(path)!r} belongs to a different problem (data, rank or "
                             "solver settings differ); delete it or pass another path")
        (n, m), k = self.shape, self.k
        it = int(z["it"])
        if not (0 <= it <= self.max_iter and z["mse"].size == it and z["U"].shape == (n, k)
                and z["V"].shape == (m, k) and z["s"].shape == (k,)):
            raise DamagedFileError(f"fixed-rank checkpoint {str(path)!r} is damaged (iteration {it} of "
                                   f"max_iter {self.max_iter}, {z['mse'].size} MSE values, U {z['U'].shape}); "
                                   "delete it to start over")
        return z

    def load(self):
        return self.read(self.path) if self.path.is_file() else None

    def save(self, state: dict) -> None:
        atomic_npz(self.path, {**state, "fingerprint": self.fp})

    def finish(self, keep: bool) -> None:
        if not keep and self.path.is_file():
            self.path.unlink()


def _als_well_posed(K, k: int, tolerated: float = 0.1) -> bool:
    """At most a fraction ``tolerated`` of the rows and of the columns hold fewer than k cells:
    nearly every ALS half-step is an over-determined least-squares problem, and ALS converges
    fast at a tenth of an LM step's cost (16 sweeps to MSE 1e-10 on an exactly rank-10
    20,000 × 5,000 matrix with 1M uniform cells; 17 sweeps, 0.1 s, on a rank-4 3,000 × 200
    power-law pattern where LM needs 1 s). On reward data most prefixes have two cells: ALS'
    minimum-norm half-steps then inflate the unobserved entries and stall, and "auto" starts
    with LM instead."""
    rows, cols = K.short_fractions(k)
    return bool(rows <= tolerated and cols <= tolerated)


def _iterate(K, k, rho, nnz, start, store, checkpoint_every, *, eps, method, max_iter, window, stall,
             cg_iter, cg_tol, als_rate, progress, callback, agree=None):
    """Run the solver from ``start`` (or the state ``store`` holds); returns (run, why it
    stopped). ``store``: None, :class:`_NpzCheckpoint` or a per-rank store of a process group;
    ``agree(stop) -> bool`` makes every rank stop when the callback stops one."""
    from ._progress import progress_bar

    run = _Run(K, k, rho, nnz)
    z = None if store is None else store.load()
    resumed = z is not None
    if resumed:
        run.restore(z)
    else:
        run.set_point(*(K.asarray(a) for a in start))
    run.mse_now = run.sse / nnz

    def save():
        store.save(run.state())

    if method != "auto":
        phase = method
    elif run.phases:  # resumed: continue in the phase the checkpoint was written in
        phase = "rlm" if run.phases[-1] == _PHASE["rlm"] else "als"
    else:
        phase = "als" if _als_well_posed(K, k) else "rlm"
    stop = "max_iter"
    bar = progress_bar(total=max_iter, initial=run.it, desc=f"fixed-rank k={k}", progress=progress, leave=False)
    try:
        while True:
            if run.mse_now <= eps:
                stop = "target"
                break
            if run.it >= max_iter:
                stop = "max_iter"
                break
            w = run.mse
            if run.polish_at >= 0 and run.it - run.polish_at >= _POLISH_WINDOW \
                    and w[-1] > 0.5 * w[run.polish_at - 1]:
                stop = "stalled"  # the unpenalised fit does not move either: a true stall
                break
            if len(w) > window and w[-1] > (1.0 - stall) * w[-1 - window]:
                if run.rho > 0 and run.polish_at < 0:
                    run.start_polish()
                else:
                    stop = "stalled"
                    break
            before = run.mse_now
            if phase == "als":
                ok = run.step_als()
            elif phase == "rcg":
                ok = run.step_rcg()
            else:
                # inexact Gauss–Newton with a forcing sequence: cheap inner solves while the
                # outer steps make progress, more accurate ones (up to 4× the CG budget, 10×
                # the tolerance) once a step gains less than 30 % (the swamps of sparse patterns)
                ok = run.step_rlm(cg_iter * run.cg_scale, cg_tol / run.cg_scale ** (math.log(10) / math.log(4)))
                if ok and run.sse > 0.7 * before * nnz and run.cg_scale < 4:
                    run.cg_scale *= 2
            run.record(_PHASE[phase])
            run.mse_now = run.mse[-1]
            switched = method == "auto" and phase == "als" and not run.mse_now <= als_rate * before
            if switched:
                phase = "rlm"  # ALS stalls: the Gauss–Newton refinement takes over
            elif not ok:
                stop = "stalled"
                break
            bar.update(1)
            bar.set_postfix(mse=f"{run.mse_now:.3g}", method=phase, refresh=False)
            if store is not None and run.it % checkpoint_every == 0:
                save()
            if callback is not None:
                halt = bool(callback(run.it, dict(mse=run.mse_now, objective=run.f, method=phase, rank=k)))
                if agree is not None:
                    halt = agree(halt)
                if halt:
                    stop = "callback"
                    break
    except KeyboardInterrupt:
        if store is not None and store.save_on_interrupt:
            save()
        raise
    finally:
        bar.close()
    if store is not None:
        if stop == "callback":
            save()
        store.finish(keep=stop == "callback")
    return run, stop
