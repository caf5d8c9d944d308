import math

import pytest
import torch

from dgrn.metrics import SpikePredictionMetrics, bits_per_spike, edge_auroc
from dgrn.graph.glm import glm_logits
from dgrn.nn import BernoulliGLM, IndependentBernoulli, build_network


def dense_reference(m: BernoulliGLM, x: torch.Tensor) -> torch.Tensor:
    """The GLM equation evaluated bin by bin with explicit loops."""
    b, length, n = x.shape
    out = torch.zeros(b, length - m.context, n, dtype=x.dtype)
    for t in range(m.context, length):
        eta = m.bias.to(x.dtype).clone()
        for k in range(1, m.history + 1):
            eta = eta + x[:, t - k] @ m.weight[k - 1].to(x.dtype).T
        if m.latent_rank:
            tau, lags = float(m.log_latent_tau.detach().exp()), range(m.latent_delay, m.latent_history + 1)
            kernel = torch.tensor([math.exp(-(k - m.latent_delay) / tau) for k in lags], dtype=x.dtype)
            kernel = kernel / kernel.sum()
            xbar = sum(w * x[:, t - k] for w, k in zip(kernel, lags))
            eta = eta + (xbar @ m.latent_in.to(x.dtype)) @ m.latent_out.to(x.dtype).T
        out[:, t - m.context] = eta
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("history, rank, latent_history, latent_delay",
                         [(1, 0, 1, None), (3, 0, 1, None), (2, 2, 5, None), (4, 1, 3, 1), (1, 2, 4, 4), (2, 1, 3, 2)])
def test_glm_matches_the_dense_reference(dtype, history, rank, latent_history, latent_delay):
    torch.manual_seed(0)
    m = BernoulliGLM(7, history=history, latent_rank=rank, latent_history=latent_history,
                     latent_delay=latent_delay).to(dtype)
    assert m.latent_delay == ((history + 1 if latent_delay is None else latent_delay) if rank else None)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x = (torch.rand(3, 12, 7) < 0.3).to(dtype)
    out = m(x)
    assert out.dtype == dtype and out.shape == (3, 12 - m.context, 7)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, dense_reference(m, x), atol=tol, rtol=tol)


def test_glm_gradcheck_float64():
    m = BernoulliGLM(4, history=2, latent_rank=1, latent_history=4).double()
    with torch.no_grad():
        m.latent_out.normal_()
    x = (torch.rand(2, 8, 4) < 0.4).double()
    params = tuple(m.parameters())

    def f(*ps):
        return torch.func.functional_call(m, dict(zip([n for n, _ in m.named_parameters()], ps)), (x,)).sum()

    assert torch.autograd.gradcheck(f, tuple(p.detach().requires_grad_() for p in params))


def test_context_and_shape_errors():
    m = BernoulliGLM(5, history=3)
    with pytest.raises(ValueError, match="5 neurons"):
        m(torch.zeros(1, 10, 4))
    with pytest.raises(ValueError, match="window > 3"):
        m(torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match="\\(B, L, N\\)"):
        m(torch.zeros(10, 5))
    with pytest.raises(ValueError, match="unknown network 'mlp'"):
        build_network("mlp", n_neurons=3)
    with pytest.raises(ValueError, match="first lag latent_delay \\(4; default history \\+ 1\\)"):
        BernoulliGLM(5, history=3, latent_rank=1, latent_history=3)
    with pytest.raises(ValueError, match="latent_delay must be an integer >= 1"):
        BernoulliGLM(5, latent_rank=1, latent_delay=0)
    with pytest.raises(ValueError, match="context 2 is shorter than the model's 3 bins"):
        glm_logits(torch.zeros(1, 10, 5), m.bias, m.weight, context=2)


def test_reset_parameters_restores_the_initial_state():
    m = BernoulliGLM(5, latent_rank=2)
    init = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        m.weight.add_(1.0)
        m.bias.add_(1.0)
    m.reset_parameters()
    assert torch.equal(m.weight, init["weight"]) and torch.equal(m.bias, init["bias"])


def test_maximum_likelihood_recovers_the_couplings():
    """L-BFGS on the GLM likelihood of kinetic-Ising data recovers the true W (the model is well specified)."""
    from dgrn.sim import kinetic_ising

    d = kinetic_ising(30, 30000, n_communities=3, seed=3)
    x = d.spikes.float()[None]
    m = BernoulliGLM(30)
    opt = torch.optim.LBFGS(m.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x), x[:, 1:])
        loss.backward()
        return loss

    opt.step(closure)
    w_hat, w = m.coupling_matrix().detach(), d.true_couplings
    off = ~torch.eye(30, dtype=torch.bool)
    assert torch.corrcoef(torch.stack([w_hat[off], w[off]]))[0, 1] > 0.9
    assert edge_auroc(w_hat, w) > 0.95
    torch.testing.assert_close(m.bias.detach(), torch.tensor(d.meta["bias"]), atol=0.3, rtol=0)


