r"""Conditional SMC against exact enumeration of its law.

For a reference :math:`s^*\sim\sigma` and the conditional kernel (particle 0 keeps its
line, the other K − 1 ancestors i.i.d. from the normalised weights), the estimator obeys
:math:`\mathbb E[Z/\hat Z] = 1` (Andrieu, Doucet & Holenstein 2010, Thm. 3; Zhao et al.
2024, §5, the identity behind the SMC upper bound on log Z). The enumerator below walks every
token draw of the free particles and every ancestor draw of a tiny problem, so it gives the
exact law of the sampler's output; the tests check the identity on it, that it separates the
correct kernel from the sorted-draws-then-overwrite one (the bug of issue 12), and that
:func:`~rankkit_ext.tsmc.sampler.tsmc` draws from that law.
"""

import itertools
import math
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
scipy_stats = pytest.importorskip("scipy.stats")

from rankkit_ext.tsmc import sampler as sampler_mod  # noqa: E402
from rankkit_ext.tsmc.exact import enumerate_target  # noqa: E402
from rankkit_ext.tsmc.resampling import resample  # noqa: E402
from rankkit_ext.tsmc.sampler import tsmc  # noqa: E402
from rankkit_ext.tsmc.twists import as_twist  # noqa: E402

from ._helpers import make_case, random_twist  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EPS = np.finfo(np.float64).eps


def _prefix_tables(lm, twist, T):
    """log p(· | prefix) and log ψ(prefix, ·) for every prefix shorter than T, one particle at
    a time through the adapter and twist protocols (no SMC code involved)."""
    tw = as_twist(twist)
    V = lm.vocab_size
    out = {}
    for t in range(T):
        for pre in itertools.product(range(V), repeat=t):
            logp, h, st = lm.start([0], 1)
            lpsi, ts = tw.init_state([0], 1, h)
            for v in pre:
                tok = torch.tensor([v])
                logp, h, st = lm.advance(st, tok)
                lpsi, ts = tw.step(ts, tok, h)
            out[pre] = (logp[0].detach().to(torch.float64), lpsi[0].detach().to(torch.float64))
    return out


def iid_kernel(w):
    """Law of the conditional kernel: a_0 = 0, a_1..a_{K-1} i.i.d. Cat(w)."""
    K = len(w)
    for free in itertools.product(range(K), repeat=K - 1):
        yield (0, *free), math.prod(w[a] for a in free)


def sorted_overwrite_kernel(w):
    """Law of the old code: K i.i.d. draws, sorted, the first overwritten with 0."""
    K = len(w)
    law: Counter = Counter()
    for draws in itertools.product(range(K), repeat=K):
        law[(0, *sorted(draws)[1:])] += math.prod(w[a] for a in draws)
    yield from law.items()


def csmc_law(tables, phi, log_Z, ref, K, T, kernel):
    """Exact law of (final particles, log Z_hat) of conditional SMC with reference ``ref``,
    resampling after every step but the last (``ess_threshold=1``), no EOS: a list of
    (probability, final sequences, log Z_hat)."""
    leaves = []

    def walk(t, pop, lpsi_prev, log_zhat, prob):
        rows = [tables[p] for p in pop]
        joint = [lp + ls for lp, ls in rows]
        logzt = [float(torch.logsumexp(j, 0)) for j in joint]
        for free in itertools.product(range(len(joint[0])), repeat=K - 1):
            v = (ref[t], *free)
            p = prob * math.prod(math.exp(float(joint[k][v[k]]) - logzt[k]) for k in range(1, K))
            if t < T - 1:
                inc = [logzt[k] - lpsi_prev[k] for k in range(K)]
            else:
                lphi = [float(phi.log_phi([list(pop[k] + (v[k],))])[0]) for k in range(K)]
                inc = [float(rows[k][0][v[k]]) + lphi[k] - lpsi_prev[k]
                       - (float(joint[k][v[k]]) - logzt[k]) for k in range(K)]
            m = max(inc)
            lse = m + math.log(sum(math.exp(x - m) for x in inc))
            z = log_zhat + lse - math.log(K)
            if t == T - 1:
                leaves.append((p, tuple(pop[k] + (v[k],) for k in range(K)), z))
                continue
            w = [math.exp(x - lse) for x in inc]
            for anc, pa in kernel(w):
                walk(t + 1, [pop[a] + (v[a],) for a in anc],
                     [float(rows[a][1][v[a]]) for a in anc], z, p * pa)

    walk(0, [()] * K, [0.0] * K, 0.0, 1.0)
    return leaves


def expected_z_over_zhat(tables, phi, target, K, T, kernel):
    total = 0.0
    for seq, ls in zip(target.sequences, target.log_sigma.tolist(), strict=True):
        for p, _, z in csmc_law(tables, phi, target.log_Z, seq, K, T, kernel):
            total += math.exp(ls) * p * math.exp(target.log_Z - z)
    return total


# V = 2 tokens, horizon 2, K = 3, a strong random twist: the old kernel's E[Z / Z_hat] is
# 1.07 here (exact), the largest bias over a scan of small cases
CASE = dict(seed=11, V=2, T=2, K=3, twist_scale=3.0)


