"""Checkpoints written before the constructor arguments were recorded by the base class still load.

``tests/data/checkpoint_v1_*.ckpt`` were written by mpnn_ip 0.1.0 at format version 1 (the nequip
one by ``mpnn-train`` itself, a tiny quickstart run; the BPNN one with the ``avg_num_neighbors``
argument BPNN no longer takes); ``checkpoint_v1_reference.json`` holds that version's
energy, forces and stress (float64) on :func:`reference_structure`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk

from mpnn_ip import MPNNCalculator
from mpnn_ip.checkpoint import FORMAT_VERSION, checkpoint_metadata, load_model, read_checkpoint

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "checkpoint_v1_reference.json").read_text())


def reference_structure():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.numbers[[1, 4]] = 79
    rng = np.random.default_rng(0)
    atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    return atoms


@pytest.mark.parametrize("name", ["nequip", "bpnn"])
def test_version_1_checkpoint_gives_the_outputs_it_gave_when_written(name):
    model = load_model(DATA / f"checkpoint_v1_{name}.ckpt", dtype="float64")
    atoms = reference_structure()
    atoms.calc = MPNNCalculator(model)
    expected = REFERENCE[name]
    assert atoms.get_potential_energy() == pytest.approx(expected["energy"], abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), expected["forces"], atol=1e-10)
    np.testing.assert_allclose(atoms.get_stress(), expected["stress"], atol=1e-10)


def test_version_1_arguments_retired_since_are_dropped_on_reading():
    ckpt = read_checkpoint(DATA / "checkpoint_v1_bpnn.ckpt")
    assert ckpt["mpnn_ip"]["format_version"] == FORMAT_VERSION
    assert "avg_num_neighbors" not in ckpt["mpnn_ip"]["model_config"]


@pytest.mark.parametrize("name", ["nequip", "bpnn"])
def test_rewritten_metadata_rebuilds_the_same_model(name, tmp_path):
    """Old file -> model -> current metadata -> model: same arguments, same weights."""
    model = load_model(DATA / f"checkpoint_v1_{name}.ckpt")
    path = tmp_path / "current.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "mpnn_ip": checkpoint_metadata(model, {}),
        },
        path,
    )
    again = load_model(path)
    assert read_checkpoint(path)["mpnn_ip"]["format_version"] == FORMAT_VERSION
    assert again.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
