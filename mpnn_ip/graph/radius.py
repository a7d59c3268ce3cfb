"""Periodic radius graph for a batch of frames, built with torch-cluster on any device.

Pipeline (all integer shifts, no gradients):

1. complete each frame's cell (non-periodic rows replaced by an orthonormal complement) and
   wrap atoms into [0, 1) along periodic directions, remembering the wrap shift;
2. make the periodic images within r_max of the cell (only the surface layer of large cells,
   full replicas of cells thinner than r_max), see :mod:`mpnn_ip.graph.images`;
3. optionally split large frames into spatial blocks with an r_max halo, so that the search
   is linear in atoms even on CUDA, see :mod:`mpnn_ip.graph.blocks`;
4. ``torch_cluster.radius`` between the wrapped atoms (queries) and the images (sources),
   each (frame, block) a separate batch element, retrying with a larger neighbour bound
   whenever some atom hit it (torch-cluster drops neighbours beyond the bound silently);
5. keep pairs with length < r_max (strictly, like ASE) computed in float64 from the original
   positions, drop the zero-shift self pair, and translate image shifts back to the
   original (unwrapped) positions.
"""

from __future__ import annotations

import math

import torch

from mpnn_ip.graph.blocks import BlockGrid
from mpnn_ip.graph.cells import complete_cell, reciprocal_lengths, wrap_positions
from mpnn_ip.graph.images import periodic_images

#: Frames with more search points (atoms plus images) than this are split into blocks.
#: CUDA: torch-cluster compares all pairs of a batch element, O(n^2); below ~10^4 points one
#: GPU wave does that faster than the sorting that blocks need (estimate, not measured here).
#: CPU: torch-cluster builds a KD-tree per batch element, already O(n log n); blocks add halo
#: copies and sorting on top and were slower at every size measured, so they are never used by default
#: (measurements: docs/performance.md, "Why the defaults are what they are", Radius-graph spatial blocks).
_BLOCK_MIN_POINTS = {"cuda": 16384, "cpu": 1 << 62}
#: Minimal block thickness in units of r_max (halo copies vs. pairs compared per query).
_BLOCK_EDGE_OVER_R_MAX = 2.0
#: Search radius slack; candidates are filtered exactly afterwards.
_SEARCH_SLACK = 1e-6


