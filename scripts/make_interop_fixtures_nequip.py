"""Write the NequIP 0.19 interop fixtures: real training checkpoints, a ``nequip-package`` file, and nequip's outputs.

Run with the python of the nequip peer venv (it must not import mpnn_ip):

    /work/peers/nequip/bin/python scripts/make_interop_fixtures_nequip.py tests/data/interop/nequip

For every variant of :data:`VARIANTS` it trains a ``NequIPGNNModel`` for two optimiser steps
with ``nequip-train`` (float64, on a tiny EMT data set written under a temporary directory; a
large learning rate so every weight, the Bessel frequencies and the per-type scales/shifts move
away from their initial values), keeps the last checkpoint without its optimiser state (nequip's
own loader still reads it; verified by loading it back), and writes ``<variant>.ckpt.xz``.
The package variants are built from its checkpoint with ``nequip-package build`` and written as
``<variant>.nequip.zip.xz``. Reference outputs come from the model that nequip's own loaders
(``ModelFromCheckpoint``, ``load_saved_model``) build from those files, evaluated with
``NequIPCalculator`` on the structures of :func:`structures`: ``<variant>.reference.json`` holds
energy (eV), forces (eV/Å) and stress (eV/Å³, 3x3, ASE sign) per structure.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.io import write

BIN = Path(sys.executable).parent

#: model options per variant, on top of :data:`COMMON_MODEL` (the nequip-s settings of
#: /work/shared/bench/peers_nequip.py, with few features to keep the files small)
VARIANTS = {
    "nequip_s": dict(
        type_names=["H", "C", "O"],
        num_layers=4,
        l_max=2,
        parity=True,
        num_features=4,
        radial_mlp_depth=2,
        radial_mlp_width=64,
        per_type_energy_scales={"H": 0.7, "C": 1.3, "O": 0.9},
        per_type_energy_shifts={"H": -3.1, "C": -7.4, "O": -5.2},
        per_type_energy_scales_trainable=True,
        per_type_energy_shifts_trainable=True,
        avg_num_neighbors=7.3,
    ),
    "parity_false_l1": dict(
        type_names=["C", "O"],
        num_layers=2,
        l_max=1,
        parity=False,
        num_features=6,
        radial_mlp_depth=1,
        radial_mlp_width=12,
        per_type_energy_scales=1.7,
        per_type_energy_shifts=-2.5,
        avg_num_neighbors=3.1,
    ),
    "l3_one_layer": dict(
        type_names=["oxy", "hyd"],
        elements=["O", "H"],
        num_layers=1,
        l_max=3,
        parity=True,
        num_features=3,
        radial_mlp_depth=3,
        radial_mlp_width=8,
        per_type_energy_scales={"hyd": 0.5, "oxy": 2.0},
        per_type_energy_shifts={"hyd": 0.3, "oxy": -1.1},
        avg_num_neighbors=11.0,
    ),
    "five_layers_extras": dict(
        type_names=["O", "H", "C"],
        num_layers=5,
        l_max=1,
        parity=True,
        num_features=[5, 3],
        type_embed_num_features=7,
        radial_mlp_depth=1,
        radial_mlp_width=10,
        readout_mlp_hidden_layers_depth=2,
        readout_mlp_hidden_layers_width=6,
        convnet_resnet=True,
        per_type_energy_scales=1.2,
        per_type_energy_shifts={"H": -1.0, "C": -2.0, "O": -3.0},
        per_type_energy_scales_trainable=True,
        per_type_energy_shifts_trainable=True,
        avg_num_neighbors=5.5,
    ),
    "zbl_three_layers": dict(
        type_names=["C", "H"],
        num_layers=3,
        l_max=1,
        parity=True,
        num_features=4,
        radial_mlp_depth=1,
        radial_mlp_width=8,
        per_type_energy_scales={"C": 0.8, "H": 0.4},
        per_type_energy_shifts={"C": -4.0, "H": -1.5},
        avg_num_neighbors=4.2,
        pair_potential={"_target_": "nequip.nn.pair_potential.ZBL", "units": "metal", "chemical_species": ["C", "H"]},
    ),
    "ema_per_type_neighbors": dict(
        ema_decay=0.5,
        type_names=["O", "C"],
        num_layers=2,
        l_max=2,
        parity=False,
        num_features=4,
        radial_mlp_depth=1,
        radial_mlp_width=8,
        per_type_energy_scales={"O": 1.1, "C": 0.6},
        per_type_energy_shifts={"O": -2.0, "C": -3.3},
        per_type_energy_scales_trainable=True,
        avg_num_neighbors={"O": 2.5, "C": 6.0},
    ),
}
#: variant keys that configure the training, not the model
TRAINING_KEYS = ("elements", "ema_decay")
#: the variants also written as ``nequip-package`` files
PACKAGED = ("nequip_s", "parity_false_l1")

COMMON_MODEL = dict(
    _target_="nequip.model.NequIPGNNModel",
    seed=1234,
    model_dtype="float64",
    r_max=4.0,
    num_bessels=8,
    bessel_trainable=True,
    polynomial_cutoff_p=6,
)


def structures() -> dict[str, Atoms]:
    """The fixed test structures (deterministic): elements H, C, O only, remapped per variant."""
    rng = np.random.default_rng(7)
    out = {}
    out["molecule"] = molecule("CH3CH2OH")
    diamond = bulk("C", "diamond", a=3.567, cubic=True)
    diamond.rattle(0.05, seed=1)
    out["bulk"] = diamond
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0, a=3.2)
    slab.set_chemical_symbols(["C", "O", "C"] * 4)
    slab.rattle(0.05, seed=2)
    slab.pbc = (True, True, False)
    out["slab"] = slab
    cell = np.array([[3.4, 0.0, 0.0], [1.1, 3.2, 0.0], [0.7, -0.9, 3.6]])
    frac = rng.random((6, 3))
    out["triclinic"] = Atoms("HCOHCO", scaled_positions=frac, cell=cell, pbc=True)
    out["lone_atom"] = Atoms("O", positions=[[0.0, 0.0, 0.0]])
    return out


def elements_of(options: dict) -> list[str]:
    """The chemical element of each atom type (the type names themselves unless the variant says otherwise)."""
    return options.get("elements", options["type_names"])


def type_map(options: dict) -> dict[str, str] | None:
    """``chemical_species_to_atom_type_map`` when the type names are not the chemical symbols."""
    if "elements" not in options:
        return None
    return dict(zip(options["elements"], options["type_names"]))


def for_types(atoms: Atoms, elements: list[str]) -> Atoms:
    """Replace every element the model does not know by one it does (deterministically)."""
    atoms = atoms.copy()
    elements = sorted(elements)
    symbols = [s if s in elements else elements[i % len(elements)] for i, s in enumerate(atoms.get_chemical_symbols())]
    atoms.set_chemical_symbols(symbols)
    return atoms


def training_data(path: Path, elements: list[str]) -> None:
    """A few rattled EMT-labelled frames (EMT knows H, C, O), energies/forces/stress in the extxyz."""
    frames = []
    for index, atoms in enumerate(structures().values()):
        if len(atoms) < 2:
            continue
        for k in range(2):
            frame = for_types(atoms, elements)
            frame.rattle(0.1, seed=10 * index + k)
            if not frame.pbc.any():
                frame.center(vacuum=3.0)
            frame.calc = EMT()
            frame.get_potential_energy()
            frames.append(frame)
    write(path, frames, format="extxyz")


def train_config(workdir: Path, model: dict, mapping: dict | None, ema_decay: float | None) -> dict:
    data = str(workdir / "train.xyz")
    type_names = model["type_names"]
    mapper = {"_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper", "model_type_names": type_names}
    if mapping:
        mapper["chemical_species_to_atom_type_map"] = mapping
    return {
        "run": ["train"],
        "data": {
            "_target_": "nequip.data.datamodule.ASEDataModule",
            "seed": 3,
            "train_file_path": data,
            "val_file_path": data,
            "transforms": [
                mapper,
                {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": model["r_max"]},
            ],
            "train_dataloader": {"_target_": "torch.utils.data.DataLoader", "batch_size": 4, "shuffle": False},
            "val_dataloader": {"_target_": "torch.utils.data.DataLoader", "batch_size": 4},
            "stats_manager": {"_target_": "nequip.data.CommonDataStatisticsManager", "type_names": type_names},
        },
        "trainer": {
            "_target_": "lightning.Trainer",
            "max_steps": 2,
            "max_epochs": 1,
            "limit_val_batches": 1,
            "accelerator": "cpu",
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [
                {
                    "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "dirpath": str(workdir / "ckpt"),
                    "save_last": True,
                }
            ],
        },
        "training_module": {
            "_target_": "nequip.train.NequIPLightningModule"
            if ema_decay is None
            else "nequip.train.EMALightningModule",
            **({} if ema_decay is None else {"ema_decay": ema_decay}),
            "loss": {
                "_target_": "nequip.train.EnergyForceLoss",
                "per_atom_energy": True,
                "coeffs": {"total_energy": 1.0, "forces": 1.0},
            },
            "val_metrics": {
                "_target_": "nequip.train.EnergyForceMetrics",
                "coeffs": {"total_energy_mae": 1.0, "forces_mae": 1.0},
            },
            "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.05},
            "model": model,
        },
        "global_options": {"allow_tf32": False},
    }


def run(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")


def train(name: str, options: dict, workdir: Path) -> Path:
    model = {**COMMON_MODEL, **{k: v for k, v in options.items() if k not in TRAINING_KEYS}}
    training_data(workdir / "train.xyz", elements_of(options))
    with open(workdir / "config.yaml", "w") as f:
        yaml.safe_dump(train_config(workdir, model, type_map(options), options.get("ema_decay")), f)
    run(
        [str(BIN / "nequip-train"), "-cp", str(workdir), "-cn", "config", f"hydra.run.dir={workdir / 'hydra'}"], workdir
    )
    return workdir / "ckpt" / "last.ckpt"


def strip_optimizer(ckpt: Path, out: Path) -> None:
    """Drop the optimiser/scheduler/loop state (not needed to rebuild the model) to keep fixtures small."""
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    for key in ("optimizer_states", "lr_schedulers", "loops", "callbacks", "ASEDataModule"):
        state.pop(key, None)
    torch.save(state, out)


def reference_outputs(model, options: dict) -> dict:
    from ase.stress import voigt_6_to_full_3x3_stress
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.integrations.ase import NequIPCalculator

    model.eval()
    calc = NequIPCalculator(
        model,
        device="cpu",
        transforms=[
            ChemicalSpeciesToAtomTypeMapper(
                model_type_names=options["type_names"], chemical_species_to_atom_type_map=type_map(options)
            ),
            NeighborListTransform(r_max=R_MAX),
        ],
    )
    out = {}
    for label, atoms in structures().items():
        atoms = for_types(atoms, elements_of(options))
        atoms.calc = calc
        entry = {
            "numbers": atoms.numbers.tolist(),
            "positions": atoms.positions.tolist(),
            "cell": atoms.cell.array.tolist(),
            "pbc": atoms.pbc.tolist(),
            "energy": float(atoms.get_potential_energy()),
            "forces": atoms.get_forces().tolist(),
        }
        if atoms.pbc.all():
            entry["stress"] = voigt_6_to_full_3x3_stress(atoms.get_stress()).tolist()
        out[label] = entry
    return out


R_MAX = COMMON_MODEL["r_max"]


def xz(src: Path, dst: Path) -> None:
    with open(src, "rb") as f, lzma.open(dst, "wb", preset=9 | lzma.PRESET_EXTREME) as g:
        shutil.copyfileobj(f, g)


def main(out_dir: str) -> None:
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    only = sys.argv[2:] or list(VARIANTS)
    for name in only:
        options = VARIANTS[name]
        with tempfile.TemporaryDirectory(prefix=f"nequip_{name}_") as tmp:
            workdir = Path(tmp)
            ckpt = workdir / f"{name}.ckpt"
            strip_optimizer(train(name, options, workdir), ckpt)

            from nequip.model import ModelFromCheckpoint
            from nequip.utils.global_state import set_global_state

            set_global_state()
            torch.set_default_dtype(torch.float64)
            model = ModelFromCheckpoint(str(ckpt))["sole_model"]
            reference = {
                "variant": name,
                "options": options,
                "source": f"{name}.ckpt",
                "structures": reference_outputs(model, options),
            }
            xz(ckpt, out / f"{name}.ckpt.xz")
            with open(out / f"{name}.reference.json", "w") as f:
                json.dump(reference, f)

            if name in PACKAGED:
                package = workdir / f"{name}.nequip.zip"
                run([str(BIN / "nequip-package"), "build", str(ckpt), str(package)], workdir)
                from nequip.model import ModelFromPackage

                packaged = ModelFromPackage(str(package))["sole_model"]
                reference = {
                    "variant": name,
                    "options": options,
                    "source": f"{name}.nequip.zip",
                    "structures": reference_outputs(packaged, options),
                }
                xz(package, out / f"{name}.nequip.zip.xz")
                with open(out / f"{name}.package_reference.json", "w") as f:
                    json.dump(reference, f)
        print(f"{name}: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
