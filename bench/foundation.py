"""Foundation benchmark: GLM vs independent null on the kinetic Ising network, by observed fraction.

    python bench/foundation.py [--seeds 0 1 2] [--fractions 1.0 0.5 0.2]

Every number comes from the real pipeline (``train.py experiment=...`` in a subprocess, test split of contiguous
held-out blocks). Seeds vary which neurons are observed (``data.subsample_seed``) and the training order
(``seed``). Also times ``dgrn --help`` and ``dgrn zoo list`` and one default ``train.py`` run. Writes
``bench/results/foundation.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dgrn.data import atomic_write  # noqa: E402


def run_train(overrides: list[str], run_dir: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "train.py", f"hydra.run.dir={run_dir}", "logger=none", *overrides],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads((run_dir / "metrics.json").read_text())["metrics"], time.perf_counter() - start


def timed(cmd: list[str], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.2])
    args = parser.parse_args()
    dgrn = str(Path(sys.executable).parent / "dgrn")
    results: dict = {"cli_seconds": {"dgrn --help": timed([dgrn, "--help"]), "dgrn zoo list": timed([dgrn, "zoo", "list"])}}
    with tempfile.TemporaryDirectory() as tmp:
        _, results["default_train_seconds"] = run_train([], Path(tmp) / "default")
        rows = []
        for fraction in args.fractions:
            for model in ("glm_kising", "independent_kising"):
                per_seed = []
                for seed in args.seeds:
                    overrides = [f"experiment={model}", f"data.observed_fraction={fraction}",
                                 f"data.subsample_seed={seed}", f"seed={seed}"]
                    metrics, _ = run_train(overrides, Path(tmp) / f"{model}_{fraction}_{seed}")
                    per_seed.append(metrics)
                rows.append({"fraction": fraction, "model": model, "runs": per_seed})
    results["rows"] = rows
    out = ROOT / "bench" / "results" / "foundation.json"
    atomic_write(out, json.dumps(results, indent=2))

    print(f"dgrn --help: {results['cli_seconds']['dgrn --help']:.2f} s, "
          f"dgrn zoo list: {results['cli_seconds']['dgrn zoo list']:.2f} s, "
          f"default train.py run: {results['default_train_seconds']:.1f} s")
    print(f"kinetic Ising, 100 neurons, 4 communities, 50,000 bins; test split; mean ± sd over seeds {args.seeds}")
    print(f"{'observed':>8s}  {'model':20s} {'edge AUROC':>17s} {'bits/spike':>17s} {'NLL nats/bin':>17s}")
    for row in rows:
        runs = row["runs"]
        auroc = fmt([r["test/edge_auroc"] for r in runs]) if "test/edge_auroc" in runs[0] else "-"
        print(f"{row['fraction']:>8.0%}  {row['model']:20s} {auroc:>17s} "
              f"{fmt([r['test/bits_per_spike'] for r in runs]):>17s} {fmt([r['test/nll'] for r in runs]):>17s}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
