"""Chemical elements: the one place that turns symbols into atomic numbers and back.

Used by data reading, the models' ``species`` and ``e0s`` arguments, checkpoints and the CLIs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ase.data import atomic_numbers as _SYMBOL_TO_Z
from ase.data import chemical_symbols

from mpnn_ip.errors import ConfigError


def atomic_number(element: str | int, error=ConfigError, where: str = "species") -> int:
    """``"Cu"``, ``29`` or ``"29"`` -> 29; an unknown symbol or a number outside 1..118 raises ``error``."""
    if isinstance(element, str) and not element.strip().isdigit():
        if element not in _SYMBOL_TO_Z:
            raise error(f"unknown chemical symbol {element!r} in {where}")
        return int(_SYMBOL_TO_Z[element])
    z = int(element)
    if not 1 <= z <= 118:
        raise error(f"atomic number {z} out of range 1..118 in {where}")
    return z


def atomic_numbers(elements: Iterable[str | int], error=ConfigError, where: str = "species") -> list[int]:
    """Symbols or atomic numbers -> sorted unique atomic numbers."""
    return sorted({atomic_number(e, error, where) for e in elements})


def energies_by_atomic_number(energies: Mapping | None) -> dict[int, float] | None:
    """``{symbol or Z: eV}`` -> ``{Z: eV}`` (None stays None)."""
    if energies is None:
        return None
    return {atomic_number(k, where="per-species energies"): float(v) for k, v in energies.items()}


def symbols(numbers: Iterable[int]) -> list[str]:
    """Atomic numbers -> chemical symbols, in the given order."""
    return [chemical_symbols[int(z)] for z in numbers]


def unknown_elements(known: Iterable[int], present: Iterable[int]) -> list[str]:
    """Symbols of the elements in ``present`` that are not in ``known`` (sorted by atomic number)."""
    return symbols(sorted({int(z) for z in present} - {int(z) for z in known}))
