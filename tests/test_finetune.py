"""Fine-tuning (``mpnn-train finetune_from=<ckpt>``): a pretrained model beats training from scratch on 50
frames of a shifted EMT parameterisation; frozen groups stay fixed; species, E0 re-fit, replay and the
settings that exclude each other behave as documented.

The headline test fine-tunes ``tests/data/quickstart_nequip_tiny.ckpt`` (the quickstart's nequip_tiny,
trained on the embedded Cu-Au EMT data). The other tests start from a random tiny NequIP written as a
checkpoint, with Ag in its species although no pretraining frame holds Ag. Every run is in-process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from train_in_process import mpnn_train

pytest.importorskip("lightning")
pytest.importorskip("hydra")

REPO = Path(__file__).resolve().parents[1]
QUICKSTART_CHECKPOINT = REPO / "tests" / "data" / "quickstart_nequip_tiny.ckpt"
#: EMT parameters (E0, s0, V0, eta2, kappa, lambda, n0) of the "new DFT": cohesive energies, radii and
#: pair strengths changed by 3-8 % from ASE's.
SHIFTED_EMT = {
    "Cu": (-3.70, 2.70, 2.60, 1.652, 2.740, 1.906, 0.00910),
    "Au": (-3.90, 3.03, 2.45, 1.674, 2.873, 2.182, 0.00703),
}
#: eV per atom added to the new energies: another code's zero of energy.
REFERENCE_OFFSET = {28: 0.0, 29: -0.30, 47: 0.10, 79: 0.20}
QUIET = [
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "callbacks.ema.decay=0.9",
]
SMALL_DATA = ["data=extxyz", "data.train_count=8", "data.val_count=4", "data.test_count=0", "data.batch_size=4"]


def labelled(frames, parameters=None):
    """``frames`` labelled by EMT (with ``parameters`` replacing ASE's), plus :data:`REFERENCE_OFFSET`."""
    import ase.calculators.emt as emt
    from ase.calculators.singlepoint import SinglePointCalculator

    with pytest.MonkeyPatch.context() as patch:
        for symbol, values in (parameters or {}).items():
            patch.setitem(emt.parameters, symbol, values)
        out = []
        for atoms in frames:
            atoms = atoms.copy()
            atoms.calc = emt.EMT()
            energy = atoms.get_potential_energy() + sum(REFERENCE_OFFSET[int(z)] for z in atoms.numbers)
            atoms.calc = SinglePointCalculator(
                atoms, energy=energy, forces=atoms.get_forces(), stress=atoms.get_stress()
            )
            out.append(atoms)
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("finetune")


@pytest.fixture(scope="module")
def shifted_emt_file(folder) -> Path:
    """70 Cu-Au frames of the embedded recipe (other seed), labelled by the shifted EMT."""
    import ase.calculators.emt as emt
    import ase.io

    from mpnn_ip.data import make_dataset

    with pytest.MonkeyPatch.context() as patch:  # the recipe's MD runs on the shifted potential too
        for symbol, values in SHIFTED_EMT.items():
            patch.setitem(emt.parameters, symbol, values)
        frames = make_dataset(70, seed=7)
    path = folder / "shifted_emt.xyz"
    ase.io.write(path, labelled(frames, SHIFTED_EMT))
    return path


def embedded_frames(folder: Path, name: str, index: str) -> Path:
    """Frames ``index`` of the embedded Cu-Au EMT data, as a file of their own."""
    import ase.io

    from mpnn_ip.data import default_dataset_path

    path = folder / name
    ase.io.write(path, ase.io.read(default_dataset_path(), index=index))
    return path


@pytest.fixture(scope="module")
def old_file(folder) -> Path:
    """12 frames of the embedded (pretraining) data: the replay set."""
    return embedded_frames(folder, "old.xyz", ":12")


@pytest.fixture(scope="module")
def cu_au_file(folder) -> Path:
    """12 other frames of the embedded data: new Cu-Au frames for the short runs."""
    return embedded_frames(folder, "cu_au.xyz", "200:212")


def alloy_file(folder: Path, name: str, third: str) -> Path:
    """12 Cu-Au frames of the embedded data with a quarter of the atoms turned into ``third``, EMT-labelled."""
    import ase.io

    from mpnn_ip.data import default_dataset_path

    frames = ase.io.read(default_dataset_path(), index="100:112")
    for k, atoms in enumerate(frames):
        numbers = atoms.numbers.copy()
        numbers[np.random.default_rng(k).permutation(len(atoms))[: len(atoms) // 4]] = {"Ag": 47, "Ni": 28}[third]
        atoms.numbers = numbers
    path = folder / name
    ase.io.write(path, labelled(frames))
    return path


@pytest.fixture(scope="module")
def pretrained(folder) -> Path:
    """A tiny two-layer NequIP for Cu, Ag and Au (random weights, Ag E0 0) written as an mpnn-train checkpoint."""
    from mpnn_ip.checkpoint import checkpoint_metadata
    from mpnn_ip.models import build_model

    torch.manual_seed(0)
    model = build_model(
        "nequip",
        species=[29, 47, 79],
        r_max=3.0,
        num_layers=2,
        l_max=1,
        num_features=4,
        radial_mlp=[8],
        avg_num_neighbors=8.0,
        e0s={29: -1.0, 79: -2.0},
    )
    statistics = {"species": [29, 79], "e0s": {29: -1.0, 79: -2.0}, "avg_num_neighbors": 8.0, "force_rms": 0.8}
    path = folder / "pretrained.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "mpnn_ip": checkpoint_metadata(model, statistics)}, path)
    return path


def user_error(args, run_dir: Path, monkeypatch, capsys) -> str:
    """The one-paragraph message of an ``mpnn-train`` run that must stop with exit code 2."""
    with pytest.raises(SystemExit) as stopped:
        mpnn_train(args, run_dir, monkeypatch)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert "Traceback" not in err and "mpnn-train: error:" in err, err
    return err


def weights(run_dir: Path, name: str = "last") -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=True)
    return {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


# --- the headline: fine-tuning beats training from scratch on 50 frames ---------------------------------------


@pytest.mark.slow
def test_finetuning_beats_training_from_scratch_on_50_frames_of_a_shifted_emt(shifted_emt_file, folder, monkeypatch):
    data = [f"data.train_path={shifted_emt_file}", "data.train_count=50", "data.val_count=20", "data.test_count=0"]
    budget = [
        "data=extxyz",
        *data,
        "data.batch_size=5",
        "dtype=float32",
        "trainer.max_epochs=2",
        "optim.lr=0.01",
        "test_after_fit=false",
        *QUIET,
    ]
    finetuned = mpnn_train(
        [f"finetune_from={QUICKSTART_CHECKPOINT}", "finetune.lr=0.005", *budget], folder / "finetuned", monkeypatch
    )
    scratch = mpnn_train(["model=nequip_tiny", *budget], folder / "scratch", monkeypatch)
    ft, sc = last_validation(finetuned), last_validation(scratch)
    zero_shot = pretrained_errors_with_refitted_e0(shifted_emt_file, finetuned)
    print(
        "\nvalidation (20 frames), force RMSE eV/Å and energy RMSE meV/atom: pretrained with re-fitted E0 "
        f"{zero_shot[0]:.4f}, {1000 * zero_shot[1]:.1f}; after 2 epochs of 50 frames fine-tuned {ft[0]:.4f}, "
        f"{1000 * ft[1]:.1f}; from scratch {sc[0]:.4f}, {1000 * sc[1]:.1f}"
    )
    assert ft[0] < 0.5 * sc[0] and ft[1] < 0.5 * sc[1]
    assert ft[0] < zero_shot[0]
    config = (finetuned / "config.yaml").read_text()
    assert "num_features: 16" in config and "finetune_from:" in config  # the checkpoint's architecture is recorded


def last_validation(run_dir: Path) -> tuple[float, float]:
    """(force RMSE eV/Å, energy RMSE eV/atom) of the run's last validation (EMA weights), from metrics.csv."""
    import csv

    with (run_dir / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/forces_rmse")]
    return float(rows[-1]["val/forces_rmse"]), float(rows[-1]["val/energy_per_atom_rmse"])


def pretrained_errors_with_refitted_e0(path: Path, finetuned: Path) -> tuple[float, float]:
    """Errors of the pretrained model, E0 re-fitted as the fine-tuning run did, on that run's validation frames."""
    from mpnn_ip.checkpoint import load_model
    from mpnn_ip.data import collate
    from mpnn_ip.data.datamodule import AtomicDataModule

    model = load_model(QUICKSTART_CHECKPOINT)
    model.e0.copy_(weights(finetuned)["e0"])
    data = AtomicDataModule(str(path), train_count=50, val_count=20, test_count=0, r_max=model.r_max)
    data.setup()
    batch = collate(data.val_dataset.graphs)
    out = model(batch)
    forces_rmse = float((out["forces"].double() - batch.forces).pow(2).mean().sqrt())
    per_atom = (out["energy"].double().detach() - batch.energy) / torch.bincount(batch.batch)
    return forces_rmse, float(per_atom.pow(2).mean().sqrt())


# --- freezing, replay, resume ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frozen_run(pretrained, old_file, cu_au_file, folder) -> Path:
    """One epoch with the embedding and the first layer frozen, half of each epoch replayed old frames."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return mpnn_train(
            [
                f"finetune_from={pretrained}",
                "finetune.freeze=[species_embedding,layers.0]",
                f"data.train_path={cu_au_file}",
                f"finetune.replay_path={old_file}",
                "finetune.replay_fraction=0.5",
                "trainer.max_epochs=1",
                *SMALL_DATA,
                *QUIET,
            ],
            folder / "frozen",
            monkeypatch,
        )


def test_frozen_groups_keep_their_pretrained_weights(frozen_run, pretrained):
    before = {k.removeprefix("model."): v for k, v in torch.load(pretrained, weights_only=True)["state_dict"].items()}
    after = weights(frozen_run)
    frozen = [k for k in before if k.startswith(("species_embedding.", "layers.0."))]
    trained = [k for k in before if k.startswith(("layers.1.", "readout.")) and before[k].is_floating_point()]
    assert frozen and trained
    for key in frozen:
        assert torch.equal(after[key], before[key]), key
    assert any(not torch.equal(after[key], before[key]) for key in trained)


def test_replay_adds_the_requested_share_of_old_frames_to_each_epoch(frozen_run):
    """8 new frames at replay_fraction 0.5: 8 old ones per epoch, 16 frames = 4 steps of 4."""
    ckpt = torch.load(frozen_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    assert ckpt["mpnn_ip"]["statistics"]["num_frames"] == 8  # statistics (and E0) from the new frames only


def test_replay_sampler_draws_old_frames_anew_each_epoch_and_validation_stays_new(shifted_emt_file, old_file):
    from mpnn_ip.data.datamodule import AtomicDataModule

    data = AtomicDataModule(str(shifted_emt_file), train_count=30, val_count=10, test_count=0, batch_size=4, r_max=3.0)
    data.add_replay(str(old_file), 0.2)
    loader = data.train_dataloader()
    sampler = loader.sampler
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert sorted(i for i in indices if i < 30) == list(range(30))  # every new frame once
        old = [i - 30 for i in indices if i >= 30]
        assert len(old) == round(0.2 / 0.8 * 30) == 8 and len(set(old)) == 8
        epochs.append(set(old))
    assert len(epochs[0] | epochs[1] | epochs[2]) > 8  # a fresh draw of the 12 old frames each epoch
    assert len(loader.dataset) == 42 and len(data.val_dataset) == 10
    assert {g.source_path for g in data.val_dataset.graphs} == {str(shifted_emt_file)}
    with pytest.raises(Exception, match="replay_fraction"):
        data.add_replay(str(old_file), 1.0)


def test_resume_continues_a_finetuning_run_with_its_groups_still_frozen(frozen_run, pretrained, monkeypatch):
    mpnn_train([f"resume={frozen_run}", "trainer.max_epochs=2"], frozen_run, monkeypatch)
    ckpt = torch.load(frozen_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 8
    before = {k.removeprefix("model."): v for k, v in torch.load(pretrained, weights_only=True)["state_dict"].items()}
    after = weights(frozen_run)
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("layers.0."))


def test_unknown_group_is_refused_with_the_list_of_groups(pretrained, cu_au_file, folder, monkeypatch, capsys):
    message = user_error(
        [
            f"finetune_from={pretrained}",
            "finetune.freeze=[embedding]",
            f"data.train_path={cu_au_file}",
            *SMALL_DATA,
            *QUIET,
        ],
        folder / "unknown_group",
        monkeypatch,
        capsys,
    )
    assert "embedding" in message
    for group in ("species_embedding", "layers", "layers.0", "layers.1", "readout", "scale_shift"):
        assert group in message


def test_parameter_groups_come_from_the_module_tree():
    from mpnn_ip.models import build_model
    from mpnn_ip.train.finetune import freeze, parameter_groups

    model = build_model(
        "mace",
        species=[29, 79],
        r_max=3.0,
        num_interactions=2,
        hidden_irreps="4x0e+4x1o",
        max_ell=1,
        correlation=2,
        radial_mlp=[8],
    )
    groups = parameter_groups(model)
    assert {"species_embedding", "interactions", "interactions.0", "interactions.1", "products.1", "readouts.0"} <= set(
        groups
    )
    trainable, total = freeze(model, ["species_embedding", "interactions.0"])
    assert total == sum(p.numel() for p in model.parameters())
    assert trainable == total - sum(p.numel() for name in ("species_embedding", "interactions.0") for p in groups[name])


def test_model_settings_that_differ_from_the_checkpoint_are_named():
    from omegaconf import OmegaConf

    from mpnn_ip.train.finetune import ignored_model_settings

    meta = torch.load(QUICKSTART_CHECKPOINT, weights_only=True)["mpnn_ip"]
    model_cfg = OmegaConf.create(
        {
            "_target_": "mpnn_ip.models.nequip.NequIP",
            "species": "${training_data_stats:species}",
            "r_max": 4.5,
            "num_layers": 4,
            "radial_mlp": [32],
            "e0s": {29: 1.0},
        }
    )
    assert ignored_model_settings(model_cfg, meta) == ["num_layers=4 (checkpoint: 2)"]
    model_cfg._target_ = "mpnn_ip.models.mace.MACE"
    assert ignored_model_settings(model_cfg, meta) == [
        "_target_=mpnn_ip.models.mace.MACE (checkpoint: mpnn_ip.models.nequip.NequIP)"
    ]


# --- species and E0 --------------------------------------------------------------------------------------


def test_element_outside_the_pretrained_species_is_refused(pretrained, folder, monkeypatch, capsys):
    nickel = alloy_file(folder, "cu_au_ni.xyz", "Ni")
    message = user_error(
        [f"finetune_from={pretrained}", f"data.train_path={nickel}", *SMALL_DATA, *QUIET],
        folder / "nickel",
        monkeypatch,
        capsys,
    )
    assert "Ni" in message and "built with them in species" in message


def test_element_in_species_but_not_in_pretraining_is_accepted_and_gets_its_e0(pretrained, folder, monkeypatch):
    silver = alloy_file(folder, "cu_au_ag.xyz", "Ag")
    run = mpnn_train(
        [f"finetune_from={pretrained}", f"data.train_path={silver}", "trainer.max_epochs=1", *SMALL_DATA, *QUIET],
        folder / "silver",
        monkeypatch,
    )
    e0 = dict(zip([29, 47, 79], weights(run)["e0"].tolist()))
    assert all(abs(e0[z] - old) > 1e-3 for z, old in ((29, -1.0), (47, 0.0), (79, -2.0)))  # re-fitted, Ag too
    meta = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["mpnn_ip"]
    assert meta["model_config"]["e0s"] == pytest.approx(e0)
    assert meta["statistics"]["e0s"] == pytest.approx(e0)
    assert meta["statistics"]["avg_num_neighbors"] == 8.0  # an architecture constant, kept
    assert meta["statistics"]["finetuned_from"] == str(pretrained)


def test_refit_e0_false_keeps_the_pretrained_e0(pretrained, cu_au_file, folder, monkeypatch):
    run = mpnn_train(
        [
            f"finetune_from={pretrained}",
            "finetune.refit_e0=false",
            f"data.train_path={cu_au_file}",
            "trainer.max_epochs=1",
            *SMALL_DATA,
            *QUIET,
        ],
        folder / "keep_e0",
        monkeypatch,
    )
    assert weights(run)["e0"].tolist() == [-1.0, 0.0, -2.0]


def test_refit_recovers_a_per_species_change_of_reference_energy():
    """New energies = the pretrained model's prediction + per-species offsets: E0 moves by exactly those offsets;
    with isolated-atom energies E0 takes them and the per-species shift takes the rest."""
    import ase.io

    from mpnn_ip.data import AtomicGraph, default_dataset_path
    from mpnn_ip.models import build_model
    from mpnn_ip.train.energy_references import predicted_energies, refit_energy_references

    torch.manual_seed(1)
    model = build_model(
        "nequip",
        species=[29, 47, 79],
        r_max=4.5,
        num_layers=1,
        l_max=1,
        num_features=4,
        radial_mlp=[8],
        e0s={29: -1.0, 79: -2.0},
    ).double()  # r_max: every atom has its full per-species shift
    frames = ase.io.read(default_dataset_path(), index=":10")
    graphs = [AtomicGraph.from_atoms(a) for a in frames]
    predicted = predicted_energies(model, graphs)
    offsets = {29: 0.25, 79: -0.4}
    for graph, energy in zip(graphs, predicted):
        graph.energy = torch.tensor([energy + sum(offsets[int(z)] for z in graph.atomic_numbers)], dtype=torch.float64)
        graph.has_energy = torch.tensor([True])
    refitted, source = refit_energy_references(model, graphs)
    assert source == "least_squares_of_pretrained_residual"
    assert refitted.e0.tolist() == pytest.approx([-0.75, 0.0, -2.4], abs=1e-8)
    assert refitted.config["e0s"] == pytest.approx({29: -0.75, 47: 0.0, 79: -2.4}, abs=1e-8)
    assert predicted_energies(refitted, graphs) == pytest.approx([float(g.energy) for g in graphs], abs=1e-7)

    with_isolated, source = refit_energy_references(model, graphs, isolated_atom_energies={29: -3.0, 79: -5.0})
    assert source.startswith("isolated_atoms")
    assert with_isolated.e0.tolist() == [-3.0, 0.0, -5.0]
    assert predicted_energies(with_isolated, graphs) == pytest.approx([float(g.energy) for g in graphs], abs=1e-7)


# --- settings that exclude each other --------------------------------------------------------------------


def test_finetune_from_with_ckpt_path_is_refused(pretrained, folder, monkeypatch, capsys):
    message = user_error(
        [f"finetune_from={pretrained}", f"ckpt_path={pretrained}", *QUIET], folder / "both", monkeypatch, capsys
    )
    assert "finetune_from" in message and "ckpt_path" in message and "resume=" in message


def test_finetune_settings_without_finetune_from_are_refused(folder, monkeypatch, capsys):
    message = user_error(["finetune.freeze=[layers.0]", *QUIET], folder / "no_source", monkeypatch, capsys)
    assert "finetune.freeze" in message and "finetune_from" in message
