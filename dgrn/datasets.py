"""Named data sources: simulators and files, each returning a :class:`~dgrn.data.SpikeData`."""
from __future__ import annotations

from typing import Callable

from dgrn.data import SpikeData

__all__ = ["DATASETS", "build_dataset"]


def _kinetic_ising(**kwargs) -> SpikeData:
    from dgrn.sim import kinetic_ising

    return kinetic_ising(**kwargs)


def _file(path: str) -> SpikeData:
    return SpikeData.load(path)


#: Data sources by name (the ``data.dataset.name`` of a config).
DATASETS: dict[str, Callable[..., SpikeData]] = {"kinetic_ising": _kinetic_ising, "file": _file}


def build_dataset(name: str, **kwargs) -> SpikeData:
    """Build the data source ``name`` with its keyword arguments; unknown names list the valid ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {sorted(DATASETS)}")
    try:
        return DATASETS[name](**kwargs)
    except TypeError as err:
        raise TypeError(f"bad arguments for dataset {name!r}: {err}") from err
