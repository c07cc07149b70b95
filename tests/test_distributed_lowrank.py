"""The sharded fixed-rank certificate solver and the distributed estimate_min_rank (issue 15):
the sharded fit follows the one-process trajectory from the same start, reaches the
certificate on exact low-rank data, resumes bitwise from per-rank checkpoints after a rank is
killed, and the distributed estimate gives the one-process bracket.

Ranks run as threads (:func:`rankkit.testing.distributed.run_threads`: any world size, any
shard split) and as two gloo processes (:func:`rankkit.testing.distributed.spawn`).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import rankkit as rk
import rankkit.distributed as rd
import rankkit.distributed.minrank as rd_minrank
from rankkit.lowrank import fixed_rank_fit
from rankkit.matrix import as_reward_matrix
from rankkit.testing.distributed import dying_callback, gloo_available, run_threads, spawn

pytestmark = pytest.mark.skipif(not gloo_available(), reason="torch.distributed with gloo is not available")

F64 = np.finfo(np.float64).eps
# The sharded and the one-process fit differ only in the order of floating-point sums (sums
# over ranks, TSQR instead of one QR): O(eps) per operation, contracted by the solvers on
# these well-posed problems; a few hundred ulps of drift over the iterations.
TRAJ_RTOL = 2.0 ** 10
# RLM's inner CG stops on a relative residual: rounding can move that stop by one CG iteration,
# a different (equally good) step of size ~cg_tol. Trajectory tests run every CG iteration.
EXACT_CG = dict(cg_tol=0.0, cg_iter=20)


def lowrank(seed: int, n: int = 90, m: int = 25, rank: int = 3, density: float = 0.4, noise: float = 0.0):
    g = np.random.default_rng(seed)
    F = g.standard_normal((n, rank)) @ g.standard_normal((rank, m))
    r, c = np.nonzero(g.random((n, m)) < density)
    return sp.csr_matrix((F[r, c] + noise * g.standard_normal(r.size), (r, c)), shape=(n, m))


def split(X, owner: np.ndarray, comm) -> rd.ShardedRewardMatrix:
    """This rank's rows of X under an arbitrary (interleaved) assignment of rows to ranks."""
    R = as_reward_matrix(X)
    rows = np.flatnonzero(owner == comm.rank).astype(np.int64)
    local = as_reward_matrix(sp.csr_matrix(X)[rows])
    return rd.ShardedRewardMatrix(local=local, row_ids=rows, shape=R.shape, nnz=R.nnz, rank=comm.rank,
                                  world_size=comm.size)


def assert_follows(got, ref, X):
    """The MSE of every iteration within the float64 perturbation (an O(eps · max|x|) change of
    the iterate moves the MSE by ≈ 2 √mse · eps · max|x|, plus eps · mse for the sum itself),
    and the same decisions (solver phases, iterations, stop) until the reference reaches its
    fixed point: there "the step did not lower f" compares two values equal to rounding, a
    tie either run may break either way, so the comparison ends at that iteration."""
    a, b = np.asarray(got.meta["mse_trace"]), np.asarray(ref.meta["mse_trace"])
    n = min(a.size, b.size)
    top = float(np.abs(X.data).max())
    # RLM's inner CG solves (P_T P_Ω P_T + μ I) ξ = −grad, eigenvalues in [μ, 1 + μ]: it amplifies
    # relative rounding by up to its condition number, (1 + μ₀)/μ₀ ≈ 1e3 at the first steps
    cond = 1e3 if "rlm" in ref.meta["phases"] else 1.0
    tol = cond * TRAJ_RTOL * F64 * (b[:n] + top * np.sqrt(b[:n])) + 1e-300
    still = np.flatnonzero(np.abs(np.diff(b[:n])) <= tol[1:])
    if still.size:
        n = int(still[0]) + 2  # up to the first iteration at the fixed point
    np.testing.assert_array_less(np.abs(a[:n] - b[:n]), tol[:n])
    assert got.meta["phases"][:n] == ref.meta["phases"][:n]
    if not still.size:
        assert got.n_iter == ref.n_iter and got.meta["stop"] == ref.meta["stop"]
    np.testing.assert_allclose(got.to_dense(), ref.to_dense(), atol=1e-6 * max(1.0, np.abs(ref.to_dense()).max()))


