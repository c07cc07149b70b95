"""Guided decoding (paper 002 eq. 1–2) with tiny RAD-V / RAD-Q models on CPU."""

import copy
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import rankkit_ext.guided as gd  # noqa: E402
from rankkit_ext._tensors import padded  # noqa: E402
from rankkit_ext.lm import tiny_gpt2  # noqa: E402
from rankkit_ext.models import RADQ, RADV  # noqa: E402

V = 20
PAD = BOS = V - 1  # = EOS of tiny_gpt2
F32 = torch.finfo(torch.float32).eps


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _base(seed=0, vocab=V):
    return tiny_gpt2(vocab_size=vocab, n_embd=16, n_layer=2, n_head=2, n_positions=32, seed=seed)


def _rm(kind, seed=1, vocab=V, scale=8.0):
    torch.manual_seed(seed)  # head init; tests may use the global RNG
    bb = _base(seed=seed, vocab=vocab)
    m = (RADV if kind == "radv" else RADQ)(bb)
    with torch.no_grad():  # spread rewards over [0, 1] so guidance visibly matters
        for p in m.parameters():
            if p.requires_grad:
                p.mul_(scale)
    return m.eval()


@pytest.fixture(scope="module", params=["radv", "radq"])
def rm(request):
    return _rm(request.param)


@pytest.fixture(scope="module")
def base():
    return _base()


def _reference_z(base, rm, ids, beta, k, direction):
    """Slow eq. (1): full-sequence reward of [x, v] for every top-k v, via score_sequences.
    ``ids`` is the base's context [BOS] + x; the reward model scores x (it adds its BOS)."""
    with torch.no_grad():
        logits = base(ids).logits[:, -1].double()
    z = torch.full_like(logits, -math.inf)
    for b in range(ids.shape[0]):
        top = torch.argsort(logits[b], descending=True)[:k]
        seqs = torch.cat([ids[b, 1:].expand(k, -1), top[:, None]], 1)
        with torch.no_grad():
            r = rm.score_sequences(seqs, torch.ones_like(seqs)).double().clamp(0, 1)
        r = r if direction == 1 else 1 - r
        z[b, top] = logits[b, top] + beta * r
    return logits, z


@pytest.mark.parametrize("direction", [1, -1])
def test_processor_equals_hand_computed(base, rm, direction):
    ids = torch.tensor([[BOS, 3, 1, 4, 1], [BOS, 5, 9, 2, 6]])
    logits, ref = _reference_z(base, rm, ids, beta=5.0, k=6, direction=direction)
    # the truth: the same networks in float64
    _, ref64 = _reference_z(copy.deepcopy(base).double(), copy.deepcopy(rm).double(), ids,
                            beta=5.0, k=6, direction=direction)
    proc = gd.RewardGuidedLogitsProcessor(rm, beta=5.0, top_k=6, direction=direction)
    z = proc(ids, logits.float().clone())
    fin = torch.isfinite(ref64)
    assert torch.equal(torch.isfinite(z), fin) and torch.equal(torch.isfinite(ref), fin)
    # The processor (KV-cached float32 passes) against the float64 truth, within a few times
    # the float32 error of the slow reference itself, measured here: that error depends on
    # the CPU's float32 kernels (up to ~500 ulps of |z| on an AVX-512 Xeon, with these
    # deliberately large weights), so no fixed multiple of eps bounds it
    floor = (ref[fin] - ref64[fin]).abs().max().item()
    err = (z.double()[fin] - ref64[fin]).abs().max().item()
    assert err <= 4 * floor + 64 * F32 * ref64[fin].abs().max().item(), (err, floor)
    # and the guidance really changed the distribution
    assert (torch.softmax(ref, -1) - torch.softmax(logits, -1)).abs().max() > 1e-3


def test_cached_and_uncached_decoding_identical(base, rm):
    prompts = [[3, 1, 4], [5], [2, 7, 1, 8, 2]]
    kw = dict(beta=8.0, top_k=5, n_samples=3, max_new_tokens=6, generator=11)
    a = gd.guided_generate(base, rm, prompts, use_reward_cache=True, **kw)
    b = gd.guided_generate(base, rm, prompts, use_reward_cache=False, **kw)
    for ra, rb in zip(a.tokens, b.tokens, strict=True):
        for x, y in zip(ra, rb, strict=True):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(a.log_q, b.log_q, atol=1e-4)
    np.testing.assert_allclose(a.final_reward, b.final_reward, atol=1e-5)


