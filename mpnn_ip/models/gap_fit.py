"""Closed-form fit of :class:`mpnn_ip.models.gap.GAP` (sparse GP, "projected process"; Bartók & Csányi 2015).

Solves ``min_θ |Λ^{-1/2} (y - K θ)|² + αᵀ K_MM α + |shift|² / s²`` with θ = (α, shift), where y
holds total energies minus Σ E0 (eV) and force components (eV/Å), K their design matrix
(energy rows: Σ_{i ∈ frame} k(x_i, x_m) and species counts; force rows: minus the derivative of
the energy row w.r.t. that coordinate) and Λ the noise (σ_E √n_atoms, σ_F). The whitened
system ``[Λ^{-1/2} K; L_MMᵀ 0; 0 I/s]`` is solved by one QR factorisation in float64;
``Σ = (RᵀR)⁻¹`` is the joint posterior covariance of (α, shift), stored as R⁻¹. Force rows come from forward-mode
autograd through the descriptors: one pass per (local atom index, direction) perturbs that
coordinate in every frame of a batch at once (frames are independent).
"""

from __future__ import annotations

import math
import time

import torch
import torch.autograd.forward_ad as fwAD
from torch_geometric.utils import scatter

from mpnn_ip.data.atomic_graph import collate, to_inputs

#: Prior standard deviation (eV) of the fitted per-species energy shift: weak, so the data decides.
SHIFT_PRIOR_STD = 100.0


def select_sparse(environments: torch.Tensor, count: int, method: str) -> torch.Tensor:
    """Indices of ``count`` representative rows of ``environments [n, D]`` (all when count >= n).

    ``"cur"``: largest statistical leverage on the top ``count`` left singular vectors;
    ``"fps"``: farthest-point sampling from the row farthest from the mean.
    """
    n = environments.shape[0]
    if count >= n:
        return torch.arange(n)
    if method == "cur":
        u, _, _ = torch.linalg.svd(environments, full_matrices=False)
        leverage = (u[:, :count] ** 2).sum(-1)
        return torch.argsort(leverage, descending=True, stable=True)[:count]
    chosen = [int(torch.argmax(torch.linalg.norm(environments - environments.mean(0), dim=-1)))]
    distance = torch.linalg.norm(environments - environments[chosen[0]], dim=-1)
    for _ in range(count - 1):
        chosen.append(int(torch.argmax(distance)))
        distance = torch.minimum(distance, torch.linalg.norm(environments - environments[chosen[-1]], dim=-1))
    return torch.tensor(chosen)


def _batches(model, graphs, atoms_per_batch):
    """Frames sorted by size, collated up to ``atoms_per_batch`` atoms; each with its graph (:meth:`Potential.graph`).

    Large batches make the fit fast: the force rows cost 3 x (largest frame) passes over each batch.
    """
    # Frames without force labels batch together and need no force passes.
    order = sorted(range(len(graphs)), key=lambda k: (bool(graphs[k].has_forces.any()), graphs[k].num_nodes))
    device = model.sparse_points.device
    chunks, current, atoms = [], [], 0
    for k in order:
        if current and atoms + graphs[k].num_nodes > atoms_per_batch:
            chunks.append(current)
            current, atoms = [], 0
        current.append(k)
        atoms += graphs[k].num_nodes
    chunks.append(current)
    for chunk in chunks:
        inputs = {k: v.to(device) for k, v in to_inputs(collate([graphs[k] for k in chunk])).items()}
        inputs.update(model.graph(inputs))  # species, edges (built once) and float64 positions and cell
        yield inputs


def _descriptors(model, inputs, pos):
    graph = model.graph(inputs, positions=pos)
    return model.descriptor(graph["species"], graph["edge_index"], graph["edge_vectors"])


def _frame_rows(model, inputs, x):
    """Energy rows ``[B, M + S]``: Σ_i k(x_i, x_m) and the species counts."""
    num_graphs = inputs["cell"].shape[0]
    counts = torch.nn.functional.one_hot(inputs["species"], model.num_species).to(x.dtype)
    per_atom = torch.cat([model.kernel(x, inputs["species"]), counts], dim=-1)
    return per_atom.new_zeros((num_graphs, per_atom.shape[1])).index_add(0, inputs["batch"], per_atom)


def _design_rows(model, inputs, sigma_energy, sigma_forces):
    """(rows, targets, noise, is_force) of one batch."""
    species, batch, ptr = inputs["species"], inputs["batch"], inputs["ptr"]
    sizes = ptr[1:] - ptr[:-1]
    rows, targets, noise, is_force = [], [], [], []
    with torch.no_grad():
        energy_rows = _frame_rows(model, inputs, _descriptors(model, inputs, inputs["pos"]))
    e0 = scatter(model.e0[species], batch, dim=0, dim_size=sizes.shape[0], reduce="sum")
    has_energy = inputs["has_energy"].reshape(-1)
    rows.append(energy_rows[has_energy])
    targets.append((inputs["energy"].reshape(-1).to(torch.float64) - e0)[has_energy])
    noise.append(sigma_energy * sizes[has_energy].to(torch.float64).sqrt())
    is_force.append(torch.zeros(int(has_energy.sum()), dtype=torch.bool))

    has_forces = inputs["has_forces"].reshape(-1)
    local = torch.arange(species.shape[0], device=species.device) - ptr[batch]
    forces = inputs["forces"].to(torch.float64)
    for atom in range(int(sizes.max())):
        frames = torch.nonzero((sizes > atom) & has_forces).flatten()
        if frames.numel() == 0:
            continue
        for direction in range(3):
            tangent = torch.zeros_like(inputs["pos"])
            tangent[local == atom, direction] = 1.0
            with fwAD.dual_level():
                pos = fwAD.make_dual(inputs["pos"], tangent)
                derivative = fwAD.unpack_dual(_frame_rows(model, inputs, _descriptors(model, inputs, pos))).tangent
            rows.append(-derivative[frames].detach())
            targets.append(forces[ptr[frames] + atom, direction])
            noise.append(torch.full((frames.numel(),), sigma_forces, dtype=torch.float64))
            is_force.append(torch.ones(frames.numel(), dtype=torch.bool))
    return rows, targets, noise, is_force


