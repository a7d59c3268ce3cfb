"""Spatial decomposition of a frame into blocks, so the neighbour search stays linear in atoms.

torch-cluster's CUDA kernel compares every query with every source point of the same batch
element, O(n^2) per frame. Giving each spatial block of a frame its own batch id makes the
work O(n): a block's query atoms are compared with the points of the block plus a halo of
width r_max around it. Blocks are boxes in fractional coordinates of the completed cell, at
least ``block_edge`` Å thick between opposite faces, so a point is in the halo of at most its
two neighbouring blocks along each axis and the union over blocks is exactly the edge set.
"""

from __future__ import annotations

import torch

from mpnn_ip.graph.boxes import expand_integer_boxes
from mpnn_ip.graph.images import BAND_SLACK

#: Upper bound on blocks per axis (keeps the linear block key far from int64 overflow).
_MAX_BLOCKS_PER_AXIS = 1 << 16


class BlockGrid:
    """Per-frame block grids over fractional coordinates.

    Args:
        image_fractional: [n_points, 3] fractional coordinates of all search points.
        point_frame: [n_points] long, frame of each point.
        plane_spacing: [n_frames, 3] Å per unit fractional coordinate along each axis.
        blocked: [n_frames] bool, frames to split; the others form one block each.
        block_edge: minimal block thickness in Å (>= r_max).
    """

    def __init__(
        self,
        image_fractional: torch.Tensor,
        point_frame: torch.Tensor,
        plane_spacing: torch.Tensor,
        blocked: torch.Tensor,
        block_edge: float,
    ):
        n_frames = plane_spacing.shape[0]
        index = point_frame[:, None].expand(-1, 3)
        inf = torch.full((n_frames, 3), float("inf"), dtype=image_fractional.dtype, device=image_fractional.device)
        self.low = inf.scatter_reduce(0, index, image_fractional, "amin", include_self=True)
        high = (-inf).scatter_reduce(0, index, image_fractional, "amax", include_self=True)
        extent = torch.nan_to_num(high - self.low, nan=0.0, posinf=0.0, neginf=0.0)
        self.low = torch.nan_to_num(self.low, posinf=0.0)
        per_axis = torch.floor(extent * plane_spacing / block_edge).clamp(1, _MAX_BLOCKS_PER_AXIS)
        self.per_axis = torch.where(blocked[:, None], per_axis, torch.ones_like(per_axis)).long()
        self.width = extent / self.per_axis
        blocks_per_frame = self.per_axis.prod(dim=1)
        self.frame_offset = torch.cumsum(blocks_per_frame, dim=0) - blocks_per_frame

    def block_of(self, fractional: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        """[n, 3] long block triple of each point (clamped into its frame's grid)."""
        per_axis = self.per_axis[frame]
        position = (fractional - self.low[frame]) / self.width[frame].clamp(min=1e-300)
        block = torch.floor(position).clamp(min=0).long()
        return torch.minimum(block, per_axis - 1)

    def key(self, block: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        """[n] long, one id per (frame, block), unique over all frames."""
        per_axis = self.per_axis[frame]
        linear = (block[:, 0] * per_axis[:, 1] + block[:, 1]) * per_axis[:, 2] + block[:, 2]
        return self.frame_offset[frame] + linear

    def halo_copies(
        self, fractional: torch.Tensor, frame: torch.Tensor, band: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of every point into each block whose r_max halo contains it.

        Args:
            fractional: [n_points, 3] fractional coordinates.
            frame: [n_points] long.
            band: [n_frames, 3] r_max / plane spacing (halo width in fractional units).

        Returns:
            (point [n_copies] long, key [n_copies] long): the point each copy is of, and the
            block it is a search source for (its own block, plus neighbours within r_max).
        """
        block = self.block_of(fractional, frame)
        per_axis = self.per_axis[frame]
        low_face = self.low[frame] + block * self.width[frame]
        high_face = low_face + self.width[frame]
        halo = band[frame] * (1.0 + BAND_SLACK) + BAND_SLACK
        near_low = ((fractional - low_face) <= halo) & (block > 0)
        near_high = ((high_face - fractional) <= halo) & (block < per_axis - 1)
        point, offset = expand_integer_boxes(-near_low.long(), 1 + near_low.long() + near_high.long())
        return point, self.key(block[point] + offset, frame[point])
