"""Graph inputs accepted across dgrn: dense ``(N, N)`` tensors/arrays, scipy sparse matrices, or
``(edge_index, edge_weight, num_nodes)`` triples (PyG convention: ``edge_index[0]`` = source ``j``,
``edge_index[1]`` = target ``i`` of the coupling ``W[i, j]``)."""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

__all__ = ["as_adjacency", "to_edge_index", "edge_weights", "strongest_in_edges"]

WEIGHT_MODES = ("positive", "abs", "signed")


def as_adjacency(graph: Any) -> sp.csr_matrix:
    """``(N, N)`` float64 CSR matrix ``A`` with ``A[i, j]`` the weight of the edge ``j -> i`` (explicit zeros
    dropped). Raises on non-square, non-finite or empty input."""
    if isinstance(graph, tuple):
        if len(graph) != 3:
            raise ValueError("a graph tuple must be (edge_index, edge_weight, num_nodes)")
        edge_index, edge_weight, num_nodes = graph
        ei = torch.as_tensor(edge_index).long().cpu()
        if ei.dim() != 2 or ei.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(ei.shape)}")
        num_nodes = int(num_nodes)
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= num_nodes):
            raise ValueError(f"edge_index refers to nodes outside [0, {num_nodes})")
        w = torch.ones(ei.shape[1], dtype=torch.float64) if edge_weight is None else \
            torch.as_tensor(edge_weight).double().cpu().reshape(-1)
        if w.shape[0] != ei.shape[1]:
            raise ValueError(f"edge_weight has {w.shape[0]} entries for {ei.shape[1]} edges")
        mat = sp.coo_matrix((w.numpy(), (ei[1].numpy(), ei[0].numpy())), shape=(num_nodes, num_nodes)).tocsr()
    elif sp.issparse(graph):
        mat = sp.csr_matrix(graph, dtype=np.float64)
    else:
        arr = graph.detach().cpu().double().numpy() if isinstance(graph, Tensor) else np.asarray(graph, dtype=np.float64)
        if arr.ndim != 2:
            raise ValueError(f"a dense graph must be an (N, N) matrix, got shape {arr.shape}")
        mat = sp.csr_matrix(arr)
    if mat.shape[0] != mat.shape[1]:
        raise ValueError(f"the adjacency matrix must be square, got shape {mat.shape}")
    if mat.shape[0] == 0:
        raise ValueError("the graph has no nodes")
    if not np.isfinite(mat.data).all():
        raise ValueError("the graph has NaN or infinite edge weights")
    mat.sum_duplicates()
    mat.eliminate_zeros()
    return mat


def edge_weights(adj: sp.csr_matrix, mode: str = "positive") -> sp.csr_matrix:
    """Weights that community detection sees: ``"positive"`` keeps excitatory couplings (negative ones
    dropped), ``"abs"`` uses ``|W|``, ``"signed"`` keeps the sign (for methods that handle it)."""
    if mode not in WEIGHT_MODES:
        raise ValueError(f"unknown weights mode {mode!r}; valid: {list(WEIGHT_MODES)}")
    if mode == "signed":
        return adj
    out = abs(adj) if mode == "abs" else adj.maximum(0)
    out = sp.csr_matrix(out)
    out.eliminate_zeros()
    return out


def to_edge_index(adj: sp.csr_matrix) -> tuple[Tensor, Tensor]:
    """``(edge_index (2, E) long, edge_weight (E,) float32)`` of ``A`` (source row 0, target row 1)."""
    coo = adj.tocoo()
    edge_index = torch.from_numpy(np.stack([coo.col, coo.row])).long()
    return edge_index, torch.from_numpy(coo.data).float()


def strongest_in_edges(adj: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` in-edges of largest ``|weight|`` of every node (row ``i`` of ``A``); ties by column.

    Inferred coupling matrices are dense (every pair gets a small estimate); a message-passing network needs the
    informative edges only, and ``k N`` edges instead of ``N^2`` (vectorized: one sort, no loop over nodes)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    adj = sp.csr_matrix(adj)
    counts = np.diff(adj.indptr)
    if counts.max(initial=0) <= k:
        return adj
    rows = np.repeat(np.arange(adj.shape[0]), counts)
    order = np.lexsort((adj.indices, -np.abs(adj.data), rows))  # by row, then |w| descending
    rank = np.arange(order.size) - adj.indptr[rows[order]]
    keep = order[rank < k]
    out = sp.csr_matrix((adj.data[keep], (rows[keep], adj.indices[keep])), shape=adj.shape)
    out.sort_indices()
    return out
