"""The renormalization-group flow: repeated diffusion coarse-graining, and pooling of activity along it."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dgrn.data import SpikeData
from dgrn.renorm.coarse import coarse_grain_kernel, select_tau, tau_for_shrink
from dgrn.renorm.graphs import contract, read_diffusion_graph, to_format
from dgrn.renorm.spectrum import HeatKernel, Peak, find_peaks

__all__ = ["Level", "RGFlowStoppedEarly", "rg_flow", "pool_activity", "pool_flow", "POOL_MODES"]

POOL_MODES = ("sum", "or", "majority")


class RGFlowStoppedEarly(UserWarning):
    """:func:`rg_flow` returned fewer levels than asked; the message names the level it could not make and why.

    Callers that expect early stops (a flow run "as far as it goes") silence this category."""


@dataclass
class Level:
    """One coarse-graining step of the flow.

    Attributes:
        level: 1 for the first coarse-graining of the input, 2 for the next, ...
        tau: the diffusion time tau* used on the finer graph.
        curves: ``{"tau", "entropy", "specific_heat"}`` float64 tensors of the finer graph.
        peaks: the specific-heat peaks of the finer graph.
        assignment: (n_finer,) long: supernode of each node of the finer graph.
        membership: (N,) long: supernode of each node of the input graph.
        graph: the metagraph (input format): summed weights, direction kept.
        n_nodes: nodes of the metagraph.
        entropy: S(tau*) of the finer graph (normalised by ln n_finer).
        method: ``exact`` or ``scalable`` (path used on the finer graph).
    """

    level: int
    tau: float
    curves: dict[str, torch.Tensor]
    peaks: list[Peak]
    assignment: torch.Tensor
    membership: torch.Tensor
    graph: Any
    n_nodes: int
    entropy: float
    method: str
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-serialisable summary (no graph, no curves)."""
        return {"level": self.level, "tau": self.tau, "n_nodes": self.n_nodes, "entropy": self.entropy,
                "method": self.method, "peaks": [vars(p) for p in self.peaks]}


def rg_flow(graph: Any, levels: int = 3, *, tau: float | str = "valley", shrink: float | None = None,
            taus: int = 64, candidates: str = "auto", self_loops: bool = False, strict: bool = False,
            **kernel_options: Any) -> list[Level]:
    """Coarse-grain ``graph`` repeatedly: at most ``levels`` levels, stopping early at a single node, at a graph
    without edges, when the specific heat C vanishes, when the entropy cannot shrink by ``shrink``, or when a step
    merges nothing (e.g. a complete graph, or a dense graph whose C has no peak: tau* is then the maximum of C and
    the heat kernel there does not separate any pair).

    Args:
        graph: dense tensor / array, scipy sparse matrix, or ``(edge_index, edge_weight, num_nodes)``; directed
            graphs are accepted (``A[i, j]`` = weight of ``i -> j``).
        levels: maximum number of coarse-grainings.
        tau: rule for tau* at each level (:func:`dgrn.renorm.select_tau`; default ``valley``: the stable scale right
            after the finest specific-heat peak, so each separated scale gets its own level) or a fixed time.
        shrink: instead of peaks, shrink each level by this factor through the entropy (EqLRG-style).
        taus: number of log-spaced diffusion times of each level's curves.
        candidates, self_loops: see :func:`dgrn.renorm.coarse_grain`.
        strict: raise a ``ValueError`` when the flow stops before ``levels`` levels, instead of warning.
        kernel_options: :class:`dgrn.renorm.HeatKernel` options (``laplacian``, ``method``, ``teleport``, ...), applied
            at every level (``method="auto"`` switches to the exact path once a level is small).

    Returns the list of :class:`Level` (empty if nothing could be coarse-grained). Fewer levels than ``levels`` come
    with a :class:`RGFlowStoppedEarly` warning naming the level that could not be made and the reason.
    """
    if int(levels) < 0:
        raise ValueError(f"levels must be >= 0, got {levels}")
    adjacency, fmt = read_diffusion_graph(graph)
    membership = np.arange(adjacency.shape[0])
    out: list[Level] = []
    stop = None  # why level k could not be made
    for k in range(1, int(levels) + 1):
        n = adjacency.shape[0]
        name = "the input graph" if k == 1 else f"the level-{k - 1} metagraph"
        if n <= 1:
            stop = f"{name} is a single node"
            break
        if adjacency.nnz == (adjacency.diagonal() != 0).sum():
            stop = f"{name} ({n} nodes) has no edges besides self-loops"
            break
        kernel = HeatKernel(adjacency, **kernel_options)
        grid = kernel.default_taus(int(taus))
        if shrink is not None:
            curves = kernel.curves(grid)
            try:
                peaks, t = find_peaks(curves), tau_for_shrink(kernel, shrink)
            except ValueError as err:  # the entropy cannot drop that far (as many components as the target)
                stop = f"{name} ({n} nodes) cannot shrink by {shrink}: {err}"
                break
        else:
            t, curves, peaks = select_tau(kernel, tau, grid)
        if t is None:
            stop = f"the specific heat C of {name} ({n} nodes) is zero at every tau"
            break
        labels, n_super = coarse_grain_kernel(kernel, t, candidates)
        if n_super == n:
            where = "C has no peak, so tau* is the maximum of C" if not peaks else \
                f"C peaks at tau = {', '.join(f'{p.tau:.3g}' for p in peaks)}"
            stop = f"coarse-graining {name} ({n} nodes) at tau* = {t:.3g} merged no nodes ({where})"
            break
        adjacency = contract(adjacency, labels, n_super, self_loops)
        membership = labels[membership]
        out.append(Level(
            level=k, tau=float(t),
            curves={key: torch.from_numpy(np.asarray(curves[key])) for key in ("tau", "entropy", "specific_heat")},
            peaks=peaks, assignment=torch.from_numpy(labels), membership=torch.from_numpy(membership.copy()),
            graph=to_format(adjacency, fmt), n_nodes=n_super, entropy=kernel.entropy_at(t), method=kernel.method,
        ))
    if stop is not None:
        message = f"rg_flow stopped at level {len(out) + 1} of {int(levels)}: {stop}; returning {len(out)} level(s)"
        if strict:
            raise ValueError(message)
        warnings.warn(message, RGFlowStoppedEarly, stacklevel=2)
    return out


