"""Periodic images ("ghost atoms") within r_max of the cell, built per atom.

An image of atom j at integer shift S can be a neighbour of an atom inside the cell only if
its fractional coordinate along every periodic direction k lies in [-r_max |b_k|,
1 + r_max |b_k|] (b_k the reciprocal vector, 1/|b_k| the plane spacing). Each atom gets just
the shifts that satisfy this: one (S = 0) for atoms deep inside a large cell, a few near the
faces, and full replicas when the cell is smaller than r_max. No image outside the band is
ever made, so a huge cell costs only its surface layer.
"""

from __future__ import annotations

import torch

from mpnn_ip.graph.boxes import expand_integer_boxes

#: Slack on the band edges, in fractional units relative to the band; pairs at the cutoff are
#: filtered exactly afterwards, so a wider band only costs a few candidates.
BAND_SLACK = 1e-6


def periodic_images(
    fractional: torch.Tensor,
    pbc: torch.Tensor,
    band: torch.Tensor,
    batch: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of every atom that can lie within r_max of the (wrapped) cell contents.

    Args:
        fractional: [n_atoms, 3] fractional coordinates, in [0, 1) along periodic directions.
        pbc: [n_frames, 3] bool.
        band: [n_frames, 3] r_max |b_k| (r_max over the plane spacing), dimensionless.
        batch: [n_atoms] long.

    Returns:
        (atom [n_images] long, shift [n_images, 3] long): the atom each image copies and its
        integer lattice shift; atoms appear in order, and S = 0 is always among an atom's images.
    """
    periodic = pbc[batch]
    atom_band = band[batch] * (1.0 + BAND_SLACK) + BAND_SLACK
    low = torch.ceil(-atom_band - fractional)
    high = torch.floor(1.0 + atom_band - fractional)
    # Along non-periodic directions only S = 0; keep S = 0 even if rounding put it outside.
    low = torch.where(periodic, torch.clamp(low, max=0.0), torch.zeros_like(low)).to(torch.long)
    high = torch.where(periodic, torch.clamp(high, min=0.0), torch.zeros_like(high)).to(torch.long)
    return expand_integer_boxes(low, high - low + 1)
