"""Models with the terms beyond the cutoff through the whole product: training from the command line,
checkpoints, fine-tuning, the ASE calculator, committees and TorchSim.

One tiny NequIP with LES, the charge/spin embedding and D3 inside is trained for one epoch on Cu-Au
clusters labelled by EMT (some frames charged or doublets through ``atoms.info``), then fine-tuned.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_in_process import mpnn_train

pytest.importorskip("lightning")
pytest.importorskip("hydra")

QUIET = [
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.ema.decay=0.9",
]
DATA = ["data=extxyz", "data.train_count=8", "data.val_count=4", "data.test_count=0", "data.batch_size=4"]
LONG_RANGE = [
    "model=nequip_tiny",
    "model.r_max=3.0",
    "model.long_range=les",
    "model.charge_spin_embedding=true",
    "model.dispersion=d3bj:pbe",
]


def clusters(count: int, seed: int):
    """Cu-Au clusters of 6-9 atoms labelled by EMT; every third frame has charge +1 and multiplicity 2."""
    from ase import Atoms
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        n = int(rng.integers(6, 10))
        grid = np.array([[i, j, k] for i in range(3) for j in range(3) for k in range(2)], dtype=float)[:n]
        atoms = Atoms(numbers=rng.choice([29, 79], size=n), positions=2.6 * grid + rng.normal(0, 0.1, (n, 3)))
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        if index % 3 == 0:
            atoms.info.update(charge=1, spin=2)
            energy += 0.5
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import ase.io

    folder = tmp_path_factory.mktemp("long_range")
    data = folder / "clusters.xyz"
    ase.io.write(data, clusters(12, seed=0))
    with pytest.MonkeyPatch.context() as patch:
        run = mpnn_train(
            [*LONG_RANGE, f"data.train_path={data}", "trainer.max_epochs=1", *DATA, *QUIET], folder / "run", patch
        )
    return {"folder": folder, "data": data, "checkpoint": run / "checkpoints" / "last.ckpt"}


def test_checkpoint_records_the_terms_and_reloads_the_same_numbers(trained):
    from mpnn_ip import load_model

    model = load_model(trained["checkpoint"], dtype="float64")
    config = model.config
    assert config["long_range"] == "les" and config["charge_spin_embedding"] is True
    assert config["dispersion"] == "d3bj:pbe"
    again = load_model(trained["checkpoint"], dtype="float64")
    atoms = clusters(1, seed=5)[0]
    from mpnn_ip.calculators import MPNNCalculator

    first = MPNNCalculator(model).get_potential_energy(atoms.copy())
    second = MPNNCalculator(again).get_potential_energy(atoms.copy())
    assert first == second


def test_calculator_reads_charge_and_spin_and_returns_charges_and_dipole(trained):
    from mpnn_ip.calculators import MPNNCalculator

    calc = MPNNCalculator.from_checkpoint(trained["checkpoint"], dtype="float64")
    neutral = clusters(2, seed=5)[1]
    neutral.calc = calc
    energy_neutral = neutral.get_potential_energy()
    charges = calc.results["charges"]
    assert charges.shape == (len(neutral),) and np.all(np.isfinite(charges))
    expected_dipole = (charges[:, None] * neutral.positions).sum(axis=0)
    np.testing.assert_allclose(calc.results["dipole"], expected_dipole, rtol=1e-10, atol=1e-12)
    cation = neutral.copy()
    cation.info.update(charge=1, spin=2)
    cation.calc = calc
    assert abs(cation.get_potential_energy() - energy_neutral) > 1e-8


def test_finetuning_a_long_range_checkpoint_keeps_its_terms(trained, monkeypatch):
    from mpnn_ip import load_model

    run = mpnn_train(
        [
            f"finetune_from={trained['checkpoint']}",
            f"data.train_path={trained['data']}",
            "trainer.max_epochs=1",
            *DATA,
            *QUIET,
        ],
        trained["folder"] / "finetuned",
        monkeypatch,
    )
    model = load_model(run / "checkpoints" / "last.ckpt")
    assert model.latent_ewald is not None and model.charge_spin is not None and model.dispersion is not None
    pretrained = load_model(trained["checkpoint"])
    changed = [
        name for name, value in model.state_dict().items() if not torch.equal(value, pretrained.state_dict()[name])
    ]
    assert any(name.startswith("latent_ewald.") for name in changed)


def test_committee_averages_energies_forces_and_dipoles(trained):
    from mpnn_ip import load_model
    from mpnn_ip.data.atomic_graph import AtomicGraph, to_inputs
    from mpnn_ip.models.committee import Committee

    first = load_model(trained["checkpoint"], dtype="float64")
    second = load_model(trained["checkpoint"], dtype="float64")
    with torch.no_grad():
        for parameter in second.latent_ewald.parameters():
            parameter.mul_(1.5)
    committee = Committee([first, second])
    inputs = to_inputs(AtomicGraph.from_atoms(clusters(1, seed=9)[0]))
    out = committee(inputs)
    one, two = first(inputs), second(inputs)
    for key in ("energy", "forces", "dipole"):
        torch.testing.assert_close(out[key], 0.5 * (one[key] + two[key]))
    assert float(out["energy_uncertainty"][0]) > 0


def test_torchsim_gives_the_models_energy_forces_and_stress(trained):
    pytest.importorskip("torch_sim")
    import torch_sim as ts
    from ase.build import bulk

    from mpnn_ip import load_model
    from mpnn_ip.torchsim import MPNNTorchSimModel

    model = load_model(trained["checkpoint"], dtype="float64")
    crystal = bulk("Cu", "fcc", a=3.7, cubic=True)
    crystal.numbers[::2] = 79
    crystal.rattle(0.05, seed=1)
    state = ts.io.atoms_to_state([crystal], device=torch.device("cpu"), dtype=torch.float64)
    got = MPNNTorchSimModel(model)(state)
    from mpnn_ip.data.atomic_graph import AtomicGraph, to_inputs

    expected = model(to_inputs(AtomicGraph.from_atoms(crystal)), compute_stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(got[key], expected[key].detach(), rtol=1e-10, atol=1e-12)


def fit_energies(model, frames, steps: int) -> dict[str, float]:
    """Adam on the energies of ``frames`` (one batch) for ``steps`` steps; mean |error| (eV) per state after."""
    from mpnn_ip.data.atomic_graph import AtomicGraph, collate, info_inputs, to_inputs

    graphs = [AtomicGraph.from_atoms(a, energy=a.get_potential_energy(), **info_inputs(a)) for a in frames]
    batch = to_inputs(collate(graphs))
    reference = batch["energy"].reshape(-1).to(torch.float64)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = ((model(batch, compute_forces=False)["energy"] - reference) ** 2).mean()
        loss.backward()
        optimizer.step()
    model.eval()
    errors = (model(batch, compute_forces=False)["energy"] - reference).abs().detach()
    states = [a.info["config_type"] for a in frames]
    return {state: float(errors[[s == state for s in states]].mean()) for state in sorted(set(states))}


def test_charge_and_spin_states_of_the_same_geometries_are_learnt_apart():
    """Six geometries, each at charges 0/+1 and multiplicities 1/2 (energies 0 to 2.5 eV apart): with the
    embedding every state is fitted to a fraction of the spread; without it the states cannot be told apart."""
    from tiny_checkpoint import build_tiny_model

    from mpnn_ip.data.charge_spin_states import cluster_geometries, state_frames

    frames = state_frames(cluster_geometries(6, seed=3))
    counts = np.array([[(a.numbers == z).sum() for z in (29, 79)] for a in frames], dtype=float)
    energies = np.array([a.get_potential_energy() for a in frames])
    e0 = np.linalg.lstsq(counts, energies, rcond=None)[0]  # per-species E0 of all states together
    errors = {}
    for embedding in (True, False):
        model = build_tiny_model(
            species=["Cu", "Au"], seed=1, charge_spin_embedding=embedding, e0s={29: e0[0], 79: e0[1]}
        ).double()
        errors[embedding] = fit_energies(model, frames, steps=300)
    with_embedding, without = errors[True], errors[False]
    assert max(with_embedding.values()) < 0.15, errors
    assert min(without.values()) > 0.3 and max(without.values()) > 1.0, errors
    assert np.mean(list(with_embedding.values())) < 0.15 * np.mean(list(without.values())), errors


def test_a_dipole_label_trains_the_latent_charges_through_the_dipole_loss_term():
    """Two charged clusters with their dipole as label: 100 Adam steps on the ``dipole`` loss term alone take
    the dipole error of an LES model down by far."""
    from tiny_checkpoint import build_tiny_model

    from mpnn_ip.data.atomic_graph import AtomicGraph, collate
    from mpnn_ip.data.charged_clusters import charged_cluster_frames
    from mpnn_ip.train.losses import WeightedPropertyLoss

    frames = charged_cluster_frames(8, seed=2)
    batch = collate([AtomicGraph.from_atoms(a, dipole=a.info["dipole"]) for a in frames])
    loss = WeightedPropertyLoss(dipole={"weight": 1.0, "fn": "mse"})
    torch.manual_seed(0)
    model = build_tiny_model(species=["Na", "Cl"], long_range="les").double()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)

    def dipole_error() -> float:
        with torch.no_grad():
            return float((model(batch, compute_forces=False)["dipole"] - batch.dipole).abs().mean())

    before = dipole_error()
    for _ in range(100):
        optimizer.zero_grad()
        total, terms = loss(model(batch, compute_forces=False), batch)
        assert set(terms) == {"dipole"}
        total.backward()
        optimizer.step()
    assert dipole_error() < 0.2 * before, (before, dipole_error())


def test_mace_trains_with_latent_charges_and_dispersion_from_the_command_line(trained, monkeypatch):
    """``model=mace_tiny`` with LES, the charge/spin embedding and D3: one epoch, and the checkpoint computes
    charges that sum to each frame's charge."""
    from mpnn_ip import load_model
    from mpnn_ip.data.atomic_graph import AtomicGraph, info_inputs, to_inputs

    run = mpnn_train(
        [
            "model=mace_tiny",
            "model.r_max=3.0",
            "model.long_range=les",
            "model.charge_spin_embedding=true",
            "model.dispersion=d3bj:pbe",
            f"data.train_path={trained['data']}",
            "trainer.max_epochs=1",
            *DATA,
            *QUIET,
        ],
        trained["folder"] / "mace",
        monkeypatch,
    )
    model = load_model(run / "checkpoints" / "last.ckpt", dtype="float64")
    assert type(model).__name__ == "MACE" and model.config["long_range"] == "les"
    cation = clusters(1, seed=0)[0]  # frame 0 carries charge +1, multiplicity 2
    out = model(to_inputs(AtomicGraph.from_atoms(cation, **info_inputs(cation))))
    assert float(out["charges"].sum()) == pytest.approx(1.0, abs=1e-10)
