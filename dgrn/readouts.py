r"""Read-outs per scale of a renormalization flow of neural activity.

Plain functions on activity ``(T, n)`` (torch tensors, numpy arrays or :class:`~dgrn.data.SpikeData`), independent of
any trained model:

* :func:`independent_entropy`: entropy per unit of independent Bernoulli units at the empirical rates (the
  "independent neurons" null of Meshulam et al., PRL 2019).
* :func:`pattern_entropy`: entropy per unit of the static distribution of one bin's pattern (the "time-shuffled"
  null: shuffling whole bins keeps the instantaneous correlations and destroys the dynamics). Plug-in estimate with
  the Miller-Madow correction for few units, held-out NLL of an MPS Born machine (an upper bound) otherwise.
* :func:`entropy_production_rate`: time irreversibility of a learned path model (nats per bin), and
  :func:`markov_entropy_production` (Schnakenberg) for a finite Markov chain.
* :func:`participation_ratio`: effective dimension of the activity covariance.
* :func:`state_space_table`: parameters against the size of the state space per level.
* :func:`scale_readouts`: one JSON-ready row per level with all of the above; figures in :mod:`dgrn.plots`.
* :func:`autocorrelation` and :func:`autocorrelation_time`: normalized autocorrelation per unit and the lag where it
  falls to :math:`1/e`.
* :func:`dynamic_scaling`: the dynamic-scaling read-out of Meshulam et al. (PRL 2019): greedy pairing of maximally
  correlated units into clusters of :math:`K = 1, 2, 4, \dots` units, the mean autocorrelation :math:`C_K(t)` and
  correlation time :math:`\tau_c(K) \sim K^z` per step, and the exponent :math:`z`;
  :func:`level_autocorrelation_times` does the same on a given hierarchy (e.g. DGRN's pooled levels).

Entropies are in nats per unit (per bin). Ordering that holds for any stationary binary process and that the
figure is read against: entropy rate <= pattern entropy <= independent entropy.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from dgrn.data import SpikeData
from dgrn.tn import MPS

__all__ = ["independent_entropy", "pattern_entropy", "entropy_production_rate", "markov_entropy_production",
           "participation_ratio", "state_space_table", "scale_readouts", "autocorrelation", "autocorrelation_time",
           "dynamic_scaling", "level_autocorrelation_times", "PATTERN_METHODS"]

#: valid ``method`` values of :func:`pattern_entropy`
PATTERN_METHODS = ("auto", "plugin", "mps")


def _activity(spikes, what: str = "activity", *, binary: bool) -> Tensor:
    """Validated ``(T, n)`` activity as a tensor (on its device); ``binary`` demands values in {0, 1}."""
    if isinstance(spikes, SpikeData):
        spikes = spikes.spikes
    x = torch.as_tensor(spikes)
    if x.is_complex():
        raise ValueError(f"{what} must be real, got a complex tensor")
    if x.dim() != 2:
        raise ValueError(f"{what} must have shape (T bins, n units), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what} is empty: shape {tuple(x.shape)} (need at least one bin and one unit)")
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contains NaN or infinite values")
    if binary:
        bad = (x != 0) & (x != 1)
        if bool(bad.any()):
            t, i = (int(v) for v in bad.nonzero()[0])
            raise ValueError(f"{what} must be binary (0/1) for an entropy of binary patterns; found {x[t, i].item()} "
                             f"at bin {t}, unit {i} ({int(bad.sum())} non-binary values). Pooled spike counts: "
                             "binarize them, e.g. dgrn.renorm.pool_activity(data, membership, 'or')")
    return x


def _binary_entropy(p: Tensor) -> Tensor:
    """Entropy in nats of Bernoulli(p), elementwise, with 0 log 0 = 0 (float64)."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


def independent_entropy(spikes) -> float:
    r"""Entropy per unit (nats per bin) of independent Bernoulli units at each unit's empirical rate.

    .. math:: S_{\mathrm{ind}} = -\frac{1}{n}\sum_{i=1}^n \big[\bar p_i \ln \bar p_i + (1-\bar p_i)\ln(1-\bar p_i)\big],
        \qquad \bar p_i = \frac{1}{T}\sum_t x_{ti}

    The "independent neurons" null of Meshulam et al. (PRL 2019): every correlation removed. Plug-in estimate (its
    bias, at most :math:`1/(2T)` nats per unit, is negligible for any recording worth a read-out).

    Args:
        spikes: binary activity ``(T, n)`` (tensor, array or :class:`~dgrn.data.SpikeData`).
    """
    x = _activity(spikes, "spikes", binary=True)
    return float(_binary_entropy(x.double().mean(0)).mean())


def _pattern_counts(x: Tensor) -> Tensor:
    """Counts of the distinct rows of binary ``x (T, n)`` (order unspecified), int64."""
    if x.shape[1] <= 62:  # pack each pattern into one int64: a 1-D unique is much faster than a row-wise one
        bits = torch.arange(x.shape[1], device=x.device)
        weights = torch.ones_like(bits) << bits
        # a sum, not a matmul: CUDA has no integer matrix-vector product
        return torch.unique((x.long() * weights).sum(1), return_counts=True)[1]
    return torch.unique(x.to(torch.uint8), dim=0, return_counts=True)[1]


def _plugin_pattern_entropy(x: Tensor, counts: Tensor) -> dict:
    t, n = x.shape
    freq = counts.double() / t
    surprisal = -freq.log()
    plugin = float((freq * surprisal).sum())
    correction = (counts.numel() - 1) / (2 * t)  # Miller-Madow: E[H_plugin] = H - (K - 1) / (2T) + O(T^-2)
    # delta-method sampling error of the plug-in estimate: sd of -log p(x) over bins / sqrt(T)
    var = float((freq * surprisal ** 2).sum()) - plugin ** 2
    return {"entropy": (plugin + correction) / n, "method": "plugin", "stderr": math.sqrt(max(var, 0.0) / t) / n,
            "n_units": n, "n_bins": t, "n_patterns": int(counts.numel()),
            "unseen_mass": float((counts == 1).sum()) / t}


