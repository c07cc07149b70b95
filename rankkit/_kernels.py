"""Thin backend kernels for soft-impute on a fixed observation pattern Ω.

The algorithm (:mod:`rankkit.softimpute`) is written once against the small interface of
:class:`_Kernels`; each backend only supplies the operations that touch Ω:

``resid_rows(P, Q) -> (out, sse)``
    out = P_Ω(X − P Qᵀ) Q, shape (n, k), and sse = ‖P_Ω(X − P Qᵀ)‖²_F;
``resid_cols(P, Q) -> (out, sse)``
    out = P_Ω(X − Q Pᵀ)ᵀ Q, shape (m, k) (the same product on the transposed pattern);
``sse(P, Q)``
    ‖P_Ω(X − P Qᵀ)‖²_F without the product;

plus dense helpers (``thin_svd`` with QR first, conversions). Residuals live on Ω only:
no n×m array is ever formed.

NumPy: the residual and the sparse × dense product are *fused* in one numba pass over the
CSR pattern, parallel over blocks of equal nnz, so the residual vector is never written to
memory. The transposed product accumulates into one m×k buffer per thread (random access
stays in the small m-side factor); when those buffers would be too big, a CSC copy is used. Torch and CuPy: the residual values are
computed in chunks by gathering rows of P and Q, then multiplied by a CSR matrix
(``torch.sparse_csr_tensor`` / ``cupyx.scipy.sparse.csr_matrix``).
"""

from __future__ import annotations

import types
import warnings

import numba
import numpy as np
from numba import njit, prange

__all__ = ["sampled_dot", "sampled_dot_reference", "make_kernels"]


# ---- numba kernels ---------------------------------------------------------------------

def _sampled_dot_py(bounds, indptr, indices, A, B, out):
    k = A.shape[1]
    for c in prange(bounds.size - 1):
        for a in range(bounds[c], bounds[c + 1]):
            for p in range(indptr[a], indptr[a + 1]):
                b = indices[p]
                s = 0.0
                for t in range(k):
                    s += A[a, t] * B[b, t]
                out[p] = s


def _resid_mm_py(bounds, indptr, indices, x, P, Q, out, with_out):
    """out[a] = Σ_{p in row a} (x[p] − P[a]·Q[b]) Q[b]; returns Σ (x[p] − P[a]·Q[b])²."""
    k = P.shape[1]
    nchunk = bounds.size - 1
    part = np.zeros(nchunk)
    for c in prange(nchunk):
        acc = np.zeros(k, dtype=out.dtype)
        s2 = 0.0
        for a in range(bounds[c], bounds[c + 1]):
            for t in range(k):
                acc[t] = 0.0
            for p in range(indptr[a], indptr[a + 1]):
                b = indices[p]
                s = 0.0
                for t in range(k):
                    s += P[a, t] * Q[b, t]
                r = x[p] - s
                s2 += r * r
                if with_out:
                    for t in range(k):
                        acc[t] += r * Q[b, t]
            if with_out:
                for t in range(k):
                    out[a, t] = acc[t]
        part[c] = s2
    # Fixed chunk order: the sum is bitwise reproducible run to run (resume == uninterrupted).
    total = 0.0
    for c in range(nchunk):
        total += part[c]
    return total


def _resid_tmm_py(bounds, indptr, indices, x, A, B, acc):
    """Transposed product in CSR order: acc[c, b] += (x[p] − A[a]·B[b]) A[a] over the rows a
    of chunk c; returns the sse. Random access only touches B and acc[c] (m rows), which stay
    in cache when m ≪ n, unlike a CSC pass that gathers rows of the n×k factor."""
    k = A.shape[1]
    nchunk = bounds.size - 1
    part = np.zeros(nchunk)
    for c in prange(nchunk):
        s2 = 0.0
        for a in range(bounds[c], bounds[c + 1]):
            for p in range(indptr[a], indptr[a + 1]):
                b = indices[p]
                s = 0.0
                for t in range(k):
                    s += A[a, t] * B[b, t]
                r = x[p] - s
                s2 += r * r
                for t in range(k):
                    acc[c, b, t] += r * A[a, t]
        part[c] = s2
    total = 0.0
    for c in range(nchunk):
        total += part[c]
    return total


