"""Latent Ewald summation (LES; Cheng 2025, npj Comput. Mater. 11, 80): a latent charge per atom from the
network's scalar features, and the Coulomb energy of those charges beyond any cutoff.

``LatentEwald(num_scalars)(scalars [n_atoms, F], pos [n_atoms, 3] Å, cell [B, 3, 3] Å, pbc [B, 3], batch [n_atoms])``
-> ``(charges [n_atoms] e, energies [n_atoms] eV)``. The charges are an MLP of the invariant features
(``F -> hidden -> 1``, SiLU), shifted per frame so that they sum to the frame's total charge (the input
``charge``, 0 when absent), so they are invariant and need no charge labels: the energy and force labels
(and a dipole label, when there is one) train them through the long-range energy. The energy is :class:`~mpnn_ip.nn.coulomb.GaussianCoulomb`'s
(Gaussian-smeared charges; direct sum for frames without periodicity, Ewald for frames periodic in x, y and
z, slabs refused; its module docstring states the k-space cutoff rule and the cost).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch_geometric.utils import scatter

from mpnn_ip.errors import ConfigError
from mpnn_ip.nn.coulomb import GaussianCoulomb

#: ``model.long_range`` values: None (a local model) or ``"les"``.
LONG_RANGE_KINDS = (None, "les")
#: options of :class:`LatentEwald` besides the number of features (``model.long_range_options``)
LES_OPTIONS = ("sigma", "accuracy", "real_space_cutoff", "kspace", "pme_order", "charge_mlp")


class LatentEwald(torch.nn.Module):
    """Latent charges from scalar features and their Gaussian-smeared Coulomb energy.

    Args:
        num_scalars: width F of the scalar features the charges are read from.
        sigma: smearing length of the charges (Å; LES's default 1 Å).
        accuracy, real_space_cutoff, kspace, pme_order: :class:`~mpnn_ip.nn.coulomb.GaussianCoulomb`'s.
        charge_mlp: hidden widths of the charge readout (``[]``: one linear map ``F -> 1``).
    """

    def __init__(
        self,
        num_scalars: int,
        sigma: float = 1.0,
        accuracy: float = 1e-6,
        real_space_cutoff: float = 5.0,
        kspace: str = "auto",
        pme_order: int = 8,
        charge_mlp: tuple[int, ...] | list[int] = (32,),
    ):
        super().__init__()
        widths = [int(num_scalars), *[int(w) for w in charge_mlp], 1]
        layers: list[torch.nn.Module] = []
        for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(torch.nn.Linear(width_in, width_out, bias=index < len(widths) - 2))
            if index < len(widths) - 2:
                layers.append(torch.nn.SiLU())
        self.charge_readout = torch.nn.Sequential(*layers)
        self.coulomb = GaussianCoulomb(sigma, accuracy, real_space_cutoff, kspace, pme_order)

    def charges(self, scalars: torch.Tensor, batch: torch.Tensor, total_charge: torch.Tensor) -> torch.Tensor:
        """[n_atoms, F] invariant features -> [n_atoms] latent charges (e) that sum to each frame's
        ``total_charge`` ([B] e): the readout's charges, each shifted by its frame's excess over the atoms.

        Tying the sum to the frame's charge keeps a neutral frame's dipole independent of the origin and the
        Coulomb energy of a neutral cell free of the background term."""
        raw = self.charge_readout(scalars).squeeze(-1)
        num_frames = total_charge.shape[0]
        sums = scatter(raw, batch, dim=0, dim_size=num_frames, reduce="sum")
        # a scatter, not bincount: its size must not depend on the data (torch.export)
        counts = scatter(torch.ones_like(raw), batch, dim=0, dim_size=num_frames, reduce="sum").clamp(min=1)
        return raw - ((sums - total_charge.to(raw.dtype)) / counts)[batch]

    def forward(self, scalars, pos, cell, pbc, batch, total_charge) -> tuple[torch.Tensor, torch.Tensor]:
        """``(charges [n_atoms] e, energies [n_atoms] eV)``; differentiable w.r.t. features, positions and cell.
        ``total_charge`` [B] e: what each frame's charges sum to."""
        charges = self.charges(scalars, batch, total_charge)
        return charges, self.coulomb(charges, pos, cell, pbc, batch)


def build_long_range(kind: str | None, num_scalars: int, options: Mapping | None) -> LatentEwald | None:
    """The long-range module of ``kind`` (:data:`LONG_RANGE_KINDS`) with ``options`` (:data:`LES_OPTIONS`), or None."""
    kind = None if kind is None or str(kind).lower() in ("", "none", "null", "false") else str(kind).lower()
    if kind not in LONG_RANGE_KINDS:
        raise ConfigError(f"long_range must be null (a local model) or 'les', got {kind!r}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(LES_OPTIONS))
    if unknown:
        raise ConfigError(
            f"long_range_options: unknown option(s) {', '.join(unknown)}; known: {', '.join(LES_OPTIONS)}"
        )
    if kind is None:
        return None
    return LatentEwald(num_scalars, **options)
