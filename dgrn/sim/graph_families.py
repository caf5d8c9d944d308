"""Signed E/I coupling graphs of the community benchmarks, and kinetic Ising recordings on them.

Three families besides :func:`~dgrn.sim.kinetic_ising.planted_couplings`: LFR benchmark graphs (Lancichinetti,
Fortunato & Radicchi 2008, drawn by networkx: power-law degrees and community sizes, mixing ``mu``) and a
hierarchical planted partition (groups of communities of unequal sizes), all with excitatory couplings within
communities and inhibitory ones between them, as the planted networks. A family is named by a string:
``"planted"``, ``"hier"`` or ``"lfr<mu>"`` (``"lfr0.3"``), so a corpus or a benchmark grid is a list of names.
"""
from __future__ import annotations

import torch

from dgrn.data import SpikeData
from dgrn.sim.kinetic_ising import glauber_dynamics, kinetic_ising_network, rate_matched_bias, signed_weights

__all__ = ["lfr_couplings", "hierarchical_couplings", "cap_input", "family_network", "family_kinetic_ising",
           "family_recording", "INPUT_CAP", "LIF_DT"]

#: summed |input| per neuron of the lfr and hier networks: uncapped, LFR hubs (up to 40 inputs) and the mostly
#: excitatory low-mu graphs lock whole communities on (0.9 spikes per bin; mean 0.52 at mu = 0.1); capped at 6,
#: every community fires at 0.05 to 0.06 per bin
INPUT_CAP = 6.0
#: bins of the ``"lif"`` family (seconds)
LIF_DT = 0.005


def lfr_couplings(n: int = 250, mu: float = 0.3, *, seed: int = 0, generator: torch.Generator | None = None,
                  j: float = 0.75, weight_cv: float = 0.5, average_degree: float = 12, max_degree: int = 40,
                  min_community: int = 15, max_community: int | None = None,
                  max_attempts: int = 20) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Signed couplings on a networkx ``LFR_benchmark_graph`` (degree exponent 2.5, community-size exponent 1.5).

    Each undirected edge gives both directed couplings, with independent magnitudes ``j |1 + weight_cv xi|``,
    positive within a community and negative between communities. LFR generation fails for some seeds
    (``ExceededMaxIterations``): it is retried with seed ``seed + 1000 k``, ``k < max_attempts``. The magnitudes
    are drawn from ``generator`` (default: a new one seeded with ``seed``), which is left where a caller can go on.

    Returns ``W`` ``(n, n)`` float32 (``W[i, j]``: influence of ``j`` on ``i``), the community labels ``(n,)`` and
    ``{"lfr_attempts", "lfr_seed"}``.
    """
    import networkx as nx

    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"mu is the fraction of a node's edges that leave its community, in [0, 1]; got {mu}")
    last = None
    for attempt in range(max_attempts):
        nx_seed = seed + 1000 * attempt
        try:
            g = nx.LFR_benchmark_graph(n, 2.5, 1.5, mu, average_degree=average_degree, max_degree=max_degree,
                                       min_community=min_community, max_community=max_community or n // 4,
                                       seed=nx_seed, max_iters=500)
            break
        except nx.ExceededMaxIterations as err:
            last = err
    else:
        raise RuntimeError(f"LFR generation failed {max_attempts} times (mu={mu}, seed={seed}): {last!r}")
    communities = sorted({frozenset(g.nodes[v]["community"]) for v in g}, key=min)
    labels = torch.empty(n, dtype=torch.long)
    for c, members in enumerate(communities):
        labels[list(members)] = c
    edges = torch.tensor(list(g.edges()), dtype=torch.long)
    present = torch.zeros(n, n, dtype=torch.bool)
    present[edges[:, 0], edges[:, 1]] = True
    present[edges[:, 1], edges[:, 0]] = True
    same = labels[:, None] == labels[None, :]
    gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    w = signed_weights(present, same, j, -j, weight_cv, gen)
    return w, labels, {"lfr_attempts": attempt + 1, "lfr_seed": nx_seed}


def hierarchical_couplings(groups: int = 3, per_group: int = 4, *, seed: int = 0,
                           generator: torch.Generator | None = None, sizes: tuple[int, int] = (12, 28),
                           p_in: float = 0.3, p_group: float = 0.06, p_out: float = 0.03, j: float = 0.75,
                           weight_cv: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A two-level planted partition: ``groups`` groups of ``per_group`` communities, each of a size drawn
    uniformly from ``sizes`` (inclusive). Directed edges with probability ``p_in`` within a community
    (excitatory, ``j``), ``p_group`` between communities of one group (excitatory, ``j / 2``) and ``p_out`` between
    groups (inhibitory, ``-j``); magnitudes ``|1 + weight_cv xi|`` times those. Everything is drawn from
    ``generator`` (default: a new one seeded with ``seed``).

    Returns ``W`` ``(n, n)`` float32, the fine (community) labels and the coarse (group) labels, both ``(n,)``.
    """
    if groups < 1 or per_group < 1 or not 1 <= sizes[0] <= sizes[1]:
        raise ValueError(f"need groups, per_group >= 1 and 1 <= sizes[0] <= sizes[1], got {groups}, {per_group}, "
                         f"{sizes}")
    gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    counts = torch.randint(sizes[0], sizes[1] + 1, (groups * per_group,), generator=gen)
    fine = torch.repeat_interleave(torch.arange(groups * per_group), counts)
    fine = fine[torch.randperm(fine.numel(), generator=gen)]
    coarse = fine // per_group
    same = fine[:, None] == fine[None, :]
    same_group = coarse[:, None] == coarse[None, :]
    prob = torch.where(same, torch.tensor(p_in), torch.where(same_group, torch.tensor(p_group), torch.tensor(p_out)))
    present = torch.rand(fine.numel(), fine.numel(), generator=gen) < prob
    between = torch.where(same_group, torch.tensor(j / 2), torch.tensor(-j))
    return signed_weights(present, same, j, between, weight_cv, gen), fine, coarse


