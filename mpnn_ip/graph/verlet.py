"""Verlet neighbour list: a radius graph built at ``r_max + skin`` and reused while atoms move little.

Between builds each call only filters the stored pairs to ``r_max`` (one edge-vector evaluation,
no search). The stored list holds every pair closer than ``r_max`` as long as no atom has moved
more than ``skin / 2`` since the build (two atoms then approach each other by at most ``skin``)
and the cell, periodicity and atoms are the same; otherwise it is rebuilt. The result is the
same set of edges as :func:`mpnn_ip.graph.radius_graph_pbc` at ``r_max`` on the current positions.
"""

from __future__ import annotations

import torch

from mpnn_ip.graph.radius import radius_graph_pbc
from mpnn_ip.graph.vectors import edge_vectors


class VerletList:
    """Edges within ``r_max`` (Å) of a changing structure, searched at ``r_max + skin`` (Å).

    ``skin = 0`` searches at every call. Counters: ``calls`` and ``builds`` (searches done).
    """

    def __init__(self, r_max: float, skin: float = 0.0):
        if not skin >= 0.0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.r_max, self.skin = float(r_max), float(skin)
        self.calls = self.builds = 0
        self._reference = None  # (pos, cell, pbc, batch) at the last build, float64
        self._pairs = None  # (edge_index, cell_shifts) within r_max + skin of the reference
        #: squared lengths (Å², float64) of the edges the last call returned; None after a search
        self.last_squared_lengths: torch.Tensor | None = None

    def edges(
        self, pos: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, batch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(edge_index [2, E], cell_shifts [E, 3])`` of the pairs closer than ``r_max`` (same
        arguments and conventions as :func:`~mpnn_ip.graph.radius_graph_pbc`)."""
        self.calls += 1
        with torch.no_grad():
            pos64, cell64 = pos.detach().to(torch.float64), cell.detach().to(device=pos.device, dtype=torch.float64)
            self.last_squared_lengths = None
            if self.skin == 0.0:
                self.builds += 1
                return radius_graph_pbc(pos64, cell64, pbc, batch, self.r_max)
            if self._needs_build(pos64, cell64, pbc, batch):
                self.builds += 1
                self._pairs = radius_graph_pbc(pos64, cell64, pbc, batch, self.r_max + self.skin)
                self._reference = (pos64.clone(), cell64.clone(), pbc.clone(), batch.clone())
            edge_index, cell_shifts = self._pairs
            vectors = edge_vectors(pos64, cell64, edge_index, cell_shifts, batch)
            squared = (vectors * vectors).sum(dim=1)
            keep = squared < self.r_max**2
            self.last_squared_lengths = squared[keep]
            return edge_index[:, keep], cell_shifts[keep]

    @property
    def rebuild_fraction(self) -> float:
        """Share of calls that searched (1.0 without skin)."""
        return self.builds / self.calls if self.calls else 0.0

    def _needs_build(self, pos, cell, pbc, batch) -> bool:
        if self._reference is None:
            return True
        ref_pos, ref_cell, ref_pbc, ref_batch = self._reference
        if pos.shape != ref_pos.shape or not torch.equal(batch, ref_batch) or not torch.equal(pbc, ref_pbc):
            return True
        if not torch.equal(cell, ref_cell):
            return True
        moved = (pos - ref_pos).norm(dim=1).max() if len(pos) else pos.new_zeros(())
        return bool(moved > 0.5 * self.skin)
