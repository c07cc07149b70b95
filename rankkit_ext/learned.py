r"""Learned reward matrices R̂ of RAD-V / RAD-Q (paper 002 §3.1.2, App. D.3, Fig. 2, 7, 9).

Row i of R̂ is r̂(· | x'_i) over the vocabulary (or a chosen subset of columns). The rank
of R̂ against the number of sampled prefixes (``rankkit.rank_curve``) shows how much of
its capacity a reward model uses: R̂_RAD-Q = H(w1ᵀ + WE) has rank ≤ d by construction
(eq. 10–11), R̂_RAD-V is unconstrained; the paper reads both as low-rank with NumPy's
cutoff (Fig. 2, App. D.4). :func:`extraction_noise_floor` measures what the extraction
itself resolves (Weyl's inequality on two extractions of the same model), so a rank can be
counted above the pipeline's own noise instead of above a fixed fraction of σ₁.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from rankkit.sequences import TokenSequences

from ._tensors import padded
from .models import RADQ, RADV, RewardModel

__all__ = ["learned_matrix", "sample_prefixes", "draw_prefix_rows", "delta_spread", "rank_summary",
           "RANK_REL_TOLS", "NoiseFloor", "extraction_noise_floor", "noise_floor_from_matrices",
           "nested_singular_values", "FLOOR_SAFETY"]

#: Relative tolerances of the ε-ranks :func:`rank_summary` reports beside NumPy's cutoff.
RANK_REL_TOLS = (1e-2, 1e-3, 1e-4)

#: Safety factor c of the noise-floor rank #{σ_k > c·‖E‖₂} (:class:`NoiseFloor`).
FLOOR_SAFETY = 10.0


def sample_prefixes(dataset, n: int, seed: int = 0) -> list[list[int]]:
    r"""``n`` distinct training prefixes, a uniformly random subset of the rows of P_Ω(R).

    The one law of the rows of :math:`\hat R` in this package (also
    :func:`rankkit_ext.compare_rank`'s): with :math:`X = \{u_{<t} : (u, y) \in D,\;
    1 \le t \le |u|\}` the distinct prefixes of D_f (paper 002, eq. 3; the empty prefix,
    t = 1, included), i.e. the rows of :func:`rankkit.build_reward_matrix`, every subset
    :math:`S \subseteq X` of size :math:`N = \min(n, |X|)` is equally likely,

    .. math:: \Pr(S) = \binom{|X|}{N}^{-1}, \qquad \Pr(x' \in S) = N / |X|,

    drawn without replacement (``numpy.random.default_rng(seed).choice(|X|, N,
    replace=False)``, which shuffles) and returned in draw order, so the first k prefixes
    of one draw are themselves a uniform k-subset: a rank curve over ``prefixes[:k]`` for
    growing k is nested. (Two calls with different ``n`` draw different subsets.)

    Why this law: the paper samples rows "from the matrix" i.i.d. so that no structured
    submatrix biases the rank (App. D.4, after Finlayson et al. 2024). Rows of the matrix
    are distinct prefixes; drawing utterances and positions instead would repeat short
    prefixes (the empty one in about one draw in :math:`|u|`), and a repeated row adds
    nothing to the rank, so N draws would measure fewer than N rows. When ``n`` exceeds
    :math:`|X|` all rows are returned (fewer than ``n``).

    Parameters
    ----------
    dataset : rankkit.RewardDataset
    n : int
        Prefixes wanted (at most the number of rows).
    seed : int
        The same seed gives the same prefixes in the same order.

    Returns
    -------
    list of list of int
        Token ids of each prefix x', without BOS.
    """
    import rankkit as rk

    R = rk.build_reward_matrix(dataset)
    return [R.prefix(int(i)).tolist() for i in draw_prefix_rows(R.shape[0], n, seed)]


def draw_prefix_rows(n_rows: int, n: int, seed: int = 0) -> np.ndarray:
    """Row indices of the law of :func:`sample_prefixes`: ``min(n, n_rows)`` distinct rows,
    uniformly without replacement, in draw order (shared with
    :func:`rankkit_ext.compare_rank`, so both draw the same rows for one seed)."""
    if int(n) < 1:
        raise ValueError(f"n (the number of prefixes) must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    return rng.choice(int(n_rows), size=min(int(n), int(n_rows)), replace=False)


def delta_spread(R) -> float:
    r"""Mean over rows of :math:`\operatorname{std}_j \hat R[i, j]`: the spread of
    :math:`\Delta\hat r(e(v) \mid h(x'_i))` across tokens v (paper 002 §4.5, Fig. 7).

    For RAD-Q, :math:`\hat R[i, j] = \langle h_i, w\rangle + \Delta\hat r(e(v_j) \mid h_i)`
    (eq. 10); the row mean removes the baseline, so this is 0 exactly when the model abstains
    (:math:`\hat R = H w \mathbf 1^\top`, rank 1), the limit L_reg (eq. 14) pulls towards.
    """
    R = np.asarray(R, dtype=np.float64)
    return float((R - R.mean(axis=1, keepdims=True)).std(axis=1).mean())


@torch.no_grad()
def learned_matrix(model: RewardModel, prefixes, vocab=None, *, label: int | str = 0,
                   batch_size: int = 64, candidate_batch: int = 4096,
                   progress: bool = False) -> np.ndarray:
    r"""Dense rows of the learned reward matrix, :math:`\hat R[i, j] = \hat r(v_j \mid x'_i)`.

    Parameters
    ----------
    model : RADV or RADQ
    prefixes : TokenSequences or list of token-id lists, length N
        Prefixes x' without BOS (the empty prefix is allowed: the model scores after BOS).
    vocab : array_like of int, optional
        Column token ids; default all ``model.vocab_size`` tokens.
    label : int or str
    batch_size : int
        Prefixes per backbone pass (RAD-Q) or per prefix pass (RAD-V).
    candidate_batch : int
        RAD-V only: (prefix, candidate) pairs per backbone pass; each pass runs against its
        own expanded copy of the prefix's KV cache, the cache itself is never modified.
    progress : bool

    Returns
    -------
    numpy.ndarray, shape (N, len(vocab)), in the model's floating dtype
        (float32 for a float32 model, so ``rankkit.numerical_rank`` applies the float32
        cutoff of App. D.4).

    Notes
    -----
    Prefixes are batched in order of length (the rows are returned in the given order), so
    a batch pads to about its own length rather than to the longest prefix drawn.
    RAD-Q costs one backbone pass per prefix batch and one (B, d) × (d, :math:`|V|`) product.
    RAD-V costs one pass per prefix batch plus N·:math:`|V|` single-token passes on cached
    prefixes; this is the N·:math:`|V|` reward-model calls of §3.1.2.
    """
    from rankkit._progress import progress_bar

    if not isinstance(model, RADV | RADQ):
        raise TypeError(f"model must be a RADV or RADQ, got {type(model).__name__}")
    seqs = prefixes if isinstance(prefixes, TokenSequences) else TokenSequences.from_lists(prefixes)
    cols = None if vocab is None else torch.as_tensor(np.asarray(vocab, dtype=np.int64),
                                                       device=model.device)
    if cols is not None and cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= model.vocab_size):
        raise ValueError(f"vocab ids must lie in [0, {model.vocab_size}); got "
                         f"[{int(cols.min())}, {int(cols.max())}]")
    n_cols = model.vocab_size if cols is None else int(cols.numel())
    was = model.training
    model.eval()
    old_cb = getattr(model, "candidate_batch", None)
    if old_cb is not None:
        model.candidate_batch = int(candidate_batch)
    dtype = model.backbone.get_input_embeddings().weight.dtype
    out = np.empty((len(seqs), n_cols), dtype=torch.empty(0, dtype=dtype).numpy().dtype
                   if dtype in (torch.float32, torch.float64) else np.float32)
    # batches of similar length: a left-padded batch costs its longest prefix in every row,
    # and RAD-V repeats that cost for each of its |V| candidates (the rows land in place)
    order = np.argsort(np.asarray(seqs.lengths), kind="stable")
    try:
        for s in progress_bar(range(0, len(seqs), batch_size), progress=progress, desc="R̂ rows"):
            idx = order[s:s + batch_size]
            ids, mask = padded(seqs.select(idx), "left", device=model.device)
            if isinstance(model, RADQ):
                if cols is None:
                    scores, _ = model.score_vocab(ids, mask, label=label)
                else:
                    scores, _ = model.score_candidates(ids, mask, cols, label=label)
            else:
                cand = cols if cols is not None else torch.arange(model.vocab_size, device=model.device)
                scores, _ = model.score_candidates(ids, mask, cand, label=label)
            out[idx] = scores.float().cpu().numpy() if out.dtype == np.float32 else scores.cpu().numpy()
    finally:
        model.train(was)
        if old_cb is not None:
            model.candidate_batch = old_cb
    return out


def nested_singular_values(R, sizes) -> list[np.ndarray]:
    r"""Singular values of the first-N rows ``R[:N]`` for each N in ``sizes``, in float64.

    One Householder QR of the float64 cast, :math:`R[:N_{\max}]^\top = QT` (T upper
    triangular), serves every N: :math:`R[:N]^\top = Q\,T[:, :N]` and the rows of
    :math:`T[:, :N]` below N are zero, so :math:`\sigma(R[:N]) = \sigma(T[:N, :N])`.
    The QR is backward stable, so the values carry float64 error
    (:math:`\approx 10^{-16}\sigma_1`), far below a float32 matrix's own rounding; a float32
    SVD would instead add its own error of order :math:`\varepsilon_{32}\sigma_1` and hide
    everything below it. Cost: one QR, :math:`2mN_{\max}^2` flops, plus small SVDs.
    """
    sizes = [int(n) for n in sizes]
    if not sizes or min(sizes) < 1 or max(sizes) > len(R):
        raise ValueError(f"sizes must lie in [1, {len(R)}] (the rows of R), got {sizes}")
    top = max(sizes)
    A = np.asarray(R[:top], dtype=np.float64)
    if A.shape[1] >= top:
        T = np.linalg.qr(A.T, mode="r")  # (top, top)
        return [np.linalg.svd(T[:n, :n], compute_uv=False) for n in sizes]
    return [np.linalg.svd(A[:n], compute_uv=False) for n in sizes]  # tall: no saving


def _nested_norms(A, B, sizes, chunk: int = 4096) -> list[float]:
    r""":math:`\|A[:N] - B[:N]\|_2` (B = None: :math:`\|A[:N]\|_2`) for each N, from one
    float64 Gram matrix :math:`G = EE^\top` (E = A − B, accumulated over column chunks so E
    is never held in float64 whole): :math:`\|E[:N]\|_2^2 = \lambda_{\max}(G[:N, :N])`
    (the largest eigenvalue keeps float64's relative accuracy)."""
    top = max(sizes)
    G = np.zeros((top, top))
    for j in range(0, A.shape[1], chunk):
        e = np.asarray(A[:top, j:j + chunk], dtype=np.float64)
        if B is not None:
            e = e - np.asarray(B[:top, j:j + chunk], dtype=np.float64)
        G += e @ e.T
    return [float(np.sqrt(max(np.linalg.eigvalsh(G[:n, :n])[-1], 0.0))) for n in sizes]


@dataclass
class NoiseFloor:
    r"""The noise floor of the R̂ extraction pipeline (:func:`extraction_noise_floor`).

    For a reference :math:`\hat R_a` and an alternative extraction :math:`\hat R_b` of the
    same model (another batching, or a float64 copy of the model), :math:`E = \hat R_a -
    \hat R_b`. Weyl's inequality for singular values,

    .. math:: |\sigma_k(\hat R_a) - \sigma_k(\hat R_a - E)| \le \|E\|_2 \quad \forall k,

    says that a singular value of :math:`\hat R_a` at or below :math:`\|E\|_2` may be
    produced by the pipeline's own arithmetic (the other extraction can have it at 0): it is
    not resolved. The rank at the floor is therefore

    .. math:: \operatorname{rank}_{\text{floor}}(\hat R_a[:N]) =
              \#\{k : \sigma_k(\hat R_a[:N]) > c\,\max_b \|E_b[:N]\|_2\},

    with safety factor c (default :data:`FLOOR_SAFETY` = 10): c = 1 is Weyl's bound for
    the one pair measured, and c > 1 allows for batchings, kernels and machines not tried
    (‖E‖₂ of one alternative samples the pipeline's perturbation, it does not bound it).
    An exactly rank-r matrix extracted with error E has
    :math:`\sigma_{r+1}(\hat R_a) \le \|E\|_2`, so with c ≥ 1 the count never exceeds r,
    and it equals r when :math:`\sigma_r > (c + 1)\|E\|_2` (paper 002 App. D.4 counts
    the rank with NumPy's cutoff instead, which ignores how R̂ was computed).

    Attributes
    ----------
    sizes : list of int
        N: the norms are of the first-N rows (nested, as the rank curves).
    sigma1 : list of float
        :math:`\sigma_1(\hat R_a[:N])`.
    norm_E : dict of str -> list of float
        :math:`\|E_b[:N]\|_2` per comparison b ("batching", "float64").
    settings : dict of str -> dict
        What each extraction used (dtype, batch_size, candidate_batch, prefix order).
    safety : float
        c.
    """

    sizes: list
    sigma1: list
    norm_E: dict
    settings: dict = field(default_factory=dict)
    safety: float = FLOOR_SAFETY

    @property
    def floor(self) -> list[float]:
        r""":math:`\max_b \|E_b[:N]\|_2` per N (absolute)."""
        return [max(v[i] for v in self.norm_E.values()) for i in range(len(self.sizes))]

    @property
    def rel(self) -> dict:
        r""":math:`\|E_b[:N]\|_2 / \sigma_1` per comparison and N."""
        return {k: [e / s if s > 0 else float("inf") for e, s in zip(v, self.sigma1, strict=True)]
                for k, v in self.norm_E.items()}

    @property
    def floor_rel(self) -> list[float]:
        """The floor over σ₁ per N."""
        return [f / s if s > 0 else float("inf") for f, s in zip(self.floor, self.sigma1, strict=True)]

    def rank(self, singular_values, n: int) -> int:
        """#{σ_k > c·floor} for the singular values of the first ``n`` rows."""
        i = self.sizes.index(int(n))
        return int(np.count_nonzero(np.asarray(singular_values) > self.safety * self.floor[i]))

    def to_dict(self) -> dict:
        return {**asdict(self), "rel": self.rel, "floor": self.floor, "floor_rel": self.floor_rel}


def noise_floor_from_matrices(reference, alternatives, sizes=None, *, settings=None,
                              safety: float = FLOOR_SAFETY) -> NoiseFloor:
    r""":class:`NoiseFloor` of ``reference`` against each matrix in ``alternatives``
    ({name: R̂_b}, same shape): :math:`\|E_b[:N]\|_2` for each N in ``sizes`` (default all
    rows) and :math:`\sigma_1(\hat R_a[:N])`, both in float64."""
    ref = np.asarray(reference)
    sizes = [len(ref)] if sizes is None else [int(n) for n in sizes]
    if not alternatives:
        raise ValueError("alternatives is empty: a noise floor needs at least one other "
                         "extraction of the same matrix")
    for k, B in alternatives.items():
        if np.shape(B) != ref.shape:
            raise ValueError(f"alternative {k!r} has shape {np.shape(B)}, reference {ref.shape}")
    if not (isinstance(safety, int | float) and safety >= 1):
        raise ValueError(f"safety must be a number >= 1 (Weyl's bound is c = 1), got {safety!r}")
    if not sizes or min(sizes) < 1 or max(sizes) > len(ref):
        raise ValueError(f"sizes must lie in [1, {len(ref)}] (the rows of R), got {sizes}")
    s1 = _nested_norms(ref, None, sizes)
    norms = {k: _nested_norms(ref, B, sizes) for k, B in alternatives.items()}
    return NoiseFloor(sizes=sizes, sigma1=s1, norm_E=norms, settings=dict(settings or {}),
                      safety=float(safety))


def extraction_noise_floor(model: RewardModel, prefixes, sizes=None, *, reference=None,
                           batch_size: int = 64, candidate_batch: int = 4096,
                           comparisons=("batching", "float64"), safety: float = FLOOR_SAFETY,
                           extract=None, progress: bool = False) -> NoiseFloor:
    r"""Measure how far the R̂ extraction pipeline itself moves the singular values.

    The same model's :math:`\hat R` is computed again (:class:`NoiseFloor` gives the
    equation): ``"batching"`` in the model's dtype with another batching (the prefixes in
    reverse order, ``batch_size`` 1 ↔ 8 so that left padding and the backbone's matrix
    shapes change, and ``candidate_batch // 2 - 1`` single-token passes per RAD-V chunk),
    ``"float64"`` with a float64 copy of the model (same batching; skipped when the model is
    already float64). The reference is ``learned_matrix(model, prefixes,
    batch_size=batch_size, candidate_batch=candidate_batch)`` unless given.

    Parameters
    ----------
    model : RADV or RADQ
    prefixes : list of token-id lists or TokenSequences, length N
    sizes : sequence of int, optional
        Nested row counts at which the floor is reported (default: all N rows).
    reference : numpy.ndarray, optional
        R̂ as already extracted with ``batch_size`` / ``candidate_batch``.
    comparisons : subset of {"batching", "float64"}
    safety : float
        c ≥ 1 in #{σ_k > c·‖E‖₂}.
    extract : callable, optional
        Replaces :func:`learned_matrix` (same signature), e.g. to cache blocks on disk.
    progress : bool

    Returns
    -------
    NoiseFloor
    """
    import torch

    extract = learned_matrix if extract is None else extract
    bad = set(comparisons) - {"batching", "float64"}
    if bad or not comparisons:
        raise ValueError(f"comparisons must be a non-empty subset of ('batching', 'float64'), "
                         f"got {tuple(comparisons)!r}")
    seqs = prefixes if isinstance(prefixes, TokenSequences) else TokenSequences.from_lists(prefixes)
    n = len(seqs)
    if n < 1:
        raise ValueError("prefixes is empty")
    if reference is None:
        reference = extract(model, seqs, batch_size=batch_size, candidate_batch=candidate_batch,
                            progress=progress)
    reference = np.asarray(reference)
    dtype = model.backbone.get_input_embeddings().weight.dtype
    alts, settings = {}, {"reference": {"dtype": str(dtype), "batch_size": int(batch_size),
                                        "candidate_batch": int(candidate_batch),
                                        "order": "given"}}
    if "batching" in comparisons:
        alt_bs = 8 if batch_size == 1 else 1
        alt_cb = max(1, candidate_batch // 2 - 1)
        rev = np.arange(n)[::-1]
        Rb = extract(model, seqs.select(rev), batch_size=alt_bs, candidate_batch=alt_cb,
                     progress=progress)
        alts["batching"] = np.asarray(Rb)[np.argsort(rev)]
        settings["batching"] = {"dtype": str(dtype), "batch_size": alt_bs,
                                "candidate_batch": alt_cb, "order": "reversed"}
    if "float64" in comparisons and dtype != torch.float64:
        m64 = copy.deepcopy(model).to(torch.float64)
        alts["float64"] = extract(m64, seqs, batch_size=batch_size,
                                  candidate_batch=candidate_batch, progress=progress)
        settings["float64"] = {"dtype": "torch.float64", "batch_size": int(batch_size),
                               "candidate_batch": int(candidate_batch), "order": "given"}
        del m64
    if not alts:
        raise ValueError("no comparison to make: the model is float64 and 'batching' was not asked for")
    return noise_floor_from_matrices(reference, alts, sizes, settings=settings, safety=safety)


def rank_summary(R: np.ndarray, sizes, noise: NoiseFloor | None = None,
                 spectrum: bool = True) -> dict:
    r"""Numerical ranks of the first-N rows of ``R`` for each N in ``sizes``.

    For each N:

    - ``rank``: NumPy's cutoff :math:`\#\{\sigma_k > \sigma_1\max(N, m)\,\varepsilon\}`
      (App. D.4) in ``R``'s own dtype, on a SVD in that dtype: what
      ``numpy.linalg.matrix_rank`` returns (for float32 and m = 50,257 the cutoff is
      :math:`6\cdot10^{-3}\sigma_1`, a fixed fraction that knows nothing of how R̂ was computed);
    - ``rank_float64_cutoff``: the same rule with float64's ε on the float64-cast rows;
    - ``rank_rel_<t>``: :math:`\#\{\sigma_k > t\sigma_1\}` for t in :data:`RANK_REL_TOLS`;
    - with ``noise`` (a :class:`NoiseFloor` at the same sizes): ``rank_at_floor``
      :math:`\#\{\sigma_k > c\max_b\|E_b[:N]\|_2\}` and ``floor_over_sigma1``.

    All but ``rank`` use float64 singular values of the cast rows
    (:func:`nested_singular_values`), which resolve a float32 matrix's spectrum down to its
    own rounding; ``spectrum`` is the full σ_k/σ_1 of the largest N from them.

    Parameters
    ----------
    R : numpy.ndarray, shape (N_max, m)
        R̂ as :func:`learned_matrix` returns it (float32 for a float32 model), rows i.i.d.
        prefixes, so the first N rows are themselves an i.i.d. sample.
    sizes : sequence of int
        Increasing N ≤ ``len(R)``.
    noise : NoiseFloor, optional
    spectrum : bool
        Include the full normalised spectrum of the largest N.

    Returns
    -------
    dict
        JSON-ready: ``sizes``, ``rank``, ``cutoff_over_sigma1`` (= max(N, m)·ε),
        ``rank_float64_cutoff``, ``rank_rel_<t>``, ``rank_at_floor``, ``floor_over_sigma1``,
        ``floor_safety``, ``spectrum``, ``dtype``, ``n_cols``.
    """
    import rankkit as rk

    sizes = [int(n) for n in sizes]
    if noise is not None and list(noise.sizes) != sizes:
        raise ValueError(f"noise was measured at N = {noise.sizes}, not at sizes = {sizes}")
    eps = float(np.finfo(R.dtype).eps)
    eps64 = float(np.finfo(np.float64).eps)
    out = {"dtype": str(R.dtype), "n_cols": int(R.shape[1]), "sizes": sizes, "rank": [],
           "cutoff_over_sigma1": [], "rank_float64_cutoff": [],
           **{f"rank_rel_{t:g}": [] for t in RANK_REL_TOLS}}
    if noise is not None:
        out.update(rank_at_floor=[], floor_over_sigma1=list(noise.floor_rel),
                   floor_safety=noise.safety)
    s64 = nested_singular_values(R, sizes)
    for n, s in zip(sizes, s64, strict=True):
        sub = R[:n]
        s32 = rk.singular_values(sub)  # in sub's dtype: NumPy's rule, as matrix_rank computes it
        rel = float(max(sub.shape) * eps)
        out["rank"].append(int(np.count_nonzero(s32 > s32[0] * s32.dtype.type(rel))))
        out["cutoff_over_sigma1"].append(rel)
        out["rank_float64_cutoff"].append(int(np.count_nonzero(s > s[0] * max(sub.shape) * eps64)))
        for t in RANK_REL_TOLS:
            out[f"rank_rel_{t:g}"].append(int(np.count_nonzero(s > t * s[0])))
        if noise is not None:
            out["rank_at_floor"].append(noise.rank(s, n))
    s = s64[-1]
    out["spectrum"] = (s / s[0]).tolist() if spectrum and s.size and s[0] > 0 else []
    return out
