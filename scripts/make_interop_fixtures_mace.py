"""Make the mace-torch interop fixtures: small ``.model`` files and mace's own float64 outputs.

Run in the mace-torch venv (mace-torch 0.3.x; this script must not import mpnn_ip)::

    /work/peers/mace/bin/python scripts/make_interop_fixtures_mace.py tests/data/interop/mace

Each variant is built with mace's own constructors in float64, its weights and buffers (E0s, scale,
shift, Bessel frequencies) re-randomised with a fixed seed so that a wrong mapping cannot pass,
saved with ``torch.save(model, ...)`` as ``mace_run_train`` saves ``.model`` files, and xz-compressed
(``<variant>.model.xz``). The structures (a molecule, a bulk cell, a slab, a triclinic
mixed-species cell, a lone atom, a close-contact cluster; built here deterministically with ASE) are written to
``structures.npz``; per variant ``<variant>.npz`` holds mace's energies (eV), forces (eV/Å) and
stresses (eV/Å³) from mace's data path (``config_from_atoms`` -> ``AtomicData.from_config`` ->
batch -> ``model(..., compute_stress=True)``, as ``MACECalculator`` does).
"""

from __future__ import annotations

import io
import json
import lzma
import os
import sys
from pathlib import Path

# e3nn 0.4.4 (mace's pin) torch.load-s its own constants file, which torch >= 2.6 refuses by default
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import ase  # noqa: E402
import ase.build  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from e3nn import o3  # noqa: E402
from mace import data as mace_data  # noqa: E402
from mace import modules  # noqa: E402
from mace.tools import torch_geometric, utils  # noqa: E402

torch.set_default_dtype(torch.float64)

ZS = [1, 6, 8]
BASE = dict(
    r_max=4.0,
    num_bessel=8,
    num_polynomial_cutoff=5,
    max_ell=3,
    interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
    interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
    num_interactions=2,
    num_elements=len(ZS),
    hidden_irreps=o3.Irreps("8x0e+8x1o"),
    MLP_irreps=o3.Irreps("16x0e"),
    atomic_energies=np.array([-13.6, -1029.4, -2041.8]),
    avg_num_neighbors=7.3,
    atomic_numbers=ZS,
    correlation=3,
    gate=torch.nn.functional.silu,
    radial_MLP=[64, 64, 64],
    use_reduced_cg=False,
)

#: name -> (class, changes to BASE); the MACE-MP/OFF/mace_run_train family first.
VARIANTS = {
    "scaleshift_residual_l3_c3": ("ScaleShiftMACE", {}),
    "plain_first_l2_c2": (
        "MACE",
        dict(
            interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
            max_ell=2,
            correlation=[2, 1],
            hidden_irreps=o3.Irreps("6x0e+6x1o+6x2e"),
            radial_MLP=[32],
            num_bessel=6,
            num_polynomial_cutoff=6,
            use_reduced_cg=True,
        ),
    ),
    "scaleshift_l1_three_layers": (
        "ScaleShiftMACE",
        dict(
            max_ell=1,
            num_interactions=3,
            correlation=[1, 2, 1],
            radial_MLP=[16, 16, 16, 16],
            num_bessel=10,
            num_polynomial_cutoff=3,
            MLP_irreps=o3.Irreps("8x0e"),
        ),
    ),
    "scaleshift_gaussian_agnesi_zbl": (
        "ScaleShiftMACE",
        dict(
            radial_type="gaussian",
            distance_transform="Agnesi",
            pair_repulsion=True,
            max_ell=2,
            correlation=2,
            radial_MLP=[16, 16],
        ),
    ),
    "plain_soft_zbl": (
        "MACE",
        dict(distance_transform="Soft", pair_repulsion=True, max_ell=2, correlation=2, radial_MLP=[16, 16]),
    ),
    "multihead": (
        "ScaleShiftMACE",
        dict(
            heads=["pbe", "r2scan"],
            atomic_energies=np.array([[-13.6, -1029.4, -2041.8], [-12.1, -1027.0, -2043.3]]),
            max_ell=2,
            correlation=2,
            radial_MLP=[16, 16],
        ),
    ),
    "scaleshift_single_layer": (
        "ScaleShiftMACE",
        dict(num_interactions=1, hidden_irreps=o3.Irreps("8x0e"), max_ell=2, correlation=2, radial_MLP=[8]),
    ),
    "refused_density": (
        "ScaleShiftMACE",
        dict(
            interaction_cls=modules.interaction_classes["RealAgnosticDensityResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticDensityInteractionBlock"],
            hidden_irreps=o3.Irreps("4x0e"),
            max_ell=1,
            correlation=1,
            radial_MLP=[8],
        ),
    ),
}


