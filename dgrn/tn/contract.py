r"""Exact contractions of long matrix chains for :class:`ConditionalMPS`: log-depth tree products with per-product
log-scaling (accelerators), and transfer-map chains with a hand-written backward pass (CPU; see
:func:`transfer_log_norm`).

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

from dgrn.tn._kernels import run_parallel, transfer_chain_gradients

__all__ = ["count_pair_map", "count_slot_mask", "normalize_slots", "pair_sites", "transfer_log_norm", "transfer_right_environments",
           "tree_product"]


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


def count_slot_mask(active: Tensor, thresholds: Tensor, slots: int) -> Tensor:
    """``(B, K, slots)`` bool: the count slots (nonzero sites of a block, capped) that end block ``g`` consistently
    with its coarse state, at least ``thresholds[..., g]`` nonzero sites when ``active[b, g]``, fewer otherwise.
    ``thresholds`` is ``(K,)`` or per context ``(B, K)``; a block's slots must run up to at least its largest
    threshold (the last slot meaning "that many or more"), so both conditions read off the slot index. A threshold
    of 0 leaves an active block unconstrained."""
    s = torch.arange(slots, device=active.device)
    k = torch.as_tensor(thresholds, device=active.device).long().unsqueeze(-1)
    return torch.where(active.bool().unsqueeze(-1), s >= k, s < k)


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


# ------------------------------------------------------------------------------------------- transfer-map chains
def _site_plan(n: int, groups: list[int] | None, thresholds: list[int] | None) -> list[tuple[int, int, bool, bool]]:
    """Per site ``(block, k, first_of_block, last_of_block)``; without groups every site is its own block, ``k = 0``."""
    if groups is None:
        return [(i, 0, True, True) for i in range(n)]
    return [(g, thresholds[g], i == 0 or groups[i - 1] != g, i == n - 1 or groups[i + 1] != g)
            for i, g in enumerate(groups)]


def _runs(increments: list[int]) -> list[tuple[int, int, int]]:
    """``(first, stop, increment)`` of each run of equal count increments (the maps are sorted by increment)."""
    runs = []
    for j, inc in enumerate(increments):
        if runs and runs[-1][2] == inc:
            runs[-1] = (runs[-1][0], j + 1, inc)
        else:
            runs.append((j, j + 1, inc))
    return runs


def _apply(x: Tensor, w: Tensor, stacked: Tensor, runs: list, k: int, targets: dict | None = None) -> Tensor:
    """One site of a count-slotted chain: ``x (B, S, P)`` (``S = k + 1``) through ``sum_j w[b, j] K_j``, given as
    ``(w (x) x) @ stacked`` with ``stacked (J*P, P)`` and ``w (B, J, 1)``. A map of count increment ``v`` (``runs``)
    moves slot ``s`` to ``min(s + v, k)`` (forward), or, adjoint (``targets``: per increment the slots
    ``min(s + v, k)``), reads slot ``s`` from there."""
    batch, slots, size = x.shape
    wx = (w[:, None] * x[:, :, None, :]).reshape(batch * slots, -1)  # (B*S, J*P)
    if k == 0:
        return (wx @ stacked).view(batch, slots, size)
    y = x.new_zeros(batch, slots, size)
    for first, stop, inc in runs:
        part = (wx[:, first * size:stop * size] @ stacked[first * size:stop * size]).view(batch, slots, size)
        if targets is not None:
            y = y + part[:, targets[inc]]
        elif inc == 0:
            y = y + part
        else:  # slots s <= k - inc move up by inc, the rest land in the absorbing slot k
            y[:, inc:] += part[:, :max(slots - inc, 0)]
            y[:, k] += part[:, max(slots - inc, 0):].sum(1)
    return y


def _pad_slots(xs: Tensor, slots: int) -> Tensor:
    """Count slots ``(B, k + 1, P)`` padded with empty slots to ``(B, slots, P)``."""
    return torch.nn.functional.pad(xs, (0, 0, 0, slots - xs.shape[1]))


def _scale_fn(trace: bool, size: int, like: Tensor):
    """The positive scale states are divided by: the trace of the ``D x D`` environment a Born norm's state
    flattens (one matrix-vector product), or the Euclidean norm of an amplitude's state (which may change sign)."""
    if not trace:
        return lambda x: torch.linalg.vector_norm(x, dim=-1)
    diagonal = torch.eye(int(round(size ** 0.5)), dtype=like.dtype, device=like.device).reshape(-1)
    return lambda x: x @ diagonal


