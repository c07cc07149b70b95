r"""Reward-guided decoding with token-level reward models (RAD-V, RAD-Q).

Paper 002 §2.1, eq. (1)–(2): at each step the base LM's logits are shifted by the
reward model's scores on the top-k (or nucleus) candidates, everything else is removed,

.. math::
    z(v \mid x) = \begin{cases} z_{LM}(v \mid x) + \beta\, \tilde r(v \mid x) & v \in V'(x)\\
                                -\infty & \text{otherwise}\end{cases},\qquad
    \tilde p(\cdot \mid x) = \mathrm{softmax}\, z(\cdot \mid x),

with :math:`\tilde r = \hat r` (``direction=+1``, steer toward the attribute) or
:math:`\tilde r = 1 - \hat r` (``direction=-1``, steer away, e.g. detoxification).

Two entry points share one step function (:func:`guided_logits`):

* :class:`RewardGuidedLogitsProcessor` for any causal LM's ``generate(do_sample=True)``;
* :func:`guided_generate`, a thin batching wrapper over the package's one SMC engine
  (:func:`rankkit_ext.tsmc.engine.smc`) with eq. 1–2 as its proposal
  (:class:`rankkit_ext.tsmc.proposals.RewardGuidedProposal`): plain RAD, importance
  weights, or sequential Monte Carlo toward :math:`p_{LM}(y)\exp(\beta\,\tilde r(y))`,
  with left-padded prompts, the base KV cache (:class:`rankkit_ext.tsmc.adapters.HFCausalLM`)
  and the reward model's incremental state.

BOS convention (the same as :func:`rankkit_ext.lm.train_lm` and
:func:`rankkit_ext.metrics.perplexity`): prompts are token ids (or text) *without* BOS;
the base LM is conditioned on ``[BOS] + prompt`` and the reward model gets the prompt
without BOS and prepends its own, so neither ever sees BOS twice. A prompt that already
starts with BOS is accepted and that BOS is dropped first (:func:`rankkit_ext.lm.strip_bos`),
so prompts written the old way give the same samples. An empty prompt is unconditional
generation.

Reward models follow the ``rankkit_ext.models`` contract: ``score_candidates(input_ids,
attention_mask, candidates, *, label, state) -> (scores (B, k), state)`` with left-padded
prefixes without BOS; a returned ``state`` makes the next call, whose ``input_ids`` extend
the previous ones by one column, incremental (RAD-Q: one pass over the new token, then one
product with the output embeddings; RAD-V: the k candidates against an immutable
expanded copy of the prefix cache).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import LogitsProcessor

from rankkit._progress import progress_bar
from rankkit.sequences import TokenSequences

from ._bos import bos_token_id, strip_bos
from ._candidates import candidate_logits, check_direction, check_rewards, select_candidates
from ._checks import check_prompt_ids, check_real, check_step_values
from .tsmc.adapters import HFCausalLM
from .tsmc.engine import default_resampler, smc
from .tsmc.proposals import RewardGuidedProposal
from .tsmc.resampling import RESAMPLING_METHODS, normalize_log_weights

__all__ = [
    "select_candidates", "guided_logits", "RewardGuidedLogitsProcessor", "MissingBOSError",
    "GuidedOutput", "guided_generate", "check_compatible",
]


# ---------------------------------------------------------------------------------------
# the step function (eq. 1–2); its candidate part (rankkit_ext._candidates) is shared with
# the SMC proposal, and select_candidates is re-exported here, where it is documented
# ---------------------------------------------------------------------------------------
def guided_logits(lm_logits: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor,
                  rewards: torch.Tensor, beta: float, direction: int = 1,
                  clamp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Eq. (1): :math:`z = z_{LM} + \beta\tilde r` on the candidates, :math:`-\infty` elsewhere.

    Parameters
    ----------
    lm_logits : (B, V) base logits.
    candidates, valid : (B, k) from :func:`select_candidates`.
    rewards : (B, k) reward-model scores :math:`\hat r(v \mid x)` of the candidates.
    beta : float
        Guidance strength.
    direction : {+1, -1}
        +1 uses :math:`\hat r`, -1 uses :math:`1 - \hat r`.
    clamp : bool
        Clamp :math:`\hat r` to [0, 1] first, as the reference RAD code does (rewards are
        trained toward responses in [0, 1]).

    Returns
    -------
    z : (B, V) guided logits (float32 or the input's dtype, whichever is wider).
    r_tilde : (B, k) the direction-applied rewards actually added (0 on invalid entries).
    """
    cand_logits, r = candidate_logits(lm_logits, candidates, valid, rewards, beta, direction,
                                       clamp)
    z = torch.full(lm_logits.shape, -math.inf, dtype=cand_logits.dtype, device=lm_logits.device)
    z.scatter_(-1, candidates, cand_logits)
    return z, r


