"""Communities of directed weighted graphs, their hierarchy, and the community-based node ordering.

Built-in methods: ``leiden`` (directed modularity by leidenalg/igraph, the field's reference implementation),
``markov_stability`` (Delvenne, Yaliraki & Barahona 2010; Lambiotte, Delvenne & Barahona 2014, optimised by
Leiden) and ``spectral`` (scikit-learn spectral clustering, a baseline). Two methods live in higher layers:
``lrg`` (diffusion renormalization, :mod:`dgrn.renorm`) and ``gnn`` (the pretrained
:class:`dgrn.nn.CommunityEncoder`). The registry names them as ``"module:function"`` strings, imported when the
method is first called, so they work from ``dgrn.graph`` alone while importing ``dgrn.graph`` loads neither layer.
"""
from __future__ import annotations

import importlib
import inspect
import warnings
from typing import Any, Callable

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg
import torch
from torch import Tensor

from dgrn.graph.convert import as_adjacency, edge_weights
from dgrn.graph.inference import binary_spikes, denoise_couplings

__all__ = [
    "find_communities", "community_hierarchy", "community_order", "metagraph", "relabel",
    "register_community_method", "COMMUNITY_METHODS", "markov_stability_graph", "stable_resolution",
    "leiden_consensus",
]

#: name -> ``fn(adj: scipy CSR, **opts) -> labels`` (single scale), or the ``"module:function"`` that holds it
COMMUNITY_METHODS: dict[str, Callable[..., Any] | str] = {
    "lrg": "dgrn.renorm.communities:lrg_communities",
    "gnn": "dgrn.nn.community:gnn_communities",
}
#: name -> ``fn(adj, **opts) -> list of labels``, fine to coarse, or its ``"module:function"``
MULTISCALE_METHODS: dict[str, Callable[..., Any] | str] = {"lrg": "dgrn.renorm.communities:lrg_levels"}


def register_community_method(name: str, fn: Callable[..., Any] | str,
                              multiscale: Callable[..., Any] | str | None = None) -> None:
    """Make ``find_communities(graph, method=name)`` call ``fn(adj, **opts)`` (``adj``: ``(N, N)`` scipy CSR,
    ``adj[i, j]`` = weight of ``j -> i``; returns ``N`` labels); ``multiscale`` serves
    :func:`community_hierarchy`. Either may be a ``"module:function"`` string, imported at the first call."""
    COMMUNITY_METHODS[name] = fn
    if multiscale is not None:
        MULTISCALE_METHODS[name] = multiscale


def relabel(labels: Any) -> Tensor:
    """Consecutive labels ``0..K-1``, largest community first (ties: the one holding the smallest node index)."""
    lab = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
    _, inverse, counts = torch.unique(lab, return_inverse=True, return_counts=True)
    first = torch.full((counts.numel(),), lab.numel(), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(lab.numel()), reduce="amin")
    order = sorted(range(counts.numel()), key=lambda c: (-int(counts[c]), int(first[c])))  # over communities
    rank = torch.empty_like(counts)
    rank[torch.tensor(order, dtype=torch.long)] = torch.arange(counts.numel())
    return rank[inverse]


def _method(name: str, table: dict) -> Callable[..., Any]:
    """The function of method ``name`` in ``table``, imported if the table holds its ``"module:function"``."""
    if name not in table:
        if name in COMMUNITY_METHODS:
            raise ValueError(f"community method {name!r} has no multiscale output; multiscale methods: {sorted(table)}")
        raise ValueError(f"unknown community method {name!r}; valid: {sorted(table)}")
    fn = table[name]
    if isinstance(fn, str):  # a higher layer's method: import it now (importing dgrn.graph must not)
        module, _, attr = fn.partition(":")
        fn = table[name] = getattr(importlib.import_module(module), attr)
    return fn


