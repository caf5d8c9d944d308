"""Mesoscale evaluation (dgrn.mesoscale) against hand-computed references."""
from __future__ import annotations

import math

import pytest
import torch

from dgrn.mesoscale import (activity_statistics, coarse_states, compare_statistics, forecast_scores, rollout,
                            run_lengths)
from dgrn.nn import BernoulliGLM, BernoulliHMM, GRUBernoulli, IndependentBernoulli, MultiscaleBornMachine


def test_coarse_states_by_the_rate_rule():
    # 4 neurons in 2 units, windows of 2 bins; reference rate 0.1 per neuron-bin, factor 3: active above 0.3
    x = torch.zeros(6, 4)
    x[0, 0] = x[1, 1] = 1  # window 0: unit 0 has 2 spikes / (2 neurons x 2 bins) = 0.5 -> active
    x[2, 2] = 1  # window 1: unit 1 has 0.25 -> not active
    x[4, 2] = x[5, 3] = x[5, 2] = 1  # window 2: unit 1 has 0.75 -> active
    states = coarse_states(x, [0, 0, 1, 1], 2, reference_rate=0.1)
    assert states.tolist() == [[True, False], [False, False], [False, True]]
    # default reference: the record's own mean rate (6 spikes / 24 = 0.25, active above 0.75)
    assert coarse_states(x, [0, 0, 1, 1], 2).tolist() == [[False, False], [False, False], [False, False]]
    assert coarse_states(x[None].expand(3, -1, -1), [0, 0, 1, 1], 2, reference_rate=0.1).shape == (3, 3, 2)
    # neurons in no unit (-1) are left out: unit 1 is then neuron 3 alone, 1 spike in 2 bins in window 2
    assert coarse_states(x, [0, 0, -1, 1], 2, reference_rate=0.1)[:, 1].tolist() == [False, False, True]
    with pytest.raises(ValueError, match="labels"):
        coarse_states(x, [0, 1], 2)
    with pytest.raises(ValueError, match="bins_per_window"):
        coarse_states(x, [0, 0, 1, 1], 0)


def test_run_lengths_against_a_loop():
    torch.manual_seed(0)
    states = torch.rand(2, 50, 3) < 0.6
    expected = []
    for b in range(2):
        for u in range(3):
            run = 0
            for t in range(50):
                if states[b, t, u]:
                    run += 1
                elif run:
                    expected.append(run)
                    run = 0
            if run:
                expected.append(run)
    assert sorted(run_lengths(states).tolist()) == sorted(expected)
    assert run_lengths(torch.zeros(5, 2, dtype=torch.bool)).numel() == 0


def test_forecast_scores_closed_form():
    p = torch.tensor([0.9, 0.2, 0.6, 0.1])
    y = torch.tensor([1, 0, 0, 1])
    out = forecast_scores(p, y)
    expected = (math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.1)) / 4
    assert out["log_likelihood"] == pytest.approx(expected)
    # pairs (positive, negative): (0.9 > 0.2), (0.9 > 0.6), (0.1 < 0.2), (0.1 < 0.6): AUROC 2 / 4
    assert out["auroc"] == pytest.approx(0.5) and out["base_rate"] == 0.5
    assert forecast_scores(p, torch.ones(4))["auroc"] is None
    with pytest.raises(ValueError, match="differ"):
        forecast_scores(p, y[:3])


def test_rollouts_of_independent_neurons_follow_their_rates():
    net = IndependentBernoulli(3, context=2)
    with torch.no_grad():
        net.bias.copy_(torch.logit(torch.tensor([0.1, 0.5, 0.8])))
    out = rollout(net, torch.zeros(2, 4, 3), n_bins=50, n_rollouts=200, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 200, 50, 3)
    # 20,000 draws per neuron: standard error <= 0.0036
    torch.testing.assert_close(out.mean((0, 1, 2)), torch.tensor([0.1, 0.5, 0.8]), atol=0.015, rtol=0)


def test_rollouts_of_a_temporal_multiscale_model_are_cut_to_length():
    torch.manual_seed(0)
    net = MultiscaleBornMachine(4, [[0, 0, 1, 1]], bond_dim=2, hidden_size=3, context=4, time_scales=[4])
    out = rollout(net, torch.zeros(1, 6, 4), n_bins=10, n_rollouts=3)
    assert out.shape == (1, 3, 10, 4) and set(out.unique().tolist()) <= {0.0, 1.0}


def _switching_glm(history: int) -> BernoulliHMM:
    return BernoulliHMM(4, n_states=3, context=2, communities=[0, 0, 1, 1], history=history).double()


