"""The ``dgrn`` command: ``dgrn zoo list``, ``dgrn simulate``, ``dgrn predict``.

Heavy libraries are imported inside the commands, so ``dgrn --help`` and ``dgrn zoo list`` answer at once.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _zoo_list(args: argparse.Namespace) -> int:
    import json

    from dgrn.zoo import checkpoint_dir, list_models

    names = list_models()
    if not names:
        print(f"no pretrained models in {checkpoint_dir()}")
    for name in names:
        info = json.loads((checkpoint_dir() / name / "config.json").read_text())
        print(f"{name:24s} {info.get('architecture', '?'):12s} {info.get('summary', '')}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from dgrn.sim import kinetic_ising

    data = kinetic_ising(
        args.n, args.t, n_communities=args.n_communities, seed=args.seed, sample_seed=args.sample_seed, dt=args.dt
    )
    if args.observed_fraction < 1.0:
        data = data.subsample(args.observed_fraction, seed=args.seed)
    path = data.save(args.out)
    rate = float(data.spikes.float().mean() / data.dt)
    print(f"wrote {path}: {data.n_bins} bins x {data.n_neurons} observed neurons (of {data.n_network}), "
          f"mean rate {rate:.2f} Hz")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from dgrn.data import SpikeData, atomic_write
    from dgrn.zoo import load_pretrained

    net = load_pretrained(args.model)
    data = SpikeData.load(args.spikes)
    if data.n_neurons != net.n_neurons:
        raise SystemExit(f"error: {args.model} models {net.n_neurons} neurons; {args.spikes} has {data.n_neurons}")
    if data.n_bins <= net.context:
        raise SystemExit(f"error: {args.spikes} has {data.n_bins} bins; {args.model} needs more than {net.context}")
    x = data.spikes.clamp(max=1).float()
    probs = []
    with torch.inference_mode():  # chunks overlap by the context, so every bin after it is predicted once
        for start in range(0, data.n_bins - net.context, args.chunk):
            stop = min(start + args.chunk + net.context, data.n_bins)
            probs.append(torch.sigmoid(net(x[None, start:stop]))[0])
    probs = torch.cat(probs).numpy().astype(np.float32)
    out = Path(args.out) if args.out else Path(args.spikes).with_suffix(".pred.npz")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, probabilities=probs, first_bin=np.array(net.context), dt=np.array(data.dt),
                                model=np.array(args.model))

    atomic_write(out, write)
    print(f"wrote {out}: next-bin spike probabilities for bins {net.context}..{data.n_bins - 1} "
          f"({probs.shape[0]} x {probs.shape[1]})")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from dgrn.publish import publish_checkpoint

    folder = publish_checkpoint(args.ckpt, args.name, summary=args.summary, command=args.command,
                                sample_seed=args.sample_seed)
    print(f"published {args.name} to {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgrn", description="Diffusion-guided renormalization of neural systems.")
    sub = parser.add_subparsers(dest="command", required=True)

    zoo = sub.add_parser("zoo", help="pretrained models").add_subparsers(dest="zoo_command", required=True)
    zoo.add_parser("list", help="list pretrained models").set_defaults(func=_zoo_list)

    sim = sub.add_parser("simulate", help="simulate a network with ground truth and save it as .npz")
    sim.add_argument("model", choices=["kinetic-ising"], help="simulator")
    sim.add_argument("--n", type=int, default=100, help="neurons (default 100)")
    sim.add_argument("--t", type=int, default=50_000, help="time bins (default 50000)")
    sim.add_argument("--n-communities", type=int, default=4)
    sim.add_argument("--seed", type=int, default=0, help="network seed")
    sim.add_argument("--sample-seed", type=int, default=None, help="trajectory seed (default: --seed)")
    sim.add_argument("--dt", type=float, default=0.01, help="bin width in seconds")
    sim.add_argument("--observed-fraction", type=float, default=1.0, help="keep this fraction of neurons observed")
    sim.add_argument("--out", required=True, help="output .npz")
    sim.set_defaults(func=_simulate)

    pred = sub.add_parser("predict", help="next-bin spike probabilities of a recording under a pretrained model")
    pred.add_argument("--model", required=True, help="zoo name (see `dgrn zoo list`)")
    pred.add_argument("--spikes", required=True, help=".npz with a (T, N) `spikes` array")
    pred.add_argument("--out", default=None, help="output .npz (default: <spikes>.pred.npz)")
    pred.add_argument("--chunk", type=int, default=100_000, help="bins per forward pass")
    pred.set_defaults(func=_predict)

    pub = sub.add_parser("publish", help="turn a training checkpoint into a zoo model with a model card")
    pub.add_argument("--ckpt", required=True, help="Lightning .ckpt written by train.py, or its run directory (best checkpoint)")
    pub.add_argument("--name", required=True, help="zoo name (folder under checkpoints/)")
    pub.add_argument("--summary", default="", help="one line for `dgrn zoo list` and the card")
    pub.add_argument("--command", default="", help="the commands that reproduce it, for the card")
    pub.add_argument("--sample-seed", type=int, default=2024, help="seed of the fresh trajectories scored")
    pub.set_defaults(func=_publish)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
