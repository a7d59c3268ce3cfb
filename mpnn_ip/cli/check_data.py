"""``mpnn-check-data``: every problem of every frame of data files, and what the data holds.

    mpnn-check-data PATH [PATH ...] [key=value ...]
    mpnn-check-data train.xyz energy_key=REF_energy forces_key=REF_forces species=[C,H,O] r_max=5.0 report=check.json

PATHs are files or glob patterns (quote them). Options are the settings of ``configs/data/extxyz.yaml``
(the ``data.`` prefix of an ``mpnn-train`` command may stay): the reading ones
(:class:`~mpnn_ip.data.reader_options.ReaderOptions`: ``energy_key``, ``forces_key``, ``stress_key``,
``stress_unit``, ``stress_sign``, ``virial_key``, ``index``, ``format``, and ``<label>_key`` or
``label_keys={label: key}`` for a registered label; ``dipole_key``, and the inputs' ``charge_key`` and
``spin_key``), ``species``, ``r_max`` (Å, neighbour counts), ``outlier_sigma``, and the paths
``train_path``/``val_path``/``test_path``; the others (batch sizes, splits ...) are accepted and unused.
``report=FILE`` also writes the report as JSON. The report counts the frames carrying each label of the
table, and each input (total charge, spin multiplicity; the other frames hold its default).

Errors (the frame cannot be trained on; ``mpnn-train`` raises, or drops it with
``data.on_error=skip``): unreadable files or frames, NaN/inf, wrong label shapes, atoms closer than
0.1 Å, zero-volume periodic cells, elements outside ``species``. Warnings (kept): labels that other
frames of the file have, duplicated frames, energy-per-atom outliers.

Exit status: 0 without errors (warnings allowed), 1 when there are errors, 2 for a usage error.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

PROG = "mpnn-check-data"
PATH_KEYS = ("train_path", "val_path", "test_path")
_OPTION = re.compile(r"^(?:data\.)?([A-Za-z_]\w*)=(.*)$", re.DOTALL)


def parse_arguments(argv: list[str]) -> tuple[list[str], dict]:
    """(paths, options) of the command line; an unknown option is a ``ConfigError``."""
    from mpnn_ip.cli.hydra_app import parse_value
    from mpnn_ip.errors import ConfigError

    known = _known_options()
    paths, options = [], {}
    for arg in argv:
        match = _OPTION.match(arg)
        if match is None or Path(arg).exists():
            paths.append(arg)
            continue
        key, value = match.group(1), parse_value(arg, match.group(1), match.group(2))
        if key not in known:
            raise ConfigError(f"unknown option {key!r}; options: {', '.join(sorted(known))}")
        if key in PATH_KEYS:
            if value is not None:
                paths.append(str(value))
        else:
            options[key] = value
    if not paths:
        raise ConfigError(f"no data file given. Usage: {PROG} PATH [PATH ...] [key=value ...] (see {PROG} --help)")
    return paths, options


def run_check(paths: list[str], options: dict) -> dict:
    """Check ``paths`` with ``options``, print the report (and write the JSON ``report``); returns the report."""
    from mpnn_ip.data.checks import DEFAULT_OUTLIER_SIGMA, check_data
    from mpnn_ip.data.reader_options import ReaderOptions

    reader = ReaderOptions.from_config(options)
    settings = reader.as_settings()
    r_max = float(options.get("r_max", 5.0))
    outlier_sigma = options.get("outlier_sigma", DEFAULT_OUTLIER_SIGMA)
    result = check_data(paths, r_max=r_max, species=options.get("species"), outlier_sigma=outlier_sigma, options=reader)
    problems = result["problems"]
    report = {
        "files": result["files"],
        "options": {**settings, "species": options.get("species"), "r_max": r_max, "outlier_sigma": outlier_sigma},
        "num_errors": sum(p.is_error for p in problems),
        "num_warnings": sum(not p.is_error for p in problems),
        "problems": [p.as_dict() for p in problems],
        "statistics": result["statistics"],
    }
    print(format_report(report))
    if options.get("report"):
        path = Path(str(options["report"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{PROG}: wrote {path}")
    return report


def format_report(report: dict) -> str:
    """The human-readable report: a summary line, every problem (file, frame, kind, what), the statistics."""
    stats = report["statistics"]
    lines = [
        f"{PROG}: {len(report['files'])} file(s), {stats['frames']} good frame(s); "
        f"{report['num_errors']} error(s), {report['num_warnings']} warning(s)"
    ]
    for severity, title in (
        ("error", "Errors (frames that cannot be trained on)"),
        ("warning", "Warnings (frames kept)"),
    ):
        chosen = [p for p in report["problems"] if p["severity"] == severity]
        if chosen:
            lines += ["", f"{title}:"]
            lines += [
                f"  {p['path']}  frame {'-' if p['frame'] is None else p['frame']}  [{p['kind']}] {p['message']}"
                for p in chosen
            ]
    atoms, labels, neighbours = stats["atoms"], stats["labels"], stats["neighbours"]
    elements = ", ".join(
        f"{symbol} {n['atoms']} atoms in {n['frames']} frames" for symbol, n in stats["elements"].items()
    )
    frames = stats["frames"]
    force_rms = "-" if stats["force_rms"] is None else f"{stats['force_rms']:.4g} eV/Å"
    lines += [
        "",
        "Statistics (frames without errors):",
        f"  frames: {frames}",
        f"  atoms: {atoms['total']} (per frame: min {atoms['min']}, max {atoms['max']})",
        f"  elements: {elements or '-'}",
        "  labels: " + ", ".join(f"{name} {count}/{frames} frames" for name, count in labels.items()),
        "  inputs (others at their default): "
        + ", ".join(f"{name} {count}/{frames} frames" for name, count in stats.get("inputs", {}).items()),
        f"  force RMS: {force_rms}",
        f"  neighbours within r_max={neighbours['r_max']:g} Å: mean {neighbours['mean']:.2f}, min {neighbours['min']}, max {neighbours['max']} per atom",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 0 (no errors), 1 (errors in the data) or 2 (usage error)."""
    from mpnn_ip.cli.hydra_app import plain_main

    report = plain_main(PROG, __doc__, argv, lambda args: run_check(*parse_arguments(args)))
    sys.exit(1 if report["num_errors"] else 0)


def _known_options() -> set[str]:
    """The keys of ``configs/data/extxyz.yaml`` (the data module's arguments), the reading options (those of
    registered labels too), and ``report``."""
    from omegaconf import OmegaConf

    from mpnn_ip.cli.hydra_app import config_dir
    from mpnn_ip.data.reader_options import ReaderOptions

    data_keys = set(OmegaConf.load(config_dir() / "data" / "extxyz.yaml")) - {"_target_", "defaults"}
    return data_keys | set(ReaderOptions.keywords()) | {"report"}


if __name__ == "__main__":
    main()
