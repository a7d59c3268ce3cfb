"""Whether a tracer is recording the forward pass instead of running it on data."""

from __future__ import annotations

import torch
from torch.fx.experimental.proxy_tensor import get_proxy_mode


def is_tracing() -> bool:
    """True while ``torch.compile``, ``torch.export`` or ``make_fx`` (the export route of
    :mod:`mpnn_ip.export`, which unrolls the force and stress gradients) records the forward.

    Tensors then hold no data: code must not branch on their values (a data-dependent shape or
    a Python ``bool`` of a tensor), nor cache tensors made during the trace.
    """
    return torch.compiler.is_compiling() or get_proxy_mode() is not None
