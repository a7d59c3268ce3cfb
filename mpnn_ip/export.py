"""Export a potential to one ``.pt2`` file that runs without the model code (``mpnn-export``).

The route is NequIP's (0.19): the model is wrapped in a signature of plain tensors
(:class:`FlatPotential`), traced symbolically with ``make_fx`` (which unrolls the
``torch.autograd.grad`` of forces and stress into explicit backward operations; ``torch.export``
alone cannot differentiate through parameters), exported with ``torch.export`` with dynamic
numbers of atoms, edges and frames, and compiled by AOTInductor into a ``.pt2`` package
(``compile=True``, the product) or saved as the ``torch.export`` program itself
(``compile=False``: no C++ compiler needed, slower to run). Metadata (species, r_max, dtype,
device, model name, versions, units, the file's inputs and outputs, the model's long-range terms, the
parity measured here) travels inside the file.

The terms of :mod:`mpnn_ip.models.long_range` are exported as far as they can be traced: the charge/spin
embedding with the frames' ``charge`` and ``spin`` as inputs (latent charges take ``charge``, their sum); D3 dispersion not at all (its pair search and
chunks have shapes that depend on the data: the file holds the model without it and the metadata its spec);
latent charges (LES) as the network with the input ``charge_potential`` and the output ``charges``, the
Coulomb sum (frame loops) left out. :class:`~mpnn_ip.calculators.exported.ExportedModel` adds what is left out
in eager torch, and the parity check compares that sum with the full eager model.

Before the file is kept, the exported model is loaded back from it and run on sample structures
(a molecule and a periodic cell of two sizes, each alone and all in one batch); its energies,
forces and stress (and latent charges) must match the eager model's to ``1e-5`` (float32) or ``1e-10``
(float64) relative to each quantity's largest magnitude. A mismatch removes the file and raises
:class:`ExportMismatch`. Models with outputs the file cannot carry (``extra_outputs``, e.g. GAP's
uncertainties) are refused with a :class:`~mpnn_ip.errors.ConfigError`.

Load it with :class:`mpnn_ip.calculators.exported.ExportedCalculator` (ASE) or
:class:`~mpnn_ip.calculators.exported.ExportedModel` (tensors).
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mpnn_ip.calculators.dispersion import DispersionCorrection
from mpnn_ip.calculators.exported import (
    EXPORTED_INPUTS,
    EXPORTED_OUTPUTS,
    FRAME_INPUTS,
    METADATA_NAME,
    ExportedModel,
    exported_signature,
    structure_inputs,
)
from mpnn_ip.errors import ConfigError

#: Relative tolerance of the export-time parity check, per dtype.
PARITY_RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
#: Compared outputs (``node_energy`` sums to ``energy`` and is checked through it).
CHECKED_OUTPUTS = ("energy", "forces", "stress")


class ExportMismatch(ConfigError):
    """The exported model disagrees with the eager model on a sample structure (the file is removed)."""


class FlatPotential(torch.nn.Module):
    """A potential with a signature of plain tensors: what is exported.

    Forward (N atoms, B frames, E edges; see :func:`mpnn_ip.calculators.exported.structure_inputs`):
    ``pos [N, 3]`` Å, ``atomic_numbers [N]``, ``cell [B, 3, 3]`` Å, ``pbc [B, 3]``, ``batch [N]``,
    ``edge_index [2, E]``, ``cell_shifts [E, 3]``, then the inputs of the model's long-range terms
    (``charge [B]`` e, ``spin [B]``; ``charge_potential [N]`` eV/e) ->
    ``(energy [B] eV, node_energy [N] eV, forces [N, 3] eV/Å, stress [B, 3, 3] eV/Å³)`` (+ ``charges [N]`` e).

    Args:
        model: the potential (for a model with D3, one without it: see :func:`export_model`).
        input_names, output_names: the signature (:func:`~mpnn_ip.calculators.exported.exported_signature`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        input_names: Sequence[str] = EXPORTED_INPUTS,
        output_names: Sequence[str] = EXPORTED_OUTPUTS,
    ):
        super().__init__()
        self.model = model
        self.input_names, self.output_names = tuple(input_names), tuple(output_names)

    def forward(self, *args):
        out = self.model(dict(zip(self.input_names, args)), compute_forces=True, compute_stress=True)
        return tuple(out[key] for key in self.output_names)


