"""Conditional MPS decoder: an exactly normalized :math:`p(x \\mid c)` over the units of one time bin."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dgrn.tn._common import check_finite, check_size, check_states, sample_categorical

__all__ = ["ConditionalMPS"]


class ConditionalMPS(nn.Module):
    r"""MPS Born machine whose site tensors are modulated by a context vector ``c``.

    .. math::
        A^{(i)}(c)[s] = e^{f_{is}(c)/2}\Big(A^{(i)}[s] + \sum_{r=1}^{R} g_{ir}(c)\, C^{(i,r)}[s]\Big),
        \qquad p(x \mid c) = \frac{\big(\ell^\top A^{(1)}(c)[x_1]\cdots A^{(n)}(c)[x_n]\, r\big)^2}{Z(c)},

    with ``f = F c + f_0`` (context-dependent fields, ``n × d``) and ``g = G c`` (``n × R`` gates of rank-``R``
    tensor corrections, which make the *correlations* depend on the context), boundary vectors ``ℓ, r`` and
    uniform bond dimension ``D``. :math:`Z(c)` is contracted exactly for every context in the batch (per-context
    transfer matrices, trace-normalized with accumulated logs), so each :math:`p(\cdot \mid c)` is normalized.
    With ``c`` the summary of past activity this is a trajectory decoder that models the instantaneous
    correlations between units of a bin instead of treating them as conditionally independent.

    Args:
        n_sites: number of units ``n``.
        context_dim: size of ``c``.
        bond_dim: ``D >= 1``.
        phys_dim: values per unit ``d``.
        rank: ``R >= 0`` context-dependent tensor corrections per site.

    Shapes:
        ``log_prob(x, c)``: ``x (B, n)`` integers in ``{0..d-1}``, ``c (B, context_dim)`` -> ``(B,)``;
        ``sample(c)`` -> ``(B, n)`` long, one draw per context row.
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
        """Context-modulated site tensors ``(B, n, D, d, D)``."""
        a = self.core.unsqueeze(0)
        if self.rank:
            g = self.gate(c).reshape(-1, self.n_sites, self.rank)
            a = a + torch.einsum("bir,irlsq->bilsq", g, self.modulation)
        f = self.field(c).reshape(-1, self.n_sites, self.phys_dim)
        return a * torch.exp(0.5 * f)[:, :, None, :, None]

    def _log_norm(self, a: Tensor) -> Tensor:
        """:math:`\\log Z(c)` per context from per-context transfer matrices, ``(B,)``."""
        env = (self.left[:, None] * self.left[None, :]).expand(a.shape[0], -1, -1)
        log_z = a.new_zeros(a.shape[0])
        batch, dim, d = a.shape[0], self.bond_dim, self.phys_dim
        for i in range(self.n_sites):
            ai = a[:, i].reshape(batch, dim, d * dim)
            half = (env @ ai).reshape(batch, dim * d, dim)  # E[l,l'] A[l',s,q]
            env = ai.reshape(batch, dim * d, dim).transpose(1, 2) @ half
            trace = env.diagonal(dim1=1, dim2=2).sum(1)
            env = env / trace[:, None, None]
            log_z = log_z + trace.log()
        return log_z + torch.log(torch.einsum("bij,i,j->b", env, self.right, self.right))

    def log_prob(self, x, c) -> Tensor:
        r"""Exact :math:`\log p(x \mid c)`, ``(B,)``."""
        c = self._check_context(c)
        x = check_states(x, self.n_sites, self.phys_dim, self.core.device)
        if x.shape[0] != c.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but c has {c.shape[0]}: one context per configuration")
        a = self.site_tensors(c)
        log_z = self._log_norm(a)
        check_finite(self, log_z, "ConditionalMPS")
        batch = x.shape[0]
        v = self.left.expand(batch, -1)
        log_psi = a.new_zeros(batch)
        rows = torch.arange(batch, device=x.device)
        for i in range(self.n_sites):
            v = (v.unsqueeze(1) @ a[rows, i, :, x[:, i], :]).squeeze(1)
            norm = v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
            v = v / norm
            log_psi = log_psi + norm.squeeze(1).log()
        log_psi = log_psi + (v @ self.right).abs().clamp_min(torch.finfo(v.dtype).tiny).log()
        return 2.0 * log_psi - log_z

    def forward(self, x, c) -> Tensor:
        return self.log_prob(x, c)

    @torch.no_grad()
    def sample(self, c, generator: torch.Generator | None = None) -> Tensor:
        r"""One exact sample per context row, ``(B, n)`` long.

        Right environments :math:`R_i(c) = \sum_{x_{>i}} \phi\phi^\top` per context, then left to right
        :math:`p(x_i \mid x_{<i}, c) \propto v A^{(i)}(c)[x_i] R_{i+1} A^{(i)}(c)[x_i]^\top v^\top`.
        """
        c = self._check_context(c)
        a = self.site_tensors(c)
        batch, n = c.shape[0], self.n_sites
        env = [None] * (n + 1)
        env[n] = (self.right[:, None] * self.right[None, :]).expand(batch, -1, -1)
        for i in range(n - 1, -1, -1):
            e = torch.einsum("blsr,brq,bmsq->blm", a[:, i], env[i + 1], a[:, i])
            env[i] = e / e.diagonal(dim1=1, dim2=2).sum(1)[:, None, None]
        out = torch.empty(batch, n, dtype=torch.long, device=c.device)
        v = self.left.expand(batch, -1)
        rows = torch.arange(batch, device=c.device)
        for i in range(n):
            w = torch.einsum("bl,blsr->bsr", v, a[:, i])  # (B, d, D)
            weights = torch.einsum("bsr,brq,bsq->bs", w, env[i + 1], w).clamp_min(0)
            out[:, i] = sample_categorical(weights, generator)
            v = w[rows, out[:, i]]
            v = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        return out

    def extra_repr(self) -> str:
        return (f"n_sites={self.n_sites}, context_dim={self.context_dim}, bond_dim={self.bond_dim}, "
                f"phys_dim={self.phys_dim}, rank={self.rank}")
