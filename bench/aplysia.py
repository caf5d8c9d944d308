"""Real recordings: held-out NLL of DGRN against independent neurons and the GLM on the 30 Aplysia recordings.

    python bench/aplysia.py [--recordings Jun0214da01 ...] [--jobs 2]

Every number comes from ``train.py`` on ``data=aplysia`` (20 ms bins, the same contiguous-block splits for every
model, the best-validation checkpoint scored on the test split): ``model=independent``, ``model=glm``, and DGRN as
``experiment=dgrn_aplysia`` (``model.init=rates``) and, with ``--models dgrn_glm_init``, with the model's default
``init=glm``, and with ``--models hmm_glm`` the switching GLM (``experiment=hmm_glm_aplysia``: ``model=hmm_glm`` with
``model.l1=0.001``). Writes ``bench/results/aplysia.json`` and prints one row per recording and the counts of recordings
where DGRN is at or below each baseline. Each result is written as soon as it is known, and a rerun skips the
(recording, model) pairs already in the output file (``--fresh`` starts over), so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dgrn import run_train  # noqa: E402
from dgrn.data import aplysia_recordings, atomic_write  # noqa: E402

MODELS = {
    "independent": ["data=aplysia", "model=independent", "renorm=none"],
    "glm": ["data=aplysia", "model=glm", "renorm=none"],
    "dgrn": ["experiment=dgrn_aplysia"],
    "dgrn_glm_init": ["experiment=dgrn_aplysia", "model.init=glm"],
    "hmm_glm": ["experiment=hmm_glm_aplysia"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", nargs="+", default=None, help="default: all 30")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "aplysia.json"))
    parser.add_argument("--fresh", action="store_true", help="ignore the results already in --out")
    args = parser.parse_args()
    recordings = args.recordings or aplysia_recordings()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {} if args.fresh or not out.exists() else json.loads(out.read_text())["recordings"]
    tasks = [(rec, model) for rec in recordings for model in args.models if model not in results.get(rec, {})]
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as tmp:
        def run(task):
            rec, model = task
            res = run_train([*MODELS[model], f"data.dataset.recording={rec}"], Path(tmp) / f"{rec}_{model}")
            print(f"{rec} {model}: test NLL {res['metrics']['test/nll']:.5f} ({res['seconds']:.0f} s)", flush=True)
            with lock:  # saved at once: an interrupted run keeps what it has
                results.setdefault(rec, {})[model] = {"test_nll": res["metrics"]["test/nll"],
                                                      "best_val_nll": res["metrics"].get("best/val/nll"),
                                                      "seconds": res["seconds"]}
                atomic_write(out, json.dumps({"recordings": results}, indent=1))
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(run, tasks))
    table = {rec: {model: results[rec][model] for model in args.models} for rec in recordings}
    print("\nrecording      " + "  ".join(f"{m:>13}" for m in args.models))
    for rec, row in table.items():
        print(f"{rec:14} " + "  ".join(f"{row[m]['test_nll']:13.5f}" for m in args.models))
    for model in args.models:
        print(f"median {model}: {statistics.median(r[model]['test_nll'] for r in table.values()):.5f}")
    if "dgrn" in args.models:
        for base in [m for m in args.models if m != "dgrn"]:
            wins = sum(r["dgrn"]["test_nll"] <= r[base]["test_nll"] for r in table.values())
            print(f"dgrn at or below {base}: {wins} of {len(table)}")


if __name__ == "__main__":
    main()
