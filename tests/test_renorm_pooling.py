"""dgrn.nn.DiffusionRenormPooling: agreement with dgrn.renorm, batching, gradients, edge cases, devices."""
from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from dgrn.nn import DiffusionRenormPooling
from dgrn.renorm import coarse_grain, spectral_curves
from dgrn.renorm.synthetic import planted_partition


def two_graphs(dtype=torch.float64):
    """A 6-node graph (two weighted triangles, one bridge) and a 4-node path with a zero-weight edge + isolated node."""
    ei = torch.tensor([[0, 1, 2, 0, 3, 4, 5, 3, 2, 6, 7], [1, 2, 0, 2, 4, 5, 3, 5, 3, 7, 8]])
    ew = torch.tensor([1.0, 1.5, 0.8, 1.2, 1.1, 0.9, 1.3, 1.0, 0.2, 2.0, 0.0], dtype=dtype)
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    batch = torch.tensor([0] * 6 + [1] * 4)
    return x, ei, ew, batch


def dense_of(ei, ew, n):
    a = torch.zeros(n, n, dtype=ew.dtype)
    a.index_put_((ei[0], ei[1]), ew, accumulate=True)
    return a


def test_hard_mode_matches_renorm_coarse_grain_and_curves():
    a, _ = planted_partition(60, 3, 10, 1, seed=0)
    adj = torch.tensor(a.toarray())
    tau = 0.8
    layer = DiffusionRenormPooling(tau=tau).double()
    layer.reset_parameters()  # log(tau) again, now in float64
    x = torch.randn(1, 60, 2, dtype=torch.float64)
    out = layer(x, adj=adj[None])
    labels, meta = coarse_grain(adj, tau)
    assert torch.equal(out.assignment[0], labels)
    torch.testing.assert_close(out.adj[0], meta)
    curves = spectral_curves(adj, [tau])
    torch.testing.assert_close(out.entropy[0], curves["entropy"][0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.specific_heat[0], curves["specific_heat"][0], rtol=1e-9, atol=1e-12)
    # hard pooling sums features per supernode
    ref = torch.zeros(out.num_supernodes.item(), 2, dtype=torch.float64).index_add_(0, labels, x[0])
    torch.testing.assert_close(out.x[0], ref)


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_graphs_in_one_batch_do_not_leak(mode):
    x, ei, ew, batch = two_graphs()
    layer = DiffusionRenormPooling(tau=1.5, mode=mode).double()
    both = layer(x, ei, ew, batch)
    first = ei[0] < 6
    alone0 = layer(x[:6], ei[:, first], ew[first])
    alone1 = layer(x[6:], ei[:, ~first] - 6, ew[~first])
    k0 = alone0.x.shape[0]
    torch.testing.assert_close(both.x[:k0], alone0.x)
    torch.testing.assert_close(both.x[k0:], alone1.x)
    torch.testing.assert_close(both.entropy, torch.cat([alone0.entropy, alone1.entropy]))
    torch.testing.assert_close(both.specific_heat, torch.cat([alone0.specific_heat, alone1.specific_heat]))
    assert both.batch.tolist() == [0] * k0 + [1] * alone1.x.shape[0]


def test_sparse_and_dense_inputs_agree():
    x, ei, ew, batch = two_graphs()
    layer = DiffusionRenormPooling(tau=1.5, mode="soft").double()
    sparse = layer(x, ei, ew, batch)
    adj = torch.zeros(2, 6, 6, dtype=torch.float64)
    adj[0] = dense_of(ei[:, :9], ew[:9], 6)
    adj[1, :4, :4] = dense_of(ei[:, 9:] - 6, ew[9:], 4)
    xd = torch.zeros(2, 6, 3, dtype=torch.float64)
    xd[0], xd[1, :4] = x[:6], x[6:]
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    dense = layer(xd, adj=adj, mask=mask)
    torch.testing.assert_close(dense.x[dense.coarse_mask], sparse.x)
    torch.testing.assert_close(dense.entropy, sparse.entropy)
    assert (dense.assignment[1, 4:] == -1).all()


def test_soft_assignment_rows_sum_to_one_and_unpool():
    x, ei, ew, batch = two_graphs()
    for mode in ("hard", "soft"):
        layer = DiffusionRenormPooling(tau=1.5, mode=mode).double()
        out = layer(x, ei, ew, batch)
        rows = out.soft_assignment.sum(-1)[out.fine_mask]
        torch.testing.assert_close(rows, torch.ones_like(rows))
        fine = layer.unpool(out.x, out)
        assert fine.shape == x.shape
        if mode == "hard":
            torch.testing.assert_close(fine, out.x[out.assignment])


def test_gradcheck_soft_mode_float64():
    x, ei, ew, batch = two_graphs()
    ew = ew.clone()
    ew[-1] = 0.4  # gradcheck perturbs weights by 1e-6; a zero weight would turn negative

    def run(xx, w, log_tau):
        layer = DiffusionRenormPooling(mode="soft", learn_tau=False).double()
        layer.log_tau = log_tau
        out = layer(xx, ei, w, batch)
        return out.x, out.edge_weight, out.soft_assignment, out.entropy, out.specific_heat

    log_tau = torch.tensor(math.log(1.5), dtype=torch.float64, requires_grad=True)
    assert gradcheck(run, (x.clone().requires_grad_(), ew.requires_grad_(), log_tau))


def test_learnable_tau_gets_gradient_and_reset():
    x, ei, ew, batch = two_graphs(torch.float32)
    layer = DiffusionRenormPooling(tau=2.0, mode="soft")
    out = layer(x.float(), ei, ew.float(), batch)
    (out.x.square().sum() + out.specific_heat.sum()).backward()
    assert layer.log_tau.grad is not None and torch.isfinite(layer.log_tau.grad)
    with torch.no_grad():
        layer.log_tau.add_(1.0)
    layer.reset_parameters()
    assert layer.log_tau.item() == pytest.approx(math.log(2.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_nan_with_isolated_nodes_zero_weights_and_single_node(dtype):
    layer = DiffusionRenormPooling(tau=1.0, mode="soft").to(dtype)
    x = torch.randn(4, 2, dtype=dtype)
    ei = torch.tensor([[0, 1], [1, 2]])
    out = layer(x, ei, torch.tensor([0.0, 0.0], dtype=dtype), torch.tensor([0, 0, 0, 1]))  # zero edges; 1-node graph
    for value in (out.x, out.soft_assignment, out.entropy, out.specific_heat):
        assert torch.isfinite(value).all()
    assert out.num_supernodes.tolist() == [3, 1] and out.entropy[1] == 0
    (out.x.sum() + out.entropy.sum()).backward()
    assert torch.isfinite(layer.log_tau.grad)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="tau"):
        DiffusionRenormPooling(tau=0.0)
    with pytest.raises(ValueError, match="valid"):
        DiffusionRenormPooling(mode="fuzzy")
    layer = DiffusionRenormPooling()
    with pytest.raises(ValueError, match="negative"):
        layer(torch.randn(2, 1), torch.tensor([[0], [1]]), torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="either"):
        layer(torch.randn(2, 1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, ei, ew, batch = two_graphs(torch.float32)
    layer = DiffusionRenormPooling(tau=1.5, mode="soft")
    cpu = layer(x.float(), ei, ew.float(), batch)
    gpu = layer.cuda()(x.float().cuda(), ei.cuda(), ew.float().cuda(), batch.cuda())
    torch.testing.assert_close(gpu.x.cpu(), cpu.x, rtol=1e-4, atol=1e-5)
    assert torch.equal(gpu.assignment.cpu(), cpu.assignment)
