"""Zoo: pretrained weights, sha256 checks, evaluate.py model=NAME, the dgrn CLI."""
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import ROOT, compose, run_script
from dgrn import zoo
from dgrn.metrics import edge_auroc
from dgrn.nn import BernoulliGLM

NAME = "glm_kising100"


@pytest.fixture
def private_zoo(tmp_path, monkeypatch):
    """A copy of the shipped zoo that a test may damage."""
    root = tmp_path / "zoo"
    shutil.copytree(ROOT / "checkpoints", root)
    monkeypatch.setenv("DGRN_CHECKPOINTS", str(root))
    return root


def test_pretrained_model_loads_in_eval_mode_and_knows_its_network():
    assert NAME in zoo.list_models()
    net = zoo.load_pretrained(NAME)
    assert isinstance(net, BernoulliGLM) and not net.training
    info = zoo.model_info(NAME)
    from dgrn.datasets import build_dataset

    truth = build_dataset(**{**info["data"]["dataset"], "t": 10}).true_couplings
    assert float(edge_auroc(net.coupling_matrix(), truth)) > 0.95


def test_create_model_is_the_one_door():
    assert isinstance(zoo.create_model("glm", n_neurons=5), BernoulliGLM)
    fresh = zoo.create_model(NAME)  # the architecture, untrained
    assert torch.count_nonzero(fresh.weight) == 0
    trained = zoo.create_model(NAME, pretrained=True)
    assert torch.count_nonzero(trained.weight) > 0
    with pytest.raises(ValueError, match="glm_kising100"):
        zoo.create_model("nope")


def test_wrong_sha256_is_refused(private_zoo):
    weights = private_zoo / NAME / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        zoo.load_pretrained(NAME)


def test_corrupt_or_missing_weights_are_refused(private_zoo):
    weights = private_zoo / NAME / "model.safetensors"
    weights.write_bytes(b"garbage")
    config = private_zoo / NAME / "config.json"
    info = json.loads(config.read_text())
    config.write_text(json.dumps({**info, "sha256": zoo.sha256(weights)}))  # a matching hash of a bad file
    with pytest.raises(ValueError, match="not a valid safetensors"):
        zoo.load_pretrained(NAME)
    config.write_text(json.dumps({k: v for k, v in info.items() if k != "sha256"}))
    with pytest.raises(ValueError, match="no sha256"):
        zoo.load_pretrained(NAME)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="no weights file"):
        zoo.load_pretrained(NAME)
    with pytest.raises(ValueError, match="available"):
        zoo.load_pretrained("nope")


def test_evaluate_reproduces_the_model_card(tmp_path):
    import evaluate

    metrics = evaluate.evaluate(compose("eval", [f"model={NAME}"], tmp_path / "eval"))
    card = zoo.model_info(NAME)["metrics"]["fresh_data"]
    for key, value in card.items():
        assert metrics[key] == pytest.approx(value, abs=1e-4), key


def test_publish_roundtrip(run_train, tmp_path):
    from dgrn.publish import publish_checkpoint

    _, run_dir = run_train(["trainer.max_epochs=1"], "train")
    folder = publish_checkpoint(run_dir, "tiny", command="pytest", out_dir=tmp_path / "zoo" / "tiny")
    card = (folder / "README.md").read_text()
    info = json.loads((folder / "config.json").read_text())
    assert info["sha256"] in card and "test/edge_auroc" in card
    assert info["sha256"] == zoo.sha256(folder / "model.safetensors")


def test_cli_zoo_list_and_help():
    out = run_script(["-m", "dgrn.cli", "zoo", "list"]).stdout
    assert NAME in out
    assert "simulate" in run_script(["-m", "dgrn.cli", "--help"]).stdout


def test_cli_simulate_then_predict(tmp_path):
    rec = tmp_path / "rec.npz"
    run_script(["-m", "dgrn.cli", "simulate", "kinetic-ising", "--t", "3000", "--sample-seed", "9", "--out", str(rec)])
    out = tmp_path / "pred.npz"
    run_script(["-m", "dgrn.cli", "predict", "--model", NAME, "--spikes", str(rec), "--out", str(out), "--chunk", "700"])
    with np.load(out) as f:
        probs, first = f["probabilities"], int(f["first_bin"])
    assert probs.shape == (2999, 100) and first == 1 and np.isfinite(probs).all()
    # matches the network applied in one pass, although it was computed in overlapping chunks
    x = torch.from_numpy(np.load(rec)["spikes"]).float()
    with torch.no_grad():
        ref = torch.sigmoid(zoo.load_pretrained(NAME)(x[None]))[0].numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    # the model predicts its own network better than the rates do
    spikes = x[1:].numpy()
    ll = (spikes * np.log(probs) + (1 - spikes) * np.log1p(-probs)).sum()
    rate = spikes.mean(0)
    ll0 = (spikes * np.log(rate) + (1 - spikes) * np.log1p(-rate)).sum()
    assert ll > ll0


def test_cli_predict_errors(tmp_path):
    small = tmp_path / "small.npz"
    run_script(["-m", "dgrn.cli", "simulate", "kinetic-ising", "--n", "10", "--t", "100", "--n-communities", "2",
                "--out", str(small)])
    proc = run_script(["-m", "dgrn.cli", "predict", "--model", NAME, "--spikes", str(small)], check=False)
    assert proc.returncode != 0 and "100 neurons" in proc.stderr
    proc = run_script(["-m", "dgrn.cli", "predict", "--model", "nope", "--spikes", str(small)], check=False)
    assert proc.returncode == 2 and NAME in proc.stderr
    proc = run_script(["-m", "dgrn.cli", "predict", "--model", NAME, "--spikes", str(tmp_path / "none.npz")], check=False)
    assert proc.returncode == 2 and "no spike file" in proc.stderr
    assert not (tmp_path / "small.pred.npz").exists()


def test_train_from_a_zoo_model_starts_from_its_weights(run_train):
    tuned, _ = run_train(["model=glm_kising100", "trainer.max_epochs=1", "model.lr=1e-4"], "tuned")
    fresh, _ = run_train(["model=glm", "trainer.max_epochs=1", "model.lr=1e-4"], "fresh")
    assert tuned["test/bits_per_spike"] > 0.3 > fresh["test/bits_per_spike"]
    with pytest.raises(ValueError, match="does not fit"):
        run_train(["model=glm_kising100", "data.dataset.n=20"], "wrong")
