r"""A binary MERA Born machine over a chain, with an exact likelihood from its full state vector."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dgrn.tn._common import check_finite, check_size, check_states

__all__ = ["MERA", "MAX_MERA_STATES"]

#: largest number of amplitudes the exact contraction may hold at any layer (2**24 = 16.8 million)
MAX_MERA_STATES = 2**24


def _isometry(generator: Tensor, base: Tensor, columns: int) -> Tensor:
    """``base @ exp(G - G^T)``, first ``columns`` columns: a smooth map from an unconstrained square ``generator``
    onto the isometries (exact orthonormal columns), equal to ``base``'s columns at ``G = 0``."""
    return (base @ torch.linalg.matrix_exp(generator - generator.transpose(-1, -2)))[..., :columns]


def _uniform_first_basis(k: int, like: Tensor) -> Tensor:
    """An orthogonal ``(k, k)`` matrix whose first column is the uniform vector (a Householder reflection), in the
    dtype and on the device of ``like``."""
    v = torch.full((k,), 1.0 / math.sqrt(k), dtype=like.dtype, device=like.device)
    v[0] -= 1.0
    v = v / v.norm()
    return torch.eye(k, dtype=like.dtype, device=like.device) - 2.0 * torch.outer(v, v)


def _apply(state: Tensor, mat: Tensor, dims: list[int], start: int, count: int) -> Tensor:
    """Apply ``mat (out, prod(dims[start:start+count]))`` to the sites ``start..start+count-1`` of the flat state."""
    before = math.prod(dims[:start])
    after = math.prod(dims[start + count:])
    return (mat @ state.reshape(before, mat.shape[1], after)).reshape(-1)


