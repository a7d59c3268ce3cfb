"""TorchSim interface (issue 10, item 4): ``MPNNTorchSimModel`` passes TorchSim's own model
validation, equals the ASE calculator system by system (cell convention, stress sign), and
drives TorchSim's batched MD and FIRE relaxation with its auto-batcher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ts = pytest.importorskip("torch_sim", reason="optional extra: pip install 'mpnn_ip[torchsim]'")

from ase.build import bulk, molecule  # noqa: E402
from tiny_checkpoint import build_tiny_model, tiny_checkpoint  # noqa: E402
from torch_sim.models.interface import validate_model_outputs  # noqa: E402

from mpnn_ip.calculators import MPNNCalculator  # noqa: E402
from mpnn_ip.torchsim import MPNNTorchSimModel  # noqa: E402

SPECIES = ["H", "C", "O", "Si", "Fe", "Cu", "Au"]


@pytest.fixture(scope="module")
def model():
    return MPNNTorchSimModel(build_tiny_model(species=SPECIES), dtype="float64")


def _structures():
    triclinic = bulk("Cu", "fcc", a=3.7).repeat((2, 2, 3))
    triclinic.numbers[::3] = 79
    triclinic.set_cell(triclinic.cell.array + [[0.0, 0.3, 0.1], [0.2, 0.0, -0.1], [0.1, 0.2, 0.0]], scale_atoms=True)
    triclinic.rattle(0.05, seed=1)
    cubic = bulk("Au", "fcc", a=4.1, cubic=True).repeat(2)
    cubic.rattle(0.05, seed=2)
    return [triclinic, cubic]


def test_passes_torchsims_model_validation(model):
    validate_model_outputs(model, torch.device("cpu"), torch.float64)


def test_batched_state_equals_the_ase_calculator_system_by_system(model):
    structures = _structures()
    state = ts.io.atoms_to_state(structures, torch.device("cpu"), torch.float64)
    out = model(state)
    offsets = np.cumsum([0] + [len(a) for a in structures])
    for k, atoms in enumerate(structures):
        atoms.calc = MPNNCalculator(model.model)
        assert float(out["energy"][k]) == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(out["forces"][offsets[k] : offsets[k + 1]].numpy(), atoms.get_forces(), atol=1e-10)
        np.testing.assert_allclose(out["stress"][k].numpy(), atoms.get_stress(voigt=False), atol=1e-10)
        assert np.abs(atoms.get_stress()).max() > 1e-4  # the stress comparison is not vacuous


def test_molecules_have_energy_and_forces(model):
    state = ts.io.atoms_to_state([molecule("H2O"), molecule("CH4")], torch.device("cpu"), torch.float64)
    out = model(state)
    assert out["energy"].shape == (2,) and out["forces"].shape == (8, 3) and torch.isfinite(out["forces"]).all()


def test_batched_md_and_relaxation_through_torchsim(tmp_path):
    model = MPNNTorchSimModel.from_checkpoint(tiny_checkpoint(tmp_path / "tiny.ckpt"), dtype="float64")
    structures = _structures()
    start = model(ts.io.atoms_to_state(structures, torch.device("cpu"), torch.float64))["energy"]
    binning = ts.autobatching.BinningAutoBatcher(model, memory_scales_with="n_atoms_x_density", max_memory_scaler=1e6)
    final = ts.integrate(
        structures, model, integrator=ts.nve, n_steps=20, temperature=300, timestep=0.001, autobatcher=binning
    )
    assert final.n_systems == 2 and torch.isfinite(final.positions).all()
    batcher = ts.autobatching.InFlightAutoBatcher(model, memory_scales_with="n_atoms_x_density", max_memory_scaler=1e6)
    # cell and positions relaxed together: a wrong stress sign or cell convention would raise the energy
    relaxed = ts.optimize(structures, model, optimizer=ts.frechet_cell_fire, max_steps=30, autobatcher=batcher)
    after = model(relaxed)["energy"]
    assert (after < start).all(), (start, after)
