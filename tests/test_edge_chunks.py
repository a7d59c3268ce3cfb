"""Edge sums in chunks with recomputation (mpnn_ip.nn.edge_chunks) equal the plain sums.

The physics suite runs on chunked NequIP and MACE too (tests/test_physics.py, ``CHUNKED``);
here: the chunk bounds, the fallbacks, and equality of every output and of the training
gradients (the force loss's double backward) to 1e-10 in float64.
"""

from __future__ import annotations

import physics
import pytest
import torch
from test_physics import build_test_model
from torch.fx.experimental.proxy_tensor import make_fx

from mpnn_ip.nn.edge_chunks import edge_chunk_bounds, sum_over_edge_chunks


def _sorted_centres(counts):
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def test_bounds_cover_every_edge_once_and_end_at_atom_boundaries():
    counts = [3, 0, 7, 2, 2, 9, 1, 0, 4]
    centre = _sorted_centres(counts)
    bounds = edge_chunk_bounds(centre, len(counts), chunk_size=6)
    assert bounds[0][0] == 0 and bounds[-1][1] == centre.numel()
    assert bounds[0][2] == 0 and bounds[-1][3] == len(counts)
    for (e0, e1, a0, a1), (f0, _, b0, _) in zip(bounds, bounds[1:]):
        assert e1 == f0 and a1 == b0
    for e0, e1, a0, a1 in bounds:
        assert ((centre[e0:e1] >= a0) & (centre[e0:e1] < a1)).all()
        # at most chunk_size edges unless a single atom has more (atom 5 has 9)
        assert e1 - e0 <= 6 or a1 - a0 == 1


def test_small_or_unsorted_graphs_are_not_chunked():
    centre = _sorted_centres([4, 4, 4])
    assert edge_chunk_bounds(centre, 3, chunk_size=12) is None
    assert edge_chunk_bounds(centre, 3, chunk_size=0) is None
    assert edge_chunk_bounds(centre.flip(0), 3, chunk_size=2) is None


def test_chunked_sum_equals_plain_sum_and_is_not_chunked_while_traced():
    torch.manual_seed(0)
    centre = _sorted_centres([3, 1, 5, 2])
    edge_index = torch.stack([centre, torch.randint(0, 4, centre.shape)])
    values = torch.randn(centre.numel(), 3, dtype=torch.float64, requires_grad=True)
    calls = []

    def edge_sum(v, c, n, n_centres: int):
        calls.append(int(v.shape[0]))
        return torch.zeros(n_centres, 3, dtype=v.dtype).index_add(0, c, v.sin())

    chunked = sum_over_edge_chunks(edge_sum, (), (values,), edge_index, 4, chunk_size=4)
    assert len(calls) == 3  # chunks of atoms {0, 1}, {2}, {3}
    plain = torch.zeros(4, 3, dtype=torch.float64).index_add(0, centre, values.sin())
    torch.testing.assert_close(chunked, plain, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(chunked.square().sum(), values)
    (expected,) = torch.autograd.grad(plain.square().sum(), values)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)

    calls.clear()
    make_fx(lambda v: sum_over_edge_chunks(edge_sum, (), (v,), edge_index, 4, chunk_size=4))(values.detach())
    assert calls == [centre.numel()]


