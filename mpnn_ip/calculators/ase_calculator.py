"""ASE calculator around a trained :class:`mpnn_ip.models.Potential`.

Example::

    from mpnn_ip import MPNNCalculator
    atoms.calc = MPNNCalculator.from_checkpoint("outputs/run/checkpoints/last.ckpt", device="cuda")
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mpnn_ip.calculators.evaluator import StructureEvaluator
from mpnn_ip.calculators.results import ase_result_names, check_keywords, check_stress_possible, energy_forces_stress
from mpnn_ip.calculators.results import to_numpy as _numpy
from mpnn_ip.checkpoint import load_model
from mpnn_ip.graph.verlet import VerletList
from mpnn_ip.models.committee import Committee
from mpnn_ip.models.compiled import CompileDecision

SOURCE = "the ASE Atoms given to MPNNCalculator"
#: the keywords that go to :class:`~mpnn_ip.calculators.evaluator.StructureEvaluator` (its defaults hold)
EVALUATOR_OPTIONS = ("device", "dtype", "skin", "compile", "head", "dispersion", "info_keys")


class MPNNCalculator(Calculator):
    """ASE calculator: energy, free_energy (eV), energies (eV per atom), forces (eV/Å), stress.

    ``stress`` (eV/Å³, Voigt ``xx, yy, zz, yz, xz, xy``, ASE sign: positive = tensile) is computed
    only when asked for, and only for structures with a periodic direction and a cell of non-zero
    volume; for a molecule it raises ASE's ``PropertyNotImplementedError`` (like ASE's own EMT).
    ``stresses`` (per atom, eV/Å³, Voigt ``[N, 6]``, same conditions) are the atomic virials
    (``Potential.forward(compute_atomic_virial=True)``) divided by ``-volume``: their sum is
    ``stress``, as ASE's ``Atoms.get_stresses`` expects.
    ``charges`` (e, per atom) and ``dipole`` (e·Å) are results of models with latent charges
    (``model.long_range=les``; ``atoms.get_charges()``, ``atoms.get_dipole_moment()``); other models
    do not give them (ASE's ``PropertyNotImplementedError``).
    The frame's total charge (e) and spin multiplicity (2S+1) are read from ``atoms.info["charge"]`` and
    ``atoms.info["spin"]`` (other keys: ``info_keys``); without them the structure is neutral / a singlet.
    Changing them in ``atoms.info`` is a change of the structure (the model runs again).
    The extra outputs the model declares (``Potential.extra_outputs``, e.g. ``energy_uncertainty``
    of a Gaussian-process model) are implemented properties too, under their own names: per-frame
    ones as floats (arrays when they have more axes), per-atom ones as arrays.

    A committee (a list of models, or :meth:`from_checkpoints`) runs as one
    :class:`mpnn_ip.models.committee.Committee`: energy, forces, stress... are the members' mean, and
    ``energy_uncertainty`` (eV), ``forces_uncertainty`` ([N], eV/Å), ``energy_committee`` ([M], eV)
    and ``forces_committee`` ([N, M, 3], eV/Å) are properties (definitions in ``Committee``).

    Args:
        model: the potential (e.g. from :func:`mpnn_ip.load_model`), or a list of them (a committee,
            see above); put in eval mode.
        **options: how it runs (below, defaults those of
            :class:`~mpnn_ip.calculators.evaluator.StructureEvaluator`) and ASE's ``Calculator`` keywords
            (``label``, ``directory`` ...); any other keyword is a ``ConfigError`` listing the known ones.

    Keyword Args:
        device: move the model there (``"cpu"``, ``"cuda"``); ``None`` = leave it where it is.
        dtype: ``"float32"`` or ``"float64"`` converts the model; ``None`` keeps its dtype.
        skin: Å, Verlet skin of the neighbour list (:class:`mpnn_ip.graph.verlet.VerletList`): the
            radius graph is searched at ``r_max + skin`` and reused, filtered to ``r_max``, until some
            atom has moved more than ``skin / 2`` since the search or the cell changed. ``0`` (default)
            searches at every call. Results do not depend on it; MD runs faster with ``skin=1.0``.
            ``neighbor_list.builds`` / ``neighbor_list.calls`` count the searches.
        compile: ``"auto"`` (default), ``True`` or ``False``: ``torch.compile`` of the model, checked
            on the first structure (equal to eager and faster, else eager with the reason; see
            :mod:`mpnn_ip.models.compiled`). ``auto`` tries on CUDA, and on the CPU for structures of at
            least 1,000 atoms (where the compile time is repaid over an MD run; measurements:
            docs/performance.md, "Why the defaults are what they are", torch.compile decision);
            ``compile_decision`` holds the outcome after the first call, and a ``compile=True`` that
            falls back warns.
        head: the head of a model with several heads (:mod:`mpnn_ip.models.heads`) to compute with, by
            name; ``None`` = its default head (the first; for a multi-head fine-tuned model, the new
            head). An unknown name is a ``ConfigError`` listing the model's heads.
        dispersion: ``"d3bj:<functional>"`` (e.g. ``"d3bj:pbe"``) adds DFT-D3(BJ) dispersion
            (:mod:`mpnn_ip.nn.dispersion`; pairs within 40 bohr) to every result (energy, energies,
            forces, stress, stresses) of a model trained without it; ``None`` (default) = none.
        info_keys: ``{input: key}`` of the frame inputs in ``atoms.info`` under other keys than ``charge`` and
            ``spin``, e.g. ``{"charge": "total_charge", "spin": "multiplicity"}``.

    Elements the model was not trained on raise :class:`mpnn_ip.errors.DataError`.
    """

    #: the ASE results of the output table (:func:`~mpnn_ip.calculators.results.ase_result_names`: ``energy``,
    #: ``free_energy``, ``energies``, ``forces``, ``stress``, ``charges``, ``dipole``) and ``stresses``; an
    #: instance adds the results of labels registered since and the model's extra outputs
    implemented_properties = [*ase_result_names(), "stresses"]

    def __init__(self, model: torch.nn.Module | Sequence[torch.nn.Module], **options):
        evaluator_options = {key: options.pop(key) for key in EVALUATOR_OPTIONS if key in options}
        check_keywords(type(self).__name__, options, ("model", *EVALUATOR_OPTIONS))
        super().__init__(**options)
        #: the shared evaluation path (model, Verlet list, compile decision)
        self.evaluator = StructureEvaluator(model, **evaluator_options, source=SOURCE, name=type(self).__name__)
        self.extra_outputs = self.evaluator.extra_outputs
        self.implemented_properties = list(
            dict.fromkeys([*type(self).implemented_properties, *ase_result_names(), *self.extra_outputs])
        )

    @property
    def model(self) -> torch.nn.Module:
        """The potential (or :class:`~mpnn_ip.models.committee.Committee`), in eval mode."""
        return self.evaluator.model

    @property
    def neighbor_list(self) -> VerletList | None:
        """The Verlet list (``builds``/``calls`` count the searches); None for a model without r_max."""
        return self.evaluator.neighbor_list

    @property
    def compile_decision(self) -> CompileDecision | None:
        """The :class:`~mpnn_ip.models.compiled.CompileDecision` of the first call (None before it)."""
        return self.evaluator.compile_decision

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype=None, **kwargs
    ) -> MPNNCalculator:
        """Calculator for the model of checkpoint ``path`` (see :func:`mpnn_ip.load_model`); ``kwargs``
        (e.g. ``skin=1.0``, ``head="pbe"``) go to the constructor."""
        return cls(load_model(path, device=device, dtype=dtype), **kwargs)

    @classmethod
    def from_exported(cls, path: str | Path, **kwargs):
        """Calculator for a ``.pt2`` written by ``mpnn-export``: an
        :class:`~mpnn_ip.calculators.exported.ExportedCalculator` (no model code; ``kwargs``, e.g.
        ``device``, go to its constructor)."""
        from mpnn_ip.calculators.exported import ExportedCalculator

        return ExportedCalculator(path, **kwargs)

    @classmethod
    def from_checkpoints(
        cls, paths: Sequence[str | Path], device: str | torch.device = "cpu", dtype=None, **kwargs
    ) -> MPNNCalculator:
        """Calculator for the committee of the models of checkpoints ``paths`` (at least two, with the
        same species, r_max and dtype; else a ``ConfigError`` naming the files); ``kwargs`` as for
        :meth:`from_checkpoint`."""
        return cls(Committee([load_model(path, device=device, dtype=dtype) for path in paths]), **kwargs)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (inputs are moved there)."""
        return self.evaluator.device

    def check_state(self, atoms, tol: float = 1e-15) -> list[str]:
        """ASE's changes since the last calculation, plus ``info`` when the frame inputs in ``atoms.info``
        (total charge, spin) changed: ASE compares positions, numbers, cell and pbc only."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and not _same_values(
            self.evaluator.frame_inputs(self.atoms), self.evaluator.frame_inputs(atoms)
        ):
            changes.append("info")
        return changes

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        """Run the model on ``atoms``; fills ``self.results`` (ASE units: eV, Å)."""
        properties = list(properties or ["energy"])
        super().calculate(atoms, properties, system_changes)
        want_stresses = "stresses" in properties
        want_stress = "stress" in properties or want_stresses
        if want_stress:
            check_stress_possible(self.atoms)
        if self.evaluator.can_move and set(system_changes) <= {"positions"}:
            self.evaluator.move(self.atoms.positions)  # an MD or relaxation step: light checks
        else:
            self.evaluator.set_structure(self.atoms)  # a new structure: every check of AtomicGraph.from_atoms
        out = self.evaluator.evaluate(stress=want_stress, atomic_virial=want_stresses)

        self.results = energy_forces_stress(out, want_stress)
        if want_stresses:
            self.results["stresses"] = full_3x3_to_voigt_6_stress(
                -_numpy(out["atomic_virial"]) / self.atoms.get_volume()
            )
        for key, (per, _) in self.extra_outputs.items():
            value = _numpy(out[key])
            self.results[key] = (float(value[0]) if value.ndim == 1 else value[0]) if per == "frame" else value


def _same_values(first: dict, second: dict) -> bool:
    """Whether two ``{name: value}`` of frame inputs hold the same names and equal values."""
    return first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)
