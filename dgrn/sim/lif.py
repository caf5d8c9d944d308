"""Leaky integrate-and-fire networks: an exactly integrated, event-driven simulator in torch, and the clustered
excitatory/inhibitory network of Litwin-Kumar & Doiron (Nat. Neurosci. 2012)."""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from dgrn.data import SpikeData

__all__ = [
    "LIF_PRESETS",
    "SpikeTimes",
    "clustered_lif",
    "clustered_lif_network",
    "clustered_activity_summary",
    "isi_cv",
    "lif_preset",
    "lif_propagator",
    "simulate_lif",
    "simulate_lif_binned",
]


class SpikeTimes(NamedTuple):
    """Spike events of a simulation: ``times`` ``(S,)`` float64 seconds, ``units`` ``(S,)`` long neuron indices,
    sorted by time. ``SpikeData.from_spike_times(*spike_times, dt=..., t_start=0, t_stop=duration)`` bins them."""

    times: Tensor
    units: Tensor


#: Litwin-Kumar & Doiron 2012 (parameters as two public re-implementations agree; see ../shared/NOTES.md).
#: Naming: ``j_xy`` / ``p_xy`` is the connection *from* population ``y`` *to* population ``x`` (``W[post, pre]``).
_LKD2012 = dict(
    n_exc=4000, n_inh=1000, n_clusters=50,
    p_ee=0.2, p_ei=0.5, p_ie=0.5, p_ii=0.5, r_ee=2.5, cluster_weight=1.9,
    j_ee=0.024, j_ei=0.045, j_ie=0.014, j_ii=0.057,
    tau_m_exc=15e-3, tau_m_inh=10e-3, tau_rise=1e-3, tau_decay_exc=3e-3, tau_decay_inh=2e-3,
    mu_exc=(1.1, 1.2), mu_inh=(1.0, 1.05), v_threshold=1.0, v_reset=0.0, refractory_s=5e-3,
)


def _scaled(n_exc: int, n_inh: int, n_clusters: int) -> dict:
    """The LKD2012 network shrunk to ``n_exc + n_inh`` neurons with its cluster size (80) and connection
    probabilities kept; weights grow as ``1/sqrt(in-degree)`` (balanced-network scaling)."""
    g = math.sqrt(_LKD2012["n_exc"] / n_exc)
    return {**_LKD2012, "n_exc": n_exc, "n_inh": n_inh, "n_clusters": n_clusters,
            **{k: _LKD2012[k] * g for k in ("j_ee", "j_ei", "j_ie", "j_ii")}}


#: Named parameter sets for :func:`clustered_lif` (``lif_preset(name, duration_s, dt, seed=...)``). ``lkd2012``
#: is the paper's network (about 4.6 Hz, ISI CV 1.0-1.5, slow cluster switching) and ``metastable`` a 1500-neuron
#: network in the same regime; at 1000 and 200 neurons the ``small`` / ``tiny`` networks, with weights scaled by
#: 1/sqrt(in-degree), fire regularly (40-120 Hz, CV about 0.1, no switching): they exercise the machinery.
LIF_PRESETS: dict[str, dict] = {
    "lkd2012": dict(_LKD2012),
    "small": _scaled(800, 200, 10),
    "tiny": _scaled(160, 40, 2),
    # The lkd2012 regime at 1200 E / 300 I. Weights scale as 1/in-degree (x 4000/1200), not 1/sqrt: this keeps the
    # mean recurrent input J*K of lkd2012, so its E/I balance and low rates, while the finite-size fluctuations
    # (J^2*K, x 10/3) drive the switching. Clusters of 50 (24 clusters, p_in/p_out = 2.5 as in lkd2012) with a
    # weaker within-cluster factor J+ = 1.45 (1.9 locks 3-4 clusters of 80 at 100+ Hz for good; 1.4 gives only
    # 50-100 ms blips and no stay over 1 s, 1.475-1.6 fewer clusters, longer stays, CV up to 1.7). Measured with
    # clustered_activity_summary (lif_preset("metastable", 30.0, 0.005, seed=s), s = 0 / 1 / 2 / 3): E 4.6 / 4.9 /
    # 5.3 / 4.8 Hz, I 6.3 / 6.6 / 7.1 / 6.6 Hz, median ISI CV 1.10 / 1.30 / 1.04 / 1.04, 0.72 / 0.95 / 1.06 / 0.99
    # clusters active at a time (cluster above 3x the mean E rate in 50 ms windows, at about 40 Hz), 140 / 98 / 110 /
    # 112 active stays from 0.05 s to 2.1 / 2.55 / 2.75 / 3.25 s (median 0.05 / 0.1 / 0.1 / 0.1 s, 90th percentile
    # 0.30 / 0.78 / 0.75 / 0.50 s), 19 / 12 / 9 / 15 of the 24 clusters switching on, cluster-vs-rest correlation
    # -0.16 / -0.28 / -0.23 / -0.25. About 0.8 s of CPU (one thread) per simulated second.
    # (lkd2012, seed 0, 10 s: E 4.5 Hz, CV 1.5, 2.25 of 50 active, median 0.20 s, 90th percentile 1.06 s, max 2.4 s,
    # 23 of 50 clusters switching on, cluster-vs-rest -0.43; about 2.1 s per simulated second.)
    "metastable": {**_LKD2012, "n_exc": 1200, "n_inh": 300, "n_clusters": 24, "cluster_weight": 1.45,
                   **{k: _LKD2012[k] * 4000 / 1200 for k in ("j_ee", "j_ei", "j_ie", "j_ii")}},
}


