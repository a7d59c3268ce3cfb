"""Run a user's LAMMPS input script with the fix it declares driven by a potential (``mpnn-lammps``).

The script is read first (:func:`scan_script`): it must declare ``fix ID GROUP external pf/callback
...`` at its top level (not inside an ``include``d file) and, when it says ``units``, ``units metal``.
LAMMPS then runs the script up to that fix line, the potential is attached (units, types and
elements checked: :func:`mpnn_ip.lammps.fix.attach`) and LAMMPS runs the rest of the file (its
labels, loops and ``jump SELF`` work there). Until the potential is attached LAMMPS logs into a
temporary file: a script rejected by the checks leaves no log behind.
"""

from __future__ import annotations

import os
import re
import shlex
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpnn_ip.errors import ConfigError


@dataclass
class ScriptParts:
    """A LAMMPS input script split at the line that ends the fix declaration (lines keep their ends)."""

    head: str  # up to and including the fix declaration
    rest: str  # everything after it
    fix_line: int  # 1-based line number of the fix declaration


def commands(text: str) -> list[tuple[int, int, list[str]]]:
    """``(first line, last line, words)`` of each command of a LAMMPS script (1-based lines):
    ``&`` continuations joined, comments dropped, quotes respected. Multi-line triple-quoted
    strings are joined like continuations."""
    found, pending, start, in_triple = [], "", 0, False
    for number, line in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        if line.count('"""') % 2:
            in_triple = not in_triple
        stripped = line.rstrip()
        if in_triple:
            pending += line + "\n"
            continue
        if stripped.endswith("&"):
            pending += stripped[:-1] + " "
            continue
        full = pending + line
        pending = ""
        words = _words(full)
        if words:
            found.append((start, number, words))
    return found


