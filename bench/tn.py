"""Tensor-network benchmark: Born machines against exact Ising references, compression, speed, conditional decoder.

    python bench/tn.py [--sections chain longrange lattice speed conditional complex] [--threads N] [--seeds S ...]

Every exact reference is computed in the same run (dgrn.sim.ising: closed forms, enumeration, transfer matrix), and
every baseline too (the exact model's NLL on the same test set; the C(r) error of 20,000 exact samples; tensorkrowch's
MPS on the same input; a factorized Bernoulli decoder with the same context). NLLs are in nats per spin on held-out
exact samples; ``NLL - S`` estimates KL(p || q) per spin; a model's C(r) is exact (pair marginals). The ``complex``
section (not in the default list) trains real and complex MPS and TTN at equal counts of real parameters on the
lattice and long-range cases. Writes ``bench/results/tn.json`` (``--out``).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dgrn.data import atomic_write  # noqa: E402
from dgrn.sim.ising import (CRITICAL_BETA, chain_couplings, correlation_by_distance, ising_enumerate,  # noqa: E402
                            ising_sample_exact, ising_transfer, ising_transfer_sample, square_lattice_couplings)
from dgrn.tn import MERA, MPS, TTN, ConditionalMPS, balanced_tree, lattice_tree  # noqa: E402
from dgrn.tn.readouts import compression_report, pair_marginals, truncation_curve  # noqa: E402

N_TRAIN, N_TEST, N_CORR = 20_000, 10_000, 20_000
N_VAL = 2_000  # the last 2,000 training samples choose when to stop sweeping


def per_spin_nll(model, x) -> float:
    with torch.no_grad():
        return float(-model.log_prob(x).double().mean()) / x.shape[1]


def fit_adam(model, x, epochs: int, lr: float, batch: int = 500, seed: int = 0):
    """Adam with a cosine schedule on minibatches of the NLL."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for k in range(0, len(x), batch):
            opt.zero_grad()
            loss = -model.log_prob(x[perm[k:k + batch]]).mean()
            loss.backward()
            opt.step()
            sched.step()
    return model


def early_stopped(model, val, step, rounds: int):
    """Call ``step()`` (one round of training of ``model``) ``rounds`` times; return a copy of the state with the best
    NLL on the validation samples (the initial state included)."""
    best, best_val = copy.deepcopy(model), per_spin_nll(model, val)
    for _ in range(rounds):
        step()
        score = per_spin_nll(model, val)
        if score < best_val:
            best, best_val = copy.deepcopy(model), score
    return best


def fit_lbfgs_early_stop(model, fit, val, chunks: int, iters: int = 20):
    """Full-batch L-BFGS (strong Wolfe line search) on the NLL of ``fit``, ``chunks`` rounds of ``iters`` iterations,
    early-stopped on the validation samples."""
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=iters, history_size=50,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = -model.log_prob(fit).mean()
        loss.backward()
        return loss

    return early_stopped(model, val, lambda: opt.step(closure), chunks)


def fit_sweeps(n: int, x, bond: int, grow: int, restarts: int, seed: int = 0):
    """Two-site sweeps (Han et al.): grow bonds to ``grow`` at tolerance 1e-4, truncate to ``bond``, polish; keep the
    restart with the lowest *training* NLL."""
    best = None
    for r in range(restarts):
        torch.manual_seed(seed + r)
        m = MPS(n, 1)
        for _ in range(2):
            m.sweep(x, tol=1e-4, max_bond=grow)
        m.truncate(0.0, max_bond=bond)
        out = m.sweep(x, tol=1e-8, max_bond=bond)
        if best is None or out["nll"] < best[0]:
            best = (out["nll"], m)
    return best[1]


def fit_sweeps_early_stop(model, fit, val, max_sweeps: int, **kwargs):
    """Sweeps at fixed bond dimension, early-stopped on the validation samples."""
    return early_stopped(model, val, lambda: model.sweep(fit, **kwargs), max_sweeps)


def corr_curve(samples, dist):
    s = samples.double() * 2 - 1
    return correlation_by_distance(s.T @ s / len(s), dist)[1]


def corr_error(c_model, c_exact) -> dict:
    diff = (c_model - c_exact).abs()
    return {"max": float(diff.max()), "mean": float(diff.mean())}


