"""Figures for the renormalization flow (matplotlib, Agg backend, imported only when a plot is drawn)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_specific_heat", "plot_metagraph", "plot_flow", "plot_entropy_per_unit", "plot_participation_ratio",
           "plot_level_predictions", "plot_dynamic_scaling"]


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
    from dgrn.renorm.graphs import read_diffusion_graph, undirected

    a, _ = read_diffusion_graph(graph)
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


def _level_axis(ax, rows: list[dict]) -> list[int]:
    """Levels on the x axis, each tick labelled with its number of units."""
    levels = [r["level"] for r in rows]
    ax.set_xticks(levels)
    ax.set_xticklabels([f"{r['level']}\n({r['n_units']} units)" for r in rows], fontsize=8)
    ax.set_xlabel("RG level")
    return levels


def plot_entropy_per_unit(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Entropy per unit versus RG level (rows of :func:`dgrn.readouts.scale_readouts`): the model's held-out NLL
    per unit (where given) against the time-shuffled (pattern) and independent-units nulls. A flat curve across
    levels is the scale-invariance read-out (Meshulam et al. 2019)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    levels = _level_axis(ax, rows)
    ax.plot(levels, [r["independent_entropy_per_unit"] for r in rows], "s--", color="C0", label="independent units")
    ax.errorbar(levels, [r["pattern_entropy_per_unit"] for r in rows],
                yerr=[r["pattern_entropy_stderr"] for r in rows], fmt="o-", color="C2", mfc="none", capsize=3,
                label="time-shuffled (pattern)")
    model = [(lv, r["model_entropy_per_unit"]) for lv, r in zip(levels, rows)
             if r["model_entropy_per_unit"] is not None]
    if model:
        ax.plot(*zip(*model), "D-", color="C3", label="model (held-out NLL)")
    ax.set_ylabel("entropy per unit (nats / bin)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_participation_ratio(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Effective dimension (participation ratio of the covariance) versus RG level, with the number of units (its
    upper bound) for reference; rows of :func:`dgrn.readouts.scale_readouts`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    levels = _level_axis(ax, rows)
    ax.semilogy(levels, [r["n_units"] for r in rows], "k:", label="units (upper bound)")
    kept = [(lv, r["participation_ratio"]) for lv, r in zip(levels, rows) if r["participation_ratio"] is not None]
    if kept:
        ax.semilogy(*zip(*kept), "o-", color="C1", label="participation ratio")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # plain numbers 1, 2, 5, 10, ... on the log axis
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("effective dimension")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_level_predictions(probabilities: list, activity: list, path: str | Path, max_bins: int = 300,
                           max_units: int = 120) -> Path:
    """One row per renormalization level: the predicted next-bin firing probability of each unit (heat map) over
    the first ``max_bins`` bins, with the observed activity (dots) on top, plus each unit's mean predicted versus
    observed rate. ``probabilities[l]`` and ``activity[l]`` are ``(T, n_l)``."""
    plt = _pyplot()
    levels = len(probabilities)
    fig, axes = plt.subplots(levels, 2, figsize=(10, 2.2 * levels), squeeze=False,
                             gridspec_kw={"width_ratios": [4, 1]})
    for lvl, (p, a) in enumerate(zip(probabilities, activity)):
        p, a = np.asarray(p, dtype=float), np.asarray(a, dtype=float)
        units = min(p.shape[1], max_units)
        ax = axes[lvl, 0]
        ax.imshow(p[:max_bins, :units].T, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        t, u = np.nonzero(a[:max_bins, :units])
        ax.scatter(t, u, s=2, c="C3", marker="|", linewidths=0.6)
        ax.set_ylabel(f"level {lvl}\n({p.shape[1]} units)", fontsize=8)
        ax.set_xlabel("bin" if lvl == levels - 1 else "")
        rate_ax = axes[lvl, 1]
        rate_ax.scatter(a.mean(0), p.mean(0), s=4, color="C0")
        hi = max(a.mean(0).max(), p.mean(0).max(), 1e-3)
        rate_ax.plot([0, hi], [0, hi], color="0.6", lw=0.8)
        rate_ax.set_xlabel("observed rate" if lvl == levels - 1 else "", fontsize=8)
        rate_ax.set_ylabel("predicted", fontsize=8)
    axes[0, 0].set_title("predicted next-bin probability (grey) and observed activity (red)", fontsize=9)
    return _save(fig, path)


def plot_dynamic_scaling(result: dict, path: str | Path, title: str = "", rescaled: bool = False) -> Path:
    """Dynamic scaling (a result of :func:`dgrn.readouts.dynamic_scaling` or
    :func:`~dgrn.readouts.level_autocorrelation_times`). Left: the mean autocorrelation C_K(t) of the clusters of K
    units, one curve per K, against the lag t in bins (``rescaled``: against t / tau_c(K), where the curves collapse
    for scale-invariant dynamics), the 1/e level dotted. Right: tau_c(K) on log-log axes with the fitted power law
    tau_c ~ K^z."""
    plt = _pyplot()
    ks = list(result["K"])
    taus = [np.nan if t is None else float(t) for t in result["tau_c"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    finite = [t for t in taus if np.isfinite(t)]
    span = len(result["autocorrelation"][0]) - 1
    if not rescaled and finite:
        span = min(span, max(5, int(np.ceil(5 * max(finite)))))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(ks)))
    for k, tau, curve, color in zip(ks, taus, result["autocorrelation"], colors):
        c = np.asarray(curve, dtype=float)
        t = np.arange(len(c), dtype=float)
        if rescaled:
            if not np.isfinite(tau):
                continue
            t = t / tau
        keep = t <= (5.0 if rescaled else span)
        left.plot(t[keep], c[keep], color=color, marker="." if keep.sum() < 30 else None, label=f"K = {k:g}")
    left.axhline(float(result.get("level", np.exp(-1))), color="0.5", lw=0.8, ls=":")
    left.axhline(0, color="0.8", lw=0.6)
    left.set_xlabel("t / τ_c(K)" if rescaled else "lag t (bins)")
    left.set_ylabel("C_K(t)")
    left.legend(fontsize=7, frameon=False, ncol=2)
    good = [(k, t) for k, t in zip(ks, taus) if np.isfinite(t) and t > 0]
    if good:
        kk, tt = np.asarray(good, dtype=float).T
        right.loglog(kk, tt, "o", color="C3", label="τ_c(K)")
        z = result.get("z")
        if z is not None and len(good) >= 2:
            amp = np.exp(np.mean(np.log(tt) - z * np.log(kk)))
            grid = np.geomspace(kk.min(), kk.max(), 50)
            err = result.get("z_stderr")
            label = f"∝ K^z, z = {z:.3f}" + (f" ± {err:.3f}" if err is not None else "")
            right.loglog(grid, amp * grid ** z, "-", color="k", lw=1, label=label)
        right.legend(fontsize=8, frameon=False)
    from matplotlib.ticker import FuncFormatter

    for axis in (right.xaxis, right.yaxis):  # plain numbers; minor ticks labelled only on a range below 1 decade
        def minor(v, _, axis=axis):
            lo, hi = sorted(axis.get_view_interval())
            return f"{v:.3g}" if lo > 0 and hi / lo < 10 else ""

        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(FuncFormatter(minor))
    right.set_xlabel("cluster size K")
    right.set_ylabel("correlation time τ_c (bins)")
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.3)
    return _save(fig, path)
