"""Learned matrices R̂: rows equal per-token scoring, RAD-Q rank ≤ d, columns subset
consistently, and the result feeds rankkit's rank tools."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rankkit.sequences import TokenSequences  # noqa: E402
from rankkit_ext.learned import learned_matrix  # noqa: E402
from rankkit_ext.models import RADQ, RADV  # noqa: E402

V, D = 48, 8
TOL = 50 * np.finfo(np.float32).eps


def model(kind, seed):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=V, n_embd=D, n_layer=1, n_head=2, n_positions=16,
                                  bos_token_id=V - 1, eos_token_id=V - 1, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)
    m = kind(transformers.GPT2LMHeadModel(cfg))
    return m.eval()


PREFIXES = [[], [1], [2, 3], [4, 5, 6], [7], [1, 2, 3, 4], [9, 9], [10, 11, 12]]


@pytest.mark.parametrize("kind", [RADV, RADQ])
def test_rows_equal_uncached_scoring_and_batching_is_invisible(kind):
    m = model(kind, 1)
    R = learned_matrix(m, PREFIXES, batch_size=3, candidate_batch=37)
    assert R.shape == (len(PREFIXES), V) and R.dtype == np.float32
    with torch.no_grad():
        for i in (0, 3, 5):
            ref = m.score_sequences(torch.tensor([PREFIXES[i] + [v] for v in range(V)])).numpy()
            np.testing.assert_allclose(R[i], ref, atol=TOL, rtol=TOL)
    R2 = learned_matrix(m, TokenSequences.from_lists(PREFIXES), batch_size=8, candidate_batch=4096)
    np.testing.assert_allclose(R, R2, atol=TOL, rtol=TOL)
    assert m.candidate_batch == 4096 if kind is RADV else True  # restored after the call


@pytest.mark.parametrize("kind", [RADV, RADQ])
def test_vocab_subset_selects_columns(kind):
    m = model(kind, 2)
    cols = np.array([5, 0, 17, 5])
    full = learned_matrix(m, PREFIXES)
    sub = learned_matrix(m, PREFIXES, vocab=cols)
    np.testing.assert_allclose(sub, full[:, cols], atol=TOL, rtol=TOL)
    with pytest.raises(ValueError, match="vocab ids must lie in"):
        learned_matrix(m, PREFIXES, vocab=[V])


def test_radq_rank_at_most_d_radv_unconstrained():
    rng = np.random.default_rng(0)
    prefixes = [rng.integers(0, V - 1, rng.integers(1, 6)).tolist() for _ in range(3 * D)]
    rq = learned_matrix(model(RADQ, 3), prefixes)
    rv = learned_matrix(model(RADV, 3), prefixes)
    rank_q = int(np.linalg.matrix_rank(rq))
    rank_v = int(np.linalg.matrix_rank(rv))
    assert rank_q <= D  # eq. 11: R̂ = H(w1ᵀ + WE)
    assert rank_v > D  # the candidate passes through the layers (App. D.1)


def test_feeds_rankkit_rank_curve():
    rk = pytest.importorskip("rankkit.rank")
    R = learned_matrix(model(RADQ, 4), PREFIXES * 3)
    curve = rk.rank_curve(R, sizes=[4, 8, len(R)], seed=0)
    assert curve.n_cols == V
    assert curve.ranks[-1, 0] == rk.numerical_rank(R) == np.linalg.matrix_rank(R)  # all rows
    assert (np.diff(curve.ranks[:, 0]) >= 0).all() and curve.ranks.max() <= D


def test_rejects_non_reward_models():
    with pytest.raises(TypeError, match="RADV or RADQ"):
        learned_matrix(object(), PREFIXES)


# --------------------------------------------------------------------------------------
# the extraction pipeline's noise floor (Weyl: σ_k below ‖E‖₂ are not resolved)
# --------------------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rankkit_ext.learned import (  # noqa: E402
    extraction_noise_floor,
    nested_singular_values,
    noise_floor_from_matrices,
)


@settings(max_examples=25, deadline=None)
@given(r=st.integers(1, 6), n=st.integers(8, 30), m=st.integers(30, 80),
       log_noise=st.floats(-9, -2), gap=st.floats(-3, 0), seed=st.integers(0, 2**32 - 1))
def test_floor_rank_never_exceeds_the_exact_rank_and_finds_it_past_the_gap(
        r, n, m, log_noise, gap, seed):
    """A rank-r A seen through a perturbation E: with c ≥ 1, #{σ_k(A+E) > c‖E‖₂} ≤ r
    (Weyl: σ_{r+1}(A+E) ≤ ‖E‖₂), and = r once σ_r(A) > (c + 1)‖E‖₂; the norms and σ₁
    agree with a direct float64 SVD at every nested N."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((n, r)))[0]
    W = np.linalg.qr(rng.standard_normal((m, r)))[0]
    sv = np.logspace(0, gap, r)  # σ_r(A) = 10^gap
    A = (U * sv) @ W.T
    E = 10.0 ** log_noise * rng.standard_normal((n, m))
    sizes = sorted({max(1, n // 3), n // 2, n})
    nf = noise_floor_from_matrices(A + E, {"b": A}, sizes, safety=2.0)
    for i, k in enumerate(sizes):
        assert nf.norm_E["b"][i] == pytest.approx(np.linalg.norm(E[:k], 2), rel=1e-8)
        assert nf.sigma1[i] == pytest.approx(np.linalg.norm((A + E)[:k], 2), rel=1e-8)
    s = nested_singular_values(A + E, [n])[0]
    np.testing.assert_allclose(s, np.linalg.svd(A + E, compute_uv=False), rtol=1e-9, atol=1e-12)
    got = nf.rank(s, n)
    assert got <= r
    if sv[-1] > (nf.safety + 1) * nf.floor[-1]:
        assert got == r


def test_noise_floor_rejects_bad_input():
    A = np.ones((3, 4))
    with pytest.raises(ValueError, match="at least one other"):
        noise_floor_from_matrices(A, {})
    with pytest.raises(ValueError, match="shape"):
        noise_floor_from_matrices(A, {"b": np.ones((3, 5))})
    with pytest.raises(ValueError, match="safety"):
        noise_floor_from_matrices(A, {"b": A}, safety=0.5)
    with pytest.raises(ValueError, match="comparisons"):
        extraction_noise_floor(model(RADQ, 0), PREFIXES, comparisons=("gpu",))


def test_radq_floor_rank_is_its_exact_rank_and_the_floor_is_float32_rounding():
    """RAD-Q's float64 R̂ has rank ≤ d exactly (eq. 11). The float32 pipeline's floor
    (batching and a float64 copy of the model) lies at or above the rounding of storing
    R̂ in float32 and far below σ₁, and the rank at the floor is the float64 matrix's rank,
    where the float64 cutoff on the cast float32 matrix counts rounding as rank."""
    rng = np.random.default_rng(5)
    prefixes = [rng.integers(0, V - 1, rng.integers(0, 6)).tolist() for _ in range(4 * D)]
    m = model(RADQ, 5)
    R = learned_matrix(m, prefixes, batch_size=64)
    nf = extraction_noise_floor(m, prefixes, [D, 2 * D, 4 * D], reference=R, batch_size=64)
    assert set(nf.norm_E) == {"batching", "float64"}
    R64 = learned_matrix(copy.deepcopy(m).to(torch.float64), prefixes, batch_size=64)
    exact = int(np.linalg.matrix_rank(R64))
    assert exact <= D
    rounding = np.linalg.norm(R64 - R64.astype(np.float32), 2)
    assert nf.norm_E["float64"][-1] >= 0.5 * rounding  # the output rounding is part of E
    assert np.finfo(np.float32).eps / 4 < nf.floor_rel[-1] < 1e-4
    s = nested_singular_values(R, [4 * D])[0]
    assert nf.rank(s, 4 * D) == exact
    assert int(np.linalg.matrix_rank(R.astype(np.float64))) > exact  # what the floor avoids


def test_radv_floor_is_measured_for_both_comparisons():
    m = model(RADV, 6)
    nf = extraction_noise_floor(m, PREFIXES, batch_size=1, candidate_batch=37)
    assert nf.settings["batching"]["batch_size"] == 8 and nf.sizes == [len(PREFIXES)]
    assert all(0 < x < 1e-3 for v in nf.rel.values() for x in v)
    assert nf.to_dict()["floor_rel"] == nf.floor_rel
