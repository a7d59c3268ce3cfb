"""Forces, virial, stress and per-atom virials of a potential's energy: the one place that differentiates it.

Two routes, chosen by :meth:`mpnn_ip.models.Potential.forward`:

- :func:`position_and_strain_derivatives`: ``-dE/dr`` for the forces and ``-dE/dstrain`` for the virial
  (a zero strain applied to positions and cell), what training and the calculator use;
- :func:`edge_derivatives`: one gradient ``g_e = dE/dr_e`` w.r.t. the edge vectors gives the forces
  (``-dE/dr_i`` = sum over i's edges of ±g_e), the per-atom virials (each edge's ``-r_e ⊗ g_e`` half to
  each end) and the virial as their sum: for models whose energy depends on positions only through
  the edge vectors (all of ours, with the dispersion term's pairs as a second edge set; LES reads positions
  directly and adds its own per-atom virials), at the cost of forces alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch_geometric.utils import scatter


def zero_strain(num_graphs: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``[B, 3, 3]`` zeros that require grad: the strain the virial is the derivative by."""
    return torch.zeros(num_graphs, 3, 3, dtype=dtype, device=device, requires_grad=True)


def position_and_strain_derivatives(
    out: dict[str, torch.Tensor],
    positions: torch.Tensor | None,
    strain: torch.Tensor | None,
    cell: torch.Tensor,
    create_graph: bool,
) -> None:
    """``out["forces"]`` [N, 3] (eV/Å) when ``positions`` is given, ``out["virial"]``/``out["stress"]`` when
    ``strain`` is (see :func:`add_stress`); both from one backward pass of ``out["energy"]``."""
    wrt = [w for w in (positions, strain) if w is not None]
    grads = torch.autograd.grad([out["energy"].sum()], wrt, create_graph=create_graph, allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(w) for g, w in zip(grads, wrt)]
    if positions is not None:
        out["forces"] = -grads[0]
    if strain is not None:
        add_stress(out, -grads[-1], cell)


def edge_derivatives(
    out: dict[str, torch.Tensor],
    graph: Mapping[str, Any],
    compute_stress: bool,
    create_graph: bool,
    direct_atomic_virial: torch.Tensor | None = None,
) -> None:
    """``out["forces"]`` [N, 3], ``out["atomic_virial"]`` [N, 3, 3] (eV) and, with ``compute_stress``, the
    virial and stress, from ``g_e = dE/dr_e`` (``graph`` as :meth:`Potential.graph` returns it).

    Every edge set of the graph counts: the model's edges and, when present, the dispersion term's own pairs
    (``dispersion_edge_index``, ``dispersion_vectors``). A term that reads positions directly (LES) reads them
    from ``graph["direct_pos"]``, a leaf of its own: its gradient joins the forces, and its per-atom virials
    (at fixed charges; ``direct_atomic_virial`` [N, 3, 3]) join the edges'. All from one gradient call.
    """
    edge_sets = [(graph["edge_index"], graph["edge_vectors"])]
    if graph.get("dispersion_vectors") is not None:
        edge_sets.append((graph["dispersion_edge_index"], graph["dispersion_vectors"]))
    direct = graph.get("direct_pos")
    direct = direct if direct is not None and direct is not graph["pos"] and direct.requires_grad else None
    wrt = [vectors for _, vectors in edge_sets] + ([direct] if direct is not None else [])
    grads = torch.autograd.grad([out["energy"].sum()], wrt, create_graph=create_graph, allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(w) for g, w in zip(grads, wrt)]
    n_atoms = graph["pos"].shape[0]
    forces, atomic_virial = 0, 0
    for (edge_index, vectors), edge_grad in zip(edge_sets, grads):
        ends = torch.cat([edge_index[0], edge_index[1]])
        forces = forces + scatter(torch.cat([edge_grad, -edge_grad]), ends, dim=0, dim_size=n_atoms, reduce="sum")
        edge_virial = -0.5 * vectors.unsqueeze(2) * edge_grad.unsqueeze(1)  # [E, 3, 3]
        atomic_virial = atomic_virial + scatter(
            edge_virial.repeat(2, 1, 1), ends, dim=0, dim_size=n_atoms, reduce="sum"
        )
    if direct is not None:
        forces = forces - grads[-1]
    if direct_atomic_virial is not None:
        atomic_virial = atomic_virial + direct_atomic_virial.to(atomic_virial.dtype)
    out["forces"], out["atomic_virial"] = forces, atomic_virial
    if compute_stress:
        virial = scatter(out["atomic_virial"], graph["batch"], dim=0, dim_size=graph["num_graphs"], reduce="sum")
        add_stress(out, virial, graph["cell"])


def add_stress(out: dict[str, torch.Tensor], virial: torch.Tensor, cell: torch.Tensor) -> None:
    """``out["virial"]`` [B, 3, 3] (eV) and ``out["stress"] = -virial / volume`` (eV/Å³; 0 without a volume)."""
    volume = torch.linalg.det(cell.detach()).abs()
    safe = torch.where(volume > 0, volume, torch.ones_like(volume))
    out["virial"] = virial
    out["stress"] = torch.where((volume > 0).view(-1, 1, 1), -virial / safe.view(-1, 1, 1), torch.zeros_like(virial))
