"""Checkpoint files: written atomically (a crash never leaves half a file), read with
weights_only=True (a checkpoint cannot run code). Under torch.distributed only rank 0 writes:
every rank holds the same weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from kdrun.engine import distributed
from kdrun.errors import ConfigError
from kdrun.models import Classifier, build_model


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    if not distributed.is_main():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


def save_model(model: Classifier, path: Path, meta: dict[str, Any]) -> None:
    """A model checkpoint: architecture, class count and weights (teachers, final students)."""
    save_atomic({"arch": model.arch, "num_classes": model.num_classes,
                 "state_dict": model.net.state_dict(), "meta": meta}, path)


def load_classifier(path: Path, num_classes: int, mean: list[float],
                    std: list[float]) -> Classifier:
    """The model a checkpoint holds, built with the architecture it names."""
    stored = load(path)
    model = build_model(stored["arch"], num_classes, mean, std)
    _load_weights(model, stored, path)
    return model


def load_model(model: Classifier, path: Path) -> dict[str, Any]:
    """Loads weights into `model`; returns the checkpoint's metadata."""
    return _load_weights(model, load(path), path)


def _load_weights(model: Classifier, stored: dict[str, Any], path: Path) -> dict[str, Any]:
    if stored.get("arch") != model.arch:
        raise ConfigError(f"checkpoint {path} holds a {stored.get('arch')}, not a {model.arch}: "
                          f"set the architecture to {stored.get('arch')} or use another file")
    try:
        model.net.load_state_dict(stored["state_dict"])
    except RuntimeError as err:
        raise ConfigError(f"checkpoint {path} does not fit {model.arch} "
                          f"(different class count?): {str(err).splitlines()[0]}") from None
    return stored.get("meta", {})
