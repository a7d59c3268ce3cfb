"""Export (``mpnn-export``, :mod:`mpnn_ip.export`): parity with the eager model for every family,
refusals, a mismatch that removes the file, and the exported calculator equal to the eager one.

Most tests export the ``torch.export`` program (``compile=False``), which is what AOTInductor
compiles; one ``slow`` test compiles the tiniest model with AOTInductor (minutes on one CPU core).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import E0S, SPECIES, make_molecule, make_triclinic_crystal
from tiny_checkpoint import tiny_checkpoint

import mpnn_ip.export
from mpnn_ip.calculators import MPNNCalculator
from mpnn_ip.calculators.exported import ExportedCalculator, ExportedModel
from mpnn_ip.errors import ConfigError
from mpnn_ip.export import PARITY_RTOL, ExportMismatch, export_model, sample_structures
from mpnn_ip.models import build_model

#: The smallest model of each family that still has every block (tracing time grows with the layers).
EXPORT_KWARGS = {
    "nequip": dict(num_layers=2, l_max=1, num_features=4, num_bessel=4, radial_mlp=[8], avg_num_neighbors=8.0),
    "mace": dict(num_interactions=1, hidden_irreps="4x0e+4x1o", max_ell=1, correlation=2, radial_mlp=[8], num_bessel=4),
    "schnet": dict(num_features=8, num_interactions=2, num_gaussians=8, num_filters=8),
    "bpnn": dict(hidden=[8]),
}
R_MAX = 4.0


def build_export_model(name: str, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, species=SPECIES, r_max=R_MAX, e0s=E0S, **EXPORT_KWARGS.get(name, {}))
    return model.to(dtype).eval()


@pytest.fixture(scope="module", params=list(EXPORT_KWARGS))
def exported(request, tmp_path_factory):
    """(eager model, path of its exported program, export_model's metadata) per family, float64."""
    model = build_export_model(request.param)
    path = tmp_path_factory.mktemp(request.param) / "model.pt2"
    return model, path, export_model(model, path, compile=False)


def test_exported_program_matches_eager_model(exported):
    model, path, info = exported
    assert path.is_file()
    assert max(info["parity"].values()) <= PARITY_RTOL[torch.float64]
    assert info["species"] == model.species and info["r_max"] == model.r_max and info["dtype"] == "float64"
    assert info["model_name"] == type(model).__name__.lower() and info["compiled"] == "none"


def test_exported_calculator_equals_eager_calculator(exported):
    """Same energy, per-atom energies, forces and stress as MPNNCalculator (its torch-cluster graph
    against ASE's neighbour list), on structures other than the export samples, larger ones included."""
    model, path, _ = exported
    exported_calc = MPNNCalculator.from_exported(path)
    assert isinstance(exported_calc, ExportedCalculator)
    crystal = make_triclinic_crystal().repeat((2, 1, 1))
    for atoms in (make_molecule(), crystal):
        properties = ["energy", "energies", "forces"] + (["stress"] if atoms.pbc.any() else [])
        eager = MPNNCalculator(model)
        eager.calculate(atoms, properties)
        exported_calc.calculate(atoms, properties)
        assert np.abs(eager.results["forces"]).max() > 1e-4  # not vacuous
        for key in properties:
            expected, got = np.asarray(eager.results[key]), np.asarray(exported_calc.results[key])
            assert np.abs(got - expected).max() <= 1e-10 * max(np.abs(expected).max(), 1.0), (key, atoms.info["name"])


def test_models_with_extra_outputs_are_refused_naming_them(tmp_path):
    model = build_model("gap", species=SPECIES, r_max=R_MAX, num_sparse=4, n_max=2, l_max=2).double()
    with pytest.raises(ConfigError, match="energy_uncertainty"):
        export_model(model, tmp_path / "gap.pt2", compile=False)
    assert not (tmp_path / "gap.pt2").exists()


@pytest.fixture(scope="module")
def exported_float32(tmp_path_factory):
    """(eager model, path, metadata) of the float32 SchNet, exported once for the float32 tests."""
    model = build_export_model("schnet", torch.float32)
    path = tmp_path_factory.mktemp("float32") / "model.pt2"
    return model, path, export_model(model, path, compile=False)


def test_float32_export_matches_within_1e_5(exported_float32):
    _, _, info = exported_float32
    assert info["dtype"] == "float32" and max(info["parity"].values()) <= 1e-5


def test_export_mismatch_fails_and_removes_the_file(exported_float32, tmp_path, monkeypatch):
    """An exported model that disagrees with the eager one (here its energies are off by 1e-4
    relative, as a miscompiled kernel might be) fails the export: no file is left behind, and an
    existing file of that name is kept as it was."""
    model, path, _ = exported_float32
    monkeypatch.setattr(mpnn_ip.export, "_trace_and_export", lambda flat, example: torch.export.load(str(path)))
    call = ExportedModel.__call__

    def miscompiled(self, inputs):
        out = call(self, inputs)
        return {**out, "energy": out["energy"] * (1 + 1e-4)}

    monkeypatch.setattr(ExportedModel, "__call__", miscompiled)
    out = tmp_path / "broken.pt2"
    with pytest.raises(ExportMismatch, match=r"energy differs .* tolerance 1e-05 in float32"):
        export_model(model, out, compile=False)
    assert not out.exists() and not list(tmp_path.iterdir())
    out.write_bytes(b"an earlier good export")  # a failed export never replaces an existing file
    with pytest.raises(ExportMismatch):
        export_model(model, out, compile=False)
    assert out.read_bytes() == b"an earlier good export" and len(list(tmp_path.iterdir())) == 1


def test_mpnn_export_command_writes_a_file_the_calculator_reads(tmp_path):
    """``mpnn-export ckpt_path=... out=model.pt2 compile=false`` (the README's command, without a compiler)."""
    from mpnn_ip.cli.export import run_export
    from mpnn_ip.cli.hydra_app import compose_config

    ckpt = tiny_checkpoint(tmp_path / "tiny.ckpt")
    out = tmp_path / "model.pt2"
    cfg = compose_config("export", [f"ckpt_path={ckpt}", f"out={out}", "compile=false", "dtype=float64"])
    info = run_export(cfg)
    assert out.is_file() and info["model_name"] == "nequip"
    atoms = make_triclinic_crystal()
    eager = MPNNCalculator.from_checkpoint(ckpt, dtype="float64")
    atoms.calc = MPNNCalculator.from_exported(out)
    forces = atoms.get_forces()
    atoms.calc = eager
    assert np.allclose(forces, atoms.get_forces(), rtol=0, atol=1e-10)


def test_mpnn_export_head_exports_that_head_of_a_multi_head_model(tmp_path):
    """``mpnn-export ... head=r2scan`` of an imported two-head mace-torch model gives that head's numbers."""
    import lzma

    from mpnn_ip.cli.export import run_export
    from mpnn_ip.cli.hydra_app import compose_config
    from mpnn_ip.interop.importer import write_imported_checkpoint

    fixture = Path(__file__).parent / "data" / "interop" / "mace" / "multihead.model.xz"
    source = tmp_path / "multihead.model"
    source.write_bytes(lzma.decompress(fixture.read_bytes()))
    write_imported_checkpoint(source, tmp_path / "heads.ckpt")
    out = tmp_path / "r2scan.pt2"
    run_export(
        compose_config("export", [f"ckpt_path={tmp_path / 'heads.ckpt'}", f"out={out}", "compile=false", "head=r2scan"])
    )
    from ase.build import molecule

    atoms = molecule("CH3OH")
    atoms.calc = MPNNCalculator.from_checkpoint(tmp_path / "heads.ckpt", head="r2scan")
    expected = atoms.get_potential_energy()
    atoms.calc = MPNNCalculator.from_checkpoint(tmp_path / "heads.ckpt")
    default = atoms.get_potential_energy()
    atoms.calc = MPNNCalculator.from_exported(out)
    assert atoms.get_potential_energy() == pytest.approx(expected, abs=1e-8) and abs(expected - default) > 1e-3


def test_exported_calculator_needs_no_model_code():
    """Importing and running the exported calculator loads neither the model classes nor torch-cluster."""
    code = (
        "import sys, mpnn_ip.calculators.exported\n"
        "bad = [m for m in sys.modules if m.startswith(('mpnn_ip.models', 'torch_cluster', 'mpnn_ip.graph'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sample_structures_have_edges_and_every_species():
    samples = sample_structures([1, 8, 29], r_max=3.0)
    assert [len(a) for a in samples] == [5, 4, 16]
    assert {int(z) for a in samples for z in a.numbers} == {1, 8, 29}


@pytest.mark.slow
def test_aoti_package_matches_eager_model(tmp_path):
    """The product path: AOTInductor compiles the tiniest model (float32) and the package passes the parity check."""
    model = build_export_model("schnet", torch.float32)
    out = tmp_path / "aoti.pt2"
    info = export_model(model, out, compile=True)
    assert info["compiled"] == "aoti" and max(info["parity"].values()) <= 1e-5
    calc = ExportedCalculator(out)
    assert calc.model.compiled
    atoms = make_triclinic_crystal()
    atoms.calc = calc
    assert np.isfinite(atoms.get_stress()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_export_matches_eager_model(tmp_path):
    model = build_export_model("schnet", torch.float32)
    info = export_model(model, tmp_path / "cuda.pt2", device="cuda", compile=False)
    assert info["device"].startswith("cuda") and max(info["parity"].values()) <= 1e-5
