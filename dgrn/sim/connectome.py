"""Dynamics driven on a user's connectome (kinetic Ising or LIF), with the connectome kept as ground truth.

File formats read by :func:`load_connectome` (the orientation is always ``pre`` → ``post``; dgrn stores
``W[post, pre]``):

- ``.csv`` edge list with a header: columns ``pre,post,weight`` (names configurable), optionally a column giving the
  type of the *presynaptic* neuron (``ei_key``, default ``ei``: ``E``/``I``, ``exc``/``inh``, ``+``/``-``, ``1``/``-1``).
- ``.npz``: a dense ``weights`` ``(N, N)`` array ``W[post, pre]``, or a scipy sparse matrix written by
  ``scipy.sparse.save_npz`` (also ``W[post, pre]``); optional arrays ``ei`` ``(N,)`` (types as above),
  ``node_ids`` ``(N,)`` and ``communities`` ``(N,)``.
- ``.graphml`` (networkx): directed edges ``pre → post`` with a ``weight`` attribute; optional node attributes
  ``ei`` and ``community``.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from dgrn.data import SpikeData, atomic_write

__all__ = ["Connectome", "connectome_dynamics", "load_connectome", "spectral_radius", "write_example_connectome"]

_EXCITATORY = {"e", "exc", "excitatory", "+", "1", "+1", "true"}
_INHIBITORY = {"i", "inh", "inhibitory", "-", "-1", "false"}


@dataclass
class Connectome:
    """A wiring diagram: ``weights`` ``(N, N)`` scipy CSR, ``W[post, pre]`` (as given, signs included);
    ``node_ids`` the file's id of each row; ``inhibitory`` ``(N,)`` bool or ``None`` (E/I labels);
    ``communities`` ``(N,)`` int or ``None``."""

    weights: sp.csr_matrix
    node_ids: list
    inhibitory: np.ndarray | None = None
    communities: np.ndarray | None = None

    def __post_init__(self) -> None:
        w = self.weights
        if w.ndim != 2 or w.shape[0] != w.shape[1]:
            raise ValueError(f"a connectome's weight matrix must be square (N, N), got shape {w.shape}")
        if w.shape[0] == 0:
            raise ValueError("the connectome has no nodes")
        if not np.isfinite(w.data).all():
            raise ValueError(f"the connectome has {int((~np.isfinite(w.data)).sum())} NaN or infinite weight(s)")
        for name in ("inhibitory", "communities"):
            v = getattr(self, name)
            if v is not None and len(v) != w.shape[0]:
                raise ValueError(f"{name} has {len(v)} entries for {w.shape[0]} nodes")
        if len(self.node_ids) != w.shape[0]:
            raise ValueError(f"node_ids has {len(self.node_ids)} entries for {w.shape[0]} nodes")

    @property
    def n(self) -> int:
        return self.weights.shape[0]


def _parse_ei(values: Sequence, where: str) -> np.ndarray:
    """E/I labels → bool array (True = inhibitory); unknown labels name themselves."""
    out = np.empty(len(values), dtype=bool)
    for k, v in enumerate(values):
        key = str(v).strip().lower()
        if key in _INHIBITORY:
            out[k] = True
        elif key in _EXCITATORY:
            out[k] = False
        else:
            raise ValueError(f"unknown E/I label {v!r} in {where}; use one of E/I, exc/inh, +/-, 1/-1")
    return out


def _sort_ids(ids) -> list:
    """Node ids in numeric order when they are all integers, else in string order."""
    ids = list(ids)
    try:
        return sorted(ids, key=lambda x: int(x))
    except (TypeError, ValueError):
        return sorted(ids, key=str)


def _read_csv(path: Path, pre: str, post: str, weight: str, ei_key: str, nodes: Sequence | None) -> Connectome:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in (pre, post, weight) if c not in columns]
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing}; found {columns} (expected a header '{pre},{post},{weight}')")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path} has no edges")
    src = [r[pre].strip() for r in rows]
    dst = [r[post].strip() for r in rows]
    try:
        w = np.array([float(r[weight]) for r in rows])
    except ValueError as err:
        raise ValueError(f"{path}: a weight is not a number ({err})") from err
    if not np.isfinite(w).all():
        bad = np.flatnonzero(~np.isfinite(w))
        raise ValueError(f"{path} has {len(bad)} NaN or infinite weight(s), first on data line {bad[0] + 2}")
    if nodes is None:
        ids = _sort_ids(set(src) | set(dst))
    else:
        ids = [str(x).strip() for x in nodes]
        unknown = sorted((set(src) | set(dst)) - set(ids))
        if unknown:
            raise ValueError(f"{path} has edges to or from unknown node id(s) {unknown[:10]} (not in the {len(ids)} given nodes)")
    index = {node: k for k, node in enumerate(ids)}
    i = np.array([index[x] for x in dst])
    j = np.array([index[x] for x in src])
    matrix = sp.coo_matrix((w, (i, j)), shape=(len(ids), len(ids))).tocsr()  # duplicate edges add up
    inhibitory = None
    if ei_key in columns:
        types = _parse_ei([r[ei_key] for r in rows], f"{path} column {ei_key!r}")
        inhibitory = np.zeros(len(ids), dtype=bool)
        inhibitory[j] = types
        n_inh_labels = np.bincount(j, weights=types, minlength=len(ids))
        mixed = (n_inh_labels > 0) & (n_inh_labels < np.bincount(j, minlength=len(ids)))
        if mixed.any():
            raise ValueError(f"{path}: presynaptic neuron(s) {[ids[k] for k in np.flatnonzero(mixed)[:10]]} are labelled "
                             f"both E and I in column {ei_key!r}")
    return Connectome(matrix, ids, inhibitory)


def _read_npz(path: Path, ei_key: str) -> Connectome:
    with np.load(path, allow_pickle=False) as f:
        files = set(f.files)
        arrays = {k: f[k] for k in files}
    if "format" in files:  # scipy.sparse.save_npz
        try:
            matrix = sp.load_npz(path)
        except ValueError as err:  # scipy checks COO indices against the shape
            raise ValueError(f"{path}: invalid sparse matrix, e.g. edges to unknown node ids ({err})") from err
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"{path}: the connectome matrix must be square (N, N), got shape {matrix.shape}")
        if matrix.format in ("csr", "csc") and matrix.nnz and (matrix.indices.min() < 0 or matrix.indices.max() >= matrix.shape[0]):
            raise ValueError(f"{path} has edges to unknown node ids (indices outside [0, {matrix.shape[0]}))")
        matrix = sp.csr_matrix(matrix)
    elif "weights" in files:
        dense = arrays["weights"]
        if dense.ndim != 2 or dense.shape[0] != dense.shape[1]:
            raise ValueError(f"{path}: 'weights' must be a square (N, N) matrix, got shape {dense.shape}")
        if not np.isfinite(dense).all():
            raise ValueError(f"{path}: 'weights' has {int((~np.isfinite(dense)).sum())} NaN or infinite weight(s)")
        matrix = sp.csr_matrix(dense)
    else:
        raise ValueError(f"{path} holds neither a 'weights' array nor a scipy sparse matrix (found {sorted(files)})")
    n = matrix.shape[0]
    ids = arrays["node_ids"].tolist() if "node_ids" in files else list(range(n))
    inhibitory = _parse_ei(arrays[ei_key].tolist(), f"{path} array {ei_key!r}") if ei_key in files else None
    communities = arrays["communities"].astype(np.int64) if "communities" in files else None
    return Connectome(matrix, ids, inhibitory, communities)


def _read_graphml(path: Path, weight: str, ei_key: str) -> Connectome:
    import networkx as nx

    graph = nx.read_graphml(path)
    if not graph.is_directed():
        graph = graph.to_directed()
    ids = _sort_ids(graph.nodes)
    # networkx: row = source (pre), column = target (post); dgrn stores W[post, pre]
    adjacency = nx.to_scipy_sparse_array(graph, nodelist=ids, weight=weight, format="csr", dtype=np.float64)
    matrix = sp.csr_matrix(adjacency.T)
    attrs = [graph.nodes[v] for v in ids]
    inhibitory = None
    if any(ei_key in a for a in attrs):
        missing = [v for v, a in zip(ids, attrs) if ei_key not in a]
        if missing:
            raise ValueError(f"{path}: node(s) {missing[:10]} have no {ei_key!r} attribute while others do")
        inhibitory = _parse_ei([a[ei_key] for a in attrs], f"{path} node attribute {ei_key!r}")
    communities = None
    if all("community" in a for a in attrs):
        communities = np.array([int(a["community"]) for a in attrs])
    return Connectome(matrix, ids, inhibitory, communities)


def load_connectome(
    path: str | Path,
    *,
    pre: str = "pre",
    post: str = "post",
    weight: str = "weight",
    ei_key: str = "ei",
    nodes: Sequence | None = None,
) -> Connectome:
    """Read a connectome from an edge-list ``.csv``, a ``.npz`` (dense or scipy sparse) or a ``.graphml`` file
    (formats in the module docstring). ``nodes``: the valid node ids of an edge list (edges naming others are an
    error; default: every id that appears). Bad input (missing file or columns, NaN weights, a non-square matrix,
    unknown node ids, unknown E/I labels) raises an error naming the problem."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no connectome file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, pre, post, weight, ei_key, nodes)
    if suffix == ".npz":
        return _read_npz(path, ei_key)
    if suffix == ".graphml":
        return _read_graphml(path, weight, ei_key)
    raise ValueError(f"unknown connectome format {path.suffix!r}; valid: ['.csv', '.graphml', '.npz']")


