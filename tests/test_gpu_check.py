"""bench/gpu_check.py --cpu: the GPU check at small sizes on the CPU, so that it cannot rot before a GPU arrives."""
from __future__ import annotations

import json

from conftest import run_script

ROWS = ["glm", "cmps", "dgrn", "lrg dense", "lrg scalable", "lif", "infer_couplings"]


def test_gpu_check_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = run_script(["bench/gpu_check.py", "--cpu", "--out", str(out)], timeout=400)
    result = json.loads(out.read_text())
    assert {"torch", "device", "git_commit", "mode", "size", "budget_s", "elapsed_s", "cuda_tests", "rows",
            "ok"} <= set(result)
    assert result["mode"] == "cpu" and result["size"] == "small" and result["ok"] is True
    # the CUDA tests are only collected here, and the selection must still find them
    tests = result["cuda_tests"]
    assert tests["ok"] and tests["collect_only"] and tests["collected"] > 0
    assert all("::" in t for t in tests["tests"])
    assert [r["item"] for r in result["rows"]] == ROWS
    for row in result["rows"]:
        assert "error" not in row, row
        assert {"item", "size", "unit", "device", "cpu"} <= set(row)
        assert row["device"] is None and "speedup" not in row  # no GPU column under --cpu
        assert row["cpu"]["throughput"] > 0 and row["cpu"]["seconds"] > 0 and row["cpu"]["peak_rss_mib"] > 0, row
    # one printed table, with every row
    table = proc.stdout[proc.stdout.index("item "):]
    assert all(f"\n{name} " in table for name in ROWS)
    assert "[gpu_check] OK" in proc.stdout
