"""soft_impute: agreement with the dense reference, R semantics, backends, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import CPU_BACKENDS, CUDA_BACKENDS
from hypothesis import given
from hypothesis import strategies as st

from rankkit._kernels import sampled_dot, sampled_dot_reference
from rankkit.estimators import SoftImpute
from rankkit.matrix import RewardMatrix
from rankkit.softimpute import (
    SoftImputeResult,
    _warm_factors,
    observed_mse,
    soft_impute,
    soft_impute_path,
)
from rankkit.testing.completion import assert_completion_close, soft_impute_dense_reference

EPS = np.finfo(np.float64).eps
# Iterates pass through ~2 SVDs per iteration; errors grow mildly with the iteration count.
RTOL = 1e6 * EPS


def _problem(rng, n, m, r, density):
    X = rng.standard_normal((n, r)) @ rng.standard_normal((r, m)) + 0.1 * rng.standard_normal((n, m))
    mask = rng.random((n, m)) < density
    return X, mask


def _sparse(X, mask):
    r, c = np.nonzero(mask)
    return sp.csr_matrix((X[r, c], (r, c)), shape=X.shape)


def _U0(rng, n, k):
    return np.linalg.svd(rng.standard_normal((n, k)), full_matrices=False)[0]


@given(n=st.integers(1, 30), m=st.integers(1, 20), k=st.integers(1, 6), seed=st.integers(0, 2**16),
       density=st.floats(0.05, 1.0))
def test_sampled_dot_matches_reference(n, m, k, seed, density):
    rng = np.random.default_rng(seed)
    S = sp.random(n, m, density=density, random_state=seed, format="csr")
    A, B = rng.standard_normal((n, k)), rng.standard_normal((m, k))
    got = sampled_dot(S.indptr, S.indices, A, B)
    want = sampled_dot_reference(S.indptr, S.indices, A, B)
    np.testing.assert_allclose(got, want, rtol=100 * EPS, atol=100 * EPS * k)


@given(n=st.integers(2, 14), m=st.integers(2, 12), data=st.data(), seed=st.integers(0, 2**16),
       density=st.floats(0.2, 1.0), lam=st.sampled_from([0.0, 1e-4, 0.3, 3.0]))
def test_matches_dense_reference_iterate_by_iterate(n, m, data, seed, density, lam):
    """Same U₀ → the same objective and ratio traces and the same final fit as the dense
    transcription of R's Ssimpute.als."""
    k = data.draw(st.integers(1, min(n, m)))
    rng = np.random.default_rng(seed)
    X, mask = _problem(rng, n, m, 2, density)
    U0 = _U0(rng, n, k)
    n_iter = 6
    ref = soft_impute_dense_reference(X, mask, U0, lam, max_iter=n_iter, thresh=-1.0)
    got = soft_impute(_sparse(X, mask), k, lam, warm_start={"u": U0}, max_iter=n_iter, thresh=-1.0,
                      progress=False)
    scale = max(1.0, float(np.abs(X).max()) ** 2 * X.size)
    np.testing.assert_allclose(got.objective, ref.objective, rtol=RTOL, atol=RTOL * scale)
    np.testing.assert_allclose(got.ratio, ref.ratio, rtol=RTOL, atol=RTOL)
    assert got.n_iter == ref.n_iter == n_iter
    # The final step (R's final.svd) multiplies by V. A factor direction whose d is ~0 before
    # that step is only defined up to rotation inside the orthogonal complement, so each
    # implementation may pick another one by rounding and the final fits legitimately differ.
    # Compare the final fit whenever every direction is determined.
    pre = soft_impute_dense_reference(X, mask, U0, lam, max_iter=n_iter, thresh=-1.0,
                                      final_svd=False)
    if pre.d.min() > 1e-6 * max(pre.d.max(), 1.0):
        np.testing.assert_allclose(got.to_dense(), ref.to_dense(), rtol=RTOL,
                                   atol=RTOL * np.sqrt(scale))
        np.testing.assert_allclose(np.sort(got.d), np.sort(ref.d), rtol=RTOL,
                                   atol=RTOL * np.sqrt(scale))


