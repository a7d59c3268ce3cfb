"""Reading labelled frames: label keys, units, masks, isolated atoms and every bad-input case."""

import os
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mpnn_ip.data import read_dataset, read_isolated_atom_energies
from mpnn_ip.errors import DataError

EV_PER_A3_PER_GPA = 1 / 160.21766208
pytestmark = pytest.mark.filterwarnings("ignore:.*it is masked:UserWarning")


def _dimer(distance=1.0, cell=None, pbc=False):
    atoms = Atoms("CuAu", positions=[[0.0, 0.0, 0.0], [distance, 0.3, 0.2]])
    if cell is not None:
        atoms.set_cell(cell)
        atoms.set_pbc(pbc)
    return atoms


def _periodic_frame(seed=0):
    rng = np.random.default_rng(seed)
    atoms = Atoms("Cu2Au", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5]], cell=np.eye(3) * 4.0, pbc=True)
    atoms.positions += rng.normal(0, 0.05, size=(3, 3))
    return atoms, rng


def _write_with_calculator(path, frames_labels):
    frames = []
    for atoms, labels in frames_labels:
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return path


def test_default_labels_come_from_the_calculator_results(tmp_path):
    atoms, rng = _periodic_frame()
    forces, stress = rng.normal(size=(3, 3)), rng.normal(size=6) * 0.01
    path = _write_with_calculator(tmp_path / "calc.xyz", [(atoms, dict(energy=-7.5, forces=forces, stress=stress))])
    (graph,) = read_dataset(path)
    assert graph.has_energy.item() and graph.has_forces.item() and graph.has_stress.item()
    assert graph.energy.item() == pytest.approx(-7.5)
    np.testing.assert_allclose(graph.forces.numpy(), forces, atol=1e-12)
    xx, yy, zz, yz, xz, xy = stress
    np.testing.assert_allclose(graph.stress[0].numpy(), [[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]], atol=1e-12)
    assert graph.pbc.all() and graph.weight.item() == 1.0


def test_custom_keys_come_from_info_and_arrays(tmp_path):
    atoms, rng = _periodic_frame()
    forces, stress = rng.normal(size=(3, 3)), rng.normal(size=(3, 3)) * 0.01
    atoms.info.update(REF_energy=-3.25, REF_stress=stress.reshape(9), config_type="bulk", config_weight=2.5)
    atoms.arrays["REF_forces"] = forces
    ase.io.write(tmp_path / "ref.xyz", atoms, format="extxyz")
    (graph,) = read_dataset(
        tmp_path / "ref.xyz", energy_key="REF_energy", forces_key="REF_forces", stress_key="REF_stress"
    )
    assert graph.energy.item() == pytest.approx(-3.25)
    np.testing.assert_allclose(graph.forces.numpy(), forces, atol=1e-12)
    np.testing.assert_allclose(graph.stress[0].numpy(), stress, atol=1e-12)
    assert graph.weight.item() == 2.5 and graph.config_type == "bulk"


@pytest.mark.parametrize("unit, size_in_gpa", [("GPa", 1.0), ("kbar", 0.1), ("bar", 1e-4)])
def test_stress_in_pressure_units_with_compressive_sign_is_converted_to_ase(tmp_path, unit, size_in_gpa):
    atoms, rng = _periodic_frame()
    ase_stress = rng.normal(size=(3, 3)) * 0.01  # eV/Å³, positive = tensile
    in_file = -ase_stress / (size_in_gpa * EV_PER_A3_PER_GPA)
    atoms.info.update(energy=-1.0, virial_free_stress=in_file.reshape(9))
    ase.io.write(tmp_path / "p.xyz", atoms, format="extxyz")
    (graph,) = read_dataset(tmp_path / "p.xyz", stress_key="virial_free_stress", stress_unit=unit, stress_sign=-1)
    np.testing.assert_allclose(graph.stress[0].numpy(), ase_stress, rtol=1e-9, atol=1e-15)


def test_voigt_and_full_stress_in_a_file_agree(tmp_path):
    atoms, _ = _periodic_frame()
    voigt = np.array([1.0, 2.0, 3.0, 0.4, 0.5, 0.6]) * 1e-3
    full = np.array([[1.0, 0.6, 0.5], [0.6, 2.0, 0.4], [0.5, 0.4, 3.0]]) * 1e-3
    first, second = atoms.copy(), atoms.copy()
    first.info.update(energy=0.0, S=voigt)
    second.info.update(energy=0.0, S=full.reshape(9))
    ase.io.write(tmp_path / "s.xyz", [first, second], format="extxyz")
    graphs = read_dataset(tmp_path / "s.xyz", stress_key="S")
    for graph in graphs:
        np.testing.assert_allclose(graph.stress[0].numpy(), full, atol=1e-15)


