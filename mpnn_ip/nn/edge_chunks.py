"""Sums over edges computed chunk by chunk with recomputation, so per-edge memory is one chunk's.

A message-passing convolution computes, per edge, a radial MLP, a tensor product and a
weighting, then sums the messages at each centre atom. Autograd keeps every per-edge
intermediate for the backward pass: ~10k floats per edge and layer for the small presets,
megabytes per atom of a dense metal (measurements: docs/performance.md, "Why the defaults are
what they are", Edge chunks). :func:`sum_over_edge_chunks` instead splits the edges (sorted by
centre atom, as :func:`~mpnn_ip.graph.radius_graph_pbc` returns them) into chunks that end at
atom boundaries and runs each chunk under :func:`torch.utils.checkpoint.checkpoint`
(non-reentrant): only the chunk's inputs are kept, and the backward pass recomputes the chunk's
intermediates, one chunk at a time. The result is the same sum (chunks cover disjoint atoms, so
no floating-point reordering), gradients of any order included (forces, and the force loss's
double backward in training), at the cost of one extra forward pass of the chunked part.

Graphs with at most ``unchunked_edge_limit`` edges (by default: whose intermediates fit in
:data:`UNCHUNKED_EDGE_FLOATS`), graphs whose edges are not sorted by centre and traced graphs
(``torch.export``, ``torch.compile``) take the plain path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from mpnn_ip.nn.tracing import is_tracing

#: Floats of per-edge intermediates in one chunk (~128 MiB in float32): a convolution's default
#: chunk is this many floats' worth of its edges (:func:`automatic_chunk_size`). Small presets
#: (~10k floats per edge and layer) get ~3,000-3,500 edges per chunk; the quickstart NequIP (~300)
#: ~120k, so graphs of a few thousand atoms are not chunked at all, which is faster there (the
#: recomputation costs more than it saves when the intermediates are small). Chunks of this size
#: cut the peak memory of large graphs several-fold, and the small presets' chunked runs were also
#: faster (smaller working set) (measurements: docs/performance.md, "Why the defaults are what
#: they are", Edge chunks).
EDGE_CHUNK_FLOATS = 2**25
#: Fewest edges per automatic chunk (below this the per-chunk overhead dominates).
MIN_EDGE_CHUNK_SIZE = 1024
#: A convolution whose per-edge intermediates fit in this many floats (~512 MiB in float32) is
#: not chunked by default: chunking costs a recomputation, worth it only when memory is short.
#: Graphs of a few hundred atoms (the benchmark's 3BPA and Cu 256 workloads) run faster unchunked;
#: Cu 2,048 stays chunked (measurements: docs/performance.md, "Why the defaults are what they
#: are", Edge chunks).
UNCHUNKED_EDGE_FLOATS = 2**27


def automatic_chunk_size(floats_per_edge: int) -> int:
    """Edges per chunk for a convolution keeping ``floats_per_edge`` floats per edge for its backward."""
    return max(MIN_EDGE_CHUNK_SIZE, EDGE_CHUNK_FLOATS // max(1, int(floats_per_edge)))


def automatic_unchunked_edge_limit(floats_per_edge: int) -> int:
    """Most edges a convolution keeping ``floats_per_edge`` floats per edge sums unchunked by default."""
    return max(automatic_chunk_size(floats_per_edge), UNCHUNKED_EDGE_FLOATS // max(1, int(floats_per_edge)))


#: A double backward through recomputed chunks (``lean_double_backward``) holds, for one chunk,
#: its recomputed forward, that forward's backward graph and their gradients: ~3x the floats of the
#: forward alone. Lean training therefore budgets 3 forwards' worth per chunk: a third of the
#: forward's chunk size lowers a training step's peak memory at some cost in time (measurements:
#: docs/performance.md, "Why the defaults are what they are", Lean training memory).
LEAN_CHUNK_FLOATS_FACTOR = 3

EdgeSum = Callable[..., torch.Tensor]


class EdgeChunking:
    """One convolution's chunking of its edge sum: the settings :func:`sum_over_edge_chunks` takes.

    ``floats_per_edge``: the convolution's estimate of the floats per edge autograd keeps for its
    backward (sets the automatic sizes). Attributes, set by :meth:`configure`: ``chunk_size``
    (edges per chunk; 0 = never chunk), ``unchunked_edge_limit`` (graphs with at most this many
    edges are summed in one piece) and ``lean_double_backward``.
    """

    def __init__(self, floats_per_edge: int):
        self.floats_per_edge = max(1, int(floats_per_edge))
        self.configure(None)

    @property
    def automatic_chunk_size(self) -> int:
        """Edges per chunk of the automatic setting (energy, forces, checkpointed training)."""
        return automatic_chunk_size(self.floats_per_edge)

    @property
    def automatic_lean_chunk_size(self) -> int:
        """Edges per chunk of the automatic setting with ``lean_double_backward`` (see :data:`LEAN_CHUNK_FLOATS_FACTOR`)."""
        return automatic_chunk_size(LEAN_CHUNK_FLOATS_FACTOR * self.floats_per_edge)

    @property
    def automatic_unchunked_edge_limit(self) -> int:
        """Most edges the automatic setting sums in one piece (without ``lean_double_backward``)."""
        return automatic_unchunked_edge_limit(self.floats_per_edge)

    def configure(self, chunk_size: int | None, lean_double_backward: bool = False) -> None:
        """``chunk_size``: edges per chunk, 0 = never chunk, None = automatic (only graphs above
        :data:`UNCHUNKED_EDGE_FLOATS` of intermediates are chunked, unless ``lean_double_backward``,
        which chunks every graph above one lean chunk). An explicit size chunks every graph above it."""
        self.lean_double_backward = bool(lean_double_backward)
        if chunk_size is not None:
            self.chunk_size = self.unchunked_edge_limit = int(chunk_size)
        elif self.lean_double_backward:
            self.chunk_size = self.unchunked_edge_limit = self.automatic_lean_chunk_size
        else:
            self.chunk_size, self.unchunked_edge_limit = self.automatic_chunk_size, self.automatic_unchunked_edge_limit

    def sum(
        self,
        edge_sum: EdgeSum,
        node_tensors: Sequence[torch.Tensor],
        edge_tensors: Sequence[torch.Tensor],
        edge_index: torch.Tensor,
        n_atoms: int,
        parameters: Callable[[], Sequence[torch.Tensor]],
    ) -> torch.Tensor:
        """:func:`sum_over_edge_chunks` with these settings; ``parameters()`` lists the tensors
        ``edge_sum`` uses besides its inputs (e.g. its radial MLP's), needed only by the lean path."""
        return sum_over_edge_chunks(
            edge_sum,
            node_tensors,
            edge_tensors,
            edge_index,
            n_atoms,
            self.chunk_size,
            lean_double_backward=list(parameters()) if self.lean_double_backward else None,
            unchunked_edge_limit=self.unchunked_edge_limit,
        )

    def __repr__(self) -> str:
        lean = ", lean_double_backward" if self.lean_double_backward else ""
        return f"EdgeChunking(chunk_size={self.chunk_size}, unchunked_edge_limit={self.unchunked_edge_limit}{lean})"


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
    node_tensors: Sequence[torch.Tensor],
    edge_tensors: Sequence[torch.Tensor],
    edge_index: torch.Tensor,
    n_atoms: int,
    chunk_size: int | None,
    lean_double_backward: Sequence[torch.Tensor] | None = None,
    unchunked_edge_limit: int | None = None,
) -> torch.Tensor:
    """``edge_sum`` over all edges, chunk by chunk with recomputation when the graph is large.

    ``edge_sum(*node_tensors, *edge_tensors_chunk, centre_local, neighbour_chunk, n_local_atoms)``
    returns the messages of the given edges summed at their centres, ``[n_local_atoms, ...]``, where
    ``centre_local`` counts from the chunk's first atom. ``node_tensors`` are ``[n_atoms, ...]``
    (e.g. the node features), ``edge_tensors`` ``[n_edges, ...]`` (e.g. edge harmonics and the
    radial embedding). Returns ``[n_atoms, ...]``, equal to the unchunked call.
    ``chunk_size``: edges per chunk (0 or None: never chunk); graphs with at most
    ``unchunked_edge_limit`` edges (default: ``chunk_size``) are summed in one piece.

    ``lean_double_backward``: None, or the parameters ``edge_sum`` uses (e.g. its radial MLP's).
    With them each chunk is a :class:`RecomputedEdgeSum`, whose backward is itself recomputed in
    a double backward, so that the force loss of training keeps one chunk's intermediates at a
    time as well (at the cost of two more recomputations of the chunk per training step);
    without, :func:`torch.utils.checkpoint.checkpoint`, which keeps the recomputed graphs of all
    chunks for a double backward.
    """
    centre, neighbour = edge_index[0], edge_index[1]
    bounds = None
    if chunk_size and not is_tracing() and centre.shape[0] > (unchunked_edge_limit or 0):
        bounds = edge_chunk_bounds(centre, n_atoms, chunk_size)
    if bounds is None:
        return edge_sum(*node_tensors, *edge_tensors, centre, neighbour, n_atoms)
    needs_grad = torch.is_grad_enabled()
    pieces = []
    for e0, e1, a0, a1 in bounds:
        index = (centre[e0:e1] - a0, neighbour[e0:e1], a1 - a0)
        inputs = (*node_tensors, *(t[e0:e1] for t in edge_tensors))
        if not needs_grad:
            pieces.append(edge_sum(*inputs, *index))
        elif lean_double_backward is not None:
            chunk_sum = _ChunkSum(edge_sum, index)
            params = tuple(lean_double_backward)
            pieces.append(RecomputedEdgeSum.apply(chunk_sum, len(inputs), params, *inputs, *params))
        else:
            pieces.append(checkpoint(edge_sum, *inputs, *index, use_reentrant=False))
    return torch.cat(pieces, dim=0)


