"""Data-parallel training (``trainer=ddp``, gloo on 2 CPU processes) equals one process at the same global
batch: same statistics on every process, the same parameters after the first optimizer step (float64,
1e-10), the same per-epoch validation loss and force RMSE, EMA identical on every process, one set of
output files, resume from ``last.ckpt`` under DDP equal to the uninterrupted run; ``torchrun`` launches;
a process that fails stops the job with its error.

A probe callback (``+callbacks.probe``, from a module written into the working folder) records, per
process, the statistics at the start of fit, the raw parameters after optimizer step 1 and the EMA
weights at the end.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("hydra")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is needed", allow_module_level=True)

pytestmark = pytest.mark.slow

TINY_NEQUIP = """\
defaults:
  - nequip
r_max: 3.0
num_layers: 1
l_max: 1
num_features: 4
radial_mlp: [8]
"""
PROBE = """\
import json
from pathlib import Path

import lightning as L
import torch


class Probe(L.Callback):
    def __init__(self, out: str, fail_rank: int = -1):
        self.out, self.fail_rank, self.saved = Path(out), int(fail_rank), False

    def on_fit_start(self, trainer, pl_module):
        from mpnn_ip.models.arguments import plain

        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"statistics_rank{trainer.global_rank}.json").write_text(json.dumps(plain(pl_module.statistics)))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.fail_rank and trainer.global_step == 1:
            raise RuntimeError(f"probe failure on rank {trainer.global_rank}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 1 and not self.saved:
            self.saved = True
            raw = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}
            torch.save(raw, self.out / f"step1_rank{trainer.global_rank}.pt")

    def on_fit_end(self, trainer, pl_module):
        from mpnn_ip.train import ExponentialMovingAverage

        (ema,) = [c for c in trainer.callbacks if isinstance(c, ExponentialMovingAverage)]
        torch.save(ema.ema, self.out / f"ema_rank{trainer.global_rank}.pt")
