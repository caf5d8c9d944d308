"""Dynamic scaling (dgrn.readouts.autocorrelation, autocorrelation_time, dynamic_scaling,
level_autocorrelation_times; dgrn.plots.plot_dynamic_scaling) against closed forms: two-state Markov chains, AR(1)
processes and a hierarchy of shared AR(1) latents whose cluster autocorrelation is an exact mixture of exponentials.

Sampling tolerances use Bartlett's formula for the variance of a sample autocorrelation of a process with
C(t) = lam^t:  var r(t) ~ (1/T) [(1 + lam^2)(1 - lam^(2t)) / (1 - lam^2) - 2 t lam^(2t)]
<= (1/T)(1 + lam^2)/(1 - lam^2), and a shift dC of the curve moves its 1/e crossing by dC / |C'(t*)| = dC * tau / e^-1.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from dgrn.readouts import (_greedy_pairs, autocorrelation, autocorrelation_time, dynamic_scaling,
                           level_autocorrelation_times)


pytestmark = pytest.mark.usefixtures("one_thread")


def markov_chains(a: float, b: float, t: int, n: int, seed: int) -> np.ndarray:
    """``n`` independent stationary two-state chains, P(0 -> 1) = a, P(1 -> 0) = b, as ``(t, n)`` uint8.

    Built as: with probability lam = 1 - a - b keep the state, otherwise draw it afresh from the stationary law
    pi(1) = a / (a + b); then P(0 -> 1) = (a + b) pi(1) = a and P(1 -> 0) = (a + b) pi(0) = b, the same chain."""
    rng = np.random.default_rng(seed)
    fresh = (rng.random((t, n)) < a / (a + b)).astype(np.uint8)
    refresh = rng.random((t, n)) >= 1 - a - b
    refresh[0] = True  # stationary start
    last = np.maximum.accumulate(np.where(refresh, np.arange(t)[:, None], 0), axis=0)
    return np.take_along_axis(fresh, last, axis=0)


def ar1(lam: np.ndarray | float, t: int, n: int, seed: int) -> np.ndarray:
    """``n`` independent stationary Gaussian AR(1) processes with unit variance and C(t) = lam^t, ``(t, n)``; ``lam``
    a scalar or one value per column."""
    rng = np.random.default_rng(seed)
    lam = np.broadcast_to(np.asarray(lam, dtype=float), (n,))
    out = np.empty((t, n))
    for j, lj in enumerate(lam):
        e = rng.standard_normal(t)
        e[1:] *= math.sqrt(1 - lj ** 2)  # first value already stationary N(0, 1)
        out[:, j] = lfilter([1.0], [1.0, -lj], e)
    return out


def crossing(curve: np.ndarray, level: float = math.exp(-1)) -> float:
    """Reference: the first integer lag below ``level``, linearly interpolated with the lag before."""
    t = int(np.argmax(curve < level))
    return t - 1 + (curve[t - 1] - level) / (curve[t - 1] - curve[t])


# ------------------------------------------------------------------------------ autocorrelation, closed forms
def test_autocorrelation_two_state_markov_chain():
    a, b, t, n = 0.05, 0.15, 100_000, 16
    lam = 1 - a - b
    x = markov_chains(a, b, t, n, seed=0)
    c = autocorrelation(x, 20)
    assert c.shape == (21, n) and c.dtype == torch.float64
    assert torch.allclose(c[0], torch.ones(n, dtype=torch.float64))
    exact = lam ** np.arange(21)
    bound = math.sqrt((1 + lam ** 2) / (1 - lam ** 2) / t)  # Bartlett sd of one column's r(t), any t: 0.0068
    err = c.numpy() - exact[:, None]
    assert np.abs(err).max() < 6 * bound  # 21 x 16 values, correlated: 6 sd
    assert np.abs(err.mean(1)).max() < 6 * bound / math.sqrt(n)  # the columns are independent


def test_autocorrelation_time_two_state_markov_chain():
    a, b, t, n = 0.05, 0.15, 100_000, 16
    lam = 1 - a - b
    tau = autocorrelation_time(markov_chains(a, b, t, n, seed=1), max_lag=30).numpy()
    closed = -1 / math.log(lam)  # 4.48 bins
    interp = crossing(lam ** np.arange(31.0))  # the same on the integer-lag curve: 4.51, within 1/(8 tau) of it
    assert 0 < interp - closed < 1 / (8 * closed) + 1e-3
    # Bartlett at t*: var r <= (1+lam^2)/(1-lam^2)/T -> sd(tau) <= 0.0068 * tau * e = 0.083 per column
    sd = math.sqrt((1 + lam ** 2) / (1 - lam ** 2) / t) * closed * math.e
    assert np.abs(tau - interp).max() < 5 * sd
    assert abs(tau.mean() - interp) < 5 * sd / math.sqrt(n)
    assert abs(tau.mean() - closed) < 5 * sd / math.sqrt(n) + 1 / (8 * closed)


def test_autocorrelation_time_level_and_window():
    x = ar1(0.9, 50_000, 4, seed=2)
    lam = 0.9
    half = autocorrelation_time(x, max_lag=40, level=0.5).numpy()  # ln(0.5) / ln(lam) = 6.58
    assert np.abs(half - crossing(lam ** np.arange(41.0), 0.5)).max() < 0.6
    short = autocorrelation_time(x, max_lag=5)  # tau = 9.5 bins: never below 1/e within 5 lags -> NaN
    assert torch.isnan(short).all()


def test_constant_columns_are_nan():
    x = np.column_stack([markov_chains(0.1, 0.1, 5000, 1, seed=3)[:, 0], np.ones(5000), np.full(5000, 0.1)])
    c = autocorrelation(x, 10)
    assert not torch.isnan(c[:, 0]).any() and torch.isnan(c[:, 1:]).all()
    tau = autocorrelation_time(x, max_lag=10)
    assert math.isfinite(float(tau[0])) and torch.isnan(tau[1:]).all()


def test_autocorrelation_matches_direct_sum():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((257, 5)).cumsum(0)
    c = autocorrelation(torch.tensor(x), 40).numpy()
    d = x - x.mean(0)
    direct = np.stack([(d[: len(d) - k] * d[k:]).mean(0) for k in range(41)]) / (d * d).mean(0)
    np.testing.assert_allclose(c, direct, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------ greedy pairing
def _naive_greedy(c: torch.Tensor) -> list[tuple[int, int]]:
    n = c.shape[0]
    c = torch.nan_to_num(c, nan=-2.0)
    edges = sorted((-float(c[i, j]), i, j) for i in range(n) for j in range(i + 1, n))
    used, out = set(), []
    for _, i, j in edges:
        if i not in used and j not in used:
            used |= {i, j}
            out.append((i, j))
    return sorted(out)


@pytest.mark.parametrize("n", [2, 3, 8, 41, 300])
def test_greedy_pairs_match_the_sequential_definition(n):
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    for c in ((a + a.T) / 2, torch.round(a + a.T)):  # distinct values; many ties
        c = c.clone()
        if n > 5:
            c[[1, 4]] = float("nan")
            c[:, [1, 4]] = float("nan")  # constant units: paired last
        got = [tuple(p) for p in _greedy_pairs(c).tolist()]
        assert got == _naive_greedy(c)
        assert len(got) == n // 2
    tied = torch.zeros(400, 400, dtype=torch.float64)  # all tied: the sequential fallback, pairs in index order
    assert _greedy_pairs(tied).tolist() == [[i, i + 1] for i in range(0, 400, 2)]


# --------------------------------------------------------------------------------------- dynamic scaling
def test_sums_of_independent_copies_have_the_same_autocorrelation_time():
    # a sum of K independent copies of a process has its normalized autocorrelation, lam^t: tau_c(K) = 4.51, z = 0.
    # Fixed sums (no selection). Per sum, as per chain (Bartlett): sd(tau) <= 0.0151 * 4.48 * e = 0.18 at T = 20 000;
    # the mean curve of level K averages 64 / K independent sums: sd(tau_c(K)) <= 0.18 / sqrt(64 / K) (0.13 at K = 32).
    a, b, t = 0.05, 0.15, 20_000
    lam = 1 - a - b
    x = markov_chains(a, b, t, 64, seed=5)
    ks = [1, 2, 4, 8, 16, 32]
    levels = [x.reshape(t, 64 // k, k).sum(2) for k in ks]
    r = level_autocorrelation_times(levels, ks, max_lag=30)
    interp = crossing(lam ** np.arange(31.0))
    sd = math.sqrt((1 + lam ** 2) / (1 - lam ** 2) / t) * (-1 / math.log(lam)) * math.e
    assert np.all(np.abs(np.array(r["tau_c"]) - interp) < 4 * sd / np.sqrt(64 / np.array(ks)))
    assert abs(r["z"]) < 0.03  # seeds 100-109: |z| <= 0.012


def test_greedy_pairing_of_independent_units_gives_z_near_zero():
    # The pairing takes the pairs with the largest chance correlation (sd sqrt((1 + lam^2) / (1 - lam^2) / T) = 0.015
    # here), whose chance cross-correlations at small lags are positive too and add to the cluster's autocorrelation:
    # tau_c(K) is biased up by a few % per step at T = 20 000 (O(1 / sqrt(T)); 13 seeds: z = 0.005 - 0.022).
    a, b, t = 0.05, 0.15, 20_000
    r = dynamic_scaling(markov_chains(a, b, t, 64, seed=5), max_lag=30)
    assert r["K"] == [1, 2, 4, 8, 16, 32] and r["n_clusters"] == [64, 32, 16, 8, 4, 2]
    assert json.loads(json.dumps(r, allow_nan=False))["K"] == r["K"]
    interp = crossing((1 - a - b) ** np.arange(31.0))
    assert abs(r["tau_c"][0] - interp) < 0.1  # K = 1: no selection, sd <= 0.18 / sqrt(64) = 0.023
    assert np.all(np.array(r["tau_c"]) / interp - 1 < 0.12) and np.all(np.array(r["tau_c"]) / interp - 1 > -0.05)
    assert np.abs(np.array(r["tau_c_median"]) / interp - 1).max() < 0.15
    assert abs(r["z"]) < 0.03 and 0 < r["z_stderr"] < 0.03
    assert sorted(u for c in r["clusters"][-1] for u in c) == list(range(64))


def test_near_identical_units_are_paired_together():
    # 16 chains with distinct time scales, each twice (1% of the bins of the copy flipped), columns shuffled
    rng = np.random.default_rng(6)
    base = np.column_stack([markov_chains(p, p, 20_000, 1, seed=10 + i)[:, 0] for i, p in
                            enumerate(np.linspace(0.02, 0.3, 16))])
    copy = base ^ (rng.random(base.shape) < 0.01)
    perm = rng.permutation(32)
    x = np.concatenate([base, copy], 1)[:, perm]
    source = np.concatenate([np.arange(16), np.arange(16)])[perm]  # the chain each column comes from
    r = dynamic_scaling(x, max_lag=40, n_steps=1)
    assert r["K"] == [1, 2] and len(r["clusters"][1]) == 16
    for i, j in r["clusters"][1]:
        assert source[i] == source[j]


def hierarchy(t: int, seed: int, taus=(1.5, 2.5, 4.0, 7.0, 12.0), amps=(1.0, 1.0, 1.0, 1.0, 1.0)):
    """32 units; unit i = sum_l a_l s_{l, i >> l}: an AR(1) latent with time tau_l shared by the block of 2^l units
    that holds i (l = 0: private). Returns the activity and the exact C_K(t) of the clusters of K = 2^k units that are
    those blocks: the sum of a block of K = 2^k units has variance K 2^l a_l^2 from each level l < k (K / 2^l
    independent latents, each weighted 2^l) and K^2 a_l^2 from each level l >= k (one shared latent)."""
    lams = np.exp(-1 / np.asarray(taus))
    x = np.zeros((t, 32))
    for lvl, (lam, amp) in enumerate(zip(lams, amps)):
        s = ar1(lam, t, 32 >> lvl, seed=seed * 10 + lvl)
        x += amp * np.repeat(s, 1 << lvl, axis=1)

    def exact(k: int, lags: np.ndarray) -> np.ndarray:
        big = 1 << k
        v = np.array([big * (1 << lvl) * a ** 2 if lvl < k else big ** 2 * a ** 2 for lvl, a in enumerate(amps)])
        return (v[:, None] * lams[:, None] ** lags[None]).sum(0) / v.sum()

    return x, exact


def test_hierarchical_latents_give_the_exact_z():
    x, exact = hierarchy(40_000, seed=7)
    perm = np.random.default_rng(7).permutation(32)
    r = dynamic_scaling(x[:, perm], max_lag=60)
    assert r["K"] == [1, 2, 4, 8, 16]
    for k, clusters in enumerate(r["clusters"]):  # every cluster is one block of the hierarchy
        for members in clusters:
            blocks = {int(perm[m]) >> k for m in members}
            assert len(blocks) == 1 and len(members) == 1 << k
    lags = np.arange(61.0)
    ref = [crossing(exact(k, lags)) for k in range(5)]  # 4.26 .. 7.99 bins
    for k in range(5):  # sampling error of the mean curve: sd ~ sqrt(2 tau / (T n_clusters)) <= 0.025 at K = 16
        assert np.abs(np.array(r["autocorrelation"][k]) - exact(k, lags)).max() < 0.1
    tau = np.array(r["tau_c"])
    assert np.all(np.abs(tau / ref - 1) < 0.12), (tau, ref)
    z_ref = np.polyfit(np.log(r["K"]), np.log(ref), 1)[0]
    assert z_ref > 0.2  # 0.233
    assert abs(r["z"] - z_ref) < 0.05 and r["z_stderr"] < 0.1


def test_level_autocorrelation_times_recover_a_prescribed_power_law():
    z, tau0, t = 0.3, 3.0, 20_000
    ks = [1, 2, 4, 8, 16]
    levels = [ar1(math.exp(-1 / (tau0 * k ** z)), t, 32 // k, seed=20 + i) for i, k in enumerate(ks)]
    r = level_autocorrelation_times(levels, ks, max_lag=60)
    assert r["K"] == ks and r["n_clusters"] == [32, 16, 8, 4, 2] and "clusters" not in r
    closed = [tau0 * k ** z for k in ks]  # 3 .. 6.9 bins; interpolation bias <= 1 / (8 tau) = 0.04
    assert np.all(np.abs(np.array(r["tau_c"]) / closed - 1) < 0.08)
    assert abs(r["z"] - z) < 0.04
    # non-integer block sizes (mean neurons per unit of unequal blocks) are accepted as they are
    r2 = level_autocorrelation_times(levels[:2], [1, 2.5], max_lag=60)
    assert r2["K"] == [1, 2.5]


def test_kinetic_ising_runs_and_is_json_ready():
    from dgrn.sim import kinetic_ising

    data = kinetic_ising(32, 3000, n_communities=4, seed=0)
    r = dynamic_scaling(data, max_lag=20)
    json.dumps(r, allow_nan=False)
    assert r["K"] == [1, 2, 4, 8, 16] and all(len(c) == 21 for c in r["autocorrelation"])
    assert r["z"] is not None and math.isfinite(r["z"])


def test_undefined_values_are_none():
    x = ar1(0.97, 5000, 8, seed=8)  # tau = 33 bins: never below 1/e within 5 lags
    r = dynamic_scaling(x, max_lag=5)
    assert all(v is None for v in r["tau_c"] + r["tau_c_median"]) and r["z"] is None and r["z_stderr"] is None
    json.dumps(r, allow_nan=False)


# -------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("call, match", [
    (lambda: autocorrelation(np.zeros(100), 5), "shape"),
    (lambda: autocorrelation(np.random.rand(10, 2), 9), "bins"),
    (lambda: autocorrelation(np.random.rand(10, 2), 0), ">= 1"),
    (lambda: autocorrelation(np.random.rand(10, 2), 2.5), "integer"),
    (lambda: autocorrelation(np.full((10, 2), np.nan), 2), "NaN"),
    (lambda: autocorrelation_time(np.random.rand(100, 2), level=1.0), "level"),
    (lambda: autocorrelation_time(np.random.rand(2, 2)), "at least 3 bins"),
    (lambda: dynamic_scaling(np.random.rand(100, 1)), "at least 2 units"),
    (lambda: dynamic_scaling(np.random.rand(100, 4), max_lag=200), "bins"),
    (lambda: dynamic_scaling(np.random.rand(100, 4), n_steps=3), "n_steps"),
    (lambda: dynamic_scaling(np.random.rand(100, 4), n_steps=-1), "n_steps"),
    (lambda: dynamic_scaling(np.ones((100, 4)), max_lag=5), "constant"),
    (lambda: level_autocorrelation_times([np.random.rand(100, 4)], [1, 2]), "block_sizes"),
    (lambda: level_autocorrelation_times([np.random.rand(100, 4), np.random.rand(90, 2)], [1, 2]), "bins"),
    (lambda: level_autocorrelation_times([np.random.rand(100, 4)], [0]), "positive"),
    (lambda: level_autocorrelation_times([], []), "no levels"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------------------------------- figure
def test_plot_dynamic_scaling_writes_png(tmp_path):
    from dgrn.plots import plot_dynamic_scaling

    r = dynamic_scaling(markov_chains(0.1, 0.2, 4000, 16, seed=9), max_lag=20)
    for name, kwargs in (("a.png", {}), ("b.png", {"rescaled": True, "title": "chains"})):
        path = plot_dynamic_scaling(r, tmp_path / name, **kwargs)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r["tau_c"][0] = None  # an undefined tau_c is left out of both panels
    assert plot_dynamic_scaling(r, tmp_path / "c.png").exists()
