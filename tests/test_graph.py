"""dgrn.graph: coupling inference, baselines, communities, ordering, partition quality."""
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score as ami

from dgrn.graph import (
    ConvergenceWarning, UninformativeFitWarning, as_adjacency, community_hierarchy, community_order, correlation,
    coupling_standard_errors, denoise_couplings, find_communities, infer_couplings, mean_field_couplings, metagraph,
    partial_correlation, relabel, select_latent_rank, stable_resolution,
)
from dgrn.graph.baselines import _solve_tap
from dgrn.graph.quality import directed_modularity
from dgrn.metrics import edge_auroc, shared_driver_false_positive_rate
from dgrn.nn import BernoulliGLM
from dgrn.sim import kinetic_ising, planted_couplings
from dgrn.sim.kinetic_ising import glauber_dynamics, rate_matched_bias


@pytest.fixture(scope="module")
def kising():
    return kinetic_ising(30, 20000, n_communities=3, seed=3)


# ------------------------------------------------------------------------------------------ inference
def test_ml_matches_independent_per_neuron_logistic_regression(kising):
    """The fit is the penalized MLE: scikit-learn's per-neuron L2 logistic regression gives the same W and b (``tol=0``:
    L-BFGS to its own tolerances)."""
    from sklearn.linear_model import LogisticRegression

    x = kising.spikes[:6000].float()
    lam = 1e-3
    w, params = infer_couplings(x, strength=lam, max_iter=200, tol=0, dtype=torch.float64, return_params=True)
    t = x.shape[0] - 1
    ref_w, ref_b = np.zeros((30, 30)), np.zeros(30)
    for i in range(30):  # the reference loops over neurons on purpose: it is the slow, obvious computation
        # sklearn: 0.5 |w|^2 + C sum(loss)  <=>  ours: sum(loss) / T + lam |w|^2  with C = 1 / (2 lam T)
        lr = LogisticRegression(C=1 / (2 * lam * t), tol=1e-10, max_iter=5000).fit(x[:-1].numpy(), x[1:, i].numpy())
        ref_w[i], ref_b[i] = lr.coef_[0], lr.intercept_[0]
    np.testing.assert_allclose(w.numpy(), ref_w, atol=2e-3)
    np.testing.assert_allclose(params["bias"].numpy(), ref_b, atol=2e-3)


@pytest.mark.parametrize("penalty", ["l2", "l1"])
def test_default_fit_stops_at_tol_of_the_optimum(kising, penalty):
    """The default fit stops once the remaining Newton step (the gradient in the preconditioned coordinates) is at
    most ``tol`` = 1 % of the couplings: measured 0.3 % (l2) and 0.7 % (l1) from the fit run to L-BFGS's own
    tolerances (Frobenius, relative; the Hessian is only about the identity there), in 8 of 13 and 20 of 40 passes
    over the data; bound 5 %, and a tighter ``tol`` gets closer."""
    x = kising.spikes[:6000]
    exact, full = infer_couplings(x, penalty=penalty, max_iter=300, tol=0, dtype=torch.float64, return_params=True)
    rel = {}
    for tol in (1e-2, 1e-3):
        w, params = infer_couplings(x, penalty=penalty, max_iter=300, tol=tol, dtype=torch.float64,
                                    return_params=True)
        rel[tol] = float((w - exact).norm() / exact.norm())
        if tol == 1e-2:
            assert params["relative_gradient"] <= tol and params["evaluations"] < full["evaluations"]
    assert rel[1e-2] < 0.05 and rel[1e-3] < rel[1e-2]


def test_recovers_the_couplings_full_and_minibatch(kising):
    w_full = infer_couplings(kising, max_iter=30)
    w_mini = infer_couplings(kising, mode="minibatch", epochs=5)
    assert w_full.dtype == torch.float32 and w_full.shape == (30, 30)
    truth = kising.true_couplings
    assert float(edge_auroc(w_full, truth)) > 0.95
    assert float(edge_auroc(w_mini, truth)) > 0.93
    off = ~torch.eye(30, dtype=torch.bool)
    assert torch.corrcoef(torch.stack([w_full[off], truth[off]]))[0, 1] > 0.9


