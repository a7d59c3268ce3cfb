"""Every config composes, and every experiment builds its model, data module and optimizer (no training).

Experiments on the reference DFT data skip when the shared data folder is absent.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("hydra")
pytest.importorskip("lightning")

from mpnn_ip.cli.hydra_app import compose_config, config_dir  # noqa: E402

CONFIGS = config_dir()
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MPNN_IP_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
#: Experiments and the shared-data subfolder they read (None = embedded synthetic data).
EXPERIMENTS = {"quickstart": None, "acac": "acac", "3bpa": "3bpa", "mlearn_si": "mlearn", "ta_snap": "ta_snap"}
#: Fake training statistics for building models without data.
STATISTICS = {"species": [29, 79], "e0s": {29: -3.5, 79: -3.0}, "avg_num_neighbors": 12.0, "force_rms": 0.5}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def compose(*overrides: str, tmp_path: Path):
    return compose_config("train", [f"output_dir={tmp_path}", f"shared_data_dir={SHARED_DATA}", *overrides])


@functools.cache
def preset_settings(model: str) -> dict:
    """The model section of ``model=<model>`` alone (unresolved)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose_config("train", ["output_dir=.", f"model={model}"]).model)


def test_every_experiment_config_file_is_listed():
    assert options("experiment") == sorted(EXPERIMENTS)


@pytest.mark.parametrize("group", ["model", "data", "optim", "scheduler", "trainer", "logger", "callbacks"])
def test_every_group_option_composes(group, tmp_path):
    for option in options(group):
        overrides = [f"{group}={option}"]
        if group == "data" and option == "extxyz":
            overrides.append("data.train_path=frames.xyz")
        cfg = compose(*overrides, tmp_path=tmp_path)
        assert cfg[group] is not None, f"{group}={option}"


@pytest.mark.parametrize("preset", options("model"))
def test_every_model_preset_gives_only_constructor_arguments(preset, tmp_path):
    """Checked against the signature without building (large presets take long to build on CPU)."""
    from mpnn_ip.train.builders import model_arguments

    cfg = compose(f"model={preset}", tmp_path=tmp_path)
    cls, kwargs = model_arguments(cfg.model, STATISTICS)
    assert kwargs["species"] == [29, 79]
    # statistics come through ${training_data_stats:...} only where the model takes them
    assert kwargs.get("energy_scale", STATISTICS["force_rms"]) == STATISTICS["force_rms"]
    if "avg_num_neighbors" in kwargs:
        assert kwargs["avg_num_neighbors"] == STATISTICS["avg_num_neighbors"]
    assert cls.__name__.lower().startswith(preset.split("_")[0])


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_experiment_builds_model_data_and_optimizer(experiment, tmp_path):
    from mpnn_ip.train import PotentialModule, builders

    folder = EXPERIMENTS[experiment]
    if folder is not None and not (SHARED_DATA / folder).is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA / folder} is absent")
    cfg = compose(f"experiment={experiment}", tmp_path=tmp_path)
    datamodule = builders.build_datamodule(cfg.data)
    statistics = datamodule.statistics()
    model = builders.build_model(cfg.model, statistics, cfg.dtype)
    task = PotentialModule(
        model,
        loss=builders.plain(cfg.loss),
        optimizer=builders.build_optimizer_factory(cfg.optim),
        scheduler=builders.build_scheduler_factory(cfg.scheduler),
        statistics=statistics,
    )
    optimizers = task.configure_optimizers()
    optimizer = optimizers["optimizer"] if isinstance(optimizers, dict) else optimizers
    assert optimizer.param_groups[0]["lr"] == cfg.optim.lr
    assert len(datamodule.train_dataset) > 0 and len(datamodule.val_dataset) > 0
    assert set(model.species) >= set(statistics["species"])


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_every_experiment_composes_with_every_model(experiment, model, tmp_path):
    """``mpnn-train experiment=E model=M`` composes for every pair: experiments are model-agnostic."""
    from omegaconf import OmegaConf

    cfg = compose(f"experiment={experiment}", f"model={model}", tmp_path=tmp_path)
    assert OmegaConf.to_container(cfg.model) == preset_settings(model), (
        f"experiment={experiment} changes the settings of model={model}"
    )


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_experiments_leave_model_settings_to_the_model_presets(experiment):
    from omegaconf import OmegaConf

    overlay = OmegaConf.load(CONFIGS / "experiment" / f"{experiment}.yaml")
    assert "model" not in overlay, f"experiment {experiment} sets model keys; put sizes in a model preset"


