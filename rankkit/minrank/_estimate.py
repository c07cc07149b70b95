"""The entry point :func:`rankkit.estimate_min_rank`: argument checks, the source as P_Ω(R),
the two brackets' bounds, the search, and assembly of the result; the checks and the
assembly are shared with :func:`rankkit.distributed.estimate_min_rank`."""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from .._backend import array_backend
from .._warnings import LabelScaleWarning
from ..bounds import eps_rank_lower_bound, rank_lower_bound
from ..exact import exact_completion, rank_cap
from ..matrix import RewardMatrix, as_reward_matrix
from ..sequences import RewardDataset
from ._result import MinRankEstimate
from ._scale import certificate_scale
from ._search import _CertSearch, _new_search, _run_search, _Search, _search_meta, _zero_misses

METHODS = ("auto", "soft-impute")


# ---------------------------------------------------------------------------------------
# the public function
# ---------------------------------------------------------------------------------------
def _source_matrix(source, *, max_len, text, labels, tokenizer, split) -> RewardMatrix:
    """P_Ω(R) of whatever the user holds: a matrix as is, anything else through
    :func:`rankkit.datasets.as_dataset` (the same coercion :func:`rankkit.datasets.load` uses)."""
    if isinstance(source, RewardMatrix) or sp.issparse(source):
        extra = {k: v for k, v in (("max_len", max_len), ("text", text), ("labels", labels),
                                   ("split", split)) if v is not None}
        if extra:
            raise ValueError(f"{sorted(extra)} apply to text sources only; got a "
                             f"{type(source).__name__}: truncate or select before building it")
        return as_reward_matrix(source)
    if isinstance(source, np.ndarray) or array_backend(source) != "numpy":
        raise TypeError(f"source is a dense {type(source).__name__}: rankkit cannot tell observed "
                        f"cells from missing ones in it. Use RewardMatrix.from_dense(array) (NaN marks "
                        f"a missing cell) or a scipy.sparse matrix (stored entries are observations)")
    from .. import datasets
    from ..trie import build_reward_matrix

    if isinstance(source, RewardDataset):
        ds = source
    else:
        ds = datasets.as_dataset(source, text=text, labels=labels, tokenizer=tokenizer, split=split)
    return build_reward_matrix(ds, max_len=max_len)


def _check_ranks(ranks) -> list[int] | str:
    if isinstance(ranks, str):
        if ranks != "auto":
            raise ValueError(f"ranks must be 'auto' or a list of non-negative ints, got {ranks!r}")
        return ranks
    if not isinstance(ranks, Sequence) and not isinstance(ranks, np.ndarray):
        raise TypeError(f"ranks must be 'auto' or a list of non-negative ints, got {type(ranks).__name__}")
    out = []
    for r in ranks:
        if int(r) != r or r < 0:
            raise ValueError(f"ranks must be non-negative integers; got {r!r} in {list(ranks)}")
        out.append(int(r))
    if not out:
        raise ValueError("ranks is empty; pass e.g. [0, 255, 511, 767] (Table 2) or 'auto'")
    return sorted(set(out))


