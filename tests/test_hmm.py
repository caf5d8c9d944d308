import copy
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgrn.data import SpikeData, block_split
from dgrn.models import NextBinModule
from dgrn.nn import BernoulliHMM, build_network


def randomized(m: BernoulliHMM, scale: float = 1.0) -> BernoulliHMM:
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, scale)
    return m


def brute_force_prefix_log_probs(m: BernoulliHMM, x: torch.Tensor) -> torch.Tensor:
    """``log p(x_0..x_t)`` for every ``t`` of one window ``x`` ``(W, N)``, by summing over all ``K^(t+1)`` paths."""
    k = m.n_states
    pi0 = m.initial_log_distribution(torch.float64)[0].exp().tolist()
    a = m.log_transition_matrix(torch.float64)[0].exp().tolist()
    p = torch.sigmoid(m.emission_logits.double()).tolist()

    def emit(s: int, row: torch.Tensor) -> float:
        return math.prod(p[s][i] if row[i] else 1 - p[s][i] for i in range(len(row)))

    out = []
    for t in range(x.shape[0]):
        total = 0.0
        for path in itertools.product(range(k), repeat=t + 1):
            w = pi0[path[0]] * emit(path[0], x[0])
            for u in range(1, t + 1):
                w *= a[path[u - 1]][path[u]] * emit(path[u], x[u])
            total += w
        out.append(math.log(total))
    return torch.tensor(out, dtype=torch.float64)


def bernoulli_loglik(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)


@pytest.mark.parametrize("start", ["stationary", "initial"])
@pytest.mark.parametrize("context", [0, 1])
def test_filter_equals_brute_force_over_hidden_paths(start, context):
    torch.manual_seed(1)
    m = randomized(BernoulliHMM(3, n_states=3, context=context, start=start).double())
    x = (torch.rand(2, 4, 3) < 0.5).double()
    expected = []
    for w in x:  # predictive log p(x_t | x_<t) = log p(x_0..t) - log p(x_0..t-1)
        prefix = brute_force_prefix_log_probs(m, w)
        expected.append(torch.cat([prefix[:1], prefix.diff()])[context:])
    expected = torch.stack(expected)
    torch.testing.assert_close(m.log_prob(x), expected, atol=1e-12, rtol=1e-12)
    # the chain-rule logits of forward sum to the same joint
    torch.testing.assert_close(bernoulli_loglik(m(x), x[:, context:]), expected, atol=1e-12, rtol=1e-12)


def test_rates_and_chain_rule_logits_match_enumeration_of_the_next_bin():
    torch.manual_seed(2)
    m = randomized(BernoulliHMM(3, n_states=3, context=0)).double()
    x = (torch.rand(1, 4, 3) < 0.5).double()
    patterns = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    # p(x_3 = pattern | x_0..2) by brute force over the paths of the 4 bins
    joint = torch.stack([brute_force_prefix_log_probs(m, torch.cat([x[0, :3], q[None]]))[-1] for q in patterns])
    cond = (joint - torch.logsumexp(joint, 0)).exp()
    rates = (cond[:, None] * patterns).sum(0)
    torch.testing.assert_close(m.rates(x)[0, -1], rates, atol=1e-12, rtol=1e-12)
    # chain-rule logit of neuron i = P(x_i = 1 | the neurons before i, the past), by marginalizing the enumeration
    logits = m(x)[0, -1]
    row = x[0, -1]
    for i in range(3):
        same = (patterns[:, :i] == row[:i]).all(1)
        p1 = cond[same & (patterns[:, i] == 1)].sum() / cond[same].sum()
        torch.testing.assert_close(torch.sigmoid(logits[i]), p1, atol=1e-12, rtol=1e-12)


def test_stationary_distribution_is_invariant_and_differentiable():
    torch.manual_seed(3)
    m = randomized(BernoulliHMM(2, n_states=4), 2.0).double()
    pi = m.stationary_distribution()[0]
    a = m.log_transition_matrix()[0].exp()
    torch.testing.assert_close(pi @ a, pi, atol=1e-12, rtol=0)
    torch.testing.assert_close(pi, torch.linalg.matrix_power(a, 4096)[0], atol=1e-10, rtol=0)
    pi.square().sum().backward()
    assert torch.isfinite(m.transition_logits.grad).all() and m.transition_logits.grad.abs().sum() > 0