def test_bits_per_spike_definition():
    target = (torch.rand(500, 4) < torch.tensor([0.1, 0.2, 0.3, 0.05])).float()
    rate = target.mean(0)
    null_logits = torch.logit(rate).expand_as(target)
    assert abs(float(bits_per_spike(null_logits, target))) < 1e-9  # the NLB null scores exactly 0
    oracle = torch.where(target > 0, 20.0, -20.0)
    # a perfect predictor gains the null's entire code length: -log2 L(null) / n_spikes
    null_bits = -float((target * rate.log() + (1 - target) * (1 - rate).log()).sum()) / math.log(2)
    assert float(bits_per_spike(oracle, target)) == pytest.approx(null_bits / float(target.sum()), rel=1e-6)


def test_metric_accumulation_does_not_depend_on_batching():
    torch.manual_seed(1)
    logits, target = torch.randn(6, 20, 5), (torch.rand(6, 20, 5) < 0.3).float()
    metric = SpikePredictionMetrics(5)
    for i in range(0, 6, 2):
        metric.update(logits[i:i + 2], target[i:i + 2])
    out = metric.compute()
    assert float(out["bits_per_spike"]) == pytest.approx(float(bits_per_spike(logits, target)), rel=1e-6)
    nll = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert float(out["nll"]) == pytest.approx(float(nll), rel=1e-6)


def test_edge_auroc_extremes():
    truth = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, -2.0], [0.5, 0.0, 0.0]])
    assert float(edge_auroc(truth * 3, truth)) == 1.0
    assert float(edge_auroc((truth == 0).float(), truth)) == 0.0
    with pytest.raises(ValueError, match="no edges"):
        edge_auroc(torch.rand(3, 3), torch.zeros(3, 3))


def test_independent_model_shape():
    m = IndependentBernoulli(3, context=2)
    assert m(torch.zeros(4, 5, 3)).shape == (4, 3, 3)


def test_gru_is_causal_and_matches_a_stepwise_reference():
    from dgrn.nn import GRUBernoulli

    torch.manual_seed(0)
    m = GRUBernoulli(5, hidden_size=8, context=3).double()
    x = (torch.rand(2, 10, 5) < 0.3).double()
    out = m(x)
    assert out.shape == (2, 7, 5)
    cell = torch.nn.GRUCell(5, 8).double()
    cell.weight_ih.data, cell.weight_hh.data = m.gru.weight_ih_l0.data, m.gru.weight_hh_l0.data
    cell.bias_ih.data, cell.bias_hh.data = m.gru.bias_ih_l0.data, m.gru.bias_hh_l0.data
    h = torch.zeros(2, 8, dtype=torch.float64)
    for t in range(9):  # the prediction of bin t + 1 sees bins 0..t only
        h = cell(x[:, t], h)
        if t + 1 >= 3:
            torch.testing.assert_close(out[:, t + 1 - 3], m.readout(h))
    future = x.clone()
    future[:, -1] = 1 - future[:, -1]  # changing the last bin cannot change any prediction
    torch.testing.assert_close(m(future), out)


def test_edge_auroc_can_return_nan_with_a_warning():
    with pytest.warns(UserWarning, match="edge AUROC is undefined"):
        assert math.isnan(float(edge_auroc(torch.rand(3, 3), torch.zeros(3, 3), undefined="nan")))
    with pytest.raises(ValueError, match="undefined must be"):
        edge_auroc(torch.rand(3, 3), torch.zeros(3, 3), undefined="skip")


def test_l1_penalizes_every_lag_so_opposite_lags_do_not_cancel():
    """A GLM whose two lags cancel (W2 = -W1, net coupling 0) pays lambda * (|W1| + |W2|) / N, not 0."""
    import warnings

    from dgrn.models import NextBinModule

    n, lam = 5, 0.3
    model = NextBinModule(n, {"name": "glm", "history": 2}, l1=lam)
    w1 = torch.randn(n, n)
    with torch.no_grad():
        model.net.weight.copy_(torch.stack([w1, -w1]))
    assert not model.net.coupling_matrix().detach().any()
    x = (torch.rand(3, 10, n) < 0.3).float()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        loss = model.training_step(x, 0)
        nll = torch.nn.functional.binary_cross_entropy_with_logits(
            glm_logits(x, model.net.bias, model.net.weight, context=2), x[:, 2:])
    expected = lam * 2 * float(w1.abs().sum()) / n
    assert expected > 0 and float(loss - nll) == pytest.approx(expected, rel=1e-5)
