"""Cell geometry for the radius graph: completed cells, wrapping, reciprocal lengths.

Non-periodic directions may carry any cell row (a box around a molecule, or zeros). Only the
periodic rows matter; the others are replaced by an orthonormal complement of the periodic
rows so that every frame has an invertible cell and fractional coordinates are defined.
"""

from __future__ import annotations

import torch


def complete_cell(cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """Invertible cells whose periodic rows are the given lattice vectors.

    Args:
        cell: [n_frames, 3, 3] Å, rows are lattice vectors (float64).
        pbc: [n_frames, 3] bool.

    Returns:
        [n_frames, 3, 3] float64: periodic rows unchanged, non-periodic rows replaced by unit
        vectors orthogonal to the periodic rows and to each other.

    Raises:
        ValueError: a frame's periodic lattice vectors are (nearly) linearly dependent.
    """
    periodic_rows = cell * pbc[..., None]
    # Periodic directions first (stable), then the complement from the SVD's null space:
    # right singular vectors beyond the rank of the periodic rows are orthogonal to them.
    order = torch.argsort((~pbc).to(torch.int8), dim=1, stable=True)
    _, _, vh = torch.linalg.svd(periodic_rows)
    n_periodic = pbc.sum(dim=1)
    slot = torch.arange(3, device=cell.device)
    keep_given = (slot[None, :] < n_periodic[:, None])[..., None]
    gather_index = order[..., None].expand(-1, -1, 3)
    rows_in_order = torch.where(keep_given, periodic_rows.gather(1, gather_index), vh)
    completed = torch.empty_like(cell).scatter_(1, gather_index, rows_in_order)
    volume = torch.linalg.det(completed).abs()
    scale = completed.norm(dim=2).prod(dim=1)
    singular = volume <= 1e-8 * scale
    if bool(singular.any()):
        frame = int(torch.nonzero(singular)[0, 0])
        raise ValueError(
            f"radius_graph_pbc: frame {frame} has periodic lattice vectors that are zero or "
            f"linearly dependent (cell {cell[frame].tolist()}, pbc {pbc[frame].tolist()}); "
            "give three independent cell rows for the periodic directions."
        )
    return completed


def reciprocal_lengths(inverse_cell: torch.Tensor) -> torch.Tensor:
    """|b_k| of the reciprocal vectors (without 2π), 1/Å: [n_frames, 3].

    ``inverse_cell`` is ``inv(cell)``; its columns are the reciprocal vectors, so
    ``1 / |b_k|`` is the spacing of the lattice planes spanned by the other two rows.
    """
    return inverse_cell.norm(dim=1)


def wrap_positions(
    pos: torch.Tensor, inverse_cell: torch.Tensor, pbc: torch.Tensor, batch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fractional coordinates wrapped into [0, 1) along periodic directions.

    Args:
        pos: [n_atoms, 3] Å (float64).
        inverse_cell: [n_frames, 3, 3] inverse of the completed cells.
        pbc: [n_frames, 3] bool.
        batch: [n_atoms] long.

    Returns:
        (fractional [n_atoms, 3] float64 after wrapping, wrap_shift [n_atoms, 3] long) with
        ``pos = (fractional + wrap_shift) @ cell``; wrap_shift is 0 along non-periodic directions.
    """
    fractional = torch.einsum("nx,nxk->nk", pos, inverse_cell[batch])
    wrap_shift = torch.where(pbc[batch], torch.floor(fractional), torch.zeros_like(fractional))
    return fractional - wrap_shift, wrap_shift.to(torch.long)
