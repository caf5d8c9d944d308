"""What the hidden-Markov kinetic Ising data allow a next-bin model to reach, and why: the lag-1 GLM, the GLM given
the filter's estimate of each community's hidden state, the GLM given the true state, and the exact filter.

    python bench/hidden_drive_floor.py [--seeds 0 1 2] [--switching-l1 0 3e-4]

The data are those of ``bench/mesoscale.py --datasets kising_hmm`` (the same file per seed) and the same
contiguous-block split as ``train.py`` (``dgrn.data.block_split`` with the data module's defaults). Every GLM is
fitted on the training blocks by full-batch L-BFGS (no penalty: 35,000 bins for 10,000 couplings) and scored on
every bin of the test blocks after their first (nats per neuron-bin):

* ``glm``: :math:`\\sigma(b_i + \\sum_j W_{ij} x_j(t-1))`;
* ``glm_posterior``: plus :math:`a_i\\, P(z_{c_i}(t) = \\text{off} \\mid x(<t))`, the exact filter's predictive
  posterior of the neuron's community (``hidden_markov_log_likelihood(..., return_posterior=True)``): the best
  estimate of the slow state any model can form from the past, entering as an additive field;
* ``glm_or_filter``: plus :math:`a_i\, P(z_{c_i}(t) = \text{off} \mid o(<t))`, the predictive posterior of a
  2-state hidden Markov chain per community that sees only the community's OR-pooled activity :math:`o_c(t)`
  (:class:`dgrn.nn.SwitchingBernoulli` started by Baum-Welch on the training blocks): what DGRN's latent chains
  (``model.net.latent_states=2`` on a level of OR-pooled communities) can know of the state;
* ``glm_true_state``: plus :math:`a_i\\, [z_{c_i}(t) = \\text{off}]`, the true state (an oracle: not a past-only
  model);
* ``exact``: the exact filter, a mixture over the hidden states given the past.

With ``--switching-l1``, also what *estimating* the simulator's own model class costs: the switching GLM
(:class:`dgrn.nn.BernoulliHMM` with the true communities, lag-1 couplings and 2 states per chain) fitted by
full-batch L-BFGS from the true parameters on the 64-bin windows of the data module's training split (the first
16 bins of each filtered but not scored), with a smooth lasso :math:`\lambda \sum |W| / N` for each value given (0: maximum likelihood),
scored on the test windows' bins against the exact filter on the same bins (``switching``).

The fraction of the gap between ``glm`` and ``exact`` that each closes says how much of the mesoscale issue's 75 %
target an additive slow-state input can reach; the rest needs the mixture over states. Writes
``bench/results/hidden_drive_floor.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.mesoscale import data_file  # noqa: E402
from dgrn.data import SpikeData, atomic_write, block_split  # noqa: E402
from dgrn.graph.inference import _penalty  # noqa: E402
from dgrn.models import SpikeDataModule  # noqa: E402
from dgrn.nn import BernoulliHMM, SwitchingBernoulli  # noqa: E402
from dgrn.sim.hidden_drive import hidden_markov_log_likelihood, hidden_states  # noqa: E402


def fit_glm(x: torch.Tensor, extra: torch.Tensor | None, train: torch.Tensor, test: torch.Tensor) -> float:
    """Test NLL per neuron-bin of the lag-1 Bernoulli GLM with an optional per-neuron input ``extra (T, N)`` scaled by
    a fitted gain per neuron, maximum likelihood on the ``train`` bins by L-BFGS."""
    n = x.shape[1]
    weight = torch.zeros(n, n, dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(n, dtype=x.dtype, requires_grad=True)
    gain = torch.zeros(n, dtype=x.dtype, requires_grad=True)

    def logits(bins):
        out = torch.addmm(bias, x[bins - 1], weight.T)
        return out if extra is None else out + gain * extra[bins]

    params = [weight, bias] if extra is None else [weight, bias, gain]
    opt = torch.optim.LBFGS(params, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(logits(train), x[train])
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(F.binary_cross_entropy_with_logits(logits(test), x[test]))


def floor(data: SpikeData) -> dict:
    x = data.spikes.double().clamp(max=1)
    n_bins, n = x.shape
    segments = block_split(n_bins)
    train, test = (torch.cat([torch.arange(a + 1, b) for a, b in segments[name]]) for name in ("train", "test"))
    labels = data.true_communities.long()
    log_lik, posterior = hidden_markov_log_likelihood(data, return_posterior=True)  # entry t-1 is bin t
    p_off = torch.cat([torch.zeros(1, n, dtype=x.dtype), posterior[:, labels, 1]])  # (T, N): state 1 is "off"
    true_off = (hidden_states(data)[:, labels] == 1).double()
    pooled = (torch.zeros(n_bins, int(labels.max()) + 1, dtype=x.dtype).index_add_(1, labels, x) > 0).double()
    chains = SwitchingBernoulli(pooled.shape[1], 0).double()
    chains.init_from_data(pooled[torch.cat([torch.arange(a, b) for a, b in segments["train"]])])
    with torch.no_grad():
        filtered = chains.filter(pooled[None], pooled.new_zeros(1, n_bins, 0))[1][0]  # (T, C, 2) after bin t
        predicted = torch.einsum("tck,ckl->tcl", filtered, chains.log_transition_matrix(x.dtype).exp())
    or_off = torch.cat([torch.zeros(1, n, dtype=x.dtype), predicted[:-1, labels, 0]])  # state 0: the least active
    out = {"exact": float(-log_lik[test - 1].sum() / (test.numel() * n)),
           "glm": fit_glm(x, None, train, test),
           "glm_posterior": fit_glm(x, p_off, train, test),
           "glm_or_filter": fit_glm(x, or_off, train, test),
           "glm_true_state": fit_glm(x, true_off, train, test)}
    gap = out["glm"] - out["exact"]
    out["gap_closed"] = {k: (out["glm"] - out[k]) / gap for k in ("glm_posterior", "glm_or_filter", "glm_true_state")}
    return out


def switching_estimation(data: SpikeData, l1s: list[float], window: int = 64, context: int = 16) -> dict:
    """Test (and validation) NLL per neuron-bin of the switching GLM with the true communities, fitted from the
    true parameters with each lasso strength in ``l1s``, and of the true parameters and the exact filter on the same
    bins (see the module docstring)."""
    dm = SpikeDataModule(data, observed_fraction=1.0, window=window)
    dm.setup("fit")
    x = data.spikes.double().clamp(max=1)
    n = x.shape[1]
    windows = {split: x[dm.splits[split].starts[:, None] + torch.arange(window)] for split in ("train", "val", "test")}
    test_bins = (dm.splits["test"].starts[:, None] + torch.arange(context, window)).reshape(-1)
    meta, labels = data.meta, data.true_communities.long()
    true_w = data.true_couplings if data.true_couplings.layout == torch.strided else data.true_couplings.to_dense()
    net = BernoulliHMM(n, n_states=2, context=context, communities=labels, history=1).double()

    def start_at_truth():
        offsets = torch.as_tensor(meta["offsets"]).double()
        with torch.no_grad():
            net.emission_logits.copy_(torch.as_tensor(meta["bias"]).double()[None] + offsets[labels].T)
            net.transition_logits.copy_(torch.as_tensor(meta["transition"]).double().log())
            net.weight[0].copy_(true_w.double())

    def nll(split):
        with torch.no_grad():
            return -float(net.log_prob(windows[split]).mean()) / n

    start_at_truth()
    out = {"exact": float(-hidden_markov_log_likelihood(data)[test_bins - 1].mean() / n),
           "true_parameters": nll("test"), "fits": {}}
    for l1 in l1s:
        start_at_truth()
        opt = torch.optim.LBFGS(net.parameters(), max_iter=200, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure():
            opt.zero_grad()
            loss = -net.log_prob(windows["train"]).mean() / n + l1 * _penalty(net.weight, "l1").sum() / n
            loss.backward()
            return loss

        for _ in range(3):  # L-BFGS restarts: one step of 200 iterations stops early on a flat stretch
            opt.step(closure)
        out["fits"][str(l1)] = {"train": nll("train"), "val": nll("val"), "test": nll("test")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "dgrn_mesoscale_data"))
    parser.add_argument("--switching-l1", nargs="*", type=float, default=None,
                        help="also fit the switching GLM with the true communities at these lasso strengths")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "hidden_drive_floor.json"))
    args = parser.parse_args()
    results = {}
    for seed in args.seeds:
        data = SpikeData.load(data_file("kising_hmm", seed, Path(args.data_dir)))
        results[str(seed)] = res = floor(data)
        print(f"seed {seed}: GLM {res['glm']:.5f}, GLM + filtered state {res['glm_posterior']:.5f} "
              f"({100 * res['gap_closed']['glm_posterior']:.0f} % of the gap), GLM + OR filter {res['glm_or_filter']:.5f} "
              f"({100 * res['gap_closed']['glm_or_filter']:.0f} %), GLM + true state "
              f"{res['glm_true_state']:.5f} ({100 * res['gap_closed']['glm_true_state']:.0f} %), exact "
              f"{res['exact']:.5f}", flush=True)
        if args.switching_l1:
            res["switching"] = sw = switching_estimation(data, args.switching_l1)
            gap = res["glm"] - res["exact"]
            for l1, fit in sw["fits"].items():
                print(f"  switching GLM, true communities, lasso {l1}: test {fit['test']:.5f} (val {fit['val']:.5f}; "
                      f"{100 * (1 - (fit['test'] - sw['exact']) / gap):.0f} % of the gap; true parameters "
                      f"{sw['true_parameters']:.5f}, exact {sw['exact']:.5f} on these bins)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(args.out), json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
