"""rankkit_ext: the torch + transformers layer of rankkit.

Reward models for guided decoding (RAD-V and RAD-Q of Troshin et al., TMLR: §3.2–3.3, eq. 8–9),
their training objectives (eq. 4, 12–14), the matrices they learned (for ``rankkit.numerical_rank``
and ``rankkit.rank_curve``), reward-guided decoding (§2.1, eq. 1–2) with its text scorers
(:mod:`rankkit_ext.scorers`), evaluation metrics (:mod:`rankkit_ext.metrics`) and result tables
and plots (:mod:`rankkit_ext.report`), and the twisted SMC sampler with contrastive twist
learning and self-distillation (Kim et al.; Zhao et al., ICML 2024) in :mod:`rankkit_ext.tsmc`.

Names are imported lazily so that ``import rankkit_ext`` does not import torch until used.
The training-set objective is ``rankkit_ext.evaluate_objective`` (``rankkit_ext.training.evaluate``);
the metrics module that used to be called ``rankkit_ext.evaluate`` is ``rankkit_ext.metrics``.
"""

from __future__ import annotations

from rankkit._lazy import attach

_LAZY = {
    # reward models
    "RewardModel": ("models", "RewardModel"),
    "RADV": ("models", "RADV"),
    "RADQ": ("models", "RADQ"),
    "ScoringState": ("models", "ScoringState"),
    "load_reward_model": ("models", "load_reward_model"),
    "SigmoidScores": ("models", "SigmoidScores"),
    "tokenizer_fingerprint": ("models", "tokenizer_fingerprint"),
    # training
    "train": ("training", "train"),
    "evaluate_objective": ("training", "evaluate"),
    "TrainResult": ("training", "TrainResult"),
    "objective_loss": ("training", "objective_loss"),
    "prefix_weights": ("training", "prefix_weights"),
    "fit_entries": ("training", "fit_entries"),
    "FitResult": ("training", "FitResult"),
    "ConvergenceWarning": ("_warnings", "ConvergenceWarning"),
    # learned matrices, and the paper's question in one call
    "learned_matrix": ("learned", "learned_matrix"),
    "compare_rank": ("compare", "compare_rank"),
    "RankComparison": ("compare", "RankComparison"),
    # base language models
    "tiny_gpt2": ("lm", "tiny_gpt2"),
    "tiny_causal_lm": ("lm", "tiny_causal_lm"),
    "train_lm": ("lm", "train_lm"),
    "TrainLMResult": ("lm", "TrainLMResult"),
    "load_base_lm": ("lm", "load_base_lm"),
    "vader_base_lm": ("lm", "vader_base_lm"),
    # guided decoding
    "RewardGuidedLogitsProcessor": ("guided", "RewardGuidedLogitsProcessor"),
    "MissingBOSError": ("guided", "MissingBOSError"),
    "guided_generate": ("guided", "guided_generate"),
    "GuidedOutput": ("guided", "GuidedOutput"),
    "guided_logits": ("guided", "guided_logits"),
    "select_candidates": ("guided", "select_candidates"),
    "check_compatible": ("guided", "check_compatible"),
    "pretrained_lm": ("pretrained", "pretrained_lm"),
}
_SUBMODULES = {"models", "training", "learned", "compare", "lm", "guided", "scorers", "metrics",
               "report", "tsmc", "pretrained"}

__getattr__, __dir__, __all__ = attach(__name__, _LAZY, _SUBMODULES, globals())
