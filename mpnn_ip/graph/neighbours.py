"""Neighbour counts of a batch of frames: the one counter behind statistics, data checks and the store."""

from __future__ import annotations

import torch

from mpnn_ip.graph.radius import radius_graph_pbc


def neighbours_per_atom(
    pos: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, batch: torch.Tensor, r_max: float
) -> torch.Tensor:
    """Neighbours within ``r_max`` (Å) of each atom, periodic images counted: ``[n_atoms]`` long.

    Args (as for :func:`~mpnn_ip.graph.radius_graph_pbc`): ``pos [n_atoms, 3]`` Å, ``cell [n_frames, 3, 3]``
    Å, ``pbc [n_frames, 3]``, ``batch [n_atoms]`` frame index of each atom.
    """
    with torch.no_grad():
        edge_index, _ = radius_graph_pbc(pos, cell, pbc, batch, float(r_max))
    return torch.bincount(edge_index[0], minlength=pos.shape[0])
