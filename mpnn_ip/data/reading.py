"""Read labelled structures from any ASE-readable file into :class:`AtomicGraph` frames.

Label lookup: for each key, a frame's ``atoms.info``, then ``atoms.arrays``, then the results of
an attached calculator (ASE's extxyz reader moves ``energy``/``forces``/``stress`` there; custom
keys such as ``REF_energy`` stay in info/arrays). Only the exact key is looked up.

Missing labels (see :func:`read_dataset`): a frame without a label gets it masked
(``has_* = False``), never invented. A key the user chose (not the default) that no frame of the
file has is an error listing the keys that do exist; a default key that no frame has is masked
with a warning; a file with no label at all is an error. Pass ``None`` as a key to skip that label.
The reader never writes to the user's file.
"""

from __future__ import annotations

import glob
import io
import re
import warnings
from pathlib import Path

import ase.io
import numpy as np
import torch

from mpnn_ip.data.atomic_graph import AtomicGraph
from mpnn_ip.data.units import check_stress_sign, stress_to_ase, stress_unit_factor, virial_to_stress
from mpnn_ip.elements import atomic_number
from mpnn_ip.errors import DataError

_DEFAULT_KEYS = {"energy": "energy", "forces": "forces", "stress": "stress"}
_WEIGHT_KEYS = ("weight", "config_weight")
#: Larger absolute values are corrupt numbers (1e308 ...) or wrong units: they would overflow in products.
_MAX_COORDINATE = 1e8  # Å
_MAX_LABEL = 1e12  # eV, eV/Å, eV/Å³
_ISOLATED_ATOM_TYPES = {"isolatedatom", "isolated_atom", "isolated", "e0", "iso_atom", "isoatom"}


def read_dataset(
    path,
    *,
    energy_key: str | None = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = "stress",
    stress_unit: str = "eV/A^3",
    stress_sign: int = 1,
    virial_key: str | None = None,
    index: str | int | slice = ":",
    format: str | None = None,
) -> list[AtomicGraph]:
    """Read every selected frame of ``path`` as an :class:`AtomicGraph` (labels in eV, eV/Å, eV/Å³).

    Args:
        path: file in any format ASE reads (extxyz is the main one).
        energy_key: total energy (eV) key; ``None`` = do not read energies.
        forces_key: forces (eV/Å, [n_atoms, 3]) key; ``None`` = do not read forces.
        stress_key: stress key (Voigt xx,yy,zz,yz,xz,xy or 9 / 3×3); ``None`` = do not read stress.
        stress_unit: unit of the stored stress: ``eV/A^3`` (also ``eV/Å^3``, ``eV/Ang^3``), ``GPa``, ``kbar``, ``bar``.
        stress_sign: ``1`` if positive stored stress is tensile (ASE), ``-1`` if positive is compressive.
        virial_key: virial (eV, Voigt 6, 9 or 3×3) key; where a frame has it, its stress is
            ``-virial / volume`` and ``stress_key`` is not used for that frame. Stress and virial
            labels of frames not periodic in all three directions are masked with a warning.
        index: ASE frame selection (``":"`` all, ``"0:100"``, ``-1``, ...). Error messages count
            frames within this selection.
        format: ASE format name; ``None`` = guess from the file name/content.

    Per-frame loss weight: info ``weight`` or ``config_weight``, else 1. ``config_type`` from info
    (``""`` when absent) is kept as a string attribute of the graph; ``source_path`` (the file, with
    the index selection if any) and ``source_frame`` ([1] long, frame within the selection) say
    where each graph came from.

    Raises:
        DataError: missing/empty/unparseable file, a chosen key that no frame has, NaN/inf,
            wrongly shaped forces, a zero or singular periodic cell, atoms closer than 0.1 Å.
    """
    stress_unit_factor(stress_unit)  # unit and sign are checked before the (slow) read
    check_stress_sign(stress_sign)
    frames = read_frames(path, index=index, format=format)
    keys = {"energy": energy_key, "forces": forces_key, "stress": stress_key, "virial": virial_key}
    _check_keys_exist(frames, keys, path)
    where = str(path) if index in (":", slice(None)) else f"{path} (index={index!r})"
    graphs = []
    for frame, atoms in enumerate(frames):
        energy = _lookup(atoms, energy_key)
        forces = _lookup(atoms, forces_key)
        _check_magnitude(atoms.positions, "positions", _MAX_COORDINATE, "Å", where, frame)
        _check_magnitude(atoms.cell.array, "cell", _MAX_COORDINATE, "Å", where, frame)
        stress = _frame_stress(atoms, keys, stress_unit, stress_sign, where, frame)
        graph = AtomicGraph.from_atoms(
            atoms, energy=energy, forces=forces, stress=stress, weight=_frame_weight(atoms, where, frame), path=where, frame=frame
        )
        for label, unit in (("energy", "eV"), ("forces", "eV/Å"), ("stress", "eV/Å³")):
            _check_magnitude(getattr(graph, label).numpy(), label, _MAX_LABEL, unit, where, frame)
        graph.config_type = str(atoms.info.get("config_type", ""))
        graph.source_path = where  # provenance, for messages that name a frame (batched: a list)
        graph.source_frame = torch.tensor([frame], dtype=torch.long)  # index within the selection; batched: [B]
        graphs.append(graph)
    return graphs