def _capped_runs(increments: list[int], plan: list) -> dict[int, list]:
    """The runs of maps per block threshold ``k``, increments capped at ``k`` (all land in the absorbing slot), so
    that maps with the same routing share one GEMM (with OR blocks: a zero and a nonzero run)."""
    return {k: _runs([min(v, k) for v in increments]) for k in {k for _, k, _, _ in plan}}


def _slot_targets(plan: list, runs: list, slots: int, device) -> dict[int, Tensor]:
    """Per count increment ``v``, the slot ``min(s + v, k)`` a map moves slot ``s`` to, per site ``(n, slots)``
    (slots above a block's ``k`` stay empty)."""
    return {inc: torch.tensor([[min(s + inc, k) for s in range(slots)] for _, k, _, _ in plan], device=device)
            for inc in range(max(inc for _, _, inc in runs) + 1)}


def _right_sweep(maps: Tensor, weights: Tensor, end: Tensor, plan: list, increments: list[int], targets: dict,
                 allowed: Tensor | None, trace: bool) -> list[Tensor]:
    """Right environments after each site, ``(B, k + 1, P)`` in the count slots of the site's block (``k = 0``
    without constraints), each normalized by a positive scale of its own (the adjoint sweep: ``r' = T_i r``)."""
    batch, n, n_maps = weights.shape
    size = maps.shape[-1]
    stacked_t = maps.transpose(-1, -2).reshape(n, n_maps * size, size).unbind(0)  # rows (j, q): r' = (w (x) r) @ .
    site_weights = weights.transpose(0, 1).unsqueeze(-1).contiguous().unbind(0)
    scale = _scale_fn(trace, size, maps)
    rights: list[Tensor] = [None] * n  # type: ignore[list-item]
    capped = _capped_runs(increments, plan)
    r = end.expand(batch, size)
    if all(k == 0 for _, k, _, _ in plan):
        for i in range(n - 1, -1, -1):
            rights[i] = r[:, None]
            r = (site_weights[i] * r[:, None, :]).view(batch, -1) @ stacked_t[i]
            r = r / scale(r)[:, None]
        return rights
    for i in range(n - 1, -1, -1):
        block, k, first, last = plan[i]
        if last:  # the block's end keeps the counts consistent with its coarse state
            rs = allowed[:, block, :k + 1, None] * r[:, None]
        rights[i] = rs
        y = _apply(rs, site_weights[i], stacked_t[i], capped[k], k,
                   {inc: index[i, :k + 1] for inc, index in targets.items()})
        y = y / scale(y.sum(1))[:, None, None]
        if first:
            r = y[:, 0]
        else:
            rs = y
    return rights


def transfer_right_environments(maps: Tensor, weights: Tensor, end: Tensor, *, increments: list[int] | None = None,
                                groups: list[int] | None = None, thresholds: list[int] | None = None,
                                active: Tensor | None = None) -> list[Tensor]:
    """The right environments of the chain of :func:`transfer_log_norm` (same arguments) after each site: a list of
    ``n`` tensors ``(B, k + 1, P)``, one slot per count of nonzero values in the site's block so far (``k = 0``
    without ``groups``), zero for counts that contradict the block's coarse state, each normalized (for sampling:
    :meth:`ConditionalMPS.sample`)."""
    increments = [0] * maps.shape[1] if increments is None else [int(v) for v in increments]
    plan, runs = _site_plan(weights.shape[1], groups, thresholds), _runs(increments)
    slots = 1 + (max(thresholds) if groups is not None else 0)
    targets = _slot_targets(plan, runs, slots, maps.device)
    return _right_sweep(maps, weights, end, plan, increments, targets, _allowed(groups, thresholds, active), True)


def _allowed(groups: list[int] | None, thresholds: list[int] | None, active: Tensor | None) -> Tensor | None:
    """The slot mask of :func:`count_slot_mask` from ``active`` ``(B, K)`` (at the blocks' thresholds), or ``active``
    itself when it is already one ``(B, K, S)``."""
    if groups is None:
        return None
    if active.dim() == 3:
        return active.bool()
    return count_slot_mask(active, torch.tensor(thresholds), 1 + max(thresholds))