def test_score_equals_hmmlearn_categorical_on_one_neuron():
    """One Bernoulli neuron is a categorical HMM over the symbols {0, 1}: hmmlearn's own model, public API."""
    hmm = pytest.importorskip("hmmlearn.hmm")
    torch.manual_seed(4)
    m = randomized(BernoulliHMM(1, n_states=3, context=0, start="initial")).double()
    x = (torch.rand(1, 50, 1) < 0.3).double()
    ref = hmm.CategoricalHMM(n_components=3, init_params="", params="")
    ref.startprob_ = m.initial_log_distribution()[0].exp().detach().numpy()
    ref.transmat_ = m.log_transition_matrix()[0].exp().detach().numpy()
    p = torch.sigmoid(m.emission_logits).detach().numpy()[:, 0]
    ref.emissionprob_ = np.stack([1 - p, p], 1)
    ref.n_features = 2
    expected = ref.score(x[0].numpy().astype(int))
    assert float(m.log_prob(x).sum().detach()) == pytest.approx(expected, abs=1e-9, rel=1e-10)


@pytest.mark.parametrize("start", ["stationary", "initial"])
def test_score_equals_hmmlearn_on_a_population(start):
    pytest.importorskip("hmmlearn")
    torch.manual_seed(5)
    m = randomized(BernoulliHMM(6, n_states=3, context=0, start=start)).double()
    x = (torch.rand(1, 200, 6) < 0.3).double()
    expected = m.to_hmmlearn().score(x[0].numpy())
    assert float(m.log_prob(x).sum().detach()) == pytest.approx(expected, abs=1e-8, rel=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_finite_gradients(dtype):
    torch.manual_seed(6)
    m = BernoulliHMM(5, n_states=3, context=2, start="initial").to(dtype)
    x = (torch.rand(4, 12, 5) < 0.2).to(dtype)
    out, lp, rates = m(x), m.log_prob(x), m.rates(x)
    assert out.dtype == lp.dtype == rates.dtype == dtype
    assert out.shape == rates.shape == (4, 10, 5) and lp.shape == (4, 10)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(bernoulli_loglik(out, x[:, 2:]), lp, atol=tol, rtol=tol)
    (lp.sum() + out.sum()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # float32 agrees with float64
    m64 = BernoulliHMM(5, n_states=3, context=2, start="initial").double()
    m64.load_state_dict(m.state_dict())
    torch.testing.assert_close(lp.double(), m64.log_prob(x.double()), atol=1e-4, rtol=1e-5)


def test_gradcheck_float64():
    torch.manual_seed(7)
    m = randomized(BernoulliHMM(3, n_states=2, context=1)).double()
    x = (torch.rand(2, 5, 3) < 0.4).double()
    names = [n for n, _ in m.named_parameters()]

    def f(*ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,)).sum()

    assert torch.autograd.gradcheck(f, tuple(p.detach().requires_grad_() for p in m.parameters()))


def test_future_bins_do_not_change_the_predictions():
    torch.manual_seed(8)
    m = randomized(BernoulliHMM(4, n_states=3, context=2)).double()
    x = (torch.rand(2, 9, 4) < 0.3).double()
    future = x.clone()
    future[:, -1] = 1 - future[:, -1]
    torch.testing.assert_close(m.rates(future), m.rates(x))
    torch.testing.assert_close(m.log_prob(future)[:, :-1], m.log_prob(x)[:, :-1])


def test_sample_matches_the_predictive_distribution_of_the_next_bin():
    torch.manual_seed(9)
    m = randomized(BernoulliHMM(3, n_states=3, context=2), 1.5).double()
    x = (torch.rand(2, 6, 3) < 0.4).double()
    n = 40000
    draws = m.sample(x, n, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (2, n, 3) and draws.dtype == x.dtype and set(draws.unique().tolist()) <= {0.0, 1.0}
    patterns = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=x.dtype)
    for b in range(2):  # the window extended by every possible next bin: the net's own p(next bin | window)
        extended = torch.cat([x[b].expand(len(patterns), -1, -1), patterns[:, None]], 1)
        p = m.log_prob(extended)[:, -1].exp()
        torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=x.dtype))
        freq = (draws[b][:, None] == patterns).all(-1).double().mean(0)
        assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-3).all(), (freq, p)
    assert torch.equal(draws, m.sample(x, n, generator=torch.Generator().manual_seed(0)))


