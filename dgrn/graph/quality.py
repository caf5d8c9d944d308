"""Partition quality of (batches of) directed weighted graphs, for soft or hard assignments."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["directed_modularity"]


def directed_modularity(
    assign: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None, batch: Tensor | None = None,
    num_graphs: int | None = None, resolution: float = 1.0,
) -> Tensor:
    r"""Directed modularity (Leicht & Newman 2008) of a soft assignment, per graph of a batch.

    .. math::
        Q_g = \frac{1}{m_g}\Big[\mathrm{tr}(S^\top A S) - \frac{\gamma}{m_g}\,(S^\top k^{out})^\top (S^\top k^{in})\Big]

    with ``A`` the (non-negative) weighted adjacency of graph ``g``, ``m_g`` its total weight. Everything is
    a sum over the edges and nodes *of that graph* (``batch`` assigns nodes to graphs), so graphs of a batch never
    see each other's degrees or normalizers (unlike PyG's ``DMoNPooling``, whose ``m`` spans the batch).
    A graph with no edges has ``Q_g = 0`` (and no gradient). Computed in float32 or wider, also under autocast.

    Args:
        assign: ``(N, K)`` rows of soft (or one-hot) assignments; rows of padding nodes may be all zero.
        edge_index: ``(2, E)`` source, target; edge_weight: ``(E,)`` non-negative (default 1).
        batch: ``(N,)`` graph of each node (default: one graph).

    Returns:
        ``(G,)`` modularity of each graph.
    """
    dtype = torch.promote_types(assign.dtype, torch.float32)
    s = assign.to(dtype)
    n = s.shape[0]
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=s.device)
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if n else 0
    w = torch.ones(edge_index.shape[1], dtype=dtype, device=s.device) if edge_weight is None else edge_weight.to(dtype)
    if (w < 0).any():
        raise ValueError("directed_modularity needs non-negative edge weights")
    src, dst = edge_index
    k_out = torch.zeros(n, dtype=dtype, device=s.device).index_add_(0, src, w)
    k_in = torch.zeros(n, dtype=dtype, device=s.device).index_add_(0, dst, w)
    m = torch.zeros(num_graphs, dtype=dtype, device=s.device).index_add_(0, batch[src], w)
    inside = torch.zeros(num_graphs, dtype=dtype, device=s.device).index_add_(
        0, batch[src], w * (s[src] * s[dst]).sum(1))
    k = s.shape[1]
    out_c = torch.zeros(num_graphs, k, dtype=dtype, device=s.device).index_add_(0, batch, s * k_out[:, None])
    in_c = torch.zeros(num_graphs, k, dtype=dtype, device=s.device).index_add_(0, batch, s * k_in[:, None])
    safe_m = torch.where(m > 0, m, torch.ones_like(m))
    q = (inside - resolution * (out_c * in_c).sum(1) / safe_m) / safe_m
    return torch.where(m > 0, q, torch.zeros_like(q))
