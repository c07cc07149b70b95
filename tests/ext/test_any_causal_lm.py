"""Any causal LM (issue 14, item 6): tiny Llama and Qwen2 models (random init) are saved with
``save_pretrained`` and loaded back *by path* through the ``transformers`` Auto classes; guided
decoding, RAD-Q / RAD-V training and twisted SMC run on them, with the checks that catch
GPT-2-only assumptions: left padding (position ids), the KV cache (``cache`` vs
``past_key_values``), hidden sizes and position limits read from generic config names.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import rankkit_ext as rx  # noqa: E402
from rankkit import tokenizers as rtok  # noqa: E402
from rankkit.datasets import as_dataset  # noqa: E402
from rankkit.sequences import TokenSequences  # noqa: E402
from rankkit_ext import _hf  # noqa: E402
from rankkit_ext.lm import load_base_lm, tiny_causal_lm  # noqa: E402
from rankkit_ext.models import RADQ, RADV, load_reward_model  # noqa: E402

from ._helpers import random_phi  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCHS = ("llama", "qwen2")
PAD, BOS, EOS = 0, 1, 2
WORDS = "good bad day movie great awful film fine poor nice the a was is very not".split()
V = 4 + len(WORDS)  # <pad> <bos> <eos> <unk> + words
TEXTS = ["good movie", "bad film", "the day was great", "awful poor film", "a very nice movie",
         "not good", "fine day", "the film is bad", "great great film", "poor day"]
LABELS = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.7, 0.1, 1.0, 0.2]


def _word_tokenizer():
    """A word-level tokenizer over WORDS (no hub, no GPT-2 vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>",
                                                bos_token="<bos>", eos_token="<eos>",
                                                unk_token="<unk>")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{arch: folder} with a tiny random model of each architecture (2 layers, d = 16), the
    Llama folder also holding the word tokenizer; plus "llama5", a 5-token Llama for
    exact enumeration of twisted SMC targets."""
    root = tmp_path_factory.mktemp("anylm")
    out = {}
    for arch in ARCHS:
        m = tiny_causal_lm(arch, vocab_size=V, hidden_size=16, n_layer=2, n_head=2,
                           max_positions=32, bos_token_id=BOS, eos_token_id=EOS,
                           pad_token_id=PAD, num_key_value_heads=1, seed=1)
        m.save_pretrained(root / arch)
        out[arch] = root / arch
    _word_tokenizer().save_pretrained(root / "llama")
    tiny_causal_lm("llama", vocab_size=5, hidden_size=16, n_layer=2, n_head=2, max_positions=16,
                   bos_token_id=0, eos_token_id=4, pad_token_id=4, seed=2
                   ).save_pretrained(root / "llama5")
    out["llama5"] = root / "llama5"
    return out


def _left_pad(rows, pad=PAD):
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r)
        mask[i, T - len(r):] = 1
    return ids, mask


def _random_heads(model, seed):
    # non-trivial heads, so that every term of the score (and a wrong position id) shows
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.ndim >= 1 and not any(
                    p is q for q in model.backbone.parameters()):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


# ---- loading ----------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_base_and_reward_models_load_by_path(saved, arch):
    cls = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]
    base = load_base_lm(saved[arch])
    src = transformers.AutoModelForCausalLM.from_pretrained(saved[arch]).eval()
    assert type(base).__name__ == cls and not base.training
    ids = torch.tensor([[BOS, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(base(ids).logits, src(ids).logits)
    for kind in (RADQ, RADV):
        rm = kind.from_backbone(str(saved[arch]), seed=0)
        assert type(rm.backbone).__name__ == cls
        assert rm.hidden_size == 16 and rm.vocab_size == V and rm.bos_token_id == BOS
    body = RADQ.from_backbone(saved[arch], auto="base")  # AutoModel: e(v) = input embedding
    assert type(body.backbone).__name__ == cls.replace("ForCausalLM", "Model")
    assert body.hidden_size == 16
    with pytest.raises(ValueError, match="auto"):
        RADQ.from_backbone(saved[arch], auto="seq2seq")


def test_tokenizer_loads_by_path_and_encodes_words(saved):
    tok = rtok.load(str(saved["llama"]))
    assert len(tok) == V
    assert tok("good movie", add_special_tokens=False)["input_ids"] == [4, 7]


def test_generic_config_helpers():
    g = transformers.GPT2Config(n_embd=24, n_positions=40, n_head=2, n_layer=1, vocab_size=10)
    ll = transformers.LlamaConfig(hidden_size=16, max_position_embeddings=48,
                                  num_attention_heads=2, num_hidden_layers=1, vocab_size=10)
    assert _hf.max_positions(g) == 40 and _hf.max_positions(ll) == 48
    m = tiny_causal_lm("llama", vocab_size=10, hidden_size=16, n_layer=1, n_head=2)
    assert _hf.hidden_size(m) == 16
    kw = _hf.forward_kwargs(m, position_ids=1, attention_mask=2, no_such_argument=3, labels=None)
    assert kw == {"position_ids": 1, "attention_mask": 2}

    class Wrapper(torch.nn.Module):  # forward(*args, **kwargs): cannot tell, pass everything
        def forward(self, *args, **kwargs):
            return kwargs

    assert _hf.forward_kwargs(Wrapper(), position_ids=1, other=2) == {"position_ids": 1,
                                                                       "other": 2}
    assert set(_hf.cache_kwargs(m, "c")) <= {"cache", "past_key_values"}
    # a wrapper's forward(**kwargs) says nothing: the name is the wrapped model's, so a
    # wrapper around a model of this transformers release passes no deprecated alias
    name = _hf._cache_name(m)
    assert name in ("cache", "past_key_values")

    class Around(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids=None, **kw):
            return self.inner(input_ids=input_ids, **kw)

    assert _hf.cache_kwargs(Around(m), "c") == {name: "c"}
    assert _hf.cache_kwargs(Wrapper(), "c") == {"past_key_values": "c"}  # nothing inside
    with pytest.raises(ValueError, match="divisible"):
        tiny_causal_lm("llama", hidden_size=15, n_head=2)
    with pytest.raises(ValueError, match="auto must be"):
        _hf.load_pretrained("x", "encoder")


# ---- the scoring contract with left padding and the KV cache ----------------------------
@pytest.mark.parametrize("kind", [RADQ, RADV])
@pytest.mark.parametrize("arch", ARCHS)
def test_scores_are_padding_and_cache_invariant(saved, arch, kind):
    rm = _random_heads(kind.from_backbone(saved[arch], seed=0), seed=3)
    rows = [[5, 6, 7, 8], [9], [10, 11]]
    cands = torch.tensor([[4, 5, 6], [7, 8, 9], [10, 11, 12]])
    ids, mask = _left_pad(rows)
    with torch.no_grad():
        batched, _ = rm.score_candidates(ids, mask, cands)
        for i, r in enumerate(rows):  # one row alone, no padding: positions 0..len
            alone, _ = rm.score_candidates(torch.tensor([r]), None, cands[i:i + 1])
            torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=1e-5)
        # incremental: the state of the first T-1 columns extended by one column
        _, st = rm.score_candidates(ids[:, :-1], mask[:, :-1], cands)
        inc, _ = rm.score_candidates(ids, mask, cands, state=st)
        torch.testing.assert_close(inc, batched, atol=1e-5, rtol=1e-5)
        if kind is RADQ:
            full, _ = rm.score_vocab(ids, mask)
            torch.testing.assert_close(full.gather(1, cands), batched, atol=1e-5, rtol=1e-5)


# ---- guided decoding ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_guided_generate_matches_teacher_forcing(saved, arch):
    base = load_base_lm(saved[arch])
    rm = _random_heads(RADQ.from_backbone(saved[arch], seed=0), seed=4)
    prompts = [[BOS, 5, 6, 7, 8], [BOS, 9], [BOS, 10, 11]]  # different lengths: left padding
    out = rx.guided_generate(base, rm, prompts, beta=3.0, top_k=6, n_samples=2,
                             max_new_tokens=5, generator=0, eos_token_id=EOS, pad_token_id=PAD)
    n_checked = 0
    for i, p in enumerate(prompts):
        for j, y in enumerate(out.tokens[i]):
            assert len(y) >= 1
            full = torch.tensor([p + y.tolist()])
            with torch.no_grad():  # one unpadded pass: the reference for positions and cache
                logp = torch.log_softmax(base(full).logits[0].double(), -1)
                # the base read [BOS] + prompt; the reward model reads the prompt without
                # the BOS (it prepends its own: BOS is never seen twice)
                r_last = float(rm.score_sequences(full[:, 1:]))
            lp = sum(float(logp[len(p) - 1 + t, y[t]]) for t in range(len(y)))
            assert math.isclose(out.log_p_lm[i, j], lp, abs_tol=1e-4), (i, j)
            assert math.isclose(out.final_reward[i, j], min(max(r_last, 0.0), 1.0), abs_tol=1e-5)
            n_checked += 1
    assert n_checked == 6
    # the samples are guided: every token is one of the base's top-6 at its step
    for i, p in enumerate(prompts):
        for y in out.tokens[i]:
            with torch.no_grad():
                logits = base(torch.tensor([p + y.tolist()])).logits[0]
            for t, v in enumerate(y.tolist()):
                assert v in torch.topk(logits[len(p) - 1 + t], 6).indices.tolist()


def test_logits_processor_with_generate_on_llama(saved):
    base = load_base_lm(saved["llama"])
    tok = rtok.load(str(saved["llama"]))
    rm = _random_heads(RADV.from_backbone(saved["llama"], seed=0), seed=5)
    # generate's input carries the base's BOS by hand (the processor refuses it otherwise)
    rows = [[BOS] + tok(t, add_special_tokens=False)["input_ids"]
            for t in ("good movie", "the film was very")]
    ids, mask = _left_pad(rows)
    enc = {"input_ids": ids, "attention_mask": mask}
    outs = []
    for use_cache in (True, False):  # cached reward state == recomputed every step
        proc = rx.RewardGuidedLogitsProcessor(rm, beta=4.0, top_k=5, pad_token_id=PAD,
                                              use_cache=use_cache)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            outs.append(base.generate(**enc, do_sample=True, top_k=0, logits_processor=[proc],
                                      max_new_tokens=4, pad_token_id=PAD, eos_token_id=EOS))
    assert outs[0].shape[1] > enc["input_ids"].shape[1]
    assert torch.equal(outs[0], outs[1])


# ---- training ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [RADQ, RADV])
def test_train_by_path_learns_and_round_trips(saved, tmp_path, kind):
    tok = rtok.load(str(saved["llama"]))
    ds = as_dataset((TEXTS, LABELS), tokenizer=tok)
    rm = kind.from_backbone(saved["llama"], seed=0)
    before = rx.evaluate_objective(rm, ds)
    res = rx.train(rm, ds, epochs=8, batch_size=5, lr=1e-2, progress=False)
    after = rx.evaluate_objective(rm, ds)
    assert res.steps == 16 and after < 0.8 * before, (before, after)
    rm.save_pretrained(tmp_path / "rm")
    back = load_reward_model(tmp_path / "rm").eval()
    assert type(back).__name__ == kind.__name__
    assert type(back.backbone).__name__ == "LlamaForCausalLM"
    ids, mask = _left_pad([[5, 6], [7, 8, 9]])
    with torch.no_grad():
        a, _ = rm.eval().score_candidates(ids, mask, torch.tensor([[4, 5], [6, 7]]))
        b, _ = back.score_candidates(ids, mask, torch.tensor([[4, 5], [6, 7]]))
    torch.testing.assert_close(a, b)


def test_train_lm_truncates_to_the_models_positions():
    # OPT has learned position embeddings: a sequence longer than max_position_embeddings
    # would index past them, so train_lm must read the limit from the generic config name
    lm = tiny_causal_lm("opt", vocab_size=V, hidden_size=16, n_layer=1, n_head=2,
                        max_positions=6, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                        ffn_dim=32, word_embed_proj_dim=16)
    assert _hf.max_positions(lm.config) == 6
    long = TokenSequences.from_lists([list(range(4, 4 + 12))] * 4)
    res = rx.train_lm(lm, long, epochs=1, batch_size=2, progress=False)
    assert res.steps == 2 and all(np.isfinite(res.losses))


# ---- twisted SMC -------------------------------------------------------------------------
def test_tsmc_on_llama_by_path_is_exact_with_the_optimal_twist(saved):
    from rankkit_ext.tsmc import EnumerableLM, HFCausalLM, enumerate_target, tsmc

    base = load_base_lm(saved["llama5"], dtype=torch.float64)
    T = 3
    lm = EnumerableLM(HFCausalLM(base), T)
    phi = random_phi(7)
    target = enumerate_target(lm, phi, [0], T)
    assert math.isclose(float(target.log_sigma.exp().sum()), 1.0, abs_tol=1e-9)
    for seed in range(2):
        r = tsmc(lm, target.optimal_twist(), phi, [0], 8, T, ess_threshold=1.0,
                 generator=torch.Generator().manual_seed(seed))
        assert abs(r.log_Z - target.log_Z) <= 1e-9  # zero variance: cache + reorder exact
    a = tsmc(HFCausalLM(base), None, phi, [0, 3], 8, T, ess_threshold=1.0,
             generator=torch.Generator().manual_seed(3))
    b = tsmc(HFCausalLM(base, use_cache=False), None, phi, [0, 3], 8, T, ess_threshold=1.0,
             generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.tokens, b.tokens) and abs(a.log_Z - b.log_Z) <= 1e-9


def test_ctl_on_llama_hidden_states_reduces_kl(saved):
    from rankkit_ext.tsmc import HFCausalLM, LinearTwist, enumerate_target, train_twist

    base = load_base_lm(saved["llama5"], dtype=torch.float64)
    lm = HFCausalLM(base)
    phi = random_phi(3)
    target = enumerate_target(lm, phi, [0], 3)
    twist = LinearTwist(lm.hidden_size, lm.vocab_size, dtype=torch.float64)
    kl0 = target.kl_sigma_q(twist)  # zero-initialised: the bootstrap proposal
    train_twist(lm, twist, phi, [0], steps=30, n_particles=32, max_new_tokens=3, lr=0.01,
                seed=0, progress=False)
    kl1 = target.kl_sigma_q(twist)
    assert kl1 < 0.6 * kl0, (kl0, kl1)  # measured: 0.85 -> 0.30


@pytest.mark.parametrize("arch,targets", [("llama", ("q_proj", "v_proj")),
                                          ("gpt_neox", ("query_key_value",))])
def test_lora_finetune_uses_peft_defaults(saved, tmp_path, arch, targets):
    from rankkit_ext.tsmc import finetune_lm

    if arch == "llama":
        base = load_base_lm(saved["llama5"])
    else:  # GPT-NeoX names its fused attention projection query_key_value
        tiny_causal_lm(arch, vocab_size=5, hidden_size=16, n_layer=1, n_head=2, bos_token_id=0,
                       eos_token_id=4, pad_token_id=4).save_pretrained(tmp_path / arch)
        base = load_base_lm(tmp_path / arch)
    student = finetune_lm(base, [0], [[1, 2, 3], [2, 4]], steps=3, lr=1e-2, progress=False)
    assert type(student) is type(base)
    ref = dict(base.named_parameters())
    changed = [n for n, p in student.named_parameters() if not torch.equal(p, ref[n])]
    assert changed and all(any(t in n for t in targets) for n in changed)
