"""Read labelled structures from any ASE-readable file into :class:`AtomicGraph` frames.

The labels read are the rows of the label table (:data:`mpnn_ip.outputs.LABELS`: energy, forces,
stress, dipole, the inputs charge and spin, and any registered one), each with the key
:class:`~mpnn_ip.data.reader_options.ReaderOptions` gives it. Label lookup: for each key, a frame's
``atoms.info``, then ``atoms.arrays``, then the results of an attached calculator (ASE's extxyz reader
moves ``energy``/``forces``/``stress``/``dipole`` there; custom keys such as ``REF_energy`` stay in
info/arrays). Only the exact key is looked up.

Missing labels (see :func:`read_dataset`): a frame without a label gets it masked
(``has_* = False``), never invented; a frame without an input (charge, spin) holds the input's default
(neutral, singlet), masked too, without a warning. A key the user chose (not the default) that no frame
of the file has is an error listing the keys that do exist; a default key of a label that no frame has is
masked with a warning (not for the dipole, which few files carry); a file with no label at all is an
error. Pass ``None`` as a key to skip that label.
The reader never writes to the user's file.

Bad frames (NaN/inf, wrong shapes, atoms closer than 0.1 Å, zero-volume periodic cells, elements
outside ``species`` ...) are all found in one pass: ``on_error="raise"`` raises one
:class:`~mpnn_ip.errors.DataError` listing every one, ``on_error="skip"`` drops them and records
each as a :class:`~mpnn_ip.data.problems.Problem`. A file that cannot be read at all (missing,
empty, binary, a broken extxyz layout, a chosen key absent everywhere) is always a file-level
``DataError``.
"""

from __future__ import annotations

import glob
import io
import warnings
from pathlib import Path

import ase.io
import numpy as np
import torch

from mpnn_ip.data import xyz_text
from mpnn_ip.data.atomic_graph import AtomicGraph
from mpnn_ip.data.problems import FrameError, Problem, errors_of, format_problems, problems_error
from mpnn_ip.data.reader_options import ReaderOptions
from mpnn_ip.elements import atomic_number, atomic_numbers, symbols
from mpnn_ip.errors import DataError
from mpnn_ip.labels import LabelValueError, lookup
from mpnn_ip.outputs import FITTED_LABELS, INPUTS, LABELS

_WEIGHT_KEYS = ("weight", "config_weight")
#: Larger absolute values are corrupt numbers (1e308 ...) or wrong units: they would overflow in products.
_MAX_COORDINATE = 1e8  # Å
_ISOLATED_ATOM_TYPES = {"isolatedatom", "isolated_atom", "isolated", "e0", "iso_atom", "isoatom"}
ON_ERROR_CHOICES = ("raise", "skip")


