"""`SpikeData`: binned spike trains of the observed neurons plus the ground truth of the whole network."""
from __future__ import annotations

import errno
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["SpikeData", "atomic_write", "atomic_savez"]

_FORMAT_VERSION = 1


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be array-like, got {type(x).__name__}") from err


def _validate_spikes(spikes: Any) -> torch.Tensor:
    s = _as_tensor(spikes, "spikes")
    if s.dim() != 2:
        raise ValueError(f"spikes must have shape (T, N) = (time bins, neurons); got {s.dim()} dimension(s) {tuple(s.shape)}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"spikes is empty: shape {tuple(s.shape)} (need at least one time bin and one neuron)")
    if s.dtype == torch.bool:
        return s.to(torch.uint8)
    if s.is_floating_point():
        if not torch.isfinite(s).all():
            n_bad = int((~torch.isfinite(s)).sum())
            raise ValueError(f"spikes contains {n_bad} NaN or infinite value(s); spike counts must be finite")
        if (s != s.round()).any():
            raise ValueError("spikes contains non-integer values; pass spike counts per bin")
    elif s.is_complex():
        raise TypeError("spikes must hold real integer counts, got a complex array")
    if (s < 0).any():
        n_bad = int((s < 0).sum())
        raise ValueError(f"spikes contains {n_bad} negative count(s); spike counts must be >= 0")
    top = int(s.max())
    dtype = torch.uint8 if top <= 255 else torch.int32
    return s.to(dtype)


def _as_couplings(x: Any) -> torch.Tensor:
    """A dense tensor, a torch sparse tensor (COO/CSR) or a scipy sparse matrix → float32 tensor (sparse stays
    sparse, as a coalesced COO tensor), checked to be square and finite."""
    if not isinstance(x, torch.Tensor) and hasattr(x, "tocoo"):  # scipy.sparse matrix or array
        coo = x.tocoo()
        x = torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]).astype(np.int64), coo.data, coo.shape,
                                    check_invariants=True)
    if isinstance(x, torch.Tensor) and x.layout != torch.strided:
        w = x.detach().cpu().to_sparse_coo().coalesce().to(torch.float32)
        values = w.values()
    else:
        w = values = _as_tensor(x, "true_couplings").to(torch.float32)
    if w.dim() != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"true_couplings must be a square (M, M) matrix, got shape {tuple(w.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError("true_couplings contains NaN or infinite values")
    return w


def atomic_write(path: str | os.PathLike, content: str | bytes | Callable[[str], Any]) -> Path:
    """Write ``path`` atomically: into a temporary file beside it, then renamed into place.

    ``content``: text (written as UTF-8), bytes, or a function ``write(tmp_path)`` that writes the temporary file
    (it may reopen or truncate it, but must write *that* path: e.g. ``np.savez`` would append ``.npz``, so give it
    an open file; ``savefig`` needs an explicit ``format``). The file and then its directory are fsynced, so after
    a crash ``path`` holds the old content or the new one, never a truncated mix; an exception leaves the old file
    as it was and no temporary behind. The new file gets the permissions a plain ``open(path, "w")`` of a new file
    gives (``0o666`` less the umask, applied by the kernel: the process umask is never read or changed).
    """
    if isinstance(content, str):
        content = content.encode("utf-8")
    if not (callable(content) or isinstance(content, (bytes, bytearray))):
        raise TypeError(f"atomic_write writes str, bytes or a write(tmp_path) function, got {type(content).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    # created by os.open so that the kernel applies the umask (mkstemp would make it owner-only)
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(content, (bytes, bytearray)):
                fh.write(content)
        if callable(content):
            content(str(tmp))
        _fsync(tmp)  # the data reaches the disk before the rename does
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent, directory=True)  # the rename itself
    return path


def atomic_savez(path: str | os.PathLike, **arrays: Any) -> Path:
    """``np.savez_compressed(path, **arrays)`` by :func:`atomic_write`, written to exactly ``path``."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would add ".npz" to the temporary name
            np.savez_compressed(fh, **arrays)

    return atomic_write(path, write)


def _fsync(path: Path, directory: bool = False) -> None:
    """``fsync`` a file, or a directory's entries (skipped where a directory cannot be opened or synced: Windows,
    some network file systems)."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        if not (directory and err.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF)):
            raise
    finally:
        os.close(fd)


