"""What a converter returns: our model with the converted weights, and where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mpnn_ip.models import Potential


@dataclass
class ImportedModel:
    """A converted model and its provenance.

    Attributes:
        potential: our model (:class:`~mpnn_ip.models.Potential`), float64, converted weights, eval mode.
        package: the source package, ``"mace-torch"`` or ``"nequip"``.
        package_version: the source package's version as the file records it, else None.
        hyperparameters: the source's hyper-parameters, plain python only.
        heads: head names of the source (``["Default"]`` when it has none).
    """

    potential: Potential
    package: str
    package_version: str | None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    heads: list[str] = field(default_factory=lambda: ["Default"])
