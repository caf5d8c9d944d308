"""Diffusion-renormalization pooling: the Laplacian-RG coarse-graining as a (differentiable) graph pooling layer."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dgrn.renorm.coarse import zeta_components

__all__ = ["DiffusionRenormPooling", "RenormPoolingOutput"]


@dataclass
class RenormPoolingOutput:
    """Everything :class:`DiffusionRenormPooling` computes. Sparse input fills ``edge_index``, ``edge_weight``,
    ``batch`` (and ``x`` is ``(K_total, F)``); dense input fills ``adj`` and ``mask`` (``x`` is ``(B, K, F)``).

    ``assignment``: hard supernode of each node (sparse: ``(N,)`` global pooled-node index; dense: ``(B, N)``, -1 on
    padding). ``soft_assignment``: ``(B, N, K)``, rows sum to 1 on real nodes (one-hot in hard mode). ``tau`` (scalar),
    ``entropy`` and ``specific_heat`` ``(B,)`` at that tau, ``num_supernodes`` ``(B,)``; ``fine_mask`` ``(B, N)`` and
    ``coarse_mask`` ``(B, K)`` for :meth:`DiffusionRenormPooling.unpool`.
    """

    x: Tensor
    soft_assignment: Tensor
    assignment: Tensor
    tau: Tensor
    entropy: Tensor
    specific_heat: Tensor
    num_supernodes: Tensor
    fine_mask: Tensor
    coarse_mask: Tensor
    adj: Tensor | None = None
    mask: Tensor | None = None
    edge_index: Tensor | None = None
    edge_weight: Tensor | None = None
    batch: Tensor | None = None


class DiffusionRenormPooling(nn.Module):
    r"""Pool a graph onto the supernodes of Laplacian renormalization at a learnable diffusion time :math:`\tau`.

    Per graph, with :math:`A_s = (A + A^\top)/2` (no self-loops) and its Laplacian :math:`L` (combinatorial
    :math:`D - A_s` or normalized :math:`I - D^{-1/2} A_s D^{-1/2}`), the heat kernel :math:`K = e^{-\tau L}` defines

    * supernodes: components of :math:`\zeta_{ij} = [K_{ij} \ge \min(K_{ii}, K_{jj})]` (Villegas et al. 2023),
      giving the hard assignment :math:`H \in \{0,1\}^{N\times C}`;
    * the soft assignment :math:`S = \mathrm{diag}(K\mathbf 1)^{-1} K H`: the share of the heat that leaves node
      :math:`i` and lands in supernode :math:`c` (rows sum to 1; differentiable in :math:`\tau`, in the edge weights,
      and exact at :math:`\tau \to 0` where it is :math:`H`);
    * pooled features :math:`X' = P^\top X` (``reduce="sum"``; ``mean`` divides by :math:`P^\top\mathbf 1`) and the
      coarse graph :math:`A' = P^\top A P` (direction kept), with :math:`P = H` (``mode="hard"``) or :math:`S`
      (``mode="soft"``);
    * the entropy :math:`S(\tau) = (\tau\langle\lambda\rangle + \ln Z)/\ln N` and specific heat
      :math:`C(\tau) = \tau^2\mathrm{Var}(\lambda)/\ln N` of each graph (auxiliary outputs, differentiable in
      :math:`\tau`; 0 for a single node).

    The supernode structure is piecewise constant in :math:`\tau`; gradients flow through :math:`S`, the pooled
    features and the auxiliary quantities. Dense per-graph kernels (``matrix_exp``): meant for graphs of up to a few
    thousand nodes per batch element; for larger graphs coarse-grain with :func:`dgrn.renorm.rg_flow`.

    Args:
        tau: initial diffusion time (> 0). learn_tau: make :math:`\log\tau` a parameter.
        mode: ``hard`` or ``soft``. laplacian: ``combinatorial`` or ``normalized``.
        reduce: ``sum`` or ``mean`` pooling of features. self_loops: keep intra-supernode weight on the diagonal of
            the coarse graph.

    Shapes:
        sparse: ``x (N, F)``, ``edge_index (2, E)``, ``edge_weight (E,)`` or None, ``batch (N,)`` or None ->
        ``x (K_total, F)``, ``edge_index``, ``edge_weight``, ``batch (K_total,)``.
        dense: ``x (B, N, F)``, ``adj (B, N, N)``, ``mask (B, N)`` or None -> ``x (B, K, F)``, ``adj (B, K, K)``,
        ``mask (B, K)``.
    """

    def __init__(self, tau: float = 1.0, mode: str = "hard", learn_tau: bool = True,
                 laplacian: str = "combinatorial", reduce: str = "sum", self_loops: bool = False) -> None:
        super().__init__()
        if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
        for name, value, valid in (("mode", mode, ("hard", "soft")), ("laplacian", laplacian, ("combinatorial", "normalized")),
                                   ("reduce", reduce, ("sum", "mean"))):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {list(valid)}")
        self.mode, self.laplacian, self.reduce, self.self_loops = mode, laplacian, reduce, bool(self_loops)
        self._tau0 = float(tau)
        log_tau = torch.empty(())
        if learn_tau:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.log_tau.fill_(math.log(self._tau0))

    def extra_repr(self) -> str:
        return f"tau={self._tau0}, mode={self.mode}, laplacian={self.laplacian}, reduce={self.reduce}"

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, edge_index: Tensor | None = None, edge_weight: Tensor | None = None,
                batch: Tensor | None = None, *, adj: Tensor | None = None, mask: Tensor | None = None
                ) -> RenormPoolingOutput:
        if (edge_index is None) == (adj is None):
            raise ValueError("pass either edge_index (sparse batch) or adj (dense batch)")
        if adj is not None:
            if x.dim() != 3 or adj.dim() != 3 or adj.shape[1] != adj.shape[2] or adj.shape[:2] != x.shape[:2]:
                raise ValueError(f"dense input needs x (B, N, F) and adj (B, N, N); got {tuple(x.shape)}, {tuple(adj.shape)}")
            if mask is None:
                mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            out = self._dense(x, adj, mask.bool())
            return out
        from torch_geometric.utils import to_dense_adj, to_dense_batch

        if x.dim() != 2 or edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"sparse input needs x (N, F) and edge_index (2, E); got {tuple(x.shape)}, {tuple(edge_index.shape)}")
        if x.shape[0] == 0:
            raise ValueError("empty graph: x has 0 nodes")
        xd, fine_mask = to_dense_batch(x, batch)
        adj_d = to_dense_adj(edge_index, batch, edge_weight, max_num_nodes=xd.shape[1]).to(x.dtype)
        out = self._dense(xd, adj_d, fine_mask)
        cm = out.coarse_mask
        offsets = torch.cumsum(out.num_supernodes, 0) - out.num_supernodes
        b_idx, i_idx, j_idx = (out.adj * (cm[:, :, None] & cm[:, None, :])).nonzero(as_tuple=True)
        out.edge_weight = out.adj[b_idx, i_idx, j_idx]
        out.edge_index = torch.stack([i_idx + offsets[b_idx], j_idx + offsets[b_idx]])
        out.batch = torch.arange(cm.shape[0], device=x.device).repeat_interleave(out.num_supernodes)
        out.x = out.x[cm]
        out.assignment = (out.assignment + offsets[:, None])[fine_mask]
        out.adj = out.mask = None
        return out

    def _laplacian(self, adj: Tensor, mask: Tensor) -> Tensor:
        m = mask.to(adj.dtype)
        eye = torch.eye(adj.shape[-1], dtype=adj.dtype, device=adj.device)
        a = 0.5 * (adj + adj.transpose(1, 2)) * m[:, :, None] * m[:, None, :] * (1 - eye)
        if not torch.isfinite(a).all():
            raise ValueError("adjacency has NaN or infinite weights")
        if (a < 0).any():
            raise ValueError("adjacency has negative weights; diffusion needs nonnegative weights")
        deg = a.sum(-1)
        if self.laplacian == "combinatorial":
            return torch.diag_embed(deg) - a
        inv_sqrt = torch.where(deg > 0, deg.clamp_min(torch.finfo(adj.dtype).tiny).rsqrt(), torch.zeros_like(deg))
        return torch.diag_embed((deg > 0).to(adj.dtype)) - inv_sqrt[:, :, None] * a * inv_sqrt[:, None, :]

    def _dense(self, x: Tensor, adj: Tensor, mask: Tensor) -> RenormPoolingOutput:
        bsz, n, _ = x.shape
        lap = self._laplacian(adj, mask)
        tau = self.log_tau.to(x.dtype).exp()
        heat = torch.linalg.matrix_exp(-tau * lap)  # padded nodes are isolated: identity rows, masked below
        rep = zeta_components(heat.detach(), mask)  # (B, N) smallest member index, -1 on padding
        # contiguous supernode ids per graph, in order of their smallest member
        is_rep = torch.zeros(bsz, n + 1, dtype=torch.long, device=x.device)
        is_rep.scatter_(1, rep.clamp_min(-1) + 1, 1)
        is_rep = is_rep[:, 1:]
        ids = torch.cumsum(is_rep, 1) - 1
        assignment = torch.where(mask, torch.gather(ids, 1, rep.clamp_min(0)), torch.full_like(rep, -1))
        num = is_rep.sum(1)
        k = max(int(num.max()), 1)
        hard = torch.nn.functional.one_hot(assignment.clamp_min(0), k).to(x.dtype) * mask[:, :, None].to(x.dtype)
        if self.mode == "soft":
            spread = heat @ hard
            row = heat.sum(-1, keepdim=True)
            soft = spread / row.clamp_min(torch.finfo(x.dtype).tiny) * mask[:, :, None].to(x.dtype)
        else:
            soft = hard
        pooled = soft.transpose(1, 2) @ x
        if self.reduce == "mean":
            pooled = pooled / soft.sum(1)[:, :, None].clamp_min(torch.finfo(x.dtype).eps)
        adj_m = adj * (mask[:, :, None] & mask[:, None, :]).to(adj.dtype)
        coarse = soft.transpose(1, 2) @ adj_m.to(x.dtype) @ soft
        if not self.self_loops:
            coarse = coarse * (1 - torch.eye(k, dtype=x.dtype, device=x.device))
        coarse_mask = torch.arange(k, device=x.device)[None, :] < num[:, None]
        entropy, heat_capacity = self._thermo(lap, mask, tau)
        return RenormPoolingOutput(x=pooled, soft_assignment=soft, assignment=assignment, tau=tau, entropy=entropy,
                                   specific_heat=heat_capacity, num_supernodes=num, fine_mask=mask,
                                   coarse_mask=coarse_mask, adj=coarse, mask=coarse_mask)

    @staticmethod
    def _thermo(lap: Tensor, mask: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
        """Entropy and specific heat per graph; padded nodes are shifted above the spectrum and masked out."""
        n_real = mask.sum(1)
        shift = (lap.diagonal(dim1=1, dim2=2).abs().amax(1) * 2 + 1).detach()
        lam = torch.linalg.eigvalsh(lap + torch.diag_embed((~mask).to(lap.dtype) * shift[:, None]))
        real = torch.arange(lam.shape[1], device=lam.device)[None, :] < n_real[:, None]  # padded modes sort last
        logits = torch.where(real, -tau * lam, torch.full_like(lam, -torch.inf))
        p = torch.softmax(logits, -1)
        lam0 = torch.where(real, lam, torch.zeros_like(lam))
        mean = (p * lam0).sum(-1)
        var = (p * (lam0 - mean[:, None]) ** 2).sum(-1)
        log_z = torch.logsumexp(logits, -1)
        log_n = torch.log(n_real.to(lam.dtype).clamp_min(2.0))  # 1-node graphs: masked to 0 below
        one = n_real <= 1
        entropy = torch.where(one, torch.zeros_like(mean), (tau * mean + log_z) / log_n)
        heat = torch.where(one, torch.zeros_like(mean), tau * tau * var / log_n)
        return entropy, heat

    def unpool(self, x_coarse: Tensor, out: RenormPoolingOutput) -> Tensor:
        """Coarse-to-fine: ``S @ x_coarse`` (each node gets the heat-weighted mix of supernode features; a copy of its
        supernode's in hard mode). Sparse outputs take and return sparse node features."""
        if out.edge_index is not None:  # sparse: (K_total, F) -> (N, F)
            dense = x_coarse.new_zeros(*out.coarse_mask.shape, x_coarse.shape[-1])
            dense[out.coarse_mask] = x_coarse
            return (out.soft_assignment @ dense)[out.fine_mask]
        return out.soft_assignment @ x_coarse