def _twin(py_func, suffix: str):
    """A copy of ``py_func`` under its own ``__qualname__``. Numba names its on-disk cache
    entries by qualname (not by the ``parallel`` flag), so the parallel and serial builds of
    one function must be distinct functions: with a shared name, whichever build is
    compiled first is loaded from the cache for both (a serial "parallel" kernel)."""
    f = types.FunctionType(py_func.__code__, py_func.__globals__, py_func.__name__ + suffix,
                           py_func.__defaults__, py_func.__closure__)
    f.__qualname__ = py_func.__qualname__ + suffix
    f.__doc__ = py_func.__doc__
    return f


def _par_ser(py_func):
    """(parallel build, serial build) of one kernel, cached on disk under separate names."""
    return (njit(parallel=True, cache=True)(_twin(py_func, "_par")),
            njit(parallel=False, cache=True)(_twin(py_func, "_ser")))


# Parallel and serial builds of the same kernels: below _SERIAL_WORK (nnz × k) the cost of
# waking the thread pool exceeds the work, most of all on a busy machine.
_SERIAL_WORK = 1 << 18
_sampled_dot_par, _sampled_dot_ser = _par_ser(_sampled_dot_py)
_resid_mm_par, _resid_mm_ser = _par_ser(_resid_mm_py)
_resid_tmm_par, _resid_tmm_ser = _par_ser(_resid_tmm_py)
# Largest per-thread accumulator set (threads × m × k × itemsize) for the CSR-order
# transposed product; above it the CSC copy is used instead.
_TMM_BYTES = 1 << 28


def _resid_mm(bounds, indptr, indices, x, P, Q, out, with_out):
    kern = _resid_mm_par if indices.size * P.shape[1] >= _SERIAL_WORK else _resid_mm_ser
    return kern(bounds, indptr, indices, x, P, Q, out, with_out)


def _nnz_bounds(indptr: np.ndarray, nchunks: int | None = None) -> np.ndarray:
    """Row boundaries of ``nchunks`` blocks holding about equal nnz (power-law rows would
    leave one thread with most of the work under an equal-row split)."""
    n = indptr.size - 1
    if nchunks is None:
        nchunks = 8 * numba.get_num_threads()
    nchunks = max(1, min(nchunks, n))
    targets = np.linspace(0, indptr[-1], nchunks + 1)
    b = np.searchsorted(indptr, targets, side="left").astype(np.int64)
    b[0], b[-1] = 0, n
    return np.unique(b)


def sampled_dot(indptr, indices, A, B) -> np.ndarray:
    """Values of P_Ω(A Bᵀ) on a CSR pattern: ``out[p] = A[row(p)] · B[indices[p]]``.

    Parameters
    ----------
    indptr : ndarray of int64, shape (n + 1,)
    indices : ndarray of int32, shape (nnz,)
    A : ndarray, shape (n, k)
    B : ndarray, shape (m, k)

    Returns
    -------
    ndarray, shape (nnz,), dtype of ``A``
        Same order as ``indices``. Cost O(nnz · k), memory O(nnz).
    """
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int32)
    A = np.ascontiguousarray(A)
    B = np.ascontiguousarray(B, dtype=A.dtype)
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"A has {A.shape[1]} columns and B has {B.shape[1]}; they must agree")
    if A.shape[0] != indptr.size - 1:
        raise ValueError(f"A has {A.shape[0]} rows but the pattern has {indptr.size - 1}")
    out = np.empty(indices.size, dtype=A.dtype)
    kern = _sampled_dot_par if indices.size * A.shape[1] >= _SERIAL_WORK else _sampled_dot_ser
    kern(_nnz_bounds(indptr), indptr, indices, A, B, out)
    return out


def sampled_dot_reference(indptr, indices, A, B) -> np.ndarray:
    """Slow obvious reference of :func:`sampled_dot` (fancy indexing, O(nnz · k) memory)."""
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return np.einsum("pk,pk->p", A[rows], B[indices])


# ---- backend kernel objects -----------------------------------------------------------

