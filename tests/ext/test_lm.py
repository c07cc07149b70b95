"""Tiny base LMs: construction, training, checkpoint/resume, loading."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rankkit_ext.lm as lm  # noqa: E402
from rankkit.sequences import TokenSequences  # noqa: E402

SMALL = dict(vocab_size=24, n_embd=16, n_layer=1, n_head=2, n_positions=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n=24, seed=0):
    # a learnable language: each sequence counts up from a random start, modulo 20
    rng = np.random.default_rng(seed)
    return TokenSequences.from_lists([(s + np.arange(rng.integers(3, 8))) % 20
                                      for s in rng.integers(0, 20, n)])


def test_tiny_gpt2_seeded_and_no_global_rng_leak():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = lm.tiny_gpt2(**SMALL, seed=3)
    after = torch.rand(1)
    assert torch.equal(before, after)  # the caller's RNG stream is untouched
    b = lm.tiny_gpt2(**SMALL, seed=3)
    c = lm.tiny_gpt2(**SMALL, seed=4)
    wa, wb, wc = (m.transformer.wte.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.config.bos_token_id == 23
    with pytest.raises(ValueError, match="divisible"):
        lm.tiny_gpt2(**{**SMALL, "n_head": 3})


def test_train_lm_learns():
    m = lm.tiny_gpt2(**SMALL, seed=0)
    r = lm.train_lm(m, _data(), epochs=12, batch_size=8, lr=1e-2, progress=False)
    assert r.steps == 12 * 3 and len(r.losses) == r.steps
    assert np.mean(r.losses[-3:]) < 0.6 * np.mean(r.losses[:3])


def test_train_lm_resume_equals_uninterrupted(tmp_path, monkeypatch):
    kw = dict(epochs=2, batch_size=8, lr=5e-3, seed=7, progress=False)
    ref = lm.tiny_gpt2(**SMALL, seed=0)
    r_ref = lm.train_lm(ref, _data(), **kw)

    import rankkit_ext._loop as loop_mod

    real = loop_mod.save_checkpoint

    def crash_after_first_save(obj, path):
        real(obj, path)
        raise KeyboardInterrupt  # simulate a kill right after the step-2 checkpoint

    monkeypatch.setattr(loop_mod, "save_checkpoint", crash_after_first_save)
    m = lm.tiny_gpt2(**SMALL, seed=0)
    with pytest.raises(KeyboardInterrupt):
        lm.train_lm(m, _data(), checkpoint_dir=tmp_path, checkpoint_every=2, **kw)
    monkeypatch.setattr(loop_mod, "save_checkpoint", real)
    m2 = lm.tiny_gpt2(**SMALL, seed=0)
    r = lm.train_lm(m2, _data(), checkpoint_dir=tmp_path, checkpoint_every=2, **kw)
    assert r.resumed_from_step == 2 and r.steps == r_ref.steps
    np.testing.assert_allclose(r.losses, r_ref.losses, rtol=1e-5)
    for (n, p), q in zip(ref.named_parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=f"parameter {n} differs after resume")
    assert not list(tmp_path.glob("*.tmp"))

    loaded = lm.load_base_lm(tmp_path)  # resolves <dir>/final
    ids = torch.tensor([[23, 1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, m2(ids).logits)
    with pytest.raises(ValueError, match=r"other settings \(checkpoint, now\): \{'total': \(6, 9\)"):
        lm.train_lm(lm.tiny_gpt2(**SMALL), _data(), checkpoint_dir=tmp_path, epochs=3,
                    batch_size=8, progress=False)


def test_train_lm_rejects_out_of_vocab_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        lm.train_lm(lm.tiny_gpt2(**SMALL), TokenSequences.from_lists([[1, 30]]), progress=False)
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        lm.load_base_lm(str(tmp_path / "nope"))
