"""DGRN benchmark: held-out NLL and bits per spike of DGRN against its baselines, coarse-to-fine NLL, entropy per
unit across levels, training throughput.

    python bench/dgrn.py [--datasets kising lif] [--fractions 0.5 0.2] [--seeds 0 1 2] [--epochs 12] [--jobs 2]
    python bench/dgrn.py --keep runs/      # keep every run folder (checkpoints, metrics.json)
    python bench/dgrn.py --collect runs/   # report the finished runs of a kept folder, without training

Every number comes from the real pipeline: ``train.py`` in subprocesses (two at a time, one thread each), the same
data file and contiguous-block splits for every model, the best-validation checkpoint scored on the test split.
Seeds vary which neurons are observed (``data.subsample_seed``) and the training seed. Models: ``independent``,
``glm``, ``gru`` (factorized Bernoulli read-out), ``factorized`` (DGRN's fine-scale context network, GRU + the
neurons' last bins, with a factorized Bernoulli read-out, trained in one stage), ``cmps`` (DGRN's decoder at the
fine scale only: ``renorm=none``) and ``dgrn`` (the experiment's renormalization levels). Writes
``bench/results/dgrn.json`` and ``bench/results/dgrn_entropy.png``.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dgrn.data import atomic_write  # noqa: E402

DATASETS = {  # the data of experiment=dgrn_kising / dgrn_lif; the LIF network is simulated once and read from a file
    "kising": ["data=kising"],
    "lif": {"name": "clustered_lif", "preset": "small", "duration_s": 40.0, "dt": 0.005, "seed": 0},
}
MODELS = {
    "independent": ["model=independent"],
    "glm": ["model=glm"],
    "gru": ["model=gru"],
    # DGRN's fine-scale context network (GRU + the neurons' last bins) with a factorized Bernoulli read-out (a bond
    # dimension 1 MPS is a product of per-neuron Bernoullis), trained in one stage with early stopping: what the
    # tensor-network decoder adds over it
    "factorized": ["model=dgrn", "renorm=none", "model.net.bond_dim=1", "model.net.rank=0",
                   "model.factorized_epochs=null"],
    "cmps": ["model=dgrn", "renorm=none"],
    "dgrn": ["model=dgrn", "renorm=community_lrg"],
}


def one_thread_env() -> dict[str, str]:
    """The environment of a benchmark's worker process: one thread, numba's pool included (two processes with its
    default pool, a worker per core, drew 4.6 times slower than one alone; with one worker each, 1.2 times)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def run_train(overrides: list[str], run_dir: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "train.py", f"hydra.run.dir={run_dir}", "logger=none", *overrides],
                          cwd=ROOT, capture_output=True, text=True, env=one_thread_env())
    if proc.returncode:
        raise RuntimeError(f"train.py {' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
    out = json.loads((run_dir / "metrics.json").read_text())
    out["seconds"] = time.perf_counter() - start
    return out


def independent_c2f(best_checkpoint: str, data_file: Path | None = None) -> dict:
    """NLL per neuron of the fine level given the coarse level under independent neurons at their training-split
    rates, with the DGRN run's own hierarchy, on the same test split: the baseline of DGRN's ``c2f_nll``.
    ``data_file``: where the run's recording is now, for runs trained from a file that has since moved."""
    import torch

    from dgrn.models import DGRN, SpikeDataModule
    from dgrn.runner import load_checkpoint
    from dgrn.tn import ConditionalMPS

    ckpt = load_checkpoint(best_checkpoint)
    model = DGRN(**ckpt["hyper_parameters"])
    dm_hparams = ckpt["datamodule_hyper_parameters"]
    if data_file is not None and dm_hparams["dataset"].get("name") == "file":
        dm_hparams = {**dm_hparams, "dataset": {**dm_hparams["dataset"], "path": str(data_file)}}
    dm = SpikeDataModule(**dm_hparams)
    rate = dm.split_spikes("train").double().mean(0).clamp(1e-6, 1 - 1e-6)
    test = dm.split_spikes("test").double()
    net = model.net
    n = test.shape[1]
    # independent neurons = a bond-dimension-1 conditional MPS with constant fields at the rates; its restricted
    # log_prob conditions exactly on the coarse state (any pooling thresholds) in the run's decoder order
    independent = ConditionalMPS(n, 1, 1, rank=0).double()
    with torch.no_grad():
        independent.core.fill_(1.0)
        independent.field.bias.view(n, 2)[:, 1] = (rate / (1 - rate)).log()[torch.argsort(net._index(0).cpu())]
    # (the decoder's field bound makes a neuron silent in training fire at e^-12, not at the 1e-6 clamp above)
    with torch.no_grad():
        x, context = net.pool(test)[:2], torch.zeros(test.shape[0], 1, dtype=torch.float64)
        fine = (x[0] > 0).long()
        cond = independent.log_prob(fine, context, net.groups_0.cpu(), x[1].bool(), net.thresholds[0])
        return {"c2f_nll": float(-cond.mean() / n), "nll": float(-independent.log_prob(fine, context).mean() / n)}


@functools.cache
def _kising_recording():
    """The full (unsubsampled) recording of ``data=kising``, simulated once for every (fraction, seed)."""
    from omegaconf import OmegaConf

    from dgrn.datasets import build_dataset

    spec = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "data" / "kising.yaml"))["dataset"]
    return build_dataset(spec.pop("name"), **spec)


