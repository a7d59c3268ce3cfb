"""A dispersion correction added at inference to a model trained without one (``dispersion="d3bj:pbe"``).

The correction's energy, per-atom energies, forces, virial, stress and per-atom virials are computed in
float64 from one gradient w.r.t. its own pair vectors (:func:`~mpnn_ip.models.derivatives.edge_derivatives`:
the D3 energy depends on positions only through them) and added to the model's outputs.
"""

from __future__ import annotations

import torch
from torch_geometric.utils import scatter

from mpnn_ip.graph import edge_vectors
from mpnn_ip.graph.verlet import VerletList
from mpnn_ip.models.derivatives import edge_derivatives
from mpnn_ip.nn.dispersion import parse_dispersion

#: outputs of a model that the correction adds to (the others are left as the model gave them)
ADDED_OUTPUTS = ("energy", "node_energy", "forces", "virial", "stress", "atomic_virial")


class DispersionCorrection:
    """``spec`` (``"d3bj:<functional>"``, see :func:`~mpnn_ip.nn.dispersion.parse_dispersion`) as outputs to add.

    ``skin`` (Å): its pairs are kept in a Verlet list (:class:`~mpnn_ip.graph.verlet.VerletList`) searched at
    its cutoff + skin, as the model's are (0 = search at every call). Raises ``ConfigError`` for an unknown
    kind or functional, with the known ones.
    """

    def __init__(self, spec: str, skin: float = 0.0):
        self.spec = str(spec)
        self.module = parse_dispersion(self.spec)
        if self.module is None:
            raise ValueError("DispersionCorrection needs a dispersion, e.g. 'd3bj:pbe'")
        #: the pairs within the dispersion's cutoff (``builds``/``calls`` count the searches)
        self.neighbor_list = VerletList(self.module.graph_cutoff, skin)

    def outputs(self, inputs: dict[str, torch.Tensor], stress: bool) -> dict[str, torch.Tensor]:
        """The correction on ``inputs`` (a model's input dict: pos [N, 3] Å, atomic_numbers, cell, pbc, batch):
        energy [B] and node_energy [N] (eV), forces [N, 3] (eV/Å), atomic_virial [N, 3, 3] (eV) and, with
        ``stress``, virial [B, 3, 3] (eV) and stress (eV/Å³); float64, detached."""
        self.module.to(inputs["pos"].device)
        pos = inputs["pos"].detach().to(torch.float64)
        cell = inputs["cell"].detach().to(torch.float64).reshape(-1, 3, 3)
        batch, pbc = inputs["batch"], inputs["pbc"].reshape(-1, 3)
        edge_index, shifts = self.neighbor_list.edges(pos, cell, pbc, batch)
        with torch.enable_grad():
            vectors = edge_vectors(pos, cell, edge_index, shifts, batch).requires_grad_(True)
            node_energy = self.module.atomic_energies(inputs["atomic_numbers"], edge_index, vectors)
            out = {
                "node_energy": node_energy,
                "energy": scatter(node_energy, batch, dim=0, dim_size=cell.shape[0], reduce="sum"),
            }
            graph = {
                "edge_vectors": vectors,
                "edge_index": edge_index,
                "pos": pos,
                "batch": batch,
                "num_graphs": cell.shape[0],
                "cell": cell,
            }
            edge_derivatives(out, graph, stress, create_graph=False)
        return {key: value.detach() for key, value in out.items()}

    def add_to(self, out: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor], stress: bool) -> dict:
        """``out`` (a model's outputs) with the correction added to each of :data:`ADDED_OUTPUTS` it has."""
        correction = self.outputs(inputs, stress)
        added = dict(out)
        for key in ADDED_OUTPUTS:
            if key in out and key in correction:
                added[key] = out[key] + correction[key].to(out[key].dtype)
        return added
