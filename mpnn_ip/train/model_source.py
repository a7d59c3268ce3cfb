"""Where the model of an ``mpnn-train`` run comes from: a new model, a checkpoint the run continues, or a
pretrained model it fine-tunes.

:func:`model_source` reads the config (and the checkpoint files it names, so a bad file fails before the data
are loaded) and returns a :class:`ModelSource`; ``fit`` then asks it, in this order, for the data module, the
model with the statistics its checkpoints store, the data-dependent set-up and the optimizer. Its ``kind``:

``"new"``
    built from ``cfg.model`` and the training split's statistics; ``Potential.prepare`` runs on the training
    frames (e.g. BPNN's standardisation, GAP's closed-form fit).
``"checkpoint"``
    ``ckpt_path`` (also set by ``resume=``): the model rebuilt from the checkpoint's metadata with the statistics
    it stored; Lightning restores weights, optimizer and epoch counter.
``"finetune"``
    ``finetune_from``: the pretrained model with E0 re-fitted on the new data (:mod:`mpnn_ip.train.finetune`).

A fine-tuning run continued with ``resume=`` has both ``finetune_from`` and ``ckpt_path``: a ``"checkpoint"``
source that still freezes, sets the learning rate and replays as its ``finetune`` block says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpnn_ip.checkpoint import read_checkpoint
from mpnn_ip.train import builders
from mpnn_ip.train import finetune as finetuning


@dataclass
class ModelSource:
    """The model source of a run's config ``cfg`` (from :func:`model_source`).

    Attributes:
        cfg: the run's config; fine-tuning writes the pretrained model's arguments into ``cfg.model``.
        kind: ``"new"``, ``"checkpoint"`` or ``"finetune"`` (see the module docstring).
        meta: ``ckpt["mpnn_ip"]`` of ``cfg.ckpt_path`` (kind ``"checkpoint"``), else None.
        pretrained: the checkpoint dict of ``cfg.finetune_from`` (kind ``"finetune"``), else None.
        finetune: the ``finetune`` block with defaults (:func:`mpnn_ip.train.finetune.finetune_settings`).
        heads: ``(heads of the fine-tuned model, index of the replayed frames' head)`` of multi-head
            fine-tuning (:func:`mpnn_ip.train.finetune.multihead_layout`), else None.
    """

    cfg: Any
    kind: str
    meta: dict | None
    pretrained: dict | None
    finetune: dict
    heads: tuple[list[str], int] | None

    @property
    def finetune_from(self):
        """The pretrained checkpoint of a fine-tuning run (new or resumed), else None."""
        return self.cfg.get("finetune_from") or None

    def datamodule(self):
        """The data module of ``cfg.data``, set up for fitting, with ``finetune.replay_path``'s frames mixed in."""
        # fine-tuning: the data may hold any subset of the pretrained species (checked by model(), with its own message)
        datamodule = builders.build_datamodule(self.cfg.data, None if self.finetune_from else self.cfg.model)
        if self.finetune_from and self.finetune["replay_path"]:
            replay_head = None if self.heads is None else self.heads[1]
            datamodule.add_replay(self.finetune["replay_path"], self.finetune["replay_fraction"], head=replay_head)
        return datamodule

    def model(self, datamodule, statistics: dict) -> tuple[Any, dict]:
        """``(model, statistics to store in its checkpoints)`` given the training split's ``statistics``."""
        if self.meta is not None:
            model = builders.model_from_checkpoint_metadata(
                self.meta, self.cfg.model, self.cfg.ckpt_path, statistics["species"]
            )
            return model, self.meta["statistics"]
        if self.pretrained is not None:
            return finetuning.finetuned_model(
                self.cfg, self.pretrained, datamodule, statistics, self.finetune, self.heads
            )
        return builders.build_model(self.cfg.model, statistics, self.cfg.dtype), statistics

    def prepare(self, model, datamodule, output_dir: Path, loggers: list) -> None:
        """Data-dependent set-up of a new model on the training frames (``Potential.prepare``), its report to
        ``<output_dir>/prepare.json``, the console and the loggers; nothing for a checkpoint's or pretrained model."""
        if self.kind != "new":
            return
        train_graphs = list(datamodule.train_dataset.graphs)
        _report_prepare(model.prepare(train_graphs), type(model).__name__, len(train_graphs), output_dir, loggers)

    def optimizer(self, model, optimizer_factory):
        """``optimizer_factory``; when fine-tuning, restricted to the parameters left after freezing the
        ``finetune.freeze`` groups of ``model`` (in place), at ``finetune.lr``, and the counts printed."""
        if not self.finetune_from:
            return optimizer_factory
        trainable, total = finetuning.freeze(model, self.finetune["freeze"])
        if builders.is_global_zero():
            frozen = f" (frozen: {', '.join(self.finetune['freeze'])})" if self.finetune["freeze"] else ""
            print(
                f"Fine-tuning {self.finetune_from}: {trainable:,} of {total:,} parameters trainable{frozen}", flush=True
            )
        return finetuning.trainable_optimizer(optimizer_factory, self.finetune["lr"])


def model_source(cfg, model_on_command_line: bool = True) -> ModelSource:
    """The model source of ``cfg``; reads ``ckpt_path`` or ``finetune_from`` (a ``ConfigError`` for a bad file).

    A new fine-tuning run replaces ``cfg.model`` by the pretrained model's architecture
    (:func:`mpnn_ip.train.finetune.use_checkpoint_architecture`); the user's model settings it ignores are
    logged, as a warning when ``model_on_command_line`` (the command line chose or changed ``model``).
    """
    meta = read_checkpoint(cfg.ckpt_path)["mpnn_ip"] if cfg.ckpt_path else None
    finetune_from = cfg.get("finetune_from")  # with ckpt_path too: resume= continues a fine-tuning run
    settings = finetuning.finetune_settings(cfg)
    pretrained = finetuning.read_pretrained(finetune_from) if finetune_from and meta is None else None
    if pretrained is not None:
        finetuning.use_checkpoint_architecture(cfg, pretrained, finetune_from, model_on_command_line)
    source_meta = meta if meta is not None else pretrained["mpnn_ip"] if pretrained is not None else None
    heads = None
    if finetune_from and source_meta is not None:
        checkpoint_heads = source_meta["model_config"].get("heads") or ["Default"]
        heads = finetuning.multihead_layout(settings, checkpoint_heads, resumed=meta is not None)
    kind = "checkpoint" if meta is not None else "finetune" if pretrained is not None else "new"
    return ModelSource(cfg, kind, meta, pretrained, settings, heads)


def _report_prepare(report: dict, model_name: str, num_frames: int, output_dir: Path, loggers: list) -> None:
    """What ``Potential.prepare`` reported (e.g. a closed-form fit's timings, sizes and training residuals):
    to ``<run dir>/prepare.json``, the console and the loggers. Nothing when the report is empty."""
    if not report or not builders.is_global_zero():
        return
    path = output_dir / "prepare.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    seconds = report.get("time_total_s")
    timing = f": {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    print(f"Prepared {model_name} on {num_frames} training frames{timing} (details: {path})", flush=True)
    for logger in loggers:
        logger.log_metrics({f"prepare/{k}": v for k, v in report.items() if isinstance(v, (int, float))}, step=0)