def find_communities(graph: Any, method: str = "leiden_consensus", *, spikes: Any = None, noise_threshold: float = 1.5,
                     **opts) -> Tensor:
    """Community labels ``(N,)`` (LongTensor, ``0..K-1``, largest first; ``K = labels.max() + 1``) of a directed
    weighted graph.

    Args:
        graph: dense ``(N, N)`` tensor/array, scipy sparse matrix or ``(edge_index, edge_weight, num_nodes)``;
            ``[i, j]`` is the weight of ``j -> i`` (a coupling matrix from :func:`infer_couplings` as is).
        method: ``"leiden_consensus"`` (:func:`leiden_consensus`, the default: the consensus of 20 Leiden runs; on
            the community grid of the benchmarks its mean AMI is 0.001 to 0.007 above one run's, with the largest
            gains where modularity's optima are most degenerate, LFR mixing 0.5), ``"leiden"`` (one run),
            ``"leiden_stable"`` (:func:`stable_resolution`), ``"markov_stability"``,
            ``"spectral"``, ``"lrg"`` (:mod:`dgrn.renorm`), ``"gnn"``
            (:mod:`dgrn.nn`; needs ``encoder`` and ``spikes``), or one added by :func:`register_community_method`.
            ``opts`` go to the method, e.g. ``resolution``, ``markov_time``, ``n_communities``, ``weights``
            (``"positive"`` default: negative couplings are dropped; ``"abs"``; ``"signed"`` for ``leiden``:
            negative edges count against putting their ends together).
        spikes: the ``(T, N)`` recording ``graph`` was inferred from (its :func:`infer_couplings` couplings, one
            lag). A method that reads spikes itself (``gnn``) gets them; every other method sees the couplings
            shrunk by ``noise_threshold`` standard errors (:func:`denoise_couplings`), which removes the dense
            background of estimation noise: on the community grid of the benchmarks, Leiden's mean AMI goes from
            0.67 to 0.76 (0 keeps the raw estimates). It can hurt where single couplings are poorly determined
            though their sums over a community are not (rates near 0 or 1: in ``kinetic_ising(120, 10_000,
            n_communities=4)`` one community fires in 90 % of the bins, the others in 1 %; AMI 0.61 raw, 0.46
            shrunk at 50 % observed): a warning says so when the shrinkage leaves more than 5 % of the connected
            neurons without any edge.

    Without ``spikes`` the graph is used as given. Nodes without any edge the method can use (silent neurons, or
    every coupling within the noise) carry no evidence of a community: they are put in one group of their own
    rather than a community each (except by a method told ``n_communities``). A graph of one node is one
    community (``[0]``) for every method. Raises on a graph without (usable) edges, e.g. all negative with the
    default ``weights``: no method defines communities there.
    """
    fn = _method(method, COMMUNITY_METHODS)
    adj = as_adjacency(graph)
    if adj.shape[0] == 1:
        return torch.zeros(1, dtype=torch.long)  # one node, one community, whatever the method
    adj = _graph_seen(adj, fn, spikes, noise_threshold, opts)
    labels = torch.as_tensor(np.asarray(fn(adj, **opts))).long()
    if labels.shape != (adj.shape[0],):
        raise RuntimeError(f"method {method!r} returned {tuple(labels.shape)} labels for {adj.shape[0]} nodes")
    if "n_communities" not in opts:  # a method told K keeps its K
        labels = _group_isolated(labels, _isolated_nodes(adj, opts.get("weights")))
    return relabel(labels)


def _graph_seen(adj: sp.csr_matrix, fn: Callable[..., Any], spikes: Any, noise_threshold: float,
                opts: dict) -> sp.csr_matrix:
    """The graph a method sees: ``adj`` shrunk by ``noise_threshold`` standard errors of the ``spikes`` when given,
    unless the method reads the spikes itself (then they go into ``opts``, and ``noise_threshold`` too if it takes
    one)."""
    if adj.nnz and adj.max() <= 0 and opts.get("weights", "positive") == "positive":
        raise ValueError("every edge of the graph is negative (inhibitory): the methods drop negative weights by "
                         "default, so no edge is left; weights='abs' uses |W|, weights='signed' (leiden) uses "
                         "them as repulsion")
    if spikes is None:
        return adj
    params = inspect.signature(fn).parameters
    if "spikes" in params:
        opts["spikes"] = spikes
        if "noise_threshold" in params:
            opts.setdefault("noise_threshold", noise_threshold)
        return adj
    if not noise_threshold:
        return adj
    denoised = denoise_couplings(adj.toarray(), spikes, noise_threshold)
    if not bool(denoised.ne(0).any()):
        raise ValueError(f"no coupling exceeds {noise_threshold:g} standard errors of the noise of its estimate: "
                         f"the recording ({binary_spikes(spikes).shape[0]} bins) is too short to show communities; "
                         "lower noise_threshold (0: the raw estimates) or record longer")
    seen = sp.csr_matrix(denoised.numpy())
    _warn_if_stripped(adj, seen, noise_threshold, opts.get("weights", "positive"))
    return seen


