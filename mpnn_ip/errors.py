"""Errors that speak to the user: which file, which frame, what is wrong, what to do."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data: names the file (when known), the frame and the problem."""

    def __init__(self, problem: str, *, path: str | None = None, frame: int | None = None):
        where = []
        if path is not None:
            where.append(f"file {path!s}")
        if frame is not None:
            where.append(f"frame {frame}")
        self.path, self.frame, self.problem = path, frame, problem
        super().__init__(f"{', '.join(where)}: {problem}" if where else problem)


class ConfigError(ValueError):
    """A configuration, checkpoint or model/data mismatch the user can fix; the message says how."""


class TrainingDiverged(RuntimeError):
    """Training stopped after too many consecutive optimizer steps with a non-finite loss or gradient
    (or before a checkpoint with non-finite weights would be written); the message names the frames of
    those steps, the last good checkpoint and what to try."""


class MDStopped(RuntimeError):
    """Molecular dynamics stopped by a safety check (atoms too close, an energy jump, a broken structure).

    The message names the step, the cause and where the trajectory is; ``summary`` is what was
    written to ``md_summary.json`` (``summary["stopped"]`` holds ``step``, ``reason`` and details).
    """

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary
