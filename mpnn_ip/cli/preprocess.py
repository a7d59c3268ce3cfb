"""``mpnn-preprocess``: stream data files into an on-disk graph store for ``mpnn-train data=ondisk``.

    mpnn-preprocess data.train_path='big/*.xyz' out=big_store
    mpnn-preprocess data.train_path=train.xyz data.val_path=val.xyz data.energy_key=REF_energy model=mace out=store
    mpnn-train data=ondisk data.store=big_store

Arguments are the overrides of an ``mpnn-train`` command (``data=extxyz`` is the default here):
the ``data.*`` reading options (keys, units, ``index``, ``format``: the
:class:`~mpnn_ip.data.reader_options.ReaderOptions`; ``species``, ``on_error``) are applied frame by
frame, every label of the table is stored with its mask, the paths may be glob patterns, and
``data.r_max`` (the model's cutoff, ``model=...``) is the cutoff whose neighbour counts the store keeps. Split and batch options are
accepted and unused (they are chosen at training). Own options:

    out=DIR           the store folder (required; empty, new, or an earlier store)
    r_max=[4.5,5.0]   cutoffs (Å) to store neighbour counts for (default: data.r_max)
    shard_size=10000  frames per shard file
    rebuild=true      write the store again even if it is up to date

Re-running with unchanged input files (sha256) and reader settings reuses the store; a changed
file, setting or store format rebuilds it, saying why. Exit status 0, or 2 for a usage or data error.
"""

from __future__ import annotations

import time

PROG = "mpnn-preprocess"
OWN_OPTIONS = ("out", "r_max", "shard_size", "rebuild")


def parse_arguments(argv: list[str]) -> tuple[dict, dict]:
    """``(data options, own options)`` of the command line (the data config composed as for training)."""
    from omegaconf import OmegaConf

    from mpnn_ip.cli.hydra_app import compose_config, parse_value, to_container
    from mpnn_ip.errors import ConfigError

    own, overrides = {}, []
    for arg in argv:
        key = arg.split("=", 1)[0]
        if key in OWN_OPTIONS and "=" in arg:
            own[key] = parse_value(arg, key, arg.split("=", 1)[1])
        else:
            overrides.append(arg)
    if not any(o.split("=", 1)[0] in ("data", "+data") for o in overrides):
        overrides.insert(0, "data=extxyz")
    if not own.get("out"):
        raise ConfigError(
            f"no store folder given: add out=DIR. Usage: {PROG} data.train_path=FILE out=DIR (see {PROG} --help)"
        )
    cfg = compose_config("train", [*overrides, "output_dir=."])
    if OmegaConf.is_missing(cfg.data, "train_path"):
        raise ConfigError(
            f"no training data given: add data.train_path=FILE (or a glob pattern). Usage: {PROG} data.train_path=FILE out=DIR"
        )
    data = to_container(cfg.data)
    if data.get("train_path") is None:
        from mpnn_ip.data.synthetic import default_dataset_path

        data["train_path"] = str(default_dataset_path())
    return data, own


def run_preprocess(data: dict, own: dict) -> dict:
    """Write (or reuse) the store and print what was done; returns the manifest."""
    from mpnn_ip.data.reader_options import ReaderOptions
    from mpnn_ip.data.store_writer import DEFAULT_SHARD_SIZE, write_store

    radii = own.get("r_max", data.get("r_max", 5.0))
    radii = [float(r) for r in (radii if isinstance(radii, (list, tuple)) else [radii])]
    started = time.perf_counter()
    manifest, happened = write_store(
        own["out"],
        data["train_path"],
        data.get("val_path"),
        data.get("test_path"),
        read_options=ReaderOptions.from_config(data),
        species=data.get("species"),
        on_error=data.get("on_error", "raise"),
        r_max=radii,
        shard_size=int(own.get("shard_size", DEFAULT_SHARD_SIZE)),
        rebuild=bool(own.get("rebuild", False)),
    )
    print(format_summary(manifest, happened, own["out"], time.perf_counter() - started))
    return manifest


def format_summary(manifest: dict, happened: str, out, seconds: float) -> str:
    stats = manifest["statistics_of_all_training_frames"]
    parts = ", ".join(f"{name} {stop - start}" for name, (start, stop) in manifest["parts"].items())
    e0s = ", ".join(f"{z}: {e:.6g}" for z, e in stats["e0s"].items())
    lines = [
        f"{PROG}: store {out}: {happened} ({seconds:.1f} s)",
        f"  frames written: {manifest['num_frames']} ({parts}); skipped: {len(manifest['skipped'])}; shards: {len(manifest['shards'])}",
        f"  neighbour counts for r_max = {manifest['r_max']} Å",
        f"  statistics of all {stats['num_frames']} training-file frames (training uses its split's): "
        f"E0 ({stats['e0s_source']}) {{{e0s}}} eV, force RMS {stats['force_rms']:.4g} eV/Å, "
        f"mean neighbours within {stats['r_max']:g} Å {stats['avg_num_neighbors']:.3f}",
    ]
    if manifest["skipped"]:
        lines.append("  skipped frames (listed in manifest.json; mpnn-train writes skipped_frames.csv):")
        lines += [f"    {p['path']} frame {p['frame']}: {p['message']}" for p in manifest["skipped"][:20]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 0, or 2 for a usage or data error."""
    from mpnn_ip.cli.hydra_app import plain_main

    plain_main(PROG, __doc__, argv, lambda args: run_preprocess(*parse_arguments(args)))


if __name__ == "__main__":
    main()
