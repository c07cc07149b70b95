"""scikit-learn estimators over the two solvers: :class:`rankkit.SoftImpute` (softImpute-ALS,
:mod:`rankkit.softimpute`) and :class:`FixedRank` (the fixed-rank solver,
:mod:`rankkit.lowrank`), with one shared base for the input forms, the fitted attributes
and the row fold-in behind ``transform`` and ``score``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .lowrank import fixed_rank_fit
from .softimpute import soft_impute

__all__ = ["SoftImpute", "FixedRank"]


class _CompletionEstimator(TransformerMixin, BaseEstimator):
    """What :class:`rankkit.SoftImpute` and :class:`rankkit.FixedRank` share as scikit-learn
    estimators: the input (dense with NaN, ``scipy.sparse``, :class:`~rankkit.RewardMatrix`),
    the fitted attributes, the row fold-in behind ``transform`` and ``score``, and
    ``predict_cells``. A subclass stores its parameters in ``__init__``, implements ``fit``
    (ending in ``return self._set_result(result)``) and names its nuclear-norm weight in
    ``_fold_in_reg``."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaN marks a missing cell
        tags.input_tags.sparse = True
        return tags

    # ---- input: dense with NaN, scipy.sparse, RewardMatrix -> (csr of observed, shape) ----
    def _observed(self, X, *, reset: bool):
        from .matrix import RewardMatrix

        if isinstance(X, RewardMatrix):
            X = X.to_scipy(self._matrix_label())
        if sp.issparse(X):
            X = validate_data(self, X, accept_sparse="csr", dtype=np.float64, reset=reset,
                              ensure_all_finite=True)
            return sp.csr_matrix(X)
        X = validate_data(self, X, dtype=np.float64, reset=reset, ensure_all_finite="allow-nan")
        if np.isinf(X).any():
            r, c = np.argwhere(np.isinf(X))[0]
            raise ValueError(f"X[{r}, {c}] is {X[r, c]}; use NaN for a missing cell")
        obs = ~np.isnan(X)
        rows, cols = np.nonzero(obs)
        return sp.csr_matrix((X[obs], (rows, cols)), shape=X.shape)

    def _to_fit(self, X) -> sp.csr_matrix:
        """X's observed cells for ``fit``, refusing an empty X, and ``rank_``: a rank above
        min(n, m) adds nothing, so the fit is at most that (e.g. a small CV fold)."""
        R = self._observed(X, reset=True)
        if R.nnz == 0:
            raise ValueError("X has no observed cell (all NaN); nothing to complete")
        self.rank_ = min(int(self.rank), *R.shape)
        return R

    def _set_result(self, res):
        """Store a :class:`rankkit.SoftImputeResult` as the fitted attributes; returns ``self``."""
        self.result_ = res
        self.U_, self.d_, self.V_ = res.U, res.d, res.V
        self.components_ = res.V.T
        self.singular_values_ = res.d
        self.n_iter_ = res.n_iter
        self.mse_ = res.mse
        return self

    def _fold_in_reg(self) -> float:
        raise NotImplementedError

    def _matrix_label(self) -> int | str:
        """Which label of a multi-label :class:`~rankkit.RewardMatrix` ``fit`` completes."""
        return 0

    def _fold_in(self, R: sp.csr_matrix) -> np.ndarray:
        """Row factors of ``R``'s rows against the fitted column factors (see the class)."""
        B = self.V_ * self.d_  # (m, k)
        k = B.shape[1]
        U = np.zeros((R.shape[0], k))
        reg = max(float(self._fold_in_reg()), 0.0) * np.eye(k)
        for i in range(R.shape[0]):  # one k × k solve per row: rows differ in S_i
            lo, hi = R.indptr[i], R.indptr[i + 1]
            if lo == hi:
                continue  # no observed cell: the row's prediction is 0, soft-impute's prior
            Bs = B[R.indices[lo:hi]]
            U[i] = np.linalg.lstsq(Bs.T @ Bs + reg, Bs.T @ R.data[lo:hi], rcond=None)[0]
        return U

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "result_")
        R = self._observed(X, reset=False)
        out = self._fold_in(R) @ (self.V_ * self.d_).T
        rows = np.repeat(np.arange(R.shape[0]), np.diff(R.indptr))
        out[rows, R.indices] = R.data  # observed cells keep their values
        return out

    def score(self, X, y=None) -> float:
        """Minus the MSE over X's observed cells of the folded-in reconstruction."""
        check_is_fitted(self, "result_")
        R = self._observed(X, reset=False)
        if R.nnz == 0:
            raise ValueError("X has no observed cell to score")
        pred = self._fold_in(R) @ (self.V_ * self.d_).T
        rows = np.repeat(np.arange(R.shape[0]), np.diff(R.indptr))
        return -float(np.mean((pred[rows, R.indices] - R.data) ** 2))

    def predict_cells(self, rows, cols) -> np.ndarray:
        """Entries (rows[i], cols[i]) of the matrix completed by ``fit`` (named so, not
        ``predict``, because scikit-learn's ``predict(X)`` means one output per row)."""
        check_is_fitted(self, "result_")
        return self.result_.predict(rows, cols)



