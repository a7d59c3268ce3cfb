"""TorchSim interface: batched MD and relaxation of many structures at once with a trained potential.

Needs the optional extra ``pip install 'mpnn_ip[torchsim]'`` (``torch-sim-atomistic``). Example::

    import torch_sim as ts
    from mpnn_ip.torchsim import MPNNTorchSimModel

    model = MPNNTorchSimModel.from_checkpoint("outputs/run/checkpoints/last.ckpt", device="cuda")
    final = ts.integrate(structures, model, integrator=ts.nvt_langevin, n_steps=1000,
                         temperature=300, timestep=0.002, autobatcher=True)   # TorchSim units: ps
    relaxed = ts.optimize(structures, model, optimizer=ts.frechet_cell_fire, autobatcher=True)

Conventions: TorchSim's ``SimState.cell`` holds lattice vectors as columns, ours (and ASE's) as
rows: the model reads ``state.row_vector_cell``. Units are the same (Å, eV, eV/Å, eV/Å³), and
so is the stress sign (ASE's: ``dE/dstrain / volume``, positive = tensile).
"""

from __future__ import annotations

from pathlib import Path

import torch

try:
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mpnn_ip.torchsim needs TorchSim: pip install 'mpnn_ip[torchsim]' (the torch-sim-atomistic package)"
    ) from error

from mpnn_ip.checkpoint import load_model, resolve_dtype
from mpnn_ip.cpu_allocator import keep_tensor_buffers_in_heap
from mpnn_ip.models.heads import select_head


class MPNNTorchSimModel(ModelInterface):
    """A :class:`mpnn_ip.models.Potential` behind TorchSim's ``ModelInterface``.

    Args:
        model: the potential (e.g. from :func:`mpnn_ip.load_model`); put in eval mode.
        device: where to run (``None`` = where the model is).
        dtype: ``"float32"``/``"float64"`` or a torch dtype; ``None`` = the model's. TorchSim states
            should use the same dtype.
        compute_forces, compute_stress: what :meth:`forward` returns besides the energy.
        head: the head of a model with several heads to compute with, by name (:mod:`mpnn_ip.models.heads`);
            ``None`` = its default head. An unknown name is a ``ConfigError`` listing the heads.

    A state's ``charge`` and ``spin`` ([n_systems] total charge and multiplicity; TorchSim versions that
    have them) reach models with a charge/spin embedding; without them systems are neutral singlets.

    ``forward(state)`` returns ``energy [n_systems]`` (eV), ``forces [n_atoms, 3]`` (eV/Å) and
    ``stress [n_systems, 3, 3]`` (eV/Å³, zero for a system without volume), detached. Memory grows
    with atoms times neighbours (``memory_scales_with = "n_atoms_x_density"``), which is what
    TorchSim's auto-batchers estimate batch sizes from.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        compute_forces: bool = True,
        compute_stress: bool = True,
        head: str | None = None,
    ):
        super().__init__()
        keep_tensor_buffers_in_heap()  # see mpnn_ip.cpu_allocator
        model = select_head(model, head)
        target = resolve_dtype(dtype) if isinstance(dtype, (str, type(None))) else dtype
        if device is not None:
            model = model.to(torch.device(device))
        if target is not None:
            model = model.to(target)
        self.model = model.eval()
        first = next(iter(model.parameters()), None)
        self._device = first.device if first is not None else torch.device(device or "cpu")
        self._dtype = model.dtype
        self._compute_forces = bool(compute_forces)
        self._compute_stress = bool(compute_stress)
        self._memory_scales_with = "n_atoms_x_density"

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype=None, **kwargs
    ) -> MPNNTorchSimModel:
        """The model of checkpoint ``path`` (see :func:`mpnn_ip.load_model`); ``kwargs`` (e.g. ``head="pbe"``) go
        to the constructor."""
        return cls(load_model(path, device=device, dtype=dtype), **kwargs)

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        """Energy, forces and stress of every system of ``state`` (a ``SimState`` or a dict of its fields)."""
        if isinstance(state, dict):
            state = ts.SimState(**state, masses=torch.ones_like(state["positions"][:, 0]))
        positions = state.positions.to(device=self._device, dtype=self._dtype)
        system_idx = state.system_idx.to(self._device)
        cell = state.row_vector_cell.to(device=self._device, dtype=self._dtype).reshape(-1, 3, 3)
        num_systems = cell.shape[0]
        pbc = torch.as_tensor(state.pbc, dtype=torch.bool, device=self._device).reshape(-1)
        pbc = pbc.expand(3) if pbc.numel() == 1 else pbc
        counts = torch.bincount(system_idx, minlength=num_systems)
        inputs = {
            "pos": positions,
            "atomic_numbers": state.atomic_numbers.to(self._device),
            "cell": cell,
            "pbc": pbc.reshape(-1, 3).expand(num_systems, 3) if pbc.numel() == 3 else pbc.reshape(num_systems, 3),
            "batch": system_idx,
            "ptr": torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
        }
        for name in ("charge", "spin"):  # TorchSim states that carry them (newer versions); else neutral singlets
            value = getattr(state, name, None)
            if value is not None:
                value = torch.as_tensor(value, dtype=torch.float64, device=self._device).reshape(-1)
                inputs[name] = value.expand(num_systems) if value.numel() == 1 else value
                inputs[f"has_{name}"] = torch.ones(num_systems, dtype=torch.bool, device=self._device)
        want_stress = self._compute_stress
        with torch.enable_grad():
            out = self.model(inputs, compute_forces=self._compute_forces, compute_stress=want_stress)
        results = {"energy": out["energy"].detach()}
        if self._compute_forces:
            results["forces"] = out["forces"].detach()
        if want_stress:
            results["stress"] = out["stress"].detach()
        return results
