"""Seconds of one ``dgrn.mesoscale.rollout`` of a model the size of the ``lkd2012`` benchmark at 20 % observed.

    python bench/rollout_speed.py [--model dgrn|dgrn_mixture|cmps|gru|switching_glm] [--bins 10] [--rank 1]
                                  [--neurons 800] [--units 85] [--rate 0.02] [--windows 64] [--rollouts 10]
                                  [--checkpoint CKPT] [--repo DIR]

Each model draws ``--rollouts`` rollouts of ``--bins`` bins from each of ``--windows`` random windows of 64 bins (each
neuron active with probability ``--rate`` in a bin), on one thread: the defaults are a forecast's batch (640 draws a
step), ``--windows 1 --rollouts 4`` the benchmark's generation (4 chains). ``dgrn``: an untrained
:class:`~dgrn.nn.MultiscaleBornMachine` (800 neurons, 85 first-level units with 2-state latent chains, bond
dimension 4, rank ``--rank``; the benchmark's ``model=dgrn`` has rank 0); ``dgrn_mixture``: the same with
``latent_mixture=True`` (every chain's states also switch how the neurons of its unit fire); ``cmps``: the same
without levels (the ConditionalMPS alone); ``gru``: :class:`~dgrn.nn.GRUBernoulli` with ``model=gru``'s 64 hidden
units; ``switching_glm``: a :class:`~dgrn.nn.BernoulliHMM` with the benchmark's recipe (one 2-state chain for each
of 85 communities, lag-1 couplings of random weights). ``--neurons`` and ``--units`` change the size (neuron ``i``
in unit ``i % units``). ``--checkpoint``: a trained model instead (a ``train.py`` checkpoint, e.g. one that
``bench/mesoscale.py --runs-dir`` kept; ``--model``, ``--neurons`` and ``--units`` are then read from it). Prints
the seconds and the number of spikes drawn (the same for two versions that draw the same, up to a few where
rounding differs). ``--repo`` imports ``dgrn`` from another checkout, e.g. a ``git
worktree`` of an older commit, so two versions can be timed alternately.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["dgrn", "dgrn_mixture", "cmps", "gru", "switching_glm"], default="dgrn")
    parser.add_argument("--bins", type=int, default=10)
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--neurons", type=int, default=800)
    parser.add_argument("--units", type=int, default=85, help="first-level units (communities), neurons i %% units")
    parser.add_argument("--rate", type=float, default=0.02)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--rollouts", type=int, default=10)
    parser.add_argument("--checkpoint", help="time this trained model (a train.py checkpoint)")
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent))
    args = parser.parse_args()
    sys.path.insert(0, args.repo)
    import torch

    from dgrn.mesoscale import rollout
    from dgrn.nn import BernoulliHMM, GRUBernoulli, MultiscaleBornMachine

    torch.set_num_threads(1)
    torch.manual_seed(0)
    n_neurons, n_units = args.neurons, args.units
    units = (torch.arange(n_neurons) % n_units).tolist()
    if args.checkpoint:
        from dgrn.models import module_for
        from dgrn.runner import load_checkpoint

        checkpoint = load_checkpoint(args.checkpoint)
        module = module_for(checkpoint["hyper_parameters"])(**checkpoint["hyper_parameters"])
        module.load_state_dict(checkpoint["state_dict"])
        net, args.model = module.net, type(module.net).__name__
        n_neurons = net.n_neurons
    elif args.model in ("dgrn", "dgrn_mixture", "cmps"):
        levels = {} if args.model == "cmps" else dict(memberships=[units], latent_states=2)
        if args.model == "dgrn_mixture":  # named only here, so that --repo may be a checkout from before the mixture
            levels["latent_mixture"] = True
        net = MultiscaleBornMachine(n_neurons, bond_dim=4, rank=args.rank, hidden_size=32, history=1, context=8,
                                    **levels)
    elif args.model == "gru":
        net = GRUBernoulli(n_neurons, hidden_size=64, context=16)
    else:
        net = BernoulliHMM(n_neurons, n_states=2, context=16, communities=units, history=1)
        with torch.no_grad():
            net.weight.normal_(0.0, 0.05)
    windows = (torch.rand(args.windows, 64, n_neurons) < args.rate).float()
    start = time.perf_counter()
    out = rollout(net.eval(), windows, args.bins, args.rollouts, generator=torch.Generator().manual_seed(0))
    print(f"{time.perf_counter() - start:.3f} s, {int(out.sum())} spikes drawn ({args.model}, {args.repo})")


if __name__ == "__main__":
    main()
