r"""The inner solve of the Riemannian Levenberg–Marquardt step, as one compiled loop.

:meth:`rankkit.lowrank._Run.step_rlm` solves, by conjugate gradients in the tangent space
T_M at M = U diag(s) Vᵀ,

.. math::

    \bigl(P_T P_\Omega P_T + \mu I\bigr)\,\xi = -\operatorname{grad} f(M),

with a tangent vector stored flat as [M | U_p | V_p] (k × k, n × k, m × k), meaning
ξ = U M Vᵀ + U_p Vᵀ + U V_pᵀ. One product with the Gauss–Newton operator is

.. math::

    z_{ij} = (U M + U_p)_i \cdot V_j + U_i \cdot (V_p)_j \quad ((i, j) \in \Omega), \qquad
    M' = U^\top Z V, \quad \bigl(M',\; Z V - U M',\; Z^\top U - V M'^\top\bigr) + \mu\,\xi:

one pass over the cells in row order (z and Z V together), one in column order (Zᵀ U), and
four thin dense products (BLAS).

On reward data the patterns are small (vader:movie Ω₂: 13,317 cells, rank 6), a product is
~10⁵ flops, and the Python-level loop :func:`rankkit._tangent._gn_cg` (the reference, written
with the backend kernels; the torch and sharded path) spends about as long dispatching its
dozen array operations per product as computing them. Here the whole CG loop runs in
compiled code, with the same arithmetic up to ``fastmath`` reassociation (a few ulps per
product; CG amplifies them over many products as it does any rounding).

Serial by design: below :data:`rankkit._kernels._SERIAL_WORK` cells × rank the thread pool
costs more than it saves; larger problems take the reference loop and its parallel kernels.
One build on one machine is bitwise reproducible run to run (checkpoint / resume).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._kernels import _FASTMATH

__all__ = ["gn_cg"]


@njit(cache=True, fastmath=set(_FASTMATH))
def _gn_cg_kernel(indptr, indices, tptr, tidx, tperm, U, V, gf, mu, cg_iter, cg_tol, xf):
    """CG on (P_T P_Ω P_T + μI) x = −g from x = 0; writes x into ``xf``, returns the number of
    operator products (0 when g = 0)."""
    n, k = U.shape
    m = V.shape[0]
    kk, nk = k * k, n * k
    size = kk + nk + m * k
    res = np.empty(size)
    rr = 0.0
    for q in range(size):
        res[q] = -gf[q]
        xf[q] = 0.0
        rr += gf[q] * gf[q]
    if rr == 0.0:
        return 0
    b2 = rr
    d = res.copy()
    Hd = np.empty(size)
    z = np.empty(indices.size)
    ZV = np.empty((n, k))
    ZtU = np.empty((m, k))
    Ut = np.ascontiguousarray(U.T)
    products = 0
    for _ in range(cg_iter):
        products += 1
        dM = d[:kk].reshape((k, k))
        dUp = d[kk:kk + nk].reshape((n, k))
        dVp = d[kk + nk:].reshape((m, k))
        A1 = np.dot(U, dM) + dUp
        for a in range(n):
            for t in range(k):
                ZV[a, t] = 0.0
            for p in range(indptr[a], indptr[a + 1]):
                b = indices[p]
                e = 0.0
                for t in range(k):
                    e += A1[a, t] * V[b, t] + U[a, t] * dVp[b, t]
                z[p] = e
                for t in range(k):
                    ZV[a, t] += e * V[b, t]
        for j in range(m):
            for t in range(k):
                ZtU[j, t] = 0.0
            for q in range(tptr[j], tptr[j + 1]):
                e = z[tperm[q]]
                a = tidx[q]
                for t in range(k):
                    ZtU[j, t] += e * U[a, t]
        Mp = np.dot(Ut, ZV)
        HU = ZV - np.dot(U, Mp)
        HV = ZtU - np.dot(V, Mp.T)
        dHd = 0.0
        for s in range(k):
            for t in range(k):
                h = Mp[s, t] + mu * dM[s, t]
                Hd[s * k + t] = h
                dHd += d[s * k + t] * h
        for a in range(n):
            for t in range(k):
                h = HU[a, t] + mu * dUp[a, t]
                Hd[kk + a * k + t] = h
                dHd += dUp[a, t] * h
        for j in range(m):
            for t in range(k):
                h = HV[j, t] + mu * dVp[j, t]
                Hd[kk + nk + j * k + t] = h
                dHd += dVp[j, t] * h
        if not dHd > 0.0:
            break
        alpha = rr / dHd
        rn = 0.0
        for q in range(size):
            xf[q] += alpha * d[q]
            res[q] -= alpha * Hd[q]
            rn += res[q] * res[q]
        if rn <= cg_tol * cg_tol * b2:
            break
        beta = rn / rr
        for q in range(size):
            d[q] = res[q] + beta * d[q]
        rr = rn
    return products


def gn_cg(K, U, V, gf, mu: float, cg_iter: int, cg_tol: float) -> np.ndarray:
    """The flat solution x of :func:`rankkit._tangent._gn_cg` for a
    :class:`rankkit._lrkernels.NumpyLRKernels` ``K`` (its row and column patterns), float64."""
    c = np.ascontiguousarray
    xf = np.empty(gf.size)
    _gn_cg_kernel(K.indptr, K.indices, K.t_indptr, K.t_indices, K.perm, c(U), c(V), c(gf),
                  float(mu), int(cg_iter), float(cg_tol), xf)
    return xf
