"""Equilibrium Ising references against closed forms (1D chain), Kaufman's finite torus and Onsager's lattice."""
import math

import numpy as np
import pytest
import torch

from dgrn.sim import ising
from dgrn.sim.ising import (CRITICAL_BETA, chain_couplings, correlation_by_distance, heat_bath_chain,
                            integrated_autocorrelation_time, ising_enumerate, ising_sample_exact, ising_transfer, ising_transfer_sample, kaufman_log_z,
                            onsager_log_z_per_site, square_lattice_couplings, wolff_sample)


def spins(x):
    return x.double() * 2 - 1


@pytest.mark.parametrize("beta", [0.3, 1.2])
def test_open_chain_matches_closed_form(beta):
    n = 14
    out = ising_enumerate(chain_couplings(n), beta)
    log_z = math.log(2) + (n - 1) * math.log(2 * math.cosh(beta))
    assert out["log_z"] == pytest.approx(log_z, abs=1e-10)
    assert out["energy"] == pytest.approx(-(n - 1) * math.tanh(beta), abs=1e-10)
    assert out["entropy"] == pytest.approx(log_z - beta * (n - 1) * math.tanh(beta), abs=1e-10)
    r = torch.arange(n)
    expected = math.tanh(beta) ** (r[:, None] - r[None, :]).abs().double()
    torch.testing.assert_close(out["correlation"], expected, atol=1e-12, rtol=0)
    assert out["magnetization"].abs().max() < 1e-12


def test_periodic_chain_closed_form_and_transfer_matrix_with_field():
    n, beta = 11, 0.7
    k = beta
    z = (2 * math.cosh(k)) ** n + (2 * math.sinh(k)) ** n
    assert ising_enumerate(chain_couplings(n, periodic=True), beta)["log_z"] == pytest.approx(math.log(z), abs=1e-10)
    assert ising_transfer(1, n, beta)["log_z"] == pytest.approx(math.log(z), abs=1e-10)
    # with a field: the width-1 transfer matrix against enumeration (two independent paths)
    ref = ising_enumerate(chain_couplings(n, periodic=True), beta, field=0.4)
    tm = ising_transfer(1, n, beta, field=0.4)
    for key in ("log_z", "entropy", "energy"):
        assert tm[key] == pytest.approx(ref[key], abs=1e-9)
    torch.testing.assert_close(tm["correlation"], ref["correlation"], atol=1e-10, rtol=0)
    assert float(tm["magnetization"][0]) == pytest.approx(float(ref["magnetization"][0]), abs=1e-10)


@pytest.mark.parametrize("beta", [0.25, CRITICAL_BETA, 0.6])
def test_torus_transfer_matrix_enumeration_and_kaufman_agree(beta):
    ref = ising_enumerate(square_lattice_couplings(4, 4), beta)
    tm = ising_transfer(4, 4, beta)
    assert tm["log_z"] == pytest.approx(ref["log_z"], abs=1e-9)
    assert kaufman_log_z(4, 4, beta) == pytest.approx(ref["log_z"], abs=1e-9)
    for key in ("entropy", "energy"):
        assert tm[key] == pytest.approx(ref[key], abs=1e-8)
    torch.testing.assert_close(tm["correlation"], ref["correlation"], atol=1e-10, rtol=0)


@pytest.mark.parametrize("width,length", [(5, 7), (8, 3), (9, 5)])
def test_kaufman_on_rectangular_tori(width, length):
    for beta in (0.3, CRITICAL_BETA, 0.55):
        # Kaufman's m is the number of rows (length), n the row width
        assert ising_transfer(width, length, beta, correlations=False)["log_z"] == pytest.approx(
            kaufman_log_z(length, width, beta), rel=1e-12)


def test_kaufman_converges_to_onsager():
    for beta in (0.3, CRITICAL_BETA, 0.6):
        assert kaufman_log_z(256, 256, beta) / 256 ** 2 == pytest.approx(onsager_log_z_per_site(beta), abs=2e-5)
    # Onsager at T_c: ln Z / N = ln(2)/2 + 2G/pi, G Catalan's constant
    catalan = 0.915965594177219
    assert onsager_log_z_per_site(CRITICAL_BETA) == pytest.approx(0.5 * math.log(2) + 2 * catalan / math.pi, abs=1e-10)


def test_entropy_from_transfer_matrix_matches_kaufman_derivative():
    # S = ln Z - beta dlnZ/dbeta, with the derivative of Kaufman's closed form by central differences
    width, length, beta, h = 6, 6, CRITICAL_BETA, 1e-5
    dlogz = (kaufman_log_z(length, width, beta + h) - kaufman_log_z(length, width, beta - h)) / (2 * h)
    tm = ising_transfer(width, length, beta)
    assert tm["energy"] == pytest.approx(-dlogz, rel=1e-7)
    assert tm["entropy"] == pytest.approx(kaufman_log_z(length, width, beta) - beta * dlogz, rel=1e-7)


