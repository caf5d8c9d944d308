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


def _clustered_lif(preset: str = "small", duration_s: float = 20.0, dt: float = 0.005, **kwargs) -> SpikeData:
    from dgrn.sim.lif import lif_preset

    return lif_preset(preset, duration_s, dt, **kwargs)


def _connectome(path: str, t: int, **kwargs) -> SpikeData:
    from dgrn.sim.connectome import connectome_dynamics

    return connectome_dynamics(path, t, **kwargs)


def _recording(path: str, dt: float | None = None, **kwargs) -> SpikeData:
    from dgrn.data.io import load_recording

    return load_recording(path, dt, **kwargs)


def _ising1d(**kwargs) -> SpikeData:
    from dgrn.sim.ising import ising1d

    return ising1d(**kwargs)


def _ising2d(**kwargs) -> SpikeData:
    from dgrn.sim.ising import ising2d

    return ising2d(**kwargs)


#: Data sources by name (the ``data.dataset.name`` of a config).
DATASETS: dict[str, Callable[..., SpikeData]] = {
    "kinetic_ising": _kinetic_ising,
    "file": _file,
    "clustered_lif": _clustered_lif,
    "connectome": _connectome,
    "recording": _recording,
    "ising1d": _ising1d,
    "ising2d": _ising2d,
}


#: Sources that draw trajectories from a seeded network: ``sample_seed`` gives fresh data of the same network.
SIMULATORS = frozenset({"kinetic_ising", "clustered_lif", "connectome", "ising1d", "ising2d"})


def fresh_trajectories(dataset: dict, sample_seed: int | None) -> dict:
    """The dataset config with new trajectories of the same network (unchanged for recorded data, and for
    ``sample_seed=None``: the training recording itself, whose test split is held out)."""
    if dataset.get("name") not in SIMULATORS or sample_seed is None:
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
