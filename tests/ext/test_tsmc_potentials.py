"""Potentials (log space, hard constraints, products) and twist heads."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from rankkit_ext.scorers import PipelineScorer  # noqa: E402
from rankkit_ext.tsmc.adapters import HFCausalLM, TableLM, prefix_count  # noqa: E402
from rankkit_ext.tsmc.potentials import (  # noqa: E402
    ClassifierPotential,
    HardConstraint,
    ProductPotential,
    TablePotential,
    pipeline_scorer,
    toxicity_potential,
)
from rankkit_ext.tsmc.twists import LinearTwist, MLPTwist, TableTwist  # noqa: E402

seqs = st.lists(st.lists(st.integers(0, 4), max_size=4), min_size=1, max_size=6)


def _decode(ids):
    return " ".join("abcde"[i] for i in ids)


@given(seqs, st.floats(0, 12))
def test_classifier_potential_is_beta_log_p(samples, beta):
    def scorer(texts):  # deterministic probability in [0, 1] with exact zeros
        return [(len(t) % 5) / 4 for t in texts]

    pot = ClassifierPotential(scorer, beta, decode=_decode)
    got = pot.log_phi(samples).numpy()
    p = np.array(scorer([_decode(s) for s in samples]))
    for g, pi in zip(got, p, strict=True):
        if beta == 0:
            assert g == 0.0  # beta = 0 means phi = 1 even where p = 0 (no 0 * -inf)
        elif pi == 0:
            assert g == -math.inf  # a true zero, not a clipped tiny number
        else:
            assert math.isclose(g, beta * math.log(pi), rel_tol=1e-12, abs_tol=1e-300)


@given(seqs)
def test_product_and_hard_constraint(samples):
    table = {tuple(s): -0.5 * len(s) for s in samples}
    hard = HardConstraint(lambda s: 3 not in s)
    prod = TablePotential(table) * hard * TablePotential(table)
    assert isinstance(prod, ProductPotential) and len(prod.potentials) == 3
    got = prod.log_phi(samples).numpy()
    for g, s in zip(got, samples, strict=True):
        assert g == (-math.inf if 3 in s else -1.0 * len(s))
    assert not np.isnan(got).any()


def test_potential_errors_name_the_problem():
    with pytest.raises(ValueError, match="probability"):
        ClassifierPotential(lambda t: [1.5] * len(t), 1.0).log_phi(["x"])
    with pytest.raises(TypeError, match="decode"):
        ClassifierPotential(lambda t: [0.5] * len(t), 1.0).log_phi([[1, 2]])
    with pytest.raises(ValueError, match="beta"):
        ClassifierPotential(lambda t: t, -1.0)
    with pytest.raises(ValueError, match=r"\+inf|real or -inf"):
        TablePotential({(1,): math.inf}).log_phi([[1]])


def test_toxicity_potential_scores_texts():
    pytest.importorskip("profanity_check")
    pot = toxicity_potential(beta=2.0)
    texts = ["what a lovely sunny day", "you are a stupid idiot, shut up"]
    lp = pot.log_phi(texts).numpy()
    from profanity_check import predict_prob

    assert np.allclose(lp, 2.0 * np.log(predict_prob(texts)), rtol=1e-12)
    assert lp[1] > lp[0]


def test_pipeline_scorer_picks_label():
    # the old name of rankkit_ext.scorers.PipelineScorer: the one HF pipeline scorer
    def fake_pipe(texts, top_k=None, **kw):
        return [[{"label": "toxic", "score": 0.25}, {"label": "ok", "score": 0.75}]
                for _ in texts]

    assert isinstance(pipeline_scorer(fake_pipe, "toxic"), PipelineScorer)
    assert np.allclose(pipeline_scorer(fake_pipe, "toxic")(["a", "b"]), [0.25, 0.25])
    with pytest.raises(ValueError, match="none is label='nope'"):
        pipeline_scorer(fake_pipe, "nope")(["a"])


def test_twist_heads_shapes_and_bootstrap_init():
    h = torch.randn(7, 12, generator=torch.Generator().manual_seed(0))
    for head in (LinearTwist(12, 9), MLPTwist(12, 9, width=16)):
        out = head.log_psi(h.double())
        assert out.shape == (7, 9) and out.dtype == torch.float32
        assert torch.equal(out, torch.zeros(7, 9))  # psi = 1: proposal starts at p_LM
    # a linear head on one-hot prefixes is the same as a table twist
    lm = TableLM.random(3, 2, torch.Generator().manual_seed(1))
    table = torch.randn(prefix_count(3, 2), 3, generator=torch.Generator().manual_seed(2),
                        dtype=torch.float64)
    lin = LinearTwist(lm.hidden_size, 3, dtype=torch.float64)
    with torch.no_grad():
        lin.proj.weight.copy_(table.T)
    _, hid, _ = lm.start([0], 1)
    assert torch.allclose(lin.log_psi(hid), TableTwist(table).log_psi(hid))


def test_hf_adapter_reorder_matches_fresh_run():
    transformers = pytest.importorskip("transformers")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=11, n_embd=16, n_layer=2, n_head=2, n_positions=16)).double().eval()
    lm = HFCausalLM(model, bos_token_id=None)  # prompts as given (the config's BOS is 50256)
    _, _, st_ = lm.start([1, 2], 3)
    _, _, st_ = lm.advance(st_, torch.tensor([4, 5, 6]))
    st_ = lm.reorder(st_, torch.tensor([2, 2, 0]))
    logp, hid, _ = lm.advance(st_, torch.tensor([7, 8, 9]))
    with torch.no_grad():
        ref = model(torch.tensor([[1, 2, 6, 7], [1, 2, 6, 8], [1, 2, 4, 9]]),
                    output_hidden_states=True)
    assert torch.allclose(logp, torch.log_softmax(ref.logits[:, -1], -1), atol=1e-12)
    assert torch.allclose(hid, ref.hidden_states[-1][:, -1], atol=1e-12)
    with pytest.raises(ValueError, match="prompt is empty"):
        lm.start([], 2)
    with pytest.raises(ValueError, match="bos_token_id=50256 is outside"):
        HFCausalLM(model)  # the default conditions on the config's BOS, which must exist
