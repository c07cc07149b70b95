"""rankkit.distributed on two gloo processes: the sharded build equals the single-process
matrix, the sharded soft-impute follows the single-process trajectory, a killed rank's run
resumes bitwise, and a dying rank makes the others fail fast with a clear error (issue 15).

The processes are started by :func:`rankkit.testing.distributed.spawn` (torch.multiprocessing
"spawn", a free localhost port, a collective timeout); every spawn is bounded in time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import rankkit as rk
import rankkit.distributed as rd
from rankkit.distributed.build import _keys, _split
from rankkit.testing.distributed import dying_callback, gloo_available, run_threads, spawn

pytestmark = pytest.mark.skipif(not gloo_available(), reason="torch.distributed with gloo is not available")

F64 = np.finfo(np.float64).eps
# The sharded and the single-process fit differ only in the order of floating-point sums (the
# column products are summed over ranks, the QRs are TSQRs): O(eps) per operation, and ALS
# contracts such perturbations on these well-separated low-rank problems, so the drift over
# the iterations stays within a few hundred ulps.
TRAJ_RTOL = 2.0 ** 10


def random_dataset(seed: int, n: int = 250, vocab: int = 11, max_len: int = 7, prompt: int = 0,
                   n_labels: int = 2) -> rk.RewardDataset:
    """Random utterances; with ``prompt`` most start with a shared template of that length
    (the case the routing by the first p tokens is for)."""
    g = np.random.default_rng(seed)
    seqs = []
    for _ in range(n):
        s = list(g.integers(0, vocab, int(g.integers(1, max_len + 1))))
        if prompt and g.random() < 0.8:
            s = [min(3, vocab - 1)] * prompt + s
        seqs.append(s)
    y = g.standard_normal((n, n_labels)) if n_labels > 1 else g.standard_normal(n)
    return rk.RewardDataset(seqs, y, vocab_size=vocab)


def lowrank_problem(seed: int = 0, n: int = 300, m: int = 50, rank: int = 4, density: float = 0.25):
    g = np.random.default_rng(seed)
    F = g.standard_normal((n, rank)) @ g.standard_normal((rank, m))
    r, c = np.nonzero(g.random((n, m)) < density)
    return sp.csr_matrix((F[r, c] + 0.05 * g.standard_normal(r.size), (r, c)), shape=(n, m))


BUILD_CASES = [  # (seed, route_len, prompt, n_labels)
    (0, "auto", 0, 2), (1, 1, 0, 1), (2, 2, 0, 2), (3, "auto", 3, 1), (4, 3, 2, 2)]


# ---- worker functions (run on every rank) -----------------------------------------------------

def _main_worker(comm):
    """Everything one spawn checks: built matrices (gathered on rank 0), a VADER set, the
    sharded soft-impute trajectories, and the uninterrupted fit the resume test compares with."""
    out = {"builds": [], "rank": comm.rank}
    for seed, route, prompt, nl in BUILD_CASES:
        S = rd.build_reward_matrix(random_dataset(seed, prompt=prompt, n_labels=nl), comm=comm, route_len=route)
        S2 = rd.reduce_omega2(S, comm)
        out["builds"].append((S.route_len, S.gather(comm), S2.gather(comm), S.loads))
    S = rd.build_reward_matrix("vader:tweets", comm=comm)
    S2 = rd.reduce_omega2(S, comm)
    out["vader"] = (S.gather(comm), S2.gather(comm), S.route_len)
    fits = {}
    for backend in ("numpy", "torch"):
        fits[backend] = rd.soft_impute(lowrank_problem(), 5, 0.5, comm=comm, max_iter=25, thresh=-1,
                                       backend=backend, progress=False)
    # on the sharded Ω₂ of a text matrix, rows interleaved between the ranks
    fits["vader"] = rd.soft_impute(S2, 6, 1e-3, comm=comm, max_iter=15, thresh=-1, progress=False,
                                   label="rating")
    fits["vader_mse"] = rd.observed_mse(S2, fits["vader"], "rating", comm)
    fits["resume_ref"] = _resume_fit(comm, None)
    out["fits"] = fits
    ds = random_dataset(7, n=150, vocab=9, n_labels=1)
    out["estimates"] = (rd.estimate_min_rank(ds, 1e-4, comm=comm, method="soft-impute", max_iter=300,
                                             progress=False),
                        rd.estimate_min_rank(ds, 1e-6, comm=comm, progress=False))
    return out


def _resume_fit(comm, ckpt, die_at=None):
    cb = dying_callback(comm, die_at)  # rank 1 dies without a word, mid-run
    return rd.soft_impute(lowrank_problem(1, n=240, m=40), 4, 0.3, comm=comm, max_iter=30, thresh=-1,
                          progress=False, checkpoint=ckpt, checkpoint_every=4, callback=cb)


def _dying_worker(comm, ckpt):
    t0 = time.perf_counter()
    try:
        _resume_fit(comm, ckpt, die_at=10)
    except rd.RankFailedError as e:
        return ("failed", str(e), time.perf_counter() - t0)
    return ("finished", "", time.perf_counter() - t0)


def _resume_worker(comm, ckpt):
    return _resume_fit(comm, ckpt)


# ---- the two-process tests -------------------------------------------------------------------

def _ok(outcomes):
    for o in outcomes:
        assert o.error is None, f"rank {o.rank} raised {o.error[0]}: {o.error[1]}\n{o.error[2]}"
        assert o.exitcode == 0, f"rank {o.rank} exited with {o.exitcode}"
    return [o.value for o in outcomes]


@pytest.fixture(scope="module")
def two_ranks():
    return _ok(spawn(_main_worker, 2, timeout_s=240, collective_timeout_s=60))


MATRIX_FIELDS = ("indptr", "indices", "counts", "prefix_parent", "prefix_token", "prefix_len")


def _assert_same_matrix(got: rk.RewardMatrix, ref: rk.RewardMatrix, exact: bool, trie: bool = True):
    assert got.shape == ref.shape and got.nnz == ref.nnz
    for name in MATRIX_FIELDS if trie else ("indptr", "indices", "counts", "row_map", "col_map"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)
    if exact:
        np.testing.assert_array_equal(got.values, ref.values)
        np.testing.assert_array_equal(got.weights, ref.weights)
    else:
        # partial sums of a shared row added in another order: a few ulps per term
        tol = 4 * F64 * (ref.counts + 1)
        scale = max(1.0, float(np.abs(ref.values).max(initial=0.0)))
        np.testing.assert_array_less(np.abs(got.weights - ref.weights), tol * ref.weights + 1e-300)
        err = np.abs(got.values - ref.values).reshape(ref.nnz, ref.n_labels).max(axis=1, initial=0.0)
        np.testing.assert_array_less(err, tol * scale + 1e-300)
    if trie:
        for r in range(0, ref.shape[0], max(1, ref.shape[0] // 50)):
            np.testing.assert_array_equal(got.prefix(r), ref.prefix(r))


@pytest.mark.parametrize("case", range(len(BUILD_CASES)))
def test_sharded_build_is_the_single_process_matrix(two_ranks, case):
    seed, route, prompt, nl = BUILD_CASES[case]
    p, full, full2, loads = two_ranks[0]["builds"][case]
    ds = random_dataset(seed, prompt=prompt, n_labels=nl)
    ref = rk.build_reward_matrix(ds)
    if route != "auto":
        assert p == route
    elif prompt:
        assert p > prompt, "a shared template of length t needs routing by more than t tokens to balance"
    # p = 1: only the root row is shared and its cells are disjoint between ranks: bitwise
    _assert_same_matrix(full, ref, exact=(p == 1))
    _assert_same_matrix(full2, rk.reduce_omega2(ref), exact=(p == 1), trie=False)
    assert full2.n_single_rows == rk.reduce_omega2(ref).n_single_rows
    assert loads.sum() == ds.sequences.tokens.size
    assert two_ranks[1]["builds"][case][1] is None, "only rank 0 receives the gathered matrix"


def test_sharded_build_of_a_vader_set(two_ranks):
    full, full2, p = two_ranks[0]["vader"]
    ref = rk.build_reward_matrix(rk.datasets.load("vader:tweets"))
    _assert_same_matrix(full, ref, exact=(p == 1))
    _assert_same_matrix(full2, rk.reduce_omega2(ref), exact=(p == 1), trie=False)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_sharded_soft_impute_follows_the_single_process_trajectory(two_ranks, backend):
    got = two_ranks[0]["fits"][backend]
    ref = rk.soft_impute(lowrank_problem(), 5, 0.5, max_iter=25, thresh=-1, backend=backend, progress=False)
    assert got.n_iter == ref.n_iter == 25 and got.U.shape == ref.U.shape
    tol = TRAJ_RTOL * F64
    np.testing.assert_allclose(got.objective, ref.objective, rtol=tol)
    np.testing.assert_allclose(got.ratio, ref.ratio, rtol=1e-6, atol=tol)  # a ratio is a difference
    np.testing.assert_allclose(got.d, ref.d, rtol=tol * 10)
    M, Mref = got.to_dense(), ref.to_dense()
    np.testing.assert_allclose(M, Mref, atol=tol * 10 * np.abs(Mref).max())
    assert got.mse == pytest.approx(ref.mse, rel=tol)
    # rank 1 keeps its rows only, and says so
    other = two_ranks[1]["fits"][backend]
    assert other.meta["sharded"] and other.U.shape[0] < got.U.shape[0]
    np.testing.assert_array_equal(other.d, got.d)  # replicated factors: the same bits on every rank


def test_sharded_soft_impute_on_a_text_matrix(two_ranks):
    got = two_ranks[0]["fits"]["vader"]
    R2 = rk.reduce_omega2(rk.build_reward_matrix(rk.datasets.load("vader:tweets")))
    ref = rk.soft_impute(R2, 6, 1e-3, max_iter=15, thresh=-1, progress=False, label="rating")
    np.testing.assert_allclose(got.objective, ref.objective, rtol=TRAJ_RTOL * F64)
    assert two_ranks[0]["fits"]["vader_mse"] == pytest.approx(rk.observed_mse(R2, ref, "rating"),
                                                              rel=TRAJ_RTOL * F64)


def test_a_dying_rank_fails_the_others_and_the_run_resumes_bitwise(two_ranks, tmp_path):
    ckpt = tmp_path / "fit"
    t0 = time.perf_counter()
    died = spawn(_dying_worker, 2, str(ckpt), timeout_s=120, collective_timeout_s=15)
    assert died[1].exitcode == 3 and died[1].value is None
    assert died[0].error is None, died[0].error
    status, message, seconds = died[0].value
    assert status == "failed", "rank 0 must fail when rank 1 dies"
    assert "rank 0 of 2" in message and "Another rank has most likely exited" in message
    assert seconds < 30 and time.perf_counter() - t0 < 120
    # both ranks saved iterations 4 and 8 in their two slots before rank 1 died at 10
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"fit.rank{r}of2.{s}.npz" for r in (0, 1) for s in (0, 1)]
    resumed = _ok(spawn(_resume_worker, 2, str(ckpt), timeout_s=120))
    ref = two_ranks[0]["fits"]["resume_ref"]
    np.testing.assert_array_equal(resumed[0].U, ref.U)
    np.testing.assert_array_equal(resumed[0].d, ref.d)
    np.testing.assert_array_equal(resumed[0].V, ref.V)
    assert resumed[0].objective == ref.objective and resumed[0].ratio == ref.ratio
    assert not any(tmp_path.iterdir()), "a finished run removes its per-rank checkpoints"


def test_distributed_estimate_gives_the_single_process_bracket(two_ranks):
    ds = random_dataset(7, n=150, vocab=9, n_labels=1)
    si, auto = two_ranks[0]["estimates"]
    ref_si = rk.estimate_min_rank(ds, 1e-4, method="soft-impute", max_iter=300, progress=False)
    ref_auto = rk.estimate_min_rank(ds, 1e-6, progress=False)
    assert (si.exact_lower, si.upper, si.rank_certified) == (ref_si.exact_lower, ref_si.upper, ref_si.rank_certified)
    assert si.upper is not None and si.exact_lower < si.upper, "a bracket with room in it: the search did work"
    assert sorted(si.mse_by_rank) == sorted(ref_si.mse_by_rank), "the same ranks tried"
    for r, mse in ref_si.mse_by_rank.items():
        assert si.mse_by_rank[r] == pytest.approx(mse, rel=1e-6, abs=1e-12)
    assert si.certificate.U.shape == ref_si.certificate.U.shape
    assert rk.observed_mse(rk.reduce_omega2(rk.build_reward_matrix(ds)), si.certificate) <= 1e-4
    assert (auto.exact_lower, auto.upper) == (ref_auto.exact_lower, ref_auto.upper)
    other_si, other_auto = two_ranks[1]["estimates"]
    assert (other_si.exact_lower, other_si.upper) == (si.exact_lower, si.upper) and other_si.certificate is None
    assert (other_auto.exact_lower, other_auto.upper) == (auto.exact_lower, auto.upper)


def _hanging_worker(comm):
    def cb(it, info):
        if comm.rank == 1 and it == 3:
            time.sleep(5)  # alive but silent for longer than the timeout: only it can end rank 0's wait
        return False

    t0 = time.perf_counter()
    try:
        rd.soft_impute(lowrank_problem(), 3, 0.5, comm=comm, max_iter=10, thresh=-1, progress=False, callback=cb)
    except rd.RankFailedError as e:
        return ("failed", str(e), time.perf_counter() - t0)
    return ("finished", "", time.perf_counter() - t0)


def test_a_silent_rank_fails_the_others_after_the_timeout():
    out = spawn(_hanging_worker, 2, timeout_s=40, collective_timeout_s=2)
    assert out[0].error is None, out[0].error
    status, message, seconds = out[0].value
    assert status == "failed" and "rank 0 of 2" in message and "2 s timeout" in message
    assert seconds < 4.9, f"rank 0 gave up after {seconds:.1f} s with a 2 s collective timeout"


# ---- ranks as threads: any world size, property tests against the one-process functions ---------

def _thread_build(comm, seed, n, vocab, prompt, route, nl):
    ds = random_dataset(seed, n=n, vocab=vocab, prompt=prompt, n_labels=nl)
    S = rd.build_reward_matrix(ds, comm=comm, route_len=route)
    S2 = rd.reduce_omega2(S, comm)
    return S.route_len, S.gather(comm), S2.gather(comm), int(S.local.shape[0])


@given(seed=st.integers(0, 10_000), P=st.integers(2, 4), n=st.integers(1, 120), vocab=st.integers(2, 9),
       prompt=st.integers(0, 3), route=st.sampled_from(["auto", 1, 2, 3]), nl=st.integers(1, 2))
def test_threaded_ranks_build_the_single_process_matrix(seed, P, n, vocab, prompt, route, nl):
    """Any world size, any routing length, tiny and empty shards included: the union of the
    shards is the one-process matrix (bitwise for p = 1), and so is its Ω₂."""
    p, full, full2, _ = run_threads(_thread_build, P, seed, n, vocab, prompt, route, nl)[0]
    ref = rk.build_reward_matrix(random_dataset(seed, n=n, vocab=vocab, prompt=prompt, n_labels=nl))
    _assert_same_matrix(full, ref, exact=(p == 1))
    ref2 = rk.reduce_omega2(ref)
    _assert_same_matrix(full2, ref2, exact=(p == 1), trie=False)
    assert full2.n_single_rows == ref2.n_single_rows


def _thread_fit(comm, seed, k, lam, warm):
    X = lowrank_problem(seed, n=90, m=25, density=0.4)
    start = None
    if warm:  # a smaller warm start: R's padding with random columns orthogonalised against it
        start = rd.soft_impute(X, max(1, k - 2), lam, comm=comm, max_iter=3, thresh=-1, progress=False,
                               gather=False)
    return rd.soft_impute(X, k, lam, comm=comm, max_iter=8, thresh=-1, progress=False, warm_start=start)


@settings(max_examples=20)
@given(seed=st.integers(0, 10_000), P=st.integers(2, 4), k=st.integers(1, 6), lam=st.sampled_from([0.0, 0.3]),
       warm=st.booleans())
def test_threaded_ranks_soft_impute_follows_one_process(seed, P, k, lam, warm):
    got = run_threads(_thread_fit, P, seed, k, lam, warm)[0]
    X = lowrank_problem(seed, n=90, m=25, density=0.4)
    start = rk.soft_impute(X, max(1, k - 2), lam, max_iter=3, thresh=-1, progress=False) if warm else None
    ref = rk.soft_impute(X, k, lam, max_iter=8, thresh=-1, progress=False, warm_start=start)
    if not warm:  # with a warm start the padding columns come from another random stream layout
        np.testing.assert_allclose(got.objective, ref.objective, rtol=TRAJ_RTOL * F64)
    np.testing.assert_allclose(got.sse, rk.observed_mse(X, got) * X.nnz, rtol=1e-9)
    assert np.all(np.diff(got.objective) <= 1e-9 * np.abs(got.objective[:-1])), "ALS never increases the objective"


# ---- one process: the same code at world size 1, and the routing helpers --------------------------

@given(seed=st.integers(0, 10_000), route=st.sampled_from(["auto", 1, 2]), nl=st.integers(1, 2))
def test_world_of_one_builds_the_same_matrix(seed, route, nl):
    ds = random_dataset(seed, n=60, n_labels=nl)
    S = rd.build_reward_matrix(ds, comm=rd.Comm(), route_len=route)
    ref = rk.build_reward_matrix(ds)
    _assert_same_matrix(S.gather(rd.Comm()), ref, exact=True)


@given(seed=st.integers(0, 10_000), k=st.integers(1, 6), lam=st.sampled_from([0.0, 0.1, 1.0]))
def test_world_of_one_soft_impute_follows_one_process(seed, k, lam):
    X = lowrank_problem(seed, n=80, m=30, density=0.4)
    got = rd.soft_impute(X, k, lam, comm=rd.Comm(), max_iter=10, thresh=-1, progress=False)
    ref = rk.soft_impute(X, k, lam, max_iter=10, thresh=-1, progress=False)
    np.testing.assert_allclose(got.objective, ref.objective, rtol=TRAJ_RTOL * F64)
    np.testing.assert_allclose(got.to_dense(), ref.to_dense(), atol=1e-9 * max(1.0, np.abs(ref.to_dense()).max()))


@given(st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=5), min_size=1, max_size=40),
       st.integers(1, 3))
def test_keys_sort_as_the_trie_does(seqs, p):
    """Integer order of the routing keys = lexicographic order of the first p tokens, a
    proper prefix first: so key ranges are contiguous blocks of trie rows."""
    ts = rk.TokenSequences.from_lists(seqs)
    keys = _keys(ts, p, 7)
    heads = [tuple(s[:p]) for s in seqs]
    for i in range(len(seqs)):
        for j in range(len(seqs)):
            assert (keys[i] < keys[j]) == (heads[i] < heads[j])


@given(st.lists(st.integers(1, 100), min_size=1, max_size=60), st.integers(1, 5))
def test_split_is_contiguous_and_balanced(loads, P):
    keys = np.arange(len(loads), dtype=np.int64) * 3
    loads = np.asarray(loads, dtype=np.int64)
    cuts, imbalance = _split(keys, loads, P)
    assert cuts.size == P - 1 and np.all(np.diff(cuts) >= 0)
    dest = np.searchsorted(cuts, keys, side="right")
    per = np.bincount(dest, weights=loads, minlength=P)
    assert imbalance == pytest.approx(per.max() / (loads.sum() / P))
    # each cut is within one group of the ideal: no rank exceeds its share by more than the largest group
    assert per.max() <= loads.sum() / P + loads.max() + 1e-9


def test_bad_input_is_named():
    ds = random_dataset(0, n=20)
    with pytest.raises(ValueError, match="route_len must be"):
        rd.build_reward_matrix(ds, comm=rd.Comm(), route_len=9)
    with pytest.raises(ValueError, match="max_imbalance"):
        rd.build_reward_matrix(ds, comm=rd.Comm(), max_imbalance=0.5)
    S = rd.build_reward_matrix(ds, comm=rd.Comm())
    with pytest.raises(ValueError, match="rank must be an integer"):
        rd.soft_impute(S, 10**6, 0.1, comm=rd.Comm(), progress=False)
    with pytest.raises(ValueError, match="gather must be"):
        rd.soft_impute(S, 2, 0.1, comm=rd.Comm(), progress=False, gather="yes")


def test_environment_without_torchrun_is_a_world_of_one(monkeypatch):
    for v in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(v, raising=False)
    c = rd.get_comm()
    assert (c.rank, c.size) == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="launch with torchrun"):
        rd.get_comm()


def test_cli_nproc_relaunch_drops_only_its_own_option():
    from rankkit.cli import _without_nproc

    argv = ["estimate", "vader:tweets", "--nproc", "4", "--ranks", "0,2", "--nproc=2", "--json"]
    assert _without_nproc(argv) == ["estimate", "vader:tweets", "--ranks", "0,2", "--json"]


def _thread_hf_build(comm, table):
    return rd.build_reward_matrix(table, comm=comm, limit=77).gather(comm)


@pytest.mark.parametrize("P", [2, 3])
def test_a_hugging_face_dataset_is_read_shard_by_shard(P):
    """Each rank reads its ``Dataset.shard(P, r, contiguous=True)`` only; the union is the
    one-process matrix of the same (limited) dataset, bitwise."""
    datasets = pytest.importorskip("datasets")
    texts = [f"the movie number {i} was {'good' if i % 3 else 'bad'} and {'long' if i % 5 else 'short'}"
             for i in range(101)]
    table = datasets.Dataset.from_dict({"text": texts, "score": np.arange(101) / 100.0})
    # the one-process build first: it imports transformers and loads the tokenizer in this
    # thread (the lazy imports of transformers are not safe to race from several threads)
    ref = rk.build_reward_matrix(rk.datasets.as_dataset(table, limit=77))
    full = run_threads(_thread_hf_build, P, table)[0]
    _assert_same_matrix(full, ref, exact=True)
    from rankkit.distributed.build import _slice_bounds

    sizes = [table.shard(num_shards=P, index=r, contiguous=True).num_rows for r in range(P)]
    assert np.diff(_slice_bounds(101, P)).tolist() == sizes


def _cli_worker(comm, ckpt: str):
    """``rankkit estimate --checkpoint-dir`` on one rank of a torchrun-like world, twice."""
    import json

    from click.testing import CliRunner

    from rankkit.cli import main

    os.environ["WORLD_SIZE"] = str(comm.size)  # what torchrun sets; the CLI reads it
    args = ["estimate", "vader:tweets", "--limit", "300", "--method", "soft-impute",
            "--ranks", "0,2,4", "--max-iter", "60", "--checkpoint-dir", ckpt, "--no-figure", "--json"]
    runs, stamps = [], []
    for _ in range(2):
        res = CliRunner().invoke(main, args, catch_exceptions=False)
        assert res.exit_code == 0, res.output
        text = res.output.strip()
        runs.append(json.loads(text[text.index("{"):]) if comm.rank == 0 else text)
        comm.barrier()  # both ranks' files are written before either looks
        stamps.append({str(p.relative_to(ckpt)): p.stat().st_mtime_ns
                       for p in Path(ckpt).rglob("*") if p.is_file()})
    return runs, stamps


def test_cli_checkpoint_dir_under_torchrun_saves_per_rank_and_resumes(tmp_path):
    out = _ok(spawn(_cli_worker, 2, str(tmp_path / "ckpt"), timeout_s=240, collective_timeout_s=60))
    (first, second), (saved, after_rerun) = out[0]
    assert sorted({Path(f).parts[0] for f in saved}) == ["rank0of2", "rank1of2"], \
        "one checkpoint folder per rank"
    # the rerun loaded every fit instead of fitting (and saving) again
    assert after_rerun == saved
    assert out[1][0] == ["", ""], "rank 1 prints nothing"
    for key in ("exact_lower", "eps_lower", "upper", "mse_by_rank"):
        assert first[key] == second[key], f"the resumed run changed {key}"
    assert sorted(first["mse_by_rank"], key=int) == ["0", "2", "4"]