#: models whose rollouts keep a state (all but ``time_scales``, which draws a block per step, and the stacked GRU:
#: both draw from a buffer)
ROLLOUT_NETS = {
    "latent": lambda: MultiscaleBornMachine(4, [[0, 0, 1, 1]], bond_dim=2, hidden_size=3, context=2, latent_states=2,
                                            history=2).double(),
    "latent_mixture": lambda: MultiscaleBornMachine(4, [[0, 0, 1, 1]], bond_dim=2, hidden_size=3, context=2,
                                                    latent_states=2, latent_mixture=True).double(),
    "two_levels": lambda: MultiscaleBornMachine(4, [[0, 0, 1, 1], [0, 0, 0, 0]], bond_dim=2, hidden_size=3,
                                                context=2).double(),
    "fine_only": lambda: MultiscaleBornMachine(4, [], bond_dim=2, hidden_size=3, context=2).double(),
    "time_scales": lambda: MultiscaleBornMachine(4, [[0, 0, 1, 1]], bond_dim=2, hidden_size=3, context=2,
                                                 time_scales=[2]),
    "gru": lambda: GRUBernoulli(4, hidden_size=3, context=2).double(),
    "stacked_gru": lambda: GRUBernoulli(4, hidden_size=3, num_layers=2, context=2).double(),
    "hmm": lambda: _switching_glm(0), "switching_glm_lag1": lambda: _switching_glm(1),
    "switching_glm_lag2": lambda: _switching_glm(2),
}


