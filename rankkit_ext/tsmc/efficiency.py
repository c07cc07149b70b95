r"""The particle-efficiency study of Kim et al. (2025), §3, Fig. 2: toxicity of twisted SMC
samples against the number of particles K, for every self-distillation generation m.

Every (m, K, run) is one seeded TSMC run whose seed depends on (seed, m, K, run) alone
(:func:`run_seed`), cached as one small JSON file, so an interrupted study resumes and gives
the same numbers as one run straight through. Its statistics (the per-run toxicity, the
per-(m, K) mean and standard error, the pooled estimate of the target's toxicity) are in
:mod:`rankkit_ext.metrics`; ``analyses/tsmc_toxic_story.py`` draws the figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from rankkit._io import atomic_json, read_json

from .._io import state_fingerprint
from ..metrics import weighted_toxicity
from .sampler import tsmc

__all__ = ["run_seed", "particle_efficiency"]


def run_seed(seed: int, generation: int, n_particles: int, run: int) -> int:
    """Seed of one particle-efficiency run, derived from (seed, m, K, r) alone.

    Each run owns its ``torch.Generator``, so a run's result does not depend on which other
    runs were done before it (cached runs can be skipped and the rest resumed unchanged).
    """
    ss = np.random.SeedSequence([int(seed), int(generation), int(n_particles), int(run)])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))  # < 2**63 for manual_seed


def particle_efficiency(res, prompt: list[int], max_new_tokens: int, ks: Sequence[int],
                        runs_per_k: dict[int, int], toxicity: Callable, cache_dir: Path,
                        seed: int = 0, progress: bool | None = None) -> list[dict]:
    """TSMC runs for Fig. 2 of Kim et al. (2025) §3: every generation m of ``res``
    (:class:`~rankkit_ext.tsmc.SelfDistillResult`; its base model p^(m), learned twist ψ^(m)
    and effective potential φ^(m)) × every K in ``ks`` × ``runs_per_k[K]`` seeded runs.

    Each run records :func:`~rankkit_ext.metrics.weighted_toxicity` (``toxicity`` maps the
    run's continuations to p(toxic | s)), log Ẑ, the final ESS and its wall time, and is
    written atomically to ``cache_dir`` under a name holding (m, K, run, seed, T) and a
    fingerprint of the model and twist (:func:`rankkit_ext._io.state_fingerprint`), so an
    interrupted run resumes and a retrained generation is never matched with stale results.
    """
    from rankkit._progress import progress_bar

    cache_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(m, int(k), r) for m in range(len(res.models)) for k in ks
            for r in range(runs_per_k[int(k)])]
    prints = [state_fingerprint(mdl, tw) for mdl, tw in zip(res.models, res.twists, strict=True)]
    out = []
    for m, k, r in progress_bar(jobs, desc="particle efficiency (m, K, run)", progress=progress):
        f = cache_dir / f"m{m}_K{k}_r{r}_s{seed}_T{max_new_tokens}_{prints[m]}.json"
        if f.exists():
            out.append(read_json(f, "particle-efficiency run"))
            continue
        mdl = res.models[m]  # the generator lives where the model samples (CPU unless cuda)
        dev = next(mdl.parameters()).device if isinstance(mdl, torch.nn.Module) else "cpu"
        g = torch.Generator(device=dev).manual_seed(run_seed(seed, m, k, r))
        t0 = time.time()
        run = tsmc(res.models[m], res.twists[m], res.potentials[m], prompt, k, max_new_tokens,
                   generator=g)
        w = run.weights.double().cpu().numpy()
        rec = {"generation": m, "K": k, "run": r,
               "toxicity": weighted_toxicity(w, toxicity(run.sequences())),
               "log_Z": run.log_Z, "ess_final": float(1.0 / (w @ w)),
               "seconds": time.time() - t0}
        atomic_json(f, rec, indent=None)  # an interrupted run leaves no half-written result
        out.append(rec)
    return out
