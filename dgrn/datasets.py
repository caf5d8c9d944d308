"""Named data sources: simulators and files, each returning a :class:`~dgrn.data.SpikeData`."""
from __future__ import annotations

import importlib
import inspect
from typing import Callable

from dgrn.data import SpikeData

__all__ = ["DATASETS", "SIMULATORS", "build_dataset", "fresh_trajectories", "accepted_arguments"]


def _forwards(*steps: tuple) -> Callable:
    """Record where a wrapper's ``**kwargs`` go, in turn, so that :func:`accepted_arguments` can check a config
    without running the simulator. A step is ``(module, function, passed[, filled])``: ``passed``, parameters the
    caller sets itself; ``filled``, parameters the caller has values for unless given (a preset's)."""
    def mark(fn: Callable) -> Callable:
        fn.forwards = steps
        return fn

    return mark


@_forwards(("dgrn.sim", "kinetic_ising", ()))
def _kinetic_ising(**kwargs) -> SpikeData:
    from dgrn.sim import kinetic_ising

    return kinetic_ising(**kwargs)


@_forwards(("dgrn.sim", "hidden_markov_kinetic_ising", ()))
def _hidden_markov_kinetic_ising(**kwargs) -> SpikeData:
    from dgrn.sim import hidden_markov_kinetic_ising

    return hidden_markov_kinetic_ising(**kwargs)


@_forwards(("dgrn.sim", "family_kinetic_ising", ()))
def _family_kinetic_ising(**kwargs) -> SpikeData:
    from dgrn.sim import family_kinetic_ising

    return family_kinetic_ising(**kwargs)


def _file(path: str, dt: float | None = None) -> SpikeData:
    return SpikeData.load(path, dt=dt)


@_forwards(("dgrn.sim.lif", "lif_preset", ("name",)), ("dgrn.sim.lif", "clustered_lif", ("duration_s", "dt"),
                                                                 ("n_exc", "n_inh", "n_clusters")))
def _clustered_lif(preset: str = "small", duration_s: float = 20.0, dt: float = 0.005, **kwargs) -> SpikeData:
    from dgrn.sim.lif import lif_preset

    return lif_preset(preset, duration_s, dt, **kwargs)


@_forwards(("dgrn.sim.connectome", "connectome_dynamics", ("connectome",)),
           ("dgrn.sim.connectome", "load_connectome", ("path",)))
def _connectome(path: str, t: int, **kwargs) -> SpikeData:
    from dgrn.sim.connectome import connectome_dynamics

    return connectome_dynamics(path, t, **kwargs)


# no _forwards: its **kwargs go to the reader of the file type (Neo's IOs take their own)
def _recording(path: str, dt: float | None = None, **kwargs) -> SpikeData:
    from dgrn.data.io import load_recording

    return load_recording(path, dt, **kwargs)


@_forwards(("dgrn.data.io", "load_aplysia", ()))
def _aplysia(**kwargs) -> SpikeData:
    from dgrn.data.io import load_aplysia

    return load_aplysia(**kwargs)


@_forwards(("dgrn.sim.ising", "ising1d", ()))
def _ising1d(**kwargs) -> SpikeData:
    from dgrn.sim.ising import ising1d

    return ising1d(**kwargs)


@_forwards(("dgrn.sim.ising", "ising2d", ()))
def _ising2d(**kwargs) -> SpikeData:
    from dgrn.sim.ising import ising2d

    return ising2d(**kwargs)


#: Data sources by name (the ``data.dataset.name`` of a config).
DATASETS: dict[str, Callable[..., SpikeData]] = {
    "kinetic_ising": _kinetic_ising,
    "hidden_markov_kinetic_ising": _hidden_markov_kinetic_ising,
    "family_kinetic_ising": _family_kinetic_ising,
    "file": _file,
    "clustered_lif": _clustered_lif,
    "connectome": _connectome,
    "recording": _recording,
    "aplysia": _aplysia,
    "ising1d": _ising1d,
    "ising2d": _ising2d,
}


#: Sources that draw trajectories from a seeded network: ``sample_seed`` gives fresh data of the same network.
SIMULATORS = frozenset({"kinetic_ising", "hidden_markov_kinetic_ising", "clustered_lif", "connectome", "ising1d",
                        "ising2d"})  # family_kinetic_ising: one trajectory per network seed


def fresh_trajectories(dataset: dict, sample_seed: int | None) -> dict:
    """The dataset config with new trajectories of the same network (unchanged for recorded data, and for
    ``sample_seed=None``: the training recording itself, whose test split is held out)."""
    if dataset.get("name") not in SIMULATORS or sample_seed is None:
        return dict(dataset)
    return {**dataset, "sample_seed": int(sample_seed)}


def accepted_arguments(name: str) -> inspect.Signature:
    """The keyword arguments data source ``name`` accepts: its wrapper's parameters, with the ``**kwargs`` it
    forwards replaced by the parameters of the functions they reach (keyword-only; a final ``**kwargs`` stays when
    the last one takes any)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {sorted(DATASETS)}")
    fn = DATASETS[name]
    sig = inspect.signature(fn)
    for module, function, passed, *filled in getattr(fn, "forwards", ()):
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        taken = {p.name for p in own} | set(passed)
        optional = set(filled[0]) if filled else set()
        target = inspect.signature(getattr(importlib.import_module(module), function))
        extra = [p if p.kind is p.VAR_KEYWORD else
                 p.replace(kind=p.KEYWORD_ONLY, default=None if p.name in optional else p.default)
                 for p in target.parameters.values() if p.name not in taken and p.kind is not p.VAR_POSITIONAL]
        sig = sig.replace(parameters=sorted(own + extra, key=lambda p: p.kind))  # Signature wants kinds in order
    return sig


def build_dataset(name: str, **kwargs) -> SpikeData:
    """Build the data source ``name`` with its keyword arguments. Unknown names list the valid ones; arguments
    that do not fit the source's signature (:func:`accepted_arguments`) raise a ``ValueError`` naming the valid
    ones before anything runs. Errors raised while the source runs propagate unchanged."""
    sig = accepted_arguments(name)
    try:
        sig.bind(**kwargs)
    except TypeError as err:
        valid = [p.name for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        raise ValueError(f"bad arguments for dataset {name!r}: {err}; it takes {valid}") from None
    return DATASETS[name](**kwargs)
