"""Compiled CPU kernels (numba) for the tensor networks' sequential sweeps.

Drawing from a Born machine is sequential over its sites: each value is drawn given the ones before it. In PyTorch
each site costs a handful of small batched operations, so a draw from an 800-site chain for a few contexts is bound
by the operations' overhead (about 50 ms), not by their arithmetic (about 2 Mflop). These kernels run the same
exact algorithm as plain loops, one context per thread of numba's pool (also the faster build on one thread: about
twice a serial loop's speed, measured). numba's pip wheels offer only its ``workqueue`` pool, which aborts the
process when two Python threads enter it at once, so every call goes through :func:`run_parallel`, which holds a
lock. The PyTorch paths stay the reference and serve accelerators.
"""
from __future__ import annotations

import threading

import numba
import numpy as np


_POOL = threading.Lock()


def run_parallel(kernel, *args, threads: int):
    """``kernel(*args)`` on at most ``threads`` threads of numba's pool, one caller at a time."""
    with _POOL:
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
        return kernel(*args)


@numba.njit(cache=True, parallel=True)
def sample_conditional_mps(log_w, parts, gamma, left, right, block, caps, allowed, uniforms):  # pragma: no cover
    r"""One exact draw per context from a conditional MPS with count constraints, float64.

    Site tensors :math:`A_i[s] = e^{w_{is}/2} \sum_t \gamma_{it} P_{it}[s]`; right environments per count slot of
    the current block (slots ``0 .. caps[block]``, the last meaning "that many nonzero sites or more"; a block of cap
    0 has one slot and no constraint), :math:`E_i[c] = \sum_s A_i[s] E_{i+1}[c'(c, s)] A_i[s]^\top` with
    :math:`c' = c` for ``s = 0`` and :math:`\min(c + 1, k)` otherwise, the slots of a block's end weighted by
    ``allowed``; then left to right :math:`p(x_i = s \mid x_{<i}) \propto w_s^\top E_i[c'] w_s`, :math:`w_s = v A_i[s]`,
    the value chosen by inverting the cumulative weights at ``uniforms[b, i]``, so the draws do not depend on the
    number of threads.

    Args (arrays): ``log_w (B, n, d)``, ``parts (n, T, D, d, D)``, ``gamma (B, n, T)``, ``left, right (D,)``,
    ``block (n,)`` int64 nondecreasing from 0, ``caps (K,)`` int64, ``allowed (B, K, S)`` float64 0/1 with
    ``S > max(caps)``, ``uniforms (B, n)`` in [0, 1). Returns ``(B, n)`` int64.
    """
    batch, n, d = log_w.shape
    terms, dim = parts.shape[1], parts.shape[2]
    slots = allowed.shape[2]
    tiny = np.finfo(np.float64).tiny
    out = np.empty((batch, n), np.int64)
    for b in numba.prange(batch):
        a = np.zeros((n, d, dim, dim))
        for i in range(n):
            for s in range(d):
                amplitude = np.exp(0.5 * log_w[b, i, s])
                for t in range(terms):
                    g = gamma[b, i, t] * amplitude
                    for p in range(dim):
                        for q in range(dim):
                            a[i, s, p, q] += g * parts[i, t, p, s, q]
        after = np.zeros((n, slots, dim, dim))  # right environment of the sites > i, per count slot
        env = np.outer(right, right)  # what follows the current block, entering it at count 0
        counts = np.zeros((slots, dim, dim))
        half = np.zeros((dim, dim))
        for i in range(n - 1, -1, -1):
            j = block[i]
            k = caps[j]
            if i == n - 1 or block[i + 1] != j:  # a block's end: only the slots its coarse state allows
                for c in range(k + 1):
                    after[i, c] = allowed[b, j, c] * env
            else:
                after[i, :k + 1] = counts[:k + 1]
            total = 0.0
            for c in range(k + 1):
                counts[c] = 0.0
                for s in range(d):
                    e = c if s == 0 else min(c + 1, k)  # indices, not views: a view per site costs a reference count
                    for p in range(dim):  # half = A E (E is symmetric: rows of both, contiguous)
                        for q in range(dim):
                            h = 0.0
                            for r in range(dim):
                                h += a[i, s, p, r] * after[i, e, q, r]
                            half[p, q] = h
                    for p in range(dim):  # counts[c] += (A E) A^T
                        for q in range(dim):
                            h = 0.0
                            for r in range(dim):
                                h += half[p, r] * a[i, s, q, r]
                            counts[c, p, q] += h
                for p in range(dim):
                    total += counts[c, p, p]
            total = max(total, tiny)
            for c in range(k + 1):
                counts[c] /= total
            env = counts[0].copy()
        v = left.copy()
        w = np.empty((d, dim))
        weights = np.empty(d)
        count = 0
        for i in range(n):
            j = block[i]
            k = caps[j]
            if i > 0 and block[i - 1] != j:
                count = 0
            total = 0.0
            for s in range(d):
                for q in range(dim):
                    h = 0.0
                    for p in range(dim):
                        h += v[p] * a[i, s, p, q]
                    w[s, q] = h
                e = count if s == 0 else min(count + 1, k)
                weight = 0.0
                for p in range(dim):
                    for q in range(dim):
                        weight += w[s, p] * after[i, e, p, q] * w[s, q]
                weights[s] = max(weight, 0.0)
                total += weights[s]
            choice = 0
            if total > 0.0:
                target = uniforms[b, i] * total
                cumulative = 0.0
                choice = -1
                for s in range(d):
                    cumulative += weights[s]
                    if target < cumulative:
                        choice = s
                        break
                if choice < 0:  # rounding at the top: the last value of positive weight
                    for s in range(d):
                        if weights[s] > 0.0:
                            choice = s
            out[b, i] = choice
            if choice > 0:
                count = min(count + 1, k)
            norm = 0.0
            for p in range(dim):
                norm += w[choice, p] * w[choice, p]
            norm = max(np.sqrt(norm), tiny)
            for p in range(dim):
                v[p] = w[choice, p] / norm
    return out


