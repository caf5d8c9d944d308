r"""Kinetic Ising network whose communities receive a slow hidden Markov drive, and its exact likelihood.

The network is the one of :func:`~dgrn.sim.kinetic_ising.kinetic_ising` (:func:`kinetic_ising_network`: same seed,
same couplings, communities and fields). On top of it every community :math:`c` has a hidden Markov chain
:math:`z_c(t) \in \{0, \dots, S-1\}`, the chains independent of each other and of the spins, and state :math:`s`
adds a field offset :math:`o_{c,s}` to every neuron of community :math:`c`:

.. math::
    P\big(x_i(t+1) = 1 \mid x(t), z(t+1)\big) = \sigma\Big(h_i + o_{c_i,\, z_{c_i}(t+1)} + \sum_j W_{ij}\, x_j(t)\Big).

A model that sees only the spikes must infer the chains from the history: the drive is slow (tens to hundreds of
bins), so it carries information about the next bin beyond the previous bin's couplings.
:func:`hidden_markov_log_likelihood` is the exact :math:`\log p(x(t) \mid x(0), \dots, x(t-1))` under the true
parameters, the floor a model's NLL per neuron-bin can be compared with at 100 % observed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dgrn.data import SpikeData
from dgrn.sim.kinetic_ising import REFERENCE_DEGREE, kinetic_ising_network

__all__ = ["hidden_markov_kinetic_ising", "hidden_markov_log_likelihood", "hidden_states", "drive_offsets",
           "dwell_transitions"]

SIMULATOR = "hidden_markov_kinetic_ising"


def drive_offsets(n_states: int, drive: float | Sequence[float] = -2.0) -> torch.Tensor:
    r"""Field offsets ``(n_states,)`` float64 of the hidden states: state 0 adds nothing (the plain kinetic Ising
    network), the others ``drive`` and ``-drive`` in turn, growing to ``|drive|``,
    :math:`o_k = (-1)^{k+1}\, \mathrm{drive} \cdot \lceil k/2 \rceil / \lceil (S-1)/2 \rceil`:
    ``[0, d]`` for 2 states, ``[0, d, -d]`` for 3, ``[0, d/2, -d/2, d]`` for 4. A sequence gives the offsets of
    states ``1 .. n_states - 1`` itself."""
    if int(n_states) != n_states or n_states < 1:
        raise ValueError(f"n_states must be an integer >= 1, got {n_states}")
    n_states = int(n_states)
    if isinstance(drive, (int, float)):
        if not math.isfinite(drive):
            raise ValueError(f"drive must be finite, got {drive}")
        k = torch.arange(1, n_states, dtype=torch.float64)
        sign = torch.where(k % 2 == 1, 1.0, -1.0)
        rest = sign * float(drive) * torch.ceil(k / 2) / max(1, math.ceil((n_states - 1) / 2))
    else:
        rest = torch.as_tensor([float(v) for v in drive], dtype=torch.float64)
        if rest.shape != (n_states - 1,):
            raise ValueError(f"drive as a sequence gives the offsets of states 1..{n_states - 1}: need "
                             f"{n_states - 1} value(s), got {rest.numel()}")
        if not torch.isfinite(rest).all():
            raise ValueError(f"drive offsets must be finite, got {rest.tolist()}")
    return torch.cat([torch.zeros(1, dtype=torch.float64), rest])


def dwell_transitions(dwell_times: torch.Tensor) -> torch.Tensor:
    r"""Transition matrices ``(..., S, S)`` float64 of chains with mean dwell times ``dwell_times`` ``(..., S)``
    (bins, each >= 1): stay with probability :math:`1 - 1/d_s`, leave to each other state with probability
    :math:`1 / (d_s (S-1))`. One state: the chain never leaves. ``P[..., a, b]`` = :math:`P(z(t+1)=b \mid z(t)=a)`.
    The stationary distribution is :math:`\pi_s \propto d_s` (detailed balance)."""
    d = torch.as_tensor(dwell_times, dtype=torch.float64)
    n_states = d.shape[-1]
    if not torch.isfinite(d).all() or (d < 1).any():
        raise ValueError(f"dwell times must be finite and >= 1 bin, got min {float(d.min())}")
    eye = torch.eye(n_states, dtype=torch.float64)
    if n_states == 1:
        return eye.expand(*d.shape, 1).clone()
    leave = (1.0 / d)[..., None]  # (..., S, 1)
    return eye * (1.0 - leave) + (1.0 - eye) * leave / (n_states - 1)


def _stationary(p: torch.Tensor) -> torch.Tensor:
    """Stationary distributions ``(C, S)`` of irreducible transition matrices ``(C, S, S)``: ``pi P = pi``,
    ``sum(pi) = 1``, by one linear solve (the last balance equation replaced by the normalization)."""
    n_states = p.shape[-1]
    a = p.transpose(-1, -2) - torch.eye(n_states, dtype=p.dtype)
    a[..., -1, :] = 1.0
    b = torch.zeros(p.shape[:-1], dtype=p.dtype)
    b[..., -1] = 1.0
    return torch.linalg.solve(a, b).clamp_min(0.0)


def _parse_dwell(dwell: float | Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` of the mean dwell times, checked: one number or a pair, ``1 <= low <= high``, finite."""
    bounds = [dwell] if isinstance(dwell, (int, float)) else list(dwell)
    if len(bounds) not in (1, 2):
        raise ValueError(f"dwell is a mean dwell time in bins or a range (low, high), got {dwell}")
    lo, hi = float(bounds[0]), float(bounds[-1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or not 1.0 <= lo <= hi:
        raise ValueError(f"dwell times are in bins, >= 1: need 1 <= low <= high (finite), got {dwell}")
    return lo, hi


def _sample_chains(transition: torch.Tensor, stationary: torch.Tensor, length: int,
                   generator: torch.Generator) -> torch.Tensor:
    """``(length, C)`` long paths of ``C`` independent chains started from their stationary distributions,
    by inverse CDF from one uniform per chain and step, drawn from ``generator`` (a loop over time steps only, on
    numpy arrays: a fifth of the cost of torch's small-tensor operations)."""
    n_chains, n_states = stationary.shape
    u = torch.rand(length, n_chains, 1, generator=generator, dtype=torch.float64).numpy()
    cum = transition.cumsum(-1).numpy()  # (C, S, S)
    rows = np.arange(n_chains)
    out = np.empty((length, n_chains), dtype=np.int64)
    if length:
        z = np.minimum((stationary.cumsum(-1).numpy() < u[0]).sum(-1), n_states - 1)
        out[0] = z
        for k in range(1, length):  # sequential: the next state depends on the current one
            z = np.minimum((cum[rows, z] < u[k]).sum(-1), n_states - 1)
            out[k] = z
    return torch.from_numpy(out)


def _runs(z: torch.Tensor) -> list[list[list[int]]]:
    """Run-length code of ``(T, C)`` states: for each column, ``[first_bin, state]`` of every maximal run."""
    out = []
    for col in z.T:  # one column per community: a handful
        start = torch.cat([torch.zeros(1, dtype=torch.long),
                           torch.nonzero(col[1:] != col[:-1]).flatten() + 1])
        out.append(torch.stack([start, col[start]], 1).tolist())
    return out


def hidden_states(data: SpikeData) -> torch.Tensor:
    """The hidden chains' states ``(T, n_communities)`` long of data from :func:`hidden_markov_kinetic_ising`
    (decoded from ``meta["hidden_runs"]``, which survives :meth:`SpikeData.save` / :meth:`SpikeData.load`). Row
    ``t`` holds the states that drove bin ``t``."""
    runs = data.meta.get("hidden_runs")
    if data.meta.get("simulator") != SIMULATOR or runs is None:
        raise ValueError(f"data from {SIMULATOR} needed (meta['hidden_runs']); got simulator "
                         f"{data.meta.get('simulator')!r}")
    n_bins = data.n_bins
    if int(data.meta["params"]["t"]) != n_bins:
        raise ValueError(f"meta['hidden_runs'] covers {data.meta['params']['t']} bins, the spikes {n_bins}")
    out = torch.empty(n_bins, len(runs), dtype=torch.long)
    for c, community in enumerate(runs):  # one column per community: a handful
        r = torch.as_tensor(community, dtype=torch.long).reshape(-1, 2)
        lengths = torch.diff(torch.cat([r[:, 0], torch.tensor([n_bins])]))
        out[:, c] = torch.repeat_interleave(r[:, 1], lengths)
    return out


@torch.no_grad()
def hidden_markov_kinetic_ising(
    n: int = 100,
    t: int = 20000,
    n_communities: int = 4,
    *,
    n_states: int = 2,
    dwell: float | tuple[float, float] = (20.0, 200.0),
    drive: float | Sequence[float] = -2.0,
    seed: int = 0,
    sample_seed: int | None = None,
    p_in: float = 0.3,
    p_out: float = 0.1,
    j_in: float = 0.75,
    j_out: float = -0.75,
    weight_cv: float = 0.5,
    reference_degree: float | None = REFERENCE_DEGREE,
    base_rate: float = 0.05,
    bias_sd: float = 0.3,
    burn_in: int = 1000,
    dt: float = 0.01,
    shuffle: bool = True,
    device: str | torch.device | None = None,
) -> SpikeData:
    r"""Simulate a kinetic Ising network whose communities are driven by independent hidden Markov chains.

    .. math::
        P\big(x_i(t+1) = 1 \mid x(t), z(t+1)\big) = \sigma\Big(h_i + o_{c_i,\, z_{c_i}(t+1)}
            + \sum_j W_{ij}\, x_j(t)\Big),

    0/1 spins, all neurons updated at once from the previous bin (parallel Glauber), exactly as
    :func:`~dgrn.sim.kinetic_ising.kinetic_ising`, whose network this is: ``W``, the communities and the fields
    :math:`h` are drawn by :func:`~dgrn.sim.kinetic_ising.kinetic_ising_network` with the same arguments, so
    ``seed`` gives the same network as ``kinetic_ising(..., seed=seed)``.

    Each community :math:`c` has its own chain :math:`z_c` over ``n_states`` states. Its mean dwell times
    :math:`d_{c,s}` (bins) are drawn uniformly from ``dwell`` (after the network, from the same ``seed``); it stays
    with probability :math:`1 - 1/d_{c,s}` and otherwise jumps to one of the other states uniformly
    (:func:`dwell_transitions`; stationary law :math:`\pi_{c,s} \propto d_{c,s}`). State :math:`s` adds
    :math:`o_{c,s}` (:func:`drive_offsets`, the same for every community) to the field of every neuron of
    :math:`c`; state 0 adds nothing.

    The default drive, -2.0 (offsets ``[0, -2]`` for 2 states), switches a community *off*: in the default network
    (100 neurons, 4 communities, ``seed`` 0, 20,000 bins) a community fires at 0.079 spikes per neuron-bin when on
    and 0.007 when off, and the network stays sparse (0.049 overall, ``base_rate`` 0.05). A suppressive drive is also
    the one a next-bin model finds hard: a silent bin is weak evidence of the off state (an *on* community is silent
    in 18 % of its bins, an off one in 85 %), so the state must be read from a long history. There the exact
    reference is 0.160 nats per neuron-bin; a lag-1 GLM (:func:`dgrn.graph.infer_couplings`) scores 0.163 on the
    bins it was fitted on and 0.167 when fitted on a fresh trajectory (``sample_seed`` 1). An excitatory drive of
    the same size (``drive=2.0``) locks the driven community on through its recurrent excitation (about 0.3 to 0.8
    spikes per neuron-bin, 0.28 overall); one of size 0.25 changes a community's rate by less than a factor 2.

    First bin: the network runs ``burn_in`` steps under the chains (started from their stationary laws), bin 0 is the
    state after them, and the chains are *restarted* from their stationary laws at bin 1, independently of
    everything before. So :math:`z(1)` is independent of :math:`x(0)`, and the likelihood of bins ``1 .. t-1`` given
    the earlier bins is exactly computable (:func:`hidden_markov_log_likelihood`); the restart replaces the
    transition from bin 0 to bin 1, one of the ``t - 1`` recorded transitions of each chain.

    Args:
        n: neurons; t: recorded bins (after ``burn_in``); n_communities: communities, one chain each.
        n_states: states of each chain (>= 1; one state: no drive, the plain kinetic Ising dynamics).
        dwell: mean dwell time per state in bins, ``(low, high)`` (uniform draws) or one number; >= 1.
        drive: offset of state 1, then ``-drive``, ... (:func:`drive_offsets`), or a sequence: the offsets of
            states ``1 .. n_states - 1``.
        seed: seeds the network and the chains' parameters. ``sample_seed`` seeds the trajectory, hidden chains
            included (default: ``seed``): a new ``sample_seed`` gives fresh data from the *same* network and chains.
        p_in, p_out, j_in, j_out, weight_cv, reference_degree, base_rate, bias_sd, shuffle: the network, as in
            :func:`~dgrn.sim.kinetic_ising.kinetic_ising`. burn_in, dt, device: as there too (the chains are
            sampled on the CPU, the spins on ``device``).

    Returns:
        :class:`~dgrn.data.SpikeData` with ``spikes`` ``(t, n)`` uint8, ``true_couplings`` ``W``,
        ``true_communities``, and in ``meta`` (JSON, kept by :meth:`~dgrn.data.SpikeData.save`): ``params`` (every
        argument), ``coupling_scale``, ``bias`` ``(n,)``, ``dwell_times`` ``(C, S)``, ``transition`` ``(C, S, S)``,
        ``stationary`` ``(C, S)``, ``offsets`` ``(C, S)`` and ``hidden_runs``, the chains' path run-length coded
        (per community, ``[first_bin, state]`` of each run; :func:`hidden_states` decodes it to ``(t, C)``).
    """
    if t < 1:
        raise ValueError(f"t must be >= 1 bin, got {t}")
    if burn_in < 0:
        raise ValueError(f"burn_in must be >= 0, got {burn_in}")
    if not 0.0 < base_rate < 1.0:
        raise ValueError(f"base_rate is a probability per bin in (0, 1), got {base_rate}")
    offsets = drive_offsets(n_states, drive)  # checks n_states and drive
    lo, hi = _parse_dwell(dwell)
    net_gen = torch.Generator().manual_seed(int(seed))
    w, labels, bias, scale = kinetic_ising_network(
        n, n_communities, generator=net_gen, p_in=p_in, p_out=p_out, j_in=j_in, j_out=j_out,
        weight_cv=weight_cv, reference_degree=reference_degree, base_rate=base_rate, bias_sd=bias_sd,
        shuffle=shuffle,
    )
    dwell_times = lo + (hi - lo) * torch.rand(n_communities, len(offsets), generator=net_gen, dtype=torch.float64)
    transition = dwell_transitions(dwell_times)
    stationary = _stationary(transition)
    offsets = offsets.expand(n_communities, -1).contiguous()

    # the chains: burn-in and bin 0, then a fresh start from stationarity at bin 1 (see the docstring)
    traj_gen = torch.Generator().manual_seed(int(seed if sample_seed is None else sample_seed))
    z = torch.cat([_sample_chains(transition, stationary, burn_in + 1, traj_gen),
                   _sample_chains(transition, stationary, t - 1, traj_gen)])
    spin_seed = int(torch.randint(0, 2**62, (), generator=traj_gen))
    spikes = _driven_glauber(w, bias, offsets, labels, z, burn_in, base_rate, spin_seed, device)

    meta = {
        "simulator": SIMULATOR,
        "params": {
            "n": n, "t": t, "n_communities": n_communities, "n_states": int(n_states), "dwell": [lo, hi],
            "drive": drive if isinstance(drive, (int, float)) else [float(v) for v in drive], "seed": int(seed),
            "sample_seed": None if sample_seed is None else int(sample_seed), "p_in": p_in, "p_out": p_out,
            "j_in": j_in, "j_out": j_out, "weight_cv": weight_cv, "reference_degree": reference_degree,
            "base_rate": base_rate, "bias_sd": bias_sd, "burn_in": burn_in, "dt": dt, "shuffle": shuffle,
        },
        "coupling_scale": scale,
        "bias": bias.tolist(),
        "dwell_times": dwell_times.tolist(),
        "transition": transition.tolist(),
        "stationary": stationary.tolist(),
        "offsets": offsets.tolist(),
        "hidden_runs": _runs(z[burn_in:]),
    }
    return SpikeData(spikes, dt, true_couplings=w, true_communities=labels, meta=meta)


def _driven_glauber(w: torch.Tensor, bias: torch.Tensor, offsets: torch.Tensor, labels: torch.Tensor,
                    z: torch.Tensor, burn_in: int, base_rate: float, seed: int,
                    device: str | torch.device | None) -> torch.Tensor:
    r"""Parallel Glauber dynamics with the time-varying fields :math:`h_i + o_{c_i, z_{c_i}(k)}` of the chains'
    path ``z`` ``(burn_in + t, C)``, as :func:`~dgrn.sim.kinetic_ising.glauber_dynamics` (initial state active with
    probability ``base_rate``, noise drawn in blocks); returns the last ``t`` steps, ``(t, n)`` uint8 on the CPU."""
    n = bias.shape[0]
    device = torch.device(device) if device is not None else torch.device("cpu")
    gen = torch.Generator(device=device).manual_seed(seed)
    w_d, h_d = w.to(device, torch.float32), bias.to(device, torch.float32)
    off_d, lab_d, z_d = offsets.to(device, torch.float32), labels.to(device), z.to(device)
    total = z.shape[0]
    out = torch.empty(total - burn_in, n, dtype=torch.uint8, device=device)
    x = (torch.rand(n, generator=gen, device=device) < base_rate).float()
    chunk = 4096  # noise and fields in blocks: one RNG call per block instead of per step
    for c0 in range(0, total, chunk):
        noise = torch.rand(min(chunk, total - c0), n, generator=gen, device=device)
        states = z_d[c0:c0 + noise.shape[0]][:, lab_d]  # (block, n): the state of each neuron's community
        fields = h_d + off_d[lab_d, states]  # (block, n)
        for k in range(noise.shape[0]):  # sequential dynamics: a loop over time steps only
            x = (noise[k] < torch.sigmoid(torch.addmv(fields[k], w_d, x))).float()
            step = c0 + k - burn_in
            if step >= 0:
                out[step] = x.to(torch.uint8)
    return out.cpu()


def _check_reference_input(data: SpikeData) -> tuple[torch.Tensor, ...]:
    """The true parameters of ``data`` in float64, checked: ``x`` ``(T, n)`` in network order, ``W``, ``h``,
    community labels, offsets ``(C, S)``, transition matrices ``(C, S, S)``, stationary laws ``(C, S)``."""
    meta = data.meta
    if meta.get("simulator") != SIMULATOR:
        raise ValueError(f"the exact reference needs data of {SIMULATOR} (its true parameters in meta); got "
                         f"simulator {meta.get('simulator')!r}")
    missing = [k for k in ("bias", "offsets", "transition") if k not in meta]
    if missing or data.true_couplings is None or data.true_communities is None:
        raise ValueError(f"data lacks its ground truth: meta {missing or 'ok'}, true_couplings "
                         f"{'ok' if data.true_couplings is not None else 'missing'}, true_communities "
                         f"{'ok' if data.true_communities is not None else 'missing'}")
    n = data.n_network
    if data.n_neurons != n:
        raise ValueError(f"the exact reference needs every neuron observed ({data.n_neurons} of {n} are): the "
                         "likelihood of a subsample integrates over the hidden neurons, which is intractable")
    if int(data.spikes.max()) > 1:
        raise ValueError("kinetic Ising spikes are 0/1; these data hold counts above 1")
    x = torch.empty(data.n_bins, n, dtype=torch.float64)
    x[:, data.observed] = data.spikes.double()
    w = data.true_couplings
    w = (w if w.layout == torch.strided else w.to_dense()).double()
    bias = torch.as_tensor(meta["bias"], dtype=torch.float64)
    labels = data.true_communities.long()
    offsets = torch.as_tensor(meta["offsets"], dtype=torch.float64)
    transition = torch.as_tensor(meta["transition"], dtype=torch.float64)
    if offsets.dim() != 2 or transition.shape != (*offsets.shape, offsets.shape[1]):
        raise ValueError(f"meta['offsets'] must be (C, S) and meta['transition'] (C, S, S); got "
                         f"{tuple(offsets.shape)} and {tuple(transition.shape)}")
    if bias.shape != (n,) or int(labels.min()) < 0 or int(labels.max()) >= offsets.shape[0]:
        raise ValueError(f"meta['bias'] must have one field per neuron ({n}) and the community labels must lie in "
                         f"[0, {offsets.shape[0]}); got {tuple(bias.shape)} and [{int(labels.min())}, "
                         f"{int(labels.max())}]")
    if (transition < 0).any() or not torch.allclose(transition.sum(-1), torch.ones(()).double(), atol=1e-12):
        raise ValueError("meta['transition'] must hold stochastic matrices (rows >= 0 summing to 1)")
    return x, w, bias, labels, offsets, transition, _stationary(transition)


@torch.no_grad()
def hidden_markov_log_likelihood(data: SpikeData, chunk_elements: int = 2**24,
                                 return_posterior: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Exact log-likelihood of each bin given the past, :math:`\log p\big(x(t) \mid x(0), \dots, x(t-1)\big)`,
    ``t = 1 .. T-1``, of data from :func:`hidden_markov_kinetic_ising`, under its true parameters (``meta`` and
    ``true_couplings``): the reference a model's NLL per neuron-bin is compared with at 100 % observed.

    Forward filtering over the hidden chains. The joint chain of all communities lives on :math:`S^C` states, but
    its filter factorizes exactly: given the observed previous bin, the spikes of community :math:`c` depend on the
    chains only through :math:`z_c`,
    :math:`p(x(t) \mid x(t-1), z(t)) = \prod_c e_c\big(t, z_c(t)\big)` with
    :math:`e_c(t, s) = \prod_{i \in c} \mathrm{Bern}\big(x_i(t);\, \sigma(h_i + o_{c,s} + \sum_j W_{ij} x_j(t-1))\big)`,
    the chains are independent a priori, and restarted independently from their stationary laws :math:`\pi_c` at
    bin 1. So the posterior over the joint path is a product over communities and

    .. math::
        \log p\big(x(t) \mid x(<t)\big) = \sum_c \log \sum_s \alpha_c(t, s)\, e_c(t, s), \qquad
        \alpha_c(1) = \pi_c, \quad
        \alpha_c(t+1, s') = \frac{\sum_s \alpha_c(t, s)\, e_c(t, s)\, P_c(s, s')}{\sum_s \alpha_c(t, s)\, e_c(t, s)},

    which equals the forward recursion on the product space (``tests/test_hidden_drive.py`` checks it against a
    brute-force sum over all joint paths and against a product-space filter) at :math:`O(T C S^2)` cost instead
    of :math:`O(T S^{2C})`: any number of communities and states. Float64, in the log domain
    (:math:`\log e_c` by ``logsigmoid``, the recursion by log-sum-exp), so 100,000 bins stay finite. Vectorized over
    neurons, communities and states; the emission terms are computed in time chunks of about ``chunk_elements``
    numbers, the recursion loops over time only.

    Returns:
        ``(T-1,)`` float64: entry ``t-1`` is :math:`\log p(x(t) \mid x(<t))` (nats, summed over the neurons; divide
        by ``n`` for the NLL per neuron-bin). With ``return_posterior``, also the filter's predictive posteriors
        :math:`\alpha_c(t, s) = P(z_c(t) = s \mid x(<t))`, ``(T-1, C, S)`` float64 (row ``t-1`` for bin ``t``): the
        best estimate of the hidden state a model of the next bin can form from the past.

    Raises:
        ValueError: data not from this simulator or lacking its ground truth; not every neuron observed (a
            subsample's likelihood integrates over hidden neurons); counts above 1.
    """
    x, w, bias, labels, offsets, transition, stationary = _check_reference_input(data)
    n_bins, n = x.shape
    n_comm, n_states = offsets.shape
    member = F.one_hot(labels, n_comm).double()  # (n, C)
    neuron_offsets = offsets[labels].T[None]  # (1, S, n): each neuron's offset in each state of its community
    log_e = torch.empty(max(n_bins - 1, 0), n_comm, n_states, dtype=torch.float64)
    step = max(1, chunk_elements // (n_states * n))
    for a in range(1, n_bins, step):  # emission terms e_c(t, s), t = a .. b-1, in chunks of time
        b = min(n_bins, a + step)
        v = torch.addmm(bias, x[a - 1:b - 1], w.T)[:, None, :] + neuron_offsets  # (m, S, n) logits
        xt = x[a:b, None, :]
        ll = xt * F.logsigmoid(v) + (1.0 - xt) * F.logsigmoid(-v)  # Bernoulli log-likelihoods
        log_e[a - 1:b - 1] = (ll @ member).transpose(1, 2)  # (m, C, S): summed over each community's neurons

    # the recursion is sequential (a loop over time only), on (C, S) arrays: numpy's small-array operations cost a
    # third of torch's here, so 100,000 bins take seconds
    log_p = transition.log().numpy()  # (C, S, S); a zero probability gives -inf, which log-sum-exp handles
    log_alpha = stationary.log().numpy()  # (C, S): the chains restart from stationarity at bin 1
    log_e_np = log_e.numpy()
    out = np.empty((max(n_bins - 1, 0), n_comm))
    posterior = np.empty((max(n_bins - 1, 0), n_comm, n_states)) if return_posterior else None
    lowest = np.finfo(np.float64).min
    with np.errstate(divide="ignore"):  # log(0) of a transition never taken
        for k in range(n_bins - 1):
            if posterior is not None:
                posterior[k] = np.exp(log_alpha)
            joint = log_alpha + log_e_np[k]  # (C, S): log p(z_c(t) = s, x_c(t) | x(<t))
            top = np.maximum(joint.max(-1, keepdims=True), lowest)  # finite, so an impossible state stays -inf
            norm = top[:, 0] + np.log(np.exp(joint - top).sum(-1))  # (C,): log p(x_c(t) | x(<t))
            out[k] = norm
            nxt = (joint - norm[:, None])[:, :, None] + log_p  # (C, S, S): posterior of z(t) times P
            top = np.maximum(nxt.max(1, keepdims=True), lowest)
            log_alpha = top[:, 0] + np.log(np.exp(nxt - top).sum(1))
    log_lik = torch.from_numpy(out.sum(-1))
    return (log_lik, torch.from_numpy(posterior)) if return_posterior else log_lik
