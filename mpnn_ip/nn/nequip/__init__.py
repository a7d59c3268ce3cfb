"""Blocks that only NequIP 0.19's own architecture uses (and that the NequIP importer maps weights onto).

- :mod:`.scalar_mlp`: :class:`ScalarMLP`, NequIP's bias-free scalar MLP with its weight scaling
  (the per-atom energy readout of ``readout_mlp``);
- :mod:`.zbl`: :class:`NequIPZBL`, NequIP's ZBL pair repulsion (``zbl="nequip"``).
"""

from mpnn_ip.nn.nequip.scalar_mlp import ScalarMLP
from mpnn_ip.nn.nequip.zbl import NequIPZBL

__all__ = ["NequIPZBL", "ScalarMLP"]
