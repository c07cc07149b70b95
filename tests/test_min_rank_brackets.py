"""analyses/min_rank_brackets.py --quick: the JSON the README's bracket table cites, re-checked
from the data it names (the blocks re-verify on a freshly built Ω₂, the brackets are ordered
and consistent with the trials)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import rankkit as rk
from rankkit.bounds import EpsRankLowerBound

ROOT = Path(rk.__file__).resolve().parents[1]


def test_min_rank_brackets_quick_json_rechecks(tmp_path):
    subprocess.run([sys.executable, "-m", "analyses.min_rank_brackets", "--quick", "--out", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    out = json.loads((tmp_path / "min_rank_brackets.json").read_text())
    assert (tmp_path / "min_rank_brackets.png").stat().st_size > 0
    assert out["quick"] and out["eps"] == 1e-6
    assert [row["set"] for row in out["sets"]] == ["vader:tweets", "vader:amazon"]
    for row in out["sets"]:
        lo, up = row["eps_bracket"]
        elo, eup = row["exact_bracket"]
        assert 0 <= lo <= up and 0 <= elo <= eup, row["set"]
        assert row["width"] == up - lo
        # the README's claims: width ≤ 2 and eps_lower at the block method's ceiling
        assert up - lo <= 2, row["set"]
        assert lo <= row["block_method_ceiling"]
        # the shipped blocks prove eps_lower on an Ω₂ rebuilt here
        R2 = rk.reduce_omega2(rk.build_reward_matrix(rk.datasets.load(row["set"])))
        bound = EpsRankLowerBound.from_dict(row["eps_bounds"])
        assert bound.verify(R2) >= lo
        # the upper end is a passing trial at rank_certified, every MSE finite
        passing = [t for t in row["trials"] if t["passed"]]
        assert passing and min(t["rank"] for t in passing) <= row["eps_bracket_omega2"][1]
        assert all(math.isfinite(t["mse"]) for t in row["trials"])
