r"""The DGRN network: a renormalization hierarchy of units and an exactly normalized coarse-to-fine decoder.

:func:`build_hierarchy` turns a coupling graph and its spikes into nested levels of units (neurons -> communities of
the :class:`~dgrn.nn.CommunityEncoder` -> supernodes of :class:`~dgrn.nn.DiffusionRenormPooling` on the community
metagraph, repeatedly); :class:`MultiscaleBornMachine` models the next bin of every level with a
:class:`~dgrn.tn.ConditionalMPS` per level, coarse to fine.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dgrn.graph import as_adjacency, community_order, find_communities, metagraph, relabel
from dgrn.nn.glm import _check_window
from dgrn.nn.hmm import SwitchingBernoulli, _scaled, forward_filter, predictive_distribution
from dgrn.nn.renorm_pooling import DiffusionRenormPooling
from dgrn.nn.rolling import RollingWindow, gru_input_gates, gru_states
from dgrn.renorm import HeatKernel, select_tau, tau_for_shrink
from dgrn.tn import ConditionalMPS, SegmentedMPS
from dgrn.tn._common import sample_categorical

__all__ = ["MultiscaleBornMachine", "build_hierarchy", "choose_time_scales", "first_level_communities", "nested_order",
           "unit_thresholds"]


def nested_order(order: Any, memberships: list[Any]) -> list[np.ndarray]:
    """Position of every fine unit's ancestor in a tree-consistent ordering of each level.

    ``order`` (N,) is the preferred order of the fine units (e.g. :func:`dgrn.graph.community_order`);
    ``memberships[l - 1]`` (N,) labels each fine unit with its level-``l`` unit, ``l = 1..L``, nested (units of a
    level never straddle two units of the next). Units of the top level are ranked by their first member in
    ``order``; the units of each finer level by (rank of their parent, first member), so the children of every
    coarse unit are contiguous: the block structure the coarse-to-fine decoder needs. Returns ``index[l]`` (N,) for
    ``l = 0..L``: the rank at level ``l`` of the level-``l`` unit that contains each fine unit.
    """
    order = np.asarray(order, dtype=np.int64)
    n = order.shape[0]
    if sorted(order.tolist()) != list(range(n)):
        raise ValueError(f"order must be a permutation of 0..{n - 1}")
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    labels = [np.arange(n)] + [relabel(torch.as_tensor(np.asarray(m))).numpy() for m in memberships]
    for lvl, lab in enumerate(labels[1:], 1):
        if lab.shape != (n,):
            raise ValueError(f"membership of level {lvl} must have shape ({n},), got {lab.shape}")
        fine = labels[lvl - 1]
        parent_of = np.zeros(fine.max() + 1, dtype=np.int64)
        parent_of[fine] = lab
        if not np.array_equal(parent_of[fine], lab):
            raise ValueError(f"levels {lvl - 1} and {lvl} are not nested: a level-{lvl - 1} unit belongs to two "
                             f"level-{lvl} units")
    index: list[np.ndarray] = [None] * len(labels)  # type: ignore[list-item]
    parent_rank = np.zeros(n, dtype=np.int64)  # the (single) root above the top level
    for lvl in range(len(labels) - 1, -1, -1):
        lab = labels[lvl]
        first = np.full(lab.max() + 1, n, dtype=np.int64)
        np.minimum.at(first, lab, pos)
        unit_parent = np.zeros(lab.max() + 1, dtype=np.int64)
        unit_parent[lab] = parent_rank
        ranked = np.lexsort((first, unit_parent))  # units sorted by (parent rank, first member)
        rank = np.empty_like(ranked)
        rank[ranked] = np.arange(ranked.shape[0])
        index[lvl] = rank[lab]
        parent_rank = index[lvl]
    return index


def unit_thresholds(spikes: Any, memberships: list[Any], max_threshold: int | None = None,
                    time_scales: list[int] | None = None) -> list[list[int]]:
    r"""Median pooling thresholds: each coarse unit is active when at least :math:`k_u` of its children are, with
    :math:`k_u \ge 1` the count threshold at which the unit is active in the bins of ``spikes`` ``(T, N)`` closest
    to half the time (the most informative binary summary of the unit; ties: the larger :math:`k_u`), capped at
    ``max_threshold`` (the exact coarse-to-fine likelihood costs :math:`\propto k_u + 1` per site). Levels are
    thresholded in turn, each from the pooled states of the level below; with ``time_scales`` (bins per step of each
    coarse level, :class:`MultiscaleBornMachine`) a unit counts its children over its child blocks. Returns, per
    level, the threshold of every neuron's unit (the format of ``memberships``)."""
    if max_threshold is not None and (int(max_threshold) != max_threshold or max_threshold < 1):
        raise ValueError(f"max_threshold must be an integer >= 1 or None, got {max_threshold!r}")
    states = (torch.as_tensor(np.asarray(spikes)) > 0).double()
    if states.dim() != 2 or states.shape[0] == 0:
        raise ValueError(f"spikes must be (T >= 1, N), got {tuple(states.shape)}")
    below = torch.arange(states.shape[1])  # level-(l-1) unit of each neuron
    scales = [1] + list(time_scales or [1] * len(memberships))
    out = []
    for lvl, lab in enumerate(memberships):
        lab = relabel(torch.as_tensor(np.asarray(lab)))
        parent = torch.zeros(int(below.max()) + 1, dtype=torch.long)
        parent[below] = lab
        counts = states.new_zeros(states.shape[0], int(lab.max()) + 1).index_add_(1, parent, states)
        r = scales[lvl + 1] // scales[lvl]
        blocks = counts.shape[0] // r
        counts = counts[:blocks * r].unflatten(0, (blocks, r)).sum(1)
        children = torch.bincount(parent, minlength=counts.shape[1]) * r
        top = int(children.max()) if max_threshold is None else min(int(children.max()), int(max_threshold))
        ks = torch.arange(1, top + 1, dtype=torch.float64)
        distance = ((counts[:, :, None] >= ks).double().mean(0) - 0.5).abs()  # (units, k)
        distance[ks[None, :] > children[:, None]] = torch.inf  # a unit cannot need more children than it has
        # the largest of tied thresholds: a capped unit active at every allowed threshold keeps the cap, not OR
        k = top - distance.flip(1).argmin(1)
        states, below = (counts >= k).double(), lab
        out.append(k[lab].tolist())
    return out


def first_level_communities(graph: Any, spikes: Any, communities: str = "gnn", encoder: nn.Module | None = None,
                            community_options: dict | None = None) -> Tensor:
    """The communities of DGRN's first level (and of the switching GLM): ``find_communities(graph, communities,
    **community_options)``; the ``gnn`` method gets ``encoder`` and ``spikes`` and keeps the encoder's own partition
    unless ``community_options`` sets ``polish`` (as every DGRN benchmark measured it; the graph may be
    correlations, which the polish would shrink by the couplings' standard errors)."""
    opts = dict(community_options or {})
    if communities == "gnn":
        opts.update(encoder=encoder, spikes=spikes)
        opts.setdefault("polish", False)
    return relabel(find_communities(graph, method=communities, **opts))


