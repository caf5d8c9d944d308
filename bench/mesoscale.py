"""Evaluation at every scale: fine-scale NLL, coarse-state forecasting and free-running generation, every model on
the same data, neurons and splits.

    python bench/mesoscale.py [--datasets kising_hmm kising_hmm50 metastable lkd2012 lkd2012_5 lkd2012_block
                                          aplysia] [--seeds 0 1 2]
                              [--models independent glm glm_long hmm hmm_glm gru cmps dgrn_latent_stable_lasso]
                              [--jobs 2] [--patience 3] [--runs-dir DIR] [--nll-only]

``--models`` defaults to ``DEFAULT_MODELS``: the baselines and DGRN with the recipe that is its best on ``lkd2012``
(``dgrn_latent_stable_lasso``: no temporal renormalization). The other variants of ``MODELS`` (``dgrn``, the config's
defaults; ``dgrn_temporal``, with temporal renormalization, which chose no coarser clock on the LIF data and lost on
the hidden-Markov kinetic Ising network; ``glm_lasso``, ``hmm_glm_lasso``, ``dgrn_latent``, ``dgrn_latent_stable``,
``dgrn_mixture``, ``dgrn_mixture_lasso``) are the steps measured on the way, run when named. Every model stops
training after ``--patience`` epochs without a better validation NLL, or after ``--epochs`` (12), and is scored from
its best epoch.

Datasets (each simulated once per seed into ``--data-dir``, then read by ``data=file``, so every model sees the
same recording): ``kising_hmm`` / ``kising_hmm50`` (the hidden-Markov kinetic Ising network, 100 % / 50 %
observed: slow community switching with an exact reference NLL at 100 %), ``metastable`` (the 1500-neuron LIF
network in the Litwin-Kumar & Doiron regime, 300 s in 10 ms bins, 20 % of its excitatory neurons observed),
``lkd2012`` / ``lkd2012_5`` / ``lkd2012_block`` (the 5000-neuron Litwin-Kumar & Doiron network, 300 s in 5 ms bins,
seed = network seed; 20 % or 5 % of its excitatory neurons observed at random, or 5 % as a contiguous block: a few
whole clusters; about 10 minutes of simulation each),
``aplysia`` (a real recording: seed ``s`` is the ``s``-th recording); ``--jobs`` recordings are simulated at once,
one thread each. Every model is trained by ``train.py`` (best validation checkpoint), then, from its
checkpoint:

* ``test_nll``: nats per neuron-bin on the test split (and bits per spike);
* coarse-state forecasting: the coarse state is which units are active in 50 ms windows (the rate rule of
  :func:`dgrn.mesoscale.coarse_states` with the training split's mean rate, ``ACTIVE_FACTOR``), units being the planted communities of
  the observed neurons (simulations; inhibitory LIF neurons left out) or the communities found on the training
  split's correlations (real data), the same for every model. From ``--contexts`` points of the test split, each
  model draws ``--rollouts`` continuations (:func:`dgrn.mesoscale.rollout`, fed back a training window's length of
  past, ``data.window`` bins; in chunks of at most ``CHUNK_ELEMENTS`` past bins x neurons) and forecasts the state of
  the window ending 50, 200 and 500 ms later (``(hits + 0.5) / (rollouts + 1)``): log-likelihood and AUROC;
* free-running generation: ``--generate-s`` seconds from ``--chains`` chains after the first test context, against
  the whole test split: KS statistic of the active-state durations, total variation of the number of active units,
  RMS errors of rates, Fano factors and pairwise correlations at 250 ms (:func:`dgrn.mesoscale.compare_statistics`).

Writes ``bench/results/mesoscale.json`` (each result saved as soon as it is known; a rerun skips what is there,
``--fresh`` starts over) and prints per dataset every model's mean and spread over seeds and DGRN's margin over the
best other model (:func:`summarize`), then the wall time and the peak resident memory of the largest process.
``--nll-only`` trains and scores the NLL alone.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dgrn import one_thread_env, run_train  # noqa: E402
from dgrn.data import atomic_write  # noqa: E402

MODELS = {
    "independent": ["model=independent", "renorm=none"],
    "glm": ["model=glm", "renorm=none"],
    "glm_long": ["model=glm_long", "renorm=none"],  # history set to 200 ms per dataset below
    "hmm": ["model=hmm", "renorm=none"],
    "hmm_glm": ["model=hmm_glm", "renorm=none"],  # one chain per community of the inferred graph, GLM couplings
    "gru": ["model=gru", "renorm=none"],
    "cmps": ["model=dgrn", "renorm=none"],  # the ConditionalMPS decoder alone
    "dgrn": ["model=dgrn", "renorm=community_lrg"],
    "dgrn_temporal": ["model=dgrn", "renorm=community_lrg", "renorm.time_scales=auto"],
    # one level of communities, each with a hidden 2-state chain that switches how it fires
    "dgrn_latent": ["model=dgrn", "renorm=community_lrg", "renorm.levels=1", "model.net.latent_states=2"],
    # the same with the communities of Leiden at its most stable resolution (resolves clusters below modularity's
    # resolution limit) instead of the pretrained encoder
    "dgrn_latent_stable": ["model=dgrn", "renorm=community_lrg", "renorm.levels=1", "model.net.latent_states=2",
                           "model.communities=leiden_stable"],
    # latent chains whose states also switch how every neuron of their community fires (a mixture at the fine level),
    # filtered on all of them
    "dgrn_mixture": ["model=dgrn", "renorm=community_lrg", "renorm.levels=1", "model.net.latent_states=2",
                     "model.net.latent_mixture=true"],
    # a lasso on the couplings (model.l1, per neuron-bin; 3e-4 is the best validation NLL of the switching GLM fitted
    # with the true communities on kising_hmm seed 0 among 3e-5..1e-3: `bench/hidden_drive_floor.py --switching-l1`),
    # the mixture with a lower learning rate and a longer first stage
    "glm_lasso": ["model=glm", "renorm=none", "model.l1=3e-4"],
    "hmm_glm_lasso": ["model=hmm_glm", "renorm=none", "model.l1=3e-4"],
    # the stable communities with a lasso on the couplings; 1e-4: the best validation NLL of the lag-1 GLM among
    # 0, 1e-4, 3e-4, 1e-3 on lkd2012_5 seed 0 (0.09026 against 0.09105 without)
    "dgrn_latent_stable_lasso": ["model=dgrn", "renorm=community_lrg", "renorm.levels=1", "model.net.latent_states=2",
                                 "model.communities=leiden_stable", "model.l1=1e-4"],
    "dgrn_mixture_lasso": ["model=dgrn", "renorm=community_lrg", "renorm.levels=1", "model.net.latent_states=2",
                           "model.net.latent_mixture=true", "model.l1=3e-4", "model.lr=0.005",
                           "model.factorized_epochs=6", "trainer.max_epochs=14"],
}

#: what a run without ``--models`` trains: the issue's baselines and the recipe that is DGRN's best on lkd2012 (stable
#: communities, latent chains, the lasso)
DEFAULT_MODELS = ["independent", "glm", "glm_long", "hmm", "hmm_glm", "gru", "cmps", "dgrn_latent_stable_lasso"]

#: the rate rule of the coarse state per dataset (dgrn.mesoscale.coarse_states: active above this many times the mean
#: rate): the hidden drive of kinetic Ising switches communities *off* (about 7 times fewer spikes), so a community is
#: "on" above half the mean rate; a LIF cluster or a real community is active at 3 times the mean
ACTIVE_FACTOR = {"kising_hmm": 0.5, "kising_hmm50": 0.5, "metastable": 3.0, "lkd2012": 3.0, "lkd2012_5": 3.0,
                 "lkd2012_block": 3.0, "aplysia": 3.0}
#: dataset -> (build_dataset spec per seed, train.py overrides, dt)
DATASETS = {
    "kising_hmm": (lambda s: dict(name="hidden_markov_kinetic_ising", n=100, t=50000, n_communities=4, n_states=2,
                                  dwell=[20, 200], drive=-2.0, seed=s), ["data.observed_fraction=1.0"], 0.01),
    "kising_hmm50": (lambda s: dict(name="hidden_markov_kinetic_ising", n=100, t=50000, n_communities=4,
                                    n_states=2, dwell=[20, 200], drive=-2.0, seed=s),
                     ["data.observed_fraction=0.5"], 0.01),
    "metastable": (lambda s: dict(name="clustered_lif", preset="metastable", duration_s=300.0, dt=0.01, seed=s),
                   ["data.observed_fraction=0.2", "data.subsample_population=excitatory"], 0.01),
    "lkd2012": (lambda s: dict(name="clustered_lif", preset="lkd2012", duration_s=300.0, dt=0.005, seed=s),
                ["data.observed_fraction=0.2", "data.subsample_population=excitatory"], 0.005),
    "lkd2012_5": (lambda s: dict(name="clustered_lif", preset="lkd2012", duration_s=300.0, dt=0.005, seed=s),
                  ["data.observed_fraction=0.05", "data.subsample_population=excitatory"], 0.005),
    "lkd2012_block": (lambda s: dict(name="clustered_lif", preset="lkd2012", duration_s=300.0, dt=0.005, seed=s),
                      ["data.observed_fraction=0.05", "data.subsample_population=excitatory",
                       "data.subsample_strategy=block"], 0.005),
    "aplysia": (lambda s: dict(name="aplysia", recording=s, dt=0.02), ["data.window=32", "data.batch_size=8"], 0.02),
}
WINDOW_S, HORIZONS_S, CORR_S = 0.05, (0.05, 0.2, 0.5), 0.25
#: rollouts drawn at once hold at most this many past bins x neurons (64M: 256 MB of float32 pasts; a switching
#: GLM's filter holds a few times that), so that 800 neurons fit in memory beside another job
CHUNK_ELEMENTS = 2**26


def data_file(name: str, seed: int, folder: Path, *, build: bool = True) -> Path:
    """The recording of ``name`` at ``seed``, simulated (or read) once and saved (``build=False``: its path only;
    the ``lkd2012`` datasets of one seed share one recording)."""
    from dgrn.data import aplysia_recordings
    from dgrn.datasets import build_dataset

    spec = DATASETS[name][0](aplysia_recordings()[seed] if name == "aplysia" else seed)
    path = folder / f"{'_'.join(str(v) for v in spec.values() if not isinstance(v, list))}.npz"
    if build and not path.exists():
        import torch

        torch.set_num_threads(1)  # one recording a process, --jobs of them at once
        folder.mkdir(parents=True, exist_ok=True)
        build_dataset(spec.pop("name"), **spec).save(path)
    return path


def overrides(model: str, dataset: str, path: Path, seed: int, epochs: int) -> list[str]:
    dt = DATASETS[dataset][2]
    out = ["data=file", f"data.dataset.path={path}", f"seed={seed}", *DATASETS[dataset][1], *MODELS[model]]
    if model == "glm_long":
        out.append(f"model.net.history={round(0.2 / dt)}")
    if dataset == "aplysia" and model.startswith(("dgrn", "cmps")):  # the recipe of experiment=dgrn_aplysia
        out += ["model.init=rates", "model.lr=0.005"]
    if epochs:
        out.append(f"trainer.max_epochs={epochs}")
    return out


def evaluate(checkpoint: str, *, contexts: int, rollouts: int, generate_s: float, chains: int, seed: int,
             active_factor: float) -> dict:
    """Forecasting and generation scores of one trained checkpoint (run in its own process)."""
    import torch

    from dgrn.graph import correlation, find_communities
    from dgrn.mesoscale import activity_statistics, coarse_states, compare_statistics, forecast_scores, rollout
    from dgrn.models import SpikeDataModule, module_for
    from dgrn.data.windows import block_split
    from dgrn.runner import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    module = module_for(ckpt["hyper_parameters"])(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    net = module.net.eval()
    dm = SpikeDataModule(**ckpt["datamodule_hyper_parameters"])
    data = dm.spike_data
    x = data.spikes.clamp(max=1).float()
    train = dm.split_spikes("train").clamp(max=1).float()
    rate = float(train.mean())
    labels = data.observed_communities()
    if labels is None:  # real data: communities of the training split's correlations, the same for every model
        labels = find_communities(correlation(train))
    labels = torch.as_tensor(labels).long().clone()
    if "n_exc" in data.meta:  # LIF: the inhibitory population is not a cluster
        labels[torch.as_tensor(data.observed) >= int(data.meta["n_exc"])] = -1
    per_window = max(1, round(WINDOW_S / data.dt))
    horizons = [max(per_window, round(h / data.dt)) for h in HORIZONS_S]
    hp = dm.hparams
    segments = block_split(data.n_bins, hp.val_fraction, hp.test_fraction, hp.n_blocks, hp.split_seed)["test"]
    past = int(hp.window)  # the past a training window gives the model
    gen = torch.Generator().manual_seed(seed)
    starts = torch.cat([torch.arange(a + past, b - horizons[-1] + 1) for a, b in segments
                        if b - a > past + horizons[-1]])
    starts = starts[torch.randperm(starts.numel(), generator=gen)[:contexts]].sort().values
    windows = torch.stack([x[t - past:t] for t in starts.tolist()])
    begin = time.perf_counter()
    chunk_size = max(1, CHUNK_ELEMENTS // (past * x.shape[1]))
    drawn = rollout(net, windows, horizons[-1], rollouts, generator=gen, chunk_size=chunk_size)  # (C, R, H, N)
    forecast_seconds = time.perf_counter() - begin
    out = {"forecast_seconds": forecast_seconds}
    rule = dict(reference_rate=rate, active_factor=active_factor)
    units = labels[labels >= 0].unique()
    for h, h_s in zip(horizons, HORIZONS_S):
        pred = coarse_states(drawn[:, :, h - per_window:h], labels, per_window, **rule)[:, :, 0]  # (C, R, K)
        truth = torch.stack([coarse_states(x[t + h - per_window:t + h], labels, per_window, **rule)[0]
                             for t in starts.tolist()])
        prob = (pred.double().sum(1) + 0.5) / (rollouts + 1)
        out[f"forecast_{round(h_s * 1000)}ms"] = forecast_scores(prob[:, units], truth[:, units])
    n_gen = round(generate_s / data.dt)
    begin = time.perf_counter()
    sampled = rollout(net, windows[:1], n_gen, chains, generator=gen)[0]  # (chains, T, N)
    out["generate_seconds"] = time.perf_counter() - begin
    test = torch.cat([x[a:b] for a, b in segments])
    corr_bins = max(1, round(CORR_S / data.dt))
    ref = activity_statistics(test, labels, per_window, corr_bins, **rule)
    stats = activity_statistics(sampled.reshape(-1, sampled.shape[-1]), labels, per_window, corr_bins, **rule)
    out["generation"] = compare_statistics(ref, stats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS))
    parser.add_argument("--epochs", type=int, default=12, help="trainer.max_epochs (0: the config's)")
    parser.add_argument("--contexts", type=int, default=64)
    parser.add_argument("--rollouts", type=int, default=100)
    parser.add_argument("--generate-s", type=float, default=60.0)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--patience", type=int, default=3, help="epochs without a better validation NLL before a "
                                                                 "model stops training")
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "dgrn_mesoscale_data"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "mesoscale.json"))
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--runs-dir", help="keep every train.py run (checkpoints, metrics.json) here "
                                           "(default: a temporary folder, deleted at the end)")
    parser.add_argument("--nll-only", action="store_true", help="train and score the test NLL only: no forecasting "
                                                                   "or generation (a full run redoes these rows)")
    parser.add_argument("--evaluate", help=argparse.SUPPRESS)  # internal: score one checkpoint, print JSON
    parser.add_argument("--active-factor", type=float, default=3.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.evaluate:
        print(json.dumps(evaluate(args.evaluate, contexts=args.contexts, rollouts=args.rollouts,
                                  generate_s=args.generate_s, chains=args.chains, seed=args.seeds[0],
                                  active_factor=args.active_factor)))
        return
    begin = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {} if args.fresh or not out.exists() else json.loads(out.read_text())
    folder = Path(args.data_dir)
    files = {(ds, s): data_file(ds, s, folder, build=False) for ds in args.datasets for s in args.seeds}
    first = {path: key for key, path in reversed(files.items())}  # one simulation per recording
    with ProcessPoolExecutor(args.jobs) as pool:
        list(pool.map(data_file, *zip(*[(ds, s, folder) for ds, s in first.values()])))
    def done(ds, s, model):  # an NLL-only row does not count for a full run
        row = results.get(ds, {}).get(str(s), {}).get(model)
        return row is not None and (args.nll_only or "forecast_200ms" in row)

    tasks = [(ds, s, m) for ds in args.datasets for s in args.seeds for m in args.models if not done(ds, s, m)]
    # the tensor networks first: they take the longest, and --jobs workers finish together when the short ones come last
    tasks.sort(key=lambda task: "model=dgrn" not in MODELS[task[2]])
    lock = threading.Lock()
    env = one_thread_env()

    with (contextlib.nullcontext(args.runs_dir) if args.runs_dir else tempfile.TemporaryDirectory()) as tmp:
        def run(task):
            ds, s, model = task
            res = run_train([*overrides(model, ds, files[(ds, s)], s, args.epochs),
                             f"callbacks.early_stopping.patience={args.patience}"], Path(tmp) / f"{ds}_{s}_{model}")
            row = {"test_nll": res["metrics"]["test/nll"], "bits_per_spike": res["metrics"].get("test/bits_per_spike"),
                   "train_seconds": res["seconds"]}
            if args.nll_only:
                print(f"{ds} seed {s} {model}: NLL {row['test_nll']:.5f}", flush=True)
                with lock:
                    results.setdefault(ds, {}).setdefault(str(s), {})[model] = row
                    atomic_write(out, json.dumps(results, indent=1))
                return
            proc = subprocess.run([sys.executable, __file__, "--evaluate", res["best_checkpoint"], "--seeds", str(s),
                                   "--contexts", str(args.contexts), "--rollouts", str(args.rollouts),
                                   "--generate-s", str(args.generate_s), "--chains", str(args.chains),
                                   "--active-factor", str(ACTIVE_FACTOR[ds])],
                                  capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode:
                raise RuntimeError(f"evaluating {task} failed:\n{proc.stderr[-3000:]}")
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"{ds} seed {s} {model}: NLL {row['test_nll']:.5f}, forecast 200 ms LL "
                  f"{row['forecast_200ms']['log_likelihood']:.4f}, durations KS {row['generation']['durations_ks']:.3f}",
                  flush=True)
            with lock:
                results.setdefault(ds, {}).setdefault(str(s), {})[model] = row
                atomic_write(out, json.dumps(results, indent=1))
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(run, tasks))
    summarize(results, args.datasets, args.models)
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(f"\n{time.perf_counter() - begin:.0f} s in all ({len(tasks)} models trained and scored); peak memory of "
          f"one process {peak / 2**20:.1f} GB")


#: the summary's scores: column, how to read it from a row, whether higher is better
SCORES = [("test_nll", lambda r: r["test_nll"], False),
          *[(f"LL {h}", lambda r, h=h: r[f"forecast_{h}"]["log_likelihood"], True) for h in ("50ms", "200ms", "500ms")],
          ("AUROC 200ms", lambda r: r["forecast_200ms"]["auroc"], True),
          ("dur KS", lambda r: r["generation"]["durations_ks"], False),
          ("corr RMSE", lambda r: r["generation"]["correlation_rmse"], False)]


def summarize(results: dict, datasets: list[str], models: list[str]) -> None:
    """Per dataset: every model's mean and standard deviation over seeds of each score, then, for each DGRN among
    ``models``, its margin over the best other model of ``models`` per score (:func:`margins`)."""
    for ds in datasets:
        seeds = results.get(ds, {})
        print(f"\n{ds} (mean ± sd over seeds {sorted(seeds)})")
        print(f"{'model':26}" + "".join(f"{k:>19}" for k, _, _ in SCORES))
        for model in models:
            rows = [seeds[s][model] for s in seeds if model in seeds[s]]
            if rows:
                values = [[v for v in (_value(get, r) for r in rows) if v is not None] for _, get, _ in SCORES]
                print(f"{model:26}" + "".join(f"{_mean_sd(v):>19}" for v in values))
        for model in (m for m in models if "renorm=community_lrg" in MODELS[m]):
            for key, get, higher in SCORES:
                ahead = margins(seeds, model, [m for m in models if m != model], get, higher)
                if ahead:
                    print(f"{model} {key}: ahead of the best other model by {_mean_sd(ahead)} "
                          f"(best on {sum(a > 0 for a in ahead)} of {len(ahead)} seeds)")


def margins(seeds: dict, model: str, others: list[str], get, higher: bool) -> list[float]:
    """How far ``model`` is ahead of the best of ``others`` on the score ``get`` (positive: ahead; ``higher``: larger
    is better), one value per seed where ``model`` and at least one of ``others`` have the score."""
    out = []
    for rows in seeds.values():
        own = _value(get, rows[model]) if model in rows else None
        rivals = [v for v in (_value(get, rows[m]) for m in others if m in rows) if v is not None]
        if own is not None and rivals:
            out.append(own - max(rivals) if higher else min(rivals) - own)
    return out


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.5f}" if values else "-"
    return f"{statistics.mean(values):.5f} ± {statistics.stdev(values):.5f}"


def _value(get, row: dict):
    """``get(row)``, or ``None`` where the row lacks it (an NLL-only row has no forecasts)."""
    try:
        return get(row)
    except KeyError:
        return None


if __name__ == "__main__":
    main()