# ---- ranks as threads -----------------------------------------------------------------------------

def _thread_fit(comm, X, owner, kw):
    return rd.fixed_rank_fit(split(X, owner, comm), comm=comm, progress=False, backend="numpy", **kw)


@settings(max_examples=12)
@given(seed=st.integers(0, 10_000), P=st.integers(2, 3), k=st.integers(1, 4),
       method=st.sampled_from(["als", "rlm", "rcg"]), rho=st.sampled_from([0.0, 1e-3]), data=st.data())
def test_threaded_sharded_fit_follows_one_process(seed, P, k, method, rho, data):
    """Random interleaved shard splits (a rank may hold fewer rows than k), every solver,
    with and without the nuclear-norm term: from the same random start, the same trajectory.
    The data have rank k plus noise, so the fit is well-conditioned (below the data's rank the
    Gauss–Newton systems are ill-conditioned and amplify rounding far beyond eps)."""
    X = lowrank(seed, rank=k, noise=0.01)
    owner = np.asarray(data.draw(st.lists(st.integers(0, P - 1), min_size=X.shape[0], max_size=X.shape[0])))
    owner[:P] = np.arange(P)  # every rank holds a row
    kw = dict(rank=k, method=method, rho=rho, eps=1e-20, init="random", max_iter=12, seed=seed, **EXACT_CG)
    got = run_threads(_thread_fit, P, X, owner, kw)
    ref = fixed_rank_fit(X, progress=False, backend="numpy", **kw)
    assert_follows(got[0], ref, X)
    assert got[1].meta["sharded"] and got[1].U.shape[0] == int(np.sum(owner == 1))
    np.testing.assert_array_equal(got[1].d, got[0].d)  # replicated factors: the same bits on every rank


def test_auto_picks_the_same_solvers_and_reaches_the_certificate():
    """Exact rank-3 data: "auto" (ALS while it halves the MSE, then RLM) from the sharded
    spectral start reaches MSE ≤ 1e-12, checked from the gathered factors (ρ = 0: with
    ρ = 1e-4 both the one-process and the sharded fit stall at the penalty's floor, 5e-11)."""
    X = lowrank(3, n=200, m=40, density=0.35)
    got = run_threads(lambda c: rd.fixed_rank_fit(X, 3, comm=c, rho=0.0, progress=False, backend="numpy"), 2)[0]
    ref = fixed_rank_fit(X, 3, rho=0.0, progress=False, backend="numpy")
    assert got.converged and got.meta["stop"] == "target" and got.mse <= 1e-12
    assert rk.observed_mse(X, got) <= 1e-12
    assert set(got.meta["phases"]) <= {"als", "rlm"} and got.meta["phases"][0] == ref.meta["phases"][0]


def test_als_bytes_per_iteration_are_the_documented_ones():
    """Measured payload of one ALS sweep on 2 ranks = the ring-collective formula (for P = 2
    an all-reduce sends its payload once, the TSQR all-gather its k × k block once)."""
    X = lowrank(5, n=120, m=30, rank=4, density=0.5, noise=0.01)
    got = run_threads(lambda c: rd.fixed_rank_fit(X, 4, comm=c, method="als", rho=0.0, eps=0.0, max_iter=6,
                                                  progress=False, backend="numpy"), 2)[0]
    dist = got.meta["distributed"]
    assert dist["als_sweep"] == rd.fixed_rank_bytes(30, 4, 2)["als_sweep"] == int(8 * (30 * 4 * 7 / 2 + 1) + 8 * 16)
    assert dist["payload_bytes_per_iteration"] == pytest.approx(dist["als_sweep"], rel=0.01)
    assert rd.fixed_rank_bytes(30, 4, 1)["als_sweep"] == 0


