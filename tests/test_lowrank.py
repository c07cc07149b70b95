"""The fixed-rank certificate solver (rankkit.lowrank) and its kernels (rankkit._lrkernels)."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import example, given, settings
from hypothesis import strategies as st

import rankkit as rk
from rankkit._lrkernels import (
    NumpyLRKernels,
    ridge_rows_reference,
    spmm_reference,
)
from rankkit.estimators import FixedRank
from rankkit.lowrank import fixed_rank_fit
from rankkit.softimpute import SoftImputeResult, observed_mse

EPS64 = np.finfo(np.float64).eps
FAST = dict(progress=False, backend="numpy")


@pytest.fixture(autouse=True, scope="module")
def _one_numba_thread():
    """Small fits: a parallel kernel's thread hand-off costs more than the work."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def low_rank_problem(n, m, r, n_cells, *, power_law=False, scale=1.0, seed=0):
    """An exactly rank-r matrix observed on ``n_cells`` distinct cells (uniform, or with
    Zipf-like row and column popularity), every row and column observed at least once."""
    g = np.random.default_rng(seed)
    A, B = g.standard_normal((n, r)), g.standard_normal((m, r))
    if power_law:
        pr = 1.0 / np.arange(1, n + 1) ** 0.8
        pc = 1.0 / np.arange(1, m + 1) ** 0.8
        rows = g.choice(n, size=4 * n_cells, p=pr / pr.sum())
        cols = g.choice(m, size=4 * n_cells, p=pc / pc.sum())
        cells = np.unique(rows * m + cols)
        cells = g.permutation(cells)[:max(0, n_cells - n - m)]
    else:
        cells = g.choice(n * m, size=max(0, n_cells - n - m), replace=False)
    # one cell in every row and column so that no row or column is empty
    extra = np.concatenate([np.arange(n) * m + g.integers(0, m, n), g.integers(0, n, m) * m + np.arange(m)])
    cells = np.unique(np.concatenate([cells, extra]))
    i, j = cells // m, cells % m
    x = scale * np.einsum("ij,ij->i", A[i], B[j]) / np.sqrt(r)
    return sp.csr_matrix((x, (i, j)), shape=(n, m))


# ---- kernels against slow references -------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.integers(1, 6), st.floats(0.0, 1.0),
       st.sampled_from([0.0, 1e-4, 1.0]), st.integers(0, 2**32 - 1))
# a 5-cell column at k = 6, ρ = 0 whose singular Gram matrix passed the Cholesky pivot rule by
# rounding (a non-minimum-norm solution, error 0.97, before short rows skipped Cholesky)
@example(7, 16, 6, 0.705078125, 0.0, 8005)
def test_kernels_match_slow_references(n, m, k, density, rho, seed):
    g = np.random.default_rng(seed)
    mask = g.random((n, m)) < density  # empty rows and columns included
    i, j = np.nonzero(mask)
    x = g.standard_normal(i.size)
    S = sp.csr_matrix((x, (i, j)), shape=(n, m))
    S.sort_indices()
    K = NumpyLRKernels(S.indptr, S.indices, S.data, (n, m))
    A1, A2 = g.standard_normal((n, k)), g.standard_normal((n, k + 1))
    B1, B2 = g.standard_normal((m, k)), g.standard_normal((m, k + 1))
    dense = A1 @ B1.T + A2 @ B2.T
    tol = 64 * EPS64 * (1 + np.abs(dense).max())
    np.testing.assert_allclose(K.sampled2(A1, B1, A2, B2), dense[i, j], rtol=0, atol=tol)
    np.testing.assert_allclose(K.sampled(A1, B1), (A1 @ B1.T)[i, j], rtol=0, atol=tol)
    v = g.standard_normal(i.size)
    Z = sp.csr_matrix((v, (i, j)), shape=(n, m)).toarray()
    np.testing.assert_allclose(K.spmm(v, B1), Z @ B1, rtol=0, atol=tol * max(1, m))
    np.testing.assert_allclose(K.spmm_t(v, A1), Z.T @ A1, rtol=0, atol=tol * max(1, n))
    np.testing.assert_allclose(spmm_reference(S.indptr, S.indices, v, B1), Z @ B1, atol=tol * max(1, m))
    # per-row ridge least squares (minimum norm when rho = 0 and a row is under-determined)
    ref = ridge_rows_reference(S.indptr, S.indices, S.data, B1, rho)
    got = K.solve_rows(B1, rho)
    cond = np.linalg.cond(B1) if m >= k else 1.0
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-7 * (1 + np.abs(ref).max()) * max(1.0, cond))
    refc = ridge_rows_reference(K.t_indptr, K.t_indices, K.t_x, A1, rho)
    np.testing.assert_allclose(K.solve_cols(A1, rho), refc, rtol=0,
                               atol=1e-7 * (1 + np.abs(refc).max()) * max(1.0, np.linalg.cond(A1)))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 25), st.integers(1, 25), st.sampled_from([1, 2, 3, 6, 11, 13]), st.floats(0.05, 1.0),
       st.sampled_from([1e-3, 1.0]), st.integers(0, 2**32 - 1))
