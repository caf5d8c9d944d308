"""Diffusion renormalization (dgrn.renorm): exactness against independent references, the scalable path, coarse-
graining, the RG flow, pooling of activity, bad input, config and CLI."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

from dgrn.data import SpikeData
from dgrn.renorm import (
    HeatKernel,
    RGFlowStoppedEarly,
    coarse_grain,
    find_peaks,
    laplacian,
    pool_activity,
    pool_flow,
    rg_flow,
    spectral_curves,
    tau_for_shrink,
    zeta_components,
)
from dgrn.renorm.graphs import read_diffusion_graph
from dgrn.renorm.synthetic import direction_planted_partition, hierarchical_planted_partition, planted_partition


def reference_curves(adj: np.ndarray, taus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: dense L = D - A, numpy eigh, S = -sum p ln p / ln N, C = -dS/d ln tau = tau^2 Var / ln N."""
    lam = np.linalg.eigvalsh(np.diag(adj.sum(1)) - adj)
    lam = lam - lam.min()
    s, c = [], []
    for t in taus:
        w = np.exp(-t * lam)
        p = w / w.sum()
        nz = p > 0
        s.append(-(p[nz] * np.log(p[nz])).sum())
        c.append(t * t * ((p * lam**2).sum() - (p * lam).sum() ** 2))
    return np.array(s) / math.log(len(lam)), np.array(c) / math.log(len(lam))


def weighted_blocks(n: int = 240, seed: int = 0) -> np.ndarray:
    a, _ = planted_partition(n, 6, 10, 2, seed=seed)
    a.data = np.random.default_rng(seed).uniform(0.5, 2.0, a.nnz)
    return ((a + a.T) * 0.5).toarray()


# ------------------------------------------------------------------ curves, exact path
def test_exact_curves_match_independent_eigh_reference():
    adj = weighted_blocks()
    lam = np.linalg.eigvalsh(np.diag(adj.sum(1)) - adj)
    taus = np.logspace(-3, 4, 50) / lam[1]  # 1e-3 .. 1e4 / lambda_2, as the issue asks
    got = spectral_curves(adj, taus)
    s_ref, c_ref = reference_curves(adj, taus)
    np.testing.assert_allclose(got["entropy"].numpy(), s_ref, rtol=1e-8, atol=1e-12)
    big = c_ref > 1e-10 * c_ref.max()
    np.testing.assert_allclose(got["specific_heat"].numpy()[big], c_ref[big], rtol=1e-8)
    assert np.all(np.isfinite(got["specific_heat"].numpy()))


def test_complete_graph_closed_form():
    # K_n: eigenvalues 0 (once) and n (n-1 times)
    n, taus = 12, np.logspace(-3, 1, 30)
    got = spectral_curves(torch.ones(n, n) - torch.eye(n), taus)
    z = 1 + (n - 1) * np.exp(-taus * n)
    p = (n - 1) * np.exp(-taus * n) / z
    entropy = (taus * n * p + np.log(z)) / math.log(n)
    heat = taus**2 * n**2 * p * (1 - p) / math.log(n)
    np.testing.assert_allclose(got["entropy"].numpy(), entropy, rtol=1e-10, atol=1e-12)
    # where C is below 1e-12 of its peak, eigenvalue rounding (1e-15) dominates the true value
    np.testing.assert_allclose(got["specific_heat"].numpy(), heat, rtol=1e-9, atol=1e-12 * heat.max())


def test_disconnected_graph_entropy_tends_to_log_components():
    a = sp.block_diag([sp.csr_array(np.ones((5, 5)) - np.eye(5))] * 3 + [sp.csr_array((2, 2))]).tocsr()  # + 2 isolated
    curves = spectral_curves(a, [1e3])
    assert curves["entropy"][0].item() == pytest.approx(math.log(5) / math.log(17), rel=1e-9)
    labels, meta = coarse_grain(a, 10.0)
    for comp in range(5):  # supernodes never span components; each clique merges at large tau
        nodes = np.arange(5 * comp, min(5 * comp + 5, 17))
        assert len(set(labels[nodes].tolist())) == 1 if comp < 3 else True
    assert labels.max().item() + 1 == 5 and meta.shape == (5, 5)