def build_hierarchy(graph: Any, spikes: Any, levels: int, *, communities: str = "gnn", encoder: nn.Module | None = None,
                    tau: float | str = "valley", shrink: float | None = None, laplacian: str = "combinatorial",
                    community_options: dict | None = None, pool: str = "or", max_threshold: int | None = None,
                    strict: bool = True, time_scales: list[int] | str | None = None,
                    scored_bins: int | None = None, context: int | None = None) -> dict:
    r"""Nested levels of units for :class:`MultiscaleBornMachine`.

    Level 1 is the communities of the coupling graph (``communities``: a :func:`dgrn.graph.find_communities`
    method; ``gnn`` uses ``encoder``, a pretrained :class:`~dgrn.nn.CommunityEncoder`); each further level pools the
    previous one with :class:`~dgrn.nn.DiffusionRenormPooling` (hard supernodes) on its metagraph of summed
    :math:`|W|`, at the diffusion time ``tau`` (a number, or a :func:`dgrn.renorm.select_tau` rule on that
    metagraph's specific-heat curve), or, with ``shrink``, at the time where the entropy says the metagraph has
    shrunk by that factor (:func:`dgrn.renorm.tau_for_shrink`, EqLRG-style; small dense metagraphs often have a
    single specific-heat peak at which no pair of units is merged yet). Fine units are ordered along
    :func:`dgrn.graph.community_order`. ``pool`` says when a coarse unit is active: ``"or"`` when any of its children
    is; ``"median"`` when at least :math:`k_u` are, with :math:`k_u` set on ``spikes`` so that the unit is active about
    half of the time (:func:`unit_thresholds`, capped at ``max_threshold``). OR pooling of large communities is active
    in nearly every bin (on the clustered LIF network, 45-153 neurons per community at 0.22 spikes per bin: 95-100 %
    of the bins) and then says nothing about the fine level.

    Args:
        graph: ``(N, N)`` couplings, ``A[i, j]`` = influence of ``j`` on ``i`` (any sign); spikes: ``(T, N)``.
        levels: number of coarse levels ``L >= 0`` (0: the fine level only).
        strict: raise when the graph cannot be coarse-grained ``levels`` times; ``False``: warn and return the
            levels that could be built (a recording whose encoder finds 2 communities gets 1 coarse level, not none).
        time_scales: bins per step of each coarse level (:class:`MultiscaleBornMachine`; a list, cut to the levels
            built), ``"auto"`` (:func:`choose_time_scales` on ``spikes``, within ``scored_bins`` and ``context``:
            the scored bins and the context of the model's windows) or ``None`` (all 1).

    Returns ``{"memberships": [L lists of N ints], "thresholds": [L lists of N ints], "order": [N ints], "taus": [...],
    "n_units": [N, n_1, ..., n_L], "time_scales": [L ints] or None}``
    (plain lists: it goes into the model's hyperparameters). With ``strict``, raises ``ValueError`` when the graph
    cannot be coarse-grained ``levels`` times (it collapses to one unit, or a step merges nothing) and names the
    largest ``levels`` that works.
    """
    if int(levels) != levels or levels < 0:
        raise ValueError(f"levels must be an integer >= 0, got {levels!r}")
    if laplacian not in ("combinatorial", "normalized", "auto"):
        raise ValueError(f"unknown laplacian {laplacian!r}; valid: combinatorial, normalized, auto (= combinatorial: "
                         "the metagraphs are symmetrized)")
    laplacian = "combinatorial" if laplacian == "auto" else laplacian
    if pool not in ("or", "median"):
        raise ValueError(f"unknown pool {pool!r}; valid: 'or' (any child active), 'median' (at least the median "
                         "number of children active)")
    adj = torch.as_tensor(as_adjacency(graph).toarray(), dtype=torch.float64)
    n = adj.shape[0]
    if levels == 0:
        return {"memberships": [], "thresholds": [], "order": list(range(n)), "taus": [], "n_units": [n],
                "time_scales": None}
    labels = first_level_communities(adj, spikes, communities, encoder, community_options)
    order = community_order(adj, labels)
    memberships, taus, sizes = [labels], [None], [n, int(labels.max()) + 1]  # level 1: communities, no tau
    weights = metagraph(adj.abs(), labels).double()
    for lvl in range(2, levels + 1):
        k = weights.shape[0]
        weights.fill_diagonal_(0)
        sym = 0.5 * (weights + weights.T)
        t = None
        if k > 1 and sym.sum() > 0:
            kernel = HeatKernel(sym.numpy(), laplacian=laplacian, method="exact")
            t = select_tau(kernel, tau)[0] if shrink is None else tau_for_shrink(kernel, shrink)
        if t is None:
            reason = (f"the level-{lvl - 1} graph has {k} unit(s) and no edges to diffuse on: it cannot be "
                      f"coarse-grained again")
        else:
            renorm_pool = DiffusionRenormPooling(tau=t, mode="hard", learn_tau=False, laplacian=laplacian,
                                                 self_loops=False)
            out = renorm_pool(torch.eye(k, dtype=torch.float64)[None], adj=weights[None])
            assign = out.assignment[0]
            merged = int(out.num_supernodes[0]) < k
            reason = None if merged else (f"diffusion renormalization at tau={t:.4g} merges none of the {k} "
                                          f"level-{lvl - 1} units")
        if reason is not None:
            if strict:
                raise ValueError(f"{reason}; use levels <= {lvl - 1}" + ("" if t is None else " or another renorm tau"))
            warnings.warn(f"{reason}: the hierarchy stops at {lvl - 1} coarse level(s) instead of {levels}",
                          stacklevel=2)
            break
        memberships.append(assign[memberships[-1]])
        taus.append(float(t))
        sizes.append(int(out.num_supernodes[0]))
        weights = out.adj[0]
    memberships = [m.tolist() for m in memberships]
    if time_scales == "auto":
        time_scales = choose_time_scales(spikes, memberships, scored_bins=scored_bins, context=context)
    elif time_scales is not None:
        time_scales = [int(t) for t in time_scales][:len(memberships)]
    thresholds = ([[1] * n for _ in memberships] if pool == "or"
                  else unit_thresholds(spikes, memberships, max_threshold, time_scales))
    return {"memberships": memberships, "thresholds": thresholds, "order": order.tolist(), "taus": taus,
            "n_units": sizes, "time_scales": time_scales}