def expand_paths(pattern) -> list[str]:
    """Sorted files matching the glob ``pattern`` (``ta_snap/*.xyz``); a plain path is returned as is.

    Raises:
        DataError: a pattern that matches no file (named, with the folder to check).
    """
    pattern = str(pattern)
    if not glob.has_magic(pattern):
        return [pattern]
    matches = sorted(p for p in glob.glob(str(Path(pattern).expanduser())) if Path(p).is_file())
    if not matches:
        raise DataError(f"no file matches the pattern {pattern}; check the folder and the pattern")
    return matches


def read_isolated_atom_energies(source, *, energy_key: str = "energy") -> dict[int, float]:
    """Energies of isolated atoms (E0, eV) per atomic number.

    ``source``: a dict ``{symbol or Z: eV}``, or a file of frames. From a file, frames marked
    ``config_type=IsolatedAtom`` (or ``isolated_atom``) are used if there are any, else every
    one-atom frame; the energy is read with ``energy_key`` like :func:`read_dataset` does.
    """
    if isinstance(source, dict) or hasattr(source, "items"):
        return {atomic_number(k, error=DataError, where="isolated-atom energies"): float(v) for k, v in source.items()}
    frames = read_frames(source)
    marked = [i for i, a in enumerate(frames) if _is_isolated_atom(a)]
    chosen = marked if marked else [i for i, a in enumerate(frames) if len(a) == 1]
    if not chosen:
        raise DataError("no isolated-atom frames (one atom, or config_type=IsolatedAtom) found", path=str(source))
    energies: dict[int, float] = {}
    for i in chosen:
        atoms = frames[i]
        if len(atoms) != 1:
            raise DataError(f"frame is marked as an isolated atom but has {len(atoms)} atoms", path=str(source), frame=i)
        energy = _lookup(atoms, energy_key)
        if energy is None:
            raise DataError(f"isolated atom has no energy {energy_key!r}; keys present: {_describe_keys([atoms])}", path=str(source), frame=i)
        value = float(np.asarray(energy, dtype=np.float64).reshape(-1)[0])
        if not np.isfinite(value):
            raise DataError("isolated-atom energy is NaN or inf", path=str(source), frame=i)
        z = int(atoms.numbers[0])
        if z in energies and abs(energies[z] - value) > 1e-6:
            raise DataError(f"two different isolated-atom energies for Z={z}: {energies[z]} and {value} eV", path=str(source), frame=i)
        energies[z] = value
    return energies


def read_frames(path, *, index: str | int | slice = ":", format: str | None = None) -> list:
    """ASE frames of a file as a list, with errors that name the file.

    If ASE cannot parse an (ext)xyz file whose comment lines have blanks around ``=``
    (``Lattice = "..."``, as in FitSNAP's files; recent ASE reads these itself), the headers
    are normalised in memory and read again; the file itself is never modified.
    """
    file = Path(path)
    if not file.exists():
        raise DataError("file not found", path=str(path))
    if not file.is_file():
        raise DataError("is not a regular file", path=str(path))
    size = file.stat().st_size
    if size == 0 or (size < 4096 and not file.read_bytes().strip()):
        raise DataError("file is empty", path=str(path))
    text = None
    if _is_xyz_like(file, format):
        text = _xyz_text(file, path)
        _check_xyz_layout(text, path)
    try:
        frames = ase.io.read(str(file), index=index, format=format)
    except Exception as exc:  # ASE raises many types for malformed files
        frames = _read_normalised_xyz(file, index, format, text)
        if frames is None:
            fmt = format or "an auto-detected format"
            first_line = (str(exc).strip().splitlines() or [""])[0]
            frame = _failing_frame(file, index, format, text)
            raise DataError(f"could not be read as {fmt}: {type(exc).__name__}: {first_line}", path=str(path), frame=frame) from exc
    frames = [frames] if not isinstance(frames, list) else frames
    if not frames:
        raise DataError(f"no frames read (index={index!r})", path=str(path))
    return frames


def _xyz_text(file: Path, path) -> str:
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


