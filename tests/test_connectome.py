import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dgrn.sim.connectome import (
    Connectome,
    connectome_dynamics,
    load_connectome,
    spectral_radius,
    write_example_connectome,
)
from dgrn.sim.kinetic_ising import glauber_dynamics, rate_matched_bias


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("connectomes")
    return {suffix: write_example_connectome(folder / f"wiring.{suffix}", n=40, seed=1) for suffix in ("csv", "npz", "graphml")}


def _by_id(c: Connectome) -> tuple[np.ndarray, np.ndarray]:
    """Weights and E/I labels in the order of the node ids 'n0', 'n1', ... (formats order ids differently)."""
    order = np.argsort([int(str(i).lstrip("n")) for i in c.node_ids])
    return c.weights.toarray()[np.ix_(order, order)], c.inhibitory[order]


def test_the_three_formats_give_the_same_connectome(examples):
    ref_w, ref_inh = _by_id(load_connectome(examples["npz"]))
    assert ref_w.shape == (40, 40) and (ref_w != 0).sum() > 100 and ref_inh.sum() == 8
    for suffix in ("csv", "graphml"):
        w, inh = _by_id(load_connectome(examples[suffix]))
        assert np.allclose(w, ref_w, rtol=1e-5) and np.array_equal(inh, ref_inh), suffix
    npz = load_connectome(examples["npz"])
    assert npz.communities is not None and np.bincount(npz.communities).tolist() == [14, 13, 13]
    # scipy sparse .npz (W[post, pre]) reads back the same matrix
    path = examples["npz"].with_name("sparse.npz")
    sp.save_npz(path, sp.csr_matrix(ref_w))
    assert np.allclose(load_connectome(path).weights.toarray(), ref_w)


def _csv(path, text):
    path.write_text(text)
    return path


def test_bad_connectomes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        load_connectome(_csv(tmp_path / "nan.csv", "pre,post,weight\na,b,1.0\nb,a,nan\n"))
    with pytest.raises(ValueError, match="lacks column"):
        load_connectome(_csv(tmp_path / "cols.csv", "source,target,weight\na,b,1\n"))
    with pytest.raises(ValueError, match="unknown node id"):
        load_connectome(_csv(tmp_path / "ids.csv", "pre,post,weight\na,b,1\nb,zz,1\n"), nodes=["a", "b"])
    with pytest.raises(ValueError, match="unknown E/I label"):
        load_connectome(_csv(tmp_path / "ei.csv", "pre,post,weight,ei\na,b,1,X\n"))
    with pytest.raises(ValueError, match="both E and I"):
        load_connectome(_csv(tmp_path / "mixed.csv", "pre,post,weight,ei\na,b,1,E\na,c,1,I\n"))
    np.savez(tmp_path / "rect.npz", weights=np.ones((3, 4)))
    with pytest.raises(ValueError, match="square"):
        load_connectome(tmp_path / "rect.npz")
    np.savez(tmp_path / "nan.npz", weights=np.array([[0, np.nan], [1, 0]]))
    with pytest.raises(ValueError, match="NaN"):
        load_connectome(tmp_path / "nan.npz")
    bad = sp.csr_matrix(np.eye(3))
    bad.indices[0] = 7  # an edge to a node that does not exist
    sp.save_npz(tmp_path / "unknown.npz", bad, compressed=False)
    with pytest.raises(ValueError, match="unknown node id"):
        load_connectome(tmp_path / "unknown.npz")
    sp.save_npz(tmp_path / "rect_sparse.npz", sp.csr_matrix(np.ones((2, 3))))
    with pytest.raises(ValueError, match="square"):
        load_connectome(tmp_path / "rect_sparse.npz")
    with pytest.raises(ValueError, match="unknown connectome format"):
        load_connectome(_csv(tmp_path / "w.txt", "x"))
    with pytest.raises(FileNotFoundError):
        load_connectome(tmp_path / "missing.csv")
    # a feedforward chain has spectral radius 0: it cannot be rescaled to one
    chain = _csv(tmp_path / "chain.csv", "pre,post,weight\n0,1,1\n1,2,1\n")
    with pytest.raises(ValueError, match="spectral radius 0"):
        connectome_dynamics(chain, 10)
    assert connectome_dynamics(chain, 10, spectral_radius_target=None, burn_in=0).spikes.shape == (10, 3)


