"""Every network family ends its energy with the one shared head (models/energy_head.py): per-species scale and
shift gated by neighbours, plus the same optional ZBL, with the state-dict keys of older checkpoints."""

from __future__ import annotations

import pytest
import torch
from ase import Atoms

from mpnn_ip.data import AtomicGraph, collate
from mpnn_ip.models.bpnn import BPNN
from mpnn_ip.models.energy_head import EnergyHead
from mpnn_ip.models.mace import MACE
from mpnn_ip.models.nequip import NequIP
from mpnn_ip.models.schnet import SchNet
from mpnn_ip.nn import ZBLRepulsion
from mpnn_ip.nn.nequip import NequIPZBL

SPECIES = ["Cu", "Au"]
FAMILIES = {
    "nequip": lambda **kw: NequIP(SPECIES, r_max=4.0, num_layers=1, num_features=4, l_max=1, **kw),
    "mace": lambda **kw: MACE(
        SPECIES, r_max=4.0, num_interactions=1, hidden_irreps="4x0e+4x1o", max_ell=1, correlation=2, **kw
    ),
    "schnet": lambda **kw: SchNet(
        SPECIES, r_max=4.0, num_features=4, num_interactions=1, num_gaussians=4, num_filters=4, **kw
    ),
    "bpnn": lambda **kw: BPNN(SPECIES, r_max=4.0, hidden=(4,), **kw),
}


def _build(family, **kwargs):
    torch.manual_seed(0)
    return FAMILIES[family](**kwargs).double()


def _dimer(distance=1.2):
    return collate([AtomicGraph.from_atoms(Atoms("CuAu", positions=[[0, 0, 0], [distance, 0, 0]]))])


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_uses_the_shared_head_with_the_old_state_dict_keys(family):
    model = _build(family)
    assert isinstance(model, EnergyHead)
    keys = set(model.state_dict())
    assert {"scale_shift.scale", "scale_shift.shift"} <= keys
    assert not any(key.startswith("energy_head") for key in keys)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind, module", [(True, ZBLRepulsion), ("nequip", NequIPZBL)])
def test_zbl_adds_exactly_the_repulsion_in_every_family(family, kind, module):
    plain, repelled = _build(family), _build(family, zbl=kind)
    repelled.load_state_dict(plain.state_dict(), strict=False)
    assert isinstance(repelled.zbl, module)
    batch = _dimer()
    graph = repelled.graph(batch)
    lengths = torch.linalg.vector_norm(graph["edge_vectors"], dim=-1)
    expected = repelled.zbl(graph["species"], graph["edge_index"], lengths).sum()
    difference = repelled(batch, compute_forces=False)["energy"] - plain(batch, compute_forces=False)["energy"]
    assert float(expected) > 1.0  # 1.2 Å: strongly repulsive
    torch.testing.assert_close(difference.sum(), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_unknown_zbl_kind_is_refused(family):
    with pytest.raises(ValueError, match="zbl must be False, True or 'nequip'"):
        _build(family, zbl="mace")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_shift_reaches_atoms_with_neighbours_only(family):
    model = _build(family, energy_shift={"Cu": 0.5, "Au": -1.5})
    zero = _build(family)
    zero.load_state_dict({k: v for k, v in model.state_dict().items() if k != "scale_shift.shift"}, strict=False)
    lone = collate([AtomicGraph.from_atoms(Atoms("Au", positions=[[0, 0, 0]]))])
    energies = [float(m(lone, compute_forces=False)["energy"].detach()) for m in (model, zero)]
    assert energies[0] == energies[1]
    batch = _dimer(2.5)
    difference = model(batch, compute_forces=False)["energy"] - zero(batch, compute_forces=False)["energy"]
    torch.testing.assert_close(difference.sum(), torch.tensor(-1.0, dtype=torch.float64))
