"""Frame inputs (total charge, spin multiplicity) and the dipole label: rows of the label table.

``charge`` (e, default 0) and ``spin`` (2S+1, default 1) are read from ``atoms.info``, checked, batched
([B] with masks ``has_charge``/``has_spin``) and stored like per-frame labels, but are no output, loss term,
metric, committee average or ASE result. ``dipole`` (e·Å) is a fitted label of frames without periodicity;
``charges`` (e, per atom) an unlabelled output. The model side (latent charges) is stood in for by a toy
potential that returns ``charges`` and ``dipole``.
"""

from __future__ import annotations

import json
import sqlite3
import warnings

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from tiny_checkpoint import build_tiny_model

from mpnn_ip import MPNNCalculator
from mpnn_ip.calculators.evaluator import StructureEvaluator
from mpnn_ip.data import check_data, collate, read_dataset
from mpnn_ip.data.atomic_graph import MODEL_INPUT_KEYS, AtomicGraph, to_inputs
from mpnn_ip.data.ondisk import OnDiskDataModule
from mpnn_ip.data.store import LEGACY_LABELS, MANIFEST, TABLE, GraphStore, graph_row, store_schema
from mpnn_ip.data.store_writer import write_store
from mpnn_ip.errors import ConfigError, DataError
from mpnn_ip.models import Potential
from mpnn_ip.models.committee import Committee
from mpnn_ip.outputs import INPUTS, OUTPUTS, QUANTITIES
from mpnn_ip.train.losses import LOSS_TERMS, LossTerm, WeightedPropertyLoss, default_loss
from mpnn_ip.train.metrics import PropertyMetrics

#: the toy files carry no forces or stress: the reader says so
pytestmark = pytest.mark.filterwarnings("ignore:.*no frame has a:UserWarning")
#: Latent charge (e) of each element of the toy potential.
ATOM_CHARGE = {1: 0.4, 8: -0.8, 29: 0.1}


class LatentCharges(Potential):
    """Per-species energies and charges plus a weak pair repulsion (test-only): returns ``charges`` [N] (e)
    and ``dipole`` [B, 3] (e·Å, ``sum_i q_i r_i``, zeros for periodic frames), as a long-range model does."""

    def __init__(self, species, r_max: float = 3.0):
        super().__init__(species, r_max)
        self.atom_energy = torch.nn.Parameter(torch.zeros(self.num_species))
        table = [ATOM_CHARGE.get(z, 0.0) for z in self.species]
        self.atom_charge = torch.nn.Parameter(torch.tensor(table))

    def atomic_outputs(self, graph):
        species, edge_index, batch = graph["species"], graph["edge_index"], graph["batch"]
        lengths = torch.linalg.vector_norm(graph["edge_vectors"], dim=-1)
        pair = torch.zeros_like(self.atom_energy[species]).index_add(0, edge_index[0], 0.01 / lengths)
        charges = self.atom_charge[species]
        moments = torch.zeros(graph["num_graphs"], 3, dtype=charges.dtype, device=charges.device)
        moments = moments.index_add(0, batch, charges[:, None] * graph["pos"].to(charges.dtype))
        periodic = graph["pbc"].reshape(-1, 3).any(dim=1, keepdim=True)
        return {
            "node_energy": self.atom_energy[species] + pair,
            "charges": charges,
            "dipole": torch.where(periodic, torch.zeros_like(moments), moments),
        }


def _water(shift: float = 0.0) -> Atoms:
    return Atoms("OH2", positions=[[shift, 0, 0], [shift + 0.96, 0, 0], [shift - 0.24, 0.93, 0]])


def _copper() -> Atoms:
    return bulk("Cu", "fcc", a=3.6, cubic=True)


def _write(path, frames) -> str:
    ase.io.write(path, frames, format="extxyz")
    return str(path)


def _charged_file(path) -> str:
    """Four frames: a cation doublet, a neutral water without inputs, a copper cell, an anion with a dipole."""
    cation, plain, anion = _water(), _water(0.1), _water(0.2)
    cation.info.update(energy=-1.0, charge=1, spin=2)
    plain.info.update(energy=-2.0)
    anion.info.update(energy=-3.0, charge=-1.5, dipole=[0.1, 0.2, 0.3])
    copper = _copper()
    copper.info.update(energy=-4.0, dipole=[1.0, 2.0, 3.0], charge=0)
    return _write(path, [cation, plain, copper, anion])


