"""A completion as factors, M = U diag(d) Vᵀ: the result type of every solver and its file.

:class:`LowRankFit` holds the factors, the verified error on Ω and the trace of the run;
:class:`SoftImputeResult` (softImpute-ALS, :mod:`rankkit.softimpute`) and
:class:`FixedRankResult` (the fixed-rank solver, :mod:`rankkit.lowrank`) say which solver
made it. Files are npz, written atomically, and read back as the class that wrote them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._io import DamagedFileError, atomic_npz, read_npz

__all__ = ["LowRankFit", "SoftImputeResult", "FixedRankResult"]


@dataclass(eq=False)
class LowRankFit:
    """A completion M = U diag(d) Vᵀ of P_Ω(X) as factors: what every solver returns.

    The subclasses say which solver made it (:class:`SoftImputeResult`,
    :class:`FixedRankResult`); the fields are common, and two of them change meaning:
    ``lam`` is the penalty of the solver's objective (soft-impute's λ, the fixed-rank
    solver's ρ) and ``thresh`` its stopping rule (soft-impute's relative change, the
    fixed-rank solver's target MSE ε).

    Attributes
    ----------
    U : ndarray of float64, shape (n, k)
        Orthonormal left factors.
    d : ndarray of float64, shape (k,)
        Non-negative singular values of M (after the final soft-threshold); zeros mean the
        fit has rank ``effective_rank`` < k.
    V : ndarray of float64, shape (m, k)
        Orthonormal right factors.
    mse : float
        Mean squared residual over the observed cells, ``sse / nnz``:
        (1/:math:`|Ω|`) Σ_{(i,j)∈Ω} (X_ij − M_ij)², at the returned factors (0.0 when :math:`|Ω|` = 0).
    sse : float
        Σ_{(i,j)∈Ω} (X_ij − M_ij)² at the returned factors.
    objective : list of float
        ½‖P_Ω(X − M)‖²_F + λ Σ d per iteration, evaluated after the B-step (R's trace).
    ratio : list of float
        Relative squared Frobenius change of M per iteration (R's ``Frob``).
    n_iter : int
    converged : bool
        The last ratio was ≤ ``thresh``.
    lam, thresh : float
    rank : int
        Requested rank k.
    shape : (int, int)
    nnz : int
    backend : str
    """

    U: np.ndarray
    d: np.ndarray
    V: np.ndarray
    mse: float
    sse: float
    objective: list[float]
    ratio: list[float]
    n_iter: int
    converged: bool
    lam: float
    rank: int
    shape: tuple[int, int]
    nnz: int = 0
    thresh: float = 1e-5
    backend: str = "numpy"
    meta: dict = field(default_factory=dict)

    @property
    def effective_rank(self) -> int:
        """Number of positive singular values: the rank of U diag(d) Vᵀ."""
        return int(np.count_nonzero(self.d > 0))

    def predict(self, rows, cols) -> np.ndarray:
        """M[rows, cols] = Σ_t U[rows, t] d[t] V[cols, t] for paired index arrays."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        if rows.shape != cols.shape:
            raise ValueError(f"rows and cols must have the same shape, got {rows.shape} and {cols.shape}")
        n, m = self.shape
        for name, idx, size in (("rows", rows, n), ("cols", cols, m)):
            bad = (idx < 0) | (idx >= size)
            if bad.any():
                raise IndexError(f"{name}[{int(np.flatnonzero(bad.ravel())[0])}] is outside [0, {size})")
        return np.einsum("...k,...k->...", self.U[rows] * self.d, self.V[cols])

    def to_dense(self) -> np.ndarray:
        """The full n×m matrix M (small problems only)."""
        return (self.U * self.d) @ self.V.T

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to ``path`` exactly (npz content, no suffix added), atomically."""
        path = Path(path)
        arrays = dict(U=self.U, d=self.d, V=self.V, objective=np.asarray(self.objective, float),
                      ratio=np.asarray(self.ratio, float),
                      scalars=np.array([self.mse, self.sse, self.lam, self.thresh]),
                      ints=np.array([self.n_iter, int(self.converged), self.rank, *self.shape, self.nnz]),
                      backend=np.array(self.backend),
                      meta=np.array(json.dumps(self.meta, default=_json_default)),
                      kind=np.array(type(self).__name__))
        atomic_npz(path, arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LowRankFit:
        """Read a result written by :meth:`save`, as the class that wrote it (a file
        without a ``kind``, from before the split, reads as a :class:`SoftImputeResult`)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; write one with SoftImputeResult.save({str(path)!r})")
        z = read_npz(path, "completion result", required=("U", "d", "V", "scalars", "ints", "objective",
                                                          "ratio", "backend"),
                     fix="write it again with SoftImputeResult.save, or delete it")
        mse, sse, lam, thresh = (float(v) for v in z["scalars"])
        n_iter, conv, rank, n, m, nnz = (int(v) for v in z["ints"])
        k = z["d"].size
        if z["U"].shape != (n, k) or z["V"].shape != (m, k) or n_iter < 0 or nnz < 0:
            raise DamagedFileError(f"completion result {str(path)!r} is damaged (U {z['U'].shape}, d ({k},), "
                                   f"V {z['V'].shape} for shape {(n, m)}, n_iter {n_iter}); write it again "
                                   "with SoftImputeResult.save, or delete it")
        kind = _KINDS.get(str(z["kind"]) if "kind" in z else "SoftImputeResult", cls)
        return kind(U=z["U"], d=z["d"], V=z["V"], mse=mse, sse=sse,
                   objective=z["objective"].tolist(), ratio=z["ratio"].tolist(), n_iter=n_iter,
                   converged=bool(conv), lam=lam, rank=rank, shape=(n, m), nnz=nnz,
                   thresh=thresh, backend=str(z["backend"]),
                   meta=json.loads(str(z["meta"])) if "meta" in z else {})

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(shape={self.shape}, rank={self.rank}, "
                f"effective_rank={self.effective_rank}, mse={self.mse:.4g}, n_iter={self.n_iter})")


@dataclass(eq=False, repr=False)
class SoftImputeResult(LowRankFit):
    """A soft-impute fit (:func:`rankkit.soft_impute`): ``lam`` is λ of the objective
    ½‖P_Ω(X − M)‖²_F + λ‖M‖_*, ``thresh`` the relative-change threshold it stopped on
    (``converged``), ``ratio`` R's Frobenius change per iteration."""

    def __repr__(self) -> str:
        return (f"SoftImputeResult(shape={self.shape}, rank={self.rank}, effective_rank={self.effective_rank}, "
                f"lam={self.lam:g}, mse={self.mse:.4g}, n_iter={self.n_iter}, converged={self.converged})")


@dataclass(eq=False, repr=False)
class FixedRankResult(LowRankFit):
    """A fixed-rank fit (:func:`rankkit.fixed_rank_fit`): ``rho`` (stored as ``lam``) is ρ
    of ½‖P_Ω(M − X)‖² + ρ‖M‖_* over rank-k matrices, ``eps`` (stored as ``thresh``) the
    target MSE it stops on (``converged``: MSE ≤ ε); ``meta["stop"]`` says why it stopped
    (target, stalled, max_iter, callback) and ``meta["mse_trace"]`` is the MSE per
    iteration. ``ratio`` is empty."""

    @property
    def rho(self) -> float:
        """ρ, the nuclear-norm weight of the fixed-rank objective."""
        return self.lam

    @property
    def eps(self) -> float:
        """ε, the target MSE over Ω the fit stops on."""
        return self.thresh

    def __repr__(self) -> str:
        return (f"FixedRankResult(shape={self.shape}, rank={self.rank}, effective_rank={self.effective_rank}, "
                f"rho={self.rho:g}, mse={self.mse:.4g}, n_iter={self.n_iter}, "
                f"stop={self.meta.get('stop', '?')!r})")


_KINDS = {c.__name__: c for c in (LowRankFit, SoftImputeResult, FixedRankResult)}


def _json_default(o):
    """numpy scalars and arrays in ``meta`` as plain JSON."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"meta value of type {type(o).__name__} is not JSON-serialisable")