def read_dataset(
    path,
    options: ReaderOptions | None = None,
    *,
    species=None,
    on_error: str = "raise",
    problems: list | None = None,
    **reader_keywords,
) -> list[AtomicGraph]:
    """Read every selected frame of ``path`` as an :class:`AtomicGraph` (labels in eV, eV/Å, eV/Å³).

    Args:
        path: file in any format ASE reads (extxyz is the main one).
        options: the :class:`~mpnn_ip.data.reader_options.ReaderOptions` (label keys, stress unit and
            sign, virial key, ``index``, ``format``); ``None`` = built from ``reader_keywords``.
        reader_keywords: the same as flat keywords, when ``options`` is None: ``energy_key`` (total energy,
            eV), ``forces_key`` (eV/Å, [n_atoms, 3]), ``stress_key`` (Voigt xx,yy,zz,yz,xz,xy or 9 / 3×3),
            ``dipole_key`` (e·Å, frames without periodicity), ``charge_key`` (total charge, e; default 0),
            ``spin_key`` (multiplicity 2S+1 >= 1; default 1), ``<name>_key`` of a registered label, ``label_keys``,
            ``stress_unit``, ``stress_sign``, ``virial_key``, ``index``, ``format`` (see ``ReaderOptions``); a
            key ``None`` = do not read that label. Stress and virial labels of frames not periodic in all three
            directions are masked with a warning. Error messages count frames within the ``index`` selection.
        species: allowed elements (symbols or Z); a frame with another one is an error
            (kind ``unknown_element``). ``None`` = any.
        on_error: ``"raise"``: every frame is checked, then one ``DataError`` lists every bad
            frame. ``"skip"``: bad frames are left out (with a warning when ``problems`` is None);
            an extxyz file that ASE cannot parse as a whole is then read frame by frame.
        problems: a list that receives a :class:`~mpnn_ip.data.problems.Problem` per skipped
            frame (errors) and per frame lacking a label other frames of the file have (warnings).

    Per-frame loss weight: info ``weight`` or ``config_weight``, else 1. ``config_type`` from info
    (``""`` when absent) is kept as a string attribute of the graph; ``source_path`` (the file, with
    the index selection if any) and ``source_frame`` ([1] long, frame within the selection) say
    where each graph came from.

    Raises:
        ConfigError: an unknown option, stress unit or sign (before the file is read).
        DataError: missing/empty/unparseable file, a chosen key that no frame has; with
            ``on_error="raise"`` also bad frames: NaN/inf, wrongly shaped labels, a zero or
            singular periodic cell, atoms closer than 0.1 Å, an element outside ``species``.
    """
    check_on_error(on_error)
    if options is None:
        options = ReaderOptions.from_keywords(**reader_keywords)
    elif reader_keywords:
        raise TypeError(f"read_dataset: give options or keywords ({', '.join(sorted(reader_keywords))}), not both")
    allowed = None if species is None else atomic_numbers(species)
    index = options.index
    where = str(path) if index in (":", slice(None)) else f"{path} (index={index!r})"
    found_problems: list[Problem] = []
    frames = read_frames(
        path, index=index, format=options.format, unreadable=found_problems if on_error == "skip" else None
    )
    found = labels_found([a for a in frames if a is not None], options, path)
    graphs = []
    for frame, atoms in enumerate(frames):
        if atoms is None:  # unparseable, already recorded
            continue
        try:
            graph = frame_graph(atoms, options, allowed, where, frame)
        except DataError as exc:
            found_problems.append(Problem.from_error(exc, where, frame))
            continue
        found_problems.extend(_missing_labels(atoms, graph, found, where, frame))
        graphs.append(graph)
    errors = errors_of(found_problems)
    if errors and on_error == "raise":
        raise problems_error(errors)
    if errors and problems is None:
        warnings.warn(
            f"{where}: skipped {len(errors)} bad frame(s) of {len(frames)}:\n{format_problems(errors)}", stacklevel=2
        )
    if problems is not None:
        problems.extend(found_problems)
    return graphs


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise DataError(f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}, got {on_error!r}")


def frame_graph(atoms, options: ReaderOptions, allowed, where: str, frame: int) -> AtomicGraph:
    """The graph of one frame with every label of the table; raises a ``DataError`` at the frame's first problem."""
    _check_magnitude(atoms.positions, "positions", _MAX_COORDINATE, "Å", where, frame)
    _check_magnitude(atoms.cell.array, "cell", _MAX_COORDINATE, "Å", where, frame)
    if allowed is not None:
        _check_species(atoms.numbers, allowed, where, frame)
    values = {}
    for name, spec in LABELS.items():
        try:
            values[name] = spec.value_of(atoms, options.key(name), options, where, frame)
        except LabelValueError as exc:
            raise FrameError(str(exc), kind=exc.kind, path=where, frame=frame) from None
    graph = AtomicGraph.from_atoms(atoms, weight=_frame_weight(atoms, where, frame), path=where, frame=frame, **values)
    for name, spec in LABELS.items():
        if spec.max_magnitude is not None:
            _check_magnitude(graph[name].numpy(), name, spec.max_magnitude, spec.unit, where, frame)
    graph.config_type = str(atoms.info.get("config_type", ""))
    graph.source_path = where  # provenance, for messages that name a frame (batched: a list)
    graph.source_frame = torch.tensor([frame], dtype=torch.long)  # index within the selection; batched: [B]
    return graph


