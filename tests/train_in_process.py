"""``mpnn-train`` run in the test process (Hydra's global state cleared afterwards), for the tests that train."""

from __future__ import annotations

import sys
from pathlib import Path


def mpnn_train(args, run_dir: Path, monkeypatch) -> Path:
    """``mpnn-train ARGS hydra.run.dir=RUN_DIR`` in this process, W&B off; returns the run folder."""
    from hydra.core.global_hydra import GlobalHydra

    from mpnn_ip.cli.train import main

    monkeypatch.chdir(run_dir.parent)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(sys, "argv", ["mpnn-train", *map(str, args), f"hydra.run.dir={run_dir}"])
    try:
        main()
    finally:
        GlobalHydra.instance().clear()
    return run_dir
