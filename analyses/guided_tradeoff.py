"""Sentiment control with RAD-V vs RAD-Q: trade-off curves and time per token (paper 002 §4.3–4.6).

Offline demonstration of Fig. 6 / Fig. 8 at CPU scale:

1. a tiny GPT-2 base LM (GPT-2 tokenizer, |V| = 50,257) trained on the VADER text sets
   (movie reviews, Amazon reviews, NYT editorials, tweets);
2. three reward models whose backbones start from that LM, trained on the VADER movie
   ratings mapped to [0, 1]: RAD-V (cumulative loss, eq. 12), RAD-Q on responses
   (eq. 12 + L_reg) and RAD-Q distilled from the RAD-V teacher (eq. 13 + L_reg);
3. guided decoding from negative-review prompts, steering toward positive sentiment, for
   a β sweep and k ∈ {20, 40}; positive rate (VADER scorer on prompt + continuation),
   perplexity of the continuation under the base LM, dist-1/2/3, time per token;
4. beyond the paper: plain RAD's bias w.r.t. its intended target p_LM · exp(β r), measured
   with the SMC/importance-sampling proposal of :func:`rankkit_ext.guided.guided_generate`.

Everything is cached under ``--workdir`` (checkpoints resume; finished sweep points are
kept in ``sweep.json``), so an interrupted run continues where it stopped. Outputs:
``paper_figures/guided_tradeoff.{png,json}`` and ``paper_figures/guided_time_per_token.png``.

Usage::

    nice python -m analyses.guided_tradeoff            # ~minutes on 2 CPU cores
    python -m analyses.guided_tradeoff --quick         # smoke run (tiny sizes)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from rankkit._io import atomic_json
from rankkit.sequences import RewardDataset, TokenSequences
from rankkit_ext import metrics
from rankkit_ext.guided import guided_generate
from rankkit_ext.lm import load_base_lm, tiny_gpt2, train_lm
from rankkit_ext.report import results_table, tradeoff_plot
from rankkit_ext.scorers import vader_scorer

ROOT = Path(__file__).resolve().parents[1]


# ---- assets ---------------------------------------------------------------------------
def _tokenizer():
    from rankkit import tokenizers

    return tokenizers.load("gpt2")


def _vader(spec: str, tok) -> RewardDataset:
    """One VADER set (rankkit.datasets, offline) with label sentiment = (rating + 4) / 8."""
    from rankkit.datasets import load

    return load(spec, tokenizer=tok, labels="sentiment")


# ---- models -------------------------------------------------------------------------
def _base_lm(tok, texts, work: Path, a) -> torch.nn.Module:
    folder = work / "base_lm"
    if (folder / "final" / "config.json").exists():
        return load_base_lm(folder)
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    seqs = TokenSequences.from_lists(enc)
    # n_positions=48: reviews are cut at 47 tokens, which bounds the (B, T, |V|) logits
    model = tiny_gpt2(len(tok), a.n_embd, a.n_layer, a.n_head, n_positions=48, seed=0)
    res = train_lm(model, seqs, epochs=a.lm_epochs, batch_size=32, lr=3e-3, seed=0,
                   checkpoint_dir=folder, progress=True)
    print(f"base LM: {res.steps} steps, loss {np.mean(res.losses[:20]):.2f} -> "
          f"{np.mean(res.losses[-20:]):.2f}")
    return load_base_lm(folder)


def _reward_models(base, ds: RewardDataset, work: Path, a) -> dict:
    from rankkit_ext.models import RADQ, RADV, load_reward_model, tokenizer_fingerprint
    from rankkit_ext.training import train

    fp = tokenizer_fingerprint(_tokenizer())
    specs = [("RAD-V", RADV, "cumulative", 0.0, None),
             ("RAD-Q (resp.)", RADQ, "cumulative", a.reg, None),
             ("RAD-Q (distill)", RADQ, "distill", a.reg, "RAD-V")]
    out = {}
    for name, cls, objective, reg, teacher in specs:
        folder = work / name.replace(" ", "_").replace("(", "").replace(")", "").replace(".", "")
        if (folder / "model").exists():
            out[name] = load_reward_model(folder / "model").eval()
            continue
        m = cls(copy.deepcopy(base).train(), label_names=("positive",), tokenizer_fingerprint=fp)
        train(m, ds, objective, teacher=out.get(teacher), reg_coef=reg, epochs=a.rm_epochs,
              batch_size=32, lr=a.rm_lr, seed=0, checkpoint_dir=folder / "ckpt", progress=True)
        m.save_pretrained(folder / "model")
        out[name] = m.eval()
    return out


# ---- sweep --------------------------------------------------------------------------
def _run_point(base, rm, tok, prompts, beta, k, a, scorer, seed):
    out = guided_generate(base, rm, prompts, beta=beta, top_k=k, n_samples=a.n_samples,
                          max_new_tokens=a.new_tokens, generator=seed, tokenizer=tok,
                          batch_size=a.batch, direction=+1)
    conts = out.texts
    ppl = metrics.conditional_perplexity(base, tok, prompts, conts, batch_size=64)
    dist = metrics.distinct_n(conts)
    return {"positive_rate": metrics.positive_rate(conts, scorer, prompts=prompts),
            "perplexity": ppl.mean, "ppl_dropped": ppl.n_dropped,
            "dist_1": dist[1], "dist_2": dist[2], "dist_3": dist[3],
            # r~ of the guiding model (none for unguided decoding)
            "mean_reward": float(out.final_reward.mean()) if rm is not None else None,
            "time_per_token_ms": 1e3 * out.time_per_token,
            "reward_time_share": out.seconds_reward / max(out.seconds, 1e-12),
            "example": prompts[0] + conts[0][0]}


def _bias_point(base, rm, tok, prompts, beta, k, a, seed):
    """Plain RAD's mean reward vs the SNIS estimate of E_sigma[r~] under p_LM exp(beta r~)."""
    kw = dict(beta=beta, top_k=k, n_samples=a.bias_samples, max_new_tokens=a.new_tokens,
              generator=seed, batch_size=a.bias_samples * 2, eos_token_id=-1, tokenizer=tok)
    plain = guided_generate(base, rm, prompts, **kw)
    isq = guided_generate(base, rm, prompts, mix=a.mix, weights=True, **kw)
    lw = isq.log_weights
    w = np.exp(lw - lw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    target = (w * isq.final_reward).sum(1)  # per prompt
    ess = 1.0 / (w ** 2).sum(1)
    return {"beta": beta, "k": k, "rad_mean_reward": float(plain.final_reward.mean()),
            "target_mean_reward_snis": float(target.mean()),
            "bias": float(plain.final_reward.mean(1).mean() - target.mean()),
            "ess_fraction": float((ess / a.bias_samples).mean()), "mix": a.mix}


def _plots(rows, bias, out: Path, ks):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ks), figsize=(4.2 * len(ks), 3.5), sharey=True)
    for ax, k in zip(np.atleast_1d(axes), ks, strict=True):
        sub = [r for r in rows if r["k"] == k]
        tradeoff_plot(sub, x="perplexity", y="positive_rate", ax=ax, title=f"top-k = {k}")
        ax.set_xlabel("perplexity (base LM) ↓")
        ax.set_ylabel("positive rate (VADER) ↑")
    fig.tight_layout()
    fig.savefig(out / "guided_tradeoff.png", dpi=150)
    plt.close(fig)

    methods = sorted({r["method"] for r in rows if r["method"] != "unguided"})
    fig, ax = plt.subplots(figsize=(4.5, 3.3))
    width = 0.8 / (len(methods) + 1)
    for i, m in enumerate(["unguided", *methods]):
        vals = [np.mean([r["time_per_token_ms"] for r in rows if r["method"] == m and r["k"] == k])
                for k in ks]
        ax.bar(np.arange(len(ks)) + i * width, vals, width, label=m)
    ax.set_xticks(np.arange(len(ks)) + width * len(methods) / 2, [f"k={k}" for k in ks])
    ax.set_ylabel("ms per generated token")
    ax.set_title("time per token (batch, CPU)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "guided_time_per_token.png", dpi=150)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache/rankkit/guided_tradeoff")
    ap.add_argument("--out", type=Path, default=ROOT / "paper_figures")
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes")
    ap.add_argument("--n-embd", dest="n_embd", type=int, default=64)
    ap.add_argument("--n-layer", dest="n_layer", type=int, default=2)
    ap.add_argument("--n-head", dest="n_head", type=int, default=2)
    ap.add_argument("--lm-epochs", dest="lm_epochs", type=int, default=1)
    ap.add_argument("--rm-epochs", dest="rm_epochs", type=int, default=3)
    ap.add_argument("--rm-lr", dest="rm_lr", type=float, default=1e-3)
    ap.add_argument("--reg", type=float, default=0.1, help="L_reg coefficient for RAD-Q")
    ap.add_argument("--betas", type=float, nargs="+", default=[2.0, 5.0, 10.0, 20.0, 50.0])
    ap.add_argument("--ks", type=int, nargs="+", default=[20, 40])
    ap.add_argument("--prompts", type=int, default=30)
    ap.add_argument("--n-samples", dest="n_samples", type=int, default=10)
    ap.add_argument("--new-tokens", dest="new_tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--bias-samples", dest="bias_samples", type=int, default=100)
    ap.add_argument("--bias-prompts", dest="bias_prompts", type=int, default=5)
    ap.add_argument("--mix", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    if a.quick:
        a.workdir = a.workdir.with_name(a.workdir.name + "_quick")
        a.lm_epochs, a.rm_epochs, a.prompts, a.n_samples = 1, 1, 4, 4
        a.new_tokens, a.betas, a.bias_samples, a.n_embd = 6, [5.0, 20.0], 32, 32
    torch.set_num_threads(a.threads)  # shared CPUs: one thread per process times cleanly
    a.workdir.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    tok = _tokenizer()
    movie = _vader("vader:movie", tok)
    movie_texts = movie.texts
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(movie))
    held, train_idx = perm[:500], perm[500:]
    if a.quick:
        train_idx = train_idx[:600]
    # base LM text: training movie reviews + tweets (CPU minutes; add the other sets with
    # more time)
    lm_texts = [movie_texts[i] for i in train_idx] + list(_vader("vader:tweets", tok).texts)[
        : (400 if a.quick else None)]
    base = _base_lm(tok, lm_texts, a.workdir, a).eval()

    ds = movie.select(train_idx)  # the reward models' training set: sentiment in [0, 1]
    rms = _reward_models(base, ds, a.workdir, a)

    # negative held-out reviews, first 5 tokens as prompts (steer toward positive)
    # rating < -1, i.e. sentiment (rating + 4) / 8 < 3/8 (exact in binary floating point)
    sentiment = movie.responses.reshape(len(movie), -1)[:, 0]
    neg = [i for i in held if sentiment[i] < 0.375]
    prompts = [tok.decode(movie.sequences[i][:5].tolist()) for i in neg[: a.prompts]]
    scorer = vader_scorer()

    cache = a.workdir / "sweep.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    from tqdm.auto import tqdm

    jobs = [("unguided", None, 0.0, k) for k in a.ks] + [
        (m, m, b, k) for m in rms for k in a.ks for b in a.betas]
    for method, rm_name, beta, k in tqdm(jobs, desc="sweep"):
        key = f"{method}|{beta}|{k}"
        if key in done:
            continue
        rm = rms[rm_name] if rm_name else None
        row = _run_point(base, rm, tok, prompts, beta, k, a, scorer, seed=1)
        row.update(method=method, beta=beta, k=k)
        done[key] = row
        atomic_json(cache, done, default=float)
    rows = list(done.values())
    # the unguided point (beta = 0) starts every method's curve, as in Fig. 6
    for m in rms:
        for k in a.ks:
            u = done[f"unguided|0.0|{k}"]
            if not any(r["method"] == m and r["k"] == k and r["beta"] == 0 for r in rows):
                rows.append({**u, "method": m, "time_per_token_ms": u["time_per_token_ms"]})

    bias = []
    bias_key = a.workdir / "bias.json"
    bias = json.loads(bias_key.read_text()) if bias_key.exists() else []
    if not bias:
        for b in a.betas:
            bias.append(_bias_point(base, rms["RAD-Q (distill)"], tok, prompts[:a.bias_prompts], b,
                                    a.ks[0], a, seed=2))
        atomic_json(bias_key, bias, default=float)

    _plots([r for r in rows], bias, a.out, a.ks)
    table = results_table([{k: v for k, v in r.items() if k != "example"} for r in rows])
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {a.threads} torch thread(s), "
                   f"torch {torch.__version__}",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "n_prompts": len(prompts), "base_lm": {"n_embd": a.n_embd, "n_layer": a.n_layer,
                                               "vocab": len(tok)},
        "scoring_lm": "the base LM itself (reference: GPT-2-XL when online)",
        "results": table.to_dict("records") if hasattr(table, "to_dict") else table,
        "bias_plain_rad": bias,
        "examples": {f"{r['method']}|beta={r['beta']}|k={r['k']}": r.get("example")
                     for r in rows if r["k"] == a.ks[0]},
        "wall_seconds": time.time() - t_start,
    }
    atomic_json(a.out / "guided_tradeoff.json", meta, default=float)
    print(table.to_string() if hasattr(table, "to_string") else table)
    print("bias of plain RAD (RAD-Q distill):")
    for b in bias:
        print(f"  beta={b['beta']:5.1f}  E_RAD[r]={b['rad_mean_reward']:.3f}  "
              f"E_target[r]~{b['target_mean_reward_snis']:.3f}  bias={b['bias']:+.3f}  "
              f"ESS/K={b['ess_fraction']:.2f}")
    print(f"wrote {a.out / 'guided_tradeoff.png'}, guided_time_per_token.png, guided_tradeoff.json")


if __name__ == "__main__":
    main()
