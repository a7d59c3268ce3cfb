"""Safe loading (issue 12, item 6): a checkpoint crafted to run code on load is refused, and so is
one whose tensors do not match the architecture its metadata describes.

Every way a checkpoint enters the program is tried: ``load_model``, the ASE calculator,
``mpnn-eval``, ``mpnn-md``, ``mpnn-train ckpt_path=`` and ``mpnn-train resume=<run dir>``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_checkpoint import build_tiny_model, write_checkpoint

from mpnn_ip.checkpoint import load_model, read_checkpoint
from mpnn_ip.errors import ConfigError

pytest.importorskip("hydra")

from test_cli_train import COMMON as CLI_COMMON  # noqa: E402
from test_cli_train import TINY_NEQUIP, run_until_user_error  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class _RunsCodeWhenUnpickled:
    """Unpickling this object calls ``Path.touch(marker)``: the proof that code ran on load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A real mpnn_ip checkpoint with one extra object that executes code when unpickled."""
    write_checkpoint(build_tiny_model(), path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["mpnn_ip"]["payload"] = _RunsCodeWhenUnpickled(marker)
    torch.save(ckpt, path)
    return path


@pytest.fixture()
def crafted(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "code_ran"
    return _crafted_checkpoint(tmp_path / "crafted.ckpt", marker), marker


def test_the_crafted_file_does_run_code_with_an_unsafe_load(crafted):
    """The payload is real: a plain pickle load (weights_only=False) runs it (in a child process)."""
    path, marker = crafted
    code = f"import sys, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    assert marker.exists()


def test_crafted_checkpoint_is_refused_by_every_python_loader(crafted):
    from mpnn_ip.calculators import MPNNCalculator

    path, marker = crafted
    for load in (read_checkpoint, load_model, MPNNCalculator.from_checkpoint):
        with pytest.raises(ConfigError, match="cannot be read"):
            load(path)
    assert not marker.exists()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safe_loading")
    (root / "configs" / "model").mkdir(parents=True)
    (root / "configs" / "model" / "nequip_safetest.yaml").write_text(TINY_NEQUIP)
    return root


def _run_cli(module_name: str, args: list[str], workdir: Path, monkeypatch, capsys) -> str:
    """``mpnn-eval``/``mpnn-md`` in process; returns stderr, asserting exit code 2 without traceback."""
    import importlib

    from hydra.core.global_hydra import GlobalHydra

    module = importlib.import_module(f"mpnn_ip.cli.{module_name}")
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MPNN_IP_CONFIG_DIR", str(REPO / "configs"))
    monkeypatch.setattr(sys, "argv", [module.PROG, *args, f"hydra.run.dir={workdir / 'hydra'}"])
    try:
        with pytest.raises(SystemExit) as exit_info:
            module.main()
    finally:
        GlobalHydra.instance().clear()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def structure(workdir) -> Path:
    import ase.io
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.info["energy"] = -1.0
    ase.io.write(workdir / "cu.extxyz", atoms)
    return workdir / "cu.extxyz"


def test_crafted_checkpoint_is_refused_by_eval_md_and_train(workdir, structure, monkeypatch, capsys):
    marker = workdir / "code_ran"
    path = _crafted_checkpoint(workdir / "crafted.ckpt", marker)
    messages = [
        _run_cli("evaluate", [f"ckpt_path={path}", f"data.path={structure}"], workdir, monkeypatch, capsys),
        _run_cli(
            "md",
            [f"ckpt_path={path}", f"structure={structure}", "steps=1", "progress=false"],
            workdir,
            monkeypatch,
            capsys,
        ),
        run_until_user_error(
            ["model=nequip_safetest", f"ckpt_path={path}", *CLI_COMMON, f"hydra.run.dir={workdir / 'train'}"],
            workdir,
            monkeypatch,
            capsys,
        ),
    ]
    for message in messages:
        assert str(path) in message and "cannot be read" in message
    assert not marker.exists()


def test_resume_from_a_folder_with_a_crafted_last_checkpoint_is_refused(workdir, monkeypatch, capsys):
    """A run folder whose last.ckpt was replaced: ``resume=`` refuses it before Lightning touches it."""
    from omegaconf import OmegaConf

    from mpnn_ip.cli.hydra_app import compose_config

    run_dir = workdir / "tampered_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    marker = workdir / "resume_code_ran"
    _crafted_checkpoint(run_dir / "checkpoints" / "last.ckpt", marker)
    monkeypatch.chdir(workdir)
    cfg = compose_config("train", ["model=nequip_safetest", *CLI_COMMON], extra_search_dir=workdir / "configs")
    cfg.output_dir = str(run_dir)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    message = run_until_user_error([f"resume={run_dir}"], workdir, monkeypatch, capsys)
    assert "cannot be read" in message and not marker.exists()


def _edited(path: Path, edit) -> Path:
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)
    return path


def _first_weight(ckpt: dict) -> str:
    return next(k for k, v in ckpt["state_dict"].items() if k.startswith("model.") and v.dim() >= 1 and v.numel() > 1)


MISMATCHES = {
    "reshaped tensor": lambda c: c["state_dict"].__setitem__(
        _first_weight(c), torch.zeros(3, 3, 3, dtype=torch.float64)
    ),
    "missing tensor": lambda c: c["state_dict"].pop(_first_weight(c)),
    "unexpected tensor": lambda c: c["state_dict"].__setitem__("model.extra_layer.weight", torch.zeros(2)),
    "edited architecture": lambda c: c["mpnn_ip"]["model_config"].__setitem__("num_features", 6),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_tensors_that_do_not_match_the_stored_architecture_are_refused(tmp_path, case):
    path = _edited(write_checkpoint(build_tiny_model(), tmp_path / "edited.ckpt"), MISMATCHES[case])
    with pytest.raises(ConfigError, match="do not fit the 'nequip' model") as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_training_from_a_mismatched_checkpoint_is_refused_before_lightning(workdir, monkeypatch, capsys):
    """``mpnn-train ckpt_path=`` checks the tensors itself instead of failing inside Lightning's loader."""
    path = _edited(
        write_checkpoint(build_tiny_model(species=["Cu", "Au"]), workdir / "edited.ckpt"), MISMATCHES["reshaped tensor"]
    )
    message = run_until_user_error(
        ["model=nequip_safetest", f"ckpt_path={path}", *CLI_COMMON, f"hydra.run.dir={workdir / 'train_edited'}"],
        workdir,
        monkeypatch,
        capsys,
    )
    assert "do not fit" in message and str(path) in message
