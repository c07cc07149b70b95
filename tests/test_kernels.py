"""NumPy soft-impute kernels on the tiled pattern copy against dense products (issue 3).

The fused numba passes compute, for a pattern Ω and factors P (n×k), Q (m×k),
``resid_rows(P, Q) = (P_Ω(X − P Qᵀ) Q, ‖P_Ω(X − P Qᵀ)‖²_F)`` and the transposed product
``resid_cols(Q', P') = (P_Ω(X − P' Q'ᵀ)ᵀ P', sse)``; the dense reference forms the masked
n×m residual explicitly. Small tile budgets force many column tiles per row block, so the
segment bookkeeping of the tiled layout is exercised on every example.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import CPU_BACKENDS, CUDA_BACKENDS
from hypothesis import given
from hypothesis import strategies as st

import rankkit._kernels as kern
from rankkit._kernels import NumpyKernels, make_kernels

EPS = np.finfo(np.float64).eps


@st.composite
def _case(draw):
    n = draw(st.integers(1, 25))
    m = draw(st.integers(1, 30))
    k = draw(st.integers(1, 6))
    density = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**32 - 1))
    tile_bytes = draw(st.sampled_from([1, 8 * k, 40 * k, 1 << 16]))
    min_segment = draw(st.sampled_from([0, 1, 8]))
    parallel = draw(st.booleans())
    n_chunks = draw(st.sampled_from([1, 2, 3, 7]))
    return n, m, k, density, seed, tile_bytes, min_segment, parallel, n_chunks


def _problem(n, m, k, density, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, m))
    mask = rng.random((n, m)) < density
    r, c = np.nonzero(mask)
    S = sp.csr_matrix((X[r, c], (r, c)), shape=(n, m))
    return X, mask, S, rng.standard_normal((n, k)), rng.standard_normal((m, k))


def _check_against_dense(K, X, mask, P, Q):
    """K's three passes against the dense masked residual R = P_Ω(X − P Qᵀ): R Q, Rᵀ P, ‖R‖²."""
    R = np.where(mask, X - P @ Q.T, 0.0)
    n, m = X.shape
    k = P.shape[1]
    # Each output entry sums ≤ m (rows) or ≤ n (columns) products of terms bounded by big².
    big = 1.0 + np.abs(X).max() + k * np.abs(P).max() * np.abs(Q).max()
    tol = 8 * (n + m) * k * EPS * big**2
    Pk, Qk = K.asarray(P), K.asarray(Q)
    (rows, sse_r), (cols, sse_c) = K.resid_rows(Pk, Qk), K.resid_cols(Qk, Pk)
    np.testing.assert_allclose(K.to_numpy(rows), R @ Q, rtol=0, atol=tol)
    np.testing.assert_allclose(K.to_numpy(cols), R.T @ P, rtol=0, atol=tol)
    for s in (sse_r, sse_c, K.sse(Pk, Qk)):
        assert abs(s - float((R * R).sum())) <= tol * max(1, int(mask.sum()))


@given(_case())
def test_tiled_passes_match_dense_products(case):
    n, m, k, density, seed, tile_bytes, min_segment, parallel, n_chunks = case
    X, mask, S, P, Q = _problem(n, m, k, density, seed)
    K = NumpyKernels(S.indptr, S.indices, S.data, (n, m), np.float64, tile_bytes=tile_bytes,
                     min_segment=min_segment, n_chunks=n_chunks)
    with mock.patch.object(kern, "_SERIAL_WORK", 0 if parallel else 1 << 62):
        _check_against_dense(K, X, mask, P, Q)


@pytest.mark.parametrize("backend,device", CPU_BACKENDS + CUDA_BACKENDS)
@given(st.integers(1, 25), st.integers(1, 30), st.integers(1, 6), st.floats(0.0, 1.0),
       st.integers(0, 2**32 - 1))
def test_backend_passes_match_dense_products(backend, device, n, m, k, density, seed):
    """Every backend's kernels (numpy tiled passes, torch SDDMM + SpMM, cupy gathers) against
    the dense masked residual, in float64."""
    X, mask, S, P, Q = _problem(n, m, k, density, seed)
    _check_against_dense(make_kernels(backend, device, S.indptr, S.indices, S.data, (n, m), np.float64),
                         X, mask, P, Q)


