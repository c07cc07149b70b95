"""rankkit_ext.compare_rank (issue 14, item 8): the learned matrix's numerical rank, the model's d
and the data's certified bracket in one report, on Example 3's dataset (minimal rank n, Lemma 2)."""

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import rankkit as rk  # noqa: E402
from rankkit.synthetic import upper_triangular_dataset  # noqa: E402
from rankkit_ext import RADQ, RADV, RankComparison, compare_rank  # noqa: E402
from rankkit_ext.lm import tiny_causal_lm  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 6  # minrank_Ω(R) = 6 exactly; 2N = 12 tokens, BOS = 12


@pytest.fixture(scope="module")
def data():
    ds = upper_triangular_dataset(N)
    return ds, rk.estimate_min_rank(ds, progress=False)


def _model(kind, d, seed=0):
    lm = tiny_causal_lm("llama", vocab_size=2 * N + 1, hidden_size=d, n_layer=1, n_head=2,
                        bos_token_id=2 * N, seed=seed)
    return kind(lm, seed=seed).eval()


def _slow_learned_matrix(model, prefixes, vocab_size, dtype=np.float32):
    """R̂[i, v] = r̂(v | x'_i), one score_sequences call per cell."""
    out = np.zeros((len(prefixes), vocab_size), dtype=dtype)
    with torch.no_grad():
        for i, p in enumerate(prefixes):
            for v in range(vocab_size):
                out[i, v] = float(model.score_sequences(torch.tensor([list(p) + [v]]))[0])
    return out


@pytest.mark.parametrize("kind,d", [(RADQ, 4), (RADQ, 8), (RADV, 4)])
def test_report_matches_slow_rank_and_the_certificate(data, kind, d):
    ds, est = data
    model = _model(kind, d)
    rep = compare_rank(model, ds, estimate=None, seed=0)
    assert isinstance(rep, RankComparison)
    R = rk.build_reward_matrix(ds)
    assert rep.n_prefixes == R.shape[0] == N + 1  # fewer rows than n_prefixes: all of them
    assert sorted(rep.prefix_rows.tolist()) == list(range(N + 1))
    slow = _slow_learned_matrix(model, [R.prefix(int(i)).tolist() for i in rep.prefix_rows],
                                model.vocab_size)
    assert rep.learned_rank == np.linalg.matrix_rank(slow)  # NumPy's cutoff = App. D.4's
    np.testing.assert_allclose(rep.singular_values, np.linalg.svd(slow, compute_uv=False),
                               rtol=1e-4, atol=1e-5)
    assert rep.n_columns == model.vocab_size and rep.dtype == "float32"
    assert (rep.data_lower, rep.data_upper) == (est.exact_lower, est.upper)
    assert est.exact_bracket == (N, N) and est.upper <= N  # ε > 0 may need less than N
    assert rep.data_eps_lower == est.eps_lower >= 1
    assert rep.hidden_size == d
    text = rep.summary()
    assert f"numerical rank {rep.learned_rank}" in text and f"d = {d}" in text
    assert f"minrank_Ω(R) ≥ {N}" in text and f"≤ {est.upper}" in text
    # above the measured noise floor (another batching, a float64 copy): the rank of the
    # same model's matrix computed in float64, one cell at a time (σ's below 1e-9 σ₁ of that
    # matrix are its rounding)
    assert rep.noise_floor is not None and set(rep.noise_floor.norm_E) == {"batching", "float64"}
    assert 0 < rep.noise_floor.floor[-1] < 1e-3 * rep.singular_values[0]
    m64 = copy.deepcopy(model).to(torch.float64)
    exact = _slow_learned_matrix(m64, [R.prefix(int(i)).tolist() for i in rep.prefix_rows],
                                 model.vocab_size, np.float64)
    s64 = np.linalg.svd(exact, compute_uv=False)
    assert rep.rank_at_floor == int(np.count_nonzero(s64 > 1e-9 * s64[0]))
    assert rep.learned == rep.rank_at_floor
    assert f"rank {rep.rank_at_floor} above the extraction's noise floor" in text
    if kind is RADQ:
        assert rep.rank_bound == d and rep.learned_rank <= d  # eq. 11
        assert ("cannot fit" in rep.verdict) == (d < N)
        assert ("does not limit" in rep.verdict) == (d >= N)
    else:
        assert rep.rank_bound is None and "not limited by d" in rep.verdict
        assert rep.learned_rank > d  # App. D.1: RAD-V's R̂ exceeds d (7 here, d = 4)
        assert rep.rank_at_floor > d and "above its noise floor" in rep.verdict
    d_json = json.loads(json.dumps(rep.to_dict()))  # plain types only
    assert d_json["rank_at_floor"] == rep.rank_at_floor and d_json["noise_floor"]["safety"] == 10


