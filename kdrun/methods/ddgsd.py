"""Self-distillation between two distorted views of the same images."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdrun.data.augment import color_jitter, random_crop_flip
from kdrun.errors import require
from kdrun.methods.base import METHODS, Method
from kdrun.methods.losses import distillation_kl, linear_mmd


@METHODS.register("ddgsd")
class DDGSD(Method):
    """Data-Distortion Guided Self-Distillation (Xu & Liu, AAAI 2019): one network sees two
    independently distorted views of each image; loss = CE on both views + kl_weight * (KL(p_a ||
    p_b) + KL(p_b || p_a)), each view's prediction the fixed target of the other, +
    mmd_weight * MMD between the views' penultimate features (linear kernel: the squared
    distance of the batch means)."""

    augments_batches = True

    def __init__(self, student, kl_weight: float, mmd_weight: float, crop_padding: int,
                 hflip: bool, brightness: float, contrast: float, saturation: float):
        super().__init__(student)
        self.kl_weight = kl_weight
        self.mmd_weight = mmd_weight
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.jitter = (brightness, contrast, saturation)

    @classmethod
    def check_settings(cls, settings) -> None:
        for key in ("kl_weight", "mmd_weight", "crop_padding"):
            require(settings[key] >= 0, f"method.{key}", settings[key], "use >= 0")
        for key in ("brightness", "contrast", "saturation"):
            require(0 <= settings[key] <= 1, f"method.{key}", settings[key],
                    "a jitter strength s draws factors from [1 - s, 1 + s]: use 0..1")

    def distort(self, images: torch.Tensor) -> torch.Tensor:
        """One random view of a batch: crop, flip, then colour jitter, per image."""
        view = random_crop_flip(images, self.crop_padding, self.hflip)
        return color_jitter(view, *self.jitter)

    def training_step(self, images, labels):
        views = torch.cat([self.distort(images), self.distort(images)])
        logits, features = self.student.forward_embedding(views)
        logits_a, logits_b = logits.chunk(2)
        features_a, features_b = features.float().chunk(2)
        ce_a = F.cross_entropy(logits_a.float(), labels)
        ce_b = F.cross_entropy(logits_b.float(), labels)
        kl_ab = distillation_kl(logits_b, logits_a.detach(), 1.0)  # KL(p_a || p_b)
        kl_ba = distillation_kl(logits_a, logits_b.detach(), 1.0)  # KL(p_b || p_a)
        mmd = linear_mmd(features_a, features_b)
        loss = ce_a + ce_b + self.kl_weight * (kl_ab + kl_ba) + self.mmd_weight * mmd
        return {"loss": loss, "logits": logits_a, "ce_a": ce_a, "ce_b": ce_b, "kl_ab": kl_ab,
                "kl_ba": kl_ba, "mmd": mmd}
