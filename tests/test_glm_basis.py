"""The raised-cosine history basis of the GLM, and exact sampling of the next bin by the simple nets."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from dgrn.models import NextBinModule
from dgrn.nn import BernoulliGLM, GRUBernoulli, IndependentBernoulli, raised_cosine_basis


def closed_form(history: int, n_basis: int, offset: float) -> torch.Tensor:
    """Pillow et al. (2008), written out lag by lag: centres evenly spaced in log(lag + offset) from lag 1 to lag
    ``history``, a quarter period apart; each function half a raised cosine of period 4 spacings."""
    u = [math.log(k + offset) for k in range(1, history + 2)]
    spacing = (u[history - 1] - u[0]) / (n_basis - 1) if n_basis > 1 else (u[history] - u[0]) / 2
    out = torch.zeros(history, n_basis, dtype=torch.float64)
    for k in range(history):
        for j in range(n_basis):
            phase = (u[k] - (u[0] + j * spacing)) * math.pi / (2 * spacing)
            if abs(phase) <= math.pi:
                out[k, j] = 0.5 * (1 + math.cos(phase))
    return out


@pytest.mark.parametrize("history, n_basis, offset", [(40, 6, 1.0), (20, 5, 0.5), (12, 1, 2.0), (7, 7, 0.0)])
def test_basis_matches_the_closed_form_and_tiles(history, n_basis, offset):
    basis = raised_cosine_basis(history, n_basis, offset, dtype=torch.float64)
    assert basis.shape == (history, n_basis)
    torch.testing.assert_close(basis, closed_form(history, n_basis, offset), atol=1e-12, rtol=0)
    assert basis.min() >= 0 and basis.max() <= 1
    assert basis[0, 0] == 1  # the first function peaks at lag 1
    if n_basis > 1:
        assert basis[-1, -1] == pytest.approx(1.0)  # the last one at lag `history`
        assert (basis.argmax(0).diff() >= 0).all()  # peaks in order (two may share a lag when J is close to H)
    u = torch.log(torch.arange(1, history + 1, dtype=torch.float64) + offset)
    total = basis.sum(1)
    if n_basis >= 3:  # quarter-period spacing: the sum is constant (2) between the second and the second-last centre
        spacing = (u[-1] - u[0]) / (n_basis - 1)
        middle = (u >= u[0] + spacing - 1e-12) & (u <= u[-1] - spacing + 1e-12)
        assert middle.sum() >= 2
        torch.testing.assert_close(total[middle], torch.full_like(total[middle], 2.0), atol=1e-12, rtol=0)
    if n_basis >= 2:
        assert total[0] == pytest.approx(1.5) and total[-1] == pytest.approx(1.5)
    assert (total > 0).all()  # every lag is seen


def test_basis_argument_errors():
    for args in [(0, 1), (5, 0), (5, 6), (5, 2, -1.0)]:
        with pytest.raises(ValueError):
            raised_cosine_basis(*args)
    with pytest.raises(ValueError):
        BernoulliGLM(4, history=3, n_basis=4)


def lag_reference(bias, lag_weights, x, context):
    """The plain lag GLM evaluated bin by bin with explicit loops (no basis, no convolution)."""
    b, length, n = x.shape
    out = torch.zeros(b, length - context, n, dtype=x.dtype)
    for t in range(context, length):
        eta = bias.clone()
        for k in range(1, lag_weights.shape[0] + 1):
            eta = eta + x[:, t - k] @ lag_weights[k - 1].T
        out[:, t - context] = eta
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("history, n_basis, rank", [(10, 4, 0), (40, 6, 0), (6, 3, 2), (5, 1, 0)])
def test_basis_glm_equals_a_lag_glm_with_basis_times_coefficients(dtype, history, n_basis, rank):
    torch.manual_seed(0)
    m = BernoulliGLM(5, history=history, n_basis=n_basis, basis_offset=0.7, latent_rank=rank,
                     latent_history=history + 3).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    assert m.weight.shape == (n_basis, 5, 5) and m.context == max(history, history + 3 if rank else 0)
    x = (torch.rand(3, m.context + 9, 5) < 0.3).to(dtype)
    out = m(x)
    assert out.dtype == dtype and out.shape == (3, 9, 5)
    basis = raised_cosine_basis(history, n_basis, 0.7, dtype=torch.float64)
    lag_w = torch.einsum("kj,jmn->kmn", basis, m.weight.detach().double())
    torch.testing.assert_close(m.lag_weights().double(), lag_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.coupling_matrix().double(), lag_w.sum(0), atol=1e-4, rtol=1e-5)
    # the same model as a plain lag GLM (the module's own lag path, latent input included) ...
    plain = BernoulliGLM(5, history=history, latent_rank=rank, latent_history=history + 3).double()
    state = {k: v.double() for k, v in m.state_dict().items()}
    state["weight"] = lag_w
    plain.load_state_dict(state)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out.double(), plain(x.double()), atol=tol, rtol=tol)
    if not rank:  # ... and as explicit loops over bins and lags
        ref = lag_reference(m.bias.detach().double(), lag_w, x.double(), m.context)
        torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


def test_basis_glm_state_dict_gradients_and_default():
    plain = BernoulliGLM(4, history=3)
    assert plain.n_basis == 0 and set(plain.state_dict()) == {"bias", "weight"}
    assert plain.weight.shape == (3, 4, 4) and plain.lag_weights() is plain.weight  # the default is unchanged
    m = BernoulliGLM(4, history=12, n_basis=4).double()
    assert set(m.state_dict()) == {"bias", "weight"}  # the basis is rebuilt from the arguments, not saved
    with torch.no_grad():
        m.weight.normal_()
    x = (torch.rand(2, 16, 4) < 0.4).double()
    names = [n for n, _ in m.named_parameters()]

    def f(*ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,)).sum()

    assert torch.autograd.gradcheck(f, tuple(p.detach().requires_grad_() for p in m.parameters()))
    # through the next-bin module: the l1 penalty acts on the basis coefficients
    model = NextBinModule(n_neurons=4, net={"name": "glm", "history": 12, "n_basis": 4}, l1=0.1)
    with torch.no_grad():
        model.net.weight.fill_(0.5)
    loss = model.training_step(x.float(), 0)
    from dgrn.metrics import bernoulli_nll
    nll = bernoulli_nll(model(x.float()), x.float()[:, 12:])
    torch.testing.assert_close(loss, nll + 0.1 * 0.5 * 4 * 16 / 4)


def test_glm_long_config_trains(run_train):
    metrics, _ = run_train(["model=glm_long"])
    assert math.isfinite(metrics["test/nll"])


# --- sampling the bin after a window ------------------------------------------------------------------------------

PATTERNS = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))


def next_bin_distribution(net, window: torch.Tensor) -> torch.Tensor:
    """``p(next bin = pattern | window)`` of every 0/1 pattern, from ``forward`` on the window extended by it."""
    extended = torch.cat([window.expand(len(PATTERNS), -1, -1), PATTERNS.to(window)[:, None]], 1)
    logits = net(extended)[:, -1]
    return (-F.binary_cross_entropy_with_logits(logits, PATTERNS.to(window), reduction="none").sum(-1)).exp()


def check_draws(net, x: torch.Tensor, n: int = 40000) -> None:
    draws = net.sample(x, n, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (x.shape[0], n, 3) and draws.dtype == x.dtype
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    with torch.no_grad():
        for b in range(x.shape[0]):
            p = next_bin_distribution(net, x[b]).double()
            torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64))
            freq = (draws[b][:, None] == PATTERNS.to(x)).all(-1).double().mean(0)
            assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-3).all(), (freq, p)
    assert torch.equal(draws, net.sample(x, n, generator=torch.Generator().manual_seed(0)))


def randomized(net):
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    return net


@pytest.mark.parametrize("make", [
    lambda: IndependentBernoulli(3, context=2),
    lambda: IndependentBernoulli(3, context=0),
    lambda: BernoulliGLM(3, history=2),
    lambda: BernoulliGLM(3, history=6, n_basis=3, latent_rank=1, latent_history=8),
    lambda: GRUBernoulli(3, hidden_size=5, context=3),
], ids=["independent", "independent-context0", "glm", "glm-basis-latent", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_matches_the_predicted_next_bin(make, dtype):
    torch.manual_seed(1)
    net = randomized(make()).to(dtype)
    x = (torch.rand(2, net.context + 3, 3) < 0.4).to(dtype)
    check_draws(net, x)


def test_sample_uses_the_window_and_rejects_short_ones():
    torch.manual_seed(2)
    glm = randomized(BernoulliGLM(3, history=2))
    with torch.no_grad():
        glm.weight.mul_(4)
    x = (torch.rand(1, 2, 3) < 0.5).float()
    flipped = 1 - x
    assert not torch.equal(glm.sample(x, 2000, torch.Generator().manual_seed(0)).mean(1),
                           glm.sample(flipped, 2000, torch.Generator().manual_seed(0)).mean(1))
    # only the last `context` bins matter to the GLM
    longer = torch.cat([torch.ones(1, 5, 3), x], 1)
    assert torch.equal(glm.sample(x, 50, torch.Generator().manual_seed(0)),
                       glm.sample(longer, 50, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="expected windows"):
        glm.sample(x[:, :1])
    with pytest.raises(ValueError, match="n_samples"):
        glm.sample(x, 0)
    with pytest.raises(ValueError, match="expected windows"):
        GRUBernoulli(3, context=4).sample(torch.zeros(1, 3, 3))
