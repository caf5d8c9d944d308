"""The DGRN network and model: hierarchy ordering, exact coarse-to-fine likelihood, sampling, Lightning module."""
from __future__ import annotations

import itertools
import warnings

import lightning as L
import numpy as np
import pytest
import torch

from dgrn.data import SpikeData
from dgrn.datasets import build_dataset
from dgrn.metrics import ColumnMean, SpikePredictionMetrics
from dgrn.models import DGRN, NextBinModule, SpikeDataModule, module_for
from dgrn.nn import MultiscaleBornMachine, build_hierarchy, nested_order

MEMBERS = [[0, 1, 1, 2, 0, 2], [0, 1, 1, 0, 0, 0]]  # 6 neurons -> 3 units -> 2 units (nested)
# count thresholds of each neuron's unit: level-1 unit 0 (neurons 0, 4) needs both; level-2 unit 0 (level-1 units 0, 2)
# needs both of its children
THRESHOLDS = [[2, 1, 1, 1, 2, 1], [2, 1, 1, 2, 2, 2]]


def _net(**kw) -> MultiscaleBornMachine:
    torch.manual_seed(0)
    net = MultiscaleBornMachine(6, MEMBERS, order=[5, 4, 3, 2, 1, 0], bond_dim=3, rank=1, hidden_size=4,
                                history=1, context=2, **kw).double()
    with torch.no_grad():  # move away from the near-uniform initialisation
        for p in net.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return net


def test_nested_order_makes_children_contiguous():
    index = nested_order([5, 4, 3, 2, 1, 0], MEMBERS)
    assert [int(ix.max()) + 1 for ix in index] == [6, 3, 2]
    for fine, coarse in zip(index[:-1], index[1:]):
        parent = np.zeros(fine.max() + 1, dtype=int)
        parent[fine] = coarse
        assert (np.diff(parent) >= 0).all()  # sorted by parent: every parent's children are one block
    with pytest.raises(ValueError, match="not nested"):
        nested_order(range(4), [[0, 0, 1, 1], [0, 1, 1, 1]])
    with pytest.raises(ValueError, match="permutation"):
        nested_order([0, 0, 1], [])


VARIANTS = [{}, {"thresholds": THRESHOLDS}, {"latent_states": 2}, {"latent_states": 3, "thresholds": THRESHOLDS},
            {"latent_states": 2, "latent_mixture": True},
            {"latent_states": 3, "latent_mixture": True, "thresholds": THRESHOLDS}]