def sample_structures(species: Sequence[int], r_max: float) -> list:
    """A molecule and a periodic cell of two sizes (4 and 16 atoms) made of ``species`` (cycled),
    rattled, with nearest neighbours well inside ``r_max``: the structures of the parity check."""
    from ase import Atoms
    from ase.build import bulk

    species = [int(z) for z in species]
    bond = min(1.1, 0.45 * r_max)
    tetrahedron = np.array([[0, 0, 0], [1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) * bond / np.sqrt(3)
    molecule = Atoms(numbers=[species[k % len(species)] for k in range(5)], positions=tetrahedron)
    crystal = bulk("Cu", "fcc", a=min(3.6, 1.2 * r_max), cubic=True)
    crystal.numbers = [species[(k + 1) % len(species)] for k in range(len(crystal))]
    larger = crystal.repeat((2, 2, 1))
    for k, atoms in enumerate((molecule, crystal, larger)):
        atoms.rattle(0.05 * bond, seed=k)
    return [molecule, crystal, larger]


def export_model(
    model: torch.nn.Module,
    out: str | Path,
    device: str | torch.device = "cpu",
    samples: Sequence | None = None,
    compile: bool = True,
    model_name: str | None = None,
    inductor_configs: dict | None = None,
) -> dict:
    """Export ``model`` to ``out`` (``.pt2``) and check it against the eager model.

    Args:
        model: a :class:`~mpnn_ip.models.Potential` (copied; the original is not changed), in its dtype.
        out: the ``.pt2`` file to write.
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:N"``): where the exported model runs.
        samples: ASE ``Atoms`` of the parity check (at least two; the first two, batched, are the
            tracing example); default :func:`sample_structures` of the model's species.
        compile: True: AOTInductor package; False: the ``torch.export`` program (no compiler).
        model_name: the registry name stored in the metadata (default: looked up from the class).
        inductor_configs: extra AOTInductor options.
    Returns: the metadata written into the file, with ``parity`` (largest relative error per output)
        and ``seconds`` (trace, export, compile, check).
    Raises:
        ConfigError: a model the file cannot represent (extra outputs, no r_max, one sample).
        ExportMismatch: the exported model disagrees with the eager one; nothing is written (an
            existing ``out`` is left as it was).
    """
    out = Path(out)
    if out.suffix != ".pt2":
        raise ConfigError(f"out={out}: the exported file must end in .pt2")
    extra = dict(getattr(model, "extra_outputs", {}) or {})
    if extra:
        raise ConfigError(
            f"{type(model).__name__} cannot be exported: its outputs {sorted(extra)} are not part of the exported "
            "signature (energy, forces, stress), and computing them per frame needs shapes that depend on the "
            "data (frame sizes). Use MPNNCalculator.from_checkpoint for this model."
        )
    if getattr(model, "r_max", None) is None:
        raise ConfigError(
            f"{type(model).__name__} has no r_max (cutoff, Å): the exported file needs it for its neighbour list"
        )
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device} was asked for but CUDA is not available here; export with device=cpu")
    model = copy.deepcopy(model).to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    dtype = model.dtype
    terms = long_range_terms(model)
    input_names, output_names = exported_signature(terms["charge_spin_embedding"], terms["long_range"] is not None)
    frame_inputs = [name for name in input_names if name in FRAME_INPUTS]
    if samples is None:
        samples = sample_structures(model.species, model.r_max)
        if frame_inputs:  # a charged doublet beside neutral singlets: the inputs are checked too
            samples[0].info.update(charge=1.0, spin=2.0)
    samples = list(samples)
    if len(samples) < 2:
        raise ConfigError("export_model needs at least two sample structures (two frames are the tracing example)")
    network = model
    if terms["dispersion"] is not None:  # D3 runs beside the file (ExportedModel), not in it
        network = copy.deepcopy(model)
        network.dispersion = None
    flat = FlatPotential(network, input_names, output_names)
    seconds = {}

    clock = time.perf_counter()
    example = structure_inputs(samples[:2], model.r_max, dtype, device, frame_inputs=frame_inputs)
    if terms["long_range"] is not None:
        example["charge_potential"] = torch.zeros_like(example["pos"][:, 0])
    program = _trace_and_export(flat, example)
    seconds["trace_and_export"] = time.perf_counter() - clock

    metadata = _metadata(model, model_name, device, compile, input_names, output_names, terms)
    out.parent.mkdir(parents=True, exist_ok=True)
    # written beside ``out`` and renamed only once the parity check passed: a failed export never
    # replaces (or deletes) an existing file of that name
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    clock = time.perf_counter()
    try:
        if compile:
            configs = {**(inductor_configs or {}), "aot_inductor.metadata": {METADATA_NAME: json.dumps(metadata)}}
            torch._inductor.aoti_compile_and_package(program, package_path=str(partial), inductor_configs=configs)
        else:
            torch.export.save(program, str(partial), extra_files={METADATA_NAME: json.dumps(metadata)})
        seconds["compile" if compile else "save"] = time.perf_counter() - clock

        clock = time.perf_counter()
        parity = check_parity(model, ExportedModel(partial, device if not compile else None), samples)
        seconds["check"] = time.perf_counter() - clock
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)
    return {**metadata, "parity": parity, "seconds": seconds}


