"""How far rankkit's fixed-rank solver gets at a near-miss rank when given far more time.

``estimate_min_rank`` stops a fit whose MSE fell by less than half over 30 steps
(``window``, ``stall``). At vader:nyt rank 5 every start stalls at 2–5e-6 while pymanopt's
Riemannian CG from the spectral start reaches ε = 1e-6 after ~80k iterations (RESULTS.md,
issue 22). This probe fits the rank from the spectral start with the defaults, then continues
from that fit with longer windows: LM with ρ = 0 (plain least squares), LM with the default
ρ = 1e-4 and Riemannian CG, each until it stalls by the looser rule or hits ``--seconds``.
Prints the machine, the MSE, iterations, seconds and the largest entry of each fit.

    python benchmarks/probe_near_miss.py --set nyt --rank 5        # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def main(argv=None) -> list[dict]:
    import rankkit as rk
    from rankkit._starts import _spectral_start
    from rankkit.lowrank import fixed_rank_fit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="nyt", choices=["movie", "tweets", "nyt", "amazon"])
    ap.add_argument("--rank", type=int, default=5)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--seconds", type=float, default=60.0, help="time limit of each continuation")
    a = ap.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}; rankkit {rk.__version__}")
    R2 = rk.reduce_omega2(rk.build_reward_matrix(rk.datasets.load(f"vader:{a.set}")))
    S = R2.to_scipy(0)
    U, d, V = _spectral_start(S.indptr, S.indices, S.data.astype(np.float64), S.shape, a.rank,
                              np.random.default_rng(0))
    t = time.perf_counter()
    f0 = fixed_rank_fit(S, a.rank, eps=a.eps, warm_start={"u": U, "d": d, "v": V}, progress=False)
    rows = [dict(run="defaults from the spectral start", mse=rk.observed_mse(S, f0),
                 n_iter=int(f0.n_iter), stop=f0.meta.get("stop"), seconds=time.perf_counter() - t,
                 max_abs=rk.certificate_scale(f0.U, f0.d, f0.V)["max_abs"])]
    variants = [("LM, rho 0, window 200, stall 2 %", dict(rho=0.0, window=200, stall=0.02, method="rlm")),
                ("LM, rho 1e-4, window 1000, stall 0.5 %",
                 dict(rho=1e-4, window=1000, stall=0.005, method="rlm")),
                ("RCG, rho 0, window 2000, stall 2 %", dict(rho=0.0, window=2000, stall=0.02, method="rcg"))]
    for name, kw in variants:
        t = time.perf_counter()
        f = fixed_rank_fit(S, a.rank, eps=a.eps, warm_start=f0, progress=False, max_iter=10 ** 6,
                           callback=lambda it, info, t=t: time.perf_counter() - t > a.seconds, **kw)
        rows.append(dict(run=f"continued: {name}", mse=rk.observed_mse(S, f), n_iter=int(f.n_iter),
                         stop=f.meta.get("stop"), seconds=time.perf_counter() - t,
                         max_abs=rk.certificate_scale(f.U, f.d, f.V)["max_abs"]))
    print(f"vader:{a.set} Ω₂ {S.shape[0]:,} × {S.shape[1]:,}, {S.nnz:,} cells, rank {a.rank}, "
          f"ε {a.eps:g}")
    for r in rows:
        print(f"  {r['run']:<44} MSE {r['mse']:.3g}  {r['n_iter']:>6} it.  {r['seconds']:6.1f} s  "
              f"max|M| {r['max_abs']:.3g}  {r['stop']}{'  (reached ε)' if r['mse'] <= a.eps else ''}")
    return rows


if __name__ == "__main__":
    main()
