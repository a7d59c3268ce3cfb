"""Evaluate a model file with its own package, in that package's environment (``mpnn-import check_with=``).

Run by the python of the user's mace-torch or nequip environment, never imported by mpnn_ip:

    <peer python> peer_eval.py MODEL_FILE STRUCTURES.extxyz OUT.json mace-torch|nequip [HEAD]

Writes ``{"package": ..., "version": ..., "results": [{"energy", "forces", "stress"}...]}`` in eV, eV/Å and
eV/Å³ (3x3, ASE sign), float64. Standard library + ASE + the peer package only.
"""

import json
import sys


def mace_calculator(path, head):
    import os

    # mace-torch's own loader unpickles the whole module (its e3nn 0.4.4 also needs the old torch.load default):
    # the user asked for the original to run here, in its own environment
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import mace
    from mace.calculators import MACECalculator

    kwargs = {"head": head} if head else {}
    return (
        "mace-torch",
        getattr(mace, "__version__", None),
        MACECalculator(model_paths=path, device="cpu", default_dtype="float64", **kwargs),
    )


def nequip_calculator(path):
    import nequip
    from nequip.integrations.ase import NequIPCalculator

    calc = NequIPCalculator._from_saved_model(path, device="cpu")
    return "nequip", getattr(nequip, "__version__", None), calc


def main(argv):
    model_path, structures_path, out_path, package = argv[:4]
    head = argv[4] if len(argv) > 4 and argv[4] else None
    import ase.io

    package, version, calc = (
        mace_calculator(model_path, head) if package == "mace-torch" else nequip_calculator(model_path)
    )
    results = []
    for atoms in ase.io.read(structures_path, index=":"):
        atoms.calc = calc
        stress = None
        if atoms.pbc.all():
            stress = atoms.get_stress(voigt=False).tolist()
        results.append(
            {"energy": float(atoms.get_potential_energy()), "forces": atoms.get_forces().tolist(), "stress": stress}
        )
    with open(out_path, "w") as handle:
        json.dump({"package": package, "version": version, "results": results}, handle)


if __name__ == "__main__":
    main(sys.argv[1:])
