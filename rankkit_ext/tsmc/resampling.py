"""Log-space importance weights and resampling schemes for sequential Monte Carlo.

All functions take log-weights (unnormalised, any real or ``-inf``) as a torch tensor of
shape ``(K,)`` or ``(B, K)`` and work on the tensor's device. A row whose weights are all
``-inf`` (every particle violated a hard constraint) is treated as uniform for resampling
and reported with ``ess == 0`` and ``log_sum == -inf``; no function returns NaN for it.

References
----------
Douc, Cappé, Moulines (2005), *Comparison of resampling schemes for particle filtering*.
Kim et al. (2025), *Self-Distilled Twisted SMC*, §1 step 3 (resampling).
"""

from __future__ import annotations

import math

import torch

__all__ = ["RESAMPLING_METHODS", "normalize_log_weights", "ess", "resample", "categorical",
           "conditional_resample"]

RESAMPLING_METHODS = ("systematic", "multinomial", "stratified", "residual")

# Largest spacing of representable log-weights (ulp at the row's top log-weight) that still
# leaves every self-normalised weight within a relative 1e-4 of its exact value: past it
# (|log w| > 4.5e11 in float64, > 840 in float32) the weights no longer sum to one and the
# ESS can exceed K, so the functions below refuse instead of returning them.
LOG_WEIGHT_ULP_TOL = 1e-4


def _check(log_weights: torch.Tensor) -> torch.Tensor:
    if not isinstance(log_weights, torch.Tensor):
        raise TypeError(f"log_weights must be a torch.Tensor of shape (K,) or (B, K); got "
                        f"{type(log_weights).__name__}. Fix: wrap it with torch.as_tensor(...).")
    if log_weights.ndim not in (1, 2) or log_weights.shape[-1] == 0:
        raise ValueError(f"log_weights must have shape (K,) or (B, K) with K >= 1; got shape "
                         f"{tuple(log_weights.shape)}.")
    if torch.isnan(log_weights).any():
        bad = torch.nonzero(torch.isnan(log_weights))[0].tolist()
        raise ValueError(f"log_weights contains NaN at index {bad}; weights must be real or -inf. "
                         "Fix the potential or twist that produced it.")
    if (log_weights == math.inf).any():
        bad = torch.nonzero(log_weights == math.inf)[0].tolist()
        raise ValueError(f"log_weights contains +inf at index {bad}; an infinite weight has no "
                         "normalisation. Fix the potential or twist that produced it.")
    _check_precision(log_weights)
    return log_weights


def _check_precision(lw: torch.Tensor) -> None:
    r"""Refuse log-weights whose magnitude leaves too few bits for their differences.

    Normalisation computes :math:`\log w_k - \log\sum_j w_j`; both terms carry a rounding
    error of one ulp at the row's largest log-weight, ``eps(dtype) * |max_k log w_k|``
    (particles far below the maximum carry no weight whatever their error). At β = 1e16 that
    ulp is 2 and the "normalised" weights sum to 0.8.
    """
    if not lw.dtype.is_floating_point:
        return
    top = lw.max(dim=-1).values
    top = torch.where(torch.isfinite(top), top.abs(), torch.zeros_like(top))
    ulp = torch.finfo(lw.dtype).eps * top
    if bool((ulp > LOG_WEIGHT_ULP_TOL).any()):
        b = int(torch.argmax(ulp.reshape(-1)))
        m = float(top.reshape(-1)[b])
        where = f" (row {b})" if lw.ndim == 2 else ""
        limit = LOG_WEIGHT_ULP_TOL / torch.finfo(lw.dtype).eps
        raise ValueError(
            f"log-weights reach magnitude {m:.3g}{where}: {lw.dtype} resolves them only to "
            f"±{float(ulp.reshape(-1)[b]):.2g}, so self-normalised weights would be wrong (they "
            f"need |log w| <= {limit:.2g} in this dtype). Lower beta or rescale the potential / "
            "reward so that log-weights stay moderate, or work in float64.")


