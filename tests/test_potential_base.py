"""The base class mpnn_ip.models.base.Potential: forces, stress and virial conventions, E0,
species errors, input forms (Batch, dict, single graph) and precomputed vs built-in edges.
"""

from __future__ import annotations

import numpy as np
import physics
import pytest
import torch
from ase.calculators.lj import LennardJones
from ase.neighborlist import neighbor_list
from conftest import E0S, SPECIES
from reference_potentials import PairThreeBodyPotential
from torch_geometric.utils import scatter

from mpnn_ip.data.atomic_graph import AtomicGraph, collate, to_inputs
from mpnn_ip.errors import DataError
from mpnn_ip.graph import radius_graph_pbc
from mpnn_ip.models.base import Potential, normalize_species

R_MAX = 4.0


class SmoothLennardJones(Potential):
    """ASE's ``LennardJones(smooth=True)``: 4ε((σ/r)¹² − (σ/r)⁶) times its C¹ switch from r_o to r_c (eV, Å)."""

    def __init__(self, species, r_max, e0s=None, sigma=2.2, epsilon=0.3, r_onset=3.0):
        super().__init__(species, r_max, e0s)
        self.sigma, self.epsilon, self.r_onset = sigma, epsilon, r_onset

    def node_energies(self, species, edge_index, edge_vectors, batch, num_graphs):
        r2 = (edge_vectors**2).sum(-1)
        c6 = (self.sigma**2 / r2) ** 3
        rc2, ro2 = self.r_max**2, self.r_onset**2
        switch = torch.where(
            r2 < ro2, torch.ones_like(r2), (rc2 - r2) ** 2 * (rc2 + 2 * r2 - 3 * ro2) / (rc2 - ro2) ** 3
        )
        switch = torch.where(r2 < rc2, switch, torch.zeros_like(r2))
        pair = 0.5 * 4 * self.epsilon * (c6**2 - c6) * switch
        return scatter(pair, edge_index[0], dim=0, dim_size=species.shape[0], reduce="sum")


def _reference(e0s=None, dtype=torch.float64):
    return PairThreeBodyPotential(SPECIES, R_MAX, e0s).to(dtype).eval()


@pytest.mark.parametrize("fixture", ["triclinic_crystal", "slab", "molecule", "small_cell"])
def test_energy_forces_stress_match_ase_lennard_jones(request, fixture):
    """Energy, forces and stress (ASE sign, eV/Å³) agree with ASE's own smooth Lennard-Jones calculator."""
    atoms = request.getfixturevalue(fixture)
    model = SmoothLennardJones(SPECIES, R_MAX).to(torch.float64).eval()
    out = physics.evaluate(model, atoms)
    calc_atoms = atoms.copy()
    calc_atoms.calc = LennardJones(sigma=model.sigma, epsilon=model.epsilon, rc=R_MAX, ro=model.r_onset, smooth=True)
    name = physics.structure_name(atoms)
    physics.assert_close(
        out["energy"][0], calc_atoms.get_potential_energy(), rtol=1e-10, what="energy vs ASE", structure=name
    )
    physics.assert_close(out["forces"], calc_atoms.get_forces(), rtol=1e-10, what="forces vs ASE", structure=name)
    if atoms.pbc.all():
        ase_stress = calc_atoms.get_stress(voigt=False)
        physics.assert_close(out["stress"][0], ase_stress, rtol=1e-10, what="stress vs ASE", structure=name)


def test_stress_is_minus_virial_over_volume(triclinic_crystal):
    out = physics.evaluate(_reference(), triclinic_crystal)
    volume = abs(np.linalg.det(triclinic_crystal.cell.array))
    torch.testing.assert_close(out["stress"], -out["virial"] / volume, rtol=1e-12, atol=0)
    torch.testing.assert_close(out["virial"], out["virial"].transpose(1, 2), rtol=1e-12, atol=1e-14)


def test_molecule_virial_is_sum_of_positions_times_forces_and_stress_is_zero(molecule):
    """Without a cell, the virial is Σ_i r_i ⊗ F_i (eV) and the stress (no volume) is zero."""
    out = physics.evaluate(_reference(), molecule)
    positions = torch.as_tensor(molecule.positions)
    expected = positions.T @ out["forces"]
    torch.testing.assert_close(out["virial"][0], expected, rtol=1e-10, atol=1e-12)
    assert torch.all(out["stress"] == 0)


