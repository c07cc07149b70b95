"""The scale of a certificate: how large the completed matrix is, off Ω as well as on it."""

from __future__ import annotations

import math

import numpy as np

from .._backend import to_numpy

# Largest n₂ × m₂ for which the certificate's max |entry| is computed exactly (row blocks of
# U diag(d) Vᵀ, never the whole matrix at once); above it, a bound from factor row norms.
_EXACT_SCALE_CELLS = 1 << 28


def certificate_scale(U, d, V, *, exact_cells: int = _EXACT_SCALE_CELLS,
                      block_elems: int = 1 << 24) -> dict:
    r"""How large the completed matrix M = U diag(d) Vᵀ is, off Ω as well as on it.

    Returns a dict with

    - ``max_abs``: max_{i,j} :math:`|M_{ij}|` over all n × m cells — exact when n·m ≤ ``exact_cells``
      (computed in row blocks of ``block_elems`` cells), else the Cauchy–Schwarz bound
      max_i ‖(U diag(d))_i‖ · max_j ‖V_j‖ ≥ max :math:`|M_{ij}|`;
    - ``max_abs_exact``: which of the two it is;
    - ``nuclear``: ‖M‖_* = Σ :math:`|d|` (U, V orthonormal), ``frobenius``: ‖M‖_F = ‖d‖₂;
    - ``rms``: ‖M‖_F / √(n m), the root-mean-square entry.
    """
    U, V = to_numpy(U, np.float64), to_numpy(V, np.float64)
    d = to_numpy(d, np.float64).reshape(-1)
    n, m = U.shape[0], V.shape[0]
    nuc, fro = float(np.abs(d).sum()), float(np.sqrt((d * d).sum()))
    out = {"nuclear": nuc, "frobenius": fro, "rms": fro / math.sqrt(max(n * m, 1))}
    if d.size == 0 or n == 0 or m == 0:
        return {**out, "max_abs": 0.0, "max_abs_exact": True}
    Ud = U * d
    if n * m <= exact_cells:
        step = max(1, block_elems // m)
        mx = 0.0
        for a in range(0, n, step):
            mx = max(mx, float(np.abs(Ud[a:a + step] @ V.T).max()))
        return {**out, "max_abs": mx, "max_abs_exact": True}
    bound = float(np.sqrt((Ud * Ud).sum(1)).max() * np.sqrt((V * V).sum(1)).max())
    return {**out, "max_abs": bound, "max_abs_exact": False}
