r"""Learned reward matrices R̂ of RAD-V / RAD-Q (paper 002 §3.1.2, App. D.3, Fig. 2, 7, 9).

Row i of R̂ is r̂(· | x'_i) over the vocabulary (or a chosen subset of columns). The rank
of R̂ against the number of sampled prefixes (``rankkit.rank_curve``) shows how much of
its capacity a reward model uses: R̂_RAD-Q = H(w1ᵀ + WE) has rank ≤ d by construction
(eq. 10–11), R̂_RAD-V is unconstrained but low-rank in practice (Fig. 2).
"""

from __future__ import annotations

import numpy as np
import torch

from rankkit.sequences import TokenSequences

from ._tensors import padded
from .models import RADQ, RADV, RewardModel

__all__ = ["learned_matrix", "sample_prefixes", "draw_prefix_rows", "delta_spread", "rank_summary", "RANK_REL_TOLS"]

#: Relative tolerances of the ε-ranks :func:`rank_summary` reports beside NumPy's cutoff.
RANK_REL_TOLS = (1e-2, 1e-3, 1e-4)


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


def rank_summary(R: np.ndarray, sizes, float64_up_to: int = 0, n_spectrum: int = 0) -> dict:
    r"""Numerical ranks of the first-N rows of ``R`` for each N in ``sizes``.

    For each N: ``rank`` with the App. D.4 cutoff
    :math:`\sigma_1\max(N, m)\,\varepsilon_{\text{dtype}}` in ``R``'s own dtype (what
    ``numpy.linalg.matrix_rank`` returns), ε-ranks :math:`\#\{\sigma_k > \tau\sigma_1\}` at
    the relative tolerances :data:`RANK_REL_TOLS`, and, for N ≤ ``float64_up_to``, the count a
    float64 cutoff gives on the float64-cast rows (rounding noise of a float32 matrix then
    counts as rank). ``spectrum``: σ_k/σ_1 of the largest N, its first ``n_spectrum``.

    Parameters
    ----------
    R : numpy.ndarray, shape (N_max, m)
        R̂ as :func:`learned_matrix` returns it (float32 for a float32 model), rows i.i.d.
        prefixes, so the first N rows are themselves an i.i.d. sample.
    sizes : sequence of int
        Increasing N ≤ ``len(R)``.
    float64_up_to : int
        Largest N for which the float64-cutoff count is also computed (an SVD in float64).
    n_spectrum : int

    Returns
    -------
    dict
        JSON-ready: ``sizes``, ``rank``, ``cutoff_over_sigma1`` (= max(N, m)·ε),
        ``rank_rel_<t>`` for t in :data:`RANK_REL_TOLS`, ``rank_float64_cutoff``
        ({str(N): count}), ``spectrum``, ``dtype``, ``n_cols``.
    """
    import rankkit as rk

    eps = float(np.finfo(R.dtype).eps)
    out = {"dtype": str(R.dtype), "n_cols": int(R.shape[1]), "sizes": [], "rank": [],
           "cutoff_over_sigma1": [], **{f"rank_rel_{t:g}": [] for t in RANK_REL_TOLS},
           "rank_float64_cutoff": {}}
    s = np.zeros(0)
    for n in sizes:
        sub = R[:n]
        s = rk.singular_values(sub)  # in sub's dtype (float32 → float32 SVD)
        rel = float(max(sub.shape) * eps)
        out["sizes"].append(int(n))
        out["rank"].append(int(np.count_nonzero(s > s[0] * s.dtype.type(rel))))
        out["cutoff_over_sigma1"].append(rel)
        for t in RANK_REL_TOLS:
            out[f"rank_rel_{t:g}"].append(int(np.count_nonzero(s > t * s[0])))
        if n <= float64_up_to and R.dtype != np.float64:
            out["rank_float64_cutoff"][str(n)] = int(rk.numerical_rank(sub.astype(np.float64)))
    out["spectrum"] = (s[:n_spectrum] / s[0]).astype(np.float64).tolist() if s.size else []
    return out
