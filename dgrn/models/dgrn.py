"""The DGRN LightningModule: graph inference -> community encoder -> diffusion-renormalization levels -> a
coarse-to-fine tensor-network decoder of the next bin at every level."""
from __future__ import annotations

import logging
import re
from typing import Any

import torch
from torch import Tensor, nn

from dgrn.metrics import ColumnMean, SpikePredictionMetrics
from dgrn.models.next_bin import NextBinModule, training_graph

__all__ = ["DGRN"]

log = logging.getLogger(__name__)


class DGRN(NextBinModule):
    r"""Deep graph renormalization model of spike trains (:class:`dgrn.nn.MultiscaleBornMachine` in Lightning).

    Loss: :math:`\sum_\ell w_\ell\, \mathrm{NLL}_\ell / n_\ell` with :math:`\mathrm{NLL}_\ell = -\log p(x^\ell_t \mid
    x_{<t})` the exact next-bin NLL of level :math:`\ell` (its units' joint, not a product of marginals), ``w``
    = ``level_weights`` (default 1 for every level), plus the lasso ``l1`` on the couplings. Logs, per split, the
    fine-scale ``nll`` (nats per neuron-bin, comparable with the factorized baselines) and ``bits_per_spike``,
    ``nll_level{l}`` (per unit of level ``l``) and ``c2f_nll`` (per neuron: :math:`-\log p(x^0_t \mid x^1_t,
    x_{<t})/N`, the cost of the fine detail given the coarse level).

    The hierarchy (memberships of every level and the neuron order) is part of ``net`` and therefore of the
    checkpoint; build it from data with :meth:`from_datamodule` (what ``train.py`` does). Because the decoder's
    sites follow that hierarchy, it is fixed before training: the community encoder and the pooling act once, on
    the couplings inferred from the training split, and are not trained by the next-bin loss.

    Args:
        n_neurons: ``N``. net: keyword arguments of :class:`dgrn.nn.MultiscaleBornMachine` (``name: dgrn``
            optional), including ``memberships`` and ``order``. level_weights: ``L + 1`` weights, fine first.
        lr, weight_decay: Adam.
        l1: :math:`\lambda_1`, a lasso on the couplings from the neurons' last bins to every level's units
            (:meth:`dgrn.nn.MultiscaleBornMachine.coupling_weights`), added to the loss as
            :math:`\lambda_1 \sum |W| / N`, the scale of :class:`NextBinModule`'s and
            :func:`dgrn.graph.infer_couplings`' lasso.
        factorized_epochs: train in two stages (default ``None``: everything together). For the first
            ``factorized_epochs`` epochs the decoders' correlation parameters (:meth:`correlation_parameters`) stay
            at their initial values, so with a small ``net.init_noise`` the model trains as a product of Bernoullis
            given the context; afterwards the context networks and fields are frozen and only the correlations
            train. Joint training lets the fields overfit short recordings while the cores are still learning;
            staged, the correlations add to an early-stopped factorized model. Under DDP, ``train.py`` runs staged
            models with ``find_unused_parameters=True`` (:attr:`freezes_parameters`).
        hierarchy_info: how the hierarchy was built (recorded, not used).
    """

    _unused_hparams = ("init",)  # its init is from_datamodule's

    def __init__(self, n_neurons: int, net: dict, level_weights: list[float] | None = None, lr: float = 5e-3,
                 weight_decay: float = 0.0, l1: float = 0.0, factorized_epochs: int | None = None,
                 hierarchy_info: dict | None = None) -> None:
        net = {"name": "dgrn", **net}
        if net["name"] != "dgrn":
            raise ValueError(f"DGRN needs net.name 'dgrn', got {net['name']!r}")
        super().__init__(n_neurons=n_neurons, net=net, lr=lr, weight_decay=weight_decay, l1=l1)
        if factorized_epochs is not None and (int(factorized_epochs) != factorized_epochs or factorized_epochs < 1):
            raise ValueError(f"factorized_epochs must be a positive integer or null, got {factorized_epochs!r}")
        n_levels = self.net.n_levels + 1
        weights = [1.0] * n_levels if level_weights is None else [float(w) for w in level_weights]
        if len(weights) != n_levels or min(weights) < 0 or sum(weights) == 0:
            raise ValueError(f"level_weights needs {n_levels} nonnegative weights (fine first), not all 0; "
                             f"got {weights}")
        sizes = torch.tensor(self.net.n_units, dtype=torch.float32)
        self.register_buffer("level_scale", torch.tensor(weights) / sizes, persistent=False)
        # mean -log p per bin of every factor p(x^l | x^(l+1), past), summed across DDP processes
        self.val_factors, self.test_factors = ColumnMean(n_levels), ColumnMean(n_levels)

    @classmethod
    def from_datamodule(cls, datamodule, *, levels: int = 2, communities: str = "gnn",
                        encoder: str | None = "community_encoder_kising", graph: dict | None = None,
                        tau: float | str = "valley", shrink: float | None = None, laplacian: str = "combinatorial",
                        pool: str = "or", max_threshold: int | None = None, init: str = "rates",
                        hierarchy_graph: str = "couplings", time_scales: list[int] | str | None = None,
                        community_options: dict | None = None, **kwargs: Any) -> DGRN:
        """Infer the couplings on the training split (:func:`dgrn.graph.infer_couplings` with ``graph`` options),
        build the hierarchy (:func:`dgrn.nn.build_hierarchy`: ``levels``, ``communities`` (a
        :func:`dgrn.graph.find_communities` method, with ``community_options``), ``encoder`` = a zoo name for the
        ``gnn`` method, ``tau`` / ``shrink`` / ``laplacian`` of the renormalization, ``pool`` /
        ``max_threshold``: when a coarse unit is active, thresholds set on the training split; a graph that cannot be
        coarse-grained ``levels`` times gets the levels it can, with a warning) and return the model,
        its decoders started at the training split's rates of every level (``init="glm"``: the fine level at the
        fitted GLM itself, :meth:`dgrn.nn.MultiscaleBornMachine.init_glm`). ``hierarchy_graph`` is the graph the
        communities and the site order come from: ``"couplings"`` (the inferred ones) or ``"correlation"`` (equal-time
        Pearson correlations of the training split: the within-bin co-activity the decoders model, which shows
        communities where the lagged couplings are not identifiable, as on the clustered LIF network).
        ``time_scales``: bins per step of each coarse level (temporal renormalization,
        :class:`~dgrn.nn.MultiscaleBornMachine`), a list, ``"auto"`` (:func:`choose_time_scales` on the training
        split's pooled activity, within what the windows allow) or ``None`` (every level on the fine bins).
        Other ``kwargs`` go to the constructor."""
        from dgrn import zoo
        from dgrn.nn.multiscale import build_hierarchy

        spikes = datamodule.split_spikes("train")
        if levels > 0 and spikes.shape[1] < 2:
            raise ValueError(f"the recording has {spikes.shape[1]} neuron(s): too few to form communities")
        if init not in ("rates", "glm"):
            raise ValueError(f"unknown init {init!r}; valid: 'rates', 'glm'")
        couplings, glm = training_graph(spikes, hierarchy_graph, graph, fit_glm=init == "glm")
        net = dict(kwargs.pop("net", {}))
        net_context = int(net.get("context", 8))
        enc = zoo.load_pretrained(encoder) if communities == "gnn" and levels > 0 else None
        hierarchy = build_hierarchy(couplings, spikes, levels, communities=communities, encoder=enc, tau=tau,
                                    shrink=shrink, laplacian=laplacian, pool=pool, max_threshold=max_threshold,
                                    strict=False, time_scales=time_scales, community_options=community_options,
                                    scored_bins=datamodule.hparams.window - net_context)
        log.info("DGRN hierarchy: units per level %s, tau %s, thresholds per level %s, time scales %s",
                 hierarchy["n_units"], hierarchy["taus"], [sorted(set(k)) for k in hierarchy["thresholds"]],
                 hierarchy["time_scales"])
        info = {"n_units": hierarchy.pop("n_units"), "taus": hierarchy.pop("taus"), "communities": communities,
                "community_options": dict(community_options or {}),
                "encoder": encoder, "tau": tau, "shrink": shrink, "laplacian": laplacian, "pool": pool,
                "max_threshold": max_threshold, "hierarchy_graph": hierarchy_graph}
        model = cls(n_neurons=datamodule.n_neurons, net={**net, **hierarchy}, hierarchy_info=info, **kwargs)
        top = model.net.time_scales[-1]
        if (datamodule.hparams.window - net_context) % top:
            raise ValueError(f"the coarsest level steps {top} bins at a time: the scored bins of a window "
                             f"(data.window {datamodule.hparams.window} - context {net_context}) must be a multiple "
                             f"of {top}")
        model.net.init_rates(spikes)
        if model.net.latent_states:
            model.net.init_latent(spikes)
        if init == "glm":
            model.net.init_glm(glm["bias"], glm["weight"])
        return model

    def correlation_parameters(self) -> list[nn.Parameter]:
        """The parameters that make the decoders more than a product of Bernoullis: every level's cores, boundary
        vectors and (rank > 0) context-gated modulations with their gates."""
        names = ("core", "left", "right", "modulation", "gate.weight")
        # a segmented level's parameters are parts.<segment>.<name>
        return [p for dec in self.net.decoders for n, p in dec.named_parameters()
                if re.sub(r"^parts\.\d+\.", "", n) in names]

    def latent_chain_parameters(self) -> list[nn.Parameter]:
        """The latent chains' state offsets and transition matrices (``net.latent_states > 0``): trained in both
        stages of ``factorized_epochs`` (a few numbers per top unit, which set how slow states persist)."""
        if not self.net.latent_states:
            return []
        top = self.net.decoders[-1]
        return [top.state_logits, top.transition_logits]

    @property
    def freezes_parameters(self) -> bool:
        """Whether training freezes parameters (the stages of ``factorized_epochs``). Frozen parameters get no
        gradient, as in one process, so DDP must look for unused parameters (:func:`dgrn.runner.fit_strategy`)."""
        return self.hparams.factorized_epochs is not None

    def on_train_epoch_start(self) -> None:
        stage = self.hparams.factorized_epochs
        if stage is None:
            return
        correlations = {id(p) for p in self.correlation_parameters()}
        chains = {id(p) for p in self.latent_chain_parameters()}
        second = self.current_epoch >= stage
        for p in self.parameters():  # frozen parameters get no gradient, and Adam skips them
            p.requires_grad_(id(p) in chains or second == (id(p) in correlations))

    def on_train_end(self) -> None:
        self.requires_grad_(True)  # the stages freeze parameters only while this module trains

    def _level_nll(self, x: Tensor) -> Tensor:
        """Negative exact log-probability of every level, ``(B, W - context, L + 1)``."""
        return -self.net.level_log_probs(x)

    def training_step(self, x: Tensor, batch_idx: int) -> Tensor:
        nll = self._level_nll(x)
        loss = (nll.mean((0, 1)) * self.level_scale).sum()
        if self.hparams.l1:
            lasso = sum(w.abs().sum() for w in self.net.coupling_weights())
            loss = loss + self.hparams.l1 * lasso / self.hparams.n_neurons
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {self.global_step}; lower the learning rate")
        self.log("train/nll", nll[..., 0].mean() / self.hparams.n_neurons, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def _update(self, x: Tensor, metrics: SpikePredictionMetrics, factors: ColumnMean) -> None:
        cond = self.net(x)
        metrics.update(cond.sum(-1), x[:, self.context:])  # joint log-likelihood of each bin
        factors.update(-cond.detach().double().flatten(0, 1))

    def validation_step(self, x: Tensor, batch_idx: int) -> None:
        self._update(x, self.val_metrics, self.val_factors)

    def test_step(self, x: Tensor, batch_idx: int) -> None:
        self._update(x, self.test_metrics, self.test_factors)

    def _log_epoch(self, split: str, metrics: SpikePredictionMetrics) -> None:
        super()._log_epoch(split, metrics)
        factors = getattr(self, f"{split}_factors")
        if not factors.update_called:
            return
        # mean -log p per bin of each factor of the coarse-to-fine chain (torchmetrics squeezes a single column)
        cond = factors.compute().reshape(-1)
        factors.reset()
        level = cond.flip(0).cumsum(0).flip(0)
        for lvl, (value, n) in enumerate(zip(level, self.net.n_units)):
            self.log(f"{split}/nll_level{lvl}", (value / n).float())
        if self.net.n_levels:
            self.log(f"{split}/c2f_nll", (cond[0] / self.hparams.n_neurons).float())

    def predict_step(self, x: Tensor, batch_idx: int = 0, n_samples: int = 64) -> dict[str, Any]:
        """For the bin after each window: per-level samples ``(B, n_samples, n_l)`` (joint draws, coarse to fine)
        and per-level firing probabilities ``(B, n_l)`` estimated from them (standard error at most
        ``0.5 / sqrt(n_samples)``); level 0 in the neurons' order."""
        draws = self.net.sample(x, n_samples)
        draws[0] = self.net.to_neurons(draws[0])
        return {"samples": draws, "probabilities": [d.mean(1) for d in draws]}

    @torch.no_grad()
    def scale_readouts(self, datamodule, metrics: dict[str, float], split: str = "test",
                       pattern_options: dict | None = None) -> dict:
        """Read-outs per level on one split (:func:`dgrn.readouts.scale_readouts`): units, the model's NLL per unit
        (from ``metrics[f"{split}/nll_level{l}"]``) against the time-shuffled and independent nulls, participation
        ratio, parameters versus state space; plus the entropy production rate of the learned dynamics at the fine
        scale (:func:`dgrn.readouts.entropy_production_rate` on the split's windows) and the dynamic scaling of the
        hierarchy (:func:`dgrn.readouts.level_autocorrelation_times`: the autocorrelation time of every level's
        summed activity, per bin, against its mean neurons per unit, and the exponent z)."""
        from dgrn.readouts import entropy_production_rate, level_autocorrelation_times, scale_readouts

        spikes = datamodule.split_spikes(split).float().to(self.device)
        levels = [lvl.cpu() for lvl in self.net.pool(spikes.clamp(max=1))]
        nll = [metrics.get(f"{split}/nll_level{lvl}") for lvl in range(len(levels))]
        n_params = [sum(p.numel() for p in (*gru.parameters(), *dec.parameters()))
                    for gru, dec in zip(self.net.grus, self.net.decoders)]
        rows = scale_readouts(levels, None if None in nll else nll, n_params=n_params,
                              pattern_options=pattern_options)
        if not datamodule.splits:
            datamodule.context = self.context
            datamodule.setup("test")
        windows = torch.stack([datamodule.splits[split][i] for i in range(len(datamodule.splits[split]))])
        epr = entropy_production_rate(lambda w: self.net(w.to(self.device).float()).sum((1, 2)), windows,
                                      n_scored=windows.shape[1] - self.context, batch_size=64)
        summed = [spikes.new_zeros(spikes.shape[0], n).index_add_(1, self.net._index(lvl), spikes).cpu()
                  for lvl, n in enumerate(self.net.n_units)]
        scaling = level_autocorrelation_times(summed, [self.net.n_neurons / n for n in self.net.n_units])
        return {"split": split, "levels": rows, "entropy_production_per_bin": epr, "dynamic_scaling": scaling,
                "hierarchy": self.hparams.hierarchy_info}
