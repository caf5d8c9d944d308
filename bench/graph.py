"""Graph inference and community benchmark (issue 7): dgrn methods against baselines, in the same run.

    python bench/graph.py [--seeds 0 1 2] [--fractions 1.0 0.5 0.2] [--skip-scale] [--scale-only]
    python bench/graph.py --dataset lif [--lif-seconds 100]     # sections 1-2 on the clustered LIF network

1. Couplings. Kinetic Ising, 200 neurons, 8 communities, 100,000 bins (network seed = seed), observed fraction
   100 / 50 / 20 % (observed set seeded by the seed): edge AUROC and AUPRC among observed neurons, and the
   false-positive rate among pairs that share a hidden driver (``dgrn.metrics.shared_driver_false_positive_rate``:
   as many pairs called edges as there are true edges) for ML, ML + latent (rank 2, and rank chosen among 0, 1, 2, 4,
   8 by held-out likelihood: ``latent_rank="auto"``), nMF, TAP, correlation and
   partial correlation (Ledoit-Wolf precision).
2. Communities on the same data: AMI against the planted communities of the observed neurons for dgrn's
   ``leiden`` / ``markov_stability`` / ``lrg`` on the ML couplings, the
   pretrained ``gnn`` (zoo ``community_encoder_kising``, never fitted to these networks; with two ablations: no
   refinement, untrained weights), ``markov_stability`` and ``gnn`` on the correlation graph, and the baselines
   correlation + Leiden, correlation + spectral clustering (told the true K) and PyG DMoN on the correlation graph
   (fitted per network, told the true K).
3. Scale: ``infer_couplings`` with its defaults on 1,000 neurons x 100,000 bins (full batch, L-BFGS to ``tol``):
   wall time, passes over the data, whether it converged, edge AUROC and the peak RSS of a fresh process.

Writes ``bench/results/graph.json``. Timings depend on the machine's load (2 shared cores here).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dgrn.data import atomic_write  # noqa: E402

N, K, T = 200, 8, 100_000


def fmt(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def dmon_labels(spikes, graph, k: int, seed: int, steps: int = 300):
    """PyG's DMoNPooling after one dense GCN layer, fitted to this network (its published protocol)."""
    from torch_geometric.nn import DenseGCNConv, DMoNPooling

    from dgrn.graph.features import node_features

    torch.manual_seed(seed)
    adj = graph.clamp_min(0)[None]
    x = node_features(spikes, graph)[None]
    conv, pool = DenseGCNConv(x.shape[-1], 64), DMoNPooling(64, k)
    opt = torch.optim.Adam([*conv.parameters(), *pool.parameters()], lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        s, _, _, spectral, _, cluster = pool(torch.relu(conv(x, adj)), adj)
        (spectral + cluster).backward()
        opt.step()
    return s[0].argmax(1)


def ablations(encoder, seed: int) -> dict:
    """The pretrained encoder and two ablations: its weights without the modularity refinement, and the
    refinement (+ modularity-selected K) from an untrained GNN of the same architecture (seeded)."""
    from dgrn.nn import CommunityEncoder

    kwargs = {k: getattr(encoder, k) for k in ("in_channels", "hidden_channels", "num_layers", "max_communities",
                                               "refine_steps", "refine_rate", "beta", "n_iter")}
    no_refine = CommunityEncoder(**{**kwargs, "refine_steps": 0}).eval()
    no_refine.load_state_dict(encoder.state_dict())
    torch.manual_seed(seed)
    untrained = CommunityEncoder(**kwargs).eval()
    return {"dgrn gnn pretrained (ML graph)": encoder, "gnn pretrained, no refinement (ablation)": no_refine,
            "gnn untrained weights + refinement (ablation)": untrained}


def simulate(dataset: str, seed: int, lif_seconds: float):
    """The network of one seed: kinetic Ising (N neurons, K communities, T bins) or the clustered LIF ``small``
    preset (800 E in 10 clusters + 200 I; the inhibitory neurons form an 11th planted group), 5 ms bins."""
    from dgrn.datasets import build_dataset

    if dataset == "kising":
        return build_dataset("kinetic_ising", n=N, t=T, n_communities=K, seed=seed)
    return build_dataset("clustered_lif", preset="small", duration_s=lif_seconds, dt=0.005, seed=seed)


def couplings_and_communities(seeds, fractions, dataset: str = "kising", lif_seconds: float = 100.0) -> dict:
    from sklearn.metrics import adjusted_mutual_info_score as ami

    from dgrn.graph import correlation, find_communities, infer_couplings, mean_field_couplings, partial_correlation
    from dgrn.metrics import edge_auprc, edge_auroc, shared_driver_false_positive_rate
    from dgrn.zoo import list_models, load_pretrained

    encoder = load_pretrained("community_encoder_kising") if "community_encoder_kising" in list_models() else None
    estimators = {
        "ML": lambda d: infer_couplings(d),
        "ML + latent": lambda d: infer_couplings(d, latent_rank=2),
        "ML + latent (rank by held-out NLL)": lambda d: infer_couplings(d, latent_rank="auto"),
        "nMF": lambda d: mean_field_couplings(d, "nmf"),
        "TAP": lambda d: mean_field_couplings(d, "tap"),
        "correlation": correlation,
        "partial correlation": partial_correlation,
    }
    edges: dict = {}
    comms: dict = {}
    for seed in seeds:
        start = time.perf_counter()
        full = simulate(dataset, seed, lif_seconds)
        print(f"[seed {seed}] simulated {dataset} {full.n_neurons} x {full.n_bins} in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        n_planted = int(full.true_communities.max()) + 1  # "told K" baselines get the planted number
        for fraction in fractions:
            data = full.subsample(fraction, seed=seed) if fraction < 1 else full
            truth, labels = data.observed_couplings(), data.observed_communities()
            graphs = {}
            for name, fn in estimators.items():
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    w = fn(data)
                seconds = time.perf_counter() - start
                graphs[name] = w
                row = edges.setdefault(f"{fraction}|{name}", {"auroc": [], "auprc": [], "fpr_shared": [],
                                                              "fpr_all": [], "seconds": []})
                row["auroc"].append(float(edge_auroc(w, truth)))
                row["auprc"].append(float(edge_auprc(w, truth)))
                row["seconds"].append(seconds)
                if fraction < 1:
                    fpr = shared_driver_false_positive_rate(w, full.true_couplings, data.observed)
                    row["fpr_shared"].append(fpr["shared_driver"])
                    row["fpr_all"].append(fpr["all"])
                print(f"  {fraction:.0%} {name:20s} AUROC {row['auroc'][-1]:.4f} AUPRC {row['auprc'][-1]:.4f} "
                      f"({seconds:.1f} s)", flush=True)

            ml = graphs["ML"]
            methods = {
                "dgrn leiden (ML graph)": lambda: find_communities(ml, "leiden"),
                "dgrn leiden (ML graph less its noise)": lambda: find_communities(ml, spikes=data),
                "dgrn markov_stability (ML graph)": lambda: find_communities(ml, "markov_stability"),
                # dgrn's methods on the baselines' graph: where communities show in co-activity, not couplings
                "dgrn markov_stability (correlation graph)": lambda: find_communities(graphs["correlation"],
                                                                                      "markov_stability"),
                "correlation + leiden": lambda: find_communities(graphs["correlation"], "leiden"),
                "correlation + spectral (true K)": lambda: find_communities(graphs["correlation"], "spectral",
                                                                             n_communities=n_planted),
                "DMoN on correlation (true K)": lambda: dmon_labels(data, graphs["correlation"], n_planted, seed),
                "dgrn lrg (ML graph)": lambda: find_communities(ml, "lrg"),
            }
            if encoder is not None:
                for label, enc in ablations(encoder, seed).items():
                    methods[label] = lambda enc=enc: find_communities(ml, "gnn", encoder=enc, spikes=data)
                methods["dgrn gnn pretrained (correlation graph)"] = lambda: find_communities(
                    graphs["correlation"], "gnn", encoder=encoder, spikes=data)
            for name, fn in methods.items():
                start = time.perf_counter()
                row = comms.setdefault(f"{fraction}|{name}", {"ami": [], "k": [], "seconds": [], "errors": []})
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        found = fn()
                except ValueError as err:  # a method that finds no communities says so: a NaN row, not a crash
                    row["errors"].append(str(err))
                    row["ami"].append(float("nan"))
                    row["k"].append(float("nan"))
                    row["seconds"].append(time.perf_counter() - start)
                    print(f"  {fraction:.0%} {name:34s} failed: {err}", flush=True)
                    continue
                row["ami"].append(float(ami(labels, found)))
                row["k"].append(int(found.max()) + 1)
                row["seconds"].append(time.perf_counter() - start)
                print(f"  {fraction:.0%} {name:34s} AMI {row['ami'][-1]:.3f} (K={row['k'][-1]})", flush=True)
    return {"edges": edges, "communities": comms}


def scale_simulate(path: str, n: int = 1000, t: int = 100_000) -> dict:
    """Simulate the scale network (20 communities of 50; ``p_out`` scaled by 200 / n so that each neuron gets as
    many inputs as in the 200-neuron benchmark network and the dynamics stays away from saturation)."""
    from dgrn.sim import kinetic_ising

    start = time.perf_counter()
    # reference_degree=None: the published scale table was measured on the unscaled couplings (in-degree 34)
    data = kinetic_ising(n, t, n_communities=20, seed=0, p_out=0.1 * 200 / n, reference_degree=None)
    seconds = time.perf_counter() - start
    data.save(path)
    return {"simulate_seconds": seconds, "rate_per_bin": float(data.spikes.float().mean())}


def scale_fit(path: str) -> dict:
    """Fit in a fresh process that only loads the spikes, so the peak RSS is the fit's (plus the data)."""
    import warnings

    from dgrn.data import SpikeData
    from sklearn.metrics import adjusted_mutual_info_score as ami

    from dgrn.graph import ConvergenceWarning, find_communities, infer_couplings
    from dgrn.metrics import edge_auroc

    data = SpikeData.load(path)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # a ConvergenceWarning means the defaults did not converge
        warnings.simplefilter("always")
        w, params = infer_couplings(data.spikes, return_params=True)  # the library's defaults
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    labels = find_communities(w, spikes=data.spikes)  # the default: Leiden on the couplings less their noise
    community_seconds = time.perf_counter() - start
    return {"neurons": data.n_neurons, "bins": data.n_bins, "infer_seconds": seconds,
            "community_seconds": community_seconds, "communities": int(labels.max()) + 1,
            "community_ami": float(ami(data.true_communities, labels)),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "rss_before_fit_gib": rss_loaded, "edge_auroc": float(edge_auroc(w, data.true_couplings)),
            "evaluations": params["evaluations"], "relative_gradient": params["relative_gradient"],
            "nll": params["nll"], "converged": not any(issubclass(c.category, ConvergenceWarning) for c in caught),
            "threads": torch.get_num_threads()}


def scale_run() -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "scale.npz")
        out = {}
        for flag in ("--scale-simulate", "--scale-fit"):
            proc = subprocess.run([sys.executable, __file__, flag, path], capture_output=True, text=True, check=True)
            out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.2])
    parser.add_argument("--dataset", choices=["kising", "lif"], default="kising",
                        help="lif: clustered LIF small preset; writes graph_lif.json and skips the scale test")
    parser.add_argument("--lif-seconds", type=float, default=100.0, help="recorded seconds of the LIF network")
    parser.add_argument("--skip-scale", action="store_true", help="keep the scale result of an earlier run")
    parser.add_argument("--scale-only", action="store_true", help="run only the 1000 x 100,000 scale test")
    parser.add_argument("--scale-simulate", help=argparse.SUPPRESS)
    parser.add_argument("--scale-fit", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_simulate or args.scale_fit:
        print(json.dumps(scale_simulate(args.scale_simulate) if args.scale_simulate else scale_fit(args.scale_fit)))
        return

    lif = args.dataset == "lif"
    path = ROOT / "bench" / "results" / ("graph_lif.json" if lif else "graph.json")
    results = json.loads(path.read_text()) if path.is_file() else {}  # a partial run keeps the other part
    if not args.scale_only:
        results.update(couplings_and_communities(args.seeds, args.fractions, args.dataset, args.lif_seconds),
                       seeds=args.seeds, dataset=args.dataset)
        report(results)
    if not (args.skip_scale or lif):
        scale = results["scale"] = scale_run()
        print(f"\nScale: infer_couplings on {scale['neurons']} neurons x {scale['bins']} bins (rate "
              f"{scale['rate_per_bin']:.3f} per bin), defaults: {scale['infer_seconds']:.0f} s (goal < 300 s), "
              f"{scale['evaluations']} passes over the data, {'converged' if scale['converged'] else 'NOT converged'} "
              f"(relative gradient {scale['relative_gradient']:.3g}), peak RSS {scale['peak_rss_gib']:.2f} GiB "
              f"({scale['rss_before_fit_gib']:.2f} GiB after loading the data), edge AUROC {scale['edge_auroc']:.3f}, "
              f"{scale['threads']} threads; then find_communities(W, spikes=...): {scale['community_seconds']:.1f} s, "
              f"{scale['communities']} communities (20 planted), AMI {scale['community_ami']:.3f}")
    atomic_write(path, json.dumps(results, indent=2))
    print(f"\nwrote {path}")


def report(results: dict) -> None:
    seeds = results["seeds"]
    print(f"\nEdges (mean ± sd over seeds {seeds}; FPR = false-positive rate among pairs sharing a hidden driver)")
    print("| observed | method | AUROC | AUPRC | FPR shared driver | FPR all non-edges | seconds |\n|---|---|---|---|---|---|---|")
    for key, row in results["edges"].items():
        fraction, name = key.split("|")
        print(f"| {float(fraction):.0%} | {name} | {fmt(row['auroc'])} | {fmt(row['auprc'])} | {fmt(row['fpr_shared'])} "
              f"| {fmt(row['fpr_all'])} | {statistics.mean(row['seconds']):.1f} |")
    print("\nCommunities (AMI against the planted communities of the observed neurons)")
    print("| observed | method | AMI | K found | seconds |\n|---|---|---|---|---|")
    for key, row in results["communities"].items():
        fraction, name = key.split("|")
        k_found = [k for k in row["k"] if not math.isnan(k)]
        failed = f" ({len(row['errors'])} failed)" if row.get("errors") else ""
        print(f"| {float(fraction):.0%} | {name} | {fmt(row['ami'])}{failed} | "
              f"{statistics.mean(k_found) if k_found else float('nan'):.1f} | {statistics.mean(row['seconds']):.1f} |")


if __name__ == "__main__":
    main()
