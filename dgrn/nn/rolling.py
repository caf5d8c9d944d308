"""The last bins of a sequence that grows by one bin at a time, without copying them at every step (rollouts)."""
from __future__ import annotations

from torch import Tensor

__all__ = ["RollingWindow"]


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
