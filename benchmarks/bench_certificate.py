"""Minimal-rank certificates: rankkit's fixed-rank solver against soft-impute and pymanopt.

Per VADER set (GPT-2 tokenizer, label 0 = sentiment ∈ [0, 1]; Ω₂ after Lemma 3: movie
2,716 × 5,481 / 13,317 cells, tweets 1,018 × 2,624 / 5,208, nyt 1,104 × 3,328 / 6,221,
amazon 1,047 × 1,836 / 4,742), the lowest certified rank at ε = 1e-6 (MSE over Ω₂), the
seconds to it and the certificate's largest |entry| (dense Ω₂ completion), for

  (a) ``rk.estimate_min_rank(R, eps=1e-6)``            the new default (fixed-rank solver
                                                        + rank search), end to end;
  (b) ``rk.estimate_min_rank(R, eps=1e-6, method="soft-impute")``  the paper's methodology
                                                        (soft-impute ALS, λ = 1e-4, 1000 it.);
  (c) pymanopt 2.2.1 ConjugateGradient on FixedRankEmbedded (benchmarks/peers.py), walking
      ranks upward from (a)'s ``lower`` (``--peer-start``), each rank capped at
      ``--peer-max-time`` s, up to (a)'s certified rank + ``--peer-extra`` or
      ``--peer-budget`` s in all; its certified rank is the first passing rank, its time
      the sum over the ranks tried (every rank tried is reported).

Timing starts from the RewardMatrix P_Ω(R): loading/tokenising and building P_Ω(R) are
timed separately and reported, not counted. numba kernels are compiled by a warm-up on a
small matrix before any timing. ``--exact-l`` adds the L problem of bench_softimpute.py
(70,000 × 10,000, 10M uniformly sampled cells) made exactly rank 20 without noise (values
(A Bᵀ)_ij / √20 with A, B standard normal: unit variance, as in bench_softimpute.py), timing
``fixed_rank_fit(S, 20, eps=1e-10, rho=0.0)`` against ``rk.soft_impute(S, 20, lam=0.0,
thresh=-1)`` stopped by its callback at MSE ≤ 1e-10, each capped at ``--cap`` s.

Targets (PASS/FAIL printed):
  * on every set, (a)'s certified rank ≤ pymanopt's, and (a) reaches it faster;
  * tweets: (a)'s upper ≤ 6;
  * movie: (a) certified in ≤ 10 s;
  * exact-L: soft-impute time / fixed-rank time ≥ 5× (a soft-impute run stopped by the cap
    gives a lower bound on the ratio, marked "≥").

Writes benchmarks/results/certificate_<date>.{json,txt} (``--json`` to choose the JSON path).

Usage::

    nice python benchmarks/bench_certificate.py --quick               # < 1 min smoke test
    nice python benchmarks/bench_certificate.py                        # four sets, ~tens of minutes
    nice python benchmarks/bench_certificate.py --sets tweets,movie --peer-max-time 30
    nice python benchmarks/bench_certificate.py --sets none --exact-l  # only the L problem
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from rankkit._io import atomic_json, atomic_write, json_default  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

SETS = {"movie": "vader:movie", "tweets": "vader:tweets", "nyt": "vader:nyt", "amazon": "vader:amazon"}
EPS = 1e-6
EXACT_L = (70_000, 10_000, 10_000_000, 20)   # n, m, cells, rank
EXACT_L_QUICK = (2_000, 1_000, 300_000, 20)  # same ~5× oversampling of the (n + m − k) k unknowns as L
EXACT_EPS = 1e-10


# ---- helpers ---------------------------------------------------------------------------------

def run_estimate(R, method: str, *, progress: bool = False) -> dict:
    """Time ``estimate_min_rank(R, eps=1e-6, method=...)`` end to end from P_Ω(R)."""
    import rankkit as rk

    t0 = time.perf_counter()
    est = rk.estimate_min_rank(R, eps=EPS, progress=progress, method=method)
    seconds = time.perf_counter() - t0
    return dict(method=method, lower=est.lower, upper=est.upper, rank_certified=est.rank_certified,
                certificate_source=est.certificate_source,
                seconds=seconds, elapsed=est.elapsed, scale=est.scale,
                mse_by_rank={int(k): float(v) for k, v in sorted(est.mse_by_rank.items())},
                trials=est.trials, single_rows_nonzero=bool(est.single_rows_nonzero),
                omega2_shape=list(est.omega2_shape), omega2_nnz=int(est.omega2_nnz)), est


def run_peer_walk(S, start: int, stop: int, max_time: float, budget: float, seed: int, say=print) -> dict:
    """pymanopt CG at ranks start, start+1, …, stop (or until ``budget`` s); first pass wins."""
    from peers import pymanopt_fixed_rank

    tried, total, certified = [], 0.0, None
    for r in range(max(1, start), max(1, stop) + 1):
        if total >= budget:
            break
        res = pymanopt_fixed_rank(S, r, eps=EPS, max_time=min(max_time, budget - total), seed=seed)
        total += res["seconds"]
        tried.append(res)
        say(f"       rank {r:3d}: MSE {res['mse']:.3g} in {res['seconds']:.1f} s, "
            f"{res['n_iter']} it., max|x| {res['max_abs']:.3g} — {res['stop']}")
        if res["reached"]:
            certified = r
            break
    last = tried[-1]["rank"] if tried else None
    return dict(rank_certified=certified, seconds=total, tried=tried, last_rank_tried=last,
                max_abs=tried[-1]["max_abs"] if certified else None)


def warm_up() -> float:
    """Compile numba kernels (disk-cached) outside every timing."""
    import rankkit as rk
    from rankkit.lowrank import fixed_rank_fit

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    M = sp.random(60, 40, density=0.15, format="csr", random_state=rng)
    M.data = rng.random(M.nnz)
    rk.soft_impute(M, 3, 1e-4, max_iter=3, progress=False)
    rk.estimate_min_rank(M, eps=EPS, progress=False, method="soft-impute")
    for method in ("als", "rcg", "rlm", "auto"):  # every solver's kernels
        fixed_rank_fit(M, 3, eps=1e-12, method=method, max_iter=5, progress=False)
    rk.estimate_min_rank(M, eps=EPS, progress=False)
    return time.perf_counter() - t0


# ---- the exact rank-20 L problem -------------------------------------------------------------

def make_exact(n: int, m: int, nnz: int, k: int, seed: int = 0, cache_dir: str | None = None) -> sp.csr_matrix:
    """nnz distinct uniformly sampled cells of (A Bᵀ)/√k, A (n×k), B (m×k) standard normal."""
    path = None
    if cache_dir:
        path = os.path.join(cache_dir, f"certificate_exact_{n}x{m}_{nnz}_r{k}_{seed}.npz")
        if os.path.exists(path):
            return sp.load_npz(path).tocsr()
    rng = np.random.default_rng(seed)
    ids = np.empty(0, dtype=np.int64)
    while ids.size < nnz:
        extra = int(1.3 * (nnz - ids.size)) + 1000
        ids = np.unique(np.concatenate([ids, rng.integers(0, n, extra) * m + rng.integers(0, m, extra)]))
    ids = np.sort(rng.permutation(ids)[:nnz])
    rows, cols = ids // m, ids % m
    A, B = rng.standard_normal((n, k)), rng.standard_normal((m, k))
    vals = np.empty(nnz)
    for i in range(0, nnz, 1_000_000):  # no nnz×k temporary
        vals[i:i + 1_000_000] = np.einsum("ij,ij->i", A[rows[i:i + 1_000_000]], B[cols[i:i + 1_000_000]])
    vals /= np.sqrt(k)
    X = sp.csr_matrix((vals, (rows, cols)), shape=(n, m))
    if path:
        atomic_write(path, "wb", lambda f: sp.save_npz(f, X, compressed=False))
    return X


def _count(seq) -> dict:
    out: dict = {}
    for x in seq:
        out[x] = out.get(x, 0) + 1
    return out


def run_exact(size: tuple, cap: float, ours_max_iter: int, cache_dir: str | None, say=print) -> dict:
    import rankkit as rk
    from rankkit.lowrank import fixed_rank_fit

    n, m, nnz, k = size
    t0 = time.perf_counter()
    S = make_exact(n, m, nnz, k, cache_dir=cache_dir)
    out = dict(n=n, m=m, nnz=int(S.nnz), rank=k, eps=EXACT_EPS, cap=cap, build_seconds=time.perf_counter() - t0)
    say(f"-- exact rank-{k}: {n:,} × {m:,}, {S.nnz:,} cells (built in {out['build_seconds']:.1f} s)")
    small = S[: max(2000, n // 50)].tocsr()  # warm-up at the same rank: compiles every kernel used
    rk.soft_impute(small, k, 0.0, max_iter=2, progress=False)
    fixed_rank_fit(small, k, eps=EXACT_EPS, rho=0.0, max_iter=3, progress=False)
    t0 = time.perf_counter()
    res = fixed_rank_fit(S, k, eps=EXACT_EPS, rho=0.0, max_iter=ours_max_iter, progress=False)
    secs = time.perf_counter() - t0
    mse = rk.observed_mse(S, res)
    out["fixed_rank"] = dict(seconds=secs, mse=mse, solver_mse=float(res.mse), n_iter=int(res.n_iter),
                             reached=bool(mse <= EXACT_EPS), phases=_count(res.meta.get("phases", [])),
                             meta={k: v for k, v in res.meta.items() if k not in ("phases", "mse_trace")})
    say(f"   fixed_rank_fit: MSE {mse:.3g} in {secs:.1f} s, {res.n_iter} it. "
        f"({'reached' if mse <= EXACT_EPS else 'NOT reached'})")
    reached = {}

    def cb(it, info):
        t = time.perf_counter() - t_si
        if info["mse"] <= EXACT_EPS:
            reached.update(it=it, seconds=t)
            return True
        return t >= cap

    t_si = time.perf_counter()
    res = rk.soft_impute(S, k, 0.0, thresh=-1.0, max_iter=10_000_000, callback=cb, progress=False)
    secs = time.perf_counter() - t_si
    mse = rk.observed_mse(S, res)
    out["soft_impute"] = dict(seconds=reached.get("seconds", secs), mse=mse, n_iter=int(res.n_iter),
                              reached=bool(reached), capped=not reached)
    how = f"reached at {reached['seconds']:.1f} s" if reached else "stopped by the cap"
    say(f"   soft_impute λ=0: MSE {mse:.3g} after {res.n_iter} it. in {secs:.1f} s ({how})")
    fr = out["fixed_rank"]
    if fr and fr["reached"]:
        out["ratio"] = out["soft_impute"]["seconds"] / fr["seconds"]
        out["ratio_is_lower_bound"] = not reached
    else:
        out["ratio"], out["ratio_is_lower_bound"] = None, False
    return out


# ---- main ------------------------------------------------------------------------------------

def header(args) -> str:
    import numba
    import scipy

    import rankkit as rk

    try:
        import pymanopt

        pm = pymanopt.__version__
    except ImportError:
        pm = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "rankkit"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        commit += " (+ uncommitted rankkit changes)" if dirty else ""
    except OSError:
        commit = "?"
    lines = [f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"numba threads {numba.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, "
             f"BLAS threads {args.blas_threads}",
             f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
             f"numba {numba.__version__}, pymanopt {pm}, rankkit {rk.__version__} @ {commit}"]
    try:
        import torch

        if torch.cuda.is_available():
            lines.append(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    except ImportError:
        pass
    return "\n".join(lines)


def _fmt_rank(r):
    return "-" if r is None else str(r)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="movie,tweets,nyt,amazon", help="comma-separated VADER sets, or 'none'")
    ap.add_argument("--peer-max-time", type=float, default=60.0, help="pymanopt cap per rank, seconds [60]")
    ap.add_argument("--peer-budget", type=float, default=900.0, help="pymanopt cap over all ranks of a set [900]")
    ap.add_argument("--peer-extra", type=int, default=2,
                    help="walk pymanopt up to (a)'s certified rank + this many ranks [2]")
    ap.add_argument("--peer-start", type=int, default=None, help="first pymanopt rank [(a)'s lower]")
    ap.add_argument("--no-soft-impute", action="store_true", help="skip (b)")
    ap.add_argument("--exact-l", action="store_true", help="also the exactly rank-20 L problem")
    ap.add_argument("--cap", type=float, default=600.0, help="time cap per solver on the L problem [600]")
    ap.add_argument("--ours-max-iter", type=int, default=500, help="fixed_rank_fit max_iter on the L problem")
    ap.add_argument("--quick", action="store_true",
                    help="tweets only, pymanopt ≤ 3 ranks × 5 s, L problem at 2,000 × 1,000 (300k cells), "
                         "cap 20 s: < 1 minute")
    ap.add_argument("--seed", type=int, default=0, help="pymanopt's random start")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="BLAS threads for everything (default 1: small dense factors; threaded BLAS "
                         "on a shared 2-core machine slows pymanopt's tiny products by 10× or more)")
    ap.add_argument("--cache-dir", default=os.environ.get("TMPDIR", "/tmp"), help="L problem npz cache")
    ap.add_argument("--json", default=None, help="JSON path [benchmarks/results/certificate_<date>.json]")
    ap.add_argument("--progress", action="store_true", help="tqdm bars of the estimates")
    args = ap.parse_args(argv)
    if args.quick:
        if args.sets == ap.get_default("sets"):
            args.sets = "tweets"
        args.peer_max_time = min(args.peer_max_time, 5.0)
        args.peer_budget = min(args.peer_budget, 15.0)
        args.cap = min(args.cap, 20.0)

    from threadpoolctl import threadpool_limits

    threadpool_limits(args.blas_threads)

    import rankkit as rk

    sets = [] if args.sets.strip().lower() == "none" else [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        ap.error(f"--sets: unknown {unknown}; choose from {list(SETS)} or 'none'")
    log = io.StringIO()

    def say(s=""):
        print(s, flush=True)
        log.write(s + "\n")

    say(header(args))
    say(f"warm-up (numba compile, outside every timing): {warm_up():.1f} s")
    say(f"ε = {EPS:g} (MSE over Ω₂); pymanopt: ≤ {args.peer_max_time:g} s per rank, ≤ {args.peer_budget:g} s per set, "
        f"seed {args.seed}")
    rows = {}
    for name in sets:
        spec = SETS[name]
        t0 = time.perf_counter()
        ds = rk.datasets.load(spec)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        R = rk.build_reward_matrix(ds)
        t_build = time.perf_counter() - t0
        R2 = rk.reduce_omega2(R)
        S = R2.to_scipy(0)
        say(f"-- {name}: {len(ds):,} texts; Ω {R.shape[0]:,} × {R.shape[1]:,}, {R.nnz:,} cells; "
            f"Ω₂ {S.shape[0]:,} × {S.shape[1]:,}, {S.nnz:,} cells; load {t_load:.1f} s, "
            f"build P_Ω(R) {t_build:.2f} s (not timed below)")
        row = dict(spec=spec, texts=len(ds), omega_shape=list(R.shape), omega_nnz=int(R.nnz),
                   omega2_shape=list(S.shape), omega2_nnz=int(S.nnz), load_seconds=t_load, build_seconds=t_build)
        a, _ = run_estimate(R, "auto", progress=args.progress)
        row["default"] = a
        ref = a  # the peer walks up from the new default's exact lower bound
        say(f"   (a) new default : rank {_fmt_rank(a['rank_certified'])} on Ω₂ (upper {_fmt_rank(a['upper'])}, "
            f"lower {a['lower']}) in {a['seconds']:.2f} s, max|x| "
            f"{a['scale']['max_abs'] if a['scale'] else float('nan'):.3g}")
        for t in (a["trials"] or []):
            say(f"         trial rank {t.get('rank')}: {t.get('method')} {t.get('n_iter')} it. "
                f"{t.get('seconds', float('nan')):.2f} s, MSE {t.get('mse', float('nan')):.3g}"
                f"{' pass' if t.get('passed') else ''}")
        if not args.no_soft_impute:
            b, _ = run_estimate(R, "soft-impute", progress=args.progress)
            row["soft_impute"] = b
            say(f"   (b) soft-impute : rank {_fmt_rank(b['rank_certified'])} on Ω₂ (upper {_fmt_rank(b['upper'])}, "
                f"{b['certificate_source']}) in {b['seconds']:.2f} s, max|x| "
                f"{b['scale']['max_abs'] if b['scale'] else float('nan'):.3g}")
        start = args.peer_start if args.peer_start is not None else ref["lower"]
        target = ref["rank_certified"] if ref["rank_certified"] is not None else start
        if args.quick:
            stop = start + 2
        else:
            stop = max(start, target + args.peer_extra)
        say(f"   (c) pymanopt CG, ranks {start}..{stop}:")
        c = run_peer_walk(S, start, stop, args.peer_max_time, args.peer_budget, args.seed, say)
        c["upper"] = None if c["rank_certified"] is None else c["rank_certified"] + int(ref["single_rows_nonzero"])
        row["pymanopt"] = c
        none = "" if c["rank_certified"] is not None else f" (none ≤ {c['last_rank_tried']})"
        say(f"   (c) pymanopt    : rank {_fmt_rank(c['rank_certified'])}{none} in {c['seconds']:.1f} s "
            f"over {len(c['tried'])} rank(s)")
        rows[name] = row

    exact = None
    if args.exact_l:
        exact = run_exact(EXACT_L_QUICK if args.quick else EXACT_L, args.cap, args.ours_max_iter,
                          args.cache_dir, say)

    # ---- table and targets -----------------------------------------------------------------
    say("")
    say(f"{'set':7} {'Ω₂ cells':>9} | {'(a) rank':>8} {'s':>7} {'max|x|':>8} | {'(b) rank':>8} {'s':>7} "
        f"{'max|x|':>8} | {'(c) rank':>8} {'s':>7} {'max|x|':>8}")
    for name, row in rows.items():
        cells = []
        for key in ("default", "soft_impute"):
            x = row.get(key)
            cells.append(f"{'-':>8} {'-':>7} {'-':>8}" if x is None else
                         f"{_fmt_rank(x['rank_certified']):>8} {x['seconds']:7.2f} "
                         f"{(x['scale'] or {}).get('max_abs', float('nan')):8.3g}")
        c = row.get("pymanopt")
        if c is None:
            cells.append(f"{'-':>8} {'-':>7} {'-':>8}")
        else:
            rk_ = _fmt_rank(c["rank_certified"]) if c["rank_certified"] is not None else f">{c['last_rank_tried']}"
            cells.append(f"{rk_:>8} {c['seconds']:7.1f} {c['max_abs'] if c['max_abs'] is not None else float('nan'):8.3g}")
        say(f"{name:7} {row['omega2_nnz']:9,} | " + " | ".join(cells))
    say("rank = certified rank on Ω₂ (the ε-rank over Ω is ≤ rank + 1, Lemma 3); s = seconds from P_Ω(R) "
        "(pymanopt: sum over ranks tried); max|x| = largest |entry| of the certificate's dense Ω₂ completion")

    targets = []
    for name, row in rows.items():
        a, c = row.get("default"), row.get("pymanopt")
        if a is None or c is None:
            continue
        ok_rank = a["rank_certified"] is not None and (c["rank_certified"] is None or a["rank_certified"] <= c["rank_certified"])
        ok_time = a["seconds"] < c["seconds"]
        targets.append((f"{name}: (a) rank ≤ pymanopt's and reached faster "
                        f"({_fmt_rank(a['rank_certified'])} vs {_fmt_rank(c['rank_certified'])}"
                        f"{'' if c['rank_certified'] is not None else ' (none found)'}; "
                        f"{a['seconds']:.2f} s vs {c['seconds']:.1f} s)", ok_rank and ok_time))
    if "tweets" in rows and rows["tweets"].get("default"):
        u = rows["tweets"]["default"]["upper"]
        targets.append((f"tweets: (a) upper ≤ 6 (got {_fmt_rank(u)})", u is not None and u <= 6))
    if "movie" in rows and rows["movie"].get("default"):
        s = rows["movie"]["default"]["seconds"]
        ok = rows["movie"]["default"]["rank_certified"] is not None and s <= 10
        targets.append((f"movie: (a) certified in ≤ 10 s (got {s:.2f} s)", ok))
    if exact is not None:
        r = exact.get("ratio")
        ge = "≥ " if exact.get("ratio_is_lower_bound") else ""
        lbl = "exact-L" if not args.quick else "exact (quick size)"
        targets.append((f"{lbl}: soft-impute / fixed-rank time ≥ 5× "
                        f"(got {ge}{r:.1f}×)" if r is not None else f"{lbl}: time ratio ≥ 5× (fixed-rank did not reach ε)",
                        r is not None and r >= 5))
    say("")
    for text, ok in targets:
        say(f"{'PASS' if ok else 'FAIL'}  {text}")
    if not targets:
        say("(no targets evaluated: no sets)")

    result = dict(name="certificate", date=time.strftime("%Y-%m-%d"), header=header(args), eps=EPS,
                  quick=args.quick, args=vars(args), sets=rows, exact_l=exact,
                  targets=[dict(target=t, passed=ok) for t, ok in targets])
    out = Path(args.json) if args.json else HERE / "results" / (
        f"certificate_{time.strftime('%Y-%m-%d')}{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(out, result, indent=1, default=json_default)
    txt = out.with_suffix(".txt")
    txt.write_text(log.getvalue())
    print(f"wrote {out} and {txt}")
    return result


if __name__ == "__main__":
    main()