def test_processor_cached_and_uncached_logits_identical_in_generate(base):
    rm = _rm("radv")
    ids, mask = padded([[BOS, 3, 1], [BOS, 5, 9, 2, 6]], "left", PAD)
    outs = []
    for use_cache in (True, False):
        proc = gd.RewardGuidedLogitsProcessor(rm, beta=6.0, top_k=4, pad_token_id=PAD,
                                              use_cache=use_cache)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            o = base.generate(ids, attention_mask=mask, do_sample=True, top_k=0,
                              max_new_tokens=5, logits_processor=[proc], pad_token_id=PAD,
                              return_dict_in_generate=True, output_scores=True)
        outs.append(o)
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    for s0, s1 in zip(outs[0].scores, outs[1].scores, strict=True):
        # float32 cached vs full passes reduce over different shapes: a few ulps of r,
        # times beta
        torch.testing.assert_close(s0, s1, rtol=256 * F32, atol=6.0 * 256 * F32)
        assert (torch.isfinite(s0).sum(-1) == 4).all()  # exactly top-k survive


def test_generate_path_equals_own_loop_and_processor_is_stateless(base, rm):
    prompts = [[3, 1], [5, 9, 2, 6], [8]]
    # generate runs on [BOS] + prompt, the base's context in guided_generate too
    ids, mask = padded([[BOS] + p for p in prompts], "left", PAD)
    proc = gd.RewardGuidedLogitsProcessor(rm, beta=6.0, top_k=5, pad_token_id=PAD)
    kw = dict(do_sample=False, max_new_tokens=5, logits_processor=[proc], pad_token_id=PAD)
    out1 = base.generate(ids, attention_mask=mask, **kw)[:, ids.shape[1]:]
    own = gd.guided_generate(base, rm, prompts, beta=6.0, top_k=5, max_new_tokens=5,
                             do_sample=False, eos_token_id=-1)
    np.testing.assert_array_equal(out1.numpy(), np.stack([r[0] for r in own.tokens]))
    # same processor object, another generate on other prompts == a fresh processor
    ids2, mask2 = padded([[BOS, 7, 7, 7]], "left", PAD)
    again = base.generate(ids2, attention_mask=mask2, **kw)
    fresh = gd.RewardGuidedLogitsProcessor(rm, beta=6.0, top_k=5, pad_token_id=PAD)
    ref = base.generate(ids2, attention_mask=mask2, **{**kw, "logits_processor": [fresh]})
    assert torch.equal(again, ref)


def test_left_padded_batch_equals_one_by_one(base, rm):
    prompts = [[3], [5, 9, 2, 6, 1], [2, 7, 1]]
    kw = dict(beta=6.0, top_k=5, max_new_tokens=6, do_sample=False, eos_token_id=-1)
    batch = gd.guided_generate(base, rm, prompts, **kw)
    for i, p in enumerate(prompts):
        one = gd.guided_generate(base, rm, [p], **kw)
        np.testing.assert_array_equal(batch.tokens[i][0], one.tokens[0][0])
        np.testing.assert_allclose(batch.log_q[i], one.log_q[0], atol=1e-4)
        np.testing.assert_allclose(batch.log_p_lm[i], one.log_p_lm[0], atol=1e-4)


def test_seeded_runs_reproducible(base, rm):
    kw = dict(beta=4.0, top_k=8, n_samples=4, max_new_tokens=6)
    a = gd.guided_generate(base, rm, [[1, 2, 3]], generator=3, **kw)
    b = gd.guided_generate(base, rm, [[1, 2, 3]], generator=torch.Generator().manual_seed(3), **kw)
    c = gd.guided_generate(base, rm, [[1, 2, 3]], generator=4, **kw)
    same = [np.array_equal(x, y) for x, y in zip(a.tokens[0], b.tokens[0], strict=True)]
    diff = [np.array_equal(x, y) for x, y in zip(a.tokens[0], c.tokens[0], strict=True)]
    assert all(same) and not all(diff)
    assert a.n_tokens > 0 and a.time_per_token > 0


