"""``dgrn predict`` for multiscale (DGRN) models: per-level next-bin probabilities, exact per-level log-likelihoods,
the renormalization hierarchy, and figures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dgrn.data import SpikeData, atomic_savez, atomic_write

__all__ = ["predict_levels"]


@torch.inference_mode()
def predict_levels(net, data: SpikeData, out: Path, model_name: str, n_samples: int = 32, chunk: int = 4096,
                   seed: int = 0) -> int:
    """Score and sample every bin after the first ``net.context`` of ``data`` under a
    :class:`~dgrn.nn.MultiscaleBornMachine`; write ``out`` (.npz), ``<out stem>_flow.json`` and PNG figures beside it.

    The npz holds, per level ``l``: ``log_prob_level{l}`` (T',) the exact :math:`\\log p(x^l_t \\mid x_{<t})`,
    ``probabilities_level{l}`` (T', n_l) the firing probability of each unit estimated from ``n_samples`` joint
    coarse-to-fine draws (standard error <= 0.5/sqrt(n_samples)), ``activity_level{l}`` the observed pooled activity;
    ``membership_level{l}`` (N,) the unit of every neuron; level 0 in the neurons' order.
    """
    if n_samples < 1 or chunk < 1:
        raise ValueError(f"need n_samples >= 1 and chunk >= 1, got {n_samples}, {chunk}")
    scales = getattr(net, "time_scales", [1])
    if scales[-1] > 1:
        raise ValueError(f"{model_name} steps its coarse levels {scales[1:]} bins at a time: bin-by-bin prediction "
                         "does not apply (score windows with the model itself, draw blocks with "
                         "dgrn.mesoscale.rollout)")
    x = data.spikes.clamp(max=1).float()
    ctx = net.context
    windows = x.unfold(0, ctx + 1, 1).permute(0, 2, 1)  # (T - ctx, ctx + 1, N): history + the predicted bin
    gen = torch.Generator().manual_seed(seed)
    log_probs, probs = [], []
    for start in range(0, windows.shape[0], chunk):
        w = windows[start:start + chunk]
        log_probs.append(net.level_log_probs(w)[:, 0])  # (b, L + 1)
        draws = net.sample(w[:, :ctx], n_samples, generator=gen)
        draws[0] = net.to_neurons(draws[0])
        probs.append([d.mean(1) for d in draws])
    log_prob = torch.cat(log_probs).numpy()
    levels = len(probs[0])
    activity = net.pool(x[ctx:])
    activity[0] = net.to_neurons(activity[0])
    arrays = {"first_bin": np.array(ctx), "dt": np.array(data.dt), "model": np.array(model_name)}
    for lvl in range(levels):
        arrays[f"log_prob_level{lvl}"] = log_prob[:, lvl]
        arrays[f"probabilities_level{lvl}"] = torch.cat([p[lvl] for p in probs]).numpy().astype(np.float32)
        arrays[f"activity_level{lvl}"] = activity[lvl].numpy().astype(np.uint8)
        arrays[f"membership_level{lvl}"] = net._index(lvl).numpy()
    out = Path(out)
    atomic_savez(out, **arrays)
    n_units = net.n_units
    summary = {"model": model_name, "n_units": n_units, "bins_scored": int(log_prob.shape[0]),
               "nll_per_unit": [float(-log_prob[:, lvl].mean() / n_units[lvl]) for lvl in range(levels)],
               "membership": [net._index(lvl).tolist() for lvl in range(levels)]}
    flow = out.with_name(out.stem.replace(".pred", "") + "_flow.json")
    atomic_write(flow, json.dumps(summary, indent=1) + "\n")
    from dgrn.plots import plot_level_predictions

    fig = plot_level_predictions([arrays[f"probabilities_level{lvl}"] for lvl in range(levels)],
                                 [arrays[f"activity_level{lvl}"] for lvl in range(levels)],
                                 out.with_name(out.stem.replace(".pred", "") + "_levels.png"))
    print(f"wrote {out}: per-level next-bin log-likelihoods and probabilities for bins {ctx}..{data.n_bins - 1}, "
          f"units per level {n_units}; NLL per unit {[round(v, 4) for v in summary['nll_per_unit']]}\n"
          f"wrote {flow} (hierarchy) and {fig}")
    return 0