def test_warns_when_the_couplings_explain_nothing_beyond_the_rates(kising):
    """Independent neurons: the score statistic of the rate-only model (the classical score test of each neuron's
    logistic regression on the previous bin, summed) sits at its chi-square value, so the fit warns that W is noise;
    the kinetic-Ising network is far above it and fits without any warning."""
    import re

    gen = torch.Generator().manual_seed(0)
    rates = 0.03 + 0.2 * torch.rand(30, generator=gen)
    for t in (2000, 20000):
        independent = (torch.rand(t, 30, generator=gen) < rates).to(torch.uint8)
        match = r"no dependence on the previous 1 bin.*chance 900 \+- 42"
        with pytest.warns(UninformativeFitWarning, match=match) as record:
            infer_couplings(independent)
        x = independent.double().numpy()
        p = x.mean(0)
        cross = (x[1:] - p).T @ (x[:-1] - p)  # score of W[i, j] at W = 0, times T'
        fisher = np.cov(x.T, bias=True)  # information per bin of each row of W is p_i (1 - p_i) times this
        score = sum(cross[i] @ np.linalg.solve(fisher, cross[i]) / (p[i] * (1 - p[i])) for i in range(30)) / (t - 1)
        reported = float(re.search(r"score statistic (\d+)", str(record.pop(UninformativeFitWarning).message))[1])
        assert reported == pytest.approx(score, abs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        infer_couplings(kising)


def test_warns_when_lbfgs_stops_at_its_budget_short_of_the_optimum(kising):
    """max_iter=1 leaves W far from the optimum and warns; with ``tol=1e-3`` and max_iter=6 the fit also stops at its
    budget, but with the remaining step at 0.5 % of W (within 0.4 % of the optimum), so it stays silent."""
    with pytest.warns(ConvergenceWarning, match=r"did not converge: L-BFGS used its budget \(max_iter=1\)"):
        w = infer_couplings(kising, max_iter=1)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
            infer_couplings(kising, max_iter=bad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        near, params = infer_couplings(kising, max_iter=6, tol=1e-3, return_params=True)
    assert params["evaluations"] == 7 and 1e-3 < params["relative_gradient"] < 1e-2  # the budget stopped it
    converged = infer_couplings(kising, max_iter=100, tol=0)
    assert float((near - converged).norm() / converged.norm()) < 0.01 < float((w - converged).norm() / converged.norm())


def test_params_load_into_bernoulli_glm(kising):
    """infer_couplings and BernoulliGLM share one model: the fitted parameters load as its state_dict."""
    w, params = infer_couplings(kising, latent_rank=2, latent_history=5, latent_delay=3, max_iter=10,
                                return_params=True)
    assert (params["latent_history"], params["latent_delay"]) == (5, 3)
    glm = BernoulliGLM(30, latent_rank=2, latent_history=params["latent_history"], latent_delay=params["latent_delay"])
    glm.load_state_dict({k: params[k] for k in glm.state_dict()})
    torch.testing.assert_close(glm.coupling_matrix(), w)
    x = kising.spikes.float()[None]
    nll = torch.nn.functional.binary_cross_entropy_with_logits(glm(x), x[:, glm.context:])
    assert float(nll.detach()) == pytest.approx(params["nll"], rel=1e-4)
    assert float(params["latent_out"].abs().sum()) > 0  # the latent input was fitted


def test_latent_starts_after_the_coupling_filter(kising):
    """Without hidden neurons, a latent input from lag 2 on (the default for history 1) leaves W where plain ML puts
    it, while one that also sees lag 1 is a low-rank part of W^(1) and takes over the low-rank (community) part of the
    couplings: about 10 % of W (relative Frobenius norm) on this 3-community network, against about 1 %."""
    off = ~torch.eye(30, dtype=torch.bool)
    ml = infer_couplings(kising)

    def moved(**options):
        w = infer_couplings(kising, latent_rank=2, latent_history=5, **options)
        return float((w - ml)[off].norm() / ml[off].norm())

    assert moved() < 0.03
    assert moved(latent_delay=1) > 0.05
    with pytest.raises(ValueError, match="must be at least the latent input's first lag"):
        infer_couplings(kising, latent_rank=1, latent_history=2, history=2)
    with pytest.raises(ValueError, match="latent_delay must be an integer >= 1"):
        infer_couplings(kising, latent_rank=1, latent_delay=0)
    with pytest.raises(ValueError, match="must be at least the latent input's first lag"):  # before any rank is fitted
        infer_couplings(kising, latent_rank="auto", history=20, latent_history=20)


def hidden_driver_spikes(t: int = 20000, n: int = 20, seed: int = 0) -> torch.Tensor:
    """Independent neurons whose rates follow a slow hidden two-state switch (up for neurons 0..9, down for the
    others), with no couplings among them: all their shared structure comes from the hidden driver."""
    gen = torch.Generator().manual_seed(seed)
    flips = torch.rand(t, generator=gen) < 0.01
    state = (flips.long().cumsum(0) % 2).float()  # (T,), switches every ~100 bins
    drive = torch.where(torch.arange(n) < n // 2, 1.5, -1.5)
    logits = -2.0 + (2 * state[:, None] - 1) * drive
    return (torch.rand(t, n, generator=gen) < torch.sigmoid(logits)).to(torch.uint8)


def test_latent_rank_selection_by_held_out_likelihood():
    """A slow hidden driver is worth a latent input on held-out bins; independent neurons are not."""
    rank, scores = select_latent_rank(hidden_driver_spikes(), ranks=(0, 1, 2), max_iter=20)
    assert rank >= 1 and scores[rank] < scores[0] - 1e-3 and set(scores) == {0, 1, 2}
    gen = torch.Generator().manual_seed(1)
    independent = (torch.rand(20000, 20, generator=gen) < 0.1).to(torch.uint8)
    rank, scores = select_latent_rank(independent, ranks=(0, 1), max_iter=20)
    assert rank == 0
    # "auto" refits all bins with the chosen rank: exactly infer_couplings at that rank
    x = hidden_driver_spikes(8000, seed=2)
    w_auto, params = infer_couplings(x, latent_rank="auto", max_iter=15, return_params=True)
    torch.testing.assert_close(w_auto, infer_couplings(x, latent_rank=params["latent_rank"], max_iter=15))
    assert set(params["latent_rank_nll"]) == {0, 1, 2, 4, 8}
    with pytest.raises(ValueError, match="latent_rank must be"):
        infer_couplings(x, latent_rank="best")
    with pytest.raises(ValueError, match="ranks must be"):
        select_latent_rank(x, ranks=(0, -1))
    with pytest.raises(ValueError, match="val_fraction"):
        select_latent_rank(x, val_fraction=1.0)
    with pytest.raises(ValueError, match="blocks"):
        select_latent_rank(x, blocks=1)
    with pytest.raises(ValueError, match="fewer than blocks"):
        select_latent_rank(x[:200], val_fraction=0.05)
    with pytest.raises(ValueError, match="chooses latent_rank"):
        select_latent_rank(x, latent_rank=2)
    with pytest.warns(UserWarning, match="latent rank 1 skipped"):  # 20 bins of latent history do not fit in 20
        rank, scores = select_latent_rank(x[:25], ranks=(0, 1), blocks=4, max_iter=5)
    assert rank == 0 and set(scores) == {0}
    torch.testing.assert_close(infer_couplings(x, latent_rank=1.0, max_iter=5), infer_couplings(x, latent_rank=1,
                                                                                                 max_iter=5))


def test_l1_is_sparser_than_l2(kising):
    x = kising.spikes[:8000]
    w1 = infer_couplings(x, penalty="l1", strength=3e-3, max_iter=25)
    w2 = infer_couplings(x, penalty="l2", strength=3e-3, max_iter=25)
    assert (w1.abs() < 0.02).sum() > (w2.abs() < 0.02).sum() + 50


def test_bad_input():
    x = (torch.rand(500, 6) < 0.2).to(torch.uint8)
    x[:, 2] = 0
    with pytest.warns(UserWarning, match="never or always fire"):
        w = infer_couplings(x, max_iter=5)
    assert torch.all(w[2] == 0) and torch.all(w[:, 2] == 0) and torch.isfinite(w).all()
    with pytest.raises(ValueError, match="no spikes"):
        infer_couplings(torch.zeros(100, 4))
    with pytest.raises(ValueError, match="constant"):
        infer_couplings(torch.ones(100, 4))
    nan = x.float()
    nan[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        infer_couplings(nan)
    with pytest.raises(ValueError, match="unknown penalty 'l3'.*'l1', 'l2'"):
        infer_couplings(x, penalty="l3")
    with pytest.raises(ValueError, match="unknown mode"):
        infer_couplings(x, mode="online")
    few = (torch.rand(20, 40) < 0.3).to(torch.uint8)
    with pytest.warns(UserWarning, match="fewer scored bins"):
        w = infer_couplings(few, max_iter=20)
    assert torch.isfinite(w).all() and float(w.abs().max()) < 10  # regularized, not run away
    with pytest.raises(ValueError, match="time bins"):
        infer_couplings(x[:1])


# ------------------------------------------------------------------------------------------ baselines
def test_correlation_matches_numpy(kising):
    c = correlation(kising)
    ref = np.corrcoef(kising.spikes.numpy().T.astype(float))
    np.fill_diagonal(ref, 0)
    np.testing.assert_allclose(c.numpy(), ref, atol=1e-5)
    lagged = correlation(kising, lag=1)
    x = kising.spikes.numpy().astype(float)
    assert lagged[4, 7] == pytest.approx(np.corrcoef(x[1:, 4], x[:-1, 7])[0, 1], abs=1e-5)


def test_partial_correlation_ridge_closed_form(kising):
    x = kising.spikes.double()
    z = (x - x.mean(0)) / x.std(0)
    p = torch.linalg.inv(z.T @ z / z.shape[0] + 1e-3 * torch.eye(30))
    ref = -p / torch.outer(p.diagonal().sqrt(), p.diagonal().sqrt())
    ref.fill_diagonal_(0)
    torch.testing.assert_close(partial_correlation(kising, "ridge").double(), ref, atol=1e-5, rtol=0)
    for est in ("ledoit_wolf", "glasso"):
        pc = partial_correlation(kising, est, alpha=0.05 if est == "glasso" else None)
        assert torch.isfinite(pc).all() and torch.allclose(pc, pc.T, atol=1e-4)
    with pytest.raises(ValueError, match="unknown estimator"):
        partial_correlation(kising, "pca")


def test_tap_cubic_root():
    a = torch.tensor([0.0, 0.01, 0.1, 4 / 27, 0.5], dtype=torch.float64)
    f = _solve_tap(a)
    ok = a <= 4 / 27
    torch.testing.assert_close((f * (1 - f) ** 2)[ok], a[ok], atol=1e-9, rtol=0)
    assert float(f[-1]) == pytest.approx(1 / 3)


def test_mean_field_agrees_with_maximum_likelihood_at_weak_coupling():
    """nMF and TAP are exact to leading order in the couplings (Roudi & Hertz 2011): at weak coupling they agree
    with the (independently computed) maximum-likelihood estimate, in the same 0/1 convention (W = 4 J)."""
    d = kinetic_ising(40, 30000, n_communities=2, seed=5, j_in=0.3, j_out=-0.3)
    off = ~torch.eye(40, dtype=torch.bool)
    ml = infer_couplings(d, max_iter=30)[off]
    for method in ("nmf", "tap"):
        w = mean_field_couplings(d, method)[off]
        assert torch.corrcoef(torch.stack([w, ml]))[0, 1] > 0.97, method
        assert 0.8 < float(w @ ml / ml.square().sum()) < 1.3, method
    with pytest.raises(ValueError, match="unknown mean-field method"):
        mean_field_couplings(d, "bethe")


def test_shared_driver_false_positive_rate():
    truth = torch.zeros(4, 4)
    truth[0, 3] = truth[1, 3] = 1.0  # hidden neuron 3 drives 0 and 1
    truth[2, 0] = 1.0  # the one true edge among observed 0, 1, 2
    observed = torch.tensor([0, 1, 2])
    spurious = torch.tensor([[0, 5.0, 0], [0, 0, 0], [1.0, 0, 0]])  # calls 0<-1 (shared driver) as the edge
    out = shared_driver_false_positive_rate(spurious, truth, observed)
    assert out["n_pairs"] == 2 and out["shared_driver"] == 0.5
    good = torch.tensor([[0, 0, 0], [0, 0, 0], [1.0, 0, 0]])
    assert shared_driver_false_positive_rate(good, truth, observed)["shared_driver"] == 0.0
    # sparse ground truth (the LIF simulator's connectivity): the same answers
    for sparse in (truth.to_sparse(), truth.to_sparse_csr()):
        assert shared_driver_false_positive_rate(spurious, sparse, observed) == out


# ------------------------------------------------------------------------------------------ communities
@pytest.fixture(scope="module")
def planted():
    w, labels = planted_couplings(90, 3, p_in=0.4, p_out=0.05, generator=torch.Generator().manual_seed(0))
    return w, labels


@pytest.mark.parametrize("method, opts", [("leiden", {}), ("leiden", {"weights": "signed"}),
                                          ("markov_stability", {}), ("spectral", {"n_communities": 3})])
def test_methods_recover_planted_communities(planted, method, opts):
    w, labels = planted
    found = find_communities(w, method, **opts)
    assert found.dtype == torch.long and found.shape == (90,)
    assert ami(labels, found) > 0.95


def test_graph_formats_agree(planted):
    import scipy.sparse as sp

    w, _ = planted
    nz = w.nonzero().T  # (i, j) -> edge j -> i
    triple = (torch.stack([nz[1], nz[0]]), w[nz[0], nz[1]], 90)
    ref = find_communities(w)
    assert torch.equal(find_communities(sp.csr_matrix(w.numpy())), ref)
    assert torch.equal(find_communities(triple), ref)


def test_hierarchy_coarsens(planted):
    w, _ = planted
    levels = community_hierarchy(w, "leiden", resolutions=(8.0, 1.0, 0.05))
    sizes = [int(l.max()) + 1 for l in levels]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 3 and len(levels) >= 2
    assert len(community_hierarchy(w, "markov_stability", markov_times=(0.1, 1.0, 100.0))) >= 2


def test_community_bad_input(planted):
    w, _ = planted
    with pytest.raises(ValueError, match="no positive edges"):
        find_communities(torch.zeros(5, 5))
    with pytest.raises(ValueError, match="every edge of the graph is negative"):
        find_communities(-w.abs())
    assert find_communities(-w.abs(), weights="abs").shape == (90,)
    for method, opts in [("leiden", {}), ("spectral", {"n_communities": 1}), ("lrg", {})]:
        assert find_communities(torch.ones(1, 1), method, **opts).tolist() == [0]
    with pytest.raises(ValueError, match="unknown community method 'louvain'.*leiden"):
        find_communities(w, "louvain")
    with pytest.raises(ValueError, match="needs n_communities"):
        find_communities(w, "spectral")
    with pytest.raises(ValueError, match=r"n_communities must lie in \[1, N=90\]"):
        find_communities(w, "spectral", n_communities=91)
    with pytest.raises(ValueError, match="NaN"):
        find_communities(torch.full((3, 3), float("nan")))
    with pytest.raises(ValueError, match="square"):
        find_communities(torch.ones(3, 4))
    with pytest.raises(ValueError, match="has no multiscale"):
        community_hierarchy(w, "spectral")


def test_nodes_without_edges_form_one_group(planted):
    """Three nodes with no edge (silent neurons) next to the planted network: one group of their own, not three
    singleton communities; the planted communities are untouched; a method told K keeps its K."""
    w, labels = planted
    padded = torch.zeros(93, 93)
    padded[:90, :90] = w
    padded[91, 91] = 1.0  # a self-coupling links a node to no other
    for method in ("leiden", "markov_stability"):
        found = find_communities(padded, method)
        assert len(set(found[90:].tolist())) == 1 and not set(found[90:].tolist()) & set(found[:90].tolist())
        assert ami(labels, found[:90]) > 0.95
    assert int(find_communities(padded, "spectral", n_communities=3).max()) + 1 == 3


def test_relabel_and_metagraph():
    lab = relabel(torch.tensor([5, 5, 2, 9, 9, 9]))
    assert lab.tolist() == [1, 1, 2, 0, 0, 0]
    a = torch.tensor([[0, 1.0, 0], [2.0, 0, 0], [0, 3.0, 0]])
    meta = metagraph(a, torch.tensor([0, 0, 1]))
    assert meta.tolist() == [[3.0, 0.0], [3.0, 0.0]]


def test_order_keeps_communities_contiguous_and_adjacent(planted):
    """Chain of 4 communities: the ordering lists each contiguously, and neighbours in the chain stay adjacent."""
    gen = torch.Generator().manual_seed(1)
    n, k = 80, 4
    labels = torch.arange(n) * k // n
    labels = labels[torch.randperm(n, generator=gen)]
    p = torch.where(labels[:, None] == labels[None, :], 0.5,
                    torch.where((labels[:, None] - labels[None, :]).abs() == 1, 0.1, 0.0))
    w = (torch.rand(n, n, generator=gen) < p).float()
    w.fill_diagonal_(0)
    order = community_order(w, labels)
    assert sorted(order.tolist()) == list(range(n))
    seq = labels[order]
    runs = [int(seq[0])] + [int(b) for a, b in zip(seq[:-1], seq[1:]) if a != b]
    assert len(runs) == k  # contiguous
    assert runs in ([0, 1, 2, 3], [3, 2, 1, 0])  # along the chain


def test_directed_modularity_matches_igraph(planted):
    import igraph as ig

    w, labels = planted
    w = w.clamp_min(0)
    nz = w.nonzero()
    g = ig.Graph(n=90, edges=list(zip(nz[:, 1].tolist(), nz[:, 0].tolist())), directed=True)
    ref = g.modularity(labels.tolist(), weights=w[nz[:, 0], nz[:, 1]].tolist(), directed=True)
    edge_index = torch.stack([nz[:, 1], nz[:, 0]])
    q = directed_modularity(torch.nn.functional.one_hot(labels).float(), edge_index, w[nz[:, 0], nz[:, 1]])
    assert float(q[0]) == pytest.approx(ref, abs=1e-5)
    # two graphs in one batch: each gets its own modularity, unaffected by the other
    other = torch.nn.functional.one_hot(torch.randint(0, 3, (90,), generator=torch.Generator().manual_seed(2))).float()
    qb = directed_modularity(torch.cat([torch.nn.functional.one_hot(labels).float(), other]),
                             torch.cat([edge_index, edge_index[:, :50] + 90], 1),
                             torch.cat([w[nz[:, 0], nz[:, 1]], torch.ones(50)]),
                             batch=torch.repeat_interleave(torch.arange(2), 90))
    assert float(qb[0]) == pytest.approx(ref, abs=1e-5)
    empty = directed_modularity(torch.ones(3, 1), torch.zeros(2, 0, dtype=torch.long))
    assert float(empty[0]) == 0.0


def test_infer_then_communities_end_to_end(kising):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = infer_couplings(kising, max_iter=20)
    assert ami(kising.true_communities, find_communities(w)) > 0.9


def test_standard_errors_match_the_spread_of_the_estimates():
    """Independent neurons (true W = 0, rates 0.05 to 0.3, 20,000 bins): every unpenalized ML estimate W_ij is then
    a draw of N(0, se_ij^2), so the mean of (W_ij / se_ij)^2 over the 400 pairs is 1 +- 0.07 (chi-square, 400 dof;
    0.85..1.15 is two of those sd plus the approximation)."""
    n, t = 20, 20000
    rates = torch.linspace(0.05, 0.3, n)
    x = (torch.rand(t, n, generator=torch.Generator().manual_seed(0)) < rates).to(torch.uint8)
    with pytest.warns(UninformativeFitWarning):  # true: independent neurons
        w = infer_couplings(x, strength=0.0)
    se = coupling_standard_errors(x)
    assert 0.85 < float((w / se).square().mean()) < 1.15
    # the closed form for independent inputs: 1 / sqrt(T' p_i (1 - p_i) r_j (1 - r_j)), within sampling error
    p = x.double().mean(0)
    ref = 1 / ((t - 1) * (p * (1 - p))[:, None] * (p * (1 - p))[None, :]).sqrt()
    assert torch.allclose(se.double(), ref, rtol=0.05)
    assert torch.allclose(coupling_standard_errors(x, history=3).double(), 3 ** 0.5 * se.double(), rtol=0.01)
    silent = torch.cat([x, torch.zeros(t, 1, dtype=torch.uint8)], 1)
    with pytest.warns(UserWarning, match="never or always fire"):
        se_silent = coupling_standard_errors(silent)
    assert torch.isinf(se_silent[-1]).all() and torch.isinf(se_silent[:, -1]).all()
    with pytest.warns(UserWarning, match="never or always fire"):
        assert torch.equal(denoise_couplings(torch.ones(n + 1, n + 1), silent, 0.0)[-1], torch.zeros(n + 1))


def test_denoise_is_a_soft_threshold(kising):
    w = torch.randn(30, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    se = coupling_standard_errors(kising).double()
    out = denoise_couplings(w, kising, 2.0)
    assert torch.allclose(out, w.sign() * (w.abs() - 2.0 * se).clamp_min(0))
    assert torch.allclose(denoise_couplings(w, kising, 0.0), w)
    with pytest.raises(ValueError, match="threshold must be"):
        denoise_couplings(w, kising, -1.0)
    with pytest.raises(ValueError, match="do not match"):
        denoise_couplings(w[:5, :5], kising)


def test_communities_of_denoised_couplings():
    """Sparse communities (100 neurons, 5 communities, p_in 0.15) from 4,000 bins: the ML couplings are dense with
    estimation noise as large as the true edges, and Leiden on the raw estimates scores AMI 0.49 to 0.72 on these
    three seeds; given the spikes, find_communities shrinks the couplings by 1.5 standard errors first: 0.85 to 0.87."""
    raw, denoised = [], []
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        w, labels = planted_couplings(100, 5, p_in=0.15, p_out=0.05, generator=gen)
        spikes = glauber_dynamics(w, rate_matched_bias(w, 0.05, 0.3, gen), 4000, seed=seed)
        couplings = infer_couplings(spikes)
        raw.append(ami(labels, find_communities(couplings)))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no neuron loses every edge here: no warning that the shrinkage hurts
            denoised.append(ami(labels, find_communities(couplings, spikes=spikes)))
        assert torch.equal(find_communities(couplings, spikes=spikes, noise_threshold=0), find_communities(couplings))
    assert np.mean(denoised) > 0.8 and np.mean(denoised) > np.mean(raw) + 0.1
    shrunk = denoise_couplings(couplings, spikes)  # the hierarchy sees the same shrunk couplings
    for got, ref in zip(community_hierarchy(couplings, spikes=spikes), community_hierarchy(shrunk)):
        assert torch.equal(got, ref)
    with pytest.raises(ValueError, match="no coupling exceeds 100 standard errors"):
        find_communities(couplings, spikes=spikes, noise_threshold=100)


def test_warns_where_shrinking_single_couplings_strips_neurons():
    """A community locked on (kinetic_ising(120, 10000, n_communities=4), seed 1: one community fires in 88 % of the
    bins, the others in about 1 %) leaves single couplings within their noise (standard errors near 1 against true
    couplings of 0.75): shrinking strips 28 of the 60 observed neurons of every edge and Leiden splits the 4
    communities into 7 (AMI 0.32 against 0.40 raw). find_communities says so."""
    data = kinetic_ising(120, 10_000, n_communities=4, seed=1).subsample(0.5, seed=1)
    couplings = infer_couplings(data.spikes)
    with pytest.warns(UserWarning, match=r"left 2\d of 60 connected neurons without an edge.*noise_threshold=0"):
        find_communities(couplings, spikes=data.spikes)


def test_stable_resolution_escapes_the_resolution_limit():
    """A ring of 30 five-node cliques, each joined to the next by one edge (Fortunato & Barthelemy 2007): modularity
    at resolution 1 merges neighbouring cliques (16 communities), the most stable resolution recovers all 30."""
    n_cliques, size = 30, 5
    labels = np.repeat(np.arange(n_cliques), size)
    adj = (labels[:, None] == labels[None, :]).astype(float)
    np.fill_diagonal(adj, 0)
    for c in range(n_cliques):
        i, j = c * size, (c + 1) % n_cliques * size + 1
        adj[i, j] = adj[j, i] = 1
    assert int(find_communities(adj, "leiden").max()) + 1 < n_cliques
    found, resolution = stable_resolution(as_adjacency(adj))
    assert ami(labels, found) == pytest.approx(1.0) and resolution > 1
    assert torch.equal(find_communities(adj, "leiden_stable"), relabel(torch.as_tensor(found)))
    with pytest.raises(ValueError, match="at least one resolution"):
        stable_resolution(as_adjacency(adj), resolutions=())


def test_leiden_consensus_steadies_leiden_where_modularity_is_degenerate():
    """A sparse planted partition (120 nodes, 6 groups; edge probabilities 0.2 within a group, 0.06 between) has
    many near-optimal partitions: single Leiden runs land on different ones (mean AMI about 0.43 between seeds,
    0.48 to the planted groups), the consensus of 20 runs lands on nearly the same one whatever its seeds (about
    0.86) and nearer the planted groups (about 0.69). It is find_communities' default."""
    import itertools

    from dgrn.graph.communities import leiden, leiden_consensus

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 20)
    adj = (rng.random((120, 120)) < np.where(labels[:, None] == labels[None, :], 0.2, 0.06)).astype(float)
    np.fill_diagonal(adj, 0)
    graph = as_adjacency(adj)
    single = [leiden(graph, seed=s) for s in range(4)]
    consensus = [leiden_consensus(graph, seed=100 * s) for s in range(4)]

    def agreement(parts):
        return np.mean([ami(a, b) for a, b in itertools.combinations(parts, 2)])

    assert agreement(consensus) > agreement(single) + 0.25
    assert np.mean([ami(labels, p) for p in consensus]) > np.mean([ami(labels, p) for p in single]) + 0.1
    assert torch.equal(find_communities(adj), relabel(torch.as_tensor(consensus[0])))
    assert torch.equal(find_communities(adj, runs=1), relabel(torch.as_tensor(single[0])))  # one run: plain Leiden
    for bad in ({"runs": 0}, {"threshold": 0.0}, {"max_rounds": 0}):
        with pytest.raises(ValueError, match="runs >= 1"):
            leiden_consensus(graph, **bad)


def test_leiden_polishes_a_given_partition(planted):
    """``initial`` starts Leiden's moves from a partition: the planted one with 10 nodes moved to the wrong
    community is moved back; a partition Leiden cannot improve is kept."""
    from dgrn.graph.communities import leiden

    w, labels = planted
    wrong = labels.clone()
    wrong[:10] = (wrong[:10] + 1) % 3
    graph = as_adjacency(w)
    assert ami(labels, leiden(graph, initial=wrong)) == pytest.approx(1.0)
    assert ami(labels, leiden(graph, initial=labels)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="initial must hold 90 labels"):
        leiden(graph, initial=labels[:5])


def test_lrg_communities():
    """method="lrg" (dgrn.renorm, a higher layer, imported by the registry when called) follows the RG flow and
    keeps the level of highest modularity (here the second: 200 nodes -> 69 -> 9 supernodes)."""
    w, labels = planted_couplings(200, 8, generator=torch.Generator().manual_seed(0))
    assert ami(labels, find_communities(w, "lrg")) > 0.9
    levels = community_hierarchy(w, "lrg")
    assert all(int(a.max()) >= int(b.max()) for a, b in zip(levels[:-1], levels[1:]))
    with pytest.raises(ValueError, match="non-negative"):
        find_communities(w, "lrg", weights="signed")


def test_train_py_infer_graph(run_train):
    metrics, _ = run_train(["experiment=infer_graph", "data.dataset.n=30", "data.dataset.t=3000",
                            "data.dataset.n_communities=3", "data.observed_fraction=0.5", "data.window=64",
                            "model.net.latent_history=5"],
                           base=["trainer.max_epochs=2", "logger=none", "data.n_blocks=10"])
    assert 0.5 < metrics["test/edge_auroc"] <= 1.0 and metrics["test/nll"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(kising):
    w_cpu = infer_couplings(kising, max_iter=20, dtype=torch.float64)
    w_gpu = infer_couplings(kising, max_iter=20, dtype=torch.float64, device="cuda")
    assert w_gpu.device.type == "cuda"
    torch.testing.assert_close(w_gpu.cpu(), w_cpu, atol=1e-3, rtol=0)
    assert torch.isfinite(infer_couplings(kising, mode="minibatch", epochs=1, device="cuda")).all()
