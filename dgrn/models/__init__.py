"""LightningModules and DataModules: the training layer on top of the plain-torch algorithms."""
from dgrn.models.datamodule import SpikeDataModule
from dgrn.models.dgrn import DGRN
from dgrn.models.next_bin import NextBinModule

__all__ = ["DGRN", "NextBinModule", "SpikeDataModule", "module_for"]


def module_for(hparams: dict) -> type[NextBinModule]:
    """The LightningModule class of a checkpoint's hyperparameters: :class:`DGRN` for the ``dgrn`` network."""
    return DGRN if hparams.get("net", {}).get("name") == "dgrn" else NextBinModule
