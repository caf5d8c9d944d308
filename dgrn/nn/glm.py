"""Next-bin Bernoulli models of spike trains: the kinetic-Ising / Bernoulli GLM and the independent null."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgrn.graph.glm import glm_context, glm_logits, resolve_latent_delay

__all__ = ["BernoulliGLM", "IndependentBernoulli", "raised_cosine_basis"]


def _check_window(x: Tensor, n_neurons: int, context: int) -> None:
    if x.dim() != 3:
        raise ValueError(f"expected a batch of windows (B, L, N), got shape {tuple(x.shape)}")
    if x.shape[-1] != n_neurons:
        raise ValueError(f"model was built for {n_neurons} neurons, input has {x.shape[-1]}")
    if x.shape[1] <= context:
        raise ValueError(f"windows of {x.shape[1]} bins leave no target after the {context}-bin context: use window > {context}")


def _check_sample_window(x: Tensor, n_neurons: int, context: int) -> None:
    if x.dim() != 3 or x.shape[2] != n_neurons or x.shape[1] < context:
        raise ValueError(f"expected windows (B, >= {context}, {n_neurons}), got {tuple(x.shape)}")


def _next_bin_window(x: Tensor, keep: int) -> Tensor:
    """The last ``keep`` bins of windows ``x`` ``(B, W, N)`` followed by one placeholder bin (zeros): a causal net
    scores that bin from the window alone, so its prediction for the placeholder is the one for the bin after."""
    return torch.cat([x[:, x.shape[1] - keep:], x.new_zeros(x.shape[0], 1, x.shape[2])], 1)


def _bernoulli_draws(logits: Tensor, n_samples: int, generator: torch.Generator | None) -> Tensor:
    """``n_samples`` independent 0/1 draws of every neuron at ``sigmoid(logits)`` ``(B, N)``: ``(B, n_samples, N)``
    in the dtype of ``logits``."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    b, n = logits.shape
    u = torch.rand(b, n_samples, n, generator=generator, device=logits.device, dtype=logits.dtype)
    return (u < torch.sigmoid(logits)[:, None]).to(logits.dtype)


