"""Exactness harness: twisted SMC against exact enumeration on tiny models."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
scipy_stats = pytest.importorskip("scipy.stats")

from rankkit_ext.tsmc.adapters import EnumerableLM, HFCausalLM  # noqa: E402
from rankkit_ext.tsmc.exact import enumerate_target  # noqa: E402
from rankkit_ext.tsmc.potentials import HardConstraint  # noqa: E402
from rankkit_ext.tsmc.resampling import RESAMPLING_METHODS  # noqa: E402
from rankkit_ext.tsmc.sampler import rejection_sample, score_sequences, tsmc  # noqa: E402

from ._helpers import make_case, random_phi, random_twist, tiny_gpt2  # noqa: E402

EPS = np.finfo(np.float64).eps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@given(seed=st.integers(0, 10**6), V=st.integers(2, 5), T=st.integers(1, 4), eos=st.booleans(),
       method=st.sampled_from(RESAMPLING_METHODS), K=st.integers(1, 16),
       thr=st.sampled_from([0.0, 0.5, 1.0]))
def test_optimal_twist_gives_exact_log_z_every_run(seed, V, T, eos, method, K, thr):
    lm, phi = make_case(seed, V, T, eos)
    target = enumerate_target(lm, phi, [0], T)
    assert math.isclose(float(target.log_sigma.exp().sum()), 1.0, abs_tol=1e3 * EPS)
    r = tsmc(lm, target.optimal_twist(), phi, [0], K, T, resample=method, ess_threshold=thr,
             generator=torch.Generator().manual_seed(seed))
    assert abs(r.log_Z - target.log_Z) <= 1e-9
    assert torch.allclose(r.weights, torch.full((K,), 1.0 / K, dtype=torch.float64),
                          atol=1e-9)


def test_optimal_twist_on_tiny_gpt2_and_hard_constraint():
    # a real transformer (float64) wrapped so the twist table is indexed by prefix
    T = 3
    lm = EnumerableLM(HFCausalLM(tiny_gpt2()), T)
    phi = random_phi(3) * HardConstraint(lambda s: 1 not in s)  # no sequence may contain 1
    target = enumerate_target(lm, phi, [0], T)
    for seed in range(3):
        r = tsmc(lm, target.optimal_twist(), phi, [0], 12, T, ess_threshold=1.0,
                 generator=torch.Generator().manual_seed(seed))
        assert abs(r.log_Z - target.log_Z) <= 1e-9
        assert all(1 not in s for s in r.sequences())  # hard constraint: exactly zero mass


@pytest.mark.parametrize("method", RESAMPLING_METHODS)
def test_z_hat_unbiased_for_arbitrary_twist(method):
    # E[Z_hat] = Z and E[Z_hat * pi_hat(f)] = Z sigma(f) for any twist (Del Moral 2004)
    lm, phi = make_case(11, 3, 3, eos=True)
    target = enumerate_target(lm, phi, [0], 3)
    twist = random_twist(lm, 1)
    # f = indicator of the most probable sequence
    f_seq = max(zip(target.log_sigma.tolist(), target.sequences, strict=True))[1]
    zs, zf = [], []
    for s in range(300):
        r = tsmc(lm, twist, phi, [0], 4, 3, resample=method, ess_threshold=0.7,
                 generator=torch.Generator().manual_seed(s))
        z = math.exp(r.log_Z)
        seqs = r.sequences(strip_eos=False)
        zs.append(z)
        zf.append(z * sum(float(w) for w, q in zip(r.weights, seqs, strict=True)
                          if tuple(q) == f_seq))
    Z = math.exp(target.log_Z)
    sig_f = float(target.log_sigma[target.sequences.index(f_seq)].exp())
    for vals, truth in ((zs, Z), (zf, Z * sig_f)):
        v = np.asarray(vals)
        assert abs(v.mean() - truth) <= 4.5 * v.std(ddof=1) / math.sqrt(v.size), (v.mean(), truth)


def _chi_square_p(counts: dict, target, n):
    probs = target.log_sigma.exp().numpy()
    idx = target.index()
    obs = np.zeros(len(probs))
    for s, c in counts.items():
        obs[idx[tuple(s)]] += c
    exp = probs * n
    keep = exp >= 5  # pool rare cells so the chi-square approximation holds
    obs_p = np.append(obs[keep], obs[~keep].sum())
    exp_p = np.append(exp[keep], exp[~keep].sum())
    if exp_p[-1] == 0:
        obs_p, exp_p = obs_p[:-1], exp_p[:-1]
    return scipy_stats.chisquare(obs_p, exp_p).pvalue


def test_particle_frequencies_match_sigma():
    lm, phi = make_case(5, 3, 3, eos=True)
    target = enumerate_target(lm, phi, [0], 3)
    r = tsmc(lm, target.optimal_twist(), phi, [0], 3000, 3,
             generator=torch.Generator().manual_seed(0))
    counts: dict = {}
    for s in r.sequences(strip_eos=False):
        counts[tuple(s)] = counts.get(tuple(s), 0) + 1
    assert _chi_square_p(counts, target, 3000) > 1e-3
    # the same test must reject a wrong target (power check): the base LM's own samples
    r0 = tsmc(lm, None, phi, [0], 3000, 3, ess_threshold=0.0,
              generator=torch.Generator().manual_seed(0))
    c0: dict = {}
    for s in r0.sequences(strip_eos=False):
        c0[tuple(s)] = c0.get(tuple(s), 0) + 1
    assert _chi_square_p(c0, target, 3000) < 1e-3


def test_rejection_sampling_exact_and_acceptance_is_z():
    lm, _ = make_case(8, 3, 3, eos=True)
    phi = random_phi(8, max_zero=True)  # phi <= 1
    target = enumerate_target(lm, phi, [0], 3)
    n = 6000
    res = rejection_sample(lm, phi, [0], n, 3, generator=torch.Generator().manual_seed(0),
                           batch_size=2000)
    Z = math.exp(target.log_Z)
    assert abs(res.acceptance_ratio - Z) <= 4.5 * math.sqrt(Z * (1 - Z) / n)
    eos = lm.eos_token_id
    counts: dict = {}
    for s in res.sequences:
        # accepted sequences come back EOS-stripped; restore it for shorter ones
        key = tuple(s) + ((eos,) if len(s) < 3 else ())
        counts[key] = counts.get(key, 0) + 1
    assert _chi_square_p(counts, target, len(res.sequences)) > 1e-3
    with pytest.raises(ValueError, match="phi <= 1"):
        rejection_sample(lm, random_phi(8, scale=3.0), [0], 50, 3,
                         generator=torch.Generator().manual_seed(0))


def test_all_neg_inf_potential_gives_minus_inf_not_nan():
    lm, _ = make_case(2, 3, 2, eos=False)
    phi = HardConstraint(lambda s: False)
    for method in RESAMPLING_METHODS:
        r = tsmc(lm, random_twist(lm, 0), phi, [0], 6, 2, resample=method, ess_threshold=1.0,
                 generator=torch.Generator().manual_seed(0))
        assert r.log_Z == -math.inf
        assert not torch.isnan(r.weights).any() and not torch.isnan(r.log_weights).any()


def test_score_sequences_match_enumeration_and_q_is_a_distribution():
    lm, phi = make_case(4, 4, 3, eos=True)
    target = enumerate_target(lm, phi, [0], 3)
    twist = random_twist(lm, 4)
    lp, lq = score_sequences(lm, [0], target.sequences, twist)
    tol = 1e3 * EPS
    assert torch.allclose(lp, target.log_p, atol=tol)
    assert torch.allclose(lq, target.proposal_log_prob(twist), atol=tol)
    assert math.isclose(float(torch.logsumexp(lq, 0)), 0.0, abs_tol=tol)
    assert math.isclose(float(torch.logsumexp(lp, 0)), 0.0, abs_tol=tol)


def test_kv_cache_matches_recompute_and_seed_reproducible():
    model = tiny_gpt2(V=5, eos=4)
    phi = random_phi(1)
    twist = None
    out = []
    for use_cache in (True, False):
        lm = HFCausalLM(model, use_cache=use_cache)
        out.append(tsmc(lm, twist, phi, [0, 2], 16, 4, ess_threshold=1.0,
                        generator=torch.Generator().manual_seed(7)))
    a, b = out
    assert torch.equal(a.tokens, b.tokens) and a.resampled_at == b.resampled_at
    assert abs(a.log_Z - b.log_Z) <= 1e-9
    c = tsmc(model, twist, phi, [0, 2], 16, 4, ess_threshold=1.0,
             generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.tokens, c.tokens) and a.log_Z == c.log_Z


def test_bad_arguments_are_named():
    lm, phi = make_case(0, 3, 2, eos=False)
    with pytest.raises(ValueError, match="ess_threshold"):
        tsmc(lm, None, phi, [0], 4, 2, ess_threshold=2.0)
    with pytest.raises(ValueError, match="multinomial"):
        tsmc(lm, None, phi, [0], 4, 2, reference=[0, 1], resample="systematic")
    with pytest.raises(ValueError, match="n_particles"):
        tsmc(lm, None, phi, [0], 0, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")
def test_optimal_twist_exact_on_cuda_and_matches_cpu_law():
    T = 3
    model = tiny_gpt2().cuda()
    lm = EnumerableLM(HFCausalLM(model), T)
    phi = random_phi(4)
    target = enumerate_target(lm, phi, [0], T)
    cpu_target = enumerate_target(EnumerableLM(HFCausalLM(tiny_gpt2()), T), phi, [0], T)
    assert abs(target.log_Z - cpu_target.log_Z) <= 1e-9
    r = tsmc(lm, target.optimal_twist(), phi, [0], 256, T, ess_threshold=1.0,
             generator=torch.Generator(device="cuda").manual_seed(0))
    assert r.tokens.is_cuda and abs(r.log_Z - target.log_Z) <= 1e-9


@given(seed=st.integers(0, 10**6), K=st.integers(2, 12), thr=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
       eos=st.booleans())
def test_resampling_happens_exactly_where_the_ess_falls_below_the_threshold(seed, K, thr, eos):
    # issue 12: a sampler resampling when the ESS is *above* the threshold passed the suite
    lm, phi = make_case(seed, 4, 4, eos)
    r = tsmc(lm, random_twist(lm, seed, 2.0), phi, [0], K, 4, resample="multinomial",
             ess_threshold=thr, generator=torch.Generator().manual_seed(seed))
    # every step but the last ends with a resampling decision on that step's ESS
    steps = range(len(r.ess_trace) - 1)
    expected = [t for t in steps if thr > 0 and (thr >= 1 or r.ess_trace[t] < thr * K)]
    assert r.resampled_at == expected, (r.ess_trace, r.resampled_at)
    assert all(1.0 - 1e-9 <= e <= K + 1e-9 for e in r.ess_trace)


def test_nan_in_twist_or_potential_is_an_error_naming_the_source():
    # issue 12: a NaN twist was read as -inf; every particle emitted EOS at step 0, log Z = -inf
    from rankkit_ext.tsmc.potentials import Potential

    lm, phi = make_case(3, 4, 3, True)
    tw = random_twist(lm, 3, 1.0)
    with torch.no_grad():
        tw.table[:] = float("nan")
    with pytest.raises(ValueError, match="twist log ψ is nan at step 0, particle 0, token 0"):
        tsmc(lm, tw, phi, [0], 4, 3, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        tw.table[:] = 0.0
        tw.table[:, 2] = float("inf")
    with pytest.raises(ValueError, match="twist log ψ is inf at step 0, particle 0, token 2"):
        tsmc(lm, tw, phi, [0], 4, 3, generator=torch.Generator().manual_seed(0))

    class NaNPotential(Potential):  # NaN only for continuations that contain token 1
        def _log_phi(self, samples):
            return torch.tensor([math.nan if 1 in s else 0.0 for s in samples],
                                dtype=torch.float64)

    with pytest.raises(ValueError, match=r"potential log phi is nan at step \d, particle \d+ "
                                         r"\(sequence \[[^]]*1[^]]*\]\)"):
        tsmc(lm, None, NaNPotential(), [0], 64, 3, generator=torch.Generator().manual_seed(0))
    # the potential alone (no sampler) still names its own batch position
    with pytest.raises(ValueError, match="NaNPotential gave log phi = nan for sample 1"):
        NaNPotential().log_phi([[0], [1]])


def test_classifier_potential_refuses_non_finite_beta():
    from rankkit_ext.tsmc.potentials import ClassifierPotential

    for beta in (math.inf, math.nan, -1.0):
        with pytest.raises(ValueError, match="beta must be a finite number in"):
            ClassifierPotential(lambda texts: [0.5] * len(texts), beta=beta)


def test_twist_of_the_wrong_size_is_named_before_any_step():
    # issue 12: a twist whose vocabulary or hidden size differed from the base gave a raw
    # torch shape error inside the first product
    from rankkit_ext.tsmc.sampler import score_sequences
    from rankkit_ext.tsmc.twists import CopyTwist, LinearTwist

    lm = HFCausalLM(tiny_gpt2())  # vocabulary 4, hidden 16
    phi = random_phi(0)
    with pytest.raises(ValueError, match="LinearTwist reads hidden states of size 8 but the base "
                                         "LM's are 16"):
        tsmc(lm, LinearTwist(8, 4, dtype=torch.float64), phi, [0], 4, 2)
    with pytest.raises(ValueError, match="LinearTwist scores a vocabulary of 5 tokens but the "
                                         "base LM has 4"):
        score_sequences(lm, [0], [[1, 2]], twist=LinearTwist(16, 5, dtype=torch.float64))
    other = CopyTwist(tiny_gpt2(V=6, eos=5))
    with pytest.raises(ValueError, match="CopyTwist scores a vocabulary of 6 tokens but the base "
                                         "LM has 4"):
        tsmc(lm, other, phi, [0], 4, 2)
    # a copy of the base itself fits, whatever its hidden size is called
    r = tsmc(lm, CopyTwist(tiny_gpt2()), phi, [0], 4, 2, generator=torch.Generator().manual_seed(0))
    assert r.tokens.shape[0] == 4 and math.isfinite(r.log_Z)
