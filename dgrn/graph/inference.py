"""Directed coupling inference from spikes: maximum likelihood of the kinetic-Ising / Bernoulli GLM.

The baselines (correlation, partial correlation, mean-field inversion) live in :mod:`dgrn.graph.baselines`.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dgrn.data import SpikeData
from dgrn.graph.glm import glm_context, glm_logits, resolve_latent_delay
from dgrn.graph.optim import rowwise_lbfgs

__all__ = ["binary_spikes", "infer_couplings", "select_latent_rank", "coupling_standard_errors", "denoise_couplings",
           "ConvergenceWarning", "UninformativeFitWarning", "PENALTIES", "MODES", "LATENT_RANKS"]

PENALTIES = ("l1", "l2")
MODES = ("full", "minibatch")
LATENT_RANKS = (0, 1, 2, 4, 8)  # candidates of latent_rank="auto"
_L1_SMOOTHING = 1e-3  # pseudo-Huber width: |w| ~ sqrt(w^2 + eps^2) - eps keeps the objective smooth for L-BFGS
_CONVERGENCE_TOL = 1e-2  # relative change of the couplings the final gradient may still ask for
_LBFGS_HISTORY = 10  # curvature pairs per neuron: (10, N, H N) floats for s and for y
_SCORE_Z = 3.0  # standard deviations above chance the score statistic must reach for the couplings to mean something


class ConvergenceWarning(UserWarning):
    """The L-BFGS fit of :func:`infer_couplings` used its ``max_iter`` budget while the gradient still asked the
    couplings to move by more than 1 %."""


class UninformativeFitWarning(UserWarning):
    """The spikes show no dependence on the previous bins beyond chance: the couplings of :func:`infer_couplings`
    explain nothing beyond the rates (they are fitted noise)."""


def binary_spikes(spikes: Any) -> Tensor:
    """``(T, N)`` uint8 0/1 tensor from a :class:`SpikeData`, tensor or array of counts.

    Counts are validated by :class:`SpikeData` (shape, NaN, negative, non-integer, empty) and clipped to 1: the
    Bernoulli model sees whether a neuron fired in a bin, not how often.
    """
    data = spikes if isinstance(spikes, SpikeData) else SpikeData(spikes, dt=1.0)
    return data.spikes.clamp(max=1).to(torch.uint8)


def _active_neurons(x: Tensor) -> Tensor:
    """Boolean mask of neurons that are not constant (never or always firing); errors if fewer than two remain."""
    counts = x.sum(0, dtype=torch.int64)
    if int(counts.sum()) == 0:
        raise ValueError("spikes contain no spikes at all: couplings cannot be inferred from silent data")
    active = (counts > 0) & (counts < x.shape[0])
    n_const = int((~active).sum())
    if int(active.sum()) < 2:
        raise ValueError(
            f"{n_const} of {x.shape[1]} neurons are constant (never or always firing); need at least 2 that vary"
        )
    if n_const:
        warnings.warn(
            f"{n_const} neuron(s) never or always fire; their couplings are not identifiable and are returned as 0",
            stacklevel=3,
        )
    return active


def _moments(x: Tensor, chunk: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Mean ``(N,)`` and covariance ``(N, N)`` of the 0/1 spikes, accumulated over time chunks."""
    n = x.shape[1]
    total = torch.zeros(n, dtype=torch.float64, device=x.device)
    gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], chunk):  # chunks over time bound the memory of the float copy
        xc = x[s: s + chunk].to(dtype)
        total += xc.sum(0, dtype=torch.float64)
        gram += (xc.T @ xc).double()
    mean = total / x.shape[0]
    cov = gram / x.shape[0] - torch.outer(mean, mean)
    return mean.to(dtype), cov.to(dtype)


