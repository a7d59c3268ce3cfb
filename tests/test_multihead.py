"""Heads of a model (:mod:`mpnn_ip.models.heads`): a MACE or NequIP with several heads evaluates each frame with
its own head, shares everything else, keeps the parameters of the head-less model when it has one head, and copies
or selects heads exactly; inference picks a head by name."""

from __future__ import annotations

import pytest
import torch

from mpnn_ip.data import make_dataset
from mpnn_ip.data.atomic_graph import AtomicGraph, collate
from mpnn_ip.errors import ConfigError, DataError
from mpnn_ip.models import build_model
from mpnn_ip.models.mace import MACE
from mpnn_ip.models.nequip import NequIP

SMALL = dict(
    species=["Cu", "Ag", "Au"],
    r_max=4.0,
    num_interactions=2,
    hidden_irreps="8x0e+8x1o",
    max_ell=2,
    correlation=2,
    radial_mlp=[8],
    mlp_readout_irreps="4x0e",
    e0s={"Cu": -1.0, "Au": -2.0},
    energy_shift={"Cu": 0.1, "Au": 0.2},
    energy_scale=0.7,
)
SMALL_NEQUIP = dict(
    species=["Cu", "Ag", "Au"],
    r_max=4.0,
    num_layers=2,
    l_max=1,
    num_features=4,
    num_bessel=4,
    radial_mlp=[8],
    avg_num_neighbors=8.0,
    e0s={"Cu": -1.0, "Au": -2.0},
    energy_shift={"Cu": 0.1, "Au": 0.2},
    energy_scale=0.7,
)
#: Models with heads: registry name, class and small constructor arguments (NequIP with both readouts).
MODELS = {
    "mace": ("mace", MACE, SMALL),
    "nequip": ("nequip", NequIP, SMALL_NEQUIP),
    "nequip_mlp_readout": ("nequip", NequIP, {**SMALL_NEQUIP, "readout_mlp": [4]}),
}


@pytest.fixture(scope="module")
def batch():
    return collate([AtomicGraph.from_atoms(atoms) for atoms in make_dataset(3, seed=1)])


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    _, cls, config = MODELS[request.param]
    torch.manual_seed(0)
    return cls(**config).double()


def _head_slices(model, name: str) -> torch.Tensor:
    """``[H, ...]``: the per-head tensor ``name`` of ``model`` viewed with its head axis first."""
    shape, axis = model.per_head_tensors()[name]
    return model.get_parameter(name).view(shape).movedim(axis, 0)


def _grad_slices(model, name: str) -> torch.Tensor:
    shape, axis = model.per_head_tensors()[name]
    return model.get_parameter(name).grad.view(shape).movedim(axis, 0)


def _per_head_parameters(model) -> list[str]:
    parameters = dict(model.named_parameters())
    return [name for name in model.per_head_tensors() if name in parameters]


def _with_heads(batch, heads: list[int]):
    out = batch.clone()
    out.head = torch.tensor(heads)
    return out