#: fraction of the connected nodes that the shrinkage may leave without an edge before find_communities warns: 0 on
#: every cell of the community grid, 9 to 47 % where single couplings are poorly determined (benchmarks/communities)
STRIPPED_WARNING = 0.05


def _warn_if_stripped(adj: sp.csr_matrix, denoised: sp.csr_matrix, noise_threshold: float, weights: str) -> None:
    """Warn when the shrinkage strips many nodes of their every edge: there single couplings are poorly determined
    (rates near 0 or 1, a community locked on), and the raw estimates, summed by the method, may still hold the
    communities that thresholding each one separately throws away."""
    before, after = _isolated_nodes(adj, weights), _isolated_nodes(denoised, weights)
    stripped = int((after & ~before).sum())
    if stripped > STRIPPED_WARNING * int((~before).sum()):
        warnings.warn(f"shrinking the couplings by {noise_threshold:g} standard errors left {stripped} of "
                      f"{int((~before).sum())} connected neurons without an edge: single couplings are poorly "
                      "determined in this recording (rates near 0 or 1?) and communities may split; compare "
                      "noise_threshold=0 (the raw estimates)", stacklevel=4)


def _group_isolated(labels: Tensor, isolated: np.ndarray) -> Tensor:
    """``labels`` with the ``isolated`` nodes (:func:`_isolated_nodes`) in one group of their own: no edge, no
    evidence of a community."""
    isolated = torch.as_tensor(isolated)
    if isolated.any() and not isolated.all():
        labels = labels.masked_fill(isolated, int(labels.max()) + 1)
    return labels


def _isolated_nodes(adj: sp.csr_matrix, weights: str | None) -> np.ndarray:
    """Boolean ``(N,)``: the nodes without an edge to another node, as a method reads its ``weights``
    (self-couplings link a node to no other)."""
    seen = edge_weights(adj, "abs" if weights in ("abs", "signed") else "positive").tolil()
    seen.setdiag(0)
    seen = seen.tocsr()
    seen.eliminate_zeros()
    return (seen.getnnz(0) + seen.getnnz(1)) == 0


def community_hierarchy(graph: Any, method: str = "leiden", *, spikes: Any = None, noise_threshold: float = 1.5,
                        **opts) -> list[Tensor]:
    """Multiscale communities, fine to coarse: a list of label vectors ``(N,)``.

    ``leiden`` scans ``resolutions`` (default ``2, 1, 0.5, 0.25``); ``markov_stability`` scans ``markov_times``
    (default ``0.5, 1, 2, 4, 8``); ``lrg`` follows the RG flow. Consecutive duplicate partitions are merged.
    ``spikes``, ``noise_threshold`` and the nodes without edges as in :func:`find_communities`.
    """
    fn = _method(method, MULTISCALE_METHODS)
    adj = _graph_seen(as_adjacency(graph), fn, spikes, noise_threshold, opts)
    isolated = _isolated_nodes(adj, opts.get("weights"))
    levels: list[Tensor] = []
    for lab in fn(adj, **opts):
        lab = relabel(_group_isolated(torch.as_tensor(np.asarray(lab)).long(), isolated))
        if not levels or not torch.equal(levels[-1], lab):
            levels.append(lab)
    return levels


# ---------------------------------------------------------------------------------------------- Leiden
def _igraph(adj: sp.csr_matrix, directed: bool = True):
    import igraph as ig

    coo = adj.tocoo()
    g = ig.Graph(n=adj.shape[0], edges=list(zip(coo.col.tolist(), coo.row.tolist())), directed=directed)
    g.es["weight"] = coo.data.tolist()
    return g


