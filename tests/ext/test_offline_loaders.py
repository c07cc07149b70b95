"""Model loaders fail fast without a network (issue 12, item 11): ``load_base_lm``,
``RADQ.from_backbone`` / ``RADV.from_backbone`` raise HubUnreachableError within seconds
(instead of ~50 s of retries), naming the model id and the fix, and local folders still load.

The hub is made unreachable with ``HF_HUB_OFFLINE=1`` or a refused socket connect, so the
tests behave the same on a machine that has a network.
"""

import socket
import time

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rankkit import _hub  # noqa: E402
from rankkit._hub import HubUnreachableError  # noqa: E402
from rankkit_ext.lm import load_base_lm  # noqa: E402
from rankkit_ext.models import RADQ, RADV  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cached(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


@pytest.fixture
def no_network(monkeypatch):
    """Offline variables unset and every TCP connect refused (as on a machine without DNS)."""
    for var in _hub._OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)

    def refused(*a, **k):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refused)


LOADERS = {
    "load_base_lm": load_base_lm,
    "RADQ.from_backbone": RADQ.from_backbone,
    "RADV.from_backbone": RADV.from_backbone,
}


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "no_network"])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_hub_id_fails_fast_with_the_id_and_the_fix(loader, how, request, monkeypatch):
    if _cached("gpt2") or _cached("openai-community/gpt2"):
        pytest.skip("gpt2 is in this machine's hub cache, so it loads offline")
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        request.getfixturevalue("no_network")
    t0 = time.perf_counter()
    with pytest.raises(HubUnreachableError) as ei:
        LOADERS[loader]("gpt2")
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0, f"{loader} took {elapsed:.1f} s to fail"
    msg = str(ei.value)
    assert "'gpt2'" in msg
    assert ("HF_HUB_OFFLINE is set" if how == "HF_HUB_OFFLINE" else "unreachable") in msg
    assert "local directory" in msg and "save_pretrained" in msg


def _tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=32, bos_token_id=1, eos_token_id=2,
                                   pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "no_network"])
def test_local_folder_still_loads_offline(tmp_path, how, request, monkeypatch):
    src = _tiny_llama()
    src.save_pretrained(tmp_path / "llama")
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        request.getfixturevalue("no_network")
    t0 = time.perf_counter()
    base = load_base_lm(tmp_path / "llama")
    rq = RADQ.from_backbone(str(tmp_path / "llama"))
    assert time.perf_counter() - t0 < 5.0
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        torch.testing.assert_close(base(ids).logits, src(ids).logits)
    assert type(rq.backbone).__name__ == "LlamaForCausalLM" and rq.hidden_size == 16
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_base_lm(str(tmp_path / "missing"))


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "no_network"])
def test_a_cached_hub_id_loads_offline(tmp_path, how, request, monkeypatch):
    # a hub cache holding "rankkit-tests/tiny" (the layout huggingface_hub writes): without a
    # network the loaders read it instead of failing
    import huggingface_hub.constants as hc

    repo = tmp_path / "hub" / "models--rankkit-tests--tiny"
    src = _tiny_llama()
    src.save_pretrained(repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        request.getfixturevalue("no_network")
    t0 = time.perf_counter()
    base = load_base_lm("rankkit-tests/tiny")
    rv = RADV.from_backbone("rankkit-tests/tiny")
    assert time.perf_counter() - t0 < 5.0
    ids = torch.tensor([[1, 5, 7]])
    with torch.no_grad():
        torch.testing.assert_close(base(ids).logits, src(ids).logits)
    assert rv.hidden_size == 16
    with pytest.raises(HubUnreachableError, match="rankkit-tests/other"):
        load_base_lm("rankkit-tests/other")  # same cache, another id: not there
