"""Committees: the mean of the members, their spread as an uncertainty that grows away from the training
data, ``mpnn-eval`` with several checkpoints and ``mpnn-select`` (active learning)."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from conftest import make_molecule, make_triclinic_crystal
from tiny_checkpoint import build_tiny_model, write_checkpoint

from mpnn_ip import MPNNCalculator
from mpnn_ip.data import collate, read_dataset
from mpnn_ip.data.atomic_graph import AtomicGraph, to_inputs
from mpnn_ip.errors import ConfigError
from mpnn_ip.models.committee import Committee

CU_AU = ["Cu", "Au"]


def _alloy(scale: float = 1.0, rattle: float = 0.05, seed: int = 3):
    """32-atom Cu-Au fcc cell (a third Au) at ``scale`` times the Cu lattice constant, rattled."""
    atoms = bulk("Cu", "fcc", a=3.61 * scale, cubic=True).repeat(2)
    atoms.symbols[::3] = "Au"
    atoms.rattle(rattle, seed=seed)
    return atoms


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Three tiny NequIPs fitted (40 Adam steps, energy and forces) from different seeds to 12 frames
    of the embedded Cu-Au EMT data, saved as checkpoints; the frames 12..29 are held out."""
    from mpnn_ip.data.synthetic import default_dataset_path

    root = tmp_path_factory.mktemp("committee")
    frames = read_dataset(default_dataset_path(), index="0:300:10")
    batch = to_inputs(collate(frames[:12]))
    num_atoms = batch["ptr"][1:] - batch["ptr"][:-1]
    paths = []
    for seed in range(3):
        model = build_tiny_model(CU_AU, seed=seed, e0s=None)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
        model.train()
        for _ in range(40):
            out = model(batch, compute_forces=True)
            loss = (((out["energy"] - batch["energy"]) / num_atoms) ** 2).mean() + (
                (out["forces"] - batch["forces"]) ** 2
            ).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        paths.append(write_checkpoint(model.eval(), root / f"member{seed}.ckpt"))
    return {"root": root, "paths": paths, "held_out": frames[12:]}


def test_committee_results_are_the_mean_of_the_members_calculators(tmp_path):
    paths = [write_checkpoint(build_tiny_model(seed=seed), tmp_path / f"m{seed}.ckpt") for seed in range(3)]
    atoms = make_triclinic_crystal()
    atoms.calc = MPNNCalculator.from_checkpoints(paths)
    properties = ["energy", "energies", "forces", "stress", "stresses"]
    committee = {name: atoms.calc.get_property(name, atoms) for name in properties}
    members = []
    for path in paths:
        single = atoms.copy()
        single.calc = MPNNCalculator.from_checkpoint(path)
        members.append({name: single.calc.get_property(name, single) for name in properties})
    for name in properties:
        mean = np.mean([m[name] for m in members], axis=0)
        assert np.allclose(committee[name], mean, rtol=1e-5, atol=1e-5), name
    energies = np.array([m["energy"] for m in members])
    forces = np.array([m["forces"] for m in members])
    assert np.allclose(atoms.calc.get_property("energy_committee", atoms), energies, rtol=1e-6)
    assert np.allclose(atoms.calc.get_property("forces_committee", atoms), forces.transpose(1, 0, 2), atol=1e-6)
    assert atoms.calc.get_property("energy_uncertainty", atoms) == pytest.approx(energies.std(), rel=1e-4)
    expected = np.sqrt(forces.var(axis=0).mean(axis=1))  # population variance, RMS over components
    assert np.allclose(atoms.calc.get_property("forces_uncertainty", atoms), expected, rtol=1e-4, atol=1e-6)


