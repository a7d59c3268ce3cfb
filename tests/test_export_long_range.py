"""Export of models with the terms of :mod:`mpnn_ip.models.long_range`: the frames' charge and spin as inputs
of the file, D3 dispersion added beside it, latent charges (LES) through the file's ``charge_potential`` input
with the Coulomb sum in eager torch; each alone and all together (``compile=False``, as in test_export.py).
The exported path must equal the full eager model: at export (the parity check) and through the ASE
calculators, on structures other than the export samples. Float64, except D3 alone: in float32, whose
parity check takes the D3 term in float64 on both sides (all terms together check D3 in float64).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

import mpnn_ip.export
from mpnn_ip.calculators import MPNNCalculator
from mpnn_ip.calculators.exported import ExportedCalculator, ExportedModel
from mpnn_ip.export import PARITY_RTOL, ExportMismatch, export_model
from mpnn_ip.models.nequip import NequIP

SPECIES = ["H", "O", "Na", "Cl"]
#: the terms of each exported model; one layer where a term is alone (tracing time grows with the layers)
TERMS = {
    "charge_spin": dict(charge_spin_embedding=True, num_layers=1),
    "d3": dict(dispersion="d3bj:pbe", num_layers=1),
    "les": dict(long_range="les", long_range_options={"charge_mlp": [4]}, num_layers=1),
    "all": dict(
        charge_spin_embedding=True,
        dispersion="d3bj:pbe",
        long_range="les",
        long_range_options={"charge_mlp": [4]},
        num_layers=2,
    ),
}


#: the dtype of each exported model (float64 unless named)
DTYPES = {"d3": torch.float32}
#: largest difference of the exported calculator's results from the eager one's, relative to their largest
#: magnitude: float32 D3 is float64 in the exported model, summed in float32 (~1e-5 of it) in the eager one
CALCULATOR_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def build(terms: dict, dtype: torch.dtype = torch.float64) -> NequIP:
    torch.manual_seed(0)
    model = NequIP(
        species=SPECIES,
        r_max=3.0,
        num_features=4,
        l_max=1,
        num_bessel=4,
        radial_mlp=[8],
        avg_num_neighbors=8.0,
        e0s={"H": -1.1, "O": -4.9, "Na": -1.3, "Cl": -1.8},
        **terms,
    )
    return model.to(dtype).eval()


def make_cluster() -> Atoms:
    """A water molecule beside an Na-Cl pair (5 atoms), no periodicity, total charge +1 and a doublet."""
    positions = [[0.0, 0.0, 0.0], [0.76, 0.59, 0.0], [-0.76, 0.59, 0.0], [0.1, -2.3, 0.2], [2.5, -2.6, -0.4]]
    atoms = Atoms("OH2NaCl", positions=positions)
    atoms.rattle(0.03, seed=5)
    atoms.info.update(name="water beside NaCl", charge=1.0, spin=2.0)
    return atoms


def make_rock_salt() -> Atoms:
    """Cubic NaCl (8 atoms), rattled; periodic, neutral singlet."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.rattle(0.05, seed=6)
    atoms.info.update(name="rock salt", charge=0.0, spin=1.0)
    return atoms


@pytest.fixture(scope="module", params=list(TERMS))
def exported(request, tmp_path_factory):
    """(terms, eager model, path of its exported program, export_model's metadata) per set of terms."""
    terms = TERMS[request.param]
    model = build(terms, DTYPES.get(request.param, torch.float64))
    path = tmp_path_factory.mktemp(request.param) / "model.pt2"
    return terms, model, path, export_model(model, path, compile=False)


def test_export_records_the_terms_and_matches_the_full_eager_model(exported):
    terms, model, path, info = exported
    les = terms.get("long_range") == "les"
    assert path.is_file() and max(info["parity"].values()) <= PARITY_RTOL[model.dtype]
    assert ("charges" in info["parity"]) == les and ("charges" in info["outputs"]) == les
    assert info["charge_spin_embedding"] == bool(terms.get("charge_spin_embedding"))
    assert ("spin" in info["inputs"]) == info["charge_spin_embedding"]
    assert ("charge" in info["inputs"]) == (info["charge_spin_embedding"] or les)  # LES charges sum to it
    assert info["dispersion"] == terms.get("dispersion") and info["long_range"] == terms.get("long_range")
    assert ("charge_potential" in info["inputs"]) == les
    assert info["long_range_options"] == terms.get("long_range_options")