# ----------------------------------------------------------------------------------------------- integration
def lif_propagator(
    tau_m: float | Tensor, h: float, *, tau_rise: float, tau_decay_exc: float, tau_decay_inh: float,
) -> Tensor:
    r"""Exact one-step propagator ``P = exp(A h)`` of the linear subthreshold dynamics, state
    ``s = (V, x_e, x_i, y_e, y_i, \mu)``:

    .. math::
        \dot V = \frac{\mu - V}{\tau_m} + \frac{x_e}{\tau_{d,e} - \tau_r} + \frac{x_i}{\tau_{d,i} - \tau_r}, \quad
        \dot x_k = -\frac{x_k}{\tau_r} + \frac{\tau_{d,k} - \tau_r}{\tau_r \tau_{d,k}}\, y_k, \quad
        \dot y_k = -\frac{y_k}{\tau_{d,k}}, \quad \dot\mu = 0.

    A presynaptic spike adds its signed weight ``J`` to ``y_e`` (``J > 0``) or ``y_i`` (``J < 0``); the current
    :math:`x_k / (\tau_{d,k} - \tau_r)` is then ``J`` times the unit-area difference of exponentials
    :math:`(e^{-t/\tau_d} - e^{-t/\tau_r}) / (\tau_d - \tau_r)`, so ``J`` is the total voltage kick.

    Args:
        tau_m: membrane time constant(s) in seconds, scalar or ``(U,)``. h: time step in seconds.

    Returns:
        ``(6, 6)`` or ``(U, 6, 6)`` float64 propagator, ``s(t + h) = P s(t)`` between spikes.
    """
    for name, tau in (("tau_decay_exc", tau_decay_exc), ("tau_decay_inh", tau_decay_inh)):
        if not tau > tau_rise > 0:
            raise ValueError(f"need {name} > tau_rise > 0 (difference-of-exponentials synapse), got {tau} and {tau_rise}")
    tau_m = torch.as_tensor(tau_m, dtype=torch.float64)
    if (tau_m <= 0).any():
        raise ValueError(f"membrane time constants must be positive, got {tau_m.tolist()}")
    a = torch.zeros(*tau_m.shape, 6, 6, dtype=torch.float64)
    a[..., 0, 0] = -1.0 / tau_m
    a[..., 0, 5] = 1.0 / tau_m
    for x, y, tau_d in ((1, 3, tau_decay_exc), (2, 4, tau_decay_inh)):
        a[..., 0, x] = 1.0 / (tau_d - tau_rise)
        a[..., x, x] = -1.0 / tau_rise
        a[..., x, y] = (tau_d - tau_rise) / (tau_rise * tau_d)
        a[..., y, y] = -1.0 / tau_d
    return torch.linalg.matrix_exp(a * h)


#: voltage of a refractory neuron in event mode: no input can bring it to threshold before it is reset (finite, so
#: that the zero entries of the propagator keep the synaptic variables exact)
_HELD = -1e30


