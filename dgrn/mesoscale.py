r"""Mesoscale evaluation: coarse states of a population, their forecasting and the statistics of generated activity.

Plain functions on tensors, independent of any trained model except :func:`rollout`, which draws from any next-bin
net that has ``sample(x, n_samples, generator)`` (every net in :mod:`dgrn.nn`).

* :func:`coarse_states`: which units (clusters, communities) are *active* in each window, by one rate rule for every
  model and for the data: a unit is active when its per-neuron rate exceeds ``active_factor`` times a reference rate
  (the rule of :func:`dgrn.sim.clustered_activity_summary`, for any grouping of neurons).
* :func:`run_lengths`: durations of the active states.
* :func:`rollout`: Monte-Carlo continuations of windows under a model.
* :func:`forecast_scores`: log-likelihood and AUROC of forecast coarse states.
* :func:`activity_statistics` and :func:`compare_statistics`: rates, Fano factors, pairwise correlations, numbers
  of simultaneously active units and state durations of data and of free-running samples, and their distances
  (the Kolmogorov-Smirnov statistic of the durations).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["coarse_states", "run_lengths", "rollout", "forecast_scores", "activity_statistics",
           "compare_statistics"]


def _spikes(x, what: str = "spikes") -> Tensor:
    x = torch.as_tensor(x)
    if x.dim() < 2 or x.shape[-2] == 0 or x.shape[-1] == 0:
        raise ValueError(f"{what} must be (..., T >= 1, N >= 1) activity, got shape {tuple(x.shape)}")
    return (x > 0).double()


def _labels(labels, n: int) -> tuple[Tensor, int]:
    labels = torch.as_tensor(np.asarray(labels)).long()
    if labels.shape != (n,) or not (labels >= 0).any():
        raise ValueError(f"labels must be {n} integers (the unit of every neuron, -1 for none), at least one of them "
                         f"a unit; got shape {tuple(labels.shape)}")
    return labels, int(labels.max()) + 1


def coarse_states(spikes, labels, bins_per_window: int, *, active_factor: float = 3.0,
                  reference_rate: float | None = None) -> Tensor:
    r"""Active units per window, ``(..., T // bins_per_window, K)`` bool.

    Unit :math:`u` (the neurons with ``labels == u``) is active in a window of ``bins_per_window`` bins when its
    spikes per neuron and bin exceed ``active_factor`` :math:`\times` ``reference_rate`` (default: the mean over all
    neurons and bins of ``spikes``; give the training split's, so that data and samples are judged by one rule).

    Args:
        spikes: ``(..., T, N)`` activity (counts are binarized). labels: ``(N,)`` unit of every neuron, ``-1`` for
            neurons in no unit (e.g. the inhibitory population of a clustered network); a unit with no neuron is
            never active.
    """
    x = _spikes(spikes)
    labels, k = _labels(labels, x.shape[-1])
    if int(bins_per_window) != bins_per_window or bins_per_window < 1:
        raise ValueError(f"bins_per_window must be an integer >= 1, got {bins_per_window!r}")
    if not active_factor > 0:
        raise ValueError(f"active_factor must be > 0, got {active_factor}")
    rate = float(x.mean()) if reference_rate is None else float(reference_rate)
    n_windows = x.shape[-2] // bins_per_window
    per_window = x[..., :n_windows * bins_per_window, :].unflatten(-2, (n_windows, bins_per_window)).sum(-2)
    member = labels >= 0
    counts = per_window.new_zeros(*per_window.shape[:-1], k).index_add_(-1, labels[member], per_window[..., member])
    size = torch.bincount(labels[member], minlength=k).double()
    return counts / (size.clamp_min(1) * bins_per_window) > active_factor * rate


def run_lengths(states) -> Tensor:
    """Lengths of every run of consecutive active windows, pooled over units (and leading dimensions), in windows:
    ``states (..., W, K)`` bool -> ``(R,)`` long (a run cut by the end of the record counts as it is)."""
    s = torch.as_tensor(states).bool()
    if s.dim() < 2:
        raise ValueError(f"states must be (..., windows, units), got shape {tuple(s.shape)}")
    s = s.movedim(-2, -1).reshape(-1, s.shape[-2]).to(torch.int8)  # (units, windows)
    padded = torch.nn.functional.pad(s, (1, 1))
    edges = padded[:, 1:] - padded[:, :-1]
    starts, stops = (edges == 1).nonzero()[:, 1], (edges == -1).nonzero()[:, 1]
    return stops - starts  # nonzero() is row-major: the k-th start and stop of every unit pair up


@torch.no_grad()
def rollout(net, windows: Tensor, n_bins: int, n_rollouts: int = 1,
            generator: torch.Generator | None = None, memory: int | None = None,
            chunk_size: int | None = None) -> Tensor:
    """``n_rollouts`` continuations of each window under ``net``, ``(B, n_rollouts, n_bins, N)`` (neurons' order).

    ``net`` is a next-bin model of :mod:`dgrn.nn` (its ``sample(x, n_samples, generator)``); each step feeds the
    last ``memory`` bins (observed, then drawn; default: the windows' length ``W``) back, so a recurrent model sees
    as much past as in a training window of ``W`` bins and a model with a finite history uses the last bins it needs;
    a :class:`~dgrn.nn.MultiscaleBornMachine` with time scales draws a whole top-level block per step (cut to
    ``n_bins``). A model with ``start_rollout(x)`` and ``rollout_step(state, generator)`` (the switching GLM,
    :class:`~dgrn.nn.BernoulliHMM`; :class:`~dgrn.nn.MultiscaleBornMachine` without time scales) makes the same
    draws from the same windows (up to rounding) while keeping what does not change in them from step to step.
    ``chunk_size`` bounds the rollouts drawn at once (default: all ``B * n_rollouts``): the model's intermediates
    grow with ``chunk_size * memory * N``, so a large population needs chunks to fit in memory; chunks draw from the
    same distribution as one batch."""
    if windows.dim() != 3:
        raise ValueError(f"windows must be (B, W, N), got shape {tuple(windows.shape)}")
    if n_bins < 1 or n_rollouts < 1:
        raise ValueError(f"need n_bins >= 1 and n_rollouts >= 1, got {n_bins}, {n_rollouts}")
    context = int(net.context)
    memory = windows.shape[1] if memory is None else int(memory)
    if memory < context or windows.shape[1] < memory:
        raise ValueError(f"memory must lie between the model's context ({context}) and the windows' length "
                         f"({windows.shape[1]} bins), got {memory}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch, _, n = windows.shape
    pasts = windows[:, -memory:].repeat_interleave(n_rollouts, 0)
    chunks = [_continue(net, x, n_bins, memory, generator) for x in pasts.split(chunk_size or pasts.shape[0])]
    return torch.cat(chunks).reshape(batch, n_rollouts, n_bins, n)


def _continue(net, x: Tensor, n_bins: int, memory: int, generator: torch.Generator | None) -> Tensor:
    """``n_bins`` bins drawn after each past ``x`` ``(B, memory, N)``, ``(B, n_bins, N)``. Past and draws share one
    buffer, and the model is fed a view of its last ``memory`` bins: no copy of the window per step."""
    state = net.start_rollout(x) if hasattr(net, "start_rollout") else None
    if state is not None:  # the model keeps what does not change in its window from step to step
        draws = x.new_empty(x.shape[0], n_bins, x.shape[2])
        for t in range(n_bins):
            draws[:, t], state = net.rollout_step(state, generator)
        return draws
    steps = getattr(net, "time_scales", [1])[-1]  # bins drawn per step
    buffer = x.new_empty(x.shape[0], memory + n_bins + steps - 1, x.shape[2])
    buffer[:, :memory] = x
    total = 0
    while total < n_bins:
        out = net.sample(buffer[:, total:total + memory], 1, generator=generator)
        if isinstance(out, list):  # multiscale: level 0, in decoder order
            out = net.to_neurons(out[0])
        step = out.reshape(x.shape[0], -1, x.shape[2])  # (B, bins drawn, N)
        if step.shape[1] > steps:
            raise RuntimeError(f"{type(net).__name__}.sample drew {step.shape[1]} bins, more than its {steps}")
        buffer[:, memory + total:memory + total + step.shape[1]] = step
        total += step.shape[1]
    return buffer[:, memory:memory + n_bins]


def forecast_scores(probability, truth) -> dict:
    """Log-likelihood (nats per unit and window, Bernoulli) and AUROC of forecast coarse states: ``probability``
    and ``truth`` ``(..., K)``. Probabilities from ``n`` rollouts should be smoothed away from 0 and 1 first (e.g.
    ``(hits + 0.5) / (n + 1)``): a log-likelihood is -inf for one certain miss. AUROC is ``None`` when ``truth`` is
    all one class."""
    from torchmetrics.functional.classification import binary_auroc

    p = torch.as_tensor(probability).double().reshape(-1)
    y = torch.as_tensor(truth).reshape(-1).bool()
    if p.shape != y.shape:
        raise ValueError(f"probability and truth differ in size: {p.numel()} vs {y.numel()}")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    log_lik = torch.where(y, p.log(), (1 - p).log()).mean().item()
    auroc = None if y.all() or not y.any() else float(binary_auroc(p, y.long()))
    return {"log_likelihood": log_lik, "auroc": auroc, "base_rate": float(y.double().mean())}


def activity_statistics(spikes, labels, bins_per_window: int, corr_bins: int, *, active_factor: float = 3.0,
                        reference_rate: float | None = None) -> dict:
    """Statistics of one record ``(T, N)`` (data, or activity sampled from a model) for :func:`compare_statistics`:
    ``rates`` per neuron (spikes per bin), ``fano`` per neuron and ``correlations`` (upper triangle, Pearson) of the
    spike counts in windows of ``corr_bins`` bins, the coarse states' ``durations`` (windows of
    ``bins_per_window``) and ``n_active`` (units active at once, per window); neurons silent in a record get NaN
    Fano factors and correlations."""
    x = _spikes(spikes)
    if x.dim() != 2:
        raise ValueError(f"spikes must be (T, N), got shape {tuple(x.shape)}")
    states = coarse_states(x, labels, bins_per_window, active_factor=active_factor, reference_rate=reference_rate)
    n_windows = x.shape[0] // corr_bins
    if n_windows < 2:
        raise ValueError(f"{x.shape[0]} bins make fewer than 2 windows of {corr_bins} bins")
    counts = x[:n_windows * corr_bins].unflatten(0, (n_windows, corr_bins)).sum(1)
    mean, var = counts.mean(0), counts.var(0)
    corr = torch.corrcoef(counts.T)
    upper = torch.triu_indices(x.shape[1], x.shape[1], 1)
    return {"rates": x.mean(0), "fano": var / mean, "correlations": corr[upper[0], upper[1]],
            "durations": run_lengths(states), "n_active": states.sum(-1)}


def compare_statistics(data: dict, model: dict) -> dict:
    """Distances between two :func:`activity_statistics`: ``durations_ks`` (two-sample Kolmogorov-Smirnov
    statistic of the state durations; 1.0 when one side has no active state), ``n_active_tv`` (total variation
    between the distributions of the number of units active at once), and root-mean-square differences of the
    rates (``rate_rmse``), Fano factors and pairwise correlations (over the neurons and pairs defined in both),
    with the data's mean durations and Fano factors for scale."""
    from scipy.stats import ks_2samp

    durations = [d["durations"].numpy() for d in (data, model)]
    ks = 1.0 if min(len(d) for d in durations) == 0 else float(ks_2samp(*durations).statistic)
    top = int(max(data["n_active"].max(), model["n_active"].max())) + 1
    hist = [torch.bincount(d["n_active"].long(), minlength=top).double() / d["n_active"].numel()
            for d in (data, model)]

    def rmse(key: str) -> float:
        a, b = data[key], model[key]
        ok = torch.isfinite(a) & torch.isfinite(b)
        return float(((a[ok] - b[ok]) ** 2).mean().sqrt()) if ok.any() else math.nan

    return {"durations_ks": ks, "n_active_tv": 0.5 * float((hist[0] - hist[1]).abs().sum()),
            "rate_rmse": rmse("rates"), "fano_rmse": rmse("fano"), "correlation_rmse": rmse("correlations"),
            "data_mean_duration": float(data["durations"].double().mean()) if len(durations[0]) else math.nan,
            "model_mean_duration": float(model["durations"].double().mean()) if len(durations[1]) else math.nan}