def test_charge_and_spin_are_batched_with_their_defaults_and_masks(tmp_path):
    batch = collate(read_dataset(_charged_file(tmp_path / "charged.xyz")))
    assert batch.charge.dtype == batch.spin.dtype == torch.float64
    assert batch.charge.tolist() == [1.0, 0.0, 0.0, -1.5]
    assert batch.has_charge.tolist() == [True, False, True, True]
    assert batch.spin.tolist() == [2.0, 1.0, 1.0, 1.0]
    assert batch.has_spin.tolist() == [True, False, False, False]


def test_inputs_under_other_keys(tmp_path):
    frames = [_water(), _water(0.1)]
    frames[0].info.update(energy=-1.0, total_charge=2, multiplicity=3)
    frames[1].info.update(energy=-1.0)
    path = _write(tmp_path / "keys.xyz", frames)
    graphs = read_dataset(path, charge_key="total_charge", label_keys={"spin": "multiplicity"})
    assert [float(g.charge) for g in graphs] == [2.0, 0.0] and [float(g.spin) for g in graphs] == [3.0, 1.0]
    with pytest.raises(DataError, match="no frame has the charge key 'q'"):
        read_dataset(path, charge_key="q")


def test_a_spin_below_one_is_an_error_naming_file_and_frame(tmp_path):
    frames = [_water(), _water(0.1)]
    for atoms in frames:
        atoms.info.update(energy=-1.0)
    frames[1].info["spin"] = 0
    path = _write(tmp_path / "spin.xyz", frames)
    with pytest.raises(DataError, match=r"spin\.xyz, frame 1: spin must be >= 1"):
        read_dataset(path)


def test_a_non_finite_charge_is_an_error(tmp_path):
    frames = [_water(), _water(0.1)]
    for atoms in frames:
        atoms.info.update(energy=-1.0)
    frames[0].info["charge"] = float("nan")
    path = _write(tmp_path / "nan.xyz", frames)
    with pytest.raises(DataError, match=r"nan\.xyz, frame 0: charge contain NaN or inf"):
        read_dataset(path)
    with pytest.raises(DataError, match="spin contain NaN or inf"):
        AtomicGraph.from_atoms(_water(), spin=float("inf"))


def test_inputs_absent_from_a_file_raise_no_warning_nor_missing_label_problem(tmp_path):
    path = _charged_file(tmp_path / "charged.xyz")
    plain = _water()
    plain.info.update(energy=-1.0)
    problems: list = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_dataset(path, on_error="skip", problems=problems)
        read_dataset(_write(tmp_path / "plain.xyz", [plain]))
    messages = [str(w.message) for w in caught] + [p.message for p in problems]
    assert not [m for m in messages for name in ("charge", "spin") if f"{name!r} label" in m or f"no {name}" in m]
    assert not [m for m in messages if "'dipole' label" in m]  # few files carry one: no warning when none does
    # the plain water (frame 1) lacks the dipole that the anion has; the copper cell (frame 2) cannot have one
    assert [(p.frame, p.kind) for p in problems] == [(0, "missing_label"), (1, "missing_label")]
    assert all("dipole" in p.message for p in problems)


def test_dipole_is_kept_on_molecules_and_masked_on_periodic_frames(tmp_path):
    batch = collate(read_dataset(_charged_file(tmp_path / "charged.xyz")))
    assert batch.dipole.shape == (4, 3)
    assert batch.has_dipole.tolist() == [False, False, False, True]
    assert batch.dipole[3].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert batch.dipole[2].abs().sum() == 0