def test_compiled_cg_matches_the_kernel_loop(n, m, k, density, mu, seed):
    """The LM inner solve compiled into one loop (rankkit._cgkernel) against the Python-level
    CG over the backend kernels: the same iterates for a few products (ulps apart), and at
    convergence a solution of (P_T P_Ω P_T + μI) ξ = −g by the reference operator; ranks on
    both sides of _SPECIALISED_K (a build per k, and the generic one)."""
    from rankkit import lowrank as L

    g = np.random.default_rng(seed)
    k = min(k, n, m)
    mask = g.random((n, m)) < density
    i, j = np.nonzero(mask)
    S = sp.csr_matrix((g.standard_normal(i.size), (i, j)), shape=(n, m))
    S.sort_indices()
    K = NumpyLRKernels(S.indptr, S.indices, S.data, (n, m))
    assert K.fuses_gn_cg(k)
    U = np.linalg.qr(g.standard_normal((n, k)))[0]
    V = np.linalg.qr(g.standard_normal((m, k)))[0]
    run = L._Run(K, k, 0.0, max(i.size, 1))
    run.set_point(U, np.sort(g.random(k))[::-1] + 0.1, V)
    grad = run.grad()
    if not np.any(K.flat(grad)):
        assert K.gn_cg(U, V, grad, mu, 3, 1e-2) is None and L._gn_cg(K, U, V, grad, mu, 3, 1e-2) is None
        return
    scale = np.abs(K.flat(grad)).max()
    for it in (1, 2, 3):
        ref = K.flat(L._gn_cg(K, U, V, grad, mu, it, 0.0))
        got = K.flat(K.gn_cg(U, V, grad, mu, it, 0.0))
        # a few products of norm ≤ 1 + μ, each a sum of at most n·m·k terms
        tol = 64 * it * EPS64 * (1 + n * m * k) * scale / min(mu, 1.0) ** it
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol)
    size = K.flat(grad).size
    xi = K.gn_cg(U, V, grad, mu, 4 * size, 1e-13)
    H = K.flat(L._project(K, L._on_omega(K, xi, U, V), U, V)) + mu * K.flat(xi)
    res = np.linalg.norm(H + K.flat(grad)) / np.linalg.norm(K.flat(grad))
    assert res <= 1e-8, f"compiled CG left a relative residual {res:.2e}"


@pytest.mark.parametrize("k", [4, 12])
def test_compiled_cg_gives_the_same_bits_wherever_its_operands_lie(k):
    """Run-to-run determinism (checkpoint / resume, threaded starts): the same solve from
    copies of U, V and g at other memory alignments gives the same bits. BLAS inside the
    loop did not (its rounding depends on operand alignment)."""
    from rankkit._cgkernel import _SPECIALISED_K, gn_cg

    assert (k <= _SPECIALISED_K) == (k == 4)  # one specialised build, one generic
    g = np.random.default_rng(7)
    # reward-data sizes (vader:nyt Ω₂ is 1,104 × 3,328, 6,221 cells): BLAS's differences showed
    # here and not on small operands
    n, m = 1100, 3300
    S = sp.random(n, m, density=0.002, random_state=1, format="csr")
    K = NumpyLRKernels(S.indptr, S.indices, S.data, (n, m))
    U = np.linalg.qr(g.standard_normal((n, k)))[0]
    V = np.linalg.qr(g.standard_normal((m, k)))[0]
    gf = g.standard_normal(k * k + (n + m) * k)

    def shifted(a, offset):
        # a copy whose data starts `offset` float64s into a fresh buffer
        buf = np.empty(a.size + offset)
        out = buf[offset:].reshape(a.shape)
        out[...] = a
        return out

    ref = gn_cg(K, U, V, gf, 1e-3, 60, 0.0)
    for offset in (0, 1, 2, 3, 5, 0):
        got = gn_cg(K, shifted(U, offset), shifted(V, offset + 1), shifted(gf, offset + 2), 1e-3, 60, 0.0)
        assert np.array_equal(got.view(np.uint64), ref.view(np.uint64)), f"offset {offset}"


