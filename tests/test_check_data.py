"""Bad data at scale: every problem of every frame is found in one pass (file, frame, kind).

One crafted extxyz file holds a different problem in each of several frames (NaN force, wrong
force shape, close atoms, zero-volume cell, unknown element, a duplicate, an energy outlier, a
missing label). ``mpnn-check-data`` reports each at its frame; ``on_error=raise`` lists all in one
error; ``on_error=skip`` drops exactly the bad frames (duplicates/outliers are kept) and
``mpnn-train`` writes them to ``skipped_frames.csv``.
"""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from mpnn_ip.cli import check_data as cli
from mpnn_ip.data import AtomicDataModule, read_dataset
from mpnn_ip.data.checks import check_data, find_duplicates
from mpnn_ip.data.problems import Problem, problems_error
from mpnn_ip.errors import DataError

KEYS = dict(energy_key="REF_energy", forces_key="REF_forces")
SPECIES = ["Cu", "Au"]
#: frame -> (kind, severity) of the crafted file; every other frame is good.
EXPECTED = {
    1: ("non_finite", "error"),
    3: ("shape", "error"),
    4: ("close_atoms", "error"),
    5: ("cell", "error"),
    6: ("unknown_element", "error"),
    7: ("duplicate", "warning"),
    8: ("energy_outlier", "warning"),
    9: ("missing_label", "warning"),
}
BAD_FRAMES = [f for f, (_, severity) in EXPECTED.items() if severity == "error"]
NUM_FRAMES = 15


def _frame_text(
    rng,
    *,
    symbols=("Cu", "Cu", "Cu", "Au"),
    energy_shift=0.0,
    energy=True,
    forces=None,
    lattice=None,
    close=False,
    force_columns=3,
):
    a = 3.7
    pos = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) * a + rng.normal(0, 0.05, (4, 3))
    if close:
        pos[1] = pos[0] + [0.05, 0, 0]
    forces = rng.normal(0, 0.3, (4, force_columns)) if forces is None else forces
    e = sum(-3.5 if s == "Cu" else -3.0 for s in symbols) + rng.normal(0, 0.01) + energy_shift * len(symbols)
    lattice = lattice or f"{a} 0 0 0 {a} 0 0 0 {a}"
    header = f'Lattice="{lattice}" Properties=species:S:1:pos:R:3:REF_forces:R:{force_columns}'
    header += f" REF_energy={e:.8f}" if energy else ""
    header += ' pbc="T T T"'
    rows = [" ".join([s, *(f"{x:.8f}" for x in p), *(f"{x:.8f}" for x in f)]) for s, p, f in zip(symbols, pos, forces)]
    return "\n".join(["4", header, *rows]) + "\n"


def write_crafted(path):
    """15 frames; EXPECTED says which frame has which problem."""
    rng = np.random.default_rng(7)
    frames = []
    for k in range(NUM_FRAMES):
        if k == 1:
            forces = rng.normal(0, 0.3, (4, 3))
            forces[2, 1] = np.nan
            frames.append(_frame_text(rng, forces=forces))
        elif k == 3:
            frames.append(_frame_text(rng, force_columns=2))
        elif k == 4:
            frames.append(_frame_text(rng, close=True))
        elif k == 5:
            frames.append(_frame_text(rng, lattice="3.7 0 0 3.7 0 0 0 0 3.7"))
        elif k == 6:
            frames.append(_frame_text(rng, symbols=("Cu", "Cu", "Cu", "Ag")))
        elif k == 7:
            frames.append(frames[0])
        elif k == 8:
            frames.append(_frame_text(rng, energy_shift=2.0))
        elif k == 9:
            frames.append(_frame_text(rng, energy=False))
        else:
            frames.append(_frame_text(rng))
    path.write_text("".join(frames))
    return path


@pytest.fixture
def crafted(tmp_path):
    return write_crafted(tmp_path / "crafted.xyz")


