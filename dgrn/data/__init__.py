"""Spike data containers, windowing and splits (no Lightning here)."""
from dgrn.data.spikedata import SpikeData, atomic_write
from dgrn.data.windows import WindowDataset, block_split
from dgrn.data.io import load_recording, read_neo, read_nwb, write_nwb

__all__ = ["SpikeData", "WindowDataset", "block_split", "atomic_write", "load_recording", "read_neo", "read_nwb",
           "write_nwb"]
