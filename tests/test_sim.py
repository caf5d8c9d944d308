import math

import pytest
import torch

from dgrn.sim import kinetic_ising, planted_couplings
from dgrn.sim.kinetic_ising import REFERENCE_DEGREE, expected_in_degree


def test_seeding():
    a = kinetic_ising(30, 500, n_communities=3, seed=4)
    b = kinetic_ising(30, 500, n_communities=3, seed=4)
    c = kinetic_ising(30, 500, n_communities=3, seed=4, sample_seed=5)
    assert torch.equal(a.spikes, b.spikes)
    assert torch.equal(a.true_couplings, c.true_couplings)  # same network ...
    assert not torch.equal(a.spikes, c.spikes)  # ... fresh trajectory
    assert not torch.equal(a.true_couplings, kinetic_ising(30, 10, n_communities=3, seed=5).true_couplings)


def test_planted_structure():
    w, labels = planted_couplings(200, 4, p_in=0.3, p_out=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(labels).tolist() == [50] * 4
    assert (w.diagonal() == 0).all()
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(200, dtype=torch.bool)
    assert (w[same & off] >= 0).all() and (w[~same] <= 0).all()  # excitation within, inhibition between
    # connection densities match p_in / p_out within 4 binomial standard errors
    for mask, p in ((same & off, 0.3), (~same, 0.1)):
        n = int(mask.sum())
        assert abs(float((w[mask] != 0).float().mean()) - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert not torch.equal(w, w.T)  # asymmetric


def test_rates_match_the_glauber_transition_probabilities():
    """Time-averaged spike probability equals the time-averaged sigma(h + W x(t-1)) (an identity of the dynamics)."""
    d = kinetic_ising(40, 20000, n_communities=4, seed=1)
    x = d.spikes.double()
    w, h = d.true_couplings.double(), torch.tensor(d.meta["bias"], dtype=torch.float64)
    p = torch.sigmoid(h + x[:-1] @ w.T)
    empirical, expected = x[1:].mean(0), p.mean(0)
    # conditional Bernoulli draws: the sum of (x - p) is a martingale with variance sum p(1 - p)
    se = (p * (1 - p)).sum(0).sqrt() / p.shape[0]
    assert ((empirical - expected).abs() < 5 * se).all()


def test_communities_are_anticorrelated():
    d = kinetic_ising(100, 20000, n_communities=4, seed=0)
    x, c = d.spikes.float(), d.true_communities
    pop = torch.stack([x[:, c == k].mean(1) for k in range(4)])
    corr = torch.corrcoef(pop)
    assert corr[~torch.eye(4, dtype=torch.bool)].max() < 0
    assert 0.02 < float(x.mean()) < 0.2  # sparse firing, no run-away


def test_expected_in_degree_matches_the_drawn_networks():
    for n, k in ((50, 4), (1000, 20), (103, 7)):
        w, _ = planted_couplings(n, k, generator=torch.Generator().manual_seed(0))
        assert float((w != 0).sum(1).double().mean()) == pytest.approx(expected_in_degree(n, k), rel=0.03)
    assert expected_in_degree(200, 8) == REFERENCE_DEGREE  # the 200-neuron, 8-community network is the reference


@pytest.mark.parametrize("n, k", [(50, 4), (200, 10), (1000, 20)])
def test_default_networks_keep_one_regime_at_every_size(n, k):
    """Summed input |W| capped at its reference value, rate near base_rate, no period-2 oscillation. Unscaled, the
    1000-neuron network had a summed input of 83, fired at 0.26 per bin and oscillated (lag-1 autocorrelation
    -0.36)."""
    d = kinetic_ising(n, 5000, n_communities=k, seed=0)
    # E|1 + 0.5 xi| (folded normal): the mean magnitude of a coupling in units of |j|
    mean_magnitude = 0.5 * math.sqrt(2 / math.pi) * math.exp(-2.0) + math.erf(2 / math.sqrt(2))
    expected = 0.75 * mean_magnitude * min(expected_in_degree(n, k), REFERENCE_DEGREE)  # never scaled up
    assert float(d.true_couplings.abs().sum(1).mean()) == pytest.approx(expected, rel=0.05)
    x = d.spikes.double()
    assert abs(float(x.mean()) - 0.05) < 0.015
    xc = x - x.mean(0)
    lag1 = (xc[1:] * xc[:-1]).mean(0) / xc.var(0, unbiased=False)
    assert float(lag1.mean()) > -0.05


def test_reference_degree_scales_dense_networks_only():
    """Networks at or below the reference degree (the zoo's 100 neurons in 4 communities, kising200's 200 in 8) are
    drawn exactly as without the scaling; denser ones are the same network times reference / expected in-degree."""
    for n, k in ((100, 4), (200, 8), (30, 3)):
        a, b = kinetic_ising(n, 200, n_communities=k, seed=2), kinetic_ising(n, 200, n_communities=k, seed=2,
                                                                             reference_degree=None)
        assert torch.equal(a.true_couplings, b.true_couplings) and torch.equal(a.spikes, b.spikes)
        assert a.meta["coupling_scale"] == 1.0
    a, b = (kinetic_ising(400, 10, n_communities=8, seed=2, reference_degree=r) for r in (REFERENCE_DEGREE, None))
    scale = REFERENCE_DEGREE / expected_in_degree(400, 8)
    assert a.meta["coupling_scale"] == pytest.approx(scale) and scale < 0.5
    torch.testing.assert_close(a.true_couplings, b.true_couplings * scale)
    assert torch.equal(a.true_communities, b.true_communities)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_communities"):
        kinetic_ising(10, 10, n_communities=11)
    with pytest.raises(ValueError, match="base_rate"):
        kinetic_ising(10, 10, base_rate=1.5)
    with pytest.raises(ValueError, match="t must be"):
        kinetic_ising(10, 0)
    with pytest.raises(ValueError, match="reference_degree"):
        kinetic_ising(10, 10, reference_degree=0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_with_the_same_network():
    a = kinetic_ising(50, 2000, seed=2, device="cuda")
    b = kinetic_ising(50, 2000, seed=2)
    assert torch.equal(a.true_couplings, b.true_couplings)
    assert abs(float(a.spikes.float().mean() - b.spikes.float().mean())) < 0.01


# ------------------------------------------------------------------------------------- benchmark graph families
def test_lfr_couplings_are_signed_by_community():
    from dgrn.sim import lfr_couplings

    w, labels, info = lfr_couplings(250, 0.3, seed=0)
    same = labels[:, None] == labels[None, :]
    edges = w != 0
    assert torch.equal(edges, edges.T) and not edges.diagonal().any()  # each undirected edge: both directions
    assert (w[same & edges] > 0).all() and (w[~same & edges] < 0).all()
    # the mixing, the fraction of a node's edges that leave its community, grows with mu; networkx's generator
    # overshoots mu at this size (mean 0.16 / 0.45 / 0.70 for mu 0.1 / 0.3 / 0.5, seeds 0 and 1)
    def mixing(w, labels):
        edges, same = w != 0, labels[:, None] == labels[None, :]
        return float(((edges & ~same).sum(1).float() / edges.sum(1).float()).mean())

    assert mixing(*lfr_couplings(250, 0.1, seed=0)[:2]) < 0.25 < mixing(w, labels) < 0.55
    assert 15 <= int(torch.bincount(labels).min()) and info["lfr_attempts"] >= 1
    assert torch.equal(lfr_couplings(250, 0.3, seed=0)[0], w)  # seeded


def test_hierarchical_couplings_follow_the_two_levels():
    from dgrn.sim import hierarchical_couplings

    w, fine, coarse = hierarchical_couplings(3, 4, seed=1, p_in=0.3, p_group=0.06, p_out=0.03)
    sizes = torch.bincount(fine)
    assert sizes.numel() == 12 and 12 <= int(sizes.min()) and int(sizes.max()) <= 28
    assert torch.equal(coarse, fine // 4)
    same, same_group = fine[:, None] == fine[None, :], coarse[:, None] == coarse[None, :]
    edges = w != 0
    for mask, p, sign in ((same, 0.3, 1), (same_group & ~same, 0.06, 1), (~same_group, 0.03, -1)):
        mask = mask & ~torch.eye(fine.numel(), dtype=torch.bool)
        density = float(edges[mask].float().mean())
        assert abs(density - p) < 4 * math.sqrt(p * (1 - p) / int(mask.sum()))  # binomial, 4 sd
        assert (torch.sign(w[mask & edges]) == sign).all()


def test_cap_input_and_family_networks():
    from dgrn.datasets import build_dataset
    from dgrn.sim import cap_input, family_kinetic_ising, family_network, family_recording

    w = torch.tensor([[0.0, 4.0, -4.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    capped, mean_factor = cap_input(w, cap=6.0)
    assert torch.allclose(capped[0], w[0] * 0.75) and torch.equal(capped[1:], w[1:])
    assert mean_factor == pytest.approx((0.75 + 1 + 1) / 3)
    for family in ("planted", "hier", "lfr0.1"):
        w, labels, bias, info = family_network(family, seed=2)
        assert w.shape == (labels.numel(), labels.numel()) and bias.shape == labels.shape
        if family != "planted":
            assert float(w.abs().sum(1).max()) <= 6.0 + 1e-4
    data = family_kinetic_ising("hier", 300, seed=2)
    assert data.spikes.shape == (300, data.true_communities.numel())
    assert len(data.meta["coarse_communities"]) == data.n_neurons
    assert torch.equal(build_dataset("family_kinetic_ising", family="hier", t=300, seed=2).spikes, data.spikes)
    lif = family_recording("lif", 200, seed=0)  # the clustered LIF network: 10 clusters + the inhibitory group
    assert lif.n_neurons == 1000 and lif.dt == 0.005 and lif.true_couplings.layout == torch.strided
    assert int(lif.true_communities.max()) + 1 == 11
    assert torch.equal(family_recording("hier", 300, seed=2).spikes, data.spikes)
    with pytest.raises(ValueError, match="unknown graph family 'ring'"):
        family_network("ring", 0)
    with pytest.raises(ValueError, match="'lfr<mu>'"):
        family_network("lfrx", 0)
