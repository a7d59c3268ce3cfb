"""Per-species affine map of the network's atomic energies into eV.

``node_energy [n_atoms]`` (network units), ``species [n_atoms]`` -> ``[n_atoms]`` eV.
"""

from __future__ import annotations

from typing import Sequence

import torch


def _per_species(value: float | Sequence[float], num_species: int, name: str) -> torch.Tensor:
    if isinstance(value, (int, float)):
        return torch.full((num_species,), float(value), dtype=torch.get_default_dtype())
    values = [float(v) for v in value]
    if len(values) != num_species:
        raise ValueError(f"PerSpeciesScaleShift: {name} has {len(values)} entries, expected one per species ({num_species})")
    return torch.tensor(values, dtype=torch.get_default_dtype())


class PerSpeciesScaleShift(torch.nn.Module):
    """``e_i -> scale[s_i] * e_i + shift[s_i]``.

    Args:
        num_species: number of species S.
        scale: eV, one number for all species or one per species (the training code passes the force RMS).
        shift: eV, one number or one per species, added on top of E0.
        trainable: learn scale and shift (else fixed buffers).
    Input ``node_energy: [n_atoms]`` (network units), ``species: [n_atoms]`` -> ``[n_atoms]`` eV.
    """

    def __init__(
        self,
        num_species: int,
        scale: float | Sequence[float] = 1.0,
        shift: float | Sequence[float] = 0.0,
        trainable: bool = True,
    ):
        super().__init__()
        self.num_species = int(num_species)
        scale_t = _per_species(scale, self.num_species, "scale")
        shift_t = _per_species(shift, self.num_species, "shift")
        if trainable:
            self.scale = torch.nn.Parameter(scale_t)
            self.shift = torch.nn.Parameter(shift_t)
        else:
            self.register_buffer("scale", scale_t)
            self.register_buffer("shift", shift_t)

    def forward(self, node_energy: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return self.scale[species] * node_energy + self.shift[species]

    def extra_repr(self) -> str:
        return f"num_species={self.num_species}, trainable={isinstance(self.scale, torch.nn.Parameter)}"
