"""The one dtype policy for the equivariant blocks' constant tensors: float64 masters, cast per use.

Used for every Clebsch-Gordan tensor and the index tensors that go with it: NequIP's
:class:`~mpnn_ip.nn.equivariant.tensor_product.ChannelwiseTensorProduct`, MACE's
:class:`~mpnn_ip.nn.mace.interaction.MACEInteraction` and
:class:`~mpnn_ip.nn.mace.symmetric_contraction.SymmetricContraction`. A block keeps a
:class:`DtypeConstants` (not buffers) and calls ``constants.get(x.dtype, x.device)`` in its
forward. A float64 model then uses exact coefficients whatever dtype it was built in, and a
float32 model their rounding to float32; neither is in the state dict.
"""

from __future__ import annotations

import torch

from mpnn_ip.nn.tracing import is_tracing


class DtypeConstants:
    """Float64 master copies of constant tensors, handed out in the dtype and device of the input.

    Registered buffers would follow ``module.to(dtype)``: a model built in float32 and moved to
    float64 would then carry Clebsch-Gordan coefficients rounded to float32 (relative errors
    ~1e-8 that break float64 equivariance at 1e-10). These constants are not part of the state
    dict (they follow from the constructor arguments), so they live outside the module tree
    and are cast, once per (dtype, device), from the float64 originals. Integer tensors keep
    their dtype and only move device.

    Args:
        tensors: name -> tensor; floating tensors are stored as float64.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self._master = {
            name: t.detach().to(torch.float64) if t.is_floating_point() else t.detach().clone()
            for name, t in tensors.items()
        }
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}

    def get(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        """All constants, floating ones in ``dtype``, on ``device``."""
        key = (dtype, str(device))
        if key in self._cache:
            return self._cache[key]
        constants = {
            name: t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
            for name, t in self._master.items()
        }
        # A traced cast is a placeholder of the trace: cached, it would outlive the trace.
        if not is_tracing():
            self._cache[key] = constants
        return constants

    def __getstate__(self):
        return {"_master": self._master, "_cache": {}}

    def __deepcopy__(self, memo):
        new = DtypeConstants.__new__(DtypeConstants)
        new._master = self._master  # immutable float64 originals can be shared
        new._cache = {}
        return new
