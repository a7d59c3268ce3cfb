"""The text of (ext)xyz files: decoding, the atom-count layout of frames, header normalisation.

These run before (or instead of) ASE's parser so that a broken file is reported with its line and
frame in seconds; :mod:`mpnn_ip.data.reading` uses them.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import ase.io

from mpnn_ip.data.problems import Problem
from mpnn_ip.errors import DataError


def decode_text(file: Path, path) -> str:
    """The file as UTF-8 text; a binary or non-UTF-8 file is a :class:`DataError` saying so."""
    data = file.read_bytes()
    if b"\x00" in data:
        offset = data.index(b"\x00")
        line = data.count(b"\n", 0, offset) + 1
        raise DataError(f"is not a text (extxyz) file: NUL byte at byte offset {offset} (line {line})", path=str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"is not a text (UTF-8 extxyz) file: byte 0x{data[exc.start]:02x} at byte offset {exc.start} (line {line}) is not valid UTF-8",
            path=str(path),
        ) from None


def read_frame_by_frame(text: str, spans: list, path: str, unreadable: list) -> list | None:
    """Frames of an extxyz text parsed one by one (``None`` for one that fails, recorded in ``unreadable``)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    frames, problems = [], []
    for frame, (start, stop) in enumerate(spans):
        chunk = normalise_headers("\n".join(lines[start:stop]) + "\n")
        try:
            frames.append(ase.io.read(io.StringIO(chunk), index=0, format="extxyz"))
        except Exception as exc:  # noqa: BLE001 - ASE raises many types for malformed frames
            first_line = (str(exc).strip().splitlines() or [""])[0]
            problems.append(
                Problem(path, frame, "unparseable", f"could not be read as extxyz: {type(exc).__name__}: {first_line}")
            )
            frames.append(None)
    if not spans or len(problems) == len(spans):
        return None  # nothing readable: the file-level error says more
    unreadable.extend(problems)
    return frames


def frame_spans(text: str, path) -> list[tuple[int, int]]:
    """Every frame's atom-count line is a non-negative integer and that many atom lines follow.

    Checked before ASE parses the file: ASE would otherwise scan (for minutes) through a count
    such as 99999999, and report a truncated frame without saying which. Frames are counted
    from the start of the file here (not within an ``index`` selection). Returns each frame's
    (first line, end line) in the text split at line breaks.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # the line breaks ASE's reader sees
    if lines and not lines[-1]:
        lines.pop()
    i, frame, spans = 0, 0, []
    while i < len(lines):
        count = lines[i].strip()
        if not count:
            if any(line.strip() for line in lines[i:]):
                rest = next(k for k in range(i, len(lines)) if lines[k].strip())
                raise DataError(
                    f"could not be read as extxyz: blank line {i + 1} where the atom count of a frame was expected, but line {rest + 1} has more data "
                    "(a deleted line, or a wrong atom count in an earlier frame)",
                    path=str(path),
                    frame=frame,
                )
            return spans
        try:
            natoms = int(count)
        except ValueError:
            natoms = -1
        if natoms < 0 or not count.lstrip("+").isdigit():
            raise DataError(
                f"could not be read as extxyz: line {i + 1} should be the frame's atom count (a non-negative integer), got {count[:60]!r}"
                + (" (a wrong atom count, or a missing or extra line, in the frame before)" if frame else ""),
                path=str(path),
                frame=frame,
            )
        left = len(lines) - i - 2
        if left < natoms:
            raise DataError(
                f"could not be read as extxyz: the atom count on line {i + 1} says {natoms} atoms but only {max(left, 0)} lines follow the comment line "
                "(a truncated file or a wrong atom count)",
                path=str(path),
                frame=frame,
            )
        start = i
        i += 2 + natoms
        while i < len(lines) and lines[i].lstrip().startswith("VEC"):
            i += 1
        spans.append((start, i))
        frame += 1
    return spans


def normalise_headers(text: str) -> str:
    """Remove blanks around ``=`` in the comment line of each frame (only there)."""
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        count = lines[i].strip()
        if not count:
            i += 1
            continue
        if not count.isdigit() or i + 1 >= len(lines):
            break  # not an xyz layout we understand: let ASE report it
        if "=" in lines[i + 1]:
            lines[i + 1] = _strip_blanks_around_equals(lines[i + 1])
        i += 2 + int(count)
    return "".join(lines)


def _strip_blanks_around_equals(line: str) -> str:
    """Blanks around ``=`` outside quotes are removed; quoted values stay as they are."""
    parts = re.split(r'("[^"]*")', line)
    for k in range(0, len(parts), 2):
        parts[k] = re.sub(r"[ \t]*=[ \t]*", "=", parts[k])
    return "".join(parts)
