"""Per-species affine map of the network's atomic energies into eV, the shift gated by neighbours.

``node_energy [n_atoms]`` (network units), ``species [n_atoms]``, ``shift_gate [n_atoms]`` -> ``[n_atoms]`` eV.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mpnn_ip.elements import energies_by_atomic_number

#: Neighbour weight (sum of cutoff envelopes) from which an atom gets its whole shift: one neighbour
#: closer than ~0.68 r_max is enough, so atoms of molecules and solids have gate 1 exactly.
GATE_SATURATION = 0.5
#: Exponent of the polynomial envelope of each neighbour's weight (value and first p derivatives 0 at r_max).
GATE_ENVELOPE_P = 6


def neighbour_gate(lengths: torch.Tensor, centres: torch.Tensor, num_atoms: int, r_max: float) -> torch.Tensor:
    """How much of its energy shift each atom gets: 0 for an atom without neighbours, 1 with enough.

    ``w_i = sum_j u(r_ij)`` with the polynomial envelope u (p = 6: 1 at r = 0, 0 at r_max with
    vanishing derivatives), ``t = min(w_i / GATE_SATURATION, 1)`` and the smoothstep
    ``6t^5 - 15t^4 + 10t^3`` (value, slope and curvature continuous at t = 0 and t = 1). A lone atom
    therefore keeps exactly its E0; an atom whose last neighbour leaves the cutoff loses its shift
    smoothly, so energies stay continuous and forces (-dE/dx by autograd) exact.

    Args:
        lengths: [n_edges] Å; centres: [n_edges] index of each edge's centre atom (``edge_index[0]``).
        num_atoms: N; r_max: cutoff (Å).
    Returns: [N] in [0, 1], the dtype of ``lengths``.
    """
    x = lengths / r_max
    p = float(GATE_ENVELOPE_P)
    envelope = 1.0 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
    envelope = torch.where(x < 1.0, envelope, torch.zeros_like(envelope))
    weight = torch.zeros(num_atoms, dtype=lengths.dtype, device=lengths.device).index_add(0, centres, envelope)
    t = torch.clamp(weight / GATE_SATURATION, max=1.0)
    return t**3 * (10.0 - 15.0 * t + 6.0 * t**2)


def per_species_values(value: float | Sequence[float] | Mapping, species: Sequence[int], name: str) -> list[float]:
    """One number, one per species (in the order of ``species``), or ``{Z or symbol: value}`` -> [S] floats.

    A mapping may leave species out (they get 0.0) but must not name others.
    """
    if isinstance(value, (int, float)):
        return [float(value)] * len(species)
    if isinstance(value, Mapping):
        given = energies_by_atomic_number(value)
        extra = sorted(set(given) - {int(z) for z in species})
        if extra:
            raise ValueError(
                f"{name} names atomic numbers {extra} that are not among the model's species {list(species)}"
            )
        return [given.get(int(z), 0.0) for z in species]
    values = [float(v) for v in value]
    if len(values) != len(species):
        raise ValueError(
            f"{name} has {len(values)} entries, expected one per species ({len(species)}: {list(species)})"
        )
    return values


class PerSpeciesScaleShift(torch.nn.Module):
    """``e_i -> scale[s_i] * e_i + shift[s_i] * gate_i`` (gate: :func:`neighbour_gate`).

    Args:
        num_species: number of species S, or the species themselves (atomic numbers, sorted as the
            model's), needed when ``scale`` or ``shift`` is a mapping.
        scale: eV, one number for all species, one per species, or ``{Z or symbol: eV}``
            (the training code passes the force RMS).
        shift: eV, the same forms, added on top of E0 to every atom with neighbours (the training
            code passes the energy per atom left after E0, ``${training_data_stats:energy_shifts}``).
        trainable: learn scale and shift (else fixed buffers).
    Input ``node_energy: [n_atoms]`` (network units), ``species: [n_atoms]``, ``shift_gate: [n_atoms]``
    in [0, 1] -> ``[n_atoms]`` eV.
    """

    def __init__(
        self,
        num_species: int | Sequence[int],
        scale: float | Sequence[float] | Mapping = 1.0,
        shift: float | Sequence[float] | Mapping = 0.0,
        trainable: bool = True,
    ):
        super().__init__()
        species = list(range(int(num_species))) if isinstance(num_species, int) else [int(z) for z in num_species]
        self.num_species = len(species)
        dtype = torch.get_default_dtype()
        scale_t = torch.tensor(per_species_values(scale, species, "PerSpeciesScaleShift: scale"), dtype=dtype)
        shift_t = torch.tensor(per_species_values(shift, species, "PerSpeciesScaleShift: shift"), dtype=dtype)
        if trainable:
            self.scale = torch.nn.Parameter(scale_t)
            self.shift = torch.nn.Parameter(shift_t)
        else:
            self.register_buffer("scale", scale_t)
            self.register_buffer("shift", shift_t)

    def forward(self, node_energy: torch.Tensor, species: torch.Tensor, shift_gate: torch.Tensor) -> torch.Tensor:
        # a one-hot matmul picks each atom's values exactly (one product by 1, the rest by 0); its
        # backward is a matmul, where scale[species]'s is a scatter into S entries that inductor
        # (torch.compile on the CPU, dynamic shapes) fails to generate code for
        one_hot = torch.nn.functional.one_hot(species, self.num_species).to(self.scale.dtype)  # [n_atoms, S]
        scale, shift = (one_hot @ torch.stack([self.scale, self.shift], dim=1)).unbind(1)  # one matmul for both
        return scale * node_energy + shift * shift_gate

    def extra_repr(self) -> str:
        return f"num_species={self.num_species}, trainable={isinstance(self.scale, torch.nn.Parameter)}"
