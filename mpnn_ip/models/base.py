"""The base class of every potential: energy from positions, forces and stress by autograd.

Subclasses implement :meth:`Potential.node_energies` (per-atom energies without E0 from
species and edge vectors). This class owns everything around it: dtype, the radius graph
(built on the device when the input has none), the strain for stress, E0, the per-frame sum
and the one autograd call for forces, virial and stress.
"""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import torch
from ase.data import atomic_numbers as _symbol_to_z
from ase.data import chemical_symbols
from torch_geometric.utils import scatter

from mpnn_ip.errors import DataError
from mpnn_ip.graph import edge_vectors, radius_graph_pbc


def normalize_species(species: Sequence[int | str]) -> list[int]:
    """Chemical symbols or atomic numbers -> sorted unique atomic numbers."""
    out = set()
    for s in species:
        if isinstance(s, str):
            if s not in _symbol_to_z:
                raise ValueError(f"unknown chemical symbol {s!r} in species {list(species)}")
            out.add(_symbol_to_z[s])
        else:
            out.add(int(s))
    if not out:
        raise ValueError("a model needs at least one species")
    return sorted(out)


class Potential(torch.nn.Module):
    """Base potential: ``forward(inputs) -> {energy, node_energy, forces, stress, virial}``.

    Args:
        species: chemical symbols or atomic numbers the model knows.
        r_max: cutoff radius (Å).
        e0s: per-species reference energy (eV) added to each atom, ``{Z or symbol: eV}``;
            missing species get 0.

    Class attribute ``fitted_in_closed_form``: True for models that :meth:`prepare` fits completely
    (no gradient descent afterwards; the training command validates and saves them instead).
    """

    fitted_in_closed_form: bool = False

    def __init__(self, species: Sequence[int | str], r_max: float, e0s: Mapping | None = None):
        super().__init__()
        self.species = normalize_species(species)
        self.r_max = float(r_max)
        table = torch.full((119,), -1, dtype=torch.long)
        table[torch.tensor(self.species)] = torch.arange(len(self.species))
        self.register_buffer("species_table", table, persistent=False)
        # float64 from the start: a float32 buffer cast to float64 later keeps float32 rounding
        # (~|E0| * 6e-8 eV per atom), which float64 models must not carry.
        e0 = torch.zeros(len(self.species), dtype=torch.float64)
        for key, value in (e0s or {}).items():
            z = _symbol_to_z[key] if isinstance(key, str) else int(key)
            if z in self.species:
                e0[self.species.index(z)] = float(value)
        self.register_buffer("e0", e0)

    @property
    def num_species(self) -> int:
        return len(self.species)

    @property
    def dtype(self) -> torch.dtype:
        """The model's float dtype: that of its first floating parameter or buffer other than E0."""
        for name, tensor in itertools.chain(self.named_parameters(), self.named_buffers()):
            if name != "e0" and tensor.is_floating_point():
                return tensor.dtype
        return self.e0.dtype

    def species_index(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """[N] atomic numbers -> [N] indices into ``self.species``; unknown elements raise DataError."""
        index = self.species_table[atomic_numbers]
        if not torch.compiler.is_compiling() and bool((index < 0).any()):
            unknown = sorted({chemical_symbols[int(z)] for z in atomic_numbers[index < 0].tolist()})
            known = [chemical_symbols[z] for z in self.species]
            raise DataError(f"element(s) {unknown} are not among the species this model was built for {known}")
        return index

    def node_energies(
        self,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        batch: torch.Tensor,
        num_graphs: int,
    ) -> torch.Tensor:
        """Per-atom energies (eV) without E0.

        Args:
            species: [N] species index (into ``self.species``).
            edge_index: [2, E]; row 0 the centre atom i (messages are summed there), row 1 the neighbour j.
            edge_vectors: [E, 3] Å, r_j - r_i (+ periodic shift); differentiable.
            batch: [N] frame index of each atom.
            num_graphs: number of frames B.
        Returns: [N] energies.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement node_energies")

    def prepare(self, graphs: list) -> dict:
        """Data-dependent setup from the training graphs (``AtomicGraph`` list), called once before
        training (not on resume). None here; e.g. BPNN standardises its features, GAP fits itself.

        Returns: a JSON-able report for the run folder (empty when there is nothing to report).
        """
        return {}

    def forward(
        self,
        inputs,
        compute_forces: bool = True,
        compute_stress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Energy [B] (eV), node_energy [N], and forces [N,3] (eV/Å), stress and virial [B,3,3] (eV/Å³, eV).

        ``inputs`` is a batch from :func:`mpnn_ip.data.collate`, a single graph or a dict of tensors
        with ``pos, atomic_numbers, cell, pbc`` (+ ``batch``); optional ``edge_index, cell_shifts``.
        The autograd graph is kept (``create_graph``) only while ``self.training``.
        """
        from mpnn_ip.data.atomic_graph import to_inputs

        if not isinstance(inputs, Mapping) or "batch" not in inputs:
            inputs = to_inputs(inputs)
        pos = inputs["pos"].to(self.dtype)
        cell = inputs["cell"].to(self.dtype).reshape(-1, 3, 3)
        pbc = inputs["pbc"].reshape(-1, 3)
        batch = inputs["batch"]
        num_graphs = cell.shape[0]
        species = self.species_index(inputs["atomic_numbers"])

        if "edge_index" in inputs and inputs["edge_index"] is not None:
            edge_index, cell_shifts = inputs["edge_index"], inputs["cell_shifts"]
        else:
            with torch.no_grad():
                edge_index, cell_shifts = radius_graph_pbc(pos.detach(), cell.detach(), pbc, batch, self.r_max)

        wrt = []
        if compute_forces:
            pos = pos.detach().requires_grad_(True)
            wrt.append(pos)
        strain = None
        if compute_stress:
            strain = torch.zeros(num_graphs, 3, 3, dtype=self.dtype, device=pos.device, requires_grad=True)
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            pos = pos + torch.einsum("ni,nij->nj", pos, symmetric[batch])
            cell = cell + torch.bmm(cell, symmetric)
            wrt.append(strain)

        vectors = edge_vectors(pos, cell, edge_index, cell_shifts, batch)
        node_energy = self.node_energies(species, edge_index, vectors, batch, num_graphs) + self.e0[species].to(self.dtype)
        energy = scatter(node_energy, batch, dim=0, dim_size=num_graphs, reduce="sum")
        out = {"energy": energy, "node_energy": node_energy}
        if not wrt:
            return out

        grads = torch.autograd.grad(
            [energy.sum()], wrt, create_graph=self.training, allow_unused=True
        )
        grads = [g if g is not None else torch.zeros_like(w) for g, w in zip(grads, wrt)]
        if compute_forces:
            out["forces"] = -grads[0]
        if compute_stress:
            virial = -grads[-1]
            volume = torch.linalg.det(cell.detach()).abs()
            safe = torch.where(volume > 0, volume, torch.ones_like(volume))
            stress = torch.where((volume > 0).view(-1, 1, 1), -virial / safe.view(-1, 1, 1), torch.zeros_like(virial))
            out["virial"] = virial
            out["stress"] = stress
        return out