def estimate_min_rank(source, eps: float = 1e-6, *, method: str = "auto", label: int | str = 0,
                      ranks="auto", lam: float = 1e-4, max_iter: int | None = None,
                      thresh: float = 1e-5, solver: str = "auto", n_restarts: int = 1,
                      extra_starts: int = 1, solver_options: dict | None = None,
                      max_abs: float | None = None, backend: str = "auto", device=None,
                      seed: int = 0, progress: bool | None = None, max_len: int | None = None,
                      checkpoint_dir: str | os.PathLike | None = None, lower_bound: bool = True,
                      exact_fallback: bool = True, normalize: bool = False, text=None, labels=None,
                      tokenizer="gpt2", split: str | None = None) -> MinRankEstimate:
    r"""Bound the minimal rank of P_Ω(R) from both sides (paper 002, Def. 1–2, Lemma 3, App. C.3).

    Builds P_Ω(R), reduces it to Ω₂ (rows with ≥ 2 observed cells), finds the smallest
    rank r at which a fit on Ω₂ has MSE ≤ ``eps`` (recomputed from its factors); then

    .. math::

        \operatorname{minrank}_{\Omega,\varepsilon}(R) \le
            \text{upper} = r + \mathbb{1}[\text{a removed single-entry row is nonzero}],
        \qquad \text{lower} \le \operatorname{minrank}_{\Omega}(R).

    If no fit passes, r is the rank cap c, certified by the constructive
    :func:`rankkit.exact.exact_completion` (λ-free; see ``exact_fallback``).

    Parameters
    ----------
    source
        What the user holds: a preset name (``"vader:tweets"``), a CSV / TSV / JSONL /
        Parquet path, a pandas DataFrame, a ``datasets.Dataset`` or ``DatasetDict`` (with
        ``split=``), a dict of columns, ``(texts, labels)``, ``(token_id_lists, labels)``, a
        :class:`RewardDataset` — all through :func:`rankkit.datasets.as_dataset`, the
        coercion :func:`rankkit.datasets.load` uses — or a :class:`RewardMatrix` / scipy
        sparse matrix (every stored entry, explicit zeros included, is an observation).
    eps : float, default 1e-6
        Tolerance on the MSE over Ω₂ (the paper's resolution for float32).
    method : {"auto", "soft-impute"}, default "auto"
        "auto": fixed-rank certificates (:func:`rankkit.lowrank.fixed_rank_fit` with ρ =
        ``lam``) and the rank search of the module docstring — the tightest bound rankkit
        can give. "soft-impute": the paper's methodology exactly as in App. C.3 (Table 2).
    label : int or str, default 0
        Which response column to analyse.
    ranks : "auto" or list of int, default "auto"
        A list evaluates exactly those ranks (``[0, 255, 511, 767]`` with
        ``method="soft-impute"`` reproduces Table 2); r is the smallest passing one.
        "auto" evaluates rank 0 (the zero matrix), then 1, 2, 4, … (soft-impute) or ℓ, ℓ + 1,
        ℓ + 2, 2(ℓ + 2), … with ℓ the proved ε-lower bound (fixed-rank; the walk only when
        ℓ ≥ 2) up to the cap, then bisects between the last failing rank (or ℓ − 1) and the
        first passing rank. The cap is
        min(n₂, m₂, max cells per row, max cells per column) of Ω₂, a rank at which an
        exact completion always exists. A listed rank above min(n₂, m₂) is fitted at
        min(n₂, m₂) and reported under the rank asked for.
    lam : float, default 1e-4
        Nuclear-norm weight: soft-impute's λ (R softImpute convention, App. C.3), and the
        fixed-rank solver's ρ, so both minimise the paper's objective (17).
    max_iter : int, optional
        Iterations per fit: default 1000 for soft-impute (App. C.3), 500 for fixed-rank.
    thresh : float, default 1e-5
        soft-impute's convergence threshold (relative change; unused by "auto", which
        stops on ε itself).
    solver : {"auto", "als", "rcg", "rlm"}, default "auto"
        The fixed-rank solver (:mod:`rankkit.lowrank`).
    n_restarts : int, default 1
        "auto": random restarts tried at a bisection rank after its warm and spectral starts.
        Further starts are tried only while the best MSE at that rank is within 10 × ε (a
        near miss); a start that ends far above ε ends the rank.
    extra_starts : int, default 1
        "auto": after the search, the rank just below the certificate, when its best fit
        was a near miss and it is not below the proved ``eps_lower``, gets the truncated
        certificate, the spectral start and this many random starts more (0: off); on
        success the next rank down is tried the same way.
    solver_options : dict, optional
        More keywords of :func:`rankkit.lowrank.fixed_rank_fit` (``cg_iter``, ``window`` …).
    max_abs : float, optional
        Reject a certificate whose completed Ω₂ matrix has an entry larger than max_abs in absolute value
        (:func:`certificate_scale`); such fits are listed in ``trials`` as rejected. The
        ε-bracket is then on the minimal ε-rank among matrices with every entry ≤ max_abs,
        and its lower end may also come from partially observed blocks
        (:class:`rankkit.bounds.PartialBlock`; ``eps_bounds.max_abs`` is set when it does).
    backend, device : where the fits run ("auto", "numpy", "torch", "cupy").
    seed : int
        Seed of every start (the same call gives the same answer).
    progress : bool or None, default None
        Show tqdm bars (one over ranks, one inside each fit); None: only on an interactive
        terminal or in a notebook with ipywidgets, so a script's redirected stderr stays clean.
    max_len : int, optional
        Truncate utterances to this many tokens (text sources only).
    checkpoint_dir : path, optional
        Each finished fit is saved there; a rerun with the same matrix and settings loads
        finished fits instead of refitting, and an interrupted fit resumes from its solver's
        own checkpoint. A directory made for a different matrix or settings is refused.
    lower_bound : bool, default True
        Compute the structural lower bound (:func:`rankkit.bounds.rank_lower_bound`);
        when False ``lower`` is 1 if any observed value is nonzero, else 0.
    exact_fallback : bool, default True
        When no fit reaches ε (or the best has a rank above the cap c), build the
        constructive exact completion of Ω₂ at rank c, recompute its MSE from its factors
        and, if ≤ ε, certify ``upper = c (+1 by Lemma 3)``. False keeps the fits as the only
        certificates.
    normalize : bool, default False
        Divide the analysed label's values by their largest magnitude s = max :math:`|R_{ij}|`
        over Ω before anything else, so that ε is relative to the label scale (the estimate,
        its bounds and its certificate are then of R / s; ``label_scale`` records s). A scale
        keeps every rank; no shift is applied, since subtracting a constant can change the
        minimal rank by one. Without it, labels outside [0, 1] raise a
        :class:`LabelScaleWarning`: ε = 1e-6 is the paper's resolution for rewards in [0, 1].
    text, labels, tokenizer, split
        For text sources, with the meaning they have in :func:`rankkit.datasets.load`
        (``labels`` names the label *columns* of a table; ``label`` picks the one analysed).

    Returns
    -------
    MinRankEstimate

    Notes
    -----
    A passing fit U diag(d) Vᵀ is itself a matrix of rank ≤ nnz(d) with MSE ≤ ε on Ω₂,
    so it certifies minrank_{Ω₂,ε} ≤ nnz(d) regardless of the solver and of λ; stacking it
    with a rank-1 block that reproduces the single-entry rows exactly (each such row is its
    value times the all-ones row) gives a completion of Ω with the same squared error,
    hence Lemma 3's +1. Only *passing* fits are evidence: a failing rank says this solver
    from these starts did not reach ε there, never that minrank exceeds it. So ``upper`` is
    the fewest nonzero singular values over *all* passing fits. Bisection assumes the best
    MSE decreases with rank, which holds for the optimum but not provably for any solver;
    every fit is listed in ``trials``.

    References
    ----------
    Troshin, Niculae, Fokkens, *On the Low-Rank Parametrization of Reward Models for
    Controlled Language Generation*, TMLR — §3.1 and App. C.3.
    Vandereycken, *Low-rank matrix completion by Riemannian optimization*, SIAM J. Optim.
    23 (2013). Hastie, Mazumder, Lee, Zadeh, *Matrix Completion and Low-Rank SVD via Fast
    Alternating Least Squares*, JMLR 16 (2015).

    Examples
    --------
    >>> import rankkit as rk
    >>> est = rk.estimate_min_rank(rk.synthetic.upper_triangular(8), progress=False)
    >>> est.lower, est.upper
    (8, 8)
    """
    t0 = time.perf_counter()
    max_iter, ranks = _check_args(method, eps=eps, lam=lam, max_abs=max_abs, max_iter=max_iter,
                                  n_restarts=n_restarts, ranks=ranks, extra_starts=extra_starts)
    R = _source_matrix(source, max_len=max_len, text=text, labels=labels, tokenizer=tokenizer,
                       split=split)
    j = R.label_index(label)  # validates the label against the matrix's label names
    raw = R.label_values(j)
    label_range = (float(raw.min()), float(raw.max())) if raw.size else (0.0, 0.0)
    label_scale = _label_scale(*label_range, normalize, label)
    R = _divide_label(R, j, label_scale)
    from ..omega import reduce_omega2

    R2 = reduce_omega2(R)
    vals = R.label_values(j)
    single = R.row_nnz == 1
    # a source that was reduced already removed rows whose values we no longer see:
    # count them and assume they need Lemma 3's +1
    earlier = int(R.n_single_rows) if R.row_map is not None else 0
    n_single = int(single.sum()) + earlier
    single_nonzero = earlier > 0 or bool(np.any(vals[np.repeat(single, R.row_nnz)] != 0))

    if lower_bound:
        bounds = rank_lower_bound(R, label=j)
        exact_lower = bounds.lower
        # with max_abs the bracket is on the entry-bounded ε-rank, which partially
        # observed blocks may bound too (rankkit.bounds.eps_rank, PartialBlock)
        eps_bounds = eps_rank_lower_bound(R2, float(eps), label=j, max_abs=max_abs)
        eps_lower = eps_bounds.lower
    else:
        bounds, exact_lower = None, int(bool(np.any(vals != 0)))
        x2 = R2.label_values(j)
        eps_bounds, eps_lower = None, _zero_misses(float(x2 @ x2), R2.nnz, eps)

    search = _new_search(method, _Search, _CertSearch, R2, j, eps=eps, lam=lam, thresh=thresh,
                         solver=solver, n_restarts=n_restarts, extra_starts=extra_starts, max_abs=max_abs,
                         options=_solver_options(solver_options), max_iter=max_iter, backend=backend,
                         device=device, seed=seed, progress=progress, checkpoint_dir=checkpoint_dir)
    _run_search(search, ranks, method, eps_lower)
    exact_upper = _exact_upper(rank_cap(R), search.cap, single_nonzero, bool(np.any(vals != 0)))

    def exact(cap):
        # the λ-free constructive certificate at the cap (rankkit.exact)
        ex = exact_completion(R2, cap, seed=seed, label=j)
        if max_abs is not None:
            ex.meta["scale"] = certificate_scale(ex.U, ex.d, ex.V)
        return ex, float(ex.mse), int(np.count_nonzero(ex.d)), \
            None if max_abs is None else ex.meta["scale"]["max_abs"]

    def finish(cert, source_name):
        return cert, None if cert is None else (cert.meta.get("scale") or
                                                certificate_scale(cert.U, cert.d, cert.V))

    def extend(cert):
        from ..omega import extend_certificate

        return extend_certificate(R, cert.U, cert.d, cert.V, label=j, budget=float(eps) * R2.nnz,
                                  max_abs=max_abs)

    return _assemble(search, method=method, eps=eps, lam=lam, label=label, bounds=bounds,
                     brackets=dict(exact_lower=exact_lower, exact_upper=exact_upper, eps_lower=eps_lower,
                                   eps_bounds=eps_bounds), extend=extend, n_single=n_single, single_nonzero=single_nonzero, shapes=(R.shape, R.nnz, R2.shape, R2.nnz),
                     ranks=ranks, max_iter=max_iter, thresh=thresh, t0=t0, max_abs=max_abs,
                     exact=exact if exact_fallback else None, finish=finish,
                     label_range=label_range, label_scale=label_scale,
                     meta=_search_meta(method, backend=backend, seed=seed, cap=search.cap, solver=solver,
                                       n_restarts=n_restarts, extra_starts=extra_starts))


