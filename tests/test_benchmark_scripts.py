"""The MD and TorchSim benchmark scripts run end to end on tiny workloads (our side; the peers'
sides need their own venvs) and print the JSON record they promise. Speed itself is not tested."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args, "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_md_benchmark_reports_steps_per_second_and_graph_rebuilds():
    (record,) = _run(
        "benchmark_md.py", "--code", "ours", "--size", "tiny", "--atoms", "32", "--steps", "3", "--skin", "1.0"
    )
    assert record["code"] == "ours" and record["atoms"] == 32 and record["steps"] == 3
    assert record["steps_per_s"] > 0 and record["s_per_step"] == pytest.approx(1 / record["steps_per_s"])
    assert 0 < record["graph_rebuild_fraction"] <= 1


@pytest.mark.parametrize("mode", ["torchsim", "ase"])
def test_torchsim_benchmark_runs_many_cells_both_ways(mode):
    pytest.importorskip("torch_sim")
    (record,) = _run("benchmark_torchsim.py", "--mode", mode, "--copies", "2", "--steps", "2")
    assert record["systems"] == 2 and record["atoms"] == 128 and record["atom_steps_per_s"] > 0


BENCH_DIR = REPO.parent / "shared" / "bench"


@pytest.mark.skipif(
    not (BENCH_DIR / "bench_common.py").exists(), reason="../shared/bench (the peers' harness) is not beside the repo"
)
def test_flop_count_on_a_harness_workload():
    """scripts/benchmark_flops.py (and the harness set-up it shares with scripts/profile_model.py)."""
    (record,) = _run(
        "benchmark_flops.py", "--model", "nequip", "--workload", "cu256", "--repeats", "1", "--gemm", "256"
    )
    assert record["gflop_per_call"] > 1 and 0 < record["fraction_of_sgemm"] < 1