def test_checker_reports_every_problem_at_its_frame(crafted):
    report = check_data([str(crafted)], species=SPECIES, **KEYS)
    found = {p.frame: (p.kind, p.severity) for p in report["problems"]}
    assert found == EXPECTED
    assert all(p.path == str(crafted) for p in report["problems"])
    duplicate = next(p for p in report["problems"] if p.kind == "duplicate")
    assert "frame 0" in duplicate.message
    stats = report["statistics"]
    assert stats["frames"] == NUM_FRAMES - len(BAD_FRAMES)
    assert stats["labels"] == {"energy": stats["frames"] - 1, "forces": stats["frames"], "stress": 0, "dipole": 0}
    assert stats["inputs"] == {"charge": 0, "spin": 0}
    assert stats["atoms"] == {"total": 4 * stats["frames"], "min": 4, "max": 4}
    assert stats["elements"] == {
        "Cu": {"atoms": 3 * stats["frames"], "frames": stats["frames"]},
        "Au": {"atoms": stats["frames"], "frames": stats["frames"]},
    }
    assert (
        stats["force_rms"] > 0
        and stats["neighbours"]["mean"] > 0
        and stats["neighbours"]["min"] <= stats["neighbours"]["max"]
    )


def test_raise_lists_every_bad_frame_in_one_error(crafted):
    with pytest.raises(DataError) as info:
        read_dataset(crafted, species=SPECIES, **KEYS)
    message = str(info.value)
    assert f"{len(BAD_FRAMES)} problems" in message
    for frame in BAD_FRAMES:
        assert f"crafted.xyz, frame {frame}: " in message
    with pytest.raises(DataError) as info:
        AtomicDataModule(train_path=str(crafted), species=SPECIES, **KEYS).setup()
    assert all(f"frame {frame}: " in str(info.value) for frame in BAD_FRAMES)


def test_skip_drops_exactly_the_bad_frames_and_keeps_duplicates_and_outliers(crafted):
    dm = AtomicDataModule(train_path=str(crafted), species=SPECIES, on_error="skip", val_count=2, test_count=2, **KEYS)
    with pytest.warns(UserWarning, match=f"left out {len(BAD_FRAMES)} bad frame"):
        dm.setup()
    kept = sorted(int(g.source_frame) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset) for g in d.graphs)
    assert kept == sorted(set(range(NUM_FRAMES)) - set(BAD_FRAMES))
    assert [(p.frame, p.kind) for p in dm.skipped_frames] == [(f, EXPECTED[f][0]) for f in BAD_FRAMES]


def test_duplicates_and_outliers_are_warned_by_the_data_module(crafted):
    dm = AtomicDataModule(train_path=str(crafted), species=SPECIES, on_error="skip", **KEYS)
    with pytest.warns(UserWarning) as record:
        dm.setup()
    text = "\n".join(str(w.message) for w in record)
    assert "crafted.xyz, frame 7: same species, positions and cell as file" in text
    assert "crafted.xyz, frame 8: energy per atom is" in text


