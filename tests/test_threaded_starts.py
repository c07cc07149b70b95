"""The starts of a rank run in threads (rankkit.minrank._search._CertSearch._fits_in_order):
the same fits and trials as one at a time, cancellation that leaves nothing behind, and the
rule for when threads are used."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.sparse as sp

import rankkit as rk
from rankkit.lowrank import fixed_rank_fit
from rankkit.matrix import as_reward_matrix
from rankkit.minrank import _search


def _near_miss_problem():
    """Rank 3 plus a small rank-1 term on half the cells, ε a third of the best rank-3 MSE:
    rank 3 is a near miss (within 10 ε), so the search gives it more starts after rank 4
    certifies (the truncated certificate and a random start: two starts at once)."""
    g = np.random.default_rng(0)
    n, m = 60, 50
    X = g.standard_normal((n, 3)) @ g.standard_normal((3, m)) / 3
    X += 0.02 * np.outer(g.standard_normal(n), g.standard_normal(m))
    i, j = np.nonzero(g.random((n, m)) < 0.5)
    S = sp.csr_matrix((0.15 * X[i, j] + 0.5, (i, j)), shape=(n, m))
    best3 = fixed_rank_fit(S, 3, eps=0.0, rho=0.0, max_iter=200, progress=False).mse
    return S, best3 / 3


def _without_seconds(trials):
    return [{k: v for k, v in t.items() if k != "seconds"} for t in trials]


def test_threaded_starts_give_the_trials_of_one_at_a_time(monkeypatch, tmp_path):
    S, eps = _near_miss_problem()
    threaded = []
    fit = _search._CertSearch._fit

    def spy(self, k, attempt, warm, init, cancel=None):
        threaded.append(cancel is not None)
        return fit(self, k, attempt, warm, init, cancel)

    monkeypatch.setattr(_search._CertSearch, "_fit", spy)
    runs = {}
    for workers in (1, 2):
        monkeypatch.setattr(_search._CertSearch, "_workers", lambda self, k, n, w=workers: min(w, n))
        threaded.clear()
        est = rk.estimate_min_rank(S, eps=eps, progress=False, checkpoint_dir=tmp_path / str(workers))
        runs[workers] = est
        assert any(threaded) == (workers == 2)
    one, two = runs[1], runs[2]
    at3 = [t for t in one.trials if t["rank"] == 3]
    assert len(at3) >= 2, "the problem must give some rank more than one start"
    assert _without_seconds(two.trials) == _without_seconds(one.trials)
    assert (two.upper, two.eps_lower, two.certified_at) == (one.upper, one.eps_lower, one.certified_at)
    for name in ("U", "d", "V"):
        np.testing.assert_array_equal(getattr(one.certificate, name), getattr(two.certificate, name))
    # every attempt left its finished fit and nothing partial
    for workers in (1, 2):
        assert not list((tmp_path / str(workers)).glob("*.partial.npz"))


def _cert_search(S, tmp_path, **kw):
    R2 = as_reward_matrix(S)
    args = dict(eps=1e-12, rho=1e-4, max_iter=50, solver="auto", n_restarts=0, max_abs=None, options={},
                backend="numpy", device=None, seed=0, progress=False, checkpoint_dir=tmp_path)
    args.update(kw)
    return _search._CertSearch(R2, 0, **args)


def test_closing_cancels_the_start_running_ahead_and_forgets_it(monkeypatch, tmp_path):
    """A start still running when the rank is decided is stopped through the solver's
    callback, its checkpoint removed and its result never seen; the one consumed is saved."""
    S, _ = _near_miss_problem()
    search = _cert_search(S, tmp_path)
    monkeypatch.setattr(_search._CertSearch, "_workers", lambda self, k, n: 2)
    real = search._fixed_rank
    stopped = threading.Event()

    def fake(k, *, init, checkpoint, callback, **kw):
        if init == "spectral":
            return real(k, init=init, checkpoint=checkpoint, callback=callback, **kw)
        checkpoint.write_bytes(b"partial state")  # as a checkpointing solver would
        it = 0
        while not callback(it, {}):
            it += 1
            stopped.wait(0.01)
        stopped.set()
        res = real(k, init="spectral", checkpoint=None, max_iter=1, callback=None,
                   **{a: b for a, b in kw.items() if a != "max_iter"})
        res.meta["stop"] = "callback"
        return res

    search._fixed_rank = fake
    starts = [("spectral", None, "spectral"), ("random", None, "random")]
    fits = search._fits_in_order(2, starts, 0)
    name, fit, _ = next(fits)
    assert name == "spectral" and fit.meta["stop"] != "callback"
    assert not stopped.is_set()
    fits.close()
    assert stopped.is_set()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "fixed_rank_000002_0.npz" in files
    assert not [f for f in files if f.startswith("fixed_rank_000002_1")], files


def test_starts_run_one_at_a_time_where_threads_would_not_help_or_are_unsafe(monkeypatch, tmp_path):
    import numba

    from rankkit import _kernels

    S, _ = _near_miss_problem()
    search = _cert_search(S, tmp_path)
    cores = numba.get_num_threads()
    assert search._workers(3, 1) == 1
    assert search._workers(3, 4) == min(cores, 4)
    # a fit big enough for the parallel kernels keeps every core to itself
    big = 1 + _kernels._SERIAL_WORK // S.nnz
    assert search._workers(big, 4) == 1
    monkeypatch.setattr(_kernels, "threadsafe_layer", lambda: False)
    assert search._workers(3, 4) == 1
    monkeypatch.undo()
    torch_search = _cert_search(S, tmp_path / "torch", backend="torch")
    pytest.importorskip("torch")
    assert torch_search._workers(3, 4) == 1
    from rankkit.distributed.minrank import _ShardedCertSearch

    assert _ShardedCertSearch._threads_ok is False


def test_threadsafe_layer_names_workqueue_unsafe(monkeypatch):
    from rankkit import _kernels

    monkeypatch.setattr(_kernels.numba, "threading_layer", lambda: "workqueue")
    assert _kernels.threadsafe_layer() is False
    monkeypatch.setattr(_kernels.numba, "threading_layer", lambda: "omp")
    assert _kernels.threadsafe_layer() is True
