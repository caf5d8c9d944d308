"""Direction-aware GNN that maps (graph, node features) to a soft community assignment, trained without labels."""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter

from dgrn.graph.communities import leiden
from dgrn.graph.convert import as_adjacency, strongest_in_edges, to_edge_index
from dgrn.graph.features import node_features
from dgrn.graph.inference import denoise_couplings
from dgrn.graph.quality import directed_modularity

__all__ = ["DirectedGraphConv", "CommunityEncoder", "community_loss", "encoder_inputs", "gnn_communities"]


def _normalized_weights(edge_index: Tensor, edge_weight: Tensor, num_nodes: int, by: int) -> Tensor:
    """``w_e / sum |w|`` over the edges sharing endpoint ``edge_index[by]`` (in-edges of the target for ``by=1``,
    out-edges of the source for ``by=0``); nodes without such edges receive nothing."""
    norm = scatter(edge_weight.abs(), edge_index[by], 0, dim_size=num_nodes, reduce="sum")
    return edge_weight / norm.clamp_min(1e-12)[edge_index[by]]


class DirectedGraphConv(MessagePassing):
    r"""Message passing along both edge directions of a signed weighted directed graph.

    .. math::
        h_i' = \Theta_0 h_i + \Theta_{in} \sum_{j \to i} \hat w^{in}_{ji} h_j + \Theta_{out} \sum_{i \to j}
        \hat w^{out}_{ij} h_j,

    with weights normalized by the absolute in-strength of ``i`` (:math:`\hat w^{in}`) or out-strength of ``i``
    (:math:`\hat w^{out}`), signs kept (so inhibition between communities is a signal too); an isolated node keeps
    only :math:`\Theta_0 h_i`. As in Dir-GNN (Rossi et al. 2023), with separate weights per direction.

    Shapes: ``x`` ``(N, C_in)``, ``edge_index`` ``(2, E)`` (row 0 source), ``edge_weight`` ``(E,)`` ->
    ``(N, C_out)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(aggr="add")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.lin_root = nn.Linear(in_channels, out_channels)
        self.lin_in = nn.Linear(in_channels, out_channels, bias=False)
        self.lin_out = nn.Linear(in_channels, out_channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_root, self.lin_in, self.lin_out):
            lin.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor) -> Tensor:
        n = x.shape[0]
        w_in = _normalized_weights(edge_index, edge_weight, n, by=1).to(x.dtype)
        w_out = _normalized_weights(edge_index, edge_weight, n, by=0).to(x.dtype)
        agg_in = self.propagate(edge_index, x=self.lin_in(x), weight=w_in)
        agg_out = self.propagate(edge_index.flip(0), x=self.lin_out(x), weight=w_out)
        return self.lin_root(x) + agg_in + agg_out

    def message(self, x_j: Tensor, weight: Tensor) -> Tensor:
        return weight[:, None] * x_j


class CommunityEncoder(nn.Module):
    r"""GNN community encoder: ``(graph, node features) -> S`` ``(N, K_max)``, rows on the simplex.

    1. **Embedding.** ``num_layers`` :class:`DirectedGraphConv` blocks with residuals and LayerNorm map the node
       features to :math:`h_i \in \mathbb R^D`, then :math:`z_i = h_i / \lVert h_i\rVert`.
    2. **Refinement (parameter-free, per graph).** ``refine_steps`` steps of projected ascent on the vector
       modularity :math:`Q(Z)` of :func:`community_loss` over the positive edges, preconditioned by the degree:

       .. math:: z_i \leftarrow \frac{z_i + \eta\, g_i / d_i}{\lVert\cdot\rVert},\quad
          g_i = \sum_{j\to i} w_{ji} z_j + \sum_{i\to j} w_{ij} z_j
          - \frac{k^{in}_i \sum_j k^{out}_j z_j + k^{out}_i \sum_j k^{in}_j z_j}{m},

       :math:`d_i = k^{in}_i + k^{out}_i`, :math:`\eta` = ``refine_rate``. This is the Burer-Monteiro
       (low-rank) ascent of the semidefinite relaxation of modularity (Javanmard, Montanari & Ricci-Tersenghi,
       PNAS 2016) started from the GNN's embedding: the network learns the starting point, the ascent sharpens it
       on the graph at hand. It is unrolled in training, so gradients reach the GNN through it.
    3. **Assignment (parameter-free, per graph).** Up to ``max_communities`` seeds by farthest-point sampling on
       the sphere, starting from the node closest to the graph's mean direction; for every prefix of ``K`` seeds,
       ``n_iter`` soft k-means steps, :math:`S_{ic} = \mathrm{softmax}_c(\beta\, z_i^\top \mu_c)`,
       :math:`\mu_c \propto \sum_i S_{ic} z_i`; each graph keeps the ``K`` whose hard assignment has the highest
       directed modularity (:func:`~dgrn.graph.quality.directed_modularity`), so *the number of communities is
       decided per graph* (one community for a graph without positive edges). Unused slots have
       :math:`S_{ic} = 0` exactly.

    Because nothing is tied to community identities, one set of weights serves networks of any size and number of
    communities (it was trained on many, by :func:`community_loss`). Steps 2 and 3 are computed in float32 even
    under float16/bfloat16 autocast; graphs of a batch are separated by ``batch`` everywhere (seeds, means,
    degrees, normalizers).

    Args:
        in_channels: node feature size ``F`` (:func:`dgrn.graph.features.node_features` gives 24).
        hidden_channels: ``D``; num_layers: message-passing blocks; max_communities: ``K_max``.
        refine_steps, refine_rate: modularity ascent steps (0: none) and :math:`\eta`.
        beta: inverse temperature; n_iter: k-means steps.
        noise_threshold: how the graph is prepared for this encoder, not a part of the network: the couplings are
            shrunk by this many standard errors (:func:`dgrn.graph.denoise_couplings`) before
            :func:`encoder_inputs` reads them, in training and in ``find_communities(method="gnn")`` (0: the raw
            estimates, as ``community_encoder_kising`` was trained).

    Shapes:
        ``x`` ``(N, F)``, ``edge_index`` ``(2, E)``, ``edge_weight`` ``(E,)`` (signed; default 1), ``batch``
        ``(N,)`` (default one graph), ``mask`` ``(N,)`` bool (False = padding node: no messages, zero row in
        ``S``, never a seed). Returns ``S`` ``(N, K_max)`` and the refined unit embedding ``z`` ``(N, D)``.
    """

    def __init__(self, in_channels: int, hidden_channels: int = 64, num_layers: int = 4, max_communities: int = 16,
                 refine_steps: int = 10, refine_rate: float = 1.0, beta: float = 10.0, n_iter: int = 3,
                 noise_threshold: float = 0.0) -> None:
        super().__init__()
        if not noise_threshold >= 0:
            raise ValueError(f"noise_threshold must be >= 0 (standard errors), got {noise_threshold!r}")
        self.noise_threshold = float(noise_threshold)
        if in_channels < 1 or hidden_channels < 1 or num_layers < 1 or max_communities < 1 or n_iter < 0:
            raise ValueError("need in_channels, hidden_channels, num_layers, max_communities >= 1 and n_iter >= 0")
        if refine_steps < 0 or refine_rate <= 0 or beta <= 0:
            raise ValueError(f"need refine_steps >= 0, refine_rate > 0 and beta > 0, got {refine_steps}, "
                             f"{refine_rate}, {beta}")
        self.in_channels, self.hidden_channels, self.num_layers = in_channels, hidden_channels, num_layers
        self.max_communities, self.beta, self.n_iter = max_communities, beta, n_iter
        self.refine_steps, self.refine_rate = refine_steps, refine_rate
        self.lin_in = nn.Linear(in_channels, hidden_channels)
        self.convs = nn.ModuleList(DirectedGraphConv(hidden_channels, hidden_channels) for _ in range(num_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_channels) for _ in range(num_layers))
        self.lin_out = nn.Linear(hidden_channels, hidden_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin_in.reset_parameters()
        self.lin_out.reset_parameters()
        for conv, norm in zip(self.convs, self.norms):
            conv.reset_parameters()
            norm.reset_parameters()

    def embed(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor) -> Tensor:
        h = self.lin_in(x)
        for conv, norm in zip(self.convs, self.norms):
            h = h + F.gelu(norm(conv(h, edge_index, edge_weight)))
        return self.lin_out(h)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None, batch: Tensor | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}), got {tuple(x.shape)}")
        if n == 0:
            raise ValueError("empty graph: no nodes")
        if edge_weight is None:
            edge_weight = torch.ones(edge_index.shape[1], dtype=x.dtype, device=x.device)
        if not torch.isfinite(x).all() or not torch.isfinite(edge_weight).all():
            raise ValueError("node features or edge weights contain NaN or infinite values")
        batch = torch.zeros(n, dtype=torch.long, device=x.device) if batch is None else batch
        if mask is not None:
            mask = mask.bool()  # an integer mask would index edge columns instead of selecting them
            keep = mask[edge_index[0]] & mask[edge_index[1]]
            edge_index, edge_weight = edge_index[:, keep], edge_weight[keep]
            x = x * mask[:, None].to(x.dtype)
        h = self.embed(x, edge_index, edge_weight)
        with torch.autocast(device_type=h.device.type, enabled=False):
            num_graphs = int(batch.max()) + 1
            pos = edge_weight > 0
            graph = _PositiveGraph(*edge_index[:, pos], edge_weight[pos].float(), batch, num_graphs)
            z = self._refine(F.normalize(h.float(), dim=1, eps=1e-6), graph)
            valid = torch.ones(n, dtype=torch.bool, device=x.device) if mask is None else mask
            s = self._assign(z, graph, valid)
        return s, z

    def _refine(self, z: Tensor, graph: _PositiveGraph) -> Tensor:
        src, dst, w, batch = graph.src, graph.dst, graph.weight, graph.batch
        n, g = z.shape[0], graph.num_graphs
        k_in = scatter(w, dst, 0, dim_size=n, reduce="sum")
        k_out = scatter(w, src, 0, dim_size=n, reduce="sum")
        m = scatter(w, batch[src], 0, dim_size=g, reduce="sum").clamp_min(1e-12)[batch, None]
        step = self.refine_rate / (k_in + k_out).clamp_min(1e-12)[:, None]  # nodes without edges do not move
        for _ in range(self.refine_steps):  # a loop over ascent steps, not nodes
            agg = (scatter(w[:, None] * z[src], dst, 0, dim_size=n, reduce="sum")
                   + scatter(w[:, None] * z[dst], src, 0, dim_size=n, reduce="sum"))
            sum_in = scatter(k_in[:, None] * z, batch, 0, dim_size=g, reduce="sum")[batch]
            sum_out = scatter(k_out[:, None] * z, batch, 0, dim_size=g, reduce="sum")[batch]
            grad = agg - (k_in[:, None] * sum_out + k_out[:, None] * sum_in) / m
            z = F.normalize(z + step * grad, dim=1, eps=1e-6)
        return z

    def _assign(self, z: Tensor, graph: _PositiveGraph, valid: Tensor) -> Tensor:
        batch, num_graphs, k_max = graph.batch, graph.num_graphs, self.max_communities
        neg_inf = torch.finfo(z.dtype).min
        counts = scatter(valid.long(), batch, 0, dim_size=num_graphs, reduce="sum")
        mean_dir = F.normalize(scatter(z * valid[:, None], batch, 0, dim_size=num_graphs, reduce="sum"), dim=1)
        # farthest-point seeding, one seed per graph per step (a loop over K_max slots, not over nodes)
        score = (z * mean_dir[batch]).sum(1).masked_fill(~valid, neg_inf)
        mins = torch.full((z.shape[0],), 2.0, dtype=z.dtype, device=z.device)
        seeds = torch.zeros(num_graphs, k_max, z.shape[1], dtype=z.dtype, device=z.device)
        n_slots = min(k_max, int(counts.max()))  # one host sync for both loops
        for c in range(n_slots):
            _, idx = scatter_argmax(score, batch, num_graphs)
            seeds[:, c] = z[idx]
            dist = 1.0 - (z * seeds[batch, c]).sum(1)
            mins = torch.minimum(mins, dist)
            score = mins.masked_fill(~valid, neg_inf)
        best_q = torch.full((num_graphs,), -torch.inf, dtype=z.dtype, device=z.device)
        best = torch.zeros(z.shape[0], k_max, dtype=z.dtype, device=z.device)
        slots = torch.arange(k_max, device=z.device)
        for k in range(1, n_slots + 1):  # a loop over candidate K, batched over graphs
            active = (slots[None] < k) & (slots[None] < counts[:, None])
            s = self._kmeans(z, seeds, active, batch, valid)
            with torch.no_grad():
                hard = F.one_hot(s.argmax(1), k_max).to(z.dtype) * valid[:, None]
                q = directed_modularity(hard, torch.stack([graph.src, graph.dst]), graph.weight, batch, num_graphs)
            better = (q > best_q + 1e-6) & (counts >= k)
            best = torch.where(better[batch, None], s, best)
            best_q = torch.where(better, q, best_q)
        return best

    def _kmeans(self, z: Tensor, seeds: Tensor, active: Tensor, batch: Tensor, valid: Tensor) -> Tensor:
        neg_inf = torch.finfo(z.dtype).min
        mu = seeds
        for it in range(self.n_iter + 1):  # soft k-means refinement; the last pass only assigns
            logits = self.beta * torch.einsum("nd,nkd->nk", z, mu[batch])
            logits = logits.masked_fill(~active[batch], neg_inf)
            s = torch.softmax(logits, 1) * valid[:, None] * active[batch]
            if it < self.n_iter:
                mu = F.normalize(scatter(s[:, :, None] * z[:, None, :], batch, 0, dim_size=seeds.shape[0],
                                         reduce="sum"), dim=2, eps=1e-6)
                mu = torch.where(active[:, :, None], mu, seeds)
        return s


class _PositiveGraph(NamedTuple):
    """The positive edges of a batch of graphs (what the refinement and the model selection of K look at)."""

    src: Tensor
    dst: Tensor
    weight: Tensor
    batch: Tensor
    num_graphs: int


def scatter_argmax(score: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
    """Per graph, the maximum of ``score`` and the index of the node that attains it (lowest index on ties)."""
    best = scatter(score, batch, 0, dim_size=num_graphs, reduce="max")
    hit = score == best[batch]
    big = torch.full_like(batch, batch.numel())
    idx = scatter(torch.where(hit, torch.arange(batch.numel(), device=batch.device), big), batch, 0,
                  dim_size=num_graphs, reduce="min")
    return best, idx.clamp_max(batch.numel() - 1)


def community_loss(s: Tensor, z: Tensor, edge_index: Tensor, edge_weight: Tensor, batch: Tensor | None = None,
                   collapse_weight: float = 0.1) -> tuple[Tensor, dict[str, Tensor]]:
    r"""Unsupervised objective over the graphs of a batch (positive edges only):

    .. math:: \mathcal L = -\overline{Q_g(Z)} + \lambda\,\overline{R_g(S)}

    - :math:`Q_g(Z)` is the directed modularity (:func:`directed_modularity`) of the unit embeddings ``z`` used
      as a *vector* assignment: :math:`\frac1m[\sum_{j\to i} w_{ji} z_i^\top z_j - \frac1m
      (\sum_i k^{out}_i z_i)^\top(\sum_i k^{in}_i z_i)]`, the vector (Burer-Monteiro) relaxation of modularity.
      It is smooth in the embeddings (the seeding of the assignment is not), rewards aligned embeddings across
      edges and, through the null model, spreads unrelated nodes apart; the encoder's refinement ascends the same
      quantity, and its optimum puts communities on mutually distant directions, which the assignment separates.
    - :math:`R_g(S) = \frac{\sqrt{K_g}}{n_g}\lVert\sum_i S_i\rVert - 1` is DMoN's collapse regularizer
      (Tsitsulin et al. 2023) on the assignment, ``K_g`` the communities in use: 0 for equal sizes,
      :math:`\sqrt{K_g} - 1` when one community takes everything.

    Graphs without positive edges are left out of the means. Returns the loss and, detached, ``modularity`` (the
    directed modularity of ``S``, the quality that model selection watches), ``vector_modularity``, ``collapse``.
    """
    batch = torch.zeros(s.shape[0], dtype=torch.long, device=s.device) if batch is None else batch
    num_graphs = int(batch.max()) + 1
    pos = edge_weight > 0
    ei, ew = edge_index[:, pos], edge_weight[pos]
    q_vec = directed_modularity(z, ei, ew, batch, num_graphs)
    q = directed_modularity(s, ei, ew, batch, num_graphs)
    s32 = s.float()
    sizes = scatter(s32, batch, 0, dim_size=num_graphs, reduce="sum")  # (G, K)
    n_g = sizes.sum(1).clamp_min(1e-6)
    used = (sizes > 1e-6).sum(1).clamp_min(1).to(s32.dtype)
    collapse = used.sqrt() / n_g * sizes.norm(dim=1) - 1
    has_edges = scatter(torch.ones_like(ew, dtype=s32.dtype), batch[ei[0]], 0, dim_size=num_graphs, reduce="sum") > 0
    weight = has_edges.to(s32.dtype)
    denom = weight.sum().clamp_min(1.0)

    def mean(v: Tensor) -> Tensor:
        return (v * weight).sum() / denom

    loss = -mean(q_vec) + collapse_weight * mean(collapse)
    return loss, {"modularity": mean(q).detach(), "vector_modularity": mean(q_vec).detach(),
                  "collapse": mean(collapse).detach()}


def encoder_inputs(graph: Any, spikes: Any, max_in_degree: int = 16,
                   noise_threshold: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, edge_index, edge_weight)`` for :class:`CommunityEncoder` from a coupling graph and its spikes: node
    features of :func:`dgrn.graph.features.node_features` (on the whole graph) and the ``max_in_degree`` strongest
    in-edges of each node (signed; self-loops dropped) to pass messages on, after the couplings are shrunk by
    ``noise_threshold`` standard errors (:func:`dgrn.graph.denoise_couplings`; 0: as given). Training and inference
    both use it."""
    return _inputs_of(_shrunk_graph(graph, spikes, noise_threshold), spikes, max_in_degree)


