"""LightningModule for next-bin spike prediction with any registered network (GLM, independent null, ...)."""
from __future__ import annotations

import logging

import lightning as L
import torch
from torch import Tensor

from dgrn.metrics import SpikePredictionMetrics, bernoulli_nll, edge_auroc
from dgrn.nn import build_network

__all__ = ["NextBinModule", "training_graph"]

log = logging.getLogger(__name__)


def training_graph(spikes: Tensor, hierarchy_graph: str = "couplings", graph: dict | None = None,
                   fit_glm: bool = False) -> tuple[Tensor | None, dict | None]:
    """The graph communities are found on, from the training split's ``spikes`` ``(T, N)``: ``"couplings"`` (the
    ML kinetic-Ising couplings, :func:`dgrn.graph.infer_couplings` with ``graph`` options) or ``"correlation"``
    (equal-time Pearson correlations, zero diagonal); and the fitted GLM's parameters when the couplings were fitted
    or ``fit_glm`` asks for them (``None`` otherwise)."""
    from dgrn.graph import correlation, infer_couplings

    if hierarchy_graph not in ("couplings", "correlation"):
        raise ValueError(f"unknown hierarchy_graph {hierarchy_graph!r}; valid: 'couplings', 'correlation'")
    couplings, glm = None, None
    if hierarchy_graph == "couplings" or fit_glm:
        couplings, glm = infer_couplings(spikes, return_params=True, **(graph or {}))
    if hierarchy_graph == "correlation":
        couplings = correlation(spikes)
    return couplings, glm


