"""Tensor-network Born machines against dense contractions and exact enumeration."""
import copy
import itertools
import math
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from dgrn.sim.ising import chain_couplings, ising_sample_exact
from dgrn.tn import MERA, MPS, TTN, ConditionalMPS, SegmentedMPS, balanced_tree, lattice_tree, tree_from_labels
from dgrn.tn.readouts import compression_report, pair_marginals, truncation_curve

TREE = [[0, [1, 2, 5]], [[3], 4], 6]  # ternary node, single-child node and a site joining the root


def all_states(n, d=2):
    return torch.tensor(list(itertools.product(range(d), repeat=n)))


def state_index(x, d=2):
    return (x * d ** torch.arange(x.shape[1] - 1, -1, -1)).sum(1)


def dense_mps(m):
    psi = m.tensors[0].detach()
    for a in m.tensors[1:]:
        psi = torch.einsum("...l,lsr->...sr", psi, a.detach())
    return psi.reshape(-1)


def dense_ttn(m):
    """Full amplitude vector from a recursive einsum contraction of the tree (independent of TTN's code)."""
    def node(tree):
        if not isinstance(tree, list):
            return torch.eye(m.phys_dim, dtype=tensors[0].dtype), [tree]
        parts = [node(c) for c in tree]
        idx = node.counter
        node.counter += 1
        t = tensors[idx]
        out, sites = t, []
        for j, (child, child_sites) in enumerate(parts):
            # contract child's last axis with axis `len(sites) + j'` of the running tensor
            pos = len(sites)
            out = torch.tensordot(child, out.movedim(pos, 0), dims=([child.dim() - 1], [0]))
            out = out.movedim(list(range(child.dim() - 1)), list(range(pos, pos + child.dim() - 1)))
            sites += child_sites
        return out, sites

    # post-order numbering, as in TTN; complex tensors stay complex
    tensors = [t.detach().to(torch.complex128 if t.is_complex() else torch.float64) for t in m.tensors]
    node.counter = 0
    psi, sites = node(m.tree)
    psi = psi.reshape(*([m.phys_dim] * len(sites)))
    return psi.permute(*torch.argsort(torch.tensor(sites)).tolist()).reshape(-1)


def total_variation(samples, log_p):
    freq = torch.bincount(state_index(samples), minlength=log_p.numel()).double() / len(samples)
    return 0.5 * (freq - log_p.exp()).abs().sum().item()


# --------------------------------------------------------------------------------------------------- MPS
def test_mps_is_exactly_normalized_and_matches_dense_contraction():
    torch.manual_seed(0)
    m = MPS(7, 3, init_noise=1.0).double()
    x = all_states(7)
    lp = m.log_prob(x)
    assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    psi = dense_mps(m)
    torch.testing.assert_close(lp, (psi ** 2 / (psi ** 2).sum()).log())
    torch.testing.assert_close(m(x), lp)


def test_mps_three_valued_sites():
    torch.manual_seed(1)
    m = MPS(4, 5, phys_dim=3, init_noise=1.0).double()
    assert m.bond_dims == [3, 5, 3]  # capped at the exact ranks
    assert m.log_prob(all_states(4, 3)).exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_mps_1000_sites_in_float32():
    torch.manual_seed(0)
    m = MPS(1000, 6, init_noise=0.5)
    with torch.no_grad():
        for a in m.tensors:
            a.mul_(3.0)  # unscaled, Z would be ~(18)^1000: far beyond float32
    x = torch.randint(0, 2, (8, 1000))
    lp32 = m.log_prob(x)
    lp64 = m.double().log_prob(x)
    assert torch.isfinite(lp32).all()
    torch.testing.assert_close(lp32.double(), lp64, rtol=1e-4, atol=0)
    s = m.float().sample(4)
    assert torch.isfinite(m.log_prob(s)).all()


def test_mps_samples_are_exact():
    torch.manual_seed(2)
    m = MPS(6, 3, init_noise=1.0).double()
    lp = m.log_prob(all_states(6))
    samples = m.sample(100_000, generator=torch.Generator().manual_seed(0))
    # expected TV of 100k draws over 64 states is about 0.01
    assert total_variation(samples, lp) < 0.02


def test_mps_marginals():
    torch.manual_seed(3)
    m = MPS(6, 4, init_noise=1.0).double()
    x = all_states(6)
    p = m.log_prob(x).exp().reshape([2] * 6)
    ref = p.sum((0, 2, 3, 5)).log()  # marginal of sites 1 and 4
    torch.testing.assert_close(m.log_marginal(x, [1, 4]), ref[x[:, 1], x[:, 4]])
    torch.testing.assert_close(m.log_marginal(x, []), torch.zeros(len(x), dtype=torch.float64), atol=1e-12, rtol=0)


def test_mps_canonicalize_and_truncate():
    torch.manual_seed(4)
    m = MPS(8, 6, init_noise=1.0).double()
    x = all_states(8)
    lp = m.log_prob(x)
    psi = dense_mps(m)
    psi = psi / psi.norm()
    m.canonicalize()
    torch.testing.assert_close(m.log_prob(x), lp)
    for a in m.tensors[1:]:  # right-canonical
        torch.testing.assert_close(torch.einsum("lsr,msr->lm", a, a), torch.eye(a.shape[0], dtype=a.dtype))
    report = m.truncate(0.0)
    torch.testing.assert_close(m.log_prob(x), lp)
    report = m.truncate(0.02, max_bond=3)
    assert max(report["bond_dims_after"]) <= 3 and report["n_params_after"] < report["n_params_before"]
    trunc = dense_mps(m)
    trunc = trunc / trunc.norm()
    overlap = float(psi @ trunc)
    # sign of a real MPS is a gauge: compare |psi|; the SVD bound holds for the truncation sweep
    assert 2 - 2 * abs(overlap) <= 2 * report["total_discarded"] + 1e-9
    assert all(0 <= e <= 0.02 or k == 3 for e, k in zip(report["discarded"], report["bond_dims_after"]))


def test_mps_sweeps_lower_the_nll_and_adapt_bonds():
    data = ising_sample_exact(chain_couplings(10), 0.8, 1500, seed=0).long()
    torch.manual_seed(0)
    m = MPS(10, 1).double()
    nll0 = -m.log_prob(data).mean().item()
    r1 = m.sweep(data, tol=1e-4, max_bond=4, n_steps=5)
    r2 = m.sweep(data, tol=1e-4, max_bond=4, n_steps=5)
    assert r2["nll"] <= r1["nll"] + 1e-9 < nll0
    assert max(r1["bond_dims"]) > 1  # grew from bond dimension 1
    exact_entropy = math.log(2) + 9 * math.log(2 * math.cosh(0.8)) - 0.8 * 9 * math.tanh(0.8)
    assert r2["nll"] == pytest.approx(exact_entropy, abs=0.1)
    shrunk = m.sweep(data, tol=0.2, n_steps=1)
    assert max(shrunk["bond_dims"]) < max(r2["bond_dims"])


def test_mps_trains_with_a_torch_optimizer():
    data = ising_sample_exact(chain_couplings(8), 0.8, 2000, seed=1).long()
    torch.manual_seed(0)
    m = MPS(8, 2)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = -m.log_prob(data).mean()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first - 0.2


def test_mps_nan_parameters_are_reported():
    m = MPS(5, 2)
    with torch.no_grad():
        m.tensors[2][0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"tensors\.2"):
        m.log_prob(torch.zeros(1, 5, dtype=torch.long))


def test_mps_bad_input():
    m = MPS(4, 2)
    with pytest.raises(ValueError, match=r"\{0, \.\.\., 1\}"):
        m.log_prob(torch.tensor([[0, 1, 2, 0]]))
    with pytest.raises(ValueError, match="4 sites"):
        m.log_prob(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="non-integer"):
        m.log_prob(torch.full((1, 4), 0.5))
    with pytest.raises(ValueError, match="bond_dim"):
        MPS(4, 0)
    with pytest.raises(ValueError, match="tol"):
        m.truncate(1.5)
    with pytest.raises(ValueError, match="sites"):
        m.log_marginal(torch.zeros(1, 4, dtype=torch.long), [7])


# --------------------------------------------------------------------------------------------------- TTN
@pytest.mark.parametrize("tree", [TREE, balanced_tree(7), balanced_tree(7, arity=3)])
def test_ttn_matches_dense_contraction(tree):
    torch.manual_seed(0)
    m = TTN(7, 3, tree=tree, init_noise=1.0).double()
    x = all_states(7)
    lp = m.log_prob(x)
    assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    psi = dense_ttn(m)
    torch.testing.assert_close(lp, (psi ** 2 / (psi ** 2).sum()).log())