class _TransferChain(torch.autograd.Function):
    """log Z of a chain of per-context linear maps ``T_i(b) = sum_j w[b, i, j] K[i, j]`` (see :func:`transfer_log_norm`);
    the backward pass is one adjoint sweep plus vectorized outer products, so autograd records no per-site graph."""

    @staticmethod
    def forward(ctx, maps, weights, start, end, increments, groups, thresholds, allowed, trace, compiled):
        batch, n, n_maps = weights.shape
        size = maps.shape[-1]
        plan, runs = _site_plan(n, groups, thresholds), _runs(increments)
        stacked = maps.reshape(n, n_maps * size, size).unbind(0)  # rows (j, p): e' = (w (x) e) @ stacked[i]
        site_weights = weights.transpose(0, 1).unsqueeze(-1).contiguous().unbind(0)  # n x (B, J, 1)
        scale = _scale_fn(trace, size, maps)
        keep = any(ctx.needs_input_grad[:4])
        lefts, log_scale = [], []  # left environment before each site (count slots), trace of each step
        x = start.expand(batch, size)
        if groups is None:  # the plain chain, with as few operations per site as possible
            for i in range(n):
                lefts.append(x)
                x = (site_weights[i] * x[:, None, :]).view(batch, -1) @ stacked[i]
                tau = scale(x)
                x = x / tau[:, None]
                log_scale.append(tau)
        else:
            capped = _capped_runs(increments, plan)
            for i, (block, k, first, last) in enumerate(plan):
                if first:  # a block starts with no nonzero site: everything in count slot 0
                    xs = torch.cat([x[:, None], x.new_zeros(batch, k, size)], 1)
                lefts.append(xs)
                y = _apply(xs, site_weights[i], stacked[i], capped[k], k)
                if last:
                    x = (y * allowed[:, block, :k + 1, None]).sum(1)
                    tau = scale(x)
                    x = x / tau[:, None]
                else:
                    tau = scale(y.sum(1))
                    xs = y / tau[:, None, None]
                log_scale.append(tau)
        closing = x @ end
        log_z = torch.stack(log_scale, 1).log().sum(1) + closing.abs().log()
        if keep:
            if groups is None:
                left = torch.stack(lefts)[:, :, None]  # (n, B, 1, P)
            else:
                slots = 1 + max(thresholds)
                left = torch.stack([_pad_slots(xs, slots) for xs in lefts])  # (n, B, S, P)
            ctx.save_for_backward(maps, weights, start, end, left, x, closing)
            ctx.plan, ctx.increments, ctx.allowed, ctx.trace, ctx.compiled = plan, increments, allowed, trace, compiled
        return log_z

    @staticmethod
    def backward(ctx, grad_out):
        maps, weights, start, end, left, x_end, closing = ctx.saved_tensors
        plan, increments, allowed = ctx.plan, ctx.increments, ctx.allowed
        runs = _runs(increments)
        batch, n, n_maps = weights.shape
        size, slots = maps.shape[-1], left.shape[2]
        targets = _slot_targets(plan, runs, slots, maps.device)
        right = torch.stack([_pad_slots(rs, slots) for rs in _right_sweep(
            maps, weights, end, plan, increments, targets, allowed, ctx.trace)])  # (n, B, S, P)
        grad_end = ((grad_out / closing)[:, None] * x_end).sum(0)
        weights_t = weights.transpose(0, 1)  # (n, B, J)
        if _compiled_backward(ctx.compiled, maps, weights, left, grad_out):
            target = torch.stack([targets[v] for v in increments], 1)  # (n, J, S): the right slot of each map and slot
            g, grad_maps, grad_start = (torch.from_numpy(a) for a in run_parallel(
                transfer_chain_gradients, left.numpy(), right.numpy(), maps.detach().contiguous().numpy(),
                weights_t.detach().contiguous().numpy(), target.numpy(), grad_out.to(left.dtype).contiguous().numpy(),
                threads=torch.get_num_threads()))
            coef = grad_out[None, :] / (weights_t * g).sum(2)
            return (grad_maps, (g * coef[:, :, None]).transpose(0, 1), grad_start.sum((0, 1)), grad_end,
                    None, None, None, None, None, None)
        # <left_i, K_ij right_i>: a map of increment v pairs slot s with the right environment's slot min(s + v, k);
        # all sites at once, one batched GEMM per run of maps
        sets = [(slice(first, stop), right if slots == 1 else right.gather(
            2, targets[inc][:, None, :, None].expand(-1, batch, -1, size))) for first, stop, inc in runs]
        pairs = []
        for cut, r_set in sets:
            k_set = maps[:, cut]
            kr = (r_set.reshape(n, -1, size) @ k_set.permute(0, 3, 1, 2).reshape(n, size, -1)).view(
                n, batch, slots, -1, size)  # (K_ij right_i)[p]
            pairs.append((cut, r_set, kr, (kr * left[:, :, :, None, :]).sum((2, 4))))
        g = torch.cat([pair[3] for pair in pairs], 2)  # (n, B, J)
        value = (weights_t * g).sum(2)  # <left_i, T_i right_i>: Z up to a positive scale per site and context
        coef = grad_out[None, :] / value
        wc = weights_t * coef[:, :, None]
        grad_maps, grad_start = [], 0.0
        for cut, r_set, kr, _ in pairs:
            wl = (wc[:, :, None, cut, None] * left[:, :, :, None, :]).reshape(n, batch * slots, -1)
            grad_maps.append((wl.transpose(1, 2) @ r_set.reshape(n, batch * slots, size)).view(n, -1, size, size))
            # site 0 opens block 0 in slot 0: d log Z / d start = (T_0 right_0)[slot 0] / value_0
            grad_start = grad_start + torch.einsum("bj,bjp->p", wc[0, :, cut], kr[0, :, 0])
        grad_weights = (g * coef[:, :, None]).transpose(0, 1)
        return torch.cat(grad_maps, 1), grad_weights, grad_start, grad_end, None, None, None, None, None, None