def _fingerprint(tokenizer) -> str:
    from rankkit_ext.models import tokenizer_fingerprint  # one definition, shared with H6's models

    return tokenizer_fingerprint(tokenizer)


def check_compatible(base, reward_model=None, *, vocab_size: int | None = None, tokenizer=None) -> None:
    """Refuse a base model / reward model pair that do not share one tokenizer.

    Guided decoding adds :math:`\\hat r(v \\mid x)` to the base logit of the *same token
    id* ``v`` (paper 002 §4.1: "a smaller finetuned reward model with the same
    tokenizer"); with two tokenizers the ids mean different strings and the guidance is
    silently wrong. Checks the base vocabulary size (``vocab_size``, else the number of
    logits of ``base``'s output layer, else ``base.config.vocab_size``) against
    ``reward_model.vocab_size`` and, when ``tokenizer`` is given, its fingerprint against
    ``reward_model.tokenizer_fingerprint``.

    Parameters
    ----------
    base : transformers causal LM, or the reward model
        ``check_compatible(base, reward_model)`` checks the pair;
        ``check_compatible(reward_model, vocab_size=…, tokenizer=…)`` (one model) checks
        the reward model against a vocabulary size and tokenizer given directly.
    reward_model : RewardModel, optional
    vocab_size : int, optional
        The base's number of logits per step (read from ``base`` when it is a model).
    tokenizer : optional
        The base tokenizer.

    Raises
    ------
    ValueError
        Naming both vocabulary sizes or both tokenizer fingerprints.
    """
    if reward_model is None:
        reward_model = base
    elif vocab_size is None:
        vocab_size = _n_logits(base)
    rv = getattr(reward_model, "vocab_size", None)
    if vocab_size is not None and rv is not None and int(vocab_size) != int(rv):
        raise ValueError(
            f"tokenizer mismatch: the base model has {vocab_size} logits per step but the "
            f"reward model scores a vocabulary of {rv}; train the reward model with the base "
            f"model's tokenizer (paper 002 §4.1 uses one tokenizer for both)")
    fp = getattr(reward_model, "tokenizer_fingerprint", None)
    if tokenizer is None:
        return
    if fp and str(fp).startswith("sha256:"):
        mine = _fingerprint(tokenizer)
        if mine != fp:
            raise ValueError(
                f"tokenizer mismatch: the base tokenizer's fingerprint {mine[:20]}… differs "
                f"from the reward model's {str(fp)[:20]}…; use the tokenizer the reward model "
                f"was trained with")
    elif rv is not None and len(tokenizer) != int(rv):
        # the reward model carries no vocabulary hash: the size is all we can compare
        raise ValueError(f"tokenizer mismatch: the base tokenizer has {len(tokenizer)} tokens, "
                         f"the reward model's vocabulary {rv}")


def _n_logits(base) -> int | None:
    """Logits per step of a causal LM: its output layer's rows, else ``config.vocab_size``."""
    head = getattr(base, "get_output_embeddings", None)
    layer = head() if callable(head) else None
    if layer is not None and getattr(layer, "weight", None) is not None:
        return int(layer.weight.shape[0])
    size = getattr(getattr(base, "config", None), "vocab_size", None)
    return None if size is None else int(size)


