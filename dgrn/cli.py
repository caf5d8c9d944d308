"""The ``dgrn`` command: ``dgrn zoo list|card``, ``dgrn simulate``, ``dgrn predict``, ``dgrn publish``,
``dgrn communities``, ``dgrn renorm``.

Heavy libraries are imported inside the commands, so ``dgrn --help`` and ``dgrn zoo list`` answer at once.
User errors (bad input: :data:`USER_ERRORS`) print one ``error:`` line and exit with status 2; ``dgrn --debug``
prints their traceback too. Any other exception is a bug and propagates with its traceback.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

#: Exceptions that report bad input (arguments, files) rather than a bug: one line, exit status 2.
USER_ERRORS = (ValueError, OSError)


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


def _zoo_card(args: argparse.Namespace) -> int:
    from dgrn.publish import rewrite_card
    from dgrn.zoo import list_models

    for name in args.names or list_models():
        print(f"wrote {rewrite_card(name)}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    if Path(args.out).suffix not in (".npz", ".nwb"):
        raise ValueError(f"--out must end in .npz or .nwb, got {args.out!r}")
    if args.model == "kinetic-ising":
        from dgrn.sim import kinetic_ising

        data = kinetic_ising(
            args.n, args.t, n_communities=args.n_communities, seed=args.seed, sample_seed=args.sample_seed, dt=args.dt
        )
    elif args.model == "lif":
        from dgrn.sim.lif import lif_preset

        data = lif_preset(args.preset, args.duration_s, args.dt, seed=args.seed, sample_seed=args.sample_seed)
    else:
        from dgrn.sim.connectome import connectome_dynamics

        if not args.connectome:
            raise ValueError("simulate connectome needs --connectome FILE (.csv, .npz or .graphml)")
        data = connectome_dynamics(args.connectome, args.t, dynamics=args.dynamics, dt=args.dt, seed=args.seed,
                                   sample_seed=args.sample_seed, spectral_radius_target=args.spectral_radius)
    if args.observed_fraction < 1.0:
        data = data.subsample(args.observed_fraction, seed=args.seed, strategy=args.subsample)
    from dgrn.data import write_nwb

    path = write_nwb(data, args.out) if Path(args.out).suffix == ".nwb" else data.save(args.out)
    rate = float(data.spikes.float().mean() / data.dt)
    print(f"wrote {path}: {data.n_bins} bins x {data.n_neurons} observed neurons (of {data.n_network}), "
          f"mean rate {rate:.2f} Hz")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from dgrn.data import atomic_savez, load_recording
    from dgrn.zoo import load_pretrained, model_info

    net = load_pretrained(args.model)
    data = load_recording(args.spikes)
    if data.n_neurons != net.n_neurons:
        raise ValueError(f"{args.model} models {net.n_neurons} neurons; {args.spikes} has {data.n_neurons}")
    if data.n_bins <= net.context:
        raise ValueError(f"{args.spikes} has {data.n_bins} bins; {args.model} needs more than {net.context}")
    trained_dt = model_info(args.model).get("dt")
    if trained_dt is not None and not np.isclose(data.dt, trained_dt, rtol=1e-6, atol=0):
        raise ValueError(f"{args.model} was trained on {trained_dt * 1e3:g} ms bins; {args.spikes} has "
                         f"{data.dt * 1e3:g} ms bins (rebin the recording: its dynamics are per bin)")
    out = Path(args.out) if args.out else Path(args.spikes).with_suffix(".pred.npz")
    if getattr(net, "n_levels", None) is not None:
        from dgrn.predict import predict_levels

        return predict_levels(net, data, out, args.model, n_samples=args.samples, chunk=args.chunk)
    x = data.spikes.clamp(max=1).float()
    probs = []
    rates = getattr(net, "rates", None) or (lambda w: torch.sigmoid(net(w)))  # the HMM's logits are chain-rule factors
    with torch.inference_mode():  # chunks overlap by the context, so every bin after it is predicted once
        for start in range(0, data.n_bins - net.context, args.chunk):
            stop = min(start + args.chunk + net.context, data.n_bins)
            probs.append(rates(x[None, start:stop])[0])
    probs = torch.cat(probs).numpy().astype(np.float32)
    atomic_savez(out, probabilities=probs, first_bin=np.array(net.context), dt=np.array(data.dt),
                 model=np.array(args.model))
    print(f"wrote {out}: next-bin spike probabilities for bins {net.context}..{data.n_bins - 1} "
          f"({probs.shape[0]} x {probs.shape[1]})")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from dgrn.publish import publish_checkpoint

    notes = Path(args.notes).read_text() if args.notes else ""
    folder = publish_checkpoint(args.ckpt, args.name, summary=args.summary, command=args.command,
                                sample_seed=None if args.no_fresh_data else args.sample_seed, notes=notes)
    print(f"published {args.name} to {folder}")
    return 0


def _communities(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from dgrn.data import atomic_savez, load_recording
    from dgrn.graph import find_communities, infer_couplings

    data = load_recording(args.spikes)
    couplings = infer_couplings(data, latent_rank=args.latent_rank)
    opts = {}
    if args.method == "gnn":
        from dgrn.zoo import load_pretrained

        opts["encoder"] = load_pretrained(args.encoder)
    labels = find_communities(couplings, args.method, spikes=data, noise_threshold=args.noise_threshold, **opts)
    sizes = torch.bincount(labels).tolist()
    print(f"{len(sizes)} communities of {data.n_neurons} neurons ({args.method}); sizes {sizes}")
    if data.true_communities is not None:
        from sklearn.metrics import adjusted_mutual_info_score

        planted = data.observed_communities()
        print(f"AMI against the file's planted communities ({int(planted.max()) + 1}): "
              f"{adjusted_mutual_info_score(planted.numpy(), labels.numpy()):.3f}")
    out = Path(args.out) if args.out else Path(args.spikes).with_suffix(".communities.npz")
    atomic_savez(out, labels=labels.numpy(), sizes=np.array(sizes), couplings=couplings.numpy())
    print(f"wrote {out} (labels, sizes, couplings)")
    return 0


def _renorm(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from dgrn import plots
    from dgrn.data import atomic_savez, atomic_write, load_recording
    from dgrn.renorm import HeatKernel, pool_activity, rg_flow
    from dgrn.renorm.graphs import load_graph

    graph = load_graph(args.graph, weights=args.weights)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        tau = float(args.tau)
    except ValueError:
        tau = args.tau
    kernel_options = {"laplacian": args.laplacian, "method": args.method, "seed": args.seed}
    flow = rg_flow(graph, args.levels, tau=tau, shrink=args.shrink, **kernel_options)
    n = graph.shape[0]
    if not flow:
        curves = HeatKernel(graph, **kernel_options).curves()
        plots.plot_specific_heat(curves, out / "specific_heat_level0.png", title=f"level 0: {n} nodes")
    sizes = np.ones(n)
    plots.plot_metagraph(graph, out / "metagraph_level0.png", title=f"level 0: {n} nodes")
    arrays: dict[str, np.ndarray] = {}
    for lv in flow:
        plots.plot_specific_heat(lv.curves, out / f"specific_heat_level{lv.level - 1}.png", tau_star=lv.tau,
                                 peaks=lv.peaks, title=f"level {lv.level - 1}: τ* = {lv.tau:.3g}")
        sizes = np.bincount(lv.membership.numpy(), minlength=lv.n_nodes)
        plots.plot_metagraph(lv.graph, out / f"metagraph_level{lv.level}.png", node_size=sizes,
                             title=f"level {lv.level}: {lv.n_nodes} supernodes")
        coo = lv.graph.tocoo()
        arrays.update({f"level{lv.level}_{key}": value for key, value in {
            "membership": lv.membership.numpy(), "assignment": lv.assignment.numpy(), "tau": np.array(lv.tau),
            "curve_tau": lv.curves["tau"].numpy(), "entropy": lv.curves["entropy"].numpy(),
            "specific_heat": lv.curves["specific_heat"].numpy(),
            "edge_index": np.vstack([coo.row, coo.col]), "edge_weight": coo.data}.items()})
    plots.plot_flow(flow, n, out / "flow.png")
    atomic_savez(out / "levels.npz", n_nodes=np.array(n), **arrays)
    summary = {"graph": str(args.graph), "n_nodes": n, "levels": [lv.summary() for lv in flow]}
    atomic_write(out / "levels.json", json.dumps(summary, indent=2))
    if args.spikes:
        data = load_recording(args.spikes)
        if data.n_neurons != n:
            raise ValueError(f"{args.spikes} has {data.n_neurons} neurons; the graph has {n} nodes")
        for lv in flow:
            pool_activity(data, lv.membership, args.pool).save(out / f"spikes_level{lv.level}.npz")
    print(f"{args.graph}: {n} nodes -> " + " -> ".join(f"{lv.n_nodes} (τ*={lv.tau:.3g})" for lv in flow))
    print(f"wrote {out}/: specific_heat_level*.png, metagraph_level*.png, flow.png, levels.json, levels.npz"
          + (", spikes_level*.npz" if args.spikes and flow else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgrn", description="Diffusion-guided renormalization of neural systems.")
    parser.add_argument("--debug", action="store_true", help="print the traceback of user errors too")
    sub = parser.add_subparsers(dest="command", required=True)

    zoo = sub.add_parser("zoo", help="pretrained models").add_subparsers(dest="zoo_command", required=True)
    zoo.add_parser("list", help="list pretrained models").set_defaults(func=_zoo_list)
    card = zoo.add_parser("card", help="rewrite model cards (README.md) from config.json; weights are only read")
    card.add_argument("names", nargs="*", help="zoo names (default: all)")
    card.set_defaults(func=_zoo_card)

    sim = sub.add_parser("simulate", help="simulate a network with ground truth and save it as .npz or .nwb")
    sim.add_argument("model", choices=["kinetic-ising", "lif", "connectome"], help="simulator")
    sim.add_argument("--n", type=int, default=100, help="kinetic-ising: neurons (default 100)")
    sim.add_argument("--t", type=int, default=50_000, help="kinetic-ising, connectome: time bins (default 50000)")
    sim.add_argument("--preset", default="small", help="lif: lkd2012, metastable, small or tiny (default small)")
    sim.add_argument("--duration-s", type=float, default=10.0, help="lif: recorded seconds (default 10)")
    sim.add_argument("--connectome", default=None, help="connectome: .csv (pre,post,weight[,ei]), .npz or .graphml")
    sim.add_argument("--dynamics", choices=["kinetic_ising", "lif"], default="kinetic_ising", help="connectome: dynamics")
    sim.add_argument("--spectral-radius", type=float, default=1.0, help="connectome: rescale weights to this radius")
    sim.add_argument("--subsample", choices=["random", "community", "block"], default="random",
                     help="which neurons stay observed with --observed-fraction")
    sim.add_argument("--n-communities", type=int, default=4)
    sim.add_argument("--seed", type=int, default=0, help="network seed")
    sim.add_argument("--sample-seed", type=int, default=None, help="trajectory seed (default: --seed)")
    sim.add_argument("--dt", type=float, default=0.01, help="bin width in seconds")
    sim.add_argument("--observed-fraction", type=float, default=1.0, help="keep this fraction of neurons observed")
    sim.add_argument("--out", required=True, help="output .npz, or .nwb (needs pynwb: the `nwb` extra)")
    sim.set_defaults(func=_simulate)

    pred = sub.add_parser("predict", help="next-bin spike probabilities of a recording under a pretrained model "
                                          "(DGRN models: per level, with the RG flow and figures)")
    pred.add_argument("--model", required=True, help="zoo name (see `dgrn zoo list`)")
    pred.add_argument("--spikes", required=True, help=".npz with a (T, N) `spikes` array")
    pred.add_argument("--out", default=None, help="output .npz (default: <spikes>.pred.npz)")
    pred.add_argument("--chunk", type=int, default=100_000, help="bins per forward pass")
    pred.add_argument("--samples", type=int, default=32,
                      help="multiscale (DGRN) models: joint samples per bin for the per-level probabilities")
    pred.set_defaults(func=_predict)

    pub = sub.add_parser("publish", help="turn a training checkpoint into a zoo model with a model card")
    pub.add_argument("--ckpt", required=True, help="Lightning .ckpt written by train.py, or its run directory (best checkpoint)")
    pub.add_argument("--name", required=True, help="zoo name (folder under checkpoints/)")
    pub.add_argument("--summary", default="", help="one line for `dgrn zoo list` and the card")
    pub.add_argument("--command", default="", help="the commands that reproduce it, for the card")
    pub.add_argument("--sample-seed", type=int, default=2024, help="seed of the fresh trajectories scored")
    pub.add_argument("--notes", default=None, help="markdown file appended to the card (e.g. baselines)")
    pub.add_argument("--no-fresh-data", action="store_true",
                     help="do not score fresh trajectories (simulators whose state depends on the initial condition)")
    pub.set_defaults(func=_publish)

    com = sub.add_parser("communities", help="communities of a recording: couplings inferred from the spikes, "
                                             "shrunk by their noise, then a community method")
    com.add_argument("spikes", help="a recording (.npz, .nwb, ...: dgrn.data.load_recording)")
    com.add_argument("--out", default=None, help="labels .npz (default: SPIKES with .communities.npz)")
    com.add_argument("--method", default="leiden_consensus",
                     help="leiden_consensus (default), leiden, leiden_stable, markov_stability, lrg, gnn")
    com.add_argument("--encoder", default="community_encoder_grid", help="zoo encoder of --method gnn")
    com.add_argument("--noise-threshold", type=float, default=1.5,
                     help="standard errors the couplings are shrunk by first (0: the raw estimates)")
    com.add_argument("--latent-rank", type=int, default=0, help="latent input of the coupling fit (hidden neurons)")
    com.set_defaults(func=_communities)

    ren = sub.add_parser("renorm", help="diffusion (Laplacian) renormalization flow of a graph, with plots")
    ren.add_argument("graph", help="graph file: scipy sparse .npz, .npz with adjacency / edge_index / true_couplings, "
                                   ".npy, .mtx (A[i, j] = weight of i -> j)")
    ren.add_argument("--out", required=True, help="output folder")
    ren.add_argument("--weights", default="positive", choices=["positive", "abs"],
                     help="negative (inhibitory) weights: dropped (positive, default) or taken as |w| (abs)")
    ren.add_argument("--levels", type=int, default=3, help="maximum number of coarse-grainings (default 3)")
    ren.add_argument("--tau", default="valley", help="valley | largest | highest | smallest | a diffusion time")
    ren.add_argument("--shrink", type=float, default=None, help="shrink each level by this factor (entropy target)")
    ren.add_argument("--laplacian", default="auto", choices=["auto", "combinatorial", "normalized", "directed"])
    ren.add_argument("--method", default="auto", choices=["auto", "exact", "scalable"])
    ren.add_argument("--seed", type=int, default=0, help="seed of the scalable path's random probes")
    ren.add_argument("--spikes", default=None, help="SpikeData .npz over the graph's nodes: pool it along the flow")
    ren.add_argument("--pool", default="sum", choices=["sum", "or", "majority"], help="pooling of --spikes")
    ren.set_defaults(func=_renorm)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command of ``argv``; a user error prints one ``error:`` line (and, with ``--debug``, its
    traceback) and returns 2. Other exceptions propagate: they are bugs, and their traceback is the report."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
