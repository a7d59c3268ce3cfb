"""``mpnn-export``: a checkpoint as one ``.pt2`` file that runs without the model code (config ``configs/export.yaml``).

    mpnn-export ckpt_path=outputs/run/checkpoints/last.ckpt out=model.pt2 [device=cuda] [dtype=float64] [head=NAME]

The model is exported with ``torch.export`` and compiled by AOTInductor (``compile=false``: the
exported program only), then loaded back and compared with the eager model on sample structures
(:func:`mpnn_ip.export.export_model`); a mismatch removes the file and exits with code 2. Use the
file with ``MPNNCalculator.from_exported("model.pt2")`` (ASE).
"""

from __future__ import annotations

PROG = "mpnn-export"


def run_export(cfg) -> dict:
    """The body of ``mpnn-export`` for a composed config; returns :func:`mpnn_ip.export.export_model`'s metadata."""
    from mpnn_ip.checkpoint import load_model, resolve_device
    from mpnn_ip.export import export_model
    from mpnn_ip.models.heads import select_head

    device = resolve_device(cfg.device)
    model = select_head(load_model(str(cfg.ckpt_path), device=device, dtype=cfg.dtype), cfg.get("head"))
    info = export_model(model, str(cfg.out), device=device, compile=bool(cfg.compile))
    parity = ", ".join(f"{key} {value:.1e}" for key, value in info["parity"].items())
    seconds = sum(info["seconds"].values())
    print(
        f"{PROG}: wrote {cfg.out} ({info['model_name']}, {info['dtype']}, {info['device']}, "
        f"{'AOTInductor' if info['compiled'] == 'aoti' else 'torch.export program'}) in {seconds:.0f} s; "
        f"largest relative error against the eager model: {parity}"
    )
    return info


def _task(cfg) -> None:
    from mpnn_ip.cli.hydra_app import friendly_errors

    with friendly_errors(PROG):
        run_export(cfg)


def main() -> None:
    from mpnn_ip.cli.hydra_app import run_hydra_app

    run_hydra_app(_task, config_name="export", prog=PROG)


if __name__ == "__main__":
    main()
