"""Problems found in data files, as records: which file, which frame, what kind, what is wrong.

A :class:`Problem` is an ``"error"`` (the frame cannot be trained on: raised, or dropped with
``on_error="skip"``) or a ``"warning"`` (reported, the frame is kept). :class:`FrameError` is
the :class:`~mpnn_ip.errors.DataError` a per-frame check raises; it carries the problem's kind.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from mpnn_ip.errors import DataError

#: How many problems the message of a raised :class:`DataError` lists before "and N more".
MAX_LISTED = 20
#: Columns of ``skipped_frames.csv``.
CSV_COLUMNS = ("path", "frame", "kind", "message")


class FrameError(DataError):
    """A bad frame: ``kind`` names the check that failed (``non_finite``, ``shape``, ``close_atoms`` ...)."""

    def __init__(self, problem: str, *, kind: str, path: str | None = None, frame: int | None = None):
        super().__init__(problem, path=path, frame=frame)
        self.kind = kind


@dataclass(frozen=True)
class Problem:
    """One problem of one frame (``frame`` is None for a whole file), in file order.

    ``frame`` counts frames within the file's ``index`` selection, from 0.
    """

    path: str
    frame: int | None
    kind: str
    message: str
    severity: str = "error"

    @classmethod
    def from_error(cls, exc: DataError, path: str, frame: int | None = None) -> Problem:
        """The problem a :class:`DataError` describes (kind ``invalid`` unless it is a :class:`FrameError`)."""
        frame = exc.frame if exc.frame is not None else frame
        return cls(str(exc.path or path), frame, getattr(exc, "kind", "invalid"), exc.problem)

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        where = f"file {self.path}" + (f", frame {self.frame}" if self.frame is not None else "")
        return f"{where}: {self.message}"

    def as_dict(self) -> dict:
        return asdict(self)


def errors_of(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.is_error]


def warnings_of(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if not p.is_error]


def format_problems(problems: Sequence[Problem], limit: int = MAX_LISTED) -> str:
    """One line per problem (``file X, frame N: what``), the first ``limit``, then ``... and N more``."""
    lines = [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def problems_error(problems: Sequence[Problem]) -> DataError:
    """One :class:`DataError` for every error of ``problems`` (a single one reads as before: ``file X, frame N: what``)."""
    errors = errors_of(problems)
    if len(errors) == 1:
        p = errors[0]
        return FrameError(p.message, kind=p.kind, path=p.path, frame=p.frame)
    frames = len({(p.path, p.frame) for p in errors})
    return DataError(
        f"{len(errors)} problems in {frames} frame(s) of the data (all listed; fix them, or set on_error=skip "
        f"(data.on_error=skip) to drop these frames):\n{format_problems(errors)}"
    )


def write_skipped_frames(problems: Iterable[Problem], path) -> Path | None:
    """Write the errors of ``problems`` (the dropped frames) to the csv ``path`` (columns path, frame, kind, message).

    Nothing is written when there is none; returns the path written, or None.
    """
    errors = errors_of(problems)
    if not errors:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for p in errors:
            writer.writerow([p.path, "" if p.frame is None else p.frame, p.kind, p.message])
    return path
