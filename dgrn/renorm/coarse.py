r"""Coarse-graining at a diffusion scale: supernodes from the heat kernel, and the weighted metagraph.

Supernodes are the connected components of :math:`\zeta_{ij} = [\rho_{ij} \ge \min(\rho_{ii}, \rho_{jj})]` (Villegas
et al. 2023; their public notebook tests all pairs). ``candidates`` selects the pairs tested:

* ``all``: every pair (exact path; the authors' rule);
* ``edges``: pairs joined by an edge (either direction), union-find over the accepted edges;
* ``2hop``: pairs within two hops.

``auto`` is ``all`` on the exact path and ``edges`` on the scalable path (bench/renorm.py measures edges against all
pairs). On the scalable path the heat kernel is partly a stochastic estimate, and a pair merges only when its
margin exceeds ``confidence`` standard errors (:meth:`HeatKernel.zeta_pairs`). Ties: :math:`\rho_{ij} \ge (1 - 10^{-9})\min(\rho_{ii}, \rho_{jj})`, so rounding cannot split a supernode.
:math:`\rho_{ij} = 0` across weakly connected components, so supernodes never join two components.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from dgrn.renorm.graphs import contract, to_format
from dgrn.renorm.spectrum import HeatKernel, Peak, find_peaks

__all__ = ["coarse_grain", "coarse_grain_kernel", "select_tau", "tau_for_shrink", "zeta_components",
           "TAU_RULES", "CANDIDATES"]

TAU_RULES = ("largest", "highest", "smallest", "valley")
CANDIDATES = ("auto", "all", "edges", "2hop")
_RTOL = 1e-9


def zeta_components(kernel: torch.Tensor, mask: torch.Tensor | None = None, rtol: float = _RTOL) -> torch.Tensor:
    r"""Connected components of :math:`\zeta_{ij} = [K_{ij} \ge (1-r)\min(K_{ii}, K_{jj})]` over all pairs.

    ``kernel`` (..., N, N) symmetric heat kernel (any positive scale); ``mask`` (..., N) bool marks real nodes (padded
    nodes get label -1). Returns (..., N) long labels: each node's label is the smallest node index of its component.
    Min-label propagation with pointer jumping, batched on the kernel's device (no Python loop over nodes).
    """
    n = kernel.shape[-1]
    diag = torch.diagonal(kernel, dim1=-2, dim2=-1)
    zeta = kernel >= (1 - rtol) * torch.minimum(diag[..., :, None], diag[..., None, :])
    zeta |= torch.eye(n, dtype=torch.bool, device=kernel.device)
    if mask is not None:
        zeta &= mask[..., :, None] & mask[..., None, :]
    labels = torch.arange(n, device=kernel.device).expand(kernel.shape[:-1]).contiguous()
    big = torch.tensor(n, device=kernel.device)
    while True:
        new = torch.where(zeta, labels[..., None, :], big).amin(-1)
        new = torch.minimum(new, labels)
        new = torch.gather(new, -1, new)  # pointer jumping: adopt the label of my label
        if torch.equal(new, labels):
            break
        labels = new
    if mask is not None:
        labels = torch.where(mask, labels, torch.full_like(labels, -1))
    return labels


def _relabel(rep: np.ndarray) -> tuple[np.ndarray, int]:
    """Contiguous labels 0..K-1 in order of each supernode's smallest node index."""
    _, first, inverse = np.unique(rep, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64), int(first.size)


def _candidate_pairs(a: sp.csr_array, how: str) -> tuple[np.ndarray, np.ndarray]:
    s = (a + a.T).tocsr()
    s.setdiag(0)
    s.eliminate_zeros()
    if how == "2hop":
        s = (s + s @ s).tocsr()
        s.setdiag(0)
        s.eliminate_zeros()
    s = sp.triu(s, k=1).tocoo()
    return s.row.astype(np.int64), s.col.astype(np.int64)


