"""The independent target of ``analyses/tsmc_toxic_story.py`` (rankkit_ext.tsmc.importance):
σ ∝ p_LM φ from importance-weighted base-model proposals, log Z, self-normalised means and
KL(σ‖q) with delta-method standard errors, against exact enumeration and the direct formulas."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from rankkit_ext.tsmc import enumerate_target, score_sequences  # noqa: E402
from rankkit_ext.tsmc.importance import (  # noqa: E402
    ImportanceTarget,
    sample_base,
    score_proposal,
)

from ._helpers import make_case, random_twist  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

V, T = 4, 3
EOS = V - 1


def _strip(s):
    return list(s[:-1]) if s and s[-1] == EOS else list(s)


@pytest.fixture(scope="module")
def case():
    lm, phi = make_case(2, V, T, True)
    target = enumerate_target(lm, phi, [0], T)
    return lm, phi, target


def _is_target(lm, phi, n, seed):
    seqs, lp = sample_base(lm, [0], n, T, torch.Generator().manual_seed(seed), batch_size=700)
    lphi = phi.log_phi([_strip(s) for s in seqs]).numpy()
    return ImportanceTarget(seqs, lp + lphi, lp)


def test_sample_base_log_p_and_law_match_enumeration(case):
    lm, _, target = case
    n = 6000
    seqs, lp = sample_base(lm, [0], n, T, torch.Generator().manual_seed(0), batch_size=2500)
    assert len(seqs) == n and lp.shape == (n,)
    idx = target.index()
    exact_lp = target.log_p.numpy()
    rows = np.array([idx[tuple(s)] for s in seqs])  # every draw is a complete continuation
    np.testing.assert_allclose(lp, exact_lp[rows], rtol=0, atol=1e-10)
    # the frequencies are those of p_LM: chi-square statistic within a generous bound
    counts = np.bincount(rows, minlength=len(target.sequences))
    expected = n * np.exp(exact_lp)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = len(target.sequences) - 1
    assert chi2 < dof + 6 * math.sqrt(2 * dof), (chi2, dof)


def test_log_z_mean_and_kl_match_enumeration(case):
    lm, phi, target = case
    t = _is_target(lm, phi, 4000, 1)
    lz = t.log_Z()
    assert abs(lz.mean - target.log_Z) < 4 * lz.stderr + 1e-3, (lz, target.log_Z)
    assert 1 < t.ess < t.n
    # E_σ[f] for a fixed statistic of the continuation
    f = np.array([float(len(_strip(s))) for s in t.sequences])
    exact_f = float(target.log_sigma.exp() @ torch.tensor(
        [float(len(_strip(s))) for s in target.sequences], dtype=torch.float64))
    m = t.mean(f)
    assert abs(m.mean - exact_f) < 4 * m.stderr + 1e-3, (m, exact_f)
    # KL(σ‖q) of two different twist-induced proposals, and their paired difference
    tw_a, tw_b = random_twist(lm, 3), random_twist(lm, 4, 2.0)
    _, lq_a = score_proposal(lm, tw_a, [0], t.sequences)
    _, lq_b = score_proposal(lm, tw_b, [0], t.sequences)
    ex_a, ex_b = target.kl_sigma_q(tw_a), target.kl_sigma_q(tw_b)
    assert min(ex_a, ex_b) > 0.05 and abs(ex_a - ex_b) > 0.05
    for est, exact in ((t.kl_sigma_q(lq_a), ex_a), (t.kl_sigma_q(lq_b), ex_b),
                       (t.kl_difference(lq_a, lq_b), ex_a - ex_b)):
        assert abs(est.mean - exact) < 4.5 * est.stderr + 1e-3, (est, exact)


def test_unscored_proposals_outside_the_support_change_nothing(case):
    """A sharp potential (φ scaled by e^{±40}) leaves most proposals with negligible weight:
    their log q may be NaN, and the KL estimates equal those with every proposal scored."""
    lm, phi, _ = case
    t = _is_target(lm, phi, 800, 5)
    sharp = ImportanceTarget(t.sequences, t.log_proposal + 40 * (t.log_target - t.log_proposal),
                             t.log_proposal)
    sup = sharp.support()
    assert 0 < len(sup) < sharp.n
    _, lq_a = score_proposal(lm, random_twist(lm, 3), [0], t.sequences)
    _, lq_b = score_proposal(lm, random_twist(lm, 4), [0], t.sequences)
    part_a, part_b = np.full(sharp.n, np.nan), np.full(sharp.n, np.nan)
    part_a[sup], part_b[sup] = lq_a[sup], lq_b[sup]
    for full, part in ((sharp.kl_sigma_q(lq_a), sharp.kl_sigma_q(part_a)),
                       (sharp.kl_difference(lq_a, lq_b), sharp.kl_difference(part_a, part_b))):
        assert part.mean == pytest.approx(full.mean, abs=1e-8)
        assert part.stderr == pytest.approx(full.stderr, rel=1e-6, abs=1e-10)
    part_a[sup[0]] = np.nan
    with pytest.raises(ValueError, match="carries weight"):
        sharp.kl_sigma_q(part_a)


def test_delta_method_stderr_matches_spread_over_repeats(case):
    """The reported standard error is the spread of the estimate over independent repeats
    (first-order, so within a loose factor at this N)."""
    lm, phi, target = case
    tw = random_twist(lm, 3)
    ests, ses = [], []
    for seed in range(30):
        t = _is_target(lm, phi, 400, 100 + seed)
        _, lq = score_proposal(lm, tw, [0], t.sequences)
        e = t.kl_sigma_q(lq)
        ests.append(e.mean)
        ses.append(e.stderr)
    sd, se = float(np.std(ests, ddof=1)), float(np.mean(ses))
    assert 0.6 < se / sd < 1.6, (se, sd)
    assert abs(np.mean(ests) - target.kl_sigma_q(tw)) < 4 * sd / math.sqrt(len(ests))


def test_exact_proposal_gives_zero_variance(case):
    """Proposals drawn from σ itself (r = σ): every weight is Z, so log Ẑ is exact with zero
    standard error and the ESS is N; KL(σ‖σ) is 0."""
    lm, phi, target = case
    rng = np.random.default_rng(0)
    p = target.log_sigma.exp().numpy()
    idx = rng.choice(len(p), size=300, p=p / p.sum())
    seqs = [list(target.sequences[i]) for i in idx]
    log_tilde = (target.log_p + target.log_phi).numpy()[idx]
    t = ImportanceTarget(seqs, log_tilde, target.log_sigma.numpy()[idx])
    lz = t.log_Z()
    assert lz.mean == pytest.approx(target.log_Z, abs=1e-9)
    assert lz.stderr < 1e-9 and t.ess == pytest.approx(300)
    kl = t.kl_sigma_q(target.log_sigma.numpy()[idx])
    assert abs(kl.mean) < 1e-9 and kl.stderr < 1e-9


finite = st.floats(-30.0, 5.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, finite, finite), min_size=2, max_size=30),
       st.floats(-1e3, 1e3))
def test_estimates_equal_the_direct_formulas(rows, shift):
    lt = np.array([a for a, _, _ in rows])
    lr = np.array([b for _, b, _ in rows])
    lq = np.array([c for _, _, c in rows])
    seqs = [[i] for i in range(len(rows))]
    t = ImportanceTarget(seqs, lt, lr)
    w = np.exp(lt - lr)  # direct, fine in this range
    z = w.mean()
    assert t.log_Z().mean == pytest.approx(math.log(z), abs=1e-9)
    assert t.ess == pytest.approx(w.sum() ** 2 / (w @ w), rel=1e-9)
    kl = w @ (lt - lq) / w.sum() - math.log(z)
    assert t.kl_sigma_q(lq).mean == pytest.approx(kl, abs=1e-8)
    # a common factor in the target cancels in the self-normalised weights
    s = ImportanceTarget(seqs, lt + shift, lr)
    np.testing.assert_allclose(s.weights, t.weights, rtol=1e-9, atol=1e-15)
    lq2 = lq[::-1].copy()
    d = t.kl_difference(lq, lq2).mean
    assert d == pytest.approx(t.kl_sigma_q(lq).mean - t.kl_sigma_q(lq2).mean, abs=1e-8)


def test_score_proposal_deduplicates_without_changing_scores(case):
    lm, _, target = case
    tw = random_twist(lm, 3)
    seqs = [list(target.sequences[i]) for i in (0, 1, 0, 2, 1, 0)]
    lp, lq = score_proposal(lm, tw, [0], seqs)
    lp2, lq2 = score_sequences(lm, [0], seqs, tw)
    np.testing.assert_allclose(lp, lp2.numpy(), atol=1e-12)
    np.testing.assert_allclose(lq, lq2.numpy(), atol=1e-12)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="at least 2"):
        ImportanceTarget([[0]], [0.0], [0.0])
    with pytest.raises(ValueError, match="log_target has 1 values for 2"):
        ImportanceTarget([[0], [1]], [0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="miss"):
        ImportanceTarget([[0], [1]], [-np.inf, -np.inf], [0.0, 0.0])
    with pytest.raises(ValueError, match=r"log_proposal\[1\]"):
        ImportanceTarget([[0], [1]], [0.0, 0.0], [0.0, -np.inf])
    t = ImportanceTarget([[0], [1], [2]], [0.0, -np.inf, 0.0], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"log_q\[2\]"):
        t.kl_sigma_q([0.0, 0.0, -np.inf])
    # where σ has no mass q may vanish
    assert math.isfinite(t.kl_sigma_q([0.0, -np.inf, 0.0]).mean)
    with pytest.raises(ValueError, match="n and batch_size"):
        sample_base(None, [0], 0, 3, torch.Generator())
