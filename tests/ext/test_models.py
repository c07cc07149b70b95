"""RAD-V / RAD-Q scoring contract: cached == uncached, vocab == per token, state immutability,
save/load round trips."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rankkit_ext.models import RADQ, RADV, RewardModel, ScoringState  # noqa: E402

V, BOS = 40, 39
TOL = 50 * torch.finfo(torch.float32).eps  # a few ulps of O(1) scores after 2 layers


def tiny_backbone(seed=0, vocab=V, d=16, **kw):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_embd=d, n_layer=2, n_head=2, n_positions=32,
                                  bos_token_id=vocab - 1, eos_token_id=vocab - 1, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, **kw)
    return transformers.GPT2LMHeadModel(cfg)


def make(kind, seed=0, **kw):
    model = {"radv": RADV, "radq": RADQ}[kind](tiny_backbone(seed), n_labels=2,
                                                 label_names=("a", "b"), **kw)
    # a non-zero head so that every term of the score is exercised
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.ndim >= 1 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return model.eval()


def left_pad(seqs):
    T = max((len(s) for s in seqs), default=0)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        if s:
            ids[i, T - len(s):] = torch.tensor(s)
            mask[i, T - len(s):] = 1
    return ids, mask


prefix_lists = st.lists(st.lists(st.integers(0, V - 2), min_size=0, max_size=5), min_size=1, max_size=3)


@pytest.mark.parametrize("kind", ["radv", "radq"])
@settings(max_examples=5)
@given(seqs=prefix_lists, k=st.integers(1, 4), label=st.sampled_from([0, "b"]),
       seed=st.integers(0, 2**16))
def test_batched_cached_scores_equal_uncached_one_by_one(kind, seqs, k, label, seed):
    model = MODELS[kind]
    cands = torch.from_numpy(np.random.default_rng(seed).integers(0, V, (len(seqs), k)))
    ids, mask = left_pad(seqs)
    with torch.no_grad():
        scores, state = model.score_candidates(ids, mask, cands, label=label)
        ref = torch.tensor([[float(model.score_sequences(torch.tensor([s + [int(c)]]), label=label)[0])
                             for c in cands[i]] for i, s in enumerate(seqs)])
    assert scores.shape == (len(seqs), k)
    torch.testing.assert_close(scores, ref, atol=TOL, rtol=TOL)
    assert isinstance(state, ScoringState) and state.batch_size == len(seqs)


@pytest.mark.parametrize("kind", ["radv", "radq"])
def test_incremental_state_equals_recompute_and_is_immutable(kind):
    model = MODELS[kind]
    ids, mask = left_pad([[3, 4, 5], [7], [], [1, 2, 3, 4]])
    cands = torch.tensor([[1, 2, 3]] * 4)
    with torch.no_grad():
        s1, st1 = model.score_candidates(ids, mask, cands)
        keys_before = [t.clone() for t in _keys(st1)]
        new = torch.tensor([[9], [8], [7], [6]])
        ids2, mask2 = torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new)], 1)
        s2, st2 = model.score_candidates(ids2, mask2, cands, state=st1)
        s2_fresh, _ = model.score_candidates(ids2, mask2, cands)
        # the old state still scores its own prefixes exactly as before
        s1_again, _ = model.score_candidates(ids, mask, cands, state=st1)
        # extend twice more from the extended state
        ids3 = torch.cat([ids2, torch.tensor([[5], [5], [5], [5]])], 1)
        mask3 = torch.cat([mask2, torch.ones(4, 1, dtype=torch.long)], 1)
        s3, _ = model.score_candidates(ids3, mask3, cands, state=st2)
        s3_fresh, _ = model.score_candidates(ids3, mask3, cands)
    torch.testing.assert_close(s2, s2_fresh, atol=TOL, rtol=TOL)
    torch.testing.assert_close(s3, s3_fresh, atol=TOL, rtol=TOL)
    assert torch.equal(s1_again, s1)
    for a, b in zip(keys_before, _keys(st1), strict=True):
        assert torch.equal(a, b)


def _keys(state):
    return [layer.keys for layer in state.cache.layers] if hasattr(state.cache, "layers") else list(
        state.cache.key_cache)


@pytest.mark.parametrize("kind", ["radv", "radq"])
def test_state_select_reorders_rows(kind):
    model = MODELS[kind]
    ids, mask = left_pad([[3, 4], [7], [1, 2]])
    cands = torch.tensor([[1, 2]] * 3)
    rows = torch.tensor([2, 2, 0])
    with torch.no_grad():
        _, st1 = model.score_candidates(ids, mask, cands)
        sub = st1.select(rows)
        new = torch.tensor([[5], [6], [7]])
        ids2 = torch.cat([ids[rows], new], 1)
        mask2 = torch.cat([mask[rows], torch.ones_like(new)], 1)
        s_inc, _ = model.score_candidates(ids2, mask2, cands, state=sub)
        s_ref, _ = model.score_candidates(ids2, mask2, cands)
    torch.testing.assert_close(s_inc, s_ref, atol=TOL, rtol=TOL)


@settings(max_examples=5)
@given(seqs=prefix_lists, label=st.sampled_from([0, 1]))
def test_radq_score_vocab_equals_per_token_scoring(seqs, label):
    model = MODELS["radq"]
    ids, mask = left_pad(seqs)
    with torch.no_grad():
        full, state = model.score_vocab(ids, mask, label=label)
        per_tok = torch.stack([model.score_candidates(ids, mask, torch.full((len(seqs), 1), v),
                                                      label=label, state=state)[0][:, 0]
                               for v in range(V)], 1)
        # uncached: every [x'_0, v] as its own full sequence, one batch without padding
        one = model.score_sequences(torch.tensor([seqs[0] + [v] for v in range(V)]), label=label)
    assert full.shape == (len(seqs), V)
    torch.testing.assert_close(full, per_tok, atol=TOL, rtol=TOL)
    torch.testing.assert_close(full[0], one, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("kind", ["radv", "radq"])
def test_teacher_forced_forward_equals_scoring_each_prefix(kind):
    model = MODELS[kind]
    utts = [[3, 4, 5, 6], [7, 1]]
    tokens = torch.tensor([[3, 4, 5, 6], [7, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        out = model(tokens, mask)
        for b, u in enumerate(utts):
            for t in range(len(u)):
                for lab in range(2):
                    ref = model.score_sequences(torch.tensor([u[:t + 1]]), label=lab)[0]
                    torch.testing.assert_close(out[b, t, lab], ref, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("kind,kw", [("radv", {}), ("radq", {}),
                                     ("radq", {"baseline": False, "head": "mlp"})])
def test_save_load_round_trip_scores_identically(kind, kw, tmp_path):
    model = make(kind, seed=3, tokenizer_fingerprint="sha256:test:40", **kw)
    ids, mask = left_pad([[1, 2, 3], [4]])
    cands = torch.tensor([[5, 6], [7, 8]])
    with torch.no_grad():
        ref, _ = model.score_candidates(ids, mask, cands, label="b")
    model.save_pretrained(tmp_path / "rm")
    loaded = RewardModel.from_pretrained(tmp_path / "rm").eval()
    assert type(loaded) is type(model)
    assert (loaded.n_labels, loaded.label_names, loaded.bos_token_id, loaded.vocab_size,
            loaded.tokenizer_fingerprint) == (2, ("a", "b"), BOS, V, "sha256:test:40")
    with torch.no_grad():
        got, _ = loaded.score_candidates(ids, mask, cands, label="b")
    assert torch.equal(got, ref)
    other = RADQ if kind == "radv" else RADV
    with pytest.raises(TypeError, match="holds a"):
        other.from_pretrained(tmp_path / "rm")


def test_bos_is_explicit_and_not_the_pad_token():
    # pad id 0 != BOS: scores of a left-padded row equal those of the unpadded row
    model = MODELS["radv"]
    assert model.bos_token_id == BOS
    with torch.no_grad():
        padded, _ = model.score_candidates(torch.tensor([[0, 0, 5]]), torch.tensor([[0, 0, 1]]),
                                           torch.tensor([[6]]))
        plain, _ = model.score_candidates(torch.tensor([[5]]), None, torch.tensor([[6]]))
        other_bos = RADV(tiny_backbone(0), n_labels=2, bos_token_id=0).eval()
        other_bos.head.load_state_dict(model.head.state_dict())
        other, _ = other_bos.score_candidates(torch.tensor([[5]]), None, torch.tensor([[6]]))
    torch.testing.assert_close(padded, plain, atol=TOL, rtol=TOL)
    assert not torch.allclose(other, plain)  # the BOS token really enters the input


def test_frozen_embeddings_flags():
    m = RADQ(tiny_backbone(0))
    assert not m.backbone.get_input_embeddings().weight.requires_grad
    assert not m.output_embedding_weight().requires_grad
    assert m.W.weight.requires_grad and m.w.weight.requires_grad
    m2 = RADQ(tiny_backbone(0), freeze_embeddings=False)
    assert m2.backbone.get_input_embeddings().weight.requires_grad


def test_errors_name_the_problem():
    model = MODELS["radq"]
    ids, mask = left_pad([[1, 2]])
    with pytest.raises(ValueError, match="candidate ids must lie in"):
        model.score_candidates(ids, mask, torch.tensor([[V]]))
    with pytest.raises(IndexError, match="label=5 out of range"):
        model.score_candidates(ids, mask, torch.tensor([[1]]), label=5)
    with pytest.raises(KeyError, match="not found"):
        model.score_candidates(ids, mask, torch.tensor([[1]]), label="zzz")
    _, state = model.score_candidates(ids, mask, torch.tensor([[1]]))
    with pytest.raises(ValueError, match="differ from the state"):
        model.score_candidates(torch.tensor([[1, 3, 4]]), None, torch.tensor([[1]]), state=state)
    with pytest.raises(ValueError, match="same rows"):
        model.score_candidates(torch.tensor([[1, 2, 3, 4]]), None, torch.tensor([[1]]), state=state)
    with pytest.raises(ValueError, match="head must be"):
        RADQ(tiny_backbone(0), head="conv")
    bb = tiny_backbone(0)
    bb.config.bos_token_id = None
    with pytest.raises(ValueError, match="pass bos_token_id"):
        RADV(bb)


@pytest.mark.parametrize("kind", ["radv", "radq"])
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")
def test_cuda_scores_match_cpu(kind):
    model = make(kind, seed=1)
    ids, mask = left_pad([[1, 2, 3], [4]])
    cands = torch.tensor([[5, 6], [7, 8]])
    with torch.no_grad():
        ref, _ = model.score_candidates(ids, mask, cands)
        got, _ = model.to("cuda").score_candidates(ids.cuda(), mask.cuda(), cands.cuda())
    torch.testing.assert_close(got.cpu(), ref, atol=1e-4, rtol=1e-4)


MODELS = {"radv": make("radv", seed=1), "radq": make("radq", seed=2)}


@pytest.mark.parametrize("cls, kw", [(RADV, {}), (RADQ, {}), (RADQ, {"head": "mlp"})])
def test_heads_are_seeded_not_drawn_from_the_global_rng(cls, kw):
    # issue 12: two identical scripts gave different first-step losses (0.94 vs 0.41)
    a = cls(tiny_backbone(0), **kw)
    torch.rand(1000)  # whatever else the script did with the global RNG
    b = cls(tiny_backbone(0), **kw)
    c = cls(tiny_backbone(0), seed=1, **kw)
    heads = [n for n, _ in a.named_parameters() if not n.startswith("backbone.")]
    assert heads
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    for n in heads:
        assert torch.equal(pa[n], pb[n]), n
        bound = 1 / np.sqrt(pa[n].shape[-1])
        assert pa[n].abs().max() <= bound  # PyTorch's default Linear law
    assert any(not torch.equal(pa[n], pc[n]) for n in heads)
