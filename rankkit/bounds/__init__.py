r"""Lower bounds on the minimal rank of a partially observed matrix, with their proofs.

Two siblings, one quantity each (paper 002, Def. 1–2):

- :mod:`rankkit.bounds.exact_rank`: the *exact* minimal rank minrank_Ω(R) (ε = 0), from
  forced-triangular patterns (Lemma 2) and fully observed blocks of full numerical rank;
- :mod:`rankkit.bounds.eps_rank`: the minimal *ε*-rank minrank_{Ω₂,ε}(R) (squared error
  over Ω₂ at most ε :math:`|Ω₂|`), from cell-disjoint fully observed blocks and Eckart–Young,
  and under a stated entry bound ``max_abs`` from partially observed blocks too.

Every bound ships with the object that proves it (rows, columns, singular values) and a
``verify(R)`` that re-checks it; :mod:`rankkit.testing.bounds` wraps both as assertions.
"""

from .eps_rank import (
    EpsRankLowerBound,
    PartialBlock,
    SpectralBlock,
    block_bound_ceiling,
    block_tail,
    eps_rank_lower_bound,
)
from .exact_rank import (
    BlockCertificate,
    RankLowerBound,
    TriangularCertificate,
    full_block_bound,
    rank_lower_bound,
    triangular_bound,
)

__all__ = ["TriangularCertificate", "BlockCertificate", "RankLowerBound", "triangular_bound",
           "full_block_bound", "rank_lower_bound", "SpectralBlock", "PartialBlock", "EpsRankLowerBound",
           "eps_rank_lower_bound", "block_tail", "block_bound_ceiling"]
