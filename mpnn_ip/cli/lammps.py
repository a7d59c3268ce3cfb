"""``mpnn-lammps``: run a LAMMPS input script with a trained potential (or a committee).

    mpnn-lammps in.md model=model.ckpt elements=[Cu,Au]
    mpnn-lammps in.md model=[a.ckpt,b.ckpt,c.ckpt] -var T 600 -screen none
    mpiexec -n 4 mpnn-lammps in.md model=model.ckpt

The script declares `fix mpnn all external pf/callback 1 1` (after the atoms exist) and uses
`units metal`; the potential gives that fix its forces, energy, virial, per-atom energies and per-atom
virials (LAMMPS's pe, pressure, minimize, compute pe/atom and stress/atom see them). A committee's
energy uncertainty (eV) and largest per-atom force uncertainty (eV/Å) are f_mpnn[1] and f_mpnn[2]
(e.g. `thermo_style custom step pe f_mpnn[1] f_mpnn[2]`, `fix halt`). Options:

    model=CKPT | [A,B,...]   checkpoint (required), or several: their committee
    elements=[Cu,Au]         element of each LAMMPS type, in type order (default: from the masses)
    fix_id=mpnn              the fix external the potential drives
    device=auto              cpu, cuda, auto (cuda when there is one)
    dtype=                   float32 | float64 (default: the checkpoint's)
    skin=1.0                 Å, Verlet skin of the model's radius graph (same results; 0 = search every step)
    compile=auto             torch.compile when it pays (auto: CUDA, or CPU from 1000 atoms) | true | false
    head=                    head of a multi-head model (default: its first)
    dispersion=              d3bj:<functional> (e.g. d3bj:pbe): add DFT-D3(BJ) to a model trained without it
    charge=0 spin=1          total charge (e) and multiplicity of the system (models with charge/spin inputs)
    log=log.lammps           LAMMPS's log file (none = no log)

Every other argument goes to LAMMPS (`-var NAME VALUE ...`, `-screen none`, `-echo both`, ...).
With MPI, every rank runs LAMMPS and rank 0 evaluates the model for the whole system.
Exit status 0, or 2 for a bad script, option, type mapping or model, or a step the model cannot
evaluate (nothing is written for errors found before the run starts).
"""

from __future__ import annotations

import os
import sys

PROG = "mpnn-lammps"
OPTIONS = (
    "model",
    "elements",
    "fix_id",
    "device",
    "dtype",
    "skin",
    "compile",
    "head",
    "dispersion",
    "charge",
    "spin",
    "log",
)


def parse_arguments(argv: list[str]) -> tuple[str, dict, list[str]]:
    """``(script, options, LAMMPS arguments)`` of the command line."""
    from mpnn_ip.cli.arguments import require, the_one, unknown_option

    scripts, options, lammps_args = [], {}, []
    in_lammps_flag = False
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.isidentifier():  # ours (LAMMPS's flags and their values take no key=value)
            if key not in OPTIONS:
                raise unknown_option(arg, key, OPTIONS, PROG)
            options[key] = value
            in_lammps_flag = False
        elif arg.startswith("-") and not _is_number(arg):
            lammps_args.append(arg)
            in_lammps_flag = True
        elif in_lammps_flag:
            lammps_args.append(arg)  # a value of the LAMMPS flag before it
        else:
            scripts.append(arg)
    script = the_one(scripts, "LAMMPS input script", f"{PROG} IN_SCRIPT model=CHECKPOINT")
    hint = "model=CHECKPOINT (or model=[a.ckpt,b.ckpt] for a committee)"
    require(options, "model", hint, f"{PROG} {script} model=CHECKPOINT")
    return script, options, lammps_args


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(options: dict, name: str, what: str, default: float | None = None) -> float | None:
    """The option ``name`` as a number (``default`` when absent or empty); ConfigError naming ``what`` it should be."""
    from mpnn_ip.errors import ConfigError

    text = options.get(name)
    if text in (None, ""):
        return default
    try:
        return float(text)
    except ValueError as exc:
        raise ConfigError(f"{name}={text}: not {what}") from exc


def _listed(value: str) -> list[str]:
    """``[a,b]`` or ``a,b`` -> ``["a", "b"]``."""
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    return [item.strip().strip("'\"") for item in value.split(",") if item.strip()]


def run(argv: list[str]) -> None:
    """Parse, run the script, print a summary (rank 0)."""
    from mpnn_ip.lammps import run_script

    script, options, lammps_args = parse_arguments(argv)
    models = _listed(options["model"])
    skin = _number(options, "skin", "a number of Å", 1.0)
    log = options.get("log", "log.lammps")
    result = run_script(
        script,
        models if len(models) > 1 else models[0],
        _listed(options["elements"]) if options.get("elements") else None,
        fix_id=options.get("fix_id") or "mpnn",
        lammps_args=lammps_args,
        log=None if log.lower() in ("none", "") else log,
        device=options.get("device") or "auto",
        dtype=options.get("dtype") or None,
        skin=skin,
        compile=options.get("compile", "auto"),
        head=options.get("head") or None,
        dispersion=options.get("dispersion") or None,
        charge=_number(options, "charge", "a total charge in e"),
        spin=_number(options, "spin", "a multiplicity 2S+1"),
        on_error="exit",
        prog=PROG,
    )
    potential = result.potential
    if potential.rank == 0:
        model_ms = 1e3 * potential.model_seconds / max(potential.calls, 1)
        overhead_ms = 1e3 * (potential.callback_seconds - potential.model_seconds) / max(potential.calls, 1)
        print(
            f"{PROG}: {script} done in {result.wall_seconds:.1f} s: {potential.calls} force calls, model {model_ms:.2f} ms "
            f"and callback overhead {overhead_ms:.2f} ms per call, radius graph searched in {100 * potential.rebuild_fraction:.1f} % "
            f"of them{'; log ' + result.log if result.log else ''}"
        )


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 0, or 2 for a user error (printed once, by rank 0)."""
    from mpnn_ip.cli.hydra_app import USER_ERROR_EXIT_CODE, explain, plain_main

    if _mpi_rank() == 0:
        plain_main(PROG, __doc__, argv, run)
        return
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - rank 0 speaks for every rank
    try:
        run(sys.argv[1:] if argv is None else list(argv))
    except Exception as exc:  # noqa: BLE001 - user errors are printed by rank 0 only
        if explain(exc) is None:
            raise
        sys.exit(USER_ERROR_EXIT_CODE)


def _mpi_rank() -> int:
    """This process's MPI rank from the launcher's environment (0 without one), before MPI starts."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


if __name__ == "__main__":
    main()