def cap_input(w: torch.Tensor, cap: float = INPUT_CAP) -> tuple[torch.Tensor, float]:
    """``W`` with every row whose summed ``|input|`` exceeds ``cap`` scaled down to ``cap``, and the mean row
    factor."""
    factor = torch.clamp(cap / w.abs().sum(1, keepdim=True).clamp_min(1e-12), max=1.0)
    return w * factor, float(factor.mean())


def family_network(family: str, seed: int, *, base_rate: float = 0.05,
                   bias_sd: float = 0.3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """``(W, labels, bias, info)`` of one network of ``family``, all drawn from one generator seeded with ``seed``
    (couplings, then fields).

    ``"planted"``: :func:`~dgrn.sim.kinetic_ising.kinetic_ising_network` (200 neurons, 8 communities);
    ``"lfr<mu>"``: :func:`lfr_couplings` (250 neurons); ``"hier"``: :func:`hierarchical_couplings` (about 240
    neurons, 12 communities in 3 groups; ``info["coarse"]`` holds the groups). The lfr and hier couplings are capped
    at :data:`INPUT_CAP` (``info["coupling_scale"]``: the mean row factor); fields by
    :func:`~dgrn.sim.kinetic_ising.rate_matched_bias` (``base_rate``, ``bias_sd``).
    """
    gen = torch.Generator().manual_seed(int(seed))
    if family == "planted":
        w, labels, bias, scale = kinetic_ising_network(200, 8, generator=gen, base_rate=base_rate, bias_sd=bias_sd)
        return w, labels, bias, {"coupling_scale": scale}
    if family.startswith("lfr"):
        try:
            mu = float(family[3:])
        except ValueError:
            raise ValueError(f"an LFR family is 'lfr<mu>', e.g. 'lfr0.3'; got {family!r}") from None
        w, labels, info = lfr_couplings(mu=mu, seed=seed, generator=gen)
    elif family == "hier":
        w, labels, coarse = hierarchical_couplings(generator=gen)
        info = {"coarse": coarse}
    else:
        raise ValueError(f"unknown graph family {family!r}; valid: 'planted', 'hier', 'lfr<mu>' (e.g. 'lfr0.3')")
    w, info["coupling_scale"] = cap_input(w)
    return w, labels, rate_matched_bias(w, base_rate, bias_sd, generator=gen), info


def family_kinetic_ising(family: str, t: int, *, seed: int = 0, base_rate: float = 0.05, bias_sd: float = 0.3,
                         burn_in: int = 1000, dt: float = 0.01) -> SpikeData:
    """``t`` bins of parallel Glauber dynamics (:func:`~dgrn.sim.kinetic_ising.glauber_dynamics`) on the network
    :func:`family_network` draws for ``family`` and ``seed``: a :class:`~dgrn.data.SpikeData` with the true
    couplings and communities (``meta["coarse_communities"]``: the groups of ``"hier"``)."""
    w, labels, bias, info = family_network(family, seed, base_rate=base_rate, bias_sd=bias_sd)
    spikes = glauber_dynamics(w, bias, t, burn_in=burn_in, base_rate=base_rate, seed=seed)
    meta = {"simulator": "family_kinetic_ising", "family": family, "seed": int(seed),
            "coupling_scale": info["coupling_scale"]}
    if "coarse" in info:
        meta["coarse_communities"] = info["coarse"].tolist()
    if "lfr_attempts" in info:
        meta.update(lfr_attempts=info["lfr_attempts"], lfr_seed=info["lfr_seed"])
    return SpikeData(spikes, dt, true_couplings=w, true_communities=labels, meta=meta)


def family_recording(family: str, t: int, *, seed: int = 0) -> SpikeData:
    """``t`` bins of one network of a benchmark family: :func:`family_kinetic_ising` for ``"planted"``, ``"hier"``
    and ``"lfr<mu>"``, or for ``"lif"`` the clustered E/I LIF network (:func:`~dgrn.sim.lif.lif_preset`
    ``"small"``: 800 excitatory neurons in 10 clusters and 200 inhibitory ones, one planted group of their
    own; :data:`LIF_DT` bins), with dense true couplings."""
    if family != "lif":
        return family_kinetic_ising(family, t, seed=seed)
    from dgrn.sim.lif import lif_preset

    data = lif_preset("small", t * LIF_DT, LIF_DT, seed=seed)
    return SpikeData(data.spikes, LIF_DT, true_couplings=data.true_couplings.to_dense(),
                     true_communities=data.true_communities, meta={**data.meta, "family": family})