def fit_gap(model, train_graphs, atoms_per_batch: int = 8192) -> dict:
    """Choose sparse points from ``train_graphs`` (AtomicGraph list) and fit α, Σ and the shifts in closed form.

    Writes the model's buffers (sparse points, α, shifts, Cholesky factor of K_MM, R⁻¹) in place.
    Returns timings (s), sizes and training residuals (RMSE: energy eV/atom, forces eV/Å).
    """
    original_dtype = model.dtype
    model.to(torch.float64)
    start = time.perf_counter()
    batches = list(_batches(model, train_graphs, atoms_per_batch))
    environments, env_species = [], []
    with torch.no_grad():
        for inputs in batches:
            environments.append(_descriptors(model, inputs, inputs["pos"]))
            env_species.append(inputs["species"])
    environments, env_species = torch.cat(environments), torch.cat(env_species)
    per_species = model.num_sparse
    points = torch.zeros_like(model.sparse_points)
    active = torch.zeros_like(model.sparse_active)
    for s in range(model.num_species):
        mine = environments[env_species == s]
        chosen = select_sparse(mine, per_species, model.sparse_method)
        points[s * per_species : s * per_species + chosen.numel()] = mine[chosen]
        active[s * per_species : s * per_species + chosen.numel()] = True
    model.sparse_points.copy_(points)
    model.sparse_active.copy_(active)
    time_sparse = time.perf_counter() - start

    rows, targets, noise, is_force = [], [], [], []
    for inputs in batches:
        for collected, part in zip(
            (rows, targets, noise, is_force), _design_rows(model, inputs, model.sigma_energy, model.sigma_forces)
        ):
            collected += part
    design = torch.cat(rows)
    targets, noise, is_force = torch.cat(targets), torch.cat(noise), torch.cat(is_force).to(design.device)
    keep = torch.cat([active, torch.ones(model.num_species, dtype=torch.bool, device=active.device)])
    design = design[:, keep]
    time_design = time.perf_counter() - start - time_sparse

    num_active = int(active.sum())
    with torch.no_grad():
        kmm = model.kernel(points[active], model.sparse_species[active])[:, active]
    kmm = 0.5 * (kmm + kmm.T) + model.jitter * model.delta**2 * torch.eye(
        num_active, dtype=kmm.dtype, device=kmm.device
    )
    chol = torch.linalg.cholesky(kmm)
    num_params = num_active + model.num_species
    prior = torch.zeros(num_params, num_params, dtype=kmm.dtype, device=kmm.device)
    prior[:num_active, :num_active] = chol.T
    prior[num_active:, num_active:] = torch.eye(model.num_species, dtype=kmm.dtype) / SHIFT_PRIOR_STD
    system = torch.cat([design / noise.unsqueeze(-1), prior])
    rhs = torch.cat([targets / noise, torch.zeros(num_params, dtype=kmm.dtype, device=kmm.device)])
    q, r = torch.linalg.qr(system)
    theta = torch.linalg.solve_triangular(r, (q.T @ rhs).unsqueeze(-1), upper=True).squeeze(-1)
    r_inverse = torch.linalg.solve_triangular(r, torch.eye(num_params, dtype=r.dtype, device=r.device), upper=True)

    size = active.shape[0]
    index = torch.nonzero(active).flatten()
    alpha = torch.zeros(size, dtype=torch.float64, device=active.device)
    alpha[index] = theta[:num_active]
    full_cholesky = torch.eye(size, dtype=torch.float64, device=active.device)
    full_cholesky[index.unsqueeze(-1), index] = chol
    with_shifts = torch.cat([index, size + torch.arange(model.num_species, device=index.device)])
    full_root = torch.zeros(
        size + model.num_species, size + model.num_species, dtype=torch.float64, device=active.device
    )
    full_root[with_shifts.unsqueeze(-1), with_shifts] = r_inverse
    model.alpha.copy_(alpha)
    model.species_shift.copy_(theta[num_active:])
    model.kmm_cholesky.copy_(full_cholesky)
    model.posterior_root.copy_(full_root)
    time_solve = time.perf_counter() - start - time_sparse - time_design
    model.to(original_dtype)

    residual = design @ theta - targets
    energy_residual = residual[~is_force] / (noise[~is_force] / model.sigma_energy) ** 2
    return {
        "num_sparse_per_species": [
            int(active[s * per_species : (s + 1) * per_species].sum()) for s in range(model.num_species)
        ],
        "num_energy_rows": int((~is_force).sum()),
        "num_force_rows": int(is_force.sum()),
        "time_sparse_selection_s": time_sparse,
        "time_design_matrix_s": time_design,
        "time_solve_s": time_solve,
        "time_total_s": time.perf_counter() - start,
        "train_energy_rmse_per_atom": float(energy_residual.pow(2).mean().sqrt()) if (~is_force).any() else math.nan,
        "train_force_rmse": float(residual[is_force].pow(2).mean().sqrt()) if is_force.any() else math.nan,
    }
