"""train.py / evaluate.py through Hydra: runs, reproducibility, resume, loggers, sweeps, DDP, bad input."""
import json
import math

import pytest
import torch

from conftest import TINY, compose, run_script


def test_train_script_runs_through_hydra(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script(["train.py", *TINY, f"hydra.run.dir={run_dir}", "logger=csv"])
    assert f"[dgrn] metrics: {run_dir}" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for key in ("val/nll", "test/nll", "test/bits_per_spike", "test/edge_auroc"):
        assert math.isfinite(metrics[key]), key
    assert metrics["test/bits_per_spike"] > 0  # beats the per-neuron rate after 3 epochs
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "csv" / "metrics.csv").is_file()


def test_seed_gives_identical_metrics(run_train):
    # the GRU starts at random (the GLM at constants), and both runs share this process's generator: equal metrics
    # need the seed applied before the model is built
    a, _ = run_train(["callbacks=none", "model=gru"], "a")
    b, _ = run_train(["callbacks=none", "model=gru"], "b")
    assert a == b
    c, _ = run_train(["callbacks=none", "model=gru", "seed=7"], "c")
    assert c["val/nll"] != a["val/nll"]


def test_resume_matches_an_uninterrupted_run(run_train):
    full, _ = run_train(["trainer.max_epochs=4", "test=false"], "full")
    _, killed = run_train(["trainer.max_epochs=2", "test=false"], "killed")
    resumed, _ = run_train(["trainer.max_epochs=4", "test=false", f"ckpt_path={killed}/checkpoints/last.ckpt"], "resumed")
    for key in ("val/nll", "val/bits_per_spike", "val/edge_auroc", "train/nll"):
        assert resumed[key] == pytest.approx(full[key], rel=1e-6), key


def test_evaluate_from_checkpoint_reproduces_test_metrics(run_train, tmp_path):
    import evaluate

    trained, run_dir = run_train(["trainer.max_epochs=2"], "train")
    best = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    cfg = compose("eval", [f"ckpt_path={best}"], tmp_path / "eval")
    metrics = evaluate.evaluate(cfg)
    for key in ("test/nll", "test/bits_per_spike", "test/edge_auroc"):
        assert metrics[key] == pytest.approx(trained[key], rel=1e-5), key
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_evaluate_refuses_bad_checkpoints(tmp_path):
    import evaluate

    import argparse

    evil = tmp_path / "evil.ckpt"  # any object whose unpickling would import and run code
    torch.save({"state_dict": {}, "x": argparse.Namespace(a=1)}, evil)
    with pytest.raises(ValueError, match="not a weights-only checkpoint"):
        evaluate.evaluate(compose("eval", [f"ckpt_path={evil}"], tmp_path / "e1"))
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        evaluate.evaluate(compose("eval", [f"ckpt_path={corrupt}"], tmp_path / "e2"))
    with pytest.raises(FileNotFoundError):
        evaluate.evaluate(compose("eval", [f"ckpt_path={tmp_path}/missing.ckpt"], tmp_path / "e3"))
    with pytest.raises(ValueError, match="exactly one of"):
        evaluate.evaluate(compose("eval", [], tmp_path / "e4"))


def test_wandb_logger_runs_offline(run_train, tmp_path):
    metrics, run_dir = run_train(["logger=wandb", "trainer.max_epochs=1"], "wandb")
    assert math.isfinite(metrics["test/nll"])
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    import wandb

    assert wandb.run is None  # the job finished its run


def test_bad_config_names_list_valid_options(tmp_path):
    proc = run_script(["train.py", "experiment=nope", f"hydra.run.dir={tmp_path}/x"], check=False)
    assert proc.returncode != 0 and "glm_kising" in proc.stderr
    proc = run_script(["train.py", *TINY, "data.dataset.name=nope", f"hydra.run.dir={tmp_path}/y"], check=False)
    assert proc.returncode != 0 and "unknown dataset 'nope'" in proc.stderr and "kinetic_ising" in proc.stderr


