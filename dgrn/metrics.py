"""Evaluation metrics: held-out NLL per neuron-bin, bits per spike (NLB definition), edge AUROC."""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

__all__ = ["bernoulli_nll", "bits_per_spike", "edge_auroc", "edge_auprc", "shared_driver_false_positive_rate",
           "SpikePredictionMetrics", "ColumnMean"]


def bernoulli_nll(logits: Tensor, target: Tensor) -> Tensor:
    """Mean negative log-likelihood in nats per neuron-bin of 0/1 ``target`` under ``sigmoid(logits)``."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="mean")


def _null_loglik(spike_count: Tensor, n_bins: Tensor) -> Tensor:
    """Bernoulli log-likelihood of every neuron at its own mean rate over the scored bins (the NLB null)."""
    p = (spike_count / n_bins).clamp(1e-12, 1 - 1e-12)
    return (spike_count * p.log() + (n_bins - spike_count) * (-p).log1p()).sum()


def bits_per_spike(logits: Tensor, target: Tensor) -> Tensor:
    r"""Neural Latents Benchmark bits per spike, Bernoulli version.

    .. math:: \mathrm{bps} = \frac{\log L(\text{model}) - \log L(\bar p)}{n_{\text{spikes}} \ln 2}

    where :math:`\bar p_i` is neuron ``i``'s mean firing probability over the *scored* data (the NLB null).
    ``logits`` and ``target`` are ``(..., N)``. Positive means better than the per-neuron rate.
    """
    target = target.reshape(-1, target.shape[-1]).double()
    model_ll = -F.binary_cross_entropy_with_logits(logits.reshape(target.shape).double(), target, reduction="sum")
    n_spikes = target.sum()
    if n_spikes == 0:
        raise ValueError("bits per spike is undefined: the scored data contain no spikes")
    null_ll = _null_loglik(target.sum(0), torch.tensor(float(target.shape[0]), dtype=torch.float64))
    return (model_ll - null_ll) / (n_spikes * math.log(2))


def edge_auroc(coupling: Tensor, true_coupling: Tensor, undefined: str = "raise") -> Tensor:
    """AUROC of ``|coupling|`` as a score for the presence of a true edge (``true_coupling != 0``).

    Both are ``(N, N)`` over the same neurons; the diagonal (self-coupling) is excluded. The AUROC is undefined
    when the true graph has no edges, or is complete, among these neurons (e.g. a heavily subsampled network):
    ``undefined="raise"`` raises ``ValueError`` then, ``"nan"`` warns and returns NaN.
    """
    if undefined not in ("raise", "nan"):
        raise ValueError(f"undefined must be 'raise' or 'nan', got {undefined!r}")
    if coupling.shape != true_coupling.shape or coupling.dim() != 2:
        raise ValueError(f"coupling {tuple(coupling.shape)} and truth {tuple(true_coupling.shape)} must be the same (N, N)")
    off = ~torch.eye(coupling.shape[0], dtype=torch.bool, device=coupling.device)
    labels = (true_coupling.to(coupling.device)[off] != 0).long()
    if labels.min() == labels.max():
        message = "edge AUROC is undefined: the true graph has no edges, or is complete, among these neurons"
        if undefined == "raise":
            raise ValueError(message)
        warnings.warn(f"{message}; returning NaN", stacklevel=2)
        return torch.tensor(float("nan"), device=coupling.device)
    return binary_auroc(coupling.detach()[off].abs().float(), labels)


def edge_auprc(coupling: Tensor, true_coupling: Tensor) -> Tensor:
    """Area under the precision-recall curve (average precision) of ``|coupling|`` for the true edges; same
    conventions as :func:`edge_auroc`. Its chance level is the edge density, not 0.5."""
    if coupling.shape != true_coupling.shape or coupling.dim() != 2:
        raise ValueError(f"coupling {tuple(coupling.shape)} and truth {tuple(true_coupling.shape)} must be the same (N, N)")
    off = ~torch.eye(coupling.shape[0], dtype=torch.bool, device=coupling.device)
    labels = (true_coupling.to(coupling.device)[off] != 0).long()
    if labels.max() == 0:
        raise ValueError("edge AUPRC is undefined: the true graph has no edges among these neurons")
    return binary_average_precision(coupling.detach()[off].abs().float(), labels)


def _submatrix(matrix: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Dense ``matrix[rows][:, cols]`` of a dense or sparse (COO/CSR, e.g. a simulator's connectivity) matrix,
    without densifying the whole matrix."""
    if matrix.layout != torch.strided:
        matrix = matrix.to_sparse_coo()
    out = matrix.index_select(0, rows).index_select(1, cols)
    return out.to_dense() if out.layout != torch.strided else out


