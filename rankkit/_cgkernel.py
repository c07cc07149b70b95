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

one pass over the cells in row order (z, Z V and M' together), one in column order (Zᵀ U and
the V_p part together), one over the rows for the U_p part.

On reward data the patterns are small (vader:movie Ω₂: 13,317 cells, rank 6), a product is
~10⁵ flops, and the Python-level loop :func:`rankkit._tangent._gn_cg` (the reference, written
with the backend kernels; the torch and sharded path) spends about as long dispatching its
dozen array operations per product as computing them. Here the whole CG loop runs in
compiled code, with the same arithmetic up to ``fastmath`` reassociation (a few ulps per
product; CG amplifies them over many products as it does any rounding). The thin dense
products (U M, Uᵀ Z V, U M', V M'ᵀ) are loops here, not BLAS calls: at k ≤ ~10 a call costs
more than its arithmetic, and BLAS's rounding depends on where its operands happen to lie
in memory (alignment), which made two runs of the same fit differ in the last bits from the
second LM step on. Ranks up to :data:`_SPECIALISED_K` get a build with k a compile-time
constant (the k-term loops unrolled): vader:nyt Ω₂ at k = 5, 0.13 ms per product against
0.20 ms generic and 0.19 ms with BLAS; vader:movie at k = 6, 0.36 against 0.46 ms.

Serial by design: below :data:`rankkit._kernels._SERIAL_WORK` cells × rank the thread pool
costs more than it saves; larger problems take the reference loop and its parallel kernels.
The kernel releases the GIL, so :mod:`rankkit.minrank` runs several starts of a rank at once
in threads. Deterministic: one build on one machine gives the same bits run to run, from any
thread (checkpoint / resume, and the threaded starts, rely on it).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import literally, njit, typeof, types

from ._kernels import _FASTMATH

__all__ = ["gn_cg"]

#: Ranks up to this get a build of their own, with k a compile-time constant (LLVM unrolls the
#: k-term loops). Each such k compiles once per machine (~1 s, cached on disk); larger ranks
#: share the generic build.
_SPECIALISED_K = 10


@njit(cache=True, nogil=True, fastmath=set(_FASTMATH))
def _gn_cg_kernel(indptr, indices, tptr, tidx, tperm, U, V, gf, mu, cg_iter, cg_tol, xf, k):
    """CG on (P_T P_Ω P_T + μI) x = −g from x = 0, k = the rank (U's width); writes x into
    ``xf``, returns the number of operator products (0 when g = 0)."""
    n = U.shape[0]
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
    Mp = np.empty((k, k))
    w = np.empty(k)
    products = 0
    for _ in range(cg_iter):
        products += 1
        dM = d[:kk].reshape((k, k))
        dUp = d[kk:kk + nk].reshape((n, k))
        dVp = d[kk + nk:].reshape((m, k))
        # the thin products by hand, not np.dot: BLAS's result depends on the operands'
        # memory alignment (run-to-run bit differences), and at k ≤ ~10 its call costs more
        # than the arithmetic
        for s in range(k):
            for t in range(k):
                Mp[s, t] = 0.0
        for a in range(n):
            for t in range(k):
                e = dUp[a, t]
                for s in range(k):
                    e += U[a, s] * dM[s, t]
                w[t] = e
                ZV[a, t] = 0.0
            for p in range(indptr[a], indptr[a + 1]):
                b = indices[p]
                e = 0.0
                for t in range(k):
                    e += w[t] * V[b, t] + U[a, t] * dVp[b, t]
                z[p] = e
                for t in range(k):
                    ZV[a, t] += e * V[b, t]
            for s in range(k):
                for t in range(k):
                    Mp[s, t] += U[a, s] * ZV[a, t]
        dHd = 0.0
        for s in range(k):
            for t in range(k):
                h = Mp[s, t] + mu * dM[s, t]
                Hd[s * k + t] = h
                dHd += d[s * k + t] * h
        # U_p part: Z V − U M' ; V_p part: Zᵀ U − V M'ᵀ, accumulated column by column
        for a in range(n):
            for t in range(k):
                h = ZV[a, t] + mu * dUp[a, t]
                for s in range(k):
                    h -= U[a, s] * Mp[s, t]
                Hd[kk + a * k + t] = h
                dHd += dUp[a, t] * h
        for j in range(m):
            off = kk + nk + j * k
            for t in range(k):
                w[t] = 0.0
            for q in range(tptr[j], tptr[j + 1]):
                e = z[tperm[q]]
                a = tidx[q]
                for t in range(k):
                    w[t] += e * U[a, t]
            for t in range(k):
                h = w[t] + mu * dVp[j, t]
                for s in range(k):
                    h -= V[j, s] * Mp[t, s]
                Hd[off + t] = h
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


@njit(cache=True, nogil=True)
def _gn_cg_fixed_k(indptr, indices, tptr, tidx, tperm, U, V, gf, mu, cg_iter, cg_tol, xf, k):
    """:func:`_gn_cg_kernel` compiled for the value of k (a literal)."""
    return _gn_cg_kernel(indptr, indices, tptr, tidx, tperm, U, V, gf, mu, cg_iter, cg_tol, xf,
                         literally(k))


@functools.cache
def _entry(sig):
    """The compiled :func:`_gn_cg_fixed_k` for one signature (k a literal). Called through
    its dispatcher, a literal argument costs a failed typing pass and a retry, ~3 ms per
    call: more than a whole CG solve on reward data."""
    if sig not in _gn_cg_fixed_k.overloads:
        _gn_cg_fixed_k.compile(sig)
    return _gn_cg_fixed_k.overloads[sig].entry_point


def gn_cg(K, U, V, gf, mu: float, cg_iter: int, cg_tol: float) -> np.ndarray:
    """The flat solution x of :func:`rankkit._tangent._gn_cg` for a
    :class:`rankkit._lrkernels.NumpyLRKernels` ``K`` (its row and column patterns), float64."""
    c = np.ascontiguousarray
    xf = np.empty(gf.size)
    k = int(U.shape[1])
    args = (K.indptr, K.indices, K.t_indptr, K.t_indices, K.perm, c(U), c(V), c(gf),
            float(mu), int(cg_iter), float(cg_tol), xf)
    if k > _SPECIALISED_K:
        _gn_cg_kernel(*args, k)
    else:
        _entry(tuple(typeof(a) for a in args) + (types.IntegerLiteral(k),))(*args, k)
    return xf