def _require_edges(adj: sp.csr_matrix, what: str) -> None:
    if adj.nnz == 0 or float(adj.sum()) <= 0:
        raise ValueError(f"the graph has no {what} edges: communities are undefined (every node is isolated)")


def leiden(adj: sp.csr_matrix, resolution: float = 1.0, weights: str = "positive", seed: int = 0,
           n_iterations: int = -1, initial: Any = None) -> np.ndarray:
    r"""Leiden optimisation (Traag, Waltman & van Eck 2019, leidenalg) of directed modularity with resolution
    :math:`\gamma`: :math:`Q = \frac1m\sum_{ij}\big(A_{ij} - \gamma\,k^{out}_j k^{in}_i / m\big)\,\delta(c_i, c_j)`
    (Leicht & Newman 2008). ``weights="signed"`` optimises positive and negative edges as two layers with
    opposite signs (Traag & Bruggeman 2009). ``initial``: ``(N,)`` labels to start from (default: every node
    alone), e.g. to polish another method's partition by Leiden's moves."""
    if initial is not None:
        initial = np.asarray(initial).reshape(-1).astype(np.int64).tolist()  # leidenalg takes a list
        if len(initial) != adj.shape[0] or min(initial) < 0:
            raise ValueError(f"initial must hold {adj.shape[0]} labels >= 0, got {len(initial)}")
    return _leiden_runs(adj, (seed,), resolution, weights, n_iterations, initial)[0]


def _leiden_runs(adj: sp.csr_matrix, seeds, resolution: float = 1.0, weights: str = "positive",
                 n_iterations: int = -1, initial: list[int] | None = None) -> np.ndarray:
    """``(len(seeds), N)``: :func:`leiden` once per seed, the igraph graph built once."""
    import leidenalg as la

    if resolution <= 0:
        raise ValueError(f"resolution must be > 0, got {resolution}")
    if weights == "signed":
        pos, neg = adj.maximum(0).tocsr(), (-adj).maximum(0).tocsr()
        _require_edges(pos, "positive")
        graphs = (_igraph(pos), _igraph(neg))
        runs = []
        for seed in seeds:
            parts = [la.RBConfigurationVertexPartition(g, weights="weight", resolution_parameter=resolution,
                                                       initial_membership=initial) for g in graphs]
            opt = la.Optimiser()
            opt.set_rng_seed(int(seed))
            opt.optimise_partition_multiplex(parts, layer_weights=[1.0, -1.0], n_iterations=n_iterations)
            runs.append(parts[0].membership)
        return np.asarray(runs)
    w = edge_weights(adj, weights)
    _require_edges(w, "positive" if weights == "positive" else "")
    g = _igraph(w)
    return np.asarray([la.find_partition(g, la.RBConfigurationVertexPartition, weights="weight",
                                         resolution_parameter=resolution, seed=int(seed), n_iterations=n_iterations,
                                         initial_membership=initial).membership for seed in seeds])


def _leiden_levels(adj: sp.csr_matrix, resolutions=(2.0, 1.0, 0.5, 0.25), **opts) -> list[np.ndarray]:
    return [leiden(adj, resolution=r, **opts) for r in sorted(resolutions, reverse=True)]