class SoftImpute(_CompletionEstimator):
    r"""Soft-impute (:func:`rankkit.soft_impute`) as a scikit-learn estimator.

    ``fit(X)`` completes X: a dense array with NaN for the missing cells, a ``scipy.sparse``
    matrix (stored entries are the observed cells) or a :class:`~rankkit.RewardMatrix`.
    ``transform(X)`` returns X completed: observed cells keep their values, missing ones get
    the model's prediction. Rows are folded in (as a recommender folds in a new user): with
    :math:`B = V\operatorname{diag}(d)` fixed, row i gets
    :math:`u_i = (B_{S_i}^\top B_{S_i} + \lambda I)^{-1} B_{S_i}^\top x_{S_i}` over its observed
    columns :math:`S_i`, the row step of softImpute-ALS (Hastie et al. 2015, Alg. 3.1), and
    the completed row is :math:`u_i B^\top`. So ``transform`` also works on rows never seen
    in ``fit`` (same columns), which is what ``Pipeline`` and ``GridSearchCV`` need.
    ``score(X)`` is minus the MSE of that reconstruction over X's observed cells.

    Parameters
    ----------
    rank : int
    lam : float
        Nuclear-norm weight λ of soft-impute.
    max_iter, thresh, backend, device, dtype, seed, progress, final_svd
        As in :func:`rankkit.soft_impute`.

    Attributes
    ----------
    U_, d_, V_ : ndarrays (n, k), (k,), (m, k)
    components_ : ndarray (k, m)
        Vᵀ, as in :class:`sklearn.decomposition.TruncatedSVD`.
    singular_values_ : ndarray (k,)
    result_ : SoftImputeResult
    n_iter_ : int
    mse_ : float
    n_features_in_ : int
    rank_ : int
        The rank fitted: ``min(rank, n, m)``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.outer([1.0, 2, 3, 4], [1.0, -1, 2])
    >>> X[0, 1] = X[3, 2] = np.nan
    >>> done = SoftImpute(rank=1, lam=0.0, progress=False).fit_transform(X)
    >>> bool(np.isfinite(done).all())
    True
    """

    def __init__(self, rank: int = 10, lam: float = 1e-4, *, max_iter: int = 1000,
                 thresh: float = 1e-5, backend: str = "auto", device=None, dtype=None,
                 seed: int = 0, progress: bool = False, final_svd: bool = True):
        self.rank = rank
        self.lam = lam
        self.max_iter = max_iter
        self.thresh = thresh
        self.backend = backend
        self.device = device
        self.dtype = dtype
        self.seed = seed
        self.progress = progress
        self.final_svd = final_svd

    def fit(self, X, y=None) -> SoftImpute:
        R = self._to_fit(X)
        res = soft_impute(R, self.rank_, float(self.lam), max_iter=self.max_iter,
                          thresh=self.thresh, backend=self.backend, device=self.device,
                          dtype=self.dtype, seed=self.seed, progress=self.progress,
                          final_svd=self.final_svd)
        return self._set_result(res)

    def _fold_in_reg(self) -> float:
        return self.lam


