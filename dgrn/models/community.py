"""Training the community encoder across many simulated networks (LightningModule + DataModule) and publishing it.

Each training example is one network: a kinetic Ising network with planted communities (size and number of
communities drawn per network), a fraction of its neurons observed, its couplings inferred from the observed
spikes by :func:`dgrn.graph.infer_couplings`, node features from :func:`dgrn.graph.features.node_features`.
The encoder never sees the planted labels during training; they only score validation (AMI).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from dgrn.graph import infer_couplings
from dgrn.nn.community import CommunityEncoder, community_loss, encoder_inputs

__all__ = ["simulate_graph", "CommunityGraphDataModule", "CommunityModule", "publish_encoder", "encoder_card"]


def simulate_graph(n: int, n_communities: int, observed_fraction: float, t: int, seed: int,
                   infer_opts: dict | None = None, dataset: str = "kinetic_ising", max_in_degree: int = 16,
                   dataset_options: dict | None = None, family: str | None = None,
                   noise_threshold: float = 0.0) -> Data:
    """One training/evaluation graph: simulate, subsample, infer couplings, build the encoder's inputs
    (:func:`dgrn.nn.community.encoder_inputs` with ``noise_threshold``, as ``find_communities(...,
    method="gnn")`` does). ``dataset_options``: further keyword arguments of the simulator (e.g.
    ``reference_degree``). ``family`` replaces ``dataset``, ``n`` and ``n_communities`` by a network of a benchmark
    family (:func:`dgrn.sim.family_recording`: ``"planted"``, ``"hier"``, ``"lfr0.3"``, or ``"lif"``, the clustered
    E/I LIF network in 5 ms bins).

    Returns a PyG ``Data`` with ``x`` ``(n_obs, F)``, ``edge_index``/``edge_weight`` (signed couplings,
    ``j -> i``), ``y`` the planted communities of the observed neurons and ``num_nodes``.
    """
    from dgrn.datasets import build_dataset

    if family is not None:
        from dgrn.sim import family_recording

        data = family_recording(family, t, seed=seed)
    else:
        data = build_dataset(dataset, n=n, t=t, n_communities=n_communities, seed=seed, **(dataset_options or {}))
    if observed_fraction < 1.0:
        data = data.subsample(observed_fraction, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # silent neurons are expected in some networks: zero couplings, infinite se
        coupling = infer_couplings(data, **(infer_opts or {"max_iter": 10}))
        x, edge_index, edge_weight = encoder_inputs(coupling, data, max_in_degree, noise_threshold)
    return Data(x=x, edge_index=edge_index, edge_weight=edge_weight, y=data.observed_communities(),
                num_nodes=data.n_neurons)


class CommunityGraphDataModule(L.LightningDataModule):
    """Many simulated networks, each a graph; train/val/test are *different networks* (different seeds).

    Args:
        n_train, n_val, n_test: number of networks per split.
        communities: numbers of communities to draw from; community_sizes: neurons per community to draw from
            (a network has ``communities x community_size`` neurons);
        observed_fractions: fractions of observed neurons to draw from; observed_fraction: when set, every
            network uses it instead (the subsampling knob of the configs); t: bins per network.
        seed: seeds the draws (network ``k`` of the run uses simulator seed ``seed + k``).
        infer_opts: keyword arguments of :func:`dgrn.graph.infer_couplings`.
        cache: ``.pt`` file for the generated graphs (tensors only, loaded with ``weights_only=True``);
            regenerated when missing or made with other settings.
        batch_size: graphs per batch.
        dataset_options: further keyword arguments of the simulator.
        families: draw every network from these benchmark families instead (:func:`simulate_graph`'s ``family``;
            ``communities``, ``community_sizes``, ``dataset`` are then unused), one family per network in turn.
        noise_threshold: the encoder's (:class:`~dgrn.nn.CommunityEncoder`): couplings shrunk by that many standard
            errors before the encoder's inputs are built.
    """

    def __init__(self, n_train: int = 48, n_val: int = 8, n_test: int = 8, communities: list[int] = (3, 4, 6, 8),
                 community_sizes: list[int] = (20, 25, 30), observed_fractions: list[float] = (1.0, 0.5, 0.3),
                 observed_fraction: float | None = None, t: int = 20000, seed: int = 1000, infer_opts: dict | None = None, cache: str | None = None,
                 batch_size: int = 8, dataset: str = "kinetic_ising", max_in_degree: int = 16,
                 dataset_options: dict | None = None, families: list[str] | None = None,
                 noise_threshold: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.graphs: dict[str, list[Data]] = {}

    def _draws(self) -> dict[str, list[tuple]]:
        hp = self.hparams
        rng = np.random.default_rng(hp.seed)
        fractions = [hp.observed_fraction] if hp.observed_fraction is not None else list(hp.observed_fractions)
        out, k = {}, 0
        for split, count in (("train", hp.n_train), ("val", hp.n_val), ("test", hp.n_test)):
            out[split] = []
            for _ in range(count):
                if hp.families:  # size and communities are the family's
                    out[split].append((0, 0, float(rng.choice(fractions)), hp.seed + k,
                                       hp.families[k % len(hp.families)]))
                else:
                    n_comm = int(rng.choice(hp.communities))
                    out[split].append((n_comm * int(rng.choice(hp.community_sizes)), n_comm,
                                       float(rng.choice(fractions)), hp.seed + k, None))
                k += 1
        return out

    def _settings(self) -> dict:
        hp = self.hparams
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in hp.items() if k not in ("cache", "batch_size")}

    def setup(self, stage: str | None = None) -> None:
        if self.graphs:
            return
        cache = Path(self.hparams.cache) if self.hparams.cache else None
        if cache is not None and cache.is_file():
            stored = torch.load(cache, weights_only=True)
            if stored.get("settings") == json.dumps(self._settings(), sort_keys=True):
                self.graphs = {s: [Data(**g) for g in gs] for s, gs in stored["graphs"].items()}
                return
        for split, draws in self._draws().items():
            self.graphs[split] = [simulate_graph(n, k, f, self.hparams.t, seed, self.hparams.infer_opts,
                                                 self.hparams.dataset, self.hparams.max_in_degree,
                                                 self.hparams.dataset_options, family, self.hparams.noise_threshold)
                                  for n, k, f, seed, family in draws]
        if cache is not None:
            from dgrn.data import atomic_write

            payload = {"settings": json.dumps(self._settings(), sort_keys=True),
                       "graphs": {s: [{k: v for k, v in g.to_dict().items()} for g in gs]
                                  for s, gs in self.graphs.items()}}
            atomic_write(cache, lambda tmp: torch.save(payload, tmp))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.graphs[split], batch_size=self.hparams.batch_size, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


def batch_ami(s: Tensor, batch: Batch) -> float:
    """Mean adjusted mutual information between ``argmax S`` and the planted labels over the graphs of a batch."""
    from sklearn.metrics import adjusted_mutual_info_score

    pred = s.argmax(1).cpu().numpy()
    y, b = batch.y.cpu().numpy(), batch.batch.cpu().numpy()
    return float(np.mean([adjusted_mutual_info_score(y[b == g], pred[b == g]) for g in range(batch.num_graphs)]))


class CommunityModule(L.LightningModule):
    r"""Trains a :class:`~dgrn.nn.CommunityEncoder` without labels: loss :func:`community_loss`
    (:math:`-` vector directed modularity of the embeddings :math:`+\ \lambda` collapse of ``S``), averaged over
    the graphs of each batch. Training
    flips the sign of each Laplacian-eigenvector feature at random per graph (those signs are arbitrary).
    Logs ``{train,val,test}/{loss,modularity,vector_modularity,collapse}`` (``modularity``: of the assignment
    ``S``, label-free, used for model selection) and ``{val,test}/ami`` against the planted communities.

    Args:
        encoder: ``CommunityEncoder`` keyword arguments (plain dict). lr, weight_decay: AdamW.
        collapse_weight: :math:`\lambda`. n_eig: number of trailing eigenvector feature columns.
        init_from: a zoo encoder to start from (its weights; ``encoder`` must describe the same architecture), so a
            new corpus fine-tunes it; default: a random start.
    """

    def __init__(self, encoder: dict, lr: float = 1e-3, weight_decay: float = 1e-4, collapse_weight: float = 0.1,
                 n_eig: int = 8, init_from: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = CommunityEncoder(**encoder)
        if init_from is not None:  # fine-tune a zoo encoder of the same architecture
            from dgrn.zoo import load_pretrained

            self.net.load_state_dict(load_pretrained(init_from).state_dict())

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Assignment ``S`` and unit embedding ``z`` of every node of a batch of graphs."""
        return self.net(batch.x, batch.edge_index, batch.edge_weight, batch.batch)

    def _augment(self, batch: Batch) -> Batch:
        k = self.hparams.n_eig
        if k == 0:
            return batch
        flips = torch.randint(0, 2, (batch.num_graphs, k), device=batch.x.device) * 2 - 1
        x = batch.x.clone()
        x[:, -k:] = x[:, -k:] * flips[batch.batch].to(x.dtype)
        batch.x = x
        return batch

    def _loss(self, batch: Batch, split: str) -> tuple[Tensor, Tensor]:
        s, z = self(batch)
        loss, parts = community_loss(s, z, batch.edge_index, batch.edge_weight, batch.batch,
                                     self.hparams.collapse_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite {split} loss at step {self.global_step}")
        self.log(f"{split}/loss", loss, batch_size=batch.num_graphs, prog_bar=split == "train")
        for key, value in parts.items():
            self.log(f"{split}/{key}", value, batch_size=batch.num_graphs)
        return loss, s

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._loss(self._augment(batch), "train")[0]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        _, s = self._loss(batch, "val")
        self.log("val/ami", batch_ami(s, batch), batch_size=batch.num_graphs, prog_bar=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        _, s = self._loss(batch, "test")
        self.log("test/ami", batch_ami(s, batch), batch_size=batch.num_graphs)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


CARD = """# {name}

{summary}

| | |
|---|---|
| architecture | `community_encoder` (`dgrn.nn.CommunityEncoder`) |
| arguments | `{net}` |{input_row}
| parameters | {n_params:,} |
| weights | `model.safetensors`, sha256 `{sha256}` |

## Data
Trained without labels on {networks};
validated and tested on other networks (other seeds). Settings:
```yaml
{data}
```

## How it was made
```bash
{command}
```

## Metrics
AMI of `argmax S` against the planted communities (observed neurons only) and directed modularity, on networks
the encoder never saw:

{table}

## Use
```python
from dgrn.graph import infer_couplings, find_communities
from dgrn.zoo import load_pretrained
encoder = load_pretrained("{name}")
W = infer_couplings(spikes)
labels = find_communities(W, method="gnn", encoder=encoder, spikes=spikes)
```
It works on networks of any size; the number of communities is chosen per network (at most
{max_communities}). Node features are those of `dgrn.graph.features.node_features`.
"""


def publish_encoder(ckpt_path: str | Path, name: str, *, summary: str = "", command: str = "",
                    out_dir: str | Path | None = None, notes: str = "") -> Path:
    """Publish a :class:`CommunityModule` checkpoint (or a ``train.py`` run directory) as zoo model ``name``;
    ``notes`` (markdown) are appended to its card."""
    from dgrn import zoo
    from dgrn.publish import model_card
    from dgrn.runner import load_checkpoint

    ckpt_path = Path(ckpt_path)
    run_dir = ckpt_path if ckpt_path.is_dir() else ckpt_path.resolve().parent.parent
    if ckpt_path.is_dir():
        info = json.loads((ckpt_path / "metrics.json").read_text())
        ckpt_path = Path(info.get("best_checkpoint") or ckpt_path / "checkpoints/last.ckpt")
    ckpt = load_checkpoint(ckpt_path)
    hp, data_hp = ckpt["hyper_parameters"], ckpt.get("datamodule_hyper_parameters") or {}
    model = CommunityModule(**hp)
    model.load_state_dict(ckpt["state_dict"])
    metrics = {}
    if (run_dir / "metrics.json").is_file():
        metrics = {k: v for k, v in json.loads((run_dir / "metrics.json").read_text())["metrics"].items()
                   if k.startswith("test/")}
    data_hp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_hp.items()}
    folder = Path(out_dir) if out_dir else zoo.checkpoint_dir() / name
    return zoo.save_pretrained(
        model.net, folder, architecture="community_encoder", net_kwargs=hp["encoder"],
        card=lambda config: model_card(name, config, model.net, notes), summary=summary or "GNN community encoder",
        data=data_hp, command=command, metrics={"test": metrics},
    )


def encoder_card(name: str, config: dict, net: CommunityEncoder) -> str:
    """The model card of published encoder ``name`` from its ``config.json`` (``config``) and network (also used by
    :func:`dgrn.publish.rewrite_card`)."""
    import yaml

    data, metrics = config.get("data") or {}, (config.get("metrics") or {}).get("test") or {}
    table = "\n".join(["| metric | value |", "|---|---|", *[f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]])
    if data.get("families"):
        networks = (f"{data.get('n_train')} simulated networks of the community benchmark's families\n"
                    f"{data['families']} (kinetic Ising; `lif`: the clustered E/I LIF network), observed fractions\n"
                    f"{data.get('observed_fractions')}, {data.get('t')} bins each, couplings inferred by "
                    f"`dgrn.graph.infer_couplings` and shrunk by {data.get('noise_threshold', 0)} standard errors")
    else:
        networks = (f"{data.get('n_train')} simulated kinetic Ising networks ({data.get('communities')} planted "
                    f"communities of\n{data.get('community_sizes')} neurons, observed fractions "
                    f"{data.get('observed_fractions')}, {data.get('t')} bins each), couplings inferred by "
                    "`dgrn.graph.infer_couplings`")
    net_args = dict(config["net"])
    threshold = net_args.pop("noise_threshold", 0.0)
    input_row = (f"\n| input | the couplings shrunk by {threshold:g} standard errors (`noise_threshold`, "
                 "`dgrn.graph.denoise_couplings`) |" if threshold else "")
    return CARD.format(name=name, summary=config.get("summary", ""), net=json.dumps(net_args), input_row=input_row,
                       n_params=sum(p.numel() for p in net.parameters()), networks=networks,
                       data=yaml.safe_dump(data, sort_keys=False, default_flow_style=None).strip(),
                       command=config.get("command", ""), table=table if metrics else "(not recorded)",
                       max_communities=net.max_communities, sha256=config["sha256"])
