"""Benchmark: the Litwin-Kumar & Doiron (2012) preset, 5000 neurons, 10 s of simulated time, dgrn vs Brian 2.

Both simulate the same network (same weights, drives and initial voltages, exported to Brian 2), in the same run,
on this machine. Brian 2 runs in its own environment (.venv-brian2, see bench/brian2_lif.py) with the numpy runtime
target by default (``--brian-targets numpy,cython`` adds its Cython target) and the forward-Euler integrator of the
public re-implementations (``--brian-method exact`` uses the exact integrator dgrn uses; it is about 5x slower).
Prints wall times, their ratio, and what the paper shows for the network: mean E rate, ISI CV, the durations of
cluster-active states and the correlation of cluster activity. Writes bench/results/simulate.json.

    python bench/simulate.py                  # about 1-3 minutes on 2 CPU cores
    python bench/simulate.py --device cuda    # dgrn on a GPU (Brian 2 stays on the CPU)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.brian2_lif import export_network, run_brian2  # noqa: E402
from dgrn.data import SpikeData, atomic_write  # noqa: E402
from dgrn.sim.lif import LIF_PRESETS, SpikeTimes, clustered_activity_summary, clustered_lif_network, simulate_lif  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "simulate.json"


def _summary(times: np.ndarray, units: np.ndarray, labels: torch.Tensor, n_exc: int, duration: float,
             warmup: float) -> dict:
    """clustered_activity_summary after discarding the first ``warmup`` seconds."""
    times, units = torch.as_tensor(times, dtype=torch.float64), torch.as_tensor(units, dtype=torch.long)
    keep = times >= warmup
    times, units = times[keep] - warmup, units[keep]
    dt = 0.005
    n_bins = int(round((duration - warmup) / dt))
    data = SpikeData(SpikeData.count_events((times / dt).long().clamp(max=n_bins - 1), units, n_bins, len(labels)),
                     dt, true_communities=labels, meta={"n_exc": n_exc})
    s = clustered_activity_summary(data, SpikeTimes(times, units))
    durations = np.asarray(s.pop("active_durations_s"))
    s["active_durations_histogram"] = {f"{a:.2f}-{b:.2f}s": int(((durations >= a) & (durations < b)).sum())
                                       for a, b in zip([0.05, 0.1, 0.2, 0.5, 1.0], [0.1, 0.2, 0.5, 1.0, np.inf])}
    s["n_active_states"] = int(len(durations))
    return s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="simulated seconds (default 10)")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds discarded before the statistics")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--brian-targets", default="numpy", help="comma-separated Brian 2 targets ('' to skip)")
    parser.add_argument("--brian-method", default="euler", choices=["euler", "exact"])
    args = parser.parse_args()

    p = LIF_PRESETS["lkd2012"]
    n_e, n_i = p["n_exc"], p["n_inh"]
    keys = ["p_ee", "p_ei", "p_ie", "p_ii", "r_ee", "cluster_weight", "j_ee", "j_ei", "j_ie", "j_ii"]
    t0 = time.perf_counter()
    w, labels = clustered_lif_network(n_e, n_i, p["n_clusters"], generator=torch.Generator().manual_seed(args.seed),
                                      **{k: p[k] for k in keys})
    t_network = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(args.seed + 1)
    mu = torch.cat([p["mu_exc"][0] + (p["mu_exc"][1] - p["mu_exc"][0]) * torch.rand(n_e, generator=gen, dtype=torch.float64),
                    p["mu_inh"][0] + (p["mu_inh"][1] - p["mu_inh"][0]) * torch.rand(n_i, generator=gen, dtype=torch.float64)])
    tau = torch.cat([torch.full((n_e,), p["tau_m_exc"]), torch.full((n_i,), p["tau_m_inh"])]).double()
    v0 = torch.rand(n_e + n_i, generator=gen, dtype=torch.float64)
    print(f"network: {n_e} E + {n_i} I, {w._nnz():,} synapses, built in {t_network:.1f} s; "
          f"torch threads {torch.get_num_threads()}; simulating {args.duration} s at dt = 0.1 ms", flush=True)

    t0 = time.perf_counter()
    steps, units = simulate_lif(w, tau_m=tau, mu=mu, v0=v0, duration_s=args.duration, device=args.device, progress=False)
    if args.device != "cpu":
        torch.cuda.synchronize()
    t_dgrn = time.perf_counter() - t0
    ours = _summary(steps.double().numpy() * 1e-4, units.numpy(), labels, n_e, args.duration, args.warmup)
    results = {"duration_s": args.duration, "n_synapses": int(w._nnz()), "device": args.device,
               "dgrn": {"wall_s": t_dgrn, "network_s": t_network, **ours}, "brian2": {}}
    print(f"dgrn ({args.device}): {t_dgrn:.1f} s wall (+{t_network:.1f} s building the network)", flush=True)

    targets = [t for t in args.brian_targets.split(",") if t]
    with tempfile.TemporaryDirectory() as tmp:
        path = export_network(Path(tmp) / "lkd2012.npz", w, tau_m=tau, mu=mu, v0=v0, duration_s=args.duration)
        for target in targets:
            times, b_units, info = run_brian2(path, target=target, method=args.brian_method)
            theirs = _summary(times, b_units, labels, n_e, args.duration, args.warmup)
            results["brian2"][target] = {**info, **theirs, "ratio_wall_brian_over_dgrn": info["wall_s"] / t_dgrn}
            print(f"brian2 {info['brian2']} ({target}, {args.brian_method}): {info['wall_s']:.1f} s wall "
                  f"({info['build_s']:.1f} s build + {info['run_s']:.1f} s run) -> dgrn is "
                  f"{info['wall_s'] / t_dgrn:.2f}x faster", flush=True)

    keys = ["rate_exc", "rate_inh", "cv_isi_exc_median", "active_clusters_mean", "n_active_states",
            "active_duration_median_s", "active_duration_p90_s", "cluster_corr_mean", "cluster_corr_negative_fraction",
            "cluster_vs_rest_corr_mean", "cluster_vs_rest_negative_fraction"]
    rows = [("dgrn", ours)] + [(f"brian2 {t}", results["brian2"][t]) for t in targets]
    print(f"\nafter {args.warmup} s warm-up:")
    print(f"{'':14s}" + "".join(f"{k:>16s}" for k in ("E Hz", "I Hz", "CV E", "active", "states", "dur med s",
                                                         "dur p90 s", "pair corr", "pair<0", "vs rest", "vs rest<0")))
    for name, s in rows:
        print(f"{name:14s}" + "".join(f"{s[k]:16.3f}" for k in keys))
    for name, s in rows:
        print(f"{name}: active-state durations {s['active_durations_histogram']}")
    atomic_write(RESULTS, json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
