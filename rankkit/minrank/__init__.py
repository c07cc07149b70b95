r"""Bracketing the minimal rank of P_Ω(R): fitted certificates and structural bounds.

Paper 002, §3.1 (Definitions 1–2, Lemmas 2–3) and App. C.3 (Table 2). For the observed
cells Ω of a reward matrix and a tolerance ε,

.. math::

    \operatorname{minrank}_{\Omega,\varepsilon}(R) \le 1 + \operatorname{minrank}_{\Omega_2,\varepsilon}(R)
    \qquad \text{(Lemma 3)},

where Ω₂ keeps the rows with at least two observed cells. :func:`estimate_min_rank` looks
for the smallest rank r at which some fit on Ω₂ has

.. math::

    \operatorname{MSE}_{\Omega_2}(r) = \frac{1}{|\Omega_2|}
        \sum_{(i,j) \in \Omega_2} \bigl(R_{ij} - (U \operatorname{diag}(d) V^\top)_{ij}\bigr)^2
        \le \varepsilon .

The factors U diag(d) Vᵀ *are* a matrix of rank ≤ r with that error, so they certify
minrank_{Ω₂,ε}(R) ≤ r whatever solver produced them. The MSE is recomputed here from the
returned factors (:func:`rankkit.softimpute.observed_mse`), independently of the solver,
before a rank is accepted. Two ways of finding such factors:

``method="auto"`` (default)
    the fixed-rank solver :func:`rankkit.lowrank.fixed_rank_fit` (Riemannian
    Levenberg–Marquardt / ALS on rank-r matrices, ρ = λ), which stops on the certificate
    itself, with a rank search: r = ℓ, ℓ + 1, ℓ + 2, then doubling (ℓ the proved ε-lower
    bound, no rank below it is ever fitted) until a rank passes, then bisection down to ℓ,
    each bisection rank warm-started from the truncated factors of the smallest passing rank
    above it, then from the spectral start and ``n_restarts`` random starts; finally the
    rank just below the certificate, if a near miss, gets ``extra_starts`` more.
``method="soft-impute"``
    the paper's methodology (App. C.3): softImpute-ALS with λ = 1e-4 at the listed ranks
    (``[0, 255, 511, 767]`` reproduces Table 2) or by doubling and bisection; it stops on a
    relative-change threshold, not on ε, so its bound is loose.

When no fit reaches ε, :func:`rankkit.exact.exact_completion` builds a completion of Ω₂
that is exact up to rounding at the rank cap c = min(n₂, m₂, max cells in a row, max cells
in a column), so ``upper = c (+1)`` always holds.

Every certificate comes with its **scale** (:func:`certificate_scale`): the largest
absolute entry of the completed Ω₂ matrix (exact over all its rows × columns when that fits in
memory, else an upper bound from the factors' row norms), and its nuclear and Frobenius
norms. A low-rank certificate whose unobserved entries reach 2,000 is a different claim
from one that stays in the label range; ``max_abs=`` rejects the former.

The MSE is a mean over observed cells, as in Table 2. Definition 2 divides the squared
error by n·m ≥ :math:`|Ω₂|` instead, so MSE ≤ ε implies the condition of Definition 2: the
certificate is conservative with respect to the paper's definition.

Two brackets, one quantity each
-------------------------------
The **exact** bracket is about Definition 1 (ε = 0):

.. math::

    \text{exact\_lower} \le \operatorname{minrank}_\Omega(R) \le \text{exact\_upper},

with :func:`rankkit.bounds.rank_lower_bound` below (a forced triangular pattern, Lemma 2, or
a fully observed block of full rank) and the rank cap min(c(Ω), c(Ω₂) + 1) above
(:mod:`rankkit.exact`: a generic exact completion always exists there).

The **ε** bracket is about one ε-rank, stated with a *sum* over the cells and the budget
β = ε :math:`|Ω₂|` (equivalently: mean squared error over Ω₂ at most ε, App. C.3):

.. math::

    \operatorname{minrank}_{\Omega_2,\varepsilon}(R) = \min\{\operatorname{rank} M :
        \textstyle\sum_{\Omega_2} (R - M)^2 \le \varepsilon|\Omega_2|\}, \qquad
    \operatorname{minrank}_{\Omega,\varepsilon}(R) = \min\{\operatorname{rank} M :
        \textstyle\sum_{\Omega} (R - M)^2 \le \varepsilon|\Omega_2|\},

so minrank_{Ω₂,ε} ≤ minrank_{Ω,ε} ≤ minrank_{Ω₂,ε} + 1 (Lemma 3), and

.. math::

    \text{eps\_lower} \le \operatorname{minrank}_{\Omega_2,\varepsilon}(R) \le \text{rank\_certified},
    \qquad \text{eps\_lower} \le \operatorname{minrank}_{\Omega,\varepsilon}(R) \le \text{upper}.

``eps_lower`` is Eckart–Young on cell-disjoint fully observed blocks of Ω₂
(:func:`rankkit.bounds.eps_rank_lower_bound`): a proof from the observed values, shipped
with its blocks. ``upper`` is ``rank_certified`` when Ω's single-entry rows can be appended
to the certificate exactly (:func:`rankkit.omega.extend_certificate`, verified on every
cell of Ω), else ``rank_certified + 1`` (Lemma 3). An error over Ω within ε :math:`|Ω₂|` is a mean
over Ω within ε :math:`|Ω₂|` / :math:`|Ω|` ≤ ε, and Definition 2 divides by n·m ≥ :math:`|Ω|`, so ``upper`` bounds
those readings of the ε-rank too; ``eps_lower`` does not (a mean over Ω allows the larger
sum ε :math:`|Ω|`). A failing fit is never a lower bound: the lower ends are proofs, the upper ends
certificates, and the summary prints each bracket with the source of both of its ends.
"""

from __future__ import annotations

from ..exact import exact_completion
from ._estimate import METHODS, LabelScaleWarning, estimate_min_rank
from ._result import MinRankEstimate, Trials
from ._scale import certificate_scale

__all__ = ["estimate_min_rank", "exact_completion", "MinRankEstimate", "certificate_scale", "METHODS",
           "LabelScaleWarning", "Trials"]
