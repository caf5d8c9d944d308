"""Named data sources: simulators and files, each returning a :class:`~dgrn.data.SpikeData`."""
from __future__ import annotations

from typing import Callable

from dgrn.data import SpikeData

__all__ = ["DATASETS", "SIMULATORS", "build_dataset", "fresh_trajectories"]


def _kinetic_ising(**kwargs) -> SpikeData:
    from dgrn.sim import kinetic_ising

    return kinetic_ising(**kwargs)


def _file(path: str) -> SpikeData:
    return SpikeData.load(path)


#: Data sources by name (the ``data.dataset.name`` of a config).
DATASETS: dict[str, Callable[..., SpikeData]] = {"kinetic_ising": _kinetic_ising, "file": _file}


#: Sources that draw trajectories from a seeded network: ``sample_seed`` gives fresh data of the same network.
SIMULATORS = frozenset({"kinetic_ising"})


def fresh_trajectories(dataset: dict, sample_seed: int) -> dict:
    """The dataset config with new trajectories of the same network (unchanged for recorded data)."""
    if dataset.get("name") not in SIMULATORS:
        return dict(dataset)
    return {**dataset, "sample_seed": int(sample_seed)}


def build_dataset(name: str, **kwargs) -> SpikeData:
    """Build the data source ``name`` with its keyword arguments; unknown names list the valid ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {sorted(DATASETS)}")
    try:
        return DATASETS[name](**kwargs)
    except TypeError as err:
        raise TypeError(f"bad arguments for dataset {name!r}: {err}") from err
