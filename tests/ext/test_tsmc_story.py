"""The particle-efficiency study behind ``analyses/tsmc_toxic_story.py`` (Kim et al. 2025, §3,
Fig. 2): per-(m, K) aggregation against numpy, the per-run statistic, the pooled estimate of
E_σ[f] against exact enumeration (``rankkit_ext.metrics``), and the resumable per-run cache
(``rankkit_ext.tsmc.efficiency``)."""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from rankkit_ext._io import state_fingerprint  # noqa: E402
from rankkit_ext.metrics import pooled_estimate, summarize_runs, weighted_toxicity  # noqa: E402
from rankkit_ext.tsmc import enumerate_target, tsmc  # noqa: E402
from rankkit_ext.tsmc.efficiency import particle_efficiency, run_seed  # noqa: E402

from ._helpers import make_case, random_twist  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

unit = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from([20, 50, 1000]), unit),
                min_size=1, max_size=40))
def test_summarize_runs_matches_numpy(cells):
    runs = [{"generation": m, "K": k, "toxicity": x} for m, k, x in cells]
    rows = summarize_runs(runs)
    keys = sorted({(m, k) for m, k, _ in cells})
    assert [(r["generation"], r["K"]) for r in rows] == keys
    for r in rows:
        xs = [x for m, k, x in cells if (m, k) == (r["generation"], r["K"])]
        assert r["n_runs"] == len(xs)
        assert r["toxicity_runs"] == xs  # run order kept
        assert r["toxicity_mean"] == pytest.approx(np.mean(xs), abs=1e-12)
        if len(xs) == 1:
            assert np.isnan(r["toxicity_stderr"])
        else:
            se = np.std(xs, ddof=1) / np.sqrt(len(xs))
            assert r["toxicity_stderr"] == pytest.approx(se, abs=1e-12)


def test_summarize_runs_other_key():
    runs = [{"generation": 0, "K": 20, "log_Z": v} for v in (-3.0, -1.0)]
    (row,) = summarize_runs(runs, key="log_Z")
    assert row["log_Z_mean"] == -2.0
    assert row["log_Z_stderr"] == pytest.approx(1.0)  # std(ddof=1) = sqrt(2), / sqrt(2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 10.0), unit), min_size=1, max_size=30))
def test_weighted_toxicity_is_np_average(pairs):
    w = np.array([a for a, _ in pairs])
    if w.sum() == 0:
        w[0] = 1.0
    w = w / w.sum()
    x = np.array([b for _, b in pairs])
    assert weighted_toxicity(w, x) == pytest.approx(np.average(x, weights=w), abs=1e-12)


def test_weighted_toxicity_rejects_bad_input():
    with pytest.raises(ValueError, match="normalised"):
        weighted_toxicity([0.5, 0.6], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        weighted_toxicity([1.0], [0.1, 0.2])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-30.0, 5.0), unit), min_size=1, max_size=20),
       st.floats(-1e4, 1e4))
def test_pooled_estimate_formula_and_shift_invariance(pairs, shift):
    lz = np.array([a for a, _ in pairs])
    f = np.array([b for _, b in pairs])
    z = np.exp(lz)  # direct formula, fine in this range
    p = pooled_estimate(lz, f)
    assert p["mean"] == pytest.approx(z @ f / z.sum(), abs=1e-9)
    assert p["n_eff"] == pytest.approx(z.sum() ** 2 / (z @ z), rel=1e-9)
    # a common factor in every Z_hat cancels, even where exp(log Z) under/overflows
    q = pooled_estimate(lz + shift, f)
    assert q["mean"] == pytest.approx(p["mean"], abs=1e-9)
    assert q["n_eff"] == pytest.approx(p["n_eff"], rel=1e-9)


