"""ASE calculator around a model exported by ``mpnn-export`` (:mod:`mpnn_ip.export`): no model code needed.

Example::

    from mpnn_ip.calculators.exported import ExportedCalculator
    atoms.calc = ExportedCalculator("model.pt2")          # or MPNNCalculator.from_exported("model.pt2")
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

The calculator needs torch, ASE and numpy only: it imports none of the model classes and no
torch-cluster; the neighbour list is ASE's (:func:`ase.neighborlist.neighbor_list`, the same
``(i, j, shift)`` set that the models' own radius graph finds).

The terms of :mod:`mpnn_ip.models.long_range` whose shapes depend on the data are not in the file; the
metadata names them and :class:`ExportedModel` adds them in eager torch, in the file's dtype:

- ``charge_spin_embedding``: the file takes the frames' total charge and multiplicity (inputs ``charge``,
  ``spin`` [B]; ``atoms.info["charge"]``, ``atoms.info["spin"]``, default 0 and 1); latent charges take the
  total charge (their sum).
- ``dispersion`` (``"d3bj:<functional>"``): the D3(BJ) energies, forces and stress of
  :class:`~mpnn_ip.nn.dispersion.D3Dispersion` on its pairs from ASE's neighbour list at its cutoff (40 bohr).
- ``long_range="les"``: the file takes ``charge_potential`` [N] (eV/e) and returns the latent ``charges``;
  the Coulomb energy of the charges is :class:`~mpnn_ip.nn.coulomb.GaussianCoulomb`'s, and the file runs
  twice (:meth:`ExportedModel.__call__` derives why the forces are then exact). Latent-charge options whose
  Ewald splitting is wider than ``sigma`` search real-space pairs with torch-cluster.
"""

from __future__ import annotations

import inspect
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.neighborlist import neighbor_list

from mpnn_ip.calculators.results import check_keywords, check_stress_possible, energy_forces_stress
from mpnn_ip.cpu_allocator import keep_tensor_buffers_in_heap
from mpnn_ip.errors import ConfigError, DataError
from mpnn_ip.outputs import INPUTS

#: Structure inputs of an exported model, first and in this order (shapes: N atoms, B frames, E edges).
EXPORTED_INPUTS = ("pos", "atomic_numbers", "cell", "pbc", "batch", "edge_index", "cell_shifts")
#: Frame inputs ([B] each, the file's dtype) a file may take after the structure: total charge (e), multiplicity.
FRAME_INPUTS = ("charge", "spin")
#: Last input of a model with latent charges: ``[N]`` eV/e, the derivative of the Coulomb energy by each charge.
CHARGE_POTENTIAL = "charge_potential"
#: Outputs of an exported model, in order (a model with latent charges returns ``charges`` [N] e after them).
EXPORTED_OUTPUTS = ("energy", "node_energy", "forces", "stress")
#: Name of the metadata entry: an AOTInductor package's metadata key, an exported program's extra file.
METADATA_NAME = "mpnn_ip.json"
#: Names of the D3 pairs among the inputs (those of :meth:`mpnn_ip.models.Potential.graph`).
DISPERSION_PAIRS = ("dispersion_edge_index", "dispersion_cell_shifts")


