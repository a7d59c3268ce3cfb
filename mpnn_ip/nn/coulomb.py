"""Coulomb energy of Gaussian-smeared charges: the long-range term of Latent Ewald Summation (LES).

``GaussianCoulomb()(charges [n_atoms] e, pos [n_atoms, 3] Å, cell [n_frames, 3, 3] Å, pbc [n_frames, 3],
batch [n_atoms])`` -> atomic energies ``[n_atoms]`` eV. As in LES (Cheng 2025, npj Comput. Mater. 11, 80) two
charges interact by ``k_e q_i q_j erf(r / (sqrt(2) sigma)) / r`` (``k_e`` = 14.399645 eV Å / e²): each charge is a
Gaussian of standard deviation ``sigma / sqrt(2)``; ``sigma = 0`` gives point charges. The energy is
``E = 1/2 sum_{i,j} sum'_n k_e q_i q_j phi(|r_j - r_i + n|)``, every pair once, periodic images ``n`` included,
the self term (i = j, n = 0) excluded (LES's own code adds ``k_e q_i² / (sqrt(2 pi) sigma)`` per atom by default;
a per-atom function of the charge, which the network can absorb).

- Frames with no periodic direction: the direct sum over all pairs of the frame, O(n²) per frame.
- Frames periodic in x, y and z: Ewald summation with splitting width ``a >= sigma``,
  ``phi = [erfc(r / (sqrt(2) a)) - erfc(r / (sqrt(2) sigma))] / r + erf(r / (sqrt(2) a)) / r``: the first part
  summed in real space over pairs within ``r_c = sqrt(2) s a`` (from :func:`~mpnn_ip.graph.radius.radius_graph_pbc`),
  the second in reciprocal space over ``|k| < k_max = sqrt(2) s / a`` (:mod:`mpnn_ip.nn.ewald_kspace`), minus the
  self term ``k_e q_i² / (sqrt(2 pi) a)``. ``s = sqrt(-ln accuracy)``: ``erfc(s)`` and ``exp(-s²)`` bound the
  neglected tails. A cell with net charge ``Q`` gets a uniform neutralising background (the ``k = 0`` term is
  dropped), which adds ``-pi k_e Q² (a² - sigma²) / V`` and makes the energy independent of ``a``; it is shared
  equally by the atoms of the frame. Tin-foil boundary conditions (no dipole term).
- Frames periodic in one or two directions (slabs, wires): refused with a ``ValueError``.

Cost rule for periodic frames: ``a = max(sigma, real_space_cutoff / (sqrt(2) s))`` does not depend on the size of
the cell, so real-space pairs per atom are fixed (O(N)) and the number of k vectors ``~ V k_max³ / (6 pi²)`` grows
with the volume, i.e. with N at fixed density. The direct k sum then costs O(N²), and is used by ``kspace="auto"``
only while ``n_atoms * n_k / 2 <= EWALD_MAX_PRODUCTS``; larger frames use smooth particle-mesh Ewald, whose grid
has ``~ (1.25 k_max / pi)³ V`` points: O(N log N) (measured slope ~1, scripts/benchmark_coulomb.py).

Forces, stress and virials are the caller's autograd of these energies (with a strained cell and positions, as
:mod:`mpnn_ip.models.derivatives` does), also twice for force training; gradients reach the charges too.

Per-atom virials: :meth:`GaussianCoulomb.atomic_virials` gives them in closed form, at fixed charges and without
autograd: ``W_i`` [n_atoms, 3, 3] eV whose sum over a frame is ``W = -dE/dstrain`` (strain applied to positions and
cell; stress ``-W / V``), the convention of :func:`mpnn_ip.models.derivatives.edge_derivatives`. Each pair (direct
sum, Ewald real space) gives ``-r_ij ⊗ dE/dr_ij`` half to each end; each k term (k sum or mesh) gives its energy
times ``delta - (a² + 2 / k²) k ⊗ k`` shared among the atoms as its energy is (LAMMPS ewald/pppm), for the mesh by
interpolating the grid potentials of the 6 tensor components; the self term gives none and the background
(``∝ 1 / V``) ``E_bg delta``, shared equally. Summed they equal the autograd virial to rounding, the mesh's included.
"""

from __future__ import annotations

import math

import torch

