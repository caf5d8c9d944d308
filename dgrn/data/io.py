"""Users' recordings: NWB ``Units`` tables (pynwb, extra ``nwb``), Neo IO formats (extra ``neo``), spike-time and
binned ``.npz``; each read into a :class:`~dgrn.data.SpikeData`."""
from __future__ import annotations

import datetime
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dgrn.data.spikedata import SpikeData, atomic_write

__all__ = ["load_recording", "read_neo", "read_nwb", "write_nwb"]


def _require(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"reading this format needs {module}: pip install 'dgrn[{extra}]'") from err


def _select_units(times: np.ndarray, units: np.ndarray, unit_ids: np.ndarray, keep: Sequence | None):
    """Restrict spikes and ids to the units in ``keep`` (unknown ids are an error)."""
    if keep is None:
        return times, units, unit_ids
    keep = np.asarray(keep)
    unknown = np.setdiff1d(keep, unit_ids)
    if unknown.size:
        raise ValueError(f"unknown unit id(s) {unknown[:10].tolist()}; the recording has {unit_ids[:10].tolist()}...")
    mask = np.isin(units, keep)
    return times[mask], units[mask], keep


# ----------------------------------------------------------------------------------------------------- NWB
def write_nwb(data: SpikeData, path: str | Path, *, session_description: str = "dgrn spike data",
              session_start_time: datetime.datetime | None = None) -> Path:
    """Write ``data`` as an NWB file: one ``Units`` row per observed neuron (id = its network index), spike times
    at the centres of their bins (a count of ``c`` gives ``c`` equal times), the bin layout and the ground truth in
    ``scratch`` (``dgrn_*``) so that :func:`read_nwb` gives back the same ``SpikeData``. Written atomically."""
    pynwb = _require("pynwb", "nwb")
    from hdmf.common import VectorData, VectorIndex

    path = Path(path)
    t_start = float(data.meta.get("t_start", 0.0))
    bins, cols = torch.nonzero(data.spikes, as_tuple=True)
    counts = data.spikes[bins, cols].long()
    order = torch.argsort(cols * data.n_bins + bins)  # by unit, then time
    bins, cols, counts = bins[order], cols[order], counts[order]
    times = (t_start + (torch.repeat_interleave(bins, counts).double() + 0.5) * data.dt).numpy()
    per_unit = torch.bincount(torch.repeat_interleave(cols, counts), minlength=data.n_neurons)
    nwbfile = pynwb.NWBFile(
        session_description=session_description, identifier=str(uuid.uuid4()),
        session_start_time=session_start_time or datetime.datetime.now(datetime.timezone.utc),
    )
    spike_times = VectorData(name="spike_times", description="spike times (s), at bin centres", data=times)
    index = VectorIndex(name="spike_times_index", data=per_unit.cumsum(0).numpy(), target=spike_times)
    nwbfile.units = pynwb.misc.Units(name="units", description="observed neurons", id=data.observed.numpy(),
                                     columns=[spike_times, index])
    layout = {"dt": data.dt, "t_start": t_start, "n_bins": data.n_bins, "meta": data.meta}
    nwbfile.add_scratch(json.dumps(layout), name="dgrn_layout", description="dgrn bin layout and meta (JSON)")
    w = data.true_couplings
    if w is not None and w.layout != torch.strided:
        nwbfile.add_scratch(w.indices().numpy(), name="dgrn_true_couplings_indices", description="(2, E) post, pre")
        nwbfile.add_scratch(w.values().numpy(), name="dgrn_true_couplings_values", description="W[post, pre]")
        nwbfile.add_scratch(np.array(w.shape), name="dgrn_true_couplings_shape", description="(M, M)")
    elif w is not None:
        nwbfile.add_scratch(w.numpy(), name="dgrn_true_couplings", description="W[post, pre] over all neurons")
    if data.true_communities is not None:
        nwbfile.add_scratch(data.true_communities.numpy(), name="dgrn_true_communities", description="labels")

    def write(tmp: str) -> None:
        with warnings.catch_warnings():  # the temporary file (renamed into place after) does not end in .nwb
            warnings.filterwarnings("ignore", message="The file path provided", category=UserWarning)
            with pynwb.NWBHDF5IO(tmp, "w") as io:
                io.write(nwbfile)

    return atomic_write(path, write)


