"""Train a dgrn model: ``python train.py [experiment=NAME] [group=option] [key=value ...]``.

Hydra app over ``configs/train.yaml``: instantiates the data module, model, callbacks, loggers and trainer, fits,
tests the best checkpoint, writes ``metrics.json`` into the run directory and returns ``optimized_metric`` to
Hydra sweepers. ``ckpt_path=<run>/checkpoints/last.ckpt`` resumes a killed run.
"""
from __future__ import annotations

import time

import hydra
from omegaconf import DictConfig, OmegaConf


def train(cfg: DictConfig) -> dict[str, float]:
    import lightning as L
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from dgrn import runner

    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data, _convert_="all")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    pretrained = model_cfg.pop("pretrained", None)
    model = runner.build_model(model_cfg, datamodule)
    if pretrained:
        runner.init_from_pretrained(model, pretrained)
    if hasattr(model, "context"):
        datamodule.context = model.context  # each bin after the model's history is scored exactly once

    callbacks = runner.instantiate_group(cfg.get("callbacks"))
    loggers = runner.instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                          strategy=runner.fit_strategy(cfg.trainer.get("strategy", "auto"), model))
    for logger in loggers:
        logger.log_hyperparams(runner.plain(cfg))

    try:
        fit_seconds = 0.0
        if cfg.train:
            start = time.perf_counter()
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
            fit_seconds = time.perf_counter() - start
        metrics = runner.to_float_dict(trainer.callback_metrics)
        # throughput of a fresh fit, validation included: recorded beside the metrics (it is not reproducible)
        train_windows = len(getattr(datamodule, "splits", {}).get("train", ()))
        throughput = (train_windows * trainer.current_epoch / fit_seconds
                      if fit_seconds and train_windows and not cfg.get("ckpt_path") else None)
        ckpt_cb = trainer.checkpoint_callback
        best_ckpt = ckpt_cb.best_model_path if ckpt_cb is not None else ""
        if ckpt_cb is not None and ckpt_cb.best_model_score is not None:
            metrics[f"best/{ckpt_cb.monitor}"] = float(ckpt_cb.best_model_score)
        if cfg.test:
            trainer.test(model, datamodule=datamodule, ckpt_path=best_ckpt or None, weights_only=True)
            metrics.update(runner.to_float_dict(trainer.callback_metrics))
    finally:
        runner.finish_loggers(loggers)

    output_dir = HydraConfig.get().runtime.output_dir
    if trainer.is_global_zero:
        path = runner.write_metrics(output_dir, metrics, {
            "best_checkpoint": best_ckpt, "last_checkpoint": f"{output_dir}/checkpoints/last.ckpt" if ckpt_cb else "",
            "overrides": list(HydraConfig.get().overrides.task), "train_windows_per_second": throughput,
        })
        print(f"[dgrn] metrics: {path}\n[dgrn] best checkpoint: {best_ckpt or 'none'}\n[dgrn] run directory: {output_dir}")
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from dgrn.runner import sweep_objective

    metrics = train(cfg)
    key = cfg.get("optimized_metric")
    return sweep_objective(metrics, key) if key else None


if __name__ == "__main__":
    main()
