"""Cross-check of the LIF simulator against Brian 2 (an established simulator) on the same networks.

Brian 2.9 needs numpy < 2, so it runs in its own virtual environment (.venv-brian2, made on first use by
bench/brian2_lif.py: `python -m venv` + `pip install "brian2>=2.5,<2.10" "numpy<2"`), fed the exported network.
"""
import subprocess

import numpy as np
import pytest
import torch

from bench.brian2_lif import brian2_python, export_network, run_brian2
from dgrn.sim.lif import LIF_PRESETS, clustered_lif_network, isi_cv, simulate_lif

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def brian2():
    try:
        return brian2_python()
    except (subprocess.CalledProcessError, OSError) as err:
        pytest.skip(f"cannot create the Brian 2 environment ({err})")


def _network(preset, seed=0):
    p = LIF_PRESETS[preset]
    keys = ["p_ee", "p_ei", "p_ie", "p_ii", "r_ee", "cluster_weight", "j_ee", "j_ei", "j_ie", "j_ii"]
    w, _ = clustered_lif_network(p["n_exc"], p["n_inh"], p["n_clusters"], generator=torch.Generator().manual_seed(seed),
                                 **{k: p[k] for k in keys})
    gen = torch.Generator().manual_seed(seed + 1)
    n_e, n_i = p["n_exc"], p["n_inh"]
    mu = torch.cat([1.1 + 0.1 * torch.rand(n_e, generator=gen, dtype=torch.float64),
                    1.0 + 0.05 * torch.rand(n_i, generator=gen, dtype=torch.float64)])
    tau = torch.cat([torch.full((n_e,), 15e-3), torch.full((n_i,), 10e-3)]).double()
    v0 = torch.rand(n_e + n_i, generator=gen, dtype=torch.float64)
    return w, mu, tau, v0, n_e


def _stats(times, units, n_e, n, duration, skip=0.2):
    times, units = torch.as_tensor(times, dtype=torch.float64), torch.as_tensor(units, dtype=torch.long)
    keep = times >= skip
    times, units = times[keep], units[keep]
    rate_e = float((units < n_e).sum()) / (n_e * (duration - skip))
    rate_i = float((units >= n_e).sum()) / ((n - n_e) * (duration - skip))
    cv = isi_cv(times, units, n, min_spikes=5)[:n_e]
    return rate_e, rate_i, float(cv[torch.isfinite(cv)].median())


@pytest.mark.parametrize("preset, duration", [("small", 1.0), ("lkd2012", 1.0)])
def test_rates_and_cv_agree_with_brian2(brian2, tmp_path, preset, duration):
    """Same network, same initial voltages, Brian 2's exact integrator (numpy target).

    The clustered network is chaotic, so float rounding makes the two trajectories part eventually; the statistics
    must still agree: rates within 5 % (the across-seed spread of a 1 s run is a few %), median ISI CV within 0.05.
    """
    w, mu, tau, v0, n_e = _network(preset)
    n = len(mu)
    path = export_network(tmp_path / "net.npz", w, tau_m=tau, mu=mu, v0=v0, duration_s=duration)
    steps, units = simulate_lif(w, tau_m=tau, mu=mu, v0=v0, duration_s=duration, progress=False)
    ours = _stats(steps.double() * 1e-4, units, n_e, n, duration)
    times, b_units, info = run_brian2(path, target="numpy", method="exact")
    theirs = _stats(times, b_units, n_e, n, duration)
    assert ours[0] > 0.5 and ours[1] > 0.5, ours  # both populations fire
    assert ours[0] == pytest.approx(theirs[0], rel=0.05) and ours[1] == pytest.approx(theirs[1], rel=0.05)
    assert abs(ours[2] - theirs[2]) < 0.05, (ours, theirs)
    # the first spikes (before chaos amplifies rounding) are the same spikes at the same steps
    first = np.argsort(times, kind="stable")[:200]
    ours_first = set(zip(steps[:200].tolist(), units[:200].tolist()))
    theirs_first = set(zip(np.rint(times[first] / 1e-4).astype(int).tolist(), b_units[first].tolist()))
    assert len(ours_first & theirs_first) >= 190
