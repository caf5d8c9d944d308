"""The same LIF network in Brian 2, as an independent reference for :func:`dgrn.sim.simulate_lif`.

Brian 2.9 (the newest for Python 3.11) needs numpy < 2, so it lives in its own virtual environment
(``.venv-brian2``, gitignored), made on first use by :func:`brian2_python`. From the dgrn environment:

    from bench.brian2_lif import export_network, run_brian2
    export_network(path, weights, tau_m=..., mu=..., v0=..., duration_s=...)
    times, units, info = run_brian2(path, target="numpy")

This file is also the script that runs inside that environment (``python bench/brian2_lif.py NET.npz OUT.npz``):
it imports only numpy and brian2 there.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-brian2"
#: Brian 2 2.9 is the newest release for Python 3.11; it fails to import with numpy >= 2 (``ndarray.ptp``).
REQUIREMENTS = ["brian2>=2.5,<2.10", "numpy<2"]


def brian2_python(create: bool = True) -> Path:
    """The Python of the Brian 2 environment, made (``python -m venv`` + ``pip install``) when missing."""
    python = VENV / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import brian2"], capture_output=True).returncode == 0:
        return python
    if not create:
        raise FileNotFoundError(f"no Brian 2 environment at {VENV}")
    base = "python3.11" if subprocess.run(["which", "python3.11"], capture_output=True).returncode == 0 else sys.executable
    subprocess.run([base, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
    return python


def export_network(path, weights, *, tau_m, mu, v0, duration_s, sim_dt=1e-4, tau_rise=1e-3, tau_decay_exc=3e-3,
                   tau_decay_inh=2e-3, v_threshold=1.0, v_reset=0.0, refractory_s=5e-3) -> Path:
    """Write a network (torch sparse/dense ``W[post, pre]``, per-neuron ``tau_m``, ``mu``, ``v0``) for Brian 2."""
    w = weights.detach().cpu().to_sparse_coo().coalesce()
    post, pre = w.indices().numpy()
    params = dict(duration_s=duration_s, sim_dt=sim_dt, tau_rise=tau_rise, tau_decay_exc=tau_decay_exc,
                  tau_decay_inh=tau_decay_inh, v_threshold=v_threshold, v_reset=v_reset, refractory_s=refractory_s)
    np.savez(path, post=post, pre=pre, weight=w.values().double().numpy(), tau_m=np.asarray(tau_m, dtype=np.float64),
             mu=np.asarray(mu, dtype=np.float64), v0=np.asarray(v0, dtype=np.float64),
             params=np.array(json.dumps(params)))
    return Path(path)


def run_brian2(network: str | Path, target: str = "numpy", method: str = "exact",
               timeout: float = 3600) -> tuple[np.ndarray, np.ndarray, dict]:
    """Run an exported network in Brian 2 (``target``: ``numpy`` or ``cython``; ``method``: ``exact`` (the same
    exact integration as dgrn) or ``euler``); returns spike times (s), units and
    ``{"build_s", "run_s", "wall_s", "brian2", "target", "method"}`` (times measured inside the Brian process)."""
    python = brian2_python()
    out = Path(network).with_suffix(f".brian2-{target}-{method}.npz")
    proc = subprocess.run([str(python), __file__, str(network), str(out), "--target", target, "--method", method],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"Brian 2 run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    with np.load(out) as f:
        return f["times"], f["units"], json.loads(str(f["info"]))


def _simulate(network: Path, out: Path, target: str, method: str) -> None:  # runs inside .venv-brian2
    import brian2 as b2

    b2.prefs.codegen.target = target
    start = time.perf_counter()
    with np.load(network) as f:
        net = {k: f[k] for k in f.files}
    p = json.loads(str(net["params"]))
    b2.defaultclock.dt = p["sim_dt"] * b2.second
    n = len(net["mu"])
    eqs = b2.Equations(
        """
        dV/dt = (mu - V) / tau + xe / (tde - tr) + xinh / (tdi - tr) : 1 (unless refractory)
        dxe/dt = -xe / tr + (tde - tr) / (tr * tde) * ye : 1
        dye/dt = -ye / tde : 1
        dxinh/dt = -xinh / tr + (tdi - tr) / (tr * tdi) * yi : 1
        dyi/dt = -yi / tdi : 1
        mu : 1 (constant)
        tau : second (constant)
        """,  # ("xi" is Brian's white noise, hence "xinh")
        tr=p["tau_rise"] * b2.second, tde=p["tau_decay_exc"] * b2.second, tdi=p["tau_decay_inh"] * b2.second,
    )
    group = b2.NeuronGroup(n, eqs, threshold=f"V >= {p['v_threshold']}", reset=f"V = {p['v_reset']}",
                           refractory=p["refractory_s"] * b2.second, method=method)
    group.mu = net["mu"]
    group.tau = net["tau_m"] * b2.second
    group.V = net["v0"]
    synapses = []
    for name, mask in (("ye", net["weight"] > 0), ("yi", net["weight"] < 0)):
        syn = b2.Synapses(group, group, "w : 1", on_pre=f"{name}_post += w")
        syn.connect(i=net["pre"][mask], j=net["post"][mask])
        syn.w = net["weight"][mask]
        synapses.append(syn)
    monitor = b2.SpikeMonitor(group)
    network_obj = b2.Network(group, *synapses, monitor)
    built = time.perf_counter()
    network_obj.run(p["duration_s"] * b2.second)
    done = time.perf_counter()
    info = {"build_s": built - start, "run_s": done - built, "wall_s": done - start, "brian2": b2.__version__,
            "target": target, "method": method}
    np.savez(out, times=np.asarray(monitor.t / b2.second), units=np.asarray(monitor.i), info=np.array(json.dumps(info)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network")
    parser.add_argument("out")
    parser.add_argument("--target", default="numpy", choices=["numpy", "cython"])
    parser.add_argument("--method", default="exact", choices=["exact", "euler"])
    args = parser.parse_args()
    _simulate(Path(args.network), Path(args.out), args.target, args.method)