def test_store_keeps_inputs_and_dipole_and_an_old_store_reads_with_defaults(tmp_path):
    path = _charged_file(tmp_path / "charged.xyz")
    manifest, _ = write_store(tmp_path / "store", path, r_max=[3.0])
    assert {"dipole", "charge", "spin"} <= set(manifest["labels"])
    assert manifest["reader_settings"]["charge_key"] == "charge"
    store = GraphStore(tmp_path / "store")
    stored = collate([store[i] for i in range(len(store))])
    in_memory = collate(read_dataset(path))
    for key in ("charge", "has_charge", "spin", "has_spin", "dipole", "has_dipole"):
        assert torch.equal(stored[key], in_memory[key]), key
    module = OnDiskDataModule(str(tmp_path / "store"), val_count=1, test_count=0, batch_size=3, r_max=3.0)
    module.setup()
    batch = next(iter(module.train_dataloader()))
    assert batch.charge.shape == batch.has_spin.shape == (3,) and batch.dipole.shape == (3, 3)

    old = _as_old_store(tmp_path / "store", tmp_path / "old_store")
    graph = GraphStore(old)[0]
    assert float(graph.charge) == 0.0 and float(graph.spin) == 1.0
    assert not graph.has_charge.item() and not graph.has_spin.item() and not graph.has_dipole.item()
    assert graph.has_energy.item() and float(graph.energy) == float(in_memory.energy[0])
    module = OnDiskDataModule(str(old), val_count=1, test_count=0, batch_size=3, r_max=3.0)
    module.setup()
    batch = next(iter(module.train_dataloader()))
    assert batch.spin.tolist() == [1.0] * 3 and not batch.has_charge.any()
    _, happened = write_store(old, path, r_max=[3.0])
    assert happened.startswith("rebuilt: the store has no columns for dipole, charge, spin")


def _as_old_store(new, old):
    """A copy of the store ``new`` in the layout written before the table had dipole, charge and spin: shards of
    energy, forces and stress only, a manifest without ``labels`` and without their reader settings."""
    from torch_geometric.data import SQLiteDatabase

    old.mkdir()
    manifest = json.loads((new / MANIFEST).read_text())
    store, schema = GraphStore(new), store_schema(LEGACY_LABELS)
    for shard in manifest["shards"]:
        database = SQLiteDatabase(str(old / shard["file"]), TABLE, schema=schema)
        indices = range(shard["start"], shard["start"] + shard["count"])
        database.multi_insert(range(shard["count"]), [graph_row(store[i], schema) for i in indices])
        database.close()
        (old / shard["summary"]).write_bytes((new / shard["summary"]).read_bytes())
    with sqlite3.connect(old / manifest["shards"][0]["file"]) as connection:
        columns = {row[1] for row in connection.execute(f"PRAGMA table_info({TABLE})")}
    assert "COL_charge" not in columns and "COL_energy" in columns
    del manifest["labels"]
    for key in ("dipole_key", "charge_key", "spin_key"):
        del manifest["reader_settings"][key]
    (old / MANIFEST).write_text(json.dumps(manifest))
    return old


def test_dipole_loss_term_is_off_by_default_and_needs_a_model_that_returns_it(tmp_path):
    assert default_loss()["dipole"] == {"weight": 0.0, "fn": "mse"}
    batch = collate(read_dataset(_charged_file(tmp_path / "charged.xyz")))
    exact = {"energy": batch.energy, "dipole": batch.dipole + 0.5}
    loss = WeightedPropertyLoss(energy={"weight": 1.0}, dipole={"weight": 2.0, "fn": "mae"})
    total, terms = loss(exact, batch)
    assert float(terms["dipole"]) == pytest.approx(0.5) and float(total) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match=r"loss\.dipole.*model\.long_range=les"):
        loss({"energy": batch.energy}, batch)
    _, terms = WeightedPropertyLoss(energy={"weight": 1.0})({"energy": batch.energy}, batch)
    assert list(terms) == ["energy"]


def test_dipole_metrics_come_only_from_a_model_that_returns_a_dipole(tmp_path):
    batch = collate(read_dataset(_charged_file(tmp_path / "charged.xyz")))
    model = LatentCharges(["H", "O", "Cu"]).double()
    out = model(batch, compute_forces=False)
    assert out["charges"].shape == (batch.num_nodes,) and out["dipole"].shape == (4, 3)
    metrics = PropertyMetrics()
    metrics.update(out, batch)
    computed = metrics.compute()
    assert {"dipole_mae", "dipole_rmse"} <= set(computed)
    error = (out["dipole"][3] - batch.dipole[3]).abs().mean().detach()
    assert float(computed["dipole_mae"]) == pytest.approx(float(error))
    metrics = PropertyMetrics()
    metrics.update({"energy": out["energy"]}, batch)
    assert "dipole_mae" not in metrics.compute()