@pytest.mark.parametrize("variant", VARIANTS)
def test_next_bin_distribution_is_exactly_normalized_at_every_level(variant):
    """Enumerate all 2^6 next bins after one history: the fine joint sums to 1, and summing it over the fine
    patterns of each coarse state gives the level's marginal computed by the coarse-to-fine chain (OR pooling and
    count thresholds; latent chains on the top level)."""
    net = _net(**variant)
    history = torch.tensor([[1, 0, 0, 1, 0, 0], [0, 1, 1, 0, 0, 1]], dtype=torch.float64)
    nxt = torch.tensor(list(itertools.product([0, 1], repeat=6)), dtype=torch.float64)
    x = torch.cat([history[None].expand(64, -1, -1), nxt[:, None]], 1)  # (64, 3, 6): context 2, one scored bin
    levels = net.level_log_probs(x)[:, 0]  # (64, 3)
    torch.testing.assert_close(levels[:, 0].exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    for lvl in (1, 2):
        coarse = net.pool(nxt)[lvl]
        keys = (coarse * 2 ** torch.arange(coarse.shape[1], dtype=torch.float64)).sum(1).long()
        summed = torch.zeros(2 ** coarse.shape[1], dtype=torch.float64).index_add_(0, keys, levels[:, 0].exp())
        seen = torch.unique(keys)
        chain = torch.zeros_like(summed)
        chain[keys] = levels[:, lvl].exp()
        torch.testing.assert_close(summed[seen], chain[seen])
        torch.testing.assert_close(summed.sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("variant", VARIANTS)
def test_samples_are_consistent_across_levels_and_follow_the_model(variant):
    """Draws of the bin after a 4-bin window (the context is 2 bins: the GRUs see the whole window, as ``forward``
    does; the latent chains filter it all) against the enumerated predictive distribution (total variation over 64
    cells at 20k draws)."""
    net = _net(**variant)
    history = torch.tensor([[[1, 1, 1, 1, 1, 1], [1, 1, 0, 1, 1, 1], [1, 0, 0, 1, 0, 0], [0, 1, 1, 0, 0, 1]]],
                           dtype=torch.float64)
    draws = net.sample(history, n_samples=20_000, generator=torch.Generator().manual_seed(0))
    assert [tuple(d.shape) for d in draws] == [(1, 20_000, 6), (1, 20_000, 3), (1, 20_000, 2)]
    neurons = net.to_neurons(draws[0][0])
    for lvl, pooled in enumerate(net.pool(neurons)):
        assert torch.equal(pooled, draws[lvl][0])
    nxt = torch.tensor(list(itertools.product([0, 1], repeat=6)), dtype=torch.float64)
    x = torch.cat([history.expand(64, -1, -1), nxt[:, None]], 1)
    p = net.level_log_probs(x)[:, -1, 0].exp()
    keys = (neurons * 2 ** torch.arange(5, -1, -1, dtype=torch.float64)).sum(1).long()
    freq = torch.bincount(keys, minlength=64).double() / 20_000
    assert 0.5 * (freq - p).abs().sum() < 0.03  # total variation; ~64 cells at 20k draws


def _log_sum_over_paths(transition: np.ndarray, emission, t: int) -> float:
    """log of the sum over all joint paths of bins 0..t-1 of independent 2-state chains (``transition (C, 2, 2)``),
    each started at its stationary distribution (numpy's eigenvector of eigenvalue 1), weighted by
    ``emission(bin, chain, state)`` (a probability)."""
    stationary = []
    for a in transition:
        vals, vecs = np.linalg.eig(a.T)
        pi = np.real(vecs[:, np.argmin(abs(vals - 1))])
        stationary.append(pi / pi.sum())
    n_chains, total = len(transition), 0.0
    for paths in itertools.product(range(2), repeat=n_chains * t):
        w = 1.0
        for u in range(n_chains):
            path = paths[u * t:(u + 1) * t]
            w *= stationary[u][path[0]]
            for s, k in enumerate(path):
                if s:
                    w *= transition[u][path[s - 1], k]
                w *= emission(s, u, k)
        total += w
    return float(np.log(total))


def test_latent_top_level_equals_brute_force_over_hidden_paths():
    """The top level's factors over a window are the predictive probabilities of independent hidden Markov chains,
    one per top unit, started at their stationary distribution at bin 1: against the sum over all K^(2 T) joint
    paths of the two chains, with the stationary distribution from numpy's eigenvectors. Also the finer levels see
    the filtered states: changing the transition matrices changes the fine factor (the GRU states do not depend on
    them)."""
    net = _net(latent_states=2)
    top = net.decoders[-1]
    x = (torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(3)) < 0.5).double()
    y = net.pool(x)[-1]  # (B, 6, 2)
    states, _ = net.grus[-1](y[:, :-1])
    c = torch.cat([states, x[:, :-1, net.index_0.argsort()]], -1)  # context of bins 1..5: GRU state, last fine bin
    with torch.no_grad():
        f = (c @ top.field.weight.T + top.field.bias).unflatten(-1, (2, 2))
        p_on = torch.sigmoid((f[..., 1] - f[..., 0])[..., None] + top.state_logits)  # (B, 5, units, K)
        a = torch.softmax(top.transition_logits.double(), -1).numpy()
    expected = []
    for b in range(3):
        def bernoulli(s, u, k, b=b):
            q = float(p_on[b, s, u, k])
            return q if y[b, s + 1, u] else 1 - q

        prefix = [_log_sum_over_paths(a, bernoulli, t) for t in range(1, 6)]  # log p(y_1..y_t)
        expected.append(np.diff(prefix))  # log p(y_t | y_1..y_(t-1)) of the scored bins 2..5 (context 2)
    torch.testing.assert_close(net(x)[:, :, -1], torch.tensor(np.array(expected)), atol=1e-10, rtol=1e-10)
    fine = net(x)[:, :, 0]
    with torch.no_grad():
        top.transition_logits.add_(torch.randn_like(top.transition_logits))
    assert not torch.allclose(net(x)[:, :, 0], fine)


def test_latent_mixture_equals_brute_force_over_hidden_paths():
    """With ``latent_mixture`` every level's factor is a ratio of sums over the joint paths of the chains, whose
    emission in a bin is the top unit's Bernoulli times its segments' factors at every finer level in that state:
    against the sum over all K^(2 T) paths, each segment scored by its own ConditionalMPS with the state one-hot in
    its context (the top level's context and fields as in the test above)."""
    net = _net(latent_states=2, latent_mixture=True, thresholds=THRESHOLDS)
    top = net.decoders[-1]
    x = (torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(4)) < 0.5).double()
    xs = net.pool(x)
    fine = xs[0][:, :-1]  # the last fine bin before bins 1..5, decoder order
    emission = torch.zeros(3, 5, 2, 2, dtype=torch.float64)  # (B, bin 1..5, top unit, state)
    with torch.no_grad():
        states, _ = net.grus[-1](xs[-1][:, :-1])
        f = (torch.cat([states, fine], -1) @ top.field.weight.T + top.field.bias).unflatten(-1, (2, 2))
        p_on = torch.sigmoid((f[..., 1] - f[..., 0])[..., None] + top.state_logits)
        emission += torch.where(xs[-1][:, 1:, :, None] > 0, p_on, 1 - p_on).log()
        for lvl in range(2):
            states, _ = net.grus[lvl](xs[lvl][:, :-1])
            c = torch.cat([states, fine], -1).reshape(15, -1)
            groups, k = getattr(net, f"groups_{lvl}"), torch.tensor(net.thresholds[lvl])
            for u, (part, sites) in enumerate(zip(net.decoders[lvl].parts, net.decoders[lvl].slices)):
                blocks = groups[sites]
                parents = slice(int(blocks[0]), int(blocks[-1]) + 1)
                for state in range(2):
                    onehot = torch.nn.functional.one_hot(torch.tensor(state), 2).double().expand(15, 2)
                    emission[:, :, u, state] += part.log_prob(
                        xs[lvl][:, 1:, sites].reshape(15, -1), torch.cat([c, onehot], 1), groups=blocks - blocks[0],
                        active=xs[lvl + 1][:, 1:, parents].reshape(15, -1).bool(), thresholds=k[parents]).view(3, 5)
        a = torch.softmax(top.transition_logits.double(), -1).numpy()
    top_emission = torch.where(xs[-1][:, 1:, :, None] > 0, p_on, 1 - p_on).log()

    def log_sum_over_paths(b: int, t: int, last) -> float:
        """Bins 1..t, bin t emitting ``last`` (B, 5, 2, 2) instead of every level's terms."""
        return _log_sum_over_paths(a, lambda s, u, k: float((last if s == t - 1 else emission)[b, s, u, k].exp()), t)

    full = np.array([[log_sum_over_paths(b, t, emission) for t in range(1, 6)] for b in range(3)])
    coarse = np.array([[log_sum_over_paths(b, t, top_emission) for t in range(2, 6)] for b in range(3)])
    factors = net(x)  # (3, 4, 3): scored bins 2..5
    torch.testing.assert_close(factors.sum(-1), torch.tensor(np.diff(full, axis=1)), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(factors[..., -1], torch.tensor(coarse - full[:, :-1]), atol=1e-9, rtol=1e-9)


def test_latent_states_refusals():
    with pytest.raises(ValueError, match="latent_mixture needs latent chains"):
        MultiscaleBornMachine(6, MEMBERS, latent_mixture=True)
    with pytest.raises(ValueError, match="latent_states"):
        MultiscaleBornMachine(6, MEMBERS, latent_states=1)
    with pytest.raises(ValueError, match="latent_states"):
        MultiscaleBornMachine(6, [], latent_states=2)
    with pytest.raises(ValueError, match="latent_states"):
        MultiscaleBornMachine(6, MEMBERS, latent_states=2, time_scales=[2, 2], context=2)


def _temporal_net(members, scales, thresholds=None, context=4) -> MultiscaleBornMachine:
    torch.manual_seed(1)
    net = MultiscaleBornMachine(len(members[0]), members, bond_dim=2, rank=1, hidden_size=3, history=2,
                                context=context, thresholds=thresholds, time_scales=scales).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("thresholds", [None, [[2, 2, 2, 2], [3, 3, 3, 3]]])
def test_temporal_levels_are_exactly_normalized(thresholds):
    """Coarse levels on 2- and 4-bin blocks: enumerate all 2^16 fillings of the 4 scored bins of 4 neurons after
    one context. The joint sums to 1, and summing it over the fillings with each coarse trajectory gives that
    level's chain (the factors of it and the levels above, summed over bins): exact with OR pooling and with count
    thresholds over children and child blocks."""
    net = _temporal_net([[0, 0, 1, 1], [0, 0, 0, 0]], [2, 4], thresholds)
    ctx = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.float64)
    fill = torch.tensor(list(itertools.product([0, 1], repeat=16)), dtype=torch.float64).reshape(-1, 4, 4)
    x = torch.cat([ctx[None].expand(fill.shape[0], -1, -1), fill], 1)  # (65536, 8, 4)
    out = net(x)
    assert out.shape == (65536, 4, 3)
    assert (out[:, 1::2, 1] == 0).all() and (out[:, 1:, 2] == 0).all()  # block factors sit at their first bin
    joint = out.sum((1, 2))
    torch.testing.assert_close(joint.logsumexp(0), torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0)
    # the first block of each level is drawn before any later fine bin: its chain (the factors of it and the
    # levels above at bin 0) is the marginal of the enumerated joint
    chains = net.level_log_probs(x)[:, 0]  # (65536, 3)
    pooled = net.pool(fill, align=0)
    for lvl in (1, 2):
        coarse = torch.cat([pooled[above][:, 0] for above in range(lvl, 3)], 1)
        keys = (coarse * 2 ** torch.arange(coarse.shape[1], dtype=torch.float64)).sum(1).long()
        summed = torch.stack([joint[keys == key].logsumexp(0) for key in keys.unique()])
        chain = torch.stack([chains[keys == key, lvl][0] for key in keys.unique()])
        torch.testing.assert_close(summed, chain, atol=1e-10, rtol=0)


