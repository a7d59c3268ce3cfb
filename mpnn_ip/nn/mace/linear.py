"""Equivariant linear maps of node features stored channels-last (``[2l+1, mul]`` per irrep).

The MACE blocks (``interaction``, ``product_basis``, ``symmetric_contraction``) keep node
features as ``[n_atoms, D, C]``: per irrep a ``[2l+1, mul]`` block, so that a channel-mixing
linear map is one plain matmul on the last axis and the symmetric contraction sees each
channel's ``D``-vector without a transpose. (e3nn stores ``[mul, 2l+1]``; the scalar block
``[1, mul]`` is the same in both, so scalar readouts read either.)
"""

from __future__ import annotations

import math

import torch
from e3nn import o3

from mpnn_ip.nn.wiring import check_linear_paths


def channels_last_blocks(irreps) -> list[tuple[o3.Irrep, int, int, int]]:
    """``(ir, mul, start, stop)`` of every irrep block of a flat channels-last feature vector."""
    blocks, start = [], 0
    for mul, ir in o3.Irreps(irreps):
        blocks.append((ir, mul, start, start + mul * ir.dim))
        start += mul * ir.dim
    return blocks


def _check_unique(irreps: o3.Irreps, who: str) -> None:
    if len(irreps) != len({ir for _, ir in irreps}):
        raise ValueError(f"{who}: irreps {irreps} list an irrep twice; give them simplified (e.g. '128x0e+64x1o')")


class ChannelsLastLinear(torch.nn.Module):
    """``o3.Linear``'s map and initialisation for channels-last features.

    Each output irrep ``mul_out x L`` is ``x_L @ W_L / sqrt(mul_in)`` with ``x_L [n, 2L+1, mul_in]``
    the input block of the same irrep and ``W_L ~ N(0, 1)`` of shape ``[mul_in, mul_out]`` (no bias).

    Args:
        irreps_in: input irreps, each irrep at most once (simplified).
        irreps_out: output irreps; each must be present in ``irreps_in``.
    Forward: ``[n, irreps_in.dim]`` -> ``[n, irreps_out.dim]`` (channels-last layout).
    """

    def __init__(self, irreps_in, irreps_out):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        _check_unique(self.irreps_in, type(self).__name__)
        check_linear_paths(self.irreps_in, self.irreps_out, type(self).__name__)
        blocks_in = {ir: (mul, start, stop) for ir, mul, start, stop in channels_last_blocks(self.irreps_in)}
        self._paths = []  # (input start, stop, 2l+1, mul_in, mul_out, normalisation)
        self.weights = torch.nn.ParameterList()
        for mul_out, ir in self.irreps_out:
            mul_in, start, stop = blocks_in[ir]
            self._paths.append((start, stop, ir.dim, mul_in, mul_out, 1.0 / math.sqrt(mul_in)))
            self.weights.append(torch.nn.Parameter(torch.randn(mul_in, mul_out)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n = features.shape[0]
        out = [
            (features[:, start:stop].reshape(n, dim, mul_in) @ (weight * norm)).reshape(n, dim * mul_out)
            for (start, stop, dim, mul_in, mul_out, norm), weight in zip(self._paths, self.weights)
        ]
        return out[0] if len(out) == 1 else torch.cat(out, dim=-1)

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}"


class SpeciesChannelsLastLinear(torch.nn.Module):
    """Species-dependent linear map ``x_L -> x_L @ W_L[s] / sqrt(mul_in * S)`` (MACE's skip ``skip_tp``).

    The same function and normalisation as ``o3.FullyConnectedTensorProduct(irreps_in, "Sx0e",
    irreps_out)`` with the species one-hot as second input; output irreps absent from
    ``irreps_in`` are zero, as there. Computed as one matmul to all S species' outputs, then each
    atom keeps its own (S times the flops of one linear map, no loop, no per-atom weights).

    Args:
        irreps_in: input irreps, each at most once; irreps_out: output irreps; num_species: S.
    Forward: ``features [n, irreps_in.dim]``, ``species [n]`` -> ``[n, irreps_out.dim]`` (channels-last).
    """

    def __init__(self, irreps_in, irreps_out, num_species: int):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.num_species = int(num_species)
        _check_unique(self.irreps_in, type(self).__name__)
        if not any(ir in self.irreps_in for _, ir in self.irreps_out):
            raise ValueError(
                f"{type(self).__name__}: no irrep of output irreps {self.irreps_out} is in input irreps {self.irreps_in}"
            )
        blocks_in = {ir: (mul, start, stop) for ir, mul, start, stop in channels_last_blocks(self.irreps_in)}
        self._paths = []  # (input start, stop or None when absent, 2l+1, mul_in, mul_out, normalisation)
        self.weights = torch.nn.ParameterList()
        for mul_out, ir in self.irreps_out:
            if ir not in blocks_in:
                self._paths.append((0, None, ir.dim, 0, mul_out, 0.0))
                continue
            mul_in, start, stop = blocks_in[ir]
            self._paths.append((start, stop, ir.dim, mul_in, mul_out, 1.0 / math.sqrt(mul_in * self.num_species)))
            self.weights.append(torch.nn.Parameter(torch.randn(mul_in, self.num_species * mul_out)))

    def forward(self, features: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        n = features.shape[0]
        atoms = torch.arange(n, device=features.device)
        out, weights = [], iter(self.weights)
        for start, stop, dim, mul_in, mul_out, norm in self._paths:
            if stop is None:
                out.append(features.new_zeros(n, dim * mul_out))
                continue
            all_species = (features[:, start:stop].reshape(n, dim, mul_in) @ (next(weights) * norm)).reshape(
                n, dim, self.num_species, mul_out
            )
            out.append(all_species[atoms, :, species].reshape(n, dim * mul_out))
        return out[0] if len(out) == 1 else torch.cat(out, dim=-1)

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out} per species (S={self.num_species})"
