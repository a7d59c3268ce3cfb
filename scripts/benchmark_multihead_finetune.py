"""Multi-head replay fine-tuning against plain fine-tuning with replay: what each forgets and learns.

    python scripts/benchmark_multihead_finetune.py [--epochs 10] [--out /tmp/multihead_bench]
    python scripts/benchmark_multihead_finetune.py --write-pretrained tests/data/multihead/mace_tiny_cu_au.ckpt

1. Pretrain a ``mace_tiny`` on the "old" data: 240 frames of the embedded Cu-Au set, labelled by ASE's EMT
   (or take ``--pretrained``).
2. Fine-tune it on the "new" data: pure-Cu cells labelled by a shifted EMT (other cohesive energy, radii and
   pair strengths, :data:`SHIFTED_EMT`) plus another zero of energy (:data:`REFERENCE_OFFSET`), with 60 held-out
   old frames replayed, (a) plainly (one head, ``finetune.replay_path``) and (b) with a new head
   (``finetune.new_head=new``: the replayed frames keep the pretrained head).
3. Print one JSON line per model and head: force RMSE (eV/Å) and energy RMSE (eV/atom) on the replay frames
   (old labels) and on the new validation frames (new labels). Au is absent from the new data; the new head
   still gives finite energies and forces for Au and keeps the pretrained Au E0.

``--write-pretrained PATH`` pretrains and writes a small checkpoint (metadata and weights only) for
``tests/test_multihead_finetune.py``, then stops. The functions here are that test's data recipe too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

#: EMT parameters (E0, s0, V0, eta2, kappa, lambda, n0) of the "new DFT" for Cu (as in tests/test_finetune.py).
SHIFTED_EMT = {"Cu": (-3.70, 2.70, 2.60, 1.652, 2.740, 1.906, 0.00910)}
#: eV per atom added to the new energies: another code's (pseudopotentials') zero of energy, which one head
#: cannot serve together with the old one.
REFERENCE_OFFSET = {29: -1.0}
#: Slices of the embedded data: pretraining frames, and the held-out old frames that are replayed.
PRETRAIN_FRAMES, REPLAY_FRAMES = slice(0, 240), slice(240, 300)
QUIET = [
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "test_after_fit=false",
]


def old_frames(which: slice) -> list:
    """Frames ``which`` of the embedded Cu-Au EMT data (ASE ``Atoms`` with their labels)."""
    import ase.io

    from mpnn_ip.data import default_dataset_path

    return ase.io.read(default_dataset_path(), index=f"{which.start}:{which.stop}")


def new_frames(count: int, seed: int) -> list:
    """``count`` rattled and strained 32-atom fcc Cu cells labelled by :data:`SHIFTED_EMT` + :data:`REFERENCE_OFFSET`."""
    import ase.calculators.emt as emt
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    saved = {symbol: emt.parameters[symbol] for symbol in SHIFTED_EMT}
    emt.parameters.update(SHIFTED_EMT)
    frames = []
    try:
        for _ in range(count):
            atoms = bulk("Cu", "fcc", a=3.61 * (1 + rng.uniform(-0.04, 0.04)), cubic=True) * (2, 2, 2)
            atoms.positions += rng.normal(0.0, rng.uniform(0.03, 0.15), atoms.positions.shape)
            atoms.calc = emt.EMT()
            energy = atoms.get_potential_energy() + sum(REFERENCE_OFFSET[int(z)] for z in atoms.numbers)
            atoms.calc = SinglePointCalculator(
                atoms, energy=energy, forces=atoms.get_forces(), stress=atoms.get_stress()
            )
            frames.append(atoms)
    finally:
        emt.parameters.update(saved)
    return frames


def mpnn_train(args: list[str], run_dir: Path) -> Path:
    """``mpnn-train ARGS`` in this process, into ``run_dir``."""
    from hydra.core.global_hydra import GlobalHydra

    from mpnn_ip.cli.train import main

    argv = sys.argv
    sys.argv = ["mpnn-train", *map(str, args), f"hydra.run.dir={run_dir}"]
    try:
        main()
    except SystemExit as stop:
        if stop.code:
            raise
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    return run_dir


def finetune_args(
    pretrained: Path,
    new_file: Path,
    replay_file: Path,
    *,
    heads: bool,
    epochs: int,
    train_count: int,
    val_count: int,
    replay_fraction: float = 0.4,
    batch_size: int = 5,
) -> list[str]:
    """The ``mpnn-train`` arguments of one fine-tuning run (multi-head with ``heads``, else plain with replay)."""
    return [
        f"finetune_from={pretrained}",
        "data=extxyz",
        f"data.train_path={new_file}",
        f"data.train_count={train_count}",
        f"data.val_count={val_count}",
        "data.test_count=0",
        f"data.batch_size={batch_size}",
        "dtype=float32",
        "optim.lr=0.005",
        f"trainer.max_epochs={epochs}",
        f"finetune.replay_path={replay_file}",
        f"finetune.replay_fraction={replay_fraction}",
        *(["finetune.new_head=new"] if heads else []),
        *QUIET,
    ]


def errors(model, frames: list, head: str | None = None) -> dict[str, float]:
    """Force RMSE (eV/Å) and energy RMSE (eV/atom) of ``model`` (its head ``head``; None: the default) on ``frames``."""
    import torch

    from mpnn_ip.data.atomic_graph import AtomicGraph, collate
    from mpnn_ip.models.heads import select_head

    model = select_head(model, head).eval()
    batch = collate(
        [
            AtomicGraph.from_atoms(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
            for atoms in frames
        ]
    )
    out = model(batch.to(model.e0.device))
    forces = (out["forces"].detach().double() - batch.forces).square().mean().sqrt()
    per_atom = (out["energy"].detach().double() - batch.energy) / torch.bincount(batch.batch)
    return {"forces_rmse": float(forces), "energy_per_atom_rmse": float(per_atom.square().mean().sqrt())}


def validation_frames(new_file: Path, train_count: int, val_count: int) -> list:
    """The validation frames a fine-tuning run of :func:`finetune_args` split off ``new_file`` (its seeded split)."""
    import ase.io

    from mpnn_ip.data.datamodule import AtomicDataModule

    data = AtomicDataModule(str(new_file), train_count=train_count, val_count=val_count, test_count=0)
    data.setup()
    frames = ase.io.read(new_file, index=":")
    order = np.random.default_rng(data.seed).permutation(len(frames))
    return [frames[i] for i in order[:val_count]]


def pretrain(folder: Path, epochs: int) -> Path:
    """Pretrain ``mace_tiny`` on the old frames; returns its ``last.ckpt``."""
    import ase.io

    path = folder / "old_pretrain.xyz"
    ase.io.write(path, old_frames(PRETRAIN_FRAMES))
    run = mpnn_train(
        [
            "model=mace_tiny",
            "data=extxyz",
            f"data.train_path={path}",
            "data.val_count=24",
            "data.test_count=0",
            "data.batch_size=4",
            "dtype=float32",
            "optim.lr=0.01",
            f"trainer.max_epochs={epochs}",
            *QUIET,
        ],
        folder / "pretrain",
    )
    return run / "checkpoints" / "last.ckpt"


def write_small_checkpoint(source: Path, out: Path) -> None:
    """``source`` without optimizer and callback states: the metadata and the (EMA) weights."""
    import torch

    ckpt = torch.load(source, map_location="cpu", weights_only=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"mpnn_ip": ckpt["mpnn_ip"], "state_dict": ckpt["state_dict"]}, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/multihead_bench"), help="folder of the runs")
    parser.add_argument("--pretrained", type=Path, help="a pretrained mace checkpoint (default: pretrain one)")
    parser.add_argument("--pretrain-epochs", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    parser.add_argument("--train-count", type=int, default=40)
    parser.add_argument("--val-count", type=int, default=20)
    parser.add_argument("--write-pretrained", type=Path, help="pretrain, write a small checkpoint here and stop")
    args = parser.parse_args()

    import ase.io
    import torch

    from mpnn_ip.checkpoint import load_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    args.out.mkdir(parents=True, exist_ok=True)
    pretrained = args.pretrained or pretrain(args.out, args.pretrain_epochs)
    if args.write_pretrained:
        write_small_checkpoint(pretrained, args.write_pretrained)
        print(f"wrote {args.write_pretrained}")
        return
    new_file, replay_file = args.out / "new_cu.xyz", args.out / "old_replay.xyz"
    ase.io.write(new_file, new_frames(args.train_count + args.val_count, seed=3))
    replay = old_frames(REPLAY_FRAMES)
    ase.io.write(replay_file, replay)
    validation = validation_frames(new_file, args.train_count, args.val_count)
    base = load_model(pretrained)
    records = [
        {"model": "pretrained", "head": None, "replay": errors(base, replay), "new_val": errors(base, validation)}
    ]
    for name, heads in (("plain_replay", False), ("multihead_replay", True)):
        start = time.perf_counter()
        run = mpnn_train(
            finetune_args(
                pretrained,
                new_file,
                replay_file,
                heads=heads,
                epochs=args.epochs,
                train_count=args.train_count,
                val_count=args.val_count,
            ),
            args.out / name,
        )
        seconds = time.perf_counter() - start
        model = load_model(run / "checkpoints" / "last.ckpt")
        for head in model.heads:
            records.append(
                {
                    "model": name,
                    "head": head,
                    "replay": errors(model, replay, head),
                    "new_val": errors(model, validation, head),
                    "fit_s": round(seconds, 1),
                }
            )
        if heads:
            au = errors(model, [atoms for atoms in replay if 79 in atoms.numbers][:4], "new")
            records.append(
                {
                    "model": name,
                    "head": "new",
                    "au_frames_finite": all(np.isfinite(list(au.values()))),
                    "au_e0": {h: model.head_e0s(k)[79] for k, h in enumerate(model.heads)},
                    "pretrained_au_e0": base.head_e0s(0)[79],
                }
            )
    for record in records:
        print(json.dumps(record))


if __name__ == "__main__":
    main()
