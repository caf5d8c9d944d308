"""Node features for community encoders: spike statistics and positional encodings of a directed graph."""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg
import torch
from torch import Tensor

from dgrn.graph.convert import as_adjacency, edge_weights
from dgrn.graph.inference import binary_spikes

__all__ = ["spike_features", "positional_features", "node_features", "n_node_features", "N_SPIKE_FEATURES"]

AUTOCORR_LAGS = (1, 2, 4, 8)
COUNT_WINDOW = 10
N_SPIKE_FEATURES = 2 + len(AUTOCORR_LAGS)


def n_node_features(n_eig: int = 8, n_walk: int = 8) -> int:
    """Number of columns of :func:`node_features` (24 with the defaults)."""
    return N_SPIKE_FEATURES + 2 + n_walk + n_eig


def spike_features(spikes: Any) -> Tensor:
    """``(N, 6)`` per-neuron statistics of 0/1 spikes: log rate per bin, Fano factor of the counts in windows of
    10 bins (log), and the autocorrelation at lags 1, 2, 4 and 8 bins. Constant neurons get 0 correlations."""
    x = binary_spikes(spikes).double()
    t, n = x.shape
    if t < 2 * COUNT_WINDOW:
        raise ValueError(f"need at least {2 * COUNT_WINDOW} bins for spike features, got {t}")
    rate = x.mean(0)
    counts = x[: t // COUNT_WINDOW * COUNT_WINDOW].reshape(-1, COUNT_WINDOW, n).sum(1)
    fano = counts.var(0) / counts.mean(0).clamp_min(1e-9)
    xc = x - rate
    var = xc.square().mean(0).clamp_min(1e-12)
    acf = [(xc[lag:] * xc[:-lag]).mean(0) / var for lag in AUTOCORR_LAGS]
    feats = [rate.clamp_min(1e-6).log(), fano.clamp_min(1e-6).log(), *acf]
    return torch.stack(feats, 1).float()


def positional_features(graph: Any, n_eig: int = 8, n_walk: int = 8) -> Tensor:
    r"""``(N, 2 + n_walk + n_eig)`` structural features of a directed graph (positive weights):

    - log(1 + in-strength), log(1 + out-strength);
    - random-walk return probabilities :math:`(P^k)_{ii}`, ``k = 1..n_walk``, of the symmetrized graph
      (sign- and permutation-invariant, Dwivedi et al. 2022);
    - the ``n_eig`` leading non-trivial eigenvectors of :math:`D^{-1/2} S D^{-1/2}` (symmetrized, with a small
      regularizer so isolated nodes stay finite), scaled by :math:`\sqrt N`, each with the sign that makes its
      largest-magnitude entry positive (missing ones, for tiny graphs, are 0).
    """
    adj = edge_weights(as_adjacency(graph), "positive")
    n = adj.shape[0]
    in_s, out_s = np.asarray(adj.sum(1)).ravel(), np.asarray(adj.sum(0)).ravel()
    sym = ((adj + adj.T) / 2).tocsr()
    deg = np.asarray(sym.sum(1)).ravel()
    tau = 0.01 * max(deg.mean(), 1e-12)
    walk = sp.diags(1.0 / (deg + tau)) @ sym
    feats = [np.log1p(in_s), np.log1p(out_s)]
    if n_walk:
        power = sp.identity(n, format="csr")
        for _ in range(n_walk):  # loop over walk lengths, not nodes
            power = walk @ power
            feats.append(power.diagonal() * n / max(n_walk, 1))
    eig = np.zeros((n, n_eig))
    k = min(n_eig, n - 2)
    if k > 0:
        dinv = 1.0 / np.sqrt(deg + tau)
        norm = sp.diags(dinv) @ sym @ sp.diags(dinv)
        if n <= 500:
            _, vecs = np.linalg.eigh(norm.toarray())
            vecs = vecs[:, ::-1][:, 1: k + 1]
        else:
            _, vecs = scipy.sparse.linalg.eigsh(norm, k=k + 1, which="LA", v0=np.ones(n))
            vecs = vecs[:, ::-1][:, 1: k + 1]
        signs = np.sign(vecs[np.abs(vecs).argmax(0), np.arange(k)])
        eig[:, :k] = vecs * signs * np.sqrt(n)
    return torch.from_numpy(np.concatenate([np.stack(feats, 1), eig], 1)).float()


def node_features(spikes: Any, graph: Any, n_eig: int = 8, n_walk: int = 8) -> Tensor:
    """``(N, F)`` = :func:`spike_features` next to :func:`positional_features`, each column z-scored over the
    nodes of this graph so that networks of different sizes and rates share one scale."""
    s, p = spike_features(spikes), positional_features(graph, n_eig, n_walk)
    if s.shape[0] != p.shape[0]:
        raise ValueError(f"spikes have {s.shape[0]} neurons but the graph has {p.shape[0]} nodes")
    f = torch.cat([s, p], 1)
    return (f - f.mean(0)) / f.std(0).clamp_min(1e-6) if f.shape[0] > 1 else torch.zeros_like(f)
