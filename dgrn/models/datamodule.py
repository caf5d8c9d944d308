"""LightningDataModule over a :class:`~dgrn.data.SpikeData`: windows, contiguous-block splits, subsampling."""
from __future__ import annotations

from functools import cached_property

import lightning as L
import torch
from torch.utils.data import DataLoader

from dgrn.data import SpikeData, WindowDataset, block_split
from dgrn.data.windows import EpochShuffleSampler
from dgrn.datasets import build_dataset

__all__ = ["SpikeDataModule"]


class SpikeDataModule(L.LightningDataModule):
    """Windows of a (possibly subsampled) recording, split into train/val/test by contiguous time blocks.

    Args:
        dataset: ``{"name": <source>, **kwargs}`` for :func:`dgrn.datasets.build_dataset`, or a ``SpikeData``.
        observed_fraction: fraction of neurons kept observed (the rest become hidden; ground truth is kept).
        subsample_seed: seed of the choice of observed neurons.
        subsample_strategy: ``"random"``, ``"community"`` (biased towards some communities) or ``"block"``
            (a contiguous run of neurons); see :meth:`dgrn.data.SpikeData.subsample`.
        subsample_population: ``"all"`` or ``"excitatory"`` (observe excitatory neurons only, of a simulated E/I
            network; ``observed_fraction`` is then of them).
        window: bins per window. The first ``context`` bins of a window are history only; windows start
            ``window - context`` bins apart, so each bin of a split is scored once.
        context: bins of history the model needs (``train.py`` sets it from the model).
        val_fraction, test_fraction, n_blocks, split_seed: see :func:`dgrn.data.block_split`.
        batch_size, num_workers: DataLoader settings. ``seed`` fixes the training order per epoch.
    """

    def __init__(
        self,
        dataset: dict | SpikeData,
        observed_fraction: float = 1.0,
        subsample_seed: int = 0,
        subsample_strategy: str = "random",
        subsample_population: str = "all",
        window: int = 64,
        context: int = 1,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        n_blocks: int = 20,
        split_seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(dataset, SpikeData):
            self._given = dataset
            self.save_hyperparameters(ignore=["dataset"])
        else:
            if "name" not in dataset:
                raise ValueError("dataset config needs a 'name' (one of dgrn.datasets.DATASETS)")
            self._given = None
            self.save_hyperparameters()
        self.dataset_cfg = None if isinstance(dataset, SpikeData) else dict(dataset)
        self.context = int(context)
        self.splits: dict[str, WindowDataset] = {}

    @cached_property
    def spike_data(self) -> SpikeData:
        """The recording as the model sees it (after subsampling)."""
        data = self._given
        if data is None:
            cfg = dict(self.dataset_cfg)
            data = build_dataset(cfg.pop("name"), **cfg)
        population = self.hparams.get("subsample_population", "all")  # absent from older checkpoints
        if self.hparams.observed_fraction < 1.0 or population != "all":
            data = data.subsample(self.hparams.observed_fraction, seed=self.hparams.subsample_seed,
                                  strategy=self.hparams.subsample_strategy, population=population)
        return data

    @property
    def n_neurons(self) -> int:
        return self.spike_data.n_neurons

    @property
    def observed_couplings(self) -> torch.Tensor | None:
        return self.spike_data.observed_couplings()

    def split_spikes(self, split: str = "train", return_lengths: bool = False) -> torch.Tensor | tuple:
        """The bins of one split, ``(T_split, N)``: its contiguous blocks concatenated in time (what graph inference
        and the hierarchy of :class:`dgrn.models.DGRN` are fitted on, so validation and test bins stay unseen); with
        ``return_lengths``, also the blocks' lengths (a list of ints summing to ``T_split``)."""
        hp = self.hparams
        segments = block_split(self.spike_data.n_bins, hp.val_fraction, hp.test_fraction, hp.n_blocks, hp.split_seed)
        if split not in segments or not segments[split]:
            raise ValueError(f"no {split!r} split (splits: {sorted(k for k, v in segments.items() if v)})")
        spikes = torch.cat([self.spike_data.spikes[a:b] for a, b in segments[split]])
        return (spikes, [b - a for a, b in segments[split]]) if return_lengths else spikes

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if hp.window <= self.context:
            raise ValueError(f"window ({hp.window} bins) must exceed the model context ({self.context} bins)")
        data = self.spike_data
        segments = block_split(data.n_bins, hp.val_fraction, hp.test_fraction, hp.n_blocks, hp.split_seed)
        stride = hp.window - self.context
        for split, segs in segments.items():
            if segs:
                self.splits[split] = WindowDataset(data.spikes, segs, hp.window, stride)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.splits:
            raise RuntimeError(f"no {split!r} split: call setup() first, or give it a nonzero fraction")
        ds = self.splits[split]
        sampler = EpochShuffleSampler(len(ds), self.hparams.seed) if shuffle else None
        return DataLoader(
            ds, batch_size=self.hparams.batch_size, sampler=sampler, num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
