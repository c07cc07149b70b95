"""Lazy attribute loading shared by ``rankkit`` and ``rankkit_ext`` (PEP 562).

``import rankkit`` must stay cheap and must not import numba, torch or transformers until a
name that needs them is used; both packages declare a name -> (submodule, attribute) map and
get their module-level ``__getattr__`` / ``__dir__`` from :func:`attach`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping


def attach(package: str, names: Mapping[str, tuple[str, str]], submodules: Iterable[str],
           namespace: dict) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """Return ``(__getattr__, __dir__, __all__)`` for ``package``.

    ``names`` maps a public name to ``(submodule, attribute)``; ``submodules`` are importable
    as attributes. A loaded value is cached in ``namespace`` (the package's ``globals()``) so
    each name is resolved once.
    """
    submodules = frozenset(submodules)
    public = sorted(set(names) | submodules)

    def __getattr__(name: str):
        if name in names:
            module_name, attr = names[name]
            value = getattr(importlib.import_module(f".{module_name}", package), attr)
        elif name in submodules:
            value = importlib.import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__():
        return public

    return __getattr__, __dir__, public
