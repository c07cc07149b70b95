"""rankkit.distributed on one machine: 1 vs 2 processes, and Spark MLlib ALS as the peer (issue 15).

Soft-impute (sizes M and L of ``bench_softimpute.py``, uniform sampling): seconds per
iteration, bytes each rank sends per iteration (ring collectives, from the message sizes) and
the payload it hands to the collectives, peak resident memory per rank; 1 process uses both
cores (numba threads = cores), 2 processes one core each (gloo on localhost). The build of
P_Ω(R) at 1,000,000 sequences × 64 tokens (``bench_build_matrix.py``'s data), 1 vs 2
processes. The fixed-rank certificate solver (``rankkit.distributed.fixed_rank_fit``, ALS
and RLM at the M size): s/iter, the payload each rank hands to the collectives per
iteration, the ring-collective bytes of one ALS sweep / one RLM CG product
(:func:`rankkit.distributed.fixed_rank_bytes`). The peer, in the same run, on the same L data at the same rank: Spark MLlib
explicit ALS, ``local[2]`` — s/iter from two fits of different ``maxIter``, and the JVM's
peak memory. Spark scales λ by the counts (ALS-WR), so it optimises a different objective:
only time per iteration and memory are compared.

Every configuration runs in its own process(es), so peak RSS is its own.

Usage::

    python benchmarks/bench_distributed.py                       # M, L, build, Spark at L
    python benchmarks/bench_distributed.py --sizes M --no-build --no-spark   # quick
    python benchmarks/bench_distributed.py --sizes M --no-soft --no-build --no-spark   # fixed-rank only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

# bench_softimpute and peers sit beside this script: sys.path[0] when it runs as a script
from bench_softimpute import LAM, SIZES, make_data

HERE = os.path.dirname(os.path.abspath(__file__))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> None:
    """Reset this process's peak-RSS mark to its current RSS (Linux ``clear_refs`` 5), so that
    the peak measured next is the fit's own (with the resident data), not the data loading's."""
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # pragma: no cover - not Linux, or not permitted: the peak then includes loading
        pass


def _peak_mb() -> float:
    """Peak resident set of this process (``VmHWM``). Not ``ru_maxrss``: Linux keeps that
    across ``execve``, so a child started by a large parent would report the parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover


# ---- soft-impute ------------------------------------------------------------------------------

def _fit_rank(comm, size, rank, iters, cache_dir, plain=False):
    """On every rank: this rank's rows of the cached matrix, a warm-up, then timed iterations."""
    import rankkit.distributed as rd
    from rankkit.softimpute import soft_impute

    X = make_data(size, "uniform", cache_dir=cache_dir)
    S = rd.shard_rows(X, comm)
    local = S.local if plain else None
    del X
    small = X_small(S)
    soft_impute(small, 2, LAM, max_iter=1, progress=False)  # numba compile / cache load, outside the timing
    load_peak = _peak_mb()  # every rank reads the whole cached matrix, then keeps its rows
    _reset_peak()
    base = _rss_mb()
    stamps = [time.perf_counter()]

    def cb(it, info):
        stamps.append(time.perf_counter())
        return False

    if plain:  # the one-process function itself
        soft_impute(local, rank, LAM, max_iter=iters, thresh=-1.0, progress=False, callback=cb)
        d = {"bytes_per_iteration": 0, "payload_bytes_per_iteration": 0.0}
    else:
        res = rd.soft_impute(S, rank, LAM, comm=comm, max_iter=iters, thresh=-1.0, progress=False, gather=False,
                             callback=cb)
        d = res.meta["distributed"]
    st = np.diff(stamps)[1:]  # drop iteration 1 (first touch of the tiled pattern copies)
    return dict(s_per_iter=float(np.median(st)), fit_peak_mb=_peak_mb(), fit_extra_mb=_peak_mb() - base,
                load_peak_mb=load_peak, ring_bytes_per_iter=d["bytes_per_iteration"],
                payload_bytes_per_iter=d["payload_bytes_per_iteration"], rows=int(S.local.shape[0]),
                nnz=int(S.local.nnz))


def X_small(S):
    return S.local.to_scipy()[:200].tocsr()


