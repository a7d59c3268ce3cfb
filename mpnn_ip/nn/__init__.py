"""Building blocks of the equivariant potentials.

Every equivariant block states ``irreps_in`` / ``irreps_out`` (``e3nn.o3.Irreps``) and checks
its wiring when it is built. Shapes: ``n_atoms`` nodes, ``n_edges`` directed edges; edge
``(i, j) = (edge_index[0], edge_index[1])``, messages flow from neighbour j to centre i.

- :class:`RadialEmbedding` (``BesselBasis`` x ``PolynomialCutoff``): lengths [n_edges] Å -> [n_edges, num_basis]
- :class:`SpeciesEmbedding`: species index [n_atoms] -> ``F x 0e`` features
- :class:`RadialMLP`: radial embedding -> per-edge tensor-product weights
- :class:`TensorProductConvolution`: linear, node ⊗ edge spherical harmonics weighted by the
  radial MLP, sum over neighbours / normalisation, linear
- :class:`ChannelwiseTensorProduct`: the "uvu" tensor product of the convolution (equal to
  e3nn's ``o3.TensorProduct`` for those paths, fused for speed) and its sum over neighbours
- :class:`EquivariantGate`: gated nonlinearity (e3nn ``Gate``)
- :class:`SpeciesSelfInteraction`: species-dependent linear self-connection
- :class:`LinearReadout`, :class:`MLPReadout`: node features -> atomic energy
- :class:`PerSpeciesScaleShift`: per-species scale and shift of atomic energies (eV)
- :class:`ZBLRepulsion`: screened nuclear repulsion at short range (eV)

Edge spherical harmonics come straight from ``e3nn.o3.SphericalHarmonics(irreps_sh,
normalize=True, normalization="component")``.
"""

from mpnn_ip.nn.activations import ACTIVATIONS, activation
from mpnn_ip.nn.convolution import TensorProductConvolution, convolution_output_irreps
from mpnn_ip.nn.embedding import SpeciesEmbedding
from mpnn_ip.nn.gate import EquivariantGate
from mpnn_ip.nn.radial import BesselBasis, PolynomialCutoff, RadialEmbedding
from mpnn_ip.nn.radial_mlp import RadialMLP
from mpnn_ip.nn.readout import LinearReadout, MLPReadout
from mpnn_ip.nn.scale_shift import PerSpeciesScaleShift
from mpnn_ip.nn.self_interaction import SpeciesSelfInteraction
from mpnn_ip.nn.tensor_product import ChannelwiseTensorProduct
from mpnn_ip.nn.wiring import check_linear_paths, check_same_irreps
from mpnn_ip.nn.zbl import ZBLRepulsion

__all__ = [
    "ACTIVATIONS",
    "BesselBasis",
    "ChannelwiseTensorProduct",
    "EquivariantGate",
    "LinearReadout",
    "MLPReadout",
    "PerSpeciesScaleShift",
    "PolynomialCutoff",
    "RadialEmbedding",
    "RadialMLP",
    "SpeciesEmbedding",
    "SpeciesSelfInteraction",
    "TensorProductConvolution",
    "ZBLRepulsion",
    "activation",
    "check_linear_paths",
    "check_same_irreps",
    "convolution_output_irreps",
]
