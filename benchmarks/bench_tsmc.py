"""Twisted SMC throughput: particles x tokens per second, KV-cache path vs recompute path.

Peer: the same sampler with ``HFCausalLM(use_cache=False)``, which re-runs the whole prefix
for every particle at every step (what a sampler without cache reordering must do),
measured in the same run on the same model, twist, seed and K. Kim et al. (2025) use
K = 100 particles in training and K ∈ {20, 50, 100, 1000} in the particle-efficiency
ablation (Fig. 2); this benchmark sweeps the same K.

Usage::

    nice python benchmarks/bench_tsmc.py                      # CPU, tiny GPT-2 (50,257 vocab)
    python benchmarks/bench_tsmc.py --device cuda --n-embd 768 --n-layer 12 --n-head 12

Writes ``benchmarks/results/bench_tsmc.json`` unless ``--no-save``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from rankkit._io import atomic_json  # noqa: E402
from rankkit_ext.lm import tiny_gpt2
from rankkit_ext.tsmc import HFCausalLM, LinearTwist, TablePotential, tsmc


def _machine(device) -> str:
    if str(device).startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads (torch {torch.__version__})")


def _run(lm, twist, K, T, prompt, device, seed=0) -> float:
    g = torch.Generator(device=device).manual_seed(seed)
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    r = tsmc(lm, twist, TablePotential({}), prompt, K, T, ess_threshold=0.5, generator=g,
             eos_token_id=None)  # no EOS: every particle runs the full horizon
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    assert int(r.lengths.sum()) == K * T
    return K * T / dt


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--particles", type=int, nargs="+", default=[20, 50, 100, 1000])
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=8)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    model = tiny_gpt2(n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head,
                      n_positions=args.prompt_len + args.tokens + 1).to(dev).eval()
    twist = LinearTwist(args.n_embd, model.config.vocab_size).to(dev)
    with torch.no_grad():  # a non-trivial twist so the proposal differs from p_LM
        twist.proj.weight.normal_(0, 0.1, generator=torch.Generator(device=dev).manual_seed(0))
    prompt = torch.arange(1, args.prompt_len + 1, device=dev)
    cached, recompute = HFCausalLM(model), HFCausalLM(model, use_cache=False)
    _run(cached, twist, 4, 2, prompt, dev)  # warm-up
    rows = []
    print(f"machine: {_machine(dev)}; model: GPT-2 n_embd={args.n_embd} n_layer={args.n_layer} "
          f"vocab={model.config.vocab_size}; prompt {args.prompt_len} tokens, "
          f"{args.tokens} new tokens")
    print(f"{'K':>6} {'kv-cache tok/s':>15} {'recompute tok/s':>16} {'ratio':>7}")
    for K in args.particles:
        a = _run(cached, twist, K, args.tokens, prompt, dev)
        b = _run(recompute, twist, K, args.tokens, prompt, dev)
        rows.append({"K": K, "kv_cache_particle_tokens_per_s": a,
                     "recompute_particle_tokens_per_s": b, "ratio": a / b})
        print(f"{K:>6} {a:>15.0f} {b:>16.0f} {a / b:>7.2f}")
    if not args.no_save:
        out = Path(__file__).resolve().parent / "results" / "bench_tsmc.json"
        atomic_json(out, {"machine": _machine(dev), "args": vars(args), "rows": rows}, indent=2)
    return rows


if __name__ == "__main__":
    main()
