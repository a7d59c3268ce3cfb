"""MACE's blocks, on node features stored channels-last (per irrep ``[2l+1, C]``, see :mod:`.linear`).

- :mod:`.linear`: ``o3.Linear`` and the species-dependent skip for channels-last features;
- :mod:`.interaction`: the atomic basis A (edge tensor product, neighbour sum) and the skip;
- :mod:`.symmetric_contraction`: the product basis B, symmetric powers of A up to ν = 3;
- :mod:`.product_basis`: symmetric contraction, linear, plus the skip;
- :mod:`.species_groups`: atoms sorted by species for per-species weights;
- :mod:`.radial`: mace-torch's Gaussian basis and Agnesi/Soft distance transforms (imported models);
- :mod:`.zbl`: mace-torch's own ZBL pair repulsion (imported models).

The public names of the first five are re-exported by :mod:`mpnn_ip.nn`; the last two are imported from their modules.
"""
