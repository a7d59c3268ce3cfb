"""NequIP: stacked equivariant convolutions with gated nonlinearities (Batzner et al. 2022).

Per layer: ``TensorProductConvolution`` (linear, node features ⊗ edge spherical harmonics
weighted by a radial MLP of the Bessel embedding, sum over neighbours / sqrt(avg_num_neighbors),
linear) + species-dependent self-connection, then the gate, then (optionally) a residual
update. Atomic energies are a linear readout of the last layer's scalars, scaled and shifted
per species.

Two choices follow NequIP 0.19 (the version the speed benchmark compares with):
the first layer has no self-connection and no residual, so an isolated atom (no edges)
gets exactly the E0 of its species (the per-species shift is gated off for atoms
without neighbours, :func:`~mpnn_ip.nn.neighbour_gate`); and the last layer produces only the
``num_features x 0e`` scalars the readout reads, so no work is spent on l > 0 outputs
that nothing uses.

The options ``num_features`` per l, ``type_embed_num_features``, ``self_connection``,
``readout_mlp``, per-species ``avg_num_neighbors`` and ``zbl="nequip"`` make it compute exactly
what NequIP 0.19's ``NequIPGNNModel`` computes; :mod:`mpnn_ip.interop.nequip` imports such models
(NequIP's per-type energy shifts become ``e0s``, added to every atom as NequIP adds them).

Heads (``heads=["pbe", "r2scan"]``, :mod:`mpnn_ip.models.heads`): the readout's last linear map has one
output column per head, and scale, shift and E0 are per head; everything else (the readout's hidden
layers included) is shared. Each atom's energy is its frame's head's column. With one head the parameters
are those of a NequIP without heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from e3nn import o3

from mpnn_ip.models.base import Potential
from mpnn_ip.models.energy_head import EnergyHead
from mpnn_ip.models.long_range import LongRangeTerms
from mpnn_ip.nn import (
    EquivariantGate,
    LinearReadout,
    RadialEmbedding,
    SpeciesEmbedding,
    SpeciesSelfInteraction,
    TensorProductConvolution,
    check_same_irreps,
    convolution_output_irreps,
    embed_edges,
    tp_path_exists,
)
from mpnn_ip.nn.constants import DtypeConstants
from mpnn_ip.nn.kernels import resolve_kernels
from mpnn_ip.nn.nequip import ScalarMLP
from mpnn_ip.nn.scale_shift import per_species_values


def features_per_l(num_features: int | Sequence[int], l_max: int) -> list[int]:
    """``num_features`` as one multiplicity per l (0..l_max): one number for all, or a list of l_max + 1."""
    if isinstance(num_features, int):
        return [num_features] * (l_max + 1)
    features = [int(f) for f in num_features]
    if len(features) != l_max + 1:
        raise ValueError(
            f"num_features must be one number or one per l = 0..{l_max} ({l_max + 1} numbers), got {features}"
        )
    return features


def hidden_irreps(num_features: int | Sequence[int], l_max: int, parity: bool) -> o3.Irreps:
    """NequIP's ``feature_irreps_hidden``: ``F_l x l`` for every l <= l_max, both parities when
    ``parity`` (``F0x0e+F0x0o+F1x1e+F1x1o+...``), else only the spherical-harmonic parity (-1)^l.
    ``num_features``: F for every l, or one F_l per l."""
    features = features_per_l(num_features, l_max)
    irreps = []
    for l in range(l_max + 1):
        parities = (1, -1) if parity else ((-1) ** l,)
        irreps += [(features[l], (l, p)) for p in parities]
    return o3.Irreps(irreps)


class NequIPLayer(torch.nn.Module):
    """Convolution + optional species self-connection -> gate -> optional residual.

    The output irreps are the part of ``irreps_target`` reachable from ``irreps_in`` through the
    edge spherical harmonics; the convolution produces the gate's input (scalars, one gate
    scalar per l > 0 channel, the l > 0 channels).
    Forward: node features ``[n_atoms, irreps_in.dim]``, species ``[n_atoms]``, edge_sh
    ``[n_edges, irreps_sh.dim]``, radial embedding ``[n_edges, num_basis]``, edge_index
    ``[2, n_edges]`` -> ``[n_atoms, irreps_out.dim]``.
    """

    def __init__(
        self,
        irreps_in,
        irreps_sh,
        irreps_target,
        num_species: int,
        num_basis: int,
        radial_mlp: Sequence[int],
        avg_num_neighbors: float | Sequence[float],
        self_connection: bool,
        resnet: bool,
        nonlinearity_scalars: Mapping[str, str],
        nonlinearity_gates: Mapping[str, str],
    ):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        reachable = convolution_output_irreps(self.irreps_in, irreps_sh, irreps_target)
        irreps_scalars = o3.Irreps([(mul, ir) for mul, ir in reachable if ir.l == 0])
        irreps_gated = o3.Irreps([(mul, ir) for mul, ir in reachable if ir.l > 0])
        gate_parity = "0e" if tp_path_exists(self.irreps_in, irreps_sh, "0e") else "0o"
        self.gate = EquivariantGate(irreps_scalars, irreps_gated, gate_parity, nonlinearity_scalars, nonlinearity_gates)
        per_species = not isinstance(avg_num_neighbors, (int, float))
        # per species: each neighbour's features are divided by sqrt(avg_num_neighbors of its species)
        # before the (linear) convolution, as NequIP's per-type normalisation does
        self.neighbor_norm = (
            DtypeConstants({"norm": torch.tensor([float(n) for n in avg_num_neighbors], dtype=torch.float64).rsqrt()})
            if per_species
            else None
        )
        self.convolution = TensorProductConvolution(
            self.irreps_in,
            irreps_sh,
            self.gate.irreps_in,
            num_basis,
            radial_mlp,
            1.0 if per_species else avg_num_neighbors,
            neighbor_normalization="sqrt",
        )
        check_same_irreps(self.convolution.irreps_out, self.gate.irreps_in, "convolution", "gate")
        self.self_connection = (
            SpeciesSelfInteraction(self.irreps_in, num_species, self.gate.irreps_in) if self_connection else None
        )
        self.irreps_out = self.gate.irreps_out
        self.resnet = bool(resnet) and self.irreps_out == self.irreps_in

    def forward(self, node_features, species, edge_sh, radial_embedding, edge_index):
        neighbours = node_features
        if self.neighbor_norm is not None:
            neighbours = node_features * self.neighbor_norm.get(node_features.dtype, node_features.device)["norm"][
                species
            ].unsqueeze(-1)
        update = self.convolution(neighbours, edge_sh, radial_embedding, edge_index)
        if self.self_connection is not None:
            update = update + self.self_connection(node_features, species)
        update = self.gate(update)
        return node_features + update if self.resnet else update


class NequIP(LongRangeTerms, EnergyHead, Potential):
    """NequIP interatomic potential.

    Args:
        species: chemical symbols or atomic numbers the model knows.
        r_max: cutoff radius (Å).
        num_layers: number of interaction layers.
        l_max: highest rotation order of features and edge spherical harmonics.
        parity: features of both parities (``Fx0e+Fx0o+Fx1e+Fx1o+...``); False keeps only
            the spherical-harmonic parity (faster, often as accurate).
        num_features: multiplicity F of every irrep of the hidden features, or one F_l per l = 0..l_max.
        type_embed_num_features: width of the species embedding (default: the l = 0 multiplicity).
        num_bessel: number of Bessel functions of the radial embedding.
        trainable_bessel: learn the Bessel frequencies.
        cutoff_p: exponent p of the polynomial cutoff envelope.
        radial_mlp: hidden widths of the radial MLP of every layer.
        avg_num_neighbors: mean neighbour count of the training data; messages are divided by its sqrt.
            Per species (one number per species, or ``{Z or symbol: count}``): each neighbour's message is
            divided by the sqrt of its own species' count (NequIP 0.19's per-type normalisation).
        e0s: isolated-atom energies (eV, ``{Z or symbol: eV}``), added by the base class.
        energy_scale, energy_shift, zbl: the shared energy head's (eV; :meth:`~mpnn_ip.models.energy_head.EnergyHead.build_energy_head`), trained.
        self_connection: species-dependent self-connection in every layer but the first.
        resnet: residual update in layers whose input and output irreps match (not the first).
        readout_mlp: None: two linear maps ``F -> F/2 -> 1``; else the hidden widths of NequIP 0.19's
            scalar MLP readout (:class:`~mpnn_ip.nn.nequip.ScalarMLP`; ``[]``: one linear map ``F -> 1``).
            The last map has one output per head.
        readout_nonlinearity: activation of ``readout_mlp`` (None: linear).
        nonlinearity_scalars: activation of even / odd scalars, ``{"e": "silu", "o": "tanh"}``.
        nonlinearity_gates: activation of the even / odd gates, ``{"e": "silu", "o": "tanh"}``.
        heads: names of the heads (see above); None = one head, ``"Default"``. With several heads,
            ``e0s``, ``energy_scale`` and ``energy_shift`` may be given per head as ``{head: value}``.
        kernels: ``"e3nn"`` (default), ``"auto"`` or ``"oeq"``: the kernels of the convolutions
            (:mod:`mpnn_ip.nn.kernels`; ``"oeq"`` is refused where OpenEquivariance cannot run).
        long_range: None (a local model) or ``"les"``: latent charges from the last scalar features and their
            Coulomb energy beyond the cutoff (:mod:`mpnn_ip.models.long_range`); outputs ``charges``, ``dipole``.
        long_range_options: options of :class:`~mpnn_ip.nn.les.LatentEwald` (``sigma`` Å, ``accuracy``,
            ``real_space_cutoff`` Å, ``kspace``, ``pme_order``, ``charge_mlp``).
        charge_spin_embedding: condition the atoms' features on the frame's total charge and multiplicity
            (inputs ``charge``, ``spin``; MACE-OMOL's embedding).
        dispersion: None or ``"d3bj:<functional>"``: DFT-D3(BJ) added inside the model on its own pairs.
    """

    def __init__(
        self,
        species: Sequence[int | str],
        r_max: float = 5.0,
        num_layers: int = 4,
        l_max: int = 2,
        parity: bool = True,
        num_features: int | Sequence[int] = 32,
        type_embed_num_features: int | None = None,
        num_bessel: int = 8,
        trainable_bessel: bool = False,
        cutoff_p: float = 6,
        radial_mlp: Sequence[int] = (64, 64),
        avg_num_neighbors: float | Sequence[float] | Mapping = 1.0,
        e0s: Mapping | None = None,
        energy_scale: float = 1.0,
        energy_shift: float | Sequence[float] | Mapping = 0.0,
        zbl: bool | str = False,
        resnet: bool = False,
        nonlinearity_scalars: Mapping[str, str] | None = None,
        nonlinearity_gates: Mapping[str, str] | None = None,
        self_connection: bool = True,
        readout_mlp: Sequence[int] | None = None,
        readout_nonlinearity: str | None = "silu",
        heads: Sequence[str] | None = None,
        kernels: str = "e3nn",
        long_range: str | None = None,
        long_range_options: Mapping | None = None,
        charge_spin_embedding: bool = False,
        dispersion: str | None = None,
    ):
        super().__init__(species, r_max, e0s, heads)
        if num_layers < 1:
            raise ValueError(f"NequIP needs at least one layer, got num_layers={num_layers}")
        #: the kernels the convolutions run on (:mod:`mpnn_ip.nn.kernels`)
        self.kernels, num_heads = resolve_kernels(kernels, "NequIP"), self.num_heads
        nonlinearity_scalars = dict(nonlinearity_scalars or {"e": "silu", "o": "tanh"})
        nonlinearity_gates = dict(nonlinearity_gates or {"e": "silu", "o": "tanh"})
        self.irreps_sh = o3.Irreps.spherical_harmonics(l_max)
        self.spherical_harmonics = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.radial_embedding = RadialEmbedding(r_max, num_bessel, cutoff_p, trainable_bessel)
        scalar_features = features_per_l(num_features, l_max)[0]
        self.species_embedding = SpeciesEmbedding(self.num_species, type_embed_num_features or scalar_features)

        if not isinstance(avg_num_neighbors, (int, float)):
            avg_num_neighbors = per_species_values(avg_num_neighbors, self.species, "NequIP: avg_num_neighbors")
            if min(avg_num_neighbors) <= 0:
                raise ValueError(f"avg_num_neighbors must be positive for every species, got {avg_num_neighbors}")
        hidden = hidden_irreps(num_features, l_max, parity)
        scalars_out = o3.Irreps(f"{scalar_features}x0e")
        irreps = self.species_embedding.irreps_out
        self.layers = torch.nn.ModuleList()
        for index in range(num_layers):
            layer = NequIPLayer(
                irreps,
                self.irreps_sh,
                scalars_out if index == num_layers - 1 else hidden,
                self.num_species,
                num_bessel,
                radial_mlp,
                avg_num_neighbors,
                self_connection=self_connection and index > 0,
                resnet=resnet and index > 0,
                nonlinearity_scalars=nonlinearity_scalars,
                nonlinearity_gates=nonlinearity_gates,
            )
            irreps = layer.irreps_out
            self.layers.append(layer)
        if readout_mlp is None:
            half = f"{max(scalar_features // 2, 1)}x0e"
            self.readout = torch.nn.Sequential(LinearReadout(irreps, half), LinearReadout(half, f"{num_heads}x0e"))
        else:
            self.readout = ScalarMLP([scalar_features, *readout_mlp, num_heads], readout_nonlinearity)
        self.build_energy_head(energy_scale, energy_shift, trainable=True, zbl=zbl, cutoff_p=cutoff_p)
        self.build_long_range(
            scalar_features,
            long_range,
            long_range_options,
            charge_spin_embedding,
            dispersion,
            num_initial_scalars=self.species_embedding.irreps_out.dim,
        )

    def per_head_tensors(self) -> dict[str, tuple[tuple[int, ...], int]]:
        """E0, the scale and shift (:class:`EnergyHead`) and the head columns of the readout's last linear map."""
        heads, tensors = self.num_heads, super().per_head_tensors()
        if isinstance(self.readout, ScalarMLP):
            last = len(self.readout.weights) - 1
            tensors[f"readout.weights.{last}"] = ((self.readout.dims[-2], heads), 1)
        else:
            tensors["readout.1.linear.weight"] = ((self.readout[1].irreps_in.dim, heads), 1)
        return tensors

    def node_energies(self, species, edge_index, edge_vectors, batch, num_graphs, head=None):
        """Per-atom energies (eV) without E0 (see :meth:`Potential.node_energies`); ``head [N]``: each atom's
        head index (None: the default head)."""
        scalars, lengths = self.scalar_features(species, edge_index, edge_vectors)
        return self.head_energies(self.readout(scalars), species, edge_index, lengths, head)  # [N, heads] -> [N]

    def scalar_features(self, species, edge_index, edge_vectors, conditioning=None):
        """``(scalars [N, F], lengths [E] Å)``: the last layer's scalar features; ``conditioning`` [N, F0] is
        added to the species embedding (the frame's charge and spin)."""
        lengths, edge_sh, radial = embed_edges(self.spherical_harmonics, self.radial_embedding, edge_vectors)
        node_features = self.species_embedding(species)
        if conditioning is not None:
            node_features = node_features + conditioning
        for layer in self.layers:
            node_features = layer(node_features, species, edge_sh, radial, edge_index)
        return node_features, lengths

    def atomic_outputs(self, graph):
        """:meth:`Potential.atomic_outputs`, plus the frame's charge and spin and LES when the model has them."""
        if not self.reads_frame_inputs:
            return super().atomic_outputs(graph)
        species, edge_index = graph["species"], graph["edge_index"]
        conditioning = self.conditioning(graph, graph["edge_vectors"].dtype)
        scalars, lengths = self.scalar_features(species, edge_index, graph["edge_vectors"], conditioning)
        energies = self.head_energies(self.readout(scalars), species, edge_index, lengths, graph["head"])
        return self.add_long_range({"node_energy": energies}, scalars, graph)
