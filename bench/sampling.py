"""Benchmark: sampling speed of the ConditionalMPS and of a zoo DGRN, one thread, median of 3 after a warm-up.

Cases (each printed as one JSON line, seconds):

- ``zoo_rollout``: ``dgrn.mesoscale.rollout`` of the zoo model ``dgrn_lkd2012`` (200 neurons, latent chains on 16
  communities; levels 200/8/1 without chains before 2026-12-04),
  16 continuations of 100 bins after one 64-bin window;
- ``zoo_draws``: ``net.sample(window, 1000)``, 1,000 next-bin draws of that model;
- ``sites500_*``: ``ConditionalMPS.sample`` on 500 sites (rank 0, bond 4) for 16 and 1,000 contexts, with an OR
  constraint over 200 blocks of 3-19 sites (``or``) and without one (``free``).

To compare two commits, run it in a worktree of each, alternating, in one session on an otherwise idle machine::

    python bench/sampling.py
    git worktree add /tmp/old COMMIT && cp bench/sampling.py /tmp/old/bench/ && python /tmp/old/bench/sampling.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the package, not bench/dgrn.py


def main() -> None:
    from bench.tn import timed
    from dgrn.mesoscale import rollout
    from dgrn.tn import ConditionalMPS
    from dgrn.zoo import load_pretrained

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    net = load_pretrained("dgrn_lkd2012")
    window = (torch.rand(1, 64, net.n_neurons, generator=gen) < 0.03).float()
    cases = {"zoo_rollout": lambda: rollout(net, window, 100, 16, generator=gen),
             "zoo_draws": lambda: net.sample(window, 1000, generator=gen)}
    torch.manual_seed(0)
    decoder = ConditionalMPS(500, 32, 4, rank=0)
    groups = torch.repeat_interleave(torch.arange(200), torch.randint(3, 20, (200,)))[:500]
    for batch in (16, 1000):
        context = torch.randn(batch, 32)
        active = torch.rand(batch, int(groups[-1]) + 1) < 0.3
        cases[f"sites500_or_{batch}"] = lambda c=context, a=active: decoder.sample(c, gen, groups=groups, active=a)
        cases[f"sites500_free_{batch}"] = lambda c=context: decoder.sample(c, gen)
    for name, fn in cases.items():
        print(json.dumps({"case": name, "seconds": round(timed(fn, 3), 4)}), flush=True)


if __name__ == "__main__":
    main()