def test_ttn_samples_and_marginals_are_exact():
    torch.manual_seed(1)
    m = TTN(7, 3, tree=TREE, init_noise=1.0).double()
    x = all_states(7)
    lp = m.log_prob(x)
    samples = m.sample(100_000, generator=torch.Generator().manual_seed(0))
    assert total_variation(samples, lp) < 0.03  # 128 states: expected TV about 0.014
    p = lp.exp().reshape([2] * 7)
    ref = p.sum((0, 2, 3, 4, 6)).log()  # sites 1 and 5
    torch.testing.assert_close(m.log_marginal(x, [1, 5]), ref[x[:, 1], x[:, 5]])


def test_ttn_isometric_form_and_truncation():
    torch.manual_seed(2)
    m = TTN(8, 4, init_noise=1.0).double()
    x = all_states(8)
    lp = m.log_prob(x)
    psi = dense_ttn(m)
    psi = psi / psi.norm()
    m.canonicalize()
    torch.testing.assert_close(m.log_prob(x), lp)
    for t in m.tensors[:-1]:  # every non-root node is an isometry toward the root
        mat = t.reshape(-1, t.shape[-1])
        torch.testing.assert_close(mat.T @ mat, torch.eye(mat.shape[1], dtype=mat.dtype))
    m.truncate(0.0)
    torch.testing.assert_close(m.log_prob(x), lp)
    report = m.truncate(0.05, max_bond=2)
    assert report["n_params_after"] < report["n_params_before"] and max(report["bond_dims_after"]) <= 2
    trunc = dense_ttn(m)
    assert 2 - 2 * abs(float(psi @ (trunc / trunc.norm()))) <= 2 * report["total_discarded"] + 1e-9


