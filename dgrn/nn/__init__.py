"""Neural-network layers and models (plain ``torch.nn`` modules, no Lightning)."""
from __future__ import annotations

from torch import nn

from dgrn.nn.glm import BernoulliGLM, IndependentBernoulli
from dgrn.nn.gru import GRUBernoulli

__all__ = ["BernoulliGLM", "GRUBernoulli", "IndependentBernoulli", "NETWORKS", "build_network"]

#: Next-bin network architectures by name (the ``net.name`` of a model config).
NETWORKS: dict[str, type[nn.Module]] = {
    "glm": BernoulliGLM, "independent": IndependentBernoulli, "gru": GRUBernoulli,
}


def build_network(name: str, **kwargs) -> nn.Module:
    """Construct a registered network by name; unknown names list the valid ones."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid: {sorted(NETWORKS)}")
    return NETWORKS[name](**kwargs)