def equal_param_mps_bond(n: int, target: int) -> int:
    """Largest MPS bond dimension whose parameter count does not exceed ``target``."""
    bond = 1
    while MPS(n, bond + 1).n_params <= target:
        bond += 1
    return bond


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n## {title}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")


# --------------------------------------------------------------------------------------------- sections
def chain(args) -> dict:
    """Nearest-neighbour open chain, 24 spins: MPS of bond dimension 2 against the exact entropy per spin."""
    n, out, rows = 24, [], []
    for beta in args.chain_betas:
        exact = ising_enumerate(chain_couplings(n), beta)
        closed = math.log(2) + (n - 1) * (math.log(2 * math.cosh(beta)) - beta * math.tanh(beta))
        x = ising_sample_exact(chain_couplings(n), beta, N_TRAIN + N_TEST, seed=1).long()
        train, test = x[:N_TRAIN], x[N_TRAIN:]
        s = test.double() * 2 - 1
        true_nll = float(exact["log_z"] - beta * (s[:, :-1] * s[:, 1:]).sum(1).mean()) / n  # exact model, same test set
        start = time.perf_counter()
        m = fit_sweeps(n, train, bond=2, grow=8, restarts=args.restarts)
        seconds = time.perf_counter() - start
        gap = per_spin_nll(m, test) - exact["entropy"] / n
        row = {"beta": beta, "entropy_per_spin": exact["entropy"] / n, "closed_form_check": abs(closed - exact["entropy"]),
               "mps_gap": gap, "exact_model_gap": true_nll - exact["entropy"] / n, "bond_dims": m.bond_dims,
               "train_seconds": seconds, "goal_met": abs(gap) <= 0.002}
        out.append(row)
        rows.append([beta, row["entropy_per_spin"], gap, row["exact_model_gap"], max(m.bond_dims), f"{seconds:.0f}",
                     "yes" if row["goal_met"] else "NO"])
    print_table("1D nearest-neighbour chain, 24 spins: test NLL - S per spin (goal |gap| <= 0.002)",
                ["beta", "S/N", "MPS(D=2) gap", "exact model gap (noise)", "max bond", "train s", "goal"], rows)
    return {"chain": out}


def exact_spin_correlation(model) -> torch.Tensor:
    """<s_i s_j> (s = 2x - 1) of a trained network without sampling noise: exact pair marginals, or for the MERA
    (no marginals) enumeration of its 2^n states."""
    spin = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    if hasattr(model, "log_marginal"):
        return torch.einsum("ijab,a,b->ij", pair_marginals(model), spin, spin)
    with torch.no_grad():
        states = torch.cartesian_prod(*[torch.arange(2)] * model.n_sites)
        p = model.log_prob(states).double().exp()
    s = spin[states]
    return (s * p[:, None]).T @ s


