"""Neural-network layers and models (plain ``torch.nn`` modules, no Lightning)."""
from __future__ import annotations

from torch import nn

from dgrn.nn.community import CommunityEncoder, DirectedGraphConv
from dgrn.nn.glm import BernoulliGLM, IndependentBernoulli, raised_cosine_basis
from dgrn.nn.gru import GRUBernoulli
from dgrn.nn.hmm import BernoulliHMM, SwitchingBernoulli
from dgrn.nn.multiscale import (MultiscaleBornMachine, build_hierarchy, choose_time_scales, nested_order,
                                unit_thresholds)
from dgrn.nn.renorm_pooling import DiffusionRenormPooling, RenormPoolingOutput

__all__ = [
    "BernoulliGLM", "BernoulliHMM", "CommunityEncoder", "DiffusionRenormPooling", "DirectedGraphConv", "GRUBernoulli",
    "IndependentBernoulli", "MultiscaleBornMachine", "NETWORKS", "RenormPoolingOutput", "SwitchingBernoulli",
    "build_hierarchy",
    "build_network", "choose_time_scales", "nested_order", "raised_cosine_basis", "unit_thresholds",
]

#: Architectures by name (the ``net.name`` of a model config): next-bin networks, and the community encoder
#: (its zoo entry records no ``n_neurons``: it serves graphs of any size).
NETWORKS: dict[str, type[nn.Module]] = {
    "glm": BernoulliGLM, "independent": IndependentBernoulli, "gru": GRUBernoulli, "hmm": BernoulliHMM,
    "community_encoder": CommunityEncoder, "dgrn": MultiscaleBornMachine,
}


def build_network(name: str, **kwargs) -> nn.Module:
    """Construct a registered network by name; unknown names list the valid ones."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid: {sorted(NETWORKS)}")
    return NETWORKS[name](**kwargs)