def test_input_formats_agree_and_metagraph_keeps_format():
    adj = weighted_blocks(60)
    taus = np.logspace(-2, 2, 10)
    a = sp.csr_array(adj)
    coo = a.tocoo()
    edge_list = (torch.tensor(np.vstack([coo.row, coo.col])), torch.tensor(coo.data), 60)
    ref = spectral_curves(adj, taus)["specific_heat"]
    for g in (torch.tensor(adj), torch.tensor(adj).to_sparse(), a, edge_list):
        torch.testing.assert_close(spectral_curves(g, taus)["specific_heat"], ref, rtol=1e-12, atol=0)
    labels, meta = coarse_grain(torch.tensor(adj, dtype=torch.float32), 1.0)
    assert isinstance(meta, torch.Tensor) and meta.dtype == torch.float32
    assert isinstance(coarse_grain(a, 1.0)[1], sp.csr_array)
    ei, ew, n = coarse_grain(edge_list, 1.0)[1]
    assert ei.shape[0] == 2 and n == labels.max().item() + 1
    assert isinstance(coarse_grain(adj, 1.0)[1], np.ndarray)


@pytest.mark.parametrize("graph, message", [
    (np.array([[0.0, -1.0], [-1.0, 0.0]]), "negative"),
    (np.array([[0.0, np.nan], [1.0, 0.0]]), "NaN"),
    (np.ones((2, 3)), "square"),
    (np.zeros((0, 0)), "empty"),
    ((torch.zeros(2, 0, dtype=torch.long), None, 0), "empty"),
    ((torch.tensor([[0], [5]]), None, 3), "outside"),
])
def test_bad_graphs_are_refused(graph, message):
    with pytest.raises(ValueError, match=message):
        spectral_curves(graph, [1.0])


@pytest.mark.parametrize("taus", [[0.0], [-1.0], [np.nan], []])
def test_bad_taus_are_refused(taus):
    with pytest.raises(ValueError, match="tau"):
        spectral_curves(np.ones((3, 3)), taus)
    with pytest.raises(ValueError):
        coarse_grain(np.ones((3, 3)), taus[0] if taus else -1.0)


def test_unknown_options_list_valid_ones():
    with pytest.raises(ValueError, match="combinatorial"):
        spectral_curves(np.ones((3, 3)), [1.0], laplacian="magnetic")
    with pytest.raises(ValueError, match="largest"):
        coarse_grain(np.ones((3, 3)), "biggest")


def test_edgeless_and_single_node_graphs_give_no_nan():
    curves = spectral_curves(np.zeros((4, 4)), np.logspace(-2, 2, 5))
    assert torch.all(curves["entropy"] == 1) and torch.all(curves["specific_heat"] == 0)
    labels, meta = coarse_grain(np.zeros((4, 4)), "largest")
    assert labels.tolist() == [0, 1, 2, 3]
    one = spectral_curves(np.zeros((1, 1)), [1.0])
    assert one["entropy"].item() == 0 and one["specific_heat"].item() == 0
    with pytest.warns(RGFlowStoppedEarly, match="level 1 of 3: the input graph is a single node"):
        assert rg_flow(np.zeros((1, 1)), 3) == []


# --------------------------------------------------------------------------- Laplacians
def chung_reference(adj: np.ndarray, alpha: float) -> np.ndarray:
    """Dense Chung Laplacian of the teleporting random walk (one weakly connected component), built independently."""
    n = adj.shape[0]
    out = adj.sum(1)
    walk = np.where(out[:, None] > 0, adj / np.where(out > 0, out, 1)[:, None], 1.0 / n)
    walk = (1 - alpha) * walk + alpha / n
    vals, vecs = np.linalg.eig(walk.T)
    phi = np.abs(np.real(vecs[:, np.argmin(np.abs(vals - 1))]))
    phi /= phi.sum()
    m = np.sqrt(phi)[:, None] * walk / np.sqrt(phi)[None, :]
    return np.eye(n) - 0.5 * (m + m.T)


