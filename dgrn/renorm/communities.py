"""Communities from the Laplacian RG flow: ``dgrn.graph.find_communities(graph, method="lrg")``.

Listed in :data:`dgrn.graph.communities.COMMUNITY_METHODS` as ``"dgrn.renorm.communities:lrg_communities"``: the
graph layer sits below this one and imports it only when the method is called.
"""
from __future__ import annotations

import warnings
from typing import Any

import scipy.sparse as sp
import torch

from dgrn.graph.convert import edge_weights, strongest_in_edges, to_edge_index
from dgrn.graph.quality import directed_modularity
from dgrn.renorm.flow import RGFlowStoppedEarly, rg_flow

__all__ = ["lrg_levels", "lrg_communities"]


def lrg_levels(adj: sp.csr_matrix, levels: int = 4, weights: str = "positive", max_in_degree: int | None = None,
               **flow_options: Any) -> list[torch.Tensor]:
    """Memberships of every level of :func:`dgrn.renorm.rg_flow` on the graph, fine to coarse.

    ``adj[i, j]`` is the weight of ``j -> i`` (the coupling convention of :mod:`dgrn.graph`); the RG flow takes
    ``A[i, j]`` = weight of ``i -> j``, so it receives the transpose. Negative couplings are dropped
    (``weights="positive"``) or made positive (``"abs"``): diffusion needs non-negative weights. Inferred
    coupling matrices are dense (every pair gets a small, noisy estimate); ``max_in_degree`` runs the flow on the
    strongest in-edges of each node only (default ``None``: all edges; on the bench networks neither choice made
    the flow reach the community scale reliably).
    """
    if weights == "signed":
        raise ValueError("method 'lrg' needs non-negative weights: use weights='positive' or 'abs'")
    w = edge_weights(adj, weights)
    if max_in_degree is not None:
        w = strongest_in_edges(w, max_in_degree)
    if w.nnz == 0:
        raise ValueError("the graph has no usable edges: communities are undefined (every node is isolated)")
    with warnings.catch_warnings():  # `levels` is a ceiling here: the flow runs as far as the graph allows
        warnings.simplefilter("ignore", RGFlowStoppedEarly)
        flow = rg_flow(sp.csr_array(w.T), levels=levels, **flow_options)
    if not flow:
        raise ValueError("the Laplacian RG flow merged no nodes at any level: no communities")
    return [level.membership for level in flow]


def lrg_communities(adj: sp.csr_matrix, levels: int = 4, weights: str = "positive", max_in_degree: int | None = None,
                    **flow_options: Any) -> torch.Tensor:
    """The level of the RG flow with the highest directed modularity on the (whole) graph: a label-free choice of
    scale."""
    candidates = lrg_levels(adj, levels, weights, max_in_degree, **flow_options)
    edge_index, edge_weight = to_edge_index(edge_weights(adj, weights))
    scores = [float(directed_modularity(torch.nn.functional.one_hot(lab).float(), edge_index, edge_weight)[0])
              for lab in candidates]  # a loop over the few levels of the flow
    return candidates[max(range(len(scores)), key=scores.__getitem__)]
