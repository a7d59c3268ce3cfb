"""Datasets larger than memory: the on-disk graph store (``mpnn-preprocess``) and ``data=ondisk``.

Streaming statistics equal ``compute_statistics``; the lazy store gives the same splits, batches
and statistics as the files read in memory; a store is reused for unchanged inputs, rebuilt (saying
why) for a changed file or setting, and refused by training when written in another format version.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from mpnn_ip.data import compute_statistics, default_dataset_path, read_dataset
from mpnn_ip.data.statistics import StatisticsAccumulator
from mpnn_ip.data.store import MANIFEST, GraphStore
from mpnn_ip.data.store_writer import write_store
from mpnn_ip.errors import DataError

pytest.importorskip("lightning")

R_MAX = 4.5  # the cutoff of model=nequip_tiny
SPLIT = dict(train_count=20, val_count=5, test_count=5, seed=3, batch_size=4, r_max=R_MAX)
READ = dict(energy_key="energy", forces_key="forces", stress_key="stress")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def frames_file(folder) -> Path:
    """The first 40 frames of the quickstart (synthetic Cu-Au EMT) set."""
    path = folder / "cuau40.xyz"
    ase.io.write(path, ase.io.read(default_dataset_path(), index=":40"))
    return path


@pytest.fixture(scope="module")
def store(folder, frames_file) -> Path:
    """Its store in 3 shards (15 + 15 + 10 frames)."""
    out = folder / "cuau40_store"
    write_store(out, str(frames_file), read_options=READ, r_max=[R_MAX], shard_size=15)
    return out


def assert_same_statistics(streamed: dict, in_memory: dict) -> None:
    assert set(streamed) == set(in_memory)
    for key, value in in_memory.items():
        if key in ("e0s", "energy_shifts"):
            assert streamed[key].keys() == value.keys()
            for z in value:
                assert streamed[key][z] == pytest.approx(value[z], abs=1e-8), (key, z)
        elif key in ("force_rms", "energy_per_atom_rms_after_e0"):
            assert streamed[key] == pytest.approx(value, rel=1e-10), key
        elif key == "energy_per_atom_mean_after_e0":
            assert streamed[key] == pytest.approx(value, abs=1e-10), key
        else:  # species, sources, counts, r_max, and the mean neighbour count: exactly
            assert streamed[key] == value, key


def streamed_statistics(graphs, **options) -> dict:
    accumulator = StatisticsAccumulator(R_MAX)
    for graph in graphs:
        accumulator.add_graph(graph)
    return accumulator.result(options.get("isolated"), species=options.get("species"))


def test_frame_by_frame_statistics_equal_those_of_all_frames_in_one_pass(frames_file):
    graphs = read_dataset(frames_file)
    assert_same_statistics(streamed_statistics(graphs[:16]), compute_statistics(graphs[:16], R_MAX))
    copper = [g for g in graphs if set(g.atomic_numbers.tolist()) == {29}]  # one species: Au absent, E0 0
    assert len(copper) >= 2
    assert_same_statistics(
        streamed_statistics(copper, species=[29, 79]), compute_statistics(copper, R_MAX, species=[29, 79])
    )
    isolated = {29: -0.3, 79: -0.2}
    assert_same_statistics(streamed_statistics(copper, isolated=isolated), compute_statistics(copper, R_MAX, isolated))


def test_lazy_store_gives_the_same_splits_batches_and_statistics(store, frames_file):
    from mpnn_ip.data.datamodule import AtomicDataModule
    from mpnn_ip.data.ondisk import OnDiskDataModule

    in_memory = AtomicDataModule(train_path=str(frames_file), **SPLIT)
    on_disk = OnDiskDataModule(store=str(store), **SPLIT)
    in_memory.setup(), on_disk.setup()
    assert len(on_disk.store.shards) == 3
    assert_same_statistics(on_disk.statistics(), in_memory.statistics())
    for split in ("train", "val", "test"):
        expected, got = getattr(in_memory, f"{split}_dataloader")(), getattr(on_disk, f"{split}_dataloader")()
        for epoch in (0, 1):
            for loader in (expected, got):
                loader.sampler.set_epoch(epoch)
            pairs = list(zip(expected, got, strict=True))
            assert pairs
            for a, b in pairs:
                assert a.keys() == b.keys()
                for key in a.keys():
                    if isinstance(a[key], torch.Tensor):
                        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (split, key)
                    else:
                        assert a[key] == b[key], (split, key)
    packed = [
        AtomicDataModule(train_path=str(frames_file), max_atoms_per_batch=100, **SPLIT),
        OnDiskDataModule(store=str(store), max_atoms_per_batch=100, **SPLIT),
    ]
    expected, got = (list(module.train_dataloader()) for module in packed)
    assert [b.source_frame.tolist() for b in got] == [b.source_frame.tolist() for b in expected]
    prepared = list(on_disk.train_dataset.graphs)
    assert [int(g.source_frame) for g in prepared] == [int(g.source_frame) for g in in_memory.train_dataset.graphs]


def test_a_validation_file_becomes_the_validation_split_as_in_memory(folder, frames_file):
    from mpnn_ip.data.datamodule import AtomicDataModule
    from mpnn_ip.data.ondisk import OnDiskDataModule

    frames = ase.io.read(frames_file, index=":")
    train_file, val_file = folder / "train12.xyz", folder / "val4.xyz"
    ase.io.write(train_file, frames[:12]), ase.io.write(val_file, frames[12:16])
    out = folder / "train_val_store"
    manifest, _ = write_store(out, str(train_file), str(val_file), read_options=READ, r_max=[3.0])
    assert manifest["parts"] == {"train": [0, 12], "val": [12, 16]}
    options = dict(train_count=10, seed=1, r_max=3.0)
    in_memory = AtomicDataModule(train_path=str(train_file), val_path=str(val_file), test_count=2, **options)
    on_disk = OnDiskDataModule(store=str(out), test_count=2, **options)
    in_memory.setup(), on_disk.setup()
    for split in ("train", "val", "test"):
        expected = [(g.source_path, int(g.source_frame)) for g in getattr(in_memory, f"{split}_dataset").graphs]
        got = [(g.source_path, int(g.source_frame)) for g in getattr(on_disk, f"{split}_dataset").graphs]
        assert got == expected, split


def test_two_loader_workers_read_the_same_batches(store):
    from mpnn_ip.data.ondisk import OnDiskDataModule

    single = list(OnDiskDataModule(store=str(store), **SPLIT).train_dataloader())
    workers = list(OnDiskDataModule(store=str(store), num_workers=2, **SPLIT).train_dataloader())
    assert len(single) == len(workers)
    for a, b in zip(single, workers):
        assert (
            torch.equal(a.pos, b.pos)
            and torch.equal(a.forces, b.forces)
            and torch.equal(a.source_frame, b.source_frame)
        )


def test_rerun_reuses_the_store_and_a_changed_file_or_setting_rebuilds_it(folder):
    source = folder / "five.xyz"
    frames = ase.io.read(default_dataset_path(), index=":5")
    ase.io.write(source, frames)
    out = folder / "five_store"
    manifest, happened = write_store(out, str(source), read_options=READ, r_max=[3.0])
    assert happened == "written" and manifest["num_frames"] == 5
    assert manifest["inputs"]["train"][0]["sha256"] and manifest["inputs"]["train"][0]["frames_written"] == 5
    _, happened = write_store(out, str(source), read_options=READ, r_max=[3.0])
    assert happened.startswith("reused")
    _, happened = write_store(out, str(source), read_options=READ, r_max=[3.0, 3.5])
    assert happened.startswith("reused") and "r_max=[3.5]" in happened
    assert sorted(GraphStore(out).manifest["r_max"]) == [3.0, 3.5]

    ase.io.write(source, frames[:4])
    manifest, happened = write_store(out, str(source), read_options=READ, r_max=[3.0])
    assert happened.startswith("rebuilt: train input changed") and str(source) in happened
    assert manifest["num_frames"] == 4 and len(GraphStore(out)) == 4
    _, happened = write_store(out, str(source), read_options={**READ, "stress_key": None}, r_max=[3.0])
    assert happened.startswith("rebuilt: reader settings changed: stress_key 'stress' -> None")
    assert not any(p.name.startswith(".five_store") for p in folder.iterdir())  # no leftover temporary folders


def test_store_of_another_format_version_is_refused_by_training_and_rebuilt_by_preprocess(folder, frames_file):
    from mpnn_ip.data.ondisk import OnDiskDataModule

    source = folder / "three.xyz"
    ase.io.write(source, ase.io.read(frames_file, index=":3"))
    out = folder / "old_store"
    write_store(out, str(source), read_options=READ, r_max=[3.0])
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "format_version": 0, "mpnn_ip_version": "0.0.1"}))
    with pytest.raises(DataError, match=r"store format version 0 \(by mpnn_ip 0.0.1\).*Re-run mpnn-preprocess"):
        OnDiskDataModule(store=str(out), val_count=1, test_count=0).setup()
    _, happened = write_store(out, str(source), read_options=READ, r_max=[3.0])
    assert happened.startswith("rebuilt: it was written in store format version 0")
    with pytest.raises(DataError, match="is not a graph store"):
        write_store(folder, str(source), read_options=READ)  # a folder of other files is never overwritten


def test_bad_frames_are_skipped_into_the_manifest_or_raise(folder, frames_file):
    from mpnn_ip.data.ondisk import OnDiskDataModule

    frames = ase.io.read(frames_file, index=":6")
    frames[2].positions[1] = frames[2].positions[0] + 0.01  # overlapping atoms
    source = folder / "bad.xyz"
    ase.io.write(source, frames)
    with pytest.raises(DataError, match="frame 2"):
        write_store(folder / "bad_raise", str(source), read_options=READ, r_max=[3.0])
    assert not (folder / "bad_raise").exists()
    manifest, _ = write_store(folder / "bad_skip", str(source), read_options=READ, r_max=[3.0], on_error="skip")
    assert manifest["num_frames"] == 5 and [(p["frame"], p["kind"]) for p in manifest["skipped"]] == [
        (2, "close_atoms")
    ]
    module = OnDiskDataModule(store=str(folder / "bad_skip"), val_count=1, test_count=1)
    module.setup()
    assert [(p.frame, p.kind) for p in module.skipped_frames] == [(2, "close_atoms")]
    assert sorted(int(module.store[i].source_frame) for i in range(5)) == [0, 1, 3, 4, 5]


def test_mpnn_preprocess_then_mpnn_train_data_ondisk_with_two_workers(folder, frames_file, monkeypatch, capsys):
    from hydra.core.global_hydra import GlobalHydra

    from mpnn_ip.cli import preprocess, train

    monkeypatch.chdir(folder)
    out = folder / "cli_store"
    preprocess.main([f"data.train_path={frames_file}", "model=nequip_tiny", f"out={out}", "shard_size=16"])
    printed = capsys.readouterr().out
    assert "written" in printed and "frames written: 40 (train 40); skipped: 0; shards: 3" in printed
    preprocess.main([f"data.train_path={frames_file}", "model=nequip_tiny", f"out={out}"])
    assert "reused" in capsys.readouterr().out

    run_dir = folder / "cli_run"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "mpnn-train",
            "model=nequip_tiny",
            "data=ondisk",
            f"data.store={out}",
            "data.train_count=8",
            "data.val_count=4",
            "data.test_count=4",
            "data.batch_size=4",
            "data.num_workers=2",
            "trainer.max_epochs=1",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            f"hydra.run.dir={run_dir}",
        ],
    )
    try:
        train.main()
    finally:
        GlobalHydra.instance().clear()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 1 and metrics["split"] == "test" and metrics["num_frames"] == 4
    assert metrics["statistics"]["num_frames"] == 8 and np.isfinite(metrics["best_val_loss"])


def test_both_data_modules_share_one_split_base_and_only_files_replay(store, frames_file):
    from mpnn_ip.data.datamodule import AtomicDataModule
    from mpnn_ip.data.ondisk import OnDiskDataModule
    from mpnn_ip.data.split_module import SplitDataModule
    from mpnn_ip.errors import ConfigError

    assert issubclass(OnDiskDataModule, SplitDataModule) and not issubclass(OnDiskDataModule, AtomicDataModule)
    assert "add_replay" not in vars(OnDiskDataModule)  # the base refuses; nothing is overridden to refuse
    with pytest.raises(
        ConfigError, match=r"replaying old frames \(finetune.replay_path\) needs frames read from files"
    ):
        OnDiskDataModule(store=str(store), **SPLIT).add_replay(str(frames_file), 0.2)
