r"""Log-depth exact contractions of matrix chains with per-product log-scaling (used by :class:`ConditionalMPS`).

A chain :math:`M_1 M_2 \cdots M_n` of batched matrices is multiplied by a pairwise tree: at each level neighbours are
multiplied with one batched ``matmul`` (an odd last element is carried up unchanged), so there are
:math:`\lceil \log_2 n \rceil` Python iterations instead of ``n``. Every product is divided by its largest absolute
entry (a detached scale: the represented matrix :math:`M e^{s}` does not depend on it) and the log of the scale is
accumulated, so 1,000+ sites stay finite in float32 as in float64.

**Graded chains** (count constraints). Each element may carry ``S`` *slots* :math:`M^{(0)}, \dots, M^{(S-1)}`, one per
count of nonzero sites inside the segment (``0 .. k``, the last meaning "``k`` or more"). Two segments compose as a
truncated polynomial product :math:`(PQ)^{(m)} = \sum_{a \oplus b = m} P^{(a)} Q^{(b)}` with
:math:`a \oplus b = \min(a + b, k)`, given by a 0/1 ``pair_map (..., S*S, S)`` (per block, so blocks with different
thresholds share one reduction). Every slot keeps its own log-scale: a rare branch (an active block of improbable
units) is not rounded against the likely one and does not underflow, and slots are sums of positive-weight terms
(products of completely positive maps), so no cancellation is introduced between slots.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["count_pair_map", "normalize_slots", "tree_product"]


def count_pair_map(thresholds: Tensor, slots: int) -> Tensor:
    """``(K, slots*slots, slots)`` 0/1 map of the count slots ``(a, b) -> min(a + b, k)`` for each threshold ``k``
    (pairs with ``a > k`` or ``b > k`` map nowhere: those slots stay empty)."""
    k = thresholds.long()[:, None, None]
    a = torch.arange(slots, device=thresholds.device)
    pair_sum = (a[:, None] + a[None, :]).reshape(1, -1, 1)
    a_ok = (a[None, :, None] <= k).expand(-1, -1, slots)  # (K, slots_a, slots_b)
    b_ok = (a[None, None, :] <= k).expand(-1, slots, -1)
    ok = (a_ok & b_ok).reshape(len(thresholds), -1, 1)
    target = torch.minimum(pair_sum, k)  # (K, P, 1)
    return (ok & (target == a.reshape(1, 1, -1))).to(torch.get_default_dtype())


def normalize_slots(m: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """Divide each slot matrix ``m (..., S, X, Y)`` by its largest absolute entry (detached) and add its log to
    ``log_scale (..., S)``; all-zero slots get ``log_scale = -inf``."""
    peak = m.detach().abs().amax((-2, -1))
    empty = peak == 0
    m = m / torch.where(empty, torch.ones_like(peak), peak)[..., None, None]
    log_scale = torch.where(empty, torch.full_like(log_scale, -torch.inf), log_scale + peak.log())
    return m, log_scale


def _combine(left: Tensor, s_left: Tensor, right: Tensor, s_right: Tensor, pair_map: Tensor | None) -> tuple:
    """Product of neighbouring segments: ``left, right (..., S, X, X)``, scales ``(..., S)``."""
    if pair_map is None:  # one slot: plain product
        return normalize_slots(left @ right, s_left + s_right)
    slots, size = left.shape[-3], left.shape[-1]
    # all pairs with one matmul: the slots of `left` stacked as rows times those of `right` side by side
    prod = left.flatten(-3, -2) @ right.transpose(-3, -2).flatten(-2)  # (..., S*X, S*X): block (a, b) = L_a R_b
    prod = prod.unflatten(-1, (slots, size)).unflatten(-3, (slots, size))  # (..., a, x, b, y)
    s_pair = (s_left.unsqueeze(-1) + s_right.unsqueeze(-2)).flatten(-2)  # (..., S*S)
    linked = pair_map.bool()
    # per target slot, the largest pair scale, then the weights exp(s_pair - s_max) (detached: scales are constants)
    masked = torch.where(linked, s_pair.unsqueeze(-1), torch.full_like(s_pair.unsqueeze(-1), -torch.inf))
    s_max = masked.amax(-2)  # (..., S)
    finite = torch.isfinite(s_max)
    diff = torch.where(linked & finite.unsqueeze(-2), masked - torch.where(finite, s_max, 0).unsqueeze(-2),
                       torch.full_like(masked, -torch.inf))
    weight = diff.exp().to(prod.dtype)  # (..., S*S, S), zero where not linked or the pair is empty
    m = torch.einsum("...axby,...abm->...mxy", prod, weight.unflatten(-2, (slots, slots)))  # (..., S, X, X)
    return normalize_slots(m, torch.where(finite, s_max, torch.full_like(s_max, -torch.inf)))


def tree_product(m: Tensor, log_scale: Tensor, pair_map: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""Ordered product over the chain dimension of ``m (..., n, S, X, X)`` (log-scales ``(..., n, S)``), by a
    pairwise tree: ``(..., S, X, X), (..., S)`` with the product equal to ``m * exp(log_scale)`` slot by slot.

    ``pair_map`` ``(..., S*S, S)`` (broadcast against the batch dimensions, without the chain one) composes graded
    elements (see the module docstring); ``None`` requires ``S == 1`` and multiplies plainly. An odd count is padded
    with the identity (slot 0; the other slots empty), and neighbours are paired by a reshape, not strided slices,
    so the backward pass allocates no zero-filled gradients.
    """
    if pair_map is not None:
        pair_map = pair_map.unsqueeze(-3)  # broadcast over the chain dimension
    slots, size = m.shape[-3], m.shape[-1]
    eye = torch.zeros(slots, size, size, dtype=m.dtype, device=m.device)
    eye[0] = torch.eye(size, dtype=m.dtype, device=m.device)
    eye_scale = torch.full((slots,), -torch.inf, dtype=log_scale.dtype, device=m.device)
    eye_scale[0] = 0.0
    while m.shape[-4] > 1:
        if m.shape[-4] % 2:
            m = torch.cat([m, eye.expand(*m.shape[:-4], 1, -1, -1, -1)], -4)
            log_scale = torch.cat([log_scale, eye_scale.expand(*log_scale.shape[:-2], 1, -1)], -2)
        left, right = m.unflatten(-4, (-1, 2)).unbind(-4)
        s_left, s_right = log_scale.unflatten(-2, (-1, 2)).unbind(-2)
        m, log_scale = _combine(left, s_left, right, s_right, pair_map)
    return m.squeeze(-4), log_scale.squeeze(-2)