def _check_species(numbers, allowed, path, frame) -> None:
    unknown = sorted(set(np.unique(numbers).tolist()) - set(allowed))
    if unknown:
        raise FrameError(
            f"element(s) {', '.join(symbols(unknown))} not in the model's species [{', '.join(symbols(allowed))}]",
            kind="unknown_element",
            path=path,
            frame=frame,
        )


def _missing_labels(atoms, graph: AtomicGraph, found: dict, path: str, frame: int) -> list[Problem]:
    """Warnings for labels that other frames of the file have but this one lacks (masked in training)."""
    missing = [
        name
        for name, spec in FITTED_LABELS.items()
        if _label_in_file(spec, found)
        and (bool(atoms.pbc.all()) or not spec.periodic_only)
        and (not bool(atoms.pbc.any()) or not spec.nonperiodic_only)
        and not bool(graph[spec.mask])
    ]
    if not missing:
        return []
    message = f"no {' / '.join(missing)} label, though other frames of the file have one; it is masked"
    return [Problem(path, frame, "missing_label", message, "warning")]


def _label_in_file(spec, found: dict) -> bool:
    """Whether some frame of the file has the label, by its own key or an alternative source (stress: virial)."""
    return found.get(spec.name, False) or any(found.get(source, False) for source in spec.alternatives)


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
            raise DataError(
                f"frame is marked as an isolated atom but has {len(atoms)} atoms", path=str(source), frame=i
            )
        energy = lookup(atoms, energy_key)
        if energy is None:
            raise DataError(
                f"isolated atom has no energy {energy_key!r}; keys present: {_describe_keys([atoms])}",
                path=str(source),
                frame=i,
            )
        value = float(np.asarray(energy, dtype=np.float64).reshape(-1)[0])
        if not np.isfinite(value):
            raise DataError("isolated-atom energy is NaN or inf", path=str(source), frame=i)
        z = int(atoms.numbers[0])
        if z in energies and abs(energies[z] - value) > 1e-6:
            raise DataError(
                f"two different isolated-atom energies for Z={z}: {energies[z]} and {value} eV",
                path=str(source),
                frame=i,
            )
        energies[z] = value
    return energies


def read_frames(
    path, *, index: str | int | slice = ":", format: str | None = None, unreadable: list | None = None
) -> list:
    """ASE frames of a file as a list, with errors that name the file.

    If ASE cannot parse an (ext)xyz file whose comment lines have blanks around ``=``
    (``Lattice = "..."``, as in FitSNAP's files; recent ASE reads these itself), the headers
    are normalised in memory and read again; the file itself is never modified.

    ``unreadable``: when a list, an extxyz file (``index=":"``, valid atom-count layout) that ASE
    cannot parse as a whole is parsed frame by frame: a frame that fails is ``None`` in the
    returned list and recorded in ``unreadable`` as a :class:`~mpnn_ip.data.problems.Problem`.
    """
    file = Path(path)
    if not file.exists():
        raise DataError("file not found", path=str(path))
    if not file.is_file():
        raise DataError("is not a regular file", path=str(path))
    size = file.stat().st_size
    if size == 0 or (size < 4096 and not file.read_bytes().strip()):
        raise DataError("file is empty", path=str(path))
    text, spans = None, None
    if _is_xyz_like(file, format):
        text = xyz_text.decode_text(file, path)
        spans = xyz_text.frame_spans(text, path)
    try:
        frames = ase.io.read(str(file), index=index, format=format)
    except Exception as exc:  # ASE raises many types for malformed files
        frames = _read_normalised_xyz(file, index, format, text)
        if frames is None and unreadable is not None and text is not None and index in (":", slice(None)):
            frames = xyz_text.read_frame_by_frame(text, spans, str(path), unreadable)
        if frames is None:
            fmt = format or "an auto-detected format"
            first_line = (str(exc).strip().splitlines() or [""])[0]
            frame = _failing_frame(file, index, format, text)
            raise DataError(
                f"could not be read as {fmt}: {type(exc).__name__}: {first_line}", path=str(path), frame=frame
            ) from exc
    frames = [frames] if not isinstance(frames, list) else frames
    if not frames:
        raise DataError(f"no frames read (index={index!r})", path=str(path))
    return frames


