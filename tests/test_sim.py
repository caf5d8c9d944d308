import math

import pytest
import torch

from dgrn.sim import kinetic_ising, planted_couplings


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


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_communities"):
        kinetic_ising(10, 10, n_communities=11)
    with pytest.raises(ValueError, match="base_rate"):
        kinetic_ising(10, 10, base_rate=1.5)
    with pytest.raises(ValueError, match="t must be"):
        kinetic_ising(10, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_with_the_same_network():
    a = kinetic_ising(50, 2000, seed=2, device="cuda")
    b = kinetic_ising(50, 2000, seed=2)
    assert torch.equal(a.true_couplings, b.true_couplings)
    assert abs(float(a.spikes.float().mean() - b.spikes.float().mean())) < 0.01
