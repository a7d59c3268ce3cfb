"""``mpnn-import check_with=<python>``: run the original package on sample structures and compare.

The user's own environment of the source package (mace-torch or nequip) evaluates the file with
:mod:`mpnn_ip.interop.peer_eval` in a subprocess; our imported model evaluates the same structures;
any disagreement beyond the tolerances raises :class:`ParityError`, and the importer then writes
nothing. Sample structures use the model's own elements: a molecule-like cluster, a cubic and a
triclinic periodic cell with mixed species, a slab, and a lone atom.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from mpnn_ip.errors import ConfigError
from mpnn_ip.models import Potential

#: Largest allowed differences in float64 (eV/atom, eV/Å, eV/Å³), as the parity tests use.
TOLERANCES = {"energy_per_atom": 1e-6, "forces": 1e-5, "stress": 1e-6}
#: Extra factor when the source computes in float32 (e.g. a NequIP model_dtype=float32).
FLOAT32_FACTOR = 1e3
PEER_TIMEOUT_S = 600


class ParityError(ConfigError):
    """The imported model and the original package disagree; the message gives the errors."""


def sample_structures(species: Sequence[int], r_max: float, seed: int = 0) -> list[Atoms]:
    """Deterministic structures made of ``species`` (atomic numbers) with neighbours inside ``r_max`` (Å)."""
    rng = np.random.default_rng(seed)
    numbers = list(species)

    def pick(n):
        return [numbers[i % len(numbers)] for i in range(n)]

    spacing = min(2.2, 0.55 * r_max)
    grid = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)], dtype=float) * spacing
    cluster = Atoms(numbers=pick(7), positions=grid[:7] + rng.normal(scale=0.1, size=(7, 3)), pbc=False)
    cubic = Atoms(
        numbers=pick(8), positions=grid + rng.normal(scale=0.1, size=(8, 3)), cell=np.eye(3) * 2 * spacing, pbc=True
    )
    cell = np.array([[2.0, 0.0, 0.0], [0.6, 1.9, 0.0], [0.4, 0.5, 2.1]]) * spacing
    triclinic = Atoms(numbers=pick(5)[::-1], scaled_positions=rng.uniform(size=(5, 3)), cell=cell, pbc=True)
    slab = Atoms(
        numbers=pick(8),
        positions=grid + rng.normal(scale=0.1, size=(8, 3)),
        cell=np.diag([2 * spacing, 2 * spacing, 6 * spacing]),
        pbc=[True, True, False],
    )
    lone = Atoms(numbers=numbers[:1], positions=[[0.0, 0.0, 0.0]], pbc=False)
    for name, atoms in zip(
        ("cluster", "cubic", "triclinic", "slab", "lone_atom"), (cluster, cubic, triclinic, slab, lone)
    ):
        atoms.info["name"] = name
    return [cluster, cubic, triclinic, slab, lone]


def peer_results(python: str, source: Path, package: str, structures: list[Atoms], head: str | None) -> dict:
    """What the original package computes for ``structures``, run by ``python`` (the user's environment)."""
    import ase.io

    with tempfile.TemporaryDirectory() as tmp:
        # a copy away from this package: run from here, its folder would shadow the peers' own `mace`/`nequip`
        script = Path(tmp) / "peer_eval.py"
        script.write_text(Path(__file__).with_name("peer_eval.py").read_text())
        xyz, out = Path(tmp) / "structures.extxyz", Path(tmp) / "peer.json"
        ase.io.write(xyz, structures, format="extxyz")
        command = [python, str(script), str(source), str(xyz), str(out), package, head or ""]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PEER_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(
                f"check_with={python}: could not run it ({exc}); give the python of an environment with {package}"
            ) from exc
        if done.returncode != 0 or not out.is_file():
            tail = "\n".join(done.stderr.strip().splitlines()[-6:])
            raise ConfigError(
                f"check_with={python}: evaluating {source} with {package} there failed (exit {done.returncode}):\n{tail}"
            )
        return json.loads(out.read_text())


def our_results(model: Potential, structures: list[Atoms]) -> list[dict]:
    """Energy (eV), forces (eV/Å) and stress (eV/Å³, periodic cells only) of our model, float64."""
    from mpnn_ip.data.atomic_graph import AtomicGraph, collate, to_inputs

    out = []
    for atoms in structures:
        periodic = bool(atoms.pbc.all())
        result = model(
            to_inputs(collate([AtomicGraph.from_atoms(atoms)])), compute_forces=True, compute_stress=periodic
        )
        out.append(
            {
                "energy": float(result["energy"][0].detach()),
                "forces": result["forces"].detach().double().numpy(),
                "stress": result["stress"][0].detach().double().numpy() if periodic else None,
            }
        )
    return out


def parity_errors(ours: list[dict], theirs: list[dict], structures: list[Atoms]) -> dict[str, float]:
    """Largest |ours - theirs| per quantity: energy per atom (eV), forces (eV/Å), stress (eV/Å³)."""
    errors = {"energy_per_atom": 0.0, "forces": 0.0, "stress": 0.0}
    for a, b, atoms in zip(ours, theirs, structures):
        errors["energy_per_atom"] = max(errors["energy_per_atom"], abs(a["energy"] - b["energy"]) / len(atoms))
        errors["forces"] = max(errors["forces"], float(np.abs(a["forces"] - np.asarray(b["forces"])).max()))
        if a["stress"] is not None and b.get("stress") is not None:
            errors["stress"] = max(errors["stress"], float(np.abs(a["stress"] - np.asarray(b["stress"])).max()))
    return errors


def _float32_source(source: dict) -> bool:
    hyper = source.get("hyperparameters") or {}
    return str(hyper.get("model_dtype", hyper.get("default_dtype", ""))).removeprefix("torch.") == "float32"


def compare_with_peer(python: str, path: str | Path) -> Callable[[Potential, dict], dict]:
    """A check for :func:`~mpnn_ip.interop.importer.write_imported_checkpoint`: ``check(model, source)`` runs
    the source package (``source["package"]``) with ``python`` on :func:`sample_structures` and raises
    :class:`ParityError` when it and the imported model disagree; returns the largest errors otherwise."""

    def check(model: Potential, source: dict) -> dict:
        package, head = source["package"], source.get("head")
        if head is None and len(source.get("heads") or []) > 1:
            head = source["heads"][0]  # all heads imported: ours evaluates its default head, the first
        structures = sample_structures(model.species, model.r_max)
        theirs = peer_results(python, Path(path), package, structures, head)["results"]
        errors = parity_errors(our_results(model, structures), theirs, structures)
        factor = FLOAT32_FACTOR if _float32_source(source) else 1.0
        failed = {k: v for k, v in errors.items() if v > TOLERANCES[k] * factor}
        if failed:
            detail = ", ".join(f"{k} {v:.2e} (tolerance {TOLERANCES[k] * factor:.0e})" for k, v in failed.items())
            raise ParityError(
                f"the imported model does not reproduce {path} as {package} computes it: {detail}. No checkpoint was "
                "written. Please report this with the model's hyper-parameters."
            )
        return errors

    return check