def _kising_run_split(fraction: float, seed: int):
    """The full recording of ``data=kising``, the neurons observed by the run with ``data.observed_fraction=fraction``
    and ``data.subsample_seed=seed``, and that config's contiguous-block splits (``{split: [(start, stop)]}``)."""
    from omegaconf import OmegaConf

    from dgrn.data.windows import block_split

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "data" / "kising.yaml"))
    full = _kising_recording()
    observed = full.subsample(fraction, seed=seed, strategy=cfg["subsample_strategy"]).observed
    segments = block_split(full.n_bins, cfg["val_fraction"], cfg["test_fraction"], cfg["n_blocks"], cfg["split_seed"])
    return full, observed, segments


def kising_oracle(fraction: float, seed: int) -> float:
    """Test NLL (nats per observed neuron-bin) of the true kinetic-Ising model given the *full* previous state, hidden
    neurons included, on the observed neurons of the run with ``data.observed_fraction=fraction`` and
    ``data.subsample_seed=seed``. Conditioning on less information cannot lower a conditional entropy, so no model
    of the observed past has a lower expected test NLL: this is the headroom above every model of the table.
    Scored on every test bin after the first of each test block (the models skip their context bins of each window,
    a few bins fewer)."""
    import torch

    full, observed, segments = _kising_run_split(fraction, seed)
    w = full.true_couplings
    w = (w.to_dense() if w.layout != torch.strided else w).double()
    bias = torch.tensor(full.meta["bias"], dtype=torch.float64)
    x = full.spikes.double()
    # P(x_i(t+1) = 1 | x(t)) = sigmoid(h_i + sum_j W_ij x_j(t)), the simulator's own dynamics
    nll = [torch.nn.functional.binary_cross_entropy_with_logits(
        x[a: b - 1] @ w[observed].T + bias[observed], x[a + 1: b, observed], reduction="none")
        for a, b in segments["test"]]
    return float(torch.cat(nll).mean())


