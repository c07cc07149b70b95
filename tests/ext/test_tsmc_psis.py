"""PSIS k̂ (Vehtari et al. 2024, JMLR, §3; Zhang & Stephens 2009 fit), the decided /
undecided status of importance-sampling estimates, mixture proposals and the bootstrap
(rankkit_ext.tsmc.importance)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")
stats = pytest.importorskip("scipy.stats")

from rankkit_ext.tsmc.importance import (  # noqa: E402
    ImportanceTarget,
    khat_threshold,
    mixture_log_proposal,
    psis_khat,
)


def _tail_size(n):
    return math.ceil(min(n / 5, 3 * math.sqrt(n)))


@pytest.mark.parametrize("k", [0.2, 0.5, 0.8, 1.2])
def test_khat_recovers_genpareto_shape_within_shrinking_tolerance(k):
    # exceedances of a GPD over any threshold are GPD with the same shape, so the tail fit
    # must find k; the shape MLE's sd is ≈ (1 + k)/√M with M tail draws
    errs = {}
    for n in (1_000, 10_000, 100_000):
        tol = 3.5 * (1 + k) / math.sqrt(_tail_size(n))
        e = []
        for seed in range(6):
            x = stats.genpareto(c=k).rvs(size=n, random_state=np.random.default_rng(seed))
            e.append(psis_khat(np.log(x)) - k)
        assert max(abs(v) for v in e) < tol, (n, e, tol)
        errs[n] = np.mean(np.abs(e))
    assert errs[100_000] < errs[1_000]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(-300.0, 300.0), st.integers(50, 3000))
def test_khat_invariant_to_scaling_every_ratio(seed, log_c, n):
    lw = np.random.default_rng(seed).standard_normal(n) * 2.0
    assert psis_khat(lw + log_c) == pytest.approx(psis_khat(lw), abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(500, 5000), st.floats(0.0, 3.0))
def test_khat_of_bounded_ratios_is_not_positive(seed, n, a):
    # bounded ratios (a defensive mixture's, w ≤ 1/α₀) have a light tail: shape ≤ 0 up to
    # the prior's pull towards 0.5 (worth 10 of the M tail draws)
    w = a + np.random.default_rng(seed).uniform(size=n)
    assert psis_khat(np.log(w)) < 0.1


def test_khat_heavy_tail_is_flagged_and_threshold_formula():
    lw = np.log(stats.pareto(b=0.8).rvs(size=4000, random_state=np.random.default_rng(0)))
    assert psis_khat(lw) > khat_threshold(4000)  # shape 1/0.8 = 1.25: infinite mean
    assert khat_threshold(100) == pytest.approx(0.5)
    assert khat_threshold(10**6) == pytest.approx(0.7)
    assert psis_khat(np.zeros(100)) == math.inf  # all ratios equal: no tail to fit
    with pytest.raises(ValueError, match="at least 10"):
        psis_khat(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        psis_khat(np.r_[np.zeros(20), np.nan])


def _target(lw, n_seq=None, **kw):
    n = len(lw)
    return ImportanceTarget([[i] for i in range(n)], np.asarray(lw), np.zeros(n), **kw)


def test_undecided_below_min_ess_has_no_value():
    rng = np.random.default_rng(0)
    lw = rng.standard_normal(400) * 3.0  # ESS of a few dozen at most
    t = _target(lw, min_ess=200)
    est = t.log_Z()
    assert t.ess < 200 and not est.decided and est.value is None
    assert est.headline().startswith("undecided")
    j = est.to_json()
    assert j["value"] is None and j["stderr"] is None and j["status"] == "undecided"
    assert math.isfinite(j["raw_mean"]) and j["ess"] == pytest.approx(t.ess)
    t2 = _target(rng.uniform(size=2000), min_ess=200)  # near-uniform weights
    e2 = t2.log_Z()
    assert e2.decided and e2.value == e2.mean and "±" in e2.headline()
    assert e2.khat == pytest.approx(psis_khat(t2.log_w))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-30.0, 5.0), min_size=3, max_size=3),
       st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3), st.integers(0, 2**31 - 1))
def test_mixture_log_proposal_matches_direct_sum(lq, a, seed):
    a = np.asarray(a) / np.sum(a)
    rng = np.random.default_rng(seed)
    comps = [np.asarray(lq) + rng.standard_normal(3) for _ in range(3)]
    got = mixture_log_proposal(comps, a)
    want = np.log(sum(a[j] * np.exp(comps[j]) for j in range(3)))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_mixture_log_proposal_rejects_bad_weights():
    with pytest.raises(ValueError, match="sum to 1"):
        mixture_log_proposal([np.zeros(2), np.zeros(2)], [0.5, 0.6])
    with pytest.raises(ValueError, match="one weight per component"):
        mixture_log_proposal([np.zeros(2)], [0.5, 0.5])


def test_bootstrap_se_matches_delta_method_and_repeated_sampling():
    # σ = N(1, 1) from r = N(0, 2²), f = log q_b − log q_a with q's two normals: the paired
    # difference is a self-normalised mean; its bootstrap SE, its delta-method SE and its
    # sd over independent replicates must agree
    def draw(rng, n):
        x = rng.normal(0.0, 2.0, size=n)
        lt = stats.norm(1, 1).logpdf(x)
        lr = stats.norm(0, 2).logpdf(x)
        la, lb = stats.norm(0, 1.5).logpdf(x), stats.norm(1, 1.2).logpdf(x)
        return ImportanceTarget([[0]] * n, lt, lr, min_ess=0), la, lb

    rng = np.random.default_rng(1)
    reps = [draw(rng, 2000) for _ in range(60)]
    vals = [t.kl_difference(la, lb).mean for t, la, lb in reps]
    t, la, lb = reps[0]
    e = t.kl_difference(la, lb, n_boot=400, generator=np.random.default_rng(2))
    sd = np.std(vals, ddof=1)
    assert e.bootstrap_se == pytest.approx(sd, rel=0.3)
    assert e.stderr == pytest.approx(sd, rel=0.3)
    k = t.kl_sigma_q(la, n_boot=400, generator=np.random.default_rng(3))
    sd_k = np.std([tt.kl_sigma_q(a).mean for tt, a, _ in reps], ddof=1)
    assert k.bootstrap_se == pytest.approx(sd_k, rel=0.3)
    with pytest.raises(ValueError, match="explicit numpy Generator"):
        t.kl_difference(la, lb, n_boot=10)


def test_stratified_bootstrap_keeps_stratum_sizes():
    n = 30
    strata = np.r_[np.zeros(10, int), np.ones(20, int)]
    t = _target(np.zeros(n), strata=strata, min_ess=0)
    c = t.bootstrap_counts(50, np.random.default_rng(0))
    assert (c[:, :10].sum(1) == 10).all() and (c[:, 10:].sum(1) == 20).all()
    with pytest.raises(ValueError, match="one integer label"):
        _target(np.zeros(n), strata=np.zeros(n - 1, int))