def shared_driver_false_positive_rate(coupling: Tensor, true_coupling: Tensor, observed: Tensor) -> dict[str, float]:
    r"""False positives caused by hidden common input.

    ``coupling`` ``(n, n)`` is estimated among the ``observed`` neurons of a network with true couplings
    ``true_coupling`` ``(M, M)`` (dense or sparse). As many ordered pairs as there are true edges among the observed
    neurons are called edges (the largest ``|coupling|``, off the diagonal), so every estimator is judged at the
    same number of calls whatever its scale. Among the ordered non-edges ``(i, j)`` (``W[i, j] == 0``) whose two
    neurons receive input from a common *hidden* neuron ``h`` (``W[i, h] != 0`` and ``W[j, h] != 0``), returns the
    fraction called edges (``"shared_driver"``), the same fraction over all non-edges (``"all"``) and the number of
    shared-driver pairs (``"n_pairs"``).
    """
    n = observed.numel()
    if coupling.shape != (n, n):
        raise ValueError(f"coupling must be ({n}, {n}) for {n} observed neurons, got {tuple(coupling.shape)}")
    truth = true_coupling.to(coupling.device)
    observed = observed.to(coupling.device)
    hidden = torch.ones(truth.shape[0], dtype=torch.bool, device=truth.device)
    hidden[observed] = False
    if not hidden.any():
        raise ValueError("no hidden neurons: every neuron is observed, so no pair shares a hidden driver")
    edges = _submatrix(truth, observed, observed) != 0
    off = ~torch.eye(n, dtype=torch.bool, device=coupling.device)
    n_edges = int((edges & off).sum())
    if n_edges == 0:
        raise ValueError("the true graph has no edges among the observed neurons")
    # (n, n_hidden): which hidden neurons drive each neuron
    driven = (_submatrix(truth, observed, hidden.nonzero().squeeze(1)) != 0).float()
    shares = (driven @ driven.T) > 0
    score = coupling.detach().abs().float().masked_fill(~off, -1.0)
    called = torch.zeros(n * n, dtype=torch.bool, device=coupling.device)
    called[score.flatten().topk(n_edges).indices] = True
    called = called.view(n, n)
    non_edges = ~edges & off
    pairs = non_edges & shares
    return {
        "shared_driver": float((called & pairs).sum()) / max(int(pairs.sum()), 1),
        "all": float((called & non_edges).sum()) / max(int(non_edges.sum()), 1),
        "n_pairs": int(pairs.sum()),
    }


class SpikePredictionMetrics(Metric):
    """Accumulates NLL per neuron-bin (nats) and NLB bits per spike over batches of ``(logits, target)``.

    The null rate for bits per spike is each neuron's mean over *all* scored bins of the epoch, so the value does
    not depend on how the data were batched. Synchronizes across DDP processes (sums of sufficient statistics).
    """

    full_state_update = False

    def __init__(self, n_neurons: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("loglik", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("spike_count", torch.zeros(n_neurons, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_bins", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """``prediction``: logits of a factorized model, shaped like ``target`` ``(..., N)``; or the joint
        log-likelihood of each bin, ``target.shape[:-1]`` (a model of the neurons' joint, e.g. a tensor network)."""
        if prediction.shape == target.shape:
            loglik = -F.binary_cross_entropy_with_logits(prediction.double(), target.double(), reduction="sum")
        elif prediction.shape == target.shape[:-1]:
            loglik = prediction.double().sum()
        else:
            raise ValueError(f"prediction {tuple(prediction.shape)} must be logits shaped like the target "
                             f"{tuple(target.shape)} or one log-likelihood per bin {tuple(target.shape[:-1])}")
        target = target.reshape(-1, target.shape[-1]).double()
        # out of place: states created under inference mode (trainer.validate before fit) stay usable
        self.loglik = self.loglik + loglik
        self.spike_count = self.spike_count + target.sum(0)
        self.n_bins = self.n_bins + target.shape[0]

    def compute(self) -> dict[str, Tensor]:
        n_spikes = self.spike_count.sum()
        nll = -self.loglik / (self.n_bins * self.spike_count.numel())
        if n_spikes == 0:
            bps = torch.tensor(float("nan"), dtype=torch.float64)
        else:
            bps = (self.loglik - _null_loglik(self.spike_count, self.n_bins)) / (n_spikes * math.log(2))
        return {"nll": nll.float(), "bits_per_spike": bps.float()}


class ColumnMean(Metric):
    """Mean over rows of each column of ``(rows, k)`` values, accumulated over batches and DDP processes (for
    example the mean ``-log p`` per bin of each factor of DGRN's coarse-to-fine chain)."""

    full_state_update = False

    def __init__(self, n_columns: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros(n_columns, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("rows", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        if values.dim() != 2 or values.shape[1] != self.total.shape[0]:
            raise ValueError(f"values must have shape (rows, {self.total.shape[0]}), got {tuple(values.shape)}")
        self.total = self.total + values.double().sum(0)  # out of place, as in SpikePredictionMetrics
        self.rows = self.rows + values.shape[0]

    def compute(self) -> Tensor:
        return self.total / self.rows