def _killed_fit(comm, X, ckpt, die_at):
    cb = dying_callback(comm, die_at, how="interrupt")  # rank 1 stops without a word
    return rd.fixed_rank_fit(X, 3, comm=comm, method="rlm", rho=1e-3, eps=1e-30, max_iter=14, init="random",
                             checkpoint=ckpt, checkpoint_every=3, callback=cb, progress=False, backend="numpy")


@pytest.mark.parametrize("P", [2, 3])
def test_threaded_ranks_resume_bitwise_after_a_kill(tmp_path, P):
    X = lowrank(8, noise=0.01)
    ref = run_threads(_killed_fit, P, X, None, None)[0]
    ckpt = str(tmp_path / "fit")
    with pytest.raises((KeyboardInterrupt, rd.RankFailedError)):
        run_threads(_killed_fit, P, X, ckpt, 8)
    assert len(list(tmp_path.iterdir())) == 2 * P, "two slots per rank (iterations 3 and 6)"
    got = run_threads(_killed_fit, P, X, ckpt, None)[0]
    np.testing.assert_array_equal(got.U, ref.U)
    np.testing.assert_array_equal(got.d, ref.d)
    np.testing.assert_array_equal(got.V, ref.V)
    assert got.meta["mse_trace"] == ref.meta["mse_trace"] and got.objective == ref.objective
    assert not any(tmp_path.iterdir()), "a finished run removes its per-rank checkpoints"


def test_world_of_one_follows_one_process():
    X = lowrank(11, noise=0.01)
    for method in ("als", "rlm"):
        kw = dict(rank=3, method=method, rho=1e-3, eps=1e-20, init="random", max_iter=10, **EXACT_CG)
        got = rd.fixed_rank_fit(X, comm=rd.Comm(), progress=False, backend="numpy", **kw)
        assert_follows(got, fixed_rank_fit(X, progress=False, backend="numpy", **kw), X)


def test_world_of_one_on_the_torch_backend_reaches_the_certificate():
    X = lowrank(1, n=120, m=30, rank=3, density=0.5)
    for method in ("als", "rlm"):
        got = rd.fixed_rank_fit(X, 3, comm=rd.Comm(), method=method, rho=0.0, eps=1e-14, backend="torch",
                                progress=False)
        assert got.backend == "torch" and got.converged and rk.observed_mse(X, got) <= 1e-14


def test_bad_input_is_named():
    X = lowrank(0)
    with pytest.raises(ValueError, match="rank must be an integer"):
        rd.fixed_rank_fit(X, 10**6, comm=rd.Comm(), progress=False)
    with pytest.raises(ValueError, match="gather must be"):
        rd.fixed_rank_fit(X, 2, comm=rd.Comm(), progress=False, gather="yes")
    with pytest.raises(ValueError, match="method must be one of"):
        rd.fixed_rank_fit(X, 2, comm=rd.Comm(), progress=False, method="newton")
    with pytest.raises(ValueError, match="warm_start u has"):
        rd.fixed_rank_fit(X, 2, comm=rd.Comm(), progress=False, warm_start={"u": np.ones((3, 1)), "d": [1.0],
                                                                              "v": np.ones((25, 1))})


