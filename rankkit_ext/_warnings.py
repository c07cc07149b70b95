"""The extension's warning classes, in a module that imports nothing (so that a warnings
filter can name them without importing torch)."""

from __future__ import annotations


class ConvergenceWarning(UserWarning):
    """A training run ended while its loss was still changing (see ``tol`` of
    :func:`rankkit_ext.train`)."""
