"""Cutting a recording into windows, with train/val/test splits by contiguous time blocks."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["block_split", "WindowDataset", "EpochShuffleSampler"]

SPLITS = ("train", "val", "test")


def block_split(
    n_bins: int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    n_blocks: int = 20,
    seed: int = 0,
) -> dict[str, list[tuple[int, int]]]:
    """Assign contiguous time blocks to train/val/test.

    The recording ``[0, n_bins)`` is cut into ``n_blocks`` contiguous blocks of (nearly) equal length; a seeded
    permutation gives ``round(val_fraction * n_blocks)`` blocks to validation, as many for test, the rest to
    training. Windows are later cut *inside* blocks, so no window (nor its history) crosses into another split.
    Spreading the held-out blocks over the recording keeps slow drifts from biasing one split.

    Returns:
        ``{"train": [(start, end), ...], "val": [...], "test": [...]}``, sorted, adjacent blocks merged.
    """
    if n_blocks < 1 or n_blocks > n_bins:
        raise ValueError(f"n_blocks must lie in [1, n_bins={n_bins}], got {n_blocks}")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"need val_fraction, test_fraction >= 0 with a sum < 1; got {val_fraction}, {test_fraction}")
    n_val = round(val_fraction * n_blocks)
    n_test = round(test_fraction * n_blocks)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if test_fraction > 0:
        n_test = max(n_test, 1)
    if n_val + n_test >= n_blocks:
        raise ValueError(f"{n_blocks} blocks are too few for val={val_fraction}, test={test_fraction}: raise n_blocks")
    edges = [round(i * n_bins / n_blocks) for i in range(n_blocks + 1)]
    order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(int(seed))).tolist()
    owner = {b: "val" for b in order[:n_val]} | {b: "test" for b in order[n_val:n_val + n_test]}
    out: dict[str, list[tuple[int, int]]] = {s: [] for s in SPLITS}
    for b in range(n_blocks):
        segs = out[owner.get(b, "train")]
        start, end = edges[b], edges[b + 1]
        if segs and segs[-1][1] == start:
            segs[-1] = (segs[-1][0], end)
        else:
            segs.append((start, end))
    return out


class WindowDataset(Dataset):
    """Windows of ``window`` consecutive bins cut inside the given segments of a ``(T, N)`` recording.

    Consecutive windows start ``stride`` bins apart and never cross a segment boundary. With
    ``stride = window - context`` every bin after the first ``context`` bins of a segment is a prediction
    target exactly once. Items are ``(window, N)`` float32 tensors (counts, or 0/1 when ``binarize``).
    """

    def __init__(
        self,
        spikes: torch.Tensor,
        segments: list[tuple[int, int]],
        window: int,
        stride: int | None = None,
        binarize: bool = True,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1 bin, got {window}")
        stride = window if stride is None else stride
        if stride < 1:
            raise ValueError(f"stride must be >= 1 bin, got {stride}")
        x = spikes.clamp(max=1) if binarize else spikes
        self.spikes = x.to(torch.float32)
        self.window = int(window)
        starts = [torch.arange(a, b - window + 1, stride) for a, b in segments if b - a >= window]
        if not starts:
            longest = max((b - a for a, b in segments), default=0)
            raise ValueError(
                f"no window of {window} bins fits in the split (its longest contiguous block has {longest} bins): "
                "use a shorter window, fewer blocks, or a longer recording"
            )
        self.starts = torch.cat(starts)

    def __len__(self) -> int:
        return self.starts.numel()

    def __getitem__(self, idx: int) -> torch.Tensor:
        s = int(self.starts[idx])
        return self.spikes[s:s + self.window]


class EpochShuffleSampler(Sampler[int]):
    """Random order that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` at the start of every epoch, so a run resumed from a checkpoint sees the
    same batches as an uninterrupted one.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