def test_check_compatible_takes_the_pair_or_one_model(base, rm):
    """Issue 25 item 4: check_compatible(base, reward_model) as its docstring says, and the
    one-model form with the base's vocabulary size given directly."""
    gd.check_compatible(base, rm)  # same vocabulary: no error
    gd.check_compatible(rm, vocab_size=V)
    big = _rm("radq", vocab=V + 5)
    with pytest.raises(ValueError, match=rf"tokenizer mismatch: the base model has {V} logits .* "
                                         rf"vocabulary of {V + 5}"):
        gd.check_compatible(base, big)
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        gd.check_compatible(big, vocab_size=V)


def test_tokenizer_mismatch_and_bad_arguments_refused(base):
    big = _rm("radq", vocab=V + 5)
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        gd.guided_generate(base, big, [[1]], beta=1.0)
    proc = gd.RewardGuidedLogitsProcessor(big, beta=1.0, top_k=3)
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        proc(torch.tensor([[1, 2]]), torch.zeros(1, V))

    class Tok:
        def get_vocab(self):
            return {chr(65 + i): i for i in range(V)}

        def __len__(self):
            return V

    rm = _rm("radq")
    rm.tokenizer_fingerprint = "sha256:deadbeef:20"
    with pytest.raises(ValueError, match="fingerprint"):
        gd.RewardGuidedLogitsProcessor(rm, beta=1.0, tokenizer=Tok())
    for bad in (True, 0, 2):
        with pytest.raises(ValueError, match="direction"):
            gd.RewardGuidedLogitsProcessor(rm, beta=1.0, direction=bad)
    with pytest.raises(ValueError, match="mix"):
        gd.guided_generate(base, rm, [[1]], beta=1.0, mix=1.0)


@given(st.lists(st.floats(-5, 5), min_size=2, max_size=12), st.floats(0.05, 1.0))
def test_nucleus_candidates_are_the_smallest_top_set(logits, top_p):
    x = torch.tensor([logits], dtype=torch.float32)
    cand, valid = gd.select_candidates(x, top_k=None, top_p=top_p)
    p = torch.softmax(x.double(), -1)[0].numpy()
    got = cand[0][valid[0]].tolist()
    assert len(set(got)) == len(got) >= 1
    inside, outside = p[got], np.delete(p, got)
    tol = 64 * F32
    assert inside.sum() >= top_p - tol or outside.size == 0  # enough mass
    assert inside.sum() - inside.min() < top_p + tol  # dropping the last token is too little
    assert outside.size == 0 or inside.min() >= outside.max() - tol  # a top set
    kc, kv = gd.select_candidates(x, top_k=1, top_p=top_p)  # top_k caps the nucleus
    assert kc.shape[1] == 1 and int(kc[0, 0]) == int(np.argmax(p)) or p.max() - p[kc[0, 0]] < tol


def _enumerate(base, rm, prompt, T, beta, direction=1):
    """Exact log p_LM(y) + beta * r~(y) over all V^T continuations (the SMC target)."""
    ys = torch.cartesian_prod(*[torch.arange(V)] * T) if T > 1 else torch.arange(V)[:, None]
    full = torch.cat([torch.tensor(prompt).expand(ys.shape[0], -1), ys], 1)
    # the base sees [BOS] + prompt + y; the reward model prompt + y (it prepends its BOS)
    ctx = torch.cat([torch.full((ys.shape[0], 1), BOS), full], 1)
    with torch.no_grad():
        lp = torch.log_softmax(base(ctx).logits.double(), -1)
        tok_lp = lp[:, len(prompt):-1].gather(-1, ys[..., None]).squeeze(-1).sum(-1)
        r = rm.score_sequences(full, torch.ones_like(full)).double().clamp(0, 1)
    r = r if direction == 1 else 1 - r
    return ys, tok_lp, r


