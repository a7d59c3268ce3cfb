"""DFT-D3(BJ) dispersion as a differentiable, batched, periodic torch module.

``D3Dispersion()(pos [n_atoms, 3] Å, atomic_numbers [n_atoms], cell [n_frames, 3, 3] Å, pbc [n_frames, 3],
batch [n_atoms])`` -> atomic energies ``[n_atoms]`` eV, the same energy as simple-dftd3 (the ``dftd3``
package) with the same cutoffs. Forces and stress are the caller's autograd of these energies (with a
strained cell and positions, as :mod:`mpnn_ip.models.derivatives` does); nothing here differentiates.

The energy (Grimme, Antony, Ehrlich & Krieg 2010; Grimme, Ehrlich & Goerigk 2011), all pairs within
``cutoff`` including periodic images:

- coordination numbers ``CN_i = sum_j 1 / (1 + exp(-16 (R_cov,i + R_cov,j) / r_ij + 16))`` within ``cn_cutoff``;
- C6 of a pair: the reference C6 table interpolated with Gaussian weights ``exp(-4 (CN - CN_ref)^2)``
  (normalised per atom), ``C8 = 3 C6 q_i q_j``;
- two-body: ``E = -1/2 sum_ij [s6 C6 / (r^6 + R0^6) + s8 C8 / (r^8 + R0^8)]``, ``R0 = a1 sqrt(C8/C6) + a2``;
- three-body (Axilrod-Teller-Muto, optional): ``E = sum_ijk C9 (3 cos a cos b cos c + 1) / (r_ij r_ik r_jk)^3``
  times the zero damping ``1 / (1 + 6 (4/3 (R0ij R0ik R0jk / r_ij r_ik r_jk)^(1/3))^-16)``,
  ``C9 = s9 sqrt(C6ij C6ik C6jk)`` (atomic units), over triangles whose three sides are within ``three_body_cutoff``.
"""

from __future__ import annotations

import math

import torch
from ase.units import Bohr, Hartree
from torch.utils.checkpoint import checkpoint

from mpnn_ip.errors import ConfigError
from mpnn_ip.graph.radius import radius_graph_pbc
from mpnn_ip.graph.vectors import edge_vectors
from mpnn_ip.nn.constants import DtypeConstants
from mpnn_ip.nn.d3_parameters import (
    D3BJ_FUNCTIONALS,
    MAX_ATOMIC_NUMBER,
    d3_reference_tables,
    d3bj_parameters,
)

#: Steepness of the coordination-number counting function.
CN_STEEPNESS = 16.0
#: Width of the Gaussian weights of the references, ``exp(-4 (CN - CN_ref)^2)``.
REFERENCE_WEIGHT_WIDTH = 4.0
#: Scaling of the vdW radii and exponent of the three-body zero damping (rational damping's alpha 14, + 2).
THREE_BODY_RADIUS_SCALE = 4.0 / 3.0
THREE_BODY_DAMPING_EXPONENT = 16.0
#: Dispersion kinds :func:`parse_dispersion` knows.
DISPERSION_KINDS = ("d3bj",)