class MERA(nn.Module):
    r"""Binary multiscale entanglement renormalization ansatz (Vidal 2007) as a Born machine on ``n`` sites.

    Coarse-graining layer :math:`\ell` acts on a chain of :math:`m_\ell` sites of dimension :math:`d_\ell`
    (:math:`m_0 = n`, :math:`d_0` = ``phys_dim``): orthogonal disentanglers :math:`U` (:math:`d_\ell^2 \times
    d_\ell^2`) on the pairs :math:`(1,2), (3,4), \dots`, then isometries :math:`W` (:math:`d_\ell^2 \to
    d_{\ell+1} = \min(D, d_\ell^2)`) on the pairs :math:`(0,1), (2,3), \dots`, so
    :math:`m_{\ell+1} = m_\ell / 2`; layers stop when the chain has at most ``top_sites`` sites or an odd count,
    and a top tensor holds the state of the remaining sites (``n`` = top sites times a power of 2, e.g. 16, 20 or
    24, gives a deep network; an ``n`` that cannot be halved once is refused). Generating the state top down,

    .. math:: |\psi\rangle = \prod_\ell \Big(\bigotimes U\Big)\Big(\bigotimes W\Big)\, |T\rangle,
        \qquad p(x) = \psi(x)^2 / \|\psi\|^2,

    every :math:`U, W` is an exact isometry (a fixed orthogonal basis times the exponential of a skew-symmetric
    matrix built from an unconstrained parameter: smooth, unlike a QR factor whose signs flip), so the state is
    normalized by construction; :math:`\|\psi\|^2` is still contracted, to keep rounding out of
    :math:`\log p`. **Exact, but exponential in n**: the likelihood contracts the whole state vector,
    :math:`d^n` amplitudes (a MERA's causal cones are wider than a tree's, and Ferris & Vidal's sequential
    sampling would be the route to large ``n``), so ``n`` is limited by :data:`MAX_MERA_STATES` amplitudes at any
    layer: 24 binary sites (there, autograd keeps about ``n`` state-sized intermediates: a forward and backward pass
    took 17 s and 2.4 GB on one CPU thread). One contraction serves the whole batch. Initialized near a tree
    (disentanglers near the identity) and near the uniform distribution (at ``init_noise=0`` exactly: channel 0 of
    every coarse site stands for the uniform superposition of the binary sites below it, and the top tensor starts
    near channel 0 everywhere). ``n_params`` counts the entries of the network's tensors
    (:math:`U`, :math:`W`, top), as for :class:`MPS` and :class:`TTN`, not the square generators behind them.
    Real only: the disentanglers and isometries are orthogonal (exponentials of skew-symmetric matrices), so a
    MERA cast to a complex dtype refuses to contract (a ``TypeError``); complex Born machines are :class:`MPS` and
    :class:`TTN` with ``dtype=torch.complex128``.

    Args:
        n_sites: ``n``. bond_dim: ``D``, the largest dimension of a coarse site. phys_dim: values per site.
        top_sites: coarse-grain while the chain has more sites than this (and an even count).
        init_noise: scale of the random part of the initial parameters.

    Shapes:
        ``log_prob(x)``: ``(B, n)`` integers in ``{0..d-1}`` -> ``(B,)``; ``sample(B)`` -> ``(B, n)`` long;
        ``state()`` -> ``(d^n,)`` amplitudes, site 0 the most significant digit.
    """

    def __init__(self, n_sites: int, bond_dim: int, phys_dim: int = 2, *, top_sites: int = 4,
                 init_noise: float = 0.3) -> None:
        super().__init__()
        self.n_sites = check_size("n_sites", n_sites, 2)
        self.bond_dim = check_size("bond_dim", bond_dim)
        self.phys_dim = check_size("phys_dim", phys_dim, 2)
        self.top_sites = check_size("top_sites", top_sites)
        self.init_noise = float(init_noise)
        self.layer_dims: list[tuple[int, int, int]] = []  # (sites, site dim, coarse site dim) of every layer
        sites, dim = self.n_sites, self.phys_dim
        largest = dim**sites
        while sites > self.top_sites and sites % 2 == 0:
            coarse = min(self.bond_dim, dim * dim)
            self.layer_dims.append((sites, dim, coarse))
            sites, dim = sites // 2, coarse
            largest = max(largest, dim**sites)
        self.top_shape = (dim,) * sites
        if not self.layer_dims:
            raise ValueError(f"n_sites={self.n_sites} with top_sites={self.top_sites} gives no coarse-graining layer "
                             "(the chain is halved only while its length is even and above top_sites): that would "
                             "be a dense state vector, not a MERA")
        if largest > MAX_MERA_STATES:
            raise ValueError(f"the exact MERA likelihood would hold {largest:.3g} amplitudes (> {MAX_MERA_STATES}): "
                             f"n_sites={self.n_sites} with phys_dim={self.phys_dim} is too large for the full state "
                             "vector; use MPS or TTN")
        # square generators of the disentanglers and isometries (k = d_l^2 rows each)
        self.disentanglers = nn.ParameterList(
            nn.Parameter(torch.empty((sites - 2) // 2, dim * dim, dim * dim)) for sites, dim, _ in self.layer_dims)
        self.isometries = nn.ParameterList(
            nn.Parameter(torch.empty(sites // 2, dim * dim, dim * dim)) for sites, dim, _ in self.layer_dims)
        self.top = nn.Parameter(torch.empty(math.prod(self.top_shape)))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Disentanglers near the identity, isometries whose first channel is the uniform superposition, top
        tensor near its first basis state: close to the uniform distribution, a tree at zero noise."""
        for gen in (*self.disentanglers, *self.isometries):
            gen.copy_(0.5 * self.init_noise * torch.randn_like(gen) / math.sqrt(gen.shape[-1]))
        self.top.copy_(self.init_noise * torch.randn_like(self.top) / math.sqrt(self.top.numel()))
        self.top[0] += 1.0

    @property
    def n_params(self) -> int:
        """Entries of the network's tensors: disentanglers ``k x k``, isometries ``k x d_(l+1)``, top tensor."""
        per_layer = [(sites - 2) // 2 * (dim * dim) ** 2 + sites // 2 * dim * dim * coarse
                     for sites, dim, coarse in self.layer_dims]
        return sum(per_layer) + self.top.numel()

    @property
    def bond_dims(self) -> list[int]:
        """Dimension of the coarse sites made by each layer, bottom up."""
        return [coarse for _, _, coarse in self.layer_dims]

    def isometry_matrices(self) -> tuple[list[Tensor], list[Tensor]]:
        """The layers' disentanglers ``(count, k, k)`` and isometries ``(count, k, d_(l+1))``, bottom up. The bottom
        isometries start (at zero generator) with their first channel the uniform superposition of their two
        sites, the higher ones with it the first channel of both sites below, so channel 0 all the way up is the
        uniform distribution."""
        if self.top.is_complex():
            raise TypeError(f"MERA is real-only (orthogonal disentanglers and isometries from skew-symmetric "
                            f"generators), but its parameters are {self.top.dtype}: keep it in float32/float64, or use "
                            "MPS / TTN with dtype=torch.complex128 for a complex Born machine")
        us, ws = [], []
        for i, (_, dim, coarse) in enumerate(self.layer_dims):
            eye = torch.eye(dim * dim, dtype=self.top.dtype, device=self.top.device)
            us.append(_isometry(self.disentanglers[i], eye, dim * dim))
            ws.append(_isometry(self.isometries[i], _uniform_first_basis(dim * dim, self.top) if i == 0 else eye,
                                coarse))
        return us, ws

    def state(self) -> Tensor:
        """The amplitudes :math:`\\psi(x)` of every configuration, ``(d^n,)`` (unit norm up to rounding)."""
        psi = self.top / self.top.norm()
        dims = list(self.top_shape)
        us, ws = self.isometry_matrices()
        for (sites, dim, _), u, w in zip(reversed(self.layer_dims), reversed(us), reversed(ws)):
            for k in range(sites // 2 - 1, -1, -1):  # right to left: the sites left of k keep their positions
                psi = _apply(psi, w[k], dims, k, 1)
                dims[k:k + 1] = [dim, dim]
            for j in range(u.shape[0]):
                psi = _apply(psi, u[j], dims, 2 * j + 1, 2)
        return psi

    def _place_values(self, device: torch.device) -> Tensor:
        """``d^(n-1), ..., d, 1``: configuration <-> index in the state vector (site 0 most significant)."""
        return self.phys_dim ** torch.arange(self.n_sites - 1, -1, -1, device=device)

    def log_prob(self, x) -> Tensor:
        r"""Exact :math:`\log p(x)` of configurations ``x`` ``(B, n)``: ``(B,)``. Contracted in the parameters' dtype
        even under autocast (a low-precision state vector would lose the small probabilities)."""
        x = check_states(x, self.n_sites, self.phys_dim, self.top.device)
        with torch.autocast(device_type=self.top.device.type, enabled=False):
            psi = self.state()
        log_z = (psi * psi).sum().log()
        check_finite(self, log_z, "MERA")
        amp = psi[(x * self._place_values(x.device)).sum(1)]
        return (amp * amp).clamp_min(torch.finfo(psi.dtype).tiny).log() - log_z

    def forward(self, x) -> Tensor:
        return self.log_prob(x)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent exact samples ``(n, n_sites)`` long, drawn from the full distribution."""
        n = check_size("n", n)
        with torch.autocast(device_type=self.top.device.type, enabled=False):
            psi = self.state()
        idx = torch.multinomial((psi * psi).double(), n, replacement=True, generator=generator)
        return (idx[:, None] // self._place_values(idx.device)) % self.phys_dim

    def extra_repr(self) -> str:
        return (f"n_sites={self.n_sites}, bond_dim={self.bond_dim}, phys_dim={self.phys_dim}, "
                f"layers={len(self.layer_dims)}, top={self.top_shape}, n_params={self.n_params}")
