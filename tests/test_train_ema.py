"""EMA callback: the average follows the decay, validation sees EMA weights, training the raw ones,
checkpoints store the EMA weights, and the callback state restores both exactly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("lightning")

from lightning.pytorch.trainer.states import TrainerFn  # noqa: E402

from mpnn_ip.train.ema import ExponentialMovingAverage  # noqa: E402


def _module():
    torch.manual_seed(0)
    return SimpleNamespace(model=torch.nn.Linear(3, 2))


def _trainer(step=0):
    return SimpleNamespace(global_step=step, state=SimpleNamespace(fn=TrainerFn.FITTING))


def _step(ema, trainer, module, new_weight):
    with torch.no_grad():
        module.model.weight.fill_(new_weight)
    trainer.global_step += 1
    ema.on_train_batch_end(trainer, module, None, None, 0)


def test_ema_follows_the_decay():
    module, trainer = _module(), _trainer()
    ema = ExponentialMovingAverage(decay=0.9, use_num_updates=False)
    ema.setup(trainer, module, "fit")
    with torch.no_grad():
        module.model.weight.fill_(0.0)
    ema.on_fit_start(trainer, module)
    _step(ema, trainer, module, 1.0)
    _step(ema, trainer, module, 1.0)
    expected = 1.0 - 0.9**2
    assert torch.allclose(ema.ema["weight"], torch.full_like(ema.ema["weight"], expected))


def test_validation_uses_ema_and_training_resumes_with_raw_weights():
    module, trainer = _module(), _trainer()
    ema = ExponentialMovingAverage(decay=0.5, use_num_updates=False)
    ema.setup(trainer, module, "fit")
    with torch.no_grad():
        module.model.weight.fill_(0.0)
    ema.on_fit_start(trainer, module)
    _step(ema, trainer, module, 2.0)
    ema.on_validation_start(trainer, module)
    assert torch.allclose(module.model.weight, torch.full_like(module.model.weight, 1.0))
    checkpoint = {"state_dict": {"model.weight": module.model.weight.clone(), "model.bias": module.model.bias.clone()}}
    ema.on_save_checkpoint(trainer, module, checkpoint)
    state = ema.state_dict()
    ema.on_validation_end(trainer, module)
    assert torch.allclose(module.model.weight, torch.full_like(module.model.weight, 2.0))
    assert torch.equal(checkpoint["state_dict"]["model.weight"], state["ema"]["weight"])
    assert torch.allclose(state["raw"]["weight"], torch.full_like(state["raw"]["weight"], 2.0))

    # resume: the module is loaded with the EMA weights, the callback puts the raw ones back
    resumed_module, resumed_trainer = _module(), _trainer(step=1)
    resumed_module.model.load_state_dict({k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()})
    resumed = ExponentialMovingAverage(decay=0.5, use_num_updates=False)
    resumed.setup(resumed_trainer, resumed_module, "fit")
    resumed.load_state_dict(state)
    resumed.on_fit_start(resumed_trainer, resumed_module)
    assert torch.allclose(resumed_module.model.weight, torch.full_like(resumed_module.model.weight, 2.0))
    assert torch.equal(resumed.ema["weight"], state["ema"]["weight"])
    assert resumed.num_updates == 1


def test_model_holds_ema_weights_after_fit():
    module, trainer = _module(), _trainer()
    ema = ExponentialMovingAverage(decay=0.5, use_num_updates=False)
    ema.setup(trainer, module, "fit")
    with torch.no_grad():
        module.model.weight.fill_(0.0)
    ema.on_fit_start(trainer, module)
    _step(ema, trainer, module, 4.0)
    ema.on_fit_end(trainer, module)
    assert torch.allclose(module.model.weight, torch.full_like(module.model.weight, 2.0))


def test_decay_warms_up_with_the_number_of_updates():
    ema = ExponentialMovingAverage(decay=0.999, use_num_updates=True)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.num_updates = 10_000
    assert ema.current_decay() == pytest.approx(0.999)


def test_invalid_decay_is_rejected():
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage(decay=1.5)