def _compiled_backward(compiled: bool | None, maps: Tensor, weights: Tensor, left: Tensor, grad_out: Tensor) -> bool:
    """Whether the backward pass runs :func:`~dgrn.tn._kernels.transfer_chain_gradients`: ``compiled`` (``None``:
    whenever it can, i.e. on CPU in float32 or float64, and not recording a graph of the gradient itself)."""
    tensors = (maps, weights, left, grad_out)
    possible = (all(t.device.type == "cpu" for t in tensors) and left.dtype in (torch.float32, torch.float64)
                and maps.dtype == weights.dtype == left.dtype and not torch.is_grad_enabled())
    if compiled and not possible:
        raise ValueError("compiled=True needs CPU tensors of one dtype, float32 or float64, and no double backward")
    return possible if compiled is None else bool(compiled)


def transfer_log_norm(maps: Tensor, weights: Tensor, start: Tensor, end: Tensor, *,
                      increments: list[int] | None = None, groups: list[int] | None = None,
                      thresholds: list[int] | None = None, active: Tensor | None = None, trace: bool = True,
                      compiled: bool | None = None) -> Tensor:
    r"""Exact :math:`\log Z_b = \log\, s^\top T_1(b) T_2(b) \cdots T_n(b)\, e` for chains of per-context linear maps
    that are weighted sums of fixed ones, :math:`T_i(b) = \sum_j w_{bij} K_{ij}`, ``(B,)``.

    This is the norm of an MPS Born machine whose site tensors differ between contexts only by per-value weights
    (the context's fields, and the gates of rank-``R`` corrections): with :math:`K_{ij} = A \otimes A'` acting on
    the flattened ``D x D`` environment, one GEMM per site serves every context, at ``O(J D^4)`` per context and site
    with no per-context matrices. Count constraints (``groups``, ``thresholds``, ``active``, as in
    :class:`~dgrn.tn.ConditionalMPS`) carry one environment per count of nonzero values so far in the block
    (``0 .. k``, the last meaning "``k`` or more"); map ``j`` adds ``increments[j]`` to the count (0 for a zero value,
    1 for a nonzero one, more for maps of two sites merged by :func:`pair_sites`). States are normalized at every
    site with the logs accumulated (the count slots of a block share one scale, as in the sequential reference).

    The backward pass is written by hand: one adjoint sweep for the right environments, then
    :math:`\partial \log Z / \partial w_{bij} = \langle L_{bi}, K_{ij} R_{bi} \rangle / \langle L_{bi}, T_i R_{bi}\rangle`
    and the matching outer products for ``K``, all sites at once, so autograd stores no per-site graph. On CPU
    those products run as one compiled kernel (numba, a site per thread): the batched GEMMs' ``(n, B, S, J, P)``
    intermediates made training memory-bound.

    Args:
        maps: ``(n, J, P, P)``, ``e' = e @ maps[i, j]``.
        weights: ``(B, n, J)``.
        start, end: ``(P,)`` boundary vectors.
        increments: count increment of each map (``J`` nondecreasing integers; default all 0), used with ``groups``.
        groups: block of each site (a host list), blocks contiguous and numbered in site order.
        thresholds: count threshold of each block (``k >= 1``): its count slots run ``0 .. k``.
        active: ``(B, K)`` bool, whether block ``g`` reaches its threshold in context ``b``; or ``(B, K, k_max + 1)``
            bool, the count slots allowed at each block's end (:func:`count_slot_mask`, for thresholds that differ
            between contexts).
        trace: the states are flattened ``D x D`` environments of a Born norm (``P = D^2``, positive semidefinite),
            normalized by their trace; ``False``: amplitudes (``P = D``), normalized by their Euclidean norm, and the
            result is :math:`\log |s^\top T_1 \cdots T_n e|`.
        compiled: the backward pass's per-site products by the compiled kernel (``None``: on CPU, float32 or
            float64, unless a graph of the gradient is recorded; ``False``: batched PyTorch, the reference).
    """
    n_maps = maps.shape[1]
    increments = [0] * n_maps if increments is None else [int(v) for v in increments]
    if len(increments) != n_maps or any(b < a for a, b in zip(increments, increments[1:])) or min(increments) < 0:
        raise ValueError(f"increments must be {n_maps} nondecreasing integers >= 0, got {increments}")
    if groups is not None and (thresholds is None or active is None):
        raise ValueError("groups need thresholds and active")
    return _TransferChain.apply(maps, weights, start, end, increments, groups, thresholds,
                                _allowed(groups, thresholds, active), trace, compiled)