def _inputs_of(adj, spikes: Any, max_in_degree: int) -> tuple[Tensor, Tensor, Tensor]:
    x = node_features(spikes, adj)
    edge_index, edge_weight = to_edge_index(strongest_in_edges(adj, max_in_degree))
    return x, edge_index, edge_weight


def _shrunk_graph(graph: Any, spikes: Any, noise_threshold: float):
    """The coupling graph (scipy CSR, no self-loops) shrunk by ``noise_threshold`` standard errors of ``spikes``."""
    adj = as_adjacency(graph)
    if noise_threshold:
        adj = as_adjacency(denoise_couplings(adj.toarray(), spikes, noise_threshold))
    adj.setdiag(0)
    adj.eliminate_zeros()
    return adj


@torch.no_grad()
def gnn_communities(adj, encoder: CommunityEncoder | None = None, spikes: Any = None,
                     max_in_degree: int = 16, polish: bool = True, noise_threshold: float = 1.5) -> Tensor:
    """``find_communities(graph, method="gnn", encoder=..., spikes=...)``: hard labels of a pretrained encoder.

    The encoder sees the graph as its own ``noise_threshold`` says (:func:`encoder_inputs`) and passes messages on
    each node's ``max_in_degree`` strongest in-edges only. With ``polish`` its partition is then the starting
    point of Leiden's moves (:func:`dgrn.graph.communities.leiden`, ``initial``) on the whole graph less its noise
    (positive part; couplings shrunk by ``noise_threshold`` standard errors, as :func:`dgrn.graph.find_communities`
    passes its own), which only raises the partition's modularity there. On the 15 kinetic-Ising cell groups of
    the community grid (10,000 bins, seeds 0-2) this raises the mean AMI of ``community_encoder_grid`` from 0.705
    to 0.739 and of ``community_encoder_kising`` from 0.625 to 0.722 (docs: benchmarks/communities)."""
    if encoder is None:
        raise ValueError("method 'gnn' needs encoder=<CommunityEncoder>, e.g. "
                         "dgrn.zoo.load_pretrained('community_encoder_kising')")
    if spikes is None:
        raise ValueError("method 'gnn' needs spikes=<the (T, N) recording the graph was inferred from> "
                         "for its node features")
    encoder_graph = _shrunk_graph(adj, spikes, encoder.noise_threshold)
    x, edge_index, edge_weight = _inputs_of(encoder_graph, spikes, max_in_degree)
    p = next(encoder.parameters())
    s, _ = encoder(x.to(p), edge_index.to(p.device), edge_weight.to(p))
    labels = s.argmax(1).cpu()
    if polish:
        seen = encoder_graph if noise_threshold == encoder.noise_threshold else _shrunk_graph(adj, spikes,
                                                                                             noise_threshold)
        if seen.nnz and seen.max() > 0:  # Leiden needs a positive edge; without one the encoder's labels stand
            labels = torch.from_numpy(leiden(seen, initial=labels.numpy())).long()
    return labels