class D3Dispersion(torch.nn.Module):
    """DFT-D3 with rational (Becke-Johnson) damping, optionally with the three-body ATM term.

    Defaults: pairs and coordination numbers within 40 bohr, no three-body term (``s9 = 0``): simple-dftd3's
    ``dftd3.ase.DFTD3(method=functional, damping="d3bj")`` with its pair cutoff set to 40 bohr (its own
    default is 60 bohr).

    Args:
        functional: exchange-correlation functional whose D3(BJ) parameters to use (see
            :data:`~mpnn_ip.nn.d3_parameters.D3BJ_FUNCTIONALS`), case-insensitive.
        cutoff: pair cutoff (Å), default 40 bohr = 21.17 Å (simple-dftd3's default, 60 bohr, differs by 1.4 meV/atom
            on fcc Cu with (60/40)³ ≈ 3.4× the pairs; pass ``60 * ase.units.Bohr`` for it).
        cn_cutoff: coordination-number cutoff (Å), default 40 bohr = 21.17 Å.
        three_body: add the Axilrod-Teller-Muto term with ``s9 = 1`` (simple-dftd3's ``atm=True``).
            Its cost grows as the square of the neighbours within ``three_body_cutoff`` per atom.
        three_body_cutoff: cutoff (Å) on each side of a three-body triangle, default 40 bohr.
        max_triplets_per_chunk: three-body triangles are evaluated in chunks of about this many (memory);
            with gradients each chunk is recomputed in the backward pass instead of stored.
    """

    def __init__(
        self,
        functional: str = "pbe",
        cutoff: float = 40.0 * Bohr,
        cn_cutoff: float = 40.0 * Bohr,
        three_body: bool = False,
        three_body_cutoff: float = 40.0 * Bohr,
        max_triplets_per_chunk: int = 1 << 22,
    ):
        super().__init__()
        self.s6, self.s8, self.a1, a2_bohr = d3bj_parameters(functional)
        for name, value in (("cutoff", cutoff), ("cn_cutoff", cn_cutoff), ("three_body_cutoff", three_body_cutoff)):
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"D3Dispersion: {name} must be a positive number of Å, got {value}")
        self.functional = functional.lower()
        self.a2 = a2_bohr * Bohr
        self.s9 = 1.0 if three_body else 0.0
        self.cutoff, self.cn_cutoff, self.three_body_cutoff = float(cutoff), float(cn_cutoff), float(three_body_cutoff)
        self.three_body = bool(three_body)
        self.max_triplets_per_chunk = int(max_triplets_per_chunk)
        self.graph_cutoff = max(self.cutoff, self.cn_cutoff, self.three_body_cutoff if three_body else 0.0)
        # Derived from the constructor arguments: not in the state dict, cast per dtype and device.
        self.tables = DtypeConstants(d3_reference_tables())

    def extra_repr(self) -> str:
        return (
            f"functional={self.functional!r}, cutoff={self.cutoff:.4g}, cn_cutoff={self.cn_cutoff:.4g}, "
            f"three_body={self.three_body}, three_body_cutoff={self.three_body_cutoff:.4g}"
        )

    def forward(
        self,
        pos: torch.Tensor,
        atomic_numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        batch: torch.Tensor,
    ) -> torch.Tensor:
        """Atomic dispersion energies ``[n_atoms]`` (eV), differentiable w.r.t. ``pos`` and ``cell``.

        Args:
            pos: [n_atoms, 3] Å, float32 or float64 (the dtype of the result).
            atomic_numbers: [n_atoms] long, 1..94.
            cell: [n_frames, 3, 3] Å, rows are lattice vectors (zeros allowed along non-periodic directions).
            pbc: [n_frames, 3] bool.
            batch: [n_atoms] long, frame of each atom, sorted.
        """
        edge_index, cell_shifts = radius_graph_pbc(pos, cell, pbc, batch, self.graph_cutoff)
        vectors = edge_vectors(pos, cell, edge_index, cell_shifts, batch)
        return self.atomic_energies(atomic_numbers, edge_index, vectors)

    def atomic_energies(
        self, atomic_numbers: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor
    ) -> torch.Tensor:
        """Atomic energies ``[n_atoms]`` (eV) from a graph that holds every pair within :attr:`graph_cutoff`.

        Args:
            atomic_numbers: [n_atoms] long.
            edge_index: [2, n_edges] long, both directions of every pair, sorted by centre (row 0), as
                :func:`~mpnn_ip.graph.radius.radius_graph_pbc` returns it.
            vectors: [n_edges, 3] Å, ``pos[j] - pos[i] + shift`` (:func:`~mpnn_ip.graph.vectors.edge_vectors`).
        """
        n_atoms = atomic_numbers.shape[0]
        if n_atoms and (int(atomic_numbers.min()) < 1 or int(atomic_numbers.max()) > MAX_ATOMIC_NUMBER):
            raise ValueError(f"D3Dispersion: D3 has reference data for atomic numbers 1..{MAX_ATOMIC_NUMBER} only")
        tables = self.tables.get(vectors.dtype, vectors.device)
        centre, neighbour = edge_index[0], edge_index[1]
        squared = (vectors * vectors).sum(dim=1)
        present, species = torch.unique(atomic_numbers, return_inverse=True)

        in_cn = _within(squared, self.cn_cutoff, self.graph_cutoff)
        c_cn, n_cn = _select(centre, in_cn), _select(neighbour, in_cn)
        covalent = tables["covalent_radius"][atomic_numbers]
        ratio = (covalent[c_cn] + covalent[n_cn]) / torch.sqrt(_select(squared, in_cn))
        counts = torch.sigmoid(CN_STEEPNESS * (ratio - 1.0))
        cn = torch.zeros(n_atoms, dtype=vectors.dtype, device=vectors.device).index_add(0, c_cn, counts)
        weights, projected = self._reference_weights(atomic_numbers, cn, present, tables)

        in_pair = _within(squared, self.cutoff, self.graph_cutoff)
        c_pair, n_pair = _select(centre, in_pair), _select(neighbour, in_pair)
        c6 = (projected[c_pair, species[n_pair]] * weights[n_pair]).sum(dim=1)
        # Everything but C6 and r depends on the pair of elements only: one [n_species, n_species] table each.
        q = tables["r4_over_r2"][present]
        c8_over_c6 = 3.0 * q.unsqueeze(1) * q.unsqueeze(0)
        r0 = self.a1 * torch.sqrt(c8_over_c6) + self.a2
        pair = species[c_pair] * present.shape[0] + species[n_pair]
        r6_0, r8_0, s8_c8_over_c6 = (
            (r0**6).flatten()[pair],
            (r0**8).flatten()[pair],
            (self.s8 * c8_over_c6).flatten()[pair],
        )
        r2 = _select(squared, in_pair)
        r6 = r2 * r2 * r2
        damped = self.s6 / (r6 + r6_0) + s8_c8_over_c6 / (r6 * r2 + r8_0)
        energies = torch.zeros(n_atoms, dtype=vectors.dtype, device=vectors.device)
        energies = energies.index_add(0, c_pair, -0.5 * c6 * damped)
        if self.three_body:
            in_triple = _within(squared, self.three_body_cutoff, self.graph_cutoff)
            energies = energies + self._three_body(
                atomic_numbers,
                _select(centre, in_triple),
                _select(neighbour, in_triple),
                _select(vectors, in_triple),
                weights,
                projected,
                species,
            )
        return energies

    def _reference_weights(self, atomic_numbers, cn, present, tables):
        """Per-atom reference weights ``[n_atoms, 5]`` and the C6 table contracted with them
        ``[n_atoms, n_species, 5]``, so that ``C6_ij = projected[i, species_j] . weights_j`` with
        ``species`` the index of each atom's element in ``present`` (the sorted elements present)."""
        exists = tables["reference_exists"][atomic_numbers]
        distance = cn.unsqueeze(1) - tables["cn_reference"][atomic_numbers]
        logits = (-REFERENCE_WEIGHT_WIDTH * distance**2).masked_fill(~exists, -math.inf)
        weights = torch.softmax(logits, dim=1)
        table = tables["c6_reference"][atomic_numbers][:, present]  # [n_atoms, n_species, 5, 5]
        projected = torch.einsum("na,ntab->ntb", weights, table)
        return weights, projected

    def _three_body(self, atomic_numbers, centre, neighbour, vectors, weights, projected, species):
        """ATM energies ``[n_atoms]`` (eV): each triangle counted once from each corner, a third to that corner."""
        n_atoms = atomic_numbers.shape[0]
        energies = torch.zeros(n_atoms, dtype=vectors.dtype, device=vectors.device)
        if centre.numel() == 0:
            return energies
        tables = self.tables.get(vectors.dtype, vectors.device)
        edges_per_atom = torch.bincount(centre, minlength=n_atoms)
        pairs_per_atom = edges_per_atom * (edges_per_atom - 1) // 2
        for atoms in _chunks(pairs_per_atom, self.max_triplets_per_chunk):
            first, second = _edge_pairs(edges_per_atom, atoms)
            if first.numel() == 0:
                continue
            args = (vectors, weights, projected, atomic_numbers, species, centre, neighbour, first, second, tables)
            if torch.is_grad_enabled() and (vectors.requires_grad or weights.requires_grad):
                chunk = checkpoint(self._triangle_energies, *args, use_reentrant=False)
            else:
                chunk = self._triangle_energies(*args)
            energies = energies + chunk
        return energies

    def _triangle_energies(
        self, vectors, weights, projected, atomic_numbers, species, centre, neighbour, first, second, tables
    ):
        """Energies ``[n_atoms]`` of the triangles (centre, neighbour of edge ``first``, of edge ``second``)."""
        v_ij, v_ik = vectors[first], vectors[second]
        v_jk = v_ik - v_ij
        r2_jk = (v_jk * v_jk).sum(dim=1)
        keep = torch.nonzero((r2_jk < self.three_body_cutoff**2) & (r2_jk > 0)).squeeze(1)
        first, second, r2_jk = first[keep], second[keep], r2_jk[keep]
        v_ij, v_ik = v_ij[keep], v_ik[keep]
        i, j, k = centre[first], neighbour[first], neighbour[second]
        r2_ij, r2_ik = (v_ij * v_ij).sum(dim=1), (v_ik * v_ik).sum(dim=1)
        c6_ij = (projected[i, species[j]] * weights[j]).sum(dim=1)
        c6_ik = (projected[i, species[k]] * weights[k]).sum(dim=1)
        c6_jk = (projected[j, species[k]] * weights[k]).sum(dim=1)
        # C9 = sqrt(C6 C6 C6) holds in atomic units: in eV it is sqrt(C6 C6 C6 / Hartree).
        c9 = self.s9 * torch.sqrt(c6_ij * c6_ik * c6_jk / Hartree)
        z_i, z_j, z_k = atomic_numbers[i], atomic_numbers[j], atomic_numbers[k]
        radii = tables["vdw_radius"]
        r0 = THREE_BODY_RADIUS_SCALE**3 * radii[z_i, z_j] * radii[z_i, z_k] * radii[z_j, z_k]
        r2 = r2_ij * r2_ik * r2_jk
        r1 = torch.sqrt(r2)
        damping = 1.0 / (1.0 + 6.0 * (r0 / r1) ** (THREE_BODY_DAMPING_EXPONENT / 3.0))
        cosines = (r2_ij + r2_ik - r2_jk) * (r2_ij + r2_jk - r2_ik) * (r2_ik + r2_jk - r2_ij)
        angular = (0.375 * cosines / r2 + 1.0) / (r2 * r1)
        triangle = c9 * angular * damping / 3.0
        return torch.zeros(weights.shape[0], dtype=triangle.dtype, device=triangle.device).index_add(0, i, triangle)


