"""GPU check: every CUDA test, then GPU and CPU throughput side by side, in one run of at most ``--budget-s``.

    python bench/gpu_check.py                 # on a machine with CUDA: about 8 minutes on one GPU
    python bench/gpu_check.py --cpu           # the same rows at small sizes, CPU only (CI runs this)
    python bench/gpu_check.py --out PATH      # default bench/results/gpu_check.json

1. The CUDA tests: ``pytest -m gpu`` (every test that needs CUDA carries the ``gpu`` marker). With ``--cpu`` only
   their collection runs, and it must find some.
2. Throughput rows, each on the GPU and on the CPU (``--cpu``: CPU only, small sizes), each measured in a child
   process (its peak memory is the row's; a crash, a CUDA error or a time-out stays in its row):

   - ``glm``, ``cmps`` (ConditionalMPS: ``model=dgrn renorm=none``) and ``dgrn`` (``experiment=dgrn_kising``):
     training windows per second through ``train.py`` (the real Lightning path), ``trainer=gpu`` (bf16-mixed) against
     ``trainer=cpu``, timed over a fixed number of optimizer steps after a few warm-up steps (validation off);
   - ``lrg dense`` and ``lrg scalable``: one LRG coarse-graining (tau at the largest specific-heat peak, supernodes)
     of a planted partition of N nodes (``bench/renorm.py``'s ``compare``); numpy/scipy, so CPU only;
   - ``lif``: the clustered LIF simulator (``lif_preset``), simulated seconds per wall-clock second;
   - ``infer_couplings``: the full-batch L-BFGS fit (10 iterations, as ``bench/graph.py``'s scale test) at 1,000
     neurons x 100,000 bins, data simulated on the row's device.

Every row is capped in time (``--row-cap-s``) and by what is left of ``--budget-s``; a row that does not fit is
skipped with a note. Prints one table and writes a JSON file (torch version, device, git commit, every row). Exit
code 1 if the CUDA tests or any row failed (a CPU measurement that runs out of time is a note, not a failure);
2 without ``--cpu`` on a machine without CUDA.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "gpu_check.json"

#: train.py overrides of the three training rows (``bench/dgrn.py``'s models on ``experiment=dgrn_kising``)
TRAIN_ROWS = {
    "glm": ["experiment=glm_kising"],
    "cmps": ["experiment=dgrn_kising", "renorm=none"],
    "dgrn": ["experiment=dgrn_kising"],
}
#: sizes: ``full`` on a GPU machine, ``small`` with --cpu
SIZES = {
    # (warm-up, timed) training steps per device: fewer on the (slower) CPU; throughput is per window either way
    "full": {"train_data": [], "steps": {"cuda": (5, 40), "cpu": (2, 10)}, "lrg_n": 4000, "lif": ("lkd2012", 1.0),
             "infer": (1000, 100_000)},
    "small": {"train_data": ["data.dataset.t=4000", "data.n_blocks=10", "data.window=16", "data.batch_size=8"],
              "steps": {"cpu": (1, 3)}, "lrg_n": 400, "lif": ("tiny", 0.5), "infer": (100, 5000)},
}
#: --cpu only: a smaller DGRN setup (40 neurons, a shorter couplings fit, one renormalization level)
SMALL_DGRN = ["data.dataset.n=40", "+model.graph.max_iter=10"]
SMALL_TRAIN = {"glm": [], "cmps": SMALL_DGRN, "dgrn": [*SMALL_DGRN, "renorm.levels=1"]}
UNITS = {"train": "windows/s", "lrg": "nodes/s", "lif": "sim s/s", "infer": "neuron-bins/s"}


def step_timer(out: str, warmup: int, steps: int):
    """Lightning callback (``+callbacks.gpu_check._target_=bench.gpu_check.step_timer``): times the training batches
    after ``warmup`` of them (CUDA synchronized at both ends; the fit stops at ``trainer.max_steps=warmup + steps``)
    and writes windows/s and the peak memory to ``out`` (JSON). A factory, so that importing this module stays light."""
    import torch
    from lightning.pytorch.callbacks import Callback

    def sync(pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    class StepTimer(Callback):
        seen = windows = 0
        seconds = t0 = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sync(pl_module)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync(pl_module)
            if warmup <= self.seen < warmup + steps:
                self.seconds += time.perf_counter() - self.t0
                self.windows += len(batch[0] if isinstance(batch, (list, tuple)) else batch)
            self.seen += 1

        def on_train_end(self, trainer, pl_module):
            res = {"steps": min(self.seen - warmup, steps), "windows": self.windows, "seconds": self.seconds,
                   "throughput": self.windows / self.seconds if self.seconds else None,
                   "precision": str(trainer.precision), "peak_rss_mib": _rss_mib()}
            if pl_module.device.type == "cuda":
                res["peak_gpu_mib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
            from dgrn.data import atomic_write

            atomic_write(out, json.dumps(res))  # the parent reads it: never half-written

    return StepTimer()


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux: KiB


# ------------------------------------------------------------------------------------------------ child measurements
def child(kind: str, device: str, size: str) -> dict:
    """One measurement in this (fresh) process; returns the row's side as a dict."""
    import torch

    sizes = SIZES[size]
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def peaks(out: dict) -> dict:
        out["peak_rss_mib"] = _rss_mib()
        if cuda:
            out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return out

    if kind == "lrg":  # both LRG paths in one child: bench/renorm.py's scalable-vs-exact comparison
        sys.path.insert(0, str(ROOT))
        from bench.renorm import compare

        n = sizes["lrg_n"]
        res = compare(n)
        return peaks({"n": n, "dense_seconds": res["exact_s"], "scalable_seconds": res["scalable_s"],
                      "ari_scalable_vs_exact": res["ari_scalable_vs_exact"],
                      "c_max_err_rel_to_peak": res["c_max_err_rel_to_peak"]})
    if kind == "lif":
        from dgrn.sim.lif import lif_preset

        preset, seconds = sizes["lif"]
        start = time.perf_counter()
        data = lif_preset(preset, seconds, 0.005, seed=0, device=device)
        sync()
        wall = time.perf_counter() - start
        return peaks({"seconds": wall, "throughput": seconds / wall, "neurons": data.n_neurons,
                      "rate_per_bin": float(data.spikes.float().mean())})
    if kind == "infer":
        from dgrn.graph import infer_couplings
        from dgrn.sim import kinetic_ising

        n, t = sizes["infer"]
        start = time.perf_counter()
        # the network of bench/graph.py's scale test (scale_simulate), simulated on the row's device
        data = kinetic_ising(n, t, n_communities=20 if n >= 200 else 4, seed=0, p_out=min(0.1 * 200 / n, 0.1),
                             reference_degree=None, device=device)
        sync()
        simulated = time.perf_counter() - start
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        w = infer_couplings(data.spikes, max_iter=10, device=device)
        sync()
        wall = time.perf_counter() - start
        return peaks({"seconds": wall, "throughput": n * t / wall, "simulate_seconds": simulated,
                      "finite": bool(torch.isfinite(w).all())})
    raise ValueError(f"unknown child kind {kind!r}")


