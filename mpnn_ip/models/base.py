"""The base class of every potential: energy from positions, forces and stress by autograd.

Subclasses implement :meth:`Potential.node_energies` (per-atom energies without E0 from
species and edge vectors). This class owns everything around it: the constructor arguments
(recorded once, for checkpoints), dtype, the graph (:meth:`Potential.graph`: species, radius
graph built on the device when the input has none, edge vectors), the strain for stress, E0,
the per-frame sum and the one autograd call for forces, virial and stress; and the heads
(:mod:`mpnn_ip.models.heads`): per-head E0, each atom's head index in the graph, and
:meth:`Potential.with_heads`, which copies or selects heads of any model that takes ``heads``.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch_geometric.utils import scatter

from mpnn_ip.elements import atomic_numbers, energies_by_atomic_number, symbols
from mpnn_ip.errors import ConfigError, DataError
from mpnn_ip.graph import edge_vectors, radius_graph_pbc, strained
from mpnn_ip.models import heads as head_tables
from mpnn_ip.models.arguments import record_constructor_arguments
from mpnn_ip.models.derivatives import edge_derivatives, position_and_strain_derivatives, zero_strain
from mpnn_ip.models.heads import head_index, map_per_head, normalize_heads, per_head_values, selected_per_head
from mpnn_ip.models.long_range import add_dispersion_pairs
from mpnn_ip.nn.edge_chunks import AtomChunking, EdgeChunking
from mpnn_ip.nn.tracing import is_tracing


def normalize_species(species: Sequence[int | str]) -> list[int]:
    """Chemical symbols or atomic numbers -> sorted unique atomic numbers (at least one)."""
    numbers = atomic_numbers(species, error=ValueError)
    if not numbers:
        raise ValueError("a model needs at least one species")
    return numbers


class Potential(torch.nn.Module):
    """Base potential: ``forward(inputs) -> {energy, node_energy, forces, stress, virial}``.

    Args:
        species: chemical symbols or atomic numbers the model knows.
        r_max: cutoff radius (Å).
        e0s: per-species reference energy (eV) added to each atom, ``{Z or symbol: eV}``;
            missing species get 0. A model with several heads may give one such mapping per head,
            ``{head: {Z or symbol: eV}}``.
        heads: names of the model's heads (:mod:`mpnn_ip.models.heads`); None = one head ``"Default"``.
            Only models whose constructor takes ``heads`` (and that declare their per-head parts in
            :meth:`per_head_tensors`) pass it on; the others have one head.

    Inputs may carry ``head`` ([B] long): the index of each frame's head (absent = 0, the default head).

    Every subclass's constructor arguments are recorded once, from its bound signature
    (:attr:`config`), so that a checkpoint rebuilds the model with ``type(model)(**model.config)``.

    Class attributes a model may set:
        fitted_in_closed_form: True for models that :meth:`prepare` fits completely (no gradient
            descent afterwards: training validates and saves them after one pass).
        extra_outputs: ``{name: (per, unit)}`` of the outputs :meth:`atomic_outputs` returns besides
            ``node_energy``, ``per`` being ``"frame"`` ([B]) or ``"atom"`` ([N]); e.g. GAP's
            ``energy_uncertainty``. Consumers (the ASE calculator, evaluation) read this declaration.
        default_dtype: the precision ``mpnn-train dtype=auto`` (the default) builds the model in:
            float32 for the networks (faster at the same errors; docs/performance.md), float64 for a model
            whose numerics need it (GAP's kernels and closed-form fit).
    """

    fitted_in_closed_form: bool = False
    default_dtype: torch.dtype = torch.float32
    extra_outputs: Mapping[str, tuple[str, str]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = record_constructor_arguments(cls.__dict__["__init__"])

    def __init__(
        self, species: Sequence[int | str], r_max: float, e0s: Mapping | None = None, heads: Sequence[str] | None = None
    ):
        super().__init__()
        self.species = normalize_species(species)
        self.r_max = float(r_max)
        self.heads = normalize_heads(heads)
        table = torch.full((119,), -1, dtype=torch.long)
        table[torch.tensor(self.species)] = torch.arange(len(self.species))
        self.register_buffer("species_table", table, persistent=False)
        # float64 from the start: a float32 buffer cast to float64 later keeps float32 rounding
        # (~|E0| * 6e-8 eV per atom), which float64 models must not carry.
        e0 = torch.zeros(len(self.heads), len(self.species), dtype=torch.float64)
        for row, energies in enumerate(per_head_values(e0s, self.heads)):
            for z, value in (energies_by_atomic_number(energies) or {}).items():
                if z in self.species:
                    e0[row, self.species.index(z)] = value
        # one head: [S], the layout of every checkpoint written before heads existed
        self.register_buffer("e0", e0[0] if len(self.heads) == 1 else e0)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (plain values; species as atomic numbers, e0s keyed by them)."""
        arguments = dict(self._constructor_arguments)
        arguments["species"] = list(self.species)
        arguments["e0s"] = map_per_head(arguments.get("e0s"), self.heads, energies_by_atomic_number)
        for name in ("energy_scale", "energy_shift"):
            arguments[name] = map_per_head(
                arguments.get(name), self.heads, lambda v: energies_by_atomic_number(v) if isinstance(v, Mapping) else v
            )
            if name not in self._constructor_arguments:
                del arguments[name]
        return arguments

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    def head_e0s(self, head: int = 0) -> dict[int, float]:
        """``{Z: eV}``: E0 of head ``head`` (index; 0 = the default head)."""
        row = self.e0 if self.e0.dim() == 1 else self.e0[head]
        return dict(zip(self.species, row.double().tolist()))

    def per_head_tensors(self) -> dict[str, tuple[tuple[int, ...], int]]:
        """``{state name: (view shape, head axis)}`` of every per-head tensor: viewed with that shape, the
        tensor holds one slice per head along the axis. The base class has E0; a model with per-head parts
        adds its own (:meth:`with_heads` copies and selects heads through this declaration)."""
        return {"e0": ((self.num_heads, self.num_species), 0)}

    def with_heads(self, heads: Sequence[str], sources: Sequence[str] | None = None) -> Potential:
        """A model of the same class with heads ``heads``, head k a copy of this model's head ``sources[k]``
        (default: the heads of the same names); shared weights, dtype, device and mode are kept.

        ``model.with_heads(["pbe"])`` is the one-head model of head ``pbe``, with the parameters of a model
        without heads; ``model.with_heads(["new", "pbe"], ["pbe", "pbe"])`` adds a head ``new`` that starts
        as a copy of ``pbe`` and comes first (the default head).

        Raises:
            ConfigError: a source head the model does not have (the message lists its heads), or several
                heads asked of a model whose constructor takes no ``heads``.
        """
        heads = normalize_heads(heads)
        sources = heads if sources is None else [str(s) for s in sources]
        if len(sources) != len(heads):
            raise ValueError(f"with_heads: {len(heads)} heads {heads} but {len(sources)} source heads {sources}")
        owner = f"this {type(self).__name__} model"
        index = [head_index(self.heads, source, owner) for source in sources]
        if heads == self.heads and index == list(range(self.num_heads)):
            return self
        if "heads" not in inspect.signature(type(self).__init__).parameters:
            raise ConfigError(
                f"{type(self).__name__} models have no heads (one output head, {self.heads[0]!r}); heads {heads} need a "
                "model with per-head readouts, such as mace or nequip: fine-tune a mace or nequip checkpoint, or leave the heads unset"
            )
        config = self.config
        for name in ("e0s", "energy_scale", "energy_shift"):
            if name in config:
                config[name] = selected_per_head(config[name], self.heads, index, heads)
        config["heads"] = heads
        rebuilt = type(self)(**config).to(device=self.e0.device, dtype=self.dtype)
        rebuilt.load_state_dict(head_tables.selected_head_state(self, rebuilt, index), strict=True)
        if hasattr(self, "checkpoint_metadata"):
            rebuilt.checkpoint_metadata = dict(self.checkpoint_metadata)
        return rebuilt.train(self.training)

    @property
    def num_species(self) -> int:
        return len(self.species)

    @property
    def dtype(self) -> torch.dtype:
        """The model's float dtype: that of its first floating parameter or buffer other than E0."""
        for name, tensor in itertools.chain(self.named_parameters(), self.named_buffers()):
            if name != "e0" and tensor.is_floating_point():
                return tensor.dtype
        return self.e0.dtype

    def set_edge_chunk_size(self, chunk_size: int | None, lean_double_backward: bool = False) -> Potential:
        """Edges per chunk of every convolution's recomputed edge sum (:mod:`mpnn_ip.nn.edge_chunks`).

        Bounds the per-edge memory of energy, forces and training to one chunk's; graphs with
        at most ``chunk_size`` edges are not chunked; 0 switches chunking off (most memory for
        large graphs); None restores each convolution's automatic size (~128 MiB of float32
        intermediates per chunk), applied only to graphs whose intermediates exceed ~512 MiB per
        convolution (smaller ones are faster unchunked), or, with ``lean_double_backward``, a third
        of that size applied to every graph above it (:data:`~mpnn_ip.nn.edge_chunks.LEAN_CHUNK_FLOATS_FACTOR`). ``lean_double_backward=True`` recomputes each chunk's backward
        too when training differentiates the forces again (the force loss), so that a training step
        also keeps one chunk at a time, at the cost of two more recomputations per chunk and step
        (:class:`~mpnn_ip.nn.edge_chunks.RecomputedEdgeSum`). A run-time setting: not stored in checkpoints.
        """
        if chunk_size is not None and int(chunk_size) < 0:
            raise ValueError(f"edge_chunk_size must be >= 0 (0 = no chunking) or None (automatic), got {chunk_size}")
        for module in self.modules():
            for chunking in (getattr(module, "edge_chunking", None), getattr(module, "atom_chunking", None)):
                if isinstance(chunking, (EdgeChunking, AtomChunking)):
                    chunking.configure(chunk_size, lean_double_backward)
        return self

    def species_index(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """[N] atomic numbers -> [N] indices into ``self.species``; unknown elements raise DataError."""
        index = self.species_table[atomic_numbers]
        if not is_tracing() and bool((index < 0).any()):
            unknown = sorted({int(z) for z in atomic_numbers[index < 0].tolist()})
            raise DataError(
                f"element(s) {symbols(unknown)} are not among the species this model was built for {symbols(self.species)}"
            )
        return index

    def frame_heads(self, inputs: Mapping[str, torch.Tensor], num_graphs: int, device) -> torch.Tensor | None:
        """[B] head index of each frame (``inputs["head"]``, absent = 0); None for a model with one head, whose
        frames must all be of head 0 (else DataError)."""
        head = inputs.get("head")
        if head is not None and not is_tracing():
            head = head.reshape(-1)
            outside = (head < 0) | (head >= self.num_heads)
            if head.shape[0] != num_graphs or bool(outside.any()):
                bad = (
                    sorted(set(head[outside].tolist()))
                    if head.shape[0] == num_graphs
                    else f"{head.shape[0]} for {num_graphs} frames"
                )
                raise DataError(
                    f"frame head indices {bad} do not fit this model's {self.num_heads} head(s) {self.heads} "
                    f"(one index per frame, 0..{self.num_heads - 1})"
                )
        if self.num_heads == 1:
            return None
        if head is None:
            return torch.zeros(num_graphs, dtype=torch.long, device=device)
        return head.reshape(-1).to(device=device, dtype=torch.long)

    def graph(
        self,
        inputs,
        positions: torch.Tensor | None = None,
        strain: torch.Tensor | None = None,
        separate_direct_positions: bool = False,
    ) -> dict[str, Any]:
        """Species, edges and edge vectors of ``inputs``: what every model computes from.

        Args:
            inputs: a batch from :func:`mpnn_ip.data.collate`, a single graph, or a dict of tensors
                with ``pos, atomic_numbers, cell, pbc`` (+ ``batch``); optional ``edge_index,
                cell_shifts`` (else the radius graph at ``r_max`` is built on the inputs' device).
            positions: [N, 3] Å to use instead of ``inputs["pos"]`` (e.g. a tensor that requires
                grad, or a forward-mode dual tensor); edges are still taken from ``inputs``.
            strain: [B, 3, 3] (symmetrised here) applied to positions and cell, for stress.
            separate_direct_positions: give terms that read positions directly (LES) a leaf of their own,
                ``direct_pos``: one gradient then tells their share from the edges' (edge-gradient route).
        Returns: ``species [N]`` (index into ``self.species``), ``edge_index [2, E]``,
            ``cell_shifts [E, 3]``, ``edge_vectors [E, 3]`` (Å, differentiable w.r.t. positions and
            strain), ``pos [N, 3]``, ``cell [B, 3, 3]``, ``pbc [B, 3]``, ``batch [N]``, ``ptr``
            (when the input has it), ``num_graphs`` (int B) and ``head [N]`` (each atom's head index
            into :attr:`heads`; None for a model with one head); ``direct_pos`` [N, 3] (``pos`` or its own leaf),
            the frame inputs ``charge``, ``spin``, ``has_charge``, ``has_spin`` ([B], None when absent) and a
            dispersion term's own pairs (:func:`~mpnn_ip.models.long_range.add_dispersion_pairs`).
        """
        from mpnn_ip.data.atomic_graph import to_inputs

        if not isinstance(inputs, Mapping) or "batch" not in inputs:
            inputs = to_inputs(inputs)
        dtype = self.dtype  # a walk over the parameters: once per call
        pos = (inputs["pos"] if positions is None else positions).to(dtype)
        cell = inputs["cell"].to(dtype).reshape(-1, 3, 3)
        pbc = inputs["pbc"].reshape(-1, 3)
        batch = inputs["batch"]
        if inputs.get("edge_index") is not None:
            edge_index, cell_shifts = inputs["edge_index"], inputs["cell_shifts"]
        else:
            with torch.no_grad():
                edge_index, cell_shifts = radius_graph_pbc(pos.detach(), cell.detach(), pbc, batch, self.r_max)
        if strain is not None:
            pos, cell = strained(pos, cell, strain, batch)
        frame_heads = self.frame_heads(inputs, cell.shape[0], pos.device)
        direct_pos = pos
        if separate_direct_positions and getattr(self, "uses_positions_directly", False):
            direct_pos = pos.detach().requires_grad_(True)
        graph = {
            "species": self.species_index(inputs["atomic_numbers"]),
            "edge_index": edge_index,
            "cell_shifts": cell_shifts,
            "edge_vectors": edge_vectors(pos, cell, edge_index, cell_shifts, batch),
            "pos": pos,
            "cell": cell,
            "pbc": pbc,
            "batch": batch,
            "ptr": inputs.get("ptr"),
            "num_graphs": cell.shape[0],
            "head": None if frame_heads is None else frame_heads[batch],
            "direct_pos": direct_pos,
            **{name: inputs.get(name) for name in ("charge", "spin", "has_charge", "has_spin", "charge_potential")},
        }
        if getattr(self, "dispersion", None) is not None:
            add_dispersion_pairs(graph, self.dispersion.graph_cutoff, inputs, positions)
        return graph

    def node_energies(
        self,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        batch: torch.Tensor,
        num_graphs: int,
    ) -> torch.Tensor:
        """Per-atom energies (eV) without E0.

        Args:
            species: [N] species index (into ``self.species``).
            edge_index: [2, E]; row 0 the centre atom i (messages are summed there), row 1 the neighbour j.
            edge_vectors: [E, 3] Å, r_j - r_i (+ periodic shift); differentiable.
            batch: [N] frame index of each atom.
            num_graphs: number of frames B.
        Returns: [N] energies.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement node_energies")

    def atomic_outputs(self, graph: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The one return hook: ``{"node_energy": [N] eV without E0}`` plus the outputs declared in
        :attr:`extra_outputs`. ``graph`` is :meth:`graph`'s result. Default: :meth:`node_energies`, given
        ``head=`` (each atom's head index) only by a model with several heads, whose ``node_energies`` takes it."""
        head = graph.get("head")
        return {
            "node_energy": self.node_energies(
                graph["species"],
                graph["edge_index"],
                graph["edge_vectors"],
                graph["batch"],
                graph["num_graphs"],
                **({} if head is None else {"head": head}),
            )
        }

    def prepare(self, graphs: list) -> dict:
        """Data-dependent setup from the training graphs (``AtomicGraph`` list), called once before
        training (not on resume). None here; e.g. BPNN standardises its features, GAP fits itself.

        Returns: a JSON-able report for the run folder (empty when there is nothing to report).
        """
        return {}

    def forward(
        self,
        inputs,
        compute_forces: bool = True,
        compute_stress: bool = False,
        compute_atomic_virial: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Energy [B] (eV), node_energy [N], and forces [N,3] (eV/Å), stress and virial [B,3,3] (eV/Å³, eV),
        atomic_virial [N,3,3] (eV), plus the model's :attr:`extra_outputs`.

        ``inputs``: as for :meth:`graph`. The autograd graph is kept (``create_graph``) only while
        ``self.training``.

        ``compute_atomic_virial``: per-atom virials from the edge forces ``g_e = dE/dr_e`` (the
        energy depends on positions only through the edge vectors ``r_e``): each edge's
        ``-r_e ⊗ g_e`` goes half to its centre and half to its neighbour, so that the atoms' sum is
        the virial ``-dE/dstrain`` (the input of heat-flux workflows; ASE's ``stresses`` divide it by
        ``-volume``). Implies forces. Then one gradient, w.r.t. the edge vectors, gives everything
        (forces ``-dE/dr_i = sum over i's edges of ±g_e``, the virial as the atoms' sum): the cost of
        forces alone, whereas ``compute_stress`` alone pays for a strain derivative on top (measurement:
        docs/performance.md, "Why the defaults are what they are", Stress and per-atom virials).
        """
        from mpnn_ip.data.atomic_graph import to_inputs

        if not isinstance(inputs, Mapping) or "batch" not in inputs:
            inputs = to_inputs(inputs)
        dtype = self.dtype
        compute_forces = compute_forces or compute_atomic_virial
        positions = inputs["pos"].to(dtype)
        if compute_forces:
            positions = positions.detach().requires_grad_(True)
        strain = None
        if compute_stress and not compute_atomic_virial:
            strain = zero_strain(inputs["cell"].reshape(-1, 3, 3).shape[0], dtype, positions.device)
        graph = self.graph(inputs, positions=positions, strain=strain, separate_direct_positions=compute_atomic_virial)
        out = self.atomic_outputs(graph)
        dispersion = getattr(self, "dispersion", None)
        if dispersion is not None:
            out["node_energy"] = out["node_energy"] + dispersion.atomic_energies(
                inputs["atomic_numbers"], graph["dispersion_edge_index"], graph["dispersion_vectors"]
            ).to(dtype)
        species, batch = graph["species"], graph["batch"]
        e0 = self.e0[species] if graph["head"] is None else self.e0[graph["head"], species]
        # the frame's sum in float64, rounded once: a float32 sum of atoms carrying E0 (~1e3 eV each)
        # would add ~1e-4 eV of rounding per atom to an energy fitted to ~1e-3 eV per atom
        interaction = out["node_energy"]
        energy = scatter(interaction.to(torch.float64) + e0, batch, dim=0, dim_size=graph["num_graphs"], reduce="sum")
        out["node_energy"] = interaction + e0.to(dtype)
        out["energy"] = energy.to(dtype)
        direct_virial = out.pop("direct_atomic_virial", None)
        if compute_atomic_virial:
            edge_derivatives(out, graph, compute_stress, create_graph=self.training, direct_atomic_virial=direct_virial)
        elif compute_forces or compute_stress:
            forces_wrt = positions if compute_forces else None
            position_and_strain_derivatives(out, forces_wrt, strain, graph["cell"], create_graph=self.training)
        return out
