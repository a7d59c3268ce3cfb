"""Sums over edges computed chunk by chunk with recomputation, so per-edge memory is one chunk's.

A message-passing convolution computes, per edge, a radial MLP, a tensor product and a
weighting, then sums the messages at each centre atom. Autograd keeps every per-edge
intermediate for the backward pass: ~10k floats per edge and layer for the small presets,
~3 MB per atom of a dense metal. :func:`sum_over_edge_chunks` instead splits the edges (sorted by
centre atom, as :func:`~mpnn_ip.graph.radius_graph_pbc` returns them) into chunks that end at
atom boundaries and runs each chunk under :func:`torch.utils.checkpoint.checkpoint`
(non-reentrant): only the chunk's inputs are kept, and the backward pass recomputes the chunk's
intermediates, one chunk at a time. The result is the same sum (chunks cover disjoint atoms, so
no floating-point reordering), gradients of any order included (forces, and the force loss's
double backward in training), at the cost of one extra forward pass of the chunked part.

Graphs with at most ``chunk_size`` edges, graphs whose edges are not sorted by centre and
traced graphs (``torch.export``, ``torch.compile``) take the plain path.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from mpnn_ip.nn.tracing import is_tracing

#: Floats of per-edge intermediates in one chunk (~128 MiB in float32): a convolution's default
#: chunk is this many floats' worth of its edges (:func:`automatic_chunk_size`). Small presets
#: (~10k floats per edge and layer) get ~3,000-3,500 edges per chunk; the quickstart NequIP (~300)
#: ~120k, so graphs of a few thousand atoms are not chunked at all, which is faster there (the
#: recomputation costs more than it saves when the intermediates are small). Measured on Cu 2,048
#: (87,550 edges), energy+forces, float32, 2 threads, NequIP-s: peak RSS 6.2 GB unchunked, 1.15 GB
#: at 8192 edges per chunk, 0.97 GB at 4096, 0.82 GB at 2048; MACE-s 6.4 / 1.41 / 1.28 / 1.58 GB;
#: the chunked runs of the small presets were also faster (smaller working set).
EDGE_CHUNK_FLOATS = 2**25
#: Fewest edges per automatic chunk (below this the per-chunk overhead dominates).
MIN_EDGE_CHUNK_SIZE = 1024


def automatic_chunk_size(floats_per_edge: int) -> int:
    """Edges per chunk for a convolution keeping ``floats_per_edge`` floats per edge for its backward."""
    return max(MIN_EDGE_CHUNK_SIZE, EDGE_CHUNK_FLOATS // max(1, int(floats_per_edge)))


EdgeSum = Callable[..., torch.Tensor]


def edge_chunk_bounds(centre: torch.Tensor, n_atoms: int, chunk_size: int) -> list[tuple[int, int, int, int]] | None:
    """``[(edge_start, edge_end, atom_start, atom_end), ...]`` covering all edges and atoms, or None.

    Chunks end at atom boundaries (all edges of an atom in one chunk) and hold at most
    ``chunk_size`` edges unless one atom alone has more. ``centre [n_edges]`` must be sorted;
    None when it is not, or when the graph has at most ``chunk_size`` edges (no chunking needed).
    """
    n_edges = int(centre.shape[0])
    if chunk_size <= 0 or n_edges <= chunk_size:
        return None
    if bool((centre[1:] < centre[:-1]).any()):
        return None
    # first edge of every atom (n_atoms + 1 offsets), as in a CSR row pointer
    offsets = torch.searchsorted(centre, torch.arange(n_atoms + 1, device=centre.device)).tolist()
    bounds, atom_start = [], 0
    while atom_start < n_atoms:
        limit = offsets[atom_start] + chunk_size
        # last atom whose edges all fit; at least one atom per chunk
        atom_end = max(atom_start + 1, _last_fitting(offsets, atom_start, limit))
        bounds.append((offsets[atom_start], offsets[atom_end], atom_start, atom_end))
        atom_start = atom_end
    return bounds


def _last_fitting(offsets: Sequence[int], atom_start: int, limit: int) -> int:
    """Largest ``a > atom_start`` with ``offsets[a] <= limit`` (binary search over the row pointer)."""
    lo, hi = atom_start, len(offsets) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if offsets[mid] <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def sum_over_edge_chunks(
    edge_sum: EdgeSum,
    edge_tensors: Sequence[torch.Tensor],
    edge_index: torch.Tensor,
    n_atoms: int,
    chunk_size: int | None,
) -> torch.Tensor:
    """``edge_sum`` over all edges, chunk by chunk with recomputation when the graph is large.

    ``edge_sum(*edge_tensors_chunk, centre_local, neighbour_chunk, n_local_atoms)`` returns the
    messages of the given edges summed at their centres, ``[n_local_atoms, ...]``, where
    ``centre_local`` counts from the chunk's first atom; node-level tensors it needs are
    captured by the closure. ``edge_tensors`` are ``[n_edges, ...]`` (e.g. edge harmonics and
    the radial embedding). Returns ``[n_atoms, ...]``, equal to the unchunked call.
    """
    centre, neighbour = edge_index[0], edge_index[1]
    bounds = None
    if chunk_size and not is_tracing():
        bounds = edge_chunk_bounds(centre, n_atoms, chunk_size)
    if bounds is None:
        return edge_sum(*edge_tensors, centre, neighbour, n_atoms)
    needs_grad = torch.is_grad_enabled()
    pieces = []
    for e0, e1, a0, a1 in bounds:
        args = (*(t[e0:e1] for t in edge_tensors), centre[e0:e1] - a0, neighbour[e0:e1], a1 - a0)
        if needs_grad:
            pieces.append(checkpoint(edge_sum, *args, use_reentrant=False))
        else:
            pieces.append(edge_sum(*args))
    return torch.cat(pieces, dim=0)