def compare(name: str, n: int, sample_fn, exact: dict, dist, tree, ttn_bond: int, args, order=None,
            mera_bond: int | None = None) -> dict:
    """MPS (site order ``order``) vs TTN (``tree``) at equal parameters on one exactly solved model.

    Both are trained by two protocols, each early-stopped on the last ``N_VAL`` training samples: sweeps at fixed
    bond dimension (MPS: two-site, TTN: single-node) from a random start, and full-batch L-BFGS from the default
    near-uniform start (``--lbfgs-chunks`` rounds of 20 iterations, validation checked after each); ``--adam`` adds
    both trained by Adam on the same samples (no early stopping); ``mera_bond`` adds a binary MERA of that bond
    dimension over the chain, trained by the same L-BFGS protocol (no sweeps exist for it), and with ``--adam`` by
    Adam at ``--mera-lr`` too. Every training runs once per initialization seed in ``--seeds`` (same data). C(r) of
    a model is exact (pair marginals), so its error carries no sampling noise of the model. For each network, the
    protocol of lowest mean validation NLL gives the verdict: means over seeds, and the number of seeds whose TTN
    beats the MPS of the same seed."""
    order = torch.arange(n) if order is None else torch.as_tensor(order)
    x = sample_fn(N_TRAIN + N_TEST + N_CORR, seed=11).long()
    train, test, fresh = x[:N_TRAIN], x[N_TRAIN:N_TRAIN + N_TEST], x[N_TRAIN + N_TEST:]
    s_exact = exact["entropy"] / n
    c_exact = correlation_by_distance(exact["correlation"], dist)[1]
    floor = corr_error(corr_curve(fresh, dist), c_exact)  # C(r) error of N_CORR exact samples: the data's own
    mps_bond = equal_param_mps_bond(n, TTN(n, ttn_bond, tree=tree).n_params)
    fit, val = train[:-N_VAL], train[-N_VAL:]
    # every network is built right after its seed (torch seeds its default generator at random per process)
    nets = {"TTN": (lambda **kw: TTN(n, ttn_bond, tree=tree, **kw), fit, val),
            "MPS": (lambda **kw: MPS(n, mps_bond, **kw), fit[:, order], val[:, order])}
    if mera_bond is not None:  # exact through its full state vector: chains of at most 24 sites
        nets["MERA"] = (lambda: MERA(n, mera_bond), fit, val)
    # protocol -> (networks, keyword arguments of their start, training function)
    protocols = {}
    if args.max_sweeps:  # from a random start; the MPS sweeps keep its bond dimension (they would grow it)
        protocols["sweeps"] = (("TTN", "MPS"), {"init_noise": 1.0}, lambda m, f, v: fit_sweeps_early_stop(
            m, f, v, args.max_sweeps, **({"max_bond": m.bond_dim} if isinstance(m, MPS) else {})))
    if args.lbfgs_chunks:
        protocols["L-BFGS"] = (tuple(nets), {}, lambda m, f, v: fit_lbfgs_early_stop(m, f, v, args.lbfgs_chunks))
    if args.adam:
        protocols["Adam"] = (tuple(nets), {}, lambda m, f, v: fit_adam(
            m, f, args.epochs, args.mera_lr if isinstance(m, MERA) else args.lr))
    inverse = torch.argsort(order)
    runs, first_models = {}, {}
    for protocol, (net_names, start_kwargs, train_fn) in protocols.items():
        for net in net_names:
            label = f"{net} ({protocol})"
            build, net_fit, net_val = nets[net]
            for seed in args.seeds:
                start = time.perf_counter()
                torch.manual_seed(seed)
                m = train_fn(build(**start_kwargs), net_fit, net_val)
                seconds = time.perf_counter() - start
                is_mps = net == "MPS"
                g = exact_spin_correlation(m)
                if is_mps:
                    g = g[inverse][:, inverse]  # back to lattice order
                runs.setdefault(label, []).append({
                    "seed": seed, "n_params": m.n_params, "max_bond": max(m.bond_dims),
                    "kl_per_spin": per_spin_nll(m, test[:, order] if is_mps else test) - s_exact,
                    "val_nll_minus_s": per_spin_nll(m, net_val) - s_exact,
                    "corr_error": corr_error(correlation_by_distance(g, dist)[1], c_exact), "train_seconds": seconds})
                first_models.setdefault(label, m)
    rows, out = [], {"n_spins": n, "entropy_per_spin": s_exact, "corr_noise_floor": floor, "seeds": list(args.seeds),
                     "models": {}}

    def spread(values):
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 \
            else f"{values[0]:.4f}"

    for label, per_seed in runs.items():
        kl, val_gap = [r["kl_per_spin"] for r in per_seed], [r["val_nll_minus_s"] for r in per_seed]
        cmax, cmean = [r["corr_error"]["max"] for r in per_seed], [r["corr_error"]["mean"] for r in per_seed]
        out["models"][label] = {"n_params": per_seed[0]["n_params"], "max_bond": per_seed[0]["max_bond"],
                                "kl_per_spin": statistics.mean(kl), "val_nll_minus_s": statistics.mean(val_gap),
                                "corr_error": {"max": statistics.mean(cmax), "mean": statistics.mean(cmean)},
                                "runs": per_seed}
        rows.append([label, per_seed[0]["n_params"], per_seed[0]["max_bond"], statistics.mean(val_gap), spread(kl),
                     spread(cmax), statistics.mean(cmean),
                     f"{statistics.mean(r['train_seconds'] for r in per_seed):.0f}"])
    rows.append([f"{N_CORR} exact samples (data C(r) error)", "-", "-", "-", "-", floor["max"], floor["mean"], "-"])
    print_table(f"{name}: KL per spin = test NLL - S (S/N = {s_exact:.4f}), exact C(r) error; mean ± sd over seeds "
                f"{list(args.seeds)}", ["model", "params", "max bond", "val NLL - S", "test NLL - S", "max |dC(r)|",
                                         "mean |dC(r)|", "train s / seed"], rows)
    # each network with the training protocol of lowest validation NLL: the test verdict uses no test information
    out["selected"] = {net: min((k for k in out["models"] if k.startswith(net)),
                                key=lambda k: out["models"][k]["val_nll_minus_s"]) for net in ("TTN", "MPS")}
    ttn, mps = (out["models"][out["selected"][net]] for net in ("TTN", "MPS"))
    # paired by seed: TTN - MPS of the same initialization seed, on the same data
    diffs = {measure: [get(a) - get(b) for a, b in zip(ttn["runs"], mps["runs"])] for measure, get in
             (("kl", lambda r: r["kl_per_spin"]), ("corr", lambda r: r["corr_error"]["max"]))}
    out["ttn_wins"] = {measure: sum(d < 0 for d in values) for measure, values in diffs.items()}
    out["ttn_minus_mps"] = diffs
    print(f"selected on validation: {out['selected']['TTN']} vs {out['selected']['MPS']}: KL/spin "
          f"{ttn['kl_per_spin']:.4f} vs {mps['kl_per_spin']:.4f} (TTN - MPS {spread(diffs['kl'])}, TTN smaller for "
          f"{out['ttn_wins']['kl']} of {len(args.seeds)} seeds), max |dC(r)| {ttn['corr_error']['max']:.4f} vs "
          f"{mps['corr_error']['max']:.4f} (TTN - MPS {spread(diffs['corr'])}, smaller for {out['ttn_wins']['corr']})")
    return out, {"models": first_models, "test": test, "order": order}


