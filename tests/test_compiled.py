"""torch.compile kept only where it works, equals eager and is faster (mpnn_ip.models.compiled).

The decisions are tested with stand-in compilers (fast); a ``slow`` test compiles small NequIP and
MACE models for real (``aot_eager``: dynamo and AOTAutograd, no code generation) and checks float64
equality.
"""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk
from test_physics import build_test_model

from mpnn_ip.calculators import MPNNCalculator
from mpnn_ip.data import AtomicGraph, collate, to_inputs
from mpnn_ip.models.compiled import compile_potential, is_compiled, normalize_mode, uncompile
from mpnn_ip.train.lightning_module import PotentialModule


def _copper():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=3)
    return atoms


def _inputs(atoms=None):
    return to_inputs(collate([AtomicGraph.from_atoms(atoms if atoms is not None else _copper())]))


def _forces(model, inputs):
    return model(inputs, compute_forces=True)["forces"].detach()


@pytest.fixture
def no_compiler(monkeypatch):
    """torch.compile that must not be called."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.compile was called")

    monkeypatch.setattr(torch, "compile", refuse)


def _stand_in_compiler(monkeypatch, make):
    """torch.compile replaced by ``make(fn) -> compiled fn``; returns the list of compiled functions."""
    compiled = []

    def fake_compile(fn, **kwargs):
        compiled.append(kwargs)
        return make(fn)

    monkeypatch.setattr(torch, "compile", fake_compile)
    return compiled


def _failing(message: str):
    """A stand-in compiler whose compiled function raises ``RuntimeError(message)``."""

    def make(fn):
        def broken(*args, **kwargs):
            raise RuntimeError(message)

        return broken

    return make


def test_modes_are_normalized_and_unknown_ones_refused():
    assert [normalize_mode(m) for m in (None, True, False, "AUTO", " true ", "false")] == [
        "auto",
        "true",
        "false",
        "auto",
        "true",
        "false",
    ]
    with pytest.raises(ValueError, match="compile must be one of auto, true, false"):
        normalize_mode("maybe")


@pytest.mark.parametrize(
    "mode, training, reason",
    [
        ("auto", False, "stays eager on cpu below 1000 atoms (8:"),
        ("auto", True, "trains eager on cpu"),
        (False, False, "compile=false"),
    ],
)
def test_auto_on_cpu_for_small_structures_or_training_and_false_stay_eager_without_compiling(
    mode, training, reason, no_compiler
):
    model = build_test_model("nequip")
    decision = compile_potential(model, _inputs(), mode, training=training)
    assert not decision.compiled and not is_compiled(model)
    assert reason in decision.reason


def test_auto_on_cpu_tries_inference_on_large_structures(monkeypatch):
    import mpnn_ip.models.compiled as compiled

    monkeypatch.setattr(compiled, "AUTO_CPU_MIN_ATOMS", 8)
    calls = _stand_in_compiler(monkeypatch, lambda fn: fn)
    decision = compile_potential(build_test_model("nequip"), _inputs(), "auto", min_speedup=0.0)
    assert decision.compiled and len(calls) == 1


def test_a_failing_compiler_leaves_the_model_eager_with_the_reason(monkeypatch):
    model = build_test_model("nequip")
    inputs = _inputs()
    expected = _forces(model, inputs)
    calls = _stand_in_compiler(monkeypatch, _failing("double backward is not supported\nsecond line"))
    decision = compile_potential(model, inputs, True, training=True)
    assert calls == [{"dynamic": True, "backend": "inductor"}]
    assert not decision.compiled and not is_compiled(model)
    assert decision.reason == "the compiled step failed (RuntimeError: double backward is not supported)"
    assert str(decision).startswith("torch.compile: off (eager):")
    assert not model.training and all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(_forces(model, inputs), expected, rtol=0, atol=0)


def test_a_compiled_model_that_differs_from_eager_is_refused(monkeypatch):
    def make(fn):
        def off(graph):
            out = fn(graph)
            return {**out, "node_energy": out["node_energy"] * (1 + 1e-6)}

        return off

    model = build_test_model("mace")
    _stand_in_compiler(monkeypatch, make)
    decision = compile_potential(model, _inputs(), True)
    assert not decision.compiled and not is_compiled(model)
    assert decision.reason.startswith("compiled results differ from eager (energy: max |difference|")


def test_an_equal_compiled_model_is_kept_only_when_fast_enough(monkeypatch):
    _stand_in_compiler(monkeypatch, lambda fn: fn)
    model = build_test_model("nequip")
    inputs = _inputs()
    decision = compile_potential(model, inputs, True, training=True, min_speedup=1e6)
    assert not decision.compiled and decision.reason.startswith("not faster (")
    assert decision.eager_seconds > 0 and decision.compiled_seconds > 0
    decision = compile_potential(model, inputs, True, training=True, min_speedup=0.0)
    assert decision.compiled and is_compiled(model) and "equal to eager" in decision.reason
    uncompile(model)
    assert not is_compiled(model)


def test_calculator_warns_when_compile_true_falls_back_and_gives_eager_results(monkeypatch):
    model = build_test_model("nequip")
    atoms = _copper()
    atoms.calc = MPNNCalculator(model, compile=False)
    expected = atoms.get_forces().copy()
    _stand_in_compiler(monkeypatch, _failing("no compiler here"))
    atoms = _copper()
    atoms.calc = MPNNCalculator(model, compile=True)
    with pytest.warns(RuntimeWarning, match=r"compile=True\): torch.compile: off \(eager\): the compiled step failed"):
        forces = atoms.get_forces()
    assert forces == pytest.approx(expected, abs=1e-12)
    assert not atoms.calc.compile_decision.compiled


def test_training_module_decides_on_its_first_batch_and_prints_the_outcome(monkeypatch, capsys):
    _stand_in_compiler(monkeypatch, _failing("backward of a compiled graph cannot be differentiated"))
    task = PotentialModule(build_test_model("nequip"), compile=True)
    batch = collate([AtomicGraph.from_atoms(_copper())])
    task._decide_compile(batch)
    assert not task.compile_decision.compiled
    assert (
        "torch.compile: off (eager): the compiled step failed (RuntimeError: backward of a compiled graph"
        in capsys.readouterr().out
    )
    assert PotentialModule(build_test_model("nequip")).compile_mode == "false"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nequip", "mace"])
def test_real_compile_equals_eager_in_float64(name):
    """dynamo + AOTAutograd (backend aot_eager): energy, forces and stress equal eager's to 1e-10,
    on another structure than the one the decision was taken on (dynamic shapes, no recompilation needed)."""
    model = build_test_model(name)
    inputs = _inputs()
    expected = model(inputs, compute_forces=True, compute_stress=True)
    decision = compile_potential(
        model, inputs, True, compute_stress=True, backend="aot_eager", repeats=1, min_speedup=0.0
    )
    try:
        assert decision.compiled, decision.reason
        moved = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 1))  # another size: 16 atoms, not 8
        moved.rattle(0.03, seed=7)
        other = _inputs(moved)
        out = model(other, compute_forces=True, compute_stress=True)
        uncompile(model)
        eager = model(other, compute_forces=True, compute_stress=True)
        for key in ("energy", "forces", "stress"):
            torch.testing.assert_close(out[key], eager[key], rtol=1e-10, atol=1e-12)
        assert not torch.equal(eager["energy"], expected["energy"])
    finally:
        uncompile(model)