def test_small_tile_budget_splits_the_columns(rng):
    """The layout really is tiled at a small budget and split into row blocks (else the
    property test above would not exercise the segment bookkeeping), and it computes what the
    one-tile, one-block layout computes."""
    n, m, k = 200, 400, 4
    S = sp.random(n, m, density=0.5, random_state=1, format="csr")
    K = NumpyKernels(S.indptr, S.indices, S.data, (n, m), np.float64, tile_bytes=16 * k * 8,
                     n_chunks=3)
    rows, cols = K._tiled("rows", k), K._tiled("cols", k)
    assert rows.ntiles > 1 and cols.ntiles > 1 and rows.bounds.size - 1 == 3
    one = NumpyKernels(S.indptr, S.indices, S.data, (n, m), np.float64, tile_bytes=1 << 30,
                       n_chunks=1)
    assert one._tiled("rows", k).ntiles == one._tiled("cols", k).ntiles == 1
    P, Q = rng.standard_normal((n, k)), rng.standard_normal((m, k))
    for f in ("resid_rows", "resid_cols"):
        args = (P, Q) if f == "resid_rows" else (Q, P)
        (a, sa), (b, sb) = getattr(K, f)(*args), getattr(one, f)(*args)
        np.testing.assert_allclose(a, b, rtol=0, atol=64 * max(n, m) * EPS * np.abs(b).max())
        assert abs(sa - sb) <= 64 * S.nnz * EPS * sb



@given(st.integers(1, 8), st.integers(2, 4), st.integers(0, 2**32 - 1), st.floats(0, 12))
def test_tsqr_thin_svd_matches_lapack(k, parts, seed, decades):
    """The two-level (TSQR) thin SVD of tall factors: a = u diag(s) wᵀ with orthonormal u and
    w and the singular values of np.linalg.svd, down to graded spectra (cond up to 1e12)."""
    rng = np.random.default_rng(seed)
    n = 4 * parts * k + int(rng.integers(0, 50))
    a = rng.standard_normal((n, k)) * np.logspace(0, -decades, k)
    S = sp.csr_matrix((n, 3))
    K = NumpyKernels(S.indptr, S.indices, S.data, (n, 3), np.float64, n_chunks=parts)
    K.tsqr_min_size = 0
    u, s, w = K.thin_svd(a)
    scale = np.linalg.norm(a, 2)
    tol = 64 * n * k * EPS
    np.testing.assert_allclose(s, np.linalg.svd(a, compute_uv=False), rtol=0, atol=tol * scale)
    np.testing.assert_allclose((u * s) @ w.T, a, rtol=0, atol=tol * scale)
    np.testing.assert_allclose(u.T @ u, np.eye(k), rtol=0, atol=tol)
    np.testing.assert_allclose(w.T @ w, np.eye(k), rtol=0, atol=tol)


@given(st.integers(1, 25), st.integers(1, 30), st.integers(1, 6), st.floats(0.0, 1.0),
       st.integers(0, 2**32 - 1))
def test_gather_residuals_match_sddmm(n, m, k, density, seed):
    """The chunked-gather residual values (CuPy's path, testable on CPU through torch) equal
    torch's SDDMM values on both layouts."""
    torch = pytest.importorskip("torch")
    from rankkit._kernels import _GatherKernels

    X, mask, S, P, Q = _problem(n, m, k, density, seed)
    K = make_kernels("torch", "cpu", S.indptr, S.indices, S.data, (n, m), np.float64)
    Pk, Qk = K.asarray(P), K.asarray(Q)
    for lay, A, B in ((K.r, Pk, Qk), (K.c, Qk, Pk)):
        gathered = _GatherKernels._resid_values(K, lay, A, B)
        torch.testing.assert_close(gathered, K._resid_values(lay, A, B), rtol=0,
                                   atol=8 * k * EPS * (1 + np.abs(X).max() + k * np.abs(P).max() * np.abs(Q).max()))
