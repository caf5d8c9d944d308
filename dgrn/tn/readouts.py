"""Read-outs of tensor-network models: parameters against the size of the state space, bond profiles, the likelihood
cost of truncation ("error-tolerant renormalization" curves), and exact two-site marginals."""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["compression_report", "pair_marginals", "truncation_curve"]


def compression_report(model: nn.Module) -> dict:
    r"""Parameters of ``model`` (an :class:`~dgrn.tn.MPS` or :class:`~dgrn.tn.TTN`) against :math:`d^N`.

    Returns:
        dict with ``n_params`` (real parameters: a complex entry counts 2), ``log10_states`` (:math:`N \log_{10} d`,
        the size of a full probability table), ``log10_compression`` (``log10_states - log10(n_params)``) and
        ``bond_dims``.
    """
    log10_states = model.n_sites * math.log10(model.phys_dim)
    return {
        "n_params": model.n_params,
        "log10_states": log10_states,
        "log10_compression": log10_states - math.log10(model.n_params),
        "bond_dims": list(model.bond_dims),
    }


@torch.no_grad()
def truncation_curve(model: nn.Module, x, tols: Sequence[float], *, max_bond: int | None = None,
                     entropy: float | None = None) -> list[dict]:
    r"""NLL of ``x`` and parameter count of copies of ``model`` truncated at each tolerance in ``tols``.

    ``model`` is left unchanged. With the exact ``entropy`` of the distribution ``x`` was drawn from, each row also
    carries ``kl`` :math:`= \mathrm{NLL} - S`, an unbiased estimate of :math:`KL(p \,\|\, q_{\mathrm{tol}})`.

    Returns:
        one dict per tolerance: ``tol``, ``n_params``, ``nll`` (nats per configuration), ``total_discarded``,
        ``max_bond`` (largest bond kept) and, when ``entropy`` is given, ``kl``.
    """
    rows = []
    for tol in tols:
        trunc = copy.deepcopy(model)
        report = trunc.truncate(float(tol), max_bond=max_bond)
        nll = float(-trunc.log_prob(x).double().mean())
        row = {"tol": tol, "n_params": trunc.n_params, "nll": nll, "total_discarded": report["total_discarded"],
               "max_bond": max(report["bond_dims_after"])}
        if entropy is not None:
            row["kl"] = nll - float(entropy)
        rows.append(row)
    return rows


@torch.no_grad()
def pair_marginals(model: nn.Module) -> torch.Tensor:
    r"""Exact two-site marginals :math:`P_{ij}(a, b) = p(x_i = a, x_j = b)` of a Born machine with ``log_marginal``
    (:class:`~dgrn.tn.MPS`, :class:`~dgrn.tn.TTN`), without sampling noise.

    One exact marginal contraction per pair (``n (n - 1) / 2`` of them, each batched over the ``d^2`` values).
    The diagonal blocks hold the one-site marginals: :math:`P_{ii}(a, b) = \delta_{ab}\, p(x_i = a)`. Two-point
    functions follow by contraction, for example :math:`\langle s_i s_j \rangle = \sum_{ab} s_a s_b P_{ij}(a, b)`.

    Returns:
        ``(n, n, d, d)`` float64 on the model's device; every block sums to 1.
    """
    if not hasattr(model, "log_marginal"):
        raise TypeError(f"{type(model).__name__} has no exact marginals (log_marginal)")
    n, d = model.n_sites, model.phys_dim
    device = model.tensors[0].device
    values = torch.arange(d, device=device)
    a, b = (v.reshape(-1) for v in torch.meshgrid(values, values, indexing="ij"))
    out = torch.zeros(n, n, d, d, dtype=torch.float64, device=device)
    for i in range(n):
        x = torch.zeros(d, n, dtype=torch.long, device=device)
        x[:, i] = values
        out[i, i] = torch.diag(model.log_marginal(x, [i]).double().exp())
        for j in range(i + 1, n):
            x = torch.zeros(d * d, n, dtype=torch.long, device=device)
            x[:, i], x[:, j] = a, b
            block = model.log_marginal(x, [i, j]).double().exp().reshape(d, d)
            out[i, j], out[j, i] = block, block.T
    return out
