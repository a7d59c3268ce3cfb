"""``resume=<run dir>``: continue a (killed) ``mpnn-train`` run in its own folder.

The run continues from its ``checkpoints/last.ckpt`` with the settings saved in its ``config.yaml``; on the
command line only :data:`RESUME_OVERRIDABLE` (how long to train, testing afterwards, the progress bar) and
``hydra.*`` may be given. Before Hydra starts, :func:`prepare_resume_argv` checks the folder
(:func:`check_resume_dir`) and the overrides and points ``hydra.run.dir`` at the folder; inside the job,
:func:`resumed_config` builds the config to train with, removes temporary files of a save that was killed and
keeps the earlier rows of ``metrics.csv`` (:func:`keep_metrics_history`). Every refusal is a ``ConfigError``
that says what to do instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mpnn_ip.errors import ConfigError

#: The only settings ``resume=`` accepts on the command line (besides ``hydra.*``): how long to train,
#: whether to test afterwards, the progress bar. Everything else comes from the run's ``config.yaml``.
RESUME_OVERRIDABLE = (
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.enable_progress_bar",
    "test_after_fit",
)
#: Where Hydra's own record of a resumed job goes (the original run's ``.hydra/`` is kept).
RESUME_HYDRA_SUBDIR = ".hydra/resume"


def parse_overrides(overrides) -> list:
    """Hydra's own parse of command-line overrides (``key_or_group``, typed ``value()``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def check_resume_dir(run_dir: Path) -> None:
    """ConfigError unless ``run_dir`` holds what ``resume=`` needs: ``checkpoints/last.ckpt`` and ``config.yaml``."""
    if not run_dir.is_dir():
        raise ConfigError(
            f"resume: the run folder {run_dir} does not exist. Give the folder of an earlier mpnn-train run "
            "(the one that holds config.yaml and checkpoints/), e.g. resume=outputs/<run_name>/<date_time>."
        )
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise ConfigError(
            f"resume: {last} does not exist, so the run in {run_dir} cannot be continued (it was stopped before "
            "its first checkpoint, or checkpoints went elsewhere). Start it again without resume=, or start a new "
            "run from another checkpoint with ckpt_path=<file>.ckpt."
        )
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"resume: {run_dir / 'config.yaml'} does not exist, so the settings of the run in {run_dir} are unknown. "
            f"Start a new run from its checkpoint with the original overrides plus ckpt_path={last}."
        )


def prepare_resume_argv(argv: list[str]) -> list[str]:
    """The command line with ``hydra.run.dir`` set to the run folder of ``resume=``; checks that folder and the
    other overrides (ConfigError). Command lines without ``resume`` come back unchanged."""
    from hydra._internal.utils import get_args_parser

    if not any(a.lstrip("+~").startswith("resume=") for a in argv):
        return argv
    args = get_args_parser().parse_args(argv)
    overrides = parse_overrides(args.overrides or [])
    values = {o.key_or_group: o.value() for o in overrides}
    value = values.get("resume")
    if value in (None, False, ""):
        return argv
    if args.multirun:
        raise ConfigError("resume= continues one run; it does not work with -m/--multirun.")
    run_dir_given = values.get("hydra.run.dir")
    if value is True:
        if run_dir_given is None:
            raise ConfigError(
                "resume=true needs the run folder: add hydra.run.dir=<run dir>, or give it as resume=<run dir>."
            )
        run_dir = Path(str(run_dir_given)).expanduser().resolve()
    else:
        run_dir = Path(str(value)).expanduser().resolve()
        if run_dir_given is not None and Path(str(run_dir_given)).expanduser().resolve() != run_dir:
            raise ConfigError(
                f"resume={value} continues the run in its own folder, but hydra.run.dir={run_dir_given} names "
                "another one. Drop hydra.run.dir (or use resume=true with hydra.run.dir=<run dir>)."
            )
    others = [
        o.input_line
        for o in overrides
        if o.key_or_group not in ("resume", *RESUME_OVERRIDABLE) and not o.key_or_group.startswith("hydra.")
    ]
    if others:
        raise ConfigError(
            f"resume continues the run in {run_dir} with the settings saved in its config.yaml; it only accepts "
            f"{', '.join(RESUME_OVERRIDABLE)} (and hydra.*) on the command line, not {' '.join(others)}. "
            f"To change other settings start a new run from its checkpoint: the original overrides plus "
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}."
        )
    check_resume_dir(run_dir)
    extra = [] if run_dir_given is not None else [f"hydra.run.dir={_quote(str(run_dir))}"]
    if "hydra.output_subdir" not in values:
        extra.append(f"hydra.output_subdir={RESUME_HYDRA_SUBDIR}")
    return [*argv, *extra]


def _quote(value: str) -> str:
    """A Hydra override value: quoted when it holds characters the override grammar would parse."""
    if all(c.isalnum() or c in "/._-:" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _replace_prefix(node, old: str, new: str):
    """``node`` (plain containers) with every string that is ``old`` or starts with ``old/`` moved to ``new``."""
    if isinstance(node, dict):
        return {k: _replace_prefix(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_prefix(v, old, new) for v in node]
    if isinstance(node, str) and (node == old or node.startswith(old.rstrip("/") + "/")):
        return new + node[len(old.rstrip("/")) :]
    return node


def resumed_config(cfg):
    """The config of a ``resume=`` job: the run's saved ``config.yaml`` with ``ckpt_path`` set to its
    ``checkpoints/last.ckpt``, the allowed command-line settings (:data:`RESUME_OVERRIDABLE`) applied, and
    paths of the run folder moved to where the folder is now. Stale temporary files of a save that was
    killed are removed from ``checkpoints/``."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from mpnn_ip.train.checkpoint_io import remove_stale_temporary_files

    run_dir = Path(cfg.output_dir).resolve()
    check_resume_dir(run_dir)
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=False)
    old_dir = saved.get("output_dir")
    if isinstance(old_dir, str) and old_dir and Path(old_dir).resolve() != run_dir:
        saved = _replace_prefix(saved, old_dir, str(run_dir))  # the folder was moved or copied
    saved = OmegaConf.create(saved)
    given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    for key in dict.fromkeys(o.key_or_group for o in parse_overrides(given)):
        if key in RESUME_OVERRIDABLE:
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    saved.output_dir = str(run_dir)
    saved.ckpt_path = str(last)
    saved.resume = None
    for stale in remove_stale_temporary_files(last.parent):
        logging.getLogger(__name__).warning("removed %s (left by a checkpoint save that was killed)", stale)
    keep_metrics_history(run_dir)
    print(f"Resuming the run in {run_dir} from {last}", flush=True)
    return saved


def keep_metrics_history(run_dir: Path) -> None:
    """Lightning's CSV logger deletes an existing ``metrics.csv``; keep the earlier rows as ``metrics.partN.csv``."""
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        return
    number = 1
    while (run_dir / f"metrics.part{number}.csv").exists():
        number += 1
    metrics.replace(run_dir / f"metrics.part{number}.csv")
