"""Self-distillation (Algorithm 1) on a tiny GPT-2 whose σ is enumerable."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rankkit_ext.tsmc.adapters import EnumerableLM, HFCausalLM, prefix_count  # noqa: E402
from rankkit_ext.tsmc.distill import (  # noqa: E402
    EffectivePotential,
    distill_set_stats,
    finetune_lm,
    self_distill,
    tsmc_weighted_samples,
)
from rankkit_ext.tsmc.exact import enumerate_target  # noqa: E402
from rankkit_ext.tsmc.twists import TableTwist  # noqa: E402

from ._helpers import random_phi, tiny_gpt2  # noqa: E402

T = 3
PROMPT = [0]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup():
    model = tiny_gpt2(V=5, eos=4)
    phi = random_phi(17, scale=2.5)
    return model, phi, enumerate_target(model, phi, PROMPT, T)


def test_effective_potential_keeps_sigma_fixed(setup):
    model, phi, target = setup
    moved = finetune_lm(model, PROMPT, [list(s) for s in target.sequences[:5]], lora=False,
                        steps=5, lr=0.05, progress=False)
    assert any((a - b).abs().max() > 1e-3
               for a, b in zip(moved.parameters(), model.parameters(), strict=True))
    eff = EffectivePotential(model, moved, phi, PROMPT, T, 4)
    t2 = enumerate_target(moved, eff, PROMPT, T)
    assert t2.sequences == target.sequences
    assert abs(t2.log_Z - target.log_Z) < 1e-9
    assert torch.allclose(t2.log_sigma, target.log_sigma, atol=1e-9)
    assert not torch.allclose(t2.log_p, target.log_p, atol=1e-3)  # the base model moved
    # a distilled (frozen) model can itself be distilled again: generation m -> m + 1
    for lora in (False, True):
        again = finetune_lm(moved, PROMPT, [[1, 2, 3]], lora=lora, steps=3, lr=0.05,
                            progress=False)
        assert any((a - b).abs().max() > 1e-4
                   for a, b in zip(again.parameters(), moved.parameters(), strict=True))


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_self_distill_moves_base_towards_sigma(setup, lora, tmp_path):
    model, phi, target = setup

    def factory():  # a free table twist, so CTL's progress is not capped by a 16-d head
        return TableTwist(torch.zeros(prefix_count(5, T), 5, dtype=torch.float64))

    kw = dict(adapter=lambda m: EnumerableLM(HFCausalLM(m), T), generations=1, max_new_tokens=T, n_particles=32, ctl_steps=60, ctl_lr=0.1,
              n_distill_samples=1024, seed=0, progress=False,
              finetune=dict(lora=lora, steps=30, lr=0.02, batch_size=64,
                            lora_targets=["c_attn", "c_fc", "c_proj"]))
    res = self_distill(model, phi, PROMPT, factory, checkpoint_dir=tmp_path, **kw)
    assert len(res.models) == 2 and res.models[0] is model
    kl0 = target.kl_sigma_q(None)  # KL(sigma || p^(0))
    t1 = enumerate_target(res.models[1], res.potentials[1], PROMPT, T)
    assert abs(t1.log_Z - target.log_Z) < 1e-9
    kl1 = t1.kl_sigma_q(None)  # KL(sigma || p^(1))
    # LoRA on a 16-wide random GPT-2 has little room; full fine-tuning moves much further
    assert kl1 < (kl0 - 0.03 if lora else 0.8 * kl0), (kl0, kl1)
    # the retrained twist-induced proposal improves on the distilled base itself
    lm1 = EnumerableLM(HFCausalLM(res.models[1]), T)
    assert enumerate_target(lm1, res.potentials[1], PROMPT, T).kl_sigma_q(res.twists[1]) < kl1
    # resuming from the checkpoints reproduces generation 1 without retraining
    again = self_distill(model, phi, PROMPT, factory, checkpoint_dir=tmp_path, **kw)
    for a, b in zip(again.models[1].parameters(), res.models[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_finetune_is_seeded_and_leaves_the_global_rng_alone(setup):
    """Full fine-tuning runs GPT-2's dropout (train mode): with the same seed the student is
    bit-identical, and the caller's global RNG stream is not consumed."""
    model, _, target = setup
    assert model.config.resid_pdrop > 0  # dropout really draws random numbers here
    seqs = [list(s) for s in target.sequences[:6]]
    kw = dict(lora=False, steps=4, lr=0.05, progress=False)
    state = torch.get_rng_state()
    a = finetune_lm(model, PROMPT, seqs, seed=3, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    b = finetune_lm(model, PROMPT, seqs, seed=3, **kw)
    c = finetune_lm(model, PROMPT, seqs, seed=4, **kw)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters(), strict=True))


def test_self_distill_gives_each_generation_model_to_the_factory(setup):
    """A factory with a parameter receives p^(m) (what a CopyTwist of the current base needs);
    the ``ctl`` options reach train_twist (a bad one fails there, naming it)."""
    model, phi, _ = setup
    seen = []

    def factory(mdl):
        seen.append(mdl)
        return TableTwist(torch.zeros(prefix_count(5, T), 5, dtype=torch.float64))

    kw = dict(adapter=lambda m: EnumerableLM(HFCausalLM(m), T), generations=1, max_new_tokens=T,
              n_particles=8, ctl_steps=2, n_distill_samples=16, progress=False,
              finetune=dict(lora=False, steps=2, lr=0.02, batch_size=8))
    res = self_distill(model, phi, PROMPT, factory, ctl=dict(negative="sis"), **kw)
    assert len(seen) == 2 and all(a is b for a, b in zip(seen, res.models, strict=True))
    with pytest.raises(ValueError, match="bogus"):
        self_distill(model, phi, PROMPT, factory, ctl=dict(negative="bogus"), **kw)


