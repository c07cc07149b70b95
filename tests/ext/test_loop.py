"""The one optimiser-loop skeleton (rankkit_ext._loop.OptimLoop): seeding, checkpoints,
resume and refusals are the same for every training function that runs on it."""

import pytest

torch = pytest.importorskip("torch")

from rankkit._io import DamagedFileError  # noqa: E402
from rankkit_ext._io import load_checkpoint, save_checkpoint  # noqa: E402
from rankkit_ext._loop import OptimLoop  # noqa: E402


def _run(path, total, seed=0, stop_after=None, every=2, **kw):
    """A noisy toy objective: the parameter, the optimiser and both RNGs all matter."""
    w = torch.nn.Linear(3, 1)
    with torch.no_grad():
        w.weight.fill_(0.5)
        w.bias.zero_()
    opt = torch.optim.SGD(w.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(seed + 1)
    loop = OptimLoop("toy checkpoint", path, total=total, seed=seed, state={"w": w, "opt": opt},
                     generator=g, settings={"seed": seed}, every=every, stop_after=stop_after, **kw)
    with loop:
        for _ in loop:
            x = torch.randn(4, 3, generator=g)
            drop = torch.nn.functional.dropout(x, 0.5, training=True)  # global (forked) RNG
            loss = (w(drop) - 1).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            loop.done(float(loss.detach()))  # as the package's loops do
        loop.save()
    return w, loop


def test_interrupted_then_resumed_equals_uninterrupted_bitwise(tmp_path):
    ref, ref_loop = _run(None, 7)
    _run(tmp_path / "a.pt", 7, stop_after=3)
    w, loop = _run(tmp_path / "a.pt", 7)
    assert loop.resumed_from == 3 and loop.step == 7
    assert loop.history["loss"] == ref_loop.history["loss"]
    assert torch.equal(w.weight, ref.weight) and torch.equal(w.bias, ref.bias)


def test_the_callers_global_rng_is_left_alone_and_the_seed_decides():
    def draws(seed):
        out = []
        with OptimLoop("toy", None, total=3, seed=seed, state={}) as loop:
            for _ in loop:
                out.append(float(torch.rand(())))  # e.g. dropout
                loop.done(0.0)
        return out

    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = draws(0)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)  # whatever the caller's state, the seed alone fixes the draws
    assert draws(0) == a != draws(1)


def test_refusals_name_the_problem(tmp_path):
    path = tmp_path / "a.pt"
    _run(path, 4)
    with pytest.raises(ValueError, match=r"other settings \(checkpoint, now\): \{'seed': \(0, 5\)\}"):
        _run(path, 4, seed=5)
    ck = load_checkpoint(path, "toy")
    save_checkpoint({**ck, "step": -5}, path)  # an impossible iteration count
    with pytest.raises(DamagedFileError, match="holds step -5, impossible for a run of 4 steps"):
        _run(path, 4)
    save_checkpoint({**ck, "step": 9}, path)  # past the end of a fixed schedule
    with pytest.raises(DamagedFileError, match="holds step 9"):
        _run(path, 4)
    _, loop = _run(path, 4, extendable=True)  # a run that may grow: nothing left to do
    assert loop.step == 9
    save_checkpoint({"model": {}}, path)  # an older layout
    with pytest.raises(DamagedFileError, match="not a checkpoint of this version"):
        _run(path, 4)
    _, fresh = _run(path, 4, resume=False)  # resume=False starts over
    assert fresh.resumed_from == 0 and fresh.step == 4