class _Kernels:
    """Interface shared by the backends (see the module docstring)."""

    name = "?"

    def asarray(self, a: np.ndarray):
        raise NotImplementedError

    def to_numpy(self, a) -> np.ndarray:
        raise NotImplementedError

    def thin_svd(self, a):
        """(u, s, w) with a = u diag(s) wᵀ; QR first so the SVD is of a k×k matrix."""
        raise NotImplementedError

    def relu(self, a):
        raise NotImplementedError


def _csc_of(indptr, indices, values, shape):
    """CSC copy (column pointers, row indices, values) of a CSR pattern; stable, so the
    rows within a column stay sorted."""
    n, m = shape
    rows = np.repeat(np.arange(n, dtype=np.int32), np.diff(indptr))
    order = np.argsort(indices, kind="stable")
    cptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(indices, minlength=m), out=cptr[1:])
    return cptr, rows[order], values[order]


class NumpyKernels(_Kernels):
    name = "numpy"

    def __init__(self, indptr, indices, values, shape, dtype):
        self.dtype = np.dtype(dtype)
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(indices, dtype=np.int32)
        self.x = np.ascontiguousarray(values, dtype=self.dtype)
        self.shape = shape
        self.csc = None  # built on first need (only when the CSR-order accumulators are too big)
        self.rbounds = _nnz_bounds(self.indptr)
        self.tbounds = _nnz_bounds(self.indptr, numba.get_num_threads())
        self.m = shape[1]

    def asarray(self, a):
        return np.ascontiguousarray(a, dtype=self.dtype)

    def to_numpy(self, a):
        return np.asarray(a, dtype=np.float64)

    def resid_rows(self, P, Q):
        out = np.empty((P.shape[0], P.shape[1]), dtype=self.dtype)
        sse = _resid_mm(self.rbounds, self.indptr, self.indices, self.x,
                        np.ascontiguousarray(P), np.ascontiguousarray(Q), out, True)
        return out, float(sse)

    def resid_cols(self, P, Q):
        k = P.shape[1]
        nchunk = self.tbounds.size - 1
        if nchunk * self.m * k * self.dtype.itemsize <= _TMM_BYTES:
            # CSR order with one accumulator per chunk, summed in chunk order (deterministic).
            acc = np.zeros((nchunk, self.m, k), dtype=self.dtype)
            kern = _resid_tmm_par if self.indices.size * k >= _SERIAL_WORK else _resid_tmm_ser
            sse = kern(self.tbounds, self.indptr, self.indices, self.x, np.ascontiguousarray(Q),
                       np.ascontiguousarray(P), acc)
            out = acc[0].copy()
            for c in range(1, nchunk):
                out += acc[c]
            return out, float(sse)
        if self.csc is None:
            cptr, cidx, cx = _csc_of(self.indptr, self.indices, self.x, self.shape)
            self.csc = (_nnz_bounds(cptr), cptr, cidx, cx)
        out = np.empty((P.shape[0], k), dtype=self.dtype)
        sse = _resid_mm(*self.csc, np.ascontiguousarray(P), np.ascontiguousarray(Q), out, True)
        return out, float(sse)

    def sse(self, P, Q):
        dummy = np.empty((0, P.shape[1]), dtype=self.dtype)
        return float(_resid_mm(self.rbounds, self.indptr, self.indices, self.x,
                               np.ascontiguousarray(P), np.ascontiguousarray(Q), dummy, False))

    def thin_svd(self, a):
        q, r = np.linalg.qr(a)
        u, s, wt = np.linalg.svd(r)
        return q @ u, s, wt.T

    def relu(self, a):
        return np.maximum(a, 0)


# Gathered rows per chunk on torch/cupy: bounds the temporary (chunk × k) buffers.
_GATHER_ELEMS = 1 << 24


