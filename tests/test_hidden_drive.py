import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from dgrn.data import SpikeData
from dgrn.datasets import SIMULATORS, build_dataset, fresh_trajectories
from dgrn.sim import hidden_markov_kinetic_ising, hidden_markov_log_likelihood, kinetic_ising
from dgrn.sim.hidden_drive import drive_offsets, hidden_states


def _truth(d):
    """True parameters in float64, rebuilt from the drawn dwell times (not from meta["transition"])."""
    x = d.spikes.double()
    w, h = d.true_couplings.double(), torch.tensor(d.meta["bias"], dtype=torch.float64)
    off = torch.tensor(d.meta["offsets"], dtype=torch.float64)
    dwell = torch.tensor(d.meta["dwell_times"], dtype=torch.float64)
    s = dwell.shape[1]
    leave = 1.0 / dwell
    p = torch.diag_embed(1.0 - leave) + (1.0 - torch.eye(s, dtype=torch.float64)) * (leave / (s - 1))[..., None]
    pi = dwell / dwell.sum(1, keepdim=True)  # detailed balance of the leave-uniformly chain: pi_s proportional to d_s
    return x, w, h, d.true_communities, off, p, pi


def _bernoulli(x, logit):
    return x * F.logsigmoid(logit) + (1 - x) * F.logsigmoid(-logit)


