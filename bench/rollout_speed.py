"""Seconds of one ``dgrn.mesoscale.rollout`` of a DGRN the size of the ``lkd2012`` benchmark at 20 % observed.

    python bench/rollout_speed.py [--repo DIR]

An untrained :class:`~dgrn.nn.MultiscaleBornMachine` (800 neurons, 85 first-level units with 2-state latent chains,
bond dimension 4, rank 1) draws 10 rollouts of 10 bins from each of 64 random windows of 64 bins, on one thread. Prints the
seconds and the number of spikes drawn (the same for two versions that draw the same). ``--repo`` imports ``dgrn``
from another checkout, e.g. a ``git worktree`` of an older commit, so two versions can be timed alternately.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent))
    args = parser.parse_args()
    sys.path.insert(0, args.repo)
    import torch

    from dgrn.mesoscale import rollout
    from dgrn.nn import MultiscaleBornMachine

    torch.set_num_threads(1)
    torch.manual_seed(0)
    n_neurons, n_units = 800, 85
    units = (torch.arange(n_neurons) % n_units).tolist()
    net = MultiscaleBornMachine(n_neurons, [units], bond_dim=4, hidden_size=32, history=1, context=8,
                                latent_states=2).eval()
    windows = (torch.rand(64, 64, n_neurons) < 0.02).float()
    start = time.perf_counter()
    out = rollout(net, windows, 10, 10, generator=torch.Generator().manual_seed(0))
    print(f"{time.perf_counter() - start:.3f} s, {int(out.sum())} spikes drawn ({args.repo})")


if __name__ == "__main__":
    main()