def leiden_consensus(adj: sp.csr_matrix, runs: int = 20, threshold: float = 0.5, resolution: float = 1.0,
                     weights: str = "positive", seed: int = 0, max_rounds: int = 10) -> np.ndarray:
    r"""Consensus of ``runs`` Leiden partitions (:func:`leiden`, seeds ``seed .. seed + runs - 1``), the default
    of :func:`find_communities`.

    Modularity's landscape is degenerate on noisy graphs: many partitions score almost alike, so one Leiden run
    returns one of them at the mercy of its seed (Good, de Montjoye & Clauset 2010). Consensus clustering
    (Lancichinetti & Fortunato 2012), restricted to the graph's edges as in fast consensus (Tandon et al. 2019):
    every edge ``(i, j)`` (either direction) is weighted by the fraction of the runs that put ``i`` and ``j``
    together; edges below ``threshold`` are dropped, except each node's most agreed edge (an ambiguous node joins
    the community it joins most often rather than becoming a community of its own); Leiden runs again on that
    symmetric graph, and so on until every run splits the linked pairs alike (the same partition; returned) or
    ``max_rounds`` rounds (then the run that agrees best with the others, by mean adjusted mutual information).
    Vectorized over edges and runs; the cost is ``runs`` Leiden runs a round (one to three rounds are typical)."""
    from sklearn.metrics import adjusted_mutual_info_score as ami

    if runs < 1 or max_rounds < 1 or not 0 < threshold <= 1:
        raise ValueError(f"need runs >= 1, max_rounds >= 1 and threshold in (0, 1], got {runs}, {max_rounds}, "
                         f"{threshold}")
    seeds = range(int(seed), int(seed) + int(runs))
    parts = _leiden_runs(adj, seeds, resolution, weights)
    pattern = edge_weights(adj, "abs" if weights in ("abs", "signed") else "positive")
    pattern = sp.triu(pattern + pattern.T, k=1).tocoo()  # each linked pair once
    src, dst = pattern.row, pattern.col
    n = adj.shape[0]
    for _ in range(max_rounds):
        agree = (parts[:, src] == parts[:, dst]).mean(0)
        if ((agree == 0) | (agree == 1)).all():  # every run splits the linked pairs alike: one partition
            return parts[0]
        keep = agree >= threshold
        for ends in (src, dst):  # each node keeps its most agreed edge
            best = np.full(n, -1.0)
            np.maximum.at(best, ends, agree)
            keep |= (agree == best[ends]) & (agree > 0)
        if not keep.any():
            break
        w = agree[keep]
        consensus = sp.csr_matrix((np.r_[w, w], (np.r_[src[keep], dst[keep]], np.r_[dst[keep], src[keep]])),
                                  shape=(n, n))
        parts = _leiden_runs(consensus, seeds, resolution)
    scores = [np.mean([ami(a, b) for b in parts]) for a in parts]
    return parts[int(np.argmax(scores))]


#: resolutions scanned by :func:`stable_resolution`: 0.25 to 4 in steps of sqrt(2)
STABLE_RESOLUTIONS = tuple(0.25 * 2 ** (k / 2) for k in range(9))


def stable_resolution(adj: sp.csr_matrix, resolutions=STABLE_RESOLUTIONS, seeds=(0, 1),
                      **opts) -> tuple[np.ndarray, float]:
    r"""Leiden at the resolution whose partitions are the most reproducible: ``(labels, resolution)``.

    Modularity at resolution 1 cannot resolve communities smaller than about :math:`\sqrt{2m}` (Fortunato &
    Barthelemy 2007): 50 clusters of 16 observed neurons merge into 13. The resolution is chosen without the
    planted answer, by stability (in the spirit of Lambiotte, Delvenne & Barahona 2014): Leiden runs at every
    ``resolutions`` with every ``seeds``, and a resolution scores the mean AMI of its partitions with each other and
    with those of its neighbours in the scan; partitions of one community are excluded; the best score wins (ties:
    the resolution nearest 1) and its first seed's partition is returned. Partitions at a resolution the graph
    supports barely move when the seed or the resolution changes; those inside the resolution limit, or splitting
    noise, do. ``opts`` go to :func:`leiden`."""
    from sklearn.metrics import adjusted_mutual_info_score as ami

    resolutions, seeds = tuple(resolutions), tuple(seeds)
    if not resolutions or not seeds:
        raise ValueError(f"need at least one resolution and one seed, got {resolutions} and {seeds}")
    parts = [[leiden(adj, resolution=r, seed=s, **opts) for s in seeds] for r in resolutions]
    best, best_key = None, None
    for i, r in enumerate(resolutions):
        if min(len(np.unique(p)) for p in parts[i]) < 2:
            continue
        pairs = [ami(a, b) for j, a in enumerate(parts[i]) for b in parts[i][j + 1:]]
        pairs += [ami(a, b) for k in (i - 1, i + 1) if 0 <= k < len(resolutions) for a in parts[i] for b in parts[k]]
        key = (float(np.mean(pairs)) if pairs else 0.0, -abs(np.log(r)))
        if best_key is None or key > best_key:
            best, best_key = i, key
    if best is None:  # one community at every resolution: the one nearest 1
        best = int(np.argmin([abs(np.log(r)) for r in resolutions]))
    return parts[best][0], float(resolutions[best])