def test_energy_is_sum_of_node_energies_plus_e0(molecule):
    plain, shifted = _reference(), _reference(e0s=E0S)
    a, b = physics.evaluate(plain, molecule), physics.evaluate(shifted, molecule)
    e0 = torch.tensor([E0S[s] for s in molecule.get_chemical_symbols()], dtype=torch.float64)
    torch.testing.assert_close(b["node_energy"], a["node_energy"] + e0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b["energy"], b["node_energy"].sum().reshape(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b["forces"], a["forces"], rtol=0, atol=0)


def test_e0s_accept_symbols_or_atomic_numbers_and_ignore_unknown_species():
    by_symbol = PairThreeBodyPotential(SPECIES, R_MAX, {"H": -1.0, "O": -4.0, "Fe": -9.0})
    by_number = PairThreeBodyPotential([1, 6, 8, 29, 79], R_MAX, {1: -1.0, 8: -4.0})
    torch.testing.assert_close(by_symbol.e0, by_number.e0)
    assert by_symbol.species == [1, 6, 8, 29, 79]


def test_species_normalisation_and_errors():
    assert normalize_species(["O", 1, "H", 8]) == [1, 8]
    with pytest.raises(ValueError, match="Xx"):
        normalize_species(["H", "Xx"])
    with pytest.raises(ValueError, match="at least one species"):
        normalize_species([])


def test_unknown_element_in_input_raises_data_error_naming_it(molecule):
    model = PairThreeBodyPotential(["C", "H"], R_MAX).to(torch.float64).eval()
    with pytest.raises(DataError, match=r"\['O'\].*\['H', 'C'\]"):
        physics.evaluate(model, molecule)


def test_batch_dict_and_single_graph_inputs_agree(molecule, triclinic_crystal):
    model = _reference()
    graphs = [AtomicGraph.from_atoms(a) for a in (molecule, triclinic_crystal)]
    batch = collate(graphs)
    from_batch = model(batch, compute_stress=True)
    from_dict = model(to_inputs(batch), compute_stress=True)
    for key in from_batch:
        torch.testing.assert_close(from_batch[key], from_dict[key], rtol=0, atol=0)
    single = model(graphs[1], compute_stress=True)
    torch.testing.assert_close(single["energy"], from_batch["energy"][1:], rtol=1e-12, atol=0)
    torch.testing.assert_close(single["stress"], from_batch["stress"][1:], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("source", ["radius_graph_pbc", "ase"])
def test_precomputed_edges_equal_edges_built_inside(source, mixed_batch):
    model = _reference()
    inputs = physics.model_inputs(mixed_batch)
    if source == "radius_graph_pbc":
        edge_index, cell_shifts = radius_graph_pbc(inputs["pos"], inputs["cell"], inputs["pbc"], inputs["batch"], R_MAX)
    else:
        pieces, offset = [], 0
        for atoms in mixed_batch:
            i, j, shifts = neighbor_list("ijS", atoms, R_MAX)
            pieces.append((np.stack([i, j]) + offset, shifts))
            offset += len(atoms)
        edge_index = torch.as_tensor(np.concatenate([p[0] for p in pieces], axis=1))
        cell_shifts = torch.as_tensor(np.concatenate([p[1] for p in pieces]))
    given = model(dict(inputs, edge_index=edge_index, cell_shifts=cell_shifts), compute_stress=True)
    built = model(inputs, compute_stress=True)
    for key in ("energy", "node_energy", "forces", "stress", "virial"):
        physics.assert_close(
            given[key], built[key], rtol=1e-12, what=f"{key} with {source} edges", structure="mixed batch"
        )


def test_outputs_present_follow_the_flags(triclinic_crystal):
    model = _reference()
    inputs = physics.model_inputs(triclinic_crystal)
    assert set(model(inputs, compute_forces=False)) == {"energy", "node_energy"}
    assert set(model(inputs)) == {"energy", "node_energy", "forces"}
    assert set(model(inputs, compute_forces=False, compute_stress=True)) == {
        "energy",
        "node_energy",
        "stress",
        "virial",
    }
    out = model(inputs, compute_stress=True)
    assert out["energy"].shape == (1,) and out["node_energy"].shape == (4,)
    assert out["forces"].shape == (4, 3) and out["stress"].shape == out["virial"].shape == (1, 3, 3)


def test_stress_without_forces_equals_stress_with_forces(triclinic_crystal):
    model = _reference()
    inputs = physics.model_inputs(triclinic_crystal)
    with_forces = model(inputs, compute_stress=True)["stress"]
    without = model(inputs, compute_forces=False, compute_stress=True)["stress"]
    torch.testing.assert_close(with_forces, without, rtol=1e-12, atol=1e-15)


def test_dtype_follows_the_model(triclinic_crystal):
    inputs = physics.model_inputs(triclinic_crystal)
    for dtype in (torch.float32, torch.float64):
        out = _reference(dtype=dtype)(inputs, compute_stress=True)
        assert all(value.dtype == dtype for value in out.values()), {k: v.dtype for k, v in out.items()}


def test_forces_keep_the_graph_only_while_training(triclinic_crystal):
    """create_graph in training (the force loss needs d forces / d parameters), not at inference."""
    model = _reference()
    inputs = physics.model_inputs(triclinic_crystal)
    assert not model(inputs, compute_stress=True)["forces"].requires_grad
    model.train()
    out = model(inputs, compute_stress=True)
    assert out["forces"].requires_grad and out["stress"].requires_grad
    (out["forces"] ** 2).sum().backward()
    assert model.pair_depth.grad is not None and bool(model.pair_depth.grad.abs().sum() > 0)


def test_atom_without_neighbours_gets_zero_force_and_e0(molecule):
    """A lone atom in a batch has no edges: zero force, energy E0, and the rest of the batch is unaffected."""
    from ase import Atoms

    model = _reference(e0s=E0S)
    lone = Atoms("Cu", positions=[[0.0, 0.0, 0.0]])
    out = physics.evaluate(model, [molecule, lone])
    assert float(out["energy"][1]) == pytest.approx(E0S["Cu"], abs=1e-12)
    assert torch.all(out["forces"][-1] == 0)
    alone = physics.evaluate(model, molecule)
    torch.testing.assert_close(out["forces"][:-1], alone["forces"], rtol=1e-12, atol=1e-14)
