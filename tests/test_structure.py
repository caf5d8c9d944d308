"""The package's structure: import order and layering, one meaning per exported name, declared dependencies, and
results written atomically. Static checks parse the sources with ``ast``; runtime ones use fresh interpreters."""
import ast
import importlib
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, deferred)`` for every absolute import in ``path``: ``from a.b import c`` gives ``a.b`` and
    ``a.b.c`` (``c`` may be a submodule); ``deferred`` when it sits inside a function (runs at call time)."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((alias.name, deferred) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                out.append((child.module, deferred))
                out.extend((f"{child.module}.{alias.name}", deferred) for alias in child.names)
            visit(child, inner)

    visit(tree, False)
    return out


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)


# ------------------------------------------------------------------------------------------------ import order
def test_spikedata_sits_below_the_recording_readers():
    """``dgrn.data.io`` (NWB, Neo, spike times) builds on ``dgrn.data.spikedata``; the container never imports the
    readers back, not even inside a method, and either module imports first in a fresh interpreter."""
    below = [m for m, _ in _imports(ROOT / "dgrn" / "data" / "spikedata.py") if m.startswith("dgrn")]
    assert not [m for m in below if m == "dgrn.data" or m.startswith("dgrn.data.io")], below
    assert ("dgrn.data.spikedata", False) in _imports(ROOT / "dgrn" / "data" / "io.py")
    for first, then in (("dgrn.data.io", "dgrn.data.spikedata"), ("dgrn.data.spikedata", "dgrn.data.io")):
        proc = _run(f"import {first}, {then}; assert {first}.SpikeData is {then}.SpikeData")
        assert proc.returncode == 0, proc.stderr


def test_graph_layer_serves_every_community_method_without_importing_higher_layers():
    """``find_communities(method="lrg" | "gnn")`` works from ``dgrn.graph`` alone, and importing ``dgrn.graph``
    loads neither ``dgrn.renorm`` nor ``dgrn.nn`` (they are imported when the method is called)."""
    code = """
import sys
import torch
from dgrn.graph import community_hierarchy, find_communities

def loaded(layer):
    return sorted(m for m in sys.modules if m == layer or m.startswith(layer + "."))

assert not loaded("dgrn.nn") and not loaded("dgrn.renorm"), (loaded("dgrn.nn"), loaded("dgrn.renorm"))
from dgrn.sim import planted_couplings

w, _ = planted_couplings(60, 3, generator=torch.Generator().manual_seed(0))
assert find_communities(w, "lrg").shape == (60,) and loaded("dgrn.renorm")
assert community_hierarchy(w, "lrg")
try:
    find_communities(w, "gnn")
except ValueError as err:
    assert "needs encoder" in str(err), err
else:
    raise AssertionError("gnn without an encoder must refuse")
from dgrn.graph.features import n_node_features
from dgrn.nn import CommunityEncoder

encoder = CommunityEncoder(n_node_features(), hidden_channels=8, num_layers=1, max_communities=4)
spikes = (torch.rand(200, 60, generator=torch.Generator().manual_seed(0)) < 0.2).float()
assert find_communities(w, "gnn", encoder=encoder, spikes=spikes).shape == (60,)
"""
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- exported names
def test_an_exported_name_means_one_thing():
    """A name exported by two subpackages is the same object (``dgrn.graph.as_adjacency`` reads ``A[i, j]`` as the
    edge ``j -> i``; the diffusion code's reader, ``i -> j``, has its own name)."""
    import numpy as np

    packages = ["dgrn.data", "dgrn.sim", "dgrn.graph", "dgrn.renorm", "dgrn.tn", "dgrn.nn", "dgrn.models"]
    exported = {p: {n: getattr(importlib.import_module(p), n) for n in importlib.import_module(p).__all__}
                for p in packages}
    clashes = [(a, b, name) for i, a in enumerate(packages) for b in packages[i + 1:]
               for name in set(exported[a]) & set(exported[b]) if exported[a][name] is not exported[b][name]]
    assert not clashes
    from dgrn.graph import as_adjacency
    from dgrn.renorm import read_diffusion_graph

    edge = (np.array([[0], [1]]), np.array([2.0]), 2)  # one edge, 0 -> 1
    assert as_adjacency(edge).toarray().tolist() == [[0.0, 0.0], [2.0, 0.0]]  # A[1, 0]: the edge 0 -> 1
    a, fmt = read_diffusion_graph(edge)
    assert a.toarray().tolist() == [[0.0, 2.0], [0.0, 0.0]] and fmt["kind"] == "edge_list"  # A[0, 1]


# ------------------------------------------------------------------------------------------------- dependencies
def _declared() -> tuple[set[str], set[str]]:
    """Canonical names of the distributions in ``dependencies`` and in the extras (dgrn's own excluded)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs):
        return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", r).group()).lower() for r in reqs} - {"dgrn"}

    extras = set().union(*(names(reqs) for reqs in project["optional-dependencies"].values()))
    return names(project["dependencies"]), extras


def test_third_party_imports_are_declared():
    """Every third-party module that ``dgrn/`` imports comes from a distribution pyproject.toml declares: in
    ``dependencies`` when imported with the module, in an extra at least when imported inside a function."""
    required, extras = _declared()
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for path in sorted((ROOT / "dgrn").rglob("*.py")):
        for module, deferred in _imports(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "dgrn":
                continue
            dists = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(top, [])}
            allowed = required | extras if deferred else required
            if not dists & allowed:
                missing.append(f"{path.relative_to(ROOT)}: {top} ({sorted(dists) or 'not installed'})")
    assert not missing, sorted(set(missing))


# ----------------------------------------------------------------------------------------------- atomic writes
#: functions and methods that write a file, and the argument that names it
_WRITERS = {"write_text", "write_bytes", "savefig", "save_file", "savez", "savez_compressed", "dump", "to_csv"}


def _unsafe_writes(path: Path) -> list[str]:
    """Writes in ``path`` whose target is not the temporary of :func:`dgrn.data.atomic_write` (by convention the
    name ``tmp``, or a handle ``fh`` opened on it)."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        mode = next((a.value for a in node.args[1:2] if isinstance(a, ast.Constant)), "r")
        writes = (name in _WRITERS or (name == "save" and owner in ("torch", "np", "numpy"))
                  or (name == "open" and isinstance(mode, str) and set(mode) & set("wax+")))
        targets = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        if writes and not targets & {"tmp", "fh"}:
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)[:80]}")
    return bad


def test_results_are_written_atomically():
    """Every file the package, the scripts and the benchmarks write goes through ``atomic_write`` (a crash never
    leaves a truncated ``metrics.json``, ``readouts.json``, figure or benchmark result)."""
    files = [*sorted((ROOT / "dgrn").rglob("*.py")), ROOT / "train.py", ROOT / "evaluate.py",
             # brian2_lif.py runs inside Brian 2's own environment (no dgrn there) and writes exchange files only
             *sorted(p for p in (ROOT / "bench").glob("*.py") if p.name != "brian2_lif.py")]
    assert not [line for path in files for line in _unsafe_writes(path)]
