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
