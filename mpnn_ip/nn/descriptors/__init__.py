"""Invariant descriptors of the classical baselines: features ``[n_atoms, num_features]`` from edge lengths (Å) and angles.

- :mod:`.cfconv`: SchNet's continuous-filter convolution and interaction block;
- :mod:`.symmetry_functions`: Behler-Parrinello G2 / G4 / G5 atom-centred symmetry functions (BPNN);
- :mod:`.soap`: SOAP-like power spectrum (GAP).

Their radial functions (Gaussians, Behler's cosine cutoff) are in :mod:`mpnn_ip.nn.radial`;
the public names are re-exported by :mod:`mpnn_ip.nn`.
"""
