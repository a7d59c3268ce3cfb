"""Train/validation/test indices of one training file's frames: the split rules of every data module.

Validation and test frames are drawn first from a seeded permutation (so they do not change
with ``train_count``), then the training frames. :class:`~mpnn_ip.data.split_module.SplitDataModule`
splits with it, so a store (``data=ondisk``) splits exactly as its files read in memory do.
"""

from __future__ import annotations

import numpy as np

from mpnn_ip.errors import ConfigError

#: Share of the training file split off for testing when neither a test file nor a test size is given
#: and validation frames are split off the training file as well.
DEFAULT_TEST_FRACTION = 0.1


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


def _split_size(total: int, fraction: float, count: int | None, name: str) -> int:
    if count is not None:
        if count < 0 or count >= total:
            raise ConfigError(f"{name}_count={count} must be in 0..{total - 1} for a file of {total} frames")
        return int(count)
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"{name}_fraction={fraction} must be in [0, 1)")
    size = int(round(fraction * total))
    return max(size, 1) if fraction > 0 and total > 2 else size
