"""Time per generated token: unguided vs RAD-Q vs RAD-V guided decoding (paper 002 §4.6, Fig. 8).

Peer: Hugging Face ``generate`` (top-k sampling, KV cache) on the same base model, measured
in the same run; every row reports its time per token and its ratio to that peer and to
rankkit's own unguided loop. Paper 002 Table 1: per step RAD-Q processes 1 new token per
row (plus one product with the output embeddings), RAD-V k tokens per row, so RAD-Q's
overhead over unguided decoding stays flat while RAD-V's grows with k.

Usage::

    nice python benchmarks/bench_guided.py                    # CPU, small configs
    python benchmarks/bench_guided.py --preset gpt2 --device cuda   # GPT-2 small RM / large base

Writes ``benchmarks/results/bench_guided.json`` (+ ``.png``) unless ``--no-save``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from rankkit._io import atomic_json  # noqa: E402
from rankkit_ext.guided import guided_generate
from rankkit_ext.lm import tiny_gpt2
from rankkit_ext.models import RADQ, RADV

PRESETS = {
    # (base n_embd, n_layer, n_head), (reward n_embd, n_layer, n_head)
    "small": ((128, 4, 4), (64, 2, 2)),
    "gpt2": ((1280, 36, 20), (768, 12, 12)),  # GPT-2-large base, GPT-2-small reward (random init)
}


def _machine(device) -> str:
    if str(device).startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads (torch {torch.__version__})")


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, lazy init)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--ks", type=int, nargs="+", default=[20, 40, 100])
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 by default: on a shared machine more threads "
                         "spin against other processes and the timings become noise)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    (bd, bl, bh), (rd, rl, rh) = PRESETS[args.preset]
    dev = torch.device(args.device)
    base = tiny_gpt2(args.vocab, bd, bl, bh, n_positions=128, seed=0).to(dev)
    rms = {name: cls(tiny_gpt2(args.vocab, rd, rl, rh, n_positions=128, seed=1)).to(dev).eval()
           for name, cls in (("RAD-Q", RADQ), ("RAD-V", RADV))}
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, args.vocab - 1, (args.batch, args.prompt_len), generator=g).tolist()
    T = args.new_tokens

    def hf_generate(k):
        ids = torch.tensor(prompts, device=dev)
        with torch.no_grad():
            base.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=k,
                          max_new_tokens=T, min_new_tokens=T, pad_token_id=args.vocab - 1)
        return args.batch * T

    def own(rm, k):
        def run():
            out = guided_generate(base, rm, prompts, beta=10.0, top_k=k, max_new_tokens=T,
                                  batch_size=args.batch, eos_token_id=-1, generator=0)
            return out.n_tokens
        return run

    print(f"machine: {_machine(dev)}")
    print(f"sizes: preset={args.preset} base(d={bd}, L={bl}) reward(d={rd}, L={rl}) "
          f"|V|={args.vocab} batch={args.batch} prompt={args.prompt_len} new_tokens={T}")
    rows = []
    with torch.inference_mode():
        for k in args.ks:
            peer = _time(lambda k=k: hf_generate(k), args.repeats)
            unguided = _time(own(None, k), args.repeats)
            res = {"k": k, "hf_generate_s_per_tok": peer, "unguided_s_per_tok": unguided}
            for name, rm in rms.items():
                res[f"{name}_s_per_tok"] = _time(own(rm, k), args.repeats)
            rows.append(res)
            print(f"k={k:4d}  HF generate {peer * 1e3:7.3f} ms/tok | own unguided "
                  f"{unguided * 1e3:7.3f} ({unguided / peer:4.2f}x peer) | RAD-Q "
                  f"{res['RAD-Q_s_per_tok'] * 1e3:7.3f} ({res['RAD-Q_s_per_tok'] / unguided:4.2f}x "
                  f"unguided) | RAD-V {res['RAD-V_s_per_tok'] * 1e3:7.3f} "
                  f"({res['RAD-V_s_per_tok'] / unguided:4.2f}x unguided)")
    if not args.no_save:
        out = Path(__file__).resolve().parent / "results"
        out.mkdir(exist_ok=True)
        meta = {"machine": _machine(dev), "preset": args.preset, "batch": args.batch,
                "vocab": args.vocab, "new_tokens": T, "prompt_len": args.prompt_len, "rows": rows}
        name = f"bench_guided_{args.preset}_{dev.type}"
        atomic_json(out / f"{name}.json", meta, indent=2)
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ks = [r["k"] for r in rows]
        for key, lab in (("unguided_s_per_tok", "unguided"), ("RAD-Q_s_per_tok", "RAD-Q"),
                         ("RAD-V_s_per_tok", "RAD-V")):
            ax.plot(ks, [r[key] * 1e3 for r in rows], marker="o", label=lab)
        ax.set_xlabel("top-k candidates")
        ax.set_ylabel("ms per generated token")
        ax.set_title(f"batch {args.batch}, {dev.type}, {args.preset}", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=150)
        print(f"wrote {out / name}.json/.png")
    return rows


if __name__ == "__main__":
    main()