def longrange_case(alpha: float, n: int = 20) -> dict:
    """Long-range chain J/r^alpha of ``n`` spins at the specific-heat maximum: ``name``, ``n``, ``beta``,
    ``sample_fn(k, seed)``, ``exact`` (enumeration), ``dist``, ``tree`` (balanced binary), ``order`` (None)."""
    r = torch.arange(n)
    w = chain_couplings(n, alpha=alpha)
    betas = torch.linspace(0.1, 1.2, 23).tolist()
    heat = []
    for b in betas:  # C = beta^2 Var(E) = -beta dS/dbeta; the peak is the finite-size pseudo-critical point
        h = 1e-4
        heat.append(-(ising_enumerate(w, b + h)["entropy"] - ising_enumerate(w, b - h)["entropy"]) / (2 * h) * b)
    beta = betas[max(range(len(betas)), key=heat.__getitem__)]
    return {"name": f"Long-range chain J/r^{alpha}, {n} spins, beta = {beta:.3f} (specific-heat peak)", "n": n,
            "beta": beta, "sample_fn": lambda k, seed: ising_sample_exact(w, beta, k, seed=seed),
            "exact": ising_enumerate(w, beta), "dist": (r[:, None] - r[None, :]).abs(), "tree": balanced_tree(n),
            "order": None}


def lattice_case(side: int) -> dict:
    """2D Ising at T_c on a ``side x side`` torus: as :func:`longrange_case`, with the lattice (binary quadtree)
    tree and the row-snake ``order`` of the MPS; exact reference by transfer matrix."""
    n = side * side
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    dx = (x.reshape(-1)[:, None] - x.reshape(-1)[None, :]).abs()
    dy = (y.reshape(-1)[:, None] - y.reshape(-1)[None, :]).abs()
    dist = torch.minimum(dx, side - dx) + torch.minimum(dy, side - dy)  # Manhattan distance on the torus
    snake = torch.cat([torch.arange(row * side, (row + 1) * side).flip(0) if row % 2 else
                       torch.arange(row * side, (row + 1) * side) for row in range(side)])
    if side <= 4:
        sample_fn = lambda k, seed: ising_sample_exact(square_lattice_couplings(side), CRITICAL_BETA, k, seed=seed)  # noqa: E731
    else:
        sample_fn = lambda k, seed: ising_transfer_sample(side, side, CRITICAL_BETA, k, seed=seed)  # noqa: E731
    return {"name": f"2D Ising at T_c, {side}x{side} torus", "n": n, "sample_fn": sample_fn,
            "exact": ising_transfer(side, side, CRITICAL_BETA, correlations=True), "dist": dist,
            "tree": lattice_tree(side), "order": snake}


def longrange(args) -> dict:
    """Long-range chain J/r^alpha, 20 spins, at the specific-heat maximum of each alpha."""
    results = {}
    for alpha in (1.5, 3.0):
        case = longrange_case(alpha)
        res, _ = compare(case["name"], case["n"], case["sample_fn"], case["exact"], case["dist"], case["tree"],
                         args.ttn_bond_1d, args, mera_bond=args.mera_bond or None)
        res.update(beta=case["beta"])
        results[f"alpha={alpha}"] = res
    return results


