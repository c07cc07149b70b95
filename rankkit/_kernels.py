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

NumPy: the residual and the sparse × dense product are *fused* in one numba pass, parallel
over one block of rows of about equal nnz per thread, so the residual vector is never
written to memory. The pass runs over a copy of the pattern built once per fit in
(row block, column tile, row) order: while a tile of ``_TILE_BYTES`` columns is swept, the
rows of the other factor gathered at random stay in the core's L2 cache and the row's own
factor and output are read and written in order (2× less time per pass than plain CSR order
at 70,000 × 10,000, 10M cells, k = 20). The column pass is the same kernel on the tiled
transposed pattern, so each output row is accumulated in registers by one thread.

Torch: the residual values by SDDMM (``torch.sparse.sampled_addmm``; cuSPARSE on CUDA), then
a CSR × dense product. CuPy: the residual values in chunks by gathering rows of P and Q,
then ``cupyx.scipy.sparse.csr_matrix`` × dense. Both keep a CSR copy of the transposed
pattern for the column pass.
"""

from __future__ import annotations

import types
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import scipy.linalg
import scipy.sparse as sp
from numba import njit, prange

from ._backend import to_numpy

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


def _tile_layout_py(bounds, base, indptr, indices, x, width, ntiles):
    """Copy of a CSR pattern in (chunk, column tile, row, column) order.

    Chunk c holds rows bounds[c]..bounds[c+1]−1 (na rows); tile j holds the columns
    j·width..(j+1)·width−1. Segment (c, j) of ``start`` begins at q = base[c] + j·(na+1):
    the entries of row bounds[c]+i in tile j are idx/val[start[q+i] : start[q+i+1]]."""
    nchunk = bounds.size - 1
    start = np.zeros(base[nchunk], dtype=np.int64)
    for c in range(nchunk):
        a0 = bounds[c]
        na = bounds[c + 1] - a0
        for i in range(na):
            for p in range(indptr[a0 + i], indptr[a0 + i + 1]):
                start[base[c] + (indices[p] // width) * (na + 1) + i + 1] += 1
    pos = 0
    for q in range(start.size):
        pos += start[q]
        start[q] = pos
    cur = start.copy()
    idx = np.empty(indices.size, dtype=np.int32)
    val = np.empty(indices.size, dtype=x.dtype)
    for c in range(nchunk):
        a0 = bounds[c]
        na = bounds[c + 1] - a0
        for i in range(na):
            for p in range(indptr[a0 + i], indptr[a0 + i + 1]):
                q = base[c] + (indices[p] // width) * (na + 1) + i
                idx[cur[q]] = indices[p]
                val[cur[q]] = x[p]
                cur[q] += 1
    return start, idx, val


def _tiled_rows_py(bounds, base, start, idx, val, ntiles, P, Q, out, with_out):
    """Row pass on the tiled layout: out[a] = Σ_{b:(a,b)∈Ω} (x_ab − P[a]·Q[b]) Q[b], i.e.
    out = P_Ω(X − P Qᵀ) Q; returns sse = ‖P_Ω(X − P Qᵀ)‖²_F. The rows of Q gathered while
    one column tile is swept (width·k values) stay in the core's L2 cache."""
    k = P.shape[1]
    nchunk = bounds.size - 1
    part = np.zeros(nchunk)
    for c in prange(nchunk):
        acc = np.zeros(k)
        pa = np.empty(k)
        s2 = 0.0
        a0 = bounds[c]
        na = bounds[c + 1] - a0
        if with_out:
            for a in range(a0, a0 + na):
                for t in range(k):
                    out[a, t] = 0.0
        for j in range(ntiles):
            sb = base[c] + j * (na + 1)
            for i in range(na):
                lo = start[sb + i]
                hi = start[sb + i + 1]
                if lo == hi:
                    continue
                a = a0 + i
                for t in range(k):
                    acc[t] = 0.0
                    pa[t] = P[a, t]
                for p in range(lo, hi):
                    b = idx[p]
                    d = 0.0
                    for t in range(k):
                        d += pa[t] * Q[b, t]
                    r = val[p] - d
                    s2 += r * r
                    if with_out:
                        for t in range(k):
                            acc[t] += r * Q[b, t]
                if with_out:
                    for t in range(k):
                        out[a, t] += acc[t]
        part[c] = s2
    # Fixed chunk order: the sum is bitwise reproducible run to run (resume == uninterrupted).
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