def test_smc_weights_exact_and_unbiased_by_enumeration(base):
    rm = _rm("radq", scale=2.0)
    prompt, T, beta = [4, 2], 2, 4.0
    ys, lp, r = _enumerate(base, rm, prompt, T, beta)
    log_sigma = lp + beta * r
    sigma = torch.softmax(log_sigma, 0)
    exact = float((sigma * r).sum())
    out = gd.guided_generate(base, rm, [prompt], beta=beta, top_k=3, n_samples=3000,
                             max_new_tokens=T, generator=5, mix=0.2, weights=True,
                             eos_token_id=-1, batch_size=3000)
    y = np.stack(out.tokens[0])
    idx = torch.tensor(y[:, 0] * V + y[:, 1])
    # every weight equals log p_LM(y) + beta r(y) - log q(y) (q from the sampler itself)
    # float32 models: a few hundred ulps on logits of size O(10)
    tol = 1024 * F32
    np.testing.assert_allclose(out.log_p_lm[0], lp[idx].numpy(), atol=tol)
    np.testing.assert_allclose(out.final_reward[0], r[idx].numpy(), atol=tol)
    np.testing.assert_allclose(out.log_weights[0],
                               log_sigma[idx].numpy() - out.log_q[0], atol=(2 + beta) * tol)
    assert r.std() > 0.05  # the reward varies, so the target differs from p_LM
    w = np.exp(out.log_weights[0] - out.log_weights[0].max())
    w /= w.sum()
    est = float((w * out.final_reward[0]).sum())
    ess = 1.0 / (w ** 2).sum()
    se = float(np.sqrt(np.sum(w ** 2 * (out.final_reward[0] - est) ** 2))) + 1e-3
    assert abs(est - exact) < 5 * se, (est, exact, se, ess)
    # plain RAD (mix=0) samples only top-k and stays biased w.r.t. the same target
    plain = gd.guided_generate(base, rm, [prompt], beta=beta, top_k=3, n_samples=3000,
                               max_new_tokens=T, generator=5, eos_token_id=-1, batch_size=3000)
    support = {tuple(t) for t in plain.tokens[0]}
    assert len(support) <= 9 < V ** T
    assert sigma.sum() - sum(float(sigma[a * V + b]) for a, b in support) > 0


def test_smc_resampling_keeps_lineages_consistent(base):
    rm = _rm("radq")
    out = gd.guided_generate(base, rm, [[4, 2], [7]], beta=6.0, top_k=4, n_samples=8,
                             max_new_tokens=4, generator=2, mix=0.3, resample_threshold=0.9,
                             eos_token_id=-1)
    assert out.ancestors, "expected at least one resampling event at threshold 0.9"
    # after resampling, log p_LM / log q still belong to each particle's own token path
    for i, p in enumerate([[4, 2], [7]]):
        for j, y in enumerate(out.tokens[i]):
            full = torch.tensor([[BOS] + p + y.tolist()])  # the base sees [BOS] + prompt
            with torch.no_grad():
                lp = torch.log_softmax(base(full).logits.double(), -1)[0]
            ref = lp[len(p):-1].gather(-1, torch.tensor(y)[:, None]).sum()
            assert out.log_p_lm[i, j] == pytest.approx(float(ref), abs=1e-4)


def test_unguided_loop_equals_hf_greedy_and_beta_zero(base, rm):
    prompts = [[3, 1, 4], [5]]
    own = gd.guided_generate(base, None, prompts, beta=0.0, top_k=5, max_new_tokens=5,
                             do_sample=False, eos_token_id=-1)
    ids, mask = padded([[BOS] + p for p in prompts], "left", PAD)
    hf = base.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=5,
                       pad_token_id=PAD)[:, ids.shape[1]:]
    np.testing.assert_array_equal(np.stack([r[0] for r in own.tokens]), hf.numpy())
    # beta = 0 with a reward model samples the same tokens as no reward model
    kw = dict(beta=0.0, top_k=5, n_samples=3, max_new_tokens=5, generator=9, eos_token_id=-1)
    a = gd.guided_generate(base, None, prompts, **kw)
    b = gd.guided_generate(base, rm, prompts, **kw)
    for x, y in zip(a.tokens, b.tokens, strict=True):
        np.testing.assert_array_equal(np.stack(x), np.stack(y))
    np.testing.assert_allclose(a.log_q, b.log_q, atol=1e-6)


_CUDA = pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="torch sees no CUDA device"), id="cuda")


