"""Periodic radius graph (torch-cluster, any device), differentiable edge vectors, neighbour counts."""

from mpnn_ip.graph.neighbours import neighbours_per_atom
from mpnn_ip.graph.radius import radius_graph_pbc
from mpnn_ip.graph.vectors import edge_vectors, strained

__all__ = ["edge_vectors", "neighbours_per_atom", "radius_graph_pbc", "strained"]
