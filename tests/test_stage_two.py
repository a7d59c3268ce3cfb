"""Second training stage (``loss.stage_two``): switches at the right epoch or step, changes the energy
weight and the learning rate, restarts the plateau scheduler and the best checkpoint, and resumes in its stage."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from ase.calculators.emt import EMT
from torch.utils.data import DataLoader

from mpnn_ip.data import AtomicGraph, collate
from mpnn_ip.data.synthetic import make_dataset
from mpnn_ip.errors import ConfigError
from mpnn_ip.models.schnet import SchNet
from mpnn_ip.train import PotentialModule

STAGE_TWO = {"start_fraction": 0.5, "energy_weight": 50.0, "lr": 2e-4}


@functools.lru_cache(maxsize=1)
def _graphs():
    frames = make_dataset(8, seed=1)
    for atoms in frames:
        atoms.calc = atoms.calc or EMT()
    return [AtomicGraph.from_atoms(a, energy=a.get_potential_energy(), forces=a.get_forces()) for a in frames]


class Recorder(L.Callback):
    """(epoch, global step, energy weight, lr) after every training batch."""

    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        weight = pl_module.loss_fn.terms["energy"].weight
        self.rows.append((trainer.current_epoch, trainer.global_step - 1, weight, lr))


def _task(stage_two=STAGE_TWO):
    torch.manual_seed(0)
    model = SchNet(["Cu", "Au"], r_max=4.0, num_features=8, num_interactions=1, num_gaussians=8, num_filters=8).double()
    loss = {"energy": {"weight": 1.0}, "forces": {"weight": 10.0}, "stage_two": stage_two}
    return PotentialModule(
        model,
        loss=loss,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, factor=0.5, patience=0),
    )


def _fit(task, tmp_path, ckpt_path=None, **trainer_kwargs):
    recorder = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        callbacks=[
            recorder,
            L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/loss", save_last=True),
        ],
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    loader = DataLoader(_graphs(), batch_size=4, collate_fn=collate)  # 2 steps per epoch
    trainer.fit(task, loader, DataLoader(_graphs()[:4], batch_size=4, collate_fn=collate), ckpt_path=ckpt_path)
    return trainer, recorder.rows


def test_stage_two_switches_at_the_epoch_ceil_of_the_fraction_of_max_epochs(tmp_path):
    trainer, rows = _fit(_task(), tmp_path, max_epochs=5)  # ceil(0.5 * 5) = epoch 3
    for epoch, _step, weight, lr in rows:
        if epoch < 3:
            assert weight == 1.0 and lr != STAGE_TWO["lr"]
        else:
            assert weight == 50.0
    assert [lr for epoch, _s, _w, lr in rows if epoch == 3][0] == STAGE_TWO["lr"]
    stage_two = task_stage(trainer)
    assert stage_two.switched_at == (3, 6)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.num_bad_epochs <= 1  # restarted at the switch (patience 0 would otherwise have counted on)


def task_stage(trainer):
    return trainer.lightning_module.stage_two


def test_stage_two_switches_at_the_step_ceil_of_the_fraction_of_max_steps(tmp_path):
    task = _task({**STAGE_TWO, "start_fraction": 0.6})
    trainer, rows = _fit(task, tmp_path, max_steps=7, max_epochs=-1)  # ceil(0.6 * 7) = step 5
    assert [(step, weight) for _e, step, weight, _lr in rows] == [(s, 1.0 if s < 5 else 50.0) for s in range(7)]
    assert task.stage_two.switched_at == (2, 5)


def test_stage_two_without_a_bound_on_training_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="max_epochs, trainer.max_steps or trainer.max_time"):
        _fit(_task(), tmp_path, max_epochs=-1, max_steps=-1)


def test_unknown_stage_two_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="energy_weigth"):
        _task({"start_fraction": 0.5, "energy_weigth": 10.0, "lr": 1e-3})


def test_a_run_resumed_in_stage_two_keeps_its_weight_and_lr(tmp_path):
    _fit(_task(), tmp_path, max_epochs=4)  # switched at epoch 2
    resumed = _task()
    trainer, rows = _fit(resumed, tmp_path, ckpt_path=str(tmp_path / "last.ckpt"), max_epochs=5)
    assert resumed.stage_two.switched_at == (2, 4)
    assert rows and all(weight == 50.0 for _e, _s, weight, _lr in rows)
    assert rows[0][3] <= STAGE_TWO["lr"]


def test_one_stage_when_stage_two_is_null(tmp_path):
    task = _task(None)
    _trainer, rows = _fit(task, tmp_path, max_epochs=2)
    assert task.stage_two is None and {weight for _e, _s, weight, _lr in rows} == {1.0}
