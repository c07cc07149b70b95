"""CopyTwist: a twist head on a separate trainable copy of the base LM (issue 6), checked
against teacher forcing, the bootstrap sampler and exact enumeration on a tiny GPT-2."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import rankkit_ext.tsmc.sampler as sampler_mod  # noqa: E402
from rankkit_ext.tsmc.adapters import HFCausalLM  # noqa: E402
from rankkit_ext.tsmc.exact import enumerate_target  # noqa: E402
from rankkit_ext.tsmc.learning import ctl_loss, train_twist  # noqa: E402
from rankkit_ext.tsmc.sampler import bootstrap_smc, score_sequences, teacher_force, tsmc  # noqa: E402
from rankkit_ext.tsmc.twists import CopyTwist  # noqa: E402

from ._helpers import random_phi, tiny_gpt2, train_straight_and_resumed  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = [0, 1]
EPS32 = float(np.finfo(np.float32).eps)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="torch sees no CUDA device"), id="cuda")]


def _perturb_head(twist, scale, seed=1):
    """Random (non-zero) head weights from an explicit generator."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in twist.head.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return twist


def _forced_ancestors():
    """Ancestors that alternate between a non-sorted permutation and a many-to-one map, so the
    copy's KV-cache rows must follow the base's exactly."""
    calls = []

    def anc(log_w, method, generator):
        K = log_w.shape[0]
        calls.append(K)
        idx = torch.arange(K, device=log_w.device)
        return idx.flip(0).roll(1) if len(calls) % 2 else idx // 2 * 2

    return anc, calls


def _exact_sum_kl(lm, twist, target, prompt):
    r"""Differentiable :math:`\sum_t D_{KL}(\sigma(s_{1:t})\,\|\,\pi_t(s_{1:t}))` for a target
    without EOS (every sequence has length T), log ψ teacher-forced through the twist protocol.
    The slow obvious reference for a twist that has no table (exact.exact_ctl_loss needs one)."""
    seqs = torch.tensor(target.sequences)
    N, T = seqs.shape
    logp, _, lpsi = teacher_force(lm, prompt, seqs, twist=twist)
    lp_tok = logp.gather(2, seqs[..., None]).squeeze(2)  # (N, T)
    lpsi_tok = lpsi.to(torch.float64).gather(2, seqs[..., None]).squeeze(2)
    log_sigma = target.log_sigma
    total = torch.zeros((), dtype=torch.float64)
    for t in range(1, T + 1):
        groups: dict[tuple, list[int]] = {}
        for n in range(N):
            groups.setdefault(tuple(seqs[n, :t].tolist()), []).append(n)
        first = torch.tensor([g[0] for g in groups.values()])
        log_sig_t = torch.stack([torch.logsumexp(log_sigma[g], 0) for g in groups.values()])
        log_pi_t = torch.log_softmax(lp_tok[first, :t].sum(1) + lpsi_tok[first, t - 1], 0)
        total = total + (log_sig_t.exp() * (log_sig_t - log_pi_t)).sum()
    return total


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("eos", [None, 4], ids=["no-eos", "eos"])
def test_kv_cache_log_psi_equals_teacher_forced_after_forced_resampling(head, eos, device,
                                                                         monkeypatch):
    model = tiny_gpt2(V=5, eos=4, dtype=torch.float32).to(device)
    twist = _perturb_head(CopyTwist(model, head=head, width=8), 0.2)
    lm = HFCausalLM(model, eos_token_id=eos)
    anc, calls = _forced_ancestors()
    monkeypatch.setattr(sampler_mod, "_resample", anc)
    r = tsmc(lm, twist, random_phi(0), PROMPT, 8, 6, ess_threshold=1.0,
             generator=torch.Generator(device=device).manual_seed(0))
    assert len(calls) == len(r.resampled_at) >= 2  # the forced ancestors were used
    with torch.no_grad():
        logp, _, lpsi = teacher_force(lm, PROMPT, r.tokens, r.lengths, twist=twist)
    lpsi = lpsi.to(torch.float64)
    n = r.tokens.shape[1]
    alive = torch.arange(n, device=device)[None] < r.lengths[:, None]
    chosen = lpsi.gather(2, r.tokens[..., None]).squeeze(2)
    tol = 64 * EPS32 * max(1.0, float(chosen.abs().max()))
    assert float(torch.where(alive, chosen - r.step_log_psi, 0.0).abs().max()) <= tol
    # the whole next-token vector enters log Z_t(s_<t) = logsumexp(log p + log psi)
    prev = torch.cat([torch.zeros_like(chosen[:, :1]), chosen[:, :-1]], 1)
    log_pi = torch.logsumexp(logp + lpsi, -1) - prev
    lz_tol = 64 * EPS32 * max(1.0, float(log_pi.abs().max()))
    # the final step's increment carries phi instead of Z_T / psi: compare the others
    body = alive & (torch.arange(n, device=device)[None] < (r.lengths[:, None] - 1))
    assert float(torch.where(body, log_pi - r.step_log_pi, 0.0).abs().max()) <= lz_tol


def test_zero_head_gives_the_bootstrap_proposal():
    model = tiny_gpt2(V=5, eos=4, dtype=torch.float32)
    phi = random_phi(4)
    for head in ("linear", "mlp"):
        a = tsmc(model, CopyTwist(model, head=head, width=8), phi, PROMPT, 16, 5,
                 generator=torch.Generator().manual_seed(3))
        b = bootstrap_smc(model, phi, PROMPT, 16, 5, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths)
        assert torch.equal(a.weights, b.weights) and a.log_Z == b.log_Z
        assert a.resampled_at == b.resampled_at