def read_nwb(path: str | Path, dt: float | None = None, *, t_start: float | None = None,
             t_stop: float | None = None, units: Sequence | None = None) -> SpikeData:
    """Bin the spike times of an NWB file's ``Units`` table at ``dt`` seconds.

    Column ``k`` is the ``k``-th unit of the table (or of ``units``, a selection of unit ids); ``meta["unit_ids"]``
    holds the ids. For a file written by :func:`write_nwb`, ``dt``, ``t_start``/``t_stop`` and the ground truth
    come from the file unless given. ``t_start`` defaults to 0 (session start), ``t_stop`` to just after the last
    spike. A file without a ``Units`` table, or ``dt <= 0``, is an error.
    """
    pynwb = _require("pynwb", "nwb")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no NWB file at {path}")
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        nwbfile = io.read()
        table = nwbfile.units
        if table is None or len(table.id) == 0:
            raise ValueError(f"{path} has no Units table (no sorted spike times to read)")
        unit_ids = np.asarray(table.id.data[:])
        ends = np.asarray(table.spike_times_index.data[:], dtype=np.int64)
        times = np.asarray(table.spike_times.data[:], dtype=np.float64)
        scratch = {name: np.asarray(item.data) for name, item in nwbfile.scratch.items()} if nwbfile.scratch else {}
    unit_of_spike = np.repeat(unit_ids, np.diff(ends, prepend=0))
    layout = json.loads(str(scratch["dgrn_layout"])) if "dgrn_layout" in scratch else None
    truth: dict[str, Any] = {}
    if layout is not None and units is None:  # a dgrn file, read whole: restore the SpikeData it came from
        dt = layout["dt"] if dt is None else dt
        t_start = layout["t_start"] if t_start is None else t_start
        if t_stop is None and np.isclose(dt, layout["dt"]):
            t_stop = t_start + layout["n_bins"] * dt
        if "dgrn_true_couplings_indices" in scratch:
            truth["true_couplings"] = torch.sparse_coo_tensor(
                torch.as_tensor(scratch["dgrn_true_couplings_indices"].astype(np.int64)),
                torch.as_tensor(scratch["dgrn_true_couplings_values"]),
                tuple(int(k) for k in scratch["dgrn_true_couplings_shape"]), check_invariants=True)
        elif "dgrn_true_couplings" in scratch:
            truth["true_couplings"] = scratch["dgrn_true_couplings"]
        if "dgrn_true_communities" in scratch:
            truth["true_communities"] = scratch["dgrn_true_communities"]
    if dt is None:
        raise ValueError(f"give dt, the bin size in seconds, to bin the spike times of {path}")
    times, unit_of_spike, unit_ids = _select_units(times, unit_of_spike, unit_ids, units)
    meta = {"source": str(path), "format": "nwb"}
    if layout is not None and units is None:
        meta = {**layout["meta"], **meta}
    data = SpikeData.from_spike_times(times, unit_of_spike, dt, 0.0 if t_start is None else t_start, t_stop,
                                      unit_ids=unit_ids, meta=meta)
    if truth:  # the unit ids of a dgrn file are the network indices of the observed neurons
        data = SpikeData(data.spikes, data.dt, observed=torch.as_tensor(unit_ids.astype(np.int64)), meta=data.meta, **truth)
    return data


# ----------------------------------------------------------------------------------------------------- Neo
def read_neo(path: str | Path, dt: float, *, block: int = 0, segment: int = 0, t_start: float | None = None,
             t_stop: float | None = None) -> SpikeData:
    """Bin the spike trains of one segment of a recording in any format Neo's IO reads (Plexon, Blackrock,
    Spike2, NeuroExplorer, NIX, NeoMatlab, ...; chosen from the file name).

    Column ``k`` is spike train ``k`` of the segment; ``meta["unit_names"]`` holds their names. ``t_start`` /
    ``t_stop`` default to the earliest start and latest stop of the trains. Pickle files are refused (reading
    them runs code).
    """
    neo = _require("neo", "neo")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no recording at {path}")
    try:
        reader = neo.io.get_io(str(path))
    except IOError as err:
        raise ValueError(f"Neo has no IO for {path.name!r} ({err})") from err
    if isinstance(reader, neo.io.PickleIO):
        raise ValueError(f"refusing to read {path}: a pickle file runs code when loaded")
    blocks = reader.read(lazy=False)
    if not 0 <= block < len(blocks):
        raise ValueError(f"{path} has {len(blocks)} block(s); block {block} does not exist")
    segments = blocks[block].segments
    if not 0 <= segment < len(segments):
        raise ValueError(f"{path} block {block} has {len(segments)} segment(s); segment {segment} does not exist")
    trains = segments[segment].spiketrains
    if len(trains) == 0:
        raise ValueError(f"{path} segment {segment} has no spike trains")
    times = np.concatenate([np.asarray(st.rescale("s").magnitude, dtype=np.float64).reshape(-1) for st in trains])
    units = np.repeat(np.arange(len(trains)), [len(st) for st in trains])
    if t_start is None:
        t_start = min(float(st.t_start.rescale("s").magnitude) for st in trains)
    if t_stop is None:
        t_stop = max(float(st.t_stop.rescale("s").magnitude) for st in trains)
    meta = {"source": str(path), "format": f"neo:{type(reader).__name__}", "block": block, "segment": segment,
            "unit_names": [st.name if st.name is not None else str(k) for k, st in enumerate(trains)]}
    return SpikeData.from_spike_times(times, units, dt, t_start, t_stop, unit_ids=np.arange(len(trains)), meta=meta)


