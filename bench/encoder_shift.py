"""Input shift of the community encoder (issue 20, fix 6): does ``community_encoder_kising`` lose accuracy on the
couplings DGRN feeds it?

    python bench/encoder_shift.py [--networks 10] [--hard-networks 8] [--dgrn-networks 5] [--first-seed 2000]

The encoder was trained on couplings from 10 L-BFGS iterations of ``infer_couplings`` on 10,000 bins
(configs/data/kising_graphs.yaml); ``DGRN.from_datamodule`` fits them with the default 60 iterations on the
training split of its data config (configs/data/kising.yaml: 50,000 bins less 15 % validation and 15 % test =
35,000). For each held-out network this bench infers the couplings in the four combinations of
{10,000, 35,000} bins x {10, 60} iterations from the same trajectory (the first bins of one simulation) and scores
the pretrained encoder and Leiden (on the same couplings) by the AMI of their communities against the planted
ones of the observed neurons. Three sets of networks, none trained on:

- ``training``: drawn like the encoder's training set (3-8 communities of 20-30 neurons, 100 / 50 / 30 %
  observed), simulator seeds from ``--first-seed`` on (training used 1000-1055);
- ``hard``: drawn the same way but all 30 % observed (the hardest case of training, where the AMI is not at its
  ceiling of 1), seeds from ``--first-seed`` + 100 on;
- ``dgrn``: the network of configs/data/kising.yaml (100 neurons, 4 communities, 50 % observed as in
  experiment=dgrn_kising) with seeds 1, 2, ... (the zoo's dgrn_kising50 uses seed 0).

The simulator's parameters are pinned to those the encoder was trained with (no ``reference_degree`` scaling of
dense networks, which came later), so a change of the simulator's defaults does not move the benchmark. The input
shift is the iteration effect at fixed bins (10 -> 60 iterations): it is reported paired by network, for the encoder
and for Leiden, and as the change of the encoder's margin over Leiden. Writes ``bench/results/encoder_shift.json``
(per network, with the fit times, which depend on the machine's load).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dgrn.data import atomic_write  # noqa: E402

#: kinetic_ising parameters of the encoder's training networks (the simulator's defaults when it was trained;
#: reference_degree=None: couplings not scaled down in dense networks, as then)
SIMULATOR = dict(p_in=0.3, p_out=0.1, j_in=0.75, j_out=-0.75, weight_cv=0.5, reference_degree=None, base_rate=0.05,
                 bias_sd=0.3, burn_in=1000, dt=0.01, shuffle=True)
#: the encoder's training distribution (configs/data/kising_graphs.yaml)
COMMUNITIES, SIZES, FRACTIONS = (3, 4, 5, 6, 8), (20, 25, 30), (1.0, 0.5, 0.3)
#: (bins, L-BFGS iterations): as trained, and as DGRN feeds it (training split of configs/data/kising.yaml)
TRAINED, DGRN = (10_000, 10), (35_000, 60)
CELLS = [(t, it) for t in (TRAINED[0], DGRN[0]) for it in (TRAINED[1], DGRN[1])]


def networks(n_train_like: int, n_hard: int, n_dgrn: int, first_seed: int) -> list[dict]:
    """The held-out networks: ``n_train_like`` drawn like the encoder's training set, ``n_hard`` too but with the
    smallest observed fraction, ``n_dgrn`` like DGRN's data."""
    out = []
    for name, count, seed, fractions in (("training", n_train_like, first_seed, FRACTIONS),
                                         ("hard", n_hard, first_seed + 100, (min(FRACTIONS),))):
        rng = np.random.default_rng(seed)
        for k in range(count):
            n_comm = int(rng.choice(COMMUNITIES))
            out.append({"set": name, "n": n_comm * int(rng.choice(SIZES)), "n_communities": n_comm,
                        "observed_fraction": float(rng.choice(fractions)), "seed": seed + k})
    out += [{"set": "dgrn", "n": 100, "n_communities": 4, "observed_fraction": 0.5, "seed": k + 1}
            for k in range(n_dgrn)]
    return out


