"""mace-torch's radial embedding options: Gaussian basis, Agnesi and Soft distance transforms.

``lengths [n_edges]`` Å, ``species [n_atoms]``, ``edge_index [2, n_edges]`` -> ``[n_edges, num_basis]``.
The cutoff envelope is evaluated on the true length, the basis on the transformed one (as mace's
``RadialEmbeddingBlock``). Both transforms depend on the pair's covalent radii (ASE's table), so the
embedding needs the species of both ends of every edge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from ase.data import covalent_radii

from mpnn_ip.nn.radial import PolynomialCutoff, gaussians

RADIAL_TYPES = ("bessel", "gaussian")
DISTANCE_TRANSFORMS = (None, "agnesi", "soft")


class MACERadialEmbedding(torch.nn.Module):
    """Radial basis of a (possibly transformed) length times the polynomial cutoff of the length.

    Args:
        r_max: cutoff (Å).
        num_basis: number of basis functions.
        cutoff_p: exponent p of the polynomial envelope.
        atomic_numbers: the model's species (atomic numbers, in the model's order).
        radial_type: ``"bessel"`` (``sqrt(2/r_max) sin(k_n r) / r``, k_n = nπ/r_max) or ``"gaussian"``
            (``exp(-(r - μ_n)² / (2 w²))``, μ_n evenly in [0, r_max], w their spacing).
        distance_transform: None, ``"agnesi"`` (``1 / (1 + a x^q / (1 + x^(q - p)))``, x = r / r_0,
            r_0 the mean covalent radius of the pair; ACEpotentials.jl) or ``"soft"`` (``p0 + (r - p0)
            (1 + tanh(α (r - m)) / (p1 - p0)) / 2`` with p0 = 3/4 r_0, p1 = 4/3 r_0, m their mean, r_0 the
            sum of covalent radii).
    Buffers (set by the importer from the source file): ``frequencies`` (Bessel k_n, Å⁻¹) or ``centres``
    (Gaussian μ_n, Å); ``agnesi`` = (q, p, a); ``soft_alpha``.
    """

    def __init__(
        self,
        r_max: float,
        num_basis: int,
        cutoff_p: float,
        atomic_numbers: Sequence[int],
        radial_type: str = "bessel",
        distance_transform: str | None = None,
    ):
        super().__init__()
        if radial_type not in RADIAL_TYPES:
            raise ValueError(f"MACERadialEmbedding: radial_type must be one of {RADIAL_TYPES}, got {radial_type!r}")
        if distance_transform not in DISTANCE_TRANSFORMS:
            raise ValueError(
                f"MACERadialEmbedding: distance_transform must be one of {DISTANCE_TRANSFORMS}, got {distance_transform!r}"
            )
        self.r_max = float(r_max)
        self.num_basis = int(num_basis)
        self.radial_type = radial_type
        self.distance_transform = distance_transform
        self.cutoff = PolynomialCutoff(r_max, cutoff_p)
        dtype = torch.get_default_dtype()
        if radial_type == "bessel":
            self.register_buffer("frequencies", math.pi / self.r_max * torch.arange(1, self.num_basis + 1, dtype=dtype))
        else:
            self.register_buffer("centres", torch.linspace(0.0, self.r_max, self.num_basis, dtype=dtype))
            self.width = self.r_max / (self.num_basis - 1)
        self.register_buffer("radii", torch.tensor([covalent_radii[int(z)] for z in atomic_numbers], dtype=dtype))
        self.register_buffer("agnesi", torch.tensor([0.9183, 4.5791, 1.0805], dtype=dtype))
        self.register_buffer("soft_alpha", torch.tensor(4.0, dtype=dtype))

    def transformed(self, lengths: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """The length the basis sees (Å), ``[n_edges]``."""
        if self.distance_transform is None:
            return lengths
        radius_sum = self.radii[species[edge_index[0]]] + self.radii[species[edge_index[1]]]
        if self.distance_transform == "agnesi":
            q, p, a = self.agnesi.unbind()
            x = lengths / (0.5 * radius_sum)
            return 1.0 / (1.0 + a * torch.pow(x, q) / (1.0 + torch.pow(x, q - p)))
        p0, p1 = 0.75 * radius_sum, 4.0 / 3.0 * radius_sum
        switch = 0.5 * (1.0 + torch.tanh(self.soft_alpha / (p1 - p0) * (lengths - 0.5 * (p0 + p1))))
        return p0 + (lengths - p0) * switch

    def forward(self, lengths: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        x = self.transformed(lengths, species, edge_index).unsqueeze(-1)
        if self.radial_type == "bessel":
            basis = math.sqrt(2.0 / self.r_max) * torch.sin(self.frequencies * x) / x
        else:
            basis = gaussians(x.squeeze(-1), self.centres, self.width)
        return basis * self.cutoff(lengths).unsqueeze(-1)
