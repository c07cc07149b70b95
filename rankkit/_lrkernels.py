"""Thin backend kernels of the fixed-rank solver (:mod:`rankkit.lowrank`).

The algorithm is written once against this small interface; a backend only supplies the
operations that touch the observed cells Ω (CSR pattern ``indptr``, ``indices``, values x):

``sampled(A, B) -> (nnz,)``
    (A Bᵀ)_{ij} for every (i, j) ∈ Ω, in CSR order — P_Ω(A Bᵀ) without the n × m product;
``spmm(v, Q) -> (n, k)`` and ``spmm_t(v, P) -> (m, k)``
    Z Q and Zᵀ P for the sparse Z with values v on Ω (``spmm_t`` is a sum over rows: the
    algorithm completes it with ``rsum``, the sharded kernels leave it partial);
``solve_rows(Q, rho) -> (n, k)`` and ``solve_cols(P, rho) -> (m, k)``
    the exact per-row (per-column) ridge least squares of ALS,
    u_i = argmin_u ‖x_{S_i} − Q_{S_i} u‖² + ρ‖u‖², minimum-norm when ρ = 0 and |S_i| < k;

plus the dense helpers the algorithm needs (``qr``, ``svd``, ``cat``, ``vdot`` …), so that
NumPy and torch (CPU or CUDA) arrays flow through the same code. Nothing here forms an
n × m array.

NumPy: numba kernels, parallel over rows (``sampled`` is :func:`rankkit._kernels.sampled_dot`;
the column operations are the row kernels run on a CSR copy of the transposed pattern).
Torch: ``torch.sparse.sampled_addmm`` (SDDMM; cuSPARSE on CUDA), CSR × dense products, and
batched ``torch.linalg`` Cholesky solves of the per-row Gram matrices (pseudo-inverse where
a Gram matrix is singular).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from numba import njit, prange

from ._backend import to_numpy
from ._cgkernel import gn_cg as fused_gn_cg
from ._kernels import _SERIAL_WORK, _nnz_bounds, _par_ser, sampled_dot
from .matrix import transpose_pattern

__all__ = ["make_lr_kernels", "ridge_rows_reference", "spmm_reference", "svd_form"]


# ---- numba kernels -------------------------------------------------------------------

def _spmm_rows_py(bounds, indptr, indices, v, Q, out):
    """out[a] = Σ_{p in row a} v[p] Q[indices[p]]  (CSR × dense, one thread per row block)."""
    k = Q.shape[1]
    for c in prange(bounds.size - 1):
        acc = np.empty(k)
        for a in range(bounds[c], bounds[c + 1]):
            # a register/L1 accumulator: no store-to-load chain through out[a] per cell
            for t in range(k):
                acc[t] = 0.0
            for p in range(indptr[a], indptr[a + 1]):
                b = indices[p]
                w = v[p]
                for t in range(k):
                    acc[t] += w * Q[b, t]
            for t in range(k):
                out[a, t] = acc[t]


def _sampled2_py(bounds, indptr, indices, A1, B1, A2, B2, out):
    """out[p] = A1[a]·B1[b] + A2[a]·B2[b] for cell p = (a, b): P_Ω of a tangent vector
    A1 B1ᵀ + A2 B2ᵀ without concatenating the factors."""
    k1 = A1.shape[1]
    k2 = A2.shape[1]
    for c in prange(bounds.size - 1):
        for a in range(bounds[c], bounds[c + 1]):
            for p in range(indptr[a], indptr[a + 1]):
                b = indices[p]
                s = 0.0
                for t in range(k1):
                    s += A1[a, t] * B1[b, t]
                for t in range(k2):
                    s += A2[a, t] * B2[b, t]
                out[p] = s


@njit(cache=True)
def _chol_solve(L, y, rho) -> bool:
    """Solve (L + ρI) u = y in place (u overwrites y) for a symmetric L given by its lower
    triangle, by an in-place lower Cholesky of L + ρI; False, with L and y spoilt, when a
    pivot is at or below 1e-10 × the largest diagonal entry of L + ρI (the caller then takes
    a minimum-norm solution). One copy for the ridge rows and the sharded column pass, so
    both decide well-posedness by the same rule."""
    k = y.shape[0]
    dmax = 0.0
    for s in range(k):
        L[s, s] += rho
        if L[s, s] > dmax:
            dmax = L[s, s]
    if not dmax > 0.0:
        return False
    for j in range(k):
        d = L[j, j]
        for t in range(j):
            d -= L[j, t] * L[j, t]
        if d <= 1e-10 * dmax:
            return False
        d = np.sqrt(d)
        L[j, j] = d
        for i in range(j + 1, k):
            e = L[i, j]
            for t in range(j):
                e -= L[i, t] * L[j, t]
            L[i, j] = e / d
    for i in range(k):  # forward: L y = b
        e = y[i]
        for t in range(i):
            e -= L[i, t] * y[t]
        y[i] = e / L[i, i]
    for i in range(k - 1, -1, -1):  # backward: Lᵀ u = y
        e = y[i]
        for t in range(i + 1, k):
            e -= L[t, i] * y[t]
        y[i] = e / L[i, i]
    return True


def _ridge_rows_py(bounds, indptr, indices, x, Q, rho, out):
    """Per row a: out[a] = argmin_u ‖x_S − Q_S u‖² + ρ‖u‖², S the row's cells.

    Normal equations (Q_Sᵀ Q_S + ρI) u = Q_Sᵀ x_S by Cholesky when every pivot is above
    1e-10 × the largest diagonal entry (well-posed: ρ > 0 or |S| ≥ k with Q_S of full
    column rank); otherwise the minimum-norm least-squares solution of the stacked system
    [Q_S; √ρ I] u = [x_S; 0] by LAPACK's SVD-based ``gelsd`` (ρ = 0: the minimum-norm solution
    of an under-determined row)."""
    k = Q.shape[1]
    for c in prange(bounds.size - 1):
        G = np.empty((k, k))
        b = np.empty(k)
        for a in range(bounds[c], bounds[c + 1]):
            lo = indptr[a]
            hi = indptr[a + 1]
            if hi == lo:
                for t in range(k):
                    out[a, t] = 0.0
                continue
            for s in range(k):
                b[s] = 0.0
                for t in range(k):
                    G[s, t] = 0.0
            for p in range(lo, hi):
                q = indices[p]
                xv = x[p]
                for s in range(k):
                    qs = Q[q, s]
                    b[s] += xv * qs
                    for t in range(s + 1):
                        G[s, t] += qs * Q[q, t]
            # ρ = 0 with fewer cells than k: G has rank < k exactly, and rounding can still
            # lift every pivot above the rule's bar (a non-minimum-norm answer), so such a row
            # goes straight to the minimum-norm solve
            if (rho > 0.0 or hi - lo >= k) and _chol_solve(G, b, rho):
                for t in range(k):
                    out[a, t] = b[t]
            else:
                L = hi - lo
                extra = k if rho > 0.0 else 0
                A = np.zeros((L + extra, k))
                y = np.zeros(L + extra)
                for p in range(lo, hi):
                    for t in range(k):
                        A[p - lo, t] = Q[indices[p], t]
                    y[p - lo] = x[p]
                if extra:
                    sr = np.sqrt(rho)
                    for t in range(k):
                        A[L + t, t] = sr
                sol = np.linalg.lstsq(A, y)[0]
                for t in range(k):
                    out[a, t] = sol[t]


def _normal_rows_py(bounds, indptr, indices, x, Q, G, b):
    """Per row a: G[a] = Q_Sᵀ Q_S (lower triangle, then mirrored) and b[a] = Q_Sᵀ x_S, S the
    row's cells: the normal equations of the ridge solve, before ρ. Summed over the row
    shards of a process group they are the column pass of the sharded ALS."""
    k = Q.shape[1]
    for c in prange(bounds.size - 1):
        for a in range(bounds[c], bounds[c + 1]):
            for s in range(k):
                b[a, s] = 0.0
                for t in range(k):
                    G[a, s, t] = 0.0
            for p in range(indptr[a], indptr[a + 1]):
                q = indices[p]
                xv = x[p]
                for s in range(k):
                    qs = Q[q, s]
                    b[a, s] += xv * qs
                    for t in range(s + 1):
                        G[a, s, t] += qs * Q[q, t]
            for s in range(k):
                for t in range(s):
                    G[a, t, s] = G[a, s, t]


def _solve_normal_py(G, b, rho, out, ok):
    """out[a] = (G[a] + ρI)⁻¹ b[a] by ``_chol_solve``, the pivot rule of ``_ridge_rows_py``
    (every pivot above 1e-10 × the largest diagonal entry); ok[a] = False where it fails
    (the caller then takes the pseudo-inverse: the minimum-norm solution)."""
    n, k = b.shape
    for a in prange(n):
        L = np.empty((k, k))
        y = np.empty(k)
        for s in range(k):
            y[s] = b[a, s]
            for t in range(s + 1):
                L[s, t] = G[a, s, t]
        ok[a] = _chol_solve(L, y, rho)
        if ok[a]:
            for t in range(k):
                out[a, t] = y[t]


_spmm_par, _spmm_ser = _par_ser(_spmm_rows_py)
_sampled2_par, _sampled2_ser = _par_ser(_sampled2_py)
# No fastmath for the solves: the Cholesky pivots decide the branch, keep them IEEE-exact.
_ridge_par = njit(parallel=True, cache=True)(_ridge_rows_py)
_normal_par = njit(parallel=True, cache=True)(_normal_rows_py)
_solve_normal_par = njit(parallel=True, cache=True)(_solve_normal_py)


# ---- slow obvious references (tests) -------------------------------------------------

def spmm_reference(indptr, indices, v, Q) -> np.ndarray:
    """Z Q by SciPy, Z the CSR matrix with values v."""
    n = indptr.size - 1
    return sp.csr_matrix((v, indices, indptr), shape=(n, Q.shape[0])) @ Q


def ridge_rows_reference(indptr, indices, x, Q, rho) -> np.ndarray:
    """Row by row with ``np.linalg.lstsq`` on [Q_S; √ρ I] u = [x_S; 0] (minimum norm)."""
    n, k = indptr.size - 1, Q.shape[1]
    out = np.zeros((n, k))
    for a in range(n):
        S = slice(indptr[a], indptr[a + 1])
        if indptr[a + 1] == indptr[a]:
            continue
        A = np.vstack([Q[indices[S]], np.sqrt(rho) * np.eye(k)]) if rho > 0 else Q[indices[S]]
        y = np.concatenate([x[S], np.zeros(k)]) if rho > 0 else x[S]
        out[a] = np.linalg.lstsq(A, y, rcond=None)[0]
    return out


# ---- backend objects -----------------------------------------------------------------

def svd_form(A, B, qr=np.linalg.qr, svd=np.linalg.svd, qr_b=None):
    """(U, s, V) with U diag(s) Vᵀ = A Bᵀ and U, V orthonormal: QR of both thin factors, then
    the SVD of the small core R_A R_Bᵀ. ``qr`` and ``svd`` are a backend's (NumPy by default,
    a kernel object's ``qr`` / ``svd`` for torch); ``qr_b`` (default ``qr``) factors B, so
    that a row-sharded A can take a TSQR while the replicated B takes a local QR."""
    Qa, Ra = qr(A)
    Qb, Rb = (qr if qr_b is None else qr_b)(B)
    W, s, Zt = svd(Ra @ Rb.T)
    return Qa @ W, s, Qb @ Zt.T


def _unflat(f, shapes):
    """Views of a flat NumPy or torch vector as consecutive blocks of the given 2-D shapes."""
    out, at = [], 0
    for sh in shapes:
        size = sh[0] * sh[1]
        out.append(f[at:at + size].reshape(sh))
        at += size
    return tuple(out)


class _LRKernels:
    """Shared part of the backends, including the *reduction hooks*: every quantity of the
    solvers is row-local (rows of U, Z V, the residual on a row's cells), replicated (V, s,
    the k × k cores) or a sum over rows. The sums go through the hooks below, which are
    plain products in one process and all-reduces over the row shards of a process group
    (:class:`rankkit.distributed.lowrank.ShardedLRKernels`): the algorithm is written once."""

    def to_numpy(self, a) -> np.ndarray:
        """Host float64 copy (results and checkpoints are float64 whatever the solve dtype)."""
        return to_numpy(a, np.float64)

    def rgram(self, X, Y):
        """Xᵀ Y for two row-partitioned factors (a sum over rows)."""
        return X.T @ Y

    def rsum(self, *parts):
        """Partial sums over this object's rows, completed over all rows: ``parts`` as they
        are in one process; ``spmm_t`` results and products such as Uᵀ Z V are such sums."""
        return parts

    def qr_rows(self, a):
        """Thin QR of a row-partitioned factor (a TSQR over the row shards)."""
        return self.qr(a)

    def tangent_ip(self, a, b) -> float:
        """⟨a, b⟩ of two tangent vectors (M, U_p, V_p): only U_p is row-partitioned."""
        return sum(self.vdot(p, q) for p, q in zip(a, b, strict=True))

    def flat_ip(self, a, b) -> float:
        """⟨a, b⟩ of two tangent vectors stored flat, [M | U_p | V_p]."""
        return self.vdot(a, b)

    def fuses_gn_cg(self, k: int) -> bool:
        """Whether :meth:`gn_cg` runs the LM inner solve in one compiled loop at rank k (else
        the solver's Python-level CG over these kernels)."""
        return False

    def short_fractions(self, k: int) -> tuple[float, float]:
        """Fractions of the rows and of the columns with fewer than k observed cells."""
        rows = np.diff(self.to_numpy(self.row_ptr()))
        cols = np.diff(self.to_numpy(self.col_ptr()))
        return float(np.mean(rows < k)), float(np.mean(cols < k))


class NumpyLRKernels(_LRKernels):
    """NumPy + numba kernels (float64)."""

    name = "numpy"

    def __init__(self, indptr, indices, x, shape):
        self.shape = tuple(shape)
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(indices, dtype=np.int32)
        self.x = np.ascontiguousarray(x, dtype=np.float64)
        self.t_indptr, self.t_indices, self.perm = transpose_pattern(self.indptr, self.indices, shape)
        self.t_x = self.x[self.perm]
        self._b = _nnz_bounds(self.indptr)
        self._tb = _nnz_bounds(self.t_indptr)

    def row_ptr(self):
        return self.indptr

    def col_ptr(self):
        return self.t_indptr

    # Ω operations
    def sampled(self, A, B):
        return sampled_dot(self.indptr, self.indices, A, B)

    def sampled2(self, A1, B1, A2, B2):
        """P_Ω(A1 B1ᵀ + A2 B2ᵀ) values."""
        c = np.ascontiguousarray
        out = np.empty(self.indices.size)
        work = self.indices.size * (A1.shape[1] + A2.shape[1])
        kern = _sampled2_par if work >= _SERIAL_WORK else _sampled2_ser
        kern(self._b, self.indptr, self.indices, c(A1), c(B1), c(A2), c(B2), out)
        return out

    def _spmm(self, bounds, indptr, indices, v, Q, n):
        Q = np.ascontiguousarray(Q)
        out = np.empty((n, Q.shape[1]))
        kern = _spmm_par if indices.size * Q.shape[1] >= _SERIAL_WORK else _spmm_ser
        kern(bounds, indptr, indices, np.ascontiguousarray(v), Q, out)
        return out

    def spmm(self, v, Q):
        return self._spmm(self._b, self.indptr, self.indices, v, Q, self.shape[0])

    def spmm_t(self, v, P):
        return self._spmm(self._tb, self.t_indptr, self.t_indices, v[self.perm], P, self.shape[1])

    def solve_rows(self, Q, rho):
        out = np.empty((self.shape[0], Q.shape[1]))
        _ridge_par(self._b, self.indptr, self.indices, self.x, np.ascontiguousarray(Q), float(rho), out)
        return out

    def solve_cols(self, P, rho):
        out = np.empty((self.shape[1], P.shape[1]))
        _ridge_par(self._tb, self.t_indptr, self.t_indices, self.t_x, np.ascontiguousarray(P),
                   float(rho), out)
        return out

    def col_normal(self, P):
        """(G, b): per column j, Pᵀ_{S_j} P_{S_j} (m × k × k) and Pᵀ_{S_j} x_{S_j} (m × k) over
        this object's cells (the column pass of the sharded ALS sums them over ranks)."""
        m, k = self.shape[1], P.shape[1]
        G, b = np.empty((m, k, k)), np.empty((m, k))
        _normal_par(self._tb, self.t_indptr, self.t_indices, self.t_x, np.ascontiguousarray(P), G, b)
        return G, b

    def solve_normal(self, G, b, rho):
        """(G_j + ρI)⁻¹ b_j per row j by Cholesky; the pseudo-inverse (minimum norm) where a
        pivot is below 1e-10 × the largest diagonal entry."""
        G, b = np.ascontiguousarray(G), np.ascontiguousarray(b)
        out = np.zeros(b.shape)
        ok = np.empty(b.shape[0], dtype=np.bool_)
        _solve_normal_par(G, b, float(rho), out, ok)
        bad = np.flatnonzero(~ok)
        if bad.size:
            Gb = G[bad] + rho * np.eye(b.shape[1])
            out[bad] = (np.linalg.pinv(Gb, hermitian=True) @ b[bad][:, :, None])[:, :, 0]
        return out

    def fuses_gn_cg(self, k: int) -> bool:
        # the serial/parallel rule of every kernel here: above it, the parallel kernels win
        return self.indices.size * k < _SERIAL_WORK

    def gn_cg(self, U, V, g, mu, cg_iter, cg_tol):
        """The LM step of :func:`rankkit._tangent._gn_cg` by the compiled loop
        :func:`rankkit._cgkernel.gn_cg` (None when g = 0)."""
        shapes = [a.shape for a in g]
        gf = self.flat(g)
        if not np.any(gf):
            return None
        return self.unflat(fused_gn_cg(self, U, V, gf, mu, cg_iter, cg_tol), shapes)

    # dense helpers
    def asarray(self, a):
        return np.ascontiguousarray(a, dtype=np.float64)

    def observed(self):
        return self.x

    def qr(self, a):
        return scipy.linalg.qr(a, mode="economic", check_finite=False)

    def svd(self, a):
        u, s, vt = np.linalg.svd(a)
        return u, s, vt

    def cat(self, arrays):
        return np.hstack(arrays)

    def stack_rows(self, arrays):
        return np.vstack(arrays)

    def zeros(self, *shape):
        return np.zeros(shape)

    def eye(self, k):
        return np.eye(k)

    def vdot(self, a, b) -> float:
        return float(np.vdot(a, b))

    def flat(self, parts):
        return np.concatenate([np.ravel(a) for a in parts])

    def unflat(self, f, shapes):
        return _unflat(f, shapes)

    def diag(self, s):
        return np.diag(s)

    def abs_sum(self, s) -> float:
        return float(np.abs(s).sum())


class TorchLRKernels(_LRKernels):
    """torch kernels (CPU or CUDA, float64): SDDMM, CSR × dense, batched Cholesky solves."""

    name = "torch"
    _CHUNK = 1 << 22  # cells per chunk of the Gram accumulation (bounds the nnz·k² temporary)

    def __init__(self, indptr, indices, x, shape, device):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.shape = tuple(shape)
        t_indptr, t_indices, perm = transpose_pattern(np.asarray(indptr, np.int64),
                                                       np.asarray(indices, np.int32), shape)
        dev = self.device
        self.ptr = torch.as_tensor(np.asarray(indptr, np.int64), device=dev)
        self.idx = torch.as_tensor(np.asarray(indices, np.int64), device=dev)
        self.tptr = torch.as_tensor(t_indptr, device=dev)
        self.tidx = torch.as_tensor(t_indices.astype(np.int64), device=dev)
        self.perm = torch.as_tensor(perm, device=dev)
        self.x = torch.as_tensor(np.asarray(x, np.float64), device=dev)
        self.t_x = self.x[self.perm]
        self.rows = torch.repeat_interleave(torch.arange(self.shape[0], device=dev),
                                            torch.diff(self.ptr))
        self.trows = torch.repeat_interleave(torch.arange(self.shape[1], device=dev),
                                             torch.diff(self.tptr))
        self._pattern = self._csr(self.ptr, self.idx, self.x, self.shape)

    def _csr(self, ptr, idx, v, shape):
        with warnings.catch_warnings():  # torch flags sparse CSR as "beta" in every process
            warnings.simplefilter("ignore", UserWarning)
            return self.torch.sparse_csr_tensor(ptr, idx, v, size=shape, check_invariants=False)

    def row_ptr(self):
        return self.ptr

    def col_ptr(self):
        return self.tptr

    def sampled(self, A, B):
        return self.torch.sparse.sampled_addmm(self._pattern, A.contiguous(), B.T.contiguous(),
                                               beta=0.0, alpha=1.0).values()

    def sampled2(self, A1, B1, A2, B2):
        return self.sampled(self.torch.cat([A1, A2], dim=1), self.torch.cat([B1, B2], dim=1))

    def spmm(self, v, Q):
        return self._csr(self.ptr, self.idx, v, self.shape) @ Q

    def spmm_t(self, v, P):
        return self._csr(self.tptr, self.tidx, v[self.perm], self.shape[::-1]) @ P

    def _normal(self, rows, idx, x, Q, n):
        torch = self.torch
        k = Q.shape[1]
        G = torch.zeros((n, k, k), dtype=Q.dtype, device=Q.device)
        b = torch.zeros((n, k), dtype=Q.dtype, device=Q.device)
        step = max(1, self._CHUNK // max(k * k, 1))
        for s in range(0, idx.numel(), step):
            q = Q[idx[s:s + step]]
            G.index_add_(0, rows[s:s + step], q[:, :, None] * q[:, None, :])
            b.index_add_(0, rows[s:s + step], x[s:s + step, None] * q)
        return G, b

    def col_normal(self, P):
        """(G, b) of the column pass over this object's cells (as NumpyLRKernels.col_normal)."""
        return self._normal(self.trows, self.tidx, self.t_x, P, self.shape[1])

    def _solve(self, rows, idx, x, Q, rho, n):
        return self.solve_normal(*self._normal(rows, idx, x, Q, n), rho)

    def solve_normal(self, G, b, rho):
        torch = self.torch
        k = b.shape[1]
        G = G + rho * torch.eye(k, dtype=b.dtype, device=b.device)
        L, info = torch.linalg.cholesky_ex(G)
        out = torch.cholesky_solve(b[:, :, None], L)[:, :, 0]
        # a Cholesky pivot may also be tiny but positive: treat it as singular (as on numpy)
        dmax = torch.diagonal(G, dim1=1, dim2=2).amax(1)
        piv = torch.diagonal(L, dim1=1, dim2=2).amin(1) ** 2
        bad = (info != 0) | ~(piv > 1e-10 * dmax)
        if bool(bad.any()):
            # minimum-norm solution: pinv(Q_Sᵀ Q_S + ρI) Q_Sᵀ x_S
            out[bad] = (torch.linalg.pinv(G[bad], hermitian=True) @ b[bad][:, :, None])[:, :, 0]
        return out

    def solve_rows(self, Q, rho):
        return self._solve(self.rows, self.idx, self.x, Q, rho, self.shape[0])

    def solve_cols(self, P, rho):
        return self._solve(self.trows, self.tidx, self.t_x, P, rho, self.shape[1])

    def asarray(self, a):
        return self.torch.as_tensor(np.asarray(a, dtype=np.float64), device=self.device).contiguous()

    def observed(self):
        return self.x

    def qr(self, a):
        return self.torch.linalg.qr(a)

    def svd(self, a):
        return self.torch.linalg.svd(a)

    def cat(self, arrays):
        return self.torch.cat(arrays, dim=1)

    def stack_rows(self, arrays):
        return self.torch.cat(arrays, dim=0)

    def zeros(self, *shape):
        return self.torch.zeros(shape, dtype=self.torch.float64, device=self.device)

    def eye(self, k):
        return self.torch.eye(k, dtype=self.torch.float64, device=self.device)

    def vdot(self, a, b) -> float:
        return float((a * b).sum())

    def flat(self, parts):
        return self.torch.cat([a.reshape(-1) for a in parts])

    def unflat(self, f, shapes):
        return _unflat(f, shapes)

    def diag(self, s):
        return self.torch.diag(s)

    def abs_sum(self, s) -> float:
        return float(s.abs().sum())


def make_lr_kernels(backend: str, device, indptr, indices, x, shape):
    if backend == "numpy":
        return NumpyLRKernels(indptr, indices, x, shape)
    if backend == "torch":
        return TorchLRKernels(indptr, indices, x, shape, device)
    raise ValueError(f"the fixed-rank solver runs on backend='numpy' or 'torch' (CPU or CUDA); "
                     f"got {backend!r}. CuPy users: pass backend='torch', device='cuda'")
