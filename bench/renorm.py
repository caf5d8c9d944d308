"""Diffusion-renormalization benchmark: exactness, scale, hierarchy, directed graphs (all numbers from one run).

    python bench/renorm.py [--n-large 100000] [--n-compare 4000] [--skip-large]

1. Exactness: ``spectral_curves`` (exact path) against an independent dense numpy ``eigh`` reference, N <= 2000.
2. Scalable vs exact at N = 4000 (planted partition, 20 blocks): times, max error of C, tau* in grid steps, ARI of
   supernodes (and edges-only candidates against all pairs on the exact path).
3. Scale: planted partition with N = 100,000 nodes and ~1,000,000 edges: curves on 64 taus + one coarse-graining at
   the largest-scale peak, in a child process (its peak RSS is the memory figure).
4. Hierarchy: 4 groups of 4 blocks; AMI of each flow level against the planted blocks and groups.
5. Directed: directed == undirected on symmetric input; direction-only planted partition, directed vs symmetrized,
   and a dense magnetic-Laplacian reference (where the direction-only blocks are visible at all).
Writes ``bench/results/renorm.json``. Timings are wall-clock on whatever else the machine is running.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dgrn.data import atomic_write  # noqa: E402
from dgrn.renorm import HeatKernel, rg_flow, spectral_curves  # noqa: E402
from dgrn.renorm.coarse import coarse_grain_kernel, select_tau  # noqa: E402
from dgrn.renorm.laplacian import perron_vector  # noqa: E402
from dgrn.renorm.synthetic import (  # noqa: E402
    direction_planted_partition,
    hierarchical_planted_partition,
    planted_partition,
)


def reference_curves(a: np.ndarray, taus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent dense reference: L = D - A, numpy eigh, S = -sum p ln p / ln N, C = -dS/dln tau = tau^2 Var."""
    lap = np.diag(a.sum(1)) - a
    lam = np.linalg.eigvalsh(lap)
    s, c = [], []
    for t in taus:
        e = -t * (lam - lam.min())
        p = np.exp(e) / np.exp(e).sum()
        nz = p > 0
        s.append(-(p[nz] * np.log(p[nz])).sum() / math.log(len(lam)))
        c.append(t * t * (p * lam**2).sum() - t * t * (p * lam).sum() ** 2)
    return np.array(s), np.array(c) / math.log(len(lam))


def exactness() -> dict:
    rows = []
    for n in (200, 1000, 2000):
        a, _ = planted_partition(n, 10, 12, 2, seed=n)
        w = a.copy()
        w.data = np.random.default_rng(n).uniform(0.5, 2.0, w.nnz)
        w = ((w + w.T) * 0.5).toarray()
        taus = np.logspace(-3, 4, 64) / 1.0
        got = spectral_curves(w, taus, method="exact")
        s_ref, c_ref = reference_curves(w, taus)
        big = c_ref > 1e-12 * c_ref.max()  # below that, eigenvalue rounding (1e-15) dominates the true value
        c_err = np.abs(got["specific_heat"].numpy()[big] - c_ref[big]) / c_ref[big]
        rows.append({"n": n, "entropy_max_rel": float(np.abs(got["entropy"].numpy() - s_ref).max() / s_ref.max()),
                     "specific_heat_max_rel": float(c_err.max())})
        print(f"  N={n}: max relative error S {rows[-1]['entropy_max_rel']:.1e}, "
              f"C {rows[-1]['specific_heat_max_rel']:.1e} (vs numpy eigh reference)")
    return {"rows": rows}