def run_soft(size: str, procs: int, rank: int, iters: int, cache_dir: str, plain: bool = False) -> dict:
    if procs == 1:
        from rankkit.distributed import Comm

        per = [_fit_rank(Comm(), size, rank, iters, cache_dir, plain)]
    else:
        from rankkit.testing.distributed import spawn

        out = spawn(_fit_rank, procs, size, rank, iters, cache_dir, timeout_s=1800, collective_timeout_s=600)
        for o in out:
            if o.error:
                raise RuntimeError(f"rank {o.rank}: {o.error[1]}\n{o.error[2]}")
        per = [o.value for o in out]
    return dict(kind="soft-impute" if not plain else "soft-impute (one-process function)", size=size,
                procs=procs, rank=rank, s_per_iter=max(p["s_per_iter"] for p in per),
                fit_peak_mb_per_rank=[round(p["fit_peak_mb"]) for p in per],
                fit_extra_mb_per_rank=[round(p["fit_extra_mb"]) for p in per],
                load_peak_mb_per_rank=[round(p["load_peak_mb"]) for p in per],
                ring_bytes_per_iter=per[0]["ring_bytes_per_iter"],
                payload_bytes_per_iter=[p["payload_bytes_per_iter"] for p in per],
                rows_per_rank=[p["rows"] for p in per], nnz_per_rank=[p["nnz"] for p in per])


# ---- the fixed-rank certificate solver ---------------------------------------------------------

def _fixed_rank(comm, size, rank, iters, cache_dir, method, plain=False):
    """On every rank: this rank's rows, a warm-up fit of 2 iterations, then the timed fit from
    the random start (ρ = 1e-4, ε = 0 so that no run stops on the target)."""
    import rankkit.distributed as rd
    from rankkit.lowrank import fixed_rank_fit

    X = make_data(size, "uniform", cache_dir=cache_dir)
    S = rd.shard_rows(X, comm)
    del X
    kw = dict(method=method, rho=LAM, eps=0.0, init="random", progress=False, backend="numpy")
    fixed_rank_fit(X_small(S), 2, max_iter=2, **kw)  # numba compile / cache load, outside the timing
    _reset_peak()
    stamps = [time.perf_counter()]

    def cb(it, info):
        stamps.append(time.perf_counter())
        return False

    if plain:
        fixed_rank_fit(S.local, rank, max_iter=iters, callback=cb, **kw)
        d = {"payload_bytes_per_iteration": 0.0, "als_sweep": 0, "rlm_cg_product": 0}
    else:
        res = rd.fixed_rank_fit(S, rank, comm=comm, max_iter=iters, callback=cb, gather=False, **kw)
        d = res.meta["distributed"]
    st = np.diff(stamps)
    return dict(s_per_iter=float(np.median(st)), fit_peak_mb=_peak_mb(), n_iter=int(st.size),
                payload_bytes_per_iter=d["payload_bytes_per_iteration"], als_sweep_bytes=d["als_sweep"],
                rlm_cg_product_bytes=d["rlm_cg_product"])


def run_fixed(size: str, procs: int, rank: int, iters: int, cache_dir: str, method: str, plain: bool) -> dict:
    if procs == 1:
        from rankkit.distributed import Comm

        per = [_fixed_rank(Comm(), size, rank, iters, cache_dir, method, plain)]
    else:
        from rankkit.testing.distributed import spawn

        out = spawn(_fixed_rank, procs, size, rank, iters, cache_dir, method, timeout_s=1800,
                    collective_timeout_s=600)
        for o in out:
            if o.error:
                raise RuntimeError(f"rank {o.rank}: {o.error[1]}\n{o.error[2]}")
        per = [o.value for o in out]
    return dict(kind="fixed-rank" + (" (one-process function)" if plain else ""), method=method, size=size,
                procs=procs, rank=rank, s_per_iter=max(p["s_per_iter"] for p in per),
                fit_peak_mb_per_rank=[round(p["fit_peak_mb"]) for p in per],
                payload_bytes_per_iter=[p["payload_bytes_per_iter"] for p in per],
                als_sweep_bytes=per[0]["als_sweep_bytes"], rlm_cg_product_bytes=per[0]["rlm_cg_product_bytes"],
                n_iter=per[0]["n_iter"], load_average=os.getloadavg()[0])


# ---- the build ---------------------------------------------------------------------------------

