"""``mpnn_ip.load_model``: checkpoints rebuild the model exactly, from plain tensors only, with clear errors."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_cluster")

from tiny_checkpoint import build_tiny_model, tiny_checkpoint, write_checkpoint  # noqa: E402

from mpnn_ip.checkpoint import load_model  # noqa: E402
from mpnn_ip.data import AtomicGraph, collate  # noqa: E402
from mpnn_ip.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def _batch():
    from conftest import make_molecule, make_triclinic_crystal

    return collate([AtomicGraph.from_atoms(make_molecule()), AtomicGraph.from_atoms(make_triclinic_crystal())])


def test_loaded_model_reproduces_the_saved_model(checkpoint):
    original = build_tiny_model().eval()
    loaded = load_model(checkpoint)
    assert not loaded.training
    assert loaded.config == original.config
    batch = _batch()
    expected = original(batch, compute_stress=True)
    got = loaded(batch, compute_stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    assert loaded.checkpoint_metadata["units"]["energy"] == "eV"


def test_dtype_option_converts_the_model(checkpoint):
    model = load_model(checkpoint, dtype="float64")
    assert model.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert load_model(checkpoint).dtype == torch.float32


def test_loading_never_unpickles_objects(tmp_path):
    """weights_only=True: a checkpoint holding a pickled class is refused, not executed."""
    path = write_checkpoint(build_tiny_model(), tmp_path / "ok.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["mpnn_ip"]["statistics"] = {"object": torch.nn.Linear(1, 1)}
    torch.save(ckpt, tmp_path / "pickled.ckpt")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_model(tmp_path / "pickled.ckpt")


def test_missing_checkpoint_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(tmp_path / "nothing.ckpt")


def test_corrupted_checkpoint_is_a_config_error(tmp_path, checkpoint):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(checkpoint.read_bytes()[:300])
    with pytest.raises(ConfigError, match=r"broken\.ckpt cannot be read.*corrupted"):
        load_model(broken)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_model(garbage)


def test_foreign_torch_file_is_a_config_error(tmp_path):
    """A plain state dict (what other packages save) has no mpnn_ip metadata."""
    path = tmp_path / "foreign.pt"
    torch.save(build_tiny_model().state_dict(), path)
    with pytest.raises(ConfigError, match="not an mpnn_ip checkpoint"):
        load_model(path)


def test_unknown_model_name_is_a_config_error(tmp_path):
    path = write_checkpoint(build_tiny_model(), tmp_path / "x.ckpt", model_name="allegro")
    with pytest.raises(ConfigError, match="'allegro'"):
        load_model(path)


def test_weights_of_another_architecture_are_a_config_error(tmp_path):
    """Metadata of one model, weights of another: the mismatch is named, not a raw RuntimeError."""
    path = write_checkpoint(build_tiny_model(), tmp_path / "x.ckpt")
    ckpt = torch.load(path, weights_only=True)
    other = build_tiny_model(num_layers=3, num_features=6)
    ckpt["state_dict"] = {f"model.{k}": v for k, v in other.state_dict().items()}
    torch.save(ckpt, path)
    with pytest.raises(ConfigError, match="do not fit the 'nequip' model"):
        load_model(path)


def test_checkpoint_of_another_model_type_is_a_config_error(tmp_path):
    from mpnn_ip.models import MODEL_REGISTRY, model_class

    others = []
    for name in MODEL_REGISTRY:
        if name == "nequip":
            continue
        try:
            model_class(name)
        except ImportError:
            continue
        others.append(name)
    if not others:
        pytest.skip("no second model type is importable yet")
    path = write_checkpoint(build_tiny_model(), tmp_path / "x.ckpt", model_name=others[0])
    with pytest.raises(ConfigError, match=str(path.name)):
        load_model(path)


def test_evaluate_metrics_are_masked_by_the_labels_present(tmp_path):
    """A molecule with only an energy and a crystal with all labels: each metric uses only its labels."""
    import numpy as np
    from conftest import make_molecule, make_triclinic_crystal

    from mpnn_ip.evaluation import evaluate, parity_plots

    model = build_tiny_model()
    crystal, molecule = make_triclinic_crystal(), make_molecule()
    rng = np.random.default_rng(0)
    graphs = [
        AtomicGraph.from_atoms(molecule, energy=-30.0),
        AtomicGraph.from_atoms(crystal, energy=-12.0, forces=rng.normal(size=(4, 3)), stress=rng.normal(size=6) * 0.01),
    ]
    model.train()
    results = evaluate(model, graphs, batch_size=1)
    assert model.training  # the caller's mode is restored
    direct = [model.eval()(g, compute_stress=True) for g in graphs]
    energy_pred = np.array([float(d["energy"].detach()) for d in direct])
    per_atom_error = (energy_pred - [-30.0, -12.0]) / [len(molecule), len(crystal)]
    force_error = direct[1]["forces"].detach().double().numpy() - graphs[1].forces.numpy()
    stress_error = direct[1]["stress"].detach().double().numpy() - graphs[1].stress.numpy()
    metrics = results["metrics"]
    assert metrics["energy_per_atom_count"] == 2 and metrics["forces_count"] == 12 and metrics["stress_count"] == 9
    np.testing.assert_allclose(metrics["energy_per_atom_mae"], np.abs(per_atom_error).mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["forces_rmse"], np.sqrt((force_error**2).mean()), rtol=1e-5)
    np.testing.assert_allclose(metrics["stress_mae"], np.abs(stress_error).mean(), rtol=1e-4)
    names = sorted(p.name for p in parity_plots(results, tmp_path, prefix="test_"))
    assert names == ["test_parity_energy_per_atom.png", "test_parity_forces.png", "test_parity_stress.png"]