def test_ridge_solve_is_minimum_norm_on_short_rows():
    # one row with 2 cells and k = 4: infinitely many exact solutions; the minimum-norm one
    # lies in the row space of Q_S
    g = np.random.default_rng(3)
    Q = g.standard_normal((5, 4))
    S = sp.csr_matrix(([1.0, -2.0], ([0, 0], [1, 3])), shape=(1, 5))
    K = NumpyLRKernels(S.indptr, S.indices, S.data, (1, 5))
    u = K.solve_rows(Q, 0.0)[0]
    QS = Q[[1, 3]]
    np.testing.assert_allclose(QS @ u, [1.0, -2.0], atol=1e-12)
    np.testing.assert_allclose(u, np.linalg.pinv(QS) @ [1.0, -2.0], atol=1e-12)


# ---- the solver ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["auto", "als", "rlm", "rcg"])
def test_reaches_1e_12_on_exactly_low_rank_data(method):
    S = low_rank_problem(120, 90, 3, 3000, seed=1)
    fit = fixed_rank_fit(S, 3, eps=1e-12, rho=0.0, method=method, max_iter=3000, **FAST)
    assert fit.mse <= 1e-12 and fit.meta["stop"] == "target" and fit.converged
    # the result's MSE is the one recomputed from its factors
    assert fit.mse == pytest.approx(observed_mse(S, fit), rel=1e-6, abs=1e3 * EPS64 ** 2)
    U, d, V = fit.U, fit.d, fit.V
    np.testing.assert_allclose(U.T @ U, np.eye(3), atol=1e-10)
    np.testing.assert_allclose(V.T @ V, np.eye(3), atol=1e-10)
    assert (d >= 0).all() and fit.rank == 3 and fit.n_iter == len(fit.meta["mse_trace"])


def test_stops_as_soon_as_the_target_is_met():
    S = low_rank_problem(200, 150, 4, 6000, seed=2)
    fit = fixed_rank_fit(S, 4, eps=1e-4, rho=0.0, method="rcg", **FAST)
    trace = fit.meta["mse_trace"]
    assert trace[-1] <= 1e-4 < trace[-2]  # not one iteration more than needed
    assert fit.mse == trace[-1]


def test_power_law_pattern_and_small_scale_values():
    # power-law popularity, about 3x the degrees of freedom, values of scale 1e-3
    n, m, r = 400, 300, 5
    S = low_rank_problem(n, m, r, 3 * (n + m - r) * r, power_law=True, scale=1e-3, seed=4)
    eps = 1e-12 * float(np.mean(S.data ** 2))
    fit = fixed_rank_fit(S, r, eps=eps, rho=0.0, **FAST)
    assert fit.mse <= eps


def test_stall_is_detected_at_too_small_a_rank():
    S = low_rank_problem(150, 100, 6, 6000, seed=5)
    fit = fixed_rank_fit(S, 3, eps=1e-12, rho=0.0, window=10, **FAST)
    assert fit.meta["stop"] == "stalled" and not fit.converged and fit.mse > 1e-3
    assert fit.n_iter < 500


