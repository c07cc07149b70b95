"""rankkit's warning classes, in a module that imports nothing (so that a warnings filter
can name them without importing the package's numerical stack)."""

from __future__ import annotations


class LabelScaleWarning(UserWarning):
    """The analysed label's observed values leave [0, 1], the range ε = 1e-6 is meant for.

    ε bounds an absolute mean squared error, so multiplying every label by c divides the
    effective tolerance by c² (vader:movie's labels × 5: upper 6 → 7). Pass
    ``normalize=True`` to :func:`rankkit.estimate_min_rank` to divide the values by their
    largest magnitude, or scale ``eps`` by that magnitude squared."""