def test_fully_observed_low_rank_is_reproduced(rng):
    n, m, r = 40, 25, 3
    X = rng.standard_normal((n, r)) @ rng.standard_normal((r, m))
    mask = np.ones_like(X, dtype=bool)
    fit = soft_impute(_sparse(X, mask), r, 1e-6, thresh=1e-14, max_iter=500, progress=False)
    assert fit.converged
    assert fit.effective_rank == r
    # λ shrinks each singular value by λ: the fit can be off by about λ per direction.
    assert_completion_close(fit, X, mask, rtol=1e-5)
    np.testing.assert_allclose(fit.d, np.linalg.svd(X, compute_uv=False)[:r] - 1e-6, rtol=1e-9)


def test_objective_is_monotone_and_mse_matches_factors(rng):
    X, mask = _problem(rng, 60, 40, 4, 0.4)
    S = _sparse(X, mask)
    fit = soft_impute(S, 6, 0.5, max_iter=60, thresh=-1.0, progress=False)
    obj = np.asarray(fit.objective)
    assert obj.size == 60
    assert np.all(np.diff(obj) <= 1e3 * EPS * obj[:-1]), "objective increased"
    assert fit.mse == pytest.approx(observed_mse(S, fit), rel=1e3 * EPS)
    assert fit.sse == pytest.approx(fit.mse * S.nnz, rel=1e3 * EPS)


def test_rank_zero_is_the_zero_matrix(rng):
    X, mask = _problem(rng, 10, 8, 2, 0.5)
    fit = soft_impute(_sparse(X, mask), 0, 1e-4, progress=False)
    assert fit.U.shape == (10, 0) and fit.V.shape == (8, 0) and fit.effective_rank == 0
    assert fit.mse == pytest.approx(np.mean(X[mask] ** 2), rel=10 * EPS)
    np.testing.assert_array_equal(fit.predict([0, 3], [1, 2]), 0.0)


def test_explicit_zeros_are_observations(rng):
    """A stored 0.0 pulls the fit toward 0; dropping it (missing) does not."""
    X, mask = _problem(rng, 12, 9, 1, 1.0)
    X[mask] += 5.0
    zr, zc = np.array([0, 3, 7]), np.array([1, 4, 8])
    X[zr, zc] = 0.0
    S = _sparse(X, mask)
    assert S.nnz == mask.sum()  # explicit zeros are stored
    U0 = _U0(rng, 12, 2)
    with_zeros = soft_impute(S, 2, 1e-3, warm_start={"u": U0}, max_iter=30, thresh=-1.0, progress=False)
    ref = soft_impute_dense_reference(X, mask, U0, 1e-3, max_iter=30, thresh=-1.0)
    np.testing.assert_allclose(with_zeros.to_dense(), ref.to_dense(), rtol=RTOL, atol=RTOL * 100)
    assert with_zeros.nnz == mask.sum()
    S_missing = S.copy()
    S_missing.eliminate_zeros()
    without = soft_impute(S_missing, 2, 1e-3, warm_start={"u": U0}, max_iter=30, thresh=-1.0, progress=False)
    assert without.nnz == mask.sum() - 3
    assert np.abs(with_zeros.predict(zr, zc)).mean() < np.abs(without.predict(zr, zc)).mean()


def test_reward_matrix_input_and_label(rng):
    X, mask = _problem(rng, 15, 10, 2, 0.6)
    r, c = np.nonzero(mask)
    vals = np.stack([X[r, c], -X[r, c]], axis=1)
    R = RewardMatrix.from_coo(r, c, vals, X.shape)
    a = soft_impute(R, 2, 1e-2, label=0, max_iter=20, progress=False)
    b = soft_impute(R, 2, 1e-2, label=1, max_iter=20, progress=False)
    # Negating X negates every iterate (same U₀ from the same seed): same d, M → −M.
    np.testing.assert_allclose(b.to_dense(), -a.to_dense(), rtol=RTOL, atol=RTOL * 10)


