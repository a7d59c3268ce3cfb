"""The periodic radius graph equals ASE's neighbour list; edge vectors have exact gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ase = pytest.importorskip("ase")
pytest.importorskip("torch_cluster")

from ase import Atoms  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from ase.neighborlist import neighbor_list  # noqa: E402

from mpnn_ip.graph import edge_vectors, radius_graph_pbc  # noqa: E402


# ----------------------------------------------------------------------------- structures
def random_triclinic(seed: int, n_atoms: int = 12) -> Atoms:
    rng = np.random.default_rng(seed)
    cell = 5.0 * (np.eye(3) + 0.3 * rng.standard_normal((3, 3)))
    if np.linalg.det(cell) < 0:
        cell[0] *= -1
    atoms = Atoms("Cu" * n_atoms, scaled_positions=rng.random((n_atoms, 3)), cell=cell, pbc=True)
    atoms.info["name"] = f"random triclinic seed {seed}"
    return atoms


def tiny_cells() -> list[Atoms]:
    one = Atoms("Cu", positions=[[0.3, 0.2, 0.1]], cell=np.diag([1.9, 2.3, 2.1]), pbc=True)
    two = Atoms(
        "CuAu",
        scaled_positions=[[0.1, 0.2, 0.3], [0.6, 0.5, 0.9]],
        cell=[[2.2, 0.0, 0.0], [1.5, 1.9, 0.0], [0.7, -0.9, 2.4]],
        pbc=True,
    )
    flat = Atoms(
        "Cu", positions=[[0.0, 0.0, 0.0]], cell=[[6.0, 0, 0], [5.8, 0.9, 0], [0, 0, 7.0]], pbc=True
    )  # very skewed: thin plane spacing along the second axis
    for atoms, name in zip((one, two, flat), ("1-atom cell", "2-atom triclinic", "skewed cell")):
        atoms.info["name"] = name
    return [one, two, flat]


def slab() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=3)
    atoms.cell[2] = [0.4, 0.3, 20.0]
    atoms.pbc = [True, True, False]
    atoms.info["name"] = "slab"
    return atoms


def wire() -> Atoms:
    rng = np.random.default_rng(5)
    atoms = Atoms(
        "Cu6",
        positions=rng.random((6, 3)) * [4.0, 4.0, 2.5],
        cell=[[0, 0, 0], [0, 0, 0], [0.3, 0.2, 2.5]],
        pbc=[False, False, True],
    )
    atoms.info["name"] = "wire"
    return atoms


def molecule_in_box(zero_cell: bool) -> Atoms:
    atoms = molecule("CH3OH")
    atoms.rattle(0.03, seed=1)
    atoms.cell = np.zeros((3, 3)) if zero_cell else np.diag([3.0, 3.0, 3.0])
    atoms.pbc = False
    atoms.info["name"] = f"molecule ({'zero' if zero_cell else 'small box'} cell)"
    return atoms


def unwrapped() -> Atoms:
    atoms = random_triclinic(7, n_atoms=10)
    rng = np.random.default_rng(8)
    lattice_jumps = rng.integers(-3, 4, size=(10, 3))
    atoms.positions += lattice_jumps @ atoms.cell.array + 0.01 * rng.standard_normal((10, 3))
    atoms.info["name"] = "unwrapped positions"
    return atoms


def isolated_atom() -> Atoms:
    atoms = Atoms("Cu", positions=[[1.0, 2.0, 3.0]], pbc=False)
    atoms.info["name"] = "isolated atom"
    return atoms


def copper(repeat: int, rattle: float = 0.05) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((repeat, repeat, repeat))
    atoms.rattle(rattle, seed=11)
    atoms.info["name"] = f"fcc Cu x{repeat}"
    return atoms


def mixed_batch() -> list[Atoms]:
    return [
        random_triclinic(0),
        *tiny_cells(),
        slab(),
        wire(),
        molecule_in_box(True),
        molecule_in_box(False),
        unwrapped(),
        isolated_atom(),
    ]


# ----------------------------------------------------------------------------- comparison
def as_inputs(frames: list[Atoms], dtype: torch.dtype):
    pos = torch.cat([torch.tensor(a.positions, dtype=dtype) for a in frames])
    cell = torch.stack([torch.tensor(a.cell.array, dtype=dtype) for a in frames])
    pbc = torch.tensor(np.array([a.pbc for a in frames]))
    batch = torch.cat([torch.full((len(a),), k, dtype=torch.long) for k, a in enumerate(frames)])
    return pos, cell, pbc, batch


def edge_triples(edge_index, shifts) -> set[tuple[int, ...]]:
    """(i, j, S0, S1, S2) of every edge, on the CPU."""
    return {(int(i), int(j), *map(int, s)) for (i, j), s in zip(edge_index.T.cpu(), shifts.cpu())}


def ase_triples(frames: list[Atoms], r_max: float) -> set[tuple[int, ...]]:
    triples, offset = set(), 0
    for atoms in frames:
        i, j, shift = neighbor_list("ijS", atoms, r_max, self_interaction=False)
        triples |= {(a + offset, b + offset, *s) for a, b, s in zip(i, j, shift.tolist())}
        offset += len(atoms)
    return triples


def assert_same_graph_as_ase(frames, r_max, dtype=torch.float64, **kwargs):
    if dtype == torch.float32:  # compare on the exact float32 values the graph sees
        frames = [a.copy() for a in frames]
        for a in frames:
            a.positions = a.positions.astype(np.float32).astype(np.float64)
            a.cell = a.cell.array.astype(np.float32).astype(np.float64)
    pos, cell, pbc, batch = as_inputs(frames, dtype)
    edge_index, shifts = radius_graph_pbc(pos, cell, pbc, batch, r_max, **kwargs)
    assert edge_index.dtype == torch.long and shifts.dtype == torch.long
    ours = edge_triples(edge_index, shifts)
    expected = ase_triples(frames, r_max)
    names = [a.info.get("name", a.get_chemical_formula()) for a in frames]
    assert len(ours) == edge_index.shape[1], f"duplicate edges in {names}"
    assert ours == expected, (
        f"{names}: {len(ours - expected)} extra, {len(expected - ours)} missing, e.g. "
        f"extra {sorted(ours - expected)[:3]} missing {sorted(expected - ours)[:3]}"
    )
    lengths = edge_vectors(pos, cell, edge_index, shifts, batch).norm(dim=1)
    assert bool((lengths < r_max * (1 + 1e-6)).all())
    assert bool((edge_index[0][1:] >= edge_index[0][:-1]).all()), "edges not sorted by centre"
    return edge_index, shifts


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_triclinic_cells_match_ase(seed):
    assert_same_graph_as_ase([random_triclinic(seed)], r_max=4.5)


@pytest.mark.parametrize("frame", tiny_cells(), ids=lambda a: a.info["name"])
def test_cells_smaller_than_cutoff_match_ase(frame):
    assert_same_graph_as_ase([frame], r_max=5.0)


@pytest.mark.parametrize("frame", [slab(), wire()], ids=lambda a: a.info["name"])
def test_mixed_periodicity_matches_ase(frame):
    assert_same_graph_as_ase([frame], r_max=4.0)


@pytest.mark.parametrize("zero_cell", [True, False])
def test_molecule_without_periodicity_matches_ase(zero_cell):
    assert_same_graph_as_ase([molecule_in_box(zero_cell)], r_max=2.5)


def test_unwrapped_positions_give_shifts_for_original_positions():
    assert_same_graph_as_ase([unwrapped()], r_max=4.0)


def test_isolated_atom_has_no_edges():
    pos, cell, pbc, batch = as_inputs([isolated_atom()], torch.float64)
    edge_index, shifts = radius_graph_pbc(pos, cell, pbc, batch, 5.0)
    assert edge_index.shape == (2, 0) and shifts.shape == (0, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixed_batch_matches_ase(dtype):
    assert_same_graph_as_ase(mixed_batch(), r_max=4.0, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spatial_blocks_match_ase(dtype):
    frames = [copper(4), *mixed_batch()]
    assert_same_graph_as_ase(frames, r_max=4.0, dtype=dtype, _block_min_points=0)


def test_spatial_blocks_on_large_frame_match_ase():
    assert_same_graph_as_ase([copper(5), slab()], r_max=4.5, _block_min_points=500)


def test_dense_neighbourhoods_are_complete(monkeypatch):
    """fcc Cu at r_max 6 Å has ~80 neighbours per atom, beyond torch-cluster's default 32."""
    import torch_cluster

    bounds = []
    search = torch_cluster.radius

    def recording_search(*args, **kwargs):
        bounds.append(kwargs["max_num_neighbors"])
        return search(*args, **kwargs)

    monkeypatch.setattr(torch_cluster, "radius", recording_search)
    cluster = copper(3)
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    for frame in (copper(3), cluster):
        edge_index, _ = assert_same_graph_as_ase([frame], r_max=6.0)
        assert int(torch.bincount(edge_index[0]).max()) > 64
    assert len(bounds) > 2, f"the non-periodic cluster should need a retry, bounds {bounds}"


