"""Fuzzing the reader: any mutated extxyz file ends in a correct read or a DataError, quickly.

A small valid file (3 frames with energy, forces and stress) is mutated in seeded, repeatable
ways: truncation, swapped columns, wrong atom counts, non-numeric fields, binary garbage
(invalid UTF-8 included), huge numbers, empty and header-only files, duplicated and deleted
lines. No other exception type may escape, and no read may take more than a few seconds.
"""

import collections
import time

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mpnn_ip.data import read_dataset
from mpnn_ip.data.atomic_graph import AtomicGraph
from mpnn_ip.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SEED = 20261130
SECONDS_PER_FILE = 5.0


def _valid_extxyz(path) -> bytes:
    rng = np.random.default_rng(0)
    frames = []
    for k in range(3):
        atoms = Atoms(
            "Cu2Au", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5]], cell=np.eye(3) * 4.0, pbc=True
        )
        atoms.positions += rng.normal(0, 0.05, size=(3, 3))
        atoms.calc = SinglePointCalculator(
            atoms, energy=-10.0 - k, forces=rng.normal(0, 0.1, size=(3, 3)), stress=rng.normal(0, 0.01, size=6)
        )
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return path.read_bytes()


def _numeric_token_spans(text: str):
    """(start, end) of every token that parses as a float."""
    spans, pos = [], 0
    for token in text.replace('"', " ").replace("=", " ").split():
        start = text.index(token, pos)
        pos = start + len(token)
        try:
            float(token)
        except ValueError:
            continue
        spans.append((start, pos))
    return spans


def _replace_span(data: bytes, span, new: bytes) -> bytes:
    return data[: span[0]] + new + data[span[1] :]


