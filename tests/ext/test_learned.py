"""Learned matrices R̂: rows equal per-token scoring, RAD-Q rank ≤ d, columns subset
consistently, and the result feeds rankkit's rank tools."""

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