def score(net: dict, encoder) -> dict:
    """AMI of the encoder and of Leiden on the couplings of every (bins, iterations) cell, for one network."""
    from sklearn.metrics import adjusted_mutual_info_score

    from dgrn.graph import find_communities, infer_couplings
    from dgrn.sim import kinetic_ising

    data = kinetic_ising(net["n"], DGRN[0], n_communities=net["n_communities"], seed=net["seed"], **SIMULATOR)
    if net["observed_fraction"] < 1.0:
        data = data.subsample(net["observed_fraction"], seed=net["seed"])
    truth = data.observed_communities().numpy()
    out = {**net, "n_observed": data.n_neurons}
    for bins, iters in CELLS:
        spikes = data.spikes[:bins]
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # silent neurons get zero couplings, as in training
            couplings = infer_couplings(spikes, max_iter=iters)  # DGRN's graph options are the defaults (l2, 1e-4)
        fit_s = time.perf_counter() - start
        gnn = find_communities(couplings, method="gnn", encoder=encoder, spikes=spikes).numpy()
        leiden = find_communities(couplings, method="leiden").numpy()
        out[f"{bins}x{iters}"] = {"encoder": adjusted_mutual_info_score(truth, gnn),
                                  "leiden": adjusted_mutual_info_score(truth, leiden), "fit_s": fit_s}
    return out


def fmt(values: list[float], signed: bool = False) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{'+' if signed else ''}.3f} ± {sd:.3f}"


def report(rows: list[dict]) -> str:
    """Markdown tables: AMI per cell (mean ± sd over networks), then the paired effects."""
    lines = []
    for name in ("training", "hard", "dgrn", "all"):
        sub = [r for r in rows if name == "all" or r["set"] == name]
        if not sub:
            continue
        lines += [f"\n{name} networks ({len(sub)}): AMI against the planted communities, mean ± sd",
                  "| bins × iterations | encoder | Leiden | encoder − Leiden |", "|---|---|---|---|"]
        for bins, iters in CELLS:
            key = f"{bins}x{iters}"
            note = {TRAINED: " (as trained)", DGRN: " (as DGRN feeds it)"}.get((bins, iters), "")
            enc, lei = [r[key]["encoder"] for r in sub], [r[key]["leiden"] for r in sub]
            lines.append(f"| {bins:,} × {iters}{note} | {fmt(enc)} | {fmt(lei)} | "
                         f"{fmt([e - l for e, l in zip(enc, lei)], True)} |")
        lines += ["| paired effect | encoder | Leiden | encoder − Leiden |", "|---|---|---|---|"]
        for label, a, b in [("60 − 10 iterations at 10,000 bins", (TRAINED[0], 10), (TRAINED[0], 60)),
                            ("60 − 10 iterations at 35,000 bins", (DGRN[0], 10), (DGRN[0], 60)),
                            ("DGRN's input − training input", TRAINED, DGRN)]:
            d = {m: [r[f"{b[0]}x{b[1]}"][m] - r[f"{a[0]}x{a[1]}"][m] for r in sub] for m in ("encoder", "leiden")}
            lines.append(f"| {label} | {fmt(d['encoder'], True)} | {fmt(d['leiden'], True)} | "
                         f"{fmt([e - l for e, l in zip(d['encoder'], d['leiden'])], True)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", type=int, default=10, help="held-out networks like the training set")
    parser.add_argument("--hard-networks", type=int, default=8, help="the same, 30 %% observed")
    parser.add_argument("--dgrn-networks", type=int, default=5, help="held-out networks like DGRN's data config")
    parser.add_argument("--first-seed", type=int, default=2000, help="simulator seed of the first training-like one")
    args = parser.parse_args()

    from dgrn.zoo import load_pretrained

    encoder = load_pretrained("community_encoder_kising")
    rows = []
    start = time.perf_counter()
    for net in networks(args.networks, args.hard_networks, args.dgrn_networks, args.first_seed):
        rows.append(score(net, encoder))
        cells = ", ".join(f"{k}: {rows[-1][k]['encoder']:.3f} / {rows[-1][k]['leiden']:.3f}"
                          for k in (f"{b}x{i}" for b, i in CELLS))
        print(f"{net['set']} seed {net['seed']} ({rows[-1]['n_observed']} of {net['n']} neurons, "
              f"{net['n_communities']} communities) encoder / Leiden AMI: {cells}", flush=True)
    table = report(rows)
    print(table)
    print(f"\n{time.perf_counter() - start:.0f} s")
    path = ROOT / "bench" / "results" / "encoder_shift.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(
        {"simulator": SIMULATOR, "trained": TRAINED, "dgrn": DGRN, "networks": rows, "table": table}, indent=2))


if __name__ == "__main__":
    main()