# Reassociation lets LLVM vectorise the k-term dot products (a strict left-to-right sum is a
# serial chain of dependent adds) and contraction lets it use FMA: 15–30 % less time per
# pass. No "nnan"/"ninf": inf and NaN keep IEEE semantics. The results stay deterministic
# for one build on one machine (what checkpoint/resume relies on); they differ from the
# strict-order sum by a few ulps, well inside every tolerance of the tests.
_FASTMATH = frozenset({"reassoc", "contract"})


def _par_ser(py_func):
    """(parallel build, serial build) of one kernel, cached on disk under separate names."""
    return (njit(parallel=True, cache=True, fastmath=set(_FASTMATH))(_twin(py_func, "_par")),
            njit(parallel=False, nogil=True, cache=True, fastmath=set(_FASTMATH))(_twin(py_func, "_ser")))


# Parallel and serial builds of the same kernels: below _SERIAL_WORK (nnz × k) the cost of
# waking the thread pool exceeds the work, most of all on a busy machine.
_SERIAL_WORK = 1 << 18
_sampled_dot_par, _sampled_dot_ser = _par_ser(_sampled_dot_py)
_tiled_rows_par, _tiled_rows_ser = _par_ser(_tiled_rows_py)
_tile_layout = njit(cache=True)(_tile_layout_py)
# Bytes of one column tile of the gathered factor (width × k × itemsize): a tile stays in a
# core's L2 cache (1 MiB on the 2-core CI machine) with room to spare.
_TILE_BYTES = 1 << 16
# Fewest average entries per (row, tile) segment; caps the number of tiles (see _tile).
_MIN_SEGMENT = 8


def threadsafe_layer() -> bool:
    """Whether numba's threading layer may be entered from several Python threads at once
    (``omp`` and ``tbb`` may; ``workqueue`` aborts the process). The layer is chosen at the
    first parallel launch, so one tiny launch is made if none has been."""
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet in this process
        out = np.empty(1)
        _sampled_dot_par(np.array([0, 1], np.int64), np.array([0, 1], np.int64),
                         np.zeros(1, np.int32), np.ones((1, 1)), np.ones((1, 1)), out)
        layer = numba.threading_layer()
    return layer != "workqueue"


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
        """Host float64 copy (results and checkpoints are float64 whatever the solve dtype)."""
        return to_numpy(a, np.float64)

    def thin_svd(self, a):
        """(u, s, w) with a = u diag(s) wᵀ; QR first so the SVD is of a k×k matrix."""
        raise NotImplementedError

    def relu(self, a):
        raise NotImplementedError

    # The distributed fit (rankkit.distributed) partitions the rows; in one process these
    # four are the identity, the thin SVD and a plain product (see softimpute.als_iteration).
    def col_block(self, a):
        """The rows of an m × k array that this process's column pass owns: all of them."""
        return a

    def svd_cols(self, b):
        """Thin SVD of B (m × k) → (V, s, W) with the whole V."""
        return self.thin_svd(b)

    def svd_rows(self, a):
        """Thin SVD of A (n × k) → (U, s, W)."""
        return self.thin_svd(a)

    def row_gram(self, x, y):
        """xᵀ y for two n × k factors."""
        return x.T @ y


def _csc_of(indptr, indices, values, shape):
    """CSC copy (column pointers, row indices, values) of a CSR pattern, rows sorted within
    each column; SciPy's O(nnz) counting-sort transpose (a stable argsort is 5× slower)."""
    T = sp.csr_matrix((values, indices, indptr), shape=shape).tocsc()
    return (T.indptr.astype(np.int64, copy=False), T.indices.astype(np.int32, copy=False),
            T.data)


