"""Read-outs per scale (dgrn.readouts, dgrn.plots) against exact enumeration, closed forms and Schnakenberg."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dgrn.readouts import (entropy_production_rate, independent_entropy, markov_entropy_production,
                           participation_ratio, pattern_entropy, scale_readouts, state_space_table)


pytestmark = pytest.mark.usefixtures("one_thread")


def _h(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p)) if 0 < p < 1 else 0.0


# ---------------------------------------------------------------------------------------- independent entropy
def test_independent_entropy_closed_form():
    x = torch.zeros(8, 3, dtype=torch.uint8)
    x[:2, 0] = 1   # rate 1/4
    x[:4, 1] = 1   # rate 1/2
    # unit 2 never fires: contributes 0
    assert independent_entropy(x) == pytest.approx((_h(0.25) + math.log(2)) / 3, abs=1e-12)
    assert independent_entropy(x.numpy().astype(bool)) == pytest.approx((_h(0.25) + math.log(2)) / 3, abs=1e-12)


# -------------------------------------------------------------------------------------------- pattern entropy
def _sample_patterns(probs: torch.Tensor, n: int, t: int, seed: int) -> torch.Tensor:
    """``t`` draws of an ``n``-bit pattern from the table ``probs`` over the 2^n codes (bit i = unit i)."""
    codes = torch.multinomial(probs, t, replacement=True, generator=torch.Generator().manual_seed(seed))
    return ((codes[:, None] >> torch.arange(n)) & 1).to(torch.uint8)


def test_pattern_entropy_plugin_matches_exact_enumeration():
    n = 6
    probs = torch.from_numpy(np.random.default_rng(3).dirichlet(np.full(2 ** n, 0.5)))   # a correlated table
    exact = float(-(torch.special.xlogy(probs, probs)).sum()) / n
    x = _sample_patterns(probs, n, 100_000, seed=4)
    out = pattern_entropy(x)
    assert out["method"] == "plugin"
    assert out["n_units"] == n and out["n_bins"] == 100_000
    # i.i.d. samples: the reported delta-method error is the true sampling error; 4 sd is a 6e-5 false-alarm rate
    assert abs(out["entropy"] - exact) < 4 * out["stderr"]
    assert 0.0 < out["stderr"] < 0.003
    assert out["entropy"] < independent_entropy(x)   # the table has correlations


def test_miller_madow_removes_the_plugin_bias():
    # n = 3, T = 100: plug-in bias ~ -(8 - 1)/(2T) = -0.035 nats in total; Miller-Madow leaves O(T^-2)
    n, t, reps = 3, 100, 300
    probs = torch.tensor([0.3, 0.2, 0.15, 0.1, 0.1, 0.07, 0.05, 0.03], dtype=torch.float64)
    exact = float(-(probs * probs.log()).sum())
    mm, plugin = [], []
    for r in range(reps):
        out = pattern_entropy(_sample_patterns(probs, n, t, seed=100 + r), "plugin")
        mm.append(out["entropy"] * n)
        plugin.append(out["entropy"] * n - (out["n_patterns"] - 1) / (2 * t))
    # standard error of each mean over 300 repetitions: about 0.1 / sqrt(300) = 0.006 nats
    assert exact - np.mean(plugin) > 0.02
    assert abs(np.mean(mm) - exact) < 0.015


def test_pattern_entropy_auto_routes_by_size_and_coverage():
    rng = torch.Generator().manual_seed(0)
    sparse = (torch.rand(20_000, 8, generator=rng) < 0.05).to(torch.uint8)
    assert pattern_entropy(sparse)["method"] == "plugin"
    dense = (torch.rand(500, 12, generator=rng) < 0.5).to(torch.uint8)   # ~4096 states, 500 bins: mostly singletons
    assert pattern_entropy(dense, max_sweeps=1)["method"] == "mps"
    assert pattern_entropy(dense, "plugin")["method"] == "plugin"
    wide = (torch.rand(20_000, 21, generator=rng) < 0.01).to(torch.uint8)
    assert pattern_entropy(wide, max_sweeps=1)["method"] == "mps"
    assert pattern_entropy(sparse, "mps", max_sweeps=1)["method"] == "mps"


def _check_upper_bound(out: dict, exact: float) -> None:
    # Held-out NLL = S + KL(P||Q) + noise; test bins are i.i.d. here, so `stderr` is the noise sd. Lower side: 4 sd.
    # Upper side: 4 sd plus 0.01 nats/unit for the KL of a model fitted to 2,100 bins (2-2.5% of S; measured on the
    # site chain over 4 data sets: 0.0013-0.0036 above the true model's NLL on the same test bins).
    assert exact - 4 * out["stderr"] < out["entropy"] < exact + 4 * out["stderr"] + 0.01


def test_pattern_entropy_mps_independent_units_closed_form():
    n, t = 24, 3000
    rates = torch.linspace(0.05, 0.4, n)
    x = (torch.rand(t, n, generator=torch.Generator().manual_seed(5)) < rates).to(torch.uint8)
    exact = sum(_h(float(p)) for p in rates) / n
    before = torch.get_rng_state()
    out = pattern_entropy(x)
    assert torch.equal(before, torch.get_rng_state())   # the caller's RNG is left alone
    assert out["method"] == "mps" and (out["n_test"], out["n_val"], out["n_train"]) == (600, 300, 2100)
    _check_upper_bound(out, exact)
    assert pattern_entropy(x) == out   # deterministic for a seed


def test_pattern_entropy_mps_captures_correlations_of_a_site_markov_chain():
    # p(x) = p(x_1) prod_i p(x_i | x_{i-1}) along the units: exactly an MPS of bond dimension 2, entropy closed form
    n, t, a, b = 24, 3000, 0.1, 0.3   # p(1 | 0) = a, p(0 | 1) = b
    pi1 = a / (a + b)
    gen = torch.Generator().manual_seed(6)
    u = torch.rand(t, n, generator=gen)
    x = torch.zeros(t, n, dtype=torch.uint8)
    x[:, 0] = u[:, 0] < pi1
    for i in range(1, n):
        x[:, i] = torch.where(x[:, i - 1] == 1, u[:, i] >= b, u[:, i] < a)
    exact = (_h(pi1) + (n - 1) * ((1 - pi1) * _h(a) + pi1 * _h(b))) / n
    out = pattern_entropy(x)
    _check_upper_bound(out, exact)
    assert out["sweeps"] >= 1 and max(out["bond_dims"]) >= 2   # the sweeps grew the bonds the correlations need
    assert out["entropy"] < independent_entropy(x) - 0.1   # independent: 0.56 nats/unit, exact: 0.40


# ----------------------------------------------------------------------------------------- entropy production
def _glauber_transition_matrix(w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Exact parallel-Glauber transitions of 0/1 units by enumeration; state index = sum_i x_i 2^i."""
    n = len(h)
    states = np.array([[(k >> i) & 1 for i in range(n)] for k in range(2 ** n)], dtype=float)
    p_on = 1 / (1 + np.exp(-(h + states @ w.T)))   # (from-state, unit)
    return np.prod(np.where(states[None, :, :] == 1, p_on[:, None, :], 1 - p_on[:, None, :]), axis=2)