def test_directed_laplacian_matches_dense_chung_reference_with_teleport():
    rng = np.random.default_rng(3)
    adj = np.triu((rng.random((40, 40)) < 0.15) * rng.uniform(0.5, 2, (40, 40)), 1)  # a DAG with dangling nodes
    adj[np.arange(39), np.arange(1, 40)] += 1.0  # weakly connected
    lap = laplacian(read_diffusion_graph(adj)[0], "directed", teleport=0.1)
    np.testing.assert_allclose(lap.dense(), chung_reference(adj, 0.1), atol=1e-10)
    x = rng.standard_normal((40, 3))
    np.testing.assert_allclose(lap.matvec(x), lap.dense() @ x, atol=1e-12)
    assert np.linalg.eigvalsh(lap.dense()).min() > -1e-10
    np.testing.assert_allclose(lap.dense() @ lap.null_vector, 0, atol=1e-10)


def test_directed_equals_undirected_on_symmetric_input():
    adj = weighted_blocks(120)
    taus = np.logspace(-2, 2, 20)
    d = spectral_curves(adj, taus, laplacian="directed")
    u = spectral_curves(adj, taus, laplacian="normalized")
    torch.testing.assert_close(d["specific_heat"], u["specific_heat"], rtol=1e-9, atol=1e-12)
    assert laplacian(read_diffusion_graph(adj)[0]).kind == "combinatorial"
    directed, _ = direction_planted_partition(80, 2, 8, seed=0)
    assert laplacian(directed).kind == "directed"


def test_metagraph_keeps_weights_and_direction():
    a, labels = direction_planted_partition(120, 3, 10, seed=1)
    lab, meta = coarse_grain(a, 1.0, self_loops=True)
    assert meta.sum() == pytest.approx(a.sum())  # every edge weight lands somewhere
    p = sp.csr_array((np.ones(120), (np.arange(120), lab.numpy())))
    np.testing.assert_allclose(meta.toarray(), (p.T @ a @ p).toarray())
    no_loops = coarse_grain(a, 1.0)[1]
    assert no_loops.diagonal().sum() == 0


# ------------------------------------------------------------------------ coarse-graining
def test_zeta_components_match_scipy_connected_components():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.standard_normal((30, 4))
        scale = rng.uniform(0.5, 2.0, 30)
        kernel = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1)) * np.sqrt(scale[:, None] * scale[None, :])
        zeta = kernel >= np.minimum(np.diag(kernel)[:, None], np.diag(kernel)[None, :])
        _, ref = connected_components(sp.csr_array(zeta), directed=False)
        got = zeta_components(torch.tensor(kernel)).numpy()
        assert adjusted_rand_score(ref, got) == 1.0
        assert all(got[i] == np.flatnonzero(ref == ref[i]).min() for i in range(30))  # smallest member


def test_coarse_grain_recovers_planted_blocks_at_largest_peak():
    a, labels = planted_partition(600, 6, 16, 1, seed=2)
    lab, meta = coarse_grain(a, "largest")
    assert adjusted_rand_score(labels, lab.numpy()) == 1.0
    assert meta.shape == (6, 6)
    assert lab.dtype == torch.long and lab.shape == (600,)


def test_scalable_path_agrees_with_exact():
    a, labels = planted_partition(1000, 10, 18, 2, seed=2)
    exact, scal = HeatKernel(a, method="exact"), HeatKernel(a, method="scalable", probes=24, deflate=16)
    taus = exact.default_taus(48)
    ce, cs = exact.curves(taus)["specific_heat"], scal.curves(taus)["specific_heat"]
    assert np.abs(ce - cs).max() / ce.max() < 0.02
    pe, ps = find_peaks({"tau": taus, "specific_heat": ce}), find_peaks({"tau": taus, "specific_heat": cs})
    assert abs(pe[-1].index - ps[-1].index) <= 1
    # same candidate pairs (edges): what differs is only the stochastic heat-kernel estimate
    le, _ = coarse_grain(exact, pe[-1].tau, candidates="edges")
    ls, _ = coarse_grain(scal, pe[-1].tau)
    assert adjusted_rand_score(le.numpy(), ls.numpy()) >= 0.95