def pair_sites(maps: Tensor, weights: Tensor, increments: list[int], groups: list[int] | None = None
               ) -> tuple[Tensor, Tensor, list[int], list[int] | None]:
    """Merge neighbouring sites of a chain for :func:`transfer_log_norm` (half the sequential steps at twice the
    maps): a pair's maps are the products ``K_ij K_{i+1,j'}`` with weights ``w_ij w_{i+1,j'}`` and increments
    ``v_j + v_j'``, sorted by increment. Pairs never straddle two blocks: a block of odd size (or an odd chain) gets
    an identity site (its first map the identity with weight 1, the others weight 0). Returns
    ``(maps, weights, increments, groups)`` of the merged chain."""
    n, n_maps, size, _ = maps.shape
    lengths = [n] if groups is None else torch.bincount(torch.tensor(groups)).tolist()
    ends = torch.tensor(lengths).cumsum(0).tolist()
    pad_at = [end for end, length in zip(ends, lengths) if length % 2]  # an identity site after these positions
    if pad_at:
        identity_maps = torch.zeros(1, n_maps, size, size, dtype=maps.dtype, device=maps.device)
        identity_maps[0, 0] = torch.eye(size, dtype=maps.dtype, device=maps.device)
        identity_weights = torch.zeros(weights.shape[0], 1, n_maps, dtype=weights.dtype, device=weights.device)
        identity_weights[:, 0, 0] = 1.0
        pieces_m, pieces_w, last = [], [], 0
        for position in pad_at:
            pieces_m += [maps[last:position], identity_maps]
            pieces_w += [weights[:, last:position], identity_weights]
            last = position
        maps = torch.cat(pieces_m + [maps[last:]])
        weights = torch.cat(pieces_w + [weights[:, last:]], 1)
    order = sorted(range(n_maps ** 2), key=lambda j: increments[j // n_maps] + increments[j % n_maps])
    index = torch.tensor(order, device=maps.device)
    merged = (maps[0::2, :, None] @ maps[1::2, None, :]).flatten(1, 2)[:, index]
    merged_weights = (weights[:, 0::2, :, None] * weights[:, 1::2, None, :]).flatten(2)[:, :, index]
    merged_increments = [increments[j // n_maps] + increments[j % n_maps] for j in order]
    merged_groups = None if groups is None else [g for g, length in enumerate(lengths)
                                                  for _ in range((length + 1) // 2)]
    return merged, merged_weights, merged_increments, merged_groups
