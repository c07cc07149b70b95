r"""Twist heads :math:`\log\psi_\theta(s_{1:t-1}, v)` for every next token v in one pass.

A twist head maps the base LM's hidden state of the prefix :math:`s_{0:t-1}` (shape (K, H))
to log-twists for all V candidate tokens (shape (K, V)), so the twist-induced proposal
:math:`q_t(v\mid s_{<t})\propto p_{LM}(v\mid s_{<t})\,\psi_\theta(s_{<t}, v)` costs one head
evaluation per step (Zhao et al. 2024, §4; Kim et al. 2025, §1). The base model is frozen:
the samplers and :mod:`~rankkit_ext.tsmc.learning` feed detached hidden states, so only the
head's parameters are trained.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TwistHead", "LinearTwist", "MLPTwist", "TableTwist"]


class TwistHead(nn.Module):
    """Base class: ``forward(hidden (K, H)) -> log_psi (K, V)``."""

    def __init__(self, hidden_size: int, vocab_size: int):
        super().__init__()
        self.hidden_size, self.vocab_size = int(hidden_size), int(vocab_size)

    def log_psi(self, hidden: torch.Tensor) -> torch.Tensor:
        p = next(self.parameters())
        return self(hidden.to(device=p.device, dtype=p.dtype))


class LinearTwist(TwistHead):
    """log ψ = W h + b. Zero-initialised, so an untrained twist gives the bootstrap proposal."""

    def __init__(self, hidden_size: int, vocab_size: int, dtype=torch.float32):
        super().__init__(hidden_size, vocab_size)
        self.proj = nn.Linear(hidden_size, vocab_size, dtype=dtype)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden):
        return self.proj(hidden)


class MLPTwist(TwistHead):
    """log ψ = W₂ relu(W₁ h + b₁) + b₂ (last layer zero-initialised: ψ ≡ 1 at start)."""

    def __init__(self, hidden_size: int, vocab_size: int, width: int = 256, dtype=torch.float32,
                 seed: int = 0):
        super().__init__(hidden_size, vocab_size)
        g = torch.Generator().manual_seed(seed)
        self.inp = nn.Linear(hidden_size, width, dtype=dtype)
        with torch.no_grad():  # explicit seed instead of the global RNG
            self.inp.weight.copy_(torch.randn(width, hidden_size, generator=g, dtype=dtype)
                                  / hidden_size ** 0.5)
            self.inp.bias.zero_()
        self.out = nn.Linear(width, vocab_size, dtype=dtype)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, hidden):
        return self.out(torch.relu(self.inp(hidden)))


class TableTwist(TwistHead):
    """A free table log ψ[prefix, v] for enumerable models whose hidden state is a one-hot
    prefix index (:class:`~rankkit_ext.tsmc.adapters.TableLM`, :class:`EnumerableLM`).

    Equivalent to :class:`LinearTwist` on one-hot inputs but allows exact ``-inf`` entries
    (hard constraints inside the optimal twist ψ*), which a matrix product would turn into NaN.
    """

    def __init__(self, table: torch.Tensor, trainable: bool = True):
        super().__init__(table.shape[0], table.shape[1])
        self.table = nn.Parameter(table.clone(), requires_grad=trainable)

    def forward(self, hidden):
        return self.table[hidden.argmax(-1)]
