"""The one table of outputs, units and quantities: its values and its pairing on torch and numpy alike."""

from __future__ import annotations

import numpy as np
import torch
from test_train_losses import _batch, _prediction

from mpnn_ip.outputs import (
    LABELLED_OUTPUTS,
    QUANTITY_UNITS,
    STANDARD_OUTPUTS,
    UNITS,
    labelled_outputs,
    paired_values,
)


def test_checkpoint_units_are_the_ones_old_checkpoints_carry():
    assert UNITS == {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom", "stress": "eV/Angstrom^3"}


def test_output_and_quantity_names_and_units():
    assert STANDARD_OUTPUTS == ("energy", "node_energy", "forces", "stress", "virial", "atomic_virial", "charges")
    assert tuple(LABELLED_OUTPUTS) == ("energy", "forces", "stress", "dipole")
    assert QUANTITY_UNITS == {
        "energy_per_atom": "eV/atom",
        "energy": "eV",
        "forces": "eV/Å",
        "stress": "eV/Å³",
        "dipole": "e·Å",
    }


def test_pairing_is_the_same_on_tensors_and_numpy_arrays():
    batch = _batch(with_energy=(False, True), with_forces=(True, False), with_stress=(False, True))
    labelled = labelled_outputs(_prediction(batch, 0.1, 0.3, 0.02), batch, dtype=torch.float64)
    as_numpy = {output: {k: v.numpy() for k, v in entry.items()} for output, entry in labelled.items()}
    torch_pairs, numpy_pairs = paired_values(labelled), paired_values(as_numpy)
    assert list(torch_pairs) == list(numpy_pairs) == ["energy_per_atom", "energy", "forces", "stress"]
    for name, (pred, ref) in torch_pairs.items():
        np.testing.assert_array_equal(pred.numpy(), numpy_pairs[name][0])
        np.testing.assert_array_equal(ref.numpy(), numpy_pairs[name][1])
    assert len(torch_pairs["energy"][0]) == 1  # frame 0 has no energy label
    assert len(torch_pairs["forces"][0]) == 3 * 3  # the 3 atoms of frame 0, every component
    assert len(torch_pairs["stress"][0]) == 9
    np.testing.assert_allclose(torch_pairs["energy_per_atom"][0] - torch_pairs["energy_per_atom"][1], 0.1)