def test_temporal_samples_follow_the_model():
    """Draws of the next 2-bin block (unit 0 needs 2 active (child, bin) pairs) pool consistently and their fine
    patterns follow the enumerated model (total variation over 64 cells at 20k draws)."""
    net = _temporal_net([[0, 0, 1]], [2], [[2, 2, 1]], context=2)
    history = torch.tensor([[[1, 0, 0], [0, 1, 1]]], dtype=torch.float64)
    draws = net.sample(history, n_samples=20_000, generator=torch.Generator().manual_seed(0))
    assert [tuple(d.shape) for d in draws] == [(1, 20_000, 2, 3), (1, 20_000, 1, 2)]
    assert torch.equal(net.pool(draws[0][0], align=0)[1], draws[1][0])
    fill = torch.tensor(list(itertools.product([0, 1], repeat=6)), dtype=torch.float64).reshape(-1, 2, 3)
    x = torch.cat([history.expand(64, -1, -1), fill], 1)
    p = net(x).sum((1, 2)).exp()
    keys = (net.to_neurons(draws[0][0]).flatten(1) * 2 ** torch.arange(5, -1, -1, dtype=torch.float64)).sum(1).long()
    freq = torch.bincount(keys, minlength=64).double() / 20_000
    assert 0.5 * (freq - p).abs().sum() < 0.03
    with pytest.raises(ValueError, match="multiple"):
        net(torch.zeros(1, 5, 3, dtype=torch.float64))  # 3 scored bins, 2-bin blocks
    with pytest.raises(ValueError, match="each dividing the next"):
        MultiscaleBornMachine(4, [[0, 0, 1, 1], [0, 0, 0, 0]], context=8, time_scales=[2, 3])
    with pytest.raises(ValueError, match="at least one block"):
        MultiscaleBornMachine(3, [[0, 0, 1]], context=2, time_scales=[4])
    with pytest.raises(ValueError, match="1 integers"):
        MultiscaleBornMachine(3, [[0, 0, 1]], context=2, time_scales=[2, 2])