# ---------------------------------------------------------------------------------------
# LogitsProcessor for model.generate
# ---------------------------------------------------------------------------------------
class MissingBOSError(ValueError):
    """``generate``'s ``input_ids`` lack the base LM's BOS.

    The package's BOS convention conditions the base LM on ``[BOS] + prompt`` (it is
    trained and scored that way, :func:`rankkit_ext.lm.train_lm`,
    :func:`rankkit_ext.metrics.perplexity`). :func:`guided_generate` adds that BOS itself,
    but ``model.generate`` runs on the ids it is given and a logits processor cannot change
    them, so a prompt tokenized without BOS (GPT-2's tokenizer never adds one) silently
    conditions the base LM on a context it never saw in training. The processor refuses it
    instead. A :class:`ValueError`, so code that catches bad-argument errors keeps working.
    """


class RewardGuidedLogitsProcessor(LogitsProcessor):
    r"""Eq. (1) as a ``transformers`` ``LogitsProcessor`` for ``generate(do_sample=True)``.

    Parameters
    ----------
    reward_model : RewardModel
        A ``rankkit_ext.models`` reward model (RAD-V or RAD-Q) or anything with the same
        ``score_candidates`` contract.
    beta : float
        Guidance strength :math:`\beta`.
    top_k, top_p : candidate set V' (see :func:`select_candidates`).
    direction : {+1, -1}
        Steer toward (:math:`\hat r`) or away from (:math:`1 - \hat r`) the attribute.
    label : int or str
        Which reward head to use (``"toxicity"`` is head 0 in the paper's 7-head model).
    pad_token_id : int, optional
        Leading runs of this id are left padding and masked for the reward model
        (``generate`` gives the processor no attention mask). ``None`` means no padding.
    tokenizer : optional
        Base tokenizer, checked against the reward model's fingerprint.
    bos_token_id : int, optional
        ``generate`` runs on ``[BOS] + prompt`` (the base LM's context, see the module
        notes); this BOS, when it is a row's first real token, is masked for the reward
        model, which prepends its own. Default: the reward model's ``bos_token_id``.
    use_cache : bool
        Pass the reward model's state between steps (False recomputes every prefix;
        for testing that both agree).
    clamp : bool
        Clamp rewards to [0, 1] (reference behaviour).
    check_bos : bool, default True
        Refuse ``input_ids`` whose rows do not start with ``bos_token_id`` (after the left
        padding) with :class:`MissingBOSError`, checked on the first step of each
        ``generate`` call. ``False`` conditions the base LM without BOS deliberately.

    Raises
    ------
    MissingBOSError
        On the first step of a ``generate`` call whose ``input_ids`` have a row whose first
        real token is not the BOS id. When ``pad_token_id == bos_token_id`` (GPT-2 often
        pads with ``<|endoftext|>``, its BOS) padding and BOS look alike: a row then only
        fails when its very first column is not that id.

    Notes
    -----
    The processor is stateless across ``generate`` calls: it keeps the reward-model state
    only while each call's ``input_ids`` extend the previous call's by exactly one column
    (same rows, same prefix); anything else (a new ``generate``, a new batch, a different
    prompt) starts from ``state=None``. Rows never share state: the reward model's state
    is per row. Pass ``top_k=0`` (or ``top_k=None``) to ``generate`` so that the model's
    default top-k warper does not cut the candidate set further.

    Prompts for ``generate`` carry the BOS by hand (GPT-2's tokenizer does not add it, not
    even with ``add_special_tokens=True``): ``rankkit_ext.lm.with_bos(ids, bos)`` gives
    ``[BOS] + ids``; then left-pad the rows.

    Examples
    --------
    >>> from rankkit_ext.lm import bos_token_id, with_bos               # doctest: +SKIP
    >>> bos = bos_token_id(base)                                         # doctest: +SKIP
    >>> rows = [with_bos(tok(t, add_special_tokens=False)["input_ids"], bos) for t in texts]
    ... # doctest: +SKIP
    >>> enc = tok.pad({"input_ids": rows}, padding_side="left", return_tensors="pt")
    ... # doctest: +SKIP
    >>> proc = RewardGuidedLogitsProcessor(radq, beta=10, top_k=20, direction=-1,
    ...                                    pad_token_id=tok.pad_token_id)  # doctest: +SKIP
    >>> out = base.generate(**enc, do_sample=True, top_k=0,
    ...                     logits_processor=[proc], max_new_tokens=20)   # doctest: +SKIP
    """

    def __init__(self, reward_model, beta: float, top_k: int | None = 20,
                 top_p: float | None = None, direction: int = 1, label: int | str = 0,
                 pad_token_id: int | None = None, tokenizer=None, use_cache: bool = True,
                 clamp: bool = True, bos_token_id: int | None = None,
                 check_bos: bool = True):
        self.reward_model = reward_model
        self.beta = check_real("beta", beta, meaning="the guidance strength of eq. 1")
        self.top_k, self.top_p = top_k, top_p
        self.direction = check_direction(direction)
        self.label = label
        self.pad_token_id = pad_token_id
        self.bos_token_id = (bos_token_id if bos_token_id is not None
                             else getattr(reward_model, "bos_token_id", None))
        self.use_cache = use_cache
        self.clamp = clamp
        self.check_bos = bool(check_bos)
        select_candidates(torch.zeros(1, 2), top_k if top_k is None else min(top_k, 2), top_p)
        check_compatible(reward_model, tokenizer=tokenizer)
        self._state = None
        self._last: torch.Tensor | None = None

    def _mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = self._mask_padding(input_ids)
        if self.bos_token_id is not None and input_ids.shape[1]:
            # the base's BOS (first real token) is hidden: the reward model adds its own
            first = mask.argmax(1)
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)
            is_bos = (mask[rows, first] == 1) & (input_ids[rows, first] == self.bos_token_id)
            mask[rows[is_bos], first[is_bos]] = 0
        return mask

    def _require_bos(self, input_ids: torch.Tensor) -> None:
        """Raise :class:`MissingBOSError` naming the first row whose first real token is not
        BOS (with ``pad_token_id == bos_token_id``: whose first column is not that id)."""
        bos, pad = self.bos_token_id, self.pad_token_id
        if not self.check_bos or bos is None or input_ids.shape[1] == 0:
            return
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        if pad is not None and int(pad) == int(bos):
            first = torch.zeros_like(rows)
            missing = input_ids[:, 0] != bos
        else:
            mask = self._mask_padding(input_ids)
            first = mask.argmax(1)
            missing = (mask.sum(1) > 0) & (input_ids[rows, first] != bos)
        if bool(missing.any()):
            b = int(torch.nonzero(missing)[0])
            t = int(input_ids[b, first[b]])
            raise MissingBOSError(
                f"generate's input_ids lack BOS: row {b} starts with token id {t}, not the BOS "
                f"id {int(bos)}. The base LM is conditioned on [BOS] + prompt (the package's "
                f"BOS convention) and a logits processor cannot change generate's input; add "
                f"it to every prompt before padding, e.g. rankkit_ext.lm.with_bos(ids, {int(bos)})"
                f" (GPT-2's tokenizer never adds it), or pass bos_token_id= if the base LM's "
                f"BOS is not the reward model's, or check_bos=False to generate without BOS "
                f"on purpose")

    def _mask_padding(self, input_ids: torch.Tensor) -> torch.Tensor:
        """1 on every token from the first non-pad one on (leading runs of ``pad_token_id``
        are left padding; all ones without a pad id)."""
        if self.pad_token_id is None:
            return torch.ones_like(input_ids)
        return (torch.cumsum((input_ids != self.pad_token_id).long(), dim=1) > 0).long()

    def _continues(self, input_ids: torch.Tensor) -> bool:
        last = self._last
        return (self.use_cache and self._state is not None and last is not None
                and input_ids.shape[0] == last.shape[0]
                and input_ids.shape[1] == last.shape[1] + 1
                and input_ids.device == last.device
                and bool(torch.equal(input_ids[:, :-1], last)))

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_compatible(self.reward_model, vocab_size=scores.shape[-1])
        if self._continues(input_ids):
            state = self._state
        else:  # the first step of a generate call: its prompt must start with BOS
            self._require_bos(input_ids)
            state = None
        cand, valid = select_candidates(scores, self.top_k, self.top_p)
        r, state = self.reward_model.score_candidates(
            input_ids, self._mask(input_ids), cand, label=self.label, state=state)
        live = torch.ones(scores.shape[0], dtype=torch.bool, device=scores.device)
        where = f"prefix length {input_ids.shape[1]}"
        check_step_values(scores, live, "base model logit", where, row=lambda b: f"row {b}",
                          fix="check the base model")
        check_rewards(r, valid, cand, live, where, lambda b: f"row {b}")
        self._state, self._last = state, input_ids.clone()
        z, _ = guided_logits(scores, cand, valid, r, self.beta, self.direction, self.clamp)
        return z.to(scores.dtype)