from mpnn_ip.errors import ConfigError
from mpnn_ip.graph.radius import radius_graph_pbc
from mpnn_ip.graph.vectors import edge_vectors
from mpnn_ip.nn.ewald_kspace import (
    ewald_reciprocal,
    ewald_reciprocal_virials,
    pme_reciprocal,
    pme_reciprocal_virials,
)
from mpnn_ip.nn.zbl import COULOMB_EV_ANGSTROM

#: Reciprocal-space methods of :class:`GaussianCoulomb`.
KSPACE_METHODS = ("auto", "ewald", "pme")
#: ``kspace="auto"``: largest (atoms x half the k vectors) of a frame summed directly; beyond it, the mesh.
EWALD_MAX_PRODUCTS = 1 << 22


class GaussianCoulomb(torch.nn.Module):
    """Coulomb energy of Gaussian charges for a batch of molecules and bulk cells (see the module docstring).

    Args:
        sigma: smearing length (Å): pairs interact by ``erf(r / (sqrt(2) sigma)) / r``; 0 for point charges.
            LES uses 1 Å.
        accuracy: relative size of the neglected real- and reciprocal-space tails, ``exp(-s²)``; sets
            ``k_max = sqrt(2) s / a`` (1/Å) and the real-space cutoff. Default 1e-6.
        real_space_cutoff: largest real-space cutoff (Å) of periodic frames; the splitting width is
            ``a = max(sigma, real_space_cutoff / (sqrt(2) s))``. When ``a = sigma`` (broad charges) the real-space
            part vanishes and everything is in reciprocal space, as in LES. Default 5 Å.
        kspace: ``"ewald"`` (direct sum over k vectors, exactly rotation and translation invariant, O(N²)),
            ``"pme"`` (smooth particle-mesh Ewald, invariant to about ``accuracy``, O(N log N)) or ``"auto"``
            (direct while a frame's atoms x k vectors / 2 <= :data:`EWALD_MAX_PRODUCTS`, else mesh). The
            choice depends on the frame's size and volume, so it is fixed during NVT dynamics.
        pme_order: B-spline order of the mesh (even, 4 to 12).
    """

    def __init__(
        self,
        sigma: float = 1.0,
        accuracy: float = 1e-6,
        real_space_cutoff: float = 5.0,
        kspace: str = "auto",
        pme_order: int = 8,
    ):
        super().__init__()
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise ConfigError(f"GaussianCoulomb: sigma must be a length >= 0 Å (0: point charges), got {sigma}")
        if not (0 < accuracy < 1):
            raise ConfigError(f"GaussianCoulomb: accuracy must lie between 0 and 1 (e.g. 1e-6), got {accuracy}")
        if not (real_space_cutoff > 0 and math.isfinite(real_space_cutoff)):
            raise ConfigError(
                f"GaussianCoulomb: real_space_cutoff must be a positive number of Å, got {real_space_cutoff}"
            )
        if kspace not in KSPACE_METHODS:
            raise ConfigError(f"GaussianCoulomb: kspace must be one of {', '.join(KSPACE_METHODS)}, got {kspace!r}")
        if pme_order not in (4, 6, 8, 10, 12):
            raise ConfigError(f"GaussianCoulomb: pme_order must be even, 4 to 12, got {pme_order}")
        self.sigma, self.accuracy, self.kspace, self.pme_order = float(sigma), float(accuracy), kspace, int(pme_order)
        self.real_space_cutoff = float(real_space_cutoff)
        tail = math.sqrt(-math.log(accuracy))
        #: Ewald splitting width a (Å), reciprocal cutoff (1/Å) and the real-space cutoff actually used (Å).
        self.ewald_width = max(self.sigma, self.real_space_cutoff / (math.sqrt(2.0) * tail))
        self.k_max = math.sqrt(2.0) * tail / self.ewald_width
        self.pair_cutoff = math.sqrt(2.0) * tail * self.ewald_width if self.ewald_width > self.sigma else 0.0

    def extra_repr(self) -> str:
        return (
            f"sigma={self.sigma:g}, accuracy={self.accuracy:g}, real_space_cutoff={self.real_space_cutoff:g}, "
            f"kspace={self.kspace!r}, ewald_width={self.ewald_width:.4g}, k_max={self.k_max:.4g}"
        )

    def forward(
        self,
        charges: torch.Tensor,
        pos: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        batch: torch.Tensor,
    ) -> torch.Tensor:
        """Atomic Coulomb energies ``[n_atoms]`` (eV), differentiable w.r.t. ``charges``, ``pos`` and ``cell``.

        Args:
            charges: [n_atoms] e (cast to the dtype of ``pos``).
            pos: [n_atoms, 3] Å, float32 or float64 (the dtype of the result).
            cell: [n_frames, 3, 3] Å, rows are lattice vectors (ignored for frames without periodicity).
            pbc: [n_frames, 3] bool; each frame periodic in all three directions or in none.
            batch: [n_atoms] long, frame of each atom, sorted.
        """
        charges, cell, pbc = _prepare(charges, pos, cell, pbc, batch)
        energies = torch.zeros_like(charges)
        molecular = torch.nonzero(~pbc.any(dim=1)[batch]).squeeze(1)
        if molecular.numel():
            energies = energies.index_add(
                0, molecular, self._direct_sum(charges[molecular], pos[molecular], batch[molecular])
            )
        periodic = torch.nonzero(pbc.all(dim=1)[batch]).squeeze(1)
        if periodic.numel():
            energies = energies.index_add(
                0, periodic, self._ewald(charges[periodic], pos[periodic], cell, pbc, batch[periodic])
            )
        return COULOMB_EV_ANGSTROM * energies

    def atomic_virials(
        self,
        charges: torch.Tensor,
        pos: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        batch: torch.Tensor,
    ) -> torch.Tensor:
        """Per-atom virials ``[n_atoms, 3, 3]`` (eV) at fixed charges, in closed form (no autograd needed).

        Summed over a frame's atoms: the frame's ``-dE/dstrain`` (the stress is ``-virial / V``). Pairs give
        ``-r_ij ⊗ dE/dr_ij`` half to each end, reciprocal space ``sum_k E_i(k) T(k)`` with atom i's share
        ``E_i(k)`` of each k term (see :func:`~mpnn_ip.nn.ewald_kspace.virial_tensor`), the self term nothing and
        the background ``E_bg delta`` shared like its energy. Differentiable; arguments as :meth:`forward`.
        """
        charges, cell, pbc = _prepare(charges, pos, cell, pbc, batch)
        virials = torch.zeros(pos.shape[0], 3, 3, dtype=pos.dtype, device=pos.device)
        molecular = torch.nonzero(~pbc.any(dim=1)[batch]).squeeze(1)
        if molecular.numel():
            centre, neighbour = _all_pairs(batch[molecular])
            vectors = pos[molecular][neighbour] - pos[molecular][centre]
            part = self._pair_virials(charges[molecular], vectors, centre, neighbour, self._pair_kernel_slope)
            virials = virials.index_add(0, molecular, part)
        periodic = torch.nonzero(pbc.all(dim=1)[batch]).squeeze(1)
        if periodic.numel():
            virials = virials.index_add(
                0, periodic, self._ewald(charges[periodic], pos[periodic], cell, pbc, batch[periodic], virial=True)
            )
        return COULOMB_EV_ANGSTROM * virials

    def _pair_kernel(self, lengths: torch.Tensor) -> torch.Tensor:
        """``erf(r / (sqrt(2) sigma)) / r`` (1/Å), or ``1 / r`` for point charges."""
        if self.sigma == 0.0:
            return 1.0 / lengths
        return torch.erf(lengths / (math.sqrt(2.0) * self.sigma)) / lengths

    def _pair_kernel_slope(self, lengths: torch.Tensor) -> torch.Tensor:
        """d/dr of :meth:`_pair_kernel` (1/Å²)."""
        if self.sigma == 0.0:
            return -1.0 / (lengths * lengths)
        gauss = math.sqrt(2.0 / math.pi) / self.sigma * torch.exp(-0.5 * (lengths / self.sigma) ** 2)
        return (gauss - self._pair_kernel(lengths)) / lengths

    def _short_range_kernel(self, lengths: torch.Tensor) -> torch.Tensor:
        """Real-space Ewald kernel ``[erfc(r / (sqrt(2) a)) - erfc(r / (sqrt(2) sigma))] / r`` (1/Å)."""
        short_range = torch.erfc(lengths / (math.sqrt(2.0) * self.ewald_width))
        if self.sigma > 0.0:
            short_range = short_range - torch.erfc(lengths / (math.sqrt(2.0) * self.sigma))
        return short_range / lengths

    def _short_range_slope(self, lengths: torch.Tensor) -> torch.Tensor:
        """d/dr of :meth:`_short_range_kernel` (1/Å²)."""
        a, sigma = self.ewald_width, self.sigma
        gauss = torch.exp(-0.5 * (lengths / a) ** 2) / a
        if sigma > 0.0:
            gauss = gauss - torch.exp(-0.5 * (lengths / sigma) ** 2) / sigma
        return -(math.sqrt(2.0 / math.pi) * gauss + self._short_range_kernel(lengths)) / lengths

    def _direct_sum(self, charges, pos, batch):
        """Per-atom energies (e²/Å) of frames without periodicity: all pairs of each frame."""
        centre, neighbour = _all_pairs(batch)
        lengths = torch.linalg.vector_norm(pos[neighbour] - pos[centre], dim=1)
        pair = 0.5 * charges[centre] * charges[neighbour] * self._pair_kernel(lengths)
        return torch.zeros_like(charges).index_add(0, centre, pair)

    @staticmethod
    def _pair_virials(charges, vectors, centre, neighbour, slope):
        """Per-atom virials (e²/Å) of directed pairs of energy ``q_i q_j phi(r) / 2`` (``slope`` = phi'): each
        pair's ``-r ⊗ dE/dr`` half to each end."""
        lengths = torch.linalg.vector_norm(vectors, dim=1)
        scale = -0.25 * charges[centre] * charges[neighbour] * slope(lengths) / lengths
        pair = scale.view(-1, 1, 1) * vectors.unsqueeze(2) * vectors.unsqueeze(1)
        virials = torch.zeros(charges.shape[0], 3, 3, dtype=vectors.dtype, device=vectors.device)
        return virials.index_add(0, centre, pair).index_add(0, neighbour, pair)

    def _ewald(self, charges, pos, cell, pbc, batch, virial: bool = False):
        """Per-atom energies (e²/Å) of fully periodic frames: real space + reciprocal space + self + background;
        with ``virial``, their per-atom virials [n_atoms, 3, 3] instead (the self term has none)."""
        a, sigma = self.ewald_width, self.sigma
        if virial:
            result = torch.zeros(pos.shape[0], 3, 3, dtype=pos.dtype, device=pos.device)
        else:
            result = -charges * charges / (math.sqrt(2.0 * math.pi) * a)
        if self.pair_cutoff > 0.0:
            edge_index, shifts = radius_graph_pbc(pos, cell, pbc, batch, self.pair_cutoff)
            vectors = edge_vectors(pos, cell, edge_index, shifts, batch)
            centre, neighbour = edge_index[0], edge_index[1]
            if virial:
                result = result + self._pair_virials(charges, vectors, centre, neighbour, self._short_range_slope)
            else:
                lengths = torch.linalg.vector_norm(vectors, dim=1)
                pair = 0.5 * charges[centre] * charges[neighbour] * self._short_range_kernel(lengths)
                result = result.index_add(0, centre, pair)

        n_frames = cell.shape[0]
        counts = torch.bincount(batch, minlength=n_frames)
        volumes = torch.linalg.det(cell).abs()
        _check_volumes(volumes, counts, cell)
        net_charge = torch.zeros(n_frames, dtype=charges.dtype, device=charges.device).index_add(0, batch, charges)
        background = -math.pi * net_charge**2 * (a * a - sigma * sigma) / volumes.clamp(min=1e-30)
        shares = (background / counts.clamp(min=1))[batch]  # E_bg ∝ 1/V: its virial is E_bg delta
        result = result + (
            shares.view(-1, 1, 1) * torch.eye(3, dtype=pos.dtype, device=pos.device) if virial else shares
        )

        # One frame at a time: the k vectors (or grid) of each cell differ in number.
        reciprocal = []
        start = 0
        for frame, count in enumerate(counts.tolist()):
            if count == 0:
                continue
            atoms = slice(start, start + count)
            start += count
            if self._use_mesh(count, float(volumes[frame].detach())):
                method = pme_reciprocal_virials if virial else pme_reciprocal
                part = method(charges[atoms], pos[atoms], cell[frame], a, self.k_max, self.pme_order)
            else:
                method = ewald_reciprocal_virials if virial else ewald_reciprocal
                part = method(charges[atoms], pos[atoms], cell[frame], a, self.k_max)
            reciprocal.append(part)
        return result + torch.cat(reciprocal)

    def _use_mesh(self, n_atoms: int, volume: float) -> bool:
        if self.kspace != "auto":
            return self.kspace == "pme"
        half_k_vectors = volume * self.k_max**3 / (12.0 * math.pi**2)
        return n_atoms * half_k_vectors > EWALD_MAX_PRODUCTS