def test_a_warm_start_is_truncated_or_padded_as_in_one_process():
    """A rank-4 fit truncated to rank 2 (of rank-2 data) is the one-process start (same
    trajectory); a rank-1 start padded to rank 3 (of exact rank-3 data) reaches the certificate."""
    X = lowrank(12, n=120, m=30, rank=2, density=0.5, noise=0.01)
    big = fixed_rank_fit(X, 4, rho=0.0, eps=1e-20, max_iter=5, progress=False, backend="numpy")
    kw = dict(method="rlm", rho=1e-3, eps=1e-20, max_iter=8, **EXACT_CG)
    got = run_threads(lambda c: rd.fixed_rank_fit(X, 2, comm=c, warm_start=big, progress=False,
                                                  backend="numpy", **kw), 2)[0]
    assert_follows(got, fixed_rank_fit(X, 2, warm_start=big, progress=False, backend="numpy", **kw), X)
    X = lowrank(12, n=120, m=30, density=0.5)
    small = fixed_rank_fit(X, 1, max_iter=3, progress=False, backend="numpy")
    got = run_threads(lambda c: rd.fixed_rank_fit(X, 3, comm=c, warm_start=small, rho=0.0, progress=False,
                                                  backend="numpy"), 2)[0]
    assert got.mse <= 1e-12 and rk.observed_mse(X, got) <= 1e-12


def _thread_estimate(comm, R, ckpt):
    return rd.estimate_min_rank(R, 1e-6, comm=comm, progress=False, checkpoint_dir=ckpt)


