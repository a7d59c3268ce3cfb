"""Enumerate small integer boxes per point, vectorised (no Python loop over points)."""

from __future__ import annotations

import torch


def expand_integer_boxes(low: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All integer triples ``low[p] + t`` with ``0 <= t[k] < count[p, k]``, for every point p.

    Args:
        low: [n_points, 3] long, first triple of each point's box.
        count: [n_points, 3] long >= 0, box extent along each axis.

    Returns:
        (owner [n_out] long, triple [n_out, 3] long): the point each triple belongs to
        (non-decreasing) and the triple itself; points with an empty box produce nothing.
    """
    device = low.device
    per_point = count.prod(dim=1)
    owner = torch.repeat_interleave(torch.arange(low.shape[0], device=device), per_point)
    first = torch.cumsum(per_point, dim=0) - per_point
    rank = torch.arange(owner.shape[0], device=device) - first[owner]
    owner_count = count[owner]
    offset_0 = rank % owner_count[:, 0]
    rank = torch.div(rank, owner_count[:, 0], rounding_mode="floor")
    offset_1 = rank % owner_count[:, 1]
    offset_2 = torch.div(rank, owner_count[:, 1], rounding_mode="floor")
    triple = low[owner] + torch.stack([offset_0, offset_1, offset_2], dim=1)
    return owner, triple
