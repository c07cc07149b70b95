"""Re-checks of the lower bounds of :mod:`rankkit.bounds` and a brute-force ε-rank reference.

:func:`eps_rank_brute_force` is the slow, obvious search a bound must never beat: at every
rank k, dense alternating least squares on the observed cells from many random starts; the
smallest k at which some start reaches mean squared error ≤ ε is an *upper* bound on the
minimal ε-rank (its factors are a witness), so every valid lower bound is ≤ it. It shares no
code with :mod:`rankkit.bounds` or :mod:`rankkit.lowrank`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["eps_rank_brute_force", "assert_eps_lower_bound", "assert_rank_lower_bound",
           "assert_estimate_brackets"]


def _als_best(X: np.ndarray, W: np.ndarray, k: int, rng: np.random.Generator, n_iter: int,
              max_abs: float | None = None) -> float:
    """Smallest mean squared error over the observed cells reached by rank-k ALS from one
    random start (minimum-norm least squares per row and per column), counting only iterates
    whose every entry is ≤ ``max_abs`` in absolute value when it is given (inf if none is)."""
    n, m = X.shape
    A = rng.standard_normal((n, k))
    B = rng.standard_normal((m, k))
    best = np.inf
    for _ in range(n_iter):
        for i in range(n):
            obs = W[i]
            A[i] = np.linalg.lstsq(B[obs], X[i, obs], rcond=None)[0] if obs.any() else 0.0
        for j in range(m):
            obs = W[:, j]
            B[j] = np.linalg.lstsq(A[obs], X[obs, j], rcond=None)[0] if obs.any() else 0.0
        M = A @ B.T
        if max_abs is None or float(np.abs(M).max()) <= max_abs:
            best = min(best, float(np.mean((M - X)[W] ** 2)))
    return best


def eps_rank_brute_force(values: np.ndarray, mask: np.ndarray, eps: float, *, restarts: int = 12,
                         n_iter: int = 60, seed: int = 0,
                         max_abs: float | None = None) -> tuple[int | None, dict[int, float]]:
    """(smallest rank k found with MSE ≤ ε over the observed cells, best MSE per rank tried).

    Rank 0 is the zero matrix; the search stops at the first passing rank (at the latest at
    min(n, m), where an exact fit exists). With ``max_abs`` only fits whose every entry is
    ≤ max_abs count (the entry-bounded ε-rank); then no rank may pass, and k is None."""
    X = np.where(mask, np.asarray(values, np.float64), 0.0)
    W = np.asarray(mask, bool)
    rng = np.random.default_rng(seed)
    if not W.any():
        return 0, {0: 0.0}
    best = {0: float(np.mean(X[W] ** 2))}
    if best[0] <= eps:
        return 0, best
    for k in range(1, min(X.shape) + 1):
        best[k] = min(_als_best(X, W, k, rng, n_iter, max_abs) for _ in range(restarts))
        if best[k] <= eps:
            return k, best
    return (min(X.shape) if max_abs is None else None), best


def assert_eps_lower_bound(bound, R, eps: float, label: int | str = 0) -> int:
    """Re-check an :class:`rankkit.bounds.EpsRankLowerBound` on ``R`` (the matrix it was
    computed on, Ω₂ for an estimate) at tolerance ``eps``; returns the proved bound."""
    from rankkit.matrix import as_reward_matrix

    R = as_reward_matrix(R)
    assert bound.eps == float(eps), f"bound is for eps = {bound.eps}, not {eps}"
    assert bound.n_cells == R.nnz, f"bound divides by {bound.n_cells} cells, the matrix has {R.nnz}"
    proved = bound.verify(R, label)
    assert proved >= bound.lower, (proved, bound.lower)
    return proved


def assert_rank_lower_bound(bound, R, label: int | str = 0) -> int:
    """Re-check a :class:`rankkit.bounds.RankLowerBound` (exact, ε = 0) on ``R``."""
    proved = bound.verify(R, label)
    assert proved >= bound.lower, (proved, bound.lower)
    return proved


def assert_estimate_brackets(est, R, label: int | str = 0) -> None:
    """Re-check every end of a :class:`rankkit.MinRankEstimate`'s two brackets on the matrix
    ``R`` = P_Ω(R) it was computed from (dense arithmetic; small matrices):

    - exact: the structural certificates prove ``exact_lower``; ``exact_lower ≤ exact_upper``;
    - ε: the blocks prove ``eps_lower`` on Ω₂; the certificate's MSE over Ω₂ is ≤ ε (from its
      factors, densely); when the single-entry rows were appended (``omega_extension``), the
      factors of :func:`rankkit.omega.omega_factors` have squared error ≤ ε :math:`|Ω₂|` over all of
      Ω and rank ≤ ``upper``; otherwise ``upper`` is ``rank_certified`` + 1 (Lemma 3).
    """
    from rankkit.matrix import as_reward_matrix
    from rankkit.omega import omega_factors, reduce_omega2

    R = as_reward_matrix(R)
    R2 = reduce_omega2(R)
    if est.bounds is not None:
        assert est.bounds.verify(R, label) >= est.exact_lower
    if est.exact_upper is not None:
        assert est.exact_lower <= est.exact_upper, (est.exact_lower, est.exact_upper)
    if est.eps_bounds is not None:
        assert_eps_lower_bound(est.eps_bounds, R2, est.eps, label)
    if est.upper is None:
        return
    assert est.eps_lower <= est.rank_certified <= est.upper <= est.rank_certified + 1
    budget = est.eps * R2.nnz
    cert = est.certificate
    if cert is None:
        assert est.rank_certified == 0
        return
    X = R2.to_scipy(label).toarray()
    M = (np.asarray(cert.U) * np.asarray(cert.d)) @ np.asarray(cert.V).T
    sse2 = float(np.sum((X - M)[R2.rows, R2.indices] ** 2))
    assert sse2 <= budget, f"certificate misses ε on Ω₂: {sse2 / R2.nnz} > {est.eps}"
    assert np.linalg.matrix_rank(M) <= est.rank_certified
    ext = est.omega_extension or {}
    if est.upper == est.rank_certified and est.single_rows_nonzero:
        assert ext.get("appended"), "upper dropped Lemma 3's + 1 without an extension"
        A, B = omega_factors(R, cert.U, cert.d, cert.V, label=label)
        full = A @ B.T
        rows = np.repeat(np.arange(R.shape[0]), R.row_nnz)
        sse = float(np.sum((R.label_values(label) - full[rows, R.indices]) ** 2))
        assert sse <= budget, f"the extension misses the budget over Ω: {sse} > {budget}"
        assert np.linalg.matrix_rank(full) <= est.upper
