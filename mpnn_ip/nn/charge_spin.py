"""Total charge and spin multiplicity of a frame as a feature of its atoms (MACE-OMOL's joint embedding).

``ChargeSpinEmbedding(F)(charge [B], spin [B])`` -> ``[B, F]``: a learnt vector per integer total charge
(-100..100 e) and per multiplicity (1..101), concatenated and mixed by a two-layer MLP (SiLU); the model adds
row ``batch[i]`` to atom i's initial scalar features, so every atom knows its frame's charge and spin state.
"""

from __future__ import annotations

import torch

from mpnn_ip.errors import DataError
from mpnn_ip.nn.tracing import is_tracing

#: largest |total charge| (e) and largest multiplicity 2S+1 that have an embedding (mace-torch's ranges)
MAX_ABS_CHARGE = 100
MAX_MULTIPLICITY = 101


class ChargeSpinEmbedding(torch.nn.Module):
    """Embedding of each frame's total charge and multiplicity; ``num_features`` F = width of the scalars it is added to."""

    def __init__(self, num_features: int):
        super().__init__()
        self.charge_embedding = torch.nn.Embedding(2 * MAX_ABS_CHARGE + 1, num_features)
        self.spin_embedding = torch.nn.Embedding(MAX_MULTIPLICITY, num_features)
        self.mix = torch.nn.Sequential(
            torch.nn.Linear(2 * num_features, num_features),
            torch.nn.SiLU(),
            torch.nn.Linear(num_features, num_features),
        )

    def forward(self, charge: torch.Tensor, spin: torch.Tensor) -> torch.Tensor:
        """``charge`` [B] (e, integer values), ``spin`` [B] (multiplicity 2S+1, integer >= 1) -> [B, F].

        Raises:
            DataError: a non-integer value or one outside -100..100 (charge) / 1..101 (multiplicity).
        """
        charge_index = torch.round(charge).to(torch.long) + MAX_ABS_CHARGE
        spin_index = torch.round(spin).to(torch.long) - 1
        if not is_tracing():
            _check(charge, charge_index, 2 * MAX_ABS_CHARGE, "total charge", f"-{MAX_ABS_CHARGE}..{MAX_ABS_CHARGE} e")
            _check(spin, spin_index, MAX_MULTIPLICITY - 1, "spin multiplicity", f"1..{MAX_MULTIPLICITY}")
        features = torch.cat([self.charge_embedding(charge_index), self.spin_embedding(spin_index)], dim=-1)
        return self.mix(features)


def _check(values: torch.Tensor, index: torch.Tensor, largest: int, what: str, allowed: str) -> None:
    bad = (index < 0) | (index > largest) | (torch.abs(values - torch.round(values)) > 1e-6)
    if bool(bad.any()):
        frames = torch.nonzero(bad).squeeze(1)[:5].tolist()
        shown = ", ".join(f"frame {f}: {values[f].item():g}" for f in frames)
        raise DataError(
            f"{what} must be an integer in {allowed} for a model with charge_spin_embedding; got {shown} "
            "(atoms.info['charge'] / atoms.info['spin'], or the data keys charge_key / spin_key)"
        )
