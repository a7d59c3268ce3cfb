"""Edge vectors from positions, cell and integer image shifts (differentiable)."""

from __future__ import annotations

import torch


def edge_vectors(
    pos: torch.Tensor,
    cell: torch.Tensor,
    edge_index: torch.Tensor,
    cell_shifts: torch.Tensor,
    batch: torch.Tensor,
) -> torch.Tensor:
    """Vector from centre atom i to neighbour j of every edge, in Å.

    ``vector[e] = pos[j] - pos[i] + cell_shifts[e] @ cell[batch[i]]`` with ``i, j = edge_index``.
    Differentiable with respect to ``pos`` and ``cell`` (forces and stress flow through it).

    Args:
        pos: [n_atoms, 3] Å.
        cell: [n_frames, 3, 3] Å, rows are lattice vectors.
        edge_index: [2, n_edges] long; row 0 centre atom i, row 1 neighbour j.
        cell_shifts: [n_edges, 3] integer image of j, in units of the lattice vectors.
        batch: [n_atoms] long, frame of each atom.

    Returns:
        [n_edges, 3] in the dtype of ``pos``.
    """
    centre, neighbour = edge_index[0], edge_index[1]
    shifts = cell_shifts.to(pos.dtype)
    image_offsets = torch.einsum("ek,ekx->ex", shifts, cell.to(pos.dtype)[batch[centre]])
    return pos[neighbour] - pos[centre] + image_offsets


def strained(
    pos: torch.Tensor, cell: torch.Tensor, strain: torch.Tensor, batch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``[n_atoms, 3]`` and cell ``[n_frames, 3, 3]`` (Å) deformed by ``1 + sym(strain)`` of their frame;
    ``strain`` [n_frames, 3, 3] (symmetrised here) is what the virial ``-dE/dstrain`` is the derivative by."""
    symmetric = 0.5 * (strain + strain.transpose(1, 2))
    return pos + torch.einsum("ni,nij->nj", pos, symmetric[batch]), cell + torch.bmm(cell, symmetric)
