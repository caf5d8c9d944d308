"""Model zoo: named architectures and pretrained weights (safetensors + config.json + model card).

A pretrained model lives in ``checkpoints/NAME/``:

- ``model.safetensors``: the network's ``state_dict`` (no pickle, nothing executes on load);
- ``config.json``: architecture, constructor arguments, the data it was trained on, its metrics, the command that
  trained it, and the ``sha256`` of ``model.safetensors``;
- ``README.md``: the model card.

Set ``DGRN_CHECKPOINTS`` to read a different folder.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported only when a model is built, so `dgrn zoo list` stays instant
    from torch import nn

__all__ = ["checkpoint_dir", "list_models", "model_info", "load_pretrained", "create_model", "save_pretrained"]

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"


def checkpoint_dir() -> Path:
    return Path(os.environ.get("DGRN_CHECKPOINTS", Path(__file__).resolve().parent.parent / "checkpoints"))


def list_models() -> list[str]:
    """Names of the pretrained models (folders of :func:`checkpoint_dir` with a ``config.json``)."""
    root = checkpoint_dir()
    return sorted(p.parent.name for p in root.glob(f"*/{CONFIG}")) if root.is_dir() else []


def _model_dir(name: str) -> Path:
    if name not in list_models():
        raise ValueError(f"unknown pretrained model {name!r}; available: {list_models()} (in {checkpoint_dir()})")
    return checkpoint_dir() / name


def model_info(name: str) -> dict:
    """The ``config.json`` of a pretrained model."""
    path = _model_dir(name) / CONFIG
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _size_kwargs(info: dict) -> dict:
    """``n_neurons`` for models built for one network; nothing for size-free ones (the community encoder)."""
    return {"n_neurons": info["n_neurons"]} if info.get("n_neurons") is not None else {}


def create_model(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """The one door in: a registered architecture (``dgrn.nn.NETWORKS``, built with ``kwargs``) or a zoo model
    (its recorded architecture; its weights when ``pretrained``)."""
    from dgrn.nn import NETWORKS, build_network

    if name in NETWORKS:
        if pretrained:
            raise ValueError(f"{name!r} is an architecture without weights; pretrained models: {list_models()}")
        return build_network(name, **kwargs)
    if name in list_models():
        if pretrained:
            return load_pretrained(name)
        info = model_info(name)
        return build_network(info["architecture"], **{**_size_kwargs(info), **info["net"], **kwargs})
    raise ValueError(f"unknown model {name!r}; architectures: {sorted(NETWORKS)}, pretrained: {list_models()}")


def load_pretrained(name: str, map_location: str = "cpu") -> nn.Module:
    """Load ``checkpoints/NAME``: verify the recorded sha256 of the weights, build, load, return in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from dgrn.nn import build_network

    folder = _model_dir(name)
    info = model_info(name)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"pretrained model {name!r} has no weights file {weights}")
    expected = info.get("sha256")
    if not expected:
        raise ValueError(f"{folder / CONFIG} records no sha256 for {WEIGHTS}; refusing unverified weights")
    actual = sha256(weights)
    if actual != expected:
        raise ValueError(f"sha256 mismatch for {weights}: recorded {expected}, file has {actual} (corrupt or altered)")
    try:
        state = load_file(weights, device=map_location)
    except SafetensorError as err:
        raise ValueError(f"{weights} is not a valid safetensors file: {err}") from err
    net = build_network(info["architecture"], **_size_kwargs(info), **info["net"])
    net.load_state_dict(state, strict=True)
    return net.eval()


def save_pretrained(
    net: nn.Module, folder: str | Path, *, architecture: str, net_kwargs: dict, card: str | Callable[[dict], str],
    **info,
) -> Path:
    """Publish ``net`` into ``folder``: weights (safetensors), ``config.json`` with their sha256, and the model
    card (a string, or a function of the final config). Each file is written to a temporary name and renamed,
    weights first."""
    from safetensors.torch import save_file

    from dgrn.data import atomic_write

    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(state, tmp))
    config = {"architecture": architecture, "net": net_kwargs, **info, "sha256": sha256(folder / WEIGHTS)}
    atomic_write(folder / CONFIG, json.dumps(config, indent=2) + "\n")
    text = card(config) if callable(card) else card
    atomic_write(folder / CARD, text)
    return folder