@pytest.mark.parametrize("backend, device", CPU_BACKENDS + CUDA_BACKENDS)
def test_backends_agree_with_numpy(backend, device, rng):
    X, mask = _problem(rng, 50, 30, 3, 0.5)
    S = _sparse(X, mask)
    kw = dict(max_iter=25, thresh=-1.0, progress=False, seed=3)
    ref = soft_impute(S, 5, 0.1, backend="numpy", **kw)
    got = soft_impute(S, 5, 0.1, backend=backend, device=device, **kw)
    assert got.backend == backend
    np.testing.assert_allclose(got.objective, ref.objective, rtol=RTOL)
    np.testing.assert_allclose(got.to_dense(), ref.to_dense(), rtol=RTOL, atol=RTOL * 10)
    assert got.mse == pytest.approx(ref.mse, rel=RTOL)


def test_float32_is_close_to_float64(rng):
    X, mask = _problem(rng, 40, 30, 3, 0.6)
    S = _sparse(X, mask)
    a = soft_impute(S, 3, 0.1, max_iter=15, thresh=-1.0, progress=False)
    b = soft_impute(S, 3, 0.1, max_iter=15, thresh=-1.0, progress=False, dtype="float32")
    tol = 1e3 * np.finfo(np.float32).eps
    np.testing.assert_allclose(b.to_dense(), a.to_dense(), rtol=tol, atol=tol * np.abs(X).max())


def _checkpoint_case(rng, tmp_path, n, m, r, density, k, lam, max_iter, seed):
    """A noisy rank-``r`` problem for the checkpoint tests: ``fit(**extra)`` runs soft_impute
    with a fixed iteration count (``thresh=-1``, no early stop) plus ``extra``; returns ``fit``,
    the uninterrupted fit to compare a resumed run with, and a checkpoint path."""
    X, mask = _problem(rng, n, m, r, density)
    S = _sparse(X, mask)

    def fit(**extra):
        return soft_impute(S, k, lam, max_iter=max_iter, thresh=-1.0, progress=False, seed=seed,
                           **extra)

    return fit, fit(), tmp_path / "state.npz"


def test_checkpoint_resume_is_identical(rng, tmp_path):
    fit, full, ck = _checkpoint_case(rng, tmp_path, 40, 25, 3, 0.5, k=4, lam=0.2, max_iter=20,
                                     seed=7)
    seen = []

    def stop_at_7(it, info):
        seen.append((it, info["mse"]))
        return it == 7

    part = fit(checkpoint=ck, checkpoint_every=3, callback=stop_at_7)
    assert part.n_iter == 7 and not part.converged and ck.is_file()
    assert [i for i, _ in seen] == list(range(1, 8))
    resumed = fit(checkpoint=ck)
    assert resumed.n_iter == full.n_iter == 20
    np.testing.assert_array_equal(resumed.objective, full.objective)
    np.testing.assert_array_equal(resumed.U, full.U)
    np.testing.assert_array_equal(resumed.d, full.d)
    np.testing.assert_array_equal(resumed.V, full.V)
    assert not ck.exists(), "a finished run removes its checkpoint"


def test_checkpoint_of_another_problem_is_refused(rng, tmp_path):
    X, mask = _problem(rng, 20, 10, 2, 0.5)
    S = _sparse(X, mask)
    ck = tmp_path / "state.npz"
    soft_impute(S, 2, 0.2, checkpoint=ck, callback=lambda it, info: True, progress=False)
    with pytest.raises(ValueError, match="different problem"):
        soft_impute(S, 2, 0.3, checkpoint=ck, progress=False)


def test_save_load_roundtrip(rng, tmp_path):
    X, mask = _problem(rng, 20, 12, 2, 0.7)
    fit = soft_impute(_sparse(X, mask), 3, 0.05, max_iter=10, progress=False)
    path = tmp_path / "fit"  # exact name, no suffix added
    fit.save(path)
    assert path.is_file()
    back = SoftImputeResult.load(path)
    for name in ("U", "d", "V", "objective", "ratio"):
        np.testing.assert_array_equal(getattr(back, name), getattr(fit, name))
    assert (back.mse, back.n_iter, back.converged, back.rank, back.shape, back.lam) == \
        (fit.mse, fit.n_iter, fit.converged, fit.rank, fit.shape, fit.lam)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SoftImputeResult.load(tmp_path / "nope")