def test_enumeration_sampler_matches_exact_moments():
    w = chain_couplings(10, alpha=1.5)
    h = torch.linspace(-0.3, 0.2, 10)
    exact = ising_enumerate(w, 0.4, field=h)
    s = spins(ising_sample_exact(w, 0.4, 100_000, field=h, seed=3))
    se = 1 / math.sqrt(100_000)  # standard error bound of a ±1 average
    assert (s.mean(0) - exact["magnetization"]).abs().max() < 5 * se
    assert (s.T @ s / len(s) - exact["correlation"]).abs().max() < 5 * se
    again = ising_sample_exact(w, 0.4, 10, field=h, seed=3)
    assert torch.equal(again, ising_sample_exact(w, 0.4, 10, field=h, seed=3))


def test_transfer_sampler_matches_exact_correlations():
    exact = ising_transfer(4, 6, CRITICAL_BETA)
    x = ising_transfer_sample(4, 6, CRITICAL_BETA, 60_000, seed=1)
    assert x.shape == (60_000, 24) and x.dtype == torch.uint8
    s = spins(x)
    assert (s.T @ s / len(s) - exact["correlation"]).abs().max() < 5 / math.sqrt(60_000)
    energy = -0.5 * ((s @ square_lattice_couplings(4, 6)) * s).sum(1)
    assert float(energy.mean()) == pytest.approx(exact["energy"], abs=5 * float(energy.std()) / math.sqrt(60_000))


def test_wolff_matches_exact_and_thins_to_independent_samples():
    w = square_lattice_couplings(6, 6)
    exact = ising_transfer(6, 6, CRITICAL_BETA)
    x, info = wolff_sample(w, CRITICAL_BETA, 3000, burn_in=200, pilot=500, seed=0)
    s = spins(x)
    energy = -0.5 * ((s @ w) * s).sum(1)
    m2 = s.mean(1) ** 2
    exact_m2 = float(exact["correlation"].mean())
    # thinned at 2 tau: the kept samples are nearly independent, so plain standard errors apply
    assert info["tau_energy"] < 1.0 and info["tau_abs_m"] < 1.0
    assert info["thin"] >= 1 and info["mean_cluster_size"] > 1
    assert float(energy.mean()) == pytest.approx(exact["energy"], abs=4 * float(energy.std()) / math.sqrt(3000))
    assert float(m2.mean()) == pytest.approx(exact_m2, abs=4 * float(m2.std()) / math.sqrt(3000))


def test_wolff_on_long_range_chain():
    w = chain_couplings(12, alpha=1.5)
    exact = ising_enumerate(w, 0.3)
    x, _ = wolff_sample(w, 0.3, 3000, burn_in=200, pilot=500, seed=1)
    s = spins(x)
    energy = -0.5 * ((s @ w) * s).sum(1)
    assert float(energy.mean()) == pytest.approx(exact["energy"], abs=4 * float(energy.std()) / math.sqrt(3000))


