"""``mpnn-import check_with=<python>``: the original package judges the import; a disagreement writes nothing."""

from __future__ import annotations

import lzma
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch_cluster")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data" / "interop"
PEERS = Path(os.environ.get("MPNN_IP_PEERS", REPO.parent / "peers"))


def _fixture(name: str, folder: Path) -> Path:
    source = FIXTURES / name
    target = folder / source.name.removesuffix(".xz")
    target.write_bytes(lzma.decompress(source.read_bytes()))
    return target


def test_sample_structures_use_the_models_elements_and_reach_neighbours():
    from mpnn_ip.interop.check import sample_structures

    structures = sample_structures([1, 6, 8], r_max=4.0)
    assert [a.info["name"] for a in structures] == ["cluster", "cubic", "triclinic", "slab", "lone_atom"]
    assert all(set(a.numbers) <= {1, 6, 8} for a in structures) and len(structures[-1]) == 1
    assert structures[1].pbc.all() and not structures[0].pbc.any() and list(structures[3].pbc) == [True, True, False]
    distances = structures[0].get_all_distances()[np.triu_indices(len(structures[0]), 1)]
    assert distances.min() > 0.5 and (distances < 4.0).any()


def test_a_disagreeing_original_stops_the_import_and_writes_no_checkpoint(tmp_path, monkeypatch, capsys):
    from mpnn_ip.cli.import_model import main
    from mpnn_ip.interop import check

    source = _fixture("mace/scaleshift_residual_l3_c3.model.xz", tmp_path)

    def shifted_peer(python, path, package, structures, head):
        assert package == "mace-torch" and python == "/peer/bin/python"
        ours = check.our_results(import_model_once(path), structures)
        return {
            "results": [
                {
                    "energy": r["energy"] + 1e-3 * len(a),
                    "forces": r["forces"].tolist(),
                    "stress": None if r["stress"] is None else r["stress"].tolist(),
                }
                for r, a in zip(ours, structures)
            ]
        }

    def import_model_once(path):
        from mpnn_ip.interop import import_model

        return import_model(path)

    monkeypatch.setattr(check, "peer_results", shifted_peer)
    out = tmp_path / "out.ckpt"
    with pytest.raises(SystemExit) as info:
        main([str(source), f"out={out}", "check_with=/peer/bin/python"])
    message = capsys.readouterr().err
    assert info.value.code == 2 and "energy_per_atom 1.00e-03" in message and "No checkpoint was written" in message
    assert not out.exists()


def test_an_agreeing_original_is_recorded_in_the_checkpoint(tmp_path, monkeypatch):
    import torch

    from mpnn_ip.interop import check
    from mpnn_ip.interop.importer import write_imported_checkpoint

    source = _fixture("nequip/nequip_s.ckpt.xz", tmp_path)

    def same_peer(python, path, package, structures, head):
        from mpnn_ip.interop import import_model

        ours = check.our_results(import_model(path), structures)
        return {
            "results": [
                {
                    "energy": r["energy"],
                    "forces": r["forces"].tolist(),
                    "stress": None if r["stress"] is None else r["stress"].tolist(),
                }
                for r in ours
            ]
        }

    monkeypatch.setattr(check, "peer_results", same_peer)
    write_imported_checkpoint(source, tmp_path / "out.ckpt", check=check.compare_with_peer("/peer/bin/python", source))
    recorded = torch.load(tmp_path / "out.ckpt", weights_only=True)["mpnn_ip"]["source"]["check"]
    assert recorded == {"energy_per_atom": 0.0, "forces": 0.0, "stress": 0.0}


@pytest.mark.slow
@pytest.mark.parametrize(
    "fixture, peer",
    [
        ("mace/scaleshift_residual_l3_c3.model.xz", "mace"),
        ("mace/multihead.model.xz", "mace"),
        ("nequip/nequip_s.ckpt.xz", "nequip"),
    ],
)
def test_check_with_the_real_original_package_agrees(fixture, peer, tmp_path, capsys):
    python = PEERS / peer / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no {peer} environment at {python} (set MPNN_IP_PEERS to the folder of the peers' venvs)")
    from mpnn_ip.cli.import_model import main

    main([str(_fixture(fixture, tmp_path)), f"out={tmp_path / 'out.ckpt'}", f"check_with={python}"])
    assert "the original agrees" in capsys.readouterr().out and (tmp_path / "out.ckpt").is_file()
