"""Killed jobs (issue 12, item 2): atomic checkpoint writes and ``mpnn-train resume=<run dir>``.

The plugin is tested directly (two saves, a save that fails midway); the CLI in subprocesses with a
tiny NequIP preset written to ``<tmp>/configs/model/`` (as in ``test_cli_train.py``): a 1-epoch run
resumed to 2 epochs in the same folder, a run killed with SIGKILL in the middle of its second epoch,
resumed and killed again while it writes a checkpoint, then resumed to its end; and the one-paragraph
errors of a wrong ``resume=``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("hydra")

from test_cli_train import COMMON as CLI_COMMON  # noqa: E402
from test_cli_train import TINY_NEQUIP, run_until_user_error  # noqa: E402

from mpnn_ip.train.checkpoint_io import AtomicCheckpointIO, atomic_torch_save, remove_stale_temporary_files  # noqa: E402

COMMON = ["model=nequip_resumetest", *CLI_COMMON]
#: A callback (importable from the subprocesses' working directory) that stalls so that the test can
#: kill the job there: RESUMETEST_STALL=epoch in the training steps of the second epoch (index 1),
#: RESUMETEST_STALL=save inside the checkpoint save at the end of that epoch (while torch.save
#: pickles the checkpoint into the temporary file). Each stall writes the marker file first.
STALL_CALLBACK = """\
import os, time
from pathlib import Path
from lightning.pytorch.callbacks import Callback


def _mark(marker, text):
    # atomically: the test polls for the marker and reads it at once
    partial = Path(str(marker) + ".partial")
    partial.write_text(text)
    os.replace(partial, marker)


class _StallWhenPickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        _mark(self.marker, "save")
        time.sleep(120)
        return (dict, ())


class Stall(Callback):
    def __init__(self, marker):
        self.marker = marker
        self.epoch = 0

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch = trainer.current_epoch

    def on_train_batch_end(self, trainer, *args, **kwargs):
        if trainer.current_epoch == 1 and os.environ.get("RESUMETEST_STALL") == "epoch":
            _mark(self.marker, "epoch")
            time.sleep(120)

    def state_dict(self):
        if self.epoch == 1 and os.environ.get("RESUMETEST_STALL") == "save":
            return {"stall": _StallWhenPickled(self.marker)}
        return {}
"""


def _env(**extra) -> dict:
    return dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)


_CODE = "import sys; from mpnn_ip.cli.train import main; sys.argv[0] = 'mpnn-train'; main()"


def mpnn_train(args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", _CODE, *args]
    proc = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"mpnn-train {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def temporary_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------------------------- plugin


def test_two_saves_to_the_same_path_leave_the_second_and_no_temporary_file(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 0, "w": torch.zeros(3)}, path)
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, str(path))
    ckpt = load(path)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["w"], torch.ones(3))
    assert temporary_files(path.parent) == []
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 0, "w": torch.arange(4.0)}, path)
    before = path.read_bytes()
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip archive")  # some bytes reach the temporary file first
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"epoch": 1, "w": torch.zeros(4)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    ckpt = load(path)
    assert ckpt["epoch"] == 0 and torch.equal(ckpt["w"], torch.arange(4.0))
    assert temporary_files(tmp_path) == []


def test_interrupted_save_keeps_the_previous_checkpoint_and_stale_files_are_cleared(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"epoch": 0}, path)

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"epoch": 1}, path)
    monkeypatch.undo()
    assert load(path)["epoch"] == 0 and temporary_files(tmp_path) == []
    stale = tmp_path / ".last.ckpt.abc123.tmp"  # what a SIGKILL during a save leaves behind
    stale.write_bytes(b"partial")
    assert remove_stale_temporary_files(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_build_trainer_adds_the_atomic_plugin_unless_one_is_configured(tmp_path):
    from omegaconf import OmegaConf, open_dict

    from mpnn_ip.train.builders import build_trainer

    cfg = OmegaConf.create(
        {
            "output_dir": str(tmp_path),
            "trainer": {
                "_target_": "lightning.pytorch.Trainer",
                "accelerator": "cpu",
                "default_root_dir": "${output_dir}",
                "enable_progress_bar": False,
                "logger": False,
            },
        }
    )
    OmegaConf.set_struct(cfg, True)
    trainer = build_trainer(cfg.trainer, [], [])
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    with open_dict(cfg):
        cfg.trainer.plugins = {"_target_": "lightning.pytorch.plugins.environments.LightningEnvironment"}
    trainer = build_trainer(cfg.trainer, [], [])
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert trainer.default_root_dir == str(tmp_path) and "plugins" in cfg.trainer  # the caller's config untouched
    with open_dict(cfg):
        cfg.trainer.plugins = [{"_target_": "lightning.pytorch.plugins.io.TorchCheckpointIO"}]
    trainer = build_trainer(cfg.trainer, [], [])
    assert type(trainer.strategy.checkpoint_io).__name__ == "TorchCheckpointIO"  # the configured one wins


# ------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_cli")
    (root / "configs" / "model").mkdir(parents=True)
    (root / "configs" / "model" / "nequip_resumetest.yaml").write_text(TINY_NEQUIP)
    (root / "resumetest_stall.py").write_text(STALL_CALLBACK)
    return root


def assert_run_folder_is_sound(run: Path) -> None:
    checkpoints = run / "checkpoints"
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names == ["best.ckpt", "last.ckpt"], names  # no last-v1.ckpt, no temporary files
    for ckpt in checkpoints.glob("*.ckpt"):
        assert "state_dict" in load(ckpt) and "mpnn_ip" in load(ckpt)
    assert (run / "metrics.json").is_file()


def test_last_checkpoint_holds_the_last_epoch_even_when_it_is_not_the_best(workdir):
    """Lightning's own ``save_last`` writes last.ckpt only together with a new best.ckpt; ours every epoch."""
    run = workdir / "run_last_not_best"
    # mode=max: the best checkpoint is the epoch of the highest validation loss, so later epochs are never "best"
    mpnn_train(
        ["trainer.max_epochs=3", "callbacks.model_checkpoint.mode=max", f"hydra.run.dir={run}", *COMMON], workdir
    )
    last, best = load(run / "checkpoints" / "last.ckpt"), load(run / "checkpoints" / "best.ckpt")
    assert last["epoch"] == 2 and last["global_step"] == 6  # 2 batches per epoch
    assert best["epoch"] <= last["epoch"]
    assert_run_folder_is_sound(run)