@dataclass(frozen=True)
class _TiledPattern:
    """A CSR pattern copied in (row block, column tile, row) order for one rank k.

    Row block c holds the rows ``bounds[c]:bounds[c+1]`` (about equal nnz per block, one block
    per thread); column tile j holds the columns ``j·width:(j+1)·width``. The entries of row
    ``bounds[c] + i`` in tile j are ``idx/val[start[q + i]:start[q + i + 1]]`` with
    ``q = base[c] + j·(rows in block + 1)`` (see :func:`_tile_layout_py`)."""

    bounds: np.ndarray
    base: np.ndarray
    start: np.ndarray
    idx: np.ndarray
    val: np.ndarray
    ntiles: int


def _tile(indptr, indices, x, n_cols: int, k: int, itemsize: int, tile_bytes: int,
          min_segment: int, n_chunks: int) -> _TiledPattern:
    """Tiled copy of a CSR pattern: O(nnz) counting sort, no comparison sort."""
    n = max(indptr.size - 1, 1)
    width = max(1, tile_bytes // (max(k, 1) * itemsize))
    # At least ~min_segment entries per (row, tile) segment on average: each segment reloads
    # a row of the sequential factor and of the output, which must stay cheap beside it.
    max_tiles = max(1, indices.size // max(1, min_segment * n))
    width = max(width, -(-n_cols // max_tiles))
    ntiles = max(1, -(-n_cols // width))
    bounds = _nnz_bounds(indptr, n_chunks)
    base = np.zeros(bounds.size, dtype=np.int64)
    np.cumsum(ntiles * (np.diff(bounds) + 1), out=base[1:])
    start, idx, val = _tile_layout(bounds, base, indptr, indices, x, width, ntiles)
    return _TiledPattern(bounds, base, start, idx, val, int(ntiles))


def _tiled_pass(t: _TiledPattern, P, Q, out, with_out: bool) -> float:
    kern = _tiled_rows_par if t.idx.size * P.shape[1] >= _SERIAL_WORK else _tiled_rows_ser
    return float(kern(t.bounds, t.base, t.start, t.idx, t.val, t.ntiles, np.ascontiguousarray(P),
                      np.ascontiguousarray(Q), out, with_out))


class NumpyKernels(_Kernels):
    """Both passes are the row kernel :func:`_tiled_rows_py`: on the tiled pattern for
    ``resid_rows`` and on the tiled transposed pattern (CSC) for ``resid_cols``, so every
    output row is a register accumulation owned by one thread: no per-thread m×k buffers,
    no atomics, and a fixed summation order (bitwise reproducible for a given thread count).
    Memory: the tiled copies cost 12 bytes per observed cell each (int32 column, float64 value)
    beside the CSR source, built on first use for the rank k of the fit."""

    name = "numpy"

    def __init__(self, indptr, indices, values, shape, dtype, *, tile_bytes: int | None = None,
                 min_segment: int | None = None, n_chunks: int | None = None):
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape)
        self.tile_bytes = _TILE_BYTES if tile_bytes is None else int(tile_bytes)
        self.min_segment = _MIN_SEGMENT if min_segment is None else int(min_segment)
        # One block of rows per thread: static scheduling then gives each thread equal nnz.
        self.n_chunks = numba.get_num_threads() if n_chunks is None else int(n_chunks)
        self._csr = (np.ascontiguousarray(indptr, dtype=np.int64),
                     np.ascontiguousarray(indices, dtype=np.int32),
                     np.ascontiguousarray(values, dtype=self.dtype))
        self._tiles: dict[tuple[str, int], _TiledPattern] = {}

    def _tiled(self, side: str, k: int) -> _TiledPattern:
        """Tiled pattern (``side="rows"``) or transposed pattern (``"cols"``) for rank k,
        built once and reused by every iteration."""
        key = (side, k)
        if key not in self._tiles:
            if side == "rows":
                src, n_cols = self._csr, self.shape[1]
            else:
                src, n_cols = _csc_of(*self._csr, self.shape), self.shape[0]
            self._tiles[key] = _tile(*src, n_cols, k, self.dtype.itemsize, self.tile_bytes,
                                     self.min_segment, self.n_chunks)
        return self._tiles[key]

    def asarray(self, a):
        return np.ascontiguousarray(a, dtype=self.dtype)

    def _resid(self, side, P, Q):
        out = np.empty((P.shape[0], P.shape[1]), dtype=self.dtype)
        return out, _tiled_pass(self._tiled(side, P.shape[1]), P, Q, out, True)

    def resid_rows(self, P, Q):
        return self._resid("rows", P, Q)

    def resid_cols(self, P, Q):
        return self._resid("cols", P, Q)

    def sse(self, P, Q):
        dummy = np.empty((0, P.shape[1]), dtype=self.dtype)
        return _tiled_pass(self._tiled("rows", P.shape[1]), P, Q, dummy, False)

    # Fewest rows × columns for the two-level (TSQR) thin SVD: below it one QR is cheaper
    # than starting threads.
    tsqr_min_size = 1 << 20

    def thin_svd(self, a):
        r"""Thin SVD by QR first. SciPy's economic QR: 3.6× faster than ``np.linalg.qr`` on a
        70,000 × 20 factor (20 vs 72 ms, one BLAS thread). Tall factors (≥ ``tsqr_min_size``
        cells) use TSQR: :math:`a = \mathrm{diag}(Q_1..Q_p)\,[R_1; ..; R_p]` with one QR per
        row block in parallel threads (LAPACK releases the GIL; BLAS is single-threaded during
        a fit), then :math:`[R_1; ..; R_p] = Q_s R` and :math:`u = \mathrm{diag}(Q_i)\,Q_s\,u_R`;
        Householder-stable like one QR, and deterministic (fixed blocks)."""
        n, k = a.shape
        parts = self.n_chunks
        if parts < 2 or n * k < self.tsqr_min_size or n < 4 * parts * k:
            q, r = scipy.linalg.qr(a, mode="economic", check_finite=False)
            u, s, wt = np.linalg.svd(r)
            return q @ u, s, wt.T
        cuts = np.linspace(0, n, parts + 1).astype(np.int64)
        blocks = [a[cuts[i]:cuts[i + 1]] for i in range(parts)]
        out = np.empty((n, k), dtype=a.dtype)
        with ThreadPoolExecutor(parts) as ex:
            qrs = list(ex.map(lambda b: scipy.linalg.qr(b, mode="economic", check_finite=False), blocks))
            qs, r = np.linalg.qr(np.vstack([r_i for _, r_i in qrs]))
            u, s, wt = np.linalg.svd(r)
            m = qs @ u  # (parts·k) × k

            def fill(i):
                out[cuts[i]:cuts[i + 1]] = qrs[i][0] @ m[i * k:(i + 1) * k]

            list(ex.map(fill, range(parts)))
        return out, s, wt.T

    def relu(self, a):
        return np.maximum(a, 0)


# Gathered rows per chunk on torch/cupy: bounds the temporary (chunk × k) buffers.
_GATHER_ELEMS = 1 << 24


class _GatherKernels(_Kernels):
    """Shared body of torch and cupy: residual values by chunked gathers, then CSR @ dense."""

    def _setup(self, indptr, indices, values, shape):
        n, m = shape
        cptr, crow, cx = _csc_of(indptr, indices, values, shape)
        self.shape = (n, m)
        # "counts" (host, n + 1) only to expand each cell's row index on first need: the
        # torch SDDMM path never does, and those nnz int64 would sit on the device for nothing.
        self.r = dict(ptr=self._int(indptr), b=self._int(indices), x=self.asarray(values),
                      shape=(n, m), counts=np.diff(indptr))
        self.c = dict(ptr=self._int(cptr), b=self._int(crow), x=self.asarray(cx),
                      shape=(m, n), counts=np.diff(cptr))

    def _resid_values(self, lay, P, Q):
        if "a" not in lay:
            lay["a"] = self._int(np.repeat(np.arange(lay["counts"].size, dtype=np.int64), lay["counts"]))
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

    def _resid_values(self, lay, P, Q):
        # SDDMM (cuSPARSE on CUDA): x − P Qᵀ on the pattern without the nnz×k gathered
        # temporaries of the generic path (6-8x faster on CPU).
        if "S" not in lay:
            lay["S"] = self._csr(lay, lay["x"])
        return self.torch.sparse.sampled_addmm(lay["S"], P, Q.T, beta=1.0, alpha=-1.0).values()

    def asarray(self, a):
        return self.torch.as_tensor(np.asarray(a), device=self.device).to(self.dtype).contiguous()

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
