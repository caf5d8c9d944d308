"""Rollouts that keep what does not change in a moving window: its last bins without a copy per step, and the
state-independent part of a GRU's gates."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RollingWindow", "gru_input_gates", "gru_states"]


class RollingWindow:
    """The last ``width`` entries along dim 1 of a sequence that grows one entry at a time: ``values`` ``(B, width,
    ...)`` is a view of a buffer twice as long, whose newest ``width - 1`` entries move to its front once every
    ``width`` pushes, so a push costs one entry amortized, not a copy of the window (as ``torch.cat([w[:, 1:],
    new], 1)`` would). Pushing changes the object in place.

    Args:
        x: the first window ``(B, width, ...)`` (copied).
    """

    def __init__(self, x: Tensor) -> None:
        self.width, self.start = x.shape[1], 0
        self.buffer = x.new_empty(x.shape[0], 2 * self.width, *x.shape[2:])
        self.buffer[:, :self.width] = x

    @property
    def values(self) -> Tensor:
        return self.buffer[:, self.start:self.start + self.width]

    def push(self, entry: Tensor) -> None:
        """Drop the oldest entry and append ``entry`` ``(B, ...)``."""
        if not self.width:
            return
        if self.start + self.width == self.buffer.shape[1]:  # full: the newest width - 1 entries to the front
            self.buffer[:, :self.width - 1] = self.buffer[:, self.start + 1:]
            self.start = -1
        self.buffer[:, self.start + self.width] = entry
        self.start += 1


def gru_input_gates(gru: nn.GRU, x: Tensor) -> Tensor:
    r""":math:`W_{i} x_t + b_{i}` ``(..., 3H)`` of inputs ``x`` ``(..., F)`` for a one-layer unidirectional
    ``nn.GRU``: the part of its gates that does not depend on the state (reset, update, new, in PyTorch's order).
    Over a window that moves one bin at a time, each bin's gates can be kept and only the recurrence run again
    (:func:`gru_states`)."""
    if gru.num_layers != 1 or gru.bidirectional or not gru.bias:
        raise ValueError("gru_input_gates needs a one-layer unidirectional nn.GRU with biases")
    return F.linear(x, gru.weight_ih_l0, gru.bias_ih_l0)


def gru_states(gru: nn.GRU, input_gates: Tensor) -> Tensor:
    r"""The states ``(B, T, H)`` of a one-layer ``nn.GRU`` run from zero over the inputs whose
    :func:`gru_input_gates` are ``input_gates`` ``(B, T, 3H)`` (``batch_first``): PyTorch's recurrence
    :math:`r = \sigma(g_r + W_{hr} h + b_{hr})`, :math:`z = \sigma(g_z + W_{hz} h + b_{hz})`,
    :math:`n = \tanh(g_n + r \odot (W_{hn} h + b_{hn}))`, :math:`h' = (1 - z) \odot n + z \odot h`; the same as
    ``gru(x)[0]`` up to rounding, without the product of every input by :math:`W_i` again."""
    hidden = gru.hidden_size
    h = input_gates.new_zeros(input_gates.shape[0], hidden)
    out = input_gates.new_empty(*input_gates.shape[:2], hidden)
    for t in range(input_gates.shape[1]):
        g = input_gates[:, t]
        gh = F.linear(h, gru.weight_hh_l0, gru.bias_hh_l0)
        rz = torch.sigmoid(g[:, :2 * hidden] + gh[:, :2 * hidden])
        n = torch.tanh(g[:, 2 * hidden:] + rz[:, :hidden] * gh[:, 2 * hidden:])
        h = n + rz[:, hidden:] * (h - n)
        out[:, t] = h
    return out
