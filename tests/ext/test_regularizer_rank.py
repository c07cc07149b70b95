"""L_reg (paper 002, eq. 14) and the rank of RAD-Q's learned matrix (§4.5, Fig. 7 left).

The claim of Fig. 7 at test scale: at a fixed seed, with the same steps and data order, a
large L_reg coefficient shrinks Δr̂'s spread across tokens (the row-wise std of R̂, whose
row mean is the baseline) and with it the non-baseline singular values σ_k/σ_1, k ≥ 2; in
the limit (Δr̂ ≡ 0, "abstain") R̂ = H w 1ᵀ has numerical rank 1. Uses the pieces
``analyses/learned_rank_regularizer.py`` is built from (``rankkit_ext.learned``, ``tiny_gpt2``,
``train``), so the figure and the test share one pipeline.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import rankkit as rk  # noqa: E402
from rankkit.sequences import RewardDataset  # noqa: E402
from rankkit_ext.learned import delta_spread, learned_matrix, sample_prefixes  # noqa: E402
from rankkit_ext.lm import tiny_gpt2  # noqa: E402
from rankkit_ext.models import RADQ  # noqa: E402
from rankkit_ext.training import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
V = 200  # the last id is BOS, never in the data
CFG = dict(max_len=10, d=16, n_layer=1, n_head=2, epochs=6, batch_size=16, lr=3e-3,
           reg_coef=30.0)


def sentiment_dataset(n=120, seed=0):
    """Utterances over V - 1 tokens; the response is the share of 'positive' tokens (ids < 40)
    minus the share of 'negative' ones (40 ≤ id < 80), so single tokens move the reward."""
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, V - 1, rng.integers(2, CFG["max_len"] + 1)) for _ in range(n)]
    y = np.array([np.mean(s < 40) - np.mean((s >= 40) & (s < 80)) for s in seqs]) * 0.5 + 0.5
    return RewardDataset([s.tolist() for s in seqs], y.astype(np.float32), vocab_size=V)


def tiny_radq(seed=0):
    return RADQ(tiny_gpt2(V, CFG["d"], CFG["n_layer"], CFG["n_head"], CFG["max_len"] + 1,
                          seed=seed))


@pytest.fixture(scope="module")
def trained():
    # one torch thread: on these tiny tensors the hand-off between 2 shared cores costs more
    # than the maths (the caller's thread count is restored)
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = sentiment_dataset()
        # the protocol of the figure (its train_pair): one RAD-Q per coefficient, each from
        # the same initial weights, seed and data order
        models, results = {}, {}
        for c in (0.0, CFG["reg_coef"]):
            models[c] = tiny_radq(seed=0)
            results[c] = train(models[c], ds, reg_coef=c, epochs=CFG["epochs"],
                               batch_size=CFG["batch_size"], lr=CFG["lr"], seed=0,
                               max_len=CFG["max_len"])
        init = tiny_radq(seed=0).eval()
        prefixes = sample_prefixes(ds, 64, seed=1)
        mats = {c: learned_matrix(m, prefixes) for c, m in models.items()}
    finally:
        torch.set_num_threads(n_threads)
    return ds, models, results, init, prefixes, mats


def test_same_seed_same_init_and_same_steps(trained):
    _, models, results, init, _, _ = trained
    assert set(models) == {0.0, CFG["reg_coef"]}
    assert results[0.0].steps == results[CFG["reg_coef"]].steps > 0
    # the frozen output embeddings e(v) come from the shared init, bit for bit
    for m in models.values():
        assert torch.equal(m.output_embedding_weight(), init.output_embedding_weight())


def test_l_reg_shrinks_delta_spread_and_non_baseline_spectrum(trained):
    _, _, _, _, _, mats = trained
    R0, R1 = mats[0.0], mats[CFG["reg_coef"]]
    s0, s1 = delta_spread(R0), delta_spread(R1)
    assert s0 > 0.0
    assert s1 < 0.5 * s0, (s0, s1)
    sv0, sv1 = rk.singular_values(R0), rk.singular_values(R1)
    tail0, tail1 = sv0[1] / sv0[0], sv1[1] / sv1[0]
    assert tail1 < 0.5 * tail0, (tail0, tail1)
    assert rk.numerical_rank(R1) <= rk.numerical_rank(R0) <= CFG["d"]


def test_l_reg_does_not_wreck_the_fit(trained):
    """L_reg pulls Δr̂ to 0 on random tokens, not the baseline: the cumulative objective
    (without L_reg) stays within 2x of the unregularised model's."""
    from rankkit_ext.training import evaluate

    ds, models, _, _, _, _ = trained
    l0 = evaluate(models[0.0], ds, max_len=CFG["max_len"])
    l1 = evaluate(models[CFG["reg_coef"]], ds, max_len=CFG["max_len"])
    assert l1 < 2.0 * l0, (l0, l1)


def test_abstaining_model_has_rank_one_and_zero_spread(trained):
    """Δr̂ ≡ 0 (W = 0, the strong-regularisation limit of §4.5) leaves R̂ = H w 1ᵀ: rank 1."""
    _, _, _, init, prefixes, _ = trained
    with torch.no_grad():
        init.W.weight.zero_()
    R = learned_matrix(init, prefixes)
    assert delta_spread(R) < 1e-7
    assert rk.numerical_rank(R) == 1
    assert np.abs(R).max() > 0  # the baseline is still there


def test_delta_spread_and_prefix_sampling():
    H, w = np.arange(1.0, 4.0)[:, None], np.ones((1, 5))
    assert delta_spread(H @ w) == 0.0
    np.testing.assert_allclose(delta_spread(np.array([[0.0, 2.0], [1.0, 1.0]])), 0.5)
    ds = sentiment_dataset(n=10)
    pre = sample_prefixes(ds, 40, seed=3)
    assert pre == sample_prefixes(ds, 40, seed=3) and len(pre) == 40
    full = [ds.sequences[i].tolist() for i in range(len(ds))]
    # every x' = u_{<t} is a proper prefix of some utterance (t ≤ |u|)
    assert all(any(len(p) < len(u) and u[:len(p)] == p for u in full) for p in pre)
    # the law: a uniform subset of the distinct prefixes (rows of P_Ω(R)), without repeats;
    # asking for more than there are gives all of them
    rows = {tuple(u[:t]) for u in full for t in range(len(u))}
    assert len(set(map(tuple, pre))) == len(pre)
    every = sample_prefixes(ds, 10 * len(rows), seed=3)
    assert len(every) == len(rows) and set(map(tuple, every)) == rows
    # uniform inclusion, Pr(x' in S) = N / |X|: the empty prefix (the row the old law of
    # utterance-then-position drew about once in |u| draws) is in a 5-subset ~5/|X| of seeds
    hits = sum([] in sample_prefixes(ds, 5, seed=s) for s in range(400))
    p0 = 5 / len(rows)
    assert abs(hits / 400 - p0) < 4 * (p0 * (1 - p0) / 400) ** 0.5 + 1e-9, (hits, p0)


def test_script_rejects_non_positive_reg_coef(tmp_path):
    """The script runs as ``python -m analyses.learned_rank_regularizer`` from the checkout
    (no sys.path edits) and refuses L_reg coefficient 0 before it loads anything."""
    p = subprocess.run([sys.executable, "-m", "analyses.learned_rank_regularizer", "--quick",
                        "--reg-coef", "0", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert "reg_coef must be > 0" in p.stderr, p.stderr[-2000:]
    assert not list(tmp_path.iterdir())
