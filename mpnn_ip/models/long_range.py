"""What a model adds beyond its cutoff and its geometry: latent-charge electrostatics (LES), a frame's total
charge and spin as inputs, and D3 dispersion inside the model. A mixin of NequIP and MACE.

- ``long_range="les"`` (:class:`~mpnn_ip.nn.les.LatentEwald`): a latent charge per atom from the last
  layer's scalar features, summing to the frame's total charge (input ``charge``, else 0); their Gaussian-smeared Coulomb energy (Ewald for periodic cells, a direct sum for
  molecules) is added to the atoms' energies. Outputs ``charges`` [N] (e) and ``dipole`` [B, 3] (e·Å,
  ``sum_i q_i r_i`` of frames without periodicity; zeros for periodic frames, whose dipole is not defined).
- ``charge_spin_embedding=True`` (:class:`~mpnn_ip.nn.charge_spin.ChargeSpinEmbedding`): the frame's total
  charge (input ``charge`` [B], e) and multiplicity (``spin`` [B]) are embedded and added to every atom's
  initial scalar features. Frames without them are taken as neutral singlets, which is said once.
- ``dispersion="d3bj:<functional>"`` (:class:`~mpnn_ip.nn.dispersion.D3Dispersion`): D3(BJ) on its own pairs
  (:meth:`~mpnn_ip.models.base.Potential.graph` builds them at its cutoff), added to the atoms' energies, so
  that the network learns the rest.

All three are constructor arguments (recorded in checkpoints); a model without them computes what it did before.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from mpnn_ip.graph import edge_vectors, radius_graph_pbc
from mpnn_ip.nn.charge_spin import ChargeSpinEmbedding
from mpnn_ip.nn.coulomb import dipole
from mpnn_ip.nn.dispersion import parse_dispersion
from mpnn_ip.nn.les import build_long_range
from mpnn_ip.nn.tracing import is_tracing
from mpnn_ip.outputs import INPUTS

_warned: set[str] = set()


def frame_input(graph: Mapping[str, Any], name: str, warn: bool = True) -> torch.Tensor:
    """[B] values of the frame input ``name`` (``charge`` or ``spin``) in ``graph``; frames without one get the
    default (neutral, singlet), which is said once per process and input (``warn``)."""
    values, present = graph.get(name), graph.get(f"has_{name}")
    num_frames, like = graph["num_graphs"], graph["pos"]
    default = INPUTS[name].default  # the input's row of the label table
    if values is None:
        values = torch.full((num_frames,), default, dtype=torch.float64, device=like.device)
        present = torch.zeros(num_frames, dtype=torch.bool, device=like.device)
    values = values.reshape(-1)
    if warn and present is not None and not is_tracing() and name not in _warned and not bool(present.all()):
        _warned.add(name)
        what = "neutral (total charge 0)" if name == "charge" else "singlets (multiplicity 1)"
        warnings.warn(
            f"some frames carry no {name} (atoms.info[{name!r}] or the data key {name}_key): they are taken as {what}",
            stacklevel=2,
        )
    return values


def add_dispersion_pairs(
    graph: dict[str, Any], cutoff: float, inputs: Mapping[str, torch.Tensor], positions: torch.Tensor | None
) -> None:
    """Add the dispersion term's own pairs to ``graph`` (:meth:`~mpnn_ip.models.base.Potential.graph`'s):
    ``dispersion_edge_index`` [2, P] (the inputs' ``dispersion_edge_index``/``dispersion_cell_shifts``, else
    every pair within ``cutoff`` Å, searched on the unstrained structure like the model's edges) and
    ``dispersion_vectors`` [P, 3] Å from the graph's (strained, differentiable) positions and cell."""
    pos, cell, pbc, batch = graph["pos"], graph["cell"], graph["pbc"], graph["batch"]
    if inputs.get("dispersion_edge_index") is not None:
        pairs, shifts = inputs["dispersion_edge_index"], inputs["dispersion_cell_shifts"]
    else:
        with torch.no_grad():
            base_pos = (inputs["pos"] if positions is None else positions).detach().to(pos.dtype)
            base_cell = inputs["cell"].detach().to(pos.dtype).reshape(-1, 3, 3)
            pairs, shifts = radius_graph_pbc(base_pos, base_cell, pbc, batch, cutoff)
    graph["dispersion_edge_index"] = pairs
    graph["dispersion_vectors"] = edge_vectors(pos, cell, pairs, shifts.to(pos.dtype), batch)


class LongRangeTerms:
    """Mixin of :class:`~mpnn_ip.models.base.Potential` subclasses (see the module docstring).

    A subclass calls :meth:`build_long_range` in its constructor, adds :meth:`conditioning` to its initial
    scalar features and passes its last scalar features to :meth:`add_long_range`.
    """

    def build_long_range(
        self,
        num_scalars: int,
        long_range: str | None = None,
        long_range_options: Mapping | None = None,
        charge_spin_embedding: bool = False,
        dispersion: str | None = None,
        num_initial_scalars: int | None = None,
    ) -> None:
        """Set ``latent_ewald``, ``charge_spin`` and ``dispersion`` (None when off); ``num_scalars``: the width
        of the last scalar features (LES reads them), ``num_initial_scalars`` that of the initial ones (the
        charge/spin embedding is added to them; default ``num_scalars``)."""
        self.latent_ewald = build_long_range(long_range, num_scalars, long_range_options)
        width = num_scalars if num_initial_scalars is None else num_initial_scalars
        self.charge_spin = ChargeSpinEmbedding(width) if charge_spin_embedding else None
        self.dispersion = parse_dispersion(dispersion)

    @property
    def reads_frame_inputs(self) -> bool:
        """Whether the atoms' features depend on more than species and edges (charge/spin, latent charges)."""
        return self.charge_spin is not None or self.latent_ewald is not None

    @property
    def uses_positions_directly(self) -> bool:
        return self.latent_ewald is not None

    def conditioning(self, graph: Mapping[str, Any], dtype: torch.dtype) -> torch.Tensor | None:
        """[N, F] to add to the initial scalar features (each atom's frame's charge/spin embedding), or None."""
        if self.charge_spin is None:
            return None
        charge, spin = frame_input(graph, "charge"), frame_input(graph, "spin")
        return self.charge_spin(charge.to(dtype), spin.to(dtype))[graph["batch"]]

    def add_long_range(self, out: dict[str, torch.Tensor], scalars: torch.Tensor, graph: Mapping[str, Any]) -> dict:
        """``out`` with the LES energies added to ``node_energy`` and the outputs ``charges`` and ``dipole``
        (``scalars``: [N, F] last scalar features). In the edge-gradient route (``graph["direct_pos"]`` a leaf
        of its own) also ``direct_atomic_virial`` [N, 3, 3] eV: the per-atom virials at fixed charges, which
        :func:`~mpnn_ip.models.derivatives.edge_derivatives` adds to those of the edges.

        With ``graph["charge_potential"]`` ([N] eV/e, the input of the same name; exported models) the Coulomb
        sum is left out and ``charge_potential * charges`` is added instead: its gradient is the charges'
        share of the long-range forces, for a caller that sums the Coulomb energy itself
        (:mod:`mpnn_ip.export`)."""
        if self.latent_ewald is None:
            return out
        pos, cell, pbc, batch = graph["direct_pos"], graph["cell"], graph["pbc"], graph["batch"]
        total_charge = frame_input(graph, "charge", warn=False)
        if graph.get("charge_potential") is not None:
            # exported models: the Coulomb sum runs outside the file, which passes its dE/dq here
            charges = self.latent_ewald.charges(scalars, batch, total_charge)
            out["node_energy"] = out["node_energy"] + graph["charge_potential"].to(charges.dtype) * charges
            out["charges"] = charges
            return out
        charges, energies = self.latent_ewald(scalars, pos, cell, pbc, batch, total_charge)
        out["node_energy"] = out["node_energy"] + energies
        out["charges"] = charges
        out["dipole"] = dipole(charges, graph["pos"], batch, graph["num_graphs"], pbc)
        if pos is not graph["pos"]:
            with torch.no_grad():
                out["direct_atomic_virial"] = self.latent_ewald.coulomb.atomic_virials(
                    charges.detach(), pos.detach(), cell.detach(), pbc, batch
                )
        return out
