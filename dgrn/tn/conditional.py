"""Conditional MPS decoder: an exactly normalized :math:`p(x \\mid c)` over the units of one time bin."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from dgrn.tn._common import check_finite, check_memory, check_size, check_states, sample_categorical
from dgrn.tn._kernels import run_parallel, sample_conditional_mps
from dgrn.tn.contract import (count_pair_map, count_slot_mask, normalize_slots, pair_sites, transfer_log_norm,
                              transfer_right_environments, tree_product)

__all__ = ["ConditionalMPS", "SegmentedMPS"]

#: the context fields are clamped to +-FIELD_BOUND, so the two values of a site differ by at most e^(2 FIELD_BOUND) in
#: probability through the fields: far above the float64 rounding of the contractions (see ``_contract_dtype``)
FIELD_BOUND = 12.0
#: ``contraction="auto"`` on CPU takes the transfer maps while ``(rank + 1)^2 * bond_dim`` is at most this: their
#: GEMMs cost ``(R + 1)^2 D / 2`` times the flops of the per-context loop, which only pays while launches dominate
TRANSFER_MAX_COST = 8
#: rounds of merging neighbouring sites before the transfer chains (each halves the sequential steps and doubles the
#: maps per step; measured: docs/benchmarks/dgrn.md, training speed)
TRANSFER_MERGES = 1
#: rounds of merging neighbouring sites before ``sample`` on the transfer chains: runs of up to ``2^merges`` sites are
#: drawn jointly (``d^(2^merges)`` outcomes weighted at once), so both sweeps make ``n / 2^merges`` sequential steps
#: (their small operations bound them on CPU); one round fewer above ``SAMPLE_WIDE_BATCH`` contexts, where the merged
#: maps' arithmetic takes over (measured: docs/benchmarks/dgrn.md, sampling)
SAMPLE_MERGES = 2
SAMPLE_WIDE_BATCH = 256
#: ... and only while a merged site has at most this many maps (``(d (R + 1)^2)^(2^merges)``: rank 0 merges twice)
SAMPLE_MAX_MAPS = 64


class ConditionalMPS(nn.Module):
    r"""MPS Born machine whose site tensors are modulated by a context vector ``c``.

    .. math::
        A^{(i)}(c)[s] \propto e^{f_{is}(c)/2}\Big(A^{(i)}[s] + \sum_{r=1}^{R} g_{ir}(c)\, C^{(i,r)}[s]\Big),
        \qquad p(x \mid c) = \frac{\big(\ell^\top A^{(1)}(c)[x_1]\cdots A^{(n)}(c)[x_n]\, r\big)^2}{Z(c)},

    with ``f = F c + f_0`` (context-dependent fields, ``n × d``, clamped to ``±FIELD_BOUND``) and ``g = G c``
    (``n × R`` gates of rank-``R`` tensor corrections, which make the *correlations* depend on the context),
    boundary vectors ``ℓ, r`` and uniform bond dimension ``D``; each site tensor is rescaled per context (``p`` does
    not change). :math:`Z(c)` is contracted exactly for every context in the batch (per-context
    transfer matrices, trace-normalized with accumulated logs), so each :math:`p(\cdot \mid c)` is normalized.
    With ``c`` the summary of past activity this is a trajectory decoder that models the instantaneous
    correlations between units of a bin instead of treating them as conditionally independent.

    **Coarse-to-fine constraint.** Given ``groups`` (the contiguous block of each site: the supernode of a coarser
    level it belongs to, sites ordered block by block), ``thresholds (K,)`` (default 1) and the coarse state
    ``active (B, K)`` (block ``k`` has at least ``thresholds[k]`` nonzero sites; threshold 1 is OR pooling; per
    context, ``thresholds (B, K)`` may differ between rows and be 0, which leaves an active block unconstrained),
    ``log_prob(x, c, groups=..., active=..., thresholds=...)`` is the exact
    :math:`\log p(x \mid c, x^{\rm coarse})` of the Born distribution *restricted to configurations consistent
    with the coarse state* and renormalized over them; inconsistent ``x`` get :math:`-\infty`. The restricted norm
    is contracted with one environment per count of nonzero sites so far in the block (``0 .. k``, the last one
    meaning "``k`` or more"): ``k + 1`` sums of positive terms, so no cancellation occurs, at ``2(k + 1)`` transfer
    products per site instead of 1. ``sample(c, groups=..., active=..., thresholds=...)`` draws exactly from the
    restricted distribution. Chained over the levels of a renormalization flow this gives an exactly normalized
    hierarchical likelihood :math:`p(x^{0}) = p(x^{L})\prod_\ell p(x^{\ell} \mid x^{\ell+1})`.

    **Contraction.** ``log_prob`` has three exact contractions (:mod:`dgrn.tn.contract`): the sequential reference
    (a loop over the sites with per-context ``D x D`` environments, in float64); the transfer-map chain (the site
    tensors differ between contexts only through the weights :math:`e^{f_{is}} g_{ir} g_{ir'}` of fixed maps
    :math:`P_{ir}[s] \otimes P_{ir'}[s]` on the flattened environment, so one GEMM per pair of sites serves the whole
    batch, and its backward pass is written by hand; float32 for float32 parameters unless a count threshold is above
    1); and a log-depth tree (pairwise batched products of the ``D^2 x D^2`` transfer matrices, with one slot per count
    inside a block, each product and slot log-scaled; float32). ``contraction = "auto"`` (the default) takes the tree
    on accelerators, where the loop's ``O(n)`` kernel launches dominate, and on CPU the transfer chain while its
    ``O(n (R+1)^2 d D^4)`` GEMMs stay cheap (``(rank + 1)^2 * bond_dim <= 8``), the sequential loop otherwise; set
    ``contraction`` to ``"transfer"``, ``"tree"`` or ``"sequential"`` and ``contract_dtype`` to override.
    ``sample`` follows the same setting, except that ``"auto"`` on CPU draws with a compiled kernel (numba) of the
    sequential algorithm, whose eager version is bound by the overhead of its small operations.

    Args:
        n_sites: number of units ``n``.
        context_dim: size of ``c``.
        bond_dim: ``D >= 1``.
        phys_dim: values per unit ``d``.
        rank: ``R >= 0`` context-dependent tensor corrections per site.

    Shapes:
        ``log_prob(x, c)``: ``x (B, n)`` integers in ``{0..d-1}``, ``c (B, context_dim)`` -> ``(B,)``;
        ``sample(c)`` -> ``(B, n)`` long, one draw per context row; ``groups (n,)`` long, nondecreasing from 0 with
        no gaps; ``active (B, K)`` bool with ``K = groups[-1] + 1``; ``thresholds (K,)`` integers from 1 to the
        block's size, or ``(B, K)`` from 0 to the block's size.
    """

    def __init__(self, n_sites: int, context_dim: int, bond_dim: int, phys_dim: int = 2, *, rank: int = 1,
                 init_noise: float = 0.3) -> None:
        super().__init__()
        self.n_sites = check_size("n_sites", n_sites)
        self.context_dim = check_size("context_dim", context_dim)
        self.bond_dim = check_size("bond_dim", bond_dim)
        self.phys_dim = check_size("phys_dim", phys_dim, 2)
        self.rank = check_size("rank", rank, 0)
        self.init_noise = float(init_noise)
        #: how ``log_prob`` contracts: "tree" (log-depth batched products, :mod:`dgrn.tn.contract`), "sequential"
        #: (the reference loop over the sites) or "auto" (tree on accelerators, where the loop's kernel launches
        #: dominate; sequential on CPU, where the tree's D^6 matrix products cost more than the loop's D^3 ones)
        self.contraction = "auto"
        #: dtype of the contractions, None for the default (see ``_contract_dtype``)
        self.contract_dtype: torch.dtype | None = None
        n, d, dim = self.n_sites, self.phys_dim, self.bond_dim
        check_memory("ConditionalMPS site tensors", (n, 1 + self.rank, dim, d, dim), torch.get_default_dtype(), "cpu")
        self.core = nn.Parameter(torch.empty(n, dim, d, dim))
        self.left = nn.Parameter(torch.empty(dim))
        self.right = nn.Parameter(torch.empty(dim))
        self.field = nn.Linear(self.context_dim, n * d)
        if self.rank:
            self.modulation = nn.Parameter(torch.empty(n, self.rank, dim, d, dim))
            self.gate = nn.Linear(self.context_dim, n * self.rank, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        dim, d = self.bond_dim, self.phys_dim
        eye = torch.eye(dim, dtype=self.core.dtype, device=self.core.device)
        self.core.copy_((eye[None, :, None, :] + self.init_noise * torch.randn_like(self.core) / math.sqrt(dim)) / math.sqrt(d))
        self.left.zero_()[0] = 1.0
        self.right.zero_()[0] = 1.0
        nn.init.zeros_(self.field.weight)
        nn.init.zeros_(self.field.bias)
        if self.rank:
            nn.init.normal_(self.modulation, std=self.init_noise / math.sqrt(dim * d))
            nn.init.normal_(self.gate.weight, std=1.0 / math.sqrt(self.context_dim))

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_context(self, c) -> Tensor:
        c = torch.as_tensor(c, device=self.core.device)
        if c.dim() != 2 or c.shape[1] != self.context_dim:
            raise ValueError(f"context must have shape (batch, context_dim={self.context_dim}), got {tuple(c.shape)}")
        if c.shape[0] == 0:
            raise ValueError("empty batch of contexts")
        if not torch.isfinite(c).all():
            raise ValueError("context contains NaN or infinite values")
        return c.to(self.core.dtype)

    def site_tensors(self, c: Tensor) -> Tensor:
        """Context-modulated site tensors ``(B, n, D, d, D)``, each scaled to a largest entry of 1 (p is invariant
        to a positive scale per site, and this keeps large fields from overflowing the contractions)."""
        a = self.core.unsqueeze(0)
        if self.rank:
            g = self.gate(c).reshape(-1, self.n_sites, self.rank)
            a = a + torch.einsum("bir,irlsq->bilsq", g, self.modulation)
        f = self.field(c).reshape(-1, self.n_sites, self.phys_dim)
        f = f.clamp(-FIELD_BOUND, FIELD_BOUND)
        a = a * torch.exp(0.5 * (f - f.amax(-1, keepdim=True)))[:, :, None, :, None]
        return a / a.detach().abs().amax((2, 3, 4), keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)

    def _check_groups(self, groups, active, batch: int, thresholds=None) -> tuple:
        """``(groups, allowed, caps)`` checked, or three ``None`` without a constraint: ``allowed (B, K, S)`` the count
        slots that may end each block (:func:`~dgrn.tn.contract.count_slot_mask`), ``caps`` (a host list) the count
        each block's slots run up to, its largest threshold (at least 1)."""
        if groups is None and active is None:
            if thresholds is not None:
                raise ValueError("thresholds need groups and active")
            return None, None, None
        if groups is None or active is None:
            raise ValueError("pass both groups (n_sites,) and active (batch, n_groups), or neither")
        groups = torch.as_tensor(groups, device=self.core.device).long()
        if groups.shape != (self.n_sites,):
            raise ValueError(f"groups must have shape ({self.n_sites},), got {tuple(groups.shape)}")
        steps = groups.diff()
        if groups[0] != 0 or ((steps != 0) & (steps != 1)).any():
            raise ValueError("groups must be contiguous blocks numbered 0, 1, 2, ... in site order "
                             "(order the sites by their coarse unit)")
        active = torch.as_tensor(active, device=self.core.device).bool()
        n_groups = int(groups[-1]) + 1
        if active.shape != (batch, n_groups):
            raise ValueError(f"active must have shape (batch={batch}, n_groups={n_groups}), got {tuple(active.shape)}")
        sizes = torch.bincount(groups)
        if thresholds is None:
            k = torch.ones(n_groups, dtype=torch.long, device=groups.device)
        else:
            k = torch.as_tensor(thresholds, device=groups.device)
            shared = k.dim() <= 1
            k = k.reshape(-1) if shared else k
            if (k.shape != (n_groups,) if shared else k.shape != (batch, n_groups)) or (k != k.round()).any() \
                    or (k < (1 if shared else 0)).any() or (k > sizes).any():
                raise ValueError(f"thresholds must be {n_groups} integers, each from 1 to its block's size "
                                 f"{sizes.tolist()}, or per context ({batch}, {n_groups}) integers from 0 (an "
                                 f"active block with no constraint) to the block's size; got {k.tolist()}")
            k = k.long()
            if not shared and ((k == 0) & ~active).any():
                raise ValueError("a block with threshold 0 cannot be inactive (fewer than 0 nonzero sites)")
        caps = (k if k.dim() == 1 else k.amax(0)).clamp_min(1).tolist()
        return groups, count_slot_mask(active, k, 1 + max(caps)), caps

    @staticmethod
    def _transfer(env: Tensor, ai: Tensor) -> Tensor:
        r""":math:`\sum_s A[s]^\top E A[s]` per context over the physical values present in ``ai``:
        ``env (B, ..., D, D)`` (extra dimensions: count states), ``ai (B, D, k, D)`` (its last three dimensions
        contiguous)."""
        batch, dim, k, _ = ai.shape
        a = ai.reshape(batch, *[1] * (env.dim() - 3), dim, k * dim)
        half = (env @ a).reshape(*env.shape[:-2], dim * k, dim)
        return a.reshape(*a.shape[:-2], dim * k, dim).transpose(-1, -2) @ half

    @classmethod
    def _count_step(cls, counts: Tensor, a_zero: Tensor, a_nonzero: Tensor) -> Tensor:
        """One site of the count environments ``(B, k + 1, D, D)`` of a block: a zero value keeps the count, a
        nonzero value moves it up by one, the last state (``k`` or more) absorbing."""
        up = cls._transfer(counts, a_nonzero)
        return cls._transfer(counts, a_zero) + torch.cat(
            [torch.zeros_like(up[:, :1]), up[:, :-2], up[:, -2:].sum(1, keepdim=True)], 1)

    def _log_norm(self, a: Tensor, groups: Tensor | None = None, allowed: Tensor | None = None,
                  caps: list[int] | None = None) -> Tensor:
        r""":math:`\log Z(c)` per context from per-context transfer matrices, ``(B,)``; restricted to the
        configurations consistent with ``allowed`` when ``groups`` is given."""
        left, right = self.left.to(a.dtype), self.right.to(a.dtype)
        env = (left[:, None] * left[None, :]).expand(a.shape[0], -1, -1)
        log_z = a.new_zeros(a.shape[0])
        tiny = torch.finfo(a.dtype).tiny
        # unbind once: per-site indexing would make autograd scatter every site's gradient into a full-size zero tensor
        sites = a.unbind(1)
        if groups is not None:  # the zero and nonzero physical values, split once for all sites
            block = groups.tolist()  # host copy: no device sync per site
            a_zero, a_nonzero = a[:, :, :, :1].contiguous().unbind(1), a[:, :, :, 1:].contiguous().unbind(1)
        for i in range(self.n_sites):
            if groups is None:
                env = self._transfer(env, sites[i])
            else:
                k = caps[block[i]]
                if i == 0 or block[i] != block[i - 1]:  # count environments of the block: 0, 1, .., k or more
                    counts = torch.cat([env[:, None], env.new_zeros(env.shape[0], k, *env.shape[1:])], 1)
                counts = self._count_step(counts, a_zero[i], a_nonzero[i])
                if i == self.n_sites - 1 or block[i + 1] != block[i]:
                    env = (counts * allowed[:, block[i], :k + 1, None, None]).sum(1)
                else:  # common scale for all count environments, so their sum at the block end stays exact
                    scale = counts.sum(1).diagonal(dim1=1, dim2=2).sum(1).clamp_min(tiny)
                    counts = counts / scale[:, None, None, None]
                    log_z = log_z + scale.log()
                    continue
            trace = env.diagonal(dim1=1, dim2=2).sum(1).clamp_min(tiny)
            env = env / trace[:, None, None]
            log_z = log_z + trace.log()
        return log_z + torch.einsum("bij,i,j->b", env, right, right).clamp_min(tiny).log()

    def _log_psi(self, a: Tensor, x: Tensor) -> Tensor:
        """Reference :math:`\\log|\\psi(x \\mid c)|` per row, ``(B,)``: a Python loop over the sites."""
        batch, dim = x.shape[0], self.bond_dim
        # the matrix of each site's observed value: n tensors (B, D, D)
        chosen = a.gather(3, x[:, :, None, None, None].expand(-1, -1, dim, 1, dim)).squeeze(3).unbind(1)
        v = self.left.to(a.dtype).expand(batch, 1, -1)
        log_psi = a.new_zeros(batch)
        for i in range(self.n_sites):
            v = v @ chosen[i]
            norm = v.norm(dim=2, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
            v = v / norm
            log_psi = log_psi + norm.flatten().log()
        return log_psi + (v.squeeze(1) @ self.right.to(a.dtype)).abs().clamp_min(torch.finfo(v.dtype).tiny).log()

    def _log_psi_tree(self, a: Tensor, x: Tensor) -> Tensor:
        """:math:`\\log|\\psi(x \\mid c)|` per row by a log-depth tree product of the chosen matrices, ``(B,)``."""
        dim = self.bond_dim
        return self._log_chain(a.gather(3, x[:, :, None, None, None].expand(-1, -1, dim, 1, dim)).squeeze(3))

    def _log_chain(self, chosen: Tensor) -> Tensor:
        """``log |left^T chosen_1 ... chosen_n right|`` per row of ``chosen (B, n, D, D)``, by a tree product."""
        m, log_scale = normalize_slots(chosen.unsqueeze(2), chosen.new_zeros(*chosen.shape[:2], 1))
        m, log_scale = tree_product(m, log_scale)
        return self._close(self.left.to(m.dtype), m[:, 0], self.right.to(m.dtype)) + log_scale[:, 0]

    @staticmethod
    def _close(left: Tensor, m: Tensor, right: Tensor) -> Tensor:
        """``log |left^T m right|`` per batch row (rounded-to-zero values floored at the dtype's smallest normal)."""
        value = torch.einsum("i,bij,j->b", left, m, right)
        return value.abs().clamp_min(torch.finfo(m.dtype).tiny).log()

    def _log_norm_tree(self, a: Tensor, groups: Tensor | None = None, allowed: Tensor | None = None,
                       caps: list[int] | None = None) -> Tensor:
        r""":math:`\log Z(c)` as :meth:`_log_norm`, by log-depth tree products of the ``D^2 x D^2`` transfer matrices
        (:mod:`dgrn.tn.contract`): with ``groups``, each block's product carries one slot per count of nonzero sites
        (``0 .. k``), blocks of similar size reduced together (padded with identity sites), then the blocks' maps
        (the sum of the slots consistent with the coarse state) are multiplied by another tree."""
        batch, n, dim = a.shape[0], self.n_sites, self.bond_dim
        sq = dim * dim
        # the leaves: every site's D^2 x D^2 transfer matrix per context (two with groups, and their products)
        check_memory("the tree contraction's transfer matrices", (batch, n, 2 if groups is None else 4, sq, sq),
                     a.dtype, a.device)
        left, right = self.left.to(a.dtype), self.right.to(a.dtype)
        v_left, v_right = (left[:, None] * left[None, :]).reshape(sq), (right[:, None] * right[None, :]).reshape(sq)
        if groups is None:
            full = torch.einsum("bnisk,bnjtk->bnijst", a.movedim(3, 4), a.movedim(3, 4)).reshape(batch, n, sq, sq)
            m, log_scale = normalize_slots(full.unsqueeze(2), a.new_zeros(batch, n, 1))
            m, log_scale = tree_product(m, log_scale)
            return self._close(v_left, m[:, 0], v_right) + log_scale[:, 0]
        # per-site transfer of the zero and of the nonzero values, (B, n, 2, D^2, D^2): row (l, l'), column (r, r')
        zero = torch.einsum("bnis,bnjt->bnijst", a[:, :, :, 0], a[:, :, :, 0]).reshape(batch, n, sq, sq)
        rest = torch.einsum("bnisk,bnjtk->bnijst", a[:, :, :, 1:].movedim(3, 4), a[:, :, :, 1:].movedim(3, 4))
        leaves, leaf_scale = normalize_slots(torch.stack([zero, rest.reshape(batch, n, sq, sq)], 2),
                                             a.new_zeros(batch, n, 2))
        # an identity site (count slot 0) after the last one, to pad blocks of a bucket to a common length
        eye = torch.eye(sq, dtype=a.dtype, device=a.device)
        pad = torch.stack([eye, torch.zeros_like(eye)]).expand(batch, 1, 2, sq, sq)
        leaves = torch.cat([leaves, pad], 1)
        leaf_scale = torch.cat([leaf_scale, torch.tensor([0.0, -torch.inf], dtype=a.dtype,
                                                         device=a.device).expand(batch, 1, 2)], 1)
        sizes = torch.bincount(groups).tolist()
        starts = [0]
        for size in sizes[:-1]:
            starts.append(starts[-1] + size)
        n_blocks = len(sizes)
        blocks_m = a.new_zeros(batch, n_blocks, 1, sq, sq)
        blocks_s = a.new_zeros(batch, n_blocks, 1)
        buckets: dict[int, list[int]] = {}
        for j, size in enumerate(sizes):  # blocks of sizes within a factor 2 share one reduction
            buckets.setdefault((size - 1).bit_length(), []).append(j)
        for members in buckets.values():
            length = max(sizes[j] for j in members)
            k_max = max(caps[j] for j in members)
            slots = k_max + 1
            index = torch.tensor([[starts[j] + p if p < sizes[j] else n for p in range(length)] for j in members],
                                 device=a.device)  # (nb, L): site of each position, n for the identity
            m = leaves[:, index]  # (B, nb, L, 2, X, X)
            s = leaf_scale[:, index]
            if slots > 2:
                m = torch.cat([m, m.new_zeros(*m.shape[:3], slots - 2, sq, sq)], 3)
                s = torch.cat([s, s.new_full((*s.shape[:3], slots - 2), -torch.inf)], 3)
            k = torch.tensor([caps[j] for j in members], device=a.device)
            m, s = tree_product(m, s, count_pair_map(k, slots).to(a.dtype))  # (B, nb, S, X, X), (B, nb, S)
            # block map: the sum of the slots consistent with the coarse state (scaled to their largest log-scale)
            keep = allowed[:, members, :slots]  # (B, nb, S)
            masked = torch.where(keep, s, torch.full_like(s, -torch.inf))
            s_max = masked.amax(-1)
            finite = torch.isfinite(s_max)
            weight = torch.where(keep & finite[..., None], masked - torch.where(finite, s_max, 0)[..., None],
                                 torch.full_like(s, -torch.inf)).exp()
            block_m = torch.einsum("bjsxy,bjs->bjxy", m, weight)
            block_m, block_s = normalize_slots(block_m.unsqueeze(2), s_max.unsqueeze(2))
            blocks_m[:, members] = block_m
            blocks_s[:, members] = block_s
        m, log_scale = tree_product(blocks_m, blocks_s)
        return self._close(v_left, m[:, 0], v_right) + log_scale[:, 0]

    def log_prob(self, x, c, groups=None, active=None, thresholds=None) -> Tensor:
        r"""Exact :math:`\log p(x \mid c)` (or :math:`\log p(x \mid c, \text{active})` with ``groups``), ``(B,)``.
        Contracted in the parameters' dtype even under autocast (bf16 would cost the normalization its digits).
        ``self.contraction`` picks the tree (log-depth, no loop over the sites) or the sequential reference;
        ``self.contract_dtype`` overrides the dtype of either."""
        with torch.autocast(device_type=self.core.device.type, enabled=False):
            return self._log_prob(x, c, groups, active, thresholds)

    def _contraction_mode(self) -> str:
        mode = getattr(self, "contraction", "auto")  # modules pickled before the attribute existed
        if mode not in ("auto", "transfer", "tree", "sequential"):
            raise ValueError(f"contraction must be 'auto', 'transfer', 'tree' or 'sequential', got {mode!r}")
        if mode != "auto":
            return mode
        if self.core.device.type != "cpu":
            return "tree"
        return "transfer" if (self.rank + 1) ** 2 * self.bond_dim <= TRANSFER_MAX_COST else "sequential"

    def _transfer_parts(self, c: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(log_w (B, n, d), parts (n, R+1, D, d, D), gamma (B, n, R+1) or None)``: the site tensors are
        :math:`e^{w_{is}/2} \\sum_r \\gamma_{ir} P_{ir}[s]` (``gamma_0 = 1``: the core; the others the gates)."""
        n, d = self.n_sites, self.phys_dim
        f = self.field(c).reshape(-1, n, d).clamp(-FIELD_BOUND, FIELD_BOUND).to(dtype)
        log_w = f - f.amax(-1, keepdim=True)
        parts = self.core.to(dtype).unsqueeze(1)
        if not self.rank:
            return log_w, parts, None
        parts = torch.cat([parts, self.modulation.to(dtype)], 1)
        gates = self.gate(c).reshape(-1, n, self.rank).to(dtype)
        return log_w, parts, torch.cat([torch.ones_like(gates[..., :1]), gates], 2)

    def _norm_maps(self, log_w: Tensor, parts: Tensor, gamma: Tensor | None) -> tuple[Tensor, Tensor, list[int]]:
        """The norm's chain for :func:`~dgrn.tn.contract.transfer_log_norm`: ``maps (n, J, D^2, D^2)`` with
        ``maps[i, (s, r, t)] = P_ir[s] (x) P_it[s]`` on the flattened environment, ``weights (B, n, J)`` and the count
        increments (zero values, ``s = 0``, first)."""
        n, d, dim, terms = self.n_sites, self.phys_dim, self.bond_dim, self.rank + 1
        check_memory("the transfer chain's maps", (n, d * terms ** 2, dim ** 2, dim ** 2), parts.dtype, parts.device)
        maps = torch.einsum("irpsq,itxsy->isrtpxqy", parts, parts).reshape(n, d * terms ** 2, dim ** 2, dim ** 2)
        weights = log_w.exp()
        if gamma is not None:
            weights = weights[..., None] * (gamma[..., :, None] * gamma[..., None, :]).flatten(2).unsqueeze(2)
        return maps, weights.reshape(log_w.shape[0], n, -1), [0] * terms ** 2 + [1] * ((d - 1) * terms ** 2)

    def _log_prob_transfer(self, x: Tensor, c: Tensor, groups, allowed, caps) -> tuple[Tensor, Tensor]:
        """``(log Z, log |psi(x)|)`` by :func:`~dgrn.tn.contract.transfer_log_norm` (the norm: one GEMM per site for
        all contexts, hand-written backward) and a tree product of the chosen matrices (the amplitude)."""
        dtype = self._transfer_dtype(caps)
        n, d, dim, terms = self.n_sites, self.phys_dim, self.bond_dim, self.rank + 1
        log_w, parts, gamma = self._transfer_parts(c, dtype)
        maps, weights, increments = self._norm_maps(log_w, parts, gamma)
        left, right = self.left.to(dtype), self.right.to(dtype)
        block = None if groups is None else groups.tolist()
        for _ in range(TRANSFER_MERGES):  # fewer sequential steps, each with more maps
            maps, weights, increments, block = pair_sites(maps, weights, increments, block)
        log_z = transfer_log_norm(maps, weights, torch.kron(left, left), torch.kron(right, right),
                                  increments=increments, groups=block, thresholds=caps, active=allowed)
        # the amplitude: the same kind of chain on vectors, the observed value's matrices weighted by the gates
        onehot = torch.nn.functional.one_hot(x, d).to(dtype)
        amp_weights = onehot if gamma is None else (onehot[..., None] * gamma[:, :, None]).flatten(2)
        amp_maps = parts.permute(0, 3, 1, 2, 4).reshape(n, d * terms, dim, dim)  # (s, r) major, as amp_weights
        amp_increments = [0] * amp_maps.shape[1]
        for _ in range(TRANSFER_MERGES):
            amp_maps, amp_weights, amp_increments, _ = pair_sites(amp_maps, amp_weights, amp_increments)
        log_psi = transfer_log_norm(amp_maps, amp_weights, left, right, trace=False)
        return log_z, log_psi + 0.5 * (log_w * onehot).sum((1, 2))

    def _requested_dtype(self) -> torch.dtype | None:
        dtype = getattr(self, "contract_dtype", None)
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise ValueError(f"contract_dtype must be torch.float32 or torch.float64 (or None), got {dtype}: a Born "
                             "norm over hundreds of sites multiplies per-site factors whose rounding in half "
                             "precision (1e-3) would swamp the likelihood, and its rare branches underflow")
        return dtype

    def _transfer_dtype(self, caps: list[int] | None) -> torch.dtype:
        """The transfer chains run in float32 for float32 (and lower) parameters, unless a count threshold is above
        1: every state is trace-normalized at every site (float32 within 5e-7 relative of the float64 reference on
        500 and 2,000 sites, OR blocks of improbable units included), but a block's count slots share one scale, and
        a rare branch of ``k`` improbable units (down to ``e^{-24 k}`` relative) underflows float32 for ``k >= 4``
        (observed: NaN at ``k = 8``), so count thresholds above 1 take float64."""
        requested = self._requested_dtype()
        if requested is not None:
            return requested
        if self.core.dtype == torch.float64 or (caps is not None and max(caps) > 1):
            return torch.float64
        return torch.float32

    @property
    def _tree_dtype(self) -> torch.dtype:
        """The tree contraction runs in the parameters' dtype, float32 for lower precisions: its per-product and
        per-count-slot log-scaling keeps float32 within 1e-6 relative of the float64 reference on 500 and 2,000
        sites (1e-5 when a rare active block makes log psi and log Z cancel), where the sequential loop in float32
        can be wrong by orders of magnitude (see ``_contract_dtype``)."""
        requested = self._requested_dtype()
        if requested is not None:
            return requested
        return torch.float32 if self.core.dtype in (torch.float16, torch.bfloat16) else self.core.dtype

    @property
    def _contract_dtype(self) -> torch.dtype:
        """Sequential contractions (and sampling) run in float64 for float32 (and lower) parameters: a Born
        normalization sums positive terms whose transfer products can cancel to far below the largest entry, and in
        float32 the rounding of those products (1e-7 relative) can exceed a rare but required branch (an active
        block of improbable units) and even turn its weight negative (observed: log p wrong by a factor ~70 on 500
        sites with 8-of-10 blocks at the field bound, where the float32 tree is within 5e-6)."""
        requested = self._requested_dtype()
        if requested is not None:
            return requested
        return torch.float64 if self.core.dtype in (torch.float32, torch.float16, torch.bfloat16) else self.core.dtype

    def _log_prob(self, x, c, groups, active, thresholds) -> Tensor:
        c = self._check_context(c)
        x = check_states(x, self.n_sites, self.phys_dim, self.core.device)
        if x.shape[0] != c.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but c has {c.shape[0]}: one context per configuration")
        groups, allowed, caps = self._check_groups(groups, active, x.shape[0], thresholds)
        mode = self._contraction_mode()
        if mode == "transfer":
            log_z, log_psi = self._log_prob_transfer(x, c, groups, allowed, caps)
        else:
            dtype = self._tree_dtype if mode == "tree" else self._contract_dtype
            a = self.site_tensors(c).to(dtype)
            if mode == "tree":
                log_z, log_psi = self._log_norm_tree(a, groups, allowed, caps), self._log_psi_tree(a, x)
            else:
                log_z, log_psi = self._log_norm(a, groups, allowed, caps), self._log_psi(a, x)
        check_finite(self, log_z, "ConditionalMPS")
        log_p = 2.0 * log_psi - log_z
        if groups is not None:  # zero for configurations whose counts end a block outside its allowed slots
            counts = torch.zeros(allowed.shape[:2], dtype=torch.long, device=x.device).scatter_add_(
                1, groups.expand_as(x), (x > 0).long())
            slot = torch.minimum(counts, torch.tensor(caps, device=x.device))
            log_p = log_p.masked_fill(~allowed.gather(2, slot[..., None]).all(1).squeeze(-1), -torch.inf)
        return log_p.to(c.dtype)

    def forward(self, x, c, groups=None, active=None, thresholds=None) -> Tensor:
        return self.log_prob(x, c, groups, active, thresholds)

    @torch.no_grad()
    def sample(self, c, generator: torch.Generator | None = None, groups=None, active=None, thresholds=None) -> Tensor:
        r"""One exact sample per context row, ``(B, n)`` long (consistent with ``active`` when ``groups`` is given).

        Right environments per context, then left to right
        :math:`p(x_i \mid x_{<i}, c) \propto v A^{(i)}(c)[x_i] R A^{(i)}(c)[x_i]^\top v^\top`. With the constraint,
        one right environment per count of nonzero sites so far in the current block (``0 .. k``), zero at the
        block's end for the counts that contradict its coarse state, so inconsistent draws have weight 0.
        On CPU with ``contraction="auto"`` a compiled kernel runs this algorithm in float64, one context per thread
        (:mod:`dgrn.tn._kernels`: eager PyTorch spends ~10 small operations a site); otherwise PyTorch draws on the
        transfer chains or site by site, in the parameters' dtype, even under autocast, as :meth:`log_prob` does.
        """
        with torch.autocast(device_type=self.core.device.type, enabled=False):
            return self._sample(c, generator, groups, active, thresholds)

    def _sample(self, c, generator, groups, active, thresholds) -> Tensor:
        c = self._check_context(c)
        groups, allowed, caps = self._check_groups(groups, active, c.shape[0], thresholds)
        if self.core.device.type == "cpu" and getattr(self, "contraction", "auto") == "auto":
            return self._sample_compiled(c, generator, groups, allowed, caps)
        if self._contraction_mode() == "transfer":
            return self._sample_transfer(c, generator, groups, allowed, caps)
        a = self.site_tensors(c).to(self._contract_dtype)
        batch, n = c.shape[0], self.n_sites
        tiny = torch.finfo(a.dtype).tiny
        right = self.right.to(a.dtype)
        env = (right[:, None] * right[None, :]).expand(batch, -1, -1)
        # after[i]: right environment of sites > i, (B, D, D), or (B, k + 1, D, D) per count in the block of site i
        after: list[Tensor] = [None] * n  # type: ignore[list-item]
        block = groups.tolist() if groups is not None else None
        for i in range(n - 1, -1, -1):
            # environments are transposed-contracted from the right: E_i = sum_s A[s] E_{i+1} A[s]^T
            at = a[:, i].permute(0, 3, 2, 1)  # (B, D_right, d, D_left)
            if groups is None:
                after[i] = env
                env = self._transfer(env, at)
                env = env / env.diagonal(dim1=1, dim2=2).sum(1).clamp_min(tiny)[:, None, None]
                continue
            k = caps[block[i]]
            if i == n - 1 or block[i + 1] != block[i]:  # block end: keep the counts consistent with its state
                keep = allowed[:, block[i], :k + 1].to(a.dtype)
                after[i] = keep[:, :, None, None] * env[:, None]
                up = torch.cat([torch.arange(1, k + 1), torch.tensor([k])]).to(c.device)  # count after a nonzero value
            else:
                after[i] = counts
            counts = self._transfer(after[i], at[:, :, :1]) + self._transfer(after[i][:, up], at[:, :, 1:])
            counts = counts / counts.sum(1).diagonal(dim1=1, dim2=2).sum(1).clamp_min(tiny)[:, None, None, None]
            env = counts[:, 0]  # entering a block: count 0
        out = torch.empty(batch, n, dtype=torch.long, device=c.device)
        v = self.left.to(a.dtype).expand(batch, -1)
        rows = torch.arange(batch, device=c.device)
        count = torch.zeros(batch, dtype=torch.long, device=c.device)  # nonzero sites so far in the current block
        for i in range(n):
            w = torch.einsum("bl,blsr->bsr", v, a[:, i])  # (B, d, D)
            if groups is None:
                weights = torch.einsum("bsr,brq,bsq->bs", w, after[i], w)
            else:
                k = caps[block[i]]
                if i == 0 or block[i] != block[i - 1]:
                    count = torch.zeros_like(count)
                env_zero, env_nonzero = after[i][rows, count], after[i][rows, (count + 1).clamp_max(k)]
                weights = torch.cat([torch.einsum("br,brq,bq->b", w[:, 0], env_zero, w[:, 0])[:, None],
                                     torch.einsum("bsr,brq,bsq->bs", w[:, 1:], env_nonzero, w[:, 1:])], 1)
            out[:, i] = sample_categorical(weights.clamp_min(0), generator)
            if groups is not None:
                count = (count + (out[:, i] > 0).long()).clamp_max(k)
            v = w[rows, out[:, i]]
            v = v / v.norm(dim=1, keepdim=True).clamp_min(tiny)
        return out

    def _sample_compiled(self, c, generator, groups, allowed, caps) -> Tensor:
        """:meth:`sample` by the compiled CPU kernel (:func:`dgrn.tn._kernels.sample_conditional_mps`: the sequential
        algorithm as plain loops in float64, one context per thread, up to ``torch.get_num_threads()``), its uniforms
        drawn from ``generator``."""
        batch, n = c.shape[0], self.n_sites
        log_w, parts, gamma = self._transfer_parts(c, torch.float64)
        if gamma is None:
            gamma = log_w.new_ones(batch, n, 1)
        if groups is None:  # one block of cap 0: a single count slot, no constraint
            groups, caps, allowed = torch.zeros(n, dtype=torch.long), [0], log_w.new_ones(batch, 1, 1)
        uniforms = torch.rand(batch, n, generator=generator, dtype=torch.float64)
        arrays = [t.detach().to(torch.float64).contiguous().numpy()
                  for t in (log_w, parts, gamma, self.left, self.right)]
        out = run_parallel(sample_conditional_mps, *arrays, groups.contiguous().numpy(),
                           np.asarray(caps, dtype=np.int64), allowed.to(torch.float64).contiguous().numpy(),
                           uniforms.numpy(), threads=torch.get_num_threads())
        return torch.from_numpy(out)

    def _sample_transfer(self, c, generator, groups, allowed, caps) -> Tensor:
        """:meth:`sample` on the transfer chains, in their dtype (every state normalized at every step). The chain is
        merged ``SAMPLE_MERGES`` times (:func:`~dgrn.tn.contract.pair_sites`: runs of up to ``m = 2^merges`` sites,
        never across a block), its right environments come from one GEMM per run for all contexts, and each run's
        ``d^m`` joint values are weighted at once, exactly
        :math:`p(x_{\\rm run} \\mid x_{<\\rm run}, c) \\propto (w \\otimes w) \\cdot R_{\\rm run}[\\text{count}]` with
        :math:`w = v A_i[x_i] \\cdots A_j[x_j]`: ``n / m`` sequential steps of batched products instead of ``n``."""
        dtype = self._transfer_dtype(caps)
        batch, n, d, dim, terms = c.shape[0], self.n_sites, self.phys_dim, self.bond_dim, self.rank + 1
        log_w, parts, gamma = self._transfer_parts(c, dtype)
        maps, weights, increments = self._norm_maps(log_w, parts, gamma)
        block = None if groups is None else groups.tolist()
        lengths = [n] if block is None else torch.bincount(groups).tolist()
        merges, rounds = 0, SAMPLE_MERGES - (batch > SAMPLE_WIDE_BATCH)
        while merges < rounds and maps.shape[1] ** 2 <= SAMPLE_MAX_MAPS:  # rank > 0: fewer, or no merges
            maps, weights, increments, block = pair_sites(maps, weights, increments, block)
            merges += 1
        right = self.right.to(dtype)
        rights = transfer_right_environments(maps, weights, torch.kron(right, right), increments=increments,
                                             groups=block, thresholds=caps, active=allowed)
        # the original sites of each merged one: pair_sites pads a block only at its end
        span, offset, runs = 2 ** merges, 0, []
        for length in lengths:
            runs += [range(offset + a, offset + min(a + span, length)) for a in range(0, length, span)]
            offset += length
        stacked = parts.permute(0, 2, 1, 3, 4).reshape(n, dim, terms * d * dim).unbind(0)  # v @ P_ir[s] for all r, s
        amplitude = (0.5 * log_w).exp()[:, :, None, :, None].unbind(1)  # (B, 1, d, 1) per site
        gates = gamma[:, :, None, :, None, None].unbind(1) if gamma is not None else None  # (B, 1, R+1, 1, 1)
        tiny = torch.finfo(dtype).tiny
        out = torch.empty(batch, n, dtype=torch.long, device=c.device)
        v = self.left.to(dtype).expand(batch, -1)
        rows = torch.arange(batch, device=c.device)
        count = torch.zeros(batch, 1, dtype=torch.long, device=c.device)  # nonzero sites so far in the current block
        # run length -> the values of each joint outcome (d^m, m), the first site most significant, and its nonzeros
        values, nonzeros = {}, {}
        for j, run in enumerate(runs):
            if len(run) not in values:
                place = d ** torch.arange(len(run) - 1, -1, -1, device=c.device)
                values[len(run)] = torch.arange(d ** len(run), device=c.device)[:, None] // place % d
                nonzeros[len(run)] = (values[len(run)] > 0).sum(1)
            w = v[:, None]  # (B, outcomes so far, D): v A_first[x_first] ... up to the current site
            for i in run:
                t = (w @ stacked[i]).view(batch, -1, terms, d, dim)
                t = t[:, :, 0] if gates is None else (t * gates[i]).sum(2)
                w = (t * amplitude[i]).flatten(1, 2)
                w = w / w.abs().amax((1, 2), keepdim=True).clamp_min(tiny)  # one scale per context: p unchanged
            pair = (w[..., :, None] * w[..., None, :]).flatten(2)  # (B, d^m, D^2): w (x) w, as the environments
            prob = pair @ rights[j].transpose(1, 2)  # (B, d^m, count slots after the run)
            if block is None:
                prob = prob[:, :, 0]
            else:  # the count the run's values reach in its block: the slot of the environment after it
                if j and block[j - 1] != block[j]:
                    count = torch.zeros_like(count)
                reached = (count + nonzeros[len(run)]).clamp_max(caps[block[j]])
                prob = prob.gather(2, reached[:, :, None]).squeeze(2)
            choice = sample_categorical(prob.clamp_min(0), generator)
            out[:, run.start:run.stop] = values[len(run)][choice]
            if block is not None:
                count = reached.gather(1, choice[:, None])
            v = w[rows, choice]
            v = v / v.norm(dim=1, keepdim=True).clamp_min(tiny)
        return out

    def extra_repr(self) -> str:
        return (f"n_sites={self.n_sites}, context_dim={self.context_dim}, bond_dim={self.bond_dim}, "
                f"phys_dim={self.phys_dim}, rank={self.rank}")


class SegmentedMPS(nn.Module):
    r"""Independent :class:`ConditionalMPS` on contiguous segments of the sites: a product of Born machines,

    .. math::
        p(x \mid c) = \prod_{s=1}^{S} p_s(x_s \mid c_s),

    with :math:`x_s` the sites of segment :math:`s` (``sizes[s]`` of them, segments in site order) and
    :math:`c_s` its context (one shared context, or one per segment). It is the decoder of one level of
    :class:`~dgrn.nn.MultiscaleBornMachine` when each segment's factor must be scored on its own: there, each
    segment's context holds the state of its own latent chain, and the filter of that chain needs the segment's
    :math:`\log p_s`. Bonds never cross a segment boundary, so the segments are uncorrelated given the contexts.

    The coarse-to-fine constraint is passed for the whole level, as to :class:`ConditionalMPS`: ``groups (n,)``
    (contiguous blocks numbered in site order, none straddling two segments), ``active (B, K)`` and ``thresholds``
    (``(K,)`` or ``(B, K)``); each segment gets its own blocks, renumbered.

    Args:
        sizes: sites per segment, each >= 1. context_dim, bond_dim, phys_dim, rank, init_noise: of every segment's
            :class:`ConditionalMPS`.

    Shapes:
        ``log_prob(x, c)``: ``x (B, n)``, ``c (B, context_dim)`` or ``(B, S, context_dim)`` -> ``(B, S)``, the
        log-probability of every segment (their sum is :math:`\log p(x \mid c)`). ``sample(c)`` -> ``(B, n)`` long.
    """

    def __init__(self, sizes, context_dim: int, bond_dim: int, phys_dim: int = 2, *, rank: int = 1,
                 init_noise: float = 0.3) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if not sizes or min(sizes) < 1:
            raise ValueError(f"sizes must be one or more segment lengths >= 1, got {sizes}")
        self.sizes, self.n_sites = sizes, sum(sizes)
        self.context_dim, self.phys_dim = check_size("context_dim", context_dim), check_size("phys_dim", phys_dim, 2)
        self.parts = nn.ModuleList(ConditionalMPS(s, context_dim, bond_dim, phys_dim, rank=rank, init_noise=init_noise)
                                   for s in sizes)
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        self.slices = [slice(a, b) for a, b in zip(offsets, offsets[1:])]

    def reset_parameters(self) -> None:
        for part in self.parts:
            part.reset_parameters()

    def _contexts(self, c) -> list[Tensor]:
        c = torch.as_tensor(c)
        if c.dim() == 3 and c.shape[1] == len(self.sizes):
            return list(c.unbind(1))
        if c.dim() == 2:
            return [c] * len(self.sizes)
        raise ValueError(f"context must have shape (batch, {self.context_dim}) or (batch, {len(self.sizes)}, "
                         f"{self.context_dim}), got {tuple(c.shape)}")

    def _constraints(self, groups, active, thresholds) -> list[dict]:
        """The constraint of every segment: its blocks of ``groups`` renumbered from 0 and their columns of ``active``
        and ``thresholds``."""
        if groups is None and active is None and thresholds is None:
            return [{}] * len(self.sizes)
        if groups is None or active is None:
            raise ValueError("pass both groups (n_sites,) and active (batch, n_groups), or neither")
        groups = torch.as_tensor(groups).long()
        if groups.shape != (self.n_sites,):
            raise ValueError(f"groups must have shape ({self.n_sites},), got {tuple(groups.shape)}")
        out = []
        for part in self.slices:
            first, last = int(groups[part.start]), int(groups[part.stop - 1])
            if part.start and int(groups[part.start - 1]) == first:
                raise ValueError(f"block {first} of groups straddles two segments (sizes {self.sizes})")
            keep = slice(first, last + 1)
            k = None if thresholds is None else torch.as_tensor(thresholds)[..., keep]
            out.append(dict(groups=groups[part] - first, active=torch.as_tensor(active)[:, keep], thresholds=k))
        return out

    def log_prob(self, x, c, groups=None, active=None, thresholds=None) -> Tensor:
        """Exact log-probability of every segment, ``(B, S)`` (see the class)."""
        x = torch.as_tensor(x)
        if x.dim() != 2 or x.shape[1] != self.n_sites:
            raise ValueError(f"x must have shape (batch, {self.n_sites}), got {tuple(x.shape)}")
        return torch.stack([part.log_prob(x[:, s], cs, **constraint) for part, s, cs, constraint in zip(
            self.parts, self.slices, self._contexts(c), self._constraints(groups, active, thresholds))], 1)

    def forward(self, x, c, groups=None, active=None, thresholds=None) -> Tensor:
        return self.log_prob(x, c, groups, active, thresholds)

    @torch.no_grad()
    def sample(self, c, generator: torch.Generator | None = None, groups=None, active=None, thresholds=None) -> Tensor:
        """One exact draw per context row, ``(B, n)`` long: every segment drawn from its own machine."""
        return torch.cat([part.sample(cs, generator, **constraint) for part, cs, constraint in zip(
            self.parts, self._contexts(c), self._constraints(groups, active, thresholds))], 1)

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, context_dim={self.context_dim}"