"""
#: 8 training frames: one global batch of 4 = 1 process x 4 frames = 2 processes x 2 frames; 2 steps per epoch.
COMMON = [
    "model=nequip_ddptest",
    "dtype=float64",
    "data.train_count=8",
    "data.val_count=4",
    "data.test_count=4",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "trainer.num_sanity_val_steps=0",
    "seed=3",
]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=2"]
ONE = ["trainer=cpu", "data.batch_size=4"]


def run(command: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def mpnn_train(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    # `python -m`: Lightning starts the other DDP processes with the same module and arguments
    return run([sys.executable, "-m", "mpnn_ip.cli.train", *args], cwd, **kwargs)


def probe(out: Path, fail_rank: int = -1) -> list[str]:
    return [
        "+callbacks.probe._target_=ddp_probe.Probe",
        f"+callbacks.probe.out={out}",
        f"+callbacks.probe.fail_rank={fail_rank}",
    ]


def epochs(run_dir: Path, *names: str) -> dict[int, dict[str, float]]:
    """Per-epoch values of ``names`` from ``metrics.csv`` (and the earlier parts of a resumed run)."""
    rows = {}
    for path in sorted(run_dir.glob("metrics*.csv")):
        for row in csv.DictReader(path.open()):
            for name in names:
                if row.get(name):
                    rows.setdefault(int(row["epoch"]), {})[name] = float(row[name])
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One process (3 epochs); DDP (2 epochs, Lightning starting the second process), then resumed in its folder
    to 3 epochs from its last.ckpt under ``torchrun``; probes of each. ``ddp_files``: the DDP run folder's files
    before the resume."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "configs" / "model").mkdir(parents=True)
    (root / "configs" / "model" / "nequip_ddptest.yaml").write_text(TINY_NEQUIP)
    (root / "ddp_probe.py").write_text(PROBE)
    paths = {name: root / name for name in ("one", "ddp")}
    mpnn_train(
        [
            *COMMON,
            *ONE,
            "trainer.max_epochs=3",
            "test_after_fit=false",
            f"hydra.run.dir={paths['one']}",
            *probe(root / "probe_one"),
        ],
        root,
    )
    mpnn_train(
        [*COMMON, *DDP, "trainer.max_epochs=2", f"hydra.run.dir={paths['ddp']}", *probe(root / "probe_ddp")], root
    )
    ddp_files = {str(p.relative_to(paths["ddp"])) for p in paths["ddp"].rglob("*")}
    (root / "metrics_before_resume.json").write_bytes((paths["ddp"] / "metrics.json").read_bytes())
    run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "mpnn_ip.cli.train",
            f"resume={paths['ddp']}",
            "trainer.max_epochs=3",
            "test_after_fit=false",
        ],
        root,
    )
    return dict(paths, root=root, ddp_files=ddp_files)


def test_statistics_are_identical_on_every_process_and_equal_to_one_process(runs):
    one = json.loads((runs["root"] / "probe_one" / "statistics_rank0.json").read_text())
    ranks = [json.loads((runs["root"] / "probe_ddp" / f"statistics_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] == one
    assert json.loads((runs["ddp"] / "metrics.json").read_text())["statistics"]["force_rms"] == one["force_rms"]


def test_parameters_after_the_first_optimizer_step_equal_one_process(runs):
    one = torch.load(runs["root"] / "probe_one" / "step1_rank0.pt", weights_only=True)
    for rank in (0, 1):
        ddp = torch.load(runs["root"] / "probe_ddp" / f"step1_rank{rank}.pt", weights_only=True)
        assert ddp.keys() == one.keys()
        for name, value in one.items():
            assert value.dtype == torch.float64
            assert torch.allclose(ddp[name], value, rtol=0, atol=1e-10), (name, float((ddp[name] - value).abs().max()))


def test_ema_weights_are_identical_on_every_process(runs):
    a, b = (torch.load(runs["root"] / "probe_ddp" / f"ema_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_validation_loss_and_force_rmse_per_epoch_equal_one_process(runs):
    names = ("val/loss", "val/forces_rmse", "train/loss")
    one, ddp = epochs(runs["one"], *names), epochs(runs["ddp"], *names)
    assert sorted(ddp) == sorted(one) == [0, 1, 2]
    for epoch in one:
        for name in names:
            assert ddp[epoch][name] == pytest.approx(one[epoch][name], rel=1e-9), (epoch, name)


def test_only_one_set_of_output_files_is_written(runs):
    files = {name for name in runs["ddp_files"] if not name.startswith("plots/")}
    # the second process leaves only its log: no second config, metrics, plots or Hydra record
    assert files == {
        "checkpoints",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        ".hydra",
        ".hydra/config.yaml",
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
        "config.yaml",
        "hparams.yaml",
        "metrics.csv",
        "metrics.json",
        "plots",
        "train.log",
        "train_ddp_process_1.log",
    }
    report = json.loads((runs["root"] / "metrics_before_resume.json").read_text())
    assert report["num_frames"] == 4 and report["split"] == "test"
    assert len(report["plots"]) == len([name for name in runs["ddp_files"] if name.startswith("plots/")]) > 0


def test_resume_under_ddp_equals_the_uninterrupted_run(runs):
    resumed = torch.load(runs["ddp"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    one = torch.load(runs["one"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == one["epoch"] == 2 and resumed["global_step"] == one["global_step"] == 6
    for key, value in one["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][key], value, rtol=0, atol=1e-9), key


def test_torchrun_launch_completes_in_the_run_folder(runs):
    run_dir = runs["ddp"]  # resumed there by `torchrun --nproc_per_node=2 -m mpnn_ip.cli.train resume=...`
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (run_dir / "train_rank1.log").read_text()
    assert {p.name for p in (run_dir / ".hydra" / "resume").iterdir()} == {
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    }
    assert not (run_dir / "outputs").exists() and not (runs["root"] / "outputs").exists()


def test_a_failing_process_stops_the_whole_job_with_its_error(runs):
    root = runs["root"]
    proc = mpnn_train(
        [*COMMON, *DDP, "trainer.max_epochs=1", f"hydra.run.dir={root / 'fails'}", *probe(root / "probe_fail", 1)],
        root,
        check=False,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "probe failure on rank 1" in proc.stderr


def test_submitit_local_runs_the_jobs_of_a_sweep_in_parallel_processes(tmp_path):
    try:
        __import__("hydra_plugins.hydra_submitit_launcher")
    except ImportError:
        pytest.skip("hydra-submitit-launcher is not installed (optional extra mpnn_ip[slurm])")
    (tmp_path / "configs" / "model").mkdir(parents=True)
    (tmp_path / "configs" / "model" / "nequip_ddptest.yaml").write_text(TINY_NEQUIP)
    sweep = tmp_path / "sweep"
    mpnn_train(
        [
            "-m",
            "hydra/launcher=submitit_local",
            *COMMON,
            *ONE,
            "seed=1,2",
            "trainer.max_epochs=1",
            "test_after_fit=false",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    for job in jobs:
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file() and (sweep / job / "metrics.json").is_file()
    assert (sweep / ".submitit").is_dir()  # run by submitit's processes, not in the launching one


def test_a_multi_node_run_without_a_launcher_names_the_missing_variables():
    from mpnn_ip.errors import ConfigError
    from mpnn_ip.train.builders import check_launcher_environment

    check_launcher_environment(1, {})
    check_launcher_environment(2, {"MASTER_ADDR": "n1", "MASTER_PORT": "29500", "NODE_RANK": "1"})
    check_launcher_environment(2, {"SLURM_NTASKS": "8", "SLURM_PROCID": "3", "SLURM_LOCALID": "3", "SLURM_NODEID": "0"})
    with pytest.raises(ConfigError, match="MASTER_PORT, NODE_RANK are not set"):
        check_launcher_environment(2, {"MASTER_ADDR": "n1"})


def test_only_rank_zero_of_any_launcher_writes_the_run_files():
    from mpnn_ip.train.builders import is_global_zero

    assert is_global_zero({})
    assert is_global_zero({"RANK": "0", "LOCAL_RANK": "0"}) and not is_global_zero({"RANK": "2", "LOCAL_RANK": "0"})
    assert not is_global_zero({"SLURM_PROCID": "1"}) and not is_global_zero({"LOCAL_RANK": "1"})
    assert not is_global_zero({"NODE_RANK": "1", "LOCAL_RANK": "0"})


def test_processes_of_one_torchrun_or_srun_job_share_one_run_folder():
    from mpnn_ip.cli.train import _one_run_dir_per_job

    torchrun = {"WORLD_SIZE": "2", "RANK": "1", "TORCHELASTIC_RUN_ID": "abc"}
    assert _one_run_dir_per_job(["seed=1"], torchrun) == [
        "seed=1",
        "hydra.run.dir=outputs/${run_name}/torchrun-abc",
        "hydra.output_subdir=null",
        "hydra.job.name=train_rank1",
    ]
    srun = {"SLURM_NTASKS": "8", "SLURM_PROCID": "0", "SLURM_JOB_ID": "77"}
    assert _one_run_dir_per_job(["hydra.run.dir=x"], srun) == ["hydra.run.dir=x"]
    assert _one_run_dir_per_job(["seed=1"], srun) == ["seed=1", "hydra.run.dir=outputs/${run_name}/slurm-77"]
    assert _one_run_dir_per_job(["seed=1"], {}) == ["seed=1"]
    assert _one_run_dir_per_job(["-m", "seed=1,2"], torchrun) == ["-m", "seed=1,2"]


def test_slurm_script_starts_one_ddp_process_per_gpu_with_srun(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm" / "train.sbatch"
    text = script.read_text()
    assert "#SBATCH --nodes=" in text and "#SBATCH --ntasks-per-node=" in text and "#SBATCH --gpus-per-node=" in text
    (tmp_path / "srun").write_text('#!/bin/bash\necho "srun $*"\n')  # prints what sbatch's srun would start
    (tmp_path / "srun").chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{tmp_path}:{os.environ['PATH']}",
        SLURM_NNODES="2",
        SLURM_NTASKS_PER_NODE="4",
        SLURM_GPUS_PER_NODE="a100:4",
    )

    def started(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(script), *args], env=dict(env, **extra), capture_output=True, text=True)

    assert started("experiment=acac").stdout.strip() == (
        "srun --kill-on-bad-exit=1 mpnn-train trainer=ddp trainer.num_nodes=2 trainer.devices=4 experiment=acac"
    )
    assert (
        started("resume=outputs/acac/slurm-1").stdout.strip()
        == "srun --kill-on-bad-exit=1 mpnn-train resume=outputs/acac/slurm-1"
    )
    missing = started("experiment=acac", SLURM_NNODES="")
    assert missing.returncode != 0 and "SLURM_NNODES is not set" in missing.stderr


def test_global_count_normalisation_makes_two_half_batches_one_batch_for_frames_of_different_sizes():
    """DDP averages the processes' gradients; each divides its error sums by the global count / 2, so the
    average is the gradient of the whole batch's loss, also when the halves hold different numbers of atoms."""
    import numpy as np
    from ase.build import bulk, molecule

    from mpnn_ip.data import AtomicGraph, collate
    from mpnn_ip.train.losses import WeightedPropertyLoss

    frames = [
        molecule("H2O"),
        bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2),
        molecule("CH4"),
        bulk("Cu", "fcc", a=3.6),
    ]
    graphs = [
        AtomicGraph.from_atoms(
            a, energy=-1.0 * len(a), forces=np.full((len(a), 3), 0.1 * k), stress=np.full(6, 0.01 * k)
        )
        for k, a in enumerate(frames)
    ]
    loss = WeightedPropertyLoss(energy={"weight": 1.0}, forces={"weight": 10.0}, stress={"weight": 2.0, "fn": "huber"})

    def gradient(batch, normaliser=None):
        shift = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        n_atoms = (batch.ptr[1:] - batch.ptr[:-1]).double()
        pred = {
            "energy": batch.energy + shift * n_atoms,
            "forces": batch.forces * (1 + shift),
            "stress": batch.stress + shift,
        }
        total, _ = loss(pred, batch, normaliser)
        (grad,) = torch.autograd.grad(total, shift)
        return float(total.detach()), float(grad)

    whole = gradient(collate(graphs))
    halves = [collate(graphs[0::2]), collate(graphs[1::2])]  # 8 atoms vs 33 atoms
    global_counts = sum(loss.sums_and_counts(_labels_as_prediction(h), h)[1] for h in halves)
    ddp = [gradient(h, lambda counts: global_counts / 2) for h in halves]
    assert np.mean([g for _, g in ddp]) == pytest.approx(whole[1], rel=1e-12)
    assert np.mean([t for t, _ in ddp]) == pytest.approx(whole[0], rel=1e-12)
    naive = [gradient(h) for h in halves]  # each process's own mean: not the whole batch's gradient
    assert abs(np.mean([g for _, g in naive]) - whole[1]) > 1e-3 * abs(whole[1])


