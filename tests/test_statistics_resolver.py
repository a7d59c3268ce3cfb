"""Training-data statistics reach the models through ``${training_data_stats:NAME}`` in their YAML."""

from __future__ import annotations

import inspect

import pytest
from omegaconf import OmegaConf

from mpnn_ip.errors import ConfigError
from mpnn_ip.train.builders import model_arguments, register_statistics_resolver, training_data_statistics

STATISTICS = {"species": [29, 79], "e0s": {29: -3.5, 79: -3.0}, "avg_num_neighbors": 12.0, "force_rms": 0.5}


def _config(**model):
    return OmegaConf.create({"_target_": "mpnn_ip.models.bpnn.BPNN", **model})


def test_statistics_resolve_inside_the_block_only():
    register_statistics_resolver()
    cfg = OmegaConf.create({"scale": "${training_data_stats:force_rms}", "e0s": "${training_data_stats:e0s}"})
    with training_data_statistics(STATISTICS):
        assert OmegaConf.to_container(cfg, resolve=True) == {"scale": 0.5, "e0s": {29: -3.5, 79: -3.0}}
    with pytest.raises(Exception, match="only known once mpnn-train has read the training split"):
        OmegaConf.to_container(cfg, resolve=True)


def test_unknown_statistic_names_the_known_ones():
    cfg = _config(species="${training_data_stats:species}", energy_scale="${training_data_stats:force_mean}")
    with pytest.raises(Exception, match="no such statistic.*force_rms"):
        model_arguments(cfg, STATISTICS)


def test_a_value_given_by_the_user_wins_over_the_statistic():
    cfg = _config(species=["Cu", "Au", "Ni"], e0s="${training_data_stats:e0s}", energy_scale=2.0)
    cls, kwargs = model_arguments(cfg, STATISTICS)
    assert kwargs["species"] == ["Cu", "Au", "Ni"] and kwargs["energy_scale"] == 2.0
    assert kwargs["e0s"] == {29: -3.5, 79: -3.0}


def test_models_take_only_the_statistics_they_use():
    from mpnn_ip.models import MODEL_REGISTRY, model_class

    takes = {name: set(inspect.signature(model_class(name)).parameters) for name in MODEL_REGISTRY}
    assert "avg_num_neighbors" not in takes["bpnn"] | takes["gap"]
    assert "energy_scale" not in takes["gap"]


def test_data_elements_missing_from_the_given_species_are_a_config_error():
    cfg = _config(species=["Cu"], e0s="${training_data_stats:e0s}")
    with pytest.raises(ConfigError, match=r"\['Au'\].*model.species=\[Cu,Au\]"):
        model_arguments(cfg, STATISTICS)