class FixedRank(_CompletionEstimator):
    r"""The fixed-rank certificate solver (:func:`rankkit.fixed_rank_fit`) as a scikit-learn estimator.

    The same estimator interface as :class:`rankkit.SoftImpute` (one shared base, so the
    two behave alike in a ``Pipeline`` or ``GridSearchCV``): ``fit(X)`` completes X, a dense
    array with NaN for the missing cells, a ``scipy.sparse`` matrix (stored entries are the
    observed cells) or a :class:`~rankkit.RewardMatrix` (label ``label``); ``transform(X)``
    returns X completed, observed cells kept, rows folded in against the fitted column
    factors :math:`B = V\operatorname{diag}(d)` with the row step
    :math:`u_i = (B_{S_i}^\top B_{S_i} + \rho I)^{-1} B_{S_i}^\top x_{S_i}`, so rows unseen
    in ``fit`` work too; ``score(X)`` is minus the MSE of that reconstruction over X's
    observed cells; ``predict_cells(rows, cols)`` reads entries of the fitted completion.

    Parameters
    ----------
    rank : int, default 10
        k; a rank above ``min(n, m)`` fits ``min(n, m)`` (``rank_``).
    eps : float, default 1e-12
        Stop as soon as the MSE over the observed cells is ≤ eps.
    rho : float, default 1e-4
        Nuclear-norm weight ρ (= soft-impute's λ), also the ridge of the fold-in.
    warm_start : bool, LowRankFit or dict, default False
        True starts ``fit`` from the previous fit's factors (scikit-learn's meaning; a
        first fit starts cold); a result or ``{"u", "d", "v"}`` is passed to
        :func:`rankkit.fixed_rank_fit` as its start.
    method, max_iter, init, n_restarts, window, stall, cg_iter, cg_tol, als_rate
        As in :func:`rankkit.fixed_rank_fit`.
    backend, device, seed, checkpoint, checkpoint_every, progress, callback
        As in :func:`rankkit.fixed_rank_fit` (``progress`` defaults to False here, as for
        ``SoftImpute``).
    label : int or str, default 0
        Which label of a multi-label ``RewardMatrix`` to complete.

    Attributes
    ----------
    U_, d_, V_ : ndarrays (n, k), (k,), (m, k)
    components_ : ndarray (k, m)
        Vᵀ, as in :class:`sklearn.decomposition.TruncatedSVD`.
    singular_values_ : ndarray (k,)
    result_ : FixedRankResult
    mse_ : float
    n_iter_ : int
    n_features_in_ : int
    rank_ : int

    Examples
    --------
    >>> import numpy as np
    >>> X = np.outer([1.0, 2, 3, 4], [1.0, -1, 2])
    >>> X[0, 1] = X[3, 2] = np.nan
    >>> est = FixedRank(rank=1, rho=0.0).fit(X)
    >>> bool(est.mse_ <= 1e-12), bool(np.isfinite(est.transform(X)).all())
    (True, True)
    """

    def __init__(self, rank: int = 10, eps: float = 1e-12, rho: float = 1e-4, *,
                 method: str = "auto", max_iter: int = 500, init: str = "spectral",
                 warm_start=False, n_restarts: int = 0, window: int = 30, stall: float = 0.5,
                 cg_iter: int = 50, cg_tol: float = 1e-2, als_rate: float = 0.5,
                 backend: str = "auto", device=None, seed: int = 0, checkpoint=None,
                 checkpoint_every: int = 10, progress: bool = False, callback=None,
                 label: int | str = 0):
        self.rank = rank
        self.eps = eps
        self.rho = rho
        self.method = method
        self.max_iter = max_iter
        self.init = init
        self.warm_start = warm_start
        self.n_restarts = n_restarts
        self.window = window
        self.stall = stall
        self.cg_iter = cg_iter
        self.cg_tol = cg_tol
        self.als_rate = als_rate
        self.backend = backend
        self.device = device
        self.seed = seed
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.callback = callback
        self.label = label

    def fit(self, X, y=None) -> FixedRank:
        """Complete X at rank ``min(rank, n, m)``; returns ``self``."""
        R = self._to_fit(X)
        warm = self.warm_start
        if isinstance(warm, bool | np.bool_):  # scikit-learn's meaning: start from the last fit
            warm = getattr(self, "result_", None) if warm else None
        res = fixed_rank_fit(
            R, self.rank_, eps=self.eps, rho=self.rho, method=self.method,
            max_iter=self.max_iter, init=self.init, warm_start=warm,
            n_restarts=self.n_restarts, window=self.window, stall=self.stall,
            cg_iter=self.cg_iter, cg_tol=self.cg_tol, als_rate=self.als_rate,
            backend=self.backend, device=self.device, seed=self.seed,
            checkpoint=self.checkpoint, checkpoint_every=self.checkpoint_every,
            progress=self.progress, callback=self.callback)
        return self._set_result(res)

    def _fold_in_reg(self) -> float:
        return self.rho

    def _matrix_label(self) -> int | str:
        return self.label
