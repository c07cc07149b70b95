"""Shared checkpoints cannot run code; damaged ones name the file (issue 12, items 6–7)."""

import pytest

torch = pytest.importorskip("torch")

from rankkit._io import DamagedFileError  # noqa: E402
from rankkit_ext._io import UnsafeCheckpointError, load_checkpoint  # noqa: E402
from rankkit_ext.tsmc.learning import train_twist  # noqa: E402

from ._helpers import make_case, random_twist  # noqa: E402

MARKER = []


def _payload(path):
    """What a crafted pickle would run on load: here it only records that it ran."""
    MARKER.append(path)
    return {}


class Crafted:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_payload, (self.path,))


def test_a_crafted_pickle_is_refused_not_run(tmp_path):
    bad = tmp_path / "twist_ctl.pt"
    torch.save({"twist": Crafted(str(bad)), "step": 3}, bad)
    with pytest.raises(UnsafeCheckpointError, match="twist_ctl.pt' holds objects other than tensors"):
        load_checkpoint(bad, "CTL checkpoint")
    lm, phi = make_case(9, 3, 3, eos=True)
    with pytest.raises(UnsafeCheckpointError, match="refused rather than unpickled"):
        train_twist(lm, random_twist(lm, 0, 0.0), phi, [0], steps=4, n_particles=8, max_new_tokens=3,
                    checkpoint_dir=tmp_path, progress=False)
    assert MARKER == []  # the payload never ran
    # a full unpickler would have run it: the test would catch a return to weights_only=False
    torch.load(bad, weights_only=False)
    assert MARKER == [str(bad)]


@pytest.mark.parametrize("how", ["empty", "truncated"])
def test_a_damaged_checkpoint_names_the_file(tmp_path, how):
    lm, phi = make_case(9, 3, 3, eos=True)
    kw = dict(steps=4, n_particles=8, max_new_tokens=3, progress=False, checkpoint_every=2)
    train_twist(lm, random_twist(lm, 0, 0.0), phi, [0], checkpoint_dir=tmp_path, **kw)
    ck = tmp_path / "twist_ctl.pt"
    data = ck.read_bytes()
    ck.write_bytes(b"" if how == "empty" else data[: len(data) // 2])
    with pytest.raises(DamagedFileError, match="twist_ctl.pt' is damaged.*delete it"):
        train_twist(lm, random_twist(lm, 0, 0.0), phi, [0], checkpoint_dir=tmp_path, **dict(kw, steps=6))
