"""Tiny checkpoints in the mpnn_ip format, built directly (no training) for the inference tests.

The dict has exactly the keys of a Lightning checkpoint that inference reads: ``state_dict`` with
the model under ``model.*`` and the ``mpnn_ip`` metadata (see the checkpoint contract).
"""

from __future__ import annotations

from pathlib import Path

import torch

#: Species of every tiny test model (molecules and CuAu crystals).
TINY_SPECIES = ["H", "C", "O", "Cu", "Au"]
#: Constructor arguments of a small NequIP (fast on one CPU core).
TINY_NEQUIP = dict(
    r_max=3.5,
    num_layers=2,
    l_max=1,
    num_features=4,
    num_bessel=4,
    radial_mlp=[8],
    avg_num_neighbors=8.0,
    e0s={1: -1.1, 6: -8.2, 8: -4.9, 29: -3.7, 79: -3.2},
)


def build_tiny_model(species=TINY_SPECIES, seed: int = 0, **overrides):
    """A deterministic tiny NequIP for ``species``."""
    from mpnn_ip.models import build_model

    torch.manual_seed(seed)
    return build_model("nequip", species=list(species), **{**TINY_NEQUIP, **overrides})


def write_checkpoint(model, path: Path, model_name: str | None = None) -> Path:
    """Save ``model`` as an mpnn_ip checkpoint at ``path`` (what mpnn-train writes for these keys);
    ``model_name`` overrides the registry name in the metadata (for tests of mismatched files)."""
    from mpnn_ip.checkpoint import checkpoint_metadata

    meta = checkpoint_metadata(model, {"avg_num_neighbors": 8.0})
    ckpt = {
        "state_dict": {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()},
        "mpnn_ip": meta | ({"model_name": model_name} if model_name else {}),
    }
    path = Path(path)
    torch.save(ckpt, path)
    return path


def tiny_checkpoint(path: Path, species=TINY_SPECIES, seed: int = 0) -> Path:
    """Build a tiny model and save it; returns ``path``."""
    return write_checkpoint(build_tiny_model(species, seed), path)