def test_warm_start_truncates_and_pads():
    S = low_rank_problem(120, 100, 4, 5000, seed=6)
    fit4 = fixed_rank_fit(S, 4, eps=1e-20, rho=0.0, **FAST)
    # truncation of a certified fit: the same rank-4 problem restarted from its own factors
    again = fixed_rank_fit(S, 4, eps=1e-20, rho=0.0, warm_start=fit4, **FAST)
    # the same MSE up to the rounding of re-orthonormalising the factors: with values of order
    # 1 and residuals r ~ 4e-11, an O(ε_mach) change of the product moves the MSE by ~2·r·ε_mach
    assert again.n_iter == 0 and again.mse == pytest.approx(fit4.mse, abs=1e3 * EPS64 * fit4.mse ** 0.5)
    # padding a rank-2 fit up to rank 4 from the residual's top triplets converges
    fit2 = fixed_rank_fit(S, 2, eps=1e-20, rho=0.0, max_iter=20, **FAST)
    up = fixed_rank_fit(S, 4, eps=1e-12, rho=0.0, warm_start={"u": fit2.U, "d": fit2.d, "v": fit2.V}, **FAST)
    assert up.mse <= 1e-12
    with pytest.raises(ValueError, match="missing \\['v'\\]"):
        fixed_rank_fit(S, 4, warm_start={"u": fit2.U, "d": fit2.d}, **FAST)


def test_checkpoint_resume_is_bit_identical(tmp_path):
    S = low_rank_problem(150, 120, 4, 5000, power_law=True, seed=7)
    kw = dict(eps=1e-14, rho=1e-4, method="rlm", max_iter=40, **FAST)
    straight = fixed_rank_fit(S, 4, **kw)
    ckpt = tmp_path / "fit.npz"
    stopped = fixed_rank_fit(S, 4, checkpoint=ckpt, checkpoint_every=3,
                             callback=lambda it, info: it == 7, **kw)
    assert stopped.meta["stop"] == "callback" and ckpt.is_file()
    resumed = fixed_rank_fit(S, 4, checkpoint=ckpt, checkpoint_every=3, **kw)
    assert not ckpt.exists()  # a finished run removes its checkpoint
    assert resumed.n_iter == straight.n_iter
    for a, b in ((resumed.U, straight.U), (resumed.d, straight.d), (resumed.V, straight.V)):
        np.testing.assert_array_equal(a, b)
    assert resumed.meta["mse_trace"] == straight.meta["mse_trace"]
    # RCG keeps its conjugate direction across the checkpoint too
    kw["method"] = "rcg"
    straight = fixed_rank_fit(S, 4, **kw)
    fixed_rank_fit(S, 4, checkpoint=ckpt, callback=lambda it, info: it == 5, **kw)
    resumed = fixed_rank_fit(S, 4, checkpoint=ckpt, **kw)
    np.testing.assert_array_equal(resumed.U, straight.U)
    np.testing.assert_array_equal(resumed.d, straight.d)
    # a checkpoint of another problem is refused
    fixed_rank_fit(S, 4, checkpoint=ckpt, callback=lambda it, info: True, **kw)
    with pytest.raises(ValueError, match="different problem"):
        fixed_rank_fit(S, 3, checkpoint=ckpt, **kw)


def test_result_round_trips_with_its_meta(tmp_path):
    S = low_rank_problem(60, 50, 2, 1500, seed=8)
    fit = fixed_rank_fit(S, 2, eps=1e-10, **FAST)
    back = SoftImputeResult.load(fit.save(tmp_path / "f.npz"))
    np.testing.assert_array_equal(back.U, fit.U)
    assert back.meta["stop"] == fit.meta["stop"] and back.meta["phases"] == fit.meta["phases"]


def test_estimator_wrapper_and_bad_input():
    S = low_rank_problem(60, 50, 2, 1500, seed=9)
    est = FixedRank(2, eps=1e-10, progress=False).fit(S)
    assert est.mse_ <= 1e-10 and est.U_.shape == (60, 2)
    rows, cols = S.nonzero()
    np.testing.assert_allclose(est.predict_cells(rows, cols), np.asarray(S[rows, cols]).ravel(), atol=1e-4)
    with pytest.raises(ValueError, match="rank must be an integer in \\[0, min\\(n, m\\)\\] = \\[0, 50\\]"):
        fixed_rank_fit(S, 51, **FAST)
    with pytest.raises(ValueError, match="method must be one of"):
        fixed_rank_fit(S, 2, method="newton", **FAST)
    with pytest.raises(ValueError, match="rho must be a finite number"):
        fixed_rank_fit(S, 2, rho=-1.0, **FAST)
    bad = sp.csr_matrix(([1.0, np.inf], ([0, 1], [0, 1])), shape=(2, 2))
    with pytest.raises(ValueError, match="row 1, column 1\\): value is not finite"):
        fixed_rank_fit(bad, 1, **FAST)
    zero = fixed_rank_fit(S, 0, **FAST)
    assert zero.mse == pytest.approx(float(np.mean(S.data ** 2)))