def leiden_stable(adj: sp.csr_matrix, **opts) -> np.ndarray:
    """Leiden at the most stable resolution (:func:`stable_resolution`; ``opts`` go to it)."""
    return stable_resolution(adj, **opts)[0]


# ------------------------------------------------------------------------------------- Markov stability
def markov_stability_graph(adj: sp.csr_matrix, markov_time: float = 1.0, teleport: float = 0.15,
                           weights: str = "positive") -> np.ndarray:
    r"""Dense ``(N, N)`` autocovariance flow :math:`M(t) = \Pi\, e^{t(T - I)}` of the continuous-time random walk
    on the directed graph (transition :math:`T = (1-\alpha) D_{out}^{-1} A^\top + \alpha\,\mathbf 1\mathbf 1^\top/N`
    with teleportation :math:`\alpha`, as for PageRank; dangling nodes teleport), :math:`\Pi = \mathrm{diag}(\pi)`
    its stationary distribution. Rows of ``M`` sum to :math:`\pi_i`, columns to :math:`\pi_j`, total 1, so the
    directed modularity of ``M`` at resolution 1 *is* the Markov stability
    :math:`r(t) = \sum_{ij}[\pi_i P_{ij}(t) - \pi_i\pi_j]\delta(c_i, c_j)`."""
    if markov_time <= 0 or not 0 <= teleport < 1:
        raise ValueError(f"need markov_time > 0 and teleport in [0, 1), got {markov_time}, {teleport}")
    w = edge_weights(adj, weights).T.toarray()  # w[j, i]: weight of the step j -> i
    n = w.shape[0]
    out_strength = w.sum(1)
    dangling = out_strength <= 0
    trans = np.where(dangling[:, None], 1.0 / n, w / np.where(dangling, 1.0, out_strength)[:, None])
    trans = (1 - teleport) * trans + teleport / n
    vals, vecs = scipy.linalg.eig(trans.T)
    pi = np.abs(np.real(vecs[:, np.argmin(np.abs(vals - 1))]))
    pi = pi / pi.sum()
    flow = scipy.linalg.expm(markov_time * (trans - np.eye(n)))
    return pi[:, None] * flow


def markov_stability(adj: sp.csr_matrix, markov_time: float = 1.0, teleport: float = 0.15,
                     weights: str = "positive", seed: int = 0) -> np.ndarray:
    """Partition maximising Markov stability at ``markov_time`` (Leiden on :func:`markov_stability_graph`)."""
    _require_edges(edge_weights(adj, weights), "usable")
    flow = markov_stability_graph(adj, markov_time, teleport, weights)
    flow[flow < 1e-12 * flow.max()] = 0.0  # drop numerically empty entries: a sparser graph for Leiden
    return leiden(sp.csr_matrix(flow.T), resolution=1.0, weights="abs", seed=seed)  # flow.T[i, j]: j -> i


def _markov_levels(adj: sp.csr_matrix, markov_times=(0.5, 1.0, 2.0, 4.0, 8.0), **opts) -> list[np.ndarray]:
    return [markov_stability(adj, markov_time=t, **opts) for t in sorted(markov_times)]


# ------------------------------------------------------------------------------------------- spectral
def spectral(adj: sp.csr_matrix, n_communities: int | None = None, weights: str = "positive",
             seed: int = 0) -> np.ndarray:
    """Spectral clustering (scikit-learn, normalized Laplacian of the symmetrized graph) into ``n_communities``."""
    from sklearn.cluster import SpectralClustering

    n = adj.shape[0]
    if n_communities is None:
        raise ValueError("method 'spectral' needs n_communities")
    if not 1 <= n_communities <= n:
        raise ValueError(f"n_communities must lie in [1, N={n}], got {n_communities}")
    w = edge_weights(adj, weights)
    _require_edges(w, "usable")
    sym = ((w + w.T) / 2).toarray()
    model = SpectralClustering(n_clusters=n_communities, affinity="precomputed", random_state=seed,
                               assign_labels="cluster_qr")
    return model.fit_predict(sym)


