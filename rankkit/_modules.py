"""The public modules of rankkit and rankkit_ext (the documentation's pages, its test)."""

from __future__ import annotations

import importlib
import pkgutil


def public_modules(packages=("rankkit", "rankkit_ext")) -> list[str]:
    """Every module of ``packages`` that no part of its dotted name marks private (a leading
    underscore), in import-path order; importing the packages to walk them."""
    names = []
    for package in packages:
        root = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.append(info.name)
    return names