@pytest.mark.parametrize("device", [pytest.param("cpu", id="cpu"), _CUDA])
def test_device_run_matches_cpu_greedy(base, device):
    rm = _rm("radv")
    prompts = [[3, 1], [5, 9, 2]]
    kw = dict(beta=6.0, top_k=5, max_new_tokens=4, do_sample=False, eos_token_id=-1)
    ref = gd.guided_generate(base, rm, prompts, **kw)
    b2, rm2 = copy.deepcopy(base).to(device), copy.deepcopy(rm).to(device)
    out = gd.guided_generate(b2, rm2, prompts, **kw)
    for x, y in zip(ref.tokens, out.tokens, strict=True):
        np.testing.assert_array_equal(x[0], y[0])
    np.testing.assert_allclose(ref.log_q, out.log_q, atol=1e-3)
    sampled = gd.guided_generate(b2, rm2, prompts, beta=6.0, top_k=5, max_new_tokens=4,
                                 n_samples=2, generator=1, mix=0.2, weights=True)
    assert np.isfinite(sampled.log_weights).all()


def test_bad_prompt_tokens_and_vocab_mismatch_are_named(base, rm):
    # issue 12: out-of-vocabulary or negative prompt tokens gave raw torch index errors
    kw = dict(beta=1.0, top_k=3, max_new_tokens=2, progress=False)
    with pytest.raises(ValueError, match=f"prompt 1, position 2: token id 99 is outside .*\\[0, {V}\\)"):
        gd.guided_generate(base, rm, [[1, 2], [3, 4, 99]], **kw)
    with pytest.raises(ValueError, match="prompt 0, position 0: token id -1"):
        gd.guided_generate(base, rm, [[-1, 2]], **kw)
    other = _rm("radq", vocab=V + 3)
    with pytest.raises(ValueError, match=f"base model has {V} logits per step but the reward model "
                                         f"scores a vocabulary of {V + 3}"):
        gd.guided_generate(base, other, [[1, 2]], **kw)
    from rankkit_ext.tsmc.potentials import HardConstraint
    from rankkit_ext.tsmc.sampler import tsmc

    with pytest.raises(ValueError, match=f"prompt, position 1: token id {V} is outside"):
        tsmc(base, None, HardConstraint(lambda s: True), [1, V], 4, 2)


class _PoisonedRM:
    """Wraps a reward model and puts ``value`` at one (row, candidate) at one step."""

    def __init__(self, inner, value, row, cand, at_step):
        self.inner, self.value, self.row, self.cand, self.at = inner, value, row, cand, at_step
        self.vocab_size, self.calls = inner.vocab_size, 0

    def eval(self):
        return self

    def score_candidates(self, input_ids, attention_mask, candidates, **kw):
        r, st = self.inner.score_candidates(input_ids, attention_mask, candidates, **kw)
        if self.calls == self.at:
            r = r.clone()
            r[self.row, self.cand] = self.value
        self.calls += 1
        return r, st


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("do_sample", [True, False])
def test_bad_reward_is_an_error_naming_step_prompt_and_sample(base, value, do_sample):
    # issue 12: a NaN / +inf reward gave log_q = nan silently (greedy) or a message blaming
    # "the potential or twist" (sampling)
    rm = _PoisonedRM(_rm("radq"), value, row=5, cand=1, at_step=2)
    with pytest.raises(ValueError, match=rf"reward model score is {value} at step 2, prompt 1, "
                                         r"sample 2 \(row 5\), candidate 1: .*check the reward"):
        gd.guided_generate(base, rm, [[1, 2], [3]], beta=2.0, top_k=4, n_samples=3,
                           max_new_tokens=4, do_sample=do_sample, weights=True)


def test_bad_base_logits_are_named(base):
    class NaNBase(torch.nn.Module):  # the base, with a NaN logit for row 1 after step 0
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config, self.calls = inner, inner.config, 0

        def forward(self, input_ids=None, **kw):
            o = self.inner(input_ids=input_ids, **kw)
            if self.calls == 1:
                o.logits[1, -1, 7] = math.nan
            self.calls += 1
            return o

    with pytest.raises(ValueError, match=r"base model logit is nan at step 1, prompt 0, sample 1 "
                                         r"\(row 1\), token 7"):
        gd.guided_generate(NaNBase(base), _rm("radq"), [[1, 2]], beta=1.0, top_k=4,
                           n_samples=2, max_new_tokens=3)


