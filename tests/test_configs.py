"""Every config composes, and every experiment builds its model, data module and optimizer (no training).

Experiments on the reference DFT data skip when the shared data folder is absent.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

pytest.importorskip("hydra")
pytest.importorskip("lightning")

from mpnn_ip.cli.hydra_app import compose_config, config_dir  # noqa: E402

CONFIGS = config_dir()
SHARED_DATA = Path(os.environ.get("MPNN_IP_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
#: Experiments and the shared-data subfolder they read (None = embedded synthetic data).
EXPERIMENTS = {"quickstart": None, "acac": "acac", "3bpa": "3bpa", "mlearn_si": "mlearn", "ta_snap": "ta_snap"}
#: Fake training statistics for building models without data.
STATISTICS = {"species": [29, 79], "e0s": {29: -3.5, 79: -3.0}, "avg_num_neighbors": 12.0, "force_rms": 0.5}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def compose(*overrides: str, tmp_path: Path):
    return compose_config("train", [f"output_dir={tmp_path}", f"shared_data_dir={SHARED_DATA}", *overrides])


def test_every_experiment_config_file_is_listed():
    assert options("experiment") == sorted(EXPERIMENTS)


@pytest.mark.parametrize(
    "group", ["model", "data", "optim", "scheduler", "trainer", "logger", "callbacks"]
)
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
    assert kwargs["species"] == [29, 79] and kwargs["energy_scale"] == STATISTICS["force_rms"]
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