def run_child(args: list[str], timeout: float, cwd: Path = ROOT) -> tuple[dict | None, str | None, float]:
    """``(last JSON line of stdout or None, error text, wall seconds)`` of ``python args`` with a time-out."""
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timeout after {timeout:.0f} s", time.perf_counter() - start
    wall = time.perf_counter() - start
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:] or [""]
        # the headline: the last line naming an error (Hydra ends with a hint line), else the last line
        headline = next((ln.strip() for ln in reversed(tail) if re.search(r"Error|Exception", ln)
                         and "HYDRA_FULL_ERROR" not in ln), tail[-1].strip())
        return None, f"exit {proc.returncode}: {headline}\n" + "\n".join(tail), wall
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    return (json.loads(lines[-1]) if lines else None), None, wall


def run_train_row(name: str, device: str, size: str, timeout: float, tmp: Path) -> tuple[dict | None, str | None]:
    sizes = SIZES[size]
    run_dir = tmp / f"{name}_{device}"
    out = tmp / f"{name}_{device}.json"
    small = SMALL_TRAIN[name] if size == "small" else []
    warmup, steps = sizes["steps"][device]
    overrides = [*TRAIN_ROWS[name], *sizes["train_data"], *small, f"hydra.run.dir={run_dir}", "logger=none",
                 "callbacks=none", "test=false", "trainer=gpu" if device == "cuda" else "trainer=cpu",
                 "trainer.max_epochs=100000", f"+trainer.max_steps={warmup + steps}", "+trainer.limit_val_batches=0",
                 "+trainer.enable_progress_bar=false", "+trainer.enable_checkpointing=false",
                 "+callbacks.gpu_check._target_=bench.gpu_check.step_timer", f"+callbacks.gpu_check.out={out}",
                 f"+callbacks.gpu_check.warmup={warmup}", f"+callbacks.gpu_check.steps={steps}"]
    _, err, wall = run_child(["train.py", *overrides], timeout)
    if err:
        return None, err
    if not out.is_file():
        return None, "train.py finished without the timer's result"
    return {**json.loads(out.read_text()), "process_seconds": wall}, None


