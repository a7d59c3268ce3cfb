"""The test of the tests: deliberately broken potentials must fail the physics check meant to catch them.

Each broken model is the reference potential (which passes everything, see test_physics.py)
with one physical law violated, so a failure can only come from that violation.
"""

from __future__ import annotations

import copy

import physics
import pytest
import torch
from conftest import E0S, SPECIES
from reference_potentials import PairThreeBodyPotential
from torch_geometric.utils import scatter

from mpnn_ip.data.atomic_graph import to_inputs

R_MAX = 4.0


def _build(cls, e0s=None):
    return cls(SPECIES, R_MAX, e0s).to(torch.float64).eval()


def _edge_lengths(edge_vectors):
    return torch.linalg.norm(edge_vectors, dim=-1)


class UsesAbsoluteXComponent(PairThreeBodyPotential):
    """Adds |x-component| of each edge vector: not rotation invariant."""

    def node_energies(self, species, edge_index, edge_vectors, batch, num_graphs):
        extra = 0.2 * edge_vectors[:, 0].abs() * self.cutoff_envelope(_edge_lengths(edge_vectors))
        out = super().node_energies(species, edge_index, edge_vectors, batch, num_graphs)
        return out + scatter(extra, edge_index[0], dim=0, dim_size=species.shape[0], reduce="sum")


class DependsOnAbsolutePosition(PairThreeBodyPotential):
    """Adds Σ sin(x_i) to the energy: not translation invariant."""

    def forward(self, inputs, compute_forces=True, compute_stress=False):
        inputs = to_inputs(inputs)
        out = super().forward(inputs, compute_forces, compute_stress)
        extra = 0.1 * torch.sin(inputs["pos"][:, 0].to(self.dtype))
        out["node_energy"] = out["node_energy"] + extra
        out["energy"] = out["energy"] + scatter(extra, inputs["batch"], dim=0, dim_size=out["energy"].shape[0])
        return out


class DependsOnAtomOrder(PairThreeBodyPotential):
    """Weights each atom's energy by its index: not permutation equivariant."""

    def node_energies(self, species, edge_index, edge_vectors, batch, num_graphs):
        out = super().node_energies(species, edge_index, edge_vectors, batch, num_graphs)
        return out * (1.0 + 0.01 * torch.arange(out.shape[0], dtype=out.dtype))


class HardCutoff(PairThreeBodyPotential):
    """Pair term e^{−r} without envelope: energy jumps at r_max."""

    def node_energies(self, species, edge_index, edge_vectors, batch, num_graphs):
        pair = 0.5 * torch.exp(-_edge_lengths(edge_vectors))
        return scatter(pair, edge_index[0], dim=0, dim_size=species.shape[0], reduce="sum")


class LinearEnvelope(PairThreeBodyPotential):
    """Pair term e^{−r} (1 − r/r_max): energy continuous at r_max, forces jump."""

    def node_energies(self, species, edge_index, edge_vectors, batch, num_graphs):
        lengths = _edge_lengths(edge_vectors)
        pair = 0.5 * torch.exp(-lengths) * (1.0 - lengths / self.r_max)
        return scatter(pair, edge_index[0], dim=0, dim_size=species.shape[0], reduce="sum")


class MixesFrames(PairThreeBodyPotential):
    """Adds the batch-wide mean edge length to every atom: frames of a batch are coupled."""

    def node_energies(self, species, edge_index, edge_vectors, batch, num_graphs):
        out = super().node_energies(species, edge_index, edge_vectors, batch, num_graphs)
        return out + 0.05 * _edge_lengths(edge_vectors).mean()


class DependsOnAtomCount(PairThreeBodyPotential):
    """Adds 0.01 eV × (atoms in the frame) to every atom: not local, not extensive, lone atoms off E0."""

    def node_energies(self, species, edge_index, edge_vectors, batch, num_graphs):
        out = super().node_energies(species, edge_index, edge_vectors, batch, num_graphs)
        count = scatter(torch.ones_like(out), batch, dim=0, dim_size=num_graphs, reduce="sum")
        return out + 0.01 * count[batch]


class LoneAtomOffset(PairThreeBodyPotential):
    """Adds a constant 0.1 eV per atom on top of E0: a lone atom's energy is not E0."""

    def node_energies(self, species, edge_index, edge_vectors, batch, num_graphs):
        return super().node_energies(species, edge_index, edge_vectors, batch, num_graphs) + 0.1


class ScaledForces(PairThreeBodyPotential):
    """Forces 1% too large."""

    def forward(self, inputs, compute_forces=True, compute_stress=False):
        out = super().forward(inputs, compute_forces, compute_stress)
        if "forces" in out:
            out["forces"] = 1.01 * out["forces"]
        return out


