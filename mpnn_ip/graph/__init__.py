"""Periodic radius graph (torch-cluster, any device) and differentiable edge vectors."""

from mpnn_ip.graph.radius import radius_graph_pbc
from mpnn_ip.graph.vectors import edge_vectors

__all__ = ["edge_vectors", "radius_graph_pbc"]
