"""Baseline coupling estimators: correlation, partial correlation and mean-field kinetic-Ising inversion.

Each takes ``(T, N)`` spikes (tensor, array or :class:`~dgrn.data.SpikeData`) and returns an ``(N, N)`` float32
tensor with a zero diagonal, ``[i, j]`` scoring the influence of ``j`` on ``i`` (symmetric for the equal-time
methods). Neurons that never (or always) fire get zero rows and columns.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dgrn.graph.inference import _active_neurons, binary_spikes

__all__ = ["correlation", "partial_correlation", "mean_field_couplings", "BASELINES"]


def _prepare(spikes: Any, min_bins: int = 2) -> tuple[Tensor, Tensor]:
    x = binary_spikes(spikes)
    if x.shape[0] < min_bins:
        raise ValueError(f"need at least {min_bins} time bins, got {x.shape[0]}")
    active = _active_neurons(x)
    return x[:, active].double(), active


def _embed(block: Tensor, active: Tensor) -> Tensor:
    """Put the ``(n, n)`` estimate among active neurons into an ``(N, N)`` zero matrix, zero diagonal."""
    n = active.shape[0]
    out = torch.zeros(n, n, dtype=torch.float64)
    idx = active.nonzero().squeeze(1)
    out[idx[:, None], idx[None, :]] = block
    out.fill_diagonal_(0.0)
    return out.float()


def correlation(spikes: Any, lag: int = 0) -> Tensor:
    r"""Pearson correlation :math:`\mathrm{corr}(x_i(t + \ell), x_j(t))` at lag ``\ell`` (0: equal time, symmetric)."""
    if lag < 0:
        raise ValueError(f"lag must be >= 0, got {lag}")
    x, active = _prepare(spikes, min_bins=lag + 2)
    post, pre = x[lag:], x[: x.shape[0] - lag]
    post = (post - post.mean(0)) / post.std(0).clamp_min(1e-12)
    pre = (pre - pre.mean(0)) / pre.std(0).clamp_min(1e-12)
    return _embed(post.T @ pre / (post.shape[0] - 1), active)


def partial_correlation(spikes: Any, estimator: str = "ledoit_wolf", alpha: float | None = None) -> Tensor:
    r"""Partial correlation :math:`-P_{ij}/\sqrt{P_{ii}P_{jj}}` from a regularized precision matrix ``P``.

    Args:
        estimator: ``"ledoit_wolf"`` (shrunk covariance, analytic shrinkage; well posed when ``T < N``),
            ``"ridge"`` (:math:`P = (C + \alpha I)^{-1}`, ``alpha`` default ``1e-3`` times the mean variance) or
            ``"glasso"`` (scikit-learn's graphical lasso; ``alpha`` its L1 penalty, chosen by
            ``GraphicalLassoCV`` when ``None`` — slow beyond a few hundred neurons).
    """
    from sklearn.covariance import GraphicalLasso, GraphicalLassoCV, ledoit_wolf

    valid = ("ledoit_wolf", "ridge", "glasso")
    if estimator not in valid:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {list(valid)}")
    x, active = _prepare(spikes)
    xs = (x - x.mean(0)) / x.std(0)  # correlation scale, so alpha means the same for every recording
    if estimator == "ledoit_wolf":
        cov, _ = ledoit_wolf(xs.numpy(), assume_centered=True)
        precision = np.linalg.inv(cov)
    elif estimator == "ridge":
        cov = (xs.T @ xs / xs.shape[0]).numpy()
        precision = np.linalg.inv(cov + (1e-3 if alpha is None else alpha) * np.eye(cov.shape[0]))
    else:
        model = GraphicalLassoCV() if alpha is None else GraphicalLasso(alpha=alpha)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's convergence chatter; the result is checked below
            precision = model.fit(xs.numpy()).precision_
    p = torch.from_numpy(np.asarray(precision))
    d = p.diagonal().rsqrt()
    pcorr = -p * d[:, None] * d[None, :]
    if not torch.isfinite(pcorr).all():
        raise FloatingPointError(f"the {estimator} precision matrix is singular; use a stronger regularization")
    return _embed(pcorr, active)


def _solve_tap(a: Tensor, iters: int = 60) -> Tensor:
    """Smallest root ``F`` in ``[0, 1/3]`` of ``F (1 - F)^2 = a`` (vectorized bisection; ``F(1-F)^2`` increases
    there). Where ``a > 4/27`` there is no root and ``F = 1/3`` (the TAP correction is clipped)."""
    lo, hi = torch.zeros_like(a), torch.full_like(a, 1.0 / 3.0)
    for _ in range(iters):  # bisection steps, all neurons at once
        mid = (lo + hi) / 2
        below = mid * (1 - mid) ** 2 < a
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


def mean_field_couplings(spikes: Any, method: str = "tap") -> Tensor:
    r"""Mean-field inversion of the kinetic Ising model (Roudi & Hertz, PRL 106, 048702, 2011).

    With spins :math:`s = 2x - 1`, magnetizations :math:`m_i`, equal-time covariance ``C`` and one-step delayed
    covariance :math:`D_{ij} = \langle \delta s_i(t+1)\, \delta s_j(t)\rangle`:

    - ``"nmf"`` (naive mean field): :math:`J = A^{-1} D C^{-1}`, :math:`A_{ii} = 1 - m_i^2`;
    - ``"tap"``: :math:`A_{ii} = (1 - m_i^2)(1 - F_i)` with :math:`F_i = (1-m_i^2)\sum_j J_{ij}^2 (1-m_j^2)`,
      i.e. :math:`J^{TAP}_{ij} = J^{nMF}_{ij}/(1-F_i)` where ``F_i`` is the smallest root of
      :math:`F(1-F)^2 = (1-m_i^2)\sum_j (J^{nMF}_{ij})^2(1-m_j^2)` (clipped at ``1/3`` when none exists).

    Returned in the 0/1 convention of :func:`infer_couplings` (:math:`P(x_i{=}1) = \sigma(b_i + \sum_j W_{ij}x_j)`
    with :math:`W = 4J`), so the values are comparable with the maximum-likelihood couplings.
    """
    if method not in ("nmf", "tap"):
        raise ValueError(f"unknown mean-field method {method!r}; valid: ['nmf', 'tap']")
    x, active = _prepare(spikes, min_bins=3)
    s = 2 * x - 1
    m = s.mean(0)
    ds = s - m
    c = ds.T @ ds / ds.shape[0]
    d = ds[1:].T @ ds[:-1] / (ds.shape[0] - 1)
    # J C = A^{-1} D  ->  solve with C (symmetric positive definite for non-constant neurons)
    b = torch.linalg.solve(c, d.T).T  # D C^{-1}
    var = 1 - m.square()
    j = b / var[:, None]
    if method == "tap":
        f = _solve_tap(var * (j.square() * var[None, :]).sum(1))
        j = j / (1 - f)[:, None]
    return _embed(4 * j, active)


#: Baseline estimators by name (used by the benchmark and ``experiment=infer_graph``).
BASELINES = {
    "correlation": correlation,
    "partial_correlation": partial_correlation,
    "nmf": lambda spikes: mean_field_couplings(spikes, "nmf"),
    "tap": lambda spikes: mean_field_couplings(spikes, "tap"),
}
