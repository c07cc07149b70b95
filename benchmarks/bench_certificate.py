"""Minimal-rank certificates: rankkit's fixed-rank solver against soft-impute and pymanopt.

Per VADER set (GPT-2 tokenizer, label 0 = sentiment ∈ [0, 1]; Ω₂ after Lemma 3: movie
2,716 × 5,481 / 13,317 cells, tweets 1,018 × 2,624 / 5,208, nyt 1,104 × 3,328 / 6,221,
amazon 1,047 × 1,836 / 4,742), the lowest certified rank at ε = 1e-6 (MSE over Ω₂), the
seconds to it and the certificate's largest |entry| (dense Ω₂ completion), for

  (a) ``rk.estimate_min_rank(R, eps=1e-6)``            the new default (fixed-rank solver
                                                        + rank search), end to end;
  (b) ``rk.estimate_min_rank(R, eps=1e-6, method="soft-impute")``  the paper's methodology
                                                        (soft-impute ALS, λ = 1e-4, 1000 it.);
  (c) at (a)'s certified rank r and at r − 1, ``fixed_rank_fit`` (rankkit's defaults) and
      pymanopt 2.2.1 ConjugateGradient on FixedRankEmbedded (benchmarks/peers.py) from the
      *same* start, rankkit's spectral start at that rank, with no time limit on either
      side (``--peer-max-time`` sets one on pymanopt, reported): the solver against the
      solver, not a search with a budget against a solver.

Timing starts from the RewardMatrix P_Ω(R): loading/tokenising and building P_Ω(R) are
timed separately and reported, not counted. numba kernels are compiled by a warm-up on a
small matrix before any timing. ``--exact-l`` adds the L problem of bench_softimpute.py
(70,000 × 10,000, 10M uniformly sampled cells) made exactly rank 20 without noise (values
(A Bᵀ)_ij / √20 with A, B standard normal: unit variance, as in bench_softimpute.py), timing
``fixed_rank_fit(S, 20, eps=1e-10, rho=0.0)`` against ``rk.soft_impute(S, 20, lam=0.0,
thresh=-1)`` stopped by its callback at MSE ≤ 1e-10, each capped at ``--cap`` s.

Targets (PASS/FAIL printed):
  * every set: upper − eps_lower ≤ 2 (the ε-bracket, issue 22);
  * every set: from the same start at rank r, rankkit reaches ε, no later than pymanopt
    when pymanopt reaches it too;
  * movie: (a) in ≤ 10 s; tweets, nyt, amazon: (a) in ≤ 5 s;
  * exact-L: soft-impute time / fixed-rank time ≥ 5× (a soft-impute run stopped by the cap
    gives a lower bound on the ratio, marked "≥").

Writes benchmarks/results/certificate_<date>.{json,txt} (``--json`` to choose the JSON path).

Usage::

    nice python benchmarks/bench_certificate.py --quick               # < 1 min smoke test
    nice python benchmarks/bench_certificate.py                        # four sets, ~tens of minutes
    nice python benchmarks/bench_certificate.py --sets tweets,movie --peer-max-time 300
    nice python benchmarks/bench_certificate.py --sets none --exact-l  # only the L problem
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from rankkit._io import atomic_json, atomic_write, json_default

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SETS = {"movie": "vader:movie", "tweets": "vader:tweets", "nyt": "vader:nyt", "amazon": "vader:amazon"}
EPS = 1e-6
EXACT_L = (70_000, 10_000, 10_000_000, 20)   # n, m, cells, rank
EXACT_L_QUICK = (2_000, 1_000, 300_000, 20)  # same ~5× oversampling of the (n + m − k) k unknowns as L
EXACT_EPS = 1e-10


# ---- helpers ---------------------------------------------------------------------------------

def run_estimate(R, method: str, *, progress: bool = False, repeat: int = 1) -> dict:
    """Time ``estimate_min_rank(R, eps=1e-6, method=...)`` end to end from P_Ω(R), ``repeat``
    times (the same answer each time: the search is deterministic); ``seconds`` is the median,
    ``seconds_all`` every run."""
    import rankkit as rk

    times = []
    for _ in range(max(1, int(repeat))):
        t0 = time.perf_counter()
        est = rk.estimate_min_rank(R, eps=EPS, progress=progress, method=method)
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
    return dict(method=method, exact_lower=est.exact_lower, exact_upper=est.exact_upper,
                eps_lower=est.eps_lower, upper=est.upper, rank_certified=est.rank_certified,
                certificate_source=est.certificate_source,
                seconds=seconds, seconds_all=times, elapsed=est.elapsed, scale=est.scale,
                mse_by_rank={int(k): float(v) for k, v in sorted(est.mse_by_rank.items())},
                trials=est.trials, single_rows_nonzero=bool(est.single_rows_nonzero),
                omega2_shape=list(est.omega2_shape), omega2_nnz=int(est.omega2_nnz)), est


def run_same_start(S, r: int, seed: int, max_time: float | None, say=print) -> dict:
    """rankkit's ``fixed_rank_fit`` (defaults) and pymanopt's CG at rank r from one start:
    rankkit's spectral start (top-r SVD of P_Ω(X)/p, scale refitted on Ω), no time limit on
    either side unless ``max_time`` (then on pymanopt only, and reported)."""
    from peers import pymanopt_fixed_rank

    import rankkit as rk
    from rankkit._starts import _spectral_start
    from rankkit.lowrank import fixed_rank_fit

    x = S.data.astype(np.float64)
    U, d, V = _spectral_start(S.indptr, S.indices, x, S.shape, r, np.random.default_rng(seed))
    t0 = time.perf_counter()
    res = fixed_rank_fit(S, r, eps=EPS, warm_start={"u": U, "d": d, "v": V}, progress=False)
    secs = time.perf_counter() - t0
    mse = rk.observed_mse(S, res)
    ours = dict(rank=r, mse=mse, seconds=secs, n_iter=int(res.n_iter), reached=bool(mse <= EPS),
                stop=res.meta.get("stop"), max_abs=float(rk.certificate_scale(res.U, res.d, res.V)["max_abs"]))
    peer = pymanopt_fixed_rank(S, r, eps=EPS, max_time=max_time, initial_point=(U, d, V))
    for who, out in (("rankkit ", ours), ("pymanopt", peer)):
        say(f"       rank {r:2d} {who}: MSE {out['mse']:.3g} in {out['seconds']:.1f} s, {out['n_iter']} it., "
            f"max|x| {out['max_abs']:.3g} — {out['stop']}{' (reached ε)' if out['reached'] else ''}")
    return dict(rank=r, rankkit=ours, pymanopt=peer)


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
    from rankkit._cgkernel import _SPECIALISED_K

    for k in range(1, _SPECIALISED_K + 1):  # the LM inner solve has a build per rank k ≤ 10
        fixed_rank_fit(M, k, eps=1e-12, method="rlm", max_iter=2, progress=False)
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
    ap.add_argument("--peer-max-time", type=float, default=None,
                    help="time limit of each pymanopt run, seconds [none: CG's own criteria end it]")
    ap.add_argument("--no-soft-impute", action="store_true", help="skip (b)")
    ap.add_argument("--exact-l", action="store_true", help="also the exactly rank-20 L problem")
    ap.add_argument("--cap", type=float, default=600.0, help="time cap per solver on the L problem [600]")
    ap.add_argument("--ours-max-iter", type=int, default=500, help="fixed_rank_fit max_iter on the L problem")
    ap.add_argument("--quick", action="store_true",
                    help="tweets only, pymanopt ≤ 3 ranks × 5 s, L problem at 2,000 × 1,000 (300k cells), "
                         "cap 20 s: < 1 minute")
    ap.add_argument("--seed", type=int, default=0, help="seed of the shared spectral start")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="BLAS threads for everything (default 1: small dense factors; threaded BLAS "
                         "on a shared 2-core machine slows pymanopt's tiny products by 10× or more)")
    ap.add_argument("--cache-dir", default=os.environ.get("TMPDIR", "/tmp"), help="L problem npz cache")
    ap.add_argument("--json", default=None, help="JSON path [benchmarks/results/certificate_<date>.json]")
    ap.add_argument("--progress", action="store_true", help="tqdm bars of the estimates")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time (a) this many times per set and report the median [1]")
    args = ap.parse_args(argv)
    if args.quick:
        if args.sets == ap.get_default("sets"):
            args.sets = "tweets"
        args.peer_max_time = min(args.peer_max_time or 5.0, 5.0)
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
    limit = "no time limit" if args.peer_max_time is None else f"≤ {args.peer_max_time:g} s per run"
    say(f"ε = {EPS:g} (MSE over Ω₂); same-start fits at the certified rank r and r − 1: rankkit's "
        f"spectral start (seed {args.seed}), rankkit defaults, pymanopt CG defaults, {limit}")
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
        a, _ = run_estimate(R, "auto", progress=args.progress, repeat=args.repeat)
        row["default"] = a
        say(f"   (a) estimate_min_rank: ε-bracket [{a['eps_lower']}, {a['upper']}], exact bracket "
            f"[{a['exact_lower']}, {a['exact_upper']}], rank {_fmt_rank(a['rank_certified'])} on Ω₂ in "
            f"{a['seconds']:.2f} s" + (f" (median of {', '.join(f'{t:.2f}' for t in a['seconds_all'])})"
                                      if len(a["seconds_all"]) > 1 else "")
            + f", max|x| {a['scale']['max_abs'] if a['scale'] else float('nan'):.3g}")
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
        r = a["rank_certified"]
        say(f"   (c) same start, rankkit fixed_rank_fit vs pymanopt CG at ranks {r} and {r - 1}:")
        row["same_start"] = [run_same_start(S, q, args.seed, args.peer_max_time, say)
                             for q in (r, r - 1) if q and q >= 1]
        rows[name] = row

    exact = None
    if args.exact_l:
        exact = run_exact(EXACT_L_QUICK if args.quick else EXACT_L, args.cap, args.ours_max_iter,
                          args.cache_dir, say)

    # ---- table and targets -----------------------------------------------------------------
    say("")
    say(f"{'set':7} {'Ω₂ cells':>9} | {'ε-bracket':>9} {'exact':>9} {'s':>6} | {'(b) rank':>8} {'s':>7} | "
        f"{'rank':>4} {'rankkit MSE':>11} {'s':>6} {'pymanopt MSE':>12} {'s':>7}")
    for name, row in rows.items():
        a, b = row["default"], row.get("soft_impute")
        eb, xb = f"[{a['eps_lower']}, {a['upper']}]", f"[{a['exact_lower']}, {a['exact_upper']}]"
        left = (f"{name:7} {row['omega2_nnz']:9,} | {eb:>9} {xb:>9} {a['seconds']:6.2f} | "
                + (f"{'-':>8} {'-':>7}" if b is None else f"{_fmt_rank(b['rank_certified']):>8} {b['seconds']:7.2f}"))
        for i, c in enumerate(row["same_start"] or [None]):
            lead = left if i == 0 else " " * len(left)
            if c is None:
                say(lead)
                continue
            o, p = c["rankkit"], c["pymanopt"]
            say(f"{lead} | {c['rank']:4d} {o['mse']:11.3g} {o['seconds']:6.1f} {p['mse']:12.3g} {p['seconds']:7.1f}")
    say("ε-bracket = [eps_lower, upper] on the ε-rank (App. C.3: MSE over Ω₂ ≤ ε); exact = bracket on the "
        "exact minimal rank; s = seconds from P_Ω(R); same-start fits: MSE over Ω₂ at the end of each "
        "solver's run and its seconds")

    targets = []
    for name, row in rows.items():
        a = row["default"]
        same = {c["rank"]: c for c in row["same_start"]}
        r = a["rank_certified"]
        if r in same:
            o, p = same[r]["rankkit"], same[r]["pymanopt"]
            ok = o["reached"] and (not p["reached"] or o["seconds"] <= p["seconds"])
            verb = {True: "reaches", False: "does not reach"}
            targets.append((f"{name}: from the same start at rank {r}, rankkit {verb[o['reached']]} ε "
                            f"({o['seconds']:.1f} s, MSE {o['mse']:.3g}), pymanopt {verb[p['reached']]} it "
                            f"({p['seconds']:.1f} s, MSE {p['mse']:.3g}); target: rankkit reaches it, no later "
                            f"than pymanopt when both do", ok))
        targets.append((f"{name}: upper − eps_lower ≤ 2 (got [{a['eps_lower']}, {a['upper']}])",
                        a["upper"] - a["eps_lower"] <= 2))
    for name, bound in (("movie", 10.0), ("tweets", 5.0), ("nyt", 5.0), ("amazon", 5.0)):
        if name in rows:
            s_ = rows[name]["default"]["seconds"]
            targets.append((f"{name}: estimate_min_rank in ≤ {bound:g} s (got {s_:.2f} s)", s_ <= bound))
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
