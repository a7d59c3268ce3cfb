"""Building blocks of the potentials, by family; every public block is re-exported here.

Shapes: ``n_atoms`` nodes, ``n_edges`` directed edges; edge ``(i, j) = (edge_index[0],
edge_index[1])``, messages flow from neighbour j to centre i; lengths in Å, energies in eV.
Every equivariant block states ``irreps_in`` / ``irreps_out`` (``e3nn.o3.Irreps``) and checks
its wiring when it is built. Edge spherical harmonics come straight from
``e3nn.o3.SphericalHarmonics(irreps_sh, normalize=True, normalization="component")``.

Shared by the families (top-level modules):

- :mod:`~mpnn_ip.nn.radial`: :class:`BesselBasis`, :class:`GaussianBasis` (:func:`gaussians`),
  :class:`PolynomialCutoff`, :func:`cosine_cutoff`, :class:`RadialEmbedding` (Bessel x polynomial
  cutoff): lengths [n_edges] Å -> [n_edges, num_basis]
- :mod:`~mpnn_ip.nn.radial_mlp`: :class:`RadialMLP`, radial embedding -> per-edge tensor-product weights
- :mod:`~mpnn_ip.nn.activations`: :data:`ACTIVATIONS` by name, :func:`shifted_softplus`
- :mod:`~mpnn_ip.nn.scale_shift`: :class:`PerSpeciesScaleShift`, atomic energies -> eV per species (shift gated by :func:`neighbour_gate`)
- :mod:`~mpnn_ip.nn.zbl`: :class:`ZBLRepulsion`, screened nuclear repulsion at short range (eV)
- :mod:`~mpnn_ip.nn.heads`: per-head readout and scale/shift of models with several heads (imported from the module)
- :mod:`~mpnn_ip.nn.couplings`: the one path enumerator :func:`tensor_product_paths`
  (:func:`tp_path_exists`, :func:`convolution_output_irreps`) and the Clebsch-Gordan coupling
  tensors of both tensor products
- :mod:`~mpnn_ip.nn.constants`: :class:`DtypeConstants`, the one dtype policy for Clebsch-Gordan
  tensors (float64 masters, cast per dtype and device)
- :mod:`~mpnn_ip.nn.wiring`: :func:`check_same_irreps`, :func:`check_linear_paths`

NequIP, e3nn layout (:mod:`mpnn_ip.nn.equivariant`): :class:`SpeciesEmbedding`,
:class:`ChannelwiseTensorProduct` (the fused "uvu" product, :func:`convolution_paths`),
:class:`TensorProductConvolution`, :class:`EquivariantGate`, :class:`SpeciesSelfInteraction`,
:class:`LinearReadout`, :class:`MLPReadout` (readouts serve MACE too).

MACE, channels-last layout (:mod:`mpnn_ip.nn.mace`): :class:`ChannelsLastLinear`,
:class:`SpeciesChannelsLastLinear`, :class:`MACEInteraction`, :class:`SymmetricContraction`
(:func:`symmetric_coupling_basis`), :class:`ProductBasis`.

Invariant descriptors (:mod:`mpnn_ip.nn.descriptors`): SchNet's :class:`SchNetInteraction` and
:class:`ContinuousFilterConvolution`, BPNN's :class:`SymmetryFunctions`, GAP's :class:`PowerSpectrum`.
"""

from mpnn_ip.nn.activations import ACTIVATIONS, activation, shifted_softplus
from mpnn_ip.nn.constants import DtypeConstants
from mpnn_ip.nn.couplings import convolution_output_irreps, tensor_product_paths, tp_path_exists
from mpnn_ip.nn.descriptors.cfconv import ContinuousFilterConvolution, SchNetInteraction
from mpnn_ip.nn.descriptors.soap import PowerSpectrum
from mpnn_ip.nn.descriptors.symmetry_functions import SymmetryFunctions
from mpnn_ip.nn.equivariant.convolution import TensorProductConvolution
from mpnn_ip.nn.equivariant.embedding import SpeciesEmbedding, embed_edges
from mpnn_ip.nn.equivariant.gate import EquivariantGate
from mpnn_ip.nn.equivariant.readout import LinearReadout, MLPReadout
from mpnn_ip.nn.equivariant.self_interaction import SpeciesSelfInteraction
from mpnn_ip.nn.equivariant.tensor_product import ChannelwiseTensorProduct, convolution_paths
from mpnn_ip.nn.mace.interaction import MACEInteraction
from mpnn_ip.nn.mace.linear import ChannelsLastLinear, SpeciesChannelsLastLinear
from mpnn_ip.nn.mace.product_basis import ProductBasis
from mpnn_ip.nn.mace.symmetric_contraction import SymmetricContraction, symmetric_coupling_basis
from mpnn_ip.nn.radial import BesselBasis, GaussianBasis, PolynomialCutoff, RadialEmbedding, cosine_cutoff, gaussians
from mpnn_ip.nn.radial_mlp import RadialMLP
from mpnn_ip.nn.scale_shift import PerSpeciesScaleShift, neighbour_gate, per_species_values
from mpnn_ip.nn.wiring import check_linear_paths, check_same_irreps
from mpnn_ip.nn.zbl import ZBLRepulsion

__all__ = [
    "ACTIVATIONS",
    "BesselBasis",
    "ChannelsLastLinear",
    "ChannelwiseTensorProduct",
    "ContinuousFilterConvolution",
    "DtypeConstants",
    "EquivariantGate",
    "GaussianBasis",
    "LinearReadout",
    "MACEInteraction",
    "MLPReadout",
    "PerSpeciesScaleShift",
    "PolynomialCutoff",
    "PowerSpectrum",
    "ProductBasis",
    "RadialEmbedding",
    "RadialMLP",
    "SchNetInteraction",
    "SpeciesChannelsLastLinear",
    "SpeciesEmbedding",
    "SpeciesSelfInteraction",
    "SymmetricContraction",
    "SymmetryFunctions",
    "TensorProductConvolution",
    "ZBLRepulsion",
    "activation",
    "embed_edges",
    "check_linear_paths",
    "check_same_irreps",
    "convolution_output_irreps",
    "convolution_paths",
    "cosine_cutoff",
    "gaussians",
    "neighbour_gate",
    "per_species_values",
    "shifted_softplus",
    "symmetric_coupling_basis",
    "tensor_product_paths",
    "tp_path_exists",
]