def pool_activity(data: SpikeData | torch.Tensor, membership: Any, mode: str = "sum") -> SpikeData | torch.Tensor:
    """Pool spikes ``(T, N)`` onto supernodes: ``(T, K)`` with K = ``membership.max() + 1``.

    ``mode``: ``sum`` (spike count of the supernode), ``or`` (1 if any member fired), ``majority`` (1 if strictly
    more than half of the members fired). ``membership`` (N,) gives the supernode of each column of ``spikes``
    (for a flow over the observed neurons: ``level.membership``). A :class:`SpikeData` comes back as a
    :class:`SpikeData` of the supernodes (same ``dt``; the pooling recorded in ``meta``; no ground truth).
    """
    if mode not in POOL_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; valid: {list(POOL_MODES)}")
    spikes = data.spikes if isinstance(data, SpikeData) else torch.as_tensor(data)
    if spikes.dim() != 2:
        raise ValueError(f"spikes must have shape (T, N), got {tuple(spikes.shape)}")
    member = torch.as_tensor(np.asarray(membership) if not isinstance(membership, torch.Tensor) else membership)
    member = member.long().to(spikes.device)
    if member.dim() != 1 or member.shape[0] != spikes.shape[1]:
        raise ValueError(f"membership must give one supernode per neuron ({spikes.shape[1]}), got shape "
                         f"{tuple(member.shape)}")
    if member.numel() and member.min() < 0:
        raise ValueError("membership has negative supernode indices")
    k = int(member.max()) + 1
    counts = torch.zeros(spikes.shape[0], k, dtype=torch.int64, device=spikes.device)
    counts.index_add_(1, member, spikes.long())
    if mode == "sum":
        pooled = counts
    elif mode == "or":
        pooled = (counts > 0).to(torch.uint8)
    else:
        sizes = torch.bincount(member, minlength=k)
        active = torch.zeros_like(counts).index_add_(1, member, (spikes > 0).long())
        pooled = (2 * active > sizes).to(torch.uint8)
    if not isinstance(data, SpikeData):
        return pooled
    meta = dict(data.meta)
    meta["renorm_pooling"] = {"mode": mode, "n_fine": int(spikes.shape[1]), "n_supernodes": k}
    return SpikeData(spikes=pooled, dt=data.dt, meta=meta)


def pool_flow(data: SpikeData | torch.Tensor, flow: list[Level], mode: str = "sum") -> list[SpikeData | torch.Tensor]:
    """Activity at every level of ``flow`` (pooled from the fine spikes through each level's ``membership``)."""
    return [pool_activity(data, level.membership, mode) for level in flow]