def dipole(
    charges: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor, num_frames: int, pbc: torch.Tensor | None = None
) -> torch.Tensor:
    """Dipole moment ``sum_i q_i r_i`` of each frame, ``[num_frames, 3]`` in e Å (differentiable).

    Meaningful for frames without periodicity; for a neutral frame it does not depend on the origin. For
    periodic frames the result depends on which periodic image of each atom ``pos`` holds: given ``pbc``,
    frames periodic in any direction get zeros instead (the model output ``dipole``).

    Args:
        charges: [n_atoms] e.
        pos: [n_atoms, 3] Å.
        batch: [n_atoms] long, frame of each atom.
        num_frames: number of frames B.
        pbc: [B, 3] bool, or None (every frame's sum).
    """
    moments = charges.to(pos.dtype).unsqueeze(1) * pos
    moments = torch.zeros(num_frames, 3, dtype=pos.dtype, device=pos.device).index_add(0, batch, moments)
    if pbc is None:
        return moments
    return torch.where(pbc.reshape(-1, 3).any(dim=1, keepdim=True), torch.zeros_like(moments), moments)


def _all_pairs(batch):
    """(centre, neighbour) [n_pairs] of every ordered pair of distinct atoms of the same frame."""
    n_atoms = batch.shape[0]
    counts = torch.bincount(batch)
    starts = torch.cumsum(counts, dim=0) - counts
    per_centre = counts[batch]
    centre = torch.repeat_interleave(torch.arange(n_atoms, device=batch.device), per_centre)
    first_pair = torch.cumsum(per_centre, dim=0) - per_centre
    rank = torch.arange(centre.shape[0], device=batch.device) - first_pair[centre]
    neighbour = starts[batch[centre]] + rank
    keep = torch.nonzero(centre != neighbour).squeeze(1)
    return centre[keep], neighbour[keep]


