"""Forces, virial, stress and per-atom virials of a potential's energy: the one place that differentiates it.

Two routes, chosen by :meth:`mpnn_ip.models.Potential.forward`:

- :func:`position_and_strain_derivatives`: ``-dE/dr`` for the forces and ``-dE/dstrain`` for the virial
  (a zero strain applied to positions and cell), what training and the calculator use;
- :func:`edge_derivatives`: one gradient ``g_e = dE/dr_e`` w.r.t. the edge vectors gives the forces
  (``-dE/dr_i`` = sum over i's edges of ±g_e), the per-atom virials (each edge's ``-r_e ⊗ g_e`` half to
  each end) and the virial as their sum: for models whose energy depends on positions only through
  the edge vectors (all of ours), at the cost of forces alone.
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
    out: dict[str, torch.Tensor], graph: Mapping[str, Any], compute_stress: bool, create_graph: bool
) -> None:
    """``out["forces"]`` [N, 3], ``out["atomic_virial"]`` [N, 3, 3] (eV) and, with ``compute_stress``, the
    virial and stress, from ``g_e = dE/dr_e`` (``graph`` as :meth:`Potential.graph` returns it)."""
    vectors, (centre, neighbour) = graph["edge_vectors"], graph["edge_index"]
    (edge_grad,) = torch.autograd.grad([out["energy"].sum()], [vectors], create_graph=create_graph, allow_unused=True)
    if edge_grad is None:
        edge_grad = torch.zeros_like(vectors)
    n_atoms = graph["pos"].shape[0]
    ends = torch.cat([centre, neighbour])
    out["forces"] = scatter(torch.cat([edge_grad, -edge_grad]), ends, dim=0, dim_size=n_atoms, reduce="sum")
    edge_virial = -0.5 * vectors.unsqueeze(2) * edge_grad.unsqueeze(1)  # [E, 3, 3]
    out["atomic_virial"] = scatter(edge_virial.repeat(2, 1, 1), ends, dim=0, dim_size=n_atoms, reduce="sum")
    if compute_stress:
        virial = scatter(out["atomic_virial"], graph["batch"], dim=0, dim_size=graph["num_graphs"], reduce="sum")
        add_stress(out, virial, graph["cell"])


def add_stress(out: dict[str, torch.Tensor], virial: torch.Tensor, cell: torch.Tensor) -> None:
    """``out["virial"]`` [B, 3, 3] (eV) and ``out["stress"] = -virial / volume`` (eV/Å³; 0 without a volume)."""
    volume = torch.linalg.det(cell.detach()).abs()
    safe = torch.where(volume > 0, volume, torch.ones_like(volume))
    out["virial"] = virial
    out["stress"] = torch.where((volume > 0).view(-1, 1, 1), -virial / safe.view(-1, 1, 1), torch.zeros_like(virial))
