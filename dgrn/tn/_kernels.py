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