@pytest.mark.parametrize("lean", [False, True], ids=["checkpoint", "lean_double_backward"])
@pytest.mark.parametrize("name", ["nequip", "mace"])
def test_chunked_model_equals_plain_model_with_training_gradients(name, lean, mixed_batch):
    """Energy, forces, stress, per-atom virials and the gradients of a force loss (double backward)."""
    plain = build_test_model(name).set_edge_chunk_size(0)
    chunked = build_test_model(name).set_edge_chunk_size(7, lean_double_backward=lean)
    inputs = physics.model_inputs(mixed_batch)
    outputs = []
    for model in (plain, chunked):
        model.eval()
        out = model(inputs, compute_forces=True, compute_stress=True, compute_atomic_virial=True)
        model.train()
        model.zero_grad()
        trained = model(inputs, compute_forces=True, compute_stress=True)
        loss = trained["energy"].square().sum() + trained["forces"].square().sum() + trained["stress"].square().sum()
        loss.backward()
        grads = {key: p.grad.clone() for key, p in model.named_parameters() if p.grad is not None}
        outputs.append(({k: v.detach() for k, v in out.items()}, grads))
    (out_plain, grads_plain), (out_chunked, grads_chunked) = outputs
    for key in ("energy", "forces", "stress", "virial", "atomic_virial", "node_energy"):
        torch.testing.assert_close(out_chunked[key], out_plain[key], rtol=1e-10, atol=1e-12)
    assert grads_chunked.keys() == grads_plain.keys() and len(grads_plain) > 5
    for key in grads_plain:
        torch.testing.assert_close(grads_chunked[key], grads_plain[key], rtol=1e-10, atol=1e-12, msg=key)


def test_negative_chunk_size_is_refused():
    with pytest.raises(ValueError, match="edge_chunk_size"):
        build_test_model("nequip").set_edge_chunk_size(-1)


def test_automatic_chunk_holds_a_fixed_budget_of_intermediates_and_can_be_restored():
    from mpnn_ip.nn.edge_chunks import EDGE_CHUNK_FLOATS, MIN_EDGE_CHUNK_SIZE

    for name in ("nequip", "mace"):
        model = build_test_model(name)
        convolutions = [m for m in model.modules() if hasattr(m, "edge_chunking")]
        assert len(convolutions) == 2
        for conv in convolutions:
            assert conv.floats_per_edge() > 0
            assert conv.edge_chunking.chunk_size == max(
                MIN_EDGE_CHUNK_SIZE, EDGE_CHUNK_FLOATS // conv.floats_per_edge()
            )
        model.set_edge_chunk_size(5)
        assert all(conv.edge_chunking.chunk_size == 5 for conv in convolutions)
        model.set_edge_chunk_size(None)
        assert all(conv.edge_chunking.chunk_size == conv.edge_chunking.automatic_chunk_size for conv in convolutions)