def test_choose_time_scales_follows_the_pooled_autocorrelation():
    """Two communities of 4 neurons firing with probability 0.6 only while a slow two-state chain is on (switch
    probability 1/30): the OR-pooled activity's autocorrelation is 0.95 (1 - 2/30)^t, 1/e at 13.7 bins, so s = 4
    (the largest power of 2 at most 6.9), nondecreasing up the levels, capped by what the windows allow."""
    from dgrn.nn import choose_time_scales

    gen = torch.Generator().manual_seed(0)
    t, flip = 40_000, 1 / 30
    chains = torch.zeros(t, 2, dtype=torch.bool)
    state = torch.tensor([True, False])
    switches = torch.rand(t, 2, generator=gen) < flip
    for i in range(t):  # a Markov chain: sequential
        state = state ^ switches[i]
        chains[i] = state
    spikes = (torch.rand(t, 8, generator=gen) < 0.6) & chains.repeat_interleave(4, 1)
    members = [[0, 0, 0, 0, 1, 1, 1, 1], [0] * 8]
    assert choose_time_scales(spikes, members) == [4, 4]  # the top unit (any of 8 neurons) is slower still
    assert choose_time_scales(spikes, members, scored_bins=24, context=2) == [2, 2]
    assert choose_time_scales(spikes[:, :4], [[0, 0, 0, 0]]) == [4]
    # white noise: no memory, one bin per step
    assert choose_time_scales(torch.rand(5000, 8, generator=gen) < 0.3, members[:1]) == [1]


def test_multiscale_float32_dtype_and_bad_input():
    net = MultiscaleBornMachine(6, MEMBERS, context=2)
    x = torch.bernoulli(torch.full((2, 10, 6), 0.2))
    assert net(x).dtype == torch.float32 and net(x).shape == (2, 8, 3)
    with pytest.raises(ValueError, match="history"):
        MultiscaleBornMachine(6, MEMBERS, context=2, history=3)
    with pytest.raises(TypeError, match="unexpected"):
        MultiscaleBornMachine(6, MEMBERS, colour="red")
    with pytest.raises(ValueError, match="number of children"):  # level-1 unit 1 has two neurons, not three
        MultiscaleBornMachine(6, MEMBERS, thresholds=[[1, 3, 3, 1, 1, 1], [1] * 6])
    with pytest.raises(ValueError, match="one integer per unit"):  # neurons 0 and 4 share a unit
        MultiscaleBornMachine(6, MEMBERS, thresholds=[[2, 1, 1, 1, 1, 1], [1] * 6])
    with pytest.raises(ValueError, match="2 levels"):
        MultiscaleBornMachine(6, MEMBERS, thresholds=[[1] * 6])
    with pytest.raises(ValueError):
        net(torch.zeros(2, 10, 5))


@pytest.fixture(scope="module")
def kising():
    return build_dataset("kinetic_ising", n=40, t=6000, n_communities=4, seed=0)


def test_build_hierarchy_keeps_the_encoders_own_partition(kising):
    """DGRN's level 1 with the ``gnn`` method takes the encoder's partition unpolished (as its benchmarks measured
    it); ``community_options={"polish": True}`` gives ``find_communities``' default, the polished one."""
    from dgrn.graph import find_communities, infer_couplings, relabel
    from dgrn.zoo import load_pretrained

    enc = load_pretrained("community_encoder_kising")
    w = infer_couplings(kising.spikes)
    own = relabel(find_communities(w, "gnn", encoder=enc, spikes=kising.spikes, polish=False))
    polished = relabel(find_communities(w, "gnn", encoder=enc, spikes=kising.spikes))
    assert not torch.equal(own, polished)  # the polish moves two neurons on this network
    for options, expected in (({}, own), ({"polish": True}, polished)):
        h = build_hierarchy(w, kising.spikes, 1, communities="gnn", encoder=enc, community_options=options)
        assert h["memberships"][0] == expected.tolist()


def test_build_hierarchy_levels_and_clear_errors(kising):
    from dgrn.graph import infer_couplings

    w = infer_couplings(kising.spikes)
    h = build_hierarchy(w, kising.spikes, 2, communities="leiden", tau=10.0, laplacian="normalized")
    assert h["n_units"][0] == 40 and h["n_units"][1] > h["n_units"][2] >= 1
    assert sorted(h["order"]) == list(range(40))
    assert build_hierarchy(w, kising.spikes, 0)["n_units"] == [40]
    with pytest.raises(ValueError, match="use levels <= 2"):  # collapsed to one unit at level 2
        build_hierarchy(w, kising.spikes, 3, communities="leiden", tau=10.0, laplacian="normalized")
    with pytest.raises(ValueError, match="merges none"):
        build_hierarchy(w, kising.spikes, 2, communities="leiden", tau=1e-6)
    with pytest.warns(UserWarning, match="stops at 1 coarse level"):  # strict=False: the levels that can be built
        shallow = build_hierarchy(w, kising.spikes, 2, communities="leiden", tau=1e-6, strict=False)
    assert len(shallow["memberships"]) == len(shallow["thresholds"]) == 1 and len(shallow["n_units"]) == 2