# ---- shared by the one-process and the distributed estimate_min_rank ---------------------------
def _label_scale(lo: float, hi: float, normalize: bool, label) -> float:
    """The divisor s applied to the label's values: max(|lo|, |hi|) under ``normalize``, else 1,
    warning when [lo, hi] leaves [0, 1] and nothing rescales it.

    Only a scale, never a shift: dividing by s keeps every rank (minrank_ε(R / s) at ε equals
    minrank at ε s² of R), while subtracting a constant is a rank-one change on Ω that can
    move the minimal rank by one."""
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    big = max(abs(lo), abs(hi))
    if normalize:
        return big if big > 0 else 1.0
    if lo < 0.0 or hi > 1.0:
        import warnings

        warnings.warn(
            f"label {label!r} takes values in [{lo:.6g}, {hi:.6g}] on Ω, outside [0, 1]; ε is an "
            f"absolute tolerance on the mean squared error, so at this scale it is "
            f"{big * big:.3g}× stricter relative to the labels than for labels in [0, 1]. Pass "
            f"normalize=True to divide the values by {big:.6g} (rank-preserving), or scale eps",
            LabelScaleWarning, stacklevel=3)
    return 1.0


def _divide_label(R: RewardMatrix, j: int, s: float) -> RewardMatrix:
    """R with label column ``j``'s values divided by s (the other labels untouched)."""
    if s == 1.0:
        return R
    import dataclasses

    values = R.values.copy()
    if values.ndim == 1:
        values /= s
    else:
        values[:, j] /= s
    return dataclasses.replace(R, values=values, meta={**R.meta, "label_scale": s})