def long_range_terms(model: torch.nn.Module) -> dict:
    """The model's terms of :mod:`mpnn_ip.models.long_range` as its constructor arguments (for the metadata):
    ``charge_spin_embedding`` (bool), ``dispersion`` (``"d3bj:<functional>"`` or None), ``long_range``
    (``"les"`` or None) and ``long_range_options`` (dict or None); those of a model without them are off."""
    config = dict(getattr(model, "config", {}) or {})
    latent = getattr(model, "latent_ewald", None) is not None
    return {
        "charge_spin_embedding": getattr(model, "charge_spin", None) is not None,
        "dispersion": str(config["dispersion"]) if getattr(model, "dispersion", None) is not None else None,
        "long_range": "les" if latent else None,
        "long_range_options": json.loads(json.dumps(dict(config.get("long_range_options") or {}))) if latent else None,
    }


def check_parity(model: torch.nn.Module, exported: ExportedModel, samples: Sequence) -> dict[str, float]:
    """Largest relative error of each output of ``exported`` against the eager ``model`` (with every term,
    D3 and latent charges included) over every sample alone and all samples in one batch; raises
    :class:`ExportMismatch` past :data:`PARITY_RTOL`.

    The error of an output is ``max |exported - eager| / max |eager|`` over the batch (absolute
    where the eager output is zero, e.g. the stress of a molecule).

    One exception to "every term": the D3 term of a float32 model. Summed in float32 over its tens of
    thousands of pairs per atom, it carries a rounding that depends on the order of the pairs (~1e-5 of the
    samples' small forces and stress, the size of the tolerance), and the exported model's pairs are ASE's; so
    both sides add it in float64, the reference with the model code's own pair search and derivatives
    (:class:`~mpnn_ip.calculators.dispersion.DispersionCorrection`).
    """
    dtype = model.dtype
    device = next(model.buffers()).device
    correction = None
    if dtype != torch.float64 and getattr(model, "dispersion", None) is not None:
        correction = DispersionCorrection(model.config["dispersion"])
        model = copy.deepcopy(model)
        model.dispersion = None
    rtol = PARITY_RTOL[dtype]
    checked = CHECKED_OUTPUTS + (("charges",) if exported.latent_charges else ())
    worst = dict.fromkeys(checked, 0.0)
    batches = [[atoms] for atoms in samples] + [list(samples)]
    for structures in batches:
        inputs = structure_inputs(structures, model.r_max, dtype, device, frame_inputs=exported.frame_inputs)
        where = f"{len(structures)} frame(s) of {int(inputs['pos'].shape[0])} atoms, {int(inputs['edge_index'].shape[1])} edges"
        with torch.enable_grad():
            reference = model(inputs, compute_forces=True, compute_stress=True)
        if correction is not None:
            reference = correction.add_to(reference, inputs, stress=True)
        reference = {key: value.detach() for key, value in reference.items() if key in checked}
        try:
            result = exported(inputs)
        except RuntimeError as error:
            raise ExportMismatch(f"the exported model failed on {where}: {error}") from error
        for key in checked:
            expected, got = reference[key], result[key].to(reference[key].device, reference[key].dtype)
            if got.shape != expected.shape:
                raise ExportMismatch(
                    f"exported {key} has shape {tuple(got.shape)}, the eager model's {tuple(expected.shape)} ({where})"
                )
            scale = float(expected.abs().max()) if expected.numel() else 0.0
            error = float((got - expected).abs().max()) / (scale if scale > 0 else 1.0) if expected.numel() else 0.0
            if not error <= rtol:  # also catches NaN
                raise ExportMismatch(
                    f"the exported model's {key} differs from the eager model's by {error:.3g} (relative; tolerance "
                    f"{rtol:g} in {str(dtype).removeprefix('torch.')}) on {where}. The file was not kept. Try "
                    "dtype=float64, or compile=false to tell a compiler problem from an export problem."
                )
            worst[key] = max(worst[key], error)
    return worst


