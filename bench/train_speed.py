"""Seconds per training step (forward, backward and an Adam step on one training batch) of a trained model.

    python bench/train_speed.py --checkpoint CKPT [--steps 5] [--repo DIR]

``--checkpoint``: a ``train.py`` checkpoint (e.g. one that ``bench/mesoscale.py --runs-dir`` kept); its module is
rebuilt, its data module reads the same recording, and the first batch of the training loader is the input of every
step (every parameter trainable, as in one training stage after the other). One warm-up step (kernels compiled, caches
filled), then ``--steps`` timed ones on one thread; prints their median and the loss of the first, which two versions
that compute the same give alike up to rounding. ``--repo`` imports ``dgrn`` from another checkout, e.g. a ``git
worktree`` of an older commit, so two versions can be timed alternately.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a train.py checkpoint")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent))
    args = parser.parse_args()
    sys.path.insert(0, args.repo)
    import torch

    from dgrn.models import SpikeDataModule, module_for
    from dgrn.runner import load_checkpoint

    torch.set_num_threads(1)
    checkpoint = load_checkpoint(args.checkpoint)
    module = module_for(checkpoint["hyper_parameters"])(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    module.log = lambda *_, **__: None  # no trainer to log to
    data = SpikeDataModule(**checkpoint["datamodule_hyper_parameters"])
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-6)  # small steps: every timed step sees about the same model

    def step() -> float:
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach().item()

    first = step()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    print(f"{statistics.median(seconds):.3f} s a step (median of {args.steps}; batch {tuple(batch.shape)}), "
          f"first loss {first:.6f} ({type(module.net).__name__}, {args.repo})")


if __name__ == "__main__":
    main()
