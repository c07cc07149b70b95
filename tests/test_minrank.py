"""estimate_min_rank: fixed-rank and soft-impute certificates on Ω₂, Lemma 3's +1, structural
lower bounds, the scale of a certificate, the summary and persistence."""

import json

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import rankkit as rk
from rankkit.exact import exact_completion
from rankkit.exact import rank_cap as _rank_cap
from rankkit.matrix import RewardMatrix
from rankkit.minrank import MinRankEstimate, certificate_scale, estimate_min_rank
from rankkit.softimpute import observed_mse
from rankkit.testing.bounds import assert_estimate_brackets

FAST = dict(progress=False, backend="numpy")
# the paper's methodology (App. C.3): what the tests of the soft-impute search pin down
SI = dict(FAST, method="soft-impute")


@pytest.fixture(autouse=True, scope="module")
def _one_numba_thread():
    """These fits are tiny (< 1,000 cells): a parallel kernel's thread hand-off costs far
    more than the work, and on a busy 2-core runner it dominates the run time."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def dense_mse_on_omega2(est: MinRankEstimate, R2: RewardMatrix) -> float:
    """Slow reference: form U diag(d) Vᵀ densely and average the squared error on Ω₂."""
    c = est.certificate
    M = (np.asarray(c.U) * np.asarray(c.d)) @ np.asarray(c.V).T
    X = R2.to_scipy().toarray()
    return float(np.mean((X - M)[R2.rows, R2.indices] ** 2))


# ---- the synthetic cases of the issue -----------------------------------------------------
@pytest.mark.parametrize("method", ["auto", "soft-impute"])
@pytest.mark.parametrize("n", [2, 8, 16, 32])
def test_upper_triangular_is_bracketed_exactly(n, method):
    R = rk.synthetic.upper_triangular(n)
    est = estimate_min_rank(R, method=method, **FAST)
    assert est.exact_lower == n
    assert est.bounds.verify(R) >= n
    assert est.n_single_rows == 1 and est.single_rows_nonzero
    assert est.exact_bracket == (n, n)  # Lemma 2 below, the rank cap c(Ω₂) + 1 = n above
    assert est.eps_lower == 1  # each fully observed block holds one diagonal cell at most
    assert_estimate_brackets(est, R)
    if method == "soft-impute" or n <= 8:
        # Ω₂ loses the one single-entry row; its certificate has rank n - 1; the row comes back
        # either appended (column factor ≠ 0) or by Lemma 3's + 1
        assert est.rank_certified == n - 1
        assert est.upper == n - 1 + int(not est.omega_extension["appended"])
    else:
        # ε > 0 admits a smaller rank than the exact minimal rank n (Lemma 2 is for ε = 0):
        # the fixed-rank solver finds such a certificate, checked here densely
        assert est.upper <= n
        assert dense_mse_on_omega2(est, rk.reduce_omega2(R)) <= est.eps
    assert est.mse_by_rank[0] > est.eps  # the zero matrix misses the diagonal
    text = est.summary()
    # two brackets, one quantity each
    assert f"{n} ≤ minrank_Ω(R) ≤ {n}" in text
    assert f"{est.eps_lower} ≤ minrank_Ω,ε(R) ≤ {est.upper}" in text
    assert f"{est.eps_lower} ≤ minrank_Ω₂,ε(R) ≤ {est.rank_certified}" in text


@pytest.mark.parametrize("n", [8, 16])
def test_upper_triangular_at_a_tiny_eps_needs_full_rank(n):
    # at ε = 1e-24 no rank below n - 1 fits Ω₂; the exact completion certifies the cap
    est = estimate_min_rank(rk.synthetic.upper_triangular(n), eps=1e-24, **FAST)
    assert est.exact_lower == est.upper == n


def test_one_value_per_row_needs_rank_one():
    R = rk.synthetic.one_per_row(50, 20)
    assert (R.row_nnz <= 1).all()
    est = estimate_min_rank(R, **FAST)
    assert est.omega2_nnz == 0 and est.rank_certified == 0 and est.certificate is None
    nonzero = bool(np.any(R.label_values() != 0))
    assert est.upper == int(nonzero) == est.exact_lower
    assert est.mse_by_rank == {0: 0.0}


def test_single_rows_of_observed_zeros_need_no_extra_rank():
    # two dense rows of rank 1 plus single-entry rows holding observed zeros: the zero
    # block completes them, so Lemma 3's +1 is not needed
    dense = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]])
    rows = [0, 0, 0, 1, 1, 1, 2, 3]
    cols = [0, 1, 2, 0, 1, 2, 1, 2]
    vals = list(dense.ravel()) + [0.0, 0.0]
    R = RewardMatrix.from_coo(rows, cols, vals, (4, 3))
    est = estimate_min_rank(R, **FAST)
    assert (est.n_single_rows, est.single_rows_nonzero) == (2, False)
    assert est.rank_certified == 1 == est.upper == est.exact_lower


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_random_low_rank_with_dense_observations(rank):
    R = rk.synthetic.random_low_rank(30, 20, rank, density=0.9, noise=0.0, seed=rank)
    est = estimate_min_rank(R, **FAST)
    assert est.upper is not None and est.upper <= rank + 1
    assert 1 <= est.exact_lower <= rank
    assert est.mse_by_rank[est.rank_certified] <= est.eps


# ---- the certificate is checked independently ---------------------------------------------
def test_certificate_mse_matches_a_dense_recomputation(rng):
    M = rng.normal(size=(25, 3)) @ rng.normal(size=(3, 15))
    R = RewardMatrix.from_dense(M, rng.random(M.shape) < 0.8)
    est = estimate_min_rank(R, **FAST)
    R2 = rk.reduce_omega2(R)
    ref = dense_mse_on_omega2(est, R2)
    tol = 64 * np.finfo(np.float64).eps * max(1.0, float(np.mean(M**2)))
    assert abs(est.mse_by_rank[est.certified_at] - ref) <= tol
    assert ref <= est.eps
    assert np.count_nonzero(np.asarray(est.certificate.d)) == est.rank_certified


def test_mse_from_factors_refuses_wrong_shapes():
    R = RewardMatrix.from_dense(np.ones((3, 2)))
    with pytest.raises(ValueError, match="expected \\(3, 1\\) and \\(2, 1\\)"):
        observed_mse(R, (np.ones((2, 1)), np.ones(1), np.ones((2, 1))))


def test_rank_cap_is_an_exact_completion_rank():
    # rows observe at most 2 cells -> a rank-2 exact completion exists (generic V)
    rows = [0, 0, 1, 1, 2, 2, 3, 3]
    cols = [0, 1, 1, 2, 2, 3, 3, 0]
    R = RewardMatrix.from_coo(rows, cols, np.arange(1.0, 9.0), (4, 4))
    assert _rank_cap(R) == 2
    # the default thresh=1e-5 stops this fit at MSE ~ 3e-5: converge further
    est = estimate_min_rank(R, thresh=1e-12, **SI)
    assert est.rank_certified == 2 == max(est.mse_by_rank)  # never tries beyond the cap
    assert max(estimate_min_rank(R, **FAST).mse_by_rank) <= 2


# ---- explicit ranks (Table 2 layout) -------------------------------------------------------
def test_explicit_ranks_give_exactly_those_keys(rng):
    M = rng.normal(size=(20, 4)) @ rng.normal(size=(4, 12))
    R = RewardMatrix.from_dense(M, rng.random(M.shape) < 0.7)
    # soft-impute as the only certificate: the Table 2 semantics
    est = estimate_min_rank(R, ranks=[0, 2, 5, 40], exact_fallback=False, **SI)
    assert list(est.mse_by_rank) == [0, 2, 5, 40]
    R2 = rk.reduce_omega2(R)
    assert est.mse_by_rank[0] == pytest.approx(np.mean(R2.label_values() ** 2))
    assert est.mse_by_rank[2] > est.eps  # a rank-4 generic matrix is not rank 2
    passing = [r for r, v in est.mse_by_rank.items() if v <= est.eps]
    assert est.certified_at == min(passing)
    assert est.rank_certified <= est.certified_at
    assert est.mse_by_rank[40] <= est.eps  # rank 40 > min(shape): fitted at full rank
    lines = est.summary().splitlines()
    assert any(line.split("|")[0].strip() == "40" for line in lines if "|" in line)
    # by default a passing rank above the cap is replaced by the exact completion at the cap
    est2 = estimate_min_rank(R, ranks=[0, 2, 5, 40], **SI)
    cap = _rank_cap(R2)
    assert est2.mse_by_rank == est.mse_by_rank
    assert est2.upper == min(est.upper, cap + int(est.single_rows_nonzero))
    if est.rank_certified > cap:
        assert est2.certificate_source == "exact-completion" and est2.certified_at is None


def test_nothing_passes_reports_why():
    R = rk.synthetic.upper_triangular(6)
    est = estimate_min_rank(R, ranks=[1, 2], exact_fallback=False, **SI)
    assert est.upper is None and est.rank_certified is None and est.certificate is None
    assert "no rank tried reaches MSE" in est.message and "largest tried: rank 2" in est.message
    assert "exact_fallback=True" in est.message
    assert "minimal ε-rank (ε = 1e-06" in est.summary() and "upper: unknown" in est.summary()


def test_failing_explicit_ranks_fall_back_to_the_exact_completion():
    # issue 3: an explicit list that all fails still gives an upper bound, the cap (+1)
    R = rk.synthetic.upper_triangular(6)
    R2 = rk.reduce_omega2(R)
    est = estimate_min_rank(R, ranks=[1, 2], **SI)
    assert list(est.mse_by_rank) == [1, 2] and all(v > est.eps for v in est.mse_by_rank.values())
    assert est.certificate_source == "exact-completion" and est.certified_at is None
    assert est.rank_certified == _rank_cap(R2) == 5
    # the removed single-entry row holds a 1 in a column the exact completion's factor covers
    assert est.upper == 5 + int(not est.omega_extension["appended"]) and est.exact_lower == 6
    assert_estimate_brackets(est, R)
    assert dense_mse_on_omega2(est, R2) <= est.exact_mse + 1e-24 and est.exact_mse <= est.eps
    text = est.summary()
    assert "constructive exact completion" in text and "λ-free" in text and "not soft-impute" in text
    assert f"minrank_Ω,ε(R) ≤ {est.upper}" in text and "6 ≤ minrank_Ω(R) ≤ 6" in text


def test_auto_falls_back_when_soft_impute_misses_eps_at_the_cap(rng):
    # soft-impute stopped after 2 iterations reaches ε at no rank up to the cap; the
    # constructive completion still certifies the cap, independently of λ
    M = rng.normal(size=(12, 9))
    R = RewardMatrix.from_dense(M, rng.random(M.shape) < 0.35)
    R2 = rk.reduce_omega2(R)
    cap = _rank_cap(R2)
    est = estimate_min_rank(R, max_iter=2, lam=1.0, **SI)
    assert cap >= 2 and max(est.mse_by_rank) == cap
    assert all(v > est.eps for v in est.mse_by_rank.values())
    assert est.upper == cap + int(est.single_rows_nonzero and not est.omega_extension["appended"])
    assert_estimate_brackets(est, R)
    assert est.certificate_source == "exact-completion" and est.rank_certified == cap
    assert est.exact_mse <= 1e-20 * np.mean(R2.label_values() ** 2)
    assert abs(dense_mse_on_omega2(est, R2) - est.exact_mse) <= 1e-20
    text = est.summary()
    # soft-impute's failure at the cap is flagged as untrusted, not read as a lower bound
    assert f"missed ε at rank(s) [{cap}]" in text and "not a lower bound" in text
    off = estimate_min_rank(R, max_iter=2, lam=1.0, exact_fallback=False, **SI)
    assert off.upper is None and off.mse_by_rank == est.mse_by_rank


def test_exact_fallback_round_trips_through_save(tmp_path):
    est = estimate_min_rank(rk.synthetic.upper_triangular(5), ranks=[1], **SI)
    assert est.certificate_source == "exact-completion"
    back = MinRankEstimate.load(est.save(tmp_path / "e"))
    assert back.to_dict() == est.to_dict()
    assert back.certificate.backend == "exact-completion"
    np.testing.assert_array_equal(back.certificate.V, est.certificate.V)


# ---- the constructive certificate -----------------------------------------------------------
@settings(max_examples=40)
@given(st.integers(1, 14), st.integers(1, 14), st.floats(0.05, 1.0), st.integers(-3, 3),
       st.integers(0, 2**32 - 1))
def test_exact_completion_at_the_cap_is_exact_to_rounding(n, m, density, log_scale, seed):
    g = np.random.default_rng(seed)
    X = g.normal(size=(n, m)) * 10.0**log_scale
    mask = g.random((n, m)) < density
    R = RewardMatrix.from_dense(X, mask)
    cap = _rank_cap(R)
    res = exact_completion(R, seed=seed)
    assert res.rank == cap and res.U.shape == (n, cap) and res.V.shape == (m, cap)
    assert np.count_nonzero(res.d) <= cap
    # tolerance: (1e5 · float64 eps)² relative to the mean square of the observed values
    scale = float(np.mean(X[mask] ** 2)) if mask.any() else 0.0
    tol = (1e5 * np.finfo(np.float64).eps) ** 2 * scale
    dense = (res.U * res.d) @ res.V.T
    ref = float(np.mean((dense - X)[mask] ** 2)) if mask.any() else 0.0
    assert res.mse <= tol and ref <= tol
    assert abs(res.mse - ref) <= tol


def test_exact_completion_uses_the_short_side_and_refuses_a_small_rank():
    # 2 long rows (8 cells) but every column has ≤ 2 cells: the column side gives rank 2
    g = np.random.default_rng(0)
    X = g.normal(size=(2, 8))
    R = RewardMatrix.from_dense(X)
    assert _rank_cap(R) == 2
    res = exact_completion(R, seed=1)
    assert res.rank == 2 and res.meta["side"] == "columns"
    np.testing.assert_allclose((res.U * res.d) @ res.V.T, X, atol=1e-12)
    Xt = RewardMatrix.from_dense(X.T)
    res_t = exact_completion(Xt, seed=1)
    assert res_t.meta["side"] == "rows"
    np.testing.assert_allclose((res_t.U * res_t.d) @ res_t.V.T, X.T, atol=1e-12)
    # a block-diagonal pattern: rows of 3 and columns of 3 -> rank 3 needed
    B = np.kron(np.eye(2), np.ones((3, 3)))
    R3 = RewardMatrix.from_dense(g.normal(size=(6, 6)), B > 0)
    with pytest.raises(ValueError, match="longest row of Ω has 3 cells.*pass rank ≥ 3"):
        exact_completion(R3, rank=2)
    with pytest.raises(ValueError, match="non-negative integer or None"):
        exact_completion(R3, rank=2.5)
    assert exact_completion(R3, seed=2).mse <= 1e-24


# ---- sources --------------------------------------------------------------------------------
def test_scipy_source_keeps_explicit_zeros_as_observations():
    n = 5
    mask = np.tril(np.ones((n, n), bool))
    r, c = np.nonzero(mask)
    S = sp.csr_matrix((np.eye(n)[r, c], (r, c)), shape=(n, n))
    est = estimate_min_rank(S, **FAST)
    assert (est.exact_lower, est.exact_upper, est.omega_nnz) == (n, n, mask.sum())
    assert est.upper in (n - 1, n)
    assert_estimate_brackets(est, S)


def test_dataset_source_builds_the_reward_matrix():
    # Example 3 as text: the rows [k_i] hold the Lemma 2 triangle over the last names
    n = 6
    ds = rk.synthetic.upper_triangular_dataset(n)
    est = estimate_min_rank(ds, **FAST)
    R = rk.build_reward_matrix(ds)
    assert (est.omega_shape, est.omega_nnz) == (R.shape, R.nnz)
    assert est.exact_lower >= n
    assert est.bounds.verify(R) >= n
    assert est.upper is not None and est.mse_by_rank[est.certified_at] <= est.eps


def test_input_errors_name_the_problem():
    R = rk.synthetic.upper_triangular(3)
    with pytest.raises(TypeError, match="RewardMatrix.from_dense"):
        estimate_min_rank(np.eye(3), **FAST)
    with pytest.raises(ValueError, match="method must be one of"):
        estimate_min_rank(R, method="pymanopt", **FAST)
    with pytest.raises(ValueError, match="max_abs must be"):
        estimate_min_rank(R, max_abs=-1.0, **FAST)
    with pytest.raises(ValueError, match="non-negative integers; got -1"):
        estimate_min_rank(R, ranks=[2, -1], **FAST)
    with pytest.raises(ValueError, match="'auto' or a list"):
        estimate_min_rank(R, ranks="fast", **FAST)
    with pytest.raises(ValueError, match="eps must be a finite number"):
        estimate_min_rank(R, eps=float("nan"), **FAST)
    with pytest.raises(ValueError, match="apply to text sources only"):
        estimate_min_rank(R, max_len=4, **FAST)


# ---- persistence: save/load, resumable checkpoints ----------------------------------------
def test_save_and_load_round_trip(tmp_path):
    est = estimate_min_rank(rk.synthetic.upper_triangular(6), **FAST)
    est.save(tmp_path / "est")
    assert not list((tmp_path / "est").glob("*.tmp*"))
    back = MinRankEstimate.load(tmp_path / "est")
    assert back.to_dict() == est.to_dict()
    json.dumps(est.to_dict())  # serialisable as is
    np.testing.assert_array_equal(np.asarray(back.certificate.U), np.asarray(est.certificate.U))
    np.testing.assert_array_equal(np.asarray(back.certificate.d), np.asarray(est.certificate.d))
    assert back.bounds.verify(rk.synthetic.upper_triangular(6)) == 6
    with pytest.raises(FileNotFoundError, match="MinRankEstimate.save"):
        MinRankEstimate.load(tmp_path / "missing")


def test_checkpoint_dir_skips_finished_ranks(tmp_path, monkeypatch):
    R = rk.synthetic.upper_triangular(7)
    first = estimate_min_rank(R, checkpoint_dir=tmp_path, **SI)
    import rankkit.softimpute as si

    def refuse(*a, **k):
        raise AssertionError("a finished rank was refitted instead of loaded")

    monkeypatch.setattr(si, "soft_impute", refuse)
    again = estimate_min_rank(R, checkpoint_dir=tmp_path, **SI)
    assert again.mse_by_rank == first.mse_by_rank
    assert (again.exact_lower, again.upper) == (first.exact_lower, first.upper)
    # a different matrix in the same directory is refused, naming the fix
    with pytest.raises(ValueError, match="different problem.*new directory"):
        estimate_min_rank(rk.synthetic.upper_triangular(5), checkpoint_dir=tmp_path, **SI)


# ---- properties ----------------------------------------------------------------------------
@settings(max_examples=15)
@given(st.integers(2, 8), st.integers(2, 8), st.integers(0, 3), st.integers(0, 2**32 - 1))
def test_bracket_is_sound_on_random_low_rank_patterns(n, m, r, seed):
    g = np.random.default_rng(seed)
    r = min(r, n, m)
    M = g.integers(-1, 2, size=(n, r)).astype(float) @ g.integers(-1, 2, size=(r, m))
    mask = g.random((n, m)) < 0.7
    R = RewardMatrix.from_dense(M, mask)
    est = estimate_min_rank(R, max_iter=300, **FAST)
    # the generator is a completion: no exact lower bound may exceed its rank
    assert est.exact_lower <= np.linalg.matrix_rank(M)
    assert est.bounds.verify(R) >= est.exact_lower
    if est.upper is not None and est.certificate is not None:
        assert dense_mse_on_omega2(est, rk.reduce_omega2(R)) <= est.eps
    assert est.mse_by_rank[0] == pytest.approx(
        float(np.mean(rk.reduce_omega2(R).label_values() ** 2)) if est.omega2_nnz else 0.0)


# ---- the fixed-rank default: scale, max_abs, reporting, persistence --------------------------
def _rank3(rng, n=40, m=30, density=0.6):
    M = rng.normal(size=(n, 3)) @ rng.normal(size=(3, m))
    return M, RewardMatrix.from_dense(M, rng.random(M.shape) < density)


def test_certificate_scale_is_exact_or_a_bound(rng):
    U = np.linalg.qr(rng.normal(size=(50, 4)))[0]
    V = np.linalg.qr(rng.normal(size=(30, 4)))[0]
    d = np.array([5.0, 2.0, 1.0, 0.5])
    M = (U * d) @ V.T
    exact = certificate_scale(U, d, V, block_elems=7)  # several row blocks
    assert exact["max_abs_exact"] and exact["max_abs"] == pytest.approx(np.abs(M).max(), rel=1e-14)
    assert exact["nuclear"] == pytest.approx(8.5) and exact["frobenius"] == pytest.approx(np.linalg.norm(M))
    bound = certificate_scale(U, d, V, exact_cells=10)
    assert not bound["max_abs_exact"] and bound["max_abs"] >= np.abs(M).max()


def test_default_reports_trials_and_scale(rng):
    M, R = _rank3(rng)
    est = estimate_min_rank(R, **FAST)
    assert est.method == "auto" and est.certificate_source == "fixed-rank"
    assert est.exact_lower <= 3 and est.upper <= 3 + int(est.single_rows_nonzero)
    R2 = rk.reduce_omega2(R)
    assert dense_mse_on_omega2(est, R2) <= est.eps
    # every fit is listed with what it cost; the certified rank's MSE is the recomputed one
    # the doubling starts at the proved ε-lower bound, and nothing below it is fitted
    assert [t["rank"] for t in est.trials][:2] == [0, max(1, est.eps_lower)]
    assert all(t["rank"] >= est.eps_lower for t in est.trials[1:])
    assert_estimate_brackets(est, R)
    assert all({"rank", "method", "n_iter", "seconds", "mse", "passed"} <= set(t) for t in est.trials)
    cert = [t for t in est.trials if t["passed"] and t["rank"] == est.certified_at]
    assert cert and cert[-1]["mse"] == est.mse_by_rank[est.certified_at]
    dense = (est.certificate.U * est.certificate.d) @ est.certificate.V.T
    assert est.scale["max_abs_exact"] and est.scale["max_abs"] == pytest.approx(np.abs(dense).max())
    text = est.summary()
    assert "certificate scale: max |entry|" in text and "fixed-rank certificate" in text
    assert "eps=[" in repr(est) and "exact=[" in repr(est) and "<table>" in est._repr_html_()


def test_max_abs_rejects_large_certificates(rng):
    M, R = _rank3(rng)
    free = estimate_min_rank(R, **FAST)
    bound = 0.5 * free.scale["max_abs"]
    est = estimate_min_rank(R, max_abs=bound, **FAST)
    rejected = [t for t in est.trials if t.get("rejected")]
    assert rejected and all(t["max_abs"] > bound for t in rejected)
    assert est.certificate is None or est.scale["max_abs"] <= bound
    assert "rejected" in est.summary()


def test_soft_impute_method_is_the_chain_of_warm_started_fits(rng):
    # method="soft-impute" is exactly soft_impute at each rank, warm-started from the previous
    # one (the Table 2 methodology), with the MSE recomputed from the factors
    M, R = _rank3(rng, density=0.5)
    est = estimate_min_rank(R, ranks=[0, 2, 5], lower_bound=False, **SI)
    R2 = rk.reduce_omega2(R)
    f2 = rk.soft_impute(R2, 2, 1e-4, max_iter=1000, progress=False, backend="numpy", seed=0)
    f5 = rk.soft_impute(R2, 5, 1e-4, max_iter=1000, progress=False, backend="numpy", seed=0, warm_start=f2)
    assert est.mse_by_rank[2] == observed_mse(R2, f2) and est.mse_by_rank[5] == observed_mse(R2, f5)
    assert [t["method"] for t in est.trials] == ["zero matrix", "soft-impute", "soft-impute"]


def test_save_to_a_json_path_and_plot(tmp_path, rng):
    import matplotlib

    matplotlib.use("Agg")
    M, R = _rank3(rng)
    est = estimate_min_rank(R, **FAST)
    est.save(tmp_path / "x.json")
    assert (tmp_path / "x.json").is_file() and (tmp_path / "x.certificate.npz").is_file()
    back = MinRankEstimate.load(tmp_path / "x.json")
    assert back.to_dict() == est.to_dict()
    np.testing.assert_array_equal(back.certificate.V, est.certificate.V)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        est.save(tmp_path / "file")
    ax = est.plot()
    assert ax.get_yscale() == "log" and any("ε =" in t.get_text() for t in ax.get_legend().get_texts())


def test_auto_checkpoint_dir_skips_finished_fits(tmp_path, monkeypatch, rng):
    M, R = _rank3(rng)
    first = estimate_min_rank(R, checkpoint_dir=tmp_path, **FAST)
    import rankkit.lowrank as lr

    monkeypatch.setattr(lr, "fixed_rank_fit", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("a finished fit was refitted instead of loaded")))
    again = estimate_min_rank(R, checkpoint_dir=tmp_path, **FAST)
    assert again.mse_by_rank == first.mse_by_rank and again.upper == first.upper
    with pytest.raises(ValueError, match="different problem"):
        estimate_min_rank(R, checkpoint_dir=tmp_path, lam=1e-3, **FAST)


# ---- the one-liner on what researchers hold ------------------------------------------------
def test_one_liner_takes_text_tables_and_token_ids(tmp_path):
    texts = ["good film", "bad film", "good plot", "bad plot twist", "a good film", "a bad one"]
    y = np.array([1.0, 0.0, 0.9, 0.1, 0.8, 0.2])
    ref = estimate_min_rank(rk.datasets.load({"text": texts, "score": y}, text="text", labels="score"),
                            **FAST)
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"text": texts, "score": y})
    csv = tmp_path / "d.csv"
    df.to_csv(csv, index=False)
    for source, kw in (((texts, y), {}), (df, {}), (str(csv), dict(text="text", labels="score")),
                       (csv, {})):
        est = estimate_min_rank(source, **kw, **FAST)
        assert (est.omega_shape, est.omega_nnz, est.exact_lower, est.upper) == \
            (ref.omega_shape, ref.omega_nnz, ref.exact_lower, ref.upper)
        assert est.mse_by_rank == ref.mse_by_rank
    tok = rk.tokenizers.load("gpt2")
    ids = [tok.encode(t) for t in texts]
    est = estimate_min_rank((ids, y), **FAST)
    assert est.omega_nnz == ref.omega_nnz and est.mse_by_rank == ref.mse_by_rank
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_dict({"text": texts, "score": y.tolist()})
    assert estimate_min_rank(hf, **FAST).mse_by_rank == ref.mse_by_rank
    dd = datasets.DatasetDict({"train": hf, "test": hf})
    assert estimate_min_rank(dd, split="test", **FAST).mse_by_rank == ref.mse_by_rank
    with pytest.raises(ValueError, match="split"):
        estimate_min_rank(dd, **FAST)


@pytest.mark.parametrize("n, permute", [(13, False), (40, True)])
def test_triangles_print_two_consistent_brackets(n, permute):
    """Issue 22: exact [n, n]; the ε-bracket [·, ≤ n] on its own quantity, every end re-checked."""
    R = rk.synthetic.upper_triangular(n)
    if permute:
        g = np.random.default_rng(n)
        pr, pc = g.permutation(n), g.permutation(n)
        D, W = R.to_scipy().toarray(), np.zeros((n, n), bool)
        W[R.rows, R.indices] = True
        R = RewardMatrix.from_dense(D[pr][:, pc], W[pr][:, pc])
    est = estimate_min_rank(R, **FAST)
    assert est.exact_bracket == (n, n)
    lo, up = est.eps_bracket
    assert 1 <= lo <= est.rank_certified <= up <= n
    assert_estimate_brackets(est, R)
    text = est.summary()
    assert f"{n} ≤ minrank_Ω(R) ≤ {n}" in text and f"{lo} ≤ minrank_Ω,ε(R) ≤ {up}" in text
    d = est.to_dict()
    assert (d["exact_lower"], d["exact_upper"], d["eps_lower"], d["upper"]) == (n, n, lo, up)
    assert "lower" not in d  # no key that mixes the quantities
    with pytest.warns(DeprecationWarning, match="exact_lower"):
        assert est.lower == n


def test_saved_estimate_keeps_both_brackets(tmp_path):
    est = estimate_min_rank(rk.synthetic.upper_triangular(8), **FAST)
    est.save(tmp_path / "e.json")
    again = rk.MinRankEstimate.load(tmp_path / "e.json")
    assert again.exact_bracket == est.exact_bracket and again.eps_bracket == est.eps_bracket
    assert again.eps_bounds.verify(rk.reduce_omega2(rk.synthetic.upper_triangular(8))) == est.eps_lower
    assert again.omega_extension == est.omega_extension


# ---- the label range and ε (issue 25 item 2) ------------------------------------------------
def _scaled(R: RewardMatrix, c: float) -> RewardMatrix:
    import dataclasses

    return dataclasses.replace(R, values=R.values * c)


def _lowrank_pattern(seed=3, n=30, m=12, k=2, density=0.5) -> RewardMatrix:
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, k)) @ rng.uniform(0, 1, (k, m)) / k
    mask = rng.random((n, m)) < density
    mask[np.arange(n), rng.integers(0, m, n)] = True  # no empty row
    return RewardMatrix.from_dense(np.where(mask, X, np.nan))


def test_labels_outside_the_unit_interval_warn_and_name_the_range():
    R = _scaled(_lowrank_pattern(), 5.0)
    hi = float(R.values.max())
    with pytest.warns(rk.LabelScaleWarning, match=rf"label 0 takes values in \[.*, {hi:.6g}\]") as rec:
        est = estimate_min_rank(R, **FAST)
    assert "normalize=True" in str(rec[0].message)
    assert est.label_range == (float(R.values.min()), hi) and est.label_scale == 1.0
    assert "outside [0, 1]" in est.summary()


def test_labels_in_the_unit_interval_do_not_warn():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", rk.LabelScaleWarning)
        est = estimate_min_rank(_lowrank_pattern(), **FAST)
    assert 0.0 <= est.label_range[0] <= est.label_range[1] <= 1.0


@pytest.mark.parametrize("c", [5.0, 0.01, -3.0])
def test_normalize_divides_by_the_largest_magnitude_and_keeps_the_bracket(c):
    """normalize=True on c·R analyses c·R / max|c·R|: the same brackets as R / max|R|, and the
    certificate re-verifies on the divided values."""
    R = _lowrank_pattern()
    ref = estimate_min_rank(R, normalize=True, **FAST)
    est = estimate_min_rank(_scaled(R, c), normalize=True, **FAST)
    assert est.label_scale == pytest.approx(abs(c) * ref.label_scale, rel=8 * np.finfo(float).eps)
    assert (est.eps_lower, est.upper, est.exact_lower, est.exact_upper) == \
        (ref.eps_lower, ref.upper, ref.exact_lower, ref.exact_upper)
    R2 = rk.reduce_omega2(_scaled(R, c / est.label_scale))
    assert observed_mse(R2, est.certificate) <= est.eps
    assert f"divided by {est.label_scale:.6g}" in est.summary()


def test_the_label_range_survives_save_and_load(tmp_path):
    est = estimate_min_rank(_scaled(_lowrank_pattern(), 4.0), normalize=True, **FAST)
    got = MinRankEstimate.load(est.save(tmp_path / "e.json"))
    assert got.label_range == est.label_range and got.label_scale == est.label_scale


def test_the_summary_puts_the_certificate_scale_against_the_labels():
    est = estimate_min_rank(_lowrank_pattern(), **FAST)
    ratio = est.scale["max_abs"] / max(abs(v) for v in est.label_range)
    assert f"= {ratio:.3g} × the largest observed |label|" in est.summary()


def test_normalize_must_be_a_bool():
    with pytest.raises(TypeError, match="normalize must be True or False"):
        estimate_min_rank(_lowrank_pattern(), normalize="yes", **FAST)


def test_the_world_of_one_estimate_normalizes_the_same_way():
    import rankkit.distributed as rd

    R = _scaled(_lowrank_pattern(), 5.0)
    ref = estimate_min_rank(R, normalize=True, **FAST)
    got = rd.estimate_min_rank(R, comm=rd.Comm(), normalize=True, **FAST)
    assert (got.label_range, got.label_scale) == (ref.label_range, ref.label_scale)
    assert (got.eps_lower, got.upper) == (ref.eps_lower, ref.upper)


def test_trials_are_a_list_and_a_frame(tmp_path):
    pd = pytest.importorskip("pandas")
    est = estimate_min_rank(rk.synthetic.upper_triangular(6), **FAST)
    assert isinstance(est.trials, rk.minrank.Trials) and isinstance(est.trials, list)
    df = est.trials.to_frame()
    assert isinstance(df, pd.DataFrame) and len(df) == len(est.trials) >= 2
    assert list(df.columns[:7]) == ["rank", "method", "n_iter", "seconds", "mse", "passed", "stop"]
    assert df["rank"].tolist() == [t["rank"] for t in est.trials]
    assert df["passed"].tolist() == [t["passed"] for t in est.trials] and df["passed"].any()
    json.dumps(est.to_dict())  # still plain JSON
    got = MinRankEstimate.load(est.save(tmp_path / "e"))
    assert isinstance(got.trials, rk.minrank.Trials) and got.trials == est.trials


def test_the_plot_labels_the_certificate_at_the_rank_it_is_drawn():
    """Issue 25 item 7: the star sits at the certifying fit's rank and its legend says that
    rank; Lemma 3's bound on Ω is stated as such, not as the rank of the star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    est = estimate_min_rank(rk.synthetic.upper_triangular(6), **FAST)
    ax = est.plot()
    star = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert len(star) == 1 and star[0].get_xdata()[0] == est.certified_at
    label = star[0].get_label()
    assert label.startswith(f"certificate at rank {est.certified_at}")
    assert f"ε-rank on Ω₂ ≤ {est.rank_certified}" in label
    assert (f"on Ω ≤ {est.upper} (Lemma 3)" in label) == (est.upper != est.rank_certified)
    plt.close(ax.figure)
