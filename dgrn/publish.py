"""Turn a Lightning checkpoint into a zoo model: safetensors weights, ``config.json`` and a model card; rewrite the
card of a published model from its ``config.json`` (:func:`rewrite_card`, ``dgrn zoo card``)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

__all__ = ["score", "publish_checkpoint", "model_card", "rewrite_card"]


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
| neurons | {n_neurons} |
| bin size | {dt_ms:g} ms (`dgrn predict` refuses recordings binned differently) |
| parameters | {n_params:,} |
| weights | `model.safetensors`, sha256 `{sha256}` |

Arguments{net_note}:
```json
{net}
```
{hierarchy}
## Data
```yaml
{data}
```

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

#: Lists whose JSON is longer than this are shown by their shape on a card (the values stay in ``config.json``).
LONG_LIST = 60


def _table(metrics: dict[str, float]) -> str:
    rows = [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]
    return "\n".join(["| metric | value |", "|---|---|", *rows]) if rows else "(not recorded)"


def _brief(value):
    """``value`` for a card: long lists (membership labels, site orders) replaced by their shape, in dicts too."""
    if isinstance(value, dict):
        return {k: _brief(v) for k, v in value.items()}
    if not isinstance(value, list) or len(json.dumps(value)) <= LONG_LIST:
        return value
    shape, inner = [], value
    while isinstance(inner, list) and inner:
        shape.append(len(inner))
        inner = inner[0]
    return f"({', '.join(map(str, shape))}{',' if len(shape) == 1 else ''}) list"


def _span(counts) -> str:
    """``a`` or ``a–b (median m)`` of a list of counts."""
    import numpy as np

    lo, hi = int(np.min(counts)), int(np.max(counts))
    return str(lo) if lo == hi else f"{lo}–{hi} (median {np.median(counts):g})"


def _hierarchy(net_kwargs: dict, n_neurons: int, info: dict | None) -> str:
    """The card's summary of a multiscale model's hierarchy (``net_kwargs["memberships"]``: the level-``l`` unit
    of every neuron): units and neurons per unit at each level, pooling, and how it was built (``info``: the
    ``hierarchy`` that :meth:`dgrn.models.DGRN.from_datamodule` records). Empty for single-scale models."""
    import numpy as np

    memberships = net_kwargs.get("memberships") or []
    if not memberships:
        return ""
    rows = [f"| 0 (neurons) | {n_neurons} | 1 |"]
    for level, labels in enumerate(memberships, 1):
        counts = np.unique(np.asarray(labels), return_counts=True)[1]
        rows.append(f"| {level} | {len(counts)} | {_span(counts)} |")
    thresholds = net_kwargs.get("thresholds")
    if not thresholds or all(k == 1 for level in thresholds for k in level):
        pooling = "a coarse unit is active when any of its neurons is (OR pooling)"
    else:
        pooling = (f"a coarse unit is active when at least k of its children are (median pooling; k from "
                   f"{min(map(min, thresholds))} to {max(map(max, thresholds))})")
    built = ("Level 1: communities of a graph of the training split; each coarser level: diffusion renormalization "
             "of the metagraph of the level below (`dgrn.nn.build_hierarchy`).")
    if info:
        encoder = f" (encoder `{info['encoder']}`)" if info.get("communities") == "gnn" and info.get("encoder") else ""
        taus = [t for t in info.get("taus", []) if t is not None]
        built += (f" Graph: {info.get('hierarchy_graph', 'couplings')}; communities: `{info.get('communities')}`"
                  f"{encoder}; renormalization: `{info.get('laplacian')}` Laplacian, tau `{info.get('tau')}`"
                  + (f" (per level: {', '.join(f'{t:.3g}' for t in taus)})" if taus else "")
                  + (f", shrink {info['shrink']}" if info.get("shrink") is not None else "") + ".")
    else:
        built += " Its settings were not recorded in config.json (the training command is below)."
    built += (" The label of every neuron at every level (`memberships`) and the decoder's site order (`order`) are"
              " in config.json.")
    return "\n".join(["", "## Hierarchy", f"{len(memberships) + 1} levels, fine to coarse; {pooling}.", "",
                      "| level | units | neurons per unit |", "|---|---|---|", *rows, "",
                      textwrap.fill(built, 115), ""])


def model_card(name: str, config: dict, net, notes: str = "") -> str:
    """The model card of zoo model ``name`` from its ``config.json`` (``config``) and network (``net``, for its
    parameter count): arrays are summarized, the hierarchy of multiscale models too; ``notes`` (markdown) is
    appended."""
    import yaml

    if config["architecture"] == "community_encoder":  # trained across networks (CommunityModule): its own card
        from dgrn.models.community import encoder_card

        text = encoder_card(name, config, net)
    else:
        from dgrn.nn import NETWORKS

        metrics = config.get("metrics", {})
        fresh, sample_seed = metrics.get("fresh_data") or {}, metrics.get("fresh_sample_seed")
        command, net_kwargs = config.get("command") or "", _brief(config["net"])
        text = CARD.format(
            name=name, summary=config.get("summary", ""), architecture=config["architecture"],
            arch_doc=f"dgrn.nn.{NETWORKS[config['architecture']].__name__}",
            net=json.dumps(net_kwargs, indent=1),  # a key a line: cards stay narrow however many arguments
            net_note=" (long lists shown by their shape; in full in config.json)" if net_kwargs != config["net"] else "",
            n_neurons=config["n_neurons"], n_params=sum(p.numel() for p in net.parameters()),
            dt_ms=config["dt"] * 1e3, sha256=config["sha256"], command=command,
            data=yaml.safe_dump(_brief(config.get("data", {})), sort_keys=False, default_flow_style=None).strip(),
            hierarchy=_hierarchy(config["net"], config["n_neurons"], config.get("hierarchy")),
            train_table=_table(metrics.get("train_run_test") or {}), fresh_table=_table(fresh) if fresh else "",
            fresh_heading=(f"Test split of fresh trajectories of the same network (`sample_seed={sample_seed}`; "
                           f"simulated data only), reproduced by\n`python evaluate.py model={name}`:") if fresh else
            (f"Not scored on fresh trajectories; `python evaluate.py model={name} sample_seed=null` reproduces the "
             "training run's test split."),
        )
    return text + (f"\n{notes.strip()}\n" if notes.strip() else "")


def _notes(card: str) -> str:
    """The notes appended to a card: the sections after its ``## Use`` section (baselines, read-outs...)."""
    use = card.find("\n## Use\n")
    after = card.find("\n## ", use + 1) if use >= 0 else -1
    return card[after + 1:] if after >= 0 else ""