class NextBinModule(L.LightningModule):
    r"""Trains a next-bin network by the Bernoulli NLL of every bin after the window's context.

    Loss: mean NLL per neuron-bin :math:`+\ \lambda_1 \sum_{k=1}^{H} \sum_{ij} |W^{(k)}_{ij}| / N` (the per-neuron
    lasso on every lag of the coupling filter, as in :func:`dgrn.graph.infer_couplings`, when the network has
    couplings: lags of opposite sign cannot cancel in it). Logs ``{train,val,test}/nll`` (nats per neuron-bin),
    ``{val,test}/bits_per_spike`` (NLB) and, when the data module knows the true couplings, ``{val,test}/edge_auroc``
    of the net coupling :math:`|\sum_k W^{(k)}|` (``coupling_matrix``, what ``infer_couplings`` returns too), so a
    filter whose lags cancel scores as no edge; NaN, with a warning, when the observed neurons have no true edge
    (or every pair is one).

    Args:
        n_neurons: number of observed neurons.
        net: ``{"name": <dgrn.nn.NETWORKS key>, **kwargs}`` (plain dict, so checkpoints stay weights-only).
        lr, weight_decay: Adam settings. l1: :math:`\lambda_1`.
        init: ``None`` (the net's own initialization) or ``"em"``: when fitting starts (not when resuming from a
            checkpoint), the net is started at ``net.init_from_data(train spikes, lengths=...)`` on the data module's
            training blocks (:meth:`dgrn.nn.BernoulliHMM.init_from_data`: Baum-Welch EM), and gradient training
            goes on from there.
    """

    #: constructor arguments of this class that a subclass does not take (kept out of its hyperparameters)
    _unused_hparams: tuple[str, ...] = ()

    def __init__(self, n_neurons: int, net: dict, lr: float = 1e-2, weight_decay: float = 0.0, l1: float = 0.0,
                 init: str | None = None) -> None:
        super().__init__()
        if l1 < 0:
            raise ValueError(f"l1 must be >= 0, got {l1}")
        self.save_hyperparameters(ignore=list(self._unused_hparams))  # collects a subclass's arguments too
        net_kwargs = dict(net)
        self.net = build_network(net_kwargs.pop("name"), n_neurons=n_neurons, **net_kwargs)
        if init not in (None, "em"):
            raise ValueError(f"init must be None or 'em', got {init!r}")
        if init == "em" and not hasattr(self.net, "init_from_data"):
            raise ValueError(f"init='em' needs a net with init_from_data (model=hmm); {type(self.net).__name__} has none")
        self.val_metrics = SpikePredictionMetrics(n_neurons)
        self.test_metrics = SpikePredictionMetrics(n_neurons)

    def on_fit_start(self) -> None:
        if self.hparams.get("init") == "em" and self.trainer.ckpt_path is None:
            spikes, lengths = self.trainer.datamodule.split_spikes("train", return_lengths=True)
            self.net.init_from_data(spikes, lengths=lengths, seed=int(torch.initial_seed()) % 2**32)

    @classmethod
    def switching_glm(cls, datamodule, *, net: dict, communities: str = "gnn",
                      encoder: str | None = "community_encoder_kising", graph: dict | None = None,
                      hierarchy_graph: str = "couplings", spread: float = 1.0, **kwargs) -> NextBinModule:
        """A :class:`~dgrn.nn.BernoulliHMM` with one hidden chain per community and GLM couplings, built for a data
        module: the communities of the training split's graph (:func:`training_graph`: ``hierarchy_graph``, ``graph``
        options) found by :func:`dgrn.graph.find_communities` with ``communities`` (``encoder``: a zoo name for the
        ``gnn`` method), the same rule as the first level of :meth:`dgrn.models.DGRN.from_datamodule`; the net
        started at the GLM fitted on the training split, its states ``spread`` apart
        (:meth:`~dgrn.nn.BernoulliHMM.init_glm`). ``net`` holds the other :class:`~dgrn.nn.BernoulliHMM` arguments;
        other ``kwargs`` go to the constructor."""
        from dgrn import zoo
        from dgrn.nn.multiscale import first_level_communities

        net = dict(net)
        if net.get("name", "hmm") != "hmm":
            raise ValueError(f"the switching GLM is net name 'hmm', got {net['name']!r}")
        spikes = datamodule.split_spikes("train")
        couplings, glm = training_graph(spikes, hierarchy_graph, graph, fit_glm=True)
        labels = first_level_communities(couplings, spikes, communities,
                                         zoo.load_pretrained(encoder) if communities == "gnn" else None)
        log.info("switching GLM: %d communities of sizes %s", int(labels.max()) + 1,
                 torch.bincount(labels).tolist())
        model = cls(n_neurons=datamodule.n_neurons, net={**net, "name": "hmm", "communities": labels.tolist()},
                    **kwargs)
        model.net.init_glm(glm["bias"], glm["weight"], spread=spread)
        return model

    @property
    def context(self) -> int:
        return self.net.context

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, L - context, N)`` of the bins after the context of windows ``x`` ``(B, L, N)``."""
        return self.net(x)

    def _step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self(x), x[:, self.context:]

    def training_step(self, x: Tensor, batch_idx: int) -> Tensor:
        logits, target = self._step(x)
        nll = bernoulli_nll(logits, target)
        loss = nll
        if self.hparams.l1 and self.net.coupling_matrix() is not None:
            # every lag W^(k) = net.weight[k-1] on its own: lags of opposite sign would cancel in their sum
            loss = loss + self.hparams.l1 * self.net.weight.abs().sum() / self.hparams.n_neurons
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {self.global_step}; lower the learning rate")
        self.log("train/nll", nll, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, x: Tensor, batch_idx: int) -> None:
        self.val_metrics.update(*self._step(x))

    def test_step(self, x: Tensor, batch_idx: int) -> None:
        self.test_metrics.update(*self._step(x))

    def predict_step(self, x: Tensor, batch_idx: int) -> Tensor:
        """Firing probability of every scored bin and neuron given the past, ``(B, W - context, N)`` (a net whose
        logits condition on other neurons of the same bin, as the HMM's chain-rule factors do, gives them by
        ``rates``)."""
        rates = getattr(self.net, "rates", None)
        return rates(x) if rates is not None else torch.sigmoid(self(x))

    def _log_epoch(self, split: str, metrics: SpikePredictionMetrics) -> None:
        values = metrics.compute()
        metrics.reset()
        self.log(f"{split}/nll", values["nll"], prog_bar=True, sync_dist=False)
        self.log(f"{split}/bits_per_spike", values["bits_per_spike"], prog_bar=True)
        truth = getattr(self.trainer.datamodule, "observed_couplings", None) if self._trainer else None
        coupling = self.net.coupling_matrix()
        if truth is not None and coupling is not None:
            # heavy subsampling can leave no true edge among the observed neurons: log NaN, do not stop training
            self.log(f"{split}/edge_auroc", edge_auroc(coupling, truth, undefined="nan"))

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_metrics)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
