"""NequIP's blocks, on node features in e3nn's layout (per irrep ``[mul, 2l+1]``, irreps concatenated).

- :mod:`.embedding`: species index -> ``F x 0e`` features;
- :mod:`.tensor_product`: the fused channel-wise ("uvu") tensor product with edge harmonics;
- :mod:`.convolution`: linear, tensor product weighted by a radial MLP, neighbour sum, linear;
- :mod:`.gate`: gated nonlinearity; :mod:`.self_interaction`: species-dependent linear map;
- :mod:`.readout`: node features -> atomic energies (also MACE's, which reads only scalars).

The public names are re-exported by :mod:`mpnn_ip.nn`.
"""