def _check_xyz_layout(text: str, path) -> None:
    """Every frame's atom-count line is a non-negative integer and that many atom lines follow.

    Checked before ASE parses the file: ASE would otherwise scan (for minutes) through a count
    such as 99999999, and report a truncated frame without saying which. Frames are counted
    from the start of the file here (not within an ``index`` selection).
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # the line breaks ASE's reader sees
    if lines and not lines[-1]:
        lines.pop()
    i, frame = 0, 0
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
            return
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
        i += 2 + natoms
        while i < len(lines) and lines[i].lstrip().startswith("VEC"):
            i += 1
        frame += 1


def _failing_frame(file: Path, index, format, text: str | None) -> int | None:
    """Index (within the selection) of the first frame ASE fails on; ``None`` if it cannot be told."""
    source = io.StringIO(_normalise_xyz_headers(text)) if text is not None else str(file)
    frame = 0
    try:
        for _ in ase.io.iread(source, index=index, format=format or ("extxyz" if text is not None else None)):
            frame += 1
    except Exception:
        return frame
    return None


def _read_normalised_xyz(file: Path, index, format, text: str | None = None):
    """Frames of an xyz file after removing blanks around ``=`` in its headers; ``None`` if that does not help."""
    if text is None:
        return None
    normalised = _normalise_xyz_headers(text)
    if normalised == text:
        return None
    try:
        return ase.io.read(io.StringIO(normalised), index=index, format=format or "extxyz")
    except Exception:
        return None


def _is_xyz_like(file: Path, format: str | None) -> bool:
    if format is not None:
        return format in ("extxyz", "xyz")
    return file.suffix.lower() in (".xyz", ".extxyz")


def _normalise_xyz_headers(text: str) -> str:
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


def _lookup(atoms, key: str | None):
    """Value of ``key`` in info, arrays or the calculator's results; ``None`` if absent."""
    if key is None:
        return None
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) or {}
    return results.get(key)


def _describe_keys(frames) -> str:
    info, arrays, results = set(), set(), set()
    for atoms in frames:
        info.update(atoms.info)
        arrays.update(k for k in atoms.arrays if k not in ("numbers", "positions"))
        calc = getattr(atoms, "calc", None)
        results.update(getattr(calc, "results", None) or {})
    return f"info keys {sorted(info)}, arrays keys {sorted(arrays)}, calculator results {sorted(results)}"


def _check_keys_exist(frames, keys: dict, path) -> None:
    found = {name: key is not None and any(_lookup(a, key) is not None for a in frames) for name, key in keys.items()}
    for name, key in keys.items():
        if key is None or found[name]:
            continue
        if key != _DEFAULT_KEYS.get(name):
            raise DataError(f"no frame has the {name} key {key!r}; keys present: {_describe_keys(frames)}", path=str(path))
        stress_expected = any(a.pbc.all() for a in frames) and not found["virial"]
        if name != "stress" or stress_expected:
            warnings.warn(f"{path}: no frame has a {name!r} label (key {key!r}); it is masked. Keys present: {_describe_keys(frames)}", stacklevel=3)
    if not any(found.values()):
        raise DataError(
            f"no frame has any label (energy {keys['energy']!r}, forces {keys['forces']!r}, stress {keys['stress']!r}, "
            f"virial {keys['virial']!r}); keys present: {_describe_keys(frames)}",
            path=str(path),
        )


def _frame_stress(atoms, keys: dict, unit: str, sign: int, path, frame):
    """Stress [3, 3] eV/Å³ (ASE sign) from the virial or stress label; ``None`` when absent or unusable.

    A stress needs a volume: on a frame that is not periodic in all three directions the
    label is masked (with a warning) rather than trained on.
    """
    virial = _lookup(atoms, keys["virial"])
    stress = _lookup(atoms, keys["stress"])
    if virial is None and stress is None:
        return None
    if not atoms.pbc.all():
        warnings.warn(f"{path}, frame {frame}: stress/virial label on a frame that is not periodic in x, y and z (pbc={atoms.pbc.tolist()}); it is masked", stacklevel=4)
        return None
    if virial is not None:
        return virial_to_stress(virial, abs(float(np.linalg.det(atoms.cell.array))), path=path, frame=frame)
    return stress_to_ase(stress, unit=unit, sign=sign, path=path, frame=frame)


def _check_magnitude(values, what: str, bound: float, unit: str, path, frame) -> None:
    """NaN/inf and absolute values above ``bound`` (a corrupt number such as 1e308, or a wrong unit) are errors."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return
    if not np.all(np.isfinite(values)):
        raise DataError(f"{what} contain NaN or inf", path=path, frame=frame)
    largest = float(np.max(np.abs(values)))
    if largest > bound:
        raise DataError(f"{what} contain a value of magnitude {largest:.3g} {unit} (above {bound:g}): a corrupt number or a wrong unit", path=path, frame=frame)


def _frame_weight(atoms, path, frame) -> float:
    for key in _WEIGHT_KEYS:
        if key in atoms.info:
            try:
                weight = float(atoms.info[key])
            except (TypeError, ValueError) as exc:
                raise DataError(f"info {key!r} must be a number, got {atoms.info[key]!r}", path=path, frame=frame) from exc
            if not np.isfinite(weight) or weight < 0:
                raise DataError(f"info {key!r} must be finite and >= 0, got {weight}", path=path, frame=frame)
            return weight
    return 1.0


def _is_isolated_atom(atoms) -> bool:
    return str(atoms.info.get("config_type", "")).strip().lower() in _ISOLATED_ATOM_TYPES
