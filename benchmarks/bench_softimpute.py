"""Per-iteration time and peak memory of rankkit.soft_impute against peers (issue 3).

Sizes (n × m, observed cells, ranks):
  S  2,000 × 1,000     200k   20
  M  20,000 × 5,000    1M     10 / 20 / 50
  L  70,000 × 10,000   10M    20 / 50 / 100
sampled uniformly or with power-law row/column popularity. Every configuration runs in
its own subprocess so its peak RSS (``ru_maxrss``) is its own; "extra" is the peak minus
the RSS after the data were built. Peers measured in the same run (benchmarks/peers.py):
a straightforward NumPy/SciPy softImpute-ALS (fancy-index residuals) and fancyimpute's
SoftImpute where its dense n×m matrix fits in the memory cap.

Target (issue 3): L, rank 20, numpy backend ≤ 0.35 s per iteration on a 2-core machine;
on an H100 (``--impls rankkit-torch-cuda,rankkit-cupy --sizes L,XL``) ≤ 5 ms per iteration
at L, rank 20 and ≤ 100 ms at XL 480,000 × 18,000 (100M observed), rank 100.

Usage::

    python benchmarks/bench_softimpute.py --sizes S,M          # quick
    nice python benchmarks/bench_softimpute.py --sizes L       # big, once
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
import scipy.sparse as sp

from rankkit._io import atomic_write  # noqa: E402

SIZES = {
    "S": (2_000, 1_000, 200_000, (20,)),
    "M": (20_000, 5_000, 1_000_000, (10, 20, 50)),
    "L": (70_000, 10_000, 10_000_000, (20, 50, 100)),
    # GPU only (issue 3: ≤ 100 ms per iteration at rank 100 on an H100); ~5 GB to generate.
    "XL": (480_000, 18_000, 100_000_000, (100,)),
}
LAM = 1e-4


def make_data(size: str, sampling: str, seed: int = 0, cache_dir: str | None = None) -> sp.csr_matrix:
    """nnz distinct cells of a rank-10 + noise matrix; power-law: P(row i) ∝ (i+1)^-0.8,
    likewise for columns (a few prefixes and tokens hold most observations). Cached as npz
    in ``cache_dir`` so the per-configuration subprocesses do not rebuild it."""
    if cache_dir is not None:
        path = os.path.join(cache_dir, f"softimpute_{size}_{sampling}_{seed}.npz")
        if os.path.exists(path):
            return sp.load_npz(path).tocsr()
        X = make_data(size, sampling, seed)
        atomic_write(path, "wb", lambda f: sp.save_npz(f, X, compressed=False))
        return X
    n, m, nnz, _ = SIZES[size]
    rng = np.random.default_rng(seed)
    if sampling == "uniform":
        pr = pc = None
    else:
        pr = (np.arange(1, n + 1) ** -0.8)
        pr /= pr.sum()
        pc = (np.arange(1, m + 1) ** -0.8)
        pc /= pc.sum()
    ids = np.empty(0, dtype=np.int64)
    while ids.size < nnz:
        k = int(1.3 * (nnz - ids.size)) + 1000
        r = rng.choice(n, k, p=pr) if pr is not None else rng.integers(0, n, k)
        c = rng.choice(m, k, p=pc) if pc is not None else rng.integers(0, m, k)
        ids = np.unique(np.concatenate([ids, r * m + c]))
    ids = rng.permutation(ids)[:nnz]
    rows, cols = ids // m, ids % m
    F, G = rng.standard_normal((n, 10)), rng.standard_normal((m, 10))
    vals = np.einsum("ij,ij->i", F[rows], G[cols]) / np.sqrt(10) + 0.1 * rng.standard_normal(nnz)
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, m))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(impl: str, size: str, sampling: str, rank: int, n_iter: int, cache_dir: str) -> dict:
    X = make_data(size, sampling, cache_dir=cache_dir)
    base = _rss_mb()
    if impl.startswith("rankkit"):
        from rankkit.softimpute import soft_impute

        # rankkit-numpy, rankkit-torch (CPU), rankkit-torch-cuda, rankkit-cupy (GPU 0)
        _, backend, *dev = impl.split("-")
        device = dev[0] if dev else (0 if backend == "cupy" else None)
        # Warm-up fit compiles the numba kernels (cached on disk) / initialises CUDA outside
        # the timing. Per-iteration stamps need no explicit GPU sync: every pass returns its
        # sse as a Python float, which waits for the device.
        small = X[:200].tocsr()
        soft_impute(small, min(2, rank), LAM, max_iter=1, backend=backend, device=device, progress=False)
        stamps = [(time.perf_counter(), time.process_time())]
        soft_impute(X, rank, LAM, max_iter=n_iter, thresh=-1.0, backend=backend, device=device, progress=False,
                    callback=lambda it, info: stamps.append((time.perf_counter(), time.process_time())) and False)
        st = np.diff(np.array(stamps), axis=0)[1:]  # drop iteration 1 (first touch of the pattern copies)
        times, cpu = st[:, 0].tolist(), st[:, 1].tolist()
    elif impl == "numpy-peer":
        from peers import numpy_als

        times, cpu = numpy_als(X, rank, LAM, n_iter)
        times, cpu = times[1:], cpu[1:]
    elif impl == "fancyimpute":
        from peers import fancyimpute_soft_impute

        times, cpu = fancyimpute_soft_impute(X, rank, LAM, n_iter)
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(impl=impl, size=size, sampling=sampling, rank=rank, nnz=X.nnz,
                s_per_iter=float(np.median(times)), cpu_s_per_iter=float(np.median(cpu)), peak_rss_mb=peak, extra_mb=peak - base)


def _fits(impl: str, size: str, rank: int, cap_gb: float) -> str | None:
    n, m, nnz, _ = SIZES[size]
    if impl == "numpy-peer" and 3 * nnz * rank * 8 > cap_gb * 2**30:
        return f"needs ~{3 * nnz * rank * 8 / 2**30:.1f} GB of nnz×k temporaries"
    if impl == "fancyimpute":
        try:
            import fancyimpute  # noqa: F401
        except ImportError:
            return "fancyimpute not installed"
        if 6 * n * m * 8 > cap_gb * 2**30:
            return f"needs ~{6 * n * m * 8 / 2**30:.1f} GB of dense n×m copies"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="S,M")
    ap.add_argument("--sampling", default="uniform,powerlaw")
    ap.add_argument("--impls", default="rankkit-numpy,rankkit-torch,numpy-peer,fancyimpute")
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--mem-cap-gb", type=float, default=4.0)
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="OpenBLAS/MKL threads in every run (default 1: the k-column QR/SVDs are tiny, and "
                         "a threaded BLAS spinning beside numba's threads costs far more than it saves)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--cache-dir", default=os.environ.get("TMPDIR", "/tmp"),
                    help="where the generated matrices are cached (npz)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        impl, size, sampling, rank = args.one.split(",")
        print(json.dumps(run_one(impl, size, sampling, int(rank), args.iters, args.cache_dir)))
        return

    import numba

    os.makedirs(args.cache_dir, exist_ok=True)
    make_data_all = [(sz, sa) for sz in args.sizes.split(",") for sa in args.sampling.split(",")]
    for sz, sa in make_data_all:
        make_data(sz, sa, cache_dir=args.cache_dir)

    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"numba threads {numba.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, "
          f"python {platform.python_version()}, numpy {np.__version__}, BLAS threads {args.blas_threads}")
    try:
        import torch

        if torch.cuda.is_available():
            print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    except ImportError:
        pass
    rows = []
    hdr = f"{'size':4} {'sampling':9} {'rank':>4} {'impl':15} {'s/iter':>9} {'cpu s/it':>9} {'peak MB':>8} {'extra MB':>8} {'ratio':>7}"
    print(hdr)
    for size in args.sizes.split(","):
        n, m, nnz, ranks = SIZES[size]
        print(f"-- {size}: {n:,} × {m:,}, {nnz:,} observed")
        for sampling in args.sampling.split(","):
            for rank in ranks:
                ours = None
                for impl in args.impls.split(","):
                    if impl == "rankkit-torch" and size in ("L", "XL"):
                        continue  # the torch CPU path is for parity, not speed; keeps L short
                    why = _fits(impl, size, rank, args.mem_cap_gb)
                    if why:
                        print(f"{size:4} {sampling:9} {rank:4} {impl:15} skipped: {why}")
                        continue
                    iters = args.iters if impl.startswith("rankkit") else max(3, args.iters // 2)
                    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.blas_threads),
                               MKL_NUM_THREADS=str(args.blas_threads))
                    out = subprocess.run([sys.executable, __file__, "--one", f"{impl},{size},{sampling},{rank}",
                                          "--iters", str(iters), "--cache-dir", args.cache_dir], capture_output=True, text=True, env=env,
                                         cwd=os.path.dirname(os.path.abspath(__file__)))
                    if out.returncode:
                        print(f"{size:4} {sampling:9} {rank:4} {impl:15} failed: {out.stderr.strip()[-300:]}")
                        continue
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    if impl == "rankkit-numpy":
                        ours = r["s_per_iter"]
                    r["ratio_vs_rankkit_numpy"] = r["s_per_iter"] / ours if ours else None
                    rows.append(r)
                    ratio = f"{r['ratio_vs_rankkit_numpy']:.1f}x" if ours else "-"
                    print(f"{size:4} {sampling:9} {rank:4} {impl:15} {r['s_per_iter']:9.4f} {r['cpu_s_per_iter']:9.4f} "
                          f"{r['peak_rss_mb']:8.0f} {r['extra_mb']:8.0f} {ratio:>7}", flush=True)
    print("ratio = peer s/iter ÷ rankkit-numpy s/iter (higher: rankkit faster); cpu s/it = process CPU "
          "time per iteration, all threads (robust to a loaded machine)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