def _labels_as_prediction(batch) -> dict:
    return {"energy": batch.energy, "forces": batch.forces, "stress": batch.stress}


def test_srun_launch_through_lightnings_slurm_environment_completes_in_one_run_folder(runs):
    """Two processes started as srun starts them (SLURM's variables; Lightning's SLURMEnvironment takes ranks,
    address and port from them): one run folder ``outputs/<run_name>/slurm-<job id>``, written by rank 0. The
    batches are packed by atoms (``data.max_atoms_per_batch``: two ~32-atom frames per batch and process)."""
    import socket

    root = runs["root"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    slurm = dict(
        SLURM_NTASKS="2",
        SLURM_NNODES="1",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_NODEID="0",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="mpnn-train",
        SLURM_NODELIST="127.0.0.1",
        MASTER_PORT=str(port),
    )
    command = [
        sys.executable,
        "-m",
        "mpnn_ip.cli.train",
        *COMMON,
        *DDP,
        "trainer.num_nodes=1",
        "trainer.max_epochs=1",
        "data.max_atoms_per_batch=70",
        "test_after_fit=false",
        "run_name=srun",
    ]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "LOCAL_RANK", "WORLD_SIZE"))}
    base.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **slurm)
    procs = [
        subprocess.Popen(
            command,
            cwd=root,
            env=dict(base, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    (run_dir,) = (root / "outputs" / "srun").iterdir()
    assert run_dir.name == "slurm-4242"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "train_rank1.log").is_file()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (run_dir / "train_rank1.log").read_text()
    steps = [row for row in csv.DictReader((run_dir / "metrics.csv").open()) if row.get("train/loss_step")]
    assert len(steps) == 2 and epochs(run_dir, "val/forces_rmse")[0]["val/forces_rmse"] > 0  # 8 frames / (2 x 2)
