"""Checkpoint files: written atomically (a crash never leaves half a file), read with
weights_only=True (a checkpoint cannot run code)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from kdrun.errors import ConfigError
from kdrun.models import Classifier


def save_atomic(obj: dict[str, Any], path: Path) -> None:
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


def stored_arch(path: Path) -> str:
    """The architecture a model checkpoint holds."""
    return load(path)["arch"]


def load_model(model: Classifier, path: Path) -> dict[str, Any]:
    """Loads weights into `model`; returns the checkpoint's metadata."""
    stored = load(path)
    if stored.get("arch") != model.arch:
        raise ConfigError(f"checkpoint {path} holds a {stored.get('arch')}, not a {model.arch}: "
                          f"set the architecture to {stored.get('arch')} or use another file")
    try:
        model.net.load_state_dict(stored["state_dict"])
    except RuntimeError as err:
        raise ConfigError(f"checkpoint {path} does not fit {model.arch} "
                          f"(different class count?): {str(err).splitlines()[0]}") from None
    return stored.get("meta", {})