def _words(command: str) -> list[str]:
    lexer = shlex.shlex(command.replace('"""', '"'), posix=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes: LAMMPS will say so
        return command.split("#", 1)[0].split()


def scan_script(text: str, fix_id: str, path: str = "the script") -> ScriptParts:
    """Check the script's ``units`` and find its declaration of ``fix fix_id ... external pf/callback``.

    Raises:
        ConfigError: units other than metal; no such fix; the fix declared with another style.
    """
    fix = None
    for first, last, words in commands(text):
        if words[0] == "units" and len(words) > 1 and words[1] != "metal":
            raise ConfigError(
                f"{path}, line {first}: `units {words[1]}`: mpnn_ip potentials need `units metal` (positions in Å, "
                "energies in eV, forces in eV/Å, time in ps): change the units command (and the time step, in ps)"
            )
        if words[0] == "fix" and len(words) > 1 and words[1] == fix_id and fix is None:
            if words[3:5] != ["external", "pf/callback"]:
                raise ConfigError(
                    f"{path}, line {first}: fix {fix_id} is `{' '.join(words[2:5])}`; mpnn-lammps drives a "
                    f"`fix {fix_id} all external pf/callback 1 1`: declare it so (or choose another fix with fix_id=)"
                )
            fix = (first, last)
    if fix is None:
        declared = sorted({words[1] for _, _, words in commands(text) if words[0] == "fix" and len(words) > 1})
        others = f" (it declares the fixes {', '.join(declared)}; choose one with fix_id=)" if declared else ""
        raise ConfigError(
            f"{path} declares no fix {fix_id!r}{others}. Add `fix {fix_id} all external pf/callback 1 1` after the "
            f"atoms exist (e.g. after read_data) and before the first run or minimize; the potential drives it"
        )
    lines = text.splitlines(keepends=True)
    return ScriptParts("".join(lines[: fix[1]]), "".join(lines[fix[1] :]), fix[0])


@dataclass
class ScriptRun:
    """What :func:`run_script` did: the callback object (its counters and timings), the wall time (s)
    from the start of the script to its end, and the log file written (None without one)."""

    potential: Any
    wall_seconds: float
    log: str | None


def run_script(
    script: str | Path,
    model: Any,
    elements: Sequence[str] | None = None,
    *,
    fix_id: str = "mpnn",
    lammps_args: Sequence[str] = (),
    log: str | None = "log.lammps",
    device: str | None = "auto",
    dtype: str | None = None,
    skin: float = 1.0,
    compile: bool | str = "auto",
    head: str | None = None,
    dispersion: str | None = None,
    charge: float | None = None,
    spin: float | None = None,
    on_error: str = "exit",
    prog: str = "mpnn-lammps",
) -> ScriptRun:
    """Run the LAMMPS input ``script`` with its ``fix fix_id external pf/callback`` driven by ``model``.

    Args:
        script: the input script (read by LAMMPS from the working directory, like ``lmp -in``).
        model: checkpoint path, list of paths (a committee), a potential or list of potentials.
        elements: element of each LAMMPS type in type order; None = from the masses.
        lammps_args: LAMMPS command-line arguments (``-var NAME VALUE``, ``-screen none``, ...).
        log: LAMMPS's log file (None: no log); written once the potential is attached.
        device, dtype, skin, compile, head, dispersion, charge, spin, on_error: see :func:`mpnn_ip.lammps.fix.attach`.
    Raises:
        ConfigError: a bad script, option, type mapping or model (before LAMMPS runs anything but the
            script's head, and with no log written); LAMMPS's own errors, with its message.
    """
    from mpnn_ip.checkpoint import load_model
    from mpnn_ip.lammps.fix import attach, make_evaluator
    from mpnn_ip.lammps.library import create_lammps, world_communicator

    script = Path(script)
    if not script.is_file():
        raise ConfigError(f"LAMMPS input script {script} does not exist")
    parts = scan_script(script.read_text(), fix_id, path=str(script))
    for flag in ("-in", "-i", "-log", "-l"):
        if flag in lammps_args:
            raise ConfigError(
                f"{flag} is set by {prog}: the script is its first argument and the log file log= (log=none for none)"
            )
    if isinstance(model, (str, Path)):
        model = load_model(model, device=device, dtype=dtype)
    elif isinstance(model, (list, tuple)) and model and isinstance(model[0], (str, Path)):
        model = [load_model(path, device=device, dtype=dtype) for path in model]  # a committee
    options = dict(device=device, dtype=dtype, skin=skin, compile=compile, head=head, dispersion=dispersion)
    evaluator = make_evaluator(model, fix_id, prog, **options, charge=charge, spin=spin)
    comm = world_communicator()
    rank = 0 if comm is None else comm.Get_rank()
    final_log = Path(log) if log else None
    partial_log = final_log.with_name(f".{final_log.name}.partial") if final_log else None
    lmp = create_lammps(["-log", str(partial_log) if partial_log else "none", *lammps_args], comm)
    attached = False
    try:
        start = time.perf_counter()
        _lammps_call(lmp.commands_string, parts.head, where=f"{script}, lines 1-{parts.fix_line}")
        potential = attach(lmp, evaluator, elements, fix_id, comm=comm, on_error=on_error, prog=prog)
        attached = True
        if final_log:
            if rank == 0:
                os.replace(partial_log, final_log)  # the head's log so far, under its final name
            lmp.command(f"log {final_log} append")
        with tempfile.TemporaryDirectory(prefix="mpnn-lammps-") as folder:
            rest = Path(folder) / script.name
            rest.write_text(parts.rest)  # LAMMPS reads files on rank 0; every rank writes its own copy
            _lammps_call(lmp.file, str(rest), where=f"{script} (after line {parts.fix_line})")
        potential.check()
        return ScriptRun(potential, time.perf_counter() - start, str(final_log) if final_log else None)
    finally:
        lmp.close()
        if not attached and partial_log and rank == 0:
            partial_log.unlink(missing_ok=True)  # a rejected script leaves no log


def _lammps_call(function, argument: str, where: str) -> None:
    """Call LAMMPS; its errors (exceptions of the ``lammps`` module) become a ``ConfigError`` naming ``where``."""
    try:
        function(argument)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the lammps module raises plain Exception subclasses
        if type(exc).__module__.split(".")[0] != "lammps" and type(exc) is not Exception:
            raise
        message = re.sub(r"\s+", " ", str(exc)).strip()
        raise ConfigError(f"LAMMPS stopped in {where}: {message}") from exc