def spectral_radius(weights: sp.spmatrix | np.ndarray, dense_max: int = 300) -> float:
    """Largest eigenvalue modulus of a square matrix: dense ``eigvals`` up to ``dense_max`` nodes, ARPACK
    (implicitly restarted Arnoldi, sparse matrix-vector products only) beyond."""
    n = weights.shape[0]
    if n <= dense_max:
        dense = weights.toarray() if sp.issparse(weights) else np.asarray(weights)
        return float(np.abs(np.linalg.eigvals(dense)).max())
    from scipy.sparse.linalg import eigs

    value = eigs(sp.csr_matrix(weights, dtype=np.float64), k=1, which="LM", return_eigenvectors=False, maxiter=20 * n, tol=1e-6)
    return float(np.abs(value).max())


def _signed(connectome: Connectome, sign: str, inhibitory_fraction: float, generator: torch.Generator) -> tuple[sp.csr_matrix, np.ndarray | None]:
    w = sp.csr_matrix(connectome.weights, dtype=np.float64, copy=True)
    if sign == "auto":
        sign = "labels" if connectome.inhibitory is not None else "given"
    if sign == "given":
        return w, connectome.inhibitory
    if sign == "labels":
        if connectome.inhibitory is None:
            raise ValueError("sign='labels' needs E/I labels in the connectome (an 'ei' column or attribute)")
        inhibitory = connectome.inhibitory
    elif sign == "random":
        if not 0.0 <= inhibitory_fraction <= 1.0:
            raise ValueError(f"inhibitory_fraction must lie in [0, 1], got {inhibitory_fraction}")
        k = int(round(inhibitory_fraction * connectome.n))
        inhibitory = np.zeros(connectome.n, dtype=bool)
        inhibitory[torch.randperm(connectome.n, generator=generator)[:k].numpy()] = True
    elif sign == "excitatory":
        inhibitory = np.zeros(connectome.n, dtype=bool)
    else:
        raise ValueError(f"unknown sign rule {sign!r}; valid: ['auto', 'excitatory', 'given', 'labels', 'random']")
    # Dale's law: every outgoing weight of an inhibitory neuron (a column of W[post, pre]) is negative
    w.data = np.abs(w.data)
    w = sp.csr_matrix(w @ sp.diags(np.where(inhibitory, -1.0, 1.0)))
    return w, inhibitory