class _ChunkSum:
    """``edge_sum`` of one chunk as a function of its float inputs only."""

    def __init__(self, edge_sum: EdgeSum, index: tuple):
        self.edge_sum, self.index = edge_sum, index

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.edge_sum(*inputs, *self.index)


def _vjp(fn, inputs, params, grad_out, create_graph: bool):
    """Recompute ``fn(*inputs)`` and its vector-Jacobian product with ``grad_out``.

    Returns (the recomputation's inputs, gradients for ``(*inputs, *params)`` with None for
    tensors that do not require grad)."""
    with torch.enable_grad():
        detached = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
        out = fn(*detached)
        everything = (*detached, *params)
        wrt = [t for t in everything if t.requires_grad]
        got = iter(torch.autograd.grad(out, wrt, grad_out, create_graph=create_graph, allow_unused=True) if wrt else ())
        return detached, [next(got) if t.requires_grad else None for t in everything]


class RecomputedEdgeSum(torch.autograd.Function):
    """One chunk's edge sum that keeps only its inputs; its backward (:class:`RecomputedVJP`)
    recomputes the chunk, and so does that backward's own backward.

    ``apply(fn, n_inputs, params, *inputs, *params)``: ``fn(*inputs)`` uses ``params`` (module
    parameters, passed again as tensors so that autograd routes their gradients here).
    """

    @staticmethod
    def forward(ctx, fn, n_inputs, params, *tensors):
        ctx.fn, ctx.n_inputs, ctx.params = fn, n_inputs, params
        ctx.save_for_backward(*tensors[:n_inputs])
        return fn(*tensors[:n_inputs])

    @staticmethod
    def backward(ctx, grad_out):
        grads = RecomputedVJP.apply(ctx.fn, ctx.n_inputs, ctx.params, grad_out, *ctx.saved_tensors, *ctx.params)
        return (None, None, None, *grads)