def test_warm_start_pads_like_r(rng):
    n, m = 20, 15
    u, v = _U0(rng, n, 2), _U0(rng, m, 2)
    U, Dsq, V, warm = _warm_factors({"u": u, "d": [3.0, 1.5], "v": v}, n, m, 5, np.random.default_rng(0))
    assert warm
    np.testing.assert_array_equal(U[:, :2], u)
    np.testing.assert_allclose(U.T @ U, np.eye(5), atol=100 * EPS)
    np.testing.assert_array_equal(Dsq, [3.0, 1.5, 1.5, 1.5, 1.5])  # R repeats the last positive d
    np.testing.assert_array_equal(V[:, 2:], 0.0)
    # Columns with d = 0 are dropped first (R's clean.warm.start).
    U2, D2, _, _ = _warm_factors({"u": u, "d": [3.0, 0.0], "v": v}, n, m, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(U2[:, 0], u[:, 0])
    np.testing.assert_array_equal(D2, [3.0, 3.0])


def test_warm_start_from_converged_fit_stays_put(rng):
    X, mask = _problem(rng, 30, 20, 2, 0.6)
    S = _sparse(X, mask)
    fit = soft_impute(S, 3, 0.5, thresh=1e-12, max_iter=2000, progress=False, final_svd=False)
    assert fit.converged
    again = soft_impute(S, 3, 0.5, thresh=1e-10, warm_start=fit, progress=False, final_svd=False)
    assert again.n_iter <= 2
    np.testing.assert_allclose(again.to_dense(), fit.to_dense(), atol=1e-5 * np.abs(X).max())


def test_path_over_ranks_and_lams(rng):
    X, mask = _problem(rng, 30, 20, 3, 0.7)
    S = _sparse(X, mask)
    fits = soft_impute_path(S, ranks=[1, 2, 4], lams=0.1, max_iter=200, progress=False)
    assert [f.rank for f in fits] == [1, 2, 4]
    mses = [f.mse for f in fits]
    assert mses[0] > mses[1] > mses[2]
    lam_fits = soft_impute_path(S, ranks=4, lams=[10.0, 1.0, 0.1], max_iter=200, progress=False)
    assert [f.lam for f in lam_fits] == [10.0, 1.0, 0.1]
    assert lam_fits[0].effective_rank <= lam_fits[-1].effective_rank
    assert lam_fits[0].mse > lam_fits[-1].mse
    with pytest.raises(ValueError, match="equal lengths"):
        soft_impute_path(S, ranks=[1, 2], lams=[1.0, 2.0, 3.0], progress=False)


def test_estimator_and_predict(rng):
    X, mask = _problem(rng, 25, 15, 2, 0.8)
    est = SoftImpute(2, 0.01, max_iter=50, progress=False).fit(_sparse(X, mask))
    assert est.components_.shape == (2, 15) and est.U_.shape == (25, 2)
    rows, cols = np.nonzero(mask)
    np.testing.assert_allclose(est.predict_cells(rows, cols), est.result_.to_dense()[rows, cols], rtol=1e3 * EPS,
                               atol=1e3 * EPS)
    assert est.mse_ == pytest.approx(np.mean((est.predict_cells(rows, cols) - X[rows, cols]) ** 2), rel=1e-9)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="not fitted"):
        SoftImpute(2).predict_cells([0], [0])


def test_scikit_learn_estimator_checks_pass():
    from rankkit.testing.completion import assert_sklearn_estimator

    assert_sklearn_estimator(SoftImpute(rank=2, max_iter=50))


def _exact(rng, n, m, r, density):
    return rng.standard_normal((n, r)) @ rng.standard_normal((r, m)), rng.random((n, m)) < density


