"""LAMMPS atom types -> chemical elements, by ``elements=`` (type order) or by the per-type masses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase.data import atomic_masses, chemical_symbols

from mpnn_ip.elements import symbols
from mpnn_ip.errors import ConfigError

#: u; a per-type mass matches an element whose standard atomic mass is this close
MASS_TOLERANCE = 0.1


def element_of_mass(mass: float, atom_type: int) -> int:
    """The atomic number whose standard atomic mass is within :data:`MASS_TOLERANCE` of ``mass`` (u)."""
    close = [z for z in range(1, len(chemical_symbols)) if abs(atomic_masses[z] - mass) <= MASS_TOLERANCE]
    if len(close) == 1:
        return close[0]
    if not close:
        raise ConfigError(
            f"LAMMPS type {atom_type} has mass {mass:g}, which is no element's standard atomic mass (within "
            f"{MASS_TOLERANCE} u; an isotope or a coarse-grained bead?): name the elements in type order, e.g. elements=[Cu,Au]"
        )
    names = ", ".join(f"{chemical_symbols[z]} ({atomic_masses[z]:.3f})" for z in close)
    raise ConfigError(
        f"LAMMPS type {atom_type} has mass {mass:g}, which fits several elements: {names}. Name the elements in type order, e.g. elements=[Cu,Au]"
    )


def type_atomic_numbers(
    n_types: int,
    species: Sequence[int],
    elements: Sequence[str] | None = None,
    masses: Sequence[float] | None = None,
) -> np.ndarray:
    """Atomic number of each LAMMPS type: ``[n_types + 1]`` int64 (index 0 unused, LAMMPS types start at 1).

    Args:
        n_types: LAMMPS's ``ntypes``.
        species: atomic numbers the model knows.
        elements: element symbols in type order (``elements=[Cu,Au]``: type 1 Cu, type 2 Au); one per type.
        masses: per-type masses (u), index 0 unused, used when ``elements`` is None.
    Raises:
        ConfigError: an unknown symbol, a count that is not one per type, a type without a mass or
            whose mass fits no (or several) elements, an element the model was not trained on.
    """
    numbers = np.zeros(n_types + 1, dtype=np.int64)
    if elements is not None:
        elements = [str(e).strip() for e in elements]
        if len(elements) != n_types:
            missing = f"type {len(elements) + 1} has no element: " if len(elements) < n_types else ""
            raise ConfigError(
                f"{missing}elements={_listed(elements)} names {len(elements)} element(s), but the LAMMPS box has {n_types} atom "
                f"type(s): give one element per type, in type order"
            )
        for atom_type, symbol in enumerate(elements, start=1):
            if symbol not in chemical_symbols[1:]:
                raise ConfigError(
                    f"elements={_listed(elements)}: {symbol!r} (type {atom_type}) is not a chemical symbol"
                )
            numbers[atom_type] = chemical_symbols.index(symbol)
    else:
        for atom_type in range(1, n_types + 1):
            mass = float(masses[atom_type]) if masses is not None and len(masses) > atom_type else 0.0
            if not mass > 0.0:
                raise ConfigError(
                    f"LAMMPS type {atom_type} has no mass when the fix is declared, and elements= is not given: set the "
                    "masses before the fix line (read_data's Masses section, or mass commands) or name the elements, e.g. elements=[Cu,Au]"
                )
            numbers[atom_type] = element_of_mass(mass, atom_type)
    known = {int(z) for z in species}
    for atom_type in range(1, n_types + 1):
        if int(numbers[atom_type]) not in known:
            raise ConfigError(
                f"LAMMPS type {atom_type} is {chemical_symbols[numbers[atom_type]]}, an element the model was not trained on "
                f"(it knows {', '.join(symbols(sorted(known)))}): use a model trained on it, or map the types to known elements"
            )
    return numbers


def _listed(elements: Sequence[str]) -> str:
    return "[" + ",".join(elements) + "]"
