"""The kinetic-Ising / Bernoulli-GLM equation as a plain function of tensors.

Shared by :func:`dgrn.graph.infer_couplings` (maximum-likelihood graph inference) and
:class:`dgrn.nn.BernoulliGLM` (the trainable module), so both fit exactly the same model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["glm_context", "glm_logits", "latent_kernel"]


def glm_context(history: int, latent_history: int = 0) -> int:
    """Bins of history the model needs before its first scored bin."""
    return max(int(history), int(latent_history))


def latent_kernel(log_tau: Tensor, latent_history: int, dtype: torch.dtype) -> Tensor:
    r"""Normalized exponential kernel :math:`\kappa_k \propto e^{-(k-1)/\tau}`, ``k = 1..H_z``, shape ``(H_z,)``."""
    lags = torch.arange(latent_history, dtype=dtype, device=log_tau.device)
    return torch.softmax(-lags / log_tau.exp().to(dtype), 0)


def glm_logits(
    x: Tensor,
    bias: Tensor,
    weight: Tensor,
    *,
    latent_in: Tensor | None = None,
    latent_out: Tensor | None = None,
    log_latent_tau: Tensor | None = None,
    latent_history: int = 0,
    context: int | None = None,
) -> Tensor:
    r"""Logits of the next-bin Bernoulli GLM for every bin after the context.

    .. math::
        \eta_i(t) = b_i + \sum_{k=1}^{H}\sum_j W^{(k)}_{ij}\, x_j(t-k)
                  + \Big[U \sum_{k=1}^{H_z} \kappa_k\, V^\top x(t-k)\Big]_i

    Args:
        x: ``(B, L, N)`` spikes (0/1, any float dtype; parameters are cast to it).
        bias: ``(N,)``; weight: ``(H, N, N)`` with ``weight[k-1] = W^(k)``.
        latent_in, latent_out: ``V``, ``U`` of shape ``(N, r)`` (both or neither); ``log_latent_tau``: scalar
            ``log tau`` of the kernel :func:`latent_kernel`; ``latent_history``: ``H_z``.
        context: first scored bin (default :func:`glm_context`); must be at least ``H`` and ``H_z``.

    Returns:
        ``(B, L - context, N)`` logits of bins ``context .. L-1``.

    Cost: one ``(B L, N) x (N, N)`` product per lag (a loop over the few lags, never over neurons) and, for the
    latent, one ``(B L, N) x (N, r)`` product followed by a depthwise temporal convolution over the ``r`` factors
    (the kernel is separable, so the ``N x N`` latent coupling is never formed).
    """
    history = weight.shape[0]
    if context is None:
        context = glm_context(history, latent_history if latent_in is not None else 0)
    length = x.shape[1]
    dtype = x.dtype
    eta = bias.to(dtype)
    for k in range(1, history + 1):  # loop over lags only
        eta = eta + x[:, context - k: length - k] @ weight[k - 1].to(dtype).T
    if latent_in is not None:
        if latent_out is None or log_latent_tau is None or latent_history < 1:
            raise ValueError("the latent input needs latent_in, latent_out, log_latent_tau and latent_history >= 1")
        rank = latent_in.shape[1]
        kappa = latent_kernel(log_latent_tau, latent_history, dtype)
        proj = x[:, context - latent_history: length - 1] @ latent_in.to(dtype)  # (B, L - context + H_z - 1, r)
        # cross-correlation with the flipped kernel: output position t' sums kappa_k * proj at lag k
        filt = kappa.flip(0).expand(rank, 1, latent_history)
        z = F.conv1d(proj.transpose(1, 2), filt, groups=rank).transpose(1, 2)  # (B, L - context, r)
        eta = eta + z @ latent_out.to(dtype).T
    return eta
