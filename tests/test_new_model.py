"""What a new model needs: one class (constructor + ``node_energies``) and one registry entry.

``PairPotential`` below is a complete test-only model: the base class records its constructor
arguments, builds its graph, adds E0, takes forces and stress by autograd and writes and reads
its checkpoints; the physics checks, one Lightning training epoch and a checkpoint round trip
then work without a line elsewhere. (For ``mpnn-train model=NAME`` it also needs a YAML file in
``configs/model/`` with its ``_target_``.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
import physics
import pytest
import torch
from conftest import E0S, SPECIES, make_molecule, make_triclinic_crystal

from mpnn_ip.checkpoint import checkpoint_metadata, load_model
from mpnn_ip.data import AtomicGraph, collate
from mpnn_ip.models import MODEL_REGISTRY, Potential
from mpnn_ip.nn import PolynomialCutoff
from mpnn_ip.train import PotentialModule


class PairPotential(Potential):
    """Morse pair energies with a learnable well depth per species pair.

    Args:
        species: chemical symbols or atomic numbers.
        r_max: cutoff (Å).
        r0: equilibrium distance (Å).
        stiffness: Morse exponent a (1/Å).
        e0s: per-species isolated-atom energies (eV).
    """

    def __init__(
        self,
        species: Sequence[int | str],
        r_max: float = 4.0,
        r0: float = 2.5,
        stiffness: float = 1.5,
        e0s: Mapping | None = None,
    ):
        super().__init__(species, r_max, e0s)
        self.r0, self.stiffness = float(r0), float(stiffness)
        self.depth = torch.nn.Parameter(0.1 * torch.ones(self.num_species, self.num_species))
        self.cutoff = PolynomialCutoff(self.r_max)

    def node_energies(self, species, edge_index, edge_vectors, batch, num_graphs):
        lengths = torch.linalg.vector_norm(edge_vectors, dim=-1)
        decay = torch.exp(-self.stiffness * (lengths - self.r0))
        depth = 0.5 * (self.depth + self.depth.T)[species[edge_index[0]], species[edge_index[1]]]
        pair = depth * (decay**2 - 2 * decay) * self.cutoff(lengths)
        return torch.zeros_like(species, dtype=pair.dtype).index_add(0, edge_index[0], 0.5 * pair)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(MODEL_REGISTRY, "pair", f"{__name__}:PairPotential")
    torch.manual_seed(0)
    return PairPotential(SPECIES, e0s=E0S).to(torch.float64)


def test_new_model_passes_the_physics_checks(registered):
    for atoms in (make_molecule(), make_triclinic_crystal()):
        physics.check_rotation_equivariance(registered, atoms)
        physics.check_forces_finite_differences(registered, atoms)
    physics.check_stress_finite_differences(registered, make_triclinic_crystal())
    physics.check_batch_consistency(registered, [make_molecule(), make_triclinic_crystal()])


def test_new_model_trains_and_round_trips_through_a_checkpoint(registered, tmp_path):
    graphs = [
        AtomicGraph.from_atoms(a, energy=-10.0, forces=torch.zeros(len(a), 3).numpy())
        for a in (make_molecule(), make_triclinic_crystal())
    ]
    loader = torch.utils.data.DataLoader(graphs, batch_size=2, collate_fn=collate)
    task = PotentialModule(registered, optimizer=lambda params: torch.optim.SGD(params, lr=0.01))
    before = registered.depth.detach().clone()
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
    )
    trainer.fit(task, train_dataloaders=loader)
    assert not torch.equal(registered.depth.detach(), before)

    assert registered.config == {
        "species": registered.species,
        "r_max": 4.0,
        "r0": 2.5,
        "stiffness": 1.5,
        "e0s": {int(k): v for k, v in registered.config["e0s"].items()},
    }
    path = tmp_path / "pair.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in registered.state_dict().items()},
            "mpnn_ip": checkpoint_metadata(registered, {}),
        },
        path,
    )
    loaded = load_model(path)
    batch = collate(graphs)
    assert torch.allclose(loaded(batch)["forces"], registered.eval()(batch)["forces"], rtol=0, atol=1e-12)