def test_ttn_truncation_where_a_bond_loses_rank_below_it():
    """Truncating a child's subtree can leave it fewer rows than its upward bond; the QR that moves the center
    back up then shrinks that bond too (a regression: this used to raise a reshape error on the 4x4 lattice tree)."""
    torch.manual_seed(0)
    m = TTN(16, 12, tree=lattice_tree(4), init_noise=3.0).double()
    psi = dense_ttn(m)
    psi = psi / psi.norm()
    report = m.truncate(0.3)
    assert report["n_params_after"] < report["n_params_before"]
    assert all(t.shape[-1] == d for t, d in zip(m.tensors, report["bond_dims_after"]))
    trunc = dense_ttn(m)
    assert 2 - 2 * abs(float(psi @ (trunc / trunc.norm()))) <= 2 * report["total_discarded"] + 1e-9
    torch.testing.assert_close(m.log_prob(all_states(16)).exp().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_ttn_trains_and_reports_nan():
    data = ising_sample_exact(chain_couplings(8), 0.8, 2000, seed=1).long()
    torch.manual_seed(0)
    m = TTN(8, 4)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = -m.log_prob(data).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2
    with torch.no_grad():
        m.tensors[0].fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN"):
        m.log_prob(data[:2])


def test_ttn_sweeps_lower_the_nll():
    data = ising_sample_exact(chain_couplings(8), 0.8, 1500, seed=0).long()
    torch.manual_seed(0)
    m = TTN(8, 4, init_noise=1.0).double()  # bond 4 holds the chain exactly (a leaf pair cuts it twice)
    nll0 = -m.log_prob(data).mean().item()
    r1 = m.sweep(data, n_steps=5)
    m.sweep(data, n_steps=5)
    r2 = m.sweep(data, n_steps=5)
    assert r2["nll"] <= r1["nll"] + 1e-9 < nll0
    exact_entropy = math.log(2) + 7 * math.log(2 * math.cosh(0.8)) - 0.8 * 7 * math.tanh(0.8)
    assert r2["nll"] == pytest.approx(exact_entropy, abs=0.1)
    assert m.log_prob(all_states(8)).exp().sum().item() == pytest.approx(1.0, abs=1e-10)


def test_trees():
    assert sorted(_leaves(lattice_tree(4, 4))) == list(range(16))
    assert lattice_tree(2, 2) == [[0, 1], [2, 3]] or lattice_tree(2, 2) == [[0, 2], [1, 3]]
    assert tree_from_labels([[0, 0, 1, 1, 2], [0, 0, 1]]) == [[[0, 1], [2, 3]], 4]
    assert balanced_tree(4) == [[0, 1], [2, 3]]
    m = TTN(5, 2, tree=tree_from_labels([[0, 0, 1, 1, 2], [0, 0, 1]]))
    assert m.log_prob(torch.zeros(1, 5, dtype=torch.long)).shape == (1,)


def _leaves(tree):
    return [tree] if not isinstance(tree, list) else [s for c in tree for s in _leaves(c)]


def test_ttn_bad_trees():
    with pytest.raises(ValueError, match="repeated \\[1\\]"):
        TTN(4, 2, tree=[[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="missing \\[3\\]"):
        TTN(4, 2, tree=[[0, 1], [2]])
    with pytest.raises(ValueError, match="out of range \\[7\\]"):
        TTN(4, 2, tree=[[0, 1], [2, 3, 7]])
    with pytest.raises(ValueError, match="empty node"):
        TTN(3, 2, tree=[[0, 1], [], 2])
    with pytest.raises(ValueError, match="deeper tree"):
        TTN(40, 2, tree=list(range(40)))
    with pytest.raises(ValueError, match="bond_dim"):
        TTN(4, 0)


# ------------------------------------------------------------------------------------ complex Born machines
COMPLEX = {"dtype": torch.complex128, "init_noise": 1.0, "imag_noise": 1.0}  # far from real: phases matter
MAKERS = {"MPS": lambda **kw: MPS(7, 3, **kw), "TTN": lambda **kw: TTN(7, 3, tree=TREE, **kw)}
DENSE = {"MPS": dense_mps, "TTN": dense_ttn}


def born(psi):
    """|psi|^2 / Z from a dense (complex) amplitude vector, in logs."""
    w = psi.abs() ** 2
    return (w / w.sum()).log()


def test_complex_mps_is_normalized_and_matches_dense_contraction():
    torch.manual_seed(0)
    m = MPS(7, 3, **COMPLEX)
    assert m.tensors[0].dtype == torch.complex128 and m.is_complex
    x = all_states(7)
    lp = m.log_prob(x)
    assert lp.dtype == torch.float64  # real log-probabilities
    assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    psi = dense_mps(m)  # independent einsum of the complex site tensors
    assert psi.imag.abs().max() > 0.1 * psi.real.abs().max()  # genuinely complex amplitudes
    torch.testing.assert_close(lp, born(psi))
    # the real part alone is a different distribution: the phases are not a gauge
    assert (born(psi.real) - lp).abs().max() > 0.1
    m64 = MPS(7, 3, dtype=torch.complex64, init_noise=1.0, imag_noise=1.0)
    assert m64.log_prob(x).dtype == torch.float32 and m64.n_params == 2 * sum(t.numel() for t in m64.tensors)


@pytest.mark.parametrize("tree", [TREE, balanced_tree(7, arity=3)])
def test_complex_ttn_is_normalized_and_matches_dense_contraction(tree):
    torch.manual_seed(0)
    m = TTN(7, 3, tree=tree, **COMPLEX)
    x = all_states(7)
    lp = m.log_prob(x)
    assert lp.dtype == torch.float64 and lp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    psi = dense_ttn(m)
    assert psi.imag.abs().max() > 0.1 * psi.real.abs().max()
    torch.testing.assert_close(lp, born(psi))
    assert TTN(7, 3, tree=tree, dtype=torch.complex64).log_prob(x).dtype == torch.float32


@pytest.mark.parametrize("net", ["MPS", "TTN"])
def test_complex_mps_and_ttn_samples_and_marginals_are_exact(net):
    torch.manual_seed(1)
    m = MAKERS[net](**COMPLEX)
    x = all_states(7)
    lp = m.log_prob(x)
    samples = m.sample(100_000, generator=torch.Generator().manual_seed(0))
    assert total_variation(samples, lp) < 0.03  # 128 states, 100k draws: expected TV about 0.014
    p = lp.exp().reshape([2] * 7)
    ref = p.sum((0, 2, 3, 4, 6)).log()  # sites 1 and 5
    marg = m.log_marginal(x, [1, 5])
    assert marg.dtype == torch.float64
    torch.testing.assert_close(marg, ref[x[:, 1], x[:, 5]])
    torch.testing.assert_close(m.log_marginal(x, [3]), p.sum((0, 1, 2, 4, 5, 6)).log()[x[:, 3]])
    pairs = pair_marginals(m)
    ref = torch.zeros(2, 2, dtype=torch.float64).index_put_((x[:, 2], x[:, 6]), lp.exp(), accumulate=True)
    torch.testing.assert_close(pairs[2, 6], ref)


@pytest.mark.parametrize("net", ["MPS", "TTN"])
def test_complex_mps_and_ttn_canonical_form_and_truncation(net):
    torch.manual_seed(2)
    m = (MPS(8, 6, **COMPLEX) if net == "MPS" else TTN(8, 4, **COMPLEX))
    x = all_states(8)
    lp = m.log_prob(x)
    psi = DENSE[net](m)
    psi = psi / psi.norm()
    m.canonicalize()
    torch.testing.assert_close(m.log_prob(x), lp)
    if net == "MPS":  # right-canonical with the conjugate: sum_s A[s] A[s]^H = I
        for a in m.tensors[1:]:
            torch.testing.assert_close(torch.einsum("lsr,msr->lm", a, a.conj()), torch.eye(a.shape[0], dtype=a.dtype))
    else:  # every non-root node an isometry toward the root: T^H T = I
        for t in m.tensors[:-1]:
            mat = t.reshape(-1, t.shape[-1])
            torch.testing.assert_close(mat.mH @ mat, torch.eye(mat.shape[1], dtype=mat.dtype))
    m.truncate(0.0)
    torch.testing.assert_close(m.log_prob(x), lp)
    report = m.truncate(0.02, max_bond=2)
    assert m.tensors[0].dtype == torch.complex128
    assert max(report["bond_dims_after"]) <= 2 and report["n_params_after"] < report["n_params_before"]
    assert m.log_prob(x).exp().sum().item() == pytest.approx(1.0, abs=1e-12)  # still exactly normalized
    trunc = DENSE[net](m)
    overlap = torch.vdot(psi, trunc / trunc.norm()).abs().item()  # a global phase is a gauge
    assert 2 - 2 * overlap <= 2 * report["total_discarded"] + 1e-9


@pytest.mark.parametrize("net", ["MPS", "TTN"])
def test_complex_mps_and_ttn_sweeps_lower_the_nll(net):
    data = ising_sample_exact(chain_couplings(8), 0.8, 600, seed=0).long()
    torch.manual_seed(0)
    m = MPS(8, 2, dtype=torch.complex128, imag_noise=0.5) if net == "MPS" else \
        TTN(8, 4, dtype=torch.complex128, init_noise=1.0, imag_noise=0.5)
    nll0 = -m.log_prob(data).mean().item()
    kwargs = {"tol": 1e-4, "max_bond": 4} if net == "MPS" else {}
    r1 = m.sweep(data, n_steps=3, **kwargs)
    r2 = m.sweep(data, n_steps=3, **kwargs)
    assert r2["nll"] <= r1["nll"] + 1e-9 < nll0 - 0.1
    assert m.tensors[0].dtype == torch.complex128 and any(t.imag.abs().max() > 1e-3 for t in m.tensors)
    assert m.log_prob(all_states(8)).exp().sum().item() == pytest.approx(1.0, abs=1e-10)


class _Marginal(torch.nn.Module):
    def __init__(self, model, sites):
        super().__init__()
        self.model, self.sites = model, sites

    def forward(self, x):
        return self.model.log_marginal(x, self.sites)


@pytest.mark.parametrize("net", ["MPS", "TTN"])
def test_complex_mps_and_ttn_gradcheck(net):
    """torch.autograd.gradcheck in complex128 with respect to the complex tensors (torch checks the Wirtinger
    derivatives of the real log-probabilities and marginals)."""
    torch.manual_seed(3)
    m = MPS(5, 2, **COMPLEX) if net == "MPS" else TTN(5, 2, tree=[[0, [1, 2]], [3, 4]], **COMPLEX)
    x = all_states(5)[::5]
    params = tuple(t.detach().clone().requires_grad_(True) for t in m.tensors)
    marginal = _Marginal(m, [1, 3])

    def log_prob(*tensors):
        return torch.func.functional_call(m, {f"tensors.{i}": t for i, t in enumerate(tensors)}, (x,))

    def log_marginal(*tensors):
        return torch.func.functional_call(marginal, {f"model.tensors.{i}": t for i, t in enumerate(tensors)}, (x,))

    assert log_prob(*params).dtype == torch.float64
    assert torch.autograd.gradcheck(log_prob, params)
    assert torch.autograd.gradcheck(log_marginal, params)


@pytest.mark.parametrize("net", ["MPS", "TTN"])
def test_complex_mps_and_ttn_start_near_the_real_model(net):
    """Same seed: the real part of the complex initialization is the real model's, the imaginary part is
    imag_noise times its random scale, so the distributions nearly agree. A real model cast to complex keeps its
    distribution exactly, but the gradient in the imaginary directions vanishes there (why dtype= adds noise)."""
    x = all_states(7)
    torch.manual_seed(4)
    real = MAKERS[net](dtype=torch.float64)
    torch.manual_seed(4)
    cplx = MAKERS[net](dtype=torch.complex128)
    main = MAKERS[net](dtype=torch.float64, init_noise=0.0)  # the noise-free part
    for r, c in zip(real.tensors, cplx.tensors):
        torch.testing.assert_close(c.real, r)
    with torch.no_grad():
        imag = torch.cat([c.imag.reshape(-1) for c in cplx.tensors]).norm()
        noise = torch.cat([(r - m).reshape(-1) for r, m in zip(real.tensors, main.tensors)]).norm()
    assert float(imag / noise) == pytest.approx(0.1 / 0.3, rel=0.3)  # defaults: imag_noise 0.1, init_noise 0.3
    with torch.no_grad():
        lp_real, lp_cplx = real.log_prob(x), cplx.log_prob(x)
    kl = float((lp_real.exp() * (lp_real - lp_cplx)).sum())  # about 0.003 (MPS), 1e-4 (TTN)
    kl_uniform = float((lp_real.exp() * (lp_real + 7 * math.log(2))).sum())  # the real noise alone: 0.07-0.6
    assert kl < 0.01 and kl < 0.1 * kl_uniform
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note that complex modules are new
        cast = copy.deepcopy(real).to(torch.complex128)
    torch.testing.assert_close(cast.log_prob(x), real.log_prob(x))
    cast.log_prob(x[::3]).mean().backward()
    real.log_prob(x[::3]).mean().backward()
    for c, r in zip(cast.tensors, real.tensors):
        assert c.grad.imag.abs().max() < 1e-12
        torch.testing.assert_close(c.grad.real, r.grad)


def test_complex_mps_float32_long_chain():
    torch.manual_seed(5)
    m = MPS(300, 6, dtype=torch.complex64, init_noise=0.5, imag_noise=0.5)
    with torch.no_grad():
        for a in m.tensors:
            a.mul_(3.0)  # unscaled, Z would overflow float32
    x = torch.randint(0, 2, (8, 300))
    lp32 = m.log_prob(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note that complex modules are new
        lp64 = m.to(torch.complex128).log_prob(x)
    assert lp32.dtype == torch.float32 and torch.isfinite(lp32).all()
    torch.testing.assert_close(lp32.double(), lp64, rtol=1e-4, atol=0)
    assert torch.isfinite(m.log_prob(m.sample(4))).all()


def test_complex_mps_and_ttn_bad_input():
    with pytest.raises(TypeError, match="complex128"):
        MPS(4, 2, dtype=torch.int64)
    with pytest.raises(TypeError, match="dtype must be one of"):
        TTN(4, 2, dtype=torch.float16)
    with pytest.raises(ValueError, match="imag_noise.*real"):
        MPS(4, 2, imag_noise=0.1)  # no complex dtype: nothing to scale
    with pytest.raises(ValueError, match="imag_noise"):
        TTN(4, 2, dtype=torch.complex128, imag_noise=-1.0)
    for m in (MPS(4, 2, dtype=torch.complex128), TTN(4, 2, dtype=torch.complex64)):
        with pytest.raises(TypeError, match="discard their imaginary parts"):
            m.to(torch.float64)  # real-only cast of a complex model
        assert m.tensors[0].is_complex()  # left unchanged
        with pytest.raises(TypeError, match="real integers"):
            m.log_prob(torch.zeros(1, 4, dtype=torch.complex64))
    mera = MERA(8, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mera.to(torch.complex128)
    with pytest.raises(TypeError, match="MERA is real-only"):
        mera.log_prob(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="MERA is real-only"):
        mera.sample(2)


# ------------------------------------------------------------------------------------------ ConditionalMPS
@pytest.mark.parametrize("mode", ["sequential", "transfer", "auto"])  # auto on CPU: the compiled kernel
def test_conditional_mps_is_normalized_per_context_and_samples_exactly(mode):
    torch.manual_seed(0)
    m = ConditionalMPS(5, 3, 3, rank=2, init_noise=1.0).double()
    m.contraction = mode
    with torch.no_grad():
        m.field.weight.normal_()
        m.field.bias.normal_()
    x = all_states(5)
    c = torch.randn(3, 3, dtype=torch.float64)
    lp = m.log_prob(x.repeat(3, 1), c.repeat_interleave(32, 0)).reshape(3, 32)
    torch.testing.assert_close(lp.exp().sum(1), torch.ones(3, dtype=torch.float64))
    assert (lp[0] - lp[1]).abs().max() > 0.1  # the context changes the distribution
    samples = m.sample(c.repeat_interleave(40_000, 0), generator=torch.Generator().manual_seed(1))
    for k in range(3):
        assert total_variation(samples[k * 40_000:(k + 1) * 40_000], lp[k]) < 0.03


@pytest.mark.parametrize("mode", ["sequential", "transfer", "auto"])
@pytest.mark.parametrize("rank", [0, 1])
def test_conditional_mps_constrained_samples_are_exact(mode, rank):
    """Draws consistent with a coarse state (OR and count-2 blocks) follow the restricted distribution: total
    variation against the exact probabilities of all 64 patterns below 0.03 per context (its sampling noise at
    40,000 draws is ~0.01), and no inconsistent draw."""
    torch.manual_seed(2)
    m = _random_conditional(6, rank)
    m.contraction = mode
    groups, thresholds = torch.tensor([0, 0, 0, 1, 1, 2]), [2, 1, 1]
    active = torch.tensor([[True, False, True], [False, True, True]])
    c = torch.randn(2, 3, dtype=torch.float64)
    x = all_states(6)
    for k in range(2):
        lp = m.log_prob(x, c[k].expand(64, -1), groups=groups, active=active[k].expand(64, -1), thresholds=thresholds)
        torch.testing.assert_close(lp.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
        draws = m.sample(c[k].expand(40_000, -1), generator=torch.Generator().manual_seed(k), groups=groups,
                         active=active[k].expand(40_000, -1), thresholds=thresholds)
        assert torch.equal(_counts_active(draws, groups, thresholds), active[k].expand(40_000, -1))
        assert total_variation(draws, lp) < 0.03


@pytest.mark.parametrize("merges", [0, 1, 2, 3, None])
@pytest.mark.parametrize("phys_dim", [2, 3])
def test_conditional_mps_joint_draws_of_merged_sites_are_exact(monkeypatch, merges, phys_dim):
    """The transfer sampler draws runs of up to 2^merges sites jointly, never across a block, carrying the count
    into the next run of the same block: a 5-site block at threshold 3 (runs of 1, 2, 4 and 8 sites cut it at every
    place) and a 2-site OR block, per-context thresholds included; total variation against the exact restricted
    distribution (all d^7 patterns) below 0.03 at 40,000 draws (its sampling noise is ~0.01 for 128 patterns, ~0.02
    for the ~300 patterns of weight above 1e-4 at d = 3), and no inconsistent draw. ``merges=None``: the same cases
    through the compiled CPU kernel (``contraction="auto"``), which draws site by site."""
    import dgrn.tn.conditional as conditional

    m = _random_conditional(7, 0, phys_dim=phys_dim, seed=3)
    if merges is not None:
        monkeypatch.setattr(conditional, "SAMPLE_MERGES", merges)
        m.contraction = "transfer"
    groups = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    x = all_states(7, phys_dim)
    c = torch.randn(3, 3, dtype=torch.float64)
    cases = [([True, True], [3, 1]), ([False, True], [3, 1]), ([True, True], [0, 2])]
    for k, (active, thresholds) in enumerate(cases):
        active, thresholds = torch.tensor(active), torch.tensor(thresholds)
        lp = m.log_prob(x, c[k].expand(len(x), -1), groups=groups, active=active.expand(len(x), -1),
                        thresholds=thresholds.expand(len(x), -1))
        torch.testing.assert_close(lp.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
        draws = m.sample(c[k].expand(40_000, -1), generator=torch.Generator().manual_seed(k), groups=groups,
                         active=active.expand(40_000, -1), thresholds=thresholds.expand(40_000, -1))
        assert lp[state_index(draws, phys_dim)].isfinite().all()  # every draw consistent with its coarse state
        freq = torch.bincount(state_index(draws, phys_dim), minlength=len(x)).double() / len(draws)
        assert 0.5 * (freq - lp.exp()).abs().sum().item() < 0.03


def test_conditional_mps_samples_on_cpu_through_the_compiled_kernel(monkeypatch):
    """``contraction="auto"`` on CPU draws with the compiled kernel (the tests above check its draws against the exact
    distribution), for float32 models too; an explicit contraction keeps the PyTorch sampler; the uniforms come from
    the generator, so one seed gives one draw, on any number of threads and from concurrent callers."""
    import dgrn.tn.conditional as conditional

    calls = []
    kernel = conditional.sample_conditional_mps
    monkeypatch.setattr(conditional, "sample_conditional_mps", lambda *a: calls.append(1) or kernel(*a))
    m = _random_conditional(9, 1, dtype=torch.float32)
    c = torch.randn(50, 3)
    draw = m.sample(c, generator=torch.Generator().manual_seed(4))
    assert calls and draw.dtype == torch.long and draw.shape == (50, 9)
    assert torch.equal(draw, m.sample(c, generator=torch.Generator().manual_seed(4)))
    threads = torch.get_num_threads()
    try:  # more threads draw the same (each context uses its own uniforms only)
        torch.set_num_threads(2)
        parallel = m.sample(c, generator=torch.Generator().manual_seed(4))
        with ThreadPoolExecutor(4) as pool:  # concurrent callers take turns in numba's pool (it aborts otherwise)
            concurrent = list(pool.map(lambda seed: m.sample(c, generator=torch.Generator().manual_seed(seed)),
                                       [4] * 8))
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 11 and torch.equal(parallel, draw) and all(torch.equal(d, draw) for d in concurrent)
    m.contraction = "sequential"
    calls.clear()
    m.sample(c)
    assert not calls


def test_sizes_that_do_not_fit_in_memory_are_refused_before_allocating(monkeypatch):
    """A bond dimension whose tensors exceed the free memory raises MemoryError naming the size, before any
    allocation: constructors (a TB of site tensors) and, with the free memory read as 64 KiB, the ConditionalMPS
    contractions (tree: 64 x 20 x 64 x 64 matrices; the 20 x 2 x 64 x 64 transfer maps), while the same calls run
    with the real memory."""
    import dgrn.tn._common as common

    with pytest.raises(MemoryError, match="lower the bond dimension"):
        ConditionalMPS(4, 3, bond_dim=200_000)
    with pytest.raises(MemoryError, match="MPS tensors"):
        MPS(100, 1_000_000)
    m = ConditionalMPS(20, 3, 8, rank=0)
    x, c = torch.randint(0, 2, (64, 20)), torch.randn(64, 3)
    for mode in ("tree", "transfer"):
        m.contraction = mode
        assert m.log_prob(x, c).isfinite().all()
    monkeypatch.setattr(common, "available_bytes", lambda device: 2**16)
    monkeypatch.setattr(common, "MEMORY_CHECK_FLOOR", 0)  # these sizes are below the floor that skips the query
    for mode, what in (("tree", "tree contraction"), ("transfer", "transfer chain")):
        m.contraction = mode
        with pytest.raises(MemoryError, match=what):
            m.log_prob(x, c)
    with pytest.raises(MemoryError, match="transfer chain"):
        m.sample(c)


def test_conditional_mps_learns_context_dependent_correlations():
    """p(x|c) with context fields and fixed couplings is exactly an MPS of bond 2; the fit reaches its entropy."""
    torch.manual_seed(0)
    n, k = 5, 2
    w_field = torch.randn(k, n)
    couplings = torch.tensor([1.5, -1.5, 1.5, -1.5])
    x_all = all_states(n).double()
    energy_pair = (x_all[:, :-1] * x_all[:, 1:] * couplings).sum(1)

    def exact_log_p(c):
        logits = (c @ w_field)[:, None, :] * x_all[None]  # (B, 32, n)
        lw = logits.sum(2) + energy_pair
        return lw - lw.logsumexp(1, keepdim=True)

    c = torch.randn(2000, k)
    lp = exact_log_p(c)
    idx = torch.multinomial(lp.exp(), 1).squeeze(1)
    x = x_all[idx].long()
    m = ConditionalMPS(n, k, 2, rank=0)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        loss = -m.log_prob(x, c).mean()
        loss.backward()
        opt.step()
    cond_entropy = -(lp.exp() * lp).sum(1).mean().item()
    assert loss.item() / n == pytest.approx(cond_entropy / n, abs=0.02)


def test_conditional_mps_bad_input():
    m = ConditionalMPS(4, 3, 2)
    with pytest.raises(ValueError, match="context_dim=3"):
        m.log_prob(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="one context per configuration"):
        m.log_prob(torch.zeros(2, 4, dtype=torch.long), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="NaN"):
        m.sample(torch.full((1, 3), float("nan")))
    with torch.no_grad():
        m.core.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="core"):
        m.log_prob(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3))


# ------------------------------------------------------------------------------------------------ read-outs
def test_compression_readouts():
    torch.manual_seed(0)
    data = ising_sample_exact(chain_couplings(10), 0.8, 2000, seed=0).long()
    m = MPS(10, 8, init_noise=1.0).double()
    report = compression_report(m)
    assert report["n_params"] == m.n_params and report["log10_states"] == pytest.approx(10 * math.log10(2))
    assert report["bond_dims"] == m.bond_dims
    curve = truncation_curve(m, data, [1e-1, 1e-3, 0.0])
    assert [row["tol"] for row in curve] == [1e-1, 1e-3, 0.0]
    assert curve[0]["n_params"] <= curve[1]["n_params"] <= curve[2]["n_params"] == m.n_params
    assert curve[2]["nll"] == pytest.approx(-m.log_prob(data).mean().item(), abs=1e-9)
    assert m.n_params == report["n_params"]  # the model itself is left untouched


@pytest.mark.parametrize("make", [lambda: MPS(7, 3, phys_dim=3, init_noise=1.0),
                                  lambda: TTN(7, 3, phys_dim=3, tree=TREE, init_noise=1.0)])
def test_pair_marginals_match_enumeration(make):
    torch.manual_seed(0)
    m = make().double()
    x = all_states(7, 3)
    p = m.log_prob(x).exp()
    pairs = pair_marginals(m)
    assert pairs.shape == (7, 7, 3, 3)
    for i, j in [(0, 6), (2, 3), (5, 1), (4, 4)]:
        ref = torch.zeros(3, 3, dtype=torch.float64).index_put_((x[:, i], x[:, j]), p, accumulate=True)
        torch.testing.assert_close(pairs[i, j], ref, atol=1e-12, rtol=1e-10)
    with pytest.raises(TypeError, match="log_marginal"):
        pair_marginals(MERA(8, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    x = torch.randint(0, 2, (64, 12))
    for m in (MPS(12, 4, init_noise=1.0), TTN(12, 4, init_noise=1.0)):
        m = m.double()
        ref = m.log_prob(x)
        torch.testing.assert_close(m.cuda().log_prob(x.cuda()).cpu(), ref)
        assert m.sample(16).device.type == "cuda"
    cm = ConditionalMPS(6, 3, 3).double()
    c = torch.randn(8, 3, dtype=torch.float64)
    xs = torch.randint(0, 2, (8, 6))
    torch.testing.assert_close(cm.cuda().log_prob(xs.cuda(), c.cuda()).cpu(), cm.cpu().log_prob(xs, c))


def _consistent(x: torch.Tensor, groups: torch.Tensor, active: torch.Tensor, thresholds=None) -> torch.Tensor:
    n_groups = int(groups[-1]) + 1
    thresholds = [1] * n_groups if thresholds is None else thresholds
    fired = torch.stack([(x[:, groups == g] > 0).sum(1) >= thresholds[g] for g in range(n_groups)], 1)
    return (fired == active).all(1)


@pytest.mark.parametrize("active,thresholds", [([1, 0, 1], None), ([1, 1, 1], None), ([0, 0, 0], None),
                                               ([0, 1, 1], None), ([1, 0, 1], [2, 2, 1]), ([0, 1, 0], [2, 3, 1]),
                                               ([1, 1, 1], [1, 2, 1]), ([0, 0, 0], [2, 2, 1])])
def test_conditional_mps_coarse_constraint_matches_restricted_enumeration(active, thresholds):
    """log p(x | c, coarse) = the unconstrained Born weights restricted to the configurations whose count of
    nonzero sites in each block reaches its threshold exactly where the coarse state is active (threshold 1: OR),
    renormalized (enumerated independently); sampling follows it exactly."""
    torch.manual_seed(0)
    m = ConditionalMPS(6, 3, 3, rank=2, init_noise=1.0).double()
    with torch.no_grad():
        m.field.weight.normal_()
        m.field.bias.normal_()
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    x = all_states(6)
    c = torch.randn(1, 3, dtype=torch.float64).expand(64, -1)
    act = torch.tensor([active], dtype=torch.bool).expand(64, -1)
    ok = _consistent(x, groups, act, thresholds)
    free = m.log_prob(x, c)
    reference = free.masked_fill(~ok, -torch.inf)
    reference = reference - reference.logsumexp(0)
    got = m.log_prob(x, c, groups, act, thresholds)
    torch.testing.assert_close(got[ok], reference[ok], rtol=0, atol=1e-12)
    assert torch.isneginf(got[~ok]).all()
    act_draws = act[:1].expand(40_000, -1)
    draws = m.sample(c[:1].expand(40_000, -1), torch.Generator().manual_seed(1), groups, act_draws, thresholds)
    assert _consistent(draws, groups, act_draws, thresholds).all()
    assert total_variation(draws, reference) < 0.03


@pytest.mark.parametrize("mode", ["sequential", "tree", "transfer"])
def test_conditional_mps_per_context_thresholds_match_restricted_enumeration(mode):
    """Thresholds that differ between contexts (B, K), 0 included (an active block left free): every contraction
    equals the Born weights of each context restricted to its own consistent configurations and renormalized
    (enumerated independently per context), and sampling follows it."""
    torch.manual_seed(5)
    m = ConditionalMPS(6, 3, 3, rank=1, init_noise=1.0).double()
    with torch.no_grad():
        m.field.weight.normal_()
        m.field.bias.normal_()
    m.contraction = mode
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    cases = [([1, 0, 1], [0, 2, 1]), ([1, 1, 0], [2, 0, 1]), ([0, 0, 1], [2, 3, 0]), ([1, 1, 1], [0, 0, 0])]
    x = all_states(6)
    for ctx, (active, thresholds) in enumerate(cases):
        c = torch.randn(1, 3, dtype=torch.float64).expand(64, -1)
        act = torch.tensor([active], dtype=torch.bool).expand(64, -1)
        k = torch.tensor([thresholds]).expand(64, -1)
        ok = _consistent(x, groups, act, thresholds)
        m.contraction = "sequential"
        free = m.log_prob(x, c)
        m.contraction = mode
        reference = free.masked_fill(~ok, -torch.inf)
        reference = reference - reference.logsumexp(0)
        got = m.log_prob(x, c, groups, act, k)
        torch.testing.assert_close(got[ok], reference[ok], rtol=0, atol=1e-11)
        assert torch.isneginf(got[~ok]).all()
        if mode != "tree":  # sampling: sequential or transfer environments
            draws = m.sample(c[:1].expand(20_000, -1), torch.Generator().manual_seed(ctx), groups,
                             act[:1].expand(20_000, -1), k[:1].expand(20_000, -1))
            assert _consistent(draws, groups, act[:1].expand(20_000, -1), thresholds).all()
            assert total_variation(draws, reference) < 0.04
    # a batch mixing the cases at once equals the cases one by one
    mixed_act = torch.tensor([a for a, _ in cases], dtype=torch.bool)
    mixed_k = torch.tensor([t for _, t in cases])
    xs = torch.tensor([[1, 0, 0, 1, 1, 0], [1, 1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]])
    cs = torch.randn(4, 3, dtype=torch.float64)
    one_by_one = torch.cat([m.log_prob(xs[i:i + 1], cs[i:i + 1], groups, mixed_act[i:i + 1], mixed_k[i:i + 1])
                            for i in range(4)])
    torch.testing.assert_close(m.log_prob(xs, cs, groups, mixed_act, mixed_k), one_by_one, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="threshold 0 cannot be inactive"):
        m.log_prob(xs[:1], cs[:1], groups, torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match="per context"):
        m.log_prob(xs[:1], cs[:1], groups, mixed_act[:1], torch.tensor([[1, 4, 1]]))  # a block of 3 has no 4


def test_conditional_mps_count_constraint_three_states():
    """phys_dim 3: a block's count is of its nonzero sites, whatever their value (enumerated over 3^5 states)."""
    torch.manual_seed(3)
    m = ConditionalMPS(5, 2, 3, phys_dim=3, rank=1, init_noise=1.0).double()
    x = all_states(5, 3)
    c = torch.randn(1, 2, dtype=torch.float64).expand(x.shape[0], -1)
    groups, thresholds = torch.tensor([0, 0, 0, 1, 1]), [2, 1]
    act = torch.tensor([[1, 0]], dtype=torch.bool).expand(x.shape[0], -1)
    ok = _consistent(x, groups, act, thresholds)
    reference = m.log_prob(x, c).masked_fill(~ok, -torch.inf)
    got = m.log_prob(x, c, groups, act, thresholds)
    torch.testing.assert_close(got[ok], (reference - reference.logsumexp(0))[ok], rtol=0, atol=1e-12)


def test_conditional_mps_coarse_constraint_float32_and_bad_groups():
    torch.manual_seed(0)
    m = ConditionalMPS(40, 2, 4)
    groups = torch.arange(40) // 8
    x = torch.zeros(3, 40, dtype=torch.long)
    x[:, 0] = 1
    act = torch.tensor([[1, 0, 0, 0, 0]], dtype=torch.bool).expand(3, -1)
    lp = m.log_prob(x, torch.zeros(3, 2), groups, act)
    assert torch.isfinite(lp).all() and (lp <= 0).all()
    with pytest.raises(ValueError, match="contiguous blocks"):
        m.log_prob(x, torch.zeros(3, 2), torch.arange(40) % 5, act)
    with pytest.raises(ValueError, match="both groups"):
        m.log_prob(x, torch.zeros(3, 2), groups)
    with pytest.raises(ValueError, match="n_groups=5"):
        m.log_prob(x, torch.zeros(3, 2), groups, act[:, :4])
    with pytest.raises(ValueError, match="from 1 to its block's size"):
        m.log_prob(x, torch.zeros(3, 2), groups, act, [1, 1, 9, 1, 1])  # a block of 8 can never have 9
    with pytest.raises(ValueError, match="from 1 to its block's size"):
        m.log_prob(x, torch.zeros(3, 2), groups, act, [0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="thresholds need groups"):
        m.log_prob(x, torch.zeros(3, 2), thresholds=[1] * 5)


def test_conditional_mps_ignores_bf16_autocast():
    torch.manual_seed(0)
    m = ConditionalMPS(30, 4, 4)
    x = torch.bernoulli(torch.full((16, 30), 0.3)).long()
    c = torch.randn(16, 4)
    ref = m.log_prob(x, c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = m.log_prob(x, c)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)
    # sampling too: bf16 fields would shift the conditionals and so the draws of the same uniforms
    c = 4.0 * torch.randn(2000, 4)
    draws = m.sample(c, torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = m.sample(c, torch.Generator().manual_seed(1))
    assert torch.equal(under_autocast, draws)


# ----------------------------------------------------------------------------------------------------------- MERA
def _kron(*mats):
    out = torch.ones(1, 1, dtype=torch.float64)
    for m in mats:
        out = torch.kron(out, m.detach().contiguous())
    return out


def test_mera_state_matches_a_kronecker_product_reference():
    """Two layers on 8 sites (8 -> 4 -> 2): the reshaped contraction equals the state built from explicit
    Kronecker products of the layers' operators (identity on the chain's unpaired end sites)."""
    torch.manual_seed(0)
    mera = MERA(8, 3, top_sites=2, init_noise=1.0).double()
    assert mera.layer_dims == [(8, 2, 3), (4, 3, 3)] and mera.top_shape == (3, 3) and mera.bond_dims == [3, 3]
    assert mera.n_params == 3 * 16 + 4 * 4 * 3 + 1 * 81 + 2 * 9 * 3 + 9
    us, ws = mera.isometry_matrices()
    iso, dis = [list(w.detach()) for w in ws], [list(u.detach()) for u in us]
    eye2, eye3 = torch.eye(2, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    psi = mera.top.detach() / mera.top.detach().norm()
    psi = _kron(eye3, dis[1][0], eye3) @ (_kron(*iso[1]) @ psi)  # layer 2: 2 sites of dim 3 -> 4 sites
    psi = _kron(eye2, *dis[0], eye2) @ (_kron(*iso[0]) @ psi)  # layer 1: 4 sites -> 8 binary sites
    torch.testing.assert_close(mera.state().detach(), psi)
    for u in dis[0] + dis[1] + iso[0] + iso[1]:  # exact isometries: the state is normalized by construction
        torch.testing.assert_close(u.T @ u, torch.eye(u.shape[1], dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_sites, bond_dim", [(8, 3), (16, 4), (20, 4), (12, 2)])
def test_mera_starts_uniform_at_zero_noise(n_sites, bond_dim):
    mera = MERA(n_sites, bond_dim, init_noise=0.0).double()
    torch.testing.assert_close(mera.state() ** 2, torch.full((2**n_sites,), 2.0**-n_sites, dtype=torch.float64))


def test_mera_is_normalized_samples_exactly_and_has_gradients():
    torch.manual_seed(1)
    mera = MERA(8, 3, top_sites=2, init_noise=1.0).double()
    x = torch.tensor(list(itertools.product([0, 1], repeat=8)))
    log_p = mera.log_prob(x)  # every configuration maps to its own amplitude: the probabilities sum to 1
    torch.testing.assert_close(log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    draws = mera.sample(200_000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount((draws * 2 ** torch.arange(7, -1, -1)).sum(1), minlength=256).double() / 200_000
    # total variation; its sampling noise is at most ~0.5 * 256 * sqrt(2 / (pi * 256 * 200k)) = 0.013
    assert 0.5 * (freq - log_p.exp()).abs().sum() < 0.03
    small = MERA(6, 2, top_sites=3, init_noise=1.0).double()
    batch = torch.randint(0, 2, (5, 6))
    names = [name for name, _ in small.named_parameters()]

    def log_p_of(*values):
        return torch.func.functional_call(small, dict(zip(names, values)), (batch,))

    assert torch.autograd.gradcheck(log_p_of, tuple(p.detach().clone().requires_grad_(True)
                                                    for p in small.parameters()))


def test_mera_bad_input_and_size_limit():
    mera = MERA(8, 2)
    with pytest.raises(ValueError, match="values must lie"):
        mera.log_prob(torch.full((2, 8), 2))
    with pytest.raises(ValueError, match="sites"):
        mera.log_prob(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="bond_dim"):
        MERA(8, 0)
    with pytest.raises(ValueError, match="too large"):
        MERA(26, 2)
    with pytest.raises(ValueError, match="no coarse-graining layer"):
        MERA(23, 2)
    x = torch.randint(0, 2, (16, 8))
    reference = mera.log_prob(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # contracted in float32 all the same
        under_autocast = mera.log_prob(x)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference)
    assert mera.log_prob(torch.zeros(3, 8)).dtype == torch.float32


# -------------------------------------------- ConditionalMPS: tree (log-depth) and transfer-map contractions
def _counts_active(x, groups, thresholds):
    n_groups = int(groups[-1]) + 1
    counts = torch.zeros(x.shape[0], n_groups, dtype=torch.long).scatter_add_(1, groups.expand_as(x), (x > 0).long())
    return counts >= torch.tensor(thresholds)


def _random_conditional(n, rank, phys_dim=2, bias=0.0, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    m = ConditionalMPS(n, 3, 3, phys_dim=phys_dim, rank=rank, init_noise=1.0).to(dtype)
    with torch.no_grad():
        m.field.weight.normal_()
        m.field.bias.normal_()
        m.field.bias.view(n, phys_dim)[:, 1:] += bias
    return m


def _both(m, mode, *args, **kwargs):
    m.contraction = "sequential"
    ref = m.log_prob(*args, **kwargs)
    m.contraction = mode
    return ref, m.log_prob(*args, **kwargs)


# blocks of sizes 1 .. 13 (several size buckets, padded with identity sites) and thresholds 1 .. 7
_SIZES, _THRESHOLDS = [3, 1, 5, 8, 2, 13, 4], [2, 1, 3, 1, 2, 7, 4]


@pytest.mark.parametrize("mode", ["tree", "transfer"])
@pytest.mark.parametrize("rank,phys_dim", [(0, 2), (2, 2), (1, 3)])
@pytest.mark.parametrize("constraint", ["none", "or", "counts"])
def test_conditional_mps_fast_contractions_match_sequential_reference_in_float64(mode, rank, phys_dim, constraint):
    """The log-depth tree and the transfer-map chain equal the sequential reference to 1e-10 relative in float64
    (observed ~1e-15: all are exact contractions, only rounding differs), without a constraint, with OR pooling and
    with count thresholds of blocks of different sizes; configurations both consistent (drawn) and not (-inf); the
    gradients too (the transfer chain's are written by hand)."""
    n = sum(_SIZES)
    m = _random_conditional(n, rank, phys_dim)
    c = torch.randn(9, 3, dtype=torch.float64)
    x = m.sample(c)
    kwargs = {}
    if constraint != "none":
        groups = torch.repeat_interleave(torch.arange(len(_SIZES)), torch.tensor(_SIZES))
        thresholds = [1] * len(_SIZES) if constraint == "or" else _THRESHOLDS
        kwargs = dict(groups=groups, active=_counts_active(x, groups, thresholds), thresholds=thresholds)
    x[-2:] = torch.randint(0, phys_dim, (2, n))  # (mostly) inconsistent with the coarse state: -inf
    ref, tree = _both(m, mode, x, c, **kwargs)
    assert ref.dtype == tree.dtype == torch.float64
    finite = torch.isfinite(ref)
    assert finite[:7].all() and torch.equal(finite, torch.isfinite(tree))
    torch.testing.assert_close(tree[finite], ref[finite], rtol=1e-10, atol=0)
    # gradients too (the same function: they agree to rounding)
    grads = []
    for contraction in ("sequential", mode):
        m.zero_grad()
        m.contraction = contraction
        rows = {k: (v[finite] if k == "active" else v) for k, v in kwargs.items()}
        m.log_prob(x[finite], c[finite], **rows).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode", ["tree", "transfer"])
def test_conditional_mps_fast_contractions_gradcheck_float64(mode):
    """torch.autograd.gradcheck of the tree and transfer contractions (float64) w.r.t. the cores, boundaries,
    corrections, field and gate weights and the context, with count thresholds (the detached log-scales are
    constants of the function): fast mode (random projections) over all of them, the full Jacobian over the smaller
    ones."""
    sizes, thresholds = [2, 1, 3], [2, 1, 2]
    m = _random_conditional(sum(sizes), rank=1)
    m.contraction = mode
    groups = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    c = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    x = m.sample(c.detach(), groups=groups, active=torch.tensor([[1, 0, 1]] * 3).bool(), thresholds=thresholds)
    names = ["core", "left", "right", "modulation", "field.weight", "gate.weight"]
    params = {k: v.detach().clone().requires_grad_() for k, v in m.named_parameters() if k in names}

    def check(keys, **kwargs):
        def f(cc, *values):
            values = dict(zip(keys, values))
            constraint = dict(groups=groups, active=torch.tensor([[1, 0, 1]] * 3), thresholds=thresholds)
            out = torch.func.functional_call(m, values, (x, cc), constraint)
            return out, torch.func.functional_call(m, values, (x, cc))
        return torch.autograd.gradcheck(f, (c, *[params[k] for k in keys]), **kwargs)

    assert check(names, fast_mode=True)
    assert check(["left", "right", "field.weight", "gate.weight"])


@pytest.mark.parametrize("n", [500, 2000])
def test_conditional_mps_tree_float32_long_chains(n):
    """float32 tree contraction vs the float64 sequential reference on 500 and 2,000 sites: relative error of log p
    below 2e-5. Measured (random and strong-field models, OR and count-3 blocks): <= 6e-7 relative, <= 1e-7 per
    site; 5e-6 when a rare active block (8 units of 10 at the field bound) makes log psi and log Z (~ -5,000 each)
    cancel to ~ -460 — the case where a float32 sequential loop is wrong by a factor ~70 (the count slots'
    separate log-scales avoid it). 2e-5 leaves a margin of ~4 over the worst observed, and stays far under the
    1e-4 per site a training objective could notice; everything stays finite (per-product log-scaling)."""
    torch.manual_seed(3)
    for bias, k in [(0.0, 1), (-30.0, 8)]:
        m, ref64, x, c, constraint = _long_chain_case(n, 1, bias, k)
        m.contraction = "tree"
        assert m._tree_dtype == torch.float32
        for kw in ({}, constraint):
            fast = m.log_prob(x, c, **kw)
            assert fast.dtype == torch.float32 and torch.isfinite(fast).all()
            torch.testing.assert_close(fast.double(), ref64.log_prob(x, c.double(), **kw), rtol=2e-5, atol=0)


def _long_chain_case(n, rank, bias, k, batch=6):
    """A float32 model of ``n`` sites (random fields, ``bias`` added to the nonzero value's field), its float64
    sequential reference, one draw per context (blocks of 10 made active through their first ``k`` units when
    ``bias`` is set) and the constraint of blocks of 10 with threshold ``k``."""
    m = ConditionalMPS(n, 8, 4, rank=rank, init_noise=0.3)
    with torch.no_grad():
        m.field.weight.normal_()
        m.field.bias.normal_()
        m.field.bias.view(n, 2)[:, 1] += bias
    c = torch.randn(batch, 8)
    x = m.sample(c)
    if bias:
        x.view(batch, -1, 10)[:, :, :k] = 1  # every block active through improbable units
    ref64 = ConditionalMPS(n, 8, 4, rank=rank)
    ref64.load_state_dict(m.state_dict())
    ref64 = ref64.double()
    ref64.contraction = "sequential"
    groups, thresholds = torch.arange(n) // 10, [k] * (n // 10)
    return m, ref64, x, c, dict(groups=groups, active=_counts_active(x, groups, thresholds), thresholds=thresholds)


@pytest.mark.parametrize("n", [500, 2000])
def test_conditional_mps_transfer_float32_long_chains(n):
    """float32 transfer chains (the CPU default for float32 parameters without count thresholds above 1) vs the
    float64 sequential reference on 500 and 2,000 sites, rank 0 and 1, without a constraint and with OR blocks, on
    random models and on blocks made active by improbable units (field bias -30, clamped at -12). Relative error of
    log p on the random models below 2e-6: measured <= 5.8e-7 (every state is trace-normalized at every site, so the
    error is the float32 rounding of ~n site steps); 2e-6 leaves a margin of ~3. With improbable units firing, log
    |psi|^2 and log Z (~ -5,000 each) cancel to ~ -600 and their float32 rounding shows relative to the difference:
    measured 1.5e-5 at rank 1 without a constraint (the tree: 4.6e-6), so 3e-5 there, still ~2e-5 nats per site.
    With count thresholds above 1 the default switches to float64 (then the gap is the float32 parameters' fields)."""
    torch.manual_seed(3)
    for rank in (0, 1):
        for bias, k in [(0.0, 1), (-30.0, 1), (-30.0, 8)]:
            m, ref64, x, c, constraint = _long_chain_case(n, rank, bias, k)
            m.contraction = "transfer"
            for kw in ([{}, constraint] if k == 1 else [constraint]):
                fast = m.log_prob(x, c, **kw)
                assert torch.isfinite(fast).all()
                assert (m._transfer_dtype(kw.get("thresholds")) == torch.float32) == (k == 1)
                ref = ref64.log_prob(x, c.double(), **kw).detach()
                torch.testing.assert_close(fast.double(), ref, rtol=2e-6 if bias == 0 else 3e-5, atol=0)


def test_transfer_log_norm_against_dense_products():
    """``transfer_log_norm`` against the dense product of the weighted maps (float64), for Born-norm states
    (trace-normalized) and for signed amplitudes (``trace=False``: log |s^T T_1 ... T_n e|, chains whose value changes
    sign between contexts)."""
    from dgrn.tn.contract import transfer_log_norm

    torch.manual_seed(0)
    n, batch, dim = 9, 5, 3
    a = torch.randn(n, 2, dim, dim, dtype=torch.float64)
    w = torch.rand(batch, n, 2, dtype=torch.float64)
    s, e = torch.randn(dim, dtype=torch.float64), torch.randn(dim, dtype=torch.float64)
    dense = torch.einsum("bij,ijpq->bipq", w, a)
    amp = s.expand(batch, -1)
    for i in range(n):
        amp = torch.einsum("bp,bpq->bq", amp, dense[:, i])
    value = amp @ e
    assert (value > 0).any() and (value < 0).any()
    torch.testing.assert_close(transfer_log_norm(a, w, s, e, trace=False), value.abs().log(), rtol=1e-12, atol=0)
    # the Born norm of the same chain: maps A (x) A on the flattened environment
    born = torch.einsum("isxy,ispq->isxpyq", a, a).reshape(n, 2, dim * dim, dim * dim)
    env = torch.kron(s, s).expand(batch, -1)
    for i in range(n):
        env = torch.einsum("bp,bpq->bq", env, torch.einsum("bj,jpq->bpq", w[:, i], born[i]))
    norm = env @ torch.kron(e, e)
    torch.testing.assert_close(transfer_log_norm(born, w, torch.kron(s, s), torch.kron(e, e)), norm.log(),
                               rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="groups need"):
        transfer_log_norm(born, w, torch.kron(s, s), torch.kron(e, e), groups=[0] * n)
    with pytest.raises(ValueError, match="nondecreasing"):
        transfer_log_norm(born, w, torch.kron(s, s), torch.kron(e, e), increments=[1, 0])


@pytest.mark.parametrize("sizes,thresholds", [([9], None), ([3, 1, 4, 2], [2, 1, 3, 1]), ([2, 5, 1], [1, 1, 1])])
def test_pair_sites_keeps_the_norm_and_its_gradient(sizes, thresholds):
    """Merging neighbouring sites (identity sites padding odd blocks and chains, increments added) leaves the
    constrained norm and its gradient unchanged to rounding, once and twice over (float64)."""
    from dgrn.tn.contract import pair_sites, transfer_log_norm

    torch.manual_seed(1)
    n, batch, dim = sum(sizes), 6, 2
    a = torch.randn(n, 2, dim, dim, dtype=torch.float64)
    maps = torch.einsum("isxy,ispq->isxpyq", a, a).reshape(n, 2, dim * dim, dim * dim).requires_grad_()
    weights = torch.rand(batch, n, 2, dtype=torch.float64, requires_grad=True)
    start = end = torch.kron(torch.ones(dim, dtype=torch.float64), torch.ones(dim, dtype=torch.float64))
    kwargs, groups = {}, None
    if thresholds is not None:
        groups = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).tolist()
        active = torch.rand(batch, len(sizes)) < 0.5
        active[:, [k == s for k, s in zip(thresholds, sizes)]] = False  # keep some blocks reachable both ways
        kwargs = dict(thresholds=thresholds, active=active)
    ref = transfer_log_norm(maps, weights, start, end, increments=[0, 1], groups=groups, **kwargs)
    ref_grads = torch.autograd.grad(ref.sum(), (maps, weights))
    m, w, inc, g = maps, weights, [0, 1], groups
    for _ in range(2):
        m, w, inc, g = pair_sites(m, w, inc, g)
        assert inc == sorted(inc) and max(inc) == len(inc).bit_length() - 1
        out = transfer_log_norm(m, w, start, end, increments=inc, groups=g, **kwargs)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=0)
        for got, want in zip(torch.autograd.grad(out.sum(), (maps, weights), retain_graph=True), ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sizes,thresholds,pairs", [([7], None, 0), ([3, 1, 4, 2], [2, 1, 3, 1], 0),
                                                    ([4, 5, 3], [1, 2, 1], 1), ([6, 2], [1, 1], 2)])
@pytest.mark.parametrize("trace", [True, False])
def test_transfer_chain_compiled_equals_pytorch(sizes, thresholds, pairs, trace):
    """The compiled backward products of ``transfer_log_norm`` (the CPU default) against the batched PyTorch ones,
    on count-constrained chains with merged sites (increments up to 4, several maps per increment), Born norms and
    signed amplitudes: in float64 the same gradients to rounding (1e-12); in float32 both within 1e-4 of the float64
    ones, relative to the largest."""
    from dgrn.tn.contract import pair_sites, transfer_log_norm

    torch.manual_seed(2)
    n, batch, dim = sum(sizes), 5, 2
    a = torch.randn(n, 2, dim, dim, dtype=torch.float64)
    maps = torch.einsum("isxy,ispq->isxpyq", a, a).reshape(n, 2, dim * dim, dim * dim) if trace else a
    weights = torch.rand(batch, n, 2, dtype=torch.float64)
    u, v = torch.randn(dim, dtype=torch.float64), torch.randn(dim, dtype=torch.float64)
    start, end = (torch.kron(u, u), torch.kron(v, v)) if trace else (u, v)
    groups, inc, kwargs = None, [0, 1], {}
    if thresholds is not None:
        groups = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).tolist()
        kwargs = dict(thresholds=thresholds, active=torch.rand(batch, len(sizes)) < 0.5)
    for _ in range(pairs):
        maps, weights, inc, groups = pair_sites(maps, weights, inc, groups)
    upstream = torch.rand(batch, dtype=torch.float64)

    def value_and_grads(dtype, compiled):
        inputs = [t.to(dtype).requires_grad_() for t in (maps, weights, start, end)]
        out = transfer_log_norm(*inputs, increments=inc, groups=groups, trace=trace, compiled=compiled, **kwargs)
        return [out.detach(), *torch.autograd.grad(out, inputs, upstream.to(dtype))]

    ref = value_and_grads(torch.float64, False)
    assert all(torch.isfinite(r).all() for r in ref)
    for got, want in zip(value_and_grads(torch.float64, True), ref):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12 * float(want.abs().max()))
    for compiled in (True, False):
        for got, want in zip(value_and_grads(torch.float32, compiled), ref):
            assert got.dtype == torch.float32
            torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4 * float(want.abs().max()))
    # a graph of the gradient (double backward) needs the PyTorch pass
    inputs = [t.requires_grad_() for t in (maps.clone(), weights.clone(), start.clone(), end.clone())]
    out = transfer_log_norm(*inputs, increments=inc, groups=groups, trace=trace, compiled=True, **kwargs)
    with pytest.raises(ValueError, match="double backward"):
        torch.autograd.grad(out.sum(), inputs, create_graph=True)


def test_conditional_mps_contraction_choice_and_tree_helpers():
    from dgrn.tn.contract import count_pair_map, normalize_slots, tree_product

    m = ConditionalMPS(4, 2, 2)
    assert m._contraction_mode() == "transfer"  # auto on CPU: (rank + 1)^2 * bond_dim = 8
    assert ConditionalMPS(4, 2, 4, rank=1)._contraction_mode() == "sequential"  # 16: the GEMMs would cost more
    assert m._transfer_dtype(None) == torch.float32 and m._transfer_dtype([1, 1]) == torch.float32
    assert m._transfer_dtype([1, 2]) == torch.float64
    m.contraction = "tree"
    assert m._contraction_mode() == "tree" and m._tree_dtype == torch.float32
    m.contract_dtype = torch.float64
    assert m._tree_dtype == torch.float64 and m._transfer_dtype(None) == torch.float64
    x, c = torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 2)
    for mode in ("tree", "transfer", "sequential"):
        m.contraction, m.contract_dtype = mode, torch.float16
        with pytest.raises(ValueError, match="float32 or torch.float64"):
            m.log_prob(x, c)
    m.contract_dtype = None
    m.contraction = "fast"
    with pytest.raises(ValueError, match="contraction"):
        m.log_prob(x, c)
    # plain products of every length (odd counts padded with the identity), scales accounted for
    torch.manual_seed(0)
    for n in range(1, 10):
        mats = torch.randn(2, n, 3, 3, dtype=torch.float64) * 10.0 ** torch.randint(-30, 30, (2, n, 1, 1))
        prod, scale = tree_product(*normalize_slots(mats.unsqueeze(2), torch.zeros(2, n, 1, dtype=torch.float64)))
        ref = mats[:, 0]
        for i in range(1, n):
            ref = ref @ mats[:, i]
        torch.testing.assert_close(prod[:, 0] * scale.exp()[:, :, None], ref, rtol=1e-12, atol=0)
    # (a, b) -> min(a + b, k), pairs beyond k nowhere
    pair_map = count_pair_map(torch.tensor([1, 2]), 3)
    assert pair_map.shape == (2, 9, 3) and pair_map[0, 4].tolist() == [0, 1, 0] and pair_map[0, 2].sum() == 0
    assert pair_map[1, 4].tolist() == [0, 0, 1] and pair_map[1, 3].tolist() == [0, 1, 0]


def test_segmented_mps_is_a_normalized_product_of_its_segments():
    """Enumerate the 2^5 configurations of segments of 2 and 3 sites under a count constraint (blocks [0, 0 | 1, 2,
    2], block 2 needing 2 nonzero sites): each segment's factor sums to 1 over its consistent configurations and the
    product sums to 1 over the joint ones, with one context per segment; draws follow the product (total variation
    at 20k draws); a block across two segments is refused."""
    torch.manual_seed(0)
    m = SegmentedMPS([2, 3], context_dim=3, bond_dim=3, rank=1).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5 * torch.randn_like(p))
    groups, thresholds = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([1, 1, 2])
    active = torch.tensor([[True, False, True]])
    c = torch.randn(1, 2, 3, dtype=torch.float64)
    x = torch.tensor(list(itertools.product([0, 1], repeat=5)))
    lp = m.log_prob(x, c.expand(32, -1, -1), groups=groups, active=active.expand(32, -1), thresholds=thresholds).detach()
    assert lp.shape == (32, 2)
    consistent = (x[:, :2].sum(1) >= 1) & (x[:, 2] == 0) & (x[:, 3:].sum(1) >= 2)
    assert torch.isinf(lp.sum(1)[~consistent]).all()
    p = lp.sum(1).exp()
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64))
    first = {tuple(r[:2].tolist()): float(v) for r, v in zip(x, lp[:, 0].exp())}  # a segment's factor: its own sites
    assert all(abs(first[tuple(r[:2].tolist())] - float(v)) < 1e-12 for r, v in zip(x, lp[:, 0].exp()))
    torch.testing.assert_close(torch.tensor(sum(first.values()), dtype=torch.float64),
                               torch.tensor(1.0, dtype=torch.float64))
    draws = m.sample(c.expand(20_000, -1, -1), torch.Generator().manual_seed(1), groups=groups,
                     active=active.expand(20_000, -1), thresholds=thresholds)
    keys = (draws * 2 ** torch.arange(4, -1, -1)).sum(1)
    freq = torch.bincount(keys, minlength=32).double() / 20_000
    assert 0.5 * (freq - p).abs().sum() < 0.03
    with pytest.raises(ValueError, match="straddles two segments"):
        m.log_prob(x, c[:, 0].expand(32, -1), groups=torch.tensor([0, 1, 1, 2, 2]), active=active.expand(32, -1))
    with pytest.raises(ValueError, match="context must have shape"):
        m.log_prob(x, torch.randn(32, 3, 3))
    with pytest.raises(ValueError, match="sizes"):
        SegmentedMPS([2, 0], 3, 2)
