r"""One call for the paper's question: does this reward model have the rank its data needs?

Paper 002 compares three numbers (§3.1, Fig. 2 / Fig. 9, Table 2):

* the **learned rank** of the learned matrix :math:`\hat R` on N prefixes sampled from the
  data (rows) and the vocabulary (columns), counted two ways: above the measured noise floor
  of the extraction pipeline (:class:`rankkit_ext.learned.NoiseFloor`:
  :math:`\#\{\sigma_k > c\max_b\|E_b\|_2\}`, E_b the difference to the same matrix
  extracted with another batching and in float64), and with the App. D.4 cutoff
  :math:`\sigma_i > \sigma_1\max(N, m)\,\varepsilon_{\text{dtype}}` (NumPy's default,
  which ignores how :math:`\hat R` was computed: over a 50,257-token vocabulary in float32 it drops every
  singular value below ~0.6 % of σ₁);
* the model's **d**: RAD-Q's :math:`\hat R = H(w\mathbf 1^\top + WE)` has
  :math:`\operatorname{rank}\hat R\le d` (eq. 10–11), RAD-V's is not limited by d (the
  candidate passes through every layer, App. D.1);
* the data's **certified bracket**: :func:`rankkit.estimate_min_rank` gives an exact lower
  bound on :math:`\operatorname{minrank}_\Omega(R)` (ε = 0) and a certified upper bound on
  the ε-rank :math:`\operatorname{minrank}_{\Omega,\varepsilon}(R)`.

:func:`compare_rank` computes all three and :class:`RankComparison` states what follows.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["compare_rank", "RankComparison"]


@dataclass
class RankComparison:
    """The learned rank of a reward model, its d and the data's certified minimal rank.

    Attributes
    ----------
    model_kind : {"RADQ", "RADV"}
    hidden_size : int
        d, the width of the model's hidden state h(x).
    rank_bound : int or None
        What the architecture allows: ``model.rank_bound`` for RAD-Q (d, eq. 10–11; d + 1
        with the MLP head and the baseline), None for RAD-V (its rank is not limited by d,
        App. D.1).
    learned_rank : int
        Numerical rank of :math:`\\hat R` (``rankkit.numerical_rank``, App. D.4 cutoff).
    rank_at_floor : int or None
        #{σ_k > c·floor}: the singular values the extraction resolves
        (:meth:`rankkit_ext.learned.NoiseFloor.rank`); None when ``noise_floor=False``.
    noise_floor : rankkit_ext.learned.NoiseFloor or None
        The measured floor (‖E_b‖₂ per comparison, c).
    n_prefixes, n_columns : int
        Shape of :math:`\\hat R`: N prefixes sampled from the rows of P_Ω(R) (all of them
        when the data has fewer) × the scored token columns.
    dtype : str
        dtype of :math:`\\hat R` (sets ε of the cutoff: float32 for a float32 model).
    singular_values : numpy.ndarray
        Of :math:`\\hat R`, descending.
    cutoff : float
        :math:`\\sigma_1\\max(N, m)\\,\\varepsilon`, the threshold behind ``learned_rank``.
    data_lower : int
        Exact lower bound on :math:`\\operatorname{minrank}_\\Omega(R)` (ε = 0).
    data_eps_lower : int
        Proved lower bound on the ε-rank over Ω₂ (Eckart–Young on fully observed blocks).
    data_upper : int or None
        Certified upper bound on :math:`\\operatorname{minrank}_{\\Omega,\\varepsilon}(R)`
        (None when nothing certified).
    eps : float
        ε of the certificate (MSE over Ω₂).
    label : int or str
    estimate : rankkit.MinRankEstimate
        The full certificate (``estimate.summary()``).
    prefix_rows : numpy.ndarray
        Rows of P_Ω(R) whose prefixes are the rows of :math:`\\hat R` (for reproduction).
    seconds_learned, seconds_estimate : float
    """

    model_kind: str
    hidden_size: int
    rank_bound: int | None
    learned_rank: int
    n_prefixes: int
    n_columns: int
    dtype: str
    singular_values: np.ndarray = field(repr=False)
    cutoff: float
    data_lower: int
    data_upper: int | None
    eps: float
    label: int | str
    estimate: object = field(repr=False)
    prefix_rows: np.ndarray = field(repr=False)
    seconds_learned: float = 0.0
    seconds_estimate: float = 0.0
    data_eps_lower: int = 0
    rank_at_floor: int | None = None
    noise_floor: object = field(default=None, repr=False)

    @property
    def learned(self) -> int:
        """The rank this report uses: above the noise floor when measured, else the cutoff's."""
        return self.learned_rank if self.rank_at_floor is None else self.rank_at_floor

    @property
    def verdict(self) -> str:
        """What the numbers imply about the model's capacity on this data."""
        d, lo, up = self.hidden_size, self.data_lower, self.data_upper
        if self.rank_bound is None:
            need = (f"the data's ε-rank is ≤ {up}" if up is not None
                    else "no ε-rank certified for the data")
            how = ("above its noise floor" if self.rank_at_floor is not None
                   else "by NumPy's cutoff")
            return (f"RAD-V: the rank of R̂ is not limited by d = {d} (App. D.1); the learned "
                    f"matrix has rank {self.learned} {how}, {need}")
        b = self.rank_bound  # d, or d + 1 for the MLP head with the baseline
        what = "d" if b == d else "d + 1"
        if b < self.data_eps_lower:
            return (f"{what} = {b} < {self.data_eps_lower} ≤ minrank_Ω₂,ε(R): RAD-Q (rank R̂ ≤ {what}) "
                    f"cannot fit the observed entries of Ω₂ to MSE ≤ ε = {self.eps:g} (Eckart–Young)")
        if b < lo:
            return (f"{what} = {b} < {lo} ≤ minrank_Ω(R): RAD-Q (rank R̂ ≤ {what}) cannot fit "
                    f"the observed entries exactly")
        if up is not None and b >= up:
            return (f"{what} = {b} ≥ {up} ≥ minrank_Ω,ε(R): a rank-{b} matrix fits the observed "
                    f"entries to MSE ≤ ε = {self.eps:g}, so rank does not limit RAD-Q here")
        return (f"{what} = {b} lies between the certified bounds ({lo} ≤ minrank_Ω(R), "
                f"minrank_Ω,ε(R) ≤ {up}): the certificates do not decide")

    def summary(self) -> str:
        bound = ("rank(R̂) not limited by d (App. D.1)" if self.rank_bound is None
                 else f"rank(R̂) ≤ d = {self.hidden_size} (eq. 10–11)"
                 if self.rank_bound == self.hidden_size
                 else f"rank(R̂) ≤ d + 1 = {self.rank_bound} (MLP head + baseline)")
        up = "none certified" if self.data_upper is None else f"≤ {self.data_upper}"
        lines = [
            f"rank comparison ({self.model_kind}, label {self.label!r})",
            f"  learned R̂: {self.n_prefixes} prefixes × {self.n_columns} tokens ({self.dtype}), "
            + (f"rank {self.rank_at_floor} above the extraction's noise floor (σ > "
               f"{self.noise_floor.safety:g} × {self.noise_floor.floor[-1]:.3g}), "
               if self.rank_at_floor is not None else "")
            + f"numerical rank {self.learned_rank} (σ > {self.cutoff:.3g}, App. D.4)",
            f"  model: d = {self.hidden_size}, {bound}",
            f"  data: minrank_Ω(R) ≥ {self.data_lower} (exact, ε = 0); "
            f"{self.data_eps_lower} ≤ minrank_Ω,ε(R) {up} (ε = {self.eps:g})",
            f"  {self.verdict}",
        ]
        if self.rank_bound is not None and self.learned > self.rank_bound:
            lines.append(f"  note: learned rank {self.learned} > {self.rank_bound}: singular values "
                         f"the architecture forbids, i.e. rounding in the matrix products above "
                         f"the threshold (compare the singular_values)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict:
        return {
            "model_kind": self.model_kind, "hidden_size": self.hidden_size,
            "rank_bound": self.rank_bound, "learned_rank": self.learned_rank,
            "rank_at_floor": self.rank_at_floor,
            "noise_floor": None if self.noise_floor is None else self.noise_floor.to_dict(),
            "n_prefixes": self.n_prefixes, "n_columns": self.n_columns, "dtype": self.dtype,
            "singular_values": self.singular_values.tolist(), "cutoff": self.cutoff,
            "data_lower": self.data_lower, "data_eps_lower": self.data_eps_lower,
            "data_upper": self.data_upper, "eps": self.eps,
            "label": self.label, "verdict": self.verdict,
            "prefix_rows": self.prefix_rows.tolist(),
            "seconds_learned": self.seconds_learned, "seconds_estimate": self.seconds_estimate,
        }


def _label_index(label, names, what: str) -> int:
    if isinstance(label, str):
        if label not in names:
            raise KeyError(f"label {label!r} is not among the {what}'s labels {list(names)}")
        return list(names).index(label)
    i = int(label)
    if not 0 <= i < len(names):
        raise IndexError(f"label={i} is out of range for the {what}'s labels {list(names)}")
    return i


def compare_rank(model, dataset, *, n_prefixes: int = 256, vocab=None, label: int | str = 0,
                 eps: float = 1e-6, seed: int = 0, estimate=None, tokenizer="gpt2",
                 batch_size: int = 64, candidate_batch: int = 4096, noise_floor: bool = True,
                 progress: bool = False, **estimate_kwargs) -> RankComparison:
    r"""The learned matrix's numerical rank, the model's d and the data's certified bracket.

    Parameters
    ----------
    model : RADV or RADQ
        A (trained) reward model; its vocabulary must cover the dataset's tokens.
    dataset : RewardDataset or anything :func:`rankkit.datasets.as_dataset` accepts
        (a preset such as ``"vader:tweets"``, a file, ``(texts, labels)`` …; text is
        tokenized with ``tokenizer``, which must be the model's).
    n_prefixes : int, default 256
        N: rows of :math:`\hat R`, a uniformly random N-subset of the distinct prefixes of
        the data (the rows of P_Ω(R), the empty prefix included; all of them when fewer),
        :math:`\Pr(S) = \binom{|X|}{N}^{-1}`: the law of
        :func:`rankkit_ext.learned.sample_prefixes`, §3.1.2 / Fig. 2.
    vocab : array_like of int, optional
        Column token ids of :math:`\hat R`; default the whole vocabulary. RAD-V costs
        N·len(columns) cached single-token passes, so restrict it for large vocabularies (the
        rank of a column subset is a lower bound on the full matrix's).
    label : int or str
        The reward head, and the dataset's response column (by name when a str).
    eps : float, default 1e-6
        ε of the data's certificate (:func:`rankkit.estimate_min_rank`).
    seed : int
        Seeds the prefix sample (``numpy.random.default_rng(seed)``) and the certificate.
    estimate : rankkit.MinRankEstimate, optional
        A certificate already computed for this dataset and label (skips the search).
    tokenizer
        For a text ``dataset`` only.
    batch_size, candidate_batch, progress
        Passed to :func:`rankkit_ext.learned.learned_matrix`.
    noise_floor : bool, default True
        Also extract :math:`\hat R` with another batching and in float64
        (:func:`rankkit_ext.learned.extraction_noise_floor`; about 3× the extraction time) and
        count the rank above that floor (``rank_at_floor``, used by the verdict).
    **estimate_kwargs
        Further options of :func:`rankkit.estimate_min_rank` (``method=``, ``max_len=`` …).

    Returns
    -------
    RankComparison
        ``summary()`` prints the three numbers and what they imply.

    Notes
    -----
    The learned rank is reported above the pipeline's noise floor (``rank_at_floor``) and as
    ``rankkit.numerical_rank`` of :math:`\hat R` with the default cutoff
    :math:`\sigma_1\max(N, m)\,\varepsilon_{\text{dtype}}` (App. D.4), ε of the model's
    dtype; the first is the one a rank claim can rest on (module docstring). The data's bounds are about different quantities: ``data_lower`` bounds the exact
    minimal rank (ε = 0), ``data_upper`` the ε-rank; RAD-Q can fit the observed entries
    exactly only if :math:`d \ge \operatorname{minrank}_\Omega(R) \ge` ``data_lower``, and
    to MSE ≤ ε whenever :math:`d \ge` ``data_upper``.

    Examples
    --------
    >>> rep = compare_rank(radq, "vader:tweets", n_prefixes=128)   # doctest: +SKIP
    >>> print(rep.summary())                                       # doctest: +SKIP
    """
    import rankkit as rk
    from rankkit.datasets import as_dataset
    from rankkit.sequences import RewardDataset, TokenSequences

    from .learned import draw_prefix_rows, extraction_noise_floor, learned_matrix
    from .models import RADQ, RADV

    if not isinstance(model, RADV | RADQ):
        raise TypeError(f"model must be a rankkit_ext RADV or RADQ, got {type(model).__name__}")
    if int(n_prefixes) < 1:
        raise ValueError(f"n_prefixes must be >= 1, got {n_prefixes}")
    ds = dataset if isinstance(dataset, RewardDataset) else as_dataset(dataset, tokenizer=tokenizer)
    # a name picks the same response in both; an index must be valid in both
    data_label = _label_index(label, ds.label_names, "dataset")
    model_label = _label_index(label, model.label_names, "model")
    if ds.vocab_size > model.vocab_size:
        raise ValueError(f"the dataset's tokens reach id {ds.vocab_size - 1} but the model "
                         f"scores a vocabulary of {model.vocab_size}: tokenize the data with "
                         f"the model's tokenizer")
    if estimate is not None:
        if getattr(estimate, "omega_nnz", None) is None:
            raise TypeError(f"estimate must be a rankkit.MinRankEstimate, got "
                            f"{type(estimate).__name__}")
        if estimate.label not in (label, data_label):
            raise ValueError(f"estimate is for label {estimate.label!r}, this comparison for "
                             f"label {label!r}; pass a certificate of the same response column")

    # rows of R̂: distinct prefixes of the data = rows of P_Ω(R) (built in O(total tokens))
    R = rk.build_reward_matrix(ds)
    # the package's one law of the rows of R̂ (rankkit_ext.learned.sample_prefixes)
    rows = np.sort(draw_prefix_rows(R.shape[0], n_prefixes, seed))
    prefixes = TokenSequences.from_lists([R.prefix(int(i)) for i in rows])

    t0 = time.perf_counter()
    R_hat = learned_matrix(model, prefixes, vocab, label=model_label, batch_size=batch_size,
                           candidate_batch=candidate_batch, progress=progress)
    s = rk.singular_values(R_hat)
    learned_rank = rk.numerical_rank(R_hat)
    eps_dtype = float(np.finfo(R_hat.dtype).eps)
    cutoff = float(s[0]) * max(R_hat.shape) * eps_dtype if s.size else 0.0
    floor = rank_at_floor = None
    if noise_floor:
        extract = functools.partial(learned_matrix, vocab=vocab, label=model_label)
        floor = extraction_noise_floor(model, prefixes, reference=R_hat, batch_size=batch_size,
                                       candidate_batch=candidate_batch, extract=extract,
                                       progress=progress)
        rank_at_floor = floor.rank(s, len(prefixes))
    t_learned = time.perf_counter() - t0

    t0 = time.perf_counter()
    if estimate is None:
        estimate = rk.estimate_min_rank(ds, eps=eps, label=data_label, seed=seed,
                                        progress=progress, **estimate_kwargs)
    t_est = time.perf_counter() - t0

    kind = "RADQ" if isinstance(model, RADQ) else "RADV"
    d = int(model.hidden_size)
    return RankComparison(
        model_kind=kind, hidden_size=d, rank_bound=model.rank_bound if kind == "RADQ" else None,
        learned_rank=int(learned_rank), n_prefixes=int(R_hat.shape[0]),
        n_columns=int(R_hat.shape[1]), dtype=str(R_hat.dtype), singular_values=np.asarray(s),
        cutoff=cutoff, data_lower=int(estimate.exact_lower), data_eps_lower=int(estimate.eps_lower),
        data_upper=None if estimate.upper is None else int(estimate.upper),
        eps=float(estimate.eps), label=label, estimate=estimate, prefix_rows=rows,
        seconds_learned=t_learned, seconds_estimate=t_est, rank_at_floor=rank_at_floor,
        noise_floor=floor)