def test_noise_floor_off_keeps_the_cutoff_only(data):
    ds, est = data
    rep = compare_rank(_model(RADV, 4), ds, estimate=est, noise_floor=False)
    assert rep.rank_at_floor is None and rep.noise_floor is None
    assert rep.learned == rep.learned_rank
    assert "noise floor" not in rep.summary() and "by NumPy's cutoff" in rep.verdict
    assert rep.to_dict()["noise_floor"] is None


def test_prefix_sample_seed_columns_and_a_given_certificate(data):
    ds, est = data
    model = _model(RADQ, 8)
    a = compare_rank(model, ds, n_prefixes=4, vocab=[0, 3, 6, 7, 9], seed=1, estimate=est)
    b = compare_rank(model, ds, n_prefixes=4, vocab=[0, 3, 6, 7, 9], seed=1, estimate=est)
    c = compare_rank(model, ds, n_prefixes=4, vocab=[0, 3, 6, 7, 9], seed=2, estimate=est)
    assert a.n_prefixes == 4 and len(set(a.prefix_rows.tolist())) == 4 and a.n_columns == 5
    assert np.array_equal(a.prefix_rows, b.prefix_rows) and a.learned_rank == b.learned_rank
    assert not np.array_equal(a.prefix_rows, c.prefix_rows)
    assert a.estimate is est  # reused, not recomputed
    assert a.learned_rank <= 4


def test_bad_inputs_are_named(data):
    ds, est = data
    with pytest.raises(TypeError, match="RADV or RADQ"):
        compare_rank(object(), ds)
    small = RADQ(tiny_causal_lm("llama", vocab_size=8, hidden_size=8, n_layer=1, n_head=2,
                                bos_token_id=7))
    with pytest.raises(ValueError, match="vocabulary of 8"):
        compare_rank(small, ds, estimate=est)
    model = _model(RADQ, 8)
    with pytest.raises(ValueError, match="n_prefixes"):
        compare_rank(model, ds, n_prefixes=0)
    with pytest.raises(KeyError, match="'toxicity'"):
        compare_rank(model, ds, label="toxicity")
    with pytest.raises(TypeError, match="MinRankEstimate"):
        compare_rank(model, ds, estimate={"lower": 1})


def test_any_dataset_form_through_as_dataset(data):
    # (token_id_lists, labels) goes through rankkit.datasets.as_dataset, no tokenizer
    ds, _ = data
    model = _model(RADQ, 8)
    rep = compare_rank(model, (ds.sequences.to_lists(), ds.responses.tolist()))
    assert rep.data_lower == N and rep.data_upper <= N and rep.n_prefixes == N + 1


def test_mlp_head_with_baseline_is_bounded_by_d_plus_one(data):
    # R-hat = H w 1^T + g(H) W E: two left factors, so the architecture allows rank d + 1
    ds, est = data
    lm = tiny_causal_lm("llama", vocab_size=2 * N + 1, hidden_size=4, n_layer=1, n_head=2,
                        bos_token_id=2 * N, seed=0)
    rep = compare_rank(RADQ(lm, head="mlp", seed=0).eval(), ds, estimate=est)
    assert rep.rank_bound == 5 and rep.learned_rank <= 5
    assert "d + 1 = 5" in rep.summary() and "d + 1 = 5" in rep.verdict
    lin = compare_rank(_model(RADQ, 4), ds, estimate=est)
    assert lin.rank_bound == 4 and "d + 1" not in lin.summary()
