"""Model files: architecture, class count and weights in one checkpoint (teachers, final
students), read back into the architecture they name. A file converted from published weights
also carries the input normalisation they were trained with (meta/normalization), which the
loaded model then uses in place of the run's data set's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdrun.errors import CheckpointError, ConfigError
from kdrun.models import Classifier, build_model
from kdrun.runtime.checkpoint import load, save_atomic


def save_model(model: Classifier, path: Path, meta: dict[str, Any]) -> None:
    save_atomic({"arch": model.arch, "num_classes": model.num_classes,
                 "state_dict": model.net.state_dict(), "meta": meta}, path)


def load_classifier(path: Path, num_classes: int, mean: list[float],
                    std: list[float]) -> tuple[Classifier, dict[str, Any]]:
    """The model a checkpoint holds, built with the architecture it names, and the
    checkpoint's metadata."""
    stored = _read(path)
    model = build_model(stored["arch"], num_classes, mean, std)
    return model, _load_weights(model, stored, path)


def load_model(model: Classifier, path: Path) -> dict[str, Any]:
    """Loads weights into `model`; returns the checkpoint's metadata."""
    return _load_weights(model, _read(path), path)


def _read(path: Path) -> dict[str, Any]:
    stored = load(path)
    if not isinstance(stored, dict) or not {"arch", "state_dict"} <= stored.keys():
        raise CheckpointError(f"{path} is a PyTorch file but not a kdrun model file (no "
                              "architecture and weights in it): give a checkpoints/student.pt "
                              "or a cached teacher.pt")
    return stored


def _load_weights(model: Classifier, stored: dict[str, Any], path: Path) -> dict[str, Any]:
    if stored.get("arch") != model.arch:
        raise ConfigError(f"checkpoint {path} holds a {stored.get('arch')}, not a {model.arch}: "
                          f"set the architecture to {stored.get('arch')} or use another file")
    try:
        model.net.load_state_dict(stored["state_dict"])
    except RuntimeError as err:
        raise ConfigError(f"checkpoint {path} does not fit {model.arch} "
                          f"(different class count?): {str(err).splitlines()[0]}") from None
    meta = stored.get("meta", {})
    if "normalization" in meta:
        norm = meta["normalization"]
        model.mean.copy_(torch.tensor(norm["mean"]).view_as(model.mean))
        model.std.copy_(torch.tensor(norm["std"]).view_as(model.std))
    return meta
