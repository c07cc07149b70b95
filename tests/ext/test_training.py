"""Training: losses equal their per-prefix definitions, frozen parameters stay bit-identical,
checkpoints resume bitwise, and wrong set-ups fail with a clear message."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rankkit.sequences import RewardDataset  # noqa: E402
from rankkit_ext.models import RADQ, RADV  # noqa: E402
from rankkit_ext.training import evaluate, objective_loss, prefix_weights, train  # noqa: E402

V = 30
TOL = 100 * torch.finfo(torch.float32).eps


def backbone(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2, n_positions=16,
                                  bos_token_id=V - 1, eos_token_id=V - 1, resid_pdrop=dropout,
                                  embd_pdrop=dropout, attn_pdrop=dropout)
    return transformers.GPT2LMHeadModel(cfg)


def dataset(n=12, n_labels=2, seed=0, max_len=6):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, V - 1, rng.integers(1, max_len + 1)).tolist() for _ in range(n)]
    y = rng.random((n, n_labels))
    return RewardDataset(seqs, y, vocab_size=V)


def padded(seqs):
    L = max(len(s) for s in seqs)
    tokens = torch.zeros(len(seqs), L, dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return tokens, mask


@settings(max_examples=30)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=5),
       objective=st.sampled_from(["cumulative", "distill"]))
def test_prefix_weights_sum_to_one_per_utterance(lengths, objective):
    mask = torch.tensor([[1] * n + [0] * (9 - n) for n in lengths])
    w = prefix_weights(mask, objective)
    torch.testing.assert_close(w.sum(1), torch.ones(len(lengths), dtype=torch.float64))
    assert (w[mask == 0] == 0).all()
    if objective == "cumulative":  # λ_t = 2t / (L(L+1)) grows with t
        n = lengths[0]
        ref = torch.tensor([2 * t / (n * (n + 1)) for t in range(1, n + 1)], dtype=torch.float64)
        torch.testing.assert_close(w[0, :n], ref)


@pytest.mark.parametrize("kind", [RADV, RADQ])
def test_cumulative_loss_equals_per_prefix_loop(kind):
    model = kind(backbone(1), n_labels=2).eval()
    ds = dataset(n=3)
    seqs = [s.tolist() for s in ds.sequences]
    tokens, mask = padded(seqs)
    y = torch.tensor(ds.responses, dtype=torch.float32)
    with torch.no_grad():
        batched = objective_loss(model, tokens, mask, y, "cumulative")
        for i, u in enumerate(seqs):
            L = len(u)
            ref = 0.0
            for t in range(1, L + 1):  # prefix u_{1:t} = [u_{<t}, u_t], eq. 4 with λ = 2t/(L(L+1))
                lam = 2 * t / (L * (L + 1))
                for lab in range(2):
                    r = float(model.score_sequences(torch.tensor([u[:t]]), label=lab)[0])
                    ref += lam * (r - float(y[i, lab])) ** 2 / 2
            assert abs(float(batched[i]) - ref) <= TOL * max(1.0, ref)


def test_distill_and_reg_losses_equal_per_prefix_loop():
    teacher = RADV(backbone(2), n_labels=2).eval()
    student = RADQ(backbone(3), n_labels=2).eval()
    seqs = [[1, 2, 3], [4, 5]]
    tokens, mask = padded(seqs)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        target = teacher(tokens, mask)
        got = objective_loss(student, tokens, mask, target, "distill", reg_coef=0.5, generator=gen)
        rand = torch.randint(0, V, tokens.shape, generator=torch.Generator().manual_seed(7))
        h = student.hidden_states(tokens, mask)
        for i, u in enumerate(seqs):
            L, ref = len(u), 0.0
            for t in range(1, L + 1):
                for lab in range(2):
                    r = float(student.score_sequences(torch.tensor([u[:t]]), label=lab)[0])
                    tr = float(teacher.score_sequences(torch.tensor([u[:t]]), label=lab)[0])
                    # Δr̂ of a uniformly drawn token after u_{<t} (eq. 14)
                    d = float(student.delta(h[i, t - 1], rand[i, t - 1])[lab])
                    ref += ((r - tr) ** 2 + 0.5 * d ** 2) / (2 * L)
            assert abs(float(got[i]) - ref) <= TOL * max(1.0, ref)


@pytest.mark.parametrize("kind", [RADV, RADQ])
def test_frozen_embeddings_bit_identical_and_the_rest_trains(kind):
    model = kind(backbone(4), n_labels=2)
    emb = model.backbone.get_input_embeddings().weight.detach().clone()
    out = model.output_embedding_weight().detach().clone()
    before = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    train(model, dataset(), epochs=1, batch_size=6, lr=1e-2, progress=False,
          reg_coef=0.1 if kind is RADQ else 0.0)
    assert torch.equal(model.backbone.get_input_embeddings().weight, emb)
    assert torch.equal(model.output_embedding_weight(), out)
    changed = [k for k, v in model.named_parameters() if v.requires_grad and not torch.equal(v, before[k])]
    assert len(changed) == len(before)  # every trainable parameter received an update


def test_training_reduces_loss_and_evaluates():
    model = RADQ(backbone(5), n_labels=2)
    ds = dataset(n=20, seed=1)
    before = evaluate(model, ds, batch_size=7)
    res = train(model, ds, epochs=15, batch_size=10, lr=3e-3, progress=False, eval_dataset=ds,
                eval_every=10)
    after = evaluate(model, ds, batch_size=7)
    assert res.steps == res.total_steps == 30 and len(res.train_loss) == 30
    assert [s for s, _ in res.eval_loss] == [10, 20, 30]
    assert res.eval_loss[-1][1] == pytest.approx(after, rel=1e-6)
    assert after < 0.7 * before


def test_distillation_does_not_touch_the_teacher():
    teacher = RADV(backbone(6), n_labels=2)
    snap = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = RADQ(backbone(7), n_labels=2)
    ds = dataset(n=10)
    before = evaluate(student, ds, "distill", teacher)
    train(student, ds, "distill", teacher, reg_coef=0.01, epochs=6, batch_size=5, lr=3e-3,
          progress=False)
    assert all(torch.equal(v, snap[k]) for k, v in teacher.state_dict().items())
    assert evaluate(student, ds, "distill", teacher) < before


def test_interrupted_and_resumed_equals_uninterrupted_bitwise(tmp_path):
    ds = dataset(n=14, seed=2)
    kw = dict(epochs=3, batch_size=5, lr=3e-3, reg_coef=0.1, seed=11, progress=False,
              checkpoint_every=2)
    ref_model = RADQ(backbone(8, dropout=0.1), n_labels=2)  # dropout exercises the torch RNG
    ref = train(ref_model, ds, checkpoint_dir=tmp_path / "a", **kw)
    part_model = RADQ(backbone(8, dropout=0.1), n_labels=2)
    first = train(part_model, ds, checkpoint_dir=tmp_path / "b", stop_after_steps=4, **kw)
    assert first.steps == 4
    resumed_model = RADQ(backbone(99, dropout=0.1), n_labels=2)  # weights come from the checkpoint
    torch.manual_seed(12345)  # the caller's RNG must not matter
    res = train(resumed_model, ds, checkpoint_dir=tmp_path / "b", **kw)
    assert res.resumed_from == 4 and res.steps == ref.steps == 9
    assert res.train_loss == ref.train_loss
    for (k, a), (_, b) in zip(ref_model.state_dict().items(), resumed_model.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k


def test_train_leaves_the_global_rng_alone():
    model = RADV(backbone(9, dropout=0.1), n_labels=2)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    train(model, dataset(n=4), batch_size=2, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_gradient_accumulation_matches_full_batch():
    ds = dataset(n=8, seed=3)
    a, b = RADV(backbone(10), n_labels=2), RADV(backbone(10), n_labels=2)
    # eps=1e-3: with eps=1e-12 Adam's first step is lr·sign(g), and gradients that are zero
    # in exact arithmetic (GPT-2's key bias) get a sign from rounding noise
    train(a, ds, epochs=1, batch_size=8, lr=1e-2, eps=1e-3, progress=False)
    res = train(b, ds, epochs=1, batch_size=8, grad_accum_steps=4, lr=1e-2, eps=1e-3,
                progress=False)
    assert res.steps == 1
    for (k, x), (_, y) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5, msg=k)


def test_errors_name_the_problem(tmp_path):
    ds = dataset()
    with pytest.raises(ValueError, match="needs a RADQ"):
        train(RADV(backbone(), n_labels=2), ds, reg_coef=0.1, progress=False)
    with pytest.raises(ValueError, match="needs teacher"):
        train(RADQ(backbone(), n_labels=2), ds, "distill", progress=False)
    with pytest.raises(ValueError, match="n_labels=2"):
        train(RADQ(backbone(), n_labels=1), ds, progress=False)
    with pytest.raises(ValueError, match="objective must be"):
        train(RADQ(backbone(), n_labels=2), ds, "ce", progress=False)
    train(RADQ(backbone(), n_labels=2), ds, batch_size=6, progress=False, checkpoint_dir=tmp_path,
          stop_after_steps=1)
    with pytest.raises(ValueError, match="other settings"):
        train(RADQ(backbone(), n_labels=2), ds, batch_size=4, progress=False, checkpoint_dir=tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")
def test_cuda_amp_training_runs_and_reduces_loss():
    model = RADQ(backbone(5), n_labels=2).to("cuda")
    ds = dataset(n=20, seed=1)
    before = evaluate(model, ds)
    train(model, ds, epochs=10, batch_size=10, lr=3e-3, progress=False, reg_coef=0.01)
    assert evaluate(model, ds) < before


def test_train_is_reproducible_from_a_fresh_process(tmp_path):
    """Issue 12: the same script run twice (fresh processes, no torch.manual_seed) gives the
    same losses: the heads are seeded and train() seeds its own shuffling and dropout."""
    import subprocess
    import sys

    backbone(3, dropout=0.1).save_pretrained(tmp_path / "bb")
    script = f"""