def simulate(p: np.ndarray, a: np.ndarray, t: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    states = np.empty(t, dtype=int)
    states[0] = 0
    for i in range(1, t):
        states[i] = rng.choice(len(a), p=a[states[i - 1]])
    return (rng.random((t, p.shape[1])) < p[states]).astype(np.float64), states


def test_init_from_data_recovers_planted_states():
    pytest.importorskip("hmmlearn")
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.4, size=(3, 12))
    a = np.full((3, 3), 0.01) + np.eye(3) * 0.97
    spikes, _ = simulate(p, a, 4000, seed=1)
    m = BernoulliHMM(12, n_states=3, context=0)
    x = torch.as_tensor(spikes, dtype=torch.float32)[None]
    before = float(m.log_prob(x).mean().detach())
    assert m.init_from_data(spikes) is m
    after = float(m.log_prob(x).mean().detach())
    assert after > before
    fitted = torch.sigmoid(m.emission_logits).detach().numpy()
    err = min(np.abs(fitted[list(perm)] - p).max() for perm in itertools.permutations(range(3)))
    assert err < 0.06
    stay = np.diag(m.log_transition_matrix()[0].exp().detach().numpy())
    assert (stay > 0.9).all()


def test_built_by_name_and_trained_through_the_next_bin_module():
    net = build_network("hmm", n_neurons=4, n_states=2, context=3)
    assert isinstance(net, BernoulliHMM) and net.coupling_matrix() is None
    model = NextBinModule(n_neurons=4, net={"name": "hmm", "n_states": 2, "context": 3})
    x = (torch.rand(5, 10, 4) < 0.2).float()
    loss = model.training_step(x, 0)
    # the module's Bernoulli NLL of the chain-rule logits is the HMM's exact NLL per neuron-bin
    torch.testing.assert_close(loss, -model.net.log_prob(x).mean() / 4)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_train_py_trains_the_hmm(run_train):
    metrics, _ = run_train(["model=hmm", "model.net.n_states=2", "model.net.context=4"])
    assert math.isfinite(metrics["test/nll"]) and math.isfinite(metrics["val/bits_per_spike"])


def test_em_start_is_baum_welch_on_the_training_blocks():
    """``init="em"``: fitting starts from ``init_from_data`` on the data module's training blocks (with their
    lengths); with lr 0 the trained net is exactly that EM fit, which beats the random start on validation."""
    pytest.importorskip("hmmlearn")
    import lightning as L

    from dgrn.models import SpikeDataModule

    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.4, size=(2, 6))
    spikes, _ = simulate(p, np.array([[0.97, 0.03], [0.03, 0.97]]), 3000, seed=2)
    data = SpikeData(torch.as_tensor(spikes, dtype=torch.float32), dt=0.01)
    dm = SpikeDataModule(dataset=data, window=16, batch_size=32, n_blocks=10)
    torch.manual_seed(3)
    model = NextBinModule(n_neurons=6, net={"name": "hmm", "n_states": 2, "context": 4}, lr=0.0, init="em")
    random_start = copy.deepcopy(model.net)
    dm.context = model.context
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(model, dm)
    train, lengths = dm.split_spikes("train", return_lengths=True)
    assert sum(lengths) == train.shape[0] and len(lengths) > 1
    reference = copy.deepcopy(random_start).init_from_data(train, lengths=lengths, seed=3)
    torch.testing.assert_close(model.net.emission_logits, reference.emission_logits)
    torch.testing.assert_close(model.net.transition_logits, reference.transition_logits)
    val = torch.cat([data.spikes[a:b] for a, b in block_split(data.n_bins, n_blocks=10)["val"]]).float()[None]
    assert model.net.log_prob(val).sum() > random_start.log_prob(val).sum()
    with pytest.raises(ValueError, match="init_from_data"):
        NextBinModule(n_neurons=6, net={"name": "glm"}, init="em")
    with pytest.raises(ValueError, match="init must be"):
        NextBinModule(n_neurons=6, net={"name": "hmm"}, init="kmeans")


def test_argument_errors():
    with pytest.raises(ValueError, match="start"):
        BernoulliHMM(3, start="uniform")
    with pytest.raises(ValueError, match="n_states"):
        BernoulliHMM(3, n_states=0)
    m = BernoulliHMM(3, context=4)
    with pytest.raises(ValueError, match="context"):
        m(torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="expected windows"):
        m.sample(torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="expected spikes"):
        m.init_from_data(np.zeros((10, 2)))


# --- one chain per community, GLM couplings ------------------------------------------------------------------------
def _switching(start: str = "stationary") -> BernoulliHMM:
    torch.manual_seed(11)
    return randomized(BernoulliHMM(5, n_states=2, context=2, start=start, communities=[3, 0, 3, 0, 3], history=2),
                      0.8).double()