def coarse_grain_kernel(kernel: HeatKernel, tau: float, candidates: str = "auto", confidence: float = 5.0
                        ) -> tuple[np.ndarray, int]:
    """Supernode labels (N,) (contiguous, ordered by smallest member) and their count, at diffusion time ``tau``.
    ``confidence``: on the scalable path, standard errors by which a pair's estimated margin must be positive to
    merge (see :meth:`HeatKernel.zeta_pairs`)."""
    if candidates not in CANDIDATES:
        raise ValueError(f"unknown candidates {candidates!r}; valid: {list(CANDIDATES)}")
    if candidates == "auto":
        candidates = "all" if kernel.method == "exact" else "edges"
    n = kernel.n_nodes
    if candidates == "all":
        if kernel.method != "exact":
            raise ValueError("candidates='all' needs the exact path (method='exact')")
        _, dense = kernel.kernel_entries(tau, None, None)
        rep = zeta_components(torch.from_numpy(dense)).numpy()
        return _relabel(rep)
    rows, cols = _candidate_pairs(kernel.adjacency, candidates)
    keep = kernel.zeta_pairs(tau, rows, cols, confidence=confidence, rtol=_RTOL)
    merged = sp.coo_array((np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=(n, n))
    _, rep = connected_components(merged, directed=False)
    return _relabel(rep)


def select_tau(kernel: HeatKernel, rule: str | float, taus: Any = None) -> tuple[float | None, dict, list[Peak]]:
    """Pick the coarse-graining scale on the specific-heat curve.

    ``rule``: a number (used as is), ``largest`` (the largest-tau peak: the coarsest scale), ``highest`` (the highest
    peak), ``smallest`` (the smallest-tau peak), ``valley`` (the minimum of C between the two smallest-tau peaks: the
    stable description right after the finest transition; the peak itself when there is only one). Without any
    peak, the maximum of C. Returns
    ``(tau, curves, peaks)``; tau is None when C vanishes (an edgeless graph: nothing to coarse-grain).
    """
    curves = kernel.curves(taus)
    peaks = find_peaks(curves)
    if not isinstance(rule, str):
        return float(rule), curves, peaks
    if rule not in TAU_RULES:
        raise ValueError(f"unknown tau rule {rule!r}; valid: a number or one of {list(TAU_RULES)}")
    if not peaks:
        c = curves["specific_heat"]
        return (float(curves["tau"][int(np.argmax(c))]) if c.max() > 0 else None), curves, peaks
    if rule == "largest":
        return peaks[-1].tau, curves, peaks
    if rule == "smallest":
        return peaks[0].tau, curves, peaks
    if rule == "highest":
        return max(peaks, key=lambda p: p.height).tau, curves, peaks
    if len(peaks) == 1:  # valley
        return peaks[0].tau, curves, peaks
    lo, hi = peaks[0].index, peaks[1].index
    return float(curves["tau"][lo + int(np.argmin(curves["specific_heat"][lo: hi + 1]))]), curves, peaks


def tau_for_shrink(kernel: HeatKernel, factor: float) -> float:
    r"""The tau at which the entropy says the graph has shrunk by ``factor`` (EqLRG-style target): the effective number
    of states :math:`N^{S(\tau)}` equals :math:`N / b`, i.e. :math:`S(\tau) = 1 - \ln b / \ln N`. S decreases
    monotonically in tau (dS/d ln tau = -C <= 0), so bisection in log tau."""
    n = kernel.n_nodes
    if not factor > 1:
        raise ValueError(f"shrink factor must be > 1, got {factor}")
    if n <= 1:
        raise ValueError("a single-node graph cannot shrink")
    target = max(1.0 - np.log(factor) / np.log(n), 0.0)
    lam2, lam_max = kernel.lambda_bounds()
    lo, hi = np.log(1e-6 / lam_max), np.log(1e4 * max(10.0, np.log(n)) / lam2)
    if kernel.entropy_at(float(np.exp(hi))) > target:
        raise ValueError(f"the entropy never drops to {target:.3f} (too many components to shrink by {factor})")
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if kernel.entropy_at(float(np.exp(mid))) > target else (lo, mid)
        if hi - lo < 1e-10:
            break
    return float(np.exp(hi))


def coarse_grain(graph: Any, tau: float | str = "largest", *, shrink: float | None = None, candidates: str = "auto",
                 self_loops: bool = False, taus: Any = None, **kernel_options: Any) -> tuple[torch.Tensor, Any]:
    """Coarse-grain ``graph`` at diffusion time ``tau``: ``(labels LongTensor (N,), metagraph)``.

    Args:
        graph: dense tensor / array, scipy sparse matrix, or ``(edge_index, edge_weight, num_nodes)``.
        tau: a diffusion time > 0, or a rule on the specific-heat peaks (see :func:`select_tau`).
        shrink: instead of ``tau``, target a shrink factor through the entropy (:func:`tau_for_shrink`).
        candidates: pairs tested for merging (module docstring).
        self_loops: keep intra-supernode weight on the metagraph diagonal.
        taus: the grid for peak rules (default :meth:`HeatKernel.default_taus`).
        kernel_options: :class:`HeatKernel` options (``laplacian``, ``method``, ``teleport``, ``probes``, ...).

    The metagraph comes in the input's format, with summed edge weights and the direction of the input kept.
    """
    kernel = graph if isinstance(graph, HeatKernel) else HeatKernel(graph, **kernel_options)
    if shrink is not None:
        t = tau_for_shrink(kernel, shrink)
    else:
        t, _, _ = select_tau(kernel, tau, taus)
    if t is None:  # edgeless graph: every node is its own supernode
        labels, n_super = np.arange(kernel.n_nodes), kernel.n_nodes
    else:
        labels, n_super = coarse_grain_kernel(kernel, t, candidates)
    meta = contract(kernel.adjacency, labels, n_super, self_loops)
    return torch.from_numpy(labels), to_format(meta, kernel.format)