def test_median_thresholds_make_units_active_half_the_time(kising):
    """unit_thresholds against a direct scan of every threshold of every unit, level by level (children of a
    level-2 unit are level-1 units); MultiscaleBornMachine.pool reproduces the same unit states."""
    from dgrn.graph import infer_couplings

    w = infer_couplings(kising.spikes)
    h = build_hierarchy(w, kising.spikes, 2, communities="leiden", tau=10.0, laplacian="normalized", pool="median")
    net = MultiscaleBornMachine(40, h["memberships"], order=h["order"], thresholds=h["thresholds"])
    pooled = net.pool(kising.spikes.float())
    below = {i: kising.spikes[:, i].double() for i in range(40)}  # state of each unit of the level below
    below_of = list(range(40))  # each neuron's unit of the level below
    for lvl, (member, thr) in enumerate(zip(h["memberships"], h["thresholds"]), 1):
        states = {}
        for u in set(member):
            children = {below_of[i] for i in range(40) if member[i] == u}
            count = sum(below[c] for c in children)
            closeness = [abs(float((count >= k).double().mean()) - 0.5) for k in range(1, len(children) + 1)]
            k = len(children) - int(np.argmin(closeness[::-1]))  # ties: the larger threshold
            assert {thr[i] for i in range(40) if member[i] == u} == {k}
            states[u] = (count >= k).double()
        for i in range(40):
            assert torch.equal(pooled[lvl][:, net._index(lvl)[i]].double(), states[member[i]])
        below, below_of = states, member
    assert h["thresholds"][1] != [1] * 40  # level 2 pools 4 communities with a threshold above 1
    for options in ({"pool": "or"}, {"pool": "median", "max_threshold": 1}):  # both are OR pooling at every level
        flat = build_hierarchy(w, kising.spikes, 2, communities="leiden", tau=10.0, laplacian="normalized", **options)
        assert flat["thresholds"] == [[1] * 40, [1] * 40]
    with pytest.raises(ValueError, match="unknown pool"):
        build_hierarchy(w, kising.spikes, 1, communities="leiden", pool="sum")


def test_joint_loglik_metric_matches_the_factorized_path():
    logits = torch.randn(3, 7, 5)
    target = torch.bernoulli(torch.full((3, 7, 5), 0.3))
    a, b = SpikePredictionMetrics(5), SpikePredictionMetrics(5)
    a.update(logits, target)
    joint = -torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
    b.update(joint, target)
    for key, value in a.compute().items():
        torch.testing.assert_close(b.compute()[key], value)
    with pytest.raises(ValueError, match="log-likelihood per bin"):
        b.update(torch.zeros(3, 7, 2), target)
    cols = ColumnMean(3)
    values = torch.randn(10, 3, dtype=torch.float64)
    cols.update(values[:4])
    cols.update(values[4:])
    torch.testing.assert_close(cols.compute(), values.mean(0))
    with pytest.raises(ValueError, match=r"\(rows, 3\)"):
        cols.update(torch.zeros(4, 2))


def _fit_lowers_val_nll(model, dm, epochs: int) -> L.Trainer:
    """Train ``model`` on ``dm`` for ``epochs`` and check that the validation NLL fell; returns the trainer."""
    dm.context = model.context
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(model, datamodule=dm, verbose=False)
    before = float(trainer.callback_metrics["val/nll"])
    trainer.fit(model, datamodule=dm)
    assert float(trainer.callback_metrics["val/nll"]) < before
    return trainer


def test_dgrn_module_trains_and_round_trips(kising, tmp_path):
    dm = SpikeDataModule(kising, observed_fraction=0.5, window=24, batch_size=32, n_blocks=10)
    model = DGRN.from_datamodule(dm, levels=1, communities="leiden", graph={"max_iter": 20},
                                 net={"bond_dim": 2, "hidden_size": 8, "context": 4}, lr=0.02)
    assert model.net.n_units[0] == 20 and model.hparams.hierarchy_info["n_units"] == model.net.n_units
    after = _fit_lowers_val_nll(model, dm, epochs=2).callback_metrics
    assert {"val/nll_level0", "val/nll_level1", "val/c2f_nll", "val/bits_per_spike"} <= set(after)
    torch.testing.assert_close(after["val/nll_level0"], after["val/nll"])
    copy = module_for(dict(model.hparams))(**model.hparams)
    copy.load_state_dict(model.state_dict())
    x = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(copy.net(x), model.net(x))
    out = model.predict_step(x[:2], n_samples=8)
    assert out["probabilities"][0].shape == (2, 20) and out["samples"][1].shape[:2] == (2, 8)
    assert module_for({"net": {"name": "glm"}}) is NextBinModule


def test_dgrn_with_time_scales_trains_and_reads_out(kising):
    """A coarse level on 4-bin blocks through the Lightning module: training lowers the validation NLL, the read-outs
    report the hierarchy's dynamic scaling, and a window whose scored bins do not fill whole blocks is refused."""
    dm = SpikeDataModule(kising, observed_fraction=0.5, window=24, batch_size=32, n_blocks=10)
    kwargs = dict(levels=1, communities="leiden", graph={"max_iter": 20}, lr=0.02,
                  net={"bond_dim": 2, "hidden_size": 8, "context": 4})
    model = DGRN.from_datamodule(dm, time_scales=[4], **kwargs)
    assert model.net.time_scales == [1, 4]
    trainer = _fit_lowers_val_nll(model, dm, epochs=1)
    out = model.scale_readouts(dm, {k: float(v) for k, v in trainer.callback_metrics.items()})
    scaling = out["dynamic_scaling"]
    assert scaling["K"][0] == 1 and len(scaling["tau_c"]) == 2
    with pytest.raises(ValueError, match="multiple of 8"):
        DGRN.from_datamodule(SpikeDataModule(kising, observed_fraction=0.5, window=23, n_blocks=10),
                             time_scales=[8], **{**kwargs, "net": {**kwargs["net"], "context": 8}})


