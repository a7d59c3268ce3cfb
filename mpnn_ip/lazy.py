"""Lazy exports of a package: names imported from their modules on first use, so that ``import mpnn_ip``
(and ``mpnn_ip.interop``, ``mpnn_ip.calculators``) stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, table: Mapping[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` whose attribute ``name`` is ``table[name]``'s ``name``.

    Use in a package's ``__init__``: ``__getattr__, __dir__ = lazy_exports(__name__, _LAZY)``.
    """

    def __getattr__(name: str):
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(importlib.import_module(package))) | set(table))

    return __getattr__, __dir__
