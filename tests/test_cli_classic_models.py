"""``mpnn-train model=schnet|bpnn|gap`` end to end: the classic families go through the same
data module, checkpoint, calculator and reports as the equivariant models.

GAP is fitted in closed form by its ``prepare`` (no optimizer, one epoch without gradient steps):
the same Lightning flow validates the fit, writes ``best.ckpt``/``last.ckpt`` (loadable with
``weights_only=True``), tests it and records the fit's timings in ``prepare.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli_train import COMMON, load, mpnn_train

pytest.importorskip("lightning")
pytest.importorskip("hydra")

TINY_SCHNET = """\
defaults:
  - schnet
r_max: 3.0
num_features: 8
num_interactions: 1
num_gaussians: 8
num_filters: 8
"""
TINY_BPNN = """\
defaults:
  - bpnn
r_max: 3.0
angular_etas: [0.05]
zetas: [1]
hidden: [8]
"""
TINY_GAP = """\
defaults:
  - gap
r_max: 3.0
n_max: 2
l_max: 2
num_sparse: 8
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("classic_cli")
    (root / "configs" / "model").mkdir(parents=True)
    for name, text in (("schnet_cli", TINY_SCHNET), ("bpnn_cli", TINY_BPNN), ("gap_cli", TINY_GAP)):
        (root / "configs" / "model" / f"{name}.yaml").write_text(text)
    return root


@pytest.fixture(scope="module")
def sweep(workdir) -> Path:
    """Job 0 SchNet and job 1 BPNN (one epoch each), job 2 GAP (closed-form fit)."""
    path = workdir / "sweep"
    mpnn_train(
        ["-m", "model=schnet_cli,bpnn_cli,gap_cli", "trainer.max_epochs=1", f"hydra.sweep.dir={path}", *COMMON], workdir
    )
    return path


@pytest.mark.parametrize("job, name", [("0", "schnet"), ("1", "bpnn"), ("2", "gap")])
def test_each_classic_model_trains_tests_and_checkpoints(sweep, job, name):
    run = sweep / job
    ckpt = load(run / "checkpoints" / "last.ckpt")
    assert ckpt["mpnn_ip"]["model_name"] == name
    assert ckpt["mpnn_ip"]["model_config"]["species"] == [29, 79]
    report = json.loads((run / "metrics.json").read_text())
    assert report["split"] == "test" and report["num_frames"] == 4
    assert np.isfinite(report["metrics"]["forces_rmse"]) and report["metrics"]["forces_rmse"] > 0
    assert report["plots"] and all(Path(p).is_file() for p in report["plots"])


def test_gap_run_is_a_closed_form_fit_that_beats_the_e0_baseline(sweep):
    run = sweep / "2"
    fit = json.loads((run / "prepare.json").read_text())
    assert fit["num_energy_rows"] == 8 and fit["num_force_rows"] > 0
    assert fit["num_sparse_per_species"] == [8, 8]
    report = json.loads((run / "metrics.json").read_text())
    assert report["epochs_trained"] == 1  # one pass without gradient steps
    assert Path(report["best_checkpoint"]).name == "best.ckpt"
    # the fitted forces are better than predicting zero force (RMSE = force RMS of the data)
    assert report["metrics"]["forces_rmse"] < report["statistics"]["force_rms"]
    ckpt = load(run / "checkpoints" / "last.ckpt")
    assert torch.count_nonzero(ckpt["state_dict"]["model.alpha"]) > 0


def test_gap_checkpoint_gives_a_calculator_with_uncertainty(sweep):
    from ase.build import bulk

    from mpnn_ip import MPNNCalculator

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
    atoms.numbers[0] = 79
    atoms.rattle(0.05, seed=1)
    atoms.calc = MPNNCalculator.from_checkpoint(sweep / "2" / "checkpoints" / "last.ckpt")
    assert np.isfinite(atoms.get_potential_energy())
    assert atoms.get_forces().shape == (len(atoms), 3)
    uncertainty = atoms.calc.get_property("energy_uncertainty", atoms)
    assert np.isfinite(uncertainty) and uncertainty > 0


def test_gap_run_resumed_from_its_checkpoint_keeps_the_fit(workdir, sweep):
    ckpt = sweep / "2" / "checkpoints" / "last.ckpt"
    out = workdir / "gap_again"
    mpnn_train(["model=gap_cli", f"ckpt_path={ckpt}", f"hydra.run.dir={out}", *COMMON], workdir)
    assert not (out / "prepare.json").exists()
    before, after = load(ckpt)["state_dict"], load(out / "checkpoints" / "last.ckpt")["state_dict"]
    assert torch.equal(before["model.alpha"], after["model.alpha"])