def test_scalable_default_grid_spans_the_true_spectrum():
    # quadrature ghosts near zero (weights ~1e-26) must not stretch the grid: lambda_2 and lambda_max as the exact path
    a, _ = planted_partition(1000, 10, 18, 2, seed=2)
    exact, scal = HeatKernel(a, method="exact"), HeatKernel(a, method="scalable", probes=24, deflate=16)
    (l2e, lme), (l2s, lms) = exact.lambda_bounds(), scal.lambda_bounds()
    assert l2s == pytest.approx(l2e, rel=1e-6)  # deflated slow mode: exact
    assert lms == pytest.approx(lme, rel=0.02)  # extreme Ritz value: converges fast
    assert scal.default_taus()[-1] == pytest.approx(exact.default_taus()[-1], rel=1e-5)


def test_cholesky_qr_matches_householder_and_falls_back_on_rank_deficiency():
    from dgrn.renorm.spectrum import _tall_qr

    rng = np.random.default_rng(0)
    w = rng.standard_normal((5000, 12)) @ np.diag(np.logspace(0, -4, 12))  # cond 1e4
    q, r = _tall_qr(w)
    assert np.abs(q.T @ q - np.eye(12)).max() < 1e-12 and np.allclose(q @ r, w, atol=1e-12)
    qh, rh = np.linalg.qr(w)
    signs = np.sign(np.diag(rh))  # equal up to the signs of the columns
    assert np.allclose(q, qh * signs, atol=1e-9) and np.allclose(r, rh * signs[:, None], atol=1e-9)
    w[:, 5] = w[:, 2]  # rank deficient: Householder, whose R shows the lost direction
    q, r = _tall_qr(w)
    assert np.allclose(q @ r, w, atol=1e-12) and np.abs(np.diag(r)).min() < 1e-10


def test_tau_for_shrink_hits_the_entropy_target():
    a, _ = planted_partition(300, 5, 12, 1, seed=5)
    kernel = HeatKernel(a)
    tau = tau_for_shrink(kernel, 10.0)
    assert kernel.entropy_at(tau) == pytest.approx(1 - math.log(10) / math.log(300), abs=1e-8)
    labels, _ = coarse_grain(kernel, shrink=10.0)
    assert labels.max().item() + 1 < 300


def test_find_peaks_reports_plateaus_and_edges():
    tau = np.logspace(-2, 3, 101)
    x = np.log10(tau)
    c = np.exp(-((x + 1) ** 2) / 0.05) + np.clip(1 - np.abs(x - 1.5), 0, 0.6)  # a peak, then a flat top
    peaks = find_peaks({"tau": tau, "specific_heat": c})
    assert len(peaks) == 2
    assert peaks[0].plateau is None and peaks[0].tau == pytest.approx(0.1, rel=0.15)
    lo, hi = peaks[1].plateau
    assert math.log10(hi / lo) >= 0.5
    edge = find_peaks({"tau": tau, "specific_heat": tau})  # increasing: the maximum sits at the grid end
    assert edge[-1].at_edge


# ------------------------------------------------------------------------------- RG flow
def test_rg_flow_recovers_two_level_hierarchy():
    a, blocks, groups = hierarchical_planted_partition(640, 4, 4, 30, 2, 0.1, seed=1)
    flow = rg_flow(a, 2)
    assert len(flow) == 2
    assert adjusted_mutual_info_score(blocks, flow[0].membership.numpy()) >= 0.9
    assert adjusted_mutual_info_score(groups, flow[1].membership.numpy()) >= 0.9
    first = flow[0]
    assert first.n_nodes == first.assignment.max().item() + 1 == first.graph.shape[0]
    assert set(first.curves) == {"tau", "entropy", "specific_heat"} and first.peaks
    np.testing.assert_array_equal(flow[1].membership.numpy(), flow[1].assignment.numpy()[first.membership.numpy()])