def test_dgrn_without_renormalization_logs_its_single_level(kising):
    # renorm=none: one level, whose NLL is the fine NLL (torchmetrics returns a single column as a 0-d tensor)
    dm = SpikeDataModule(kising, observed_fraction=0.5, window=24, batch_size=32, n_blocks=10)
    model = DGRN.from_datamodule(dm, levels=0, net={"bond_dim": 1, "rank": 0, "hidden_size": 8, "context": 4})
    dm.context = model.context
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    metrics = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert "val/c2f_nll" not in metrics
    assert metrics["val/nll_level0"] == pytest.approx(metrics["val/nll"], rel=1e-6)


def test_dgrn_hierarchy_from_the_correlation_graph(kising):
    """hierarchy_graph="correlation": the levels and the site order are those of the training split's equal-time
    correlations, built by the same function as from the couplings."""
    from dgrn.graph import correlation

    dm = SpikeDataModule(kising, observed_fraction=0.5, window=24, batch_size=32, n_blocks=10)
    net = {"bond_dim": 1, "hidden_size": 4, "context": 4}
    model = DGRN.from_datamodule(dm, levels=1, communities="leiden", graph={"max_iter": 5}, net=net,
                                 hierarchy_graph="correlation")
    train = dm.split_spikes("train")
    expected = build_hierarchy(correlation(train), train, 1, communities="leiden")
    assert model.hparams.net["memberships"] == expected["memberships"]
    assert model.hparams.net["order"] == expected["order"]
    assert model.hparams.hierarchy_info["hierarchy_graph"] == "correlation"
    with pytest.raises(ValueError, match="unknown hierarchy_graph 'lagged'"):
        DGRN.from_datamodule(dm, levels=1, communities="leiden", net=net, hierarchy_graph="lagged")
    # community_options reach the method: the same graph at Leiden resolution 3 (more, smaller communities)
    finer = DGRN.from_datamodule(dm, levels=1, communities="leiden", graph={"max_iter": 5}, net=net,
                                 hierarchy_graph="correlation", community_options={"resolution": 3.0})
    expected = build_hierarchy(correlation(train), train, 1, communities="leiden",
                               community_options={"resolution": 3.0})
    assert finer.hparams.net["memberships"] == expected["memberships"]
    assert finer.net.n_units[1] > model.net.n_units[1]
    assert finer.hparams.hierarchy_info["community_options"] == {"resolution": 3.0}


def test_dgrn_refuses_too_few_neurons():
    data = SpikeData(spikes=torch.bernoulli(torch.full((500, 1), 0.2)), dt=0.01)
    with pytest.raises(ValueError, match="too few to form communities"):
        DGRN.from_datamodule(SpikeDataModule(data, n_blocks=5), levels=1, communities="leiden")


def test_train_publish_and_predict_a_dgrn_model(run_train, tmp_path, monkeypatch):
    """train.py model=dgrn -> dgrn publish -> dgrn predict: per-level outputs, and a clear error for other bins."""
    import json

    from conftest import run_script
    from dgrn.publish import publish_checkpoint

    metrics, run_dir = run_train(["model=dgrn", "renorm=lrg", "renorm.levels=1", "trainer.max_epochs=1",
                                  "model.net.bond_dim=2", "model.net.hidden_size=8", "model.net.context=4"], "dgrn")
    assert {"test/nll", "test/nll_level1", "test/c2f_nll"} <= set(metrics)
    assert json.loads((run_dir / "metrics.json").read_text())["train_windows_per_second"] > 0
    folder = publish_checkpoint(run_dir, "tiny_dgrn", command="pytest", out_dir=tmp_path / "zoo" / "tiny_dgrn")
    info = json.loads((folder / "config.json").read_text())
    assert info["architecture"] == "dgrn" and info["dt"] == pytest.approx(0.01) and "test/c2f_nll" in (folder / "README.md").read_text()
    assert info["hierarchy"]["hierarchy_graph"] == "couplings" and info["hierarchy"]["n_units"][0] == 100
    monkeypatch.setenv("DGRN_CHECKPOINTS", str(tmp_path / "zoo"))
    rec, out = tmp_path / "rec.npz", tmp_path / "rec.pred.npz"
    run_script(["-m", "dgrn.cli", "simulate", "kinetic-ising", "--t", "300", "--sample-seed", "3", "--out", str(rec)])
    proc = run_script(["-m", "dgrn.cli", "predict", "--model", "tiny_dgrn", "--spikes", str(rec), "--samples", "4"])
    assert "units per level" in proc.stdout
    with np.load(out) as f:
        assert f["probabilities_level0"].shape == (296, 100) and f["log_prob_level1"].shape == (296,)
        assert (f["log_prob_level0"] <= f["log_prob_level1"] + 1e-5).all()  # a finer event is never more likely
    assert (tmp_path / "rec_flow.json").is_file() and (tmp_path / "rec_levels.png").is_file()
    other = tmp_path / "other.npz"
    run_script(["-m", "dgrn.cli", "simulate", "kinetic-ising", "--t", "300", "--dt", "0.005", "--out", str(other)])
    proc = run_script(["-m", "dgrn.cli", "predict", "--model", "tiny_dgrn", "--spikes", str(other)], check=False)
    assert proc.returncode != 0 and "10 ms bins" in proc.stderr