def test_switching_glm_equals_the_simulators_exact_filter():
    """With the true parameters of a hidden-Markov kinetic Ising recording (state logits = bias + the community's
    offset, lag-1 couplings, the chains' transition matrices, stationary start at bin 1), the model's exact
    likelihood is the simulator's independent reference (``hidden_markov_log_likelihood``), bin for bin."""
    from dgrn.sim import hidden_markov_kinetic_ising, hidden_markov_log_likelihood

    d = hidden_markov_kinetic_ising(12, 300, 3, n_states=2, dwell=(5.0, 20.0), drive=-1.5, seed=4)
    labels = d.true_communities.long()
    m = BernoulliHMM(12, n_states=2, context=1, communities=labels, history=1).double()
    with torch.no_grad():
        bias = torch.tensor(d.meta["bias"], dtype=torch.float64)
        offsets = torch.tensor(d.meta["offsets"], dtype=torch.float64)  # (C, S)
        m.emission_logits.copy_(bias[None] + offsets[labels].T)
        m.weight[0] = d.true_couplings.double()
        m.transition_logits.copy_(torch.tensor(d.meta["transition"], dtype=torch.float64).log())
    x = d.spikes.double()[None]
    torch.testing.assert_close(m.log_prob(x)[0], hidden_markov_log_likelihood(d), rtol=0, atol=1e-9)


@pytest.mark.parametrize("start", ["stationary", "initial"])
def test_switching_glm_chain_rule_rates_and_samples_match_enumeration(start):
    """5 neurons in two interleaved communities with lag-2 couplings: the chain-rule logits sum to the exact
    log-likelihood, every next-bin pattern's probability (the window extended by it) sums to 1 over the 32 patterns
    and matches the draws, and the rates are that distribution's marginals."""
    m = _switching(start)
    x = (torch.rand(2, 7, 5) < 0.4).double()
    torch.testing.assert_close(bernoulli_loglik(m(x), x[:, 2:]), m.log_prob(x), atol=1e-12, rtol=0)
    patterns = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5)), dtype=torch.float64)
    n = 40000
    draws = m.sample(x, n, generator=torch.Generator().manual_seed(0))
    for b in range(2):
        extended = torch.cat([x[b].expand(len(patterns), -1, -1), patterns[:, None]], 1)
        p = m.log_prob(extended)[:, -1].exp()
        torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12, rtol=0)
        torch.testing.assert_close(m.rates(extended)[0, -1], p @ patterns, atol=1e-12, rtol=0)
        freq = (draws[b][:, None] == patterns).all(-1).double().mean(0)
        assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-3).all(), (freq, p)


def test_switching_glm_gradcheck_and_refusals():
    m = _switching("initial")
    x = (torch.rand(2, 6, 5) < 0.4).double()
    names = [n for n, _ in m.named_parameters()]
    assert "weight" in names and m.coupling_matrix().shape == (5, 5)

    def f(*ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,)).sum()

    assert torch.autograd.gradcheck(f, tuple(p.detach().requires_grad_() for p in m.parameters()))
    with pytest.raises(ValueError, match="one chain"):
        m.init_from_data(x[0])
    with pytest.raises(ValueError, match="one chain"):
        m.to_hmmlearn()
    with pytest.raises(ValueError, match="history"):
        BernoulliHMM(5, context=1, history=2)
    with pytest.raises(ValueError, match="communities"):
        BernoulliHMM(5, communities=[0, 1])


