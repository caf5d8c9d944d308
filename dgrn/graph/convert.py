"""Graph inputs accepted across dgrn: dense ``(N, N)`` tensors/arrays, scipy sparse matrices, or
``(edge_index, edge_weight, num_nodes)`` triples (PyG convention: ``edge_index[0]`` = source ``j``,
``edge_index[1]`` = target ``i`` of the coupling ``W[i, j]``)."""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

__all__ = ["as_adjacency", "read_graph", "to_format", "to_edge_index", "edge_weights", "strongest_in_edges"]

WEIGHT_MODES = ("positive", "abs", "signed")


def _check_weights(values: np.ndarray, what: str = "graph", nonnegative: bool = True) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(f"{what} has {int(bad.sum())} NaN or infinite edge weight(s)")
    neg = values < 0
    if nonnegative and neg.any():
        raise ValueError(
            f"{what} has {int(neg.sum())} negative edge weight(s) (min {values.min():.3g}); diffusion needs "
            "nonnegative weights: pass |W| or clip them"
        )


def _check_square(shape: tuple[int, ...], what: str = "graph") -> int:
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{what} must be a square (N, N) adjacency matrix, got shape {tuple(shape)}")
    if shape[0] == 0:
        raise ValueError(f"{what} is empty (0 nodes)")
    return int(shape[0])


def read_graph(graph: Any, *, nonnegative: bool = False) -> tuple[sp.csr_array, dict]:
    """Validate ``graph`` and return ``(A, fmt)``: ``A`` a float64 CSR array without explicit zeros (duplicate edges
    summed), and ``fmt`` describing the input format so results can be returned in it (see :func:`to_format`). Matrix input is taken
    entry by entry; an edge list puts ``edge_weight[e]`` at ``A[edge_index[0, e], edge_index[1, e]]``.
    ``nonnegative`` refuses negative weights (diffusion needs them nonnegative).

    ``graph``: a dense or sparse ``torch.Tensor`` (N, N), a numpy array (N, N), a scipy sparse matrix/array, or a
    tuple ``(edge_index (2, E), edge_weight (E,) or None, num_nodes)``.
    """
    fmt: dict = {"kind": "scipy"}
    if isinstance(graph, (tuple, list)):
        if len(graph) != 3:
            raise ValueError("an edge-list graph is a tuple (edge_index, edge_weight, num_nodes)")
        edge_index, edge_weight, num_nodes = graph
        ei = edge_index.detach().cpu().numpy() if isinstance(edge_index, torch.Tensor) else np.asarray(edge_index)
        if ei.ndim != 2 or ei.shape[0] != 2 or not np.issubdtype(ei.dtype, np.integer):
            raise ValueError(f"edge_index must be an integer array of shape (2, E), got {ei.dtype} {ei.shape}")
        n = int(num_nodes)
        if n <= 0:
            raise ValueError(f"graph is empty (num_nodes = {n})")
        if ei.size and (ei.min() < 0 or ei.max() >= n):
            raise ValueError(f"edge_index has node indices outside [0, {n})")
        if edge_weight is None:
            w = np.ones(ei.shape[1])
            dtype = torch.float32
        else:
            dtype = edge_weight.dtype if isinstance(edge_weight, torch.Tensor) else torch.float64
            w = (edge_weight.detach().cpu().numpy() if isinstance(edge_weight, torch.Tensor)
                 else np.asarray(edge_weight)).astype(np.float64).ravel()
            if w.shape[0] != ei.shape[1]:
                raise ValueError(f"edge_weight has {w.shape[0]} entries for {ei.shape[1]} edges")
        _check_weights(w, nonnegative=nonnegative)
        a = sp.coo_array((w, (ei[0], ei[1])), shape=(n, n)).tocsr()  # duplicates summed
        device = edge_index.device if isinstance(edge_index, torch.Tensor) else torch.device("cpu")
        fmt = {"kind": "edge_list", "dtype": dtype if dtype.is_floating_point else torch.float32, "device": device}
    elif isinstance(graph, torch.Tensor):
        fmt = {"kind": "torch", "dtype": graph.dtype if graph.is_floating_point() else torch.float32,
               "device": graph.device}
        n = _check_square(tuple(graph.shape))
        if graph.is_sparse or graph.layout in (torch.sparse_csr, torch.sparse_csc):
            g = graph.detach().cpu().to_sparse_coo().coalesce()
            idx, val = g.indices().numpy(), g.values().double().numpy()
            _check_weights(val, nonnegative=nonnegative)
            a = sp.coo_array((val, (idx[0], idx[1])), shape=(n, n)).tocsr()
        else:
            dense = graph.detach().cpu().double().numpy()
            _check_weights(dense.ravel(), nonnegative=nonnegative)
            a = sp.csr_array(dense)
    elif sp.issparse(graph):
        n = _check_square(graph.shape)
        a = sp.csr_array(graph, dtype=np.float64)
        a.sum_duplicates()
        _check_weights(a.data, nonnegative=nonnegative)
    else:
        try:
            dense = np.asarray(graph, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"cannot read a graph from {type(graph).__name__}: pass a tensor, an array, a scipy "
                            "sparse matrix or (edge_index, edge_weight, num_nodes)") from err
        n = _check_square(dense.shape)
        _check_weights(dense.ravel(), nonnegative=nonnegative)
        a = sp.csr_array(dense)
        fmt = {"kind": "numpy"}
    a.eliminate_zeros()
    a.sort_indices()
    return a, fmt


def to_format(a: sp.csr_array, fmt: dict) -> Any:
    """Return the CSR array ``a`` in the format recorded by :func:`read_graph`."""
    kind = fmt["kind"]
    if kind == "scipy":
        return a
    if kind == "numpy":
        return a.toarray()
    if kind == "torch":
        return torch.from_numpy(a.toarray()).to(dtype=fmt["dtype"], device=fmt["device"])
    coo = a.tocoo()
    edge_index = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64)).to(fmt["device"])
    edge_weight = torch.from_numpy(coo.data).to(dtype=fmt["dtype"], device=fmt["device"])
    return edge_index, edge_weight, a.shape[0]


def as_adjacency(graph: Any) -> sp.csr_matrix:
    """``(N, N)`` float64 CSR matrix ``A`` with ``A[i, j]`` the weight of the edge ``j -> i`` (explicit zeros
    dropped): a matrix is taken as a coupling matrix, as is; an edge list ``(edge_index, edge_weight, num_nodes)``
    has its sources in ``edge_index[0]``. Raises on non-square, non-finite or empty input (see :func:`read_graph`).
    (The diffusion code reads graphs the other way round: :func:`dgrn.renorm.read_diffusion_graph`, ``i -> j``.)"""
    adj, fmt = read_graph(graph)
    return sp.csr_matrix(adj.T if fmt["kind"] == "edge_list" else adj)


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
