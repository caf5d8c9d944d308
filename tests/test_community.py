"""dgrn.nn.CommunityEncoder, its loss, its LightningModule and the zoo model."""
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score as ami

from dgrn.graph import find_communities
from dgrn.graph.convert import as_adjacency, to_edge_index
from dgrn.nn import CommunityEncoder, DirectedGraphConv
from dgrn.nn.community import community_loss
from dgrn.sim import planted_couplings


def graph(n, k, seed):
    w, labels = planted_couplings(n, k, p_in=0.4, p_out=0.05, generator=torch.Generator().manual_seed(seed))
    edge_index, edge_weight = to_edge_index(as_adjacency(w))
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed + 100))
    return x, edge_index, edge_weight, labels


def test_directed_conv_matches_dense_reference():
    torch.manual_seed(0)
    x, ei, ew, _ = graph(12, 2, 0)
    conv = DirectedGraphConv(6, 5)
    a = torch.zeros(12, 12)
    a[ei[1], ei[0]] = ew  # a[i, j]: edge j -> i
    a_in = a / a.abs().sum(1, keepdim=True).clamp_min(1e-12)  # normalized over in-edges of i
    a_out = a.T / a.T.abs().sum(1, keepdim=True).clamp_min(1e-12)  # a.T[i, j]: edge i -> j, over out-edges of i
    ref = conv.lin_root(x) + a_in @ conv.lin_in(x) + a_out @ conv.lin_out(x)
    torch.testing.assert_close(conv(x, ei, ew), ref, atol=1e-5, rtol=1e-5)


def test_assignment_is_a_distribution_with_empty_slots_zero():
    x, ei, ew, _ = graph(40, 3, 1)
    enc = CommunityEncoder(6, hidden_channels=16, num_layers=2, max_communities=50)  # K_max > N is fine
    s, z = enc(x, ei, ew)
    assert s.shape == (40, 50) and z.shape == (40, 16)
    torch.testing.assert_close(s.sum(1), torch.ones(40))
    assert (s.sum(0) == 0).sum() >= 10  # slots without a seed are exactly empty
    assert torch.isfinite(s).all()


def test_batched_graphs_do_not_leak():
    """Two different graphs in one batch give exactly what each gives alone (seeds, means, normalizers)."""
    torch.manual_seed(0)
    enc = CommunityEncoder(6, hidden_channels=16, num_layers=2, max_communities=8)
    g1, g2 = graph(30, 2, 2), graph(45, 4, 3)
    s1, z1 = enc(*g1[:3])
    s2, z2 = enc(*g2[:3])
    x = torch.cat([g1[0], g2[0]])
    ei = torch.cat([g1[1], g2[1] + 30], 1)
    ew = torch.cat([g1[2], g2[2]])
    batch = torch.cat([torch.zeros(30), torch.ones(45)]).long()
    s, z = enc(x, ei, ew, batch)
    torch.testing.assert_close(s[:30], s1, atol=1e-5, rtol=0)
    torch.testing.assert_close(s[30:], s2, atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:30], z1, atol=1e-5, rtol=0)  # the refinement's degrees and m are per graph too
    torch.testing.assert_close(z[30:], z2, atol=1e-5, rtol=0)
    loss, parts = community_loss(s, z, ei, ew, batch)
    loss1, _ = community_loss(s1, z1, *g1[1:3])
    loss2, _ = community_loss(s2, z2, *g2[1:3])
    assert float(loss.detach()) == pytest.approx((float(loss1.detach()) + float(loss2.detach())) / 2, abs=1e-5)