def _product_state(n: int, rates: Tensor, device) -> MPS:
    r"""The MPS of bond dimension 1 of independent units: :math:`\psi(x) = \prod_i \sqrt{p_i(x_i)}`."""
    with torch.random.fork_rng(devices=[]):  # the constructor's random start is overwritten: leave the caller's RNG
        mps = MPS(n, 1).to(device=device, dtype=torch.float64)
    with torch.no_grad():
        for a, p in zip(mps.tensors, rates.tolist()):
            a.copy_(torch.tensor([math.sqrt(1 - p), math.sqrt(p)], dtype=torch.float64).view(1, 2, 1))
    return mps


def _mps_pattern_entropy(x: Tensor, *, bond_dim: int, max_sweeps: int, tol: float, lr: float, test_fraction: float,
                         max_train: int | None, seed: int) -> dict:
    t, n = x.shape
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if n < 2:
        raise ValueError("the MPS estimate needs at least 2 units (one unit: use method='plugin')")
    n_test = round(test_fraction * t)
    n_val = round((t - n_test) / 8)
    if n_test < 2 or n_val < 1 or t - n_test - n_val < 1:
        raise ValueError(f"{t} bins are too few to hold out a fraction {test_fraction} for testing and 1/8 of the rest "
                         "for validation and still train: need more bins")
    for name, value in (("bond_dim", bond_dim), ("max_sweeps", max_sweeps), ("max_train", max_train)):
        if value is not None and (isinstance(value, bool) or int(value) != value or int(value) < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    order = torch.randperm(t, generator=torch.Generator().manual_seed(int(seed))).to(x.device)
    x = x.long()
    test, val, fit = x[order[:n_test]], x[order[n_test:n_test + n_val]], x[order[n_test + n_val:]]
    if max_train is not None:
        fit = fit[:int(max_train)]  # a random subset already: the sweeps' cost and memory grow with the bins
    rates = (fit.double().sum(0) + 0.5) / (fit.shape[0] + 1)  # Krichevsky-Trofimov: no rate of exactly 0 or 1
    mps = _product_state(n, rates, x.device)
    with torch.no_grad():
        best, best_val, best_sweep = copy.deepcopy(mps), float(-mps.log_prob(val).mean()), 0
    for sweep in range(1, int(max_sweeps) + 1):
        mps.sweep(fit, lr=lr, tol=tol, max_bond=int(bond_dim))
        with torch.no_grad():
            val_nll = float(-mps.log_prob(val).mean())
        if not val_nll < best_val:  # early stopping: the held-out likelihood stopped improving
            break
        best, best_val, best_sweep = copy.deepcopy(mps), val_nll, sweep
    with torch.no_grad():
        test_nll, fit_nll = -best.log_prob(test), -best.log_prob(fit)
    return {"entropy": float(test_nll.mean()) / n, "method": "mps",
            "stderr": float(test_nll.std()) / math.sqrt(n_test) / n, "n_units": n, "n_bins": t,
            "train_entropy": float(fit_nll.mean()) / n, "n_train": int(fit.shape[0]),
            "n_val": int(n_val), "n_test": int(n_test), "bond_dims": best.bond_dims, "sweeps": best_sweep,
            "n_params": int(best.n_params)}


def pattern_entropy(spikes, method: str = "auto", *, max_exact_units: int = 20, max_unseen: float = 0.02,
                    bond_dim: int = 8, max_sweeps: int = 4, tol: float = 1e-3, lr: float = 0.1,
                    test_fraction: float = 0.2, max_train: int | None = 50_000, seed: int = 0) -> dict:
    r"""Entropy per unit (nats) of the static distribution of one bin's pattern: the "time-shuffled" null.

    Shuffling whole bins in time keeps every instantaneous correlation between units and destroys the dynamics, so
    the entropy rate of the time-shuffled process is the entropy :math:`S(P)/n` of the pattern distribution
    :math:`P(x)`, :math:`x \in \{0,1\}^n`.

    Methods:

    * ``"plugin"``: exact enumeration of the observed patterns, :math:`\hat S = -\sum_x \hat P(x)\ln\hat P(x) +
      (K-1)/(2T)` with :math:`K` the number of distinct patterns seen (Miller-Madow bias correction). Reliable when
      the unseen probability mass is small.
    * ``"mps"``: an upper bound. An :class:`~dgrn.tn.MPS` Born machine over the units (sites in the given order) is
      fitted to a random ``1 - test_fraction`` of the bins and its NLL per unit on the other bins is returned: in
      expectation over the test bins it is :math:`S(P)/n + \mathrm{KL}(P\|Q)/n \ge S(P)/n`. The fit starts from the
      product state of the units' rates (bond dimension 1: the independent-units model) and runs two-site sweeps
      (:meth:`~dgrn.tn.MPS.sweep`, Han et al. PRX 2018) that grow each bond up to ``bond_dim`` where the discarded
      weight exceeds ``tol``; 1/8 of the training bins are held back for early stopping (at most ``max_sweeps``
      sweeps; the starting product state is a candidate too, so weakly correlated data get the independent-units
      bound instead of an overfitted MPS). At most ``max_train`` bins are fitted (cost and memory grow with them).
      Deterministic for a given ``seed`` (which only draws the split). The held-out bins are a random subset, so
      their neighbours in time may be training bins: temporally correlated data make the bound slightly optimistic.
    * ``"auto"``: ``"plugin"`` when ``n <= max_exact_units`` and the Good-Turing estimate of the unseen probability
      mass, :math:`f_1/T` (:math:`f_1` = patterns seen exactly once), is at most ``max_unseen``; ``"mps"`` otherwise.
      (Measured on 16 kinetic-Ising units: Miller-Madow estimates from recordings with unseen mass 0.016 / 0.025 /
      0.056 fell 0.001 / 0.002 / 0.005 nats per unit (0.5 / 1.1 / 2.6 %) below the estimate from 800,000 bins.)

    Args:
        spikes: binary activity ``(T, n)`` (tensor, array or :class:`~dgrn.data.SpikeData`); the MPS runs on its
            device.

    Returns:
        dict (JSON-ready) with ``entropy`` (nats per unit), ``method`` (``"plugin"`` or ``"mps"``, the method used),
        ``stderr`` (sampling error of ``entropy``; it treats bins as independent, so it understates the error of
        temporally correlated data), ``n_units``, ``n_bins``; for ``"plugin"`` also ``n_patterns`` and
        ``unseen_mass``; for ``"mps"`` also ``train_entropy`` (NLL per unit on the fitted bins), ``n_train``,
        ``n_val``, ``n_test``, ``bond_dims`` and ``n_params`` of the kept MPS, and ``sweeps`` (its number of sweeps;
        0: the product state was kept).
    """
    if method not in PATTERN_METHODS:
        raise ValueError(f"unknown pattern-entropy method {method!r}; valid: {list(PATTERN_METHODS)}")
    x = _activity(spikes, "spikes", binary=True)
    if method != "mps":
        counts = _pattern_counts(x) if method == "plugin" or x.shape[1] <= max_exact_units else None
        if counts is not None and (method == "plugin" or float((counts == 1).sum()) / x.shape[0] <= max_unseen):
            return _plugin_pattern_entropy(x, counts)
    return _mps_pattern_entropy(x, bond_dim=bond_dim, max_sweeps=max_sweeps, tol=tol, lr=lr,
                                test_fraction=test_fraction, max_train=max_train, seed=seed)


def entropy_production_rate(log_prob_path: Callable[[Tensor], Tensor], windows, *, n_scored: int | None = None,
                            batch_size: int | None = None) -> float:
    r"""Entropy production rate (time irreversibility, nats per bin) of a learned path model.

    .. math:: \hat\sigma = \frac{1}{B\,m}\sum_{b=1}^{B}\Big[\log p(x^{(b)}_{1..L}) - \log p(x^{(b)}_{L..1})\Big]

    where :math:`x_{L..1}` is the window read backwards in time and :math:`m` = ``n_scored`` the number of scored
    transitions per window (scored bins that follow at least one bin of the window). With windows drawn from the
    stationary process (held-out data) and the exact path probabilities this is an unbiased estimate of the entropy
    production rate :math:`\lim \frac1L \mathrm{KL}(p(x_{1..L}) \,\|\, p(x_{L..1}))`; for a Markov chain it
    estimates :func:`markov_entropy_production`. Scoring only bins after a context (``log p(x_{k+1..L} | x_{1..k})``,
    the usual output of a history model) leaves the estimate unbiased for a stationary order-``k`` process: the
    omitted :math:`\log p(x_{1..k}) - \log p(x_{L..L-k+1})` has zero mean. With a learned model :math:`q` and data
    windows this is :math:`E_p[\log q(x) - \log q(\tilde x)]`, the irreversibility the model assigns to the
    data; pass windows sampled from the model for the model's own entropy production.

    Args:
        log_prob_path: callable mapping windows ``(b, L, n)`` to the log-probability of their scored bins ``(b,)``
            (for example the sum over ``t > k`` of the next-bin log-likelihoods of a history model). Called under
            ``torch.no_grad()``.
        windows: ``(B, L, n)`` held-out windows, ``L >= 2``.
        n_scored: scored transitions per window: ``L - k`` for a model that scores the bins after a context of
            ``k`` bins; the default ``L - 1`` fits a first-order model, and also a model that scores the first bin
            under the stationary marginal (that term has zero mean, not a transition).
        batch_size: windows per call of ``log_prob_path`` (default: all at once).

    Returns:
        :math:`\hat\sigma` in nats per bin (float).
    """
    w = torch.as_tensor(windows)
    if w.dim() != 3:
        raise ValueError(f"windows must have shape (B windows, L bins, n units), got shape {tuple(w.shape)}")
    if 0 in w.shape:
        raise ValueError(f"windows are empty: shape {tuple(w.shape)}")
    if w.shape[1] < 2:
        raise ValueError(f"windows need at least 2 bins to have a direction of time, got L = {w.shape[1]}")
    if w.is_floating_point() and not bool(torch.isfinite(w).all()):
        raise ValueError("windows contain NaN or infinite values")
    n_scored = w.shape[1] - 1 if n_scored is None else n_scored
    if isinstance(n_scored, bool) or int(n_scored) != n_scored or not 1 <= int(n_scored) <= w.shape[1]:
        raise ValueError(f"n_scored must be an integer in [1, L = {w.shape[1]}], got {n_scored!r}")
    step = w.shape[0] if batch_size is None else int(batch_size)
    if step < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = 0.0
    with torch.no_grad():
        for start in range(0, w.shape[0], step):  # chunks bound memory only
            chunk = w[start:start + step]
            diff = _path_log_prob(log_prob_path, chunk, "forward") - _path_log_prob(log_prob_path, chunk.flip(1),
                                                                                     "time-reversed")
            total += float(diff.double().sum())
    return total / (w.shape[0] * int(n_scored))


def _path_log_prob(log_prob_path, chunk: Tensor, what: str) -> Tensor:
    out = torch.as_tensor(log_prob_path(chunk))
    if out.shape != (chunk.shape[0],):
        raise ValueError(f"log_prob_path must return one log-probability per window, shape ({chunk.shape[0]},); "
                         f"got shape {tuple(out.shape)}")
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"log_prob_path returned NaN or infinite log-probabilities for {what} windows (a path of "
                         "probability 0 makes the entropy production infinite)")
    return out