def _trace_and_export(flat: FlatPotential, example: dict[str, torch.Tensor]) -> torch.export.ExportedProgram:
    """``make_fx`` trace (forces and stress as explicit operations), then ``torch.export`` with
    dynamic atoms, edges and frames."""
    from torch.fx.experimental import _config as fx_config
    from torch.fx.experimental.proxy_tensor import make_fx

    args = tuple(example[key] for key in flat.input_names)
    with _no_duck_shapes(fx_config), torch.enable_grad():
        traced = make_fx(flat, tracing_mode="symbolic", _allow_non_fake_inputs=True, _error_on_data_dependent_ops=True)(
            *(a.clone() for a in args)
        )
    atoms = torch.export.Dim("num_atoms", min=1)
    edges = torch.export.Dim("num_edges", min=1)
    frames = torch.export.Dim("num_frames", min=1)
    dims = {
        "pos": {0: atoms},
        "atomic_numbers": {0: atoms},
        "cell": {0: frames},
        "pbc": {0: frames},
        "batch": {0: atoms},
        "edge_index": {1: edges},
        "cell_shifts": {0: edges},
        "charge": {0: frames},
        "spin": {0: frames},
        "charge_potential": {0: atoms},
    }
    return torch.export.export(traced, args, dynamic_shapes=tuple(dims[key] for key in flat.input_names), strict=False)


@contextlib.contextmanager
def _no_duck_shapes(fx_config):
    """Without duck shaping, a dynamic size equal to a static one (16 atoms, 16 channels) stays symbolic."""
    previous = fx_config.use_duck_shape
    fx_config.use_duck_shape = False
    try:
        yield
    finally:
        fx_config.use_duck_shape = previous


def _metadata(
    model,
    model_name: str | None,
    device: torch.device,
    compile: bool,
    input_names: Sequence[str],
    output_names: Sequence[str],
    terms: dict,
) -> dict:
    import mpnn_ip
    from mpnn_ip.checkpoint import dtype_name, registry_name
    from mpnn_ip.outputs import UNITS

    return {
        "format": "mpnn_ip.export/1",
        "model_name": model_name or registry_name(model),
        "species": [int(z) for z in model.species],
        "r_max": float(model.r_max),
        "dtype": dtype_name(model.dtype),
        "device": str(device),
        "compiled": "aoti" if compile else "none",
        "mpnn_ip_version": mpnn_ip.__version__,
        "torch_version": torch.__version__,
        "units": dict(UNITS),
        "inputs": list(input_names),
        "outputs": list(output_names),
        **terms,
    }
