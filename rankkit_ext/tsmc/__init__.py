"""Twisted SMC for constrained generation: one SMC engine (:mod:`.engine`) with pluggable
proposals (:mod:`.proposals`: twist-induced, reward-guided), sampler, twists, CTL,
self-distillation, exact harness.

Kim et al. (2025), *Improving Constrained Language Generation via Self-Distilled Twisted
Sequential Monte Carlo*; Zhao et al. (2024), *Probabilistic inference in language models via
twisted sequential Monte Carlo* (ICML).

>>> from rankkit_ext.tsmc import tsmc, LinearTwist, toxicity_potential   # doctest: +SKIP
>>> r = tsmc(model, LinearTwist(64, 50257), toxicity_potential(10.0, tok.decode), prompt_ids,
...          n_particles=50, max_new_tokens=20, generator=torch.Generator().manual_seed(0))
"""

from ..metrics import mean_pairwise_cosine, similarity  # the diversity metric, re-exported
from .adapters import EnumerableLM, HFCausalLM, TableLM, as_adapter, prefix_count
from .distill import (
    EffectivePotential,
    SelfDistillResult,
    distill_set_stats,
    finetune_lm,
    self_distill,
    tsmc_samples,
    tsmc_weighted_samples,
)
from .efficiency import particle_efficiency, run_seed
from .engine import SMCRun, smc
from .estimates import Estimate, kl_q_sigma, kl_sigma_q, log_z_lower_bound, log_z_upper_bound
from .exact import ExactTarget, enumerate_target, exact_ctl_loss
from .importance import (
    MIN_ESS,
    ImportanceTarget,
    ISEstimate,
    khat_threshold,
    mixture_log_proposal,
    psis_khat,
    sample_base,
    score_proposal,
)
from .learning import NEGATIVE_PHASES, POSITIVE_PHASES, TwistTrainResult, ctl_loss, train_twist
from .potentials import (
    ClassifierPotential,
    FunctionPotential,
    HardConstraint,
    Potential,
    ProductPotential,
    TablePotential,
    pipeline_scorer,
    toxicity_potential,
)
from .proposals import (
    Proposal,
    ProposalStep,
    RewardGuidedProposal,
    StepContext,
    TwistProposal,
)
from .resampling import RESAMPLING_METHODS, categorical, ess, normalize_log_weights, resample
from .sampler import (
    RejectionResult,
    TSMCResult,
    bootstrap_smc,
    rejection_sample,
    score_sequences,
    sis,
    teacher_force,
    tsmc,
)
from .twists import CopyTwist, LinearTwist, MLPTwist, TableTwist, Twist, TwistHead, as_twist

__all__ = [
    "EnumerableLM", "HFCausalLM", "TableLM", "as_adapter", "prefix_count",
    "Estimate", "kl_q_sigma", "kl_sigma_q", "log_z_lower_bound", "log_z_upper_bound",
    "mean_pairwise_cosine", "similarity",
    "SMCRun", "smc", "Proposal", "ProposalStep", "RewardGuidedProposal", "StepContext",
    "TwistProposal",
    "EffectivePotential", "SelfDistillResult", "finetune_lm", "self_distill", "tsmc_samples",
    "distill_set_stats", "tsmc_weighted_samples",
    "particle_efficiency", "run_seed",
    "ExactTarget", "enumerate_target", "exact_ctl_loss",
    "ISEstimate", "ImportanceTarget", "MIN_ESS", "khat_threshold", "mixture_log_proposal",
    "psis_khat", "sample_base", "score_proposal",
    "NEGATIVE_PHASES", "POSITIVE_PHASES", "TwistTrainResult", "ctl_loss", "train_twist",
    "ClassifierPotential", "FunctionPotential", "HardConstraint", "Potential",
    "ProductPotential", "TablePotential", "pipeline_scorer", "toxicity_potential",
    "RESAMPLING_METHODS", "categorical", "ess", "normalize_log_weights", "resample",
    "RejectionResult", "TSMCResult", "bootstrap_smc", "rejection_sample", "score_sequences",
    "sis", "teacher_force", "tsmc",
    "CopyTwist", "LinearTwist", "MLPTwist", "TableTwist", "Twist", "TwistHead", "as_twist",
]