def _stationary_distribution(p: np.ndarray) -> np.ndarray:
    """The unique stationary distribution of the row-stochastic ``p``; error when it is not unique."""
    k = p.shape[0]
    a = p.T - np.eye(k)
    if np.linalg.matrix_rank(a, tol=1e-10) < k - 1:
        raise ValueError("the chain has more than one stationary distribution (it is reducible): pass pi")
    pi, *_ = np.linalg.lstsq(np.vstack([a, np.ones((1, k))]), np.r_[np.zeros(k), 1.0], rcond=None)
    return np.clip(pi, 0.0, None) / np.clip(pi, 0.0, None).sum()


def markov_entropy_production(P, pi=None) -> float:
    r"""Schnakenberg entropy production rate of a finite Markov chain (nats per step), in its stationary state.

    .. math:: \sigma = \sum_{i,j} \pi_i P_{ij} \ln\frac{\pi_i P_{ij}}{\pi_j P_{ji}}
        = \tfrac12\sum_{i,j} (J_{ij} - J_{ji}) \ln\frac{J_{ij}}{J_{ji}}, \qquad J_{ij} = \pi_i P_{ij},

    zero exactly under detailed balance, ``inf`` when some transition has no reverse (:math:`P_{ij} > 0 = P_{ji}`).

    Args:
        P: ``(K, K)`` row-stochastic transition matrix, ``P[i, j] = p(j | i)``.
        pi: ``(K,)`` stationary distribution (default: solved from ``P``; required when it is not unique).
    """
    p = np.asarray(P.detach().cpu() if isinstance(P, Tensor) else P, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] == 0:
        raise ValueError(f"P must be a square (K, K) transition matrix, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("P contains NaN or infinite values")
    if (p < 0).any():
        raise ValueError("P has negative entries: transition probabilities must be >= 0")
    if not np.allclose(p.sum(1), 1.0, atol=1e-8):
        raise ValueError(f"the rows of P must sum to 1 (P[i, j] = p(j | i)); row sums range over "
                         f"[{p.sum(1).min():.6g}, {p.sum(1).max():.6g}]")
    if pi is None:
        stat = _stationary_distribution(p)
    else:
        stat = np.asarray(pi.detach().cpu() if isinstance(pi, Tensor) else pi, dtype=np.float64)
        if stat.shape != (p.shape[0],) or not np.isfinite(stat).all() or (stat < 0).any():
            raise ValueError(f"pi must be a finite, non-negative vector of length {p.shape[0]}")
        if not np.isclose(stat.sum(), 1.0, atol=1e-8) or not np.allclose(stat @ p, stat, atol=1e-8):
            raise ValueError("pi must be a stationary distribution of P (sum 1, pi P = pi)")
    flux = stat[:, None] * p
    if ((flux > 0) & (flux.T == 0)).any():
        return math.inf
    both = flux > 0
    return float((flux[both] * np.log(flux[both] / flux.T[both])).sum())


def participation_ratio(spikes) -> float:
    r"""Effective dimension of the activity: the participation ratio of its covariance :math:`C`,

    .. math:: \mathrm{PR} = \frac{(\sum_k \lambda_k)^2}{\sum_k \lambda_k^2} = \frac{(\operatorname{tr} C)^2}{\|C\|_F^2},

    between 1 (one direction carries all the variance) and ``n`` (isotropic). Computed without an
    eigendecomposition, from the Gram matrix of the centred activity on its smaller side
    (:math:`\|X^\top X\|_F = \|X X^\top\|_F`), so the cost is :math:`O(T n \min(T, n))`.

    Args:
        spikes: activity ``(T, n)``, ``T >= 2`` (binary, counts or any real values).
    """
    x = _activity(spikes, "activity", binary=False).double()
    if x.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 bins, got {x.shape[0]}")
    x = x - x.mean(0)
    gram = x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T
    trace = float(gram.diagonal().sum())
    if trace <= 0:
        raise ValueError("every unit is constant: the covariance is zero and the participation ratio undefined")
    return trace ** 2 / float((gram * gram).sum())


def state_space_table(n_units: Sequence[int], n_params: Sequence[int], *, phys_dim: int = 2) -> list[dict]:
    r"""Parameters against the size of the state space :math:`d^n` per level, as plain numbers.

    Args:
        n_units: units per level. n_params: parameters of the model of each level (same length).
        phys_dim: values per unit ``d`` (2 for spikes).

    Returns:
        one dict per level: ``level``, ``n_units``, ``n_params``, ``log2_states`` (:math:`n \log_2 d`),
        ``log2_params`` and ``log2_compression`` (``log2_states - log2_params``: positive when the model has fewer
        parameters than a full probability table has entries).
    """
    n_units, n_params = list(n_units), list(n_params)
    if len(n_units) != len(n_params):
        raise ValueError(f"n_units ({len(n_units)} levels) and n_params ({len(n_params)}) must have the same length")
    if not n_units:
        raise ValueError("no levels given")
    for name, values in (("n_units", n_units), ("n_params", n_params), ("phys_dim", [phys_dim])):
        for v in values:
            if isinstance(v, bool) or int(v) != v or int(v) < (2 if name == "phys_dim" else 1):
                raise ValueError(f"{name} must hold integers >= {2 if name == 'phys_dim' else 1}, got {v!r}")
    rows = []
    for level, (n, k) in enumerate(zip(n_units, n_params)):
        log2_states = int(n) * math.log2(phys_dim)
        rows.append({"level": level, "n_units": int(n), "n_params": int(k), "log2_states": log2_states,
                     "log2_params": math.log2(int(k)), "log2_compression": log2_states - math.log2(int(k))})
    return rows


def scale_readouts(levels_spikes: Sequence, model_nll_per_unit: Sequence[float | None] | None = None, *,
                   n_params: Sequence[int] | None = None, pattern_options: dict | None = None) -> list[dict]:
    r"""One JSON-ready row of read-outs per level of a renormalization flow.

    Args:
        levels_spikes: binary activity ``(T, n_k)`` per level, finest first (for example the fine spikes followed by
            ``dgrn.renorm.pool_flow(data, flow, "or")``).
        model_nll_per_unit: the model's held-out next-bin NLL per unit (nats) at each level, an upper bound on the
            entropy rate of the process at that level (``None`` entries or argument: not reported).
        n_params: parameters of the model of each level; adds the :func:`state_space_table` columns.
        pattern_options: keyword arguments of :func:`pattern_entropy` (method, bond_dim, steps, seed, ...).

    Returns:
        one dict per level: ``level``, ``n_units``, ``n_bins``, ``model_entropy_per_unit`` (or ``None``),
        ``pattern_entropy_per_unit`` (time-shuffled null), ``pattern_entropy_stderr``, ``pattern_entropy_method``,
        ``independent_entropy_per_unit`` (independent null), ``participation_ratio``, and with ``n_params`` also
        ``n_params``, ``log2_states``, ``log2_params``, ``log2_compression``.
    """
    levels = list(levels_spikes)
    if not levels:
        raise ValueError("no levels given")
    for name, values in (("model_nll_per_unit", model_nll_per_unit), ("n_params", n_params)):
        if values is not None and len(values) != len(levels):
            raise ValueError(f"{name} has {len(values)} entries for {len(levels)} levels")
    rows = []
    for k, spikes in enumerate(levels):
        try:
            x = _activity(spikes, f"level {k} spikes", binary=True)
            nll = None if model_nll_per_unit is None else model_nll_per_unit[k]
            if nll is not None and not math.isfinite(float(nll)):
                raise ValueError(f"model NLL per unit of level {k} is not finite: {nll}")
            pattern = pattern_entropy(x, **(pattern_options or {}))
            row = {"level": k, "n_units": int(x.shape[1]), "n_bins": int(x.shape[0]),
                   "model_entropy_per_unit": None if nll is None else float(nll),
                   "pattern_entropy_per_unit": pattern["entropy"], "pattern_entropy_stderr": pattern["stderr"],
                   "pattern_entropy_method": pattern["method"], "independent_entropy_per_unit": independent_entropy(x),
                   "participation_ratio": participation_ratio(x) if bool((x != x[0]).any()) else None}
        except ValueError as err:
            raise ValueError(f"level {k}: {err}") from err
        if n_params is not None:
            table = state_space_table([row["n_units"]], [n_params[k]])[0]
            row.update({key: table[key] for key in ("n_params", "log2_states", "log2_params", "log2_compression")})
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------- dynamic scaling
#: bound on the number of (complex) FFT entries :func:`autocorrelation` holds at once (columns are done in chunks)
_FFT_CHUNK = 1 << 23


def _max_lag(max_lag, n_bins: int, what: str = "max_lag") -> int:
    """Validated maximal lag: an integer in ``[1, T - 2]`` (the last lag still averages two products)."""
    if isinstance(max_lag, bool) or int(max_lag) != max_lag:
        raise ValueError(f"{what} must be an integer, got {max_lag!r}")
    max_lag = int(max_lag)
    if max_lag < 1:
        raise ValueError(f"{what} must be >= 1, got {max_lag}")
    if max_lag > n_bins - 2:
        raise ValueError(f"{what}={max_lag} needs at least {max_lag + 2} bins, got T={n_bins} "
                         "(give a longer recording or a smaller max_lag)")
    return max_lag


def _default_max_lag(n_bins: int) -> int:
    """``min(T - 2, max(10, T // 10))``: lags up to a tenth of the recording (at least 10 where T allows)."""
    if n_bins < 3:
        raise ValueError(f"an autocorrelation needs at least 3 bins, got T={n_bins}")
    return min(n_bins - 2, max(10, n_bins // 10))


def _fft_length(n: int) -> int:
    """The smallest ``2^a 3^b 5^c >= n`` (a fast FFT size)."""
    best, p5 = 1 << (n - 1).bit_length(), 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35 if p35 >= n else p35 << (-(-n // p35) - 1).bit_length()
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _autocorrelation(x: Tensor, max_lag: int) -> Tensor:
    """:func:`autocorrelation` of a validated float64 ``(T, n)`` tensor, ``(max_lag + 1, n)``."""
    t = x.shape[0]
    constant = (x == x[0]).all(0)
    x = x - x.mean(0)
    var = (x * x).mean(0)
    nfft = _fft_length(t + max_lag)  # >= T + max_lag: no circular wrap-around for lags <= max_lag
    out = torch.empty(x.shape[1], max_lag + 1, dtype=torch.float64, device=x.device)
    chunk = max(1, _FFT_CHUNK // nfft)
    for start in range(0, x.shape[1], chunk):  # columns in chunks: bounded memory; rows are contiguous (faster FFT)
        f = torch.fft.rfft(x[:, start:start + chunk].T.contiguous(), n=nfft, dim=1)
        out[start:start + chunk] = torch.fft.irfft(f.real ** 2 + f.imag ** 2, n=nfft, dim=1)[:, :max_lag + 1]
    out = out.T
    pairs = torch.arange(t, t - max_lag - 1, -1, dtype=torch.float64, device=x.device)
    out = out / pairs[:, None]  # mean product over the T - lag pairs of bins at each lag
    constant |= var == 0
    out = out / torch.where(constant, torch.ones_like(var), var)
    out[:, constant] = float("nan")
    return out.contiguous()


def autocorrelation(x, max_lag: int) -> Tensor:
    r"""Normalized autocorrelation of each column of ``x``,

    .. math:: C(t) = \frac{1}{\operatorname{var} x}\,\frac{1}{T - t}\sum_{s=1}^{T-t} (x_s - \bar x)(x_{s+t} - \bar x),
        \qquad t = 0, \dots, \mathrm{max\_lag},

    with :math:`\bar x` and :math:`\operatorname{var} x = \frac1T \sum_s (x_s - \bar x)^2` over the whole recording,
    so :math:`C(0) = 1` (the per-lag mean of products, "unbiased" in the number of pairs). Computed for all columns at
    once by FFT (zero-padded, no wrap-around), in float64.

    Args:
        x: activity ``(T, n)`` (binary, counts or any real values; tensor, array or :class:`~dgrn.data.SpikeData`).
        max_lag: largest lag in bins, ``1 <= max_lag <= T - 2``.

    Returns:
        ``(max_lag + 1, n)`` float64 tensor. A constant column (zero variance) has no autocorrelation: its column is
        NaN at every lag, including 0.
    """
    x = _activity(x, "activity", binary=False).double()
    return _autocorrelation(x, _max_lag(max_lag, x.shape[0]))


def _check_level(level) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return level


def _crossing(curves: Tensor, level: float) -> Tensor:
    """Per column of ``curves (L + 1, n)`` (lag 0 first): the first lag where the curve is below ``level``, linearly
    interpolated between that lag and the one before; NaN where it never is (or the column is NaN)."""
    below = curves < level
    found = below.any(0)
    first = below.to(torch.uint8).argmax(0).clamp_min(1)  # lag 0 is 1 > level for a valid curve
    hi = curves.gather(0, first[None]).squeeze(0)
    lo = curves.gather(0, (first - 1)[None]).squeeze(0)
    frac = ((lo - level) / (lo - hi)).clamp(0.0, 1.0)
    tau = (first - 1).to(curves.dtype) + frac
    return torch.where(found, tau, torch.full_like(tau, float("nan")))


def autocorrelation_time(x, max_lag: int | None = None, level: float = 1 / math.e) -> Tensor:
    r"""Autocorrelation time of each column of ``x``: the first lag at which its normalized autocorrelation
    :func:`autocorrelation` falls below ``level`` (:math:`1/e` by default, the definition of the correlation time
    :math:`\tau_c` of Meshulam et al., PRL 2019), linearly interpolated between the integer lags on either side.

    For :math:`C(t) = \lambda^t` (a two-state Markov chain, an AR(1) process) the answer is
    :math:`\ln(\mathrm{level}) / \ln\lambda`, i.e. :math:`-1/\ln\lambda` at :math:`1/e`, up to the linear
    interpolation between lags, which overestimates a convex decay by at most about :math:`1/(8\tau_c)` bins.

    Args:
        x: activity ``(T, n)``. max_lag: largest lag searched (default ``min(T - 2, max(10, T // 10))``).
        level: threshold in ``(0, 1)``.

    Returns:
        float64 tensor ``(n,)`` in bins. NaN for a column whose autocorrelation stays at or above ``level`` up to
        ``max_lag`` (the time is longer than the window: raise ``max_lag``) and for a constant column.
    """
    x = _activity(x, "activity", binary=False).double()
    max_lag = _default_max_lag(x.shape[0]) if max_lag is None else _max_lag(max_lag, x.shape[0])
    return _crossing(_autocorrelation(x, max_lag), _check_level(level))


def _sequential_greedy(w: Tensor, left: Tensor) -> list[tuple[int, int]]:
    """Greedy matching of the units ``left`` by walking all their pairs in the order of :func:`_greedy_pairs`."""
    m = left.numel()
    i, j = torch.triu_indices(m, m, 1, device=w.device)  # lexicographic (i, j): the tie order
    order = w[left[i], left[j]].sort(descending=True, stable=True).indices
    used, out = set(), []
    for a, b in zip(i[order].tolist(), j[order].tolist()):
        if a not in used and b not in used:
            used.update((a, b))
            out.append((int(left[a]), int(left[b])))
            if len(used) >= m - 1:
                break
    return out


def _greedy_pairs(corr: Tensor) -> Tensor:
    """Greedy matching of ``n`` units by decreasing ``corr`` (symmetric ``(n, n)``, NaN for constant units): the most
    correlated pair first, then the most correlated pair among the units left, ...; ties go to the pair with the
    smaller lower index, then the smaller upper index, and pairs with a constant unit come after every other pair.
    Returns ``(n // 2, 2)`` int64 unit indices (``i < j`` per row, rows by lower index); for odd ``n`` the one unit
    left over is in no pair.

    Computed as rounds of mutual best partners: a pair whose members are each other's most correlated remaining
    unit is heaviest at both ends, so the greedy matching takes it; taking all of them at once and repeating on the
    rest gives exactly the greedy matching (Preis 1999) at :math:`O(n^2)` per round, a few rounds in practice (a round
    that matches under 2 % of many units, as with large groups of tied correlations, hands over to a sequential walk
    of the sorted pairs)."""
    n = corr.shape[0]
    w = corr.double()
    constant = torch.isnan(w).all(1) if n > 1 else torch.zeros(n, dtype=torch.bool, device=w.device)
    left = torch.arange(n, device=w.device)[~constant]
    pairs: list[tuple[int, int]] = []
    while left.numel() >= 2:
        m = left.numel()
        sub = w[left][:, left]
        sub.fill_diagonal_(-math.inf)
        best = sub.argmax(1)  # the first maximum: the tie order above (left is increasing)
        i = torch.arange(m, device=w.device)
        mutual = (best[best] == i) & (i < best)
        if m > 256 and int(mutual.sum()) * 50 < m:
            pairs += _sequential_greedy(w, left)
            left = left[:0]
            break
        pairs += list(zip(left[i[mutual]].tolist(), left[best[mutual]].tolist()))
        matched = torch.zeros(m, dtype=torch.bool, device=w.device)
        matched[i[mutual]] = True
        matched[best[mutual]] = True
        left = left[~matched]
    # after the real correlations: the unit left over (if any) and the constant units, all tied, in index order
    paired = {u for p in pairs for u in p}
    rest = sorted(set(left.tolist()) | set(torch.arange(n)[constant.cpu()].tolist()) - paired)
    pairs += list(zip(rest[0::2], rest[1::2]))
    out = torch.tensor(sorted(pairs), dtype=torch.int64, device=w.device).reshape(-1, 2)
    return out


def _covariance(x: Tensor) -> Tensor:
    """Covariance matrix ``(n, n)`` (float64) of the columns of ``x (T, n)``: the Gram matrix of the centred activity
    in float32 (half the time of float64; its relative error, ~1e-6, only matters for the order of the pairs)."""
    y = (x - x.mean(0)).float()
    return (y.T @ y).double() / x.shape[0]


def _correlation_of(cov: Tensor, constant: Tensor) -> Tensor:
    """Pearson correlation from a covariance matrix; NaN rows and columns for the ``constant`` units."""
    var = cov.diagonal().clone()
    constant = constant | (var <= 0)
    std = torch.where(constant, torch.ones_like(var), var).sqrt()
    corr = cov / std[:, None] / std[None, :]
    corr[constant] = float("nan")
    corr[:, constant] = float("nan")
    return corr


def _none_if_nan(v: float):
    return None if not math.isfinite(v) else float(v)


def _power_law_fit(ks: Sequence[int], taus: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Least squares slope of ``log tau`` against ``log K`` over the finite ``tau`` and its standard error (None
    below 2, respectively 3, points)."""
    pts = [(math.log(k), math.log(t)) for k, t in zip(ks, taus) if t is not None and t > 0]
    if len(pts) < 2:
        return None, None
    lk, lt = np.array(pts).T
    sxx = float(((lk - lk.mean()) ** 2).sum())
    if sxx == 0:
        return None, None
    z = float(((lk - lk.mean()) * (lt - lt.mean())).sum() / sxx)
    if len(pts) < 3:
        return z, None
    resid = lt - lt.mean() - z * (lk - lk.mean())
    return z, math.sqrt(float((resid ** 2).sum()) / (len(pts) - 2) / sxx)


def _level_row(y: Tensor, max_lag: int, level: float, what: str) -> tuple[Tensor, float | None, float | None, int]:
    """Mean autocorrelation over the non-constant columns of ``y``, its crossing time and the per-column median."""
    curves = _autocorrelation(y, max_lag)
    ok = ~torch.isnan(curves[0])
    if not bool(ok.any()):
        raise ValueError(f"{what}: every unit is constant, no autocorrelation")
    curves = curves[:, ok]
    mean = curves.mean(1)
    tau_mean = float(_crossing(mean[:, None], level)[0])
    per = _crossing(curves, level)
    per = torch.where(torch.isnan(per), torch.full_like(per, math.inf), per).sort().values  # never below: > max_lag
    median = float((per[(per.numel() - 1) // 2] + per[per.numel() // 2]) / 2)  # mean of the middle two for even n
    return mean, _none_if_nan(tau_mean), _none_if_nan(median), int(ok.sum())


def _scaling_result(ks, rows, max_lag: int, level: float) -> dict:
    taus = [r[1] for r in rows]
    z, z_err = _power_law_fit(ks, taus)
    return {"K": list(ks), "tau_c": taus, "tau_c_median": [r[2] for r in rows],
            "n_clusters": [r[3] for r in rows], "autocorrelation": [r[0].tolist() for r in rows], "z": z,
            "z_stderr": z_err, "max_lag": max_lag, "level": level}


def dynamic_scaling(spikes, max_lag: int | None = None, n_steps: int | None = None, *,
                    level: float = 1 / math.e) -> dict:
    r"""Dynamic scaling under real-space coarse-graining (Meshulam, Gauthier, Brody, Tank & Bialek, PRL 123, 178103,
    2019): correlation time :math:`\tau_c(K) \sim K^{z}` of clusters of :math:`K` units.

    Step 0 is the units themselves (:math:`K = 1`). Each step pairs the current clusters greedily by Pearson
    correlation of their activity (the most correlated pair first, then the most correlated pair among the clusters
    left, ...; with an odd number of clusters the one left over is dropped) and sums each pair, so every cluster of
    step :math:`k` is the sum of :math:`K = 2^k` units. Per step: the normalized autocorrelation
    :func:`autocorrelation` of every cluster, averaged over the clusters, :math:`C_K(t)`; :math:`\tau_c(K)` where
    :math:`C_K` first falls below ``level`` (:func:`autocorrelation_time` of the mean curve); and the median over
    clusters of their own crossing times. :math:`z` is the least-squares slope of :math:`\ln\tau_c` against
    :math:`\ln K`: :math:`z = 0` when coarse-graining does not slow the dynamics (e.g. independent copies of one
    process), :math:`z > 0` when correlated units carry slower shared fluctuations (Meshulam et al. measured
    :math:`z \approx 0.16`-:math:`0.22` in mouse hippocampus). The curves :math:`C_K(t/\tau_c(K))` collapse when the
    dynamics is scale invariant.

    On a finite recording the pairing selects the largest *chance* correlations too, and their chance
    cross-correlations at small lags add to the clusters' autocorrelation: independent units give a small positive
    :math:`z` (about 0.01-0.02 for 64 two-state chains with :math:`\tau_c = 4.5` bins over :math:`T = 20\,000` bins,
    shrinking as :math:`1/\sqrt{T}`). Read a small :math:`z` against such a null (the same read-out on units shifted
    in time against each other, or :func:`level_autocorrelation_times` on fixed clusters).

    Args:
        spikes: activity ``(T, N)``, ``N >= 2`` (binary, counts, fluorescence: any real values).
        max_lag: largest lag in bins (default ``min(T - 2, max(10, T // 10))``); raise it if ``tau_c`` is ``None``.
        n_steps: pairing steps (default: as many as leave at least 2 clusters, i.e. up to
            :math:`K = 2^{\lfloor \log_2 N \rfloor - 1}`); each step needs at least 2 clusters.
        level: the threshold defining :math:`\tau_c`, in ``(0, 1)``.

    Returns:
        JSON-ready dict: ``K`` (cluster size per step), ``tau_c`` (bins; ``None`` where the mean curve stays above
        ``level`` up to ``max_lag``), ``tau_c_median`` (median of the clusters' own times, clusters that never
        cross counted as longer than ``max_lag``; ``None`` when that median is), ``n_clusters`` (clusters that are not
        constant, the ones averaged), ``autocorrelation`` (:math:`C_K(t)`, ``t = 0..max_lag``, per step), ``z`` and
        ``z_stderr`` (fit over the steps with a ``tau_c``; ``None`` below 2, respectively 3, of them), ``clusters``
        (per step, the original unit indices summed in each cluster), ``max_lag`` and ``level``. Constant clusters
        are left out of the averages; all of them constant is an error.
    """
    x = _activity(spikes, "activity", binary=False).double()
    t, n = x.shape
    if n < 2:
        raise ValueError(f"dynamic scaling needs at least 2 units, got {n}")
    max_lag = _default_max_lag(t) if max_lag is None else _max_lag(max_lag, t)
    level = _check_level(level)
    most = max(0, n.bit_length() - 2)  # floor(log2 n) - 1
    if n_steps is None:
        n_steps = most
    elif isinstance(n_steps, bool) or int(n_steps) != n_steps or n_steps < 0:
        raise ValueError(f"n_steps must be a non-negative integer, got {n_steps!r}")
    elif n_steps > n.bit_length() - 1:
        raise ValueError(f"n_steps={n_steps} pairing steps need at least {2 ** n_steps} units, got {n}")
    members = torch.arange(n, device=x.device)[:, None]
    y, ks, rows, clusters = x, [], [], []
    cov = _covariance(x) if n_steps else None
    for step in range(int(n_steps) + 1):
        if step:
            a, b = _greedy_pairs(_correlation_of(cov, (y == y[0]).all(0))).T
            y = y[:, a] + y[:, b]
            cov = cov[a][:, a] + cov[a][:, b] + cov[b][:, a] + cov[b][:, b]  # covariance of the sums, exactly
            members = torch.cat([members[a], members[b]], 1)
        ks.append(2 ** step)
        rows.append(_level_row(y, max_lag, level, f"step {step} (K={2 ** step})"))
        clusters.append(members.sort(1).values.tolist())
    out = _scaling_result(ks, rows, max_lag, level)
    out["clusters"] = clusters
    return out


def level_autocorrelation_times(levels: Sequence, block_sizes: Sequence[float], max_lag: int | None = None, *,
                                level: float = 1 / math.e) -> dict:
    r""":func:`dynamic_scaling` on a given hierarchy instead of greedy pairing: ``levels[l]`` is the activity
    ``(T, n_l)`` of level ``l`` (for example DGRN's pooled levels, ``dgrn.renorm.pool_flow(data, flow, "sum")``), whose
    units hold ``block_sizes[l]`` neurons each (the mean number of neurons per unit where they differ).

    Args:
        levels: activity per level, all with the same number of bins ``T``.
        block_sizes: neurons per unit of each level (positive, same length as ``levels``): the :math:`K` of the fit.
        max_lag, level: as in :func:`dynamic_scaling`.

    Returns:
        the dict of :func:`dynamic_scaling` with ``K`` = ``block_sizes`` and without ``clusters``.
    """
    levels, ks = list(levels), list(block_sizes)
    if not levels:
        raise ValueError("no levels given")
    if len(ks) != len(levels):
        raise ValueError(f"block_sizes has {len(ks)} entries for {len(levels)} levels")
    for k in ks:
        if isinstance(k, bool) or not math.isfinite(float(k)) or float(k) <= 0:
            raise ValueError(f"block_sizes must be positive numbers, got {k!r}")
    xs = [_activity(v, f"level {i} activity", binary=False).double() for i, v in enumerate(levels)]
    t = xs[0].shape[0]
    for i, v in enumerate(xs):
        if v.shape[0] != t:
            raise ValueError(f"level {i} has {v.shape[0]} bins, level 0 has {t}: the levels must share their bins")
    max_lag = _default_max_lag(t) if max_lag is None else _max_lag(max_lag, t)
    level = _check_level(level)
    rows = [_level_row(v, max_lag, level, f"level {i}") for i, v in enumerate(xs)]
    return _scaling_result([int(k) if float(k).is_integer() else float(k) for k in ks], rows, max_lag, level)
