#!/usr/bin/env python
"""The peers' side of ``scripts/benchmark_import.py``: make the benchmark models, time them in their own code.

Runs with the python of the peer's venv (never imports mpnn_ip):

    ../peers/mace/bin/python scripts/benchmark_import_peer.py make-mace DIR     # DIR/mace_foundation.model
    ../peers/nequip/bin/python scripts/benchmark_import_peer.py make-nequip DIR # DIR/nequip_s.ckpt
    ../peers/mace/bin/python scripts/benchmark_import_peer.py time-mace FILE --workloads mol27x16,cu2048
    ../peers/nequip/bin/python scripts/benchmark_import_peer.py time-nequip FILE --workloads mol27x16,cu2048

``make-mace``: a ScaleShiftMACE of the MACE-MP "medium" size (128x0e+128x1o, max_ell 3, correlation 3,
residual interactions, 89 elements H..Ac, r_max 5 Å), random weights (seed 0), saved with ``torch.save`` as
``mace_run_train`` does. ``make-nequip``: a NequIPGNNModel of the harness size (nequip-s: 4 layers, l_max 2,
parity, 32 features, radial MLP 2x64; types H C N O Cu), float32, written as a real training checkpoint by
``nequip-train`` (two steps; :mod:`make_interop_fixtures_nequip`). ``time-*``: the shared harness
(``../shared/bench``) with the peer's own adapter, the model loaded from FILE instead of built (JSON lines).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH_DIR = Path(os.environ.get("MPNN_IP_BENCH_DIR", HERE.parent.parent / "shared" / "bench"))
FOUNDATION_ELEMENTS = list(range(1, 90))
NEQUIP_TYPES = ["H", "C", "N", "O", "Cu"]


def make_mace(out_dir: Path) -> Path:
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import numpy as np
    import torch
    from e3nn import o3
    from mace import modules

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    interaction = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        r_max=5.0,
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=3,
        interaction_cls=interaction,
        interaction_cls_first=interaction,
        num_interactions=2,
        num_elements=len(FOUNDATION_ELEMENTS),
        hidden_irreps=o3.Irreps("128x0e+128x1o"),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.random.default_rng(0).normal(-5.0, 2.0, len(FOUNDATION_ELEMENTS)),
        avg_num_neighbors=30.0,
        atomic_numbers=FOUNDATION_ELEMENTS,
        correlation=3,
        gate=torch.nn.functional.silu,
        radial_MLP=[64, 64, 64],
        atomic_inter_scale=[1.2],
        atomic_inter_shift=[0.1],
        use_reduced_cg=False,
    )
    path = out_dir / "mace_foundation.model"
    torch.save(model.eval(), path)
    return path


def make_nequip(out_dir: Path) -> Path:
    import shutil

    sys.path.insert(0, str(HERE))
    import make_interop_fixtures_nequip as fixtures

    options = dict(
        type_names=NEQUIP_TYPES,
        num_layers=4,
        l_max=2,
        parity=True,
        num_features=32,
        radial_mlp_depth=2,
        radial_mlp_width=64,
        per_type_energy_scales=1.0,
        per_type_energy_shifts=0.0,
        avg_num_neighbors=20.0,
        model_dtype="float32",
        r_max=5.0,
        bessel_trainable=False,
    )
    with tempfile.TemporaryDirectory() as workdir:
        ckpt = fixtures.train("bench", options, Path(workdir))
        path = out_dir / "nequip_s.ckpt"
        shutil.copy(ckpt, path)
    return path


def time_mace(model_file: str, harness_args: list[str]) -> int:
    sys.path.insert(0, str(BENCH_DIR))
    import bench_common as bc
    import peers_mace
    import torch
    from mace import tools

    class ImportedMACE(peers_mace.MACEAdapter):
        model_name = "mace-foundation"

        def build_model(self, wl):
            self.model = torch.load(model_file, map_location="cpu", weights_only=False).to(torch.float32)
            self.z_table = tools.AtomicNumberTable([int(z) for z in self.model.atomic_numbers])
            return self.model

        def hyperparameters(self, wl):
            return {"model_file": os.path.basename(model_file)}

    return bc.main(ImportedMACE(), harness_args)


def time_nequip(model_file: str, harness_args: list[str]) -> int:
    sys.path.insert(0, str(BENCH_DIR))
    import bench_common as bc
    import peers_nequip
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper
    from nequip.model.saved_models.load_utils import load_saved_model

    class ImportedNequIP(peers_nequip.NequIPAdapter):
        model_name = "nequip-s"

        def build_model(self, wl):
            self.model = load_saved_model(model_file)
            self.mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=NEQUIP_TYPES)
            return self.model

        def hyperparameters(self, wl):
            return {"model_file": os.path.basename(model_file)}

    return bc.main(ImportedNequIP(), harness_args)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("make-mace", "make-nequip", "time-mace", "time-nequip"):
        print(__doc__)
        return 2
    command, target, rest = argv[0], argv[1], argv[2:]
    if command.startswith("make-"):
        out_dir = Path(target)
        out_dir.mkdir(parents=True, exist_ok=True)
        print((make_mace if command == "make-mace" else make_nequip)(out_dir))
        return 0
    return (time_mace if command == "time-mace" else time_nequip)(target, rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
