"""Exact Ising references: timings, and checks against Kaufman's closed form measured in the same run.

    python bench/ising.py [--threads N]

Times the 24-spin enumeration (nearest-neighbour chain, checked against the closed form), the 12 x 12 torus by
transfer matrix (checked against Kaufman's ln Z), the exact transfer-matrix sampler on 8 x 8, and the Wolff sampler
on 16 x 16 at T_c (samples/s after thinning at 2 tau_int). Writes ``bench/results/ising.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dgrn.data import atomic_write  # noqa: E402
from dgrn.sim.ising import (CRITICAL_BETA, chain_couplings, ising_enumerate, ising_transfer,  # noqa: E402
                            ising_transfer_sample, kaufman_log_z, square_lattice_couplings, wolff_sample)


def clock(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--wolff-samples", type=int, default=2000)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = {"threads": torch.get_num_threads()}
    beta = 0.5
    out, res["enumerate_24_seconds"] = clock(lambda: ising_enumerate(chain_couplings(24), beta))
    closed = math.log(2) + 23 * math.log(2 * math.cosh(beta))
    res["enumerate_24_log_z_error"] = abs(out["log_z"] - closed)
    out, res["transfer_12x12_seconds"] = clock(lambda: ising_transfer(12, 12, CRITICAL_BETA))
    res["transfer_12x12_log_z_error_vs_kaufman"] = abs(out["log_z"] - kaufman_log_z(12, 12, CRITICAL_BETA))
    _, t = clock(lambda: ising_transfer_sample(8, 8, CRITICAL_BETA, 30_000, seed=0))
    res["transfer_sampler_8x8_samples_per_s"] = 30_000 / t
    (_, info), t = clock(lambda: wolff_sample(square_lattice_couplings(16), CRITICAL_BETA, args.wolff_samples, seed=0))
    res["wolff_16x16_samples_per_s"] = args.wolff_samples / t  # burn-in and pilot run included
    res["wolff_16x16_info"] = info
    print(f"threads: {res['threads']}")
    print(f"24-spin enumeration: {res['enumerate_24_seconds']:.1f} s (|ln Z - closed form| = {res['enumerate_24_log_z_error']:.1e})")
    print(f"12x12 torus transfer matrix: {res['transfer_12x12_seconds']:.1f} s "
          f"(|ln Z - Kaufman| = {res['transfer_12x12_log_z_error_vs_kaufman']:.1e})")
    print(f"exact 8x8 sampler (transfer matrix): {res['transfer_sampler_8x8_samples_per_s']:.0f} samples/s")
    print(f"Wolff 16x16 at T_c: {res['wolff_16x16_samples_per_s']:.0f} samples/s, thinning {info['thin']} flips "
          f"(pilot tau_int E {info['pilot_tau_energy']:.2f}, |M| {info['pilot_tau_abs_m']:.2f}; on the kept samples "
          f"{info['tau_energy']:.2f}, {info['tau_abs_m']:.2f}), mean cluster {info['mean_cluster_size']:.0f} spins")
    path = ROOT / "bench" / "results" / "ising.json"
    atomic_write(path, json.dumps(res, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