def test_fit_transform_fills_nan_cells_and_keeps_observed_ones(rng):
    X, mask = _exact(rng, 40, 12, 2, 0.7)
    Xn = np.where(mask, X, np.nan)
    est = SoftImpute(rank=2, lam=0.0, max_iter=500, thresh=1e-12)
    done = est.fit_transform(Xn)
    np.testing.assert_array_equal(done[mask], X[mask])  # observed cells untouched
    # exactly rank-2 data: the missing cells are recovered (to soft-impute's convergence)
    np.testing.assert_allclose(done[~mask], X[~mask], atol=1e-4)
    # the same from a sparse matrix of the observed cells, and on rows never seen in fit
    sparse = SoftImpute(rank=2, lam=0.0, max_iter=500, thresh=1e-12).fit(_sparse(X, mask))
    np.testing.assert_allclose(sparse.transform(Xn), done, atol=1e-6)
    # rows never seen in fit, from the same column space: folded in and completed
    new = rng.standard_normal((5, 40)) @ X / 40
    new_mask = rng.random(new.shape) < 0.7
    got = est.transform(np.where(new_mask, new, np.nan))
    np.testing.assert_allclose(got, new, atol=1e-4)
    assert -1e-8 < est.score(Xn) <= 0.0


def test_pipeline_and_grid_search_choose_a_sufficient_rank(rng):
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, mask = _exact(rng, 60, 15, 2, 0.8)
    Xn = np.where(mask, X, np.nan)
    pipe = make_pipeline(FunctionTransformer(lambda a: a * 1.0), SoftImpute(lam=1e-6, max_iter=300))
    gs = GridSearchCV(pipe, {"softimpute__rank": [1, 2, 3]}, cv=3).fit(Xn)
    scores = dict(zip(gs.cv_results_["param_softimpute__rank"], gs.cv_results_["mean_test_score"],
                      strict=True))
    assert gs.best_params_["softimpute__rank"] >= 2 and -scores[1] > 100 * -scores[2]
    with pytest.raises(ValueError, match="bogus"):
        SoftImpute().set_params(bogus=1)


@pytest.mark.parametrize("kw, match", [
    (dict(rank=11), r"rank must be an integer in \[0, min\(n, m\)\] = \[0, 10\]"),
    (dict(rank=-1), "rank must be"),
    (dict(lam=-1.0), "lam must be a finite number"),
    (dict(dtype="int32"), "dtype must be"),
    (dict(backend="jax"), "backend must be one of"),
    (dict(warm_start={"u": np.ones((3, 2))}), r"warm_start shapes"),
])
def test_invalid_arguments_are_named(kw, match):
    S = sp.random(12, 10, density=0.5, random_state=0, format="csr")
    args = dict(rank=2, lam=0.1, progress=False) | kw
    with pytest.raises(ValueError, match=match):
        soft_impute(S, **args)


def test_duplicate_entries_are_refused():
    S = sp.coo_matrix(([1.0, 2.0], ([0, 0], [1, 1])), shape=(3, 3))
    with pytest.raises(ValueError, match="more than once"):
        soft_impute(S, 1, 0.1, progress=False)


def test_parallel_and_serial_kernels_agree_bitwise(rng, monkeypatch):
    """Above _SERIAL_WORK the numba kernels run in parallel; the fixed chunk order makes the
    result bitwise equal to the serial build (and so resumes stay exact)."""
    import rankkit._kernels as kern

    X, mask = _problem(rng, 400, 300, 3, 0.6)
    S = _sparse(X, mask)
    assert S.nnz * 4 >= kern._SERIAL_WORK
    A, B = rng.standard_normal((400, 4)), rng.standard_normal((300, 4))
    par = sampled_dot(S.indptr, S.indices, A, B)
    np.testing.assert_allclose(par, sampled_dot_reference(S.indptr, S.indices, A, B), rtol=100 * EPS,
                               atol=100 * EPS)
    kw = dict(max_iter=3, thresh=-1.0, progress=False)
    fit_par = soft_impute(S, 4, 0.1, **kw)
    monkeypatch.setattr(kern, "_SERIAL_WORK", 1 << 62)
    np.testing.assert_array_equal(sampled_dot(S.indptr, S.indices, A, B), par)
    fit_ser = soft_impute(S, 4, 0.1, **kw)
    np.testing.assert_array_equal(fit_par.objective, fit_ser.objective)
    np.testing.assert_array_equal(fit_par.to_dense(), fit_ser.to_dense())