def test_window_shorter_than_context_is_refused(run_train):
    with pytest.raises(ValueError, match="must exceed the model context"):
        run_train(["data.window=3", "model.net.history=3"], "short")


def test_data_file_config_trains_on_a_users_recording(run_train, tmp_path):
    from dgrn.sim import kinetic_ising

    path = kinetic_ising(20, 3000, n_communities=2, seed=1).save(tmp_path / "rec.npz")
    metrics, _ = run_train(["data=file", f"data.dataset.path={path}", "data.n_blocks=10", "data.window=32",
                            "trainer.max_epochs=2", "logger=none"], "file", base=[])
    assert math.isfinite(metrics["test/nll"])


def test_aplysia_config_trains_on_a_real_recording(run_train):
    """data=aplysia: a real recording shipped with the project, through the whole pipeline (GLM, 2 epochs)."""
    metrics, _ = run_train(["data=aplysia", "data.dataset.dt=0.05", "model=glm", "trainer.max_epochs=2",
                            "logger=none"], "aplysia", base=[])
    assert math.isfinite(metrics["test/nll"]) and 0 < metrics["test/nll"] < 0.5


def test_dgrn_aplysia_experiment_starts_from_the_rates(tmp_path):
    cfg = compose("train", ["experiment=dgrn_aplysia"], tmp_path / "cfg")
    assert cfg.model.init == "rates" and cfg.data.dataset.name == "aplysia" and cfg.renorm.levels == 2


def test_hmm_glm_aplysia_experiment_is_the_switching_glm_with_a_lasso(tmp_path):
    cfg = compose("train", ["experiment=hmm_glm_aplysia"], tmp_path / "cfg")
    assert cfg.model._target_.endswith("switching_glm") and cfg.model.net.history == 1
    assert cfg.model.l1 == 0.001 and cfg.data.dataset.name == "aplysia" and cfg.renorm.levels == 0


def test_grid_multirun_reports_the_best(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script(["train.py", "-m", *TINY, "test=false", "model.lr=1e-3,1e-2", f"hydra.sweep.dir={sweep}"])
    best = json.loads((sweep / "best.json").read_text())
    values = [json.loads((sweep / str(i) / "metrics.json").read_text())["metrics"]["best/val/nll"] for i in (0, 1)]
    assert best["n_jobs"] == 2 and best["best_value"] == pytest.approx(min(values))
    assert "[dgrn] best val/nll" in proc.stdout


def test_report_best_ranks_jobs_by_what_train_returned_to_the_sweeper(tmp_path):
    """Job 0's last epoch is worse than job 1's, but its best epoch is better: the sweeper got the best values."""
    from omegaconf import OmegaConf

    from dgrn.runner import ReportBest, write_metrics

    sweep = tmp_path / "sweep"
    jobs = {"0": {"val/nll": 0.30, "best/val/nll": 0.10}, "1": {"val/nll": 0.20, "best/val/nll": 0.15},
            "2": {"val/nll": 0.12}}  # no checkpoint callback: train.py returned the last value
    for num, metrics in jobs.items():
        (sweep / num).mkdir(parents=True)
        write_metrics(sweep / num, metrics, {"overrides": [f"job={num}"]})
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "optimized_metric": "val/nll",
                               "optimized_mode": "min"})
    ReportBest().on_multirun_end(config)
    best = json.loads((sweep / "best.json").read_text())
    assert best["job_dir"] == str(sweep / "0") and best["best_value"] == 0.10 and best["overrides"] == ["job=0"]
    config.optimized_mode = "max"
    ReportBest().on_multirun_end(config)
    best = json.loads((sweep / "best.json").read_text())
    assert best["job_dir"] == str(sweep / "1") and best["best_value"] == 0.15 and best["n_jobs"] == 3


