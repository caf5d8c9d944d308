"""docs/tutorial.md runs as written: its ```python blocks, in order, each as its own process in one folder.

Checks that every figure the page shows (``tutorial/NAME.png``) is produced by the run under the same name, that the
numbers printed match the ```text block shown after each step, and what the page claims (couplings and communities
recovered, DGRN better than independent neurons and level with the GLM).

The tutorial's blocks carry ``<!-- snippet: skip tested-by-test_tutorial -->`` so the docs test does not run them a
second time. ``python tests/test_tutorial.py`` regenerates the figures in docs/tutorial/ (and prints the outputs, to
paste into the page's text blocks when they change).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "tutorial.md"
FIGURES = PAGE.parent / "tutorial"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
IMAGE = re.compile(r"!\[[^\]]*\]\(tutorial/([^)\s]+)\)")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")
MAX_FIGURE_BYTES = 150_000


def steps(text: str) -> list[tuple[str, str | None]]:
    """``(code, expected output or None)`` for every ```python block, in page order; the expected output is the
    ```text block that directly follows it (only blank lines between)."""
    blocks = [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]
    out = []
    for k, (lang, body, _, end) in enumerate(blocks):
        if lang != "python":
            continue
        nxt = blocks[k + 1] if k + 1 < len(blocks) else None
        expected = nxt[1] if nxt and nxt[0] == "text" and not text[end:nxt[2]].strip() else None
        out.append((body, expected))
    return out


def run_tutorial(workdir: Path, timeout: float = 600) -> list[str]:
    """Run the page's python blocks in ``workdir``; returns each block's stdout. Fails with the block's output."""
    # one thread per process: the numbers do not depend on the core count, and shared CI cores are not oversubscribed
    env = {"OMP_NUM_THREADS": "1", **os.environ, "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"}
    outputs = []
    for k, (code, _) in enumerate(steps(PAGE.read_text()), start=1):
        script = workdir / f"step{k}.py"
        script.write_text(code)
        proc = subprocess.run([sys.executable, script.name], cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"tutorial step {k} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
        outputs.append(proc.stdout)
    return outputs


def close(expected: str, got: str, rel: float = 0.02, abs_: float = 0.005) -> bool:
    """Same text up to the numbers, and every number within ``abs_ + rel * |expected|``."""
    if NUMBER.sub("#", expected.strip()) != NUMBER.sub("#", got.strip()):
        return False
    pairs = zip(map(float, NUMBER.findall(expected)), map(float, NUMBER.findall(got)))
    return all(abs(a - b) <= abs_ + rel * abs(a) for a, b in pairs)


@pytest.fixture(scope="module")
def tutorial_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tutorial")
    return workdir, run_tutorial(workdir)


def test_blocks_are_marked_for_the_docs_test():
    text = PAGE.read_text()
    for m in FENCE.finditer(text):
        if m.group(1) == "python":
            before = text[:m.start()].rstrip().splitlines()[-1]
            assert before.strip() == "<!-- snippet: skip tested-by-test_tutorial -->", before


def test_figures_are_the_ones_the_tutorial_makes(tutorial_run):
    workdir, _ = tutorial_run
    shown = IMAGE.findall(PAGE.read_text())
    assert len(shown) >= 5
    for name in shown:
        made, committed = workdir / name, FIGURES / name
        assert made.is_file(), f"the tutorial shows tutorial/{name} but does not write {name}"
        assert committed.is_file(), f"docs/tutorial/{name} is missing: run python tests/test_tutorial.py"
        for png in (made, committed):
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert png.stat().st_size < MAX_FIGURE_BYTES, f"{png} is {png.stat().st_size} bytes"
    assert {p.name for p in FIGURES.glob("*.png")} == set(shown), "docs/tutorial/ holds figures the page does not show"


def test_printed_numbers_match_the_page(tutorial_run):
    _, outputs = tutorial_run
    for k, ((_, expected), got) in enumerate(zip(steps(PAGE.read_text()), outputs), start=1):
        if expected is not None:
            assert close(expected, got), f"step {k} printed\n{got}\nthe page shows\n{expected}"


def test_results_are_what_the_page_claims(tutorial_run):
    workdir, outputs = tutorial_run
    auroc = [float(x) for x in re.findall(r"(?:ML|correlation) (\d\.\d+)", outputs[1])]
    assert auroc[0] > 0.9 and auroc[1] < 0.7, outputs[1]                      # couplings, not correlations
    ami = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+)\s.*AMI (\S+)$", outputs[2], re.M)}
    assert ami["gnn"] >= 0.9 and ami["leiden"] >= 0.9, ami                     # planted communities recovered
    level1 = re.search(r"level 1:\s+(\d+) supernodes", outputs[3])
    assert level1 and 1 < int(level1.group(1)) < 50, outputs[3]                # the flow coarse-grains
    results = json.loads((workdir / "results.json").read_text())
    nll = {name: r["test/nll"] for name, r in results.items()}
    assert nll["DGRN"] < nll["independent"] - 0.005, nll                       # couplings pay
    assert abs(nll["DGRN"] - nll["GLM"]) < 0.003, nll                          # level with the true model class
    levels = [results["DGRN"][f"test/nll_level{k}"] for k in range(3)]
    assert all(0 < v < 0.7 for v in levels), levels                             # below ln 2 per unit at every level
    table = [[float(v) for v in line.split()] for line in outputs[5].splitlines() if re.match(r"\s+\d+\s+\d+\s", line)]
    assert len(table) == 3, outputs[5]
    for level, units, model, shuffled, independent in table:                   # the model beats both nulls
        assert model < min(shuffled, independent), outputs[5]
    assert float(re.search(r"production .*: (\S+) nats", outputs[5]).group(1)) > 0, outputs[5]


if __name__ == "__main__":  # regenerate docs/tutorial/*.png from a fresh run and print the outputs
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for k, out in enumerate(run_tutorial(Path(tmp)), start=1):
            print(f"--- step {k}\n{out}", end="")
        print(f"--- {time.perf_counter() - start:.0f} s")
        FIGURES.mkdir(exist_ok=True)
        for old in FIGURES.glob("*.png"):
            old.unlink()
        for name in IMAGE.findall(PAGE.read_text()):
            shutil.copy(Path(tmp) / name, FIGURES / name)
            print(f"docs/tutorial/{name}: {(FIGURES / name).stat().st_size // 1000} kB")