def kising_reference(fraction: float, seed: int, history: int, within_bin: bool,
                     ridges: tuple[float, ...] = (1e-7, 1e-6, 1e-5, 1e-4)) -> float:
    """Test NLL (nats per observed neuron-bin) of an exactly normalized model of the *observed* neurons fitted here:
    a lag-``history`` logistic GLM and, with ``within_bin``, couplings from the lower-numbered neurons of the same
    bin (a fully visible sigmoid belief net given the past: an autoregressive joint of each bin, so it can model the
    instantaneous correlations that hidden neurons leave). Maximum likelihood by L-BFGS on the training blocks with
    a ridge penalty (per neuron-bin) chosen on the validation blocks from ``ridges``, scored on every test bin after
    the first ``history`` of each block. How far the richest such reference gets below the lag-1 GLM says how much
    a model of the observed past can gain over the GLM on these data (the full-state bound is far lower, but the
    hidden neurons' states are not recoverable from the observed past)."""
    import torch

    full, observed, segments = _kising_run_split(fraction, seed)
    x = full.spikes.double()[:, observed]

    def design(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = [x[a:b] for a, b in segments[split]]
        past = torch.cat([torch.cat([blk[history - k: len(blk) - k] for k in range(1, history + 1)], 1)
                          for blk in blocks])
        return past, torch.cat([blk[history:] for blk in blocks])

    data = {split: design(split) for split in ("train", "val", "test")}
    n = x.shape[1]
    lower = torch.tril(torch.ones(n, n, dtype=torch.float64), -1)  # neuron i sees neurons j < i of its own bin

    def nll(params, past, now):
        weight, bias, within = params
        return torch.nn.functional.binary_cross_entropy_with_logits(past @ weight.T + bias + now @ (within * lower).T,
                                                                    now)

    def fit(ridge):
        params = [torch.zeros(n, n * history, dtype=torch.float64, requires_grad=True),
                  torch.zeros(n, dtype=torch.float64, requires_grad=True),
                  torch.zeros(n, n, dtype=torch.float64, requires_grad=within_bin)]
        opt = torch.optim.LBFGS([p for p in params if p.requires_grad], max_iter=300, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9)

        def closure():
            opt.zero_grad()
            loss = nll(params, *data["train"]) + ridge * (params[0].pow(2).sum() + params[2].pow(2).sum())
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            return float(nll(params, *data["val"])), float(nll(params, *data["test"]))

    return min(fit(r) for r in ridges)[1]


def oracles(rows: list[dict]) -> list[dict]:
    """:func:`kising_oracle` and the :func:`kising_reference` models for every (fraction, seed) of the
    kinetic-Ising rows."""
    keys = dict.fromkeys((r["fraction"], r["seed"]) for r in rows if r["dataset"] == "kising" and "error" not in r)
    return [{"dataset": "kising", "fraction": f, "seed": s, "nll": kising_oracle(f, s),
             "glm_lag1": kising_reference(f, s, 1, False), "glm_lag1_within_bin": kising_reference(f, s, 1, True),
             "glm_lag5_within_bin": kising_reference(f, s, 5, True)}
            for f, s in keys]


def fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", default=None, help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("--collect", default=None,
                        help="no training: report the runs already finished in this --keep folder")
    args = parser.parse_args()
    if args.collect:
        return collect(Path(args.collect))
    from dgrn.datasets import build_dataset

    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": vars(args), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.keep) if args.keep else Path(tmp)
        runs.mkdir(parents=True, exist_ok=True)
        jobs = []
        for ds in args.datasets:
            spec = DATASETS[ds]
            if isinstance(spec, dict):
                path = runs / f"{ds}.npz"  # kept with the runs, so --collect can score them again
                start = time.perf_counter()
                build_dataset(spec["name"], **{k: v for k, v in spec.items() if k != "name"}).save(path)
                print(f"[bench] simulated {ds} in {time.perf_counter() - start:.0f} s", flush=True)
                spec = ["data=file", f"data.dataset.path={path}", "data.window=32", "data.batch_size=8"]  # as dgrn_lif
            for fraction in args.fractions:
                for seed in args.seeds:
                    for model in args.models:
                        overrides = [*spec, f"data.observed_fraction={fraction}",
                                     f"data.subsample_seed={seed}", f"seed={seed}",
                                     f"trainer.max_epochs={args.epochs}", *MODELS[model]]
                        jobs.append(((ds, fraction, seed, model), overrides, runs / f"{ds}_{fraction}_{seed}_{model}"))

        def work(job):
            key, overrides, run_dir = job
            try:
                res = run_train(overrides, run_dir)
            except RuntimeError as err:  # keep the other runs; the failure is reported in the table
                print(f"[bench] {key}: FAILED\n{err}", flush=True)
                return {"dataset": key[0], "fraction": key[1], "seed": key[2], "model": key[3], "error": str(err)}
            print(f"[bench] {key}: test/nll {res['metrics'].get('test/nll', float('nan')):.5f} "
                  f"({res['seconds']:.0f} s)", flush=True)
            row = {"dataset": key[0], "fraction": key[1], "seed": key[2], "model": key[3], "metrics": res["metrics"],
                   "seconds": res["seconds"], "windows_per_second": res.get("train_windows_per_second")}
            if key[3] == "dgrn":
                row["independent"] = independent_c2f(res["best_checkpoint"])
            return row

        with ThreadPoolExecutor(args.jobs) as pool:
            results["rows"] = list(pool.map(work, jobs))
    results["oracle"] = oracles(results["rows"])
    atomic_write(out_dir / "dgrn.json", json.dumps(results, indent=2))
    report(results, out_dir)