def test_mask_isolated_nodes_and_edgeless_graphs_stay_finite():
    torch.manual_seed(0)
    enc = CommunityEncoder(6, hidden_channels=16, num_layers=2, max_communities=8)
    x, ei, ew, _ = graph(30, 2, 4)
    ref, _ = enc(x, ei, ew)
    # padding: 10 extra masked nodes wired to real ones change nothing for the real nodes
    pad_x = torch.cat([x, 100 * torch.randn(10, 6)])
    pad_ei = torch.cat([ei, torch.stack([torch.arange(30, 40), torch.arange(10)])], 1)
    pad_ew = torch.cat([ew, torch.full((10,), 50.0)])
    mask = torch.arange(40) < 30
    s, _ = enc(pad_x, pad_ei, pad_ew, mask=mask)
    torch.testing.assert_close(s[:30], ref, atol=1e-5, rtol=0)
    assert torch.all(s[30:] == 0)
    s_int, _ = enc(pad_x, pad_ei, pad_ew, mask=mask.long())  # an integer mask means the same
    torch.testing.assert_close(s_int, s)
    # isolated nodes, and a second graph with no edges at all, in one batch
    x2 = torch.randn(5, 6)
    s, z = enc(torch.cat([x, x2]), ei, ew, torch.cat([torch.zeros(30), torch.ones(5)]).long())
    assert torch.isfinite(s).all()
    loss, parts = community_loss(s, z, ei, ew, torch.cat([torch.zeros(30), torch.ones(5)]).long())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_is_stable(dtype):
    torch.manual_seed(0)
    enc = CommunityEncoder(6, hidden_channels=16, num_layers=2, max_communities=8)
    x, ei, ew, _ = graph(60, 3, 5)
    ref, _ = enc(x, ei, ew)
    with torch.autocast("cpu", dtype=dtype):
        s, z = enc(1e3 * x, ei, 1e3 * ew)  # large inputs: overflow-prone in half precision
        loss, _ = community_loss(s, z, ei, ew)
    assert s.dtype == torch.float32 and torch.isfinite(s).all() and torch.isfinite(loss)
    with torch.autocast("cpu", dtype=dtype):
        s, _ = enc(x, ei, ew)
    assert (s.argmax(1) == ref.argmax(1)).float().mean() > 0.9


def test_bad_input():
    enc = CommunityEncoder(6, hidden_channels=8, num_layers=1)
    x, ei, ew, _ = graph(10, 2, 6)
    with pytest.raises(ValueError, match=r"x must be \(N, 6\)"):
        enc(x[:, :5], ei, ew)
    with pytest.raises(ValueError, match="NaN"):
        enc(x, ei, ew * float("nan"))
    with pytest.raises(ValueError, match="needs encoder"):
        find_communities(torch.rand(5, 5), "gnn")
    with pytest.raises(ValueError, match="needs spikes"):
        find_communities(torch.rand(5, 5), "gnn", encoder=enc)
    with pytest.raises(ValueError, match="refine_steps"):
        CommunityEncoder(6, refine_steps=-1)
    with pytest.raises(ValueError, match="refine_rate"):
        CommunityEncoder(6, refine_rate=0.0)
    with pytest.raises(ValueError, match="noise_threshold"):
        CommunityEncoder(6, noise_threshold=-1.0)


def test_encoder_sees_the_couplings_its_noise_threshold_leaves():
    """An encoder with noise_threshold reads the couplings shrunk by that many standard errors, in
    encoder_inputs (training) and in find_communities(method="gnn") (inference) alike."""
    from dgrn.graph import denoise_couplings, infer_couplings
    from dgrn.nn.community import encoder_inputs
    from dgrn.sim import kinetic_ising

    d = kinetic_ising(40, 3000, n_communities=2, seed=3)
    w = infer_couplings(d, max_iter=10)
    shrunk = denoise_couplings(w, d, 1.5)
    for got, ref in zip(encoder_inputs(w, d, 8, noise_threshold=1.5), encoder_inputs(shrunk, d, 8)):
        assert got.dtype == ref.dtype and torch.allclose(got, ref, atol=1e-5)  # float64 inside vs float32 here
    assert encoder_inputs(w, d, 8, noise_threshold=1.5)[1].shape[1] < encoder_inputs(w, d, 8)[1].shape[1]
    torch.manual_seed(0)
    enc = CommunityEncoder(24, hidden_channels=8, num_layers=1, noise_threshold=1.5).eval()
    twin = _same_weights(enc, 0.0)  # the same network, fed the raw couplings
    assert torch.equal(find_communities(w, "gnn", encoder=enc, spikes=d, polish=False),  # the encoder's own labels
                       find_communities(shrunk, "gnn", encoder=twin, spikes=d, polish=False))