def normalize_log_weights(log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Self-normalise log-weights: :math:`\log\bar w_k = \log w_k - \log\sum_j w_j`.

    Parameters
    ----------
    log_weights : Tensor, shape (K,) or (B, K)

    Returns
    -------
    log_normalized : Tensor, same shape; rows of all ``-inf`` become uniform ``-log K``.
    log_sum : Tensor, shape () or (B,); :math:`\log\sum_k w_k` (``-inf`` for such rows).
    """
    lw = _check(log_weights)
    log_sum = torch.logsumexp(lw, dim=-1)
    dead = torch.isneginf(log_sum)
    safe = torch.where(dead, torch.zeros_like(log_sum), log_sum)
    out = lw - safe.unsqueeze(-1)
    uniform = torch.full_like(out, -math.log(lw.shape[-1]))
    out = torch.where(dead.unsqueeze(-1), uniform, out)
    return out, log_sum


def ess(log_weights: torch.Tensor) -> torch.Tensor:
    r"""Effective sample size :math:`(\sum_k w_k)^2 / \sum_k w_k^2`, in [1, K] (0 if all ``-inf``)."""
    lw = _check(log_weights)
    val = torch.exp(2 * torch.logsumexp(lw, -1) - torch.logsumexp(2 * lw, -1))
    return torch.nan_to_num(val, nan=0.0)  # -inf - -inf: no particle carries mass


def categorical(logits: torch.Tensor, generator: torch.Generator | None = None, *,
                return_log_norm: bool = False, check: bool = True):
    r"""One draw per row from :math:`\mathrm{Cat}(\mathrm{softmax}(\text{logits}))` by inverse
    CDF in float64: the one categorical sampler of the package (token proposals of every SMC
    proposal and the ancestor draws of :func:`resample` share :func:`_inverse_cdf`).

    Parameters
    ----------
    logits : Tensor, shape (V,) or (B, V)
        Unnormalised log-probabilities (``-inf`` allowed). A row of all ``-inf`` (a
        zero-mass particle) draws uniformly.
    generator : torch.Generator, optional
        The only source of randomness (one ``torch.rand`` per row, on the generator's
        device), so the same seed gives the same draws on any device.
    return_log_norm : bool
        Also return :math:`\log\sum_v \exp(\text{logits}_v)` of each row (``-inf`` for a
        dead row): the twist-induced proposal needs it as :math:`\log Z_t`, and it costs
        nothing extra here.
    check : bool
        Refuse NaN / ``+inf`` logits and magnitudes too large to normalise (see
        :func:`normalize_log_weights`). The samplers pass ``False``: they have checked their
        inputs per step already, and each vocabulary-wide pass costs on CPU.

    Returns
    -------
    idx : LongTensor, shape () or (B,)
    log_norm : float64 Tensor, shape () or (B,), only with ``return_log_norm``.
    """
    x = logits.to(torch.float64)
    if check:
        _check(x)
    squeeze = x.ndim == 1
    x = x.reshape(-1, x.shape[-1])
    # the fewest vocabulary-wide passes: one logsumexp, one exp, one cumsum
    log_norm = torch.logsumexp(x, -1)
    dead = torch.isneginf(log_norm)
    if bool(dead.any()):
        x = torch.where(dead[:, None], torch.zeros_like(x), x)
        shift = torch.where(dead, torch.full_like(log_norm, math.log(x.shape[-1])), log_norm)
    else:
        shift = log_norm
    u = torch.rand(x.shape[0], 1, generator=generator, dtype=torch.float64, device=x.device)
    idx = _inverse_cdf(torch.exp(x - shift[:, None]), u).squeeze(-1)
    if squeeze:
        idx, log_norm = idx[0], log_norm[0]
    return (idx, log_norm) if return_log_norm else idx


def _inverse_cdf(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Indices j with cdf[j-1] <= u < cdf[j]; w (B, K) normalised, u (B, n) in [0, 1)."""
    cdf = torch.cumsum(w, dim=-1)
    cdf[..., -1] = 1.0  # round-off must never push a draw past the last particle
    idx = torch.searchsorted(cdf, u.contiguous(), right=True)
    return idx.clamp_(max=w.shape[-1] - 1)


def resample(log_weights: torch.Tensor, method: str = "systematic",
             generator: torch.Generator | None = None, n: int | None = None) -> torch.Tensor:
    r"""Draw ancestor indices :math:`a_{1:n}` with :math:`\mathbb E[\#\{i: a_i = k\}] = n\bar w_k`.

    Parameters
    ----------
    log_weights : Tensor, shape (K,) or (B, K)
        Unnormalised log-weights (``-inf`` allowed; an all ``-inf`` row is resampled uniformly).
    method : {"systematic", "multinomial", "stratified", "residual"}
        ``multinomial``: i.i.d. :math:`u_i\sim U(0,1)`; ``stratified``:
        :math:`u_i = (i + U_i)/n`; ``systematic``: :math:`u_i = (i + U)/n` with one
        :math:`U`; ``residual``: :math:`\lfloor n\bar w_k\rfloor` deterministic copies and the
        remaining draws multinomial on the residuals :math:`n\bar w_k - \lfloor n\bar w_k\rfloor`.
        All four are unbiased; systematic has the lowest variance in practice.
    generator : torch.Generator, optional
        Source of randomness (on the weights' device); same seed → same ancestors.
    n : int, optional
        Number of draws (default K).

    Returns
    -------
    ancestors : LongTensor, shape (n,) or (B, n), sorted ascending per row.
    """
    if method not in RESAMPLING_METHODS:
        raise ValueError(f"resample method must be one of {RESAMPLING_METHODS}; got {method!r}.")
    logw, _ = normalize_log_weights(log_weights.to(torch.float64))
    squeeze = logw.ndim == 1
    w = logw.exp().reshape(-1, logw.shape[-1])
    B, K = w.shape
    n = K if n is None else int(n)
    dev = w.device
    kw = dict(generator=generator, dtype=torch.float64, device=dev)
    grid = torch.arange(n, dtype=torch.float64, device=dev)
    if method == "multinomial":
        u = torch.rand(B, n, **kw).sort(dim=-1).values
        out = _inverse_cdf(w, u)
    elif method == "stratified":
        out = _inverse_cdf(w, (grid + torch.rand(B, n, **kw)) / n)
    elif method == "systematic":
        out = _inverse_cdf(w, (grid + torch.rand(B, 1, **kw)) / n)
    else:
        nw = n * w
        det = torch.floor(nw)
        counts = det.long()
        n_det = counts.sum(-1, keepdim=True)  # (B, 1)
        resid = (nw - det).clamp_min(0)
        rs = resid.sum(-1, keepdim=True)
        resid = torch.where(rs > 0, resid / rs.clamp_min(1e-300), torch.full_like(resid, 1 / K))
        pos = torch.arange(n, device=dev).expand(B, n)
        det_anc = torch.searchsorted(torch.cumsum(counts, -1), pos.contiguous(), right=True)
        # unsorted i.i.d. draws: which positions are kept must not depend on their values
        res_anc = _inverse_cdf(resid, torch.rand(B, n, **kw))
        out = torch.where(pos < n_det, det_anc.clamp(max=K - 1), res_anc)
        out = out.sort(dim=-1).values
    return out[0] if squeeze else out


def conditional_resample(log_weights: torch.Tensor, method: str = "multinomial",
                         generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Ancestors of a conditional SMC step: particle 0 (the reference) keeps its own line and
    the other K − 1 ancestors are drawn i.i.d. from the normalised weights,

    .. math::

        a_0 = 0, \qquad a_1, \dots, a_{K-1} \overset{iid}{\sim} \mathrm{Cat}(ar w),

    the kernel under which the conditional SMC estimator satisfies
    :math:`\mathbb E[Z / \hat Z] = 1` for a reference drawn from σ (Andrieu, Doucet &
    Holenstein 2010; Zhao et al. 2024, §4.2). Drawing K ancestors and overwriting the first
    would be wrong: :func:`resample` returns them sorted, so that discards the *smallest*
    of K draws instead of drawing K − 1.

    Parameters
    ----------
    log_weights : Tensor, shape (K,)
    method : str
        Only ``"multinomial"`` gives the conditional law (i.i.d. draws).
    generator : torch.Generator, optional

    Returns
    -------
    LongTensor, shape (K,)
    """
    if method != "multinomial":
        raise ValueError(f"conditional SMC needs resample='multinomial' (i.i.d. ancestors); got "
                         f"{method!r}")
    K = log_weights.shape[-1]
    free = resample(log_weights, "multinomial", generator, n=K - 1)
    return torch.cat([torch.zeros(1, dtype=free.dtype, device=free.device), free])
