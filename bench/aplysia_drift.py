"""How much of the Aplysia recordings' non-stationarity a slowly varying baseline explains.

    python bench/aplysia_drift.py [--spacings 30 10] [--strength 0.01]

Each neuron gets a firing probability sigma(b_i + sum_k a_ik phi_k(t)) that depends on the time t in the recording
only: phi_k are Gaussian bumps of width s centred every s seconds (``--spacings``), so the baseline can follow
drifts and the stimulus response (one stimulus per recording, at 30 s: time since the stimulus is time in the
recording) on time scales of s and longer. Fitted by L-BFGS with a ridge ``--strength`` on a, on the training
blocks of the data module's split (20 contiguous blocks, as every model in bench/aplysia.py), scored on the
validation and test blocks against the constant-rate null on the same bins. Writes
``bench/results/aplysia_drift.json`` and prints a line per recording and a summary.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dgrn.data import aplysia_recordings, atomic_write  # noqa: E402
from dgrn.data.windows import block_split  # noqa: E402
from dgrn.models import SpikeDataModule  # noqa: E402


def bumps(n_bins: int, dt: float, spacing_s: float) -> torch.Tensor:
    """``(T, K)`` Gaussian bumps of width ``spacing_s`` centred every ``spacing_s`` seconds over the recording."""
    t = torch.arange(n_bins, dtype=torch.float64) * dt
    centres = torch.arange(0.0, float(t[-1]) + spacing_s, spacing_s, dtype=torch.float64)
    return torch.exp(-0.5 * ((t[:, None] - centres[None]) / spacing_s) ** 2)


def fit_baseline(x: torch.Tensor, basis: torch.Tensor, train: torch.Tensor, strength: float) -> torch.Tensor:
    """Logits ``(T, N)`` of the time-varying baseline fitted on the bins ``train`` (all neurons at once)."""
    rate = x[train].mean(0).clamp(1e-4, 1 - 1e-4)
    bias = torch.log(rate / (1 - rate)).requires_grad_(True)
    weight = torch.zeros(basis.shape[1], x.shape[1], dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([bias, weight], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = basis[train] @ weight + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, x[train]) + strength * weight.pow(2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return (basis @ weight + bias).detach()


def nll(logits: torch.Tensor, x: torch.Tensor) -> float:
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spacings", nargs="+", type=float, default=[30.0, 10.0])
    parser.add_argument("--strength", type=float, default=0.01)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "aplysia_drift.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for rec in aplysia_recordings():
        dm = SpikeDataModule(dataset={"name": "aplysia", "recording": rec, "dt": 0.02})  # the data=aplysia split
        data, hp = dm.spike_data, dm.hparams
        x = data.spikes.clamp(max=1).double()
        segments = block_split(data.n_bins, hp.val_fraction, hp.test_fraction, hp.n_blocks, hp.split_seed)
        bins = {split: torch.cat([torch.arange(a, b) for a, b in segments[split]]) for split in ("train", "val", "test")}
        rate = x[bins["train"]].mean(0).clamp(1e-6, 1 - 1e-6)
        null = torch.log(rate / (1 - rate)).expand_as(x)
        row = {"null": {s: nll(null[bins[s]], x[bins[s]]) for s in ("val", "test")}}
        for spacing in args.spacings:
            logits = fit_baseline(x, bumps(data.n_bins, data.dt, spacing), bins["train"], args.strength)
            row[f"baseline_{spacing:g}s"] = {s: nll(logits[bins[s]], x[bins[s]]) for s in ("val", "test")}
        results[rec] = row
        print(rec, "  ".join(f"{k} val {v['val']:.5f} test {v['test']:.5f}" for k, v in row.items()), flush=True)
    atomic_write(Path(args.out), json.dumps({"strength": args.strength, "recordings": results}, indent=1))
    print(f"\n{len(results)} recordings; test NLL, nats per neuron-bin (median), and how often below the null")
    for key in results[next(iter(results))]:
        test = [r[key]["test"] for r in results.values()]
        gains = [r["null"]["test"] - r[key]["test"] for r in results.values()]
        val_wins = sum(r[key]["val"] < r["null"]["val"] for r in results.values())
        print(f"{key:16} median {statistics.median(test):.5f}  mean gain over the null {statistics.mean(gains):+.5f}"
              f"  below the null: test {sum(g > 0 for g in gains)}, validation {val_wins} of {len(results)}")


if __name__ == "__main__":
    main()