def test_too_small_neighbour_bound_raises():
    pos, cell, pbc, batch = as_inputs([copper(3)], torch.float64)
    with pytest.raises(ValueError, match="max_num_neighbors=16"):
        radius_graph_pbc(pos, cell, pbc, batch, 6.0, max_num_neighbors=16)


def test_sufficient_neighbour_bound_matches_ase():
    assert_same_graph_as_ase([copper(2)], r_max=4.0, max_num_neighbors=50)


def test_empty_input_gives_empty_graph():
    edge_index, shifts = radius_graph_pbc(
        torch.zeros(0, 3),
        torch.zeros(1, 3, 3),
        torch.ones(1, 3, dtype=torch.bool),
        torch.zeros(0, dtype=torch.long),
        5.0,
    )
    assert edge_index.shape == (2, 0) and shifts.shape == (0, 3)


def test_singular_periodic_cell_raises():
    pos, cell, pbc, batch = as_inputs([isolated_atom()], torch.float64)
    with pytest.raises(ValueError, match="frame 0"):
        radius_graph_pbc(pos, cell, torch.ones_like(pbc), batch, 5.0)


def test_graph_follows_device_and_ignores_gradients():
    pos, cell, pbc, batch = as_inputs(mixed_batch(), torch.float64)
    pos.requires_grad_(True)
    edge_index, shifts = radius_graph_pbc(pos, cell, pbc, batch, 4.0)
    assert edge_index.device == pos.device and not edge_index.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("block_min_points", [None, 0])
def test_cuda_graph_equals_cpu_graph(block_min_points):
    frames = [copper(4), *mixed_batch()]
    pos, cell, pbc, batch = as_inputs(frames, torch.float32)
    cpu = radius_graph_pbc(pos, cell, pbc, batch, 4.0)
    cuda = radius_graph_pbc(pos.cuda(), cell.cuda(), pbc.cuda(), batch.cuda(), 4.0, _block_min_points=block_min_points)
    assert edge_triples(*cpu) == edge_triples(*cuda)


def test_edge_vectors_match_finite_differences():
    frames = [tiny_cells()[1], wire()]
    pos, cell, pbc, batch = as_inputs(frames, torch.float64)
    edge_index, shifts = radius_graph_pbc(pos, cell, pbc, batch, 3.0)
    assert edge_index.shape[1] > 20
    pos.requires_grad_(True)
    cell.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, c: edge_vectors(p, c, edge_index, shifts, batch), (pos, cell))
