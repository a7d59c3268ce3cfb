#!/usr/bin/env python
"""Steps per second of NVE molecular dynamics through ASE: ours and the peers' own ASE calculators.

Fcc Cu (``--atoms`` = 4 n³, default 2,048), rattled 0.01 Å, 300 K Maxwell-Boltzmann velocities,
velocity Verlet, 1 fs, float32, ``--threads`` threads; ``--warmup`` untimed steps, then
``--steps`` timed. Models have random weights (speed only) at matched sizes:

* ``small``: the harness sizes of ``../shared/bench`` (NequIP-s, MACE-s, r_max 5 Å);
* ``tiny``: the quickstart presets (``configs/model/nequip_tiny.yaml``, ``mace_tiny.yaml``, r_max 4.5 Å).

Runs with the python of the code it times (the peers live in their own venvs):

    python scripts/benchmark_md.py --code ours --model nequip --size tiny --skin 1.0
    python scripts/benchmark_md.py --code ours --model nequip --size tiny --skin 0      # graph searched every step
    python scripts/benchmark_md.py --code ours --model nequip --size tiny --exported    # AOTInductor .pt2 (mpnn-export)
    ../peers/mace/bin/python scripts/benchmark_md.py --code mace --size tiny           # mace.calculators.MACECalculator
    ../peers/nequip/bin/python scripts/benchmark_md.py --code nequip --size tiny       # nequip.integrations.ase.NequIPCalculator
    python scripts/benchmark_md.py --code ours --model-file mace.model                 # a peer's file, imported (mpnn-import)
    ../peers/mace/bin/python scripts/benchmark_md.py --code mace --model-file mace.model  # the same weights in mace-torch

Prints one JSON line: steps/s, seconds per step, atoms·steps/s and (ours) the share of steps
that searched the radius graph. No asserts; compare codes within one run of this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

R_MAX = {"small": 5.0, "tiny": 4.5}
#: ours: keyword arguments of mpnn_ip.models.build_model
OURS = {
    ("nequip", "small"): dict(
        num_layers=4, l_max=2, parity=True, num_features=32, radial_mlp=[64, 64], num_bessel=8, cutoff_p=6
    ),
    ("mace", "small"): dict(
        num_interactions=2,
        hidden_irreps="64x0e+64x1o",
        max_ell=3,
        correlation=3,
        num_bessel=8,
        radial_mlp=[64, 64, 64],
        cutoff_p=5,
    ),
    ("nequip", "tiny"): dict(num_layers=2, l_max=1, num_features=16, radial_mlp=[32]),
    ("mace", "tiny"): dict(
        hidden_irreps="16x0e+16x1o", max_ell=2, correlation=2, radial_mlp=[32], mlp_readout_irreps="8x0e"
    ),
}
#: NequIP 0.19.1: nequip.model.NequIPGNNModel arguments (as ../shared/bench/peers_nequip.py)
NEQUIP = {
    "small": dict(
        num_layers=4,
        l_max=2,
        parity=True,
        num_features=32,
        radial_mlp_depth=2,
        radial_mlp_width=64,
        num_bessels=8,
        polynomial_cutoff_p=6,
    ),
    "tiny": dict(
        num_layers=2,
        l_max=1,
        parity=True,
        num_features=16,
        radial_mlp_depth=1,
        radial_mlp_width=32,
        num_bessels=8,
        polynomial_cutoff_p=6,
    ),
}
#: mace-torch 0.3.16: mace.modules.ScaleShiftMACE arguments (as ../shared/bench/peers_mace.py)
MACE = {
    "small": dict(
        num_interactions=2,
        hidden_irreps="64x0e+64x1o",
        max_ell=3,
        correlation=3,
        num_bessel=8,
        num_polynomial_cutoff=5,
        radial_MLP=[64, 64, 64],
        MLP_irreps="16x0e",
    ),
    "tiny": dict(
        num_interactions=2,
        hidden_irreps="16x0e+16x1o",
        max_ell=2,
        correlation=2,
        num_bessel=8,
        num_polynomial_cutoff=5,
        radial_MLP=[32],
        MLP_irreps="8x0e",
    ),
}


def copper(n_atoms: int):
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    n = round((n_atoms / 4) ** (1 / 3))
    if 4 * n**3 != n_atoms:
        raise SystemExit(f"--atoms must be 4 n^3 (fcc cubic cells), got {n_atoms}")
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((n, n, n))
    rng = np.random.default_rng(0)
    atoms.positions += rng.normal(0.0, 0.01, atoms.positions.shape)
    with warnings.catch_warnings():  # newer ASE prefers thermalize_momenta; the peers' ASE may not have it
        warnings.simplefilter("ignore", DeprecationWarning)
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=rng)
    return atoms


def ours_model(family: str, size: str, species=(29,), edge_chunk_size: int | None = None):
    """Our ``family`` at ``size`` with random weights, float32, eval mode."""
    import torch

    from mpnn_ip.models import build_model

    torch.manual_seed(0)
    model = build_model(
        family, species=list(species), r_max=R_MAX[size], avg_num_neighbors=40.0, **OURS[(family, size)]
    )
    if edge_chunk_size is not None:
        model.set_edge_chunk_size(edge_chunk_size)
    return model.to(torch.float32).eval()


def ours_calculator(args, atoms):
    import torch

    from mpnn_ip.calculators import MPNNCalculator

    if args.model_file:  # a peer's model file, imported: the same weights as --code mace/nequip --model-file
        from mpnn_ip.interop import import_model

        model = import_model(args.model_file).to(torch.float32)
    else:
        model = ours_model(args.model, args.size, edge_chunk_size=args.edge_chunk_size)
    if args.exported:  # AOTInductor-compiled energy+forces (mpnn-export), ASE's neighbour list
        from mpnn_ip.export import export_model

        path = Path(tempfile.mkdtemp()) / "model.pt2"
        start = time.perf_counter()
        export_model(model, path, compile=True)
        print(f"# exported and compiled in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        return MPNNCalculator.from_exported(path)
    return MPNNCalculator(model, skin=args.skin, compile=args.compile)


def nequip_calculator(args, atoms):
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.integrations.ase import NequIPCalculator
    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import set_global_state

    if args.model_file:
        return NequIPCalculator._from_saved_model(args.model_file, device="cpu")
    set_global_state()
    model = NequIPGNNModel(
        type_names=["Cu"],
        avg_num_neighbors=40.0,
        r_max=R_MAX[args.size],
        bessel_trainable=False,
        model_dtype="float32",
        seed=0,
        per_type_energy_scales=1.0,
        per_type_energy_shifts=0.0,
        **NEQUIP[args.size],
    ).eval()
    transforms = [
        ChemicalSpeciesToAtomTypeMapper(model_type_names=["Cu"]),
        NeighborListTransform(r_max=R_MAX[args.size]),
    ]
    return NequIPCalculator(model, device="cpu", transforms=transforms)


def mace_model(size: str, atomic_numbers=(29,)):
    """mace-torch's ScaleShiftMACE at ``size`` with random weights, float32 (run with mace-torch's python)."""
    import torch
    from e3nn import o3
    from mace import modules

    torch.manual_seed(0)
    torch.set_default_dtype(torch.float32)
    hp = dict(MACE[size])
    return modules.ScaleShiftMACE(
        r_max=R_MAX[size],
        num_bessel=hp.pop("num_bessel"),
        num_polynomial_cutoff=hp.pop("num_polynomial_cutoff"),
        max_ell=hp.pop("max_ell"),
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=hp.pop("num_interactions"),
        hidden_irreps=o3.Irreps(hp.pop("hidden_irreps")),
        MLP_irreps=o3.Irreps(hp.pop("MLP_irreps")),
        atomic_energies=np.zeros(len(atomic_numbers)),
        avg_num_neighbors=40.0,
        atomic_numbers=list(atomic_numbers),
        num_elements=len(atomic_numbers),
        correlation=hp.pop("correlation"),
        gate=torch.nn.functional.silu,
        radial_MLP=hp.pop("radial_MLP"),
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
        use_reduced_cg=False,
    )


def mace_calculator(args, atoms):
    import torch
    from mace.calculators import MACECalculator

    if args.model_file:
        return MACECalculator(model_paths=args.model_file, device="cpu", default_dtype="float32")
    model = mace_model(args.size)
    path = Path(tempfile.mkdtemp()) / "mace.model"
    torch.save(model, path)
    return MACECalculator(model_paths=str(path), device="cpu", default_dtype="float32")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--code", choices=["ours", "nequip", "mace"], default="ours")
    parser.add_argument(
        "--model", choices=["nequip", "mace"], default=None, help="ours: which family (default: --code's)"
    )
    parser.add_argument("--size", choices=sorted(R_MAX), default="tiny")
    parser.add_argument("--atoms", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--skin", type=float, default=1.0, help="ours: Verlet skin (Å); 0 = search the graph every step"
    )
    parser.add_argument("--edge-chunk-size", type=int, default=None, help="ours: edges per recomputed chunk (0 = off)")
    parser.add_argument(
        "--exported", action="store_true", help="ours: AOTInductor-compiled model (mpnn-export) instead of eager"
    )
    parser.add_argument(
        "--compile",
        choices=["auto", "true", "false"],
        default="auto",
        help="ours: torch.compile decided on the first step (mpnn_ip.models.compiled; auto: CPU from 1,000 atoms)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--model-file",
        default=None,
        help="a mace-torch .model or NequIP .ckpt/.nequip.zip: its weights (ours: imported) instead of random ones",
    )
    args = parser.parse_args(argv)
    args.model = args.model or ("nequip" if args.code == "ours" else args.code)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.code == "mace":  # e3nn 0.4.4 (mace-torch's pin) loads its constants with torch.load's old default
        os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import torch
    from ase import units
    from ase.md.verlet import VelocityVerlet

    torch.set_num_threads(args.threads)
    atoms = copper(args.atoms)
    atoms.calc = {"ours": ours_calculator, "nequip": nequip_calculator, "mace": mace_calculator}[args.code](args, atoms)
    dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dynamics.run(args.warmup)
    start = time.perf_counter()
    dynamics.run(args.steps)
    seconds = time.perf_counter() - start
    record = dict(
        code=args.code,
        model=Path(args.model_file).name if args.model_file else f"{args.model}-{args.size}",
        atoms=len(atoms),
        steps=args.steps,
        threads=args.threads,
        steps_per_s=args.steps / seconds,
        s_per_step=seconds / args.steps,
        atom_steps_per_s=len(atoms) * args.steps / seconds,
        energy_eV=float(atoms.get_potential_energy()),
    )
    neighbor_list = getattr(atoms.calc, "neighbor_list", None)
    if args.code == "ours":
        record.update(
            skin=args.skin,
            graph_rebuild_fraction=getattr(neighbor_list, "rebuild_fraction", None),
            exported=args.exported,
        )
        decision = getattr(atoms.calc, "compile_decision", None)
        record["compile"] = None if decision is None else str(decision)
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
