"""Which kernels the equivariant convolutions of NequIP and MACE run on (their ``kernels`` argument,
``model.kernels`` in the configs).

``"e3nn"`` (default): e3nn's tensor products, on every device and dtype. ``"auto"``: the fastest kernels
this machine and build have; today that is e3nn everywhere. ``"oeq"``: OpenEquivariance's fused CUDA
kernels (JIT-compiled with the machine's nvcc): they need an NVIDIA GPU, the ``openequivariance``
package, and a build with the OpenEquivariance convolution, which is validated only on a GPU machine
(see docs/performance.md); until then ``"oeq"`` is refused with the reason, and ``"auto"`` stays on e3nn.
"""

from __future__ import annotations

import importlib.util

import torch

from mpnn_ip.errors import ConfigError

KERNELS = ("e3nn", "auto", "oeq")


def resolve_kernels(kernels: str, model: str) -> str:
    """The kernels ``model`` (its name, for messages) runs with for the option ``kernels``: ``"e3nn"``."""
    if kernels not in KERNELS:
        raise ConfigError(f"{model}: kernels={kernels!r} is not one of {', '.join(KERNELS)}")
    if kernels == "oeq":
        missing = [
            reason
            for reason, absent in (
                ("a CUDA GPU", not torch.cuda.is_available()),
                ("the openequivariance package", importlib.util.find_spec("openequivariance") is None),
                ("a build with the OpenEquivariance convolution (not in this version)", True),
            )
            if absent
        ]
        raise ConfigError(
            f"{model}: kernels=oeq needs {', '.join(missing)}; use kernels=e3nn (every device) or kernels=auto"
        )
    return "e3nn"