def lattice(args) -> dict:
    """2D Ising at T_c on L x L tori: MPS in row-snake order vs TTN on the lattice (binary quadtree) tree."""
    results = {}
    for side in args.sides:
        case = lattice_case(side)
        n, exact = case["n"], case["exact"]
        res, fitted = compare(case["name"], n, case["sample_fn"], exact, case["dist"], case["tree"],
                              args.ttn_bond_2d, args, order=case["order"])
        if side == max(args.sides):
            res["compression"] = {}
            rows = []
            for label, m in fitted["models"].items():
                test = fitted["test"][:, fitted["order"]] if label.startswith("MPS") else fitted["test"]
                curve = truncation_curve(m, test, args.tols, entropy=exact["entropy"])
                rep = compression_report(m)
                res["compression"][label] = {"report": rep, "curve": curve}
                for row in curve:
                    rows.append([label, row["tol"], row["n_params"], row["max_bond"], row["kl"] / n,
                                 f"{math.log10(row['n_params']) - rep['log10_states']:.2f}"])
            print_table(f"Compression, {side}x{side} at T_c: KL per spin vs truncation tolerance "
                        f"(2^{n} = 10^{n * math.log10(2):.2f} states)",
                        ["model", "tol", "params", "max bond", "KL/spin", "log10(params / 2^N)"], rows)
        results[f"L={side}"] = res
    return results