def _within(squared_lengths: torch.Tensor, cutoff: float, graph_cutoff: float) -> torch.Tensor | None:
    """Indices of the edges shorter than ``cutoff``; None when that is every edge of the graph."""
    if cutoff >= graph_cutoff:
        return None
    return torch.nonzero(squared_lengths.detach() < cutoff * cutoff).squeeze(1)


def _select(values: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
    return values if indices is None else values.index_select(0, indices)


def _chunks(pairs_per_atom: torch.Tensor, budget: int) -> list[torch.Tensor]:
    """Consecutive groups of centre atoms with about ``budget`` edge pairs each (an atom is never split)."""
    ends = torch.cumsum(pairs_per_atom, dim=0)
    group = torch.div(ends - pairs_per_atom, max(budget, 1), rounding_mode="floor")
    boundaries = torch.nonzero(group[1:] != group[:-1]).squeeze(1) + 1
    atoms = torch.arange(pairs_per_atom.shape[0], device=pairs_per_atom.device)
    return list(torch.tensor_split(atoms, boundaries.cpu()))


def _edge_pairs(edges_per_atom: torch.Tensor, atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs ``(first, second)``, first < second, of edges with the same centre among ``atoms``
    (consecutive), as indices into the centre-sorted edge list."""
    offsets = torch.cumsum(edges_per_atom, dim=0) - edges_per_atom
    counts = edges_per_atom[atoms]
    start = offsets[atoms]
    edge = torch.arange(int(counts.sum()), device=atoms.device) + start[0]
    position = edge - torch.repeat_interleave(start, counts)  # rank of each edge among its centre's edges
    followers = torch.repeat_interleave(counts, counts) - 1 - position
    first = torch.repeat_interleave(edge, followers)
    block_start = torch.repeat_interleave(torch.cumsum(followers, dim=0) - followers, followers)
    second = first + 1 + torch.arange(first.shape[0], device=atoms.device) - block_start
    return first, second


def parse_dispersion(spec: str | None) -> D3Dispersion | None:
    """``"d3bj:pbe"`` -> ``D3Dispersion("pbe")``; None, ``""`` or ``"none"`` -> None.

    ``kind:functional``; kinds: ``d3bj``. Unknown kinds or functionals raise ``ConfigError`` with the
    known ones.
    """
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    kind, sep, functional = spec.strip().partition(":")
    if kind.lower() not in DISPERSION_KINDS or not sep or not functional:
        raise ConfigError(
            f"dispersion {spec!r}: expected 'kind:functional' with kind one of {', '.join(DISPERSION_KINDS)} "
            f"(e.g. 'd3bj:pbe'); D3(BJ) functionals: {', '.join(sorted(D3BJ_FUNCTIONALS))}"
        )
    return D3Dispersion(functional)