def _check_args(method, *, eps, lam, max_abs, max_iter, n_restarts, ranks, extra_starts=0):
    """Validate the search settings; returns (max_iter with its per-method default, ranks)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} ('auto': fixed-rank certificates, "
                         f"'soft-impute': the paper's App. C.3 methodology), got {method!r}")
    for name, v in (("eps", eps), ("lam", lam)):
        if not (isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if max_abs is not None and not (isinstance(max_abs, numbers.Real) and max_abs > 0):
        raise ValueError(f"max_abs must be None or a number > 0, got {max_abs!r}")
    if max_iter is None:
        max_iter = 1000 if method == "soft-impute" else 500
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    for name, v in (("n_restarts", n_restarts), ("extra_starts", extra_starts)):
        if not (isinstance(v, numbers.Integral) and v >= 0):
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    return int(max_iter), _check_ranks(ranks)


def _solver_options(solver_options) -> dict:
    opts = dict(solver_options or {})
    clash = sorted(set(opts) & {"label", "eps", "rho", "method", "max_iter", "backend", "device",
                                "progress", "warm_start", "init", "seed", "checkpoint", "comm", "gather"})
    if clash:
        raise ValueError(f"solver_options may not set {clash}: they are estimate_min_rank's own "
                         f"parameters (lam is ρ, solver is method)")
    return opts


def _exact_upper(cap_omega: int, cap_omega2: int, single_nonzero: bool, any_nonzero: bool) -> int:
    """minrank_Ω ≤ min(c(Ω), c(Ω₂) + 1[Lemma 3]): exact completions exist at both caps
    (rankkit.exact); 0 when every observed value is 0."""
    if not any_nonzero:
        return 0
    return int(min(cap_omega, cap_omega2 + int(single_nonzero)))



def _assemble(search, *, method, eps, lam, label, bounds, brackets, extend, n_single, single_nonzero, shapes,
              ranks, max_iter, thresh, t0, max_abs, exact, finish, meta, label_range=None,
              label_scale=1.0) -> MinRankEstimate:
    """The estimate from a finished search: the best certificate, the exact fallback at the
    cap, the two brackets and the message.

    ``exact(cap)`` (None: no fallback) returns (completion or None where this process does
    not hold it, its MSE over Ω₂, its rank, its max ``|entry|`` or None); ``finish(cert, source)``
    returns (the certificate this process reports, its :func:`certificate_scale`);
    ``extend(cert)`` (None: keep Lemma 3's + 1) returns
    :func:`rankkit.omega.extend_certificate`'s report for the reported certificate (every
    process gets the same dict); ``brackets`` holds exact_lower, exact_upper, eps_lower and
    eps_bounds."""
    r_cert, at, cert = search.best()
    source_name = "zero" if (r_cert == 0 and cert is None) else (
        "soft-impute" if method == "soft-impute" else "fixed-rank")
    exact_mse = None
    if exact is not None and search.cap > 0 and (r_cert is None or r_cert > search.cap):
        ex, exact_mse, eff, ex_max = exact(search.cap)
        ok = exact_mse <= eps and (max_abs is None or ex_max <= max_abs)
        if ok and (r_cert is None or eff < r_cert):
            r_cert, at, cert, source_name = eff, None, ex, "exact-completion"
    if r_cert is None:
        upper = None
        tried = max(search.mse)
        message = (f"no rank tried reaches MSE ≤ ε = {eps:g} on Ω₂ (largest tried: rank {tried}, "
                   f"MSE {search.mse[tried]:.3g})")
        message += ("; try larger ranks, a smaller thresh (the fit may stop on thresh before "
                    "reaching ε), more max_iter or a smaller lam" if method == "soft-impute" else
                    "; try larger ranks, more max_iter or n_restarts, or a larger max_abs")
        if exact_mse is not None:
            message += (f"; the exact completion at the cap (rank {search.cap}) has MSE "
                        f"{exact_mse:.3g}" + (" > ε in float64: ε is below the rounding error at "
                                              "this scale of values" if exact_mse > eps else
                                              " but entries above max_abs"))
        elif exact is None:
            message += "; or pass exact_fallback=True for the λ-free bound at the rank cap"
    else:
        message = ""
    cert, scale = finish(cert, source_name)
    ext = None
    if r_cert is not None:
        if single_nonzero and r_cert > 0 and extend is not None:
            ext = extend(cert)
        upper = r_cert + int(bool(single_nonzero) and not (ext or {}).get("appended", False))
        if brackets["eps_lower"] > r_cert:
            raise RuntimeError(f"internal error: the proved ε-lower bound {brackets['eps_lower']} exceeds "
                               f"the verified rank-{r_cert} certificate; please report this with the data")
    (omega_shape, omega_nnz, omega2_shape, omega2_nnz) = shapes
    return MinRankEstimate(
        eps=float(eps), lam=float(lam), label=label, upper=upper, omega_extension=ext, **brackets,
        rank_certified=r_cert, certified_at=at, mse_by_rank=dict(sorted(search.mse.items())),
        converged_by_rank=dict(sorted(search.converged.items())), certificate=cert,
        omega_shape=omega_shape, omega_nnz=omega_nnz, omega2_shape=omega2_shape, omega2_nnz=omega2_nnz,
        n_single_rows=n_single, single_rows_nonzero=bool(single_nonzero), bounds=bounds,
        ranks=ranks, max_iter=int(max_iter), thresh=float(thresh),
        elapsed=time.perf_counter() - t0, message=message, meta=meta,
        certificate_source=source_name, exact_mse=exact_mse, method=method,
        trials=search.trials, scale=scale, max_abs=None if max_abs is None else float(max_abs),
        label_range=label_range, label_scale=float(label_scale),
    )
