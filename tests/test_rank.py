"""numerical_rank / singular_values / rank_curve against NumPy as the slow obvious reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import CPU_BACKENDS, CUDA_BACKENDS
from hypothesis import assume, given
from hypothesis import strategies as st

import rankkit.rank as rank_mod
from rankkit.rank import RankCurve, numerical_rank, rank_curve, singular_values

DTYPES = [np.float32, np.float64]


@st.composite
def low_rank(draw, max_side: int = 24, wide_factor: int = 5):
    """An exactly rank-≤r matrix: small-integer factors times a power of two (exact in float)."""
    m = draw(st.integers(1, max_side))
    n = draw(st.integers(1, max_side * wide_factor))
    if draw(st.booleans()):
        m, n = n, m  # tall as often as wide
    r = draw(st.integers(0, min(m, n)))
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = draw(st.sampled_from(DTYPES))
    scale = 2.0 ** draw(st.integers(-20, 20))
    g = np.random.default_rng(seed)
    A = (g.integers(-3, 4, (m, r)) @ g.integers(-3, 4, (r, n))) * scale
    return A.astype(dtype), r


@given(low_rank())
def test_equals_numpy_matrix_rank_on_constructed_low_rank(case):
    A, r = case
    got = numerical_rank(A, backend="numpy")
    assert got == np.linalg.matrix_rank(A)
    assert got <= r


@given(m=st.integers(1, 30), n=st.integers(1, 30), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from(DTYPES))
def test_near_square_path_is_bit_identical_to_numpy(m, n, seed, dtype):
    # below the QR ratio the very same gesdd call runs: same singular values, same rank,
    # even for random matrices whose small singular values sit anywhere
    if max(m, n) >= rank_mod._QR_RATIO * min(m, n):
        m = n = max(m, n)
    A = np.random.default_rng(seed).standard_normal((m, n)).astype(dtype)
    A[:, : n // 2] *= 1e-6  # push singular values toward the cutoff
    np.testing.assert_array_equal(singular_values(A, backend="numpy"),
                                  np.linalg.svd(A, compute_uv=False))
    assert numerical_rank(A, backend="numpy") == np.linalg.matrix_rank(A)


@given(m=st.integers(1, 12), ratio=st.integers(2, 20), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from(DTYPES), wide=st.booleans())
def test_qr_path_singular_values_match_numpy(m, ratio, seed, dtype, wide):
    shape = (m, m * ratio) if wide else (m * ratio, m)
    A = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    s = singular_values(A, backend="numpy")
    ref = np.linalg.svd(A, compute_uv=False)
    assert s.dtype == ref.dtype
    # backward-stable SVDs of the same matrix agree to a few eps * sigma_1 * size
    tol = 10 * max(shape) * np.finfo(dtype).eps * ref[0]
    np.testing.assert_allclose(s, ref, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wide", [True, False])
def test_qr_runs_on_the_tall_side_and_keeps_dtype(monkeypatch, dtype, wide):
    seen = []
    real = rank_mod.qr_r

    def spy(A, backend):
        seen.append((tuple(A.shape), A.dtype))
        return real(A, backend)

    monkeypatch.setattr(rank_mod, "qr_r", spy)
    shape = (6, 50) if wide else (50, 6)
    A = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    assert numerical_rank(A, backend="numpy") == 6
    assert seen == [((50, 6), np.dtype(dtype))]


@pytest.mark.parametrize("dtype", DTYPES)
def test_cutoff_uses_the_original_max_side(dtype):
    # sigma_2 sits between 2*eps*sigma_1 (the cutoff of the 2x2 R factor) and
    # 200*eps*sigma_1 (the cutoff of the 2x200 input): only the latter drops it
    eps = np.finfo(dtype).eps
    A = np.zeros((2, 200), dtype=dtype)
    A[0, 0], A[1, 1] = 1.0, 20 * eps
    assert numerical_rank(A, backend="numpy") == np.linalg.matrix_rank(A) == 1
    assert numerical_rank(A[:, :2], backend="numpy") == np.linalg.matrix_rank(A[:, :2]) == 2


@given(low_rank(max_side=10), st.floats(0, 50))
def test_absolute_tol_matches_numpy(case, tol):
    A, _ = case
    # The QR path and NumPy's direct SVD round differently: a singular value within a few
    # ulps of an absolute ``tol`` (e.g. an exact zero against tol = 0) may land on either
    # side. The property is agreement whenever tol is resolvable in A's dtype.
    s = np.linalg.svd(A.astype(np.float64), compute_uv=False)
    slack = 100 * np.finfo(A.dtype).eps * max(float(s[0]) if s.size else 0.0, 1.0) * max(A.shape)
    assume(np.all(np.abs(s - tol) > slack))
    assert numerical_rank(A, tol=tol, backend="numpy") == np.linalg.matrix_rank(A, tol=tol)


def _native(A, backend, device):
    """``A`` as the native array of ``backend``: a torch tensor on ``device``, a cupy array on
    the current device, or ``A`` itself for numpy (the inputs of the backend-agreement tests)."""
    if backend == "torch":
        import torch

        return torch.as_tensor(A, device=device)
    if backend == "cupy":
        import cupy

        return cupy.asarray(A)
    return A


@pytest.mark.parametrize("backend,device", CPU_BACKENDS + CUDA_BACKENDS)
@given(case=low_rank(max_side=12))
def test_backends_agree_with_numpy(backend, device, case):
    A, _ = case
    assert numerical_rank(_native(A, backend, device)) == np.linalg.matrix_rank(A)
    # a numpy input sent to another backend gives the same answer
    assert numerical_rank(A, backend=backend, device=device) == np.linalg.matrix_rank(A)


def test_integer_bool_and_complex_follow_numpy(rng):
    ints = rng.integers(-2, 3, (7, 3)) @ rng.integers(-2, 3, (3, 9))
    assert numerical_rank(ints) == np.linalg.matrix_rank(ints)
    assert singular_values(ints).dtype == np.float64
    b = np.array([[True, False, True], [True, False, True], [False, True, False]])
    assert numerical_rank(b) == np.linalg.matrix_rank(b.astype(float)) == 2
    c = (rng.standard_normal((8, 2)) + 1j * rng.standard_normal((8, 2))) @ rng.standard_normal((2, 30))
    assert numerical_rank(c) == np.linalg.matrix_rank(c) == 2


def test_half_precision_is_measured_in_float32(rng):
    A = (rng.standard_normal((40, 3)) @ rng.standard_normal((3, 300))).astype(np.float16)
    assert numerical_rank(A) == np.linalg.matrix_rank(A.astype(np.float32))
    torch = pytest.importorskip("torch")
    T = torch.as_tensor(A.astype(np.float32)).to(torch.bfloat16)
    assert numerical_rank(T) == np.linalg.matrix_rank(T.float().numpy())


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_empty_matrices_have_rank_zero(shape):
    assert numerical_rank(np.zeros(shape)) == np.linalg.matrix_rank(np.zeros(shape)) == 0
    assert singular_values(np.zeros(shape)).shape == (0,)


@given(low_rank(max_side=10), st.floats(0.0, 1.0))
def test_sparse_equals_dense_under_budget(case, keep):
    A, _ = case
    A = np.where(np.random.default_rng(1).random(A.shape) < keep, A, 0).astype(A.dtype)
    S = sp.csr_matrix(A)
    assert numerical_rank(S) == np.linalg.matrix_rank(A)


def test_sparse_over_budget_names_size_budget_and_fix():
    S = sp.csr_matrix(([2.0], ([7], [9])), shape=(300, 500), dtype=np.float32)  # dense: 600,000 bytes
    with pytest.raises(MemoryError, match=r"300x500.*600000 bytes.*max_dense_bytes=100000.*rank_curve"):
        numerical_rank(S, max_dense_bytes=10**5)
    assert numerical_rank(S, max_dense_bytes=600_000) == 1


def test_bad_input_is_named():
    A = np.ones((4, 6))
    A[2, 5] = np.inf
    with pytest.raises(ValueError, match=r"M\[2, 5\] is not finite"):
        numerical_rank(A)
    with pytest.raises(ValueError, match="2-D"):
        numerical_rank(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="tol must be"):
        numerical_rank(np.ones((2, 2)), tol=-1.0)
    with pytest.raises(TypeError, match="dtype"):
        numerical_rank(np.array([["a", "b"]]))


# ---- rank_curve -------------------------------------------------------------------------------

def _reference_curve(A: np.ndarray, sizes, n_repeats, seed, replace):
    """Slow obvious version: redraw the rows the documented way and call np.linalg.matrix_rank."""
    g = np.random.default_rng(seed)
    out = np.zeros((len(sizes), n_repeats), dtype=np.int64)
    for r in range(n_repeats):
        idx = g.choice(A.shape[0], size=max(sizes), replace=replace)
        for i, k in enumerate(sizes):
            out[i, r] = np.linalg.matrix_rank(A[idx[:k]])
    return out


@st.composite
def curve_case(draw):
    n_rows = draw(st.integers(1, 40))
    n_cols = draw(st.integers(1, 40))
    r = draw(st.integers(0, min(n_rows, n_cols)))
    g = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    A = (g.integers(-2, 3, (n_rows, r)) @ g.integers(-2, 3, (r, n_cols))).astype(np.float64)
    replace = draw(st.booleans())
    hi = 60 if replace else n_rows
    sizes = sorted(draw(st.sets(st.integers(1, hi), min_size=1, max_size=5)))
    return A, sizes, draw(st.integers(1, 3)), draw(st.integers(0, 10**6)), replace


@given(curve_case())
def test_rank_curve_matches_reference(case):
    A, sizes, n_repeats, seed, replace = case
    curve = rank_curve(A, sizes, n_repeats=n_repeats, seed=seed, replace=replace, backend="numpy")
    np.testing.assert_array_equal(curve.ranks, _reference_curve(A, sizes, n_repeats, seed, replace))
    assert curve.sizes.tolist() == sizes and curve.n_cols == A.shape[1] and curve.n_rows == A.shape[0]
    # nested subsets: the rank never drops as rows are added
    assert (np.diff(curve.ranks, axis=0) >= 0).all()


@given(curve_case(), st.integers(1, 7))
def test_lazy_callable_and_sparse_sources_equal_the_array(case, batch_size):
    A, sizes, n_repeats, seed, replace = case
    calls = []

    def rows(idx):
        assert idx.dtype == np.int64
        calls.append(idx.size)
        return A[idx]

    ref = rank_curve(A, sizes, n_repeats=n_repeats, seed=seed, replace=replace, backend="numpy")
    lazy = rank_curve(rows, sizes, n_rows=A.shape[0], n_repeats=n_repeats, seed=seed,
                      replace=replace, batch_size=batch_size, backend="numpy")
    sparse = rank_curve(sp.coo_matrix(A), sizes, n_repeats=n_repeats, seed=seed, replace=replace,
                        backend="numpy")
    np.testing.assert_array_equal(lazy.ranks, ref.ranks)
    np.testing.assert_array_equal(sparse.ranks, ref.ranks)
    # each row is fetched once per repeat, in batches of at most batch_size
    assert sum(calls) == n_repeats * max(sizes) and max(calls) <= batch_size


@pytest.mark.parametrize("backend,device", CPU_BACKENDS + CUDA_BACKENDS)
def test_rank_curve_on_each_backend(backend, device, rng):
    A = rng.standard_normal((60, 4)) @ rng.standard_normal((4, 30))
    ref = _reference_curve(A, [1, 3, 10, 40], 2, 7, False)
    curve = rank_curve(_native(A, backend, device), [1, 3, 10, 40], n_repeats=2, seed=7)
    np.testing.assert_array_equal(curve.ranks, ref)
    assert curve.dtype == "float64"


def test_rank_curve_rejects_bad_arguments(rng):
    A = rng.standard_normal((10, 4))
    with pytest.raises(ValueError, match="strictly increasing"):
        rank_curve(A, [4, 2])
    with pytest.raises(ValueError, match="exceeds the 10 rows"):
        rank_curve(A, [2, 11])
    assert rank_curve(A, [2, 11], replace=True).ranks.shape == (2, 1)
    with pytest.raises(ValueError, match="n_rows="):
        rank_curve(lambda i: A[i], [2])
    with pytest.raises(ValueError, match=r"returned shape \(3, 4\) for 2 indices"):
        rank_curve(lambda i: A[:3], [2], n_rows=10)
    with pytest.raises(ValueError, match="n_repeats"):
        rank_curve(A, [2], n_repeats=0)


def test_rank_curve_plot_and_dict(rng):
    import matplotlib

    matplotlib.use("Agg")
    A = rng.standard_normal((50, 3)) @ rng.standard_normal((3, 20))
    curve = rank_curve(A, [2, 5, 20], n_repeats=3, seed=1)
    ax = curve.plot(label="demo")
    assert ax.get_xlabel() and ax.get_ylabel()
    data, ref = ax.lines[0], ax.lines[1]
    np.testing.assert_array_equal(data.get_xdata(), [2, 5, 20])
    np.testing.assert_allclose(data.get_ydata(), curve.ranks.mean(axis=1))
    np.testing.assert_array_equal(ref.get_xdata(), ref.get_ydata())  # the y = x line
    assert "demo" in [t.get_text() for t in ax.get_legend().get_texts()]
    d = json.loads(json.dumps(curve.to_dict()))
    back = RankCurve(sizes=np.array(d["sizes"]), ranks=np.array(d["ranks"]), n_cols=d["n_cols"],
                     dtype=d["dtype"], n_rows=d["n_rows"], seed=d["seed"], replace=d["replace"])
    np.testing.assert_array_equal(back.ranks, curve.ranks)
    # a generic rank-3 matrix: every sample of k rows has rank min(k, 3)
    assert d["ranks"] == [[min(k, 3)] * 3 for k in d["sizes"]]


def test_numerical_rank_of_a_reward_matrix_is_that_of_its_scipy_form():
    from rankkit.synthetic import upper_triangular

    R = upper_triangular(7)
    assert numerical_rank(R) == np.linalg.matrix_rank(R.to_scipy().toarray()) == 7


def test_large_sparse_input_is_refused_by_default_not_densified():
    # issue 12: a sparse matrix whose dense copy needs ~2 GB was densified silently and the
    # SVD was still running after 300 s; the default now refuses above 256 MiB, naming the size
    S = sp.random(6000, 6000, density=1e-5, format="csr", random_state=0)  # dense: 288 MB
    with pytest.raises(MemoryError, match=r"6000x6000.*0\.27 GiB.*max_dense_bytes=268435456"):
        numerical_rank(S)


@given(r=st.integers(1, 6), m=st.integers(8, 30), n=st.integers(200, 600),
       seed=st.integers(0, 2**32 - 1))
def test_float32_matrix_is_ranked_with_float32_epsilon(r, m, n, seed):
    """A rank-r product of float32 factors, rounded to float32 (the learned matrix R̂ of a
    float32 model, Fig. 2 / 9) has numerical rank r with the cutoff of its own dtype, as
    NumPy's matrix_rank; cast to float64 first, the float64 cutoff (2^29 times smaller)
    counts the float32 rounding of the product as rank."""
    rng = np.random.default_rng(seed)
    M = (rng.standard_normal((m, r), dtype=np.float32)
         @ rng.standard_normal((r, n), dtype=np.float32))
    assert M.dtype == np.float32
    assert numerical_rank(M) == r == np.linalg.matrix_rank(M)
    assert rank_curve(M, sizes=[m]).ranks[0, 0] == r
    assert numerical_rank(M.astype(np.float64)) > r  # rounding noise counted
