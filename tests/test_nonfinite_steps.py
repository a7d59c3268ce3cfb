"""Diverging training: a step with a non-finite loss or gradient is skipped (weights, Adam moments and
EMA untouched) with a warning naming its frames; ``max_bad_steps`` consecutive bad steps stop the run
with :class:`~mpnn_ip.errors.TrainingDiverged`, keeping the last good checkpoint; ``mpnn-train`` turns
that into a one-paragraph error with exit code 2."""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

import lightning as L  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from tiny_checkpoint import build_tiny_model  # noqa: E402

from mpnn_ip.data import collate, read_dataset  # noqa: E402
from mpnn_ip.errors import TrainingDiverged  # noqa: E402
from mpnn_ip.train import PotentialModule  # noqa: E402
from mpnn_ip.train.checkpoint_io import AtomicCheckpointIO  # noqa: E402
from mpnn_ip.train.ema import ExponentialMovingAverage  # noqa: E402

SPECIES = ["Cu", "Au"]
#: An energy label (eV) that is finite in the file but whose squared error overflows float64.
HUGE_ENERGY = 1e200


def write_frames(path: Path, count: int, weights: dict[int, float] | None = None) -> Path:
    """``count`` rattled 4-atom CuAu cells with EMT labels as extxyz; ``weights`` sets ``config_weight`` per frame."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = []
    for i in range(count):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
        atoms.symbols[i % 4] = "Au"
        atoms.rattle(stdev=0.05, seed=i)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        if weights and i in weights:
            atoms.info["config_weight"] = weights[i]
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return path


def parameters(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.model.named_parameters()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def adam_state(optimizer) -> list[dict]:
    return [
        {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in optimizer.state[p].items()}
        for group in optimizer.param_groups
        for p in group["params"]
    ]


class Watch(L.Callback):
    """Weights (raw) and Adam state before/after every training batch; an optional per-batch action."""

    def __init__(self, before_batch=None):
        self.before_batch = before_batch
        self.steps = []  # (epoch, batch_idx, weights before, weights after, adam before, adam after)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.before_batch is not None:
            self.before_batch(trainer, pl_module, batch, batch_idx)
        self._before = (parameters(pl_module), adam_state(trainer.optimizers[0]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        after = (parameters(pl_module), adam_state(trainer.optimizers[0]))
        self.steps.append((trainer.current_epoch, batch_idx, self._before[0], after[0], self._before[1], after[1]))


def fit(tmp_path, graphs, *, epochs, batch_size=2, callbacks=(), max_bad_steps=5):
    torch.manual_seed(0)
    model = build_tiny_model(SPECIES, num_layers=1)
    module = PotentialModule(
        model, optimizer=lambda params: torch.optim.Adam(params, lr=1e-2), max_bad_steps=max_bad_steps
    )
    loader = torch.utils.data.DataLoader(graphs, batch_size=batch_size, shuffle=False, collate_fn=collate)
    ema = ExponentialMovingAverage(decay=0.9)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="epoch{epoch}", save_last=True)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        num_sanity_val_steps=0,
        callbacks=[*callbacks, ema, checkpoint],
        plugins=[AtomicCheckpointIO()],
    )
    return module, trainer, ema, loader


@pytest.fixture(scope="module")
def frames_file(tmp_path_factory) -> Path:
    return write_frames(tmp_path_factory.mktemp("frames") / "frames.xyz", 8)


def test_a_frame_with_a_non_finite_loss_is_skipped_and_named(tmp_path, frames_file, caplog):
    graphs = read_dataset(frames_file)
    graphs[3].energy = torch.tensor([HUGE_ENERGY], dtype=torch.float64)  # batch 1 holds frames 2 and 3
    watch = Watch()
    module, trainer, ema, loader = fit(tmp_path, graphs, epochs=2, callbacks=[watch])
    with caplog.at_level(logging.WARNING, logger="mpnn_ip.train.lightning_module"):
        trainer.fit(module, train_dataloaders=loader)

    assert trainer.current_epoch == 2 and len(watch.steps) == 8  # the run went on to the end
    for epoch, batch_idx, before, after, adam_before, adam_after in watch.steps:
        if batch_idx == 1:
            assert same(before, after), f"epoch {epoch}: the bad step moved the weights"
            assert all(
                set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
                for a, b in zip(adam_before, adam_after)
            ), "the bad step changed Adam's state"
        else:
            assert not same(before, after), f"epoch {epoch} batch {batch_idx}: a good step did not train"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert all(f"{frames_file}:2, {frames_file}:3" in w and "non-finite loss" in w for w in warnings), warnings
    assert ema.num_updates == 6  # the skipped steps are not averaged in
    assert all(torch.isfinite(v).all() for v in ema.ema.values())
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 1.0  # per epoch
    assert module.bad_steps == 0  # good steps reset the count


def test_consecutive_bad_steps_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, frames_file, caplog):
    graphs = read_dataset(frames_file)
    snapshot = {}

    def poison_second_epoch(trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch >= 1:  # from the second epoch on, every batch has an absurd energy label
            if "last" not in snapshot:
                snapshot["last"] = hashlib.sha256(
                    Path(trainer.checkpoint_callback.last_model_path).read_bytes()
                ).hexdigest()
            batch.energy.fill_(HUGE_ENERGY)

    watch = Watch(before_batch=poison_second_epoch)
    module, trainer, ema, loader = fit(tmp_path, graphs, epochs=3, batch_size=1, callbacks=[watch])
    with (
        caplog.at_level(logging.WARNING, logger="mpnn_ip.train.lightning_module"),
        pytest.raises(TrainingDiverged) as info,
    ):
        trainer.fit(module, train_dataloaders=loader)

    message = str(info.value)
    bad = [s for s in watch.steps if s[0] == 1]
    assert len(bad) == 4 and trainer.global_step == 8 + 4  # the 5th bad step raised before its batch ended
    assert "5 consecutive optimizer steps (steps 8-12, epoch 1)" in message and "max_bad_steps=5" in message
    for frame in range(5):
        assert f"{frames_file}:{frame}" in message
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"The last good checkpoint is kept: {last}" in message
    assert "optim.lr" in message and "dtype=float64" in message and f"ckpt_path={last}" in message
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 5
    # nothing was saved on the way out: last.ckpt is the end-of-epoch-0 one, intact and finite
    assert hashlib.sha256(last.read_bytes()).hexdigest() == snapshot["last"]
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 8
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    for _, _, before, after, _, _ in bad:
        assert same(before, after)


def test_a_non_finite_gradient_with_a_finite_loss_is_skipped_with_adam_untouched(tmp_path, frames_file, caplog):
    graphs = read_dataset(frames_file)
    hooks = []

    def nan_gradient_on_batch_2(trainer, pl_module, batch, batch_idx):
        while hooks:
            hooks.pop().remove()
        if batch_idx == 2:
            first = next(pl_module.model.parameters())
            hooks.append(first.register_hook(lambda grad: grad * math.nan))

    watch = Watch(before_batch=nan_gradient_on_batch_2)
    module, trainer, ema, loader = fit(tmp_path, graphs, epochs=1, callbacks=[watch])
    with caplog.at_level(logging.WARNING, logger="mpnn_ip.train.lightning_module"):
        trainer.fit(module, train_dataloaders=loader)

    _, _, before, after, adam_before, adam_after = watch.steps[2]
    assert same(before, after)
    for a, b in zip(adam_before, adam_after):
        assert int(a["step"]) == int(b["step"]) == 2
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert int(adam_state(trainer.optimizers[0])[0]["step"]) == 3  # the last batch stepped again
    assert not same(*watch.steps[3][2:4])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1
        and "non-finite gradient" in warnings[0]
        and f"{frames_file}:4, {frames_file}:5" in warnings[0]
    )
    assert ema.num_updates == 3
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 1.0


def test_graphs_without_a_source_are_named_by_their_batch_position(tmp_path, frames_file, caplog):
    graphs = read_dataset(frames_file)[:4]
    for graph in graphs:
        del graph.source_path, graph.source_frame
    graphs[1].energy = torch.tensor([HUGE_ENERGY], dtype=torch.float64)
    module, trainer, _, loader = fit(tmp_path, graphs, epochs=1, max_bad_steps=1)
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit(module, train_dataloaders=loader)
    assert "batch 0, graph 0, batch 0, graph 1" in str(info.value)
    assert "No checkpoint of this run had been written yet" in str(info.value)


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path, frames_file):
    graphs = read_dataset(frames_file)[:2]

    class Break(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(math.inf)

    module, trainer, _, loader = fit(tmp_path, graphs, epochs=1, callbacks=[Break()])
    with pytest.raises(TrainingDiverged, match="NaN/inf"):
        trainer.fit(module, train_dataloaders=loader)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_max_bad_steps_must_not_be_negative():
    with pytest.raises(ValueError, match="max_bad_steps"):
        PotentialModule(build_tiny_model(SPECIES), max_bad_steps=-1)


def test_mpnn_train_stops_with_a_one_paragraph_error(tmp_path, monkeypatch, capsys):
    """A frame with an absurd loss weight overflows float32: the run stops, exit code 2, frame named."""
    from test_cli_train import run_until_user_error

    train = write_frames(tmp_path / "train.xyz", 6, weights={4: 1e300})
    val = write_frames(tmp_path / "val.xyz", 2)
    run = tmp_path / "run"
    message = run_until_user_error(
        [
            "model=nequip_tiny",
            "model.num_layers=1",
            "model.num_features=4",
            "data=extxyz",
            f"data.train_path={train}",
            f"data.val_path={val}",
            "data.batch_size=3",
            "data.seed=0",
            "dtype=float32",
            "max_bad_steps=1",
            "logger=csv",
            "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "callbacks.ema=null",
            f"hydra.run.dir={run}",
        ],
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert "training diverged: an optimizer step (step " in message and "max_bad_steps=1" in message
    assert f"{train}:4" in message
    assert "No checkpoint of this run had been written yet" in message
    assert not list(run.glob("checkpoints/*.ckpt"))
    log = (run / "train.log").read_text()  # the warning of the skipped step went to the run's log
    assert "non-finite loss" in log and f"{train}:4" in log