def test_one_head_has_the_parameters_of_a_model_without_heads(model):
    named = type(model)(**{**model.config, "heads": ["pbe"]}).double()
    assert {k: v.shape for k, v in named.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert named.heads == ["pbe"] and model.heads == ["Default"]


def test_a_copied_head_computes_what_its_source_does_for_every_frame(model, batch):
    expected = model(batch)
    two = model.with_heads(["new", "Default"], ["Default", "Default"])
    for heads in ([0, 0, 0], [1, 0, 1], [1, 1, 1]):
        out = two(_with_heads(batch, heads))
        torch.testing.assert_close(out["energy"], expected["energy"], rtol=0, atol=1e-12)
        torch.testing.assert_close(out["forces"], expected["forces"], rtol=0, atol=1e-12)


def test_selecting_a_head_gives_a_one_head_model_with_that_heads_outputs(model, batch):
    two = model.with_heads(["new", "Default"], ["Default", "Default"])
    with torch.no_grad():
        for name in _per_head_parameters(two):  # head "new" differs
            _head_slices(two, name)[0] *= 1.5
        two.e0[0] += 0.25
    for index, name in enumerate(two.heads):
        single = two.with_heads([name])
        assert single.heads == [name] and single.e0.dim() == 1
        torch.testing.assert_close(
            single(batch)["energy"], two(_with_heads(batch, [index] * 3))["energy"], rtol=0, atol=1e-12
        )
    assert not torch.allclose(two.with_heads(["new"])(batch)["energy"], two.with_heads(["Default"])(batch)["energy"])


def test_each_heads_own_parameters_get_gradients_only_from_its_frames(model, batch):
    two = model.with_heads(["new", "Default"], ["Default", "Default"]).train()
    out = two(_with_heads(batch, [0, 0, 0]))
    (out["energy"].sum() + out["forces"].square().sum()).backward()
    names = _per_head_parameters(two)
    assert any("readout" in name for name in names)
    for name in names:
        grad = _grad_slices(two, name)
        assert grad[0].abs().sum() > 0 and grad[1].abs().sum() == 0, name
    assert two.species_embedding.weight.grad.abs().sum() > 0  # shared weights learn from every frame


@pytest.mark.parametrize("kind", list(MODELS))
def test_per_head_e0_scale_and_shift_are_recorded_and_rebuild_the_model(batch, kind):
    registry_name, cls, config = MODELS[kind]
    torch.manual_seed(1)
    per_head = {"e0s": {"a": {"Cu": -1.0}, "b": {"Cu": -3.0, "Au": -2.0}}, "energy_scale": {"a": 0.5, "b": 2.0}}
    two = cls(**{**config, **per_head}, heads=["a", "b"]).double()
    assert two.config["e0s"] == {"a": {29: -1.0}, "b": {29: -3.0, 79: -2.0}}
    assert two.head_e0s(1) == {29: -3.0, 47: 0.0, 79: -2.0}
    rebuilt = build_model(registry_name, **two.config).double()
    rebuilt.load_state_dict(two.state_dict())
    torch.testing.assert_close(
        rebuilt(_with_heads(batch, [1, 0, 1]))["energy"], two(_with_heads(batch, [1, 0, 1]))["energy"]
    )


def test_a_head_index_outside_the_model_is_refused(model, batch):
    two = model.with_heads(["new", "Default"], ["Default", "Default"])
    with pytest.raises(DataError, match=r"frame head indices \[2\].*2 head\(s\) \['new', 'Default'\]"):
        two(_with_heads(batch, [0, 2, 0]))
    with pytest.raises(DataError, match="1 head"):
        model(_with_heads(batch, [1, 0, 0]))


def test_unknown_head_is_refused_listing_the_heads(model):
    with pytest.raises(ConfigError, match=r"no head 'pbe'; its heads are \['Default'\]"):
        model.with_heads(["pbe"], ["pbe"])


def test_models_without_heads_refuse_several_heads_with_a_clear_message():
    schnet = build_model("schnet", species=["Cu", "Au"], r_max=4.0)
    assert schnet.with_heads(["Default"]) is schnet
    with pytest.raises(ConfigError, match=r"SchNet models have no heads.*such as mace"):
        schnet.with_heads(["new", "Default"], ["Default", "Default"])


def test_calculator_picks_a_head_by_name_and_defaults_to_the_first(model):
    from mpnn_ip.calculators import MPNNCalculator

    two = model.with_heads(["new", "Default"], ["Default", "Default"])
    with torch.no_grad():
        two.e0[0] += 0.5  # every atom of head "new" 0.5 eV higher
    atoms = make_dataset(1, seed=2)[0]
    energies = {}
    for head in (None, "new", "Default"):
        atoms.calc = MPNNCalculator(two, head=head, compile=False)
        energies[head] = atoms.get_potential_energy()
    assert energies[None] == energies["new"] == pytest.approx(energies["Default"] + 0.5 * len(atoms), abs=1e-9)
    with pytest.raises(ConfigError, match=r"no head 'r2scan'; its heads are \['new', 'Default'\]"):
        MPNNCalculator(two, head="r2scan")


def test_torchsim_model_picks_a_head_by_name(model):
    ts = pytest.importorskip("torch_sim")
    from mpnn_ip.torchsim import MPNNTorchSimModel

    two = model.with_heads(["new", "Default"], ["Default", "Default"])
    with torch.no_grad():
        two.e0[0] += 0.5
    atoms = make_dataset(1, seed=2)[0]
    state = ts.io.atoms_to_state([atoms], torch.device("cpu"), torch.float64)
    new = MPNNTorchSimModel(two, compute_stress=False)(state)["energy"]
    old = MPNNTorchSimModel(two, head="Default", compute_stress=False)(state)["energy"]
    assert float(new - old) == pytest.approx(0.5 * len(atoms), abs=1e-9)