def exported_signature(charge_spin: bool, latent_charges: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(input names, output names)`` of the file of a model with or without the charge/spin embedding (which
    reads ``charge`` and ``spin``) and latent charges (which read ``charge``, their sum, and take
    ``charge_potential``); recorded in the file's metadata as ``inputs`` and ``outputs``."""
    frame = ("charge",) if charge_spin or latent_charges else ()
    frame += ("spin",) if charge_spin else ()
    inputs = EXPORTED_INPUTS + frame + ((CHARGE_POTENTIAL,) if latent_charges else ())
    return inputs, EXPORTED_OUTPUTS + (("charges",) if latent_charges else ())


def structure_inputs(
    structures: Sequence,
    r_max: float,
    dtype: torch.dtype,
    device="cpu",
    frame_inputs: Sequence[str] = (),
    dispersion_cutoff: float | None = None,
) -> dict[str, torch.Tensor]:
    """Exported-model inputs of ASE ``Atoms`` (one batch of frames, edges from ASE's neighbour list).

    Returns (N atoms, B frames, E edges): ``pos [N, 3]`` Å (``dtype``), ``atomic_numbers [N]``
    int64, ``cell [B, 3, 3]`` Å (rows are lattice vectors; zeros for a frame without periodic
    direction, as in :class:`mpnn_ip.data.AtomicGraph`), ``pbc [B, 3]`` bool, ``batch [N]`` int64,
    ``edge_index [2, E]`` int64 (row 0 centre i, row 1 neighbour j, global atom indices) and
    ``cell_shifts [E, 3]`` (``dtype``; ``r_ij = pos[j] - pos[i] + cell_shifts @ cell``), every
    pair closer than ``r_max`` in both directions. With ``frame_inputs`` (of :data:`FRAME_INPUTS`) also
    ``charge [B]`` (e) and/or ``spin [B]`` (2S+1) from ``atoms.info`` (default 0 and 1), in ``dtype``; with ``dispersion_cutoff`` (Å)
    also ``dispersion_edge_index``, ``dispersion_cell_shifts``: the pairs within it, laid out as the edges.
    """
    pos, numbers, cells, pbcs, batch = [], [], [], [], []
    for frame, atoms in enumerate(structures):
        pbc = np.asarray(atoms.pbc, dtype=bool)
        pos.append(np.asarray(atoms.positions, dtype=np.float64))
        numbers.append(np.asarray(atoms.numbers, dtype=np.int64))
        cells.append(np.asarray(atoms.cell.array, dtype=np.float64) if pbc.any() else np.zeros((3, 3)))
        pbcs.append(pbc)
        batch.append(np.full(len(atoms), frame, dtype=np.int64))
    edges, shifts = _pairs(structures, r_max)
    arrays = {
        "pos": (np.concatenate(pos), dtype),
        "atomic_numbers": (np.concatenate(numbers), torch.long),
        "cell": (np.stack(cells), dtype),
        "pbc": (np.stack(pbcs), torch.bool),
        "batch": (np.concatenate(batch), torch.long),
        "edge_index": (edges, torch.long),
        "cell_shifts": (shifts, dtype),
    }
    for name in frame_inputs:
        spec = INPUTS[name]
        arrays[name] = (np.array([float(atoms.info.get(spec.key, spec.default)) for atoms in structures]), dtype)
    if dispersion_cutoff is not None:
        pairs, pair_shifts = _pairs(structures, dispersion_cutoff)
        arrays[DISPERSION_PAIRS[0]], arrays[DISPERSION_PAIRS[1]] = (pairs, torch.long), (pair_shifts, dtype)
    return {key: torch.as_tensor(value).to(device=device, dtype=kind) for key, (value, kind) in arrays.items()}


def _pairs(structures: Sequence, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """``(edge_index [2, E], cell_shifts [E, 3])`` of every ordered pair closer than ``cutoff`` (Å), global indices."""
    edges, shifts, offset = [], [], 0
    for atoms in structures:
        i, j, shift = neighbor_list("ijS", atoms, float(cutoff))
        edges.append(np.stack([i, j]).astype(np.int64) + offset)
        shifts.append(np.asarray(shift, dtype=np.float64).reshape(-1, 3))
        offset += len(atoms)
    return np.concatenate(edges, axis=1), np.concatenate(shifts)


class ExportedModel:
    """A ``.pt2`` written by :func:`mpnn_ip.export.export_model`, loaded without the model code.

    Call it with the tensors of :func:`structure_inputs` (:meth:`inputs`) to get
    ``{energy [B] eV, node_energy [N] eV, forces [N, 3] eV/Å, stress [B, 3, 3] eV/Å³}``
    (stress zero for frames without volume), plus ``charges [N]`` (e) and ``dipole [B, 3]`` (e·Å) for a
    model with latent charges; the terms the file leaves out (module docstring) are added. ``metadata``
    holds species, r_max, dtype, device, model name, versions, units, the file's inputs and outputs, the
    model's long-range terms and the parity measured at export time.

    Args:
        path: the ``.pt2`` file: an AOTInductor package (compiled) or a ``torch.export`` program.
        device: where to run an exported program (``None``: where it was exported); an
            AOTInductor package runs on the device it was compiled for.
    """

    def __init__(self, path: str | Path, device: str | torch.device | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such exported model (write one with mpnn-export)")
        keep_tensor_buffers_in_heap()  # see mpnn_ip.cpu_allocator
        if is_aoti_package(self.path):
            self.runner = torch._inductor.aoti_load_package(str(self.path))
            self.metadata = json.loads(self.runner.get_metadata()[METADATA_NAME])
        else:
            extra = {METADATA_NAME: ""}
            program = torch.export.load(str(self.path), extra_files=extra)
            if not extra[METADATA_NAME]:
                raise ConfigError(
                    f"{self.path} is a torch.export program but not one written by mpnn-export (no {METADATA_NAME})"
                )
            self.metadata = json.loads(extra[METADATA_NAME])
            module = program.module()
            if device is not None:
                module = module.to(torch.device(device))
            self.runner = module
        self.species = [int(z) for z in self.metadata["species"]]
        self.r_max = float(self.metadata["r_max"])
        self.dtype = getattr(torch, self.metadata["dtype"])
        self.device = torch.device(device if device is not None and not self.compiled else self.metadata["device"])
        #: the file's inputs and outputs, in order (files of models without long-range terms: the structure's)
        self.input_names = tuple(self.metadata.get("inputs", EXPORTED_INPUTS))
        self.output_names = tuple(self.metadata.get("outputs", EXPORTED_OUTPUTS))
        #: the D3 term added here (:class:`~mpnn_ip.nn.dispersion.D3Dispersion`), or None
        self.dispersion = None
        if self.metadata.get("dispersion") is not None:
            from mpnn_ip.nn.dispersion import parse_dispersion

            self.dispersion = parse_dispersion(self.metadata["dispersion"])
        #: the Coulomb energy of the latent charges (:class:`~mpnn_ip.nn.coulomb.GaussianCoulomb`), or None
        self.coulomb = self._coulomb(self.metadata.get("long_range"), self.metadata.get("long_range_options"))

    @property
    def compiled(self) -> bool:
        return self.metadata.get("compiled") == "aoti"

    @property
    def frame_inputs(self) -> tuple[str, ...]:
        """The frame inputs the file takes (of :data:`FRAME_INPUTS`: total charge, spin multiplicity)."""
        return tuple(name for name in FRAME_INPUTS if name in self.input_names)

    @property
    def latent_charges(self) -> bool:
        """Whether the model has latent charges (LES): outputs ``charges`` and ``dipole``."""
        return self.coulomb is not None

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``inputs`` as :meth:`inputs` returns them -> ``{energy, node_energy, forces, stress}`` (+ ``charges``,
        ``dipole``). Missing frame inputs take their defaults (neutral singlets); missing D3 pairs are searched here.

        Latent charges: the energy is ``E = E_sr(r) + E_lr(q(r), r)``, the network giving the short-range energy
        and the charges q, the Coulomb sum ``E_lr``. The file runs twice. First with ``charge_potential = 0``: q.
        Then, here, ``phi = dE_lr/dq`` and the direct derivatives ``dE_lr/dr`` and ``dE_lr/dstrain`` at fixed q.
        Then with ``charge_potential = phi``: the file's energy is ``E_sr + sum_i phi_i q_i`` with phi a constant,
        so its forces are ``-dE_sr/dr - sum_i phi_i dq_i/dr``, the first two of the chain rule
        ``dE/dr = dE_sr/dr + sum_i (dE_lr/dq_i) dq_i/dr + dE_lr/dr|_q``; the direct forces are the third term
        (likewise for the strain, hence the stress). Its energies carry ``phi_i q_i`` in place of atom i's
        Coulomb energy, which is swapped back.
        """
        if inputs["edge_index"].shape[1] == 0:
            raise DataError(
                f"no two atoms are closer than r_max = {self.r_max} Å: the exported model {self.path} was exported "
                "for structures with at least one pair (use MPNNCalculator.from_checkpoint for isolated atoms)"
            )
        inputs = self._with_defaults(inputs)
        if not self.latent_charges:
            out = self._run(inputs)
            return out if self.dispersion is None else _added(out, self._eager_terms(inputs))
        from mpnn_ip.nn.coulomb import dipole

        charges = self._run(inputs, torch.zeros_like(inputs["batch"], dtype=self.dtype))["charges"]
        terms = self._eager_terms(inputs, charges)
        potential = terms.pop(CHARGE_POTENTIAL)
        out = self._run(inputs, potential)
        # the file's energies hold phi_i q_i where the Coulomb energy of terms belongs
        batch, num_frames = inputs["batch"], out["energy"].shape[0]
        response = (potential * charges).double()
        terms["node_energy"] = terms["node_energy"] - response
        terms["energy"] = terms["energy"] - _frame_sum(response, batch, num_frames)
        out = _added(out, terms)
        out["charges"] = charges
        out["dipole"] = dipole(charges, inputs["pos"].to(self.dtype), batch, num_frames, inputs["pbc"])
        return out

    def inputs(self, structures: Sequence) -> dict[str, torch.Tensor]:
        """:func:`structure_inputs` at this model's r_max, dtype and device (with the frame inputs and D3 pairs
        the file needs); unknown elements raise DataError."""
        unknown = sorted({int(z) for atoms in structures for z in atoms.numbers} - set(self.species))
        if unknown:
            from mpnn_ip.elements import symbols

            raise DataError(
                f"element(s) {symbols(unknown)} are not among the species of the exported model {self.path} "
                f"({symbols(self.species)})"
            )
        cutoff = None if self.dispersion is None else self.dispersion.graph_cutoff
        return structure_inputs(structures, self.r_max, self.dtype, self.device, self.frame_inputs, cutoff)

    def _run(self, inputs: dict[str, torch.Tensor], charge_potential: torch.Tensor | None = None) -> dict:
        """One call of the file (``charge_potential``: its input of that name, for a model with latent charges)."""
        given = {**inputs, CHARGE_POTENTIAL: charge_potential}
        args = [given[key].to(self.device) for key in self.input_names]
        with torch.no_grad():
            outputs = self.runner(*args)
        return dict(zip(self.output_names, outputs))

    def _with_defaults(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``inputs`` on this model's device, with the frame inputs the file needs (defaults where absent)."""
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        num_frames = inputs["cell"].reshape(-1, 3, 3).shape[0]
        for name in self.frame_inputs:
            if inputs.get(name) is None:
                inputs[name] = torch.full((num_frames,), INPUTS[name].default, dtype=self.dtype, device=self.device)
        return inputs

    def _eager_terms(self, inputs: dict[str, torch.Tensor], charges: torch.Tensor | None = None) -> dict:
        """D3 and the Coulomb energy of ``charges`` (when given): ``energy [B]``, ``node_energy [N]`` eV, ``forces``
        [N, 3] eV/Å, ``stress`` [B, 3, 3] eV/Å³ (0 without volume), from one gradient by the positions and a zero
        strain (as :mod:`mpnn_ip.models.derivatives`), and ``charge_potential`` [N] eV/e (``dE/dq``, with
        ``charges``, in the file's dtype). The Coulomb sum runs in the file's dtype, as in the eager model; D3 in
        float64, as :class:`~mpnn_ip.calculators.dispersion.DispersionCorrection` does: its tens of thousands
        of pairs per atom, summed in float32, leave a rounding that depends on their order, which ASE's pairs
        do not share with the model's."""
        from mpnn_ip.graph.vectors import edge_vectors, strained

        dtype, batch, pbc = self.dtype, inputs["batch"], inputs["pbc"].reshape(-1, 3)
        positions = inputs["pos"].detach().to(torch.float64).requires_grad_(True)
        unstrained = inputs["cell"].detach().to(torch.float64).reshape(-1, 3, 3)
        num_frames = unstrained.shape[0]
        strain = torch.zeros(num_frames, 3, 3, dtype=torch.float64, device=positions.device, requires_grad=True)
        wrt = [positions, strain]
        with torch.enable_grad():
            pos, cell = strained(positions, unstrained, strain, batch)
            energies = torch.zeros(pos.shape[0], dtype=torch.float64, device=pos.device)
            if self.dispersion is not None:
                pairs, shifts = self._dispersion_pairs(inputs)
                vectors = edge_vectors(pos, cell, pairs, shifts, batch)
                energies = energies + self.dispersion.atomic_energies(inputs["atomic_numbers"], pairs, vectors)
            if charges is not None:
                charges = charges.detach().to(dtype).requires_grad_(True)
                wrt.append(charges)
                energies = energies + self.coulomb(charges, pos.to(dtype), cell.to(dtype), pbc, batch).double()
            grads = torch.autograd.grad(energies.sum(), wrt, allow_unused=True)
        grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt)]
        volume = torch.linalg.det(unstrained).abs().view(-1, 1, 1)
        terms = {
            "energy": _frame_sum(energies.detach(), batch, num_frames),
            "node_energy": energies.detach(),
            "forces": -grads[0],
            # stress = -virial / V with virial = -dE/dstrain
            "stress": torch.where(volume > 0, grads[1] / torch.where(volume > 0, volume, 1.0), 0.0),
        }
        if charges is not None:
            terms[CHARGE_POTENTIAL] = grads[2]
        return terms

    def _dispersion_pairs(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs' D3 pairs, or those ASE's neighbour list finds within the D3 cutoff."""
        if inputs.get(DISPERSION_PAIRS[0]) is not None:
            return inputs[DISPERSION_PAIRS[0]], inputs[DISPERSION_PAIRS[1]]
        from ase import Atoms

        numbers, pos, batch = (inputs[key].detach().cpu().numpy() for key in ("atomic_numbers", "pos", "batch"))
        cells = inputs["cell"].detach().cpu().reshape(-1, 3, 3).numpy()
        pbcs = inputs["pbc"].cpu().reshape(-1, 3).numpy()
        structures = [
            Atoms(numbers=numbers[batch == f], positions=pos[batch == f], cell=cells[f], pbc=pbcs[f])
            for f in range(cells.shape[0])
        ]
        pairs, shifts = _pairs(structures, self.dispersion.graph_cutoff)
        return torch.as_tensor(pairs, device=self.device), torch.as_tensor(shifts, device=self.device)

    def _coulomb(self, kind: str | None, options: dict | None):
        """The Coulomb energy of the metadata's ``long_range`` with the Coulomb part of its ``long_range_options``."""
        if kind is None:
            return None
        if kind != "les":
            raise ConfigError(
                f"{self.path} was exported from a model with long_range={kind!r}, which this version of mpnn_ip "
                "cannot evaluate (it knows 'les'); use the mpnn_ip version that wrote it "
                f"({self.metadata.get('mpnn_ip_version')})"
            )
        from mpnn_ip.nn.coulomb import GaussianCoulomb

        known = inspect.signature(GaussianCoulomb).parameters
        return GaussianCoulomb(**{key: value for key, value in (options or {}).items() if key in known})


def _frame_sum(values: torch.Tensor, batch: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Per-frame sums ``[B, ...]`` of per-atom ``values`` ``[N, ...]``."""
    return torch.zeros((num_frames, *values.shape[1:]), dtype=values.dtype, device=values.device).index_add(
        0, batch, values
    )


def _added(out: dict[str, torch.Tensor], terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``out`` with each of ``terms`` added to the output of its name."""
    return {**out, **{key: out[key] + value.to(out[key].dtype) for key, value in terms.items()}}


def is_aoti_package(path: str | Path) -> bool:
    """Whether ``path`` is an AOTInductor package (compiled code inside), not a plain exported program."""
    with zipfile.ZipFile(path) as archive:
        return any("/data/aotinductor/" in name for name in archive.namelist())


class ExportedCalculator(Calculator):
    """ASE calculator of an exported model: energy, free_energy (eV), energies (eV per atom),
    forces (eV/Å), stress (eV/Å³, Voigt, ASE sign; periodic cells of non-zero volume only, else
    ``PropertyNotImplementedError``), and for a model with latent charges ``charges`` (e) and ``dipole``
    (e·Å; zeros for periodic cells): the same results as :class:`~mpnn_ip.MPNNCalculator` on the eager model
    (checked when the file was written). A model with a charge/spin embedding reads the total charge (e) and
    multiplicity from ``atoms.info["charge"]`` and ``atoms.info["spin"]`` (default 0 and 1); changing them
    is a change of the structure.

    Args:
        path: the ``.pt2`` written by ``mpnn-export``.
        device: see :class:`ExportedModel`.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, path: str | Path, device: str | torch.device | None = None, **kwargs):
        check_keywords(type(self).__name__, kwargs, ("path", "device"))
        super().__init__(**kwargs)
        self.model = ExportedModel(path, device)
        if self.model.latent_charges:
            self.implemented_properties = [*type(self).implemented_properties, "charges", "dipole"]

    def check_state(self, atoms, tol: float = 1e-15) -> list[str]:
        """ASE's changes since the last calculation, plus ``info`` when the frame inputs the model reads
        (``atoms.info["charge"]``, ``["spin"]``) changed: ASE compares positions, numbers, cell and pbc only."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and self.model.frame_inputs:
            keys = [INPUTS[name].key for name in self.model.frame_inputs]
            if [self.atoms.info.get(key) for key in keys] != [atoms.info.get(key) for key in keys]:
                changes.append("info")
        return changes

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        """Run the exported model on ``atoms``; fills ``self.results`` (ASE units: eV, Å)."""
        properties = list(properties or ["energy"])
        super().calculate(atoms, properties, system_changes)
        want_stress = "stress" in properties
        if want_stress:
            check_stress_possible(self.atoms)
        if not np.isfinite(self.atoms.positions).all():
            raise DataError("positions contain NaN or inf", path="the ASE Atoms given to ExportedCalculator")
        out = self.model(self.model.inputs([self.atoms]))
        self.results = energy_forces_stress(out, want_stress)