def _randomized(net):
    """``net`` in eval mode with every parameter moved away from its initial value (zero read-outs of the latent
    chains' context, symmetric states, ...)."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p), alpha=0.5)
    return net.eval()


@pytest.mark.parametrize("name", list(ROLLOUT_NETS))
def test_rollouts_are_the_draws_of_the_window_fed_back(name):
    """rollout keeps what does not change in the window from step to step (the pooled levels, the GRUs' input gates
    and the history part of the latent chains' drive; a switching GLM's emission terms), or with time scales and a
    stacked GRU past and draws in one buffer: its continuations are exactly those of calling ``sample`` on the last
    ``memory`` bins, step after step, with the same generator (in float64, so that no rounding flips a draw)."""
    torch.manual_seed(0)
    net = _randomized(ROLLOUT_NETS[name]())
    dtype = next(net.parameters()).dtype
    windows = (torch.rand(2, 5, 4) < 0.4).to(dtype)
    got = rollout(net, windows, 6, 40, generator=torch.Generator().manual_seed(3), memory=4)
    x, gen, drawn = windows[:, -4:].repeat_interleave(40, 0), torch.Generator().manual_seed(3), []
    while sum(d.shape[1] for d in drawn) < 6:
        out = net.sample(x, 1, generator=gen)
        step = (net.to_neurons(out[0]) if isinstance(out, list) else out).reshape(x.shape[0], -1, 4)
        drawn.append(step)
        x = torch.cat([x, step], 1)[:, -4:]
    torch.testing.assert_close(got, torch.cat(drawn, 1)[:, :6].reshape(2, 40, 6, 4), rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in ROLLOUT_NETS if n not in ("time_scales", "stacked_gru")])
def test_a_rollout_step_carries_the_state_of_the_moved_window(name):
    """After every ``rollout_step`` the kept state is the one ``start_rollout`` computes from the window moved on by
    the draw (its first bin dropped): nothing in it is misaligned by a bin."""
    torch.manual_seed(1)
    net = _randomized(ROLLOUT_NETS[name]())
    x = (torch.rand(3, 5, 4) < 0.4).double()
    state, gen = net.start_rollout(x), torch.Generator().manual_seed(2)

    def flat(s):  # the state's windows: lists of levels and one or None (multiscale), two (HMM) or one (GRU)
        parts = s if isinstance(s, tuple) else (s,)
        return [w.values for part in parts for w in (part if isinstance(part, list) else [part]) if w is not None]

    for _ in range(12):  # the buffers fill up (twice the window's 5 bins) and move their content
        draw, state = net.rollout_step(state, gen)
        x = torch.cat([x, draw[:, None]], 1)[:, 1:]
        expected = net.start_rollout(x)
        assert len(flat(state)) == len(flat(expected))
        for got, want in zip(flat(state), flat(expected)):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("width", [0, 1, 3])
def test_rolling_window_is_the_last_entries_of_the_sequence(width):
    from dgrn.nn.rolling import RollingWindow

    seq = torch.arange(2 * 30 * 2).reshape(2, 30, 2)
    window = RollingWindow(seq[:, :width])
    for t in range(width, 30):
        window.push(seq[:, t])
        assert torch.equal(window.values, seq[:, t + 1 - width:t + 1])


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_gru_states_from_input_gates_equal_nn_gru(dtype, tol):
    from dgrn.nn.rolling import gru_input_gates, gru_states

    torch.manual_seed(0)
    gru = torch.nn.GRU(5, 7, batch_first=True).to(dtype)
    x = torch.randn(3, 11, 5, dtype=dtype)
    torch.testing.assert_close(gru_states(gru, gru_input_gates(gru, x)), gru(x)[0], rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="one-layer"):
        gru_input_gates(torch.nn.GRU(5, 7, num_layers=2), x)


def test_activity_statistics_of_a_record_against_itself_and_another():
    torch.manual_seed(1)
    x = (torch.rand(400, 6) < 0.2).float()
    labels = [0, 0, 0, 1, 1, 1]
    a = activity_statistics(x, labels, 5, 20, active_factor=1.2)
    same = compare_statistics(a, a)
    assert same["durations_ks"] == 0 and same["n_active_tv"] == 0 and same["rate_rmse"] == 0
    assert same["correlation_rmse"] == 0
    counts = x.double().unflatten(0, (20, 20)).sum(1)
    torch.testing.assert_close(a["fano"], counts.var(0) / counts.mean(0))
    quiet = activity_statistics(x * (torch.rand(400, 6) < 0.5), labels, 5, 20, active_factor=1.2,
                                reference_rate=float(x.mean()))
    diff = compare_statistics(a, quiet)
    assert diff["rate_rmse"] > 0.05 and diff["n_active_tv"] > 0.2


def test_rollout_memory_is_the_past_a_recurrent_model_sees():
    """A GRU's draws depend on the whole window fed back: with ``memory`` equal to the context, bins before it
    are forgotten (the draws equal those from the shortened window); a memory outside [context, W] is refused."""
    torch.manual_seed(0)
    net = GRUBernoulli(3, hidden_size=4, context=2)
    windows = torch.tensor([[[1.0, 1, 1], [1, 1, 1], [0, 0, 0], [0, 1, 0]]])
    short = rollout(net, windows[:, -2:], 5, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(rollout(net, windows, 5, 3, generator=torch.Generator().manual_seed(1), memory=2), short)
    with torch.no_grad():
        p_full = torch.sigmoid(net(torch.cat([windows, torch.zeros(1, 1, 3)], 1))[:, -1])
        p_short = torch.sigmoid(net(torch.cat([windows[:, -2:], torch.zeros(1, 1, 3)], 1))[:, -1])
    assert (p_full - p_short).abs().max() > 1e-3  # the forgotten bins mattered
    for memory in (1, 5):
        with pytest.raises(ValueError, match="memory"):
            rollout(net, windows, 5, memory=memory)


def test_rollouts_in_chunks_keep_each_context_its_own_continuation():
    """A lag-1 GLM whose neuron i copies neuron i+1 of the last bin (weights of +-40: a draw differs from the copy
    with probability 4e-18) rolls every window forward by a known shift; chunks of any size, including ones that
    split a context's rollouts, give the same continuations in the same order."""
    n = 4
    net = BernoulliGLM(n, history=1)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[0] = 80 * torch.roll(torch.eye(n), 1, dims=1)
        net.bias.fill_(-40.0)
    windows = torch.tensor([[[1.0, 0, 0, 0]], [[0.0, 1, 1, 0]], [[1.0, 1, 0, 1]]])
    expected = torch.stack([torch.stack([torch.roll(w[0], -(k + 1)) for k in range(6)]) for w in windows])
    whole = rollout(net, windows, 6, n_rollouts=2)
    assert torch.equal(whole, expected[:, None].expand(-1, 2, -1, -1))
    for chunk_size in (1, 3, 4, 100):
        assert torch.equal(rollout(net, windows, 6, n_rollouts=2, chunk_size=chunk_size), whole)
    with pytest.raises(ValueError, match="chunk_size"):
        rollout(net, windows, 6, chunk_size=0)


def test_bench_margins_against_the_best_other_model_per_seed():
    from bench.mesoscale import SCORES, margins

    get = {key: g for key, g, _ in SCORES}
    seeds = {"0": {"dgrn": {"test_nll": 0.080, "generation": {"durations_ks": 0.20}},
                   "glm": {"test_nll": 0.082, "generation": {"durations_ks": 0.10}},
                   "gru": {"test_nll": 0.081}},  # an NLL-only row: no generation scores
             "1": {"dgrn": {"test_nll": 0.090}, "glm": {"test_nll": 0.089}},
             "2": {"glm": {"test_nll": 0.07}}}  # no DGRN row: no margin for this seed
    assert margins(seeds, "dgrn", ["glm", "gru"], get["test_nll"], False) == pytest.approx([0.001, -0.001])
    assert margins(seeds, "dgrn", ["glm", "gru"], get["dur KS"], False) == pytest.approx([-0.10])
    seeds["0"]["dgrn"]["forecast_200ms"] = {"log_likelihood": -0.10}
    seeds["0"]["gru"]["forecast_200ms"] = {"log_likelihood": -0.15}
    assert margins(seeds, "dgrn", ["glm", "gru"], get["LL 200ms"], True) == pytest.approx([0.05])
