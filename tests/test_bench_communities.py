"""bench/communities.py: one tiny cell of the community grid, computed for real, so the benchmark cannot rot."""
from __future__ import annotations

import numpy as np

from bench.communities import ami, cell_key, run_cell, summarize


def test_one_tiny_cell():
    methods = ["leiden", "spectral", "leiden_stable", "consensus", "leiden+denoised", "dmon"]
    rec = run_cell("planted", "kising", 1000, 0.5, 0, methods=methods, graphs=("ml", "true"))
    assert {"family", "dynamics", "bins", "fraction", "seed", "n", "n_obs", "k_planted", "rate", "graph_s",
            "results", "planted_self_ami", "cell_s"} <= set(rec)
    assert rec["n"] == 200 and rec["n_obs"] == 100 and rec["k_planted"] == 8 and 0 < rec["rate"] < 0.5
    assert set(rec["results"]) == {"ml", "true"} and set(rec["graph_s"]) == {"ml", "true"}
    assert rec["planted_self_ami"] == 1.0  # the planted partition scored against itself, by the same AMI
    assert set(rec["results"]["ml"]) == set(methods)
    assert set(rec["results"]["true"]) == set(methods) - {"leiden+denoised"}  # the noise of an inferred graph only
    for res in rec["results"].values():
        for r in res.values():
            assert "error" not in r, r
            assert -0.1 <= r["ami"] <= 1.0 and r["k"] >= 1 and r["k_err"] >= 0 and r["time_s"] >= 0
        assert res["spectral"]["k"] == rec["k_planted"] >= res["dmon"]["k"]  # told K (DMoN may leave a cluster empty)
    assert rec["results"]["true"]["leiden"]["ami"] > 0.8  # the true couplings carry the communities
    summary, table = summarize({cell_key("planted", "kising", 1000, 0.5, 0): rec})
    assert list(summary) == ["planted kising T=1000 f=0.5"] and "ml/leiden+denoised" in table


def test_ami_of_a_partition_with_itself_is_one():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    assert ami(labels, labels) == 1.0 and ami(labels, labels[::-1]) < 1.0
