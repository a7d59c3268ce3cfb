"""The embedded Cu-Au EMT dataset: deterministic, labels are EMT's, ASE stress sign, cached file."""

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from mpnn_ip.data import default_dataset_path, make_dataset, read_dataset, synthetic


@pytest.fixture(scope="module")
def frames():
    return make_dataset(num_frames=12, seed=3)


def test_same_seed_gives_identical_frames(frames):
    again = make_dataset(num_frames=12, seed=3)
    assert len(again) == len(frames)
    for a, b in zip(frames, again):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.cell.array, b.cell.array)
        assert a.get_potential_energy() == b.get_potential_energy()
        np.testing.assert_array_equal(a.get_forces(), b.get_forces())


def test_different_seed_gives_different_frames(frames):
    other = make_dataset(num_frames=4, seed=4)  # one rattled frame first, like the fixture's
    assert not np.array_equal(frames[0].positions, other[0].positions)


def test_frame_count_and_kinds(frames):
    assert len(frames) == 12
    kinds = {a.info["config_type"] for a in frames}
    assert {"rattled", "strained", "vacancy", "md_300K", "md_600K", "md_1200K"} <= kinds
    assert {int(z) for a in frames for z in a.numbers} == {29, 79}
    assert all(a.pbc.all() for a in frames)


def test_labels_are_emt_energy_forces_and_stress(frames):
    for atoms in (frames[0], frames[-1]):
        fresh = atoms.copy()
        fresh.calc = EMT()
        assert atoms.get_potential_energy() == pytest.approx(fresh.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), fresh.get_forces(), atol=1e-10)
        np.testing.assert_allclose(atoms.get_stress(), fresh.get_stress(), atol=1e-12)


def test_compressed_crystal_has_negative_ase_stress():
    compressed = synthetic._label(bulk("Cu", "fcc", a=3.4, cubic=True), "check")
    assert np.all(compressed.get_stress()[:3] < 0)
    stretched = synthetic._label(bulk("Cu", "fcc", a=3.8, cubic=True), "check")
    assert np.all(stretched.get_stress()[:3] > 0)


def test_default_file_is_written_once_and_reused(tmp_path, monkeypatch, frames):
    monkeypatch.setattr(synthetic, "DEFAULT_NUM_FRAMES", 12)
    monkeypatch.setattr(synthetic, "make_dataset", lambda num_frames, seed: frames[:num_frames])
    path = default_dataset_path(tmp_path)
    assert path.is_file() and path.parent == tmp_path and f"v{synthetic.RECIPE_VERSION}" in path.name
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    mtime = path.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the cached file exists")

    monkeypatch.setattr(synthetic, "make_dataset", fail)
    assert default_dataset_path(tmp_path) == path and path.stat().st_mtime_ns == mtime
    graphs = read_dataset(path)
    assert len(graphs) == 12 and all(g.has_energy and g.has_forces and g.has_stress for g in graphs)


def test_cache_folder_follows_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MPNN_IP_CACHE", str(tmp_path / "cache"))
    assert synthetic.cache_directory() == tmp_path / "cache"
