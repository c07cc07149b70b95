"""The search over ranks: one base (ranks evaluated once, the best certificate, checkpoints)
and two strategies, soft-impute at each rank (App. C.3) and fixed-rank certificates from a
list of starts (module docstring of :mod:`rankkit.minrank`)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from .._backend import to_numpy
from .._io import atomic_json, fingerprint, read_json
from ..exact import rank_cap
from ..matrix import RewardMatrix
from ..softimpute import observed_mse
from ._result import Trials
from ._scale import certificate_scale

_STATE_FILE = "minrank_state.json"
# "auto": further starts at a rank only while the best MSE there is within this factor of ε
_RETRY_BAND = 10.0


def _fingerprint(R2: RewardMatrix, label, settings: dict) -> dict:
    # a dict, not one digest: a mismatch on resume names the setting that changed
    return {"shape": list(R2.shape), "nnz": R2.nnz,
            "data": fingerprint(R2.indptr, R2.indices, R2.label_values(label)), **settings}



def _zero_misses(sum_sq: float, n_cells: int, eps: float) -> int:
    """1 when the zero matrix's mean squared error sum_sq / n_cells exceeds ε (then the
    ε-rank is ≥ 1), else 0; the sharded search passes sums over its ranks."""
    return int(n_cells > 0 and sum_sq / n_cells > eps)



def _new_search(method, soft_cls, cert_cls, *args, eps, lam, thresh, solver, n_restarts, extra_starts,
                max_abs, options, max_iter, backend, device, seed, progress, checkpoint_dir):
    """The strategy of ``method`` over ``*args`` (Ω₂ and the label, plus the sharded search's
    own): ``soft_cls`` for soft-impute, ``cert_cls`` for fixed-rank certificates (ρ = λ)."""
    common = dict(eps=float(eps), max_iter=int(max_iter), backend=backend, device=device, seed=seed,
                  progress=progress, checkpoint_dir=checkpoint_dir)
    if method == "soft-impute":
        return soft_cls(*args, lam=float(lam), thresh=float(thresh), **common)
    return cert_cls(*args, rho=float(lam), solver=solver, n_restarts=int(n_restarts),
                    extra_starts=int(extra_starts), max_abs=max_abs, options=options, **common)


def _search_meta(method, *, backend, seed, cap, solver, n_restarts, extra_starts) -> dict:
    """The settings an estimate records in ``meta`` (the solver's only for fixed-rank)."""
    meta = {"backend": backend, "seed": seed, "rank_cap": cap}
    if method != "soft-impute":
        meta.update(solver=solver, n_restarts=int(n_restarts), extra_starts=int(extra_starts))
    return meta


def _run_search(search, ranks, method, eps_lower) -> None:
    try:
        if ranks == "auto" and method == "soft-impute":
            search.auto()
        elif ranks == "auto":
            # ranks below the proved ε-lower bound cannot pass: the search starts there, walks
            # up two ranks before doubling, and bisection never goes under it; then the rank
            # just below the certificate gets more starts when its best fit was a near miss
            search.auto(start=max(1, eps_lower), floor=eps_lower, walk=2 if eps_lower >= 2 else 0)
            search.tighten(floor=max(1, eps_lower))
        else:
            for r in ranks:
                search.evaluate(r)
    finally:
        search.close()



class _SearchBase:
    """Ranks evaluated once each, the best certificate, checkpoint bookkeeping."""

    def __init__(self, R2, label, *, eps, progress, checkpoint_dir, settings, cap=None, fp_matrix=None):
        from .._progress import progress_bar

        self.R2, self.label, self.eps = R2, label, eps
        self.cap = rank_cap(R2) if cap is None else int(cap)
        self.full = min(R2.shape)
        self.mse: dict[int, float] = {}
        self.converged: dict[int, bool] = {}
        self.ok: dict[int, bool] = {}
        self.fits: dict[int, object] = {}
        self.trials = Trials()
        # " ranks": tqdm prints the count and the unit together ("5 ranks", not "5rank")
        self.bar = progress_bar(desc="min rank", unit=" ranks", progress=progress, leave=False)
        self.ckpt = None
        if checkpoint_dir is not None:
            self.ckpt = Path(checkpoint_dir)
            self.ckpt.mkdir(parents=True, exist_ok=True)
            # a sharded search fingerprints this rank's rows (``fp_matrix``, its row ids in settings)
            fp = _fingerprint(R2 if fp_matrix is None else fp_matrix, label, settings)
            state = self.ckpt / _STATE_FILE
            if state.is_file():
                old = read_json(state, "checkpoint state",
                                fix=f"delete the directory {str(self.ckpt)!r} to start over")
                if old != fp:
                    diff = sorted(k for k in set(fp) | set(old) if old.get(k) != fp.get(k))
                    raise ValueError(f"checkpoint_dir {str(self.ckpt)!r} holds fits of a different "
                                     f"problem (differs in {diff}); use a new directory or delete it")
            else:
                atomic_json(state, fp)

    def close(self):
        self.bar.close()

    def _finished(self, path) -> bool:
        """A saved fit to load instead of refitting (the sharded search asks every rank)."""
        return path is not None and path.exists()

    def _load(self, path):
        from ..factors import LowRankFit

        return LowRankFit.load(path)

    def _save(self, res, path) -> None:
        res.save(path)

    def passes(self, r: int) -> bool:
        return self.ok[r]

    def _zero_mse(self) -> float:
        """MSE of the zero matrix over Ω₂ (the sharded search sums over its ranks)."""
        return float(np.mean(self.R2.label_values(self.label) ** 2)) if self.R2.nnz else 0.0

    def _observed_mse(self, fit) -> float:
        """The verified MSE of a fit over Ω₂ (the sharded search reduces over its ranks)."""
        return observed_mse(self.R2, fit, self.label)

    def _zero(self, r: int) -> bool:
        self.mse[r] = self._zero_mse()
        self.converged[r] = True
        self.ok[r] = self.mse[r] <= self.eps
        self.trials.append(dict(rank=r, method="zero matrix", n_iter=0, seconds=0.0,
                                mse=self.mse[r], passed=self.ok[r], stop="target"))
        return self._done(r)

    def _done(self, r: int) -> bool:
        self.bar.update(1)
        self.bar.set_postfix(rank=r, mse=f"{self.mse[r]:.3g}")
        return self.passes(r)

    def auto(self, start: int = 1, floor: int = 0, walk: int = 0):
        """Rank 0, then start, start + 1, … (``walk`` ranks one at a time), then doubling up
        to the cap until a rank passes, then bisection between the last failing (or 0) and
        the first passing rank. Ranks below ``floor`` are known to fail (a proved lower
        bound) and are never fitted; with a proved floor the answer is usually a rank or two
        above it, which the walk reaches without fitting the large ranks doubling would."""
        if self.evaluate(0) or self.cap == 0:
            return
        lo, hi, k = max(0, min(int(floor), self.cap) - 1), None, max(1, int(start))
        steps, phase = 0, "doubling"
        while True:
            k = min(k, self.cap)
            if self.evaluate(k, phase):
                hi = k
                break
            lo = k
            if k == self.cap:
                return
            k = k + 1 if steps < walk else 2 * k
            steps += 1
            phase = "walk" if steps <= walk else "doubling"
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.evaluate(mid, "bisect"):
                hi = mid
            else:
                lo = mid

    def tighten(self, floor: int = 1) -> None:
        """More effort below the certificate (the fixed-rank search overrides it)."""

    def best(self):
        """(certified rank, rank key, certificate) over every passing rank: the fewest
        nonzero singular values wins, since U diag(d) Vᵀ has rank nnz(d)."""
        best = (None, None, None)
        for r in sorted(self.mse):
            if not self.passes(r):
                continue
            if r == 0 or r not in self.fits:
                return 0, r, None
            fit = self.fits[r]
            eff = int(np.count_nonzero(to_numpy(fit.d)))
            if best[0] is None or eff < best[0]:
                best = (eff, r, fit)
        return best


class _Search(_SearchBase):
    """soft-impute at each rank (the paper's methodology), warm-started from the previous fit."""

    def __init__(self, R2, label, *, eps, lam, max_iter, thresh, backend, device, seed, progress,
                 checkpoint_dir, cap=None, fp_matrix=None, fp_extra=None):
        super().__init__(R2, label, eps=eps, progress=progress, checkpoint_dir=checkpoint_dir,
                         settings=dict(lam=lam, max_iter=max_iter, thresh=thresh, seed=seed, **(fp_extra or {})),
                         cap=cap, fp_matrix=fp_matrix)
        self.lam = lam
        self.kw = dict(label=label, max_iter=max_iter, thresh=thresh, backend=backend,
                       device=device, seed=seed, progress=progress)

    def evaluate(self, r: int, phase: str = "list") -> bool:
        """Fit rank r (once), record the verified MSE, return whether it is ≤ ε (soft-impute
        warm-starts from the previous fit whatever the search phase)."""
        if r in self.mse:
            return self.passes(r)
        if r == 0 or self.R2.nnz == 0:
            return self._zero(r)
        k = min(r, self.full)
        t = time.perf_counter()
        res = self._fit(k)
        self.fits[r] = res
        self.mse[r] = self._observed_mse(res)
        self.converged[r] = bool(res.converged)
        self.ok[r] = self.mse[r] <= self.eps
        self.trials.append(dict(rank=r, method="soft-impute", n_iter=int(res.n_iter),
                                seconds=time.perf_counter() - t, mse=self.mse[r], passed=self.ok[r],
                                stop="thresh" if res.converged else "max_iter"))
        return self._done(r)

    def _soft_impute(self, k, **kw):
        from ..softimpute import soft_impute

        return soft_impute(self.R2, k, self.lam, **kw)

    def _fit(self, k: int):
        path = None if self.ckpt is None else self.ckpt / f"rank_{k:06d}.npz"
        if self._finished(path):
            return self._load(path)
        smaller = [r for r in self.fits if r < k]
        warm = self.fits[max(smaller)] if smaller else None
        partial = None if self.ckpt is None else self.ckpt / f"rank_{k:06d}.partial.npz"
        res = self._soft_impute(k, warm_start=warm, checkpoint=partial, **self.kw)
        if path is not None:
            self._save(res, path)
        return res

class _CertSearch(_SearchBase):
    """Fixed-rank certificates: each rank from a list of starts until one reaches ε."""

    #: the starts of a rank may run in threads (the sharded search runs one fit at a time)
    _threads_ok = True

    def __init__(self, R2, label, *, eps, rho, max_iter, solver, n_restarts, max_abs, options,
                 backend, device, seed, progress, checkpoint_dir, extra_starts=0, cap=None, fp_matrix=None,
                 fp_extra=None):
        super().__init__(R2, label, eps=eps, progress=progress, checkpoint_dir=checkpoint_dir,
                         settings=dict(method="auto", rho=rho, max_iter=max_iter, solver=solver,
                                       n_restarts=n_restarts, max_abs=max_abs, seed=seed, eps=eps,
                                       options=options, **(fp_extra or {})),
                         cap=cap, fp_matrix=fp_matrix)
        self.n_restarts, self.max_abs, self.seed = n_restarts, max_abs, seed
        self.extra_starts = int(extra_starts)
        self.kw = dict(label=label, eps=eps, rho=rho, method=solver, max_iter=max_iter,
                       backend=backend, device=device, progress=progress, **options)
        self.solver = solver

    def _starts(self, r: int, phase: str):
        """(name, warm start, init) tried in order at rank r: in the doubling phase the
        spectral start only (most of those ranks are expected to fail); on the walk up from a
        proved floor, first the failed fit at r − 1 padded with the top singular triplet of its
        residual (it has crossed most of the swamp already: vader:movie rank 6 passes in 38
        LM steps from it, 78 from the spectral start), then spectral; when bisecting, the
        truncated factors of the smallest certified rank above r first; then spectral and
        ``n_restarts`` random starts."""
        starts = []
        above = [q for q in self.fits if q > r and self.ok[q]]
        if phase == "bisect" and above:
            starts.append(("truncated", self.fits[min(above)], "spectral"))
        if phase == "walk" and r - 1 in self.fits:
            starts.append(("padded", self.fits[r - 1], "spectral"))
        starts.append(("spectral", None, "spectral"))
        if phase not in ("doubling", "walk"):
            starts += [("random", None, "random")] * self.n_restarts
        return starts

    def evaluate(self, r: int, phase: str = "list") -> bool:
        if r in self.mse:
            return self.passes(r)
        if r == 0 or self.R2.nnz == 0:
            return self._zero(r)
        self._run_starts(r, self._starts(r, phase))
        return self._done(r)

    def _run_starts(self, r: int, starts, first: int = 0) -> bool:
        """Fit rank r from each start in turn (attempt numbers from ``first``) until one
        passes or the best ends far above ε; keep the best fit at r. Returns whether r passes."""
        k = min(r, self.full)
        best = None if r not in self.mse else (self.fits[r], self.mse[r], self.ok[r])
        # closing() cancels the starts running ahead once the rank is decided (or on an error)
        with contextlib.closing(self._fits_in_order(k, starts, first)) as fits:
            for name, fit, seconds in fits:
                mse = self._observed_mse(fit)
                passed = mse <= self.eps
                trial = dict(rank=r, method=f"{fit.meta.get('solver', self.solver)}/{name}",
                             n_iter=int(fit.n_iter), seconds=seconds, mse=mse, passed=passed,
                             stop=fit.meta.get("stop", "?"))
                if passed:
                    fit.meta["scale"] = self._scale(fit)  # reused if it certifies
                    trial["max_abs"] = fit.meta["scale"]["max_abs"]
                    if self.max_abs is not None and trial["max_abs"] > self.max_abs:
                        trial.update(passed=False, rejected=True)
                        passed = False
                self.trials.append(trial)
                if best is None or passed or (not best[2] and mse < best[1]):
                    best = (fit, mse, passed)
                if passed or (name != "padded" and best[1] > _RETRY_BAND * self.eps):
                    # a start that ends far above ε says the rank is out of reach of these starts;
                    # only near misses are worth another start (a padded start is a shortcut, never
                    # a reason to skip the spectral start that would be tried without it)
                    break
        self.fits[r], self.mse[r], self.ok[r] = best
        self.converged[r] = self.ok[r]
        return self.ok[r]

    def _fits_in_order(self, k: int, starts, first: int):
        """Yield (name, fit, seconds) for each start in order, attempt numbers from ``first``.

        With :meth:`_workers` > 1 the next starts run ahead in threads while the caller judges
        the current one. Each fit depends only on its start and seed, and the kernels are
        deterministic, so the fits and their order are those of fitting one at a time; the
        starts still running when the caller stops (``close()``) are cancelled through the
        solver's callback and forgotten (no result, no checkpoint), as if never started."""
        workers = self._workers(k, len(starts))
        todo = iter(enumerate(starts, start=first))
        if workers == 1:
            for i, (name, warm, init) in todo:
                fit, seconds = self._fit(k, i, warm, init)
                yield name, fit, seconds
            return
        cancel = threading.Event()
        running: deque = deque()

        def submit():
            for i, (name, warm, init) in todo:
                running.append((i, name, pool.submit(self._fit, k, i, warm, init, cancel)))
                return

        # one BLAS thread for the whole region: threadpoolctl's per-fit limits, entered and
        # left from several threads, would restore each other's settings
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
            for _ in range(workers):
                submit()
            try:
                while running:
                    _, name, future = running.popleft()
                    fit, seconds = future.result()
                    submit()
                    yield name, fit, seconds
            finally:
                cancel.set()
                for i, _, future in running:
                    future.result()
                    self._forget(k, i)

    def _workers(self, k: int, n_starts: int) -> int:
        """How many starts at rank k run at once: numba's thread count when the fit runs
        serial compiled kernels on the NumPy backend (nnz · k below
        :data:`rankkit._kernels._SERIAL_WORK`: one core per fit, the others idle) and numba's
        threading layer may be entered from several threads (not ``workqueue``); else 1
        (larger fits use every core inside one fit)."""
        if n_starts < 2 or not self._threads_ok:
            return 1
        import numba

        from .._kernels import _SERIAL_WORK, threadsafe_layer
        from ..lowrank import _fit_backend

        backend, _ = _fit_backend(self.kw["backend"], self.kw["device"])
        if backend != "numpy" or self.R2.nnz * k >= _SERIAL_WORK or not threadsafe_layer():
            return 1
        return max(1, min(int(numba.get_num_threads()), n_starts))

    def tighten(self, floor: int = 1) -> None:
        """Try harder at the rank just below the certificate, while its best fit is a near miss
        (within 10 × ε) and it is not under ``floor`` (a proved lower bound): the truncated
        (deflated) certificate and the spectral start if not tried there yet, then
        ``extra_starts`` random starts; on success, the same one rank lower. Every attempt is
        listed in ``trials``; a rank that passes today is never given up."""
        while self.extra_starts > 0:
            r_cert, at, fit = self.best()
            if r_cert is None or at is None or r_cert - 1 < floor or fit is None:
                return
            r = r_cert - 1
            if r not in self.mse:
                self.evaluate(r, "bisect")
                if self.passes(r):
                    continue
            if self.passes(r) or self.mse[r] > _RETRY_BAND * self.eps:
                return
            done = self._tried(r)
            starts = [] if "truncated" in done else [("truncated", fit, "spectral")]
            starts += [] if "spectral" in done else [("spectral", None, "spectral")]
            starts += [("random", None, "random")] * self.extra_starts
            if not self._run_starts(r, starts, first=len(done)):
                return
            self.bar.set_postfix(rank=r, mse=f"{self.mse[r]:.3g}")

    def _tried(self, r: int) -> list[str]:
        """Names of the starts fitted at rank r so far, in order (from ``trials``, whose
        method reads "solver/start")."""
        return [t["method"].rsplit("/", 1)[-1] for t in self.trials if t["rank"] == r and "/" in t["method"]]

    def _scale(self, fit) -> dict:
        """:func:`certificate_scale` of a passing fit (the sharded search reduces over ranks)."""
        return certificate_scale(fit.U, fit.d, fit.V)

    def _fixed_rank(self, k, **kw):
        from ..lowrank import fixed_rank_fit

        return fixed_rank_fit(self.R2, k, **kw)

    def _fit(self, k: int, attempt: int, warm, init, cancel: threading.Event | None = None):
        """Fit rank k from one start (``attempt`` seeds it and names its checkpoint files);
        a set ``cancel`` stops it within an iteration, unsaved."""
        path, partial = self._attempt_files(k, attempt)
        if self._finished(path):
            res = self._load(path)
            return res, float(res.meta.get("seconds", 0.0))
        kw = dict(self.kw)
        if cancel is not None:
            user = kw.get("callback")
            kw["callback"] = lambda it, info: cancel.is_set() or bool(user is not None and user(it, info))
        t = time.perf_counter()
        res = self._fixed_rank(k, warm_start=warm, init=init, seed=self.seed + attempt,
                               checkpoint=partial, **kw)
        res.meta["solver"] = self.solver if self.solver != "auto" else "+".join(
            dict.fromkeys(res.meta.get("phases") or ["-"]))
        if path is not None and not (cancel is not None and cancel.is_set()):
            self._save(res, path)
        return res, time.perf_counter() - t

    def _forget(self, k: int, attempt: int) -> None:
        """Remove what a cancelled attempt left (its partial checkpoint): a later attempt
        with the same number is another start and must not resume it."""
        for f in self._attempt_files(k, attempt):
            if f is not None:
                f.unlink(missing_ok=True)

    def _attempt_files(self, k: int, attempt: int):
        """(finished fit, partial checkpoint) of one attempt at rank k; (None, None) without
        a checkpoint directory."""
        if self.ckpt is None:
            return None, None
        stem = f"fixed_rank_{k:06d}_{attempt}"
        return self.ckpt / f"{stem}.npz", self.ckpt / f"{stem}.partial.npz"
