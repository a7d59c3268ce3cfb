"""The label table: one row per labelled quantity, and a new label added in one place.

``CHARGE_SUM`` (a per-frame total charge read from ``atoms.info``) is registered once, by the
``charge_sum`` fixture; the file reader, the data module, the store, the loss, the metrics, the
data check and the ASE results then carry it without a line elsewhere. The fixture unregisters it,
so every other test sees the standard table.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import ase.io
import lightning as L
import numpy as np
import pytest
import torch
from ase import Atoms

from mpnn_ip.calculators.results import energy_forces_stress
from mpnn_ip.data import AtomicDataModule, AtomicGraph, check_data, read_dataset
from mpnn_ip.data.ondisk import OnDiskDataModule
from mpnn_ip.data.reader_options import ReaderOptions
from mpnn_ip.data.store import LEGACY_LABELS, PROVENANCE_COLUMNS, STRUCTURE_COLUMNS, GraphStore, store_schema
from mpnn_ip.data.store_writer import write_store
from mpnn_ip.errors import ConfigError, DataError
from mpnn_ip.labels import STANDARD_LABELS, LabelSpec
from mpnn_ip.models import Potential
from mpnn_ip.outputs import (
    FITTED_LABELS,
    INPUTS,
    LABELS,
    OUTPUTS,
    QUANTITY_UNITS,
    register_label,
    unregister_label,
)
from mpnn_ip.train import PotentialModule
from mpnn_ip.train.lightning_module import DEFAULT_LOSS
from mpnn_ip.train.losses import LOSS_TERMS

CHARGE_SUM = LabelSpec("charge_sum", "e", "frame", max_magnitude=1e3, ase_names=("charge_sum",))
#: The rows of the standard table: the labels, then the inputs.
STANDARD_ROWS = ("energy", "forces", "stress", "dipole", "charge", "spin")
#: Charge (e) and energy (eV) of each atom of the toy data: every label is linear in the composition.
ATOM_CHARGE, ATOM_ENERGY = {29: 0.4, 79: -0.7}, {29: -3.5, 79: -3.8}
#: The shard columns of every store written before the label table (names, dtypes, shapes).
OLD_STORE_SCHEMA = {
    "pos": dict(dtype=torch.float64, size=(-1, 3)),
    "atomic_numbers": dict(dtype=torch.int64, size=(-1,)),
    "cell": dict(dtype=torch.float64, size=(1, 3, 3)),
    "pbc": dict(dtype=torch.bool, size=(1, 3)),
    "weight": dict(dtype=torch.float64, size=(1,)),
    "energy": dict(dtype=torch.float64, size=(1,)),
    "has_energy": dict(dtype=torch.bool, size=(1,)),
    "forces": dict(dtype=torch.float64, size=(-1, 3)),
    "has_forces": dict(dtype=torch.bool, size=(1,)),
    "stress": dict(dtype=torch.float64, size=(1, 3, 3)),
    "has_stress": dict(dtype=torch.bool, size=(1,)),
    "config_type": str,
    "source_path": str,
    "source_frame": int,
}
#: the toy files carry no forces or stress: the reader says so
pytestmark = pytest.mark.filterwarnings("ignore:.*no frame has a:UserWarning")


class ChargedAtoms(Potential):
    """Per-species atom energies and charges plus a weak pair repulsion (test-only).

    ``charge_sum`` [B] (e): the sum of the frame's atom charges, declared as an extra output.
    """

    extra_outputs = {"charge_sum": ("frame", "e")}

    def __init__(self, species: Sequence[int | str], r_max: float = 3.0):
        super().__init__(species, r_max)
        self.atom_energy = torch.nn.Parameter(torch.zeros(self.num_species))
        self.atom_charge = torch.nn.Parameter(torch.zeros(self.num_species))

    def atomic_outputs(self, graph):
        species, edge_index = graph["species"], graph["edge_index"]
        lengths = torch.linalg.vector_norm(graph["edge_vectors"], dim=-1)
        pair = torch.zeros_like(self.atom_energy[species]).index_add(0, edge_index[0], 0.01 / lengths)
        charges = self.atom_charge[species]
        charge_sum = torch.zeros(graph["num_graphs"], dtype=charges.dtype, device=charges.device)
        return {
            "node_energy": self.atom_energy[species] + pair,
            "charge_sum": charge_sum.index_add(0, graph["batch"], charges),
        }


@pytest.fixture
def charge_sum():
    register_label(CHARGE_SUM)
    yield CHARGE_SUM
    unregister_label(CHARGE_SUM.name)


def _write_frames(path, count: int = 12, seed: int = 0):
    """``count`` Cu-Au chains (2-5 atoms, about 2.5 Å apart) with info ``charge_sum`` (e) and ``energy`` (eV)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        numbers = rng.choice([29, 79], size=int(rng.integers(2, 6)))
        positions = 2.5 * np.outer(np.arange(len(numbers)), [1.0, 0.0, 0.0]) + rng.normal(0, 0.05, (len(numbers), 3))
        atoms = Atoms(numbers=numbers, positions=positions)
        atoms.info["charge_sum"] = float(sum(ATOM_CHARGE[int(z)] for z in numbers))
        atoms.info["energy"] = float(sum(ATOM_ENERGY[int(z)] for z in numbers))
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return path


