"""Graph inference from spikes and community detection: plain functions on tensors, no Lightning.

- :func:`infer_couplings`: directed couplings by penalized maximum likelihood of the kinetic-Ising / Bernoulli
  GLM (optional low-rank latent input for hidden neurons); baselines :func:`correlation`,
  :func:`partial_correlation`, :func:`mean_field_couplings` (nMF / TAP); :func:`rowwise_lbfgs`, the optimizer of
  its fit (one L-BFGS per neuron, all in one pass over the data); :func:`coupling_standard_errors` and
  :func:`denoise_couplings`, the noise of those estimates and the couplings shrunk by it.
- :func:`find_communities`, :func:`community_hierarchy`, :func:`community_order`: communities of directed
  weighted graphs (the consensus of Leiden runs, :func:`leiden_consensus`, the default; one Leiden run; Leiden at
  its most stable resolution, :func:`stable_resolution`; Markov stability; spectral; ``lrg`` and ``gnn`` of the
  higher layers, imported when called).
"""
from dgrn.graph.baselines import BASELINES, correlation, mean_field_couplings, partial_correlation
from dgrn.graph.communities import (
    COMMUNITY_METHODS,
    community_hierarchy,
    community_order,
    find_communities,
    leiden_consensus,
    metagraph,
    register_community_method,
    relabel,
    stable_resolution,
)
from dgrn.graph.convert import as_adjacency, to_edge_index
from dgrn.graph.glm import glm_logits
from dgrn.graph.inference import (
    ConvergenceWarning, UninformativeFitWarning, binary_spikes, coupling_standard_errors, denoise_couplings,
    infer_couplings, select_latent_rank,
)
from dgrn.graph.optim import rowwise_lbfgs

__all__ = [
    "infer_couplings", "select_latent_rank", "coupling_standard_errors", "denoise_couplings", "ConvergenceWarning", "UninformativeFitWarning",
    "binary_spikes", "glm_logits", "correlation", "partial_correlation", "mean_field_couplings",
    "BASELINES", "find_communities", "community_hierarchy", "community_order", "metagraph", "relabel",
    "register_community_method", "stable_resolution", "leiden_consensus", "COMMUNITY_METHODS", "as_adjacency", "to_edge_index",
    "rowwise_lbfgs",
]
