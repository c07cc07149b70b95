r"""Fig. 7 (left) of paper 002 (§4.5): rank of RAD-Q's learned matrix with and without L_reg.

Two RAD-Q models (eq. 8–9, linear head with baseline) on the same tiny random-init GPT-2
backbone are trained on ``vader:movie`` (GPT-2 tokenizer, label "sentiment" = (rating + 4) / 8)
with the cumulative objective (eq. 4 / 12), identical seed, data order and number of steps;
they differ only in the coefficient of the regulariser (eq. 14)

.. math::

    \mathcal{L}_{reg}(h(x)) = \mathbb{E}_{v' \sim \mathrm{Uniform}[V]}
        \big[\Delta\hat r(e(v') \mid h(x))\big]^2 ,
    \qquad \Delta\hat r(e(v) \mid h) = \langle h, W e(v) \rangle ,

one uniformly drawn v' per prefix position (``rankkit_ext.train(..., reg_coef=c)``). For
each model the learned matrix :math:`\hat R = H(w\mathbf{1}^\top + WE)` (eq. 10) is
computed on i.i.d. sampled training prefixes x' = u_{<t} of D_f (eq. 3) over the full
50,257-token vocabulary (``rankkit_ext.learned_matrix``), and its numerical rank with the
float32 default cutoff (App. D.4) is plotted against the number of sampled prefixes
(``rankkit.rank_curve``), as in Fig. 7 left. The untrained model (step 0, same init) is
drawn for reference: its Δr̂ is random-init noise, not something the data taught.

Also reported: the spread of Δr̂ across tokens, i.e. the mean over rows of the standard
deviation of :math:`\hat R[i, :]` around its row mean (the baseline cancels), which L_reg
pushes towards 0 (the "abstain" limit of §3.3 is a rank-1 :math:`\hat R`), the normalised
singular values σ_k/σ_1 against the rank cutoff, and the training objective without L_reg.

Differences from the paper: Fig. 7 uses a *distilled* GPT-2-small RAD-Q on Jigsaw; here the
model is trained from responses at CPU scale (d = 32, 2 layers, random init, frozen random
output embeddings). With e(v) ~ N(0, 0.02²) a uniform draw gives E[Δr̂²] ≈ 4e-4 ‖W h‖², so
the coefficient that bites is large (default 10).

    python -m analyses.learned_rank_regularizer [--quick] [--out DIR] [--reg-coef C]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from ._common import TOKENIZER, parser, pyplot, save_figure, write_json

NAME = "learned_rank_regularizer"
DATASET = "vader:movie"
LABEL = "sentiment"

#: CPU settings; "quick" is a smoke run of the same pipeline (< 90 s), "default" < 6 min
CONFIGS = {
    "default": dict(limit=400, max_len=24, d=32, n_layer=2, n_head=2, epochs=15, batch_size=16,
                    lr=3e-3, reg_coef=10.0, n_prefixes=256, sizes=[8, 16, 32, 64, 128, 256],
                    n_repeats=3),
    "quick": dict(limit=150, max_len=24, d=32, n_layer=2, n_head=2, epochs=4, batch_size=16,
                  lr=3e-3, reg_coef=10.0, n_prefixes=64, sizes=[8, 16, 32, 64], n_repeats=1),
}


def tiny_radq(vocab_size: int, d: int, n_layer: int, n_head: int, n_positions: int,
              seed: int = 0):
    """RAD-Q (linear head, baseline) on :func:`rankkit_ext.lm.tiny_gpt2` (random init, BOS =
    the last token id, ``<|endoftext|>`` for GPT-2). Same ``seed`` → bit-identical weights."""
    from rankkit_ext.lm import tiny_gpt2
    from rankkit_ext.models import RADQ

    return RADQ(tiny_gpt2(vocab_size, d, n_layer, n_head, n_positions, seed=seed))


def train_pair(dataset, cfg: dict, reg_coefs=(0.0, None), seed: int = 0, progress: bool = False):
    """Train one RAD-Q per coefficient in ``reg_coefs`` (None → ``cfg["reg_coef"]``) from the
    same initial weights, seed and data order. Returns ``(models, train_results, init_model)``."""
    from rankkit_ext.training import train

    n_pos = cfg["max_len"] + 1  # + BOS
    init = tiny_radq(dataset.vocab_size, cfg["d"], cfg["n_layer"], cfg["n_head"], n_pos, seed)
    models, results = {}, {}
    for c in reg_coefs:
        c = float(cfg["reg_coef"] if c is None else c)
        m = tiny_radq(dataset.vocab_size, cfg["d"], cfg["n_layer"], cfg["n_head"], n_pos, seed)
        results[c] = train(m, dataset, reg_coef=c, epochs=cfg["epochs"],
                           batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed,
                           max_len=cfg["max_len"], progress=progress)
        models[c] = m
    return models, results, init.eval()


def _summary(R: np.ndarray, cfg: dict, seed: int) -> dict:
    import rankkit as rk
    from rankkit_ext.learned import delta_spread

    curve = rk.rank_curve(R, sizes=[s for s in cfg["sizes"] if s <= len(R)],
                          n_repeats=cfg["n_repeats"], seed=seed)
    s = rk.singular_values(R)
    cutoff = float(s[0] * max(R.shape) * np.finfo(R.dtype).eps)
    return {"rank": int(rk.numerical_rank(R)), "curve": curve.to_dict(),
            "delta_spread": delta_spread(R), "row_mean_abs": float(np.abs(R.mean(1)).mean()),
            "sigma_over_sigma1": (s[:cfg["d"] + 1] / s[0]).tolist(),
            "cutoff_over_sigma1": cutoff / float(s[0]), "shape": list(R.shape)}, curve


def run(out: Path, *, quick: bool = False, reg_coef: float | None = None, seed: int = 0,
        progress: bool = False) -> list[Path]:
    import torch

    import rankkit as rk
    from rankkit_ext.learned import learned_matrix, sample_prefixes
    from rankkit_ext.training import evaluate

    cfg = dict(CONFIGS["quick" if quick else "default"])
    if reg_coef is not None:
        if not reg_coef > 0:
            raise ValueError(f"reg_coef must be > 0 (the regularised run; 0 is always the "
                             f"reference), got {reg_coef}")
        cfg["reg_coef"] = float(reg_coef)
    t_start = time.perf_counter()
    ds = rk.datasets.load(DATASET, tokenizer=TOKENIZER, limit=cfg["limit"],
                          max_len=cfg["max_len"], labels=LABEL)
    prefixes = sample_prefixes(ds, cfg["n_prefixes"], seed)
    with torch.random.fork_rng():
        models, results, init = train_pair(ds, cfg, (0.0, cfg["reg_coef"]), seed, progress)
    runs = {}
    for tag, m, tr in [("init", init, None)] + [(f"reg_coef={c:g}", models[c], results[c])
                                                 for c in models]:
        R = learned_matrix(m, prefixes)
        summ, curve = _summary(R, cfg, seed)
        if tr is not None:
            summ.update(steps=tr.steps, train_seconds=tr.wall_time_s,
                        final_batch_loss_with_reg=tr.train_loss[-1],
                        objective_without_reg=evaluate(m, ds, batch_size=64, max_len=cfg["max_len"]))
        runs[tag] = (summ, curve)
        print(f"{tag}: rank(R̂) = {summ['rank']} of {tuple(R.shape)}, "
              f"curve {curve.ranks.mean(1).tolist()}, Δr̂ spread {summ['delta_spread']:.3g}",
              file=sys.stderr)
    c0, c1 = "reg_coef=0", f"reg_coef={cfg['reg_coef']:g}"

    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    styles = {"init": dict(color="0.6", ls="--"), c0: dict(color="tab:blue"),
              c1: dict(color="tab:orange")}
    for tag, (summ, curve) in runs.items():
        lab = "untrained (step 0)" if tag == "init" else ("no L_reg" if tag == c0 else f"L_reg, {tag}")
        curve.plot(ax, label=f"{lab}: rank {summ['rank']}", **styles[tag])
        sv = np.asarray(summ["sigma_over_sigma1"])
        ax2.semilogy(np.arange(1, sv.size + 1), np.maximum(sv, 1e-12), marker=".", label=lab,
                     **styles[tag])
    ax.axhline(cfg["d"], color="k", lw=0.8, ls="-.", label=f"d = {cfg['d']} (bound of eq. 11)")
    handles, labels = ax.get_legend_handles_labels()
    keep = {lab: h for h, lab in zip(handles, labels, strict=True)}  # one y = x entry
    ax.legend(keep.values(), keep.keys(), fontsize=7)
    ax.set_ylim(0, max(cfg["d"], max(cfg["sizes"]) // 4) + 2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sampled training prefixes N (rows of R̂)")
    ax.set_title("rank(R̂_RAD-Q) vs N (Fig. 7 left)")
    ax2.axhline(runs[c0][0]["cutoff_over_sigma1"], color="k", ls=":", lw=1,
                label="rank cutoff |V|·ε₃₂")
    ax2.set_xlabel("k")
    ax2.set_ylabel("σ_k / σ_1")
    ax2.set_title(f"singular values of R̂ ({cfg['n_prefixes']} × {ds.vocab_size})")
    ax2.legend(fontsize=7)
    caption = (f"RAD-Q (linear head + baseline, random-init GPT-2 config d={cfg['d']}, "
               f"{cfg['n_layer']} layers, {cfg['n_head']} heads, frozen output embeddings) trained "
               f"on {DATASET} (first {cfg['limit']} reviews, {TOKENIZER} tokenizer, "
               f"|V|={ds.vocab_size}, label '{LABEL}', ≤{cfg['max_len']} tokens) with the cumulative "
               f"loss (eq. 12) for {cfg['epochs']} epochs, without and with L_reg (eq. 14, "
               f"coefficient {cfg['reg_coef']:g}), same seed and steps. Left: numerical rank "
               f"(float32 default cutoff, App. D.4) of R̂ over the full vocabulary against the "
               f"number of sampled training prefixes ({cfg['n_repeats']} draws, mean and range). "
               f"Right: σ_k/σ_1 of R̂ with the cutoff. rank(R̂): untrained "
               f"{runs['init'][0]['rank']}, no L_reg {runs[c0][0]['rank']}, with L_reg "
               f"{runs[c1][0]['rank']}; Δr̂ spread {runs[c0][0]['delta_spread']:.3g} → "
               f"{runs[c1][0]['delta_spread']:.3g}.")
    fig.suptitle("L_reg lowers the rank of RAD-Q's learned matrix (paper 002 §4.5)", fontsize=10)
    payload = {
        "experiment": NAME, "paper": "002 §4.5, Fig. 7 (left); eq. 8–10, 12, 14; App. D.4",
        "dataset": DATASET, "label": LABEL, "tokenizer": TOKENIZER, "vocab_size": ds.vocab_size,
        "n_utterances": len(ds), "quick": quick, "seed": seed, "config": cfg,
        "model": {"class": "RADQ", "head": "linear", "baseline": True, "backbone": "GPT2 config, random init",
                  "d": cfg["d"], "n_layer": cfg["n_layer"], "n_head": cfg["n_head"],
                  "n_params": int(sum(p.numel() for p in init.parameters())),
                  "n_trainable": int(sum(p.numel() for p in init.parameters() if p.requires_grad))},
        "runs": {tag: summ for tag, (summ, _) in runs.items()},
        "caption": caption, "wall_seconds": time.perf_counter() - t_start,
    }
    paths = [save_figure(fig, Path(out) / f"{NAME}.png"),
             write_json(payload, Path(out) / f"{NAME}.json")]
    print(caption, file=sys.stderr)
    return paths


def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--reg-coef", type=float, default=None,
                    help="coefficient of L_reg for the regularised run [10]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true", help="tqdm bars while training")
    a = ap.parse_args(argv)
    for p in run(a.out, quick=a.quick, reg_coef=a.reg_coef, seed=a.seed, progress=a.progress):
        print(p)


if __name__ == "__main__":
    main()
