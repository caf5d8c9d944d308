"""Choosing the partition by the spikes (issue 23, item 2; a negative result): candidates from ``leiden`` at five
resolutions and ``markov_stability`` at four Markov times on the ML couplings, each scored by the held-out likelihood
of a community GLM (every neuron reads the previous bin's spike count of each community and its own spike), on the
45 cells of the reduced community grid (bench/communities.py: 5 families, 100 / 50 / 20 % observed, 3 seeds,
10,000 bins of kinetic Ising).

    OMP_NUM_THREADS=1 python bench/community_selection.py     # about 8 minutes on one core

Rules compared per cell: ``leiden`` at resolution 1 (the default of ``find_communities``); ``min``, the candidate
with the lowest held-out NLL (fit on the first 80 % of the bins, scored on the rest); ``1se`` / ``2se``, the fewest
communities among the candidates within 1 (2) standard errors of the best (paired differences over 20 blocks of
the held-out bins); ``oracle``, the best candidate by AMI. Prints the mean AMI per cell group and the median K error;
writes bench/results/community_selection.json.
"""
from __future__ import annotations

import json
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.communities import FAMILIES, ami, simulate  # noqa: E402
from dgrn.data import atomic_write  # noqa: E402
from dgrn.graph import find_communities, infer_couplings, rowwise_lbfgs  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "community_selection.json"
RESOLUTIONS = (0.5, 0.71, 1.0, 1.41, 2.0)
MARKOV_TIMES = (0.5, 1.0, 2.0, 4.0)


def community_glm_nll(spikes: torch.Tensor, labels: np.ndarray, train: float = 0.8, ridge: float = 1e-3,
                      blocks: int = 20) -> tuple[float, list[float]]:
    """Held-out NLL per neuron-bin of ``logit p_i(t) = b_i + s_i x_i(t-1) + sum_c u_ic z_c(t-1)`` (``z_c``: the
    standardized spike count of community ``c``), fitted on the first ``train`` of the bins by one L-BFGS per neuron
    (ridge on ``u`` and ``s``); also the mean NLL of each of ``blocks`` consecutive blocks of the held-out bins."""
    x = spikes.float().clamp(max=1)
    n_bins, n = x.shape
    k = int(labels.max()) + 1
    counts = x @ F.one_hot(torch.as_tensor(labels).long(), k).float()
    feats, own, target = counts[:-1], x[:-1], x[1:]
    split = int(train * (n_bins - 1))
    z = (feats - feats[:split].mean(0)) / feats[:split].std(0).clamp_min(1e-6)

    def logits(p: torch.Tensor, rows: slice) -> torch.Tensor:
        return z[rows] @ p[:, :k].T + own[rows] * p[:, k] + p[:, k + 1]

    def evaluate(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = p.detach().requires_grad_()
        loss = F.binary_cross_entropy_with_logits(logits(p, slice(0, split)), target[:split], reduction="none").mean(0)
        loss = loss + ridge * (p[:, :k + 1].square().sum(1))
        loss.sum().backward()
        return loss.detach().double(), p.grad

    start = torch.zeros(n, k + 2)
    start[:, k + 1] = torch.logit(target[:split].mean(0).clamp(1e-4, 1 - 1e-4))
    p = rowwise_lbfgs(evaluate, start, max_evals=100)["x"]
    per_bin = F.binary_cross_entropy_with_logits(logits(p, slice(split, None)), target[split:],
                                                 reduction="none").mean(1)
    per_block = per_bin[: len(per_bin) // blocks * blocks].reshape(blocks, -1).mean(1)
    return float(per_bin.mean()), per_block.tolist()


def choose(cands: dict, rule: str) -> str:
    if rule == "leiden":
        return "leiden1.0"
    best = min(cands, key=lambda c: cands[c]["nll"])
    if rule == "min":
        return best
    z = {"1se": 1.0, "2se": 2.0}[rule]
    near = []
    for name, c in cands.items():
        d = np.asarray(c["blocks"]) - np.asarray(cands[best]["blocks"])
        if d.mean() <= z * d.std(ddof=1) / np.sqrt(len(d)):
            near.append(name)
    return min(near, key=lambda c: (cands[c]["k"], cands[c]["nll"]))


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    rows = []
    for fraction in (1.0, 0.5, 0.2):
        for family in FAMILIES:
            for seed in (0, 1, 2):
                data, _ = simulate(family, "kising", 10_000, seed)
                if fraction < 1:
                    data = data.subsample(fraction, seed=seed)
                planted = data.observed_communities().numpy()
                coupling = infer_couplings(data.spikes)
                partitions = {f"leiden{r}": find_communities(coupling, "leiden", resolution=r).numpy()
                              for r in RESOLUTIONS}
                partitions.update({f"ms{t}": find_communities(coupling, "markov_stability", markov_time=t).numpy()
                                   for t in MARKOV_TIMES})
                cands = {}
                for name, lab in partitions.items():
                    nll, blocks = community_glm_nll(data.spikes, lab)
                    cands[name] = {"nll": nll, "blocks": blocks, "ami": ami(planted, lab), "k": len(np.unique(lab))}
                rows.append({"family": family, "fraction": fraction, "seed": seed,
                             "k_planted": len(np.unique(planted)), "candidates": cands})
                print(f"{family} {fraction:g} seed {seed}: " + ", ".join(
                    f"{rule} {cands[choose(cands, rule)]['ami']:.3f}" for rule in ("leiden", "min", "1se")), flush=True)
    atomic_write(RESULTS, json.dumps(rows, indent=1))
    rules = ("leiden", "min", "1se", "2se")
    print("\n| family | observed | " + " | ".join(rules) + " | oracle |\n|---|---|" + "---|" * (len(rules) + 1))
    means = {r: [] for r in rules + ("oracle",)}
    k_err = {r: [] for r in rules}
    for fraction in (1.0, 0.5, 0.2):
        for family in FAMILIES:
            cell = [r for r in rows if r["family"] == family and r["fraction"] == fraction]
            line = []
            for rule in rules:
                picks = [r["candidates"][choose(r["candidates"], rule)] for r in cell]
                means[rule].append(statistics.fmean(p["ami"] for p in picks))
                k_err[rule] += [abs(p["k"] - r["k_planted"]) / r["k_planted"] for p, r in zip(picks, cell)]
                line.append(f"{means[rule][-1]:.3f}")
            means["oracle"].append(statistics.fmean(max(c["ami"] for c in r["candidates"].values()) for r in cell))
            print(f"| {family} | {fraction:.0%} | " + " | ".join(line) + f" | {means['oracle'][-1]:.3f} |")
    print("| mean | | " + " | ".join(f"{statistics.fmean(means[r]):.3f}" for r in rules + ("oracle",)) + " |")
    print("median K error: " + ", ".join(f"{r} {100 * float(np.median(k_err[r])):.0f} %" for r in rules))


if __name__ == "__main__":
    main()
