"""Conditional MPS decoder: an exactly normalized :math:`p(x \\mid c)` over the units of one time bin."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dgrn.tn._common import check_finite, check_size, check_states, sample_categorical

__all__ = ["ConditionalMPS"]

#: the context fields are clamped to +-FIELD_BOUND, so the two values of a site differ by at most e^(2 FIELD_BOUND) in
#: probability through the fields: far above the float64 rounding of the contractions (see ``_contract_dtype``)
FIELD_BOUND = 12.0


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
    level it belongs to, sites ordered block by block) and the coarse state ``active (B, K)`` (block ``k`` has at
    least one nonzero site: OR pooling), ``log_prob(x, c, groups=..., active=...)`` is the exact
    :math:`\log p(x \mid c, x^{\rm coarse})` of the Born distribution *restricted to configurations consistent
    with the coarse state* (silent blocks all zero, active blocks not all zero) and renormalized over them;
    inconsistent ``x`` get :math:`-\infty`. The restricted norm is contracted with two environments per block,
    "all zero so far" and "at least one nonzero so far", both sums of positive terms, so no cancellation occurs.
    ``sample(c, groups=..., active=...)`` draws exactly from the restricted distribution. Chained over the levels
    of a renormalization flow this gives an exactly normalized hierarchical likelihood
    :math:`p(x^{0}) = p(x^{L})\prod_\ell p(x^{\ell} \mid x^{\ell+1})`.

    Args:
        n_sites: number of units ``n``.
        context_dim: size of ``c``.
        bond_dim: ``D >= 1``.
        phys_dim: values per unit ``d``.
        rank: ``R >= 0`` context-dependent tensor corrections per site.

    Shapes:
        ``log_prob(x, c)``: ``x (B, n)`` integers in ``{0..d-1}``, ``c (B, context_dim)`` -> ``(B,)``;
        ``sample(c)`` -> ``(B, n)`` long, one draw per context row; ``groups (n,)`` long, nondecreasing from 0 with
        no gaps; ``active (B, K)`` bool with ``K = groups[-1] + 1``.
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
        n, d, dim = self.n_sites, self.phys_dim, self.bond_dim
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

    def _check_groups(self, groups, active, batch: int) -> tuple[Tensor, Tensor] | tuple[None, None]:
        if groups is None and active is None:
            return None, None
        if groups is None or active is None:
            raise ValueError("pass both groups (n_sites,) and active (batch, n_groups), or neither")
        groups = torch.as_tensor(groups, device=self.core.device).long()
        if groups.shape != (self.n_sites,):
            raise ValueError(f"groups must have shape ({self.n_sites},), got {tuple(groups.shape)}")
        steps = groups.diff()
        if groups[0] != 0 or ((steps != 0) & (steps != 1)).any():
            raise ValueError("groups must be contiguous blocks numbered 0, 1, 2, ... in site order "
                             "(order the sites by their coarse unit)")
        active = torch.as_tensor(active, device=self.core.device)
        n_groups = int(groups[-1]) + 1
        if active.shape != (batch, n_groups):
            raise ValueError(f"active must have shape (batch={batch}, n_groups={n_groups}), got {tuple(active.shape)}")
        return groups, active.bool()

    @staticmethod
    def _transfer(env: Tensor, ai: Tensor) -> Tensor:
        r""":math:`\sum_s A[s]^\top E A[s]` per context over the physical values present in ``ai``:
        ``env (B, D, D)``, ``ai (B, D, k, D)`` (a view; its last three dimensions contiguous)."""
        batch, dim, k, _ = ai.shape
        half = (env @ ai.reshape(batch, dim, k * dim)).reshape(batch, dim * k, dim)
        return ai.reshape(batch, dim * k, dim).transpose(1, 2) @ half

    def _log_norm(self, a: Tensor, groups: Tensor | None = None, active: Tensor | None = None) -> Tensor:
        r""":math:`\log Z(c)` per context from per-context transfer matrices, ``(B,)``; restricted to the
        configurations consistent with ``active`` when ``groups`` is given."""
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
                if i == 0 or block[i] != block[i - 1]:
                    silent, fired = env, torch.zeros_like(env)  # block so far: all zero / some nonzero
                fired, silent = (self._transfer(fired, a_zero[i]) + self._transfer(fired + silent, a_nonzero[i]),
                                 self._transfer(silent, a_zero[i]))
                if i == self.n_sites - 1 or block[i + 1] != block[i]:
                    env = torch.where(active[:, block[i], None, None], fired, silent)
                else:  # common scale for both environments, so their sum at the block end stays exact
                    scale = (fired + silent).diagonal(dim1=1, dim2=2).sum(1).clamp_min(tiny)
                    fired, silent = fired / scale[:, None, None], silent / scale[:, None, None]
                    log_z = log_z + scale.log()
                    continue
            trace = env.diagonal(dim1=1, dim2=2).sum(1).clamp_min(tiny)
            env = env / trace[:, None, None]
            log_z = log_z + trace.log()
        return log_z + torch.einsum("bij,i,j->b", env, right, right).clamp_min(tiny).log()

    def log_prob(self, x, c, groups=None, active=None) -> Tensor:
        r"""Exact :math:`\log p(x \mid c)` (or :math:`\log p(x \mid c, \text{active})` with ``groups``), ``(B,)``.
        Contracted in the parameters' dtype even under autocast (bf16 would cost the normalization its digits)."""
        with torch.autocast(device_type=self.core.device.type, enabled=False):
            return self._log_prob(x, c, groups, active)

    @property
    def _contract_dtype(self) -> torch.dtype:
        """Contractions run in float64 for float32 (and lower) parameters: a Born normalization sums positive terms
        whose transfer products can cancel to far below the largest entry, and in float32 the rounding of those
        products (1e-7 relative) can exceed a rare but required branch (an active block of improbable units) and
        even turn its weight negative."""
        return torch.float64 if self.core.dtype in (torch.float32, torch.float16, torch.bfloat16) else self.core.dtype

    def _log_prob(self, x, c, groups, active) -> Tensor:
        c = self._check_context(c)
        x = check_states(x, self.n_sites, self.phys_dim, self.core.device)
        if x.shape[0] != c.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but c has {c.shape[0]}: one context per configuration")
        groups, active = self._check_groups(groups, active, x.shape[0])
        a = self.site_tensors(c).to(self._contract_dtype)
        log_z = self._log_norm(a, groups, active)
        check_finite(self, log_z, "ConditionalMPS")
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
        log_psi = log_psi + (v.squeeze(1) @ self.right.to(a.dtype)).abs().clamp_min(torch.finfo(v.dtype).tiny).log()
        log_p = 2.0 * log_psi - log_z
        if groups is not None:
            fired = torch.zeros(active.shape, dtype=torch.long, device=x.device).scatter_reduce_(
                1, groups.expand_as(x), (x > 0).long(), "amax")
            log_p = log_p.masked_fill((fired.bool() != active).any(1), -torch.inf)
        return log_p.to(c.dtype)

    def forward(self, x, c, groups=None, active=None) -> Tensor:
        return self.log_prob(x, c, groups, active)

    @torch.no_grad()
    def sample(self, c, generator: torch.Generator | None = None, groups=None, active=None) -> Tensor:
        r"""One exact sample per context row, ``(B, n)`` long (consistent with ``active`` when ``groups`` is given).

        Right environments per context, then left to right
        :math:`p(x_i \mid x_{<i}, c) \propto v A^{(i)}(c)[x_i] R A^{(i)}(c)[x_i]^\top v^\top`. With the constraint,
        two right environments per site: ``free`` (the current block already has a nonzero site) and ``enter``
        (it has none yet: an active block still needs one, a silent block stays zero), scaled together.
        """
        c = self._check_context(c)
        groups, active = self._check_groups(groups, active, c.shape[0])
        a = self.site_tensors(c).to(self._contract_dtype)
        batch, n = c.shape[0], self.n_sites
        block = groups.tolist() if groups is not None else [0] * n
        last = [i == n - 1 or block[i + 1] != block[i] for i in range(n)]
        on = active[:, groups] if groups is not None else None  # (B, n)
        free, enter = [None] * (n + 1), [None] * (n + 1)
        right = self.right.to(a.dtype)
        free[n] = enter[n] = (right[:, None] * right[None, :]).expand(batch, -1, -1)
        for i in range(n - 1, -1, -1):
            # environments are transposed-contracted from the right: E_i = sum_s A[s] E_{i+1} A[s]^T
            at = a[:, i].permute(0, 3, 2, 1)  # (B, D_right, d, D_left)
            if groups is None:
                free[i] = self._transfer(free[i + 1], at)
                free[i] = enter[i] = free[i] / free[i].diagonal(dim1=1, dim2=2).sum(1)[:, None, None]
                continue
            nxt_free, nxt_enter = (enter[i + 1], enter[i + 1]) if last[i] else (free[i + 1], enter[i + 1])
            at_zero, at_nonzero = at[:, :, :1], at[:, :, 1:]
            need = self._transfer(nxt_free, at_nonzero)
            f = need + self._transfer(nxt_free, at_zero)
            stay = self._transfer(nxt_enter, at_zero)
            e = torch.where(on[:, i, None, None], need if last[i] else need + stay, stay)
            scale = (f + e).diagonal(dim1=1, dim2=2).sum(1).clamp_min(torch.finfo(a.dtype).tiny)[:, None, None]
            free[i], enter[i] = f / scale, e / scale
        out = torch.empty(batch, n, dtype=torch.long, device=c.device)
        v = self.left.to(a.dtype).expand(batch, -1)
        rows = torch.arange(batch, device=c.device)
        done = torch.zeros(batch, dtype=torch.bool, device=c.device)  # current block already has a nonzero site
        for i in range(n):
            w = torch.einsum("bl,blsr->bsr", v, a[:, i])  # (B, d, D)
            if groups is None:
                weights = torch.einsum("bsr,brq,bsq->bs", w, free[i + 1], w)
            else:
                env_on = enter[i + 1] if last[i] else free[i + 1]
                env_off = enter[i + 1] if last[i] else torch.where(done[:, None, None], free[i + 1], enter[i + 1])
                weights = torch.cat([torch.einsum("br,brq,bq->b", w[:, 0], env_off, w[:, 0])[:, None],
                                     torch.einsum("bsr,brq,bsq->bs", w[:, 1:], env_on, w[:, 1:])], 1)
                weights[:, 1:] *= on[:, i, None]  # a silent block stays zero
                if last[i]:
                    weights[:, 0] *= ~(on[:, i] & ~done)  # an active block's last chance to fire
            out[:, i] = sample_categorical(weights.clamp_min(0), generator)
            if groups is not None:
                done = torch.zeros_like(done) if last[i] else done | (out[:, i] > 0)
            v = w[rows, out[:, i]]
            v = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        return out

    def extra_repr(self) -> str:
        return (f"n_sites={self.n_sites}, context_dim={self.context_dim}, bond_dim={self.bond_dim}, "
                f"phys_dim={self.phys_dim}, rank={self.rank}")
