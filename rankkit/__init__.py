"""rankkit: rank analysis of reward models for controlled text generation.

The core (this package) turns labelled text into the sparse reward matrix P_Ω(R) of
Troshin et al. (TMLR), reduces it to Ω₂ (Lemma 3), completes it with soft-impute ALS and
certifies its minimal ε-rank. Names are imported lazily so that ``import rankkit`` stays
fast and optional backends are only touched when used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    # data
    "TokenSequences": "sequences",
    "RewardDataset": "sequences",
    "RewardMatrix": "matrix",
    "build_reward_matrix": "trie",
    "reduce_omega2": "omega",
    # rank
    "numerical_rank": "rank",
    "rank_curve": "rank",
    "RankCurve": "rank",
    "singular_values": "rank",
    # completion
    "soft_impute": "softimpute",
    "soft_impute_path": "softimpute",
    "SoftImpute": "softimpute",
    "SoftImputeResult": "softimpute",
    "estimate_min_rank": "minrank",
    "MinRankEstimate": "minrank",
    "exact_completion": "minrank",
    "rank_lower_bound": "bounds",
    "RankLowerBound": "bounds",
    # backends
    "HAS_TORCH": "_backend",
    "HAS_CUPY": "_backend",
    "HAS_CUDA": "_backend",
}
_SUBMODULES = {"synthetic", "datasets", "tokenizers", "testing", "cli"}

__all__ = sorted(set(_LAZY) | _SUBMODULES)


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'rankkit' has no attribute {name!r}")


def __dir__():
    return __all__
