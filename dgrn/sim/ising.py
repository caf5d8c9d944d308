r"""Equilibrium Ising references: exact partition functions, moments and samples, and Wolff Monte Carlo.

Convention: spins :math:`s_i \in \{-1, +1\}`, couplings ``J`` symmetric with zero diagonal, field ``h``,

.. math::
    E(s) = -\sum_{i<j} J_{ij} s_i s_j - \sum_i h_i s_i, \qquad p(s) = e^{-\beta E(s)} / Z .

Exact moments (``magnetization`` :math:`\langle s_i\rangle`, ``correlation`` :math:`\langle s_i s_j\rangle`) are in
the ±1 convention; samplers return ``uint8`` 0/1 spins (1 means :math:`s=+1`), the rows of a
:class:`~dgrn.data.SpikeData`. Sites of an ``lx × ly`` lattice are numbered row-major, ``site = y * lx + x``.

Exact paths:

* :func:`ising_enumerate` / :func:`ising_sample_exact`: any couplings up to 24 spins, by chunked vectorized
  enumeration of all :math:`2^N` states (log-sum-exp across chunks, float64).
* :func:`ising_transfer` / :func:`ising_transfer_sample`: the square lattice on a strip of width ``w <= 12``,
  periodic along its length (a torus, or a cylinder when the width is open), by the :math:`2^w`-state row transfer
  matrix. Width 1 is a periodic chain.
* :func:`kaufman_log_z`: Kaufman's (1949) closed-form partition function of the finite ``m × n`` torus;
  :func:`onsager_log_z_per_site`: the infinite lattice. Both are independent checks of the numerical paths.

:func:`wolff_sample` (cluster Monte Carlo, ferromagnetic couplings, no field) covers sizes beyond the exact paths,
with an integrated-autocorrelation check (:func:`integrated_autocorrelation_time`) that sets the thinning.

:func:`heat_bath_chain` is a time series instead: heat-bath (Glauber) sweeps, whose stationary law is the
equilibrium one. The data sources :func:`ising1d` / :func:`ising2d` start it from an exact (or Wolff) sample, so
every bin is an equilibrium sample and consecutive bins follow the dynamics, as next-bin models assume.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CRITICAL_BETA",
    "chain_couplings",
    "square_lattice_couplings",
    "ising_enumerate",
    "ising_sample_exact",
    "ising_transfer",
    "ising_transfer_sample",
    "kaufman_log_z",
    "onsager_log_z_per_site",
    "wolff_sample",
    "heat_bath_chain",
    "integrated_autocorrelation_time",
    "correlation_by_distance",
    "ising1d",
    "ising2d",
]

#: Critical inverse temperature of the square-lattice Ising model with J = 1: :math:`\ln(1+\sqrt2)/2`.
CRITICAL_BETA = 0.5 * math.log(1.0 + math.sqrt(2.0))

MAX_ENUMERATION_SPINS = 24
MAX_TRANSFER_WIDTH = 12


# --------------------------------------------------------------------------------------------------- couplings
def chain_couplings(n: int, j: float = 1.0, alpha: float | None = None, periodic: bool = False) -> Tensor:
    r"""Couplings of a 1D chain, ``(n, n)`` float64.

    ``alpha=None``: nearest neighbours, :math:`J_{i,i+1} = j`. Otherwise long range,
    :math:`J_{ik} = j / r_{ik}^{\alpha}` for every pair, with :math:`r = |i-k|` (open) or the distance around the
    ring (``periodic``).
    """
    if n < 2:
        raise ValueError(f"a chain needs n >= 2 spins, got {n}")
    idx = torch.arange(n)
    r = (idx[:, None] - idx[None, :]).abs()
    if periodic:
        r = torch.minimum(r, n - r)
    if alpha is None:
        w = (r == 1).double() * float(j)
    else:
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0 for J/r^alpha couplings, got {alpha}")
        w = torch.where(r > 0, float(j) / r.double().clamp_min(1) ** float(alpha), torch.zeros((), dtype=torch.float64))
    return w


def square_lattice_couplings(lx: int, ly: int | None = None, j: float = 1.0, periodic: bool = True) -> Tensor:
    """Nearest-neighbour couplings of an ``lx × ly`` square lattice (row-major sites), ``(N, N)`` float64.

    Periodic boundaries wrap a direction only when it has at least 3 sites (so no bond is counted twice).
    """
    ly = lx if ly is None else ly
    if lx < 1 or ly < 1 or lx * ly < 2:
        raise ValueError(f"need a lattice of at least 2 sites, got {lx} x {ly}")
    n = lx * ly
    w = torch.zeros(n, n, dtype=torch.float64)
    y, x = torch.meshgrid(torch.arange(ly), torch.arange(lx), indexing="ij")
    site = (y * lx + x).reshape(-1)
    for dx, dy, size, other in ((1, 0, lx, None), (0, 1, ly, None)):
        nx, ny = x + dx, y + dy
        valid = (nx < lx) & (ny < ly)
        if periodic and size >= 3:
            nx, ny, valid = nx % lx, ny % ly, torch.ones_like(valid)
        nb = (ny.clamp(max=ly - 1) * lx + nx.clamp(max=lx - 1)).reshape(-1)
        keep = valid.reshape(-1)
        w[site[keep], nb[keep]] = float(j)
        w[nb[keep], site[keep]] = float(j)
    return w


def _check_couplings(couplings, field, max_spins: int | None) -> tuple[Tensor, Tensor]:
    w = torch.as_tensor(couplings, dtype=torch.float64).cpu()
    if w.dim() != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"couplings must be a square (N, N) matrix, got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("couplings contain NaN or infinite values")
    if not torch.allclose(w, w.T):
        raise ValueError("couplings must be symmetric (equilibrium Ising model)")
    if w.diagonal().abs().max() > 0:
        raise ValueError("couplings must have a zero diagonal")
    n = w.shape[0]
    if max_spins is not None and n > max_spins:
        raise ValueError(f"exact enumeration handles at most {max_spins} spins, got {n}: use ising_transfer "
                         "(2D strips) or wolff_sample")
    h = torch.zeros(n, dtype=torch.float64) if field is None else torch.as_tensor(field, dtype=torch.float64).cpu()
    if h.dim() == 0:
        h = h.expand(n).clone()
    if h.shape != (n,) or not torch.isfinite(h).all():
        raise ValueError(f"field must be a finite scalar or a ({n},) vector, got shape {tuple(h.shape)}")
    return w, h


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite inverse temperature >= 0, got {beta}")
    return beta


# ------------------------------------------------------------------------------------------------- enumeration
def _state_spins(start: int, stop: int, n: int) -> Tensor:
    """±1 spins of the states ``start..stop-1``, bit ``i`` of the state index is site ``i``: ``(stop-start, n)``."""
    k = torch.arange(start, stop, dtype=torch.int64)
    bits = (k[:, None] >> torch.arange(n, dtype=torch.int64)) & 1
    return bits.double() * 2.0 - 1.0


def _neg_energy(s: Tensor, w: Tensor, h: Tensor) -> Tensor:
    return 0.5 * ((s @ w) * s).sum(1) + s @ h


def _enumeration_chunks(w: Tensor, h: Tensor, low_bits: int = 18):
    """Yield ``(s_low, s_high, neg_energy)`` for blocks of states sharing their high bits.

    The low ``k`` sites run over all ``2^k`` patterns (``s_low`` is the same table for every block), the high sites
    are fixed per block (``s_high``), so :math:`-E = -E_{ll} - s_l^\top J_{lh} s_h - E_{hh}` costs one
    ``2^k × k`` mat-vec per block.
    """
    n = w.shape[0]
    k = min(n, low_bits)
    s_low = _state_spins(0, 1 << k, k)
    e_low = _neg_energy(s_low, w[:k, :k], h[:k])
    for high in range(1 << (n - k)):
        s_high = _state_spins(high, high + 1, n - k)[0]
        const = float(_neg_energy(s_high[None], w[k:, k:], h[k:])) if n > k else 0.0
        yield s_low, s_high, e_low + s_low @ (w[:k, k:] @ s_high) + const


def ising_enumerate(couplings, beta: float, field=None) -> dict:
    r"""Exact thermodynamics of an Ising model with up to 24 spins by enumerating all :math:`2^N` states.

    States are processed in blocks of :math:`2^{18}` (vectorized); the running sums are rescaled log-sum-exp
    style, so any temperature is safe in float64.

    Returns:
        dict with ``log_z``, ``entropy`` (nats, total), ``energy`` (:math:`\langle E\rangle`), ``magnetization``
        ``(N,)`` :math:`\langle s_i\rangle`, ``abs_magnetization`` :math:`\langle|\sum_i s_i|\rangle / N`,
        ``correlation`` ``(N, N)`` :math:`\langle s_i s_j\rangle`, ``n_spins``.
    """
    beta = _check_beta(beta)
    w, h = _check_couplings(couplings, field, MAX_ENUMERATION_SPINS)
    n = w.shape[0]
    shift = -math.inf  # running max of log-weights
    z = e_neg = e_absm = 0.0
    m1 = torch.zeros(n, dtype=torch.float64)
    m2 = torch.zeros(n, n, dtype=torch.float64)
    for s_low, s_high, neg_e in _enumeration_chunks(w, h):
        k = s_low.shape[1]
        lw = beta * neg_e
        top = float(lw.max())
        if top > shift:  # rescale the accumulated sums to the new reference
            scale = math.exp(shift - top) if math.isfinite(shift) else 0.0
            z, e_neg, e_absm, m1, m2, shift = z * scale, e_neg * scale, e_absm * scale, m1 * scale, m2 * scale, top
        p = torch.exp(lw - shift)
        p_sum = float(p.sum())
        p_low = p @ s_low
        z += p_sum
        e_neg += float(p @ neg_e)
        e_absm += float(p @ (s_low.sum(1) + s_high.sum()).abs())
        m1[:k] += p_low
        m1[k:] += p_sum * s_high
        m2[:k, :k] += (s_low * p[:, None]).T @ s_low
        m2[:k, k:] += p_low[:, None] * s_high[None]
        m2[k:, k:] += p_sum * s_high[:, None] * s_high[None]
    m2[k:, :k] = m2[:k, k:].T
    log_z = math.log(z) + shift
    return {
        "log_z": log_z,
        "entropy": log_z - beta * e_neg / z,
        "energy": -e_neg / z,
        "magnetization": m1 / z,
        "abs_magnetization": e_absm / z / n,
        "correlation": m2 / z,
        "n_spins": n,
    }


def _generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


def _check_count(n_samples: int) -> int:
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    return int(n_samples)


def ising_sample_exact(couplings, beta: float, n_samples: int, field=None, *, seed: int | None = 0) -> Tensor:
    """Independent exact samples of an Ising model with up to 24 spins, ``(n_samples, N)`` uint8 0/1.

    Inverse-CDF sampling over all :math:`2^N` states (float64 cumulative weights, ``searchsorted``).
    """
    beta = _check_beta(beta)
    w, h = _check_couplings(couplings, field, MAX_ENUMERATION_SPINS)
    n_samples = _check_count(n_samples)
    n = w.shape[0]
    lw = torch.cat([beta * neg_e for _, _, neg_e in _enumeration_chunks(w, h)])  # state index = bits of the sites
    cdf = torch.cumsum(torch.exp(lw - lw.max()), 0)
    del lw
    u = torch.rand(n_samples, dtype=torch.float64, generator=_generator(seed)) * cdf[-1]
    states = torch.searchsorted(cdf, u).clamp_max((1 << n) - 1)
    return ((states[:, None] >> torch.arange(n)) & 1).to(torch.uint8)


# --------------------------------------------------------------------------------------------- transfer matrix
def _row_tables(width: int, beta: float, j: float, field: float, periodic_width: bool):
    """Row states ``(2^w, w)`` ±1, within-row and row-to-row negative energies, and the log transfer matrix."""
    if not 1 <= width <= MAX_TRANSFER_WIDTH:
        raise ValueError(f"transfer-matrix width must lie in [1, {MAX_TRANSFER_WIDTH}], got {width}")
    s = _state_spins(0, 1 << width, width)
    row = field * s.sum(1)
    if width >= 2:
        row = row + j * (s[:, :-1] * s[:, 1:]).sum(1)
    if periodic_width and width >= 3:
        row = row + j * s[:, -1] * s[:, 0]
    inter = j * (s @ s.T)
    log_t = beta * (0.5 * row[:, None] + inter + 0.5 * row[None, :])
    return s, row, inter, log_t


def _check_length(length: int) -> None:
    if length < 3:
        raise ValueError(f"the strip is periodic along its length, which needs length >= 3 rows; got {length}")


def ising_transfer(
    width: int,
    length: int,
    beta: float,
    j: float = 1.0,
    field: float = 0.0,
    *,
    periodic_width: bool = True,
    correlations: bool | None = None,
) -> dict:
    r"""Exact square-lattice Ising model on a ``width × length`` strip, periodic along its length.

    Row transfer matrix :math:`T_{ab} = e^{\frac12 \beta R(a) + \beta j\, a\cdot b + \frac12 \beta R(b)}` over the
    :math:`2^w` row states (``R`` the within-row couplings and field), :math:`Z = \mathrm{tr}\, T^{L}` from the
    eigenvalues, normalized by the largest so any ``length`` is safe. Sites are row-major with ``lx = width``.
    ``periodic_width`` wraps the rows when ``width >= 3`` (a torus), otherwise the strip is a cylinder.

    Args:
        correlations: also return the full ``(N, N)`` :math:`\langle s_i s_j\rangle` (costs two ``2^w``-sized
            matrix products per row distance); default when ``width <= 10``.

    Returns:
        dict with ``log_z``, ``entropy``, ``energy``, ``magnetization`` ``(w,)`` per column (rows are equivalent),
        ``n_spins`` and, when requested, ``correlation`` ``(N, N)``.
    """
    beta = _check_beta(beta)
    _check_length(length)
    if correlations is None:
        correlations = width <= 10
    s, row, inter, log_t = _row_tables(width, beta, float(j), float(field), periodic_width)
    # symmetric positive matrix: eigh in float64, scaled by the largest eigenvalue to keep powers bounded
    top = log_t.max()
    evals, evecs = torch.linalg.eigh(torch.exp(log_t - top))
    mu = evals / evals[-1]
    mu_l = mu ** length
    z_tilde = mu_l.sum()
    log_z = float(length * (top + torch.log(evals[-1])) + torch.log(z_tilde))

    def power(m: int) -> Tensor:
        return (evecs * mu ** m) @ evecs.T

    # p(row = a) = (T^L)_aa / Z;  <inter(row r, row r+1)> = sum_ab T_ab (T^{L-1})_ba inter_ab / Z
    #   = sum_k mu_k^{L-1} u_k^T (T o inter) u_k / Z: only the eigenvectors whose weight survives the power
    p_row = ((evecs ** 2) @ mu_l) / z_tilde
    keep = mu.abs() ** (length - 1) > 1e-18
    u = evecs[:, keep]
    t_inter = torch.exp(log_t - top) / evals[-1] * inter
    mean_inter = float((mu[keep] ** (length - 1) * (u * (t_inter @ u)).sum(0)).sum() / z_tilde)
    mean_neg_energy = length * (float(p_row @ row) + mean_inter)
    out = {
        "log_z": log_z,
        "entropy": log_z - beta * mean_neg_energy,
        "energy": -mean_neg_energy,
        "magnetization": p_row @ s,
        "n_spins": width * length,
    }
    if correlations:
        n = width * length
        corr = torch.empty(length, width, length, width, dtype=torch.float64)
        for dy in range(length):
            # G[x, x'] = <s_{r,x} s_{r+dy,x'}> = sum_ab S_ax (T^dy)_ab (T^{L-dy})_ba S_bx' / Z
            g = s.T @ (power(dy) * power(length - dy).T / z_tilde) @ s
            for r in range(length):
                corr[r, :, (r + dy) % length, :] = g
        out["correlation"] = corr.reshape(n, n)
    return out


def ising_transfer_sample(
    width: int,
    length: int,
    beta: float,
    n_samples: int,
    j: float = 1.0,
    field: float = 0.0,
    *,
    periodic_width: bool = True,
    seed: int | None = 0,
    max_memory_gb: float = 2.0,
) -> Tensor:
    r"""Independent exact samples of the strip of :func:`ising_transfer`, ``(n_samples, width * length)`` uint8 0/1.

    Row 0 is drawn from :math:`p(a) = (T^L)_{aa}/Z`; then row ``k`` given row ``k-1 = a`` and row ``0 = r_0`` from
    :math:`p(b) \propto T_{ab}\,(T^{L-k})_{b r_0}` (a bridge that closes the periodic length). The powers
    :math:`T^m` are held in memory (``length × 4^w`` float64), refused beyond ``max_memory_gb``.
    """
    beta = _check_beta(beta)
    n_samples = _check_count(n_samples)
    _check_length(length)
    s, _, _, log_t = _row_tables(width, beta, float(j), float(field), periodic_width)
    n_states = s.shape[0]
    need_gb = length * n_states ** 2 * 8 / 1e9
    if need_gb > max_memory_gb:
        raise ValueError(f"the {length} transfer-matrix powers need {need_gb:.1f} GB (> max_memory_gb={max_memory_gb}); "
                         "use wolff_sample for this size")
    t = torch.exp(log_t - log_t.max())
    t = t / torch.linalg.eigvalsh(t)[-1]  # spectral radius 1: powers stay bounded
    powers = [torch.eye(n_states, dtype=torch.float64), t]
    for _ in range(2, length + 1):
        powers.append(powers[-1] @ t)  # products of positive matrices stay positive (no eigen round-off)
    gen = _generator(seed)

    def draw(weights: Tensor) -> Tensor:
        cdf = torch.cumsum(weights, 1)
        u = torch.rand(weights.shape[0], 1, dtype=torch.float64, generator=gen) * cdf[:, -1:]
        return torch.searchsorted(cdf, u).squeeze(1).clamp_max(n_states - 1)

    rows = torch.empty(n_samples, length, dtype=torch.int64)
    rows[:, 0] = draw(torch.diagonal(powers[length])[None].expand(n_samples, -1))
    for k in range(1, length):  # sequential in rows, vectorized over samples
        rows[:, k] = draw(t[rows[:, k - 1]] * powers[length - k][rows[:, 0]])
    bits = (rows[:, :, None] >> torch.arange(width)) & 1  # (n_samples, length, width), row-major sites
    return bits.reshape(n_samples, length * width).to(torch.uint8)


# ------------------------------------------------------------------------------------------------ closed forms
def kaufman_log_z(m: int, n: int, beta: float, j: float = 1.0) -> float:
    r"""Kaufman's exact :math:`\ln Z` of the zero-field square-lattice Ising model on an ``m × n`` torus.

    .. math::
        Z = \tfrac12 (2\sinh 2K)^{mn/2} \Big[\prod_{r=0}^{n-1} 2\cosh\tfrac{m\gamma_{2r+1}}{2}
            + \prod 2\sinh\tfrac{m\gamma_{2r+1}}{2} + \prod 2\cosh\tfrac{m\gamma_{2r}}{2}
            + \prod 2\sinh\tfrac{m\gamma_{2r}}{2}\Big],

    :math:`\cosh\gamma_k = \cosh 2K \coth 2K - \cos(\pi k / n)`, :math:`\gamma_0 = 2K + \ln\tanh K` (signed),
    :math:`K = \beta j > 0` (B. Kaufman, Phys. Rev. 76, 1232 (1949)). The four terms are summed in log space with
    their signs.
    """
    k = float(beta) * float(j)
    if k <= 0:
        raise ValueError(f"Kaufman's formula needs beta * j > 0, got {k}")
    if m < 1 or n < 1:
        raise ValueError(f"torus sides must be >= 1, got {m} x {n}")
    idx = np.arange(2 * n)
    cosh_g = np.cosh(2 * k) / np.tanh(2 * k) - np.cos(np.pi * idx / n)
    gamma = np.arccosh(np.maximum(cosh_g, 1.0))
    gamma[0] = 2 * k + np.log(np.tanh(k))
    x = m * gamma / 2.0

    def log_prod_cosh(v):
        return float(np.sum(np.log(2.0) + np.logaddexp(v, -v) - np.log(2.0)))  # log prod 2cosh(v)

    def log_abs_prod_sinh(v):
        a = np.abs(v)
        sign = float(np.prod(np.sign(v)))
        return float(np.sum(a + np.log1p(-np.exp(-2 * a)))), sign  # log prod |2 sinh v|

    odd, even = x[1::2], x[0::2]
    terms, signs = [log_prod_cosh(odd), log_prod_cosh(even)], [1.0, 1.0]
    for v in (odd, even):
        lv, sg = log_abs_prod_sinh(v)
        terms.append(lv)
        signs.append(sg)
    top = max(t for t, sg in zip(terms, signs) if sg != 0)
    total = sum(sg * math.exp(t - top) for t, sg in zip(terms, signs) if sg != 0)
    return -math.log(2.0) + 0.5 * m * n * math.log(2 * math.sinh(2 * k)) + top + math.log(total)


def onsager_log_z_per_site(beta: float, j: float = 1.0) -> float:
    r"""Onsager's :math:`\lim \ln Z / N` of the infinite zero-field square lattice (numerical quadrature).

    .. math:: \ln(2\cosh 2K) + \frac{1}{2\pi}\int_0^\pi \ln\frac{1 + \sqrt{1 - \kappa^2 \sin^2\theta}}{2}\,d\theta,
        \qquad \kappa = \frac{2\sinh 2K}{\cosh^2 2K}.
    """
    from scipy.integrate import quad

    k = float(beta) * float(j)
    kappa = 2 * math.sinh(2 * k) / math.cosh(2 * k) ** 2
    integral, _ = quad(lambda t: math.log(0.5 * (1 + math.sqrt(max(0.0, 1 - (kappa * math.sin(t)) ** 2)))),
                       0, math.pi, limit=200)
    return math.log(2 * math.cosh(2 * k)) + integral / (2 * math.pi)


# ---------------------------------------------------------------------------------------------- Monte Carlo
def integrated_autocorrelation_time(series, c: float = 5.0) -> tuple[float, int]:
    r"""Integrated autocorrelation time :math:`\tau = \frac12 + \sum_{t=1}^{W}\rho(t)` with Sokal's automatic window.

    :math:`\rho` from an FFT; ``W`` is the smallest window with :math:`W \ge c\,\tau(W)`. Independent samples give
    :math:`\tau \approx 0.5`. Returns ``(tau, W)``.
    """
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 1 or x.size < 4:
        raise ValueError(f"need a 1-D series of at least 4 values, got shape {x.shape}")
    x = x - x.mean()
    var = float(x @ x)
    if var == 0:
        return 0.5, 0
    size = 1 << (2 * x.size - 1).bit_length()
    f = np.fft.rfft(x, size)
    rho = np.fft.irfft(f * np.conj(f), size)[: x.size] / var
    tau = 0.5 + np.cumsum(rho[1:])
    windows = np.arange(1, x.size)
    ok = windows >= c * tau
    w = int(windows[ok][0]) if ok.any() else x.size - 1
    return float(tau[w - 1]), w


def wolff_sample(
    couplings,
    beta: float,
    n_samples: int,
    *,
    burn_in: int = 1000,
    thin: int | None = None,
    pilot: int = 2000,
    seed: int | None = 0,
) -> tuple[Tensor, dict]:
    r"""Wolff single-cluster Monte Carlo for ferromagnetic couplings (:math:`J_{ij} \ge 0`, no field).

    A cluster grows from a random site over aligned neighbours, bond ``(i, j)`` joining with probability
    :math:`1 - e^{-2\beta J_{ij}}`, and is flipped (Wolff, PRL 62, 361 (1989)). Growth is breadth-first with each
    layer vectorized. Any sparse or dense (long-range) coupling graph works.

    Thinning: unless ``thin`` is given, a ``pilot`` run measures the integrated autocorrelation time (in cluster
    flips) of the energy and of :math:`|M|` and keeps one state every :math:`\lceil 2\tau\rceil` flips, so the
    returned samples are close to independent. ``info`` reports both times, the thinning, the mean cluster size
    and the autocorrelation times measured again on the returned samples (≈ 0.5 when independent).

    Returns:
        ``(samples (n_samples, N) uint8 0/1, info dict)``.
    """
    beta = _check_beta(beta)
    n_samples = _check_count(n_samples)
    w, _ = _check_couplings(couplings, None, None)
    if (w < 0).any():
        raise ValueError("wolff_sample needs ferromagnetic couplings (J >= 0); frustrated models need another sampler")
    import scipy.sparse as sp

    n = w.shape[0]
    graph = sp.csr_matrix(w.numpy())
    indptr, indices = graph.indptr, graph.indices
    p_bond = -np.expm1(-2.0 * beta * graph.data)
    rng = np.random.default_rng(seed)
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=n)
    dense_w = w.numpy()

    def flip() -> int:
        start = int(rng.integers(n))
        s0 = spins[start]
        in_cluster = np.zeros(n, dtype=bool)
        in_cluster[start] = True
        frontier = np.array([start])
        while frontier.size:
            lo, hi = indptr[frontier], indptr[frontier + 1]
            counts = hi - lo
            edges = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            nbr = indices[edges]
            grow = (spins[nbr] == s0) & ~in_cluster[nbr] & (rng.random(edges.size) < p_bond[edges])
            frontier = np.unique(nbr[grow])
            in_cluster[frontier] = True
        spins[in_cluster] *= -1
        return int(in_cluster.sum())

    def observables() -> tuple[float, float]:
        sf = spins.astype(np.float64)
        return -0.5 * float(sf @ dense_w @ sf), abs(float(sf.sum())) / n

    for _ in range(int(burn_in)):
        flip()
    info: dict = {}
    if thin is None:
        trace, sizes = [], []
        for _ in range(int(pilot)):
            sizes.append(flip())
            trace.append(observables())
        e, m = np.array(trace).T
        tau_e, _ = integrated_autocorrelation_time(e)
        tau_m, _ = integrated_autocorrelation_time(m)
        thin = max(1, math.ceil(2 * max(tau_e, tau_m)))
        info.update(pilot_tau_energy=tau_e, pilot_tau_abs_m=tau_m, mean_cluster_size=float(np.mean(sizes)))
    if int(thin) < 1:
        raise ValueError(f"thin must be >= 1 cluster flip, got {thin}")
    out = np.empty((n_samples, n), dtype=np.uint8)
    trace = []
    for k in range(n_samples):
        for _ in range(int(thin)):
            flip()
        out[k] = spins > 0
        trace.append(observables())
    info["thin"] = int(thin)
    if n_samples >= 4:
        e, m = np.array(trace).T
        info["tau_energy"] = integrated_autocorrelation_time(e)[0]
        info["tau_abs_m"] = integrated_autocorrelation_time(m)[0]
    return torch.from_numpy(out), info


def _colour_classes(w: Tensor) -> list[np.ndarray]:
    """Sites grouped by a greedy colouring of the coupling graph (no coupling inside a group), in colour order."""
    adjacent = (w != 0).numpy()
    colour = np.full(w.shape[0], -1)
    for i in range(w.shape[0]):
        taken = set(colour[adjacent[i]].tolist())
        colour[i] = next(c for c in range(len(taken) + 1) if c not in taken)
    return [np.flatnonzero(colour == c) for c in range(colour.max() + 1)]


def heat_bath_chain(couplings, beta: float, init, n_steps: int, field=None, *, sweeps_per_step: int = 1,
                    seed: int | None = 0) -> Tensor:
    r"""Heat-bath (Gibbs, Glauber) dynamics of an Ising model: ``(n_steps, N)`` uint8 0/1, row ``t`` the state
    after ``(t + 1) * sweeps_per_step`` sweeps from ``init`` (``(N,)`` 0/1).

    A sweep draws every site once from its conditional given the others,

    .. math:: p(s_i = +1 \mid s_{\setminus i}) = \tfrac12\big(1 + \tanh(\beta h_i)\big), \qquad
        h_i = \sum_j J_{ij} s_j + h^{ext}_i ,

    sites grouped by a greedy colouring of the coupling graph: uncoupled sites are conditionally independent, so a
    colour class is drawn at once (2 classes on a bipartite lattice, ``N`` on a long-range chain), classes in
    colour order. Every update leaves :math:`p(s) \propto e^{-\beta E(s)}` invariant, so from an equilibrium
    ``init`` every row is an equilibrium sample; consecutive rows are correlated by the dynamics (a time series,
    unlike the independent samples of the other samplers). Any couplings (frustrated ones too) and field.
    """
    beta = _check_beta(beta)
    w, h = _check_couplings(couplings, field, None)
    n_steps = _check_count(n_steps)
    if int(sweeps_per_step) < 1:
        raise ValueError(f"sweeps_per_step must be >= 1, got {sweeps_per_step}")
    state = torch.as_tensor(init).cpu().reshape(-1)
    if state.shape != (w.shape[0],) or not ((state == 0) | (state == 1)).all():
        raise ValueError(f"init must be {w.shape[0]} spins in 0/1, got shape {tuple(state.shape)}")
    s = np.where(state.numpy() == 1, 1.0, -1.0)
    classes = [(c, w.numpy()[c], h.numpy()[c]) for c in _colour_classes(w)]
    rng = np.random.default_rng(seed)
    out = np.empty((n_steps, s.size), dtype=np.uint8)
    for t in range(n_steps):
        for _ in range(int(sweeps_per_step)):
            for c, w_c, h_c in classes:
                p_up = 0.5 * (1.0 + np.tanh(beta * (w_c @ s + h_c)))
                s[c] = np.where(rng.random(c.size) < p_up, 1.0, -1.0)
        out[t] = s > 0
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------------------------ read-outs
def correlation_by_distance(correlation, distance, connected_mean=None) -> tuple[Tensor, Tensor]:
    r"""Average a two-point function over pairs at the same distance: :math:`C(r) = \mathrm{mean}_{d_{ij}=r} G_{ij}`.

    Args:
        correlation: ``(N, N)`` :math:`\langle s_i s_j\rangle` (or any pair function).
        distance: ``(N, N)`` integer distances (for example Manhattan distances on a lattice).
        connected_mean: optional ``(N,)`` :math:`\langle s_i\rangle` to subtract (connected correlations).

    Returns:
        ``(r, C(r))`` over the distances ``r >= 1`` present.
    """
    g = torch.as_tensor(correlation, dtype=torch.float64)
    d = torch.as_tensor(distance).long()
    if g.shape != d.shape or g.dim() != 2:
        raise ValueError(f"correlation and distance must be (N, N) of equal shape, got {tuple(g.shape)}, {tuple(d.shape)}")
    if connected_mean is not None:
        m = torch.as_tensor(connected_mean, dtype=torch.float64)
        g = g - m[:, None] * m[None, :]
    r = torch.unique(d[d > 0])
    sums = torch.zeros(int(d.max()) + 1, dtype=torch.float64).index_add_(0, d.reshape(-1), g.reshape(-1))
    counts = torch.bincount(d.reshape(-1), minlength=int(d.max()) + 1).double()
    return r, sums[r] / counts[r]


# ------------------------------------------------------------------------------------------ data sources
def _chain_data(w: Tensor, beta: float, first: Tensor, t: int, sweeps_per_bin: int, dt: float, seed: int,
                  meta: dict):
    """The heat-bath chain from the equilibrium state ``first``: ``t`` bins of ``sweeps_per_bin`` sweeps."""
    from dgrn.data import SpikeData

    spikes = heat_bath_chain(w, beta, first, t, sweeps_per_step=sweeps_per_bin, seed=seed)
    meta.update(dynamics=f"heat bath, {sweeps_per_bin} sweep(s) per bin of dt = {dt} (a label: Monte Carlo time)")
    return SpikeData(spikes, dt, true_couplings=w.float(), meta=meta)


def ising1d(n: int, t: int, *, beta: float = 1.0, j: float = 1.0, alpha: float | None = None,
            periodic: bool = False, sweeps_per_bin: int = 1, dt: float = 1.0, seed: int = 0,
            sample_seed: int | None = None):
    """A 1D chain (:func:`chain_couplings`) at equilibrium as a :class:`~dgrn.data.SpikeData` time series.

    ``t`` bins of :func:`heat_bath_chain`, ``sweeps_per_bin`` sweeps each, started from an exact sample
    (enumeration, up to 24 spins; Wolff beyond): every bin is an equilibrium sample (0/1 spins) and consecutive
    bins follow the dynamics. ``dt`` labels a bin (there are no seconds in Monte Carlo time). ``true_couplings`` is
    ``J``; ``meta`` records the sampler of the start, the dynamics and, when exact, the equilibrium entropy.
    """
    w = chain_couplings(n, j=j, alpha=alpha, periodic=periodic)
    draw_seed = seed if sample_seed is None else sample_seed
    meta = {"simulator": "ising1d", "params": {"n": n, "t": t, "beta": beta, "j": j, "alpha": alpha,
                                              "periodic": periodic, "sweeps_per_bin": sweeps_per_bin, "dt": dt,
                                              "seed": seed, "sample_seed": sample_seed}}
    if n <= MAX_ENUMERATION_SPINS:
        first = ising_sample_exact(w, beta, 1, seed=draw_seed)[0]
        meta.update(sampler="exact enumeration", entropy=ising_enumerate(w, beta)["entropy"])
    else:
        (first,), info = wolff_sample(w, beta, 1, seed=draw_seed)
        meta.update(sampler="wolff", wolff=info)
    return _chain_data(w, beta, first, t, sweeps_per_bin, dt, draw_seed, meta)


def ising2d(side: int, t: int, *, beta: float = CRITICAL_BETA, j: float = 1.0, sweeps_per_bin: int = 1,
            dt: float = 1.0, seed: int = 0, sample_seed: int | None = None):
    """The ``side × side`` torus (row-major sites) at equilibrium as a :class:`~dgrn.data.SpikeData` time series.

    ``t`` bins of :func:`heat_bath_chain` (checkerboard sweeps), ``sweeps_per_bin`` sweeps each, started from an
    exact sample (transfer matrix, up to side 12 while the matrix powers fit in 2 GB; Wolff beyond). ``dt``
    labels a bin; ``meta`` records the sampler of the start, the dynamics and, when exact, the equilibrium entropy.
    """
    w = square_lattice_couplings(side, side, j=j)
    draw_seed = seed if sample_seed is None else sample_seed
    meta = {"simulator": "ising2d", "params": {"side": side, "t": t, "beta": beta, "j": j,
                                              "sweeps_per_bin": sweeps_per_bin, "dt": dt, "seed": seed,
                                              "sample_seed": sample_seed}}
    if side >= 3 and side <= MAX_TRANSFER_WIDTH and side * 4 ** side * 8 / 1e9 <= 2.0:
        first = ising_transfer_sample(side, side, beta, 1, j=j, seed=draw_seed)[0]
        meta.update(sampler="exact transfer matrix",
                    entropy=ising_transfer(side, side, beta, j=j, correlations=False)["entropy"])
    else:
        (first,), info = wolff_sample(w, beta, 1, seed=draw_seed)
        meta.update(sampler="wolff", wolff=info)
    return _chain_data(w, beta, first, t, sweeps_per_bin, dt, draw_seed, meta)