# -------------------------------------------------------------------------------------------- dispatching
def read_spike_mat(path: str | Path, dt: float, *, variable: str = "spks", t_start: float = 0.0,
                   t_stop: float | None = None, meta: dict | None = None) -> SpikeData:
    """Bin a MATLAB file of spike events: ``variable`` is an ``(n_spikes, 2)`` array, column 0 the unit ID (integers
    from 1), column 1 the spike time in seconds (the format of the Aplysia recordings, :func:`load_aplysia`).

    Every unit from 1 to the largest ID gets a column (silent ones included, so the columns are the IDs in order);
    ``t_stop`` defaults to just after the last spike; spikes outside ``[t_start, t_stop)`` are dropped (choose a
    stretch of the recording). Raises ``ValueError`` for a missing variable, a wrong shape, or IDs that are not
    positive integers."""
    from scipy.io import loadmat

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no recording at {path}")
    content = loadmat(path)
    if variable not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise ValueError(f"{path} has no variable {variable!r} (found {found})")
    events = np.asarray(content[variable], dtype=np.float64)
    if events.ndim != 2 or events.shape[1] != 2:
        raise ValueError(f"{path}: {variable} must be (n_spikes, 2) [unit ID, time in s], got {events.shape}")
    ids, times = events[:, 0], events[:, 1]
    if ids.size and (ids.min() < 1 or not np.all(ids == np.round(ids))):
        raise ValueError(f"{path}: unit IDs must be integers from 1")
    ids = ids.astype(np.int64)
    n_units = int(ids.max()) if ids.size else 0
    keep = times >= t_start  # t_stop=None: from_spike_times ends just after the last spike
    if t_stop is not None:
        keep &= times < t_stop
    return SpikeData.from_spike_times(times[keep], ids[keep], dt, t_start, t_stop,
                                      unit_ids=np.arange(1, n_units + 1),
                                      meta={"source": str(path), "format": "spike-event mat", **(meta or {})})


def _has_spike_events(path: Path, variable: str) -> bool:
    """Whether a ``.mat`` file holds an ``(n, 2)`` array ``variable`` (spike events; other ``.mat`` files go to Neo)."""
    from scipy.io import whosmat

    try:
        return any(name == variable and len(shape) == 2 and shape[1] == 2 for name, shape, _ in whosmat(path))
    except (ValueError, NotImplementedError):  # MATLAB v7.3 (HDF5) and other files scipy does not read
        return False


#: where :func:`load_aplysia` finds the recordings: ``$DGRN_APLYSIA_DIR``, else the copy shipped in ``data/aplysia``
APLYSIA_DIR = Path(__file__).resolve().parents[2] / "data" / "aplysia"
#: the pedal-nerve stimulus that evokes the locomotion program, seconds from the start of every recording
APLYSIA_STIMULUS_S = 30.0


def aplysia_dir(root: str | Path | None = None) -> Path:
    return Path(root if root is not None else os.environ.get("DGRN_APLYSIA_DIR", APLYSIA_DIR))


def aplysia_recordings(root: str | Path | None = None) -> list[str]:
    """Names of the Aplysia recordings (``<preparation>da01`` .. ``da03``), sorted."""
    folder = aplysia_dir(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"no Aplysia recordings at {folder} (set DGRN_APLYSIA_DIR or pass root)")
    return sorted(p.stem for p in folder.glob("*.mat"))