# ------------------------------------------------------------------------------------------------ the check
def cuda_tests(collect_only: bool, timeout: float) -> dict:
    """``pytest -m gpu`` on the test files that use the marker (``collect_only``: collection only, which must find
    tests)."""
    files = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in f.read_text())
    if not files:
        return {"ok": False, "error": "no test file uses the gpu marker", "seconds": 0.0, "collect_only": collect_only}
    args = ["-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    if collect_only:
        args.insert(2, "--collect-only")
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout after {timeout:.0f} s", "seconds": time.perf_counter() - start}
    out = {"seconds": time.perf_counter() - start, "returncode": proc.returncode, "collect_only": collect_only}
    if collect_only:
        ids = [ln for ln in proc.stdout.splitlines() if "::" in ln]
        out.update(collected=len(ids), ok=proc.returncode == 0 and len(ids) > 0, tests=ids)
        if not out["ok"]:
            out["error"] = (f"collection found {len(ids)} tests marked gpu (exit {proc.returncode})\n"
                            f"{proc.stdout[-2000:]}")
        return out
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", summary)}
    out.update(summary=summary, counts=counts,
               ok=proc.returncode == 0 and counts.get("passed", 0) > 0 and not counts.get("skipped"))
    if not out["ok"]:
        out["error"] = f"pytest -m gpu: {summary}\n{proc.stdout[-3000:]}"
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def side_summary(side: dict | None) -> str:
    return "" if side is None else f"{side['throughput']:.4g}" if side.get("throughput") else "–"


def fmt_mib(side: dict | None, key: str) -> str:
    return f"{side[key]:.0f}" if side and side.get(key) is not None else "–"


def print_table(rows: list[dict]) -> None:
    head = ["item", "size", "unit", "GPU s", "CPU s", "GPU rate", "CPU rate", "speed-up", "GPU MiB", "CPU RSS MiB",
            "note / error"]
    body = []
    for r in rows:
        g, c = r.get("device"), r.get("cpu")
        speed = f"{r['speedup']:.1f}x" if r.get("speedup") else ""
        note = "; ".join(filter(None, [(r.get("error") or "").split("\n")[0], r.get("note")]))
        body.append([r["item"], r["size"], r["unit"], f"{g['seconds']:.2f}" if g else "–",
                     f"{c['seconds']:.2f}" if c else "–", side_summary(g) or "–", side_summary(c) or "–", speed,
                     fmt_mib(g, "peak_gpu_mib"), fmt_mib(c, "peak_rss_mib"), note[:90]])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    for line in [head, ["-" * w for w in widths], *body]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="CPU only, small sizes (what CI runs)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole check")
    parser.add_argument("--row-cap-s", type=float, default=90.0, help="time cap of one measurement")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "DEVICE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(child(*args.child)))
        return 0

    import torch

    t_start = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.cpu:
        print("no CUDA device: run `python bench/gpu_check.py --cpu` for the CPU-only check", file=sys.stderr)
        return 2
    size = "full" if cuda else "small"
    sizes = SIZES[size]
    left = lambda: args.budget_s - (time.perf_counter() - t_start)  # noqa: E731
    results = {"torch": torch.__version__, "cuda": torch.version.cuda, "mode": "cuda" if cuda else "cpu",
               "device": torch.cuda.get_device_name(0) if cuda else "cpu", "cpu_count": os.cpu_count(),
               "git_commit": git_commit(), "budget_s": args.budget_s, "size": size, "rows": []}
    print(f"[gpu_check] torch {results['torch']}, device {results['device']}, commit {results['git_commit']}",
          flush=True)

    print("[gpu_check] CUDA tests: " + ("collecting (--cpu: not run)" if not cuda else "pytest -m gpu"), flush=True)
    tests = results["cuda_tests"] = cuda_tests(not cuda, min(240.0, max(30.0, left() * 0.4)))
    print(f"[gpu_check] CUDA tests: {'skipped: no CUDA, ' if not cuda else ''}"
          f"{tests.get('summary') or str(tests.get('collected')) + ' collected'}"
          f"{'' if tests['ok'] else ' FAILED'} ({tests['seconds']:.0f} s)", flush=True)

    sides = 2 if cuda else 1
    pending = [len(TRAIN_ROWS) * sides + 1 + 2 * sides]  # measurements still to run

    def measure(label: str, fn) -> tuple[dict | None, str | None, str | None]:
        """``(side, error, note)``. Capped at ``--row-cap-s`` and at twice this measurement's share of what is
        left of the budget (at least 15 s); skipped (a note) when less than that is left."""
        remaining = left() - 5
        share = remaining / pending[0]
        pending[0] -= 1
        if remaining < 15:
            return None, None, f"skipped: {remaining + 5:.0f} s of the budget left"
        timeout = min(args.row_cap_s, max(2 * share, 15.0), remaining)
        print(f"[gpu_check] {label} (cap {timeout:.0f} s)", flush=True)
        try:
            side, err = fn(timeout)
        except Exception as exc:  # noqa: BLE001  a check reports every failure and goes on
            side, err = None, f"{type(exc).__name__}: {exc}"
        return side, err, None

    def add_row(item: str, unit: str, size_text: str, device_side, cpu_side, note=None, error=None) -> dict:
        row = {"item": item, "size": size_text, "unit": unit, "device": device_side, "cpu": cpu_side}
        if device_side and cpu_side and device_side.get("throughput") and cpu_side.get("throughput"):
            row["speedup"] = device_side["throughput"] / cpu_side["throughput"]
        if note:
            row["note"] = note
        if error:
            row["error"] = error
        results["rows"].append(row)
        return row

    def both(label: str, run) -> tuple[dict | None, dict | None, str | None, str | None]:
        """Measure on the GPU (when there is one) and on the CPU: ``(device, cpu, error, note)``. A CPU side that
        runs out of time is a note (the GPU side's speed-up is then a lower bound); anything else is an error."""
        errors, notes = [], []
        dev = None
        if cuda:
            dev, err, note = measure(f"{label} on cuda", lambda timeout: run("cuda", timeout))
            errors += [f"GPU: {err}"] if err else []
            notes += [f"GPU {note}"] if note else []
        cpu, err, note = measure(f"{label} on cpu", lambda timeout: run("cpu", timeout))
        if err and err.startswith("timeout") and cuda:
            notes.append(f"CPU {err}")
        elif err:
            errors.append(f"CPU: {err}")
        notes += [f"CPU {note}"] if note else []
        return dev, cpu, "; ".join(errors) or None, "; ".join(notes) or None

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        tmp = Path(tmp)
        for name in TRAIN_ROWS:
            dev, cpu, err, note = both(name, lambda device, timeout, name=name: run_train_row(
                name, device, size, timeout, tmp))
            steps = "/".join(f"{sizes['steps'][d][1]}" for d in (("cuda", "cpu") if cuda else ("cpu",))) + " steps"
            steps += " bf16-mixed" if dev and "bf16" in dev.get("precision", "") else ""
            data = ("kising 100 x 50,000" if size == "full"
                    else f"kising {100 if name == 'glm' else 40} x 4,000, window 16")
            add_row(name, UNITS["train"], f"{data}, {steps}", dev, cpu, note, err)

        # LRG: numpy/scipy only (no device path): one child times the dense and the scalable coarse-graining
        lrg, err, note = measure("lrg dense + scalable on cpu",
                                 lambda timeout: _child_side("lrg", "cpu", size, timeout))
        n = sizes["lrg_n"]
        for path in ("dense", "scalable"):
            side = None
            if lrg:
                side = {"seconds": lrg[f"{path}_seconds"], "throughput": n / lrg[f"{path}_seconds"],
                        "peak_rss_mib": lrg["peak_rss_mib"]}
                if path == "scalable":
                    side["ari_scalable_vs_exact"] = lrg["ari_scalable_vs_exact"]
            add_row(f"lrg {path}", UNITS["lrg"], f"N={n}", None, side,
                    "; ".join(filter(None, [note, "numpy/scipy: CPU only" if cuda else None])) or None, err)

        preset, seconds = sizes["lif"]
        dev, cpu, err, note = both("lif", lambda device, timeout: _child_side("lif", device, size, timeout))
        add_row("lif", UNITS["lif"], f"{preset}, {seconds:g} s", dev, cpu, note, err)

        n, t = sizes["infer"]
        dev, cpu, err, note = both("infer_couplings",
                                   lambda device, timeout: _child_side("infer", device, size, timeout))
        add_row("infer_couplings", UNITS["infer"], f"{n} x {t:,}, 10 L-BFGS it.", dev, cpu, note, err)

    results["elapsed_s"] = time.perf_counter() - t_start
    failed = [r["item"] for r in results["rows"] if r.get("error")] + ([] if tests["ok"] else ["cuda tests"])
    results["ok"] = not failed
    print()
    print_table(results["rows"])
    for r in results["rows"]:
        if r.get("error"):
            print(f"\n[gpu_check] {r['item']} FAILED:\n{r['error']}")
    if not tests["ok"]:
        print(f"\n[gpu_check] CUDA tests FAILED:\n{tests.get('error')}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from dgrn.data import atomic_write

    atomic_write(out, json.dumps(results, indent=2))
    print(f"\n[gpu_check] {'OK' if not failed else 'FAILED: ' + ', '.join(failed)}; "
          f"{results['elapsed_s']:.0f} s elapsed (budget {args.budget_s:.0f} s); wrote {out}")
    return 0 if not failed else 1


def _child_side(kind: str, device: str, size: str, timeout: float) -> tuple[dict | None, str | None]:
    side, err, wall = run_child([__file__, "--child", kind, device, size], timeout)
    if side is None and err is None:
        err = "no result printed"
    if side is not None:
        side["process_seconds"] = wall
    return side, err


if __name__ == "__main__":
    sys.exit(main())
