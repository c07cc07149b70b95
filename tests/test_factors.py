"""The result types (issue 25 item 4): every solver returns a LowRankFit; a fixed-rank fit is a
FixedRankResult, not a SoftImputeResult; files read back as the class that wrote them."""

import numpy as np
import pytest

import rankkit as rk
from rankkit._io import atomic_npz, read_npz
from rankkit.factors import FixedRankResult, LowRankFit, SoftImputeResult

FAST = dict(progress=False, backend="numpy")


def _problem(seed=0, n=40, m=25, k=3):
    g = np.random.default_rng(seed)
    X = g.uniform(0, 1, (n, k)) @ g.uniform(0, 1, (k, m)) / k
    mask = g.random((n, m)) < 0.5
    mask[np.arange(n), g.integers(0, m, n)] = True
    return rk.RewardMatrix.from_dense(np.where(mask, X, np.nan))


def test_each_solver_says_which_it_is(tmp_path):
    R = _problem()
    fr = rk.fixed_rank_fit(R, 3, eps=1e-10, **FAST)
    si = rk.soft_impute(R, 3, 1e-3, max_iter=30, **FAST)
    ex = rk.exact_completion(rk.reduce_omega2(R))
    assert type(fr) is FixedRankResult and not isinstance(fr, SoftImputeResult)
    assert type(si) is SoftImputeResult and not isinstance(si, FixedRankResult)
    assert type(ex) is LowRankFit
    assert all(isinstance(r, LowRankFit) for r in (fr, si, ex))
    assert fr.rho == fr.lam == pytest.approx(1e-4) and fr.eps == fr.thresh == 1e-10
    assert repr(fr).startswith("FixedRankResult(") and "rho=" in repr(fr) and "stop=" in repr(fr)
    for res in (fr, si, ex):
        back = LowRankFit.load(res.save(tmp_path / f"{type(res).__name__}.npz"))
        assert type(back) is type(res)
        np.testing.assert_array_equal(back.U, res.U)
        assert back.meta == res.meta and back.mse == res.mse


def test_a_file_from_before_the_split_reads_as_soft_impute(tmp_path):
    res = rk.fixed_rank_fit(_problem(), 2, **FAST)
    path = res.save(tmp_path / "new.npz")
    z = dict(read_npz(path, "completion result"))
    z.pop("kind")
    atomic_npz(tmp_path / "old.npz", z)
    assert type(LowRankFit.load(tmp_path / "old.npz")) is SoftImputeResult


def test_estimates_carry_the_solvers_type():
    R = _problem()
    auto = rk.estimate_min_rank(R, **FAST)
    si = rk.estimate_min_rank(R, method="soft-impute", ranks=[0, 3, 6], max_iter=200, **FAST)
    assert type(auto.certificate) is FixedRankResult and auto.certificate_source == "fixed-rank"
    if si.certificate_source == "soft-impute":
        assert type(si.certificate) is SoftImputeResult
    else:
        assert type(si.certificate) is LowRankFit and si.certificate_source == "exact-completion"


def test_a_fixed_rank_fit_warm_starts_either_solver():
    R = _problem()
    si = rk.soft_impute(R, 3, 1e-3, max_iter=30, **FAST)
    fr = rk.fixed_rank_fit(R, 3, warm_start=si, eps=1e-10, **FAST)
    back = rk.soft_impute(R, 3, 1e-3, max_iter=5, warm_start=fr, **FAST)
    assert fr.mse <= si.mse and isinstance(back, SoftImputeResult)
