"""Next-bin Bernoulli models of spike trains: the kinetic-Ising / Bernoulli GLM and the independent null."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dgrn.graph.glm import glm_context, glm_logits, resolve_latent_delay

__all__ = ["BernoulliGLM", "IndependentBernoulli"]


def _check_window(x: Tensor, n_neurons: int, context: int) -> None:
    if x.dim() != 3:
        raise ValueError(f"expected a batch of windows (B, L, N), got shape {tuple(x.shape)}")
    if x.shape[-1] != n_neurons:
        raise ValueError(f"model was built for {n_neurons} neurons, input has {x.shape[-1]}")
    if x.shape[1] <= context:
        raise ValueError(f"windows of {x.shape[1]} bins leave no target after the {context}-bin context: use window > {context}")


class IndependentBernoulli(nn.Module):
    r"""Null model: every neuron fires independently with its own constant probability.

    .. math:: P(x_i(t) = 1) = \sigma(b_i)

    Args:
        n_neurons: ``N``.
        context: number of leading bins of a window that are not scored (set it to the context of the model
            it is compared with, so both are scored on the same bins).

    Shapes:
        input ``(B, L, N)`` 0/1 spikes; output logits ``(B, L - context, N)`` for bins ``context .. L-1``.
    """

    def __init__(self, n_neurons: int, context: int = 1) -> None:
        super().__init__()
        if n_neurons < 1 or context < 0:
            raise ValueError(f"need n_neurons >= 1 and context >= 0, got {n_neurons}, {context}")
        self.n_neurons, self.context = int(n_neurons), int(context)
        self.bias = nn.Parameter(torch.empty(n_neurons))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.bias, math.log(0.05 / 0.95))

    def forward(self, x: Tensor) -> Tensor:
        _check_window(x, self.n_neurons, self.context)
        b, length, n = x.shape
        return self.bias.to(x.dtype).expand(b, length - self.context, n)

    def coupling_matrix(self) -> None:
        return None


class BernoulliGLM(nn.Module):
    r"""Kinetic-Ising / Bernoulli generalized linear model of the next bin.

    .. math::
        \eta_i(t) = b_i + \sum_{k=1}^{H}\sum_j W^{(k)}_{ij}\, x_j(t-k)
                  + \big[U\, V^\top \bar x(t)\big]_i,
        \qquad P(x_i(t)=1 \mid \text{past}) = \sigma(\eta_i(t)),

    with ``W^{(k)}`` the ``N x N`` coupling at lag ``k`` (``W[i, j]`` = influence of ``j`` on ``i``), and an optional
    rank-``r`` latent input: :math:`\bar x(t) = \sum_{k=d}^{H_z} \kappa_{k-d}\, x(t-k)` is the population activity
    from lag ``d`` on (default ``d = H + 1``: the latent sees only the past beyond the coupling filter, so it cannot
    stand in for part of ``W``), filtered by a normalized exponential kernel :math:`\kappa_j \propto e^{-j/\tau}`
    (learned ``tau``), projected to ``r`` latent factors by ``V`` and fed back by ``U``. The latent term carries slow
    shared drive (for example from hidden neurons) through a low-rank channel so that it is not forced into the
    pairwise couplings.

    Args:
        n_neurons: ``N``.
        history: ``H``, number of lags of the coupling filter.
        latent_rank: ``r`` (0 disables the latent input).
        latent_history: ``H_z``, bins of activity the latent input integrates.
        latent_tau: initial kernel time constant in bins.
        latent_delay: ``d``, the first lag of the latent input (default ``history + 1``; at most ``H_z``).

    Shapes:
        input ``(B, L, N)`` 0/1 spikes; output logits ``(B, L - context, N)`` for bins ``context .. L-1``, where
        ``context = max(history, latent_history if latent_rank else 0)``.
    """

    def __init__(
        self,
        n_neurons: int,
        history: int = 1,
        latent_rank: int = 0,
        latent_history: int = 20,
        latent_tau: float = 5.0,
        latent_delay: int | None = None,
    ) -> None:
        super().__init__()
        if n_neurons < 1 or history < 1 or latent_rank < 0 or latent_history < 1 or latent_tau <= 0:
            raise ValueError(
                "need n_neurons >= 1, history >= 1, latent_rank >= 0, latent_history >= 1 and latent_tau > 0; got "
                f"{n_neurons}, {history}, {latent_rank}, {latent_history}, {latent_tau}"
            )
        self.n_neurons, self.history, self.latent_rank = int(n_neurons), int(history), int(latent_rank)
        self.latent_history = int(latent_history) if latent_rank else 0
        self.latent_delay = resolve_latent_delay(history, latent_delay, latent_history) if latent_rank else None
        self.context = glm_context(self.history, self.latent_history)
        self._latent_tau0 = float(latent_tau)
        self.bias = nn.Parameter(torch.empty(n_neurons))
        self.weight = nn.Parameter(torch.empty(history, n_neurons, n_neurons))  # weight[k-1] = W^(k)
        if latent_rank:
            self.latent_in = nn.Parameter(torch.empty(n_neurons, latent_rank))  # V
            self.latent_out = nn.Parameter(torch.empty(n_neurons, latent_rank))  # U
            self.log_latent_tau = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.bias, math.log(0.05 / 0.95))
        nn.init.zeros_(self.weight)
        if self.latent_rank:
            nn.init.normal_(self.latent_in, std=1.0 / math.sqrt(self.n_neurons))
            nn.init.zeros_(self.latent_out)
            nn.init.constant_(self.log_latent_tau, math.log(self._latent_tau0))

    def coupling_matrix(self) -> Tensor:
        """Net coupling ``sum_k W^(k)``, ``(N, N)``: ``[i, j]`` = influence of ``j`` on ``i``."""
        return self.weight.sum(0)

    def forward(self, x: Tensor) -> Tensor:
        _check_window(x, self.n_neurons, self.context)
        latent = {}
        if self.latent_rank:
            latent = dict(latent_in=self.latent_in, latent_out=self.latent_out, log_latent_tau=self.log_latent_tau,
                          latent_history=self.latent_history, latent_delay=self.latent_delay)
        return glm_logits(x, self.bias, self.weight, context=self.context, **latent)
