"""Compression read-outs of tensor-network models: parameters against the size of the state space, bond profiles,
and the likelihood cost of truncation ("error-tolerant renormalization" curves)."""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["compression_report", "truncation_curve"]


def compression_report(model: nn.Module) -> dict:
    r"""Parameters of ``model`` (an :class:`~dgrn.tn.MPS` or :class:`~dgrn.tn.TTN`) against :math:`d^N`.

    Returns:
        dict with ``n_params``, ``log10_states`` (:math:`N \log_{10} d`, the size of a full probability table),
        ``log10_compression`` (``log10_states - log10(n_params)``) and ``bond_dims``.
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