@pytest.mark.parametrize("graph, levels, options, stop", [
    # a complete graph: one heat-kernel scale, every pair alike, nothing merges at tau*
    (np.ones((20, 20)) - np.eye(20), 3, {}, r"level 1 of 3: coarse-graining the input graph \(20 nodes\) at tau\* = "
     r"\S+ merged no nodes"),
    (np.zeros((6, 6)), 2, {}, r"level 1 of 2: the input graph \(6 nodes\) has no edges"),
    # blocks, then groups (4 supernodes, all-to-all alike): level 3 merges nothing
    (hierarchical_planted_partition(640, 4, 4, 30, 2, 0.1, seed=1)[0], 5, {},
     r"level 3 of 5: coarse-graining the level-2 metagraph \(4 nodes\) .* merged no nodes"),
    # shrinking 200 nodes by 300 merges everything at once
    (planted_partition(200, 4, 12, 1, seed=0)[0], 3, {"shrink": 300.0}, r"level 2 of 3: the level-1 metagraph is a "
     r"single node; returning 1 level"),
])
def test_rg_flow_that_stops_early_says_where_and_why(graph, levels, options, stop):
    with pytest.warns(RGFlowStoppedEarly, match=stop):
        flow = rg_flow(graph, levels, **options)
    assert len(flow) < levels
    with pytest.raises(ValueError, match=stop):
        rg_flow(graph, levels, strict=True, **options)


def test_rg_flow_with_all_its_levels_and_lrg_communities_stay_silent():
    """No warning when the flow makes every level asked, nor from find_communities(method="lrg"), whose ``levels``
    is only a ceiling."""
    from dgrn.renorm.communities import lrg_levels

    a, blocks, _ = hierarchical_planted_partition(640, 4, 4, 30, 2, 0.1, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RGFlowStoppedEarly)
        assert len(rg_flow(a, 2, strict=True)) == 2
        levels = lrg_levels(a, levels=5)
    assert len(levels) == 2 and adjusted_mutual_info_score(blocks, levels[0].numpy()) >= 0.9


def test_rg_flow_on_directed_graph_keeps_direction():
    a, _ = direction_planted_partition(120, 3, 10, seed=3)
    flow = rg_flow(a, 2, shrink=4.0)
    assert flow and flow[0].method == "exact"
    g = flow[0].graph
    assert abs(g - g.T).sum() > 0


# ----------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("mode", ["sum", "or", "majority"])
def test_pool_activity_matches_loop_reference(mode):
    rng = np.random.default_rng(0)
    spikes = rng.integers(0, 3, (50, 9))
    member = np.array([0, 0, 1, 2, 2, 2, 1, 0, 3])
    got = pool_activity(torch.tensor(spikes), member, mode).numpy()
    for k in range(4):
        cols = spikes[:, member == k]
        ref = {"sum": cols.sum(1), "or": (cols > 0).any(1), "majority": 2 * (cols > 0).sum(1) > cols.shape[1]}[mode]
        np.testing.assert_array_equal(got[:, k], ref.astype(got.dtype))


def test_pool_flow_on_spikedata():
    a, blocks, _ = hierarchical_planted_partition(640, 4, 4, 30, 2, 0.1, seed=1)
    flow = rg_flow(a, 2)
    data = SpikeData(spikes=np.random.default_rng(1).integers(0, 2, (40, 640)), dt=0.01)
    pooled = pool_flow(data, flow, "sum")
    assert [p.n_neurons for p in pooled] == [lv.n_nodes for lv in flow]
    assert all(int(p.spikes.long().sum()) == int(data.spikes.long().sum()) for p in pooled)
    assert pooled[0].dt == data.dt and pooled[0].meta["renorm_pooling"]["mode"] == "sum"
    with pytest.raises(ValueError, match="one supernode per neuron"):
        pool_activity(data, flow[0].membership[:-1])
    with pytest.raises(ValueError, match="valid"):
        pool_activity(data, flow[0].membership, "max")