def test_exported_calculator_equals_eager_calculator(exported, monkeypatch):
    """Energy, per-atom energies, forces, stress (and charges, dipole with LES) of ExportedCalculator equal
    MPNNCalculator's on the full model; the exported side runs without torch-cluster (D3 pairs from ASE)."""
    import torch_cluster

    terms, model, path, _ = exported
    les = terms.get("long_range") == "les"
    calc = ExportedCalculator(path)
    for atoms in (make_cluster(), make_rock_salt()):
        properties = ["energy", "energies", "forces"] + (["stress"] if atoms.pbc.any() else [])
        properties += ["charges", "dipole"] if les else []
        with monkeypatch.context() as patch:
            for name in ("radius", "radius_graph"):
                patch.setattr(torch_cluster, name, _no_torch_cluster)
            calc.calculate(atoms, properties)
        eager = MPNNCalculator(model)
        eager.calculate(atoms, properties)
        assert np.abs(eager.results["forces"]).max() > 1e-4  # not vacuous
        for key in properties:
            expected, got = np.asarray(eager.results[key]), np.asarray(calc.results[key])
            assert got.shape == expected.shape, (key, atoms.info["name"])
            scale = CALCULATOR_RTOL[model.dtype] * max(np.abs(expected).max(), 1.0)
            assert np.abs(got - expected).max() <= scale, (key, atoms.info["name"])
        if les:
            assert np.abs(calc.results["charges"]).max() > 1e-4
            assert calc.results["charges"].sum() == pytest.approx(atoms.info["charge"], abs=1e-10)
            assert (np.abs(calc.results["dipole"]).max() > 1e-6) == (not atoms.pbc.any())  # periodic: zeros


@pytest.mark.parametrize("exported", ["charge_spin", "les", "all"], indirect=True)
def test_total_charge_and_spin_change_the_exported_energy(exported):
    """A file of a model with the charge/spin embedding or latent charges (which sum to the total charge) reads
    atoms.info; a change there is a new calculation."""
    _, model, path, _ = exported
    atoms = make_cluster()
    atoms.info.update(charge=0.0, spin=1.0)
    atoms.calc = ExportedCalculator(path)
    neutral = atoms.get_potential_energy()
    atoms.info.update(charge=1.0, spin=2.0)
    charged = atoms.get_potential_energy()
    assert abs(charged - neutral) > 1e-6  # against agreement to 1e-10
    atoms.calc = MPNNCalculator(model)
    assert atoms.get_potential_energy() == pytest.approx(charged, abs=1e-10)


@pytest.mark.parametrize("exported", ["les"], indirect=True)
def test_parity_check_catches_missing_charge_response_forces(exported, tmp_path, monkeypatch):
    """The parity check sees the charges' share of the forces: given phi = 0 in its second call (the forces of
    the Coulomb energy at fixed charges only), the exported model fails it, on the forces."""
    _, model, path, _ = exported
    monkeypatch.setattr(mpnn_ip.export, "_trace_and_export", lambda flat, example: torch.export.load(str(path)))
    eager_terms = ExportedModel._eager_terms

    def without_response(self, inputs, charges=None):
        terms = eager_terms(self, inputs, charges)
        terms["charge_potential"] = torch.zeros_like(terms["charge_potential"])
        return terms

    monkeypatch.setattr(ExportedModel, "_eager_terms", without_response)
    with pytest.raises(ExportMismatch, match="forces differs"):
        export_model(model, tmp_path / "broken.pt2", compile=False)
    assert not (tmp_path / "broken.pt2").exists()


def _no_torch_cluster(*args, **kwargs):
    raise AssertionError("the exported calculator called torch-cluster")
