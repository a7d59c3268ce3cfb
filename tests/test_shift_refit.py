"""The shared energy head's fixed shift (MACE's) is refitted by least squares of the training residuals,
so that a force-weighted loss does not leave a constant energy offset (energy MAE ≈ RMSE)."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from ase.calculators.emt import EMT
from torch.utils.data import DataLoader

from mpnn_ip.data import AtomicGraph, collate
from mpnn_ip.data.synthetic import make_dataset
from mpnn_ip.models.mace import MACE
from mpnn_ip.models.nequip import NequIP
from mpnn_ip.models.schnet import SchNet
from mpnn_ip.train import PotentialModule
from mpnn_ip.train.shift_refit import ShiftRefit, refits_shift

OFFSET = {29: 0.3, 79: -0.7}  # eV per atom of each species, absent from the model


@functools.lru_cache(maxsize=1)
def _frames():
    frames = make_dataset(10, seed=3)
    for atoms in frames:
        atoms.calc = atoms.calc or EMT()
    return frames


def _mace(heads=None):
    torch.manual_seed(0)
    return MACE(
        ["Cu", "Au"], r_max=4.0, num_interactions=1, hidden_irreps="4x0e+4x1o", max_ell=1, correlation=2, heads=heads
    ).double()


def _labelled(model, offsets, head=0):
    """Frames labelled with the model's own energy plus ``offsets`` per atom of each species."""
    graphs = []
    for atoms in _frames():
        graph = AtomicGraph.from_atoms(atoms)
        inputs = collate([graph])
        if model.num_heads > 1:
            inputs.head = torch.tensor([head])
        energy = float(model(inputs, compute_forces=False)["energy"].detach())
        graph = AtomicGraph.from_atoms(atoms, energy=energy + sum(offsets[int(z)] for z in atoms.numbers))
        if model.num_heads > 1:
            graph.head = torch.tensor([head])
        graphs.append(graph)
    return graphs


def _observe_all(refit, model, graphs):
    batch = collate(graphs)
    with torch.no_grad():
        refit.observe(model(batch, compute_forces=False), batch)
    return batch


def test_refit_recovers_per_species_offsets_of_mixed_compositions():
    model = _mace()
    graphs = _labelled(model, OFFSET)
    assert len({tuple(sorted(g.atomic_numbers.tolist())) for g in graphs}) > 2  # compositions tell Cu and Au apart
    refit = ShiftRefit(model)
    batch = _observe_all(refit, model, graphs)
    before = model.scale_shift.shift.clone()
    delta = refit.refit()
    torch.testing.assert_close(delta[0], torch.tensor([OFFSET[29], OFFSET[79]], dtype=torch.float64))
    torch.testing.assert_close(model.scale_shift.shift, before + delta[0])
    energy = model(batch, compute_forces=False)["energy"]
    torch.testing.assert_close(energy, batch.energy.reshape(-1), atol=1e-9, rtol=0)
    assert refit.refit() is None  # the sums start afresh after a refit


def test_one_composition_gets_its_mean_residual_removed():
    model = _mace()
    graphs = [g for g in _labelled(model, OFFSET)]
    composition = sorted(graphs[0].atomic_numbers.tolist())
    same = [g for g in graphs if sorted(g.atomic_numbers.tolist()) == composition]
    for k, graph in enumerate(same):
        graph.energy = graph.energy + 0.01 * (-1) ** k  # residuals the shift cannot explain
    refit = ShiftRefit(model)
    batch = _observe_all(refit, model, same)
    refit.refit()
    residual = batch.energy.reshape(-1) - model(batch, compute_forces=False)["energy"]
    assert abs(float(residual.mean())) < 1e-9 + 0.01 / len(same)


def test_each_head_gets_its_own_shift_refitted():
    model = _mace(heads=["pbe", "r2scan"])
    other = {29: -0.2, 79: 0.5}
    graphs = _labelled(model, OFFSET, head=0) + _labelled(model, other, head=1)
    refit = ShiftRefit(model)
    _observe_all(refit, model, graphs)
    delta = refit.refit()
    expected = torch.tensor([[OFFSET[29], OFFSET[79]], [other[29], other[79]]], dtype=torch.float64)
    torch.testing.assert_close(delta, expected)


