"""Per-output loss and masked metrics: missing labels are ignored, frame weights scale, units per atom."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from mpnn_ip.data import AtomicGraph, collate
from mpnn_ip.train.losses import WeightedPropertyLoss, elementwise_loss
from mpnn_ip.train.metrics import PropertyMetrics


def _batch(with_energy=(True, True), with_forces=(True, True), with_stress=(False, True), weights=(1.0, 1.0)):
    """A water molecule (3 atoms) and a 2-atom Cu cell with chosen labels (rest masked)."""
    water = molecule("H2O")
    cu = bulk("Cu", "fcc", a=3.6, cubic=False) * (1, 1, 2)
    graphs = []
    for k, atoms in enumerate((water, cu)):
        n = len(atoms)
        graphs.append(
            AtomicGraph.from_atoms(
                atoms,
                energy=-float(n) if with_energy[k] else None,
                forces=np.full((n, 3), 0.1 * (k + 1)) if with_forces[k] else None,
                stress=np.full(6, 0.01) if with_stress[k] else None,
                weight=weights[k],
            )
        )
    return collate(graphs)


def _prediction(batch, energy_offset_per_atom=0.0, force_offset=0.0, stress_offset=0.0):
    n_atoms = (batch.ptr[1:] - batch.ptr[:-1]).double()
    return {
        "energy": batch.energy + energy_offset_per_atom * n_atoms,
        "forces": batch.forces + force_offset,
        "stress": batch.stress + stress_offset,
    }


def test_loss_is_zero_for_exact_predictions():
    batch = _batch()
    loss = WeightedPropertyLoss(energy={"weight": 1.0}, forces={"weight": 10.0}, stress={"weight": 5.0})
    total, terms = loss(_prediction(batch), batch)
    assert float(total) == 0.0
    assert set(terms) == {"energy", "forces", "stress"}


def test_energy_loss_is_per_atom():
    batch = _batch()
    loss = WeightedPropertyLoss(energy={"weight": 1.0, "fn": "mae"})
    total, _ = loss(_prediction(batch, energy_offset_per_atom=0.2), batch)
    assert float(total) == pytest.approx(0.2)


def test_missing_labels_are_masked_out():
    batch = _batch(with_energy=(False, True), with_forces=(True, False), with_stress=(False, True))
    pred = _prediction(batch)
    pred["energy"] = pred["energy"].clone()
    pred["energy"][0] += 100.0  # frame 0 has no energy label: must not count
    pred["forces"] = pred["forces"].clone()
    pred["forces"][3:] += 100.0  # frame 1 (atoms 3, 4) has no force label
    pred["stress"] = pred["stress"].clone()
    pred["stress"][0] += 100.0  # frame 0 has no stress label
    loss = WeightedPropertyLoss(energy={"weight": 1.0}, forces={"weight": 1.0}, stress={"weight": 1.0})
    total, _ = loss(pred, batch)
    assert float(total) == 0.0


def test_frame_weight_scales_its_terms():
    batch = _batch(weights=(0.0, 2.0))
    pred = _prediction(batch, force_offset=0.5)
    loss = WeightedPropertyLoss(forces={"weight": 1.0, "fn": "mae"})
    total, _ = loss(pred, batch)
    # frame 0 (3 atoms) weight 0, frame 1 (2 atoms) weight 2; mean over all 5 labelled atoms
    assert float(total) == pytest.approx(0.5 * 2.0 * 2 / 5)


@pytest.mark.parametrize("fn", ["mse", "mae", "huber"])
def test_loss_functions_match_torch(fn):
    pred, target = torch.tensor([0.0, 0.5, 3.0]), torch.zeros(3)
    reference = {
        "mse": torch.nn.functional.mse_loss(pred, target, reduction="none"),
        "mae": torch.nn.functional.l1_loss(pred, target, reduction="none"),
        "huber": torch.nn.functional.huber_loss(pred, target, reduction="none", delta=0.5),
    }[fn]
    assert torch.allclose(elementwise_loss(fn, pred, target, delta=0.5), reference)


def test_bad_loss_settings_are_rejected_with_the_key():
    with pytest.raises(ValueError, match="loss.forces.fn"):
        WeightedPropertyLoss(forces={"weight": 1.0, "fn": "l3"})
    with pytest.raises(ValueError, match="no term with a positive weight"):
        WeightedPropertyLoss(energy={"weight": 0.0})


def test_metrics_mask_and_units():
    batch = _batch(with_energy=(True, True), with_forces=(True, False), with_stress=(False, True))
    pred = _prediction(batch, energy_offset_per_atom=0.1, force_offset=0.3, stress_offset=0.02)
    metrics = PropertyMetrics()
    metrics.update(pred, batch)
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values["energy_per_atom_mae"] == pytest.approx(0.1)
    assert values["energy_mae"] == pytest.approx((0.1 * 3 + 0.1 * 2) / 2)
    assert values["forces_rmse"] == pytest.approx(0.3)
    assert values["stress_mae"] == pytest.approx(0.02)
    metrics.reset()
    assert metrics.compute() == {}


def test_metrics_skip_quantities_without_labels():
    batch = _batch(with_stress=(False, False))
    metrics = PropertyMetrics()
    metrics.update(_prediction(batch), batch)
    assert not any(key.startswith("stress") for key in metrics.compute())


@pytest.mark.parametrize("name", ["virial", "forcse"])
def test_unknown_loss_term_is_rejected_with_the_known_terms(name):
    with pytest.raises(ValueError, match=rf"loss\.{name} is not a loss term; the terms are energy, forces, stress"):
        WeightedPropertyLoss(energy={"weight": 1.0}, **{name: {"weight": 1.0}})


def test_stress_term_without_predicted_stress_is_an_error():
    batch = _batch(with_stress=(False, True))
    pred = _prediction(batch)
    del pred["stress"]
    loss = WeightedPropertyLoss(energy={"weight": 1.0}, stress={"weight": 1.0})
    with pytest.raises(ValueError, match=r"loss\.stress .*needs the model output 'stress'.*1 frame\(s\)"):
        loss(pred, batch)


def test_stress_term_on_a_batch_without_stress_labels_contributes_nothing():
    batch = _batch(with_stress=(False, False))
    pred = _prediction(batch, energy_offset_per_atom=0.2)
    del pred["stress"]
    loss = WeightedPropertyLoss(energy={"weight": 1.0, "fn": "mae"}, stress={"weight": 1.0})
    total, terms = loss(pred, batch)
    assert set(terms) == {"energy"}
    assert float(total) == pytest.approx(0.2)


def test_loss_uses_only_outputs_with_a_positive_weight():
    loss = WeightedPropertyLoss(energy={"weight": 1.0}, forces=None, stress={"weight": 0.0})
    assert loss.uses("energy") and not loss.uses("forces") and not loss.uses("stress")


class _FixedPrediction(torch.nn.Module):
    """Stands in for a float32 model: returns the labels plus fixed offsets, stress only when asked."""

    def forward(self, batch, compute_forces=True, compute_stress=False):
        pred = {k: v.float() for k, v in _prediction(batch, 0.1, 0.3, 0.02).items()}
        pred["energy"] = pred["energy"] + torch.arange(batch.num_graphs) * 0.05
        pred["forces"] = pred["forces"] * 1.5
        if not compute_stress:
            del pred["stress"]
        return pred


def test_training_metrics_and_evaluation_agree_on_the_same_predictions():
    from mpnn_ip.evaluation import evaluate

    batch = _batch(with_energy=(True, True), with_forces=(True, False), with_stress=(False, True))
    model = _FixedPrediction()
    metrics = PropertyMetrics()
    metrics.update(model(batch, compute_stress=True), batch)
    training = {k: float(v) for k, v in metrics.compute().items()}
    evaluated = evaluate(model, batch)["metrics"]
    assert set(training) == {
        f"{q}_{m}" for q in ("energy_per_atom", "energy", "forces", "stress") for m in ("mae", "rmse")
    }
    for key, value in training.items():
        assert evaluated[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