def _build_rank(comm, n, length, vocab, zipf_a, seed):
    from bench_build_matrix import make_dataset

    import rankkit.distributed as rd

    rd.build_reward_matrix(make_dataset(50, 4, 10, zipf_a, 0), comm=comm)  # compile / cache load
    ds = make_dataset(n, length, vocab, zipf_a, seed)  # each rank reads the data, builds its slice
    _reset_peak()
    base = _rss_mb()
    comm.barrier()
    t0 = time.perf_counter()
    S = rd.build_reward_matrix(ds, comm=comm)
    dt = time.perf_counter() - t0
    return dict(seconds=dt, peak_rss_mb=_peak_mb(), extra_mb=_peak_mb() - base, rows=int(S.local.shape[0]),
                nnz=int(S.local.nnz), route_len=S.route_len, shape=S.shape, total_nnz=S.nnz,
                imbalance=S.meta["imbalance"], stages=S.meta.get("seconds"))


def run_build(procs: int, n: int, length: int, vocab: int, zipf_a: float, seed: int) -> dict:
    if procs == 1:
        from bench_build_matrix import make_dataset

        from rankkit.trie import build_reward_matrix

        build_reward_matrix(make_dataset(50, 4, 10, zipf_a, 0))
        ds = make_dataset(n, length, vocab, zipf_a, seed)
        _reset_peak()
        base = _rss_mb()
        t0 = time.perf_counter()
        R = build_reward_matrix(ds)
        per = [dict(seconds=time.perf_counter() - t0, peak_rss_mb=_peak_mb(), extra_mb=_peak_mb() - base,
                    rows=R.shape[0], nnz=R.nnz, route_len=0, shape=R.shape, total_nnz=R.nnz, imbalance=1.0)]
    else:
        from rankkit.testing.distributed import spawn

        out = spawn(_build_rank, procs, n, length, vocab, zipf_a, seed, timeout_s=1800, collective_timeout_s=900)
        for o in out:
            if o.error:
                raise RuntimeError(f"rank {o.rank}: {o.error[1]}\n{o.error[2]}")
        per = [o.value for o in out]
    return dict(kind="build", procs=procs, n=n, length=length, seconds=max(p["seconds"] for p in per),
                peak_rss_mb_per_rank=[round(p["peak_rss_mb"]) for p in per],
                extra_mb_per_rank=[round(p["extra_mb"]) for p in per], rows_per_rank=[p["rows"] for p in per],
                shape=list(per[0]["shape"]), nnz=per[0]["total_nnz"], route_len=per[0]["route_len"],
                imbalance=per[0]["imbalance"], stages_per_rank=[p.get("stages") for p in per])


def run_spark(size: str, rank: int, cache_dir: str, iters: tuple[int, int]) -> dict:
    from peers import spark_als

    X = make_data(size, "uniform", cache_dir=cache_dir)
    r = spark_als(X, rank, LAM, iters, parquet=os.path.join(cache_dir, f"softimpute_{size}_uniform_0.parquet"))
    return dict(kind="spark-als", size=size, procs=2, rank=rank, **r)


# ---- driver ------------------------------------------------------------------------------------

