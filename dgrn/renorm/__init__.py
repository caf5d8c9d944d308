"""Diffusion (Laplacian) renormalization: heat-kernel entropy and specific heat, coarse-graining at the scales of
specific-heat peaks, the RG flow of weighted (directed) metagraphs, and activity pooled along it.

Exact path (dense eigendecomposition) for small graphs, scalable path (block Lanczos deflation + stochastic Lanczos
quadrature + Krylov heat-kernel probes, never a dense N x N matrix) for large ones; ``method="auto"`` picks by size.
No Lightning or Hydra here: plain functions on tensors, arrays and scipy sparse matrices.
"""
from dgrn.renorm.coarse import coarse_grain, select_tau, tau_for_shrink, zeta_components
from dgrn.renorm.flow import Level, RGFlowStoppedEarly, pool_activity, pool_flow, rg_flow
from dgrn.renorm.graphs import contract, read_diffusion_graph
from dgrn.renorm.laplacian import laplacian, perron_vector
from dgrn.renorm.spectrum import EXACT_MAX_NODES, HeatKernel, Peak, find_peaks

__all__ = ["spectral_curves", "coarse_grain", "rg_flow", "Level", "RGFlowStoppedEarly", "HeatKernel", "Peak",
           "find_peaks", "select_tau", "tau_for_shrink", "zeta_components", "pool_activity", "pool_flow", "laplacian",
           "perron_vector", "read_diffusion_graph", "contract", "EXACT_MAX_NODES"]


def spectral_curves(graph, taus=None, **kernel_options) -> dict:
    r"""Entropy :math:`S(\tau)` (normalised by ln N) and specific heat :math:`C(\tau) = -dS/d\ln\tau` of the heat
    kernel of ``graph``: ``{"tau", "entropy", "specific_heat"}`` float64 tensors.

    ``graph``: dense tensor / array, scipy sparse matrix, or ``(edge_index, edge_weight, num_nodes)``; directed graphs
    use Chung's directed Laplacian by default. ``taus``: diffusion times > 0 (default: 64 log-spaced times spanning
    the spectrum). ``kernel_options``: :class:`HeatKernel` options (``laplacian``, ``method``, ``probes``, ...).
    A disconnected graph: the spectrum is the union of the components' spectra (S tends to
    ln(#components) / ln N at large tau).
    """
    import torch

    curves = HeatKernel(graph, **kernel_options).curves(taus)
    return {key: torch.from_numpy(curves[key]) for key in ("tau", "entropy", "specific_heat")}
