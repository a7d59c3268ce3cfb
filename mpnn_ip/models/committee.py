"""A committee of potentials: their mean prediction, and their spread as an uncertainty.

Members trained alike but from different seeds (``mpnn-train -m seed=0,1,2 ...``) agree where the
training data constrain them and drift apart away from it, so the spread of their predictions
flags structures the data do not cover (active learning: ``mpnn-select``).

    from mpnn_ip import MPNNCalculator
    atoms.calc = MPNNCalculator.from_checkpoints(["s0/best.ckpt", "s1/best.ckpt", "s2/best.ckpt"])
    atoms.get_forces(), atoms.calc.get_property("forces_uncertainty", atoms)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mpnn_ip.data.atomic_graph import to_inputs
from mpnn_ip.elements import symbols
from mpnn_ip.errors import ConfigError
from mpnn_ip.graph import radius_graph_pbc
from mpnn_ip.outputs import FITTED_LABELS, STANDARD_OUTPUTS

#: Spreads are population standard deviations (``correction=0``) over the members.
SPREAD_CORRECTION = 0


class Committee(torch.nn.Module):
    """Several potentials as one model with the :meth:`Potential.forward` contract.

    Every standard output (energy, node_energy, forces, stress, virial, atomic_virial) is the mean
    over the members. The spread is returned as declared extra outputs (:attr:`extra_outputs`), so
    the ASE calculator and evaluation serve it like any model's extras:

    ``energy_uncertainty`` [B] eV
        population standard deviation over the members of the frame's total energy.
    ``forces_uncertainty`` [N] eV/Å (with forces)
        per atom, the root mean square over the three Cartesian components of the members'
        population standard deviation, ``sqrt(mean_c var_m F[m, i, c])``: comparable to a
        per-component force RMSE (the norm of the per-component std is ``sqrt(3)`` times it).
    ``energy_committee`` [B, M] eV, ``forces_committee`` [N, M, 3] eV/Å (with forces)
        each member's prediction (rows first, like every extra output).

    The radius graph is built once (at the shared ``r_max``) and every member runs on it. Extra
    outputs of the members themselves (a GAP's ``energy_uncertainty``) are not passed on.

    Args:
        members: at least two potentials (e.g. from :func:`mpnn_ip.load_model`) with the same
            species, cutoff ``r_max`` (Å) and dtype.
        names: what errors call each member; default: its checkpoint path, else ``member k``.

    Raises:
        ConfigError: fewer than two members, or members that differ in species, r_max or dtype
            (naming the first one that differs from the first member).
    """

    extra_outputs = {
        "energy_uncertainty": ("frame", "eV"),
        "forces_uncertainty": ("atom", "eV/Å"),
        "energy_committee": ("frame", "eV"),
        "forces_committee": ("atom", "eV/Å"),
    }

    def __init__(self, members: Sequence[torch.nn.Module], names: Sequence[str] | None = None):
        super().__init__()
        members = list(members)
        if names is None:
            names = [getattr(m, "checkpoint_metadata", {}).get("path", f"member {k}") for k, m in enumerate(members)]
        self.names = [str(name) for name in names]
        if len(members) < 2:
            raise ConfigError(
                f"a committee needs at least two models, got {len(members)} ({', '.join(self.names) or 'none'}); "
                "train more members, e.g. mpnn-train -m seed=0,1,2 ..."
            )
        first, first_name = members[0], self.names[0]
        for member, name in zip(members[1:], self.names[1:]):
            for what, a, b in (
                ("species", symbols(first.species), symbols(member.species)),
                ("r_max (Å)", float(first.r_max), float(member.r_max)),
                ("dtype", _dtype(first), _dtype(member)),
            ):
                if a != b:
                    hint = (
                        "load them with one dtype (dtype=float64)"
                        if what == "dtype"
                        else "use members trained on the same species with the same cutoff"
                    )
                    raise ConfigError(
                        f"committee members differ in {what}: {first_name} has {a}, {name} has {b}; {hint}"
                    )
        self.members = torch.nn.ModuleList(members)
        self.species = list(first.species)
        self.r_max = float(first.r_max)

    @property
    def dtype(self) -> torch.dtype:
        return _dtype(self.members[0])

    @property
    def checkpoint_metadata(self) -> dict[str, Any]:
        """``{"path": "committee of a.ckpt, b.ckpt", "members": [each member's metadata]}``."""
        return {
            "path": "the committee " + ", ".join(self.names),
            "members": [getattr(m, "checkpoint_metadata", {"path": n}) for m, n in zip(self.members, self.names)],
        }

    def forward(self, inputs, **flags) -> dict[str, torch.Tensor]:
        """Mean outputs of the members plus the spreads (see the class docstring); ``inputs`` and the ``flags``
        (``compute_forces``, ``compute_stress``, ``compute_atomic_virial``) as for :meth:`mpnn_ip.models.Potential.forward`."""
        if not isinstance(inputs, Mapping) or "batch" not in inputs:
            inputs = to_inputs(inputs)
        if inputs.get("edge_index") is None:
            inputs = dict(inputs)
            dtype = self.dtype  # the members search in their dtype too: same edges at the cutoff
            with torch.no_grad():
                inputs["edge_index"], inputs["cell_shifts"] = radius_graph_pbc(
                    inputs["pos"].to(dtype),
                    inputs["cell"].to(dtype).reshape(-1, 3, 3),
                    inputs["pbc"].reshape(-1, 3),
                    inputs["batch"],
                    self.r_max,
                )
        outs = [member(inputs, **flags) for member in self.members]
        averaged = dict.fromkeys([*STANDARD_OUTPUTS, *FITTED_LABELS])  # the standard outputs and every label
        out = {key: torch.stack([o[key] for o in outs]).mean(dim=0) for key in averaged if key in outs[0]}
        energies = torch.stack([o["energy"] for o in outs], dim=1)
        out["energy_committee"] = energies
        out["energy_uncertainty"] = energies.std(dim=1, correction=SPREAD_CORRECTION)
        if "forces" in outs[0]:
            forces = torch.stack([o["forces"] for o in outs], dim=1)
            out["forces_committee"] = forces
            out["forces_uncertainty"] = forces.var(dim=1, correction=SPREAD_CORRECTION).mean(dim=1).sqrt()
        return out


def _dtype(model: torch.nn.Module) -> torch.dtype:
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