class RecomputedVJP(torch.autograd.Function):
    """The vector-Jacobian product of a chunk, recomputed; differentiable by recomputing again.

    ``apply(fn, n_inputs, params, grad_out, *inputs, *params)`` -> gradients for ``(*inputs, *params)``.
    """

    @staticmethod
    def forward(ctx, fn, n_inputs, params, grad_out, *tensors):
        ctx.fn, ctx.n_inputs, ctx.params = fn, n_inputs, params
        ctx.save_for_backward(grad_out, *tensors[:n_inputs])
        _, grads = _vjp(fn, tensors[:n_inputs], params, grad_out, create_graph=False)
        return tuple(grads)

    @staticmethod
    def backward(ctx, *grad_grads):
        grad_out, *inputs = ctx.saved_tensors
        with torch.enable_grad():
            g = grad_out.detach().requires_grad_(True)
            detached, grads = _vjp(ctx.fn, inputs, ctx.params, g, create_graph=True)
            pairs = [
                (gr, gg) for gr, gg in zip(grads, grad_grads) if gr is not None and gg is not None and gr.requires_grad
            ]
            everything = (g, *detached, *ctx.params)
            wrt = [t for t in everything if t.requires_grad]
            got = (
                torch.autograd.grad([p for p, _ in pairs], wrt, [q for _, q in pairs], allow_unused=True)
                if pairs
                else [None] * len(wrt)
            )
        got = iter(got)
        result = [next(got) if t.requires_grad else None for t in everything]
        return (None, None, None, *result)