def test_virial_is_converted_to_stress_by_minus_virial_over_volume(tmp_path):
    atoms, rng = _periodic_frame()
    virial = rng.normal(size=(3, 3))
    virial = virial + virial.T
    atoms.info.update(energy=-2.0, REF_virial=virial.reshape(9))
    ase.io.write(tmp_path / "v.xyz", atoms, format="extxyz")
    (graph,) = read_dataset(tmp_path / "v.xyz", virial_key="REF_virial")
    np.testing.assert_allclose(graph.stress[0].numpy(), -virial / 64.0, atol=1e-14)


def test_frames_without_forces_or_stress_are_masked_not_invented(tmp_path):
    full, rng = _periodic_frame(0)
    no_forces, _ = _periodic_frame(1)
    no_stress, _ = _periodic_frame(2)
    path = _write_with_calculator(
        tmp_path / "mixed.xyz",
        [
            (full, dict(energy=-1.0, forces=rng.normal(size=(3, 3)), stress=np.ones(6) * 1e-3)),
            (no_forces, dict(energy=-2.0, stress=np.ones(6) * 1e-3)),
            (no_stress, dict(energy=-3.0, forces=rng.normal(size=(3, 3)))),
        ],
    )
    graphs = read_dataset(path)
    assert [bool(g.has_forces) for g in graphs] == [True, False, True]
    assert [bool(g.has_stress) for g in graphs] == [True, True, False]
    assert graphs[1].forces.abs().sum() == 0 and graphs[2].stress.abs().sum() == 0


def test_stress_on_a_frame_without_full_periodicity_is_masked_with_a_warning(tmp_path):
    slab, _ = _periodic_frame()
    slab.set_pbc([True, True, False])
    path = _write_with_calculator(tmp_path / "slab.xyz", [(slab, dict(energy=-1.0, stress=np.ones(6) * 1e-3))])
    with pytest.warns(UserWarning, match="not periodic"):
        (graph,) = read_dataset(path)
    assert not graph.has_stress.item() and graph.has_energy.item()


def test_a_dataset_of_forces_only_is_legal(tmp_path):
    atoms = _dimer()
    atoms.arrays["F"] = np.ones((2, 3))
    ase.io.write(tmp_path / "f.xyz", atoms, format="extxyz")
    (graph,) = read_dataset(tmp_path / "f.xyz", forces_key="F", energy_key=None)
    assert not graph.has_energy.item() and graph.has_forces.item()


def test_default_energy_key_absent_everywhere_is_masked_with_a_warning(tmp_path):
    atoms = _dimer()
    atoms.arrays["F"] = np.ones((2, 3))
    ase.io.write(tmp_path / "f.xyz", atoms, format="extxyz")
    with pytest.warns(UserWarning, match="energy"):
        (graph,) = read_dataset(tmp_path / "f.xyz", forces_key="F")
    assert not graph.has_energy.item()


def test_isolated_atom_energies_from_file_and_dict(tmp_path):
    frames = []
    for symbol, energy in (("H", -13.6), ("O", -2041.0)):
        atoms = Atoms(symbol, positions=[[0, 0, 0]])
        atoms.info.update(config_type="IsolatedAtom")
        atoms.calc = SinglePointCalculator(atoms, energy=energy)
        frames.append(atoms)
    molecule = Atoms("OH", positions=[[0, 0, 0], [0.97, 0, 0]])
    molecule.calc = SinglePointCalculator(molecule, energy=-2060.0)
    ase.io.write(tmp_path / "train.xyz", [molecule, *frames], format="extxyz")
    assert read_isolated_atom_energies(tmp_path / "train.xyz") == pytest.approx({1: -13.6, 8: -2041.0})
    assert read_isolated_atom_energies({"H": -1.0, 8: -2.0}) == {1: -1.0, 8: -2.0}


def test_reading_never_modifies_the_file(tmp_path):
    atoms, _ = _periodic_frame()
    path = _write_with_calculator(tmp_path / "keep.xyz", [(atoms, dict(energy=-1.0))])
    before, mtime = path.read_bytes(), os.stat(path).st_mtime_ns
    read_dataset(path)
    assert path.read_bytes() == before and os.stat(path).st_mtime_ns == mtime