class WrongStress(PairThreeBodyPotential):
    """Virial and stress 1% too large plus a constant xx offset: wrong magnitude and not a rotating tensor."""

    def forward(self, inputs, compute_forces=True, compute_stress=False):
        out = super().forward(inputs, compute_forces, compute_stress)
        if "stress" in out:
            offset = torch.zeros(3, 3, dtype=self.dtype)
            offset[0, 0] = 0.05
            out["stress"] = 1.01 * out["stress"] + 0.01 * offset
            out["virial"] = 1.01 * out["virial"] + offset
        return out


class IgnoresPeriodicImages(PairThreeBodyPotential):
    """Builds its graph as if no direction were periodic."""

    def forward(self, inputs, compute_forces=True, compute_stress=False):
        inputs = to_inputs(inputs)
        inputs["pbc"] = torch.zeros_like(inputs["pbc"])
        return super().forward(inputs, compute_forces, compute_stress)


class LosesFloat32Precision(PairThreeBodyPotential):
    """Adds and removes 1e6 eV in the model's dtype: exact in float64, ~0.06 eV rounding in float32."""

    def node_energies(self, species, edge_index, edge_vectors, batch, num_graphs):
        out = super().node_energies(species, edge_index, edge_vectors, batch, num_graphs)
        return (out + 1e6) - 1e6


def test_broken_rotation_invariance_is_caught(triclinic_crystal):
    with pytest.raises(AssertionError, match="under rotation"):
        physics.check_rotation_equivariance(_build(UsesAbsoluteXComponent), triclinic_crystal)


def test_stress_that_does_not_rotate_is_caught(triclinic_crystal):
    with pytest.raises(AssertionError, match=r"(stress|virial) \(under"):
        physics.check_rotation_equivariance(_build(WrongStress), triclinic_crystal)


def test_broken_translation_invariance_is_caught(molecule):
    with pytest.raises(AssertionError, match="under translation"):
        physics.check_translation_invariance(_build(DependsOnAbsolutePosition), molecule)


def test_broken_permutation_equivariance_is_caught(molecule):
    with pytest.raises(AssertionError, match="permutation"):
        physics.check_permutation_equivariance(_build(DependsOnAtomOrder), molecule)


def test_wrong_forces_are_caught(molecule):
    with pytest.raises(AssertionError, match="forces of structure"):
        physics.check_forces_finite_differences(_build(ScaledForces), molecule)


def test_wrong_stress_is_caught(triclinic_crystal):
    with pytest.raises(AssertionError, match="(virial|stress) of structure"):
        physics.check_stress_finite_differences(_build(WrongStress), triclinic_crystal)


def test_hard_cutoff_is_caught():
    with pytest.raises(AssertionError, match="cutoff: Cu-Au dimer"):
        physics.check_cutoff_smoothness(_build(HardCutoff), [("Cu", "Au")])


def test_discontinuous_force_at_cutoff_is_caught():
    with pytest.raises(
        AssertionError, match=r"cutoff: Cu-Au dimer (force does not go to 0 smoothly|at .* max \|force\| [1-9])"
    ):
        physics.check_cutoff_smoothness(_build(LinearEnvelope), [("Cu", "Au")])


def test_interaction_beyond_cutoff_is_caught():
    with pytest.raises(AssertionError, match="must be 0 at and beyond r_max"):
        physics.check_cutoff_smoothness(_build(DependsOnAtomCount), [("H", "O")])


def test_frame_mixing_breaks_batch_consistency(mixed_batch):
    with pytest.raises(AssertionError, match="in a batch vs alone"):
        physics.check_batch_consistency(_build(MixesFrames), mixed_batch)


def test_frame_mixing_gradient_is_caught(mixed_batch):
    with pytest.raises(AssertionError, match="not independent"):
        physics.check_no_gradient_between_frames(_build(MixesFrames), mixed_batch)


def test_ignored_periodic_images_are_caught(small_cell):
    with pytest.raises(AssertionError, match="lattice vector"):
        physics.check_periodic_image_invariance(_build(IgnoresPeriodicImages), small_cell)


def test_ignored_periodic_images_break_extensivity(triclinic_crystal):
    with pytest.raises(AssertionError, match="supercell"):
        physics.check_supercell_extensivity(_build(IgnoresPeriodicImages), triclinic_crystal)


def test_non_local_energy_is_caught(molecule, water):
    with pytest.raises(AssertionError, match="sum of each alone"):
        physics.check_separated_molecules_additive(_build(DependsOnAtomCount), molecule, water)


def test_lone_atom_energy_off_e0_is_caught():
    with pytest.raises(AssertionError, match="differs from its E0"):
        physics.check_isolated_atoms(_build(LoneAtomOffset, e0s=E0S), E0S)


def test_float32_precision_loss_is_caught(molecule):
    with pytest.raises(AssertionError, match="float32 vs float64"):
        model = _build(LosesFloat32Precision)
        physics.check_float32_matches_float64(model, copy.deepcopy(model).to(torch.float32), [molecule])


def test_reference_potential_passes_isolated_atom_check():
    physics.check_isolated_atoms(_build(PairThreeBodyPotential, e0s=E0S), E0S)