class _Reparam:
    r"""Preconditioned coordinates of the GLM couplings.

    The Hessian of the Bernoulli NLL in the row ``W_i`` is :math:`\approx p_i(1-p_i)\,C` with ``C`` the
    covariance of the inputs. Writing :math:`W^{(k)} = \mathrm{diag}(s)\,V^{(k)} L^{-1}` (``C = L L^T``,
    :math:`s_i = 1/\sqrt{p_i(1-p_i)}`) and centring the inputs in the bias makes that Hessian close to the identity
    in ``V``, so L-BFGS and Adam converge in a few tens of iterations instead of hundreds.

    A penalty of curvature ``ridge`` on every entry of ``W`` (``2 lambda`` for the ridge) adds
    :math:`\mathrm{ridge}\; s_i^2\, (L L^T)^{-1}` to the Hessian of row ``i`` in ``V``: with ``L`` the factor of ``C``
    itself that term is as ill-conditioned as ``C`` (binary spikes have covariance eigenvalues down to the jitter) and
    L-BFGS crawls along those directions. So ``L`` factors :math:`C + \mathrm{ridge}\; \mathrm{median}(s^2)\, I`, the
    whole Hessian of a row of typical rate. Only the path changes: the optimum in ``W`` is the same.
    """

    def __init__(self, mean: Tensor, cov: Tensor, history: int, ridge: float = 0.0) -> None:
        n = mean.shape[0]
        rate = mean.clamp(1e-6, 1 - 1e-6)
        self.scale = (rate * (1 - rate)).rsqrt()
        jitter = max(1e-4 * float(cov.diagonal().mean()), ridge * float(self.scale.square().median()))
        chol = torch.linalg.cholesky(cov + jitter * torch.eye(n, dtype=cov.dtype, device=cov.device))
        self.chol_inv = torch.linalg.solve_triangular(chol, torch.eye(n, dtype=cov.dtype, device=cov.device), upper=False)
        self.mean = mean
        self.history = history
        self.v = torch.zeros(history, n, n, dtype=cov.dtype, device=cov.device, requires_grad=True)
        self.b = (torch.logit(rate) / self.scale).detach().requires_grad_()

    def params(self) -> list[Tensor]:
        return [self.v, self.b]

    def weight_bias(self, v: Tensor | None = None, b: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``W`` ``(H, N, N)`` and ``b`` ``(N,)`` of the coordinates ``v``, ``b`` (default: the fitted ones)."""
        v, b = (self.v if v is None else v), (self.b if b is None else b)
        weight = self.scale[:, None] * v @ self.chol_inv
        bias = self.scale * b - weight.sum(0) @ self.mean
        return weight, bias

    def rows(self) -> Tensor:
        """The coordinates as one row per neuron, ``(N, H N + 1)``: row ``i`` holds ``v[:, i, :]`` and ``b[i]``, all
        that neuron ``i``'s likelihood and penalty depend on."""
        return torch.cat([self.v.detach().transpose(0, 1).flatten(1), self.b.detach()[:, None]], 1)

    def split_rows(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Inverse of :meth:`rows`: ``v`` ``(H, N, N)`` and ``b`` ``(N,)`` (views of ``rows``)."""
        return rows[:, :-1].unflatten(1, (self.history, -1)).transpose(0, 1), rows[:, -1]


@torch.no_grad()
def _coupling_score(x: Tensor, rep: _Reparam, context: int, chunk: int, dtype: torch.dtype) -> float:
    r"""Score statistic of the rate-only model against couplings at lags ``1..H``.

    At :math:`W = 0` (bias :math:`\mathrm{logit}\, p_i`) the gradient of the mean NLL per bin is
    :math:`\partial f / \partial W^{(k)}_{ij} = -\frac1{T'} A^{(k)}_{ij}`,
    :math:`A^{(k)}_{ij} = \sum_t (x_i(t) - p_i)(x_j(t-k) - m_j)` over the ``T'`` scored bins. In the preconditioned
    coordinates :math:`V` of :class:`_Reparam` the Fisher information per bin of the rate-only model is the
    identity when the bins are independent, so :math:`S = T' \lVert \nabla_V f \rVert^2
    = \frac1{T'} \sum_k \lVert \mathrm{diag}(s)\, A^{(k)} L^{-\top} \rVert_F^2` is
    :math:`\chi^2_{H N^2}` for independent neurons (mean :math:`HN^2`, sd :math:`\sqrt{2HN^2}`), and
    :math:`S / 2T'` is, to second order, the log-likelihood gain per bin that the couplings can bring.
    ``x`` ``(T, N)`` 0/1 on the fitting device; time in chunks of ``chunk`` bins. Returns ``S``.
    """
    n_bins, n = x.shape
    cross = torch.zeros(rep.history, n, n, dtype=torch.float64, device=x.device)
    for s in range(context, n_bins, chunk):  # chunks over time bound the memory of the float copy
        e = min(s + chunk, n_bins)
        residual = x[s:e].to(dtype) - rep.mean
        for k in range(1, rep.history + 1):  # a loop over the few lags
            cross[k - 1] += (residual.T @ (x[s - k: e - k].to(dtype) - rep.mean)).double()
    whitened = rep.scale.double()[:, None] * cross @ rep.chol_inv.double().T
    return float(whitened.square().sum()) / (n_bins - context)


def _relative_step(grad_v: Tensor, v: Tensor) -> float:
    """``|grad| / |V|`` in the preconditioned coordinates, where the Hessian is about the identity: the Newton step
    still to take, relative to the couplings."""
    return float(grad_v.norm()) / max(float(v.norm()), torch.finfo(v.dtype).tiny)


def _penalty(weight: Tensor, kind: str) -> Tensor:
    """The penalty of every entry of ``weight``: ``w^2`` (``"l2"``) or the smooth lasso (``"l1"``)."""
    if kind == "l2":
        return weight.square()
    return (weight.square() + _L1_SMOOTHING**2).sqrt() - _L1_SMOOTHING


@torch.no_grad()
def _nll_per_bin(x: Tensor, bias: Tensor, weight: Tensor, latent: dict, context: int, first: int, chunk: int,
                 dtype: torch.dtype, neurons: Tensor | None = None) -> Tensor:
    """NLL of bins ``first..T-1`` of ``x`` summed over the neurons (or over the ``neurons`` mask), ``(T - first,)``
    float64 on the CPU; time goes in chunks of ``chunk`` bins, each with its ``context`` bins of history."""
    out = []
    for s in range(first, x.shape[0], chunk):  # chunks over time bound the memory of the float copy
        xc = x[s - context: min(s + chunk, x.shape[0])].to(device=bias.device, dtype=dtype)[None]
        logits, target = glm_logits(xc, bias, weight, context=context, **latent)[0], xc[0, context:]
        if neurons is not None:
            logits, target = logits[:, neurons], target[:, neurons]
        out.append(F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1).double().cpu())
    return torch.cat(out)


def infer_couplings(
    spikes: Any,
    *,
    penalty: str = "l2",
    strength: float = 1e-4,
    latent_rank: int | str = 0,
    latent_history: int = 20,
    latent_tau: float = 5.0,
    latent_delay: int | None = None,
    history: int = 1,
    mode: str = "full",
    max_iter: int = 60,
    tol: float = _CONVERGENCE_TOL,
    epochs: int = 5,
    batch_bins: int = 2048,
    lr: float = 3e-3,
    chunk_bins: int = 16384,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    return_params: bool = False,
) -> Tensor | tuple[Tensor, dict]:
    r"""Directed couplings by penalized maximum likelihood of the kinetic-Ising / Bernoulli GLM.

    Fits, for all neurons at once, the model of :func:`dgrn.graph.glm.glm_logits` (the same equation as
    :class:`dgrn.nn.BernoulliGLM`),

    .. math::
        P(x_i(t)=1 \mid \text{past}) = \sigma\Big(b_i + \sum_{k=1}^{H} \sum_j W^{(k)}_{ij} x_j(t-k)
            + [U\,V^\top \textstyle\sum_{k \ge d} \kappa_{k-d}\, x(t-k)]_i\Big),

    minimizing :math:`\frac1{T'}\sum_{t,i} \mathrm{NLL}_{it} + \lambda \sum_{kij} \rho(W^{(k)}_{ij})
    + \lambda (\lVert U\rVert^2 + \lVert V\rVert^2)` with :math:`\rho(w) = w^2` (``"l2"``) or the smooth lasso
    :math:`\sqrt{w^2+\epsilon^2}-\epsilon`, :math:`\epsilon = 10^{-3}` (``"l1"``). The rank-``r`` latent input
    (``latent_rank > 0``) is unpenalized by the lasso/ridge on ``W``, so slow, low-rank shared drive — the
    signature of hidden neurons acting on groups of observed ones (Dunn & Roudi 2013) — is absorbed there instead
    of appearing as spurious pairwise couplings (a sparse + low-rank split). The latent sees the activity from lag
    ``d = latent_delay`` on, by default ``history + 1``: a latent that also saw lag 1 would be a low-rank part of
    :math:`W^{(1)}` and would absorb the community (low-rank) part of the true couplings along with the hidden drive.

    Optimization runs in preconditioned coordinates (inputs whitened by their covariance, rows scaled by
    :math:`1/\sqrt{p_i(1-p_i)}`), full-batch by L-BFGS (``mode="full"``, time processed in chunks of
    ``chunk_bins`` so memory stays bounded) or by Adam over random time blocks of ``batch_bins`` bins
    (``mode="minibatch"``). Without a latent input every neuron's row of ``(W, b)`` is a separate problem, and the
    full-batch fit runs one L-BFGS per neuron (:func:`~dgrn.graph.rowwise_lbfgs`: its own curvature pairs and
    backtracking line search, every row's trial point scored in the same pass over the data); with a latent input,
    whose factors all neurons share, one joint L-BFGS with a strong-Wolfe line search. All neurons are fitted
    together: no loop over neurons.

    Args:
        spikes: ``(T, N)`` counts (tensor, array or :class:`~dgrn.data.SpikeData`); counts above 1 are clipped.
        penalty: ``"l1"`` or ``"l2"``; strength: :math:`\lambda` (per bin, so it does not scale with ``T``).
        latent_rank, latent_history, latent_tau, latent_delay: the latent input (``r``, ``H_z``, initial ``tau``
            in bins, first lag ``d``, default ``history + 1``);
            ``latent_rank="auto"`` picks ``r`` from :data:`LATENT_RANKS` by held-out likelihood
            (:func:`select_latent_rank`, five extra fits on 80 % of the bins), then fits all bins with it.
        history: ``H``, lags of the coupling filter; the returned matrix is :math:`\sum_k W^{(k)}`.
        mode: ``"full"`` (L-BFGS: at most ``max_iter`` passes over the data after the first, or with a latent input
            ``max_iter`` iterations) or ``"minibatch"`` (Adam, ``epochs``, ``lr``).
        tol: ``"full"`` stops at the first point (no worse than any before it) where the gradient, in the
            preconditioned coordinates where the Hessian is about the identity, asks the couplings to move by at most
            ``tol`` of their norm: the Newton step still to take, relative to ``W``. ``0`` runs every row to
            L-BFGS's own (much tighter) tolerances, and so does a fit with a latent input, whose parameters are not
            preconditioned (a small gradient in ``W`` says nothing about them).
        device, dtype: where and in which precision to fit (default: CPU, float32).
        seed: seeds the latent initialization and the mini-batch order.
        return_params: also return a dict with ``bias``, ``weight``, and (with a latent) ``latent_in``,
            ``latent_out``, ``log_latent_tau`` — the ``state_dict`` of a :class:`dgrn.nn.BernoulliGLM` of the same
            shape, whose ``latent_history`` and (resolved) ``latent_delay`` are returned too — plus ``nll`` (mean NLL
            per neuron-bin), ``active`` (neurons that were fitted) and, for ``"full"``, ``evaluations`` (passes over
            the data) and ``relative_gradient`` (the measure of ``tol`` at the last point evaluated); with
            ``latent_rank="auto"`` also ``latent_rank`` and ``latent_rank_nll`` (held-out NLL of each candidate).

    Returns:
        ``W`` ``(N, N)`` on ``device``, ``W[i, j]`` = influence of ``j`` on ``i`` (diagonal: self-coupling).

    Bad input: NaN / negative / non-integer / empty spikes raise (:class:`SpikeData` validation); data without
    spikes raise; neurons that never (or always) fire are left out of the fit with a warning and get zero
    couplings; fewer scored bins than neurons warns and raises :math:`\lambda` to at least ``1e-2`` (ridge or
    lasso), because the likelihood alone does not identify ``W`` then.

    Fits that mean little warn. :class:`UninformativeFitWarning`: the score statistic :math:`S` of the rate-only
    model against the couplings (:math:`S / 2T'` is, to second order, the log-likelihood gain per bin that couplings
    can bring) is within 3 standard deviations of its :math:`\chi^2_{HN^2}` value for independent neurons (checked
    when there are at least as many scored bins as neurons): the returned ``W`` is fitted noise.
    :class:`ConvergenceWarning`: L-BFGS stopped at its ``max_iter`` budget (not at ``tol`` or its own tolerances) while the
    gradient, in the preconditioned coordinates where the Hessian is about the identity, still asks ``W`` to move by
    more than 1 % of its norm; the check costs one more pass over the data, only when the budget ran out.
    ``mode="minibatch"`` has no stopping test and is not checked: Adam at a fixed ``lr`` ends within a noise floor of
    the optimum (about 10 % of ``W`` at the defaults on a 30-neuron network, 4 % at ``lr=1e-3``).
    """
    if latent_rank:  # checked and resolved once, before "auto" fits anything
        latent_delay = resolve_latent_delay(history, latent_delay, latent_history)
    if latent_rank == "auto":
        options = dict(penalty=penalty, strength=strength, latent_history=latent_history, latent_tau=latent_tau,
                       latent_delay=latent_delay, history=history, mode=mode, max_iter=max_iter, tol=tol, epochs=epochs,
                       batch_bins=batch_bins, lr=lr, chunk_bins=chunk_bins, device=device, dtype=dtype, seed=seed)
        rank, scores = select_latent_rank(spikes, **options)
        coupling, params = infer_couplings(spikes, latent_rank=rank, return_params=True, **options)
        params.update(latent_rank=rank, latent_rank_nll=scores)
        return (coupling, params) if return_params else coupling
    if isinstance(latent_rank, bool) or not isinstance(latent_rank, (int, float)) or int(latent_rank) != latent_rank:
        raise ValueError(f"latent_rank must be an integer >= 0 or 'auto', got {latent_rank!r}")
    latent_rank = int(latent_rank)
    if penalty not in PENALTIES:
        raise ValueError(f"unknown penalty {penalty!r}; valid: {list(PENALTIES)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {list(MODES)}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol}")
    if not (math.isfinite(strength) and strength >= 0):
        raise ValueError(f"strength must be a finite number >= 0, got {strength}")
    if history < 1 or latent_rank < 0 or latent_history < 1 or latent_tau <= 0:
        raise ValueError("need history >= 1, latent_rank >= 0, latent_history >= 1 and latent_tau > 0; got "
                         f"{history}, {latent_rank}, {latent_history}, {latent_tau}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point type, got {dtype}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    x_all = binary_spikes(spikes)
    n_total = x_all.shape[1]
    context = glm_context(history, latent_history if latent_rank else 0)
    if x_all.shape[0] <= context + 1:
        raise ValueError(f"need more than {context + 1} time bins for a model with {context} bins of history, "
                         f"got {x_all.shape[0]}")
    active = _active_neurons(x_all)
    x = x_all[:, active].to(device)
    n_bins, n = x.shape
    n_scored = n_bins - context
    if n_scored < n:
        strength = max(strength, 1e-2)
        warnings.warn(f"fewer scored bins ({n_scored}) than neurons ({n}): W is not identified by the likelihood "
                      f"alone; using {penalty} strength {strength:g}", stacklevel=2)

    gen = torch.Generator().manual_seed(int(seed))
    mean, cov = _moments(x, chunk_bins, dtype)
    # the ridge's curvature per entry of W goes into the preconditioner (the smooth lasso's varies with |w|: left out)
    rep = _Reparam(mean, cov, history, ridge=2 * strength if penalty == "l2" else 0.0)
    if n_scored >= n:  # below, the likelihood does not identify W and the chi-square reference does not hold
        # the score statistic needs the exact whitening of the inputs (Fisher information = identity), no ridge
        score, dof = _coupling_score(x, _Reparam(mean, cov, history), context, chunk_bins, dtype), history * n * n
        if score <= dof + _SCORE_Z * math.sqrt(2 * dof):
            warnings.warn(
                f"the spikes show no dependence on the previous {history} bin(s) beyond chance: couplings could raise "
                f"the log-likelihood by {score / (2 * n_scored * n):.2g} nats per neuron-bin over the rate-only model, "
                f"and independent neurons give {dof / (2 * n_scored * n):.2g} (score statistic {score:.0f}, chance "
                f"{dof} +- {math.sqrt(2 * dof):.0f}); the couplings explain nothing beyond the rates",
                UninformativeFitWarning, stacklevel=2)
    params = rep.params()
    latent: dict = {}
    if latent_rank:
        lat_in = (torch.randn(n, latent_rank, generator=gen, dtype=dtype) / math.sqrt(n)).to(device).requires_grad_()
        lat_out = torch.zeros(n, latent_rank, dtype=dtype, device=device, requires_grad=True)
        log_tau = torch.tensor(math.log(latent_tau), dtype=dtype, device=device, requires_grad=True)
        latent = dict(latent_in=lat_in, latent_out=lat_out, log_latent_tau=log_tau, latent_history=latent_history,
                      latent_delay=latent_delay)
        params += [lat_in, lat_out, log_tau]

    def penalty_term(weight: Tensor) -> Tensor:
        out = strength * _penalty(weight, penalty).sum()
        if latent_rank:
            out = out + strength * (latent["latent_in"].square().sum() + latent["latent_out"].square().sum())
        return out

    def block_nll(weight: Tensor, bias: Tensor, start: int, stop: int, norm: float) -> Tensor:
        """NLL of bins ``start .. stop - 1`` per neuron ``(N,)``, divided by ``norm``."""
        xc = x[start - context: stop].to(dtype)[None]
        logits = glm_logits(xc, bias, weight, context=context, **latent)
        return F.binary_cross_entropy_with_logits(logits, xc[:, context:], reduction="none").sum((0, 1)) / norm

    starts = list(range(context, n_bins, chunk_bins))

    def full_pass(weight: Tensor, bias: Tensor, pen: Tensor) -> Tensor:
        """One pass over the data: the mean NLL per scored bin of every neuron ``(N,)`` float64; the gradient of
        that NLL plus ``pen`` reaches the leaves behind ``weight``, ``bias`` (and the latent input)."""
        # accumulate the chunks' gradients on detached copies, then push them through the reparametrization once
        w_leaf, b_leaf = weight.detach().requires_grad_(), bias.detach().requires_grad_()
        values = torch.zeros(n, dtype=torch.float64, device=device)
        for s in starts:
            nll = block_nll(w_leaf, b_leaf, s, min(s + chunk_bins, n_bins), n_scored)
            nll.sum().backward()
            values += nll.detach().double()
        if not bool(torch.isfinite(values).all()):
            raise FloatingPointError("non-finite likelihood during L-BFGS; check the spikes or raise `strength`")
        torch.autograd.backward([weight, bias, pen], [w_leaf.grad, b_leaf.grad, torch.ones_like(pen)])
        return values

    def budget_warning(moved: float) -> None:
        if moved > _CONVERGENCE_TOL:
            warnings.warn(f"infer_couplings did not converge: L-BFGS used its budget (max_iter={max_iter}) while "
                          f"the gradient still asks the couplings to move by about {moved:.0%} (|grad| / |W| in "
                          "the preconditioned coordinates); raise max_iter", ConvergenceWarning, stacklevel=3)

    if mode == "full" and not latent_rank:
        def row_objective(rows: Tensor) -> tuple[Tensor, Tensor]:
            rows = rows.detach().requires_grad_()
            weight, bias = rep.weight_bias(*rep.split_rows(rows))
            pen = strength * _penalty(weight, penalty).sum((0, 2))
            return full_pass(weight, bias, pen) + pen.detach().double(), rows.grad

        def relative_gradient(rows: Tensor, grad: Tensor) -> float:
            return _relative_step(grad[:, :-1], rows[:, :-1])

        # every neuron's row of (V, b) is its own problem: one line search per neuron, all in one pass over the data
        result = rowwise_lbfgs(row_objective, rep.rows(), max_evals=max_iter + 1, history_size=_LBFGS_HISTORY,
                               stop=(lambda rows, grad: relative_gradient(rows, grad) <= tol) if tol > 0 else None)
        with torch.no_grad():
            v, b = rep.split_rows(result["x"])
            rep.v.copy_(v)
            rep.b.copy_(b)
        fit = {"evaluations": result["evaluations"], "relative_gradient": relative_gradient(result["x"], result["grad"])}
        if result["budget_used"]:
            budget_warning(fit["relative_gradient"])
    elif mode == "full":  # with a latent input, whose factors every neuron shares: one joint L-BFGS
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-7, tolerance_change=1e-9 * n)

        def closure() -> Tensor:
            opt.zero_grad()
            weight, bias = rep.weight_bias()
            pen = penalty_term(weight)
            value = float(full_pass(weight, bias, pen).sum()) + float(pen.detach())
            fit["relative_gradient"] = _relative_step(rep.v.grad, rep.v.detach())
            fit["evaluations"] += 1
            return torch.tensor(value, dtype=dtype)

        fit = {"evaluations": 0, "relative_gradient": math.inf}
        opt.step(closure)
        state = opt.state[params[0]]
        # L-BFGS stops on its own tolerances or on its budget: only the budget leaves the fit in doubt
        if state.get("n_iter", 0) >= max_iter or state.get("func_evals", 0) >= opt.param_groups[0]["max_eval"]:
            closure()  # the gradient at the final point
            budget_warning(fit["relative_gradient"])
    else:
        opt = torch.optim.Adam(params, lr=lr)
        block_starts = torch.arange(context, n_bins, batch_bins)
        for _ in range(epochs):
            for s in block_starts[torch.randperm(len(block_starts), generator=gen)].tolist():
                e = min(s + batch_bins, n_bins)
                opt.zero_grad()
                weight, bias = rep.weight_bias()
                loss = block_nll(weight, bias, s, e, e - s).sum() + penalty_term(weight)
                if not torch.isfinite(loss):
                    raise FloatingPointError("non-finite loss during mini-batch fitting; lower `lr`")
                loss.backward()
                opt.step()

    with torch.no_grad():
        weight, bias = rep.weight_bias()
        nll = float(_nll_per_bin(x, bias, weight, latent, context, context, chunk_bins, dtype).sum())
        nll /= n_scored * n
        idx = active.nonzero().squeeze(1).to(device)
        full_weight = torch.zeros(history, n_total, n_total, dtype=dtype, device=device)
        full_weight[:, idx[:, None], idx[None, :]] = weight
        coupling = full_weight.sum(0)
        if not return_params:
            return coupling
        rate = x_all.double().mean(0).clamp(1e-6, 1 - 1e-6)
        full_bias = torch.logit(rate).to(device=device, dtype=dtype)  # constant neurons: their empirical rate
        full_bias[idx] = bias
        out = {"bias": full_bias, "weight": full_weight, "nll": nll, "active": active}
        if mode == "full":
            out.update(evaluations=fit["evaluations"], relative_gradient=fit["relative_gradient"])
        if latent_rank:
            for key in ("latent_in", "latent_out"):
                full = torch.zeros(n_total, latent_rank, dtype=dtype, device=device)
                full[idx] = latent[key].detach()
                out[key] = full
            out["log_latent_tau"] = latent["log_latent_tau"].detach().clone()
            out["latent_history"] = latent_history  # not in the state_dict: the BernoulliGLM is built with them
            out["latent_delay"] = latent_delay
        return coupling, out


def coupling_standard_errors(spikes: Any, *, history: int = 1, chunk_bins: int = 16384) -> Tensor:
    r"""Standard errors ``(N, N)`` of the couplings :func:`infer_couplings` fits (summed over ``history`` lags).

    The Fisher information of row ``i`` of the Bernoulli GLM is about :math:`T' p_i (1 - p_i)\, C` per lag, ``C``
    the covariance of the inputs and ``T'`` the scored bins (the approximation the fit's preconditioner uses:
    rates that vary little around :math:`p_i`, lags treated as independent). So

    .. math::
        \mathrm{se}(W_{ij}) = \sqrt{\frac{H\, [C^{-1}]_{jj}}{T'\, p_i (1 - p_i)}},

    the Wald standard error: it shrinks as :math:`1/\sqrt{T}` and is largest for rarely firing targets and for
    sources whose activity the others predict (large :math:`[C^{-1}]_{jj}`). Neurons that never or always fire get
    ``inf`` in their row and column (their couplings are returned as 0). ``spikes`` ``(T, N)`` as for
    :func:`infer_couplings`; ``chunk_bins`` bounds the memory of the covariance pass.
    """
    if int(history) != history or history < 1:
        raise ValueError(f"history must be an integer >= 1, got {history!r}")
    x_all = binary_spikes(spikes)
    n_scored = x_all.shape[0] - history
    if n_scored < 2:
        raise ValueError(f"need more than {history + 1} time bins for {history} lag(s), got {x_all.shape[0]}")
    active = _active_neurons(x_all)
    mean, cov = _moments(x_all[:, active], chunk_bins, torch.float64)
    rep = _Reparam(mean, cov, history)
    precision = rep.chol_inv.square().sum(0)  # diag(C^-1) = column norms of L^-1, C = L L^T
    se = rep.scale[:, None] * (history * precision[None, :] / n_scored).sqrt()
    n = x_all.shape[1]
    out = torch.full((n, n), math.inf, dtype=torch.float64)
    idx = active.nonzero().squeeze(1)
    out[idx[:, None], idx[None, :]] = se
    return out.to(torch.get_default_dtype())


def denoise_couplings(couplings: Any, spikes: Any, threshold: float = 1.5, *, history: int = 1) -> Tensor:
    r"""Couplings shrunk towards zero by ``threshold`` standard errors: :math:`\mathrm{sign}(W_{ij})\,
    \max(|W_{ij}| - z\, \mathrm{se}_{ij}, 0)` (soft thresholding, :func:`coupling_standard_errors` on the
    ``spikes`` the couplings were inferred from).

    An ML coupling matrix is dense: every pair gets an estimate of size about :math:`\mathrm{se}` (0.2 for 10,000
    bins at 5 % rates), and the positive noise of the ``N^2`` pairs can outweigh the few true edges, so modularity
    sees a dense background. Shrinking by ``z`` standard errors keeps the pairs that stand out of it, less the noise
    they carry. The default :math:`z = 1.5` was chosen on the community grid (docs: benchmarks/communities).
    ``couplings`` ``(N, N)`` tensor or array; returns a dense tensor of the same shape and dtype.
    """
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0 (standard errors), got {threshold!r}")
    w = torch.as_tensor(couplings)
    if not w.is_floating_point():
        w = w.double()
    se = coupling_standard_errors(spikes, history=history).to(w)
    if se.shape != w.shape:
        raise ValueError(f"couplings {tuple(w.shape)} do not match the spikes' {se.shape[0]} neurons")
    shrunk = (w.abs() - threshold * se).clamp_min(0)
    return torch.where(torch.isfinite(se), w.sign() * shrunk, torch.zeros_like(w))


def select_latent_rank(spikes: Any, ranks: tuple[int, ...] = LATENT_RANKS, val_fraction: float = 0.2,
                       z: float = 2.0, blocks: int = 50, **options: Any) -> tuple[int, dict[int, float]]:
    """The latent rank of :func:`infer_couplings` with the best held-out likelihood.

    Every rank in ``ranks`` is fitted (``infer_couplings(..., **options)``) on the first ``1 - val_fraction`` of
    the bins and scored on the rest: the same held-out bins for every rank (their history comes from the bins
    before them), NLL per neuron-bin over the neurons that vary in the fitted part. Going up the ranks, a larger
    rank replaces the current choice only if its NLL is lower by more than ``z`` standard errors of the paired
    difference, the error taken over ``blocks`` contiguous blocks of held-out bins (bins are autocorrelated, blocks
    much less): a latent input has to earn its parameters, so without hidden drive the answer is usually 0 (a
    one-sided test repeated over the ranks still accepts a spurious rank now and then). Ranks whose history does
    not fit in the fitted part are skipped with a warning.

    Returns ``(rank, {rank: held-out NLL})``.
    """
    if not ranks or any(isinstance(r, bool) or not isinstance(r, (int, float)) or int(r) != r or r < 0
                        for r in ranks):
        raise ValueError(f"ranks must be integers >= 0, got {ranks!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not (z >= 0 and int(blocks) == blocks and blocks >= 2):
        raise ValueError(f"need z >= 0 and an integer blocks >= 2, got {z}, {blocks}")
    if "latent_rank" in options:
        raise ValueError("select_latent_rank chooses latent_rank itself; do not pass it")
    options.pop("return_params", None)
    x = binary_spikes(spikes)
    n_held = int(round(val_fraction * x.shape[0]))
    n_train = x.shape[0] - n_held
    if n_held < blocks:
        raise ValueError(f"{n_held} held-out bins (val_fraction={val_fraction} of {x.shape[0]}) are fewer than "
                         f"blocks={blocks}: the ranks cannot be compared")
    dtype = options.get("dtype", torch.float32)
    chunk = int(options.get("chunk_bins", 16384))
    history = int(options.get("history", 1))
    latent_history = int(options.get("latent_history", 20))
    scores: dict[int, float] = {}
    best, best_blocks = None, None
    for rank in sorted({int(r) for r in ranks}):  # a loop over the few candidate ranks
        context = glm_context(history, latent_history if rank else 0)
        if n_train <= context + 1:
            warnings.warn(f"latent rank {rank} skipped: its {context} bins of history do not fit in the "
                          f"{n_train} fitted bins", stacklevel=2)
            continue
        _, params = infer_couplings(x[:n_train], latent_rank=rank, return_params=True, **options)
        latent = {}
        if rank:
            latent = dict(latent_in=params["latent_in"], latent_out=params["latent_out"],
                          log_latent_tau=params["log_latent_tau"], latent_history=latent_history,
                          latent_delay=options.get("latent_delay"))
        active = params["active"].to(params["bias"].device)
        per_bin = _nll_per_bin(x, params["bias"], params["weight"], latent, context, n_train, chunk, dtype,
                               active) / int(active.sum())
        scores[rank] = float(per_bin.mean())
        block_means = torch.stack([b.mean() for b in per_bin.tensor_split(int(blocks))])
        if best is None:
            best, best_blocks = rank, block_means
            continue
        gain = best_blocks - block_means  # > 0: this rank predicts the held-out blocks better
        if float(gain.mean()) > z * float(gain.std()) / math.sqrt(gain.shape[0]):
            best, best_blocks = rank, block_means
    if best is None:
        raise ValueError(f"no latent rank fits: the fitted part has {n_train} bins, too few for any rank's history")
    return best, scores
