"""``analyses/learned_rank.py`` (paper 002, Fig. 2 / Fig. 9): ``rankkit_ext.learned.rank_summary``
ranks R̂ in its own dtype and above a noise floor, and the ``--quick`` path end to end (full
GPT-2 vocabulary, cached blocks, every JSON field the README cites)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rankkit_ext.learned import RANK_REL_TOLS, noise_floor_from_matrices, rank_summary  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@settings(max_examples=15, deadline=None)
@given(r=st.integers(1, 5), n_rows=st.integers(12, 40), n_cols=st.integers(300, 600),
       seed=st.integers(0, 2**32 - 1))
def test_rank_summary_counts_in_the_matrix_dtype_and_above_the_floor(r, n_rows, n_cols, seed):
    """A float32 rank-r R̂ (a float64 product rounded to float32, as a float32 model returns
    it) is rank r at every N ≥ r with the float32 cutoff, as ``numpy.linalg.matrix_rank``
    says; the float64 cutoff on the cast rows counts the rounding as rank; the rank above
    the floor measured against the float64 product is r again."""
    rng = np.random.default_rng(seed)
    # every leading block of rows must itself be numerically rank min(n, r): the first r rows
    # of a plain Gaussian product can be nearly singular (seed 9320, r = 5: σ_5/σ_1 below the
    # float32 cutoff, where NumPy rightly reads 4), so they are I + 0.1 G on orthonormal rows
    L = rng.standard_normal((n_rows, r))
    L[:r] = np.eye(r) + 0.1 * rng.standard_normal((r, r))
    Q = np.linalg.qr(rng.standard_normal((n_cols, r)))[0].T * np.sqrt(n_cols)
    R64 = L @ (np.linspace(2.0, 1.0, r)[:, None] * Q)
    R = R64.astype(np.float32)
    sizes = sorted({max(1, r // 2), r, n_rows // 2, n_rows})
    nf = noise_floor_from_matrices(R, {"float64": R64}, sizes)
    out = rank_summary(R, sizes, noise=nf)
    assert out["dtype"] == "float32" and out["sizes"] == sizes
    assert out["rank"] == [int(np.linalg.matrix_rank(R[:n])) for n in sizes]
    assert out["rank"] == [min(n, r) for n in sizes]
    assert out["rank_at_floor"] == [min(n, r) for n in sizes]
    for i, n in enumerate(sizes):
        if n > r:
            assert out["rank_float64_cutoff"][i] > r  # rounding noise counted
        E = R[:n].astype(np.float64) - R64[:n]
        assert out["floor_over_sigma1"][i] == pytest.approx(
            np.linalg.norm(E, 2) / np.linalg.norm(R[:n].astype(np.float64), 2), rel=1e-6)
        assert 0 < out["floor_over_sigma1"][i] < 1e-5  # float32 rounding, far below σ₁
    tols = RANK_REL_TOLS
    for a, b in zip(tols, tols[1:], strict=False):
        assert all(x <= y for x, y in zip(out[f"rank_rel_{a:g}"], out[f"rank_rel_{b:g}"],
                                          strict=True))
    s = np.linalg.svd(R.astype(np.float64), compute_uv=False)
    assert len(out["spectrum"]) == n_rows  # the full spectrum
    np.testing.assert_allclose(out["spectrum"], s / s[0], rtol=1e-6, atol=1e-13)
    with pytest.raises(ValueError, match="noise was measured"):
        rank_summary(R, sizes[:1], noise=nf)


def _get(obj, path: str):
    """``obj`` at a README path: keys joined by "/" (field names contain dots), list indices
    as integers."""
    for part in path.split("/"):
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


#: every JSON field README.md's learned_rank bullet cites (models: both RADV and RADQ)
CITED = ["data_min_rank/exact_lower", "data_min_rank/exact_upper", "data_min_rank/eps_lower",
         "data_min_rank/upper", "data_fit/value", "data_fit/irreducible",
         "data_fit/completion_bound", "seconds_train_and_extract", "n_utterances",
         "models/RADQ/rank_bound",
         "models/RADV/seeds/0/final/cutoff_over_sigma1/0"]
CITED_PER_MODEL = ["d", "steps", "objective/mean", "objective/se",
                   "objective_over_data_fit/mean", "objective_over_data_fit/se",
                   "objective_over_data_fit/min", "objective_over_data_fit/max"]
CITED_PER_N = ["rank", "rank_at_floor", "rank_float64_cutoff", "rank_rel_0.0001",
               "floor_over_sigma1"]


def test_quick_run_writes_every_cited_field(tmp_path):
    """``python -m analyses.learned_rank --quick``: trains RAD-V and RAD-Q on vader:movie
    for two seeds with the full 50,257-token vocabulary; every field the README cites exists
    and is finite, the NumPy ranks are those of the cached R̂ blocks, RAD-Q stays within its
    bound, and no objective falls below the data's irreducible part (same scale)."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    cmd = [sys.executable, "-m", "analyses.learned_rank", "--quick", "--out", str(out),
           "--cache", str(cache), "--no-progress"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "learned_rank.png").stat().st_size > 0
    res = json.loads((out / "learned_rank.json").read_text())
    assert res["vocab_size"] == 50257 and res["quick"] is True and len(res["seeds"]) >= 2
    dm = res["data_min_rank"]
    assert "lower" not in dm  # the legacy key mixed the two brackets
    assert dm["exact_lower"] <= dm["exact_upper"]
    assert dm["upper"] is None or dm["eps_lower"] <= dm["upper"]
    paths = list(CITED)
    for kind in ("RADV", "RADQ"):
        paths += [f"models/{kind}/{f}" for f in CITED_PER_MODEL]
        n_sizes = len(res["models"][kind]["summary"]["sizes"])
        paths += [f"models/{kind}/summary/{f}/{i}/{s}" for f in CITED_PER_N
                  for i in range(n_sizes) for s in ("mean", "se", "min", "median", "max")]
    for path in paths:
        v = _get(res, path)
        assert isinstance(v, int | float) and math.isfinite(v), (path, v)
    fit = res["data_fit"]
    assert 0 <= fit["irreducible"] <= fit["value"] and fit["completion_bound"] >= 0
    (work,) = cache.iterdir()
    for kind, m in res["models"].items():
        assert m["objective"]["min"] >= fit["irreducible"] * (1 - 1e-6)
        for seed, r in m["seeds"].items():
            f = r["final"]
            assert f["dtype"] == "float32" and f["n_cols"] == 50257
            assert len(f["spectrum"]) == f["sizes"][-1]
            assert all(a <= n for a, n in zip(f["rank_at_floor"], f["sizes"], strict=True))
            assert set(r["noise_floor"]["norm_E"]) == {"batching", "float64"}
            bs = 1 if kind == "RADV" else 64
            groups = {}  # the reference extraction's blocks, by prefix set (untrained rows differ)
            for b in work.glob(f"{kind}_seed{seed}_float32_b{bs}_c4096_*.npz"):
                groups.setdefault(b.stem.rsplit("_", 2)[0], []).append(b)
            (blocks,) = [sorted(g, key=lambda q: int(q.stem.split("_")[-2]))
                         for g in groups.values()
                         if max(int(q.stem.split("_")[-1]) for q in g) == f["sizes"][-1]]
            R = np.concatenate([np.load(b)["R"] for b in blocks])
            assert R.dtype == np.float32 and R.shape == (f["sizes"][-1], 50257)
            assert f["rank"][-1] == np.linalg.matrix_rank(R)  # NumPy's cutoff, float32 ε
    q = res["models"]["RADQ"]
    assert max(st["max"] for st in q["summary"]["rank_at_floor"]) <= q["rank_bound"] == q["d"]
    assert res["claim"] and len(res["findings"]) >= 5
    assert res["device"] == "cpu" and res["scale"] == "quick"
    assert "not measured" in res["gpu_estimate"]["status"] and res["gpu_estimate"]["minutes"] > 0
    assert res["seeds_from_cache"] == 0


def test_gpu_scale_refuses_a_cpu_device(tmp_path):
    """``--scale gpu`` (RAD-V to N = 256) on the CPU would run ~1.5 h: refused up front with
    the flag to pass, before any data is loaded or model trained."""
    cmd = [sys.executable, "-m", "analyses.learned_rank", "--scale", "gpu", "--out",
           str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--no-progress"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--device cuda" in p.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()