def raised_cosine_basis(history: int, n_basis: int, offset: float = 1.0, *, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None) -> Tensor:
    r"""Log-time-stretched raised-cosine basis of a spike-history filter (Pillow et al., Nature 2008).

    .. math::
        b_j(k) = \tfrac12\Big[1 + \cos\Big(\frac{\pi}{2}\,\frac{u(k) - \phi_j}{\Delta}\Big)\Big]
        \ \text{ for } |u(k) - \phi_j| \le 2\Delta \ \text{(else 0)},
        \qquad u(k) = \log(k + c),

    at lags :math:`k = 1..H` (bins), with centres :math:`\phi_j = u(1) + j\Delta`, :math:`j = 0..J-1`, and
    :math:`\Delta = [u(H) - u(1)] / (J - 1)`: the first function peaks at lag 1 and the last at lag ``H``, so
    together they span the ``H`` lags, narrow at short lags and wide at long ones (``J = 1``: one function peaking at
    lag 1 and reaching 0 at lag ``H + 1``, :math:`\Delta = [u(H + 1) - u(1)] / 2`). Neighbouring centres are a
    quarter period apart (Pillow's :math:`\pi/2` spacing in phase), so the functions tile: their sum is exactly 2
    for :math:`\phi_1 \le u(k) \le \phi_{J-2}` (``J >= 3``) and 1.5 at lags 1 and ``H`` (``J >= 2``; the
    halves of the end functions that would lie outside the lags are cut). A larger offset ``c`` makes the spacing
    more linear.

    Args:
        history: ``H >= 1``. n_basis: ``J``, ``1 <= J <= H``. offset: ``c >= 0``, in bins.

    Returns:
        ``(H, J)``; row ``k - 1`` is lag ``k`` (the layout of a plain GLM's lag weights, so ``basis @ coefficients``
        gives lag weights).
    """
    if history < 1 or not 1 <= n_basis <= history or offset < 0:
        raise ValueError(f"need history >= 1, 1 <= n_basis <= history and offset >= 0; got {history}, {n_basis}, "
                         f"{offset}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    # in float64 on the CPU (a few H x J numbers), then cast and moved
    lags = torch.arange(1, history + 2, dtype=torch.float64)  # 1..H+1 (H+1 only for J = 1)
    u = torch.log(lags + offset)
    delta = (u[-2] - u[0]) / (n_basis - 1) if n_basis > 1 else (u[-1] - u[0]) / 2
    centres = u[0] + delta * torch.arange(n_basis, dtype=torch.float64)
    phase = (u[:-1, None] - centres) * (math.pi / (2 * delta))  # (H, J)
    basis = 0.5 * (1 + torch.cos(phase.clamp(-math.pi, math.pi)))  # exactly 0 outside |phase| <= pi
    return basis.to(device=device, dtype=dtype)


class IndependentBernoulli(nn.Module):
    r"""Null model: every neuron fires independently with its own constant probability.

    .. math:: P(x_i(t) = 1) = \sigma(b_i)

    Args:
        n_neurons: ``N``.
        context: number of leading bins of a window that are not scored (set it to the context of the model
            it is compared with, so both are scored on the same bins).

    Shapes:
        input ``(B, L, N)`` 0/1 spikes; output logits ``(B, L - context, N)`` for bins ``context .. L-1``.
    """

    def __init__(self, n_neurons: int, context: int = 1) -> None:
        super().__init__()
        if n_neurons < 1 or context < 0:
            raise ValueError(f"need n_neurons >= 1 and context >= 0, got {n_neurons}, {context}")
        self.n_neurons, self.context = int(n_neurons), int(context)
        self.bias = nn.Parameter(torch.empty(n_neurons))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.bias, math.log(0.05 / 0.95))

    def forward(self, x: Tensor) -> Tensor:
        _check_window(x, self.n_neurons, self.context)
        b, length, n = x.shape
        return self.bias.to(x.dtype).expand(b, length - self.context, n)

    @torch.no_grad()
    def sample(self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws of the bin after each window ``x`` ``(B, W >= context, N)``: ``(B, n_samples, N)`` 0/1 in
        ``x``'s dtype (the neurons at their rates, whatever the window)."""
        _check_sample_window(x, self.n_neurons, self.context)
        return _bernoulli_draws(self.bias.to(x.dtype).expand(x.shape[0], -1), n_samples, generator)

    def coupling_matrix(self) -> None:
        return None


class BernoulliGLM(nn.Module):
    r"""Kinetic-Ising / Bernoulli generalized linear model of the next bin.

    .. math::
        \eta_i(t) = b_i + \sum_{k=1}^{H}\sum_j W^{(k)}_{ij}\, x_j(t-k)
                  + \big[U\, V^\top \bar x(t)\big]_i,
        \qquad P(x_i(t)=1 \mid \text{past}) = \sigma(\eta_i(t)),

    with ``W^{(k)}`` the ``N x N`` coupling at lag ``k`` (``W[i, j]`` = influence of ``j`` on ``i``), and an optional
    rank-``r`` latent input: :math:`\bar x(t) = \sum_{k=d}^{H_z} \kappa_{k-d}\, x(t-k)` is the population activity
    from lag ``d`` on (default ``d = H + 1``: the latent sees only the past beyond the coupling filter, so it cannot
    stand in for part of ``W``), filtered by a normalized exponential kernel :math:`\kappa_j \propto e^{-j/\tau}`
    (learned ``tau``), projected to ``r`` latent factors by ``V`` and fed back by ``U``. The latent term carries slow
    shared drive (for example from hidden neurons) through a low-rank channel so that it is not forced into the
    pairwise couplings.

    With ``n_basis = J`` the coupling filter is smooth and long at few parameters per pair: the lag weights are
    :math:`W^{(k)} = \sum_{j=1}^{J} b_j(k)\, C_j` with :math:`b_j` the log-time raised-cosine basis of
    :func:`raised_cosine_basis` over the ``H`` lags and :math:`C_j` learned ``N x N`` coefficients, so the coupling
    acts on the basis-filtered past, :math:`\sum_j C_j \sum_k b_j(k)\, x(t-k)` (``H = 40`` lags of 5 ms, 200 ms, at
    ``J = 6`` coefficients per pair instead of 40). The parameter ``weight`` then holds the coefficients
    ``(J, N, N)`` (``weight[j] = C_{j+1}``; the ``l1`` penalty of :class:`dgrn.models.NextBinModule` acts on them)
    and :meth:`lag_weights` gives the ``(H, N, N)`` lag weights; without a basis (the default) ``weight`` is the lag
    weights themselves, as before.

    Args:
        n_neurons: ``N``.
        history: ``H``, number of lags of the coupling filter.
        latent_rank: ``r`` (0 disables the latent input).
        latent_history: ``H_z``, bins of activity the latent input integrates.
        latent_tau: initial kernel time constant in bins.
        latent_delay: ``d``, the first lag of the latent input (default ``history + 1``; at most ``H_z``).
        n_basis: ``J`` raised-cosine functions spanning the ``history`` lags (``None`` or 0: one weight per lag).
        basis_offset: ``c`` of the basis, in bins (:func:`raised_cosine_basis`).

    Shapes:
        input ``(B, L, N)`` 0/1 spikes; output logits ``(B, L - context, N)`` for bins ``context .. L-1``, where
        ``context = max(history, latent_history if latent_rank else 0)``. ``sample(x, n_samples)``: windows
        ``(B, W >= context, N)`` -> ``(B, n_samples, N)`` draws of the bin after each window.
    """

    def __init__(
        self,
        n_neurons: int,
        history: int = 1,
        latent_rank: int = 0,
        latent_history: int = 20,
        latent_tau: float = 5.0,
        latent_delay: int | None = None,
        n_basis: int | None = None,
        basis_offset: float = 1.0,
    ) -> None:
        super().__init__()
        if n_neurons < 1 or history < 1 or latent_rank < 0 or latent_history < 1 or latent_tau <= 0:
            raise ValueError(
                "need n_neurons >= 1, history >= 1, latent_rank >= 0, latent_history >= 1 and latent_tau > 0; got "
                f"{n_neurons}, {history}, {latent_rank}, {latent_history}, {latent_tau}"
            )
        self.n_neurons, self.history, self.latent_rank = int(n_neurons), int(history), int(latent_rank)
        self.latent_history = int(latent_history) if latent_rank else 0
        self.latent_delay = resolve_latent_delay(history, latent_delay, latent_history) if latent_rank else None
        self.context = glm_context(self.history, self.latent_history)
        self._latent_tau0 = float(latent_tau)
        self.n_basis = int(n_basis) if n_basis else 0
        self.basis_offset = float(basis_offset)
        if self.n_basis:
            raised_cosine_basis(history, self.n_basis, basis_offset)  # checks the arguments
        self._basis_cache: dict[tuple, Tensor] = {}
        self.bias = nn.Parameter(torch.empty(n_neurons))
        # weight[k-1] = W^(k); with a basis, weight[j] = C_(j+1), the coefficients of the basis functions
        self.weight = nn.Parameter(torch.empty(self.n_basis or history, n_neurons, n_neurons))
        if latent_rank:
            self.latent_in = nn.Parameter(torch.empty(n_neurons, latent_rank))  # V
            self.latent_out = nn.Parameter(torch.empty(n_neurons, latent_rank))  # U
            self.log_latent_tau = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.bias, math.log(0.05 / 0.95))
        nn.init.zeros_(self.weight)
        if self.latent_rank:
            nn.init.normal_(self.latent_in, std=1.0 / math.sqrt(self.n_neurons))
            nn.init.zeros_(self.latent_out)
            nn.init.constant_(self.log_latent_tau, math.log(self._latent_tau0))

    def basis(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Tensor:
        """The raised-cosine basis ``(H, J)`` (:func:`raised_cosine_basis`), in ``dtype`` on ``device`` (default: those
        of ``weight``). Fixed, so not in the ``state_dict``: computed in float64 from the arguments once per dtype and
        device, then cast (a buffer cast from float32 to float64 would keep float32's rounding)."""
        if not self.n_basis:
            raise ValueError("this GLM has one weight per lag (n_basis = 0): it has no basis")
        dtype = self.weight.dtype if dtype is None else dtype
        device = self.weight.device if device is None else torch.device(device)
        key = (dtype, device)
        if key not in self._basis_cache:
            self._basis_cache[key] = raised_cosine_basis(self.history, self.n_basis, self.basis_offset, dtype=dtype,
                                                         device=device)
        return self._basis_cache[key]

    def lag_weights(self) -> Tensor:
        """The coupling filter ``(H, N, N)``, ``[k-1] = W^(k)``: ``weight`` itself, or ``basis @ coefficients``."""
        if not self.n_basis:
            return self.weight
        return torch.einsum("kj,jmn->kmn", self.basis(), self.weight)

    def coupling_matrix(self) -> Tensor:
        """Net coupling ``sum_k W^(k)``, ``(N, N)``: ``[i, j]`` = influence of ``j`` on ``i``."""
        return self.lag_weights().sum(0)

    def _basis_drive(self, x: Tensor) -> Tensor:
        r""":math:`\sum_j C_j \sum_k b_j(k) x(t-k)` for the scored bins, ``(B, L - context, N)``: the past filtered by
        the ``J`` basis functions (one depthwise temporal convolution), then one ``(B L, J N) x (J N, N)`` product."""
        b, length, n = x.shape
        scored, taps, nb = length - self.context, self.history, self.n_basis
        past = x[:, self.context - taps: length - 1].transpose(1, 2).reshape(b * n, 1, -1)
        kernel = self.basis(x.dtype, x.device).flip(0).T.unsqueeze(1)  # (J, 1, H): kernel[j, 0, m] = b_j(H - m)
        filtered = F.conv1d(past, kernel)  # (B N, J, L - context): position p sums b_j(k) x(context + p - k)
        filtered = filtered.view(b, n, nb, scored).permute(0, 3, 2, 1).reshape(b, scored, nb * n)
        return filtered @ self.weight.to(x.dtype).transpose(1, 2).reshape(nb * n, n)

    def forward(self, x: Tensor) -> Tensor:
        _check_window(x, self.n_neurons, self.context)
        latent = {}
        if self.latent_rank:
            latent = dict(latent_in=self.latent_in, latent_out=self.latent_out, log_latent_tau=self.log_latent_tau,
                          latent_history=self.latent_history, latent_delay=self.latent_delay)
        if not self.n_basis:
            return glm_logits(x, self.bias, self.weight, context=self.context, **latent)
        # bias and latent input from glm_logits (no lag weights: an empty filter), the coupling from the basis
        eta = glm_logits(x, self.bias, self.weight[:0], context=self.context, **latent)
        return eta + self._basis_drive(x)

    @torch.no_grad()
    def sample(self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws of the bin after each window ``x`` ``(B, W >= context, N)`` given it: ``(B, n_samples, N)``,
        0/1 in ``x``'s dtype (the neurons are independent given the past, at the rates ``forward`` gives a bin
        appended to the window)."""
        _check_sample_window(x, self.n_neurons, self.context)
        logits = self(_next_bin_window(x, self.context))[:, -1]
        return _bernoulli_draws(logits, n_samples, generator)

    def extra_repr(self) -> str:
        basis = f", n_basis={self.n_basis}, basis_offset={self.basis_offset:g}" if self.n_basis else ""
        return f"n_neurons={self.n_neurons}, history={self.history}, latent_rank={self.latent_rank}{basis}"