def test_a_good_file_has_no_problem_and_read_is_unchanged(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "good.xyz"
    path.write_text("".join(_frame_text(rng) for _ in range(6)))
    problems: list = []
    graphs = read_dataset(path, on_error="skip", problems=problems, **KEYS)
    assert len(graphs) == 6 and problems == []
    assert check_data([str(path)], **KEYS)["problems"] == []


def test_skip_reads_an_unparseable_extxyz_frame_by_frame(tmp_path):
    rng = np.random.default_rng(2)
    frames = [_frame_text(rng) for _ in range(4)]
    lines = frames[2].splitlines()
    lines[3] = lines[3].replace(lines[3].split()[1], "abc", 1)  # a non-numeric coordinate
    frames[2] = "\n".join(lines) + "\n"
    path = tmp_path / "broken.xyz"
    path.write_text("".join(frames))
    with pytest.raises(DataError, match="could not be read"):
        read_dataset(path, **KEYS)
    problems: list = []
    graphs = read_dataset(path, on_error="skip", problems=problems, **KEYS)
    assert [int(g.source_frame) for g in graphs] == [0, 1, 3]
    assert [(p.frame, p.kind) for p in problems] == [(2, "unparseable")]


def test_an_unreadable_file_is_one_problem_and_the_others_are_checked(crafted, tmp_path):
    report = check_data([str(tmp_path / "missing.xyz"), str(crafted)], species=SPECIES, **KEYS)
    first = report["problems"][0]
    assert (first.path, first.frame, first.kind) == (str(tmp_path / "missing.xyz"), None, "unreadable")
    assert {p.frame for p in report["problems"][1:]} == set(EXPECTED)


def test_duplicates_ignore_the_sign_of_zero(tmp_path):
    rng = np.random.default_rng(3)
    text = _frame_text(rng)
    path = tmp_path / "dup.xyz"
    path.write_text(text + text.replace(" 0.00000000", " -0.00000000"))
    problems = find_duplicates(read_dataset(path, **KEYS))
    assert [(p.frame, p.kind) for p in problems] == [(1, "duplicate")]


def test_the_error_listing_is_capped():
    problems = [Problem("f.xyz", k, "non_finite", "forces contain NaN or inf") for k in range(25)]
    message = str(problems_error(problems))
    assert "25 problems" in message and "file f.xyz, frame 19:" in message and "frame 20:" not in message
    assert "... and 5 more" in message


def test_unknown_on_error_value_is_refused():
    with pytest.raises(DataError, match="on_error"):
        AtomicDataModule(on_error="ignore")


# --- mpnn-check-data --------------------------------------------------------------------------


def run_cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_cli_reports_errors_with_exit_code_1_and_writes_json(crafted, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    code, out, _ = run_cli(
        [
            str(crafted),
            "data.energy_key=REF_energy",
            "forces_key=REF_forces",
            "species=[Cu,Au]",
            "r_max=4.0",
            f"report={report_path}",
        ],
        capsys,
    )
    assert code == 1
    assert f"{len(BAD_FRAMES)} error(s), 3 warning(s)" in out
    for frame, (kind, _) in EXPECTED.items():
        assert f"frame {frame}  [{kind}]" in out
    assert "neighbours within r_max=4 Å" in out and "force RMS" in out
    report = json.loads(report_path.read_text())
    assert report["num_errors"] == len(BAD_FRAMES) and report["num_warnings"] == 3
    assert {p["frame"]: p["kind"] for p in report["problems"]} == {f: k for f, (k, _) in EXPECTED.items()}
    assert report["statistics"]["frames"] == NUM_FRAMES - len(BAD_FRAMES) and report["options"]["r_max"] == 4.0


def test_cli_exit_code_0_with_warnings_only(crafted, tmp_path, capsys):
    kept = "".join(chunk for k, chunk in enumerate(_split_frames(crafted.read_text())) if k not in BAD_FRAMES)
    path = tmp_path / "warnings_only.xyz"
    path.write_text(kept)
    code, out, _ = run_cli([str(path), "energy_key=REF_energy", "forces_key=REF_forces", "batch_size=4"], capsys)
    assert code == 0 and "0 error(s), 3 warning(s)" in out


@pytest.mark.parametrize(
    "argv, fragment",
    [(["x.xyz", "energy_kee=E"], "unknown option 'energy_kee'"), (["r_max=4.0"], "no data file given")],
)
def test_cli_usage_errors_exit_with_code_2(argv, fragment, capsys):
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and fragment in err and "Traceback" not in err


def _split_frames(text: str) -> list[str]:
    lines, chunks, i = text.splitlines(keepends=True), [], 0
    while i < len(lines):
        n = int(lines[i])
        chunks.append("".join(lines[i : i + n + 2]))
        i += n + 2
    return chunks


# --- mpnn-train data.on_error=skip ---------------------------------------------------------------


def test_mpnn_train_with_on_error_skip_writes_skipped_frames_csv(crafted, tmp_path, monkeypatch):
    from hydra.core.global_hydra import GlobalHydra

    from mpnn_ip.cli.train import main

    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "mpnn-train",
            "model=nequip_tiny",
            "model.num_layers=1",
            "model.num_features=4",
            "data=extxyz",
            f"data.train_path={crafted}",
            "data.on_error=skip",
            "data.energy_key=REF_energy",
            "data.forces_key=REF_forces",
            "data.species=[Cu,Au]",
            "data.batch_size=4",
            "logger=csv",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "callbacks.ema=null",
            f"hydra.run.dir={run}",
        ],
    )
    try:
        main()
    finally:
        GlobalHydra.instance().clear()
    with (run / "skipped_frames.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["frame"]), r["kind"]) for r in rows] == [(f, EXPECTED[f][0]) for f in BAD_FRAMES]
    assert all(r["path"] == str(crafted) and r["message"] for r in rows)
    assert (run / "checkpoints" / "last.ckpt").exists()
