"""An imported model is an ordinary checkpoint of ours: every tool reads it, and it fine-tunes.

Starts from the mace-torch fixture that looks most like the foundation models (ScaleShiftMACE,
residual first interaction, max_ell 3, correlation 3; tests/data/interop/mace, made by
scripts/make_interop_fixtures_mace.py) and the NequIP 0.19 checkpoint fixture (nequip-s settings).
"""

from __future__ import annotations

import hashlib
import lzma
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("torch_cluster")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data" / "interop"
MACE_FIXTURE = FIXTURES / "mace" / "scaleshift_residual_l3_c3.model.xz"
NEQUIP_FIXTURE = FIXTURES / "nequip" / "nequip_s.ckpt.xz"


def decompressed(source: Path, folder: Path) -> Path:
    """``source`` (an ``.xz`` fixture) decompressed into ``folder``; the path of the model file."""
    target = folder / source.name.removesuffix(".xz")
    target.write_bytes(lzma.decompress(source.read_bytes()))
    return target


def structures() -> list:
    """The mace fixture's structures (molecule, bulk, slab, triclinic, lone atom) as ASE Atoms."""
    from ase import Atoms

    data = np.load(FIXTURES / "mace" / "structures.npz")
    return [
        Atoms(
            numbers=data[f"{n}.numbers"], positions=data[f"{n}.positions"], cell=data[f"{n}.cell"], pbc=data[f"{n}.pbc"]
        )
        for n in data["names"]
    ]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """``(source file, checkpoint)``: the MACE fixture imported with ``mpnn-import``."""
    from mpnn_ip.cli.import_model import main

    folder = tmp_path_factory.mktemp("imported")
    source = decompressed(MACE_FIXTURE, folder)
    main([str(source), f"out={folder / 'mace.ckpt'}"])
    return source, folder / "mace.ckpt"


def test_mpnn_import_writes_a_weights_only_checkpoint_that_records_its_source(imported):
    source, ckpt_path = imported
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    origin = ckpt["mpnn_ip"]["source"]
    assert origin["file_name"] == source.name and origin["package"] == "mace-torch"
    assert origin["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert origin["hyperparameters"] and origin["heads"] == ["Default"]
    assert ckpt["mpnn_ip"]["model_name"] == "mace" and ckpt["mpnn_ip"]["dtype"] == "float64"


def test_the_calculator_committee_and_loader_give_the_imported_models_numbers(imported):
    from mpnn_ip.calculators import MPNNCalculator
    from mpnn_ip.checkpoint import load_model
    from mpnn_ip.interop import import_model

    source, ckpt_path = imported
    direct = import_model(source)
    loaded = load_model(ckpt_path)
    assert loaded.checkpoint_metadata["source"]["package"] == "mace-torch"
    single = MPNNCalculator.from_checkpoint(ckpt_path)
    committee = MPNNCalculator.from_checkpoints([ckpt_path, ckpt_path])
    for atoms in structures():
        expected = float(direct(_inputs(atoms), compute_forces=False)["energy"][0].detach())
        assert float(loaded(_inputs(atoms), compute_forces=False)["energy"][0].detach()) == pytest.approx(
            expected, abs=1e-10
        )
        for calc in (single, committee):
            copy = atoms.copy()
            copy.calc = calc
            assert copy.get_potential_energy() == pytest.approx(expected, abs=1e-8)


def _inputs(atoms):
    from mpnn_ip.data.atomic_graph import AtomicGraph, collate, to_inputs

    return to_inputs(collate([AtomicGraph.from_atoms(atoms)]))


def test_torchsim_reads_the_imported_checkpoint(imported):
    pytest.importorskip("torch_sim")
    from mpnn_ip.calculators import MPNNCalculator
    from mpnn_ip.torchsim import MPNNTorchSimModel

    _, ckpt_path = imported
    model = MPNNTorchSimModel.from_checkpoint(ckpt_path)
    assert model is not None and MPNNCalculator.from_checkpoint(ckpt_path) is not None


@pytest.mark.slow
def test_mpnn_md_runs_an_imported_model(imported, tmp_path):
    import ase.io

    from mpnn_ip.calculators import MPNNCalculator
    from mpnn_ip.md import run_md

    _, ckpt_path = imported
    atoms = structures()[0]
    atoms.center(vacuum=4.0)
    summary = run_md(
        atoms,
        MPNNCalculator.from_checkpoint(ckpt_path),
        ensemble="nve",
        temperature=100,
        steps=4,
        log_interval=2,
        out_dir=tmp_path,
        trajectory="md.extxyz",
        seed=0,
    )
    assert len(summary["log_rows"]) == 3 and all(np.isfinite(row).all() for row in summary["log_rows"])
    assert len(ase.io.read(tmp_path / "md.extxyz", ":")) == 3


@pytest.mark.slow
def test_export_of_an_imported_model_matches_it(imported, tmp_path):
    from mpnn_ip.checkpoint import load_model
    from mpnn_ip.export import export_model

    _, ckpt_path = imported
    info = export_model(load_model(ckpt_path), tmp_path / "mace.pt2", compile=False)
    assert max(info["parity"].values()) < 1e-8


def _emt_frames(path: Path, symbols_per_frame: list[list[str]], seed: int = 0) -> Path:
    """Small rattled periodic cells of the given elements, labelled by ASE's EMT, as extxyz."""
    import ase.io
    from ase import Atoms
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    frames = []
    for symbols in symbols_per_frame:
        n = len(symbols)
        atoms = Atoms(symbols, positions=rng.uniform(0, 4.5, size=(n, 3)), cell=np.eye(3) * 4.5, pbc=True)
        while min(atoms.get_all_distances(mic=True)[np.triu_indices(n, 1)]) < 1.0:
            atoms.positions = rng.uniform(0, 4.5, size=(n, 3))
        atoms.calc = EMT()
        labels = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(), stress=atoms.get_stress())
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return path