def _mutations(valid: bytes, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """About 150 (name, content) pairs, the same for a given seed."""
    text = valid.decode()
    lines = text.splitlines(keepends=True)
    count_lines = [i for i, line in enumerate(lines) if line.strip().isdigit()]
    atom_lines = [
        i
        for i in range(len(lines))
        if i not in count_lines and not lines[i].startswith(("Lattice", " Lattice")) and "=" not in lines[i]
    ]
    numbers = _numeric_token_spans(text)
    out: list[tuple[str, bytes]] = []

    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    for k in range(25):
        cut = int(rng.integers(1, len(valid)))
        out.append((f"truncated_at_{cut}", valid[:cut]))
    for k in range(12):
        i = pick(atom_lines)
        fields = lines[i].split()
        a, b = rng.choice(len(fields), size=2, replace=False)
        fields[a], fields[b] = fields[b], fields[a]
        new = lines[:i] + [" ".join(fields) + "\n"] + lines[i + 1 :]
        out.append((f"swapped_fields_{a}_{b}_line_{i}", "".join(new).encode()))
    for a, b in [(0, 1), (1, 4), (3, 6), (0, 6), (2, 5)]:  # a whole column swapped in every atom line
        new = list(lines)
        for i in atom_lines:
            fields = new[i].split()
            fields[a], fields[b] = fields[b], fields[a]
            new[i] = " ".join(fields) + "\n"
        out.append((f"swapped_column_{a}_{b}", "".join(new).encode()))
    for value in ["4", "2", "1", "0", "-3", "99999999", "3.5", "three", "", "1e9", "0x3", "9" * 40]:
        i = pick(count_lines)
        new = lines[:i] + [value + "\n"] + lines[i + 1 :]
        out.append((f"atom_count_{value or 'blank'}_line_{i}", "".join(new).encode()))
    for k in range(20):
        span = pick(numbers)
        word = pick(["abc", "nan", "inf", "-inf", "1.2.3", "--1", "T", "1e", "None", '"', "=", "ÿ"])
        out.append((f"non_numeric_{word}_at_{span[0]}", _replace_span(text.encode(), span, word.encode())))
    for k in range(20):
        garbage = rng.integers(0, 256, size=int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        at = int(rng.integers(0, len(valid)))
        if k % 2:
            out.append((f"garbage_inserted_at_{at}", valid[:at] + garbage + valid[at:]))
        else:
            out.append((f"garbage_replaced_at_{at}", valid[:at] + garbage + valid[at + len(garbage) :]))
    for at in (0, len(valid) // 3, len(valid) - 2):
        out.append((f"invalid_utf8_at_{at}", valid[:at] + b"\xff\xfe\xc3\x28" + valid[at:]))
    out.append(("pure_binary", rng.integers(0, 256, size=2000, dtype=np.uint8).tobytes()))
    out.append(("nul_bytes", b"\x00" * 500))
    out.append(("gzip_header", b"\x1f\x8b\x08\x00" + rng.integers(0, 256, size=300, dtype=np.uint8).tobytes()))
    for k in range(18):
        span = pick(numbers)
        word = pick(["1e308", "-1e308", "1e400", "-1e400", "1e200", "1.7976931348623157e308", "1e-320"])
        out.append((f"huge_number_{word}_at_{span[0]}", _replace_span(text.encode(), span, word.encode())))
    for word in ["1e308", "1e400"]:  # every number of the file
        new = text.encode()
        for span in reversed(numbers):
            new = _replace_span(new, span, word.encode())
        out.append((f"all_numbers_{word}", new))
    out.append(("empty", b""))
    out.append(("blank_lines", b"\n\n  \n"))
    out.append(("header_only", "".join(lines[:2]).encode()))
    out.append(("count_only", lines[0].encode()))
    out.append(("comment_line_only", lines[1].encode()))
    for k in range(10):
        i = int(rng.integers(len(lines)))
        out.append((f"duplicated_line_{i}", "".join(lines[: i + 1] + [lines[i]] + lines[i + 1 :]).encode()))
    for k in range(10):
        i = int(rng.integers(len(lines)))
        out.append((f"deleted_line_{i}", "".join(lines[:i] + lines[i + 1 :]).encode()))
    for k in range(5):
        i, j = sorted(rng.choice(len(lines), size=2, replace=False))
        out.append((f"deleted_lines_{i}_to_{j}", "".join(lines[:i] + lines[j:]).encode()))
    return out


def _outcome(path):
    """("ok", graphs) or ("DataError", error), and the seconds the read took; anything else raises."""
    start = time.perf_counter()
    try:
        result = ("ok", read_dataset(path))
    except DataError as exc:
        result = ("DataError", exc)
    return result, time.perf_counter() - start


def test_mutated_extxyz_files_end_in_a_correct_read_or_a_data_error(tmp_path):
    valid = _valid_extxyz(tmp_path / "valid.xyz")
    reference = read_dataset(tmp_path / "valid.xyz")
    assert len(reference) == 3
    mutations = _mutations(valid, np.random.default_rng(SEED))
    assert len(mutations) >= 140
    counts, escaped, slow = collections.Counter(), [], []
    for k, (name, content) in enumerate(mutations):
        path = tmp_path / f"m{k:03d}_{name[:40]}.xyz"
        path.write_bytes(content)
        try:
            (kind, value), seconds = _outcome(path)
        except Exception as exc:  # noqa: BLE001 - every other type is the failure under test
            escaped.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        counts[kind] += 1
        if seconds > SECONDS_PER_FILE:
            slow.append(f"{name}: {seconds:.1f} s")
        if kind == "ok":
            assert isinstance(value, list) and value and all(isinstance(g, AtomicGraph) for g in value), name
            for g in value:
                for label in ("pos", "cell", "energy", "forces", "stress"):
                    assert bool(getattr(g, label).isfinite().all()), f"{name}: non-finite {label} in a successful read"
        else:
            assert str(path) in str(value), f"{name}: the DataError does not name the file: {value}"
    print(
        f"\nfuzzed {len(mutations)} files: {counts['ok']} ok, {counts['DataError']} DataError, {len(escaped)} escaped"
    )
    assert not escaped, "other exceptions escaped:\n" + "\n".join(escaped)
    assert not slow, "reads slower than the bound:\n" + "\n".join(slow)


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("binary.xyz", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 20, "not a text"),
        (
            "latin.xyz",
            "1\nProperties=species:S:1:pos:R:3 energy=-1.0 note=caf\xe9\nCu 0 0 0\n".encode("latin-1"),
            "not a text",
        ),
    ],
)
def test_binary_or_non_utf8_file_is_a_data_error_naming_the_file(tmp_path, name, content, problem):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=rf"{name}.*{problem}"):
        read_dataset(tmp_path / name)


def test_parser_failure_names_the_file_and_the_frame(tmp_path):
    valid = _valid_extxyz(tmp_path / "valid.xyz").decode()
    lines = valid.splitlines(keepends=True)
    frame_lines = 2 + 3
    broken = list(lines)
    broken[2 * frame_lines + 3] = "Cu 0.0 abc 0.0\n"  # second atom line of frame 2
    (tmp_path / "broken.xyz").write_text("".join(broken))
    with pytest.raises(DataError, match=r"broken\.xyz, frame 2: could not be read") as info:
        read_dataset(tmp_path / "broken.xyz")
    assert info.value.frame == 2


def test_overflowing_numbers_are_a_data_error(tmp_path):
    text = '2\nLattice="1e308 0 0 0 1e308 0 0 0 1e308" pbc="T T T" Properties=species:S:1:pos:R:3 energy=-1.0\nCu 0 0 0\nAu 1e308 1e308 0\n'
    (tmp_path / "huge.xyz").write_text(text)
    with pytest.raises(DataError, match=r"huge\.xyz, frame 0"):
        read_dataset(tmp_path / "huge.xyz")