def test_generation_m_samples_from_the_previous_generation_target(setup, monkeypatch):
    """Issue 12: with two or more generations, generation m's distillation samples must come
    from (p^(m-1), ψ^(m-1), φ^(m-1)) — φ^(m-1) the effective potential of eq. 8, not φ."""
    import rankkit_ext.tsmc.distill as distill

    model, phi, _ = setup
    calls = []
    real = distill.tsmc_samples

    def spy(lm, twist, potential, *a, **k):
        calls.append((lm, twist, potential))
        return real(lm, twist, potential, *a, **k)

    monkeypatch.setattr(distill, "tsmc_samples", spy)
    factory = lambda: TableTwist(torch.zeros(prefix_count(5, T), 5, dtype=torch.float64))  # noqa: E731
    res = self_distill(model, phi, PROMPT, factory, adapter=lambda m: EnumerableLM(HFCausalLM(m), T),
                       generations=2, max_new_tokens=T, n_particles=8, ctl_steps=2,
                       n_distill_samples=16, progress=False, ctl=dict(negative="sis"),
                       finetune=dict(lora=False, steps=2, lr=0.02, batch_size=8))
    assert len(calls) == 2 and len(res.potentials) == 3
    assert res.potentials[0] is phi and isinstance(res.potentials[1], EffectivePotential)
    for m, (lm, twist, potential) in enumerate(calls, start=1):
        assert potential is res.potentials[m - 1]
        assert twist is res.twists[m - 1]
        assert lm.inner.model is res.models[m - 1]


def test_weighted_finetune_on_one_string_equals_finetuning_on_it_alone(setup):
    """Weights that put all mass on one sequence give the same student as fine-tuning on that
    sequence alone: the weighted likelihood ignores zero-weight strings (batch size 1, so
    GPT-2's dropout draws the same numbers in both)."""
    model, _, target = setup
    seqs = [list(s) for s in target.sequences[:4]]
    kw = dict(lora=False, steps=4, lr=0.05, batch_size=1, seed=2, progress=False)
    a = finetune_lm(model, PROMPT, seqs, weights=[0.0, 0.0, 3.0, 0.0], **kw)
    b = finetune_lm(model, PROMPT, [seqs[2]], **kw)
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(x, y, atol=1e-12)
    with pytest.raises(ValueError, match="one per sequence"):
        finetune_lm(model, PROMPT, seqs, weights=[1.0, -1.0, 0.0, 0.0], **kw)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 3), min_size=1, max_size=3),
                          st.floats(0.01, 5.0)), min_size=1, max_size=25))
def test_distill_set_stats_matches_direct_count(items):
    seqs = [s for s, _ in items]
    w = np.array([x for _, x in items])
    got = distill_set_stats(seqs, w)
    tot: dict = {}
    for s, x in items:
        tot[tuple(s)] = tot.get(tuple(s), 0.0) + x / w.sum()
    assert got["n_strings"] == len(seqs) and got["n_distinct"] == len(tot)
    assert got["effective_distinct"] == pytest.approx(1 / sum(v * v for v in tot.values()))
    assert distill_set_stats(seqs)["effective_distinct"] <= len(tot) + 1e-9


def test_weighted_tsmc_samples_estimate_sigma_and_self_distill_records_sets(setup):
    model, phi, target = setup
    lm = EnumerableLM(HFCausalLM(model), T)
    g = torch.Generator().manual_seed(0)
    seqs, w = tsmc_weighted_samples(lm, None, phi, PROMPT, 150, 8, T, g)
    assert len(seqs) == 1200 and w.sum() == pytest.approx(1.0)
    # P_σ(first token = 1): the weighted set's estimate against enumeration
    exact = float(sum(torch.exp(target.log_sigma[i]) for i, s in enumerate(target.sequences)
                      if s and s[0] == 1))
    est = float(sum(wi for s, wi in zip(seqs, w, strict=True) if s and s[0] == 1))
    assert abs(est - exact) < 0.06, (est, exact)
    factory = lambda: TableTwist(torch.zeros(prefix_count(5, T), 5, dtype=torch.float64))  # noqa: E731
    kw = dict(adapter=lambda m: EnumerableLM(HFCausalLM(m), T), generations=2, max_new_tokens=T,
              n_particles=8, ctl_steps=2, progress=False, ctl=dict(negative="sis"),
              finetune=dict(lora=False, steps=2, lr=0.02, batch_size=8))
    res = self_distill(model, phi, PROMPT, factory, distill="weighted", n_distill_runs=5, **kw)
    assert [d["generation"] for d in res.distill_sets] == [1, 2]
    assert all(d["n_strings"] == 40 and d["weighted"] for d in res.distill_sets)
    with pytest.raises(ValueError, match="n_distill_runs"):
        self_distill(model, phi, PROMPT, factory, distill="weighted", **kw)
    with pytest.raises(ValueError, match="distill must be one of"):
        self_distill(model, phi, PROMPT, factory, distill="bogus", **kw)
