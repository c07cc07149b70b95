"""Tiny twisted-SMC problems shared by the ``test_tsmc_*`` modules: targets σ(s) ∝ p(s) φ(s)
(Zhao et al. 2024, the target of twisted SMC) small enough to enumerate exactly."""

import functools
import math

import numpy as np
import pytest
import torch

from rankkit_ext.tsmc.adapters import TableLM
from rankkit_ext.tsmc.potentials import FunctionPotential
from rankkit_ext.tsmc.twists import TableTwist


def random_phi(seed, scale=1.5, forbid=None, max_zero=False):
    """Deterministic pseudo-random log-potential of a token tuple (hash-seeded)."""

    @functools.cache
    def f(s):
        if forbid is not None and forbid in s:
            return -math.inf
        h = np.random.default_rng([seed, len(s), *s]).standard_normal()
        return min(scale * h, 0.0) if max_zero else scale * h

    return FunctionPotential(f)


def make_case(seed, V, T, eos):
    """A random table LM over ``V`` tokens and horizon ``T`` (EOS = ``V - 1`` when ``eos``) and
    a :func:`random_phi` potential, both determined by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    lm = TableLM.random(V, T, g, eos_token_id=(V - 1) if eos else None)
    return lm, random_phi(seed)


def random_twist(lm, seed, scale=1.0):
    """A random (far from optimal) table twist for ``lm``, N(0, scale²) entries."""
    g = torch.Generator().manual_seed(seed + 99)
    return TableTwist(scale * torch.randn(lm.hidden_size, lm.vocab_size, generator=g,
                                          dtype=torch.float64))


def tiny_gpt2(V=4, eos=3, dtype=torch.float64):
    """A 1-layer GPT-2 with ``V`` tokens (BOS 0, EOS ``eos``), fixed weights, in eval mode; the
    global torch RNG is left untouched. Skips the test when transformers is missing."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2, n_positions=16,
                                  bos_token_id=0, eos_token_id=eos)
    with torch.random.fork_rng(devices=[]):  # GPT2 init draws from the global RNG: fork it
        torch.manual_seed(0)
        return transformers.GPT2LMHeadModel(cfg).to(dtype).eval()


def train_straight_and_resumed(lm, fresh, phi, kw, ckpt_dir, every):
    """Train ``fresh()`` for kw["steps"] CTL steps in one go, and another ``fresh()`` that is
    interrupted after ``every`` steps and resumed from ``ckpt_dir``: (straight, resumed, result)."""
    from rankkit_ext.tsmc.learning import train_twist

    straight = fresh()
    train_twist(lm, straight, phi, [0], **kw)
    train_twist(lm, fresh(), phi, [0], **{**kw, "steps": every}, checkpoint_dir=ckpt_dir,
                checkpoint_every=every)
    resumed = fresh()
    res = train_twist(lm, resumed, phi, [0], **kw, checkpoint_dir=ckpt_dir, checkpoint_every=every)
    return straight, resumed, res
