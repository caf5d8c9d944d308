"""dgrn.graph.rowwise_lbfgs: one L-BFGS per row, against closed forms, scipy and each row run alone."""
import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from dgrn.graph import rowwise_lbfgs


def quadratics(rows=12, dim=8, seed=0):
    """f_r(x) = 1/2 (x - c_r)^T A_r (x - c_r), condition numbers of A_r from 1 to 1e4: minimizer c_r."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(rows, dim, dim, generator=gen, dtype=torch.float64))
    cond = torch.logspace(0, 4, rows, dtype=torch.float64)
    eig = cond[:, None] ** torch.linspace(0, 1, dim, dtype=torch.float64)
    a = q @ torch.diag_embed(eig) @ q.transpose(1, 2)
    c = torch.randn(rows, dim, generator=gen, dtype=torch.float64)

    def evaluate(x):
        r = x - c
        ar = (a @ r[..., None])[..., 0]
        return 0.5 * (r * ar).sum(1), ar
    return evaluate, c


def log_cosh_problems(rows=10, dim=6, seed=1):
    """f_r(x) = sum_k log cosh(a_rk (x_k - c_rk)) + mu/2 |x|^2 + (x_0 x_1)^2 / 2: steep, non-quadratic, coupled
    coordinates, so a unit step from the start overshoots and the line search has to backtrack."""
    gen = torch.Generator().manual_seed(seed)
    scale = 10 ** (2 * torch.rand(rows, dim, generator=gen, dtype=torch.float64))
    c = 3 * torch.randn(rows, dim, generator=gen, dtype=torch.float64)
    mu = 0.1

    def value(x):
        z = scale * (x - c)
        return (z.abs() + torch.log1p(torch.exp(-2 * z.abs())) - np.log(2)).sum(-1) + 0.5 * mu * x.square().sum(-1) \
            + 0.5 * (x[..., 0] * x[..., 1]).square()

    def evaluate(x):
        x = x.detach().requires_grad_()
        f = value(x)
        (g,) = torch.autograd.grad(f.sum(), x)
        return f.detach(), g
    return evaluate, c


def test_independent_quadratics_reach_their_minimizers():
    evaluate, c = quadratics()
    out = rowwise_lbfgs(evaluate, torch.zeros_like(c), max_evals=500, tolerance_grad=1e-10, tolerance_change=1e-14)
    assert out["rows_done"] and not out["budget_used"]
    torch.testing.assert_close(out["x"], c, rtol=0, atol=1e-6)


def test_backtracking_rows_match_scipy_per_row():
    """Every row against scipy's L-BFGS-B run on that row alone (the slow, obvious reference); on these problems 134 of the
    ~750 trial points land above their row's best value so far, so the per-row backtracking is exercised."""
    evaluate, c = log_cosh_problems()
    out = rowwise_lbfgs(evaluate, torch.zeros_like(c), max_evals=2000, tolerance_grad=1e-9, tolerance_change=1e-13)
    assert out["rows_done"]
    for r in range(c.shape[0]):
        def fun(v, r=r):
            batch = torch.zeros_like(c)
            batch[r] = torch.from_numpy(v)
            f, g = evaluate(batch)
            return float(f[r]), g[r].numpy()
        ref = minimize(fun, np.zeros(c.shape[1]), jac=True, method="L-BFGS-B",
                       options=dict(gtol=1e-11, ftol=1e-15, maxiter=10000))
        np.testing.assert_allclose(out["x"][r].numpy(), ref.x, atol=1e-6)
        assert float(out["value"][r]) == pytest.approx(ref.fun, abs=1e-10)


def test_rows_do_not_interact():
    """A row's path depends on nothing but its own problem: run alone it ends at the same point."""
    evaluate, c = log_cosh_problems()
    out = rowwise_lbfgs(evaluate, torch.zeros_like(c), max_evals=300)
    for r in (0, 4, 9):
        def alone(x, r=r):
            full = torch.zeros_like(c)
            full[r] = x[0]
            f, g = evaluate(full)
            return f[r:r + 1], g[r:r + 1]
        single = rowwise_lbfgs(alone, torch.zeros_like(c[r:r + 1]), max_evals=300)
        torch.testing.assert_close(single["x"][0], out["x"][r], rtol=0, atol=1e-12)


def test_stop_budget_and_bad_input():
    evaluate, c = quadratics()
    calls = []
    out = rowwise_lbfgs(evaluate, torch.zeros_like(c), max_evals=500,
                        stop=lambda x, g: calls.append(1) or float(g.norm()) < 1e-2)
    assert out["converged"] and not out["budget_used"] and float(out["grad"].norm()) < 1e-2
    assert out["evaluations"] == len(calls)  # checked at the start and after every pass
    short = rowwise_lbfgs(evaluate, torch.zeros_like(c), max_evals=3)
    assert short["evaluations"] == 3 and short["budget_used"] and not short["converged"]
    with pytest.raises(ValueError, match="max_evals"):
        rowwise_lbfgs(evaluate, torch.zeros_like(c), max_evals=0)
    with pytest.raises(FloatingPointError, match="starting point"):
        rowwise_lbfgs(lambda x: (torch.full((x.shape[0],), float("nan")), x), torch.zeros(3, 2), max_evals=5)
