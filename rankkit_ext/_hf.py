"""Architecture-neutral access to Hugging Face causal LMs (any ``AutoModelForCausalLM``).

The extension was first written against GPT-2, whose config names (``n_embd``,
``n_positions``) and module names (``transformer.wte``) other architectures do not share.
Everything the samplers and reward models need from a backbone goes through here:

* :func:`load_pretrained` — ``AutoModelForCausalLM`` / ``AutoModel`` / ``AutoConfig`` /
  ``AutoTokenizer`` ``from_pretrained`` for a hub id or a local directory, failing fast
  without a network (:func:`rankkit._hub.from_hub`);
* :func:`text_config` — the language-model part of a config (``get_text_config()`` for
  multimodal configs, the config itself otherwise);
* :func:`hidden_size`, :func:`max_positions` — sizes read from the config's generic names
  (GPT-2's config maps them through its ``attribute_map``);
* :func:`forward_kwargs` — keep only the keyword arguments a model's ``forward`` takes
  (``position_ids`` is absent from ALiBi models, ``logits_to_keep`` from older ones);
* :func:`cache_kwargs`, :func:`output_cache` — pass and read the KV cache under the name
  this transformers release uses (``cache`` since 5.2x, ``past_key_values`` before).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from rankkit._hub import from_hub

__all__ = ["load_pretrained", "text_config", "hidden_size", "max_positions", "forward_kwargs",
           "cache_kwargs", "output_cache", "MODEL_FIX"]

MODEL_FIX = ("pass a local directory instead (one written by model.save_pretrained(dir) or "
             "rankkit_ext.train_lm(..., checkpoint_dir=dir), or a copy of the hub repository's "
             "files), or connect to the network once so that the Hugging Face cache holds it")

_AUTO = {"causal_lm": "AutoModelForCausalLM", "base": "AutoModel", "config": "AutoConfig",
         "tokenizer": "AutoTokenizer"}


def load_pretrained(name_or_path: str | os.PathLike, auto: str = "causal_lm", *,
                    what: str = "model", **kwargs):
    """``transformers.<Auto class>.from_pretrained(name_or_path, **kwargs)``, offline-safe.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A hub id (``"gpt2"``, ``"Qwen/Qwen2.5-0.5B"``) or a local directory.
    auto : {"causal_lm", "base", "config", "tokenizer"}
        ``AutoModelForCausalLM``, ``AutoModel``, ``AutoConfig`` or ``AutoTokenizer``.
    what : str
        Named in error messages ("base language model", "reward-model backbone" …).
    **kwargs
        Passed to ``from_pretrained`` (``dtype=``, ``revision=`` …).

    Raises
    ------
    rankkit._hub.HubUnreachableError
        A hub id that is not cached, without a reachable hub (or with ``HF_HUB_OFFLINE=1``):
        raised within ~2.5 s instead of after ~50 s of retries.
    FileNotFoundError
        A path (``./x``, ``/x``, ``~/x``) that does not exist.
    """
    if auto not in _AUTO:
        raise ValueError(f"auto must be one of {sorted(_AUTO)}, got {auto!r}")
    import transformers

    cls = getattr(transformers, _AUTO[auto])
    src = os.fspath(Path(name_or_path).expanduser()) if Path(
        name_or_path).expanduser().exists() else os.fspath(name_or_path)

    def load(offline: bool):
        return cls.from_pretrained(src, **({"local_files_only": True} if offline else {}), **kwargs)

    return from_hub(name_or_path, load, what=what, fix=MODEL_FIX)


def text_config(config):
    """The decoder (text) part of ``config``: ``config.get_text_config()`` where it exists
    (multimodal configs nest it), else ``config``."""
    get = getattr(config, "get_text_config", None)
    if callable(get):
        try:
            return get()
        except TypeError:  # older signatures take arguments we do not need
            return config
    return config


def hidden_size(model) -> int:
    """Width d of the last hidden state h(x).

    Read from the output embedding (logits = h Eᵀ forces it to be h's width), which also
    holds for models whose config ``hidden_size`` is the width of an inner projection
    (OPT-350m: hidden 1024, embeddings 512); the config's ``hidden_size`` otherwise.
    """
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and getattr(out, "weight", None) is not None:
        return int(out.weight.shape[1])
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[1])
    return int(text_config(model.config).hidden_size)


def max_positions(config) -> int | None:
    """Largest sequence length the model was built for (``max_position_embeddings``; GPT-2's
    ``n_positions`` is the same attribute through its config's ``attribute_map``), or None
    for a model without such a limit."""
    cfg = text_config(config)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def forward_kwargs(model, **kwargs) -> dict:
    """``kwargs`` restricted to the names ``model.forward`` declares (``None`` values dropped);
    all of them for a wrapper whose ``forward`` takes only ``*args, **kwargs``.

    ``position_ids`` matter with left padding (each row's positions must start at its first
    real token) and are passed wherever the model takes them; models with ALiBi or no
    position ids at all do not declare the argument and never receive it.
    """
    params = inspect.signature(model.forward).parameters
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    named = [p for p in params.values() if p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                          inspect.Parameter.VAR_KEYWORD)]
    if not named:  # a wrapper's forward(*args, **kwargs) (e.g. peft): it forwards everything
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def _cache_name(model) -> str | None:
    """``"cache"`` or ``"past_key_values"``, whichever ``model.forward`` declares (``cache``
    when it declares both), or None when it declares neither (a wrapper's ``**kwargs``)."""
    try:
        names = inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return None
    if "cache" in names:
        return "cache"
    if "past_key_values" in names:
        return "past_key_values"
    return None


def cache_kwargs(model, past) -> dict:
    """The KV-cache argument under the name the model's forward takes: ``cache``
    (transformers ≥ 5.2x, where ``past_key_values`` is a deprecated alias due to be removed
    in 5.40 and warns on every call) or ``past_key_values`` (older releases, e.g. 5.17 on
    the GPU machine).

    A wrapper whose ``forward`` declares only ``**kwargs`` (peft's ``PeftModel``, a test's
    module around a model) says nothing; the name is then the one of the first
    ``transformers`` model inside it (``model.modules()``), and ``past_key_values`` only
    when no module declares either name (the older convention, still accepted).
    """
    name = _cache_name(model)
    if name is None and hasattr(model, "modules"):
        for sub in model.modules():
            if sub is not model:
                name = _cache_name(sub)
                if name is not None:
                    break
    return {name or "past_key_values": past}


def output_cache(out):
    """The KV cache of a model output: ``out.cache`` or ``out.past_key_values``, whichever
    this transformers release fills."""
    keys = out.keys() if hasattr(out, "keys") else ()
    if "cache" in keys:
        return out["cache"]
    return getattr(out, "past_key_values", None)