def _case():
    lm, phi = make_case(CASE["seed"], CASE["V"], CASE["T"], eos=False)
    target = enumerate_target(lm, phi, [0], CASE["T"])
    twist = random_twist(lm, CASE["seed"], CASE["twist_scale"])
    return lm, phi, target, twist, _prefix_tables(lm, twist, CASE["T"])


@pytest.mark.parametrize("seed,V,T,K", [(0, 3, 2, 2), (1, 2, 3, 2), (2, 2, 2, 3), (3, 3, 3, 2)])
def test_enumerated_identity_holds_for_conditional_kernel(seed, V, T, K):
    lm, phi = make_case(seed, V, T, eos=False)
    target = enumerate_target(lm, phi, [0], T)
    twist = random_twist(lm, seed, 2.0)
    tables = _prefix_tables(lm, twist, T)
    # every leaf probability of every reference sums to one, and the identity is exact
    for seq in target.sequences[:3]:
        total = sum(p for p, _, _ in csmc_law(tables, phi, target.log_Z, seq, K, T, iid_kernel))
        assert math.isclose(total, 1.0, abs_tol=1e4 * EPS)
    e = expected_z_over_zhat(tables, phi, target, K, T, iid_kernel)
    assert math.isclose(e, 1.0, abs_tol=1e4 * EPS), e


def test_enumerated_identity_separates_the_old_kernel():
    _, phi, target, _, tables = _case()
    bias = expected_z_over_zhat(tables, phi, target, CASE["K"], CASE["T"],
                                sorted_overwrite_kernel) - 1.0
    assert bias > 0.05, bias  # so the sampler tests below have power against it


def _key(pop, log_zhat):
    """An outcome up to the order of the free particles (exchangeable: resampling may return
    their ancestors sorted), with log Z_hat rounded far above float64 round-off."""
    pop = [tuple(s) for s in pop]
    return pop[0], tuple(sorted(pop[1:])), round(log_zhat, 8)


def _exact_outcomes(tables, phi, target, kernel):
    law: Counter = Counter()
    for seq, ls in zip(target.sequences, target.log_sigma.tolist(), strict=True):
        for p, pop, z in csmc_law(tables, phi, target.log_Z, seq, CASE["K"], CASE["T"], kernel):
            law[_key(pop, z)] += math.exp(ls) * p
    return law


def _chi_square_p(counts: Counter, law: Counter, n: int) -> float:
    keys = list(law)
    assert set(counts) <= set(keys), set(counts) - set(keys)  # no outcome the law excludes
    exp = np.array([law[k] * n for k in keys])
    obs = np.array([counts.get(k, 0) for k in keys], dtype=float)
    keep = exp >= 5  # pool rare cells so the chi-square approximation holds
    obs_p, exp_p = np.append(obs[keep], obs[~keep].sum()), np.append(exp[keep], exp[~keep].sum())
    return scipy_stats.chisquare(obs_p, exp_p * obs_p.sum() / exp_p.sum()).pvalue


def test_sampler_draws_the_conditional_law_and_z_over_zhat_is_one():
    lm, phi, target, twist, tables = _case()
    n, K, T = 3000, CASE["K"], CASE["T"]
    rng = np.random.default_rng(0)
    probs = target.log_sigma.exp().numpy()
    refs = rng.choice(len(probs), size=n, p=probs / probs.sum())
    g = torch.Generator().manual_seed(0)
    counts: Counter = Counter()
    ratios = np.empty(n)
    for i, j in enumerate(refs):
        r = tsmc(lm, twist, phi, [0], K, T, resample="multinomial", ess_threshold=1.0,
                 generator=g, reference=list(target.sequences[j]), eos_token_id=None)
        counts[_key(r.sequences(), r.log_Z)] += 1
        ratios[i] = math.exp(target.log_Z - r.log_Z)
    good = _exact_outcomes(tables, phi, target, iid_kernel)
    bad = _exact_outcomes(tables, phi, target, sorted_overwrite_kernel)
    assert _chi_square_p(counts, good, n) > 1e-3
    assert _chi_square_p(counts, bad, n) < 1e-6  # the same counts reject the old law
    se = ratios.std(ddof=1) / math.sqrt(n)
    assert abs(ratios.mean() - 1.0) <= 4.5 * se, (ratios.mean(), se)


def test_sampler_with_the_old_kernel_fails_the_same_checks(monkeypatch):
    # the harness must catch the bug it was written for: the old sorted-then-overwrite kernel
    def old(log_w, method, generator):
        anc = resample(log_w, "multinomial", generator).clone()
        anc[0] = 0
        return anc

    monkeypatch.setattr(sampler_mod, "conditional_resample", old)
    lm, phi, target, twist, tables = _case()
    n, K, T = 1500, CASE["K"], CASE["T"]
    g = torch.Generator().manual_seed(1)
    counts: Counter = Counter()
    seq = target.sequences[int(target.log_sigma.argmax())]
    for _ in range(n):
        r = tsmc(lm, twist, phi, [0], K, T, resample="multinomial", ess_threshold=1.0,
                 generator=g, reference=list(seq), eos_token_id=None)
        counts[_key(r.sequences(), r.log_Z)] += 1
    law: Counter = Counter()
    for p, pop, z in csmc_law(tables, phi, target.log_Z, seq, K, T, iid_kernel):
        law[_key(pop, z)] += p
    assert _chi_square_p(counts, law, n) < 1e-6
