"""Train/validation/test indices of one training file's frames: the rules of :class:`~mpnn_ip.data.AtomicDataModule`.

Validation and test frames are drawn first from a seeded permutation (so they do not change
with ``train_count``), then the training frames. Used by the on-disk data module
(:class:`~mpnn_ip.data.ondisk.OnDiskDataModule`) so that a store splits exactly as its files do.
"""

from __future__ import annotations

import numpy as np

from mpnn_ip.data.datamodule import DEFAULT_TEST_FRACTION, _split_size
from mpnn_ip.errors import ConfigError


def split_indices(
    num_frames: int,
    *,
    separate_val: bool,
    separate_test: bool,
    train_count: int | None,
    val_fraction: float,
    val_count: int | None,
    test_fraction: float | None,
    test_count: int | None,
    seed: int,
    where: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train, val, test)`` indices into ``num_frames`` training-file frames.

    ``separate_val``/``separate_test``: the split comes from its own file (nothing is taken from
    the training frames for it; its returned indices are empty). ``where`` names the data in errors.
    """
    if test_fraction is None:
        test_fraction = DEFAULT_TEST_FRACTION if not separate_val else 0.0
    n_val = 0 if separate_val else _split_size(num_frames, val_fraction, val_count, "val")
    n_test = 0 if separate_test else _split_size(num_frames, float(test_fraction), test_count, "test")
    n_rest = num_frames - n_val - n_test
    n_train = n_rest if train_count is None else int(train_count)
    if n_train < 1 or n_train > n_rest:
        raise ConfigError(
            f"{where} has {num_frames} frames: cannot take {n_train} training frames after "
            f"{n_val} validation and {n_test} test frames (adjust train_count / val_* / test_*)"
        )
    order = np.random.default_rng(seed).permutation(num_frames)
    return order[n_val + n_test : n_val + n_test + n_train], order[:n_val], order[n_val : n_val + n_test]
