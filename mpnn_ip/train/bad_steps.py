"""Naming the frames of a skipped (non-finite) training step, the message of a diverged run, and refusing to
checkpoint non-finite weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mpnn_ip.errors import TrainingDiverged

#: Frames named per skipped step in warnings and in the :class:`TrainingDiverged` message.
MAX_FRAMES_NAMED = 10


def frame_names(batch_idx: int | None, paths, indices, count: int) -> list[str]:
    """``file:frame`` names from a batch's ``source_path`` (str or list) and ``source_frame`` ([B]); graphs
    built without them are named by their position (``batch 3, graph 1``)."""
    if paths is None or indices is None:
        prefix = "" if batch_idx is None else f"batch {batch_idx}, "
        return [f"{prefix}graph {i}" for i in range(count)]
    if isinstance(paths, str):
        paths = [paths] * count
    indices = indices.reshape(-1).tolist() if isinstance(indices, torch.Tensor) else list(indices)
    return [f"{path}:{int(index)}" for path, index in zip(paths, indices)]


def name_frames(frames: Sequence[str], limit: int = MAX_FRAMES_NAMED) -> str:
    """``a.xyz:3, a.xyz:17`` (the first ``limit`` ones, then how many more)."""
    named = ", ".join(frames[:limit])
    return named if len(frames) <= limit else f"{named} and {len(frames) - limit} more"


def refuse_non_finite_weights(checkpoint: Mapping, model: torch.nn.Module, kept: list[str]) -> None:
    """:class:`TrainingDiverged` (before anything is written) when the checkpoint's weights (EMA or raw)
    or the model's training weights hold NaN/inf."""
    tensors = [(f"state_dict {name}", v) for name, v in checkpoint.get("state_dict", {}).items()]
    tensors += [(f"parameter {name}", p) for name, p in model.named_parameters()]
    bad = [
        name
        for name, v in tensors
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        where = f"the last good checkpoint is kept: {kept[0]}" if kept else "no checkpoint had been written yet"
        raise TrainingDiverged(
            f"training diverged: the weights hold NaN/inf ({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}), so no "
            f"checkpoint was written and the run stopped; {where}. Lower the learning rate (optim.lr=...), add gradient "
            "clipping (trainer.gradient_clip_val=...) or train in float64 (dtype=float64)."
        )


def diverged_message(history: Sequence[tuple], bad_steps: int, max_bad_steps: int, paths: Sequence[str]) -> str:
    """The :class:`TrainingDiverged` message: the skipped steps of ``history`` ((step, epoch, reason, frames) each),
    how many in a row, and the kept checkpoints ``paths`` to start again from."""
    (first_step, first_epoch, *_), (last_step, last_epoch, *_) = history[0], history[-1]
    epochs = f"epoch {last_epoch}" if first_epoch == last_epoch else f"epochs {first_epoch}-{last_epoch}"
    if bad_steps == 1:
        what = f"an optimizer step (step {last_step}, {epochs}) had a non-finite loss or gradient and was skipped"
    else:
        what = (
            f"{bad_steps} consecutive optimizer steps (steps {first_step}-{last_step}, {epochs}) had a "
            "non-finite loss or gradient and were skipped"
        )
    lines = [f"training diverged: {what} (max_bad_steps={max_bad_steps}); the run stopped."]
    for step, _epoch, reason, frames in history:
        lines.append(f"  step {step}: {reason}; frames {name_frames(frames)}")
    if paths:
        others = f" (also kept: {', '.join(paths[1:])})" if len(paths) > 1 else ""
        lines.append(f"The last good checkpoint is kept: {paths[0]}{others}.")
        restart = f" Then start again from the last good checkpoint with ckpt_path={paths[0]} and the changed settings."
    else:
        lines.append("No checkpoint of this run had been written yet.")
        restart = ""
    lines.append(
        "To try: check the frames named above (labels, units, weights, atoms too close), lower the learning rate "
        "(optim.lr=...), add gradient clipping (trainer.gradient_clip_val=...) or train in float64 (dtype=float64)."
        f"{restart} max_bad_steps=0 skips such steps without ever stopping."
    )
    return "\n".join(lines)
