"""Compiled CPU kernels (numba) for the forward filters of hidden Markov chains in rollouts.

A rollout restarts the chains' filter at every step's window (:mod:`dgrn.nn.rolling`), so it runs the filter over
the whole window for every chain of every rollout: tens of steps of ``O(B C K^2)`` each. In PyTorch each step is a
few batched operations on ``B C K`` numbers, bound by memory traffic and the operations' overhead; here every
chain is one loop that keeps its distribution in registers. One window per thread of numba's pool, through
:func:`dgrn.tn._kernels.run_parallel` (one caller at a time). The PyTorch filters stay the reference and serve
accelerators.
"""
from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _filter_step(p, weights, transition):  # pragma: no cover
    """``p`` <- the predictive distribution of the next bin from ``p`` times the bin's (scaled) likelihoods
    ``weights``, through ``transition`` (rows: from-state), normalized; ``weights`` is overwritten."""
    k_n = p.shape[0]
    total = 0.0
    for k in range(k_n):
        weights[k] *= p[k]
        total += weights[k]
    for j in range(k_n):
        h = 0.0
        for k in range(k_n):
            h += weights[k] * transition[k, j]
        p[j] = h / total


@numba.njit(cache=True, parallel=True)
def predictive_distribution(emission, transition, prior):  # pragma: no cover
    """The forward filter in probabilities: ``emission (B, T, C, K)`` likelihoods (any positive scale per bin and
    chain), ``transition (C, K, K)``, ``prior (B, C, K)`` -> the predictive distribution after the last bin ``(B, C,
    K)`` float64."""
    batch, bins, chains, k_n = emission.shape
    out = np.empty((batch, chains, k_n))
    for b in numba.prange(batch):
        p = prior[b].astype(np.float64)  # a copy: the filter's distribution of every chain
        weights = np.empty(k_n)
        for t in range(bins):
            for c in range(chains):
                for k in range(k_n):
                    weights[k] = emission[b, t, c, k]
                _filter_step(p[c], weights, transition[c])
        out[b] = p
    return out


@numba.njit(cache=True, parallel=True)
def switching_predictive(drive, target, offsets, transition, start):  # pragma: no cover
    r"""The forward filter of switching Bernoulli units (:class:`dgrn.nn.SwitchingBernoulli`) from their drives:
    unit ``c`` in state ``k`` fires with probability :math:`\sigma(a + \theta_{ck})`, ``a = drive[b, t, c]``.
    ``drive (B, >= T, C)``, ``target (B, T, C)`` 0/1, ``offsets (C, K)``, ``transition (C, K, K)``, ``start (B, C,
    K)`` -> the predictive distribution after the last bin ``(B, C, K)`` float64.

    One exponential per unit and bin: with :math:`E = e^{-a}` and :math:`F_k = e^{-\theta_k}`,
    :math:`\sigma(a + \theta_k) = 1 / (1 + E F_k)` and :math:`\sigma(-a - \theta_k) = E F_k / (1 + E F_k)`.
    Where that overflows or underflows in every state, the log-likelihoods scaled by their largest instead: no
    underflow at any drive."""
    batch, bins, chains = target.shape
    k_n = offsets.shape[1]
    factors = np.exp(-offsets.astype(np.float64))
    out = np.empty((batch, chains, k_n))
    for b in numba.prange(batch):
        p = start[b].astype(np.float64)  # a copy: the filter's distribution of every chain
        weights = np.empty(k_n)
        for t in range(bins):
            for c in range(chains):
                a = np.float64(drive[b, t, c])
                fired = target[b, t, c] > 0
                e = math.exp(-a)
                total = 0.0
                for k in range(k_n):
                    odds = e * factors[c, k]  # P(silent) / P(fires)
                    weights[k] = 1.0 / (1.0 + odds) if fired else odds / (1.0 + odds)
                    total += weights[k]
                if not (0.0 < total < np.inf) or not np.isfinite(e):
                    top = -np.inf
                    for k in range(k_n):
                        z = a + offsets[c, k]
                        if not fired:
                            z = -z
                        # log sigmoid(z), stable for either sign
                        weights[k] = -math.log1p(math.exp(-z)) if z >= 0.0 else z - math.log1p(math.exp(z))
                        top = max(top, weights[k])
                    for k in range(k_n):
                        weights[k] = math.exp(weights[k] - top)
                _filter_step(p[c], weights, transition[c])
        out[b] = p
    return out
