"""Time per decoding step of RAD-V vs RAD-Q scoring k candidates (paper 002 Fig. 8, Table 1).

A decoding loop of ``--steps`` tokens for a batch of ``--batch`` sequences: at each step
the reward model scores k candidates per row after the cached prefix, then the prefix
grows by one token (the incremental ``state`` of the scoring contract). RAD-V runs B·k
candidate tokens through the backbone per step, RAD-Q one token per row plus a (k, d)
gather, so the ratio RAD-V / RAD-Q should grow roughly linearly in k.

    python benchmarks/bench_reward_models.py                     # CPU, small config
    python benchmarks/bench_reward_models.py --device cuda --config gpt2-small
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

CONFIGS = {"small": dict(n_embd=128, n_layer=2, n_head=4),
           "gpt2-small": dict(n_embd=768, n_layer=12, n_head=12)}


def decode_time(model, prompt_len: int, steps: int, batch: int, k: int, device, seed=0) -> float:
    """Seconds per decoding step (all rows), scoring k candidates each step."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.vocab_size - 1, (batch, prompt_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    state = None
    with torch.no_grad():
        model.score_candidates(ids, mask, ids[:, :k % prompt_len + 1])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            cands = torch.randint(0, model.vocab_size, (batch, k), generator=g).to(device)
            scores, state = model.score_candidates(ids, mask, cands, state=state)
            nxt = cands.gather(1, scores.argmax(1, keepdim=True))
            ids = torch.cat([ids, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main(argv=None):
    from transformers import GPT2Config, GPT2LMHeadModel

    from rankkit_ext.models import RADQ, RADV

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--config", choices=sorted(CONFIGS), default="small")
    p.add_argument("--ks", default="1,5,20,40,100")
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50257, n_positions=a.prompt_len + a.steps + 2, **CONFIGS[a.config])
    backbone = GPT2LMHeadModel(cfg)
    models = {"RADV": RADV(backbone).to(device).eval(), "RADQ": RADQ(backbone).to(device).eval()}
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"torch {torch.__version__} threads={torch.get_num_threads()} | device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"config {a.config} {CONFIGS[a.config]}, |V|=50257, batch={a.batch}, "
          f"prompt={a.prompt_len}, steps={a.steps}")
    print(f"{'k':>4} {'RAD-V ms/step':>14} {'RAD-Q ms/step':>14} {'ratio V/Q':>10}")
    rows = []
    for k in [int(x) for x in a.ks.split(",")]:
        tv = decode_time(models["RADV"], a.prompt_len, a.steps, a.batch, k, device)
        tq = decode_time(models["RADQ"], a.prompt_len, a.steps, a.batch, k, device)
        rows.append({"k": k, "radv_s": tv, "radq_s": tq, "ratio": tv / tq})
        print(f"{k:>4} {1e3 * tv:>14.2f} {1e3 * tq:>14.2f} {tv / tq:>10.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": a.config, "device": str(device), "batch": a.batch,
                       "machine": platform.platform(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
