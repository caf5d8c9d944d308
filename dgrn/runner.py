"""Glue for the Hydra apps ``train.py`` / ``evaluate.py``: loggers, callbacks, checkpoints, metric files."""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dgrn.data import atomic_write

log = logging.getLogger("dgrn")

__all__ = ["instantiate_group", "finish_loggers", "write_metrics", "load_checkpoint", "sweep_objective",
           "fit_strategy", "ReportBest"]

METRICS_FILE = "metrics.json"


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config group such as ``callbacks`` or ``logger``."""
    from hydra.utils import instantiate

    if not cfg:
        return []
    if "wandb" in cfg and "WANDB_MODE" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"  # no network needed; the user's own WANDB_MODE wins
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def finish_loggers(loggers: list[Any]) -> None:
    """Close W&B runs so that each job of a multirun gets its own run."""
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()


def to_float_dict(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def sweep_objective(metrics: dict[str, float], key: str) -> float | None:
    """The value of ``key`` that ``train.py`` returns to Hydra sweepers: ``best/<key>``, the best value of the run
    (recorded when the checkpoint callback monitors ``key``), else the last logged ``key``; ``None`` if neither."""
    return metrics.get(f"best/{key}", metrics.get(key))


def fit_strategy(strategy: Any, model: Any) -> Any:
    """The trainer ``strategy`` to fit ``model`` with.

    A model whose training freezes parameters (``model.freezes_parameters``, e.g. DGRN's staged training, which
    toggles ``requires_grad`` after DDP wrapped the model) leaves parameters without a gradient in some steps; DDP
    then stops at the next step unless it looks for unused parameters. The DDP names (``ddp``, ``ddp_spawn``,
    ``ddp_fork``, ``ddp_notebook``) become their ``*_find_unused_parameters_true`` variants for such a model; any
    other strategy is returned unchanged.
    """
    from lightning.pytorch.strategies import StrategyRegistry

    if getattr(model, "freezes_parameters", False) and isinstance(strategy, str):
        variant = f"{strategy}_find_unused_parameters_true"
        if variant in StrategyRegistry:
            return variant
    return strategy


def write_metrics(output_dir: str | Path, metrics: dict[str, float], extra: dict | None = None) -> Path:
    """Write ``metrics.json`` (metrics and run info) atomically into the run directory."""
    payload = {"metrics": metrics, **(extra or {})}
    return atomic_write(Path(output_dir) / METRICS_FILE, json.dumps(payload, indent=2))


def load_checkpoint(path: str | Path) -> dict:
    """Read a Lightning checkpoint without running code from it (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" in str(err).lower():  # the weights-only unpickler met a class it would have to import
            raise ValueError(
                f"{path} is not a weights-only checkpoint (it would need to run code to unpickle); refusing to load it"
            ) from err
        raise ValueError(f"{path} is not a readable checkpoint (corrupt or not a torch file: {err})") from err
    except Exception as err:  # truncated or foreign file
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    return ckpt


class ReportBest(Callback):
    """Hydra callback: at the end of a multirun, log the job with the best ``optimized_metric``.

    Reads the ``metrics.json`` every job wrote, so it works with any launcher and sweeper, and writes
    ``best.json`` into the sweep directory. Jobs are ranked by the value ``train.py`` returned to the sweeper
    (:func:`sweep_objective`: the best value of each job, not its last epoch).
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        key = config.get("optimized_metric")
        sign = -1.0 if config.get("optimized_mode", "min") == "max" else 1.0
        results = []
        for f in sorted(sweep_dir.glob(f"*/{METRICS_FILE}")):
            payload = json.loads(f.read_text())
            value = sweep_objective(payload["metrics"], key)
            if value is not None and math.isfinite(value):
                results.append((sign * value, value, f.parent, payload.get("overrides", [])))
        if not results:
            log.warning("multirun finished but no job reported %s", key)
            return
        _, value, job_dir, overrides = min(results, key=lambda r: r[0])
        best = {"optimized_metric": key, "best_value": value, "job_dir": str(job_dir), "overrides": overrides,
                "n_jobs": len(results)}
        atomic_write(sweep_dir / "best.json", json.dumps(best, indent=2))
        log.info("best %s = %.6g from %s (%s)", key, value, job_dir, " ".join(overrides))
        print(f"[dgrn] best {key} = {value:.6g} over {len(results)} jobs: {' '.join(overrides)} ({job_dir})")


def plain(cfg: DictConfig) -> dict:
    """A resolved config as plain Python types (safe inside weights-only checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)


def build_model(model_cfg: dict, datamodule: Any):
    """Instantiate a model config for a data module: next-bin models are built for the data's neurons, graph
    models (community encoder) are size-free, and models whose structure comes from the data
    (``DGRN.from_datamodule``: graph, communities, renormalization) get the data module itself."""
    import inspect

    from hydra.utils import get_object, instantiate

    if "datamodule" in inspect.signature(get_object(model_cfg["_target_"])).parameters:
        sized = {"datamodule": datamodule}
    else:
        sized = {"n_neurons": datamodule.n_neurons} if hasattr(datamodule, "n_neurons") else {}
    return instantiate(model_cfg, **sized, _convert_="all")


def init_from_pretrained(model, name: str) -> None:
    """Initialise ``model.net`` from the zoo weights ``name`` (same architecture and size required)."""
    from dgrn import zoo

    net = zoo.load_pretrained(name)
    try:
        model.net.load_state_dict(net.state_dict(), strict=True)
    except RuntimeError as err:
        raise ValueError(f"pretrained {name!r} does not fit this model (architecture or neuron count differ): {err}") from err