def large_child(n: int) -> None:
    """Run in a child process: the scale benchmark, printing one JSON line."""
    a, labels = planted_partition(n, 20, 18, 2, seed=1)
    start = time.perf_counter()
    kernel = HeatKernel(a, method="scalable")
    built = time.perf_counter()
    grid = kernel.default_taus(64)
    tau, curves, peaks = select_tau(kernel, "largest", grid)
    curved = time.perf_counter()
    sup, n_super = coarse_grain_kernel(kernel, tau)
    done = time.perf_counter()
    print(json.dumps({
        "n": n, "edges": int(a.nnz // 2), "setup_s": built - start, "curves_s": curved - built,
        "coarse_grain_s": done - curved, "total_s": done - start, "tau_star": tau, "n_supernodes": n_super,
        "n_peaks": len(peaks), "ari_vs_planted": adjusted_rand_score(labels, sup), "deflated": int(kernel.slow_values.size),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }))


def compare(n: int) -> dict:
    a, labels = planted_partition(n, 20, 18, 2, seed=1)
    out = {"n": n}
    for method in ("exact", "scalable"):
        start = time.perf_counter()
        kernel = HeatKernel(a, method=method)
        if method == "exact":
            grid = kernel.default_taus(64)
        tau, curves, peaks = select_tau(kernel, "largest", grid)
        sup, n_super = coarse_grain_kernel(kernel, tau)
        out[method] = {"seconds": time.perf_counter() - start, "tau_star": tau, "n_supernodes": n_super,
                       "tau_index": int(np.argmin(np.abs(grid - tau))), "labels": sup, "curves": curves}
        if method == "exact":
            out["exact"]["edges_labels"] = coarse_grain_kernel(kernel, tau, "edges")[0]
    ce, cs = out["exact"]["curves"]["specific_heat"], out["scalable"]["curves"]["specific_heat"]
    res = {
        "n": n, "exact_s": out["exact"]["seconds"], "scalable_s": out["scalable"]["seconds"],
        "c_max_err_rel_to_peak": float(np.abs(ce - cs).max() / ce.max()),
        "c_max_rel_err_where_c_above_1pct": float((np.abs(ce - cs) / ce)[ce > 0.01 * ce.max()].max()),
        "entropy_max_abs_err": float(np.abs(out["exact"]["curves"]["entropy"] - out["scalable"]["curves"]["entropy"]).max()),
        "tau_star_grid_steps": abs(out["exact"]["tau_index"] - out["scalable"]["tau_index"]),
        "ari_scalable_vs_exact": adjusted_rand_score(out["exact"]["labels"], out["scalable"]["labels"]),
        "ari_exact_edges_vs_all_pairs": adjusted_rand_score(out["exact"]["labels"], out["exact"]["edges_labels"]),
        "ari_exact_vs_planted": adjusted_rand_score(labels, out["exact"]["labels"]),
        "n_supernodes": [out["exact"]["n_supernodes"], out["scalable"]["n_supernodes"]],
    }
    return res


def hierarchy() -> dict:
    a, blocks, groups = hierarchical_planted_partition(1600, 4, 4, 40, 2, 0.1, seed=1)
    flow = rg_flow(a, 3)
    return {"levels": [{"level": lv.level, "tau": lv.tau, "n_nodes": lv.n_nodes,
                        "ami_blocks": adjusted_mutual_info_score(blocks, lv.membership.numpy()),
                        "ami_groups": adjusted_mutual_info_score(groups, lv.membership.numpy())} for lv in flow]}


def directed() -> dict:
    a, _ = planted_partition(600, 6, 12, 2, seed=3)
    taus = np.logspace(-3, 3, 64)
    d = spectral_curves(a, taus, laplacian="directed")
    u = spectral_curves(a, taus, laplacian="normalized")
    sym_diff = float((d["specific_heat"] - u["specific_heat"]).abs().max())
    a, labels = direction_planted_partition(800, 4, 20, seed=2)
    res = {"symmetric_input_max_abs_diff_C_directed_vs_normalized": sym_diff}
    for kind in ("directed", "combinatorial", "normalized"):
        kernel = HeatKernel(a, laplacian=kind)
        curves = kernel.curves()
        scores = [adjusted_mutual_info_score(labels, coarse_grain_kernel(kernel, t)[0]) for t in curves["tau"]]
        tau, _, _ = select_tau(kernel, "valley")
        res[kind] = {"ami_at_valley": adjusted_mutual_info_score(labels, coarse_grain_kernel(kernel, tau)[0]),
                     "best_ami_over_grid": float(max(scores))}
    # what Chung's Laplacian sees of the direction: the random walk's stationary mass of each block
    res["stationary_mass_per_block"] = {str(t): np.bincount(labels, perron_vector(a, t)[0]).tolist()
                                        for t in (1e-4, 0.05)}
    res["magnetic"] = {f"k={k}": magnetic_reference(k) for k in (20, 60)}
    return res


def magnetic_reference(mean_degree: float, charge: float = 0.25, n_blocks: int = 4) -> dict:
    r"""Bench-only reference for the direction-only blocks: the magnetic Laplacian (Fanuel et al. 2017), Hermitian,
    :math:`L = D_s - A_s \circ e^{2\pi i q (A - A^T)}`; at q = 1/4 its off-diagonal part is Cucuringu et al.'s
    (AISTATS 2020) Hermitian adjacency :math:`i(A - A^T)` for flow-defined clusters. Direction enters as phases.
    Reports the best AMI over a tau grid of LRG supernodes built from :math:`|\rho_{ij}|` (the gauge-invariant
    modulus of the complex heat kernel) or from :math:`\mathrm{Re}\,\rho_{ij}` (the Gram matrix of the real
    embedding below, at large tau) and, as the non-LRG check that the blocks are detectable at all,
    k-means (told the number of blocks) on the real and imaginary parts of the two lowest eigenvectors, with the
    same k-means on the symmetrized combinatorial Laplacian's two lowest nontrivial eigenvectors for contrast."""
    import torch
    from sklearn.cluster import KMeans

    from dgrn.renorm.coarse import zeta_components

    a, labels = direction_planted_partition(800, n_blocks, mean_degree, seed=2)
    dense = a.toarray()
    sym = 0.5 * (dense + dense.T)
    lap = np.diag(sym.sum(1)) - sym * np.exp(2j * np.pi * charge * (dense - dense.T))
    lam, vec = np.linalg.eigh(lap)
    best = {"abs": 0.0, "real": 0.0}
    for tau in np.logspace(-3, 2, 40):
        rho = (vec * np.exp(-tau * (lam - lam[0]))) @ vec.conj().T
        for part, kernel in (("abs", np.abs(rho)), ("real", rho.real)):
            found = zeta_components(torch.from_numpy(np.ascontiguousarray(kernel))).numpy()
            best[part] = max(best[part], adjusted_mutual_info_score(labels, found))
    feats = np.concatenate([vec[:, :2].real, vec[:, :2].imag], 1)
    magnetic_kmeans = KMeans(n_blocks, n_init=10, random_state=0).fit_predict(feats)
    _, sym_vec = np.linalg.eigh(np.diag(sym.sum(1)) - sym)
    sym_kmeans = KMeans(n_blocks, n_init=10, random_state=0).fit_predict(sym_vec[:, 1:3])
    return {"lrg_abs_kernel_best_ami": float(best["abs"]), "lrg_real_kernel_best_ami": float(best["real"]),
            "kmeans_magnetic_eigenvectors_ami": float(adjusted_mutual_info_score(labels, magnetic_kmeans)),
            "kmeans_symmetrized_eigenvectors_ami": float(adjusted_mutual_info_score(labels, sym_kmeans))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-large", type=int, default=100_000)
    parser.add_argument("--n-compare", type=int, default=4000)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--large-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.large_child:
        large_child(args.large_child)
        return
    results: dict = {}
    print("1. exactness (exact path vs independent numpy eigh)")
    results["exactness"] = exactness()
    if not args.skip_large:
        print(f"2. scale: planted partition N={args.n_large} (child process)")
        proc = subprocess.run([sys.executable, __file__, "--large-child", str(args.n_large)], capture_output=True,
                              text=True, check=True)
        large = json.loads(proc.stdout.strip().splitlines()[-1])
        results["large"] = large
        print(f"  N={large['n']}, {large['edges']} edges: total {large['total_s']:.1f} s (setup {large['setup_s']:.1f}, "
              f"curves {large['curves_s']:.2f}, coarse-grain {large['coarse_grain_s']:.1f}); peak RSS "
              f"{large['peak_rss_gb']:.2f} GB; tau*={large['tau_star']:.3g} -> {large['n_supernodes']} supernodes, "
              f"ARI vs planted {large['ari_vs_planted']:.3f}   [goal: < 120 s, < 6 GB]")
    print(f"3. scalable vs exact at N={args.n_compare}")
    cmp_ = compare(args.n_compare)
    results["compare"] = cmp_
    print(f"  exact {cmp_['exact_s']:.1f} s, scalable {cmp_['scalable_s']:.1f} s "
          f"(ratio {cmp_['exact_s'] / cmp_['scalable_s']:.2f}x); C max error {100 * cmp_['c_max_err_rel_to_peak']:.2f} % "
          f"of the peak (pointwise where C > 1% of peak: {100 * cmp_['c_max_rel_err_where_c_above_1pct']:.2f} %); "
          f"tau* off by {cmp_['tau_star_grid_steps']} grid steps; ARI scalable vs exact "
          f"{cmp_['ari_scalable_vs_exact']:.3f}; ARI exact edges-only vs all pairs {cmp_['ari_exact_edges_vs_all_pairs']:.3f}"
          "   [goal: 2 %, 1 step, ARI >= 0.95]")
    print("4. hierarchy: 4 groups x 4 blocks (N=1600)")
    results["hierarchy"] = hierarchy()
    for lv in results["hierarchy"]["levels"]:
        print(f"  level {lv['level']}: tau*={lv['tau']:.3g}, {lv['n_nodes']} nodes, AMI blocks {lv['ami_blocks']:.3f}, "
              f"AMI groups {lv['ami_groups']:.3f}   [goal: AMI >= 0.9 at the matching level]")
    print("5. directed")
    results["directed"] = directed()
    dres = results["directed"]
    print(f"  symmetric input: max |C_directed - C_normalized| = "
          f"{dres['symmetric_input_max_abs_diff_C_directed_vs_normalized']:.1e}")
    for kind in ("directed", "combinatorial", "normalized"):
        print(f"  direction-only blocks, {kind:13s}: AMI at valley {dres[kind]['ami_at_valley']:.3f}, best over the tau "
              f"grid {dres[kind]['best_ami_over_grid']:.3f}")
    for tele, mass in dres["stationary_mass_per_block"].items():
        print(f"  direction-only blocks: stationary mass per block (teleport {tele}): "
              + " ".join(f"{m:.4f}" for m in mass))
    for key, mres in dres["magnetic"].items():
        print(f"  direction-only blocks, magnetic Laplacian (q=1/4, dense reference), mean degree {key[2:]}: LRG best AMI "
              f"on |rho| {mres['lrg_abs_kernel_best_ami']:.3f}, on Re rho {mres['lrg_real_kernel_best_ami']:.3f}; k-means on its 2 lowest eigenvectors "
              f"{mres['kmeans_magnetic_eigenvectors_ami']:.3f} (symmetrized: "
              f"{mres['kmeans_symmetrized_eigenvectors_ami']:.3f})")
    out = ROOT / "bench" / "results" / "renorm.json"
    atomic_write(out, json.dumps(results, indent=2, default=float))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
