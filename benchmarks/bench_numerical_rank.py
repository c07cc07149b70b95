"""Speed of rankkit.numerical_rank against np.linalg.matrix_rank (and torch's) in one run.

Cases: a vocabulary-wide learned reward matrix (N = 4096 sampled prefixes x |V| = 50,257,
float32, rank 768 like a GPT-2-small reward model, Fig. 2 / Fig. 9), which takes the QR path,
and square matrices, which take the plain SVD path. Each method runs on the same array; the
ranks must agree. Prints the machine, sizes, seconds and the ratio peer / rankkit.

    python benchmarks/bench_numerical_rank.py            # the sizes above (minutes on 2 cores)
    python benchmarks/bench_numerical_rank.py --quick    # a smoke run in seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from rankkit._backend import HAS_TORCH
from rankkit._io import atomic_json  # noqa: E402
from rankkit.rank import numerical_rank


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores", f"python {platform.python_version()}",
             f"numpy {np.__version__}"]
    if HAS_TORCH:
        import torch

        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    return "; ".join(parts)


def low_rank(m: int, n: int, r: int, dtype, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    U = g.standard_normal((m, r), dtype=np.float32)
    V = g.standard_normal((r, n), dtype=np.float32)
    return (U @ V).astype(dtype, copy=False)


def timed(fn, repeats: int) -> tuple[float, int]:
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, int(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--repeats", type=int, default=1, help="best of this many runs per method")
    p.add_argument("--no-torch", action="store_true", help="skip the torch rows")
    p.add_argument("--wide", default="4096x50257x768",
                   help="rows x cols x constructed rank of the wide float32 case (default %(default)s)")
    p.add_argument("--square", type=int, default=2048, help="side of the square cases")
    p.add_argument("--no-torch-peer", action="store_true", help="skip torch.linalg.matrix_rank")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args()

    if args.quick:
        cases = [(256, 3000, 48, np.float32), (300, 300, 300, np.float64)]
    else:
        m, n, r = (int(v) for v in args.wide.lower().split("x"))
        q = args.square
        cases = [(m, n, r, np.float32), (q, q, q, np.float64), (q, q, q // 4, np.float32)]
    use_torch = HAS_TORCH and not args.no_torch
    print("machine:", machine(), flush=True)
    rows = []
    for m, n, r, dtype in cases:
        A = low_rank(m, n, r, dtype, seed=0)
        path = "QR of the tall side + SVD" if max(m, n) >= 2 * min(m, n) else "SVD"
        print(f"\n{m} x {n} {np.dtype(dtype).name}, constructed rank {r}, rankkit path: {path}",
              flush=True)
        methods = [("np.linalg.matrix_rank (peer)", lambda A=A: np.linalg.matrix_rank(A)),
                   ("rankkit numpy", lambda A=A: numerical_rank(A, backend="numpy"))]
        if use_torch:
            import torch

            T = torch.from_numpy(A)
            if not args.no_torch_peer:
                methods.append(("torch.linalg.matrix_rank", lambda T=T: torch.linalg.matrix_rank(T)))
            methods.append(("rankkit torch-cpu", lambda T=T: numerical_rank(T, backend="torch")))
        results = {}
        for name, fn in methods:
            results[name] = timed(fn, args.repeats)
            print(f"  ... {name}: {results[name][0]:.2f} s", flush=True)
        peer = results["np.linalg.matrix_rank (peer)"][0]
        for name, (sec, rank) in results.items():
            ratio = peer / sec
            print(f"  {name:30s} {sec:9.2f} s  rank {rank:5d}  peer/this {ratio:5.2f}x")
            rows.append({"m": m, "n": n, "dtype": np.dtype(dtype).name, "constructed_rank": r,
                         "method": name, "seconds": sec, "rank": rank, "numpy_over_this": ratio})
        ranks = {rk for _, rk in results.values()}
        print("  ranks agree" if len(ranks) == 1 else f"  RANKS DIFFER: {results}")
        del A
    if args.json:
        atomic_json(args.json, {"machine": machine(), "rows": rows}, indent=2)


if __name__ == "__main__":
    main()