def structures() -> dict[str, ase.Atoms]:
    """Fixed test structures (H, C, O), rattled deterministically."""
    rng = np.random.RandomState(7)
    molecule = ase.build.molecule("CH3OH")
    molecule.positions += rng.normal(0, 0.05, molecule.positions.shape)
    bulk = ase.build.bulk("C", "diamond", a=3.57, cubic=True)
    bulk.positions += rng.normal(0, 0.08, bulk.positions.shape)
    slab = ase.build.bulk("C", "diamond", a=3.57, cubic=True)
    slab.center(vacuum=4.0, axis=2)
    slab.pbc = (True, True, False)
    slab += ase.Atoms(
        "OH", positions=[slab.positions[slab.positions[:, 2].argmax()] + [0.3, 0.2, 1.3], [0.0, 0.0, 0.0]]
    )
    slab.positions[-1] = slab.positions[-2] + [0.7, 0.1, 0.6]
    slab.positions += rng.normal(0, 0.05, slab.positions.shape)
    cell = np.array([[3.3, 0.0, 0.0], [0.7, 3.1, 0.0], [0.5, -0.6, 3.4]])
    fractional = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.1], [0.25, 0.7, 0.6], [0.8, 0.2, 0.45], [0.1, 0.45, 0.8]])
    triclinic = ase.Atoms(
        "COHOH", scaled_positions=fractional + rng.normal(0, 0.02, fractional.shape), cell=cell, pbc=True
    )
    lone = ase.Atoms("O", positions=[[0.1, 0.2, 0.3]])
    # pairs well inside the sum of covalent radii, where the ZBL repulsion and the distance transforms matter
    close = ase.Atoms("CCOH", positions=[[0.0, 0.0, 0.0], [1.05, 0.1, 0.0], [-0.3, 0.75, 0.2], [0.2, -0.45, 0.4]])
    return {
        "molecule": molecule,
        "bulk": bulk,
        "slab": slab,
        "triclinic": triclinic,
        "lone_atom": lone,
        "close_contact": close,
    }


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights and buffers, so that every mapping of the importer is exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.5 if "symmetric_contractions" in name else 1.0
            values = scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            # multiples of 1/64: as non-trivial for the mapping, but few mantissa bits, so the files compress
            parameter.copy_(torch.round(values * 64.0) / 64.0)
        for name, buffer in model.named_buffers():
            if name.endswith("bessel_weights"):
                buffer.mul_(1.0 + 0.05 * torch.rand(buffer.shape, generator=generator, dtype=buffer.dtype))
            elif name.endswith("scale_shift.scale"):
                buffer.copy_(1.0 + torch.rand(buffer.shape, generator=generator, dtype=buffer.dtype))
            elif name.endswith("scale_shift.shift"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator, dtype=buffer.dtype))
            elif name.endswith("atomic_energies"):
                buffer.add_(torch.randn(buffer.shape, generator=generator, dtype=buffer.dtype))


def build(kind: str, changes: dict, seed: int) -> torch.nn.Module:
    kwargs = {**BASE, **changes}
    if kind == "ScaleShiftMACE":
        heads = kwargs.get("heads") or ["Default"]
        model = modules.ScaleShiftMACE(
            atomic_inter_scale=[1.0] * len(heads), atomic_inter_shift=[0.0] * len(heads), **kwargs
        )
    else:
        model = modules.MACE(**kwargs)
    randomise(model, seed)
    return model.eval()


def evaluate(model: torch.nn.Module, atoms: ase.Atoms, head: str) -> dict[str, np.ndarray]:
    """mace's energy, forces and stress of one structure through mace's own data path."""
    z_table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    heads = list(model.heads)
    config = mace_data.config_from_atoms(atoms, head_name=head)
    graph = mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=float(model.r_max), heads=heads)
    loader = torch_geometric.dataloader.DataLoader(dataset=[graph], batch_size=1, shuffle=False, drop_last=False)
    batch = next(iter(loader))
    out = model(batch.to_dict(), compute_stress=True)
    stress = out["stress"] if out["stress"] is not None else torch.zeros(1, 3, 3)
    return {
        "energy": out["energy"].detach().numpy().reshape(()),
        "forces": out["forces"].detach().numpy(),
        "stress": stress.detach().numpy().reshape(3, 3),
    }


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atoms_by_name = structures()
    arrays = {}
    for name, atoms in atoms_by_name.items():
        arrays[f"{name}.numbers"] = atoms.numbers
        arrays[f"{name}.positions"] = atoms.positions
        arrays[f"{name}.cell"] = np.array(atoms.cell)
        arrays[f"{name}.pbc"] = atoms.pbc
    np.savez(out / "structures.npz", names=np.array(list(atoms_by_name)), **arrays)
    manifest = {}
    for seed, (variant, (kind, changes)) in enumerate(VARIANTS.items()):
        model = build(kind, changes, seed)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        (out / f"{variant}.model.xz").write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))
        manifest[variant] = {"class": kind, "heads": list(model.heads)}
        if variant.startswith("refused"):
            continue
        results = {}
        for head in model.heads:
            for name, atoms in atoms_by_name.items():
                for key, value in evaluate(model, atoms, head).items():
                    results[f"{head}.{name}.{key}"] = value
        np.savez(out / f"{variant}.npz", **results)
        print(variant, {h: float(results[f"{h}.bulk.energy"]) for h in model.heads})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/interop/mace")
