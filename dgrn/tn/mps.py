"""Matrix-product-state Born machine (Han, Wang, Fan, Wang & Zhang, PRX 8, 031012 (2018))."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dgrn.tn._common import (BornMachine, abs2, check_dtype, check_finite, check_imag_noise, check_memory, check_size,
                             check_states, check_tolerance, fill_near, sample_categorical, truncation_rank)

__all__ = ["MPS"]


def _normalize_rows(v: Tensor) -> tuple[Tensor, Tensor]:
    """Rows scaled to unit norm, and the log of the removed norms ``(B,)`` (per-sample log-domain scaling)."""
    norm = v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    return v / norm, norm.squeeze(1).log()


def _mirror(tensors: list[Tensor]) -> list[Tensor]:
    """The same state read right to left: site tensors reversed, their bonds swapped."""
    return [a.permute(2, 1, 0) for a in reversed(tensors)]


def _right_canonical(tensors: list[Tensor]) -> list[Tensor]:
    r"""Right-canonical copy: every site after the first satisfies :math:`\sum_s A[s] A[s]^\dagger = I`, and the first
    site carries the whole norm, scaled to :math:`\|\psi\| = 1`. Bond dimensions may shrink to the exact ranks."""
    out = list(tensors)
    for i in range(len(out) - 1, 0, -1):
        a = out[i]
        dl, d, dr = a.shape
        q, r = torch.linalg.qr(a.reshape(dl, d * dr).T)  # A = R^T Q^T, an LQ decomposition (also complex)
        out[i] = q.T.reshape(-1, d, dr)
        prev = out[i - 1]
        prev = (prev.reshape(-1, dl) @ r.T).reshape(prev.shape[0], prev.shape[1], -1)
        out[i - 1] = prev / prev.norm()  # the scale is irrelevant to the state: keep numbers O(1)
    return out


class MPS(BornMachine):
    r"""Matrix-product-state Born machine over ``n_sites`` discrete variables.

    .. math::
        \psi(x) = A^{(1)}[x_1] A^{(2)}[x_2] \cdots A^{(n)}[x_n], \qquad p(x) = \frac{|\psi(x)|^2}{Z},
        \qquad Z = \sum_x |\psi(x)|^2 ,

    with site tensors :math:`A^{(i)}` of shape ``(D_{i-1}, phys_dim, D_i)``, :math:`D_0 = D_n = 1` and the
    internal bond dimensions capped at ``bond_dim`` (and at the exact ranks ``phys_dim^min(i, n-i)``).
    ``Z`` is contracted exactly with transfer matrices :math:`E \mapsto \sum_s A[s]^\dagger E A[s]`; amplitudes and
    transfer matrices are rescaled at every site and the log scales accumulated, so thousands of sites are fine in
    float32.

    The tensors are real (``dtype`` float32/float64) or complex (complex64/complex128): with complex tensors the
    amplitudes carry phases, every contraction above uses the conjugate (:math:`A^\dagger`, :math:`|\cdot|^2`), and
    :meth:`log_prob`, :meth:`log_marginal` stay real (float32 for complex64, float64 for complex128); sampling,
    :meth:`truncate` (complex SVD, real singular values) and :meth:`sweep` work alike. A complex model's real part is
    initialized exactly as the real model from the same seed, its imaginary part as ``imag_noise`` times the same
    random scale: near the same (near-uniform) state. Do not start from imaginary parts that are exactly zero (for
    example a real model cast with ``.to(torch.complex128)``, which keeps its distribution): the likelihood is
    stationary in the imaginary directions there (its gradient vanishes), so gradient training would stay real.
    :attr:`n_params` counts real parameters (2 per complex entry). Casting a complex model to a real dtype is refused
    (it would drop the imaginary parts).

    Training: gradient descent on :meth:`log_prob` with any torch optimizer (for example inside a LightningModule),
    or two-site sweeps (:meth:`sweep`) that adapt bond dimensions to a truncation tolerance, as in Han et al.
    Sweeps and :meth:`truncate` replace the parameters (new shapes): build the optimizer afterwards.

    Args:
        n_sites: ``n``.
        bond_dim: maximal internal bond dimension ``D >= 1``.
        phys_dim: number of values of each variable ``d`` (2 for spikes / spins).
        init_noise: scale of the random part of the initial tensors (identity plus noise: the initial
            distribution is close to uniform, and deep chains start well conditioned).
        dtype: dtype of the tensors: torch.float32 / float64 (real), torch.complex64 / complex128 (complex);
            ``None``: torch's default dtype.
        imag_noise: scale of the imaginary part of the initial tensors (complex ``dtype`` only; default 0.1,
            against ``init_noise`` 0.3 for the real random part).

    Shapes:
        ``log_prob``: ``(B, n)`` integers in ``{0..d-1}`` -> ``(B,)``; ``sample(B)`` -> ``(B, n)`` long.
    """

    def __init__(self, n_sites: int, bond_dim: int, phys_dim: int = 2, *, init_noise: float = 0.3,
                 dtype: torch.dtype | None = None, imag_noise: float | None = None) -> None:
        super().__init__()
        self.n_sites = check_size("n_sites", n_sites)
        self.bond_dim = check_size("bond_dim", bond_dim)
        self.phys_dim = check_size("phys_dim", phys_dim, 2)
        self.init_noise = float(init_noise)
        dtype = check_dtype(dtype)
        self.imag_noise = check_imag_noise(imag_noise, dtype)
        n, d = self.n_sites, self.phys_dim
        # exact-rank cap: D_i <= d^min(i, n-i), compared in logs to avoid huge integers
        dims = [1] + [self.bond_dim if min(i, n - i) * math.log(d) >= math.log(self.bond_dim) else d ** min(i, n - i)
                      for i in range(1, n)] + [1]
        check_memory("MPS tensors", (sum(dims[i] * d * dims[i + 1] for i in range(n)),), dtype, "cpu")
        self.tensors = nn.ParameterList([nn.Parameter(torch.empty(dims[i], d, dims[i + 1], dtype=dtype))
                                         for i in range(n)])
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------- parameters
    @torch.no_grad()
    def reset_parameters(self) -> None:
        r""":math:`A[s] = (I + \epsilon G_s / \sqrt{\max(D_l, D_r)}) / \sqrt{d}` with ``init_noise`` :math:`\epsilon`
        and standard normal :math:`G_s`; complex tensors add :math:`i\,\epsilon' G'_s / \sqrt{d \max(D_l, D_r)}`
        with ``imag_noise`` :math:`\epsilon'` (real parts drawn first: the same as the real model's)."""
        mains = [torch.eye(dl, dr, dtype=a.real.dtype, device=a.device)[:, None, :].expand(a.shape) / math.sqrt(d)
                 for a in self.tensors for dl, d, dr in [a.shape]]
        scales = [1.0 / math.sqrt(max(dl, dr) * d) for a in self.tensors for dl, d, dr in [a.shape]]
        fill_near(self.tensors, mains, scales, self.init_noise, self.imag_noise)

    @property
    def bond_dims(self) -> list[int]:
        """Internal bond dimensions ``[D_1, ..., D_{n-1}]``."""
        return [a.shape[2] for a in self.tensors[:-1]]



    # ------------------------------------------------------------------------------------------ likelihood
    def log_norm(self) -> Tensor:
        r""":math:`\log Z`, contracted left to right with trace-normalized transfer matrices (real scalar)."""
        env = torch.ones(1, 1, dtype=self.tensors[0].dtype, device=self.tensors[0].device)
        log_z = env.real.new_zeros(())
        for a in self.tensors:
            dl, d, dr = a.shape
            half = (env @ a.reshape(dl, d * dr)).reshape(dl * d, dr)  # E[l,l'] A[l',s,r]
            env = a.reshape(dl * d, dr).mH @ half  # sum_{l,s} conj(A[l,s,r]) (E A)[l,s,r']
            trace = env.diagonal().sum().real  # E is Hermitian positive semi-definite
            env = env / trace
            log_z = log_z + trace.log()
        return log_z

    def log_amplitude_sq(self, x: Tensor) -> Tensor:
        r""":math:`\log |\psi(x)|^2` for validated configurations ``(B, n)`` long, ``(B,)`` real."""
        a0 = self.tensors[0]
        v = torch.ones(x.shape[0], 1, dtype=a0.dtype, device=a0.device)
        tiny = torch.finfo(a0.dtype).tiny
        binary = x.bool() if self.phys_dim == 2 else None
        squares = []
        for i, a in enumerate(self.tensors):
            dl, d, dr = a.shape
            w = (v @ a.reshape(dl, d * dr)).reshape(-1, d, dr)  # both physical values at once: no per-sample gather of A
            if binary is not None:  # a select is much cheaper than gather/scatter for two values
                v = torch.where(binary[:, i, None], w[:, 1], w[:, 0])
            else:
                v = w.gather(1, x[:, i].reshape(-1, 1, 1).expand(-1, 1, dr)).squeeze(1)
            sq = abs2(v).sum(1, keepdim=True).clamp_min(tiny)
            v = v * sq.rsqrt()  # per-sample rescaling; the log of the scales is taken once at the end
            squares.append(sq)
        return torch.cat(squares, 1).log().sum(1)


    def log_marginal(self, x, sites) -> Tensor:
        r"""Exact :math:`\log p(x_S)` of the variables on ``sites`` (the other columns of ``x`` are ignored): ``(B,)``.

        Left-to-right contraction of per-sample transfer matrices: a site in ``S`` contributes
        :math:`A[x_i]^\dagger E A[x_i]`, any other :math:`\sum_s A[s]^\dagger E A[s]` (real values for complex tensors).
        """
        x = check_states(x, self.n_sites, self.phys_dim, self.tensors[0].device)
        observed = torch.zeros(self.n_sites, dtype=torch.bool)
        sites = torch.as_tensor(sites).long().reshape(-1)
        if ((sites < 0) | (sites >= self.n_sites)).any():
            raise ValueError(f"sites must lie in [0, {self.n_sites}), got {sites.tolist()}")
        observed[sites] = True
        log_z = self.log_norm()
        check_finite(self, log_z, "MPS")
        env = torch.ones(x.shape[0], 1, 1, dtype=self.tensors[0].dtype, device=x.device)
        log_m = env.real.new_zeros(x.shape[0])
        for i, a in enumerate(self.tensors):
            if observed[i]:
                ax = a.permute(1, 0, 2)[x[:, i]]  # (B, Dl, Dr)
                env = ax.mH @ env @ ax
            else:
                env = torch.einsum("lsr,blm,msq->brq", a.conj(), env, a)
            trace = env.diagonal(dim1=1, dim2=2).sum(1).real
            env = env / trace[:, None, None]
            log_m = log_m + trace.log()
        return log_m - log_z

    # ------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        r"""``n`` independent exact samples ``(n, n_sites)`` long.

        From the right-canonical form (:math:`\sum_s A[s]A[s]^\dagger = I` right of the current site) the conditional
        of site ``i`` given the sampled prefix is :math:`p(x_i \mid x_{<i}) = \|v_{i-1} A^{(i)}[x_i]\|^2`, with
        :math:`v` the normalized prefix vector, so sites are drawn left to right, vectorized over samples.
        """
        n = check_size("n", n)
        tensors = _right_canonical([a.detach() for a in self.tensors])
        v = torch.ones(n, 1, dtype=tensors[0].dtype, device=tensors[0].device)
        out = torch.empty(n, self.n_sites, dtype=torch.long, device=v.device)
        for i, a in enumerate(tensors):
            dl, d, dr = a.shape
            w = (v @ a.reshape(dl, d * dr)).reshape(n, d, dr)
            out[:, i] = sample_categorical(abs2(w).sum(2), generator)
            v, _ = _normalize_rows(w[torch.arange(n, device=v.device), out[:, i]])
        return out

    # ---------------------------------------------------------------------------------- canonical form
    @torch.no_grad()
    def canonicalize(self) -> "MPS":
        """Bring the MPS in place to right-canonical form with unit norm (same distribution; bonds may shrink)."""
        self._set_tensors(_right_canonical([a.detach() for a in self.tensors]))
        return self

    @torch.no_grad()
    def truncate(self, tol: float, max_bond: int | None = None) -> dict:
        r"""Compress every bond by SVD, keeping the fewest singular values whose discarded weight is ``<= tol``.

        Left-to-right sweep on the right-canonical form: at each bond the singular values are the Schmidt
        coefficients of the normalized state, so the discarded weight
        :math:`\epsilon_b = \sum_{k > \chi} s_k^2 / \sum_k s_k^2` is the local truncation error, and
        :math:`\|\psi - \tilde\psi\|^2 \le 2\sum_b \epsilon_b` for the whole sweep (unit-norm states). ``max_bond``
        caps the kept rank regardless of ``tol``. Complex tensors: complex SVD (real singular values), same bound.

        Returns:
            dict with ``discarded`` (per bond), ``total_discarded``, ``bond_dims_before``/``after``,
            ``n_params_before``/``after``.
        """
        check_tolerance(tol, max_bond)
        before, params_before = self.bond_dims, self.n_params
        tensors = _right_canonical([a.detach() for a in self.tensors])
        discarded = []
        for i in range(self.n_sites - 1):
            a, b = tensors[i], tensors[i + 1]
            dl, d, dr = a.shape
            u, s, vh = torch.linalg.svd(a.reshape(dl * d, dr), full_matrices=False)
            k, eps = truncation_rank(s, tol, max_bond)
            discarded.append(eps)
            tensors[i] = u[:, :k].reshape(dl, d, k)
            nxt = ((s[:k, None] * vh[:k]) @ b.reshape(dr, -1)).reshape(k, b.shape[1], b.shape[2])
            tensors[i + 1] = nxt / nxt.norm()
        self._set_tensors(tensors)
        return {"discarded": discarded, "total_discarded": float(sum(discarded)), "bond_dims_before": before,
                "bond_dims_after": self.bond_dims, "n_params_before": params_before, "n_params_after": self.n_params}

    # ---------------------------------------------------------------------------------- two-site sweeps
    def sweep(self, x, lr: float = 0.1, *, tol: float = 1e-6, max_bond: int | None = None, n_steps: int = 10) -> dict:
        r"""One two-site DMRG-like sweep (left to right, then back) maximizing the likelihood of ``x``.

        At each bond the two site tensors are merged, :math:`B = A^{(i)} A^{(i+1)}`; with the rest of the chain in
        mixed canonical form :math:`Z = \|B\|^2`, so the NLL :math:`\mathcal L(B) = \log\|B\|^2 -
        \frac{1}{|T|}\sum_{x\in T}\log |\psi_x(B)|^2` depends on ``B`` through cached left/right environment vectors
        of the training samples. ``n_steps`` gradient steps on ``B`` (initial size ``lr``, with backtracking so that
        no step raises the NLL; for complex ``B`` torch's gradient of the real NLL is the conjugate Wirtinger
        derivative, the steepest-descent direction), then an SVD splits it back
        with the bond dimension chosen by the discarded weight ``tol`` (capped by ``max_bond``): the bond grows
        where the data need it and shrinks where they do not (Han et al. PRX 2018). Replaces the parameters:
        rebuild any optimizer afterwards.

        Returns:
            dict with ``nll`` (mean NLL of ``x`` after the sweep, nats per configuration), ``bond_dims``,
            ``max_discarded``.
        """
        x = check_states(x, self.n_sites, self.phys_dim, self.tensors[0].device)
        check_tolerance(tol, max_bond)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if self.n_sites < 2:
            raise ValueError("a two-site sweep needs at least 2 sites")
        with torch.no_grad():
            tensors = _right_canonical([a.detach() for a in self.tensors])
        disc = []
        tensors, eps = self._half_sweep(tensors, x, lr, tol, max_bond, n_steps)
        disc += eps
        mirrored, eps = self._half_sweep(_mirror(tensors), x.flip(1), lr, tol, max_bond, n_steps)
        disc += eps
        self._set_tensors(_mirror(mirrored))
        with torch.no_grad():
            nll = -self.log_prob(x).mean()
        return {"nll": float(nll), "bond_dims": self.bond_dims, "max_discarded": max(disc)}

    @staticmethod
    def _half_sweep(tensors, x, lr, tol, max_bond, n_steps):
        """Left-to-right two-site updates; input right-canonical with the norm on site 0, output centered on the
        last site."""
        n = len(tensors)
        batch = x.shape[0]
        with torch.no_grad():
            right = [None] * (n + 1)  # right[k]: (B, D_{k-1}) environment of sites k..n-1, rows normalized
            right[n] = tensors[0].new_ones(batch, 1)
            for k in range(n - 1, 0, -1):
                a = tensors[k]
                dl, d, dr = a.shape
                w = (a.permute(1, 0, 2)[x[:, k]] @ right[k + 1].unsqueeze(2)).squeeze(2)
                right[k], _ = _normalize_rows(w)
            left = tensors[0].new_ones(batch, 1)
        discarded = []
        for i in range(n - 1):
            a, b = tensors[i], tensors[i + 1]
            dl, d, _ = a.shape
            dr = b.shape[2]
            pair_index = x[:, i] * d + x[:, i + 1]
            with torch.no_grad():
                merged = torch.einsum("lsm,mtr->lstr", a, b)
                merged = merged / merged.norm()

            def local_nll(m: Tensor) -> Tensor:  # = the NLL of the whole chain: the rest is in canonical form
                w = (left @ m.reshape(dl, d * d * dr)).reshape(batch, d * d, dr)
                psi = (w.gather(1, pair_index.reshape(-1, 1, 1).expand(-1, 1, dr)).squeeze(1) * right[i + 2]).sum(1)
                return abs2(m).sum().log() - abs2(psi).clamp_min(torch.finfo(psi.dtype).tiny).log().mean()

            step = lr
            for _ in range(int(n_steps)):
                merged.requires_grad_(True)
                with torch.enable_grad():
                    loss = local_nll(merged)
                    (grad,) = torch.autograd.grad(loss, merged)
                merged = merged.detach()
                if not bool(torch.isfinite(loss)) or not bool(torch.isfinite(grad).all()):
                    raise FloatingPointError(f"two-site sweep diverged at bond ({i}, {i + 1}) (NLL {float(loss)}); "
                                             "check the tensors for NaN")
                with torch.no_grad():
                    for _ in range(20):  # backtracking: a bond update never raises the NLL
                        trial = merged - step * grad
                        trial = trial / trial.norm()
                        if local_nll(trial) <= loss:
                            merged, step = trial, step * 1.5
                            break
                        step = step / 2
            with torch.no_grad():
                u, s, vh = torch.linalg.svd(merged.detach().reshape(dl * d, d * dr), full_matrices=False)
                k, eps = truncation_rank(s, tol, max_bond)
                discarded.append(eps)
                tensors[i] = u[:, :k].reshape(dl, d, k)
                nxt = (s[:k, None] * vh[:k]).reshape(k, d, dr)
                tensors[i + 1] = nxt / nxt.norm()
                w = (left @ tensors[i].reshape(dl, d * k)).reshape(batch, d, k)
                left, _ = _normalize_rows(w.gather(1, x[:, i].reshape(-1, 1, 1).expand(-1, 1, k)).squeeze(1))
        return tensors, discarded

    def extra_repr(self) -> str:
        return (f"n_sites={self.n_sites}, bond_dim={self.bond_dim}, phys_dim={self.phys_dim}, n_params={self.n_params}"
                + (f", dtype={self.tensors[0].dtype}" if self.is_complex else ""))
