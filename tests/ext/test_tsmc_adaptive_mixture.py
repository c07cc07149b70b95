"""The all-rounds defensive mixture of :mod:`rankkit_ext.tsmc.adaptive` pinned against slow,
obvious implementations on an enumerable table LM: the multi-tilt scorer, the masked-tilt
likelihood the pooled fits use, the strata's counts and the exact mixture weights."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rankkit_ext.tsmc import ImportanceTarget, LinearTwist, TableLM  # noqa: E402
from rankkit_ext.tsmc.adaptive import (  # noqa: E402
    _fit_pooled,
    _score,
    adaptive_tilt_mixture,
    final_sample_size,
    score_tilts,
    stratum_counts,
)
from rankkit_ext.tsmc.exact import enumerate_target  # noqa: E402
from rankkit_ext.tsmc.potentials import FunctionPotential  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

V, T, GAIN = 4, 3, 2.5


def _lm(seed, eos):
    return TableLM.random(V, T, torch.Generator().manual_seed(seed), eos_token_id=eos)


def _slow_log_q(lm, s, b):
    """Σ_t log(p(s_t|s_<t) e^{b_{s_t}} / Σ_v p(v|s_<t) e^{b_v}), one token at a time."""
    total = 0.0
    for t, v in enumerate(s):
        p = lm.log_probs[lm.code_of(s[:t])].exp().numpy()
        total += math.log(p[v] * math.exp(b[v]) / sum(p[u] * math.exp(b[u]) for u in range(V)))
    return total


def _all_sequences(lm):
    phi = FunctionPotential(lambda s: 0.0)
    return [list(s) for s in enumerate_target(lm, phi, [0], T).sequences]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), eos=st.sampled_from([None, 3]), n_tilts=st.integers(1, 3),
       data=st.data())
def test_score_tilts_matches_a_token_by_token_sum(seed, eos, n_tilts, data):
    lm = _lm(seed, eos)
    seqs = _all_sequences(lm)
    pick = data.draw(st.lists(st.integers(0, len(seqs) - 1), min_size=1, max_size=12))
    sub = [seqs[i] for i in pick]  # repeats included: the scorer dedupes and must map back
    biases = [np.array(data.draw(st.lists(st.floats(-4, 4), min_size=V, max_size=V)))
              for _ in range(n_tilts)]
    got = score_tilts(lm, [0], sub, biases, chunk=5)
    assert got.shape == (1 + n_tilts, len(sub))
    for i, s in enumerate(sub):
        assert math.isclose(got[0, i], _slow_log_q(lm, s, np.zeros(V)), abs_tol=1e-10)
        for j, b in enumerate(biases):
            assert math.isclose(got[1 + j, i], _slow_log_q(lm, s, b), abs_tol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), eos=st.sampled_from([None, 3]),
       mask=st.lists(st.booleans(), min_size=V, max_size=V).filter(any), data=st.data())
def test_masked_tilt_features_give_the_exact_tilt_likelihood(seed, eos, mask, data):
    lm = _lm(seed, eos)
    seqs = _all_sequences(lm)
    mask_idx = torch.nonzero(torch.tensor(mask))[:, 0]
    bm = torch.tensor(data.draw(st.lists(st.floats(-3, 3), min_size=len(mask_idx),
                                         max_size=len(mask_idx))), dtype=torch.float64)
    b = np.zeros(V)
    b[mask_idx.numpy()] = bm.numpy()
    ref, feats = _score(lm, [0], seqs, [b], mask_idx, chunk=7)
    assert np.allclose(ref, score_tilts(lm, [0], seqs, [b]), atol=0, rtol=0)
    assert np.allclose(feats.log_lik(bm).numpy(), ref[1] - ref[0], atol=1e-5, rtol=0)


@given(n=st.integers(10, 5000), alpha0=st.floats(0.01, 0.99), n_tilts=st.integers(1, 8))
def test_stratum_counts_are_the_stated_split(n, alpha0, n_tilts):
    n0 = int(round(alpha0 * n))
    if n - n0 < n_tilts:
        with pytest.raises(ValueError, match="one draw per tilt"):
            stratum_counts(n, alpha0, n_tilts)
        return
    c = stratum_counts(n, alpha0, n_tilts)
    assert c.sum() == n and c[0] == n0 and len(c) == 1 + n_tilts
    assert c[1:].min() >= 1 and c[1:].max() - c[1:].min() <= 1
    assert list(c[1:]) == sorted(c[1:], reverse=True)  # earlier tilts take the remainder


def _log_target(seqs, log_p):
    return log_p + GAIN * np.array([sum(v == 1 for v in s) for s in seqs], dtype=np.float64)


def _enumerated_problem():
    """The toy LM, its enumerated target σ ∝ p · exp(GAIN · #ones) and a zero start tilt."""
    lm = _lm(3, None)
    target = enumerate_target(lm, FunctionPotential(lambda s: GAIN * sum(v == 1 for v in s)),
                              [0], T)
    return lm, target, LinearTwist(lm.hidden_size, V, dtype=torch.float64)


def test_all_rounds_mixture_weights_are_exact_against_the_enumerated_densities():
    lm, target, tw0 = _enumerated_problem()
    am = adaptive_tilt_mixture(lm, [0], _log_target, tw0, T, torch.Generator().manual_seed(5),
                               rounds=3, n_round=100, n_final=401, alpha0=0.2, steps=40,
                               lr=0.1, seed=2)
    J = len(am.twists)
    assert J == 4 and am.log_c.shape == (1 + J, 401)
    assert [r["counts"] for r in am.rounds] == [[20, 80], [20, 40, 40], [20, 27, 27, 26],
                                                [80, 81, 80, 80, 80]]
    # the tilts differ (each round refits), and every one of them stays in the final mixture
    bs = [tw.proj.bias.detach().numpy() for tw in am.twists]
    assert all(np.abs(bs[j + 1] - bs[j]).max() > 1e-3 for j in range(J - 1))
    idx = target.index()
    rows = [idx[tuple(s)] for s in am.sequences]
    brute = np.stack([target.log_p.numpy()[rows]]
                     + [target.proposal_log_prob(tw).numpy()[rows] for tw in am.twists])
    assert np.allclose(am.log_c, brute, atol=1e-9, rtol=0)
    alphas = np.bincount(am.strata, minlength=1 + J) / 401
    assert np.allclose(am.alphas, alphas) and math.isclose(alphas[0], 80 / 401)
    r_slow = np.log(sum(alphas[j] * np.exp(brute[j]) for j in range(1 + J)))
    assert np.allclose(am.log_proposal, r_slow, atol=1e-9, rtol=0)
    # exact weights are bounded by the defensive share: w = p φ / r <= φ / α_0
    log_phi = target.log_phi.numpy()[rows]
    assert (am.log_target - am.log_proposal <= log_phi - math.log(alphas[0]) + 1e-9).all()


def test_pooled_mixture_estimates_log_z_and_beats_the_base():
    lm, target, tw0 = _enumerated_problem()
    am = adaptive_tilt_mixture(lm, [0], _log_target, tw0, T, torch.Generator().manual_seed(0),
                               rounds=3, n_round=300, n_final=1000, alpha0=0.2, steps=60,
                               lr=0.1, seed=0)
    tgt = ImportanceTarget(am.sequences, am.log_target, am.log_proposal, strata=am.strata,
                           min_ess=200)
    lz = tgt.log_Z()
    assert lz.decided
    assert abs(lz.mean - target.log_Z) < 3 * lz.stderr + 1e-12
    w = np.exp(target.log_phi.numpy() - target.log_phi.numpy().max())
    p = target.log_p.exp().numpy()
    assert am.rounds[-1]["ess_per_n"] > float((p @ w) ** 2 / (p @ w ** 2)) + 0.1, am.rounds


def test_pooled_fit_raises_the_weighted_likelihood_on_the_mask_only():
    lm = _lm(7, None)
    target = enumerate_target(lm, FunctionPotential(lambda s: GAIN * sum(v == 1 for v in s)),
                              [0], T)
    seqs = [list(s) for s in target.sequences]
    w = target.log_sigma.exp().numpy()
    mask_idx = torch.tensor([1, 2])
    feats = _score(lm, [0], seqs, [], mask_idx, 32)[1]
    bm = _fit_pooled(feats, w, torch.zeros(2, dtype=torch.float64), steps=80, lr=0.1)
    assert bm.shape == (2,) and bm[0] > 0.1  # σ favours token 1
    before = float(w @ feats.log_lik(torch.zeros(2, dtype=torch.float64)).numpy())
    after = float(w @ feats.log_lik(bm).numpy())
    assert after > before + 0.05


@given(ess_per_n=st.floats(1e-4, 1.0), n_final=st.integers(10, 3000),
       extra=st.integers(0, 5000), target=st.floats(1.0, 1000.0))
def test_final_sample_size_is_the_clipped_target_over_the_last_rounds_ess_per_n(
        ess_per_n, n_final, extra, target):
    rec = [{"ess_per_n": 0.5}, {"ess_per_n": ess_per_n}]
    n = final_sample_size(rec, n_final, target, n_final + extra)
    assert n_final <= n <= n_final + extra
    want = math.ceil(target / ess_per_n)
    assert n == min(max(n_final, want), n_final + extra)
    assert final_sample_size(rec, n_final, None, n_final + extra) == n_final


def test_final_sample_is_sized_from_the_earlier_rounds():
    lm = _lm(3, None)
    tw0 = LinearTwist(lm.hidden_size, V, dtype=torch.float64)
    am = adaptive_tilt_mixture(lm, [0], _log_target, tw0, T, torch.Generator().manual_seed(1),
                               rounds=2, n_round=60, n_final=50, alpha0=0.2, steps=20,
                               lr=0.1, seed=1, target_ess=300.0, n_final_max=2000)
    r = am.rounds
    want = min(max(50, math.ceil(300.0 / r[-2]["ess_per_n"])), 2000)
    assert r[-1]["n"] == len(am.sequences) == want > 50
