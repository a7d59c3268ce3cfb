"""MACE: higher body order through symmetric contractions of the atomic basis (Batatia et al. 2022).

The architecture of mace-torch's ``ScaleShiftMACE`` with ``RealAgnosticResidualInteractionBlock``:
species one-hot -> linear node embedding (``C x 0e``); per interaction
(:class:`~mpnn_ip.nn.mace.interaction.MACEInteraction`) the atomic basis A (``C x (0e+1o+...)``,
up to ``max_ell``) and a species-dependent skip; the product basis
(:class:`~mpnn_ip.nn.mace.product_basis.ProductBasis`: symmetric contraction up to ``correlation``,
linear, + skip) gives the next hidden features; a readout after every interaction (linear for
all but the last, a small MLP for the last, whose hidden features are only the scalars).
Atomic energy = sum of the readouts, scaled and shifted per species (:mod:`~mpnn_ip.models.energy_head`:
fixed buffers, as MACE's ``ScaleShiftBlock``, but the shift is refitted by least squares of the energy
residuals during training; the shift only for atoms with neighbours, :func:`~mpnn_ip.nn.neighbour_gate`);
E0 is added by the base class.

Differences from mace-torch, on purpose:
- the symmetric contraction uses a basis of the *symmetric* couplings only (8 instead of 23
  scalar paths at ν = 3, max_ell = 3; see :mod:`mpnn_ip.nn.mace.symmetric_contraction`), which spans
  the same functions of A with fewer weights (with the first point below: 185,168 parameters vs mace-s's 219,984 on 3BPA);
- features are stored channels-last and the edge tensor product is a batched matmul
  (:mod:`mpnn_ip.nn.mace.linear`, :mod:`mpnn_ip.nn.mace.interaction`), for CPU speed;
- by default the first interaction has no skip connection and no species-dependent map: a lone
  atom then has exactly the energy E0 (its shift is gated off), which the benchmark's mace-s
  (residual first layer) does not;
- the ZBL repulsion (``zbl=True``) is added after the scale and shift (mace-torch scales it).

Options that compute mace-torch's function exactly (used by ``mpnn-import``,
:mod:`mpnn_ip.interop.mace`): ``first_interaction_skip="residual"`` or ``"species_linear"``,
``shift_every_atom=True``, ``radial_type="gaussian"``, ``distance_transform="agnesi"``/``"soft"``,
``pair_repulsion=True`` (mace's own ZBL, scaled with the atomic energies), ``mlp_readout_irreps=None``
(linear last readout of single-interaction models). The symmetric-contraction weights of a mace
model are projected onto our symmetric basis without loss.

Heads (``heads=["pbe", "r2scan"]``, mace-torch's multi-head models, :mod:`mpnn_ip.models.heads`): every
readout has one output column per head, the last readout's MLP one hidden layer per head
(:mod:`mpnn_ip.nn.heads`), and scale, shift and E0 are per head; everything else is shared. Each
atom's energy is its frame's head's column. With one head the parameters are those of a MACE without heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from e3nn import o3

from mpnn_ip.models.base import Potential
from mpnn_ip.models.energy_head import EnergyHead
from mpnn_ip.models.long_range import LongRangeTerms
from mpnn_ip.nn import (
    LinearReadout,
    MACEInteraction,
    MLPReadout,
    ProductBasis,
    RadialEmbedding,
    SpeciesEmbedding,
    embed_edges,
)
from mpnn_ip.nn.heads import MultiHeadMLPReadout
from mpnn_ip.nn.kernels import resolve_kernels
from mpnn_ip.nn.mace.radial import MACERadialEmbedding
from mpnn_ip.nn.mace.zbl import MACEZBLRepulsion

#: What the first interaction does with the species (see :class:`MACE`).
FIRST_INTERACTION_SKIPS = ("none", "residual", "species_linear")

#: Presets for ``MACE(**PRESETS[name], species=..., ...)``; "small" is the size of the speed benchmark.
PRESETS = {
    "small": dict(num_interactions=2, hidden_irreps="64x0e+64x1o", max_ell=3, correlation=3),
    "medium": dict(num_interactions=2, hidden_irreps="128x0e+128x1o", max_ell=3, correlation=3),
    "large": dict(num_interactions=2, hidden_irreps="128x0e+128x1o+128x2e", max_ell=3, correlation=3),
}


def _hidden_irreps(hidden_irreps: str) -> o3.Irreps:
    irreps = o3.Irreps(hidden_irreps)
    muls = {mul for mul, _ in irreps}
    if len(muls) != 1 or len(irreps) != len({ir for _, ir in irreps}) or irreps[0].ir != o3.Irrep("0e"):
        raise ValueError(
            f"MACE: hidden_irreps {hidden_irreps!r} must start with scalars and list each irrep once with one "
            "common multiplicity, e.g. '64x0e+64x1o'"
        )
    return irreps


def _correlations(correlation, num_interactions: int) -> list[int]:
    values = [int(correlation)] * num_interactions if isinstance(correlation, int) else [int(c) for c in correlation]
    if len(values) != num_interactions or any(not 1 <= c <= 3 for c in values):
        raise ValueError(
            f"MACE: correlation must be 1..3 or one such value per interaction ({num_interactions}), got {correlation!r}"
        )
    return values


class MACE(LongRangeTerms, EnergyHead, Potential):
    """MACE interatomic potential.

    Args:
        species: chemical symbols or atomic numbers the model knows.
        r_max: cutoff radius (Å).
        num_interactions: number of interaction + product-basis layers.
        hidden_irreps: hidden node features, ``C x 0e + C x 1o + ...`` (one multiplicity C).
        max_ell: highest order of the edge spherical harmonics.
        correlation: body order ν of the product basis (1 to 3), one int or one per interaction.
        num_bessel: number of Bessel functions of the radial embedding.
        trainable_bessel: learn the Bessel frequencies.
        cutoff_p: exponent p of the polynomial cutoff envelope.
        radial_mlp: hidden widths of every radial MLP.
        interaction_irreps: irreps of the atomic basis A; default ``C x (0e+1o+...+max_ell)``,
            MACE's spherical-harmonic irreps times the channels.
        avg_num_neighbors: mean neighbour count of the training data; divides the neighbour sum.
        e0s: isolated-atom energies (eV, ``{Z or symbol: eV}``), added by the base class.
        energy_scale, energy_shift, zbl: the shared energy head's (eV; :meth:`~mpnn_ip.models.energy_head.EnergyHead.build_energy_head`), fixed (the shift refitted in training).
        mlp_readout_irreps: hidden scalars of the last readout's MLP; None: the last readout is linear
            too (mace-torch's single-interaction models).
        first_interaction_skip: what the first layer does with the species: ``"none"`` (no skip, so a
            lone atom has exactly E0), ``"residual"`` (a species-dependent linear skip of the
            embedding into the first product, mace-torch's ``RealAgnosticResidualInteractionBlock``)
            or ``"species_linear"`` (a species-dependent linear map of the first atomic basis,
            mace-torch's ``RealAgnosticInteractionBlock``).
        shift_every_atom: add ``energy_shift`` to every atom, also to atoms without neighbours
            (mace-torch's ``ScaleShiftBlock``); default: only to atoms with neighbours.
        radial_type: ``"bessel"`` or ``"gaussian"`` radial basis (:class:`~mpnn_ip.nn.mace.radial.MACERadialEmbedding`).
        distance_transform: None, ``"agnesi"`` or ``"soft"``: transform of the length the radial basis sees.
        pair_repulsion: add mace-torch's ZBL repulsion (:class:`~mpnn_ip.nn.mace.zbl.MACEZBLRepulsion`)
            to the atomic energies before the scale and shift, as mace-torch does.
        heads, kernels, long_range, long_range_options, charge_spin_embedding, dispersion: as in
            :class:`~mpnn_ip.models.nequip.NequIP` (LES reads the last product's C scalars).
    """

    def __init__(
        self,
        species: Sequence[int | str],
        r_max: float = 5.0,
        num_interactions: int = 2,
        hidden_irreps: str = "64x0e+64x1o",
        max_ell: int = 3,
        correlation: int | Sequence[int] = 3,
        num_bessel: int = 8,
        trainable_bessel: bool = False,
        cutoff_p: float = 5,
        radial_mlp: Sequence[int] = (64, 64, 64),
        interaction_irreps: str | None = None,
        avg_num_neighbors: float = 1.0,
        e0s: Mapping | None = None,
        energy_scale: float | Sequence[float] = 1.0,
        energy_shift: float | Sequence[float] | Mapping = 0.0,
        zbl: bool | str = False,
        mlp_readout_irreps: str | None = "16x0e",
        first_interaction_skip: str = "none",
        shift_every_atom: bool = False,
        radial_type: str = "bessel",
        distance_transform: str | None = None,
        pair_repulsion: bool = False,
        heads: Sequence[str] | None = None,
        kernels: str = "e3nn",
        long_range: str | None = None,
        long_range_options: Mapping | None = None,
        charge_spin_embedding: bool = False,
        dispersion: str | None = None,
    ):
        super().__init__(species, r_max, e0s, heads)
        #: the kernels the convolutions run on (:mod:`mpnn_ip.nn.kernels`)
        self.kernels = resolve_kernels(kernels, "MACE")
        num_heads = self.num_heads
        if num_interactions < 1:
            raise ValueError(f"MACE needs at least one interaction, got num_interactions={num_interactions}")
        if first_interaction_skip not in FIRST_INTERACTION_SKIPS:
            raise ValueError(
                f"MACE: first_interaction_skip must be one of {FIRST_INTERACTION_SKIPS}, got {first_interaction_skip!r}"
            )
        hidden = _hidden_irreps(hidden_irreps)
        correlations = _correlations(correlation, num_interactions)
        channels = hidden[0].mul
        self.irreps_sh = o3.Irreps.spherical_harmonics(max_ell)
        irreps_basis = (
            o3.Irreps(interaction_irreps)
            if interaction_irreps is not None
            else o3.Irreps([(channels, ir) for _, ir in self.irreps_sh])
        )
        self.num_channels = channels
        self.spherical_harmonics = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        if radial_type == "bessel" and distance_transform is None:
            self.radial_embedding = RadialEmbedding(r_max, num_bessel, cutoff_p, trainable_bessel)
        else:
            self.radial_embedding = MACERadialEmbedding(
                r_max, num_bessel, cutoff_p, self.species, radial_type, distance_transform
            )
        self.species_embedding = SpeciesEmbedding(self.num_species, channels)

        self.interactions = torch.nn.ModuleList()
        self.products = torch.nn.ModuleList()
        self.readouts = torch.nn.ModuleList()
        irreps_node = self.species_embedding.irreps_out
        for index in range(num_interactions):
            last = index == num_interactions - 1
            irreps_out = o3.Irreps(f"{channels}x0e") if last else hidden
            self.interactions.append(
                MACEInteraction(
                    irreps_node,
                    self.irreps_sh,
                    irreps_basis,
                    irreps_out if index > 0 or first_interaction_skip == "residual" else None,
                    self.num_species,
                    num_bessel,
                    radial_mlp,
                    avg_num_neighbors,
                    species_linear_basis=index == 0 and first_interaction_skip == "species_linear",
                )
            )
            self.products.append(ProductBasis(irreps_basis, irreps_out, correlations[index], self.num_species))
            scalars = f"{channels}x0e"
            mlp = last and mlp_readout_irreps is not None
            if not mlp:
                self.readouts.append(LinearReadout(scalars, f"{num_heads}x0e"))
            elif num_heads == 1:
                self.readouts.append(MLPReadout(scalars, mlp_readout_irreps))
            else:
                self.readouts.append(MultiHeadMLPReadout(scalars, mlp_readout_irreps, num_heads))
            irreps_node = irreps_out
        self.build_energy_head(
            energy_scale, energy_shift, trainable=False, zbl=zbl, cutoff_p=cutoff_p, shift_every_atom=shift_every_atom
        )
        self.pair_repulsion = MACEZBLRepulsion(self.species, p=int(cutoff_p)) if pair_repulsion else None
        self.build_long_range(channels, long_range, long_range_options, charge_spin_embedding, dispersion)

    def per_head_tensors(self) -> dict[str, tuple[tuple[int, ...], int]]:
        """E0, every readout's head columns, the last MLP's per-head hidden layer, the scale and shift."""
        heads, tensors = self.num_heads, super().per_head_tensors()
        for index, readout in enumerate(self.readouts):
            if isinstance(readout, LinearReadout):
                tensors[f"readouts.{index}.linear.weight"] = ((self.num_channels, heads), 1)
            else:
                width = readout.linear_out.weight.numel() // heads
                tensors[f"readouts.{index}.linear_in.weight"] = ((self.num_channels, heads, width), 1)
                tensors[f"readouts.{index}.linear_out.weight"] = ((heads, width), 0)
        return tensors

    def node_energies(self, species, edge_index, edge_vectors, batch, num_graphs, head=None):
        """Per-atom energies (eV) without E0 (see :meth:`Potential.node_energies`); ``head [N]``: each atom's
        head index (None: the default head)."""
        node_energy, _, lengths = self.readout_energies(species, edge_index, edge_vectors)
        return self.head_energies(node_energy, species, edge_index, lengths, head)

    def readout_energies(self, species, edge_index, edge_vectors, conditioning=None):
        """``(energies [N, heads] before the scale and shift, last scalars [N, C], lengths [E] Å)``;
        ``conditioning`` [N, C] is added to the species embedding (the frame's charge and spin)."""
        if isinstance(self.radial_embedding, MACERadialEmbedding):
            lengths = torch.linalg.vector_norm(edge_vectors, dim=-1)
            edge_sh, radial = (
                self.spherical_harmonics(edge_vectors),
                self.radial_embedding(lengths, species, edge_index),
            )
        else:
            lengths, edge_sh, radial = embed_edges(self.spherical_harmonics, self.radial_embedding, edge_vectors)
        node_features = self.species_embedding(species)
        if conditioning is not None:
            node_features = node_features + conditioning
        node_energy = 0
        for interaction, product, readout in zip(self.interactions, self.products, self.readouts):
            atomic_basis, skip = interaction(node_features, species, edge_sh, radial, edge_index)
            node_features = product(atomic_basis, species, skip)
            # scalars come first and are stored alike in e3nn's and the channels-last layout
            node_energy = node_energy + readout(node_features[:, : self.num_channels])  # [N, heads]
        if self.pair_repulsion is not None:
            node_energy = node_energy + self.pair_repulsion(species, edge_index, lengths).unsqueeze(-1)
        return node_energy, node_features[:, : self.num_channels], lengths

    def atomic_outputs(self, graph):
        """:meth:`Potential.atomic_outputs`, plus the frame's charge and spin and LES when the model has them."""
        if not self.reads_frame_inputs:
            return super().atomic_outputs(graph)
        species, edge_index = graph["species"], graph["edge_index"]
        conditioning = self.conditioning(graph, graph["edge_vectors"].dtype)
        node_energy, scalars, lengths = self.readout_energies(species, edge_index, graph["edge_vectors"], conditioning)
        energies = self.head_energies(node_energy, species, edge_index, lengths, graph["head"])
        return self.add_long_range({"node_energy": energies}, scalars, graph)