def _failing_frame(file: Path, index, format, text: str | None) -> int | None:
    """Index (within the selection) of the first frame ASE fails on; ``None`` if it cannot be told."""
    source = io.StringIO(xyz_text.normalise_headers(text)) if text is not None else str(file)
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
    normalised = xyz_text.normalise_headers(text)
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


def _describe_keys(frames) -> str:
    info, arrays, results = set(), set(), set()
    for atoms in frames:
        info.update(atoms.info)
        arrays.update(k for k in atoms.arrays if k not in ("numbers", "positions"))
        calc = getattr(atoms, "calc", None)
        results.update(getattr(calc, "results", None) or {})
    return f"info keys {sorted(info)}, arrays keys {sorted(arrays)}, calculator results {sorted(results)}"


def labels_found(frames, options: ReaderOptions, path) -> dict[str, bool]:
    """Which sources (every label, and ``virial``) some frame has, ``{source: bool}``; a key the user chose that
    no frame has, or no label at all, is an error; a default key that no frame has is masked with a warning."""
    keys = options.source_keys()
    found = {name: key is not None and any(lookup(a, key) is not None for a in frames) for name, key in keys.items()}
    periodic = any(a.pbc.all() for a in frames)
    molecular = any(not a.pbc.any() for a in frames)
    for name, key in keys.items():
        if key is None or found[name]:
            continue
        if key != options.default_key(name):
            raise DataError(
                f"no frame has the {name} key {key!r}; keys present: {_describe_keys(frames)}", path=str(path)
            )
        spec = FITTED_LABELS.get(name)
        applies = spec is not None and (periodic or not spec.periodic_only) and (molecular or not spec.nonperiodic_only)
        if applies and spec.warn_if_absent and not _label_in_file(spec, found):
            warnings.warn(
                f"{path}: no frame has a {name!r} label (key {key!r}); it is masked. Keys present: {_describe_keys(frames)}",
                stacklevel=3,
            )
    if not any(value for name, value in found.items() if name not in INPUTS):
        chosen = ", ".join(f"{name} {key!r}" for name, key in keys.items() if name not in INPUTS)
        raise DataError(
            f"no frame has any label ({chosen}); keys present: {_describe_keys(frames)}",
            path=str(path),
        )
    return found


def _check_magnitude(values, what: str, bound: float, unit: str, path, frame) -> None:
    """NaN/inf and absolute values above ``bound`` (a corrupt number such as 1e308, or a wrong unit) are errors."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return
    if not np.all(np.isfinite(values)):
        raise FrameError(f"{what} contain NaN or inf", kind="non_finite", path=path, frame=frame)
    largest = float(np.max(np.abs(values)))
    if largest > bound:
        raise FrameError(
            f"{what} contain a value of magnitude {largest:.3g} {unit} (above {bound:g}): a corrupt number or a wrong unit",
            kind="magnitude",
            path=path,
            frame=frame,
        )


def _frame_weight(atoms, path, frame) -> float:
    for key in _WEIGHT_KEYS:
        if key in atoms.info:
            try:
                weight = float(atoms.info[key])
            except (TypeError, ValueError) as exc:
                raise FrameError(
                    f"info {key!r} must be a number, got {atoms.info[key]!r}", kind="weight", path=path, frame=frame
                ) from exc
            if not np.isfinite(weight) or weight < 0:
                raise FrameError(
                    f"info {key!r} must be finite and >= 0, got {weight}", kind="weight", path=path, frame=frame
                )
            return weight
    return 1.0


def _is_isolated_atom(atoms) -> bool:
    return str(atoms.info.get("config_type", "")).strip().lower() in _ISOLATED_ATOM_TYPES