def connectome_dynamics(
    connectome: Connectome | str | Path,
    t: int,
    *,
    dynamics: str = "kinetic_ising",
    dt: float = 0.01,
    seed: int = 0,
    sample_seed: int | None = None,
    spectral_radius_target: float | None = 1.0,
    sign: str = "auto",
    inhibitory_fraction: float = 0.2,
    base_rate: float = 0.05,
    bias_sd: float = 0.3,
    burn_in: int = 1000,
    mu: tuple[float, float] = (1.1, 1.2),
    tau_m: float = 15e-3,
    sim_dt: float = 1e-4,
    burn_in_s: float = 0.5,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    **load_kwargs: Any,
) -> SpikeData:
    r"""Simulate activity on a connectome, which stays the ground truth.

    Signs (``sign``): ``"labels"`` (Dale's law from the E/I labels: outgoing weights of inhibitory neurons are
    ``-|w|``), ``"given"`` (the weights' own signs), ``"random"`` (a seeded ``inhibitory_fraction`` of the neurons
    is inhibitory, Dale's law), ``"excitatory"`` (all ``|w|``), ``"auto"`` (labels when present, else given).
    The signed matrix is then scaled to spectral radius ``spectral_radius_target`` (``None`` keeps the weights).

    Dynamics:

    - ``"kinetic_ising"``: :func:`dgrn.sim.kinetic_ising.glauber_dynamics` with the rate-matched fields of
      :func:`dgrn.sim.kinetic_ising.rate_matched_bias` (``base_rate``, ``bias_sd``); ``t`` bins after ``burn_in``.
    - ``"lif"``: :func:`dgrn.sim.lif.simulate_lif_binned`, ``W`` in voltage kicks per spike, membrane ``tau_m``,
      drives uniform in ``mu``, synaptic kinetics excitatory for ``W > 0`` and inhibitory for ``W < 0``; ``t`` bins
      of ``dt`` after ``burn_in_s`` seconds, integrated at ``sim_dt``.

    ``seed`` seeds the network-level draws (fields, drives, random signs); ``sample_seed`` (default ``seed``) the
    trajectory. ``load_kwargs`` go to :func:`load_connectome` when ``connectome`` is a path.

    Returns:
        :class:`~dgrn.data.SpikeData`: ``spikes`` ``(t, N)``, ``true_couplings`` the signed, rescaled weights
        (sparse), ``true_communities`` when the connectome has them, ``meta`` with the node ids and E/I labels.
    """
    from dgrn.sim.kinetic_ising import glauber_dynamics, rate_matched_bias
    from dgrn.sim.lif import simulate_lif_binned

    source = None
    if not isinstance(connectome, Connectome):
        source = str(connectome)
        connectome = load_connectome(connectome, **load_kwargs)
    if t < 1:
        raise ValueError(f"t must be >= 1 bin, got {t}")
    if not dt > 0:
        raise ValueError(f"dt (bin size) must be > 0 s, got {dt}")
    gen = torch.Generator().manual_seed(int(seed))
    w, inhibitory = _signed(connectome, sign, inhibitory_fraction, gen)
    scale = 1.0
    if spectral_radius_target is not None:
        if not spectral_radius_target > 0:
            raise ValueError(f"spectral_radius_target must be > 0 (or None to keep the weights), got {spectral_radius_target}")
        rho = spectral_radius(w)
        if not rho > 1e-12:
            raise ValueError("the signed connectome has spectral radius 0 (no cycles, e.g. feedforward): it cannot be "
                             "rescaled to a spectral radius; pass spectral_radius_target=None")
        scale = spectral_radius_target / rho
        w = w * scale
    coo = w.tocoo()
    order = np.lexsort((coo.col, coo.row))
    couplings = torch.sparse_coo_tensor(
        torch.from_numpy(np.vstack([coo.row[order], coo.col[order]]).astype(np.int64)),
        torch.from_numpy(coo.data[order]).float(), w.shape, check_invariants=False,
    ).coalesce()
    n = connectome.n
    trajectory_seed = int(seed if sample_seed is None else sample_seed)
    if dynamics == "kinetic_ising":
        bias = rate_matched_bias(couplings, base_rate, bias_sd, generator=gen)
        spikes = glauber_dynamics(couplings, bias, t, burn_in=burn_in, base_rate=base_rate, seed=trajectory_seed,
                                  device=device)
        extra = {"bias": bias.tolist()}
    elif dynamics == "lif":
        lo, hi = mu
        drive = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)
        v0 = torch.rand(n, generator=torch.Generator().manual_seed(trajectory_seed), dtype=torch.float64)
        spikes, _ = simulate_lif_binned(
            couplings, duration_s=t * dt, dt=dt, sim_dt=sim_dt, burn_in_s=burn_in_s, tau_m=torch.full((n,), tau_m),
            mu=drive, v0=v0, device=device, progress=progress,
        )
        extra = {"mu": drive.tolist()}
    else:
        raise ValueError(f"unknown dynamics {dynamics!r}; valid: ['kinetic_ising', 'lif']")
    meta = {
        "simulator": f"connectome_{dynamics}",
        "params": {"source": source, "t": t, "dt": dt, "seed": int(seed),
                   "sample_seed": None if sample_seed is None else int(sample_seed), "sign": sign,
                   "spectral_radius_target": spectral_radius_target, "weight_scale": scale,
                   "base_rate": base_rate, "bias_sd": bias_sd, "burn_in": burn_in, "mu": list(mu), "tau_m": tau_m,
                   "sim_dt": sim_dt, "burn_in_s": burn_in_s},
        "node_ids": [x.item() if hasattr(x, "item") else x for x in connectome.node_ids],
        "inhibitory": None if inhibitory is None else inhibitory.tolist(),
        **extra,
    }
    return SpikeData(spikes, dt, true_couplings=couplings, true_communities=connectome.communities, meta=meta)