def _same_weights(enc: CommunityEncoder, noise_threshold: float) -> CommunityEncoder:
    twin = CommunityEncoder(enc.in_channels, enc.hidden_channels, enc.num_layers, noise_threshold=noise_threshold)
    twin.load_state_dict(enc.state_dict())
    return twin.eval()


def test_refinement_is_preconditioned_ascent_on_vector_modularity():
    """One refinement step against autograd's gradient of the directed modularity of the unit embeddings."""
    from dgrn.graph.quality import directed_modularity

    torch.manual_seed(0)
    x, ei, ew, _ = graph(30, 3, 7)
    ew = ew * torch.where(torch.rand(ew.shape) < 0.2, -1.0, 1.0)  # negative edges are left out of the ascent
    enc = CommunityEncoder(6, hidden_channels=8, num_layers=1, refine_steps=1, refine_rate=0.7)
    _, z = enc(x, ei, ew)
    z0 = torch.nn.functional.normalize(enc.embed(x, ei, ew), dim=1).detach().requires_grad_()
    pos = ew > 0
    q = directed_modularity(z0, ei[:, pos], ew[pos])
    (grad,) = torch.autograd.grad(q.sum(), z0)
    m = ew[pos].sum()
    deg = torch.zeros(30).index_add_(0, ei[0, pos], ew[pos]).index_add_(0, ei[1, pos], ew[pos])
    ref = torch.nn.functional.normalize(z0 + 0.7 * m * grad / deg[:, None], dim=1)
    torch.testing.assert_close(z, ref, atol=1e-5, rtol=1e-5)


def test_number_of_communities_is_chosen_per_graph():
    """Untrained weights: the modularity ascent and the modularity-selected K alone recover 2 and 5 planted
    communities of two graphs in one batch; a graph without edges is one community."""
    torch.manual_seed(0)
    enc = CommunityEncoder(6, hidden_channels=16, num_layers=2, max_communities=8)
    (x1, ei1, ew1, y1), (x2, ei2, ew2, y2) = graph(40, 2, 8), graph(100, 5, 9)
    x3 = torch.randn(7, 6)
    batch = torch.cat([torch.zeros(40), torch.ones(100), torch.full((7,), 2)]).long()
    s, _ = enc(torch.cat([x1, x2, x3]), torch.cat([ei1, ei2 + 40], 1), torch.cat([ew1, ew2]), batch)
    labels = s.argmax(1)
    assert ami(y1, labels[:40]) == pytest.approx(1.0) and ami(y2, labels[40:140]) == pytest.approx(1.0)
    assert labels[:40].unique().numel() == 2 and labels[40:140].unique().numel() == 5
    assert labels[140:].unique().numel() == 1
    # only inhibitory (negative) edges: nothing to ascend or to gain modularity on, one community
    s, z = enc(x1, ei1, -ew1.abs())
    assert s.argmax(1).unique().numel() == 1 and torch.isfinite(z).all()