def _path_scorer(p: np.ndarray, with_marginal: bool = False):
    log_p = torch.from_numpy(np.log(p))
    log_pi = torch.from_numpy(np.log(np.linalg.matrix_power(p, 500)[0]))

    def log_prob_path(windows: torch.Tensor) -> torch.Tensor:
        idx = (windows.long() << torch.arange(windows.shape[2])).sum(2)   # (B, L) state indices
        out = log_p[idx[:, :-1], idx[:, 1:]].sum(1)   # log p(x_2..L | x_1)
        return out + log_pi[idx[:, 0]] if with_marginal else out

    return log_prob_path


def _simulated_windows(w: np.ndarray, h: np.ndarray, t: int, window: int, seed: int) -> torch.Tensor:
    from dgrn.sim.kinetic_ising import glauber_dynamics

    x = glauber_dynamics(torch.tensor(w, dtype=torch.float32), torch.tensor(h, dtype=torch.float32), t, burn_in=200,
                         seed=seed)
    return x[: t - t % window].reshape(-1, window, len(h))


def _estimate_and_error(scorer, windows) -> tuple[float, float]:
    """EP estimate and its standard error: non-overlapping windows of a fast-mixing chain are nearly independent."""
    diff = (scorer(windows) - scorer(windows.flip(1))).double() / (windows.shape[1] - 1)
    return entropy_production_rate(scorer, windows), float(diff.std()) / math.sqrt(windows.shape[0])