def test_signs_and_spectral_radius(examples):
    c = load_connectome(examples["csv"])
    data = connectome_dynamics(c, 200, sign="labels", spectral_radius_target=0.8, seed=0)
    w = data.true_couplings.to_dense().double().numpy()
    assert data.true_couplings.layout == torch.sparse_coo
    assert np.abs(np.linalg.eigvals(w)).max() == pytest.approx(0.8, rel=1e-4)
    # Dale's law: outgoing weights (columns) of inhibitory neurons negative, of excitatory ones positive
    inh = np.array(data.meta["inhibitory"])
    assert (w[:, inh] <= 0).all() and (w[:, ~inh] >= 0).all() and (w != 0).sum() == c.weights.nnz
    # the magnitudes are the connectome's, up to one scale factor
    ratio = np.abs(w[w != 0]) / np.abs(c.weights.toarray()[w != 0])
    assert np.allclose(ratio, ratio[0], rtol=1e-5)
    rand = connectome_dynamics(c, 10, sign="random", inhibitory_fraction=0.5, seed=3)
    assert sum(rand.meta["inhibitory"]) == 20
    assert (rand.true_couplings.to_dense() >= 0).sum() > 0
    with pytest.raises(ValueError, match="unknown sign rule"):
        connectome_dynamics(c, 10, sign="maybe")
    with pytest.raises(ValueError, match="unknown dynamics"):
        connectome_dynamics(c, 10, dynamics="hodgkin-huxley")


def test_kinetic_ising_runs_on_the_given_couplings(examples):
    """The Glauber identity of tests/test_sim.py: mean spike probability = mean sigma(h + W x(t-1)) for the
    connectome's (rescaled) couplings, so the dynamics used exactly the ground truth it reports."""
    data = connectome_dynamics(examples["graphml"], 20000, spectral_radius_target=1.5, seed=2)
    x = data.spikes.double()
    w, h = data.true_couplings.to_dense().double(), torch.tensor(data.meta["bias"], dtype=torch.float64)
    p = torch.sigmoid(h + x[:-1] @ w.T)
    se = (p * (1 - p)).sum(0).sqrt() / p.shape[0]
    assert ((x[1:].mean(0) - p.mean(0)).abs() < 5 * se).all()
    assert data.true_communities is not None and data.meta["node_ids"][0] == "n0"
    # same network, fresh trajectory
    again = connectome_dynamics(examples["graphml"], 200, spectral_radius_target=1.5, seed=2, sample_seed=9)
    assert torch.equal(again.true_couplings.to_dense(), data.true_couplings.to_dense())
    assert not torch.equal(again.spikes, data.spikes[:200])


def test_glauber_sparse_path_matches_dense():
    n = 2100  # above the size where sparse couplings stay sparse
    gen = torch.Generator().manual_seed(0)
    w = torch.where(torch.rand(n, n, generator=gen) < 0.01, 0.5 * torch.randn(n, n, generator=gen), torch.zeros(()))
    bias = rate_matched_bias(w, 0.05, 0.3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(bias, rate_matched_bias(w.to_sparse(), 0.05, 0.3, generator=torch.Generator().manual_seed(1)),
                          atol=1e-5)
    dense = glauber_dynamics(w, bias, 30, burn_in=0, seed=1)
    sparse = glauber_dynamics(w.to_sparse(), bias, 30, burn_in=0, seed=1)
    # float32 sums in a different order: a flip needs the noise within ~1e-6 of the probability
    assert (dense != sparse).float().mean() < 1e-3


def test_lif_dynamics_on_a_connectome(examples):
    data = connectome_dynamics(examples["npz"], 200, dynamics="lif", dt=0.005, burn_in_s=0.1, spectral_radius_target=0.5)
    assert data.spikes.shape == (200, 40) and data.dt == 0.005
    assert data.spikes.sum() > 0 and data.meta["simulator"] == "connectome_lif"
    assert torch.equal(data.true_couplings.to_dense() != 0, torch.tensor(load_connectome(examples["npz"]).weights.toarray() != 0))


def test_spectral_radius_arpack_matches_dense():
    # mostly excitatory weights: a Perron-like outlier, as in E-dominated wiring
    gen = np.random.default_rng(0)
    a = sp.random(300, 300, density=0.03, random_state=1, data_rvs=lambda k: gen.normal(1.0, 1.0, k)).tocsr()
    assert spectral_radius(a, dense_max=100) == pytest.approx(np.abs(np.linalg.eigvals(a.toarray())).max(), rel=1e-5)
