"""`SpikeData`: binned spike trains of the observed neurons plus the ground truth of the whole network."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["SpikeData", "atomic_write"]

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


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    A crash or an exception leaves ``path`` untouched (never half-written).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; publish with the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


@dataclass
class SpikeData:
    """Binned spike trains of the observed neurons of a network, with the ground truth where known.

    Attributes:
        spikes: ``(T, N)`` integer spike counts (``uint8``, or ``int32`` when counts exceed 255) of the
            ``N`` observed neurons in ``T`` bins.
        dt: bin width in seconds.
        true_couplings: ``(M, M)`` float tensor over *all* ``M`` neurons of the network (observed and hidden),
            ``W[i, j]`` = influence of neuron ``j`` on neuron ``i``; or ``None``.
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
            w = _as_tensor(self.true_couplings, "true_couplings").to(torch.float32)
            if w.dim() != 2 or w.shape[0] != w.shape[1]:
                raise ValueError(f"true_couplings must be a square (M, M) matrix, got shape {tuple(w.shape)}")
            if not torch.isfinite(w).all():
                raise ValueError("true_couplings contains NaN or infinite values")
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

    def observed_couplings(self) -> torch.Tensor | None:
        """True couplings among the observed neurons, ``(N, N)``, in the column order of ``spikes``."""
        if self.true_couplings is None:
            return None
        return self.true_couplings[self.observed][:, self.observed]

    def observed_communities(self) -> torch.Tensor | None:
        """True community labels of the observed neurons, ``(N,)``."""
        if self.true_communities is None:
            return None
        return self.true_communities[self.observed]

    def rates(self) -> torch.Tensor:
        """Mean firing rate of each observed neuron in Hz, ``(N,)``."""
        return self.spikes.double().mean(0) / self.dt

    # ------------------------------------------------------------- transforms
    def subsample(self, fraction: float, seed: int = 0) -> "SpikeData":
        """Keep a random ``fraction`` of the observed neurons; the rest become hidden.

        Hidden neurons are dropped from ``spikes`` but stay in the ground truth; ``observed`` maps the kept
        columns to network indices (kept in increasing network order).
        """
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
        n_keep = max(1, int(round(float(fraction) * self.n_neurons)))
        gen = torch.Generator().manual_seed(int(seed))
        keep = torch.randperm(self.n_neurons, generator=gen)[:n_keep].sort().values
        meta = dict(self.meta)
        meta["subsample"] = {"fraction": float(fraction), "seed": int(seed), "parent_n_neurons": self.n_neurons}
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
        """Write to ``path`` (``.npz``), atomically: a failed write leaves no partial file."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"SpikeData.save writes .npz files; got {path.name!r}")
        arrays = {
            "format_version": np.array(_FORMAT_VERSION),
            "spikes": self.spikes.numpy(),
            "dt": np.array(self.dt),
            "observed": self.observed.numpy(),
            "meta": np.array(json.dumps(self.meta)),
        }
        if self.true_couplings is not None:
            arrays["true_couplings"] = self.true_couplings.numpy()
        if self.true_communities is not None:
            arrays["true_communities"] = self.true_communities.numpy()

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SpikeData":
        """Read a ``.npz`` written by :meth:`save`, or any ``.npz`` holding a ``spikes`` (T, N) array
        (``dt`` defaults to 1 when absent). Never unpickles: object arrays are refused."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no spike file at {path}")
        if path.suffix != ".npz":
            raise ValueError(f"SpikeData.load reads .npz files; got {path.name!r}")
        try:
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
        except ValueError as err:
            raise ValueError(f"{path} holds pickled objects or is corrupt; refusing to load it ({err})") from err
        except Exception as err:  # zipfile.BadZipFile, OSError, EOFError
            raise ValueError(f"{path} is not a readable .npz file ({type(err).__name__}: {err})") from err
        if "spikes" not in data:
            raise KeyError(f"{path} has no 'spikes' array (found: {sorted(data)})")
        meta = json.loads(str(data["meta"])) if "meta" in data else {}
        return cls(
            spikes=data["spikes"],
            dt=float(data["dt"]) if "dt" in data else 1.0,
            true_couplings=data.get("true_couplings"),
            true_communities=data.get("true_communities"),
            observed=data.get("observed"),
            meta=meta,
        )
