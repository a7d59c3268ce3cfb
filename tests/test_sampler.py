"""Epoch orders, process shares and atom-budget batches (:mod:`mpnn_ip.data.sampler`): seeded by seed and
epoch only, every frame once per epoch, the union of the processes' shares equal to the one-process
batches, equal step counts on every process, and ``data.max_atoms_per_batch`` in the data module."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from torch.utils.data import DistributedSampler

from mpnn_ip.data.datamodule import AtomicDataModule
from mpnn_ip.data.sampler import AtomBudgetBatchSampler, EpochOrder, ProcessShare, pack_by_atoms

#: a mix of 3-atom molecules and 16..54-atom cells
SIZES = [3, 16, 3, 54, 3, 3, 32, 16, 3, 3, 54, 16, 3, 32, 3, 3, 16]


def test_training_order_is_distributed_samplers_shuffle_for_every_process_count():
    for replicas in (1, 2, 3):
        for rank in range(replicas):
            ours = ProcessShare(EpochOrder(17, shuffle=True, seed=5), replicas, rank, pad=True)
            torchs = DistributedSampler(range(17), num_replicas=replicas, rank=rank, shuffle=True, seed=5)
            for epoch in (0, 3):
                ours.set_epoch(epoch)
                torchs.set_epoch(epoch)
                assert list(ours) == list(torchs) and len(ours) == len(torchs)


def test_order_depends_only_on_seed_and_epoch():
    torch.manual_seed(0)
    a = list(EpochOrder(30, seed=1))
    torch.manual_seed(123)  # the global RNG plays no part
    assert list(EpochOrder(30, seed=1)) == a
    later = EpochOrder(30, seed=1)
    later.set_epoch(1)
    assert list(later) != a and sorted(later) == list(range(30))


def test_one_process_batch_is_the_union_of_the_processes_batches():
    one = list(ProcessShare(EpochOrder(16, seed=2)))
    shares = [list(ProcessShare(EpochOrder(16, seed=2), 2, rank)) for rank in (0, 1)]
    for step in range(4):  # 1 x 4 frames == 2 x 2 frames
        assert sorted(one[4 * step : 4 * step + 4]) == sorted(
            shares[0][2 * step : 2 * step + 2] + shares[1][2 * step : 2 * step + 2]
        )


def test_evaluation_shares_cover_every_frame_once_without_repeats():
    shares = [list(ProcessShare(EpochOrder(7, shuffle=False), 3, rank, pad=False)) for rank in range(3)]
    assert sorted(sum(shares, [])) == list(range(7))


def test_packed_batches_respect_the_atom_budget_and_cover_every_frame_once():
    batches = pack_by_atoms(list(EpochOrder(len(SIZES), seed=0)), SIZES, 60)
    assert sorted(i for batch in batches for i in batch) == list(range(len(SIZES)))
    assert all(sum(SIZES[i] for i in batch) <= 60 for batch in batches)
    assert len(batches) < len(SIZES)  # small frames share batches


def test_a_frame_larger_than_the_budget_gets_its_own_batch_with_a_warning():
    with pytest.warns(UserWarning, match="batch of its own"):
        sampler = AtomBudgetBatchSampler(EpochOrder(len(SIZES), seed=0), SIZES, 40)
    for batch in sampler:
        assert len(batch) == 1 or sum(SIZES[i] for i in batch) <= 40
    assert sorted(i for batch in sampler for i in batch) == list(range(len(SIZES)))


def test_packing_is_deterministic_and_changes_with_the_epoch():
    a, b = (AtomBudgetBatchSampler(EpochOrder(len(SIZES), seed=4), SIZES, 60) for _ in range(2))
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)


@pytest.mark.parametrize("replicas", [2, 3])
def test_packed_shares_have_equal_step_counts_and_cover_the_one_process_batches(replicas):
    one = list(AtomBudgetBatchSampler(EpochOrder(len(SIZES), seed=7), SIZES, 60))
    shares = [
        list(AtomBudgetBatchSampler(EpochOrder(len(SIZES), seed=7), SIZES, 60, replicas, rank))
        for rank in range(replicas)
    ]
    assert len({len(share) for share in shares}) == 1
    union = [batch for step in zip(*shares) for batch in step]
    assert union[: len(one)] == one  # the same batches, dealt round robin; the last ones repeated to fill the step
    evaluation = [
        list(AtomBudgetBatchSampler(EpochOrder(len(SIZES), False), SIZES, 60, replicas, r, pad=False))
        for r in range(replicas)
    ]
    assert sorted(i for share in evaluation for batch in share for i in batch) == list(range(len(SIZES)))


def _mixed_frames(path):
    import ase.io

    frames = []
    for k in range(12):
        atoms = molecule("H2O") if k % 3 else bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
        atoms.rattle(0.05, seed=k)
        atoms.calc = None
        atoms.info["energy"] = -float(len(atoms)) + 0.01 * k
        atoms.arrays["forces"] = np.full((len(atoms), 3), 0.01 * k)
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return frames


def test_datamodule_packs_batches_up_to_max_atoms_per_batch(tmp_path):
    path = tmp_path / "mixed.xyz"
    _mixed_frames(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm = AtomicDataModule(
            train_path=str(path), val_count=2, test_count=0, max_atoms_per_batch=40, seed=1, outlier_sigma=None
        )
        dm.setup()
        batches = list(dm.train_dataloader())
    assert sum(int(b.num_graphs) for b in batches) == len(dm.train_dataset)
    assert all(int(b.num_nodes) <= 40 or int(b.num_graphs) == 1 for b in batches)
    assert max(int(b.num_graphs) for b in batches) > 1
    assert sum(int(b.num_graphs) for b in dm.val_dataloader()) == 2


def test_max_atoms_per_batch_must_be_positive():
    from mpnn_ip.errors import ConfigError

    with pytest.raises(ConfigError, match="max_atoms_per_batch"):
        AtomicDataModule(max_atoms_per_batch=0)
