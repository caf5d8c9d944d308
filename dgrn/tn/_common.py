"""Input checks and small shared pieces of the tensor-network modules."""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn


def available_bytes(device) -> int | None:
    """Free memory on ``device`` in bytes (CUDA: the driver's free memory plus what PyTorch's caching allocator holds
    unused; CPU: Linux's ``MemAvailable``), or ``None`` where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0] + cached)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


#: allocations below this many bytes skip :func:`check_memory`'s query of the free memory (it runs on every training
#: step of a ConditionalMPS, and small tensors are not what exhausts a machine)
MEMORY_CHECK_FLOOR = 64 * 2**20


def check_memory(what: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> None:
    """Raise :class:`MemoryError` before allocating ``shape`` of ``dtype`` on ``device`` when it exceeds the free
    memory there (the bond dimension or the batch is the usual culprit), instead of failing inside the allocator or
    swapping the machine to a halt."""
    need = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    if need < MEMORY_CHECK_FLOOR:
        return
    free = available_bytes(device)
    if free is not None and need > free:
        raise MemoryError(f"{what} of shape {tuple(shape)} would take {need / 2**30:.3g} GiB of {dtype} but "
                          f"{free / 2**30:.3g} GiB are free on {torch.device(device)}: lower the bond dimension "
                          "(or the batch, or the number of sites)")


def check_size(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


#: dtypes a Born machine's tensors may have: real (:math:`p = \psi^2 / Z`) or complex (:math:`p = |\psi|^2 / Z`)
BORN_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)
#: default scale of the imaginary part of a complex Born machine's initial tensors
IMAG_NOISE = 0.1


def check_dtype(dtype) -> torch.dtype:
    """``dtype`` of a Born machine's tensors (``None``: torch's default dtype); a clear error for any other."""
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or dtype not in BORN_DTYPES:
        raise TypeError(f"dtype must be one of torch.float32, torch.float64 (real tensors) or torch.complex64, "
                        f"torch.complex128 (complex tensors, p = |psi|^2 / Z); got {dtype!r}")
    return dtype


def check_imag_noise(imag_noise, dtype: torch.dtype) -> float:
    """Scale of the imaginary part of the initial tensors: only meaningful, so only accepted, for complex dtypes."""
    if imag_noise is None:
        return IMAG_NOISE
    if not dtype.is_complex:
        raise ValueError(f"imag_noise={imag_noise!r} scales the imaginary part of complex tensors, but dtype is "
                         f"{dtype} (real): pass dtype=torch.complex128 (or complex64), or drop imag_noise")
    if not (math.isfinite(float(imag_noise)) and float(imag_noise) >= 0):
        raise ValueError(f"imag_noise must be a finite number >= 0, got {imag_noise!r}")
    return float(imag_noise)


def abs2(t: Tensor) -> Tensor:
    r""":math:`|t|^2` elementwise, real (``t ** 2`` for a real tensor)."""
    return t.real.square() + t.imag.square() if t.is_complex() else t.square()


@torch.no_grad()
def fill_near(tensors, mains, scales, init_noise: float, imag_noise: float) -> None:
    r"""Set each tensor ``t`` of ``tensors`` to ``main + init_noise * scale * N(0, 1)`` (``main``: the real tensor of
    ``mains``, ``scale``: the number of ``scales`` at the same position), plus, for complex tensors,
    ``1j * imag_noise * scale * N(0, 1)``. All real parts are drawn first, so a complex model's real part equals the
    real model's initialized from the same seed."""
    tensors, scales = list(tensors), list(scales)
    for t, main, scale in zip(tensors, mains, scales):
        t.copy_(main + init_noise * scale * torch.randn(t.shape, dtype=t.real.dtype, device=t.device))
    for t, scale in zip(tensors, scales):
        if t.is_complex():
            t.imag.copy_(imag_noise * scale * torch.randn(t.shape, dtype=t.real.dtype, device=t.device))


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
    r"""Shared part of the Born machines :math:`p(x) = |\psi(x)|^2 / Z` whose site/node tensors live in
    ``self.tensors`` (an ``nn.ParameterList``, real or complex). Subclasses provide ``log_norm()`` (:math:`\log Z`)
    and ``log_amplitude_sq(x)`` (:math:`\log |\psi(x)|^2` of validated ``(B, n)`` configurations), both real."""

    @property
    def n_params(self) -> int:
        """Number of real parameters: a complex entry counts 2 (its real and imaginary parts)."""
        return sum(t.numel() * (2 if t.is_complex() else 1) for t in self.tensors)

    @property
    def is_complex(self) -> bool:
        r"""Whether the tensors are complex (:math:`p = |\psi|^2 / Z` with complex amplitudes)."""
        return self.tensors[0].is_complex()

    def _apply(self, fn, *args, **kwargs):
        """``nn.Module._apply`` (``to``, ``double``, ``cuda``, ...), refusing to cast complex tensors to a real dtype:
        that would drop their imaginary parts, a different distribution (torch would only warn)."""
        tensors = self._modules.get("tensors")
        if tensors is not None and len(tensors) and tensors[0].is_complex():
            ref = tensors[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                probe = fn(torch.empty(0, dtype=ref.dtype, device=ref.device))
            if isinstance(probe, Tensor) and not probe.is_complex():
                raise TypeError(f"{type(self).__name__} has complex tensors ({ref.dtype}); casting them to "
                                f"{probe.dtype} would discard their imaginary parts (a different distribution). Cast to "
                                "torch.complex64 / torch.complex128, or build a real model")
        return super()._apply(fn, *args, **kwargs)

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
