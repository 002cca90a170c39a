"""DeepDream, the baseline of Dreaming to Distill."""

from __future__ import annotations

from dataclasses import dataclass

from kdrun.checks import require
from kdrun.methods.deepinversion import DeepInversion, DeepInversionSettings


@dataclass
class DeepDreamSettings(DeepInversionSettings):
    bn_weight: float = 0.0  # DeepDream has no BatchNorm-statistics term
    first_bn_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("bn_weight", "first_bn_weight"):
            require(getattr(self, key) == 0, f"method.{key}", getattr(self, key),
                    "DeepDream has no BatchNorm-statistics term: use method=deepinversion")


class DeepDream(DeepInversion):
    """The DeepDream baseline of Yin et al. (arXiv 1912.08795): DeepInversion without the
    BatchNorm-statistics term (only the target class and the image priors shape the pool)."""

    Settings = DeepDreamSettings