def test_identical_members_have_zero_uncertainty_and_the_members_results():
    model = build_tiny_model().double()
    atoms, single = make_molecule(), make_molecule()
    atoms.calc = MPNNCalculator([model, copy.deepcopy(model)])
    single.calc = MPNNCalculator(model)
    assert atoms.get_potential_energy() == pytest.approx(single.get_potential_energy(), abs=1e-12)
    assert np.allclose(atoms.get_forces(), single.get_forces(), atol=1e-12)
    assert atoms.calc.get_property("energy_uncertainty", atoms) == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(atoms.calc.get_property("forces_uncertainty", atoms), 0.0, atol=1e-12)


def test_members_share_one_radius_graph_and_the_verlet_list(monkeypatch):
    import mpnn_ip.models.base as base

    def no_search(*args, **kwargs):
        raise AssertionError("a member searched its own radius graph")

    monkeypatch.setattr(base, "radius_graph_pbc", no_search)
    committee = Committee([build_tiny_model(seed=0), build_tiny_model(seed=1)])
    out = committee(AtomicGraph.from_atoms(make_triclinic_crystal()))
    assert out["forces_uncertainty"].shape == (len(make_triclinic_crystal()),)
    atoms = make_triclinic_crystal()
    atoms.calc = MPNNCalculator(committee, skin=0.5)
    for _ in range(3):
        atoms.positions[0, 0] += 0.01
        atoms.get_forces()
    assert atoms.calc.neighbor_list.builds == 1 and atoms.calc.neighbor_list.calls == 3


@pytest.mark.parametrize(
    "other, words",
    [
        (dict(species=CU_AU), ["species", "m1.ckpt", "Cu", "Au"]),
        (dict(r_max=4.0), ["r_max", "m1.ckpt", "3.5", "4.0"]),
    ],
)
def test_members_that_differ_are_refused_naming_the_files(tmp_path, other, words):
    first = write_checkpoint(build_tiny_model(seed=0), tmp_path / "m0.ckpt")
    second = write_checkpoint(build_tiny_model(seed=1, **other), tmp_path / "m1.ckpt")
    with pytest.raises(ConfigError) as error:
        MPNNCalculator.from_checkpoints([first, second])
    for word in ["m0.ckpt", *words]:
        assert word in str(error.value)
    with pytest.raises(ConfigError, match="at least two"):
        MPNNCalculator.from_checkpoints([first])


def test_spread_grows_far_from_the_training_data(fitted):
    committee = Committee([MPNNCalculator.from_checkpoint(p).model for p in fitted["paths"]])
    batch = collate(fitted["held_out"])
    held_out = committee(batch)
    near_forces = float(held_out["forces_uncertainty"].mean())
    near_energy = float((held_out["energy_uncertainty"].detach() / (batch.ptr[1:] - batch.ptr[:-1])).mean())  # eV/atom
    far = {
        "compressed 15%": _alloy(scale=0.85),
        "rattled 0.35 Å": _alloy(rattle=0.35),
    }
    for name, atoms in far.items():
        out = committee(AtomicGraph.from_atoms(atoms))
        forces = float(out["forces_uncertainty"].mean())
        assert forces > 2 * near_forces, (name, forces, near_forces)
    compressed = committee(AtomicGraph.from_atoms(far["compressed 15%"]))
    assert float(compressed["energy_uncertainty"].detach()) / 32 > 2 * near_energy


def _write_pool(path: Path, count: int = 8) -> Path:
    """Labelled (EMT) frames from near the training data to far from it."""
    import ase.io
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for k in range(count):
        atoms = _alloy(scale=1.0 - 0.02 * k, rattle=0.03 + 0.03 * k, seed=k)
        atoms.calc = EMT()
        labels = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return path


