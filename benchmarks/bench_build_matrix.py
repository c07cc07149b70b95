"""Benchmark: build_reward_matrix vs the dict reference (issue 2 scale target).

Default: 1,000,000 sequences × 64 tokens, vocabulary 50,257, Zipf(a)-distributed token ids
(seeded), one label. Prints the machine, the sizes, the build time and the peak resident
memory of the process that builds (numba allocations are invisible to tracemalloc, so the
build runs in a child process that reports ``ru_maxrss``), and the time per token of the
slow dict implementation (``rankkit.testing.matrix.reward_matrix_dict``) on a subset,
measured in the same run. Targets: < 60 s, < 8 GB, ≥ 50× faster per token than the dict.

    python benchmarks/bench_build_matrix.py                 # full size
    python benchmarks/bench_build_matrix.py --n 100000      # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time


def make_dataset(n: int, length: int, vocab: int, zipf_a: float, seed: int):
    import numpy as np

    from rankkit import RewardDataset, TokenSequences

    rng = np.random.default_rng(seed)
    # Zipf ranks start at 1; folding the (rare) ranks beyond the vocabulary back in keeps
    # the head of the distribution intact
    tokens = ((rng.zipf(zipf_a, size=n * length) - 1) % vocab).astype(np.int32)
    offsets = np.arange(n + 1, dtype=np.int64) * length
    y = rng.normal(size=n)
    return RewardDataset(TokenSequences(tokens, offsets), y, vocab_size=vocab)


def child(args) -> None:
    """Build once (after a tiny warm-up compile) and print one JSON line."""
    import resource

    from rankkit.trie import build_reward_matrix

    build_reward_matrix(make_dataset(50, 4, 10, args.zipf_a, 0))  # numba compile / cache load
    ds = make_dataset(args.n, args.length, args.vocab, args.zipf_a, args.seed)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    R = build_reward_matrix(ds)
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"seconds": dt, "peak_rss_gib": rss / 2**20, "rss_before_build_gib": rss_data / 2**20,
                      "rows": R.shape[0], "nnz": R.nnz, "tokens": int(ds.sequences.tokens.size)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="number of sequences")
    ap.add_argument("--length", type=int, default=64, help="tokens per sequence")
    ap.add_argument("--vocab", type=int, default=50_257)
    ap.add_argument("--zipf-a", type=float, default=1.1, help="Zipf exponent of the token ids")
    ap.add_argument("--dict-n", type=int, default=20_000, help="sequences for the dict reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"cpus={os.cpu_count()}, python {platform.python_version()}")
    print(f"sizes: n={args.n:,} sequences x {args.length} tokens, vocab={args.vocab:,}, "
          f"Zipf a={args.zipf_a}, seed={args.seed}")
    cmd = [sys.executable, __file__, "--child", "--n", str(args.n), "--length", str(args.length),
           "--vocab", str(args.vocab), "--zipf-a", str(args.zipf_a), "--seed", str(args.seed)]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    fast_per_tok = res["seconds"] / res["tokens"]
    print(f"build_reward_matrix: {res['seconds']:.2f} s, peak RSS {res['peak_rss_gib']:.2f} GiB "
          f"(data alone {res['rss_before_build_gib']:.2f} GiB), {res['rows']:,} rows, {res['nnz']:,} cells, "
          f"{fast_per_tok * 1e9:.1f} ns/token")

    from rankkit.testing.matrix import reward_matrix_dict
    from rankkit.trie import build_reward_matrix

    sub = make_dataset(args.dict_n, args.length, args.vocab, args.zipf_a, args.seed)
    build_reward_matrix(sub)  # warm
    t0 = time.perf_counter()
    reward_matrix_dict(sub)
    t_dict = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_reward_matrix(sub)
    t_fast_sub = time.perf_counter() - t0
    dict_per_tok = t_dict / sub.sequences.tokens.size
    print(f"dict reference on {args.dict_n:,} sequences: {t_dict:.2f} s, {dict_per_tok * 1e9:.0f} ns/token; "
          f"build_reward_matrix on the same subset: {t_fast_sub:.3f} s")
    print(f"ratio (dict / build, time per token, full build): {dict_per_tok / fast_per_tok:.0f}x; "
          f"same subset: {t_dict / t_fast_sub:.0f}x")
    print(f"targets: < 60 s {'OK' if res['seconds'] < 60 else 'MISSED'}, "
          f"< 8 GB {'OK' if res['peak_rss_gib'] * 2**30 < 8e9 else 'MISSED'}, "
          f">= 50x {'OK' if dict_per_tok / fast_per_tok >= 50 else 'MISSED'}")


if __name__ == "__main__":
    main()
