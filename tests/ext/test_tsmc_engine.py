"""The one SMC engine's shared pieces: the categorical sampler against a slow reference, the
Hugging Face adapter on left-padded prompt batches (GPT-2 and Llama, KV cache and
recompute, cache reorder with and without the cache's own support), and resampling within
prompt groups."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rankkit_ext.tsmc.adapters import HFCausalLM, _HFState  # noqa: E402
from rankkit_ext.tsmc.engine import smc  # noqa: E402
from rankkit_ext.tsmc.proposals import RewardGuidedProposal  # noqa: E402
from rankkit_ext.tsmc.resampling import categorical  # noqa: E402

from ._helpers import random_phi, tiny_gpt2  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EPS = np.finfo(np.float64).eps
V = 6


@given(st.lists(st.lists(st.one_of(st.floats(-30, 30), st.just(-math.inf)), min_size=V,
                         max_size=V), min_size=1, max_size=5), st.integers(0, 2**31 - 1))
def test_categorical_is_the_inverse_cdf_of_softmax(rows, seed):
    x = torch.tensor(rows, dtype=torch.float64)
    idx, log_norm = categorical(x, torch.Generator().manual_seed(seed), return_log_norm=True)
    u = torch.rand(len(rows), generator=torch.Generator().manual_seed(seed),
                   dtype=torch.float64).numpy()
    for b, row in enumerate(rows):  # slow reference: numpy softmax, first cdf entry > u
        r = np.asarray(row)
        if np.all(np.isneginf(r)):
            p, lse = np.full(V, 1.0 / V), -math.inf
        else:
            m = r.max()
            lse = m + math.log(np.exp(r - m).sum())
            p = np.exp(r - lse)
        cdf = np.cumsum(p)
        cdf[-1] = 1.0
        assert int(idx[b]) == min(int(np.searchsorted(cdf, u[b], side="right")), V - 1)
        assert float(log_norm[b]) == pytest.approx(lse, abs=1e3 * EPS * max(1, abs(lse)))
        assert np.isneginf(r).all() or not np.isneginf(r[int(idx[b])])  # never a zero


def test_categorical_checks_unless_told_not_to():
    with pytest.raises(ValueError, match="NaN"):
        categorical(torch.tensor([0.0, math.nan]))
    assert int(categorical(torch.tensor([0.0, -math.inf]), check=False)) == 0


def _llama(dtype=torch.float64):
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=V - 1, pad_token_id=V - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


MODELS = {"gpt2": lambda: tiny_gpt2(V=V, eos=V - 1), "llama": _llama}
PROMPTS = [[0, 1, 2, 3], [0], [0, 4, 2]]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_batch_equals_each_prompt_alone(arch, use_cache):
    lm = HFCausalLM(MODELS[arch](), use_cache=use_cache)
    n, steps = 2, 3
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, V, (len(PROMPTS) * n, steps), generator=g)
    # one reorder mid-way, within each group (rows g*n .. g*n + n - 1)
    anc = torch.tensor([1, 1, 2, 3, 5, 4])
    logp, h, state = lm.start(PROMPTS, n)
    batch = [(logp, h)]
    for t in range(steps):
        if t == 1:
            state = lm.reorder(state, anc)
            toks = toks[anc]
            batch = [(a[anc], b[anc]) for a, b in batch]
        logp, h, state = lm.advance(state, toks[:, t])
        batch.append((logp, h))
    tol = 1e3 * EPS
    for i, p in enumerate(PROMPTS):
        for j in range(n):
            r = i * n + j
            ref_p, ref_h, st1 = lm.start(p, 1)  # alone: no padding anywhere
            refs = [(ref_p, ref_h)]
            for t in range(steps):
                ref_p, ref_h, st1 = lm.advance(st1, toks[r:r + 1, t])
                refs.append((ref_p, ref_h))
            for t, ((bp, bh), (rp, rh)) in enumerate(zip(batch, refs, strict=True)):
                assert torch.allclose(bp[r], rp[0], atol=tol, rtol=0), (arch, r, t)
                assert torch.allclose(bh[r].double(), rh[0].double(), atol=tol, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cache_without_reorder_support_is_recomputed(arch):
    lm = HFCausalLM(MODELS[arch]())
    logp, h, state = lm.start(PROMPTS, 2)
    state = lm.advance(state, torch.arange(6) % V)[2]
    anc = torch.tensor([5, 0, 0, 3, 2, 2])
    good = lm.advance(lm.reorder(state, anc), torch.full((6,), 2))[0]

    class Bare:  # a cache object with neither reorder_cache nor batch_select_indices
        pass

    bare = lm.reorder(_HFState(Bare(), state.ids, state.mask), anc)
    assert not isinstance(bare.cache, Bare)
    assert torch.allclose(lm.advance(bare, torch.full((6,), 2))[0], good, atol=1e3 * EPS, rtol=0)


def test_resampling_stays_within_each_prompt_group_and_follows_the_kv_cache():
    # G = 3 left-padded prompts x K = 4 particles, resampled after every step: each final
    # particle's summed log p equals a fresh teacher-forced pass of its own prompt + tokens
    model = tiny_gpt2(V=V, eos=V - 1)
    lm = HFCausalLM(model, output="logits")
    prop = RewardGuidedProposal(None, beta=0.0, top_k=3, mix=0.5)  # q != p_LM: weights vary
    K = 4
    run = smc(lm, prop, PROMPTS, K, 5, potential=random_phi(0), ess_threshold=math.inf,
              generator=torch.Generator().manual_seed(1), eos_token_id=None)
    assert len(run.ancestors) == 4 and all(((a >= 0) & (a < K)).all() for a in run.ancestors)
    assert any((a != torch.arange(K)).any() for a in run.ancestors)  # rows really moved
    for r in range(len(PROMPTS) * K):
        p, y = PROMPTS[r // K], run.tokens[r].tolist()
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([p + y])).logits[0].double(), -1)
        ref = lp[len(p) - 1:-1].gather(1, torch.tensor(y)[:, None]).sum()
        assert float(run.step_log_p[r].sum()) == pytest.approx(float(ref), abs=1e3 * EPS)
    # log Z_hat per group: finite, one per prompt
    assert run.log_Z.shape == (3,) and torch.isfinite(run.log_Z).all()
