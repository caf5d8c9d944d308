"""The documentation cannot rot: every shell and Python block of README.md and docs/ runs.

Each fenced block (```bash, ```sh, ```shell, ```console, ```python) of README.md and docs/**/*.md is one test case,
with the id ``PAGE:LINE``. A page's blocks run in order in one temporary directory of their own (a block may use a
file an earlier block wrote): shell blocks with ``bash -e -o pipefail``, Python blocks with this interpreter. That
directory links the repository's ``train.py``, ``evaluate.py`` and ``bench/``, holds a copy of ``configs/`` and its own
``checkpoints/`` (the zoo models linked), so ``dgrn publish`` writes there, and runs write under it
(``DGRN_LOG_DIR``, ``TMPDIR``); nothing is written into the repository.

An HTML comment on the line before a fence marks a block:

* ``<!-- snippet: slow -->``: runs only with ``-m slow`` (long trainings, full-size examples);
* ``<!-- snippet: skip NAME -->``: never runs here; ``NAME`` says why and appears in the test id (``install``:
  installs into the environment; ``runs-the-test-suite``; ``needs-gpu``; ``needs-slurm``; ``needs-your-recording``;
  ``benchmark``: minutes to hours of CPU time, its numbers are in docs/benchmarks; ``hours-long``: a full-size
  sweep). Skipped shell blocks are still checked statically: the scripts they run exist, and so do the ``--options``
  they pass.

Output shown in the docs goes in ```text blocks, which are not run. Running one case (``-k``) first runs the page's
earlier non-slow blocks it may depend on.

Besides the blocks: README.md stays under 200 lines and shows the install and test commands that .ci/run runs,
every option of every config group is named in docs/configs.md, links between the pages resolve, and (when mkdocs is
installed, as with the ``docs`` and ``dev`` extras) ``mkdocs build --strict`` passes.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL, PYTHON = ("bash", "sh", "shell", "console"), ("python", "py")
#: repository entries a page's directory links to (the commands in the docs run from the repository root)
LINKED = ("train.py", "evaluate.py", "bench", "constraints-cpu.txt", "pyproject.toml")
MARKER = re.compile(r"<!--\s*snippet:\s*(slow|skip\s+[\w.-]+)\s*-->")
FENCE = re.compile(r"^(\s*)```+\s*([\w+-]*)")
TIMEOUT, SLOW_TIMEOUT = 900, 4 * 3600


@dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository root
    line: int  # line of the opening fence (1-based)
    lang: str  # "shell" or "python"
    code: str
    mark: str  # "", "slow" or "skip NAME"

    @property
    def id(self) -> str:
        return f"{self.page}:L{self.line}" + (f"-{self.mark.replace(' ', '-')}" if self.mark else "")


def parse(path: Path) -> list[Block]:
    """The runnable blocks of one markdown page, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = path.relative_to(ROOT).as_posix()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2).lower()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")), None)
        if end is None:
            raise AssertionError(f"{page}:{i + 1}: unclosed code fence")
        body = [line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end]]
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = MARKER.search(prev)
        mark = re.sub(r"\s+", " ", mark.group(1)) if mark else ""
        if lang in SHELL + PYTHON:
            if lang == "console":  # "$ command" lines are commands, the rest is their output
                body = [line[2:] for line in body if line.startswith("$ ")]
            blocks.append(Block(page, i + 1, "shell" if lang in SHELL else "python", "\n".join(body) + "\n", mark))
        elif mark:
            raise AssertionError(f"{page}:{i + 1}: a snippet marker on a ```{lang} block, which never runs")
        i = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in parse(page)]


def _param(block: Block):
    marks = [pytest.mark.slow] if block.mark == "slow" else []
    return pytest.param(block, id=block.id, marks=marks)


# ----------------------------------------------------------------------------------------------- running blocks
_dirs: dict[str, Path] = {}
_done: dict[tuple[str, int], bool] = {}


def _page_dir(page: str, factory: pytest.TempPathFactory) -> Path:
    if page not in _dirs:
        work = factory.mktemp(re.sub(r"\W", "_", page))
        for name in LINKED:
            if (ROOT / name).exists():
                (work / name).symlink_to(ROOT / name)
        # a copy, not a link: `dgrn publish` adds configs/model/NAME.yaml beside the zoo folder
        shutil.copytree(ROOT / "configs", work / "configs")
        zoo = work / "checkpoints"
        zoo.mkdir()
        for model in (ROOT / "checkpoints").iterdir():
            if model.is_dir():
                (zoo / model.name).symlink_to(model)
        (work / "tmp").mkdir()
        _dirs[page] = work
    return _dirs[page]


