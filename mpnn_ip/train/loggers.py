"""Experiment loggers: Weights & Biases (offline unless you are logged in) and CSV.

``configs/logger/wandb.yaml`` builds :func:`wandb_logger`; ``configs/logger/csv.yaml`` builds
:func:`csv_logger` (``metrics.csv`` in the run directory). Nothing here touches the network
unless W&B runs ``online``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def wandb_mode() -> str:
    """``$WANDB_MODE`` when set; else ``online`` if an API key is available (``$WANDB_API_KEY`` or a
    ``wandb login`` entry in ``~/.netrc``), otherwise ``offline`` (sync later with ``wandb sync``)."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        credentials = netrc.read_text()
    except OSError:  # no readable ~/.netrc: not logged in
        credentials = ""
    return "online" if "api.wandb.ai" in credentials else "offline"


def wandb_logger(
    save_dir: str,
    project: str = "mpnn_ip",
    name: str | None = None,
    entity: str | None = None,
    group: str | None = None,
    tags: Sequence[str] | None = None,
    mode: str | None = None,
):
    """A Lightning ``WandbLogger`` writing its run under ``save_dir/wandb``.

    Args:
        save_dir: the run directory (W&B files go to ``save_dir/wandb``).
        project, name, entity, group, tags: W&B run identity.
        mode: ``online``, ``offline`` or ``disabled``; ``None`` = :func:`wandb_mode` (offline unless
            logged in, ``$WANDB_MODE`` always wins).
    """
    from lightning.pytorch.loggers import WandbLogger

    mode = mode or wandb_mode()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(
        save_dir=str(save_dir),
        project=project,
        name=name,
        entity=entity,
        group=group,
        tags=list(tags) if tags else None,
        offline=mode == "offline",
        mode=mode,
        log_model=False,
    )
    logger.wandb_mode = mode  # read by log_best_checkpoint: artifacts are uploaded only online
    return logger


def csv_logger(save_dir: str):
    """A Lightning ``CSVLogger`` writing ``save_dir/metrics.csv`` (one row per logging step/epoch)."""
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=str(save_dir), name="", version="")


def is_wandb(logger) -> bool:
    from lightning.pytorch.loggers import WandbLogger

    return isinstance(logger, WandbLogger)


def log_images(loggers: Iterable, key: str, paths: Sequence[Path]) -> None:
    """Parity plots etc. as images in every W&B logger."""
    for logger in loggers:
        if is_wandb(logger) and paths:
            logger.log_image(key=key, images=[str(p) for p in paths], caption=[Path(p).stem for p in paths])


def log_best_checkpoint(loggers: Iterable, path: Path | None, metadata: dict[str, Any]) -> None:
    """Upload the best checkpoint as a W&B model artifact; only when the run is online."""
    if path is None or not Path(path).is_file():
        return
    for logger in loggers:
        if not is_wandb(logger) or getattr(logger, "wandb_mode", wandb_mode()) != "online":
            continue
        import wandb

        artifact = wandb.Artifact(name=f"model-{logger.experiment.id}", type="model", metadata=metadata)
        artifact.add_file(str(path), name="best.ckpt")
        logger.experiment.log_artifact(artifact, aliases=["best"])