def test_entropy_production_converges_to_schnakenberg_for_asymmetric_kinetic_ising():
    w, h = np.array([[0.0, 2.0], [-2.0, 0.0]]), np.array([-0.5, 0.3])
    p = _glauber_transition_matrix(w, h)
    exact = markov_entropy_production(p)
    assert exact > 0.1
    windows = _simulated_windows(w, h, 60_000, 20, seed=1)
    estimate, se = _estimate_and_error(_path_scorer(p), windows)
    assert se < 0.01
    assert abs(estimate - exact) < 4 * se
    # scoring the first bin too (stationary marginal) leaves the default normalization (L - 1 transitions) unbiased
    full, _ = _estimate_and_error(_path_scorer(p, with_marginal=True), windows)
    assert abs(full - exact) < 4 * se
    assert entropy_production_rate(_path_scorer(p), windows, batch_size=7) == pytest.approx(estimate, rel=1e-12)


def test_entropy_production_zero_for_reversible_kinetic_ising():
    # zero couplings: p(x'|x) = p(x'), so a full path and its reverse have exactly the same probability
    w0, h = np.zeros((2, 2)), np.array([-0.5, 0.3])
    p0 = _glauber_transition_matrix(w0, h)
    assert markov_entropy_production(p0) == pytest.approx(0.0, abs=1e-14)
    windows = _simulated_windows(w0, h, 10_000, 20, seed=2)
    assert entropy_production_rate(_path_scorer(p0, with_marginal=True), windows) == pytest.approx(0.0, abs=1e-12)
    # symmetric couplings: parallel Glauber is in detailed balance with pi(x) ~ e^{h.x} prod_i (1 + e^{h_i + (Jx)_i})
    # (Peretto 1984), so the entropy production is 0 although every transition is stochastic
    ws = np.array([[0.4, 1.5], [1.5, -0.3]])
    ps = _glauber_transition_matrix(ws, h)
    assert markov_entropy_production(ps) == pytest.approx(0.0, abs=1e-12)
    windows = _simulated_windows(ws, h, 40_000, 20, seed=3)
    estimate, se = _estimate_and_error(_path_scorer(ps), windows)
    assert abs(estimate) < 4 * se and se < 0.01


def test_markov_entropy_production_closed_forms():
    # biased 3-cycle: uniform pi, sigma = (2q - 1) ln(q / (1 - q))
    q = 0.8
    ring = np.array([[0, q, 1 - q], [1 - q, 0, q], [q, 1 - q, 0]])
    assert markov_entropy_production(ring) == pytest.approx((2 * q - 1) * math.log(q / (1 - q)), rel=1e-12)
    assert markov_entropy_production(torch.tensor(ring), pi=np.full(3, 1 / 3)) == pytest.approx(
        (2 * q - 1) * math.log(q / (1 - q)), rel=1e-12)
    # random walk on a weighted undirected graph: reversible
    a = np.random.default_rng(0).random((5, 5))
    a = a + a.T
    assert markov_entropy_production(a / a.sum(1, keepdims=True)) == pytest.approx(0.0, abs=1e-13)
    # a transition without its reverse: infinite
    assert markov_entropy_production(np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]])) == math.inf


