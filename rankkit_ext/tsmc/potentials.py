r"""Potentials :math:`\phi(s_{1:T})\ge 0` in log space, the non-causal part of the target.

The target of twisted SMC is :math:`\sigma(s_{1:T}\mid s_0)\propto p_{LM}(s_{1:T}\mid s_0)\,
\phi(s_{1:T})` (Kim et al. 2025, eq. 2). A potential scores *finished* continuations
(prompt and EOS excluded) and returns :math:`\log\phi` as float64; a hard constraint returns
a true ``-inf``, never a tiny positive number, so impossible sequences have exactly zero mass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from .._checks import check_real
from ..scorers import PipelineScorer, profanity_scorer

__all__ = ["Potential", "PotentialValueError", "ClassifierPotential", "HardConstraint", "ProductPotential",
           "TablePotential", "toxicity_potential", "pipeline_scorer"]

Sample = Sequence[int] | str


class PotentialValueError(ValueError):
    """A potential returned NaN or +∞ for one sample; ``index`` is its position in the batch
    (the samplers re-raise it naming the step and the particle)."""

    def __init__(self, message: str, index: int, value: float):
        super().__init__(message)
        self.index, self.value = index, value


class Potential:
    r"""Base class: ``log_phi(samples) -> Tensor (K,) float64`` with values in [-inf, inf).

    ``samples`` is a list of token-id sequences (continuations, EOS stripped) or of texts.
    Subclasses implement :meth:`_log_phi`; a potential that needs text from token ids
    takes a ``decode`` callable. ``p * q`` builds the product potential (sum of logs).
    """

    decode: Callable[[Sequence[int]], str] | None = None

    def log_phi(self, samples: Sequence[Sample]) -> torch.Tensor:
        out = torch.as_tensor(np.asarray(self._log_phi(list(samples)), dtype=np.float64))
        if out.shape != (len(samples),):
            raise ValueError(f"{type(self).__name__} returned shape {tuple(out.shape)} for "
                             f"{len(samples)} samples; it must return one value per sample.")
        bad = torch.isnan(out) | (out == np.inf)
        if bad.any():
            i = int(torch.nonzero(bad)[0])
            raise PotentialValueError(f"{type(self).__name__} gave log phi = {float(out[i])} for "
                                      f"sample {i} ({samples[i]!r}); log phi must be real or -inf.",
                                      i, float(out[i]))
        return out

    def _log_phi(self, samples: list[Sample]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _texts(self, samples: list[Sample]) -> list[str]:
        if all(isinstance(s, str) for s in samples):
            return samples  # type: ignore[return-value]
        if self.decode is None:
            raise TypeError(f"{type(self).__name__} scores text but got token ids and no "
                            "decode=; pass decode=tokenizer.decode or give texts.")
        return [s if isinstance(s, str) else self.decode(list(s)) for s in samples]

    def __mul__(self, other: Potential) -> ProductPotential:
        return ProductPotential(self, other)


class ClassifierPotential(Potential):
    r""":math:`\phi(s) = p(\text{attribute}\mid s)^\beta`, i.e. :math:`\log\phi = \beta\log p`.

    Kim et al. (2025) §3 use :math:`p(\text{toxic}\mid s)^\beta`, β ∈ {0, 1, 10}.

    Parameters
    ----------
    scorer : callable, list[str] -> array (K,) of probabilities in [0, 1]
        Any scorer of :mod:`rankkit_ext.scorers`, e.g. ``profanity_scorer()`` or
        ``PipelineScorer(pipe, "toxic")``.
    beta : float >= 0
        Temperature of the attribute; β = 0 gives φ ≡ 1 even where p = 0.
    decode : callable, optional
        Token ids → text, needed when the sampler passes token ids.
    prefix_text : str
        Text prepended before scoring (e.g. the prompt), as the paper scores the full story.
    """

    def __init__(self, scorer: Callable[[list[str]], Sequence[float]], beta: float = 1.0,
                 decode: Callable[[Sequence[int]], str] | None = None, prefix_text: str = ""):
        beta = check_real("beta", beta, low=0.0, meaning="phi = p^beta; beta = inf is a hard "
                          "constraint, write it with HardConstraint")
        self.scorer, self.beta, self.decode, self.prefix_text = scorer, beta, decode, prefix_text

    def probabilities(self, samples: Sequence[Sample]) -> np.ndarray:
        texts = [self.prefix_text + t for t in self._texts(list(samples))]
        p = np.asarray(self.scorer(texts), dtype=np.float64).reshape(-1)
        if ((p < 0) | (p > 1) | np.isnan(p)).any():
            i = int(np.nonzero((p < 0) | (p > 1) | np.isnan(p))[0][0])
            raise ValueError(f"scorer returned {p[i]} for text {texts[i]!r}; a probability in "
                             "[0, 1] is required.")
        return p

    def _log_phi(self, samples):
        if self.beta == 0:
            return np.zeros(len(samples))
        with np.errstate(divide="ignore"):
            return self.beta * np.log(self.probabilities(samples))


def toxicity_potential(beta: float = 1.0, decode=None, prefix_text: str = "") -> ClassifierPotential:
    """φ = p(toxic | s)^β with the offline ``alt-profanity-check`` linear SVM
    (:func:`rankkit_ext.scorers.profanity_scorer`)."""
    return ClassifierPotential(profanity_scorer(), beta, decode, prefix_text)


def pipeline_scorer(pipe, label: str) -> PipelineScorer:
    """p(label | s) from a Hugging Face ``text-classification`` pipeline: the same as
    :class:`rankkit_ext.scorers.PipelineScorer` ``(pipe, label)``, kept under its old name."""
    return PipelineScorer(pipe, label)


class HardConstraint(Potential):
    """φ(s) = 1 if ``predicate(s)`` else 0 (log φ = 0 or exactly ``-inf``).

    ``predicate`` gets token ids (``on="ids"``) or texts (``on="text"``, needs ``decode``).
    """

    def __init__(self, predicate: Callable[[Sample], bool], on: str = "ids", decode=None):
        if on not in ("ids", "text"):
            raise ValueError(f"on must be 'ids' or 'text'; got {on!r}.")
        self.predicate, self.on, self.decode = predicate, on, decode

    def _log_phi(self, samples):
        xs = self._texts(samples) if self.on == "text" else samples
        return np.where([bool(self.predicate(x)) for x in xs], 0.0, -np.inf)


class ProductPotential(Potential):
    r""":math:`\phi = \prod_i \phi_i` (:math:`\log\phi = \sum_i\log\phi_i`; ``-inf`` absorbs)."""

    def __init__(self, *potentials: Potential):
        flat = []
        for p in potentials:
            if not isinstance(p, Potential):
                raise TypeError(f"ProductPotential takes Potential objects; got {type(p).__name__}.")
            flat.extend(p.potentials if isinstance(p, ProductPotential) else [p])
        self.potentials = flat

    def _log_phi(self, samples):
        total = np.zeros(len(samples))
        for p in self.potentials:
            total = total + p.log_phi(samples).numpy()  # -inf + finite = -inf, never NaN
        return total


class TablePotential(Potential):
    """Log-potential looked up by token-id tuple (for enumerable test models); missing → default."""

    def __init__(self, table: Mapping[tuple[int, ...], float], default: float = 0.0):
        self.table, self.default = dict(table), float(default)

    def _log_phi(self, samples):
        return np.array([self.table.get(tuple(int(v) for v in s), self.default) for s in samples])


class FunctionPotential(Potential):
    """Log-potential from a function of one token-id tuple (used for random enumerable targets)."""

    def __init__(self, fn: Callable[[tuple[int, ...]], float]):
        self.fn = fn

    def _log_phi(self, samples):
        return np.array([float(self.fn(tuple(int(v) for v in s))) for s in samples])


__all__.append("FunctionPotential")