def _env(work: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    bindir = str(Path(sys.executable).parent)
    env.update({
        "PATH": bindir + os.pathsep + env.get("PATH", ""),  # `python` and `dgrn` of this environment
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]),
        "DGRN_LOG_DIR": str(work / "logs"),
        "DGRN_CHECKPOINTS": str(work / "checkpoints"),
        "TMPDIR": str(work / "tmp"),
        "WANDB_DIR": str(work / "tmp"),
        "MPLBACKEND": "Agg",
        "PYTHONWARNINGS": "ignore",
    })
    return env


def _run(block: Block, work: Path) -> None:
    if block.lang == "python":
        script = work / f"_{re.sub(r'[^A-Za-z0-9]', '_', block.page)}_L{block.line}.py"
        script.write_text(block.code)
        cmd = [sys.executable, script.name]
    else:
        cmd = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    timeout = SLOW_TIMEOUT if block.mark == "slow" else TIMEOUT
    proc = subprocess.run(cmd, cwd=work, env=_env(work), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{block.id} exited with {proc.returncode}\n--- block\n{block.code}"
                             f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")


def _ensure(block: Block, work: Path) -> None:
    key = (block.page, block.line)
    if key not in _done:
        _done[key] = False
        _run(block, work)
        _done[key] = True
    elif not _done[key]:
        raise AssertionError(f"{block.id} failed earlier")


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_block(block: Block, tmp_path_factory) -> None:
    if block.mark.startswith("skip"):
        pytest.skip(block.mark)
    work = _page_dir(block.page, tmp_path_factory)
    for earlier in BLOCKS:  # blocks this one may depend on: the page's earlier ones that run by default
        if earlier.page == block.page and earlier.line < block.line and not earlier.mark:
            try:
                _ensure(earlier, work)
            except AssertionError as err:
                pytest.fail(f"an earlier block of {block.page} failed:\n{err}")
    _ensure(block, work)


# ------------------------------------------------------------------------------------- static checks of skipped ones
def _commands(code: str) -> list[list[str]]:
    """Simple commands of a shell block (comments and continuation lines joined), split into words."""
    text = re.sub(r"\\\n", " ", code)
    out = []
    for line in text.splitlines():
        for part in re.split(r"&&|\|\||;|\|", line):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:
                continue
            if words:
                out.append(words)
    return out


def _options(words: list[str]) -> list[str]:
    return [w.split("=")[0] for w in words if w.startswith("--") and len(w) > 2]


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for b in BLOCKS if b.lang == "shell" and b.mark.startswith("skip")])
def test_skipped_block_commands_exist(block: Block) -> None:
    """A block that cannot run here still names scripts that exist, with options they define."""
    cli = (ROOT / "dgrn" / "cli.py").read_text()
    for words in _commands(block.code):
        if words[0].startswith(("python", "./")) and len(words) > 1:
            script = next((w for w in words[1:] if w.endswith(".py")), None)
            if script is None:
                continue
            path = ROOT / script
            assert path.is_file(), f"{block.id}: {script} does not exist"
            source = path.read_text()
            for option in _options(words):
                assert option in source, f"{block.id}: {script} has no option {option}"
        elif words[0] == "dgrn":
            for option in _options(words):
                assert f'"{option}"' in cli or option == "--help", f"{block.id}: dgrn has no option {option}"


# --------------------------------------------------------------------------------------------------- other checks
def test_readme_is_short_and_installs_like_ci() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200, "README.md is over 200 lines: move details into docs/"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for prefix in ("pip install", "python -m pytest"):
        commands = [line.strip() for line in ci if line.strip().startswith(prefix)]
        assert commands, f".ci/run has no {prefix!r} line"
        for command in commands:
            assert command in readme, f"README.md does not show what .ci/run runs: {command}"


def test_configs_reference_names_every_option() -> None:
    """docs/configs.md names every option of every config group as `group/option` or in the group's section."""
    ref = (ROOT / "docs" / "configs.md").read_text()
    sections = {m.group(1): m.start() for m in re.finditer(r"^## `?([\w/]+)`?", ref, re.M)}
    missing = []
    for yaml in sorted((ROOT / "configs").rglob("*.yaml")):
        rel = yaml.relative_to(ROOT / "configs")
        if len(rel.parts) == 1:  # train.yaml, eval.yaml
            if f"`{rel.name}`" not in ref and f"configs/{rel.name}" not in ref:
                missing.append(str(rel))
            continue
        group, option = "/".join(rel.parts[:-1]), rel.stem
        if group not in sections:
            missing.append(f"{group} (no section)")
            continue
        start = sections[group]
        end = min([s for s in sections.values() if s > start], default=len(ref))
        if f"`{option}`" not in ref[start:end]:
            missing.append(f"{group}/{option}")
    assert not missing, f"docs/configs.md does not document: {missing}"


def test_links_resolve() -> None:
    """Relative links of README.md point at files; mkdocs checks the links inside docs/ (strict build below)."""
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


def test_mkdocs_build_strict(tmp_path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    cmd = [mkdocs] if mkdocs else [sys.executable, "-m", "mkdocs"]
    proc = subprocess.run([*cmd, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
