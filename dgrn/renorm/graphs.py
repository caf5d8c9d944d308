"""Graph input for the renormalization code: one validated sparse adjacency, and back to the caller's format.

Convention: ``A[i, j]`` is the weight of the edge ``i -> j`` (scipy / networkx / PyG ``edge_index[0] -> edge_index[1]``).
A coupling matrix ``W`` with ``W[i, j]`` = influence of ``j`` on ``i`` (``dgrn.graph.infer_couplings``) is the graph
``|W|.T``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["as_adjacency", "to_format", "contract", "is_symmetric", "undirected", "load_graph"]

#: formats a graph can come in (and a metagraph is returned in)
FORMATS = ("torch", "numpy", "scipy", "edge_list")


def _check_weights(values: np.ndarray, what: str = "graph") -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(f"{what} has {int(bad.sum())} NaN or infinite edge weight(s)")
    neg = values < 0
    if neg.any():
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


def as_adjacency(graph: Any) -> tuple[sp.csr_array, dict]:
    """Validate ``graph`` and return ``(A, fmt)``: ``A`` a float64 CSR array without explicit zeros (duplicate edges
    summed), and ``fmt`` describing the input format so results can be returned in it (see :func:`to_format`).

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
        _check_weights(w)
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
            _check_weights(val)
            a = sp.coo_array((val, (idx[0], idx[1])), shape=(n, n)).tocsr()
        else:
            dense = graph.detach().cpu().double().numpy()
            _check_weights(dense.ravel())
            a = sp.csr_array(dense)
    elif sp.issparse(graph):
        n = _check_square(graph.shape)
        a = sp.csr_array(graph, dtype=np.float64)
        a.sum_duplicates()
        _check_weights(a.data)
    else:
        try:
            dense = np.asarray(graph, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"cannot read a graph from {type(graph).__name__}: pass a tensor, an array, a scipy "
                            "sparse matrix or (edge_index, edge_weight, num_nodes)") from err
        n = _check_square(dense.shape)
        _check_weights(dense.ravel())
        a = sp.csr_array(dense)
        fmt = {"kind": "numpy"}
    a.eliminate_zeros()
    a.sort_indices()
    return a, fmt


def to_format(a: sp.csr_array, fmt: dict) -> Any:
    """Return the CSR array ``a`` in the format recorded by :func:`as_adjacency`."""
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


def is_symmetric(a: sp.csr_array, rtol: float = 1e-12) -> bool:
    """Whether ``a`` equals its transpose up to ``rtol`` times its largest weight."""
    if a.nnz == 0:
        return True
    diff = abs(a - a.T)
    return diff.nnz == 0 or float(diff.max()) <= rtol * float(abs(a).max())


def undirected(a: sp.csr_array) -> sp.csr_array:
    """``(A + A^T) / 2`` without self-loops: the weights the undirected Laplacians see."""
    s = ((a + a.T) * 0.5).tocsr()
    s.setdiag(0)
    s.eliminate_zeros()
    return s


def contract(a: sp.csr_array, labels: np.ndarray, n_super: int, self_loops: bool = False) -> sp.csr_array:
    """Metagraph ``B = P^T A P`` with ``P[i, labels[i]] = 1``: ``B[a, b]`` sums the weights of all edges from
    supernode ``a`` to supernode ``b`` (direction kept). The intra-supernode weight stays on the diagonal
    (self-loops) when ``self_loops``, else it is dropped."""
    n = a.shape[0]
    p = sp.csr_array((np.ones(n), (np.arange(n), labels)), shape=(n, n_super))
    b = (p.T @ a @ p).tocsr()
    if not self_loops:
        b.setdiag(0)
    b.eliminate_zeros()
    b.sort_indices()
    return b


def load_graph(path: str) -> sp.csr_array:
    """Read a graph file: a scipy ``save_npz`` file; an ``.npz`` holding ``adjacency`` (N, N), or ``edge_index``
    (2, E) with optional ``edge_weight`` and ``num_nodes``, or ``true_couplings`` (a :class:`dgrn.data.SpikeData`
    file: the graph is ``|W|.T``, edges from influencer to influenced); a ``.npy`` dense matrix; a Matrix Market
    ``.mtx``. Never unpickles."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no graph file at {p}")
    if p.suffix == ".mtx":
        import scipy.io

        return as_adjacency(sp.csr_array(scipy.io.mmread(p)))[0]
    if p.suffix == ".npy":
        return as_adjacency(np.load(p, allow_pickle=False))[0]
    if p.suffix != ".npz":
        raise ValueError(f"unsupported graph file {p.name!r}: use .npz, .npy or .mtx")
    with np.load(p, allow_pickle=False) as f:
        keys = set(f.files)
        if {"indices", "indptr", "format", "shape"} <= keys:
            return as_adjacency(sp.load_npz(p))[0]
        if "adjacency" in keys:
            return as_adjacency(f["adjacency"])[0]
        if "edge_index" in keys:
            ei = f["edge_index"]
            n = int(f["num_nodes"]) if "num_nodes" in keys else int(ei.max()) + 1
            return as_adjacency((ei, f["edge_weight"] if "edge_weight" in keys else None, n))[0]
        if "true_couplings" in keys:
            return as_adjacency(np.abs(f["true_couplings"]).T)[0]
    raise KeyError(f"{p} holds no graph (expected a scipy sparse matrix, 'adjacency', 'edge_index' or "
                   f"'true_couplings'; found {sorted(keys)})")
