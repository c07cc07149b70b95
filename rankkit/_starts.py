"""Starting points of the fixed-rank solver (:mod:`rankkit.lowrank`): the spectral start
(top-k SVD of P_Ω(X), rescaled by least squares), random starts and warm starts from any
:class:`~rankkit.LowRankFit`; NumPy, since the data are on the host.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from ._kernels import sampled_dot
from ._lrkernels import svd_form
from .factors import LowRankFit


def _fit_scale(indptr, indices, x, U, V, chunk: int = 1 << 20) -> np.ndarray:
    """s minimising ‖x − Σ_t s_t U_{i t} V_{j t}‖ over Ω (k × k normal equations)."""
    FtF, Ftx = _scale_normal(indptr, indices, x, U, V, chunk)
    return np.linalg.lstsq(FtF, Ftx, rcond=None)[0]


def _scale_normal(indptr, indices, x, U, V, chunk: int = 1 << 20):
    """FᵀF and Fᵀx of :func:`_fit_scale`, F_{p t} = U_{i t} V_{j t} for cell p = (i, j): sums
    over cells (the sharded start sums them over ranks)."""
    k = U.shape[1]
    rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    FtF, Ftx = np.zeros((k, k)), np.zeros(k)
    step = max(1, chunk // max(k, 1))
    for a in range(0, x.size, step):
        F = U[rows[a:a + step]] * V[indices[a:a + step]]
        FtF += F.T @ F
        Ftx += F.T @ x[a:a + step]
    return FtF, Ftx


def _top_svd(S: sp.csr_matrix, k: int, rng: np.random.Generator):
    """Top-k singular triplets of a sparse matrix, singular values descending."""
    n, m = S.shape
    if k == 0:
        return np.zeros((n, 0)), np.zeros(0), np.zeros((m, 0))
    # A dense SVD costs O(n m min(n, m)): 1 s at 1,018 × 2,624 (vader:tweets Ω₂), paid by
    # every spectral and padded start, where Lanczos on the sparse matrix takes milliseconds.
    # Dense only where it is tiny or where k is too close to min(n, m) for ARPACK.
    if k >= min(n, m) // 2 or n * m <= 250_000:
        u, s, vt = np.linalg.svd(S.toarray(), full_matrices=False)
        return u[:, :k], s[:k], vt[:k].T
    from scipy.sparse.linalg import svds

    u, s, vt = svds(S, k=k, v0=rng.standard_normal(min(n, m)))
    o = np.argsort(-s)
    return u[:, o], s[o], vt[o].T


def _signed(U, s, V):
    """Flip columns so that every s ≥ 0 (the SVD form)."""
    neg = s < 0
    V = V.copy()
    V[:, neg] *= -1
    return U, np.abs(s), V


def _spectral_start(indptr, indices, x, shape, k, rng):
    n, m = shape
    p = max(x.size, 1) / (n * m)
    S = sp.csr_matrix((x / p, indices, indptr), shape=shape)
    U, _, V = _top_svd(S, k, rng)
    # Symmetric patterns (a triangle, a block design) make the top singular subspace a
    # critical point of f that is not a minimum: every solver would stay on it. A small
    # random tilt of both subspaces (1e-2 of each column's norm) breaks the symmetry and
    # keeps the start's quality.
    U = np.linalg.qr(U + 1e-2 * rng.standard_normal(U.shape) / math.sqrt(n))[0]
    V = np.linalg.qr(V + 1e-2 * rng.standard_normal(V.shape) / math.sqrt(m))[0]
    s = _fit_scale(indptr, indices, x, U, V)
    return _signed(U, s, V)


def _random_start(indptr, indices, x, shape, k, rng):
    n, m = shape
    U = np.linalg.qr(rng.standard_normal((n, k)))[0]
    V = np.linalg.qr(rng.standard_normal((m, k)))[0]
    s = _fit_scale(indptr, indices, x, U, V)
    return _signed(U, s, V)


def _warm(warm_start, indptr, indices, x, shape, k, rng):
    n, m = shape
    if isinstance(warm_start, LowRankFit):
        u, d, v = warm_start.U, warm_start.d, warm_start.V
    elif isinstance(warm_start, dict):
        keys = {key.lower(): val for key, val in warm_start.items()}
        missing = [key for key in ("u", "d", "v") if key not in keys]
        if missing:
            raise ValueError(f"warm_start dict needs 'u' (n×j), 'd' (j,) and 'v' (m×j); missing {missing}")
        u, d, v = keys["u"], keys["d"], keys["v"]
    else:
        raise TypeError(f"warm_start must be None, a LowRankFit (SoftImputeResult, FixedRankResult) or a dict with 'u', 'd', 'v'; "
                        f"got {type(warm_start).__name__}")
    u, d, v = (np.asarray(a, dtype=np.float64) for a in (u, d, v))
    d = d.reshape(-1)
    if u.ndim != 2 or v.ndim != 2 or u.shape != (n, d.size) or v.shape != (m, d.size):
        raise ValueError(f"warm_start shapes u {u.shape}, d {d.shape}, v {v.shape} do not fit a {n}×{m} "
                         f"matrix: need u (n, j), d (j,), v (m, j) with n={n}, m={m}")
    o = np.argsort(-np.abs(d), kind="stable")
    u, d, v = u[:, o], d[o], v[:, o]
    if d.size >= k:
        A, B = u[:, :k] * d[:k], v[:, :k]
    else:
        # pad with the top singular triplets of the rescaled residual P_Ω(X − M)/p
        pred = sampled_dot(indptr, indices, u * d, v) if d.size else np.zeros(x.size)
        p = max(x.size, 1) / (n * m)
        Ur, sr, Vr = _top_svd(sp.csr_matrix(((x - pred) / p, indices, indptr), shape=shape), k - d.size, rng)
        sr = sr * p  # the residual's own scale on Ω (its singular vectors came from the rescaled one)
        A, B = np.hstack([u * d, Ur * sr]), np.hstack([v, Vr])
    return svd_form(A, B)


