"""Toxic story generation with self-distilled twisted SMC, at small scale, with the power
analysis the claim needs (Kim et al. 2025, §3; issue 23 items 4-5).

Claim checked: across self-distillation generations m = 0, 1, 2 (Algorithm 1) the
twist-induced proposal q_m approaches σ ∝ p_LM^(0) · p(toxic|s)^β (β = 10), i.e.
KL(σ‖q_m) decreases. The statistic is the paired difference

    Δ_m = KL(σ‖q_m) − KL(σ‖q_{m+1}) = E_σ[log q_{m+1}(s) − log q_m(s)]     (log Z cancels)

estimated by self-normalised importance sampling on one weighted sample per seed
(:class:`rankkit_ext.tsmc.ImportanceTarget`), with a stratified bootstrap SE (the draws
resampled within each mixture component) beside the delta-method SE.

**σ's sample: an adaptive defensive mixture** (Hesterberg 1995; Owen & Zhou 2000; the
cross-entropy method / population Monte Carlo, Rubinstein 1999, Cappé et al. 2004;
:mod:`rankkit_ext.tsmc.adaptive`). Per seed, ``cem_rounds`` rounds of ``n_round`` draws,
round r from the mixture of p_LM and *every* tilt so far,

    r_r = α_0 p_LM^(0) + Σ_{j≤r} α_{r,j} q_{b_j},   α_{r,j} = n_{r,j} / n_r,

stratified (exactly round(α_0 n_r) draws from p_LM, α_0 = ``alpha0`` = 0.2, the rest split
evenly over the tilts, so the mixture weights are the strata's shares), each draw scored
under every component by one teacher-forced pass of p_LM, and exact weights
w = p_LM φ / r_r ≤ φ/α_0 ≤ 1/α_0 (bounded, so the IS variance is finite whatever the tilts).
The tilt q_b(s_t | s_<t) ∝ p_LM(s_t | s_<t) e^{b_{s_t}} (a :class:`LinearTwist` with W = 0) is
trained only on the 5,705 tokens with p(toxic | prompt + v) > τ = ``TILT_TAU`` and starts at
b_v = max(0, log(p(toxic|v)/τ)); after round r, b_{r+1} = argmax_b Σ_i w_i log q_b(s_i) over
the draws of *all* rounds so far, each with its own round's exact weight (``cem_steps``
full-batch Adam steps at ``cem_lr`` from b_r). A refit never replaces a better tilt: the
earlier tilts stay in the mixture. The previous scheme (the latest tilt alone, refitted on
the latest round by minibatches ∝ w) lost ground in one seed: ESS/N 0.049 in round 2, 0.005
in the final sample of seed 1 (final ESS 108.6, 8.1, 220.7 of 1,500); with the pooled fits
the same seed's rounds gave ESS/N 0.038, 0.051, 0.056, 0.043, 0.054 (prototype, 5 rounds),
so the rounds stop at ``cem_rounds`` = 3 and the draws go to the final sample instead. Its
size is fixed by the earlier rounds: N = min(max(``n_final``, ⌈``final_ess_factor`` ·
``min_ess`` / (ESS/N of the last adaptive round)⌉), ``n_final_max``)
(:func:`rankkit_ext.tsmc.adaptive.final_sample_size`). At ``final_ess_factor`` = 1.6 and ``n_final_max`` =
5,000 (first full run, stopped after seed 0) seed 0's last round read ESS/N 0.083 (500
draws), its final sample 0.046: ESS 176.7 of 3,853, short of 200 — an ESS/N from 500 draws
at ESS ≈ 40 is noisy —, hence the factor 2.5 and at most 6,000 draws. The target is that *final fresh*
sample from r_R = α_0 p_LM + Σ_{j≤R} α_j q_{b_j}: the tilts and N are functions of the
earlier rounds only, so given them r_R is a fixed density and E[(1/N) Σ_i σ̃(s_i)/r_R(s_i)]
= Σ_j α_j ∫ q_j σ̃/r_R = Z (with q_0 = p_LM) — ordinary stratified defensive-mixture IS (Ẑ
unbiased, the stratified bootstrap valid) — while AMIS would reuse draws whose proposal was
fitted on them (consistent only under extra conditions, Marin, Pudlo & Sedki 2019). The
rounds' N, counts, ESS, ESS/N, k̂ and log Ẑ are ``seeds[s].target_rounds``. The
proposal uses only p_LM, the scorer and σ̃ — no sample and no model of any generation under
test — so the target of seed s is independent of every generation: with the evaluated
generations' own proposals the estimator would still be unbiased, but its variance and the
O(1/N) bias of self-normalisation would be smallest for the generations it was built from.
The base-only IS estimate (the base draws of the final sample alone, weights φ) is kept as
a cross-check with its own ESS and k̂. (Earlier families, measured: fixed tilts
λ·log p(toxic|v) on every token distorted p_LM's ordinary tokens, ESS 6.6–7.7 of 1,000; a
fine-tuned copy of the base LM memorised a round's 500 draws, ESS 1.2–2.0 of 500.)

**Undecided.** Every IS number carries its ESS and PSIS k̂ (Vehtari et al. 2024;
:func:`rankkit_ext.tsmc.psis_khat`) and is *undecided* (``value`` null, no number in the
headline) when ESS < ``MIN_ESS`` or k̂ > min(1 − 1/log10 N, 0.7).

**Verdict rule** (``verdict_rule`` in the JSON, :func:`verdict`): undecided if any seed's
target is undecided; else *reproduced* if every step's pooled Δ_m (mean over seeds, SE =
√Σ se_s² / S from the seeds' bootstrap SEs) exceeds 2 SE and no seed has Δ_m < −2 se_s;
*refuted* if some step's pooled Δ_m < −2 SE; else undecided.

**Other checks.** Generation 0 against the untwisted base: KL(σ‖p_LM) − KL(σ‖q_0) =
E_σ[log q_0 − log p_LM] (paired, bootstrap SE). log Ẑ of TSMC at large K (the average of
``n_z_runs`` = 30 unbiased Ẑ, delta-method SE of its log) against the IS log Ẑ, with z. Three
runs were too few: log Ẑ of one K = 128 run has sd ≈ 1.0 and a right-skewed Ẑ, so three runs
that happen to sit together give a small SE on a low mean (seed 0 of the first run with this
twist: −7.93 ± 0.15 from 3 runs, z = 8.3 against IS −6.54 ± 0.06; 30 runs of the same twist,
another generator seed: −6.54 ± 0.38, median log Ẑ −7.48). The
distillation set of each generation is *weighted* (``self_distill(distill="weighted")``:
every particle of ``n_distill_runs`` TSMC runs with its weight, no resampling duplicates);
its distinct strings and effective size are in ``seeds[s].distill_sets``.

**Generation 0: the twist.** Every generation's twist is log ψ(s_<t, v) = b_v (``TWIST``: a
:class:`LinearTwist` with W frozen at 0), started at the token tilt b_0 of the target's first
component — a fixed function of the scorer, not of any draw — and trained by CTL
(``ctl_steps`` = 100 at ``ctl_lr`` = 1e-2, K = ``K_train``). The recipe was chosen by
E_σ[log q_0 − log p_LM] on seed 0's target of the previous run (6,000 draws, ESS 247.6;
seeds 1 and 2 were not looked at), one CTL run each at T = 8, K = 16 unless stated:

===========================================  ====================  ==============
twist, CTL                                   E_σ[log q_0 − log p]  (bootstrap SE)
===========================================  ====================  ==============
W h + b from 0, 20 steps at 1e-3 (previous)  −0.74                 0.08
W h + b from 0, 100 steps at 1e-3, K = 64    −2.91                 0.20
b from 0, 100 steps at 1e-2, K = 64          0.00                  0.05
W h + b from b_0, 0 steps (b_0 itself)       +3.23                 0.05
W h + b from b_0, 20 / 100 steps at 1e-3     +3.00 / +0.91         0.10 / 0.19
W h + b from b_0, 60 steps at 1e-3, K = 64   +2.18                 0.14
b from b_0, 50 steps at 2e-2                 +3.40                 0.06
b from b_0, 100 steps at 1e-2 (chosen)       +3.52                 0.07
b from b_0, 200 steps at 1e-2                +3.19                 0.09
===========================================  ====================  ==============

CTL's gradient at K ≤ 64 (positive phase: the φ-weighted particles of one SIS run, ESS ≈ a
few) moves a head with context features W away from σ the longer it trains; the bias-only
twist gains 0.3 nats over b_0 before it too starts to lose. Because gen 0 starts where the
target's first tilt does, its KL is estimated with less variance than a twist the target
never saw (unbiased either way).

Differences from the paper (an offline CPU machine): the base LM is the package's offline
one (:func:`rankkit_ext.lm.vader_base_lm`, ``size="small"``: GPT-2 tokenizer, 64-d,
2 layers), the toxicity scorer the offline ``alt-profanity-check`` SVM, the twist a token
tilt (a linear head's bias) instead of a network, full fine-tuning instead of LoRA, small sizes.

Usage::

    nice python -m analyses.tsmc_toxic_story --out paper_figures      # full, 3 seeds
    python -m analyses.tsmc_toxic_story --quick --out /tmp/x          # smoke run (~1 min)
    python -m analyses.tsmc_toxic_story --n-final 4000 --cem-rounds 8
        # more draws and fits where ESS falls short; a GPU run (--device cuda) is estimated
        # in the JSON (``runtime.gpu_estimate``), not measured

Runtime (measured on the idle 2-core CPU machine, 2 torch threads — ``--threads`` defaults
to every usable core —, from an empty analysis cache, the offline base LM already built):
full mode 1,081 s wall (``runtime.seconds_with_fig2``): 403 s the three chains (100 CTL steps
per generation), 668 s the adaptive targets (3 rounds of 500 + 6,000 final draws per seed),
the estimates and 30 TSMC runs of K = 128 per seed for log Ẑ, ~10 s Fig. 2. ``--quick``
~20 s (its test). Fig. 2 (particle efficiency) is shrunk to seed 0, K ∈ {16, 32, 64} × 2
runs, and is skipped with ``--no-particle-efficiency``.
Measured: final ESS 247.6, 228.2, 247.5 of 6,000 per seed (k̂ 0.66, 0.68, 0.58), so every
seed is decided. Generation 0 beats the untwisted base in every seed (``gen0_minus_base``
+3.52 ± 0.07, +3.52 ± 0.09, +3.54 ± 0.07; KL(σ‖q_0) ≈ 2.5 against KL(σ‖p_LM) ≈ 6.0), and
the verdict is *refuted*: KL(σ‖q_m) rises at both steps in every seed (pooled
E_σ[log q_{m+1} − log q_m] −5.51 ± 0.12 and −11.86 ± 0.11). The distilled LMs without a
twist (``kl_sigma_model``, ``model_kl_steps``) do not come closer to σ either (pooled
+0.01 ± 0.10, then −1.85 ± 0.10), and their twisted proposals are farther from σ than they
are: the twist started at b_0 over-tilts an LM already fine-tuned toward σ. The first step's
increase does not hinge on that twist: p^(1) with no twist (KL 5.8–6.2) is farther from σ than
q_0 (2.4–2.5) in every seed. log Ẑ of TSMC
(30 runs) agrees with the IS estimate within 0.8 SE in every seed.

Writes ``tsmc_toxic_story.{json,png}`` and ``tsmc_particle_efficiency.{json,png}`` to
``--out``; chains and per-seed samples are cached in ``$RANKKIT_CACHE/tsmc_toxic_story``
(default ``~/.cache/rankkit``; resumable, atomic writes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rankkit._io import atomic_json, atomic_npz, atomic_write, fingerprint, read_npz
from rankkit_ext._io import state_fingerprint
from rankkit_ext.metrics import distinct_n, pooled_estimate, summarize_runs, weighted_toxicity
from rankkit_ext.scorers import profanity_scorer
from rankkit_ext.tsmc import (
    MIN_ESS,
    HFCausalLM,
    ImportanceTarget,
    LinearTwist,
    mixture_log_proposal,
    particle_efficiency,
    score_proposal,
    self_distill,
    toxicity_potential,
    tsmc,
)
from rankkit_ext.tsmc.adaptive import adaptive_tilt_mixture

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("RANKKIT_CACHE", Path.home() / ".cache" / "rankkit"))
PROMPT = "The movie was"
BETA = 10.0  # Algorithm 1's β (Kim et al. 2025 §3)
# the adaptive proposal's token tilt: trained on the tokens with p(toxic | prompt + v) > τ
# (5,705 of 50,257); the tilt starts at b_v = λ0·max(0, log(p(toxic|v)/τ)), flat below τ so
# the relative probabilities of the ordinary tokens stay those of p_LM (the first tilt,
# λ·log p(toxic|v) on every token, distorted them and never passed ESS/N ≈ 0.01)
TILT_TAU = 0.01
TILT_LAMBDA0 = 1.0
# every generation's CTL twist: log ψ(s_<t, v) = b_v (a LinearTwist with W frozen at 0),
# b started at the token tilt b_0 above and trained by CTL (module docstring, "Generation 0")
TWIST = ("LinearTwist with W frozen at 0; bias initialised at the token tilt b_0 = "
         "lambda0 * max(0, log(p(toxic|prompt + v) / tau)) and trained by CTL")
VERDICT_RULE = ("undecided if any seed's mixture target is undecided (ESS < min_ess or PSIS "
                "k_hat > min(1 - 1/log10 N, 0.7)); else 'reproduced' if for every step m -> "
                "m+1 the pooled paired decrease (mean over seeds of E_sigma[log q_{m+1} - log "
                "q_m]) exceeds 2 pooled bootstrap SE (sqrt(sum se_s^2)/S) and no seed's "
                "decrease is below -2 of its own bootstrap SE; 'refuted' if some step's pooled "
                "decrease is below -2 pooled SE (a significant increase); else 'undecided'")
# Sizes: full mode is what fits 30 min on 2 cores; the decisive sizes need a GPU (module
# docstring). ctl_steps, ctl_lr: the bias-only twist's recipe, measured on seed 0 (module
# docstring, "Generation 0"): 100 steps at 1e-2 gain most over the base (50 steps at 2e-2 and
# 200 at 1e-2 gain less). The full head from zero (W h + b, the previous recipe) collapses
# at 1e-2 within 30 steps and, at 1e-3, ends below the base after 20 steps and further below
# after 100
# n_final is the final sample's minimum size: it grows to final_ess_factor · min_ess over the
# last adaptive round's ESS/N, at most n_final_max (adaptive.final_sample_size)
FULL = dict(seeds=3, T=8, K_train=16, ctl_steps=100, ctl_lr=1e-2, n_distill_runs=128,
            ft_steps=30, cem_rounds=3, n_round=500, n_final=1500, n_final_max=6000,
            final_ess_factor=2.5, alpha0=0.2, cem_steps=50,
            cem_lr=0.05, n_boot=500, K_z=128, n_z_runs=30,
            n_eval_runs=3, K_test=32, pe_ks=(16, 32, 64), pe_runs=2)
# the tilts need no second seed, so --quick runs one seed end to end
QUICK = dict(seeds=1, T=5, K_train=8, ctl_steps=3, ctl_lr=1e-2, n_distill_runs=4,
             ft_steps=3, cem_rounds=2, n_round=40, n_final=300, n_final_max=300,
             final_ess_factor=1.6, alpha0=0.2, cem_steps=4,
             cem_lr=0.05, n_boot=100, K_z=16, n_z_runs=2,
             n_eval_runs=2, K_test=8, pe_ks=(8,), pe_runs=2)


def _tokenizer():
    from rankkit.tokenizers import load

    return load("gpt2")


def _base_lm(args):
    from rankkit_ext.lm import load_base_lm, vader_base_lm

    if args.base != "tiny":
        args.base_report = {"name_or_path": str(args.base)}
        return load_base_lm(args.base)
    model, report = vader_base_lm(size="small", return_report=True)
    args.base_report = {k: report.get(k) for k in ("settings", "held_out", "baselines",
                                                   "n_parameters") if k in report}
    return model.eval()


def _stats(x) -> dict:
    x = np.asarray(x, dtype=np.float64)
    se = float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")
    return {"mean": float(x.mean()) if x.size else float("nan"), "stderr": se, "n": int(x.size)}


def _pack(seqs, T):
    toks = np.zeros((len(seqs), T), dtype=np.int64)
    for i, s in enumerate(seqs):
        toks[i, : len(s)] = s
    return toks, np.array([len(s) for s in seqs])


def _unpack(toks, lens):
    return [toks[i, : int(lens[i])].tolist() for i in range(len(lens))]


def pooled(ests: list[dict]) -> dict:
    """Mean over seeds of decided per-seed estimates, SE = √Σ se_s² / S (seeds independent),
    for the bootstrap and the delta-method SEs; undecided if any seed is."""
    if any(e["status"] != "decided" for e in ests):
        return {"status": "undecided", "value": None, "bootstrap_se": None, "stderr": None,
                "n_seeds": len(ests)}
    S = len(ests)
    return {"status": "decided", "value": float(np.mean([e["value"] for e in ests])),
            "bootstrap_se": float(math.sqrt(sum(e["bootstrap_se"] ** 2 for e in ests)) / S),
            "stderr": float(math.sqrt(sum(e["stderr"] ** 2 for e in ests)) / S), "n_seeds": S}


def verdict(steps_per_seed: list[list[dict]], pooled_steps: list[dict]) -> dict:
    """:data:`VERDICT_RULE` applied to the paired decreases (module docstring)."""
    if any(p["status"] != "decided" for p in pooled_steps):
        return {"verdict": "undecided", "reason": "some seed's target is undecided (ESS or "
                                                  "k_hat): no paired decrease may be quoted"}
    sig_dec = [p["value"] > 2 * p["bootstrap_se"] for p in pooled_steps]
    sig_inc = [p["value"] < -2 * p["bootstrap_se"] for p in pooled_steps]
    contra = [any(s[i]["value"] < -2 * s[i]["bootstrap_se"] for s in steps_per_seed)
              for i in range(len(pooled_steps))]
    if all(sig_dec) and not any(contra):
        v, why = "reproduced", "every step's pooled decrease > 2 SE, no seed contradicts"
    elif any(sig_inc):
        v, why = "refuted", "a step's pooled KL change is a significant increase (> 2 SE)"
    else:
        v, why = "undecided", "no step-wise decrease is significant at 2 SE in every step"
    return {"verdict": v, "reason": why, "step_significant_decrease": sig_dec,
            "step_significant_increase": sig_inc, "step_contradicted_by_a_seed": contra}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="tiny", help="'tiny' (the offline base) or a hub id")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "paper_figures")
    ap.add_argument("--device", default="cpu", help="torch device for every model [cpu]")
    ap.add_argument("--seeds", type=int, default=None, help="independent seeds [3; quick 2]")
    ap.add_argument("--cem-rounds", type=int, default=None,
                    help="cross-entropy fits of the target's tilt per seed [5]")
    ap.add_argument("--n-round", type=int, default=None, help="draws per adaptive round [500]")
    ap.add_argument("--n-final", type=int, default=None,
                    help="least draws of the final target sample per seed [1500]")
    ap.add_argument("--n-final-max", type=int, default=None,
                    help="most draws of the final target sample per seed [6000]")
    ap.add_argument("--min-ess", type=float, default=MIN_ESS,
                    help=f"ESS below which an estimate is undecided [{MIN_ESS:g}]")
    ap.add_argument("--no-particle-efficiency", action="store_true",
                    help="skip Fig. 2 (particle efficiency)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch threads [every usable core]")
    ap.add_argument("--chains-only", action="store_true",
                    help="train (or resume) the chains into the cache and stop")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = dict(QUICK if args.quick else FULL)
    for k in ("seeds", "cem_rounds", "n_round", "n_final", "n_final_max"):
        if getattr(args, k) is not None:
            cfg[k] = int(getattr(args, k))
    if cfg["seeds"] < 1 or cfg["cem_rounds"] < 0 or cfg["n_round"] < 10 or cfg["n_final"] < 10:
        raise ValueError("need --seeds >= 1, --cem-rounds >= 0, --n-round >= 10, --n-final >= "
                         f"10; got {cfg}.")
    dev = torch.device(args.device)
    T, q = cfg["T"], args.quick
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    load0 = os.getloadavg()
    tok = _tokenizer()
    model = _base_lm(args).to(dev)
    V = model.config.vocab_size
    base_fp = state_fingerprint(model)[:16]
    eos = model.config.eos_token_id
    prompt = [model.config.bos_token_id] + tok.encode(PROMPT)
    score_toxic = profanity_scorer()
    cache = CACHE / "tsmc_toxic_story"
    cache.mkdir(parents=True, exist_ok=True)

    def strip(s):
        return [v for v in s if v != eos]

    def texts(seqs):
        return [tok.decode(strip(s)) for s in seqs]

    def log_tox(seqs):  # the SVM's probabilities are > 0; the clip only guards log(0)
        return np.log(np.clip(score_toxic([PROMPT + t for t in texts(seqs)]), 1e-300, None))

    def gen(seed):
        return torch.Generator(device=dev).manual_seed(int(seed))

    lm = HFCausalLM(model)
    phi = toxicity_potential(BETA, decode=tok.decode, prefix_text=PROMPT)
    # the token tilts: p(toxic | prompt + one token) for every token, once
    tv = np.asarray(score_toxic([PROMPT + tok.decode([v]) for v in range(V)]), dtype=np.float64)
    tilt_mask = torch.as_tensor(tv > TILT_TAU, dtype=torch.float32, device=dev)
    tilt0 = LinearTwist(model.config.n_embd, V).to(dev)
    with torch.no_grad():
        tilt0.proj.bias.copy_(torch.as_tensor(
            TILT_LAMBDA0 * np.maximum(0.0, np.log(np.clip(tv, 1e-300, None) / TILT_TAU))))
    tilt0.eval()
    throughput = {"sequences": 0, "seconds": 0.0}

    # ---- phase 1: one self-distillation chain per seed ----------------------------------
    chains, t_chain = [], time.time()
    chain_key = fingerprint({k: cfg[k] for k in ("T", "K_train", "ctl_steps", "ctl_lr",
                                                 "n_distill_runs", "ft_steps")}
                            | {"twist": TWIST, "tau": TILT_TAU, "lam0": TILT_LAMBDA0})[:16]

    def twist_factory():
        # every generation's twist starts at the token tilt b_0 and trains its bias only
        # (TWIST: the full head W h + b from zero ends below the base, module docstring)
        tw = LinearTwist(model.config.n_embd, V).to(dev)
        with torch.no_grad():
            tw.proj.bias.copy_(tilt0.proj.bias)
        tw.proj.weight.requires_grad_(False)
        return tw

    for s in range(cfg["seeds"]):
        res = self_distill(
            model, phi, prompt, twist_factory,
            generations=2, max_new_tokens=T, n_particles=cfg["K_train"],
            ctl_steps=cfg["ctl_steps"], ctl_lr=cfg["ctl_lr"],
            distill="weighted", n_distill_runs=cfg["n_distill_runs"],
            finetune=dict(lora=False, steps=cfg["ft_steps"], lr=1e-3, batch_size=32),
            seed=1000 * s, progress=False,
            # every setting that shapes a chain is in its folder's name: a rerun with other
            # sizes must never resume from generations trained with the old ones
            checkpoint_dir=cache / f"sdw_s{s}_{base_fp}_{chain_key}",
            # CTL's negative phase from one twisted SIS run per step (learning.ctl_loss notes)
            ctl=dict(negative="sis"))
        chains.append(res)
        print(f"seed {s}: chain done ({time.time() - t_chain:.0f}s)", res.distill_sets,
              flush=True)
    t_chain = time.time() - t_chain
    if args.chains_only:
        print(f"chains done in {t_chain:.0f}s")
        return {"seconds_chains": t_chain}

    # ---- phase 2: per seed, the mixture target and every estimate ------------------------
    seeds_out, t_eval = [], time.time()
    M = 3
    for s, res in enumerate(chains):
        fp = state_fingerprint(*res.models[1:], *res.twists)[:16]
        # the target depends on the sizes and settings of the adaptive rounds, not on the
        # chain (which only enters through log q_gen, also stored): all of them in the key
        tkey = fingerprint({k: cfg[k] for k in ("cem_rounds", "n_round", "n_final", "alpha0",
                                                "cem_steps", "cem_lr", "n_final_max",
                                                "final_ess_factor")}
                           | {"tau": TILT_TAU, "lam0": TILT_LAMBDA0, "T": T,
                              "mixture": "all_rounds_pooled_fit", "min_ess": args.min_ess,
                              "stores": "log_q_gen+log_p_gen"})[:12]
        f = cache / f"target_cem_s{s}_{base_fp}_{fp}_{tkey}.npz"
        if f.exists():
            z = read_npz(f, "mixture target", required=("tokens", "lengths", "strata", "log_c",
                                                        "ltox", "log_q_gen", "log_p_gen", "rounds"))
            seqs, strata, log_c = _unpack(z["tokens"], z["lengths"]), z["strata"], z["log_c"]
            ltox, lq_gen, lp_gen = z["ltox"], z["log_q_gen"], z["log_p_gen"]
            rounds = json.loads(str(z["rounds"]))
        else:
            t0 = time.time()
            ltox_memo = {}

            def log_target(sq, lp, memo=ltox_memo):
                lt = log_tox(sq)
                memo["last"] = lt  # the final round's log p(toxic|s), kept for the estimates
                return lp + BETA * lt

            am = adaptive_tilt_mixture(
                lm, prompt, log_target, tilt0, T, gen(50_000 + s), rounds=cfg["cem_rounds"],
                n_round=cfg["n_round"], n_final=cfg["n_final"], alpha0=cfg["alpha0"],
                mask=tilt_mask, steps=cfg["cem_steps"], lr=cfg["cem_lr"], seed=60_000 + s,
                target_ess=cfg["final_ess_factor"] * args.min_ess,
                n_final_max=cfg["n_final_max"], progress=True)
            seqs, strata, log_c, ltox = am.sequences, am.strata, am.log_c, ltox_memo["last"]
            rounds = am.rounds
            tgt0 = ImportanceTarget(seqs, log_c[0] + BETA * ltox, am.log_proposal)
            # log q_m only where a draw carries mass in the mixture target or in the base-only
            # cross-check (the rest holds < N·1e-12 of either's mass)
            b0 = np.nonzero(strata == 0)[0]
            tb0 = ImportanceTarget([seqs[i] for i in b0], (log_c[0] + BETA * ltox)[b0],
                                   log_c[0][b0])
            sup = np.union1d(tgt0.support(), b0[tb0.support()])
            # log p^(m) (the untwisted generation) comes with log q_m from the same pass
            lq_gen, lp_gen = np.full((M, len(seqs)), np.nan), np.full((M, len(seqs)), np.nan)
            for m in range(M):
                lp_gen[m, sup], lq_gen[m, sup] = score_proposal(
                    HFCausalLM(res.models[m]), res.twists[m], prompt, [seqs[i] for i in sup],
                    chunk=16)
            toks, lens = _pack(seqs, T)
            atomic_npz(f, {"tokens": toks, "lengths": lens, "strata": strata, "log_c": log_c,
                           "ltox": ltox, "log_q_gen": lq_gen, "log_p_gen": lp_gen,
                           "rounds": np.array(json.dumps(rounds))})
            n_all = sum(r_["n"] for r_ in rounds)
            # sample + one teacher-forced pass per draw (all components, the fits' features)
            throughput["sequences"] += 2 * n_all + len(sup) * M
            throughput["seconds"] += time.time() - t0
        J = log_c.shape[0]
        N = len(seqs)
        alphas = np.bincount(strata, minlength=J) / N
        log_sig = log_c[0] + BETA * ltox
        tgt = ImportanceTarget(seqs, log_sig, mixture_log_proposal(log_c, alphas),
                               strata=strata, min_ess=args.min_ess)
        rng = np.random.default_rng(70_000 + s)
        nb = cfg["n_boot"]
        lp0 = log_c[0]
        kl = [tgt.kl_sigma_q(lq_gen[m], nb, rng).to_json() for m in range(M)]
        kl_base = tgt.kl_sigma_q(lp0, nb, rng).to_json()
        gen0_vs_base = tgt.kl_difference(lp0, lq_gen[0], nb, rng).to_json()
        steps = [{"from": m, "to": m + 1,
                  **tgt.kl_difference(lq_gen[m], lq_gen[m + 1], nb, rng).to_json()}
                 for m in range(M - 1)]
        # the distilled LMs p^(m) alone (no twist): does fine-tuning itself approach σ?
        kl_model = [tgt.kl_sigma_q(lp_gen[m], nb, rng).to_json() for m in range(M)]
        model_steps = [{"from": m, "to": m + 1,
                        **tgt.kl_difference(lp_gen[m], lp_gen[m + 1], nb, rng).to_json()}
                       for m in range(M - 1)]
        lz = tgt.log_Z().to_json()
        tox_sigma = tgt.mean(np.exp(ltox)).to_json()
        # cross-check: the base draws alone, weighted by φ (the previous study's target)
        bi = np.nonzero(strata == 0)[0]
        tb = ImportanceTarget([seqs[i] for i in bi], log_sig[bi], lp0[bi], min_ess=args.min_ess)
        base_only = {"n": int(bi.size), "ess": tb.ess, "khat": tb.khat,
                     "log_Z": tb.log_Z().to_json(),
                     "kl_sigma_q": [tb.kl_sigma_q(lq_gen[m][bi]).to_json() for m in range(M)],
                     "kl_steps": [tb.kl_difference(lq_gen[m][bi], lq_gen[m + 1][bi]).to_json()
                                  for m in range(M - 1)]}
        # log Ẑ of TSMC at large K (generation 0: p^(0), ψ^(0), φ), n_z_runs runs
        g = gen(80_000 + s)
        lzr = np.array([tsmc(lm, res.twists[0], phi, prompt, cfg["K_z"], T, generator=g).log_Z
                        for _ in range(cfg["n_z_runs"])])
        zr = np.exp(lzr - lzr.max())
        lz_tsmc = float(np.log(zr.mean()) + lzr.max())
        # delta method: se(log mean Ẑ) = sd(Ẑ)/(√R mean Ẑ)
        se_tsmc = float(zr.std(ddof=1) / (math.sqrt(zr.size) * zr.mean()))
        zcheck = {"log_Z_tsmc": lz_tsmc, "log_Z_tsmc_se": se_tsmc, "K": cfg["K_z"],
                  "n_runs": int(zr.size), "log_Z_tsmc_runs": lzr.tolist(),
                  "log_Z_is": lz["value"], "log_Z_is_se": lz["bootstrap_se"] or lz["stderr"],
                  "z": ((lz["value"] - lz_tsmc) / math.hypot(lz["stderr"], se_tsmc))
                  if lz["status"] == "decided" else None,
                  "note": "log of the mean of unbiased Z_hat over runs (delta-method SE) vs "
                          "the mixture-IS log Z_hat; both are low by ~se^2/2 (Jensen)"}
        # toxicity of TSMC samples per generation (independent runs, SE over runs)
        tox_gen, div_gen = [], []
        for m in range(M):
            vals, outs = [], []
            for _ in range(cfg["n_eval_runs"]):
                r = tsmc(HFCausalLM(res.models[m]), res.twists[m], res.potentials[m], prompt,
                         cfg["K_test"], T, generator=g)
                sq = r.sequences(strip_eos=False)
                vals.append(weighted_toxicity(r.weights.double().cpu().numpy(),
                                              np.exp(log_tox(sq))))
                outs += sq
            tox_gen.append(_stats(vals))
            d = distinct_n([texts(outs)], ns=(2,), denominator="ngrams")
            div_gen.append({"distinct_2": d[2], "unique_fraction":
                            len({tuple(strip(x)) for x in outs}) / len(outs)})
        seeds_out.append({
            "seed": s, "n_draws": N, "mixture_alphas": alphas.tolist(),
            "mixture_components": ["p_LM"] + [f"token_tilt_{j}" for j in range(J - 1)],
            "target_rounds": rounds,
            "ess": tgt.ess, "khat": tgt.khat, "decided": tgt.decided,
            "n_support_scored": int(np.isfinite(lq_gen[0]).sum()),
            "log_Z": lz, "toxicity_sigma": tox_sigma,
            "kl_sigma_base": kl_base, "kl_sigma_q": kl,
            "gen0_minus_base": {**gen0_vs_base, "definition": "KL(sigma||p_LM) - "
                                "KL(sigma||q_0) = E_sigma[log q_0 - log p_LM]; > 0: q_0 beats "
                                "the untwisted base"},
            "kl_steps": steps, "kl_sigma_model": kl_model, "model_kl_steps": model_steps,
            "log_Z_check": zcheck, "base_only_crosscheck": base_only,
            "distill_sets": res.distill_sets,
            "ctl_final_loss": [float(np.mean(c.losses[-5:])) for c in res.ctl],
            "toxicity_tsmc": tox_gen, "diversity_tsmc": div_gen})
        print(f"seed {s}: ESS {tgt.ess:.1f} of {N}, k_hat {tgt.khat:.2f}; steps "
              + "; ".join(ISE_headline(x) for x in steps), flush=True)
    t_eval = time.time() - t_eval

    pooled_steps = [{"from": m, "to": m + 1,
                     **pooled([so["kl_steps"][m] for so in seeds_out])} for m in range(M - 1)]
    pooled_gen0 = pooled([so["gen0_minus_base"] for so in seeds_out])
    pooled_model = [{"from": m, "to": m + 1,
                     **pooled([so["model_kl_steps"][m] for so in seeds_out])} for m in range(M - 1)]
    v = verdict([so["kl_steps"] for so in seeds_out], pooled_steps)
    seconds = time.time() - t_start
    # GPU estimate: the cost is passes over (batch, T, V) float64 log-probabilities; scale
    # the measured CPU sequence-passes/s by the bandwidth ratio (stated as an estimate)
    rate = throughput["sequences"] / throughput["seconds"] if throughput["seconds"] else None
    bytes_per_pass = T * V * 8 * 8  # ~8 float64 sweeps of the (T, V) slab per sequence
    # draws per seed for ESS = min_ess at the measured ESS / N of the mixture (ESS ∝ N)
    n_need = max(so["n_draws"] * args.min_ess / max(so["ess"], 1e-9) for so in seeds_out)
    n_dec = int(max(500_000, math.ceil(n_need)))
    passes_dec = n_dec * (1 + 1 + M)  # sample + score (p and the tilt) + 3 generations
    gpu_eff_bw = 3.35e12 * 0.25  # H100 HBM3 peak × an assumed 25 % efficiency
    out = {
        "claim": "Kim et al. (2025) §3: KL(sigma||q_m) decreases across self-distillation "
                 "generations m = 0, 1, 2.",
        "setup": {"prompt": PROMPT, "beta": BETA, "base": args.base,
                  "base_lm": args.base_report, "base_fingerprint": base_fp, "quick": q,
                  "device": str(dev), "tilt_tau": TILT_TAU, "tilt_lambda0": TILT_LAMBDA0,
                  "twist": TWIST, "min_ess": args.min_ess,
                  **{k: (list(v_) if isinstance(v_, tuple) else v_) for k, v_ in cfg.items()},
                  "argv": list(argv) if argv is not None else sys.argv[1:]},
        "verdict_rule": VERDICT_RULE,
        "verdict": v,
        "pooled": {"kl_steps": pooled_steps, "gen0_minus_base": pooled_gen0,
                   "model_kl_steps": pooled_model,
                   "note": "mean over seeds of the per-seed estimates; SE = sqrt(sum se_s^2)/S "
                           "for the bootstrap (bootstrap_se) and delta-method (stderr) SEs"},
        "seeds": seeds_out,
        "runtime": {"seconds_total": seconds, "seconds_chains": t_chain,
                    "seconds_targets_and_estimates": t_eval,
                    "loadavg_at_start": list(load0), "loadavg_at_end": list(os.getloadavg()),
                    "cpu_threads": args.threads,
                    "measured_sequence_passes_per_s": rate,
                    "gpu_estimate": {
                        "n_draws_per_seed_for_min_ess": float(n_need),
                        "n_draws_per_seed": n_dec, "sequence_passes_per_seed": passes_dec,
                        "seconds_per_seed_h100_estimate": passes_dec * bytes_per_pass
                        / gpu_eff_bw,
                        "cpu_seconds_per_seed_at_measured_rate": (passes_dec / rate
                                                                  if rate else None),
                        "method": "ESTIMATE, not measured (no GPU this session): each "
                                  "sequence pass sweeps ~8 float64 (T, V) slabs; H100 HBM3 "
                                  "3.35 TB/s at an assumed 25 % efficiency; the chains "
                                  "(CTL, fine-tuning) add little at these sizes"}},
    }
    _plot(out, args.out / "tsmc_toxic_story.png")
    atomic_json(args.out / "tsmc_toxic_story.json", out, indent=2, default=float)
    print(json.dumps({"verdict": v, "pooled": out["pooled"]}, indent=1, default=float))
    if not args.no_particle_efficiency:
        _fig2(chains[0], prompt, T, cfg, phi, log_tox, cache, base_fp, q, args.out)
    out["runtime"]["seconds_with_fig2"] = time.time() - t_start
    atomic_json(args.out / "tsmc_toxic_story.json", out, indent=2, default=float)
    print(f"total {out['runtime']['seconds_with_fig2']:.0f}s")
    return out


def ISE_headline(e: dict) -> str:
    """What may be printed of an estimate: a number with its SEs only when decided."""
    if e["status"] != "decided":
        return f"undecided (ESS {e['ess']:.1f}, k_hat {e['khat']:.2f})"
    return f"{e['value']:.2f} ± {e['bootstrap_se']:.2f} (boot), {e['stderr']:.2f} (delta)"


def _fig2(res, prompt, T, cfg, phi, log_tox, cache, base_fp, q, out_dir):
    """Fig. 2 of Kim et al. (2025) for seed 0, shrunk: K ∈ pe_ks, pe_runs runs each."""
    ks = tuple(cfg["pe_ks"])
    runs_per_k = {k: cfg["pe_runs"] for k in ks}
    t0 = time.time()
    runs = particle_efficiency(res, prompt, T, ks, runs_per_k, lambda sq: np.exp(log_tox(sq)),
                               cache / f"pew_T{T}_{'q' if q else 'f'}_{base_fp}", seed=0,
                               progress=False)
    pe = {"setup": {"K": list(ks), "runs_per_K": {str(k): v for k, v in runs_per_k.items()},
                    "seed": 0, "max_new_tokens": T, "beta": BETA, "seconds": time.time() - t0,
                    "per_run_statistic": "sum_k w_k p(toxic | s_k)",
                    "error_bar": "SE over runs (ddof=1)"},
          "target_pooled_tsmc": pooled_estimate([r["log_Z"] for r in runs],
                                                [r["toxicity"] for r in runs]),
          "rows": summarize_runs(runs), "runs": runs}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for m in sorted({r["generation"] for r in pe["rows"]}):
        rows = [r for r in pe["rows"] if r["generation"] == m]
        ax.errorbar([r["K"] * 1.05 ** (m - 1) for r in rows], [r["toxicity_mean"] for r in rows],
                    yerr=[r["toxicity_stderr"] for r in rows], marker="o", capsize=4,
                    label=f"m = {m}")
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("number of particles K")
    ax.set_ylabel("toxicity of TSMC samples (± SE over runs)")
    ax.set_title(f"Particle efficiency (Fig. 2 layout), seed 0, {cfg['pe_runs']} runs per K",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out_dir / "tsmc_particle_efficiency.png", "wb",
                 lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    atomic_json(out_dir / "tsmc_particle_efficiency.json", pe, indent=2, default=float)


def _plot(out, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(16, 4.4))
    seeds = out["seeds"]
    for so in seeds:
        s = so["seed"]
        ks = so["kl_sigma_q"]
        ms = [m + 0.06 * s for m in range(len(ks))]
        if so["decided"]:
            ln = ax[0].errorbar(ms, [k["value"] for k in ks],
                                yerr=[2 * k["bootstrap_se"] for k in ks], marker="o", capsize=4,
                                label=f"seed {s}: q_m (ESS {so['ess']:.0f})")
            km = so["kl_sigma_model"]
            ax[0].errorbar(ms, [k["value"] for k in km], yerr=[2 * k["bootstrap_se"] for k in km],
                           marker="o", mfc="none", ls="--", capsize=3, color=ln[0].get_color(),
                           label=f"seed {s}: p^(m), no twist")
        steps = so["kl_steps"]
        if so["decided"]:
            ax[1].errorbar([i + 0.06 * s for i in range(len(steps))],
                           [x["value"] for x in steps], yerr=[2 * x["bootstrap_se"] for x in steps],
                           marker="o", capsize=4, ls="", label=f"seed {s}")
        ax[2].errorbar([m + 0.06 * s for m in range(len(so["toxicity_tsmc"]))],
                       [t["mean"] for t in so["toxicity_tsmc"]],
                       yerr=[2 * t["stderr"] for t in so["toxicity_tsmc"]], marker="o", capsize=4,
                       label=f"seed {s}")
    ps = out["pooled"]["kl_steps"]
    if all(p["status"] == "decided" for p in ps):
        ax[1].errorbar([i + 0.25 for i in range(len(ps))], [p["value"] for p in ps],
                       yerr=[2 * p["bootstrap_se"] for p in ps], marker="s", color="k",
                       capsize=5, ls="", label="pooled")
    for a, msg in ((ax[0], "KL(σ‖q_m)"), (ax[1], "paired decrease")):
        if not any(so["decided"] for so in seeds):
            a.text(0.5, 0.5, f"{msg}: undecided\n(ESS < {out['setup']['min_ess']:g} or k̂ "
                   "too large in every seed)", transform=a.transAxes, ha="center")
    ax[0].set_xlabel("generation m")
    ax[0].set_ylabel("KL(σ ‖ q_m) ± 2 bootstrap SE")
    ax[0].set_title("Against the defensive-mixture target")
    ax[1].axhline(0, color="grey", lw=0.8)
    ax[1].set_xticks(range(len(ps)), [f"{p['from']}→{p['to']}" for p in ps])
    ax[1].set_ylabel("E_σ[log q_{m+1} − log q_m] ± 2 SE")
    ax[1].set_title(f"Paired KL decrease; verdict: {out['verdict']['verdict']}")
    ax[2].set_xlabel("generation m")
    ax[2].set_ylabel("toxicity of TSMC samples ± 2 SE")
    ax[2].set_ylim(0, 1.05)
    ax[2].set_title("Toxicity of TSMC samples")
    for a in ax:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, "wb", lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


if __name__ == "__main__":
    main()