class _Synapses:
    """Signed weights ``W[post, pre]`` laid out for one of three ways of delivering spikes into the ``(6, N)``
    variable-major state: a positive weight feeds the excitatory synaptic variable ``y_e`` (row 3), a negative one
    ``y_i`` (row 4), i.e. flat state index ``(3 + [w < 0]) N + post``.

    ``event`` (CPU, large sparse networks): a step touches only the outgoing synapses of the neurons that spiked.
    They sit in an ELLPACK table, one row of targets and weights per presynaptic neuron padded to the largest
    out-degree (three tensor operations per step); when padding would more than quadruple the storage (hubs),
    in CSC order with the rows of the spiking neurons gathered by ``repeat_interleave``.
    ``dense`` / ``sparse``: one matrix-vector product ``W_split @ spiked`` per step, ``W_split`` ``(2N, N)`` with
    row ``[w < 0] N + post``, no host synchronisation (GPU).
    """

    def __init__(self, post: Tensor, pre: Tensor, weight: Tensor, n: int, mode: str, device, dtype) -> None:
        self.mode, self.n = mode, n
        channel = (weight < 0).long()
        if mode == "event":
            order = torch.argsort(pre, stable=True)
            pre, target, weight = pre[order], ((3 + channel) * n + post)[order], weight[order]
            degree = torch.bincount(pre, minlength=n)
            start = degree.cumsum(0) - degree
            width = int(degree.max()) if pre.numel() else 0
            index_dtype = torch.int32 if 6 * n < 2**31 else torch.long
            self.ell = n * width <= 4 * pre.numel() + n
            if self.ell:  # padding: weight 0 onto a valid index
                slot = torch.arange(pre.numel()) - start[pre]
                self.target = torch.full((n, width), 3 * n, dtype=index_dtype)
                self.target[pre, slot] = target.to(index_dtype)
                self.weight = torch.zeros(n, width, dtype=torch.float64)
                self.weight[pre, slot] = weight
                self.target, self.weight = self.target.to(device), self.weight.to(device, dtype)
            else:
                self.target, self.weight = target.to(device, index_dtype), weight.to(device, dtype)
                self.start, self.degree = start.to(device), degree.to(device)
        else:
            idx = torch.stack([channel * n + post, pre])
            w = torch.sparse_coo_tensor(idx, weight, (2 * n, n), check_invariants=False).coalesce()
            if mode == "dense":
                w = w.to_dense()
            else:
                with warnings.catch_warnings():  # "sparse CSR support is in beta": matvec is all we use
                    warnings.simplefilter("ignore", UserWarning)
                    w = w.to_sparse_csr()
            self.matrix = w.to(device=device, dtype=dtype)

    def deliver(self, state: Tensor, spiked: Tensor, idx: Tensor | None) -> None:
        """Add the weights of the spiking neurons (``spiked`` mask, or their indices ``idx`` in event mode)."""
        if self.mode != "event":
            state[3:5].add_((self.matrix @ spiked.to(state.dtype)).view(2, self.n))
        elif self.ell:
            state.view(-1).index_add_(0, self.target.index_select(0, idx).view(-1),
                                      self.weight.index_select(0, idx).view(-1))
        else:
            counts = self.degree.index_select(0, idx)
            total = int(counts.sum())
            # synapse ids of all spiking neurons, concatenated: start_k + 0 .. degree_k - 1
            offset = torch.repeat_interleave(self.start.index_select(0, idx) - (counts.cumsum(0) - counts), counts,
                                             output_size=total)
            syn = offset + torch.arange(total, device=offset.device)
            state.view(-1).index_add_(0, self.target.index_select(0, syn), self.weight.index_select(0, syn))


def _progress(enabled: bool):
    """A rich progress bar over simulated steps (a no-op context when disabled)."""
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("simulating LIF"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=True)