def test_eval_of_a_committee_writes_uncertainty_beside_the_errors_and_the_plot(fitted, capsys):
    from mpnn_ip.cli.evaluate import run_evaluation
    from mpnn_ip.cli.hydra_app import compose_config

    root = fitted["root"]
    pool = _write_pool(root / "eval_frames.extxyz")
    out = root / "eval"
    members = "[" + ",".join(str(p) for p in fitted["paths"][:2]) + "]"
    cfg = compose_config(
        "eval",
        [f"ckpt_path={members}", f"data.path={pool}", "data.stress_key=null", f"out_dir={out}", "progress=false"],
    )
    run_evaluation(cfg)
    rows = list(csv.DictReader((out / "per_frame.csv").open()))
    assert len(rows) == 8
    for column in (
        "energy_error",
        "forces_rmse",
        "energy_uncertainty",
        "forces_uncertainty_mean",
        "forces_uncertainty_max",
    ):
        assert all(np.isfinite(float(row[column])) for row in rows), column
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoint"] == [str(p) for p in fitted["paths"][:2]]
    rho = metrics["metrics"]["spearman_forces_rmse_vs_uncertainty"]
    assert -1 <= rho <= 1 and metrics["metrics"]["forces_uncertainty_mean"] > 0
    assert (out / "error_vs_uncertainty.png").stat().st_size > 0
    assert "spearman" in capsys.readouterr().out


def test_select_writes_the_n_most_uncertain_frames(fitted):
    import ase.io

    from mpnn_ip.cli.hydra_app import compose_config
    from mpnn_ip.cli.select import run_selection

    root = fitted["root"]
    pool = _write_pool(root / "pool.extxyz")
    out = root / "picked.extxyz"
    pattern = str(root / "member*.ckpt")  # the three members, by a quoted glob pattern as on a command line
    run_selection(
        compose_config("select", [f"ckpts='{pattern}'", f"pool={pool}", "n=3", f"out={out}", "progress=false"])
    )

    committee = Committee([MPNNCalculator.from_checkpoint(p).model for p in fitted["paths"]])
    graphs = [AtomicGraph.from_atoms(a) for a in ase.io.read(pool, ":")]
    uncertainty = [float(committee(g)["forces_uncertainty"].max()) for g in graphs]
    expected = np.argsort(uncertainty)[::-1][:3]
    picked = ase.io.read(out, ":")
    assert [a.info["pool_frame"] for a in picked] == expected.tolist()
    for atoms, k in zip(picked, expected):
        assert atoms.info["forces_uncertainty_max"] == pytest.approx(uncertainty[k], rel=1e-5)
        assert atoms.arrays["forces_uncertainty"].shape == (32,)
        assert atoms.get_potential_energy() != 0  # the pool's labels travel with the frame
    scores = list(csv.DictReader((root / "picked_scores.csv").open()))
    assert len(scores) == 8 and sorted(int(r["rank"]) for r in scores if r["rank"]) == [1, 2, 3]


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["n=9"], ["n=9", "has 8"]),
        (["ckpts=[{first}]"], ["two or more"]),
        (["pool={root}/missing.xyz"], ["missing.xyz", "not found"]),
        (["ckpts=[{first},{root}/absent.ckpt]"], ["absent.ckpt", "does not exist"]),
        (["criterion=entropy"], ["entropy", "forces_mean"]),
    ],
)
def test_select_refuses_bad_requests_with_a_clear_error(fitted, overrides, words):
    from mpnn_ip.cli.hydra_app import compose_config
    from mpnn_ip.cli.select import run_selection
    from mpnn_ip.errors import DataError

    root = fitted["root"]
    pool = root / "errors_pool.extxyz"
    if not pool.exists():
        _write_pool(pool)
    first, second = fitted["paths"][:2]
    base = [f"ckpts=[{first},{second}]", f"pool={pool}", "n=2", f"out={root / 'never.extxyz'}", "progress=false"]
    given = [o.format(first=first, root=root) for o in overrides]
    keys = {o.split("=")[0] for o in given}
    cfg = compose_config("select", [o for o in base if o.split("=")[0] not in keys] + given)
    with pytest.raises((ConfigError, DataError)) as error:
        run_selection(cfg)
    for word in words:
        assert word in str(error.value)