def test_quickstart_uses_the_tiny_nequip_preset(tmp_path):
    from omegaconf import OmegaConf

    cfg = compose("experiment=quickstart", tmp_path=tmp_path)
    assert OmegaConf.to_container(cfg.model) == preset_settings("nequip_tiny")
    assert cfg.model.r_max == 4.5 and cfg.model.num_layers == 2


def test_experiment_with_stress_trains_on_stress(tmp_path):
    for experiment in ("mlearn_si", "ta_snap"):
        cfg = compose(f"experiment={experiment}", tmp_path=tmp_path)
        assert cfg.loss.stress.weight > 0
    cfg = compose("experiment=ta_snap", tmp_path=tmp_path)
    assert cfg.data.stress_unit == "bar" and cfg.data.stress_sign == -1


def test_optuna_search_composes_when_the_plugin_is_installed(tmp_path):
    try:
        importlib.import_module("hydra_plugins.hydra_optuna_sweeper")
    except ImportError:
        pytest.skip("hydra-optuna-sweeper is not installed (optional)")
    cfg = compose_config("train", [f"output_dir={tmp_path}", "hparams_search=optuna"])
    assert cfg.optimized_metric == "best_val_loss"


def test_user_configs_directory_is_on_the_search_path(tmp_path):
    (tmp_path / "configs" / "experiment").mkdir(parents=True)
    (tmp_path / "configs" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\nrun_name: mine\noptim:\n  lr: 0.0123\n"
    )
    cfg = compose_config("train", [f"output_dir={tmp_path}", "experiment=mine"], extra_search_dir=tmp_path / "configs")
    assert cfg.run_name == "mine" and cfg.optim.lr == 0.0123


@pytest.mark.slow
def test_wheel_carries_the_configs_and_its_install_finds_them(tmp_path):
    """A non-editable install needs no MPNN_IP_CONFIG_DIR: the wheel holds mpnn_ip/configs/**.yaml."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "mpnn_ip", source / "mpnn_ip", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("mpnn_ip-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packaged = REPO / "mpnn_ip" / "configs"
    expected = {f"mpnn_ip/configs/{p.relative_to(packaged).as_posix()}" for p in packaged.rglob("*.yaml")}
    assert {"mpnn_ip/configs/train.yaml", "mpnn_ip/configs/model/nequip_tiny.yaml"} <= expected
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"

    site = tmp_path / "site"
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=600
    )
    assert install.returncode == 0, install.stderr[-3000:]
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r}); sys.argv = ['mpnn-train', '--cfg', 'job']\n"
        "from mpnn_ip.cli.hydra_app import config_dir; print('config_dir', config_dir())\n"
        "from mpnn_ip.cli.train import main; main()"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPNN_IP_CONFIG_DIR"}
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"config_dir {site / 'mpnn_ip' / 'configs'}" in run.stdout
    assert "mpnn_ip.models.nequip.NequIP" in run.stdout


@pytest.mark.parametrize(
    ("model", "dtype"), [("gap_tiny", torch.float64), ("nequip_tiny", torch.float32), ("mace_tiny", torch.float32)]
)
def test_dtype_auto_builds_each_model_in_its_own_default_precision(model, dtype, tmp_path):
    """GAP's kernels and closed-form fit need float64 (float32 energies are noisy at ~4e-4 eV); the
    networks train in float32 by default. An explicit dtype wins."""
    from mpnn_ip.train import builders

    cfg = compose(f"model={model}", tmp_path=tmp_path)
    assert cfg.dtype == "auto"
    assert builders.build_model(cfg.model, STATISTICS, cfg.dtype).dtype == dtype
    assert builders.build_model(cfg.model, STATISTICS, "float32").dtype == torch.float32
    quickstart = compose("experiment=quickstart", f"model={model}", tmp_path=tmp_path)
    assert builders.build_model(quickstart.model, STATISTICS, quickstart.dtype).dtype == dtype
