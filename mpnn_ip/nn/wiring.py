"""Build-time checks that connected equivariant blocks agree on their irreps.

They raise ``ValueError`` naming both sides' irreps when a model is built, not at the first forward pass.
"""

from __future__ import annotations

from e3nn import o3


def check_same_irreps(producer_irreps_out, consumer_irreps_in, producer: str, consumer: str) -> None:
    """Raise ValueError naming both sides if ``producer``'s output irreps differ from ``consumer``'s input."""
    out, inp = o3.Irreps(producer_irreps_out), o3.Irreps(consumer_irreps_in)
    if out != inp:
        raise ValueError(f"wiring error: {producer} produces irreps {out} but {consumer} expects irreps {inp}")


def check_linear_paths(irreps_in, irreps_out, who: str) -> None:
    """Raise if some output irrep of a linear map has no input irrep of the same l and parity."""
    irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
    missing = [str(ir) for _, ir in irreps_out if ir not in irreps_in]
    if missing:
        raise ValueError(
            f"{who}: output irreps {irreps_out} need {missing}, absent from input irreps {irreps_in}; "
            "a linear map only connects irreps of equal l and parity"
        )
