"""``analyses/learned_rank.py`` (paper 002, Fig. 2 / Fig. 9): ``rankkit_ext.learned.rank_summary``
ranks R̂ in its own dtype,
and the ``--quick`` path end to end (full GPT-2 vocabulary, cached blocks, JSON contract)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rankkit_ext.learned import RANK_REL_TOLS, rank_summary  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@settings(max_examples=15, deadline=None)
@given(r=st.integers(1, 5), n_rows=st.integers(12, 40), n_cols=st.integers(300, 600),
       seed=st.integers(0, 2**32 - 1))
def test_rank_summary_counts_in_the_matrix_dtype(r, n_rows, n_cols, seed):
    """A float32 rank-r R̂ (a product rounded to float32, as a float32 model returns it) is
    rank r at every N ≥ r with the float32 cutoff, as ``numpy.linalg.matrix_rank`` of the
    same rows says; the float64 cutoff on the cast rows counts the rounding as rank."""
    rng = np.random.default_rng(seed)
    R = (rng.standard_normal((n_rows, r), dtype=np.float32)
         @ rng.standard_normal((r, n_cols), dtype=np.float32))
    sizes = sorted({max(1, r // 2), r, n_rows // 2, n_rows})
    out = rank_summary(R, sizes, float64_up_to=n_rows, n_spectrum=n_rows)
    assert out["dtype"] == "float32" and out["sizes"] == sizes
    assert out["rank"] == [int(np.linalg.matrix_rank(R[:n])) for n in sizes]
    assert out["rank"] == [min(n, r) for n in sizes]
    for n in sizes:
        if n > r:
            assert out["rank_float64_cutoff"][str(n)] > r  # rounding noise counted
    # relative-tolerance ε-ranks shrink as the tolerance grows, and the spectrum is σ/σ₁
    tols = RANK_REL_TOLS
    for a, b in zip(tols, tols[1:], strict=False):
        assert all(x <= y for x, y in zip(out[f"rank_rel_{a:g}"], out[f"rank_rel_{b:g}"],
                                          strict=True))
    s = np.linalg.svd(R.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(out["spectrum"][:r], s[:r] / s[0], rtol=1e-4)


def test_quick_run_writes_the_figure_and_ranks_of_the_cached_rows(tmp_path):
    """``python -m analyses.learned_rank --quick``: trains RAD-V and RAD-Q on vader:movie
    with the full 50,257-token vocabulary; the JSON's ranks are those of the cached R̂
    blocks in their own dtype and RAD-Q stays within its bound."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    cmd = [sys.executable, "-m", "analyses.learned_rank", "--quick", "--out", str(out),
           "--cache", str(cache), "--no-progress"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "learned_rank.png").stat().st_size > 0
    res = json.loads((out / "learned_rank.json").read_text())
    assert res["vocab_size"] == 50257 and res["quick"] is True
    lo, up = res["data_min_rank"]["lower"], res["data_min_rank"]["upper"]
    assert up is None or lo <= up
    (work,) = cache.iterdir()
    for kind, m in res["models"].items():
        f = m["final"]
        assert f["dtype"] == "float32" and f["n_cols"] == 50257
        assert all(r <= n for r, n in zip(f["rank"], f["sizes"], strict=True))
        blocks = sorted(work.glob(f"{kind}_step{m['steps']}_*.npz"),
                        key=lambda q: int(q.stem.split("_")[-2]))
        R = np.concatenate([np.load(b)["R"] for b in blocks])
        assert R.dtype == np.float32 and R.shape == (f["sizes"][-1], 50257)
        assert f["rank"][-1] == np.linalg.matrix_rank(R)  # NumPy's cutoff, float32 ε
        for n, r64 in f["rank_float64_cutoff"].items():
            assert r64 >= f["rank"][f["sizes"].index(int(n))]
        assert 0 in {int(k) for k in m["by_step"]}  # the untrained model is measured
    q = res["models"]["RADQ"]
    assert max(q["final"]["rank"]) <= q["rank_bound"] == q["d"]  # eq. 11
    assert res["claim"] and len(res["findings"]) >= 5
