"""``mpnn-train`` end to end in subprocesses: both models train, multirun folders, exact resume,
EMA weights in the checkpoint, ``weights_only`` loading, and one-paragraph errors for bad input.

The tiny model configs are written to ``<tmp>/configs/model/`` and found through the user's
``./configs`` search path (the subprocesses run in ``<tmp>``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mpnn_ip.checkpoint import FORMAT_VERSION

pytest.importorskip("lightning")
pytest.importorskip("hydra")

TINY_NEQUIP = """\
defaults:
  - nequip
r_max: 3.0
num_layers: 1
l_max: 1
num_features: 4
radial_mlp: [8]
"""
TINY_MACE = """\
defaults:
  - mace
r_max: 3.0
num_interactions: 1
hidden_irreps: 4x0e+4x1o
max_ell: 1
correlation: 2
radial_mlp: [8]
"""
#: Tiny synthetic subset, deterministic, csv logger, no progress bar noise.
COMMON = [
    "data.train_count=8",
    "data.val_count=4",
    "data.test_count=4",
    "data.batch_size=4",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "seed=3",
]


def mpnn_train(args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    code = "import sys; from mpnn_ip.cli.train import main; sys.argv[0] = 'mpnn-train'; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"mpnn-train {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_cli")
    (root / "configs" / "model").mkdir(parents=True)
    (root / "configs" / "model" / "nequip_clitest.yaml").write_text(TINY_NEQUIP)
    (root / "configs" / "model" / "mace_clitest.yaml").write_text(TINY_MACE)
    return root


@pytest.fixture(scope="module")
def multirun(workdir) -> Path:
    """One epoch of each model as a 2-job multirun (job 0 nequip, job 1 mace)."""
    sweep = workdir / "sweep"
    mpnn_train(
        ["-m", "model=nequip_clitest,mace_clitest", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}", *COMMON],
        workdir,
    )
    return sweep


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_multirun_gives_one_folder_per_job_with_checkpoints_metrics_and_plots(multirun):
    jobs = sorted(p.name for p in multirun.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    for job in jobs:
        run = multirun / job
        assert (run / "checkpoints" / "best.ckpt").is_file()
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert (run / "metrics.csv").is_file()
        assert (run / "config.yaml").is_file()
        report = json.loads((run / "metrics.json").read_text())
        assert report["split"] == "test" and report["num_frames"] == 4
        assert report["metrics"]["forces_rmse"] > 0
        assert report["plots"] and all(Path(p).is_file() for p in report["plots"])


def test_both_models_train_and_checkpoints_load_with_weights_only(multirun):
    names = []
    for job in ("0", "1"):
        ckpt = load(multirun / job / "checkpoints" / "last.ckpt")
        meta = ckpt["mpnn_ip"]
        names.append(meta["model_name"])
        assert meta["format_version"] == FORMAT_VERSION
        assert meta["dtype"] in ("float32", "float64")
        assert meta["model_config"]["species"] == [29, 79]
        assert set(meta["model_config"]["e0s"]) == {29, 79}
        assert meta["units"]["stress"] == "eV/Angstrom^3"
        assert "hyper_parameters" not in ckpt
        assert any(key.startswith("model.") for key in ckpt["state_dict"])
    assert names == ["nequip", "mace"]


def test_checkpoint_state_dict_holds_the_ema_weights(multirun):
    ckpt = load(multirun / "0" / "checkpoints" / "last.ckpt")
    (ema_state,) = [v for k, v in ckpt["callbacks"].items() if "ExponentialMovingAverage" in k]
    differs = False
    for name, value in ema_state["ema"].items():
        assert torch.equal(ckpt["state_dict"][f"model.{name}"], value)
        differs |= not torch.equal(ema_state["raw"][name], value)
    assert differs, "after training steps the raw weights must differ from their moving average"


def test_checkpoint_rebuilds_the_model(multirun):
    from mpnn_ip.models import build_model

    ckpt = load(multirun / "1" / "checkpoints" / "best.ckpt")
    meta = ckpt["mpnn_ip"]
    model = build_model(meta["model_name"], **meta["model_config"])
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)


def test_resume_from_last_checkpoint_equals_uninterrupted_run(workdir, multirun):
    full, resumed = workdir / "full", workdir / "resumed"
    mpnn_train(["model=nequip_clitest", "trainer.max_epochs=2", f"hydra.run.dir={full}", *COMMON], workdir)
    last = multirun / "0" / "checkpoints" / "last.ckpt"
    mpnn_train(
        ["model=nequip_clitest", "trainer.max_epochs=2", f"ckpt_path={last}", f"hydra.run.dir={resumed}", *COMMON],
        workdir,
    )
    a, b = load(full / "checkpoints" / "last.ckpt"), load(resumed / "checkpoints" / "last.ckpt")
    assert a["epoch"] == b["epoch"] == 1
    for key, value in a["state_dict"].items():
        assert torch.allclose(value, b["state_dict"][key], rtol=0, atol=1e-6), key
    plateau_a, plateau_b = a["lr_schedulers"][0], b["lr_schedulers"][0]
    for key in ("last_epoch", "num_bad_epochs", "_last_lr"):
        assert plateau_a[key] == plateau_b[key], key
    assert plateau_b["best"] == pytest.approx(plateau_a["best"], abs=1e-6)
    metrics_a = json.loads((full / "metrics.json").read_text())["metrics"]
    metrics_b = json.loads((resumed / "metrics.json").read_text())["metrics"]
    for key, value in metrics_a.items():
        assert metrics_b[key] == pytest.approx(value, abs=1e-6), key


def test_lean_training_memory_with_small_edge_chunks_trains_the_same_weights(workdir, multirun):
    """``edge_chunk_size=16 lean_training_memory=true``: every batch is chunked and the force loss's
    double backward recomputes each chunk; the weights after 2 epochs equal the plain run's."""
    full, lean = workdir / "full", workdir / "lean"
    if not (full / "checkpoints" / "last.ckpt").exists():
        mpnn_train(["model=nequip_clitest", "trainer.max_epochs=2", f"hydra.run.dir={full}", *COMMON], workdir)
    mpnn_train(
        [
            "model=nequip_clitest",
            "trainer.max_epochs=2",
            "edge_chunk_size=16",
            "lean_training_memory=true",
            f"hydra.run.dir={lean}",
            *COMMON,
        ],
        workdir,
    )
    a, b = load(full / "checkpoints" / "last.ckpt"), load(lean / "checkpoints" / "last.ckpt")
    for key, value in a["state_dict"].items():
        assert torch.allclose(value, b["state_dict"][key], rtol=1e-5, atol=1e-6), key


