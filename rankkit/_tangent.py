r"""Tangent-space algebra of the fixed-rank manifold (Vandereycken 2013, §2): inner products,
projections, the retraction and the Gauss–Newton inner solve of :mod:`rankkit.lowrank`.

Backend-agnostic: only the operators of the kernels ``K`` (:mod:`rankkit._lrkernels`) and
their calls. A tangent vector at M = U diag(s) Vᵀ is a triple (M, U_p, V_p) meaning
ξ = U M Vᵀ + U_p Vᵀ + U V_pᵀ.
"""

from __future__ import annotations


def _ip(K, a, b) -> float:
    return K.tangent_ip(a, b)


def _axpy(t, a, b):
    """t·a + b for tangent triples."""
    return tuple(t * p + q for p, q in zip(a, b, strict=True))


def _scale(t, a):
    return tuple(t * p for p in a)


def _project(K, z, U, V):
    """P_T(Z) at M = U diag(s) Vᵀ for the sparse Z with values z on Ω, as (M, U_p, V_p)."""
    ZV = K.spmm(z, V)
    # both sums over rows in one reduction (one all-reduce on a process group)
    ZtU, M = K.rsum(K.spmm_t(z, U), U.T @ ZV)
    return (M, ZV - U @ M, ZtU - V @ M.T)


def _lowrank(xi, U, V):
    """ξ = U M Vᵀ + U_p Vᵀ + U V_pᵀ as A Bᵀ with A = [U M + U_p, U], B = [V, V_p]."""
    M, Up, Vp = xi
    return (U @ M + Up, U), (V, Vp)


def _on_omega(K, xi, U, V):
    (a1, a2), (b1, b2) = _lowrank(xi, U, V)
    return K.sampled2(a1, b1, a2, b2)


def _project_lowrank(K, A, B, U, V):
    """P_T(A Bᵀ) at (U, V) for thin A (n × j), B (m × j): O((n + m) j k)."""
    ZV = A @ (B.T @ V)
    ZtU = B @ K.rgram(A, U)
    M = K.rgram(U, ZV)
    return (M, ZV - U @ M, ZtU - V @ M.T)


def _retract(K, U, s, V, xi, k):
    """Rank-k truncation of M + ξ (the metric projection retraction), from a 2k × 2k core."""
    M, Up, Vp = xi
    Qu, Ru = K.qr_rows(Up)
    Qv, Rv = K.qr(Vp)
    core = K.stack_rows([K.cat([K.diag(s) + M, Rv.T]), K.cat([Ru, K.zeros(*Ru.shape)])])
    a, sv, bt = K.svd(core)
    return K.cat([U, Qu]) @ a[:, :k], sv[:k], K.cat([V, Qv]) @ bt[:k].T


def _gn_cg(K, U, V, g, mu, cg_iter, cg_tol):
    """The LM step ξ ∈ T_M: conjugate gradients on (P_T P_Ω P_T + μI) ξ = −g from ξ = 0, stopped
    after ``cg_iter`` products or when ‖residual‖ ≤ ``cg_tol`` ‖g‖ (None when g = 0). Written
    with the backend kernels: the torch and sharded path, and the reference of the compiled
    loop :mod:`rankkit._cgkernel`."""
    # tangent vectors stored flat, [M | U_p | V_p]: one array operation per update instead of
    # three (the loop is dominated by such small operations)
    shapes = [a.shape for a in g]
    gf = K.flat(g)
    xf = 0.0 * gf
    res = -gf
    d = res
    rr = b2 = K.flat_ip(res, res)
    if b2 == 0.0:
        return None
    for _ in range(cg_iter):
        Hd = K.flat(_project(K, _on_omega(K, K.unflat(d, shapes), U, V), U, V))
        Hd += mu * d
        dHd = K.flat_ip(d, Hd)
        if not dHd > 0:
            break
        a = rr / dHd
        xf = xf + a * d
        res = res - a * Hd
        rn = K.flat_ip(res, res)
        if rn <= cg_tol * cg_tol * b2:
            break
        d = res + (rn / rr) * d
        rr = rn
    return K.unflat(xf, shapes)


