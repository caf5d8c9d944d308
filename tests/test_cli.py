"""Errors of the ``dgrn`` command and of ``build_dataset``: user errors short, bugs with their traceback."""
import numpy as np
import pytest

from conftest import run_script
from dgrn import cli, datasets

MODEL = "glm_kising100"


def test_type_error_inside_a_simulator_propagates_unchanged(monkeypatch):
    def source(n: int):
        return len(n)  # a bug inside the simulator: TypeError although the arguments are right

    monkeypatch.setitem(datasets.DATASETS, "broken", source)
    with pytest.raises(TypeError, match="has no len") as info:
        datasets.build_dataset("broken", n=3)
    assert "bad arguments" not in str(info.value)
    assert info.traceback[-1].name == "source"  # raised where the bug is, not re-raised by build_dataset


def test_arguments_that_do_not_fit_the_simulator_are_refused_before_it_runs(monkeypatch):
    calls = []
    monkeypatch.setitem(datasets.DATASETS, "counted", lambda n, t=1: calls.append(n))
    with pytest.raises(ValueError, match=r"bad arguments for dataset 'counted'.*'colour'.*takes \['n', 't'\]"):
        datasets.build_dataset("counted", n=3, colour="red")
    with pytest.raises(ValueError, match="missing a required argument: 'n'"):
        datasets.build_dataset("counted", t=3)
    assert calls == []


@pytest.mark.parametrize("name, kwargs, bad", [
    ("kinetic_ising", {"n": 10, "t": 20, "colour": 1}, "colour"),
    ("clustered_lif", {"preset": "tiny", "n_exc": 40, "bogus": 1}, "bogus"),  # through lif_preset's **overrides
    ("connectome", {"path": "c.csv", "t": 10, "pre": "src", "bogus": 1}, "bogus"),  # and load_connectome's
])
def test_unknown_arguments_of_real_simulators_give_the_short_message(name, kwargs, bad):
    with pytest.raises(ValueError, match=f"bad arguments for dataset '{name}'.*'{bad}'"):
        datasets.build_dataset(name, **kwargs)


def test_arguments_forwarded_through_wrappers_are_accepted():
    sig = datasets.accepted_arguments("clustered_lif")
    sig.bind(preset="tiny", n_exc=40, j_ee=0.1, sample_seed=3)  # preset overrides and clustered_lif's own
    datasets.accepted_arguments("connectome").bind(path="c.csv", t=10, dynamics="lif", pre="src")
    datasets.accepted_arguments("recording").bind(path="r.nwb", units=[1, 2])  # reader options: any


def test_cli_bad_file_is_one_line_and_exit_2_and_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, counts=np.zeros((5, 3)))  # no `spikes` array
    args = ["-m", "dgrn.cli", "predict", "--model", MODEL, "--spikes", str(bad)]
    proc = run_script(args, check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {bad}") and "'spikes'" in line and "counts" in line
    proc = run_script(args[:2] + ["--debug"] + args[2:], check=False)
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize("bug", [TypeError("unexpected keyword"), KeyError("level3")])
def test_cli_lets_bugs_raise(monkeypatch, bug):
    def command(args):
        raise bug

    monkeypatch.setattr(cli, "_zoo_list", command)
    with pytest.raises(type(bug)):
        cli.main(["zoo", "list"])


def test_cli_missing_file_is_one_line_and_exit_2(capsys, tmp_path):
    assert cli.main(["predict", "--model", MODEL, "--spikes", str(tmp_path / "none.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "none.npz" in err and err.count("\n") == 1


def test_cli_communities_reports_k_and_writes_the_labels(capsys, tmp_path):
    import numpy as np
    from sklearn.metrics import adjusted_mutual_info_score

    from dgrn.sim import kinetic_ising

    data = kinetic_ising(100, 5000, n_communities=4, seed=0)
    data.save(tmp_path / "rec.npz")
    assert cli.main(["communities", str(tmp_path / "rec.npz")]) == 0
    out = capsys.readouterr().out
    saved = np.load(tmp_path / "rec.communities.npz")
    assert out.startswith(f"{len(saved['sizes'])} communities of 100 neurons (leiden_consensus)")
    assert "AMI against the file's planted communities (4)" in out
    assert adjusted_mutual_info_score(data.true_communities.numpy(), saved["labels"]) > 0.95
    assert saved["couplings"].shape == (100, 100) and saved["sizes"].sum() == 100
    assert cli.main(["communities", str(tmp_path / "rec.npz"), "--method", "spectral"]) == 2
    assert capsys.readouterr().err.strip() == "error: method 'spectral' needs n_communities"