def test_torch_backend_agrees_with_numpy():
    pytest.importorskip("torch")
    S = low_rank_problem(80, 70, 3, 2500, power_law=True, seed=10)
    a = fixed_rank_fit(S, 3, eps=1e-12, rho=0.0, method="rlm", progress=False, backend="numpy")
    b = fixed_rank_fit(S, 3, eps=1e-12, rho=0.0, method="rlm", progress=False, backend="torch", device="cpu")
    assert a.mse <= 1e-12 and b.mse <= 1e-12 and b.backend == "torch"
    c = fixed_rank_fit(S, 3, eps=1e-12, rho=0.0, method="als", progress=False, backend="torch", device="cpu")
    assert c.mse <= 1e-12
    # the same completed matrix off Ω (unique at this sampling: 10x the degrees of freedom)
    np.testing.assert_allclose((b.U * b.d) @ b.V.T, (a.U * a.d) @ a.V.T, atol=1e-4)


# ---- the certificates through estimate_min_rank --------------------------------------------
CASES = [
    # (n, m, r, cells as multiple of the degrees of freedom, power law, scale)
    (100, 80, 2, 3.0, False, 1.0),
    (300, 200, 5, 3.0, True, 1.0),
    (1000, 400, 10, 3.0, False, 1.0),
    (3000, 200, 4, 4.0, True, 1.0),
    (500, 400, 30, 3.0, False, 1.0),
    (250, 200, 4, 3.0, False, 1e-3),
]


@pytest.mark.parametrize("n, m, r, over, power, scale", CASES)
def test_bracket_contains_the_rank_of_exactly_low_rank_data(n, m, r, over, power, scale):
    S = low_rank_problem(n, m, r, int(over * (n + m - r) * r), power_law=power, scale=scale, seed=r)
    eps = 1e-10 * float(np.mean(S.data ** 2))
    est = rk.estimate_min_rank(S, eps=eps, **FAST)
    assert est.exact_lower <= r <= est.upper <= r + 1
    assert est.certificate_source == "fixed-rank"
    assert observed_mse(rk.reduce_omega2(rk.RewardMatrix.from_scipy(S)), est.certificate) <= eps


def test_fixed_rank_is_a_scikit_learn_estimator():
    """FixedRank passes scikit-learn's estimator checks (as SoftImpute does), exposes its
    parameters to get_params / clone, and completes like fixed_rank_fit itself."""
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    from rankkit.testing.completion import assert_sklearn_estimator

    assert_sklearn_estimator(FixedRank(rank=2, max_iter=50))
    est = FixedRank(3, 1e-10, 0.0, method="als", max_iter=200)
    params = est.get_params()
    assert params["rank"] == 3 and params["eps"] == 1e-10 and params["method"] == "als"
    assert clone(est).get_params() == params
    S = low_rank_problem(40, 30, 2, 900, seed=11)
    fit = FixedRank(2, eps=1e-10, rho=0.0).fit(S)
    ref = fixed_rank_fit(S, 2, eps=1e-10, rho=0.0, progress=False)
    np.testing.assert_array_equal(fit.U_, ref.U)
    np.testing.assert_array_equal(fit.d_, ref.d)
    assert fit.rank_ == 2 and fit.components_.shape == (2, 30) and fit.n_features_in_ == 30
    # transform fills every missing cell and keeps the observed ones; score is minus the MSE
    X = np.full(S.shape, np.nan)
    rows, cols = S.nonzero()
    X[rows, cols] = np.asarray(S[rows, cols]).ravel()
    done = fit.transform(X)
    assert np.isfinite(done).all() and np.array_equal(done[rows, cols], X[rows, cols])
    assert -1e-6 < fit.score(X) <= 0
    # warm_start=True (scikit-learn's meaning) starts a refit from the previous factors
    warm = FixedRank(2, eps=1e-10, rho=0.0, warm_start=True).fit(S)
    again = warm.fit(S)
    assert again.n_iter_ <= 1 and again.mse_ <= 1e-10
    with pytest.raises(NotFittedError):
        FixedRank(2).transform(X)