def test_automatic_setting_leaves_small_graphs_whole_unless_training_is_lean():
    """Automatic: graphs up to UNCHUNKED_EDGE_FLOATS of intermediates stay whole. Lean training:
    chunks of a third of the forward's budget (a double backward holds ~3 forwards per chunk),
    applied to every graph above one chunk. An explicit size applies to every graph above it."""
    from mpnn_ip.nn.edge_chunks import (
        EDGE_CHUNK_FLOATS,
        LEAN_CHUNK_FLOATS_FACTOR,
        MIN_EDGE_CHUNK_SIZE,
        UNCHUNKED_EDGE_FLOATS,
    )

    model = build_test_model("mace")
    chunkings = [m.edge_chunking for m in model.modules() if hasattr(m, "edge_chunking")]
    for chunking in chunkings:
        assert chunking.unchunked_edge_limit == max(
            chunking.chunk_size, UNCHUNKED_EDGE_FLOATS // chunking.floats_per_edge
        )
        assert chunking.unchunked_edge_limit > chunking.chunk_size
        assert not chunking.lean_double_backward
    model.set_edge_chunk_size(None, lean_double_backward=True)
    for chunking in chunkings:
        lean = max(MIN_EDGE_CHUNK_SIZE, EDGE_CHUNK_FLOATS // (LEAN_CHUNK_FLOATS_FACTOR * chunking.floats_per_edge))
        assert chunking.unchunked_edge_limit == chunking.chunk_size == lean <= chunking.automatic_chunk_size
        assert chunking.lean_double_backward
    model.set_edge_chunk_size(7)
    assert all(c.unchunked_edge_limit == c.chunk_size == 7 and not c.lean_double_backward for c in chunkings)
    model.set_edge_chunk_size(None)
    assert all(c.unchunked_edge_limit == c.automatic_unchunked_edge_limit for c in chunkings)


def test_graphs_up_to_the_unchunked_limit_are_summed_in_one_piece(monkeypatch):
    import mpnn_ip.nn.edge_chunks as edge_chunks

    calls = []
    real = edge_chunks.edge_chunk_bounds
    monkeypatch.setattr(edge_chunks, "edge_chunk_bounds", lambda *a: calls.append(a) or real(*a))
    centre = torch.repeat_interleave(torch.arange(4), 3)
    edge_index = torch.stack([centre, (centre + 1) % 4])
    values = torch.arange(12.0).unsqueeze(-1)

    def edge_sum(v, centre, neighbour, n):
        return v.new_zeros(n, 1).index_add_(0, centre, v)

    whole = edge_chunks.sum_over_edge_chunks(edge_sum, (), (values,), edge_index, 4, 3, unchunked_edge_limit=12)
    assert calls == []
    chunked = edge_chunks.sum_over_edge_chunks(edge_sum, (), (values,), edge_index, 4, 3, unchunked_edge_limit=11)
    assert len(calls) == 1
    assert torch.equal(whole, chunked)


def test_atom_chunks_equal_one_piece_to_second_order_and_are_skipped_when_off_traced_or_without_grad():
    from mpnn_ip.nn.edge_chunks import AtomChunking

    torch.manual_seed(0)
    x = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(10, 1, dtype=torch.float64)
    calls = []

    def per_atom(x, scale, nothing):
        assert nothing is None
        calls.append(int(x.shape[0]))
        return (x.sin() * scale).square()

    chunking = AtomChunking(floats_per_atom=4)
    chunking.configure(3)
    chunked = chunking.map(per_atom, x, scale, None)
    assert calls == [3, 3, 3, 1]
    plain = per_atom(x, scale, None)
    torch.testing.assert_close(chunked, plain, rtol=0, atol=0)
    # first and second derivatives (a force loss differentiates the forces again)
    (grad_chunked,) = torch.autograd.grad(chunked.sum(), x, create_graph=True)
    (grad_plain,) = torch.autograd.grad(plain.sum(), x, create_graph=True)
    torch.testing.assert_close(grad_chunked, grad_plain, rtol=1e-12, atol=1e-14)
    (second_chunked,) = torch.autograd.grad(grad_chunked.square().sum(), x)
    (second_plain,) = torch.autograd.grad(grad_plain.square().sum(), x)
    torch.testing.assert_close(second_chunked, second_plain, rtol=1e-12, atol=1e-14)

    calls.clear()
    with torch.no_grad():
        chunking.map(per_atom, x, scale, None)
    make_fx(lambda v: chunking.map(per_atom, v, scale, None))(x.detach())
    chunking.configure(0)
    chunking.map(per_atom, x, scale, None)
    assert calls == [10, 10, 10]


def test_mace_product_basis_chunks_atoms_with_the_models_chunk_setting():
    """Automatic: only graphs whose product-basis intermediates exceed UNCHUNKED_ATOM_FLOATS; an
    explicit chunk size (the physics suite's chunked MACE, the model test above) chunks atoms too."""
    from mpnn_ip.nn.edge_chunks import ATOM_CHUNK_FLOATS, UNCHUNKED_ATOM_FLOATS

    model = build_test_model("mace")
    chunkings = [m.atom_chunking for m in model.modules() if hasattr(m, "atom_chunking")]
    assert len(chunkings) == 2
    for chunking in chunkings:
        assert chunking.chunk_size == max(1, ATOM_CHUNK_FLOATS // chunking.floats_per_atom)
        assert chunking.unchunked_atom_limit == UNCHUNKED_ATOM_FLOATS // chunking.floats_per_atom
    model.set_edge_chunk_size(7)
    assert all(c.chunk_size == c.unchunked_atom_limit == 7 for c in chunkings)
    model.set_edge_chunk_size(0)
    assert all(c.chunk_size == 0 for c in chunkings)