def test_only_models_with_a_fixed_shift_are_refitted():
    nequip = NequIP(["Cu", "Au"], r_max=4.0, num_layers=1, num_features=4, l_max=1)
    schnet = SchNet(["Cu", "Au"], r_max=4.0, num_features=4, num_interactions=1, num_gaussians=4, num_filters=4)
    assert refits_shift(_mace())
    assert not refits_shift(nequip) and not refits_shift(schnet)
    assert PotentialModule(nequip).shift_refit is None
    assert isinstance(PotentialModule(_mace()).shift_refit, ShiftRefit)
    assert PotentialModule(_mace(), refit_energy_shift=False).shift_refit is None


def _trainer(tmp_path, epochs: int) -> L.Trainer:
    """A quiet CPU trainer without checkpoints (forces need gradients in validation)."""
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        inference_mode=False,
        num_sanity_val_steps=0,
        max_epochs=epochs,
        default_root_dir=tmp_path,
    )


def _fit_offset_model(tmp_path, refit: bool) -> float:
    """Mean energy error (eV/atom) on the training frames after one epoch of a MACE whose labels carry an
    offset its fixed shift lacks (the learning rate is too small for the network to absorb it)."""
    model = _mace()
    graphs = _labelled(model, {29: 0.4, 79: 0.6})
    task = PotentialModule(
        model,
        loss={"energy": {"weight": 1.0}, "forces": {"weight": 0.0}},
        optimizer=functools.partial(torch.optim.Adam, lr=1e-6),
        refit_energy_shift=refit,
    )
    trainer = _trainer(tmp_path, epochs=1)
    loader = DataLoader(graphs, batch_size=5, collate_fn=collate)
    trainer.fit(task, loader, DataLoader(graphs, batch_size=10, collate_fn=collate))
    batch = collate(graphs)
    error = batch.energy.reshape(-1) - model(batch, compute_forces=False)["energy"].detach()
    return float((error / torch.bincount(batch.batch)).mean())


def test_training_with_the_refit_leaves_no_energy_offset(tmp_path):
    without = _fit_offset_model(tmp_path / "off", refit=False)
    with_refit = _fit_offset_model(tmp_path / "on", refit=True)
    assert abs(without) > 0.1
    assert abs(with_refit) < 1e-3 * abs(without)


def test_the_shift_is_refitted_for_the_network_as_it_is_at_validation(tmp_path):
    """Trained on forces at a real learning rate, the network's constant part moves during the epoch; the shift
    checkpointed after validation is the least-squares one of that network, not of the one the steps saw."""
    model = _mace()
    graphs = [AtomicGraph.from_atoms(a, energy=a.get_potential_energy(), forces=a.get_forces()) for a in _frames()]
    task = PotentialModule(
        model,
        loss={"energy": {"weight": 1.0}, "forces": {"weight": 100.0}},
        optimizer=functools.partial(torch.optim.Adam, lr=2e-2),
    )
    trainer = _trainer(tmp_path, epochs=2)
    trainer.fit(
        task,
        DataLoader(graphs, batch_size=2, collate_fn=collate),
        DataLoader(graphs, batch_size=10, collate_fn=collate),
    )
    check = ShiftRefit(model)
    _observe_all(check, model, graphs)
    assert float(check.refit().abs().max()) < 1e-9  # nothing left to correct


@pytest.mark.parametrize("trained", [True, False])
def test_the_shift_is_a_parameter_only_where_the_optimizer_trains_it(trained):
    model = _mace() if not trained else NequIP(["Cu"], r_max=4.0, num_layers=1, num_features=4, l_max=1)
    assert isinstance(model.scale_shift.shift, torch.nn.Parameter) is trained
    assert model.shift_is_trained is trained