import sys, torch, transformers
from tests.ext.test_training import dataset  # `python -c` from the checkout: it is on sys.path
from rankkit_ext.models import RADQ
from rankkit_ext.training import train
torch.rand(int(sys.argv[1]))  # a different global RNG state in each process
m = RADQ(transformers.GPT2LMHeadModel.from_pretrained({str(tmp_path / 'bb')!r}), n_labels=2)
r = train(m, dataset(), epochs=1, batch_size=6, lr=1e-2, progress=False, seed=5)
print(repr(r.train_loss))
"""
    root = Path(__file__).resolve().parents[2]
    outs = [subprocess.run([sys.executable, "-c", script, str(n)], capture_output=True, text=True,
                           check=True, cwd=root).stdout.strip().splitlines()[-1] for n in (1, 7)]
    assert outs[0] == outs[1] and outs[0].startswith("[")


def test_fit_entries_curve_seeding_and_progress():
    # the full-batch fitter of App. D.1-D.2 runs on the shared loop: the curve has the
    # pre-update loss every eval_every steps and the loss after the last update at `steps`
    from rankkit_ext.training import fit_entries

    prefixes, cols = [[1], [2], [3], [1, 2]], np.array([4, 5, 6, 7])
    vals = np.array([1.0, 0.0, 1.0, 0.5], dtype=np.float32)

    def run():
        return fit_entries(RADQ(backbone(3), n_labels=1), prefixes, cols, vals, steps=12,
                           lr=1e-2, eval_every=5, seed=4)

    a, b = run(), run()
    assert a.steps == [0, 5, 10, 12] and a.mse == b.mse  # seeded: identical
    assert a.mse[-1] < a.mse[0]
    assert a.final_mse == pytest.approx(a.mse[-1], rel=1e-5)  # eval mode, no dropout


def test_convergence_warning_fires_when_under_trained_and_not_when_converged():
    import warnings

    from rankkit_ext import ConvergenceWarning

    ds = dataset(n=20, seed=1)
    # App. E's lr on 20 texts: 2 steps, the loss far above the constant prediction's Var(y)
    with pytest.warns(ConvergenceWarning, match="no better than predicting the mean"):
        train(RADQ(backbone(5), n_labels=2), ds, epochs=1, batch_size=10, lr=1e-5, progress=False)
    # stopped while still falling: 3 epochs at lr 3e-3 (the loss falls > 10 % in the last one)
    with pytest.warns(ConvergenceWarning, match=r"has not converged: it fell \d+\.\d% over the last epoch"):
        train(RADQ(backbone(5), n_labels=2), ds, epochs=3, batch_size=10, lr=3e-3, progress=False)
    with pytest.warns(ConvergenceWarning, match="too few to tell"):
        train(RADQ(backbone(5), n_labels=2), ds, epochs=1, batch_size=20, progress=False)
    # converged: the last two epochs within 10 % of each other and well below Var(y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = train(RADQ(backbone(5), n_labels=2), ds, epochs=15, batch_size=10, lr=3e-3,
                    progress=False)
    last, prev = np.mean(res.train_loss[-2:]), np.mean(res.train_loss[-4:-2])
    assert abs(last - prev) <= 0.1 * prev and last < 0.9 * ds.responses.var(0).mean()
    # tol=None turns the check off; a bad tol is named
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        train(RADQ(backbone(5), n_labels=2), ds, epochs=1, batch_size=10, lr=1e-5, progress=False,
              tol=None)
    with pytest.raises(ValueError, match="tol must be a positive number"):
        train(RADQ(backbone(5), n_labels=2), ds, tol=0, progress=False)


def test_the_default_settings_train_where_app_e_settings_do_not():
    """The defaults (10 epochs, batch 32, lr 1e-3) bring the loss well below the constant
    prediction's on 320 texts; App. E's (1 epoch, batch 100, lr 1e-5) leave it where it started."""
    import warnings

    from rankkit_ext import ConvergenceWarning

    rng = np.random.default_rng(4)  # a learnable label: the share of "positive" tokens (< 10)
    seqs = [rng.integers(0, V - 1, rng.integers(2, 7)).tolist() for _ in range(320)]
    ds = RewardDataset(seqs, [np.mean(np.asarray(s) < 10) for s in seqs], vocab_size=V)
    const = ds.responses.var()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model = RADQ(backbone(6), n_labels=1)
        res = train(model, ds, progress=False)
    assert res.steps == 10 * 10 and evaluate(model, ds) < 0.8 * const
    old = RADQ(backbone(6), n_labels=1)
    with pytest.warns(ConvergenceWarning):
        train(old, ds, epochs=1, batch_size=100, lr=1e-5, progress=False)
    assert evaluate(old, ds) > const