def test_ctrl_c_keeps_a_resumable_checkpoint(rng, tmp_path):
    fit, full, ck = _checkpoint_case(rng, tmp_path, 30, 20, 2, 0.6, k=3, lam=0.1, max_iter=12,
                                     seed=1)

    def interrupt(it, info):
        if it == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(checkpoint=ck, checkpoint_every=100, callback=interrupt)
    with np.load(ck) as z:
        assert int(z["iter"]) == 5 and z["objective"].size == 5
    resumed = fit(checkpoint=ck)
    np.testing.assert_array_equal(resumed.objective, full.objective)
    np.testing.assert_array_equal(resumed.to_dense(), full.to_dense())


def test_tiled_layout_does_not_change_the_iterates(rng, monkeypatch):
    """The column tiles of the numpy kernels only reorder each row's sum: a fit on a layout
    with one entry per tile segment follows the single-tile fit up to rounding."""
    import rankkit._kernels as kern

    X, mask = _problem(rng, 40, 30, 3, 0.5)
    S = _sparse(X, mask)
    kw = dict(max_iter=10, thresh=-1.0, progress=False)
    monkeypatch.setattr(kern, "_TILE_BYTES", 1 << 30)
    one = soft_impute(S, 4, 0.1, **kw)
    monkeypatch.setattr(kern, "_TILE_BYTES", 1)
    monkeypatch.setattr(kern, "_MIN_SEGMENT", 0)
    many = soft_impute(S, 4, 0.1, **kw)
    np.testing.assert_allclose(many.objective, one.objective, rtol=RTOL)
    np.testing.assert_allclose(many.to_dense(), one.to_dense(), rtol=RTOL, atol=RTOL * 10)


def test_parallel_and_serial_builds_have_separate_disk_caches():
    """Numba keys its on-disk cache by qualname, not by the parallel flag: a shared name let
    the first-compiled (serial) build be loaded for the parallel kernel too."""
    import rankkit._kernels as kern

    for name in ("_sampled_dot", "_tiled_rows"):
        par, ser = getattr(kern, name + "_par"), getattr(kern, name + "_ser")
        assert par.targetoptions.get("parallel") and not ser.targetoptions.get("parallel")
        assert par.py_func.__qualname__ != ser.py_func.__qualname__
        assert par.py_func.__code__ is ser.py_func.__code__


def test_numpy_fit_runs_blas_single_threaded(rng):
    """numba's kernels use every core; the fit keeps BLAS to one thread beside them and
    restores the caller's setting afterwards."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    X, mask = _problem(rng, 30, 20, 2, 0.6)
    seen = []

    def record(it, info):
        seen.extend(p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas")

    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        soft_impute(_sparse(X, mask), 3, 0.1, max_iter=2, progress=False, callback=record)
        after = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    assert seen and set(seen) == {1}
    assert after and set(after) == {2}


def test_values_that_overflow_the_squared_error_are_refused():
    # issue 12: labels of 1e200 ended soft-impute after two iterations with MSE = inf
    from rankkit.lowrank import fixed_rank_fit

    S = sp.random(30, 20, density=0.5, random_state=0, format="csr") * 1e200
    with pytest.raises(ValueError, match="reach 9.99e\\+199.*overflow float64.*rescale"):
        soft_impute(S, 2, 1e-4, progress=False)
    with pytest.raises(ValueError, match="overflow float64"):
        fixed_rank_fit(S, 2, progress=False)
    assert np.isfinite(soft_impute(S / 1e200, 2, 1e-4, progress=False).mse)
