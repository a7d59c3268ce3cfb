"""``mpnn-import``: a mace-torch or NequIP model file as an mpnn_ip checkpoint.

    mpnn-import MACE-MP-small.model out=mp_small.ckpt
    mpnn-import multihead.model out=omat.ckpt head=omat_pbe
    mpnn-import deployed.nequip.zip out=nequip.ckpt check_with=~/envs/nequip/bin/python

Reads the file without running code from it (an allow-listed unpickler; neither mace-torch nor
nequip is needed), converts the model into our MACE or NequIP with the same function, and writes a
self-contained checkpoint that every tool reads (``mpnn-md``, ``mpnn-eval``, ``mpnn-export``,
``MPNNCalculator.from_checkpoint``, committees, ``finetune_from=``). Options:

    out=PATH            the checkpoint to write (required); written only when everything succeeded
    head=NAME           the head of a multi-head MACE model to import
    check_with=PYTHON   the python of an environment that has the original package: it evaluates the
                        file on sample structures and a disagreement writes no checkpoint

Exit status 0, or 2 for a usage error, an unsafe file, an unsupported option or a failed check.
"""

from __future__ import annotations

PROG = "mpnn-import"
OPTIONS = ("out", "head", "check_with")


def parse_arguments(argv: list[str]) -> tuple[str, dict]:
    """``(source file, options)`` of the command line."""
    from mpnn_ip.cli.arguments import require, the_one, unknown_option

    sources, options = [], {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            sources.append(arg)
        elif key in OPTIONS:
            options[key] = value or None
        else:
            raise unknown_option(arg, key, OPTIONS, PROG)
    source = the_one(sources, "model file to import", f"{PROG} FILE out=CHECKPOINT")
    require(options, "out", "out=CHECKPOINT (e.g. out=imported.ckpt)", f"{PROG} {source} out=CHECKPOINT")
    return source, options


def run_import(source: str, options: dict) -> dict:
    """Import, write and print a summary; returns the written checkpoint's metadata."""
    from mpnn_ip.elements import symbols
    from mpnn_ip.interop.check import compare_with_peer
    from mpnn_ip.interop.importer import write_imported_checkpoint

    check = compare_with_peer(options["check_with"], source) if options.get("check_with") else None
    meta = write_imported_checkpoint(source, options["out"], head=options.get("head"), check=check)
    origin = meta["source"]
    version = f" {origin['package_version']}" if origin.get("package_version") else ""
    config = meta["model_config"]
    lines = [
        f"{PROG}: wrote {options['out']}: {meta['model_name']} for {', '.join(symbols(config['species']))}, "
        f"r_max {config['r_max']} Å, {meta['dtype']}, from {origin['file_name']} ({origin['package']}{version}, "
        f"sha256 {origin['sha256'][:12]}...)"
    ]
    if origin.get("head"):
        lines.append(f"  head {origin['head']} of {origin['heads']}")
    elif len(origin.get("heads") or []) > 1:
        lines.append(
            f"  heads {origin['heads']} (the first is the default; pick one with head= in mpnn-md, mpnn-eval, MPNNCalculator)"
        )
    if "check" in origin:
        lines.append(
            "  check_with: the original agrees: " + ", ".join(f"{k} {v:.1e}" for k, v in origin["check"].items())
        )
    lines.append(
        f"  use it: mpnn-md ckpt_path={options['out']} ... | MPNNCalculator.from_checkpoint('{options['out']}') | finetune_from={options['out']}"
    )
    print("\n".join(lines))
    return meta


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 0, or 2 for a usage, safety, support or parity error."""
    from mpnn_ip.cli.hydra_app import plain_main

    plain_main(PROG, __doc__, argv, lambda args: run_import(*parse_arguments(args)))


if __name__ == "__main__":
    main()