class _GatherKernels(_Kernels):
    """Shared body of torch and cupy: residual values by chunked gathers, then CSR @ dense."""

    def _setup(self, indptr, indices, values, shape):
        n, m = shape
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
        cptr, crow, cx = _csc_of(indptr, indices, values, shape)
        ccol = np.repeat(np.arange(m, dtype=np.int64), np.diff(cptr))
        self.shape = (n, m)
        self.r = dict(ptr=self._int(indptr), a=self._int(rows), b=self._int(indices),
                      x=self.asarray(values), shape=(n, m))
        self.c = dict(ptr=self._int(cptr), a=self._int(ccol), b=self._int(crow),
                      x=self.asarray(cx), shape=(m, n))

    def _resid_values(self, lay, P, Q):
        a, b, x = lay["a"], lay["b"], lay["x"]
        nnz = x.shape[0]
        k = max(P.shape[1], 1)
        step = max(1, _GATHER_ELEMS // k)
        out = self._empty(nnz)
        for s in range(0, nnz, step):
            e = min(nnz, s + step)
            out[s:e] = x[s:e] - (P[a[s:e]] * Q[b[s:e]]).sum(1)
        return out

    def _resid(self, lay, P, Q):
        r = self._resid_values(lay, P, Q)
        S = self._csr(lay, r)
        return S @ Q, float((r * r).sum())

    def resid_rows(self, P, Q):
        return self._resid(self.r, P, Q)

    def resid_cols(self, P, Q):
        return self._resid(self.c, P, Q)

    def sse(self, P, Q):
        r = self._resid_values(self.r, P, Q)
        return float((r * r).sum())


class TorchKernels(_GatherKernels):
    name = "torch"

    def __init__(self, indptr, indices, values, shape, dtype, device):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.dtype = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}[np.dtype(dtype)]
        self._setup(indptr, indices, values, shape)

    def _int(self, a):
        return self.torch.as_tensor(np.asarray(a, dtype=np.int64), device=self.device)

    def _empty(self, n):
        return self.torch.empty(n, dtype=self.dtype, device=self.device)

    def _csr(self, lay, vals):
        with warnings.catch_warnings():  # torch flags sparse CSR as "beta" on every process
            warnings.simplefilter("ignore", UserWarning)
            return self.torch.sparse_csr_tensor(lay["ptr"], lay["b"], vals, size=lay["shape"],
                                                check_invariants=False)

    def asarray(self, a):
        return self.torch.as_tensor(np.asarray(a), device=self.device).to(self.dtype).contiguous()

    def to_numpy(self, a):
        return a.detach().to("cpu", self.torch.float64).numpy()

    def thin_svd(self, a):
        q, r = self.torch.linalg.qr(a)
        u, s, wt = self.torch.linalg.svd(r)
        return q @ u, s, wt.T

    def relu(self, a):
        return self.torch.clamp(a, min=0)


class CupyKernels(_GatherKernels):
    name = "cupy"

    def __init__(self, indptr, indices, values, shape, dtype, device):
        import cupy
        import cupyx.scipy.sparse as csp

        self.cp, self.csp = cupy, csp
        self.dtype = np.dtype(dtype)
        self.device = cupy.cuda.Device(int(device))
        with self.device:
            self._setup(indptr, indices, values, shape)

    def _int(self, a):
        return self.cp.asarray(np.asarray(a, dtype=np.int64))

    def _empty(self, n):
        return self.cp.empty(n, dtype=self.dtype)

    def _csr(self, lay, vals):
        return self.csp.csr_matrix((vals, lay["b"], lay["ptr"]), shape=lay["shape"])

    def asarray(self, a):
        return self.cp.ascontiguousarray(self.cp.asarray(a, dtype=self.dtype))

    def to_numpy(self, a):
        return self.cp.asnumpy(a).astype(np.float64)

    def thin_svd(self, a):
        q, r = self.cp.linalg.qr(a)
        u, s, wt = self.cp.linalg.svd(r)
        return q @ u, s, wt.T

    def relu(self, a):
        return self.cp.maximum(a, 0)


def make_kernels(backend: str, device, indptr, indices, values, shape, dtype) -> _Kernels:
    """Kernel object of one backend for the pattern (``indptr``, ``indices``) of ``shape``."""
    if backend == "numpy":
        return NumpyKernels(indptr, indices, values, shape, dtype)
    if backend == "torch":
        return TorchKernels(indptr, indices, values, shape, dtype, device)
    if backend == "cupy":
        return CupyKernels(indptr, indices, values, shape, dtype, device)
    raise ValueError(f"backend must be 'numpy', 'torch' or 'cupy', got {backend!r}")
