"""rankkit._hub: loaders of hub ids fail fast without a network (issue 12, item 11).

Without a network ``transformers`` / ``datasets`` retry every hub request for 25-50 s. These
tests never touch the network: the hub is made unreachable with ``HF_HUB_OFFLINE=1`` or by
replacing the probe's socket connect, so they behave the same on a machine that is online.
"""

import socket
import sys
import threading
import time

import pytest

from rankkit import _hub
from rankkit._hub import HubUnreachableError, from_hub, hub_offline_mode, hub_reachable

# a hub id no one can have cached (so the tests cannot pass by loading a real copy)
MISSING = "rankkit-tests/no-such-repo-4f1c"


@pytest.fixture
def online_env(monkeypatch):
    """No offline variable set (the caller's environment may set one)."""
    for var in _hub._OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


def _recorder(result="loaded", miss=False):
    calls = []

    def load(offline):
        hh = sys.modules.get("huggingface_hub.constants")
        calls.append((offline, getattr(hh, "HF_HUB_OFFLINE", None)))
        if offline and miss:
            raise OSError("not in the cache")
        return result

    return load, calls


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_variable_skips_the_probe(online_env, monkeypatch, var):
    def connect(*a, **k):  # the probe must not even try
        raise AssertionError("socket.create_connection called although offline is set")

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setenv(var, "1")
    assert _hub.hub_offline_env() == var
    assert hub_reachable() is False


def test_probe_with_a_hanging_dns_returns_within_its_timeout(online_env, monkeypatch):
    release = threading.Event()
    probes, done = [], []

    def hang(*a, **k):  # a DNS lookup that does not answer in time, then fails as one does
        probes.append(threading.current_thread())
        release.wait(30)
        done.append(True)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "create_connection", hang)
    t0 = time.perf_counter()
    try:
        assert hub_reachable(timeout=0.2) is False
        assert time.perf_counter() - t0 < 1.5
    finally:
        # end the probe thread inside this test: a double that outlived it (it used to
        # return None 30 s later, so .close() raised in the thread) surfaced as an
        # unhandled-thread-exception warning in whichever test ran then
        release.set()
        for t in probes:
            t.join(5.0)
    assert done == [True] and not any(t.is_alive() for t in probes)


def test_probe_failure_of_any_kind_is_unreachable(online_env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://a..b")  # not a valid host name: UnicodeError
    assert hub_reachable(timeout=0.5) is False


def test_probe_targets_hf_endpoint(online_env, monkeypatch):
    seen = []

    class Conn:
        def close(self):
            pass

    def connect(addr, timeout):
        seen.append(addr)
        return Conn()

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080")
    assert hub_reachable(timeout=1.0) is True
    assert seen == [("mirror.example", 8080)]


def test_from_hub_online_runs_the_ordinary_load(online_env, monkeypatch):
    monkeypatch.setattr(_hub, "hub_reachable", lambda timeout=2.0: True)
    load, calls = _recorder()
    assert from_hub(MISSING, load, what="model", fix="pass a folder") == "loaded"
    assert [c[0] for c in calls] == [False]


def test_from_hub_unreachable_uses_the_cache_in_offline_mode(online_env, monkeypatch):
    monkeypatch.setattr(_hub, "hub_reachable", lambda timeout=2.0: False)
    import huggingface_hub.constants as hc

    before = hc.HF_HUB_OFFLINE
    load, calls = _recorder("cached")
    assert from_hub(MISSING, load, what="model", fix="pass a folder") == "cached"
    assert calls == [(True, True)]  # offline=True, and huggingface_hub in offline mode
    assert hc.HF_HUB_OFFLINE == before  # restored


def test_from_hub_cache_miss_names_id_reason_and_fix(online_env, monkeypatch):
    def refused(*a, **k):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refused)
    import huggingface_hub.constants as hc

    before = hc.HF_HUB_OFFLINE
    load, _ = _recorder(miss=True)
    with pytest.raises(HubUnreachableError) as ei:
        from_hub(MISSING, load, what="base language model", fix="pass a local folder")
    msg = str(ei.value)
    assert repr(MISSING) in msg and "base language model" in msg
    assert "unreachable" in msg and "Fix: pass a local folder" in msg
    assert isinstance(ei.value, OSError)  # callers catching transformers' OSError still do
    assert isinstance(ei.value.__cause__, OSError)
    assert hc.HF_HUB_OFFLINE == before


def test_from_hub_offline_variable_is_named(online_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load, _ = _recorder(miss=True)
    with pytest.raises(HubUnreachableError, match="HF_HUB_OFFLINE is set"):
        from_hub(MISSING, load, what="model", fix="x")


def test_from_hub_paths(online_env, monkeypatch, tmp_path):
    monkeypatch.setattr(_hub, "hub_reachable", lambda timeout=2.0: pytest.fail("probed a path"))
    load, calls = _recorder()
    assert from_hub(tmp_path, load, what="model", fix="x") == "loaded"
    assert from_hub(str(tmp_path), load, what="model", fix="x") == "loaded"
    assert [c[0] for c in calls] == [False, False]
    for missing in (str(tmp_path / "nope"), "./nope-4f1c", "~/nope-4f1c", tmp_path / "nope"):
        with pytest.raises(FileNotFoundError, match="nope"):
            from_hub(missing, load, what="model", fix="x")


def test_hub_offline_mode_restores_flags_after_an_error():
    import huggingface_hub.constants as hc

    before = hc.HF_HUB_OFFLINE
    with pytest.raises(RuntimeError), hub_offline_mode():
        assert hc.HF_HUB_OFFLINE is True
        raise RuntimeError("boom")
    assert hc.HF_HUB_OFFLINE == before


# ---- the dataset loaders -----------------------------------------------------------------
@pytest.mark.parametrize("spec,shown", [("sst2", "stanfordnlp/sst2"), ("jigsaw", "google/civil_comments"),
                                        (f"hub:{MISSING}", MISSING)])
def test_hub_dataset_presets_fail_fast_offline(online_env, monkeypatch, spec, shown):
    pytest.importorskip("datasets")
    import rankkit.datasets as rd

    if spec in ("sst2", "jigsaw"):
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(shown, "README.md", repo_type="dataset"), str):
            pytest.skip(f"{shown} is in this machine's hub cache, so it loads offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(HubUnreachableError) as ei:
        rd.load(spec, tokenizer="gpt2-offline")
    assert time.perf_counter() - t0 < 5.0
    msg = str(ei.value)
    assert repr(shown) in msg and "HF_HUB_OFFLINE" in msg
    assert "local copy" in msg and "vader:" in msg


def test_hub_dataset_from_a_local_folder_loads_offline(online_env, monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    import rankkit.datasets as rd

    # datasets caches what it builds; keep it out of the user's ~/.cache
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("text,y\ngood day,1\nbad day,0\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = rd.load(f"hub:{tmp_path / 'data'}", text="text", labels="y", tokenizer="gpt2-offline")
    assert len(ds) == 2
    assert ds.responses.tolist() == [1.0, 0.0]
