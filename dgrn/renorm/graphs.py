"""Graph input for the renormalization code: one validated sparse adjacency, and back to the caller's format.

Convention: ``A[i, j]`` is the weight of the edge ``i -> j`` (scipy / networkx / PyG ``edge_index[0] -> edge_index[1]``).
A coupling matrix ``W`` with ``W[i, j]`` = influence of ``j`` on ``i`` (``dgrn.graph.infer_couplings``) is the graph
``W.T``, its negative (inhibitory) weights dropped or made positive (:func:`load_graph`'s ``weights``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from dgrn.graph.convert import edge_weights, read_graph, to_format

__all__ = ["read_diffusion_graph", "to_format", "contract", "is_symmetric", "undirected", "load_graph"]


def read_diffusion_graph(graph: Any) -> tuple[sp.csr_array, dict]:
    """``(A, fmt)`` for diffusion: :func:`dgrn.graph.convert.read_graph` with nonnegative weights (negative ones
    are an error). ``A`` ``(N, N)`` float64 CSR array, ``A[i, j]`` the weight of the edge ``i -> j`` (a matrix is
    taken as is, an edge list puts ``edge_index[0]`` in the rows); ``fmt`` the input's format, for
    :func:`to_format`. (Not :func:`dgrn.graph.as_adjacency`, whose ``A[i, j]`` is the edge ``j -> i``.)"""
    return read_graph(graph, nonnegative=True)


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


def load_graph(path: str, weights: str = "positive") -> sp.csr_array:
    """Read a graph file: a scipy ``save_npz`` file; an ``.npz`` holding ``adjacency`` (N, N), or ``edge_index``
    (2, E) with optional ``edge_weight`` and ``num_nodes``, or ``true_couplings`` (a :class:`dgrn.data.SpikeData`
    file: the graph is ``W.T``, edges from influencer to influenced); a ``.npy`` dense matrix; a Matrix Market
    ``.mtx``. Never unpickles.

    Diffusion needs nonnegative weights; a signed graph (inhibitory couplings) becomes one by ``weights``:
    ``"positive"`` (the default) keeps the positive edges and drops the negative ones, ``"abs"`` takes ``|w|``
    (inhibition between communities then pulls them together as excitation does: on the true couplings of a
    4-community kinetic Ising network of 100 neurons the first level of the flow of ``|W|.T`` puts 73 neurons in one
    supernode, AMI 0.01 with the communities, that of the positive part has AMI 0.61). A nonnegative graph is the
    same either way."""
    from pathlib import Path

    if weights not in ("positive", "abs"):
        raise ValueError(f"weights must be 'positive' or 'abs' (diffusion needs nonnegative weights), got {weights!r}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no graph file at {p}")
    if p.suffix == ".mtx":
        import scipy.io

        return _nonnegative(sp.csr_array(scipy.io.mmread(p)), weights)
    if p.suffix == ".npy":
        return _nonnegative(np.load(p, allow_pickle=False), weights)
    if p.suffix != ".npz":
        raise ValueError(f"unsupported graph file {p.name!r}: use .npz, .npy or .mtx")
    with np.load(p, allow_pickle=False) as f:
        keys = set(f.files)
        if {"indices", "indptr", "format", "shape"} <= keys:
            return _nonnegative(sp.load_npz(p), weights)
        if "adjacency" in keys:
            return _nonnegative(f["adjacency"], weights)
        if "edge_index" in keys:
            ei = f["edge_index"]
            n = int(f["num_nodes"]) if "num_nodes" in keys else int(ei.max()) + 1
            return _nonnegative((ei, f["edge_weight"] if "edge_weight" in keys else None, n), weights)
        if "true_couplings" in keys:
            return _nonnegative(f["true_couplings"].T, weights)
    raise ValueError(f"{p} holds no graph (expected a scipy sparse matrix, 'adjacency', 'edge_index' or "
                     f"'true_couplings'; found {sorted(keys)})")


def _nonnegative(graph: Any, weights: str) -> sp.csr_array:
    """The diffusion graph of a possibly signed ``graph``: negative weights dropped (``"positive"``) or made
    positive (``"abs"``)."""
    return sp.csr_array(edge_weights(read_graph(graph)[0], weights))
