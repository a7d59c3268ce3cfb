"""Multi-head replay fine-tuning (``mpnn-train finetune_from=<mace ckpt> finetune.new_head=new finetune.replay_path=...``):
the pretrained head keeps its knowledge of the old data where plain fine-tuning with replay forgets it, the new
head learns the new data, and an element absent from the new data keeps working.

Pretrained model: ``tests/data/multihead/mace_tiny_cu_au.ckpt``, a ``mace_tiny`` trained on 240 frames of the
embedded Cu-Au EMT data (``python scripts/benchmark_multihead_finetune.py --write-pretrained <that path>``). New
data: pure-Cu cells labelled by a shifted EMT with another zero of energy; replayed: held-out old frames (the
recipe of that script, which prints the same comparison at a larger budget).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("hydra")

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "tests" / "data" / "multihead" / "mace_tiny_cu_au.ckpt"
sys.path.insert(0, str(REPO / "scripts"))
import benchmark_multihead_finetune as recipe  # noqa: E402

TRAIN, VAL, REPLAY = 16, 8, 16
BUDGET = dict(epochs=2, train_count=TRAIN, val_count=VAL, replay_fraction=0.5, batch_size=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    import ase.io

    folder = tmp_path_factory.mktemp("multihead")
    new, replay = recipe.new_frames(TRAIN + VAL, seed=3), recipe.old_frames(slice(240, 240 + REPLAY))
    ase.io.write(folder / "new.xyz", new)
    ase.io.write(folder / "replay.xyz", replay)
    validation = recipe.validation_frames(folder / "new.xyz", TRAIN, VAL)
    return {
        "folder": folder,
        "new": folder / "new.xyz",
        "replay_file": folder / "replay.xyz",
        "replay": replay,
        "validation": validation,
    }


def _train(data: dict, heads: bool, monkeypatch) -> Path:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(data["folder"])
    name = "multihead" if heads else "plain"
    args = recipe.finetune_args(PRETRAINED, data["new"], data["replay_file"], heads=heads, **BUDGET)
    return recipe.mpnn_train(args, data["folder"] / name) / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def multihead_ckpt(data) -> Path:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _train(data, True, monkeypatch)


@pytest.fixture(scope="module")
def plain_ckpt(data) -> Path:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _train(data, False, monkeypatch)


def test_the_pretrained_head_keeps_the_old_data_where_plain_finetuning_forgets_it(data, multihead_ckpt, plain_ckpt):
    from mpnn_ip.checkpoint import load_model

    before = recipe.errors(load_model(PRETRAINED), data["replay"])
    kept = recipe.errors(load_model(multihead_ckpt), data["replay"], head="Default")
    plain = recipe.errors(load_model(plain_ckpt), data["replay"])
    print(
        f"\nreplay frames, forces eV/Å and energy eV/atom: before {before}; multi-head 'Default' {kept}; plain {plain}"
    )
    # the kept head stays where it was on the old frames (MACE's energy-shift refit even removes the pretrained
    # model's offset there); plain fine-tuning serves both data with one head and moves further from them. Its
    # refitted per-species shift absorbs most of the other zero of energy here, since only the old data hold Au
    assert kept["energy_per_atom_rmse"] < before["energy_per_atom_rmse"] + 0.01
    assert kept["energy_per_atom_rmse"] < plain["energy_per_atom_rmse"]
    assert kept["forces_rmse"] < 1.3 * before["forces_rmse"] and kept["forces_rmse"] < plain["forces_rmse"]
    logged = _last_row(multihead_ckpt.parents[1] / "metrics.csv")  # the run's own replay metrics, pretrained head
    assert float(logged["val_replay/forces_rmse"]) == pytest.approx(kept["forces_rmse"], rel=1e-3)


def _last_row(path: Path) -> dict:
    import csv

    with path.open() as handle:
        return [row for row in csv.DictReader(handle) if row.get("val_replay/forces_rmse")][-1]


def test_the_new_head_learns_the_new_data_and_is_the_default_head(data, multihead_ckpt):
    from mpnn_ip.calculators import MPNNCalculator
    from mpnn_ip.checkpoint import load_model

    pretrained, finetuned = load_model(PRETRAINED), load_model(multihead_ckpt)
    assert finetuned.heads == ["new", "Default"]
    zero_shot = recipe.errors(pretrained, data["validation"])
    learned = recipe.errors(finetuned, data["validation"], head="new")
    print(f"\nnew validation frames: pretrained {zero_shot}; new head {learned}")
    assert (
        learned["forces_rmse"] < zero_shot["forces_rmse"]
        and learned["energy_per_atom_rmse"] < 0.5 * zero_shot["energy_per_atom_rmse"]
    )
    atoms = data["validation"][0].copy()
    default = MPNNCalculator.from_checkpoint(multihead_ckpt, compile=False).get_potential_energy(atoms)
    assert default == pytest.approx(
        MPNNCalculator.from_checkpoint(multihead_ckpt, head="new", compile=False).get_potential_energy(atoms)
    )


def test_an_element_absent_from_the_new_data_keeps_working_and_its_pretrained_e0(data, multihead_ckpt):
    from mpnn_ip.checkpoint import load_model

    pretrained, finetuned = load_model(PRETRAINED), load_model(multihead_ckpt)
    gold = [atoms for atoms in data["replay"] if 79 in atoms.numbers][:3]
    for head in finetuned.heads:
        out = recipe.errors(finetuned, gold, head=head)
        assert np.isfinite(list(out.values())).all()
    assert finetuned.head_e0s(1)[79] == pretrained.head_e0s(0)[79]  # the pretrained head's E0, unchanged
    assert finetuned.head_e0s(0)[79] == pretrained.head_e0s(0)[79]  # absent from the new data: not re-fitted
    assert finetuned.head_e0s(0)[29] != pretrained.head_e0s(0)[29]  # Cu's E0 of the new head follows the new data


def test_replayed_frames_are_evaluated_with_the_pretrained_head(data):
    from mpnn_ip.data.datamodule import AtomicDataModule

    module = AtomicDataModule(
        str(data["new"]), train_count=TRAIN, val_count=VAL, test_count=0, batch_size=8, outlier_sigma=None
    )
    module.add_replay(str(data["replay_file"]), 0.5, head=1)
    heads = torch.cat([batch.head for batch in module.train_dataloader()])
    assert int((heads == 0).sum()) == TRAIN and int((heads == 1).sum()) == TRAIN  # half of the epoch replayed
    new, replayed = module.val_dataloader()  # validation on the new head (no head = 0), and val_replay
    assert getattr(next(iter(new)), "head", None) is None
    assert sum(len(batch.head) for batch in replayed) == REPLAY and all(
        bool((batch.head == 1).all()) for batch in replayed
    )


def _user_error(args: list[str], data: dict, monkeypatch, capsys) -> str:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(data["folder"])
    with pytest.raises(SystemExit) as stopped:
        recipe.mpnn_train(args, data["folder"] / "refused")
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err, err
    return err


def test_a_new_head_without_replay_frames_is_refused(data, monkeypatch, capsys):
    args = [
        a
        for a in recipe.finetune_args(PRETRAINED, data["new"], data["replay_file"], heads=True, **BUDGET)
        if "replay" not in a
    ]
    err = _user_error(args, data, monkeypatch, capsys)
    assert "finetune.new_head=new trains a new head" in err and "finetune.replay_path=" in err


def test_an_unknown_pretrained_head_is_refused_listing_the_heads(data, monkeypatch, capsys):
    args = [
        *recipe.finetune_args(PRETRAINED, data["new"], data["replay_file"], heads=True, **BUDGET),
        "finetune.pretrained_head=pbe",
    ]
    err = _user_error(args, data, monkeypatch, capsys)
    assert "finetune.pretrained_head=pbe is not a head of the pretrained model; its heads are ['Default']" in err


def test_a_model_without_heads_is_refused_with_a_clear_message(data, monkeypatch, capsys):
    from tiny_checkpoint import write_checkpoint

    from mpnn_ip.models import build_model

    torch.manual_seed(0)
    schnet = write_checkpoint(build_model("schnet", species=["Cu", "Au"], r_max=3.5), data["folder"] / "schnet.ckpt")
    args = recipe.finetune_args(schnet, data["new"], data["replay_file"], heads=True, **BUDGET)
    assert "SchNet models have no heads" in _user_error(args, data, monkeypatch, capsys)


def test_a_nequip_checkpoint_gets_a_new_head_and_keeps_its_pretrained_one(data, monkeypatch):
    from tiny_checkpoint import build_tiny_model, write_checkpoint

    from mpnn_ip.checkpoint import load_model

    pretrained = write_checkpoint(
        build_tiny_model(["Cu", "Au"], e0s={"Cu": -3.7, "Au": -3.2}), data["folder"] / "nequip_tiny.ckpt"
    )
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(data["folder"])
    budget = {**BUDGET, "epochs": 1}
    args = recipe.finetune_args(pretrained, data["new"], data["replay_file"], heads=True, **budget)
    run = recipe.mpnn_train(args, data["folder"] / "nequip_multihead")
    before, finetuned = load_model(pretrained), load_model(run / "checkpoints" / "last.ckpt")
    assert type(finetuned).__name__ == "NequIP" and finetuned.heads == ["new", "Default"]
    assert finetuned.head_e0s(1) == before.head_e0s(0)  # the pretrained head keeps its E0
    assert finetuned.head_e0s(0)[79] == before.head_e0s(0)[79]  # Au is absent from the new data
    for head in finetuned.heads:
        assert np.isfinite(list(recipe.errors(finetuned, data["replay"][:4], head=head).values())).all()


def _cli(module: str, args: list[str], data: dict, monkeypatch) -> int:
    """``mpnn-eval`` / ``mpnn-md`` (``module``) with ``args`` in this process; returns the exit code."""
    import importlib

    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(data["folder"])
    monkeypatch.setattr(
        sys, "argv", [module, *args, "progress=false", "device=cpu", f"hydra.run.dir={data['folder'] / 'cli'}"]
    )
    try:
        importlib.import_module(module).main()
    except SystemExit as stop:
        return int(stop.code or 0)
    finally:
        GlobalHydra.instance().clear()
    return 0


def test_eval_and_md_run_the_head_they_are_given(data, multihead_ckpt, monkeypatch, capsys):
    import json

    from mpnn_ip.checkpoint import load_model

    out = data["folder"] / "eval_default"
    args = [f"ckpt_path={multihead_ckpt}", f"data.path={data['replay_file']}", f"out_dir={out}", "head=Default"]
    assert _cli("mpnn_ip.cli.evaluate", args, data, monkeypatch) == 0
    expected = recipe.errors(load_model(multihead_ckpt), data["replay"], head="Default")
    assert json.loads((out / "metrics.json").read_text())["metrics"]["forces_rmse"] == pytest.approx(
        expected["forces_rmse"], rel=1e-4
    )
    capsys.readouterr()
    assert _cli("mpnn_ip.cli.evaluate", [*args[:3], "head=pbe"], data, monkeypatch) == 2
    assert "no head 'pbe'; its heads are ['new', 'Default']" in capsys.readouterr().err
    md = [
        f"ckpt_path={multihead_ckpt}",
        f"structure={data['replay_file']}",
        "steps=2",
        "log_interval=1",
        f"out_dir={data['folder'] / 'md'}",
        "head=Default",
        "compile=false",
    ]
    assert _cli("mpnn_ip.cli.md", md, data, monkeypatch) == 0
    assert json.loads((data["folder"] / "md" / "md_summary.json").read_text())["stopped"] is None


def test_resume_continues_a_multihead_run_with_its_heads_and_replay(data, multihead_ckpt, monkeypatch):
    import shutil

    from mpnn_ip.checkpoint import load_model

    run = data["folder"] / "multihead_resumed"
    shutil.copytree(multihead_ckpt.parents[1], run)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(data["folder"])
    recipe.mpnn_train([f"resume={run}", f"trainer.max_epochs={BUDGET['epochs'] + 1}"], run)
    assert load_model(run / "checkpoints" / "last.ckpt").heads == ["new", "Default"]
    assert int(_last_row(run / "metrics.csv")["epoch"]) == BUDGET["epochs"]  # one more epoch, replay still validated