def load_aplysia(recording: str = "Jun0214da01", dt: float = 0.02, *, root: str | Path | None = None,
                 t_start: float = 0.0, t_stop: float | None = None,
                 stimulus_time_s: float | None = APLYSIA_STIMULUS_S) -> SpikeData:
    """One of the 30 voltage-sensitive-dye recordings of the *Aplysia* pedal ganglion (Bruno, Frost & Humphries 2017,
    eLife 6:e27342; MIT licence, ``data/aplysia/LICENSE.txt``): 75–160 neurons, ~122.7 s, spontaneous activity and
    then a pedal-nerve stimulus at 30 s that evokes a rhythmic locomotion program.

    Binned at ``dt`` seconds from ``t_start`` to ``t_stop`` (default: the last spike). ``meta`` records the
    preparation, the program (``da01`` .. ``da03``: three evoked programs of one preparation, with the same neuron
    count), ``stimulus_time_s`` relative to ``t_start`` and ``stimulus_bin`` (``None`` for ``stimulus_time_s=None``,
    e.g. for a stretch that leaves the stimulus out). Raises ``ValueError`` for an unknown recording or a stimulus time
    outside the stretch.
    """
    names = aplysia_recordings(root)
    if recording not in names:
        raise ValueError(f"unknown Aplysia recording {recording!r}; available: {names}")
    prep, program = recording[:-4], recording[-4:]
    meta = {"dataset": "aplysia", "recording": recording, "preparation": prep, "program": program,
            "citation": "Bruno, Frost & Humphries (2017) eLife 6:e27342", "licence": "MIT"}
    data = read_spike_mat(aplysia_dir(root) / f"{recording}.mat", dt, t_start=t_start, t_stop=t_stop, meta=meta)
    end = data.meta["t_stop"]
    if stimulus_time_s is None:
        data.meta.update(stimulus_time_s=None, stimulus_bin=None)
    else:
        if not t_start <= stimulus_time_s < end:
            raise ValueError(f"stimulus at {stimulus_time_s} s lies outside the recording's stretch [{t_start}, {end}) s; "
                             "pass stimulus_time_s=None for a stretch without it")
        data.meta.update(stimulus_time_s=float(stimulus_time_s - t_start),
                         stimulus_bin=int(np.floor((stimulus_time_s - t_start) / dt + 1e-9)))
    return data


def load_recording(path: str | Path, dt: float | None = None, **kwargs: Any) -> SpikeData:
    """Read a recording, by file type:

    - ``.npz`` with ``spikes`` ``(T, N)``: binned counts (:meth:`SpikeData.load`).
    - ``.npz`` with ``times`` (s) and ``units`` arrays, one entry per spike (optional ``t_start``, ``t_stop``,
      ``unit_ids``): binned at ``dt`` by :meth:`SpikeData.from_spike_times`.
    - ``.mat`` with an ``(n_spikes, 2)`` array ``spks`` (or ``variable=``) of unit IDs and times:
      :func:`read_spike_mat`; other ``.mat`` files (NeoMatlab) go to Neo.
    - ``.nwb``: :func:`read_nwb`. Anything else: :func:`read_neo` (Neo's IOs).

    ``kwargs`` go to the reader (``t_start``, ``t_stop``, ``units``, ``segment``...).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no recording at {path}")
    suffix = path.suffix.lower()
    if suffix == ".nwb":
        return read_nwb(path, dt, **kwargs)
    if suffix == ".mat" and _has_spike_events(path, kwargs.get("variable", "spks")):
        if dt is None:
            raise ValueError(f"give dt, the bin size in seconds, to bin the spike times of {path}")
        return read_spike_mat(path, dt, **kwargs)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            files = set(f.files)
            if "spikes" in files:
                return SpikeData.load(path, dt=dt)
            if not {"times", "units"} <= files:
                raise ValueError(f"{path} holds neither 'spikes' (binned) nor 'times' and 'units' (spike times); "
                               f"found {sorted(files)}")
            if dt is None:
                raise ValueError(f"give dt, the bin size in seconds, to bin the spike times of {path}")
            args = {k: (f[k].item() if f[k].ndim == 0 else f[k]) for k in ("t_start", "t_stop", "unit_ids") if k in files}
            times, units = f["times"], f["units"]
        args.update(kwargs)
        return SpikeData.from_spike_times(times, units, dt, meta={"source": str(path), "format": "spike-time npz"}, **args)
    if dt is None:
        raise ValueError(f"give dt, the bin size in seconds, to bin the spike trains of {path}")
    return read_neo(path, dt, **kwargs)