def test_optuna_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    proc = run_script(["train.py", "-m", "hparams_search=glm_optuna", *TINY, "test=false", "hydra.sweeper.n_trials=3",
                       f"hydra.sweep.dir={sweep}", f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db"])
    assert (sweep / "optimization_results.yaml").is_file()
    assert json.loads((sweep / "best.json").read_text())["n_jobs"] == 3
    assert "[dgrn] best val/nll" in proc.stdout


def test_ddp_on_cpu_with_two_processes(tmp_path):
    run_dir = tmp_path / "ddp"
    proc = run_script(["train.py", *TINY, "trainer=ddp_cpu", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"])
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert math.isfinite(metrics["test/nll"])


def test_ddp_trains_a_staged_dgrn_through_the_stage_switch(tmp_path):
    """DGRN's stages freeze parameters after DDP wrapped the model; under two gloo processes the second stage
    trains the correlations only, the rest staying exactly where the first stage left it."""
    from dgrn.models import DGRN

    run_dir = tmp_path / "ddp"
    proc = run_script(["train.py", *TINY, "experiment=dgrn_kising", "trainer=ddp_cpu", "trainer.max_epochs=2",
                       "model.factorized_epochs=1", "data.dataset.n=40", "+model.graph.max_iter=10", "renorm.levels=1",
                       "model.net.bond_dim=2", "model.net.hidden_size=8", "model.net.context=4", "test=false",
                       "+callbacks.model_checkpoint.save_top_k=-1", f"hydra.run.dir={run_dir}"])
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    assert math.isfinite(json.loads((run_dir / "metrics.json").read_text())["metrics"]["val/nll"])
    first, second = (torch.load(run_dir / "checkpoints" / f"epoch_{e:03d}.ckpt", weights_only=True) for e in (0, 1))
    model = DGRN(**first["hyper_parameters"])
    correlations = {id(p) for p in model.correlation_parameters()}
    for name, p in model.named_parameters():
        moved = not torch.equal(first["state_dict"][name], second["state_dict"][name])
        assert moved == (id(p) in correlations), name


def test_training_goes_on_when_the_observed_neurons_have_no_true_edge():
    """Heavy subsampling can observe only neurons without a true edge among them: edge AUROC is undefined there,
    so validation and test log NaN with a warning instead of aborting training."""
    import lightning as L

    from dgrn.data import SpikeData
    from dgrn.models import NextBinModule, SpikeDataModule

    truth = torch.zeros(8, 8)
    truth[1, 0] = truth[2, 3] = 1.0  # among the hidden neurons 0..3
    truth[4:, 0] = 0.5  # hidden -> observed
    spikes = (torch.rand(2000, 4) < 0.2).to(torch.uint8)
    data = SpikeData(spikes, 0.01, true_couplings=truth, observed=torch.arange(4, 8))
    assert not data.observed_couplings().any()
    dm = SpikeDataModule(data, window=16, n_blocks=10)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    model = NextBinModule(4, {"name": "glm"})
    with pytest.warns(UserWarning, match="edge AUROC is undefined"):
        trainer.fit(model, datamodule=dm)
    assert trainer.current_epoch == 2 and math.isnan(trainer.callback_metrics["val/edge_auroc"])
    assert math.isfinite(trainer.callback_metrics["val/nll"])
    with pytest.warns(UserWarning, match="edge AUROC is undefined"):
        (metrics,) = trainer.test(model, datamodule=dm, verbose=False)
    assert math.isnan(metrics["test/edge_auroc"]) and math.isfinite(metrics["test/nll"])


def test_subsampling_strategy_is_a_data_override(run_train):
    from dgrn.models import SpikeDataModule

    dm = SpikeDataModule({"name": "kinetic_ising", "n": 40, "t": 500, "n_communities": 4, "seed": 0},
                         observed_fraction=0.25, subsample_strategy="block")
    observed = dm.spike_data.observed
    assert observed.numel() == 10 and torch.equal(observed, observed[0] + torch.arange(10))
    metrics, _ = run_train(["data.observed_fraction=0.5", "data.subsample_strategy=community"], "community")
    assert math.isfinite(metrics["test/nll"])
