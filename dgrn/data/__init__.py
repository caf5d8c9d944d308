"""Spike data containers, windowing and splits (no Lightning here)."""
from dgrn.data.spikedata import SpikeData, atomic_savez, atomic_write
from dgrn.data.windows import WindowDataset, block_split
from dgrn.data.io import (aplysia_recordings, load_aplysia, load_recording, read_neo, read_nwb, read_spike_mat,
                          write_nwb)

__all__ = ["SpikeData", "WindowDataset", "block_split", "atomic_write", "atomic_savez", "aplysia_recordings",
           "load_aplysia", "load_recording", "read_neo", "read_nwb", "read_spike_mat", "write_nwb"]
