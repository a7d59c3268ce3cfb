"""``ResidentMemoryMonitor`` logs ``memory/rss_mb`` every epoch, and ``scripts/benchmark_memory.py``
(the 50-epoch leak check) computes slope and growth correctly and runs end to end on a tiny run."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "benchmark_memory.py"


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resident_memory_is_positive_and_below_its_peak():
    from mpnn_ip.train.callbacks import resident_memory_mb

    rss, peak = resident_memory_mb()
    assert 1.0 < rss <= peak + 1e-6


def test_callback_is_on_by_default():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "mpnn_ip" / "configs" / "callbacks" / "default.yaml")
    assert cfg.memory._target_ == "mpnn_ip.train.callbacks.ResidentMemoryMonitor"


def test_callback_logs_rss_every_epoch_in_process(tmp_path):
    """A bare Lightning run (no CLI): one ``memory/rss_mb`` and ``memory/peak_rss_mb`` per epoch."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from mpnn_ip.train.callbacks import ResidentMemoryMonitor

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            (x,) = batch
            return self.layer(x).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = L.Trainer(
        max_epochs=2,
        logger=CSVLogger(tmp_path, name="", version=""),
        callbacks=[ResidentMemoryMonitor()],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(Tiny(), loader)
    rows = [r for r in csv.DictReader(open(tmp_path / "metrics.csv")) if r.get("memory/rss_mb")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for row in rows:
        assert 1.0 < float(row["memory/rss_mb"]) <= float(row["memory/peak_rss_mb"]) + 1e-6


def test_analysis_of_a_synthetic_curve():
    analyse = load_script().analyse
    # flat at 500 MB for 10 warm-up epochs, then +0.5 MB/epoch: 40 epochs x 0.5 = 20 MB
    curve = [400.0 + 10 * i for i in range(10)] + [500.0 + 0.5 * k for k in range(1, 41)]
    stats = analyse(curve, warmup_epochs=10)
    assert (stats["start_epoch"], stats["end_epoch"]) == (10, 50)
    assert stats["rss_start_mb"] == 490.0 and stats["rss_end_mb"] == 520.0
    # window = epochs 10..50: 490 then 500.5, 501, ..., 520 (a step after epoch 10, slope of the rest 0.5)
    flat = analyse([500.0] * 10 + [500.0 + 0.5 * k for k in range(1, 41)], warmup_epochs=10)
    assert flat["slope_mb_per_epoch"] == pytest.approx(0.5, rel=0.02)
    line = analyse([100.0 + 2.0 * i for i in range(50)], warmup_epochs=10)
    assert line["slope_mb_per_epoch"] == pytest.approx(2.0)
    assert line["growth_mb"] == pytest.approx(80.0) and line["fitted_growth_mb"] == pytest.approx(80.0)
    noisy = analyse([500.0 + (3.0 if i % 2 else -3.0) for i in range(50)], warmup_epochs=10)
    assert abs(noisy["slope_mb_per_epoch"]) < 0.01 and noisy["window_max_mb"] - noisy["window_min_mb"] == 6.0
    short = analyse([1.0, 2.0, 4.0], warmup_epochs=10)  # clamped: the window keeps 2 epochs
    assert (short["start_epoch"], short["growth_mb"], short["slope_mb_per_epoch"]) == (2, 2.0, 2.0)
    with pytest.raises(ValueError):
        analyse([1.0])
    assert math.isfinite(stats["slope_mb_per_epoch"])


@pytest.mark.slow
def test_benchmark_script_end_to_end_on_a_tiny_run(tmp_path):
    """3 epochs of nequip_tiny on 8 frames: exit 0 with a huge limit, the JSON curve matches metrics.csv.
    About 20 s on an idle 2-core machine (three Python start-ups: pytest, the script, mpnn-train)."""
    run_dir, out = tmp_path / "run", tmp_path / "memory.json"
    small = ["data.train_count=8", "data.val_count=4", "data.test_count=4", "test_after_fit=false"]
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--epochs",
        "3",
        "--model",
        "nequip_tiny",
        "--run-dir",
        str(run_dir),
        "--out",
        str(out),
        "--max-growth-mb",
        "1e9",
        "--threads",
        "1",
        *small,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASS" in proc.stdout and "slope over epochs 2-3" in proc.stdout
    record = json.loads(out.read_text())
    assert record["epochs"] == 3 and len(record["rss_mb"]) == 3 and all(v > 1.0 for v in record["rss_mb"])
    assert record["peak_mb"] >= max(record["rss_mb"]) and record["passed"] is True
    assert "model=nequip_tiny" in record["command"]
    script = load_script()
    rss, peak = script.read_epoch_memory(run_dir / "metrics.csv")
    assert rss == record["rss_mb"] and peak == record["peak_rss_mb"]