def test_dgrn_experiments_and_search_space_compose(tmp_path):
    from conftest import compose

    for experiment, data in (("dgrn_kising", "kinetic_ising"), ("dgrn_lif", "clustered_lif")):
        cfg = compose("train", [f"experiment={experiment}", "hparams_search=dgrn_optuna"], tmp_path / experiment)
        assert cfg.model._target_ == "dgrn.models.DGRN.from_datamodule" and cfg.data.dataset.name == data
        assert cfg.model.levels == cfg.renorm.levels == 2 and cfg.data.observed_fraction == 0.5
        assert set(cfg.hydra.sweeper.params) == {"model.net.bond_dim", "renorm.levels", "renorm.tau", "model.lr",
                                                "model.factorized_epochs"}
    cfg = compose("train", ["experiment=dgrn_kising", "renorm=none"], tmp_path / "none")
    assert cfg.model.levels == 0  # the fine-scale ConditionalMPS baseline
    cfg = compose("train", ["experiment=dgrn_kising_hmm"], tmp_path / "hmm")
    assert cfg.data.dataset.name == "hidden_markov_kinetic_ising" and cfg.model.levels == 1
    assert cfg.model.net.latent_mixture and cfg.model.l1 == 3e-4 and cfg.trainer.max_epochs == 14


def test_init_glm_reproduces_the_glm_exactly_with_product_cores():
    """With product-state cores (no bond correlations), the fine level initialised from a GLM *is* that GLM."""
    from dgrn.graph import glm_logits

    torch.manual_seed(0)
    n = 6
    net = MultiscaleBornMachine(n, [], order=[3, 1, 5, 0, 2, 4], bond_dim=3, history=2, context=2).double()
    dec = net.decoders[0]
    with torch.no_grad():
        dec.core.copy_(torch.eye(3, dtype=torch.float64)[None, :, None, :].expand(n, 3, 2, 3) / 2 ** 0.5)
        dec.modulation.zero_()
    bias, weight = torch.randn(n, dtype=torch.float64), 0.8 * torch.randn(2, n, n, dtype=torch.float64)
    net.init_glm(bias, weight)
    x = torch.bernoulli(torch.full((4, 12, n), 0.4, dtype=torch.float64))
    logits = glm_logits(x, bias, weight, context=2)
    expected = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x[:, 2:], reduction="none").sum(-1)
    torch.testing.assert_close(net(x)[..., 0], expected)
    # the couplings a lasso sees are the GLM's, in decoder order on both sides, one block of columns per lag
    perm = torch.tensor([3, 1, 5, 0, 2, 4])
    (couplings,) = net.coupling_weights()
    torch.testing.assert_close(couplings, torch.cat([weight[k][perm][:, perm] for k in range(2)], 1))
    assert MultiscaleBornMachine(n, [], history=0).coupling_weights() == []
    with pytest.raises(ValueError, match="need bias"):
        net.init_glm(bias[:3], weight)
    # init_noise=0 with rank 0 starts at that product state by construction
    exact = MultiscaleBornMachine(n, [], order=[3, 1, 5, 0, 2, 4], bond_dim=3, rank=0, history=2, context=2,
                                  init_noise=0.0).double()
    exact.init_glm(bias, weight)
    torch.testing.assert_close(exact(x)[..., 0], expected)
    with pytest.raises(ValueError, match="init_noise"):
        MultiscaleBornMachine(n, [], init_noise=-0.1)


def test_dgrn_lasso_penalizes_and_shrinks_the_couplings_of_every_level(kising):
    """``l1``: the loss gains lambda * sum |f_1 - f_0| over the columns of the neurons' last bin of every level's
    field, / N (recomputed here from the raw field weights), and training with it leaves smaller couplings."""
    dm = SpikeDataModule(kising, observed_fraction=0.5, window=24, batch_size=32, n_blocks=10)
    models = []
    for l1 in (0.0, 0.01):
        torch.manual_seed(0)
        models.append(DGRN.from_datamodule(dm, levels=1, communities="leiden", graph={"max_iter": 20}, lr=0.02,
                                           net={"bond_dim": 2, "hidden_size": 8, "context": 4}, l1=l1))
    plain, lasso = models
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), lasso.parameters()))
    n, hidden = dm.n_neurons, 8
    fields = [dec.field.weight.view(-1, 2, dec.field.in_features) for dec in lasso.net.decoders]
    assert len(fields) == len(lasso.net.coupling_weights()) == 2  # the fine level and the top
    by_hand = sum((w[:, 1, hidden:hidden + n] - w[:, 0, hidden:hidden + n]).abs().sum() for w in fields)
    dm.context = plain.context
    dm.setup("fit")
    x = next(iter(dm.train_dataloader()))
    with warnings.catch_warnings():  # self.log outside a trainer warns
        warnings.simplefilter("ignore")
        extra = lasso.training_step(x, 0) - plain.training_step(x, 0)
    torch.testing.assert_close(extra, 0.01 * by_hand / n)
    for model in models:
        L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False).fit(model, datamodule=dm)
    with torch.no_grad():
        plain_sum, lasso_sum = (sum(w.abs().sum() for w in m.net.coupling_weights()) for m in models)
    assert float(lasso_sum) < 0.9 * float(plain_sum)
    with pytest.raises(ValueError, match="l1"):
        DGRN(dm.n_neurons, net={"memberships": []}, l1=-1.0)


def test_factorized_epochs_train_the_fields_first_then_only_the_correlations(kising):
    dm = SpikeDataModule(kising, observed_fraction=0.5, window=24, batch_size=32, n_blocks=10)
    model = DGRN.from_datamodule(dm, levels=1, communities="leiden", graph={"max_iter": 20}, lr=0.02,
                                 net={"bond_dim": 2, "hidden_size": 8, "context": 4, "init_noise": 0.05},
                                 factorized_epochs=1)
    dm.context = model.context
    correlations = {id(p) for p in model.correlation_parameters()}
    expected = {id(p) for dec in model.net.decoders for p in (dec.core, dec.left, dec.right, dec.modulation,
                                                                dec.gate.weight)}
    assert correlations == expected

    snapshots = []

    class Snapshot(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            snapshots.append({id(p): p.detach().clone() for p in module.parameters()})

    start = {id(p): p.detach().clone() for p in model.parameters()}
    L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[Snapshot()]).fit(model, datamodule=dm)

    def moved(a, b, which):
        return [not torch.equal(a[k], b[k]) for k in a if (k in correlations) == which]

    assert not any(moved(start, snapshots[0], True)) and all(moved(start, snapshots[0], False))
    assert all(moved(snapshots[0], snapshots[1], True)) and not any(moved(snapshots[0], snapshots[1], False))
    assert all(p.requires_grad for p in model.parameters())  # nothing stays frozen after training
    with pytest.raises(ValueError, match="factorized_epochs"):
        DGRN(dm.n_neurons, net={"memberships": []}, factorized_epochs=0)


