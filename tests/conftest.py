from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # train.py and evaluate.py live at the repository root

#: a small, fast data config used by the pipeline tests (same simulator, fewer bins)
TINY = ["data.dataset.t=4000", "data.n_blocks=10", "data.window=32", "trainer.max_epochs=3", "logger=none"]


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Every test starts from the same global generator state: this torch build seeds it at random per process, so
    an unseeded random input would otherwise differ between runs (and between running a test alone or in the suite)."""
    import torch

    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Small tensors: on 2 shared cores a second intra-op thread makes each op 10-100x slower (``pytestmark =
    pytest.mark.usefixtures("one_thread")`` in a module of such tests)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Runs write under the test's tmp dir; torch-geometric and wandb temp files too."""
    monkeypatch.setenv("DGRN_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)


def compose(config_name: str, overrides: list[str], output_dir: Path):
    """Compose a Hydra config as `python <app>.py overrides` would, with its run directory at ``output_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def run_train(tmp_path):
    """``run_train(overrides, name, base=TINY) -> (metrics, run_dir)``: train.py's ``train`` in-process."""
    import train

    def _run(overrides: list[str] = (), name: str = "run", base: list[str] = TINY):
        cfg = compose("train", [*base, *overrides], tmp_path / name)
        return train.train(cfg), tmp_path / name

    return _run


def run_script(args: list[str], cwd: Path = ROOT, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command with the test's Python, capturing output; fail with its stderr when ``check``."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}")
    return proc
