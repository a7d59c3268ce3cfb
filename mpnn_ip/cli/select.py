"""``mpnn-select``: pick the pool frames of largest committee uncertainty (config ``configs/select.yaml``).

    mpnn-select ckpts=[s0/best.ckpt,s1/best.ckpt,s2/best.ckpt] pool=candidates.xyz n=50 out=selected.xyz
    mpnn-select "ckpts='outputs/sweep/*/checkpoints/best.ckpt'" pool=candidates.xyz n=50 criterion=energy

Active learning: members trained from different seeds (``mpnn-train -m seed=0,1,2 ...``) disagree
where the training data say little; the frames they disagree on most are the ones to label next.
Every pool frame is run through the committee (:class:`mpnn_ip.models.committee.Committee`) and
scored by ``criterion``:

    forces        max over the frame's atoms of ``forces_uncertainty`` (eV/Å)
    forces_mean   mean over the frame's atoms of ``forces_uncertainty`` (eV/Å)
    energy        ``energy_uncertainty`` divided by the number of atoms (eV/atom)

The ``n`` highest-scoring frames go to ``out`` (extxyz), highest first, as read from the pool (labels,
info and arrays kept) plus ``info``: ``pool_frame`` (index in the pool selection), ``selection_rank``
(1 = most uncertain), ``selection_score``, ``energy_uncertainty`` (eV), ``forces_uncertainty_mean`` and
``forces_uncertainty_max`` (eV/Å), and the per-atom array ``forces_uncertainty``. ``scores`` (CSV) lists
every pool frame with these values, its score and its rank (empty when not selected).
User errors (fewer than two checkpoints, ``n`` larger than the pool, missing files) exit with code 2.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

PROG = "mpnn-select"
#: criterion -> (column of :func:`mpnn_ip.evaluation.per_frame_table` or derived score, unit).
CRITERIA = {
    "forces": ("forces_uncertainty_max", "eV/Å"),
    "forces_mean": ("forces_uncertainty_mean", "eV/Å"),
    "energy": ("energy_uncertainty_per_atom", "eV/atom"),
}
SCORE_COLUMNS = (
    "frame",
    "num_atoms",
    "energy_uncertainty",
    "energy_uncertainty_per_atom",
    "forces_uncertainty_mean",
    "forces_uncertainty_max",
)


def run_selection(cfg) -> dict:
    """The body of ``mpnn-select`` for a composed config: ``{"scores" [frames], "selected" [n] pool
    indices (most uncertain first), "table": per-frame columns, "out", "scores_path"}``."""
    from mpnn_ip.checkpoint import check_model_species, checkpoint_paths, load_potential
    from mpnn_ip.data.atomic_graph import AtomicGraph
    from mpnn_ip.data.reading import read_frames
    from mpnn_ip.errors import ConfigError
    from mpnn_ip.evaluation import evaluate, per_frame_table

    if str(cfg.criterion) not in CRITERIA:
        raise ConfigError(f"criterion={cfg.criterion} is not one of {', '.join(CRITERIA)}")
    paths = checkpoint_paths(cfg.ckpts)
    if len(paths) < 2:
        raise ConfigError(
            f"{PROG} ranks frames by the disagreement of a committee, and got {len(paths)} checkpoint ({', '.join(paths)}); "
            "give two or more, e.g. ckpts=[s0/best.ckpt,s1/best.ckpt] from mpnn-train -m seed=0,1 ..."
        )
    n = int(cfg.n)
    pool = str(cfg.pool)
    frames = read_frames(pool, index=cfg.index, format=cfg.format)
    if not 1 <= n <= len(frames):
        raise ConfigError(
            f"n={n} frames cannot be selected from the pool {pool}, which has {len(frames)}; choose n from 1 to {len(frames)}"
        )
    committee = load_potential(paths, device=cfg.device, dtype=cfg.dtype)
    graphs = [AtomicGraph.from_atoms(atoms, path=pool, frame=k) for k, atoms in enumerate(frames)]
    check_model_species(committee, {int(z) for g in graphs for z in g.atomic_numbers.unique().tolist()}, f"pool {pool}")
    results = evaluate(
        committee, graphs, batch_size=int(cfg.batch_size), compute_stress=False, progress=bool(cfg.progress)
    )

    table = per_frame_table(results)
    table["energy_uncertainty_per_atom"] = table["energy_uncertainty"] / table["num_atoms"]
    column, unit = CRITERIA[str(cfg.criterion)]
    scores = table[column]
    selected = np.argsort(-scores, kind="stable")[:n]
    out = Path(str(cfg.out))
    scores_path = Path(str(cfg.scores)) if cfg.scores else out.with_name(f"{out.stem}_scores.csv")
    _write_selected(frames, selected, table, column, results["atom_extra"]["forces_uncertainty"], out)
    _write_scores(table, scores, selected, scores_path)
    print(
        f"{PROG}: ranked {len(frames)} frames of {pool} by {cfg.criterion} ({column}, {unit}) with a committee of "
        f"{len(paths)}; selected {n} (scores {scores[selected[0]]:.4g} .. {scores[selected[-1]]:.4g}, pool median "
        f"{np.median(scores):.4g}) -> {out}, {scores_path}"
    )
    return {"scores": scores, "selected": selected, "table": table, "out": out, "scores_path": scores_path}


def _write_selected(frames, selected, table, column, atom_uncertainty, out: Path) -> None:
    import ase.io

    starts = np.concatenate([[0], np.cumsum(table["num_atoms"])])
    chosen = []
    for rank, k in enumerate(selected, start=1):
        atoms = frames[k]
        atoms.info.update(
            pool_frame=int(k),
            selection_rank=rank,
            selection_score=float(table[column][k]),
            energy_uncertainty=float(table["energy_uncertainty"][k]),
            forces_uncertainty_mean=float(table["forces_uncertainty_mean"][k]),
            forces_uncertainty_max=float(table["forces_uncertainty_max"][k]),
        )
        atoms.arrays["forces_uncertainty"] = atom_uncertainty[starts[k] : starts[k + 1]]
        chosen.append(atoms)
    out.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(out, chosen, format="extxyz")


def _write_scores(table, scores, selected, path: Path) -> None:
    rank = {int(k): r for r, k in enumerate(selected, start=1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*SCORE_COLUMNS, "score", "rank"])
        for k in range(len(scores)):
            values = [table[c][k] for c in SCORE_COLUMNS]
            writer.writerow(
                [
                    *(f"{v:.10g}" if isinstance(v, (float, np.floating)) else int(v) for v in values),
                    f"{scores[k]:.10g}",
                    rank.get(k, ""),
                ]
            )


def _task(cfg) -> None:
    from mpnn_ip.cli.hydra_app import friendly_errors

    with friendly_errors(PROG):
        run_selection(cfg)


def main() -> None:
    from mpnn_ip.cli.hydra_app import run_hydra_app

    run_hydra_app(_task, config_name="select", prog=PROG)


if __name__ == "__main__":
    main()