def speed(args) -> dict:
    """Batched log_prob (normalization included), 100 sites, D=32, batch 1024, forward + backward."""
    n, bond, batch = 100, 32, 1024
    torch.manual_seed(0)
    x = torch.randint(0, 2, (batch, n))
    m = MPS(n, bond)

    def ours():
        m.zero_grad()
        m.log_prob(x).mean().backward()

    out = {"dgrn_seconds": timed(ours, args.repeats)}
    try:
        import tensorkrowch as tk
    except ImportError:
        print("\ntensorkrowch is not installed (pip install -e '.[bench]'): no baseline")
        out["tensorkrowch_seconds"] = None
    else:
        tkm = tk.models.MPS(n_features=n, phys_dim=2, bond_dim=bond, boundary="obc", init_method="randn_eye", std=1e-2)
        data = torch.nn.functional.one_hot(x, 2).float()  # (batch, n, 2)
        tkm.trace(data)

        def theirs():
            tkm.zero_grad()
            amp = tkm(data)
            (amp ** 2).clamp_min(1e-30).log().mean().backward()  # unnormalized amplitude only

        out["tensorkrowch_seconds"] = timed(theirs, max(2, args.repeats // 2))
        out["tensorkrowch_version"] = tk.__version__
    ratio = out["tensorkrowch_seconds"] / out["dgrn_seconds"] if out["tensorkrowch_seconds"] else float("nan")
    out["speedup"] = ratio
    rows = [["dgrn MPS log_prob (normalized)", f"{out['dgrn_seconds']:.4f}"]]
    if out["tensorkrowch_seconds"]:
        rows.append([f"tensorkrowch {out['tensorkrowch_version']} MPS amplitude (unnormalized)",
                     f"{out['tensorkrowch_seconds']:.4f}"])
    print_table(f"Speed: 100 sites, D=32, batch 1024, forward + backward, {torch.get_num_threads()} thread(s); "
                f"speed-up {ratio:.1f}x (goal >= 3x)", ["implementation", "seconds per batch (median)"], rows)
    return {"speed": out}


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def conditional(args) -> dict:
    """ConditionalMPS vs a factorized Bernoulli decoder on data with known instantaneous correlations given c."""
    n, k = 8, 4
    gen = torch.Generator().manual_seed(0)
    w_field = torch.randn(k, n, generator=gen) * 0.8
    b_field = torch.randn(n, generator=gen) * 0.3 - 0.5
    couplings = torch.tensor([1.2, -1.0, 1.5, -0.8, 1.0, 1.3, -1.2])  # instantaneous, nearest-neighbour
    x_all = torch.tensor([[(i >> (n - 1 - j)) & 1 for j in range(n)] for i in range(1 << n)]).float()
    pair = (x_all[:, :-1] * x_all[:, 1:] * couplings).sum(1)

    def exact_log_p(c):
        lw = (c @ w_field + b_field) @ x_all.T + pair  # (B, 2^n)
        return lw - lw.logsumexp(1, keepdim=True)

    c = torch.randn(N_TRAIN + N_TEST, k, generator=gen)
    lp = exact_log_p(c)
    x = x_all[torch.multinomial(lp.exp(), 1, generator=gen).squeeze(1)].long()
    h_cond = float(-(lp.exp() * lp).sum(1)[N_TRAIN:].mean()) / n  # exact conditional entropy on the test contexts
    train, test = slice(0, N_TRAIN), slice(N_TRAIN, None)

    class Factorized(nn.Module):  # same context map (linear in c), conditionally independent units
        def __init__(self):
            super().__init__()
            self.field = nn.Linear(k, n)

        def log_prob(self, xx, cc):
            return -nn.functional.binary_cross_entropy_with_logits(self.field(cc), xx.float(), reduction="none").sum(1)

    results, rows = {"exact_conditional_entropy_per_site": h_cond, "seeds": args.cond_seeds}, []
    # rank 0: the couplings of this data do not depend on the context, so context-dependent corrections (rank >= 1)
    # only add local optima (with rank 1, one of two seeds stopped at a gap of 0.02-0.04). Learning rates: the
    # largest of {0.05, 0.02, 0.01} at which each decoder trained stably here. Each model is built after seeding,
    # so its initialisation depends on the seed only, not on the sections that ran before.
    decoders = (("ConditionalMPS (D=2, rank 0)", lambda: ConditionalMPS(n, k, 2, rank=0), 0.01),
                ("factorized Bernoulli", Factorized, 0.05))
    for label, build, lr in decoders:
        runs = []
        for seed in args.cond_seeds:
            torch.manual_seed(seed)
            model = build()
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            start = time.perf_counter()
            for step in range(args.cond_steps):
                opt.zero_grad()
                loss = -model.log_prob(x[train], c[train]).mean()
                loss.backward()
                opt.step()
            seconds = time.perf_counter() - start
            with torch.no_grad():
                nll = float(-model.log_prob(x[test], c[test]).mean()) / n
            runs.append({"seed": seed, "nll_per_site": nll, "gap": nll - h_cond, "train_seconds": seconds})
            rows.append([label, seed, sum(p.numel() for p in model.parameters()), nll, nll - h_cond, f"{seconds:.0f}"])
        results[label] = {"runs": runs, "lr": lr, "max_gap": max(r["gap"] for r in runs), "n_params": rows[-1][2]}
    margins = [f["nll_per_site"] - m["nll_per_site"] for m, f in
               zip(results["ConditionalMPS (D=2, rank 0)"]["runs"], results["factorized Bernoulli"]["runs"])]
    results["margin_per_site"] = margins
    print_table(f"ConditionalMPS, {n} units, context dim {k}: test NLL per site (exact H(x|c)/n = {h_cond:.4f}); "
                f"margin over factorized {statistics.mean(margins):.4f} (min {min(margins):.4f}) nats/site; "
                f"largest gap {results['ConditionalMPS (D=2, rank 0)']['max_gap']:.4f} (goal: gap <= 0.01)",
                ["decoder", "seed", "params", "NLL/site", "NLL - H", "train s"], rows)
    return {"conditional": results}


COMPLEX_CASES = {"4x4": lambda: lattice_case(4), "8x8": lambda: lattice_case(8),
                 "J/r^1.5": lambda: longrange_case(1.5), "J/r^3": lambda: longrange_case(3.0)}
#: the training protocol of each case: the one of lowest validation NLL for the real networks in this bench
#: (sweeps on the 8x8 critical lattice, full-batch L-BFGS elsewhere; docs/benchmarks/tensor-networks.md)
COMPLEX_PROTOCOLS = {"4x4": "L-BFGS", "8x8": "sweeps", "J/r^1.5": "L-BFGS", "J/r^3": "L-BFGS"}


def closest_bond(n_params, target: int, largest: int) -> int:
    """Bond dimension whose parameter count ``n_params(D)`` is closest to ``target`` (the smaller on a tie)."""
    return min(range(1, largest + 1), key=lambda d: (abs(n_params(d) - target), d))


def complex_born(args) -> dict:
    """Real against complex MPS and TTN at equal counts of real parameters on each case of ``--complex-cases``.

    The complex networks have bond dimension ``--complex-bond`` and dtype complex64 (a complex entry counts 2 real
    parameters); each real network (float32, as in the other sections) has the bond dimension whose parameter count
    is closest to its complex twin's (about sqrt(2) times larger). Data, splits and metrics as in :func:`compare`;
    every network is trained by the protocol of its case in ``COMPLEX_PROTOCOLS`` (L-BFGS: ``--lbfgs-chunks`` rounds
    of 20 iterations from the near-uniform default start, complex imaginary parts at their default 0.1 scale; sweeps:
    ``--max-sweeps`` from a random start, ``init_noise`` 1 and for complex tensors ``imag_noise`` 1), early-stopped on
    the validation samples, once per seed in ``--seeds``. Reports KL per spin (test NLL - S), the exact C(r) error
    and, per network, the paired difference complex - real of the same seed."""
    results = {"complex_bond": args.complex_bond, "seeds": list(args.seeds), "cases": {}}
    for key in args.complex_cases:
        if key not in COMPLEX_CASES:
            raise SystemExit(f"unknown complex case {key!r}; valid: {sorted(COMPLEX_CASES)}")
        case = COMPLEX_CASES[key]()
        n, tree, protocol = case["n"], case["tree"], COMPLEX_PROTOCOLS[key]
        order = torch.arange(n) if case["order"] is None else case["order"]
        inverse = torch.argsort(order)
        x = case["sample_fn"](N_TRAIN + N_TEST + N_CORR, seed=11).long()  # the same samples as compare()
        train, test, fresh = x[:N_TRAIN], x[N_TRAIN:N_TRAIN + N_TEST], x[N_TRAIN + N_TEST:]
        fit, val = train[:-N_VAL], train[-N_VAL:]
        s_exact = case["exact"]["entropy"] / n
        c_exact = correlation_by_distance(case["exact"]["correlation"], case["dist"])[1]
        floor = corr_error(corr_curve(fresh, case["dist"]), c_exact)
        dc = args.complex_bond
        builders = {"TTN": lambda d, **kw: TTN(n, d, tree=tree, **kw), "MPS": lambda d, **kw: MPS(n, d, **kw)}
        bonds = {}
        for net, build in builders.items():
            target = build(dc, dtype=torch.complex64).n_params
            bonds[net] = {"complex": dc, "real": closest_bond(lambda d: build(d).n_params, target, 4 * dc)}
        start_kwargs = {"complex": {"dtype": torch.complex64}, "real": {}}
        if protocol == "sweeps":
            start_kwargs = {"complex": {"dtype": torch.complex64, "init_noise": 1.0, "imag_noise": 1.0},
                            "real": {"init_noise": 1.0}}
        runs = {}
        for net, build in builders.items():
            is_mps = net == "MPS"
            net_fit, net_val, net_test = (fit[:, order], val[:, order], test[:, order]) if is_mps else (fit, val, test)
            for kind in ("real", "complex"):
                label = f"{net} {kind}"
                for seed in args.seeds:
                    torch.manual_seed(seed)
                    m = build(bonds[net][kind], **start_kwargs[kind])
                    start = time.perf_counter()
                    if protocol == "sweeps":
                        m = fit_sweeps_early_stop(m, net_fit, net_val, args.max_sweeps,
                                                  **({"max_bond": m.bond_dim} if is_mps else {}))
                    else:
                        m = fit_lbfgs_early_stop(m, net_fit, net_val, args.lbfgs_chunks)
                    seconds = time.perf_counter() - start
                    g = exact_spin_correlation(m)
                    if is_mps:
                        g = g[inverse][:, inverse]  # back to lattice order
                    runs.setdefault(label, []).append({
                        "seed": seed, "n_params": m.n_params, "bond_dim": m.bond_dim, "max_bond": max(m.bond_dims),
                        "dtype": str(m.tensors[0].dtype).replace("torch.", ""),
                        "kl_per_spin": per_spin_nll(m, net_test) - s_exact,
                        "val_nll_minus_s": per_spin_nll(m, net_val) - s_exact,
                        "corr_error": corr_error(correlation_by_distance(g, case["dist"])[1], c_exact),
                        "train_seconds": seconds})
        out = {"name": case["name"], "n_spins": n, "entropy_per_spin": s_exact, "protocol": protocol,
               "corr_noise_floor": floor, "bonds": bonds, "models": runs, "complex_minus_real": {}}
        rows = []

        def spread(values):
            return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 \
                else f"{values[0]:.4f}"

        for label, per_seed in runs.items():
            rows.append([label, per_seed[0]["dtype"], per_seed[0]["bond_dim"], per_seed[0]["n_params"],
                         statistics.mean(r["val_nll_minus_s"] for r in per_seed),
                         spread([r["kl_per_spin"] for r in per_seed]),
                         spread([r["corr_error"]["max"] for r in per_seed]),
                         statistics.mean(r["corr_error"]["mean"] for r in per_seed),
                         f"{statistics.mean(r['train_seconds'] for r in per_seed):.0f}"])
        rows.append([f"{N_CORR} exact samples (data C(r) error)", "-", "-", "-", "-", "-", floor["max"], floor["mean"],
                     "-"])
        print_table(f"Real vs complex, {case['name']} ({protocol}): KL per spin = test NLL - S (S/N = {s_exact:.4f}), "
                    f"exact C(r) error; mean ± sd over seeds {list(args.seeds)}",
                    ["model", "dtype", "bond", "real params", "val NLL - S", "test NLL - S", "max |dC(r)|",
                     "mean |dC(r)|", "train s / seed"], rows)
        for net in builders:
            real, cplx = runs[f"{net} real"], runs[f"{net} complex"]
            diffs = {"kl": [c["kl_per_spin"] - r["kl_per_spin"] for c, r in zip(cplx, real)],
                     "corr": [c["corr_error"]["max"] - r["corr_error"]["max"] for c, r in zip(cplx, real)]}
            wins = {k: sum(d < 0 for d in v) for k, v in diffs.items()}
            out["complex_minus_real"][net] = {"diffs": diffs, "complex_wins": wins}
            print(f"{net}: complex - real (paired by seed) KL/spin {spread(diffs['kl'])} (complex smaller for "
                  f"{wins['kl']} of {len(args.seeds)} seeds), max |dC(r)| {spread(diffs['corr'])} (smaller for "
                  f"{wins['corr']})")
        results["cases"][key] = out
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["chain", "longrange", "lattice", "speed", "conditional"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--chain-betas", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--sides", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--ttn-bond-1d", type=int, default=8)
    parser.add_argument("--ttn-bond-2d", type=int, default=12)
    parser.add_argument("--max-sweeps", type=int, default=4, help="sweeps at fixed bond dimension, early-stopped on "
                        "validation; 0: no sweep rows")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="initialization seeds: every TTN/MPS/MERA training runs once per seed on the same data")
    parser.add_argument("--adam", action="store_true", help="also train both networks by Adam (same data)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--mera-bond", type=int, default=4,
                        help="bond dimension of the MERA on the long-range chains (0: no MERA)")
    parser.add_argument("--mera-lr", type=float, default=0.003,
                        help="Adam learning rate of the MERA (0.01 oscillates on these chains)")
    parser.add_argument("--lbfgs-chunks", type=int, default=30,
                        help="rounds of 20 full-batch L-BFGS iterations (validation checked after each); 0: no "
                             "L-BFGS rows")
    parser.add_argument("--tols", type=float, nargs="+", default=[0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 1e-4, 0.0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cond-steps", type=int, default=600)
    parser.add_argument("--cond-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--complex-cases", nargs="+", default=list(COMPLEX_CASES),
                        help=f"cases of the complex section (of {list(COMPLEX_CASES)})")
    parser.add_argument("--complex-bond", type=int, default=4,
                        help="bond dimension of the complex networks of the complex section (the real ones: equal "
                             "real parameters)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tn.json",
                        help="results file; a run of some sections updates them in it and keeps the others")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    results = {"threads": torch.get_num_threads()}
    sections = {"chain": chain, "longrange": longrange, "lattice": lattice, "speed": speed, "conditional": conditional,
                "complex": complex_born}
    for name in args.sections:
        if name not in sections:
            raise SystemExit(f"unknown section {name!r}; valid: {sorted(sections)}")
        start = time.perf_counter()
        results[name] = sections[name](args)
        results[name + "_seconds"] = time.perf_counter() - start
    path = args.out
    if path.exists():  # a run of some sections updates them and keeps the others
        results = {**json.loads(path.read_text()), **results}
    atomic_write(path, json.dumps(results, indent=1, default=_json_default))
    print(f"\nwrote {path}")


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return str(obj)


if __name__ == "__main__":
    main()
