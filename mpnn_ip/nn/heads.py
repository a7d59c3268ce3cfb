"""The per-head parts of a model with several heads (mace-torch's multi-head models, :mod:`mpnn_ip.models.heads`).

- :class:`MultiHeadMLPReadout`: the last readout, one hidden MLP per head (mace-torch's
  ``NonLinearReadoutBlock`` with ``num_heads``: ``linear_1`` to ``H * W`` scalars, the other heads'
  hidden units masked, ``linear_2``);
- :class:`MultiHeadScaleShift`: one per-species scale and shift per head (MACE's fixed, NequIP's trainable);
- :func:`own_head`: each atom's column of a ``[n_atoms, H]`` output.

A model with one head uses :class:`~mpnn_ip.nn.MLPReadout` and :class:`~mpnn_ip.nn.PerSpeciesScaleShift`
instead, so that its parameters are those of the model without heads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3

from mpnn_ip.nn.activations import activation
from mpnn_ip.nn.scale_shift import per_species_values


def own_head(values: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """``values [n_atoms, H]``, ``head [n_atoms]`` (index) -> ``[n_atoms]``: each atom's own head's value."""
    return values.gather(1, head.unsqueeze(1)).squeeze(1)


class MultiHeadMLPReadout(torch.nn.Module):
    """Per head h: linear to ``W`` hidden scalars, nonlinearity, linear to one scalar (the atomic energy).

    The same map per head as :class:`~mpnn_ip.nn.MLPReadout` (``o3.Linear`` normalisations ``1/sqrt(C)``
    and ``1/sqrt(W)``), all heads computed at once; gradients reach a head's weights only through the
    atoms whose output is taken from that head.

    Args:
        irreps_in: node feature irreps (only their ``C`` scalars are read).
        hidden_irreps: hidden scalars of one head, ``"W x 0e"``.
        num_heads: H.
        nonlinearity: activation of the hidden scalars.
    Parameters: ``linear_in.weight [C * H * W]`` (layout ``[C, H, W]``), ``linear_out.weight [H * W]``
    (layout ``[H, W]``). Input ``[n_atoms, irreps_in.dim]`` -> ``[n_atoms, H]``.
    """

    def __init__(self, irreps_in, hidden_irreps: str, num_heads: int, nonlinearity: str = "silu"):
        super().__init__()
        hidden = o3.Irreps(hidden_irreps)
        if len(hidden) != 1 or hidden[0].ir != o3.Irrep("0e"):
            raise ValueError(
                f"MultiHeadMLPReadout: hidden irreps {hidden} must be one block of even scalars, e.g. '16x0e'"
            )
        self.num_heads, self.width = int(num_heads), hidden[0].mul
        all_hidden = o3.Irreps(f"{self.num_heads * self.width}x0e")
        self.linear_in = o3.Linear(o3.Irreps(irreps_in), all_hidden)
        self.nonlinearity = e3nn_nn.Activation(all_hidden, [activation(nonlinearity)])
        self.linear_out = _PerHeadLinear(self.num_heads, self.width)

    def forward(self, node_features: torch.Tensor) -> torch.Tensor:
        hidden = self.nonlinearity(self.linear_in(node_features))
        return self.linear_out(hidden.reshape(-1, self.num_heads, self.width))


class _PerHeadLinear(torch.nn.Module):
    """``[n, H, W] -> [n, H]``: head h's ``W`` hidden scalars times its own weights, ``/ sqrt(W)`` (o3.Linear's init)."""

    def __init__(self, num_heads: int, width: int):
        super().__init__()
        self.width = width
        self.weight = torch.nn.Parameter(torch.randn(num_heads * width))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.weight.reshape(hidden.shape[1], self.width) / math.sqrt(self.width)
        return (hidden * weight).sum(-1)


class MultiHeadScaleShift(torch.nn.Module):
    """``e_i -> scale[h_i, s_i] * e_i + shift[h_i, s_i] * gate_i``: :class:`~mpnn_ip.nn.PerSpeciesScaleShift`
    with one row per head (``scale``, ``shift`` ``[H, S]``).

    Args:
        species: the model's atomic numbers (sorted).
        scales, shifts: one value per head, each in :class:`~mpnn_ip.nn.PerSpeciesScaleShift`'s forms
            (eV: one number, one per species, or ``{Z or symbol: eV}``).
        trainable: learn scale and shift (NequIP's); else fixed buffers (MACE's).
    Input ``node_energy [n_atoms, H]``, ``species [n_atoms]``, ``head [n_atoms]``, ``shift_gate [n_atoms]``
    -> ``[n_atoms]`` eV (each atom's own head).
    """

    def __init__(
        self,
        species: Sequence[int],
        scales: Sequence[float | Sequence[float] | Mapping],
        shifts: Sequence,
        trainable: bool = False,
    ):
        super().__init__()
        dtype = torch.get_default_dtype()
        rows = [
            [per_species_values(v, list(species), f"head {k}: {what}") for k, v in enumerate(values)]
            for what, values in (("energy_scale", scales), ("energy_shift", shifts))
        ]
        scale, shift = torch.tensor(rows[0], dtype=dtype), torch.tensor(rows[1], dtype=dtype)
        if trainable:
            self.scale, self.shift = torch.nn.Parameter(scale), torch.nn.Parameter(shift)
        else:
            self.register_buffer("scale", scale)
            self.register_buffer("shift", shift)

    def forward(
        self, node_energy: torch.Tensor, species: torch.Tensor, head: torch.Tensor, shift_gate: torch.Tensor
    ) -> torch.Tensor:
        return own_head(node_energy, head) * self.scale[head, species] + self.shift[head, species] * shift_gate
