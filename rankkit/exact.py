r"""The constructive, λ-free exact completion at the rank cap (paper 002, §3.1, Definition 1).

Any partially observed matrix has an *exact* completion of rank

.. math::

    c = \min\bigl(n, m, \max_i |S_i|, \max_j |T_j|\bigr),
    \qquad S_i = \{j : (i, j) \in \Omega\},\ T_j = \{i : (i, j) \in \Omega\}:

pick a generic V ∈ ℝ^{m×c}; each row's system u_i V_{S_i}ᵀ = x_{S_i} has :math:`|S_i|` ≤ c equations
and, almost surely, full row rank, so it is solvable (and the same on the columns).
:func:`rankkit.estimate_min_rank` falls back on it when no fitted certificate reaches ε.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._lrkernels import svd_form
from .matrix import RewardMatrix

__all__ = ["exact_completion", "rank_cap"]


def rank_cap(R2: RewardMatrix) -> int:
    """c = min(n, m, longest row, longest column) of Ω: a rank at which an exact completion
    always exists (module docstring); 0 when Ω is empty."""
    if R2.nnz == 0:
        return 0
    row_max = int(R2.row_nnz.max())
    col_max = int(np.bincount(R2.indices, minlength=R2.shape[1]).max())
    return min(R2.shape[0], R2.shape[1], row_max, col_max)


def _solve_rows_exactly(indptr, indices, vals, G: np.ndarray, chunk_elems: int) -> np.ndarray:
    """Per-row minimum-norm solutions u_i of G[S_i] u_i = x_{S_i} (S_i: row i's cells).

    Rows are batched by their length L: for a batch, A = G[S] (g × L × k) with L ≤ k, and
    Aᵀ = Q Rᵣ (QR, Q: k × L) gives u = Q z with Rᵣᵀ z = x, the minimum-norm solution
    (backward stable; no normal equations). Memory per batch ≤ ``chunk_elems`` floats."""
    n, k = len(indptr) - 1, G.shape[1]
    lengths = np.diff(indptr)
    U = np.zeros((n, k))
    for L in np.unique(lengths):
        L = int(L)
        if L == 0:
            continue
        rows_L = np.flatnonzero(lengths == L)
        step = max(1, chunk_elems // (L * k))
        for a in range(0, rows_L.size, step):
            rows = rows_L[a:a + step]
            cell = indptr[rows][:, None] + np.arange(L)  # (g, L) positions in the CSR arrays
            A = G[indices[cell]]  # (g, L, k)
            Q, Rr = np.linalg.qr(np.swapaxes(A, 1, 2))  # (g, k, L), (g, L, L)
            z = np.linalg.solve(np.swapaxes(Rr, 1, 2), vals[cell][..., None])  # (g, L, 1)
            U[rows] = (Q @ z)[..., 0]
    return U


def exact_completion(R2: RewardMatrix, rank: int | None = None, seed: int = 0, *,
                     label: int | str = 0, chunk_elems: int = 1 << 22):
    r"""An exact completion of P_Ω(R) of rank ≤ ``rank``: a constructive, λ-free certificate.

    Construction (row side, used when max_i :math:`|S_i|` ≤ k): draw a Gaussian V ∈ ℝ^{m×k}
    (seeded). Almost surely every submatrix V_{S_i} (:math:`|S_i|` × k, :math:`|S_i|` ≤ k) has full row
    rank, so u_i = V_{S_i}ᵀ (V_{S_i} V_{S_i}ᵀ)⁻¹ x_{S_i} (minimum-norm least squares,
    computed by QR) solves u_i V_{S_i}ᵀ = x_{S_i} exactly and U Vᵀ agrees with R on Ω.
    When only the columns are short (max_j :math:`|T_j|` ≤ k) the same is done on Rᵀ
    (:meth:`RewardMatrix.transpose`) with a Gaussian U. The factors are returned in SVD
    form (QR of both factors and an SVD of the k × k core) as a
    :class:`rankkit.LowRankFit` (neither solver's result) with ``lam = 0``, ``backend =
    "exact-completion"``; its ``mse`` over Ω is recomputed from those factors
    (:func:`rankkit.softimpute.observed_mse`), independently of the construction. In exact
    arithmetic it is 0; in float64 it is of order (ε_mach · κ · scale)², κ the conditioning of
    the Gaussian submatrices.

    Parameters
    ----------
    R2 : RewardMatrix
        Usually Ω₂ (:func:`rankkit.reduce_omega2`), but any P_Ω(R) works.
    rank : int, optional
        Target rank k; default the cap c (:func:`rank_cap`). Clipped to min(n, m); must be ≥
        the longest row or the longest column of Ω.
    seed : int
        Seed of the Gaussian factor (the same call gives the same factors).
    label : int or str
        Which response column.
    chunk_elems : int
        Floats held per batch of rows (memory bound).

    Returns
    -------
    LowRankFit
    """
    from .factors import LowRankFit
    from .softimpute import observed_mse

    n, m = R2.shape
    cap = rank_cap(R2)
    if rank is not None and (not isinstance(rank, numbers.Integral) or rank < 0):
        raise ValueError(f"rank must be a non-negative integer or None (the cap {cap}), got {rank!r}")
    k = cap if rank is None else min(int(rank), n, m)
    j = R2.label_index(label)
    vals = np.asarray(R2.label_values(j), dtype=np.float64)
    row_max = int(R2.row_nnz.max()) if n and R2.nnz else 0
    col_max = int(np.bincount(R2.indices, minlength=m).max()) if m and R2.nnz else 0
    if k < min(row_max, col_max):
        raise ValueError(f"an exact completion of rank {k} is not guaranteed: the longest row of Ω "
                         f"has {row_max} cells and the longest column {col_max}; pass rank ≥ "
                         f"{min(row_max, col_max)} (the cap) or leave rank=None")
    rng = np.random.default_rng(seed)
    if k == 0:  # Ω empty: the zero matrix is exact
        U, d, V, side = np.zeros((n, 0)), np.zeros(0), np.zeros((m, 0)), "none"
    else:
        if row_max <= k and (row_max <= col_max or col_max > k):
            B = rng.standard_normal((m, k))
            A = _solve_rows_exactly(R2.indptr, R2.indices, vals, B, chunk_elems)
            side = "rows"
        else:
            T = R2.transpose()
            A = rng.standard_normal((n, k))
            B = _solve_rows_exactly(T.indptr, T.indices, np.asarray(T.label_values(j), np.float64),
                                    A, chunk_elems)
            side = "columns"
        U, d, V = svd_form(A, B)
    mse = observed_mse(R2, (U, d, V), label=j)
    return LowRankFit(U=U, d=d, V=V, mse=mse, sse=mse * R2.nnz, objective=[], ratio=[],
                            n_iter=0, converged=True, lam=0.0, rank=int(k), shape=(n, m),
                            nnz=int(R2.nnz), thresh=0.0, backend="exact-completion",
                            meta={"seed": seed, "side": side, "cap": cap})