#: Floats of per-atom intermediates in one atom chunk (~32 MiB in float32; :class:`AtomChunking`).
ATOM_CHUNK_FLOATS = 2**23
#: Node-level blocks whose intermediates exceed this many floats (~128 MiB in float32) are
#: evaluated in atom chunks: MACE's symmetric contractions keep ~25k floats per atom and layer, so
#: on large graphs the chunks lower the peak memory (of one call and of repeated calls in one
#: process) for a little more time (measurements: docs/performance.md, "Why the defaults are what
#: they are", Atom chunks).
UNCHUNKED_ATOM_FLOATS = 2**25


class AtomChunking:
    """A node-level block (e.g. MACE's product basis) evaluated atom chunk by atom chunk under
    :func:`torch.utils.checkpoint.checkpoint` on large graphs, so that its per-atom intermediates
    are kept for one chunk at a time (recomputed in the backward pass, one more forward).

    ``floats_per_atom``: the block's estimate of the floats per atom autograd keeps. Attributes:
    ``chunk_size`` (atoms per chunk; 0 = never chunk) and ``unchunked_atom_limit`` (graphs with at most
    this many atoms are evaluated in one piece). :meth:`configure` takes the edge-chunk setting of
    :meth:`~mpnn_ip.models.base.Potential.set_edge_chunk_size` (0 switches atom chunks off too, an
    explicit size chunks every graph above that many atoms, None is automatic).
    """

    def __init__(self, floats_per_atom: int):
        self.floats_per_atom = max(1, int(floats_per_atom))
        self.configure(None)

    def configure(self, chunk_size: int | None, lean_double_backward: bool = False) -> None:
        """As :meth:`EdgeChunking.configure`; ``lean_double_backward`` changes nothing here (a double
        backward through checkpointed atom chunks keeps their recomputed graphs: no saving)."""
        if chunk_size is not None:
            self.chunk_size = self.unchunked_atom_limit = int(chunk_size)
        else:
            self.chunk_size = max(1, ATOM_CHUNK_FLOATS // self.floats_per_atom)
            self.unchunked_atom_limit = max(self.chunk_size, UNCHUNKED_ATOM_FLOATS // self.floats_per_atom)

    def map(self, fn: Callable[..., torch.Tensor], *atom_tensors: torch.Tensor | None) -> torch.Tensor:
        """``fn(*atom_tensors)`` for per-atom ``fn`` (row i of the result depends on rows i of the
        inputs only); ``atom_tensors`` are ``[n_atoms, ...]`` or None. Chunked under autograd on
        graphs above ``unchunked_atom_limit`` atoms (not while tracing); equal to the one-piece call."""
        n_atoms = next(t for t in atom_tensors if t is not None).shape[0]
        if not self.chunk_size or n_atoms <= self.unchunked_atom_limit or not torch.is_grad_enabled() or is_tracing():
            return fn(*atom_tensors)
        pieces = []
        for start in range(0, n_atoms, self.chunk_size):
            chunk = tuple(None if t is None else t[start : start + self.chunk_size] for t in atom_tensors)
            pieces.append(checkpoint(fn, *chunk, use_reentrant=False))
        return torch.cat(pieces, dim=0)

    def __repr__(self) -> str:
        return f"AtomChunking(chunk_size={self.chunk_size}, unchunked_atom_limit={self.unchunked_atom_limit})"
