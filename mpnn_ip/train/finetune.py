"""Fine-tuning: a new run that starts from the weights of a trained checkpoint (``finetune_from=<ckpt>``).

What differs from a run from scratch (:class:`mpnn_ip.train.model_source.ModelSource` chains these steps):

* The model is the checkpoint's: rebuilt from its metadata and its weights loaded. Its architecture
  wins over ``model=``: :func:`use_checkpoint_architecture` writes the stored constructor arguments
  into the run's ``model`` config (so ``config.yaml`` and ``resume=`` see the real model) and logs the
  user's model settings it ignores. Constants fixed when the network was built stay the pretrained
  ones (``avg_num_neighbors``, ``r_max``, ``species``); ``Potential.prepare`` is not run again.
* E0 (and shifts) are re-fitted on the new training split
  (:func:`mpnn_ip.train.energy_references.refit_energy_references`)
  unless ``finetune.refit_e0=false``.
* ``finetune.freeze`` fixes named parameter groups (:func:`parameter_groups`); the optimizer only
  gets the other parameters, at ``finetune.lr`` (default ``optim.lr``).
* ``finetune.replay_path`` mixes old frames into every training epoch
  (:meth:`mpnn_ip.data.AtomicDataModule.add_replay`).
* ``finetune.new_head=NAME`` (with ``replay_path``): multi-head replay fine-tuning, the foundation-model
  way (:func:`multihead_layout`). The model gets a new head ``NAME``, first (so the default head of the
  result), initialised as a copy of the pretrained head ``finetune.pretrained_head`` (default: the
  checkpoint's default head), next to the checkpoint's heads. The new frames are evaluated with the new
  head, the replayed old frames with the pretrained head; both train the shared weights, each head's own
  parts learn only from its frames. E0 is re-fitted for the new head only; validation is on the new data
  (``val/*``), plus the replayed frames with the pretrained head (``val_replay/*``).

Unlike ``ckpt_path``, optimizer, scheduler, EMA and epoch counter start fresh. A fine-tuning run
is continued with ``resume=<run dir>``: its saved config has both ``finetune_from`` and (set by
``resume``) ``ckpt_path``; the weights then come from ``ckpt_path`` and only the freezing, learning
rate and replay of the ``finetune`` block are applied again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mpnn_ip.checkpoint import load_weights, model_from_metadata, plain, read_checkpoint, resolve_dtype
from mpnn_ip.elements import symbols, unknown_elements
from mpnn_ip.errors import ConfigError
from mpnn_ip.models import MODEL_REGISTRY, Potential, normalize_species
from mpnn_ip.train.energy_references import finetuned_statistics, refit_energy_references

log = logging.getLogger(__name__)

#: Defaults of the ``finetune`` block of ``configs/train.yaml`` (settings that only apply with ``finetune_from``).
DEFAULT_SETTINGS = {
    "freeze": [],
    "lr": None,
    "refit_e0": True,
    "replay_path": None,
    "replay_fraction": 0.0,
    "new_head": None,
    "pretrained_head": None,
}


def check_run_settings(cfg) -> None:
    """``ConfigError`` for settings that contradict each other: ``finetune_from`` with ``ckpt_path`` or
    ``resume`` (a fine-tuning run starts fresh; the others continue a run), or ``finetune.*`` settings
    without ``finetune_from`` (they would be ignored)."""
    source = cfg.get("finetune_from")
    if source and cfg.get("ckpt_path"):
        raise ConfigError(
            f"finetune_from={source} and ckpt_path={cfg.ckpt_path} exclude each other: finetune_from starts a new run "
            "from a checkpoint's weights (fresh optimizer, E0 re-fitted on the new data), ckpt_path continues a run "
            "with its optimizer and epoch. Give one of them; to continue a fine-tuning run use resume=<its run dir>."
        )
    if source and cfg.get("resume") not in (None, False):
        raise ConfigError(
            f"finetune_from={source} and resume={cfg.resume} exclude each other; resume=<run dir> alone continues "
            "a fine-tuning run with the settings saved in its config.yaml."
        )
    settings = finetune_settings(cfg)
    changed = sorted(k for k, v in settings.items() if v != DEFAULT_SETTINGS[k])
    if not source and changed:
        raise ConfigError(
            f"finetune.{', finetune.'.join(changed)} only apply when fine-tuning: add finetune_from=<checkpoint "
            "written by mpnn-train>, or drop them."
        )


def finetune_settings(cfg) -> dict[str, Any]:
    """The ``finetune`` block as plain values, defaults filled in; unknown keys are a ``ConfigError``."""
    given = plain(cfg.get("finetune") or {})
    unknown = sorted(set(given) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ConfigError(
            f"finetune.{unknown[0]} is not a fine-tuning setting; the settings are {sorted(DEFAULT_SETTINGS)}"
        )
    settings = {**DEFAULT_SETTINGS, **given}
    settings["freeze"] = list(settings["freeze"] or [])
    return settings


def multihead_layout(
    settings: Mapping, checkpoint_heads: Sequence[str], resumed: bool = False
) -> tuple[list[str], int] | None:
    """``(heads of the fine-tuned model, index of the head that evaluates the replayed frames)`` for
    ``finetune.new_head``, or None without it. The heads are ``[new_head, *checkpoint_heads]``; with
    ``resumed`` the checkpoint is the fine-tuning run's own and already has them.

    Raises:
        ConfigError: ``new_head`` without ``replay_path`` or already a head of the checkpoint; a
            ``pretrained_head`` the checkpoint lacks (the message lists its heads), or given without ``new_head``.
    """
    new, pretrained = settings.get("new_head"), settings.get("pretrained_head")
    checkpoint_heads = [str(h) for h in checkpoint_heads]
    if new is None:
        if pretrained is not None:
            raise ConfigError(
                f"finetune.pretrained_head={pretrained} only applies with finetune.new_head=<name of the new head> "
                "(multi-head replay fine-tuning); add it, or drop finetune.pretrained_head"
            )
        return None
    new = str(new)
    if not settings.get("replay_path"):
        raise ConfigError(
            f"finetune.new_head={new} trains a new head while the pretrained head keeps its knowledge on replayed old "
            "frames: give them with finetune.replay_path=<file or glob of pretraining frames> and "
            "finetune.replay_fraction=<share of each epoch, e.g. 0.3>"
        )
    heads = checkpoint_heads if resumed else [new, *checkpoint_heads]
    if resumed and (heads[0] != new or len(heads) < 2):
        raise ConfigError(
            f"the checkpoint's heads {heads} are not those of a multi-head fine-tuning run with new head {new!r}"
        )
    if not resumed and new in checkpoint_heads:
        raise ConfigError(
            f"finetune.new_head={new} is already a head of the pretrained model (its heads: {checkpoint_heads}); "
            "give the new head another name"
        )
    pretrained = heads[1] if pretrained is None else str(pretrained)
    if pretrained not in heads[1:]:
        raise ConfigError(
            f"finetune.pretrained_head={pretrained} is not a head of the pretrained model; its heads are {heads[1:]} "
            "(the first is its default head, used when finetune.pretrained_head is not given)"
        )
    return heads, heads.index(pretrained)


def with_new_head(model: Potential, heads: Sequence[str], replay_head: int) -> Potential:
    """``model`` (the checkpoint's, heads ``heads[1:]``) with the new head ``heads[0]`` in front, a copy of head
    ``heads[replay_head]`` (:meth:`~mpnn_ip.models.Potential.with_heads`; a ConfigError for a model without heads)."""
    return model.with_heads(heads, [heads[replay_head], *heads[1:]])


def read_pretrained(path) -> dict:
    """The checkpoint dict of ``path`` (checked by :func:`read_checkpoint`); a model fitted in closed form
    (e.g. GAP) is refused, it has nothing to fine-tune."""
    ckpt = read_checkpoint(path)
    name = ckpt["mpnn_ip"]["model_name"]
    if name in MODEL_REGISTRY and _model_class(name).fitted_in_closed_form:
        raise ConfigError(
            f"finetune_from={path}: a {name!r} model is fitted in closed form, not by gradient steps, so it cannot be "
            "fine-tuned; train it anew on the old and new frames together (data.train_path=<glob of both>)."
        )
    return ckpt


def _model_class(name: str) -> type[Potential]:
    from mpnn_ip.models import model_class

    return model_class(name)


def model_config_node(model_name: str, constructor_arguments: Mapping) -> dict[str, Any]:
    """A ``model`` config (``_target_`` plus the constructor arguments) that builds the checkpoint's model."""
    module, cls = MODEL_REGISTRY[model_name].split(":")
    return {"_target_": f"{module}.{cls}", **plain(constructor_arguments)}


def use_checkpoint_architecture(cfg, ckpt: Mapping, path, model_on_command_line: bool) -> None:
    """Replace ``cfg.model`` by the checkpoint's model and log the user's model settings that differ
    (a WARNING when ``model_on_command_line``, else INFO: the default preset is not the user's choice)."""
    from omegaconf import OmegaConf, open_dict

    meta = ckpt["mpnn_ip"]
    ignored = ignored_model_settings(cfg.model, meta)
    if ignored:
        level = logging.WARNING if model_on_command_line else logging.INFO
        log.log(
            level,
            "finetune_from=%s keeps the checkpoint's %s architecture; these model settings are ignored: %s",
            path,
            meta["model_name"],
            "; ".join(ignored),
        )
    with open_dict(cfg):
        cfg.model = OmegaConf.create(model_config_node(meta["model_name"], meta["model_config"]))


def ignored_model_settings(model_cfg, meta: Mapping) -> list[str]:
    """``key=value (checkpoint: value)`` for each setting of ``model_cfg`` that the checkpoint's model does not
    have; settings computed from the data (``${training_data_stats:...}``) and ``e0s`` are not compared."""
    from omegaconf import OmegaConf

    stored = meta["model_config"]
    target = model_config_node(meta["model_name"], {})["_target_"]
    if model_cfg.get("_target_") not in (None, target):
        return [f"_target_={model_cfg.get('_target_')} (checkpoint: {target})"]
    ignored = []
    for key in model_cfg:
        if key in ("_target_", "e0s") or OmegaConf.is_interpolation(model_cfg, key):
            continue
        value = plain(model_cfg[key])
        if key not in stored:
            ignored.append(f"{key}={value} (not an argument of the checkpoint's model)")
            continue
        if key == "species":
            value = normalize_species(value)
        if value != stored[key]:
            ignored.append(f"{key}={value} (checkpoint: {stored[key]})")
    return ignored


def check_data_species(model_species: Sequence[int], data_species: Sequence[int], path) -> None:
    """``ConfigError`` naming the elements of the new data that the pretrained model was not built for."""
    new = unknown_elements(model_species, data_species)
    if new:
        raise ConfigError(
            f"the fine-tuning data contains element(s) {new} that the pretrained model {path} does not know "
            f"(its species: {symbols(model_species)}). A model learns only the elements it was built with: the "
            f"pretrained model would have to have been built with them in species, e.g. model.species="
            f"[{','.join(symbols(sorted({*model_species, *data_species})))}] (an element may be absent from the "
            "pretraining data). Fine-tune such a model, or leave the frames with these elements out."
        )


def pretrained_model(ckpt: Mapping, path, data_species: Sequence[int], dtype: str | None) -> Potential:
    """The checkpoint's model with its weights, in ``dtype`` (None or ``"auto"``: its class's
    :attr:`~mpnn_ip.models.base.Potential.default_dtype`, as a new model of that class); checks the data's species."""
    model = model_from_metadata(ckpt["mpnn_ip"], path)
    load_weights(model, ckpt, path)
    check_data_species(model.species, data_species, path)
    return model.to(resolve_dtype(dtype) or type(model).default_dtype)


def finetuned_model(cfg, pretrained: Mapping, datamodule, statistics: dict, settings: Mapping, heads=None):
    """The model a new fine-tuning run trains, and the statistics its checkpoints store
    (:func:`finetuned_statistics`).

    The pretrained model of checkpoint dict ``pretrained`` (read from ``cfg.finetune_from``; in ``cfg.dtype``,
    checked against the data's ``statistics["species"]``), with the new head in front for ``heads`` from
    :func:`multihead_layout`, and E0 re-fitted on the training split of ``datamodule``
    (:func:`refit_energy_references`; the new head's only) unless ``settings["refit_e0"]`` is false.
    ``cfg.model`` records the model's arguments (E0, heads), so that ``config.yaml`` and ``resume=`` see the
    model trained; rank 0 prints the E0 (eV) and where they came from.
    """
    from omegaconf import OmegaConf

    from mpnn_ip.train.builders import is_global_zero

    path = cfg.finetune_from
    model = pretrained_model(pretrained, path, statistics["species"], cfg.dtype)
    if heads is not None:
        model = with_new_head(model, *heads)
    source = "pretrained (finetune.refit_e0=false)"
    if settings["refit_e0"]:
        isolated = statistics["e0s"] if statistics.get("e0s_source") == "isolated_atoms" else None
        on_gpu = str(cfg.trainer.get("accelerator", "cpu")) != "cpu" and torch.cuda.is_available()
        graphs = datamodule.train_dataset.graphs
        model, source = refit_energy_references(model, graphs, isolated, device="cuda" if on_gpu else "cpu")
        cfg.model.e0s = OmegaConf.create(model.config["e0s"])
    if heads is not None:  # config.yaml and resume= see the model with its heads
        cfg.model = OmegaConf.create(model_config_node(pretrained["mpnn_ip"]["model_name"], model.config))
    if is_global_zero():
        e0s = ", ".join(f"{symbol} {e:+.4f}" for symbol, e in zip(symbols(model.species), model.head_e0s(0).values()))
        new = (
            ""
            if heads is None
            else f" of the new head {heads[0][0]!r} (heads {heads[0]}; replayed frames: {heads[0][heads[1]]!r})"
        )
        print(f"Fine-tuning {path}: E0 (eV){new} {e0s} [{source}]", flush=True)
    return model, finetuned_statistics(statistics, model, source, path)


def parameter_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """Named groups of the model's parameters for ``finetune.freeze``, read off the module tree: each top-level
    submodule that has parameters (``species_embedding``, ``readout``, ``scale_shift``...), a ``ModuleList``
    also as its items (``layers`` and ``layers.0``, ``layers.1``...), and parameters held by the model itself."""
    groups = {name: [p] for name, p in model.named_parameters(recurse=False)}
    for name, child in model.named_children():
        parameters = list(child.parameters())
        if not parameters:
            continue
        groups[name] = parameters
        if isinstance(child, torch.nn.ModuleList):
            for index, item in enumerate(child):
                if any(True for _ in item.parameters()):
                    groups[f"{name}.{index}"] = list(item.parameters())
    return groups


def freeze(model: torch.nn.Module, names: Sequence[str]) -> tuple[int, int]:
    """Set ``requires_grad=False`` on the parameter groups ``names``; returns (trainable, total) parameter counts.

    Raises ``ConfigError`` for an unknown group (listing the model's groups) or when nothing is left to train.
    """
    groups = parameter_groups(model)
    unknown = [name for name in names if name not in groups]
    if unknown:
        listing = ", ".join(f"{name} ({sum(p.numel() for p in params)})" for name, params in groups.items())
        raise ConfigError(
            f"finetune.freeze: the model has no parameter group {', '.join(map(str, unknown))}. Its groups "
            f"(number of parameters) are: {listing}. Example: finetune.freeze=[{next(iter(groups))}]"
        )
    for name in names:
        for parameter in groups[name]:
            parameter.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ConfigError(f"finetune.freeze={list(names)} freezes every parameter of the model; leave some group out.")
    return trainable, sum(p.numel() for p in model.parameters())


def trainable_optimizer(optimizer_factory, lr: float | None = None):
    """``optimizer_factory`` (called with parameters) restricted to the parameters that require grad, at ``lr``
    (None: the factory's own)."""

    def build(parameters):
        trainable = [p for p in parameters if p.requires_grad]
        return optimizer_factory(trainable) if lr is None else optimizer_factory(trainable, lr=float(lr))

    return build
