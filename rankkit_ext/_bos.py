"""The BOS convention of the LM layer: one definition of the BOS id and of adding or
dropping it.

A base LM is always conditioned on ``[BOS] + prompt`` and prompts are given *without*
BOS (training, perplexity, the SMC adapter, guided decoding). The functions are public as
:func:`rankkit_ext.lm.bos_token_id`, :func:`rankkit_ext.lm.with_bos` and
:func:`rankkit_ext.lm.strip_bos` (re-exported there); they live in this leaf module so that
:mod:`rankkit_ext.metrics` (perplexity) can use them without importing :mod:`rankkit_ext.lm`,
which itself uses the metrics to report its bundled base LM's held-out perplexity: the
arrow points one way, ``lm → metrics → _bos``.
"""

from __future__ import annotations

from ._hf import text_config

__all__ = ["bos_token_id", "strip_bos", "with_bos"]


def bos_token_id(model_or_config) -> int:
    """The BOS id a base LM is trained, scored and prompted with: the config's
    ``bos_token_id``, else ``vocab_size - 1`` (GPT-2's ``<|endoftext|>``).

    The one definition behind the package's BOS convention: a base LM is always conditioned
    on ``[BOS] + prompt`` (:func:`rankkit_ext.lm.train_lm`, :func:`rankkit_ext.metrics.perplexity`,
    :func:`rankkit_ext.metrics.conditional_perplexity`, :class:`rankkit_ext.tsmc.HFCausalLM`,
    :func:`rankkit_ext.guided.guided_generate`), and prompts are given *without* BOS.
    Documented (and re-exported) as :func:`rankkit_ext.lm.bos_token_id`.
    """
    cfg = getattr(model_or_config, "config", model_or_config)
    cfg = text_config(cfg)
    bos = getattr(cfg, "bos_token_id", None)
    if isinstance(bos, list | tuple):
        bos = bos[0] if bos else None
    V = int(cfg.vocab_size)
    if bos is None:
        return V - 1
    if not 0 <= int(bos) < V:
        raise ValueError(f"the model config's bos_token_id={bos} is outside its vocabulary "
                         f"[0, {V}); set config.bos_token_id (tiny_gpt2 uses vocab_size - 1)")
    return int(bos)


def strip_bos(prompt, bos: int) -> list[int]:
    """``prompt`` as a list of ids without its one leading BOS, if it has one.

    The documented backward-compatible path of the BOS convention: a prompt written the old
    way (``[BOS] + ids``) gives exactly what ``ids`` gives, so BOS is never seen twice.
    """
    ids = [int(t) for t in prompt]
    return ids[1:] if ids and ids[0] == bos else ids


def with_bos(prompt, bos: int) -> list[int]:
    """``[BOS] + prompt`` (one BOS, whether or not ``prompt`` already starts with it): the
    context the base LM sees, as in :func:`rankkit_ext.lm.train_lm`; an empty prompt gives ``[BOS]``
    (unconditional generation)."""
    return [int(bos)] + strip_bos(prompt, bos)