def rewrite_card(name: str) -> Path:
    """Regenerate the card (``README.md``) of zoo model ``name`` from its ``config.json``, keeping the notes
    appended when it was published; the weights and ``config.json`` are only read (sha256 checked)."""
    from dgrn import zoo
    from dgrn.data import atomic_write

    net = zoo.load_pretrained(name)
    path = zoo.checkpoint_dir() / name / zoo.CARD
    notes = _notes(path.read_text()) if path.is_file() else ""
    text = model_card(name, zoo.model_info(name), net, notes)
    atomic_write(path, text)
    return path


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
    atomic_write(configs / f"{name}.yaml", text)


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
    from dgrn.runner import load_checkpoint

    if Path(ckpt_path).is_dir():  # a run directory: take the best checkpoint it recorded
        run_file = Path(ckpt_path) / "metrics.json"
        if not run_file.is_file():
            raise FileNotFoundError(f"{ckpt_path} is a directory without metrics.json; pass a .ckpt file")
        ckpt_path = json.loads(run_file.read_text()).get("best_checkpoint") or Path(ckpt_path) / "checkpoints/last.ckpt"
    ckpt = load_checkpoint(ckpt_path)
    if "encoder" in ckpt["hyper_parameters"]:  # a community-encoder run (CommunityModule): its own card
        from dgrn.models.community import publish_encoder

        return publish_encoder(ckpt_path, name, summary=summary, command=command, out_dir=out_dir, notes=notes)
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
    if out_dir is None:
        _write_model_config(name, architecture)
    return zoo.save_pretrained(
        model.net, folder, architecture=architecture, net_kwargs=net_kwargs,
        card=lambda config: model_card(name, config, model.net, notes),
        summary=summary or f"{architecture} next-bin model",
        n_neurons=hp["n_neurons"], dt=dt, data=data_hp, command=command,
        **({"hierarchy": hp["hierarchy_info"]} if hp.get("hierarchy_info") else {}),  # DGRN: how its levels were built
        metrics={"train_run_test": train_metrics, "fresh_data": fresh_metrics, "fresh_sample_seed": sample_seed},
    )