def _error_in_subprocess(args, cwd) -> str:
    proc = mpnn_train(args, cwd, check=False)
    assert proc.returncode == 2, f"expected exit code 2, got {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def run_until_user_error(args, workdir: Path, monkeypatch, capsys) -> str:
    """Run ``mpnn-train ARGS`` in this process (no import cost) from ``workdir``; return its stderr,
    asserting exit code 2 and a one-paragraph message without traceback."""
    from mpnn_ip.cli.train import main

    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", ["mpnn-train", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and err.startswith("mpnn-train: error:"), err
    return err


@pytest.fixture
def error_of(workdir, monkeypatch, capsys):
    """``error_of(ARGS)``: :func:`run_until_user_error` with a run folder of its own."""
    return lambda args: run_until_user_error(
        [*args, f"hydra.run.dir={workdir / 'failed'}"], workdir, monkeypatch, capsys
    )


def test_unknown_config_key_is_a_one_paragraph_error(workdir):
    message = _error_in_subprocess(["model=nequip_clitest", "model.num_layerz=2", *COMMON], workdir)
    assert "num_layerz" in message and "mpnn-train: error:" in message


def test_unknown_group_option_lists_the_choices(error_of):
    message = error_of(["model=transformer"])
    assert "transformer" in message and "nequip" in message


def test_missing_required_setting_is_named(error_of):
    message = error_of(["model=nequip_clitest", "data=extxyz", "logger=none"])
    assert "data.train_path" in message


def test_missing_data_file_is_named(error_of):
    message = error_of(
        ["model=nequip_clitest", "data=extxyz", "data.train_path=/nonexistent/frames.xyz", "logger=none"]
    )
    assert "/nonexistent/frames.xyz" in message


def test_species_mismatch_names_the_elements(error_of):
    message = error_of(["model=nequip_clitest", "model.species=[Cu]", *COMMON])
    assert "Au" in message


def test_checkpoint_of_another_model_type_is_refused(error_of, multirun):
    mace_ckpt = multirun / "1" / "checkpoints" / "last.ckpt"
    message = error_of(["model=nequip_clitest", f"ckpt_path={mace_ckpt}", *COMMON])
    assert "mace" in message and "nequip" in message


def test_corrupted_checkpoint_is_named(error_of, workdir):
    broken = workdir / "broken.ckpt"
    broken.write_bytes(b"this is not a checkpoint")
    message = error_of(["model=nequip_clitest", f"ckpt_path={broken}", *COMMON])
    assert str(broken) in message