def test_numeric_options_are_validated_up_front(base):
    rm = _rm("radq")
    for kw, name in ((dict(beta=math.inf), "beta"), (dict(beta=math.nan), "beta"),
                     (dict(beta=1.0, mix=math.nan), "mix"), (dict(beta=1.0, mix=-0.1), "mix"),
                     (dict(beta=1.0, resample_threshold=1.5), "resample_threshold"),
                     (dict(beta=1.0, resample_threshold=math.nan), "resample_threshold"),
                     (dict(beta=1.0, top_p=math.nan), "top_p")):
        with pytest.raises(ValueError, match=name):
            gd.guided_generate(base, rm, [[1]], **kw)
    for beta in (math.inf, -math.inf, math.nan, "strong"):
        with pytest.raises(ValueError, match="beta must be"):
            gd.RewardGuidedLogitsProcessor(rm, beta=beta)


def test_logits_processor_refuses_a_bad_reward_before_generate_sees_it(base):
    # issue 12: the processor passed NaN on and generate crashed inside torch.multinomial
    rm = _PoisonedRM(_rm("radq"), math.nan, row=0, cand=0, at_step=1)
    proc = gd.RewardGuidedLogitsProcessor(rm, beta=1.0, top_k=4)
    ids = torch.tensor([[BOS, 1, 2]])
    with pytest.raises(ValueError, match=r"reward model score is nan at prefix length 4, "
                                         r"row 0, candidate 0"):
        base.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                      logits_processor=[proc], max_new_tokens=4, pad_token_id=PAD)


def test_processor_refuses_generate_input_without_bos(base):
    """Issue 25 item 5: ``generate`` runs on the ids it is given, so a prompt tokenized
    without BOS would silently condition the base LM off the package's convention; the
    processor names the row, the token and the BOS id instead, and the same input with BOS
    generates."""
    rm = _rm("radq")
    assert rm.bos_token_id == BOS
    kw = dict(do_sample=False, max_new_tokens=2, pad_token_id=PAD)
    # pad == BOS (GPT-2's habit): a row is short of BOS when its first column is not that id
    ids, mask = padded([[BOS, 3, 1], [5, 9, 2, 6]], "left", PAD)
    proc = gd.RewardGuidedLogitsProcessor(rm, beta=2.0, top_k=4, pad_token_id=PAD)
    with pytest.raises(gd.MissingBOSError, match=rf"row 1 starts with token id 5, not the BOS "
                                                 rf"id {BOS}.*with_bos") as err:
        base.generate(ids, attention_mask=mask, logits_processor=[proc], **kw)
    assert isinstance(err.value, ValueError)
    ok, ok_mask = padded([[BOS, 3, 1], [BOS, 5, 9, 2, 6]], "left", PAD)
    out = base.generate(ok, attention_mask=ok_mask, logits_processor=[proc], **kw)
    assert out.shape == (2, ok.shape[1] + 2)
    # pad differs from BOS: the first real token after the padding must be BOS
    proc0 = gd.RewardGuidedLogitsProcessor(rm, beta=2.0, top_k=4, pad_token_id=0)
    with pytest.raises(gd.MissingBOSError, match="row 0 starts with token id 3"):
        proc0(torch.tensor([[0, 0, 3, 1], [BOS, 5, 9, 2]]), torch.zeros(2, V))
    z = proc0(torch.tensor([[0, BOS, 3, 1], [BOS, 5, 9, 2]]), torch.zeros(2, V))
    assert torch.isfinite(z).sum(-1).tolist() == [4, 4]
    # no pad id: column 0 is the first real token; a base BOS other than the reward model's
    with pytest.raises(gd.MissingBOSError, match="not the BOS id 7"):
        gd.RewardGuidedLogitsProcessor(rm, beta=2.0, top_k=4, bos_token_id=7)(
            torch.tensor([[BOS, 1]]), torch.zeros(1, V))
    # the documented opt-out conditions the base without BOS on purpose
    free = gd.RewardGuidedLogitsProcessor(rm, beta=2.0, top_k=4, check_bos=False)
    assert torch.isfinite(free(torch.tensor([[3, 1]]), torch.zeros(1, V))).sum() == 4
