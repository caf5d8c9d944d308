"""Evaluate a trained model on held-out data (Hydra app over ``configs/eval.yaml``).

    python evaluate.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt   # a Lightning checkpoint
    python evaluate.py model=glm_kising100                                    # a pretrained zoo model

A checkpoint is scored on the test split of the data it was trained on (or on ``data=...``); a zoo model on the
test split of fresh trajectories (``sample_seed``) of the network recorded in its ``config.json``. Writes
``metrics.json`` into the run directory.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig


def evaluate(cfg: DictConfig) -> dict[str, float]:
    import lightning as L
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from dgrn import runner, zoo
    from dgrn.datasets import fresh_trajectories
    from dgrn.models import DGRN, SpikeDataModule, module_for

    L.seed_everything(cfg.seed, workers=True)
    pretrained = (cfg.get("model") or {}).get("pretrained")
    if bool(cfg.get("ckpt_path")) == bool(pretrained):
        raise ValueError(
            "give exactly one of ckpt_path=<file.ckpt> or model=<zoo name> "
            f"(zoo: {zoo.list_models()})"
        )
    reference = {}
    if cfg.get("ckpt_path"):
        ckpt = runner.load_checkpoint(cfg.ckpt_path)
        model = module_for(ckpt["hyper_parameters"])(**ckpt["hyper_parameters"])
        model.load_state_dict(ckpt["state_dict"])
        data_hp = ckpt.get("datamodule_hyper_parameters")
        if cfg.get("data") is None and not data_hp:
            raise ValueError(f"{cfg.ckpt_path} does not record its data; pass data=<config>")
        source = cfg.ckpt_path
    else:
        info = zoo.model_info(pretrained)
        hparams = {"n_neurons": info["n_neurons"], "net": {"name": info["architecture"], **info["net"]}}
        model = module_for(hparams)(**hparams)
        model.net.load_state_dict(zoo.load_pretrained(pretrained).state_dict())
        data_hp = {**info["data"], "dataset": fresh_trajectories(info["data"]["dataset"], cfg.sample_seed)}
        # sample_seed=null: the training recording's own test split, which the card records as train_run_test
        reference = info.get("metrics", {}).get("fresh_data" if cfg.sample_seed is not None else "train_run_test", {})
        source = f"zoo:{pretrained}"
    datamodule = instantiate(cfg.data, _convert_="all") if cfg.get("data") is not None else SpikeDataModule(**data_hp)
    if datamodule.n_neurons != model.hparams.n_neurons:
        raise ValueError(f"model expects {model.hparams.n_neurons} neurons, the data have {datamodule.n_neurons}")
    datamodule.context = model.context

    loggers = runner.instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[])
    try:
        trainer.test(model, datamodule=datamodule)
    finally:
        runner.finish_loggers(loggers)
    metrics = runner.to_float_dict(trainer.callback_metrics)
    output_dir = HydraConfig.get().runtime.output_dir
    if trainer.is_global_zero and isinstance(model, DGRN):
        write_scale_readouts(model, datamodule, metrics, output_dir)
    if trainer.is_global_zero:
        path = runner.write_metrics(output_dir, metrics, {"source": source, "reference": reference})
        for key, value in sorted(metrics.items()):
            ref = f"   (model card: {reference[key]:.4f})" if key in reference else ""
            print(f"[dgrn] {key} = {value:.4f}{ref}")
        print(f"[dgrn] metrics: {path}")
    return metrics


def write_scale_readouts(model, datamodule, metrics: dict[str, float], output_dir: str) -> None:
    """DGRN read-outs per level of the test split: ``readouts.json`` and the figures ``entropy_per_unit.png``,
    ``participation_ratio.png`` and ``dynamic_scaling.png`` in the run directory."""
    import json
    from pathlib import Path

    from dgrn.data import atomic_write
    from dgrn.plots import plot_dynamic_scaling, plot_entropy_per_unit, plot_participation_ratio

    out = model.scale_readouts(datamodule, metrics)
    folder = Path(output_dir)
    atomic_write(folder / "readouts.json", json.dumps(out, indent=2) + "\n")
    plot_entropy_per_unit(out["levels"], folder / "entropy_per_unit.png")
    plot_participation_ratio(out["levels"], folder / "participation_ratio.png")
    plot_dynamic_scaling(out["dynamic_scaling"], folder / "dynamic_scaling.png")
    z = out["dynamic_scaling"]["z"]
    print(f"[dgrn] entropy production {out['entropy_production_per_bin']:.5f} nats/bin; dynamic scaling z = "
          f"{'n/a' if z is None else f'{z:.3f}'}; read-outs per level: {folder / 'readouts.json'} (+ "
          "entropy_per_unit.png, participation_ratio.png, dynamic_scaling.png)")


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