def test_header_with_spaces_around_equals_and_no_pbc_is_periodic(tmp_path):
    path = tmp_path / "raw.xyz"
    path.write_text(
        '2\nLattice = "3.3 0.0 0.0 0.0 3.3 0.0 0.0 0.0 3.3" Properties=species:S:1:pos:R:3:forces:R:3 '
        'energy=-23.6 stress="1000.0 0.0 0.0 0.0 1000.0 0.0 0.0 0.0 1000.0"\n'
        "Ta 0.0 0.0 0.0 0.0 0.0 0.0\nTa 1.65 1.65 1.65 0.0 0.0 0.0\n"
    )
    (graph,) = read_dataset(path, stress_unit="bar", stress_sign=-1)
    assert graph.pbc.all() and graph.cell[0, 0, 0].item() == pytest.approx(3.3)
    assert graph.stress[0, 0, 0].item() == pytest.approx(-1000.0 * 1e-4 * EV_PER_A3_PER_GPA)


# --- bad input -----------------------------------------------------------------------------------


def _write_text(tmp_path, text, name="bad.xyz"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nope.xyz.*not found"):
        read_dataset(tmp_path / "nope.xyz")


def test_empty_file_is_named(tmp_path):
    with pytest.raises(DataError, match="empty"):
        read_dataset(_write_text(tmp_path, ""))


def test_unparseable_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match="bad.xyz.*could not be read"):
        read_dataset(_write_text(tmp_path, "3\nenergy=1\nthis is not a structure\n"))


def test_absent_explicit_key_lists_the_keys_that_exist(tmp_path):
    atoms = _dimer()
    atoms.info.update(DFT_energy=-1.0)
    atoms.arrays["DFT_forces"] = np.zeros((2, 3))
    ase.io.write(tmp_path / "k.xyz", atoms, format="extxyz")
    with pytest.raises(DataError, match=r"REF_energy.*DFT_energy.*DFT_forces"):
        read_dataset(tmp_path / "k.xyz", energy_key="REF_energy")


def test_file_without_any_label_is_an_error(tmp_path):
    ase.io.write(tmp_path / "bare.xyz", _dimer(), format="extxyz")
    with pytest.raises(DataError, match="no frame has any label"):
        read_dataset(tmp_path / "bare.xyz")


@pytest.mark.parametrize(
    "line, problem",
    [
        ("Cu nan 0.0 0.0 0.0 0.0 0.0", "positions contain NaN"),
        ("Cu 2.0 0.0 0.0 inf 0.0 0.0", "forces contain NaN"),
    ],
)
def test_nan_or_inf_is_reported_with_the_frame(tmp_path, line, problem):
    good = "2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=-1.0\nAu 0.0 0.0 0.0 0.0 0.0 0.0\nCu 2.0 0.0 0.0 0.0 0.0 0.0\n"
    bad = good.replace("Cu 2.0 0.0 0.0 0.0 0.0 0.0", line)
    with pytest.raises(DataError, match=rf"frame 1: {problem}"):
        read_dataset(_write_text(tmp_path, good + bad))


def test_nan_energy_is_reported(tmp_path):
    text = "2\nProperties=species:S:1:pos:R:3 energy=nan\nAu 0.0 0.0 0.0\nCu 2.0 0.0 0.0\n"
    with pytest.raises(DataError, match="frame 0: energy contain"):
        read_dataset(_write_text(tmp_path, text))


def test_forces_of_the_wrong_shape_are_reported(tmp_path):
    text = "2\nProperties=species:S:1:pos:R:3:F:R:2 energy=-1.0\nAu 0.0 0.0 0.0 0.0 0.0\nCu 2.0 0.0 0.0 0.0 0.0\n"
    with pytest.raises(DataError, match=r"frame 0: forces must have shape \(2, 3\)"):
        read_dataset(_write_text(tmp_path, text), forces_key="F")


@pytest.mark.parametrize(
    "lattice, problem",
    [("0 0 0 0 5 0 0 0 5", "lattice vector is zero"), ("5 0 0 5 0 0 0 0 5", "singular")],
)
def test_zero_or_singular_periodic_cell_is_reported(tmp_path, lattice, problem):
    text = f'2\nLattice="{lattice}" pbc="T T T" Properties=species:S:1:pos:R:3 energy=-1.0\nAu 0 0 0\nCu 2 1 1\n'
    with pytest.raises(DataError, match=problem):
        read_dataset(_write_text(tmp_path, text))


def test_atoms_closer_than_a_tenth_of_an_angstrom_are_reported(tmp_path):
    text = "2\nProperties=species:S:1:pos:R:3 energy=-1.0\nAu 0 0 0\nCu 0.05 0 0\n"
    with pytest.raises(DataError, match=r"bad.xyz, frame 0: atoms 0 and 1 are 0.0500"):
        read_dataset(_write_text(tmp_path, text))