def test_integrated_autocorrelation_time_of_ar1():
    rng = np.random.default_rng(0)
    phi, n = 0.8, 200_000
    x = np.empty(n)
    x[0] = 0
    noise = rng.standard_normal(n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + noise[t]
    tau, window = integrated_autocorrelation_time(x)
    assert tau == pytest.approx((1 + phi) / (2 * (1 - phi)), rel=0.1)
    assert window >= 5 * tau * 0.99
    assert integrated_autocorrelation_time(rng.standard_normal(50_000))[0] == pytest.approx(0.5, abs=0.05)


def test_correlation_by_distance():
    n = 9
    r = torch.arange(n)
    dist = (r[:, None] - r[None, :]).abs()
    rs, c = correlation_by_distance(0.5 ** dist.double(), dist)
    torch.testing.assert_close(c, 0.5 ** rs.double())
    _, cc = correlation_by_distance(torch.ones(n, n), dist, connected_mean=torch.ones(n))
    assert cc.abs().max() == 0


def test_lattice_couplings_have_four_neighbours_on_a_torus():
    w = square_lattice_couplings(5, 4)
    assert torch.equal(w, w.T) and (w.sum(1) == 4).all()
    open_w = square_lattice_couplings(3, 3, periodic=False)
    assert open_w.sum() / 2 == 12


def test_bad_input():
    with pytest.raises(ValueError, match="symmetric"):
        ising_enumerate(torch.triu(torch.ones(4, 4), 1), 0.5)
    with pytest.raises(ValueError, match="at most 24"):
        ising_enumerate(chain_couplings(25), 0.5)
    with pytest.raises(ValueError, match="width"):
        ising_transfer(13, 4, 0.4)
    with pytest.raises(ValueError, match="length >= 3"):
        ising_transfer(4, 2, 0.4)
    with pytest.raises(ValueError, match="beta"):
        ising_enumerate(chain_couplings(4), -1.0)
    with pytest.raises(ValueError, match="ferromagnetic"):
        wolff_sample(-chain_couplings(4), 0.5, 10)
    with pytest.raises(ValueError, match="NaN"):
        ising_enumerate(torch.full((3, 3), float("nan")), 0.5)
    with pytest.raises(ValueError, match="n_samples"):
        ising_sample_exact(chain_couplings(4), 0.5, 0)
    with pytest.raises(ValueError, match="alpha"):
        chain_couplings(5, alpha=0)
    assert set(ising.__all__) <= set(dir(ising))


def _single_site_kernel(states: torch.Tensor, w: torch.Tensor, h: torch.Tensor, beta: float, i: int) -> torch.Tensor:
    """``K[a, b]``: probability that a heat-bath draw of site ``i`` takes state ``a`` to state ``b`` (``states``
    ``(S, N)`` ±1, all of them)."""
    p_up = 0.5 * (1 + torch.tanh(beta * (states @ w[i] + h[i])))  # from state a, by its local field
    others = [k for k in range(states.shape[1]) if k != i]
    same_elsewhere = (states[:, None, others] == states[None, :, others]).all(-1).double()
    to_up = (states[None, :, i] == 1).double()
    return same_elsewhere * (to_up * p_up[:, None] + (1 - to_up) * (1 - p_up[:, None]))


@pytest.mark.parametrize("w, h, order", [
    # frustrated, all pairs coupled, with a field: one site at a time, in index order
    (torch.tensor([[0.0, 0.8, -0.6], [0.8, 0.0, 0.5], [-0.6, 0.5, 0.0]]), torch.tensor([0.3, -0.2, 0.1]), [0, 1, 2]),
    # a ring of 4: the uncoupled sites 0 and 2 are drawn together, then 1 and 3
    (chain_couplings(4, periodic=True), torch.zeros(4), [0, 2, 1, 3]),
])
def test_heat_bath_sweep_matches_exact_transition_matrix(w, h, order):
    """The empirical sweep-to-sweep transitions of the chain against the product of exact single-site heat-bath
    kernels, and its state frequencies against the Boltzmann law (stationary under that product)."""
    beta, n = 0.9, w.shape[0]
    states = ((torch.arange(2**n)[:, None] >> torch.arange(n)) & 1).double() * 2 - 1
    sweep = torch.eye(2**n, dtype=torch.float64)
    for i in order:
        sweep = sweep @ _single_site_kernel(states, w.double(), h.double(), beta, i)
    boltzmann = torch.softmax(beta * (0.5 * ((states @ w.double()) * states).sum(1) + states @ h.double()), 0)
    torch.testing.assert_close(boltzmann @ sweep, boltzmann)  # the reference itself: detailed balance per site
    x = heat_bath_chain(w, beta, torch.zeros(n), 40_000, field=h, seed=0)
    index = (x.long() << torch.arange(n)).sum(1)
    counts = torch.zeros(2**n, 2**n, dtype=torch.float64).index_put_((index[:-1], index[1:]),
                                                                     torch.ones(index.numel() - 1, dtype=torch.float64),
                                                                     accumulate=True)
    visits = counts.sum(1, keepdim=True)
    seen = visits[:, 0] > 400
    stderr = (sweep[seen] * (1 - sweep[seen]) / visits[seen]).sqrt()
    assert ((counts[seen] / visits[seen] - sweep[seen]).abs() <= 5 * stderr + 1e-3).all()
    assert (torch.bincount(index, minlength=2**n).double() / index.numel() - boltzmann).abs().max() < 0.015


def test_ising_data_sources_are_equilibrium_time_series():
    """``ising1d`` / ``ising2d`` serve a heat-bath chain: stationary at the exact equilibrium (nearest-neighbour
    correlation of the 4 x 4 torus against the transfer matrix) and correlated in time, as next-bin models assume
    (independent samples would have a lag-1 autocorrelation of 0)."""
    from dgrn.datasets import build_dataset

    chain = build_dataset("ising1d", n=8, t=50, beta=0.7, seed=1)
    assert chain.spikes.shape == (50, 8) and chain.spikes.max() <= 1
    assert chain.meta["sampler"] == "exact enumeration" and "heat bath" in chain.meta["dynamics"]
    assert chain.meta["entropy"] == pytest.approx(ising_enumerate(chain_couplings(8), 0.7)["entropy"])
    torch.testing.assert_close(chain.true_couplings, chain_couplings(8).float())
    beta = 0.35
    lattice = build_dataset("ising2d", side=4, t=6000, beta=beta, sample_seed=3)
    assert lattice.spikes.shape == (6000, 16) and lattice.meta["sampler"] == "exact transfer matrix"
    assert not torch.equal(lattice.spikes, build_dataset("ising2d", side=4, t=6000, beta=beta, sample_seed=4).spikes)
    s = spins(lattice.spikes)
    w = square_lattice_couplings(4)
    nn_corr = float(((s @ w) * s).sum(1).mean() / w.sum())
    exact = ising_transfer(4, 4, beta)["correlation"]
    assert nn_corr == pytest.approx(float((exact * w).sum() / w.sum()), abs=0.03)
    m = s.mean(1)
    lag1 = float(((m[1:] - m.mean()) * (m[:-1] - m.mean())).mean() / m.var())
    assert lag1 > 0.3


def test_ising_data_configs_compose(tmp_path):
    from conftest import compose

    for name, key in (("ising1d", "n"), ("ising2d", "side")):
        cfg = compose("train", [f"data={name}"], tmp_path / name)
        assert cfg.data.dataset.name == name and key in cfg.data.dataset