@pytest.mark.slow
def test_an_imported_model_fine_tunes_and_elements_absent_from_the_new_data_keep_working(
    imported, tmp_path, monkeypatch
):
    from hydra.core.global_hydra import GlobalHydra

    from mpnn_ip.checkpoint import load_model
    from mpnn_ip.cli.train import main

    _, ckpt_path = imported
    data = _emt_frames(tmp_path / "ch.extxyz", [["C"] * 4 + ["H"] * 2] * 8 + [["C"] * 3 + ["H"] * 3] * 4)
    run_dir = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "mpnn-train",
            f"finetune_from={ckpt_path}",
            "data=extxyz",
            f"data.train_path={data}",
            "data.train_count=8",
            "data.val_count=4",
            "data.test_count=0",
            "data.batch_size=4",
            "trainer.max_epochs=1",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "test_after_fit=false",
            f"hydra.run.dir={run_dir}",
        ],
    )
    try:
        main()
    finally:
        GlobalHydra.instance().clear()
    finetuned, pretrained = load_model(run_dir / "checkpoints" / "last.ckpt"), load_model(ckpt_path)
    changed = [k for k, v in finetuned.state_dict().items() if not torch.equal(v, pretrained.state_dict()[k])]
    assert any(k.startswith("interactions.") for k in changed), "fine-tuning did not change the network"
    oxygen = finetuned.species.index(8)
    assert float(finetuned.e0[oxygen]) == pytest.approx(float(pretrained.e0[oxygen]))
    for atoms in structures():  # every structure has O or the pretrained species: all finite
        out = finetuned(_inputs(atoms), compute_forces=True)
        assert torch.isfinite(out["energy"]).all() and torch.isfinite(out["forces"]).all()


def test_a_nequip_checkpoint_imports_through_the_same_entry_point(tmp_path):
    from mpnn_ip.checkpoint import load_model
    from mpnn_ip.interop.importer import write_imported_checkpoint

    source = decompressed(NEQUIP_FIXTURE, tmp_path)
    meta = write_imported_checkpoint(source, tmp_path / "nequip.ckpt")
    assert meta["model_name"] == "nequip" and meta["source"]["package"] == "nequip"
    model = load_model(tmp_path / "nequip.ckpt")
    assert torch.isfinite(model(_inputs(structures()[0]))["forces"]).all()
