"""Input checks and small shared pieces of the tensor-network modules."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def check_size(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_states(x, n_sites: int, phys_dim: int, device: torch.device) -> Tensor:
    """Validate a batch of configurations ``(B, n_sites)`` with values in ``{0, ..., phys_dim - 1}``; return long."""
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ValueError(f"expected configurations of shape (batch, n_sites={n_sites}), got shape {tuple(x.shape)}")
    if x.shape[1] != n_sites:
        raise ValueError(f"the network has {n_sites} sites but the input has {x.shape[1]} columns")
    if x.shape[0] == 0:
        raise ValueError("empty batch: need at least one configuration")
    if x.is_floating_point():
        if not torch.isfinite(x).all():
            raise ValueError("configurations contain NaN or infinite values")
        if (x != x.round()).any():
            raise ValueError(f"configurations must be integers in {{0, ..., {phys_dim - 1}}}, got non-integer values")
    elif x.is_complex():
        raise TypeError("configurations must be real integers, got a complex tensor")
    x = x.to(device=device, dtype=torch.long)
    bad = (x < 0) | (x >= phys_dim)
    if bad.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"configuration values must lie in {{0, ..., {phys_dim - 1}}} (phys_dim={phys_dim}); "
                         f"found {int(x[i, j])} at row {i}, site {j} ({int(bad.sum())} bad value(s))")
    return x


def check_finite(module: nn.Module, log_z: Tensor, what: str) -> None:
    """Raise a clear error when the normalization is not finite, naming the non-finite parameters."""
    if bool(torch.isfinite(log_z).all()):
        return
    bad = [name for name, p in module.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise FloatingPointError(
            f"{what} parameters contain NaN or inf ({', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}); "
            "typically an optimizer step with too large a learning rate: lower it, clip gradients, or reload a checkpoint")
    raise FloatingPointError(f"{what} normalization is not finite although all parameters are (log Z = {log_z}); "
                             "the tensors may have collapsed to zero")


def sample_categorical(weights: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row of non-negative ``weights (B, k)`` (rows need not be normalized): ``(B,)`` long."""
    cdf = torch.cumsum(weights, dim=1)
    u = torch.rand(weights.shape[0], 1, generator=generator, device=weights.device, dtype=weights.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1).clamp_max(weights.shape[1] - 1)


def truncation_rank(s: Tensor, tol: float, max_bond: int | None) -> tuple[int, float]:
    """Smallest rank whose discarded weight ``sum_{j >= k} s_j^2 / sum s^2`` is ``<= tol``, capped by ``max_bond``.

    Returns ``(k, discarded weight)``; ``s`` sorted descending.
    """
    w = s.double() ** 2
    total = w.sum()
    if total <= 0:
        return 1, 0.0
    tail = (w.flip(0).cumsum(0).flip(0) / total)  # tail[k] = weight of s_k, s_{k+1}, ...
    k = int((tail > tol).sum())  # tail is decreasing: drop every s_j whose tail is within tolerance
    k = max(1, k)
    if max_bond is not None:
        k = min(k, int(max_bond))
    discarded = float(tail[k]) if k < s.numel() else 0.0
    return k, discarded


def check_tolerance(tol: float, max_bond: int | None) -> None:
    if not 0.0 <= float(tol) < 1.0:
        raise ValueError(f"tol is a discarded weight fraction in [0, 1), got {tol}")
    if max_bond is not None:
        check_size("max_bond", max_bond)


class BornMachine(nn.Module):
    r"""Shared part of the Born machines :math:`p(x) = \psi(x)^2 / Z` whose site/node tensors live in
    ``self.tensors`` (an ``nn.ParameterList``). Subclasses provide ``log_norm()`` (:math:`\log Z`) and
    ``log_amplitude_sq(x)`` (:math:`\log \psi(x)^2` of validated ``(B, n)`` configurations)."""

    @property
    def n_params(self) -> int:
        return sum(t.numel() for t in self.tensors)

    def _set_tensors(self, tensors: list[Tensor]) -> None:
        ref = self.tensors[0]
        self.tensors = nn.ParameterList([nn.Parameter(t.detach().to(ref.dtype).contiguous()) for t in tensors])

    def log_prob(self, x) -> Tensor:
        r"""Exact :math:`\log p(x)` of configurations ``x`` ``(B, n)`` with values in ``{0..d-1}``: ``(B,)``."""
        x = check_states(x, self.n_sites, self.phys_dim, self.tensors[0].device)
        log_z = self.log_norm()
        check_finite(self, log_z, type(self).__name__)
        return self.log_amplitude_sq(x) - log_z

    def forward(self, x) -> Tensor:
        return self.log_prob(x)