def write_example_connectome(
    path: str | Path, n: int = 60, n_communities: int = 3, *, p_in: float = 0.3, p_out: float = 0.05,
    inhibitory_fraction: float = 0.2, seed: int = 0,
) -> Path:
    """Write a random modular connectome with E/I labels as ``.csv``, ``.npz`` or ``.graphml`` (by suffix): an
    example input generated here (dgrn ships no downloaded wiring data). Edge ``j → i`` exists with probability
    ``p_in`` inside a community and ``p_out`` between; weights ``|N(1, 0.3)|``, the sign left to the reader's
    E/I rule (labels stored with the file)."""
    path = Path(path)
    if not (0 <= p_in <= 1 and 0 <= p_out <= 1):
        raise ValueError(f"p_in and p_out must be probabilities, got {p_in}, {p_out}")
    if not 1 <= n_communities <= n:
        raise ValueError(f"n_communities must lie in [1, n={n}], got {n_communities}")
    gen = torch.Generator().manual_seed(int(seed))
    labels = torch.arange(n) * n_communities // n
    same = labels[:, None] == labels[None, :]
    present = (torch.rand(n, n, generator=gen) < torch.where(same, p_in, p_out)) & ~torch.eye(n, dtype=torch.bool)
    weight = (1.0 + 0.3 * torch.randn(n, n, generator=gen)).abs() * present
    inhibitory = torch.zeros(n, dtype=torch.bool)
    inhibitory[torch.randperm(n, generator=gen)[: int(round(inhibitory_fraction * n))]] = True
    w = weight.double().numpy()  # W[post, pre]
    ids = [f"n{k}" for k in range(n)]
    suffix = path.suffix.lower()

    def write(tmp: str) -> None:
        if suffix == ".csv":
            post, pre = np.nonzero(w)
            with open(tmp, "w", newline="") as fh:
                out = csv.writer(fh)
                out.writerow(["pre", "post", "weight", "ei"])
                for i, j in zip(post, pre):
                    out.writerow([ids[j], ids[i], f"{w[i, j]:.6g}", "I" if inhibitory[j] else "E"])
        elif suffix == ".npz":
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, weights=w, ei=np.where(inhibitory.numpy(), "I", "E"), node_ids=np.array(ids),
                                    communities=labels.numpy())
        elif suffix == ".graphml":
            import networkx as nx

            graph = nx.DiGraph()
            for k in range(n):
                graph.add_node(ids[k], ei="I" if inhibitory[k] else "E", community=int(labels[k]))
            post, pre = np.nonzero(w)
            graph.add_weighted_edges_from((ids[j], ids[i], float(w[i, j])) for i, j in zip(post, pre))
            nx.write_graphml(graph, tmp)
        else:
            raise ValueError(f"unknown connectome format {path.suffix!r}; valid: ['.csv', '.graphml', '.npz']")

    return atomic_write(path, write)