def test_pooled_estimate_errors():
    with pytest.raises(ValueError, match="same length"):
        pooled_estimate([0.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="-inf"):
        pooled_estimate([-np.inf, -np.inf], [0.1, 0.2])


def _f(s):
    """A fixed pseudo-random statistic in [0, 1] of an EOS-stripped continuation."""
    return float(np.random.default_rng([7, len(s), *s]).uniform())


@pytest.mark.parametrize("seed", [0, 1])
def test_pooled_estimate_converges_to_exact_sigma_mean(seed):
    """Small-K TSMC runs with a poor twist, pooled by Z_hat, recover E_σ[f] from enumeration
    (the estimator the JSON reports as ``target_pooled_tsmc``), within a CLT tolerance."""
    V, T, eos = 4, 3, True
    lm, phi = make_case(seed, V, T, eos)
    twist = random_twist(lm, seed)
    target = enumerate_target(lm, phi, [0], T)
    strip = [s[:-1] if s and s[-1] == V - 1 else s for s in target.sequences]
    exact = float(target.log_sigma.exp() @ torch.tensor([_f(s) for s in strip],
                                                        dtype=torch.float64))
    g = torch.Generator().manual_seed(seed)
    lz, fr = [], []
    for _ in range(300):
        r = tsmc(lm, twist, phi, [0], 3, T, generator=g)
        lz.append(r.log_Z)
        fr.append(weighted_toxicity(r.weights.numpy(), [_f(tuple(s)) for s in r.sequences()]))
    lz, fr = np.array(lz), np.array(fr)
    est = pooled_estimate(lz, fr)["mean"]
    # delta-method standard error of the ratio estimator sum Z f / sum Z
    z = np.exp(lz - lz.max())
    se = np.std(z * (fr - est)) / z.mean() / np.sqrt(len(z))
    assert abs(est - exact) < 5 * se + 1e-3, (est, exact, se)


def test_run_seed_distinct_and_valid():
    seeds = {run_seed(0, m, k, r) for m in range(3) for k in (20, 50, 100, 1000)
             for r in range(8)}
    assert len(seeds) == 3 * 4 * 8
    assert all(0 <= s < 2 ** 63 for s in seeds)
    assert run_seed(0, 1, 20, 2) == run_seed(0, 1, 20, 2)
    assert run_seed(1, 1, 20, 2) != run_seed(0, 1, 20, 2)


def _tiny_setup():
    # a table LM (no transformers import: keeps this module fast); m = 0 and 1 share it
    lm, phi = make_case(0, 4, 3, True)
    twist = random_twist(lm, 0)
    return SimpleNamespace(models=[lm, lm], twists=[twist, twist], potentials=[phi, phi])


def test_particle_efficiency_cache_resume_and_fingerprint(tmp_path):
    res = _tiny_setup()

    def tox(seqs):
        return np.array([_f(tuple(s)) for s in seqs])

    kw = dict(ks=(2, 5), runs_per_k={2: 2, 5: 1}, toxicity=tox, cache_dir=tmp_path, seed=4,
              progress=False)
    first = particle_efficiency(res, [0], 3, **kw)
    assert len(first) == 2 * (2 + 1)
    assert len(list(tmp_path.glob("*.json"))) == len(first)
    for r in first:
        assert 0.0 <= r["toxicity"] <= 1.0 and 1.0 - 1e-9 <= r["ess_final"] <= r["K"] + 1e-9
    # generations 0 and 1 share model and twist here, so the same (K, run) seeds differ only
    # through m: the per-run seed must make them distinct draws
    assert [r["log_Z"] for r in first if r["generation"] == 0] != \
        [r["log_Z"] for r in first if r["generation"] == 1]
    # resume: delete some results; the rerun recomputes exactly those, identically
    files = sorted(tmp_path.glob("*.json"))
    for f in files[::2]:
        f.unlink()
    again = particle_efficiency(res, [0], 3, **kw)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in first]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in again] == strip
    # a changed twist has another fingerprint: nothing stale is reused
    fp = state_fingerprint(res.models[0], res.twists[0])
    with torch.no_grad():
        # not a constant shift: log Z_hat and q are invariant to log psi + c
        w = next(res.twists[0].parameters())
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(5), dtype=w.dtype))
    assert state_fingerprint(res.models[0], res.twists[0]) != fp
    changed = particle_efficiency(res, [0], 3, **kw)
    # both generations share the changed twist: every run is recomputed under a new name
    assert len(list(tmp_path.glob("*.json"))) == 2 * len(first)
    assert [r["log_Z"] for r in changed] != [r["log_Z"] for r in first]


def test_fingerprint_needs_parameters():
    with pytest.raises(ValueError, match="fingerprint"):
        state_fingerprint(SimpleNamespace(x=1))


def test_rejection_with_one_seed_shares_proposals_across_beta():
    """Table 1 of the script draws rejection samples for β ∈ {0, 1, 10} from one generator
    state: every β must see the same proposals and uniforms (common random numbers), so β = 0
    accepts every proposal and the accepted sets nest as β grows."""
    from rankkit_ext.tsmc import FunctionPotential, rejection_sample

    lm, _ = make_case(3, 6, 4, True)

    def p_attr(s):  # a fixed "attribute probability" in (0, 1] of a continuation
        return 0.05 + 0.95 * _f(s)

    acc, seen = {}, {}
    for beta in (0.0, 1.0, 10.0):
        seen[beta] = []

        def log_phi(s, b=beta):
            seen[b].append(s)
            return b * np.log(p_attr(s))

        r = rejection_sample(lm, FunctionPotential(log_phi), [0], 300, 4, batch_size=128,
                             generator=torch.Generator().manual_seed(11))
        assert r.n_proposed == 300 and r.acceptance_ratio == len(r.sequences) / 300
        acc[beta] = [tuple(s) for s in r.sequences]
    # the same 300 proposals for every beta (the sampler scores finished particles as they
    # finish, so compare in the order it scored them), and beta = 0 (phi = 1) accepts all
    assert seen[0.0] == seen[1.0] == seen[10.0] and len(seen[0.0]) == 300
    assert sorted(acc[0.0]) == sorted(seen[0.0])
    # accepted at a larger beta: a subsequence of those accepted at a smaller one
    for lo, hi in ((0.0, 1.0), (1.0, 10.0)):
        it = iter(acc[lo])
        assert all(any(t == s for t in it) for s in acc[hi])
    assert 0 < len(acc[10.0]) < len(acc[1.0]) < 300