def test_inputs_are_no_loss_term_metric_output_or_ase_result(tmp_path):
    assert not set(INPUTS) & (set(LOSS_TERMS) | set(QUANTITIES) | set(OUTPUTS))
    with pytest.raises(ValueError, match="charge is an input of the model"):
        LossTerm.from_config("charge", {"weight": 1.0})
    members = [LatentCharges(["H", "O"]).double() for _ in range(2)]
    with torch.no_grad():
        members[1].atom_charge.mul_(3.0)
    atoms = _water()
    atoms.info.update(charge=1, spin=2)
    inputs = to_inputs(collate([AtomicGraph.from_atoms(atoms, charge=1, spin=2)]))
    out = Committee(members)(inputs)
    assert not {"charge", "spin", "has_charge", "has_spin"} & set(out)
    assert torch.allclose(out["charges"], 2.0 * members[0](inputs)["charges"])
    atoms.calc = MPNNCalculator(members[0], compile=False)
    atoms.get_potential_energy()
    assert not {"charge", "spin"} & set(atoms.calc.results)
    report = check_data([_charged_file(tmp_path / "charged.xyz")], r_max=3.0)
    assert report["statistics"]["inputs"] == {"charge": 3, "spin": 1}
    assert set(report["statistics"]["labels"]) == {"energy", "forces", "stress", "dipole"}


def test_calculator_gives_charges_and_dipole_when_the_model_returns_them():
    atoms = _water()
    atoms.calc = MPNNCalculator(LatentCharges(["H", "O"]).double(), compile=False)
    charges = atoms.get_charges()
    assert charges == pytest.approx([ATOM_CHARGE[8], ATOM_CHARGE[1], ATOM_CHARGE[1]])
    assert atoms.get_dipole_moment() == pytest.approx(charges @ atoms.positions)
    plain = _water()
    plain.calc = MPNNCalculator(build_tiny_model(), compile=False)
    plain.get_potential_energy()
    assert "charges" not in plain.calc.results and "dipole" not in plain.calc.results


def test_evaluator_takes_charge_and_spin_from_atoms_info():
    assert {"charge", "spin", "has_charge", "has_spin"} <= set(MODEL_INPUT_KEYS)
    evaluator = StructureEvaluator(build_tiny_model(), compile=False)
    atoms = _water()
    atoms.info.update(charge=-1, spin=2)
    evaluator.set_structure(atoms)
    inputs = evaluator._inputs
    assert inputs["charge"].tolist() == [-1.0] and inputs["spin"].tolist() == [2.0]
    assert inputs["charge"].dtype == torch.float64 and inputs["has_charge"].tolist() == [True]
    evaluator.set_arrays(atoms.positions, atoms.numbers, np.zeros((3, 3)), [False] * 3)
    inputs = evaluator._inputs
    assert inputs["charge"].tolist() == [0.0] and inputs["spin"].tolist() == [1.0]
    assert not inputs["has_charge"].any() and not inputs["has_spin"].any()
    renamed = StructureEvaluator(build_tiny_model(), compile=False, info_keys={"charge": "total_charge"})
    atoms.info = {"total_charge": 2}
    renamed.set_structure(atoms)
    assert renamed._inputs["charge"].tolist() == [2.0] and not renamed._inputs["has_spin"].any()
    with pytest.raises(ConfigError, match="no inputs"):
        StructureEvaluator(build_tiny_model(), info_keys={"dipole": "mu"})
    single = to_inputs(AtomicGraph.from_atoms(atoms, charge=2))
    assert single["charge"].shape == single["has_charge"].shape == (1,)


def test_calculator_runs_again_when_the_charge_in_atoms_info_changes():
    atoms = _water()
    calculator = MPNNCalculator(build_tiny_model(), compile=False)
    atoms.calc = calculator
    atoms.get_potential_energy()
    assert calculator.evaluator._inputs["charge"].tolist() == [0.0]
    atoms.info["charge"] = 1
    atoms.get_potential_energy()
    assert calculator.evaluator._inputs["charge"].tolist() == [1.0]
    with pytest.raises(DataError, match="spin must be >= 1"):
        atoms.info["spin"] = 0.5
        atoms.get_potential_energy()


def test_label_keys_win_over_the_default_flat_keys_of_a_data_config():
    """``data.label_keys={charge: q}`` works beside the config's flat ``charge_key: charge`` default."""
    from mpnn_ip.data.reader_options import ReaderOptions

    options = ReaderOptions.from_config({"charge_key": "charge", "energy_key": "E", "label_keys": {"charge": "q"}})
    assert options.key("charge") == "q" and options.key("energy") == "E"
