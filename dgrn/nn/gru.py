"""Recurrent baseline: a GRU over past bins with a factorized Bernoulli read-out."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dgrn.nn.glm import _bernoulli_draws, _check_sample_window, _check_window
from dgrn.nn.rolling import RollingWindow, gru_input_gates, gru_states

__all__ = ["GRUBernoulli"]


class GRUBernoulli(nn.Module):
    r"""GRU next-bin model with conditionally independent neurons.

    .. math::
        h_t = \mathrm{GRU}(x_{t-1}, h_{t-1}), \qquad
        P(x_i(t) = 1 \mid x_{<t}) = \sigma\big(b_i + [U h_t]_i\big),

    neurons independent given the past (the factorized baseline the tensor-network decoders are measured against).
    The state starts at zero at the start of every window; the first ``context`` bins warm it up and are not scored.

    Args:
        n_neurons: ``N``. hidden_size: GRU width. num_layers: stacked GRU layers. context: warm-up bins (>= 1).

    Shapes:
        input ``(B, L, N)``; output logits ``(B, L - context, N)`` for bins ``context .. L-1``.
        ``sample(x, n_samples)``: windows ``(B, W >= context, N)`` -> ``(B, n_samples, N)`` draws of the bin after
        each window; ``start_rollout(x)`` and ``rollout_step(state)`` -> ``(B, N)``: the same draws bin after bin
        (:func:`dgrn.mesoscale.rollout`).
    """

    def __init__(self, n_neurons: int, hidden_size: int = 64, num_layers: int = 1, context: int = 16) -> None:
        super().__init__()
        if n_neurons < 1 or hidden_size < 1 or num_layers < 1 or context < 1:
            raise ValueError("need n_neurons, hidden_size, num_layers and context all >= 1; got "
                             f"{n_neurons}, {hidden_size}, {num_layers}, {context}")
        self.n_neurons, self.context = int(n_neurons), int(context)
        self.gru = nn.GRU(n_neurons, hidden_size, num_layers=num_layers, batch_first=True)
        self.readout = nn.Linear(hidden_size, n_neurons)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.gru.reset_parameters()
        self.readout.reset_parameters()
        nn.init.constant_(self.readout.bias, math.log(0.05 / 0.95))

    def forward(self, x: Tensor) -> Tensor:
        _check_window(x, self.n_neurons, self.context)
        states, _ = self.gru(x[:, :-1])  # states[:, t] has seen bins 0..t and predicts bin t + 1
        return self.readout(states[:, self.context - 1:])

    @torch.no_grad()
    def sample(self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws of the bin after each window ``x`` ``(B, W >= context, N)`` given the whole window (the state
        starts at zero at its first bin, as in ``forward``, whose prediction of a bin appended to ``x`` this is):
        ``(B, n_samples, N)``, 0/1 in ``x``'s dtype."""
        _check_sample_window(x, self.n_neurons, self.context)
        states, _ = self.gru(x)
        return _bernoulli_draws(self.readout(states[:, -1]), n_samples, generator)

    @torch.no_grad()
    def start_rollout(self, x: Tensor) -> RollingWindow | None:
        """The state of a rollout from windows ``x`` ``(B, W, N)`` for :meth:`rollout_step`: the GRU's input gates of
        the window's bins (:func:`~dgrn.nn.rolling.gru_input_gates`), which do not change as the window moves on;
        ``None`` for a stacked GRU (the inputs of its upper layers do)."""
        _check_sample_window(x, self.n_neurons, self.context)
        return RollingWindow(gru_input_gates(self.gru, x)) if self.gru.num_layers == 1 else None

    @torch.no_grad()
    def rollout_step(self, state: RollingWindow, generator: torch.Generator | None = None
                     ) -> tuple[Tensor, RollingWindow]:
        """One draw of the bin after the window of ``state`` (:meth:`start_rollout`), ``(B, N)``, as :meth:`sample`
        of that window draws it (up to rounding), and the state moved on by one bin (updated in place): the
        recurrence runs over the window again, from zero, but no bin is multiplied by the input weights twice."""
        h = gru_states(self.gru, state.values)[:, -1]
        draw = _bernoulli_draws(self.readout(h), 1, generator)[:, 0]
        state.push(gru_input_gates(self.gru, draw))
        return draw, state

    def coupling_matrix(self) -> None:
        return None
