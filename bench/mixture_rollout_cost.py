"""Rollout cost of DGRN's latent chains with and without the latent mixture, alternated in one process.

    python bench/mixture_rollout_cost.py

Random nets of 100 neurons in 4 communities of 25 with a 2-state chain each (``MultiscaleBornMachine(...,
latent_states=2, latent_mixture=...)``, bond dimension 4, rank 0); 10 rollouts of 10 bins after each of 64 windows of
64 bins (``dgrn.mesoscale.rollout``), one thread, median of 3 runs of each. With the mixture every step refilters the
window through every community's fine decoder in both states.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgrn.mesoscale import rollout  # noqa: E402
from dgrn.nn import MultiscaleBornMachine  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    members = [[i // 25 for i in range(100)]]
    windows = (torch.rand(64, 64, 100, generator=torch.Generator().manual_seed(0)) < 0.1).float()
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(3):
        for mixture in (False, True):
            torch.manual_seed(0)
            net = MultiscaleBornMachine(100, members, bond_dim=4, rank=0, latent_states=2,
                                        latent_mixture=mixture).eval()
            start = time.perf_counter()
            rollout(net, windows, n_bins=10, n_rollouts=10, generator=torch.Generator().manual_seed(1))
            times[mixture].append(time.perf_counter() - start)
    for mixture, runs in times.items():
        print(f"latent_mixture={mixture}: median {statistics.median(runs):.2f} s of {[round(t, 2) for t in runs]}")


if __name__ == "__main__":
    main()