# --- real DFT data (skipped when the shared data folder is absent) --------------------------------


def _shared_data() -> Path:
    folder = Path(os.environ.get("MPNN_IP_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not folder.is_dir():
        pytest.skip(f"shared DFT data not found at {folder} (set MPNN_IP_SHARED_DATA)")
    return folder


def _volume(graph):
    return abs(float(np.linalg.det(graph.cell[0].numpy())))


def _pressure_vs_energy_volume_slope(graphs):
    """(P from stress, -dE/dV) at the midpoints of volume-sorted frames, eV/Å³; P = -trace(σ)/3."""
    ordered = sorted(graphs, key=_volume)
    pairs = []
    for a, b in zip(ordered, ordered[1:]):
        slope = -(b.energy.item() - a.energy.item()) / (_volume(b) - _volume(a))
        pressure = -(np.trace(a.stress[0].numpy()) + np.trace(b.stress[0].numpy())) / 6
        pairs.append((pressure, slope))
    return np.array(pairs)


def _stress_predicts_energy_change(graphs, max_strain=0.03):
    """(ΔE, V σ:ε) for pairs of frames related by a small pure stretch of the cell (same fractional positions)."""
    out = []
    for a_index, a in enumerate(graphs):
        for b in graphs[a_index + 1 :]:
            if a.num_atoms != b.num_atoms:
                continue
            cell_a, cell_b = a.cell[0].numpy(), b.cell[0].numpy()
            frac_a = np.linalg.solve(cell_a.T, a.pos.numpy().T).T
            frac_b = np.linalg.solve(cell_b.T, b.pos.numpy().T).T
            shift = frac_a - frac_b
            if np.abs(shift - np.round(shift)).max() > 1e-4:
                continue
            stretch = np.linalg.solve(cell_a, cell_b)
            strain = stretch - np.eye(3)
            if np.abs(stretch - stretch.T).max() > 1e-6 or not 1e-4 < np.abs(strain).max() < max_strain:
                continue
            volume = (_volume(a) + _volume(b)) / 2
            predicted = volume * np.sum((a.stress[0].numpy() + b.stress[0].numpy()) / 2 * strain)
            out.append((b.energy.item() - a.energy.item(), predicted))
    return np.array(out)


def test_ta_stress_in_bar_compressive_matches_energy_volume_slope():
    path = _shared_data() / "ta_snap" / "Volume_BCC.xyz"
    graphs = read_dataset(path, stress_unit="bar", stress_sign=-1)
    assert all(g.pbc.all() and g.has_stress.item() for g in graphs)
    pairs = _pressure_vs_energy_volume_slope(graphs)
    significant = np.abs(pairs[:, 1]) > 0.05
    assert significant.sum() >= 10
    np.testing.assert_allclose(pairs[significant, 0], pairs[significant, 1], rtol=0.2)
    wrong_sign = _pressure_vs_energy_volume_slope(read_dataset(path, stress_unit="bar", stress_sign=1))
    assert not np.allclose(wrong_sign[significant, 0], wrong_sign[significant, 1], rtol=0.2)


def test_ta_raw_files_all_parse_as_periodic():
    folder = _shared_data() / "ta_snap"
    graphs = [g for path in sorted(folder.glob("*.xyz")) for g in read_dataset(path, stress_unit="bar", stress_sign=-1)]
    assert len(graphs) == 363
    assert all(g.pbc.all() and g.has_energy.item() and g.has_forces.item() for g in graphs)


def test_mlearn_si_stress_is_ase_sign_in_ev_per_cubic_angstrom():
    graphs = [g for g in read_dataset(_shared_data() / "mlearn" / "Si_train.xyz") if g.config_type == "Elastic"]
    pairs = _stress_predicts_energy_change(graphs)
    significant = np.abs(pairs[:, 0]) > 0.05
    assert significant.sum() >= 10
    np.testing.assert_allclose(pairs[significant, 1], pairs[significant, 0], rtol=0.1)
    flipped_sign, in_gpa = -pairs[significant, 1], pairs[significant, 1] / 160.2
    assert not np.allclose(flipped_sign, pairs[significant, 0], rtol=0.1)
    assert not np.allclose(in_gpa, pairs[significant, 0], rtol=0.1)


@pytest.mark.parametrize("relative", ["3bpa/iso_atoms.xyz", "acac/isolated_atoms.xyz", "ethanol/isolated_atoms.xyz"])
def test_isolated_atom_files_of_the_molecular_sets_read(relative):
    energies = read_isolated_atom_energies(_shared_data() / relative)
    assert {1, 6, 8} <= set(energies) and all(e < 0 for e in energies.values())
