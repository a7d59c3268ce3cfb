"""ASE calculators: :class:`MPNNCalculator` runs any mpnn_ip potential (or checkpoint) in ASE."""

from mpnn_ip.calculators.ase_calculator import MPNNCalculator

__all__ = ["MPNNCalculator"]
