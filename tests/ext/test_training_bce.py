"""The binary cross-entropy objective of paper 002, App. G.2.1 (eq. 18), beside the cumulative
(eq. 4/12) and distillation (eq. 13) losses: per-prefix definition, minimiser, bad labels, the
training loop, and the σ link used for decoding."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rankkit.sequences import RewardDataset  # noqa: E402
from rankkit_ext.models import RADQ, RADV, SigmoidScores  # noqa: E402
from rankkit_ext.training import (  # noqa: E402
    OBJECTIVES,
    bce_per_position,
    evaluate,
    objective_loss,
    prefix_weights,
    train,
)

from .test_training import TOL, V, backbone, dataset, padded  # noqa: E402  (shared set-up)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def slow_bce(r: float, y: float) -> float:
    """Eq. 18 term by term (with the minus sign of a loss): −[y log σ(r) + (1 − y) log(1 − σ(r))]."""
    s = 1.0 / (1.0 + math.exp(-r))
    return -(y * math.log(s) + (1.0 - y) * math.log(1.0 - s))


def test_bce_is_a_registered_objective_with_cumulative_weights():
    assert "bce" in OBJECTIVES
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(prefix_weights(mask, "bce"), prefix_weights(mask, "cumulative"))


@settings(max_examples=40)
@given(r=st.floats(-15, 15), y=st.floats(0, 1))
def test_bce_per_position_equals_the_printed_formula(r, y):
    got = float(bce_per_position(torch.tensor([r]), torch.tensor([y]))[0])
    ref = slow_bce(r, y)
    assert abs(got - ref) <= 1e-5 * max(1.0, ref)


def test_bce_per_position_is_finite_for_extreme_logits():
    r = torch.tensor([-200.0, -50.0, 50.0, 200.0])
    out = bce_per_position(r, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, r.abs())  # softplus(|r|) - 0 ≈ |r| far out


@settings(max_examples=25)
@given(data=st.lists(st.tuples(st.floats(0.05, 1.0), st.floats(0.02, 0.98)), min_size=1,
                     max_size=6))
def test_bce_minimiser_is_the_weighted_mean_response(data):
    # analogue of eq. 15 for eq. 18: argmin_r Σ λ BCE(r, y) has σ(r*) = Σ λ y / Σ λ
    lam = np.array([a for a, _ in data])
    y = np.array([b for _, b in data])
    ybar = float((lam * y).sum() / lam.sum())
    r_star = math.log(ybar / (1 - ybar))

    def total(r):
        return float((lam * np.array([slow_bce(r, yi) for yi in y])).sum())

    for delta in (1e-2, -1e-2, 0.5, -0.5):
        assert total(r_star) <= total(r_star + delta) + 1e-12


@pytest.mark.parametrize("kind", [RADV, RADQ])
def test_bce_loss_equals_per_prefix_loop(kind):
    model = kind(backbone(1), n_labels=2, seed=3).eval()
    ds = dataset(n=3)
    seqs = [s.tolist() for s in ds.sequences]
    tokens, mask = padded(seqs)
    y = torch.tensor(ds.responses, dtype=torch.float32)
    with torch.no_grad():
        batched = objective_loss(model, tokens, mask, y, "bce")
        cumulative = objective_loss(model, tokens, mask, y, "cumulative")
        for i, u in enumerate(seqs):
            L, ref = len(u), 0.0
            for t in range(1, L + 1):  # prefix u_{1:t}, λ_t = 2t/(L(L+1)) as in eq. 4
                lam = 2 * t / (L * (L + 1))
                for lab in range(2):
                    r = float(model.score_sequences(torch.tensor([u[:t]]), label=lab)[0])
                    ref += lam * slow_bce(r, float(y[i, lab])) / 2
            assert abs(float(batched[i]) - ref) <= TOL * max(1.0, ref)
    assert not torch.allclose(batched, cumulative)  # a different objective, not an alias


def test_bce_rejects_responses_outside_the_unit_interval():
    model = RADQ(backbone(2), n_labels=1)
    before = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, V - 1, 4).tolist() for _ in range(6)]
    bad = RewardDataset(seqs, np.array([0.1, 0.5, 1.5, 0.2, 0.3, 0.9]), vocab_size=V)
    with pytest.raises(ValueError, match=r"bce.*\[0, 1\].*1\.5"):
        train(model, bad, objective="bce", epochs=1, batch_size=2, progress=False)
    # refused before any step: nothing was trained on the good first batches
    assert all(torch.equal(v, before[k]) for k, v in model.named_parameters() if v.requires_grad)
    tokens, mask = padded(seqs[:2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        objective_loss(model, tokens, mask, torch.tensor([[-0.5], [0.5]]), "bce")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        objective_loss(model, tokens, mask, torch.tensor([[float("nan")], [0.5]]), "bce")


def test_bce_training_reduces_the_loss_and_sigmoid_scores_follow():
    ds = dataset(n=20, n_labels=1, seed=1)
    model = RADQ(backbone(5), n_labels=1, seed=0)
    before = evaluate(model, ds, "bce")
    res = train(model, ds, objective="bce", epochs=15, batch_size=10, lr=3e-3, progress=False)
    after = evaluate(model, ds, "bce")
    assert res.steps == 30 and after < 0.9 * before
    wrapped = SigmoidScores(model)
    assert wrapped.vocab_size == model.vocab_size and wrapped.label_names == model.label_names
    ids = torch.tensor([[3, 4, 5], [0, 7, 8]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    with torch.no_grad():
        raw, _ = model.score_candidates(ids, mask, torch.tensor([[1, 2], [3, 4]]))
        sig, _ = wrapped.score_candidates(ids, mask, torch.tensor([[1, 2], [3, 4]]))
        vocab, _ = wrapped.score_vocab(ids, mask)
    torch.testing.assert_close(sig, torch.sigmoid(raw))
    assert ((vocab > 0) & (vocab < 1)).all() and vocab.shape == (2, V)
    with pytest.raises(TypeError, match="score_candidates"):
        SigmoidScores(object())


def test_sigmoid_scores_drive_guided_decoding():
    # a BCE-trained model's logits go through σ before eq. 1 adds β r̃ (App. G.2.1)
    from rankkit_ext.guided import guided_generate

    base = backbone(7).eval()
    rm = RADQ(backbone(8), n_labels=1, seed=1).eval()
    wrapped = SigmoidScores(rm)
    out = guided_generate(base, wrapped, [[3, 4], [5]], beta=2.0, top_k=5, n_samples=2,
                          max_new_tokens=3, generator=0)
    for i, p in enumerate([[3, 4], [5]]):
        for j, y in enumerate(out.tokens[i]):
            with torch.no_grad():
                raw = float(rm.score_sequences(torch.tensor([p + y.tolist()]))[0])
            # σ(r) differs from the clamp to [0, 1] by > 1e-4 wherever |r| < 8
            assert abs(raw) < 8
            assert abs(out.final_reward[i, j] - 1.0 / (1.0 + math.exp(-raw))) < 1e-5
