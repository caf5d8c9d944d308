"""The kinetic-Ising / Bernoulli-GLM equation as a plain function of tensors.

Shared by :func:`dgrn.graph.infer_couplings` (maximum-likelihood graph inference) and
:class:`dgrn.nn.BernoulliGLM` (the trainable module), so both fit exactly the same model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["glm_context", "glm_logits", "latent_kernel", "resolve_latent_delay"]


def glm_context(history: int, latent_history: int = 0) -> int:
    """Bins of history the model needs before its first scored bin."""
    return max(int(history), int(latent_history))


def resolve_latent_delay(history: int, delay: int | None = None, latent_history: int | None = None) -> int:
    """First lag the latent input sees: ``delay``, by default ``history + 1`` (the lags after the coupling filter);
    checked to be at least 1 and, given ``latent_history``, at most it.

    A latent input that also sees lags ``1..H`` is a low-rank term of the coupling matrices themselves; it then takes
    over the low-rank (community) part of the true couplings instead of the hidden drive, and the returned ``W`` loses
    it (bench/graph.py, kinetic Ising at 50 % observed: a rank-2 latent from lag 1 lowered the mean edge AUROC below
    plain ML's; from lag 2 it raised it).
    """
    delay = int(history) + 1 if delay is None else delay
    if isinstance(delay, bool) or int(delay) != delay or delay < 1:
        raise ValueError(f"latent_delay must be an integer >= 1, got {delay!r}")
    if latent_history is not None and delay > latent_history:
        raise ValueError(f"latent_history ({latent_history}) must be at least the latent input's first lag "
                         f"latent_delay ({int(delay)}; default history + 1)")
    return int(delay)


def latent_kernel(log_tau: Tensor, n_taps: int, dtype: torch.dtype) -> Tensor:
    r"""Normalized exponential kernel :math:`\kappa_j \propto e^{-j/\tau}`, ``j = 0..n_taps-1`` (lags
    ``d..H_z`` of the latent input, nearest first), shape ``(n_taps,)``."""
    lags = torch.arange(n_taps, dtype=dtype, device=log_tau.device)
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
    latent_delay: int | None = None,
    context: int | None = None,
) -> Tensor:
    r"""Logits of the next-bin Bernoulli GLM for every bin after the context.

    .. math::
        \eta_i(t) = b_i + \sum_{k=1}^{H}\sum_j W^{(k)}_{ij}\, x_j(t-k)
                  + \Big[U \sum_{k=d}^{H_z} \kappa_{k-d}\, V^\top x(t-k)\Big]_i

    Args:
        x: ``(B, L, N)`` spikes (0/1, any float dtype; parameters are cast to it).
        bias: ``(N,)``; weight: ``(H, N, N)`` with ``weight[k-1] = W^(k)``.
        latent_in, latent_out: ``V``, ``U`` of shape ``(N, r)`` (both or neither); ``log_latent_tau``: scalar
            ``log tau`` of the kernel :func:`latent_kernel`; ``latent_history``: ``H_z``; ``latent_delay``: ``d``,
            the first lag of the latent input (default ``H + 1``, see :func:`resolve_latent_delay`; ``1 <= d <= H_z``).
        context: first scored bin (default :func:`glm_context`); must be at least ``H`` and ``H_z``.

    Returns:
        ``(B, L - context, N)`` logits of bins ``context .. L-1``.

    Cost: one ``(B L, N) x (N, N)`` product per lag (a loop over the few lags, never over neurons) and, for the
    latent, one ``(B L, N) x (N, r)`` product followed by a depthwise temporal convolution over the ``r`` factors
    (the kernel is separable, so the ``N x N`` latent coupling is never formed).
    """
    history = weight.shape[0]
    needed = glm_context(history, latent_history if latent_in is not None else 0)
    context = needed if context is None else context
    if context < needed:
        raise ValueError(f"context {context} is shorter than the model's {needed} bins of history")
    length = x.shape[1]
    dtype = x.dtype
    eta = bias.to(dtype)
    for k in range(1, history + 1):  # loop over lags only
        eta = eta + x[:, context - k: length - k] @ weight[k - 1].to(dtype).T
    if latent_in is not None:
        if latent_out is None or log_latent_tau is None or latent_history < 1:
            raise ValueError("the latent input needs latent_in, latent_out, log_latent_tau and latent_history >= 1")
        delay = resolve_latent_delay(history, latent_delay, latent_history)
        rank, taps = latent_in.shape[1], latent_history - delay + 1
        kappa = latent_kernel(log_latent_tau, taps, dtype)
        proj = x[:, context - latent_history: length - delay] @ latent_in.to(dtype)  # (B, L - context + taps - 1, r)
        # cross-correlation with the flipped kernel: output position t' sums kappa at lag k times proj at lag k
        filt = kappa.flip(0).expand(rank, 1, taps)
        z = F.conv1d(proj.transpose(1, 2), filt, groups=rank).transpose(1, 2)  # (B, L - context, r)
        eta = eta + z @ latent_out.to(dtype).T
    return eta