# ------------------------------------------------------------------------ config and CLI
@pytest.mark.filterwarnings("ignore::dgrn.renorm.RGFlowStoppedEarly")  # levels is a ceiling here
def test_lrg_config_drives_rg_flow(tmp_path):
    from tests.conftest import compose

    cfg = compose("train", ["renorm=lrg"], tmp_path / "cfg")
    options = {k: v for k, v in dict(cfg.renorm).items() if k != "pool"}
    a, _ = planted_partition(200, 4, 12, 1, seed=0)
    flow = rg_flow(a, **options)
    assert 1 <= len(flow) <= cfg.renorm.levels


def test_cli_renorm_writes_plots_and_levels(tmp_path, capsys):
    from dgrn.cli import main

    a, _, _ = hierarchical_planted_partition(320, 4, 4, 24, 2, 0.1, seed=0)
    sp.save_npz(tmp_path / "g.npz", a)
    SpikeData(spikes=np.random.default_rng(0).integers(0, 2, (30, 320)), dt=0.01).save(tmp_path / "s.npz")
    assert main(["renorm", str(tmp_path / "g.npz"), "--out", str(tmp_path / "out"), "--spikes",
                 str(tmp_path / "s.npz"), "--pool", "or"]) == 0
    out = tmp_path / "out"
    for name in ("specific_heat_level0.png", "metagraph_level1.png", "flow.png", "levels.json", "levels.npz",
                 "spikes_level1.npz"):
        assert (out / name).stat().st_size > 0
    with np.load(out / "levels.npz") as f:
        assert f["level1_membership"].shape == (320,)
    assert main(["renorm", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2


@pytest.mark.filterwarnings("ignore::dgrn.renorm.RGFlowStoppedEarly")
def test_signed_couplings_become_a_diffusion_graph_by_their_positive_part(tmp_path):
    """A recording's signed couplings: the default keeps the excitatory edges (W.T clipped at 0), whose flow finds the
    planted communities; |W|.T makes inhibition between communities an attraction and the first level lumps them."""
    from sklearn.metrics import adjusted_mutual_info_score as ami

    from dgrn.renorm.graphs import load_graph
    from dgrn.sim import kinetic_ising

    data = kinetic_ising(100, 200, n_communities=4, seed=0)
    data.save(tmp_path / "rec.npz")
    w = data.true_couplings.double().numpy()
    assert (w < 0).any()
    positive, absolute = load_graph(tmp_path / "rec.npz"), load_graph(tmp_path / "rec.npz", weights="abs")
    np.testing.assert_array_equal(positive.toarray(), np.clip(w, 0, None).T)
    np.testing.assert_array_equal(absolute.toarray(), np.abs(w).T)
    planted = data.true_communities.numpy()
    scores = {name: ami(planted, rg_flow(g, 1)[0].membership.numpy()) for name, g in
              (("positive", positive), ("abs", absolute))}
    assert scores["positive"] > 0.5 > 0.1 > scores["abs"]  # measured 0.61 and 0.01
    from dgrn.cli import main

    for weights, graph in (("abs", absolute), ("positive", positive)):
        out = tmp_path / weights
        assert main(["renorm", str(tmp_path / "rec.npz"), "--out", str(out), "--levels", "1", "--weights", weights]) == 0
        with np.load(out / "levels.npz") as f:
            np.testing.assert_array_equal(f["level1_membership"], rg_flow(graph, 1)[0].membership.numpy())
    with pytest.raises(ValueError, match="positive' or 'abs"):
        load_graph(tmp_path / "rec.npz", weights="signed")