@pytest.mark.parametrize("device", DEVICES)
def test_ctl_on_copy_twist_trains_copy_on_device(device):
    model = tiny_gpt2(V=5, eos=4, dtype=torch.float32).to(device)
    twist = _perturb_head(CopyTwist(model, head="mlp", width=8), 0.1)
    loss = ctl_loss(model, twist, random_phi(2), PROMPT, 16, 4,
                    torch.Generator(device=device).manual_seed(0), ess_threshold=1.0)
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all())
               for p in twist.parameters())
    assert any(float(p.grad.abs().max()) > 0 for p in twist.body.parameters())
    assert all(p.grad is None for p in model.parameters())


@pytest.fixture(scope="module")
def enumerable():
    """Tiny float64 GPT-2 over 3 tokens, no EOS, horizon 3: 27 enumerable sequences."""
    model = tiny_gpt2(V=3, eos=2, dtype=torch.float64)
    lm = HFCausalLM(model, eos_token_id=None)
    phi = random_phi(5, scale=1.0)
    return model, lm, phi, enumerate_target(lm, phi, [0], 3)


def _kl_sigma_q(lm, twist, target):
    lp, lq = score_sequences(lm, [0], target.sequences, twist)
    s = target.log_sigma.exp()
    return float((s * (target.log_sigma - lq)).sum())


def test_ctl_gradient_reaches_the_copy_and_matches_exact_gradient(enumerable):
    model, lm, phi, target = enumerable
    twist = _perturb_head(CopyTwist(model, head="linear"), 0.1)  # ESS stays > K / 2
    params = [p for p in twist.parameters() if p.requires_grad]
    g_exact = torch.autograd.grad(_exact_sum_kl(lm, twist, target, [0]), params)
    g_exact = torch.cat([g.flatten() for g in g_exact])

    def mean_grad(K, runs):
        acc = torch.zeros_like(g_exact)
        for s in range(runs):
            # resampling every step and the same run's final population as positive phase:
            # log psi reaches the copy through every epoch's teacher-forced pass and through
            # the final particles' ancestor rows
            loss = ctl_loss(lm, twist, phi, [0], K, 3, torch.Generator().manual_seed(s),
                            ess_threshold=1.0, positive="same")
            acc += torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
        return acc / runs

    def rel(g):
        return float((g - g_exact).norm() / g_exact.norm())

    small, big = rel(mean_grad(4, 8)), rel(mean_grad(1024, 8))
    assert big < 0.1 and big < small / 2, (small, big)
    n_body = sum(p.numel() for p in twist.body.parameters())
    assert float(g_exact[:n_body].norm()) > 1e-3  # the copy's body gets a real gradient


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_train_twist_on_copy_moves_copy_not_base(enumerable, lora):
    model, lm, phi, target = enumerable
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = None
    if lora:
        peft = pytest.importorskip("peft")
        cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"],
                              fan_in_fan_out=True, lora_dropout=0.0)
    twist = CopyTwist(model, head="mlp", width=16, lora=cfg)
    body0 = {k: v.clone() for k, v in twist.body.state_dict().items()}
    with torch.no_grad():
        ctl0 = float(_exact_sum_kl(lm, twist, target, [0]))
    kl0 = _kl_sigma_q(lm, twist, target)
    train_twist(lm, twist, phi, [0], steps=30, n_particles=128, max_new_tokens=3, lr=0.02,
                seed=0, progress=False)
    with torch.no_grad():
        ctl1 = float(_exact_sum_kl(lm, twist, target, [0]))
    kl1 = _kl_sigma_q(lm, twist, target)
    assert ctl1 < 0.7 * ctl0 and kl1 < kl0, (ctl0, ctl1, kl0, kl1)
    body1 = twist.body.state_dict()
    moved = [k for k in body0 if not torch.equal(body0[k], body1[k])]
    assert moved, "CTL did not update the copy's body"
    if lora:  # only the adapters move; the copied weights stay those of the base
        assert all("lora_" in k for k in moved), moved
    # the base model is bit-identical and never received a gradient
    for k, v in model.state_dict().items():
        assert torch.equal(v, base_before[k]), k
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_copy_twist_checkpoint_resume_and_state_dict_round_trip(enumerable, lora, tmp_path):
    model, lm, phi, target = enumerable
    cfg = None
    if lora:
        peft = pytest.importorskip("peft")
        cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True,
                              lora_dropout=0.0)

    def fresh():
        return CopyTwist(model, head="linear", lora=cfg)

    kw = dict(steps=6, n_particles=16, max_new_tokens=3, lr=0.05, seed=1, progress=False)
    straight, resumed, res = train_straight_and_resumed(lm, fresh, phi, kw, tmp_path, 3)
    assert res.steps_done == 6 and len(res.losses) == 6
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k
    # state_dict round trip into a fresh copy reproduces log psi exactly
    clone = fresh()
    clone.load_state_dict(straight.state_dict())
    seqs = torch.tensor(target.sequences)
    with torch.no_grad():
        a = straight.sequence_log_psi([0], seqs)
        b = clone.sequence_log_psi([0], seqs)
    assert torch.equal(a, b) and float(a.abs().max()) > 0


def test_copy_twist_errors_name_the_problem():
    model = tiny_gpt2(V=3, eos=2)
    with pytest.raises(ValueError, match="head must be"):
        CopyTwist(model, head="conv")
    with pytest.raises(TypeError, match="Hugging Face causal LM"):
        CopyTwist(object())
    with pytest.raises(TypeError, match="own copy"):
        CopyTwist(model).log_psi(torch.zeros(1, 16))