@dataclass
class SpikeData:
    """Binned spike trains of the observed neurons of a network, with the ground truth where known.

    Attributes:
        spikes: ``(T, N)`` integer spike counts (``uint8``, or ``int32`` when counts exceed 255) of the
            ``N`` observed neurons in ``T`` bins.
        dt: bin width in seconds.
        true_couplings: ``(M, M)`` float tensor over *all* ``M`` neurons of the network (observed and hidden),
            ``W[i, j]`` = influence of neuron ``j`` on neuron ``i``; or ``None``. Large networks keep it sparse: a
            torch sparse or scipy sparse matrix is stored as a coalesced torch sparse COO tensor.
        true_communities: ``(M,)`` long tensor of community labels of all neurons, or ``None``.
        observed: ``(N,)`` long tensor: column ``k`` of ``spikes`` is neuron ``observed[k]`` of the network.
            Defaults to ``arange(N)``.
        meta: JSON-serialisable dictionary (simulator name and parameters, units, provenance).
    """

    spikes: torch.Tensor
    dt: float
    true_couplings: torch.Tensor | None = None
    true_communities: torch.Tensor | None = None
    observed: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spikes = _validate_spikes(self.spikes)
        try:
            self.dt = float(self.dt)
        except (TypeError, ValueError) as err:
            raise TypeError(f"dt must be a number (bin width in seconds), got {self.dt!r}") from err
        if not np.isfinite(self.dt) or self.dt <= 0:
            raise ValueError(f"dt must be a positive bin width in seconds, got {self.dt}")
        n_obs = self.spikes.shape[1]
        n_total = None
        if self.true_couplings is not None:
            w = _as_couplings(self.true_couplings)
            self.true_couplings, n_total = w, w.shape[0]
        if self.true_communities is not None:
            c = _as_tensor(self.true_communities, "true_communities")
            if c.dim() != 1 or c.is_floating_point():
                raise ValueError(f"true_communities must be a 1-D integer label vector, got {c.dtype} {tuple(c.shape)}")
            if n_total is not None and c.shape[0] != n_total:
                raise ValueError(f"true_communities has {c.shape[0]} labels but true_couplings covers {n_total} neurons")
            self.true_communities, n_total = c.long(), c.shape[0]
        if self.observed is None:
            if n_total is not None and n_total != n_obs:
                raise ValueError(f"spikes has {n_obs} neurons but the ground truth covers {n_total}: pass `observed`")
            self.observed = torch.arange(n_obs)
        else:
            o = _as_tensor(self.observed, "observed").long()
            if o.dim() != 1 or o.shape[0] != n_obs:
                raise ValueError(f"observed must list one network index per spikes column ({n_obs}), got shape {tuple(o.shape)}")
            if o.unique().numel() != o.numel():
                raise ValueError("observed contains repeated neuron indices")
            limit = n_total if n_total is not None else None
            if (o < 0).any() or (limit is not None and (o >= limit).any()):
                raise ValueError(f"observed indices must lie in [0, {limit}) (the network size)")
            self.observed = o
        if not isinstance(self.meta, dict):
            raise TypeError(f"meta must be a dict, got {type(self.meta).__name__}")

    # ------------------------------------------------------------------ views
    @property
    def n_bins(self) -> int:
        return self.spikes.shape[0]

    @property
    def n_neurons(self) -> int:
        """Number of observed neurons (columns of ``spikes``)."""
        return self.spikes.shape[1]

    @property
    def n_network(self) -> int:
        """Size of the whole network (observed + hidden) where known, else the observed count."""
        for t in (self.true_couplings, self.true_communities):
            if t is not None:
                return t.shape[0]
        return self.n_neurons

    def observed_couplings(self, sparse: bool = False) -> torch.Tensor | None:
        """True couplings among the observed neurons, ``(N, N)``, in the column order of ``spikes``.

        Dense by default (it is compared with a model's dense ``N x N`` couplings); ``sparse=True`` returns a sparse
        COO tensor, built in O(edges) from a sparse ground truth without forming the ``M x M`` matrix.
        """
        w = self.true_couplings
        if w is None:
            return None
        if w.layout == torch.strided:
            block = w[self.observed][:, self.observed]
            return block.to_sparse_coo() if sparse else block
        position = torch.full((w.shape[0],), -1, dtype=torch.long)  # network index -> column in spikes
        position[self.observed] = torch.arange(self.n_neurons)
        post, pre = position[w.indices()]
        keep = (post >= 0) & (pre >= 0)
        block = torch.sparse_coo_tensor(torch.stack([post[keep], pre[keep]]), w.values()[keep],
                                        (self.n_neurons, self.n_neurons), check_invariants=False).coalesce()
        return block if sparse else block.to_dense()

    def observed_communities(self) -> torch.Tensor | None:
        """True community labels of the observed neurons, ``(N,)``."""
        if self.true_communities is None:
            return None
        return self.true_communities[self.observed]

    def rates(self) -> torch.Tensor:
        """Mean firing rate of each observed neuron in Hz, ``(N,)``."""
        return self.spikes.double().mean(0) / self.dt

    # ----------------------------------------------------------- construction
    @staticmethod
    def count_events(bins: Any, units: Any, n_bins: int, n_units: int) -> torch.Tensor:
        """``(n_bins, n_units)`` spike counts of events ``(bins[k], units[k])``, in O(events) memory beyond the
        output (``uint8``, or ``int32`` when a count exceeds 255)."""
        bins, units = torch.as_tensor(bins, dtype=torch.long), torch.as_tensor(units, dtype=torch.long)
        key, count = torch.unique(bins * n_units + units, return_counts=True)
        out = torch.zeros(n_bins, n_units, dtype=torch.uint8 if count.numel() == 0 or count.max() <= 255 else torch.int32)
        out.view(-1)[key] = count.to(out.dtype)
        return out

    @classmethod
    def from_spike_times(
        cls,
        times: Any,
        units: Any,
        dt: float,
        t_start: float = 0.0,
        t_stop: float | None = None,
        *,
        unit_ids: Any = None,
        true_couplings: Any = None,
        true_communities: Any = None,
        meta: dict | None = None,
    ) -> "SpikeData":
        """Bin spike events into counts: spike ``k`` at ``times[k]`` seconds from unit ``units[k]``.

        Bins are ``[t_start + b dt, t_start + (b + 1) dt)``, ``b = 0 .. ceil((t_stop - t_start) / dt) - 1`` (a last
        partial bin is kept whole). ``t_stop`` defaults to just after the last spike. Column ``k`` of ``spikes`` is
        unit ``unit_ids[k]``; ``unit_ids`` defaults to the sorted distinct ``units`` (units that never fire need to
        be listed to get a column). ``unit_ids`` are stored in ``meta["unit_ids"]``.

        Raises ``ValueError`` for ``dt <= 0``, non-finite times, spikes outside ``[t_start, t_stop)``, units not in
        ``unit_ids``, or ``times``/``units`` of different lengths.
        """
        try:
            dt = float(dt)
        except (TypeError, ValueError) as err:
            raise TypeError(f"dt (bin size) must be a number of seconds, got {dt!r}") from err
        if not np.isfinite(dt) or dt <= 0:
            raise ValueError(f"dt (bin size) must be > 0 seconds, got {dt}")
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        units = np.asarray(units).reshape(-1)
        if times.shape != units.shape:
            raise ValueError(f"times and units must have one entry per spike; got {times.size} times and {units.size} units")
        if not np.isfinite(times).all():
            raise ValueError(f"spike times contain {int((~np.isfinite(times)).sum())} NaN or infinite value(s)")
        t_start = float(t_start)
        if t_stop is None:
            if times.size == 0:
                raise ValueError("no spikes: give t_stop to build an empty recording")
            t_stop = float(np.floor((times.max() - t_start) / dt + 1e-9) + 1) * dt + t_start
        t_stop = float(t_stop)
        if not t_stop > t_start:
            raise ValueError(f"t_stop ({t_stop}) must be after t_start ({t_start})")
        outside = (times < t_start) | (times >= t_stop)
        if outside.any():
            raise ValueError(f"{int(outside.sum())} spike time(s) lie outside [t_start, t_stop) = [{t_start}, {t_stop}) "
                             f"(range of the data: {times.min()} .. {times.max()})")
        if unit_ids is None:
            unit_ids, column = np.unique(units, return_inverse=True)
        else:
            unit_ids = np.asarray(unit_ids).reshape(-1)
            if np.unique(unit_ids).size != unit_ids.size:
                raise ValueError("unit_ids contains repeated ids")
            order = np.argsort(unit_ids, kind="stable")
            pos = np.searchsorted(unit_ids[order], units)
            pos = np.minimum(pos, unit_ids.size - 1)
            unknown = unit_ids[order][pos] != units if unit_ids.size else np.ones(units.shape, bool)
            if unknown.any():
                raise ValueError(f"{int(unknown.sum())} spike(s) come from unit(s) not in unit_ids, e.g. {units[unknown][:5].tolist()}")
            column = order[pos]
        n_bins = int(np.ceil((t_stop - t_start) / dt - 1e-9))
        # a time within 1e-9 bin of an edge belongs to the later bin (0.3 s is bin 3 of 0.1 s bins, although
        # 0.3 / 0.1 = 2.9999999999999996 in floating point)
        bins = np.minimum(np.floor((times - t_start) / dt + 1e-9).astype(np.int64), n_bins - 1)
        meta = {**(meta or {}), "unit_ids": [u.item() if hasattr(u, "item") else u for u in unit_ids],
                "t_start": t_start, "t_stop": t_stop}
        return cls(cls.count_events(bins, column, n_bins, len(unit_ids)), dt, true_couplings=true_couplings,
                   true_communities=true_communities, meta=meta)

    # ------------------------------------------------------------- transforms
    def subsample(
        self,
        fraction: float,
        seed: int = 0,
        strategy: str = "random",
        *,
        community_weights: Any = None,
        bias: float = 4.0,
        population: str = "all",
    ) -> "SpikeData":
        """Keep a ``fraction`` of the observed neurons; the rest become hidden.

        ``population="excitatory"`` draws from the excitatory neurons only (network indices below ``meta["n_exc"]``,
        as the clustered LIF networks record; ``fraction`` is then of them), as an electrode array whose spike
        sorting keeps putative pyramidal cells.

        Strategies (all seeded by ``seed``):

        - ``"random"``: a uniformly random subset.
        - ``"community"``: biased by community: a neuron of community ``c`` is drawn with relative weight
          ``community_weights[c]`` (a sequence indexed by label, or a ``{label: weight}`` dict, missing labels
          weigh 1), weighted sampling without replacement (Efraimidis & Spirakis 2006). Without
          ``community_weights``, a seeded random half of the communities weighs ``bias`` and the rest 1
          (``bias < 1`` under-samples them). Needs ``true_communities``.
        - ``"block"``: a contiguous run of columns of ``spikes`` (an electrode covering neighbouring neurons in the
          network's order) at a seeded random start.

        Hidden neurons are dropped from ``spikes`` but stay in the ground truth; ``observed`` maps the kept
        columns to network indices (kept in increasing network order).
        """
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
        if population not in ("all", "excitatory"):
            raise ValueError(f"unknown population {population!r}; valid: 'all', 'excitatory'")
        if population == "excitatory":
            if "n_exc" not in self.meta:
                raise ValueError("population='excitatory' needs meta['n_exc'] (the E/I split of a simulated network)")
            exc = self.observed < int(self.meta["n_exc"])
            if not exc.any():
                raise ValueError("no excitatory neuron is observed")
            pool = SpikeData(spikes=self.spikes[:, exc], dt=self.dt, true_couplings=self.true_couplings,
                             true_communities=self.true_communities, observed=self.observed[exc], meta=self.meta)
            out = pool.subsample(fraction, seed, strategy, community_weights=community_weights, bias=bias)
            out.meta["subsample"].update(population=population, parent_n_neurons=self.n_neurons)
            return out
        n_keep = max(1, int(round(float(fraction) * self.n_neurons)))
        gen = torch.Generator().manual_seed(int(seed))
        if strategy == "random":
            keep = torch.randperm(self.n_neurons, generator=gen)[:n_keep]
        elif strategy == "block":
            start = int(torch.randint(self.n_neurons - n_keep + 1, (1,), generator=gen))
            keep = torch.arange(start, start + n_keep)
        elif strategy == "community":
            labels = self.observed_communities()
            if labels is None:
                raise ValueError("strategy='community' needs true_communities")
            n_comm = int(labels.max()) + 1
            if community_weights is None:
                if not bias > 0:
                    raise ValueError(f"bias must be > 0 (relative sampling weight), got {bias}")
                favoured = torch.randperm(n_comm, generator=gen)[: max(1, n_comm // 2)]
                per_comm = torch.ones(n_comm, dtype=torch.float64)
                per_comm[favoured] = float(bias)
            elif isinstance(community_weights, dict):
                per_comm = torch.ones(n_comm, dtype=torch.float64)
                for label, weight in community_weights.items():
                    if not 0 <= int(label) < n_comm:
                        raise ValueError(f"community_weights names community {label}; labels are 0..{n_comm - 1}")
                    per_comm[int(label)] = float(weight)
            else:
                per_comm = torch.as_tensor(np.asarray(community_weights, dtype=np.float64))
                if per_comm.shape != (n_comm,):
                    raise ValueError(f"community_weights needs one weight per community ({n_comm}), got shape {tuple(per_comm.shape)}")
            if not torch.isfinite(per_comm).all() or (per_comm < 0).any():
                raise ValueError("community_weights must be finite and >= 0")
            weight = per_comm[labels]
            if int((weight > 0).sum()) < n_keep:
                raise ValueError(f"only {int((weight > 0).sum())} neurons have a positive weight; cannot keep {n_keep}")
            # Efraimidis-Spirakis: the n_keep largest keys log(u) / w are a weighted sample without replacement
            key = torch.rand(self.n_neurons, generator=gen, dtype=torch.float64).log() / weight
            keep = torch.topk(key, n_keep).indices
        else:
            raise ValueError(f"unknown subsampling strategy {strategy!r}; valid: ['block', 'community', 'random']")
        keep = keep.sort().values
        meta = dict(self.meta)
        meta["subsample"] = {"fraction": float(fraction), "seed": int(seed), "strategy": strategy,
                             "parent_n_neurons": self.n_neurons}
        return SpikeData(
            spikes=self.spikes[:, keep],
            dt=self.dt,
            true_couplings=self.true_couplings,
            true_communities=self.true_communities,
            observed=self.observed[keep],
            meta=meta,
        )

    # --------------------------------------------------------------------- io
    def save(self, path: str | os.PathLike) -> Path:
        """Write to a ``.npz`` file, atomically (:func:`atomic_write`). A sparse ground truth is stored as its
        nonzeros (``true_couplings_indices`` ``(2, E)``, ``true_couplings_values``, ``true_couplings_shape``).
        NWB files: :func:`dgrn.data.io.write_nwb` (this module sits below the readers and writers of other formats,
        which build on it)."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"SpikeData.save writes .npz files; got {path.name!r} (NWB: dgrn.data.write_nwb)")
        arrays = {
            "format_version": np.array(_FORMAT_VERSION),
            "spikes": self.spikes.numpy(),
            "dt": np.array(self.dt),
            "observed": self.observed.numpy(),
            "meta": np.array(json.dumps(self.meta)),
        }
        w = self.true_couplings
        if w is not None and w.layout != torch.strided:
            index_dtype = np.int32 if w.shape[0] < 2**31 else np.int64
            arrays["true_couplings_indices"] = w.indices().numpy().astype(index_dtype)
            arrays["true_couplings_values"] = w.values().numpy()
            arrays["true_couplings_shape"] = np.array(w.shape, dtype=np.int64)
        elif w is not None:
            arrays["true_couplings"] = w.numpy()
        if self.true_communities is not None:
            arrays["true_communities"] = self.true_communities.numpy()
        return atomic_savez(path, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, dt: float | None = None) -> "SpikeData":
        """Read a ``.npz`` written by :meth:`save`, or any ``.npz`` holding a ``spikes`` ``(T, N)`` array.

        ``dt``: the bin width in seconds. A file that records its ``dt`` needs none (a different one is an error: the
        counts cannot be rebinned); a file without one needs it (no bin width is assumed). Never unpickles: object
        arrays are refused. Other recordings (NWB, spike-time ``.npz``, Neo formats):
        :func:`dgrn.data.io.load_recording`."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no spike file at {path}")
        if path.suffix != ".npz":
            raise ValueError(f"SpikeData.load reads .npz files; got {path.name!r} (NWB, Neo formats: "
                             "dgrn.data.load_recording)")
        try:
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
        except ValueError as err:
            raise ValueError(f"{path} holds pickled objects or is corrupt; refusing to load it ({err})") from err
        except Exception as err:  # zipfile.BadZipFile, OSError, EOFError
            raise ValueError(f"{path} is not a readable .npz file ({type(err).__name__}: {err})") from err
        if "spikes" not in data:
            raise ValueError(f"{path} has no 'spikes' array (found: {sorted(data)})")
        meta = json.loads(str(data["meta"])) if "meta" in data else {}
        couplings = data.get("true_couplings")
        if "true_couplings_indices" in data:
            shape = tuple(int(k) for k in data["true_couplings_shape"])
            indices = torch.as_tensor(data["true_couplings_indices"].astype(np.int64))
            couplings = torch.sparse_coo_tensor(indices, torch.as_tensor(data["true_couplings_values"]), shape,
                                                check_invariants=True)
        if "dt" not in data and dt is None:
            raise ValueError(f"{path} does not record its bin width: give dt (seconds), e.g. SpikeData.load(path, "
                             "dt=0.01), or data.dataset.dt=0.01 with data=file")
        if "dt" in data and dt is not None and not np.isclose(float(data["dt"]), float(dt)):
            raise ValueError(f"{path} is binned at dt = {float(data['dt'])} s; cannot rebin it to {dt} s")
        return cls(
            spikes=data["spikes"],
            dt=float(data["dt"]) if "dt" in data else float(dt),
            true_couplings=couplings,
            true_communities=data.get("true_communities"),
            observed=data.get("observed"),
            meta=meta,
        )
