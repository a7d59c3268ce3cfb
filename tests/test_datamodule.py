"""AtomicDataModule: deterministic disjoint splits, separate files, loaders, cached statistics."""

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from mpnn_ip.data import AtomicDataModule, compute_statistics, synthetic
from mpnn_ip.data import datamodule as datamodule_module
from mpnn_ip.errors import ConfigError, DataError


def make_frames(num_frames, seed=0):
    """Cheap labelled Cu-Au frames (8 atoms, random labels, distinct energies)."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(num_frames):
        atoms = bulk("Cu", "fcc", a=3.8, cubic=True).repeat((2, 1, 1))
        atoms.numbers[rng.permutation(8)[: k % 5]] = 79
        atoms.positions += rng.normal(0, 0.05, size=(8, 3))
        atoms.calc = SinglePointCalculator(
            atoms,
            energy=-30.0 - k - rng.uniform(0, 0.5),
            forces=rng.normal(size=(8, 3)),
            stress=rng.normal(size=6) * 1e-3,
        )
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "cuau.xyz"
    ase.io.write(path, make_frames(40, seed=1), format="extxyz")
    return path


def _ids(dataset):
    """Frames identified by their energy (distinct for every frame)."""
    return [round(g.energy.item(), 10) for g in dataset]


def test_fraction_split_is_disjoint_complete_and_sized(train_file):
    dm = AtomicDataModule(train_path=str(train_file), val_fraction=0.1, test_fraction=0.2)
    dm.setup()
    train, val, test = _ids(dm.train_dataset), _ids(dm.val_dataset), _ids(dm.test_dataset)
    assert (len(train), len(val), len(test)) == (28, 4, 8)
    assert len(set(train) | set(val) | set(test)) == 40


def test_split_is_deterministic_given_the_seed(train_file):
    first, second, other = (AtomicDataModule(train_path=str(train_file), seed=s) for s in (5, 5, 6))
    for dm in (first, second, other):
        dm.setup()
    assert _ids(first.val_dataset) == _ids(second.val_dataset)
    assert _ids(first.train_dataset) == _ids(second.train_dataset)
    assert _ids(first.val_dataset) != _ids(other.val_dataset)


def test_counts_override_fractions_and_keep_validation_fixed(train_file):
    dm = AtomicDataModule(train_path=str(train_file), train_count=20, val_count=5, test_count=0, val_fraction=0.5)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (20, 5, 0)
    more = AtomicDataModule(train_path=str(train_file), train_count=30, val_count=5, test_count=0)
    more.setup()
    assert _ids(more.val_dataset) == _ids(dm.val_dataset)
    assert set(_ids(dm.train_dataset)) <= set(_ids(more.train_dataset))


def test_too_many_requested_frames_is_a_config_error(train_file):
    with pytest.raises(ConfigError, match="40 frames"):
        AtomicDataModule(train_path=str(train_file), train_count=39, val_count=5).setup()


def test_separate_validation_and_test_files(train_file, tmp_path):
    ase.io.write(tmp_path / "val.xyz", make_frames(6, seed=7), format="extxyz")
    dm = AtomicDataModule(
        train_path=str(train_file), val_path=str(tmp_path / "val.xyz"), test_path=str(tmp_path / "val.xyz")
    )
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (40, 6, 6)


def test_validation_file_without_test_file_keeps_every_training_frame(train_file, tmp_path):
    ase.io.write(tmp_path / "val.xyz", make_frames(6, seed=7), format="extxyz")
    dm = AtomicDataModule(train_path=str(train_file), val_path=str(tmp_path / "val.xyz"))
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (40, 6, 0)


@pytest.mark.parametrize("asked, expected_test", [({"test_fraction": 0.1}, 4), ({"test_count": 3}, 3)])
def test_validation_file_with_an_explicit_test_size_splits_test_frames_off(train_file, tmp_path, asked, expected_test):
    ase.io.write(tmp_path / "val.xyz", make_frames(6, seed=7), format="extxyz")
    dm = AtomicDataModule(train_path=str(train_file), val_path=str(tmp_path / "val.xyz"), **asked)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (40 - expected_test, 6, expected_test)


def test_default_test_fraction_is_a_tenth_when_validation_is_split_off_too(train_file):
    dm = AtomicDataModule(train_path=str(train_file))
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (32, 4, 4)


def test_extxyz_config_default_leaves_the_test_fraction_to_the_data_module():
    """configs/data/extxyz.yaml must not pin test_fraction, else a val_path would still take test frames."""
    from omegaconf import OmegaConf

    from mpnn_ip.cli.hydra_app import config_dir

    for name in ("extxyz", "synthetic"):
        assert OmegaConf.load(config_dir() / "data" / f"{name}.yaml").test_fraction is None, name


def test_glob_patterns_concatenate_the_matching_files_in_sorted_order(tmp_path):
    ase.io.write(tmp_path / "b.xyz", make_frames(3, seed=2), format="extxyz")
    ase.io.write(tmp_path / "a.xyz", make_frames(4, seed=3), format="extxyz")
    ase.io.write(tmp_path / "val_1.xyz", make_frames(2, seed=4), format="extxyz")
    dm = AtomicDataModule(
        train_path=str(tmp_path / "[ab].xyz"), val_path=str(tmp_path / "val_*.xyz"), test_fraction=0.0
    )
    graphs = dm._read(str(tmp_path / "[ab].xyz"))
    expected = [round(a.get_potential_energy(), 10) for a in make_frames(4, seed=3) + make_frames(3, seed=2)]
    assert [round(g.energy.item(), 10) for g in graphs] == expected
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (7, 2)


def test_pattern_without_matches_is_a_data_error_naming_it(tmp_path):
    dm = AtomicDataModule(train_path=str(tmp_path / "missing_*.xyz"))
    with pytest.raises(DataError, match="missing_"):
        dm.setup()


def test_setup_is_idempotent(train_file):
    dm = AtomicDataModule(train_path=str(train_file))
    dm.setup("fit")
    train = dm.train_dataset
    dm.setup("validate")
    assert dm.train_dataset is train


def test_loaders_yield_batches_with_batch_and_ptr(train_file):
    dm = AtomicDataModule(train_path=str(train_file), batch_size=4, val_batch_size=3)
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs == 4 and batch.ptr.shape == (5,) and batch.batch.shape == (batch.pos.shape[0],)
    assert batch.energy.shape == (4,) and batch.stress.shape == (4, 3, 3) and batch.cell.shape == (4, 3, 3)
    val_batches = list(dm.val_dataloader())
    assert val_batches[0].num_graphs == 3
    assert [round(e, 10) for b in val_batches for e in b.energy.tolist()] == _ids(dm.val_dataset)


def test_statistics_are_computed_once_from_the_training_split(train_file, monkeypatch):
    dm = AtomicDataModule(train_path=str(train_file), r_max=4.0, isolated_atoms={"Cu": -0.1, "Au": -0.2})
    calls = []
    original = datamodule_module.frame_summaries
    monkeypatch.setattr(datamodule_module, "frame_summaries", lambda *a, **k: calls.append(1) or original(*a, **k))
    stats = dm.statistics()
    assert dm.statistics() is stats and len(calls) == 1
    assert stats["num_frames"] == len(dm.train_dataset) and stats["r_max"] == 4.0
    assert stats["e0s"] == {29: -0.1, 79: -0.2} and stats["species"] == [29, 79]
    isolated = {29: -0.1, 79: -0.2}
    assert stats == compute_statistics(dm.train_dataset.graphs, 4.0, isolated)  # the same path as in memory


def test_element_outside_species_names_element_file_and_frame(train_file):
    with pytest.raises(DataError, match=r"cuau.xyz, frame \d+: element\(s\) Au not in"):
        AtomicDataModule(train_path=str(train_file), species=["Cu"]).setup()
    AtomicDataModule(train_path=str(train_file), species=["Cu", 79]).setup()


def test_no_train_path_uses_the_embedded_synthetic_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MPNN_IP_CACHE", str(tmp_path))
    monkeypatch.setattr(synthetic, "DEFAULT_NUM_FRAMES", 10)
    monkeypatch.setattr(synthetic, "make_dataset", lambda num_frames, seed: make_frames(num_frames, seed))
    dm = AtomicDataModule(val_count=2, test_count=1)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (7, 2, 1)
    assert list(tmp_path.glob("cu_au_emt_*.extxyz"))
