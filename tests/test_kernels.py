"""``model.kernels``: e3nn (every device), auto (the fastest available: e3nn here), oeq refused with the reason."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mpnn_ip.errors import ConfigError
from mpnn_ip.models import build_model

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_small_cell  # noqa: E402

SMALL = {
    "nequip": dict(r_max=3.5, num_layers=1, l_max=1, num_features=4, num_bessel=4, radial_mlp=[8]),
    "mace": dict(
        r_max=3.5, num_interactions=1, hidden_irreps="4x0e+4x1o", max_ell=1, correlation=2, num_bessel=4, radial_mlp=[8]
    ),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_e3nn_and_auto_kernels_give_the_same_model_on_the_cpu(name):
    from mpnn_ip.data import AtomicGraph, collate

    atoms = make_small_cell()
    species = sorted(set(atoms.numbers.tolist()))
    outputs = []
    for kernels in ("e3nn", "auto"):
        torch.manual_seed(0)
        model = build_model(name, species=species, kernels=kernels, **SMALL[name]).double()
        assert model.kernels == "e3nn" and model.config["kernels"] == kernels
        outputs.append(model(collate([AtomicGraph.from_atoms(atoms)]), compute_forces=True)["forces"])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_oeq_kernels_are_refused_with_what_is_missing(name):
    with pytest.raises(ConfigError, match=r"kernels=oeq needs .*a build with the OpenEquivariance convolution"):
        build_model(name, species=[29], kernels="oeq", **SMALL[name])
    with pytest.raises(ConfigError, match=r"kernels='cuda' is not one of e3nn, auto, oeq"):
        build_model(name, species=[29], kernels="cuda", **SMALL[name])