def choose_time_scales(spikes: Any, memberships: list[Any], *, scored_bins: int | None = None,
                       context: int | None = None) -> list[int]:
    r"""Bins per step of each coarse level from the data: :math:`s_\ell` is the largest power of 2 at most half of
    :math:`\tau_\ell`, the median over the level's units of the autocorrelation time
    (:func:`dgrn.readouts.autocorrelation_time`, the lag at which the autocorrelation falls to :math:`1/e`) of their
    OR-pooled activity in ``spikes`` ``(T, N)``: a block is then short against the time over which a unit's state
    persists, so it still says what the next block will be. Nondecreasing over the levels (each divides the next:
    powers of 2), and at most what the windows allow: :math:`s_L` divides ``scored_bins`` and is at most ``context``.
    Units whose activity never decorrelates within the lags searched count as slow as the longest lag; units active in
    every bin (or none) are left out."""
    from dgrn.readouts import autocorrelation_time

    states = torch.as_tensor(np.asarray(spikes)) > 0
    limit = 2 ** 30
    if scored_bins is not None:
        limit = min(limit, scored_bins & -scored_bins)  # the largest power of 2 dividing it
    if context is not None:
        limit = min(limit, 2 ** int(math.log2(context)))
    max_lag = max(2, min(states.shape[0] // 10, 4 * limit))
    scales, previous = [], 1
    for lab in memberships:
        lab = relabel(torch.as_tensor(np.asarray(lab)))
        pooled = (torch.zeros(states.shape[0], int(lab.max()) + 1, dtype=torch.float64).index_add_(
            1, lab, states.double()) > 0).double()
        varying = pooled[:, (pooled.mean(0) > 0) & (pooled.mean(0) < 1)]  # always on (or off) says nothing of time
        tau = (autocorrelation_time(varying, max_lag=max_lag).nan_to_num(float(max_lag)).median().item()
               if varying.shape[1] else 1.0)
        scale = 2 ** int(math.log2(max(1.0, tau / 2)))
        previous = min(max(previous, scale), limit)
        scales.append(previous)
    return scales


def _repeat(x: Tensor, n: int) -> Tensor:
    """``x`` with every row repeated ``n`` times (dim 0); itself, uncopied, for ``n = 1``."""
    return x if n == 1 else x.repeat_interleave(n, 0)


def _field_blocks(decoder: nn.Module) -> list[tuple[nn.Module, slice]]:
    """The read-outs of a level's decoder, each with the units it covers (one per segment of a :class:`SegmentedMPS`):
    every one has a ``field`` with two log-potentials per unit."""
    if isinstance(decoder, SegmentedMPS):
        return list(zip(decoder.parts, decoder.slices))
    return [(decoder, slice(None))]


class MultiscaleBornMachine(nn.Module):
    r"""Coarse-to-fine next-bin model over a hierarchy of units (the DGRN network).

    Level 0 is the ``N`` neurons; level :math:`\ell = 1..L` pools the units of level :math:`\ell - 1` into
    :math:`n_\ell` units by a count threshold: :math:`x^{\ell}_{u,t} = [\sum_{v \in u} x^{\ell-1}_{v,t} \ge k_u]`
    (:math:`k_u = 1`, the default, is OR pooling: a unit is active when any of its children is). The next bin
    factorizes exactly, coarse to fine,

    .. math::
        p(x_t \mid x_{<t}) = p(x^{L}_t \mid c^{L}_t)\prod_{\ell=0}^{L-1} p(x^{\ell}_t \mid x^{\ell+1}_t, c^{\ell}_t),

    because :math:`x^{\ell+1}_t` is a function of :math:`x^{\ell}_t`. Each factor is a
    :class:`~dgrn.tn.ConditionalMPS` over the level's units (ordered so the children of every coarse unit are
    contiguous, :func:`nested_order`), restricted to the configurations consistent with the coarse state and
    renormalized over them, so every level's marginal :math:`p(x^\ell_t \mid x_{<t}) = p(x^L_t)\prod_{\ell'\ge\ell}
    p(x^{\ell'}_t \mid x^{\ell'+1}_t)` is exact. The context of level :math:`\ell` is
    :math:`c^{\ell}_t = [h^{\ell}_t, x^{0}_{t-1}, \dots, x^{0}_{t-H}]`: the state of a GRU over the level's past
    bins and the last ``history`` bins of the neurons (so every level's fields contain a GLM driven by all neurons:
    a coarse level predicted from its own pooled past only would lose what the fine past says about it).

    **Temporal renormalization.** With ``time_scales`` :math:`s_\ell > 1`, level :math:`\ell` evolves on blocks of
    :math:`s_\ell` bins: :math:`X^{\ell}_{u,b} = [\sum_{v \in u}\sum_{b' \subset b} X^{\ell-1}_{v,b'} \ge k_u]`,
    counted over the children and over the level-:math:`(\ell-1)` blocks inside block :math:`b` (blocks aligned on
    the first scored bin of a window). Its GRU runs over its own blocks, so a coarse level sees
    :math:`s_\ell \times` more past per step at the cost of its few units. The likelihood stays exact by generating
    in time order, coarse to fine: when a block of level :math:`\ell` starts, it is drawn given the whole past and
    its parent's state; the :math:`r = s_{\ell+1}/s_\ell` child blocks of a parent block are then drawn one after
    another, child block :math:`m` restricted so the parent's count can still end as the parent says: with
    :math:`c_u` the count so far and :math:`n_u` children, an active parent needs at least
    :math:`\max(0, k_u - c_u - n_u (r - 1 - m))` nonzero children now (zero, i.e. free, until the last chance), an
    inactive one fewer than :math:`k_u - c_u` (per-context thresholds of :class:`~dgrn.tn.ConditionalMPS`). Each
    such factor also sees its parent's state, which parent units are already satisfied and :math:`m / r` in its
    context. Block factors are reported at the first bin of their block (zero elsewhere), so sums over bins are the
    exact log-likelihood.

    **Latent chains** (``latent_states`` :math:`K \ge 2`). The top level's units become the observations of slow
    hidden states: unit :math:`u` of level :math:`L` has its own :math:`K`-state Markov chain :math:`z_u`, and given
    it fires independently of the other top units, :math:`P(x^L_{u,t} = 1 \mid z_{u,t} = k, c^L_t) = \sigma(a_u(
    c^L_t) + \theta_{u,k})` (:class:`~dgrn.nn.SwitchingBernoulli` replaces the top decoder). The top factor is
    then the exact filtered mixture :math:`\prod_u \sum_k P(z_{u,t} = k \mid x^L_{<t}, c^L_{<t})\, P(x^L_{u,t}
    \mid z_{u,t} = k, c^L_t)`, the chains filtered from the second bin of every window (started at their stationary
    distributions), and every finer level's context also holds the filtered state probabilities
    :math:`P(z_{u,t} \mid x^L_{\le t}, c^L_{\le t})` (:math:`K - 1` per top unit): a function of the past and of
    the top level's bin, which the finer factors condition on anyway, so the likelihood stays exact. The coarse
    state then evolves on its own clock, :math:`A^u`, rather than only through the GRUs. Needs one coarse level at
    least and no time scales.

    **Latent mixture** (``latent_mixture=True``, with latent chains). The finer levels become mixtures over the
    chains' states too, and the chains are filtered on every level's activity, not on the top level's alone. The
    units of level :math:`\ell < L` under top unit :math:`u` form a segment, modelled by its own
    :class:`~dgrn.tn.ConditionalMPS` (:class:`~dgrn.tn.SegmentedMPS`: no bond between segments) whose context is
    :math:`[c^\ell_t, e_{z_u}]`, the one-hot state of chain :math:`u` appended (state-dependent fields and
    correlations). Given the chains' states the segments are independent, so the emission of chain :math:`u` is
    :math:`e_{t,u}(k) = \log P(x^L_{u,t} \mid k, c^L_t) + \sum_{\ell<L} \log p_k(x^\ell_{u,t} \mid
    x^{\ell+1}_{u,t}, c^\ell_t)`, the filter factorizes over the chains, and every level's factor is exact:
    with :math:`E^{\ell}_{t,u}(k)` the sum of the terms of levels :math:`\ge \ell` and :math:`\pi_{t,u}` the
    predictive state distribution, :math:`\log p(x^\ell_t \mid x^{\ell+1}_t, x_{<t}) = \sum_u [\operatorname{lse}_k
    (\log\pi_{t,u}(k) + E^{\ell}_{t,u}(k)) - \operatorname{lse}_k(\log\pi_{t,u}(k) + E^{\ell+1}_{t,u}(k))]`.
    This is the switching model's mixture at the fine scale (a slow state that changes how every neuron of a
    community fires, inferred from all of them), at :math:`K` times the finer levels' cost and without
    correlations between communities within a bin beyond those of the top level. Sampling draws the top level,
    then every chain's state from its posterior given it, then each finer level given the states.

    Args:
        n_neurons: ``N``. memberships: ``L`` sequences of ``N`` labels (level of each neuron, nested);
        order: preferred order of the neurons (default ``0..N-1``). bond_dim, rank: of each level's decoder.
        hidden_size: GRU width. history: lag bins in the context (``0 <= history <= context``).
        context: warm-up bins of a window, not scored (>= 1). init_noise: random part of the decoders' initial
        cores (:class:`~dgrn.tn.ConditionalMPS`; 0 starts at a product state, which is a saddle point of the cores,
        so keep it small but positive to start near the factorized model). thresholds: ``L`` sequences of ``N``
        integers, the threshold :math:`k_u` of each neuron's level-``l`` unit, from 1 to the unit's number of
        children (default: all 1, OR pooling; :func:`unit_thresholds`). Extra keys (``taus``, ``n_units``) are
        accepted and ignored, so the dict of :func:`build_hierarchy` can be passed as is.
        time_scales: ``L`` integers :math:`s_1 \le \dots \le s_L`, the bins per time step of each coarse level,
            each dividing the next (default all 1; see *Temporal renormalization*).
        latent_states: :math:`K`, states of the latent chain of every top unit (0: none; see *Latent chains*).
        latent_mixture: make the finer levels mixtures over the chains' states (see *Latent mixture*).

    Shapes:
        ``forward(x)``: windows ``(B, W, N)`` -> conditional log-probabilities ``(B, W - context, L + 1)``; column
        ``l`` is :math:`\log p(x^{\ell}_t \mid x^{\ell+1}_t, c^{\ell}_t)` (the top column unconditional); with time
        scales, ``W - context`` must be a multiple of :math:`s_L` and ``context`` at least :math:`s_L`.
        ``level_log_probs(x)`` -> the exact marginals per level, same shape. ``pool(x)`` -> list of ``(..., n_l)``.
        ``sample(x)`` -> list of ``L + 1`` tensors ``(B, n_samples, n_l)``: joint draws of the bin after each window
        (with time scales, of the :math:`s_L` bins after it: ``(B, n_samples, s_L / s_l, n_l)``).
    """

    def __init__(self, n_neurons: int, memberships: list = (), order: list | None = None, bond_dim: int = 4,
                 rank: int = 1, hidden_size: int = 32, history: int = 1, context: int = 8,
                 init_noise: float = 0.3, thresholds: list | None = None, time_scales: list | None = None,
                 latent_states: int = 0, latent_mixture: bool = False, **hierarchy_info: Any) -> None:
        super().__init__()
        if init_noise < 0:
            raise ValueError(f"init_noise must be >= 0, got {init_noise}")
        if n_neurons < 1 or bond_dim < 1 or rank < 0 or hidden_size < 1 or context < 1 or not 0 <= history <= context:
            raise ValueError("need n_neurons, bond_dim, hidden_size, context >= 1, rank >= 0 and 0 <= history <= "
                             f"context; got {n_neurons}, {bond_dim}, {hidden_size}, {context}, {rank}, {history}")
        unknown = set(hierarchy_info) - {"taus", "n_units"}
        if unknown:
            raise TypeError(f"unexpected arguments {sorted(unknown)}")
        self.n_neurons, self.context, self.history = int(n_neurons), int(context), int(history)
        index = nested_order(range(n_neurons) if order is None else order, list(memberships))
        self.n_units = [int(ix.max()) + 1 for ix in index]
        self.n_levels = len(index) - 1
        for lvl, ix in enumerate(index):  # fixed structure, rebuilt from the arguments: not saved in state_dict
            self.register_buffer(f"index_{lvl}", torch.as_tensor(ix, dtype=torch.long), persistent=False)
            if lvl < self.n_levels:
                groups = np.zeros(self.n_units[lvl], dtype=np.int64)
                groups[ix] = index[lvl + 1]
                self.register_buffer(f"groups_{lvl}", torch.as_tensor(groups), persistent=False)
        self.time_scales = self._check_time_scales(time_scales)  # bins per step of every level, 1 first
        self.thresholds = self._unit_thresholds(index, thresholds)  # per level >= 1: k of each unit, in rank order
        for lvl, k in enumerate(self.thresholds):
            self.register_buffer(f"thresholds_{lvl}", torch.as_tensor(k), persistent=False)
        if self.time_scales[-1] > self.context:
            raise ValueError(f"context ({self.context} bins) must hold at least one block of the coarsest level "
                             f"({self.time_scales[-1]} bins)")
        if latent_states and (int(latent_states) != latent_states or latent_states < 2 or not self.n_levels
                              or self.time_scales[-1] > 1):
            raise ValueError(f"latent_states must be 0 or an integer >= 2 with at least one coarse level and no time "
                             f"scales, got {latent_states!r} with {self.n_levels} coarse level(s) and time scales "
                             f"{self.time_scales[1:]}")
        self.latent_states = int(latent_states)
        if latent_mixture and not self.latent_states:
            raise ValueError("latent_mixture needs latent chains (latent_states >= 2)")
        self.latent_mixture = bool(latent_mixture)
        for lvl in range(self.n_levels):  # children per unit: the most a unit can count in one child block
            self.register_buffer(f"children_{lvl}", torch.bincount(getattr(self, f"groups_{lvl}"),
                                                                   minlength=self.n_units[lvl + 1]), persistent=False)
        # a level on a finer clock than its parent also sees the parent's state, its satisfied units and m / r
        parent_features = [2 * self.n_units[lvl + 1] + 1 if self._ratio(lvl) > 1 else 0 for lvl in range(self.n_levels)]
        # with latent chains every finer level also sees their filtered states (K - 1 probabilities per top unit), or
        # in a latent mixture its own chain's state (one-hot)
        latent_features = (self.latent_states if self.latent_mixture else
                           self.n_units[-1] * (self.latent_states - 1) if self.latent_states else 0)
        self.grus = nn.ModuleList(nn.GRU(n, hidden_size, batch_first=True) for n in self.n_units)
        context_dim = hidden_size + history * n_neurons
        finer = []
        for lvl, extra in enumerate(parent_features):
            dim = context_dim + extra + latent_features
            if self.latent_mixture:  # one segment per top unit: the level's units under it
                top_of = np.zeros(self.n_units[lvl], dtype=np.int64)
                top_of[index[lvl]] = index[-1]
                finer.append(SegmentedMPS(np.bincount(top_of, minlength=self.n_units[-1]), dim, bond_dim, rank=rank,
                                          init_noise=init_noise))
            else:
                finer.append(ConditionalMPS(self.n_units[lvl], dim, bond_dim, rank=rank, init_noise=init_noise))
        self.decoders = nn.ModuleList(finer)
        self.decoders.append(SwitchingBernoulli(self.n_units[-1], context_dim, self.latent_states)
                             if self.latent_states else
                             ConditionalMPS(self.n_units[-1], context_dim, bond_dim, rank=rank, init_noise=init_noise))
        self.reset_parameters()

    def _check_time_scales(self, time_scales: list | None) -> list[int]:
        scales = [1] * self.n_levels if time_scales is None else list(time_scales)
        if len(scales) != self.n_levels or any(int(s) != s or s < 1 for s in scales):
            raise ValueError(f"time_scales needs {self.n_levels} integers >= 1 (one per coarse level), got {scales}")
        scales = [1] + [int(s) for s in scales]
        if any(b % a for a, b in zip(scales, scales[1:])):
            raise ValueError(f"time_scales must be nondecreasing, each dividing the next (blocks nest), got "
                             f"{scales[1:]}")
        return scales

    def _ratio(self, lvl: int) -> int:
        """Blocks of level ``lvl`` per block of level ``lvl + 1``."""
        return self.time_scales[lvl + 1] // self.time_scales[lvl]

    def _unit_thresholds(self, index: list[np.ndarray], thresholds: list | None) -> list[list[int]]:
        if thresholds is None:
            return [[1] * n for n in self.n_units[1:]]
        if len(thresholds) != self.n_levels:
            raise ValueError(f"thresholds needs {self.n_levels} levels, got {len(thresholds)}")
        out = []
        for lvl, per_neuron in enumerate(thresholds, 1):
            per_neuron = np.asarray(per_neuron)
            if per_neuron.shape != (self.n_neurons,):
                raise ValueError(f"thresholds of level {lvl} must have shape ({self.n_neurons},), got "
                                 f"{per_neuron.shape}")
            k = np.zeros(self.n_units[lvl], dtype=np.int64)
            k[index[lvl]] = per_neuron
            # what a unit counts: its children in each of its child blocks
            children = np.bincount(getattr(self, f"groups_{lvl - 1}").numpy(), minlength=self.n_units[lvl])
            children = children * self._ratio(lvl - 1)
            if not np.array_equal(k[index[lvl]], per_neuron) or (k < 1).any() or (k > children).any():
                raise ValueError(f"thresholds of level {lvl} must be one integer per unit, from 1 to its number of "
                                 f"children (times its child blocks per block)")
            out.append(k.tolist())
        return out

    def reset_parameters(self) -> None:
        for gru, dec in zip(self.grus, self.decoders):
            gru.reset_parameters()
            dec.reset_parameters()
            with torch.no_grad():  # start every unit at a low firing probability, as the GLM and GRU baselines do
                for part, _ in _field_blocks(dec):
                    part.field.bias.view(-1, 2)[:, 1] = math.log(0.05 / 0.95)

    @torch.no_grad()
    def init_rates(self, spikes: Tensor) -> None:
        """Start every level's decoder at its units' mean activity in ``spikes`` ``(T, N)`` (the log-odds of the
        pooled rates as the context-free fields), as the GLM and GRU baselines start at a low rate."""
        for dec, pooled in zip(self.decoders, self.pool(torch.as_tensor(spikes).to(self.index_0.device).float())):
            rate = pooled.mean(0).clamp(1e-4, 1 - 1e-4)
            for part, units in _field_blocks(dec):
                bias = part.field.bias.view(-1, 2)
                bias[:, 0] = 0.0
                bias[:, 1] = torch.log(rate / (1 - rate))[units].to(bias.dtype)

    @torch.no_grad()
    def init_latent(self, spikes: Tensor, seed: int = 0) -> None:
        """Start the latent chains of the top level at a Baum-Welch fit of each top unit's pooled activity in
        ``spikes`` ``(T, N)`` (:meth:`SwitchingBernoulli.init_from_data`); the context drive starts at zero. With a
        latent mixture, every finer unit's state fields start at its log-odds in each state of its chain (the
        activity weighted by the chain's filtered state probabilities) relative to its mean rate."""
        if not self.latent_states:
            raise ValueError("this model has no latent chains (latent_states=0)")
        levels = self.pool(torch.as_tensor(spikes).to(self.index_0.device).float())
        chains = self.decoders[-1]
        chains.init_from_data(levels[-1], seed=seed)
        if not self.latent_mixture:
            return
        # the finer levels' state fields: each unit's log-odds in each state of its chain (weighted by the chain's
        # filtered state probabilities) against its mean rate, so the mixture starts where the chains' fit says
        y = levels[-1][None].to(chains.field.weight)
        posterior = chains.filter(y, y.new_zeros(*y.shape[:2], chains.field.in_features))[1][0]  # (T, n_L, K)
        k = self.latent_states
        for dec, pooled in zip(self.decoders[:-1], levels[:-1]):
            for u, (part, units) in enumerate(_field_blocks(dec)):
                w = posterior[:, u].to(pooled.dtype)
                rates = ((w.T @ pooled[:, units]) / w.sum(0).clamp_min(1e-12)[:, None]).clamp(1e-4, 1 - 1e-4)
                mean = pooled[:, units].mean(0).clamp(1e-4, 1 - 1e-4)
                state_fields = part.field.weight.view(-1, 2, part.field.in_features)[:, 1, -k:]
                state_fields.copy_((torch.logit(rates) - torch.logit(mean)).T)

    @torch.no_grad()
    def init_glm(self, bias: Tensor, weight: Tensor) -> None:
        """Start the fine level's decoder at a fitted kinetic-Ising / Bernoulli GLM (``bias (N,)``, ``weight
        (H, N, N)`` with ``weight[k-1][i, j]`` the influence of neuron ``j`` at lag ``k`` on ``i``, as returned by
        :func:`dgrn.graph.infer_couplings` with ``return_params=True``): its context-free field is the bias and its
        field from the neurons' last ``min(H, history)`` bins the couplings, so training starts from the GLM's
        predictions (up to the decoder's initial correlations) and adds instantaneous correlations and memory."""
        pos = self._index(0)  # decoder position of each neuron
        perm = torch.empty_like(pos)
        perm[pos] = torch.arange(self.n_neurons, device=pos.device)  # neuron at each decoder position
        bias, weight = torch.as_tensor(bias), torch.as_tensor(weight)
        if bias.shape != (self.n_neurons,) or weight.dim() != 3 or weight.shape[1:] != (self.n_neurons,) * 2:
            raise ValueError(f"need bias ({self.n_neurons},) and weight (H, {self.n_neurons}, {self.n_neurons}); got "
                             f"{tuple(bias.shape)}, {tuple(weight.shape)}")
        hidden = self.grus[0].hidden_size
        for part, sites in _field_blocks(self.decoders[0]):
            field_w, field_b = part.field.weight.view(-1, 2, part.field.in_features), part.field.bias.view(-1, 2)
            rows = perm[sites]
            field_b[:, 0], field_b[:, 1] = 0.0, bias.to(field_b)[rows]
            field_w[:, 0] = 0.0
            for k in range(min(weight.shape[0], self.history)):
                cols = slice(hidden + k * self.n_neurons, hidden + (k + 1) * self.n_neurons)
                field_w[:, 1, cols] = weight[k].to(field_w)[rows][:, perm]

    def coupling_weights(self) -> list[Tensor]:
        """The couplings from the neurons' last ``history`` bins to every level's units, one ``(n, history * N)``
        tensor per read-out (per segment of a latent mixture; rows in decoder order): each unit's field difference
        :math:`f_{u,1} - f_{u,0}`, the log-odds it adds per spike, as a GLM's coupling matrix is (what a lasso on the
        couplings penalizes). Empty without ``history``."""
        if not self.history:
            return []
        start = self.grus[0].hidden_size
        cols = slice(start, start + self.history * self.n_neurons)
        weights = [part.field.weight.view(-1, 2, part.field.in_features)[..., cols]
                   for dec in self.decoders for part, _ in _field_blocks(dec)]
        return [w[:, 1] - w[:, 0] for w in weights]

    def _index(self, lvl: int) -> Tensor:
        return getattr(self, f"index_{lvl}")

    def pool(self, x: Tensor, align: int = 0) -> list[Tensor]:
        """Activity of every level, ``[(..., n_0), ..., (..., n_L)]`` (level 0 is the neurons in decoder order; each
        coarser level counts the active units of the level below against its units' thresholds). With time scales,
        ``x`` is ``(..., T, N)`` and level ``l`` is ``(..., T_l, n_l)``: its complete blocks of :math:`s_l` bins with
        boundaries at ``align`` plus multiples of :math:`s_l` (the first starting at bin ``align % s_l``)."""
        if self.time_scales[-1] > 1 and x.dim() < 2:
            raise ValueError(f"pooling over time scales {self.time_scales[1:]} needs activity (..., T, N), got shape "
                             f"{tuple(x.shape)}")
        out = [torch.empty_like(x).scatter_(-1, self._index(0).expand(*x.shape[:-1], -1), x)]
        for lvl, n in enumerate(self.n_units[1:]):
            below = out[-1]
            idx = getattr(self, f"groups_{lvl}").expand(*below.shape[:-1], -1)
            counts = x.new_zeros(*below.shape[:-1], n).scatter_add_(-1, idx, (below > 0).to(x.dtype))
            r = self._ratio(lvl)
            if r > 1:  # and over the child blocks of each block
                s_child, s_block = self.time_scales[lvl], self.time_scales[lvl + 1]
                skip = (align % s_block - align % s_child) // s_child
                blocks = (counts.shape[-2] - skip) // r
                counts = counts[..., skip:skip + blocks * r, :].unflatten(-2, (blocks, r)).sum(-2)
            out.append((counts >= getattr(self, f"thresholds_{lvl}")).to(x.dtype))
        return out

    def _history(self, fine: Tensor, starts: Tensor) -> Tensor:
        """The neurons' last ``history`` bins before each start bin: ``fine (B, T, N)`` -> ``(B, J, history * N)``."""
        if not self.history:
            return fine.new_zeros(fine.shape[0], starts.shape[0], 0)
        return torch.cat([fine[:, starts - k] for k in range(1, self.history + 1)], -1)

    def _parent_terms(self, lvl: int, parent: Tensor, before: Tensor, step: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Constraint and context of a level-``lvl`` block inside a longer parent block: ``parent (..., n_{l+1})`` the
        parent block's state, ``before`` its active children counted in the earlier child blocks of that parent block,
        ``step (...)`` the child block's position ``m`` in ``0 .. r - 1``. Returns ``(active, thresholds, features)``
        for :meth:`ConditionalMPS.log_prob` (an inactive parent that this block cannot push past its threshold is
        passed as an active block with threshold 0: free)."""
        r = self._ratio(lvl)
        k, cap = getattr(self, f"thresholds_{lvl}"), getattr(self, f"children_{lvl}")
        need = k - before.long()
        later = cap * (r - 1 - step.long())[..., None]  # the most the later child blocks can still add
        on = parent > 0
        k_now = torch.where(on, (need - later).clamp_min(0), need)
        free = ~on & (k_now > cap)
        features = torch.cat([parent, (need <= 0).to(parent.dtype), (step.to(parent.dtype) / r)[..., None]], -1)
        return on | free, k_now.masked_fill(free, 0), features

    def forward(self, x: Tensor) -> Tensor:
        _check_window(x, self.n_neurons, self.context)
        width, ctx = x.shape[1], self.context
        if (width - ctx) % self.time_scales[-1]:
            raise ValueError(f"windows score {width - ctx} bins, not a multiple of the coarsest level's "
                             f"{self.time_scales[-1]}-bin blocks: use a window of context + a multiple of it")
        xs = self.pool(x, align=ctx)
        first = [ctx // s for s in self.time_scales]  # index of the first scored block of every level
        out = x.new_zeros(x.shape[0], width - ctx, self.n_levels + 1)
        latent = []  # the filtered states of the latent chains, a context of every finer level
        if self.latent_states:
            terms, priors, _ = self._filter_latent(xs)
            skip = ctx - self._latent_start()
            if self.latent_mixture:
                return self._mixture_factors(priors[:, skip:-1], terms[:, skip:])
            log_lik = torch.logsumexp(priors[:, :-1] + terms[..., -1], -1)
            posterior = (priors[:, :-1] + terms[..., -1] - log_lik[..., None]).exp()
            out[:, :, -1] = log_lik[:, skip:].sum(-1)
            latent = [posterior[:, skip:, :, 1:].flatten(-2)]
        for lvl in range(self.n_levels + 1 - bool(self.latent_states)):
            step = self.time_scales[lvl]
            states, _ = self.grus[lvl](xs[lvl][:, :-1])  # the state after each block is the next block's context
            starts = torch.arange(ctx, width, step, device=x.device)
            feats = [states[:, first[lvl] - 1:], self._history(xs[0], starts)]
            if lvl < self.n_levels:
                feats += latent
            target = xs[lvl][:, first[lvl]:]
            constraint = {}
            if lvl < self.n_levels:
                parent, n_parent, r = xs[lvl + 1][:, first[lvl + 1]:], self.n_units[lvl + 1], self._ratio(lvl)
                groups = getattr(self, f"groups_{lvl}")
                if r == 1:
                    constraint = dict(active=parent.reshape(-1, n_parent).bool(), thresholds=self.thresholds[lvl])
                else:
                    counts = x.new_zeros(*target.shape[:2], n_parent).scatter_add_(
                        -1, groups.expand_as(target), (target > 0).to(x.dtype)).unflatten(1, (-1, r))
                    before = (counts.cumsum(2) - counts).flatten(1, 2)
                    position = (torch.arange(target.shape[1], device=x.device) % r).expand(target.shape[:2])
                    active, k, parent_feats = self._parent_terms(lvl, parent.repeat_interleave(r, 1), before, position)
                    feats.append(parent_feats)
                    constraint = dict(active=active.reshape(-1, n_parent), thresholds=k.reshape(-1, n_parent))
                constraint["groups"] = groups
            flat = target.reshape(-1, target.shape[-1])
            lp = self.decoders[lvl].log_prob(flat, torch.cat(feats, -1).reshape(flat.shape[0], -1), **constraint)
            out[:, ::step, lvl] = lp.reshape(target.shape[:2])  # a block's factor at its first bin
        return out

    def _latent_start(self) -> int:
        """First bin of a window that the latent chains filter: every bin whose context (the GRU state after the
        bin before, the last ``history`` bins) exists."""
        return max(1, self.history)

    def _filter_latent(self, xs: list[Tensor], history_drive: Tensor | None = None, *, last_only: bool = False,
                       states: list[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The forward filter of the latent chains over the bins ``_latent_start() .. W-1`` of the pooled windows
        ``xs`` (the chains start at their stationary distribution at the first of them). Returns ``(terms (B, T,
        n_L, K, E), priors (B, T + 1, n_L, K), drive)``: the log-emission terms of every chain and state (``E = 1``,
        the top level, or with a latent mixture ``L + 1``, one per level, fine first), the log predictive state
        distributions (the last for the bin after the window) and the top level's drive of the bin after the window
        (:meth:`SwitchingBernoulli.drive`). ``history_drive``: the part of the top drive from the neurons' last bins
        at bins ``_latent_start() .. W`` ``(B, T + 1, n_L)``, if known (:meth:`start_rollout`). ``last_only``: only
        ``priors[:, -1:]``, by the filter in probabilities (:meth:`SwitchingBernoulli.predictive`, with a latent
        mixture :func:`~dgrn.nn.hmm.predictive_distribution`; ``terms`` is then ``None`` without a latent mixture).
        ``states``: every level's GRU states over its window ``(B, W, H)``, if known (a rollout keeps their input
        gates, :func:`~dgrn.nn.rolling.gru_states`)."""
        start, width = self._latent_start(), xs[0].shape[1]
        top_states = self.grus[-1](xs[-1])[0] if states is None else states[-1]
        top, target = self.decoders[-1], xs[-1][:, start:]
        if history_drive is None:  # the read-out of the whole context, as in training
            starts = torch.arange(start, width + 1, device=xs[0].device)
            drive = top.drive(torch.cat([top_states[:, start - 1:], self._history(xs[0], starts)], -1))
        else:
            drive = top.drive(top_states[:, start - 1:], slice(0, top_states.shape[-1])) + history_drive
        log_start = top.log_start(drive.dtype)
        if last_only and not self.latent_mixture:
            prior = top.predictive(target, log_start.exp(), drive=drive)
            return None, prior.log()[:, None], drive[:, -1]
        log_start = log_start.expand(drive.shape[0], -1, -1)
        terms = top.log_emission(target, None, drive=drive[:, :-1])[..., None]
        if self.latent_mixture:
            terms = torch.cat([self._segment_log_probs(xs, start, states), terms], -1)
        if last_only:
            prior = predictive_distribution(_scaled(terms.sum(-1)), top.log_transition_matrix(terms.dtype).exp(),
                                            log_start.exp())
            return terms, prior.log()[:, None], drive[:, -1]
        priors, _ = forward_filter(terms.sum(-1), top.log_transition_matrix(terms.dtype), log_start)
        return terms, priors, drive[:, -1]

    def _history_drive(self, fine: Tensor, starts: Tensor) -> Tensor:
        """The part of the top level's drive from the neurons' last ``history`` bins before each start bin, ``(B, J,
        n_L)`` (:meth:`SwitchingBernoulli.drive` of those context columns)."""
        hidden = self.grus[-1].hidden_size
        columns = slice(hidden, hidden + self.history * self.n_neurons)
        return self.decoders[-1].drive(self._history(fine, starts), columns)

    def _state_contexts(self, feats: Tensor) -> Tensor:
        """Contexts ``(..., F)`` -> ``(..., K, F + K)``: one per chain state, the state one-hot appended."""
        k = self.latent_states
        eye = torch.eye(k, dtype=feats.dtype, device=feats.device).expand(*feats.shape[:-1], k, k)
        return torch.cat([feats[..., None, :].expand(*feats.shape[:-1], k, -1), eye], -1)

    def _segment_log_probs(self, xs: list[Tensor], start: int, states: list[Tensor] | None = None) -> Tensor:
        r""":math:`\log p_k(x^\ell_{u,t} \mid x^{\ell+1}_{u,t}, c^\ell_t)` of every finer level's segment of every
        top unit ``u`` in every chain state ``k``, bins ``start .. W-1``: ``(B, T, n_L, K, L)`` (``states``: every
        level's GRU states over its window, if known)."""
        batch, width, k = xs[0].shape[0], xs[0].shape[1], self.latent_states
        starts = torch.arange(start, width, device=xs[0].device)
        out = []
        for lvl in range(self.n_levels):
            level_states = self.grus[lvl](xs[lvl][:, :-1])[0] if states is None else states[lvl][:, :-1]
            c = self._state_contexts(torch.cat([level_states[:, start - 1:], self._history(xs[0], starts)], -1))
            target, parent = (xs[j][:, start:, None].expand(-1, -1, k, -1) for j in (lvl, lvl + 1))
            lp = self.decoders[lvl].log_prob(target.reshape(-1, target.shape[-1]), c.reshape(-1, c.shape[-1]),
                                             groups=getattr(self, f"groups_{lvl}"),
                                             active=parent.reshape(-1, parent.shape[-1]).bool(),
                                             thresholds=self.thresholds[lvl])
            out.append(lp.reshape(batch, width - start, k, -1).transpose(2, 3))
        return torch.stack(out, -1)

    @staticmethod
    def _mixture_factors(log_prior: Tensor, terms: Tensor) -> Tensor:
        r"""Every level's exact factor from the chains' predictive states ``log_prior (B, T, n_L, K)`` and the
        emission terms of every level ``terms (B, T, n_L, K, L + 1)`` (fine first): :math:`\log p(x^{\ge\ell}_t)
        - \log p(x^{>\ell}_t)`, each the sum over chains of a mixture over their states, ``(B, T, L + 1)``."""
        upward = terms.flip(-1).cumsum(-1).flip(-1)  # levels >= l
        joint = torch.logsumexp(log_prior[..., None] + upward, -2).sum(-2)  # log p(x^{>= l}_t | past)
        return joint - torch.cat([joint[..., 1:], torch.zeros_like(joint[..., :1])], -1)

    def level_log_probs(self, x: Tensor) -> Tensor:
        r"""Exact :math:`\log p(x^{\ell}_t \mid x_{<t})` of every level, ``(B, W - context, L + 1)``."""
        return self(x).flip(-1).cumsum(-1).flip(-1)

    @torch.no_grad()
    def sample(self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> list[Tensor]:
        """Joint samples of the bin after each window (with time scales, of the :math:`s_L` bins after it), drawn
        coarse to fine in time order as :meth:`forward` factorizes them: a list over levels of ``(B, n_samples,
        n_l)`` (with time scales ``(B, n_samples, s_L / s_l, n_l)``), 0/1 in the dtype of ``x``. Level ``l`` of a
        draw is the pooling of level 0 (``pool``). Every level's GRU runs over the whole window, as in :meth:`forward`,
        whose prediction of a bin appended to ``x`` this is (with time scales, blocks end at the window's end)."""
        if x.dim() != 3 or x.shape[2] != self.n_neurons or x.shape[1] < self.context:
            raise ValueError(f"expected windows (B, >= {self.context}, {self.n_neurons}), got {tuple(x.shape)}")
        return self._draw(self.pool(x, align=x.shape[1]), n_samples, generator)

    def _draw(self, xs: list[Tensor], n_samples: int, generator: torch.Generator | None,
              history_drive: Tensor | None = None, states: list[Tensor] | None = None) -> list[Tensor]:
        """:meth:`sample` from the pooled windows ``xs`` (``history_drive`` and every level's GRU ``states``: see
        :meth:`_filter_latent`; only without time scales)."""
        x = xs[0]
        drawn: list[list[Tensor]] = [[] for _ in xs]
        latent = []
        if self.latent_states:  # the top level: a draw from the chains' filtered mixture, once per window's filter
            _, priors, drive = self._filter_latent(xs, history_drive, last_only=True, states=states)
            log_prior, drive = _repeat(priors[:, -1], n_samples), _repeat(drive, n_samples)
            draw = self.decoders[-1].sample(None, log_prior, generator, drive=drive).to(x.dtype)
            posterior = self.decoders[-1].update(draw, None, log_prior, drive=drive)
            if self.latent_mixture:  # every chain's state given the top level's draw: the finer levels' context
                chosen = sample_categorical(posterior.reshape(-1, self.latent_states), generator)
                latent = [nn.functional.one_hot(chosen, self.latent_states).to(x.dtype).view(*posterior.shape)]
            else:
                latent = [posterior[..., 1:].flatten(-2)]
            drawn[-1].append(draw)
        xs = [_repeat(lvl, n_samples) for lvl in xs]
        states = None if states is None else [_repeat(h, n_samples) for h in states]
        for t in range(self.time_scales[-1]):
            for lvl in range(self.n_levels - bool(self.latent_states), -1, -1):
                if t % self.time_scales[lvl]:
                    continue  # a block of this level is under way
                level_states = self.grus[lvl](xs[lvl])[0] if states is None else states[lvl]
                end = torch.tensor([xs[0].shape[1]], device=x.device)
                feats = [level_states[:, -1], self._history(xs[0], end)[:, 0]]
                constraint = {}
                if lvl < self.n_levels:
                    if self.latent_mixture:  # one context per segment: its chain's state
                        feats = [torch.cat(feats, -1)[:, None].expand(-1, self.n_units[-1], -1)]
                    feats += latent
                    parent, r = drawn[lvl + 1][-1], self._ratio(lvl)
                    groups = getattr(self, f"groups_{lvl}")
                    if r == 1:
                        constraint = dict(active=parent.bool(), thresholds=self.thresholds[lvl])
                    else:
                        position = (t // self.time_scales[lvl]) % r
                        before = parent.new_zeros(parent.shape)
                        for sibling in drawn[lvl][len(drawn[lvl]) - position:] if position else []:
                            before.scatter_add_(-1, groups.expand_as(sibling), sibling)
                        active, k, parent_feats = self._parent_terms(
                            lvl, parent, before, torch.full(parent.shape[:1], position, device=x.device))
                        feats.append(parent_feats)
                        constraint = dict(active=active, thresholds=k)
                    constraint["groups"] = groups
                draw = self.decoders[lvl].sample(torch.cat(feats, -1), generator, **constraint).to(x.dtype)
                drawn[lvl].append(draw)
                if t + 1 < self.time_scales[-1]:  # later steps of this call read it
                    xs[lvl] = torch.cat([xs[lvl], draw[:, None]], 1)
        out = [torch.stack(d, 1).reshape(x.shape[0], n_samples, len(d), -1) for d in drawn]
        return [d[:, :, 0] for d in out] if self.time_scales[-1] == 1 else out

    @torch.no_grad()
    def start_rollout(self, x: Tensor) -> tuple[list[RollingWindow], list[RollingWindow], RollingWindow | None] | None:
        """The state of a rollout from windows ``x`` ``(B, W, N)`` for :meth:`rollout_step`: what does not change for
        the bins already in the window, each a :class:`~dgrn.nn.rolling.RollingWindow`: every level's pooled window,
        its GRU's input gates (:func:`~dgrn.nn.rolling.gru_input_gates`) and, with latent chains, the part of the top
        drive from the neurons' last bins. ``None`` with time scales (a step draws a block: see :meth:`sample`)."""
        if x.dim() != 3 or x.shape[2] != self.n_neurons or x.shape[1] < self.context:
            raise ValueError(f"expected windows (B, >= {self.context}, {self.n_neurons}), got {tuple(x.shape)}")
        if self.time_scales[-1] > 1:
            return None
        xs = self.pool(x, align=x.shape[1])
        gates = [RollingWindow(gru_input_gates(gru, lvl)) for gru, lvl in zip(self.grus, xs)]
        if not self.latent_states:
            return [RollingWindow(lvl) for lvl in xs], gates, None
        starts = torch.arange(self._latent_start(), x.shape[1] + 1, device=x.device)
        return [RollingWindow(lvl) for lvl in xs], gates, RollingWindow(self._history_drive(xs[0], starts))

    @torch.no_grad()
    def rollout_step(self, state: tuple[list[RollingWindow], list[RollingWindow], RollingWindow | None],
                     generator: torch.Generator | None = None
                     ) -> tuple[Tensor, tuple[list[RollingWindow], list[RollingWindow], RollingWindow | None]]:
        """One draw of the bin after the window of ``state`` (:meth:`start_rollout`), ``(B, N)`` in the neurons'
        order, as :meth:`sample` of that window draws it (up to rounding), and the state of the window moved on by
        one bin (updated in place). Every level's GRU still runs its recurrence over the whole window (its state
        starts at the window's first bin), but the window is neither pooled nor copied nor multiplied by the GRUs'
        input weights again, and the top drive's history part is computed for the new bin only."""
        levels, gates, history_drive = state
        states = [gru_states(gru, g.values) for gru, g in zip(self.grus, gates)]
        drive = None if history_drive is None else history_drive.values
        drawn = [d[:, 0] for d in self._draw([lvl.values for lvl in levels], 1, generator, drive, states)]
        for lvl, gate, gru, d in zip(levels, gates, self.grus, drawn):
            lvl.push(d)
            gate.push(gru_input_gates(gru, d))
        if history_drive is not None:
            fine = levels[0].values
            history_drive.push(self._history_drive(fine, torch.tensor([fine.shape[1]], device=fine.device))[:, 0])
        return self.to_neurons(drawn[0]), state

    def to_neurons(self, level0: Tensor) -> Tensor:
        """Level-0 (decoder order) activity back in the neurons' order, ``(..., N)``."""
        return level0.index_select(-1, self._index(0))

    def coupling_matrix(self) -> None:
        return None

    def extra_repr(self) -> str:
        return f"n_neurons={self.n_neurons}, n_units={self.n_units}, context={self.context}, history={self.history}"