register_community_method("leiden", leiden, _leiden_levels)
register_community_method("leiden_stable", leiden_stable)
register_community_method("leiden_consensus", leiden_consensus)
register_community_method("markov_stability", markov_stability, _markov_levels)
register_community_method("spectral", spectral)


# ------------------------------------------------------------------------------------------- ordering
def metagraph(graph: Any, labels: Tensor) -> Tensor:
    """``(K, K)`` weights between communities: ``M[a, b] = sum of A[i, j]`` over ``i`` in ``a``, ``j`` in ``b``."""
    adj = as_adjacency(graph)
    lab = torch.as_tensor(labels).long().cpu()
    if lab.shape != (adj.shape[0],):
        raise ValueError(f"labels must have shape ({adj.shape[0]},), got {tuple(lab.shape)}")
    k = int(lab.max()) + 1
    member = sp.csr_matrix((np.ones(lab.numel()), (np.arange(lab.numel()), lab.numpy())), shape=(lab.numel(), k))
    return torch.from_numpy((member.T @ adj @ member).toarray()).float()


def _fiedler(sym: sp.spmatrix | np.ndarray, reg: float = 0.01) -> np.ndarray:
    r"""Fiedler vector of the regularized normalized Laplacian of a symmetric non-negative graph: the second
    eigenvector of :math:`D_\tau^{-1/2}(S + \tau\mathbf{1}\mathbf{1}^\top/N)D_\tau^{-1/2}` with
    :math:`\tau = ` ``reg`` times the mean degree (keeps it defined on disconnected graphs; Amini et al. 2013)."""
    n = sym.shape[0]
    if n <= 2:
        return np.arange(n, dtype=np.float64)
    deg = np.asarray(sym.sum(1)).ravel()
    tau = reg * max(deg.mean(), 1e-12)
    dinv = 1.0 / np.sqrt(deg + tau)
    if n <= 500:
        dense = sym.toarray() if sp.issparse(sym) else np.asarray(sym)
        op = dinv[:, None] * (dense + tau / n) * dinv[None, :]
        _, vecs = np.linalg.eigh(op)
        vec = vecs[:, -2]
    else:
        def matvec(v):
            v = np.asarray(v).reshape(n, -1) * dinv[:, None]
            return dinv[:, None] * (sym @ v + tau / n * v.sum(0, keepdims=True))

        op = scipy.sparse.linalg.LinearOperator((n, n), matvec=matvec, matmat=matvec, dtype=np.float64)
        _, vecs = scipy.sparse.linalg.eigsh(op, k=2, which="LA", v0=np.ones(n))
        vec = vecs[:, 0]  # eigsh returns ascending eigenvalues: [second largest, largest]
    vec = vec * dinv
    return vec if vec.sum() >= 0 or np.allclose(vec.sum(), 0) else -vec


def community_order(graph: Any, labels: Tensor, weights: str = "abs") -> Tensor:
    """Community-based node ordering: a permutation ``(N,)`` that lists the communities along the Fiedler vector
    of their (symmetrized) metagraph, and the neurons of each community along the Fiedler vector of the whole
    graph, oriented in the direction the communities run (spectral seriation, Atkins et al. 1998), so that
    strongly coupled communities and neurons sit next to each other in the tensor-network chain.
    """
    adj = edge_weights(as_adjacency(graph), weights)
    lab = torch.as_tensor(labels).long().cpu()
    if lab.shape != (adj.shape[0],):
        raise ValueError(f"labels must have shape ({adj.shape[0]},), got {tuple(lab.shape)}")
    lab = relabel(lab)
    sym = ((adj + adj.T) / 2).tocsr()
    meta = metagraph(sym, lab).double().numpy()
    np.fill_diagonal(meta, 0.0)
    comm_pos = np.argsort(np.argsort(_fiedler(meta), kind="stable"), kind="stable")  # rank of each community
    node_f = _fiedler(sym)
    pos = comm_pos[lab.numpy()].astype(np.float64)
    if np.std(pos) > 0 and np.std(node_f) > 0 and np.corrcoef(pos, node_f)[0, 1] < 0:
        node_f = -node_f  # run the neurons in the same direction as the communities
    order = np.lexsort((np.arange(lab.numel()), node_f, pos))
    return torch.from_numpy(order).long()