def radius_graph_pbc(
    pos: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    batch: torch.Tensor,
    r_max: float,
    max_num_neighbors: int | None = None,
    *,
    _block_min_points: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs (i, j, shift) closer than ``r_max``, with periodic images, for a batch of frames.

    Same set of (i, j, shift) as ``ase.neighborlist.neighbor_list("ijS", atoms, r_max)`` on
    each frame (global atom indices): both directions, an atom's own periodic images at
    non-zero shift included, the zero-shift self pair excluded. Positions need not be wrapped.

    Args:
        pos: [n_atoms, 3] Å, any float dtype and device.
        cell: [n_frames, 3, 3] Å, rows are lattice vectors; rows of non-periodic directions are
            ignored (zeros allowed).
        pbc: [n_frames, 3] bool, periodicity of each lattice direction.
        batch: [n_atoms] long, frame of each atom, sorted.
        r_max: cutoff radius in Å; pairs with length < r_max are edges.
        max_num_neighbors: None (default) finds every neighbour whatever the density. An int
            caps the neighbours per atom and raises ``ValueError`` if some atom has more.
        _block_min_points: private; frames with more search points (atoms plus periodic
            images) are split into spatial blocks. Defaults depend on the device.

    Returns:
        (edge_index [2, n_edges] long, cell_shifts [n_edges, 3] long) on ``pos.device``; row 0
        is the centre atom i, row 1 the neighbour j, and the edge vector is
        ``pos[j] - pos[i] + cell_shifts @ cell[batch[i]]`` (see :func:`edge_vectors`).
        Edges are sorted by centre atom i.
    """
    _check_inputs(pos, cell, pbc, batch, r_max, max_num_neighbors)
    if _block_min_points is None:
        _block_min_points = _BLOCK_MIN_POINTS["cuda" if pos.is_cuda else "cpu"]
    with torch.no_grad():
        return _radius_graph_pbc(
            pos.detach().to(torch.float64),
            cell.detach().to(device=pos.device, dtype=torch.float64),
            pbc.to(device=pos.device, dtype=torch.bool),
            batch.to(device=pos.device, dtype=torch.long),
            float(r_max),
            max_num_neighbors,
            _block_min_points,
        )


def _radius_graph_pbc(pos, cell, pbc, batch, r_max, max_num_neighbors, block_min_points):
    if pos.shape[0] == 0:
        return (
            torch.empty(2, 0, dtype=torch.long, device=pos.device),
            torch.empty(0, 3, dtype=torch.long, device=pos.device),
        )
    completed = complete_cell(cell, pbc)
    inverse_cell = torch.linalg.inv(completed)
    band = r_max * reciprocal_lengths(inverse_cell)
    fractional, wrap_shift = wrap_positions(pos, inverse_cell, pbc, batch)

    image_atom, lattice_shift = periodic_images(fractional, pbc, band, batch)
    image_frame = batch[image_atom]
    # The zero-shift image of each atom: pairing an atom with it is the excluded self pair.
    unshifted = torch.nonzero((lattice_shift == 0).all(dim=1)).squeeze(1)
    own_image = torch.empty_like(batch).index_put_((image_atom[unshifted],), unshifted)
    # Shift of each image relative to the ORIGINAL (unwrapped) position of its atom.
    image_shift = lattice_shift - wrap_shift[image_atom]
    image_pos = pos[image_atom] + torch.einsum("nk,nkx->nx", image_shift.to(torch.float64), completed[image_frame])
    query_pos = pos - torch.einsum("nk,nkx->nx", wrap_shift.to(torch.float64), completed[batch])

    query_order, source_image, query_block, source_block, n_blocks = _search_layout(
        fractional, batch, image_atom, lattice_shift, image_frame, inverse_cell, band, r_max, block_min_points
    )
    query_points = query_pos if query_order is None else query_pos[query_order]
    source_points = image_pos if query_order is None else image_pos[source_image]
    row, col = _complete_search(
        source_points,
        query_points,
        source_block,
        query_block,
        n_blocks,
        r_max * (1.0 + _SEARCH_SLACK),
        max_num_neighbors,
        _initial_bound(cell, pbc, batch, r_max),
        batch,
        query_order,
    )
    # Filter before gathering anything else: most work is per candidate pair. The vector equals
    # pos[j] - pos[i] + shift @ cell up to rounding, without an [n_edges, 3, 3] gather.
    lengths = torch.linalg.vector_norm(source_points.index_select(0, col) - query_points.index_select(0, row), dim=1)
    image = col if query_order is None else source_image.index_select(0, col)
    centre = row if query_order is None else query_order.index_select(0, row)
    keep = (lengths < r_max) & (image != own_image.index_select(0, centre))
    kept = torch.nonzero(keep).squeeze(1)
    centre, image = centre.index_select(0, kept), image.index_select(0, kept)
    if query_order is not None:
        order = torch.argsort(centre, stable=True)
        centre, image = centre.index_select(0, order), image.index_select(0, order)
    neighbour = image_atom.index_select(0, image)
    shifts = image_shift.index_select(0, image) + wrap_shift.index_select(0, centre)
    return torch.stack([centre, neighbour]), shifts


def _search_layout(
    fractional, batch, image_atom, lattice_shift, image_frame, inverse_cell, band, r_max, block_min_points
):
    """Batch elements for torch-cluster: one per frame, or one per spatial block of big frames.

    Returns (query_order, source_image, query_block, source_block, n_blocks): queries are the
    atoms in ``query_order`` (None: as given), sources the images ``source_image``, both
    sorted by their batch element ``*_block`` as torch-cluster requires.
    """
    n_frames = inverse_cell.shape[0]
    blocked = torch.bincount(image_frame, minlength=n_frames) > block_min_points
    if not bool(blocked.any()):
        source_image = torch.arange(image_atom.shape[0], device=batch.device)
        return None, source_image, batch, image_frame, n_frames
    image_fractional = fractional[image_atom] + lattice_shift
    grid = BlockGrid(
        image_fractional, image_frame, 1.0 / reciprocal_lengths(inverse_cell), blocked, _BLOCK_EDGE_OVER_R_MAX * r_max
    )
    source_image, source_key = grid.halo_copies(image_fractional, image_frame, band)
    query_key = grid.key(grid.block_of(fractional, batch), batch)
    block_ids, block = torch.unique(torch.cat([query_key, source_key]), return_inverse=True)
    query_block, source_block = block[: query_key.shape[0]], block[query_key.shape[0] :]
    query_order = torch.argsort(query_block, stable=True)
    source_order = torch.argsort(source_block, stable=True)
    return (
        query_order,
        source_image[source_order],
        query_block[query_order],
        source_block[source_order],
        block_ids.shape[0],
    )


def _complete_search(
    source_pos,
    query_pos,
    source_block,
    query_block,
    n_blocks,
    radius,
    max_num_neighbors,
    first_bound,
    batch,
    query_order,
):
    """torch_cluster.radius with a neighbour bound large enough that nothing was dropped."""
    # Imported here so that edge_vectors and precomputed graphs work without the extension.
    import torch_cluster

    largest_block = max(int(torch.bincount(source_block, minlength=n_blocks).max()), 1)
    if max_num_neighbors is not None:
        # +1 for the atom itself (distance 0), +1 to tell "exactly the bound" from "more".
        bound = max_num_neighbors + 2
    else:
        bound = min(first_bound, largest_block)
    while True:
        row, col = torch_cluster.radius(
            source_pos,
            query_pos,
            radius,
            batch_x=source_block,
            batch_y=query_block,
            max_num_neighbors=bound,
            batch_size=n_blocks,
        )
        if max_num_neighbors is None and bound >= largest_block:
            return row, col  # no block holds more points than the bound: nothing dropped
        saturated = torch.bincount(row, minlength=query_pos.shape[0]) >= bound
        if not bool(saturated.any()):
            return row, col
        if max_num_neighbors is not None:
            first = int(torch.nonzero(saturated)[0, 0])
            atom = first if query_order is None else int(query_order[first])
            raise ValueError(
                f"radius_graph_pbc: atom {atom} (frame {int(batch[atom])}) has more than "
                f"max_num_neighbors={max_num_neighbors} neighbours within r_max="
                f"{radius / (1.0 + _SEARCH_SLACK):g} Å, and torch-cluster would drop the rest; "
                "pass max_num_neighbors=None (find all) or a larger bound."
            )
        bound = min(2 * bound, largest_block)


def _initial_bound(cell, pbc, batch, r_max: float) -> int:
    """First neighbour bound to try (retries double it): a multiple of 32, at least 64.

    From the densest fully periodic frame, 1.5 times the mean count in a sphere of r_max plus
    16, so that a rattled solid is complete in one search; other frames start at 64.
    """
    atoms_per_frame = torch.bincount(batch, minlength=cell.shape[0]).to(torch.float64)
    volume = torch.linalg.det(cell).abs()
    bulk = pbc.all(dim=1) & (volume > 0)
    if not bool(bulk.any()):
        return 64
    density = float((atoms_per_frame[bulk] / volume[bulk]).max())
    expected = 4.0 / 3.0 * math.pi * r_max**3 * density
    return max(64, 32 * math.ceil((1.5 * expected + 16) / 32))


def _check_inputs(pos, cell, pbc, batch, r_max, max_num_neighbors):
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"radius_graph_pbc: pos must be [n_atoms, 3], got {tuple(pos.shape)}")
    if cell.ndim != 3 or cell.shape[1:] != (3, 3):
        raise ValueError(f"radius_graph_pbc: cell must be [n_frames, 3, 3], got {tuple(cell.shape)}")
    if tuple(pbc.shape) != (cell.shape[0], 3):
        raise ValueError(f"radius_graph_pbc: pbc must be [n_frames, 3] = [{cell.shape[0]}, 3], got {tuple(pbc.shape)}")
    if tuple(batch.shape) != (pos.shape[0],):
        raise ValueError(f"radius_graph_pbc: batch must be [n_atoms] = [{pos.shape[0]}], got {tuple(batch.shape)}")
    if batch.numel() > 1 and not bool((batch[1:] >= batch[:-1]).all()):
        raise ValueError("radius_graph_pbc: batch must be sorted (atoms of each frame contiguous)")
    if batch.numel() > 0 and (int(batch.min()) < 0 or int(batch.max()) >= cell.shape[0]):
        raise ValueError(f"radius_graph_pbc: batch refers to frames outside 0..{cell.shape[0] - 1} of cell")
    if not (r_max > 0 and math.isfinite(r_max)):
        raise ValueError(f"radius_graph_pbc: r_max must be a positive number of Å, got {r_max}")
    if max_num_neighbors is not None and max_num_neighbors < 1:
        raise ValueError(f"radius_graph_pbc: max_num_neighbors must be None or >= 1, got {max_num_neighbors}")