def test_dgrn_with_latent_chains_trains_in_both_stages_and_round_trips(kising):
    """``net.latent_states``: the chains start at Baum-Welch fits of the communities' pooled activity (no longer the
    reset's sticky 0.9), training lowers the validation NLL, the chains train in both stages of ``factorized_epochs``
    while the correlations wait for the second, and a checkpoint copy predicts the same."""
    dm = SpikeDataModule(kising, observed_fraction=0.5, window=24, batch_size=32, n_blocks=10)
    model = DGRN.from_datamodule(dm, levels=1, communities="leiden", graph={"max_iter": 20}, lr=0.02,
                                 net={"bond_dim": 2, "hidden_size": 8, "context": 4, "latent_states": 2},
                                 factorized_epochs=1)
    top = model.net.decoders[-1]
    stay = torch.softmax(top.transition_logits.detach(), -1).diagonal(dim1=1, dim2=2)
    assert not torch.allclose(stay, torch.full_like(stay, 0.9))
    chains = {id(p) for p in model.latent_chain_parameters()}
    assert chains == {id(top.state_logits), id(top.transition_logits)}
    assert not chains & {id(p) for p in model.correlation_parameters()}
    first = {}

    class FirstStage(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            if not first:
                first.update({id(p): p.detach().clone() for p in module.parameters()})

    start = {id(p): p.detach().clone() for p in model.parameters()}
    dm.context = model.context
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[FirstStage()])
    trainer.validate(model, datamodule=dm, verbose=False)
    before = float(trainer.callback_metrics["val/nll"])
    trainer.fit(model, datamodule=dm)
    assert float(trainer.callback_metrics["val/nll"]) < before
    end = {id(p): p.detach() for p in model.parameters()}
    assert all(not torch.equal(start[k], first[k]) and not torch.equal(first[k], end[k]) for k in chains)
    copy = module_for(dict(model.hparams))(**model.hparams)
    copy.load_state_dict(model.state_dict())
    x = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(copy.net(x), model.net(x))
    out = model.predict_step(x[:2], n_samples=8)
    assert out["probabilities"][1].shape == (2, model.net.n_units[1])


def test_dgrn_with_a_latent_mixture_starts_from_the_chains_and_trains(kising):
    """``net.latent_mixture``: one fine decoder per community (its cores among the correlation parameters), each
    neuron's state fields started at its log-odds in the states of its community's chain (the more active state
    gets the larger field for most neurons), training lowers the validation NLL, and a checkpoint copy predicts the
    same."""
    dm = SpikeDataModule(kising, observed_fraction=0.5, window=24, batch_size=32, n_blocks=10)
    model = DGRN.from_datamodule(dm, levels=1, communities="leiden", graph={"max_iter": 20}, lr=0.02,
                                 net={"bond_dim": 2, "hidden_size": 8, "context": 4, "latent_states": 2,
                                      "latent_mixture": True})
    fine = model.net.decoders[0]
    assert len(fine.parts) == model.net.n_units[1] and sum(fine.sizes) == model.net.n_neurons
    assert {id(p.core) for p in fine.parts} <= {id(p) for p in model.correlation_parameters()}
    offsets = torch.cat([p.field.weight.view(-1, 2, p.field.in_features)[:, 1, -2:] for p in fine.parts]).detach()
    assert (offsets[:, 1] > offsets[:, 0]).float().mean() > 0.7
    dm.context = model.context
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(model, datamodule=dm, verbose=False)
    before = float(trainer.callback_metrics["val/nll"])
    trainer.fit(model, datamodule=dm)
    assert float(trainer.callback_metrics["val/nll"]) < before
    copy = module_for(dict(model.hparams))(**model.hparams)
    copy.load_state_dict(model.state_dict())
    x = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(copy.net(x), model.net(x))


def test_latent_draws_survive_a_bin_beyond_floats_range():
    """The draw's filter runs on likelihoods; a top unit silent where both chain states make it fire with logit 800
    (likelihood e^-800, 0 in float64) falls back to the logarithms: the same predictive states as the log filter."""
    torch.manual_seed(0)
    net = MultiscaleBornMachine(4, [[0, 0, 1, 1]], bond_dim=2, hidden_size=3, context=2, latent_states=2)
    net = net.double().eval()
    with torch.no_grad():
        net.decoders[-1].field.bias.view(2, 2)[0, 1] = 800.0  # unit 0: drive 800 in both states
        net.decoders[-1].state_logits[0, 1] = 5.0  # the states still differ: e^-800 against e^-805
    x = torch.zeros(2, 5, 4, dtype=torch.float64)
    xs = net.pool(x, align=5)
    with torch.no_grad():
        fast = net._filter_latent(xs, last_only=True)[1][:, -1]
        exact = net._filter_latent(xs)[1][:, -1]
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, exact, rtol=1e-10, atol=1e-12)
