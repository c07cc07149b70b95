"""Slow dense NumPy reference of softImpute-ALS and reusable assertions for completions.

:func:`soft_impute_dense_reference` is the plain transcription of R's ``Ssimpute.als``
(Hastie et al., JMLR 2015, Alg. 3.1) on a dense array with a boolean mask: it forms X*
explicitly and uses ``numpy.linalg.svd`` directly, so it shares no code with the sparse
kernels of :mod:`rankkit._kernels` and can check them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DenseSoftImputeTrace", "soft_impute_dense_reference", "assert_completion_close",
           "assert_sklearn_estimator"]


@dataclass
class DenseSoftImputeTrace:
    """Iterates of the dense reference: final factors plus the per-iteration traces."""

    U: np.ndarray
    d: np.ndarray
    V: np.ndarray
    objective: list[float]
    ratio: list[float]
    fits: list[np.ndarray]  # M after every iteration (n×m)
    n_iter: int

    def to_dense(self) -> np.ndarray:
        return (self.U * self.d) @ self.V.T


def soft_impute_dense_reference(X: np.ndarray, mask: np.ndarray, U0: np.ndarray, lam: float, *,
                                max_iter: int = 100, thresh: float = 1e-5,
                                final_svd: bool = True) -> DenseSoftImputeTrace:
    r"""Dense softImpute-ALS from U₀ (V₀ = 0, D² = 1), R's update order.

    With X* = P_Ω(X) + P_Ω^⊥(U D² Vᵀ) formed densely:
    B = X*ᵀ U · D²(D²+λ)⁻¹ = Ṽ S Wᵀ → V = Ṽ, D² = S, U ← U W;
    A = X* V · D²(D²+λ)⁻¹ = Ũ S Wᵀ → U = Ũ, D² = S, V ← V W;
    stop when ‖M_old − M‖²_F / max(‖M_old‖²_F, 1e-9) ≤ thresh. The objective
    ½‖P_Ω(X − M)‖²_F + λ Σ D² is recorded after the B-step. Final step (λ > 0):
    unshrunk A-step and d = max(S − λ, 0).
    """
    X = np.asarray(X, dtype=np.float64)
    W = np.asarray(mask, dtype=bool)
    U = np.array(U0, dtype=np.float64)
    n, k = U.shape
    m = X.shape[1]
    V = np.zeros((m, k))
    Dsq = np.ones(k)
    objective, ratios, fits = [], [], []
    it, ratio = 0, np.inf

    def filled(U, Dsq, V):
        M = (U * Dsq) @ V.T
        return np.where(W, X, M), M

    while ratio > thresh and it < max_iter:
        it += 1
        M_old = (U * Dsq) @ V.T
        # R's Frob uses the stored Dsq even when V = 0, so its denominator is Σ Dsq².
        denom = float(np.sum(Dsq ** 2))
        Xs, _ = filled(U, Dsq, V)
        B = Xs.T @ U
        if lam > 0:  # R shrinks only when λ > 0 (D²/(D²+0) is 0/0 for D² = 0)
            B = B * (Dsq / (Dsq + lam))
        Vt, Dsq, Wt = np.linalg.svd(B, full_matrices=False)
        V, U = Vt, U @ Wt.T
        Xs, M = filled(U, Dsq, V)
        objective.append(0.5 * float(np.sum((W * (X - M)) ** 2)) + lam * float(Dsq.sum()))
        A = Xs @ V
        if lam > 0:
            A = A * (Dsq / (Dsq + lam))
        U, Dsq, Wt = np.linalg.svd(A, full_matrices=False)
        V = V @ Wt.T
        M = (U * Dsq) @ V.T
        # ‖M_old − M‖² expanded as R does (M_old's norm taken as Σ Dsq_old²).
        num = denom + float(np.sum(Dsq ** 2)) - 2.0 * float(np.sum(M_old * M))
        ratio = num / max(denom, 1e-9)
        ratios.append(ratio)
        fits.append(M)
    if lam > 0 and final_svd:
        Xs, _ = filled(U, Dsq, V)
        U, Dsq, Wt = np.linalg.svd(Xs @ V, full_matrices=False)
        V = V @ Wt.T
        Dsq = np.maximum(Dsq - lam, 0)
    return DenseSoftImputeTrace(U, Dsq, V, objective, ratios, fits, it)


def assert_completion_close(result, X: np.ndarray, mask: np.ndarray, *, rtol: float | None = None) -> None:
    """Assert a :class:`~rankkit.softimpute.SoftImputeResult` reproduces X on the mask,
    with a tolerance derived from float64 and the scale of X."""
    M = result.to_dense()
    eps = np.finfo(np.float64).eps
    tol = (rtol if rtol is not None else 1e3 * eps ** 0.5) * max(1.0, float(np.abs(X).max()))
    err = np.abs(M - X)[np.asarray(mask, dtype=bool)]
    if err.size and err.max() > tol:
        i = int(np.argmax(err))
        raise AssertionError(f"completion misses observed cell #{i} by {err[i]:.3g} > tolerance {tol:.3g}")


def assert_sklearn_estimator(estimator) -> list[dict]:
    """Run scikit-learn's ``check_estimator`` on ``estimator`` and fail on any failed check.

    The one contract every completion estimator (:class:`rankkit.SoftImpute`,
    :class:`rankkit.FixedRank`) must pass, so that ``clone``, ``Pipeline`` and ``GridSearchCV``
    work on it. The only skip allowed is the one scikit-learn makes itself without
    ``SCIPY_ARRAY_API=1`` in the environment (``check_array_api_input``). Returns the
    per-check records.
    """
    import warnings

    from sklearn.exceptions import SkipTestWarning
    from sklearn.utils.estimator_checks import check_estimator

    # the one skip allowed is asserted below, so the warning that announces it is expected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkipTestWarning)
        res = check_estimator(estimator, on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in res if r["status"] == "failed"]
    assert not failed, f"{type(estimator).__name__} fails scikit-learn checks: {failed}"
    skipped = [r["check_name"] for r in res if r["status"] == "skipped"]
    assert skipped in ([], ["check_array_api_input"]), f"unexpected skips: {skipped}"
    assert len(res) > 40, f"only {len(res)} checks ran"
    return res
