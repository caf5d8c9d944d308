"""Figures for the renormalization flow (matplotlib, Agg backend, imported only when a plot is drawn)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_specific_heat", "plot_metagraph", "plot_flow"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    from dgrn.data import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120,
                                               bbox_inches="tight"))
    _pyplot().close(fig)
    return path


def plot_specific_heat(curves: dict, path: str | Path, tau_star: float | None = None, peaks: list | None = None,
                       title: str = "") -> Path:
    """Specific heat C(tau) (and the entropy S(tau) on a second axis) on a log-tau axis, tau* marked."""
    plt = _pyplot()
    tau = np.asarray(curves["tau"])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.semilogx(tau, np.asarray(curves["specific_heat"]), color="C3", label="C(τ)")
    ax.set_xlabel("diffusion time τ")
    ax.set_ylabel("specific heat C", color="C3")
    twin = ax.twinx()
    twin.semilogx(tau, np.asarray(curves["entropy"]), color="C0", ls="--", label="S(τ)")
    twin.set_ylabel("entropy S / ln N", color="C0")
    twin.set_ylim(0, 1.02)
    for p in peaks or []:
        if p.plateau is not None:
            ax.axvspan(*p.plateau, color="0.9", zorder=0)
    if tau_star is not None:
        ax.axvline(tau_star, color="k", lw=1, ls=":", label=f"τ* = {tau_star:.3g}")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_metagraph(graph: Any, path: str | Path, node_size: np.ndarray | None = None, title: str = "",
                   max_nodes: int = 2000) -> Path | None:
    """Draw a (meta)graph: spectral layout, node area proportional to ``node_size`` (e.g. neurons per supernode),
    edge width to weight. Graphs with more than ``max_nodes`` nodes are not drawn (returns None)."""
    from dgrn.renorm.graphs import as_adjacency, undirected

    a, _ = as_adjacency(graph)
    n = a.shape[0]
    if n > max_nodes:
        return None
    plt = _pyplot()
    s = undirected(a)
    if n >= 3 and s.nnz:
        from dgrn.renorm.laplacian import laplacian

        _, vecs = np.linalg.eigh(laplacian(s, "normalized").dense())
        pos = vecs[:, 1:3] * np.sqrt(n)
    else:
        angle = 2 * np.pi * np.arange(n) / max(n, 1)
        pos = np.column_stack([np.cos(angle), np.sin(angle)])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    coo = s.tocoo()
    if coo.nnz:
        upper = coo.row < coo.col
        w = coo.data[upper]
        for i, j, wij in zip(coo.row[upper], coo.col[upper], 0.3 + 2.5 * w / w.max()):
            ax.plot(pos[[i, j], 0], pos[[i, j], 1], color="0.6", lw=wij, zorder=1)
    size = np.ones(n) if node_size is None else np.asarray(node_size, dtype=float)
    ax.scatter(pos[:, 0], pos[:, 1], s=20 + 300 * size / size.max(), color="C1", edgecolor="k", zorder=2)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_flow(flow: list, n_input: int, path: str | Path) -> Path:
    """Number of nodes and entropy S(tau*) versus level of an RG flow."""
    plt = _pyplot()
    levels = [0] + [lv.level for lv in flow]
    nodes = [n_input] + [lv.n_nodes for lv in flow]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.semilogy(levels, nodes, "o-", color="C1")
    ax.set_xlabel("RG level")
    ax.set_ylabel("nodes", color="C1")
    ax.set_xticks(levels)
    twin = ax.twinx()
    twin.plot([lv.level for lv in flow], [lv.entropy for lv in flow], "s--", color="C0")
    twin.set_ylabel("entropy S(τ*) of the finer graph", color="C0")
    return _save(fig, path)
