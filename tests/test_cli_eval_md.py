"""``mpnn-eval`` and ``mpnn-md`` in subprocesses: the promised files, the drift, and exit code 2 on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch_cluster")
pytest.importorskip("hydra")

from tiny_checkpoint import tiny_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _run(module: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "MPNN_IP_CONFIG_DIR": str(REPO / "configs")}
    command = [sys.executable, "-m", module, *overrides, f"hydra.run.dir={cwd / 'hydra'}", "progress=false"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def _labelled_frames(path: Path) -> Path:
    """Three small EMT-labelled CuAu frames (energy, forces, stress) as extxyz."""
    import ase.io
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for seed in range(3):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.symbols[seed] = "Au"
        atoms.rattle(0.05, seed=seed)
        atoms.calc = EMT()
        labels = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(), stress=atoms.get_stress())
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tiny_checkpoint(root / "tiny.ckpt")
    _labelled_frames(root / "frames.extxyz")
    return root


def _one_paragraph_error(result: subprocess.CompletedProcess, prog: str, *words: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert message.startswith(f"{prog}: error:"), message
    assert "\n\n" not in message
    for word in words:
        assert word in message, message


def test_eval_writes_metrics_and_parity_plots(workdir):
    out = workdir / "eval"
    result = _run(
        "mpnn_ip.cli.evaluate",
        f"ckpt_path={workdir / 'tiny.ckpt'}",
        "data.path=frames.extxyz",
        f"out_dir={out}",
        "batch_size=2",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "forces" in result.stdout and "RMSE" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("energy_per_atom_mae", "energy_rmse", "forces_rmse", "stress_mae"):
        assert np.isfinite(metrics["metrics"][key]), key
    assert metrics["num_frames"] == 3
    for name in ("parity_energy_per_atom.png", "parity_forces.png", "parity_stress.png", "predictions.npz"):
        assert (out / name).stat().st_size > 0, name


def test_nve_md_writes_trajectory_and_log_and_reports_drift(workdir):
    import ase.io

    out = workdir / "nve"
    result = _run(
        "mpnn_ip.cli.md",
        f"ckpt_path={workdir / 'tiny.ckpt'}",
        "structure=frames.extxyz",
        "ensemble=nve",
        "temperature=300",
        "timestep=1.0",
        "steps=6",
        "log_interval=2",
        f"out_dir={out}",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "drift" in result.stdout and "eV/atom/ps" in result.stdout
    frames = ase.io.read(out / "md.extxyz", ":")
    assert len(frames) == 4  # steps 0, 2, 4, 6
    log = np.loadtxt(out / "md.log")
    assert log.shape == (4, 5)
    np.testing.assert_allclose(log[:, 0], [0, 2, 4, 6], atol=1e-9)
    np.testing.assert_allclose(log[:, 3], log[:, 1] + log[:, 2], atol=1e-6)
    summary = json.loads((out / "md_summary.json").read_text())
    assert np.isfinite(summary["energy_drift_ev_per_atom_per_ps"])


@pytest.fixture(scope="module")
def bad_files(workdir):
    (workdir / "broken.ckpt").write_bytes((workdir / "tiny.ckpt").read_bytes()[:500])
    tiny_checkpoint(workdir / "cu_only.ckpt", species=["Cu"])
    return workdir


def test_corrupted_checkpoint_exits_with_code_2_and_one_paragraph(bad_files):
    result = _run("mpnn_ip.cli.md", "ckpt_path=broken.ckpt", "structure=frames.extxyz", "steps=1", cwd=bad_files)
    _one_paragraph_error(result, "mpnn-md", "broken.ckpt", "corrupted")


BAD_INPUTS = {
    "unknown key": ("evaluate", ["ckpt_path=tiny.ckpt", "data.path=frames.extxyz", "bach_size=3"], "bach_size"),
    "missing checkpoint": ("evaluate", ["ckpt_path=nothere.ckpt", "data.path=frames.extxyz"], "nothere.ckpt"),
    "missing data": ("evaluate", ["ckpt_path=tiny.ckpt", "data.path=nothere.extxyz"], "nothere.extxyz"),
    "species mismatch in data": ("evaluate", ["ckpt_path=cu_only.ckpt", "data.path=frames.extxyz"], "Au"),
    "species mismatch in structure": ("md", ["ckpt_path=cu_only.ckpt", "structure=frames.extxyz"], "Au"),
    "unknown ensemble": ("md", ["ckpt_path=tiny.ckpt", "structure=frames.extxyz", "ensemble=npt"], "npt"),
    "missing structure": ("md", ["ckpt_path=tiny.ckpt", "structure=nothere.extxyz"], "nothere.extxyz"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_with_code_2_and_one_paragraph(bad_files, case, monkeypatch, capsys):
    """Same entry points in process (the subprocess start-up is tested above)."""
    import importlib

    from hydra.core.global_hydra import GlobalHydra

    name, overrides, word = BAD_INPUTS[case]
    module = importlib.import_module(f"mpnn_ip.cli.{name}")
    monkeypatch.chdir(bad_files)
    monkeypatch.setenv("MPNN_IP_CONFIG_DIR", str(REPO / "configs"))
    argv = [module.PROG, *overrides, "steps=1", f"hydra.run.dir={bad_files / 'hydra'}", "progress=false"]
    monkeypatch.setattr(sys, "argv", argv if name == "md" else [a for a in argv if a != "steps=1"])
    try:
        with pytest.raises(SystemExit) as exit_info:
            module.main()
    finally:
        GlobalHydra.instance().clear()
    stderr = capsys.readouterr().err
    _one_paragraph_error(subprocess.CompletedProcess(argv, exit_info.value.code, "", stderr), module.PROG, word)


def test_nvt_run_md_in_process_reaches_finite_temperatures(tmp_path):
    """Langevin path of run_md (in process: no subprocess start-up)."""
    from ase.build import bulk
    from tiny_checkpoint import build_tiny_model

    from mpnn_ip.calculators import MPNNCalculator
    from mpnn_ip.md import run_md

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    summary = run_md(
        atoms,
        MPNNCalculator(build_tiny_model()),
        ensemble="nvt",
        temperature=500,
        steps=4,
        log_interval=2,
        out_dir=tmp_path,
        trajectory="nvt.traj",
        seed=1,
    )
    assert (tmp_path / "nvt.traj").stat().st_size > 0
    assert len(summary["log_rows"]) == 3
    assert all(np.isfinite(row).all() for row in summary["log_rows"])
    assert summary["mean_temperature_K"] > 0


def test_md_with_dispersion_moves_on_the_models_energy_plus_d3(workdir):
    pytest.importorskip("dftd3")
    pytest.importorskip("torch_dftd")
    import ase.io

    from mpnn_ip import MPNNCalculator
    from mpnn_ip.checkpoint import load_model

    out = workdir / "nve_d3"
    args = [f"ckpt_path={workdir / 'tiny.ckpt'}", "structure=frames.extxyz", "steps=2", "log_interval=2"]
    result = _run("mpnn_ip.cli.md", *args, "dispersion=d3bj:pbe", "dtype=float64", f"out_dir={out}", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    first = ase.io.read(out / "md.extxyz", 0)
    start = ase.io.read(workdir / "frames.extxyz", -1)
    model = load_model(workdir / "tiny.ckpt", dtype="float64")
    start.calc = MPNNCalculator(model, dispersion="d3bj:pbe", compile=False)
    plain = start.copy()
    plain.calc = MPNNCalculator(model, compile=False)
    assert abs(start.get_potential_energy() - plain.get_potential_energy()) > 1e-3
    assert first.get_potential_energy() == pytest.approx(start.get_potential_energy(), abs=1e-6)
