"""LightningModules and DataModules: the training layer on top of the plain-torch algorithms."""
from dgrn.models.datamodule import SpikeDataModule
from dgrn.models.next_bin import NextBinModule

__all__ = ["NextBinModule", "SpikeDataModule"]
