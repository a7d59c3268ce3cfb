"""Behler–Parrinello neural network potential (Behler & Parrinello, PRL 98, 146401, 2007).

Each atom is described by atom-centred symmetry functions (:mod:`mpnn_ip.nn.descriptors.symmetry_functions`:
radial G2 per neighbour species, angular G4/G5 per neighbour-species pair), standardised per
element with statistics of the training split, and fed to a feed-forward network of its own
element; the network outputs are scaled and shifted per species.

Standardisation: ``feature_mean``/``feature_std`` ``[S, F]`` buffers (saved in the checkpoint).
:meth:`BPNN.prepare` (called by the training code with the training graphs before training)
computes them from data; without it they are 0 and 1. An atom's energy is measured from its
network's output for an isolated atom (all symmetry functions 0), and the per-species shift
applies only to atoms with neighbours (:func:`~mpnn_ip.nn.neighbour_gate`), so an isolated atom
gets exactly its ``E0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from mpnn_ip.models.base import Potential
from mpnn_ip.models.energy_head import EnergyHead
from mpnn_ip.nn import SymmetryFunctions
from mpnn_ip.nn import activation as activation_fn


def default_radial_shifts(r_max: float, count: int = 8) -> list[float]:
    """``count`` G2 centres R_s (Å) evenly from 0.5 Å to r_max - 0.5 Å."""
    step = (r_max - 1.0) / (count - 1)
    return [round(0.5 + k * step, 4) for k in range(count)]


class BPNN(EnergyHead, Potential):
    """Behler–Parrinello potential.

    Args:
        species: chemical symbols or atomic numbers.
        r_max: cutoff r_c of the symmetry functions (Å).
        radial_etas: G2 widths η (Å⁻²); default: one width matched to the spacing of the shifts.
        radial_shifts: G2 centres R_s (Å); default 8 evenly from 0.5 Å to r_max - 0.5 Å.
        angular_etas: G4/G5 η (Å⁻²).
        zetas, lambdas: G4/G5 ζ and λ (±1).
        angular: ``"g4"`` or ``"g5"``.
        hidden: hidden layer widths of each element's network.
        activation: nonlinearity name (``mpnn_ip.nn.activations``), Behler's is ``"tanh"``.
        feature_mean, feature_std: ``[S][F]`` standardisation (None: 0 and 1 until :meth:`prepare`).
        e0s, energy_scale, energy_shift, zbl: isolated-atom energies added by the base class and the shared,
            trained energy head (eV; :meth:`~mpnn_ip.models.energy_head.EnergyHead.build_energy_head`).
    """

    def __init__(
        self,
        species: Sequence[int | str],
        r_max: float = 6.0,
        radial_etas: Sequence[float] | None = None,
        radial_shifts: Sequence[float] | None = None,
        angular_etas: Sequence[float] = (0.01, 0.05),
        zetas: Sequence[float] = (1, 2, 4),
        lambdas: Sequence[float] = (-1, 1),
        angular: str = "g4",
        hidden: Sequence[int] = (32, 32),
        activation: str = "tanh",
        feature_mean: Sequence[Sequence[float]] | None = None,
        feature_std: Sequence[Sequence[float]] | None = None,
        e0s: Mapping | None = None,
        energy_scale: float = 1.0,
        energy_shift: float | Sequence[float] | Mapping = 0.0,
        zbl: bool | str = False,
    ):
        super().__init__(species, r_max, e0s)
        if radial_shifts is None:
            radial_shifts = default_radial_shifts(self.r_max)
        if radial_etas is None:
            spacing = (max(radial_shifts) - min(radial_shifts)) / max(len(radial_shifts) - 1, 1) or 1.0
            radial_etas = [round(0.5 / spacing**2, 4)]
        self.symmetry_functions = SymmetryFunctions(
            self.num_species, self.r_max, radial_etas, radial_shifts, angular_etas, zetas, lambdas, angular
        )
        num_features = self.symmetry_functions.num_features
        shape = (self.num_species, num_features)
        mean = torch.zeros(shape) if feature_mean is None else torch.tensor(feature_mean, dtype=torch.float32)
        std = torch.ones(shape) if feature_std is None else torch.tensor(feature_std, dtype=torch.float32)
        if mean.shape != shape or std.shape != shape:
            raise ValueError(
                f"BPNN: feature_mean/feature_std must have shape {list(shape)} (species x symmetry functions)"
            )
        self.register_buffer("feature_mean", mean)
        self.register_buffer("feature_std", std)
        self.activation = activation_fn(activation)
        self.element_networks = torch.nn.ModuleList()
        for _ in range(self.num_species):
            widths = [num_features, *hidden, 1]
            self.element_networks.append(
                torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
            )
        self.build_energy_head(energy_scale, energy_shift, trainable=True, zbl=zbl)

    def _network(self, element: int, features: torch.Tensor) -> torch.Tensor:
        layers = self.element_networks[element]
        for layer in layers[:-1]:
            features = self.activation(layer(features))
        return layers[-1](features).squeeze(-1)

    def node_energies(self, species, edge_index, edge_vectors, batch, num_graphs):
        features = self.symmetry_functions(species, edge_index, edge_vectors)
        standardized = (features - self.feature_mean[species]) / self.feature_std[species]
        isolated = -self.feature_mean / self.feature_std
        energies = torch.zeros(species.shape[0], dtype=features.dtype, device=features.device)
        for element in range(self.num_species):
            mask = species == element
            reference = self._network(element, isolated[element : element + 1])
            energies = energies.index_put((mask,), self._network(element, standardized[mask]) - reference)
        return self.head_energies(energies, species, edge_index, torch.linalg.norm(edge_vectors, dim=-1))

    @torch.no_grad()
    def fit_feature_standardization(self, batches: Iterable) -> None:
        """Per-element mean and standard deviation of the symmetry functions over ``batches``.

        ``batches``: an iterable of collated batches (or single graphs), e.g. a DataLoader over
        the training split. Features that never vary for an element get std 1.
        """
        dtype = torch.float64
        total = torch.zeros(self.num_species, dtype=dtype)
        sums = torch.zeros(self.feature_mean.shape, dtype=dtype)
        squares = torch.zeros(self.feature_mean.shape, dtype=dtype)
        device = self.feature_mean.device
        for data in batches:
            graph = self.graph(data.to(device))
            species = graph["species"]
            features = self.symmetry_functions(species, graph["edge_index"], graph["edge_vectors"]).to("cpu", dtype)
            species = species.cpu()
            total += torch.bincount(species, minlength=self.num_species).to(dtype)
            sums.index_add_(0, species, features)
            squares.index_add_(0, species, features**2)
        count = total.clamp(min=1).unsqueeze(-1)
        mean = sums / count
        std = (squares / count - mean**2).clamp(min=0).sqrt()
        std = torch.where(std > 1e-6 * (mean.abs() + 1e-6), std, torch.ones_like(std))
        self.feature_mean.copy_(mean.to(self.feature_mean))
        self.feature_std.copy_(std.to(self.feature_std))

    def prepare(self, graphs: list) -> dict:
        """Fit the feature standardisation on the training graphs (see :meth:`Potential.prepare`)."""
        from mpnn_ip.data.atomic_graph import collate

        self.fit_feature_standardization(collate(graphs[k : k + 64]) for k in range(0, len(graphs), 64))
        return {}