def collect(folder: Path) -> None:
    """Rebuild the results of a (possibly unfinished) benchmark from the run folders it keeps."""
    rows = []
    for run in sorted(folder.glob("*_*_*_*")):
        ds, fraction, seed, model = run.name.split("_")
        metrics_file = run / "metrics.json"
        if not metrics_file.is_file():
            continue
        out = json.loads(metrics_file.read_text())
        row = {"dataset": ds, "fraction": float(fraction), "seed": int(seed), "model": model,
               "metrics": out["metrics"], "windows_per_second": out.get("train_windows_per_second")
               or out["metrics"].get("train/windows_per_second")}  # (runs before it moved out of the metrics)
        if model == "dgrn":
            data_file = folder / f"{ds}.npz"
            row["independent"] = independent_c2f(out["best_checkpoint"], data_file if data_file.is_file() else None)
        rows.append(row)
    order = {m: i for i, m in enumerate(MODELS)}
    rows.sort(key=lambda r: (r["dataset"], -r["fraction"], order[r["model"]], r["seed"]))
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"collected_from": str(folder), "rows": rows, "oracle": oracles(rows)}
    atomic_write(out_dir / "dgrn.json", json.dumps(results, indent=2))
    report(results, out_dir)


def report(results: dict, out_dir: Path) -> None:
    failed = [r for r in results["rows"] if "error" in r]
    rows = [r for r in results["rows"] if "error" not in r]
    for r in failed:
        print(f"FAILED: {r['dataset']} {r['fraction']:.0%} seed {r['seed']} {r['model']}")
    print("\nheld-out test split; mean ± sd over seeds; NLL in nats per neuron-bin")
    print(f"{'data':7s} {'obs':>4s} {'model':12s} {'NLL':>17s} {'bits/spike':>17s} {'windows/s':>10s}")
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        for fraction in dict.fromkeys(r["fraction"] for r in rows if r["dataset"] == ds):
            sel = [r for r in rows if r["dataset"] == ds and r["fraction"] == fraction]
            for model in dict.fromkeys(r["model"] for r in sel):
                runs = [r["metrics"] for r in sel if r["model"] == model]
                tput = statistics.mean(r.get("windows_per_second") or float("nan") for r in sel if r["model"] == model)
                print(f"{ds:7s} {fraction:>4.0%} {model:12s} {fmt([m['test/nll'] for m in runs]):>17s} "
                      f"{fmt([m['test/bits_per_spike'] for m in runs]):>17s} {tput:>10.1f}")
            by_seed = {}
            for r in sel:
                by_seed.setdefault(r["seed"], {})[r["model"]] = r["metrics"]["test/nll"]
            if all("dgrn" in v for v in by_seed.values()):
                for base in ("independent", "glm", "gru", "factorized", "cmps"):
                    margins = [v[base] - v["dgrn"] for v in by_seed.values() if base in v]
                    if margins:
                        print(f"{'':7s} {'':>4s} margin NLL({base}) - NLL(dgrn): {fmt(margins)}")
            oracle = {o["seed"]: o["nll"] for o in results.get("oracle", [])
                      if o["dataset"] == ds and o["fraction"] == fraction}
            if oracle:
                print(f"{'':7s} {'':>4s} {'full-state bound':17s} {fmt(list(oracle.values())):>17s}  "
                      "(true model given hidden neurons too: no model of the observed past goes below it)")
                for model in ("glm", "dgrn"):
                    gaps = [v[model] - oracle[s] for s, v in by_seed.items() if model in v and s in oracle]
                    if gaps:
                        print(f"{'':7s} {'':>4s} NLL({model}) - bound: {fmt(gaps)}")
                refs = [o for o in results.get("oracle", []) if o["dataset"] == ds and o["fraction"] == fraction
                        and "glm_lag5_within_bin" in o]
                if refs:
                    print(f"{'':7s} {'':>4s} observed-data references fitted by L-BFGS (kising_reference): lag-1 GLM "
                          f"{fmt([o['glm_lag1'] for o in refs])}; GLM - (lag-1 + within-bin couplings) "
                          f"{fmt([o['glm_lag1'] - o['glm_lag1_within_bin'] for o in refs])}; "
                          f"GLM - (lag-5 + within-bin) "
                          f"{fmt([o['glm_lag1'] - o['glm_lag5_within_bin'] for o in refs])}")
            if all("dgrn" in v for v in by_seed.values()):
                c2f = [(r["metrics"]["test/c2f_nll"], r["independent"]["c2f_nll"]) for r in sel if r["model"] == "dgrn"]
                print(f"{'':7s} {'':>4s} coarse-to-fine NLL per neuron: dgrn {fmt([a for a, _ in c2f])}, "
                      f"independent {fmt([b for _, b in c2f])}")
    print(f"written to {out_dir / 'dgrn.json'}")


if __name__ == "__main__":
    main()