def _prepare(charges, pos, cell, pbc, batch):
    """Checked inputs: charges and cell in the dtype of ``pos``, pbc bool; slabs and wires refused."""
    _check_inputs(charges, pos, cell, pbc, batch)
    charges, cell, pbc = charges.to(pos.dtype), cell.to(pos.dtype), pbc.to(device=pos.device, dtype=torch.bool)
    partial = pbc.any(dim=1) & ~pbc.all(dim=1)
    if bool(partial.any()):
        frame = int(torch.nonzero(partial)[0, 0])
        raise ValueError(
            f"GaussianCoulomb: frame {frame} is periodic along {pbc[frame].tolist()}; Coulomb sums are "
            "supported for frames periodic in all three directions (Ewald) or in none (direct sum), not "
            "for slabs or wires. Make the frame fully periodic with vacuum, or non-periodic."
        )
    return charges, cell, pbc


def _check_volumes(volumes, counts, cell):
    empty = (volumes <= 1e-8 * cell.norm(dim=2).prod(dim=1)) & (counts > 0)
    if bool(empty.any()):
        frame = int(torch.nonzero(empty)[0, 0])
        raise ValueError(
            f"GaussianCoulomb: frame {frame} is periodic but its cell {cell[frame].tolist()} has no volume; "
            "give three independent lattice vectors (Å)."
        )


def _check_inputs(charges, pos, cell, pbc, batch):
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"GaussianCoulomb: pos must be [n_atoms, 3], got {tuple(pos.shape)}")
    if tuple(charges.shape) != (pos.shape[0],):
        raise ValueError(f"GaussianCoulomb: charges must be [n_atoms] = [{pos.shape[0]}], got {tuple(charges.shape)}")
    if cell.ndim != 3 or cell.shape[1:] != (3, 3) or tuple(pbc.shape) != (cell.shape[0], 3):
        raise ValueError(
            f"GaussianCoulomb: cell must be [n_frames, 3, 3] and pbc [n_frames, 3], got {tuple(cell.shape)} "
            f"and {tuple(pbc.shape)}"
        )
    if tuple(batch.shape) != (pos.shape[0],):
        raise ValueError(f"GaussianCoulomb: batch must be [n_atoms] = [{pos.shape[0]}], got {tuple(batch.shape)}")
    if batch.numel() > 1 and not bool((batch[1:] >= batch[:-1]).all()):
        raise ValueError("GaussianCoulomb: batch must be sorted (atoms of each frame contiguous)")
