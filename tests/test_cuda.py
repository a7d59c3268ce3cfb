"""On a CUDA device every model (graph built there by torch-cluster) gives the CPU's answer in float64,
a training step gives the CPU gradients and the calculator runs there. Skipped on machines without CUDA (CI)."""

from __future__ import annotations

import copy

import physics
import pytest
import torch
from conftest import make_molecule, make_small_cell, make_triclinic_crystal
from test_physics import MODEL_NAMES, build_test_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _on(device: str, inputs: dict) -> dict:
    return {key: value.to(device) for key, value in inputs.items()}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_on_cuda_equals_cpu_in_float64(name):
    model_cpu = build_test_model(name)
    model_gpu = copy.deepcopy(model_cpu).to("cuda")
    inputs = physics.model_inputs([make_molecule(), make_triclinic_crystal(), make_small_cell()])
    expected = model_cpu(inputs, compute_forces=True, compute_stress=True)
    actual = model_gpu(_on("cuda", inputs), compute_forces=True, compute_stress=True)
    for key in ("energy", "forces", "stress"):
        assert actual[key].device.type == "cuda"
        torch.testing.assert_close(
            actual[key].cpu(), expected[key].detach(), rtol=1e-9, atol=1e-10, msg=f"{name} {key}"
        )


@pytest.mark.parametrize("name", ["nequip", "mace"])
def test_training_step_on_cuda_in_float32_matches_cpu(name):
    """One loss + backward on both devices: the same gradients to float32 precision."""
    model_cpu = build_test_model(name).to(torch.float32).train()
    model_gpu = copy.deepcopy(model_cpu).to("cuda")
    inputs = physics.model_inputs([make_molecule(), make_triclinic_crystal()])
    grads = []
    for model, batch in ((model_cpu, inputs), (model_gpu, _on("cuda", inputs))):
        out = model(batch, compute_forces=True)
        loss = out["energy"].pow(2).sum() + out["forces"].pow(2).sum()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten().cpu() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=2e-3, atol=1e-4)


def test_calculator_on_cuda(tmp_path):
    from tiny_checkpoint import build_tiny_model, write_checkpoint

    from mpnn_ip import MPNNCalculator

    path = write_checkpoint(build_tiny_model(), tmp_path / "tiny.ckpt")
    atoms = make_small_cell()
    results = []
    for device in ("cpu", "cuda"):
        atoms.calc = MPNNCalculator.from_checkpoint(path, device=device, dtype=torch.float64)
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    for cpu, gpu in zip(*results):
        torch.testing.assert_close(torch.as_tensor(gpu), torch.as_tensor(cpu), rtol=1e-9, atol=1e-10)