def test_threaded_estimate_resumes_from_per_rank_checkpoint_dirs(tmp_path, monkeypatch):
    R = rk.RewardMatrix.from_scipy(lowrank(4, n=120, m=30, rank=3, density=0.5))
    first = run_threads(_thread_estimate, 2, R, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0of2", "rank1of2"]
    saved = sorted(p.name for p in (tmp_path / "rank1of2").iterdir())
    assert "minrank_state.json" in saved and any(s.startswith("fixed_rank_") for s in saved)

    def no_refit(*a, **k):
        raise AssertionError("a finished fit was fitted again instead of loaded")

    monkeypatch.setattr(rd_minrank._ShardedCertSearch, "_fixed_rank", no_refit)
    again = run_threads(_thread_estimate, 2, R, str(tmp_path))
    monkeypatch.undo()
    assert (again[0].exact_lower, again[0].upper) == (first[0].exact_lower, first[0].upper) == (3, 3)
    assert again[0].mse_by_rank == first[0].mse_by_rank, "the saved fits, not new ones"
    np.testing.assert_array_equal(again[0].certificate.U, first[0].certificate.U)
    assert again[1].certificate is None
    with pytest.raises(ValueError, match="holds fits of a different problem"):
        run_threads(lambda c: rd.estimate_min_rank(R, 1e-7, comm=c, progress=False, checkpoint_dir=str(tmp_path)),
                    2)


# ---- two gloo processes ---------------------------------------------------------------------------

GLOO_X = dict(seed=21, n=160, m=35, rank=4, density=0.4, noise=0.01)
GLOO_FIT = dict(rho=1e-3, eps=1e-20, init="random", max_iter=12, progress=False, backend="numpy", **EXACT_CG)


def _vader():
    return rk.datasets.load("vader:tweets", limit=400)


def _gloo_worker(comm, vader, ckpt):
    """One spawn for everything: the trajectories, the two estimates, and at the end a fit
    with per-rank checkpoints during which rank 1 dies (rank 0 reports its RankFailedError)."""
    X = lowrank(**GLOO_X)
    out = {method: rd.fixed_rank_fit(X, 4, comm=comm, method=method, **GLOO_FIT) for method in ("als", "rlm", "auto")}
    out["vader"] = rd.estimate_min_rank(vader, 1e-6, comm=comm, progress=False)
    out["lowrank"] = rd.estimate_min_rank(lowrank(22, n=150, m=30, rank=3, density=0.5), 1e-6, comm=comm,
                                          progress=False)
    t0 = time.perf_counter()
    try:
        _gloo_resume(comm, ckpt, die_at=10)
        out["died"] = ("finished", "", time.perf_counter() - t0)
    except rd.RankFailedError as e:
        out["died"] = ("failed", str(e), time.perf_counter() - t0)
    return out


def _gloo_resume(comm, ckpt, die_at=None):
    cb = dying_callback(comm, die_at)  # rank 1 dies without a word, mid-run
    return rd.fixed_rank_fit(lowrank(23, n=140, m=30, rank=3, noise=0.01), 3, comm=comm, method="rlm", rho=1e-3,
                             eps=1e-30, max_iter=14, init="random", checkpoint=ckpt, checkpoint_every=4,
                             callback=cb, progress=False, backend="numpy", **EXACT_CG)


def test_two_gloo_processes(tmp_path):
    """One spawn (process start-up dominates, and a module fixture would run once per xdist
    worker), three checks; then one more spawn that resumes the killed fit."""
    ckpt = tmp_path / "fit"
    out = spawn(_gloo_worker, 2, _vader(), str(ckpt), timeout_s=300, collective_timeout_s=30)
    assert out[1].exitcode == 3, "rank 1 dies in the last fit"
    assert out[0].error is None, out[0].error
    gloo = (out[0].value, ckpt)
    _check_trajectories(gloo)
    _check_brackets(gloo)
    _check_resume(gloo)


def _check_trajectories(gloo):
    X = lowrank(**GLOO_X)
    for method in ("als", "rlm", "auto"):
        assert_follows(gloo[0][method], fixed_rank_fit(X, 4, method=method, **GLOO_FIT), X)


def _check_brackets(gloo):
    for name, source in (("vader", _vader()), ("lowrank", lowrank(22, n=150, m=30, rank=3, density=0.5))):
        ref = rk.estimate_min_rank(source, 1e-6, progress=False)
        got = gloo[0][name]
        assert (got.exact_lower, got.upper) == (ref.exact_lower, ref.upper), name
        assert sorted(got.mse_by_rank) == sorted(ref.mse_by_rank), f"{name}: the same ranks tried"
        assert got.certificate_source == ref.certificate_source == "fixed-rank"
        # "auto" picks the same solver as one process at the first fitted rank (RLM on reward data)
        first = [t["method"].split("/")[0] for t in got.trials if t["rank"]][0]
        assert first == [t["method"].split("/")[0] for t in ref.trials if t["rank"]][0]
        if name == "vader":
            assert first == "rlm"
        R2 = rk.reduce_omega2(rk.build_reward_matrix(source) if name == "vader" else as_reward_matrix(source))
        assert rk.observed_mse(R2, got.certificate) <= 1e-6
        assert got.scale["max_abs"] == pytest.approx(rk.certificate_scale(got.certificate.U, got.certificate.d,
                                                                          got.certificate.V)["max_abs"], rel=1e-12)
    assert gloo[0]["lowrank"].upper == 3


def _resume(comm, ckpt):
    return _gloo_resume(comm, ckpt)


def _check_resume(gloo):
    out, ckpt = gloo
    status, message, seconds = out["died"]
    assert status == "failed" and "rank 0 of 2" in message and seconds < 30
    folder = ckpt.parent
    assert sorted(p.name for p in folder.iterdir()) == [f"fit.rank{r}of2.{s}.npz" for r in (0, 1) for s in (0, 1)]
    got = _ok(spawn(_resume, 2, str(ckpt), timeout_s=120))[0]
    # the uninterrupted reference: ranks as threads sum in rank order, the same bits as gloo's
    # two-rank all-reduce (a + b = b + a in IEEE arithmetic)
    ref = run_threads(_gloo_resume, 2, None)[0]
    np.testing.assert_array_equal(got.U, ref.U)
    np.testing.assert_array_equal(got.d, ref.d)
    np.testing.assert_array_equal(got.V, ref.V)
    assert got.meta["mse_trace"] == ref.meta["mse_trace"]
    assert not any(folder.iterdir()), "a finished run removes its per-rank checkpoints"


def _ok(outcomes):
    for o in outcomes:
        assert o.error is None, f"rank {o.rank} raised {o.error[0]}: {o.error[1]}\n{o.error[2]}"
        assert o.exitcode == 0, f"rank {o.rank} exited with {o.exitcode}"
    return [o.value for o in outcomes]
