"""The ending that every network's energy shares: per-species scale and shift, the shift gated by neighbours,
plus an optional ZBL repulsion.

``e_i (network units) -> scale[h_i, s_i] * e_i + shift[h_i, s_i] * gate_i + ZBL_i`` eV, with ``gate_i`` from
:func:`~mpnn_ip.nn.neighbour_gate` (0 for an atom without neighbours, so a lone atom keeps exactly its E0;
``shift_every_atom=True`` gives every atom its shift, mace-torch's convention) and one row of scale and shift
per head (:mod:`mpnn_ip.models.heads`). A model with one head holds
:class:`~mpnn_ip.nn.PerSpeciesScaleShift`, one with several :class:`~mpnn_ip.nn.heads.MultiHeadScaleShift`;
either is the attribute ``scale_shift`` and the repulsion ``zbl``, so the state-dict keys
(``scale_shift.scale``, ``scale_shift.shift``, ``zbl.*``) are those of every checkpoint written so far.

A shift that is not trained (MACE's, a fixed buffer as in mace-torch) is refitted during training by
least squares of the energy residuals (:class:`~mpnn_ip.train.shift_refit.ShiftRefit`, through
:meth:`EnergyHead.add_to_shift`): a force-weighted loss would otherwise leave a constant energy offset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mpnn_ip.models.heads import per_head_values
from mpnn_ip.nn import PerSpeciesScaleShift, ZBLRepulsion, neighbour_gate
from mpnn_ip.nn.heads import MultiHeadScaleShift
from mpnn_ip.nn.nequip import NequIPZBL

#: ``zbl=`` values: False (none), True (:class:`~mpnn_ip.nn.ZBLRepulsion`), "nequip" (NequIP 0.19's variant).
ZBL_KINDS = (False, True, "nequip")


def zbl_repulsion(kind: bool | str, species: Sequence[int], r_max: float, cutoff_p: float) -> torch.nn.Module | None:
    """The ZBL module of ``kind`` (see :data:`ZBL_KINDS`) for the model's ``species`` (atomic numbers), or None."""
    if kind not in ZBL_KINDS:
        raise ValueError(f"zbl must be False, True or 'nequip', got {kind!r}")
    if kind == "nequip":
        return NequIPZBL(species, r_max, cutoff_p)
    return ZBLRepulsion(species, p=cutoff_p, r_max=r_max) if kind else None


class EnergyHead:
    """Mixin of :class:`~mpnn_ip.models.base.Potential` subclasses: builds and applies the shared energy ending.

    A subclass calls :meth:`build_energy_head` in its constructor (after ``Potential.__init__``) and ends its
    ``node_energies`` with :meth:`head_energies`.
    """

    scale_shift: torch.nn.Module
    zbl: torch.nn.Module | None
    shift_every_atom: bool

    def build_energy_head(
        self,
        energy_scale: float | Sequence | Mapping = 1.0,
        energy_shift: float | Sequence | Mapping = 0.0,
        *,
        trainable: bool = True,
        zbl: bool | str = False,
        cutoff_p: float = 6,
        shift_every_atom: bool = False,
    ) -> None:
        """Set ``scale_shift`` (one row per head), ``zbl`` and ``shift_every_atom``.

        Args:
            energy_scale, energy_shift: eV; one number, one per species, ``{Z or symbol: eV}``, or (several
                heads) ``{head: value}`` naming every head.
            trainable: learn scale and shift; else fixed buffers (refitted by least squares in training).
            zbl: one of :data:`ZBL_KINDS`; cutoff_p: the polynomial envelope's p of the repulsion.
            shift_every_atom: give every atom its shift (no neighbour gate).
        """
        if len(self.heads) == 1:
            self.scale_shift = PerSpeciesScaleShift(self.species, energy_scale, energy_shift, trainable=trainable)
        else:
            self.scale_shift = MultiHeadScaleShift(
                self.species,
                per_head_values(energy_scale, self.heads),
                per_head_values(energy_shift, self.heads),
                trainable=trainable,
            )
        self.zbl = zbl_repulsion(zbl, self.species, self.r_max, cutoff_p)
        self.shift_every_atom = bool(shift_every_atom)

    def head_energies(
        self,
        node_energy: torch.Tensor,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        lengths: torch.Tensor,
        head: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Atomic energies in eV (without E0).

        Args:
            node_energy: [N] or [N, H] network outputs (one column per head).
            species: [N] species indices; edge_index: [2, n_edges]; lengths: [n_edges] Å.
            head: [N] each atom's head index (None: the default head).
        Returns: [N] eV.
        """
        if self.shift_every_atom:
            gate = torch.ones_like(species, dtype=node_energy.dtype)
        else:
            gate = neighbour_gate(lengths, edge_index[0], species.shape[0], self.r_max)
        if len(self.heads) == 1:
            energy = self.scale_shift(node_energy.reshape(species.shape[0]), species, gate)
        else:
            if head is None:
                head = torch.zeros_like(species)
            energy = self.scale_shift(node_energy, species, head, gate)
        if self.zbl is not None:
            energy = energy + self.zbl(species, edge_index, lengths)
        return energy

    def per_head_tensors(self) -> dict[str, tuple[tuple[int, ...], int]]:
        """The model's per-head tensors (``Potential.per_head_tensors``) and the scale and shift, ``[H, S]``."""
        tensors = super().per_head_tensors()
        tensors["scale_shift.scale"] = tensors["scale_shift.shift"] = ((len(self.heads), len(self.species)), 0)
        return tensors

    @property
    def shift_is_trained(self) -> bool:
        """Whether the optimizer trains the shift (else it is a buffer that training refits)."""
        return isinstance(self.scale_shift.shift, torch.nn.Parameter)

    @torch.no_grad()
    def add_to_shift(self, delta: torch.Tensor) -> None:
        """Add ``delta`` (eV; [S], or [H, S] for several heads) to every atom's shift."""
        shift = self.scale_shift.shift
        shift.add_(delta.to(device=shift.device, dtype=shift.dtype).reshape(shift.shape))