def test_forward_filter_equals_a_brute_force_sum_over_joint_hidden_paths():
    """6 neurons in 2 communities with 2 states each, 7 bins: bins 1..6 are scored, and every one of the 4**6 joint
    paths of the two chains over them is enumerated, weighted by its prior (stationary start at bin 1, then the
    transition matrices) and its emission probability, and summed. log p(x(t) | x(<t)) = log L(t) - log L(t-1)
    with L(t) the sum over the paths of bins 1..t. Short dwell times and a high rate make the switches matter (both
    chains switch in these bins; uniform transition matrices would change the result by 0.4 nats)."""
    d = hidden_markov_kinetic_ising(6, 7, 2, n_states=2, dwell=(1.5, 4.0), drive=2.0, base_rate=0.3, seed=2,
                                    burn_in=50)
    assert 0.2 < float(d.spikes.double().mean()) < 0.8
    x, w, h, labels, off, p, pi = _truth(d)
    torch.testing.assert_close(torch.tensor(d.meta["transition"], dtype=torch.float64), p, rtol=0, atol=1e-15)
    drive = h + x[:-1] @ w.T  # (6, n): field of bins 1..6 before the hidden offsets
    log_l, predictive = [0.0], []
    for length in range(1, 7):
        paths = torch.tensor(list(itertools.product(range(4), repeat=length)))  # joint state k = 2 z_0 + z_1
        z = torch.stack([paths // 2, paths % 2], -1)  # (4**length, length, 2)
        log_prior = pi[0, z[:, 0, 0]].log() + pi[1, z[:, 0, 1]].log()
        for c in range(2):
            log_prior = log_prior + p[c, z[:, :-1, c], z[:, 1:, c]].log().sum(1)
        logits = drive[:length] + off[labels, z[:, :, labels]]  # (paths, length, n)
        log_emit = _bernoulli(x[1:length + 1], logits).sum((1, 2))
        log_l.append(float(torch.logsumexp(log_prior + log_emit, 0)))
        # P(z(t) | x(<t)): the paths weighted by the emissions of the bins before the last one
        before = (log_prior + _bernoulli(x[1:length], logits[:, :-1]).sum((1, 2))).softmax(0)
        predictive.append(torch.stack([torch.zeros(2, dtype=torch.float64).index_add_(0, z[:, -1, c], before)
                                       for c in range(2)]))
    brute = torch.tensor(log_l, dtype=torch.float64).diff()
    assert len(paths) == 4**6
    torch.testing.assert_close(hidden_markov_log_likelihood(d), brute, rtol=0, atol=1e-10)
    log_lik, posterior = hidden_markov_log_likelihood(d, return_posterior=True)
    torch.testing.assert_close(log_lik, brute, rtol=0, atol=1e-10)
    torch.testing.assert_close(posterior, torch.stack(predictive), rtol=0, atol=1e-10)


def test_factorized_filter_equals_the_product_space_filter():
    """3 communities with 3 states (27 joint states), 400 bins: the per-community filter equals a normalized forward
    filter over the joint chain (Kronecker product of the transition matrices, emission of each joint state)."""
    d = hidden_markov_kinetic_ising(12, 400, 3, n_states=3, dwell=(2.0, 10.0), drive=1.5, seed=1, burn_in=100)
    x, w, h, labels, off, p, pi = _truth(d)
    joint = torch.tensor(list(itertools.product(range(3), repeat=3)))  # (27, 3): z of communities 0, 1, 2
    p_joint = torch.kron(torch.kron(p[0], p[1]), p[2])
    alpha = pi[0][joint[:, 0]] * pi[1][joint[:, 1]] * pi[2][joint[:, 2]]
    logits = (h + x[:-1] @ w.T)[:, None, :] + off[labels, joint[:, labels]]  # (T-1, 27, n)
    log_emit = _bernoulli(x[1:, None, :], logits).sum(-1)
    expected = []
    for k in range(x.shape[0] - 1):
        top = log_emit[k].max()
        weight = alpha * (log_emit[k] - top).exp()
        expected.append(float(top + weight.sum().log()))
        alpha = (weight / weight.sum()) @ p_joint
    got = hidden_markov_log_likelihood(d)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-9)
    # one state: no drive, the likelihood is the plain kinetic Ising one of the true couplings
    one = hidden_markov_kinetic_ising(12, 300, 3, n_states=1, seed=1)
    x1, w1, h1 = one.spikes.double(), one.true_couplings.double(), torch.tensor(one.meta["bias"]).double()
    torch.testing.assert_close(hidden_markov_log_likelihood(one), _bernoulli(x1[1:], h1 + x1[:-1] @ w1.T).sum(1),
                               rtol=0, atol=1e-10)


def test_hidden_chains_have_the_drawn_dwell_times():
    """Completed runs of each state (from bin 2 on: the chains restart from stationarity at bin 1; the last run is
    cut) last on average the drawn dwell time d, and the chain leaves to the other states uniformly. A run length is
    geometric, of mean d and standard deviation sqrt(d (d - 1)), so the mean of m runs is within 5 standard errors
    sqrt(d (d - 1) / m) of d (a two-sided miss has probability 6e-7 per check; with 100,000 bins and dwell times of
    3 to 30 bins there are hundreds to thousands of runs per state, so the check resolves a few per cent). Departures
    to each of the 2 other states are binomial(L, 1/2), also checked to 5 standard errors. The exact reference over
    the 100,000 bins stays finite and lies between the likelihood with the hidden states known and the one with the
    drive averaged out."""
    d = hidden_markov_kinetic_ising(6, 100_000, 2, n_states=3, dwell=(3.0, 30.0), drive=-2.0, seed=3)
    z = hidden_states(d)
    assert z.shape == (100_000, 2) and set(z.unique().tolist()) == {0, 1, 2}
    dwell = torch.tensor(d.meta["dwell_times"], dtype=torch.float64)
    for c in range(2):
        runs = torch.tensor(d.meta["hidden_runs"][c])  # [first_bin, state] of every run
        length = torch.diff(torch.cat([runs[:, 0], torch.tensor([z.shape[0]])]))
        done = (runs[:, 0] >= 2) & (torch.arange(len(runs)) < len(runs) - 1)
        for s in range(3):
            sel = done & (runs[:, 1] == s)
            m, mean, ds = int(sel.sum()), float(length[sel].double().mean()), float(dwell[c, s])
            assert m > 300
            assert abs(mean - ds) < 5 * math.sqrt(ds * (ds - 1) / m), (c, s, mean, ds, m)
            after = runs[1:, 1][sel[:-1] & (runs[:-1, 0] >= 2)]  # the state each completed run left to
            assert (after != s).all()
            share = float((after == (s + 1) % 3).double().mean())
            assert abs(share - 0.5) < 5 * math.sqrt(0.25 / len(after))
    ll = hidden_markov_log_likelihood(d)
    assert ll.shape == (99_999,) and torch.isfinite(ll).all()
    x, w, h, labels, off, p, pi = _truth(d)
    drive = h + x[:-1] @ w.T
    known = _bernoulli(x[1:], drive + off[labels, z[1:, labels]]).sum(1)
    mixed = torch.stack([_bernoulli(x[1:], drive + off[labels, s]) for s in range(3)], -1)  # (T-1, n, S)
    per_community = torch.einsum("tns,nc->tcs", mixed, F.one_hot(labels, 2).double())
    averaged = torch.logsumexp(per_community + pi.log(), -1).sum(1)
    assert float(known.mean()) > float(ll.mean()) > float(averaged.mean())


def test_the_drive_carries_information_beyond_lag1_couplings():
    """On 20,000 bins of 40 neurons in 4 communities, the exact reference's NLL per neuron-bin is below that of a
    lag-1 GLM fitted by `infer_couplings` on the same bins. The GLM's in-sample NLL is biased low by about
    (parameters) / (2 T n) = 1640 / 1.6e6 = 0.001 nats (its held-out NLL is that much higher), so a margin of 0.002
    cannot come from the fit; seeds 0-4 give 0.0035-0.0052. The reference also lies between the likelihood with the
    hidden states known and the true couplings with the drive averaged out."""
    d = hidden_markov_kinetic_ising(40, 20_000, 4, seed=0)
    ref = -float(hidden_markov_log_likelihood(d).mean()) / 40
    from dgrn.graph import infer_couplings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fit that did not converge would not be a fair baseline
        _, params = infer_couplings(d, return_params=True)
    assert ref < params["nll"] - 0.002, (ref, params["nll"])
    x, w, h, labels, off, p, pi = _truth(d)
    z = hidden_states(d)
    drive = h + x[:-1] @ w.T
    known = -float(_bernoulli(x[1:], drive + off[labels, z[1:, labels]]).sum(1).mean()) / 40
    mixed = torch.stack([_bernoulli(x[1:], drive + off[labels, s]) for s in range(2)], -1)
    averaged = -float(torch.logsumexp(torch.einsum("tns,nc->tcs", mixed, F.one_hot(labels, 4).double()) + pi.log(),
                                      -1).sum(1).mean()) / 40
    assert known < ref < averaged - 0.002


def test_seeding_and_round_trip(tmp_path):
    a = hidden_markov_kinetic_ising(30, 400, 3, seed=4)
    b = hidden_markov_kinetic_ising(30, 400, 3, seed=4)
    c = hidden_markov_kinetic_ising(30, 400, 3, seed=4, sample_seed=5)
    assert torch.equal(a.spikes, b.spikes) and a.meta == b.meta
    for key in ("bias", "dwell_times", "transition", "offsets", "stationary"):
        assert a.meta[key] == c.meta[key]  # same network and chains ...
    assert torch.equal(a.true_couplings, c.true_couplings) and torch.equal(a.true_communities, c.true_communities)
    assert not torch.equal(a.spikes, c.spikes) and a.meta["hidden_runs"] != c.meta["hidden_runs"]  # ... fresh path
    other = hidden_markov_kinetic_ising(30, 10, 3, seed=5)
    assert not torch.equal(a.true_couplings, other.true_couplings)
    plain = kinetic_ising(30, 10, n_communities=3, seed=4)  # the network of kinetic_ising with the same seed
    assert torch.equal(a.true_couplings, plain.true_couplings) and a.meta["bias"] == plain.meta["bias"]
    a.save(tmp_path / "hmm.npz")
    back = SpikeData.load(tmp_path / "hmm.npz")
    assert torch.equal(hidden_states(back), hidden_states(a))
    assert torch.equal(hidden_markov_log_likelihood(back), hidden_markov_log_likelihood(a))
    # registered as a simulator: fresh trajectories of the same network through the config path
    assert "hidden_markov_kinetic_ising" in SIMULATORS
    cfg = {"name": "hidden_markov_kinetic_ising", "n": 30, "t": 400, "n_communities": 3, "seed": 4}
    fresh = fresh_trajectories(cfg, 5)
    built = build_dataset(fresh.pop("name"), **fresh)
    assert torch.equal(built.spikes, c.spikes)


def test_data_config_composes(tmp_path):
    from conftest import compose

    cfg = compose("train", ["data=kising_hmm", "data.dataset.t=300"], tmp_path)
    dataset = dict(cfg.data.dataset)
    assert dataset["name"] == "hidden_markov_kinetic_ising"
    data = build_dataset(dataset.pop("name"), **dataset)
    assert data.spikes.shape == (300, 100) and data.meta["offsets"][0] == [0.0, -2.0]


def test_drive_offsets():
    assert drive_offsets(1).tolist() == [0.0]
    assert drive_offsets(2, 1.0).tolist() == [0.0, 1.0]
    assert drive_offsets(3, -2.0).tolist() == [0.0, -2.0, 2.0]
    assert drive_offsets(4, 1.0).tolist() == [0.0, 0.5, -0.5, 1.0]
    assert drive_offsets(3, [0.5, 3.0]).tolist() == [0.0, 0.5, 3.0]


def test_bad_input():
    with pytest.raises(ValueError, match="n_states"):
        hidden_markov_kinetic_ising(10, 10, 2, n_states=0)
    with pytest.raises(ValueError, match="n_states"):
        hidden_markov_kinetic_ising(10, 10, 2, n_states=1.5)
    for dwell in (0.5, (0.5, 10), (30, 10), (1, 2, 3), float("inf")):
        with pytest.raises(ValueError, match="dwell"):
            hidden_markov_kinetic_ising(10, 10, 2, dwell=dwell)
    with pytest.raises(ValueError, match="drive"):
        hidden_markov_kinetic_ising(10, 10, 2, n_states=3, drive=[1.0])
    with pytest.raises(ValueError, match="drive"):
        hidden_markov_kinetic_ising(10, 10, 2, drive=float("nan"))
    with pytest.raises(ValueError, match="t must be"):
        hidden_markov_kinetic_ising(10, 0, 2)
    with pytest.raises(ValueError, match="n_communities"):
        hidden_markov_kinetic_ising(10, 10, 11)
    # the exact reference: only data of this simulator, every neuron observed, 0/1 spikes
    with pytest.raises(ValueError, match="hidden_markov_kinetic_ising"):
        hidden_markov_log_likelihood(kinetic_ising(10, 50, n_communities=2))
    d = hidden_markov_kinetic_ising(20, 200, 2, seed=0)
    with pytest.raises(ValueError, match="every neuron observed"):
        hidden_markov_log_likelihood(d.subsample(0.5, seed=0))
    with pytest.raises(ValueError, match="0/1"):
        hidden_markov_log_likelihood(SpikeData(d.spikes * 2, d.dt, d.true_couplings, d.true_communities,
                                               meta=d.meta))
    with pytest.raises(ValueError, match="hidden_runs"):
        hidden_states(kinetic_ising(10, 50, n_communities=2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_with_the_same_network_and_chains():
    a = hidden_markov_kinetic_ising(50, 5000, 4, seed=2, device="cuda")
    b = hidden_markov_kinetic_ising(50, 5000, 4, seed=2)
    assert torch.equal(a.true_couplings, b.true_couplings) and a.meta["hidden_runs"] == b.meta["hidden_runs"]
    assert abs(float(a.spikes.float().mean() - b.spikes.float().mean())) < 0.01
    assert torch.isfinite(hidden_markov_log_likelihood(a)).all()
