"""Sentiment control with RAD-V vs RAD-Q: trade-off with statistics and time per token (paper 002 §4.3–4.6).

Offline demonstration of Fig. 6 / Fig. 8 at CPU scale:

1. the package's base LM, :func:`rankkit_ext.lm.vader_base_lm` (a small GPT-2, GPT-2
   tokenizer, |V| = 50,257, trained once on the four VADER text sets; cached);
2. reward models whose backbones start from that LM, trained on the VADER movie ratings
   mapped to [0, 1]: RAD-V (cumulative loss, eq. 12) and RAD-Q distilled from the RAD-V
   teacher (eq. 13 + L_reg); RAD-Q on responses (eq. 12 + L_reg) with ``--methods``;
3. guided decoding from negative movie-review openings the base LM and the reward models
   never saw (the base LM's held-out texts), steering toward positive sentiment, for a β
   sweep, several decoding seeds; positive rate (VADER scorer on prompt + continuation),
   perplexity of the continuation under the base LM, dist-1/2/3, time per token, each as a
   mean ± standard error over prompts (prompt × seed × sample clustered by prompt), and
   the guided − unguided difference paired by prompt;
4. beyond the paper: plain RAD's bias w.r.t. its intended target p_LM · exp(β r), measured
   with the SMC/importance-sampling proposal of :func:`rankkit_ext.guided.guided_generate`.

Everything is cached under ``--workdir`` (checkpoints resume; finished sweep points are
kept in ``sweep.json``), so an interrupted run continues where it stopped. Outputs:
``paper_figures/guided_tradeoff.{png,json}`` and ``paper_figures/guided_time_per_token.png``.

Usage::

    nice python -m analyses.guided_tradeoff            # tens of minutes on 2 busy CPU cores
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
from rankkit.sequences import RewardDataset
from rankkit_ext import metrics
from rankkit_ext.guided import guided_generate
from rankkit_ext.lm import vader_base_lm, vader_lm_held_out
from rankkit_ext.scorers import vader_scorer

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("RAD-V", "RAD-Q (distill)", "RAD-Q (resp.)")


# ---- assets ---------------------------------------------------------------------------
def _tokenizer():
    from rankkit import tokenizers

    return tokenizers.load("gpt2")


def _vader(spec: str, tok) -> RewardDataset:
    """One VADER set (rankkit.datasets, offline) with label sentiment = (rating + 4) / 8."""
    from rankkit.datasets import load

    return load(spec, tokenizer=tok, labels="sentiment")


def _sizes(model, backbone=None) -> dict:
    """Parameters of ``model`` (heads included), d and layers of its (back)bone."""
    cfg = (backbone if backbone is not None else model).config
    return {"parameters": int(sum(p.numel() for p in model.parameters())),
            "d": int(cfg.n_embd), "layers": int(cfg.n_layer), "vocab": int(cfg.vocab_size)}


# ---- models -------------------------------------------------------------------------
def _reward_models(base, ds: RewardDataset, work: Path, a) -> dict:
    from rankkit_ext.models import RADQ, RADV, load_reward_model, tokenizer_fingerprint
    from rankkit_ext.training import train

    fp = tokenizer_fingerprint(_tokenizer())
    specs = {"RAD-V": (RADV, "cumulative", 0.0, None),
             "RAD-Q (resp.)": (RADQ, "cumulative", a.reg, None),
             "RAD-Q (distill)": (RADQ, "distill", a.reg, "RAD-V")}
    need = list(a.methods)
    if "RAD-Q (distill)" in need and "RAD-V" not in need:
        need.insert(0, "RAD-V")  # the teacher
    out = {}
    for name in [m for m in METHODS if m in need]:
        cls, objective, reg, teacher = specs[name]
        folder = work / name.replace(" ", "_").replace("(", "").replace(")", "").replace(".", "")
        if (folder / "model").exists():
            out[name] = load_reward_model(folder / "model").eval()
            continue
        m = cls(copy.deepcopy(base).train(), label_names=("positive",), tokenizer_fingerprint=fp)
        train(m, ds, objective, teacher=out.get(teacher), reg_coef=reg, epochs=a.rm_epochs,
              batch_size=32, lr=a.rm_lr, seed=0, checkpoint_dir=folder / "ckpt", progress=True)
        m.save_pretrained(folder / "model")
        out[name] = m.eval()
    return {k: v for k, v in out.items() if k in a.methods}


# ---- sweep --------------------------------------------------------------------------
def _run_point(base, rm, tok, prompts, beta, k, a, scorer, seed):
    """One (method, beta, k, seed) cell: per-prompt values, kept for the statistics."""
    out = guided_generate(base, rm, prompts, beta=beta, top_k=k, n_samples=a.n_samples,
                          max_new_tokens=a.new_tokens, generator=seed, tokenizer=tok,
                          batch_size=a.batch, direction=+1)
    conts = out.texts
    flat = [p + c for p, row in zip(prompts, conts, strict=True) for c in row]
    pos = (np.asarray(scorer(flat)) > 0.5).reshape(len(prompts), a.n_samples).mean(1)
    ppl = metrics.conditional_perplexity(base, tok, prompts, conts, batch_size=64)
    per_ppl = np.array([np.nanmean(np.where(x < 1e5, x, np.nan)) if (x < 1e5).any() else np.nan
                        for x in ppl.per_sample])
    dist = metrics.distinct_n(conts)
    return {"positive_per_prompt": pos.tolist(), "perplexity_per_prompt": per_ppl.tolist(),
            "ppl_dropped": ppl.n_dropped, "dist_1": dist[1], "dist_2": dist[2],
            "dist_3": dist[3],
            "mean_reward": float(out.final_reward.mean()) if rm is not None else None,
            "time_per_token_ms": 1e3 * out.time_per_token,
            "reward_time_share": out.seconds_reward / max(out.seconds, 1e-12),
            "example": prompts[0] + conts[0][0]}


def _stats(cells: list[dict], key: str) -> dict:
    """Mean ± SE of a per-prompt quantity over seeds: clustered by prompt (SE of the P
    per-prompt means over seeds × samples) and over seeds (SE of the S per-seed means)."""
    x = np.array([c[key] for c in cells], dtype=np.float64)  # (S, P)
    per_prompt = np.nanmean(x, 0)
    per_seed = np.nanmean(x, 1)
    P, S = np.isfinite(per_prompt).sum(), x.shape[0]
    return {"mean": float(np.nanmean(per_prompt)),
            "se_prompt": float(np.nanstd(per_prompt, ddof=1) / np.sqrt(P)) if P > 1 else None,
            "se_seed": float(np.std(per_seed, ddof=1) / np.sqrt(S)) if S > 1 else None,
            "per_seed": per_seed.tolist()}


def _paired(cells: list[dict], base_cells: list[dict], key: str) -> dict:
    """Guided − unguided, paired by prompt (each prompt's mean over seeds × samples)."""
    g = np.nanmean([c[key] for c in cells], 0)
    u = np.nanmean([c[key] for c in base_cells], 0)
    d = g - u
    d = d[np.isfinite(d)]
    se = float(np.std(d, ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
    mean = float(d.mean())
    return {"diff": mean, "se": se, "z": mean / se if se > 0 else float("nan"),
            "n_prompts": int(d.size)}


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


def _plots(rows, out: Path, ks, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    betas = sorted({r["beta"] for r in rows if r["method"] != "unguided"})
    norm = LogNorm(vmin=min(betas), vmax=max(betas))
    cmap = plt.get_cmap("viridis")
    markers = {"RAD-V": "o", "RAD-Q (distill)": "s", "RAD-Q (resp.)": "^"}
    fig, axes = plt.subplots(1, len(ks), figsize=(5.6 * len(ks), 4.4), sharey=True,
                             squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        u = next(r for r in rows if r["method"] == "unguided" and r["k"] == k)
        for m in [m for m in METHODS if any(r["method"] == m for r in rows)]:
            g = sorted([r for r in rows if r["method"] == m and r["k"] == k],
                       key=lambda r: r["beta"])
            xs = [u["perplexity"]["mean"]] + [r["perplexity"]["mean"] for r in g]
            ys = [u["positive_rate"]["mean"]] + [r["positive_rate"]["mean"] for r in g]
            ax.plot(xs, ys, "-", color="0.6", lw=1, zorder=1)
            for r in g:
                ax.errorbar(r["perplexity"]["mean"], r["positive_rate"]["mean"],
                            xerr=r["perplexity"]["se_prompt"], yerr=r["positive_rate"]["se_prompt"],
                            fmt="none", ecolor=cmap(norm(r["beta"])), elinewidth=1, zorder=2)
            ax.scatter([r["perplexity"]["mean"] for r in g],
                       [r["positive_rate"]["mean"] for r in g], c=[r["beta"] for r in g],
                       cmap=cmap, norm=norm, marker=markers.get(m, "o"), s=45,
                       edgecolors="k", linewidths=0.5, zorder=3, label=m)
        ax.errorbar(u["perplexity"]["mean"], u["positive_rate"]["mean"],
                    xerr=u["perplexity"]["se_prompt"], yerr=u["positive_rate"]["se_prompt"],
                    fmt="*", color="k", ms=11, zorder=4, label="unguided (β = 0)")
        ax.set_xlabel("perplexity of the continuation (base LM) ↓")
        ax.set_title(f"top-k = {k}", fontsize=9)
        ax.grid(alpha=0.3)
        leg = ax.legend(fontsize=7, loc="best")
        for h in leg.legend_handles:  # method markers in grey: colour means β
            if hasattr(h, "set_facecolor") and h.get_label() != "unguided (β = 0)":
                h.set_facecolor("0.8")
    axes[0][0].set_ylabel("positive rate (VADER) ↑, mean ± SE over prompts")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    cb = fig.colorbar(sm, ax=list(axes[0]), label="β (guidance strength)")
    cb.set_ticks(betas, labels=[f"{b:g}" for b in betas])
    cb.minorticks_off()
    fig.suptitle(title, fontsize=8)
    fig.savefig(out / "guided_tradeoff.png", dpi=150, bbox_inches="tight")
    plt.close(fig)

    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
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
    ap.add_argument("--workdir", type=Path, default=Path(
        os.environ.get("RANKKIT_CACHE") or Path.home() / ".cache" / "rankkit") / "guided_tradeoff")
    ap.add_argument("--out", type=Path, default=ROOT / "paper_figures")
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes")
    ap.add_argument("--methods", nargs="+", default=["RAD-V", "RAD-Q (distill)"],
                    choices=METHODS)
    ap.add_argument("--rm-epochs", dest="rm_epochs", type=int, default=2)
    ap.add_argument("--rm-lr", dest="rm_lr", type=float, default=1e-3)
    ap.add_argument("--reg", type=float, default=0.1, help="L_reg coefficient for RAD-Q")
    ap.add_argument("--betas", type=float, nargs="+", default=[5.0, 20.0, 50.0])
    ap.add_argument("--ks", type=int, nargs="+", default=[20])
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                    help="decoding seeds (the models are trained once, seed 0)")
    ap.add_argument("--n-samples", dest="n_samples", type=int, default=4)
    ap.add_argument("--new-tokens", dest="new_tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--bias-samples", dest="bias_samples", type=int, default=100)
    ap.add_argument("--bias-prompts", dest="bias_prompts", type=int, default=5,
                    help="prompts of the plain-RAD bias study (0 skips it)")
    ap.add_argument("--mix", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    if a.quick:
        a.workdir = a.workdir.with_name(a.workdir.name + "_quick")
        a.rm_epochs, a.prompts, a.n_samples, a.seeds = 1, 4, 4, [1, 2]
        a.new_tokens, a.betas, a.bias_samples, a.bias_prompts = 6, [5.0, 20.0], 32, 2
    torch.set_num_threads(a.threads)  # shared CPUs: one thread per process times cleanly
    a.workdir.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    tok = _tokenizer()
    lm_size = "tiny" if a.quick else "small"
    base, lm_report = vader_base_lm(size=lm_size, return_report=True)
    base.eval()
    movie = _vader("vader:movie", tok)
    # prompts: movie reviews the base LM held out (split of the small model, which the tiny
    # one never trained on either); the reward models train on the other reviews
    held = vader_lm_held_out(size="small")["vader:movie"]
    is_held = np.zeros(len(movie), bool)
    is_held[held] = True
    train_idx = np.flatnonzero(~is_held)
    if a.quick:
        train_idx = train_idx[:600]
    ds = movie.select(train_idx)  # the reward models' training set: sentiment in [0, 1]
    rms = _reward_models(base, ds, a.workdir / lm_report["settings"]["size"], a)

    # negative held-out reviews, first 5 tokens as prompts (steer toward positive)
    # rating < -1, i.e. sentiment (rating + 4) / 8 < 3/8 (exact in binary floating point)
    sentiment = movie.responses.reshape(len(movie), -1)[:, 0]
    neg = [i for i in held if sentiment[i] < 0.375]
    if len(neg) < a.prompts:
        raise SystemExit(f"--prompts {a.prompts}: only {len(neg)} negative held-out reviews")
    prompts = [tok.decode(movie.sequences[i][:5].tolist()) for i in neg[: a.prompts]]
    scorer = vader_scorer()

    cache = a.workdir / lm_report["settings"]["size"] / "sweep.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    from tqdm.auto import tqdm

    jobs = [("unguided", 0.0, k) for k in a.ks] + [
        (m, b, k) for m in rms for k in a.ks for b in a.betas]
    cells = [(m, b, k, s) for m, b, k in jobs for s in a.seeds]
    setting = f"P{a.prompts}|n{a.n_samples}|T{a.new_tokens}"
    for method, beta, k, seed in tqdm(cells, desc="sweep"):
        key = f"{method}|{beta}|{k}|{seed}|{setting}"
        if key in done:
            continue
        rm = rms[method] if method != "unguided" else None
        done[key] = _run_point(base, rm, tok, prompts, beta, k, a, scorer, seed=seed)
        atomic_json(cache, done, default=float)

    rows, effects = [], []
    for method, beta, k in jobs:
        cs = [done[f"{method}|{beta}|{k}|{s}|{setting}"] for s in a.seeds]
        row = {"method": method, "beta": beta, "k": k,
               "positive_rate": _stats(cs, "positive_per_prompt"),
               "perplexity": _stats(cs, "perplexity_per_prompt"),
               **{f: float(np.mean([c[f] for c in cs])) for f in
                  ("dist_1", "dist_2", "dist_3", "time_per_token_ms", "reward_time_share")},
               "mean_reward": (float(np.mean([c["mean_reward"] for c in cs]))
                               if method != "unguided" else None),
               "example": cs[0]["example"]}
        if method != "unguided":
            ucs = [done[f"unguided|0.0|{k}|{s}|{setting}"] for s in a.seeds]
            row["vs_unguided_positive_rate"] = _paired(cs, ucs, "positive_per_prompt")
            row["vs_unguided_perplexity"] = _paired(cs, ucs, "perplexity_per_prompt")
            effects.append(row)
        rows.append(row)

    bias = []
    bias_key = a.workdir / lm_report["settings"]["size"] / "bias.json"
    bias = json.loads(bias_key.read_text()) if bias_key.exists() else []
    if not bias and a.bias_prompts and "RAD-Q (distill)" in rms:
        for b in a.betas:
            bias.append(_bias_point(base, rms["RAD-Q (distill)"], tok, prompts[:a.bias_prompts],
                                    b, a.ks[0], a, seed=2))
        atomic_json(bias_key, bias, default=float)

    sizes = {"base": _sizes(base), **{m: _sizes(r, r.backbone) for m, r in rms.items()}}
    sb = sizes["base"]
    title = (f"base LM: GPT-2 {sb['parameters'] / 1e6:.1f} M parameters, d = {sb['d']}, "
             f"{sb['layers']} layers, |V| = {sb['vocab']:,}, held-out ppl "
             f"{lm_report['held_out']['perplexity']:.0f}; reward models: the same backbone + "
             f"heads (RAD-V, RAD-Q d = {sb['d']})\n{len(prompts)} negative prompts × "
             f"{a.n_samples} samples × {len(a.seeds)} seeds, {a.new_tokens} new tokens; "
             f"error bars: SE over prompts")
    _plots(rows, a.out, a.ks, title)
    best = max(effects, key=lambda r: r["vs_unguided_positive_rate"]["z"])
    bz = best["vs_unguided_positive_rate"]
    measurable = bool(bz["z"] > 3)
    u0 = next(r for r in rows if r["method"] == "unguided" and r["k"] == a.ks[0])
    top = {m: max((r for r in effects if r["method"] == m and r["k"] == a.ks[0]),
                  key=lambda r: r["beta"]) for m in rms}
    fluency = "; ".join(
        f"{m} at β = {r['beta']:g}: {r['perplexity']['mean']:.0f} "
        f"(Δ {r['vs_unguided_perplexity']['diff']:+.0f} ± {r['vs_unguided_perplexity']['se']:.0f})"
        for m, r in top.items())
    claim = (f"Guidance toward positive sentiment {'has a' if measurable else 'has no'} "
             f"measurable effect (z > 3): unguided positive rate {u0['positive_rate']['mean']:.3f} ± "
             f"{u0['positive_rate']['se_prompt']:.3f}; best {best['method']} at β = "
             f"{best['beta']:g} (k = {best['k']}) {best['positive_rate']['mean']:.3f} ± "
             f"{best['positive_rate']['se_prompt']:.3f}, paired difference {bz['diff']:+.3f} ± "
             f"{bz['se']:.3f} (z = {bz['z']:.1f}, {bz['n_prompts']} prompts). Perplexity of "
             f"the continuations, unguided {u0['perplexity']['mean']:.0f}; {fluency} (the "
             f"paper's trade-off, Fig. 6, is a rise with β).")
    meta = {
        "claim": claim,
        "guidance_measurable": measurable,
        "setup": {
            "paper": "paper 002 §4.3 (sentiment control), Fig. 6 / Fig. 8, at CPU scale",
            "base_lm": {"function": f"rankkit_ext.lm.vader_base_lm(size={lm_size!r})",
                        "held_out_perplexity": lm_report["held_out"]["perplexity"],
                        "baselines": lm_report["baselines"], **sizes["base"]},
            "reward_models": {m: {**sizes[m], "trained_on": f"{len(ds)} VADER movie reviews "
                                  "(not the prompts' texts), sentiment = (rating + 4) / 8"}
                              for m in rms},
            "prompts": f"first 5 tokens of the first {len(prompts)} negative (rating < -1) "
                       "movie reviews the base LM held out",
            "n_samples": a.n_samples, "seeds": a.seeds, "new_tokens": a.new_tokens,
            "betas": a.betas, "ks": a.ks,
            "statistics": "mean over prompts of each prompt's mean over seeds × samples; "
                          "se_prompt = SE of those P per-prompt means (clustered by prompt); "
                          "se_seed = SE of the per-seed means (models fixed, decoding seed "
                          "varies); vs_unguided = guided - unguided per prompt, its mean ± SE",
            "scorers": "positive: VADER compound mapped to [0, 1] > 0.5 on prompt + "
                       "continuation; perplexity: the base LM itself on [BOS] + prompt + "
                       "continuation (reference: GPT-2-XL when online), samples with ppl >= "
                       "1e5 dropped",
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {a.threads} torch thread(s), "
                   f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "results": rows,
        "bias_plain_rad": bias,
        # cached models and sweep cells are not re-run: this call's time only
        "wall_seconds_this_call": time.time() - t_start,
    }
    atomic_json(a.out / "guided_tradeoff.json", meta, default=float)
    for r in rows:
        pr, pp = r["positive_rate"], r["perplexity"]
        extra = ""
        if "vs_unguided_positive_rate" in r:
            v = r["vs_unguided_positive_rate"]
            extra = f"  Δpos {v['diff']:+.3f} ± {v['se']:.3f}"
        print(f"{r['method']:16s} β={r['beta']:5.1f} k={r['k']}  pos {pr['mean']:.3f} ± "
              f"{pr['se_prompt']:.3f}  ppl {pp['mean']:8.1f} ± {pp['se_prompt']:.1f}{extra}")
    print(claim)
    for b in bias:
        print(f"  beta={b['beta']:5.1f}  E_RAD[r]={b['rad_mean_reward']:.3f}  "
              f"E_target[r]~{b['target_mean_reward_snis']:.3f}  bias={b['bias']:+.3f}  "
              f"ESS/K={b['ess_fraction']:.2f}")
    print(f"wrote {a.out / 'guided_tradeoff.png'}, guided_time_per_token.png, guided_tradeoff.json")
    return meta


if __name__ == "__main__":
    main()
