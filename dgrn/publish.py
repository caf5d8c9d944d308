"""Turn a Lightning checkpoint into a zoo model: safetensors weights, ``config.json`` and a model card."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["score", "publish_checkpoint"]


def score(model, datamodule, **trainer_kwargs) -> dict[str, float]:
    """Test-split metrics of a :class:`~dgrn.models.NextBinModule` on a data module (quiet Lightning test loop)."""
    import lightning as L

    datamodule.context = model.context
    kwargs = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
              "enable_model_summary": False, **trainer_kwargs}
    trainer = L.Trainer(**kwargs)
    trainer.test(model, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


CARD = """# {name}

{summary}

| | |
|---|---|
| architecture | `{architecture}` ({arch_doc}) |
| arguments | `{net}` |
| neurons | {n_neurons} |
| bin size | {dt_ms:g} ms (`dgrn predict` refuses recordings binned differently) |
| parameters | {n_params:,} |
| weights | `model.safetensors`, sha256 `{sha256}` |

## Data
`{data}`

## How it was made
```bash
{command}
```

## Metrics
Test split of the training run (contiguous held-out time blocks; bits per spike against each neuron's mean rate,
Neural Latents Benchmark definition; edge AUROC of |W| against the true couplings):

{train_table}

{fresh_heading}

{fresh_table}

## Use
```python
from dgrn.zoo import load_pretrained
net = load_pretrained("{name}")          # eval mode, sha256 checked
```
```bash
dgrn predict --model {name} --spikes recording.npz    # next-bin spike probabilities
```
The recording must have the same {n_neurons} neurons in the same order as the training data; the model knows one
network, not neural activity in general.
"""


def _table(metrics: dict[str, float]) -> str:
    rows = [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]
    return "\n".join(["| metric | value |", "|---|---|", *rows]) if rows else "(not recorded)"


def _write_model_config(name: str, architecture: str) -> None:
    """Add ``configs/model/NAME.yaml`` so that ``evaluate.py model=NAME`` and ``train.py model=NAME`` find it."""
    from dgrn.data import atomic_write
    from dgrn.zoo import checkpoint_dir

    configs = checkpoint_dir().parent / "configs" / "model"
    if not (configs / f"{architecture}.yaml").is_file():
        return  # not a source checkout: the zoo folder alone serves load_pretrained and `dgrn predict`
    text = (f"# The pretrained zoo model checkpoints/{name}: its architecture, initialised from its weights.\n"
            f"#   python evaluate.py model={name}     (its metrics on fresh data from its network)\n"
            f"#   python train.py model={name}        (fine-tune it)\n"
            f"defaults:\n  - {architecture}\n  - _self_\npretrained: {name}\n")
    atomic_write(configs / f"{name}.yaml", lambda tmp: Path(tmp).write_text(text))


def publish_checkpoint(
    ckpt_path: str | Path, name: str, *, summary: str = "", command: str = "", sample_seed: int | None = 2024,
    out_dir: str | Path | None = None, notes: str = "",
) -> Path:
    """Publish a checkpoint (or the best one of a ``train.py`` run directory) as zoo model ``name``, in
    ``checkpoints/`` unless ``out_dir``. The card records the run's test metrics and the test metrics on fresh
    trajectories (``sample_seed``; ``None``: not scored, for simulators whose trajectories depend on the initial
    state) of the same network, which ``evaluate.py model=NAME`` reproduces; ``notes``
    (markdown, e.g. baselines measured on the same splits) is appended to the card."""
    from dgrn import zoo
    from dgrn.datasets import SIMULATORS, fresh_trajectories
    from dgrn.models import SpikeDataModule, module_for
    from dgrn.nn import NETWORKS
    from dgrn.runner import load_checkpoint

    if Path(ckpt_path).is_dir():  # a run directory: take the best checkpoint it recorded
        run_file = Path(ckpt_path) / "metrics.json"
        if not run_file.is_file():
            raise FileNotFoundError(f"{ckpt_path} is a directory without metrics.json; pass a .ckpt file")
        ckpt_path = json.loads(run_file.read_text()).get("best_checkpoint") or Path(ckpt_path) / "checkpoints/last.ckpt"
    ckpt = load_checkpoint(ckpt_path)
    if "encoder" in ckpt["hyper_parameters"]:  # a community-encoder run (CommunityModule): its own card
        from dgrn.models.community import publish_encoder

        return publish_encoder(ckpt_path, name, summary=summary, command=command, out_dir=out_dir)
    hp, data_hp = ckpt["hyper_parameters"], ckpt.get("datamodule_hyper_parameters")
    if not data_hp or "dataset" not in data_hp:
        raise ValueError(f"{ckpt_path} does not record the data config it was trained on; cannot write a model card")
    model = module_for(hp)(**hp)
    model.load_state_dict(ckpt["state_dict"])
    run_metrics_file = Path(ckpt_path).resolve().parent.parent / "metrics.json"
    train_metrics = {}
    if run_metrics_file.is_file():
        train_metrics = {k: v for k, v in json.loads(run_metrics_file.read_text())["metrics"].items()
                         if k.startswith("test/")}
    fresh_metrics = {}
    if data_hp["dataset"]["name"] in SIMULATORS and sample_seed is not None:
        fresh = SpikeDataModule(**{**data_hp, "dataset": fresh_trajectories(data_hp["dataset"], sample_seed)})
        fresh_metrics = score(model, fresh)
        dt = fresh.spike_data.dt
    else:
        dt = SpikeDataModule(**data_hp).spike_data.dt

    net_kwargs = {k: v for k, v in hp["net"].items() if k != "name"}
    architecture = hp["net"]["name"]
    folder = Path(out_dir) if out_dir else zoo.checkpoint_dir() / name
    card = dict(
        name=name, summary=summary or f"{architecture} next-bin model", architecture=architecture,
        arch_doc=f"dgrn.nn.{NETWORKS[architecture].__name__}", net=json.dumps(net_kwargs), n_neurons=hp["n_neurons"],
        n_params=sum(p.numel() for p in model.net.parameters()), data=json.dumps(data_hp), command=command,
        train_table=_table(train_metrics), fresh_table=_table(fresh_metrics) if fresh_metrics else "",
        fresh_heading=(f"Test split of fresh trajectories of the same network (`sample_seed={sample_seed}`; simulated "
                       f"data only), reproduced by `python evaluate.py model={name}`:") if fresh_metrics else
        (f"Not scored on fresh trajectories; `python evaluate.py model={name} sample_seed=null` reproduces the "
         "training run's test split."),
        dt_ms=dt * 1e3,
    )
    if out_dir is None:
        _write_model_config(name, architecture)
    return zoo.save_pretrained(
        model.net, folder, architecture=architecture, net_kwargs=net_kwargs,
        card=lambda config: CARD.format(**card, sha256=config["sha256"]) + (f"\n{notes.strip()}\n" if notes else ""),
        summary=card["summary"],
        n_neurons=hp["n_neurons"], dt=dt, data=data_hp, command=command,
        **({"hierarchy": hp["hierarchy_info"]} if hp.get("hierarchy_info") else {}),  # DGRN: how its levels were built
        metrics={"train_run_test": train_metrics, "fresh_data": fresh_metrics, "fresh_sample_seed": sample_seed},
    )
