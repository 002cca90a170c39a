"""Self-distillation between two distorted views of the same images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from kdrun.checks import require
from kdrun.data.augment import color_jitter, random_crop_flip
from kdrun.methods.base import Method, MethodSettings
from kdrun.methods.losses import distillation_kl, linear_mmd

VIEWS = ("flip_crop", "crop_flip")


@dataclass
class DDGSDSettings(MethodSettings):
    kl_weight: float = MISSING  # lambda
    mmd_weight: float = MISSING  # mu
    crop_padding: int = MISSING  # each view's random crop (pixels of zero padding)
    hflip: bool = MISSING
    brightness: float = MISSING  # colour jitter strengths
    contrast: float = MISSING
    saturation: float = MISSING
    detach_targets: bool = MISSING  # each view's prediction a fixed target of the other
    views: str = MISSING  # flip_crop: one flipped, one cropped view | crop_flip: both, each view
    separate_passes: bool = MISSING  # each view its own forward pass (own BatchNorm statistics)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.views in VIEWS, "method.views", self.views, f"choose {' or '.join(VIEWS)}")
        for key in ("kl_weight", "mmd_weight", "crop_padding"):
            require(getattr(self, key) >= 0, f"method.{key}", getattr(self, key), "use >= 0")
        for key in ("brightness", "contrast", "saturation"):
            require(0 <= getattr(self, key) <= 1, f"method.{key}", getattr(self, key),
                    "a jitter strength s draws factors from [1 - s, 1 + s]: use 0..1")


class DDGSD(Method):
    """Data-Distortion Guided Self-Distillation (Xu & Liu, AAAI 2019): one network sees two
    independently distorted views of each image; loss = CE on both views + kl_weight * (KL(p_a ||
    p_b) + KL(p_b || p_a)) + mmd_weight * MMD between the views' penultimate features (linear
    kernel: the squared distance of the batch means). Both directions of the symmetric KL carry
    gradient into both views, as the paper's objective reads and its reference implementation
    (youngerous/ddgsd-pytorch) does; `detach_targets` makes each view's prediction a fixed
    target of the other instead (half the gradient near agreement). As in the reference code,
    by default one view is flipped and the other cropped (`views=flip_crop`; `crop_flip`: both
    cropped and flipped), and each view is its own forward pass, with its own BatchNorm
    statistics (`separate_passes=false`: one pass over both views)."""

    Settings = DDGSDSettings
    augments_batches = True

    def distort(self, images: torch.Tensor, crop: bool = True, flip: bool = True) -> torch.Tensor:
        """One random view of a batch, per image: crop and flip (those asked for and the
        settings allow), then colour jitter (none at the default strengths of 0)."""
        s = self.settings
        view = random_crop_flip(images, s.crop_padding if crop else 0, s.hflip and flip)
        return color_jitter(view, s.brightness, s.contrast, s.saturation)

    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.settings.views == "flip_crop":
            return self.distort(images, crop=False), self.distort(images, flip=False)
        return self.distort(images), self.distort(images)

    def training_step(self, images, labels):
        view_a, view_b = self.views(images)
        if self.settings.separate_passes:
            (logits_a, features_a), (logits_b, features_b) = (
                self.student.forward_embedding(view_a), self.student.forward_embedding(view_b))
        else:
            logits, features = self.student.forward_embedding(torch.cat([view_a, view_b]))
            (logits_a, logits_b), (features_a, features_b) = logits.chunk(2), features.chunk(2)
        features_a, features_b = features_a.float(), features_b.float()
        ce_a = F.cross_entropy(logits_a.float(), labels)
        ce_b = F.cross_entropy(logits_b.float(), labels)
        s = self.settings
        target_a, target_b = ((logits_a.detach(), logits_b.detach()) if s.detach_targets
                              else (logits_a, logits_b))
        kl_ab = distillation_kl(logits_b, target_a, 1.0)  # KL(p_a || p_b)
        kl_ba = distillation_kl(logits_a, target_b, 1.0)  # KL(p_b || p_a)
        mmd = linear_mmd(features_a, features_b)
        loss = ce_a + ce_b + s.kl_weight * (kl_ab + kl_ba) + s.mmd_weight * mmd
        return {"loss": loss, "logits": logits_a, "ce_a": ce_a, "ce_b": ce_b, "kl_ab": kl_ab,
                "kl_ba": kl_ba, "mmd": mmd}