def test_every_standard_label_has_a_row():
    assert tuple(LABELS) == STANDARD_ROWS == tuple(spec.name for spec in STANDARD_LABELS)
    assert {name: (spec.option, spec.key, spec.mask) for name, spec in LABELS.items()} == {
        "energy": ("energy_key", "energy", "has_energy"),
        "forces": ("forces_key", "forces", "has_forces"),
        "stress": ("stress_key", "stress", "has_stress"),
        "dipole": ("dipole_key", "dipole", "has_dipole"),
        "charge": ("charge_key", "charge", "has_charge"),
        "spin": ("spin_key", "spin", "has_spin"),
    }
    assert tuple(FITTED_LABELS) == ("energy", "forces", "stress", "dipole") and tuple(INPUTS) == ("charge", "spin")
    assert dict(LOSS_TERMS) == {"energy": "energy_per_atom", "forces": "forces", "stress": "stress", "dipole": "dipole"}
    assert DEFAULT_LOSS == {
        "energy": {"weight": 1.0, "fn": "mse"},
        "forces": {"weight": 10.0, "fn": "mse"},
        "stress": {"weight": 0.0, "fn": "mse"},
        "dipole": {"weight": 0.0, "fn": "mse"},
    }
    assert all(OUTPUTS[name].label == name and OUTPUTS[name].mask == spec.mask for name, spec in FITTED_LABELS.items())
    assert not set(INPUTS) & (set(OUTPUTS) | set(QUANTITY_UNITS))


def test_store_schema_is_the_tables_columns_and_the_old_stores_columns():
    label_columns = {column: kind for spec in LABELS.values() for column, kind in spec.columns.items()}
    assert store_schema() == {**STRUCTURE_COLUMNS, **label_columns, **PROVENANCE_COLUMNS}
    assert store_schema(LEGACY_LABELS) == OLD_STORE_SCHEMA
    assert list(store_schema(LEGACY_LABELS)) == list(OLD_STORE_SCHEMA)


def test_reader_options_take_the_config_keys_and_refuse_bad_ones():
    options = ReaderOptions.from_keywords(energy_key="REF_energy", stress_key=None, stress_unit="GPa", stress_sign=-1)
    assert options.key("energy") == "REF_energy" and options.key("forces") == "forces" and options.key("stress") is None
    assert options.stress_scale == pytest.approx(-1 / 160.21766208)
    assert set(options.as_settings()) == {
        "energy_key",
        "forces_key",
        "stress_key",
        "dipole_key",
        "charge_key",
        "spin_key",
        "stress_unit",
        "stress_sign",
        "virial_key",
        "index",
        "format",
    }
    with pytest.raises(ConfigError, match="unknown reading option"):
        ReaderOptions.from_keywords(energy_keys="E")
    with pytest.raises(ConfigError, match="unknown label"):
        ReaderOptions(label_keys={"quadrupole": "Q"})
    with pytest.raises(ConfigError, match="GPa"):
        ReaderOptions(stress_unit="psi")