# ---------------------------------------------------------------------------------------
# rankkit's own loop, plain RAD or SMC proposal
# ---------------------------------------------------------------------------------------
@dataclass
class GuidedOutput:
    """Result of :func:`guided_generate` for P prompts × n samples.

    Attributes
    ----------
    tokens : list (P) of list (n) of ndarray
        Generated token ids per sample, without the prompt, cut after EOS (EOS kept).
    texts : list of list of str, or None
        Decoded continuations when a tokenizer was given.
    log_weights : ndarray (P, n) or None
        SMC / importance log-weights toward :math:`p_{LM}(y)\\exp(\\beta\\tilde r(y))`
        (None for plain RAD without ``weights=True``).
    log_q, log_p_lm : ndarray (P, n)
        Log-probability of each continuation under the proposal and under the base LM.
    final_reward : ndarray (P, n)
        :math:`\\tilde r` of the last generated token given its prefix (the reward model's
        estimate for the whole continuation).
    ancestors : list of ndarray
        For SMC, the ancestor indices of every resampling event (per prompt group).
    n_tokens : int
        Decoding steps × rows actually computed.
    seconds, seconds_base, seconds_reward : float
        Wall time in the whole loop, in base forwards, in reward-model calls.
    """

    tokens: list[list[np.ndarray]]
    texts: list[list[str]] | None
    log_weights: np.ndarray | None
    log_q: np.ndarray
    log_p_lm: np.ndarray
    final_reward: np.ndarray
    ancestors: list[np.ndarray] = field(default_factory=list)
    n_tokens: int = 0
    seconds: float = 0.0
    seconds_base: float = 0.0
    seconds_reward: float = 0.0

    @property
    def time_per_token(self) -> float:
        """Seconds per generated token (per row-step), the unit of paper 002 Fig. 8."""
        return self.seconds / max(self.n_tokens, 1)