def test_reset_parameters_covers_every_parameter():
    """After reset_parameters under the same seed, a perturbed encoder equals an untouched one."""
    enc, other = CommunityEncoder(6, hidden_channels=8, num_layers=2), CommunityEncoder(6, hidden_channels=8, num_layers=2)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)
    for m in (enc, other):
        torch.manual_seed(0)
        m.reset_parameters()
    for a, b in zip(enc.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_pretrained_encoder_finds_communities_of_an_unseen_network():
    """The zoo encoder (never fitted to this network: its training seeds start at 1000) on a new network."""
    from dgrn.graph import infer_couplings
    from dgrn.sim import kinetic_ising
    from dgrn.zoo import list_models, load_pretrained

    if "community_encoder_kising" not in list_models():
        pytest.fail("checkpoints/community_encoder_kising is missing")
    enc = load_pretrained("community_encoder_kising")
    assert not enc.training
    d = kinetic_ising(100, 10000, n_communities=5, seed=7)
    w = infer_couplings(d, max_iter=10)
    labels = find_communities(w, "gnn", encoder=enc, spikes=d)
    assert ami(d.true_communities, labels) > 0.8


def test_polish_moves_the_encoders_partition_to_higher_modularity():
    """``gnn_communities`` polishes the encoder's partition with Leiden's moves on the whole shrunk graph: the
    modularity on that graph (positive part, as Leiden reads it) rises (here from about 0.51 to 0.55)."""
    from dgrn.graph import denoise_couplings, infer_couplings
    from dgrn.graph.quality import directed_modularity
    from dgrn.nn.community import gnn_communities
    from dgrn.sim.graph_families import family_kinetic_ising
    from dgrn.zoo import load_pretrained

    enc = load_pretrained("community_encoder_grid")
    d = family_kinetic_ising("lfr0.3", 10000, seed=0).subsample(0.5, seed=0)  # held out of the encoder's corpus
    w = infer_couplings(d, max_iter=20)
    seen = denoise_couplings(w, d.spikes, enc.noise_threshold).clamp_min(0)
    seen.fill_diagonal_(0)
    nz = seen.nonzero()
    edge_index, weight = torch.stack([nz[:, 1], nz[:, 0]]), seen[nz[:, 0], nz[:, 1]]

    def modularity(labels):
        return float(directed_modularity(torch.nn.functional.one_hot(labels).to(weight), edge_index, weight))

    raw, polished = gnn_communities(w, enc, d, polish=False), gnn_communities(w, enc, d)
    assert modularity(polished) > modularity(raw) + 1e-3
    from dgrn.graph import relabel  # find_communities hands its noise_threshold to the polish

    assert torch.equal(find_communities(w, "gnn", encoder=enc, spikes=d), relabel(polished))
    assert torch.equal(find_communities(w, "gnn", encoder=enc, spikes=d, noise_threshold=0),
                       relabel(gnn_communities(w, enc, d, noise_threshold=0)))


def test_train_py_community_encoder(run_train):
    metrics, run_dir = run_train(
        ["experiment=community_encoder", "data.n_train=3", "data.n_val=1", "data.n_test=1", "data.community_sizes=[10]",
         "data.communities=[2,3]", "data.t=1500", "data.observed_fraction=0.5", "data.cache=null",
         "data.batch_size=2", "model.encoder.hidden_channels=8", "model.encoder.num_layers=1"],
        base=["trainer.max_epochs=2", "logger=none"],
    )
    for key in ("val/modularity", "test/ami", "test/modularity"):
        assert key in metrics and metrics[key] == metrics[key]  # present and not NaN
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_train_py_encoder_on_graph_families_and_publish_with_notes(run_train, tmp_path):
    """experiment=community_encoder_corpus: networks of the benchmark families, couplings shrunk by their noise,
    fine-tuned from the zoo encoder; the published encoder carries its noise threshold and the card its notes."""
    import json

    from dgrn.publish import publish_checkpoint

    metrics, run_dir = run_train(
        ["experiment=community_encoder_corpus", "data.n_train=2", "data.n_val=1", "data.n_test=1", "data.t=800",
         "data.families=[planted,lfr0.3]", "data.cache=null", "data.batch_size=2"],
        base=["trainer.max_epochs=1", "logger=none"],
    )
    assert metrics["test/ami"] == metrics["test/ami"]
    folder = publish_checkpoint(run_dir, "tiny_encoder", command="pytest", out_dir=tmp_path / "tiny_encoder",
                                notes="## Benchmark\nheld-out AMI")
    assert (folder / "README.md").read_text().rstrip().endswith("## Benchmark\nheld-out AMI")
    assert "| input | the couplings shrunk by 1.5 standard errors" in (folder / "README.md").read_text()
    assert json.loads((folder / "config.json").read_text())["net"]["noise_threshold"] == 1.5