def test_entropy_production_bad_input():
    p = _glauber_transition_matrix(np.zeros((2, 2)), np.zeros(2))
    scorer = _path_scorer(p)
    with pytest.raises(ValueError, match="shape"):
        entropy_production_rate(scorer, torch.zeros(10, 2))
    with pytest.raises(ValueError, match="at least 2 bins"):
        entropy_production_rate(scorer, torch.zeros(10, 1, 2))
    with pytest.raises(ValueError, match="empty"):
        entropy_production_rate(scorer, torch.zeros(0, 5, 2))
    with pytest.raises(ValueError, match="NaN"):
        entropy_production_rate(scorer, torch.full((3, 5, 2), float("nan")))
    with pytest.raises(ValueError, match="n_scored"):
        entropy_production_rate(scorer, torch.zeros(3, 5, 2), n_scored=6)
    with pytest.raises(ValueError, match="one log-probability per window"):
        entropy_production_rate(lambda w: torch.zeros(w.shape[0], 2), torch.zeros(3, 5, 2))
    with pytest.raises(ValueError, match="infinite"):
        entropy_production_rate(lambda w: torch.full((w.shape[0],), -math.inf), torch.zeros(3, 5, 2))
    with pytest.raises(ValueError, match="rows of P must sum to 1"):
        markov_entropy_production(np.full((2, 2), 0.3))
    with pytest.raises(ValueError, match="negative"):
        markov_entropy_production(np.array([[1.5, -0.5], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="square"):
        markov_entropy_production(np.ones((2, 3)) / 3)
    with pytest.raises(ValueError, match="more than one stationary"):
        markov_entropy_production(np.eye(2))
    with pytest.raises(ValueError, match="stationary distribution of P"):
        markov_entropy_production(np.array([[0.9, 0.1], [0.5, 0.5]]), pi=[0.5, 0.5])


# ---------------------------------------------------------------------------------------- participation ratio
def test_participation_ratio_closed_forms():
    # Hadamard columns other than the constant one: centred, orthogonal, equal variance -> covariance ~ identity
    hadamard = np.array([[1]])
    for _ in range(3):
        hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
    assert participation_ratio(hadamard[:, 1:]) == pytest.approx(7.0, rel=1e-12)
    assert participation_ratio((hadamard[:, 1:] > 0).astype(np.uint8)) == pytest.approx(7.0, rel=1e-12)
    rng = np.random.default_rng(1)
    assert participation_ratio(np.outer(rng.normal(size=50), rng.normal(size=9))) == pytest.approx(1.0, rel=1e-10)
    for t, n in ((200, 30), (20, 60)):   # both sides of the Gram shortcut against an eigendecomposition
        x = rng.normal(size=(t, n)) @ rng.normal(size=(n, n))
        lam = np.linalg.eigvalsh(np.cov(x, rowvar=False))
        assert participation_ratio(torch.tensor(x)) == pytest.approx(lam.sum() ** 2 / (lam ** 2).sum(), rel=1e-9)


# --------------------------------------------------------------------------------------------- state space
def test_state_space_table():
    rows = state_space_table([10, 3], [1024, 4])
    assert rows[0] == {"level": 0, "n_units": 10, "n_params": 1024, "log2_states": 10.0, "log2_params": 10.0,
                       "log2_compression": 0.0}
    assert rows[1]["log2_compression"] == pytest.approx(1.0)
    assert state_space_table([4], [9], phys_dim=3)[0]["log2_states"] == pytest.approx(4 * math.log2(3))
    with pytest.raises(ValueError, match="same length"):
        state_space_table([10, 3], [5])
    with pytest.raises(ValueError, match="n_params must hold integers >= 1"):
        state_space_table([10], [0])


# --------------------------------------------------------------------------------------- per-scale rows + plots
def test_scale_readouts_on_pooled_kinetic_ising(tmp_path):
    from dgrn.plots import plot_entropy_per_unit, plot_participation_ratio
    from dgrn.renorm import pool_activity
    from dgrn.sim import kinetic_ising

    data = kinetic_ising(16, 30_000, n_communities=4, seed=0)
    coarse = pool_activity(data, data.true_communities, "or")
    rows = scale_readouts([data, coarse.spikes], [0.18, None], n_params=[500, 40])
    assert json.loads(json.dumps(rows)) == rows
    assert [r["n_units"] for r in rows] == [16, 4] and [r["level"] for r in rows] == [0, 1]
    assert rows[0]["model_entropy_per_unit"] == 0.18 and rows[1]["model_entropy_per_unit"] is None
    assert rows[1]["log2_states"] == 4.0 and rows[0]["n_params"] == 500
    for row, x in zip(rows, (data.spikes, coarse.spikes)):
        assert row["pattern_entropy_method"] == "plugin"
        assert row["independent_entropy_per_unit"] == pytest.approx(independent_entropy(x))
        # plug-in pattern entropy <= plug-in independent entropy (subadditivity); Miller-Madow adds (K - 1)/(2Tn)
        out = pattern_entropy(x)
        slack = (out["n_patterns"] - 1) / (2 * x.shape[0] * x.shape[1])
        assert row["pattern_entropy_per_unit"] <= row["independent_entropy_per_unit"] + slack
        assert 1.0 <= row["participation_ratio"] <= row["n_units"]
    for plot in (plot_entropy_per_unit, plot_participation_ratio):
        path = plot(rows, tmp_path / f"{plot.__name__}.png")
        assert path.exists() and path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="level 1 .*binary"):
        scale_readouts([data.spikes, pool_activity(data.spikes, data.true_communities, "sum")])
    with pytest.raises(ValueError, match="2 levels"):
        scale_readouts([data.spikes, coarse.spikes], [0.1])
    with pytest.raises(ValueError, match="no levels"):
        scale_readouts([])


@pytest.mark.parametrize("fn", [independent_entropy, pattern_entropy, participation_ratio])
def test_activity_bad_input(fn):
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.tensor([[0.0, float("nan")], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="empty"):
        fn(torch.zeros(0, 3))
    with pytest.raises(ValueError, match=r"shape \(T bins, n units\)"):
        fn(torch.zeros(4, 3, 2))
    if fn is not participation_ratio:
        with pytest.raises(ValueError, match="binary"):
            fn(torch.tensor([[0, 2], [1, 0]]))
    else:
        with pytest.raises(ValueError, match="constant"):
            fn(torch.ones(5, 3))
        with pytest.raises(ValueError, match="at least 2 bins"):
            fn(torch.ones(1, 3))


def test_pattern_entropy_bad_options():
    x = torch.zeros(10, 3)
    x[::2, 0] = 1
    with pytest.raises(ValueError, match="unknown pattern-entropy method 'exact'.*plugin"):
        pattern_entropy(x, "exact")
    with pytest.raises(ValueError, match="too few"):
        pattern_entropy(x[:1], "mps")
    with pytest.raises(ValueError, match="bond_dim"):
        pattern_entropy(x, "mps", bond_dim=0)
    with pytest.raises(ValueError, match="at least 2 units"):
        pattern_entropy(x[:, :1], "mps")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_readouts_on_cuda_match_cpu():
    gen = torch.Generator().manual_seed(9)
    x = (torch.rand(3000, 24, generator=gen) < torch.linspace(0.05, 0.4, 24)).to(torch.uint8)
    small = x[:, :6]
    assert pattern_entropy(small.cuda()) == pytest.approx(pattern_entropy(small), rel=1e-12)
    cpu, gpu = pattern_entropy(x), pattern_entropy(x.cuda())
    # the sweeps branch on line-search comparisons, so rounding may change a step: 2e-3 nats/unit, < 1 stderr
    assert gpu["method"] == cpu["method"] == "mps" and gpu["entropy"] == pytest.approx(cpu["entropy"], abs=2e-3)
    assert independent_entropy(x.cuda()) == pytest.approx(independent_entropy(x), rel=1e-12)
    assert participation_ratio(x.cuda()) == pytest.approx(participation_ratio(x), rel=1e-9)
    p = _glauber_transition_matrix(np.array([[0.0, 2.0], [-2.0, 0.0]]), np.array([-0.5, 0.3]))
    windows = (torch.rand(50, 10, 2, generator=gen) < 0.5).to(torch.uint8)
    log_p = torch.from_numpy(np.log(p)).cuda()

    def scorer(w):
        idx = (w.long() << torch.arange(2, device=w.device)).sum(2)
        return log_p[idx[:, :-1], idx[:, 1:]].sum(1)

    assert entropy_production_rate(scorer, windows.cuda()) == pytest.approx(
        entropy_production_rate(_path_scorer(p), windows), rel=1e-10)
