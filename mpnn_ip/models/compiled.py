"""``torch.compile`` of a potential, kept only where it works, equals eager and is faster.

:func:`compile_potential` compiles the model's energy graph (:meth:`Potential.atomic_outputs`;
forces, stress and the training gradients come from autograd through it) with dynamic shapes,
then checks it on one sample: the compiled outputs (for training also the parameter gradients of a
force loss, a double backward) must equal eager's (float64: 1e-10 relative, float32: 1e-4), and the
compiled step must be faster (median of a few repeats). Otherwise the model is left eager and the
returned :class:`CompileDecision` says why, for the caller to log.

``mode``: ``"auto"`` (the default of ``mpnn-train``, ``mpnn-md`` and the calculator) tries on CUDA,
and on the CPU only for inference on structures of at least :data:`AUTO_CPU_MIN_ATOMS` atoms, where
the try (a slow compilation on the CPU) is repaid over an MD run; a model that is not
faster compiled stays eager by the check (measurements: docs/performance.md, "Why the defaults are
what they are", torch.compile decision). Training on the CPU
stays eager without trying: AOTAutograd does not differentiate a compiled backward ("does not
currently support double backward"), which the force loss needs. ``True``/``"true"`` tries in
every case; ``False``/``"false"`` stays eager.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

MODES = ("auto", "true", "false")
#: ``compile="auto"`` on the CPU tries inference on structures (batches) of at least this many atoms
AUTO_CPU_MIN_ATOMS = 1000
#: tolerance of the compiled-vs-eager check per dtype, relative to each value and to the largest
#: magnitude of its output (reductions reordered by the compiler round differently)
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


@dataclass
class CompileDecision:
    """Whether the model runs compiled, why, and the measured seconds per checked step."""

    compiled: bool
    reason: str
    eager_seconds: float | None = None
    compiled_seconds: float | None = None

    def __str__(self) -> str:
        return f"torch.compile: {'on' if self.compiled else 'off (eager)'}: {self.reason}"


def normalize_mode(mode: Any) -> str:
    """``"auto" | "true" | "false"`` from a bool, None (auto) or one of those strings (any case)."""
    if mode is None:
        return "auto"
    if isinstance(mode, bool):
        return "true" if mode else "false"
    text = str(mode).strip().lower()
    if text not in MODES:
        raise ValueError(f"compile must be one of auto, true, false; got {mode!r}")
    return text


def is_compiled(model: torch.nn.Module) -> bool:
    """Whether :func:`compile_potential` left ``model`` compiled."""
    return "atomic_outputs" in vars(model)


def uncompile(model: torch.nn.Module) -> None:
    """Back to the eager :meth:`atomic_outputs` (no-op when not compiled)."""
    vars(model).pop("atomic_outputs", None)


def compile_potential(
    model: torch.nn.Module,
    inputs: Any,
    mode: Any = "auto",
    training: bool = False,
    compute_stress: bool = False,
    backend: str | Callable = "inductor",
    repeats: int = 3,
    min_speedup: float = 1.0,
) -> CompileDecision:
    """Compile ``model`` in place if it works on ``inputs``, equals eager and is ``min_speedup`` x faster.

    Args:
        model: a :class:`~mpnn_ip.models.base.Potential`, on the device and in the dtype it will run in.
        inputs: one sample batch as the model takes it (an ``AtomicGraph`` batch or the inputs dict).
        mode: see the module docstring.
        training: check the training step (forces kept differentiable, force-loss backward) instead of inference.
        compute_stress: include the stress in the check (as the run will ask for it).
        backend: ``torch.compile``'s backend.
        repeats: timed steps of each variant after one warm-up (compilation) step.
        min_speedup: eager seconds / compiled seconds needed to keep the compiled model.
    Returns: the decision; ``model`` is compiled only when ``decision.compiled``. Parameters and their
    gradients are as before the call (no optimizer step is taken; gradients are reset to None).
    """
    mode = normalize_mode(mode)
    uncompile(model)
    if mode == "false":
        return CompileDecision(False, "compile=false")
    if not callable(getattr(type(model), "atomic_outputs", None)):
        return CompileDecision(False, f"{type(model).__name__} has no atomic_outputs to compile (not a Potential)")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if mode == "auto" and device.type != "cuda":
        if training:
            return CompileDecision(
                False,
                f"compile=auto trains eager on {device.type} (a compiled double backward is not supported; compile=true to try)",
            )
        n_atoms = int(inputs["pos"].shape[0])
        if n_atoms < AUTO_CPU_MIN_ATOMS:
            return CompileDecision(
                False,
                f"compile=auto stays eager on {device.type} below {AUTO_CPU_MIN_ATOMS} atoms ({n_atoms}: compiling would not pay; compile=true to try)",
            )
    was_training = model.training
    model.train(training)
    try:
        return _compile_and_check(
            model, inputs, training, compute_stress, backend, max(1, int(repeats)), float(min_speedup)
        )
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)


def _compile_and_check(model, inputs, training, compute_stress, backend, repeats, min_speedup) -> CompileDecision:
    reference, eager_seconds = _timed(model, inputs, training, compute_stress, repeats)
    import torch._dynamo

    # torch >= 2.6 traces Python floats (cutoff exponents, scales) as symbolic inputs with
    # dynamic=True, which inductor then fails to lower; specialise them as constants
    torch._dynamo.config.specialize_float = True
    model.atomic_outputs = torch.compile(type(model).atomic_outputs.__get__(model), dynamic=True, backend=backend)
    try:
        compiled, compiled_seconds = _timed(model, inputs, training, compute_stress, repeats)
    except Exception as error:  # noqa: BLE001 - any failure of the compiler means: run eager
        uncompile(model)
        return CompileDecision(False, f"the compiled step failed ({_first_line(error)})", eager_seconds)
    mismatch = _mismatch(compiled, reference)
    if mismatch:
        uncompile(model)
        return CompileDecision(
            False, f"compiled results differ from eager ({mismatch})", eager_seconds, compiled_seconds
        )
    speedup = eager_seconds / max(compiled_seconds, 1e-12)
    timing = f"{compiled_seconds * 1e3:.1f} ms compiled vs {eager_seconds * 1e3:.1f} ms eager per step"
    if speedup < min_speedup:
        uncompile(model)
        return CompileDecision(False, f"not faster ({timing})", eager_seconds, compiled_seconds)
    return CompileDecision(
        True, f"equal to eager and {speedup:.2f}x faster ({timing})", eager_seconds, compiled_seconds
    )


def _timed(model, inputs, training, compute_stress, repeats) -> tuple[dict[str, torch.Tensor], float]:
    """Results of the checked step (after one warm-up step) and its median seconds over ``repeats``."""
    results = _step(model, inputs, training, compute_stress)
    seconds = []
    for _ in range(repeats):
        _synchronize(results)
        start = time.perf_counter()
        results = _step(model, inputs, training, compute_stress)
        _synchronize(results)
        seconds.append(time.perf_counter() - start)
    return results, statistics.median(seconds)


def _step(model, inputs, training, compute_stress) -> dict[str, torch.Tensor]:
    """Energy, forces (and stress); for training also the gradients of a force loss (double backward)."""
    out = model(inputs, compute_forces=True, compute_stress=compute_stress)
    keys = ["energy", "forces"] + (["stress"] if compute_stress else [])
    results = {key: out[key].detach().clone() for key in keys}
    if training:
        model.zero_grad(set_to_none=True)
        loss = sum(out[key].square().sum() for key in keys)
        loss.backward()
        for name, parameter in model.named_parameters():
            if parameter.grad is not None:
                results[f"grad {name}"] = parameter.grad.detach().clone()
        model.zero_grad(set_to_none=True)
    return results


def _mismatch(compiled: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> str:
    """'' when every reference value is matched within :data:`TOLERANCE`, else what differs."""
    if compiled.keys() != reference.keys():
        return f"outputs {sorted(set(compiled) ^ set(reference))} missing on one side"
    for key, expected in reference.items():
        value = compiled[key]
        rtol = TOLERANCE.get(expected.dtype, 1e-4)
        atol = rtol * (float(expected.abs().max()) if expected.numel() else 0.0)
        if value.shape != expected.shape or not torch.allclose(value, expected, rtol=rtol, atol=atol):
            worst = float((value - expected).abs().max()) if value.shape == expected.shape else float("nan")
            return f"{key}: max |difference| {worst:.3g}, tolerance {rtol:g} relative"
    return ""


def _synchronize(results: Mapping[str, torch.Tensor]) -> None:
    tensor = next(iter(results.values()))
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    message = text[0] if text else ""
    return f"{type(error).__name__}: {message[:300]}"