@numba.njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def transfer_chain_gradients(left, right, maps, weights, target, grad_out):  # pragma: no cover
    r"""The per-site part of the backward pass of :func:`dgrn.tn.transfer_log_norm`, fused: no ``(n, B, S, J, P)``
    intermediate, one site per thread.

    With the left and right environments of every site :math:`L_{ibs}, R_{ibs}` (count slot ``s``),
    :math:`g_{ibj} = \sum_s \langle L_{ibs}, K_{ij} R_{ib t_{ijs}} \rangle`, the value
    :math:`v_{ib} = \sum_j w_{ibj} g_{ibj}` and :math:`c_{ibj} = w_{ibj}\, \bar z_b / v_{ib}` (``grad_out`` =
    :math:`\bar z`): ``g (n, B, J)``, the maps' gradient :math:`\sum_{b,s} c_{ibj} L_{ibs} R_{ib t_{ijs}}^\top`
    ``(n, J, P, P)`` and the start's per context and map, :math:`c_{0bj} (K_{0j} R_{0b t_{0j0}})` ``(B, J, P)``.

    Args (arrays, float32 or float64 alike): ``left, right (n, B, S, P)``, ``maps (n, J, P, P)`` (``e' = e @ K``),
    ``weights (n, B, J)``, ``target (n, J, S)`` int64 (the right slot map ``j`` pairs with left slot ``s``),
    ``grad_out (B,)``.
    """
    n, batch, slots, size = left.shape
    n_maps = maps.shape[1]
    g = np.empty((n, batch, n_maps), left.dtype)
    grad_maps = np.zeros((n, n_maps, size, size), left.dtype)
    grad_start = np.zeros((batch, n_maps, size), left.dtype)
    zero = np.zeros(1, left.dtype)[0]  # sums in the arrays' precision (a 0.0 literal would make them float64)
    for i in numba.prange(n):
        kr = np.empty((n_maps, slots, size), left.dtype)  # (K_ij R_t)[p], every map and slot of one context
        for b in range(batch):
            value = zero
            for j in range(n_maps):
                pair = zero
                for s in range(slots):
                    t = target[i, j, s]
                    for p in range(size):
                        v = zero
                        for q in range(size):
                            v += maps[i, j, p, q] * right[i, b, t, q]
                        kr[j, s, p] = v
                        pair += v * left[i, b, s, p]
                g[i, b, j] = pair
                value += weights[i, b, j] * pair
            coef = grad_out[b] / value
            for j in range(n_maps):
                wc = weights[i, b, j] * coef
                if wc == 0.0:
                    continue
                for s in range(slots):
                    t = target[i, j, s]
                    for p in range(size):
                        lp = wc * left[i, b, s, p]
                        for q in range(size):
                            grad_maps[i, j, p, q] += lp * right[i, b, t, q]
                if i == 0:  # site 0 opens block 0 in slot 0
                    for p in range(size):
                        grad_start[b, j, p] = wc * kr[j, 0, p]
    return g, grad_maps, grad_start