def _as_prompt_ids(prompts, tokenizer) -> list[list[int]]:
    if isinstance(prompts, TokenSequences):
        return [p.tolist() for p in prompts]
    if isinstance(prompts, str):
        prompts = [prompts]
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError(f"prompt {i} is text; pass tokenizer= or token ids")
            p = tokenizer(p, add_special_tokens=False)["input_ids"]
        out.append([int(t) for t in p])
    return out


@torch.no_grad()
def guided_generate(base, reward_model, prompts, beta: float, top_k: int | None = 20,
                    n_samples: int = 1, max_new_tokens: int = 20,
                    generator: torch.Generator | int | None = 0, *, top_p: float | None = None,
                    direction: int = 1, label: int | str = 0, tokenizer=None,
                    eos_token_id: int | None = None, pad_token_id: int | None = None,
                    batch_size: int = 25, do_sample: bool = True, clamp: bool = True,
                    use_reward_cache: bool = True, mix: float = 0.0, weights: bool = False,
                    resample_threshold: float | None = None, resample_method: str = "systematic",
                    progress: bool | None = None) -> GuidedOutput:
    r"""Sample continuations with reward-guided decoding (paper 002 eq. 1–2).

    Prompts are left padded and batched whole groups at a time (``batch_size // n_samples``
    prompts × ``n_samples`` rows); each prompt runs once through the base model, its KV
    cache is shared by its samples and extended with explicit position ids, the reward
    model keeps its own state (incremental per step). The loop is the SMC engine
    (:func:`rankkit_ext.tsmc.engine.smc`) with the proposal
    :class:`~rankkit_ext.tsmc.proposals.RewardGuidedProposal`; the target's terminal
    potential is the last twist, :math:`\phi = \exp(\beta\tilde r_T)`. Sampling uses
    ``generator`` only (inverse CDF in float64), so a seed reproduces the samples.

    Parameters
    ----------
    base : causal LM (``transformers``), e.g. from :func:`rankkit_ext.lm.load_base_lm`.
    reward_model : RAD-V / RAD-Q reward model (``score_candidates`` contract), or None
        for unguided top-k / nucleus sampling in the same loop (the baseline of Fig. 8).
    prompts : list of str (with ``tokenizer``), list of token-id lists, or TokenSequences.
        Without BOS (a leading BOS is dropped; see the module notes); an empty prompt
        samples unconditionally from ``[BOS]``.
    beta, top_k, top_p, direction, label, clamp : see :func:`guided_logits`.
    n_samples : int
        Continuations per prompt (25 in paper 002 §4.2). For SMC these are the particles.
    max_new_tokens : int
    generator : torch.Generator or int
        Source of randomness (an int seeds a new CPU generator).
    eos_token_id, pad_token_id : int, optional
        Default to the base config's; a row that emits EOS stops (later steps force pad).
    batch_size : int
        Rows (prompt × sample) per forward pass; whole prompt groups are kept together.
    do_sample : bool
        False takes the argmax of the guided logits (deterministic; for tests).
    mix : float in [0, 1)
        Proposal :math:`q = (1-\epsilon)\tilde p + \epsilon\, p_{LM}` with
        :math:`\epsilon` = ``mix``. Plain RAD is ``mix=0``. With ``mix > 0`` every token
        of the vocabulary has positive proposal probability, so the importance weights
        below are absolutely continuous w.r.t. the target (top-k alone is not).
    weights : bool
        Return importance log-weights toward the target
        :math:`\sigma(y) \propto p_{LM}(y)\exp(\beta\tilde r(y))`, with twists
        :math:`\psi_t = \exp(\beta\tilde r(x_t \mid x_{<t}))`: the incremental weight is

        .. math:: \log w_t = \log p_{LM}(x_t\mid x_{<t}) + \beta\tilde r_t
                  - \log q(x_t \mid x_{<t}) - \beta\tilde r_{t-1},

        which telescopes to :math:`\log p_{LM}(y) + \beta\tilde r(y) - \log q(y)`. A
        sampled token outside V' (possible only when ``mix > 0``) is scored with one extra
        reward-model call for the rows that need it.
    resample_threshold : float, optional
        SMC: resample a prompt's particles (within its group) when ESS < threshold ×
        n_samples, after every step but the last. None = importance sampling only.
    resample_method : {"systematic", "multinomial", "stratified", "residual"}

    Returns
    -------
    GuidedOutput
    """
    direction = check_direction(direction)
    beta = check_real("beta", beta, meaning="the guidance strength of eq. 1")
    mix = check_real("mix", mix, low=0.0, high=1.0, high_open=True,
                     meaning="share of the base distribution in the proposal")
    if resample_threshold is not None:
        resample_threshold = check_real("resample_threshold", resample_threshold, low=0.0,
                                        high=1.0, meaning="a fraction of n_samples")
    if n_samples < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"n_samples, max_new_tokens and batch_size must be >= 1; got "
                         f"{n_samples}, {max_new_tokens}, {batch_size}")
    if resample_threshold is not None:
        weights = True
    select_candidates(torch.zeros(1, 2), None if top_k is None else min(top_k, 2), top_p)
    if reward_model is not None:
        check_compatible(base, reward_model, vocab_size=base.config.vocab_size, tokenizer=tokenizer)
    device = next(base.parameters()).device
    if resample_method not in RESAMPLING_METHODS:
        raise ValueError(f"resample_method must be one of {RESAMPLING_METHODS}; got "
                         f"{resample_method!r}")
    if isinstance(generator, int) or generator is None:
        generator = torch.Generator(device=device).manual_seed(0 if generator is None else generator)
    cfg = base.config
    eos = eos_token_id if eos_token_id is not None else getattr(cfg, "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0]
    pad = pad_token_id if pad_token_id is not None else (
        getattr(cfg, "pad_token_id", None) if getattr(cfg, "pad_token_id", None) is not None else eos)
    pad = 0 if pad is None else int(pad)
    base.eval()
    if reward_model is not None and hasattr(reward_model, "eval"):
        reward_model.eval()

    bos = bos_token_id(base)
    # one convention: prompts without BOS; the adapter conditions the base on [BOS] + prompt,
    # the reward model gets the prompt and prepends its own BOS
    prompt_ids = [strip_bos(p, bos) for p in _as_prompt_ids(prompts, tokenizer)]
    if not prompt_ids:
        raise ValueError("prompts is empty")
    base_vocab = int(base.config.vocab_size)
    for i, p in enumerate(prompt_ids):
        if p:
            check_prompt_ids(p, base_vocab, f"prompt {i}")
    # raw logits (model dtype) from the one HF adapter: the proposal needs only the top-k
    # and one logsumexp per row, never a float64 (rows, |V|) copy
    lm = HFCausalLM(base, eos_token_id=None, output="logits", pad_token_id=pad,
                    bos_token_id=bos)
    proposal = RewardGuidedProposal(reward_model, beta, top_k, top_p, direction, label, clamp,
                                    mix, do_sample, use_reward_cache, pad)
    P = len(prompt_ids)
    per_batch = max(1, batch_size // n_samples)
    out_tokens: list[list[np.ndarray]] = []
    shape = (P, n_samples)
    log_q, log_p, fin_r = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    logw_all = np.zeros(shape) if weights else None
    ancestors: list[np.ndarray] = []
    t_base = 0.0
    n_tok = 0
    # one particle per prompt cannot be resampled (the old loop never tried)
    threshold = resample_threshold if n_samples > 1 else None
    chunks = range(0, P, per_batch)
    chunks = progress_bar(chunks, progress=progress, desc="guided_generate")
    t_start = time.perf_counter()
    for c0 in chunks:
        group = prompt_ids[c0:c0 + per_batch]
        G = len(group)

        def row(b, c0=c0):
            return f"prompt {c0 + b // n_samples}, sample {b % n_samples} (row {b})"

        run = smc(lm, proposal, group, n_samples, max_new_tokens, potential=None,
                  ess_threshold=threshold, resampler=default_resampler(resample_method),
                  generator=generator, eos_token_id=eos, pad_token_id=pad, track_ess=False,
                  row_name=row)
        t_base += run.seconds_lm
        n_tok += run.n_live
        ancestors += [a.cpu().numpy() for a in run.ancestors]
        gen_np, n_np = run.tokens.cpu().numpy(), run.lengths.cpu().numpy()
        lq, lp = run.step_log_q.sum(1), run.step_log_p.sum(1)
        for g in range(G):
            sl = slice(g * n_samples, (g + 1) * n_samples)
            out_tokens.append([gen_np[i, :n_np[i]].copy() for i in range(sl.start, sl.stop)])
            log_q[c0 + g] = lq[sl].cpu().numpy()
            log_p[c0 + g] = lp[sl].cpu().numpy()
            fin_r[c0 + g] = run.aux["reward"][sl].cpu().numpy()
            if weights:
                logw_all[c0 + g] = run.log_weights[sl].cpu().numpy()
        if weights:  # refuse log-weights too large to normalise (same rule as the SMC)
            normalize_log_weights(run.log_weights.view(G, n_samples))
    t_all = time.perf_counter() - t_start
    texts = None
    if tokenizer is not None:
        texts = [[tokenizer.decode(t.tolist(), skip_special_tokens=True) for t in row]
                 for row in out_tokens]
    return GuidedOutput(out_tokens, texts, logw_all, log_q, log_p, fin_r, ancestors, n_tok,
                        t_all, t_base, proposal.seconds_reward)