def _child(job: list[str]) -> dict:
    env = dict(os.environ)
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], capture_output=True, text=True,
                         env=env, cwd=HERE)
    if out.returncode:
        raise RuntimeError(out.stderr.strip()[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="M,L")
    ap.add_argument("--ranks", default="20", help="soft-impute ranks (comma-separated)")
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-soft", action="store_true", help="skip the soft-impute rows")
    ap.add_argument("--no-fixed", action="store_true", help="skip the fixed-rank solver rows")
    ap.add_argument("--fixed-size", default="M")
    ap.add_argument("--fixed-methods", default="als,rlm")
    ap.add_argument("--fixed-iters", type=int, default=5)
    ap.add_argument("--build-n", type=int, default=1_000_000)
    ap.add_argument("--build-length", type=int, default=64)
    ap.add_argument("--no-spark", action="store_true")
    ap.add_argument("--spark-size", default="L")
    ap.add_argument("--spark-iters", default="2,4")
    ap.add_argument("--json", default=None)
    ap.add_argument("--cache-dir", default=os.environ.get("TMPDIR", "/tmp"))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        job = json.loads(args.one)
        kind = job[0]
        if kind in ("soft", "plain"):
            res = run_soft(job[1], int(job[2]), int(job[3]), int(job[4]), job[5], plain=kind == "plain")
        elif kind in ("fixed", "fixed-plain"):
            res = run_fixed(job[1], int(job[2]), int(job[3]), int(job[4]), job[5], job[6], kind == "fixed-plain")
        elif kind == "build":
            res = run_build(int(job[1]), int(job[2]), int(job[3]), 50_257, 1.1, 0)
        else:
            res = run_spark(job[1], int(job[2]), job[3], tuple(int(i) for i in job[4].split(",")))
        print(json.dumps(res))
        return

    import torch

    sizes = [s for s in args.sizes.split(",") if s]
    for s in sizes + ([] if args.no_spark else [args.spark_size]):
        make_data(s, "uniform", cache_dir=args.cache_dir)
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}, python {platform.python_version()}, numpy {np.__version__}, "
          f"torch {torch.__version__} (gloo)", flush=True)
    rows = []
    procs = [int(p) for p in args.procs.split(",")]
    print(f"{'what':12} {'size':4} {'rank':>4} {'procs':>5} {'s/iter':>8} {'ring MB/it':>10} {'peak MB/rank':>14}"
          "   (soft-impute: peak RSS during the fit, data included)")
    for size in [] if args.no_soft else sizes:
        n, m, nnz, _ = SIZES[size]
        print(f"-- {size}: {n:,} × {m:,}, {nnz:,} observed", flush=True)
        for rank in (int(r) for r in args.ranks.split(",")):
            for kind, p in [("plain", 1)] + [("soft", p) for p in procs]:
                os.environ["NUMBA_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // p))
                r = _child([kind, size, p, rank, args.iters, args.cache_dir])
                rows.append(r)
                name = "soft_impute" if kind == "plain" else "distributed"
                print(f"{name:12} {size:4} {rank:4} {p:5} {r['s_per_iter']:8.3f} "
                      f"{r['ring_bytes_per_iter'] / 2**20:10.2f} {str(r['fit_peak_mb_per_rank']):>14}", flush=True)
    if not args.no_fixed:
        size = args.fixed_size
        n, m, nnz, _ = SIZES[size]
        make_data(size, "uniform", cache_dir=args.cache_dir)
        rank = int(args.ranks.split(",")[0])
        print(f"-- fixed-rank certificate solver, {size}: {n:,} × {m:,}, {nnz:,} observed, rank {rank}, random start",
              flush=True)
        print(f"{'what':22} {'procs':>5} {'s/iter':>8} {'payload MB/it':>13} {'ring MB/sweep':>13} "
              f"{'ring MB/CG':>10} {'peak MB/rank':>14} {'load':>5}")
        for method in args.fixed_methods.split(","):
            for kind, p in [("fixed-plain", 1)] + [("fixed", p) for p in procs]:
                os.environ["NUMBA_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // p))
                r = _child([kind, size, p, rank, args.fixed_iters, args.cache_dir, method])
                rows.append(r)
                name = ("fixed_rank_fit " if kind == "fixed-plain" else "distributed ") + method
                print(f"{name:22} {p:5} {r['s_per_iter']:8.3f} {max(r['payload_bytes_per_iter']) / 2**20:13.2f} "
                      f"{r['als_sweep_bytes'] / 2**20:13.2f} {r['rlm_cg_product_bytes'] / 2**20:10.3f} "
                      f"{str(r['fit_peak_mb_per_rank']):>14} {r['load_average']:5.1f}", flush=True)
    if not args.no_spark:
        os.environ.pop("NUMBA_NUM_THREADS", None)
        rank = int(args.ranks.split(",")[0])
        r = _child(["spark", args.spark_size, rank, args.cache_dir, args.spark_iters])
        rows.append(r)
        print(f"{'spark-als':12} {args.spark_size:4} {rank:4} {'l[2]':>5} {r['s_per_iter']:8.3f} {'-':>10} "
              f"{round(r['peak_jvm_mb']):>14}   (fits {r['fit_seconds']})", flush=True)
    if not args.no_build:
        print(f"-- build: {args.build_n:,} sequences × {args.build_length} tokens, vocab 50,257, Zipf 1.1", flush=True)
        for p in procs:
            os.environ["NUMBA_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // p))
            r = _child(["build", p, args.build_n, args.build_length])
            rows.append(r)
            print(f"{'build':12} {'':4} {'':4} {p:5} {r['seconds']:8.2f}s {'':>10} "
                  f"{str(r['peak_rss_mb_per_rank']):>14}   rows/rank {r['rows_per_rank']}, p={r['route_len']}, "
                  f"imbalance {r['imbalance']:.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
