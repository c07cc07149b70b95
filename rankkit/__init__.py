"""rankkit: rank analysis of reward models for controlled text generation.

The core (this package) turns labelled text into the sparse reward matrix P_Ω(R) of
Troshin et al. (TMLR), reduces it to Ω₂ (Lemma 3), completes it with soft-impute ALS and
certifies its minimal ε-rank. Names are imported lazily so that ``import rankkit`` stays
fast and optional backends are only touched when used.
"""

from __future__ import annotations

from ._lazy import attach

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
    "SoftImpute": "estimators",
    "SoftImputeResult": "factors",
    "FixedRankResult": "factors",
    "LowRankFit": "factors",
    "estimate_min_rank": "minrank",
    "MinRankEstimate": "minrank",
    "exact_completion": "exact",
    "fixed_rank_fit": "lowrank",
    "FixedRank": "estimators",
    "certificate_scale": "minrank",
    "LabelScaleWarning": "_warnings",
    "observed_mse": "softimpute",
    "as_reward_matrix": "matrix",
    "rank_lower_bound": "bounds",
    "RankLowerBound": "bounds",
    "eps_rank_lower_bound": "bounds",
    "EpsRankLowerBound": "bounds",
    # backends
    "HAS_TORCH": "_backend",
    "HAS_CUPY": "_backend",
    "HAS_CUDA": "_backend",
}
_SUBMODULES = {"synthetic", "datasets", "tokenizers", "testing", "cli", "distributed"}

__getattr__, __dir__, __all__ = attach(
    __name__, {name: (module, name) for name, module in _LAZY.items()}, _SUBMODULES, globals())