@torch.no_grad()
def simulate_lif(
    weights: Tensor,
    *,
    tau_m: Tensor,
    mu: Tensor,
    duration_s: float,
    sim_dt: float = 1e-4,
    tau_rise: float = 1e-3,
    tau_decay_exc: float = 3e-3,
    tau_decay_inh: float = 2e-3,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    refractory_s: float = 5e-3,
    v0: Tensor | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float64,
    synapses: str = "auto",
    progress: bool | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Simulate a network of current-based LIF neurons with difference-of-exponential synapses.

    Per neuron (dimensionless voltage, threshold ``v_threshold``, reset ``v_reset``):

    .. math::
        \tau_m \dot V = \mu - V + \tau_m \sum_j W_{ij} \sum_{t_j} \kappa_{ij}(t - t_j),\qquad
        \kappa(t) = \frac{e^{-t/\tau_d} - e^{-t/\tau_r}}{\tau_d - \tau_r},

    with ``tau_d = tau_decay_exc`` for ``W_ij > 0`` and ``tau_decay_inh`` for ``W_ij < 0``; ``W_ij`` is the voltage
    kick of one spike of ``j`` on ``i``. Between spikes the linear state is advanced exactly by
    :func:`lif_propagator` (exact integration, Rotter & Diesmann 1999), so ``sim_dt`` only quantises spike times.
    Each step: integrate, hold refractory neurons at reset, threshold, deliver spikes (felt from the next step),
    reset (the order of Brian 2's default schedule). A crossing during step ``s`` is stamped ``t = s * sim_dt`` and
    the neuron is held at ``v_reset`` until ``t + refractory_s`` (Brian 2's conventions, so both give the same
    spikes for the same network).

    Args:
        weights: ``(N, N)`` signed ``W[post, pre]``, dense or torch sparse (COO/CSR); the diagonal is used as given.
        tau_m: ``(N,)`` membrane time constants (s). mu: ``(N,)`` constant drive (threshold units).
        duration_s: simulated time; ``round(duration_s / sim_dt)`` steps.
        v0: ``(N,)`` initial voltages (default: ``v_reset``).
        device, dtype: where and in which precision the dynamics runs.
        synapses: ``"event"`` (touch only the synapses of spiking neurons; the CPU default above 256 neurons),
            ``"dense"`` (dense ``(2N, N)`` matvec; the default up to 256 neurons on CPU, 2048 on CUDA), ``"sparse"``
            (CSR matvec, no host synchronisation; the CUDA default above 2048 neurons) or ``"auto"``.
        progress: show a progress bar (default: when ``steps x N >= 1e8``).

    Returns:
        ``(steps, units)``: long tensors of the integration step and the neuron of every spike, in time order. The
        spike of step ``s`` happens at ``t = s * sim_dt``.
    """
    n = weights.shape[0]
    if weights.dim() != 2 or weights.shape[1] != n:
        raise ValueError(f"weights must be a square (N, N) matrix, got shape {tuple(weights.shape)}")
    if not sim_dt > 0:
        raise ValueError(f"sim_dt (integration step) must be > 0 s, got {sim_dt}")
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if refractory_s < 0 or not v_threshold > v_reset:
        raise ValueError(f"need refractory_s >= 0 and v_threshold > v_reset, got {refractory_s}, {v_threshold}, {v_reset}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    tau_m = torch.as_tensor(tau_m, dtype=torch.float64).reshape(-1).expand(n)
    mu = torch.as_tensor(mu, dtype=torch.float64).reshape(-1).expand(n)
    v0 = torch.full((n,), float(v_reset)) if v0 is None else torch.as_tensor(v0)
    v0 = v0.to(torch.float64).reshape(-1).expand(n)
    w = weights.detach().cpu().to_sparse_coo().coalesce()
    post, pre = w.indices()
    value = w.values().double()
    if not torch.isfinite(value).all():
        raise ValueError("weights contain NaN or infinite values")
    if synapses == "auto":
        synapses = ("dense" if n <= 256 else "event") if device.type == "cpu" else ("dense" if n <= 2048 else "sparse")
    if synapses not in ("event", "dense", "sparse"):
        raise ValueError(f"unknown synapses mode {synapses!r}; valid: ['auto', 'dense', 'event', 'sparse']")

    # Only the propagator's V row depends on tau_m (the synaptic variables do not see V): one (6, 6) x (6, N)
    # product advances every neuron with the first group's propagator, then one (1, 6) x (6, N_g) product per other
    # group redoes its V row. Neurons are ordered into contiguous groups (internal order; mapped back at the end).
    taus, group = torch.unique(tau_m, return_inverse=True)
    order = torch.argsort(group, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n)
    props = lif_propagator(taus, sim_dt, tau_rise=tau_rise, tau_decay_exc=tau_decay_exc, tau_decay_inh=tau_decay_inh)
    bounds = torch.bincount(group, minlength=len(taus)).cumsum(0).tolist()
    propagator = props[0].to(device, dtype)
    syn = _Synapses(rank[post], rank[pre], value, n, synapses, device, dtype)

    # double-buffered (6, N) state, rows V, x_e, x_i, y_e, y_i, mu: a step reads one buffer, writes the other
    buffers = torch.zeros(2, 6, n, device=device, dtype=dtype)
    buffers[:, 0] = v0[order].to(device, dtype)
    buffers[:, 5] = mu[order].to(device, dtype)
    states = (buffers[0], buffers[1])
    volts = tuple(b[0] for b in states)
    # per source buffer: (V row of a group's propagator, its neurons there, their V in the other buffer)
    v_updates = tuple(tuple((props[g, :1].to(device, dtype), states[c][:, lo:hi], states[1 - c][:1, lo:hi])
                            for g, (lo, hi) in enumerate(zip([0] + bounds[:-1], bounds)) if g)
                      for c in (0, 1))
    n_steps = int(round(duration_s / sim_dt))
    n_ref = int(round(refractory_s / sim_dt))
    refractory_until = torch.zeros(n, dtype=torch.long, device=device)  # matvec modes: clamp while step < this
    held: list[Tensor | None] = [None] * max(n_ref, 1)  # event mode: neurons released at step s sit in held[s % n_ref]

    chunk = 2000
    record = torch.empty(chunk, n, dtype=torch.bool, device=device) if synapses != "event" else None
    spike_steps: list[Tensor] = []
    spike_units: list[Tensor] = []
    event_units: list[Tensor] = []  # event mode, this chunk: the neurons that spiked at each step with spikes ...
    event_steps: list[int] = []  # ... and that step
    show = progress if progress is not None else n_steps * n >= 1e8
    cur = 0
    # Per-step tensors hold a few thousand numbers: intra-op threads only add synchronisation (measured 10-20x
    # slower per step on a busy 2-core machine), so the loop runs single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _progress(show) as bar:
            task = bar.add_task("lif", total=n_steps) if bar is not None else None
            for c0 in range(0, n_steps, chunk):
                c1 = min(c0 + chunk, n_steps)
                for step in range(c0, c1):  # sequential dynamics: a loop over time steps only
                    nxt = 1 - cur
                    torch.mm(propagator, states[cur], out=states[nxt])
                    for v_row, src, dst in v_updates[cur]:
                        torch.mm(v_row, src, out=dst)
                    cur, state, v = nxt, states[nxt], volts[nxt]
                    if synapses == "event":
                        spiked = v >= v_threshold
                        idx = spiked.nonzero().view(-1)
                        if idx.numel():
                            syn.deliver(state, spiked, idx)
                            # refractory neurons sit far below threshold and are put at reset when it ends
                            v.index_fill_(0, idx, v_reset if n_ref <= 1 else _HELD)
                            if n_ref > 1:
                                held[(step + n_ref - 1) % n_ref] = idx
                            event_units.append(idx)
                            event_steps.append(step)
                        if n_ref > 1 and held[step % n_ref] is not None:
                            v.index_fill_(0, held[step % n_ref], v_reset)
                            held[step % n_ref] = None
                    else:
                        if n_ref:
                            v.masked_fill_(refractory_until > step, v_reset)
                        spiked = v >= v_threshold
                        syn.deliver(state, spiked, None)
                        v.masked_fill_(spiked, v_reset)
                        refractory_until.masked_fill_(spiked, step + n_ref)
                        record[step - c0] = spiked
                if record is not None:  # one host synchronisation per chunk
                    st, un = record[: c1 - c0].nonzero(as_tuple=True)
                    spike_steps.append(st + c0)
                    spike_units.append(un)
                elif event_units:  # one tensor per chunk: millions of per-step tensors cost gigabytes of RSS
                    counts = torch.tensor([u.numel() for u in event_units])
                    spike_steps.append(torch.repeat_interleave(torch.tensor(event_steps), counts))
                    spike_units.append(torch.cat(event_units))
                    event_units, event_steps = [], []
                if bar is not None:
                    bar.update(task, completed=c1)
    finally:
        torch.set_num_threads(threads)
    if not torch.isfinite(states[cur]).all():
        raise FloatingPointError("LIF state became non-finite; check weights and time constants")
    if not spike_units:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(spike_steps).cpu(), order[torch.cat(spike_units).cpu()]


def simulate_lif_binned(
    weights: Tensor, *, duration_s: float, dt: float, sim_dt: float = 1e-4, burn_in_s: float = 0.0, **lif_kwargs,
) -> tuple[Tensor, SpikeTimes]:
    """:func:`simulate_lif` for ``burn_in_s + duration_s`` seconds; the spikes after the burn-in counted in bins of
    ``dt`` (a whole multiple of the integration step ``sim_dt``) and as :class:`SpikeTimes` (``t = 0`` at the end
    of the burn-in).

    Returns:
        ``(counts, spike_times)``: ``(duration_s / dt, N)`` spike counts and the exact spike times.
    """
    if not sim_dt > 0:
        raise ValueError(f"sim_dt (integration step) must be > 0 s, got {sim_dt}")
    if not dt > 0:
        raise ValueError(f"dt (bin size) must be > 0 s, got {dt}")
    steps_per_bin = round(dt / sim_dt)
    if steps_per_bin < 1 or abs(steps_per_bin * sim_dt - dt) > 1e-9 * dt:
        raise ValueError(f"dt (bin size, {dt} s) must be a whole multiple of the integration step sim_dt ({sim_dt} s)")
    n_bins = round(duration_s / dt)
    if n_bins < 1 or abs(n_bins * dt - duration_s) > 1e-6 * dt:
        raise ValueError(f"duration_s ({duration_s} s) must be a positive whole number of bins of dt = {dt} s")
    if burn_in_s < 0:
        raise ValueError(f"burn_in_s must be >= 0, got {burn_in_s}")
    burn_steps = round(burn_in_s / sim_dt)
    steps, units = simulate_lif(weights, duration_s=(burn_steps + n_bins * steps_per_bin) * sim_dt, sim_dt=sim_dt,
                                **lif_kwargs)
    keep = steps >= burn_steps
    steps, units = steps[keep] - burn_steps, units[keep]
    counts = SpikeData.count_events(steps // steps_per_bin, units, n_bins, weights.shape[0])
    return counts, SpikeTimes(steps.double() * sim_dt, units)


# --------------------------------------------------------------------------------------------- the network
def clustered_lif_network(
    n_exc: int,
    n_inh: int,
    n_clusters: int,
    *,
    p_ee: float = _LKD2012["p_ee"],
    p_ei: float = _LKD2012["p_ei"],
    p_ie: float = _LKD2012["p_ie"],
    p_ii: float = _LKD2012["p_ii"],
    r_ee: float = _LKD2012["r_ee"],
    cluster_weight: float = _LKD2012["cluster_weight"],
    j_ee: float = _LKD2012["j_ee"],
    j_ei: float = _LKD2012["j_ei"],
    j_ie: float = _LKD2012["j_ie"],
    j_ii: float = _LKD2012["j_ii"],
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Random E/I network with excitatory clusters (Litwin-Kumar & Doiron 2012).

    Neurons ``0 .. n_exc-1`` are excitatory, split into ``n_clusters`` contiguous clusters of near-equal size ``s``;
    the rest are inhibitory. Each ordered pair (no self-connections) is connected independently: E→E with
    :math:`p_{in} = R_{EE} p_{out}` inside a cluster and
    :math:`p_{out} = p_{EE} N_E / (R_{EE} s + N_E - s)` outside it (so the mean E→E probability stays ``p_ee``),
    and with ``p_ie`` (E→I), ``p_ei`` (I→E), ``p_ii`` (I→I). Weights are ``j_ee`` (× ``cluster_weight`` inside a
    cluster), ``j_ie``, ``-j_ei``, ``-j_ii`` (``x_y`` = from population ``y`` to ``x``).

    Returns:
        ``W`` ``(N, N)`` torch sparse COO float32, ``W[post, pre]`` the voltage kick of one spike of ``pre`` on
        ``post``; cluster labels ``(N,)`` long (E neurons ``0 .. n_clusters-1``, inhibitory neurons ``n_clusters``).
    """
    if n_exc < 1 or n_inh < 0:
        raise ValueError(f"need n_exc >= 1 and n_inh >= 0, got {n_exc}, {n_inh}")
    if not 1 <= n_clusters <= n_exc:
        raise ValueError(f"n_clusters must lie in [1, n_exc={n_exc}], got {n_clusters}")
    size = n_exc / n_clusters
    p_out = p_ee * n_exc / (r_ee * size + n_exc - size)
    p_in = r_ee * p_out
    for name, p in (("p_in (= r_ee * p_out)", p_in), ("p_out", p_out), ("p_ei", p_ei), ("p_ie", p_ie), ("p_ii", p_ii)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"connection probability {name} = {p} is not in [0, 1]")
    n = n_exc + n_inh
    labels = torch.cat([torch.arange(n_exc) * n_clusters // n_exc, torch.full((n_inh,), n_clusters)])
    inh = torch.arange(n) >= n_exc
    rows, cols, vals = [], [], []
    block = max(1, 4_000_000 // n)  # post-synaptic rows drawn at once: memory O(block * N), never N x N
    for r0 in range(0, n, block):
        r = torch.arange(r0, min(r0 + block, n))
        post_inh, pre_inh = inh[r, None], inh[None, :]
        same = labels[r, None] == labels[None, :]
        prob = torch.where(post_inh, torch.where(pre_inh, p_ii, p_ie),
                           torch.where(pre_inh, p_ei, torch.where(same, p_in, p_out)))
        weight = torch.where(post_inh, torch.where(pre_inh, -j_ii, j_ie),
                             torch.where(pre_inh, -j_ei, torch.where(same, j_ee * cluster_weight, j_ee)))
        present = torch.rand(len(r), n, generator=generator) < prob
        present[torch.arange(len(r)), r] = False
        i, j = present.nonzero(as_tuple=True)  # row-major: the indices come out sorted (coalesced)
        rows.append(i + r0)
        cols.append(j)
        vals.append(weight[i, j])
    w = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals).float(), (n, n),
                                check_invariants=False, is_coalesced=True)
    return w, labels


def lif_preset(name: str, duration_s: float, dt: float, *, seed: int = 0, **overrides) -> SpikeData:
    """:func:`clustered_lif` with the parameters of :data:`LIF_PRESETS` ``[name]`` (overridable by keyword)."""
    if name not in LIF_PRESETS:
        raise ValueError(f"unknown LIF preset {name!r}; valid: {sorted(LIF_PRESETS)}")
    params = {**LIF_PRESETS[name], **overrides}
    n_exc, n_inh, n_clusters = params.pop("n_exc"), params.pop("n_inh"), params.pop("n_clusters")
    out = clustered_lif(n_exc, n_inh, n_clusters, duration_s, dt, seed=seed, **params)
    (out[0] if isinstance(out, tuple) else out).meta["preset"] = name
    return out


@torch.no_grad()
def clustered_lif(
    n_exc: int,
    n_inh: int,
    n_clusters: int,
    duration_s: float,
    dt: float,
    *,
    seed: int = 0,
    sample_seed: int | None = None,
    sim_dt: float = 1e-4,
    burn_in_s: float = 0.5,
    p_ee: float = _LKD2012["p_ee"],
    p_ei: float = _LKD2012["p_ei"],
    p_ie: float = _LKD2012["p_ie"],
    p_ii: float = _LKD2012["p_ii"],
    r_ee: float = _LKD2012["r_ee"],
    cluster_weight: float = _LKD2012["cluster_weight"],
    j_ee: float = _LKD2012["j_ee"],
    j_ei: float = _LKD2012["j_ei"],
    j_ie: float = _LKD2012["j_ie"],
    j_ii: float = _LKD2012["j_ii"],
    tau_m_exc: float = _LKD2012["tau_m_exc"],
    tau_m_inh: float = _LKD2012["tau_m_inh"],
    tau_rise: float = _LKD2012["tau_rise"],
    tau_decay_exc: float = _LKD2012["tau_decay_exc"],
    tau_decay_inh: float = _LKD2012["tau_decay_inh"],
    mu_exc: tuple[float, float] = _LKD2012["mu_exc"],
    mu_inh: tuple[float, float] = _LKD2012["mu_inh"],
    v_threshold: float = _LKD2012["v_threshold"],
    v_reset: float = _LKD2012["v_reset"],
    refractory_s: float = _LKD2012["refractory_s"],
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float64,
    synapses: str = "auto",
    progress: bool | None = None,
    return_spike_times: bool = False,
) -> SpikeData | tuple[SpikeData, SpikeTimes]:
    r"""Clustered excitatory/inhibitory LIF network of Litwin-Kumar & Doiron (Nat. Neurosci. 2012).

    The network comes from :func:`clustered_lif_network` (defaults: the paper's probabilities and weights, which
    are meant for 4000 E / 1000 I neurons; :data:`LIF_PRESETS` holds that network, smaller ones with weights
    rescaled to their in-degree, which fire regularly, and ``metastable``, 1500 neurons in the paper's regime).
    Each neuron gets a constant drive ``mu`` uniform in ``mu_exc`` / ``mu_inh`` (threshold units) and the dynamics
    of :func:`simulate_lif` (membrane ``tau_m_exc`` / ``tau_m_inh``, synaptic rise ``tau_rise``, decay
    ``tau_decay_exc`` / ``tau_decay_inh``, absolute refractory period ``refractory_s``). The network has no noise:
    trajectories differ only through the random initial voltages (uniform in ``[v_reset, v_threshold)``) and the
    dynamics is chaotic, so ``sample_seed`` gives fresh trajectories of the same network.

    Args:
        n_exc, n_inh, n_clusters: population sizes and number of excitatory clusters.
        duration_s: recorded time in seconds, after ``burn_in_s`` seconds of discarded transient.
        dt: bin width of the returned spike counts (s); a multiple of the integration step ``sim_dt``.
        seed: seeds the network (connections, drives); ``sample_seed`` the initial voltages (default ``seed``).
        device, dtype, synapses, progress: see :func:`simulate_lif`. The network is always drawn on the CPU, so a
            seed gives the same network on every device.
        return_spike_times: also return the exact spike times as :class:`SpikeTimes` (``t = 0`` at the end of the
            burn-in).

    Returns:
        :class:`~dgrn.data.SpikeData` with ``spikes`` ``(T, N)`` counts in bins of ``dt`` (``T = duration_s / dt``),
        ``true_couplings`` the sparse ``W[post, pre]`` (voltage kick per spike, negative for inhibitory neurons),
        ``true_communities`` the cluster labels (inhibitory neurons: ``n_clusters``), and ``meta`` with the
        parameters, ``n_exc`` and the drives ``mu``. With ``return_spike_times``: ``(data, SpikeTimes)``.
    """
    for name, (lo, hi) in (("mu_exc", mu_exc), ("mu_inh", mu_inh)):
        if not lo <= hi:
            raise ValueError(f"{name} is a range (low, high) with low <= high, got {(lo, hi)}")
    net_gen = torch.Generator().manual_seed(int(seed))
    w, labels = clustered_lif_network(
        n_exc, n_inh, n_clusters, p_ee=p_ee, p_ei=p_ei, p_ie=p_ie, p_ii=p_ii, r_ee=r_ee,
        cluster_weight=cluster_weight, j_ee=j_ee, j_ei=j_ei, j_ie=j_ie, j_ii=j_ii, generator=net_gen,
    )
    n = n_exc + n_inh
    u = torch.rand(n, generator=net_gen, dtype=torch.float64)
    mu = torch.cat([mu_exc[0] + (mu_exc[1] - mu_exc[0]) * u[:n_exc], mu_inh[0] + (mu_inh[1] - mu_inh[0]) * u[n_exc:]])
    tau_m = torch.cat([torch.full((n_exc,), float(tau_m_exc)), torch.full((n_inh,), float(tau_m_inh))])
    init_gen = torch.Generator().manual_seed(int(seed if sample_seed is None else sample_seed))
    v0 = v_reset + (v_threshold - v_reset) * torch.rand(n, generator=init_gen, dtype=torch.float64)

    counts, spike_times = simulate_lif_binned(
        w, tau_m=tau_m, mu=mu, v0=v0, duration_s=duration_s, dt=dt, sim_dt=sim_dt, burn_in_s=burn_in_s,
        tau_rise=tau_rise, tau_decay_exc=tau_decay_exc, tau_decay_inh=tau_decay_inh, v_threshold=v_threshold,
        v_reset=v_reset, refractory_s=refractory_s, device=device, dtype=dtype, synapses=synapses, progress=progress,
    )
    params = {
        "n_exc": n_exc, "n_inh": n_inh, "n_clusters": n_clusters, "duration_s": duration_s, "dt": dt,
        "seed": int(seed), "sample_seed": None if sample_seed is None else int(sample_seed), "sim_dt": sim_dt,
        "burn_in_s": burn_in_s, "p_ee": p_ee, "p_ei": p_ei, "p_ie": p_ie, "p_ii": p_ii, "r_ee": r_ee,
        "cluster_weight": cluster_weight, "j_ee": j_ee, "j_ei": j_ei, "j_ie": j_ie, "j_ii": j_ii,
        "tau_m_exc": tau_m_exc, "tau_m_inh": tau_m_inh, "tau_rise": tau_rise, "tau_decay_exc": tau_decay_exc,
        "tau_decay_inh": tau_decay_inh, "mu_exc": list(mu_exc), "mu_inh": list(mu_inh),
        "v_threshold": v_threshold, "v_reset": v_reset, "refractory_s": refractory_s,
    }
    data = SpikeData(counts, dt, true_couplings=w, true_communities=labels,
                     meta={"simulator": "clustered_lif", "params": params, "n_exc": n_exc, "mu": mu.tolist()})
    return (data, spike_times) if return_spike_times else data


# ------------------------------------------------------------------------------------------------ analysis
def isi_cv(times: Tensor, units: Tensor, n_units: int, min_spikes: int = 10) -> Tensor:
    """Coefficient of variation of the inter-spike intervals of each unit, ``(n_units,)`` float64; NaN for units
    with fewer than ``min_spikes`` spikes. ``times`` in seconds, any order."""
    times, units = torch.as_tensor(times, dtype=torch.float64), torch.as_tensor(units, dtype=torch.long)
    order = torch.argsort(units * (times.max() + 1.0 if times.numel() else 1.0) + times)  # by unit, then time
    t, u = times[order], units[order]
    same = u[1:] == u[:-1]
    isi, owner = (t[1:] - t[:-1])[same], u[1:][same]
    count = torch.bincount(owner, minlength=n_units).double()
    mean = torch.bincount(owner, isi, minlength=n_units) / count
    var = torch.bincount(owner, (isi - mean[owner]) ** 2, minlength=n_units) / count
    cv = var.sqrt() / mean
    return torch.where(count >= min_spikes - 1, cv, torch.full_like(cv, math.nan))


def _cluster_counts(times: Tensor, units: Tensor, labels: Tensor, n_clusters: int, window_s: float,
                    n_windows: int) -> Tensor:
    """``(n_windows, n_clusters)`` spike counts of each cluster (``labels[unit]``) in windows of ``window_s``."""
    win = (times / window_s).long()
    ok = win < n_windows
    counts = torch.zeros(n_windows, n_clusters, dtype=torch.float64)
    counts.index_put_((win[ok], labels[units[ok]]), torch.ones(int(ok.sum()), dtype=torch.float64), accumulate=True)
    return counts


def clustered_activity_summary(
    data: SpikeData, spike_times: SpikeTimes, *, window_s: float = 0.05, active_factor: float = 3.0,
    corr_window_s: float = 0.25,
) -> dict:
    """What Litwin-Kumar & Doiron show for a clustered network, measured on one simulation.

    ``rate_exc`` / ``rate_inh`` (Hz, population means); ``cv_isi_exc_median`` (median ISI CV of E neurons with at
    least 10 spikes); cluster rates in windows of ``window_s``: a cluster is *active* in a window when its rate
    exceeds ``active_factor`` × the mean E rate; ``active_clusters_mean`` (mean number active at once),
    ``active_durations_s`` (every run of consecutive active windows, pooled) with its median and 90th percentile.
    Anti-correlation, on spike counts in windows of ``corr_window_s``: ``cluster_corr_mean`` (mean correlation over
    pairs of clusters) with ``cluster_corr_negative_fraction``, and ``cluster_vs_rest_corr_mean`` (mean over
    clusters of the correlation between a cluster and all other E neurons; negative when an active cluster
    suppresses the rest) with ``cluster_vs_rest_negative_fraction``.
    """
    n_exc = int(data.meta["n_exc"])
    labels = data.true_communities[:n_exc]
    n_clusters = int(labels.max()) + 1
    n = data.n_network
    duration = data.n_bins * data.dt
    times, units = spike_times
    exc = units < n_exc
    cv = isi_cv(times, units, n)[:n_exc]
    size = torch.bincount(labels, minlength=n_clusters).double()
    rate = _cluster_counts(times[exc], units[exc], labels, n_clusters, window_s, int(duration // window_s))
    rate = rate / (size * window_s)  # (windows, clusters) Hz per neuron
    rate_exc = float(exc.sum()) / (n_exc * duration)
    active = rate > active_factor * rate_exc
    # run lengths of consecutive active windows, per cluster, vectorized over clusters
    padded = torch.cat([torch.zeros(1, n_clusters, dtype=torch.int8), active.to(torch.int8),
                        torch.zeros(1, n_clusters, dtype=torch.int8)])
    edges = padded[1:] - padded[:-1]
    starts = (edges.T == 1).nonzero()
    stops = (edges.T == -1).nonzero()
    durations = (stops[:, 1] - starts[:, 1]).double() * window_s
    counts = _cluster_counts(times[exc], units[exc], labels, n_clusters, corr_window_s, int(duration // corr_window_s))
    off = torch.corrcoef(counts.T)[~torch.eye(n_clusters, dtype=torch.bool)]
    off = off[torch.isfinite(off)]
    rest = counts.sum(1, keepdim=True) - counts
    centred, rest = counts - counts.mean(0), rest - rest.mean(0)
    vs_rest = (centred * rest).sum(0) / ((centred**2).sum(0) * (rest**2).sum(0)).sqrt()
    vs_rest = vs_rest[torch.isfinite(vs_rest)]
    nan = math.nan
    return {
        "rate_exc": rate_exc,
        "rate_inh": float((~exc).sum()) / (max(n - n_exc, 1) * duration),
        "cv_isi_exc_median": float(cv[torch.isfinite(cv)].median()) if torch.isfinite(cv).any() else nan,
        "active_clusters_mean": float(active.sum(1).double().mean()),
        "active_durations_s": durations.tolist(),
        "active_duration_median_s": float(durations.median()) if durations.numel() else nan,
        "active_duration_p90_s": float(torch.quantile(durations, 0.9)) if durations.numel() else nan,
        "cluster_corr_mean": float(off.mean()) if off.numel() else nan,
        "cluster_corr_negative_fraction": float((off < 0).double().mean()) if off.numel() else nan,
        "cluster_vs_rest_corr_mean": float(vs_rest.mean()) if vs_rest.numel() else nan,
        "cluster_vs_rest_negative_fraction": float((vs_rest < 0).double().mean()) if vs_rest.numel() else nan,
    }