def test_a_label_name_that_is_taken_is_refused():
    for name in ("forces", "virial", "pos", "energy_per_atom", "has_x"):
        with pytest.raises(ConfigError, match="cannot register"):
            register_label(LabelSpec(name, "e", "frame"))
    with pytest.raises(ConfigError, match="standard label"):
        unregister_label("energy")
    assert tuple(LABELS) == STANDARD_ROWS


def test_registered_label_is_read_checked_reported_and_given_to_ase(charge_sum, tmp_path):
    path = _write_frames(tmp_path / "charged.xyz", count=4)
    graphs = read_dataset(path)
    expected = [frame.info["charge_sum"] for frame in ase.io.read(path, ":")]
    assert [float(g.charge_sum) for g in graphs] == pytest.approx(expected)
    assert all(bool(g.has_charge_sum) for g in graphs)
    assert QUANTITY_UNITS["charge_sum"] == "e"
    report = check_data([str(path)], r_max=3.0)
    assert report["statistics"]["labels"]["charge_sum"] == 4
    with pytest.raises(DataError, match="no frame has the charge_sum key 'Q'"):
        read_dataset(path, charge_sum_key="Q")
    with pytest.raises(DataError, match=r"frame 0: charge_sum must be one number per frame"):
        AtomicGraph.from_atoms(Atoms("Cu"), charge_sum=[1.0, 2.0], path="x.xyz", frame=0)
    results = energy_forces_stress({"energy": torch.tensor([1.0]), "charge_sum": torch.tensor([0.5])}, False)
    assert results == {"energy": 1.0, "free_energy": 1.0, "charge_sum": 0.5}


def test_registered_label_trains_through_the_data_module(charge_sum, tmp_path):
    path = _write_frames(tmp_path / "charged.xyz")
    data = AtomicDataModule(str(path), val_count=4, test_count=0, batch_size=4, r_max=3.0)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch.charge_sum.shape == (4,) and batch.has_charge_sum.all()
    torch.manual_seed(0)
    model = ChargedAtoms(["Cu", "Au"]).double()
    task = PotentialModule(
        model, loss={"charge_sum": {"weight": 1.0}}, optimizer=lambda params: torch.optim.Adam(params, lr=0.05)
    )
    before = float(task.loss_fn(task(batch, compute_forces=False), batch)[0].detach())
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=40,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        inference_mode=False,
    )
    trainer.fit(task, datamodule=data)
    after, terms = task.loss_fn(task(batch, compute_forces=False), batch)
    assert list(terms) == ["charge_sum"]
    assert float(after) < 0.05 * before
    assert {"val/charge_sum_mae", "val/charge_sum_rmse", "val/loss_charge_sum"} <= set(trainer.callback_metrics)
    assert float(trainer.callback_metrics["val/charge_sum_mae"]) < 0.2


def test_store_keeps_the_registered_label(charge_sum, tmp_path):
    path = _write_frames(tmp_path / "charged.xyz", count=6)
    manifest, _ = write_store(tmp_path / "store", str(path), r_max=[3.0])
    assert manifest["labels"] == [*STANDARD_ROWS, "charge_sum"]
    assert manifest["reader_settings"]["charge_sum_key"] == "charge_sum"
    with sqlite3.connect(tmp_path / "store" / manifest["shards"][0]["file"]) as connection:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(graphs)")}
    assert {"COL_charge_sum", "COL_has_charge_sum", "COL_energy", "COL_has_stress"} <= columns
    store = GraphStore(tmp_path / "store")
    in_memory = read_dataset(path)
    assert [float(store[i].charge_sum) for i in range(len(store))] == [float(g.charge_sum) for g in in_memory]
    module = OnDiskDataModule(str(tmp_path / "store"), val_count=2, test_count=0, batch_size=4, r_max=3.0)
    batch = next(iter(module.train_dataloader()))
    assert batch.has_charge_sum.all() and batch.charge_sum.shape == (4,)