def test_resume_continues_the_run_in_its_folder_with_more_epochs(workdir):
    run = workdir / "run_extend"
    mpnn_train(["trainer.max_epochs=1", f"hydra.run.dir={run}", *COMMON], workdir)
    assert load(run / "checkpoints" / "last.ckpt")["epoch"] == 0
    proc = mpnn_train([f"resume={run}", "trainer.max_epochs=2"], workdir)
    assert f"Resuming the run in {run}" in proc.stdout
    last = load(run / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 1 and last["global_step"] == 4  # 2 batches per epoch, 2 epochs
    assert_run_folder_is_sound(run)
    assert not (workdir / "outputs").exists()  # no new run folder
    from omegaconf import OmegaConf

    saved = OmegaConf.load(run / "config.yaml")
    assert saved.trainer.max_epochs == 2 and saved.model.num_features == 4 and saved.data.train_count == 8
    assert saved.ckpt_path == str(run / "checkpoints" / "last.ckpt")
    assert (run / ".hydra" / "overrides.yaml").read_text().count("max_epochs=1") == 1  # the original record kept
    assert (run / ".hydra" / "resume" / "overrides.yaml").is_file()
    assert (run / "metrics.part1.csv").is_file() and (run / "metrics.csv").is_file()


def _run_until_killed(args, cwd: Path, marker: Path, stall: str) -> None:
    """Start ``mpnn-train ARGS`` with RESUMETEST_STALL=stall, SIGKILL it once the marker appears."""
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", _CODE, *args],
        cwd=cwd,
        env=_env(RESUMETEST_STALL=stall),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"mpnn-train ended ({proc.returncode}) before it stalled:\n{proc.stderr.read()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail("mpnn-train did not reach its stall in 180 s")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert marker.read_text() == stall


def test_run_killed_mid_epoch_and_during_a_save_resumes_to_the_expected_epochs(workdir):
    run = workdir / "run_killed"
    marker = workdir / "stalled"
    checkpoints = run / "checkpoints"
    args = [
        "trainer.max_epochs=3",
        f"hydra.run.dir={run}",
        "+callbacks.stall._target_=resumetest_stall.Stall",
        f"+callbacks.stall.marker={marker}",
        *COMMON,
    ]
    _run_until_killed(args, workdir, marker, "epoch")  # SIGKILL in the middle of the second epoch
    assert load(checkpoints / "last.ckpt")["epoch"] == 0  # the end of the first epoch
    assert temporary_files(checkpoints) == [] and not (run / "metrics.json").exists()

    _run_until_killed([f"resume={run}"], workdir, marker, "save")  # SIGKILL while a checkpoint is written
    assert len(temporary_files(checkpoints)) == 1  # the torn write went to a temporary file ...
    assert load(checkpoints / "last.ckpt")["epoch"] == 0  # ... and last.ckpt is the previous one, intact
    for ckpt in checkpoints.glob("*.ckpt"):
        load(ckpt)

    mpnn_train(["resume=true", f"hydra.run.dir={run}"], workdir)  # without RESUMETEST_STALL: no stall
    last = load(checkpoints / "last.ckpt")
    assert last["epoch"] == 2 and last["global_step"] == 6  # 3 epochs of 2 batches
    assert_run_folder_is_sound(run)


@pytest.fixture
def error_of(workdir, monkeypatch, capsys):
    """``error_of(ARGS)``: ``mpnn-train ARGS`` in this process; its stderr (exit code 2, no traceback)."""
    return lambda args: run_until_user_error(args, workdir, monkeypatch, capsys)


def test_resume_of_a_missing_folder_is_named(error_of, workdir):
    missing = workdir / "no_such_run"
    message = error_of([f"resume={missing}"])
    assert str(missing) in message and "does not exist" in message
    assert not missing.exists()  # Hydra did not create it


def test_resume_of_a_folder_without_last_checkpoint_says_what_to_do(error_of, workdir):
    empty = workdir / "run_without_checkpoint"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "config.yaml").write_text("seed: 0\n")
    message = error_of([f"resume={empty}"])
    assert str(empty / "checkpoints" / "last.ckpt") in message and "ckpt_path=" in message
    no_config = workdir / "run_without_config"
    (no_config / "checkpoints").mkdir(parents=True)
    (no_config / "checkpoints" / "last.ckpt").write_bytes(b"")
    message = error_of(["resume=true", f"hydra.run.dir={no_config}"])
    assert str(no_config / "config.yaml") in message


def test_resume_refuses_other_overrides_and_needs_a_folder(error_of, workdir):
    run = workdir / "run_for_overrides"
    (run / "checkpoints").mkdir(parents=True)
    message = error_of([f"resume={run}", "optim.lr=0.1", "trainer.max_epochs=5"])
    assert "optim.lr=0.1" in message and "trainer.max_epochs" in message and "ckpt_path=" in message
    message = error_of(["resume=true"])
    assert "hydra.run.dir" in message