def test_train_py_trains_the_switching_glm_and_its_checkpoint_reloads(run_train):
    """``model=hmm_glm``: communities of the training split's couplings (one chain each), started at the fitted GLM;
    the checkpoint rebuilds the same net from its hyperparameters."""
    import json

    from dgrn.models import module_for
    from dgrn.runner import load_checkpoint

    metrics, run_dir = run_train(["model=hmm_glm", "renorm=none", "model.communities=leiden"])
    assert math.isfinite(metrics["test/nll"]) and math.isfinite(metrics["test/edge_auroc"])
    ckpt = load_checkpoint(json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"])
    module = module_for(ckpt["hyper_parameters"])(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    assert module.net.n_communities > 1 and module.net.history == 1
    assert module.net.coupling_matrix().abs().sum() > 0


def test_switching_bernoulli_init_from_data_recovers_planted_chains():
    """Two units, each switched by its own sticky chain between firing probabilities 0.1 and 0.8 (stay 0.98): the
    Baum-Welch start finds them (state 0 the least active) within what 20,000 bins allow."""
    from dgrn.nn import SwitchingBernoulli

    gen = torch.Generator().manual_seed(0)
    t, stay = 20_000, 0.98
    flips = torch.rand(t, 2, generator=gen) > stay
    z = (flips.long().cumsum(0) % 2)  # each unit's state flips with probability 0.02 per bin
    y = (torch.rand(t, 2, generator=gen) < torch.where(z > 0, 0.8, 0.1)).double()
    m = SwitchingBernoulli(2, in_features=3, n_states=2)
    m.init_from_data(y)
    p = torch.sigmoid(m.field.bias.view(2, 2)[:, 1:] + m.state_logits.detach())
    torch.testing.assert_close(p, torch.tensor([[0.1, 0.8], [0.1, 0.8]]), atol=0.02, rtol=0)
    a = torch.softmax(m.transition_logits.detach(), -1)
    torch.testing.assert_close(a.diagonal(dim1=1, dim2=2), torch.full((2, 2), stay), atol=0.01, rtol=0)
    with pytest.raises(ValueError, match="n_states >= 2"):
        SwitchingBernoulli(2, 3, n_states=1)
    with pytest.raises(ValueError, match="expected activity"):
        m.init_from_data(y[:, :1])


def test_switching_bernoulli_gradcheck_float64():
    from dgrn.nn import SwitchingBernoulli

    torch.manual_seed(0)
    m = randomized(SwitchingBernoulli(2, in_features=3, n_states=3).double())
    y = (torch.rand(2, 5, 2) < 0.5).double()
    c = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: m.filter(y, c)[0], (c,))
    assert torch.autograd.gradcheck(lambda c: m.filter(y, c)[1], (c,))


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_predictive_distribution_equals_the_log_domain_filter(compiled, dtype):
    """The filter in probabilities (for sampling), in PyTorch and compiled, gives the log-domain filter's last
    predictive distribution, also when the emissions are far below what exp can represent (log-likelihoods near
    -2,000: scaled per bin); float32 to its rounding (a few ulps per bin over 7 bins)."""
    from dgrn.nn.hmm import forward_filter, predictive_distribution

    torch.manual_seed(0)
    log_e = torch.randn(3, 7, 4, 3, dtype=torch.float64) * 5 - 2000
    log_a = torch.log_softmax(torch.randn(4, 3, 3, dtype=torch.float64), -1)
    log_prior = torch.log_softmax(torch.randn(3, 4, 3, dtype=torch.float64), -1)
    expected = forward_filter(log_e, log_a, log_prior)[0][:, -1].exp()
    scaled, a, prior = ((log_e - log_e.amax(-1, keepdim=True)).exp().to(dtype), log_a.exp().to(dtype),
                        log_prior.exp().to(dtype))
    got = predictive_distribution(scaled, a, prior, compiled=compiled)
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected.to(dtype))
    assert predictive_distribution(scaled[:, :0], a, prior, compiled=compiled).equal(prior)


@pytest.mark.parametrize("n_states", [2, 3])
def test_switching_predictive_equals_the_log_domain_filter(n_states, monkeypatch):
    """SwitchingBernoulli.predictive (the filter of a rollout step), compiled and in PyTorch, gives the log-domain
    filter's last predictive distribution, with drives of +-60 (emissions far below float32's range in some states)
    and +-1,000 (beyond float64's exponential), a drive one bin longer than the activity, a window cut out of a
    longer one (strided), one start for every window or one per window; on the CPU it runs the kernel unless told
    not to."""
    from dgrn.nn import _kernels
    from dgrn.nn.hmm import SwitchingBernoulli, forward_filter

    torch.manual_seed(1)
    m = SwitchingBernoulli(5, 3, n_states)
    with torch.no_grad():
        m.state_logits.normal_(0.0, 3.0)
        m.transition_logits.normal_()
    y = (torch.rand(4, 12, 5) < 0.4).float()[:, 3:]  # a strided view, as a rollout's window is
    drive = torch.randn(4, 10, 5) * 60
    drive[:, ::2, 0], drive[:, 1::2, 1] = 1000.0, -1000.0  # exp(-a) out of float64's range: the log-domain path
    start = torch.softmax(torch.randn(4, 5, n_states), -1)
    log_e = m.log_emission(y.double(), None, drive=drive[:, :9].double())
    log_a = m.log_transition_matrix(torch.float64)
    calls = []
    kernel = _kernels.switching_predictive
    monkeypatch.setattr(_kernels, "switching_predictive", lambda *a: calls.append(1) or kernel(*a))
    for first in (start, start[0]):
        expected = forward_filter(log_e, log_a, first.double().log().expand(4, -1, -1))[0][:, -1].exp()
        for compiled in (None, False):
            got = m.predictive(y, first, drive=drive, compiled=compiled)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)
    assert len(calls) == 2
